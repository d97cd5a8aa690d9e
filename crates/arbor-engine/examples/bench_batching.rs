//! Model-level engine benchmarks on SmolLM2 (or any GGUF / model directory), through
//! the public library API. Prints figures; asserts nothing.
//!
//! 1. Batching: aggregate decode throughput of 1, 4, 8 and 16 concurrent sequences
//!    (distinct 16-token prompts, greedy, `ignore_eos`, 64 new tokens each), measured in
//!    one run, and the 16-vs-1 ratio. Decode throughput counts tokens after each
//!    sequence's first, over the time from the first sequence's first token to the last
//!    sequence's finish.
//! 2. Shared prefix: 4 groups x 8 prompts, each a 512-token system prompt of its group
//!    plus a 32-token question of its own, 32 greedy output tokens, 8 requests in flight
//!    at a time (submitted round-robin over the groups), with the radix cache on and
//!    off: wall time, prompt tokens computed (prefill), cache hit rate, and the ideal
//!    hit rate `1 - (g*S + g*p*Q) / (g*p*(S+Q))`.
//!
//! Run: `ARBOR_SMOLLM2_GGUF=.models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!   cargo run --release -p arbor-engine --example bench_batching [-- batching|prefix]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arbor_engine::{
    Engine, EngineConfig, Event, GenerateRequest, LoadOptions, SamplingParams, Usage,
};
use arbor_models::tokenizer::Tokenizer;
use tokio::sync::Semaphore;

const BATCH_SIZES: [usize; 4] = [1, 4, 8, 16];
const BATCH_PROMPT_TOKENS: usize = 16;
const BATCH_OUTPUT_TOKENS: usize = 64;

const GROUPS: usize = 4;
const PROMPTS_PER_GROUP: usize = 8;
const SYSTEM_TOKENS: usize = 512;
const QUESTION_TOKENS: usize = 32;
const PREFIX_OUTPUT_TOKENS: usize = 32;
const IN_FLIGHT: usize = 8;

fn main() -> anyhow::Result<()> {
    let model = std::env::var("ARBOR_SMOLLM2_GGUF")
        .context("set ARBOR_SMOLLM2_GGUF to the SmolLM2 GGUF file (./scripts/fetch-smollm2.sh)")?;
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    println!("model: {model}");
    if which == "all" || which == "batching" {
        runtime.block_on(batching(&model))?;
    }
    if which == "all" || which == "prefix" {
        runtime.block_on(shared_prefix(&model))?;
    }
    Ok(())
}

/// Part 1: decode throughput against the number of concurrent sequences.
async fn batching(model: &str) -> anyhow::Result<()> {
    let engine = Engine::load(model, &LoadOptions::default(), EngineConfig::default())?;
    let tokenizer = engine
        .tokenizer()
        .context("the model has a tokenizer")?
        .clone();
    let prompts: Vec<Vec<u32>> = (0..16)
        .map(|i| exact_tokens(&tokenizer, &story_text(i), BATCH_PROMPT_TOKENS))
        .collect::<anyhow::Result<_>>()?;

    // Warm-up: first-touch of the KV pages and the weights.
    run_decode(&engine, &prompts[..4]).await?;
    engine.flush_cache().await?;

    println!("\n## Batching: decode throughput ({BATCH_OUTPUT_TOKENS} new tokens per sequence)");
    println!("| sequences | decode tok/s | ms per step | wall s |");
    println!("|-----------|--------------|-------------|--------|");
    let mut single = None;
    let mut sixteen = None;
    for n in BATCH_SIZES {
        let start = Instant::now();
        let usages = run_decode(&engine, &prompts[..n]).await?;
        let wall = start.elapsed();
        engine.flush_cache().await?;
        let throughput = decode_throughput(&usages);
        let step_ms = 1e3 * n as f64 / throughput;
        println!(
            "| {n:>9} | {throughput:>12.1} | {step_ms:>11.1} | {:>6.2} |",
            wall.as_secs_f64()
        );
        match n {
            1 => single = Some(throughput),
            16 => sixteen = Some(throughput),
            _ => {}
        }
    }
    if let (Some(single), Some(sixteen)) = (single, sixteen) {
        println!("ratio 16 vs 1: {:.2}x (target >= 3x)", sixteen / single);
    }
    engine.shutdown();
    Ok(())
}

