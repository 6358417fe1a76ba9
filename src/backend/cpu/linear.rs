//! Linear layers over weights in their stored precision. A row of the weight is decoded into a
//! small per-thread buffer (never the whole tensor) and applied to every token of the batch, so
//! a prefill reads each weight byte once.

use std::borrow::Cow;

use super::par;
use crate::checkpoint::{ByteView, DType};
use crate::codec::fp8::E4M3_TO_F32;
use crate::codec::nvfp4::E2M1_VALUES;
use crate::codec::{bf16_to_f32, f16_to_f32};
use crate::error::{Error, Result};
use crate::weights::{LinearData, StoredLinear};

/// Mapped bytes when they are aligned for `T`, otherwise an owned copy in the same precision.
pub(crate) enum Store<T: bytemuck::Pod> {
    Mapped(ByteView),
    Owned(Vec<T>),
}

impl<T: bytemuck::Pod> Store<T> {
    fn new(view: &ByteView) -> Store<T> {
        match bytemuck::try_cast_slice::<u8, T>(view.bytes()) {
            Ok(_) => Store::Mapped(view.clone()),
            Err(_) => Store::Owned(bytemuck::pod_collect_to_vec(view.bytes())),
        }
    }

    pub(crate) fn slice(&self) -> &[T] {
        match self {
            // Alignment was checked when the store was built and the map never moves.
            Store::Mapped(v) => bytemuck::cast_slice(v.bytes()),
            Store::Owned(v) => v,
        }
    }
}

pub(crate) enum Format {
    F32(Store<f32>),
    Bf16(Store<u16>),
    F16(Store<u16>),
    Fp8 {
        data: ByteView,
        scale: f32,
    },
    Nvfp4 {
        packed: ByteView,
        block_scales: ByteView,
        tensor_scale: f32,
    },
}

pub(crate) struct CpuLinear {
    pub rows: usize,
    pub cols: usize,
    pub format: Format,
    pub bias: Option<Vec<f32>>,
}

impl CpuLinear {
    pub(crate) fn new(w: &StoredLinear) -> Result<CpuLinear> {
        let format = match &w.data {
            LinearData::Dense { dtype, data } => match dtype {
                DType::F32 => Format::F32(Store::new(data)),
                DType::BF16 => Format::Bf16(Store::new(data)),
                DType::F16 => Format::F16(Store::new(data)),
                other => {
                    return Err(Error::Invalid(format!(
                        "{}: dense weights must be F32/BF16/F16, not {other}",
                        w.name
                    )));
                }
            },
            LinearData::Fp8 { data, scale } => Format::Fp8 {
                data: data.clone(),
                scale: *scale,
            },
            LinearData::Nvfp4 {
                packed,
                block_scales,
                tensor_scale,
            } => Format::Nvfp4 {
                packed: packed.clone(),
                block_scales: block_scales.clone(),
                tensor_scale: *tensor_scale,
            },
        };
        Ok(CpuLinear {
            rows: w.rows,
            cols: w.cols,
            format,
            bias: w.bias.clone(),
        })
    }

