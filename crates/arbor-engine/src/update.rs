//! The sample, update and emit phases of a step: after the forward pass, every sequence
//! whose last token was computed samples its next token; tokens are appended, stop
//! conditions checked, text detokenized and sent, newly computed prompt pages inserted
//! into the radix tree, and finished sequences released.

use std::time::Instant;

use tracing::debug;

use crate::api::{Event, FinishReason, RequestId, StopMatch, TokenLogprob, Usage};
use crate::constrained::Constrained;
use crate::core::EngineCore;
use crate::json_mode::JsonVocab;
use crate::runner::Logits;
use crate::sampler::{Sampled, argmax, sample};
use crate::sequence::Sequence;
use crate::stop::StopOutcome;

/// How a sequence ends, decided in the update phase.
type Ending = (FinishReason, Option<StopMatch>);

impl EngineCore {
    /// Samples, appends and emits for every sequence in the last batch; returns the
    /// number of sequences that finished.
    pub(crate) fn update(&mut self, logits: &Logits) -> usize {
        let now = self.clock.now();
        // Sequences are updated in place (moving a few hundred of them every step
        // costs more than the rest of the phase); only finished ones are moved out.
        let mut running = std::mem::take(&mut self.scheduler.running);
        let mut endings: Vec<(usize, Ending)> = Vec::new();
        let mut gone: Vec<RequestId> = Vec::new();
        let mut row_idx = 0;
        for (seq_idx, seq) in running.iter_mut().enumerate() {
            if seq.n_scheduled == 0 {
                continue;
            }
            let was_prefill = !seq.is_decoding();
            seq.n_computed += std::mem::take(&mut seq.n_scheduled);
            if was_prefill {
                // Share the new prompt pages with concurrent requests right away.
                self.kv.insert_computed(seq);
            }
            if seq.n_computed < seq.tokens.len() {
                continue;
            }
            let sampled = self.sample_next(seq, logits.row(row_idx));
            row_idx += 1;
            let (event, ending) = self.append(seq, sampled, now);
            if self.send(seq.request_id, event).is_err() {
                gone.push(seq.request_id);
            }
            if let Some(ending) = ending {
                endings.push((seq_idx, ending));
            }
        }
        let finished = remove_at(&mut running, endings.iter().map(|(idx, _)| *idx));
        self.scheduler.running = running;

        let n_finished = finished.len();
        for (seq, (_, (reason, matched))) in finished.into_iter().zip(endings) {
            self.finish(seq, reason, matched);
        }
        for id in gone {
            self.abort(id);
        }
        n_finished
    }

    /// Releases a sequence's pages (inserting its computed tokens into the tree), sends
    /// its `Finished` event, and logs the request when its last sequence ends.
    pub(crate) fn finish(
        &mut self,
        mut seq: Sequence,
        reason: FinishReason,
        matched: Option<StopMatch>,
    ) {
        self.kv.release(&mut seq);
        let now = self.clock.now();
        let Some(request) = self.requests.get_mut(&seq.request_id) else {
            return;
        };
        let usage = Usage {
            prompt_tokens: seq.n_prompt_tokens,
            cached_prompt_tokens: seq.n_cached_prompt_tokens.unwrap_or(0),
            completion_tokens: seq.n_output_tokens(),
            queue_time: seq
                .admitted_at
                .map_or(now, |t| t)
                .saturating_duration_since(seq.submitted_at),
            time_to_first_token: seq
                .first_token_at
                .map(|t| t.saturating_duration_since(seq.submitted_at)),
            e2e_time: now.saturating_duration_since(seq.submitted_at),
        };
        request.n_output_tokens += usage.completion_tokens;
        request.n_cached_tokens += usage.cached_prompt_tokens;
        let _ = request.events.send(Event::Finished {
            index: seq.index,
            reason,
            matched_stop: matched,
            usage,
        });
        request.n_live -= 1;
        if request.n_live > 0 {
            return;
        }
        let request = self
            .requests
            .remove(&seq.request_id)
            .expect("finished request is registered");
        self.counters.finished_requests += 1;
        let ttft_ms = request.first_token_at.map(|t| {
            t.saturating_duration_since(request.submitted_at)
                .as_secs_f64()
                * 1e3
        });
        // The server logs the one `info` line per request (with its response id); this
        // engine-side line is for debugging the scheduler.
        debug!(
            request_id = %seq.request_id,
            n_prompt_tokens = request.n_prompt_tokens,
            n_cached_tokens = request.n_cached_tokens,
            n_output_tokens = request.n_output_tokens,
            ttft_ms,
            duration_ms = now.saturating_duration_since(request.submitted_at).as_secs_f64() * 1e3,
            finish_reason = %reason,
            "request finished"
        );
    }

