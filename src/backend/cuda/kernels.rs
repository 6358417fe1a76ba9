//! The CUDA kernel sources (`cuda/<op>.cu`, each with `cuda/common.cuh` prepended) and their
//! compilation with NVRTC. Compiling needs only libnvrtc, not a GPU, which is how the test
//! suite checks every kernel for every target architecture on machines without CUDA.

use cudarc::nvrtc::{CompileError, CompileOptions, compile_ptx_with_opts};

/// One `.cu` file: the name of the trait op it implements and its full source.
pub struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
    /// Built only for sm_120-class Blackwell: the block-scaled `mma.sync` it uses exists there
    /// and nowhere else (ptxas rejects it for sm_100a, whose FP4 tensor cores need tcgen05).
    pub sm120_only: bool,
}

/// `kernel!("op")`: `cuda/op.cu` after `cuda/common.cuh`; `kernel!("op", [headers], sm120)`
/// also prepends those `cuda/` headers, and marks a kernel for sm_120-class GPUs only.
macro_rules! kernel {
    ($name:literal) => {
        kernel!($name, [], false)
    };
    ($name:literal, [$($header:literal),*], $bw:expr) => {
        Kernel {
            name: $name,
            source: concat!(
                include_str!("../../../cuda/common.cuh"),
                $(include_str!(concat!("../../../cuda/", $header)),)*
                include_str!(concat!("../../../cuda/", $name, ".cu"))
            ),
            sm120_only: $bw,
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
pub const LINEAR: Kernel = kernel!("linear", ["gemm_tile.cuh"], false);
pub const LINEAR_NVFP4_MMA: Kernel = kernel!("linear_nvfp4_mma", ["nvfp4_mma.cuh"], true);
pub const MOE_EXPERTS: Kernel =
    kernel!("moe_experts", ["gemm_tile.cuh", "expert_tiles.cuh"], false);
pub const MOE_EXPERTS_NVFP4_MMA: Kernel = kernel!(
    "moe_experts_nvfp4_mma",
    ["nvfp4_mma.cuh", "expert_tiles.cuh"],
    true
);
pub const RELU2: Kernel = kernel!("relu2");
pub const RMS_NORM: Kernel = kernel!("rms_norm");
pub const ROUTER: Kernel = kernel!("router");
pub const SPLIT_COLUMNS: Kernel = kernel!("split_columns");
pub const SSM_SCAN: Kernel = kernel!("ssm_scan");

/// Every kernel file, for the compile test.
pub const ALL: [&Kernel; 18] = [
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
    if !nvrtc_present() {
        return Err("libnvrtc not found".into());
    }
    let opts = CompileOptions {
        // Exact IEEE division and square root (the defaults, stated because exactness matters:
        // norms and router weights are compared with the CPU's).
        prec_div: Some(true),
        prec_sqrt: Some(true),
        options: vec![format!("--gpu-architecture={arch}"), "-std=c++17".into()],
        name: Some(format!("{}.cu", k.name)),
        ..Default::default()
    };
    match compile_ptx_with_opts(k.source, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { log, .. }) => Err(format!(
            "NVRTC cannot compile kernel cuda/{}.cu for {arch}:\n{}",
            k.name,
            log.to_string_lossy()
        )),
        Err(e) => Err(format!("cuda/{}.cu: NVRTC failed for {arch}: {e}", k.name)),
    }
}
