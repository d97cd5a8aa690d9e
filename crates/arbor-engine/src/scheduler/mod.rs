//! The schedule phase of a step: decide how many new tokens each sequence computes in
//! the next forward pass, under the token budget, the running cap and the pages left.
//!
//! 1. Running sequences, oldest admitted first, get their decode token or their next
//!    prefill chunk. When pages run out, unlocked radix leaves are evicted first; if
//!    that is not enough the most recently admitted sequence is preempted (its computed
//!    KV goes into the radix tree unlocked, so its later recompute is mostly a cache hit).
//! 2. Waiting sequences are admitted in policy order while budget, running cap and
//!    pages allow: the cached prefix is matched and locked, and pages are allocated for
//!    the first chunk. Admission never preempts and never admits a sequence whose first
//!    chunk does not fit.
//!
//! A waiting prompt that shares a long uncached prefix with a prompt being prefilled
//! right now is held back until that prefix is in the tree, so concurrent requests with
//! the same system prompt (and the `n` sequences of one request) compute it once.

pub mod waiting;

use std::time::Instant;

use tracing::debug;

use crate::kv::{CachedPrefix, KvPages};
use crate::sequence::Sequence;
use waiting::{Slot, WaitingQueue};

/// A waiting prompt is held back when it shares at least this many uncached tokens
/// with a prompt being prefilled (and at least one whole page).
pub const SHARED_PREFIX_DELAY_MIN_TOKENS: usize = 32;

/// Limits the schedule phase works under.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most sequences running at once.
    pub max_running: usize,
    /// Most new tokens per forward pass.
    pub max_batched_tokens: usize,
    /// Most prompt tokens a sequence computes per step.
    pub chunk_size: usize,
}

/// Running and waiting sequences.
#[derive(Debug)]
pub struct Scheduler {
    /// Admitted sequences, oldest admission first.
    pub running: Vec<Sequence>,
    /// Sequences waiting for admission.
    pub waiting: WaitingQueue,
    limits: Limits,
}

/// What the schedule phase did besides setting `n_scheduled` on running sequences.
#[derive(Debug, Default)]
pub struct ScheduleOutcome {
    /// Sequences preempted this step.
    pub n_preempted: usize,
    /// Sequences admitted from the waiting queue this step (their first admission or a
    /// resume); they are at the end of `running`.
    pub admitted: Vec<usize>,
    /// Sequences that can never get another page (alone in the running set, nothing left
    /// to evict): they must finish with `Length`.
    pub out_of_pages: Vec<Sequence>,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(limits: Limits, waiting: WaitingQueue) -> Self {
        Self {
            running: Vec::new(),
            waiting,
            limits,
        }
    }

    /// Plans the next forward pass: sets `n_scheduled` on every running sequence.
    pub fn schedule(&mut self, kv: &mut KvPages, now: Instant) -> ScheduleOutcome {
        let mut outcome = ScheduleOutcome::default();
        let budget = self.schedule_running(kv, &mut outcome);
        self.admit(kv, now, budget, &mut outcome);
        outcome
    }

    /// Phase 1: decode tokens and prefill chunks of running sequences. Returns the token
    /// budget left.
    fn schedule_running(&mut self, kv: &mut KvPages, outcome: &mut ScheduleOutcome) -> usize {
        let mut budget = self.limits.max_batched_tokens;
        let mut idx = 0;
        while idx < self.running.len() {
            let seq = &self.running[idx];
            let want = seq.n_remaining().min(self.limits.chunk_size).min(budget);
            if want == 0 {
                self.running[idx].n_scheduled = 0;
                idx += 1;
                continue;
            }
            let fit = tokens_that_fit(seq, kv, want);
            if fit > 0 {
                grow(&mut self.running[idx], kv, fit);
                budget -= fit;
                idx += 1;
                continue;
            }
            if self.running.len() == 1 {
                // Alone and still short: no eviction or preemption can help.
                outcome.out_of_pages.push(self.running.remove(idx));
                continue;
            }
            // Preempt the newest sequence (possibly this one) and try again.
            let mut victim = self.running.pop().expect("running set is not empty");
            kv.release(&mut victim);
            debug!(
                sequence = victim.id.0,
                n_free_pages = kv.pool.n_free(),
                "preempted"
            );
            self.waiting.push_preempted(victim);
            outcome.n_preempted += 1;
        }
        budget
    }

