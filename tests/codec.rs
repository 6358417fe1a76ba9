//! NVFP4 codec against the vectors NVIDIA ModelOpt 0.47 `NVFP4QTensor` produced
//! (`tests/fixtures/nvfp4_codec.{safetensors,json}`, copied unmodified from the shared
//! reference fixtures). Every comparison is bit-exact.

use std::sync::OnceLock;

use nemotron_rt::codec::fp8::{E4M3_TO_F32, e4m3_to_f32};
use nemotron_rt::codec::nvfp4::{
    self, E2M1_VALUES, Nvfp4Tensor, dequantize, dequantize_parts, pack_codes, quantize,
    quantize_with_tensor_scale, tensor_scale_for, unpack_codes,
};
use nemotron_rt::codec::{bf16_to_f32, fp8::f32_to_e4m3};
use safetensors::{Dtype, SafeTensors};

const CASES: [&str; 8] = [
    "random_normal",
    "random_heavy_tail",
    "zeros_negzero_tiny_blocks",
    "exact_ties_unit_global_scale",
    "huge_values",
    "tiny_values",
    "rows_of_different_magnitude",
    "bf16_input",
];

fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn st_bytes() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| std::fs::read(fixture_path("nvfp4_codec.safetensors")).unwrap())
}

fn meta() -> &'static serde_json::Value {
    static M: OnceLock<serde_json::Value> = OnceLock::new();
    M.get_or_init(|| {
        let s = std::fs::read_to_string(fixture_path("nvfp4_codec.json")).unwrap();
        serde_json::from_str(&s).unwrap()
    })
}

/// One ModelOpt case, decoded from the fixture file.
struct Case {
    name: &'static str,
    rows: usize,
    cols: usize,
    input: Vec<f32>,
    packed: Vec<u8>,
    codes: Vec<u8>,
    weight_scale: Vec<u8>,
    weight_scale_2: f32,
    dequant: Vec<f32>,
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn load(name: &'static str) -> Case {
    let st = SafeTensors::deserialize(st_bytes()).unwrap();
    let get = |field: &str, dtype: Dtype| {
        let t = st.tensor(&format!("{name}.{field}")).unwrap();
        assert_eq!(t.dtype(), dtype, "{name}.{field}");
        t
    };
    let input_t = st.tensor(&format!("{name}.input")).unwrap();
    let (rows, cols) = (input_t.shape()[0], input_t.shape()[1]);
    let input = match input_t.dtype() {
        Dtype::F32 => f32s(input_t.data()),
        Dtype::BF16 => input_t
            .data()
            .chunks_exact(2)
            .map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        d => panic!("{name}.input: unexpected dtype {d:?}"),
    };
    let packed = get("packed", Dtype::U8);
    assert_eq!(packed.shape(), [rows, cols / 2]);
    let codes = get("codes", Dtype::U8);
    assert_eq!(codes.shape(), [rows, cols]);
    let ws = get("weight_scale", Dtype::F8_E4M3);
    assert_eq!(ws.shape(), [rows, cols / 16]);
    let ws_bits = get("weight_scale_bits", Dtype::U8);
    assert_eq!(
        ws.data(),
        ws_bits.data(),
        "{name}: the two scale tensors disagree"
    );
    let ws2 = get("weight_scale_2", Dtype::F32);
    assert!(ws2.shape().is_empty());
    let dq = get("dequant", Dtype::F32);
    assert_eq!(dq.shape(), [rows, cols]);

    let m = &meta()["cases"][name];
    assert_eq!(m["shape"], serde_json::json!([rows, cols]), "{name}");
    let expect_dtype = if input_t.dtype() == Dtype::BF16 {
        "bfloat16"
    } else {
        "float32"
    };
    assert_eq!(m["input_dtype"], expect_dtype, "{name}");
    let weight_scale_2 = f32s(ws2.data())[0];
    // JSON holds the f64 widening of the same f32: both records of the scale must agree.
    assert_eq!(
        m["weight_scale_2"].as_f64().unwrap() as f32,
        weight_scale_2,
        "{name}"
    );

    Case {
        name,
        rows,
        cols,
        input,
        packed: packed.data().to_vec(),
        codes: codes.data().to_vec(),
        weight_scale: ws.data().to_vec(),
        weight_scale_2,
        dequant: f32s(dq.data()),
    }
}

fn all_cases() -> Vec<Case> {
    CASES.iter().map(|&n| load(n)).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Index of the first differing element, for readable failures on long vectors.
fn first_diff<'a, T: PartialEq>(a: &'a [T], b: &'a [T]) -> Option<(usize, &'a T, &'a T)> {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| (i, x, y))
}

fn assert_same<T: PartialEq + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) {
    if let Some((i, g, w)) = first_diff(got, want) {
        panic!("{what}: first difference at {i}: got {g:?}, ModelOpt {w:?}");
    }
}

