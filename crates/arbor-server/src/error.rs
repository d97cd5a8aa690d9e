//! `ApiError`: every way a request can fail at the HTTP boundary, and how each one turns
//! into a status code plus OpenAI-style error JSON:
//!
//! ```json
//! {"error": {"message": "...", "type": "invalid_request_error", "param": "top_p", "code": "invalid_value"}}
//! ```
//!
//! Messages are safe to show to clients; internal detail goes to the log instead.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use arbor_engine::EngineError;

/// Seconds a client is told to wait (`Retry-After`) when the queue is full.
pub const RETRY_AFTER_SECS: u64 = 1;

/// A failed request. Each variant fixes the HTTP status and the error `type`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong: bad JSON, a wrong-typed or out-of-range field, a prompt
    /// that does not fit. `param` names the field when one is at fault; `code` is a
    /// stable machine-readable reason such as `invalid_value`.
    #[error("{message}")]
    BadRequest {
        /// What is wrong, for the client.
        message: String,
        /// The field at fault, if any (`"messages"`, `"top_p"`, `"stop[1]"`).
        param: Option<String>,
        /// A stable reason such as `invalid_json`, `invalid_type`, `invalid_value`.
        code: &'static str,
    },
    /// No or a wrong `Authorization: Bearer` key while the server requires one.
    #[error("invalid or missing api key")]
    Unauthorized,
    /// The request names a model this server does not serve: 404 with code
    /// `model_not_found`, as OpenAI and vLLM answer.
    #[error("the model {requested:?} does not exist; this server serves {served:?}")]
    ModelNotFound {
        /// The name the client asked for.
        requested: String,
        /// The name responses report.
        served: String,
    },
    /// No route for this path.
    #[error("no route for {0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body is larger than the server's limit.
    #[error("request body is larger than the limit of {limit_bytes} bytes")]
    PayloadTooLarge {
        /// The configured limit in bytes.
        limit_bytes: usize,
    },
    /// The operation conflicts with work in progress (flushing the cache while requests
    /// run).
    #[error("{0}")]
    Conflict(String),
    /// The engine's waiting queue is full; retry later.
    #[error("server is overloaded: too many waiting requests (limit {limit})")]
    Overloaded {
        /// The engine's queue limit, in requests.
        limit: usize,
    },
    /// The engine cannot serve requests any more (it stopped or is shutting down).
    #[error("engine is not available")]
    Unavailable,
    /// Something failed on our side; the detail went to the log.
    #[error("internal server error")]
    Internal,
}

impl ApiError {
    /// A 400 for a field with an invalid value.
    pub fn invalid_value(param: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: Some(param.to_string()),
            code: "invalid_value",
        }
    }

    /// A 400 with a given code and an optional field name.
    pub fn bad_request(
        message: impl Into<String>,
        param: Option<&str>,
        code: &'static str,
    ) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: param.map(str::to_string),
            code,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotFound { .. } | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Overloaded { .. } | ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable `type` string of the error JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. }
            | ApiError::ModelNotFound { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::MethodNotAllowed => "invalid_request_error",
            ApiError::Unauthorized => "authentication_error",
            ApiError::NotFound(_) => "not_found_error",
            ApiError::Conflict(_) => "conflict_error",
            ApiError::Overloaded { .. } => "overloaded_error",
            ApiError::Unavailable | ApiError::Internal => "server_error",
        }
    }

    /// The error JSON body: `{"error": {message, type, param, code}}`.
    pub fn body(&self) -> ErrorBody {
        let (param, code) = match self {
            ApiError::BadRequest { param, code, .. } => (param.clone(), Some(*code)),
            ApiError::ModelNotFound { .. } => (Some("model".to_string()), Some("model_not_found")),
            ApiError::Unauthorized => (None, Some("invalid_api_key")),
            ApiError::PayloadTooLarge { .. } => (None, Some("request_too_large")),
            ApiError::Overloaded { .. } => (None, Some("queue_full")),
            ApiError::Conflict(_) => (None, Some("busy")),
            _ => (None, None),
        };
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind: self.kind(),
                param,
                code,
            },
        }
    }
}

/// The JSON an error is answered with.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The one error.
    pub error: ErrorDetail,
}

/// The fields of an OpenAI error.
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    /// Human-readable, safe to show.
    pub message: String,
    /// Stable category, such as `invalid_request_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault, or null.
    pub param: Option<String>,
    /// A stable reason, or null.
    pub code: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::debug!(status = status.as_u16(), error = %self, "request refused");
        }
        let retry_after = matches!(self, ApiError::Overloaded { .. });
        let mut response = (status, axum::Json(self.body())).into_response();
        if retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::EmptyPrompt => {
                ApiError::bad_request("prompt is empty", Some("prompt"), "invalid_value")
            }
            EngineError::PromptTooLong { .. } | EngineError::TooLargeForCache { .. } => {
                ApiError::bad_request(err.to_string(), None, "context_length_exceeded")
            }
            EngineError::TokenOutOfRange { .. } => {
                ApiError::bad_request(err.to_string(), Some("prompt"), "invalid_value")
            }
            EngineError::InvalidParams(message) => {
                ApiError::bad_request(message, None, "invalid_value")
            }
            EngineError::QueueFull { limit } => ApiError::Overloaded { limit },
            EngineError::Busy => {
                ApiError::Conflict("requests are running; retry when they finish".to_string())
            }
            EngineError::Stopped => ApiError::Unavailable,
            EngineError::Load(_) | EngineError::Forward(_) => {
                tracing::error!(error = %err, "engine failure");
                ApiError::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn json_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn bad_request_renders_openai_error_json() {
        let response = ApiError::invalid_value("top_p", "top_p must be in (0, 1]").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let json = json_of(response).await;
        assert_eq!(json["error"]["message"], "top_p must be in (0, 1]");
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert_eq!(json["error"]["param"], "top_p");
        assert_eq!(json["error"]["code"], "invalid_value");
    }

    #[tokio::test]
    async fn queue_full_is_503_with_retry_after() {
        let response = ApiError::from(EngineError::QueueFull { limit: 3 }).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let json = json_of(response).await;
        assert_eq!(json["error"]["type"], "overloaded_error");
        assert!(json["error"]["param"].is_null());
    }

    #[tokio::test]
    async fn unknown_model_is_404_naming_the_model_field() {
        let err = ApiError::ModelNotFound {
            requested: "gpt-4o".into(),
            served: "smollm2".into(),
        };
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let json = json_of(response).await;
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert_eq!(json["error"]["param"], "model");
        assert_eq!(json["error"]["code"], "model_not_found");
    }

    #[test]
    fn engine_errors_map_to_client_or_server_statuses() {
        let too_long = EngineError::PromptTooLong {
            n_tokens: 10,
            limit: 5,
        };
        assert_eq!(ApiError::from(too_long).status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            ApiError::from(EngineError::Busy).status(),
            StatusCode::CONFLICT
        );
        let stopped = ApiError::from(EngineError::Stopped);
        assert_eq!(stopped.status(), StatusCode::SERVICE_UNAVAILABLE);
        let forward = ApiError::from(EngineError::Forward("nan".into()));
        assert_eq!(forward.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(forward.to_string(), "internal server error");
    }
}
