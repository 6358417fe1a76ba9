//! `nemotron-rt bench`: prefill and decode speed, and how close decode comes to the memory
//! bandwidth roofline — bytes of weights actually read per token (from the stored formats and
//! the experts really chosen) against a streaming-read bandwidth measured in the same run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::generate::{GenerateParams, Generation, TokenRoute};
use crate::model::Model;
use crate::model::loader::Access;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub prompt_len: usize,
    pub gen_tokens: usize,
    pub repeat: usize,
    /// Threads for the bandwidth probe (the CPU backend's thread count); 0 = skip the probe.
    pub bandwidth_threads: usize,
    /// Sequences decoding together, one report each (`[1]`: the plain single-sequence bench).
    pub sequences: Vec<usize>,
    /// Tokens drafted per step by the MTP step (0: off).
    pub speculative: usize,
}

/// Median, minimum and maximum of a measurement over repeats.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Stats {
            median,
            min: v.first().copied().unwrap_or(0.0),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub device: String,
    pub threads: usize,
    pub prompt_len: usize,
    pub gen_tokens: usize,
    pub repeat: usize,
    pub prefill_tok_s: Stats,
    pub decode_tok_s: Stats,
    pub ttft_ms: Stats,
    /// Weight bytes read per decoded token, from the stored formats and the chosen experts.
    pub bytes_per_token: f64,
    /// `bytes_per_token × median decode tok/s`.
    pub achieved_gb_s: f64,
    /// Streaming-read bandwidth measured on the same threads, in the same run (the median of
    /// one probe after each repeat).
    pub machine_gb_s: Option<f64>,
    /// `achieved_gb_s / machine_gb_s`: the median over repeats of each repeat's decode GB/s
    /// over the bandwidth probed right after it, so a machine whose bandwidth drifts between
    /// repeats is compared with itself.
    pub roofline_fraction: Option<f64>,
    /// The probes' spread, and the per-repeat fractions' (absent when not probed per repeat).
    pub machine_gb_s_range: Option<Stats>,
    pub roofline_fraction_range: Option<Stats>,
    pub peak_rss_bytes: Option<u64>,
    /// With `--parallel`: how many sequences decoded together (`decode_tok_s` is then their
    /// aggregate), each one's share, and the speed-up over one sequence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel: Option<Parallel>,
    /// With `--speculative K`: K, and the fraction of drafts accepted at each draft position
    /// over the timed runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft_acceptance: Option<Vec<f64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Parallel {
    pub sequences: usize,
    pub per_sequence_decode_tok_s: Stats,
    /// Aggregate decode speed over one sequence's, each repeat's pair measured back to back;
    /// absent when 1 is not among the counts.
    pub speedup: Option<Stats>,
}

/// Bytes of weights read for one decoded token whose routing was `routes`: every non-routed
/// tensor whole, one embedding row, and the chosen experts of each MoE layer.
pub fn bytes_for_token(model: &Model, routes: &[TokenRoute]) -> f64 {
    bytes_for_step(model, &[routes])
}

/// Bytes of weights read by one decode step whose rows were routed as `rows` (one routing per
/// row): the non-routed tensors once for all rows, and in each MoE layer every expert that
/// any row chose, once.
pub fn bytes_for_step(model: &Model, rows: &[&[TokenRoute]]) -> f64 {
    let info = &model.info;
    let mut bytes: f64 = info
        .groups
        .iter()
        .filter(|g| !matches!(g.access, Access::Routed { .. }) && !g.draft)
        .map(|g| g.bytes_per_token())
        .sum();
    let mut chosen: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
    for r in rows.iter().flat_map(|routes| routes.iter()) {
        chosen.entry(r.layer).or_default().extend(&r.ids);
    }
    let chosen: usize = chosen.values().map(BTreeSet::len).sum();
    let moe_layers = model.moe_layers().len().max(1) as f64;
    for g in info.groups.iter().filter(|g| !g.draft) {
        if let Access::Routed { experts, .. } = g.access {
            // The group sums one projection of every expert over all MoE layers.
            let per_expert = g.bytes as f64 / (experts as f64 * moe_layers);
            bytes += per_expert * chosen as f64;
        }
    }
    bytes
}

