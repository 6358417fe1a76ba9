//! A folder chooser drawn with egui itself, so the app needs no system dialog library: it lists
//! sub-folders and marks those that hold a checkpoint (a `config.json`).

use std::path::{Path, PathBuf};

use eframe::egui;

struct Entry {
    name: String,
    is_model: bool,
}

pub struct FolderPicker {
    pub open: bool,
    cwd: PathBuf,
    entries: Option<Result<Vec<Entry>, String>>,
}

impl FolderPicker {
    pub fn new(cwd: PathBuf) -> FolderPicker {
        FolderPicker {
            open: false,
            cwd,
            entries: None,
        }
    }

    pub fn cwd(&self) -> &Path {
        &self.cwd
    }

    /// Opens the window at `dir` (or its nearest existing ancestor).
    pub fn open_at(&mut self, dir: &Path) {
        let mut d = dir.to_path_buf();
        while !d.is_dir() {
            if !d.pop() {
                d = PathBuf::from(".");
                break;
            }
        }
        self.cd(d);
        self.open = true;
    }

    fn cd(&mut self, dir: PathBuf) {
        self.cwd = dir;
        self.entries = None;
    }

    fn read(dir: &Path) -> Result<Vec<Entry>, String> {
        let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut out: Vec<Entry> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'))
            .map(|name| Entry {
                is_model: dir.join(&name).join("config.json").is_file(),
                name,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Shows the window when open; returns the folder the user chose.
    pub fn show(&mut self, ctx: &egui::Context) -> Option<PathBuf> {
        if !self.open {
            return None;
        }
        let mut chosen = None;
        let mut open = self.open;
        let mut go: Option<PathBuf> = None;
        egui::Window::new("Open a checkpoint folder")
            .open(&mut open)
            .default_size([460.0, 360.0])
            .collapsible(false)
            .show(ctx, |ui| {
                ui.horizontal(|ui| {
                    if ui.button("Up").clicked()
                        && let Some(p) = self.cwd.parent()
                    {
                        go = Some(p.to_path_buf());
                    }
                    ui.monospace(self.cwd.display().to_string());
                });
                ui.separator();
                let entries = self.entries.get_or_insert_with(|| Self::read(&self.cwd));
                egui::ScrollArea::vertical()
                    .max_height(260.0)
                    .show(ui, |ui| match entries {
                        Err(e) => {
                            ui.colored_label(ui.visuals().error_fg_color, e.as_str());
                        }
                        Ok(list) if list.is_empty() => {
                            ui.weak("(no sub-folders)");
                        }
                        Ok(list) => {
                            for e in list.iter() {
                                let label = if e.is_model {
                                    format!("{}  [checkpoint]", e.name)
                                } else {
                                    format!("{}/", e.name)
                                };
                                let r = ui.selectable_label(false, label);
                                if r.double_clicked() && e.is_model {
                                    chosen = Some(self.cwd.join(&e.name));
                                } else if r.clicked() {
                                    go = Some(self.cwd.join(&e.name));
                                }
                            }
                        }
                    });
                ui.separator();
                let here_is_model = self.cwd.join("config.json").is_file();
                ui.horizontal(|ui| {
                    if ui
                        .add_enabled(here_is_model, egui::Button::new("Open this folder"))
                        .clicked()
                    {
                        chosen = Some(self.cwd.clone());
                    }
                    if !here_is_model {
                        ui.weak("(no config.json here)");
                    }
                });
            });
        if let Some(d) = go {
            self.cd(d);
        }
        self.open = open && chosen.is_none();
        chosen
    }
}
