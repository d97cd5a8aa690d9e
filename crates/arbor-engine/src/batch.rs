//! The build-batch phase of a step: flattens the scheduled sequences into the model's
//! `ForwardBatch` (new token ids back to back, and per sequence its context length,
//! page table and whether it wants logits).
//!
//! Page tables are most of a batch (with one-token pages, a few hundred sequences of a
//! few hundred tokens hold a hundred thousand page ids), and from one step to the next
//! a decoding sequence's table only grows by a page now and then. So the builder keeps
//! last step's batch and extends the tables of sequences that kept running, instead of
//! copying every table again.

use arbor_models::batch::{ForwardBatch, LogitsWanted, SequenceInput};

use crate::sequence::{Sequence, SequenceId};

/// How far ahead in last step's entries a sequence's entry is looked for (entries of
/// sequences that finished or were preempted in between are skipped).
const REUSE_LOOKAHEAD: usize = 64;

/// Builds each step's `ForwardBatch`, reusing the previous one.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    /// The batch last built.
    pub batch: ForwardBatch,
    /// The sequence of each entry of `batch.sequences`.
    ids: Vec<SequenceId>,
}

impl BatchBuilder {
    /// Rebuilds `self.batch` for every running sequence with tokens scheduled, in running
    /// order. A sequence wants logits when this step computes its last token.
    ///
    /// `n_continuing`: the first `n_continuing` running sequences were running when the
    /// last batch was built and have not released their pages since, so their page
    /// tables have only grown (the rest were admitted since; their tables are copied).
    pub fn fill(&mut self, running: &[Sequence], n_continuing: usize) {
        let mut old = std::mem::take(&mut self.batch.sequences);
        let old_ids = std::mem::take(&mut self.ids);
        let batch = &mut self.batch;
        batch.token_ids.clear();
        let mut next_old = 0;
        let scheduled = running
            .iter()
            .enumerate()
            .filter(|(_, s)| s.n_scheduled > 0);
        for (run_idx, seq) in scheduled {
            let end = seq.n_computed + seq.n_scheduled;
            batch
                .token_ids
                .extend_from_slice(&seq.tokens[seq.n_computed..end]);
            let logits = if end == seq.tokens.len() {
                LogitsWanted::Last
            } else {
                LogitsWanted::None
            };
            let found = match run_idx < n_continuing {
                true => find_entry(&old_ids, next_old, seq.id),
                false => None,
            };
            let page_table = match found {
                Some(old_idx) => {
                    next_old = old_idx + 1;
                    extend_table(std::mem::take(&mut old[old_idx].page_table), seq)
                }
                None => seq.pages.iter().map(|p| p.0).collect(),
            };
            batch.sequences.push(SequenceInput {
                n_context_tokens: seq.n_computed,
                n_new_tokens: seq.n_scheduled,
                page_table,
                logits,
            });
            self.ids.push(seq.id);
        }
    }
}

/// The entry of `id` among `ids[from..]` (looking at most `REUSE_LOOKAHEAD` ahead).
fn find_entry(ids: &[SequenceId], from: usize, id: SequenceId) -> Option<usize> {
    let mut window = ids.get(from..)?.iter().take(REUSE_LOOKAHEAD);
    window
        .position(|&other| other == id)
        .map(|offset| from + offset)
}

/// `table`, last step's page table of `seq`, extended to all of `seq`'s pages; copied
/// afresh if it is not a prefix of them after all (checked on its last page).
fn extend_table(mut table: Vec<u32>, seq: &Sequence) -> Vec<u32> {
    let n_old = table.len();
    let is_prefix = n_old <= seq.pages.len()
        && table
            .last()
            .is_none_or(|&page| seq.pages[n_old - 1].0 == page);
    if !is_prefix {
        table.clear();
    }
    let n_kept = table.len();
    table.extend(seq.pages[n_kept..].iter().map(|p| p.0));
    table
}
