//! The HTTP server: the route table, the edge every request passes, and start/stop.
//!
//! A request's way through, in order (one place, so nobody has to reconstruct it):
//! 1. [`serve`] — hyper's HTTP/1.1 server, one task per connection.
//! 2. [`handle`] — request id (client's `x-request-id` if sane, else new), the gateway key
//!    (only under `/v1`, compared in constant time), then the response's id headers and the
//!    access log at debug with status and latency.
//! 3. `dispatch` — the route table (`/admin/v1` and `/dashboard` go to their own handlers
//!    before it: they take admin keys, not gateway keys).
//! 4. handlers in [`crate::api`] — body limit and content type, dialect in, resolve,
//!    attempt, response.

mod conn;

pub use conn::raise_fd_limit;

use crate::admin::{Admin, Directory, Resolved};
use crate::api;
use crate::canonical::Dialect;
use crate::config::{Config, EdgeLimits};
use crate::error::{Error, ErrorKind, ErrorLabel};
use crate::ledger::{Ledger, Writer, WriterHandle};
use crate::limit::{Counters, LocalCounters, RedisCounters};
use crate::state::{AppState, Caller, SharedState};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// The routes, in one table: `(method, path)` to handler. Unknown paths are 404, known paths
/// with another method 405 (with `allow`); GET routes answer HEAD too. Matching is a `match`
/// on the path rather than a general router: there are ten routes and the two chat routes
/// are the hot path.
async fn dispatch(state: SharedState, req: Request, caller: Caller, dialect: Dialect) -> Response {
    use axum::http::Method;
    let path = req.uri().path();
    let (allowed, route) = match path {
        "/healthz" => (Method::GET, Route::Healthz),
        "/readyz" => (Method::GET, Route::Readyz),
        "/metrics" if state.telemetry.metrics.is_some() => (Method::GET, Route::Metrics),
        "/v1/chat/completions" => (Method::POST, Route::ChatCompletions),
        "/v1/messages" => (Method::POST, Route::Messages),
        "/v1/responses" => (Method::POST, Route::Responses),
        "/v1/messages/count_tokens" => (Method::POST, Route::CountTokens),
        "/v1/embeddings" => (Method::POST, Route::Embeddings),
        "/v1/models" => (Method::GET, Route::Models),
        "/v1/bourse/usage" => (Method::GET, Route::Usage),
        "/v1/bourse/quote" => (Method::POST, Route::Quote),
        p if p.len() > "/v1/models/".len() && p.starts_with("/v1/models/") => (Method::GET, Route::Model),
        p if p.len() > "/v1/responses/".len() && p.starts_with("/v1/responses/") => (Method::GET, Route::Response),
        _ => {
            let msg = format!("no route for {} {path}", req.method());
            return Error::new(ErrorKind::NotFound, msg).render(dialect);
        }
    };
    let method = req.method();
    if method != allowed && !(allowed == Method::GET && method == Method::HEAD) {
        let msg = format!("{method} is not allowed on {path}");
        let mut resp = Error::new(ErrorKind::MethodNotAllowed, msg).render(dialect);
        let allow = if allowed == Method::GET { "GET,HEAD" } else { "POST" };
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        return resp;
    }
    // The handlers' futures are boxed so that a request future is sized for the handler it
    // runs, not for the largest (an exchange's is several KB; see `serve`).
    match route {
        Route::ChatCompletions => Box::pin(api::openai::chat_completions(state, caller, req)).await.into_response(),
        Route::Messages => Box::pin(api::anthropic::messages(state, caller, req)).await.into_response(),
        Route::Responses => Box::pin(api::responses::create(state, caller, req)).await.into_response(),
        Route::CountTokens => Box::pin(api::anthropic::count_tokens(state, req)).await.into_response(),
        Route::Embeddings => Box::pin(api::openai::embeddings(state, caller, req)).await.into_response(),
        Route::Models => api::openai::list_models(&state),
        Route::Model => {
            // Model ids contain slashes (`provider/model`) and may be percent-encoded.
            let id = percent_encoding::percent_decode_str(&path["/v1/models/".len()..]).decode_utf8_lossy();
            api::openai::get_model(&state, &id).into_response()
        }
        Route::Response => {
            let id = percent_encoding::percent_decode_str(&path["/v1/responses/".len()..]).decode_utf8_lossy();
            Box::pin(api::responses::retrieve(&state, &caller, &id)).await.into_response()
        }
        Route::Usage => Box::pin(api::usage::usage(state, &caller, req.uri())).await.into_response(),
        Route::Quote => Box::pin(api::quote::quote(state, req)).await.into_response(),
        Route::Healthz => healthz(),
        Route::Readyz => readyz(&state),
        Route::Metrics => Box::pin(api::metrics::metrics(&state)).await,
    }
}

