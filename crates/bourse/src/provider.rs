//! Upstream providers: one HTTP client, configured by data.
//!
//! Every vendor endpoint is this one client with a preset's dialect, base URL, auth style
//! and quirks ([`preset`]); the dialect decides the endpoint paths and auth headers, and
//! [`crate::dialect`] the bodies. Each provider owns a pooled keep-alive connection pool
//! ([`http`]: rustls with bundled web-PKI roots, `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`
//! honoured), a connect timeout, a first-byte timeout (until response headers) and a total
//! timeout (until the last body byte, see [`Upstream`]). Failures are classified here, once, into the gateway's
//! error taxonomy.

pub mod http;
pub mod preset;

use crate::canonical::Dialect;
use crate::config::{ProviderConfig, Timeouts};
use crate::dialect::openai::VendorError;
use crate::dialect::{anthropic, gemini, openai};
use crate::error::{Error, ErrorKind, UpstreamStatus};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use preset::{AuthStyle, Quirks};

/// Vendor error codes/types that mean "out of balance or quota": never retried on the
/// same provider, whatever the status (OpenAI and DashScope `insufficient_quota`,
/// DashScope `Arrearage`, Zhipu 1112/1113/1121, Anthropic spend limits, MiniMax 1008,
/// Moonshot `exceeded_current_quota_error`).
const EXHAUSTED_CODES: &[&str] = &[
    "insufficient_quota",
    "Arrearage",
    "1112",
    "1113",
    "1121",
    "1008",
    "enforced_spend_limit_reached",
    "billing_error",
    "exceeded_current_quota_error",
    "insufficient_balance",
];

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
    pub base_url: String,
    /// Where requests are processed, when the preset knows.
    pub hosting: Option<&'static str>,
    pub models: Vec<String>,
    pub timeouts: Timeouts,
    pub quirks: Quirks,
    /// The headers every request carries (content type, user agent, auth, proxy auth,
    /// Anthropic's version, `Host` for plain http), built once: cloning the map costs less
    /// than hashing and inserting each name on every request.
    headers: HeaderMap,
    client: http::Client,
    /// Endpoint URIs, parsed once here rather than on every request (Gemini's chat URI
    /// names the model, so it is built per request).
    chat_uri: Uri,
    embeddings_uri: Uri,
}

/// An upstream's answer (status 2xx, headers received), with the deadline for its body.
#[derive(Debug)]
pub struct Upstream {
    pub response: http::Response,
    /// When the total timeout runs out.
    pub deadline: tokio::time::Instant,
}

impl Upstream {
    pub fn headers(&self) -> &axum::http::HeaderMap {
        self.response.headers()
    }

