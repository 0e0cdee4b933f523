//! One streaming request/response on a connection, and the recorder that
//! every exchange reports into.
//!
//! Reads go into one scratch buffer per thread (64 KiB, shared by every
//! connection the thread serves), so an idle open stream costs only its
//! socket, its task and the few hundred bytes of an unfinished SSE line.
//! Each read is stamped once (monotonic and system clock) and all events in
//! it share that arrival time.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::chunked::ChunkedDecoder;
use crate::hist::{Histogram, SignedHistogram};
use crate::http::{parse_head, Framing, Head};
use crate::sse::{classify, find, Event, Item, SseSplitter};

/// Size of the per-thread read buffer.
pub const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// What the load generator sends and where: fixed for a run.
pub struct Plan {
    pub addr: SocketAddr,
    /// The whole request, head and body.
    pub request: Vec<u8>,
}

/// Why a stream did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connection could not be opened.
    Connect,
    /// A response other than 200.
    Status(u16),
    /// No response head: the connection closed or failed before one was
    /// complete, or it did not parse.
    BrokenHead,
    /// The body broke off (closed early, read error, bad chunked framing).
    BrokenBody,
    /// The run's deadline (hold) or the request timeout (churn) passed first.
    Timeout,
    /// The body ended cleanly without `data: [DONE]`.
    NoDone,
}

/// How one exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `[DONE]` and a cleanly ended body; `cost`: a comment after `[DONE]` carried
    /// `x-bourse-cost-usd=`.
    Done {
        reusable: bool,
        cost: bool,
    },
    Failed {
        failure: Failure,
        reusable: bool,
    },
    /// A reused keep-alive connection closed before answering (the server timed
    /// it out as we wrote): not an error, the caller retries on a new connection.
    Stale,
}

#[derive(Debug, Default)]
pub struct Errors {
    pub connect: u64,
    pub status: BTreeMap<u16, u64>,
    pub broken_head: u64,
    pub broken_body: u64,
    pub timeout: u64,
    pub no_done: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect
            + self.status.values().sum::<u64>()
            + self.broken_head
            + self.broken_body
            + self.timeout
            + self.no_done
    }

    pub fn add(&mut self, failure: Failure) {
        match failure {
            Failure::Connect => self.connect += 1,
            Failure::Status(s) => *self.status.entry(s).or_default() += 1,
            Failure::BrokenHead => self.broken_head += 1,
            Failure::BrokenBody => self.broken_body += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::NoDone => self.no_done += 1,
        }
    }
}

/// Everything measured, shared by all tasks (one uncontended lock per read).
#[derive(Default)]
pub struct Recorder {
    /// Requests written.
    pub started: u64,
    /// Connections (hold) or exchanges (churn) in progress.
    pub open: u64,
    pub max_open: u64,
    pub completed: u64,
    pub cost_comments: u64,
    pub errors: Errors,
    /// The first connect error's message (e.g. "Too many open files").
    pub first_connect_error: Option<String>,
    /// Keep-alive connections found closed when reused (retried, not errors).
    pub stale_retries: u64,
    pub connections: u64,
    /// Content events (tokens) received.
    pub tokens: u64,
    /// Content events without a `sim_sent_us` stamp.
    pub unstamped: u64,
    /// Stamps later than their arrival (system clock stepped back); recorded as 0.
    pub transit_negative: u64,
    /// From the end of the request write to the first content event, µs.
    pub ttft: Histogram,
    /// Arrival minus `sim_sent_us`, µs.
    pub transit: Histogram,
    /// The upstream's pacing between tokens, µs.
    pub interval_us: u64,
    /// Arrival of a content event minus the previous one's in the same stream,
    /// minus `interval_us`, µs.
    pub gap: SignedHistogram,
    /// Sampled with the processes: (seconds since the start, open, tokens so far).
    pub load: Vec<(f64, u64, u64)>,
}

impl Recorder {
    pub fn opened(&mut self) {
        self.open += 1;
        self.max_open = self.max_open.max(self.open);
    }

