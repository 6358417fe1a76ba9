//! The bench's bytes-per-token count against a hand count from the safetensors header.

use std::path::Path;

use nemotron_rt::backend::{self, BackendKind};
use nemotron_rt::bench::{Stats, bytes_for_token};
use nemotron_rt::generate::TokenRoute;
use nemotron_rt::model::{LoadOptions, Model};
use serde_json::Value;

#[test]
fn bytes_per_token_matches_a_hand_count() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/nemotronh_tiny_grouped_nvfp4_super/hf");
    let model = Model::load(
        &dir,
        backend::create(BackendKind::Cpu, 1).unwrap(),
        LoadOptions::default(),
    )
    .unwrap();
    // A routing for one decoded token: k = 4 distinct experts in each MoE layer (1, 4, 7).
    let routes = vec![
        TokenRoute {
            layer: 1,
            ids: vec![0, 3, 5, 15],
            weights: vec![0.25; 4],
        },
        TokenRoute {
            layer: 4,
            ids: vec![1, 2, 8, 9],
            weights: vec![0.25; 4],
        },
        TokenRoute {
            layer: 7,
            ids: vec![4, 6, 10, 11],
            weights: vec![0.25; 4],
        },
    ];

    let b = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vocab = cfg["vocab_size"].as_u64().unwrap();
    let mut hand = 0u64;
    for (name, t) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let off = t["data_offsets"].as_array().unwrap();
        let bytes = off[1].as_u64().unwrap() - off[0].as_u64().unwrap();
        // Activation and KV-cache scales are not read by the exact (weight-only) path.
        if name.ends_with("input_scale") || name.ends_with("k_scale") || name.ends_with("v_scale") {
            continue;
        }
        if name == "backbone.embeddings.weight" {
            hand += bytes / vocab; // one row per token
            continue;
        }
        if let Some(rest) = name.strip_prefix("backbone.layers.") {
            let parts: Vec<&str> = rest.split('.').collect();
            if parts.len() > 3 && parts[2] == "experts" {
                let layer: usize = parts[0].parse().unwrap();
                let e: u32 = parts[3].parse().unwrap();
                let chosen = routes.iter().find(|r| r.layer == layer).unwrap();
                if chosen.ids.contains(&e) {
                    hand += bytes;
                }
                continue;
            }
        }
        hand += bytes;
    }
    let counted = bytes_for_token(&model, &routes);
    assert_eq!(
        counted, hand as f64,
        "bench counts {counted} bytes, the header says {hand}"
    );
    // And the k/E average inspect reports equals it for any k distinct experts per layer.
    assert_eq!(model.info.bytes_per_token(), hand as f64);
}

#[test]
fn stats_are_median_min_max() {
    let s = Stats::of(&[3.0, 1.0, 2.0, 10.0]);
    assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
    let s = Stats::of(&[5.0, 1.0, 4.0]);
    assert_eq!((s.median, s.min, s.max), (4.0, 1.0, 5.0));
}

/// `bench --parallel`: with several counts, a list of the plain bench's objects, one per
/// distinct count in order, each with `parallel` (its `decode_tok_s` the aggregate over the
/// sequences, each one's share, the speed-up over one sequence, which is 1 for one); with one
/// count, a single such object; without `--parallel`, no `parallel` at all. (Speeds
/// themselves are for the benchmark, not a test.) A count of 0 is refused by name.
#[test]
fn parallel_bench_reports_every_batch_size() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/nemotronh_tiny_grouped_nvfp4_super/hf");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nemotron-rt"))
            .args(["bench", "--threads", "2", "--model"])
            .arg(&dir)
            .args(["--prompt-len", "5", "--gen", "3", "--repeat", "2", "--json"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = run(&["--parallel", "4,1,2,2"]);
    assert!(ok, "{stderr}");
    let rows: Value = serde_json::from_slice(&stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let counts: Vec<u64> = rows
        .iter()
        .map(|r| r["parallel"]["sequences"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 2, 4]);
    for r in rows {
        let n = r["parallel"]["sequences"].as_f64().unwrap();
        let all = r["decode_tok_s"]["median"].as_f64().unwrap();
        let each = r["parallel"]["per_sequence_decode_tok_s"]["median"]
            .as_f64()
            .unwrap();
        assert!(all > 0.0 && all.is_finite(), "{r}");
        assert!((all / n - each).abs() <= 1e-9 * all, "{r}");
        for key in [
            "prefill_tok_s",
            "ttft_ms",
            "bytes_per_token",
            "achieved_gb_s",
            "load_s",
        ] {
            assert!(r.get(key).is_some(), "{key} missing from {r}");
        }
    }
    assert_eq!(rows[0]["parallel"]["speedup"]["median"].as_f64(), Some(1.0));
    // Four sequences read more experts per step than one, and less than four times its bytes.
    let step = |r: &Value| {
        r["bytes_per_token"].as_f64().unwrap() * r["parallel"]["sequences"].as_f64().unwrap()
    };
    assert!(step(&rows[2]) > step(&rows[0]) && step(&rows[2]) < 4.0 * step(&rows[0]));

    let (ok, stdout, stderr) = run(&["--parallel", "2"]);
    assert!(ok, "{stderr}");
    let one: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(one["parallel"]["sequences"].as_u64(), Some(2), "{one}");
    assert!(one["parallel"]["speedup"].is_null(), "{one}");

    let (ok, stdout, stderr) = run(&[]);
    assert!(ok, "{stderr}");
    let plain: Value = serde_json::from_slice(&stdout).unwrap();
    assert!(plain.get("parallel").is_none() && plain["decode_tok_s"]["median"].is_f64());

    let (ok, _, stderr) = run(&["--parallel", "0,2"]);
    assert!(!ok);
    assert!(stderr.contains("sequence counts >= 1"), "{stderr}");
}

/// `bench --speculative K` drafts with the default model's MTP step and reports K and the
/// acceptance at each draft position, each a fraction.
#[test]
fn speculative_bench_reports_acceptance_per_draft_position() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nemotron-rt"))
        .args([
            "bench",
            "--threads",
            "2",
            "--prompt-len",
            "8",
            "--gen",
            "12",
        ])
        .args(["--repeat", "1", "--speculative", "2", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["speculative"].as_u64(), Some(2), "{r}");
    let acc = r["draft_acceptance"].as_array().unwrap();
    assert_eq!(acc.len(), 2, "{r}");
    assert!(
        acc.iter()
            .all(|a| (0.0..=1.0).contains(&a.as_f64().unwrap()))
    );
    assert!(r["decode_tok_s"]["median"].as_f64().unwrap() > 0.0);
}
