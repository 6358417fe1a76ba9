//! The `nemotron-rt` command line: generate, forward, inspect.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use nemotron_rt::backend::cuda::PrefillMath;
use nemotron_rt::backend::{self, BackendKind};
use nemotron_rt::engine::Update;
use nemotron_rt::generate::{self, Event, GenerateParams, TokenRoute};
use nemotron_rt::model::{ForwardOptions, LoadOptions, Model};
use nemotron_rt::runtime::Runtime;
use nemotron_rt::sampling::SamplingParams;
use nemotron_rt::tokenizer::Tokenizer;

#[derive(Parser)]
#[command(
    name = "nemotron-rt",
    version,
    about = "Inference runtime for Nemotron-H / Nemotron 3 Super"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// Run one forward pass over token ids and save logits and per-layer hidden states.
    Forward(ForwardArgs),
    /// Describe a checkpoint: layer pattern, parameters, formats, bytes read per token.
    Inspect(InspectArgs),
    /// List the compute devices every backend can use.
    Devices,
    /// Measure prefill and decode speed and the fraction of memory bandwidth decode reaches.
    Bench(BenchArgs),
    /// Write a random-weight checkpoint with Nemotron 3 Super's exact layer shapes and layout.
    Synth(SynthArgs),
}

#[derive(Args)]
struct SynthArgs {
    #[arg(long, value_enum, default_value = "super")]
    shape: nemotron_rt::synth::Shape,
    /// Layer pattern: M = Mamba-2, E = MoE, * = attention, - = MLP.
    #[arg(long, default_value = "MEMEM*EME")]
    pattern: String,
    #[arg(long, default_value_t = 16384)]
    vocab: usize,
    #[arg(long, value_enum, default_value = "nvfp4")]
    recipe: nemotron_rt::synth::Recipe,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (created; must be empty if it exists).
    #[arg(long)]
    out: PathBuf,
    /// Largest shard in bytes.
    #[arg(long, default_value_t = nemotron_rt::synth::DEFAULT_MAX_SHARD_BYTES)]
    max_shard_bytes: u64,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 512)]
    prompt_len: usize,
    #[arg(long = "gen", default_value_t = 128)]
    gen_tokens: usize,
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Decode throughput with this many sequences batched together instead (e.g. 1,2,4,8):
    /// one forward pass per step carries a token of every sequence.
    #[arg(long, value_delimiter = ',')]
    parallel: Option<Vec<usize>>,
    /// Draft K tokens per step with the checkpoint's MTP step (0: off). The report adds the
    /// acceptance at each draft position.
    #[arg(long, default_value_t = 0)]
    speculative: usize,
}

