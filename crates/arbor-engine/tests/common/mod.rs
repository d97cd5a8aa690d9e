//! Helpers shared by the engine's integration tests: an `EngineCore` over the fake
//! model, request submission, stepping to completion with invariant checks, and
//! collecting a request's events.

#![allow(dead_code)]

use std::time::Instant;

use arbor_engine::testing::FakeModel;
use arbor_engine::{
    EngineConfig, EngineCore, Event, FinishReason, GenerateRequest, KvBudget, RequestId,
    SamplingParams, StartOptions, StopMatch, Usage,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// A small engine configuration: `n_pages` pages of `page_size`.
pub fn config(n_pages: usize, page_size: usize) -> EngineConfig {
    EngineConfig {
        page_size,
        kv_cache: KvBudget::Pages(n_pages),
        max_running_requests: 64,
        max_batched_tokens: 256,
        chunked_prefill_size: 64,
        ..EngineConfig::default()
    }
}

/// An engine core over `model` with a fixed seed.
pub fn core(model: FakeModel, config: EngineConfig) -> EngineCore {
    let options = StartOptions {
        seed: Some(1),
        ..StartOptions::default()
    };
    EngineCore::new(Box::new(model), config, options).expect("engine starts")
}

/// Submits `prompt` with `params` as request `id`.
pub fn submit(
    core: &mut EngineCore,
    id: u64,
    prompt: &[u32],
    params: SamplingParams,
) -> UnboundedReceiver<Event> {
    submit_n(core, id, prompt, params, 1)
}

/// Submits `prompt` with `n` sequences.
pub fn submit_n(
    core: &mut EngineCore,
    id: u64,
    prompt: &[u32],
    params: SamplingParams,
    n: usize,
) -> UnboundedReceiver<Event> {
    let (tx, rx) = unbounded_channel();
    let request = GenerateRequest {
        prompt_ids: prompt.to_vec(),
        params,
        n,
    };
    core.add_request(RequestId(id), request, tx, Instant::now())
        .expect("request accepted");
    rx
}

/// Steps until nothing runs or waits, checking invariants after every step. Panics
/// after `max_steps` (a scheduler that stops making progress).
pub fn run_to_end(core: &mut EngineCore, max_steps: usize) -> usize {
    let mut n_steps = 0;
    while core.has_work() {
        core.step().expect("step succeeds");
        core.check_invariants().expect("invariants hold");
        n_steps += 1;
        assert!(n_steps <= max_steps, "no progress after {max_steps} steps");
    }
    n_steps
}

/// Everything one sequence produced.
#[derive(Debug, Default, Clone)]
pub struct Output {
    pub token_ids: Vec<u32>,
    pub text: String,
    pub reason: Option<FinishReason>,
    pub matched_stop: Option<StopMatch>,
    pub usage: Usage,
    pub n_logprob_entries: usize,
}

/// Drains a request's events into one `Output` per sequence.
pub fn collect(rx: &mut UnboundedReceiver<Event>, n: usize) -> Vec<Output> {
    let mut outputs = vec![Output::default(); n];
    while let Ok(event) = rx.try_recv() {
        match event {
            Event::Token {
                index,
                token_ids,
                text,
                logprobs,
            } => {
                let out = &mut outputs[index];
                assert!(out.reason.is_none(), "token after finish");
                out.token_ids.extend(token_ids);
                out.text.push_str(&text);
                out.n_logprob_entries += logprobs.len();
            }
            Event::Finished {
                index,
                reason,
                matched_stop,
                usage,
            } => {
                let out = &mut outputs[index];
                assert!(out.reason.is_none(), "finished twice");
                out.reason = Some(reason);
                out.matched_stop = matched_stop;
                out.usage = usage;
            }
        }
    }
    outputs
}

/// Drains a single-sequence request.
pub fn collect_one(rx: &mut UnboundedReceiver<Event>) -> Output {
    collect(rx, 1).pop().expect("one output")
}

/// Prompt tokens `base..base + len` wrapped into the vocabulary.
pub fn prompt(base: u32, len: usize, vocab: u32) -> Vec<u32> {
    (0..len as u32).map(|i| (base + i * 7) % vocab).collect()
}

/// Asserts that every page is free or held only by an evictable radix node.
pub fn assert_no_leak(core: &EngineCore) {
    core.check_invariants().expect("invariants hold");
    let stats = core.stats();
    assert_eq!(stats.n_running + stats.n_waiting, 0);
    assert_eq!(core.n_pages_pinned(), 0, "pages still pinned: {stats:?}");
    assert_eq!(
        stats.n_pages_free + stats.n_pages_evictable,
        stats.n_pages_total,
        "{stats:?}"
    );
}
