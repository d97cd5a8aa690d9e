//! The engine thread: owns an `EngineCore` and loops over commands and steps. When there
//! is nothing to run it blocks on the command channel (no spinning); while sequences
//! run it drains pending commands between steps. Statistics are published after each
//! step for `Engine::stats`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use tracing::{debug, error};

use crate::api::{
    EngineError, EngineStats, Event, FinishReason, GenerateRequest, RequestId, Usage,
};
use crate::core::EngineCore;

/// A message from the engine handle to the engine thread.
pub(crate) enum Command {
    /// Queue a request (validated by the handle).
    Submit {
        id: RequestId,
        /// Boxed so that the channel's other commands stay small.
        request: Box<GenerateRequest>,
        events: UnboundedSender<Event>,
        submitted_at: Instant,
    },
    /// Abort a request (explicitly, or because its stream was dropped).
    Abort(RequestId),
    /// Drop unlocked cached prefixes; `Busy` while requests run.
    FlushCache(oneshot::Sender<Result<(), EngineError>>),
    /// Abort everything and stop the thread.
    Shutdown,
}

/// State the thread shares with the handles.
pub(crate) struct Shared {
    /// Latest statistics.
    pub stats: Mutex<EngineStats>,
    /// Sequences waiting at the last snapshot (for `QueueFull`).
    pub n_waiting: AtomicUsize,
    /// Submitted requests the thread has not taken off the channel yet.
    pub n_in_channel: AtomicUsize,
}

/// Runs the engine loop until `Shutdown` or until every handle is gone.
pub(crate) fn run(mut core: EngineCore, commands: Receiver<Command>, shared: Arc<Shared>) {
    loop {
        let command = if core.has_work() {
            match commands.try_recv() {
                Ok(command) => Some(command),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => break,
            }
        } else {
            match commands.recv() {
                Ok(command) => Some(command),
                Err(_) => break,
            }
        };
        if let Some(command) = command {
            if !handle(&mut core, command, &shared) {
                break;
            }
            // Take every queued command before the next step.
            continue;
        }
        if let Err(e) = core.step() {
            error!(error = %e, "engine step failed");
        }
        publish(&core, &shared);
    }
    core.abort_all();
    publish(&core, &shared);
    debug!("engine thread stopped");
}

/// Applies one command; `false` means stop.
fn handle(core: &mut EngineCore, command: Command, shared: &Shared) -> bool {
    match command {
        Command::Submit {
            id,
            request,
            events,
            submitted_at,
        } => {
            shared.n_in_channel.fetch_sub(1, Ordering::AcqRel);
            let n = request.n;
            if let Err(e) = core.add_request(id, *request, events.clone(), submitted_at) {
                // The handle validated already; this is only reached if limits moved.
                debug!(request_id = %id, error = %e, "request rejected by the engine thread");
                reject(&events, n);
            }
        }
        Command::Abort(id) => core.abort(id),
        Command::FlushCache(reply) => {
            let _ = reply.send(core.flush_cache().map(|_| ()));
        }
        Command::Shutdown => return false,
    }
    publish(core, shared);
    true
}

/// Ends a request the engine could not take: every sequence finishes with `Abort`.
fn reject(events: &UnboundedSender<Event>, n: usize) {
    for index in 0..n {
        let _ = events.send(Event::Finished {
            index,
            reason: FinishReason::Abort,
            matched_stop: None,
            usage: Usage::default(),
        });
    }
}

/// Copies the core's statistics to the shared snapshot.
fn publish(core: &EngineCore, shared: &Shared) {
    let stats = core.stats();
    shared.n_waiting.store(stats.n_waiting, Ordering::Release);
    *shared.stats.lock().expect("stats lock is never poisoned") = stats;
}
