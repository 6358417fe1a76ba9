//! Text <-> token ids, on top of the Hugging Face `tokenizers` crate, plus a streaming decoder
//! for printing generated text as it is produced.
//!
//! Nemotron checkpoints ship a byte-level BPE `tokenizer.json`. Byte-level tokens can end in
//! the middle of a multi-byte UTF-8 character, so decoding one token at a time would print
//! U+FFFD replacement characters; [`StreamDecoder`] holds such bytes back until the character
//! is complete.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Error, Result};

/// A loaded `tokenizer.json`, remembering where it came from so errors can name it.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl fmt::Debug for Tokenizer {
    // The derived form would dump the whole vocabulary and merge table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        // Read the file ourselves: `tokenizers` reports a missing file and malformed JSON with
        // the same opaque boxed error, and users need to know which of the two happened.
        let bytes = std::fs::read(path).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            msg: format!("cannot read file: {e}"),
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the contents of a `tokenizer.json`; `path` is where it came from, for errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Tokenizer> {
        let err = |msg: String| Error::Tokenizer {
            path: path.to_path_buf(),
            msg,
        };
        // `tokenizers` 0.23 panics (`expect("Helper")` in its decoder deserializer) on a string
        // it cannot decode, e.g. invalid UTF-8 or a lone surrogate escape in the `decoder`
        // object (found by fuzz/fuzz_targets/tokenizer_json.rs). Every string is decoded here
        // first, so such a file is an error that says where; any other panic inside the
        // library is caught and reported as one.
        let text = std::str::from_utf8(bytes).map_err(|e| {
            err(format!(
                "not a valid Hugging Face tokenizer.json: not valid UTF-8 at byte {} (JSON is \
                 text)",
                e.valid_up_to()
            ))
        })?;
        serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
            err(format!(
                "not a valid Hugging Face tokenizer.json: invalid JSON: {e}"
            ))
        })?;
        let parsed = std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>())
            .map_err(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                err(format!(
                    "the tokenizers library failed on this file ({why}); it is not a tokenizer.json \
                     that library can read"
                ))
            })?;
        let inner =
            parsed.map_err(|e| err(format!("not a valid Hugging Face tokenizer.json: {e}")))?;
        Ok(Tokenizer {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Loads `tokenizer.json` from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    /// Where this tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, what: &str, e: tokenizers::Error) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            msg: format!("{what}: {e}"),
        }
    }

    /// Encodes `text`. `add_special_tokens` lets the tokenizer's post-processor add its
    /// special tokens (e.g. BOS); tokenizers without a post-processor add nothing either way.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        // `encode_fast` skips offset computation, which we never use.
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| self.err("encode failed", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes `ids` to text. Ids outside the vocabulary are ignored (that is how `tokenizers`
    /// behaves); an incomplete UTF-8 sequence decodes to U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err("decode failed", e))
    }

    /// The token string for `id` (in the tokenizer's internal form, e.g. `Ġthe` for " the").
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token given in the tokenizer's internal form (e.g. `</s>`, `Ġthe`).
    pub fn token_to_id(&self, tok: &str) -> Option<u32> {
        self.inner.token_to_id(tok)
    }

    /// Number of token ids the tokenizer knows, added (special) tokens included. This may be
    /// smaller than the model's `vocab_size`, whose embedding table is usually padded.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns a stream of generated token ids into text deltas without ever splitting a UTF-8
/// character. Special tokens are skipped.
///
/// Technique (as in text-generation-inference): keep a small window of ids. `ids[..read]` is
/// context that has already been printed and decodes to `prefix`; after each new id, decode
/// the whole window and emit what lies beyond `prefix`, unless it ends in U+FFFD (an
/// incomplete character), in which case wait for more ids. Decoding with context rather than
/// token by token also keeps decoders that treat the first token specially (e.g. stripping a
/// leading space) from changing the text. For byte-level tokenizers the concatenation of all
/// deltas and [`finish`](Self::finish) equals `decode(all ids, true)` exactly.
pub struct StreamDecoder {
    tokenizer: Arc<Tokenizer>,
    /// The window: ids already printed (kept as decoding context), then pending ones.
    ids: Vec<u32>,
    /// `ids[..read]` are the already printed context ids.
    read: usize,
    /// `decode(ids[..read])`.
    prefix: String,
}

impl fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("tokenizer", &self.tokenizer.path())
            .field("ids", &self.ids)
            .field("read", &self.read)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl StreamDecoder {
    pub fn new(tokenizer: Arc<Tokenizer>) -> StreamDecoder {
        StreamDecoder {
            tokenizer,
            ids: Vec::new(),
            read: 0,
            prefix: String::new(),
        }
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// Adds one generated id and returns the text it completes: possibly empty (a special
    /// token, or bytes of a character that is not complete yet), possibly more than this
    /// token's own text (when it completes a character begun by earlier tokens).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, true)?;
        if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        // `get` rather than indexing: a decoder that rewrote the context text could put the
        // old prefix length inside a character; waiting for more ids is then the safe choice.
        let Some(delta) = text.get(self.prefix.len()..) else {
            return Ok(String::new());
        };
        let delta = delta.to_string();
        // The ids just printed become the next context; older ones are no longer needed, which
        // keeps every decode proportional to a few tokens instead of the whole output.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.prefix = self.tokenizer.decode(&self.ids, true)?;
        Ok(delta)
    }

    /// Ends the stream: returns whatever is still held back, decoded as the tokenizer decodes
    /// it (an incomplete character becomes U+FFFD), and resets the decoder.
    pub fn finish(&mut self) -> Result<String> {
        let text = self.tokenizer.decode(&self.ids, true)?;
        let rest = text.get(self.prefix.len()..).unwrap_or("").to_string();
        self.ids.clear();
        self.read = 0;
        self.prefix.clear();
        Ok(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
    }

    fn tok() -> Arc<Tokenizer> {
        Arc::new(Tokenizer::from_dir(&fixture_dir()).expect("fixture tokenizer loads"))
    }

    /// Streams `ids` one at a time; returns the deltas (the last one from `finish`).
    fn stream(tok: &Arc<Tokenizer>, ids: &[u32]) -> Vec<String> {
        let mut dec = StreamDecoder::new(tok.clone());
        let mut out: Vec<String> = ids.iter().map(|&id| dec.push(id).unwrap()).collect();
        out.push(dec.finish().unwrap());
        out
    }

    const MULTI: &str = "héllo wörld — 日本語 🙂";

    #[test]
    fn shareable_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Tokenizer>();
        send_sync::<StreamDecoder>();
    }

    #[test]
    fn basic_properties() {
        let t = tok();
        assert_eq!(t.vocab_size(), 512);
        assert_eq!(t.token_to_id("<s>"), Some(1));
        assert_eq!(t.token_to_id("</s>"), Some(2));
        assert_eq!(t.id_to_token(511).as_deref(), Some("ĠThe"));
        assert_eq!(t.id_to_token(100_000), None);
        assert_eq!(t.path(), fixture_dir().join("tokenizer.json"));
    }

    #[test]
    fn round_trip() {
        let t = tok();
        for text in [
            "The quick brown fox jumps over the lazy dog.",
            "  leading spaces\n\tand\r\nnewlines  ",
            MULTI,
            "",
        ] {
            let ids = t.encode(text, false).unwrap();
            assert_eq!(t.decode(&ids, false).unwrap(), text, "ids {ids:?}");
            assert_eq!(t.decode(&ids, true).unwrap(), text);
        }
    }

    #[test]
    fn special_tokens_skipped_on_request() {
        let t = tok();
        let mut ids = vec![1];
        ids.extend(t.encode("hi there", false).unwrap());
        ids.push(2);
        assert_eq!(t.decode(&ids, false).unwrap(), "<s>hi there</s>");
        assert_eq!(t.decode(&ids, true).unwrap(), "hi there");
        // The special tokens are matched as whole tokens when encoding.
        assert_eq!(t.encode("<s>hi there</s>", false).unwrap(), ids);
    }

    /// The reference encoded the prompts without BOS: this tokenizer has no post-processor and
    /// `add_bos_token` is false, so `add_special_tokens` makes no difference.
    #[test]
    fn manifest_prompt_ids() {
        let t = tok();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture_dir().join("manifest.json")).unwrap())
                .unwrap();
        let prompts = manifest["prompts"].as_array().unwrap();
        assert_eq!(prompts.len(), 3);
        for p in prompts {
            let ids: Vec<u32> = p["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let text = p["text"].as_str().unwrap();
            let source = p["source_text"].as_str().unwrap();
            assert_eq!(ids.len() as u64, p["length"].as_u64().unwrap());
            assert_eq!(t.encode(text, false).unwrap(), ids, "prompt {text:?}");
            assert_eq!(t.encode(text, true).unwrap(), ids, "prompt {text:?}");
            assert_eq!(t.decode(&ids, false).unwrap(), text);
            // `ids` is the first `length` tokens of the source text, and `text` their decoding.
            assert_eq!(t.encode(source, false).unwrap()[..ids.len()], ids[..]);
            assert!(source.starts_with(text));
        }
    }

    #[test]
    fn streaming_matches_full_decode() {
        let t = tok();
        let texts = [
            "The quick brown fox jumps over the lazy dog.",
            MULTI,
            "ÿ€𝄞 mixed ascii ü and 🙂🙂 emoji",
        ];
        for text in texts {
            let mut ids = vec![1];
            ids.extend(t.encode(text, false).unwrap());
            ids.push(2);
            let full = t.decode(&ids, true).unwrap();
            assert_eq!(full, text);
            let deltas = stream(&t, &ids);
            for d in &deltas {
                assert!(!d.contains('\u{FFFD}'), "delta {d:?} of {text:?}");
            }
            assert_eq!(deltas.concat(), full);
            assert_eq!(deltas.last().unwrap(), "", "nothing left for finish");
        }
    }

    #[test]
    fn split_character_is_held_back() {
        let t = tok();
        // This tokenizer has no merges of non-ASCII bytes, so "🙂" (4 bytes) is 4 tokens.
        let ids = t.encode("a🙂b", false).unwrap();
        assert_eq!(ids.len(), 6, "{ids:?}");
        let deltas = stream(&t, &ids);
        assert_eq!(deltas, ["a", "", "", "", "🙂", "b", ""]);

        let ids = t.encode("é", false).unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(stream(&t, &ids), ["", "é", ""]);
    }

    #[test]
    fn finish_flushes_incomplete_character() {
        let t = tok();
        let ids = t.encode("x日", false).unwrap();
        assert_eq!(ids.len(), 4);
        let partial = &ids[..3];
        let deltas = stream(&t, partial);
        assert_eq!(deltas[..3], ["x", "", ""]);
        let full = t.decode(partial, true).unwrap();
        assert!(full.ends_with('\u{FFFD}'));
        assert_eq!(deltas.concat(), full);
    }

    #[test]
    fn decoder_is_reusable_after_finish() {
        let t = tok();
        let mut dec = StreamDecoder::new(t.clone());
        let ids = t.encode("é", false).unwrap();
        assert_eq!(dec.push(ids[0]).unwrap(), "");
        assert_eq!(dec.finish().unwrap(), "\u{FFFD}");
        assert_eq!(dec.push(ids[0]).unwrap(), "");
        assert_eq!(dec.push(ids[1]).unwrap(), "é");
        assert_eq!(dec.finish().unwrap(), "");
    }

    #[test]
    fn missing_file_is_an_error_naming_the_path() {
        let dir = fixture_dir().join("does-not-exist");
        let err = Tokenizer::from_dir(&dir).unwrap_err();
        match &err {
            Error::Tokenizer { path, msg } => {
                assert_eq!(path, &dir.join("tokenizer.json"));
                assert!(msg.contains("cannot read"), "{msg}");
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("does-not-exist"));
    }

    #[test]
    fn invalid_json_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, b"{\"model\": 3").unwrap();
        match Tokenizer::from_file(&path).unwrap_err() {
            Error::Tokenizer { path: p, msg } => {
                assert_eq!(p, path);
                assert!(msg.contains("not a valid"), "{msg}");
            }
            other => panic!("unexpected error {other:?}"),
        }
    }
}
