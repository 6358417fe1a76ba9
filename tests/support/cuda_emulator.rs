//! The CUDA backend's tests on machines without a GPU: where no CUDA driver is present, the
//! CPU emulation of the driver and NVRTC in `tests/cuda_emulator/` is built with the host C++
//! compiler and loaded under the names cudarc opens (`libcuda.so`, `libnvrtc.so`), so every
//! CUDA kernel and all of the backend's host code run for real, block by block and warp by
//! warp, against the CPU reference. A machine with a driver tests its GPU instead.
//!
//! `NEMOTRON_CUDA_EMULATOR=0` turns the emulator off. Without a C++ compiler it is skipped
//! with the reason printed, except where `NEMOTRON_REQUIRE_CUDA_EMULATOR` is set (CI): there
//! a failure to build or load it fails the tests, so the CUDA checks cannot vanish silently.

// Each test binary uses part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const SOURCES: [(&str, &str); 3] = [
    ("driver.cpp", include_str!("../cuda_emulator/driver.cpp")),
    ("nvrtc.cpp", include_str!("../cuda_emulator/nvrtc.cpp")),
    (
        "kernel_runtime.h",
        include_str!("../cuda_emulator/kernel_runtime.h"),
    ),
];

/// Makes CUDA available to this process, emulated where there is no driver. Returns what CUDA
/// is now: `Ok("driver")`, `Ok("emulator")`, or why neither.
pub fn install() -> Result<&'static str, String> {
    static STATE: OnceLock<Result<&'static str, String>> = OnceLock::new();
    STATE.get_or_init(install_once).clone()
}

fn install_once() -> Result<&'static str, String> {
    if nemotron_rt::backend::cuda::driver_present() {
        return Ok("driver");
    }
    if std::env::var("NEMOTRON_CUDA_EMULATOR").as_deref() == Ok("0") {
        return Err("no driver, and the emulator is off (NEMOTRON_CUDA_EMULATOR=0)".into());
    }
    let loaded = build().and_then(|dir| load(&dir));
    if let Err(e) = &loaded
        && std::env::var_os("NEMOTRON_REQUIRE_CUDA_EMULATOR").is_some()
    {
        panic!("NEMOTRON_REQUIRE_CUDA_EMULATOR is set, but the CUDA emulator fails: {e}");
    }
    loaded.map_err(|e| format!("no driver, and the CUDA emulator: {e}"))?;
    eprintln!("cuda: no driver; running the CUDA backend on the CPU emulator");
    Ok("emulator")
}

fn load(dir: &Path) -> Result<(), String> {
    for lib in ["libcuda.so", "libnvrtc.so"] {
        // SAFETY: our own libraries, whose initialisers only set up statics. They stay loaded
        // for the life of the process: cudarc opens them by name, which finds these.
        let l = unsafe { libloading::Library::new(dir.join(lib)) }
            .map_err(|e| format!("cannot load the CUDA emulator's {lib}: {e}"))?;
        std::mem::forget(l);
    }
    Ok(())
}

/// The folder holding the emulator's `libcuda.so` and `libnvrtc.so`, built if need be, for a
/// child process to find through `LD_LIBRARY_PATH`. `None` where a real driver is present.
pub fn library_dir() -> Result<Option<PathBuf>, String> {
    if nemotron_rt::backend::cuda::driver_present() {
        return Ok(None);
    }
    build().map(Some)
}

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

/// Builds the two libraries (once per change of their sources) and returns their folder.
fn build() -> Result<PathBuf, String> {
    if !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        // Its fibers switch stacks in x86-64 assembly, and it loads ELF libraries.
        return Err("it runs on x86-64 Linux only".into());
    }
    let mut hash: u64 = 0xcbf29ce484222325;
    for (_, text) in SOURCES {
        for b in text.bytes() {
            hash = (hash ^ b as u64).wrapping_mul(0x100000001b3);
        }
    }
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emulator");
    let dir = root.join(format!("{hash:016x}"));
    let kernels = root.join("kernels");
    let ready = dir.join("libcuda.so").exists() && dir.join("libnvrtc.so").exists();
    if ready {
        return Ok(dir);
    }
    // Built in a private folder and renamed into place, so concurrent test binaries never
    // load a half-written library.
    let tmp = root.join(format!("{hash:016x}.{}", std::process::id()));
    for d in [&tmp, &kernels] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    for (name, text) in SOURCES {
        std::fs::write(tmp.join(name), text)
            .map_err(|e| format!("cannot write {}: {e}", tmp.join(name).display()))?;
    }
    let header = dir.join("kernel_runtime.h");
    let quoted = |p: &Path| format!("\"{}\"", p.display());
    let builds: [(&str, &str, Vec<String>); 2] = [
        ("driver.cpp", "libcuda.so", vec![]),
        (
            "nvrtc.cpp",
            "libnvrtc.so",
            vec![
                format!("-DEMU_RUNTIME_HEADER={}", quoted(&header)),
                format!("-DEMU_CACHE_DIR={}", quoted(&kernels)),
                format!("-DEMU_CXX={}", quoted(Path::new(&cxx()))),
            ],
        ),
    ];
    for (src, lib, defines) in builds {
        let out = Command::new(cxx())
            .args(["-std=c++17", "-O1", "-fPIC", "-shared"])
            .arg(format!("-Wl,-soname,{lib}"))
            .args(&defines)
            .arg(tmp.join(src))
            .arg("-o")
            .arg(tmp.join(lib))
            .arg("-ldl")
            .output()
            .map_err(|e| format!("cannot run the C++ compiler `{}`: {e}", cxx()))?;
        if !out.status.success() {
            return Err(format!(
                "{} does not build:\n{}",
                src,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another test binary got there first with the same sources.
        Err(_) if dir.join("libnvrtc.so").exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(format!(
            "cannot move the emulator into {}: {e}",
            dir.display()
        )),
    }
}

/// Makes the emulated device report compute capability `major.minor` (9.0 by default), so the
/// paths of other architectures run on it (the FP4 tensor cores of sm_120); set it before
/// opening a backend. An error where a real driver is present: its GPU is what it is.
pub fn emulate_compute_capability(major: i32, minor: i32) -> Result<(), String> {
    if install()? != "emulator" {
        return Err("a real CUDA driver is present".into());
    }
    // Built already: install() loaded it (so driver_present() now sees it as a driver).
    let dir = build()?;
    // SAFETY: the emulator's own library, already loaded; this only takes another reference.
    let lib = unsafe { libloading::Library::new(dir.join("libcuda.so")) }
        .map_err(|e| format!("cannot open the CUDA emulator's libcuda.so: {e}"))?;
    // SAFETY: `emu_set_compute_capability(int, int)` in driver.cpp.
    unsafe {
        let set: libloading::Symbol<unsafe extern "C" fn(i32, i32)> = lib
            .get(b"emu_set_compute_capability")
            .map_err(|e| format!("the CUDA emulator lacks emu_set_compute_capability: {e}"))?;
        set(major, minor);
    }
    Ok(())
}
