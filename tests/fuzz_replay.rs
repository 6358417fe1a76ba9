//! Replays every committed fuzz input through its target: the seed and minimized corpora
//! (`fuzz/corpus/<target>/`) and every past finding (`fuzz/regressions/<target>/`). The targets
//! (`fuzz/harness.rs`) are the ones cargo-fuzz runs; here they run on stable Rust, without
//! libFuzzer, so a fixed finding that comes back fails CI. docs/correctness.md says how to fuzz.

use std::path::{Path, PathBuf};

#[path = "../fuzz/harness.rs"]
mod harness;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let (_, run) = harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target of that name");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = inputs(&root.join("corpus").join(target));
    let findings = inputs(&root.join("regressions").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target} has no seeds: the replay would test nothing"
    );
    for file in corpus.iter().chain(&findings) {
        let data = std::fs::read(file).unwrap();
        // A panic names the input that caused it, to reproduce with `cargo fuzz run`.
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target} failed on {}", file.display());
    }
    eprintln!(
        "{target}: {} corpus inputs and {} past findings replayed",
        corpus.len(),
        findings.len()
    );
}

#[test]
fn every_target_replays_its_corpus_and_past_findings() {
    for (name, _) in harness::TARGETS {
        replay(name);
    }
    // The targets' scratch folders (in /dev/shm) would otherwise pile up run after run.
    harness::remove_scratch();
}
