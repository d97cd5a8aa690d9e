//! `POST /v1/chat/completions`: render the messages with the chat template, tokenize,
//! submit, then answer with one JSON response or a stream of `chat.completion.chunk`s.
//! With a reasoning parser on, each choice's text is split into `reasoning_content`
//! (also sent as `reasoning`) and `content`; with a tool-call parser on and tools in the
//! request, calls in the answer become `tool_calls` (each sent whole when streaming) and
//! the choice finishes with `tool_calls`; `tool_choice: "required"` or a named function
//! constrains the output to a call in the parser's format. Both modes give the same
//! split.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use arbor_engine::{Event, FinishReason, GenerateRequest, StopMatch, TokenLogprob, Usage};
use arbor_models::chat_template::RenderOptions;

use super::matched_stop_json;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::openai::chat::{
    AssistantMessage, ChatChoice, ChunkChoice, ChunkDelta, template_messages,
};
use crate::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs, ToolCallBody,
    ToolMode, UsageBody, build_params, check_n, forced_call_constraint, tool_mode,
};
use crate::reasoning::{ReasoningParser, ReasoningParserKind, THINK_CLOSE};
use crate::sse;
use crate::state::{AppState, unix_now};
use crate::stream::{ChunkWriter, Submitted, collect, sse_response, submit_all};
use crate::tools::{ToolCall, ToolParser, ToolParserKind};

/// Handles `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let created = unix_now();
    state.check_model(request.model.as_deref())?;
    let messages = template_messages(&request.messages)?;
    let tool_mode = tool_mode(request.tools.as_deref(), request.tool_choice.as_ref())?;
    let tool_parser = match tool_mode {
        ToolMode::Off => None,
        ToolMode::Auto | ToolMode::Forced(_) => state.config.tool_parser,
    };
    let options = RenderOptions {
        add_generation_prompt: request.add_generation_prompt.unwrap_or(true),
        tools: request.tools.clone(),
        documents: None,
        extra_context: request.chat_template_kwargs.clone().unwrap_or_default(),
    };
    let prompt = state.render_chat(&messages, &options)?;
    // The rendered prompt already holds its special tokens (BOS included) as text.
    let prompt_ids = state.encode(&prompt, false)?;

    let n = check_n(request.n)?;
    let logprobs = request.engine_logprobs()?;
    let limits = state.prompt_limits(prompt_ids.len(), None, "messages");
    let mut params = build_params(&request.sampling, request.max_tokens(), logprobs, &limits)?;
    if params.constraint.is_some() && state.config.reasoning_parser.is_some() {
        // JSON mode holds for the answer: the model reasons freely up to `</think>`.
        params.constraint_after = Some(THINK_CLOSE.to_string());
    }
    if let ToolMode::Forced(call) = &tool_mode {
        if params.constraint.is_some() {
            let message = "response_format cannot be combined with a forced tool call";
            return Err(ApiError::invalid_value("response_format", message));
        }
        let closes_reasoning = state.config.reasoning_parser.is_some();
        params.constraint = Some(forced_call_constraint(call, tool_parser, closes_reasoning)?);
    }
    let requests = vec![GenerateRequest {
        prompt_ids,
        params,
        n,
    }];
    let Submitted {
        mut events,
        id,
        mut tracker,
    } = submit_all(&state, requests, |first| {
        state.response_id("chatcmpl", first)
    })?;

    let meta = ChatMeta {
        id,
        created,
        model: state.model_name().to_string(),
        want_logprobs: logprobs.is_some(),
        include_usage: request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    };
    let max_calls = match request.parallel_tool_calls {
        Some(false) => 1,
        _ => usize::MAX,
    };
    let choices = (0..n)
        .map(|_| ChoiceState::new(state.config.reasoning_parser, tool_parser, max_calls))
        .collect();
    let mut writer = ChatWriter { meta, choices };
    if request.stream {
        return Ok(sse_response(events, writer, tracker));
    }
    collect(&mut events, &mut tracker, |event| writer.absorb(event)).await?;
    Ok(Json(writer.into_response()).into_response())
}

/// What every chunk and the response repeat.
struct ChatMeta {
    id: String,
    created: u64,
    model: String,
    want_logprobs: bool,
    include_usage: bool,
}

/// Text and calls one event released for a choice.
#[derive(Debug, Default)]
struct Released {
    reasoning: String,
    content: String,
    calls: Vec<ToolCall>,
}

/// One choice's progress: its reasoning and tool-call parsers, token counts and, when
/// not streaming, the text and calls gathered so far.
struct ChoiceState {
    parser: Option<ReasoningParser>,
    tools: Option<ToolParser>,
    /// Calls kept at most (`parallel_tool_calls: false` keeps one).
    max_calls: usize,
    n_tokens: usize,
    /// Output tokens up to the event that closed the reasoning; `None` while open.
    n_reasoning_tokens: Option<usize>,
    reasoning: String,
    content: String,
    /// Calls released so far (only kept whole when not streaming).
    calls: Vec<ToolCall>,
    n_calls: usize,
    logprobs: Vec<TokenLogprob>,
    finish: Option<(FinishReason, Option<StopMatch>)>,
    usage: Usage,
}

