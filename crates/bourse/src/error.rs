//! The one error taxonomy of the gateway, and the one place it is rendered.
//!
//! Every failure on the request path becomes an [`Error`]: it knows who failed (the
//! client, an upstream provider, or the gateway itself), whether another attempt could
//! succeed, and which HTTP status and error body the client sees. Handlers build errors
//! and return them; nothing else formats error bodies, so every client gets the same
//! shape (OpenAI's `{"error":{"message","type","param","code"}}`, all four keys present).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Who failed. Drives logging, retry decisions and the circuit breakers (only upstream
/// failures count against a provider).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Client,
    Upstream,
    Gateway,
}

/// What went wrong. Status and error type are chosen by exhaustive matches below, so a
/// new variant cannot be added without deciding how the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not JSON at all.
    InvalidJson,
    /// JSON, but a field is missing or has the wrong type/value.
    InvalidRequest,
    /// The request did not say `content-type: application/json`.
    UnsupportedMediaType,
    /// The body is larger than `server.max_body_bytes`.
    PayloadTooLarge,
    /// The request body stopped arriving (for `server.idle_timeout`).
    RequestTimeout,
    /// Missing or wrong gateway key.
    Unauthorized,
    /// The model (or `provider/model`) resolves to nothing the gateway can reach.
    ModelNotFound,
    /// No such route.
    NotFound,
    /// Route exists, method does not.
    MethodNotAllowed,
    /// The model is known but may not be used as requested (e.g. unpriced).
    ModelNotAllowed,
    /// A route's constraints leave no model to try.
    NoFeasibleModel,
    /// The key may not use this model, route or endpoint.
    Forbidden,
    /// A budget of the key or its tenant cannot admit the request (429 `budget_exceeded`).
    BudgetExceeded,
    /// A rate limit of the key or its tenant (requests, tokens or concurrent requests per
    /// minute) is reached (429 `rate_limit_exceeded`, with `Retry-After`).
    RateLimited,
    /// TCP/TLS/DNS failure reaching the provider.
    UpstreamUnreachable,
    /// The provider did not answer (first byte or whole body) within its timeout.
    UpstreamTimeout,
    /// The provider answered with an error status; relayed with that status.
    UpstreamStatus(Box<UpstreamStatus>),
    /// The provider answered 2xx with a body we cannot use (e.g. malformed JSON).
    UpstreamProtocol,
    /// The gateway cannot serve right now (shutting down, no providers).
    Unavailable,
    /// A bug or an invariant broken inside the gateway.
    Internal,
}

/// An error status from a provider, already classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamStatus {
    pub status: u16,
    /// The provider's own error `type` and `code`, relayed so SDKs see what the vendor said.
    pub vendor_type: Option<String>,
    pub vendor_code: Option<String>,
    /// "Out of balance / quota": another attempt on the same provider cannot succeed, but
    /// a different provider can (the router fails over without retrying).
    pub exhausted: bool,
    /// Rate limits, overload and 5xx: the same request may succeed if tried again.
    pub retryable: bool,
}

