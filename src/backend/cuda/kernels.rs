//! The CUDA kernel sources (`cuda/<op>.cu`, each with `cuda/common.cuh` prepended) and their
//! compilation with NVRTC. Compiling needs only libnvrtc, not a GPU, which is how the test
//! suite checks every kernel for every target architecture on machines without CUDA.

use std::ffi::CString;

/// One `.cu` file: the name of the trait op it implements and its full source.
pub struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
    /// The GPUs it is built for: its tensor-core instructions exist on those only.
    pub family: Family,
}

/// Which GPUs a kernel file is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Every GPU the backend runs on.
    Any,
    /// sm_100-class Blackwell (B200, GB200, B300: compute capability 10.x), whose FP4 tensor
    /// cores are driven by `tcgen05` (tensor memory); ptxas rejects it elsewhere.
    Sm100,
    /// sm_120-class Blackwell (RTX 50, RTX PRO, GB10: compute capability 12.x), whose FP4
    /// tensor cores are the block-scaled `mma.sync`; ptxas rejects it for sm_100a.
    Sm120,
}

impl Family {
    /// Whether a GPU with compute capability major `major` has these kernels' instructions.
    pub fn has(self, major: i32) -> bool {
        match self {
            Family::Any => true,
            Family::Sm100 => major == 10,
            Family::Sm120 => major == 12,
        }
    }

    /// Whether NVRTC target `arch` (`sm_100a`, `compute_120a`, ...) is one of these GPUs.
    pub fn has_arch(self, arch: &str) -> bool {
        let digits = arch.trim_start_matches(|c: char| !c.is_ascii_digit());
        match self {
            Family::Any => true,
            Family::Sm100 => digits.starts_with("10"),
            Family::Sm120 => digits.starts_with("12"),
        }
    }
}

/// `kernel!("op")`: `cuda/op.cu` after `cuda/common.cuh`; `kernel!("op", [headers], family)`
/// also prepends those `cuda/` headers, and builds the kernel for that family of GPUs only.
macro_rules! kernel {
    ($name:literal) => {
        kernel!($name, [], Family::Any)
    };
    ($name:literal, [$($header:literal),*], $family:expr) => {
        Kernel {
            name: $name,
            source: concat!(
                include_str!("../../../cuda/common.cuh"),
                $(include_str!(concat!("../../../cuda/", $header)),)*
                include_str!(concat!("../../../cuda/", $name, ".cu"))
            ),
            family: $family,
        }
    };
}

pub const ADD: Kernel = kernel!("add");
pub const ADD_RMS_NORM: Kernel = kernel!("add_rms_norm");
pub const ARGMAX: Kernel = kernel!("argmax");
pub const ATTENTION: Kernel = kernel!("attention");
pub const BANDWIDTH: Kernel = kernel!("bandwidth");
pub const CONV1D_SILU: Kernel = kernel!("conv1d_silu");
pub const EMBED: Kernel = kernel!("embed");
pub const GATED_GROUP_RMS_NORM: Kernel = kernel!("gated_group_rms_norm");
pub const LAST_ROW: Kernel = kernel!("last_row");
pub const LINEAR: Kernel = kernel!("linear", ["gemm_tile.cuh"], Family::Any);
pub const LINEAR_NVFP4_MMA: Kernel = kernel!("linear_nvfp4_mma", ["nvfp4_mma.cuh"], Family::Sm120);
pub const MOE_EXPERTS: Kernel = kernel!(
    "moe_experts",
    ["gemm_tile.cuh", "expert_tiles.cuh"],
    Family::Any
);
pub const MOE_EXPERTS_NVFP4_MMA: Kernel = kernel!(
    "moe_experts_nvfp4_mma",
    ["nvfp4_mma.cuh", "expert_tiles.cuh", "fp4_experts.cuh"],
    Family::Sm120
);
pub const LINEAR_NVFP4_TCGEN05: Kernel =
    kernel!("linear_nvfp4_tcgen05", ["tcgen05.cuh"], Family::Sm100);
