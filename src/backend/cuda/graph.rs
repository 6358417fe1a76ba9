//! Decode steps replayed as CUDA graphs. A decode step at batch 1 is hundreds of small kernel
//! launches; issuing them one by one costs the host a few microseconds each and leaves the GPU
//! idle between them, which at 12B active parameters is a large part of a token's time.
//!
//! How: while a step runs, the model's host code runs as always (shape checks, KV lengths,
//! per-sequence bookkeeping), but kernels are recorded instead of launched, and every output
//! and temporary comes from a step arena that hands out the same addresses each step. At the
//! end of the step the recorded launches are compared with the graph kept for that sequence:
//! the same kernels in the same order with the same launch shapes replay it, after rewriting
//! the parameters of the nodes whose arguments changed (the KV length of attention, a cache
//! that grew); anything else builds a new graph. The result is copied out of the arena, so it
//! stays valid after the next step reuses it.
//!
//! Anything a graph cannot hold (a read back to the host, a copy, a write into memory a
//! recorded kernel already uses) first launches what was recorded, in order, and the rest of
//! the step runs directly: the same work in the same order, only without the graph.

use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::driver::CudaFunction;
use cudarc::driver::sys;

use super::device::{Arg, Buf, Device};
use crate::error::Result;

/// One recorded kernel launch.
#[derive(Clone)]
pub(crate) struct Recorded {
    pub func: CudaFunction,
    /// The kernel file and entry point, for errors.
    pub kernel: &'static str,
    pub entry: &'static str,
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub shared: u32,
    pub args: Vec<Arg>,
}

impl Recorded {
    pub(crate) fn name(&self) -> String {
        format!("cuda/{}.cu::{}", self.kernel, self.entry)
    }

    /// Same kernel, launch shape and argument types: a graph node can be rewritten from one
    /// to the other.
    fn same_shape(&self, o: &Recorded) -> bool {
        self.func.cu_function() == o.func.cu_function()
            && (self.grid, self.block, self.shared) == (o.grid, o.block, o.shared)
            && self.args.len() == o.args.len()
            && self
                .args
                .iter()
                .zip(&o.args)
                .all(|(a, b)| std::mem::discriminant(a) == std::mem::discriminant(b))
    }

    fn same_args(&self, o: &Recorded) -> bool {
        self.args
            .iter()
            .zip(&o.args)
            .all(|(a, b)| a.bits() == b.bits())
    }
}

/// A kernel's parameters as the driver reads them: one 8-byte slot per argument (a 4-byte
/// argument in its first half) and a pointer to each.
pub(crate) struct Params {
    values: Vec<[u8; 8]>,
    ptrs: Vec<*mut c_void>,
}

impl Params {
    pub(crate) fn new(args: &[Arg]) -> Params {
        let mut values: Vec<[u8; 8]> = args.iter().map(|a| a.bits().to_ne_bytes()).collect();
        let ptrs = values
            .iter_mut()
            .map(|v| v.as_mut_ptr().cast::<c_void>())
            .collect();
        Params { values, ptrs }
    }

    /// The `void**` the driver takes; valid while `self` lives.
    pub(crate) fn as_ptr(&mut self) -> *mut *mut c_void {
        debug_assert_eq!(self.values.len(), self.ptrs.len());
        self.ptrs.as_mut_ptr()
    }
}

pub(crate) fn node_params(r: &Recorded, params: &mut Params) -> sys::CUDA_KERNEL_NODE_PARAMS {
    sys::CUDA_KERNEL_NODE_PARAMS {
        func: r.func.cu_function(),
        gridDimX: r.grid.0.max(1),
        gridDimY: r.grid.1.max(1),
        gridDimZ: r.grid.2.max(1),
        blockDimX: r.block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: r.shared,
        kernelParams: params.as_ptr(),
        extra: std::ptr::null_mut(),
        kern: std::ptr::null_mut(),
        ctx: std::ptr::null_mut(),
    }
}

/// The step being recorded.
pub(crate) struct Step {
    pub key: u64,
    pub launches: Vec<Recorded>,
    /// False once something a graph cannot hold has run: the rest of the step launches
    /// directly.
    pub recording: bool,
    /// Arena buffers handed out since the last recorded launch: no recorded kernel can use
    /// them yet, so writing them from the host now is ordered correctly.
    pub fresh: Vec<u64>,
    /// Where the next arena allocation is tried: chunk index and offset.
    pub cursor: (usize, usize),
}

/// Memory for the outputs and temporaries of decode steps: chunks that live as long as the
/// backend, handed out from the start at every step. A step makes the same allocations in the
/// same order each time, so it gets the same addresses and its graph can be replayed as is.
#[derive(Default)]
pub(crate) struct Arena {
    pub chunks: Vec<Buf>,
    /// Counts steps; a view made in an earlier step is stale (see `Buf::epoch`).
    pub epoch: u64,
}

/// Chunks start at this size; a larger request gets a chunk of its own size.
pub(crate) const ARENA_CHUNK: usize = 16 << 20;
/// Arena addresses are aligned like the allocator's, for the kernels' 16-byte loads.
pub(crate) const ARENA_ALIGN: usize = 256;

