//! The model panel: open a checkpoint (path, folder picker, recent list) and what it holds.

use std::path::PathBuf;

use eframe::egui::{self, Color32, RichText, text::LayoutJob};

use super::{bytes, human};
use crate::state::{AppState, Busy};

/// Colour of a layer letter, matching the legend under the pattern.
fn layer_color(c: char) -> Color32 {
    match c {
        'M' => Color32::from_rgb(90, 170, 90),
        '*' => Color32::from_rgb(230, 150, 50),
        'E' => Color32::from_rgb(80, 140, 230),
        _ => Color32::GRAY,
    }
}

fn pattern_job(pattern: &str, ui: &egui::Ui) -> LayoutJob {
    let mut job = LayoutJob::default();
    let font = egui::TextStyle::Monospace.resolve(ui.style());
    for c in pattern.chars() {
        job.append(
            &c.to_string(),
            0.0,
            egui::TextFormat::simple(font.clone(), layer_color(c)),
        );
    }
    job.wrap.max_width = ui.available_width();
    job
}

pub fn show(ui: &mut egui::Ui, state: &mut AppState) {
    ui.heading("Model");
    let mut open: Option<PathBuf> = None;
    ui.horizontal(|ui| {
        let edit = egui::TextEdit::singleline(&mut state.model_path)
            .hint_text("checkpoint folder")
            .desired_width(ui.available_width() - 130.0);
        let r = ui.add(edit);
        if r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
            open = Some(PathBuf::from(state.model_path.trim()));
        }
        if ui.button("Open").clicked() {
            open = Some(PathBuf::from(state.model_path.trim()));
        }
        if ui.button("Browse…").clicked() {
            let start = PathBuf::from(state.model_path.trim());
            let start = if state.model_path.trim().is_empty() {
                state.picker.cwd().to_path_buf()
            } else {
                start
            };
            state.picker.open_at(&start);
        }
    });
    if !state.recent.dirs.is_empty() {
        egui::CollapsingHeader::new("Recent")
            .default_open(false)
            .show(ui, |ui| {
                for d in state.recent.dirs.clone() {
                    if ui.link(d.display().to_string()).clicked() {
                        open = Some(d);
                    }
                }
            });
    }
    if let Some(dir) = state.picker.show(ui.ctx()) {
        open = Some(dir);
    }
    if let Some(dir) = open {
        if dir.as_os_str().is_empty() {
            state.error("type a checkpoint folder, or pick one with Browse…");
        } else {
            state.open_model(&dir);
        }
    }

    if let Some(Busy::Loading {
        dir,
        device,
        since,
        progress,
    }) = &state.busy
    {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(format!(
                "loading {} on {device} … {:.1} s",
                dir.display(),
                since.elapsed().as_secs_f64()
            ));
        });
        if let Some(f) = progress.fraction() {
            ui.add(egui::ProgressBar::new(f).text(format!(
                "{} of {}",
                bytes(progress.done() as f64),
                bytes(progress.total() as f64)
            )));
        }
    }

    let Some(loaded) = &state.loaded else {
        ui.weak("No model open. Pick a checkpoint folder (config.json + *.safetensors).");
        return;
    };
    let s = &loaded.summary;
    let info = &s.info;
    ui.add_space(4.0);
    egui::Grid::new("model_summary")
        .num_columns(2)
        .spacing([12.0, 4.0])
        .show(ui, |ui| {
            ui.label("folder");
            ui.monospace(s.dir.display().to_string());
            ui.end_row();
            ui.label("running on");
            ui.label(format!("{}: {}", s.device_label, s.backend.device))
                .on_hover_text(format!("loaded in {:.0} ms", s.load_ms));
            ui.end_row();
            ui.label("layers");
            ui.vertical(|ui| {
                ui.label(pattern_job(&info.pattern, ui));
                ui.horizontal(|ui| {
                    for (c, name) in [
                        ('M', "Mamba-2"),
                        ('*', "attention"),
                        ('E', "MoE"),
                        ('-', "MLP"),
                    ] {
                        let n = info.pattern.chars().filter(|&p| p == c).count();
                        if n > 0 {
                            ui.label(
                                RichText::new(format!("{c} {name} ×{n}"))
                                    .color(layer_color(c))
                                    .small(),
                            );
                        }
                    }
                });
            });
            ui.end_row();
            if !s.moe_layers.is_empty() {
                ui.label("experts");
                ui.label(format!(
                    "{} routed, top-{} per token",
                    s.config.n_routed_experts, s.config.num_experts_per_tok
                ));
                ui.end_row();
            }
            ui.label("parameters");
            ui.label(format!(
                "{} total, {} active per token",
                human(info.total_params() as f64),
                human(info.active_params())
            ));
            ui.end_row();
            ui.label("weights");
            ui.label(format!("{} stored", bytes(info.weight_bytes() as f64)));
            ui.end_row();
            ui.label("bytes / decoded token");
            let measured = state
                .measured_bytes_per_token()
                .map(|b| format!(", {} measured (last run)", bytes(b)))
                .unwrap_or_default();
            ui.label(format!(
                "{} expected{measured}",
                bytes(info.bytes_per_token())
            ));
            ui.end_row();
            ui.label("quantization");
            ui.label(info.quant_source.as_deref().unwrap_or("none"));
            ui.end_row();
        });
    egui::CollapsingHeader::new("dtype mix")
        .default_open(true)
        .show(ui, |ui| {
            egui::Grid::new("dtype_mix")
                .striped(true)
                .num_columns(4)
                .show(ui, |ui| {
                    for h in ["tensor group", "format", "params", "bytes"] {
                        ui.strong(h);
                    }
                    ui.end_row();
                    for g in &info.groups {
                        ui.label(&g.name);
                        ui.label(g.formats.join("+"));
                        ui.label(human(g.params as f64));
                        ui.label(bytes(g.bytes as f64));
                        ui.end_row();
                    }
                });
        });
}
