//! Scheduler scenarios over the deterministic fake model: chunked prefill, mixed steps,
//! prefix sharing, eviction, preemption and resume, cancellation, and the no-leak check.
//! The fake model reads its "KV" through the page tables, so outputs equal to
//! `FakeModel::reference_greedy` mean every sequence saw the right pages.

mod common;

use std::time::Duration;

use arbor_engine::testing::{FakeModel, NextToken, byte_ids};
use arbor_engine::{
    EngineCore, FinishReason, ManualClock, RequestId, SamplingParams, SchedulePolicy, StartOptions,
    StopMatch,
};
use common::*;

const VOCAB: u32 = 97;

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams::greedy(max_tokens)
}

#[test]
fn long_prompt_is_prefilled_in_chunks_then_decoded() {
    let (model, log) = FakeModel::new(VOCAB as usize).recording();
    let reference = FakeModel::new(VOCAB as usize);
    let mut config = config(64, 4);
    config.chunked_prefill_size = 8;
    let mut core = core(model, config);
    let p = prompt(1, 20, VOCAB);
    let mut rx = submit(&mut core, 1, &p, greedy(3));
    run_to_end(&mut core, 100);

    let out = collect_one(&mut rx);
    assert_eq!(out.token_ids, reference.reference_greedy(&p, 3));
    assert_eq!(out.reason, Some(FinishReason::Length));
    let passes: Vec<Vec<(usize, usize)>> = log
        .lock()
        .unwrap()
        .iter()
        .map(|b| b.sequences.clone())
        .collect();
    assert_eq!(
        passes,
        vec![
            vec![(0, 8)],
            vec![(8, 8)],
            vec![(16, 4)],
            vec![(20, 1)],
            vec![(21, 1)],
        ]
    );
    assert_no_leak(&core);
}

#[test]
fn a_step_mixes_decode_tokens_with_a_new_prompt_chunk() {
    let (model, log) = FakeModel::new(VOCAB as usize).recording();
    let reference = FakeModel::new(VOCAB as usize);
    let mut config = config(64, 4);
    config.chunked_prefill_size = 8;
    let mut core = core(model, config);
    let a = prompt(3, 5, VOCAB);
    let mut rx_a = submit(&mut core, 1, &a, greedy(6));
    core.step().unwrap();
    core.step().unwrap();
    let b = prompt(40, 12, VOCAB);
    let mut rx_b = submit(&mut core, 2, &b, greedy(2));
    core.step().unwrap();

    let third = log.lock().unwrap()[2].sequences.clone();
    assert_eq!(
        third,
        vec![(6, 1), (0, 8)],
        "decode of A and first chunk of B"
    );
    run_to_end(&mut core, 100);
    assert_eq!(
        collect_one(&mut rx_a).token_ids,
        reference.reference_greedy(&a, 6)
    );
    assert_eq!(
        collect_one(&mut rx_b).token_ids,
        reference.reference_greedy(&b, 2)
    );
    assert_no_leak(&core);
}

#[test]
fn token_budget_caps_the_tokens_of_one_step() {
    let (model, log) = FakeModel::new(VOCAB as usize).recording();
    let mut config = config(128, 4);
    config.max_batched_tokens = 10;
    config.chunked_prefill_size = 64;
    let mut core = core(model, config);
    let mut rxs: Vec<_> = (0..3)
        .map(|i| submit(&mut core, i, &prompt(i as u32, 7, VOCAB), greedy(4)))
        .collect();
    run_to_end(&mut core, 100);
    assert!(log.lock().unwrap().iter().all(|b| b.n_tokens() <= 10));
    let reference = FakeModel::new(VOCAB as usize);
    for (i, rx) in rxs.iter_mut().enumerate() {
        let expected = reference.reference_greedy(&prompt(i as u32, 7, VOCAB), 4);
        assert_eq!(collect_one(rx).token_ids, expected);
    }
    assert_no_leak(&core);
}

