//! Compare: the same prompt and seed on several backends, one after another: speed, whether the
//! tokens agree, and how often each MoE layer chose the same experts.

use eframe::egui::{self, Color32};
use egui_plot::{Bar, BarChart, Legend, Plot};

use crate::state::{AppState, Busy};

pub fn show(ui: &mut egui::Ui, state: &mut AppState) {
    ui.heading("Compare backends");
    ui.label("Runs the prompt and settings of the Generate tab on every picked device, one after another (each loads its own copy of the model).");
    ui.horizontal_wrapped(|ui| {
        for (i, d) in state.devices.iter().enumerate() {
            if let Some(p) = state.compare_pick.get_mut(i) {
                ui.add_enabled(d.usable(), egui::Checkbox::new(p, &d.label));
            }
        }
    });
    let comparing = matches!(state.busy, Some(Busy::Comparing { .. }));
    ui.horizontal(|ui| {
        let can = state.loaded.is_some() && state.busy.is_none();
        if ui
            .add_enabled(can, egui::Button::new("Run comparison"))
            .clicked()
        {
            state.run_compare();
        }
        if ui
            .add_enabled(comparing, egui::Button::new("Stop"))
            .clicked()
        {
            state.stop();
        }
        if let Some(Busy::Comparing { current, total, .. }) = &state.busy {
            ui.spinner();
            let name = current
                .and_then(|i| state.devices.get(i))
                .map_or("…", |d| d.label.as_str());
            ui.label(format!("{} of {total}: {name}", state.compare.len() + 1));
        }
    });
    if state.compare.is_empty() {
        return;
    }
    let agreement = state.compare_agreement();
    ui.separator();
    egui::Grid::new("compare_table")
        .striped(true)
        .num_columns(7)
        .show(ui, |ui| {
            for h in [
                "backend",
                "prefill tok/s",
                "decode tok/s",
                "TTFT ms",
                "tokens",
                "tokens agree",
                "routing agrees",
            ] {
                ui.strong(h);
            }
            ui.end_row();
            for (run, agr) in state.compare.iter().zip(&agreement) {
                ui.label(&run.device_label);
                match (&run.result, agr) {
                    (Ok(s), Some(a)) => {
                        ui.label(format!("{:.1}", s.prefill_tok_s));
                        ui.label(format!("{:.1}", s.decode_tok_s));
                        ui.label(format!("{:.1}", s.ttft_ms));
                        ui.label(s.tokens.len().to_string());
                        if a.tokens_agree {
                            ui.colored_label(Color32::from_rgb(90, 180, 90), "yes");
                        } else {
                            ui.colored_label(
                                ui.visuals().warn_fg_color,
                                format!("no, from token {}", a.first_divergence.unwrap_or(0)),
                            );
                        }
                        let mean = if a.per_layer.is_empty() {
                            None
                        } else {
                            Some(
                                a.per_layer.iter().map(|l| l.1).sum::<f64>()
                                    / a.per_layer.len() as f64,
                            )
                        };
                        ui.label(mean.map_or("–".into(), |m| {
                            format!("{:.1}% of {} tokens", m * 100.0, a.compared_tokens)
                        }));
                    }
                    (Err(e), _) => {
                        ui.colored_label(ui.visuals().error_fg_color, e);
                    }
                    (Ok(_), None) => {}
                }
                ui.end_row();
            }
        });

    let ok: Vec<(&str, &crate::state::CompareStats)> = state
        .compare
        .iter()
        .filter_map(|r| r.result.as_ref().ok().map(|s| (r.device_label.as_str(), s)))
        .collect();
    if !ok.is_empty() {
        let labels: Vec<String> = ok.iter().map(|o| o.0.to_string()).collect();
        let bars =
            |offset: f64, width: f64, value: fn(&crate::state::CompareStats) -> f64| -> Vec<Bar> {
                ok.iter()
                    .enumerate()
                    .map(|(k, o)| {
                        Bar::new(k as f64 + offset, value(o.1))
                            .width(width)
                            .name(o.0)
                    })
                    .collect()
            };
        let prefill = bars(-0.2, 0.38, |s| s.prefill_tok_s);
        let decode = bars(0.2, 0.38, |s| s.decode_tok_s);
        let ttft = bars(0.0, 0.6, |s| s.ttft_ms);
        ui.columns(2, |cols| {
            bar_plot(
                &mut cols[0],
                "compare_speed",
                "tok/s",
                labels.clone(),
                vec![
                    BarChart::new("prefill", prefill).color(Color32::from_rgb(230, 150, 50)),
                    BarChart::new("decode", decode).color(Color32::from_rgb(80, 140, 230)),
                ],
            );
            bar_plot(
                &mut cols[1],
                "compare_ttft",
                "time to first token, ms",
                labels,
                vec![BarChart::new("TTFT", ttft).color(Color32::from_rgb(150, 110, 210))],
            );
        });
    }

    // Per-layer routing agreement with the reference (the first successful run).
    let layers: Vec<usize> = agreement
        .iter()
        .flatten()
        .next()
        .map(|a| a.per_layer.iter().map(|l| l.0).collect())
        .unwrap_or_default();
    if layers.is_empty() {
        return;
    }
    egui::CollapsingHeader::new(
        "routing agreement per MoE layer (same expert set as the first run)",
    )
    .default_open(true)
    .show(ui, |ui| {
        egui::ScrollArea::horizontal().show(ui, |ui| {
            egui::Grid::new("layer_agreement")
                .striped(true)
                .show(ui, |ui| {
                    ui.strong("backend");
                    for l in &layers {
                        ui.strong(format!("L{l}"));
                    }
                    ui.end_row();
                    for (run, agr) in state.compare.iter().zip(&agreement) {
                        let Some(a) = agr else { continue };
                        ui.label(&run.device_label);
                        for (_, f) in &a.per_layer {
                            let c = if *f >= 1.0 {
                                Color32::from_rgb(90, 180, 90)
                            } else {
                                ui.visuals().warn_fg_color
                            };
                            ui.colored_label(c, format!("{:.0}%", f * 100.0));
                        }
                        ui.end_row();
                    }
                });
        });
    });
}

/// Bars grouped by backend, the backend's name under each group.
fn bar_plot(ui: &mut egui::Ui, id: &str, y: &str, labels: Vec<String>, charts: Vec<BarChart>) {
    Plot::new(id)
        .height(180.0)
        .legend(Legend::default())
        .y_axis_label(y)
        .include_y(0.0)
        .allow_scroll(false)
        .x_axis_formatter(move |m, _| {
            let k = m.value.round();
            if (m.value - k).abs() < 1e-6 && k >= 0.0 {
                labels.get(k as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .show(ui, |p| {
            for c in charts {
                p.bar_chart(c);
            }
        });
}
