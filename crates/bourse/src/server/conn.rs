//! One client connection at the edge, and the limits that keep slow, idle, non-reading or
//! oversized clients from holding the gateway's memory and descriptors.
//!
//! - **Head timeout.** A request head must arrive whole within `header_timeout` of its
//!   first byte, or of the accept for a connection's first request (a client that sends half
//!   a head and stops is closed).
//! - **Idle timeout.** A keep-alive connection with nothing in flight is closed after
//!   `idle_timeout`; it is longer than the head timeout so that SDK connection pools (httpx
//!   keeps idle connections 5 s) and load balancers (60 s) close first.
//! - **Send timeout.** A response write that makes no progress for `send_timeout` (a client
//!   that stopped reading) fails; hyper closes the connection and drops the response body,
//!   which cancels the upstream request and meters what was relayed. Until then nothing
//!   piles up: hyper queues at most 16 chunks and `max_buf_size` bytes before it stops
//!   polling the body, and a relay that is not polled does not read its upstream.
//! - **Connection cap.** Past `max_connections`, a connection is answered with a 503 and
//!   closed ([`refuse`]).
//! - **Unread bodies.** A request answered without reading its body (a 413, a 401) has the
//!   rest read and thrown away ([`RequestBody`]), up to [`DRAIN_BYTES`] or [`DRAIN_TIME`], so
//!   a client that writes its whole body before it reads (every SDK does) reads the answer
//!   instead of a connection reset.
//!
//! The timeouts live in the socket wrapper [`Guarded`], which hyper reads when it waits for
//! a head or a body and writes when it has bytes to send. Whether a request is in flight it
//! learns from [`Busy`], a count the service keeps: up when hyper hands over a request,
//! down when its response (a streamed body included) is done.

use crate::config::EdgeLimits;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Connections held at once when the config does not say (and the descriptor limit allows).
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Descriptors kept back from the connection budget: the listener, the ledger, logs.
const RESERVED_FDS: u64 = 128;
/// The most of an unread request body read and thrown away after its answer.
pub const DRAIN_BYTES: u64 = 1 << 30;
/// The longest an unread body is drained after its answer (nginx's `lingering_time`).
pub const DRAIN_TIME: Duration = Duration::from_secs(30);

/// What the service tells the socket wrapper: requests in flight on one connection (low 32
/// bits of `count`), requests begun on it so far (high 32 bits, wrapping; one word so both
/// are read at once), and when the last one finished.
#[derive(Clone, Default)]
pub struct Busy(Arc<BusyState>);

#[derive(Default)]
struct BusyState {
    count: AtomicU64,
    /// When in-flight last dropped to zero, in [`clock`] milliseconds.
    done_ms: AtomicU64,
}

impl Busy {
    /// A request was handed to the service; it is in flight until the guard is dropped.
    pub fn begin(&self) -> InFlight {
        self.0.count.fetch_add(1 | 1 << 32, Relaxed);
        InFlight(self.0.clone())
    }

    fn read(&self) -> (u32, u32) {
        let v = self.0.count.load(Relaxed);
        (v as u32, (v >> 32) as u32)
    }

    fn done_at(&self) -> Instant {
        clock::at(self.0.done_ms.load(Relaxed))
    }
}

/// One request in flight: dropped when its response is done.
pub struct InFlight(Arc<BusyState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Relaxed) as u32 == 1 {
            self.0.done_ms.store(clock::now_ms(), Relaxed);
        }
    }
}

/// Instants as milliseconds since the first use, so one can sit in an atomic.
mod clock {
    use std::sync::LazyLock;
    use tokio::time::Instant;

    static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

    pub fn now_ms() -> u64 {
        BASE.elapsed().as_millis() as u64
    }

    pub fn at(ms: u64) -> Instant {
        *BASE + std::time::Duration::from_millis(ms)
    }
}

/// A response whose request stays in flight until its body is done: bodies of known size
/// are written by hyper at once, so only streamed ones carry the guard.
pub fn finish(resp: axum::response::Response, in_flight: InFlight) -> axum::response::Response {
    if resp.body().size_hint().exact().is_some() {
        return resp;
    }
    resp.map(|body| axum::body::Body::new(Tracked { body, _in_flight: in_flight }))
}

