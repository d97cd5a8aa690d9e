//! Wire types shared by `/v1/chat/completions` and `/v1/completions`: the sampling
//! fields both accept, `stop`, `stream_options`, the `usage` object, and the validation
//! that turns them into the engine's `SamplingParams`.
//!
//! Field names follow OpenAI's API; `top_k`, `min_p`, `repetition_penalty`,
//! `min_tokens`, `ignore_eos`, `stop_token_ids` and `skip_special_tokens` are the
//! extensions vLLM and SGLang accept under the same names. Unknown fields are ignored,
//! as OpenAI clients send many optional ones.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use arbor_engine::{MAX_TOP_LOGPROBS, OutputConstraint, SamplingParams, Usage};

use crate::error::ApiError;

/// Most sequences one request may ask for (`n`), as OpenAI allows.
pub const MAX_N: u32 = 128;

/// Largest magnitude of a `logit_bias` value, as OpenAI allows.
pub const MAX_LOGIT_BIAS: f32 = 100.0;

/// The sampling fields common to chat and text completions. Every field is optional;
/// `null` means "not given".
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SamplingFields {
    /// `0` is greedy; default 1.
    pub temperature: Option<f32>,
    /// Nucleus mass in `(0, 1]`; default 1.
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens; `0` or `-1` turns it off.
    pub top_k: Option<i64>,
    /// In `[0, 1]`; `0` turns it off.
    pub min_p: Option<f32>,
    /// `> 0`; `1` turns it off.
    pub repetition_penalty: Option<f32>,
    /// In `[-2, 2]`.
    pub frequency_penalty: Option<f32>,
    /// In `[-2, 2]`.
    pub presence_penalty: Option<f32>,
    /// Token id (as a string key, per OpenAI) to a bias in `[-100, 100]`.
    pub logit_bias: Option<HashMap<String, f32>>,
    /// Same seed, same prompt, same output.
    pub seed: Option<i64>,
    /// One stop string or a list of them.
    pub stop: Option<StopField>,
    /// Extra token ids that end a sequence.
    pub stop_token_ids: Option<Vec<u32>>,
    /// Tokens generated before stop conditions apply.
    pub min_tokens: Option<usize>,
    /// Keep generating past the end-of-sequence token.
    pub ignore_eos: Option<bool>,
    /// Leave special tokens out of the text; default true.
    pub skip_special_tokens: Option<bool>,
    /// `{"type": "text"}` (the default) or `{"type": "json_object"}`.
    pub response_format: Option<serde_json::Value>,
}

/// `stop`: a string or an array of strings.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