#[test]
fn concurrent_requests_with_a_shared_prefix_compute_it_once() {
    let reference = FakeModel::new(VOCAB as usize);
    let mut core = core(FakeModel::new(VOCAB as usize), config(128, 4));
    let system = prompt(5, 64, VOCAB);
    let prompts: Vec<Vec<u32>> = (0..4)
        .map(|i| [system.clone(), prompt(50 + i, 6, VOCAB)].concat())
        .collect();
    let mut rxs: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| submit(&mut core, i as u64, p, greedy(4)))
        .collect();
    run_to_end(&mut core, 100);

    let outs: Vec<_> = rxs.iter_mut().map(collect_one).collect();
    for (p, out) in prompts.iter().zip(&outs) {
        assert_eq!(out.token_ids, reference.reference_greedy(p, 4));
    }
    assert_eq!(outs[0].usage.cached_prompt_tokens, 0);
    for out in &outs[1..] {
        assert_eq!(
            out.usage.cached_prompt_tokens, 64,
            "the system prompt came from cache"
        );
    }
    let stats = core.stats();
    assert_eq!(stats.cache_hit_tokens, 3 * 64);
    assert_eq!(stats.prefill_tokens, 64 + 4 * 6);
    assert_no_leak(&core);
}

#[test]
fn a_later_turn_hits_the_cached_prompt_and_output() {
    let reference = FakeModel::new(VOCAB as usize);
    let mut core = core(FakeModel::new(VOCAB as usize), config(128, 4));
    let first = prompt(9, 30, VOCAB);
    let mut rx = submit(&mut core, 1, &first, greedy(10));
    run_to_end(&mut core, 100);
    let out = collect_one(&mut rx);

    // The next turn: the whole first exchange plus a new question.
    let second = [first.clone(), out.token_ids.clone(), prompt(70, 5, VOCAB)].concat();
    let mut rx = submit(&mut core, 2, &second, greedy(3));
    run_to_end(&mut core, 100);
    let out2 = collect_one(&mut rx);
    // 30 prompt + 9 computed output tokens were inserted: 9 whole pages of 4.
    assert_eq!(out2.usage.cached_prompt_tokens, 36);
    assert_eq!(out2.token_ids, reference.reference_greedy(&second, 3));
    assert_no_leak(&core);
}

#[test]
fn the_n_sequences_of_a_request_share_the_prompt_pages() {
    let mut core = core(FakeModel::new(VOCAB as usize), config(128, 4));
    let p = prompt(2, 40, VOCAB);
    let params = SamplingParams {
        temperature: 1.0,
        seed: Some(42),
        max_tokens: 8,
        ..SamplingParams::default()
    };
    let mut rx = submit_n(&mut core, 1, &p, params, 3);
    run_to_end(&mut core, 100);
    let outs = collect(&mut rx, 3);
    assert!(outs.iter().all(|o| o.token_ids.len() == 8));
    assert_eq!(outs[0].usage.cached_prompt_tokens, 0);
    assert_eq!(outs[1].usage.cached_prompt_tokens, 36);
    assert_eq!(outs[2].usage.cached_prompt_tokens, 36);
    assert_ne!(
        outs[0].token_ids, outs[1].token_ids,
        "seeds differ per sequence"
    );
    assert_eq!(core.stats().prefill_tokens, 40 + 2 * 4);
    assert_no_leak(&core);
}

#[test]
fn cached_pages_are_evicted_when_a_new_prompt_needs_them() {
    let reference = FakeModel::new(VOCAB as usize);
    // 12 pages of 4 tokens: each request below needs 6 pages.
    let mut core = core(FakeModel::new(VOCAB as usize), config(12, 4));
    for i in 0..4u64 {
        let p = prompt(10 * i as u32, 20, VOCAB);
        let mut rx = submit(&mut core, i, &p, greedy(4));
        run_to_end(&mut core, 100);
        assert_eq!(
            collect_one(&mut rx).token_ids,
            reference.reference_greedy(&p, 4)
        );
    }
    let stats = core.stats();
    assert!(stats.n_pages_cached <= 12);
    assert!(
        stats.n_pages_evictable > 0,
        "the last request's pages stay cached"
    );
    assert_no_leak(&core);
}

#[test]
fn out_of_pages_preempts_the_newest_and_resumes_it_from_cache() {
    let reference = FakeModel::new(VOCAB as usize);
    // Three requests of 16 prompt + 24 output tokens need 10 pages each; 16 pages hold
    // one and a half of them.
    let mut core = core(FakeModel::new(VOCAB as usize), config(16, 4));
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| prompt(11 * i, 16, VOCAB)).collect();
    let mut rxs: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| submit(&mut core, i as u64, p, greedy(24)))
        .collect();
    run_to_end(&mut core, 1000);

    for (p, rx) in prompts.iter().zip(&mut rxs) {
        let out = collect_one(rx);
        assert_eq!(out.token_ids, reference.reference_greedy(p, 24));
        assert_eq!(out.reason, Some(FinishReason::Length));
    }
    let stats = core.stats();
    assert!(stats.preemptions > 0, "{stats:?}");
    assert_no_leak(&core);
}

