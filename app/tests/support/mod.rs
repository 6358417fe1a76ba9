//! Shared by the app's tests: the fixture model, a state with it loaded, and the snapshot setup.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use nemotron_rt::backend::{BackendKind, BackendOptions};
use nemotron_rt::devices::Device;
use nemotron_studio::state::AppState;

/// The README's default model, relative to the app's folder (where `cargo test` runs the tests),
/// so that paths shown in snapshots are the same in every checkout.
pub fn fixture() -> PathBuf {
    PathBuf::from("../tests/fixtures/models/nemotronh_tiny_grouped_nvfp4_super/hf")
}

pub const WAIT: Duration = Duration::from_secs(300);

/// Devices with fixed labels and details, so snapshots do not depend on the machine: the CPU,
/// wgpu's default adapter, and CUDA as a machine without a driver reports it.
pub fn fixed_devices() -> Vec<Device> {
    vec![
        Device {
            kind: Some(BackendKind::Cpu),
            label: "CPU".into(),
            details: vec![
                "2 threads".into(),
                "all weight formats, exact reference".into(),
            ],
            options: BackendOptions::default(),
            unavailable: None,
        },
        Device {
            kind: Some(BackendKind::Wgpu),
            label: "wgpu (default adapter)".into(),
            details: vec!["Vulkan / Metal / DX12 / GL".into()],
            options: BackendOptions::default(),
            unavailable: None,
        },
        Device {
            kind: Some(BackendKind::Cuda),
            label: "CUDA".into(),
            details: Vec::new(),
            options: BackendOptions::default(),
            unavailable: Some("no driver found (libcuda not present)".into()),
        },
    ]
}

/// A state with the fixture loaded on the CPU (2 threads, so the text shown is the same on
/// every machine).
pub fn loaded_state() -> AppState {
    let mut s = AppState::new(None);
    s.set_devices(fixed_devices());
    s.threads = 2;
    s.open_model(&fixture());
    assert!(s.wait_idle(WAIT), "loading timed out");
    assert!(
        s.loaded.is_some(),
        "fixture failed to load: {:?}",
        s.notices
    );
    s
}

/// Generates with the current settings and waits for the end.
pub fn generate(s: &mut AppState) {
    s.generate();
    assert!(s.wait_idle(WAIT), "generation timed out");
    let run = s.run.as_ref().expect("a run");
    assert!(run.error.is_none(), "generation failed: {:?}", run.error);
    assert!(run.finish.is_some());
}

/// Whether wgpu can render here; snapshot tests print why they skip when it cannot.
pub fn can_render(test: &str) -> bool {
    if nemotron_rt::backend::wgpu::adapters().is_empty() {
        eprintln!("skipping {test}: no wgpu adapter (install Mesa's lavapipe to run it)");
        return false;
    }
    true
}