#[derive(Args)]
struct ModelArgs {
    /// Checkpoint folder (config.json, *.safetensors, tokenizer.json). Default: the embedded
    /// default model (nemotron-3-tiny).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendKind,
    /// Worker threads for the CPU backend (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// wgpu: use the first adapter whose name contains this (see `nemotron-rt devices`).
    #[arg(long)]
    adapter: Option<String>,
    /// CPU: activations the NVFP4 decode GEMVs multiply against. `q8` quantizes them to int8
    /// per 16 values and uses integer dot products: faster, but not bit-faithful to the
    /// reference (its agreement is measured in docs/benchmarks.md).
    #[arg(long, value_enum, default_value = "f32")]
    cpu_activations: CpuActivations,
    /// CUDA: the device ordinal (see `nemotron-rt devices`).
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// CUDA: the W4A4 FP4 tensor-core path for NVFP4 linears and routed experts (auto = on
    /// Blackwell only, sm_100 and sm_120 class; off = exact weight-only decode everywhere).
    #[arg(long, value_enum, default_value = "auto")]
    cuda_fp4: Fp4Mode,
    /// CUDA: keep the KV cache in FP8 where the checkpoint asks for it (changes results: the
    /// reference keeps it in f32).
    #[arg(long)]
    cuda_fp8_kv: bool,
    /// CUDA: launch each decode step's kernels one by one instead of replaying the step as a
    /// CUDA graph (to measure what the graphs save, or to rule them out).
    #[arg(long)]
    cuda_no_graphs: bool,
    /// CUDA: how prefill GEMMs (over 8 tokens) multiply. auto = bf16x3 on sm_80 and newer,
    /// f32 before; bf16x3 = tensor cores with activations in three bf16 terms (f32's
    /// precision); bf16 = tensor cores with bf16 activations (fastest, lossy); f32 = CUDA
    /// cores.
    #[arg(long, value_enum, default_value = "auto")]
    cuda_prefill: PrefillArg,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PrefillArg {
    Auto,
    F32,
    Bf16x3,
    Bf16,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CpuActivations {
    /// Exact: f32 activations, weights decoded exactly (the default).
    F32,
    /// int8 activations with a scale per 16 values, integer dot products.
    Q8,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Fp4Mode {
    Auto,
    On,
    Off,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (tokenized with the checkpoint's tokenizer.json).
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// 0 = off.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    min_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this text appears (repeatable); it is not included in the output.
    #[arg(long)]
    stop: Vec<String>,
    /// Keep going past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Most positions the sequence may hold: prompt plus generated tokens fed back (the last
    /// token sampled is not fed back, so a full context still yields one token). Default: the
    /// config's max_position_embeddings.
    #[arg(long)]
    max_context: Option<usize>,
    /// Draft K tokens per step with the checkpoint's MTP step and verify them in one pass:
    /// greedy output is the same token for token, sampled output keeps its distribution.
    /// 0: off.
    #[arg(long, default_value_t = 0)]
    speculative: usize,
    /// Print one JSON object with tokens, text, timings and routing instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write each generated token's routing (per MoE layer: expert ids and weights) as JSON lines.
    #[arg(long)]
    trace_routing: Option<PathBuf>,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true)))]
#[command(group(clap::ArgGroup::new("output").required(true).multiple(true)))]
struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input text (tokenized with the checkpoint's tokenizer.json, as `generate` does).
    #[arg(long, group = "input")]
    prompt: Option<String>,
    /// Input text read from a UTF-8 file.
    #[arg(long, group = "input")]
    prompt_file: Option<PathBuf>,
    /// Input as comma-separated token ids.
    #[arg(long, value_delimiter = ',', group = "input")]
    prompt_ids: Option<Vec<u32>>,
    /// Output safetensors: `logits` [T, V] and `hidden.layerN` [T, D] after each layer.
    #[arg(long, group = "output")]
    out: Option<PathBuf>,
    /// Write every input token's routing as JSON lines, in the format of `generate
    /// --trace-routing` (index = position; ms is 0: the pass is timed per chunk, not per token).
    #[arg(long, group = "output")]
    trace_routing: Option<PathBuf>,
}

#[derive(Args)]
struct InspectArgs {
    /// Checkpoint folder. Default: the embedded default model.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn main() {
    // Like every Unix filter, end quietly when the reader of our output goes away
    // (`nemotron-rt inspect | head`) instead of panicking on a broken pipe.
    // SAFETY: called first thing, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NEMOTRON_LOG")
                .unwrap_or_else(|_| "warn,wgpu_hal=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => run_generate(a),
        Command::Forward(a) => run_forward(a),
        Command::Inspect(a) => run_inspect(a),
        Command::Devices => run_devices(),
        Command::Bench(a) => run_bench(a),
        Command::Synth(a) => run_synth(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `--model`, or the folder the embedded default model is written to.
fn model_dir(model: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match model {
        Some(dir) => Ok(dir.clone()),
        None => Ok(nemotron_rt::default_model::dir()?),
    }
}

fn load(args: &ModelArgs, dir: &Path) -> anyhow::Result<Model> {
    let q8 = args.cpu_activations == CpuActivations::Q8;
    if q8 && args.backend != BackendKind::Cpu {
        anyhow::bail!("--cpu-activations q8 applies to --backend cpu only");
    }
    if let Some(name) = &args.adapter
        && args.backend != BackendKind::Wgpu
    {
        anyhow::bail!(
            "--adapter {name} applies to --backend wgpu only (CUDA devices are chosen with \
             --device)"
        );
    }
    let opts = backend::BackendOptions {
        threads: args.threads,
        adapter: args.adapter.clone(),
        cpu_q8_activations: q8,
        device: args.device,
        cuda_fp4: match args.cuda_fp4 {
            Fp4Mode::Auto => None,
            Fp4Mode::On => Some(true),
            Fp4Mode::Off => Some(false),
        },
        cuda_fp8_kv: args.cuda_fp8_kv,
        cuda_no_graphs: args.cuda_no_graphs,
        cuda_prefill: match args.cuda_prefill {
            PrefillArg::Auto => PrefillMath::Auto,
            PrefillArg::F32 => PrefillMath::F32,
            PrefillArg::Bf16x3 => PrefillMath::Bf16x3,
            PrefillArg::Bf16 => PrefillMath::Bf16,
        },
    };
    let be = backend::create_with(args.backend, &opts)?;
    let model = Model::load(dir, be, LoadOptions { progress: true })
        .with_context(|| format!("loading {}", dir.display()))?;
    Ok(model)
}

fn load_tokenizer(dir: &Path) -> anyhow::Result<Arc<Tokenizer>> {
    Ok(Arc::new(Tokenizer::from_dir(dir)?))
}

/// The prompt's token ids: the text tokenized (with the tokenizer's special tokens, as the
/// reference does) and checked against the model's vocabulary, or the ids given.
fn prompt_ids(
    text: Option<&str>,
    ids: Option<&[u32]>,
    tokenizer: Option<&Tokenizer>,
    vocab: usize,
) -> anyhow::Result<Vec<u32>> {
    let Some(text) = text else {
        return ids
            .map(<[u32]>::to_vec)
            .context("give a prompt as text or as token ids");
    };
    Ok(nemotron_rt::runtime::encode_prompt(tokenizer, text, vocab)?)
}

#[derive(Serialize)]
struct GenerateJson<'a> {
    tokens: &'a [u32],
    text: &'a str,
    prompt_tokens: usize,
    prefill_ms: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    decode_ms: &'a [f64],
    finish_reason: generate::FinishReason,
    routing: &'a [Vec<TokenRoute>],
    /// Per draft position, drafts proposed and accepted (with `--speculative`).
    #[serde(skip_serializing_if = "Option::is_none")]
    drafts: Option<&'a generate::DraftStats>,
}

fn run_generate(a: GenerateArgs) -> anyhow::Result<()> {
    let dir = model_dir(&a.model.model)?;
    if let Some(p) = &a.trace_routing {
        output_path("--trace-routing", p, &dir, true)?;
    }
    if a.stop.iter().any(String::is_empty) {
        bail!("--stop \"\": a stop string must not be empty");
    }
    let model = load(&a.model, &dir)?;
    let needs_tokenizer = a.prompt.is_some() || !a.stop.is_empty();
    let tokenizer = match load_tokenizer(&dir) {
        Ok(t) => Some(t),
        Err(e) if needs_tokenizer => return Err(e),
        Err(e) => {
            eprintln!("warning: no usable tokenizer ({e:#}); printing token ids instead of text");
            None
        }
    };
    let ids_only = tokenizer.is_none();
    let prompt = prompt_ids(
        a.prompt.as_deref(),
        a.prompt_ids.as_deref(),
        tokenizer.as_deref(),
        model.config.vocab_size,
    )?;
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            seed: a.seed,
        },
        stop_strings: a.stop.clone(),
        ignore_eos: a.ignore_eos,
        routing: a.json || a.trace_routing.is_some(),
        max_context: a.max_context,
        speculative: a.speculative,
        ..Default::default()
    };
    if let Some(hint) = &model.generation.sampling_hint
        && params.sampling.is_greedy()
    {
        eprintln!(
            "note: the checkpoint's generation_config.json recommends sampling ({hint}); \
             decoding greedily as asked (--temperature, --top-p, --top-k, --min-p to sample)"
        );
    }
    let mut trace = match &a.trace_routing {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut trace_err: Option<std::io::Error> = None;
    let stdout = std::io::stdout();
    let stream_text = !a.json;
    let mut on_event = |ev: &Event| -> bool {
        match ev {
            Event::Token {
                index,
                id,
                text,
                ms,
                routing,
            } => {
                if stream_text {
                    let mut out = stdout.lock();
                    let _ = if ids_only {
                        write!(out, "{id} ")
                    } else {
                        out.write_all(text.as_bytes())
                    };
                    let _ = out.flush();
                }
                if let (Some(w), Some(r)) = (trace.as_mut(), routing) {
                    let res = nemotron_rt::trace::write_line(w, *index, *id, text, *ms, r);
                    if let Err(e) = res {
                        trace_err.get_or_insert(e);
                        return false;
                    }
                }
            }
            Event::Finished { text, .. } if stream_text => {
                let mut out = stdout.lock();
                let _ = out.write_all(text.as_bytes());
                let _ = writeln!(out);
            }
            _ => {}
        }
        true
    };
    // Through the engine, as the app and the server run requests: the same tokens and events
    // as a lone `generate`, batched with whatever else the engine runs.
    let runtime = Runtime::new(model, tokenizer.clone());
    let engine = &runtime.engine;
    let ticket = engine.submit(prompt, params);
    let mut g = None;
    for update in ticket.updates.iter() {
        match update {
            Update::Event(ev) => {
                if !on_event(&ev) {
                    engine.cancel(ticket.id);
                }
            }
            Update::Done(result) => {
                g = Some(result?);
                break;
            }
        }
    }
    let g = g.context("the engine stopped before the generation finished")?;
    if let Some(e) = trace_err {
        bail!("writing the routing trace: {e}");
    }
    if let (Some(mut w), Some(p)) = (trace, &a.trace_routing) {
        w.flush()
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if a.json {
        let j = GenerateJson {
            tokens: &g.tokens,
            text: &g.text,
            prompt_tokens: g.prompt_tokens,
            prefill_ms: g.prefill_ms,
            prefill_tok_s: g.prefill_tok_s(),
            decode_tok_s: g.decode_tok_s(),
            decode_ms: &g.decode_ms,
            finish_reason: g.finish_reason,
            routing: &g.routing,
            drafts: g.drafts.as_ref(),
        };
        println!("{}", serde_json::to_string(&j)?);
    } else {
        eprintln!(
            "[{} prompt tokens, prefill {:.1} ms ({:.1} tok/s); {} tokens, decode {:.1} tok/s; finished: {:?}]",
            g.prompt_tokens,
            g.prefill_ms,
            g.prefill_tok_s(),
            g.tokens.len(),
            g.decode_tok_s(),
            g.finish_reason
        );
    }
    Ok(())
}

fn run_forward(a: ForwardArgs) -> anyhow::Result<()> {
    let dir = model_dir(&a.model.model)?;
    let out_path = match &a.out {
        Some(p) => Some(output_path("--out", p, &dir, false)?),
        None => None,
    };
    if let Some(p) = &a.trace_routing {
        output_path("--trace-routing", p, &dir, true)?;
    }
    let text = match (&a.prompt, &a.prompt_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(p)) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("--prompt-file {}: reading UTF-8 text", p.display()))?,
        ),
        (None, None) => None,
    };
    let model = load(&a.model, &dir)?;
    // The trace's text column needs the tokenizer even for ids; without one it stays empty.
    let tokenizer = match load_tokenizer(&dir) {
        Ok(t) => Some(t),
        Err(e) if text.is_some() => return Err(e),
        Err(_) => None,
    };
    let ids = prompt_ids(
        text.as_deref(),
        a.prompt_ids.as_deref(),
        tokenizer.as_deref(),
        model.config.vocab_size,
    )?;
    if ids.is_empty() {
        bail!("the input is empty: nothing to run a forward pass over");
    }
    let (t, v, d) = (ids.len(), model.config.vocab_size, model.config.hidden_size);
    let context = model.config.max_position_embeddings;
    if t > context {
        return Err(nemotron_rt::Error::PromptTooLong {
            got: t,
            max: context,
            why: "the config's max_position_embeddings".into(),
        }
        .into());
    }
    let tensors = out_path.is_some();
    if tensors {
        // Embeddings, every layer and the final norm.
        let states = model.config.layers.len() + 2;
        // Saturating: an absurd product must read as "does not fit", never wrap to a small one.
        let out_bytes = (t as u64)
            .saturating_mul(v as u64)
            .saturating_add(
                (states as u64)
                    .saturating_mul(t as u64)
                    .saturating_mul(d as u64),
            )
            .saturating_mul(4);
        nemotron_rt::memory::ensure_fits(
            out_bytes,
            &format!(
                "forward over {t} tokens (logits [{t}, {v}] and {states} hidden states [{t}, {d}], f32)"
            ),
        )?;
    }
    let opts = ForwardOptions {
        all_logits: tensors,
        routing: a.trace_routing.is_some(),
        hidden: tensors,
        ..Default::default()
    };
    let mut trace = match &a.trace_routing {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut decoder = tokenizer.map(nemotron_rt::tokenizer::StreamDecoder::new);
    // In pieces, like generation's prefill, so the activations stay bounded; only the outputs
    // grow with the prompt.
    let be = model.backend.as_ref();
    let mut seq = model.new_sequence()?;
    let mut logits: Vec<f32> = Vec::with_capacity(if tensors { t * v } else { 0 });
    let mut hidden: Vec<(String, Vec<f32>)> = Vec::new();
    for r in generate::prefill_pieces(t, generate::PREFILL_CHUNK) {
        let start = r.start;
        let out = model.forward(&mut seq, &ids[r.clone()], opts)?;
        if let Some(w) = trace.as_mut() {
            for (row, &id) in ids[r].iter().enumerate() {
                let piece = match decoder.as_mut() {
                    Some(dec) => dec.push(id)?,
                    None => String::new(),
                };
                let routes = generate::routes_of(&out.routing, row);
                nemotron_rt::trace::write_line(w, start + row, id, &piece, 0.0, &routes)
                    .context("writing the routing trace")?;
            }
        }
        if !tensors {
            continue;
        }
        logits.extend(be.download(&out.logits)?);
        if hidden.is_empty() {
            hidden = out
                .hidden
                .into_iter()
                .map(|(name, h)| {
                    let mut all = Vec::with_capacity(t * d);
                    all.extend(h);
                    (name, all)
                })
                .collect();
        } else {
            for ((_, all), (_, h)) in hidden.iter_mut().zip(out.hidden) {
                all.extend(h);
            }
        }
    }
    if let (Some(mut w), Some(p)) = (trace, &a.trace_routing) {
        w.flush()
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote the routing of {t} tokens to {}", p.display());
    }
    let Some(out_path) = out_path else {
        return Ok(());
    };
    fn view(shape: Vec<usize>, data: &[f32]) -> safetensors::tensor::TensorView<'_> {
        safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            shape,
            bytemuck::cast_slice(data),
        )
        .expect("shape and byte count agree")
    }
    let mut views = vec![("logits".to_string(), view(vec![t, v], &logits))];
    for (name, h) in &hidden {
        views.push((format!("hidden.{name}"), view(vec![t, d], h)));
    }
    safetensors::serialize_to_file(views, None, &out_path)
        .with_context(|| format!("writing {}", out_path.display()))?;
    eprintln!(
        "wrote logits [{t}, {v}] and {} hidden states to {}",
        hidden.len(),
        out_path.display()
    );
    Ok(())
}

