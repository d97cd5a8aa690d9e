//! The waiting queue and the order in which the schedule phase considers its sequences.
//!
//! Preempted sequences wait in their own queue and always come first (they were admitted
//! before anything still waiting). New arrivals wait in arrival order. Only a window at
//! the head of the arrivals is ever looked at in one step, so a step's admission cost
//! does not grow with thousands of waiting requests:
//!
//! - `Fcfs`: the window in arrival order.
//! - `Lpm`: the window ordered by cached prefix length plus an aging bonus. Cached prefix
//!   lengths are hints kept on each sequence and refreshed lazily, a few per step, when
//!   the tree has changed since they were computed; admission matches for real anyway.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::time::Instant;

use crate::api::{RequestId, SchedulePolicy};
use crate::kv::KvPages;
use crate::sequence::Sequence;

/// Arrivals at the head of the queue considered for admission in one step.
pub const ADMISSION_WINDOW: usize = 64;

/// Stale cached-prefix hints refreshed per step under `Lpm` (each is a tree walk).
pub const HINT_REFRESHES_PER_STEP: usize = 8;

/// `Lpm` aging: a request's priority grows by this many tokens per second of waiting,
/// so a 1000-token cache advantage is worth one second of waiting, and every request
/// is eventually first however little of it is cached.
pub const LPM_AGING_TOKENS_PER_SECOND: f64 = 1000.0;

/// Where a candidate sits in the waiting queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Index into the preempted queue.
    Preempted(usize),
    /// Index into the arrivals queue.
    Arrival(usize),
}

/// Sequences waiting for admission.
#[derive(Debug, Default)]
pub struct WaitingQueue {
    preempted: VecDeque<Sequence>,
    arrivals: VecDeque<Sequence>,
    policy: SchedulePolicy,
}

impl WaitingQueue {
    /// An empty queue ordered by `policy`.
    pub fn new(policy: SchedulePolicy) -> Self {
        Self {
            preempted: VecDeque::new(),
            arrivals: VecDeque::new(),
            policy,
        }
    }

    /// Sequences waiting.
    pub fn len(&self) -> usize {
        self.preempted.len() + self.arrivals.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a newly submitted sequence behind all others.
    pub fn push_arrival(&mut self, seq: Sequence) {
        self.arrivals.push_back(seq);
    }

    /// Queues a preempted sequence. Victims are preempted newest first, so pushing each
    /// to the front leaves the oldest admitted first in line.
    pub fn push_preempted(&mut self, seq: Sequence) {
        self.preempted.push_front(seq);
    }

    /// The sequence in `slot`.
    pub fn get(&self, slot: Slot) -> &Sequence {
        match slot {
            Slot::Preempted(idx) => &self.preempted[idx],
            Slot::Arrival(idx) => &self.arrivals[idx],
        }
    }

    /// The sequence in `slot`, mutably.
    pub fn get_mut(&mut self, slot: Slot) -> &mut Sequence {
        match slot {
            Slot::Preempted(idx) => &mut self.preempted[idx],
            Slot::Arrival(idx) => &mut self.arrivals[idx],
        }
    }

    /// Candidates for this step's admission, in the order to try them.
    pub fn candidates(&mut self, kv: &mut KvPages, now: Instant) -> Vec<Slot> {
        let n_window = self.arrivals.len().min(ADMISSION_WINDOW);
        let mut slots: Vec<Slot> = (0..self.preempted.len()).map(Slot::Preempted).collect();
        match self.policy {
            SchedulePolicy::Fcfs => slots.extend((0..n_window).map(Slot::Arrival)),
            SchedulePolicy::Lpm => slots.extend(self.lpm_order(kv, now, n_window)),
        }
        slots
    }

    /// Removes the sequences in `slots` (each at most once) and returns them in the
    /// order given.
    pub fn take(&mut self, slots: &[Slot]) -> Vec<Sequence> {
        let mut by_position: Vec<(usize, Slot)> = slots.iter().copied().enumerate().collect();
        // Remove from the back of each queue first so indices stay valid.
        by_position.sort_by_key(|&(_, slot)| {
            Reverse(match slot {
                Slot::Preempted(idx) => (1, idx),
                Slot::Arrival(idx) => (0, idx),
            })
        });
        let mut taken: Vec<(usize, Sequence)> = by_position
            .into_iter()
            .map(|(order, slot)| {
                let seq = match slot {
                    Slot::Preempted(idx) => self.preempted.remove(idx),
                    Slot::Arrival(idx) => self.arrivals.remove(idx),
                };
                (order, seq.expect("admission slot names a waiting sequence"))
            })
            .collect();
        taken.sort_by_key(|(order, _)| *order);
        taken.into_iter().map(|(_, seq)| seq).collect()
    }

    /// Removes and returns every waiting sequence of `request_id`.
    pub fn remove_request(&mut self, request_id: RequestId) -> Vec<Sequence> {
        let mut removed = Vec::new();
        for queue in [&mut self.preempted, &mut self.arrivals] {
            if !queue.iter().any(|s| s.request_id == request_id) {
                continue;
            }
            let (gone, kept): (VecDeque<Sequence>, VecDeque<Sequence>) = std::mem::take(queue)
                .into_iter()
                .partition(|s| s.request_id == request_id);
            *queue = kept;
            removed.extend(gone);
        }
        removed
    }

    /// Iterates over all waiting sequences (for invariant checks).
    pub fn iter(&self) -> impl Iterator<Item = &Sequence> {
        self.preempted.iter().chain(self.arrivals.iter())
    }

    /// The first `n_window` arrivals, highest priority first.
    fn lpm_order(&mut self, kv: &mut KvPages, now: Instant, n_window: usize) -> Vec<Slot> {
        self.refresh_hints(kv, n_window);
        let mut scored: Vec<(f64, usize)> = (0..n_window)
            .map(|idx| {
                let seq = &self.arrivals[idx];
                let waited_s = now
                    .saturating_duration_since(seq.submitted_at)
                    .as_secs_f64();
                let score = seq.cached_hint as f64 + waited_s * LPM_AGING_TOKENS_PER_SECOND;
                (score, idx)
            })
            .collect();
        // Highest score first; arrival order breaks ties.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored
            .into_iter()
            .map(|(_, idx)| Slot::Arrival(idx))
            .collect()
    }

    /// Recomputes up to `HINT_REFRESHES_PER_STEP` stale hints in the window, those never
    /// computed first, then the oldest computed.
    fn refresh_hints(&mut self, kv: &mut KvPages, n_window: usize) {
        let mut stale: Vec<usize> = (0..n_window)
            .filter(|&idx| self.arrivals[idx].cached_hint_version != kv.version)
            .collect();
        stale.sort_by_key(|&idx| self.arrivals[idx].cached_hint_version);
        for idx in stale.into_iter().take(HINT_REFRESHES_PER_STEP) {
            let seq = &mut self.arrivals[idx];
            seq.cached_hint = kv.peek_cached_len(&seq.tokens);
            seq.cached_hint_version = kv.version;
        }
    }
}