/// A deterministic prompt of `n` ordinary token ids (avoiding the first few special ids).
pub fn synthetic_prompt(n: usize, vocab: usize) -> Vec<u32> {
    let span = vocab.saturating_sub(3).max(1);
    (0..n)
        .map(|i| (3 + (i * 7919 + 11) % span) as u32)
        .collect()
}

/// Measures prefill and decode through the engine, `opts.sequences[i]` sequences at a time: one
/// report per distinct count, in ascending order. Each sequence gets its own synthetic prompt
/// (so the sequences choose different experts); all of a measurement's sequences are submitted
/// together, so they are prefilled in the same passes and then decode one row each per step.
/// The counts take turns within each repeat, forwards then backwards on alternate repeats, so
/// a noisy machine's drift falls on all of them alike, and the speed-up over one sequence is
/// taken per repeat.
pub fn run(model: &Arc<Model>, opts: &BenchOptions) -> Result<Vec<BenchReport>> {
    if opts.prompt_len == 0 || opts.gen_tokens < 2 || opts.repeat == 0 {
        return Err(Error::Invalid(format!(
            "bench needs --prompt-len >= 1, --gen >= 2 and --repeat >= 1 (got {}, {}, {})",
            opts.prompt_len, opts.gen_tokens, opts.repeat
        )));
    }
    if opts.sequences.is_empty() || opts.sequences.contains(&0) {
        return Err(Error::Invalid(
            "bench --parallel needs sequence counts >= 1".into(),
        ));
    }
    let context = model.config.max_position_embeddings;
    let last = opts.sequences.iter().max().copied().unwrap_or(1) - 1;
    match (opts.prompt_len + last).checked_add(opts.gen_tokens) {
        Some(n) if n <= context => {}
        _ => {
            return Err(Error::Invalid(format!(
                "bench: --prompt-len {} + --gen {} positions do not fit the model's context \
                 (max_position_embeddings {context})",
                opts.prompt_len, opts.gen_tokens
            )));
        }
    }
    let mut sizes = opts.sequences.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let engine = Engine::start(model.clone(), None);
    // Warm-up (pipelines, page cache) that also records routing for the byte count.
    let mut bytes_per_token = Vec::with_capacity(sizes.len());
    for &n in &sizes {
        let steps = opts.gen_tokens.min(16);
        let gens = together(&engine, model, n, (opts.prompt_len, steps), 0, true)?;
        let per_step: Vec<f64> = (1..steps)
            .filter_map(|i| {
                let rows: Option<Vec<&[TokenRoute]>> = gens
                    .iter()
                    .map(|g| g.routing.get(i).map(Vec::as_slice))
                    .collect();
                rows.map(|rows| bytes_for_step(model, &rows) / n as f64)
            })
            .collect();
        bytes_per_token.push(if per_step.is_empty() {
            model.info.bytes_per_token()
        } else {
            per_step.iter().sum::<f64>() / per_step.len() as f64
        });
    }
    let probe = (opts.bandwidth_threads > 0)
        .then(|| BandwidthProbe::new(opts.bandwidth_threads, 1 << 30))
        .flatten();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); sizes.len()];
    for r in 0..opts.repeat {
        let order: Vec<usize> = if r % 2 == 0 {
            (0..sizes.len()).collect()
        } else {
            (0..sizes.len()).rev().collect()
        };
        for i in order {
            let n = sizes[i];
            let lens = (opts.prompt_len, opts.gen_tokens);
            let gens = together(&engine, model, n, lens, opts.speculative, false)?;
            let mut s = Sample::of(&gens);
            if let Some(p) = &probe {
                let gb_s = p.measure(3);
                s.probe = Some((gb_s, bytes_per_token[i] * s.decode / 1e9 / gb_s));
            }
            samples[i].push(s);
        }
    }
    let info = model.backend.info();
    let one = sizes.iter().position(|&n| n == 1);
    Ok(sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let of =
                |f: fn(&Sample) -> f64| Stats::of(&samples[i].iter().map(f).collect::<Vec<_>>());
            let decode_tok_s = of(|s| s.decode);
            let achieved_gb_s = bytes_per_token[i] * decode_tok_s.median / 1e9;
            let probes: Vec<(f64, f64)> = samples[i].iter().filter_map(|s| s.probe).collect();
            let (machine_gb_s_range, roofline_fraction_range) = if probes.is_empty() {
                (None, None)
            } else {
                let (m, f): (Vec<f64>, Vec<f64>) = probes.into_iter().unzip();
                (Some(Stats::of(&m)), Some(Stats::of(&f)))
            };
            let parallel = (opts.sequences != [1]).then(|| Parallel {
                sequences: n,
                per_sequence_decode_tok_s: of(|s| s.decode / s.sequences as f64),
                speedup: one.map(|o| {
                    let pairs = samples[i].iter().zip(&samples[o]);
                    Stats::of(&pairs.map(|(a, b)| a.decode / b.decode).collect::<Vec<_>>())
                }),
            });
            BenchReport {
                backend: info.name.clone(),
                device: info.device.clone(),
                threads: info.threads,
                prompt_len: opts.prompt_len,
                gen_tokens: opts.gen_tokens,
                repeat: opts.repeat,
                prefill_tok_s: of(|s| s.prefill),
                decode_tok_s,
                ttft_ms: of(|s| s.ttft_ms),
                bytes_per_token: bytes_per_token[i],
                achieved_gb_s,
                machine_gb_s: machine_gb_s_range.map(|m| m.median),
                roofline_fraction: roofline_fraction_range.map(|f| f.median),
                machine_gb_s_range,
                roofline_fraction_range,
                peak_rss_bytes: peak_rss(),
                parallel,
                speculative: (opts.speculative > 0).then_some(opts.speculative),
                draft_acceptance: acceptance(&samples[i]),
            }
        })
        .collect())
}

