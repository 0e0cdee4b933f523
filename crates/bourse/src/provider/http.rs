//! The upstream HTTP client: HTTP/1.1 over pooled keep-alive connections, each driven by
//! the task of the request that uses it.
//!
//! The request's own task writes the request, reads the answer and, once the body is done,
//! puts the connection back for the next request: no connection task, no channels between
//! tasks, no pool key hashed per request (hyper's pooled client does all three, and cost
//! about four times the instructions per exchange; docs/decisions.md). A provider talks to
//! one origin, so its pool is a plain stack.
//!
//! What it speaks: HTTP/1.1 (every vendor API accepts it; OpenAI's and Anthropic's own SDKs
//! default to it), plain or over rustls with the bundled web-PKI roots (ALPN `http/1.1`),
//! `Content-Length`, chunked and close-delimited bodies ([`wire`]). Proxies come from
//! `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, read once at start-up: an
//! `https` upstream goes through an HTTP `CONNECT` tunnel (TLS end to end); a plain `http`
//! upstream is sent to the proxy with an absolute-form target, with `Proxy-Authorization`
//! when the proxy URL carries credentials.
//!
//! Reuse is safe by construction: a connection goes back to the pool only after a body
//! that ended exactly where its framing said, with nothing after it, on a response that did
//! not ask to close. A body dropped early (a client that went away, a timeout) closes its
//! connection, which is how the upstream learns the request was cancelled. An idle
//! connection that the server has closed meanwhile is noticed when it is taken (its socket
//! reads as ended, at no cost while it is quiet), and a request whose write fails on a
//! reused connection is sent again on a new one: no whole request reached the server. Once a
//! request is written it is never sent twice, since the upstream may have started on it.
//! Connecting shares the connect timeout out among the host's addresses, tried in order.

pub mod wire;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use bytes::{Bytes, BytesMut};
use hyper_util::client::proxy::matcher::Matcher;
use std::fmt;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use wire::{Chunked, Framing, Parsed};

/// Idle connections kept per provider: enough for bursts of concurrent streams to one vendor.
const MAX_IDLE: usize = 256;
/// How long an idle connection is kept. Servers close theirs sooner or later (uvicorn after
/// 5 s, nginx after 75 s); those are noticed when taken.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive probes on upstream connections, so a silent network drop is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Room made in a connection's read buffer before each read: a stream's events are small,
/// so a larger buffer would only add resident memory to every open stream (bodies of
/// known length are read into a buffer of their own size).
const READ_CHUNK: usize = 1024;
/// A body whose connection ended before its framing did.
const CLOSED_IN_BODY: &str = "connection closed before the body was complete";
/// Largest body read into one buffer sized from its `Content-Length` up front (an
/// embeddings answer for a large batch runs to tens of MB).
const PRESIZE_LIMIT: usize = 256 * 1024 * 1024;

/// Why an upstream exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    kind: Kind,
    detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No connection: DNS, TCP, the proxy tunnel or the TLS handshake failed.
    Connect,
    /// The connection broke, or the server broke the protocol.
    Exchange,
    /// A body that had started sent nothing for longer than its reader allowed.
    Stalled,
}

impl HttpError {
    fn connect(detail: impl fmt::Display) -> HttpError {
        HttpError { kind: Kind::Connect, detail: detail.to_string() }
    }

    fn exchange(detail: impl fmt::Display) -> HttpError {
        HttpError { kind: Kind::Exchange, detail: detail.to_string() }
    }

