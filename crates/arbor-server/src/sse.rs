//! Server-sent events as OpenAI streams them: one `data: {json}` frame per chunk, a
//! blank line after each, and a final `data: [DONE]`. An error after the stream has
//! started travels as a `data: {"error": {...}}` frame, since the status line is gone.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;
use serde::Serialize;

use crate::error::ApiError;

/// The frame that ends every OpenAI stream.
pub const DONE_FRAME: &[u8] = b"data: [DONE]\n\n";

/// One `data:` frame holding `value` as JSON.
pub fn data_frame<T: Serialize>(value: &T) -> Bytes {
    let mut out = b"data: ".to_vec();
    // Serializing our own wire types cannot fail: they hold no maps with non-string
    // keys and no types with fallible `Serialize` impls.
    serde_json::to_writer(&mut out, value).expect("wire types serialize to JSON");
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A frame carrying an error in OpenAI's error JSON.
pub fn error_frame(err: &ApiError) -> Bytes {
    data_frame(&err.body())
}

/// A `200 text/event-stream` response whose body is the frames of `frames`. Dropping
/// the body (the client left) drops `frames` and whatever it owns.
pub fn response<S>(frames: S) -> Response
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let body = Body::from_stream(frames.map(Ok::<Bytes, Infallible>));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell proxies such as nginx not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_frame_is_one_json_line_and_a_blank_line() {
        let frame = data_frame(&serde_json::json!({"a": "x\ny"}));
        assert_eq!(&frame[..], b"data: {\"a\":\"x\\ny\"}\n\n");
    }

    #[test]
    fn error_frame_carries_openai_error_json() {
        let frame = error_frame(&ApiError::Internal);
        let text = std::str::from_utf8(&frame).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(text.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(json["error"]["type"], "server_error");
    }

    #[tokio::test]
    async fn response_streams_frames_as_event_stream() {
        let frames = futures::stream::iter(vec![data_frame(&1), Bytes::from_static(DONE_FRAME)]);
        let response = response(frames);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"data: 1\n\ndata: [DONE]\n\n");
    }
}
