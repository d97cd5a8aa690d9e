//! JSON mode over the fake model: whatever the model prefers, every output is a JSON
//! object (checked by serde_json) that ends the sequence with `stop` as it closes, or,
//! cut by `max_tokens`, a prefix of one.

mod common;

use arbor_engine::testing::{FakeModel, NextToken};
use arbor_engine::{FinishReason, OutputConstraint, SamplingParams};
use common::*;
use serde::de::IgnoredAny;

/// ASCII only, so the fake's byte tokens are all whole characters.
const VOCAB: usize = 128;

fn json_params(max_tokens: usize, temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        seed: Some(seed),
        max_tokens,
        constraint: Some(OutputConstraint::JsonObject),
        ..SamplingParams::default()
    }
}

#[test]
fn sampled_outputs_are_json_objects_or_prefixes_of_one() {
    let model = FakeModel::new(VOCAB).with_eos(vec![0]);
    let mut core = core(model, config(1024, 16));
    let mut rxs = Vec::new();
    for id in 0..8u64 {
        let prompt = prompt(id as u32 + 1, 5, VOCAB as u32);
        rxs.push(submit(&mut core, id, &prompt, json_params(1500, 1.0, id)));
    }
    run_to_end(&mut core, 20_000);
    let mut n_complete = 0;
    for (id, rx) in rxs.iter_mut().enumerate() {
        let out = collect_one(rx);
        // Checked as any JSON value (numbers such as 1E536 are valid JSON but overflow
        // serde_json's f64), plus the leading brace.
        assert!(out.text.trim_start().starts_with('{'), "{:?}", out.text);
        let parsed = serde_json::from_str::<IgnoredAny>(&out.text);
        match out.reason {
            Some(FinishReason::Stop) => {
                assert!(parsed.is_ok(), "request {id}: {:?}", out.text);
                assert!(out.text.ends_with('}'));
                n_complete += 1;
            }
            Some(FinishReason::Length) => {
                let err = parsed.expect_err("a cut output is not complete");
                assert!(err.is_eof(), "request {id}: {err} in {:?}", out.text);
            }
            other => panic!("request {id} ended with {other:?}"),
        }
        assert_eq!(
            out.token_ids.len(),
            out.text.len(),
            "one ASCII character per token"
        );
    }
    assert!(n_complete > 0, "no output closed its object");
    assert_no_leak(&core);
}

#[test]
fn greedy_json_mode_follows_the_favourite_where_it_fits() {
    // The successor model wants 'a', 'b', 'c', ... after the prompt "z"; JSON mode
    // must open with '{' and then a key, so the output differs from the free one.
    let model = FakeModel::new(VOCAB).with_next_token(NextToken::Successor);
    let mut core = core(model, config(256, 16));
    let free = SamplingParams::greedy(8);
    let json = json_params(8, 0.0, 0);
    let mut free_rx = submit(&mut core, 1, b"z".map(u32::from).as_slice(), free);
    let mut json_rx = submit(&mut core, 2, b"z".map(u32::from).as_slice(), json);
    run_to_end(&mut core, 100);
    assert_eq!(collect_one(&mut free_rx).text, "{|}~\u{7f}\0\u{1}\u{2}");
    let out = collect_one(&mut json_rx);
    assert!(out.text.starts_with('{'), "{:?}", out.text);
    match serde_json::from_str::<IgnoredAny>(&out.text) {
        Ok(_) => assert_eq!(out.reason, Some(FinishReason::Stop)),
        Err(err) => assert!(err.is_eof(), "{err}: {:?}", out.text),
    }
    assert_no_leak(&core);
}

#[test]
fn a_gated_constraint_lets_the_model_write_freely_up_to_the_gate() {
    // The successor model writes "bcdefg..." after "a"; with the gate "def" (standing
    // in for `</think>`), "bcdef" is free text and what follows must be JSON.
    let model = FakeModel::new(VOCAB).with_next_token(NextToken::Successor);
    let mut core = core(model, config(256, 16));
    let params = SamplingParams {
        constraint_after: Some("def".into()),
        ..json_params(40, 0.0, 0)
    };
    let mut rx = submit(&mut core, 1, &[u32::from(b'a')], params);
    run_to_end(&mut core, 200);
    let out = collect_one(&mut rx);
    let (free, answer) = out.text.split_at(5);
    assert_eq!(free, "bcdef");
    assert!(answer.trim_start().starts_with('{'), "{:?}", out.text);
    match serde_json::from_str::<IgnoredAny>(answer) {
        Ok(_) => assert_eq!(out.reason, Some(FinishReason::Stop)),
        Err(err) => assert!(err.is_eof(), "{err}: {answer:?}"),
    }
    assert_no_leak(&core);
}
