//! `POST /generate`, SGLang's native route: a `text` or `input_ids` prompt (or a list of
//! them), SGLang's `sampling_params` (`max_new_tokens`, `min_new_tokens`, ...), and a
//! response of `text`, `output_ids` and `meta_info` (a list of them for several prompts
//! or `n > 1`, numbered `prompt_index * n + sample`). Streaming sends the whole text so
//! far in each event, as SGLang does by default, then `data: [DONE]`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, json};

use arbor_engine::{Event, FinishReason, GenerateRequest, StopMatch, Usage};

use crate::error::ApiError;
use crate::json::ApiJson;
use crate::openai::{SamplingFields, build_params, check_n};
use crate::sse;
use crate::state::AppState;
use crate::stream::{ChunkWriter, Submitted, collect, sse_response, submit_all};

/// New tokens of a `/generate` request that sets no `max_new_tokens`, as in SGLang.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 128;

/// The body of `POST /generate`. Exactly one of `text` and `input_ids`.
#[derive(Clone, Debug, Deserialize)]
pub struct GenerateBody {
    /// Prompt text (tokenized with special tokens added), or a list of prompts.
    pub text: Option<OneOrList<String>>,
    /// Prompt token ids, or a list of prompts.
    pub input_ids: Option<OneOrList<Vec<u32>>>,
    /// Sampling, SGLang's names.
    #[serde(default)]
    pub sampling_params: SglSamplingParams,
    /// Stream events.
    #[serde(default)]
    pub stream: bool,
    /// Return the logprob of each output token in `meta_info.output_token_logprobs`.
    #[serde(default)]
    pub return_logprob: bool,
    /// Alternatives per token in `meta_info.output_top_logprobs`.
    pub top_logprobs_num: Option<u64>,
}

/// One value, or a list holding exactly one.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrList<T> {
    /// The value itself.
    One(T),
    /// A list (a batched request).
    List(Vec<T>),
}

impl<T> OneOrList<T> {
    fn into_list(self) -> Vec<T> {
        match self {
            OneOrList::One(value) => vec![value],
            OneOrList::List(list) => list,
        }
    }
}

/// SGLang's `sampling_params`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SglSamplingParams {
    /// Most new tokens; default 128.
    pub max_new_tokens: Option<u64>,
    /// New tokens before stop conditions apply.
    pub min_new_tokens: Option<usize>,
    /// Sequences to generate.
    pub n: Option<u32>,
    /// SGLang's name for the seed.
    pub sampling_seed: Option<i64>,
    /// The fields shared with the OpenAI routes (`temperature`, `top_p`, `stop`, ...).
    #[serde(flatten)]
    pub common: SamplingFields,
}

/// Handles `POST /generate`. Several prompts are one engine request each, all checked
/// before any is submitted.
pub async fn generate(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<GenerateBody>,
) -> Result<Response, ApiError> {
    let prompts: Vec<Vec<u32>> = match (body.text, body.input_ids) {
        (Some(text), None) => text
            .into_list()
            .iter()
            .map(|text| state.encode(text, true))
            .collect::<Result<_, _>>()?,
        (None, Some(ids)) => ids.into_list(),
        _ => {
            return Err(ApiError::invalid_value(
                "text",
                "give exactly one of text and input_ids",
            ));
        }
    };
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid_value("text", "prompt must not be empty"));
    }
    let sampling = &body.sampling_params;
    let n = check_n(sampling.n)?;
    let mut fields = sampling.common.clone();
    fields.seed = fields.seed.or(sampling.sampling_seed);
    fields.min_tokens = sampling.min_new_tokens.or(fields.min_tokens);
    let logprobs = body
        .return_logprob
        .then(|| body.top_logprobs_num.unwrap_or(0));
    let mut requests = Vec::with_capacity(prompts.len());
    for prompt_ids in prompts {
        let limits = state.prompt_limits(prompt_ids.len(), Some(DEFAULT_MAX_NEW_TOKENS), "text");
        let params = build_params(&fields, sampling.max_new_tokens, logprobs, &limits)?;
        requests.push(GenerateRequest {
            prompt_ids,
            params,
            n,
        });
    }
    let n_outputs = requests.len() * n;
    let Submitted {
        mut events,
        id,
        mut tracker,
    } = submit_all(&state, requests, |first| first.to_string())?;
    let mut writer = GenerateWriter {
        id,
        want_logprobs: logprobs.is_some(),
        outputs: (0..n_outputs).map(|_| Output::default()).collect(),
    };
    if body.stream {
        return Ok(sse_response(events, writer, tracker));
    }
    collect(&mut events, &mut tracker, |event| {
        writer.apply(event);
    })
    .await?;
    let mut results: Vec<GenerateResult> =
        (0..n_outputs).map(|index| writer.result(index)).collect();
    if n_outputs == 1 {
        return Ok(Json(results.remove(0)).into_response());
    }
    Ok(Json(results).into_response())
}