    /// No connection could be made (nothing was sent).
    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }

    /// The body went quiet for longer than [`Body::bytes_within`] allowed.
    pub fn is_stalled(&self) -> bool {
        self.kind == Kind::Stalled
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for HttpError {}

/// A client for one origin (a provider's base URL), shared by that provider's requests.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    /// Where TCP connections go: the upstream, or the proxy in front of it.
    host: String,
    port: u16,
    /// The `CONNECT` request that opens a tunnel through the proxy, when there is one.
    tunnel: Option<Vec<u8>>,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    /// A forwarding proxy needs the absolute form: `origin` before the path in the request
    /// line.
    absolute_form: bool,
    /// Every request's fixed header lines (`Host` first, then the provider's), encoded once.
    /// Holds the provider's key: never printed.
    headers: Vec<u8>,
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    /// Scheme, host and port of the upstream (`https://api.openai.com`).
    origin: String,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the header lines: they carry the provider's key.
        f.debug_struct("Client").field("origin", &self.shared.origin).finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the origin of `base` (`http` or `https`, as config validated it) whose
    /// requests all carry `headers`.
    pub fn new(base: &Uri, headers: &HeaderMap, connect_timeout: Duration) -> Result<Client, String> {
        let (tls, proxies) = shared();
        Client::with(base, headers, connect_timeout, tls, proxies)
    }

    /// [`Client::new`] with the TLS settings and proxy rules given.
    fn with(
        base: &Uri,
        headers: &HeaderMap,
        connect_timeout: Duration,
        tls_config: &Arc<rustls::ClientConfig>,
        proxies: &Matcher,
    ) -> Result<Client, String> {
        let https = match base.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("\"{base}\" must use http or https")),
        };
        let host = base.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("\"{base}\" has no host"))?;
        let default_port = if https { 443 } else { 80 };
        let port = base.port_u16().unwrap_or(default_port);
        // IPv6 literals keep their brackets in `Host`, and lose them for DNS and TLS.
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let authority = if port == default_port { host.to_string() } else { format!("{host}:{port}") };
        let origin = format!("{}://{authority}", if https { "https" } else { "http" });

        let mut lines = Vec::with_capacity(256);
        push_header(&mut lines, b"host", authority.as_bytes());
        for (name, value) in headers {
            push_header(&mut lines, name.as_str().as_bytes(), value.as_bytes());
        }

        let mut shared = Shared {
            host: bare_host.to_string(),
            port,
            tunnel: None,
            tls: None,
            absolute_form: false,
            headers: lines,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
            origin,
        };
        if let Some(proxy) = proxies.intercept(base) {
            let (proxy_host, proxy_port) = proxy_address(proxy.uri())?;
            if https {
                // Authority form, with an IPv6 literal's brackets: `CONNECT [::1]:443`.
                let mut connect = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
                if let Some(auth) = proxy.basic_auth().and_then(|v| v.to_str().ok()) {
                    connect.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
                }
                connect.push_str("\r\n");
                shared.tunnel = Some(connect.into_bytes());
            } else {
                shared.absolute_form = true;
                if let Some(auth) = proxy.basic_auth() {
                    push_header(&mut shared.headers, b"proxy-authorization", auth.as_bytes());
                }
            }
            shared.host = proxy_host;
            shared.port = proxy_port;
        }
        if https {
            let name = rustls::pki_types::ServerName::try_from(bare_host.to_string())
                .map_err(|e| format!("\"{host}\" is not a name TLS can check: {e}"))?;
            shared.tls = Some((tokio_rustls::TlsConnector::from(tls_config.clone()), name));
        }
        Ok(Client { shared: Arc::new(shared) })
    }

    /// POST `body` to `path` (with its query, if any; checked by the caller to be a valid
    /// request target), with one more header if given. Returns once the response head has
    /// arrived; its body is read from the same connection as the caller polls it.
    pub async fn post(
        &self,
        path: &str,
        extra: Option<&(HeaderName, HeaderValue)>,
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let s = &*self.shared;
        let mut head = Vec::with_capacity(64 + s.origin.len() + path.len() + s.headers.len());
        head.extend_from_slice(b"POST ");
        if s.absolute_form {
            head.extend_from_slice(s.origin.as_bytes());
        }
        head.extend_from_slice(path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        head.extend_from_slice(&s.headers);
        if let Some((name, value)) = extra {
            push_header(&mut head, name.as_str().as_bytes(), value.as_bytes());
        }
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        head.extend_from_slice(b"\r\n\r\n");

        if let Some(mut conn) = self.checkout() {
            if conn.write_request(&head, body).await.is_ok() {
                return self.read_response(conn).await;
            }
            // The server closed it while it sat idle: no whole request reached it, so it
            // cannot have acted on one. A new connection below.
        }
        let mut conn = self.connect().await?;
        conn.write_request(&head, body).await.map_err(|e| HttpError::exchange(format!("sending the request: {e}")))?;
        self.read_response(conn).await
    }

    async fn read_response(&self, mut conn: Conn) -> Result<Response, HttpError> {
        let head = read_head(&mut conn.io, &mut conn.buf).await.map_err(HttpError::exchange)?;
        let raw = conn.buf.split_to(head.len).freeze();
        let state = match head.framing {
            Framing::Empty => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(Chunked::default()),
            Framing::UntilClose => BodyState::UntilClose,
        };
        let status = StatusCode::from_u16(head.status)
            .map_err(|_| HttpError::exchange(format!("invalid status {}", head.status)))?;
        let mut body = Body { conn: Some(conn), state, keep_alive: head.keep_alive, client: self.shared.clone() };
        if matches!(body.state, BodyState::Done) {
            body.finish();
        }
        Ok(Response { status, head: raw, body })
    }

    /// The most recently used idle connection that is still open, if any.
    fn checkout(&self) -> Option<Conn> {
        loop {
            let mut idle = lock(&self.shared.idle).pop()?;
            if idle.since.elapsed() < IDLE_TIMEOUT && idle.conn.is_open() {
                return Some(idle.conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, HttpError> {
        let s = &*self.shared;
        // The outer bound also covers the name lookup; the addresses share the allowance.
        let mut tcp =
            match tokio::time::timeout(s.connect_timeout, tcp_connect(&s.host, s.port, s.connect_timeout)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => return Err(HttpError::connect(e)),
                Err(_) => return Err(HttpError::connect(format!("no connection within {:?}", s.connect_timeout))),
            };
        if let Some(connect) = &s.tunnel {
            open_tunnel(&mut tcp, connect).await.map_err(|e| HttpError::connect(format!("proxy tunnel: {e}")))?;
        }
        let io = match &s.tls {
            Some((tls, name)) => {
                let stream =
                    tls.connect(name.clone(), tcp).await.map_err(|e| HttpError::connect(format!("TLS: {e}")))?;
                Io::Tls(Box::new(stream))
            }
            None => Io::Tcp(tcp),
        };
        Ok(Conn { io, buf: BytesMut::new() })
    }
}

impl Shared {
    /// Keep a connection whose last exchange ended cleanly, for the next request.
    fn put(&self, conn: Conn) {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        // The oldest are at the bottom: drop those past their time, and the oldest if full.
        let expired = idle.iter().take_while(|i| now.duration_since(i.since) >= IDLE_TIMEOUT).count();
        let excess = (idle.len() + 1).saturating_sub(MAX_IDLE);
        let drop = expired.max(excess);
        if drop > 0 {
            idle.drain(..drop);
        }
        idle.push(Idle { conn, since: now });
    }
}

/// A pool's lock is held only to push or pop; a panic elsewhere cannot leave it half done.
fn lock(m: &Mutex<Vec<Idle>>) -> std::sync::MutexGuard<'_, Vec<Idle>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An upstream's answer: status and head now, body as it is read.
pub struct Response {
    pub status: StatusCode,
    head: Bytes,
    pub body: Body,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response").field("status", &self.status).finish_non_exhaustive()
    }
}

impl Response {
    /// A response header's value (the first, if repeated), when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.head, name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

enum BodyState {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

/// A response body, read from its connection as it is polled.
pub struct Body {
    /// None once the body is done (the connection is back in the pool or closed) or broken.
    conn: Option<Conn>,
    state: BodyState,
    keep_alive: bool,
    client: Arc<Shared>,
}

impl Body {
    /// The next piece of the body as it arrives; `None` at its end.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, HttpError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            let data = match &mut self.state {
                BodyState::Done => None,
                BodyState::Length(left) if !conn.buf.is_empty() => {
                    let n = (*left).min(conn.buf.len() as u64) as usize;
                    *left -= n as u64;
                    Some(conn.buf.split_to(n).freeze())
                }
                BodyState::Chunked(dec) => match dec.next(&mut conn.buf) {
                    Ok(data) => data,
                    Err(e) => return Poll::Ready(Some(Err(self.broken(e)))),
                },
                BodyState::UntilClose if !conn.buf.is_empty() => Some(conn.buf.split().freeze()),
                BodyState::Length(_) | BodyState::UntilClose => None,
            };
            let done = match &self.state {
                BodyState::Length(0) | BodyState::Done => true,
                BodyState::Chunked(dec) => dec.is_done(),
                _ => false,
            };
            if done {
                // Back to the pool as soon as the last byte is in hand, not on the next poll.
                self.finish();
            }
            if let Some(data) = data {
                return Poll::Ready(Some(Ok(data)));
            }
            if done {
                return Poll::Ready(None);
            }
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            match fill(&mut conn.io, &mut conn.buf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(self.state, BodyState::UntilClose) => {
                    self.conn = None;
                    self.state = BodyState::Done;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Some(Err(self.broken(CLOSED_IN_BODY)))),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(self.broken(e)))),
            }
        }
    }

    /// The whole body, or its first `limit` bytes (then the rest is not read and the
    /// connection is closed).
    pub async fn bytes(self, limit: usize) -> Result<Bytes, HttpError> {
        self.bytes_within(limit, None).await
    }

    /// [`Body::bytes`], except that once the body has started, a wait of more than `quiet`
    /// for its next bytes fails it (`is_stalled`). Before its first byte only the caller's
    /// own deadline applies: some servers send the head early and the body when done.
    pub async fn bytes_within(mut self, limit: usize, quiet: Option<Duration>) -> Result<Bytes, HttpError> {
        // A body of known length not yet all here (a large one): make room for all of it
        // once and read straight into it, rather than reading small pieces and copying them
        // together. Not for absurd lengths, which would only be allocated to be refused.
        if let (BodyState::Length(left), Some(conn)) = (&self.state, &mut self.conn) {
            let want = usize::try_from(*left).unwrap_or(usize::MAX).min(limit);
            if want > conn.buf.len() && want <= PRESIZE_LIMIT {
                conn.buf.reserve(want - conn.buf.len());
                let failed = loop {
                    if conn.buf.len() >= want {
                        break None;
                    }
                    let started = quiet.filter(|_| !conn.buf.is_empty());
                    match within(started, poll_fn(|cx| fill(&mut conn.io, &mut conn.buf, cx))).await {
                        Some(Ok(0)) => break Some(Some(CLOSED_IN_BODY.to_string())),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break Some(Some(e.to_string())),
                        // Stalled.
                        None => break Some(None),
                    }
                };
                match failed {
                    Some(Some(e)) => return Err(self.broken(e)),
                    Some(None) => return Err(self.stalled(quiet)),
                    None => {}
                }
            }
        }
        let Some(first) = poll_fn(|cx| self.poll_chunk(cx)).await.transpose()? else { return Ok(Bytes::new()) };
        if self.conn.is_none() || first.len() >= limit {
            // The common case: the body came whole with its head, no copy.
            return Ok(first.slice(..first.len().min(limit)));
        }
        let mut all = BytesMut::from(first);
        loop {
            let Some(next) = within(quiet, poll_fn(|cx| self.poll_chunk(cx))).await else {
                return Err(self.stalled(quiet));
            };
            let Some(chunk) = next.transpose()? else { break };
            all.extend_from_slice(&chunk[..chunk.len().min(limit - all.len())]);
            if all.len() >= limit {
                break;
            }
        }
        Ok(all.freeze())
    }

    /// The body ended as framed: keep the connection if the server allows and sent nothing
    /// more.
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                self.client.put(conn);
            }
        }
    }

    fn broken(&mut self, e: impl fmt::Display) -> HttpError {
        self.conn = None;
        self.state = BodyState::Done;
        HttpError::exchange(e)
    }

    fn stalled(&mut self, quiet: Option<Duration>) -> HttpError {
        let mut e = self.broken(format_args!("the body sent nothing for {:?}", quiet.unwrap_or_default()));
        e.kind = Kind::Stalled;
        e
    }
}

