//! The router: which handler serves which path, and the layers every request passes
//! (API key, body-size limit). Unknown paths and methods answer OpenAI error JSON too.

pub mod chat;
pub mod completions;
pub mod generate;
pub mod info;
pub mod tokenize;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::routing::{get, post};
use axum::{Extension, Router, middleware};
use serde_json::Value;

use arbor_engine::StopMatch;

use crate::auth::require_api_key;
use crate::error::ApiError;
use crate::json::BodyLimit;
use crate::state::AppState;

/// Builds the HTTP router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(info::list_models))
        .route("/generate", post(generate::generate))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/flush_cache", post(info::flush_cache))
        .route("/health", get(info::health))
        .route("/metrics", get(info::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(Extension(BodyLimit(limit)))
        .with_state(state)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(request.uri().path().to_string())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// `matched_stop` as SGLang reports it: the stop string, or the stop token id.
pub(crate) fn matched_stop_json(matched: Option<&StopMatch>) -> Option<Value> {
    match matched? {
        StopMatch::TokenId(id) => Some(Value::from(*id)),
        StopMatch::Text(text) => Some(Value::from(text.as_str())),
    }
}
