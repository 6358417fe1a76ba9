//! Snapshot tests of every view, rendered headless with wgpu (lavapipe in CI) on the fixture
//! model. Timings change from run to run, so views that show them are fed fixed timings after a
//! real generation; everything else (tokens, routing, the model's figures) is what the run made.
//! `UPDATE_SNAPSHOTS=1 cargo test -p nemotron-studio --test views` rewrites the images.

mod support;

use eframe::egui;
use egui_kittest::kittest::Queryable;
use egui_kittest::{Harness, SnapshotOptions};
use nemotron_rt::generate::TokenRoute;
use nemotron_studio::heatmap::Heatmap;
use nemotron_studio::state::{AppState, RunData, Tab, TokenEntry};
use nemotron_studio::views;

/// Renderers differ in anti-aliasing by a few pixels; a real change moves far more.
fn options() -> SnapshotOptions {
    SnapshotOptions::new().threshold(1.0).max_failed_pixels(64)
}

/// Fails the test on a snapshot mismatch (several harnesses per test each report here).
fn check<T>(h: &mut Harness<'_, T>) {
    let errors = h.take_snapshot_results().into_inner();
    let msgs: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(msgs.is_empty(), "{}", msgs.join("\n"));
}

/// The random-weight fixture generates arbitrary Unicode that the built-in fonts lack; views
/// that show generated text draw it as boxes. The other views must have every glyph.
fn snapshot_with(
    name: &str,
    size: [f32; 2],
    generated_text: bool,
    state: AppState,
    view: impl FnMut(&mut egui::Ui, &mut AppState),
) -> AppState {
    let mut view = view;
    let mut b = Harness::builder()
        .with_size(egui::vec2(size[0], size[1]))
        .with_pixels_per_point(1.0);
    if generated_text {
        b = b.allow_missing_glyphs();
    }
    let mut h = b.build_ui_state(
        move |ui, s: &mut AppState| {
            egui::CentralPanel::default().show(ui, |ui| view(ui, s));
        },
        state,
    );
    h.run();
    h.snapshot_options(name, &options());
    check(&mut h);
    h.into_state()
}

fn snapshot(
    name: &str,
    size: [f32; 2],
    state: AppState,
    view: impl FnMut(&mut egui::Ui, &mut AppState),
) -> AppState {
    snapshot_with(name, size, false, state, view)
}

/// Replaces the measured timings with fixed ones so the speed figures render the same
/// every time: prefill 40 ms, decode steps between 8 and 12 ms.
fn fix_timings(s: &mut AppState) {
    let run = s.run.as_mut().unwrap();
    run.prefill_ms = Some(40.0);
    for t in run.tokens.iter_mut() {
        t.ms = if t.index == 0 {
            40.0
        } else {
            8.0 + (t.index % 5) as f64
        };
    }
}

fn generated_state() -> AppState {
    let mut s = support::loaded_state();
    s.settings.max_tokens = 24;
    support::generate(&mut s);
    fix_timings(&mut s);
    s
}

#[test]
fn model_view() {
    if !support::can_render("model_view") {
        return;
    }
    snapshot("model", [560.0, 640.0], support::loaded_state(), |ui, s| {
        views::model::show(ui, s)
    });
    let mut empty = AppState::new(None);
    empty.set_devices(support::fixed_devices());
    snapshot("model_empty", [560.0, 160.0], empty, |ui, s| {
        views::model::show(ui, s)
    });
}

#[test]
fn backend_view() {
    if !support::can_render("backend_view") {
        return;
    }
    let mut s = AppState::new(None);
    s.set_devices(support::fixed_devices());
    s.threads = 2;
    snapshot("backend", [420.0, 220.0], s, |ui, s| {
        views::backend::show(ui, s)
    });
}

#[test]
fn prompt_and_speed_views() {
    if !support::can_render("prompt_and_speed_views") {
        return;
    }
    let mut s = generated_state();
    s.selected_token = Some(3);
    let s = snapshot_with("prompt", [720.0, 300.0], true, s, |ui, s| {
        views::prompt::show(ui, s)
    });
    snapshot("speed", [720.0, 340.0], s, |ui, s| {
        views::speed::show(ui, s)
    });
}

#[test]
fn heatmap_view() {
    if !support::can_render("heatmap_view") {
        return;
    }
    let mut s = generated_state();
    s.tab = Tab::Routing;
    s.selected_token = Some(2);
    snapshot_with("heatmap", [820.0, 560.0], true, s, |ui, s| {
        views::heatmap::show(ui, s)
    });
}

/// A deterministic scatter of top-22 routing over 40 layers × 512 experts (Nemotron 3 Super's
/// shape): the map must stay legible at full size and when zoomed in.
fn super_sized_run() -> RunData {
    let layers: Vec<usize> = (0..40).map(|i| 2 * i + 1).collect();
    let mut run = RunData::new(1, "CPU".into(), Heatmap::new(layers.clone(), 512));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for t in 0..64 {
        let routing: Vec<TokenRoute> = layers
            .iter()
            .map(|&layer| {
                // Skewed towards low ids so the map has hot and cold regions.
                let mut ids: Vec<u32> = Vec::new();
                while ids.len() < 22 {
                    let r = next();
                    let e = ((r % 512) * ((r >> 20) % 512) / 512) as u32;
                    if !ids.contains(&e) {
                        ids.push(e);
                    }
                }
                ids.sort_unstable();
                let weights = ids.iter().map(|&e| 1.0 / (1.0 + e as f32 / 64.0)).collect();
                TokenRoute {
                    layer,
                    ids,
                    weights,
                }
            })
            .collect();
        run.heatmap.add_token(&routing).unwrap();
        run.tokens.push(TokenEntry {
            index: t,
            id: t as u32,
            text: format!("t{t}"),
            ms: 10.0,
            routing,
        });
    }
    run
}

