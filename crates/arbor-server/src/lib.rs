//! Arbor's OpenAI-compatible HTTP server: axum routes over an [`arbor_engine::Engine`].
//!
//! A request travels: [`auth`] (API key) and the body limit, then a handler in
//! [`routes`] that parses the body ([`json`]), checks it against the model
//! ([`openai`], [`state`]), renders and tokenizes the prompt, submits it to the engine,
//! and turns the engine's events into one JSON response or an SSE stream ([`stream`],
//! [`sse`]), splitting reasoning from answers and tool calls from text on the way
//! ([`reasoning`], [`tools`]). [`track`]
//! logs each finished request and feeds [`metrics`]. Every failure is an
//! [`ApiError`]: a status plus OpenAI error JSON.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
//! `POST /generate` (SGLang), `POST /tokenize`, `POST /detokenize` (vLLM),
//! `POST /flush_cache`, `GET /health`, `GET /metrics` (Prometheus).

pub mod auth;
pub mod error;
pub mod json;
pub mod metrics;
pub mod openai;
pub mod reasoning;
pub mod routes;
pub mod sse;
pub mod state;
pub mod stream;
#[cfg(test)]
mod test_support;
pub mod tools;
pub mod track;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use error::ApiError;
pub use reasoning::ReasoningParserKind;
pub use routes::router;
pub use state::{AppState, DEFAULT_MAX_BODY_BYTES, ServerConfig};
pub use tools::ToolParserKind;

/// How long in-flight requests may run on after a shutdown signal before the engine
/// aborts them.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `state` on `listener` until `shutdown` resolves, then shuts down gracefully:
/// no new connections are accepted, in-flight requests get `grace` to finish, and after
/// that the engine aborts them (their streams end with `finish_reason: "abort"`), so
/// no connection hangs. The engine itself is shut down before this returns.
pub async fn serve<F>(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: F,
    grace: Duration,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let engine = state.engine.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!(
            grace_s = grace.as_secs_f64(),
            "shutting down: finishing in-flight requests"
        );
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            tracing::warn!("shutdown grace period over: aborting in-flight requests");
            let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        });
    };
    let result = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(signal)
        .await;
    let engine = state.engine.clone();
    let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    result
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
