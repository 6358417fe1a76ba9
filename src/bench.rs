//! `nemotron-rt bench`: prefill and decode speed, and how close decode comes to the memory
//! bandwidth roofline — bytes of weights actually read per token (from the stored formats and
//! the experts really chosen) against a streaming-read bandwidth measured in the same run.

use std::collections::BTreeSet;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::generate::{self, GenerateParams, TokenRoute};
use crate::model::loader::Access;
use crate::model::{BatchEntry, ForwardOptions, Model};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub prompt_len: usize,
    pub gen_tokens: usize,
    pub repeat: usize,
    /// Threads for the bandwidth probe (the CPU backend's thread count); 0 = skip the probe.
    pub bandwidth_threads: usize,
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
}

/// Bytes of weights read for one decoded token whose routing was `routes`: every non-routed
/// tensor whole, one embedding row, and the chosen experts of each MoE layer.
pub fn bytes_for_token(model: &Model, routes: &[TokenRoute]) -> f64 {
    let info = &model.info;
    let mut bytes: f64 = info
        .groups
        .iter()
        .filter(|g| !matches!(g.access, Access::Routed { .. }))
        .map(|g| g.bytes_per_token())
        .sum();
    let moe_layers = model.moe_layers().len().max(1) as f64;
    for g in info.groups.iter() {
        if let Access::Routed { experts, .. } = g.access {
            // The group sums one projection of every expert over all MoE layers.
            let per_expert = g.bytes as f64 / (experts as f64 * moe_layers);
            let chosen: usize = routes
                .iter()
                .map(|r| r.ids.iter().collect::<BTreeSet<_>>().len())
                .sum();
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

pub fn run(model: &Model, opts: &BenchOptions) -> Result<BenchReport> {
    if opts.prompt_len == 0 || opts.gen_tokens < 2 || opts.repeat == 0 {
        return Err(Error::Invalid(format!(
            "bench needs --prompt-len >= 1, --gen >= 2 and --repeat >= 1 (got {}, {}, {})",
            opts.prompt_len, opts.gen_tokens, opts.repeat
        )));
    }
    let context = model.config.max_position_embeddings;
    match opts.prompt_len.checked_add(opts.gen_tokens) {
        Some(n) if n <= context => {}
        _ => {
            return Err(Error::Invalid(format!(
                "bench: --prompt-len {} + --gen {} positions do not fit the model's context \
                 (max_position_embeddings {context})",
                opts.prompt_len, opts.gen_tokens
            )));
        }
    }
    let prompt = synthetic_prompt(opts.prompt_len, model.config.vocab_size);
    let base = GenerateParams {
        max_tokens: opts.gen_tokens,
        ignore_eos: true,
        max_context: Some(opts.prompt_len + opts.gen_tokens + 1),
        ..Default::default()
    };
    // Warm-up (pipelines, page cache) that also records routing for the byte count.
    let warm = generate::generate(
        model,
        None,
        &prompt,
        &GenerateParams {
            max_tokens: opts.gen_tokens.min(16),
            routing: true,
            ..base.clone()
        },
        &mut |_| true,
    )?;
    let decoded = &warm.routing[1..];
    let bytes_per_token = if decoded.is_empty() {
        model.info.bytes_per_token()
    } else {
        decoded
            .iter()
            .map(|r| bytes_for_token(model, r))
            .sum::<f64>()
            / decoded.len() as f64
    };
    let probe = (opts.bandwidth_threads > 0)
        .then(|| BandwidthProbe::new(opts.bandwidth_threads, 1 << 30))
        .flatten();
    let (mut prefill, mut decode, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    let (mut machine, mut fractions) = (Vec::new(), Vec::new());
    for _ in 0..opts.repeat {
        let start = Instant::now();
        let mut first: Option<f64> = None;
        let g = generate::generate(model, None, &prompt, &base, &mut |ev| {
            if first.is_none() && matches!(ev, generate::Event::Token { .. }) {
                first = Some(start.elapsed().as_secs_f64() * 1000.0);
            }
            true
        })?;
        prefill.push(g.prefill_tok_s());
        decode.push(g.decode_tok_s());
        ttft.push(first.unwrap_or(g.prefill_ms));
        if let Some(p) = &probe {
            let gb_s = p.measure(3);
            machine.push(gb_s);
            fractions.push(bytes_per_token * g.decode_tok_s() / 1e9 / gb_s);
        }
    }
    let decode_tok_s = Stats::of(&decode);
    let achieved_gb_s = bytes_per_token * decode_tok_s.median / 1e9;
    let (machine_gb_s_range, roofline_fraction_range) = if machine.is_empty() {
        (None, None)
    } else {
        (Some(Stats::of(&machine)), Some(Stats::of(&fractions)))
    };
    let info = model.backend.info();
    Ok(BenchReport {
        backend: info.name,
        device: info.device,
        threads: info.threads,
        prompt_len: opts.prompt_len,
        gen_tokens: opts.gen_tokens,
        repeat: opts.repeat,
        prefill_tok_s: Stats::of(&prefill),
        decode_tok_s,
        ttft_ms: Stats::of(&ttft),
        bytes_per_token,
        achieved_gb_s,
        machine_gb_s: machine_gb_s_range.map(|m| m.median),
        roofline_fraction: roofline_fraction_range.map(|f| f.median),
        machine_gb_s_range,
        roofline_fraction_range,
        peak_rss_bytes: peak_rss(),
    })
}

/// One line of `bench --parallel`: `sequences` decoding together, one batched forward pass per
/// step.
#[derive(Clone, Debug, Serialize)]
pub struct ParallelRow {
    pub sequences: usize,
    /// Tokens per second over all the sequences.
    pub tok_s: Stats,
    /// `tok_s` over one sequence's, each repeat's pair measured back to back.
    pub speedup: Stats,
}

/// Decode throughput with `sizes[i]` sequences in one batch: each sequence gets its own
/// synthetic prompt of `prompt_len` tokens (prefilled alone, not timed), then `gen_tokens`
/// greedy steps in which one forward pass carries one decode row of every sequence. The sizes
/// run in turn within each repeat, forwards then backwards on alternate repeats, so a noisy
/// machine's drift falls on all of them alike; the speed-up is taken per repeat.
pub fn run_parallel(
    model: &Model,
    sizes: &[usize],
    prompt_len: usize,
    gen_tokens: usize,
    repeat: usize,
) -> Result<Vec<ParallelRow>> {
    if sizes.is_empty() || sizes.contains(&0) || prompt_len == 0 || gen_tokens == 0 || repeat == 0 {
        return Err(Error::Invalid(
            "bench --parallel needs sequence counts >= 1, --prompt-len >= 1, --gen >= 1 and \
             --repeat >= 1"
                .into(),
        ));
    }
    let context = model.config.max_position_embeddings;
    if prompt_len + gen_tokens > context {
        return Err(Error::Invalid(format!(
            "bench: --prompt-len {prompt_len} + --gen {gen_tokens} positions do not fit the \
             model's context (max_position_embeddings {context})"
        )));
    }
    let mut order: Vec<usize> = sizes.to_vec();
    order.sort_unstable();
    order.dedup();
    let mut all = vec![Vec::new(); order.len()];
    // A warm-up pass of the largest batch (pages, pipelines), not counted.
    let largest = *order.last().expect("not empty");
    decode_together(model, largest, prompt_len, gen_tokens.min(4))?;
    for r in 0..repeat {
        let idx: Vec<usize> = if r % 2 == 0 {
            (0..order.len()).collect()
        } else {
            (0..order.len()).rev().collect()
        };
        for i in idx {
            all[i].push(decode_together(model, order[i], prompt_len, gen_tokens)?);
        }
    }
    let one = order.iter().position(|&n| n == 1);
    Ok(order
        .iter()
        .enumerate()
        .map(|(i, &n)| ParallelRow {
            sequences: n,
            tok_s: Stats::of(&all[i]),
            speedup: Stats::of(&match one {
                Some(o) => all[i].iter().zip(&all[o]).map(|(a, b)| a / b).collect(),
                None => Vec::new(),
            }),
        })
        .collect())
}

/// Tokens per second of `n` sequences decoding `steps` tokens together.
fn decode_together(model: &Model, n: usize, prompt_len: usize, steps: usize) -> Result<f64> {
    let v = model.config.vocab_size;
    let be = model.backend.as_ref();
    let mut seqs = Vec::with_capacity(n);
    let mut next = Vec::with_capacity(n);
    for j in 0..n {
        // Different prompts, so the sequences choose different experts.
        let prompt: Vec<u32> = synthetic_prompt(prompt_len + j, v)[j..].to_vec();
        let mut seq = model.new_sequence()?;
        let out = model.forward(&mut seq, &prompt, ForwardOptions::default())?;
        next.push(be.argmax(&out.logits)?[0]);
        seqs.push(seq);
    }
    let start = Instant::now();
    for _ in 0..steps {
        let ids: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut entries: Vec<BatchEntry> = seqs
            .iter_mut()
            .zip(&ids)
            .map(|(seq, t)| BatchEntry {
                seq,
                ids: t,
                decode: true,
                all_logits: false,
            })
            .collect();
        let outs = model.forward_batch(&mut entries, ForwardOptions::default())?;
        for (t, out) in next.iter_mut().zip(&outs) {
            *t = be.argmax(&out.logits)?[0];
        }
    }
    Ok((n * steps) as f64 / start.elapsed().as_secs_f64())
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
