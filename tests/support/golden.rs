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

/// Largest `|a - b|` over two equally long slices (the golden tests' absolute tolerance).
#[allow(dead_code)]
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
