//! The error of the weight-loading boundary: reading a config, a safetensors checkpoint
//! or a GGUF file. Every variant names the file, and the tensor where one is involved.

use std::path::PathBuf;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config (a `config.json` or GGUF metadata) is malformed or inconsistent.
    #[error("{path}: invalid model config: {message}")]
    Config { path: PathBuf, message: String },
    /// The checkpoint is not a Qwen2 or Llama decoder.
    #[error(
        "{path}: unsupported architecture `{architecture}` (supported: Qwen2ForCausalLM, \
         LlamaForCausalLM, GGUF `qwen2` and `llama`)"
    )]
    UnsupportedArchitecture { path: PathBuf, architecture: String },
    /// A config feature this implementation does not have (another rope scaling, an
    /// activation other than SiLU, ...).
    #[error("{path}: unsupported model feature: {feature}")]
    UnsupportedFeature { path: PathBuf, feature: String },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    /// A tensor has the wrong shape for the config.
    #[error("{path}: tensor `{name}` has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype the loader cannot convert (only f32, bf16, f16 in
    /// safetensors; GGUF quantizations Candle supports).
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedTensorDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// The caller asked for a compute dtype other than f32, bf16 or f16.
    #[error("unsupported model dtype {0:?}, use f32, bf16 or f16")]
    UnsupportedDtype(candle_core::DType),
    /// The file is not a valid safetensors/GGUF/index file.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// Candle failed while reading or converting a tensor.
    #[error("{path}: tensor `{name}`: {source}")]
    Tensor {
        path: PathBuf,
        name: String,
        /// Boxed: Candle's error is large, and every loading function returns this type.
        #[source]
        source: Box<candle_core::Error>,
    },
}

impl LoadError {
    /// A [`LoadError::Config`] for `path`.
    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            message: message.into(),
        }
    }
}