#[derive(Clone, Copy)]
enum Route {
    Healthz,
    Readyz,
    ChatCompletions,
    Messages,
    Responses,
    Response,
    CountTokens,
    Embeddings,
    Models,
    Model,
    Usage,
    Quote,
    Metrics,
}

fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

fn readyz(state: &AppState) -> Response {
    if state.providers.is_empty() {
        return Error::new(ErrorKind::Unavailable, "no providers are configured").into_response();
    }
    let ids: Vec<&str> = state.providers.iter().map(|p| p.id.as_str()).collect();
    axum::Json(serde_json::json!({"status": "ready", "providers": ids})).into_response()
}

/// The dialect a client speaks, from the path: Anthropic's SDKs call `/v1/messages…`.
fn client_dialect(path: &str) -> Dialect {
    if path.starts_with("/v1/messages") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

/// A new request id: 48 bits of Unix milliseconds, then 80 random bits, in hex. Ids sort by
/// time, so the ledger's request-id index grows at its right edge instead of touching a
/// random page per row (measured: a random-key index was most of the ledger's cost).
fn new_request_id() -> Arc<str> {
    let ms = crate::timespec::now_ms() as u64;
    let mut id = [0u8; 36];
    id[..4].copy_from_slice(b"req_");
    hex_into(&mut id[4..16], ms);
    hex_into(&mut id[16..20], u64::from(fastrand::u16(..)));
    hex_into(&mut id[20..], fastrand::u64(..));
    // ASCII only; `Arc::from` copies it once, into the id's one allocation.
    Arc::from(std::str::from_utf8(&id).unwrap_or("req_"))
}

/// The low `out.len()` hex digits of `v`, most significant first.
fn hex_into(out: &mut [u8], v: u64) {
    let n = out.len();
    for (k, b) in out.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((v >> (4 * (n - 1 - k))) & 0xf) as usize];
    }
}

/// Every request, in order: request id (the client's `x-request-id` if sane, else new), the
/// gateway key for `/v1` paths, the route, then the id on the response and the access log
/// (at debug). Refusals are rendered in the dialect of the path.
async fn handle(state: SharedState, req: Request) -> Response {
    let arrived = state.telemetry.times_requests().then(Instant::now);
    let id: Arc<str> = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(Arc::from)
        .unwrap_or_else(new_request_id);
    // The access line is at debug: copy what it needs only when it will be written.
    let logged = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| (arrived.unwrap_or_else(Instant::now), req.method().clone(), req.uri().path().to_string()));
    let path = req.uri().path();
    let dashboard = path == "/dashboard" || path.starts_with("/dashboard/");
    if dashboard || path.starts_with("/admin/") {
        let mut resp = if dashboard {
            Box::pin(crate::dashboard::handle(&state.dashboard, state.dashboard_view(), req)).await
        } else {
            Box::pin(admin_api(&state, req)).await
        };
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
        }
        return resp;
    }
    let dialect = client_dialect(path);
    let gated = path == "/v1" || path.starts_with("/v1/");
    let key = if gated { authorize(&state, req.headers(), dialect) } else { Ok((None, None)) };
    let mut resp = match key {
        Ok((key_id, key)) => {
            dispatch(state, req, Caller { request_id: id.clone(), key_id, key, arrived }, dialect).await
        }
        Err(refusal) => refusal.render(dialect),
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        // Anthropic's SDKs read the id from `request-id` (their `_request_id`).
        if dialect == Dialect::Anthropic {
            resp.headers_mut().insert(REQUEST_ID.clone(), v.clone());
        }
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    if let Some((start, method, path)) = logged {
        let error = resp.extensions().get::<ErrorLabel>().map(|l| l.0).unwrap_or("");
        tracing::debug!(request_id = %id, %method, path, status = resp.status().as_u16(), error, elapsed_us = start.elapsed().as_micros() as u64, "request");
    }
    resp
}

