//! The `nemotron-rt` binary end to end: `generate` (JSON, routing trace, streamed text),
//! `forward` (logits and hidden states written to safetensors), `inspect` (parameter and byte
//! counts checked against a hand count made from the safetensors header) and bad input.
//! Reference values come from the golden files of tests/fixtures/models (HF transformers).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nemotron_rt::checkpoint::Checkpoint;
use serde_json::Value;

#[path = "support/golden.rs"]
mod golden_file;
use golden_file::{Golden, max_abs_diff};

const LOGIT_TOL: f32 = 1e-4;
const ROUTER_WEIGHT_TOL: f64 = 1e-5;
/// Hidden states: relative to the largest magnitude in the golden tensor.
const HIDDEN_REL_TOL: f32 = 2e-5;

const GROUPED: &str = "nemotronh_tiny_grouped";
const SUPER: &str = "nemotronh_tiny_grouped_nvfp4_super";
/// MoE layers of the grouped models (`M E M * E M - E`).
const MOE_LAYERS: [usize; 3] = [1, 4, 7];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

fn hf(model: &str) -> PathBuf {
    fixtures().join(model).join("hf")
}

fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Runs the binary; `generate` and `forward` get two worker threads.
fn run(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nemotron-rt"));
    cmd.args(args);
    if args[0] != "inspect" {
        cmd.args(["--threads", "2"]);
    }
    cmd.output().expect("the binary runs")
}

fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "nemotron-rt {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn as_u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("an unsigned integer")).unwrap())
        .collect()
}

fn as_f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

/// Checks one token's routing (`[{layer, ids, weights}]`) against golden rows.
fn check_route(route: &Value, golden: &Golden, ids_key: &dyn Fn(usize) -> String, row: usize) {
    let layers = route.as_array().expect("routing entry is a list");
    let got_layers: Vec<u64> = layers
        .iter()
        .map(|r| r["layer"].as_u64().expect("layer"))
        .collect();
    assert_eq!(
        got_layers,
        MOE_LAYERS.map(|l| l as u64),
        "MoE layers listed"
    );
    for r in layers {
        let l = r["layer"].as_u64().unwrap() as usize;
        let gi = golden.ids(&ids_key(l));
        let gw = golden.f32(&ids_key(l).replace("topk_ids_sorted", "topk_weights_sorted"));
        let ids = as_u32s(&r["ids"]);
        let k = ids.len();
        assert_eq!(k, 4, "top-k of the grouped model");
        assert_eq!(ids, gi[row * k..(row + 1) * k], "{}, row {row}", ids_key(l));
        let w = as_f64s(&r["weights"]);
        assert_eq!(w.len(), k);
        for (j, (&got, &want)) in w.iter().zip(&gw[row * k..(row + 1) * k]).enumerate() {
            assert!(
                (got - want as f64).abs() <= ROUTER_WEIGHT_TOL,
                "{}: row {row}, weight {j}: {got} vs golden {want}",
                ids_key(l)
            );
        }
    }
}

