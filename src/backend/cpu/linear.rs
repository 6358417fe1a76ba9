//! Linear layers over weights in their stored precision (never expanded as a whole tensor).
//!
//! * Decode rows ([`crate::backend::Rows`]): the fused row kernels of [`super::simd`] read each
//!   stored row straight from the map and dot it with every token, so the weights stream
//!   through once with no f32 copy, and each token gets exactly a lone token's arithmetic.
//! * Prefill rows: a block of rows is decoded once into an f32 panel, which then meets all
//!   tokens in cache-sized pieces ([`simd::panel_product`]); each weight byte is still read
//!   once.

use super::par;
use super::q8::{self, Q8Row};
use super::simd::{self, Kind, Level};

use crate::checkpoint::{ByteView, DType};
use crate::error::{Error, Result};
use crate::weights::{LinearData, StoredLinear};

/// Rows per prefill panel (and per parallel task), at most: every row block streams all the
/// tokens' inputs past its panel (from L3 for long prompts), so more rows per block means
/// less of that traffic per multiply-add. The 256-column slice of 64 rows that the tiles
/// reuse (64 KiB) stays in L2. On the super slice's 4096 -> 18560 BF16 projection at 512
/// tokens, 2 threads: 16 rows took 1.3 s per call, 32 rows 1.05 s, 64 rows 0.97 s.
const ROW_BLOCK: usize = 64;

/// [`ROW_BLOCK`], or fewer rows (down to 16) where that leaves too few blocks to keep every
/// thread busy.
fn row_block(rows: usize, par: bool) -> usize {
    let threads = if par { rayon::current_num_threads() } else { 1 };
    (rows / (2 * threads)).clamp(16, ROW_BLOCK) / 4 * 4
}

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

/// One token's input laid out once for every weight of a given format and width (the chosen
/// experts of a MoE layer share theirs), as [`CpuLinear::rows_into`] reads it.
pub(crate) struct PreparedInput {
    raw: Vec<f32>,
    /// `prepare_x`'s layout for this kind at this level, or the int8 row.
    form: PreparedForm,
}

enum PreparedForm {
    Exact { kind: Kind, xp: Vec<f32> },
    Q8(Q8Row),
}

/// Packed codes and block scales of a run of NVFP4 rows.
type Nvfp4Rows<'a> = (&'a [u8], &'a [u8]);

