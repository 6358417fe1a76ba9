//! A decode step through the Mamba-2 and attention ops of the CPU backend allocates only the
//! tensors it returns: nothing per head, per channel or per cached position. Counted with a
//! global allocator over every thread, at Super's dimensions.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use nemotron_rt::backend::{self, AttnDims, Backend, BackendKind, SsmDims};
use nemotron_rt::checkpoint::{ByteView, DType};
use nemotron_rt::weights::{LinearData, StoredLinear};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made while `f` runs (any thread).
fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.load(Ordering::SeqCst);
    f();
    ALLOCS.load(Ordering::SeqCst) - before
}

fn vector(be: &dyn Backend, name: &str, n: usize, v: f32) -> backend::Weight {
    be.load_vector(name, &vec![v; n]).unwrap()
}

/// At most this many allocations for one op's result (its buffer, shape and boxed handle).
const PER_RESULT: usize = 4;

#[test]
fn mamba_and_attention_decode_steps_allocate_only_their_outputs() {
    let be = backend::create(BackendKind::Cpu, 2).unwrap();
    let dims = SsmDims {
        heads: 128,
        head_dim: 64,
        groups: 8,
        state: 128,
    };
    let inner = dims.heads * dims.head_dim;
    let width = inner + 2 * dims.groups * dims.state;
    let (k, channels) = (4, width);
    let conv_w = StoredLinear {
        name: "conv1d.weight".into(),
        rows: channels,
        cols: k,
        data: LinearData::Dense {
            dtype: DType::F32,
            data: ByteView::owned(
                bytemuck::cast_slice(&vec![0.1f32; channels * k]).to_vec(),
                "w",
            ),
        },
        input_scale: None,
        bias: None,
    };
    let conv_w = be.load_linear(&conv_w).unwrap();
    let conv_b = vector(&*be, "conv1d.bias", channels, 0.01);
    let a_log = vector(&*be, "A_log", dims.heads, 0.5);
    let d = vector(&*be, "D", dims.heads, 1.0);
    let dt_bias = vector(&*be, "dt_bias", dims.heads, 0.1);
    let mut conv_state = be.new_conv_state(channels, k).unwrap();
    let mut ssm_state = be.new_ssm_state(dims).unwrap();
    let x = be.upload(&vec![0.2f32; channels], &[1, channels]).unwrap();
    let dt = be
        .upload(&vec![0.3f32; dims.heads], &[1, dims.heads])
        .unwrap();

    let attn = AttnDims {
        heads: 32,
        kv_heads: 2,
        head_dim: 128,
    };
    let mut cache = be.new_kv_cache(attn).unwrap();
    let q = be.upload(&vec![0.1f32; 32 * 128], &[1, 32 * 128]).unwrap();
    let kv = be.upload(&vec![0.1f32; 2 * 128], &[1, 2 * 128]).unwrap();
    // A context long enough that growth of the cache is rare; warm every thread's scratch.
    let prompt = be
        .upload(&vec![0.1f32; 64 * 2 * 128], &[64, 2 * 128])
        .unwrap();
    let pq = be
        .upload(&vec![0.1f32; 64 * 32 * 128], &[64, 32 * 128])
        .unwrap();
    be.attention(&pq, &prompt, &prompt, &mut cache, attn)
        .unwrap();

    // The fewest allocations over `n` steps: the counter sees every thread, and a pool worker
    // may now and then allocate for itself (a stray one was seen under a loaded machine); what
    // an op allocates per head or per position shows in every step.
    let mut step = |n: usize| {
        let mut counts = [usize::MAX; 3];
        for _ in 0..n {
            counts[0] = counts[0].min(allocations(|| {
                be.conv1d_silu(&x, &conv_w, Some(&conv_b), &mut conv_state)
                    .unwrap();
            }));
            counts[1] = counts[1].min(allocations(|| {
                be.ssm_scan(&x, &dt, &a_log, &d, &dt_bias, &mut ssm_state, dims, None)
                    .unwrap();
            }));
            counts[2] = counts[2].min(allocations(|| {
                be.attention(&q, &kv, &kv, &mut cache, attn).unwrap();
            }));
        }
        counts
    };
    step(3);
    let [conv, scan, att] = step(4);
    assert!(
        conv <= PER_RESULT,
        "conv1d_silu decode step: {conv} allocations"
    );
    assert!(
        scan <= PER_RESULT,
        "ssm_scan decode step: {scan} allocations"
    );
    assert!(
        att <= PER_RESULT,
        "attention decode step: {att} allocations"
    );
}
