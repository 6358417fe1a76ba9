//! Every quantized weight of the quantized fixtures, decoded inside the backend's linear kernel,
//! must equal ModelOpt's own dequantization (`dequantized_fp32.safetensors`) bit for bit.
//! The kernel is probed with one-hot inputs: `x = e_c` gives `y[r] = W[r, c]` exactly.

use std::path::{Path, PathBuf};

use nemotron_rt::backend::{self, BackendKind};
use nemotron_rt::checkpoint::{Checkpoint, DType};
use nemotron_rt::quant_config::QuantConfig;
use nemotron_rt::weights::StoredLinear;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn check(name: &str) -> usize {
    let dir = fixture(name).join("hf");
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let quant = QuantConfig::load(&dir, &raw).unwrap().expect("quantized");
    let ck = Checkpoint::open(&dir).unwrap();
    let reference =
        Checkpoint::open_file(&fixture(name).join("dequantized_fp32.safetensors")).unwrap();
    let be = backend::create(BackendKind::Cpu, 2).unwrap();
    let mut checked = 0;
    for t in ck.tensors() {
        let Some(module) = t.name.strip_suffix(".weight") else {
            continue;
        };
        if !matches!(t.dtype, DType::U8 | DType::F8E4M3) {
            continue;
        }
        let want = reference.get(&t.name).unwrap().to_f32_vec().unwrap();
        let rows = t.shape[0];
        let cols = want.len() / rows;
        let w = StoredLinear::load(&ck, Some(&quant), module, rows, cols, false).unwrap();
        let weight = be.load_linear(&w).unwrap();
        let mut eye = vec![0.0f32; cols * cols];
        for c in 0..cols {
            eye[c * cols + c] = 1.0;
        }
        let x = be.upload(&eye, &[cols, cols]).unwrap();
        let y = be.download(&be.linear(&x, &weight).unwrap()).unwrap();
        for c in 0..cols {
            for r in 0..rows {
                let (got, exp) = (y[c * rows + r], want[r * cols + c]);
                assert!(
                    got.to_bits() == exp.to_bits() || (got == 0.0 && exp == 0.0),
                    "{}: W[{r},{c}] decodes to {got:e}, ModelOpt gives {exp:e}",
                    t.name
                );
            }
        }
        checked += 1;
    }
    checked
}

#[test]
fn nvfp4_conservative_weights_decode_exactly() {
    // Routed + shared experts of three MoE layers and the dense MLP: 3*(16*2 + 2) + 2.
    assert_eq!(check("nemotronh_tiny_grouped_nvfp4"), 104);
}

#[test]
fn nvfp4_fp8_mixed_weights_decode_exactly() {
    // NVFP4 routed experts (3*16*2), FP8 shared experts (3*2) and Mamba in/out (3*2).
    assert_eq!(check("nemotronh_tiny_grouped_nvfp4_super"), 108);
}
