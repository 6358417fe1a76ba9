//! The heatmap the app accumulates during a generation must be exactly the routing trace the
//! CLI writes for the same prompt and seed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use nemotron_rt::generate::TokenRoute;
use nemotron_studio::heatmap::Heatmap;

/// Newest modification time of the files under `dir`.
fn newest(dir: &Path) -> std::time::SystemTime {
    let mut t = std::time::UNIX_EPOCH;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let m = if p.is_dir() {
            newest(&p)
        } else {
            e.metadata().and_then(|m| m.modified()).unwrap_or(t)
        };
        t = t.max(m);
    }
    t
}

/// The `nemotron-rt` binary of this build. `cargo test --workspace` has just built it; under
/// `cargo test -p nemotron-studio` it may be missing or older than the library's sources, and
/// is built here (a separate build may pick other features, so only when needed).
fn cli_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = profile_dir.join("nemotron-rt");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sources = newest(&root.join("src")).max(newest(&root.join("shaders")));
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if built.is_some_and(|b| b >= sources) {
        return bin;
    }
    let target_dir = profile_dir.parent().expect("target root");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "nemotron-rt",
        "--bin",
        "nemotron-rt",
        "--target-dir",
    ])
    .arg(target_dir)
    .current_dir(&root);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "building the CLI failed");
    bin
}

