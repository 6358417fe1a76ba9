//! The backend panel: every device of every backend with what it supports; picking one reloads
//! the open model there.

use eframe::egui;

use crate::state::AppState;

pub fn show(ui: &mut egui::Ui, state: &mut AppState) {
    ui.horizontal(|ui| {
        ui.heading("Backend");
        if state.devices_pending {
            ui.spinner();
        } else if ui
            .small_button("refresh")
            .on_hover_text("list devices again")
            .clicked()
        {
            state.refresh_devices();
        }
    });
    let mut pick = None;
    for (i, d) in state.devices.iter().enumerate() {
        let r = ui.add_enabled(
            d.usable(),
            egui::RadioButton::new(i == state.device, &d.label),
        );
        if r.clicked() {
            pick = Some(i);
        }
        let detail = match &d.unavailable {
            Some(why) => format!("{}: {why}", d.label),
            None => d.details.join(" · "),
        };
        ui.indent(("device", i), |ui| {
            ui.label(egui::RichText::new(detail).small().weak());
        });
    }
    if let Some(i) = pick {
        state.select_device(i);
    }
    ui.horizontal(|ui| {
        let l = ui.label("CPU threads");
        ui.add(egui::DragValue::new(&mut state.threads).range(0..=256))
            .labelled_by(l.id)
            .on_hover_text("0 = one per core; applies to the next load");
    });
    if state.loaded.is_some() {
        ui.weak("Picking another device reloads the model on it.");
    }
}
