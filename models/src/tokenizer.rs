//! The tokenizer: text to token ids and back, for prompts on the way in and for the
//! engine's incremental detokenizer on the way out.
//!
//! [`Tokenizer`] wraps a Hugging Face `tokenizers` tokenizer, built either from a
//! `tokenizer.json` (plus the special-token names in `tokenizer_config.json`) or from the
//! `tokenizer.ggml.*` metadata of a GGUF file (see [`gguf`]). It is cheap to clone (one
//! `Arc`) and `Send + Sync`, so the HTTP handlers and the engine thread share one.

pub(crate) mod gguf;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use serde_json::Value as Json;

/// Why a tokenizer could not be loaded or could not encode or decode.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file the tokenizer needs does not exist.
    #[error("tokenizer file {} not found", .path.display())]
    MissingFile { path: PathBuf },
    /// A file exists but could not be read or parsed.
    #[error("could not load tokenizer from {}: {message}", .path.display())]
    Load { path: PathBuf, message: String },
    /// The GGUF metadata lacks a key the tokenizer needs.
    #[error("GGUF metadata has no `{key}`")]
    MissingMetadata { key: String },
    /// A GGUF metadata key holds a value of the wrong type or range.
    #[error("GGUF metadata `{key}` is invalid: {message}")]
    InvalidMetadata { key: String, message: String },
    /// The GGUF file uses a tokenizer family this crate does not build.
    #[error("GGUF tokenizer model `{0}` is not supported (only byte-level BPE, `gpt2`)")]
    UnsupportedModel(String),
    /// The GGUF file names a pre-tokenizer this crate does not know.
    #[error("GGUF pre-tokenizer `{name}` is not supported; known: {known}")]
    UnknownPreTokenizer { name: String, known: String },
    /// The `tokenizers` crate refused to build the tokenizer.
    #[error("could not build the tokenizer: {0}")]
    Build(String),
    /// Encoding text failed.
    #[error("could not encode text: {0}")]
    Encode(String),
    /// Decoding ids failed (for example an id outside the vocabulary).
    #[error("could not decode token ids: {0}")]
    Decode(String),
}

/// The text of a tokenizer's named special tokens, as chat templates see them
/// (`bos_token`, `eos_token`, ...). `None` where the model does not define one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning-of-sequence token, e.g. `<｜begin▁of▁sentence｜>`.
    pub bos: Option<String>,
    /// End-of-sequence token, e.g. `<|im_end|>` for SmolLM2.
    pub eos: Option<String>,
    /// Unknown-token placeholder.
    pub unk: Option<String>,
    /// Padding token.
    pub pad: Option<String>,
}

