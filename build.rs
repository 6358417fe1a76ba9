//! Embeds the default model (`models/nemotron-3-tiny`, trained by tools/train) in the library:
//! `src/default_model.rs` includes the list written here. A source tree without that folder
//! still builds; its binaries then say there is no default model and ask for `--model`.

use std::path::PathBuf;

const MODEL: &str = "models/nemotron-3-tiny";
const FILES: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "hf_quant_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// FNV-1a over every file's name, length and bytes, eight bytes at a time: names the cache
/// folder the model is written to, so a binary with other weights never reads an older
/// binary's files. Computed here so that a run does not hash 21 MB at every start.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn mix(&mut self, x: u64) {
        self.0 ^= x;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }

    fn file(&mut self, name: &str, bytes: &[u8]) {
        name.bytes().for_each(|b| self.mix(b as u64));
        self.mix(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.mix(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        chunks.remainder().iter().for_each(|&b| self.mix(b as u64));
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dir = root.join(MODEL);
    // The whole `models` folder (it always exists: its README is tracked), so a model that
    // appears or changes later is picked up; an absent path would rerun this on every build.
    println!("cargo:rerun-if-changed=models");
    let present = FILES.iter().all(|f| dir.join(f).is_file());
    if !present && dir.exists() {
        println!(
            "cargo:warning={MODEL} lacks some of {FILES:?}: building without the default model"
        );
    }
    let mut code = String::from("pub(crate) const FILES: &[(&str, &[u8])] = &[\n");
    let mut hash = Fnv::new();
    if present {
        for f in FILES {
            let path = dir.join(f);
            code.push_str(&format!(
                "    ({f:?}, include_bytes!({:?})),\n",
                path.display().to_string()
            ));
            hash.file(
                f,
                &std::fs::read(&path).expect("the model's files are readable"),
            );
        }
    }
    code.push_str("];\n");
    code.push_str(&format!(
        "pub(crate) const CONTENT_HASH: u64 = {:#018x};\n",
        hash.0
    ));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out.join("default_model_files.rs"), code).expect("OUT_DIR is writable");
}
