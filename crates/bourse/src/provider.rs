//! Upstream providers: one HTTP client, configured by data.
//!
//! Every vendor endpoint is this one client with a preset's dialect, base URL, auth style
//! and quirks ([`preset`]); the dialect decides the endpoint paths and auth headers, and
//! [`crate::dialect`] the bodies. Each provider owns a pool of keep-alive connections to its
//! origin ([`http`]: HTTP/1.1, rustls with bundled web-PKI roots, `HTTPS_PROXY`/`HTTP_PROXY`/
//! `NO_PROXY` honoured), a connect timeout, a first-byte timeout (until response headers; a
//! stream's first token is held to it too, see [`crate::relay`]), a read timeout (the
//! longest silence of an answer that has started) and a total timeout (until the last body
//! byte, see [`Upstream`]). Failures are classified here, once, into the
//! gateway's error taxonomy.

pub mod http;

use crate::canonical::Dialect;
use crate::config::{ProviderConfig, Secret, Timeouts};
use crate::dialect::gemini;
use crate::error::{Error, ErrorKind};
use crate::preset::{AuthStyle, Quirks};
use crate::vendor;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use bytes::Bytes;

/// A configured upstream.
#[derive(Debug)]
pub struct Provider {
    pub id: String,
    /// `id` as a header value (`x-bourse-provider` on every answer), built once; None if
    /// the id is not a valid header value, and then that header is left off.
    pub id_header: Option<HeaderValue>,
    /// The preset (or `openai-compatible`) this provider was built from.
    pub kind: &'static str,
    /// Whose catalog prices apply (the preset's vendor: "deepseek" for `deepseek-anthropic`).
    pub vendor: &'static str,
    pub dialect: Dialect,
    /// Where requests are processed, when the preset knows.
    pub hosting: Option<&'static str>,
    pub models: Vec<String>,
    pub timeouts: Timeouts,
    pub quirks: Quirks,
    /// A stream from this provider has carried usage (and none has since ended normally
    /// without): its streams then keep no text for an estimate (see
    /// [`crate::meter::estimate::Estimator::tally`]).
    stream_usage: std::sync::atomic::AtomicBool,
    /// The key sent in the auth header, kept to take it out of what the upstream says back.
    key: Option<Secret>,
    /// The connections to the base URL's origin, with the headers every request carries.
    client: http::Client,
    /// The base URL's path (`/v1`, or empty), and the endpoints under it. Gemini's chat
    /// path names the model, so it is built per request.
    base_path: String,
    chat_path: String,
    embeddings_path: String,
}

/// An upstream's answer (status 2xx, headers received), with the deadline for its body.
#[derive(Debug)]
pub struct Upstream {
    pub response: http::Response,
    /// When the total timeout runs out.
    pub deadline: tokio::time::Instant,
}

impl Upstream {
    /// A response header's value, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.response.header(name)
    }

    pub fn status(&self) -> StatusCode {
        self.response.status
    }
}

/// The upstream endpoints Bourse calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// Chat in the provider's dialect: OpenAI `/chat/completions`, Anthropic
    /// `/v1/messages`, Gemini `/models/{model}:generateContent` (or its streaming twin).
    Chat {
        model: &'a str,
        stream: bool,
    },
    Embeddings,
}

/// Anthropic's API version header; every Anthropic-compatible endpoint accepts this one.
static ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

