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

/// Bodies up to this size (bytes) get a second look for the field at fault when the
/// first parse cannot name it; see `blame_top_level_field`.
const MAX_BLAME_BYTES: usize = 64 << 10;

/// Top-level fields up to this count get that second look.
const MAX_BLAME_FIELDS: usize = 64;

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
        let param = match (code, path.as_str()) {
            ("invalid_type", ".") => blame_top_level_field::<T>(bytes),
            ("invalid_type", _) => Some(path),
            _ => None,
        };
        let message = match (&param, code) {
            (Some(param), _) => format!("invalid field {param}: {inner}"),
            (None, "invalid_type") => format!("invalid request body: {inner}"),
            (None, _) => format!("invalid JSON body: {inner}"),
        };
        ApiError::BadRequest {
            message,
            param,
            code,
        }
    })
}

/// The top-level field to blame for an error that carries no path: serde loses the
/// path inside `#[serde(flatten)]` structs (such as the sampling fields every
/// completion request flattens). The first field whose removal makes the error go away
/// or change, other than into "missing field" for that same field (an innocent required
/// field), is to blame. `None` when none is, or the body is too large for the retries
/// to be cheap.
fn blame_top_level_field<T: DeserializeOwned>(bytes: &[u8]) -> Option<String> {
    if bytes.len() > MAX_BLAME_BYTES {
        return None;
    }
    let serde_json::Value::Object(mut fields) = serde_json::from_slice(bytes).ok()? else {
        return None;
    };
    if fields.len() > MAX_BLAME_FIELDS {
        return None;
    }
    let error_of = |fields: &serde_json::Map<String, serde_json::Value>| {
        let value = serde_json::Value::Object(fields.clone());
        serde_json::from_value::<T>(value)
            .err()
            .map(|err| err.to_string())
    };
    let original = error_of(&fields)?;
    let keys: Vec<String> = fields.keys().cloned().collect();
    for key in keys {
        let removed = fields.remove(&key).expect("key listed from this map");
        let missing_itself = format!("missing field `{key}`");
        match error_of(&fields) {
            None => return Some(key),
            Some(error) if error != original && !error.starts_with(&missing_itself) => {
                return Some(key);
            }
            Some(_) => {}
        }
        fields.insert(key, removed);
    }
    None
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
        assert_eq!(
            code_and_param(err),
            ("invalid_type", Some("temperature".into()))
        );
        let err = parse::<Body>(br#"{"stop": ["a", 3]}"#).unwrap_err();
        assert_eq!(
            code_and_param(err),
            ("invalid_type", Some("stop[1]".into()))
        );
    }

    #[derive(Debug, serde::Deserialize)]
    struct Flattened {
        #[allow(dead_code)]
        prompt: String,
        #[serde(flatten)]
        #[allow(dead_code)]
        sampling: Body,
    }

    #[test]
    fn wrong_typed_field_inside_a_flattened_struct_is_named() {
        let err = parse::<Flattened>(br#"{"prompt": "x", "temperature": "hot"}"#).unwrap_err();
        assert_eq!(
            code_and_param(err),
            ("invalid_type", Some("temperature".into()))
        );
        let err = parse::<Flattened>(br#"{"prompt": "x", "stop": ["a", 3]}"#).unwrap_err();
        assert_eq!(code_and_param(err), ("invalid_type", Some("stop".into())));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = parse::<Body>(br#"{"temperature": 0.5, "user": "x"}"#).unwrap();
        assert_eq!(body.temperature, Some(0.5));
    }
}
