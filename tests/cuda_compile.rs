//! Every CUDA kernel (`cuda/<op>.cu`) compiles with NVRTC for Hopper (sm_90) and for Blackwell
//! (sm_100a, sm_103a, sm_120a, sm_121a; the FP4 tensor-core kernels for their own family only:
//! tcgen05 for the sm_10x, the block-scaled mma.sync for the sm_12x), so a broken kernel fails
//! the tests on machines without a GPU.
//! Needs only libnvrtc (`pip install nvidia-cuda-nvrtc-cu12`, then point LD_LIBRARY_PATH at
//! its `nvidia/cuda_nvrtc/lib`, as `.ci/run` does); without it the test says it skipped, unless
//! `NEMOTRON_REQUIRE_NVRTC` is set (CI), where that is a failure.

use nemotron_rt::backend::cuda::kernels;

/// sm_103a is the B300 and sm_121a the GB10 (DGX Spark): each takes its family's FP4 path
/// (compute capability 10.x and 12.x).
const ARCHS: [&str; 5] = ["sm_90", "sm_100a", "sm_103a", "sm_120a", "sm_121a"];

#[test]
fn every_kernel_compiles_for_hopper_and_blackwell() {
    if !kernels::nvrtc_present() {
        assert!(
            std::env::var_os("NEMOTRON_REQUIRE_NVRTC").is_none(),
            "NEMOTRON_REQUIRE_NVRTC is set (as .ci/run does) but libnvrtc cannot be loaded"
        );
        eprintln!(
            "skipped: libnvrtc not found (install nvidia-cuda-nvrtc-cu12 from PyPI and put its \
             nvidia/cuda_nvrtc/lib on LD_LIBRARY_PATH)"
        );
        return;
    }
    // A real architecture (sm_*, not compute_*) makes NVRTC run ptxas too, so inline PTX is
    // checked as well. One thread per architecture: NVRTC takes about a second per file.
    let results: Vec<(usize, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = ARCHS
            .iter()
            .map(|&arch| {
                s.spawn(move || {
                    let (mut built, mut failures) = (0, Vec::new());
                    for k in kernels::ALL {
                        if !k.family.has_arch(arch) {
                            continue;
                        }
                        match kernels::compile_with_log(k, arch, &["--ptxas-options=-v"]) {
                            Ok((ptx, log)) if ptx.contains(".entry") => {
                                built += 1;
                                failures.extend(local_memory(&log).into_iter().map(|(e, what)| {
                                    format!("cuda/{}.cu: {e} on {arch} uses {what}", k.name)
                                }));
                            }
                            Ok(_) => {
                                failures.push(format!("cuda/{}.cu: no kernel in the PTX", k.name))
                            }
                            Err(e) => failures.push(e),
                        }
                    }
                    (built, failures)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let built: usize = results.iter().map(|r| r.0).sum();
    let failures: Vec<String> = results.into_iter().flat_map(|r| r.1).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // 17 kernel files for each of the five architectures, plus the two FP4 tensor-core ones of
    // each Blackwell family for its two: tcgen05 for the sm_10x, mma.sync for the sm_12x.
    assert_eq!(built, 93, "every kernel file must be compiled");
    eprintln!("compiled {built} kernel/architecture pairs");
}

/// A register or two spilled where `__launch_bounds__` caps registers to fit more blocks on an
/// SM (moe_down: 4 to 16 bytes) costs less than the occupancy gained; an array does not fit here.
const LOCAL_BYTES_ALLOWED: u64 = 16;

/// The kernels in ptxas's `-v` report with more than [`LOCAL_BYTES_ALLOWED`] bytes of stack
/// frame or of register spills, with what they use: local memory, which on a GPU is DRAM
/// behind the L1 (a per-thread array indexed at run time lands there). A kernel that starts to
/// use it is slower than it looks, so it fails here.
fn local_memory(log: &str) -> Vec<(String, String)> {
    let mut entry = String::new();
    let mut found = Vec::new();
    for line in log.lines() {
        if let Some(at) = line.find("Compiling entry function '") {
            let rest = &line[at + "Compiling entry function '".len()..];
            entry = rest.split('\'').next().unwrap_or("").to_string();
        } else if line.contains("bytes stack frame") {
            let numbers: Vec<u64> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            if numbers.iter().any(|&n| n > LOCAL_BYTES_ALLOWED) {
                found.push((
                    entry.clone(),
                    line.trim_start_matches("ptxas").trim().to_string(),
                ));
            }
        }
    }
    found
}

#[test]
fn the_local_memory_report_is_read() {
    let log = "ptxas info    : Compiling entry function 'conv1d_silu' for 'sm_90'\n\
               ptxas info    : Function properties for conv1d_silu\n\
               ptxas         .     64 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
               ptxas info    : Compiling entry function 'add' for 'sm_90'\n\
               ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
               ptxas info    : Compiling entry function 'moe_down' for 'sm_90'\n\
               ptxas         .     16 bytes stack frame, 16 bytes spill stores, 4 bytes spill loads\n\
               ptxas info    : Compiling entry function 'moe_up' for 'sm_90'\n\
               ptxas         .     0 bytes stack frame, 0 bytes spill stores, 24 bytes spill loads\n";
    let found = local_memory(log);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].0, "conv1d_silu");
    assert!(found[0].1.contains("64 bytes stack frame"), "{found:?}");
    assert_eq!(found[1].0, "moe_up");
}

/// Without libcuda, asking for the CUDA backend is an ordinary error naming the reason (never a
/// panic from the dynamic loader); with it, a device either opens or says why not.
#[test]
fn cuda_backend_without_a_driver_is_an_error_not_a_panic() {
    use nemotron_rt::backend::{self, BackendKind, BackendOptions};
    let r = backend::create_with(BackendKind::Cuda, &BackendOptions::default());
    if nemotron_rt::backend::cuda::driver_present() {
        match r {
            Ok(be) => eprintln!("cuda opened: {}", be.info().device),
            Err(e) => eprintln!("cuda driver present but no usable device: {e}"),
        }
        return;
    }
    let e = r.err().expect("no driver, yet the CUDA backend opened");
    assert!(
        e.to_string()
            .contains("no driver found (libcuda not present)"),
        "unexpected error: {e}"
    );
    let listed = nemotron_rt::backend::cuda::devices().unwrap_err();
    assert!(listed.contains("libcuda not present"), "{listed}");
}

/// A kernel that does not compile is reported with its file name and NVRTC's log.
#[test]
fn a_compile_error_names_the_kernel_and_carries_the_log() {
    if !kernels::nvrtc_present() {
        eprintln!("skipped: libnvrtc not found");
        return;
    }
    let broken = kernels::Kernel {
        name: "broken",
        source: "extern \"C\" __global__ void f(float* y) { y[0] = no_such_value; }",
        family: kernels::Family::Any,
    };
    let e = kernels::compile(&broken, "compute_90").unwrap_err();
    assert!(e.contains("cuda/broken.cu"), "{e}");
    assert!(e.contains("no_such_value"), "the log is missing: {e}");
}
