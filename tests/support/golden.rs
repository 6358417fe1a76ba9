//! Reading reference outputs (golden.safetensors) in the integration tests; included with
//! `#[path]` so every test binary shares one reader.

use std::path::Path;

use nemotron_rt::checkpoint::Checkpoint;

pub struct Golden(pub Checkpoint);

#[allow(dead_code)]
impl Golden {
    pub fn open(path: &Path) -> Golden {
        Golden(Checkpoint::open_file(path).expect("golden file opens"))
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("golden key {name}"))
            .to_f32_vec()
            .unwrap()
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("golden key {name}"))
            .to_i64_vec()
            .unwrap()
            .into_iter()
            .map(|v| u32::try_from(v).unwrap())
            .collect()
    }
}
