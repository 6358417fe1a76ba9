//! Recently opened checkpoint folders, newest first, kept in a small JSON file in the user's
//! config folder so that the list survives restarts without eframe's persistence feature.

use std::path::{Path, PathBuf};

const MAX: usize = 10;

#[derive(Clone, Debug, Default)]
pub struct Recent {
    pub dirs: Vec<PathBuf>,
    /// Where the list is saved; `None` keeps it in memory (tests).
    file: Option<PathBuf>,
}

/// `$XDG_CONFIG_HOME/nemotron-studio/recent.json`, else `~/.config/nemotron-studio/recent.json`.
pub fn default_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("nemotron-studio").join("recent.json"))
}

impl Recent {
    /// Reads the list; a missing or unreadable file is an empty list (it is only a convenience).
    pub fn load(file: Option<PathBuf>) -> Recent {
        let dirs = file
            .as_deref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| serde_json::from_str::<Vec<PathBuf>>(&s).ok())
            .unwrap_or_default();
        Recent { dirs, file }
    }

    /// Moves `dir` to the front and saves; returns a message when saving failed.
    pub fn push(&mut self, dir: &Path) -> Option<String> {
        self.dirs.retain(|d| d != dir);
        self.dirs.insert(0, dir.to_path_buf());
        self.dirs.truncate(MAX);
        self.save().err()
    }

    fn save(&self) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let write = || -> std::io::Result<()> {
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let json = serde_json::to_string_pretty(&self.dirs).map_err(std::io::Error::other)?;
            std::fs::write(file, json)
        };
        write().map_err(|e| format!("saving the recent list to {}: {e}", file.display()))
    }
}
