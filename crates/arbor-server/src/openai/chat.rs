//! Wire types of `POST /v1/chat/completions`: the request with its messages, the
//! non-streaming response, and the streamed `chat.completion.chunk`.

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use super::common::{SamplingFields, StreamOptions, UsageBody};
use super::logprobs::ChatLogprobs;
use super::tools::ToolCallBody;
use crate::error::ApiError;

/// A chat completion request. Unknown fields are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatCompletionRequest {
    /// Must name a served model when given.
    pub model: Option<String>,
    /// The conversation, oldest first; at least one message.
    pub messages: Vec<ChatMessage>,
    /// Stream chunks as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Choices to generate; default 1.
    pub n: Option<u32>,
    /// Most output tokens per choice (older spelling).
    pub max_tokens: Option<u64>,
    /// Most output tokens per choice (newer spelling; wins over `max_tokens`).
    pub max_completion_tokens: Option<u64>,
    /// Return the logprob of each output token.
    #[serde(default)]
    pub logprobs: bool,
    /// Alternatives per token (0 to 20); needs `logprobs: true`.
    pub top_logprobs: Option<u64>,
    /// Render the template's opening of the assistant turn (vLLM extension); default true.
    pub add_generation_prompt: Option<bool>,
    /// Tool schemas, passed to the chat template as `tools`; with a tool-call parser
    /// on, calls in the answer come back as `tool_calls`.
    pub tools: Option<Vec<Json>>,
    /// `none`, `auto` (the default with tools), `required` or a named function (the
    /// last two constrain the output to a call).
    pub tool_choice: Option<Json>,
    /// `false` keeps only the first tool call of each choice.
    pub parallel_tool_calls: Option<bool>,
    /// Extra chat-template variables (vLLM extension), such as `enable_thinking`.
    pub chat_template_kwargs: Option<serde_json::Map<String, Json>>,
    /// Sampling fields shared with text completions.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

impl ChatCompletionRequest {
    /// The output limit, whichever spelling the client used.
    pub fn max_tokens(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Alternatives per token the engine should report, `None` for no logprobs.
    pub fn engine_logprobs(&self) -> Result<Option<u64>, ApiError> {
        match (self.logprobs, self.top_logprobs) {
            (true, top) => Ok(Some(top.unwrap_or(0))),
            (false, None | Some(0)) => Ok(None),
            (false, Some(_)) => Err(ApiError::invalid_value(
                "top_logprobs",
                "top_logprobs needs logprobs set to true",
            )),
        }
    }
}

/// One message of the conversation.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or a list of parts of which only `text` parts are supported; may be null
    /// for an assistant message that only called tools.
    pub content: Option<MessageContent>,
    /// Optional participant name.
    pub name: Option<String>,
    /// Earlier reasoning of an assistant turn; templates may drop it.
    pub reasoning_content: Option<String>,
    /// Tool calls of an assistant turn, passed to the template as given.
    pub tool_calls: Option<Json>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
}

/// `content`: a string or an array of typed parts.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Typed parts such as `{"type": "text", "text": "..."}`.
    Parts(Vec<ContentPart>),
}

/// One part of an array `content`.
#[derive(Clone, Debug, Deserialize)]
pub struct ContentPart {
    /// The part's type; only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// Turns the messages into the JSON objects a chat template reads: `content` flattened
/// to a string (text parts joined), `developer` read as `system`, other fields kept.
pub fn template_messages(messages: &[ChatMessage]) -> Result<Vec<Json>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_value(
            "messages",
            "messages must not be empty",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(idx, message)| template_message(idx, message))
        .collect()
}

fn template_message(idx: usize, message: &ChatMessage) -> Result<Json, ApiError> {
    let role = match message.role.as_str() {
        "developer" => "system",
        "system" | "user" | "assistant" | "tool" => message.role.as_str(),
        other => {
            let param = format!("messages[{idx}].role");
            return Err(ApiError::invalid_value(
                &param,
                format!("unknown role {other:?}"),
            ));
        }
    };
    let content = match &message.content {
        None => Json::Null,
        Some(MessageContent::Text(text)) => Json::String(text.clone()),
        Some(MessageContent::Parts(parts)) => Json::String(join_text_parts(idx, parts)?),
    };
    let mut out = json!({ "role": role, "content": content });
    let fields = [
        ("name", message.name.clone().map(Json::String)),
        (
            "reasoning_content",
            message.reasoning_content.clone().map(Json::String),
        ),
        ("tool_calls", message.tool_calls.clone()),
        (
            "tool_call_id",
            message.tool_call_id.clone().map(Json::String),
        ),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            out[key] = value;
        }
    }
    Ok(out)
}

