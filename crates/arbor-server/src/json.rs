//! `ApiJson<T>`: the request-body extractor of every POST route. It reads the body under
//! the router's size limit and parses it as JSON whatever the `Content-Type` (curl's
//! `-d` sends a form type), so that a malformed body, a field of the wrong type or an
//! oversized body all come back as OpenAI error JSON rather than axum's plain text.

use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body, parsed into `T`; rejections are `ApiError`s.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |limit| limit.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit_bytes: limit }
            } else {
                ApiError::bad_request("could not read the request body", None, "invalid_body")
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// The body-size limit in bytes, stored as a request extension so that the 413 message
/// can name it.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// Parses a JSON body, naming the field at fault when one has the wrong type.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let code = match inner.classify() {
            serde_json::error::Category::Data => "invalid_type",
            _ => "invalid_json",
        };
        let param = (path != "." && code == "invalid_type").then_some(path);
        let message = match &param {
            Some(param) => format!("invalid field {param}: {inner}"),
            None => format!("invalid JSON body: {inner}"),
        };
        ApiError::BadRequest {
            message,
            param,
            code,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Body {
        #[allow(dead_code)]
        temperature: Option<f32>,
        #[allow(dead_code)]
        stop: Option<Vec<String>>,
    }

    fn code_and_param(err: ApiError) -> (&'static str, Option<String>) {
        match err {
            ApiError::BadRequest { code, param, .. } => (code, param),
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn malformed_json_is_invalid_json_without_param() {
        let err = parse::<Body>(b"{\"temperature\": ").unwrap_err();
        assert_eq!(code_and_param(err), ("invalid_json", None));
    }

    #[test]
    fn wrong_typed_field_names_its_path() {
        let err = parse::<Body>(br#"{"temperature": "hot"}"#).unwrap_err();
        assert_eq!(code_and_param(err), ("invalid_type", Some("temperature".into())));
        let err = parse::<Body>(br#"{"stop": ["a", 3]}"#).unwrap_err();
        assert_eq!(code_and_param(err), ("invalid_type", Some("stop[1]".into())));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = parse::<Body>(br#"{"temperature": 0.5, "user": "x"}"#).unwrap();
        assert_eq!(body.temperature, Some(0.5));
    }
}