#[test]
fn heatmap_view_at_super_scale() {
    if !support::can_render("heatmap_view_at_super_scale") {
        return;
    }
    let mut s = AppState::new(None);
    s.run = Some(super_sized_run());
    s.selected_token = Some(5);
    let mut s = snapshot("heatmap_super", [1000.0, 820.0], s, |ui, s| {
        views::heatmap::show(ui, s)
    });
    // Zoomed 8× on experts around expert 64, 2× on layers: labels and cells get bigger.
    let h = s.run.as_ref().unwrap().heatmap.clone();
    s.heat.zoom(egui::pos2(64.5 / 512.0, 0.25), 8.0, 2.0, &h);
    let v = s.heat.view;
    assert!(
        (v.width() - 0.125).abs() < 1e-6 && (v.height() - 0.5).abs() < 1e-6,
        "{v:?}"
    );
    snapshot("heatmap_super_zoomed", [1000.0, 820.0], s, |ui, s| {
        views::heatmap::show(ui, s)
    });
}

#[test]
fn compare_view() {
    if !support::can_render("compare_view") {
        return;
    }
    let mut s = support::loaded_state();
    s.settings.max_tokens = 8;
    s.compare_pick = vec![true, true, false];
    s.run_compare();
    assert!(s.wait_idle(support::WAIT));
    assert_eq!(s.compare.len(), 2, "{:?}", s.notices);
    for (i, r) in s.compare.iter_mut().enumerate() {
        let st = r.result.as_mut().expect("both backends run");
        st.prefill_tok_s = 200.0 + 100.0 * i as f64;
        st.decode_tok_s = 90.0 - 30.0 * i as f64;
        st.ttft_ms = 40.0 + 20.0 * i as f64;
    }
    snapshot("compare", [820.0, 520.0], s, |ui, s| {
        views::compare::show(ui, s)
    });
}

/// The whole window, as the README shows it.
#[test]
fn whole_app() {
    if !support::can_render("whole_app") {
        return;
    }
    let mut s = generated_state();
    s.tab = Tab::Routing;
    s.selected_token = Some(2);
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 820.0))
        .with_pixels_per_point(1.0)
        .allow_missing_glyphs()
        .build_ui_state(nemotron_studio::app::draw, s);
    h.run();
    h.snapshot_options("app_routing", &options());
    h.state_mut().tab = Tab::Generate;
    h.run();
    h.snapshot_options("app_generate", &options());
    check(&mut h);
}

/// Driven through the widgets: Generate streams the tokens in; clicking a token selects it (the
/// heatmap then outlines its experts); the folder picker lists the checkpoints.
#[test]
fn clicking_generate_then_a_token() {
    use egui::accesskit::Role;
    if !support::can_render("clicking_generate_then_a_token") {
        return;
    }
    let mut s = support::loaded_state();
    s.settings.max_tokens = 6;
    let mut h = Harness::builder()
        .with_size(egui::vec2(720.0, 300.0))
        .allow_missing_glyphs()
        .build_ui_state(
            |ui, s: &mut AppState| {
                egui::CentralPanel::default().show(ui, |ui| views::prompt::show(ui, s));
            },
            s,
        );
    h.run_steps(1);
    assert!(h.state().run.is_none());
    h.get_by_role_and_label(Role::Button, "Generate").click();
    h.run_steps(1);
    assert!(h.state().run.is_some(), "{:?}", h.state().notices);
    assert!(h.state_mut().wait_idle(support::WAIT));
    h.run_steps(2);
    let run = h.state().run.clone().unwrap();
    assert_eq!(run.tokens.len(), 6);
    // A token whose chip is unique, so the query finds one widget.
    let chips: Vec<String> = run.tokens.iter().map(views::prompt::chip_text).collect();
    let k = (0..chips.len())
        .rev()
        .find(|&i| chips.iter().filter(|c| **c == chips[i]).count() == 1)
        .expect("some token differs from the rest");
    h.get_by_label(&chips[k]).click();
    h.run_steps(2);
    assert_eq!(h.state().selected_token, Some(run.tokens[k].index));
}

#[test]
fn folder_picker_lists_checkpoints() {
    if !support::can_render("folder_picker_lists_checkpoints") {
        return;
    }
    let mut s = AppState::new(None);
    s.set_devices(support::fixed_devices());
    s.picker.open_at(std::path::Path::new(
        "../tests/fixtures/models/nemotronh_tiny_flat",
    ));
    let mut h = Harness::builder()
        .with_size(egui::vec2(560.0, 480.0))
        .with_pixels_per_point(1.0)
        .build_ui_state(
            |ui, s: &mut AppState| {
                egui::CentralPanel::default().show(ui, |ui| views::model::show(ui, s));
            },
            s,
        );
    h.run();
    h.snapshot_options("folder_picker", &options());
    check(&mut h);
    // Into a listed checkpoint, then open it.
    h.get_by_label("hf  [checkpoint]").click();
    h.run_steps(2);
    assert!(h.state().picker.cwd().ends_with("nemotronh_tiny_flat/hf"));
    h.get_by_label("Open this folder").click();
    h.run_steps(2);
    assert!(!h.state().picker.open);
    assert!(h.state_mut().wait_idle(support::WAIT));
    assert!(h.state().loaded.is_some(), "{:?}", h.state().notices);
}
