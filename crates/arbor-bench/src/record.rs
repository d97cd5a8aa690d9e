//! The record of one run: configuration, git revision and metrics, written as one
//! JSON line (`--output FILE.jsonl` appends). Metric keys are SGLang's bench_serving
//! keys, so the two tools' files can be read side by side by `arbor bench report`.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::BenchError;
use crate::client::Target;
use crate::config::{Api, Backend, BenchSpec, LoadSpec};
use crate::metrics::Metrics;
use crate::runner::RunOutput;
use crate::workload::WorkloadSpec;

/// One run, as written to the JSONL file. Workload, load and metric fields are
/// flattened into the top-level object.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRecord {
    /// Names the server in reports (`arbor`, `llama-cpp-python`, ...).
    pub label: String,
    pub note: Option<String>,
    /// Seconds since the Unix epoch when the run finished.
    pub timestamp: u64,
    /// `git describe --always --dirty` of the checkout (see [`git_revision`]).
    pub git_revision: Option<String>,
    pub arbor_bench_version: &'static str,
    pub backend: Backend,
    pub api: Api,
    pub base_url: String,
    pub model: String,
    pub tokenizer: Option<String>,
    /// Human-readable summary of the workload, e.g. `random in=128 out=64 ratio=1 ids`.
    pub workload: String,
    #[serde(flatten)]
    pub workload_spec: WorkloadSpec,
    #[serde(flatten)]
    pub load: LoadSpec,
    /// Requests measured (warmup excluded).
    pub num_requests: usize,
    pub flush_cache: bool,
    /// Whether the prefix cache was actually reset before the run.
    pub cache_reset: bool,
    pub disable_ignore_eos: bool,
    pub extra_request_body: Map<String, Value>,
    #[serde(flatten)]
    pub metrics: Metrics,
}

impl BenchRecord {
    /// The record of a finished run.
    pub fn new(spec: &BenchSpec, target: &Target, output: &RunOutput, metrics: Metrics) -> Self {
        BenchRecord {
            label: spec
                .label
                .clone()
                .unwrap_or_else(|| target.backend.to_string()),
            note: spec.note.clone(),
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            git_revision: git_revision(),
            arbor_bench_version: env!("CARGO_PKG_VERSION"),
            backend: target.backend,
            api: target.api,
            base_url: target.base_url.clone(),
            model: target.model.clone(),
            tokenizer: spec.tokenizer.clone(),
            workload: spec.workload.describe(),
            workload_spec: spec.workload.clone(),
            load: spec.load.clone(),
            num_requests: output.outcomes.len(),
            flush_cache: spec.flush_cache,
            cache_reset: output.cache_reset,
            disable_ignore_eos: spec.target.disable_ignore_eos,
            extra_request_body: spec.target.extra_request_body.clone(),
            metrics,
        }
    }

    /// Appends the record as one JSON line to `path`, creating the file if needed.
    pub fn append_to(&self, path: &Path) -> Result<(), BenchError> {
        let io_error = |source| BenchError::Io {
            path: path.display().to_string(),
            source,
        };
        let line = serde_json::to_string(self).expect("records serialise to JSON");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_error)?;
        writeln!(file, "{line}").map_err(io_error)
    }
}

/// `git describe --always --dirty` of the checkout the benchmark runs in: the current
/// directory, else the directory of the running executable (a `target/` inside an
/// Arbor checkout). `None` outside a checkout, without commits, or without git.
pub fn git_revision() -> Option<String> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    std::iter::once(std::env::current_dir().ok())
        .chain(std::iter::once(exe_dir))
        .flatten()
        .find_map(|dir| describe(&dir))
}

fn describe(dir: &Path) -> Option<String> {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["describe", "--always", "--dirty"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let revision = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (!revision.is_empty()).then_some(revision)
}