/// A gateway error: kind, human message, the offending parameter (if any), and a
/// `Retry-After` to relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
    pub retry_after: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), param: None, retry_after: None }
    }

    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Error { param: Some(param.to_string()), ..Error::new(ErrorKind::InvalidRequest, message) }
    }

    /// The upstream answered with something its dialect does not allow.
    pub fn protocol(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::UpstreamProtocol, message)
    }

    pub fn origin(&self) -> Origin {
        match self.kind {
            ErrorKind::InvalidJson
            | ErrorKind::InvalidRequest
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::PayloadTooLarge
            | ErrorKind::RequestTimeout
            | ErrorKind::Unauthorized
            | ErrorKind::ModelNotFound
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::ModelNotAllowed
            | ErrorKind::NoFeasibleModel
            | ErrorKind::Forbidden
            | ErrorKind::BudgetExceeded
            | ErrorKind::RateLimited => Origin::Client,
            ErrorKind::UpstreamUnreachable
            | ErrorKind::UpstreamTimeout
            | ErrorKind::UpstreamStatus(_)
            | ErrorKind::UpstreamProtocol => Origin::Upstream,
            ErrorKind::Unavailable | ErrorKind::Internal => Origin::Gateway,
        }
    }

    /// Whether the same request could succeed on another attempt (same or other provider).
    pub fn retryable(&self) -> bool {
        match &self.kind {
            ErrorKind::UpstreamUnreachable | ErrorKind::UpstreamTimeout | ErrorKind::Unavailable => true,
            ErrorKind::UpstreamStatus(s) => s.retryable,
            ErrorKind::UpstreamProtocol
            | ErrorKind::InvalidJson
            | ErrorKind::InvalidRequest
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::PayloadTooLarge
            | ErrorKind::RequestTimeout
            | ErrorKind::Unauthorized
            | ErrorKind::ModelNotFound
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::ModelNotAllowed
            | ErrorKind::NoFeasibleModel
            | ErrorKind::Forbidden
            | ErrorKind::BudgetExceeded
            | ErrorKind::RateLimited
            | ErrorKind::Internal => false,
        }
    }

    pub fn status(&self) -> StatusCode {
        match &self.kind {
            ErrorKind::InvalidJson
            | ErrorKind::InvalidRequest
            | ErrorKind::ModelNotAllowed
            | ErrorKind::NoFeasibleModel => StatusCode::BAD_REQUEST,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::BudgetExceeded | ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::ModelNotFound | ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::UpstreamUnreachable | ErrorKind::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            // A vendor status outside 400..=599 would be a lie to relay; call it a bad gateway.
            ErrorKind::UpstreamStatus(s) => StatusCode::from_u16(s.status)
                .ok()
                .filter(|c| c.is_client_error() || c.is_server_error())
                .unwrap_or(StatusCode::BAD_GATEWAY),
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type` and `error.code` for this error.
    fn openai_type_code(&self) -> (String, Option<String>) {
        let fixed = |t: &str, c: &str| (t.to_string(), Some(c.to_string()));
        match &self.kind {
            ErrorKind::InvalidJson => fixed("invalid_request_error", "invalid_json"),
            ErrorKind::InvalidRequest => fixed("invalid_request_error", "invalid_value"),
            ErrorKind::UnsupportedMediaType => fixed("invalid_request_error", "unsupported_media_type"),
            ErrorKind::PayloadTooLarge => fixed("invalid_request_error", "request_too_large"),
            ErrorKind::RequestTimeout => fixed("invalid_request_error", "request_timeout"),
            ErrorKind::Unauthorized => fixed("authentication_error", "invalid_api_key"),
            ErrorKind::ModelNotFound => fixed("invalid_request_error", "model_not_found"),
            ErrorKind::NotFound => fixed("invalid_request_error", "unknown_url"),
            ErrorKind::MethodNotAllowed => fixed("invalid_request_error", "method_not_allowed"),
            ErrorKind::ModelNotAllowed => fixed("invalid_request_error", "model_not_allowed"),
            ErrorKind::NoFeasibleModel => fixed("invalid_request_error", "no_feasible_model"),
            ErrorKind::Forbidden => fixed("permission_error", "permission_denied"),
            ErrorKind::BudgetExceeded => fixed("budget_exceeded", "budget_exceeded"),
            ErrorKind::RateLimited => fixed("rate_limit_exceeded", "rate_limit_exceeded"),
            ErrorKind::UpstreamUnreachable => fixed("api_error", "upstream_unreachable"),
            ErrorKind::UpstreamTimeout => fixed("api_error", "upstream_timeout"),
            ErrorKind::UpstreamProtocol => fixed("api_error", "upstream_protocol_error"),
            ErrorKind::UpstreamStatus(s) => (
                s.vendor_type.clone().unwrap_or_else(|| default_vendor_type(s.status).to_string()),
                s.vendor_code.clone(),
            ),
            ErrorKind::Unavailable => fixed("api_error", "unavailable"),
            ErrorKind::Internal => fixed("api_error", "internal_error"),
        }
    }

    /// The OpenAI error object, as a JSON value (also used for in-stream error events).
    pub fn openai_body(&self) -> serde_json::Value {
        let (kind, code) = self.openai_type_code();
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": code}})
    }

    /// Anthropic's error `type` for this error (its documented set: invalid_request_error,
    /// authentication_error, permission_error, not_found_error, request_too_large,
    /// rate_limit_error, api_error, overloaded_error, timeout_error, billing_error).
    pub fn anthropic_type(&self) -> &'static str {
        match &self.kind {
            ErrorKind::InvalidJson
            | ErrorKind::InvalidRequest
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::ModelNotAllowed
            | ErrorKind::NoFeasibleModel
            | ErrorKind::MethodNotAllowed
            | ErrorKind::RequestTimeout => "invalid_request_error",
            ErrorKind::PayloadTooLarge => "request_too_large",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            // Not in Anthropic's documented set, which has no budget error of a gateway's
            // own; its SDKs decide by status (429: RateLimitError) and show the type.
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::ModelNotFound | ErrorKind::NotFound => "not_found_error",
            ErrorKind::UpstreamTimeout => "timeout_error",
            ErrorKind::UpstreamUnreachable | ErrorKind::UpstreamProtocol | ErrorKind::Internal => "api_error",
            ErrorKind::Unavailable => "overloaded_error",
            ErrorKind::UpstreamStatus(s) => match s.status {
                _ if s.exhausted => "billing_error",
                400 | 409 | 422 => "invalid_request_error",
                401 => "authentication_error",
                402 => "billing_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                504 => "timeout_error",
                503 | 529 => "overloaded_error",
                _ => "api_error",
            },
        }
    }

    /// The HTTP status an Anthropic client sees: as [`Error::status`], except that an
    /// overloaded upstream (503/529 from any vendor, or every candidate unavailable) is
    /// Anthropic's 529, which its SDKs raise as `OverloadedError`.
    pub fn anthropic_status(&self) -> StatusCode {
        match &self.kind {
            ErrorKind::UpstreamStatus(s) if matches!(s.status, 503 | 529) => {
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ErrorKind::Unavailable => StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            _ => self.status(),
        }
    }

    /// Anthropic's error object: `{"type":"error","error":{"type","message"}}` (also used for
    /// in-stream `error` events).
    pub fn anthropic_body(&self) -> serde_json::Value {
        json!({"type": "error", "error": {"type": self.anthropic_type(), "message": self.message}})
    }

    /// The error as a response in the client's dialect.
    pub fn render(self, dialect: crate::canonical::Dialect) -> Response {
        use crate::canonical::Dialect;
        let (status, body) = match dialect {
            Dialect::Anthropic => (self.anthropic_status(), self.anthropic_body()),
            Dialect::OpenAi | Dialect::Gemini => (self.status(), self.openai_body()),
        };
        let mut resp = (status, serde_json::to_vec(&body).unwrap_or_default()).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(v) = self.retry_after.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(header::RETRY_AFTER, v);
        }
        // Kept on the response so the access-log middleware can label it without reparsing.
        resp.extensions_mut().insert(ErrorLabel(self.label()));
        resp
    }

    /// A short low-cardinality label for logs and ledger rows.
    pub fn label(&self) -> &'static str {
        match &self.kind {
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::ModelNotAllowed => "model_not_allowed",
            ErrorKind::NoFeasibleModel => "no_feasible_model",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::UpstreamUnreachable => "upstream_unreachable",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamStatus(s) if s.exhausted => "upstream_exhausted",
            ErrorKind::UpstreamStatus(s) if s.status == 429 => "upstream_rate_limited",
            ErrorKind::UpstreamStatus(s) if s.status >= 500 => "upstream_5xx",
            ErrorKind::UpstreamStatus(_) => "upstream_4xx",
            ErrorKind::UpstreamProtocol => "upstream_protocol",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

fn default_vendor_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// OpenAI-shaped by default: the OpenAI surface returns `Result<_, Error>` directly.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.render(crate::canonical::Dialect::OpenAi)
    }
}

/// An error rendered in Anthropic's shape, for the `/v1/messages` handlers.
#[derive(Debug)]
pub struct AnthropicError(pub Error);

impl From<Error> for AnthropicError {
    fn from(e: Error) -> Self {
        AnthropicError(e)
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        self.0.render(crate::canonical::Dialect::Anthropic)
    }
}

/// Marker left on error responses for logging.
#[derive(Clone, Copy, Debug)]
pub struct ErrorLabel(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_body_has_all_four_keys() {
        let e = Error::new(ErrorKind::UpstreamTimeout, "slow");
        let body = e.openai_body();
        let obj = body["error"].as_object().unwrap();
        for k in ["message", "type", "param", "code"] {
            assert!(obj.contains_key(k), "missing {k}");
        }
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.origin(), Origin::Upstream);
        assert!(e.retryable());
    }

    #[test]
    fn relayed_status_keeps_vendor_type_and_odd_statuses_become_502() {
        let s = UpstreamStatus {
            status: 429,
            vendor_type: Some("insufficient_quota".into()),
            vendor_code: Some("insufficient_quota".into()),
            exhausted: true,
            retryable: false,
        };
        let e = Error::new(ErrorKind::UpstreamStatus(Box::new(s.clone())), "quota");
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.openai_body()["error"]["type"], "insufficient_quota");
        assert_eq!(e.label(), "upstream_exhausted");
        let odd = Error::new(ErrorKind::UpstreamStatus(Box::new(UpstreamStatus { status: 302, ..s })), "x");
        assert_eq!(odd.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn anthropic_shape_types_and_overload_status() {
        let e = Error::invalid("max_tokens", "max_tokens: Field required");
        assert_eq!(
            e.anthropic_body(),
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}})
        );
        let status = |status: u16, exhausted: bool| {
            Error::new(
                ErrorKind::UpstreamStatus(Box::new(UpstreamStatus {
                    status,
                    vendor_type: None,
                    vendor_code: None,
                    exhausted,
                    retryable: !exhausted,
                })),
                "x",
            )
        };
        // Overload from any vendor is Anthropic's 529 overloaded_error.
        for s in [503, 529] {
            assert_eq!(status(s, false).anthropic_status().as_u16(), 529);
            assert_eq!(status(s, false).anthropic_type(), "overloaded_error");
        }
        assert_eq!(Error::new(ErrorKind::Unavailable, "x").anthropic_status().as_u16(), 529);
        assert_eq!(status(429, false).anthropic_type(), "rate_limit_error");
        assert_eq!(status(429, true).anthropic_type(), "billing_error");
        assert_eq!(status(429, false).anthropic_status().as_u16(), 429);
        assert_eq!(Error::new(ErrorKind::Unauthorized, "x").anthropic_type(), "authentication_error");
        assert_eq!(Error::new(ErrorKind::ModelNotFound, "x").anthropic_type(), "not_found_error");
        assert_eq!(Error::new(ErrorKind::PayloadTooLarge, "x").anthropic_type(), "request_too_large");
        // The OpenAI surface keeps the vendor's status.
        assert_eq!(status(529, false).status().as_u16(), 529);
    }
}
