//! Linear-layer weights in the form the checkpoint stores them. The stored format is read off
//! the tensors themselves (an NVFP4 weight is `U8` with `weight_scale`/`weight_scale_2` beside
//! it), then checked against what the quantization config promises, so a mislabelled checkpoint
//! fails at load with the module's name instead of computing garbage.

use crate::checkpoint::{ByteView, Checkpoint, DType, TensorInfo};
use crate::error::{Error, Result};
use crate::quant_config::{QuantConfig, QuantFormat};

/// The bytes of a weight matrix `[rows = out, cols = in]`, in its stored precision.
#[derive(Clone, Debug)]
pub enum LinearData {
    /// F32, BF16 or F16, row-major.
    Dense { dtype: DType, data: ByteView },
    /// E4M3 `[rows, cols]` with one f32 scale for the tensor: `w = f32(e4m3) * scale`.
    Fp8 { data: ByteView, scale: f32 },
    /// E2M1 codes packed two per byte (low nibble = even column) `[rows, cols/2]`, E4M3 block
    /// scales `[rows, cols/16]`, f32 tensor scale: `w = e2m1 * (f32(block) * tensor_scale)`.
    Nvfp4 {
        packed: ByteView,
        block_scales: ByteView,
        tensor_scale: f32,
    },
}

/// One Linear module: weight, optional bias, and the activation scale a W4A4/W8A8 kernel would
/// use (`input_scale`; the exact path ignores it, as the reference does).
#[derive(Clone, Debug)]
pub struct StoredLinear {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub data: LinearData,
    pub input_scale: Option<f32>,
    pub bias: Option<Vec<f32>>,
}

impl StoredLinear {
    /// Columns `cols` of this weight as a weight of its own, in the same stored format (the
    /// rows' pieces copied; nothing decoded). NVFP4 splits only at 16-column blocks. For a
    /// projection of concatenated inputs, `W·[a; b] = W[:, ..n]·a + W[:, n..]·b`.
    pub fn columns(&self, cols: std::ops::Range<usize>, name: &str) -> Result<StoredLinear> {
        let (c, n) = (self.cols, cols.len());
        if cols.end > c || n == 0 || self.bias.is_some() {
            return Err(Error::Invalid(format!(
                "{}: columns {cols:?} of a [{}, {c}] weight{} cannot be taken apart",
                self.name,
                self.rows,
                if self.bias.is_some() {
                    " with a bias"
                } else {
                    ""
                }
            )));
        }
        let pick = |data: &[u8], per_row: usize, unit: usize| -> Vec<u8> {
            // `unit` columns per `per_row / (c / unit)` bytes.
            let bytes_per_unit = per_row / (c / unit);
            let (a, b) = (
                cols.start / unit * bytes_per_unit,
                cols.end / unit * bytes_per_unit,
            );
            data.chunks_exact(per_row)
                .flat_map(|row| row[a..b].iter().copied())
                .collect()
        };
        let data = match &self.data {
            LinearData::Dense { dtype, data } => LinearData::Dense {
                dtype: *dtype,
                data: ByteView::owned(pick(data.bytes(), c * dtype.size(), 1), name),
            },
            LinearData::Fp8 { data, scale } => LinearData::Fp8 {
                data: ByteView::owned(pick(data.bytes(), c, 1), name),
                scale: *scale,
            },
            LinearData::Nvfp4 {
                packed,
                block_scales,
                tensor_scale,
            } => {
                if !cols.start.is_multiple_of(16) || !cols.end.is_multiple_of(16) {
                    return Err(Error::Invalid(format!(
                        "{}: NVFP4 columns split only at 16-column blocks, not {cols:?}",
                        self.name
                    )));
                }
                LinearData::Nvfp4 {
                    packed: ByteView::owned(pick(packed.bytes(), c / 2, 16), name),
                    block_scales: ByteView::owned(pick(block_scales.bytes(), c / 16, 16), name),
                    tensor_scale: *tensor_scale,
                }
            }
        };
        Ok(StoredLinear {
            name: name.to_string(),
            rows: self.rows,
            cols: n,
            data,
            input_scale: self.input_scale,
            bias: None,
        })
    }

    pub fn format_name(&self) -> String {
        match &self.data {
            LinearData::Dense { dtype, .. } => dtype.name().to_string(),
            LinearData::Fp8 { .. } => "FP8".to_string(),
            LinearData::Nvfp4 { .. } => "NVFP4".to_string(),
        }
    }

    /// Bytes a kernel reads to apply this weight once (weights, scales and bias).
    pub fn stored_bytes(&self) -> u64 {
        let w = match &self.data {
            LinearData::Dense { data, .. } => data.len(),
            LinearData::Fp8 { data, .. } => data.len() + 4,
            LinearData::Nvfp4 {
                packed,
                block_scales,
                ..
            } => packed.len() + block_scales.len() + 4,
        };
        (w + self.bias.as_ref().map_or(0, |b| b.len() * 4)) as u64
    }

