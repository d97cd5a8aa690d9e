//! The tiny random Qwen2, tied Qwen2 and Llama 3.1 checkpoints against the logits and
//! greedy continuations `transformers` produced (tests/fixtures/README.md): whole
//! prompts, chunked prefill, batches mixing prefill and decode, several page sizes with
//! scrambled pages, and 16-bit weights and KV storage.

mod common;

use arbor_models::{ForwardBatch, KvCache, LogitsWanted};
use candle_core::{DType, Tensor};
use common::*;

const MODELS: [&str; 3] = ["tiny-qwen2", "tiny-qwen2-tied", "tiny-llama3"];

/// Agreement a faithful f32 implementation reaches (fixtures README).
const F32_TOLERANCE: f32 = 1e-4;

#[test]
fn whole_prompt_logits_match_transformers_at_every_position() {
    for name in MODELS {
        let model = tiny_model(name, DType::F32);
        for (case_idx, case) in tiny_cases(name).iter().enumerate() {
            let logits = prompt_logits(&model, 64, DType::F32, &case.prompt_ids);
            let err = max_abs_diff(&logits, &case.logits);
            println!("{name} case {case_idx}: max error {err:e}");
            assert!(
                err < F32_TOLERANCE,
                "{name} case {case_idx}: max error {err}"
            );
        }
    }
}

#[test]
fn greedy_decoding_through_the_paged_cache_reproduces_greedy_16() {
    for name in MODELS {
        let model = tiny_model(name, DType::F32);
        for (case_idx, case) in tiny_cases(name).iter().enumerate() {
            let mut kv = model.new_kv_cache(300, 1, DType::F32).unwrap();
            let ids = greedy(&model, &mut kv, &case.prompt_ids, 16);
            assert_eq!(ids, case.greedy_16, "{name} case {case_idx}");
        }
    }
}

#[test]
fn chunked_prefill_then_single_token_steps_give_the_same_logits() {
    for name in MODELS {
        let model = tiny_model(name, DType::F32);
        for page_size in [1, 16] {
            for (case_idx, case) in tiny_cases(name).iter().enumerate() {
                let mut kv = model.new_kv_cache(300, page_size, DType::F32).unwrap();
                let mut dealer = PageDealer::new(300);
                let mut seq = TestSeq::new();
                let prompt = &case.prompt_ids;
                let mut rows = Vec::new();
                let mut start = 0;
                for chunk in [7, 5].into_iter().chain(std::iter::repeat(1)) {
                    if start >= prompt.len() {
                        break;
                    }
                    let end = (start + chunk).min(prompt.len());
                    let tokens = &prompt[start..end];
                    let logits = forward_one(
                        &model,
                        &mut kv,
                        &mut seq,
                        &mut dealer,
                        tokens,
                        LogitsWanted::All,
                    );
                    rows.push(logits);
                    start = end;
                }
                let logits = Tensor::cat(&rows, 0).unwrap();
                let err = max_abs_diff(&logits, &case.logits);
                assert!(
                    err < F32_TOLERANCE,
                    "{name} page size {page_size} case {case_idx}: max error {err}"
                );
            }
        }
    }
}

