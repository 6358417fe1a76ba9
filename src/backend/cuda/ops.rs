//! Every op of the trait as launches of the `cuda/<op>.cu` kernels: shape checks here, math
//! there. Launch shapes are chosen per op; see each kernel file for why.

use super::device::{Arg, blocks};
use super::kernels::{self as k, Family, Kernel};
use super::weights::{CudaExperts, ExpertStack, FMT_NVFP4, tensor_core_format};
use super::{CudaBackend, CudaKv};
use crate::backend::{
    AttnDims, ElemType, ExpertWeights, RouterParams, Routing, SsmDims, Tensor, Weight,
};
use crate::error::Result;

/// Rows per block of `linear_gemv` and the expert kernels: four warps of four rows
/// (`GEMV_NR` in cuda/linear.cu, `MOE_NR` in cuda/moe_experts.cu).
const GEMV_ROWS: usize = 16;
const GEMV_THREADS: u32 = 128;
/// Rows of one `moe_down` block (`MOE_NR` in cuda/moe_experts.cu).
const MOE_NR: usize = 4;
/// Weight rows per block of the sm_100 W4A4 kernels (TC05_ROWS in cuda/tcgen05.cuh: the
/// tcgen05 MMA's M) and their dynamic shared memory (TC05_SMEM: two stage buffers of 128 weight
/// rows and 64 activation rows by 64 bytes).
const TCGEN05_ROWS: usize = 128;
const TCGEN05_SHARED: u32 = 2 * (128 + 64) * 64;

/// The W4A4 kernel files of one family of Blackwell GPUs, each with entries `linear_fp4`,
/// `moe_up_fp4` and `moe_down_fp4`, and their launch shape.
struct Fp4Kernels {
    linear: &'static Kernel,
    experts: &'static Kernel,
    /// Weight rows per block.
    rows: usize,
    /// Dynamic shared memory per block, bytes.
    shared: u32,
}

/// Prefill tokens per chunk of the chunked scan, at least: shorter chunks would spend more on
/// carrying states between them than they save.
const SCAN_CHUNK_MIN: usize = 64;
/// Resident warps per SM the scan aims to fill (half of Hopper's 64).
const SCAN_WARPS_PER_SM: usize = 32;

/// How many chunks a scan of `tokens` over `pairs` (head, channel) warps is cut into: 1 when
/// the pairs fill the GPU on their own (Super's 8192 do on an H100) or the prefill is short.
pub(crate) fn scan_chunks(tokens: usize, pairs: usize, sms: usize) -> usize {
    let fill = sms * SCAN_WARPS_PER_SM;
    if pairs == 0 || pairs >= fill || tokens < 2 * SCAN_CHUNK_MIN {
        return 1;
    }
    fill.div_ceil(pairs).min(tokens / SCAN_CHUNK_MIN).max(1)
}

