//! Weights on the device in their stored precision: packed E2M1 nibbles with their E4M3 block
//! scales, E4M3 bytes, BF16/F16 halves, F32; the kernels decode them in registers. A layer's
//! routed experts are stacked into one buffer per projection with a fixed stride, so a kernel
//! addresses expert `e` by index and the chosen ids never leave the device.

use super::device::{Arg, Buf, Device};
use crate::error::Result;
use crate::weights::StoredLinear;

/// The NVFP4 format code as the kernels take it (`FMT_NVFP4` in cuda/common.cuh).
pub(crate) const FMT_NVFP4: i32 = crate::backend::FMT_NVFP4 as i32;

/// Whether the tensor-core GEMM tiles take weights of this format: those that decode exactly
/// into bf16 (BF16, FP8 and NVFP4; F16's 11-bit significands and F32 do not fit).
pub(crate) fn tensor_core_format(format: i32) -> bool {
    [
        crate::backend::FMT_BF16,
        crate::backend::FMT_FP8,
        crate::backend::FMT_NVFP4,
    ]
    .contains(&(format as u32))
}

pub(crate) struct CudaLinear {
    pub rows: usize,
    pub cols: usize,
    pub format: i32,
    /// FP8 per-tensor scale or NVFP4 tensor scale; 1 for dense formats.
    pub tensor_scale: f32,
    pub data: Buf,
    /// NVFP4 block scales (E4M3 bytes, `[rows, cols/16]`); a 4-byte dummy otherwise.
    pub scales: Buf,
    pub bias: Option<Buf>,
    /// NVFP4 activation scale, used only by the W4A4 tensor-core path.
    pub input_scale: Option<f32>,
}

/// Format code (as the kernels' `int fmt`), tensor scale, data and block-scale bytes.
fn parts(w: &StoredLinear) -> (i32, f32, &[u8], &[u8]) {
    let (f, ts, d, s) = crate::backend::gpu_parts(w);
    (f as i32, ts, d, s)
}

impl CudaLinear {
    pub(crate) fn upload(dev: &Device, w: &StoredLinear) -> Result<CudaLinear> {
        let (format, tensor_scale, data, scales) = parts(w);
        if format == FMT_NVFP4 && !w.cols.is_multiple_of(16) {
            return Err(dev.err(format!(
                "{}: NVFP4 needs a width that is a multiple of 16, not {}",
                w.name, w.cols
            )));
        }
        Ok(CudaLinear {
            rows: w.rows,
            cols: w.cols,
            format,
            tensor_scale,
            data: dev.upload_bytes(data, &w.name)?,
            scales: if scales.is_empty() {
                dev.alloc(4, "no scales")?
            } else {
                dev.upload_bytes(scales, &w.name)?
            },
            bias: w
                .bias
                .as_ref()
                .map(|b| dev.upload_f32(b, &w.name))
                .transpose()?,
            input_scale: w.input_scale,
        })
    }
}

/// One projection (`up` or `down`) of all routed experts of a layer, back to back.
pub(crate) struct ExpertStack {
    pub format: i32,
    pub data: Buf,
    pub scales: Buf,
    /// Per-expert tensor scale (f32 `[experts]`).
    pub tensor_scales: Buf,
    /// Per-expert NVFP4 activation scale (f32 `[experts]`) for the W4A4 tensor-core path:
    /// present where every expert is NVFP4 with a finite, positive `input_scale`.
    pub input_scales: Option<Buf>,
}

impl ExpertStack {
    pub(crate) fn upload(dev: &Device, name: &str, ws: &[StoredLinear]) -> Result<ExpertStack> {
        let (format, _, _, _) = parts(&ws[0]);
        for w in ws {
            if parts(w).0 != format {
                return Err(dev.err(format!(
                    "{name}: experts must share one stored format ({} is {}, {} is {})",
                    ws[0].name,
                    ws[0].format_name(),
                    w.name,
                    w.format_name()
                )));
            }
        }
        let cols = ws[0].cols;
        if format == FMT_NVFP4 && !cols.is_multiple_of(16) {
            return Err(dev.err(format!(
                "{name}: NVFP4 needs a width that is a multiple of 16, not {cols}"
            )));
        }
        let data_len: usize = ws.iter().map(|w| parts(w).2.len()).sum();
        let scale_len: usize = ws.iter().map(|w| parts(w).3.len()).sum();
        let mut data = dev.alloc(data_len, name)?;
        let mut scales = dev.alloc(scale_len.max(4), name)?;
        let (mut d_off, mut s_off) = (0, 0);
        for w in ws {
            let (_, _, d, s) = parts(w);
            dev.write(&mut data, d_off, d, name)?;
            d_off += d.len();
            dev.write(&mut scales, s_off, s, name)?;
            s_off += s.len();
        }
        let ts: Vec<f32> = ws.iter().map(|w| parts(w).1).collect();
        let input_scales: Option<Vec<f32>> = ws
            .iter()
            .map(|w| w.input_scale.filter(|s| s.is_finite() && *s > 0.0))
            .collect();
        Ok(ExpertStack {
            format,
            data,
            scales,
            tensor_scales: dev.upload_f32(&ts, name)?,
            input_scales: match input_scales {
                Some(s) if format == FMT_NVFP4 => Some(dev.upload_f32(&s, name)?),
                _ => None,
            },
        })
    }
}

impl ExpertStack {
    /// Format, data, block scales and tensor scales, as the expert kernels take them first.
    pub(crate) fn args(&self) -> [Arg; 4] {
        [
            Arg::I32(self.format),
            (&self.data).into(),
            (&self.scales).into(),
            (&self.tensor_scales).into(),
        ]
    }
}

pub(crate) struct CudaExperts {
    pub up: ExpertStack,
    pub down: ExpertStack,
}
