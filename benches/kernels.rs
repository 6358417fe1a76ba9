//! Batch-1 GEMV, one token through a MoE layer, and one Mamba-2 decode step, through the CPU
//! backend's public API at Nemotron 3 Super's shapes, reported as weight bytes read per second
//! (criterion's `Throughput::Bytes`).
//!
//! `cargo bench --bench kernels` (about three minutes; `cargo bench --bench kernels -- moe`
//! runs one group). `NEMOTRON_CPU_SIMD=off` measures the
//! portable fallback instead of the SIMD kernels; `KERNELS_THREADS=1,2` picks the thread counts.
//! Each case cycles through enough copies of its weights (> 96 MiB) that every GEMV streams
//! them from DRAM, as decode does, rather than from the last-level cache
//! (`KERNELS_WORKING_SET_MIB=0` keeps one copy, to measure the kernels from cache). The machine's
//! streaming-read bandwidth on the same thread counts is printed first for comparison.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nemotron_rt::backend::{Backend, RouterParams, SsmDims, Tensor, Weight};
use nemotron_rt::checkpoint::{ByteView, DType};
use nemotron_rt::codec::nvfp4;
use nemotron_rt::weights::{LinearData, StoredLinear};

/// Weights cycled per case, at least this many bytes (L3 here is 32 MiB), unless
/// `KERNELS_WORKING_SET_MIB` says otherwise (a small set measures the kernels from cache).
fn working_set() -> usize {
    std::env::var("KERNELS_WORKING_SET_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(96 << 20, |m| m << 20)
}

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
    let copies = working_set().div_ceil(bytes).max(1);
    ((0..copies).map(|_| make(one())).collect(), bytes)
}

fn thread_counts() -> Vec<usize> {
    std::env::var("KERNELS_THREADS")
        .ok()
        .map(|s| s.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2])
}

/// The CPU backend on `t` threads; `KERNELS_Q8=1` measures `--cpu-activations q8`.
fn cpu(t: usize) -> Arc<dyn Backend> {
    let q8 = std::env::var("KERNELS_Q8").is_ok_and(|v| v == "1");
    Arc::new(
        nemotron_rt::backend::cpu::CpuBackend::with_q8_activations(t, q8).expect("cpu backend"),
    )
}

