//! `nemotron-studio [MODEL_DIR]`: opens the window and the model in MODEL_DIR, or the default
//! model when no folder is given. `nemotron-studio heatmap ...` exports a routing heatmap
//! without a window.

use std::path::PathBuf;

use eframe::egui;
use nemotron_studio::app::StudioApp;
use nemotron_studio::headless;
use nemotron_studio::state::AppState;

fn options(renderer: eframe::Renderer) -> eframe::NativeOptions {
    eframe::NativeOptions {
        renderer,
        viewport: egui::ViewportBuilder::default()
            .with_title("nemotron-studio")
            .with_inner_size([1280.0, 820.0]),
        ..Default::default()
    }
}

fn make_state(model: Option<&PathBuf>) -> AppState {
    let mut state = AppState::new(nemotron_studio::recent::default_file());
    state.refresh_devices();
    match model {
        Some(dir) => state.open_model(dir),
        // With no folder given, the default model compiled into the library.
        None => match nemotron_rt::default_model::dir() {
            Ok(dir) => state.open_model(&dir),
            Err(e) => state.error(e.to_string()),
        },
    }
    state
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("heatmap") {
        let result = headless::parse(&args[1..]).and_then(|a| headless::run_heatmap(&a));
        match result {
            Ok(done) => eprintln!("{done}"),
            Err(e) => {
                eprintln!("nemotron-studio heatmap: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: nemotron-studio [MODEL_DIR]\n       {}\n\nThe desktop app of nemotron-rt: opens MODEL_DIR, or the default model when none is given. Renders with wgpu, or with OpenGL (glow) when wgpu cannot start.\n\n`heatmap` draws the routing of one or more traces (nemotron-rt generate or forward --trace-routing) as the app's heatmap PNG, without a window.",
            headless::USAGE
        );
        return;
    }
    if args.len() > 1 {
        eprintln!("usage: nemotron-studio [MODEL_DIR]");
        std::process::exit(2);
    }
    let model = args.first().map(PathBuf::from);
    let run = |renderer| {
        let model = model.clone();
        eframe::run_native(
            "nemotron-studio",
            options(renderer),
            Box::new(move |_cc| Ok(Box::new(StudioApp::new(make_state(model.as_ref()))))),
        )
    };
    if let Err(e) = run(eframe::Renderer::Wgpu) {
        eprintln!("nemotron-studio: the wgpu renderer failed ({e}); trying OpenGL");
        if let Err(e) = run(eframe::Renderer::Glow) {
            eprintln!("nemotron-studio: {e}");
            std::process::exit(1);
        }
    }
}