    /// Samples `seq`'s next token from its logits row.
    fn sample_next(&self, seq: &mut Sequence, row: &[f32]) -> Sampled {
        let request = self.requests.get(&seq.request_id);
        let stop_ids = request.map_or(&[][..], |r| r.stop_token_ids.as_slice());
        // Stop tokens cannot be chosen before `min_tokens` tokens exist.
        let suppressed = if seq.n_output_tokens() < seq.params.min_tokens {
            stop_ids
        } else {
            &[]
        };
        let params = &seq.params;
        let active = seq.constrained.as_ref().filter(|c| c.is_active());
        let masked = active.and_then(|constrained| {
            let vocab = self.json_vocab()?;
            let mut row = row.to_vec();
            if constrained.mask(vocab, &mut row) {
                return Some(row);
            }
            tracing::warn!(
                sequence = seq.id.0,
                "constrained output: no token fits; sampling unconstrained"
            );
            None
        });
        let row = masked.as_deref().unwrap_or(row);
        let plain_greedy = params.temperature == 0.0
            && params.logit_bias.is_empty()
            && params.logprobs.is_none()
            && seq.penalties.is_none()
            && suppressed.is_empty();
        if plain_greedy {
            // What `sample` computes here too, without copying the vocabulary-sized row.
            return Sampled {
                token_id: argmax(row),
                logprobs: None,
            };
        }
        sample(
            row,
            params,
            seq.penalties.as_ref(),
            suppressed,
            &mut seq.rng,
        )
    }

    /// JSON mode's token texts, decoded on first use; `None` without a decoder.
    fn json_vocab(&self) -> Option<&JsonVocab> {
        let decoder = self.decoder.as_ref()?;
        Some(
            self.json_vocab
                .get_or_init(|| JsonVocab::new(decoder.as_ref(), self.info.vocab_size)),
        )
    }

    /// Appends the sampled token, checks stop conditions and builds its event.
    fn append(
        &mut self,
        seq: &mut Sequence,
        sampled: Sampled,
        now: Instant,
    ) -> (Event, Option<Ending>) {
        let token_id = sampled.token_id;
        seq.tokens.push(token_id);
        if let Some(constrained) = seq.constrained.as_mut()
            && let Some(text) = self.json_vocab().and_then(|vocab| vocab.text(token_id))
        {
            // A token the mask let through always fits; one sampled without a mask
            // (before the gate, or when no token fitted) may not.
            constrained.feed(text);
        }
        if let Some(state) = seq.penalties.as_mut() {
            state.push_output(token_id);
        }
        seq.first_token_at.get_or_insert(now);
        if let Some(request) = self.requests.get_mut(&seq.request_id) {
            request.first_token_at.get_or_insert(now);
        }
        self.counters.generation_tokens += 1;

        let (text, ending) = self.next_text(seq, token_id);
        let logprobs = self.token_logprobs(token_id, sampled.logprobs);
        let event = Event::Token {
            index: seq.index,
            token_ids: vec![token_id],
            text,
            logprobs,
        };
        (event, ending)
    }