#[test]
fn generate_json_matches_golden_tokens_and_routing() {
    let golden = Golden::open(&fixtures().join(GROUPED).join("golden.safetensors"));
    let prompt = golden.ids("prompt1.input_ids");
    let want = golden.ids("prompt1.gen.tokens");
    let t = prompt.len();
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("routing.jsonl");
    let model = hf(GROUPED);
    let out = ok(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        &ids_arg(&prompt),
        "--max-tokens",
        "24",
        "--ignore-eos",
        "--json",
        "--trace-routing",
        trace.to_str().unwrap(),
    ]);
    let j: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(as_u32s(&j["tokens"]), want, "generated tokens");
    assert!(j["text"].is_string(), "text is a string");
    assert_eq!(j["prompt_tokens"].as_u64(), Some(t as u64));
    assert_eq!(j["finish_reason"], "length");
    for key in ["prefill_ms", "decode_tok_s"] {
        let x = j[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} is a number"));
        assert!(x > 0.0 && x.is_finite(), "{key} = {x}");
    }
    assert_eq!(j["decode_ms"].as_array().unwrap().len(), want.len() - 1);

    let routing = j["routing"].as_array().expect("routing is a list");
    assert_eq!(routing.len(), want.len(), "one routing entry per token");
    // Token 0 comes from the prefill: the routing of the last prompt position.
    check_route(
        &routing[0],
        &golden,
        &|l| format!("prompt1.router.layer{l}.topk_ids_sorted"),
        t - 1,
    );
    // Token s+1 comes from the decode step that consumed token s.
    for s in 0..want.len() - 1 {
        check_route(
            &routing[s + 1],
            &golden,
            &|l| format!("prompt1.gen.router.layer{l}.topk_ids_sorted"),
            s,
        );
    }

    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), want.len(), "one trace line per token");
    for (i, line) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["index"].as_u64(), Some(i as u64));
        assert_eq!(v["token"].as_u64(), Some(want[i] as u64));
        assert_eq!(v["routing"], routing[i], "trace line {i} routing");
    }
}

#[test]
fn generate_text_prompt_streams_text_and_stats() {
    let dir = hf(GROUPED);
    let prompt = "Return the number of items in a container.";
    // The reference: the same request through the library.
    let be = nemotron_rt::backend::create(nemotron_rt::backend::BackendKind::Cpu, 2).unwrap();
    let model = nemotron_rt::model::Model::load(&dir, be, Default::default()).unwrap();
    let tok = std::sync::Arc::new(nemotron_rt::tokenizer::Tokenizer::from_dir(&dir).unwrap());
    let ids = tok.encode(prompt, true).unwrap();
    let params = nemotron_rt::generate::GenerateParams {
        max_tokens: 12,
        ignore_eos: true,
        ..Default::default()
    };
    let g =
        nemotron_rt::generate::generate(&model, Some(&tok), &ids, &params, &mut |_| true).unwrap();
    assert!(!g.text.is_empty(), "the reference produced some text");

    let out = ok(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-tokens",
        "12",
        "--ignore-eos",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, format!("{}\n", g.text), "streamed text");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let stats = format!("[{} prompt tokens, prefill ", ids.len());
    assert!(stderr.contains(&stats), "stats line `{stats}` in {stderr}");
    assert!(
        stderr.contains("12 tokens, decode ") && stderr.contains("finished: Length"),
        "stats line in {stderr}"
    );
}

#[test]
fn forward_writes_golden_logits_and_hidden_states() {
    let golden = Golden::open(&fixtures().join(GROUPED).join("golden.safetensors"));
    let prompt = golden.ids("prompt2.input_ids");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("out.safetensors");
    let model = hf(GROUPED);
    ok(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        &ids_arg(&prompt),
        "--out",
        file.to_str().unwrap(),
    ]);
    let out = Checkpoint::open_file(&file).expect("forward output opens");
    let logits = out.get("logits").expect("logits saved");
    assert_eq!(logits.shape, [prompt.len(), 512]);
    let d = max_abs_diff(
        &logits.to_f32_vec().unwrap(),
        &golden.f32("prompt2.prefill_logits"),
    );
    assert!(d <= LOGIT_TOL, "logits differ by {d}");
    let mut names: Vec<String> = (0..8).map(|i| format!("layer{i}")).collect();
    names.push("embeddings".into());
    names.push("final_norm".into());
    for name in &names {
        let h = out
            .get(&format!("hidden.{name}"))
            .unwrap_or_else(|| panic!("hidden.{name} saved"));
        assert_eq!(h.shape, [prompt.len(), 64], "hidden.{name} shape");
        let want = golden.f32(&format!("prompt2.hidden.{name}"));
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.0);
        let d = max_abs_diff(&h.to_f32_vec().unwrap(), &want);
        assert!(
            d <= HIDDEN_REL_TOL * scale,
            "hidden.{name} differs by {d} (max |golden| {scale})"
        );
    }
    assert_eq!(out.len(), 1 + names.len(), "nothing else in the file");
}