impl StopField {
    /// The stop strings, in order.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and empty `choices`) before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// What `build_params` needs to know about the model and the prompt.
#[derive(Clone, Copy, Debug)]
pub struct PromptLimits {
    /// Tokens in the prompt.
    pub n_prompt_tokens: usize,
    /// Tokens (prompt plus output) one sequence may hold.
    pub max_context_tokens: usize,
    /// Token ids the model knows; ids in `logit_bias` and `stop_token_ids` must be below.
    pub vocab_size: usize,
    /// Output tokens used when the request sets no `max_tokens`; `None` means "the rest
    /// of the context".
    pub default_max_tokens: Option<usize>,
    /// Where the prompt came from, for error messages: `"messages"` or `"prompt"`.
    pub prompt_param: &'static str,
}

/// Validates the request's sampling fields and builds the engine's parameters.
///
/// `max_tokens` is the request's output limit (either spelling), `logprobs` the number
/// of alternatives per token asked for (`None`: no logprobs). Every out-of-range value is
/// a 400 naming its field.
pub fn build_params(
    fields: &SamplingFields,
    max_tokens: Option<u64>,
    logprobs: Option<u64>,
    limits: &PromptLimits,
) -> Result<SamplingParams, ApiError> {
    let defaults = SamplingParams::default();
    let params = SamplingParams {
        temperature: check_temperature(fields.temperature)?,
        top_p: check_top_p(fields.top_p)?,
        top_k: check_top_k(fields.top_k)?,
        min_p: check_range("min_p", fields.min_p, 0.0..=1.0, 0.0)?,
        repetition_penalty: check_repetition_penalty(fields.repetition_penalty)?,
        frequency_penalty: check_range(
            "frequency_penalty",
            fields.frequency_penalty,
            -2.0..=2.0,
            0.0,
        )?,
        presence_penalty: check_range(
            "presence_penalty",
            fields.presence_penalty,
            -2.0..=2.0,
            0.0,
        )?,
        logit_bias: check_logit_bias(fields.logit_bias.as_ref(), limits.vocab_size)?,
        // Negative seeds are valid OpenAI input; reinterpreting the bits keeps every
        // distinct seed distinct.
        seed: fields.seed.map(|seed| seed as u64),
        max_tokens: check_max_tokens(max_tokens, limits)?,
        min_tokens: fields.min_tokens.unwrap_or(0),
        stop_token_ids: check_stop_token_ids(fields.stop_token_ids.as_deref(), limits.vocab_size)?,
        stop_strings: check_stop(fields.stop.clone())?,
        ignore_eos: fields.ignore_eos.unwrap_or(false),
        logprobs: check_logprobs(logprobs)?,
        skip_special_tokens: fields
            .skip_special_tokens
            .unwrap_or(defaults.skip_special_tokens),
        constraint: check_response_format(fields.response_format.as_ref())?,
        constraint_after: None,
    };
    if params.min_tokens > params.max_tokens {
        return Err(ApiError::invalid_value(
            "min_tokens",
            format!(
                "min_tokens ({}) must not exceed max_tokens ({})",
                params.min_tokens, params.max_tokens
            ),
        ));
    }
    Ok(params)
}

/// The constraint `response_format` asks for.
fn check_response_format(
    format: Option<&serde_json::Value>,
) -> Result<Option<OutputConstraint>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(serde_json::Value::as_str) {
        Some("text") => Ok(None),
        // With a reasoning parser, chat requests start it after `</think>`.
        Some("json_object") => Ok(Some(OutputConstraint::JsonObject)),
        // Limitation: no JSON-schema (or regex) grammar yet, only "any JSON object".
        Some("json_schema") => Err(ApiError::invalid_value(
            "response_format",
            "response_format of type \"json_schema\" is not supported; \"json_object\" is",
        )),
        _ => Err(ApiError::invalid_value(
            "response_format",
            "response_format must be {\"type\": \"text\"} or {\"type\": \"json_object\"}",
        )),
    }
}

/// Checks `n` (sequences per request), default 1.
pub fn check_n(n: Option<u32>) -> Result<usize, ApiError> {
    match n.unwrap_or(1) {
        0 => Err(ApiError::invalid_value("n", "n must be at least 1")),
        n if n > MAX_N => Err(ApiError::invalid_value(
            "n",
            format!("n must be at most {MAX_N}"),
        )),
        n => Ok(n as usize),
    }
}

fn check_temperature(value: Option<f32>) -> Result<f32, ApiError> {
    let t = value.unwrap_or(1.0);
    if t.is_finite() && t >= 0.0 {
        return Ok(t);
    }
    Err(ApiError::invalid_value(
        "temperature",
        "temperature must be a finite number >= 0",
    ))
}

fn check_top_p(value: Option<f32>) -> Result<f32, ApiError> {
    let p = value.unwrap_or(1.0);
    if p > 0.0 && p <= 1.0 {
        return Ok(p);
    }
    Err(ApiError::invalid_value("top_p", "top_p must be in (0, 1]"))
}

