//! One error type for the whole crate. Every variant names the thing that was wrong (a file, a
//! tensor, a config field) and what was expected, because users meet these on checkpoints we
//! have never seen.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OS error is part of the message, not a `source`, so that printing the error chain
    /// does not repeat it.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },

    /// `config.json`, `generation_config.json`, `hf_quant_config.json`: a field missing, of the
    /// wrong type, or violating a relation between dimensions.
    #[error("{file}: {msg}")]
    Config { file: PathBuf, msg: String },

    /// A safetensors file or index that is malformed, truncated or inconsistent.
    #[error("{file}: {msg}")]
    Checkpoint { file: PathBuf, msg: String },

    /// One tensor whose dtype, shape or size is not what the config implies.
    #[error("tensor `{name}` ({file}): {msg}")]
    Tensor {
        name: String,
        file: PathBuf,
        msg: String,
    },

    #[error("tensor `{name}` is missing from the checkpoint in {dir}: expected {expected}")]
    MissingTensor {
        name: String,
        dir: PathBuf,
        expected: String,
    },

    /// The quantization description and the stored tensors disagree, or name a format we do
    /// not know.
    #[error("quantization: {0}")]
    Quant(String),

    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },

    #[error("prompt has {got} tokens, but at most {max} are allowed ({why})")]
    PromptTooLong { got: usize, max: usize, why: String },

    #[error("backend {backend}: {msg}")]
    Backend { backend: String, msg: String },

    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }

    pub fn config(file: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config {
            file: file.into(),
            msg: msg.into(),
        }
    }

    pub fn checkpoint(file: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            file: file.into(),
            msg: msg.into(),
        }
    }

    pub fn tensor(
        name: impl Into<String>,
        file: impl Into<PathBuf>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Tensor {
            name: name.into(),
            file: file.into(),
            msg: msg.into(),
        }
    }
}