#[test]
fn fixture_lists_exactly_these_cases() {
    let mut names: Vec<&str> = meta()["cases"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    let mut want = CASES.to_vec();
    want.sort_unstable();
    assert_eq!(names, want);
    assert_eq!(meta()["block_size"], 16);
}

#[test]
fn quantize_matches_modelopt_bit_exactly() {
    for c in all_cases() {
        let q = quantize(&c.input, c.rows, c.cols).unwrap();
        let n = c.name;
        assert_eq!((q.rows, q.cols), (c.rows, c.cols), "{n}");
        assert_eq!(
            q.tensor_scale.to_bits(),
            c.weight_scale_2.to_bits(),
            "{n}: weight_scale_2 {:e} vs ModelOpt {:e}",
            q.tensor_scale,
            c.weight_scale_2
        );
        assert_eq!(
            tensor_scale_for(&c.input).to_bits(),
            c.weight_scale_2.to_bits()
        );
        assert_same(
            &format!("{n}: weight_scale"),
            &q.block_scales,
            &c.weight_scale,
        );
        assert_same(&format!("{n}: codes"), &unpack_codes(&q.packed), &c.codes);
        assert_same(&format!("{n}: packed"), &q.packed, &c.packed);
        assert_same(
            &format!("{n}: dequant"),
            &bits(&dequantize(&q)),
            &bits(&c.dequant),
        );

        // Handing the same tensor scale in explicitly must not change anything.
        let q2 = quantize_with_tensor_scale(&c.input, c.rows, c.cols, c.weight_scale_2).unwrap();
        assert_eq!(q2, q, "{n}");
    }
}

#[test]
fn decode_of_modelopt_bytes_matches_modelopt_dequant() {
    for c in all_cases() {
        let n = c.name;
        let got =
            dequantize_parts(&c.packed, &c.weight_scale, c.weight_scale_2, c.rows, c.cols).unwrap();
        assert_same(&format!("{n}: dequant"), &bits(&got), &bits(&c.dequant));
        assert_eq!(pack_codes(&c.codes), c.packed, "{n}");
        assert_eq!(unpack_codes(&c.packed), c.codes, "{n}");

        // The per-block entry point kernels are checked against, directly.
        let blocks = c.cols / 16;
        let mut out = [0f32; 16];
        for r in 0..c.rows {
            for b in 0..blocks {
                let k = r * blocks + b;
                nvfp4::decode_block(
                    &c.packed[k * 8..k * 8 + 8],
                    c.weight_scale[k],
                    c.weight_scale_2,
                    &mut out,
                );
                assert_same(
                    &format!("{n}: block ({r},{b})"),
                    &bits(&out),
                    &bits(&c.dequant[k * 16..k * 16 + 16]),
                );
            }
        }
    }
}

fn swap_nibbles(p: &[u8]) -> Vec<u8> {
    p.iter().map(|b| b.rotate_left(4)).collect()
}

/// The comparisons above would catch a codec that packs the odd element into the low nibble.
#[test]
fn wrong_nibble_order_is_detected() {
    let c = load("random_normal");
    let q = quantize(&c.input, c.rows, c.cols).unwrap();
    let swapped = swap_nibbles(&q.packed);
    assert!(first_diff(&swapped, &c.packed).is_some());
    assert!(first_diff(&unpack_codes(&swapped), &c.codes).is_some());
    let wrong = Nvfp4Tensor {
        packed: swapped,
        ..q
    };
    assert!(first_diff(&bits(&dequantize(&wrong)), &bits(&c.dequant)).is_some());
    let decoded = dequantize_parts(
        &swap_nibbles(&c.packed),
        &c.weight_scale,
        c.weight_scale_2,
        c.rows,
        c.cols,
    )
    .unwrap();
    assert!(first_diff(&bits(&decoded), &bits(&c.dequant)).is_some());
}

/// Decoding as `(e2m1 * scale) * tensor_scale` instead of `e2m1 * (scale * tensor_scale)` is
/// a plausible kernel mistake; the fixtures must be able to tell the two apart.
#[test]
fn wrong_decode_order_is_detected() {
    let mut caught = Vec::new();
    for c in all_cases() {
        let codes = unpack_codes(&c.packed);
        let wrong: Vec<f32> = codes
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                E2M1_VALUES[q as usize] * e4m3_to_f32(c.weight_scale[i / 16]) * c.weight_scale_2
            })
            .collect();
        if first_diff(&bits(&wrong), &bits(&c.dequant)).is_some() {
            caught.push(c.name);
        }
    }
    assert!(caught.contains(&"random_normal"), "caught only {caught:?}");
}

