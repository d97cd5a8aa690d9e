//! Drives one request's engine event stream to its end, either into an SSE response
//! (chunk by chunk, through a `ChunkWriter` that knows the route's wire format) or into
//! a callback for a non-streaming response.
//!
//! The SSE body owns the engine's `RequestStream` (or, for a batched completion, the
//! merge of several, see [`merge`]): when the client disconnects, hyper drops the body,
//! which drops the streams, which abort their requests and free their pages at the
//! engine's next step.

use arbor_engine::{Event, RequestStream};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use crate::error::ApiError;
use crate::sse;
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

/// What the drivers read: engine events of one request, or of several merged.
pub trait EventStream: Stream<Item = Event> + Send + Unpin + 'static {}

impl<S: Stream<Item = Event> + Send + Unpin + 'static> EventStream for S {}

/// The events of several requests with `n` sequences each, as one stream: the events
/// of `streams[p]` are renumbered `p * n + index`, as OpenAI numbers the choices of a
/// batched completion. Events arrive as each request produces them.
pub fn merge(streams: Vec<RequestStream>, n: usize) -> impl EventStream {
    let renumbered = streams.into_iter().enumerate().map(move |(p, stream)| {
        stream.map(move |mut event| {
            match &mut event {
                Event::Token { index, .. } | Event::Finished { index, .. } => *index += p * n,
            }
            event
        })
    });
    futures::stream::select_all(renumbered)
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
