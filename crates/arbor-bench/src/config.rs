//! What a benchmark run is: the server it targets (backend, API, model), the workload,
//! and the load (request rate, concurrency cap, warmup, seed). These types are plain
//! data, filled by the `arbor bench` command line or by tests, and recorded in the
//! JSON line of the run.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::workload::WorkloadSpec;

/// Which server family is on the other end. It decides the small differences that
/// the OpenAI API leaves open: how to force the output length and how to reset the
/// prefix cache before a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Arbor's own server: `ignore_eos`, `POST /flush_cache`, as SGLang.
    Arbor,
    /// SGLang: `ignore_eos`, `POST /flush_cache`; its native API is `/generate`.
    Sglang,
    /// vLLM: `ignore_eos`, `POST /reset_prefix_cache` (served only in vLLM's dev mode).
    Vllm,
    /// Any other OpenAI-compatible server (llama.cpp, llama-cpp-python): both
    /// `ignore_eos` and `min_tokens`, and no way to reset a prefix cache.
    Openai,
}

/// How a request asks the server to generate exactly `max_tokens` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputLenFix {
    /// `"ignore_eos": true` (SGLang, vLLM, Arbor).
    IgnoreEos,
    /// `"min_tokens": max_tokens` (vLLM, llama-cpp-python, several others).
    MinTokens,
    /// Both, for servers of unknown family: llama.cpp's server reads `ignore_eos`,
    /// llama-cpp-python reads `min_tokens`, and both ignore the field they lack.
    Both,
}

impl Backend {
    /// The API a run uses unless `--api` says otherwise.
    pub fn default_api(self) -> Api {
        match self {
            Backend::Sglang => Api::Generate,
            Backend::Arbor | Backend::Vllm | Backend::Openai => Api::Completions,
        }
    }

    /// The path that empties the server's prefix cache, if the backend has one.
    pub fn cache_reset_path(self) -> Option<&'static str> {
        match self {
            Backend::Arbor | Backend::Sglang => Some("/flush_cache"),
            Backend::Vllm => Some("/reset_prefix_cache"),
            Backend::Openai => None,
        }
    }

    /// How this backend is told to ignore end-of-sequence tokens.
    pub fn output_len_fix(self) -> OutputLenFix {
        match self {
            Backend::Arbor | Backend::Sglang | Backend::Vllm => OutputLenFix::IgnoreEos,
            Backend::Openai => OutputLenFix::Both,
        }
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "arbor" => Ok(Backend::Arbor),
            "sglang" => Ok(Backend::Sglang),
            "vllm" => Ok(Backend::Vllm),
            "openai" => Ok(Backend::Openai),
            _ => Err(format!(
                "unknown backend {s:?}; expected arbor, sglang, vllm or openai"
            )),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Backend::Arbor => "arbor",
            Backend::Sglang => "sglang",
            Backend::Vllm => "vllm",
            Backend::Openai => "openai",
        };
        f.write_str(name)
    }
}

/// Which HTTP API the requests use; every one of them streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `POST /v1/completions` with a text or token-id prompt.
    Completions,
    /// `POST /v1/chat/completions`; the server applies its chat template.
    Chat,
    /// SGLang's native `POST /generate`.
    Generate,
}

impl Api {
    /// The request path, relative to the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Api::Completions => "/v1/completions",
            Api::Chat => "/v1/chat/completions",
            Api::Generate => "/generate",
        }
    }
}

impl FromStr for Api {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "completions" => Ok(Api::Completions),
            "chat" => Ok(Api::Chat),
            "generate" => Ok(Api::Generate),
            _ => Err(format!(
                "unknown api {s:?}; expected completions, chat or generate"
            )),
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Api::Completions => "completions",
            Api::Chat => "chat",
            Api::Generate => "generate",
        };
        f.write_str(name)
    }
}

