//! Every compute device the backends of this build can run on, in one list: what
//! `nemotron-rt devices` prints and what the app offers. Each entry carries the
//! [`BackendOptions`] that select it, so a caller never matches names itself.

use crate::backend::{BackendKind, BackendOptions};

#[derive(Clone, Debug)]
pub struct Device {
    /// `None` for a backend this build lacks (the entry only says why).
    pub kind: Option<BackendKind>,
    /// Short label: "CPU", "wgpu: <adapter name> (Vulkan)".
    pub label: String,
    /// What the device supports, one fact per item.
    pub details: Vec<String>,
    /// How to build a backend on this device with [`crate::backend::create_with`].
    pub options: BackendOptions,
    /// Why the device cannot be used, when it cannot.
    pub unavailable: Option<String>,
}

impl Device {
    pub fn usable(&self) -> bool {
        self.kind.is_some() && self.unavailable.is_none()
    }
}

/// The CPU, then every wgpu adapter (respecting `WGPU_BACKEND`), then CUDA.
pub fn list() -> Vec<Device> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = vec![Device {
        kind: Some(BackendKind::Cpu),
        label: "CPU".into(),
        details: vec![
            std::env::consts::ARCH.to_string(),
            format!("{threads} threads"),
            "all weight formats, exact reference".into(),
        ],
        options: BackendOptions::default(),
        unavailable: None,
    }];
    let adapters = crate::backend::wgpu::adapters();
    if adapters.is_empty() {
        out.push(Device {
            kind: Some(BackendKind::Wgpu),
            label: "wgpu".into(),
            details: Vec::new(),
            options: BackendOptions::default(),
            unavailable: Some("no adapter (no Vulkan/Metal/DX12/GL driver found)".into()),
        });
    }
    for a in adapters {
        out.push(Device {
            kind: Some(BackendKind::Wgpu),
            label: format!("wgpu: {} ({})", a.name, a.backend),
            details: vec![
                a.device_type.clone(),
                format!("driver {}", a.driver),
                format!("max buffer {} MiB", a.max_buffer_size >> 20),
                format!("max storage binding {} MiB", a.max_storage_binding >> 20),
                format!("shader-f16 {}", if a.shader_f16 { "yes" } else { "no" }),
                format!("subgroups {}", if a.subgroups { "yes" } else { "no" }),
            ],
            options: BackendOptions {
                adapter: Some(a.name.clone()),
                ..Default::default()
            },
            unavailable: None,
        });
    }
    out.push(Device {
        kind: None,
        label: "CUDA".into(),
        details: Vec::new(),
        options: BackendOptions::default(),
        unavailable: Some("not available in this build".into()),
    });
    out
}