    /// Appends a point to the load series.
    pub fn sample_load(&mut self, t: f64) {
        self.load.push((t, self.open, self.tokens));
    }

    /// Tokens per second between the first and the last load samples with at
    /// least 99% of the most streams ever seen open: the sustained rate with
    /// (nearly) every stream open, ramp and tail left out.
    pub fn plateau_rate(&self) -> Option<f64> {
        let most = self.load.iter().map(|s| s.1).max().filter(|&m| m > 0)?;
        let mut plateau = self.load.iter().filter(|s| s.1 * 100 >= most * 99);
        let first = plateau.next()?;
        let last = plateau.next_back()?;
        let dt = last.0 - first.0;
        (dt > 0.0).then(|| (last.2 - first.2) as f64 / dt)
    }

    /// Books an exchange's end (the caller decrements `open` itself).
    pub fn settle(&mut self, ended: Ended) {
        match ended {
            Ended::Done { cost, .. } => {
                self.completed += 1;
                self.cost_comments += u64::from(cost);
            }
            Ended::Failed { failure, .. } => self.errors.add(failure),
            Ended::Stale => self.stale_retries += 1,
        }
    }
}

pub fn lock(rec: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    // A panic while holding the lock is a bug already reported; keep counting.
    rec.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens a connection (TCP_NODELAY on).
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Sends the plan's request on `tcp` and reads the response to its end.
/// `reused`: the connection carried an earlier exchange.
pub async fn exchange(tcp: &mut TcpStream, plan: &Plan, rec: &Mutex<Recorder>, reused: bool) -> Ended {
    if tcp.write_all(&plan.request).await.is_err() {
        return if reused { Ended::Stale } else { Ended::Failed { failure: Failure::BrokenHead, reusable: false } };
    }
    let mut ex = Exchange { written: Instant::now(), reused, got_bytes: false, head: Vec::new(), body: None };
    lock(rec).started += 1;
    // `poll_read` rather than `readable` + `try_read`: after a read that does not fill the
    // buffer tokio clears the readiness itself, saving a second `read` (EAGAIN) per event.
    std::future::poll_fn(|cx| {
        SCRATCH_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            loop {
                let mut rb = ReadBuf::new(&mut buf[..]);
                match Pin::new(&mut *tcp).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => return Poll::Ready(ex.broken()),
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(ex.eof()),
                    Poll::Ready(Ok(())) => {
                        if let Some(ended) = ex.bytes(rb.filled(), rec) {
                            return Poll::Ready(ended);
                        }
                    }
                }
            }
        })
    })
    .await
}

struct Exchange {
    written: Instant,
    reused: bool,
    got_bytes: bool,
    /// The head so far, when it spans reads.
    head: Vec<u8>,
    body: Option<Body>,
}

struct Body {
    head: Head,
    chunked: ChunkedDecoder,
    /// Bytes left of a `Content-Length` body.
    remaining: u64,
    sse: SseSplitter,
    track: Track,
}

/// Per-stream measurements of a 200 response.
struct Track {
    written: Instant,
    last: Option<Instant>,
    done: bool,
    cost: bool,
}

impl Exchange {
    /// Bytes read; `Some` once the exchange is over.
    fn bytes(&mut self, input: &[u8], rec: &Mutex<Recorder>) -> Option<Ended> {
        self.got_bytes = true;
        let Some(body) = &mut self.body else {
            let parsed = if self.head.is_empty() {
                parse_head(input).map(|h| h.map(|(head, n)| (head, &input[n..])))
            } else {
                self.head.extend_from_slice(input);
                parse_head(&self.head).map(|h| h.map(|(head, n)| (head, &self.head[n..])))
            };
            return match parsed {
                Err(_) => Some(Ended::Failed { failure: Failure::BrokenHead, reusable: false }),
                Ok(None) => {
                    if self.head.is_empty() {
                        self.head.extend_from_slice(input);
                    }
                    None
                }
                Ok(Some((head, rest))) => {
                    let rest = rest.to_vec();
                    self.head = Vec::new();
                    let remaining = match head.framing {
                        Framing::Length(n) => n,
                        _ => 0,
                    };
                    let track = Track { written: self.written, last: None, done: false, cost: false };
                    let body = Body {
                        head,
                        chunked: ChunkedDecoder::default(),
                        remaining,
                        sse: SseSplitter::default(),
                        track,
                    };
                    let body = self.body.insert(body);
                    if body.head.framing == Framing::Length(0) {
                        return Some(body.end());
                    }
                    if rest.is_empty() {
                        None
                    } else {
                        body.feed(&rest, rec)
                    }
                }
            };
        };
        body.feed(input, rec)
    }

