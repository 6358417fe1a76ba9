//! The device plumbing every CUDA op shares: one context and stream, device buffers with
//! out-of-memory errors that give the numbers, a module cache (each `cuda/<op>.cu` compiled
//! once per device with NVRTC), and kernel launches. Nothing here panics on a CUDA error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::CUresult;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::kernels::Kernel;
use crate::error::{Error, Result};

/// A device allocation of `bytes` bytes. Its address is taken once: the backend uses a single
/// stream with cudarc's cross-stream event tracking switched off, so no guard is needed.
pub(crate) struct Buf {
    pub slice: CudaSlice<u8>,
    pub ptr: u64,
    pub bytes: usize,
}

/// A kernel argument.
#[derive(Clone, Copy)]
pub(crate) enum Arg {
    Ptr(u64),
    I32(i32),
    U64(u64),
    F32(f32),
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
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Looked up once: a decode step launches hundreds of kernels.
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
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
        Ok(Device {
            ctx,
            stream,
            ordinal,
            name,
            cc,
            modules: Mutex::default(),
            functions: Mutex::default(),
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

    /// `bytes` of uninitialised device memory (every op overwrites its output). Running out
    /// of memory reports what was needed and what the device had free.
    pub(crate) fn alloc(&self, bytes: usize, what: &str) -> Result<Buf> {
        let n = bytes.max(4);
        // SAFETY: u8 has no invalid bit patterns; callers write before they read.
        match unsafe { self.stream.alloc::<u8>(n) } {
            Ok(slice) => {
                let (ptr, _) = slice.device_ptr(&self.stream);
                Ok(Buf { slice, ptr, bytes })
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

    pub(crate) fn zeros(&self, bytes: usize, what: &str) -> Result<Buf> {
        let mut b = self.alloc(bytes, what)?;
        self.stream
            .memset_zeros(&mut b.slice)
            .map_err(|e| self.driver("clearing a buffer", e))?;
        Ok(b)
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
        let mut view = b.slice.slice_mut(off..off + data.len());
        self.stream
            .memcpy_htod(data, &mut view)
            .map_err(|e| self.driver(&format!("uploading {what}"), e))
    }

    pub(crate) fn upload_f32(&self, data: &[f32], what: &str) -> Result<Buf> {
        self.upload_bytes(bytemuck::cast_slice(data), what)
    }

    /// The first `bytes` of `b`, after everything queued so far: the one synchronisation point.
    pub(crate) fn read(&self, b: &Buf, bytes: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; bytes];
        if bytes > 0 {
            let view = b.slice.slice(..bytes);
            self.stream
                .memcpy_dtoh(&view, &mut out)
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
        let s = src.slice.slice(src_off..src_off + bytes);
        let mut d = dst.slice.slice_mut(dst_off..dst_off + bytes);
        self.stream
            .memcpy_dtod(&s, &mut d)
            .map_err(|e| self.driver("copying on the device", e))
    }

    /// NVRTC target for this device: the virtual architecture, so only NVRTC's front end runs
    /// here (fast) and the driver turns the PTX into machine code (cached by the driver).
    pub(crate) fn arch(&self, k: &Kernel) -> String {
        let (ma, mi) = self.cc;
        if k.sm120_only {
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

    /// Launches `entry` of `k` with `args` on the stream.
    pub(crate) fn launch(
        &self,
        k: &'static Kernel,
        entry: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        shared: u32,
        args: &[Arg],
    ) -> Result<()> {
        let f = self.func(k, entry)?;
        // Argument values must outlive the builder, which keeps pointers to them.
        let vals: Vec<[u8; 8]> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) | Arg::U64(p) => p.to_ne_bytes(),
                Arg::I32(v) => {
                    let mut b = [0u8; 8];
                    b[..4].copy_from_slice(&v.to_ne_bytes());
                    b
                }
                Arg::F32(v) => {
                    let mut b = [0u8; 8];
                    b[..4].copy_from_slice(&v.to_ne_bytes());
                    b
                }
            })
            .collect();
        let u64s: Vec<u64> = vals.iter().map(|b| u64::from_ne_bytes(*b)).collect();
        let u32s: Vec<u32> = vals
            .iter()
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut lb = self.stream.launch_builder(&f);
        for (i, a) in args.iter().enumerate() {
            match a {
                Arg::Ptr(_) | Arg::U64(_) => lb.arg(&u64s[i]),
                Arg::I32(_) | Arg::F32(_) => lb.arg(&u32s[i]),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid.0.max(1), grid.1.max(1), grid.2.max(1)),
            block_dim: (block, 1, 1),
            shared_mem_bytes: shared,
        };
        // SAFETY: every kernel's parameter list is matched by its caller in ops/, and the
        // buffers passed outlive the stream work (they are freed only through cudarc, which
        // orders frees on the same stream).
        unsafe { lb.launch(cfg) }
            .map(|_| ())
            .map_err(|e| self.driver(&format!("launching {}::{entry}", k.name), e))
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
    if cc.0 == 12 {
        "FP4 tensor cores (mma.sync block_scale, W4A4) for NVFP4 linears; weight-only for experts"
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
