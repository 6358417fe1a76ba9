//! The command line's CUDA paths end to end: `devices`, `generate --backend cuda` (greedy tokens
//! against the reference's), `bench --backend cuda` (the bandwidth probe and its timing), and
//! running out of device memory. On a machine without a GPU the child processes find the CPU
//! emulation of the driver (tests/cuda_emulator/) through `LD_LIBRARY_PATH`; with a GPU they
//! use it, and the out-of-memory check, which needs a device of a chosen size, is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

#[path = "support/cuda_emulator.rs"]
mod cuda_emulator;
#[path = "support/golden.rs"]
mod golden_file;
use golden_file::Golden;

const SUPER: &str = "nemotronh_tiny_grouped_nvfp4_super";

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(SUPER)
}

/// The CLI with CUDA available, or `None` (reason printed) where it cannot be.
fn cli(env: &[(&str, &str)]) -> Option<Command> {
    let lib = match cuda_emulator::library_dir() {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!("skipped: no CUDA driver, and the emulator: {e}");
            return None;
        }
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nemotron-rt"));
    if let Some(dir) = lib {
        let path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        cmd.env("LD_LIBRARY_PATH", format!("{}:{path}", dir.display()));
    }
    cmd.envs(env.iter().copied());
    Some(cmd)
}

fn run(mut cmd: Command, args: &[&str]) -> Output {
    cmd.args(args).output().expect("the binary runs")
}

