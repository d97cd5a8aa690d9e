//! `arbor-bench`: a serving benchmark for any OpenAI-compatible server (Arbor, SGLang,
//! vLLM, llama.cpp's server, llama-cpp-python).
//!
//! A run goes top-down through the modules:
//!
//! ```text
//! workload   build the requests (random, sharegpt, generated-shared-prefix, multi-turn),
//!            prompt lengths counted with the model's tokenizer (`tokenizer`)
//! runner     warm up, reset the server's prefix cache, send the requests under a
//!            Poisson request rate and a concurrency cap, with a progress bar
//! client     one streaming HTTP request: body per backend/API, SSE parsing (`sse`),
//!            timestamps of every streamed chunk
//! metrics    throughput, TTFT, TPOT, ITL and end-to-end latency, defined as in
//!            SGLang's bench_serving
//! record     one JSON line per run (configuration, git revision, metrics)
//! report     tables that compare runs side by side; `plot` draws them
//! ```
//!
//! [`run_benchmark`] ties the steps together; the `arbor bench` subcommand is a thin
//! command line over it.

pub mod client;
pub mod config;
pub mod metrics;
pub mod plot;
pub mod record;
pub mod report;
pub mod runner;
mod sse;
pub mod tokenizer;
pub mod workload;

use std::sync::Arc;

pub use client::Target;
pub use config::{Api, Backend, BenchSpec, LoadSpec, TargetSpec};
pub use metrics::{Metrics, RequestOutcome};
pub use record::BenchRecord;
pub use tokenizer::{CharTokenizer, TokenCounter};
pub use workload::{Workload, WorkloadSpec};

/// Everything that can go wrong in a benchmark run, its workload or its report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid benchmark setting: {0}")]
    InvalidSpec(String),
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    #[error("cannot read dataset {path}")]
    DatasetIo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dataset {path} is not valid ShareGPT JSON: {reason}")]
    DatasetFormat { path: String, reason: String },
    #[error("http request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("server at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("server sent an unreadable response: {0}")]
    InvalidResponse(String),
    #[error("all {n_requests} warmup requests failed; first error: {first_error}")]
    WarmupFailed {
        n_requests: usize,
        first_error: String,
    },
    #[error("every request failed; first error: {0}")]
    AllFailed(String),
    #[error("cannot read or write {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line_no} is not valid JSON: {reason}")]
    RecordFormat {
        path: String,
        line_no: usize,
        reason: String,
    },
    #[error("cannot draw the plot: {0}")]
    Plot(String),
}

/// Runs one benchmark end to end: resolves the served model name, builds the
/// workload, warms up, resets the prefix cache, sends every request and computes the
/// metrics. Returns the record that `--output` appends as one JSON line.
///
/// Fails when the server cannot be reached, every warmup request fails, or every
/// measured request fails; individual failed requests are counted, not fatal.
pub async fn run_benchmark(
    spec: &BenchSpec,
    tokenizer: Arc<dyn TokenCounter>,
) -> Result<BenchRecord, BenchError> {
    let target = Target::connect(&spec.target).await?;

    let workload = workload::build(&spec.workload, tokenizer.as_ref(), spec.load.seed)?;
    tracing::info!(
        n_requests = workload.n_requests(),
        workload = %spec.workload.describe(),
        "workload built"
    );

    let output = runner::run(&target, &workload, spec, tokenizer).await?;
    let metrics = Metrics::compute(&output.outcomes, output.duration_s);
    if metrics.completed == 0 {
        let first_error = output
            .outcomes
            .iter()
            .find_map(|o| o.error.clone())
            .unwrap_or_else(|| "no request was sent".to_string());
        return Err(BenchError::AllFailed(first_error));
    }
    if metrics.short_outputs > 0 {
        tracing::warn!(
            n_requests = metrics.short_outputs,
            "requests ended before their forced output length: the server ignores \
             ignore_eos/min_tokens or cuts streams short (llama-cpp-python does unless \
             started with --interrupt_requests False); output figures are not for the \
             asked lengths"
        );
    }

    Ok(BenchRecord::new(spec, &target, &output, metrics))
}