fn gemv(c: &mut Criterion) {
    let threads = thread_counts();
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
            let be = cpu(t);
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

/// An NVFP4 `[rows, cols]` weight with random codes and block scales around 2^-4, made
/// directly in the stored layout (quantizing 1.4 G values for 512 experts would take minutes).
fn random_nvfp4(name: &str, rows: usize, cols: usize, rng: &mut Rng) -> StoredLinear {
    let packed: Vec<u8> = (0..rows * cols / 2)
        .map(|_| (rng.next() >> 56) as u8)
        .collect();
    // E4M3 exponent field 3..=5: scales from 2^-4 to 2^-2, never NaN.
    let block_scales: Vec<u8> = (0..rows * cols / 16)
        .map(|_| (((rng.next() >> 61) % 3 + 3) << 3) as u8 | ((rng.next() >> 61) as u8))
        .collect();
    StoredLinear {
        name: name.into(),
        rows,
        cols,
        data: LinearData::Nvfp4 {
            packed: ByteView::owned(packed, name),
            block_scales: ByteView::owned(block_scales, name),
            tensor_scale: 0.05,
        },
        input_scale: None,
        bias: None,
    }
}

fn bf16(name: &str, rows: usize, cols: usize, rng: &mut Rng) -> StoredLinear {
    let (mut ws, _) = weights(Fmt::Bf16, rows, cols, rng);
    let mut w = ws.swap_remove(0);
    w.name = name.into();
    w
}

/// One token through a Super MoE layer as the model runs it: the BF16 router (4096 -> 512),
/// sigmoid top-22 routing, the latent down-projection (4096 -> 1024), the 22 chosen experts of
/// 512 (NVFP4 1024 -> 2688 -> 1024), the latent up-projection and the NVFP4 shared expert
/// (4096 -> 5376 -> 4096). Each iteration feeds a different input, so the experts change.
fn moe_layer(c: &mut Criterion) {
    let (hidden, latent, ffn, shared, experts, top_k) = (4096, 1024, 2688, 5376, 512, 22);
    let mut rng = Rng(0x005e_ed0f_4d0e);
    let up: Vec<StoredLinear> = (0..experts)
        .map(|e| random_nvfp4(&format!("experts.{e}.up_proj"), ffn, latent, &mut rng))
        .collect();
    let down: Vec<StoredLinear> = (0..experts)
        .map(|e| random_nvfp4(&format!("experts.{e}.down_proj"), latent, ffn, &mut rng))
        .collect();
    let gate = bf16("gate", experts, hidden, &mut rng);
    let fc1 = bf16("fc1_latent_proj", latent, hidden, &mut rng);
    let fc2 = bf16("fc2_latent_proj", hidden, latent, &mut rng);
    let sh_up = random_nvfp4("shared_experts.up_proj", shared, hidden, &mut rng);
    let sh_down = random_nvfp4("shared_experts.down_proj", hidden, shared, &mut rng);
    let inputs: Vec<Vec<f32>> = (0..64).map(|_| rng.vec(hidden)).collect();
    let nv = |r: usize, c: usize| r * c / 2 + r * c / 16;
    let bytes = 2 * (experts * hidden + latent * hidden * 2)
        + top_k * (nv(ffn, latent) + nv(latent, ffn))
        + nv(shared, hidden)
        + nv(hidden, shared);
    let params = RouterParams {
        top_k,
        n_group: 1,
        topk_group: 1,
        norm_topk_prob: true,
        scaling: 5.0,
    };
    let mut group = c.benchmark_group("moe_layer_one_token");
    group.throughput(Throughput::Bytes(bytes as u64));
    for t in thread_counts() {
        let be = cpu(t);
        let ex = be.load_experts("experts", &up, &down).expect("experts");
        let [gate, fc1, fc2, sh_up, sh_down] =
            [&gate, &fc1, &fc2, &sh_up, &sh_down].map(|w| be.load_linear(w).expect("load"));
        let bias = be.load_vector("bias", &vec![0.0; experts]).expect("bias");
        let xs: Vec<Tensor> = inputs
            .iter()
            .map(|x| be.upload(x, &[1, hidden]).expect("upload"))
            .collect();
        let mut i = 0;
        group.bench_function(format!("threads_{t}"), |b| {
            b.iter(|| {
                i = (i + 1) % xs.len();
                let x = &xs[i];
                let routing = be
                    .router(&be.linear(x, &gate).expect("gate"), &bias, &params)
                    .expect("router");
                let lat = be.linear(x, &fc1).expect("fc1");
                let routed = be.moe_experts(&lat, &ex, &routing).expect("experts");
                let mut y = be.linear(&routed, &fc2).expect("fc2");
                let h = be.relu2(&be.linear(x, &sh_up).expect("up")).expect("relu2");
                be.add(&mut y, &be.linear(&h, &sh_down).expect("down"))
                    .expect("add");
                black_box(be.download(&y).expect("download"))
            })
        });
    }
    group.finish();
}

/// One Mamba-2 decode step at Super's shapes: the BF16 in_proj (4096 -> 2·8192 + 2·8·128 +
/// 128), causal conv with its carried state, the selective scan over 128 heads x 64 x 128
/// states, the gated grouped RMSNorm and the BF16 out_proj (8192 -> 4096).
fn mamba_step(c: &mut Criterion) {
    let dims = SsmDims {
        heads: 128,
        head_dim: 64,
        groups: 8,
        state: 128,
    };
    let (hidden, kernel) = (4096, 4);
    let inner = dims.heads * dims.head_dim;
    let gn = dims.groups * dims.state;
    let conv_ch = inner + 2 * gn;
    let mut rng = Rng(0x003a_3ba2);
    let in_proj = bf16("in_proj", 2 * inner + 2 * gn + dims.heads, hidden, &mut rng);
    let out_proj = bf16("out_proj", hidden, inner, &mut rng);
    let conv = StoredLinear {
        name: "conv1d".into(),
        rows: conv_ch,
        cols: kernel,
        data: LinearData::Dense {
            dtype: DType::F32,
            data: ByteView::owned(
                bytemuck::cast_slice(&rng.vec(conv_ch * kernel)).to_vec(),
                "conv1d",
            ),
        },
        input_scale: None,
        bias: None,
    };
    let inputs: Vec<Vec<f32>> = (0..16).map(|_| rng.vec(hidden)).collect();
    let bytes = 2 * (in_proj.rows * hidden + hidden * inner) + 4 * conv_ch * kernel;
    let mut group = c.benchmark_group("mamba2_decode_step");
    group.throughput(Throughput::Bytes(bytes as u64));
    for t in thread_counts() {
        let be = cpu(t);
        let [in_w, out_w, conv_w] =
            [&in_proj, &out_proj, &conv].map(|w| be.load_linear(w).expect("load"));
        let vec_of = |name: &str, n: usize, v: f32| be.load_vector(name, &vec![v; n]).expect(name);
        let (conv_b, a_log) = (
            vec_of("conv_b", conv_ch, 0.0),
            vec_of("A_log", dims.heads, 0.5),
        );
        let (d, dt_bias) = (
            vec_of("D", dims.heads, 1.0),
            vec_of("dt_bias", dims.heads, 0.0),
        );
        let norm = vec_of("norm", inner, 1.0);
        let mut conv_state = be.new_conv_state(conv_ch, kernel).expect("conv state");
        let mut ssm_state = be.new_ssm_state(dims).expect("ssm state");
        let xs: Vec<Tensor> = inputs
            .iter()
            .map(|x| be.upload(x, &[1, hidden]).expect("upload"))
            .collect();
        let mut i = 0;
        group.bench_function(format!("threads_{t}"), |b| {
            b.iter(|| {
                i = (i + 1) % xs.len();
                let zxbcdt = be.linear(&xs[i], &in_w).expect("in_proj");
                let parts = be
                    .split_columns(&zxbcdt, &[inner, conv_ch, dims.heads])
                    .expect("split");
                let xbc = be
                    .conv1d_silu(&parts[1], &conv_w, Some(&conv_b), &mut conv_state)
                    .expect("conv");
                let y = be
                    .ssm_scan(
                        &xbc,
                        &parts[2],
                        &a_log,
                        &d,
                        &dt_bias,
                        &mut ssm_state,
                        dims,
                        None,
                    )
                    .expect("scan");
                let y = be
                    .gated_group_rms_norm(&y, &parts[0], &norm, dims.groups, 1e-5)
                    .expect("norm");
                black_box(
                    be.download(&be.linear(&y, &out_w).expect("out_proj"))
                        .expect("download"),
                )
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = kernels;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = gemv, moe_layer, mamba_step
}
criterion_main!(kernels);