    pub fn status(&self) -> StatusCode {
        self.response.status()
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
    pub fn new(cfg: &ProviderConfig) -> Result<Provider, String> {
        let client = http::Client::new(cfg.timeouts.connect);
        let auth = match &cfg.api_key {
            Some(key) => {
                let (name, value) = match cfg.preset.auth {
                    AuthStyle::Bearer => (header::AUTHORIZATION, format!("Bearer {}", key.expose())),
                    AuthStyle::XApiKey => (X_API_KEY.clone(), key.expose().to_string()),
                    AuthStyle::GoogApiKey => (X_GOOG_API_KEY.clone(), key.expose().to_string()),
                };
                let mut v = HeaderValue::from_maybe_shared(process_lifetime(value)).map_err(|_| {
                    format!("providers.{}.api_key: the key contains characters not allowed in a header", cfg.id)
                })?;
                v.set_sensitive(true);
                Some((name, v))
            }
            None => None,
        };
        let url = |path: &str| {
            Uri::from_maybe_shared(process_lifetime(format!("{}{path}", cfg.base_url)))
                .map_err(|e| format!("providers.{}.base_url: {e}", cfg.id))
        };
        let chat_path = match cfg.preset.dialect {
            Dialect::OpenAi => "/chat/completions",
            Dialect::Anthropic => "/v1/messages",
            // Checked here once; the real URL is built per request.
            Dialect::Gemini => "/models/m:generateContent",
        };
        let chat_uri = url(chat_path)?;
        let mut headers = HeaderMap::with_capacity(6);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static(concat!("bourse/", env!("CARGO_PKG_VERSION"))));
        if let Some((name, value)) = auth {
            headers.insert(name, value);
        }
        if let Some(value) = client.proxy_authorization(&chat_uri) {
            headers.insert(header::PROXY_AUTHORIZATION, value);
        }
        if cfg.preset.dialect == Dialect::Anthropic {
            headers.insert(ANTHROPIC_VERSION.clone(), HeaderValue::from_static("2023-06-01"));
        }
        // hyper-util's client adds `Host` to HTTP/1 requests that lack it, per request (with
        // a `format!` when the port is not the default). A plain-http upstream is always
        // HTTP/1, so its `Host` is the same every time: written here, once. Not for https,
        // where ALPN may pick HTTP/2, which carries the authority in `:authority` instead.
        if let Some(host) = plain_http_host(&chat_uri) {
            headers.insert(header::HOST, host);
        }
        Ok(Provider {
            headers,
            chat_uri,
            embeddings_uri: url("/embeddings")?,
            id: cfg.id.clone(),
            id_header: HeaderValue::from_maybe_shared(process_lifetime(cfg.id.clone())).ok(),
            kind: cfg.preset.name,
            vendor: cfg.preset.vendor,
            dialect: cfg.preset.dialect,
            base_url: cfg.base_url.clone(),
            hosting: cfg.preset.hosting,
            models: cfg.models.clone(),
            timeouts: cfg.timeouts,
            quirks: cfg.preset.quirks,
            client,
        })
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
        let uri = match (endpoint, self.dialect) {
            (Endpoint::Chat { model, stream }, Dialect::Gemini) => {
                let uri = format!("{}{}", self.base_url, gemini::endpoint_path(model, stream));
                uri.parse::<Uri>().map_err(|e| {
                    Error::invalid("model", format!("model '{model}' does not fit in a Gemini URL: {e}"))
                })?
            }
            (Endpoint::Chat { .. }, _) => self.chat_uri.clone(),
            (Endpoint::Embeddings, _) => self.embeddings_uri.clone(),
        };
        let mut req = axum::http::Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        *req.headers_mut() = self.headers.clone();
        if let Some((name, value)) = extra {
            req.headers_mut().insert(name, value);
        }
        let response = match tokio::time::timeout_at(now + self.timeouts.first_byte, self.client.request(req)).await {
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

    /// Read a whole (non-streamed) body, within the total timeout.
    pub async fn read_body(&self, upstream: Upstream) -> Result<Bytes, Error> {
        match tokio::time::timeout_at(upstream.deadline, upstream.response.into_body().collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
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

    /// A request that got no response: connect, TLS or a connection closed before headers.
    fn request_error(&self, e: &hyper_util::client::legacy::Error) -> Error {
        if e.is_connect() {
            Error::new(
                ErrorKind::UpstreamUnreachable,
                format!("cannot connect to provider {}: {}", self.id, root_cause(e)),
            )
        } else {
            Error::new(
                ErrorKind::UpstreamUnreachable,
                format!("provider {} connection failed: {}", self.id, root_cause(e)),
            )
        }
    }

    /// The body broke off (connection reset, malformed framing).
    pub fn body_error(&self, e: &hyper::Error) -> Error {
        Error::new(ErrorKind::UpstreamUnreachable, format!("provider {} connection failed: {}", self.id, root_cause(e)))
    }

    async fn status_error(&self, upstream: Upstream) -> Error {
        let status = upstream.status().as_u16();
        let retry_after = upstream.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        // An error body is small; cap what we read so a hostile upstream cannot balloon memory.
        let limited = Limited::new(upstream.response.into_body(), 64 * 1024).collect();
        let body = match tokio::time::timeout(self.timeouts.first_byte, limited).await {
            Ok(Ok(b)) => b.to_bytes(),
            _ => Bytes::new(),
        };
        let vendor = match self.dialect {
            Dialect::OpenAi => openai::parse_vendor_error(&body),
            Dialect::Anthropic => anthropic::parse_vendor_error(&body),
            Dialect::Gemini => gemini::parse_vendor_error(&body),
        };
        let classified = classify(status, &vendor, &self.quirks);
        let message = match &vendor.message {
            Some(m) => format!("provider {} returned {status}: {m}", self.id),
            None => format!("provider {} returned {status}", self.id),
        };
        Error { retry_after, ..Error::new(ErrorKind::UpstreamStatus(Box::new(classified)), message) }
    }
}

/// The `Host` header hyper-util's client writes for a plain-http `uri`: its host, then its
/// port unless that is 80. None for other schemes.
fn plain_http_host(uri: &Uri) -> Option<HeaderValue> {
    if uri.scheme() != Some(&axum::http::uri::Scheme::HTTP) {
        return None;
    }
    let host = uri.host()?;
    let value = match uri.port() {
        Some(port) if port.as_u16() != 80 => format!("{host}:{port}"),
        _ => host.to_string(),
    };
    HeaderValue::from_maybe_shared(process_lifetime(value)).ok()
}

/// `text` as [`Bytes`] that live as long as the process, without a reference count.
///
/// A provider's URIs and fixed header values are cloned into every request it serves and
/// dropped after it, on whichever worker runs the request. Made from ordinary (shared)
/// `Bytes`, each clone and drop is an atomic update of one reference count that the workers
/// pass between their caches, ~20 times per request (URI parts, `Host`, auth, the
/// provenance header); static `Bytes` clone for free. Providers are built once per process
/// (once per test in the test suites), so these few hundred bytes are never worth freeing.
fn process_lifetime(text: String) -> Bytes {
    Bytes::from_static(Box::leak(text.into_boxed_str()).as_bytes())
}

/// Decide whether an upstream error status can be retried, and whether it means the
/// account is out of balance (fail over, never retry the same provider).
pub fn classify(status: u16, vendor: &VendorError, quirks: &Quirks) -> UpstreamStatus {
    let says = |s: &Option<String>| s.as_deref().is_some_and(|v| EXHAUSTED_CODES.contains(&v));
    let exhausted =
        status == 402 || quirks.exhausted_statuses.contains(&status) || says(&vendor.code) || says(&vendor.kind);
    let retryable = !exhausted && matches!(status, 408 | 409 | 425 | 429 | 500..=599);
    UpstreamStatus { status, vendor_type: vendor.kind.clone(), vendor_code: vendor.code.clone(), exhausted, retryable }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendor(code: Option<&str>, kind: Option<&str>) -> VendorError {
        VendorError { message: None, kind: kind.map(Into::into), code: code.map(Into::into) }
    }

    #[test]
    fn host_is_written_for_plain_http_only_as_hyper_util_would() {
        let host = |u: &str| plain_http_host(&u.parse().unwrap()).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(host("http://127.0.0.1:8080/v1/chat/completions").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(host("http://localhost/v1/embeddings").as_deref(), Some("localhost"));
        assert_eq!(host("http://localhost:80/v1").as_deref(), Some("localhost"));
        assert_eq!(host("http://[::1]:9000/x").as_deref(), Some("[::1]:9000"));
        assert_eq!(host("https://api.openai.com/v1/chat/completions"), None);
        assert_eq!(host("https://example.com:8443/v1"), None);
    }

    #[test]
    fn rate_limits_retry_but_out_of_balance_does_not() {
        let q = Quirks::default();
        let rl = classify(429, &vendor(Some("rate_limit_exceeded"), Some("requests")), &q);
        assert!(rl.retryable && !rl.exhausted);
        let quota = classify(429, &vendor(Some("insufficient_quota"), Some("insufficient_quota")), &q);
        assert!(!quota.retryable && quota.exhausted);
        let zhipu = classify(429, &vendor(Some("1113"), None), &q);
        assert!(zhipu.exhausted && !zhipu.retryable);
        let deepseek = classify(402, &vendor(None, None), &q);
        assert!(deepseek.exhausted);
        let moonshot = preset::find("moonshot").unwrap().quirks;
        assert!(classify(403, &vendor(None, None), &moonshot).exhausted);
        assert!(!classify(403, &vendor(None, None), &q).exhausted);
        for s in [500, 502, 503, 529] {
            assert!(classify(s, &vendor(None, None), &q).retryable, "{s}");
        }
        for s in [400, 401, 404, 422] {
            assert!(!classify(s, &vendor(None, None), &q).retryable, "{s}");
        }
    }
}
