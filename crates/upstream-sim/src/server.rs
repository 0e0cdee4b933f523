//! The HTTP side: accept loop, per-request bookkeeping (stats, last request,
//! failure budget), the `/sim/*` control endpoints, and dispatch to a dialect.
//!
//! hyper's HTTP/1 server is used directly: one task per connection, no router
//! or middleware stack, so the simulator stays far cheaper per request than
//! the gateway it is measuring.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::body::SimBody;
use crate::config::{Failure, SimConfig};
use crate::{anthropic, gemini, openai, RecordedRequest, Stats};

/// Request bodies above this are refused; nothing legitimate in a test is close.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// State shared by the `Sim` handle and every connection.
pub(crate) struct Shared {
    active: RwLock<Arc<Active>>,
    pub(crate) requests: AtomicU64,
    pub(crate) completed_streams: AtomicU64,
    pub(crate) cancelled_streams: AtomicU64,
    last: Mutex<Option<RawRequest>>,
}

/// A config plus what is derived from it. Replaced wholesale by `set_config`,
/// which also restarts the `fail_first_n` budget.
pub(crate) struct Active {
    pub(crate) config: SimConfig,
    failures_served: AtomicU64,
    pub(crate) openai: openai::Precomputed,
}

/// The last request, kept raw: converting headers and parsing the body is
/// deferred to `last_request()` so the hot path only moves a few handles.
struct RawRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Shared {
    pub(crate) fn new(config: SimConfig) -> Shared {
        Shared {
            active: RwLock::new(Arc::new(Active::new(config))),
            requests: AtomicU64::new(0),
            completed_streams: AtomicU64::new(0),
            cancelled_streams: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    pub(crate) fn set_config(&self, config: SimConfig) {
        let next = Arc::new(Active::new(config));
        let previous = std::mem::replace(&mut *self.active.write().unwrap_or_else(PoisonError::into_inner), next);
        drop(previous);
    }

    pub(crate) fn active(&self) -> Arc<Active> {
        self.active.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            requests: self.requests.load(Ordering::Relaxed),
            completed_streams: self.completed_streams.load(Ordering::Relaxed),
            cancelled_streams: self.cancelled_streams.load(Ordering::Relaxed),
        }
    }

    fn record(&self, raw: RawRequest) {
        let previous = self.last.lock().unwrap_or_else(PoisonError::into_inner).replace(raw);
        // Free the old request outside the lock.
        drop(previous);
    }

    pub(crate) fn last_request(&self) -> Option<RecordedRequest> {
        let guard = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let raw = guard.as_ref()?;
        Some(RecordedRequest {
            method: raw.method.as_str().to_owned(),
            path: raw.uri.path().to_owned(),
            headers: raw
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
                .collect(),
            body: serde_json::from_slice(&raw.body).unwrap_or(serde_json::Value::Null),
        })
    }
}

impl Active {
    fn new(config: SimConfig) -> Active {
        Active { openai: openai::Precomputed::new(&config), config, failures_served: AtomicU64::new(0) }
    }
}

/// What a dialect handler sees of one request.
pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) active: Arc<Active>,
    /// 1-based request number, used to make ids unique.
    pub(crate) n: u64,
    /// The request's credential headers as `name: value` pairs, when the config echoes them.
    pub(crate) credentials: Option<String>,
}

impl Ctx {
    pub(crate) fn config(&self) -> &SimConfig {
        &self.active.config
    }

    /// The failure this model request should suffer, consuming one unit of
    /// the `fail_first_n` budget. Dialects call it once per model request,
    /// after validating the request (a 400 is not an injected failure).
    pub(crate) fn take_failure(&self) -> &Failure {
        let config = &self.active.config;
        if config.failure == Failure::None {
            return &Failure::None;
        }
        match config.fail_first_n {
            None => &config.failure,
            Some(n) => {
                let served = self.active.failures_served.fetch_add(1, Ordering::Relaxed);
                if served < u64::from(n) {
                    &config.failure
                } else {
                    &Failure::None
                }
            }
        }
    }