#[test]
fn a_lone_sequence_that_outgrows_the_pool_finishes_with_length() {
    let mut core = core(FakeModel::new(VOCAB as usize), config(3, 4));
    let mut rx = submit(&mut core, 1, &prompt(1, 6, VOCAB), greedy(50));
    run_to_end(&mut core, 100);
    let out = collect_one(&mut rx);
    assert_eq!(out.reason, Some(FinishReason::Length));
    // 12 slots: 6 prompt tokens, and the last sampled token never needs a slot.
    assert_eq!(out.token_ids.len(), 7);
    assert_no_leak(&core);
}

#[test]
fn abort_releases_a_running_and_a_waiting_request() {
    let mut config = config(64, 4);
    config.max_running_requests = 1;
    let mut core = core(FakeModel::new(VOCAB as usize), config);
    let mut rx_a = submit(&mut core, 1, &prompt(1, 20, VOCAB), greedy(50));
    let mut rx_b = submit(&mut core, 2, &prompt(2, 20, VOCAB), greedy(50));
    for _ in 0..3 {
        core.step().unwrap();
    }
    assert_eq!(core.stats().n_running, 1);
    assert_eq!(core.stats().n_waiting, 1);
    core.abort(RequestId(1));
    core.abort(RequestId(2));
    core.check_invariants().unwrap();

    let a = collect_one(&mut rx_a);
    assert_eq!(a.reason, Some(FinishReason::Abort));
    assert_eq!(a.token_ids.len(), 3);
    assert_eq!(a.usage.completion_tokens, 3);
    assert_eq!(collect_one(&mut rx_b).reason, Some(FinishReason::Abort));
    assert_no_leak(&core);
}

#[test]
fn a_dropped_event_receiver_aborts_its_request() {
    let mut core = core(FakeModel::new(VOCAB as usize), config(64, 4));
    let rx = submit(&mut core, 1, &prompt(1, 10, VOCAB), greedy(100));
    core.step().unwrap();
    drop(rx);
    core.step().unwrap();
    assert!(
        !core.has_work(),
        "the request was aborted when its token could not be sent"
    );
    assert_no_leak(&core);
}

#[test]
fn nothing_leaks_after_a_mixed_workload() {
    let reference = FakeModel::new(VOCAB as usize);
    let mut core = core(FakeModel::new(VOCAB as usize), config(40, 4));
    let system = prompt(3, 24, VOCAB);
    let mut rxs = Vec::new();
    for i in 0..24u32 {
        let p = if i % 2 == 0 {
            [system.clone(), prompt(i, 1 + (i as usize % 9), VOCAB)].concat()
        } else {
            prompt(i * 5, 3 + (i as usize % 17), VOCAB)
        };
        let rx = submit(
            &mut core,
            u64::from(i),
            &p,
            greedy(1 + (i as usize * 3) % 20),
        );
        rxs.push((p, rx));
        if i % 5 == 0 {
            core.step().unwrap();
        }
    }
    // Request 21 was submitted after the last step, so it cannot have finished yet.
    core.abort(RequestId(21));
    run_to_end(&mut core, 2000);
    for (i, (p, rx)) in rxs.iter_mut().enumerate() {
        let out = collect_one(rx);
        if i == 21 {
            assert_eq!(out.reason, Some(FinishReason::Abort));
            continue;
        }
        let n = 1 + (i * 3) % 20;
        assert_eq!(
            out.token_ids,
            reference.reference_greedy(p, n),
            "request {i}"
        );
    }
    assert_no_leak(&core);
}

#[test]
fn stop_strings_end_the_text_before_the_match() {
    let model = FakeModel::new(256).with_next_token(NextToken::Successor);
    let mut core = core(model, config(64, 4));
    let params = SamplingParams {
        stop_strings: vec!["fg".into()],
        ..greedy(20)
    };
    let mut rx = submit(&mut core, 1, &byte_ids("a"), params);
    run_to_end(&mut core, 100);
    let out = collect_one(&mut rx);
    assert_eq!(out.text, "bcde");
    assert_eq!(out.token_ids, byte_ids("bcdefg"));
    assert_eq!(out.reason, Some(FinishReason::Stop));
    assert_eq!(out.matched_stop, Some(StopMatch::Text("fg".into())));
}

