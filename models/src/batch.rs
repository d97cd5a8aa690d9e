//! The input of one forward pass: a flattened batch of sequences, some prefilling a
//! chunk of their prompt, some decoding one token, each with its page table. The engine
//! builds it every step; the model reads it and writes new K/V into the pages it names.

/// Which logits a sequence wants back from a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsWanted {
    /// No logits: a prefill chunk that does not end the prompt.
    None,
    /// One row, for the sequence's last new token (the next token gets sampled from it).
    Last,
    /// One row per new token (tests, prompt logprobs).
    All,
}

/// One sequence's share of a forward pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceInput {
    /// Tokens of this sequence whose K/V is already in its pages before this pass
    /// (cached prefix plus earlier chunks). The new tokens take positions
    /// `n_context_tokens..n_context_tokens + n_new_tokens`.
    pub n_context_tokens: usize,
    /// New tokens this pass computes for the sequence (prefill chunk length, or 1).
    pub n_new_tokens: usize,
    /// Page ids holding the sequence's K/V in order; it must cover
    /// `n_context_tokens + n_new_tokens` slots. Slot of position `p` is
    /// `page_table[p / page_size] * page_size + p % page_size`.
    pub page_table: Vec<u32>,
    /// Which logits to return for this sequence.
    pub logits: LogitsWanted,
}

/// A flattened batch: the new tokens of every sequence, concatenated in sequence order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardBatch {
    /// New token ids of all sequences, back to back.
    pub token_ids: Vec<u32>,
    /// One entry per sequence, in the order of `token_ids`.
    pub sequences: Vec<SequenceInput>,
}

impl ForwardBatch {
    /// Rows of logits a forward pass over this batch returns, in sequence order.
    pub fn n_logit_rows(&self) -> usize {
        self.sequences
            .iter()
            .map(|s| match s.logits {
                LogitsWanted::None => 0,
                LogitsWanted::Last => 1,
                LogitsWanted::All => s.n_new_tokens,
            })
            .sum()
    }
}
