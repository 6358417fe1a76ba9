//! Prefill + cached decode, producing one event stream that the CLI prints, `--json` collects,
//! the app draws and the bench times. Every token carries its timing and, when asked for, the
//! routing of the forward pass that produced it.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::backend::Tensor;
use crate::error::{Error, Result};
use crate::model::{ForwardOptions, LayerRouting, Model, Sequence};
use crate::sampling::{Sampler, SamplingParams, StopStrings};
use crate::tokenizer::{StreamDecoder, Tokenizer};

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_strings: Vec<String>,
    pub ignore_eos: bool,
    /// Collect per-token routing (ids and weights per MoE layer).
    pub routing: bool,
    /// Longest sequence (prompt + generated) allowed; `None` = the config's
    /// `max_position_embeddings`.
    pub max_context: Option<usize>,
    /// The prompt is run through the model this many tokens at a time (0: all at once), so a
    /// long prompt's activations stay bounded instead of growing with its length.
    pub prefill_chunk: usize,
    /// Tokens drafted per step by the model's MTP step and verified in one pass (0: off).
    /// Greedy output is the same token for token with it on or off; sampled output keeps its
    /// distribution (speculative sampling's acceptance rule).
    pub speculative: usize,
}

/// The pieces a `len`-token prompt is prefilled in: `chunk` tokens each (all at once for 0; at
/// least 2), except that a last piece of one token joins the one before. A one-token forward
/// is a decode step, which in the reference skips the prefill's `time_step_min` clamp of dt;
/// every token of a prompt must see the clamp, as it would prefilled at once.
pub fn prefill_pieces(len: usize, chunk: usize) -> Vec<std::ops::Range<usize>> {
    let chunk = if chunk == 0 { len.max(1) } else { chunk.max(2) };
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < len {
        let mut end = (start + chunk).min(len);
        if len - end == 1 {
            end = len;
        }
        pieces.push(start..end);
        start = end;
    }
    pieces
}

/// Default [`GenerateParams::prefill_chunk`]: long enough that prefill runs as matrix-matrix
/// products at full speed, short enough that a Super layer's activations stay in the low
/// hundreds of MB.
pub const PREFILL_CHUNK: usize = 512;

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 64,
            sampling: SamplingParams::greedy(),
            stop_strings: Vec::new(),
            ignore_eos: false,
            routing: false,
            max_context: None,
            prefill_chunk: PREFILL_CHUNK,
            speculative: 0,
        }
    }
}

/// Routing of one MoE layer for one token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenRoute {
    pub layer: usize,
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token was produced.
    Eos,
    /// A stop string appeared in the text.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The context limit was reached.
    Context,
    /// The caller asked to stop.
    Cancelled,
}

#[derive(Clone, Debug)]
pub enum Event {
    Prefilled {
        tokens: usize,
        ms: f64,
    },
    Token {
        index: usize,
        id: u32,
        /// Newly completed text (never a partial UTF-8 character; held back near stop strings).
        text: String,
        ms: f64,
        routing: Option<Vec<TokenRoute>>,
    },
    Finished {
        reason: FinishReason,
        /// Text held back until the end (an incomplete character, a partial stop string).
        text: String,
    },
}

/// Everything a generation produced.
#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    pub text: String,
    pub prefill_ms: f64,
    /// Milliseconds of each decode step (token 0 comes from the prefill and is not in here).
    pub decode_ms: Vec<f64>,
    pub finish_reason: FinishReason,
    /// For each generated token, the routing of the forward pass that produced it.
    pub routing: Vec<Vec<TokenRoute>>,
    /// With speculative decoding: per draft position, the drafts proposed and accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drafts: Option<DraftStats>,
}

/// Drafts proposed and accepted at each draft position over a generation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DraftStats {
    pub drafted: Vec<usize>,
    pub accepted: Vec<usize>,
}

impl Generation {
    pub fn decode_tok_s(&self) -> f64 {
        let total: f64 = self.decode_ms.iter().sum();
        if total > 0.0 {
            self.decode_ms.len() as f64 * 1000.0 / total
        } else {
            0.0
        }
    }

    pub fn prefill_tok_s(&self) -> f64 {
        if self.prefill_ms > 0.0 {
            self.prompt_tokens as f64 * 1000.0 / self.prefill_ms
        } else {
            0.0
        }
    }
}

/// Row `t`'s routing of a forward pass, one entry per MoE layer.
pub fn routes_of(routing: &[LayerRouting], t: usize) -> Vec<TokenRoute> {
    routing
        .iter()
        .map(|r| {
            let (ids, weights) = r.token(t);
            TokenRoute {
                layer: r.layer,
                ids: ids.to_vec(),
                weights: weights.to_vec(),
            }
        })
        .collect()
}

/// Generates from `prompt` on a fresh sequence. `on_event` returns `false` to stop early.
pub fn generate(
    model: &Model,
    tokenizer: Option<&Arc<Tokenizer>>,
    prompt: &[u32],
    params: &GenerateParams,
    on_event: &mut dyn FnMut(&Event) -> bool,
) -> Result<Generation> {
    let mut seq = model.new_sequence()?;
    generate_on(model, &mut seq, tokenizer, prompt, params, on_event)
}

