//! `POST /v1/completions`: a text prompt (tokenized with the tokenizer's special tokens,
//! as vLLM does) or token ids, continued as is; answered with one `text_completion` or
//! a stream of them. No chat template and no reasoning split apply here.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use arbor_engine::{Event, FinishReason, GenerateRequest, StopMatch, Usage};

use super::matched_stop_json;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::openai::completions::{CompletionChoice, DEFAULT_COMPLETION_MAX_TOKENS, SinglePrompt};
use crate::openai::{
    CompletionLogprobs, CompletionRequest, CompletionResponse, UsageBody, build_params, check_n,
};
use crate::sse;
use crate::state::{AppState, unix_now};
use crate::stream::{ChunkWriter, Submitted, collect, sse_response, submit_all};

/// Handles `POST /v1/completions`. A list of prompts is one engine request per prompt,
/// all submitted before any output is read; their choices are numbered prompt by
/// prompt (`prompt_index * n + choice`) and their usage is summed.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let created = unix_now();
    state.check_model(request.model.as_deref())?;
    let n = check_n(request.n)?;
    let default_max = Some(DEFAULT_COMPLETION_MAX_TOKENS);
    // Every prompt is checked before any is submitted, so that a bad one fails the
    // request without starting the others.
    let mut prepared = Vec::new();
    for prompt in request.prompt.clone().into_prompts()? {
        let (prompt_ids, prompt_text) = match prompt {
            SinglePrompt::Text(text) => (state.encode(&text, true)?, text),
            SinglePrompt::Ids(ids) => {
                let text = if request.echo {
                    state.decode(&ids, false)?
                } else {
                    String::new()
                };
                (ids, text)
            }
        };
        if prompt_ids.is_empty() {
            return Err(ApiError::invalid_value(
                "prompt",
                "prompt must not be empty",
            ));
        }
        let limits = state.prompt_limits(prompt_ids.len(), default_max, "prompt");
        let params = build_params(
            &request.sampling,
            request.max_tokens,
            request.logprobs,
            &limits,
        )?;
        prepared.push((prompt_ids, prompt_text, params));
    }

    let mut requests = Vec::with_capacity(prepared.len());
    let mut choices = Vec::with_capacity(prepared.len() * n);
    for (prompt_ids, prompt_text, params) in prepared {
        requests.push(GenerateRequest {
            prompt_ids,
            params,
            n,
        });
        let echo = request.echo.then_some(prompt_text);
        choices.extend((0..n).map(|_| ChoiceState::new(echo.clone())));
    }
    let Submitted {
        mut events,
        id,
        mut tracker,
    } = submit_all(&state, requests, |first| state.response_id("cmpl", first))?;
    let mut writer = CompletionWriter {
        id,
        created,
        model: state.model_name().to_string(),
        want_logprobs: request.logprobs.is_some(),
        include_usage: request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
        n,
        choices,
    };
    if request.stream {
        return Ok(sse_response(events, writer, tracker));
    }
    collect(&mut events, &mut tracker, |event| writer.absorb(event)).await?;
    Ok(Json(writer.into_response()).into_response())
}

/// One choice's progress.
struct ChoiceState {
    /// The prompt text still to put in front of the output (`echo`).
    echo: Option<String>,
    /// Characters of text sent (or gathered) so far, for logprob offsets.
    n_chars: usize,
    text: String,
    logprobs: CompletionLogprobs,
    finish: Option<(FinishReason, Option<StopMatch>)>,
    usage: Usage,
}

impl ChoiceState {
    fn new(echo: Option<String>) -> Self {
        Self {
            echo,
            n_chars: 0,
            text: String::new(),
            logprobs: CompletionLogprobs::default(),
            finish: None,
            usage: Usage::default(),
        }
    }

    /// The text to send for new output (the echoed prompt first, once), and the
    /// character offset where `text` itself starts.
    fn release(&mut self, text: &str) -> (String, usize) {
        let mut out = self.echo.take().unwrap_or_default();
        let echo_chars = out.chars().count();
        out.push_str(text);
        let start = self.n_chars + echo_chars;
        self.n_chars += out.chars().count();
        (out, start)
    }
}

/// Formats completion events, as chunks or into one response.
struct CompletionWriter {
    id: String,
    created: u64,
    model: String,
    want_logprobs: bool,
    include_usage: bool,
    /// Choices per prompt.
    n: usize,
    choices: Vec<ChoiceState>,
}

