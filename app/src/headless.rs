//! `nemotron-studio heatmap`: the heatmap panel's PNG export without a window, for routing traces
//! written by `nemotron-rt generate --trace-routing` or `nemotron-rt forward --trace-routing`.
//! The picture is the one the app draws and exports (same cells, same colour map), so a report
//! can be rebuilt from the command line.

use std::path::PathBuf;

use nemotron_rt::config::{LayerKind, ModelConfig};

use crate::export;
use crate::heatmap::{HeatMode, Heatmap};

pub const USAGE: &str = "usage: nemotron-studio heatmap [--model DIR] [--weight] [--log] \
                         --out PNG [--csv CSV] TRACE.jsonl...";

#[derive(Debug, Default, PartialEq)]
pub struct HeatmapArgs {
    /// The checkpoint the traces came from (its layer pattern and expert count); `None` = the
    /// default model.
    pub model: Option<PathBuf>,
    pub mode: HeatMode,
    pub log: bool,
    pub out: PathBuf,
    pub csv: Option<PathBuf>,
    pub traces: Vec<PathBuf>,
}

/// Parses the arguments after `heatmap`.
pub fn parse(args: &[String]) -> Result<HeatmapArgs, String> {
    let mut a = HeatmapArgs::default();
    let mut out = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--model" => a.model = Some(value("--model")?.into()),
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--csv" => a.csv = Some(value("--csv")?.into()),
            "--weight" => a.mode = HeatMode::Weight,
            "--log" => a.log = true,
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}")),
            s => a.traces.push(s.into()),
        }
    }
    a.out = out.ok_or_else(|| format!("--out PNG is required\n{USAGE}"))?;
    if a.traces.is_empty() {
        return Err(format!("give at least one routing trace\n{USAGE}"));
    }
    Ok(a)
}

/// Adds up the routing of every token of every trace, on the MoE layers of `config`.
pub fn heatmap_of_traces(config: &ModelConfig, traces: &[PathBuf]) -> Result<Heatmap, String> {
    let layers: Vec<usize> = (0..config.layers.len())
        .filter(|&i| config.layers[i] == LayerKind::Moe)
        .collect();
    let mut h = Heatmap::new(layers, config.n_routed_experts);
    for path in traces {
        let records = nemotron_rt::trace::read(path).map_err(|e| e.to_string())?;
        for r in records {
            let routes: Vec<_> = r.routing.into_iter().map(Into::into).collect();
            h.add_token(&routes)
                .map_err(|e| format!("{} token {}: {e}", path.display(), r.index))?;
        }
    }
    Ok(h)
}

fn model_dir(model: &Option<PathBuf>) -> Result<PathBuf, String> {
    match model {
        Some(dir) => Ok(dir.clone()),
        None => nemotron_rt::default_model::dir().map_err(|e| e.to_string()),
    }
}

/// Runs `heatmap`; returns what to print on success.
pub fn run_heatmap(a: &HeatmapArgs) -> Result<String, String> {
    let dir = model_dir(&a.model)?;
    let config = ModelConfig::load(&dir).map_err(|e| e.to_string())?;
    let h = heatmap_of_traces(&config, &a.traces)?;
    if h.tokens == 0 {
        return Err("the traces hold no tokens: nothing to draw".into());
    }
    export::heatmap_png(&h, a.mode, a.log, &a.out)?;
    if let Some(csv) = &a.csv {
        export::write_text(csv, &h.to_csv())?;
    }
    Ok(format!(
        "{} tokens, {} MoE layers x {} experts -> {}",
        h.tokens,
        h.rows(),
        h.experts,
        a.out.display()
    ))
}