/// Accepted over drafted at each draft position, over all of a count's measurements.
fn acceptance(samples: &[Sample]) -> Option<Vec<f64>> {
    let totals = samples
        .iter()
        .filter_map(|s| s.drafts.as_ref())
        .fold(None, |t, (dr, ac)| Some(add_drafts(t, (dr, ac))));
    totals.map(|(dr, ac)| {
        dr.iter()
            .zip(&ac)
            .map(|(&d, &a)| if d > 0 { a as f64 / d as f64 } else { 0.0 })
            .collect()
    })
}

/// `total` plus one run's drafted and accepted counts per draft position.
fn add_drafts(
    total: Option<(Vec<usize>, Vec<usize>)>,
    (drafted, accepted): (&[usize], &[usize]),
) -> (Vec<usize>, Vec<usize>) {
    let (mut dr, mut ac) =
        total.unwrap_or_else(|| (vec![0; drafted.len()], vec![0; accepted.len()]));
    dr.iter_mut().zip(drafted).for_each(|(a, b)| *a += b);
    ac.iter_mut().zip(accepted).for_each(|(a, b)| *a += b);
    (dr, ac)
}

/// One measurement of `sequences` sequences together.
#[derive(Clone, Debug)]
struct Sample {
    sequences: usize,
    /// Prompt tokens per second over all the sequences.
    prefill: f64,
    /// Decoded tokens per second over all the sequences.
    decode: f64,
    /// From the first step to the last sequence's first token.
    ttft_ms: f64,
    /// The bandwidth probed right after, and the decode's fraction of it.
    probe: Option<(f64, f64)>,
    /// Drafts proposed and accepted per draft position, over the sequences.
    drafts: Option<(Vec<usize>, Vec<usize>)>,
}