/// `forward --trace-routing`: every input position's routing, equal to the reference's prefill
/// routing row for row, with nothing else written when `--out` is not given.
#[test]
fn forward_traces_the_golden_prefill_routing_of_every_position() {
    let golden = Golden::open(&fixtures().join(GROUPED).join("golden.safetensors"));
    let prompt = golden.ids("prompt1.input_ids");
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("prompt.jsonl");
    let model = hf(GROUPED);
    ok(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        &ids_arg(&prompt),
        "--trace-routing",
        trace.to_str().unwrap(),
    ]);
    let records = nemotron_rt::trace::read(&trace).expect("the trace reads back");
    assert_eq!(records.len(), prompt.len(), "one line per input token");
    let text = std::fs::read_to_string(&trace).unwrap();
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["index"].as_u64(), Some(i as u64));
        assert_eq!(v["token"].as_u64(), Some(prompt[i] as u64));
        check_route(
            &v["routing"],
            &golden,
            &|l| format!("prompt1.router.layer{l}.topk_ids_sorted"),
            i,
        );
    }
    let files: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "only the trace is written");

    // From text: the positions are the tokenizer's ids and the pieces spell the text back.
    let text = "def count(items):\n    return len(items)\n";
    let file = tmp.path().join("input.txt");
    std::fs::write(&file, text).unwrap();
    ok(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--prompt-file",
        file.to_str().unwrap(),
        "--trace-routing",
        trace.to_str().unwrap(),
    ]);
    let tok = nemotron_rt::tokenizer::Tokenizer::from_dir(&model).unwrap();
    let ids = tok.encode(text, true).unwrap();
    let records = nemotron_rt::trace::read(&trace).unwrap();
    let got: Vec<u32> = records.iter().map(|r| r.token).collect();
    assert_eq!(got, ids, "trace tokens are the tokenizer's encoding");
    let spelled: String = records.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(
        spelled,
        tok.decode(&ids, true).unwrap(),
        "pieces spell the input"
    );

    // Neither output, or no input: refused by clap before anything loads.
    let o = run(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    assert!(!o.status.success());
    let o = run(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--trace-routing",
        "t.jsonl",
    ]);
    assert!(!o.status.success());
}

/// Counts made straight from a safetensors header, independently of the crate's loader.
struct HandCount {
    params: u64,
    weight_bytes: u64,
    bytes_per_token: f64,
}

fn dtype_size(dtype: &str) -> u64 {
    match dtype {
        "F32" | "I32" => 4,
        "F16" | "BF16" => 2,
        "F8_E4M3" | "U8" | "I8" | "BOOL" => 1,
        "I64" => 8,
        other => panic!("unexpected dtype {other}"),
    }
}

