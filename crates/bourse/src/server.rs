//! The HTTP server: state, the router, its layers, and start/stop.
//!
//! Layer order, outermost first (one place, so nobody has to reconstruct it):
//! 1. `edge` — request id (client's `x-request-id` if sane, else new), response header,
//!    access log at debug with status and latency.
//! 2. `auth` (only under `/v1`) — gateway keys, compared in constant time.
//! 3. handlers in [`crate::api`] — body limit and content type, dialect in, resolve,
//!    attempt, response.
//!
//! `app(state)` builds the router without a socket so tests can drive it directly.

use crate::api;
use crate::canonical::Dialect;
use crate::config::{Config, Secret};
use crate::error::{Error, ErrorKind, ErrorLabel};
use crate::ledger::{Ledger, Writer};
use crate::meter::Meter;
use crate::provider::Provider;
use crate::route::Providers;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// Shared, read-only state of a running gateway.
#[derive(Debug)]
pub struct AppState {
    pub providers: Providers,
    pub api_keys: Vec<Secret>,
    /// Stable, non-secret ids of the gateway keys (same order), for ledger rows.
    pub key_ids: Vec<Arc<str>>,
    pub meter: Meter,
    pub router: crate::route::Router,
    /// Where ledger rows go; None when the ledger is off.
    pub ledger: Option<Writer>,
    /// A read handle for usage reports.
    pub reports: Option<Ledger>,
    pub max_body_bytes: usize,
    /// Unix seconds at start, for the `created` field of model objects.
    pub started: u64,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// Build runtime state (HTTP clients included) from a validated config.
    pub fn from_config(cfg: &Config) -> Result<AppState, String> {
        let mut list = Vec::new();
        for p in &cfg.providers {
            list.push(Arc::new(Provider::new(p)?));
        }
        let providers = Providers::new(list);
        let router = crate::route::Router::new(&providers, &cfg.catalog, cfg);
        Ok(AppState {
            router,
            providers,
            api_keys: cfg.server.api_keys.clone(),
            key_ids: cfg.server.api_keys.iter().map(|k| Arc::from(key_id(k.expose()))).collect(),
            meter: Meter::new(cfg.catalog.clone(), cfg.reference.clone()),
            ledger: None,
            reports: None,
            max_body_bytes: usize::try_from(cfg.server.max_body_bytes).unwrap_or(usize::MAX),
            started: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        })
    }
}

/// A key's id: a short hash, so ledger rows say which key without storing it.
pub fn key_id(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("key_{:08x}", h as u32)
}

/// The id of the gateway key a request used, as an extension.
#[derive(Clone, Debug)]
pub struct KeyId(pub Arc<str>);

/// The request id, available to handlers as an extension.
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

pub fn app(state: SharedState) -> Router {
    let v1 = Router::new()
        .route("/chat/completions", post(api::openai::chat_completions))
        .route("/embeddings", post(api::openai::embeddings))
        .route("/models", get(api::openai::list_models))
        .route("/models/{*id}", get(api::openai::get_model))
        .route("/bourse/usage", get(api::usage::usage))
        .route("/bourse/quote", post(api::quote::quote))
        .route("/messages", post(api::anthropic::messages))
        .route("/messages/count_tokens", post(api::anthropic::count_tokens))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(edge))
        .with_state(state)
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<SharedState>) -> Response {
    if state.providers.is_empty() {
        return Error::new(ErrorKind::Unavailable, "no providers are configured").into_response();
    }
    let ids: Vec<&str> = state.providers.iter().map(|p| p.id.as_str()).collect();
    axum::Json(serde_json::json!({"status": "ready", "providers": ids})).into_response()
}

/// The dialect a client speaks, from the path: Anthropic's SDKs call `/v1/messages…`.
/// (Layers inside the `/v1` nest see the path without its `/v1`.)
fn client_dialect(path: &str) -> Dialect {
    if path.strip_prefix("/v1").unwrap_or(path).starts_with("/messages") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

async fn not_found(req: Request) -> Response {
    let path = req.uri().path();
    Error::new(ErrorKind::NotFound, format!("no route for {} {path}", req.method())).render(client_dialect(path))
}

async fn method_not_allowed(req: Request) -> Response {
    let path = req.uri().path();
    Error::new(ErrorKind::MethodNotAllowed, format!("{} is not allowed on {path}", req.method()))
        .render(client_dialect(path))
}

/// A new request id: 48 bits of Unix milliseconds, then 80 random bits, in hex. Ids sort by
/// time, so the ledger's request-id index grows at its right edge instead of touching a
/// random page per row (measured: a random-key index was most of the ledger's cost).
fn new_request_id() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    format!("req_{:012x}{:04x}{:016x}", ms & 0xffff_ffff_ffff, fastrand::u16(..), fastrand::u64(..))
}

