//! The response body type: either a complete buffer, or a pre-computed
//! "script" of data, pauses and an optional abort that is played out as hyper
//! polls it.
//!
//! Scripting the body (instead of a producer task feeding a channel) keeps the
//! hot path free of task spawns and channel hops, and lets the body itself
//! notice cancellation: hyper drops the body when the client goes away, and
//! `Drop` on an unfinished stream is exactly "the body receiver was dropped".

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::server::Shared;

/// One step of a scripted body.
enum Step {
    Data(Bytes),
    Wait(Duration),
    /// Return `Pending` once so hyper flushes what it has buffered.
    Flush,
    /// Fail the body, which makes hyper abort the connection mid-response.
    Abort,
}

/// Builds a script, coalescing consecutive writes into one frame so a stream
/// without delays costs a single write.
#[derive(Default)]
pub(crate) struct Script {
    steps: Vec<Step>,
    buf: Vec<u8>,
    declared_len: Option<u64>,
}

impl Script {
    /// Appends bytes to the current frame.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The frame being built, for serializers that write in place.
    pub(crate) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            let data = Bytes::from(std::mem::take(&mut self.buf));
            self.steps.push(Step::Data(data));
        }
    }

    /// Sends what was written so far, then pauses.
    pub(crate) fn wait(&mut self, ms: u64) {
        if ms > 0 {
            self.flush();
            self.steps.push(Step::Wait(Duration::from_millis(ms)));
        }
    }

    /// Sends what was written so far, then aborts the connection.
    pub(crate) fn abort(&mut self) {
        self.flush();
        // Without a flush point hyper would still hold the headers and data
        // in its write buffer when the error arrives, and discard them.
        self.steps.push(Step::Flush);
        self.steps.push(Step::Abort);
    }

    /// Announces a `Content-Length` (used to make a truncated body look like
    /// a real one that was cut off).
    pub(crate) fn declare_len(&mut self, len: usize) {
        self.declared_len = Some(len as u64);
    }

    /// Turns the script into a body. `stream` bodies are counted in the stats
    /// as completed or cancelled.
    pub(crate) fn into_body(mut self, stats: Option<Arc<Shared>>) -> SimBody {
        self.flush();
        SimBody {
            inner: Inner::Script { steps: self.steps.into(), sleep: None, declared_len: self.declared_len },
            guard: stats.map(|shared| StreamGuard { shared, settled: false }),
        }
    }
}

/// Counts a streaming response exactly once: completed when its last frame
/// is handed to hyper, cancelled when it is dropped before that, neither when
/// the simulator aborted it on purpose.
struct StreamGuard {
    shared: Arc<Shared>,
    settled: bool,
}

impl StreamGuard {
    fn complete(&mut self) {
        if !self.settled {
            self.settled = true;
            self.shared.completed_streams.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.cancelled_streams.fetch_add(1, Ordering::Relaxed);
        }
    }
}

enum Inner {
    Full(Option<Bytes>),
    Script { steps: VecDeque<Step>, sleep: Option<Pin<Box<Sleep>>>, declared_len: Option<u64> },
}

/// Body of every response the simulator sends.
pub struct SimBody {
    inner: Inner,
    guard: Option<StreamGuard>,
}

impl SimBody {
    /// A complete body, sent with `Content-Length`.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> SimBody {
        let bytes = bytes.into();
        SimBody { inner: Inner::Full((!bytes.is_empty()).then_some(bytes)), guard: None }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let SimBody { inner, guard } = self.get_mut();
        match inner {
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Inner::Script { steps, sleep, .. } => loop {
                match steps.pop_front() {
                    None => {
                        if let Some(g) = guard {
                            g.complete();
                        }
                        return Poll::Ready(None);
                    }
                    Some(Step::Wait(d)) => {
                        let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
                        if timer.as_mut().poll(cx).is_pending() {
                            steps.push_front(Step::Wait(d));
                            return Poll::Pending;
                        }
                        *sleep = None;
                    }
                    Some(Step::Flush) => {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Some(Step::Data(data)) => {
                        // hyper may stop polling once `is_end_stream` is true,
                        // so the last frame is where a stream counts as done.
                        if steps.is_empty() {
                            if let Some(g) = guard {
                                g.complete();
                            }
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Some(Step::Abort) => {
                        steps.clear();
                        if let Some(g) = guard {
                            g.settled = true;
                        }
                        return Poll::Ready(Some(Err(io::Error::other("upstream-sim: simulated connection drop"))));
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(data) => data.is_none(),
            Inner::Script { steps, .. } => steps.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Script { declared_len: Some(len), .. } => SizeHint::with_exact(*len),
            Inner::Script { .. } => SizeHint::default(),
        }
    }
}