/// Definitions (they follow the loader's books, src/model/loader.rs + src/weights.rs):
/// * params: every tensor's numel, an NVFP4 weight (`U8 [out, in/2]`) counting `out * in`,
///   scale tensors (`weight_scale`, `weight_scale_2`, `input_scale`, `k_scale`, `v_scale`)
///   counting nothing;
/// * weight bytes: the stored bytes of every tensor a kernel reads to apply the weights:
///   weights, NVFP4 block scales (`weight_scale` F8_E4M3), per-tensor scales (`weight_scale`
///   of FP8, `weight_scale_2` of NVFP4, 4 bytes each, F32 scalars); NOT the activation scales
///   (`input_scale`, unused by the exact path) nor the KV-cache scales (`k_scale`, `v_scale`);
/// * bytes per token: weight bytes, but the embedding table counts one row
///   (`hidden_size × dtype size`) and routed experts (`*.experts.<j>.*`) count `k / E` of their
///   bytes.
fn hand_count(dir: &Path) -> HandCount {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let hidden = cfg["hidden_size"].as_u64().unwrap();
    let k = cfg["num_experts_per_tok"].as_f64().unwrap();
    let e = cfg["n_routed_experts"].as_f64().unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut c = HandCount {
        params: 0,
        weight_bytes: 0,
        bytes_per_token: 0.0,
    };
    let mut saw_nvfp4 = false;
    for (name, entry) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let dtype = entry["dtype"].as_str().unwrap();
        let shape: Vec<u64> = entry["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        let off: Vec<u64> = entry["data_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        let nbytes = off[1] - off[0];
        let numel: u64 = shape.iter().product();
        assert_eq!(
            nbytes,
            numel * dtype_size(dtype),
            "{name}: header is consistent"
        );
        let suffix = name.rsplit('.').next().unwrap();
        let is_scale = matches!(
            suffix,
            "weight_scale" | "weight_scale_2" | "input_scale" | "k_scale" | "v_scale"
        );
        if !is_scale {
            c.params += if dtype == "U8" {
                saw_nvfp4 = true;
                numel * 2
            } else {
                numel
            };
        }
        if matches!(suffix, "input_scale" | "k_scale" | "v_scale") {
            continue;
        }
        c.weight_bytes += nbytes;
        let routed = name
            .split_once(".experts.")
            .is_some_and(|(_, rest)| rest.starts_with(|ch: char| ch.is_ascii_digit()));
        c.bytes_per_token += if name == "backbone.embeddings.weight" {
            (hidden * dtype_size(dtype)) as f64
        } else if routed {
            nbytes as f64 * k / e
        } else {
            nbytes as f64
        };
    }
    assert_eq!(
        saw_nvfp4,
        dir.join("hf_quant_config.json").exists(),
        "NVFP4 weights exactly in the quantized fixture"
    );
    c
}

#[test]
fn inspect_counts_match_a_hand_count() {
    for model in [GROUPED, SUPER] {
        let dir = hf(model);
        let out = ok(&["inspect", "--model", dir.to_str().unwrap(), "--json"]);
        let j: Value = serde_json::from_slice(&out.stdout).expect("inspect --json is JSON");
        let want = hand_count(&dir);
        assert_eq!(j["layer_pattern"], "MEM*EM-E", "{model}");
        assert_eq!(j["layers"].as_u64(), Some(8), "{model}");
        assert_eq!(
            j["total_params"].as_u64(),
            Some(want.params),
            "{model}: total_params"
        );
        assert_eq!(
            j["weight_bytes"].as_u64(),
            Some(want.weight_bytes),
            "{model}: weight_bytes"
        );
        let bpt = j["bytes_per_token"].as_f64().expect("bytes_per_token");
        assert!(
            (bpt - want.bytes_per_token).abs() <= 1e-9 * want.bytes_per_token,
            "{model}: bytes_per_token {bpt}, hand count {}",
            want.bytes_per_token
        );
        // The groups add up to the totals.
        let groups = j["groups"].as_array().unwrap();
        let sum: u64 = groups.iter().map(|g| g["params"].as_u64().unwrap()).sum();
        assert_eq!(sum, want.params, "{model}: group params");
        let sum: u64 = groups.iter().map(|g| g["bytes"].as_u64().unwrap()).sum();
        assert_eq!(sum, want.weight_bytes, "{model}: group bytes");
        assert_eq!(j["kv_cache_fp8"].as_bool(), Some(model == SUPER), "{model}");

        let out = ok(&["inspect", "--model", dir.to_str().unwrap()]);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("MEM*EM-E"),
            "{model}: plain inspect output:\n{text}"
        );
    }
}

#[test]
fn bad_model_path_is_named_without_a_panic() {
    let out = run(&["generate", "--model", "/nonexistent", "--prompt-ids", "1"]);
    assert!(!out.status.success(), "a missing model must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent"),
        "stderr names the path: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
}

#[test]
fn q8_activations_on_a_gpu_backend_are_refused() {
    let model = hf("nemotronh_tiny_grouped_nvfp4");
    let model = model.to_str().unwrap();
    let args = ["--model", model, "--prompt-ids", "1", "--max-tokens", "1"];
    let out = run(&[
        &["generate", "--backend", "wgpu", "--cpu-activations", "q8"][..],
        &args,
    ]
    .concat());
    assert!(!out.status.success(), "q8 on wgpu must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--cpu-activations q8"),
        "names the flag: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    // On the CPU it runs and generates.
    ok(&[&["generate", "--cpu-activations", "q8"][..], &args].concat());
}