struct Tracked {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client socket with the edge's deadlines: reads fail once a head is overdue or an idle
/// connection has waited too long, writes once they have made no progress for the send
/// timeout. hyper then closes the connection.
pub struct Guarded<T> {
    io: T,
    limits: EdgeLimits,
    busy: Busy,
    /// Requests begun, as last seen: a change means a request started since.
    seen: u32,
    /// No request has begun yet: the head timeout also bounds the wait for the first byte.
    first: bool,
    /// When the connection was last seen with nothing in flight (None while busy).
    idle_since: Option<Instant>,
    /// When the first byte of the head being read arrived.
    head_since: Option<Instant>,
    /// A write succeeded since the connection went idle: the tail of an answer whose
    /// request was counted done when its (fixed-size) body was handed over.
    wrote: bool,
    read_alarm: Alarm,
    /// When writes started to wait on the client.
    stalled_since: Option<Instant>,
    write_alarm: Alarm,
}

impl<T> Guarded<T> {
    pub fn new(io: T, limits: EdgeLimits, busy: Busy) -> Guarded<T> {
        Guarded {
            io,
            limits,
            busy,
            seen: 0,
            first: true,
            idle_since: Some(Instant::now()),
            head_since: None,
            wrote: false,
            read_alarm: Alarm::default(),
            stalled_since: None,
            write_alarm: Alarm::default(),
        }
    }

    /// A read found nothing to read: fail if the connection's deadline has passed, else
    /// make sure the timer will wake the task at it.
    fn read_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (in_flight, begun) = self.busy.read();
        let now = Instant::now();
        if begun != self.seen {
            self.seen = begun;
            self.first = false;
            self.head_since = None;
            self.idle_since = None;
        }
        if in_flight > 0 {
            // hyper reads again when the exchange is over only if something wakes its task:
            // this timer does, and the idle deadline is then counted from the end of the
            // exchange.
            self.idle_since = None;
            self.read_alarm.set(now + self.limits.idle_timeout, now, cx);
            return Poll::Pending;
        }
        let idle_since = *self.idle_since.get_or_insert_with(|| {
            self.wrote = false;
            self.busy.done_at()
        });
        let wait = if self.first { self.limits.header_timeout } else { self.limits.idle_timeout };
        let mut deadline = match self.head_since {
            Some(t) => t + self.limits.header_timeout,
            None => idle_since + wait,
        };
        if now >= deadline {
            if self.head_since.is_none() && std::mem::take(&mut self.wrote) {
                // Still sending the last answer: idle only from now.
                self.idle_since = Some(now);
                deadline = now + wait;
            } else {
                let what = if self.head_since.is_some() || self.first {
                    "the request head did not arrive in time (server.header_timeout)"
                } else {
                    "the connection was idle too long (server.idle_timeout)"
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
            }
        }
        self.read_alarm.set(deadline, now, cx);
        Poll::Pending
    }

    /// A write could not go out: fail once writes have waited the send timeout.
    fn write_pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let now = Instant::now();
        let deadline = *self.stalled_since.get_or_insert(now) + self.limits.send_timeout;
        if now >= deadline {
            let e = io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading (server.send_timeout)");
            return Poll::Ready(Err(e));
        }
        self.write_alarm.set(deadline, now, cx);
        Poll::Pending
    }

    fn wrote(&mut self) {
        self.stalled_since = None;
        self.wrote = true;
    }
}

