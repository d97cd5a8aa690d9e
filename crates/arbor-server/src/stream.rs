//! Drives one request's engine event stream to its end, either into an SSE response
//! (chunk by chunk, through a `ChunkWriter` that knows the route's wire format) or into
//! a callback for a non-streaming response.
//!
//! The SSE body owns the engine's `RequestStream` (or, for a batched completion, the
//! merge of several, see [`merge`]): when the client disconnects, hyper drops the body,
//! which drops the streams, which abort their requests and free their pages at the
//! engine's next step.

use std::sync::Arc;

use arbor_engine::{Event, GenerateRequest, RequestId, RequestStream};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::error::ApiError;
use crate::sse;
use crate::state::AppState;
use crate::track::RequestTracker;

/// Turns engine events into SSE frames in one route's wire format.
pub trait ChunkWriter: Send + 'static {
    /// Frames sent before any event (such as each choice's role chunk).
    fn start(&mut self) -> Vec<Bytes> {
        Vec::new()
    }

    /// Frames for one event; empty when it carries nothing to send.
    fn on_event(&mut self, event: Event) -> Vec<Bytes>;

    /// Frames after every sequence finished (such as the usage chunk), before
    /// `[DONE]`.
    fn end(&mut self) -> Vec<Bytes> {
        Vec::new()
    }
}

/// An SSE response streaming `events` through `writer`, ending with `data: [DONE]`. If
/// the engine stream ends before every sequence finished (the engine stopped), an error
/// frame precedes `[DONE]`.
pub fn sse_response<S: EventStream, W: ChunkWriter>(
    events: S,
    writer: W,
    tracker: RequestTracker,
) -> Response {
    let driver = Driver {
        events,
        writer,
        tracker,
        phase: Phase::Start,
    };
    let frames = futures::stream::unfold(driver, |mut driver| async move {
        let frames = driver.next_frames().await?;
        Some((frames, driver))
    });
    sse::response(frames)
}

/// Feeds every event of `events` to `on_event` until the stream ends. Fails with
/// `Unavailable` if it ended before every sequence finished.
pub async fn collect<S: EventStream>(
    events: &mut S,
    tracker: &mut RequestTracker,
    mut on_event: impl FnMut(Event),
) -> Result<(), ApiError> {
    while let Some(event) = events.next().await {
        tracker.observe(&event);
        on_event(event);
    }
    if tracker.is_complete() {
        Ok(())
    } else {
        tracing::warn!("engine event stream ended before every sequence finished");
        Err(ApiError::Unavailable)
    }
}

/// A client request as submitted to the engine: its events (of every prompt, merged),
/// its response id, and the tracker that logs and counts it.
pub struct Submitted {
    /// Events of every sequence, numbered `prompt_index * n + index`.
    pub events: BoxStream<'static, Event>,
    /// The response id, made from the first engine request's id.
    pub id: String,
    /// Follows every sequence of every prompt.
    pub tracker: RequestTracker,
}

/// Submits one engine request per prompt (`requests`, checked already and not empty,
/// all with the same `n`) and tracks them as one client request whose id
/// `response_id` makes from the first one's. If a submit fails, the streams already
/// submitted are dropped, which aborts them.
pub fn submit_all(
    state: &Arc<AppState>,
    requests: Vec<GenerateRequest>,
    response_id: impl FnOnce(RequestId) -> String,
) -> Result<Submitted, ApiError> {
    let n = requests.first().map_or(1, |r| r.n);
    let max_tokens = requests.iter().map(|r| r.params.max_tokens).max();
    let n_prompt_tokens = requests.iter().map(|r| r.prompt_ids.len()).sum();
    let n_sequences = requests.len() * n;
    let mut streams = Vec::with_capacity(requests.len());
    for request in requests {
        streams.push(state.engine.submit(request)?);
    }
    let first = streams.first().expect("at least one prompt").id();
    let id = response_id(first);
    let tracker = RequestTracker::new(
        state.clone(),
        &id,
        n_prompt_tokens,
        max_tokens.unwrap_or_default(),
        n_sequences,
    );
    Ok(Submitted {
        events: merge(streams, n),
        id,
        tracker,
    })
}

/// What the drivers read: engine events of one request, or of several merged.
pub trait EventStream: Stream<Item = Event> + Send + Unpin + 'static {}

impl<S: Stream<Item = Event> + Send + Unpin + 'static> EventStream for S {}

/// The events of several requests with `n` sequences each, as one stream: the events
/// of `streams[p]` are renumbered `p * n + index`, as OpenAI numbers the choices of a
/// batched completion. Events arrive as each request produces them.
pub fn merge(streams: Vec<RequestStream>, n: usize) -> BoxStream<'static, Event> {
    let renumbered = streams.into_iter().enumerate().map(move |(p, stream)| {
        stream.map(move |mut event| {
            match &mut event {
                Event::Token { index, .. } | Event::Finished { index, .. } => *index += p * n,
            }
            event
        })
    });
    futures::stream::select_all(renumbered).boxed()
}

struct Driver<S, W> {
    events: S,
    writer: W,
    tracker: RequestTracker,
    phase: Phase,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Running,
    Done,
}

impl<S: EventStream, W: ChunkWriter> Driver<S, W> {
    /// The next non-empty batch of frames, or `None` after `[DONE]`.
    async fn next_frames(&mut self) -> Option<Bytes> {
        if self.phase == Phase::Start {
            self.phase = Phase::Running;
            let frames = self.writer.start();
            if !frames.is_empty() {
                return Some(concat(frames));
            }
        }
        if self.phase == Phase::Done {
            return None;
        }
        loop {
            let Some(event) = self.events.next().await else {
                self.phase = Phase::Done;
                return Some(self.closing_frames());
            };
            self.tracker.observe(&event);
            let frames = self.writer.on_event(event);
            if !frames.is_empty() {
                return Some(concat(frames));
            }
        }
    }

    fn closing_frames(&mut self) -> Bytes {
        let mut frames = if self.tracker.is_complete() {
            self.writer.end()
        } else {
            tracing::warn!("engine event stream ended before every sequence finished");
            vec![sse::error_frame(&ApiError::Unavailable)]
        };
        frames.push(Bytes::from_static(sse::DONE_FRAME));
        concat(frames)
    }
}

fn concat(frames: Vec<Bytes>) -> Bytes {
    if frames.len() == 1 {
        return frames.into_iter().next().expect("one frame");
    }
    let mut out = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
    for frame in frames {
        out.extend_from_slice(&frame);
    }
    out.freeze()
}