/// `nemotron-rt <sub> --backend cuda --model <the Super-recipe fixture> <args>`.
fn on_cuda(cmd: Command, sub: &str, args: &[&str]) -> Output {
    let model = model_dir().join("hf");
    let head = [sub, "--backend", "cuda", "--model", model.to_str().unwrap()];
    run(cmd, &[&head[..], args].concat())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn devices_lists_the_cuda_device() {
    let Some(cmd) = cli(&[]) else { return };
    let out = run(cmd, &["devices"]);
    assert!(out.status.success(), "devices failed: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("cuda"))
        .expect("a cuda line");
    assert!(line.contains("[sm_"), "no compute capability in {line:?}");
    assert!(line.contains("memory"), "no memory size in {line:?}");
}

/// What the app offers: `devices::list()` has each CUDA device as a usable entry whose options
/// open it, and a model generates the reference's tokens through it (in this process).
#[test]
fn the_device_list_offers_cuda_devices_that_open() {
    if let Err(e) = cuda_emulator::install() {
        eprintln!("skipped: {e}");
        return;
    }
    let devices = nemotron_rt::devices::list();
    let cuda: Vec<_> = devices
        .iter()
        .filter(|d| d.kind == Some(nemotron_rt::backend::BackendKind::Cuda))
        .collect();
    assert!(
        !cuda.is_empty() && cuda.iter().all(|d| d.usable()),
        "{cuda:?}"
    );
    let golden = Golden::open(&model_dir().join("golden.safetensors"));
    let prompt = golden.ids("prompt1.input_ids");
    let want = golden.ids("prompt1.gen.tokens");
    for d in cuda {
        assert!(d.details.iter().any(|x| x.starts_with("sm_")), "{d:?}");
        let be =
            nemotron_rt::backend::create_with(nemotron_rt::backend::BackendKind::Cuda, &d.options)
                .unwrap();
        let model = nemotron_rt::model::Model::load(
            &model_dir().join("hf"),
            be,
            nemotron_rt::model::LoadOptions::default(),
        )
        .unwrap();
        let params = nemotron_rt::generate::GenerateParams {
            max_tokens: want.len(),
            ignore_eos: true,
            ..Default::default()
        };
        let out =
            nemotron_rt::generate::generate(&model, None, &prompt, &params, &mut |_| true).unwrap();
        assert_eq!(out.tokens, want, "{}: greedy tokens", d.label);
    }
}

#[test]
fn generate_on_cuda_matches_the_reference_tokens() {
    let Some(cmd) = cli(&[]) else { return };
    let golden = Golden::open(&model_dir().join("golden.safetensors"));
    let prompt = golden.ids("prompt0.input_ids");
    let want = golden.ids("prompt0.gen.tokens");
    let ids = prompt
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let n = want.len().to_string();
    let out = on_cuda(
        cmd,
        "generate",
        &[
            "--prompt-ids",
            &ids,
            "--max-tokens",
            &n,
            "--ignore-eos",
            "--json",
        ],
    );
    assert!(out.status.success(), "generate failed: {}", stderr(&out));
    let j: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    let got: Vec<u32> = j["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(got, want, "greedy tokens on CUDA");
}

#[test]
fn bench_on_cuda_reports_speed_and_bandwidth() {
    let Some(cmd) = cli(&[]) else { return };
    let out = on_cuda(
        cmd,
        "bench",
        &["--prompt-len", "9", "--gen", "4", "--repeat", "1", "--json"],
    );
    assert!(out.status.success(), "bench failed: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let j: Value = serde_json::from_str(text.trim()).expect("stdout is JSON");
    let s = j.to_string();
    for key in ["decode", "prefill"] {
        assert!(s.contains(key), "no {key} in {s}");
    }
}

#[test]
fn running_out_of_device_memory_names_the_bytes() {
    if cuda_emulator::library_dir().ok().flatten().is_none() {
        eprintln!("skipped: needs the emulator, whose device size can be chosen");
        return;
    }
    let Some(cmd) = cli(&[("NEMOTRON_CUDA_EMULATOR_MEMORY", "200000")]) else {
        return;
    };
    let out = on_cuda(cmd, "generate", &["--prompt", "hi", "--max-tokens", "2"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "a 200 kB device held the model");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains("out of"), "no out-of-memory message: {err}");
    assert!(err.contains("free"), "no free bytes in: {err}");
}

/// Each compute capability gets its own 4-bit path: `devices` names it, `--cuda-fp4 on`
/// generates through it on both Blackwell families (W4A4: tokens come, finite, not compared with
/// the reference), and on a GPU without FP4 tensor cores it is a clear error naming the GPU.
/// Needs the emulator, whose compute capability can be chosen.
#[test]
fn each_blackwell_family_takes_its_fp4_path_and_others_refuse_it() {
    if cuda_emulator::library_dir().ok().flatten().is_none() {
        eprintln!("skipped: needs the emulator, whose compute capability can be chosen");
        return;
    }
    for (cc, path) in [
        ("9.0", "weight-only NVFP4"),
        ("10.0", "tcgen05.mma block_scale"),
        ("12.0", "mma.sync block_scale"),
    ] {
        let env = [("NEMOTRON_CUDA_EMULATOR_CC", cc)];
        let out = run(cli(&env).unwrap(), &["devices"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.starts_with("cuda")).unwrap_or("");
        assert!(
            line.contains(path),
            "cc {cc}: {line:?} does not name {path:?}"
        );
        let args = [
            "--prompt-ids",
            "1,7,42",
            "--max-tokens",
            "3",
            "--ignore-eos",
        ];
        let out = on_cuda(
            cli(&env).unwrap(),
            "generate",
            &[&args[..], &["--cuda-fp4", "on", "--json"]].concat(),
        );
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "cc {cc}: panicked: {err}");
        if cc == "9.0" {
            assert!(!out.status.success(), "cc 9.0 ran W4A4");
            assert!(
                err.contains("needs a Blackwell GPU") && err.contains("sm_90"),
                "cc 9.0: unclear error: {err}"
            );
            continue;
        }
        assert!(out.status.success(), "cc {cc}: generate failed: {err}");
        let j: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
        assert_eq!(
            j["tokens"].as_array().map(Vec::len),
            Some(3),
            "cc {cc}: {j}"
        );
    }
}
