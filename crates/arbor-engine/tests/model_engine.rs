//! The engine over real models: the tiny random checkpoints of `tests/fixtures` in f32,
//! and SmolLM2-135M-Instruct when `ARBOR_SMOLLM2_GGUF` names its GGUF. Greedy outputs
//! must not depend on what else runs: prompts run together equal each run alone, with
//! the radix cache on or off, and when a KV pool too small for all of them forces
//! preemption. After everything ends, every page is free or evictable.
//!
//! Prompts with a fixture reference are also checked against `transformers`' greedy ids.

mod common;
#[path = "../../../tests/support/fixtures.rs"]
mod fixtures;

use std::path::{Path, PathBuf};

use arbor_engine::{
    CandleRunner, Engine, EngineConfig, EngineCore, EngineStats, Event, FinishReason,
    GenerateRequest, KvBudget, LoadOptions, ModelDType, SamplingParams, StartOptions,
};
use arbor_models::Model;
use candle_core::{DType, Device};
use common::{assert_no_leak, collect_one, run_to_end, submit};
use fixtures::{fixture, smollm2, smollm2_cases, tiny_cases};

const TINY_MODELS: [&str; 3] = ["tiny-llama3", "tiny-qwen2", "tiny-qwen2-tied"];
const TINY_MAX_TOKENS: usize = 16;
const PAGE_SIZE: usize = 4;

#[test]
fn tiny_models_give_the_same_greedy_output_together_as_alone() {
    for model in TINY_MODELS {
        let (prompts, references) = tiny_prompts(model);
        let alone = run_each_alone(&fixture(model), &prompts, TINY_MAX_TOKENS);
        for (index, reference) in references.iter().enumerate() {
            assert_eq!(
                &alone[index], reference,
                "{model}: prompt {index} against transformers"
            );
        }
        let engine = load(
            &fixture(model),
            ModelDType::F32,
            config(false, KvBudget::Bytes(64 << 20)),
        );
        let together = run_together(&engine, &prompts, TINY_MAX_TOKENS);
        assert_eq!(together, alone, "{model}");
        assert_all_pages_released(&engine);
    }
}

#[test]
fn tiny_models_give_the_same_output_with_the_radix_cache_on_and_off() {
    for model in TINY_MODELS {
        let (prompts, _) = tiny_prompts(model);
        let off = load(
            &fixture(model),
            ModelDType::F32,
            config(true, KvBudget::Bytes(64 << 20)),
        );
        let without_cache = run_together(&off, &prompts, TINY_MAX_TOKENS);
        assert_eq!(off.stats().cache_hit_tokens, 0, "{model}");

        // A second round of the same prompts is served from the cache the first filled.
        let on = load(
            &fixture(model),
            ModelDType::F32,
            config(false, KvBudget::Bytes(64 << 20)),
        );
        let first = run_together(&on, &prompts, TINY_MAX_TOKENS);
        let second = run_together(&on, &prompts, TINY_MAX_TOKENS);
        assert_eq!(first, without_cache, "{model}");
        assert_eq!(second, without_cache, "{model}");
        let stats = final_stats(&on);
        assert!(stats.cache_hit_tokens > 0, "{model}: {stats:?}");
        assert_pages_free_or_evictable(&stats);
    }
}

#[test]
fn tiny_models_give_the_same_output_when_a_small_pool_forces_preemption() {
    for model in TINY_MODELS {
        let (prompts, _) = tiny_prompts(model);
        let alone = run_each_alone(&fixture(model), &prompts, TINY_MAX_TOKENS);
        let n_pages = tight_pool(&prompts, TINY_MAX_TOKENS);
        let engine = load(
            &fixture(model),
            ModelDType::F32,
            config(false, KvBudget::Pages(n_pages)),
        );
        let together = run_together(&engine, &prompts, TINY_MAX_TOKENS);
        assert_eq!(together, alone, "{model}");
        let stats = final_stats(&engine);
        assert!(
            stats.preemptions > 0,
            "{model}: no preemption with {n_pages} pages: {stats:?}"
        );
        assert_pages_free_or_evictable(&stats);
    }
}