/// `fut`'s output, or None if `quiet` passes first (no limit when None). A future that is
/// ready at once, as a body that came with its head is, never arms a timer.
async fn within<F: std::future::Future>(quiet: Option<Duration>, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    if let Poll::Ready(out) = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return Some(out);
    }
    match quiet {
        None => Some(fut.await),
        Some(quiet) => tokio::time::timeout(quiet, fut).await.ok(),
    }
}

/// One upstream connection and the bytes read from it but not yet used.
struct Conn {
    io: Io,
    buf: BytesMut,
}

enum Io {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// Whether an idle connection can take a request: the server has not closed it and has
    /// sent nothing unasked. A quiet socket answers from its readiness flags, without a
    /// system call (tokio clears them when a read leaves the socket empty).
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut probe), Poll::Pending)
    }

    async fn write_request(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        write_all(&mut self.io, head, body).await
    }
}

/// Read what `io` has into `buf`: the number of bytes, 0 at its end.
fn fill<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Read until `buf` starts with a whole final response head (interim 1xx answers skipped);
/// the bytes after it stay in `buf`.
async fn read_head<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> Result<wire::Head, String> {
    loop {
        match wire::parse_head(buf).map_err(|e| e.to_string())? {
            Parsed::Head(h) => return Ok(h),
            Parsed::Interim(n) => {
                let _ = buf.split_to(n);
                continue;
            }
            Parsed::Partial => {}
        }
        let had = buf.len();
        match poll_fn(|cx| fill(io, buf, cx)).await {
            Ok(0) if had == 0 => return Err("connection closed before the response".into()),
            Ok(0) => return Err("connection closed in the middle of the response head".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Write `head` then `body` (one system call when the socket takes both).
async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, head: &[u8], body: &[u8]) -> io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() || !body.is_empty() {
        let bufs = [IoSlice::new(head), IoSlice::new(body)];
        let n = poll_fn(|cx| Pin::new(&mut *w).poll_write_vectored(cx, &bufs)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    poll_fn(|cx| Pin::new(&mut *w).poll_flush(cx)).await
}

/// Ask the proxy for a tunnel; on `2xx` the connection leads to the upstream.
async fn open_tunnel(tcp: &mut TcpStream, connect: &[u8]) -> Result<(), String> {
    write_all(tcp, connect, &[]).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    let h = read_head(tcp, &mut buf).await?;
    if !(200..300).contains(&h.status) {
        return Err(format!("the proxy answered {}", h.status));
    }
    if buf.len() > h.len {
        return Err("the proxy sent data before the tunnel opened".into());
    }
    Ok(())
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// TCP to the first of the host's addresses that accepts, with Nagle off (small requests
/// and SSE frames go out at once) and keep-alive probes on. The time allowed is shared out
/// evenly among the addresses, so one that drops packets (an IPv6 route that leads nowhere,
/// say) cannot use it all up before the next is tried.
async fn tcp_connect(host: &str, port: u16, within: Duration) -> io::Result<TcpStream> {
    connect_any(tokio::net::lookup_host((host, port)).await?.collect(), within).await
}

async fn connect_any(addrs: Vec<std::net::SocketAddr>, within: Duration) -> io::Result<TcpStream> {
    let each = within / u32::try_from(addrs.len().max(1)).unwrap_or(u32::MAX);
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(each, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                tcp.set_nodelay(true)?;
                let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
                socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
                return Ok(tcp);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(io::Error::new(io::ErrorKind::TimedOut, format!("{addr}: no answer within {each:?}")))
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the name has no address")))
}

fn proxy_address(proxy: &Uri) -> Result<(String, u16), String> {
    let host = proxy.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("proxy URL \"{proxy}\" has no host"))?;
    let port = proxy.port_u16().unwrap_or(if proxy.scheme_str() == Some("https") { 443 } else { 80 });
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What every provider's client shares, built once per process: the TLS configuration
/// (the bundled root certificates) and the proxy settings read from the environment.
fn shared() -> &'static (Arc<rustls::ClientConfig>, Matcher) {
    static SHARED: std::sync::OnceLock<(Arc<rustls::ClientConfig>, Matcher)> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        (tls_config(roots), Matcher::from_env())
    })
}

/// TLS to upstreams: certificates checked against `roots`, HTTP/1.1 offered by ALPN.
fn tls_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(tls)
}

#[cfg(test)]
mod tests;