/// Where an output file named by `flag` goes: a link is followed (it stays a link to the new
/// file). An existing file of the checkpoint being read is refused: its weights are mapped, so
/// truncating one kills the process (and any other reading it) with SIGBUS, and a config
/// overwritten breaks the checkpoint. Unless `devices_ok` (a stream such as `/dev/stdout` that
/// is written in place), anything that is not a regular file is refused too: safetensors
/// replaces its target by renaming a temporary file over it.
fn output_path(
    flag: &str,
    out: &Path,
    model_dir: &Path,
    devices_ok: bool,
) -> anyhow::Result<PathBuf> {
    let target = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_path_buf());
    let Ok(meta) = std::fs::metadata(&target) else {
        return Ok(target);
    };
    if meta.is_dir() || (!meta.is_file() && !devices_ok) {
        bail!(
            "{flag} {}: exists and is not a regular file; give a file path",
            out.display()
        );
    }
    if nemotron_rt::checkpoint::files_read(model_dir).contains(&target) {
        bail!(
            "{flag} {}: is a file of the checkpoint being read ({}); write the output elsewhere",
            out.display(),
            model_dir.display()
        );
    }
    Ok(target)
}

#[derive(Serialize)]
struct InspectJson<'a> {
    /// The checkpoint folder (for the default model: where its embedded files were written).
    model: String,
    /// True for the default model compiled into the binary.
    embedded: bool,
    layer_pattern: &'a str,
    layers: usize,
    total_params: u64,
    active_params: f64,
    weight_bytes: u64,
    bytes_per_token: f64,
    quantization: Option<&'a str>,
    kv_cache_fp8: bool,
    groups: Vec<GroupJson<'a>>,
}

