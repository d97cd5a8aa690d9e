//! The engine's public vocabulary: requests and their sampling parameters, the events a
//! request streams back, the configuration an engine starts with, its statistics, and
//! the one error type that crosses the engine's boundary. Everything here is plain data;
//! the behaviour lives in `engine.rs` (the handle) and `worker.rs` (the engine thread).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Identifies one request (one `submit` call) for its whole life. Unique per engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How the next token of a sequence is chosen, and when the sequence stops.
///
/// The defaults sample from the full distribution at temperature 1 with no penalties,
/// no stop strings and 16 new tokens at most.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits before the softmax; `0.0` means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability sums to at
    /// least `top_p`. In `(0, 1]`; `1.0` keeps everything.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; `0` turns it off.
    pub top_k: usize,
    /// Drop tokens whose probability is below `min_p` times the top token's. In
    /// `[0, 1]`; `0.0` turns it off.
    pub min_p: f32,
    /// Divides positive logits (multiplies negative ones) of tokens already in the
    /// prompt or output, as Hugging Face does. `1.0` turns it off; must be `> 0`.
    pub repetition_penalty: f32,
    /// Subtracts `frequency_penalty * count` from the logit of each token already in
    /// the output, as OpenAI does. In `[-2, 2]`.
    pub frequency_penalty: f32,
    /// Subtracts `presence_penalty` from the logit of each token already in the
    /// output. In `[-2, 2]`.
    pub presence_penalty: f32,
    /// Token id and bias added to its logit before any other processing.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seeds the sequence's random generator: the same seed and prompt give the same
    /// output. `None` draws a seed from the engine's generator.
    pub seed: Option<u64>,
    /// Most new tokens per sequence; reaching it finishes with `FinishReason::Length`.
    pub max_tokens: usize,
    /// Stop tokens and stop strings are ignored until this many tokens are generated.
    pub min_tokens: usize,
    /// Extra token ids that end a sequence. The model's end-of-sequence ids are added
    /// unless `ignore_eos` is set. The stop token is not part of the output text.
    pub stop_token_ids: Vec<u32>,
    /// Strings that end a sequence. Text that could still become one is held back, so a
    /// stop string is never streamed, and it is excluded from the output text.
    pub stop_strings: Vec<String>,
    /// Keep generating past the model's end-of-sequence tokens.
    pub ignore_eos: bool,
    /// `None`: no logprobs. `Some(k)`: the chosen token's logprob plus the `k` most
    /// likely alternatives (`k <= 20`).
    pub logprobs: Option<usize>,
    /// Leave special tokens (such as `<|im_end|>`) out of the output text.
    pub skip_special_tokens: bool,
    /// Restrict the output to a format; `None` leaves it free.
    pub constraint: Option<OutputConstraint>,
    /// The constraint starts only once the output has written this text, so a
    /// reasoning model thinks freely up to `</think>` first; `None`: from the start.
    pub constraint_after: Option<String>,
}

