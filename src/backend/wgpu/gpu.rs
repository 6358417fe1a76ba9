//! The device plumbing every wgpu op shares: buffers, a pipeline cache, one command encoder
//! that collects a whole step's dispatches, and read-back (the only synchronisation point).
//! wgpu panics on errors by default; here every error is captured and returned as
//! `Error::Backend` with the numbers involved.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// A WGSL source file, one per op (`shaders/<op>.wgsl`).
pub(crate) struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// Largest workgroup count per dispatch dimension (WebGPU's guaranteed minimum).
pub(crate) const MAX_GROUPS: u32 = 65535;

/// Splits `n` workgroups over x and y; shaders recover the index as `wid.x + wid.y * 65535`.
pub(crate) fn groups_2d(n: usize, z: usize) -> [u32; 3] {
    let n = n.max(1) as u32;
    [n.min(MAX_GROUPS), n.div_ceil(MAX_GROUPS), z.max(1) as u32]
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct PipelineKey {
    shader: &'static str,
    entry: String,
    constants: Vec<(String, u64)>,
    storage: Vec<bool>,
}

pub(crate) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, (wgpu::ComputePipeline, wgpu::BindGroupLayout)>>,
    encoder: Mutex<Option<wgpu::CommandEncoder>>,
    recorded: Mutex<usize>,
    /// Every dispatch's parameters, one `param_stride` slot each, in one uniform buffer bound
    /// at a dynamic offset: written once per submission instead of a buffer per dispatch.
    params: Mutex<Vec<u8>>,
    param_buf: wgpu::Buffer,
    param_stride: u64,
    errors: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    pub weight_cap: Option<u64>,
    /// Wall time per shader entry, when `NEMOTRON_WGPU_PROFILE` is set: every dispatch is then
    /// submitted and waited for on its own, so the numbers are per kernel (and slower overall).
    profile: Option<Mutex<HashMap<String, (usize, std::time::Duration)>>>,
}

/// Dispatches recorded before the encoder is submitted even without a read-back, to bound the
/// memory held by their parameter buffers.
const SUBMIT_EVERY: usize = 1024;

/// Bytes of the uniform binding each dispatch sees (the largest shader `Params` is 48).
const PARAM_BYTES: u64 = 64;

