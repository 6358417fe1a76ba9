//! The device plumbing every CUDA op shares: one context and stream, device buffers with
//! out-of-memory errors that give the numbers, a module cache (each `cuda/<op>.cu` compiled
//! once per device with NVRTC), and kernel launches. Nothing here panics on a CUDA error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::ThreadId;

use cudarc::driver::sys::{self, CUresult};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError, result,
};
use cudarc::nvrtc::Ptx;

use super::graph::{ARENA_CHUNK, Arena, GraphStats, Graphs, Params, Recorded, Step, StepGraph};
use super::kernels::{Family, Kernel};
use crate::error::{Error, Result};

/// `bytes` bytes of device memory: an allocation of its own, or a view into the decode-step
/// arena. The address is taken once: the backend uses a single stream with cudarc's
/// cross-stream event tracking switched off, so no guard is needed.
pub(crate) struct Buf {
    /// `None` for an arena view: the arena owns that memory.
    owner: Option<CudaSlice<u8>>,
    pub ptr: u64,
    pub bytes: usize,
    /// The decode step an arena view was made in (0 for memory of its own): the next step
    /// reuses the memory, so the backend refuses a view from an earlier step.
    pub epoch: u64,
}

impl Buf {
    pub(crate) fn is_arena_view(&self) -> bool {
        self.owner.is_none()
    }
}

/// A kernel argument.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    Ptr(u64),
    I32(i32),
    U64(u64),
    F32(f32),
}

impl Arg {
    /// The argument as the driver copies it from its 8-byte slot: 4-byte arguments in the low
    /// half, which is the first half on the little-endian hosts CUDA runs on.
    pub(crate) fn bits(&self) -> u64 {
        match *self {
            Arg::Ptr(p) | Arg::U64(p) => p,
            Arg::I32(v) => v as u32 as u64,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}

impl From<&Buf> for Arg {
    fn from(b: &Buf) -> Arg {
        Arg::Ptr(b.ptr)
    }
}

pub(crate) struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub ordinal: usize,
    pub name: String,
    pub cc: (i32, i32),
    /// Streaming multiprocessors: how many warps it takes to fill the GPU.
    pub sms: usize,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Looked up once: a decode step launches hundreds of kernels.
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    /// The decode step being recorded, if any (see graph.rs), and the thread running it:
    /// other threads' work on this device runs directly.
    step: Mutex<Option<(ThreadId, Step)>>,
    /// Serialises decode steps: one arena, one recording.
    step_lock: Mutex<()>,
    arena: Mutex<Arena>,
    /// `arena.epoch`, readable without the lock on every op's buffer lookup.
    epoch: AtomicU64,
    graphs: Mutex<Graphs>,
}

/// Whether libcuda can be loaded: checked before any driver call, which would panic without it.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

pub(crate) fn cerr(msg: impl Into<String>) -> Error {
    Error::Backend {
        backend: "cuda".into(),
        msg: msg.into(),
    }
}

/// PTX of kernel file `k` for `arch`, compiled once per process: every backend opened on a
/// device of the same architecture (tests open many) reuses it and only loads the module.
fn compiled(k: &Kernel, arch: &str) -> std::result::Result<String, String> {
    static CACHE: OnceLock<Mutex<HashMap<(String, &'static str), String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let key = (arch.to_string(), k.name);
    if let Some(p) = cache.lock().unwrap().get(&key) {
        return Ok(p.clone());
    }
    let ptx = super::kernels::compile(k, arch)?;
    cache.lock().unwrap().insert(key, ptx.clone());
    Ok(ptx)
}

/// Every op allocates its output from the stream-ordered pool; by default the pool hands memory
/// back to the OS at each synchronisation (every decoded token), so the next step would map it
/// again. Keeping it makes steady-state allocation a free-list pop. A failure only costs speed.
fn keep_pool_memory(ctx: &CudaContext) {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut keep = u64::MAX;
    // SAFETY: plain driver calls on a live context's device, with valid out-pointers.
    unsafe {
        if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == CUresult::CUDA_SUCCESS {
            let _ = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut keep as *mut u64).cast(),
            );
        }
    }
}

/// Runs `f`, turning a panic into an error: cudarc's loader panics when the driver library
/// lacks a symbol of the CUDA version it was built for (a driver older than 12.8).
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown failure".into());
        Err(cerr(format!(
            "{what}: the CUDA driver failed ({msg}); a driver for CUDA 12.8 or newer is needed"
        )))
    })
}

