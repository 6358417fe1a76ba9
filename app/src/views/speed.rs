//! Token speed: decode tok/s of every token as it arrives, its average, the prefill speed and
//! the time to first token.

use eframe::egui::{self, Color32, Stroke};
use egui_plot::{HLine, Legend, Line, Plot};

use crate::state::AppState;

fn stat(ui: &mut egui::Ui, name: &str, value: Option<f64>, unit: &str) {
    ui.vertical(|ui| {
        ui.label(egui::RichText::new(name).small().weak());
        let v = value.map_or("–".to_string(), |v| format!("{v:.1} {unit}"));
        ui.label(egui::RichText::new(v).heading());
    });
}

pub fn show(ui: &mut egui::Ui, state: &AppState) {
    ui.heading("Token speed");
    let run = state.run.as_ref();
    ui.horizontal(|ui| {
        stat(
            ui,
            "time to first token",
            run.and_then(|r| r.ttft_ms()),
            "ms",
        );
        ui.separator();
        stat(ui, "prefill", run.and_then(|r| r.prefill_tok_s()), "tok/s");
        ui.separator();
        stat(
            ui,
            "decode (current)",
            run.and_then(|r| r.current_decode_tok_s()),
            "tok/s",
        );
        ui.separator();
        stat(
            ui,
            "decode (average)",
            run.and_then(|r| r.average_decode_tok_s()),
            "tok/s",
        );
    });
    let series = run.map(|r| r.decode_series()).unwrap_or_default();
    let avg = run.and_then(|r| r.average_decode_tok_s());
    Plot::new("decode_speed")
        .height(ui.available_height().clamp(120.0, 260.0))
        .legend(Legend::default())
        .x_axis_label("token")
        .y_axis_label("decode tok/s")
        .include_y(0.0)
        .include_x(0.0)
        .allow_scroll(false)
        .show(ui, |p| {
            p.line(
                Line::new("decode tok/s", series)
                    .color(Color32::from_rgb(80, 160, 240))
                    .width(1.5),
            );
            if let Some(a) = avg {
                p.hline(
                    HLine::new("average", a)
                        .stroke(Stroke::new(1.0, Color32::from_rgb(240, 170, 60))),
                );
            }
        });
}