/// A format the output must follow, enforced token by token (constrained decoding).
/// Tokens that cannot continue it are masked, and the sequence ends with `stop` as soon
/// as it is complete. Needs a model with a tokenizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputConstraint {
    /// One JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// One of `prefixes`, one JSON object, then `suffix`: a forced tool call, the
    /// object being its arguments inside the tool-call format's markers, one prefix per
    /// function it may call.
    JsonObjectWithin {
        /// Texts one of which is written first, exactly.
        prefixes: Vec<String>,
        /// Text written after the object, exactly.
        suffix: String,
    },
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            max_tokens: 16,
            min_tokens: 0,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            skip_special_tokens: true,
            constraint: None,
            constraint_after: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens` new tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    /// Checks every field's range; the message names the field and its range.
    pub fn validate(&self) -> Result<(), EngineError> {
        let invalid = |msg: &str| Err(EngineError::InvalidParams(msg.to_string()));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return invalid("temperature must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid("top_p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return invalid("min_p must be in [0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return invalid("repetition_penalty must be a finite number > 0");
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return invalid("frequency_penalty must be in [-2, 2]");
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return invalid("presence_penalty must be in [-2, 2]");
        }
        if self.logit_bias.iter().any(|(_, b)| !b.is_finite()) {
            return invalid("logit_bias values must be finite numbers");
        }
        if self.max_tokens == 0 {
            return invalid("max_tokens must be at least 1");
        }
        if self.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return invalid("top_logprobs must be at most 20");
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return invalid("stop strings must not be empty");
        }
        Ok(())
    }
}

/// Most alternatives `SamplingParams::logprobs` may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One request: a tokenized prompt and how to continue it.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateRequest {
    /// The prompt, already tokenized (chat template applied by the caller).
    pub prompt_ids: Vec<u32>,
    /// Sampling and stopping, shared by all `n` sequences.
    pub params: SamplingParams,
    /// Number of sequences generated from the prompt; they share the prompt's pages.
    /// At least 1. With a fixed seed, sequence `i` uses seed `seed + i`.
    pub n: usize,
}

impl GenerateRequest {
    /// One sequence continuing `prompt_ids` under `params`.
    pub fn new(prompt_ids: Vec<u32>, params: SamplingParams) -> Self {
        Self {
            prompt_ids,
            params,
            n: 1,
        }
    }
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token (end of sequence included) or stop string was generated.
    Stop,
    /// `max_tokens` was reached, or the model's context is full.
    Length,
    /// The request was aborted, its stream dropped, or the engine shut down.
    Abort,
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        })
    }
}

/// The log-probability of one generated token, and of its most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The generated token.
    pub token_id: u32,
    /// Its raw text (special tokens included, possibly a partial UTF-8 character shown
    /// with replacement characters).
    pub token: String,
    /// Natural-log probability under the model's distribution (temperature 1, before
    /// penalties and filters other than `logit_bias`).
    pub logprob: f32,
    /// The most likely tokens at this position as (id, raw text, logprob), most likely
    /// first; as many as `SamplingParams::logprobs` asked for.
    pub top: Vec<(u32, String, f32)>,
}

/// Token counts and timings of one sequence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the radix cache (not computed), counted at the
    /// sequence's first admission.
    pub cached_prompt_tokens: usize,
    /// Tokens generated (a final stop token included).
    pub completion_tokens: usize,
    /// From submit to first admission.
    pub queue_time: Duration,
    /// From submit to the first generated token; `None` if none was generated.
    pub time_to_first_token: Option<Duration>,
    /// From submit to finish.
    pub e2e_time: Duration,
}

impl Usage {
    /// Mean time per output token after the first, if there were at least two.
    pub fn time_per_output_token(&self) -> Option<Duration> {
        let ttft = self.time_to_first_token?;
        let n_after_first = self.completion_tokens.checked_sub(1).filter(|&n| n > 0)?;
        Some(self.e2e_time.saturating_sub(ttft) / n_after_first as u32)
    }
}

/// What ended a sequence with `FinishReason::Stop`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopMatch {
    /// A stop token id (end of sequence or one of `stop_token_ids`).
    TokenId(u32),
    /// One of `stop_strings`.
    Text(String),
}

/// One item of a request's event stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// New output of sequence `index` (`0..n`). `text` is the newly decodable text: it
    /// may be empty while a UTF-8 character is incomplete or while text that could
    /// become a stop string is held back.
    Token {
        /// Which of the request's sequences this belongs to.
        index: usize,
        /// The new token ids (usually one).
        token_ids: Vec<u32>,
        /// Newly released text.
        text: String,
        /// One entry per token id when logprobs were asked for, else empty.
        logprobs: Vec<TokenLogprob>,
    },
    /// Sequence `index` ended; nothing more comes for it. Any text still held back is
    /// released in a `Token` event before this one.
    Finished {
        /// Which of the request's sequences ended.
        index: usize,
        /// Why it ended.
        reason: FinishReason,
        /// The stop string or token id that ended it, if any.
        matched_stop: Option<StopMatch>,
        /// Its token counts and timings.
        usage: Usage,
    },
}

/// Everything that can go wrong at the engine's boundary. Messages are lowercase and
/// safe to show to clients.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The prompt has no tokens.
    #[error("prompt is empty")]
    EmptyPrompt,
    /// Prompt plus `max_tokens` exceed the context the engine allows.
    #[error("prompt has {n_tokens} tokens (with max_tokens), the limit is {limit}")]
    PromptTooLong {
        /// Prompt tokens plus `max_tokens`.
        n_tokens: usize,
        /// The engine's `max_context_tokens`.
        limit: usize,
    },
    /// A prompt token id is outside the model's vocabulary.
    #[error("token id {token_id} is outside the vocabulary of {vocab_size} tokens")]
    TokenOutOfRange {
        /// The offending id.
        token_id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// A sampling parameter is out of range; the message names it.
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    /// The waiting queue is full.
    #[error("too many waiting requests (limit {limit})")]
    QueueFull {
        /// `EngineConfig::max_waiting_requests`.
        limit: usize,
    },
    /// The request can never fit in the KV cache, even alone.
    #[error("request needs {n_pages} pages of KV cache, only {capacity} exist")]
    TooLargeForCache {
        /// Pages the prompt plus `max_tokens` need.
        n_pages: usize,
        /// Pages in the pool.
        capacity: usize,
    },
    /// `flush_cache` was called while requests run or wait.
    #[error("engine is busy with requests")]
    Busy,
    /// The engine thread has stopped (shut down, or failed).
    #[error("engine has stopped")]
    Stopped,
    /// The model could not be loaded, or the configuration does not fit it.
    #[error("model load failed: {0}")]
    Load(String),
    /// A forward pass failed; every running request is aborted.
    #[error("model forward failed: {0}")]
    Forward(String),
}

/// How much memory the KV cache gets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KvBudget {
    /// Exactly this many pages.
    Pages(usize),
    /// This many bytes of K and V storage over all layers.
    Bytes(u64),
    /// This fraction (in `(0, 1]`) of the device's currently free memory.
    Fraction(f32),
}

impl Default for KvBudget {
    /// 1 GiB: enough for tens of thousands of tokens of small models on CPU.
    fn default() -> Self {
        KvBudget::Bytes(1 << 30)
    }
}

/// The order in which waiting requests are admitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulePolicy {
    /// First come, first served.
    #[default]
    Fcfs,
    /// Longest cached prefix first, with aging so that no request waits forever.
    Lpm,
}

impl std::str::FromStr for SchedulePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "fcfs" => Ok(SchedulePolicy::Fcfs),
            "lpm" => Ok(SchedulePolicy::Lpm),
            other => Err(format!("unknown schedule policy {other:?} (fcfs or lpm)")),
        }
    }
}

/// How an engine schedules and how much KV memory it has.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Token slots per KV page.
    pub page_size: usize,
    /// Size of the KV cache.
    pub kv_cache: KvBudget,
    /// Most sequences in one batch.
    pub max_running_requests: usize,
    /// Most new tokens (decode tokens plus prefill chunks) in one forward pass.
    pub max_batched_tokens: usize,
    /// Most prompt tokens one sequence prefills in one step; longer prompts are
    /// prefilled in chunks over several steps.
    pub chunked_prefill_size: usize,
    /// Most requests waiting for admission; more get `EngineError::QueueFull`.
    pub max_waiting_requests: usize,
    /// Turn off prefix sharing: nothing is inserted into or matched in the radix tree.
    pub disable_radix_cache: bool,
    /// Order of admission.
    pub schedule_policy: SchedulePolicy,
    /// Most tokens (prompt plus output) per sequence; `None` uses the model's
    /// `max_position_embeddings`.
    pub max_context_tokens: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            page_size: 16,
            kv_cache: KvBudget::default(),
            max_running_requests: 256,
            max_batched_tokens: 8192,
            chunked_prefill_size: 2048,
            max_waiting_requests: 10_000,
            disable_radix_cache: false,
            schedule_policy: SchedulePolicy::Fcfs,
            max_context_tokens: None,
        }
    }
}

/// A snapshot of the engine's load and cache, updated after every step.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EngineStats {
    /// Sequences in the running set.
    pub n_running: usize,
    /// Sequences waiting for admission (preempted ones included).
    pub n_waiting: usize,
    /// Pages in the KV pool.
    pub n_pages_total: usize,
    /// Pages nobody holds.
    pub n_pages_free: usize,
    /// Pages held by the radix tree.
    pub n_pages_cached: usize,
    /// Pages of the radix tree that running sequences lock (not evictable).
    pub n_pages_locked: usize,
    /// Pages of the radix tree that can be evicted.
    pub n_pages_evictable: usize,
    /// Token slots per page.
    pub page_size: usize,
    /// `n_pages_total * page_size`.
    pub kv_capacity_tokens: usize,
    /// Prompt tokens served from the radix cache, since start.
    pub cache_hit_tokens: u64,
    /// Prompt tokens admitted (cached or not), since start.
    pub prompt_tokens: u64,
    /// Prompt tokens actually computed by forward passes (prefill), since start.
    pub prefill_tokens: u64,
    /// Tokens generated, since start.
    pub generation_tokens: u64,
    /// Sequences preempted (recomputed later), since start.
    pub preemptions: u64,
    /// Requests finished (any reason), since start.
    pub finished_requests: u64,
    /// Forward passes run, since start.
    pub steps: u64,
}

/// What the engine knows about its model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelInfo {
    /// A display name (file or directory name, or repo id).
    pub name: String,
    /// Tokens per sequence the model supports.
    pub max_context_tokens: usize,
    /// Rows of the logits.
    pub vocab_size: usize,
    /// End-of-sequence token ids from the generation config.
    pub eos_token_ids: Vec<u32>,
}

/// Storage type of weights (`--dtype`) or of the KV cache (`--kv-cache-dtype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelDType {
    /// Weights: what the checkpoint stores (GGUF matrices kept quantized, safetensors in
    /// f32). KV cache: see [`LoadOptions::kv_cache_dtype`].
    #[default]
    Auto,
    /// 32-bit floats (GGUF weights dequantized).
    F32,
    /// 16-bit floats.
    F16,
    /// bfloat16.
    Bf16,
}