#[derive(Serialize)]
struct GroupJson<'a> {
    name: &'a str,
    formats: &'a [String],
    tensors: usize,
    params: u64,
    bytes: u64,
    bytes_per_token: f64,
}

fn run_inspect(a: InspectArgs) -> anyhow::Result<()> {
    let dir = model_dir(&a.model)?;
    let be = backend::create(BackendKind::Cpu, 1)?;
    let model = Model::load(&dir, be, LoadOptions { progress: true })
        .with_context(|| format!("loading {}", dir.display()))?;
    let info = &model.info;
    if a.json {
        let j = InspectJson {
            model: dir.display().to_string(),
            embedded: a.model.is_none(),
            layer_pattern: &info.pattern,
            layers: model.config.layers.len(),
            total_params: info.total_params(),
            active_params: info.active_params(),
            weight_bytes: info.weight_bytes(),
            bytes_per_token: info.bytes_per_token(),
            quantization: info.quant_source.as_deref(),
            kv_cache_fp8: info.kv_cache_fp8,
            groups: info
                .groups
                .iter()
                .map(|g| GroupJson {
                    name: &g.name,
                    formats: &g.formats,
                    tensors: g.tensors,
                    params: g.params,
                    bytes: g.bytes,
                    bytes_per_token: g.bytes_per_token(),
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    let c = &model.config;
    if a.model.is_none() {
        println!(
            "model          {} (the embedded default model, written to {})",
            nemotron_rt::default_model::NAME,
            dir.display()
        );
    } else {
        println!("model          {}", dir.display());
    }
    println!(
        "layers         {} ({})   M = Mamba-2, * = attention, E = MoE, - = MLP",
        c.layers.len(),
        info.pattern
    );
    println!(
        "hidden         {}   vocab {}   attention {}q/{}kv x {}   mamba {}x{} heads, {} groups, state {}",
        c.hidden_size,
        c.vocab_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.mamba_num_heads,
        c.mamba_head_dim,
        c.n_groups,
        c.ssm_state_size
    );
    if c.count(nemotron_rt::config::LayerKind::Moe) > 0 {
        println!(
            "moe            {} experts, top-{} ({} groups, top {}), latent {}, expert width {}, shared {}",
            c.n_routed_experts,
            c.num_experts_per_tok,
            c.n_group,
            c.topk_group,
            c.moe_latent_size
                .map_or("none".to_string(), |l| l.to_string()),
            c.moe_intermediate_size,
            c.moe_shared_expert_intermediate_size
        );
    }
    println!(
        "parameters     {} total, {} active per token",
        human(info.total_params() as f64),
        human(info.active_params())
    );
    println!(
        "weights        {} stored, {} read per decoded token",
        bytes(info.weight_bytes() as f64),
        bytes(info.bytes_per_token())
    );
    println!(
        "quantization   {}{}",
        info.quant_source.as_deref().unwrap_or("none"),
        if info.kv_cache_fp8 {
            " (FP8 KV-cache scales present; the cache is kept in f32)"
        } else {
            ""
        }
    );
    println!();
    println!(
        "{:<34} {:<14} {:>8} {:>14} {:>12} {:>14}",
        "tensor group", "format", "tensors", "params", "bytes", "bytes/token"
    );
    for g in &info.groups {
        println!(
            "{:<34} {:<14} {:>8} {:>14} {:>12} {:>14}",
            g.name,
            g.formats.join("+"),
            g.tensors,
            g.params,
            bytes(g.bytes as f64),
            bytes(g.bytes_per_token())
        );
    }
    Ok(())
}

fn human(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2}B", n / 1e9),
        n if n >= 1e6 => format!("{:.2}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}K", n / 1e3),
        n => format!("{n:.0}"),
    }
}

fn bytes(n: f64) -> String {
    match n {
        n if n >= (1u64 << 30) as f64 => format!("{:.2} GiB", n / (1u64 << 30) as f64),
        n if n >= (1u64 << 20) as f64 => format!("{:.2} MiB", n / (1u64 << 20) as f64),
        n if n >= 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{n:.0} B"),
    }
}

fn run_devices() -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "cpu    {}, {} ({threads} threads)",
        std::env::consts::ARCH,
        nemotron_rt::backend::cpu::CpuBackend::simd_level()
    );
    let adapters = nemotron_rt::backend::wgpu::adapters();
    if adapters.is_empty() {
        println!("wgpu   no adapter (no Vulkan/Metal/DX12/GL driver found)");
    }
    for a in adapters {
        println!(
            "wgpu   {} [{} {}] driver {}; max buffer {}, max storage binding {}; shader-f16 {}, subgroups {}",
            a.name,
            a.backend,
            a.device_type,
            a.driver,
            bytes(a.max_buffer_size as f64),
            bytes(a.max_storage_binding as f64),
            a.shader_f16,
            a.subgroups
        );
    }
    match nemotron_rt::backend::cuda::devices() {
        Err(why) => println!("cuda   {why}"),
        Ok(devs) if devs.is_empty() => println!("cuda   no device (the driver reports none)"),
        Ok(devs) => {
            for d in devs {
                let (ma, mi) = d.compute_capability;
                println!(
                    "cuda   {} {} [sm_{ma}{mi}] memory {} ({} free); 4-bit path: {}",
                    d.ordinal,
                    d.name,
                    bytes(d.total_bytes as f64),
                    bytes(d.free_bytes as f64),
                    d.fp4_path
                );
            }
        }
    }
    Ok(())
}

