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
    if present {
        for f in FILES {
            let path = dir.join(f);
            code.push_str(&format!(
                "    ({f:?}, include_bytes!({:?})),\n",
                path.display().to_string()
            ));
        }
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out.join("default_model_files.rs"), code).expect("OUT_DIR is writable");
}
