//! Sharded checkpoints (`model.safetensors.index.json` + `model-0000N-of-0000M.safetensors`):
//! a hand-written 3-shard copy of the NVFP4 super-recipe fixture, tensors in shuffled order and
//! one shard whose header length is not a multiple of 8 (so its tensor data is misaligned),
//! must compute exactly what the single-file original computes; inconsistent indexes and
//! duplicated tensors must be refused with the tensor's name.

use std::path::{Path, PathBuf};

use nemotron_rt::backend::{self, BackendKind};
use nemotron_rt::checkpoint::Checkpoint;
use nemotron_rt::generate::{self, GenerateParams};
use nemotron_rt::model::{ForwardOptions, LoadOptions, Model};
use serde_json::{Map, Value, json};

const MODEL: &str = "nemotronh_tiny_grouped_nvfp4_super";
const SHARDS: usize = 3;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(MODEL)
}

fn golden_ids(name: &str) -> Vec<u32> {
    let g = Checkpoint::open_file(&fixture().join("golden.safetensors")).unwrap();
    g.get(name)
        .unwrap_or_else(|| panic!("golden key {name}"))
        .to_i64_vec()
        .unwrap()
        .into_iter()
        .map(|v| u32::try_from(v).unwrap())
        .collect()
}

#[derive(Clone)]
struct RawTensor {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    data: Vec<u8>,
}

/// The tensors of a single-file checkpoint, parsed by hand (not by the crate).
fn read_tensors(path: &Path) -> Vec<RawTensor> {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let data = &b[8 + n..];
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(name, e)| {
            let off: Vec<usize> = e["data_offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            RawTensor {
                name: name.clone(),
                dtype: e["dtype"].as_str().unwrap().to_string(),
                shape: e["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect(),
                data: data[off[0]..off[1]].to_vec(),
            }
        })
        .collect()
}

/// Writes a safetensors file: 8-byte little-endian header length, JSON header, data in the
/// order given. The header is padded with spaces until `len % 8 == header_mod8`.
fn write_safetensors(path: &Path, tensors: &[RawTensor], header_mod8: usize) {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data = Vec::new();
    for t in tensors {
        let begin = data.len();
        data.extend_from_slice(&t.data);
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != header_mod8 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

fn shard_name(i: usize) -> String {
    format!("model-{:05}-of-{SHARDS:05}.safetensors", i + 1)
}

/// A deterministic Fisher-Yates shuffle (64-bit LCG).
fn shuffle<T>(v: &mut [T], mut state: u64) {
    for i in (1..v.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = ((state >> 33) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// The header length modulo 8 of each shard: shard 2 is deliberately not a multiple of 8.
const HEADER_MOD8: [usize; SHARDS] = [0, 3, 0];

/// A sharded copy of the fixture. `edit` may change each shard's tensor list before writing
/// (the index is written from the lists as they were before the edit).
fn write_sharded(
    edit: impl FnOnce(&mut [Vec<RawTensor>]),
) -> (tempfile::TempDir, Vec<Vec<RawTensor>>) {
    let src = fixture().join("hf");
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "model.safetensors" {
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
    }
    let mut tensors = read_tensors(&src.join("model.safetensors"));
    shuffle(&mut tensors, 0x5eed);
    let mut shards: Vec<Vec<RawTensor>> = vec![Vec::new(); SHARDS];
    for (i, t) in tensors.into_iter().enumerate() {
        shards[i % SHARDS].push(t);
    }
    let mut weight_map = Map::new();
    let mut total = 0usize;
    for (i, s) in shards.iter().enumerate() {
        for t in s {
            weight_map.insert(t.name.clone(), shard_name(i).into());
            total += t.data.len();
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
    let mut written = shards.clone();
    edit(&mut written);
    for (i, s) in written.iter().enumerate() {
        write_safetensors(&tmp.path().join(shard_name(i)), s, HEADER_MOD8[i]);
    }
    (tmp, shards)
}

fn load(dir: &Path) -> nemotron_rt::Result<Model> {
    let be = backend::create(BackendKind::Cpu, 2).unwrap();
    Model::load(dir, be, LoadOptions::default())
}

fn load_err(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("{} loaded but should have failed", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn sharded_copy_computes_exactly_what_the_original_does() {
    let (dir, shards) = write_sharded(|_| {});
    // The copy really is what this test means it to be.
    let original = read_tensors(&fixture().join("hf/model.safetensors"));
    assert_eq!(
        shards.iter().map(Vec::len).sum::<usize>(),
        original.len(),
        "every tensor in some shard"
    );
    let misaligned = &shards[1];
    for dtype in ["BF16", "F32", "U8", "F8_E4M3"] {
        assert!(
            misaligned.iter().any(|t| t.dtype == dtype),
            "the misaligned shard holds a {dtype} tensor"
        );
    }
    let bytes = std::fs::read(dir.path().join(shard_name(1))).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!((8 + n) % 8, 3, "shard 2's data starts at an odd offset");
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.files.len(), SHARDS);
    assert_eq!(ck.len(), original.len());
    for t in &original {
        let got = ck
            .get(&t.name)
            .unwrap_or_else(|| panic!("{} in the copy", t.name));
        assert_eq!(got.bytes(), &t.data[..], "{} bytes", t.name);
    }
    drop(ck);

    let sharded = load(dir.path()).unwrap();
    let single = load(&fixture().join("hf")).unwrap();
    let ids = golden_ids("prompt2.input_ids");
    let opts = ForwardOptions {
        all_logits: true,
        ..Default::default()
    };
    let logits = |m: &Model| {
        let mut seq = m.new_sequence().unwrap();
        let out = m.forward(&mut seq, &ids, opts).unwrap();
        let l = m.backend.download(&out.logits).unwrap();
        l.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
    };
    let a = logits(&sharded);
    assert_eq!(a.len(), ids.len() * sharded.config.vocab_size);
    assert!(a == logits(&single), "prefill logits differ bitwise");

    let params = GenerateParams {
        max_tokens: 24,
        ignore_eos: true,
        ..Default::default()
    };
    let g = generate::generate(&sharded, None, &ids, &params, &mut |_| true).unwrap();
    assert_eq!(g.tokens, golden_ids("prompt2.gen.tokens"), "greedy tokens");
}

#[test]
fn index_naming_the_wrong_shard_is_refused() {
    let (dir, shards) = write_sharded(|_| {});
    let victim = shards[0][0].name.clone();
    let p = dir.path().join("model.safetensors.index.json");
    let mut index: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    index["weight_map"][&victim] = shard_name(2).into();
    std::fs::write(&p, serde_json::to_string_pretty(&index).unwrap()).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains(&victim), "error `{msg}` names `{victim}`");
}

#[test]
fn tensor_stored_in_two_shards_is_refused() {
    let mut victim = String::new();
    let (dir, _) = write_sharded(|shards| {
        let t = shards[2][1].clone();
        victim = t.name.clone();
        shards[0].push(t);
    });
    let msg = load_err(dir.path());
    assert!(msg.contains(&victim), "error `{msg}` names `{victim}`");
    assert!(
        msg.contains("twice"),
        "error `{msg}` says it is stored twice"
    );
}