fn run_case(
    prompt: &str,
    max_tokens: usize,
    temperature: f32,
    top_p: f32,
    top_k: usize,
    seed: u64,
) {
    let mut state = support::loaded_state();
    state.settings.prompt = prompt.into();
    state.settings.max_tokens = max_tokens;
    state.settings.temperature = temperature;
    state.settings.top_p = top_p;
    state.settings.top_k = top_k;
    state.settings.seed = seed;
    support::generate(&mut state);
    let run = state.run.as_ref().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let trace_path = dir.path().join("cli.jsonl");
    let out = Command::new(cli_binary())
        .args(["generate", "--model"])
        .arg(support::fixture())
        .args(["--prompt", prompt, "--max-tokens", &max_tokens.to_string()])
        .args([
            "--temperature",
            &temperature.to_string(),
            "--top-p",
            &top_p.to_string(),
        ])
        .args(["--top-k", &top_k.to_string(), "--seed", &seed.to_string()])
        .args(["--threads", "2", "--trace-routing"])
        .arg(&trace_path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running nemotron-rt");
    assert!(
        out.status.success(),
        "CLI failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli = nemotron_rt::trace::read(&trace_path).unwrap();
    assert!(!cli.is_empty(), "the CLI wrote an empty trace");

    let summary = &state.loaded.as_ref().unwrap().summary;
    let cli_routes: Vec<Vec<TokenRoute>> = cli
        .iter()
        .map(|r| r.routing.iter().cloned().map(TokenRoute::from).collect())
        .collect();
    let cli_heatmap = Heatmap::from_routes(
        summary.moe_layers.clone(),
        summary.config.n_routed_experts,
        cli_routes.iter().map(Vec::as_slice),
    )
    .unwrap();
    assert_eq!(
        run.heatmap, cli_heatmap,
        "heatmap differs from the CLI's trace"
    );
    assert_eq!(run.heatmap.tokens, cli.len());
    assert!(run.heatmap.counts.iter().any(|&c| c > 0));

    // Token by token, too: ids, text and routing (weights bit for bit; `ms` is a timing).
    let app_ids: Vec<u32> = run.tokens.iter().map(|t| t.id).collect();
    let cli_ids: Vec<u32> = cli.iter().map(|r| r.token).collect();
    assert_eq!(app_ids, cli_ids);
    for (t, r) in run.tokens.iter().zip(&cli_routes) {
        assert_eq!(&t.routing, r, "token {}", t.index);
    }

    // The app's export is the CLI's format: identical apart from the timings.
    let export_path = dir.path().join("app.jsonl");
    nemotron_studio::export::trace_jsonl(run, &export_path).unwrap();
    let mut app = nemotron_rt::trace::read(&export_path).unwrap();
    let mut cli = cli;
    for r in app.iter_mut().chain(cli.iter_mut()) {
        r.ms = 0.0;
    }
    assert_eq!(app, cli);
}

#[test]
fn greedy_heatmap_equals_cli_trace() {
    run_case("def main():", 16, 0.0, 1.0, 0, 0);
}

#[test]
fn sampled_heatmap_equals_cli_trace() {
    run_case("The quick brown fox", 12, 0.9, 0.95, 20, 1234);
}

/// The per-domain pictures of the report: `nemotron-rt forward --trace-routing` over a text, then
/// `nemotron-studio heatmap` over the trace, must draw exactly the heatmap of the library's own
/// prefill routing, pixel for pixel as the app exports it.
#[test]
fn prompt_heatmap_from_the_command_line_is_the_library_routing() {
    let text = "In the beginning God created the heaven and the earth.\ndef main():\n    pass\n";
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, text).unwrap();
    let trace = dir.path().join("prompt.jsonl");
    let out = Command::new(cli_binary())
        .args(["forward", "--threads", "2", "--model"])
        .arg(support::fixture())
        .arg("--prompt-file")
        .arg(&input)
        .arg("--trace-routing")
        .arg(&trace)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running nemotron-rt");
    assert!(
        out.status.success(),
        "CLI failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The library, directly: one prefill over the same tokens with routing.
    let be = nemotron_rt::backend::create(nemotron_rt::backend::BackendKind::Cpu, 2).unwrap();
    let model = nemotron_rt::model::Model::load(&support::fixture(), be, Default::default())
        .expect("fixture loads");
    let tok = nemotron_rt::tokenizer::Tokenizer::from_dir(&support::fixture()).unwrap();
    let ids = tok.encode(text, true).unwrap();
    let mut seq = model.new_sequence().unwrap();
    let opts = nemotron_rt::model::ForwardOptions {
        routing: true,
        ..Default::default()
    };
    let fwd = model.forward(&mut seq, &ids, opts).unwrap();
    let routes: Vec<Vec<TokenRoute>> = (0..ids.len())
        .map(|t| nemotron_rt::generate::routes_of(&fwd.routing, t))
        .collect();
    let want = Heatmap::from_routes(
        model.moe_layers(),
        model.config.n_routed_experts,
        routes.iter().map(Vec::as_slice),
    )
    .unwrap();
    assert_eq!(want.tokens, ids.len());

    let png = dir.path().join("heat.png");
    let csv = dir.path().join("heat.csv");
    let studio = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_nemotron-studio"))
            .arg("heatmap")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running nemotron-studio")
    };
    let fixture = support::fixture();
    let o = studio(&[
        "--model".as_ref(),
        fixture.as_os_str(),
        "--out".as_ref(),
        png.as_os_str(),
        "--csv".as_ref(),
        csv.as_os_str(),
        trace.as_os_str(),
    ]);
    assert!(
        o.status.success(),
        "nemotron-studio heatmap failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got = image::open(&png).expect("the PNG opens").to_rgb8();
    let expected = nemotron_studio::export::heatmap_image(
        &want,
        nemotron_studio::heatmap::HeatMode::Count,
        false,
    );
    assert_eq!(got.dimensions(), expected.dimensions());
    assert!(
        got == expected,
        "the PNG is not the library routing's heatmap"
    );
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), want.to_csv());

    // A trace from a model with more experts: refused, naming the file and the token.
    let bad = dir.path().join("other-model.jsonl");
    let line = std::fs::read_to_string(&trace).unwrap();
    let first = line.lines().next().unwrap();
    let mut v: serde_json::Value = serde_json::from_str(first).unwrap();
    v["routing"][0]["ids"][0] = serde_json::json!(100_000);
    std::fs::write(&bad, format!("{v}\n")).unwrap();
    let o = studio(&[
        "--model".as_ref(),
        fixture.as_os_str(),
        "--out".as_ref(),
        png.as_os_str(),
        bad.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("other-model.jsonl token 0") && err.contains("expert 100000 out of range"),
        "{err}"
    );
    // No trace at all: a usage error, not a window.
    let o = studio(&["--out".as_ref(), png.as_os_str()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("give at least one routing trace"));
}
