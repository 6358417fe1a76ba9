//! Elementwise and data-movement ops: `relu2`, `add`, `split_columns`, `last_row`, and the
//! per-row `argmax` (`shaders/<op>.wgsl`, one file per op). Also the small checks the other ops
//! of this family (`embed`, `rms_norm`) share.

use crate::backend::wgpu::{Shader, WgpuBackend, groups_2d};
use crate::backend::{Backend, ElemType, Tensor};
use crate::error::Result;

pub(crate) const RELU2: Shader = Shader {
    name: "relu2",
    source: include_str!("../../../../shaders/relu2.wgsl"),
};

pub(crate) const ADD: Shader = Shader {
    name: "add",
    source: include_str!("../../../../shaders/add.wgsl"),
};

pub(crate) const SPLIT_COLUMNS: Shader = Shader {
    name: "split_columns",
    source: include_str!("../../../../shaders/split_columns.wgsl"),
};

pub(crate) const LAST_ROW: Shader = Shader {
    name: "last_row",
    source: include_str!("../../../../shaders/last_row.wgsl"),
};

pub(crate) const ARGMAX: Shader = Shader {
    name: "argmax",
    source: include_str!("../../../../shaders/argmax.wgsl"),
};

/// Threads per workgroup of every shader in this family.
pub(crate) const WG: usize = 256;

/// The buffer of an f32 activation tensor, or an error naming the op.
pub(crate) fn f32_buf<'a>(be: &WgpuBackend, t: &'a Tensor, what: &str) -> Result<&'a wgpu::Buffer> {
    if t.elem() != ElemType::F32 {
        return Err(be.gpu.err(format!(
            "{what}: expected an f32 tensor, got {:?}",
            t.elem()
        )));
    }
    be.buf(t)
}

/// `n` as a shader index, or an error when it does not fit 32 bits.
pub(crate) fn index_u32(be: &WgpuBackend, n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| {
        be.gpu.err(format!(
            "{what}: {n} elements exceed the 32-bit indices of the shaders"
        ))
    })
}

/// Workgroups for one thread per element of `n` (`WG` threads each).
fn flat_groups(n: usize) -> [u32; 3] {
    groups_2d(n.div_ceil(WG), 1)
}

pub(crate) fn relu2(be: &WgpuBackend, x: &Tensor) -> Result<Tensor> {
    let xb = f32_buf(be, x, "relu2")?;
    let n = x.numel();
    let y = be.output(x.shape().to_vec(), "relu2 output")?;
    if n == 0 {
        return Ok(y);
    }
    let params = [index_u32(be, n, "relu2")?];
    be.gpu.dispatch(
        &RELU2,
        "main",
        &[],
        &params,
        &[(xb, false), (be.buf(&y)?, true)],
        flat_groups(n),
    )?;
    Ok(y)
}

pub(crate) fn add(be: &WgpuBackend, a: &mut Tensor, b: &Tensor) -> Result<()> {
    let (ab, bb) = (f32_buf(be, a, "add")?, f32_buf(be, b, "add")?);
    let n = a.numel();
    if n == 0 {
        return Ok(());
    }
    let params = [index_u32(be, n, "add")?];
    be.gpu.dispatch(
        &ADD,
        "main",
        &[],
        &params,
        &[(ab, true), (bb, false)],
        flat_groups(n),
    )
}

pub(crate) fn split_columns(be: &WgpuBackend, x: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>> {
    let total: usize = widths.iter().sum();
    let xb = f32_buf(be, x, "split_columns")?;
    let rows = x.rows();
    index_u32(be, rows * total, "split_columns")?;
    let mut out = Vec::with_capacity(widths.len());
    let mut offset = 0;
    for &w in widths {
        let part = be.output(vec![rows, w], "split_columns output")?;
        if rows * w > 0 {
            let params = [rows as u32, total as u32, offset as u32, w as u32];
            be.gpu.dispatch(
                &SPLIT_COLUMNS,
                "main",
                &[],
                &params,
                &[(xb, false), (be.buf(&part)?, true)],
                flat_groups(rows * w),
            )?;
        }
        out.push(part);
        offset += w;
    }
    Ok(out)
}

pub(crate) fn last_row(be: &WgpuBackend, x: &Tensor) -> Result<Tensor> {
    let (rows, cols) = (x.rows(), x.cols());
    let xb = f32_buf(be, x, "last_row")?;
    index_u32(be, rows * cols, "last_row")?;
    let y = be.output(vec![1, cols], "last_row output")?;
    if cols > 0 {
        let params = [cols as u32, ((rows - 1) * cols) as u32];
        be.gpu.dispatch(
            &LAST_ROW,
            "main",
            &[],
            &params,
            &[(xb, false), (be.buf(&y)?, true)],
            flat_groups(cols),
        )?;
    }
    Ok(y)
}

/// Computed on the device; the download of the `[rows]` u32 result is the sync point.
pub(crate) fn argmax(be: &WgpuBackend, logits: &Tensor) -> Result<Vec<u32>> {
    let (rows, cols) = (logits.rows(), logits.cols());
    let xb = f32_buf(be, logits, "argmax")?;
    if rows == 0 {
        return Ok(Vec::new());
    }
    if cols == 0 {
        return Err(be.gpu.err("argmax of rows with no columns"));
    }
    index_u32(be, rows * cols, "argmax")?;
    let out = be.output_u32(vec![rows], "argmax output")?;
    let params = [rows as u32, cols as u32];
    be.gpu.dispatch(
        &ARGMAX,
        "main",
        &[],
        &params,
        &[(xb, false), (be.buf(&out)?, true)],
        groups_2d(rows, 1),
    )?;
    be.download_u32(&out)
}