impl std::str::FromStr for ModelDType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(ModelDType::Auto),
            "f32" | "float32" => Ok(ModelDType::F32),
            "f16" | "float16" => Ok(ModelDType::F16),
            "bf16" | "bfloat16" => Ok(ModelDType::Bf16),
            other => Err(format!("unknown dtype {other:?} (auto, f32, f16 or bf16)")),
        }
    }
}

/// The device a model runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelDevice {
    /// The CPU.
    #[default]
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

/// How `Engine::load` loads a model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// Storage type of the weights (and of activations, unless GGUF matrices stay
    /// quantized: those compute in f32).
    pub dtype: ModelDType,
    /// Storage type of the paged KV cache. `Auto` follows the activations, except that a
    /// quantized GGUF model on a GPU keeps bf16 KV (half the bytes of its f32
    /// activations, so twice the tokens in the same memory).
    pub kv_cache_dtype: ModelDType,
    /// Where the model runs.
    pub device: ModelDevice,
    /// A Hugging Face revision (branch, tag or commit) when loading by repo id.
    pub revision: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sampling_params_are_valid() {
        assert!(SamplingParams::default().validate().is_ok());
        assert!(SamplingParams::greedy(4).validate().is_ok());
    }

    #[test]
    fn out_of_range_top_p_is_rejected_with_its_name() {
        let params = SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        };
        let err = params.validate().unwrap_err().to_string();
        assert!(err.contains("top_p must be in (0, 1]"), "{err}");
    }

    #[test]
    fn finish_reasons_display_as_openai_strings() {
        assert_eq!(FinishReason::Stop.to_string(), "stop");
        assert_eq!(FinishReason::Length.to_string(), "length");
        assert_eq!(FinishReason::Abort.to_string(), "abort");
    }

    #[test]
    fn time_per_output_token_spreads_time_after_the_first() {
        let usage = Usage {
            completion_tokens: 5,
            time_to_first_token: Some(Duration::from_millis(100)),
            e2e_time: Duration::from_millis(500),
            ..Usage::default()
        };
        assert_eq!(
            usage.time_per_output_token(),
            Some(Duration::from_millis(100))
        );
    }
}
