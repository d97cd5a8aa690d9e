//! The seam between the engine and a model: `ModelRunner` runs one forward pass over a
//! flattened batch and returns the logits rows the batch asked for; `TokenDecoder` turns
//! token ids into text. The engine thread owns the runner; the Candle adapter lives in
//! `candle_runner.rs`, and `testing::FakeModel` implements both traits without Candle.

use std::sync::Arc;

pub use arbor_models::batch::{ForwardBatch, LogitsWanted, SequenceInput};

use crate::api::ModelInfo;

/// Logits of one forward pass: `n_rows` rows of `vocab_size` floats, row-major, in the
/// order `ForwardBatch::n_logit_rows` counts them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Logits {
    /// Columns per row.
    pub vocab_size: usize,
    /// `n_rows * vocab_size` values.
    pub data: Vec<f32>,
}

impl Logits {
    /// Rows held.
    pub fn n_rows(&self) -> usize {
        self.data.len().checked_div(self.vocab_size).unwrap_or(0)
    }

    /// Row `row_idx`; panics if out of range (a runner returned too few rows, a bug the
    /// engine checks before reading).
    pub fn row(&self, row_idx: usize) -> &[f32] {
        &self.data[row_idx * self.vocab_size..(row_idx + 1) * self.vocab_size]
    }
}

/// A failure inside a model runner, as text (runners wrap Candle errors and the like).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunnerError(pub String);

/// A model the engine can drive: it owns the weights and the paged KV storage.
///
/// The engine calls `allocate_kv` once, before the first forward, with the pool size it
/// derived from `EngineConfig::kv_cache`; every page id in a later batch is below
/// `n_pages`.
pub trait ModelRunner: Send {
    /// Name, context length, vocabulary size and end-of-sequence ids.
    fn info(&self) -> ModelInfo;

    /// Bytes of KV storage one token slot takes over all layers (K and V).
    fn kv_bytes_per_token(&self) -> usize;

    /// Free memory of the device in bytes, for `KvBudget::Fraction`; `None` if unknown.
    fn free_memory_bytes(&self) -> Option<u64> {
        None
    }

    /// Allocates KV storage for `n_pages` pages of `page_size` token slots.
    fn allocate_kv(&mut self, n_pages: usize, page_size: usize) -> Result<(), RunnerError>;

    /// Runs one forward pass: writes the K/V of every new token into its slot and
    /// returns `batch.n_logit_rows()` rows of logits.
    fn forward(&mut self, batch: &ForwardBatch) -> Result<Logits, RunnerError>;

    /// The decoder of output text, if the model has a tokenizer.
    fn decoder(&self) -> Option<Arc<dyn TokenDecoder>>;
}

/// Turns token ids into text. Implementations are cheap to call with short slices: the
/// incremental detokenizer decodes a window of a few tokens per generated token.
pub trait TokenDecoder: Send + Sync {
    /// Decodes `ids` to text; invalid UTF-8 shows as U+FFFD.
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String;

    /// The raw text of one token (special tokens included), for logprobs.
    fn token_text(&self, id: u32) -> String {
        self.decode(&[id], false)
    }
}