fn run_bench(a: BenchArgs) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let dir = model_dir(&a.model.model)?;
    let model = std::sync::Arc::new(load(&a.model, &dir)?);
    let load_s = start.elapsed().as_secs_f64();
    let threads = model.backend.info().threads;
    let opts = nemotron_rt::bench::BenchOptions {
        prompt_len: a.prompt_len,
        gen_tokens: a.gen_tokens,
        repeat: a.repeat,
        // The roofline is the CPU's memory bandwidth on the CPU backend's own threads.
        bandwidth_threads: if a.model.backend == BackendKind::Cpu {
            threads
        } else {
            0
        },
        sequences: a.parallel.clone().unwrap_or_else(|| vec![1]),
        speculative: a.speculative,
    };
    let mut reports = nemotron_rt::bench::run(&model, &opts)?;
    if a.model.backend == BackendKind::Cuda {
        // The roofline on a GPU is its own memory bandwidth, probed the way decode reads.
        let gb_s = nemotron_rt::backend::cuda::measure_bandwidth(a.model.device)?;
        for r in &mut reports {
            r.machine_gb_s = Some(gb_s);
            r.roofline_fraction = Some(r.achieved_gb_s / gb_s);
        }
    }
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            model: String,
            load_s: f64,
            #[serde(flatten)]
            report: &'a nemotron_rt::bench::BenchReport,
        }
        let out: Vec<Out> = reports
            .iter()
            .map(|report| Out {
                model: dir.display().to_string(),
                load_s,
                report,
            })
            .collect();
        match out.as_slice() {
            [one] => println!("{}", serde_json::to_string_pretty(one)?),
            all => println!("{}", serde_json::to_string_pretty(all)?),
        }
        return Ok(());
    }
    if a.parallel.is_some() {
        let info = model.backend.info();
        println!(
            "{} ({}), {threads} threads, prompts of {} tokens, {} decode steps, {} repeats",
            info.name, info.device, a.prompt_len, a.gen_tokens, a.repeat
        );
        println!(
            "| sequences | tok/s (median) | min | max | per sequence | vs 1 sequence | weights per step | roofline |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for r in &reports {
            let Some(p) = &r.parallel else { continue };
            println!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
                p.sequences,
                r.decode_tok_s.median,
                r.decode_tok_s.min,
                r.decode_tok_s.max,
                p.per_sequence_decode_tok_s.median,
                p.speedup
                    .map_or("-".to_string(), |s| format!("{:.2}x", s.median)),
                bytes(r.bytes_per_token * p.sequences as f64),
                r.roofline_fraction
                    .map_or("-".to_string(), |f| format!("{:.0}%", f * 100.0)),
            );
        }
        return Ok(());
    }
    let r = &reports[0];
    println!(
        "| {:<28} | {:<8} | {:>7} | {:>7} | {:>10} | {:>10} | {:>10} |",
        "model", "backend", "threads", "test", "t/s", "min", "max"
    );
    println!(
        "|{:-<30}|{:-<10}|{:->9}|{:->9}|{:->12}|{:->12}|{:->12}|",
        "", "", "", "", "", "", ""
    );
    // Checkpoints often live in `<model>/hf`: name them by the folder that says what they are.
    let name = dir
        .file_name()
        .filter(|n| *n != "hf" && *n != "hf_bf16")
        .or_else(|| dir.parent().and_then(|p| p.file_name()))
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    for (test, s) in [
        (format!("pp{}", r.prompt_len), r.prefill_tok_s),
        (format!("tg{}", r.gen_tokens), r.decode_tok_s),
    ] {
        println!(
            "| {:<28} | {:<8} | {:>7} | {:>7} | {:>10.2} | {:>10.2} | {:>10.2} |",
            name, r.backend, r.threads, test, s.median, s.min, s.max
        );
    }
    println!();
    if r.backend == "cpu" {
        println!(
            "device              {}, {} kernels",
            r.device,
            nemotron_rt::backend::cpu::CpuBackend::simd_level()
        );
    } else {
        println!("device              {}", r.device);
    }
    if let Some(steps) = model.backend.decode_step_summary() {
        println!("decode steps        {steps}");
    }
    println!("load                {load_s:.2} s");
    println!(
        "time to first token {:.1} ms (median of {})",
        r.ttft_ms.median, r.repeat
    );
    println!(
        "weights per token   {} (stored formats, experts actually chosen)",
        bytes(r.bytes_per_token)
    );
    if let Some(acc) = &r.draft_acceptance {
        let per: Vec<String> = acc.iter().map(|a| format!("{:.0}%", a * 100.0)).collect();
        println!(
            "drafts              {} per step; accepted at each position: {}",
            acc.len(),
            per.join(", ")
        );
    }
    println!("decode bandwidth    {:.2} GB/s", r.achieved_gb_s);
    if let (Some(m), Some(f)) = (r.machine_gb_s, r.roofline_fraction) {
        match (r.machine_gb_s_range, r.roofline_fraction_range) {
            (Some(mr), Some(fr)) if r.repeat > 1 => println!(
                "machine bandwidth   {m:.2} GB/s (streaming read, {} threads, median of one probe \
                 after each repeat: {:.2}-{:.2}) -> {:.0}% of the roofline ({:.0}-{:.0}% per repeat)",
                r.threads,
                mr.min,
                mr.max,
                f * 100.0,
                fr.min * 100.0,
                fr.max * 100.0
            ),
            _ => println!(
                "machine bandwidth   {m:.2} GB/s ({}) -> {:.0}% of the roofline",
                if a.model.backend == BackendKind::Cuda {
                    "the GPU's 16-byte read probe".to_string()
                } else {
                    format!("streaming read, {} threads", r.threads)
                },
                f * 100.0
            ),
        }
    }
    if let Some(rss) = r.peak_rss_bytes {
        println!("peak resident       {}", bytes(rss as f64));
    }
    Ok(())
}

fn run_synth(a: SynthArgs) -> anyhow::Result<()> {
    let opts = nemotron_rt::synth::SynthOptions {
        shape: a.shape,
        pattern: a.pattern,
        vocab: a.vocab,
        recipe: a.recipe,
        seed: a.seed,
        out: a.out.clone(),
        max_shard_bytes: a.max_shard_bytes,
        progress: true,
    };
    let start = std::time::Instant::now();
    let s = nemotron_rt::synth::synth(&opts)?;
    eprintln!(
        "wrote {} ({} tensors, {} parameters) in {} shard(s) to {} in {:.1} s",
        bytes(s.total_bytes as f64),
        s.tensors,
        human(s.params as f64),
        s.shards,
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