pub(crate) struct CpuLinear {
    pub rows: usize,
    pub cols: usize,
    pub format: Format,
    pub bias: Option<Vec<f32>>,
    /// Decode against int8-quantized activations ([`q8`]); only ever set on NVFP4 weights.
    q8: bool,
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
            q8: false,
        })
    }

    /// Opts this weight into the int8-activation decode path when `on` and it is NVFP4.
    pub(crate) fn with_q8_activations(mut self, on: bool) -> CpuLinear {
        self.q8 = on && matches!(self.format, Format::Nvfp4 { .. });
        self
    }

    /// `x` (one token, `cols` wide) laid out for this weight's kernel, reusable by any weight
    /// of the same format and width.
    pub(crate) fn prepare_input(&self, x: &[f32]) -> PreparedInput {
        let raw = x[..self.cols].to_vec();
        let form = if self.q8 {
            let mut q = Q8Row::default();
            q.quantize(&raw);
            PreparedForm::Q8(q)
        } else {
            let mut xp = Vec::new();
            self.prepare(simd::level(), &raw, 1, &mut xp);
            PreparedForm::Exact {
                kind: self.kind(),
                xp,
            }
        };
        PreparedInput { raw, form }
    }

    /// Rows `r0 .. r0 + out.len()` of `W x + b` for one prepared token, each value exactly
    /// what [`Self::forward`] gives for it. An input prepared for another format is laid out
    /// again here (correct, only slower).
    pub(crate) fn rows_into(&self, r0: usize, x: &PreparedInput, out: &mut [f32]) {
        let lv = simd::level();
        match &x.form {
            PreparedForm::Q8(q) if self.q8 && q.q.len() == self.cols => self.q8_rows(r0, q, out),
            PreparedForm::Exact { kind, xp } if !self.q8 && *kind == self.kind() => {
                self.exact_rows(lv, r0, out, xp)
            }
            _ => self.rows_into(r0, &self.prepare_input(&x.raw), out),
        }
    }

    /// One token's rows `r0 .. r0 + out.len()` of `W x + b` through the exact kernels, `xp`
    /// from [`Self::prepare`]: BF16 in pairs, NVFP4 eight at a time, anything else row by row.
    fn exact_rows(&self, lv: Level, r0: usize, out: &mut [f32], xp: &[f32]) {
        if self.bf16_pairs(lv, r0, out, xp) || self.nvfp4_rows(lv, r0, out, xp) {
            return;
        }
        for (i, v) in out.iter_mut().enumerate() {
            *v = self.dot_row(lv, r0 + i, xp) + self.bias(r0 + i);
        }
    }

    /// The codes, block scales and tensor scale of NVFP4 rows `r0 .. r1`.
    fn nvfp4_rows_of(&self, r0: usize, r1: usize) -> Option<(Nvfp4Rows<'_>, f32)> {
        let Format::Nvfp4 {
            packed,
            block_scales,
            tensor_scale,
        } = &self.format
        else {
            return None;
        };
        let c = self.cols;
        Some((
            (
                &packed.bytes()[r0 * c / 2..r1 * c / 2],
                &block_scales.bytes()[r0 * c / 16..r1 * c / 16],
            ),
            *tensor_scale,
        ))
    }

    /// Adds the bias of rows `r0 ..` to `out`.
    fn add_bias(&self, r0: usize, out: &mut [f32]) {
        if self.bias.is_some() {
            for (i, v) in out.iter_mut().enumerate() {
                *v += self.bias(r0 + i);
            }
        }
    }

    /// `W[r] · x` for rows `r0 .. r0 + out.len()` against a quantized activation row, plus
    /// the bias (NVFP4 weights only).
    fn q8_rows(&self, r0: usize, x: &Q8Row, out: &mut [f32]) {
        let Some(((packed, scales), ts)) = self.nvfp4_rows_of(r0, r0 + out.len()) else {
            unreachable!("q8 is only set on NVFP4 weights")
        };
        q8::dot_nvfp4_rows(packed, scales, ts, self.cols, x, out);
        self.add_bias(r0, out);
    }

    /// `W[r] · x` against a quantized activation row (NVFP4 weights only).
    fn q8_dot(&self, r: usize, x: &Q8Row) -> f32 {
        let c = self.cols;
        match &self.format {
            Format::Nvfp4 {
                packed,
                block_scales,
                tensor_scale,
            } => q8::dot_nvfp4(
                &packed.bytes()[r * c / 2..(r + 1) * c / 2],
                &block_scales.bytes()[r * c / 16..(r + 1) * c / 16],
                *tensor_scale,
                x,
            ),
            _ => unreachable!("q8 is only set on NVFP4 weights"),
        }
    }

    /// Maps every page of the weight's file bytes now ([`ByteView::populate`]).
    pub(crate) fn populate(&self) {
        match &self.format {
            Format::F32(Store::Mapped(v))
            | Format::Bf16(Store::Mapped(v))
            | Format::F16(Store::Mapped(v))
            | Format::Fp8 { data: v, .. } => v.populate(),
            Format::Nvfp4 {
                packed,
                block_scales,
                ..
            } => {
                packed.populate();
                block_scales.populate();
            }
            _ => {}
        }
    }

    /// Bytes of the stored weight (codes and scales), what one pass over every row reads.
    pub(crate) fn stored_bytes(&self) -> usize {
        match &self.format {
            Format::F32(s) => s.slice().len() * 4,
            Format::Bf16(s) | Format::F16(s) => s.slice().len() * 2,
            Format::Fp8 { data, .. } => data.len(),
            Format::Nvfp4 {
                packed,
                block_scales,
                ..
            } => packed.len() + block_scales.len(),
        }
    }

    fn kind(&self) -> Kind {
        match self.format {
            Format::F32(_) => Kind::F32,
            Format::Bf16(_) => Kind::Bf16,
            Format::F16(_) => Kind::F16,
            Format::Fp8 { .. } => Kind::Fp8,
            Format::Nvfp4 { .. } => Kind::Nvfp4,
        }
    }

    /// Weight row `r` decoded to f32 into `out[..cols]`, bit-exact with the reference decode.
    pub(crate) fn decode_row(&self, r: usize, out: &mut [f32]) {
        self.decode_row_at(simd::level(), r, out);
    }

    fn decode_row_at(&self, lv: Level, r: usize, out: &mut [f32]) {
        let c = self.cols;
        let out = &mut out[..c];
        match &self.format {
            Format::F32(s) => out.copy_from_slice(&s.slice()[r * c..(r + 1) * c]),
            Format::Bf16(s) => simd::decode_bf16(lv, &s.slice()[r * c..(r + 1) * c], out),
            Format::F16(s) => simd::decode_f16(lv, &s.slice()[r * c..(r + 1) * c], out),
            Format::Fp8 { data, scale } => {
                simd::decode_fp8(lv, &data.bytes()[r * c..(r + 1) * c], *scale, out)
            }
            // Block and tensor scales are multiplied together first, as ModelOpt's dequantize
            // does, so the decoded weight is bit-identical to the reference's.
            Format::Nvfp4 {
                packed,
                block_scales,
                tensor_scale,
            } => simd::decode_nvfp4(
                lv,
                &packed.bytes()[r * c / 2..(r + 1) * c / 2],
                &block_scales.bytes()[r * c / 16..(r + 1) * c / 16],
                *tensor_scale,
                out,
            ),
        }
    }

    /// The `tokens` rows of `x` laid out for [`Self::dot_row`] in `buf`; returns their stride.
    fn prepare(&self, lv: Level, x: &[f32], tokens: usize, buf: &mut Vec<f32>) -> usize {
        let (kind, c) = (self.kind(), self.cols);
        let stride = simd::x_len(lv, kind, c);
        buf.clear();
        buf.resize(tokens * stride, 0.0);
        for (xt, out) in x.chunks_exact(c).zip(buf.chunks_exact_mut(stride)) {
            simd::prepare_x(lv, kind, xt, out);
        }
        stride
    }

    /// `W[r] · x` straight from the stored row, `xp` from [`Self::prepare`].
    fn dot_row(&self, lv: Level, r: usize, xp: &[f32]) -> f32 {
        let c = self.cols;
        match &self.format {
            Format::F32(s) => simd::dot_f32(lv, &s.slice()[r * c..(r + 1) * c], xp),
            Format::Bf16(s) => simd::dot_bf16(lv, &s.slice()[r * c..(r + 1) * c], xp),
            Format::F16(s) => simd::dot_f16(lv, &s.slice()[r * c..(r + 1) * c], xp),
            Format::Fp8 { data, scale } => {
                simd::dot_fp8(lv, &data.bytes()[r * c..(r + 1) * c], *scale, xp)
            }
            Format::Nvfp4 {
                packed,
                block_scales,
                tensor_scale,
            } => simd::dot_nvfp4(
                lv,
                &packed.bytes()[r * c / 2..(r + 1) * c / 2],
                &block_scales.bytes()[r * c / 16..(r + 1) * c / 16],
                *tensor_scale,
                xp,
            ),
        }
    }

    /// One-token outputs of rows `r0 .. r0 + y.len()` of a BF16 weight, two rows per pass
    /// (they share the input's loads; each value is bit-identical to [`Self::dot_row`]'s).
    /// `false`, with nothing written, where the weight is not BF16 or the level has no paired
    /// kernel.
    fn bf16_pairs(&self, lv: Level, r0: usize, y: &mut [f32], xp: &[f32]) -> bool {
        let Format::Bf16(s) = &self.format else {
            return false;
        };
        let (w, c) = (s.slice(), self.cols);
        let row = |r: usize| &w[r * c..(r + 1) * c];
        let mut i = 0;
        while i < y.len() {
            let r = r0 + i;
            if i + 1 < y.len() {
                let Some((a, b)) = simd::dot_bf16_pair(lv, row(r), row(r + 1), xp) else {
                    return false;
                };
                y[i] = a + self.bias(r);
                y[i + 1] = b + self.bias(r + 1);
                i += 2;
            } else {
                y[i] = self.dot_row(lv, r, xp) + self.bias(r);
                i += 1;
            }
        }
        true
    }

    /// One-token outputs of rows `r0 .. r0 + y.len()` of an NVFP4 weight through the many-row
    /// kernel (each value bit-identical to [`Self::dot_row`]'s). `false`, with nothing
    /// written, where the weight is not NVFP4 or the level has no such kernel.
    fn nvfp4_rows(&self, lv: Level, r0: usize, y: &mut [f32], xp: &[f32]) -> bool {
        let Some((rows, ts)) = self.nvfp4_rows_of(r0, r0 + y.len()) else {
            return false;
        };
        if !simd::dot_nvfp4_rows(lv, rows, ts, self.cols, xp, y) {
            return false;
        }
        self.add_bias(r0, y);
        true
    }

    /// Many-token outputs (`[rows, T]`) of rows `r0 ..` of a BF16 or FP8 weight, each row
    /// loaded once for all the tokens and every value bit-identical to [`Self::dot_row`]'s.
    /// `false`, with nothing written, for other formats or where the level has no such kernel.
    fn dense_tokens(&self, lv: Level, r0: usize, xp: &[&[f32]], y: &mut [f32]) -> bool {
        let c = self.cols;
        let done = match &self.format {
            Format::Bf16(s) => simd::dot_bf16_tokens(lv, &s.slice()[r0 * c..], c, xp, y),
            Format::Fp8 { data, scale } => {
                simd::dot_fp8_tokens(lv, &data.bytes()[r0 * c..], c, *scale, xp, y)
            }
            _ => false,
        };
        if done && self.bias.is_some() {
            for (i, o) in y.chunks_exact_mut(xp.len()).enumerate() {
                let b = self.bias(r0 + i);
                o.iter_mut().for_each(|v| *v += b);
            }
        }
        done
    }

    fn bias(&self, r: usize) -> f32 {
        self.bias.as_ref().map_or(0.0, |b| b[r])
    }

    /// Rows `r0..r0 + n` for many tokens: the rows are decoded once into a panel, which then
    /// meets every token in L1-sized pieces. Returns `[T, n]`.
    fn panel_rows(&self, lv: Level, x: &[f32], tokens: usize, (r0, n): (usize, usize)) -> Vec<f32> {
        let stride = simd::panel_stride(self.cols);
        let mut panel = vec![0.0f32; n * stride];
        for (i, row) in panel.chunks_exact_mut(stride).enumerate() {
            self.decode_row_at(lv, r0 + i, row);
        }
        let mut out = vec![0.0f32; tokens * n];
        simd::panel_product(lv, &panel, n, x, self.cols, &mut out);
        for o in out.chunks_exact_mut(n) {
            self.add_bias(r0, o);
        }
        out
    }

    /// `y = x Wᵀ + b` for `x` `[T, cols]`, parallel over blocks of output rows; the first
    /// `decode` tokens through the decode kernels, the rest through the prefill panels. Every
    /// output depends only on its row, its token and that token's kind (and the SIMD level),
    /// never on the other tokens or the thread count.
    pub(crate) fn forward(&self, x: &[f32], tokens: usize, decode: usize, par: bool) -> Vec<f32> {
        let decode = decode.min(tokens);
        if decode == 0 {
            return self.prefill(x, tokens, par);
        }
        if decode == tokens {
            return self.decode(x, tokens, par);
        }
        let mut y = self.decode(&x[..decode * self.cols], decode, par);
        y.extend(self.prefill(&x[decode * self.cols..], tokens - decode, par));
        y
    }

    /// Decode rows: each weight byte is read once from the map by the fused row kernels, each
    /// token's dot products computed exactly as a lone token's are.
    fn decode(&self, x: &[f32], tokens: usize, par: bool) -> Vec<f32> {
        let lv = simd::level();
        let rows = self.rows;
        let q8: Vec<Q8Row> = if self.q8 {
            x.chunks_exact(self.cols)
                .map(|xt| {
                    let mut q = Q8Row::default();
                    q.quantize(xt);
                    q
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut xp = Vec::new();
        let stride = if self.q8 {
            0
        } else {
            self.prepare(lv, x, tokens, &mut xp)
        };
        // Only the many-token path reads them: a single-token step allocates nothing here.
        let token_inputs: Vec<&[f32]> = if tokens > 1 && stride > 0 {
            xp.chunks_exact(stride).collect()
        } else {
            Vec::new()
        };
        let per = if par {
            (rows / (rayon::current_num_threads() * 8)).clamp(16, 256)
        } else {
            rows.max(1)
        };
        let mut yt = vec![0.0f32; rows * tokens];
        par::chunks_mut(&mut yt, per * tokens, par, |b, chunk| {
            if tokens == 1 {
                if self.q8 {
                    self.q8_rows(b * per, &q8[0], chunk);
                } else {
                    self.exact_rows(lv, b * per, chunk, &xp);
                }
                return;
            }
            if !self.q8 && self.dense_tokens(lv, b * per, &token_inputs, chunk) {
                return;
            }
            for (i, o) in chunk.chunks_exact_mut(tokens).enumerate() {
                let r = b * per + i;
                // NVFP4: the row's codes decoded once for all the tokens, each token's sums
                // exactly `dot_row`'s.
                if !self.q8
                    && let Some(((packed, scales), ts)) = self.nvfp4_rows_of(r, r + 1)
                {
                    simd::dot_nvfp4_tokens(lv, packed, scales, ts, &token_inputs, o);
                    o.iter_mut().for_each(|v| *v += self.bias(r));
                    continue;
                }
                for (t, v) in o.iter_mut().enumerate() {
                    let d = if self.q8 {
                        self.q8_dot(r, &q8[t])
                    } else {
                        self.dot_row(lv, r, &xp[t * stride..(t + 1) * stride])
                    };
                    *v = d + self.bias(r);
                }
            }
        });
        if tokens == 1 {
            return yt;
        }
        let mut y = vec![0.0f32; tokens * rows];
        for (r, o) in yt.chunks_exact(tokens).enumerate() {
            for (t, &v) in o.iter().enumerate() {
                y[t * rows + r] = v;
            }
        }
        y
    }

    /// Prefill rows: blocks of weight rows, each decoded once for all tokens.
    fn prefill(&self, x: &[f32], tokens: usize, par: bool) -> Vec<f32> {
        let (lv, rows) = (simd::level(), self.rows);
        let block = row_block(rows, par);
        let blocks: Vec<(usize, Vec<f32>)> = par::map(rows.div_ceil(block), par, |b| {
            let r0 = b * block;
            let n = block.min(rows - r0);
            (r0, self.panel_rows(lv, x, tokens, (r0, n)))
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
