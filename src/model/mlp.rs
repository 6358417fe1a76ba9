//! Dense MLP layer (`-`) and the MoE shared expert: `down(relu(up·x)²)`, no gate projection.

use crate::backend::{Backend, Rows, Tensor, Weight};
use crate::error::Result;
use crate::model::loader::Loader;

pub struct Mlp {
    pub up: Weight,
    pub down: Weight,
}

impl Mlp {
    pub fn load(ld: &mut Loader, prefix: &str, width: usize, with_bias: bool) -> Result<Mlp> {
        let d = ld.config.hidden_size;
        Ok(Mlp {
            up: ld.linear(&format!("{prefix}.up_proj"), width, d, with_bias)?,
            down: ld.linear(&format!("{prefix}.down_proj"), d, width, with_bias)?,
        })
    }

    pub fn forward(&self, be: &dyn Backend, x: &Tensor, rows: Rows) -> Result<Tensor> {
        let h = be.relu2(&be.linear_rows(x, &self.up, rows)?)?;
        be.linear_rows(&h, &self.down, rows)
    }
}