/// Generates continuing `seq` (which may already hold a conversation).
pub fn generate_on(
    model: &Model,
    seq: &mut Sequence,
    tokenizer: Option<&Arc<Tokenizer>>,
    prompt: &[u32],
    params: &GenerateParams,
    on_event: &mut dyn FnMut(&Event) -> bool,
) -> Result<Generation> {
    let mut dec = Decoding::new(model, seq.pos, tokenizer, prompt.len(), params)?;
    let fopts = dec.forward_options();
    let mut step_start = Instant::now();
    let mut pieces = prefill_pieces(prompt.len(), params.prefill_chunk);
    let piece = &prompt[pieces.pop().expect("the prompt is not empty")];
    for r in pieces {
        // Only the last piece's logits are used; the cache and states carry the rest.
        model.forward(seq, &prompt[r], fopts)?;
    }
    let mut fwd = model.forward(seq, piece, fopts)?;
    let mut last_row = piece.len() - 1;
    let mut reason = FinishReason::Length;
    while dec.wants_more() {
        let id = dec.pick(model, &fwd.logits)?;
        let ms = step_start.elapsed().as_secs_f64() * 1000.0;
        let routing = params.routing.then(|| routes_of(&fwd.routing, last_row));
        if let Some(r) = dec.accept(id, ms, routing, seq.pos, on_event)? {
            reason = r;
            break;
        }
        // A step's time runs from feeding the token to having sampled the next one.
        step_start = Instant::now();
        fwd = model.forward(seq, &[id], fopts)?;
        last_row = 0;
    }
    dec.finish(reason, on_event)
}

/// One sequence's generation once its prompt is in: sampling, end-of-sequence and stop
/// strings, the streamed text, the [`Generation`] record and the events. [`generate_on`] drives
/// one sequence with it; the engine drives many, batched.
pub struct Decoding {
    params: GenerateParams,
    eos: Vec<u32>,
    stops: StopStrings,
    sampler: Sampler,
    stream: Option<StreamDecoder>,
    out: Generation,
    /// Text decoded so far and how much of it has been handed out in events.
    text: String,
    emitted: usize,
    max_ctx: usize,
    first: bool,
}

impl Decoding {
    /// Checks the request against a sequence at position `pos`: sampling parameters, a
    /// non-empty prompt that fits the context, a tokenizer where stop strings need one.
    pub fn new(
        model: &Model,
        pos: usize,
        tokenizer: Option<&Arc<Tokenizer>>,
        prompt_len: usize,
        params: &GenerateParams,
    ) -> Result<Decoding> {
        params.sampling.validate()?;
        if prompt_len == 0 {
            return Err(Error::Invalid(
                "the prompt is empty: give at least one token".into(),
            ));
        }
        if !params.stop_strings.is_empty() && tokenizer.is_none() {
            return Err(Error::Invalid("stop strings need a tokenizer".into()));
        }
        let max_ctx = params
            .max_context
            .unwrap_or(model.config.max_position_embeddings);
        if pos + prompt_len > max_ctx {
            return Err(Error::PromptTooLong {
                got: pos + prompt_len,
                max: max_ctx,
                why: "the context limit (max_position_embeddings, or --max-context)".into(),
            });
        }
        Ok(Decoding {
            params: params.clone(),
            eos: if params.ignore_eos {
                Vec::new()
            } else {
                model.generation.eos_token_ids.clone()
            },
            stops: StopStrings::new(params.stop_strings.clone()),
            sampler: Sampler::new(params.sampling)?,
            stream: tokenizer.map(|t| StreamDecoder::new(t.clone())),
            out: Generation {
                prompt_tokens: prompt_len,
                tokens: Vec::new(),
                text: String::new(),
                prefill_ms: 0.0,
                decode_ms: Vec::new(),
                finish_reason: FinishReason::Length,
                routing: Vec::new(),
                drafts: None,
            },
            text: String::new(),
            emitted: 0,
            max_ctx,
            first: true,
        })
    }

    /// What the forward passes of this generation must return.
    pub fn forward_options(&self) -> ForwardOptions {
        ForwardOptions {
            routing: self.params.routing,
            ..Default::default()
        }
    }

    /// Whether another token is to be sampled (`max_tokens` not reached).
    pub fn wants_more(&self) -> bool {
        self.out.tokens.len() < self.params.max_tokens
    }

