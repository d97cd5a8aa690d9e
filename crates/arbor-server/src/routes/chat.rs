//! `POST /v1/chat/completions`: render the messages with the chat template, tokenize,
//! submit, then answer with one JSON response or a stream of `chat.completion.chunk`s.
//! With a reasoning parser on, each choice's text is split into `reasoning_content`
//! (also sent as `reasoning`) and `content`, the same way in both modes.

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
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs, UsageBody,
    build_params, check_n,
};
use crate::reasoning::{ReasoningDelta, ReasoningParser, ReasoningParserKind};
use crate::sse;
use crate::state::{AppState, unix_now};
use crate::stream::{ChunkWriter, Submitted, collect, sse_response, submit_all};

/// Handles `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let created = unix_now();
    state.check_model(request.model.as_deref())?;
    let messages = template_messages(&request.messages)?;
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
    let params = build_params(&request.sampling, request.max_tokens(), logprobs, &limits)?;
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
    let choices = (0..n)
        .map(|_| ChoiceState::new(state.config.reasoning_parser))
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

/// One choice's progress: its reasoning split, token counts and, when not streaming,
/// the text gathered so far.
struct ChoiceState {
    parser: Option<ReasoningParser>,
    n_tokens: usize,
    /// Output tokens up to the event that closed the reasoning; `None` while open.
    n_reasoning_tokens: Option<usize>,
    reasoning: String,
    content: String,
    logprobs: Vec<TokenLogprob>,
    finish: Option<(FinishReason, Option<StopMatch>)>,
    usage: Usage,
}

impl ChoiceState {
    fn new(parser: Option<ReasoningParserKind>) -> Self {
        Self {
            parser: parser.map(ReasoningParserKind::parser),
            n_tokens: 0,
            n_reasoning_tokens: None,
            reasoning: String::new(),
            content: String::new(),
            logprobs: Vec::new(),
            finish: None,
            usage: Usage::default(),
        }
    }

    /// Splits new text; counts reasoning tokens up to the event that closes the block.
    fn push(&mut self, text: &str, n_new_tokens: usize) -> ReasoningDelta {
        self.n_tokens += n_new_tokens;
        let Some(parser) = self.parser.as_mut() else {
            return ReasoningDelta {
                reasoning: String::new(),
                content: text.to_string(),
            };
        };
        let was_reasoning = !parser.in_content();
        let delta = parser.push(text);
        if was_reasoning && parser.in_content() {
            self.n_reasoning_tokens = Some(self.n_tokens);
        }
        delta
    }

    fn finish(
        &mut self,
        reason: FinishReason,
        matched: Option<StopMatch>,
        usage: Usage,
    ) -> ReasoningDelta {
        self.finish = Some((reason, matched));
        self.usage = usage;
        self.parser
            .as_mut()
            .map(ReasoningParser::finish)
            .unwrap_or_default()
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
        let (index, delta, logprobs) = self.apply(event);
        let Some(choice) = self.choices.get_mut(index) else {
            return;
        };
        choice.reasoning.push_str(&delta.reasoning);
        choice.content.push_str(&delta.content);
        choice.logprobs.extend(logprobs);
    }

    /// Applies an event to its choice; returns the choice, the released text and the
    /// event's logprobs.
    fn apply(&mut self, event: Event) -> (usize, ReasoningDelta, Vec<TokenLogprob>) {
        match event {
            Event::Token {
                index,
                token_ids,
                text,
                logprobs,
            } => match self.choices.get_mut(index) {
                Some(choice) => (index, choice.push(&text, token_ids.len()), logprobs),
                None => (index, ReasoningDelta::default(), Vec::new()),
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
                None => (index, ReasoningDelta::default(), Vec::new()),
            },
        }
    }

    fn usage(&self) -> UsageBody {
        let reasoning_tokens = self
            .choices
            .iter()
            .map(ChoiceState::reasoning_tokens)
            .sum::<Option<usize>>();
        UsageBody::from_sequences(self.choices.iter().map(|c| &c.usage), reasoning_tokens)
    }

    fn into_response(self) -> ChatCompletionResponse {
        let usage = self.usage();
        let want_logprobs = self.meta.want_logprobs;
        let choices = self
            .choices
            .into_iter()
            .enumerate()
            .map(|(index, choice)| {
                let (reason, matched) =
                    choice.finish.clone().unwrap_or((FinishReason::Abort, None));
                let non_empty = |s: String| (!s.is_empty()).then_some(s);
                let reasoning = non_empty(choice.reasoning);
                let content = match choice.parser {
                    Some(_) => non_empty(choice.content),
                    None => Some(choice.content),
                };
                ChatChoice {
                    index,
                    message: AssistantMessage {
                        role: "assistant",
                        content,
                        reasoning_content: reasoning.clone(),
                        reasoning,
                    },
                    logprobs: want_logprobs.then(|| ChatLogprobs::from_engine(&choice.logprobs)),
                    finish_reason: reason.to_string(),
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
}

fn delta_of(released: ReasoningDelta) -> ChunkDelta {
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    let reasoning = non_empty(released.reasoning);
    ChunkDelta {
        role: None,
        content: non_empty(released.content),
        reasoning_content: reasoning.clone(),
        reasoning,
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
        let (index, released, logprobs) = self.apply(event);
        let Some(choice) = self.choices.get(index) else {
            return Vec::new();
        };
        let delta = delta_of(released);
        if !finished && delta == ChunkDelta::default() && logprobs.is_empty() {
            return Vec::new();
        }
        let finish = choice.finish.clone().filter(|_| finished);
        let chunk_choice = ChunkChoice {
            index,
            delta,
            logprobs: self
                .meta
                .want_logprobs
                .then(|| ChatLogprobs::from_engine(&logprobs)),
            finish_reason: finish.as_ref().map(|(reason, _)| reason.to_string()),
            matched_stop: finish.and_then(|(_, matched)| matched_stop_json(matched.as_ref())),
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
