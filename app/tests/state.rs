//! The app's state driven without a window: loading, failures, stopping, switching backends,
//! comparing, exports.

mod support;

use std::path::Path;

use nemotron_rt::generate::{FinishReason, TokenRoute};
use nemotron_studio::colormap;
use nemotron_studio::heatmap::{HeatMode, Heatmap};
use nemotron_studio::recent::Recent;
use nemotron_studio::state::{AppState, CompareStats, Level, agreement};

fn errors(s: &AppState) -> Vec<String> {
    s.notices
        .iter()
        .filter(|n| n.level == Level::Error)
        .map(|n| n.text.clone())
        .collect()
}

#[test]
fn bad_folders_are_messages_not_crashes() {
    let mut s = AppState::new(None);
    s.set_devices(support::fixed_devices());
    s.open_model(Path::new("/definitely/not/here"));
    assert!(s.wait_idle(support::WAIT));
    assert!(s.loaded.is_none());
    assert!(
        errors(&s).iter().any(|e| e.contains("not a folder")),
        "{:?}",
        s.notices
    );

    // A folder that exists but holds no checkpoint: the library's error, shown as is.
    let empty = tempfile::tempdir().unwrap();
    s.open_model(empty.path());
    assert!(s.wait_idle(support::WAIT));
    assert!(s.loaded.is_none());
    let errs = errors(&s);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[1].contains("config.json"), "{errs:?}");

    // A truncated weight file.
    let broken = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(support::fixture()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, broken.path().join(p.file_name().unwrap())).unwrap();
    }
    let st = broken.path().join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&st)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    s.open_model(broken.path());
    assert!(s.wait_idle(support::WAIT));
    assert!(s.loaded.is_none());
    assert_eq!(errors(&s).len(), 3, "{:?}", s.notices);
}

#[test]
fn an_unavailable_backend_is_a_message() {
    let mut s = support::loaded_state();
    let cuda = s.devices.iter().position(|d| d.label == "CUDA").unwrap();
    s.device = cuda;
    s.open_model(&support::fixture());
    assert!(s.wait_idle(support::WAIT));
    assert!(
        errors(&s)
            .iter()
            .any(|e| e.contains("CUDA cannot be used") && e.contains("no driver found")),
        "{:?}",
        s.notices
    );
    // The model that was open stays usable.
    assert!(s.loaded.is_some());
}

#[test]
fn generation_without_a_model_is_a_message() {
    let mut s = AppState::new(None);
    s.generate();
    assert!(!s.is_busy());
    assert!(errors(&s).iter().any(|e| e.contains("open a model")));
    let mut s = support::loaded_state();
    s.settings.top_p = 0.0;
    s.settings.temperature = 1.0;
    s.generate();
    assert!(!s.is_busy());
    assert!(
        errors(&s).iter().any(|e| e.contains("top_p")),
        "{:?}",
        s.notices
    );
}

#[test]
fn stop_cancels_a_generation() {
    let mut s = support::loaded_state();
    s.settings.max_tokens = 1_000_000;
    s.generate();
    // Let a few tokens through, then stop.
    while s.run.as_ref().is_none_or(|r| r.tokens.len() < 3) {
        s.wait_idle(std::time::Duration::from_millis(20));
        assert!(
            s.is_busy(),
            "finished before it could be stopped: {:?}",
            s.run.as_ref().map(|r| r.finish)
        );
    }
    s.stop();
    assert!(s.wait_idle(support::WAIT));
    let run = s.run.as_ref().unwrap();
    assert_eq!(run.finish, Some(FinishReason::Cancelled));
    assert!(run.tokens.len() < 4000);
    assert_eq!(run.heatmap.tokens, run.tokens.len());
}

