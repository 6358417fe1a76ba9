//! The Nemotron-H model, written once against the [`Backend`] trait (ARCH_NOTES §2):
//! `h = embed(ids)`; for each layer `h += mixer(rmsnorm(h))`; `logits = lm_head(norm_f(h))`.

pub mod attention;
pub mod batch;
pub mod loader;
pub mod mamba;
pub mod mlp;
pub mod moe;
pub mod mtp;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{Backend, Routing, Rows, Tensor, Weight};
use crate::checkpoint::Checkpoint;
use crate::config::{GenerationConfig, LayerKind, ModelConfig, load_generation_config};
use crate::error::{Error, Result};
use crate::quant_config::QuantConfig;

use self::attention::Attention;
use self::batch::Batch;
use self::loader::{Access, GroupStats, LoadProgress, Loader};
use self::mamba::{Mamba, MambaState};
use self::mlp::Mlp;
use self::moe::Moe;
use self::mtp::Mtp;

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

    /// The groups a plain decode step reads (the MTP step's are read only when drafting).
    fn decoding(&self) -> impl Iterator<Item = &GroupStats> {
        self.groups.iter().filter(|g| !g.draft)
    }

    pub fn total_params(&self) -> u64 {
        self.stored().map(|g| g.params).sum()
    }

    /// Parameters touched per token: everything but the unchosen routed experts (and the MTP
    /// step).
    pub fn active_params(&self) -> f64 {
        self.stored()
            .filter(|g| !g.draft)
            .map(GroupStats::active_params)
            .sum()
    }

    pub fn weight_bytes(&self) -> u64 {
        self.stored().map(|g| g.bytes).sum()
    }

    /// Expected weight bytes read to decode one token (experts averaged over `k / E`).
    pub fn bytes_per_token(&self) -> f64 {
        self.decoding().map(GroupStats::bytes_per_token).sum()
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
    /// The multi-token-prediction step, when the checkpoint has one.
    mtp: Option<Mtp>,
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
    /// The `norm_f` output of every row of this entry, on the backend, when
    /// [`ForwardOptions::final_hidden`] asked for it: what the MTP step reads as `h_t`.
    pub final_hidden: Option<Tensor>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions {
    pub all_logits: bool,
    pub routing: bool,
    pub hidden: bool,
    /// Keep the `norm_f` output of every row on the backend (for the MTP step).
    pub final_hidden: bool,
}

/// What one MTP step returns.
pub struct MtpOutput {
    /// `[T, D]` (or the last row): the step's `final_layernorm` output, the `h` of the next
    /// recursive draft.
    pub out: Tensor,
    /// The draft logits of the same rows.
    pub logits: Tensor,
}

/// One sequence's part of a batched forward pass ([`Model::forward_batch`]).
pub struct BatchEntry<'a> {
    pub seq: &'a mut Sequence,
    pub ids: &'a [u32],
    /// Decode rows compute exactly what as many single-token steps compute (a multi-token
    /// verify step); prefill rows what the reference's prefill computes (its dt clamp, the
    /// prefill kernels).
    pub decode: bool,
    /// Logits of every row rather than of the last one.
    pub all_logits: bool,
}

enum LayerState {
    Mamba(MambaState),
    Attention(Tensor),
    None,
}