/// What one event contributes to its choice.
struct Released {
    index: usize,
    text: String,
    logprobs: Option<CompletionLogprobs>,
    finish: Option<(FinishReason, Option<StopMatch>)>,
}

impl CompletionWriter {
    fn apply(&mut self, event: Event) -> Option<Released> {
        let want_logprobs = self.want_logprobs;
        match event {
            Event::Token {
                index,
                text,
                logprobs,
                ..
            } => {
                let choice = self.choices.get_mut(index)?;
                let (text, start) = choice.release(&text);
                let logprobs =
                    want_logprobs.then(|| CompletionLogprobs::from_engine(&logprobs, start));
                Some(Released {
                    index,
                    text,
                    logprobs,
                    finish: None,
                })
            }
            Event::Finished {
                index,
                reason,
                matched_stop,
                usage,
            } => {
                let choice = self.choices.get_mut(index)?;
                let (text, _) = choice.release("");
                choice.usage = usage;
                choice.finish = Some((reason, matched_stop.clone()));
                let logprobs = want_logprobs.then(CompletionLogprobs::default);
                Some(Released {
                    index,
                    text,
                    logprobs,
                    finish: Some((reason, matched_stop)),
                })
            }
        }
    }

    /// Non-streaming: gathers an event into its choice.
    fn absorb(&mut self, event: Event) {
        let Some(released) = self.apply(event) else {
            return;
        };
        let choice = &mut self.choices[released.index];
        choice.text.push_str(&released.text);
        if let Some(lp) = released.logprobs {
            choice.logprobs.tokens.extend(lp.tokens);
            choice.logprobs.token_logprobs.extend(lp.token_logprobs);
            choice.logprobs.top_logprobs.extend(lp.top_logprobs);
            choice.logprobs.text_offset.extend(lp.text_offset);
        }
    }

    /// Each prompt's usage (its prompt counted once), summed over the prompts.
    fn usage(&self) -> UsageBody {
        let mut total = UsageBody::default();
        for prompt in self.choices.chunks(self.n) {
            let usage = UsageBody::from_sequences(prompt.iter().map(|c| &c.usage), None);
            total.prompt_tokens += usage.prompt_tokens;
            total.completion_tokens += usage.completion_tokens;
            total.prompt_tokens_details.cached_tokens += usage.prompt_tokens_details.cached_tokens;
        }
        total.total_tokens = total.prompt_tokens + total.completion_tokens;
        total
    }

    fn into_response(self) -> CompletionResponse {
        let usage = self.usage();
        let want_logprobs = self.want_logprobs;
        let choices = self
            .choices
            .into_iter()
            .enumerate()
            .map(|(index, choice)| {
                let (reason, matched) = choice.finish.unwrap_or((FinishReason::Abort, None));
                CompletionChoice {
                    index,
                    text: choice.text,
                    logprobs: want_logprobs.then_some(choice.logprobs),
                    finish_reason: Some(reason.to_string()),
                    matched_stop: matched_stop_json(matched.as_ref()),
                }
            })
            .collect();
        CompletionResponse {
            id: self.id,
            object: "text_completion",
            created: self.created,
            model: self.model,
            choices,
            usage: Some(usage),
        }
    }

    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<UsageBody>) -> Bytes {
        sse::data_frame(&CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }
}

impl ChunkWriter for CompletionWriter {
    fn on_event(&mut self, event: Event) -> Vec<Bytes> {
        let Some(released) = self.apply(event) else {
            return Vec::new();
        };
        let no_logprobs = released
            .logprobs
            .as_ref()
            .is_none_or(|lp| lp.tokens.is_empty());
        if released.finish.is_none() && released.text.is_empty() && no_logprobs {
            return Vec::new();
        }
        let choice = CompletionChoice {
            index: released.index,
            text: released.text,
            logprobs: released.logprobs,
            finish_reason: released
                .finish
                .as_ref()
                .map(|(reason, _)| reason.to_string()),
            matched_stop: released
                .finish
                .and_then(|(_, m)| matched_stop_json(m.as_ref())),
        };
        vec![self.chunk(vec![choice], None)]
    }

    fn end(&mut self) -> Vec<Bytes> {
        if !self.include_usage {
            return Vec::new();
        }
        vec![self.chunk(Vec::new(), Some(self.usage()))]
    }
}
