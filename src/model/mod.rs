//! The Nemotron-H model, written once against the [`Backend`] trait (ARCH_NOTES §2):
//! `h = embed(ids)`; for each layer `h += mixer(rmsnorm(h))`; `logits = lm_head(norm_f(h))`.

pub mod attention;
pub mod loader;
pub mod mamba;
pub mod mlp;
pub mod moe;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{Backend, Routing, Tensor, Weight};
use crate::checkpoint::Checkpoint;
use crate::config::{GenerationConfig, LayerKind, ModelConfig, load_generation_config};
use crate::error::{Error, Result};
use crate::quant_config::QuantConfig;

use self::attention::Attention;
use self::loader::{Access, GroupStats, LoadProgress, Loader};
use self::mamba::{Mamba, MambaState};
use self::mlp::Mlp;
use self::moe::Moe;

pub enum Mixer {
    Mamba(Mamba),
    Attention(Attention),
    Moe(Moe),
    Mlp(Mlp),
}

pub struct Layer {
    pub index: usize,
    pub norm: Weight,
    pub mixer: Mixer,
}

/// What the checkpoint holds, for `inspect`, `bench` and the app.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub dir: PathBuf,
    pub pattern: String,
    pub groups: Vec<GroupStats>,
    pub quant_source: Option<String>,
    pub kv_cache_fp8: bool,
}

impl ModelInfo {
    /// Groups whose tensors are stored (a tied `lm_head` reuses the embedding table).
    fn stored(&self) -> impl Iterator<Item = &GroupStats> {
        self.groups.iter().filter(|g| !g.tied)
    }

    pub fn total_params(&self) -> u64 {
        self.stored().map(|g| g.params).sum()
    }

    /// Parameters touched per token: everything but the unchosen routed experts.
    pub fn active_params(&self) -> f64 {
        self.stored().map(GroupStats::active_params).sum()
    }

    pub fn weight_bytes(&self) -> u64 {
        self.stored().map(|g| g.bytes).sum()
    }

    /// Expected weight bytes read to decode one token (experts averaged over `k / E`).
    pub fn bytes_per_token(&self) -> f64 {
        self.groups.iter().map(GroupStats::bytes_per_token).sum()
    }
}

pub struct Model {
    pub config: ModelConfig,
    pub generation: GenerationConfig,
    pub quant: Option<QuantConfig>,
    pub backend: Arc<dyn Backend>,
    pub info: ModelInfo,
    embeddings: Weight,
    layers: Vec<Layer>,
    norm_f: Weight,
    /// `None` when tied to the embedding table.
    lm_head: Option<Weight>,
}

/// Routing of one MoE layer for the tokens of one forward call.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRouting {
    /// Index of the layer in the whole stack.
    pub layer: usize,
    /// `[T, k]` expert ids, ascending within each token.
    pub ids: Vec<u32>,
    /// `[T, k]` final weights (normalised and scaled).
    pub weights: Vec<f32>,
    pub k: usize,
}

impl LayerRouting {
    /// The routing of token `t` of this call.
    pub fn token(&self, t: usize) -> (&[u32], &[f32]) {
        (
            &self.ids[t * self.k..(t + 1) * self.k],
            &self.weights[t * self.k..(t + 1) * self.k],
        )
    }
}

/// What one forward call returns.
pub struct ForwardOutput {
    /// `[T, V]` when all logits were asked for, else `[1, V]` for the last token.
    pub logits: Tensor,
    pub routing: Vec<LayerRouting>,
    /// `("embeddings" | "layer{i}" | "final_norm", [T, D])` when hidden states were asked for.
    pub hidden: Vec<(String, Vec<f32>)>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions {
    pub all_logits: bool,
    pub routing: bool,
    pub hidden: bool,
}

enum LayerState {
    Mamba(MambaState),
    Attention(Tensor),
    None,
}

/// Per-sequence state: the KV caches, conv and SSM states, and the position.
pub struct Sequence {
    pub pos: usize,
    /// Names this sequence's decode steps to the backend (a CUDA graph is kept per sequence).
    id: u64,
    layers: Vec<LayerState>,
}

fn next_sequence_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Loading options.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    pub progress: bool,
}

impl Model {
    pub fn load(dir: &Path, backend: Arc<dyn Backend>, opts: LoadOptions) -> Result<Model> {
        Self::load_observed(dir, backend, opts, None)
    }