impl Device {
    pub(crate) fn open(ordinal: usize) -> Result<Device> {
        guarded("opening the device", || Self::open_unguarded(ordinal))
    }

    fn open_unguarded(ordinal: usize) -> Result<Device> {
        if !driver_present() {
            return Err(cerr("no driver found (libcuda not present)"));
        }
        let count =
            CudaContext::device_count().map_err(|e| cerr(format!("cannot count devices: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(cerr(format!(
                "no device {ordinal}: {count} CUDA device(s) present"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| cerr(format!("cannot open device {ordinal}: {e}")))?;
        // One stream orders everything, so cudarc's per-buffer events would only cost time.
        // SAFETY: no buffer is ever used from a second stream.
        unsafe { ctx.disable_event_tracking() };
        if ctx.has_async_alloc() {
            keep_pool_memory(&ctx);
        }
        let stream = ctx
            .new_stream()
            .map_err(|e| cerr(format!("cannot create a stream on device {ordinal}: {e}")))?;
        let name = ctx.name().unwrap_or_else(|_| format!("device {ordinal}"));
        let cc = ctx
            .compute_capability()
            .map_err(|e| cerr(format!("cannot read the compute capability: {e}")))?;
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .unwrap_or(1)
            .max(1) as usize;
        Ok(Device {
            ctx,
            stream,
            ordinal,
            name,
            cc,
            sms,
            modules: Mutex::default(),
            functions: Mutex::default(),
            step: Mutex::default(),
            step_lock: Mutex::default(),
            arena: Mutex::default(),
            epoch: AtomicU64::new(0),
            graphs: Mutex::default(),
        })
    }

    pub(crate) fn err(&self, msg: impl Into<String>) -> Error {
        Error::Backend {
            backend: format!("cuda ({}, device {})", self.name, self.ordinal),
            msg: msg.into(),
        }
    }

    pub(crate) fn driver(&self, what: &str, e: DriverError) -> Error {
        self.err(format!("{what}: {e}"))
    }

    /// Makes the context current on this thread, for the raw driver calls below.
    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| self.driver("making the context current", e))
    }

