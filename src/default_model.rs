//! The default model: `nemotron-3-tiny` (tools/train), compiled into the library so that
//! `generate`, `bench`, `inspect` and the app work with no `--model` from any folder, including
//! a binary installed with `cargo install`. Its files are written once to a cache folder named
//! after their content and loaded from there like any checkpoint (memory-mapped).

use std::path::{Path, PathBuf};

use crate::{Error, Result};

mod files {
    include!(concat!(env!("OUT_DIR"), "/default_model_files.rs"));
}

/// The default model's name, as its folder in the repository (`models/NAME`) is called.
pub const NAME: &str = "nemotron-3-tiny";

/// Whether this build carries the default model (a source tree without `models/NAME` builds
/// without it).
pub fn embedded() -> bool {
    !files::FILES.is_empty()
}

/// The folder holding the default model's files, written there on first use: under
/// `$NEMOTRON_RT_CACHE`, `$XDG_CACHE_HOME/nemotron-rt` or `~/.cache/nemotron-rt`, and in the
/// system's temporary folder where none of those can be written.
pub fn dir() -> Result<PathBuf> {
    if !embedded() {
        return Err(Error::Invalid(format!(
            "this build has no default model (models/{NAME} was missing when it was compiled): \
             give --model with a checkpoint folder"
        )));
    }
    let folder = format!("{NAME}-{:016x}", content_hash());
    let mut tried = Vec::new();
    for base in cache_bases() {
        let dir = base.join("models").join(&folder);
        match write_once(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => tried.push(format!("{}: {e}", dir.display())),
        }
    }
    Err(Error::Invalid(format!(
        "could not write the default model's files anywhere ({}); give --model with a \
         checkpoint folder",
        tried.join("; ")
    )))
}

fn cache_bases() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut bases = Vec::new();
    if let Some(p) = env("NEMOTRON_RT_CACHE") {
        bases.push(p);
    }
    if let Some(p) = env("XDG_CACHE_HOME") {
        bases.push(p.join("nemotron-rt"));
    }
    if let Some(p) = env("HOME") {
        bases.push(p.join(".cache").join("nemotron-rt"));
    }
    bases.push(std::env::temp_dir().join("nemotron-rt-cache"));
    bases
}

/// FNV-1a over every file's name, length and bytes, eight bytes at a time: names the cache
/// folder, so a binary with other weights never reads an older binary's files.
fn content_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |x: u64| {
        h ^= x;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for (name, bytes) in files::FILES {
        name.bytes().for_each(|b| mix(b as u64));
        mix(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            mix(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        chunks.remainder().iter().for_each(|&b| mix(b as u64));
    }
    h
}

/// Writes the files into `dir` unless a complete copy is there: into a fresh sibling folder
/// first, renamed into place at the end, so a run that stops half-way or another process
/// writing at the same time never leaves a partial model behind.
fn write_once(dir: &Path) -> std::io::Result<()> {
    let complete = |d: &Path| {
        files::FILES
            .iter()
            .all(|(f, b)| std::fs::metadata(d.join(f)).is_ok_and(|m| m.len() == b.len() as u64))
    };
    if complete(dir) {
        return Ok(());
    }
    let parent = dir.parent().expect("a folder under the cache");
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}.{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or(NAME),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for (name, bytes) in files::FILES {
        std::fs::write(tmp.join(name), bytes)?;
    }
    if dir.exists() {
        // A partial copy (an older run killed half-way): replace it.
        let _ = std::fs::remove_dir_all(dir);
    }
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another process finished first: use its copy.
        Err(_) if complete(dir) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}