    /// Phase 2: admits waiting sequences while the budget, running cap and pages allow.
    fn admit(
        &mut self,
        kv: &mut KvPages,
        now: Instant,
        mut budget: usize,
        outcome: &mut ScheduleOutcome,
    ) {
        if budget == 0 || self.running.len() >= self.limits.max_running || self.waiting.is_empty() {
            return;
        }
        let mut in_flight: Vec<InFlight> = (0..self.running.len())
            .filter(|&idx| self.running[idx].n_remaining() > 1)
            .map(InFlight::Running)
            .collect();
        let mut admitted_slots: Vec<Slot> = Vec::new();
        for slot in self.waiting.candidates(kv, now) {
            let n_running = self.running.len() + admitted_slots.len();
            if budget == 0 || n_running >= self.limits.max_running {
                break;
            }
            let prefix = kv.match_prefix(&self.waiting.get(slot).tokens);
            let n_cached = prefix.as_ref().map_or(0, |p| p.n_tokens);
            if kv.radix_enabled && self.shares_prefix_in_flight(slot, n_cached, &in_flight, kv) {
                continue;
            }
            let seq = self.waiting.get_mut(slot);
            let want = budget.min(self.limits.chunk_size);
            let Some(n_tokens) = admit_one(seq, prefix, kv, want) else {
                debug!(
                    n_free_pages = kv.pool.n_free(),
                    "admission refused: no pages"
                );
                break;
            };
            budget -= n_tokens;
            admitted_slots.push(slot);
            in_flight.push(InFlight::Waiting(slot));
        }
        for seq in self.waiting.take(&admitted_slots) {
            outcome.admitted.push(self.running.len());
            self.running.push(seq);
        }
    }

    /// Whether the sequence in `slot` shares enough uncached prompt with a sequence
    /// whose prompt is being prefilled to wait for that prefix to be cached.
    fn shares_prefix_in_flight(
        &self,
        slot: Slot,
        n_cached: usize,
        in_flight: &[InFlight],
        kv: &KvPages,
    ) -> bool {
        let threshold = SHARED_PREFIX_DELAY_MIN_TOKENS.max(kv.page_size());
        let tokens = &self.waiting.get(slot).tokens;
        in_flight.iter().any(|other| {
            let other = match *other {
                InFlight::Running(idx) => &self.running[idx],
                InFlight::Waiting(slot) => self.waiting.get(slot),
            };
            common_prefix_len(tokens, &other.tokens) >= n_cached + threshold
        })
    }
}

/// A sequence whose prompt is being prefilled: running, or admitted earlier in this
/// step's admission (still in the waiting queue until the phase ends).
enum InFlight {
    Running(usize),
    Waiting(Slot),
}

/// Locks `seq`'s cached prefix and allocates pages for its first chunk; returns the
/// tokens scheduled, or `None` (holding nothing) when the chunk does not fit.
fn admit_one(
    seq: &mut Sequence,
    prefix: Option<CachedPrefix>,
    kv: &mut KvPages,
    max_tokens: usize,
) -> Option<usize> {
    if let Some(prefix) = prefix {
        kv.attach_prefix(seq, prefix);
    }
    let want = seq.n_remaining().min(max_tokens);
    let n_pages = kv.pool.pages_for_tokens(seq.n_computed + want) - seq.pages.len();
    if kv.n_available() < n_pages {
        kv.release(seq);
        return None;
    }
    grow(seq, kv, want);
    Some(want)
}

fn common_prefix_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// New tokens (at most `want`) `seq` can compute with its free slots plus the pages an
/// allocation could get.
fn tokens_that_fit(seq: &Sequence, kv: &KvPages, want: usize) -> usize {
    let page_size = kv.page_size();
    let slack = seq.pages.len() * page_size - seq.n_computed;
    want.min(slack + kv.n_available() * page_size)
}

/// Allocates the pages `seq` needs for `n_tokens` more tokens and schedules them.
fn grow(seq: &mut Sequence, kv: &mut KvPages, n_tokens: usize) {
    let n_pages = kv.pool.pages_for_tokens(seq.n_computed + n_tokens) - seq.pages.len();
    let pages = kv
        .allocate(n_pages)
        .expect("pages counted as available can be allocated");
    seq.pages.extend(pages);
    seq.n_scheduled = n_tokens;
}
