//! Weights on the GPU in their stored precision. A tensor larger than one storage binding may
//! cover (128 MiB on lavapipe; real checkpoints hold 1 GiB embeddings) is split into chunks of
//! whole rows, and a layer's routed experts into chunks of whole experts, so any checkpoint that
//! fits in device memory loads. The bytes are uploaded as stored: packed E2M1 nibbles, E4M3
//! scales, BF16 halves; shaders decode them.

use crate::error::Result;
use crate::weights::StoredLinear;

use super::gpu::Gpu;

use crate::backend::gpu_parts as parts;
use crate::backend::{FMT_BF16, FMT_F16, FMT_F32, FMT_FP8};

/// Rows `row0 .. row0 + rows` of a weight.
pub(crate) struct LinearChunk {
    pub row0: usize,
    pub rows: usize,
    pub data: wgpu::Buffer,
    /// NVFP4 block scales of these rows (E4M3 bytes); a 4-byte dummy otherwise.
    pub scales: wgpu::Buffer,
}

pub(crate) struct GpuLinear {
    pub rows: usize,
    pub cols: usize,
    pub format: u32,
    /// FP8 per-tensor scale or NVFP4 tensor scale; 1 for dense formats.
    pub tensor_scale: f32,
    pub chunks: Vec<LinearChunk>,
    /// `[rows]` f32, or a 4-byte dummy.
    pub bias: wgpu::Buffer,
    pub has_bias: bool,
}

/// Stored bytes of one row (data, scales).
fn row_bytes(format: u32, cols: usize) -> (usize, usize) {
    match format {
        FMT_F32 => (cols * 4, 0),
        FMT_BF16 | FMT_F16 => (cols * 2, 0),
        FMT_FP8 => (cols, 0),
        _ => (cols / 2, cols / 16),
    }
}

/// Rows per chunk so that data and scales each fit one binding; at least one row.
fn rows_per_chunk(gpu: &Gpu, name: &str, rows: usize, (rb, sb): (usize, usize)) -> Result<usize> {
    let max = gpu.weight_binding() as usize;
    if rb > max {
        return Err(gpu.err(format!(
            "tensor `{name}`: one row needs {rb} bytes but a storage binding holds at most {max}"
        )));
    }
    let by_data = max / rb.max(1);
    let by_scales = max.checked_div(sb).unwrap_or(usize::MAX);
    // Chunks start on a 16-row boundary only for tidiness; any row count works.
    Ok(by_data.min(by_scales).min(rows).max(1))
}

impl GpuLinear {
    pub(crate) fn upload(gpu: &Gpu, w: &StoredLinear) -> Result<GpuLinear> {
        let (format, tensor_scale, data, scales) = parts(w);
        let (rb, sb) = row_bytes(format, w.cols);
        let per = rows_per_chunk(gpu, &w.name, w.rows, (rb, sb))?;
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < w.rows {
            let rows = per.min(w.rows - row0);
            let d = gpu.upload_bytes(&data[row0 * rb..(row0 + rows) * rb], &w.name)?;
            let s = if sb > 0 {
                gpu.upload_bytes(&scales[row0 * sb..(row0 + rows) * sb], &w.name)?
            } else {
                gpu.alloc(4, "no scales")?
            };
            chunks.push(LinearChunk {
                row0,
                rows,
                data: d,
                scales: s,
            });
            row0 += rows;
        }
        let (bias, has_bias) = match &w.bias {
            Some(b) => (gpu.upload_f32(b, &w.name)?, true),
            None => (gpu.alloc(4, "no bias")?, false),
        };
        Ok(GpuLinear {
            rows: w.rows,
            cols: w.cols,
            format,
            tensor_scale,
            chunks,
            bias,
            has_bias,
        })
    }
}

/// Experts `e0 .. e0 + count` of one projection, packed back to back with a fixed stride.
pub(crate) struct ExpertChunk {
    pub e0: usize,
    pub count: usize,
    pub data: wgpu::Buffer,
    pub scales: wgpu::Buffer,
}

/// One projection (`up` or `down`) of all routed experts of a layer.
pub(crate) struct ExpertStack {
    pub rows: usize,
    pub cols: usize,
    pub format: u32,
    pub chunks: Vec<ExpertChunk>,
    /// Per-expert tensor scale (f32 `[experts]`).
    pub tensor_scales: wgpu::Buffer,
}

impl ExpertStack {
    pub(crate) fn upload(gpu: &Gpu, name: &str, ws: &[StoredLinear]) -> Result<ExpertStack> {
        let (format, _, _, _) = parts(&ws[0]);
        let (rows, cols) = (ws[0].rows, ws[0].cols);
        for w in ws {
            if parts(w).0 != format {
                return Err(gpu.err(format!(
                    "{name}: experts must share one stored format ({} is {}, {} is {})",
                    ws[0].name,
                    ws[0].format_name(),
                    w.name,
                    w.format_name()
                )));
            }
        }
        let (rb, sb) = row_bytes(format, cols);
        let (eb, esb) = (rb * rows, sb * rows);
        let max = gpu.weight_binding() as usize;
        if eb > max || esb > max {
            return Err(gpu.err(format!(
                "{name}: one expert needs {eb} bytes but a storage binding holds at most {max}"
            )));
        }
        let per = (max / eb.max(1))
            .min(max.checked_div(esb).unwrap_or(usize::MAX))
            .max(1);
        let mut chunks = Vec::new();
        let mut e0 = 0;
        while e0 < ws.len() {
            let count = per.min(ws.len() - e0);
            let mut data = Vec::with_capacity(count * eb);
            let mut scales = Vec::with_capacity(count * esb);
            for w in &ws[e0..e0 + count] {
                let (_, _, d, s) = parts(w);
                data.extend_from_slice(d);
                scales.extend_from_slice(s);
            }
            chunks.push(ExpertChunk {
                e0,
                count,
                data: gpu.upload_bytes(&data, name)?,
                scales: if esb > 0 {
                    gpu.upload_bytes(&scales, name)?
                } else {
                    gpu.alloc(4, "no scales")?
                },
            });
            e0 += count;
        }
        let ts: Vec<f32> = ws.iter().map(|w| parts(w).1).collect();
        Ok(ExpertStack {
            rows,
            cols,
            format,
            chunks,
            tensor_scales: gpu.upload_f32(&ts, name)?,
        })
    }
}

pub(crate) struct GpuExperts {
    pub up: ExpertStack,
    pub down: ExpertStack,
}