/// Constant-time equality: the time taken does not depend on where the inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The key a request presents: `Authorization: Bearer` (OpenAI SDKs) or `x-api-key`
/// (Anthropic SDKs).
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .or_else(|| headers.get(&X_API_KEY).and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// What the edge knows of the key presented: its id, and the virtual key (with its tenant).
type Authorized = (Option<Arc<str>>, Option<Arc<Resolved>>);

/// Gateway keys, when configured, as `Authorization: Bearer` (OpenAI SDKs) or `x-api-key`
/// (Anthropic SDKs): config keys (`server.api_keys`) and virtual keys (`sk-bourse-...`, looked
/// up by their SHA-256 in the directory), or the refusal (worded for the client's dialect).
/// Every config key is compared (no early exit) so timing does not reveal which one nearly
/// matched; a virtual key is found by its hash, which reveals nothing of the secret.
/// A gateway with neither kind of key is open (it listens on loopback, or was told to).
fn authorize(state: &AppState, headers: &HeaderMap, dialect: Dialect) -> Result<Authorized, Error> {
    let virtual_keys = state.directory.as_ref().filter(|d| !d.is_empty());
    if state.api_keys.is_empty() && virtual_keys.is_none() {
        return Ok((None, None));
    }
    let Some(presented) = presented_key(headers) else {
        let how = match dialect {
            Dialect::Anthropic => "'x-api-key: <key>' or 'Authorization: Bearer <key>'",
            _ => "'Authorization: Bearer <key>'",
        };
        return Err(Error::new(ErrorKind::Unauthorized, format!("missing gateway key: send {how}")));
    };
    if presented.starts_with(crate::tenancy::SECRET_PREFIX) {
        if let Some(found) = virtual_keys.and_then(|d| d.lookup(presented, crate::timespec::now_ms())) {
            return Ok((Some(found.id.clone()), Some(found)));
        }
    }
    let mut matched = None;
    for (i, k) in state.api_keys.iter().enumerate() {
        if ct_eq(presented.as_bytes(), k.expose().as_bytes()) {
            matched = Some(i);
        }
    }
    match matched {
        Some(i) => Ok((Some(state.key_ids[i].clone()), None)),
        None => Err(Error::new(ErrorKind::Unauthorized, "invalid gateway key")),
    }
}

/// `/admin/v1/*`: only for `server.admin_keys` (a client key, virtual or not, is refused:
/// no key can raise its own limits). The audit rows name the admin key by its id.
async fn admin_api(state: &AppState, req: Request) -> Response {
    let refuse = |kind, msg: &str| Error::new(kind, msg.to_string()).render(Dialect::OpenAi);
    let Some(admin) = &state.admin else {
        return refuse(ErrorKind::NotFound, "the admin API needs the ledger's store ([storage] ledger = false here)");
    };
    if state.admin_keys.is_empty() {
        return refuse(ErrorKind::Forbidden, "the admin API is off: set server.admin_keys");
    }
    let presented = presented_key(req.headers()).unwrap_or("");
    let mut matched = None;
    for (i, k) in state.admin_keys.iter().enumerate() {
        if ct_eq(presented.as_bytes(), k.expose().as_bytes()) {
            matched = Some(i);
        }
    }
    let Some(i) = matched else {
        return refuse(ErrorKind::Unauthorized, "the admin API needs one of server.admin_keys");
    };
    let actor = format!("admin:{}", state.admin_key_ids[i]);
    let (parts, body) = req.into_parts();
    let body = match crate::api::read_body(&parts.headers, body, state).await {
        Ok(b) => b,
        Err(e) => return e.render(Dialect::OpenAi),
    };
    let resp = crate::api::admin::handle(admin, &actor, &parts.method, parts.uri.path(), parts.uri.query(), body).await;
    // This replica serves its own change at once; the others within their next poll.
    if parts.method != axum::http::Method::GET {
        if let Some(d) = &state.directory {
            if let Err(e) = d.refresh().await {
                tracing::warn!(error = %e, "directory: reload after an admin change failed");
            }
        }
    }
    resp
}

/// Options from the command line that override the config.
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    pub listen: Option<SocketAddr>,
    pub insecure_no_auth: bool,
}

/// Refuse to expose an unauthenticated gateway beyond this machine unless told to.
pub fn check_exposure(listen: SocketAddr, has_keys: bool, insecure_no_auth: bool) -> Result<(), String> {
    if has_keys || insecure_no_auth || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "refusing to listen on {listen} without authentication: set server.api_keys (e.g. [\"env:BOURSE_API_KEY\"]), listen on 127.0.0.1, or pass --insecure-no-auth"
    ))
}

