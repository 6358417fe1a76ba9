//! Everything the app shows, and the messages that change it. The views only read this and
//! call its methods; the work runs on threads (see `worker.rs`) that report through a channel,
//! so the state can be driven and checked in tests without a window.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use nemotron_rt::backend::BackendInfo;
use nemotron_rt::config::ModelConfig;
use nemotron_rt::devices::Device;
use nemotron_rt::generate::{Event, FinishReason, GenerateParams, TokenRoute};
use nemotron_rt::model::ModelInfo;
use nemotron_rt::model::loader::LoadProgress;
use nemotron_rt::runtime::Runtime;
use nemotron_rt::sampling::SamplingParams;

use crate::heatmap::Heatmap;
use crate::recent::Recent;
use crate::views::folder_picker::FolderPicker;
use crate::views::heatmap::HeatmapUi;
use crate::worker::{self, Msg};

/// What a loaded model looks like, copied out of the model for the views.
#[derive(Clone, Debug)]
pub struct ModelSummary {
    pub dir: PathBuf,
    pub info: ModelInfo,
    pub config: ModelConfig,
    pub moe_layers: Vec<usize>,
    pub backend: BackendInfo,
    pub device_label: String,
    pub load_ms: f64,
    pub has_tokenizer: bool,
}

#[derive(Clone)]
pub struct Loaded {
    /// The model, its tokenizer and the engine every generation runs on.
    pub runtime: Arc<Runtime>,
    pub summary: ModelSummary,
}