#[test]
fn speed_figures_follow_the_token_timings() {
    let mut s = support::loaded_state();
    s.settings.max_tokens = 8;
    support::generate(&mut s);
    let run = s.run.as_ref().unwrap();
    assert_eq!(run.tokens.len(), 8);
    let series = run.decode_series();
    assert_eq!(series.len(), 7);
    for (p, t) in series.iter().zip(&run.tokens[1..]) {
        assert_eq!(p[0], t.index as f64);
        assert!((p[1] - 1000.0 / t.ms).abs() < 1e-9);
    }
    let decode_ms: f64 = run.tokens[1..].iter().map(|t| t.ms).sum();
    let avg = run.average_decode_tok_s().unwrap();
    assert!((avg - 7000.0 / decode_ms).abs() < 1e-9);
    assert_eq!(run.ttft_ms(), run.prefill_ms);
    assert!(run.prefill_tok_s().unwrap() > 0.0);
    assert!(s.measured_bytes_per_token().unwrap() > 0.0);
}

#[test]
fn switching_backend_reloads_and_comparing_agrees() {
    if !support::can_render("switching_backend_reloads_and_comparing_agrees") {
        return;
    }
    let mut s = support::loaded_state();
    assert_eq!(s.loaded.as_ref().unwrap().summary.backend.name, "cpu");
    s.select_device(1);
    assert!(s.wait_idle(support::WAIT));
    assert_eq!(
        s.loaded.as_ref().unwrap().summary.backend.name,
        "wgpu",
        "{:?}",
        s.notices
    );

    s.settings.max_tokens = 8;
    s.compare_pick = vec![true, true, false];
    s.run_compare();
    assert!(s.wait_idle(support::WAIT));
    assert_eq!(s.compare.len(), 2);
    let agr = s.compare_agreement();
    for (run, a) in s.compare.iter().zip(&agr) {
        let stats = run.result.as_ref().expect("both backends run");
        assert_eq!(stats.tokens.len(), 8);
        let a = a.as_ref().unwrap();
        // The wgpu backend matches the CPU reference token for token and expert for expert.
        assert!(a.tokens_agree, "{}: {a:?}", run.device_label);
        assert!(a.per_layer.iter().all(|&(_, f)| f == 1.0), "{a:?}");
    }
}

fn stats(tokens: &[u32], routes: &[&[u32]]) -> CompareStats {
    CompareStats {
        prefill_tok_s: 1.0,
        decode_tok_s: 1.0,
        ttft_ms: 1.0,
        tokens: tokens.to_vec(),
        text: String::new(),
        routing: routes
            .iter()
            .map(|ids| {
                vec![TokenRoute {
                    layer: 3,
                    ids: ids.to_vec(),
                    weights: vec![0.5; ids.len()],
                }]
            })
            .collect(),
        finish_reason: FinishReason::Length,
    }
}

#[test]
fn agreement_counts_routing_up_to_the_first_divergence() {
    let a = stats(&[1, 2, 3, 4], &[&[0, 1], &[2, 3], &[4, 5], &[6, 7]]);
    assert_eq!(agreement(&a, &a).per_layer, vec![(3, 1.0)]);
    assert!(agreement(&a, &a).tokens_agree);
    // Token 2 differs; the routing of tokens 0..=2 is comparable, token 1's differs.
    let b = stats(&[1, 2, 9, 4], &[&[0, 1], &[2, 4], &[4, 5], &[0, 0]]);
    let g = agreement(&a, &b);
    assert!(!g.tokens_agree);
    assert_eq!(g.first_divergence, Some(2));
    assert_eq!(g.compared_tokens, 3);
    assert!((g.per_layer[0].1 - 2.0 / 3.0).abs() < 1e-12);
    // A shorter run diverges where it ends.
    let c = stats(&[1, 2], &[&[0, 1], &[2, 3]]);
    assert_eq!(agreement(&a, &c).first_divergence, Some(2));
}