fn check_top_k(value: Option<i64>) -> Result<usize, ApiError> {
    match value.unwrap_or(0) {
        -1 | 0 => Ok(0),
        k if k > 0 => Ok(usize::try_from(k).unwrap_or(usize::MAX)),
        _ => Err(ApiError::invalid_value(
            "top_k",
            "top_k must be -1, 0 (off) or positive",
        )),
    }
}

fn check_range(
    param: &str,
    value: Option<f32>,
    range: std::ops::RangeInclusive<f32>,
    default: f32,
) -> Result<f32, ApiError> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        return Ok(v);
    }
    let message = format!("{param} must be in [{}, {}]", range.start(), range.end());
    Err(ApiError::invalid_value(param, message))
}

fn check_repetition_penalty(value: Option<f32>) -> Result<f32, ApiError> {
    let r = value.unwrap_or(1.0);
    if r.is_finite() && r > 0.0 {
        return Ok(r);
    }
    Err(ApiError::invalid_value(
        "repetition_penalty",
        "repetition_penalty must be a finite number > 0",
    ))
}

fn check_logit_bias(
    bias: Option<&HashMap<String, f32>>,
    vocab_size: usize,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(bias) = bias else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(bias.len());
    for (key, &value) in bias {
        let id = key
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&id| (id as usize) < vocab_size)
            .ok_or_else(|| {
                let message =
                    format!("logit_bias key {key:?} is not a token id below {vocab_size}");
                ApiError::invalid_value("logit_bias", message)
            })?;
        if !(value.is_finite() && value.abs() <= MAX_LOGIT_BIAS) {
            let message =
                format!("logit_bias values must be in [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}]");
            return Err(ApiError::invalid_value("logit_bias", message));
        }
        out.push((id, value));
    }
    out.sort_by_key(|&(id, _)| id);
    Ok(out)
}

fn check_max_tokens(max_tokens: Option<u64>, limits: &PromptLimits) -> Result<usize, ApiError> {
    let PromptLimits {
        n_prompt_tokens: n_prompt,
        max_context_tokens: n_context,
        ..
    } = *limits;
    if n_prompt >= n_context {
        let message = format!(
            "this model's maximum context length is {n_context} tokens, and the {} has \
             {n_prompt} tokens, which leaves no room for output",
            limits.prompt_param
        );
        return Err(ApiError::bad_request(
            message,
            Some(limits.prompt_param),
            "context_length_exceeded",
        ));
    }
    let room = n_context - n_prompt;
    let Some(requested) = max_tokens else {
        return Ok(limits.default_max_tokens.map_or(room, |d| d.min(room)));
    };
    if requested == 0 {
        return Err(ApiError::invalid_value(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let requested = usize::try_from(requested).unwrap_or(usize::MAX);
    if requested > room {
        let message = format!(
            "this model's maximum context length is {n_context} tokens, but {} were requested \
             ({n_prompt} in the {}, {requested} for the completion); reduce max_tokens or the {}",
            n_prompt.saturating_add(requested),
            limits.prompt_param,
            limits.prompt_param,
        );
        return Err(ApiError::bad_request(
            message,
            Some("max_tokens"),
            "context_length_exceeded",
        ));
    }
    Ok(requested)
}

fn check_stop_token_ids(ids: Option<&[u32]>, vocab_size: usize) -> Result<Vec<u32>, ApiError> {
    let ids = ids.unwrap_or_default();
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
        let message =
            format!("stop token id {bad} is outside the vocabulary of {vocab_size} tokens");
        return Err(ApiError::invalid_value("stop_token_ids", message));
    }
    Ok(ids.to_vec())
}

fn check_stop(stop: Option<StopField>) -> Result<Vec<String>, ApiError> {
    let stops = stop.map(StopField::into_vec).unwrap_or_default();
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid_value(
            "stop",
            "stop strings must not be empty",
        ));
    }
    Ok(stops)
}