    fn eof(&mut self) -> Ended {
        match &self.body {
            None if self.reused && !self.got_bytes => Ended::Stale,
            None => Ended::Failed { failure: Failure::BrokenHead, reusable: false },
            Some(body) if body.head.framing == Framing::UntilClose => body.end(),
            Some(_) => Ended::Failed { failure: Failure::BrokenBody, reusable: false },
        }
    }

    fn broken(&self) -> Ended {
        let failure = if self.body.is_some() { Failure::BrokenBody } else { Failure::BrokenHead };
        Ended::Failed { failure, reusable: false }
    }
}

impl Body {
    fn feed(&mut self, input: &[u8], rec: &Mutex<Recorder>) -> Option<Ended> {
        let ok = self.head.status == 200;
        let now = Instant::now();
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let mut rec = lock(rec);
        let Body { head, chunked, remaining, sse, track } = self;
        let mut on_payload = |payload: &[u8]| {
            if ok {
                sse.feed(payload, &mut |item| track.item(item, &mut rec, now, now_us));
            }
        };
        match head.framing {
            Framing::Chunked => match chunked.feed(input, &mut on_payload) {
                Err(_) => return Some(Ended::Failed { failure: Failure::BrokenBody, reusable: false }),
                Ok(used) if chunked.is_done() => {
                    // Bytes after the body would be a response we never asked for.
                    return Some(self.end_with(used == input.len()));
                }
                Ok(_) => {}
            },
            Framing::Length(_) => {
                let n = input.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                on_payload(&input[..n]);
                *remaining -= n as u64;
                if *remaining == 0 {
                    return Some(self.end_with(n == input.len()));
                }
            }
            Framing::UntilClose => on_payload(input),
        }
        None
    }

    /// The body ended cleanly.
    fn end(&self) -> Ended {
        self.end_with(true)
    }

    fn end_with(&self, clean_tail: bool) -> Ended {
        let reusable = self.head.keep_alive && clean_tail;
        if self.head.status != 200 {
            Ended::Failed { failure: Failure::Status(self.head.status), reusable }
        } else if !self.track.done {
            Ended::Failed { failure: Failure::NoDone, reusable }
        } else {
            Ended::Done { reusable, cost: self.track.cost }
        }
    }
}

impl Track {
    fn item(&mut self, item: Item<'_>, rec: &mut Recorder, now: Instant, now_us: u64) {
        match item {
            Item::Data(data) => match classify(data) {
                Event::Done => self.done = true,
                Event::Content { sent_us } => {
                    rec.tokens += 1;
                    match self.last {
                        None => rec.ttft.record(micros(now - self.written)),
                        Some(last) => {
                            let gap = i64::try_from(micros(now - last)).unwrap_or(i64::MAX);
                            rec.gap.record(gap - i64::try_from(rec.interval_us).unwrap_or(0));
                        }
                    }
                    self.last = Some(now);
                    match sent_us {
                        Some(sent) if sent > now_us => {
                            rec.transit_negative += 1;
                            rec.transit.record(0);
                        }
                        Some(sent) => rec.transit.record(now_us - sent),
                        None => rec.unstamped += 1,
                    }
                }
                Event::Other => {}
            },
            Item::Comment(text) => {
                if self.done && find(text, b"x-bourse-cost-usd=").is_some() {
                    self.cost = true;
                }
            }
        }
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