impl ChoiceState {
    fn new(
        reasoning: Option<ReasoningParserKind>,
        tools: Option<ToolParserKind>,
        max_calls: usize,
    ) -> Self {
        Self {
            parser: reasoning.map(ReasoningParserKind::parser),
            tools: tools.map(ToolParserKind::parser),
            max_calls,
            n_tokens: 0,
            n_reasoning_tokens: None,
            reasoning: String::new(),
            content: String::new(),
            calls: Vec::new(),
            n_calls: 0,
            logprobs: Vec::new(),
            finish: None,
            usage: Usage::default(),
        }
    }

    /// Splits new text; counts reasoning tokens up to the event that closes the block.
    fn push(&mut self, text: &str, n_new_tokens: usize) -> Released {
        self.n_tokens += n_new_tokens;
        let (reasoning, content) = match self.parser.as_mut() {
            None => (String::new(), text.to_string()),
            Some(parser) => {
                let was_reasoning = !parser.in_content();
                let delta = parser.push(text);
                if was_reasoning && parser.in_content() {
                    self.n_reasoning_tokens = Some(self.n_tokens);
                }
                (delta.reasoning, delta.content)
            }
        };
        self.find_calls(reasoning, &content, false)
    }

    fn finish(
        &mut self,
        reason: FinishReason,
        matched: Option<StopMatch>,
        usage: Usage,
    ) -> Released {
        self.finish = Some((reason, matched));
        self.usage = usage;
        let rest = self
            .parser
            .as_mut()
            .map(ReasoningParser::finish)
            .unwrap_or_default();
        self.find_calls(rest.reasoning, &rest.content, true)
    }

    /// Runs the answer text through the tool-call parser, if one is on.
    fn find_calls(&mut self, reasoning: String, content: &str, last: bool) -> Released {
        let Some(tools) = self.tools.as_mut() else {
            return Released {
                reasoning,
                content: content.to_string(),
                calls: Vec::new(),
            };
        };
        let mut delta = tools.push(content);
        if last {
            let rest = tools.finish();
            delta.content.push_str(&rest.content);
            delta.calls.extend(rest.calls);
        }
        let room = self.max_calls.saturating_sub(self.n_calls);
        delta.calls.truncate(room);
        self.n_calls += delta.calls.len();
        Released {
            reasoning,
            content: delta.content,
            calls: delta.calls,
        }
    }

    /// The reason reported: `tool_calls` when the model stopped after calling tools.
    fn finish_reason(&self) -> String {
        match &self.finish {
            Some((FinishReason::Stop, _)) if self.n_calls > 0 => "tool_calls".to_string(),
            Some((reason, _)) => reason.to_string(),
            None => FinishReason::Abort.to_string(),
        }
    }

    /// Reasoning tokens, when a parser runs: an unclosed block counts every token.
    fn reasoning_tokens(&self) -> Option<usize> {
        self.parser.as_ref()?;
        Some(
            self.n_reasoning_tokens
                .unwrap_or(self.usage.completion_tokens.max(self.n_tokens)),
        )
    }
}

/// Formats chat events, as chunks or into one response.
struct ChatWriter {
    meta: ChatMeta,
    choices: Vec<ChoiceState>,
}

impl ChatWriter {
    /// Non-streaming: gathers an event into its choice.
    fn absorb(&mut self, event: Event) {
        let (index, released, logprobs) = self.apply(event);
        let Some(choice) = self.choices.get_mut(index) else {
            return;
        };
        choice.reasoning.push_str(&released.reasoning);
        choice.content.push_str(&released.content);
        choice.calls.extend(released.calls);
        choice.logprobs.extend(logprobs);
    }

    /// Applies an event to its choice; returns the choice, the released text and calls,
    /// and the event's logprobs.
    fn apply(&mut self, event: Event) -> (usize, Released, Vec<TokenLogprob>) {
        match event {
            Event::Token {
                index,
                token_ids,
                text,
                logprobs,
            } => match self.choices.get_mut(index) {
                Some(choice) => (index, choice.push(&text, token_ids.len()), logprobs),
                None => (index, Released::default(), Vec::new()),
            },
            Event::Finished {
                index,
                reason,
                matched_stop,
                usage,
            } => match self.choices.get_mut(index) {
                Some(choice) => (
                    index,
                    choice.finish(reason, matched_stop, usage),
                    Vec::new(),
                ),
                None => (index, Released::default(), Vec::new()),
            },
        }
    }