#[test]
fn a_stop_string_completed_by_the_final_flush_ends_with_stop() {
    // One output token, 0xDF: a UTF-8 lead byte with no continuation, released as
    // U+FFFD only when the sequence ends at max_tokens; the stop string matches then.
    let model = FakeModel::new(256).with_next_token(NextToken::Successor);
    let mut core = core(model, config(64, 4));
    let params = SamplingParams {
        stop_strings: vec!["\u{FFFD}".into()],
        ..greedy(1)
    };
    let mut rx = submit(&mut core, 1, &[0xDE], params);
    run_to_end(&mut core, 100);
    let out = collect_one(&mut rx);
    assert_eq!(out.token_ids, vec![0xDF]);
    assert_eq!(out.text, "");
    assert_eq!(out.reason, Some(FinishReason::Stop));
    assert_eq!(out.matched_stop, Some(StopMatch::Text("\u{FFFD}".into())));
    assert_no_leak(&core);
}

#[test]
fn eos_stops_unless_ignored_and_min_tokens_delays_it() {
    let eos = u32::from(b'e');
    let run = |params: SamplingParams| {
        let model = FakeModel::new(256)
            .with_next_token(NextToken::Successor)
            .with_eos(vec![eos]);
        let mut core = core(model, config(64, 4));
        let mut rx = submit(&mut core, 1, &byte_ids("a"), params);
        run_to_end(&mut core, 100);
        collect_one(&mut rx)
    };
    let stopped = run(greedy(10));
    assert_eq!(stopped.text, "bcd");
    assert_eq!(stopped.token_ids, byte_ids("bcde"));
    assert_eq!(stopped.matched_stop, Some(StopMatch::TokenId(eos)));

    let ignored = run(SamplingParams {
        ignore_eos: true,
        ..greedy(6)
    });
    assert_eq!(ignored.text, "bcdefg");
    assert_eq!(ignored.reason, Some(FinishReason::Length));

    // With eos suppressed for the first 5 tokens, the successor chain passes 'e'.
    let delayed = run(SamplingParams {
        min_tokens: 5,
        ..greedy(6)
    });
    assert_eq!(delayed.reason, Some(FinishReason::Length));
    assert_eq!(delayed.token_ids.len(), 6);
    assert!(!delayed.token_ids[..5].contains(&eos));
}

#[test]
fn a_seed_reproduces_sampled_output_alone_or_in_a_crowd() {
    let p = prompt(4, 12, VOCAB);
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
        seed: Some(7),
        max_tokens: 12,
        ..SamplingParams::default()
    };
    let mut alone = core(FakeModel::new(VOCAB as usize), config(64, 4));
    let mut rx = submit(&mut alone, 1, &p, params.clone());
    run_to_end(&mut alone, 100);
    let alone = collect_one(&mut rx);

    let mut crowd = core(FakeModel::new(VOCAB as usize), config(64, 4));
    let mut others: Vec<_> = (0..5)
        .map(|i| {
            submit(
                &mut crowd,
                10 + i,
                &prompt(i as u32, 9, VOCAB),
                params.clone(),
            )
        })
        .collect();
    let mut rx = submit(&mut crowd, 1, &p, params);
    run_to_end(&mut crowd, 100);
    assert_eq!(collect_one(&mut rx).token_ids, alone.token_ids);
    others
        .iter_mut()
        .for_each(|rx| assert_eq!(collect_one(rx).token_ids.len(), 12));
}

#[test]
fn logprobs_come_with_every_token_when_asked() {
    let mut core = core(FakeModel::new(VOCAB as usize), config(64, 4));
    let params = SamplingParams {
        logprobs: Some(3),
        ..greedy(5)
    };
    let mut rx = submit(&mut core, 1, &prompt(1, 5, VOCAB), params);
    run_to_end(&mut core, 100);
    assert_eq!(collect_one(&mut rx).n_logprob_entries, 5);
}

