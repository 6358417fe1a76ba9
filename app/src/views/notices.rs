//! Errors and messages, shown as dismissable lines instead of ever crashing the app.

use eframe::egui;

use crate::state::{AppState, Level};

pub fn show(ui: &mut egui::Ui, state: &mut AppState) {
    let mut dismiss = None;
    for (i, n) in state.notices.iter().enumerate() {
        let color = match n.level {
            Level::Error => ui.visuals().error_fg_color,
            Level::Info => ui.visuals().weak_text_color(),
        };
        ui.horizontal(|ui| {
            if ui.small_button("x").on_hover_text("dismiss").clicked() {
                dismiss = Some(i);
            }
            let prefix = if n.level == Level::Error {
                "error: "
            } else {
                ""
            };
            ui.colored_label(color, format!("{prefix}{}", n.text));
        });
    }
    if let Some(i) = dismiss {
        state.notices.remove(i);
    }
}