/// Run the gateway until SIGINT/SIGTERM, then stop as [`Running::stop`] does.
pub async fn run(cfg: Config, opts: ServeOptions) -> Result<(), String> {
    // Before the listener opens, so that a signal sent once clients can connect always
    // stops the gateway gracefully (never by the default action, which kills it).
    let signalled = shutdown_signal();
    let running = start(&cfg, opts).await?;
    signalled.await;
    running.stop().await;
    Ok(())
}

/// A gateway [`start`]ed and serving on its own task until [`Running::stop`].
pub struct Running {
    /// The address it listens on (the port is known here when the config asked for port 0).
    pub addr: SocketAddr,
    pub state: SharedState,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    writer: Option<WriterHandle>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// Everything `bourse serve` does before it waits for a signal: the exposure check, the
/// state and ledger ([`prepare`]), the open-file limit, the listener; then it serves on a
/// task of its own. `bourse demo` starts its gateway here too, so both serve alike.
pub async fn start(cfg: &Config, opts: ServeOptions) -> Result<Running, String> {
    let listen = opts.listen.unwrap_or(cfg.server.listen);
    check_exposure(listen, !cfg.server.api_keys.is_empty(), opts.insecure_no_auth)?;
    let (mut state, writer) = prepare(cfg).await?;
    let fds = conn::raise_fd_limit();
    let max_connections = conn::max_connections(cfg.server.limits.max_connections, fds)?;
    state.limits.max_connections = Some(max_connections);
    let state = Arc::new(state);
    if state.providers.is_empty() {
        tracing::warn!("no providers configured: set a provider key (e.g. OPENAI_API_KEY) or write a config file");
    }
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let ids: Vec<&str> = state.providers.iter().map(|p| p.id.as_str()).collect();
    tracing::info!(providers = ?ids, max_connections, "bourse listening on http://{addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    Ok(Running { addr, state, stop, server, writer })
}

impl Running {
    /// Stop accepting, let in-flight requests finish for up to `server.shutdown_grace` and
    /// end those still running then ([`serve`]), then flush every row the ledger's writer
    /// still holds, the live evidence not yet stored and every span not yet exported: the
    /// flush comes after the grace period, not within it.
    pub async fn stop(self) {
        tracing::info!(
            grace_secs = self.state.shutdown.grace.as_secs_f64(),
            "shutting down: no new connections, finishing in-flight requests"
        );
        let _ = self.stop.send(());
        if let Err(e) = self.server.await {
            tracing::error!(error = %e, "the server task failed");
        }
        // Requests gone, some of their rows may still be on their way (a stream's estimate).
        let settling = &self.state.shutdown.settling;
        settling.close();
        settling.wait().await;
        if let Some(handle) = self.writer {
            // Every request has settled (or was ended at the deadline, which records its row too):
            // flush what the writer still holds.
            let stats = handle.shutdown().await;
            tracing::info!(?stats, "ledger flushed");
        }
        // Live check outcomes counted since the last evidence sync (every 5 s) go to the store.
        if let Some(ledger) = &self.state.reports {
            if let Err(e) = self.state.router.evidence.sync(Some(ledger)).await {
                tracing::warn!(error = %e, "evidence: the last outcomes could not be stored");
            }
        }
        // The requests' last spans are queued: send them before the process goes.
        if let Some(tracer) = &self.state.telemetry.tracer {
            tracer.shutdown().await;
        }
        tracing::info!("stopped");
    }
}

/// Everything a serving gateway needs besides its listener: the state from the config, the
/// ledger (its writer and a read handle), the directory of tenants and virtual keys (kept
/// fresh from the store), and the limit counters.
pub async fn prepare(cfg: &Config) -> Result<(AppState, Option<WriterHandle>), String> {
    let mut state = AppState::from_config(cfg)?;
    if let Some(endpoint) = &cfg.telemetry.otlp_endpoint {
        state.telemetry.tracer = Some(crate::telemetry::trace::Tracer::start(endpoint)?);
        tracing::info!(endpoint = %endpoint, "traces: exporting spans over OTLP/HTTP");
    }
    let mut writer_handle = None;
    if let Some(url) = &cfg.storage.url {
        let ledger = Ledger::open(url).await.map_err(|e| format!("storage.url: cannot open the ledger: {e}"))?;
        let (writer, handle) = Writer::start(ledger, writer_config(&cfg.storage));
        state.ledger = Some(writer);
        let reports = Ledger::open(url).await.map_err(|e| format!("storage.url: cannot open the ledger: {e}"))?;
        let secret =
            reports.key_id_secret().await.map_err(|e| format!("cannot read the installation's secret: {e}"))?;
        state.use_key_id_secret(&secret);
        let directory =
            Arc::new(Directory::load(reports.clone()).await.map_err(|e| format!("cannot load tenants and keys: {e}"))?);
        // Every replica polls the store, so a key revoked anywhere is refused everywhere
        // within a poll (250 ms).
        directory.clone().spawn_refresh(crate::admin::REFRESH_EVERY);
        state.directory = Some(directory);
        let evidence = reports.evidence().await.map_err(|e| format!("cannot load quality evidence: {e}"))?;
        state.router.evidence.set_rows(evidence);
        state.router.evidence.clone().spawn_sync(Some(reports.clone()), crate::route::evidence::SYNC_EVERY);
        state.admin = Some(Admin::new(reports.clone(), cfg.routing.clone()));
        state.reports = Some(reports);
        writer_handle = Some(handle);
        tracing::info!(ledger = %redact_url(url), "ledger open");
    }
    if cfg.storage.url.is_none() {
        state.router.evidence.clone().spawn_sync(None, crate::route::evidence::SYNC_EVERY);
    }
    // Only tenants' keys spend against counters: with none stored there is nothing to rebuild,
    // and the start-up skips scanning the ledger.
    let tenants = state.directory.as_ref().is_some_and(|d| !d.tenants_snapshot().is_empty());
    state.counters = counters(cfg, state.reports.as_ref().filter(|_| tenants)).await?;
    // Replicas that share counters share the response cache too.
    if let (Some(c), Some(url)) = (cfg.cache, &cfg.shared.redis_url) {
        state.cache = Some(crate::cache::Cache::redis(c, url.expose()).map_err(|e| format!("shared.redis_url: {e}"))?);
    }
    Ok((state, writer_handle))
}

/// The counters budgets and rate limits are decided on: Redis when `[shared] redis_url` is
/// set, else this process's own, rebuilt from the ledger (the day's, the month's and all-time
/// spend of every key and tenant), so a restart forgets no spend. With Redis, the in-process
/// counters that `on_shared_failure = "open"` falls back on start from the ledger too.
/// `ledger`: where to rebuild from (None: start empty).
pub async fn counters(cfg: &Config, ledger: Option<&Ledger>) -> Result<Counters, String> {
    let local = LocalCounters::new();
    if let Some(ledger) = ledger {
        seed(&local, ledger).await.map_err(|e| format!("cannot rebuild spend counters from the ledger: {e}"))?;
    }
    if let Some(url) = &cfg.shared.redis_url {
        let redis = RedisCounters::connect(url.expose()).await.map_err(|e| format!("shared.redis_url: {e}"))?;
        return Ok(Counters::Shared {
            redis,
            fallback: local,
            on_failure: cfg.shared.on_failure,
            failures: Default::default(),
        });
    }
    Ok(Counters::Local(local))
}

/// Each key's and tenant's spend today, this month and in total, from the ledger.
async fn seed(local: &LocalCounters, ledger: &Ledger) -> Result<(), crate::ledger::LedgerError> {
    use crate::ledger::{GroupBy, ReportQuery};
    use crate::limit::{window_start, ScopeKind, Window};
    use std::collections::HashMap;
    let now = crate::timespec::now_ms();
    for (kind, by) in [(ScopeKind::Key, GroupBy::Key), (ScopeKind::Tenant, GroupBy::Tenant)] {
        let mut spend: HashMap<String, [i64; 3]> = HashMap::new();
        for (i, window) in [Window::Day, Window::Month, Window::Total].into_iter().enumerate() {
            let q = ReportQuery { since_ms: window_start(window, now), until_ms: None, by, key: None };
            for row in ledger.report(&q).await? {
                if row.group != "(none)" {
                    spend.entry(row.group).or_default()[i] = row.cost_nanos;
                }
            }
        }
        for (id, [day, month, total]) in spend {
            local.seed(kind, &id, now, day, month, total);
        }
    }
    Ok(())
}

/// Accept HTTP/1.1 connections until `stop` completes, then stop accepting (the listener is
/// closed: new connections are refused), ask every open connection to close after its
/// current request, and return once they all have — or, once `state.shutdown.grace` has
/// passed, end the requests still in flight and return when they are gone. A request ended
/// so is dropped like one whose client went away: its unsettled attempt or open stream
/// records its ledger row as it drops. The server waits until every connection's task is
/// gone, so those rows reach the writer before its last flush (left to the runtime's exit,
/// they would come after it). Dropping the future ends every connection at once.
///
/// hyper's HTTP/1 server directly, one task per connection: no HTTP/2 detection and no
/// router framework in the per-request path (both showed in profiles under load). Each
/// connection is held to the edge's limits ([`conn`]): a cap on how many are open, head,
/// idle and send timeouts, head size and header count.
pub async fn serve(listener: TcpListener, state: SharedState, stop: impl std::future::Future<Output = ()>) {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    let limits = state.limits;
    let mut http = http1::Builder::new();
    // The read buffer holds a whole head; the write queue, what a client that stops
    // reading can make the gateway hold before the body stops being polled.
    http.max_header_size(limits.max_header_bytes).max_buf_size(limits.max_header_bytes.max(64 * 1024));
    if limits.max_headers != EdgeLimits::default().max_headers {
        // hyper keeps its default of 100 header slots on the stack; any other count costs
        // an allocation per request.
        http.max_headers(limits.max_headers);
    }
    let slots = limits.max_connections.unwrap_or(conn::DEFAULT_MAX_CONNECTIONS);
    let open = Arc::new(tokio::sync::Semaphore::new(slots));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin; a
                    // connection reset before accept is simply gone.
                    if !matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                        tracing::warn!(error = %e, "accept failed; retrying in 1s");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            conn::refuse(tcp);
            continue;
        };
        // Nagle's algorithm would hold small SSE frames back by tens of milliseconds.
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let busy = conn::Busy::default();
        let io = TokioIo::new(conn::Guarded::new(tcp, limits, busy.clone()));
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let state = state.clone();
            let in_flight = busy.begin();
            async move {
                let continues = req
                    .headers()
                    .get(header::EXPECT)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
                let req = req.map(|body| axum::body::Body::new(conn::RequestBody::new(body, continues)));
                // Boxed: hyper keeps a connection's request future in an allocation sized for
                // it for the connection's whole life; boxed, an idle or streaming connection
                // holds a pointer, and the request's state is freed once its head is out.
                let resp = Box::pin(handle(state, req)).await;
                Ok::<_, std::convert::Infallible>(conn::finish(resp, in_flight))
            }
        });
        let conn = graceful.watch(http.serve_connection(io, service));
        connections.spawn(async move {
            // A client that goes away mid-request is not an error of the gateway's.
            let _ = conn.await;
            drop(slot);
        });
        // Forget the connections that have ended (the set keeps each one's result till then).
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let grace = state.shutdown.grace;
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "shutdown deadline reached; ending the requests still in flight"
        );
        state.shutdown.set_overdue();
        connections.shutdown().await;
    }
}