impl Gpu {
    pub(crate) fn new(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Gpu {
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().push(e.to_string());
        }));
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *lost_sink.lock().unwrap() = Some(format!("{reason:?}: {msg}"));
        });
        let limits = device.limits();
        let features = device.features();
        let param_stride = PARAM_BYTES.max(limits.min_uniform_buffer_offset_alignment as u64);
        let param_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: param_stride * SUBMIT_EVERY as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Gpu {
            device,
            queue,
            info,
            limits,
            features,
            modules: Mutex::default(),
            pipelines: Mutex::default(),
            encoder: Mutex::default(),
            recorded: Mutex::new(0),
            params: Mutex::default(),
            param_buf,
            param_stride,
            errors,
            lost,
            weight_cap: None,
            profile: std::env::var_os("NEMOTRON_WGPU_PROFILE").map(|_| Mutex::default()),
        }
    }

    /// The profile gathered so far, slowest first: (shader::entry, dispatches, total time).
    pub(crate) fn profile(&self) -> Vec<(String, usize, std::time::Duration)> {
        let Some(p) = &self.profile else {
            return Vec::new();
        };
        let mut v: Vec<_> = p
            .lock()
            .unwrap()
            .iter()
            .map(|(k, (n, t))| (k.clone(), *n, *t))
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.2));
        v
    }

    pub(crate) fn err(&self, msg: impl Into<String>) -> Error {
        Error::Backend {
            backend: format!("wgpu ({})", self.info.name),
            msg: msg.into(),
        }
    }

    /// Fails with whatever the device reported since the last check.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(l) = self.lost.lock().unwrap().clone() {
            return Err(self.err(format!("device lost ({l})")));
        }
        let mut errs = self.errors.lock().unwrap();
        if !errs.is_empty() {
            let msg = errs.join("; ");
            errs.clear();
            return Err(self.err(msg));
        }
        Ok(())
    }

    /// Largest buffer that one shader binding may cover.
    pub(crate) fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Largest chunk a weight is split into: the binding limit, or a smaller cap (tests use it
    /// to exercise chunking on tiny models).
    pub(crate) fn weight_binding(&self) -> u64 {
        self.weight_cap
            .map_or(self.max_binding(), |c| c.min(self.max_binding()))
    }

    fn checked_create(
        &self,
        bytes: u64,
        what: &str,
        f: impl FnOnce() -> wgpu::Buffer,
    ) -> Result<wgpu::Buffer> {
        if bytes > self.limits.max_buffer_size {
            return Err(self.err(format!(
                "{what} needs a {bytes}-byte buffer but the adapter allows at most {} bytes per buffer",
                self.limits.max_buffer_size
            )));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = f();
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(self.err(format!(
                "out of device memory allocating {bytes} bytes for {what}: {e}"
            )));
        }
        Ok(buf)
    }

    /// A zeroed storage buffer of at least `bytes` (rounded up to 4, never empty).
    pub(crate) fn alloc(&self, bytes: u64, what: &str) -> Result<wgpu::Buffer> {
        let size = bytes.max(4).next_multiple_of(4);
        self.checked_create(size, what, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(what),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// A storage buffer holding `data` (padded with zeros to a multiple of 4 bytes).
    pub(crate) fn upload_bytes(&self, data: &[u8], what: &str) -> Result<wgpu::Buffer> {
        let size = (data.len() as u64).max(4).next_multiple_of(4);
        self.checked_create(size, what, || {
            let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(what),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: true,
            });
            // Mapped-at-creation memory starts zeroed, so only the data needs writing.
            if let Ok(mut view) = buf.slice(..).get_mapped_range_mut() {
                view.slice(..data.len()).copy_from_slice(data);
            }
            buf.unmap();
            buf
        })
    }

    pub(crate) fn upload_f32(&self, data: &[f32], what: &str) -> Result<wgpu::Buffer> {
        self.upload_bytes(bytemuck::cast_slice(data), what)
    }

    fn module(&self, shader: &Shader) -> Result<wgpu::ShaderModule> {
        let mut modules = self.modules.lock().unwrap();
        if let Some(m) = modules.get(shader.name) {
            return Ok(m.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let m = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.name),
                source: wgpu::ShaderSource::Wgsl(shader.source.into()),
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(self.err(format!(
                "shaders/{}.wgsl does not compile: {e}",
                shader.name
            )));
        }
        modules.insert(shader.name, m.clone());
        Ok(m)
    }

    /// The pipeline for `entry` of `shader` with `constants`, binding 0 a uniform and then one
    /// storage buffer per element of `writable` (true = read_write). Built once, then cached.
    fn pipeline(
        &self,
        shader: &Shader,
        entry: &str,
        constants: &[(&str, f64)],
        writable: &[bool],
    ) -> Result<(wgpu::ComputePipeline, wgpu::BindGroupLayout)> {
        let key = PipelineKey {
            shader: shader.name,
            entry: entry.to_string(),
            constants: constants
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect(),
            storage: writable.to_vec(),
        };
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let module = self.module(shader)?;
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: None,
            },
            count: None,
        }];
        for (i, &w) in writable.iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: !w },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(shader.name),
                entries: &entries,
            });
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(shader.name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(shader.name),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: true,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(self.err(format!(
                "pipeline {}::{entry} {constants:?} cannot be built: {e}",
                shader.name
            )));
        }
        let value = (pipeline, layout);
        self.pipelines.lock().unwrap().insert(key, value.clone());
        Ok(value)
    }

    /// Records one dispatch. `params` fills the uniform at binding 0; `buffers` are bound at
    /// 1.. in order, each with whether the shader writes it.
    pub(crate) fn dispatch(
        &self,
        shader: &Shader,
        entry: &str,
        constants: &[(&str, f64)],
        params: &[u32],
        buffers: &[(&wgpu::Buffer, bool)],
        groups: [u32; 3],
    ) -> Result<()> {
        let writable: Vec<bool> = buffers.iter().map(|b| b.1).collect();
        let (pipeline, layout) = self.pipeline(shader, entry, constants, &writable)?;
        let bytes: &[u8] = bytemuck::cast_slice(params);
        if bytes.len() as u64 > PARAM_BYTES {
            return Err(self.err(format!(
                "{}::{entry}: {} bytes of parameters, at most {PARAM_BYTES}",
                shader.name,
                bytes.len()
            )));
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.param_buf,
                offset: 0,
                size: wgpu::BufferSize::new(PARAM_BYTES),
            }),
        }];
        for (i, (b, _)) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(shader.name),
            layout: &layout,
            entries: &entries,
        });
        // The encoder lock is held from reserving the parameter slot until the dispatch is
        // recorded (and submitted, if it is): another thread's submission in between would
        // clear the slot before the dispatch that reads it runs.
        let mut enc = self.encoder.lock().unwrap();
        let offset = {
            let mut ring = self.params.lock().unwrap();
            let offset = ring.len();
            ring.extend_from_slice(bytes);
            ring.resize(offset + self.param_stride as usize, 0);
            offset as u32
        };
        let e = enc.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step"),
                })
        });
        {
            let mut pass = e.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(shader.name),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[offset]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        if let Some(prof) = &self.profile {
            let cmd = enc.take().expect("encoder exists").finish();
            let start = std::time::Instant::now();
            self.submit(cmd);
            drop(enc);
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| self.err(format!("waiting for the device: {e}")))?;
            let mut p = prof.lock().unwrap();
            let slot = p.entry(format!("{}::{entry}", shader.name)).or_default();
            slot.0 += 1;
            slot.1 += start.elapsed();
            return Ok(());
        }
        let mut n = self.recorded.lock().unwrap();
        *n += 1;
        if *n >= SUBMIT_EVERY {
            *n = 0;
            let cmd = enc.take().expect("encoder exists").finish();
            drop(n);
            self.submit(cmd);
        }
        Ok(())
    }

    /// Records a buffer-to-buffer copy into the step's encoder.
    pub(crate) fn copy(
        &self,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        bytes: u64,
    ) {
        if bytes == 0 {
            return;
        }
        let mut enc = self.encoder.lock().unwrap();
        let e = enc.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step"),
                })
        });
        e.copy_buffer_to_buffer(src, src_off, dst, dst_off, bytes);
    }

    /// Submits `cmd` after the parameters its dispatches read (queue writes land before the
    /// next submission's commands and after the previous submission's). Called with the
    /// encoder lock held, so no dispatch can reserve a slot in between.
    fn submit(&self, cmd: wgpu::CommandBuffer) {
        let mut ring = self.params.lock().unwrap();
        if !ring.is_empty() {
            self.queue.write_buffer(&self.param_buf, 0, &ring);
            ring.clear();
        }
        drop(ring);
        self.queue.submit([cmd]);
    }

    /// Submits everything recorded so far.
    pub(crate) fn flush(&self) -> Result<()> {
        let mut enc = self.encoder.lock().unwrap();
        if let Some(e) = enc.take() {
            self.submit(e.finish());
        }
        drop(enc);
        *self.recorded.lock().unwrap() = 0;
        self.check()
    }

    /// Reads `bytes` from the start of `buf`, after all recorded work.
    pub(crate) fn read(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let size = bytes.max(4).next_multiple_of(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.copy(buf, 0, &staging, 0, size);
        self.flush()?;
        let (tx, rx) = mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.err(format!("waiting for the device: {e}")))?;
        self.check()?;
        rx.recv()
            .map_err(|_| self.err("read-back was never answered"))?
            .map_err(|e| self.err(format!("mapping a read-back buffer: {e}")))?;
        let data = staging
            .get_mapped_range(..)
            .map_err(|e| self.err(format!("mapping a read-back buffer: {e}")))?[..bytes as usize]
            .to_vec();
        staging.unmap();
        Ok(data)
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        let prof = self.profile();
        if prof.is_empty() {
            return;
        }
        let total: std::time::Duration = prof.iter().map(|p| p.2).sum();
        eprintln!(
            "wgpu profile ({:.1} ms in dispatches):",
            total.as_secs_f64() * 1e3
        );
        for (name, n, t) in prof {
            eprintln!(
                "  {name:<40} {n:>7} dispatches {:>10.2} ms {:>5.1} %",
                t.as_secs_f64() * 1e3,
                100.0 * t.as_secs_f64() / total.as_secs_f64()
            );
        }
    }
}