    /// A `malformed_json` payload (`broken`, ending in a blank line if it is an SSE event),
    /// quoting the request's credentials before that end when the config echoes them.
    pub(crate) fn malformed(&self, broken: &'static [u8]) -> std::borrow::Cow<'static, [u8]> {
        let Some(c) = &self.credentials else { return broken.into() };
        let (head, end) = match broken.strip_suffix(b"\n\n") {
            Some(head) => (head, &b"\n\n"[..]),
            None => (broken, &b""[..]),
        };
        let mut out = head.to_vec();
        out.extend_from_slice(format!(" \"request credentials: {c}\"").as_bytes());
        out.extend_from_slice(end);
        out.into()
    }

    /// Stats handle for a streaming body, so it can count itself completed
    /// or cancelled.
    pub(crate) fn stream_stats(&self) -> Option<Arc<Shared>> {
        Some(self.shared.clone())
    }

    /// A response with the headers every reply carries.
    pub(crate) fn response(&self, status: StatusCode, content_type: &'static str, body: SimBody) -> Response<SimBody> {
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if self.n > 0 {
            headers.insert("x-request-id", HeaderValue::from(self.n));
        }
        response
    }
}

/// How a dialect wants a request to end.
pub(crate) enum Reply {
    Respond(Response<SimBody>),
    /// Close the connection without a response.
    Close,
    /// Never respond; the connection ends when the client gives up.
    Stall,
}

/// Returned to hyper to make it drop the connection without writing anything.
#[derive(Debug)]
pub(crate) struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("upstream-sim: connection dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

/// Accepts connections until the task running it is aborted; aborting drops
/// the `JoinSet`, which aborts every connection with it.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        // No timer is installed, and a test that stalls must not be cut short.
        .header_read_timeout(None)
        // Answer pipelined requests in one write, which load generators like.
        .pipeline_flush(true);
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors or a connection reset before accept:
                // back off briefly rather than spin or give up.
                if !matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        // Small SSE frames must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let connection =
            builder.serve_connection(TokioIo::new(stream), service_fn(move |req| handle(shared.clone(), req)));
        connections.spawn(async move {
            // Errors here are clients going away or injected drops: nothing to report.
            let _ = connection.await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<SimBody>, DropConnection> {
    let path = req.uri().path();
    if path.starts_with("/sim/") {
        return Ok(control(&shared, req).await);
    }
    let is_api = path == "/v1" || path.starts_with("/v1/") || path.starts_with("/v1beta/");
    let n = if is_api { shared.requests.fetch_add(1, Ordering::Relaxed) + 1 } else { 0 };
    let mut ctx = Ctx { active: shared.active(), shared, n, credentials: None };
    if !is_api {
        return Ok(openai::unknown_route(&ctx, req.method(), path));
    }

    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Ok(openai::error_response(
                &ctx,
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large.",
                "invalid_request_error",
                None,
            ));
        }
        // The client went away while sending.
        Err(_) => return Err(DropConnection),
    };
    if ctx.config().echo_credentials {
        ctx.credentials = Some(credentials(&parts.headers));
    }
    let method = parts.method.clone();
    let uri = parts.uri.clone();
    ctx.shared.record(RawRequest { method: parts.method, uri: parts.uri, headers: parts.headers, body: body.clone() });

    let path = uri.path();
    let reply = match dialect(path) {
        Dialect::OpenAi => openai::handle(&ctx, &method, path, &body).await,
        Dialect::Anthropic => anthropic::handle(&ctx, &method, path, &body).await,
        Dialect::Gemini => gemini::handle(&ctx, &method, path, &body).await,
    };
    match reply {
        Reply::Respond(response) => Ok(response),
        Reply::Close => Err(DropConnection),
        Reply::Stall => {
            // hyper notices the client closing and drops this future.
            std::future::pending::<()>().await;
            Err(DropConnection)
        }
    }
}

/// The credential headers of a request, `name: value; ...` (`none` without any).
fn credentials(headers: &HeaderMap) -> String {
    let found: Vec<String> = ["authorization", "x-api-key", "x-goog-api-key"]
        .into_iter()
        .filter_map(|name| Some(format!("{name}: {}", String::from_utf8_lossy(headers.get(name)?.as_bytes()))))
        .collect();
    if found.is_empty() {
        "none".to_owned()
    } else {
        found.join("; ")
    }
}

enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
}

/// Which vendor an API path belongs to. The paths do not overlap, so one
/// simulator serves all three dialects at once.
fn dialect(path: &str) -> Dialect {
    if path == "/v1/messages" || path.starts_with("/v1/messages/") {
        Dialect::Anthropic
    } else if path.starts_with("/v1beta/") || (path.starts_with("/v1/models/") && path.contains(':')) {
        Dialect::Gemini
    } else {
        Dialect::OpenAi
    }
}

/// `/sim/*`: inspect and reconfigure a running simulator over HTTP.
async fn control(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/sim/stats") => json(StatusCode::OK, &shared.stats()),
        (&Method::GET, "/sim/last-request") => json(StatusCode::OK, &shared.last_request()),
        (&Method::GET, "/sim/config") => json(StatusCode::OK, &shared.active().config),
        (&Method::PUT, "/sim/config") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => return control_error(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            match serde_json::from_slice::<SimConfig>(&body) {
                Ok(config) => {
                    let response = json(StatusCode::OK, &config);
                    shared.set_config(config);
                    response
                }
                Err(e) => control_error(StatusCode::BAD_REQUEST, &format!("invalid config: {e}")),
            }
        }
        _ => control_error(StatusCode::NOT_FOUND, "unknown control endpoint"),
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<SimBody> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut response = Response::new(SimBody::full(bytes));
            *response.status_mut() = status;
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => control_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn control_error(status: StatusCode, message: &str) -> Response<SimBody> {
    let body = serde_json::json!({ "error": { "message": message } }).to_string();
    let mut response = Response::new(SimBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
