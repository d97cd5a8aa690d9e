//! The build-batch phase of a step: flattens the scheduled sequences into the model's
//! `ForwardBatch` (new token ids back to back, and per sequence its context length,
//! page table and whether it wants logits).

use arbor_models::batch::{ForwardBatch, LogitsWanted, SequenceInput};

use crate::sequence::Sequence;

/// The forward input for every running sequence with tokens scheduled, in running
/// order. A sequence wants logits when this step computes its last token.
pub fn build_batch(running: &[Sequence]) -> ForwardBatch {
    let mut batch = ForwardBatch::default();
    for seq in running.iter().filter(|s| s.n_scheduled > 0) {
        let end = seq.n_computed + seq.n_scheduled;
        batch.token_ids.extend_from_slice(&seq.tokens[seq.n_computed..end]);
        let logits = if end == seq.tokens.len() {
            LogitsWanted::Last
        } else {
            LogitsWanted::None
        };
        batch.sequences.push(SequenceInput {
            n_context_tokens: seq.n_computed,
            n_new_tokens: seq.n_scheduled,
            page_table: seq.pages.iter().map(|p| p.0).collect(),
            logits,
        });
    }
    batch
}