#[test]
fn prompt_longer_than_max_context_is_refused() {
    let model = hf(GROUPED);
    let out = run(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        "1,2,3,4,5",
        "--max-context",
        "3",
    ]);
    assert!(!out.status.success(), "a too-long prompt must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at most 3"), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
}

/// A checkpoint with `tie_word_embeddings` and no `lm_head.weight`: it loads, generates, and
/// `inspect` counts the shared table once while still reading it whole for every token.
#[test]
fn tied_embeddings_are_stored_once_and_read_per_token() {
    let src = hf(GROUPED);
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    let st = tmp.path().join("model.safetensors");
    let b = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    header.as_object_mut().unwrap().remove("lm_head.weight");
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&b[8 + n..]);
    std::fs::write(&st, out).unwrap();
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["tie_word_embeddings"] = Value::Bool(true);
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();

    let dir = tmp.path().to_str().unwrap();
    let untied: Value = serde_json::from_slice(
        &ok(&["inspect", "--model", src.to_str().unwrap(), "--json"]).stdout,
    )
    .unwrap();
    let tied: Value =
        serde_json::from_slice(&ok(&["inspect", "--model", dir, "--json"]).stdout).unwrap();
    let (v, d) = (
        cfg["vocab_size"].as_u64().unwrap(),
        cfg["hidden_size"].as_u64().unwrap(),
    );
    assert_eq!(
        tied["total_params"].as_u64().unwrap(),
        untied["total_params"].as_u64().unwrap() - v * d,
        "the shared table counts once"
    );
    // Untied: one embedding row + the whole lm_head (same dtype) per token; tied: one row +
    // the whole table. Same bytes.
    assert_eq!(tied["bytes_per_token"], untied["bytes_per_token"]);
    let g = ok(&[
        "generate",
        "--model",
        dir,
        "--prompt-ids",
        "1,2,3",
        "--max-tokens",
        "4",
        "--ignore-eos",
        "--json",
    ]);
    let g: Value = serde_json::from_slice(&g.stdout).unwrap();
    assert_eq!(g["tokens"].as_array().unwrap().len(), 4);
}