/// A loaded tokenizer; cloning shares it.
///
/// `encode(text, true)` adds what the model's post-processor adds (usually a BOS token);
/// a rendered chat prompt already holds its special tokens as text, so encode it with
/// `add_special_tokens = false`, as Hugging Face's `apply_chat_template` does.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    hf: tokenizers::Tokenizer,
    special: SpecialTokens,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    add_bos_token: bool,
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`, with no special-token names (use
    /// [`Tokenizer::from_hf_dir`] to read them from `tokenizer_config.json`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        Self::from_hf_files(path.as_ref(), None)
    }

    /// Loads `tokenizer.json` from a Hugging Face model directory, and the names of the
    /// special tokens from its `tokenizer_config.json` when that file exists.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let config = dir.join("tokenizer_config.json");
        let config = config.is_file().then_some(config);
        Self::from_hf_files(&dir.join("tokenizer.json"), config.as_deref())
    }

    /// Loads `tokenizer.json` and, if given, the special-token names of a
    /// `tokenizer_config.json`.
    pub fn from_hf_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
    ) -> Result<Self, TokenizerError> {
        if !tokenizer_json.is_file() {
            return Err(TokenizerError::MissingFile {
                path: tokenizer_json.to_path_buf(),
            });
        }
        let hf =
            tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|e| TokenizerError::Load {
                path: tokenizer_json.to_path_buf(),
                message: e.to_string(),
            })?;
        let special = match tokenizer_config {
            Some(path) => special_tokens_from_config(&read_json(path)?),
            None => SpecialTokens::default(),
        };
        Ok(Self::from_parts(hf, special))
    }

    /// Builds the tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, TokenizerError> {
        let built = gguf::build(&content.metadata)?;
        Ok(Self {
            inner: Arc::new(Inner {
                hf: built.tokenizer,
                special: built.special,
                bos_token_id: built.bos_token_id,
                eos_token_id: built.eos_token_id,
                pad_token_id: built.pad_token_id,
                add_bos_token: built.add_bos_token,
            }),
        })
    }

    /// Reads the header of a GGUF file (not its tensors) and builds its tokenizer.
    pub fn from_gguf_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let content = read_gguf_header(path.as_ref())?;
        Self::from_gguf(&content)
    }

    /// Wraps an already built `tokenizers` tokenizer; ids of the special tokens are
    /// looked up from their text, and whether a BOS is added is probed by encoding.
    pub fn from_parts(hf: tokenizers::Tokenizer, special: SpecialTokens) -> Self {
        let id_of = |token: &Option<String>| token.as_deref().and_then(|t| hf.token_to_id(t));
        let bos_token_id = id_of(&special.bos);
        let eos_token_id = id_of(&special.eos);
        let pad_token_id = id_of(&special.pad);
        let add_bos_token = bos_token_id.is_some_and(|bos| {
            hf.encode_fast("a", true)
                .is_ok_and(|encoding| encoding.get_ids().first() == Some(&bos))
        });
        Self {
            inner: Arc::new(Inner {
                hf,
                special,
                bos_token_id,
                eos_token_id,
                pad_token_id,
                add_bos_token,
            }),
        }
    }

    /// Token ids of `text`. With `add_special_tokens`, the post-processor's tokens
    /// (usually the BOS) are added. Special tokens written in the text are always
    /// recognised as single tokens.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .hf
            .encode_fast(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`; with `skip_special_tokens`, special tokens are left out. An id
    /// outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        let n_vocab = self.vocab_size();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= n_vocab) {
            return Err(TokenizerError::Decode(format!(
                "token id {bad} is outside the vocabulary of {n_vocab} tokens"
            )));
        }
        self.inner
            .hf
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Id of a token given by its vocabulary text (e.g. `<|im_end|>` or `Ġthe`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.hf.token_to_id(token)
    }

    /// Vocabulary text of a token id, `None` outside the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.hf.id_to_token(id)
    }

    /// Number of token ids, added tokens included (151,665 for DeepSeek-R1-Distill-Qwen;
    /// the model's embedding may be padded beyond this).
    pub fn vocab_size(&self) -> usize {
        self.inner.hf.get_vocab_size(true)
    }

    /// Id of the beginning-of-sequence token, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.inner.bos_token_id
    }

    /// Id of the end-of-sequence token, if the model has one. The full set of stop ids
    /// lives in [`crate::generation::GenerationConfig`].
    pub fn eos_token_id(&self) -> Option<u32> {
        self.inner.eos_token_id
    }

    /// Id of the padding token, if the model has one.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.inner.pad_token_id
    }

    /// Whether `encode(text, true)` starts with the BOS token.
    pub fn add_bos_token(&self) -> bool {
        self.inner.add_bos_token
    }

    /// Text of the named special tokens (for chat templates).
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.inner.special
    }

    /// The wrapped Hugging Face tokenizer, for anything this wrapper does not offer.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner.hf
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.inner.special)
            .field("bos_token_id", &self.inner.bos_token_id)
            .field("eos_token_id", &self.inner.eos_token_id)
            .field("add_bos_token", &self.inner.add_bos_token)
            .finish()
    }
}

/// Reads the metadata and tensor index of a GGUF file (not the tensor data).
pub(crate) fn read_gguf_header(path: &Path) -> Result<gguf_file::Content, TokenizerError> {
    let mut file = fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => TokenizerError::MissingFile {
            path: path.to_path_buf(),
        },
        _ => TokenizerError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    })?;
    gguf_file::Content::read(&mut file).map_err(|e| TokenizerError::Load {
        path: path.to_path_buf(),
        message: format!(
            "not a readable GGUF file: {}",
            crate::weights::plain_error(e)
        ),
    })
}

/// Parses a JSON file, naming the file in the error.
pub(crate) fn read_json(path: &Path) -> Result<Json, TokenizerError> {
    let text = fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => TokenizerError::MissingFile {
            path: path.to_path_buf(),
        },
        _ => TokenizerError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    })?;
    serde_json::from_str(&text).map_err(|e| TokenizerError::Load {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Special-token names of a `tokenizer_config.json`. Each may be a plain string or an
/// `AddedToken` object with a `content` field.
pub(crate) fn special_tokens_from_config(config: &Json) -> SpecialTokens {
    let token = |key: &str| match config.get(key) {
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(str::to_owned),
        _ => None,
    };
    SpecialTokens {
        bos: token("bos_token"),
        eos: token("eos_token"),
        unk: token("unk_token"),
        pad: token("pad_token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_tokens_are_read_as_strings_or_added_token_objects() {
        let config = serde_json::json!({
            "bos_token": "<s>",
            "eos_token": {"content": "</s>", "lstrip": false, "__type": "AddedToken"},
            "pad_token": null,
        });
        let special = special_tokens_from_config(&config);
        assert_eq!(special.bos.as_deref(), Some("<s>"));
        assert_eq!(special.eos.as_deref(), Some("</s>"));
        assert_eq!(special.pad, None);
        assert_eq!(special.unk, None);
    }

    #[test]
    fn tokenizer_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Tokenizer>();
    }

    #[test]
    fn missing_tokenizer_json_names_the_file() {
        let dir = std::env::temp_dir().join("arbor-no-such-model-dir");
        let err = Tokenizer::from_hf_dir(&dir).unwrap_err();
        assert!(matches!(err, TokenizerError::MissingFile { .. }));
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
    }
}