    pub fn params(&self) -> u64 {
        (self.rows * self.cols + self.bias.as_ref().map_or(0, Vec::len)) as u64
    }

    /// Loads `{module}.weight` (plus scales and, when `with_bias`, `{module}.bias`) for a
    /// Linear of `rows` outputs and `cols` inputs.
    pub fn load(
        ck: &Checkpoint,
        quant: Option<&QuantConfig>,
        module: &str,
        rows: usize,
        cols: usize,
        with_bias: bool,
    ) -> Result<StoredLinear> {
        let wname = format!("{module}.weight");
        let w = ck.require(&wname, format!("a [{rows}, {cols}] Linear weight"))?;
        w.ensure_finite()?;
        let data = match w.dtype {
            DType::F32 | DType::BF16 | DType::F16 => {
                w.expect(&[w.dtype], &[rows, cols])?;
                LinearData::Dense {
                    dtype: w.dtype,
                    data: w.data.clone(),
                }
            }
            DType::F8E4M3 => {
                w.expect(&[DType::F8E4M3], &[rows, cols])?;
                let s = require_scale(ck, &format!("{module}.weight_scale"), "FP8 per-tensor")?;
                LinearData::Fp8 {
                    data: w.data.clone(),
                    scale: s,
                }
            }
            DType::U8 => {
                if !cols.is_multiple_of(16) {
                    return Err(w.error(format!(
                        "NVFP4 needs the input width to be a multiple of 16, config gives {cols}"
                    )));
                }
                w.expect(&[DType::U8], &[rows, cols / 2]).map_err(|_| {
                    w.error(format!(
                        "NVFP4 packed weight has shape {:?}, expected [{rows}, {}] (two E2M1 codes per byte)",
                        w.shape,
                        cols / 2
                    ))
                })?;
                let bs_name = format!("{module}.weight_scale");
                let bs = ck.require(
                    &bs_name,
                    format!("NVFP4 block scales F8_E4M3 [{rows}, {}]", cols / 16),
                )?;
                bs.expect(&[DType::F8E4M3], &[rows, cols / 16])?;
                bs.ensure_finite()?;
                let ts = require_scale(ck, &format!("{module}.weight_scale_2"), "NVFP4 tensor")?;
                LinearData::Nvfp4 {
                    packed: w.data.clone(),
                    block_scales: bs.data.clone(),
                    tensor_scale: ts,
                }
            }
            other => {
                return Err(w.error(format!(
                    "dtype {other} is not a weight format we know (F32, BF16, F16, F8_E4M3 per-tensor FP8, U8 = NVFP4)"
                )));
            }
        };
        check_against_config(quant, module, &data, w)?;
        let input_scale = match ck.get(&format!("{module}.input_scale")) {
            Some(t) => Some(finite_scalar(t)?),
            None => None,
        };
        let bias = if with_bias {
            let b = ck.require(&format!("{module}.bias"), format!("a [{rows}] bias"))?;
            b.expect(&[DType::F32, DType::BF16, DType::F16], &[rows])?;
            Some(b.to_f32_vec()?)
        } else {
            None
        };
        Ok(StoredLinear {
            name: module.to_string(),
            rows,
            cols,
            data,
            input_scale,
            bias,
        })
    }
}

fn finite_scalar(t: &TensorInfo) -> Result<f32> {
    let v = t.scalar_f32()?;
    if !v.is_finite() || v < 0.0 {
        return Err(t.error(format!("scale is {v}, expected a finite value >= 0")));
    }
    Ok(v)
}

fn require_scale(ck: &Checkpoint, name: &str, what: &str) -> Result<f32> {
    let t = ck.require(name, format!("the {what} scale, an F32 scalar"))?;
    if t.dtype != DType::F32 {
        return Err(t.error(format!("{what} scale has dtype {}, expected F32", t.dtype)));
    }
    finite_scalar(t)
}

fn check_against_config(
    quant: Option<&QuantConfig>,
    module: &str,
    data: &LinearData,
    w: &TensorInfo,
) -> Result<()> {
    let stored = match data {
        LinearData::Dense { .. } => None,
        LinearData::Fp8 { .. } => Some("FP8"),
        LinearData::Nvfp4 { .. } => Some("NVFP4"),
    };
    let promised = quant.and_then(|q| q.format_of(module));
    let promised_name = promised.as_ref().map(|f| match f {
        QuantFormat::Nvfp4 { .. } => "NVFP4",
        QuantFormat::Fp8 => "FP8",
    });
    if stored == promised_name {
        return Ok(());
    }
    let source = quant
        .map(|q| q.source.display().to_string())
        .unwrap_or_else(|| "the checkpoint (it has no quantization config)".to_string());
    Err(Error::Quant(format!(
        "module `{module}` is stored as {} ({} in {}), but {source} says it should be {}",
        stored.unwrap_or("unquantized floats"),
        w.dtype,
        w.file().display(),
        promised_name.unwrap_or("unquantized")
    )))
}
