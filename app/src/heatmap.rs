//! Routing accumulated over a generation: MoE layers × experts, how often each expert was
//! chosen and the sum of its routing weights.

use nemotron_rt::generate::TokenRoute;

/// What a heatmap cell shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeatMode {
    /// Tokens that chose the expert.
    #[default]
    Count,
    /// Sum of the expert's routing weights.
    Weight,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    /// Stack index of the MoE layer of each row.
    pub layers: Vec<usize>,
    pub experts: usize,
    pub tokens: usize,
    /// `[rows, experts]`.
    pub counts: Vec<u32>,
    /// `[rows, experts]`; f64 so that long generations do not lose small weights.
    pub weights: Vec<f64>,
}

impl Heatmap {
    pub fn new(layers: Vec<usize>, experts: usize) -> Heatmap {
        let n = layers.len() * experts;
        Heatmap {
            layers,
            experts,
            tokens: 0,
            counts: vec![0; n],
            weights: vec![0.0; n],
        }
    }

    /// Builds a heatmap from per-token routing (a generation, or a trace read back).
    pub fn from_routes<'a>(
        layers: Vec<usize>,
        experts: usize,
        tokens: impl IntoIterator<Item = &'a [TokenRoute]>,
    ) -> Result<Heatmap, String> {
        let mut h = Heatmap::new(layers, experts);
        for t in tokens {
            h.add_token(t)?;
        }
        Ok(h)
    }

    pub fn rows(&self) -> usize {
        self.layers.len()
    }

    pub fn row_of(&self, layer: usize) -> Option<usize> {
        self.layers.iter().position(|&l| l == layer)
    }

    /// Adds one token's routing; a layer or expert the heatmap does not know is an error,
    /// since it means the routing came from another model.
    pub fn add_token(&mut self, routes: &[TokenRoute]) -> Result<(), String> {
        for r in routes {
            let row = self
                .row_of(r.layer)
                .ok_or_else(|| format!("routing names layer {}, not a MoE layer", r.layer))?;
            if r.ids.len() != r.weights.len() {
                return Err(format!(
                    "layer {}: {} expert ids but {} weights",
                    r.layer,
                    r.ids.len(),
                    r.weights.len()
                ));
            }
            for (&e, &w) in r.ids.iter().zip(&r.weights) {
                let e = e as usize;
                if e >= self.experts {
                    return Err(format!(
                        "layer {}: expert {e} out of range (the model has {})",
                        r.layer, self.experts
                    ));
                }
                self.counts[row * self.experts + e] += 1;
                self.weights[row * self.experts + e] += f64::from(w);
            }
        }
        self.tokens += 1;
        Ok(())
    }

    pub fn value(&self, mode: HeatMode, row: usize, expert: usize) -> f64 {
        let i = row * self.experts + expert;
        match mode {
            HeatMode::Count => f64::from(self.counts[i]),
            HeatMode::Weight => self.weights[i],
        }
    }

    pub fn max(&self, mode: HeatMode) -> f64 {
        match mode {
            HeatMode::Count => f64::from(self.counts.iter().copied().max().unwrap_or(0)),
            HeatMode::Weight => self.weights.iter().copied().fold(0.0, f64::max),
        }
    }

    /// One row: the load of every expert of a layer.
    pub fn row(&self, mode: HeatMode, row: usize) -> Vec<f64> {
        (0..self.experts)
            .map(|e| self.value(mode, row, e))
            .collect()
    }

    /// `layer,expert,count,weight_sum`, one line per cell.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("layer,expert,count,weight_sum\n");
        for (row, layer) in self.layers.iter().enumerate() {
            for e in 0..self.experts {
                let i = row * self.experts + e;
                s.push_str(&format!(
                    "{layer},{e},{},{}\n",
                    self.counts[i], self.weights[i]
                ));
            }
        }
        s
    }
}
