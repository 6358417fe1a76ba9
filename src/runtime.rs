//! A loaded checkpoint ready to run: the model, its tokenizer when it has one, and the engine
//! that runs requests on it. The CLI, the app and the server start from here, so a checkpoint
//! is loaded and a prompt is encoded and checked the same way everywhere.

use std::path::Path;
use std::sync::Arc;

use crate::backend::Backend;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::loader::LoadProgress;
use crate::model::{LoadOptions, Model};
use crate::tokenizer::Tokenizer;

pub struct Runtime {
    pub model: Arc<Model>,
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub engine: Engine,
}

impl Runtime {
    /// Loads the checkpoint in `dir` on `backend`, with its `tokenizer.json` when there is one
    /// (a tokenizer that is there but cannot be read is an error), and starts the engine.
    pub fn load(
        dir: &Path,
        backend: Arc<dyn Backend>,
        opts: LoadOptions,
        progress: Option<&LoadProgress>,
    ) -> Result<Runtime> {
        let model = Model::load_observed(dir, backend, opts, progress)?;
        let tokenizer = if dir.join("tokenizer.json").exists() {
            Some(Arc::new(Tokenizer::from_dir(dir)?))
        } else {
            None
        };
        Ok(Runtime::new(model, tokenizer))
    }

    /// A runtime for a model already loaded.
    pub fn new(model: Model, tokenizer: Option<Arc<Tokenizer>>) -> Runtime {
        let model = Arc::new(model);
        let engine = Engine::start(model.clone(), tokenizer.clone());
        Runtime {
            model,
            tokenizer,
            engine,
        }
    }

    /// [`encode_prompt`] with this checkpoint's tokenizer and vocabulary.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        encode_prompt(
            self.tokenizer.as_deref(),
            text,
            self.model.config.vocab_size,
        )
    }
}

/// The token ids of a text prompt, encoded with the tokenizer's special tokens as the
/// reference encodes them, and checked against the model's vocabulary (a tokenizer that
/// produces ids past it belongs to another checkpoint).
pub fn encode_prompt(tokenizer: Option<&Tokenizer>, text: &str, vocab: usize) -> Result<Vec<u32>> {
    let tok = tokenizer.ok_or_else(|| {
        Error::Invalid(
            "a text prompt needs the checkpoint's tokenizer.json, and this one has none".into(),
        )
    })?;
    let ids = tok.encode(text, true)?;
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "the tokenizer {} encodes the prompt to token id {bad}, outside this model's \
             vocabulary (vocab_size {vocab}): the tokenizer.json does not belong to this \
             checkpoint",
            tok.path().display()
        )));
    }
    Ok(ids)
}
