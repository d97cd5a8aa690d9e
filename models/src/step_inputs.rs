//! Checking a [`ForwardBatch`] against the model and the KV pool, and deriving the host
//! arrays a forward pass needs: each new token's position and which rows of the final
//! hidden states become logits.

use arbor_kernels::SequenceSpan;
use candle_core::{Result, bail};

use crate::batch::{ForwardBatch, LogitsWanted};
use crate::config::ModelConfig;
use crate::kv_cache::KvCache;

/// Host-side inputs of one forward pass, derived from a checked batch.
#[derive(Debug)]
pub(crate) struct StepInputs {
    /// Position of every new token (`n_context_tokens + i`), in batch order.
    pub positions: Vec<u32>,
    /// Batch rows to turn into logits, in order; `None` when every row is wanted.
    pub logit_rows: Option<Vec<u32>>,
}

impl StepInputs {
    /// Checks `batch` and derives the inputs.
    ///
    /// Fails if the token count disagrees with the sequences, a sequence has no new
    /// tokens, a page table is too short or names a page outside `kv`, or a token id is
    /// outside the vocabulary.
    pub fn new(batch: &ForwardBatch, config: &ModelConfig, kv: &KvCache) -> Result<Self> {
        check(batch, config, kv)?;
        let n_tokens = batch.token_ids.len();
        let mut positions = Vec::with_capacity(n_tokens);
        let mut rows = Vec::with_capacity(batch.n_logit_rows());
        let mut start = 0u32;
        for seq in &batch.sequences {
            let n_new = seq.n_new_tokens as u32;
            let first = seq.n_context_tokens as u32;
            positions.extend(first..first + n_new);
            match seq.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last => rows.push(start + n_new - 1),
                LogitsWanted::All => rows.extend(start..start + n_new),
            }
            start += n_new;
        }
        let logit_rows = (rows.len() != n_tokens).then_some(rows);
        Ok(Self {
            positions,
            logit_rows,
        })
    }
}

/// The kernels' view of the batch's sequences.
pub(crate) fn spans(batch: &ForwardBatch) -> Vec<SequenceSpan<'_>> {
    batch
        .sequences
        .iter()
        .map(|s| SequenceSpan {
            n_context_tokens: s.n_context_tokens,
            n_new_tokens: s.n_new_tokens,
            page_table: &s.page_table,
        })
        .collect()
}

fn check(batch: &ForwardBatch, config: &ModelConfig, kv: &KvCache) -> Result<()> {
    let n_new_total: usize = batch.sequences.iter().map(|s| s.n_new_tokens).sum();
    if n_new_total != batch.token_ids.len() {
        bail!(
            "batch has {} token ids but its sequences add up to {n_new_total} new tokens",
            batch.token_ids.len()
        );
    }
    let page_size = kv.page_size();
    for (seq_idx, seq) in batch.sequences.iter().enumerate() {
        if seq.n_new_tokens == 0 {
            bail!("sequence {seq_idx} of the batch has no new tokens");
        }
        let n_slots = seq.n_context_tokens + seq.n_new_tokens;
        if n_slots > u32::MAX as usize {
            bail!("sequence {seq_idx} has {n_slots} tokens, more than positions can index");
        }
        let n_pages = n_slots.div_ceil(page_size);
        if seq.page_table.len() < n_pages {
            bail!(
                "sequence {seq_idx} needs {n_pages} pages for {n_slots} tokens, its page table \
                 has {}",
                seq.page_table.len()
            );
        }
        if let Some(bad) = seq.page_table[..n_pages]
            .iter()
            .find(|&&p| p as usize >= kv.n_pages())
        {
            bail!(
                "sequence {seq_idx} uses page {bad}, the kv cache has {} pages",
                kv.n_pages()
            );
        }
    }
    if let Some(bad) = batch
        .token_ids
        .iter()
        .find(|&&t| t as usize >= config.vocab_size)
    {
        bail!(
            "token id {bad} is outside the vocabulary of {} tokens",
            config.vocab_size
        );
    }
    Ok(())
}
