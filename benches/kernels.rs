//! Batch-1 GEMV through the CPU backend's public API, at Nemotron 3 Super's shapes, reported
//! as weight bytes read per second (criterion's `Throughput::Bytes`).
//!
//! `cargo bench --bench kernels` (about two minutes). `NEMOTRON_CPU_SIMD=off` measures the
//! portable fallback instead of the SIMD kernels; `KERNELS_THREADS=1,2` picks the thread counts.
//! Each case cycles through enough copies of its weights (> 96 MiB) that every GEMV streams
//! them from DRAM, as decode does, rather than from the last-level cache. The machine's
//! streaming-read bandwidth on the same thread counts is printed first for comparison.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nemotron_rt::backend::{self, Backend, BackendKind, Tensor, Weight};
use nemotron_rt::checkpoint::{ByteView, DType};
use nemotron_rt::codec::nvfp4;
use nemotron_rt::weights::{LinearData, StoredLinear};

/// Weights cycled per case, at least this many bytes (L3 here is 32 MiB).
const WORKING_SET: usize = 96 << 20;

/// xorshift64*: deterministic weights and inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

#[derive(Clone, Copy)]
enum Fmt {
    Nvfp4,
    Bf16,
    Fp8,
}

/// One `[rows, cols]` weight in `fmt`, as `copies` independent buffers.
fn weights(fmt: Fmt, rows: usize, cols: usize, rng: &mut Rng) -> (Vec<StoredLinear>, usize) {
    let name = "bench";
    let make = |data: LinearData| StoredLinear {
        name: name.into(),
        rows,
        cols,
        data,
        input_scale: None,
        bias: None,
    };
    let (one, bytes): (Box<dyn Fn() -> LinearData>, usize) = match fmt {
        Fmt::Nvfp4 => {
            let q = nvfp4::quantize(&rng.vec(rows * cols), rows, cols).expect("quantize");
            let bytes = q.packed.len() + q.block_scales.len();
            let f = move || LinearData::Nvfp4 {
                packed: ByteView::owned(q.packed.clone(), name),
                block_scales: ByteView::owned(q.block_scales.clone(), name),
                tensor_scale: q.tensor_scale,
            };
            (Box::new(f), bytes)
        }
        Fmt::Bf16 => {
            let b: Vec<u8> = (0..rows * cols)
                .flat_map(|_| half::bf16::from_f32(rng.f32() * 0.05).to_le_bytes())
                .collect();
            let bytes = b.len();
            let f = move || LinearData::Dense {
                dtype: DType::BF16,
                data: ByteView::owned(b.clone(), name),
            };
            (Box::new(f), bytes)
        }
        Fmt::Fp8 => {
            // Any E4M3 byte but the NaNs (0x7f, 0xff).
            let b: Vec<u8> = (0..rows * cols)
                .map(|_| match (rng.next() >> 56) as u8 {
                    v if v & 0x7f == 0x7f => v - 1,
                    v => v,
                })
                .collect();
            let bytes = b.len();
            let f = move || LinearData::Fp8 {
                data: ByteView::owned(b.clone(), name),
                scale: 0.01,
            };
            (Box::new(f), bytes)
        }
    };
    let copies = WORKING_SET.div_ceil(bytes).max(1);
    ((0..copies).map(|_| make(one())).collect(), bytes)
}

fn gemv(c: &mut Criterion) {
    let threads: Vec<usize> = std::env::var("KERNELS_THREADS")
        .ok()
        .map(|s| s.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2]);
    let simd = std::env::var("NEMOTRON_CPU_SIMD").map_or("auto".to_string(), |v| v);
    for &t in &threads {
        let bw = nemotron_rt::bench::measure_bandwidth(t, 1 << 30);
        eprintln!("streaming-read bandwidth, {t} thread(s): {bw:.1} GB/s");
    }
    eprintln!("NEMOTRON_CPU_SIMD={simd}");

    let mut rng = Rng(0x1234_5678_9abc_def1);
    // (format, in, out): Super's routed expert up/down (NVFP4), its latent and Mamba-sized
    // projections, a BF16 attention projection, an FP8 Mamba projection.
    let cases = [
        (Fmt::Nvfp4, 4096, 1024),
        (Fmt::Nvfp4, 1024, 2688),
        (Fmt::Nvfp4, 2688, 1024),
        (Fmt::Nvfp4, 4096, 5376),
        (Fmt::Bf16, 4096, 4096),
        (Fmt::Fp8, 4096, 8192),
    ];
    for (fmt, cols, rows) in cases {
        let (stored, bytes) = weights(fmt, rows, cols, &mut rng);
        let x = rng.vec(cols);
        let label = match fmt {
            Fmt::Nvfp4 => "nvfp4",
            Fmt::Bf16 => "bf16",
            Fmt::Fp8 => "fp8",
        };
        let mut group = c.benchmark_group(format!("gemv_{label}_{cols}x{rows}"));
        group.throughput(Throughput::Bytes(bytes as u64));
        for &t in &threads {
            let be: Arc<dyn Backend> = backend::create(BackendKind::Cpu, t).expect("cpu backend");
            let ws: Vec<Weight> = stored
                .iter()
                .map(|s| be.load_linear(s).expect("load"))
                .collect();
            let xt: Tensor = be.upload(&x, &[1, cols]).expect("upload");
            let mut i = 0;
            group.bench_function(format!("threads_{t}"), |b| {
                b.iter(|| {
                    i = (i + 1) % ws.len();
                    let y = be.linear(black_box(&xt), &ws[i]).expect("linear");
                    black_box(be.download(&y).expect("download"))
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = kernels;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = gemv
}
criterion_main!(kernels);
