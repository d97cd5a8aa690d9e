//! Arbor's engine: many generation requests at once over one model, sharing cached
//! prompt prefixes, each streaming its tokens. Also Arbor's library API.
//!
//! An [`Engine`] runs the model on its own thread. [`Engine::submit`] queues a
//! [`GenerateRequest`] and returns a [`RequestStream`] of [`Event`]s at once; the
//! engine thread loops over steps (schedule, build batch, forward, sample and update,
//! emit), mixing decode tokens of running sequences with prefill chunks of new ones,
//! matching prompts against a radix tree of cached prefixes, and evicting or preempting
//! when KV pages run out.
//!
//! ```no_run
//! use arbor_engine::{Engine, EngineConfig, Event, GenerateRequest, LoadOptions, SamplingParams};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let engine = Engine::load("models/SmolLM2-135M-Instruct.Q4_1.gguf", &LoadOptions::default(),
//!     EngineConfig::default())?;
//! let tokenizer = engine.tokenizer().expect("a GGUF file carries its tokenizer");
//! let prompt_ids = tokenizer.encode("The capital of France is", true)?;
//! let mut stream = engine.submit(GenerateRequest::new(prompt_ids, SamplingParams::greedy(16)))?;
//! while let Some(event) = stream.next().await {
//!     match event {
//!         Event::Token { text, .. } => print!("{text}"),
//!         Event::Finished { reason, usage, .. } => {
//!             println!("\n[{reason}, {} tokens]", usage.completion_tokens)
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Scheduling can be driven one step at a time through [`EngineCore`], over any
//! [`ModelRunner`] (see [`testing::FakeModel`]), for exact tests and benchmarks.

mod api;
mod batch;
mod candle_runner;
mod clock;
mod constrained;
mod core;
mod detokenizer;
mod device_plan;
mod engine;
mod footprint;
mod json_mode;
mod kv;
pub mod plan;
mod runner;
mod sampler;
mod scheduler;
mod sequence;
mod stats;
mod stop;
pub mod testing;
mod update;
mod worker;

pub use api::*;
pub use candle_runner::{CandleRunner, open_device};
pub use clock::{Clock, ManualClock, SystemClock};
pub use core::{EngineCore, StartOptions, StepReport};
pub use device_plan::plan_model;
pub use engine::{Engine, RequestStream};
pub use footprint::{ModelFootprint, device_memory, kv_cache_dtype};
pub use plan::{
    Gib, MemoryPlan, ModelShape, PlanError, PlanRequest, RUNTIME_RESERVE_BYTES, WeightFormat,
};
pub use runner::{
    ForwardBatch, Logits, LogitsWanted, ModelRunner, RunnerError, SequenceInput, TokenDecoder,
};

/// Pieces exposed for tests and benches that check them directly.
pub mod parts {
    pub use crate::detokenizer::Detokenizer;
    pub use crate::json_mode::{JsonMachine, JsonVocab};
    pub use crate::sampler::{PenaltyState, Sampled, argmax, rng_from_seed, sample};
    pub use crate::stop::{StopOutcome, StopStrings};
}
