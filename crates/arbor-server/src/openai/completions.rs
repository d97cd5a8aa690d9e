//! Wire types of `POST /v1/completions` (text completions): the request, whose prompt is
//! text or token ids, the response and the streamed chunk (both `text_completion`).

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::common::{SamplingFields, StreamOptions, UsageBody};
use super::logprobs::CompletionLogprobs;
use crate::error::ApiError;

/// Output tokens of a text completion that sets no `max_tokens`, as in OpenAI's API.
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

/// A text completion request. Unknown fields are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    /// Must name a served model when given.
    pub model: Option<String>,
    /// Text, token ids, or a list of either (several prompts).
    pub prompt: PromptInput,
    /// Stream chunks as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Choices to generate; default 1.
    pub n: Option<u32>,
    /// Most output tokens per choice; default 16.
    pub max_tokens: Option<u64>,
    /// Alternatives per token (0 to 20): the chosen token's logprob plus this many.
    pub logprobs: Option<u64>,
    /// Put the prompt text in front of each choice's text.
    #[serde(default)]
    pub echo: bool,
    /// Sampling fields shared with chat completions.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `prompt`: any of the four shapes OpenAI accepts.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// One text prompt.
    Text(String),
    /// Several text prompts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Ids(Vec<u32>),
    /// Several prompts as token ids.
    IdLists(Vec<Vec<u32>>),
}

/// One prompt, after the list shapes are unwrapped.
#[derive(Clone, Debug, PartialEq)]
pub enum SinglePrompt {
    /// Text to tokenize.
    Text(String),
    /// Token ids used as given.
    Ids(Vec<u32>),
}

impl PromptInput {
    /// The request's prompts, in order: one, or each of a list (a batched completion,
    /// whose choices are numbered prompt by prompt: `prompt_index * n + choice`).
    pub fn into_prompts(self) -> Result<Vec<SinglePrompt>, ApiError> {
        let prompts: Vec<SinglePrompt> = match self {
            PromptInput::Text(text) => vec![SinglePrompt::Text(text)],
            PromptInput::Ids(ids) => vec![SinglePrompt::Ids(ids)],
            PromptInput::Texts(texts) => texts.into_iter().map(SinglePrompt::Text).collect(),
            PromptInput::IdLists(lists) => lists.into_iter().map(SinglePrompt::Ids).collect(),
        };
        if prompts.is_empty() {
            return Err(ApiError::invalid_value(
                "prompt",
                "prompt must not be empty",
            ));
        }
        Ok(prompts)
    }
}

/// The non-streaming response; also the shape of each streamed chunk.
#[derive(Clone, Debug, Serialize)]
pub struct CompletionResponse {
    /// `cmpl-...`, unique per request.
    pub id: String,
    /// Always `text_completion`.
    pub object: &'static str,
    /// Unix seconds when the request arrived.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// One per sequence by `index` (one per chunk when streaming; empty in the final
    /// usage chunk).
    pub choices: Vec<CompletionChoice>,
    /// Token counts; always in a response, only in the last chunk of a stream with
    /// `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageBody>,
}

/// One choice (or one choice's new text in a chunk).
#[derive(Clone, Debug, Serialize)]
pub struct CompletionChoice {
    /// Position among the request's choices: `prompt_index * n + choice` (just the
    /// choice for one prompt).
    pub index: usize,
    /// The generated text (the new part of it in a chunk).
    pub text: String,
    /// Logprobs when asked for, else null.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop`, `length` or `abort`; null in chunks before the last.
    pub finish_reason: Option<String>,
    /// The stop string (or token id) that ended the choice, as SGLang reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_stop: Option<Json>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    fn prompts_of(json: &[u8]) -> Result<Vec<SinglePrompt>, ApiError> {
        parse::<CompletionRequest>(json)
            .unwrap()
            .prompt
            .into_prompts()
    }

    #[test]
    fn every_prompt_shape_gives_its_prompts_in_order() {
        use SinglePrompt::{Ids, Text};
        assert_eq!(
            prompts_of(br#"{"prompt": "hi"}"#).unwrap(),
            [Text("hi".into())]
        );
        assert_eq!(
            prompts_of(br#"{"prompt": ["hi", "yo"]}"#).unwrap(),
            [Text("hi".into()), Text("yo".into())]
        );
        assert_eq!(
            prompts_of(br#"{"prompt": [1, 2]}"#).unwrap(),
            [Ids(vec![1, 2])]
        );
        assert_eq!(
            prompts_of(br#"{"prompt": [[3], [4, 5]]}"#).unwrap(),
            [Ids(vec![3]), Ids(vec![4, 5])]
        );
    }

    #[test]
    fn an_empty_list_of_prompts_is_refused() {
        let err = prompts_of(br#"{"prompt": []}"#).unwrap_err();
        assert!(
            format!("{err:?}").contains("prompt must not be empty"),
            "{err:?}"
        );
    }

    #[test]
    fn a_prompt_of_the_wrong_type_is_a_bad_request() {
        assert!(parse::<CompletionRequest>(br#"{"prompt": {"x": 1}}"#).is_err());
        assert!(parse::<CompletionRequest>(br#"{"prompt": [-1]}"#).is_err());
        assert!(parse::<CompletionRequest>(br#"{"max_tokens": 3}"#).is_err());
    }
}