/// Submits every prompt at once (greedy, `ignore_eos`) and waits for all of them.
async fn run_decode(engine: &Engine, prompts: &[Vec<u32>]) -> anyhow::Result<Vec<Usage>> {
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(BATCH_OUTPUT_TOKENS)
    };
    let streams = prompts
        .iter()
        .map(|p| engine.submit(GenerateRequest::new(p.clone(), params.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut usages = Vec::new();
    for stream in streams {
        usages.push(finish_usage(stream).await?);
    }
    Ok(usages)
}

/// Decode tokens per second: tokens after each sequence's first, over the time from
/// the earliest first token to the latest finish (all requests were submitted together).
fn decode_throughput(usages: &[Usage]) -> f64 {
    let n_tokens: usize = usages.iter().map(|u| u.completion_tokens - 1).sum();
    let first = usages
        .iter()
        .filter_map(|u| u.time_to_first_token)
        .min()
        .unwrap_or_default();
    let last = usages.iter().map(|u| u.e2e_time).max().unwrap_or_default();
    n_tokens as f64 / (last - first).as_secs_f64()
}

/// Part 2: the shared-prefix workload with the radix cache on and off.
async fn shared_prefix(model: &str) -> anyhow::Result<()> {
    println!(
        "\n## Shared prefix: {GROUPS} groups x {PROMPTS_PER_GROUP} prompts, {SYSTEM_TOKENS}-token \
         system prompt, {QUESTION_TOKENS}-token questions, {PREFIX_OUTPUT_TOKENS} output tokens, \
         {IN_FLIGHT} in flight"
    );
    let (g, p, s, q) = (
        GROUPS as f64,
        PROMPTS_PER_GROUP as f64,
        SYSTEM_TOKENS as f64,
        QUESTION_TOKENS as f64,
    );
    let ideal = 1.0 - (g * s + g * p * q) / (g * p * (s + q));
    println!(
        "| radix cache | wall s | prompt tokens | prefill tokens | hit tokens | hit rate | ideal |"
    );
    println!(
        "|-------------|--------|---------------|----------------|------------|----------|-------|"
    );
    for disable_radix_cache in [false, true] {
        let config = EngineConfig {
            disable_radix_cache,
            ..EngineConfig::default()
        };
        let engine = Engine::load(model, &LoadOptions::default(), config)?;
        let tokenizer = engine
            .tokenizer()
            .context("the model has a tokenizer")?
            .clone();
        let prompts = prefix_prompts(&tokenizer)?;

        // Warm-up on unrelated prompts, then an empty cache and fresh counters.
        let warmup: Vec<Vec<u32>> = (0..4)
            .map(|i| exact_tokens(&tokenizer, &story_text(100 + i), BATCH_PROMPT_TOKENS))
            .collect::<anyhow::Result<_>>()?;
        run_decode(&engine, &warmup).await?;
        engine.flush_cache().await?;
        let before = engine.stats();

        let start = Instant::now();
        run_in_flight(&engine, prompts).await?;
        let wall = start.elapsed();
        let stats = engine.stats();
        let prompt_tokens = stats.prompt_tokens - before.prompt_tokens;
        let prefill = stats.prefill_tokens - before.prefill_tokens;
        let hits = stats.cache_hit_tokens - before.cache_hit_tokens;
        println!(
            "| {:<11} | {:>6.2} | {prompt_tokens:>13} | {prefill:>14} | {hits:>10} | {:>8.3} | {ideal:.3} |",
            if disable_radix_cache { "off" } else { "on" },
            wall.as_secs_f64(),
            hits as f64 / prompt_tokens as f64,
        );
        engine.shutdown();
    }
    Ok(())
}

/// The workload's prompts, round-robin over the groups.
fn prefix_prompts(tokenizer: &Tokenizer) -> anyhow::Result<Vec<Vec<u32>>> {
    let systems: Vec<Vec<u32>> = (0..GROUPS)
        .map(|g| exact_tokens(tokenizer, &system_text(g), SYSTEM_TOKENS))
        .collect::<anyhow::Result<_>>()?;
    let mut prompts = Vec::new();
    for i in 0..PROMPTS_PER_GROUP {
        for (g, system) in systems.iter().enumerate() {
            let question = exact_tokens(tokenizer, &question_text(g, i), QUESTION_TOKENS)?;
            prompts.push([system.clone(), question].concat());
        }
    }
    Ok(prompts)
}

/// Runs every prompt with at most `IN_FLIGHT` requests in flight.
async fn run_in_flight(engine: &Engine, prompts: Vec<Vec<u32>>) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::new();
    for prompt in prompts {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let params = SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(PREFIX_OUTPUT_TOKENS)
        };
        let stream = engine.submit(GenerateRequest::new(prompt, params))?;
        tasks.push(tokio::spawn(async move {
            let usage = finish_usage(stream).await;
            drop(permit);
            usage
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}

/// Drains a single-sequence stream and returns its usage.
async fn finish_usage(mut stream: arbor_engine::RequestStream) -> anyhow::Result<Usage> {
    let mut usage = None;
    while let Some(event) = stream.next().await {
        if let Event::Finished { usage: u, .. } = event {
            usage = Some(u);
        }
    }
    usage.context("the stream ended without a finish event")
}

/// The first `n_tokens` token ids of `text` (which must be long enough).
fn exact_tokens(tokenizer: &Tokenizer, text: &str, n_tokens: usize) -> anyhow::Result<Vec<u32>> {
    let ids = tokenizer.encode(text, false)?;
    if ids.len() < n_tokens {
        bail!("text of {} tokens is shorter than {n_tokens}", ids.len());
    }
    Ok(ids[..n_tokens].to_vec())
}

fn story_text(i: usize) -> String {
    let subjects = [
        "a lighthouse keeper",
        "a young fox",
        "an old clockmaker",
        "a tired robot",
    ];
    let places = [
        "by the sea",
        "in a quiet forest",
        "under the city",
        "on a distant moon",
    ];
    format!(
        "Story {i}: Once upon a time there was {} who lived {} and dreamed every night of \
         something new and strange.",
        subjects[i % subjects.len()],
        places[(i / subjects.len()) % places.len()]
    )
}

fn system_text(group: usize) -> String {
    let topics = ["astronomy", "cooking", "tax law", "gardening"];
    let topic = topics[group % topics.len()];
    let mut text = format!("You are assistant number {group}, an expert in {topic}. ");
    for rule in 1..200 {
        text.push_str(&format!(
            "Rule {rule} for {topic}: answer clearly, cite fact {} of {topic}, and never \
             repeat rule {}. ",
            rule * 7 + group,
            rule + group
        ));
    }
    text
}

fn question_text(group: usize, i: usize) -> String {
    format!(
        "Question {i} for group {group}: what happens when {} meets {} on day {} of the \
         season, and why would an expert in this field care about it at all today?",
        i * 13 + group,
        i * 29 + 3 * group,
        i + 11 * group
    )
}
