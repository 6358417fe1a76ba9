//! The jobs that run off the UI thread: listing devices, loading a model, generating, comparing
//! backends. Each reports through a channel; a panic inside a job becomes an error message.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use nemotron_rt::backend;
use nemotron_rt::devices::Device;
use nemotron_rt::engine::Update;
use nemotron_rt::generate::{Event, GenerateParams, Generation};
use nemotron_rt::model::LoadOptions;
use nemotron_rt::model::loader::LoadProgress;
use nemotron_rt::runtime::Runtime;

use crate::state::{CompareStats, Loaded, ModelSummary};

pub(crate) enum Msg {
    Devices(Vec<Device>),
    Loaded {
        job: u64,
        result: Result<Box<Loaded>, String>,
    },
    Gen {
        job: u64,
        event: Event,
    },
    /// The prompt's token count, before the prefill starts.
    GenStarted {
        job: u64,
        prompt_tokens: usize,
    },
    GenFailed {
        job: u64,
        error: String,
    },
    CompareStep {
        job: u64,
        device: usize,
    },
    CompareResult {
        job: u64,
        device: usize,
        result: Result<CompareStats, String>,
    },
    Done {
        job: u64,
    },
}

/// Runs `f` on a new thread, turning a panic into `on_panic(message)`.
pub(crate) fn spawn(
    name: &str,
    tx: Sender<Msg>,
    f: impl FnOnce(&Sender<Msg>) + Send + 'static,
    on_panic: impl FnOnce(String) -> Msg + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| f(&tx))) {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                let _ = tx.send(on_panic(format!("internal error: {msg}")));
            }
        });
    if let Err(e) = spawned {
        // Without a thread there is nobody to report to but the caller's channel owner; the
        // state notices the job never finishes only through this message.
        eprintln!("nemotron-studio: cannot start a worker thread: {e}");
    }
}

/// Loads `dir` on `device`: the backend, the weights and (when present) the tokenizer.
pub(crate) fn load(
    dir: &Path,
    device: &Device,
    threads: usize,
    progress: &LoadProgress,
) -> Result<Loaded, String> {
    let kind = match (device.kind, &device.unavailable) {
        (Some(k), None) => k,
        (_, why) => {
            return Err(format!(
                "{} cannot be used: {}",
                device.label,
                why.as_deref().unwrap_or("not built in")
            ));
        }
    };
    let mut opts = device.options.clone();
    opts.threads = threads;
    let start = Instant::now();
    let be = backend::create_with(kind, &opts).map_err(|e| e.to_string())?;
    let backend_info = be.info();
    let runtime = Runtime::load(dir, be, LoadOptions::default(), Some(progress))
        .map_err(|e| format!("loading {}: {e}", dir.display()))?;
    let model = &runtime.model;
    let summary = ModelSummary {
        dir: dir.to_path_buf(),
        info: model.info.clone(),
        config: model.config.clone(),
        moe_layers: model.moe_layers(),
        backend: backend_info,
        device_label: device.label.clone(),
        load_ms: start.elapsed().as_secs_f64() * 1000.0,
        has_tokenizer: runtime.tokenizer.is_some(),
    };
    Ok(Loaded {
        runtime: Arc::new(runtime),
        summary,
    })
}

/// Runs `prompt` on the loaded model's engine, sending every event on; a raised `cancel`
/// cancels the request (checked while waiting, so also during a long prefill).
fn run_on_engine(
    runtime: &Runtime,
    prompt: &str,
    params: &GenerateParams,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
    on_ids: &mut dyn FnMut(usize),
) -> Result<Generation, String> {
    let ids = runtime.encode(prompt).map_err(|e| e.to_string())?;
    on_ids(ids.len());
    let ticket = runtime.engine.submit(ids, params.clone());
    let mut cancelled = false;
    loop {
        if !cancelled && cancel.load(Ordering::Relaxed) {
            runtime.engine.cancel(ticket.id);
            cancelled = true;
        }
        match ticket.updates.recv_timeout(CANCEL_POLL) {
            Ok(Update::Event(ev)) => on_event(&ev),
            Ok(Update::Done(result)) => return result.map_err(|e| e.to_string()),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the engine stopped before the generation finished".into());
            }
        }
    }
}

/// How often a waiting job looks at its cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(20);

pub(crate) fn generate_job(
    job: u64,
    loaded: &Loaded,
    prompt: &str,
    params: &GenerateParams,
    cancel: &AtomicBool,
    tx: &Sender<Msg>,
) {
    let result = run_on_engine(
        &loaded.runtime,
        prompt,
        params,
        cancel,
        &mut |ev| {
            let _ = tx.send(Msg::Gen {
                job,
                event: ev.clone(),
            });
        },
        &mut |prompt_tokens| {
            let _ = tx.send(Msg::GenStarted { job, prompt_tokens });
        },
    );
    if let Err(error) = result {
        let _ = tx.send(Msg::GenFailed { job, error });
    }
    let _ = tx.send(Msg::Done { job });
}

/// What a comparison runs: the same prompt and settings on each device.
pub(crate) struct CompareJob {
    pub dir: PathBuf,
    /// `(index in the app's device list, device)`.
    pub devices: Vec<(usize, Device)>,
    pub threads: usize,
    pub prompt: String,
    pub params: GenerateParams,
}

/// Loads the model on each device in turn and runs the same generation there.
pub(crate) fn compare_job(job: u64, c: CompareJob, cancel: &AtomicBool, tx: &Sender<Msg>) {
    for (i, device) in c.devices {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let _ = tx.send(Msg::CompareStep { job, device: i });
        let result = load(&c.dir, &device, c.threads, &LoadProgress::new()).and_then(|loaded| {
            let g = run_on_engine(
                &loaded.runtime,
                &c.prompt,
                &c.params,
                cancel,
                &mut |_| {},
                &mut |_| {},
            )?;
            Ok(stats_of(&g))
        });
        let _ = tx.send(Msg::CompareResult {
            job,
            device: i,
            result,
        });
    }
    let _ = tx.send(Msg::Done { job });
}

fn stats_of(g: &Generation) -> CompareStats {
    CompareStats {
        prefill_tok_s: g.prefill_tok_s(),
        decode_tok_s: g.decode_tok_s(),
        ttft_ms: g.prefill_ms,
        tokens: g.tokens.clone(),
        text: g.text.clone(),
        routing: g.routing.clone(),
        finish_reason: g.finish_reason,
    }
}
