//! `RequestTracker`: follows one request from submit to its last sequence's finish,
//! records each finished sequence in the metrics, and writes the one `info` line per
//! request. A request whose client left (its handler or stream dropped before every
//! sequence finished) is logged and counted as aborted when the tracker drops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor_engine::{Event, FinishReason, Usage};

use crate::state::AppState;

/// Tracks one request's sequences as their events pass by.
pub struct RequestTracker {
    state: Arc<AppState>,
    request_id: String,
    n_prompt_tokens: usize,
    max_tokens: usize,
    /// Sequences not finished yet.
    n_open: usize,
    n_cached_tokens: usize,
    /// Output tokens of finished sequences, from their usage.
    n_output_tokens: usize,
    /// Output tokens seen in token events, finished sequences or not: what an aborted
    /// request produced before its client left.
    n_streamed_tokens: usize,
    ttft: Option<Duration>,
    reasons: Vec<FinishReason>,
    started: Instant,
    logged: bool,
}

impl RequestTracker {
    /// Starts tracking a request of `n_sequences` sequences.
    pub fn new(
        state: Arc<AppState>,
        request_id: &str,
        n_prompt_tokens: usize,
        max_tokens: usize,
        n_sequences: usize,
    ) -> Self {
        tracing::debug!(
            request_id,
            n_prompt_tokens,
            max_tokens,
            n_sequences,
            "request submitted"
        );
        Self {
            state,
            request_id: request_id.to_string(),
            n_prompt_tokens,
            max_tokens,
            n_open: n_sequences,
            n_cached_tokens: 0,
            n_output_tokens: 0,
            n_streamed_tokens: 0,
            ttft: None,
            reasons: Vec::new(),
            started: Instant::now(),
            logged: false,
        }
    }

    /// Looks at one event; a `Finished` one is recorded, and the last one logs the
    /// request.
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::Token { token_ids, .. } => self.n_streamed_tokens += token_ids.len(),
            Event::Finished { reason, usage, .. } => self.on_finished(*reason, usage),
        }
    }

    /// Whether every sequence has finished.
    pub fn is_complete(&self) -> bool {
        self.n_open == 0
    }

    fn on_finished(&mut self, reason: FinishReason, usage: &Usage) {
        self.state.metrics.record_finished(reason, usage);
        self.n_open = self.n_open.saturating_sub(1);
        self.n_cached_tokens = self.n_cached_tokens.max(usage.cached_prompt_tokens);
        self.n_output_tokens += usage.completion_tokens;
        self.ttft = match (self.ttft, usage.time_to_first_token) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
        if self.n_open == 0 {
            self.log("request finished");
        }
    }

    fn log(&mut self, message: &'static str) {
        self.logged = true;
        let finish_reason = self
            .reasons
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let ttft_ms = self.ttft.map(|t| t.as_millis() as u64);
        tracing::info!(
            request_id = %self.request_id,
            n_prompt_tokens = self.n_prompt_tokens,
            n_cached_tokens = self.n_cached_tokens,
            n_output_tokens = self.n_output_tokens.max(self.n_streamed_tokens),
            max_tokens = self.max_tokens,
            ttft_ms,
            duration_ms = self.started.elapsed().as_millis() as u64,
            finish_reason = %finish_reason,
            "{message}"
        );
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        if self.logged {
            return;
        }
        // The client left (or the engine stopped) before every sequence finished: the
        // dropped event stream aborts them in the engine.
        self.state.metrics.record_aborted(self.n_open);
        if !self.reasons.contains(&FinishReason::Abort) {
            self.reasons.push(FinishReason::Abort);
        }
        self.log("request aborted: client disconnected");
    }
}
