//! `Engine`, the handle the async side holds, and `RequestStream`, one request's events.
//!
//! The handle validates a request, sends it to the engine thread over a channel and
//! returns at once; the thread sends events back over the request's own channel. Nothing
//! here blocks an async runtime except `shutdown`, which joins the thread.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use arbor_models::chat_template::ChatTemplate;
use arbor_models::tokenizer::Tokenizer;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::sync::oneshot;

use crate::api::{
    EngineConfig, EngineError, EngineStats, Event, GenerateRequest, ModelInfo, RequestId,
};
use crate::clock::Clock;
use crate::core::{EngineCore, StartOptions, validate_request};
use crate::runner::ModelRunner;
use crate::worker::{self, Command, Shared};

/// Handle to a running engine. Cheap to clone; all clones talk to the same engine
/// thread, which stops when `shutdown` is called or the last clone is dropped.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    commands: Sender<Command>,
    shared: Arc<Shared>,
    info: ModelInfo,
    config: EngineConfig,
    n_pages_total: usize,
    next_id: AtomicU64,
    clock: Arc<dyn Clock>,
    tokenizer: Option<Arc<Tokenizer>>,
    chat_template: Option<ChatTemplate>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Text assets the handle serves to callers (the server tokenizes and templates).
#[derive(Default)]
pub(crate) struct TextAssets {
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub chat_template: Option<ChatTemplate>,
}

impl Engine {
    /// Starts an engine over any `ModelRunner` (the fake model in tests, or an adapter
    /// of your own), with the system clock. Fails if the KV budget gives no page or the
    /// runner cannot allocate it.
    pub fn start(
        runner: Box<dyn ModelRunner>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        Self::start_with(runner, config, StartOptions::default())
    }

    /// Like `start`, with an injected clock and seed.
    pub fn start_with(
        runner: Box<dyn ModelRunner>,
        config: EngineConfig,
        options: StartOptions,
    ) -> Result<Engine, EngineError> {
        Self::spawn(runner, config, options, TextAssets::default())
    }

    pub(crate) fn spawn(
        runner: Box<dyn ModelRunner>,
        config: EngineConfig,
        options: StartOptions,
        assets: TextAssets,
    ) -> Result<Engine, EngineError> {
        let clock = Arc::clone(&options.clock);
        let core = EngineCore::new(runner, config, options)?;
        let shared = Arc::new(Shared {
            stats: Mutex::new(core.stats()),
            n_waiting: AtomicUsize::new(0),
            n_in_channel: AtomicUsize::new(0),
        });
        let info = core.model_info().clone();
        let config = core.config().clone();
        let n_pages_total = core.n_pages_total();
        let (commands, receiver) = channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("arbor-engine".into())
            .spawn(move || worker::run(core, receiver, thread_shared))
            .map_err(|e| EngineError::Load(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            inner: Arc::new(Inner {
                commands,
                shared,
                info,
                config,
                n_pages_total,
                next_id: AtomicU64::new(1),
                clock,
                tokenizer: assets.tokenizer,
                chat_template: assets.chat_template,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Queues a request and returns its event stream; never blocks. Invalid requests and
    /// a full queue are refused here, before anything is queued.
    pub fn submit(&self, request: GenerateRequest) -> Result<RequestStream, EngineError> {
        let inner = &self.inner;
        validate_request(&request, &inner.info, &inner.config, inner.n_pages_total)?;
        let n_waiting = inner.shared.n_waiting.load(Ordering::Acquire)
            + inner.shared.n_in_channel.load(Ordering::Acquire);
        if n_waiting >= inner.config.max_waiting_requests {
            return Err(EngineError::QueueFull {
                limit: inner.config.max_waiting_requests,
            });
        }
        let id = RequestId(inner.next_id.fetch_add(1, Ordering::Relaxed));
        let (events, receiver) = unbounded_channel();
        let n_unfinished = request.n;
        inner.shared.n_in_channel.fetch_add(1, Ordering::AcqRel);
        let submitted_at = inner.clock.now();
        let command = Command::Submit {
            id,
            request: Box::new(request),
            events,
            submitted_at,
        };
        if inner.commands.send(command).is_err() {
            inner.shared.n_in_channel.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::Stopped);
        }
        Ok(RequestStream {
            id,
            events: receiver,
            commands: inner.commands.clone(),
            n_unfinished,
        })
    }

    /// Aborts a request: its sequences finish with `FinishReason::Abort` and release
    /// their pages at the engine's next turn. Unknown or finished ids are ignored.
    pub fn abort(&self, id: RequestId) {
        let _ = self.inner.commands.send(Command::Abort(id));
    }

    /// The statistics published after the engine's last step; never blocks on the
    /// engine thread.
    pub fn stats(&self) -> EngineStats {
        self.inner
            .shared
            .stats
            .lock()
            .expect("stats lock is never poisoned")
            .clone()
    }

    /// Drops every cached prefix not in use. `Busy` while requests run or wait,
    /// `Stopped` if the engine thread is gone.
    pub async fn flush_cache(&self) -> Result<(), EngineError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(Command::FlushCache(reply))
            .map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    /// The model's name, context length, vocabulary size and end-of-sequence ids.
    pub fn model_info(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// The configuration in effect (`max_context_tokens` resolved).
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The model's tokenizer, if it has one (engines started over a bare runner don't).
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.inner.tokenizer.as_deref()
    }

    /// The model's chat template, if it has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.inner.chat_template.as_ref()
    }

    /// Aborts every request and waits for the engine thread to stop. Blocks for at most
    /// one step; later calls to any method see `Stopped`.
    pub fn shutdown(&self) {
        self.inner.stop();
    }
}

impl Inner {
    fn stop(&self) {
        let _ = self.commands.send(Command::Shutdown);
        let thread = self
            .thread
            .lock()
            .expect("thread lock is never poisoned")
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The events of one request, in order: `Token` events and one `Finished` per
/// sequence. The stream ends after the last `Finished`. Dropping it before then aborts
/// the request.
pub struct RequestStream {
    id: RequestId,
    events: UnboundedReceiver<Event>,
    commands: Sender<Command>,
    n_unfinished: usize,
}

impl RequestStream {
    /// The request's id (for `Engine::abort` and logs).
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event, or `None` once every sequence has finished.
    pub async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// The next event, blocking the current thread. Must not be called from inside an
    /// async runtime (use `next` there).
    pub fn blocking_next(&mut self) -> Option<Event> {
        if self.n_unfinished == 0 {
            return None;
        }
        let event = self.events.blocking_recv();
        self.track(event)
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if self.n_unfinished == 0 {
            return Poll::Ready(None);
        }
        self.events.poll_recv(cx).map(|event| self.track(event))
    }

    fn track(&mut self, event: Option<Event>) -> Option<Event> {
        match &event {
            Some(Event::Finished { .. }) => self.n_unfinished -= 1,
            Some(Event::Token { .. }) => {}
            // The engine thread is gone: nothing more will come.
            None => self.n_unfinished = 0,
        }
        event
    }
}

impl futures::Stream for RequestStream {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().poll_event(cx)
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if self.n_unfinished > 0 {
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }
}

impl std::fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStream")
            .field("id", &self.id)
            .field("n_unfinished", &self.n_unfinished)
            .finish()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.inner.info.name)
            .finish_non_exhaustive()
    }
}
