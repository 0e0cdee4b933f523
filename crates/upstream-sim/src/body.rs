//! The response body type: either a complete buffer, or a pre-computed
//! "script" of data, pauses and an optional abort that is played out as hyper
//! polls it.
//!
//! Scripting the body (instead of a producer task feeding a channel) keeps the
//! hot path free of task spawns and channel hops, and lets the body itself
//! notice cancellation: hyper drops the body when the client goes away, and
//! `Drop` on an unfinished stream is exactly "the body receiver was dropped".
//!
//! A frame may carry send-time stamps (`stamp_chunks`): fixed-width slots that
//! are filled with the current Unix time in microseconds when the frame is
//! handed to hyper, not when the script is built. A long paced run of frames can
//! also be left to a [`FrameSource`] that writes each one as it is sent, so a
//! stream of thousands of tokens does not hold them all in memory.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::server::Shared;

/// One step of a scripted body.
enum Step {
    Data(Bytes),
    /// Data with stamp slots at these offsets, filled in as the frame is sent.
    Stamped(Vec<u8>, Vec<usize>),
    Wait(Duration),
    /// Return `Pending` once so hyper flushes what it has buffered.
    Flush,
    /// Fail the body, which makes hyper abort the connection mid-response.
    Abort,
    /// Send nothing more, ever: the body stays pending until hyper drops it.
    Stall,
    /// Frames `next..end` of `source`, each sent after a pause of `delay`.
    Paced {
        source: Box<dyn FrameSource>,
        next: usize,
        end: usize,
        delay: Duration,
    },
}

/// Frames written when they are sent rather than when the script is built.
pub(crate) trait FrameSource: Send {
    /// Appends frame `i` to `out`.
    fn frame(&self, i: usize, out: &mut Vec<u8>);
}

/// Builds a script, coalescing consecutive writes into one frame so a stream
/// without delays costs a single write.
#[derive(Default)]
pub(crate) struct Script {
    steps: Vec<Step>,
    buf: Vec<u8>,
    /// Offsets in `buf` of stamp slots.
    stamps: Vec<usize>,
    declared_len: Option<u64>,
}

/// Width of a stamp slot: microseconds since 1970 have 16 digits from 2001 to 2286.
pub(crate) const STAMP_WIDTH: usize = 16;

impl Script {
    /// Appends bytes to the current frame.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The frame being built, for serializers that write in place.
    pub(crate) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Appends a slot for the send time (Unix microseconds, a JSON number
    /// padded with leading spaces to [`STAMP_WIDTH`]), filled when the frame
    /// holding it is sent.
    pub(crate) fn stamp(&mut self) {
        self.stamps.push(self.buf.len());
        self.buf.extend_from_slice(&[b' '; STAMP_WIDTH]);
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            if self.stamps.is_empty() {
                self.steps.push(Step::Data(Bytes::from(buf)));
            } else {
                self.steps.push(Step::Stamped(buf, std::mem::take(&mut self.stamps)));
            }
        }
    }

    /// Sends what was written so far, then pauses.
    pub(crate) fn wait(&mut self, ms: u64) {
        if ms > 0 {
            self.flush();
            self.steps.push(Step::Wait(Duration::from_millis(ms)));
        }
    }

    /// Sends what was written so far, then frames `range` of `source`, each
    /// after a pause of `ms`, written as they are sent.
    pub(crate) fn paced(&mut self, ms: u64, range: Range<usize>, source: Box<dyn FrameSource>) {
        self.flush();
        if !range.is_empty() {
            let delay = Duration::from_millis(ms);
            self.steps.push(Step::Paced { source, next: range.start, end: range.end, delay });
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

    /// Sends what was written so far, then nothing more until the client goes away.
    pub(crate) fn stall(&mut self) {
        self.flush();
        self.steps.push(Step::Flush);
        self.steps.push(Step::Stall);
    }

    /// Keeps only the first half of what was written to the current frame since
    /// offset `at` (a caller's [`Script::buf`] length): an event cut off mid-way.
    pub(crate) fn cut_from(&mut self, at: usize) {
        let at = at.min(self.buf.len());
        let keep = at + (self.buf.len() - at) / 2;
        self.buf.truncate(keep);
        self.stamps.retain(|&s| s + STAMP_WIDTH <= keep);
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
                    Some(Step::Data(data)) => return Poll::Ready(Some(Ok(data_frame(steps, guard, data)))),
                    Some(Step::Stamped(mut buf, slots)) => {
                        fill_stamps(&mut buf, &slots, unix_micros());
                        return Poll::Ready(Some(Ok(data_frame(steps, guard, Bytes::from(buf)))));
                    }
                    Some(Step::Paced { source, next, end, delay }) => {
                        let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
                        if timer.as_mut().poll(cx).is_pending() {
                            steps.push_front(Step::Paced { source, next, end, delay });
                            return Poll::Pending;
                        }
                        *sleep = None;
                        let mut buf = Vec::with_capacity(384);
                        source.frame(next, &mut buf);
                        if next + 1 < end {
                            steps.push_front(Step::Paced { source, next: next + 1, end, delay });
                        }
                        return Poll::Ready(Some(Ok(data_frame(steps, guard, Bytes::from(buf)))));
                    }
                    Some(Step::Stall) => {
                        // Never woken: hyper drops the body when the connection ends.
                        steps.push_front(Step::Stall);
                        return Poll::Pending;
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

/// A data frame; hyper may stop polling once `is_end_stream` is true, so the
/// last frame is where a stream counts as done.
fn data_frame(steps: &VecDeque<Step>, guard: &mut Option<StreamGuard>, data: Bytes) -> Frame<Bytes> {
    if steps.is_empty() {
        if let Some(g) = guard {
            g.complete();
        }
    }
    Frame::data(data)
}

/// Appends a stamp slot already filled with the current time, for frames
/// written as they are sent.
pub(crate) fn push_stamp_now(out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[b' '; STAMP_WIDTH]);
    fill_stamps(out, &[at], unix_micros());
}

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Writes `micros` right-aligned into each [`STAMP_WIDTH`]-byte slot (leading
/// spaces are JSON whitespace); a value too wide for the slot is capped at all nines.
fn fill_stamps(buf: &mut [u8], slots: &[usize], micros: u64) {
    let mut digits = [b' '; STAMP_WIDTH];
    let mut v = micros.min(10u64.pow(STAMP_WIDTH as u32) - 1);
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &at in slots {
        if let Some(slot) = buf.get_mut(at..at + STAMP_WIDTH) {
            slot.copy_from_slice(&digits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_fill_their_slots() {
        let mut script = Script::default();
        script.push(b"{\"a\":");
        script.stamp();
        script.push(b"}{\"b\":");
        script.stamp();
        script.push(b"}");
        script.flush();
        let Some(Step::Stamped(mut buf, slots)) = script.steps.pop() else { panic!("not stamped") };
        fill_stamps(&mut buf, &slots, 1_733_000_000_123_456);
        assert_eq!(buf, b"{\"a\":1733000000123456}{\"b\":1733000000123456}");
        fill_stamps(&mut buf, &slots, 42);
        assert_eq!(buf, b"{\"a\":              42}{\"b\":              42}");
        fill_stamps(&mut buf, &slots, u64::MAX);
        assert_eq!(buf, b"{\"a\":9999999999999999}{\"b\":9999999999999999}");
    }
}
