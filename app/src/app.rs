//! The window: model and backend on the left, Generate / Routing / Compare tabs in the middle.

use eframe::egui;

use crate::state::{AppState, Busy, Tab};
use crate::views;

pub struct StudioApp {
    pub state: AppState,
}

impl StudioApp {
    pub fn new(state: AppState) -> StudioApp {
        StudioApp { state }
    }
}

/// Checkpoints often live in `<model>/hf`: name them by the folder that says what they are.
fn model_name(dir: &std::path::Path) -> String {
    dir.file_name()
        .filter(|n| *n != "hf" && *n != "hf_bf16")
        .or_else(|| dir.parent().and_then(|p| p.file_name()))
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Draws the whole app into `ui` (shared by the window and the snapshot tests).
pub fn draw(ui: &mut egui::Ui, state: &mut AppState) {
    if state.pump() {
        ui.ctx().request_repaint();
    }
    if state.is_busy() {
        // Workers report through a channel; poll it while they run.
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_millis(50));
    }
    egui::Panel::top("top").show(ui, |ui| {
        ui.horizontal(|ui| {
            ui.heading("nemotron-studio");
            ui.separator();
            match (&state.loaded, &state.busy) {
                (_, Some(Busy::Loading { .. })) => ui.label("loading…"),
                (Some(l), _) => ui.label(format!(
                    "{} on {}",
                    model_name(&l.summary.dir),
                    l.summary.device_label
                )),
                (None, _) => ui.weak("no model"),
            };
        });
        views::notices::show(ui, state);
    });
    egui::Panel::left("side")
        .resizable(true)
        .default_size(420.0)
        .size_range(280.0..=640.0)
        .show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                views::model::show(ui, state);
                ui.separator();
                views::backend::show(ui, state);
            });
        });
    egui::CentralPanel::default().show(ui, |ui| {
        ui.horizontal(|ui| {
            ui.selectable_value(&mut state.tab, Tab::Generate, "Generate");
            ui.selectable_value(&mut state.tab, Tab::Routing, "Routing");
            ui.selectable_value(&mut state.tab, Tab::Compare, "Compare");
        });
        ui.separator();
        egui::ScrollArea::vertical().show(ui, |ui| match state.tab {
            Tab::Generate => {
                views::prompt::show(ui, state);
                ui.separator();
                views::speed::show(ui, state);
            }
            Tab::Routing => views::heatmap::show(ui, state),
            Tab::Compare => views::compare::show(ui, state),
        });
    });
}

impl eframe::App for StudioApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        draw(ui, &mut self.state);
    }
}