    /// The wire form of call `number` of choice `index`; ids are unique per request.
    fn call_body(
        &self,
        index: usize,
        number: usize,
        call: ToolCall,
        streamed: bool,
    ) -> ToolCallBody {
        let tail = self
            .meta
            .id
            .rsplit_once("cmpl-")
            .map_or("", |(_, tail)| tail);
        let id = format!("call_{}_{index}_{number}", tail.replace('-', ""));
        ToolCallBody::new(call, id, number, streamed)
    }

    fn usage(&self) -> UsageBody {
        let reasoning_tokens = self
            .choices
            .iter()
            .map(ChoiceState::reasoning_tokens)
            .sum::<Option<usize>>();
        UsageBody::from_sequences(self.choices.iter().map(|c| &c.usage), reasoning_tokens)
    }

    fn into_response(mut self) -> ChatCompletionResponse {
        let usage = self.usage();
        let want_logprobs = self.meta.want_logprobs;
        let choices = std::mem::take(&mut self.choices)
            .into_iter()
            .enumerate()
            .map(|(index, mut choice)| {
                let finish_reason = choice.finish_reason();
                let matched = choice.finish.take().and_then(|(_, matched)| matched);
                let tool_calls: Vec<ToolCallBody> = std::mem::take(&mut choice.calls)
                    .into_iter()
                    .enumerate()
                    .map(|(number, call)| self.call_body(index, number, call, false))
                    .collect();
                let non_empty = |s: String| (!s.is_empty()).then_some(s);
                let reasoning = non_empty(choice.reasoning);
                let content = match choice.parser.is_some() || !tool_calls.is_empty() {
                    true => non_empty(choice.content),
                    false => Some(choice.content),
                };
                ChatChoice {
                    index,
                    message: AssistantMessage {
                        role: "assistant",
                        content,
                        reasoning_content: reasoning.clone(),
                        reasoning,
                        tool_calls,
                    },
                    logprobs: want_logprobs.then(|| ChatLogprobs::from_engine(&choice.logprobs)),
                    finish_reason,
                    matched_stop: matched_stop_json(matched.as_ref()),
                }
            })
            .collect();
        ChatCompletionResponse {
            id: self.meta.id,
            object: "chat.completion",
            created: self.meta.created,
            model: self.meta.model,
            choices,
            usage,
        }
    }

    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<UsageBody>) -> Bytes {
        sse::data_frame(&ChatCompletionChunk {
            id: self.meta.id.clone(),
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: self.meta.model.clone(),
            choices,
            usage,
        })
    }

    /// The delta of released text and calls; calls are numbered after `n_before`.
    fn delta(&self, index: usize, released: Released, n_before: usize) -> ChunkDelta {
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let reasoning = non_empty(released.reasoning);
        let calls: Vec<ToolCallBody> = released
            .calls
            .into_iter()
            .enumerate()
            .map(|(k, call)| self.call_body(index, n_before + k, call, true))
            .collect();
        ChunkDelta {
            role: None,
            content: non_empty(released.content),
            reasoning_content: reasoning.clone(),
            reasoning,
            tool_calls: (!calls.is_empty()).then_some(calls),
        }
    }
}

impl ChunkWriter for ChatWriter {
    /// Each choice opens with its role, as OpenAI's streams do.
    fn start(&mut self) -> Vec<Bytes> {
        (0..self.choices.len())
            .map(|index| {
                let delta = ChunkDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..ChunkDelta::default()
                };
                let choice = ChunkChoice {
                    index,
                    delta,
                    logprobs: None,
                    finish_reason: None,
                    matched_stop: None,
                };
                self.chunk(vec![choice], None)
            })
            .collect()
    }

    fn on_event(&mut self, event: Event) -> Vec<Bytes> {
        let finished = matches!(event, Event::Finished { .. });
        let index = match &event {
            Event::Token { index, .. } | Event::Finished { index, .. } => *index,
        };
        let Some(n_before) = self.choices.get(index).map(|c| c.n_calls) else {
            return Vec::new();
        };
        let (index, released, logprobs) = self.apply(event);
        let delta = self.delta(index, released, n_before);
        if !finished && delta == ChunkDelta::default() && logprobs.is_empty() {
            return Vec::new();
        }
        let choice = &self.choices[index];
        let matched = choice
            .finish
            .as_ref()
            .and_then(|(_, matched)| matched.as_ref());
        let chunk_choice = ChunkChoice {
            index,
            delta,
            logprobs: self
                .meta
                .want_logprobs
                .then(|| ChatLogprobs::from_engine(&logprobs)),
            finish_reason: finished.then(|| choice.finish_reason()),
            matched_stop: matched_stop_json(matched.filter(|_| finished)),
        };
        vec![self.chunk(vec![chunk_choice], None)]
    }

    fn end(&mut self) -> Vec<Bytes> {
        if !self.meta.include_usage {
            return Vec::new();
        }
        vec![self.chunk(Vec::new(), Some(self.usage()))]
    }
}

#[cfg(test)]
#[path = "chat_tests.rs"]
mod tests;