#[test]
fn preemption_over_a_real_model_keeps_every_invariant_after_every_step() {
    let model = "tiny-llama3";
    let (prompts, _) = tiny_prompts(model);
    let alone = run_each_alone(&fixture(model), &prompts, TINY_MAX_TOKENS);
    let weights = Model::load_safetensors_dir(&fixture(model), DType::F32, &Device::Cpu).unwrap();
    let runner = CandleRunner::new(weights, model.into(), vec![], None);
    let config = config(
        false,
        KvBudget::Pages(tight_pool(&prompts, TINY_MAX_TOKENS)),
    );
    let mut core = EngineCore::new(Box::new(runner), config, StartOptions::default()).unwrap();

    let mut receivers: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| submit(&mut core, i as u64, p, greedy(TINY_MAX_TOKENS)))
        .collect();
    run_to_end(&mut core, 10_000);
    for (index, rx) in receivers.iter_mut().enumerate() {
        let out = collect_one(rx);
        assert_eq!(out.reason, Some(FinishReason::Length));
        assert_eq!(out.token_ids, alone[index], "prompt {index}");
    }
    assert!(core.stats().preemptions > 0, "{:?}", core.stats());
    assert_no_leak(&core);
}

#[test]
fn smollm2_dequantized_matches_the_reference_together_cached_and_preempted() {
    let Some(gguf) = smollm2() else { return };
    let cases = smollm2_cases();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|(p, _)| p.clone()).collect();
    let references: Vec<Vec<u32>> = cases.iter().map(|(_, g)| g.clone()).collect();
    let max_tokens = 32;

    let engine = load(
        &gguf,
        ModelDType::F32,
        config(false, KvBudget::Bytes(256 << 20)),
    );
    let together = run_together(&engine, &prompts, max_tokens);
    assert_eq!(together, references, "first round, radix cache on");
    let again = run_together(&engine, &prompts, max_tokens);
    assert_eq!(again, references, "second round, from the radix cache");
    let stats = final_stats(&engine);
    assert!(stats.cache_hit_tokens > 0, "{stats:?}");
    assert_pages_free_or_evictable(&stats);

    let n_pages = tight_pool(&prompts, max_tokens);
    let engine = load(
        &gguf,
        ModelDType::F32,
        config(true, KvBudget::Pages(n_pages)),
    );
    assert_eq!(
        run_together(&engine, &prompts, max_tokens),
        references,
        "no cache, small pool"
    );
    let stats = final_stats(&engine);
    assert!(stats.preemptions > 0, "{stats:?}");
    assert_pages_free_or_evictable(&stats);
}

#[test]
fn smollm2_quantized_gives_the_same_output_together_as_alone() {
    let Some(gguf) = smollm2() else { return };
    let prompts: Vec<Vec<u32>> = smollm2_cases().into_iter().map(|(p, _)| p).collect();
    let max_tokens = 24;
    let engine = load(
        &gguf,
        ModelDType::Auto,
        config(true, KvBudget::Bytes(256 << 20)),
    );
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| run_together(&engine, std::slice::from_ref(p), max_tokens).remove(0))
        .collect();
    let together = run_together(&engine, &prompts, max_tokens);
    assert_eq!(together, alone);
    assert_all_pages_released(&engine);
}

/// `--kv-cache-dtype bf16` over f32 activations: half the bytes per token, so twice the
/// tokens in one budget, and batching still changes no output.
#[test]
fn a_bf16_kv_cache_holds_twice_the_tokens_and_keeps_outputs_batch_invariant() {
    let mut models: Vec<(PathBuf, usize)> = vec![(fixture("tiny-llama3"), TINY_MAX_TOKENS)];
    models.extend(smollm2().map(|gguf| (gguf, 24)));
    for (model, max_tokens) in models {
        let budget = config(true, KvBudget::Bytes(64 << 20));
        let f32_kv = load_with_kv(&model, ModelDType::F32, budget.clone());
        let bf16_kv = load_with_kv(&model, ModelDType::Bf16, budget);
        let (f32_tokens, bf16_tokens) = (
            f32_kv.stats().kv_capacity_tokens,
            bf16_kv.stats().kv_capacity_tokens,
        );
        assert!(
            bf16_tokens >= 2 * f32_tokens && bf16_tokens <= 2 * f32_tokens + PAGE_SIZE,
            "{}: {bf16_tokens} bf16 vs {f32_tokens} f32 tokens",
            model.display()
        );
        let prompts: Vec<Vec<u32>> = match model.extension() {
            Some(ext) if ext == "gguf" => smollm2_cases().into_iter().map(|(p, _)| p).collect(),
            _ => tiny_prompts("tiny-llama3").0,
        };
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| run_together(&bf16_kv, std::slice::from_ref(p), max_tokens).remove(0))
            .collect();
        let together = run_together(&bf16_kv, &prompts, max_tokens);
        assert_eq!(together, alone, "{}", model.display());
        assert_all_pages_released(&bf16_kv);
    }
}

