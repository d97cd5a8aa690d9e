//! Arbor as a library: load a model, submit one prompt, print its tokens as they come.
//!
//! ```sh
//! cargo run -p arbor-engine --example generate -- .models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     "The capital of France is" 32
//! ```
//!
//! The model is a `.gguf` file or a Hugging Face model directory with a tokenizer.

use std::io::Write;

use anyhow::Context;
use arbor_engine::{
    Engine, EngineConfig, Event, GenerateRequest, KvBudget, LoadOptions, SamplingParams,
};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .context("usage: generate MODEL [PROMPT] [MAX_TOKENS]")?;
    let prompt = args
        .next()
        .unwrap_or_else(|| "The capital of France is".to_string());
    let max_tokens: usize = match args.next() {
        Some(n) => n.parse().context("MAX_TOKENS must be a number")?,
        None => 32,
    };

    // One prompt needs little KV memory; the default budget is 1 GiB.
    let config = EngineConfig {
        kv_cache: KvBudget::Bytes(256 << 20),
        ..EngineConfig::default()
    };
    let engine = Engine::load(&model, &LoadOptions::default(), config)?;
    let tokenizer = engine.tokenizer().context("this model has no tokenizer")?;
    let prompt_ids = tokenizer.encode(&prompt, true)?;

    let request = GenerateRequest::new(prompt_ids, SamplingParams::greedy(max_tokens));
    let mut stream = engine.submit(request)?;
    print!("{prompt}");
    // `blocking_next` suits a plain thread; inside an async runtime use `next().await`.
    while let Some(event) = stream.blocking_next() {
        match event {
            Event::Token { text, .. } => {
                print!("{text}");
                std::io::stdout().flush()?;
            }
            Event::Finished { reason, usage, .. } => {
                let secs = usage.e2e_time.as_secs_f64();
                println!(
                    "\n[{reason}: {} prompt tokens, {} output tokens in {secs:.2} s]",
                    usage.prompt_tokens, usage.completion_tokens
                );
            }
        }
    }
    engine.shutdown();
    Ok(())
}