/// Dividing by the two scales one after the other (or by a reciprocal) is the quantizer-side
/// counterpart; at least one ModelOpt case must reject it.
#[test]
fn wrong_quantize_order_is_detected() {
    let mut caught = 0;
    for c in all_cases() {
        let q = quantize(&c.input, c.rows, c.cols).unwrap();
        let two_step: Vec<u8> = c
            .input
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                nvfp4::encode_e2m1(x / e4m3_to_f32(q.block_scales[i / 16]) / q.tensor_scale)
            })
            .collect();
        caught += usize::from(two_step != c.codes);
    }
    assert!(caught > 0);
}

#[test]
fn documented_corner_cases_of_the_fixture() {
    let m = &meta()["cases"]["exact_ties_unit_global_scale"];
    let c = load("exact_ties_unit_global_scale");
    assert_eq!(c.weight_scale_2, 1.0);
    let q = quantize(&c.input, c.rows, c.cols).unwrap();
    let codes = unpack_codes(&q.packed);
    let row0: Vec<u8> = m["row0_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(codes[..32], row0[..]);
    let deq = dequantize(&q);
    for (i, v) in m["row0_dequant"].as_array().unwrap().iter().enumerate() {
        assert_eq!(deq[i], v.as_f64().unwrap() as f32, "row0[{i}]");
    }
    // row 4 block 1: amax 6.375 -> 1.0625 is an E4M3 tie that rounds to 1.0; row 5 block 0:
    // 7/6 -> 1.125; row 5 block 1 holds 2688, i.e. 448 (the clamp's upper end).
    let scale = |r: usize, b: usize| E4M3_TO_F32[q.block_scales[r * 2 + b] as usize];
    assert_eq!([scale(4, 0), scale(4, 1)], [1.0, 1.0]);
    assert_eq!([scale(5, 0), scale(5, 1)], [1.125, 448.0]);
    assert_eq!(f32_to_e4m3(6.375 / 6.0), 0x38);

    // zero / -0.0 / tiny blocks
    let c = load("zeros_negzero_tiny_blocks");
    let q = quantize(&c.input, c.rows, c.cols).unwrap();
    let codes = unpack_codes(&q.packed);
    let blocks = c.cols / 16;
    assert_eq!(
        q.block_scales[blocks + 1],
        0x38,
        "all-zero block -> scale 1.0"
    );
    assert_eq!(
        q.block_scales[2 * blocks],
        0x38,
        "all -0.0 block -> scale 1.0"
    );
    assert!(
        codes[2 * c.cols..2 * c.cols + 16].iter().all(|&k| k == 0),
        "-0.0 -> code 0"
    );
    assert_eq!(
        q.block_scales[5 * blocks + 1],
        0x01,
        "1e-30 block clamps to 2^-9"
    );
    let tiny = &codes[5 * c.cols + 16..5 * c.cols + 32];
    assert_eq!(tiny[..8], [0; 8]);
    assert_eq!(
        tiny[8..],
        [8; 8],
        "negatives rounding to zero keep the sign bit"
    );
    let deq = dequantize(&q);
    assert!(deq.iter().all(|v| !v.is_nan()));
    assert!(
        deq[5 * c.cols + 24..5 * c.cols + 32]
            .iter()
            .all(|v| v.to_bits() == 0),
        "code 8 decodes to +0.0"
    );
}