/// Outermost layer: request id and access log.
async fn edge(mut req: Request, next: Next) -> Response {
    let id: Arc<str> = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(Arc::from)
        .unwrap_or_else(|| Arc::from(new_request_id()));
    // The access line is at debug: copy what it needs only when it will be written.
    let logged = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| (Instant::now(), req.method().clone(), req.uri().path().to_string()));
    let anthropic = client_dialect(req.uri().path()) == Dialect::Anthropic;
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        // Anthropic's SDKs read the id from `request-id` (their `_request_id`).
        if anthropic {
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

/// Gateway keys, when configured, as `Authorization: Bearer` (OpenAI SDKs) or `x-api-key`
/// (Anthropic SDKs). Every key is compared (no early exit) so timing does not reveal which
/// one nearly matched. Refusals are rendered in the dialect of the path.
async fn auth(State(state): State<SharedState>, mut req: Request, next: Next) -> Response {
    if state.api_keys.is_empty() {
        return next.run(req).await;
    }
    let headers = req.headers();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .or_else(|| headers.get(&X_API_KEY).and_then(|v| v.to_str().ok()))
        .map(str::trim);
    let dialect = client_dialect(req.uri().path());
    let Some(presented) = presented else {
        let how = match dialect {
            Dialect::Anthropic => "'x-api-key: <key>' or 'Authorization: Bearer <key>'",
            _ => "'Authorization: Bearer <key>'",
        };
        return Error::new(ErrorKind::Unauthorized, format!("missing gateway key: send {how}")).render(dialect);
    };
    let mut matched = None;
    for (i, k) in state.api_keys.iter().enumerate() {
        if ct_eq(presented.as_bytes(), k.expose().as_bytes()) {
            matched = Some(i);
        }
    }
    let Some(i) = matched else {
        return Error::new(ErrorKind::Unauthorized, "invalid gateway key").render(dialect);
    };
    req.extensions_mut().insert(KeyId(state.key_ids[i].clone()));
    next.run(req).await
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

/// Run the gateway until SIGINT/SIGTERM, then drain in-flight requests for up to
/// `server.shutdown_grace`.
pub async fn run(cfg: Config, opts: ServeOptions) -> Result<(), String> {
    let listen = opts.listen.unwrap_or(cfg.server.listen);
    check_exposure(listen, !cfg.server.api_keys.is_empty(), opts.insecure_no_auth)?;
    let mut state = AppState::from_config(&cfg)?;
    let mut writer_handle = None;
    if let Some(url) = &cfg.storage.url {
        let ledger = Ledger::open(url).await.map_err(|e| format!("storage.url: cannot open the ledger: {e}"))?;
        let (writer, handle) = Writer::start(ledger, writer_config(&cfg.storage));
        state.ledger = Some(writer);
        state.reports = Some(Ledger::open(url).await.map_err(|e| format!("storage.url: cannot open the ledger: {e}"))?);
        writer_handle = Some(handle);
        tracing::info!(ledger = %redact_url(url), "ledger open");
    }
    let state = Arc::new(state);
    if state.providers.is_empty() {
        tracing::warn!("no providers configured: set a provider key (e.g. OPENAI_API_KEY) or write a config file");
    }
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let ids: Vec<&str> = state.providers.iter().map(|p| p.id.as_str()).collect();
    tracing::info!(providers = ?ids, "bourse listening on http://{local}");
    let grace = cfg.server.shutdown_grace;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        // Nagle's algorithm would hold small SSE frames back by tens of milliseconds.
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let mut server = std::pin::pin!(std::future::IntoFuture::into_future(server));
    tokio::select! {
        r = &mut server => return r.map_err(|e| e.to_string()),
        () = shutdown_signal() => {}
    }
    tracing::info!(grace_secs = grace.as_secs_f64(), "shutting down: no new connections, finishing in-flight requests");
    let _ = stop_tx.send(());
    match tokio::time::timeout(grace, server).await {
        Ok(r) => r.map_err(|e| e.to_string())?,
        Err(_) => tracing::warn!("shutdown deadline reached; abandoning requests still in flight"),
    }
    if let Some(handle) = writer_handle {
        // Every request has settled (or been abandoned): flush what the writer still holds.
        let stats = handle.shutdown().await;
        tracing::info!(?stats, "ledger flushed");
    }
    tracing::info!("stopped");
    Ok(())
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
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
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
