//! One sequence's state through its life (waiting, running, preempted, finished) and the
//! request that owns it. A sequence's tokens are its prompt followed by its output; its
//! page table holds the K/V of the first `n_computed` of them.

use std::sync::Arc;
use std::time::Instant;

use arbor_cache::{NodeId, PageId};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::{Event, RequestId, SamplingParams};
use crate::constrained::Constrained;
use crate::detokenizer::Detokenizer;
use crate::sampler::{PenaltyState, SequenceRng};
use crate::stop::StopStrings;

/// Engine-wide id of one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SequenceId(pub u64);

/// One token stream being generated.
#[derive(Debug)]
pub struct Sequence {
    /// Engine-wide id.
    pub id: SequenceId,
    /// The request that owns it.
    pub request_id: RequestId,
    /// Its index among the request's `n` sequences.
    pub index: usize,
    /// When its request was submitted.
    pub submitted_at: Instant,
    /// Sampling parameters shared with its siblings.
    pub params: Arc<SamplingParams>,
    /// Prompt followed by output tokens.
    pub tokens: Vec<u32>,
    /// Tokens of the prompt.
    pub n_prompt_tokens: usize,
    /// Tokens whose K/V is in `pages` (prefix of `tokens`).
    pub n_computed: usize,
    /// Page table: K/V of token `t` is in `pages[t / page_size]`. The sequence holds one
    /// pool reference on each.
    pub pages: Vec<PageId>,
    /// Tokens of `tokens` already inserted in the radix tree (a multiple of page size).
    pub n_inserted: usize,
    /// The radix node this sequence locks (its cached prefix), if any.
    pub locked_node: Option<NodeId>,
    /// New tokens scheduled for the current step (0 when not scheduled).
    pub n_scheduled: usize,
    /// Prompt tokens served from the radix cache at first admission; `None` until then.
    pub n_cached_prompt_tokens: Option<usize>,
    /// When the sequence was first admitted.
    pub admitted_at: Option<Instant>,
    /// When its first output token was sampled.
    pub first_token_at: Option<Instant>,
    /// Its random generator.
    pub rng: SequenceRng,
    /// Token counts for penalties, if its parameters use any.
    pub penalties: Option<PenaltyState>,
    /// Incremental detokenizer state.
    pub detokenizer: Detokenizer,
    /// Stop strings and held-back text.
    pub stop_strings: StopStrings,
    /// The output constraint's state, fed every output token.
    pub constrained: Option<Constrained>,
    /// Prefix length (tokens) found cached the last time the waiting queue looked; for
    /// the cache-aware admission order.
    pub cached_hint: usize,
    /// Tree version at which `cached_hint` was computed.
    pub cached_hint_version: u64,
}

impl Sequence {
    /// Number of output tokens so far.
    pub fn n_output_tokens(&self) -> usize {
        self.tokens.len() - self.n_prompt_tokens
    }

    /// Tokens still to be computed before the next token can be sampled (1 when
    /// decoding, more while the prompt or a preempted context is recomputed).
    pub fn n_remaining(&self) -> usize {
        self.tokens.len() - self.n_computed
    }

    /// Whether the sequence is decoding (only its last sampled token is uncomputed).
    pub fn is_decoding(&self) -> bool {
        self.n_remaining() == 1 && self.n_output_tokens() > 0
    }
}

/// A request being served: its event channel and the state its sequences share.
#[derive(Debug)]
pub struct RequestState {
    /// Where its events go; a failed send means the client left.
    pub events: UnboundedSender<Event>,
    /// When it was submitted.
    pub submitted_at: Instant,
    /// Token ids that end its sequences (stop ids plus eos unless ignored).
    pub stop_token_ids: Vec<u32>,
    /// Sequences not yet finished.
    pub n_live: usize,
    /// Prompt tokens (for the finish log).
    pub n_prompt_tokens: usize,
    /// Output tokens of its finished sequences (for the finish log).
    pub n_output_tokens: usize,
    /// Cached prompt tokens summed over its sequences (for the finish log).
    pub n_cached_tokens: usize,
    /// When its first token (of any sequence) was sampled.
    pub first_token_at: Option<Instant>,
}