/// Feeds every case of a model through shared forward passes: sequence `j` joins at
/// step `j`, prefills in chunks of 6 and 4 tokens, then single prompt tokens; after
/// all prompts, every sequence decodes greedily in one batch per step. The first chunk
/// of odd sequences wants no logits (unless it ends the prompt), so batches mix
/// sequences with and without logit rows; every other row is compared.
#[test]
fn batches_mixing_prefill_and_decode_match_single_sequence_results() {
    for name in MODELS {
        let model = tiny_model(name, DType::F32);
        let cases = tiny_cases(name);
        for page_size in [1, 16] {
            let n_pages = 1200 / page_size;
            let mut kv = model.new_kv_cache(n_pages, page_size, DType::F32).unwrap();
            let mut dealer = PageDealer::new(n_pages);
            let mut seqs: Vec<TestSeq> = cases.iter().map(|_| TestSeq::new()).collect();
            let mut fed = vec![0usize; cases.len()];
            let mut rows: Vec<Vec<Tensor>> = vec![Vec::new(); cases.len()];
            let mut step = 0;
            while fed.iter().zip(&cases).any(|(f, c)| *f < c.prompt_ids.len()) {
                let mut batch = ForwardBatch::default();
                let mut members = Vec::new();
                for (j, case) in cases.iter().enumerate() {
                    let prompt = &case.prompt_ids;
                    if step < j || fed[j] >= prompt.len() {
                        continue;
                    }
                    let chunk = match step - j {
                        0 => 6,
                        1 => 4,
                        _ => 1,
                    };
                    let end = (fed[j] + chunk).min(prompt.len());
                    let logits = match (step - j, end == prompt.len()) {
                        (0, false) if j % 2 == 1 => LogitsWanted::None,
                        _ => LogitsWanted::All,
                    };
                    batch.token_ids.extend_from_slice(&prompt[fed[j]..end]);
                    batch.sequences.push(seqs[j].input(
                        end - fed[j],
                        page_size,
                        &mut dealer,
                        logits,
                    ));
                    members.push((j, fed[j], end, logits));
                    fed[j] = end;
                }
                let logits = model.forward(&batch, &mut kv).unwrap();
                assert_eq!(logits.dim(0).unwrap(), batch.n_logit_rows());
                let mut row = 0;
                for (j, start, end, wanted) in members {
                    if wanted == LogitsWanted::None {
                        let reference = case_rows(&cases[j].logits, start, end);
                        rows[j].push(reference);
                        continue;
                    }
                    rows[j].push(logits.narrow(0, row, end - start).unwrap());
                    row += end - start;
                }
                step += 1;
            }
            for (j, case) in cases.iter().enumerate() {
                let got = Tensor::cat(&rows[j], 0).unwrap();
                let err = max_abs_diff(&got, &case.logits);
                assert!(
                    err < F32_TOLERANCE,
                    "{name} page size {page_size} case {j}: {err}"
                );
            }

            let decoded = decode_together(&model, &mut kv, &mut seqs, &mut dealer, &cases);
            for (j, case) in cases.iter().enumerate() {
                assert_eq!(
                    decoded[j], case.greedy_16,
                    "{name} page size {page_size} case {j}"
                );
            }
        }
    }
}

/// Reference rows `start..end` (for chunks that asked for no logits).
fn case_rows(logits: &Tensor, start: usize, end: usize) -> Tensor {
    logits.narrow(0, start, end - start).unwrap()
}

/// Greedy decoding of every sequence in one batch per step, starting from the argmax
/// of each prompt's last reference row.
fn decode_together(
    model: &arbor_models::Model,
    kv: &mut KvCache,
    seqs: &mut [TestSeq],
    dealer: &mut PageDealer,
    cases: &[TinyCase],
) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = cases
        .iter()
        .map(|c| {
            let n = c.prompt_ids.len();
            argmax_rows(&c.logits.narrow(0, n - 1, 1).unwrap())
        })
        .collect();
    while out[0].len() < 16 {
        let mut batch = ForwardBatch::default();
        for (seq, ids) in seqs.iter_mut().zip(&out) {
            batch.token_ids.push(*ids.last().unwrap());
            let page_size = kv.page_size();
            batch
                .sequences
                .push(seq.input(1, page_size, dealer, LogitsWanted::Last));
        }
        let next = argmax_rows(&model.forward(&batch, kv).unwrap());
        for (ids, id) in out.iter_mut().zip(next) {
            ids.push(id);
        }
    }
    out
}

/// 16-bit storage changes numbers but should keep logits close and the top token of
/// (nearly) every position. Tolerances are from observed runs with margin.
#[test]
fn bf16_weights_and_kv_stay_close_to_the_f32_reference() {
    for name in MODELS {
        for (weights, kv_dtype, tolerance) in [
            (DType::F32, DType::BF16, 0.04),
            (DType::BF16, DType::BF16, 0.15),
            (DType::F16, DType::F16, 0.03),
        ] {
            let model = tiny_model(name, weights);
            for (case_idx, case) in tiny_cases(name).iter().enumerate() {
                let logits = prompt_logits(&model, 32, kv_dtype, &case.prompt_ids);
                let err = max_abs_diff(&logits, &case.logits);
                let label = format!("{name} {weights:?} weights, {kv_dtype:?} kv, case {case_idx}");
                assert!(err < tolerance, "{label}: max error {err}");
                println!("{label}: max error {err}");
                let agree = argmax_rows(&logits)
                    .iter()
                    .zip(argmax_rows(&case.logits))
                    .filter(|(a, b)| **a == *b)
                    .count();
                let n = case.prompt_ids.len();
                assert!(agree * 10 >= n * 9, "{label}: top-1 agrees at {agree}/{n}");
            }
        }
    }
}
