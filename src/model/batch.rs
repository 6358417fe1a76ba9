//! The rows of one forward pass: which sequence each row belongs to and whether it is a decode
//! or a prefill row. Stateless ops (linears, routing, experts) run over all rows at once; the
//! stateful ones (conv, scan, attention) run per sequence on its own rows through
//! [`Batch::each`].
//!
//! Decode rows come first, so the backends see the split as [`Rows`]: a decode row computes
//! exactly what a lone single-token step computes, a prefill row what the reference's prefill
//! computes (transformers clamps Mamba's dt in its prefill path only).

use std::ops::Range;

use crate::backend::{Backend, Rows, Tensor};
use crate::error::{Error, Result};

/// One sequence's rows of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub rows: Range<usize>,
    pub decode: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub segments: Vec<Segment>,
}

impl Batch {
    /// A batch of segments of `lens[i]` rows, decode segments all before prefill ones.
    pub fn new(lens: &[(usize, bool)]) -> Result<Batch> {
        let mut segments = Vec::with_capacity(lens.len());
        let mut at = 0;
        for &(n, decode) in lens {
            if decode && segments.last().is_some_and(|s: &Segment| !s.decode) {
                return Err(Error::Invalid(
                    "batch: decode rows must come before prefill rows".into(),
                ));
            }
            if n == 0 {
                return Err(Error::Invalid("batch: a sequence with no tokens".into()));
            }
            segments.push(Segment {
                rows: at..at + n,
                decode,
            });
            at += n;
        }
        Ok(Batch { segments })
    }

    pub fn total_rows(&self) -> usize {
        self.segments.last().map_or(0, |s| s.rows.end)
    }

    /// The decode/prefill split as the backends take it.
    pub fn rows(&self) -> Rows {
        Rows::decode(
            self.segments
                .iter()
                .filter(|s| s.decode)
                .map(|s| s.rows.len())
                .sum(),
        )
    }

    /// `f(i, segment, inputs' rows of segment i)` for every segment, the results stacked in
    /// segment order. A batch of one sequence passes the inputs through without a copy.
    pub fn each(
        &self,
        be: &dyn Backend,
        inputs: &[&Tensor],
        mut f: impl FnMut(usize, &Segment, &[&Tensor]) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if let [only] = self.segments.as_slice() {
            return f(0, only, inputs);
        }
        let mut outs = Vec::with_capacity(self.segments.len());
        for (i, seg) in self.segments.iter().enumerate() {
            let parts: Vec<Tensor> = inputs
                .iter()
                .map(|x| be.gather_rows(&[(x, seg.rows.clone())]))
                .collect::<Result<_>>()?;
            let refs: Vec<&Tensor> = parts.iter().collect();
            outs.push(f(i, seg, &refs)?);
        }
        let parts: Vec<(&Tensor, Range<usize>)> = outs.iter().map(|t| (t, 0..t.rows())).collect();
        be.gather_rows(&parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_laid_out_in_order_with_decode_rows_first() {
        let b = Batch::new(&[(1, true), (3, true), (5, false)]).unwrap();
        assert_eq!(b.total_rows(), 9);
        assert_eq!(b.rows(), Rows::decode(4));
        assert_eq!(b.segments[2].rows, 4..9);
        assert!(Batch::new(&[(2, false), (1, true)]).is_err());
        assert!(Batch::new(&[(0, true)]).is_err());
    }
}
