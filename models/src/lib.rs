//! Qwen2 and Llama on Candle over a paged KV cache, with the weight, tokenizer and
//! chat-template loading that turns a model directory, a Hugging Face repo id or a GGUF
//! file into something the engine can run.

pub mod batch;
pub mod chat_template;
pub mod config;
mod decoder;
pub mod device;
pub mod error;
pub mod generation;
pub mod kv_cache;
pub mod linear;
pub mod model;
pub mod rope;
pub mod source;
mod step_inputs;
pub mod tokenizer;
pub mod weights;

pub use batch::{ForwardBatch, LogitsWanted, SequenceInput};
pub use chat_template::{ChatMessage, ChatTemplate, ChatTemplateError, RenderOptions};
pub use config::{Architecture, ModelConfig, RopeScaling};
pub use error::LoadError;
pub use generation::{GenerationConfig, GenerationConfigError};
pub use kv_cache::KvCache;
pub use model::Model;
pub use source::{ModelAssets, ModelSource, ModelSpec, ResolveOptions, SourceError};
pub use tokenizer::{SpecialTokens, Tokenizer, TokenizerError};
pub use weights::gguf::WeightMode;

/// Loads a Hugging Face safetensors directory; see [`Model::load_safetensors_dir`].
pub fn load_safetensors_dir(
    dir: &std::path::Path,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<Model, LoadError> {
    Model::load_safetensors_dir(dir, dtype, device)
}

/// Loads a GGUF file; see [`Model::load_gguf`].
pub fn load_gguf(
    path: &std::path::Path,
    mode: WeightMode,
    device: &candle_core::Device,
) -> Result<Model, LoadError> {
    Model::load_gguf(path, mode, device)
}