fn join_text_parts(idx: usize, parts: &[ContentPart]) -> Result<String, ApiError> {
    let mut text = String::new();
    for (part_idx, part) in parts.iter().enumerate() {
        match (part.kind.as_str(), &part.text) {
            ("text", Some(t)) => text.push_str(t),
            (kind, _) => {
                let param = format!("messages[{idx}].content[{part_idx}]");
                let message = format!("content part of type {kind:?} is not supported (text only)");
                return Err(ApiError::invalid_value(&param, message));
            }
        }
    }
    Ok(text)
}

/// The non-streaming response.
#[derive(Clone, Debug, Serialize)]
pub struct ChatCompletionResponse {
    /// `chatcmpl-...`, unique per request.
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds when the request arrived.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// One per sequence, by `index`.
    pub choices: Vec<ChatChoice>,
    /// Token counts over all choices.
    pub usage: UsageBody,
}

/// One choice of a non-streaming response.
#[derive(Clone, Debug, Serialize)]
pub struct ChatChoice {
    /// Position among the request's `n` choices.
    pub index: usize,
    /// The assistant's message.
    pub message: AssistantMessage,
    /// Token logprobs when asked for, else null.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length`, `tool_calls` or `abort`.
    pub finish_reason: String,
    /// The stop string (or token id) that ended the choice, as SGLang reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_stop: Option<Json>,
}

/// The generated assistant message.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The answer; null when everything went to reasoning.
    pub content: Option<String>,
    /// Text before `</think>` when a reasoning parser is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The same text under the newer field name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// Calls the model made, when a tool-call parser found any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallBody>,
}

/// One streamed chunk.
#[derive(Clone, Debug, Serialize)]
pub struct ChatCompletionChunk {
    /// Same id for every chunk of a request.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds when the request arrived.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// Usually one delta; empty in the final usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Only in the last chunk, when `stream_options.include_usage` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageBody>,
}

/// The delta of one choice in a chunk.
#[derive(Clone, Debug, Serialize)]
pub struct ChunkChoice {
    /// Which choice this delta extends.
    pub index: usize,
    /// The new text.
    pub delta: ChunkDelta,
    /// Logprobs of the tokens in this delta when asked for, else null.
    pub logprobs: Option<ChatLogprobs>,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<String>,
    /// The stop string (or token id) that ended the choice, on its last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_stop: Option<Json>,
}

/// New text of one choice; absent fields did not change.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChunkDelta {
    /// `assistant` in each choice's first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New answer text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// New reasoning text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// New reasoning text, newer field name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// Calls completed since the last chunk, each whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallBody>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    #[test]
    fn request_reads_openai_fields_and_sampling_extensions() {
        let body = br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "stream": true, "stream_options": {"include_usage": true}, "n": 2,
            "max_tokens": 5, "max_completion_tokens": 7, "logprobs": true,
            "top_logprobs": 3, "temperature": 0.2, "top_k": 5, "tools": []}"#;
        let req: ChatCompletionRequest = parse(body).unwrap();
        assert!(req.stream && req.stream_options.as_ref().unwrap().include_usage);
        assert_eq!(req.max_tokens(), Some(7));
        assert_eq!(req.engine_logprobs().unwrap(), Some(3));
        assert_eq!(req.sampling.temperature, Some(0.2));
        assert_eq!(req.sampling.top_k, Some(5));
    }

    #[test]
    fn wrong_typed_flattened_field_is_a_bad_request_naming_it() {
        let body = br#"{"messages": [], "temperature": "hot"}"#;
        match parse::<ChatCompletionRequest>(body).unwrap_err() {
            ApiError::BadRequest { code, message, .. } => {
                assert_eq!(code, "invalid_type");
                assert!(message.contains("temperature") || message.contains("invalid type"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn top_logprobs_without_logprobs_is_refused() {
        let body = br#"{"messages": [], "top_logprobs": 2}"#;
        let req: ChatCompletionRequest = parse(body).unwrap();
        assert!(req.engine_logprobs().is_err());
    }

    #[test]
    fn text_parts_are_joined_and_developer_reads_as_system() {
        let body = br#"{"messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#;
        let req: ChatCompletionRequest = parse(body).unwrap();
        let messages = template_messages(&req.messages).unwrap();
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(messages[1], json!({"role": "user", "content": "ab"}));
    }

    #[test]
    fn image_parts_unknown_roles_and_empty_conversations_are_refused() {
        let image = br#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#;
        let req: ChatCompletionRequest = parse(image).unwrap();
        assert!(template_messages(&req.messages).is_err());
        let role = br#"{"messages": [{"role": "wizard", "content": "x"}]}"#;
        let req: ChatCompletionRequest = parse(role).unwrap();
        assert!(template_messages(&req.messages).is_err());
        assert!(template_messages(&[]).is_err());
    }

    #[test]
    fn chunk_delta_leaves_out_unchanged_fields() {
        let delta = ChunkDelta {
            content: Some("x".into()),
            ..ChunkDelta::default()
        };
        assert_eq!(
            serde_json::to_value(delta).unwrap(),
            json!({"content": "x"})
        );
    }
}