fn check_logprobs(logprobs: Option<u64>) -> Result<Option<usize>, ApiError> {
    match logprobs {
        Some(k) if k > MAX_TOP_LOGPROBS as u64 => Err(ApiError::invalid_value(
            "top_logprobs",
            format!("at most {MAX_TOP_LOGPROBS} logprobs per token may be asked for"),
        )),
        other => Ok(other.map(|k| k as usize)),
    }
}

/// The `usage` object of responses and of the last streamed chunk.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UsageBody {
    /// Prompt tokens, counted once per request (sequences share the prompt).
    pub prompt_tokens: usize,
    /// Generated tokens over all sequences.
    pub completion_tokens: usize,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: usize,
    /// Prompt detail: tokens served from the prefix cache.
    pub prompt_tokens_details: PromptTokensDetails,
    /// Output detail: reasoning tokens, when a reasoning parser is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

/// `usage.prompt_tokens_details`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV came from the radix cache.
    pub cached_tokens: usize,
}

/// `usage.completion_tokens_details`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CompletionTokensDetails {
    /// Output tokens up to and including the end of the reasoning section.
    pub reasoning_tokens: usize,
}

impl UsageBody {
    /// Sums the usage of a request's sequences. Prompt tokens count once; cached tokens
    /// are the best any sequence got. `reasoning_tokens` is `Some` when a reasoning
    /// parser ran.
    pub fn from_sequences<'a>(
        usages: impl IntoIterator<Item = &'a Usage>,
        reasoning_tokens: Option<usize>,
    ) -> Self {
        let mut body = UsageBody::default();
        for usage in usages {
            body.prompt_tokens = body.prompt_tokens.max(usage.prompt_tokens);
            body.prompt_tokens_details.cached_tokens = body
                .prompt_tokens_details
                .cached_tokens
                .max(usage.cached_prompt_tokens);
            body.completion_tokens += usage.completion_tokens;
        }
        body.total_tokens = body.prompt_tokens + body.completion_tokens;
        body.completion_tokens_details =
            reasoning_tokens.map(|reasoning_tokens| CompletionTokensDetails { reasoning_tokens });
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(n_prompt_tokens: usize) -> PromptLimits {
        PromptLimits {
            n_prompt_tokens,
            max_context_tokens: 100,
            vocab_size: 1000,
            default_max_tokens: None,
            prompt_param: "messages",
        }
    }

    fn fields(json: &str) -> SamplingFields {
        serde_json::from_str(json).unwrap()
    }

    fn param_of(err: ApiError) -> String {
        match err {
            ApiError::BadRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn every_field_reaches_the_engine_parameters() {
        let f = fields(
            r#"{"temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.1,
                "repetition_penalty": 1.1, "frequency_penalty": 0.5, "presence_penalty": -0.5,
                "logit_bias": {"7": -100, "3": 5}, "seed": -1, "stop": "END",
                "stop_token_ids": [9], "min_tokens": 2, "ignore_eos": true,
                "skip_special_tokens": false}"#,
        );
        let p = build_params(&f, Some(10), Some(3), &limits(5)).unwrap();
        assert_eq!(
            (p.temperature, p.top_p, p.top_k, p.min_p),
            (0.5, 0.9, 40, 0.1)
        );
        assert_eq!(
            (
                p.repetition_penalty,
                p.frequency_penalty,
                p.presence_penalty
            ),
            (1.1, 0.5, -0.5)
        );
        assert_eq!(p.logit_bias, vec![(3, 5.0), (7, -100.0)]);
        assert_eq!(p.seed, Some(u64::MAX));
        assert_eq!(p.stop_strings, vec!["END".to_string()]);
        assert_eq!(p.stop_token_ids, vec![9]);
        assert_eq!((p.max_tokens, p.min_tokens, p.logprobs), (10, 2, Some(3)));
        assert!(p.ignore_eos && !p.skip_special_tokens);
        assert!(p.validate().is_ok());
    }

    #[test]
    fn missing_max_tokens_fills_the_rest_of_the_context_or_the_default() {
        let p = build_params(&SamplingFields::default(), None, None, &limits(30)).unwrap();
        assert_eq!(p.max_tokens, 70);
        let with_default = PromptLimits {
            default_max_tokens: Some(16),
            ..limits(30)
        };
        let p = build_params(&SamplingFields::default(), None, None, &with_default).unwrap();
        assert_eq!(p.max_tokens, 16);
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let cases = [
            (r#"{"temperature": -1}"#, "temperature"),
            (r#"{"top_p": 0}"#, "top_p"),
            (r#"{"top_p": 1.5}"#, "top_p"),
            (r#"{"top_k": -2}"#, "top_k"),
            (r#"{"min_p": 2}"#, "min_p"),
            (r#"{"repetition_penalty": 0}"#, "repetition_penalty"),
            (r#"{"frequency_penalty": 3}"#, "frequency_penalty"),
            (r#"{"presence_penalty": -2.5}"#, "presence_penalty"),
            (r#"{"logit_bias": {"x": 1}}"#, "logit_bias"),
            (r#"{"logit_bias": {"5000": 1}}"#, "logit_bias"),
            (r#"{"logit_bias": {"5": 101}}"#, "logit_bias"),
            (r#"{"stop": ["a", ""]}"#, "stop"),
            (r#"{"stop_token_ids": [1000]}"#, "stop_token_ids"),
            (r#"{"min_tokens": 11}"#, "min_tokens"),
        ];
        for (json, param) in cases {
            let err = build_params(&fields(json), Some(10), None, &limits(5)).unwrap_err();
            assert_eq!(param_of(err), param, "{json}");
        }
    }

    #[test]
    fn max_tokens_must_fit_the_context_and_be_positive() {
        let none = SamplingFields::default();
        assert_eq!(
            param_of(build_params(&none, Some(0), None, &limits(5)).unwrap_err()),
            "max_tokens"
        );
        assert_eq!(
            param_of(build_params(&none, Some(96), None, &limits(5)).unwrap_err()),
            "max_tokens"
        );
        assert!(build_params(&none, Some(95), None, &limits(5)).is_ok());
        assert_eq!(
            param_of(build_params(&none, None, None, &limits(100)).unwrap_err()),
            "messages"
        );
    }

    #[test]
    fn too_many_logprobs_are_refused() {
        let none = SamplingFields::default();
        let err = build_params(&none, Some(1), Some(21), &limits(5)).unwrap_err();
        assert_eq!(param_of(err), "top_logprobs");
    }

    #[test]
    fn n_must_be_between_one_and_the_limit() {
        assert_eq!(check_n(None).unwrap(), 1);
        assert_eq!(check_n(Some(2)).unwrap(), 2);
        assert_eq!(param_of(check_n(Some(0)).unwrap_err()), "n");
        assert_eq!(param_of(check_n(Some(MAX_N + 1)).unwrap_err()), "n");
    }

    #[test]
    fn usage_counts_the_prompt_once_and_sums_outputs() {
        let seq = |completion_tokens, cached_prompt_tokens| Usage {
            prompt_tokens: 10,
            cached_prompt_tokens,
            completion_tokens,
            ..Usage::default()
        };
        let body = UsageBody::from_sequences(&[seq(3, 0), seq(4, 8)], Some(2));
        assert_eq!(
            (
                body.prompt_tokens,
                body.completion_tokens,
                body.total_tokens
            ),
            (10, 7, 17)
        );
        assert_eq!(body.prompt_tokens_details.cached_tokens, 8);
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["completion_tokens_details"]["reasoning_tokens"], 2);
        let plain = serde_json::to_value(UsageBody::from_sequences(&[seq(1, 0)], None)).unwrap();
        assert!(plain.get("completion_tokens_details").is_none());
        assert_eq!(plain["prompt_tokens_details"]["cached_tokens"], 0);
    }
}