impl Arena {
    /// Offset in chunk `cursor.0` or a later one where `bytes` fit, moving the cursor past it;
    /// `None` when a new chunk is needed.
    pub(crate) fn place(
        &self,
        cursor: &mut (usize, usize),
        bytes: usize,
    ) -> Option<(usize, usize)> {
        while cursor.0 < self.chunks.len() {
            let (c, off) = *cursor;
            if off + bytes <= self.chunks[c].bytes {
                *cursor = (c, (off + bytes).next_multiple_of(ARENA_ALIGN));
                return Some((c, off));
            }
            *cursor = (c + 1, 0);
        }
        None
    }
}

/// The graph of one sequence's decode step, instantiated.
pub(crate) struct StepGraph {
    pub graph: sys::CUgraph,
    pub exec: sys::CUgraphExec,
    pub nodes: Vec<sys::CUgraphNode>,
    pub launches: Vec<Recorded>,
    /// When it was last replayed, for evicting the least recently used.
    pub last_used: u64,
}

// SAFETY: the handles are plain driver objects, used only under the backend's lock.
unsafe impl Send for StepGraph {}

impl Drop for StepGraph {
    fn drop(&mut self) {
        // SAFETY: handles made by cuGraphCreate / cuGraphInstantiateWithFlags, destroyed once.
        // The stream may still be running the exec; the driver defers its destruction.
        unsafe {
            if !self.exec.is_null() {
                sys::cuGraphExecDestroy(self.exec);
            }
            if !self.graph.is_null() {
                sys::cuGraphDestroy(self.graph);
            }
        }
    }
}

impl StepGraph {
    /// Whether `launches` can replay this graph after rewriting some nodes' parameters.
    pub(crate) fn fits(&self, launches: &[Recorded]) -> bool {
        self.launches.len() == launches.len()
            && self
                .launches
                .iter()
                .zip(launches)
                .all(|(a, b)| a.same_shape(b))
    }

    /// Rewrites the parameters of nodes `changed` to those of `launches`.
    pub(crate) fn rewrite(
        &self,
        dev: &Device,
        changed: &[usize],
        launches: &[Recorded],
    ) -> Result<()> {
        for &i in changed {
            let r = &launches[i];
            let mut p = Params::new(&r.args);
            let np = node_params(r, &mut p);
            // SAFETY: a node of the graph `self.exec` was instantiated from; `p` outlives the
            // call, which copies the parameters.
            unsafe { sys::cuGraphExecKernelNodeSetParams_v2(self.exec, self.nodes[i], &np) }
                .result()
                .map_err(|e| dev.driver(&format!("updating {} in the step graph", r.name()), e))?;
        }
        Ok(())
    }

    /// A graph of `launches` in order, instantiated.
    pub(crate) fn build(dev: &Device, launches: Vec<Recorded>, clock: u64) -> Result<StepGraph> {
        let mut g = StepGraph {
            graph: std::ptr::null_mut(),
            exec: std::ptr::null_mut(),
            nodes: Vec::with_capacity(launches.len()),
            launches: Vec::new(),
            last_used: clock,
        };
        // SAFETY: plain driver calls with valid out-pointers; `g` destroys what was made if a
        // later call fails.
        unsafe {
            sys::cuGraphCreate(&mut g.graph, 0)
                .result()
                .map_err(|e| dev.driver("creating a step graph", e))?;
            for r in &launches {
                let mut p = Params::new(&r.args);
                let np = node_params(r, &mut p);
                let mut node: sys::CUgraphNode = std::ptr::null_mut();
                let deps = g.nodes.last().map_or(std::ptr::null(), |n| n as *const _);
                let ndeps = usize::from(!g.nodes.is_empty());
                sys::cuGraphAddKernelNode_v2(&mut node, g.graph, deps, ndeps, &np)
                    .result()
                    .map_err(|e| dev.driver(&format!("adding {} to a step graph", r.name()), e))?;
                g.nodes.push(node);
            }
            sys::cuGraphInstantiateWithFlags(&mut g.exec, g.graph, 0)
                .result()
                .map_err(|e| dev.driver("instantiating a step graph", e))?;
        }
        g.launches = launches;
        Ok(g)
    }

    /// Indices of the nodes whose arguments differ from `launches`.
    pub(crate) fn changed(&self, launches: &[Recorded]) -> Vec<usize> {
        (0..launches.len())
            .filter(|&i| !self.launches[i].same_args(&launches[i]))
            .collect()
    }
}

/// How many sequences keep a graph at once (a compare run, a speculative draft and its target).
pub(crate) const MAX_GRAPHS: usize = 8;

/// What decode steps did, for the bench and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Steps that ran as a graph built for them.
    pub built: u64,
    /// Steps that replayed a kept graph.
    pub replayed: u64,
    /// Node parameter rewrites over all replays.
    pub nodes_updated: u64,
    /// Steps that ran (partly) as direct launches.
    pub direct: u64,
    /// Kernels in the last step that ran as a graph.
    pub last_nodes: u64,
}

#[derive(Default)]
pub(crate) struct Graphs {
    pub by_key: HashMap<u64, StepGraph>,
    pub stats: GraphStats,
    pub clock: u64,
}

impl Graphs {
    /// Drops the least recently used graph when there are too many.
    pub(crate) fn make_room(&mut self) {
        while self.by_key.len() >= MAX_GRAPHS {
            let Some(&oldest) = self
                .by_key
                .iter()
                .min_by_key(|(_, g)| g.last_used)
                .map(|(k, _)| k)
            else {
                break;
            };
            self.by_key.remove(&oldest);
        }
    }
}
