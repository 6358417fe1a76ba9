//! nemotron-rt: an inference runtime for NVIDIA Nemotron-H / Nemotron 3 Super checkpoints.
//!
//! Layers of the crate, bottom up: [`checkpoint`] (memory-mapped safetensors), [`config`] and
//! [`quant_config`], [`codec`] (NVFP4 / FP8 / BF16 number formats), [`weights`] (Linear weights
//! as stored), [`backend`] (the one `Backend` trait and its implementations), [`model`] (the
//! forward pass, written once against the trait), [`generate`] with [`sampling`] and
//! [`tokenizer`].

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod codec;
pub mod config;
pub mod default_model;
pub mod devices;
pub mod engine;
pub mod error;
pub mod generate;
pub mod memory;
pub mod model;
pub mod quant_config;
pub mod runtime;
pub mod sampling;
pub mod synth;
pub mod tokenizer;
pub mod trace;
pub mod weights;

pub use error::{Error, Result};