/// Per-sequence state: the KV caches, conv and SSM states, and the position.
pub struct Sequence {
    pub pos: usize,
    /// Tokens of the last forward call when it was a multi-token decode step (which
    /// [`Model::rollback`] can undo), else 0.
    undo_rows: usize,
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

/// One pre-norm residual block: `{root}.norm.weight` and the mixer of `kind` under
/// `{root}.mixer` (main layers are `backbone.layers.{i}`, the MTP step's `mtp.layers.{j}`).
pub(crate) fn load_layer(
    ld: &mut Loader,
    config: &ModelConfig,
    root: &str,
    index: usize,
    kind: LayerKind,
) -> Result<Layer> {
    let prefix = format!("{root}.mixer");
    let norm = ld.vector(&format!("{root}.norm.weight"), config.hidden_size)?;
    let mixer = match kind {
        LayerKind::Mamba => Mixer::Mamba(Mamba::load(ld, &prefix)?),
        LayerKind::Attention => Mixer::Attention(Attention::load(ld, &prefix)?),
        LayerKind::Moe => Mixer::Moe(Moe::load(ld, &prefix)?),
        LayerKind::Mlp => {
            let (w, bias) = (config.intermediate_size, config.mlp_bias);
            Mixer::Mlp(Mlp::load(ld, &prefix, w, bias)?)
        }
    };
    Ok(Layer { index, norm, mixer })
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
        let layers = config
            .layers
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                load_layer(&mut ld, &config, &format!("backbone.layers.{i}"), i, kind)
            })
            .collect::<Result<Vec<_>>>()?;
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
        let mtp = Mtp::load(&mut ld, &config)?;
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
            mtp,
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
        self.sequence_of(&self.layers)
    }

    /// Whether the checkpoint has an MTP step to draft with.
    pub fn has_mtp(&self) -> bool {
        self.mtp.is_some()
    }

    /// A new sequence for the MTP step's own state (the KV cache of its attention layer).
    pub fn new_mtp_sequence(&self) -> Result<Sequence> {
        self.sequence_of(&self.mtp()?.layers)
    }

    fn mtp(&self) -> Result<&Mtp> {
        self.mtp.as_ref().ok_or_else(|| {
            Error::Invalid(
                "this checkpoint has no MTP step (num_nextn_predict_layers is 0), so it cannot \
                 draft tokens"
                    .into(),
            )
        })
    }

    /// Runs the MTP step over `ids` (the tokens t+1) and `hidden` (`[T, D]`, the `h_t`: the
    /// main model's `norm_f` output from [`ForwardOutput::final_hidden`], or a previous step's
    /// `out` for a recursive draft), after what the MTP sequence `seq` already holds. Returns
    /// the step's output (the next recursive draft's `h`) and the draft logits, of every row
    /// or of the last. `decode` makes the rows decode rows (drafting, between verify steps) or
    /// prefill rows (a prompt read teacher-forced), as for the main model's rows.
    pub fn mtp_step(
        &self,
        seq: &mut Sequence,
        ids: &[u32],
        hidden: &Tensor,
        (all_rows, decode): (bool, bool),
    ) -> Result<MtpOutput> {
        let mtp = self.mtp()?;
        let d = self.config.hidden_size;
        if ids.is_empty() || hidden.rows() != ids.len() || hidden.cols() != d {
            return Err(Error::Invalid(format!(
                "MTP step: {} tokens with hidden states of shape {:?}; expected one [{d}] row per \
                 token",
                ids.len(),
                hidden.shape()
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary (vocab_size {})",
                self.config.vocab_size
            )));
        }
        if seq.layers.len() != mtp.layers.len() {
            return Err(Error::Invalid(
                "MTP step: the sequence was not made by new_mtp_sequence".into(),
            ));
        }
        let mut result = None;
        self.backend.enter(&mut || {
            result = Some((|| -> Result<MtpOutput> {
                let be = self.backend.as_ref();
                let eps = self.config.layer_norm_epsilon;
                let batch = Batch::new(&[(ids.len(), decode)])?;
                let kind = |n: usize| {
                    if decode {
                        Rows::decode(n)
                    } else {
                        Rows::PREFILL
                    }
                };
                let e = be.embed(&self.embeddings, ids)?;
                let z = mtp.input(be, &e, hidden, (kind(ids.len()), eps))?;
                let opts = ForwardOptions::default();
                let (mut hidden, mut routes) = (Vec::new(), Vec::new());
                let mut states = [&mut seq.layers[..]];
                let out = self.run_stack(
                    (&mtp.layers, &mtp.final_norm),
                    &mut states,
                    &batch,
                    z,
                    opts,
                    &mut hidden,
                    &mut routes,
                )?;
                let out = if all_rows || out.rows() == 1 {
                    out
                } else {
                    be.last_row(&out)?
                };
                let logits = be.linear_rows(&out, self.head(), kind(out.rows()))?;
                Ok(MtpOutput { out, logits })
            })());
        });
        let out = result.unwrap_or_else(|| {
            Err(Error::Invalid(
                "the backend returned without running the MTP step".into(),
            ))
        })?;
        seq.pos += ids.len();
        seq.undo_rows = 0;
        Ok(out)
    }

    /// Cuts the MTP sequence back to `pos` positions, dropping drafted ones: its attention
    /// caches are truncated. (An MTP pattern with a Mamba layer cannot be cut back this way.)
    pub fn mtp_truncate(&self, seq: &mut Sequence, pos: usize) -> Result<()> {
        if pos > seq.pos {
            return Err(Error::Invalid(format!(
                "MTP truncate to {pos}: the sequence holds only {}",
                seq.pos
            )));
        }
        let be = self.backend.as_ref();
        for st in seq.layers.iter_mut() {
            match st {
                LayerState::Attention(c) => be.kv_truncate(c, pos)?,
                LayerState::Mamba(_) if pos < seq.pos => {
                    return Err(Error::Invalid(
                        "the MTP step has a Mamba layer, whose state cannot be cut back to an \
                         earlier position"
                            .into(),
                    ));
                }
                _ => {}
            }
        }
        seq.pos = pos;
        Ok(())
    }

    fn sequence_of(&self, layers: &[Layer]) -> Result<Sequence> {
        let be = self.backend.as_ref();
        let layers = layers
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
            undo_rows: 0,
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
                        undo: None,
                    }),
                    LayerState::Attention(c) => LayerState::Attention(be.copy(c)?),
                    LayerState::None => LayerState::None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Sequence {
            pos: seq.pos,
            undo_rows: 0,
            id: next_sequence_id(),
            layers,
        })
    }

    /// Cuts `seq` back to `pos` positions, inside its last multi-token decode step (a verify
    /// step whose later drafts were rejected): KV caches truncated, conv and SSM states put
    /// back to what they were after position `pos`, bit for bit what a sequence that never saw
    /// the removed tokens holds.
    pub fn rollback(&self, seq: &mut Sequence, pos: usize) -> Result<()> {
        if pos == seq.pos {
            return Ok(());
        }
        let start = seq.pos - seq.undo_rows;
        if pos > seq.pos || pos < start || seq.undo_rows == 0 {
            return Err(Error::Invalid(format!(
                "rollback to position {pos}: the sequence is at {} and can only go back within \
                 its last multi-token decode step ({start}..{})",
                seq.pos, seq.pos
            )));
        }
        let be = self.backend.as_ref();
        let keep = pos - start;
        let mut run = || -> Result<()> {
            for (layer, state) in self.layers.iter().zip(seq.layers.iter_mut()) {
                match (&layer.mixer, state) {
                    (Mixer::Mamba(m), LayerState::Mamba(st)) => m.rewind(be, st, keep)?,
                    (Mixer::Attention(_), LayerState::Attention(c)) => be.kv_truncate(c, pos)?,
                    _ => {}
                }
            }
            Ok(())
        };
        let mut result = None;
        self.backend.enter(&mut || result = Some(run()));
        result.unwrap_or_else(|| {
            Err(Error::Invalid(
                "the backend did not run the rollback".into(),
            ))
        })?;
        seq.pos = pos;
        // The undo data now describes a step that has partly been undone; a second rollback
        // must start from a new step.
        seq.undo_rows = 0;
        Ok(())
    }

    /// The conv and SSM states of every Mamba layer (`layer{i}.conv`, `layer{i}.ssm`), read
    /// back: for tests and debugging.
    pub fn read_state(&self, seq: &Sequence) -> Result<Vec<(String, Vec<f32>)>> {
        let be = self.backend.as_ref();
        let mut out = Vec::new();
        for (i, st) in seq.layers.iter().enumerate() {
            if let LayerState::Mamba(m) = st {
                out.push((format!("layer{i}.conv"), be.download(&m.conv)?));
                out.push((format!("layer{i}.ssm"), be.download(&m.ssm)?));
            }
        }
        Ok(out)
    }

    /// Runs `ids` through the model after whatever `seq` already holds: a decode step when
    /// `ids` is one token, a prefill otherwise.
    pub fn forward(
        &self,
        seq: &mut Sequence,
        ids: &[u32],
        opts: ForwardOptions,
    ) -> Result<ForwardOutput> {
        let mut entry = [BatchEntry {
            seq,
            ids,
            decode: ids.len() == 1,
            all_logits: opts.all_logits,
        }];
        let mut outs = self.forward_batch(&mut entry, opts)?;
        Ok(outs.pop().expect("one output per entry"))
    }

    /// One forward pass over the rows of several sequences, each after whatever its sequence
    /// already holds. Returns one output per entry, in the entries' order (`opts.all_logits` is
    /// per entry here; `opts.hidden` covers every row of the batch and is returned with the
    /// first output). Each row's result depends only on its sequence and kind, never on the
    /// rest of the batch.
    pub fn forward_batch(
        &self,
        entries: &mut [BatchEntry],
        opts: ForwardOptions,
    ) -> Result<Vec<ForwardOutput>> {
        let mut out = None;
        self.backend
            .enter(&mut || out = Some(self.forward_batch_here(entries, opts)));
        out.unwrap_or_else(|| {
            Err(Error::Invalid(
                "the backend returned without running the forward pass".into(),
            ))
        })
    }

    /// [`Self::forward_batch`] on the calling thread.
    fn forward_batch_here(
        &self,
        entries: &mut [BatchEntry],
        opts: ForwardOptions,
    ) -> Result<Vec<ForwardOutput>> {
        if entries.is_empty() {
            return Err(Error::Invalid("forward: no sequences given".into()));
        }
        for e in entries.iter() {
            if e.ids.is_empty() {
                return Err(Error::Invalid("forward: no tokens given".into()));
            }
            if let Some(&bad) = e
                .ids
                .iter()
                .find(|&&i| i as usize >= self.config.vocab_size)
            {
                return Err(Error::Invalid(format!(
                    "token id {bad} is outside the vocabulary (vocab_size {})",
                    self.config.vocab_size
                )));
            }
            if e.seq.layers.len() != self.layers.len() {
                return Err(Error::Invalid(format!(
                    "a sequence of {} layers given to a model of {}: was it made by another \
                     model?",
                    e.seq.layers.len(),
                    self.layers.len()
                )));
            }
        }
        // Decode rows first (the backends' split), each kind in the caller's order.
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by_key(|&i| !entries[i].decode);
        let batch = Batch::new(
            &order
                .iter()
                .map(|&i| (entries[i].ids.len(), entries[i].decode))
                .collect::<Vec<_>>(),
        )?;
        let ids: Vec<u32> = order
            .iter()
            .flat_map(|&i| entries[i].ids.iter().copied())
            .collect();
        // Rows whose logits are wanted, per sequence in batch order.
        let wanted: Vec<std::ops::Range<usize>> = order
            .iter()
            .zip(&batch.segments)
            .map(|(&i, seg)| match entries[i].all_logits {
                true => seg.rows.clone(),
                false => seg.rows.end - 1..seg.rows.end,
            })
            .collect();
        let be = self.backend.as_ref();
        let mut hidden = Vec::new();
        let mut routes = Vec::new();
        let mut final_hidden = None;
        let first_key = entries[order[0]].seq.id;
        let logits = {
            let mut sorted: Vec<&mut BatchEntry> = entries.iter_mut().collect();
            sorted.sort_by_key(|e| !e.decode);
            let mut states: Vec<&mut [LayerState]> =
                sorted.into_iter().map(|e| &mut e.seq.layers[..]).collect();
            if let ([only], [seg]) = (&mut states[..], &batch.segments[..])
                && seg.decode
                && seg.rows.len() == 1
                && !opts.hidden
                && !opts.final_hidden
            {
                // Nothing is read back inside a decode step, so a backend may replay it.
                be.decode_step(first_key, &mut || {
                    let (h, r, f) = (&mut hidden, &mut routes, &mut final_hidden);
                    self.run(only, &batch, &ids, &wanted, opts, h, r, f)
                })?
            } else {
                self.run_batch(
                    &mut states,
                    &batch,
                    &ids,
                    &wanted,
                    opts,
                    &mut hidden,
                    &mut routes,
                    &mut final_hidden,
                )?
            }
        };
        let routing: Vec<(usize, Vec<u32>, Vec<f32>, usize)> = routes
            .into_iter()
            .map(|(layer, r, k): (usize, Routing, usize)| {
                Ok((layer, be.download_u32(&r.ids)?, be.download(&r.weights)?, k))
            })
            .collect::<Result<_>>()?;
        // Back to the caller's order: entry i is segment `slot[i]` of the batch.
        let mut slot = vec![0; entries.len()];
        for (s, &i) in order.iter().enumerate() {
            slot[i] = s;
        }
        let mut logit_row = Vec::with_capacity(wanted.len());
        let mut at = 0;
        for w in &wanted {
            logit_row.push(at..at + w.len());
            at += w.len();
        }
        let single = entries.len() == 1;
        let mut logits = Some(logits);
        let mut outs = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter_mut().enumerate() {
            let seg = &batch.segments[slot[i]];
            let rows = seg.rows.clone();
            let entry_logits = if single {
                logits.take().expect("taken once")
            } else {
                let all = logits.as_ref().expect("kept until the last entry");
                be.gather_rows(&[(all, logit_row[slot[i]].clone())])?
            };
            let entry_hidden = match &final_hidden {
                Some(_) if single => final_hidden.take(),
                Some(all) => Some(be.gather_rows(&[(all, rows.clone())])?),
                None => None,
            };
            let routing = routing
                .iter()
                .map(|(layer, ids, ws, k)| LayerRouting {
                    layer: *layer,
                    ids: ids[rows.start * k..rows.end * k].to_vec(),
                    weights: ws[rows.start * k..rows.end * k].to_vec(),
                    k: *k,
                })
                .collect();
            e.seq.pos += e.ids.len();
            e.seq.undo_rows = if e.decode && e.ids.len() > 1 {
                e.ids.len()
            } else {
                0
            };
            outs.push(ForwardOutput {
                logits: entry_logits,
                routing,
                hidden: if i == 0 {
                    std::mem::take(&mut hidden)
                } else {
                    Vec::new()
                },
                final_hidden: entry_hidden,
            });
        }
        Ok(outs)
    }

    /// [`Self::run_batch`] for a batch of one sequence.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        states: &mut [LayerState],
        batch: &Batch,
        ids: &[u32],
        wanted: &[std::ops::Range<usize>],
        opts: ForwardOptions,
        hidden: &mut Vec<(String, Vec<f32>)>,
        routes: &mut Vec<(usize, Routing, usize)>,
        final_hidden: &mut Option<Tensor>,
    ) -> Result<Tensor> {
        let mut states = [states];
        self.run_batch(
            &mut states,
            batch,
            ids,
            wanted,
            opts,
            hidden,
            routes,
            final_hidden,
        )
    }

    /// The device work of a forward pass: embeddings, every layer and the head, over the
    /// rows of `batch` (`states[i]`: the layer states of its sequence `i`), with the logits of
    /// the `wanted` rows. The routing of MoE layers is kept on the device for the caller to
    /// read after the pass.
    #[allow(clippy::too_many_arguments)]
    fn run_batch(
        &self,
        states: &mut [&mut [LayerState]],
        batch: &Batch,
        ids: &[u32],
        wanted: &[std::ops::Range<usize>],
        opts: ForwardOptions,
        hidden: &mut Vec<(String, Vec<f32>)>,
        routes: &mut Vec<(usize, Routing, usize)>,
        final_hidden: &mut Option<Tensor>,
    ) -> Result<Tensor> {
        let be = self.backend.as_ref();
        hidden.clear();
        routes.clear();
        let h = be.embed(&self.embeddings, ids)?;
        if opts.hidden {
            hidden.push(("embeddings".to_string(), be.download(&h)?));
        }
        let x = self.run_stack(
            (&self.layers, &self.norm_f),
            states,
            batch,
            h,
            opts,
            hidden,
            routes,
        )?;
        if opts.hidden {
            hidden.push(("final_norm".to_string(), be.download(&x)?));
        }
        // The head over the wanted rows only; they keep the batch's order, so the decode rows
        // among them still come first.
        let all_rows = wanted.len() == 1 && wanted[0] == (0..batch.total_rows());
        let head_rows = Rows::decode(
            wanted
                .iter()
                .zip(&batch.segments)
                .filter(|(_, s)| s.decode)
                .map(|(w, _)| w.len())
                .sum(),
        );
        let gathered = if all_rows {
            None
        } else {
            let parts: Vec<_> = wanted.iter().map(|w| (&x, w.clone())).collect();
            Some(be.gather_rows(&parts)?)
        };
        let logits = be.linear_rows(gathered.as_ref().unwrap_or(&x), self.head(), head_rows)?;
        *final_hidden = opts.final_hidden.then_some(x);
        Ok(logits)
    }

    fn head(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.embeddings)
    }

    /// A stack of pre-norm residual blocks on the residual stream `h`: `h += mixer(norm(h))`
    /// for each layer, each layer's state taken from `states` (one list per sequence of
    /// `batch`); returns `final_norm(h)`. The main model's layers and the MTP step's blocks
    /// both run here.
    #[allow(clippy::too_many_arguments)]
    fn run_stack(
        &self,
        (layers, final_norm): (&[Layer], &Weight),
        states: &mut [&mut [LayerState]],
        batch: &Batch,
        mut h: Tensor,
        opts: ForwardOptions,
        hidden: &mut Vec<(String, Vec<f32>)>,
        routes: &mut Vec<(usize, Routing, usize)>,
    ) -> Result<Tensor> {
        let be = self.backend.as_ref();
        let eps = self.config.layer_norm_epsilon;
        let rows = batch.rows();
        let mut x = be.rms_norm(&h, &layers[0].norm, eps)?;
        for (i, layer) in layers.iter().enumerate() {
            let out = match &layer.mixer {
                Mixer::Mamba(m) => {
                    let mut st = states
                        .iter_mut()
                        .map(|s| match &mut s[i] {
                            LayerState::Mamba(st) => Ok(st),
                            _ => Err(state_mismatch(i)),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    m.forward(be, &x, batch, &mut st)?
                }
                Mixer::Attention(a) => {
                    let mut caches = states
                        .iter_mut()
                        .map(|s| match &mut s[i] {
                            LayerState::Attention(c) => Ok(c),
                            _ => Err(state_mismatch(i)),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    a.forward(be, &x, batch, &mut caches)?
                }
                Mixer::Moe(m) => {
                    let (out, r) = m.forward(be, &x, rows)?;
                    if opts.routing {
                        routes.push((layer.index, r, m.router.top_k));
                    }
                    out
                }
                Mixer::Mlp(m) => m.forward(be, &x, rows)?,
            };
            let next_norm = layers.get(i + 1).map_or(final_norm, |l| &l.norm);
            x = be.add_rms_norm(&mut h, &out, next_norm, eps)?;
            if opts.hidden {
                hidden.push((format!("layer{}", layer.index), be.download(&h)?));
            }
        }
        Ok(x)
    }
}

fn state_mismatch(layer: usize) -> Error {
    Error::Invalid(format!(
        "sequence state does not match layer {layer}: was it made by another model?"
    ))
}