impl Sample {
    /// The sequences ran their steps together: the prefill took as long as the slowest
    /// prompt, and the decode as long as the longest run of steps.
    fn of(gens: &[Generation]) -> Sample {
        let longest = |f: fn(&Generation) -> f64| gens.iter().map(f).fold(0.0, f64::max);
        let prefill_ms = longest(|g| g.prefill_ms);
        let decode_ms = longest(|g| g.decode_ms.iter().sum());
        let prompt: usize = gens.iter().map(|g| g.prompt_tokens).sum();
        let decoded: usize = gens.iter().map(|g| g.decode_ms.len()).sum();
        let rate = |n: usize, ms: f64| {
            if ms > 0.0 {
                n as f64 * 1000.0 / ms
            } else {
                0.0
            }
        };
        Sample {
            sequences: gens.len(),
            prefill: rate(prompt, prefill_ms),
            decode: rate(decoded, decode_ms),
            ttft_ms: prefill_ms,
            probe: None,
            drafts: gens
                .iter()
                .filter_map(|g| g.drafts.as_ref())
                .fold(None, |t, d| Some(add_drafts(t, (&d.drafted, &d.accepted)))),
        }
    }
}

/// `n` greedy generations of `steps` tokens from different synthetic prompts, submitted to
/// the engine together so that they run in the same steps.
fn together(
    engine: &Engine,
    model: &Model,
    n: usize,
    (prompt_len, steps): (usize, usize),
    speculative: usize,
    routing: bool,
) -> Result<Vec<Generation>> {
    let v = model.config.vocab_size;
    let params = GenerateParams {
        max_tokens: steps,
        ignore_eos: true,
        routing,
        max_context: Some(prompt_len + steps + 1),
        speculative,
        ..Default::default()
    };
    let requests = (0..n)
        .map(|j| {
            (
                synthetic_prompt(prompt_len + j, v)[j..].to_vec(),
                params.clone(),
            )
        })
        .collect();
    engine
        .submit_all(requests)
        .into_iter()
        .map(|t| t.wait(&mut |_| {}))
        .collect()
}

/// Streaming-read bandwidth in GB/s: `threads` threads summing disjoint parts of a `bytes`
/// buffer (far larger than any cache), best of five passes; 0 where the probe cannot run.
pub fn measure_bandwidth(threads: usize, bytes: usize) -> f64 {
    BandwidthProbe::new(threads, bytes).map_or(0.0, |p| p.measure(5))
}

/// A buffer far larger than any cache and the threads that stream it, kept so that bandwidth
/// can be probed again (after every bench repeat) without paying for the allocation again.
pub struct BandwidthProbe {
    pool: rayon::ThreadPool,
    threads: usize,
    data: Vec<u64>,
}

impl BandwidthProbe {
    /// `None` where the threads cannot be started.
    pub fn new(threads: usize, bytes: usize) -> Option<BandwidthProbe> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .ok()?;
        let n = (bytes / 8).max(threads * 4);
        let data: Vec<u64> = pool.install(|| (0..n as u64).into_par_iter().collect());
        Some(BandwidthProbe {
            pool,
            threads,
            data,
        })
    }

    /// GB/s, the best of `passes` streaming reads of the whole buffer.
    pub fn measure(&self, passes: usize) -> f64 {
        let n = self.data.len();
        let mut best = 0.0f64;
        for _ in 0..passes.max(1) {
            let start = Instant::now();
            let sum: u64 = self.pool.install(|| {
                self.data
                    .par_chunks(n.div_ceil(self.threads))
                    .map(|c| {
                        // Four independent lanes so the add chain is not the limit.
                        let mut acc = [0u64; 4];
                        for q in c.chunks_exact(4) {
                            for l in 0..4 {
                                acc[l] = acc[l].wrapping_add(q[l]);
                            }
                        }
                        acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
                    })
                    .reduce(|| 0, u64::wrapping_add)
            });
            std::hint::black_box(sum);
            best = best.max((n * 8) as f64 / start.elapsed().as_secs_f64() / 1e9);
        }
        best
    }
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