    /// Like [`load`](Self::load), reporting how far it has come through `progress`.
    pub fn load_observed(
        dir: &Path,
        backend: Arc<dyn Backend>,
        opts: LoadOptions,
        progress: Option<&LoadProgress>,
    ) -> Result<Model> {
        let config = ModelConfig::load(dir)?;
        let config_path = dir.join("config.json");
        let raw = crate::config::read_json(&config_path)?;
        let quant = QuantConfig::load(dir, &raw)?;
        let generation = load_generation_config(dir, &config)?;
        let ck = Checkpoint::open(dir)?;
        let mut ld = Loader::new(
            &ck,
            quant.as_ref(),
            &config,
            backend.as_ref(),
            opts.progress,
        );
        if let Some(p) = progress {
            ld.observe(p);
        }
        let (v, d) = (config.vocab_size, config.hidden_size);
        let embeddings = ld.table("backbone.embeddings.weight", v, d, Access::OneRow)?;
        let mut layers = Vec::with_capacity(config.layers.len());
        for (i, kind) in config.layers.iter().enumerate() {
            let prefix = format!("backbone.layers.{i}.mixer");
            let norm = ld.vector(&format!("backbone.layers.{i}.norm.weight"), d)?;
            let mixer = match kind {
                LayerKind::Mamba => Mixer::Mamba(Mamba::load(&mut ld, &prefix)?),
                LayerKind::Attention => Mixer::Attention(Attention::load(&mut ld, &prefix)?),
                LayerKind::Moe => Mixer::Moe(Moe::load(&mut ld, &prefix)?),
                LayerKind::Mlp => {
                    let (w, bias) = (config.intermediate_size, config.mlp_bias);
                    Mixer::Mlp(Mlp::load(&mut ld, &prefix, w, bias)?)
                }
            };
            layers.push(Layer {
                index: i,
                norm,
                mixer,
            });
        }
        let norm_f = ld.vector("backbone.norm_f.weight", d)?;
        let lm_head = if ck.contains("lm_head.weight") {
            Some(ld.linear("lm_head", v, d, false)?)
        } else if config.tie_word_embeddings {
            ld.record_tied("lm_head (tied to embeddings)", "embeddings");
            None
        } else {
            return Err(Error::MissingTensor {
                name: "lm_head.weight".into(),
                dir: dir.to_path_buf(),
                expected: format!("a [{v}, {d}] output projection (tie_word_embeddings is false)"),
            });
        };
        ld.check_all_used()?;
        ld.finish();
        let kv_cache_fp8 = quant.as_ref().is_some_and(|q| q.kv_cache.is_some());
        let info = ModelInfo {
            dir: dir.to_path_buf(),
            pattern: config.layer_pattern(),
            groups: ld.groups.values().cloned().collect(),
            quant_source: quant.as_ref().map(|q| q.source.display().to_string()),
            kv_cache_fp8,
        };
        drop(ld);
        Ok(Model {
            config,
            generation,
            quant,
            backend,
            info,
            embeddings,
            layers,
            norm_f,
            lm_head,
        })
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Indices of the MoE layers in the stack.
    pub fn moe_layers(&self) -> Vec<usize> {
        self.layers
            .iter()
            .filter(|l| matches!(l.mixer, Mixer::Moe(_)))
            .map(|l| l.index)
            .collect()
    }

    pub fn new_sequence(&self) -> Result<Sequence> {
        let be = self.backend.as_ref();
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(match &l.mixer {
                    Mixer::Mamba(m) => LayerState::Mamba(m.new_state(be)?),
                    Mixer::Attention(a) => LayerState::Attention(a.new_cache(be)?),
                    _ => LayerState::None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Sequence {
            pos: 0,
            id: next_sequence_id(),
            layers,
        })
    }

    /// A deep copy of a sequence's state (compare runs, speculative drafts).
    pub fn snapshot(&self, seq: &Sequence) -> Result<Sequence> {
        let be = self.backend.as_ref();
        let layers = seq
            .layers
            .iter()
            .map(|s| {
                Ok(match s {
                    LayerState::Mamba(m) => LayerState::Mamba(MambaState {
                        conv: be.copy(&m.conv)?,
                        ssm: be.copy(&m.ssm)?,
                    }),
                    LayerState::Attention(c) => LayerState::Attention(be.copy(c)?),
                    LayerState::None => LayerState::None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Sequence {
            pos: seq.pos,
            id: next_sequence_id(),
            layers,
        })
    }

    /// Runs `ids` through the model after whatever `seq` already holds.
    pub fn forward(
        &self,
        seq: &mut Sequence,
        ids: &[u32],
        opts: ForwardOptions,
    ) -> Result<ForwardOutput> {
        let mut out = None;
        self.backend
            .enter(&mut || out = Some(self.forward_here(seq, ids, opts)));
        out.unwrap_or_else(|| {
            Err(Error::Invalid(
                "the backend returned without running the forward pass".into(),
            ))
        })
    }

    /// [`Self::forward`] on the calling thread.
    fn forward_here(
        &self,
        seq: &mut Sequence,
        ids: &[u32],
        opts: ForwardOptions,
    ) -> Result<ForwardOutput> {
        if ids.is_empty() {
            return Err(Error::Invalid("forward: no tokens given".into()));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary (vocab_size {})",
                self.config.vocab_size
            )));
        }
        let be = self.backend.as_ref();
        let t = ids.len();
        let mut hidden = Vec::new();
        let mut routes = Vec::new();
        let logits = if t == 1 && !opts.hidden {
            // Nothing is read back inside a decode step, so a backend may replay it.
            let key = seq.id;
            let layers = &mut seq.layers;
            be.decode_step(key, &mut || {
                self.run(layers, ids, opts, &mut hidden, &mut routes)
            })?
        } else {
            self.run(&mut seq.layers, ids, opts, &mut hidden, &mut routes)?
        };
        let routing = routes
            .into_iter()
            .map(|(layer, r, k): (usize, Routing, usize)| {
                Ok(LayerRouting {
                    layer,
                    ids: be.download_u32(&r.ids)?,
                    weights: be.download(&r.weights)?,
                    k,
                })
            })
            .collect::<Result<_>>()?;
        seq.pos += t;
        Ok(ForwardOutput {
            logits,
            routing,
            hidden,
        })
    }

    /// The device work of a forward pass: embeddings, every layer and the head. The routing of
    /// MoE layers is kept on the device for the caller to read after the pass.
    fn run(
        &self,
        states: &mut [LayerState],
        ids: &[u32],
        opts: ForwardOptions,
        hidden: &mut Vec<(String, Vec<f32>)>,
        routes: &mut Vec<(usize, Routing, usize)>,
    ) -> Result<Tensor> {
        let be = self.backend.as_ref();
        let eps = self.config.layer_norm_epsilon;
        hidden.clear();
        routes.clear();
        let mut h = be.embed(&self.embeddings, ids)?;
        if opts.hidden {
            hidden.push(("embeddings".to_string(), be.download(&h)?));
        }
        let mut x = be.rms_norm(&h, &self.layers[0].norm, eps)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let out = match (&layer.mixer, &mut states[i]) {
                (Mixer::Mamba(m), LayerState::Mamba(st)) => m.forward(be, &x, st)?,
                (Mixer::Attention(a), LayerState::Attention(cache)) => a.forward(be, &x, cache)?,
                (Mixer::Moe(m), _) => {
                    let (out, r) = m.forward(be, &x)?;
                    if opts.routing {
                        routes.push((i, r, m.router.top_k));
                    }
                    out
                }
                (Mixer::Mlp(m), _) => m.forward(be, &x)?,
                _ => {
                    return Err(Error::Invalid(format!(
                        "sequence state does not match layer {i}: was it made by another model?"
                    )));
                }
            };
            let next_norm = self.layers.get(i + 1).map_or(&self.norm_f, |l| &l.norm);
            x = be.add_rms_norm(&mut h, &out, next_norm, eps)?;
            if opts.hidden {
                hidden.push((format!("layer{i}"), be.download(&h)?));
            }
        }
        if opts.hidden {
            hidden.push(("final_norm".to_string(), be.download(&x)?));
        }
        let x = if opts.all_logits || ids.len() == 1 {
            x
        } else {
            be.last_row(&x)?
        };
        be.linear(&x, self.lm_head.as_ref().unwrap_or(&self.embeddings))
    }
}