/// The server under test and how to talk to it.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// Base URL such as `http://127.0.0.1:30000`; a trailing `/` or `/v1` is dropped.
    pub base_url: String,
    pub backend: Backend,
    /// `None` takes [`Backend::default_api`].
    pub api: Option<Api>,
    /// Model name sent in requests; `None` asks `GET /v1/models` for the first id.
    pub model: Option<String>,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
    /// Let the server stop at end-of-sequence instead of forcing the output length.
    pub disable_ignore_eos: bool,
    /// JSON object merged into every request body (sampling parameters and the like).
    pub extra_request_body: serde_json::Map<String, serde_json::Value>,
    /// Limit for one request, from sending to the end of its stream.
    pub request_timeout: Duration,
}

impl TargetSpec {
    /// A target with the backend's defaults: default API, model from `/v1/models`,
    /// fixed output lengths, a one-hour request timeout.
    pub fn new(base_url: impl Into<String>, backend: Backend) -> Self {
        TargetSpec {
            base_url: base_url.into(),
            backend,
            api: None,
            model: None,
            api_key: None,
            disable_ignore_eos: false,
            extra_request_body: serde_json::Map::new(),
            request_timeout: Duration::from_secs(3600),
        }
    }

    /// The API in effect.
    pub fn api(&self) -> Api {
        self.api.unwrap_or_else(|| self.backend.default_api())
    }
}

/// How requests are offered to the server.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSpec {
    /// Requests per second, arrivals drawn from a Poisson process;
    /// `f64::INFINITY` sends every request at once.
    #[serde(serialize_with = "serialize_rate")]
    pub request_rate: f64,
    /// At most this many requests in flight; `None` leaves it to the request rate.
    pub max_concurrency: Option<usize>,
    /// Requests sent before the measured run and not counted (output <= 32 tokens).
    pub warmup_requests: usize,
    /// Seeds the workload generator and the arrival times.
    pub seed: u64,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            request_rate: f64::INFINITY,
            max_concurrency: None,
            warmup_requests: 1,
            seed: 1,
        }
    }
}

/// JSON has no infinity: an unlimited rate is written as the string `"inf"`.
fn serialize_rate<S: serde::Serializer>(rate: &f64, s: S) -> Result<S::Ok, S::Error> {
    if rate.is_finite() {
        s.serialize_f64(*rate)
    } else {
        s.serialize_str("inf")
    }
}

/// One benchmark run, complete.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// Names the server in reports, e.g. `arbor` or `llama-cpp-python`; defaults to
    /// the backend name.
    pub label: Option<String>,
    /// Free-form note recorded with the run (hardware, server flags).
    pub note: Option<String>,
    pub target: TargetSpec,
    pub workload: WorkloadSpec,
    pub load: LoadSpec,
    /// Reset the server's prefix cache after warmup, when the backend can.
    pub flush_cache: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Recorded only: where the tokenizer came from.
    pub tokenizer: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_pick_their_api_and_cache_reset() {
        let sglang: Backend = "sglang".parse().unwrap();
        assert_eq!(sglang.default_api(), Api::Generate);
        assert_eq!(sglang.cache_reset_path(), Some("/flush_cache"));
        let vllm: Backend = "vllm".parse().unwrap();
        assert_eq!(vllm.cache_reset_path(), Some("/reset_prefix_cache"));
        assert_eq!(Backend::Openai.output_len_fix(), OutputLenFix::Both);
        assert!("tgi".parse::<Backend>().is_err());
        assert_eq!(
            "chat".parse::<Api>().unwrap().path(),
            "/v1/chat/completions"
        );
    }

    #[test]
    fn infinite_rate_is_recorded_as_a_string() {
        let json = serde_json::to_value(LoadSpec::default()).unwrap();
        assert_eq!(json["request_rate"], "inf");
        let finite = LoadSpec {
            request_rate: 2.5,
            ..LoadSpec::default()
        };
        assert_eq!(serde_json::to_value(finite).unwrap()["request_rate"], 2.5);
    }
}