pub const MOE_EXPERTS_NVFP4_TCGEN05: Kernel = kernel!(
    "moe_experts_nvfp4_tcgen05",
    ["tcgen05.cuh", "expert_tiles.cuh", "fp4_experts.cuh"],
    Family::Sm100
);
pub const QUANTIZE_NVFP4: Kernel = kernel!("quantize_nvfp4");
pub const RELU2: Kernel = kernel!("relu2");
pub const RMS_NORM: Kernel = kernel!("rms_norm");
pub const ROUTER: Kernel = kernel!("router");
pub const SPLIT_COLUMNS: Kernel = kernel!("split_columns");
pub const SSM_SCAN: Kernel = kernel!("ssm_scan");

/// Every kernel file, for the compile test.
pub const ALL: [&Kernel; 21] = [
    &ADD,
    &ADD_RMS_NORM,
    &ARGMAX,
    &ATTENTION,
    &BANDWIDTH,
    &CONV1D_SILU,
    &EMBED,
    &GATED_GROUP_RMS_NORM,
    &LAST_ROW,
    &LINEAR,
    &LINEAR_NVFP4_MMA,
    &MOE_EXPERTS,
    &MOE_EXPERTS_NVFP4_MMA,
    &LINEAR_NVFP4_TCGEN05,
    &MOE_EXPERTS_NVFP4_TCGEN05,
    &QUANTIZE_NVFP4,
    &RELU2,
    &RMS_NORM,
    &ROUTER,
    &SPLIT_COLUMNS,
    &SSM_SCAN,
];

/// Whether libnvrtc can be loaded (checked before any NVRTC call, which would panic otherwise).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles one kernel to PTX for `arch`: a virtual architecture (`compute_90`) at run time,
/// a real one (`sm_90`, `sm_120a`) in the compile test, where NVRTC then runs ptxas as well.
/// The error names the file and carries NVRTC's log.
pub fn compile(k: &Kernel, arch: &str) -> Result<String, String> {
    compile_with_log(k, arch, &[]).map(|(ptx, _)| ptx)
}

/// [`compile`] with more NVRTC options (`--ptxas-options=-v` makes ptxas report each kernel's
/// registers, stack frame and spills): the PTX and NVRTC's log.
pub fn compile_with_log(
    k: &Kernel,
    arch: &str,
    extra: &[&str],
) -> Result<(String, String), String> {
    use cudarc::nvrtc::result;
    if !nvrtc_present() {
        return Err("libnvrtc not found".into());
    }
    let fail =
        |e: &dyn std::fmt::Display| format!("cuda/{}.cu: NVRTC failed for {arch}: {e}", k.name);
    let src = CString::new(k.source).map_err(|e| fail(&e))?;
    let name = CString::new(format!("{}.cu", k.name)).map_err(|e| fail(&e))?;
    let mut opts = vec![
        // Exact IEEE division and square root (the defaults, stated because exactness matters:
        // norms and router weights are compared with the CPU's).
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".into(),
        format!("--gpu-architecture={arch}"),
        "-std=c++17".into(),
    ];
    opts.extend(extra.iter().map(|o| o.to_string()));
    let prog = result::create_program(&src, Some(&name)).map_err(|e| fail(&e))?;
    let text = |raw: Vec<std::ffi::c_char>| {
        let bytes: Vec<u8> = raw
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    // SAFETY: `prog` is a live program (created above, destroyed once below); the option
    // strings outlive the call.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    // SAFETY: as above; the log exists whether or not compilation succeeded.
    let log = unsafe { result::get_program_log(prog) }
        .map(text)
        .unwrap_or_default();
    let out = match compiled {
        Ok(()) => {
            // SAFETY: as above, after a successful compilation.
            unsafe { result::get_ptx(prog) }
                .map(|p| (text(p), log))
                .map_err(|e| fail(&e))
        }
        Err(_) => Err(format!(
            "NVRTC cannot compile kernel cuda/{}.cu for {arch}:\n{log}",
            k.name
        )),
    };
    // SAFETY: destroyed once, not used after.
    unsafe { result::destroy_program(prog) }.map_err(|e| fail(&e))?;
    out
}