/// An engine configuration with pages of `PAGE_SIZE` tokens.
fn config(disable_radix_cache: bool, kv_cache: KvBudget) -> EngineConfig {
    EngineConfig {
        page_size: PAGE_SIZE,
        kv_cache,
        disable_radix_cache,
        // Small chunks so that long prompts prefill over several steps, mixed with decodes.
        chunked_prefill_size: 64,
        ..EngineConfig::default()
    }
}

fn load(model: &Path, dtype: ModelDType, config: EngineConfig) -> Engine {
    let options = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    Engine::load(model.to_str().unwrap(), &options, config).expect("model loads")
}

/// Weights as the checkpoint stores them, the KV cache in `kv_cache_dtype`.
fn load_with_kv(model: &Path, kv_cache_dtype: ModelDType, config: EngineConfig) -> Engine {
    let options = LoadOptions {
        kv_cache_dtype,
        ..LoadOptions::default()
    };
    Engine::load(model.to_str().unwrap(), &options, config).expect("model loads")
}

/// Greedy decoding that stops at the model's end-of-sequence ids, as the references do
/// (the tiny models' references contain none).
fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams::greedy(max_tokens)
}

/// Each prompt alone, one after another, on a fresh engine without the radix cache.
fn run_each_alone(model: &Path, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    let engine = load(
        model,
        ModelDType::F32,
        config(true, KvBudget::Bytes(64 << 20)),
    );
    prompts
        .iter()
        .map(|p| run_together(&engine, std::slice::from_ref(p), max_tokens).remove(0))
        .collect()
}

/// Submits every prompt before reading any output; returns the output ids in order.
fn run_together(engine: &Engine, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| {
            engine
                .submit(GenerateRequest::new(p.clone(), greedy(max_tokens)))
                .unwrap()
        })
        .collect();
    streams
        .into_iter()
        .map(|mut stream| {
            let mut ids = Vec::new();
            while let Some(event) = stream.blocking_next() {
                match event {
                    Event::Token { token_ids, .. } => ids.extend(token_ids),
                    Event::Finished { reason, .. } => assert_ne!(reason, FinishReason::Abort),
                }
            }
            ids
        })
        .collect()
}

/// Fewer pages than all prompts need together, but enough for the largest alone.
fn tight_pool(prompts: &[Vec<u32>], max_tokens: usize) -> usize {
    let n_pages = |p: &Vec<u32>| (p.len() + max_tokens).div_ceil(PAGE_SIZE);
    let largest = prompts.iter().map(n_pages).max().unwrap();
    let total: usize = prompts.iter().map(n_pages).sum();
    let n_pages = largest + 2;
    assert!(
        n_pages < total,
        "the prompts fit together in {n_pages} pages"
    );
    n_pages
}

/// Stops the engine (joining its thread, which publishes its last statistics) and
/// returns them.
fn final_stats(engine: &Engine) -> EngineStats {
    engine.shutdown();
    engine.stats()
}

fn assert_all_pages_released(engine: &Engine) {
    assert_pages_free_or_evictable(&final_stats(engine));
}

fn assert_pages_free_or_evictable(stats: &EngineStats) {
    assert_eq!(stats.n_running + stats.n_waiting, 0, "{stats:?}");
    assert_eq!(stats.n_pages_locked, 0, "{stats:?}");
    assert_eq!(
        stats.n_pages_free + stats.n_pages_evictable,
        stats.n_pages_total,
        "{stats:?}"
    );
}

/// The fixture's prompts (with their greedy references), then prompts built to share
/// prefixes with them: a case extended by its first three output tokens (a prefix hit
/// ending mid-page), and a repeat of the longest case.
fn tiny_prompts(model: &str) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let cases = tiny_cases(model);
    let mut prompts: Vec<Vec<u32>> = cases.iter().map(|(p, _)| p.clone()).collect();
    let references: Vec<Vec<u32>> = cases.iter().map(|(_, g)| g.clone()).collect();
    let (last_prompt, last_greedy) = cases.last().unwrap();
    prompts.push([last_prompt.clone(), last_greedy[..3].to_vec()].concat());
    let longest = prompts.iter().max_by_key(|p| p.len()).unwrap().clone();
    prompts.push(longest);
    (prompts, references)
}
