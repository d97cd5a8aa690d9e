//! OpenAI wire types: what `/v1/chat/completions` and `/v1/completions` accept and
//! answer, and the validation that turns a request into the engine's `SamplingParams`.

pub mod chat;
pub mod common;
pub mod completions;
pub mod logprobs;
pub mod render;
pub mod tools;

pub use chat::{ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse};
pub use common::{PromptLimits, SamplingFields, UsageBody, build_params, check_n};
pub use completions::{CompletionRequest, CompletionResponse};
pub use logprobs::{ChatLogprobs, CompletionLogprobs};
pub use tools::{ForcedCall, ToolCallBody, ToolMode, forced_call_constraint, tool_mode};