fn writer_config(s: &crate::config::StorageConfig) -> crate::ledger::WriterConfig {
    use crate::config::OnFull;
    use crate::ledger::{FullPolicy, WriterConfig};
    let defaults = WriterConfig::default();
    let on_full = match s.on_full {
        OnFull::Block => defaults.on_full,
        OnFull::Drop => FullPolicy::Drop,
    };
    WriterConfig { queue: s.queue, on_full, ..defaults }
}

/// A storage URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM that arrives after this call: on Unix the
/// handlers are installed here, not when the future is first polled. Must be called within
/// the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (interrupt, terminate) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
        async move {
            let received = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = received(interrupt) => {}
                () = received(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_rules() {
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:1".parse().unwrap();
        assert!(check_exposure(lo, false, false).is_ok());
        assert!(check_exposure(any, false, false).unwrap_err().contains("--insecure-no-auth"));
        assert!(check_exposure(any, true, false).is_ok());
        assert!(check_exposure(any, false, true).is_ok());
    }

    #[test]
    fn request_ids_are_hex_and_sort_by_time() {
        let a = new_request_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_request_id();
        for id in [&a, &b] {
            assert_eq!(id.len(), 36, "{id}");
            assert!(id.starts_with("req_") && id[4..].bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
        assert!(a[..16] < b[..16], "{a} then {b}");
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let stamped = u64::from_str_radix(&b[4..16], 16).unwrap();
        assert!(ms - stamped < 60_000, "{stamped} vs now {ms}");
        let mut out = [0u8; 4];
        hex_into(&mut out, 0x1_2a3f);
        assert_eq!(&out, b"2a3f");
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
