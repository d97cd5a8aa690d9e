//! The small routes: `GET /v1/models`, `GET /health`, `GET /metrics` and
//! `POST /flush_cache`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::{AppState, unix_now};

/// Handles `GET /v1/models`: the served model names, each with its context length.
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let created = unix_now();
    let root = state.engine.model_info().name.clone();
    let max_model_len = state.max_context_tokens();
    let names: Vec<String> = if state.config.served_model_names.is_empty() {
        vec![root.clone()]
    } else {
        state.config.served_model_names.clone()
    };
    let data: Vec<Value> = names
        .into_iter()
        .map(|id| {
            json!({
                "id": id,
                "object": "model",
                "created": created,
                "owned_by": "arbor",
                "root": root,
                "max_model_len": max_model_len,
            })
        })
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

/// Handles `GET /health`: 200 with an empty body while the engine runs.
pub async fn health() -> StatusCode {
    StatusCode::OK
}

/// Handles `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state
        .metrics
        .render(&state.engine.stats(), state.model_name());
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Handles `POST /flush_cache`: empties the radix cache, or 409 while requests run.
pub async fn flush_cache(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    state.engine.flush_cache().await?;
    tracing::info!("radix cache flushed");
    Ok(Json(json!({ "message": "cache flushed" })))
}
