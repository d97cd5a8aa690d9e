//! `POST /tokenize` and `POST /detokenize`, shaped like vLLM's: tokenize a `prompt`, or
//! `messages` rendered with the chat template (and `add_generation_prompt`), and get
//! `tokens`, `count` and `max_model_len`; detokenize `tokens` back to a `prompt`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use arbor_models::chat_template::RenderOptions;

use crate::error::ApiError;
use crate::json::ApiJson;
use crate::openai::chat::{ChatMessage, template_messages};
use crate::state::AppState;

/// The body of `POST /tokenize`: exactly one of `prompt` and `messages`.
#[derive(Clone, Debug, Deserialize)]
pub struct TokenizeBody {
    /// Must name a served model when given.
    pub model: Option<String>,
    /// Text to tokenize.
    pub prompt: Option<String>,
    /// Chat messages, rendered with the chat template first.
    pub messages: Option<Vec<ChatMessage>>,
    /// Open the assistant turn at the end of rendered messages; default true.
    pub add_generation_prompt: Option<bool>,
    /// Add the tokenizer's special tokens (BOS); default true for a prompt and false
    /// for messages, whose template writes them.
    pub add_special_tokens: Option<bool>,
    /// Also return each token's vocabulary text.
    #[serde(default)]
    pub return_token_strs: bool,
}

/// The answer of `POST /tokenize`.
#[derive(Debug, Serialize)]
pub struct TokenizeResponse {
    /// Number of tokens.
    pub count: usize,
    /// Tokens one sequence may hold.
    pub max_model_len: usize,
    /// The token ids.
    pub tokens: Vec<u32>,
    /// Vocabulary text of each token, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_strs: Option<Vec<String>>,
}

/// Handles `POST /tokenize`.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<TokenizeBody>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    state.check_model(body.model.as_deref())?;
    let tokens = match (&body.prompt, &body.messages) {
        (Some(prompt), None) => state.encode(prompt, body.add_special_tokens.unwrap_or(true))?,
        (None, Some(messages)) => {
            let options = RenderOptions {
                add_generation_prompt: body.add_generation_prompt.unwrap_or(true),
                ..RenderOptions::default()
            };
            let text = state.render_chat(&template_messages(messages)?, &options)?;
            state.encode(&text, body.add_special_tokens.unwrap_or(false))?
        }
        _ => {
            let message = "give exactly one of prompt and messages";
            return Err(ApiError::invalid_value("prompt", message));
        }
    };
    let token_strs = if body.return_token_strs {
        let tokenizer = state.tokenizer()?;
        Some(
            tokens
                .iter()
                .map(|&id| tokenizer.id_to_token(id).unwrap_or_default())
                .collect(),
        )
    } else {
        None
    };
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len: state.max_context_tokens(),
        tokens,
        token_strs,
    }))
}

/// The body of `POST /detokenize`.
#[derive(Clone, Debug, Deserialize)]
pub struct DetokenizeBody {
    /// Must name a served model when given.
    pub model: Option<String>,
    /// Token ids to turn into text.
    pub tokens: Vec<u32>,
}

/// The answer of `POST /detokenize`.
#[derive(Debug, Serialize)]
pub struct DetokenizeResponse {
    /// The text of the tokens, special tokens included.
    pub prompt: String,
}

/// Handles `POST /detokenize`.
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<DetokenizeBody>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    state.check_model(body.model.as_deref())?;
    let prompt = state.decode(&body.tokens, false)?;
    Ok(Json(DetokenizeResponse { prompt }))
}
