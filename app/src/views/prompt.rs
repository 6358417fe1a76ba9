//! Prompt, generation settings, Generate/Stop, and the streamed output as clickable tokens.

use eframe::egui::{self, RichText};

use crate::state::{AppState, Busy, TokenEntry};

/// A token's text made visible: whitespace-only and empty pieces still get a chip.
pub fn chip_text(t: &TokenEntry) -> String {
    let s = t.text.replace('\n', "\\n").replace('\t', "\\t");
    if s.is_empty() {
        "(empty)".into()
    } else if s.trim().is_empty() {
        s.replace(' ', "·")
    } else {
        s
    }
}

fn routing_tooltip(ui: &mut egui::Ui, t: &TokenEntry) {
    ui.label(format!("token #{} (id {}), {:.2} ms", t.index, t.id, t.ms));
    egui::Grid::new(("tok_routes", t.index)).show(ui, |ui| {
        for r in &t.routing {
            ui.monospace(format!("layer {:>3}", r.layer));
            let ids: Vec<String> = r.ids.iter().map(u32::to_string).collect();
            ui.monospace(ids.join(" "));
            ui.end_row();
        }
    });
}

pub fn show(ui: &mut egui::Ui, state: &mut AppState) {
    let generating = matches!(state.busy, Some(Busy::Generating { .. }));
    ui.add(
        egui::TextEdit::multiline(&mut state.settings.prompt)
            .hint_text("prompt")
            .desired_rows(3)
            .desired_width(f32::INFINITY),
    );
    let s = &mut state.settings;
    ui.horizontal_wrapped(|ui| {
        let l = ui.label("max tokens");
        ui.add(egui::DragValue::new(&mut s.max_tokens).range(1..=65536))
            .labelled_by(l.id);
        let l = ui.label("temperature");
        ui.add(
            egui::DragValue::new(&mut s.temperature)
                .range(0.0..=5.0)
                .speed(0.01),
        )
        .labelled_by(l.id);
        let l = ui.label("top-p");
        ui.add(
            egui::DragValue::new(&mut s.top_p)
                .range(0.01..=1.0)
                .speed(0.01),
        )
        .labelled_by(l.id);
        let l = ui.label("top-k");
        ui.add(egui::DragValue::new(&mut s.top_k).range(0..=1_000_000))
            .labelled_by(l.id);
        let l = ui.label("seed");
        ui.add(egui::DragValue::new(&mut s.seed)).labelled_by(l.id);
    });
    ui.horizontal(|ui| {
        let can_run = state.loaded.is_some() && state.busy.is_none();
        if ui
            .add_enabled(
                can_run,
                egui::Button::new(RichText::new("Generate").strong()),
            )
            .clicked()
        {
            state.generate();
        }
        if ui
            .add_enabled(generating, egui::Button::new("Stop"))
            .clicked()
        {
            state.stop();
        }
        if generating {
            ui.spinner();
        }
        if let Some(run) = &state.run {
            let status = match (&run.error, run.finish) {
                (Some(e), _) => format!("failed: {e}"),
                (None, Some(r)) => format!("{} tokens, finished: {r:?}", run.tokens.len()),
                (None, None) => format!("{} tokens…", run.tokens.len()),
            };
            ui.label(format!("{status} · {}", run.device_label));
        }
    });
    ui.separator();
    let Some(run) = &state.run else {
        ui.weak("The output streams here, one chip per token; hover a token for its experts, click to mark them in the routing heatmap.");
        return;
    };
    let mut select = None;
    egui::ScrollArea::vertical()
        .id_salt("output")
        .auto_shrink([false, true])
        .max_height(ui.available_height() * 0.5)
        .stick_to_bottom(true)
        .show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                ui.spacing_mut().item_spacing.x = 1.0;
                for t in &run.tokens {
                    let selected = state.selected_token == Some(t.index);
                    let r = ui
                        .selectable_label(selected, RichText::new(chip_text(t)).monospace())
                        .on_hover_ui(|ui| routing_tooltip(ui, t));
                    if r.clicked() {
                        select = Some(if selected { None } else { Some(t.index) });
                    }
                }
                if !run.tail_text.is_empty() {
                    ui.monospace(&run.tail_text);
                }
            });
        });
    if let Some(sel) = select {
        state.selected_token = sel;
    }
}