/// wgpu with no usable adapter, or a named adapter that does not exist: a clear error, no panic.
#[test]
fn missing_wgpu_adapter_is_a_clear_error() {
    let model = hf(GROUPED);
    let model = model.to_str().unwrap();
    // DX12 does not exist on Linux: wgpu finds no adapter at all.
    let out = Command::new(env!("CARGO_BIN_EXE_nemotron-rt"))
        .args([
            "generate",
            "--model",
            model,
            "--prompt-ids",
            "1",
            "--backend",
            "wgpu",
        ])
        .env("WGPU_BACKEND", "dx12")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(err.contains("no adapter"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = run(&[
        "generate",
        "--model",
        model,
        "--prompt-ids",
        "1",
        "--backend",
        "wgpu",
        "--adapter",
        "no-such-gpu",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!err.contains("panicked"), "{err}");
    // Either no adapter exists at all here, or the known ones are listed.
    assert!(
        err.contains("no adapter named like \"no-such-gpu\"; available:")
            || err.contains("no adapter found"),
        "{err}"
    );
}

/// Refused with an error naming the thing and what was expected, never a panic or a hang:
/// `forward --out` or `--trace-routing` onto a device or onto the checkpoint being read (whose
/// weights are mapped: truncating one would kill the process), `--model` naming a file, a
/// thread count no machine needs, a bench longer than the model's context, an empty stop
/// string, a negative temperature and `--adapter` on a backend that has no adapters.
#[test]
fn bad_paths_and_ranges_are_refused_by_name() {
    let model = hf(GROUPED);
    let m = model.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // A checkpoint copy that `--out` must not overwrite.
    let copy = tmp.path().join("ckpt");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(&model).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let weights = copy.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec![
                "forward",
                "--model",
                copy.to_str().unwrap(),
                "--prompt-ids",
                "3,4",
                "--out",
            ]
            .into_iter()
            .map(String::from)
            .chain([weights.display().to_string()])
            .collect(),
            vec!["--out", "checkpoint being read"],
        ),
        (
            [
                "forward",
                "--model",
                m,
                "--prompt-ids",
                "3,4",
                "--out",
                "/dev/null",
            ]
            .map(String::from)
            .to_vec(),
            vec!["/dev/null", "not a regular file"],
        ),
        (
            [
                "generate",
                "--model",
                &format!("{m}/config.json"),
                "--prompt-ids",
                "3",
            ]
            .map(String::from)
            .to_vec(),
            vec!["config.json", "is a file", "folder"],
        ),
        (
            [
                "bench",
                "--model",
                m,
                "--prompt-len",
                "5000",
                "--gen",
                "4",
                "--repeat",
                "1",
            ]
            .map(String::from)
            .to_vec(),
            vec!["--prompt-len 5000", "max_position_embeddings"],
        ),
        (
            [
                "generate",
                "--model",
                copy.to_str().unwrap(),
                "--prompt-ids",
                "3",
                "--trace-routing",
            ]
            .into_iter()
            .map(String::from)
            .chain([weights.display().to_string()])
            .collect(),
            vec!["--trace-routing", "checkpoint being read"],
        ),
        (
            ["generate", "--model", m, "--prompt-ids", "3", "--stop", ""]
                .map(String::from)
                .to_vec(),
            vec!["--stop", "must not be empty"],
        ),
        (
            [
                "generate",
                "--model",
                m,
                "--prompt-ids",
                "3",
                "--temperature",
                "-1",
            ]
            .map(String::from)
            .to_vec(),
            vec!["temperature", "-1"],
        ),
        (
            [
                "generate",
                "--model",
                m,
                "--prompt-ids",
                "3",
                "--adapter",
                "nvidia",
            ]
            .map(String::from)
            .to_vec(),
            vec!["--adapter nvidia", "--backend wgpu"],
        ),
    ];
    for (args, needles) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for n in needles {
            assert!(
                stderr.contains(n),
                "{args:?}: stderr should mention `{n}`: {stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    }
    assert_eq!(
        std::fs::read(&weights).unwrap(),
        before,
        "the checkpoint is untouched"
    );
    // Not through `run`, which adds `--threads 2` itself.
    let out = Command::new(env!("CARGO_BIN_EXE_nemotron-rt"))
        .args([
            "generate",
            "--model",
            m,
            "--prompt-ids",
            "3",
            "--threads",
            "100000",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("100000") && stderr.contains("--threads"),
        "{stderr}"
    );
}

/// An output may go into the checkpoint's folder, and be written again there, as long as it is
/// not one of the files loading reads: configs, tokenizer and weights (a shard named by the
/// index too) are refused, and stay untouched.
#[test]
fn outputs_may_live_beside_a_checkpoint_but_never_over_it() {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(hf(GROUPED)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    let m = tmp.path().to_str().unwrap();
    let out = tmp.path().join("logits.safetensors");
    let forward = |to: &Path| {
        run(&[
            "forward",
            "--model",
            m,
            "--prompt-ids",
            "3,4",
            "--out",
            to.to_str().unwrap(),
        ])
    };
    for round in 0..2 {
        let o = forward(&out);
        assert!(
            o.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(Checkpoint::open_file(&out).is_ok(), "round {round}");
    }
    // A sharded copy: the index names its shard, which must be refused under any name.
    let sharded = tmp.path().join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    for e in std::fs::read_dir(tmp.path()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if e.path().is_file() && name != "model.safetensors" && name != "logits.safetensors" {
            std::fs::copy(e.path(), sharded.join(&name)).unwrap();
        }
    }
    std::fs::copy(
        tmp.path().join("model.safetensors"),
        sharded.join("w-1.safetensors"),
    )
    .unwrap();
    let map: serde_json::Map<String, Value> = Checkpoint::open(tmp.path())
        .unwrap()
        .tensors()
        .map(|t| (t.name.clone(), Value::from("w-1.safetensors")))
        .collect();
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::to_vec(&serde_json::json!({ "weight_map": map })).unwrap(),
    )
    .unwrap();
    for (dir, file) in [
        (tmp.path(), "config.json"),
        (tmp.path(), "model.safetensors"),
        (tmp.path(), "tokenizer.json"),
        (sharded.as_path(), "w-1.safetensors"),
        (sharded.as_path(), "model.safetensors.index.json"),
    ] {
        let target = dir.join(file);
        let before = std::fs::read(&target).unwrap();
        let o = run(&[
            "forward",
            "--model",
            dir.to_str().unwrap(),
            "--prompt-ids",
            "3,4",
            "--out",
            target.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{file} must be refused");
        assert!(stderr.contains("checkpoint being read"), "{file}: {stderr}");
        assert_eq!(std::fs::read(&target).unwrap(), before, "{file} untouched");
    }
}

/// Without a usable tokenizer, generation from ids still runs, but says so and prints the ids
/// it generated rather than an empty text.
#[test]
fn generation_without_a_tokenizer_prints_ids_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(hf(GROUPED)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    std::fs::write(tmp.path().join("tokenizer.json"), "").unwrap();
    let m = tmp.path().to_str().unwrap();
    let args = ["--model", m, "--prompt-ids", "3,4", "--max-tokens", "3"];
    let out = ok(&[&["generate"][..], &args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no usable tokenizer") && stderr.contains("tokenizer.json"),
        "{stderr}"
    );
    let json = ok(&[&["generate", "--json"][..], &args].concat());
    let j: Value = serde_json::from_slice(&json.stdout).unwrap();
    let ids: Vec<String> = as_u32s(&j["tokens"]).iter().map(u32::to_string).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ids
    );
}

/// `forward` over more tokens than a prefill piece runs the prompt in pieces and stitches the
/// rows back in order: logits and hidden states agree with one in-process pass over them all.
#[test]
fn forward_in_pieces_stitches_rows_in_order() {
    use nemotron_rt::backend::{self, BackendKind};
    use nemotron_rt::model::{ForwardOptions, LoadOptions, Model};
    let golden = Golden::open(&fixtures().join(GROUPED).join("golden.safetensors"));
    let base = golden.ids("prompt2.input_ids");
    let prompt: Vec<u32> = base.iter().cycle().take(1100).copied().collect();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("out.safetensors");
    let dir = hf(GROUPED);
    ok(&[
        "forward",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-ids",
        &ids_arg(&prompt),
        "--out",
        file.to_str().unwrap(),
    ]);
    let out = Checkpoint::open_file(&file).unwrap();
    let be = backend::create(BackendKind::Cpu, 2).unwrap();
    let model = Model::load(&dir, be.clone(), LoadOptions::default()).unwrap();
    let mut seq = model.new_sequence().unwrap();
    let opts = ForwardOptions {
        all_logits: true,
        hidden: true,
        ..Default::default()
    };
    let whole = model.forward(&mut seq, &prompt, opts).unwrap();
    let mut want = vec![("logits".to_string(), be.download(&whole.logits).unwrap())];
    want.extend(
        whole
            .hidden
            .into_iter()
            .map(|(n, h)| (format!("hidden.{n}"), h)),
    );
    for (name, w) in want {
        let got = out.get(&name).unwrap_or_else(|| panic!("{name} saved"));
        assert_eq!(got.shape[0], prompt.len(), "{name} rows");
        let scale = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let d = max_abs_diff(&got.to_f32_vec().unwrap(), &w);
        assert!(d <= 1e-5 * scale, "{name} differs by {d} (scale {scale})");
    }
}
