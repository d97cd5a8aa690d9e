//! Reading a checkpoint's tensors into the decoder's layers. The decoder asks for tensors
//! by their Hugging Face names (`model.layers.0.self_attn.q_proj`); each source
//! translates, checks the shape, and converts to the model's dtype.
//!
//! - [`safetensors`]: a Hugging Face directory, one file or sharded, memory-mapped.
//! - [`gguf`]: a llama.cpp GGUF file, quantized matrices kept quantized or dequantized.

pub mod gguf;
pub mod safetensors;

use std::path::Path;

use crate::error::LoadError;
use crate::linear::{Embedding, Linear};
use candle_core::Tensor;

/// What the decoder needs from a checkpoint. Names are Hugging Face names; `prefix`
/// arguments omit the `.weight`/`.bias` suffix.
pub(crate) trait WeightSource {
    /// The file (or directory) errors should name.
    fn path(&self) -> &Path;

    /// A dense tensor of exactly `shape`, in the model's dtype.
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError>;

    /// The projection `{prefix}.weight` (`[n_out, n_in]`), with `{prefix}.bias` if
    /// `bias` is set.
    fn linear(
        &mut self,
        prefix: &str,
        n_out: usize,
        n_in: usize,
        bias: bool,
    ) -> Result<Linear, LoadError>;

    /// The token embedding `{prefix}.weight` (`[vocab, hidden]`).
    fn embedding(
        &mut self,
        prefix: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Embedding, LoadError>;
}

/// Wraps a Candle error about tensor `name` of `path`.
pub(crate) fn tensor_error(
    path: &Path,
    name: &str,
) -> impl FnOnce(candle_core::Error) -> LoadError {
    let path = path.to_owned();
    let name = name.to_owned();
    move |source| LoadError::Tensor {
        path,
        name,
        source: Box::new(plain_error(source)),
    }
}

/// A Candle error reduced to its message: without the backtrace Candle attaches when
/// `RUST_BACKTRACE` is set, without the path a [`LoadError`] names already, and with
/// context on the same line, so that load errors stay one line.
pub(crate) fn plain_error(error: candle_core::Error) -> candle_core::Error {
    match error {
        candle_core::Error::WithBacktrace { inner, .. }
        | candle_core::Error::WithPath { inner, .. } => plain_error(*inner),
        candle_core::Error::Context { inner, context } => {
            candle_core::Error::Msg(format!("{context}: {}", plain_error(*inner)))
        }
        other => other,
    }
}