#[test]
fn cache_aware_order_prefers_cached_prompts_until_aging_wins() {
    let clock = std::sync::Arc::new(ManualClock::new());
    let mut config = config(256, 4);
    config.max_running_requests = 1;
    config.schedule_policy = SchedulePolicy::Lpm;
    let options = StartOptions {
        clock: clock.clone(),
        seed: Some(1),
    };
    let mut core =
        EngineCore::new(Box::new(FakeModel::new(VOCAB as usize)), config, options).unwrap();
    let cached = prompt(20, 40, VOCAB);
    let mut rx = submit(&mut core, 1, &cached, greedy(1));
    run_to_end(&mut core, 100);
    collect_one(&mut rx);

    // Both wait; the one whose prompt is cached goes first although it came later
    // (one step prefills and finishes it: max_tokens is 1 and one sequence may run).
    let mut rx_cold = submit(&mut core, 2, &prompt(60, 40, VOCAB), greedy(1));
    let hot = [cached.clone(), vec![1, 2, 3]].concat();
    let mut rx_hot = submit(&mut core, 3, &hot, greedy(1));
    core.step().unwrap();
    let hot_out = collect_one(&mut rx_hot);
    assert_eq!(hot_out.reason, Some(FinishReason::Length));
    assert_eq!(hot_out.usage.cached_prompt_tokens, 40);
    assert!(collect_one(&mut rx_cold).reason.is_none());
    run_to_end(&mut core, 100);

    // Five seconds of waiting outweigh a 40-token cached prefix.
    let mut rx_old = submit(&mut core, 4, &prompt(80, 40, VOCAB), greedy(1));
    clock.advance(Duration::from_secs(5));
    let mut rx_new = submit(&mut core, 5, &hot, greedy(1));
    core.step().unwrap();
    assert_eq!(collect_one(&mut rx_old).reason, Some(FinishReason::Length));
    assert!(collect_one(&mut rx_new).reason.is_none());
    run_to_end(&mut core, 100);
    assert_no_leak(&core);
}

#[test]
fn a_failed_forward_aborts_the_batch_and_the_engine_keeps_working() {
    let reference = FakeModel::new(VOCAB as usize);
    let model = FakeModel::new(VOCAB as usize).failing_at(1);
    let mut core = core(model, config(64, 4));
    let mut rx = submit(&mut core, 1, &prompt(1, 5, VOCAB), greedy(5));
    core.step().unwrap();
    assert!(core.step().is_err());
    assert_eq!(collect_one(&mut rx).reason, Some(FinishReason::Abort));
    assert_no_leak(&core);

    let p = prompt(2, 5, VOCAB);
    let mut rx = submit(&mut core, 2, &p, greedy(5));
    run_to_end(&mut core, 100);
    assert_eq!(
        collect_one(&mut rx).token_ids,
        reference.reference_greedy(&p, 5)
    );
}

#[test]
fn invalid_requests_are_refused_with_clear_errors() {
    let mut core = core(
        FakeModel::new(VOCAB as usize).with_max_context(64),
        config(8, 4),
    );
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut try_submit = |prompt_ids: Vec<u32>, params: SamplingParams| {
        let request = arbor_engine::GenerateRequest::new(prompt_ids, params);
        core.add_request(RequestId(1), request, tx.clone(), std::time::Instant::now())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(try_submit(vec![], greedy(1)), "prompt is empty");
    assert!(try_submit(vec![500], greedy(1)).contains("outside the vocabulary"));
    assert!(try_submit(vec![1; 60], greedy(10)).contains("the limit is 64"));
    assert!(try_submit(vec![1; 40], greedy(1)).contains("pages of KV cache"));
    let bad_top_p = SamplingParams {
        top_p: 1.5,
        ..greedy(1)
    };
    assert!(try_submit(vec![1], bad_top_p).contains("top_p"));
}

#[test]
fn thousands_of_waiting_requests_do_not_slow_a_step_down() {
    let mut config = config(4096, 16);
    config.max_running_requests = 8;
    config.schedule_policy = SchedulePolicy::Lpm;
    let mut core = core(FakeModel::new(VOCAB as usize), config);
    let _rxs: Vec<_> = (0..5000u64)
        .map(|i| submit(&mut core, i, &prompt(i as u32, 64, VOCAB), greedy(4)))
        .collect();
    for _ in 0..50 {
        core.step().unwrap();
        assert!(
            core.stats().n_running <= 8,
            "max_running_requests caps the batch"
        );
    }
    // The cost per step with thousands waiting is measured by the `scheduler_step` bench.
    core.abort_all();
    assert_no_leak(&core);
}