#[test]
fn heatmap_rejects_routing_of_another_model() {
    let mut h = Heatmap::new(vec![1, 3], 4);
    let ok = [TokenRoute {
        layer: 3,
        ids: vec![0, 2],
        weights: vec![0.25, 0.75],
    }];
    h.add_token(&ok).unwrap();
    assert_eq!(h.value(HeatMode::Count, 1, 2), 1.0);
    assert_eq!(h.value(HeatMode::Weight, 1, 2), 0.75);
    assert_eq!(h.value(HeatMode::Count, 0, 2), 0.0);
    let bad_layer = [TokenRoute {
        layer: 2,
        ids: vec![0],
        weights: vec![1.0],
    }];
    assert!(h.add_token(&bad_layer).is_err());
    let bad_expert = [TokenRoute {
        layer: 1,
        ids: vec![4],
        weights: vec![1.0],
    }];
    assert!(h.add_token(&bad_expert).is_err());
}

#[test]
fn exports_write_the_run() {
    let mut s = support::loaded_state();
    s.settings.max_tokens = 6;
    support::generate(&mut s);
    let run = s.run.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();

    let csv = nemotron_studio::export::trace_csv(run);
    let k = s
        .loaded
        .as_ref()
        .unwrap()
        .summary
        .config
        .num_experts_per_tok;
    let moe = s.loaded.as_ref().unwrap().summary.moe_layers.len();
    assert_eq!(csv.lines().count(), 1 + 6 * moe * k);

    let h = &run.heatmap;
    let png = dir.path().join("h.png");
    nemotron_studio::export::heatmap_png(h, HeatMode::Count, false, &png).unwrap();
    let img = image::open(&png).unwrap().to_rgb8();
    let (cw, ch) = nemotron_studio::export::png_cell(h.experts, h.rows());
    assert_eq!(
        img.dimensions(),
        (h.experts as u32 * cw, h.rows() as u32 * ch)
    );
    let max = h.max(HeatMode::Count);
    for row in 0..h.rows() {
        for e in 0..h.experts {
            let px = img.get_pixel(e as u32 * cw, row as u32 * ch).0;
            assert_eq!(
                px,
                colormap::cell_color(h.value(HeatMode::Count, row, e), max, false)
            );
        }
    }
    assert!(
        nemotron_studio::export::heatmap_png(
            h,
            HeatMode::Count,
            false,
            Path::new("/nonexistent/dir/h.png")
        )
        .is_err()
    );
}

#[test]
fn recent_list_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cfg").join("recent.json");
    let mut r = Recent::load(Some(file.clone()));
    assert!(r.dirs.is_empty());
    assert!(r.push(Path::new("/a")).is_none());
    assert!(r.push(Path::new("/b")).is_none());
    assert!(r.push(Path::new("/a")).is_none());
    let again = Recent::load(Some(file));
    assert_eq!(
        again.dirs,
        vec![Path::new("/a").to_path_buf(), Path::new("/b").to_path_buf()]
    );
}

#[test]
fn load_progress_counts_every_tensor() {
    use nemotron_rt::model::loader::LoadProgress;
    use nemotron_rt::model::{LoadOptions, Model};
    let p = LoadProgress::new();
    assert_eq!(p.fraction(), None);
    let be = nemotron_rt::backend::create(nemotron_rt::backend::BackendKind::Cpu, 1).unwrap();
    let m =
        Model::load_observed(&support::fixture(), be, LoadOptions::default(), Some(&p)).unwrap();
    assert_eq!(p.done(), m.info.weight_bytes());
    assert!(p.total() >= p.done());
    assert!(p.fraction().unwrap() > 0.5);
}

#[test]
fn a_folder_given_before_the_device_list_opens_when_it_arrives() {
    let mut s = AppState::new(None);
    s.threads = 2;
    s.refresh_devices();
    s.open_model(&support::fixture());
    assert!(s.wait_idle(support::WAIT));
    assert!(!s.devices.is_empty());
    let loaded = s.loaded.as_ref().expect("opened after the devices arrived");
    assert_eq!(loaded.summary.device_label, "CPU");
}