impl CudaBackend {
    pub(crate) fn op_embed(&self, table: &Weight, ids: &[u32]) -> Result<Tensor> {
        let t = self.linear_of(table)?;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= t.rows) {
            return Err(self.dev.err(format!(
                "token id {bad} is outside the vocabulary of `{}` ({} rows)",
                table.name, t.rows
            )));
        }
        let out = self.output(vec![ids.len(), t.cols], "embeddings")?;
        if ids.is_empty() {
            return Ok(out);
        }
        let mut idb = self.dev.scratch(ids.len() * 4, "token ids")?;
        self.dev
            .write(&mut idb, 0, bytemuck::cast_slice(ids), "token ids")?;
        self.dev.launch(
            &k::EMBED,
            "embed",
            (ids.len() as u32, blocks(t.cols, 256).min(65535), 1),
            256,
            0,
            &[
                Arg::I32(t.format),
                (&t.data).into(),
                (&t.scales).into(),
                Arg::F32(t.tensor_scale),
                (&idb).into(),
                self.buf(&out)?.into(),
                Arg::I32(t.cols as i32),
            ],
        )?;
        Ok(out)
    }

    pub(crate) fn op_rms_norm(&self, x: &Tensor, w: &Weight, eps: f32) -> Result<Tensor> {
        let (wb, n) = self.vector_of(w)?;
        let out = self.output(vec![x.rows(), n], "rms_norm output")?;
        if x.rows() > 0 {
            self.dev.launch(
                &k::RMS_NORM,
                "rms_norm",
                (x.rows() as u32, 1, 1),
                256,
                0,
                &[
                    self.buf(x)?.into(),
                    wb.into(),
                    self.buf(&out)?.into(),
                    Arg::I32(n as i32),
                    Arg::F32(eps),
                ],
            )?;
        }
        Ok(out)
    }

    pub(crate) fn op_add_rms_norm(
        &self,
        residual: &mut Tensor,
        delta: &Tensor,
        w: &Weight,
        eps: f32,
    ) -> Result<Tensor> {
        let (wb, n) = self.vector_of(w)?;
        let rows = residual.rows();
        let out = self.output(vec![rows, n], "add_rms_norm output")?;
        if rows > 0 {
            self.dev.launch(
                &k::ADD_RMS_NORM,
                "add_rms_norm",
                (rows as u32, 1, 1),
                256,
                0,
                &[
                    self.buf(residual)?.into(),
                    self.buf(delta)?.into(),
                    wb.into(),
                    self.buf(&out)?.into(),
                    Arg::I32(n as i32),
                    Arg::F32(eps),
                ],
            )?;
        }
        Ok(out)
    }

    /// `decode`: the rows are decode rows and go through the GEMV kernel (each token's sums
    /// formed as a lone token's are), whatever their number; otherwise the GEMM tiles.
    pub(crate) fn op_linear(&self, x: &Tensor, w: &Weight, decode: bool) -> Result<Tensor> {
        let l = self.linear_of(w)?;
        let tokens = x.rows();
        let y = self.output(vec![tokens, l.rows], "linear output")?;
        if tokens == 0 || l.rows == 0 {
            return Ok(y);
        }
        let (bias, has_bias) = match &l.bias {
            Some(b) => (Arg::Ptr(b.ptr), 1),
            None => (Arg::Ptr(l.data.ptr), 0),
        };
        if self.fp4_mma
            && l.format == FMT_NVFP4
            && let Some(input_scale) = l.input_scale
            && input_scale.is_finite()
            && input_scale > 0.0
        {
            return self.linear_fp4_mma(x, l, input_scale, bias, has_bias, y);
        }
        let args = [
            Arg::I32(l.format),
            (&l.data).into(),
            (&l.scales).into(),
            Arg::F32(l.tensor_scale),
            bias,
            Arg::I32(has_bias),
            self.buf(x)?.into(),
            self.buf(&y)?.into(),
            Arg::I32(l.rows as i32),
            Arg::I32(l.cols as i32),
            Arg::I32(tokens as i32),
        ];
        if decode {
            self.dev.launch(
                &k::LINEAR,
                "linear_gemv",
                (blocks(l.rows, GEMV_ROWS), tokens.div_ceil(4) as u32, 1),
                GEMV_THREADS,
                0,
                &args,
            )?;
        } else {
            let grid = (l.rows.div_ceil(64) as u32, tokens.div_ceil(64) as u32, 1);
            match self.tile_terms(l.format) {
                0 => self
                    .dev
                    .launch(&k::LINEAR, "linear_gemm", grid, 256, 0, &args)?,
                terms => {
                    let mut tc = vec![Arg::I32(terms)];
                    tc.extend(args);
                    self.dev
                        .launch(&k::LINEAR, "linear_gemm_tc", grid, 256, 0, &tc)?;
                }
            }
        }
        Ok(y)
    }

    /// Activation terms of the tensor-core GEMM tiles for weights of `format`; 0 = the f32
    /// tiles (asked for, no tensor cores, or a format that does not decode exactly to bf16).
    fn tile_terms(&self, format: i32) -> i32 {
        if tensor_core_format(format) {
            self.prefill_terms as i32
        } else {
            0
        }
    }

    /// The W4A4 kernels of this GPU's family of Blackwell.
    fn fp4_kernels(&self) -> Fp4Kernels {
        if Family::Sm100.has(self.dev.cc.0) {
            Fp4Kernels {
                linear: &k::LINEAR_NVFP4_TCGEN05,
                experts: &k::MOE_EXPERTS_NVFP4_TCGEN05,
                rows: TCGEN05_ROWS,
                shared: TCGEN05_SHARED,
            }
        } else {
            Fp4Kernels {
                linear: &k::LINEAR_NVFP4_MMA,
                experts: &k::MOE_EXPERTS_NVFP4_MMA,
                rows: 64,
                shared: 0,
            }
        }
    }

    /// W4A4 on Blackwell: quantize the activations to NVFP4 with the checkpoint's input scale,
    /// then the block-scaled FP4 MMA.
    fn linear_fp4_mma(
        &self,
        x: &Tensor,
        l: &super::weights::CudaLinear,
        input_scale: f32,
        bias: Arg,
        has_bias: i32,
        y: Tensor,
    ) -> Result<Tensor> {
        let tokens = x.rows();
        let xq = self.dev.scratch(tokens * l.cols / 2, "NVFP4 activations")?;
        let xs = self
            .dev
            .scratch(tokens * l.cols / 16, "NVFP4 activation scales")?;
        self.dev.launch(
            &k::QUANTIZE_NVFP4,
            "quantize_nvfp4",
            (blocks(tokens * l.cols / 16, 256), 1, 1),
            256,
            0,
            &[
                self.buf(x)?.into(),
                (&xq).into(),
                (&xs).into(),
                Arg::I32(tokens as i32),
                Arg::I32(l.cols as i32),
                Arg::F32(input_scale),
            ],
        )?;
        let fp4 = self.fp4_kernels();
        self.dev.launch(
            fp4.linear,
            "linear_fp4",
            (
                l.rows.div_ceil(fp4.rows) as u32,
                tokens.div_ceil(64) as u32,
                1,
            ),
            128,
            fp4.shared,
            &[
                (&l.data).into(),
                (&l.scales).into(),
                Arg::F32(l.tensor_scale),
                (&xq).into(),
                (&xs).into(),
                Arg::F32(input_scale),
                bias,
                Arg::I32(has_bias),
                self.buf(&y)?.into(),
                Arg::I32(l.rows as i32),
                Arg::I32(l.cols as i32),
                Arg::I32(tokens as i32),
            ],
        )?;
        Ok(y)
    }

    pub(crate) fn op_relu2(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.numel();
        let y = self.output(x.shape().to_vec(), "relu2 output")?;
        if n > 0 {
            self.dev.launch(
                &k::RELU2,
                "relu2",
                (blocks(n, 256), 1, 1),
                256,
                0,
                &[
                    self.buf(x)?.into(),
                    self.buf(&y)?.into(),
                    Arg::U64(n as u64),
                ],
            )?;
        }
        Ok(y)
    }

    pub(crate) fn op_add(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        let n = a.numel();
        if n > 0 {
            self.dev.launch(
                &k::ADD,
                "add",
                (blocks(n, 256), 1, 1),
                256,
                0,
                &[self.buf(a)?.into(), self.buf(b)?.into(), Arg::U64(n as u64)],
            )?;
        }
        Ok(())
    }

    pub(crate) fn op_split_columns(&self, x: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>> {
        let total: usize = widths.iter().sum();
        let rows = x.rows();
        let mut out = Vec::with_capacity(widths.len());
        let mut offset = 0;
        for &w in widths {
            let part = self.output(vec![rows, w], "split_columns output")?;
            if rows * w > 0 {
                self.dev.launch(
                    &k::SPLIT_COLUMNS,
                    "split_columns",
                    (blocks(rows * w, 256), 1, 1),
                    256,
                    0,
                    &[
                        self.buf(x)?.into(),
                        self.buf(&part)?.into(),
                        Arg::I32(rows as i32),
                        Arg::I32(total as i32),
                        Arg::I32(offset as i32),
                        Arg::I32(w as i32),
                    ],
                )?;
            }
            out.push(part);
            offset += w;
        }
        Ok(out)
    }

    pub(crate) fn op_last_row(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, cols) = (x.rows(), x.cols());
        let out = self.output(vec![1, cols], "last_row output")?;
        if cols > 0 {
            self.dev.launch(
                &k::LAST_ROW,
                "last_row",
                (blocks(cols, 256), 1, 1),
                256,
                0,
                &[
                    self.buf(x)?.into(),
                    self.buf(&out)?.into(),
                    Arg::I32(rows as i32),
                    Arg::I32(cols as i32),
                ],
            )?;
        }
        Ok(out)
    }

    pub(crate) fn op_conv1d_silu(
        &self,
        x: &Tensor,
        w: &Weight,
        b: Option<&Weight>,
        state: &mut Tensor,
    ) -> Result<Tensor> {
        let wl = self.linear_of(w)?;
        let (hist, channels) = (state.rows(), state.cols());
        let kernel = hist + 1;
        if wl.rows != channels || wl.cols != kernel {
            return Err(self.dev.err(format!(
                "conv1d_silu: weight `{}` is [{}, {}], state expects [{channels}, {kernel}]",
                w.name, wl.rows, wl.cols
            )));
        }
        if kernel > 8 {
            return Err(self.dev.err(format!(
                "conv1d_silu: kernel width {kernel} is over the supported 8"
            )));
        }
        let bias = b.map(|b| self.vector_of(b)).transpose()?;
        if let Some((_, n)) = bias
            && n != channels
        {
            return Err(self.dev.err(format!(
                "conv1d_silu: bias has {n} values for {channels} channels"
            )));
        }
        let tokens = x.rows();
        let y = self.output(vec![tokens, channels], "conv1d output")?;
        if tokens > 0 && channels > 0 {
            let (bias_arg, has_bias) = match bias {
                Some((bb, _)) => (bb.into(), 1),
                None => ((&wl.data).into(), 0),
            };
            self.dev.launch(
                &k::CONV1D_SILU,
                "conv1d_silu",
                (blocks(channels, 128), 1, 1),
                128,
                0,
                &[
                    self.buf(x)?.into(),
                    Arg::I32(wl.format),
                    (&wl.data).into(),
                    (&wl.scales).into(),
                    Arg::F32(wl.tensor_scale),
                    bias_arg,
                    Arg::I32(has_bias),
                    self.buf(state)?.into(),
                    self.buf(&y)?.into(),
                    Arg::I32(tokens as i32),
                    Arg::I32(channels as i32),
                    Arg::I32(kernel as i32),
                ],
            )?;
        }
        Ok(y)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_ssm_scan(
        &self,
        xbc: &Tensor,
        dt: &Tensor,
        a_log: &Weight,
        d: &Weight,
        dt_bias: &Weight,
        state: &mut Tensor,
        dims: SsmDims,
        dt_min: Option<f32>,
    ) -> Result<Tensor> {
        let inner = dims.inner()?;
        self.check_rows(xbc, &[dt], "ssm_scan (xBC, dt)")?;
        if state.shape() != [dims.heads, dims.head_dim, dims.state] {
            return Err(self.dev.err(format!(
                "ssm_scan: state is {:?}, dims say [{}, {}, {}]",
                state.shape(),
                dims.heads,
                dims.head_dim,
                dims.state
            )));
        }
        if dims.state > 256 || dims.groups == 0 || !dims.heads.is_multiple_of(dims.groups) {
            return Err(self.dev.err(format!(
                "ssm_scan: unsupported dims {dims:?} (state <= 256, heads a multiple of groups)"
            )));
        }
        let per_head = |w| {
            let (buf, n) = self.vector_of(w)?;
            if n != dims.heads {
                return Err(self.dev.err(format!(
                    "ssm_scan: `{}` has {n} values for {} heads",
                    w.name, dims.heads
                )));
            }
            Ok(buf)
        };
        let (a, dv, db) = (per_head(a_log)?, per_head(d)?, per_head(dt_bias)?);
        let tokens = xbc.rows();
        let y = self.output(vec![tokens, inner], "ssm_scan output")?;
        let chunks = scan_chunks(tokens, inner, self.dev.sms);
        if chunks > 1 {
            let chunk = tokens.div_ceil(chunks);
            let chunks = tokens.div_ceil(chunk);
            let cs = self
                .dev
                .scratch(chunks * inner * dims.state * 4, "ssm_scan chunk states")?;
            let cd = self
                .dev
                .scratch(chunks * dims.heads * 4, "ssm_scan chunk decays")?;
            let shape = [
                Arg::I32(tokens as i32),
                Arg::I32(chunk as i32),
                Arg::I32(dims.heads as i32),
                Arg::I32(dims.head_dim as i32),
                Arg::I32(dims.groups as i32),
                Arg::I32(dims.state as i32),
                Arg::I32(dt_min.is_some() as i32),
                Arg::F32(dt_min.unwrap_or(0.0)),
            ];
            let (xb, dtb) = (self.buf(xbc)?, self.buf(dt)?);
            let grid = (blocks(inner, 4), chunks as u32, 1);
            let mut args: Vec<Arg> = vec![
                xb.into(),
                dtb.into(),
                a.into(),
                db.into(),
                (&cs).into(),
                (&cd).into(),
            ];
            args.extend(shape);
            self.dev
                .launch(&k::SSM_SCAN, "ssm_chunk_state", grid, 128, 0, &args)?;
            self.dev.launch(
                &k::SSM_SCAN,
                "ssm_chunk_carry",
                (blocks(inner, 4), 1, 1),
                128,
                0,
                &[
                    self.buf(state)?.into(),
                    (&cs).into(),
                    (&cd).into(),
                    Arg::I32(chunks as i32),
                    Arg::I32(dims.heads as i32),
                    Arg::I32(dims.head_dim as i32),
                    Arg::I32(dims.state as i32),
                ],
            )?;
            let mut args: Vec<Arg> = vec![
                xb.into(),
                dtb.into(),
                a.into(),
                dv.into(),
                db.into(),
                (&cs).into(),
                self.buf(&y)?.into(),
            ];
            args.extend(shape);
            self.dev
                .launch(&k::SSM_SCAN, "ssm_chunk_output", grid, 128, 0, &args)?;
        } else if tokens > 0 && inner > 0 {
            self.dev.launch(
                &k::SSM_SCAN,
                "ssm_scan",
                (blocks(inner, 4), 1, 1),
                128,
                0,
                &[
                    self.buf(xbc)?.into(),
                    self.buf(dt)?.into(),
                    a.into(),
                    dv.into(),
                    db.into(),
                    self.buf(state)?.into(),
                    self.buf(&y)?.into(),
                    Arg::I32(tokens as i32),
                    Arg::I32(dims.heads as i32),
                    Arg::I32(dims.head_dim as i32),
                    Arg::I32(dims.groups as i32),
                    Arg::I32(dims.state as i32),
                    Arg::I32(dt_min.is_some() as i32),
                    Arg::F32(dt_min.unwrap_or(0.0)),
                ],
            )?;
        }
        Ok(y)
    }

    pub(crate) fn op_gated_group_rms_norm(
        &self,
        y: &Tensor,
        z: &Tensor,
        w: &Weight,
        groups: usize,
        eps: f32,
    ) -> Result<Tensor> {
        let (wb, n) = self.vector_of(w)?;
        self.check_rows(y, &[z], "gated_group_rms_norm (y, z)")?;
        if groups == 0 || !n.is_multiple_of(groups) {
            return Err(self.dev.err(format!(
                "gated_group_rms_norm: {n} columns do not split into {groups} groups"
            )));
        }
        let out = self.output(vec![y.rows(), n], "gated norm output")?;
        if y.rows() > 0 {
            self.dev.launch(
                &k::GATED_GROUP_RMS_NORM,
                "gated_group_rms_norm",
                (y.rows() as u32, groups as u32, 1),
                256,
                0,
                &[
                    self.buf(y)?.into(),
                    self.buf(z)?.into(),
                    wb.into(),
                    self.buf(&out)?.into(),
                    Arg::I32(n as i32),
                    Arg::I32(groups as i32),
                    Arg::F32(eps),
                ],
            )?;
        }
        Ok(out)
    }

    pub(crate) fn op_attention(
        &self,
        q: &Tensor,
        kt: &Tensor,
        v: &Tensor,
        cache: &mut Tensor,
        dims: AttnDims,
    ) -> Result<Tensor> {
        let AttnDims {
            heads,
            kv_heads,
            head_dim: hd,
        } = dims;
        let (q_width, kv_width) = (dims.q_width()?, dims.kv_width()?);
        self.check_rows(q, &[kt, v], "attention (q, k, v)")?;
        if hd > 256 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(self.dev.err(format!(
                "attention: unsupported dims {dims:?} (head_dim <= 256, heads a multiple of kv heads)"
            )));
        }
        let tokens = q.rows();
        let (kb, vb) = (self.buf(kt)?, self.buf(v)?);
        let c = cache
            .inner_mut::<CudaKv>()
            .ok_or_else(|| self.dev.err("attention: not a CUDA KV cache"))?;
        if c.width != kv_width {
            return Err(self.dev.err(format!(
                "attention: the KV cache holds {} values per token, dims say {kv_width}",
                c.width,
            )));
        }
        let start = c.len;
        let need = start + tokens;
        // The kernels take positions as 32-bit ints.
        if need > i32::MAX as usize {
            return Err(self.dev.err(format!(
                "attention: a KV cache of {need} positions is more than the kernels' 32-bit \
                 positions allow ({})",
                i32::MAX
            )));
        }
        let eb = c.elem_bytes();
        if need > c.cap {
            // Doubling keeps appends amortised O(1) without knowing the context length ahead.
            let cap = need.max(c.cap * 2).max(16);
            let bytes = cap * c.width * eb;
            let mut k2 = self.dev.alloc(bytes, "kv cache")?;
            let mut v2 = self.dev.alloc(bytes, "kv cache")?;
            let used = c.len * c.width * eb;
            self.dev.copy(&c.k, 0, &mut k2, 0, used)?;
            self.dev.copy(&c.v, 0, &mut v2, 0, used)?;
            c.k = k2;
            c.v = v2;
            c.cap = cap;
        }
        let n = tokens * c.width;
        // A kernel rather than a copy, so a decode step's append is a graph node like the rest.
        if n > 0 {
            let (ks, vs) = c.fp8.unwrap_or((1.0, 1.0));
            let entry = if c.fp8.is_some() {
                "kv_append_fp8"
            } else {
                "kv_append"
            };
            for (src, dst, s) in [(kb, &c.k, ks), (vb, &c.v, vs)] {
                let mut args = vec![
                    src.into(),
                    dst.into(),
                    Arg::U64((start * c.width) as u64),
                    Arg::U64(n as u64),
                ];
                if c.fp8.is_some() {
                    args.push(Arg::F32(s));
                }
                self.dev.launch(
                    &k::ATTENTION,
                    entry,
                    (blocks(n, 256).min(65535), 1, 1),
                    256,
                    0,
                    &args,
                )?;
            }
        }
        c.len = need;
        let (kc, vc, width, fp8) = (c.k.ptr, c.v.ptr, c.width, c.fp8);
        cache.set_shape(vec![need, width]);
        let out = self.output(vec![tokens, q_width], "attention output")?;
        if tokens > 0 && heads > 0 {
            let mut args = vec![
                self.buf(q)?.into(),
                Arg::Ptr(kc),
                Arg::Ptr(vc),
                self.buf(&out)?.into(),
                Arg::I32(tokens as i32),
                Arg::I32(start as i32),
                Arg::I32(heads as i32),
                Arg::I32(kv_heads as i32),
                Arg::I32(hd as i32),
                Arg::F32((hd as f32).powf(-0.5)),
            ];
            let entry = match fp8 {
                Some((ks, vs)) => {
                    args.extend([Arg::F32(ks), Arg::F32(vs)]);
                    "attention_fp8"
                }
                None => "attention",
            };
            self.dev.launch(
                &k::ATTENTION,
                entry,
                (tokens as u32, heads as u32, 1),
                128,
                0,
                &args,
            )?;
        }
        Ok(out)
    }

    pub(crate) fn op_router(
        &self,
        logits: &Tensor,
        bias: &Weight,
        p: &RouterParams,
    ) -> Result<Routing> {
        let (bb, experts) = self.vector_of(bias)?;
        if p.top_k == 0 || p.top_k > experts {
            return Err(self.dev.err(format!(
                "router: top_k {} is outside 1..={experts}",
                p.top_k
            )));
        }
        if p.n_group > 1 && (p.n_group > 64 || !experts.is_multiple_of(p.n_group)) {
            return Err(self.dev.err(format!(
                "router: {experts} experts in {} groups is not supported (at most 64 equal groups)",
                p.n_group
            )));
        }
        let tokens = logits.rows();
        let ids = self.output_u32(vec![tokens, p.top_k], "routing ids")?;
        let weights = self.output(vec![tokens, p.top_k], "routing weights")?;
        if tokens > 0 {
            let shared = (experts * 9).next_multiple_of(4) as u32;
            self.dev.launch(
                &k::ROUTER,
                "router",
                (tokens as u32, 1, 1),
                256,
                shared,
                &[
                    self.buf(logits)?.into(),
                    bb.into(),
                    self.buf(&ids)?.into(),
                    self.buf(&weights)?.into(),
                    Arg::I32(experts as i32),
                    Arg::I32(p.top_k as i32),
                    Arg::I32(p.n_group as i32),
                    Arg::I32(p.topk_group as i32),
                    Arg::I32(p.norm_topk_prob as i32),
                    Arg::F32(p.scaling),
                ],
            )?;
        }
        Ok(Routing { ids, weights })
    }

    pub(crate) fn op_moe_experts(
        &self,
        x: &Tensor,
        experts: &ExpertWeights,
        routing: &Routing,
        decode: bool,
    ) -> Result<Tensor> {
        let ex = experts.inner::<CudaExperts>().ok_or_else(|| {
            self.dev
                .err(format!("`{}` is not a CUDA expert set", experts.name))
        })?;
        if routing.ids.elem() != ElemType::U32 {
            return Err(self
                .dev
                .err("moe_experts: routing ids are not a u32 tensor"));
        }
        let tokens = x.rows();
        let k = routing.ids.cols();
        let (f, l) = (experts.hidden, experts.latent);
        // Kernels index slots and activations with 32-bit ints.
        if tokens
            .checked_mul(k)
            .and_then(|s| s.checked_mul(f.max(l)))
            .is_none_or(|n| n > i32::MAX as usize)
        {
            return Err(self.dev.err(format!(
                "moe_experts: {tokens} tokens x {k} experts x width {} is more than the kernels' \
                 32-bit indices allow; run fewer tokens per call",
                f.max(l)
            )));
        }
        if tokens == 0 || k == 0 {
            // A sum over no experts.
            return self.zero_output(vec![tokens, l], "moe output");
        }
        let out = self.output(vec![tokens, l], "moe output")?;
        if self.fp4_mma && ex.up.input_scales.is_some() && ex.down.input_scales.is_some() {
            return self.moe_experts_fp4(x, ex, experts.experts, routing, (f, l), out);
        }
        let ids = self.buf(&routing.ids)?;
        if !decode {
            return self.moe_experts_grouped(x, ex, experts.experts, routing, (f, l), out);
        }
        // Slot activations [T·k, F] stay on the device between the two launches.
        let h = self.dev.scratch(tokens * k * f * 4, "expert activations")?;
        self.dev.launch(
            &k::MOE_EXPERTS,
            "moe_up",
            ((tokens * k) as u32, blocks(f, GEMV_ROWS), 1),
            GEMV_THREADS,
            0,
            &[
                Arg::I32(ex.up.format),
                (&ex.up.data).into(),
                (&ex.up.scales).into(),
                (&ex.up.tensor_scales).into(),
                ids.into(),
                self.buf(x)?.into(),
                (&h).into(),
                Arg::I32(f as i32),
                Arg::I32(l as i32),
                Arg::I32(k as i32),
            ],
        )?;
        // One warp per slot (up to 8): a token's k experts are read in parallel.
        let down_threads = 32 * k.clamp(1, 8) as u32;
        self.dev.launch(
            &k::MOE_EXPERTS,
            "moe_down",
            (tokens as u32, blocks(l, MOE_NR), 1),
            down_threads,
            (k * MOE_NR * 4) as u32,
            &[
                Arg::I32(ex.down.format),
                (&ex.down.data).into(),
                (&ex.down.scales).into(),
                (&ex.down.tensor_scales).into(),
                ids.into(),
                self.buf(&routing.weights)?.into(),
                (&h).into(),
                self.buf(&out)?.into(),
                Arg::I32(l as i32),
                Arg::I32(f as i32),
                Arg::I32(k as i32),
            ],
        )?;
        Ok(out)
    }

    /// Slots grouped by expert on the device (`moe_group`): what every tiled expert kernel
    /// takes to find its tile.
    fn group_slots(&self, ids: &super::Buf, slots: usize, n_experts: usize) -> Result<SlotGroups> {
        let g = SlotGroups {
            counts: self.dev.scratch(n_experts * 4, "expert counts")?,
            starts: self.dev.scratch(n_experts * 4, "expert starts")?,
            tile_base: self.dev.scratch((n_experts + 1) * 4, "expert tiles")?,
            order: self.dev.scratch(slots * 4, "slots by expert")?,
            // An upper bound on the tiles (Σ ceil(count/64)); blocks past the last one exit.
            max_tiles: (slots / 64 + n_experts) as u32,
        };
        self.dev.launch(
            &k::MOE_EXPERTS,
            "moe_group",
            (1, 1, 1),
            1024,
            0,
            &[
                ids.into(),
                Arg::I32(slots as i32),
                Arg::I32(n_experts as i32),
                (&g.counts).into(),
                (&g.starts).into(),
                (&g.tile_base).into(),
                (&g.order).into(),
            ],
        )?;
        Ok(g)
    }

    /// out[t] = Σ_j contrib[t·k + j], in slot (= ascending expert) order as the CPU adds them.
    fn combine_slots(&self, contrib: &super::Buf, out: Tensor, k: usize) -> Result<Tensor> {
        let (tokens, l) = (out.rows(), out.cols());
        self.dev.launch(
            &k::MOE_EXPERTS,
            "moe_combine",
            (blocks(tokens * l, 256), 1, 1),
            256,
            0,
            &[
                contrib.into(),
                self.buf(&out)?.into(),
                Arg::I32(tokens as i32),
                Arg::I32(l as i32),
                Arg::I32(k as i32),
            ],
        )?;
        Ok(out)
    }

    /// Prefill: slots grouped by expert on the device, then one tiled GEMM per (expert, 64
    /// slots) for up and for down, and an ordered sum of the contributions.
    fn moe_experts_grouped(
        &self,
        x: &Tensor,
        ex: &CudaExperts,
        n_experts: usize,
        routing: &Routing,
        (f, l): (usize, usize),
        out: Tensor,
    ) -> Result<Tensor> {
        let (tokens, k) = (x.rows(), routing.ids.cols());
        let slots = tokens * k;
        let g = self.group_slots(self.buf(&routing.ids)?, slots, n_experts)?;
        let h = self.dev.scratch(slots * f * 4, "expert activations")?;
        let contrib = self.dev.scratch(slots * l * 4, "expert outputs")?;
        // One projection of the chosen experts as tiles, `rows` outputs per slot: f32 tiles, or
        // the tensor-core ones, which take the number of activation terms first.
        let tiles = |(f32_name, tc_name): (&'static str, &'static str),
                     stack: &ExpertStack,
                     rest: &[Arg],
                     rows: usize| {
            let terms = self.tile_terms(stack.format);
            let mut args: Vec<Arg> = (terms > 0).then_some(Arg::I32(terms)).into_iter().collect();
            args.extend(stack.args());
            args.extend(g.args());
            args.extend_from_slice(rest);
            self.dev.launch(
                &k::MOE_EXPERTS,
                if terms > 0 { tc_name } else { f32_name },
                (g.max_tiles, rows.div_ceil(64) as u32, 1),
                256,
                0,
                &args,
            )
        };
        tiles(
            ("moe_up_tiles", "moe_up_tiles_tc"),
            &ex.up,
            &[
                self.buf(x)?.into(),
                (&h).into(),
                Arg::I32(f as i32),
                Arg::I32(l as i32),
                Arg::I32(k as i32),
                Arg::I32(n_experts as i32),
            ],
            f,
        )?;
        tiles(
            ("moe_down_tiles", "moe_down_tiles_tc"),
            &ex.down,
            &[
                self.buf(&routing.weights)?.into(),
                (&h).into(),
                (&contrib).into(),
                Arg::I32(l as i32),
                Arg::I32(f as i32),
                Arg::I32(n_experts as i32),
            ],
            l,
        )?;
        self.combine_slots(&contrib, out, k)
    }

    /// W4A4 on Blackwell, any token count: slots grouped by expert, each slot's input
    /// quantized to NVFP4 with its expert's input scale, the block-scaled FP4 MMA for up (with
    /// relu²), the same for down (with the routing weight), and the ordered sum.
    fn moe_experts_fp4(
        &self,
        x: &Tensor,
        ex: &CudaExperts,
        n_experts: usize,
        routing: &Routing,
        (f, l): (usize, usize),
        out: Tensor,
    ) -> Result<Tensor> {
        let (Some(up_in), Some(down_in)) = (&ex.up.input_scales, &ex.down.input_scales) else {
            return Err(self
                .dev
                .err("moe_experts: W4A4 needs every expert's input_scale"));
        };
        let (tokens, k) = (x.rows(), routing.ids.cols());
        let slots = tokens * k;
        let ids = self.buf(&routing.ids)?;
        let g = self.group_slots(ids, slots, n_experts)?;
        // One slot's rows of `cols` quantized with its expert's scale: packed codes and scales.
        let quantize = |src: &super::Buf, per_row: usize, scales: &super::Buf, cols: usize| {
            let q = self.dev.scratch(slots * cols / 2, "NVFP4 expert inputs")?;
            let qs = self
                .dev
                .scratch(slots * cols / 16, "NVFP4 expert input scales")?;
            self.dev.launch(
                &k::QUANTIZE_NVFP4,
                "quantize_slots_nvfp4",
                (blocks(slots * cols / 16, 256), 1, 1),
                256,
                0,
                &[
                    src.into(),
                    Arg::I32(per_row as i32),
                    ids.into(),
                    scales.into(),
                    (&q).into(),
                    (&qs).into(),
                    Arg::I32(slots as i32),
                    Arg::I32(cols as i32),
                ],
            )?;
            Ok::<_, crate::error::Error>((q, qs))
        };
        let fp4 = self.fp4_kernels();
        // One projection of the chosen experts over the quantized slots: `[rows, cols]` each,
        // writing `out` (the down projection also takes the routing weights).
        let project = |name: &'static str,
                       stack: &ExpertStack,
                       input_scales: &super::Buf,
                       (q, qs): (&super::Buf, &super::Buf),
                       weights: Option<Arg>,
                       out: &super::Buf,
                       (rows, cols): (usize, usize)| {
            let mut args = vec![
                (&stack.data).into(),
                (&stack.scales).into(),
                (&stack.tensor_scales).into(),
                input_scales.into(),
            ];
            args.extend(g.args());
            args.extend([Arg::from(q), Arg::from(qs)]);
            args.extend(weights);
            args.extend([
                out.into(),
                Arg::I32(rows as i32),
                Arg::I32(cols as i32),
                Arg::I32(n_experts as i32),
            ]);
            self.dev.launch(
                fp4.experts,
                name,
                (g.max_tiles, rows.div_ceil(fp4.rows) as u32, 1),
                128,
                fp4.shared,
                &args,
            )
        };
        let (xq, xs) = quantize(self.buf(x)?, k, up_in, l)?;
        let h = self.dev.scratch(slots * f * 4, "expert activations")?;
        project("moe_up_fp4", &ex.up, up_in, (&xq, &xs), None, &h, (f, l))?;
        let (hq, hs) = quantize(&h, 1, down_in, f)?;
        let contrib = self.dev.scratch(slots * l * 4, "expert outputs")?;
        let weights = Some(self.buf(&routing.weights)?.into());
        project(
            "moe_down_fp4",
            &ex.down,
            down_in,
            (&hq, &hs),
            weights,
            &contrib,
            (l, f),
        )?;
        self.combine_slots(&contrib, out, k)
    }

    pub(crate) fn op_argmax(&self, logits: &Tensor) -> Result<Vec<u32>> {
        let (rows, cols) = (logits.rows(), logits.cols());
        if cols == 0 {
            return Err(self.dev.err("argmax of empty logits"));
        }
        let out = self.output_u32(vec![rows, 1], "argmax")?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        self.dev.launch(
            &k::ARGMAX,
            "argmax",
            (rows as u32, 1, 1),
            1024,
            0,
            &[
                self.buf(logits)?.into(),
                self.buf(&out)?.into(),
                Arg::I32(cols as i32),
            ],
        )?;
        let bytes = self.dev.read(self.buf(&out)?, rows * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

/// The slots of a MoE call grouped by expert (`moe_group`), as the tiled kernels take them.
struct SlotGroups {
    counts: super::Buf,
    starts: super::Buf,
    tile_base: super::Buf,
    order: super::Buf,
    max_tiles: u32,
}

impl SlotGroups {
    fn args(&self) -> [Arg; 4] {
        [
            (&self.counts).into(),
            (&self.starts).into(),
            (&self.tile_base).into(),
            (&self.order).into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::scan_chunks;

    #[test]
    fn scans_are_cut_only_where_the_pairs_cannot_fill_the_gpu() {
        // Super on an H100: 128 heads x 64 channels fill 132 SMs.
        assert_eq!(scan_chunks(4096, 128 * 64, 132), 1);
        // Short prefills and decode steps never.
        assert_eq!(scan_chunks(1, 15, 132), 1);
        assert_eq!(scan_chunks(127, 15, 132), 1);
        // A small model: as many chunks as fill the GPU, none shorter than 64 tokens.
        assert_eq!(scan_chunks(300, 15, 4), 4);
        assert_eq!(scan_chunks(100_000, 128, 132), 33);
    }
}
