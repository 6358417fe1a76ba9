//! The default model: `nemotron-3-tiny` (tools/train), compiled into the library so that
//! `generate`, `bench`, `inspect` and the app work with no `--model` from any folder, including
//! a binary installed with `cargo install`. Its files are written once to a cache folder named
//! after their content and loaded from there like any checkpoint (memory-mapped).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
    let folder = format!("{NAME}-{:016x}", files::CONTENT_HASH);
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
    // The shared temporary folder: one of our own per user, so nobody else's files are read.
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    bases.push(std::env::temp_dir().join(format!("nemotron-rt-cache-{uid}")));
    bases
}

/// Whether `dir` holds exactly the embedded files (compared byte for byte: a few milliseconds).
fn holds_the_model(dir: &Path) -> bool {
    files::FILES.iter().all(|(f, bytes)| {
        std::fs::metadata(dir.join(f)).is_ok_and(|m| m.len() == bytes.len() as u64)
            && std::fs::read(dir.join(f)).is_ok_and(|b| b == *bytes)
    })
}

/// Creates `base` (and its parents) readable by this user only, where it does not exist yet.
fn private_dir(base: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(base)
}

/// Writes the files into `dir` unless a complete copy is there: into a fresh sibling folder
/// first (named by process, thread and a counter, so concurrent writers never share one),
/// renamed into place at the end, so a run that stops half-way or another process writing at
/// the same time never leaves a partial model where it is read.
fn write_once(dir: &Path) -> std::io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    if holds_the_model(dir) {
        return Ok(());
    }
    let parent = dir.parent().expect("a folder under the cache");
    private_dir(parent)?;
    let tmp = parent.join(format!(
        ".{}.{}.{:?}.{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or(NAME),
        std::process::id(),
        std::thread::current().id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    private_dir(&tmp)?;
    let written = files::FILES.iter().try_for_each(|(name, bytes)| {
        let mut f = std::fs::File::create(tmp.join(name))?;
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Another writer may have finished meanwhile: then its copy stays (a reader may be
    // loading it) and ours goes. Only a copy that is not the model is replaced.
    if holds_the_model(dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dir);
    let renamed = std::fs::rename(&tmp, dir);
    let _ = std::fs::remove_dir_all(&tmp);
    match renamed {
        Ok(()) => Ok(()),
        Err(_) if holds_the_model(dir) => Ok(()),
        Err(e) => Err(e),
    }
}