    /// The text released by `seq`'s newest token, and how the sequence ends if it does.
    fn next_text(&self, seq: &mut Sequence, token_id: u32) -> (String, Option<Ending>) {
        let n_output = seq.n_output_tokens();
        let past_min = n_output > seq.params.min_tokens;
        let stop_ids = self
            .requests
            .get(&seq.request_id)
            .map_or(&[][..], |r| &r.stop_token_ids[..]);
        if past_min && stop_ids.contains(&token_id) {
            let (text, matched) = self.flush_text(seq, n_output - 1);
            let matched = matched.map_or(StopMatch::TokenId(token_id), StopMatch::Text);
            return (text, Some((FinishReason::Stop, Some(matched))));
        }

        let decoded = match &self.decoder {
            Some(decoder) => {
                let output_ids = &seq.tokens[seq.n_prompt_tokens..];
                seq.detokenizer.next_text(decoder.as_ref(), output_ids)
            }
            None => String::new(),
        };
        let text = if past_min {
            match seq.stop_strings.push(&decoded) {
                StopOutcome::Continue(text) => text,
                StopOutcome::Stopped { text, matched } => {
                    return (
                        text,
                        Some((FinishReason::Stop, Some(StopMatch::Text(matched)))),
                    );
                }
            }
        } else {
            decoded
        };

        if seq.constrained.as_ref().is_some_and(Constrained::is_done) {
            // The constrained output is complete: nothing may follow it.
            let (tail, matched) = self.flush_text(seq, n_output);
            return (
                text + &tail,
                Some((FinishReason::Stop, matched.map(StopMatch::Text))),
            );
        }
        let limit = self.config.max_context_tokens.unwrap_or(usize::MAX);
        if n_output < seq.params.max_tokens && seq.tokens.len() < limit {
            return (text, None);
        }
        let (tail, matched) = self.flush_text(seq, n_output);
        let ending = match matched {
            Some(matched) => (FinishReason::Stop, Some(StopMatch::Text(matched))),
            None => (FinishReason::Length, None),
        };
        (text + &tail, Some(ending))
    }

    /// Everything still held for the first `n_output` output tokens: incomplete
    /// characters from the detokenizer and text held back for stop strings; and the
    /// stop string that only this last text completed (one ending in U+FFFD, say).
    fn flush_text(&self, seq: &mut Sequence, n_output: usize) -> (String, Option<String>) {
        let pending = match &self.decoder {
            Some(decoder) => {
                let ids = &seq.tokens[seq.n_prompt_tokens..seq.n_prompt_tokens + n_output];
                seq.detokenizer.flush(decoder.as_ref(), ids)
            }
            None => String::new(),
        };
        match seq.stop_strings.push(&pending) {
            StopOutcome::Continue(released) => (released + &seq.stop_strings.flush(), None),
            StopOutcome::Stopped { text, matched } => (text, Some(matched)),
        }
    }

    /// Logprob entries for the event, with token texts.
    fn token_logprobs(
        &self,
        token_id: u32,
        logprobs: Option<(f32, Vec<(u32, f32)>)>,
    ) -> Vec<TokenLogprob> {
        let Some((logprob, top)) = logprobs else {
            return Vec::new();
        };
        let text = |id: u32| {
            self.decoder
                .as_ref()
                .map_or_else(String::new, |d| d.token_text(id))
        };
        vec![TokenLogprob {
            token_id,
            token: text(token_id),
            logprob,
            top: top.into_iter().map(|(id, lp)| (id, text(id), lp)).collect(),
        }]
    }

    /// Sends an event to a request; `Err` when its receiver is gone.
    fn send(&self, id: RequestId, event: Event) -> Result<(), ()> {
        match self.requests.get(&id) {
            Some(request) => request.events.send(event).map_err(|_| ()),
            None => Err(()),
        }
    }
}

/// Removes the sequences at `indices` (ascending) from `running`, keeping the order of
/// the rest, and returns them in index order.
fn remove_at(running: &mut Vec<Sequence>, indices: impl Iterator<Item = usize>) -> Vec<Sequence> {
    let mut indices = indices.peekable();
    if indices.peek().is_none() {
        return Vec::new();
    }
    let mut position = 0;
    running
        .extract_if(.., |_| {
            let hit = indices.peek() == Some(&position);
            if hit {
                indices.next();
            }
            position += 1;
            hit
        })
        .collect()
}