    /// Weight row `r` decoded to f32 into `out[..cols]`, bit-exact with the reference decode.
    pub(crate) fn decode_row(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        let out = &mut out[..c];
        match &self.format {
            Format::F32(s) => out.copy_from_slice(&s.slice()[r * c..(r + 1) * c]),
            Format::Bf16(s) => {
                for (o, &b) in out.iter_mut().zip(&s.slice()[r * c..(r + 1) * c]) {
                    *o = bf16_to_f32(b);
                }
            }
            Format::F16(s) => {
                for (o, &b) in out.iter_mut().zip(&s.slice()[r * c..(r + 1) * c]) {
                    *o = f16_to_f32(b);
                }
            }
            Format::Fp8 { data, scale } => {
                for (o, &b) in out.iter_mut().zip(&data.bytes()[r * c..(r + 1) * c]) {
                    *o = E4M3_TO_F32[b as usize] * scale;
                }
            }
            Format::Nvfp4 {
                packed,
                block_scales,
                tensor_scale,
            } => {
                let codes = &packed.bytes()[r * c / 2..(r + 1) * c / 2];
                let scales = &block_scales.bytes()[r * c / 16..(r + 1) * c / 16];
                for (blk, (&s, pk)) in scales.iter().zip(codes.chunks_exact(8)).enumerate() {
                    // Scales are multiplied together first, as ModelOpt's dequantize does, so
                    // the decoded weight is bit-identical to the reference's.
                    let scale = E4M3_TO_F32[s as usize] * tensor_scale;
                    let o = &mut out[blk * 16..blk * 16 + 16];
                    for (j, &byte) in pk.iter().enumerate() {
                        o[2 * j] = E2M1_VALUES[(byte & 0x0f) as usize] * scale;
                        o[2 * j + 1] = E2M1_VALUES[(byte >> 4) as usize] * scale;
                    }
                }
            }
        }
    }

    /// Borrowed f32 row when the weight is stored as aligned F32, decoded otherwise.
    fn row<'a>(&'a self, r: usize, scratch: &'a mut [f32]) -> Cow<'a, [f32]> {
        if let Format::F32(s) = &self.format {
            return Cow::Borrowed(&s.slice()[r * self.cols..(r + 1) * self.cols]);
        }
        self.decode_row(r, scratch);
        Cow::Borrowed(&scratch[..self.cols])
    }

    /// `out[t, i] = x[t] · W[r0 + i] (+ b)` for `n` rows, writing `out` as `[T, n]`;
    /// single-threaded (callers parallelise around it).
    fn apply_rows(
        &self,
        x: &[f32],
        tokens: usize,
        (r0, n): (usize, usize),
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        if scratch.len() < self.cols {
            scratch.resize(self.cols, 0.0);
        }
        for i in 0..n {
            let r = r0 + i;
            let row = self.row(r, scratch);
            let b = self.bias.as_ref().map_or(0.0, |b| b[r]);
            for t in 0..tokens {
                out[t * n + i] = dot(&x[t * self.cols..(t + 1) * self.cols], &row) + b;
            }
        }
    }

    /// `y = x Wᵀ + b` for `x` `[T, cols]`, parallel over blocks of output rows.
    pub(crate) fn forward(&self, x: &[f32], tokens: usize, par: bool) -> Vec<f32> {
        const BLOCK: usize = 16;
        let rows = self.rows;
        if !par {
            let mut y = vec![0.0f32; tokens * rows];
            self.apply_rows(x, tokens, (0, rows), &mut y, &mut Vec::new());
            return y;
        }
        let blocks: Vec<(usize, Vec<f32>)> = par::map(rows.div_ceil(BLOCK), true, |b| {
            let r0 = b * BLOCK;
            let n = BLOCK.min(rows - r0);
            let mut buf = vec![0.0f32; tokens * n];
            self.apply_rows(x, tokens, (r0, n), &mut buf, &mut Vec::new());
            (r0, buf)
        });
        let mut y = vec![0.0f32; tokens * rows];
        for (r0, buf) in blocks {
            let n = buf.len() / tokens;
            for t in 0..tokens {
                y[t * rows + r0..t * rows + r0 + n].copy_from_slice(&buf[t * n..(t + 1) * n]);
            }
        }
        y
    }

    /// Single-threaded `y = W x + b` for one token (used inside already-parallel loops).
    pub(crate) fn matvec(&self, x: &[f32], y: &mut [f32], scratch: &mut Vec<f32>) {
        self.apply_rows(x, 1, (0, self.rows), y, scratch);
    }
}

/// f32 dot product with eight independent accumulators: the compiler vectorises it, and the
/// fixed association keeps results identical across thread counts.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for i in chunks * 8..n {
        tail += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}
