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
    out.extend(cuda_devices());
    out
}

/// Every CUDA device, or one entry saying why there is none.
fn cuda_devices() -> Vec<Device> {
    let none = |why: String| Device {
        kind: Some(BackendKind::Cuda),
        label: "CUDA".into(),
        details: Vec::new(),
        options: BackendOptions::default(),
        unavailable: Some(why),
    };
    match crate::backend::cuda::devices() {
        Err(why) => vec![none(why)],
        Ok(devs) if devs.is_empty() => vec![none("the driver reports no device".into())],
        Ok(devs) => devs
            .into_iter()
            .map(|d| {
                let (ma, mi) = d.compute_capability;
                Device {
                    kind: Some(BackendKind::Cuda),
                    label: format!("CUDA {}: {}", d.ordinal, d.name),
                    details: vec![
                        format!("sm_{ma}{mi}"),
                        format!(
                            "{} MiB ({} MiB free)",
                            d.total_bytes >> 20,
                            d.free_bytes >> 20
                        ),
                        d.fp4_path.to_string(),
                    ],
                    options: BackendOptions {
                        device: d.ordinal,
                        ..Default::default()
                    },
                    unavailable: None,
                }
            })
            .collect(),
    }
}