#[derive(Debug)]
pub enum Busy {
    Loading {
        dir: PathBuf,
        device: String,
        since: Instant,
        progress: Arc<LoadProgress>,
    },
    Generating {
        cancel: Arc<AtomicBool>,
    },
    Comparing {
        cancel: Arc<AtomicBool>,
        /// Index into `devices` of the run in progress.
        current: Option<usize>,
        total: usize,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenEntry {
    pub index: usize,
    pub id: u32,
    pub text: String,
    pub ms: f64,
    pub routing: Vec<TokenRoute>,
}

/// One generation as it streams in.
#[derive(Clone, Debug)]
pub struct RunData {
    /// The job that produced it (distinguishes runs for cached textures).
    pub id: u64,
    pub device_label: String,
    pub prompt_tokens: usize,
    pub prefill_ms: Option<f64>,
    pub tokens: Vec<TokenEntry>,
    /// Text released only when the generation finished.
    pub tail_text: String,
    pub finish: Option<FinishReason>,
    pub error: Option<String>,
    pub heatmap: Heatmap,
    /// Bumped on every change, so views can cache what they derive (the heatmap texture).
    pub version: u64,
}

impl RunData {
    pub fn new(id: u64, device_label: String, heatmap: Heatmap) -> RunData {
        RunData {
            id,
            device_label,
            prompt_tokens: 0,
            prefill_ms: None,
            tokens: Vec::new(),
            tail_text: String::new(),
            finish: None,
            error: None,
            heatmap,
            version: 0,
        }
    }

    /// Time to first token: the prefill, which also produces token 0.
    pub fn ttft_ms(&self) -> Option<f64> {
        self.prefill_ms
    }

    pub fn prefill_tok_s(&self) -> Option<f64> {
        self.prefill_ms
            .filter(|&ms| ms > 0.0)
            .map(|ms| self.prompt_tokens as f64 * 1000.0 / ms)
    }

    /// `[token index, tok/s]` of every decode step (token 0 comes from the prefill).
    pub fn decode_series(&self) -> Vec<[f64; 2]> {
        self.tokens
            .iter()
            .skip(1)
            .filter(|t| t.ms > 0.0)
            .map(|t| [t.index as f64, 1000.0 / t.ms])
            .collect()
    }

    pub fn current_decode_tok_s(&self) -> Option<f64> {
        self.decode_series().last().map(|p| p[1])
    }

    /// Decode steps over decode time, as `generate --json` reports `decode_tok_s`.
    pub fn average_decode_tok_s(&self) -> Option<f64> {
        let ms: Vec<f64> = self.tokens.iter().skip(1).map(|t| t.ms).collect();
        let total: f64 = ms.iter().sum();
        (total > 0.0).then(|| ms.len() as f64 * 1000.0 / total)
    }

    pub fn text(&self) -> String {
        let mut s: String = self.tokens.iter().map(|t| t.text.as_str()).collect();
        s.push_str(&self.tail_text);
        s
    }

    pub fn routes(&self) -> impl Iterator<Item = &[TokenRoute]> {
        self.tokens.iter().map(|t| t.routing.as_slice())
    }
}

/// The generation settings of the prompt panel.
#[derive(Clone, Debug, PartialEq)]
pub struct GenSettings {
    pub prompt: String,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: u64,
}

impl Default for GenSettings {
    fn default() -> Self {
        GenSettings {
            prompt: "def main():".into(),
            max_tokens: 32,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

impl GenSettings {
    /// The library's parameters, with routing always on (the heatmap needs it).
    pub fn params(&self) -> GenerateParams {
        GenerateParams {
            max_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: 0.0,
                seed: self.seed,
            },
            routing: true,
            ..Default::default()
        }
    }
}

/// What one backend produced in a comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareStats {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub ttft_ms: f64,
    pub tokens: Vec<u32>,
    pub text: String,
    pub routing: Vec<Vec<TokenRoute>>,
    pub finish_reason: FinishReason,
}

#[derive(Clone, Debug)]
pub struct CompareRun {
    pub device_label: String,
    pub result: Result<CompareStats, String>,
}

/// How a run agrees with the reference (the first successful run).
#[derive(Clone, Debug, PartialEq)]
pub struct Agreement {
    pub tokens_agree: bool,
    /// First token index where the two differ (in value or in length).
    pub first_divergence: Option<usize>,
    /// Tokens whose routing is comparable: those whose inputs agree.
    pub compared_tokens: usize,
    /// Per MoE layer: `(layer, fraction of compared tokens with the same expert set)`.
    pub per_layer: Vec<(usize, f64)>,
}

/// Token `i`'s routing comes from the forward pass fed tokens `..i`, so it is comparable
/// up to and including the first token that differs.
pub fn agreement(reference: &CompareStats, other: &CompareStats) -> Agreement {
    let common = reference.tokens.len().min(other.tokens.len());
    let first_divergence = (0..common)
        .find(|&i| reference.tokens[i] != other.tokens[i])
        .or((reference.tokens.len() != other.tokens.len()).then_some(common));
    let compared = first_divergence
        .map_or(common, |d| d + 1)
        .min(reference.routing.len())
        .min(other.routing.len());
    let layers: Vec<usize> = reference
        .routing
        .first()
        .map(|t| t.iter().map(|r| r.layer).collect())
        .unwrap_or_default();
    let per_layer = layers
        .iter()
        .enumerate()
        .map(|(j, &layer)| {
            let same = (0..compared)
                .filter(|&t| {
                    let a = reference.routing[t].get(j).map(|r| &r.ids);
                    let b = other.routing[t].get(j).map(|r| &r.ids);
                    a.is_some() && a == b
                })
                .count();
            let frac = if compared > 0 {
                same as f64 / compared as f64
            } else {
                0.0
            };
            (layer, frac)
        })
        .collect();
    Agreement {
        tokens_agree: first_divergence.is_none(),
        first_divergence,
        compared_tokens: compared,
        per_layer,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

#[derive(Clone, Debug)]
pub struct Notice {
    pub level: Level,
    pub text: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tab {
    #[default]
    Generate,
    Routing,
    Compare,
}

pub struct AppState {
    pub model_path: String,
    pub recent: Recent,
    pub picker: FolderPicker,
    pub devices: Vec<Device>,
    pub devices_pending: bool,
    /// Index into `devices`.
    pub device: usize,
    /// CPU worker threads; 0 = one per core.
    pub threads: usize,
    pub loaded: Option<Loaded>,
    pub busy: Option<Busy>,
    pub settings: GenSettings,
    pub run: Option<RunData>,
    /// Token selected in the output (its experts are outlined in the heatmap).
    pub selected_token: Option<usize>,
    pub heat: HeatmapUi,
    pub compare_pick: Vec<bool>,
    pub compare: Vec<CompareRun>,
    pub notices: Vec<Notice>,
    pub export_dir: String,
    pub tab: Tab,
    /// A folder to open as soon as the device list arrives (the command-line argument).
    pending_open: Option<PathBuf>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    job: u64,
}

impl AppState {
    /// A state with no model and no device list yet; `recent_file` = `None` keeps the recent
    /// list in memory.
    pub fn new(recent_file: Option<PathBuf>) -> AppState {
        let (tx, rx) = mpsc::channel();
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        AppState {
            model_path: String::new(),
            recent: Recent::load(recent_file),
            picker: FolderPicker::new(cwd.clone()),
            devices: Vec::new(),
            devices_pending: false,
            device: 0,
            threads: 0,
            loaded: None,
            busy: None,
            settings: GenSettings::default(),
            run: None,
            selected_token: None,
            heat: HeatmapUi::default(),
            compare_pick: Vec::new(),
            compare: Vec::new(),
            notices: Vec::new(),
            export_dir: ".".into(),
            tab: Tab::default(),
            pending_open: None,
            tx,
            rx,
            job: 0,
        }
    }

    pub fn error(&mut self, text: impl Into<String>) {
        self.notices.push(Notice {
            level: Level::Error,
            text: text.into(),
        });
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.notices.push(Notice {
            level: Level::Info,
            text: text.into(),
        });
    }

    pub fn is_busy(&self) -> bool {
        self.busy.is_some() || self.devices_pending
    }

    pub fn device(&self) -> Option<&Device> {
        self.devices.get(self.device)
    }

    /// Lists devices on a worker thread (enumerating adapters can take a moment).
    pub fn refresh_devices(&mut self) {
        self.devices_pending = true;
        worker::spawn(
            "devices",
            self.tx.clone(),
            |tx| {
                let _ = tx.send(Msg::Devices(nemotron_rt::devices::list()));
            },
            |_| Msg::Devices(Vec::new()),
        );
    }

    /// Sets the device list directly (tests use a fixed list for stable snapshots).
    pub fn set_devices(&mut self, devices: Vec<Device>) {
        self.devices_pending = false;
        let keep = self.device().map(|d| d.label.clone());
        self.compare_pick = devices.iter().map(|d| d.usable()).collect();
        self.device = keep
            .and_then(|l| devices.iter().position(|d| d.label == l))
            .or_else(|| devices.iter().position(Device::usable))
            .unwrap_or(0);
        self.devices = devices;
    }

    fn next_job(&mut self) -> u64 {
        self.job += 1;
        self.job
    }

    /// Opens a checkpoint folder on the selected device (once the device list is there).
    pub fn open_model(&mut self, dir: &Path) {
        if let Some(Busy::Generating { .. } | Busy::Comparing { .. }) = &self.busy {
            self.error("stop the running generation before opening another model");
            return;
        }
        self.model_path = dir.display().to_string();
        if self.devices.is_empty() && self.devices_pending {
            self.pending_open = Some(dir.to_path_buf());
            return;
        }
        let Some(device) = self.device().cloned() else {
            self.error("no device to load the model on (the device list is still empty)");
            return;
        };
        if !dir.is_dir() {
            self.error(format!("{} is not a folder", dir.display()));
            return;
        }
        let job = self.next_job();
        let progress = Arc::new(LoadProgress::new());
        self.busy = Some(Busy::Loading {
            dir: dir.to_path_buf(),
            device: device.label.clone(),
            since: Instant::now(),
            progress: progress.clone(),
        });
        let (dir, threads) = (dir.to_path_buf(), self.threads);
        worker::spawn(
            "load",
            self.tx.clone(),
            move |tx| {
                let result = worker::load(&dir, &device, threads, &progress).map(Box::new);
                let _ = tx.send(Msg::Loaded { job, result });
            },
            move |error| Msg::Loaded {
                job,
                result: Err(error),
            },
        );
    }

    /// Picks a device; a loaded model is reloaded on it, without restarting anything.
    pub fn select_device(&mut self, i: usize) {
        if i == self.device || i >= self.devices.len() {
            return;
        }
        self.device = i;
        let dir = self.loaded.as_ref().map(|l| l.summary.dir.clone());
        if let Some(dir) = dir {
            self.open_model(&dir);
        }
    }

    /// Starts generating from the prompt with the current settings.
    pub fn generate(&mut self) {
        if !self.idle() {
            return;
        }
        let Some(loaded) = self.loaded.clone() else {
            self.error("open a model first");
            return;
        };
        let Some(params) = self.valid_params() else {
            return;
        };
        let job = self.next_job();
        let cancel = Arc::new(AtomicBool::new(false));
        self.busy = Some(Busy::Generating {
            cancel: cancel.clone(),
        });
        let s = &loaded.summary;
        self.run = Some(RunData::new(
            job,
            s.device_label.clone(),
            Heatmap::new(s.moe_layers.clone(), s.config.n_routed_experts),
        ));
        self.selected_token = None;
        let prompt = self.settings.prompt.clone();
        worker::spawn(
            "generate",
            self.tx.clone(),
            move |tx| worker::generate_job(job, &loaded, &prompt, &params, &cancel, tx),
            move |error| Msg::GenFailed { job, error },
        );
    }

    /// Whether no job is running; says so in the app when one is.
    fn idle(&mut self) -> bool {
        if self.busy.is_some() {
            self.error("wait for the running job to finish (or stop it) first");
            return false;
        }
        true
    }

    /// The generation settings, or `None` after showing why they are invalid.
    fn valid_params(&mut self) -> Option<GenerateParams> {
        let params = self.settings.params();
        if let Err(e) = params.sampling.validate() {
            self.error(e.to_string());
            return None;
        }
        Some(params)
    }

    /// Asks the running generation or comparison to stop after the current token.
    pub fn stop(&mut self) {
        if let Some(Busy::Generating { cancel } | Busy::Comparing { cancel, .. }) = &self.busy {
            cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Runs the prompt on every picked device in turn.
    pub fn run_compare(&mut self) {
        if !self.idle() {
            return;
        }
        let Some(dir) = self.loaded.as_ref().map(|l| l.summary.dir.clone()) else {
            self.error("open a model first");
            return;
        };
        let picked: Vec<(usize, Device)> = self
            .devices
            .iter()
            .enumerate()
            .filter(|(i, d)| d.usable() && self.compare_pick.get(*i).copied().unwrap_or(false))
            .map(|(i, d)| (i, d.clone()))
            .collect();
        if picked.is_empty() {
            self.error("pick at least one backend to compare");
            return;
        }
        let Some(params) = self.valid_params() else {
            return;
        };
        let job = self.next_job();
        let cancel = Arc::new(AtomicBool::new(false));
        self.busy = Some(Busy::Comparing {
            cancel: cancel.clone(),
            current: None,
            total: picked.len(),
        });
        self.compare.clear();
        let c = worker::CompareJob {
            dir,
            devices: picked,
            threads: self.threads,
            prompt: self.settings.prompt.clone(),
            params,
        };
        worker::spawn(
            "compare",
            self.tx.clone(),
            move |tx| worker::compare_job(job, c, &cancel, tx),
            move |_| Msg::Done { job },
        );
    }

    /// The agreement of each compare run with the first successful one.
    pub fn compare_agreement(&self) -> Vec<Option<Agreement>> {
        let reference = self.compare.iter().find_map(|r| r.result.as_ref().ok());
        self.compare
            .iter()
            .map(|r| match (reference, &r.result) {
                (Some(a), Ok(b)) => Some(agreement(a, b)),
                _ => None,
            })
            .collect()
    }

    /// Applies every message that has arrived; returns whether anything changed.
    pub fn pump(&mut self) -> bool {
        let mut changed = false;
        while let Ok(msg) = self.rx.try_recv() {
            self.apply(msg);
            changed = true;
        }
        changed
    }

    /// Blocks until no job is running (tests, and the screenshot path); false on timeout.
    pub fn wait_idle(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.pump();
        while self.is_busy() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(msg) => self.apply(msg),
                Err(RecvTimeoutError::Timeout) => return false,
                // Cannot happen while `self.tx` lives, but do not spin if it does.
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        true
    }

    fn current(&self, job: u64) -> bool {
        job == self.job
    }

    fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Devices(d) => {
                if d.is_empty() {
                    self.error("listing devices failed");
                }
                self.set_devices(d);
                if let Some(dir) = self.pending_open.take() {
                    self.open_model(&dir);
                }
            }
            Msg::Loaded { job, result } if self.current(job) => {
                self.busy = None;
                match result {
                    Ok(l) => {
                        // Absolute, so the entry still works when started from elsewhere.
                        let dir = std::fs::canonicalize(&l.summary.dir)
                            .unwrap_or_else(|_| l.summary.dir.clone());
                        if let Some(e) = self.recent.push(&dir) {
                            self.info(e);
                        }
                        self.model_path = l.summary.dir.display().to_string();
                        self.loaded = Some(*l);
                        self.run = None;
                        self.compare.clear();
                    }
                    Err(e) => self.error(e),
                }
            }
            Msg::GenStarted { job, prompt_tokens } if self.current(job) => {
                if let Some(r) = &mut self.run {
                    r.prompt_tokens = prompt_tokens;
                }
            }
            Msg::Gen { job, event } if self.current(job) => self.on_event(event),
            Msg::GenFailed { job, error } if self.current(job) => {
                if let Some(r) = &mut self.run {
                    r.error = Some(error.clone());
                }
                self.error(format!("generation failed: {error}"));
                self.busy = None;
            }
            Msg::CompareStep { job, device } if self.current(job) => {
                if let Some(Busy::Comparing { current, .. }) = &mut self.busy {
                    *current = Some(device);
                }
            }
            Msg::CompareResult {
                job,
                device,
                result,
            } if self.current(job) => {
                let label = self
                    .devices
                    .get(device)
                    .map_or_else(|| format!("device {device}"), |d| d.label.clone());
                self.compare.push(CompareRun {
                    device_label: label,
                    result,
                });
            }
            Msg::Done { job } if self.current(job) => {
                if matches!(
                    self.busy,
                    Some(Busy::Generating { .. } | Busy::Comparing { .. })
                ) {
                    self.busy = None;
                }
            }
            // A message from a job that was superseded (a model reopened while loading).
            _ => {}
        }
    }

    fn on_event(&mut self, event: Event) {
        let Some(run) = &mut self.run else { return };
        run.version += 1;
        match event {
            Event::Prefilled { tokens, ms } => {
                run.prompt_tokens = tokens;
                run.prefill_ms = Some(ms);
            }
            Event::Token {
                index,
                id,
                text,
                ms,
                routing,
            } => {
                let routing = routing.unwrap_or_default();
                if let Err(e) = run.heatmap.add_token(&routing) {
                    run.error = Some(e);
                }
                run.tokens.push(TokenEntry {
                    index,
                    id,
                    text,
                    ms,
                    routing,
                });
            }
            Event::Finished { reason, text } => {
                run.finish = Some(reason);
                run.tail_text = text;
            }
        }
    }

    /// Measured weight bytes read per decoded token over the last run (chosen experts).
    pub fn measured_bytes_per_token(&self) -> Option<f64> {
        let (loaded, run) = (self.loaded.as_ref()?, self.run.as_ref()?);
        if run.tokens.is_empty() {
            return None;
        }
        let total: f64 = run
            .routes()
            .map(|r| nemotron_rt::bench::bytes_for_token(&loaded.runtime.model, r))
            .sum();
        Some(total / run.tokens.len() as f64)
    }
}