/// One sequence's output so far.
#[derive(Default)]
struct Output {
    text: String,
    output_ids: Vec<u32>,
    logprobs: Vec<JsonValue>,
    top_logprobs: Vec<JsonValue>,
    finish: Option<(FinishReason, Option<StopMatch>)>,
    usage: Usage,
}

/// One sequence's result (or its state so far, in a streamed event).
#[derive(Debug, Serialize)]
pub struct GenerateResult {
    /// Which output (`prompt_index * n + sample`), when there are several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The whole output text so far.
    pub text: String,
    /// The output token ids so far.
    pub output_ids: Vec<u32>,
    /// Token counts, timing and finish reason.
    pub meta_info: JsonValue,
}

struct GenerateWriter {
    id: String,
    want_logprobs: bool,
    outputs: Vec<Output>,
}

impl GenerateWriter {
    /// Applies an event; returns the index of the sequence it changed.
    fn apply(&mut self, event: Event) -> Option<usize> {
        match event {
            Event::Token {
                index,
                token_ids,
                text,
                logprobs,
            } => {
                let out = self.outputs.get_mut(index)?;
                out.text.push_str(&text);
                out.output_ids.extend(&token_ids);
                for lp in logprobs {
                    out.logprobs
                        .push(json!([lp.logprob, lp.token_id, lp.token]));
                    let top: Vec<JsonValue> =
                        lp.top.iter().map(|(id, t, l)| json!([l, id, t])).collect();
                    out.top_logprobs.push(JsonValue::Array(top));
                }
                Some(index)
            }
            Event::Finished {
                index,
                reason,
                matched_stop,
                usage,
            } => {
                let out = self.outputs.get_mut(index)?;
                out.finish = Some((reason, matched_stop));
                out.usage = usage;
                Some(index)
            }
        }
    }

    fn result(&self, index: usize) -> GenerateResult {
        let out = &self.outputs[index];
        let mut meta = json!({
            "id": self.id,
            "finish_reason": out.finish.as_ref().map(|(r, m)| finish_json(*r, m.as_ref(), out.usage.completion_tokens)),
            "prompt_tokens": out.usage.prompt_tokens,
            "completion_tokens": out.usage.completion_tokens.max(out.output_ids.len()),
            "cached_tokens": out.usage.cached_prompt_tokens,
            "e2e_latency": out.usage.e2e_time.as_secs_f64(),
        });
        if self.want_logprobs {
            meta["output_token_logprobs"] = JsonValue::Array(out.logprobs.clone());
            meta["output_top_logprobs"] = JsonValue::Array(out.top_logprobs.clone());
        }
        GenerateResult {
            index: (self.outputs.len() > 1).then_some(index),
            text: out.text.clone(),
            output_ids: out.output_ids.clone(),
            meta_info: meta,
        }
    }
}

/// SGLang's `finish_reason` object.
fn finish_json(reason: FinishReason, matched: Option<&StopMatch>, n_tokens: usize) -> JsonValue {
    match (reason, matched) {
        (FinishReason::Stop, Some(StopMatch::TokenId(id))) => {
            json!({"type": "stop", "matched": id})
        }
        (FinishReason::Stop, Some(StopMatch::Text(s))) => json!({"type": "stop", "matched": s}),
        (FinishReason::Stop, None) => json!({"type": "stop", "matched": null}),
        (FinishReason::Length, _) => json!({"type": "length", "length": n_tokens}),
        (FinishReason::Abort, _) => json!({"type": "abort", "message": "request aborted"}),
    }
}

impl ChunkWriter for GenerateWriter {
    fn on_event(&mut self, event: Event) -> Vec<Bytes> {
        let is_token = matches!(&event, Event::Token { text, .. } if text.is_empty());
        match self.apply(event) {
            // A token event with no new text changes nothing a client sees yet.
            Some(_) if is_token => Vec::new(),
            Some(index) => vec![sse::data_frame(&self.result(index))],
            None => Vec::new(),
        }
    }
}