/// A timer that wakes the connection's task by a deadline, moved only when it must be.
#[derive(Default)]
struct Alarm {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Alarm {
    /// Make sure the alarm goes off by `deadline` and wakes the task. One still set for an
    /// earlier time is left where it is (waking early only means the deadline is looked at
    /// again), which spares the timer wheel a removal and an insertion on every request of
    /// a keep-alive connection. It is polled every time all the same: a poll that ran out
    /// of tokio's cooperative budget returned Pending without registering the task.
    fn set(&mut self, deadline: Instant, now: Instant, cx: &mut Context<'_>) {
        let sleep = match &mut self.sleep {
            Some(s) => {
                let at = s.deadline();
                if at <= now || at > deadline {
                    s.as_mut().reset(deadline);
                }
                s
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if sleep.as_mut().poll(cx).is_ready() {
            // Already due (the clock moved on since `now`): look again at once.
            cx.waker().wake_by_ref();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                // Bytes with nothing in flight start a head (or are one, whole).
                if buf.filled().len() > before && this.head_since.is_none() && this.busy.read().0 == 0 {
                    this.head_since = Some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.read_pending(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending => this.write_pending(cx),
            ready => {
                this.wrote();
                ready
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.write_pending(cx),
            ready => {
                this.wrote();
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request body that, if its handler answered without reading it all, is read to its
/// end and discarded in the background (bounded by [`DRAIN_BYTES`] and [`DRAIN_TIME`]):
/// the client is still writing it, and closing on unread bytes would reset the connection
/// under the answer. Not for `Expect: 100-continue` requests, whose client has not sent
/// the body and will not once it sees a final answer.
pub struct RequestBody {
    body: Option<Incoming>,
    drain: bool,
}

impl RequestBody {
    pub fn new(body: Incoming, expects_continue: bool) -> RequestBody {
        RequestBody { body: Some(body), drain: !expects_continue }
    }
}

impl Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match &mut self.get_mut().body {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body.as_ref().map(Body::size_hint).unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(body) = self.body.take() else { return };
        if !self.drain || body.is_end_stream() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(discard(body));
        }
    }
}

/// Read `body` to its end and drop what arrives, within the drain bounds.
async fn discard(mut body: Incoming) {
    use http_body_util::BodyExt;
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// The answer to a connection over the cap: a 503 both SDK families read as "overloaded,
/// retry" (the error object carries OpenAI's four keys and Anthropic's `type`).
const REFUSAL_BODY: &str = concat!(
    r#"{"type":"error","error":{"type":"overloaded_error","message":"#,
    r#""the gateway is holding as many connections as it may (server.max_connections); retry shortly","#,
    r#""param":null,"code":"too_many_connections"}}"#
);

/// Refused connections being answered at once; past this, one is closed unanswered.
const MAX_REFUSING: usize = 256;

/// Answer a connection over the cap with a 503 and close it: the answer is written, the
/// write side shut, and what the client sends meanwhile read and dropped for up to a
/// second, so the client reads the 503 rather than a reset.
pub fn refuse(tcp: tokio::net::TcpStream) {
    use std::sync::LazyLock;
    static REFUSING: LazyLock<Arc<tokio::sync::Semaphore>> =
        LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING)));
    let Ok(permit) = REFUSING.clone().try_acquire_owned() else { return };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _permit = permit;
        let mut tcp = tcp;
        let head = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            REFUSAL_BODY.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            tcp.write_all(head.as_bytes()).await?;
            tcp.write_all(REFUSAL_BODY.as_bytes()).await?;
            tcp.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut left = 64 * 1024usize;
            while left > 0 {
                match tcp.read(&mut sink).await? {
                    0 => break,
                    n => left = left.saturating_sub(n),
                }
            }
            io::Result::Ok(())
        })
        .await;
    });
}

/// Raise this process's open-file limit to its hard limit (as Go's runtime and nginx's
/// `worker_rlimit_nofile` do): each client connection holds a descriptor and so does its
/// upstream connection, and the usual soft limit of 1,024 would cap the gateway near 500
/// streams. Returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed by pointer, which
    // lives on this stack frame for the call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
    let current = lim.rlim_cur as u64;
    current
}

/// The connection cap: as configured if the descriptor limit `fds` allows two descriptors
/// per connection (client and upstream) plus a reserve, else an error naming the setting;
/// when not configured, [`DEFAULT_MAX_CONNECTIONS`] or what the limit allows, if less.
pub fn max_connections(configured: Option<usize>, fds: u64) -> Result<usize, String> {
    let budget = (fds.saturating_sub(RESERVED_FDS) / 2).max(1) as usize;
    match configured {
        Some(n) if n > budget => Err(format!(
            "server.max_connections = {n} needs {} open files (two per connection and {RESERVED_FDS} more), but this process may open {fds}: raise `ulimit -n` or lower it",
            2 * n as u64 + RESERVED_FDS
        )),
        Some(n) => Ok(n),
        None => Ok(DEFAULT_MAX_CONNECTIONS.min(budget)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_budget_follows_the_descriptor_limit() {
        assert_eq!(max_connections(None, 1_048_576).unwrap(), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(max_connections(None, 1024).unwrap(), 448);
        assert_eq!(max_connections(Some(400), 1024).unwrap(), 400);
        let e = max_connections(Some(10_000), 1024).unwrap_err();
        assert!(e.contains("server.max_connections") && e.contains("20128") && e.contains("1024"), "{e}");
    }

    #[test]
    fn busy_counts_in_flight_and_begun() {
        let busy = Busy::default();
        let a = busy.begin();
        let b = busy.begin();
        assert_eq!(busy.read(), (2, 2));
        drop(a);
        assert_eq!(busy.read(), (1, 2));
        drop(b);
        assert_eq!(busy.read(), (0, 2));
    }
}