    /// `bytes` of uninitialised device memory of its own, for whatever outlives an op: weights,
    /// caches, states. Running out of memory reports what was needed and what the device had
    /// free.
    pub(crate) fn alloc(&self, bytes: usize, what: &str) -> Result<Buf> {
        let n = bytes.max(4);
        // SAFETY: u8 has no invalid bit patterns; callers write before they read.
        match unsafe { self.stream.alloc::<u8>(n) } {
            Ok(slice) => {
                let (ptr, _) = slice.device_ptr(&self.stream);
                Ok(Buf {
                    owner: Some(slice),
                    ptr,
                    bytes,
                    epoch: 0,
                })
            }
            Err(e) if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                let (free, total) = self.ctx.mem_get_info().unwrap_or((0, 0));
                Err(self.err(format!(
                    "out of device memory: {what} needs {n} bytes but only {free} of {total} bytes are free"
                )))
            }
            Err(e) => Err(self.driver(&format!("allocating {n} bytes for {what}"), e)),
        }
    }

    /// Memory for an op's output or temporary: from the step arena while this thread records a
    /// decode step (the same address every step), else an allocation of its own.
    pub(crate) fn scratch(&self, bytes: usize, what: &str) -> Result<Buf> {
        let mut guard = self.step.lock().unwrap();
        let Some(step) = mine(&mut guard) else {
            drop(guard);
            return self.alloc(bytes, what);
        };
        let n = bytes.max(4);
        let mut arena = self.arena.lock().unwrap();
        let (c, off) = match arena.place(&mut step.cursor, n) {
            Some(at) => at,
            None => {
                let chunk = self.alloc(n.max(ARENA_CHUNK), "the decode-step arena")?;
                arena.chunks.push(chunk);
                step.cursor = (arena.chunks.len() - 1, 0);
                arena
                    .place(&mut step.cursor, n)
                    .ok_or_else(|| self.err("the decode-step arena cannot place an output"))?
            }
        };
        let ptr = arena.chunks[c].ptr + off as u64;
        step.fresh.push(ptr);
        Ok(Buf {
            owner: None,
            ptr,
            bytes,
            epoch: arena.epoch,
        })
    }

    pub(crate) fn zeros(&self, bytes: usize, what: &str) -> Result<Buf> {
        let b = self.alloc(bytes, what)?;
        self.clear(&b)?;
        Ok(b)
    }

    /// [`scratch`](Self::scratch), cleared to zeros.
    pub(crate) fn scratch_zeros(&self, bytes: usize, what: &str) -> Result<Buf> {
        let b = self.scratch(bytes, what)?;
        self.clear(&b)?;
        Ok(b)
    }

    fn clear(&self, b: &Buf) -> Result<()> {
        self.before_host_op(b.ptr)?;
        self.bind()?;
        // SAFETY: the range lies inside `b`.
        unsafe { result::memset_d8_async(b.ptr, 0, b.bytes.max(4), self.stream.cu_stream()) }
            .map_err(|e| self.driver("clearing a buffer", e))
    }

    pub(crate) fn upload_bytes(&self, data: &[u8], what: &str) -> Result<Buf> {
        let mut b = self.alloc(data.len(), what)?;
        self.write(&mut b, 0, data, what)?;
        Ok(b)
    }

    /// Writes `data` into `b` at byte offset `off`.
    pub(crate) fn write(&self, b: &mut Buf, off: usize, data: &[u8], what: &str) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if off + data.len() > b.bytes.max(4) {
            return Err(self.err(format!(
                "uploading {what}: {} bytes at offset {off} do not fit a {}-byte buffer",
                data.len(),
                b.bytes
            )));
        }
        self.before_host_op(b.ptr)?;
        self.bind()?;
        // SAFETY: the range was checked against `b`; pageable host memory is staged by the
        // driver before the call returns.
        unsafe { result::memcpy_htod_async(b.ptr + off as u64, data, self.stream.cu_stream()) }
            .map_err(|e| self.driver(&format!("uploading {what}"), e))
    }

    pub(crate) fn upload_f32(&self, data: &[f32], what: &str) -> Result<Buf> {
        self.upload_bytes(bytemuck::cast_slice(data), what)
    }

    /// The first `bytes` of `b`, after everything queued so far: the one synchronisation point.
    pub(crate) fn read(&self, b: &Buf, bytes: usize) -> Result<Vec<u8>> {
        if bytes > b.bytes.max(4) {
            return Err(self.err(format!(
                "reading back {bytes} bytes of a {}-byte buffer",
                b.bytes
            )));
        }
        self.before_host_op(0)?;
        self.bind()?;
        let mut out = vec![0u8; bytes];
        if bytes > 0 {
            // SAFETY: the range was checked against `b`; the stream is synchronised below,
            // before `out` is used.
            unsafe { result::memcpy_dtoh_async(&mut out, b.ptr, self.stream.cu_stream()) }
                .map_err(|e| self.driver("reading back", e))?;
        }
        self.stream
            .synchronize()
            .map_err(|e| self.driver("waiting for the device", e))?;
        Ok(out)
    }

    /// Copies `bytes` from `src[src_off..]` to `dst[dst_off..]` on the stream.
    pub(crate) fn copy(
        &self,
        src: &Buf,
        src_off: usize,
        dst: &mut Buf,
        dst_off: usize,
        bytes: usize,
    ) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        if src_off + bytes > src.bytes.max(4) || dst_off + bytes > dst.bytes.max(4) {
            return Err(self.err(format!(
                "copying {bytes} bytes from offset {src_off} of a {}-byte buffer to offset \
                 {dst_off} of a {}-byte buffer",
                src.bytes, dst.bytes
            )));
        }
        self.before_host_op(0)?;
        self.bind()?;
        // SAFETY: both ranges were checked against their buffers.
        unsafe {
            result::memcpy_dtod_async(
                dst.ptr + dst_off as u64,
                src.ptr + src_off as u64,
                bytes,
                self.stream.cu_stream(),
            )
        }
        .map_err(|e| self.driver("copying on the device", e))
    }

    /// Before a stream operation other than a kernel: while a step is recorded, its kernels
    /// have not been launched, so an operation that might touch their memory launches them
    /// first and ends the recording. Writing an arena buffer handed out since the last
    /// recorded kernel (`target`) is the exception: no recorded kernel can see it yet.
    fn before_host_op(&self, target: u64) -> Result<()> {
        let mut guard = self.step.lock().unwrap();
        let Some(step) = mine(&mut guard) else {
            return Ok(());
        };
        if !step.recording || (target != 0 && step.fresh.contains(&target)) {
            return Ok(());
        }
        step.recording = false;
        let pending = std::mem::take(&mut step.launches);
        drop(guard);
        pending.iter().try_for_each(|r| self.launch_now(r))
    }

    /// The current arena epoch: views of another epoch are stale.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Starts recording a decode step of sequence `key` on this thread. Returns the guard
    /// that keeps other threads' steps out until [`end_step`](Self::end_step).
    pub(crate) fn begin_step(&self, key: u64) -> Result<MutexGuard<'_, ()>> {
        if mine(&mut self.step.lock().unwrap()).is_some() {
            return Err(self.err("a decode step was started inside another"));
        }
        let exclusive = self.step_lock.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut arena = self.arena.lock().unwrap();
            arena.epoch += 1;
            self.epoch.store(arena.epoch, Ordering::Relaxed);
        }
        *self.step.lock().unwrap() = Some((
            std::thread::current().id(),
            Step {
                key,
                launches: Vec::new(),
                recording: true,
                fresh: Vec::new(),
                cursor: (0, 0),
            },
        ));
        Ok(exclusive)
    }

    /// Ends the step this thread records: replays or builds its graph when `ok`, and
    /// otherwise (the step failed part way) launches what was recorded, as direct launches
    /// would have.
    pub(crate) fn end_step(&self, ok: bool) -> Result<()> {
        let Some((_, step)) = self.step.lock().unwrap().take() else {
            return Err(self.err("a decode step ended that was never started"));
        };
        let mut graphs = self.graphs.lock().unwrap();
        if !step.recording || !ok || step.launches.is_empty() {
            graphs.stats.direct += 1;
            drop(graphs);
            return step.launches.iter().try_for_each(|r| self.launch_now(r));
        }
        graphs.clock += 1;
        let clock = graphs.clock;
        let nodes = step.launches.len() as u64;
        self.bind()?;
        if let Some(g) = graphs.by_key.get_mut(&step.key)
            && g.fits(&step.launches)
        {
            let changed = g.changed(&step.launches);
            if g.rewrite(self, &changed, &step.launches).is_ok() {
                g.launches = step.launches;
                g.last_used = clock;
                let exec = g.exec;
                graphs.stats.replayed += 1;
                graphs.stats.nodes_updated += changed.len() as u64;
                graphs.stats.last_nodes = nodes;
                return self.launch_graph(exec);
            }
        }
        graphs.by_key.remove(&step.key);
        graphs.make_room();
        let g = StepGraph::build(self, step.launches, clock)?;
        let exec = g.exec;
        graphs.by_key.insert(step.key, g);
        graphs.stats.built += 1;
        graphs.stats.last_nodes = nodes;
        self.launch_graph(exec)
    }

    pub(crate) fn graph_stats(&self) -> GraphStats {
        self.graphs.lock().unwrap().stats
    }

    fn launch_graph(&self, exec: sys::CUgraphExec) -> Result<()> {
        // SAFETY: an instantiated graph, launched on the backend's stream.
        unsafe { sys::cuGraphLaunch(exec, self.stream.cu_stream()) }
            .result()
            .map_err(|e| self.driver("launching the step graph", e))
    }

    /// NVRTC target for this device: the virtual architecture, so only NVRTC's front end runs
    /// here (fast) and the driver turns the PTX into machine code (cached by the driver).
    pub(crate) fn arch(&self, k: &Kernel) -> String {
        let (ma, mi) = self.cc;
        if k.family != Family::Any {
            format!("compute_{ma}{mi}a")
        } else {
            format!("compute_{ma}{mi}")
        }
    }

    /// `entry` of kernel file `k`, compiling the file on first use.
    pub(crate) fn func(&self, k: &'static Kernel, entry: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap().get(&(k.name, entry)) {
            return Ok(f.clone());
        }
        let module = {
            let mut mods = self.modules.lock().unwrap();
            match mods.get(k.name) {
                Some(m) => m.clone(),
                None => {
                    let m = self.build(k)?;
                    mods.insert(k.name, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(entry)
            .map_err(|e| self.driver(&format!("cuda/{}.cu has no kernel `{entry}`", k.name), e))?;
        self.functions
            .lock()
            .unwrap()
            .insert((k.name, entry), f.clone());
        Ok(f)
    }

    fn build(&self, k: &Kernel) -> Result<Arc<CudaModule>> {
        if !super::kernels::nvrtc_present() {
            return Err(self.err(
                "libnvrtc not found: the CUDA kernels are compiled at run time (install the CUDA \
                 toolkit or `pip install nvidia-cuda-nvrtc-cu12` and put its lib folder on \
                 LD_LIBRARY_PATH)",
            ));
        }
        let arch = self.arch(k);
        let ptx = compiled(k, &arch).map_err(|e| self.err(e))?;
        self.ctx.load_module(Ptx::from_src(ptx)).map_err(|e| {
            self.err(format!(
                "the driver cannot load cuda/{}.cu built for {arch}: {e} (a driver older than \
                 the NVRTC that compiled it reports CUDA_ERROR_UNSUPPORTED_PTX_VERSION)",
                k.name
            ))
        })
    }

    /// Launches `entry` of `k` with `args` on the stream, or records it while this thread
    /// records a decode step.
    pub(crate) fn launch(
        &self,
        k: &'static Kernel,
        entry: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        shared: u32,
        args: &[Arg],
    ) -> Result<()> {
        let r = Recorded {
            func: self.func(k, entry)?,
            kernel: k.name,
            entry,
            grid: (grid.0.max(1), grid.1.max(1), grid.2.max(1)),
            block,
            shared,
            args: args.to_vec(),
        };
        {
            let mut guard = self.step.lock().unwrap();
            if let Some(step) = mine(&mut guard)
                && step.recording
            {
                step.launches.push(r);
                step.fresh.clear();
                return Ok(());
            }
        }
        self.launch_now(&r)
    }

    fn launch_now(&self, r: &Recorded) -> Result<()> {
        self.bind()?;
        let mut p = Params::new(&r.args);
        // SAFETY: every kernel's parameter list is matched by its caller in ops/, `p` holds
        // the values while the driver copies them, and the buffers passed outlive the stream
        // work (they are freed only through cudarc, which orders frees on the same stream, or
        // belong to the arena, which lives as long as the device).
        unsafe {
            sys::cuLaunchKernel(
                r.func.cu_function(),
                r.grid.0,
                r.grid.1,
                r.grid.2,
                r.block,
                1,
                1,
                r.shared,
                self.stream.cu_stream(),
                p.as_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(|e| self.driver(&format!("launching {}", r.name()), e))
    }
}

/// The step in `guard` if this thread is the one recording it.
fn mine<'a>(guard: &'a mut MutexGuard<'_, Option<(ThreadId, Step)>>) -> Option<&'a mut Step> {
    match guard.as_mut() {
        Some((t, step)) if *t == std::thread::current().id() => Some(step),
        _ => None,
    }
}

/// Grid size for `n` items at `per` items per block (grid x allows 2^31 - 1 blocks).
pub(crate) fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per.max(1)).clamp(1, i32::MAX as usize) as u32
}

/// One device as `nemotron-rt devices` lists it.
#[derive(Clone, Debug)]
pub struct DeviceSummary {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_bytes: usize,
    pub free_bytes: usize,
    /// Which 4-bit path decode takes on this device.
    pub fp4_path: &'static str,
}

/// The 4-bit path a device of compute capability `cc` takes by default.
pub fn fp4_path_for(cc: (i32, i32)) -> &'static str {
    if Family::Sm120.has(cc.0) {
        "FP4 tensor cores (mma.sync block_scale, W4A4) for NVFP4 linears and experts"
    } else if Family::Sm100.has(cc.0) {
        "FP4 tensor cores (tcgen05.mma block_scale, W4A4) for NVFP4 linears and experts"
    } else {
        "weight-only NVFP4 (decoded in registers, f32 math)"
    }
}

/// Every CUDA device, or why there are none. Never panics when CUDA is absent.
pub fn devices() -> std::result::Result<Vec<DeviceSummary>, String> {
    guarded("listing devices", || devices_unguarded().map_err(cerr)).map_err(|e| match e {
        Error::Backend { msg, .. } => msg,
        other => other.to_string(),
    })
}

fn devices_unguarded() -> std::result::Result<Vec<DeviceSummary>, String> {
    if !driver_present() {
        return Err("no driver found (libcuda not present)".into());
    }
    let n = CudaContext::device_count().map_err(|e| format!("cannot count devices: {e}"))?;
    let mut out = Vec::new();
    for i in 0..n.max(0) as usize {
        let ctx = CudaContext::new(i).map_err(|e| format!("cannot open device {i}: {e}"))?;
        let cc = ctx.compute_capability().unwrap_or((0, 0));
        let (free, total) = ctx.mem_get_info().unwrap_or((0, 0));
        out.push(DeviceSummary {
            ordinal: i,
            name: ctx.name().unwrap_or_else(|_| format!("device {i}")),
            compute_capability: cc,
            total_bytes: total,
            free_bytes: free,
            fp4_path: fp4_path_for(cc),
        });
    }
    Ok(out)
}