    /// The sampler, for speculative decoding's draws (drafts, acceptance, residuals), which
    /// come from the request's own seeded random state.
    pub fn sampler(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    /// Tokens still to be sampled before `max_tokens`.
    pub fn tokens_left(&self) -> usize {
        self.params.max_tokens.saturating_sub(self.out.tokens.len())
    }

    /// Positions a sequence at `pos` may still feed within the context.
    pub fn positions_left(&self, pos: usize) -> usize {
        self.max_ctx.saturating_sub(pos)
    }

    /// The next token from the last row of `logits`. Greedy decoding reads back one id (the
    /// argmax runs on the backend); top-k, top-p and min-p sampling read back the few
    /// candidates that can win (and the softmax mass); plain temperature sampling, or
    /// candidates that cannot decide, read the whole row. All pick the same token on every
    /// backend.
    pub fn pick(&mut self, model: &Model, logits: &Tensor) -> Result<u32> {
        let be = model.backend.as_ref();
        let v = model.config.vocab_size;
        let picked = if self.params.sampling.is_greedy() {
            Some(*be.argmax(logits)?.last().expect("logits have a row"))
        } else if let Some(req) = self.sampler.candidates_needed() {
            let cands = be.top_candidates(logits, req.k, req.mass_inv_t)?;
            self.sampler.sample_top(&cands, v)
        } else {
            None
        };
        Ok(match picked {
            Some(id) => id,
            None => {
                let row = be.download(logits)?;
                self.sampler.sample(&row[row.len() - v..])
            }
        })
    }

    /// Records token `id`, sampled `ms` after its step began, with the routing of the pass
    /// that produced it, on a sequence now at `pos`; emits its events. Returns why the
    /// generation ends here, if it does (otherwise `id` is to be fed next).
    pub fn accept(
        &mut self,
        id: u32,
        ms: f64,
        routing: Option<Vec<TokenRoute>>,
        pos: usize,
        on_event: &mut dyn FnMut(&Event) -> bool,
    ) -> Result<Option<FinishReason>> {
        if self.first {
            self.out.prefill_ms = ms;
            on_event(&Event::Prefilled {
                tokens: self.out.prompt_tokens,
                ms,
            });
        } else {
            self.out.decode_ms.push(ms);
        }
        self.first = false;
        self.out.tokens.push(id);
        if let Some(r) = &routing {
            self.out.routing.push(r.clone());
        }
        let is_eos = self.eos.contains(&id);
        if let Some(stream) = self.stream.as_mut().filter(|_| !is_eos) {
            self.text.push_str(&stream.push(id)?);
        }
        let stop_at = self.stops.find(&self.text);
        if let Some(cut) = stop_at {
            self.text.truncate(cut);
        }
        let safe = if stop_at.is_some() || is_eos {
            self.text.len()
        } else {
            self.text.len() - self.stops.holdback(&self.text)
        };
        let delta = self.text[self.emitted.min(safe)..safe].to_string();
        self.emitted = self.emitted.max(safe);
        let go_on = on_event(&Event::Token {
            index: self.out.tokens.len() - 1,
            id,
            text: delta,
            ms,
            routing,
        });
        Ok(if is_eos {
            Some(FinishReason::Eos)
        } else if stop_at.is_some() {
            Some(FinishReason::Stop)
        } else if !go_on {
            Some(FinishReason::Cancelled)
        } else if !self.wants_more() {
            Some(FinishReason::Length)
        } else if pos + 1 > self.max_ctx {
            Some(FinishReason::Context)
        } else {
            None
        })
    }

    /// Ends the generation for `reason`: the text held back is released (or cut at a stop
    /// string it completes), the `Finished` event sent, the record returned.
    pub fn finish(
        mut self,
        mut reason: FinishReason,
        on_event: &mut dyn FnMut(&Event) -> bool,
    ) -> Result<Generation> {
        let ended_by_text = matches!(reason, FinishReason::Stop | FinishReason::Eos);
        if let Some(stream) = self.stream.as_mut().filter(|_| !ended_by_text) {
            self.text.push_str(&stream.finish()?);
            if let Some(cut) = self.stops.find(&self.text) {
                self.text.truncate(cut);
                reason = FinishReason::Stop;
            }
        }
        let rest = self.text[self.emitted.min(self.text.len())..].to_string();
        self.out.text = self.text;
        self.out.finish_reason = reason;
        on_event(&Event::Finished { reason, text: rest });
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::prefill_pieces;

    /// The pieces cover the prompt in order, none longer than the chunk but a merged last
    /// one, and none of one token unless the whole prompt is one token.
    #[test]
    fn prefill_pieces_cover_the_prompt_without_a_lone_last_token() {
        assert_eq!(prefill_pieces(1, 512), vec![0..1]);
        assert_eq!(prefill_pieces(5, 0), vec![0..5]);
        assert_eq!(prefill_pieces(1024, 512), vec![0..512, 512..1024]);
        assert_eq!(prefill_pieces(1025, 512), vec![0..512, 512..1025]);
        assert_eq!(
            prefill_pieces(1026, 512),
            vec![0..512, 512..1024, 1024..1026]
        );
        assert_eq!(prefill_pieces(5, 1), vec![0..2, 2..5]);
        for len in 1..60 {
            for chunk in 1..9 {
                let p = prefill_pieces(len, chunk);
                assert_eq!(p.first().unwrap().start, 0);
                assert_eq!(p.last().unwrap().end, len);
                assert!(p.windows(2).all(|w| w[0].end == w[1].start));
                assert!(p.iter().all(|r| r.len() <= chunk.max(2) + 1));
                assert!(
                    len == 1 || p.iter().all(|r| r.len() > 1),
                    "{len} {chunk}: {p:?}"
                );
            }
        }
    }
}