impl Provider {
    /// Whether this provider's streams are known to carry usage.
    pub fn streams_report_usage(&self) -> bool {
        self.stream_usage.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A stream from this provider ended: whether it carried usage. Only a stream that
    /// ended normally without usage says the provider does not send it.
    pub fn stream_ended(&self, carried_usage: bool, completed: bool) {
        if carried_usage || completed {
            self.stream_usage.store(carried_usage, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn new(cfg: &ProviderConfig) -> Result<Provider, String> {
        let auth = match &cfg.api_key {
            Some(key) => {
                let (name, value) = match cfg.preset.auth {
                    AuthStyle::Bearer => (header::AUTHORIZATION, format!("Bearer {}", key.expose())),
                    AuthStyle::XApiKey => (X_API_KEY.clone(), key.expose().to_string()),
                    AuthStyle::GoogApiKey => (X_GOOG_API_KEY.clone(), key.expose().to_string()),
                };
                let mut v = HeaderValue::from_str(&value).map_err(|_| {
                    format!("providers.{}.api_key: the key contains characters not allowed in a header", cfg.id)
                })?;
                v.set_sensitive(true);
                Some((name, v))
            }
            None => None,
        };
        let base: Uri = cfg.base_url.parse().map_err(|e| format!("providers.{}.base_url: {e}", cfg.id))?;
        let base_path = base.path().trim_end_matches('/').to_string();
        let chat_path = match cfg.preset.dialect {
            Dialect::OpenAi => format!("{base_path}/chat/completions"),
            Dialect::Anthropic => format!("{base_path}/v1/messages"),
            // Built per request (it names the model).
            Dialect::Gemini => String::new(),
        };
        let mut headers = HeaderMap::with_capacity(6);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static(concat!("bourse/", env!("CARGO_PKG_VERSION"))));
        if let Some((name, value)) = auth {
            headers.insert(name, value);
        }
        if cfg.preset.dialect == Dialect::Anthropic {
            headers.insert(ANTHROPIC_VERSION.clone(), HeaderValue::from_static("2023-06-01"));
        }
        let client = http::Client::new(&base, &headers, cfg.timeouts.connect)
            .map_err(|e| format!("providers.{}.base_url: {e}", cfg.id))?;
        Ok(Provider {
            key: cfg.api_key.clone(),
            client,
            embeddings_path: format!("{base_path}/embeddings"),
            chat_path,
            base_path,
            id: cfg.id.clone(),
            id_header: HeaderValue::from_maybe_shared(process_lifetime(cfg.id.clone())).ok(),
            kind: cfg.preset.name,
            vendor: cfg.preset.vendor,
            dialect: cfg.preset.dialect,
            hosting: cfg.preset.hosting,
            models: cfg.models.clone(),
            timeouts: cfg.timeouts,
            quirks: cfg.preset.quirks,
            stream_usage: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// `e` with this provider's key taken out of its message. Upstreams quote what they were
    /// sent in their error messages ("Incorrect API key provided: sk-..."), and the message
    /// goes on to the client: every error of an attempt passes here first (see
    /// `exchange::attempt` and [`crate::relay`]).
    pub fn redact(&self, mut e: Error) -> Error {
        if let Some(key) = &self.key {
            if let std::borrow::Cow::Owned(clean) = key.redact(&e.message) {
                e.message = clean;
            }
        }
        e
    }

    /// POST a JSON body to an endpoint. Returns once response headers arrive (within
    /// the first-byte timeout); a non-2xx answer is read and classified into an [`Error`].
    pub async fn post_json(&self, endpoint: Endpoint<'_>, body: Vec<u8>) -> Result<Upstream, Error> {
        self.post_json_with(endpoint, body, None).await
    }

    /// [`Provider::post_json`] with one more header (a client header relayed as is).
    pub async fn post_json_with(
        &self,
        endpoint: Endpoint<'_>,
        body: Vec<u8>,
        extra: Option<(HeaderName, HeaderValue)>,
    ) -> Result<Upstream, Error> {
        // One clock read for both deadlines.
        let now = tokio::time::Instant::now();
        let deadline = now + self.timeouts.total;
        let gemini_path;
        let path = match (endpoint, self.dialect) {
            (Endpoint::Chat { model, stream }, Dialect::Gemini) => {
                gemini_path = format!("{}{}", self.base_path, gemini::endpoint_path(model, stream));
                // The model is written into the request line: it must be a valid target.
                gemini_path.parse::<axum::http::uri::PathAndQuery>().map_err(|e| {
                    Error::invalid("model", format!("model '{model}' does not fit in a Gemini URL: {e}"))
                })?;
                &gemini_path
            }
            (Endpoint::Chat { .. }, _) => &self.chat_path,
            (Endpoint::Embeddings, _) => &self.embeddings_path,
        };
        let response = match tokio::time::timeout_at(
            now + self.timeouts.first_byte,
            self.client.post(path, extra.as_ref(), &body),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(self.request_error(&e)),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::UpstreamTimeout,
                    format!("provider {} sent no response within {:?}", self.id, self.timeouts.first_byte),
                ))
            }
        };
        let upstream = Upstream { response, deadline };
        if upstream.status().is_success() {
            return Ok(upstream);
        }
        Err(self.status_error(upstream).await)
    }

    /// Read a whole (non-streamed) body, within the total timeout, and, once it has started,
    /// with no silence longer than the read timeout.
    pub async fn read_body(&self, upstream: Upstream) -> Result<Bytes, Error> {
        let body = upstream.response.body.bytes_within(usize::MAX, Some(self.timeouts.read));
        match tokio::time::timeout_at(upstream.deadline, body).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(self.body_error(&e)),
            Err(_) => Err(self.total_timeout()),
        }
    }

    /// The total timeout ran out while the body was still coming.
    pub fn total_timeout(&self) -> Error {
        Error::new(
            ErrorKind::UpstreamTimeout,
            format!("provider {} did not finish within {:?}", self.id, self.timeouts.total),
        )
    }

    /// An answer that had started sent nothing for the read timeout.
    pub fn read_timeout(&self) -> Error {
        Error::new(
            ErrorKind::UpstreamTimeout,
            format!("provider {} sent nothing for {:?} in the middle of its answer", self.id, self.timeouts.read),
        )
    }

    /// A stream's first token did not come within the first-byte timeout (counted from the
    /// request, headers included).
    pub fn first_token_timeout(&self) -> Error {
        Error::new(
            ErrorKind::UpstreamTimeout,
            format!("provider {} sent no token within {:?}", self.id, self.timeouts.first_byte),
        )
    }

    /// A request that got no response: connect, TLS or a connection closed before headers.
    fn request_error(&self, e: &http::HttpError) -> Error {
        if e.is_connect() {
            Error::new(ErrorKind::UpstreamUnreachable, format!("cannot connect to provider {}: {e}", self.id))
        } else {
            self.body_error(e)
        }
    }

    /// The body broke off (connection reset, malformed framing) or stalled.
    pub fn body_error(&self, e: &http::HttpError) -> Error {
        if e.is_stalled() {
            return self.read_timeout();
        }
        Error::new(ErrorKind::UpstreamUnreachable, format!("provider {} connection failed: {e}", self.id))
    }

    async fn status_error(&self, upstream: Upstream) -> Error {
        let status = upstream.status().as_u16();
        let retry_after = upstream.header("retry-after").map(str::to_string);
        // An error body is small; cap what we read so a hostile upstream cannot balloon memory.
        let limited = upstream.response.body.bytes(64 * 1024);
        let body = match tokio::time::timeout(self.timeouts.first_byte, limited).await {
            Ok(Ok(b)) => b,
            _ => Bytes::new(),
        };
        let vendor = vendor::parse(self.dialect, &body);
        let classified = vendor::classify(status, &vendor, &self.quirks);
        let message = match &vendor.message {
            Some(m) => format!("provider {} returned {status}: {m}", self.id),
            None => format!("provider {} returned {status}", self.id),
        };
        Error { retry_after, ..Error::new(ErrorKind::UpstreamStatus(Box::new(classified)), message) }
    }
}

/// `text` as [`Bytes`] that live as long as the process, without a reference count.
///
/// The provider's id is cloned into every answer as its provenance header and dropped after
/// it, on whichever worker runs the request. Made from ordinary (shared) `Bytes`, each clone
/// and drop is an atomic update of one reference count that the workers pass between their
/// caches; static `Bytes` clone for free. Providers are built once per process (once per
/// test in the test suites), so these few bytes are never worth freeing.
fn process_lifetime(text: String) -> Bytes {
    Bytes::from_static(Box::leak(text.into_boxed_str()).as_bytes())
}
