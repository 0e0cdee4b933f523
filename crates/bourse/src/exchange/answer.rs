//! What an answer says about itself: which provider and model served it
//! (`x-bourse-provider`, `x-bourse-model`), what it cost and saved (`x-bourse-cost-usd`,
//! `x-bourse-reference-cost-usd`, `x-bourse-saved-usd`; for a stream, the same figures in an
//! SSE comment after `[DONE]`), and why the router chose it (`x-bourse-route-reason`).
//! Beside the money, the attempt's energy **estimate** (`x-bourse-energy-wh`, `x-bourse-co2e-g`,
//! and `x-bourse-energy-method` saying it is an estimate and where its figures come from;
//! see `meter/energy.rs`), in the headers and in the stream's closing comment alike.

use super::attempt::Settled;
use crate::canonical::Dialect;
use crate::error::{Error, ErrorKind, Result};
use crate::provider::Upstream;
use crate::route::Target;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

pub static X_BOURSE_PROVIDER: HeaderName = HeaderName::from_static("x-bourse-provider");
pub static X_BOURSE_MODEL: HeaderName = HeaderName::from_static("x-bourse-model");
pub static X_BOURSE_COST: HeaderName = HeaderName::from_static("x-bourse-cost-usd");
pub static X_BOURSE_REFERENCE_COST: HeaderName = HeaderName::from_static("x-bourse-reference-cost-usd");
pub static X_BOURSE_SAVED: HeaderName = HeaderName::from_static("x-bourse-saved-usd");
pub static X_BOURSE_ROUTE_REASON: HeaderName = HeaderName::from_static("x-bourse-route-reason");
pub static X_BOURSE_ENERGY: HeaderName = HeaderName::from_static("x-bourse-energy-wh");
pub static X_BOURSE_CO2E: HeaderName = HeaderName::from_static("x-bourse-co2e-g");
pub static X_BOURSE_ENERGY_METHOD: HeaderName = HeaderName::from_static("x-bourse-energy-method");
/// What the energy figures are: said on every answer that carries them.
pub const ENERGY_METHOD: &str =
    "estimate; tokens x per-token energy of the model's size class x PUE, x hosting-region grid intensity; sources: catalog/energy.toml";

pub(super) fn provenance(resp: &mut Response, target: &Target) {
    let h = resp.headers_mut();
    if let Some(v) = &target.provider.id_header {
        h.insert(X_BOURSE_PROVIDER.clone(), v.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&target.upstream_model) {
        h.insert(X_BOURSE_MODEL.clone(), v);
    }
}

/// What an answer's body is, for the headers it starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Content {
    /// `content-type: application/json`.
    Json,
    /// `content-type: text/event-stream` and `cache-control: no-cache`.
    EventStream,
}

impl Content {
    /// The answer's first headers: its content type (and, for a stream, `no-cache`), in a
    /// map with room for every header an answer gets (provenance, money, energy, route,
    /// request id, and a virtual key's seven budget and rate-limit headers), so adding them
    /// never regrows it: a regrowth rehashes every header already in it.
    pub(super) fn headers(self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(20);
        match self {
            Content::Json => {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Content::EventStream => {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            }
        }
        h
    }

    /// How many headers [`Content::headers`] holds.
    pub(super) fn len(self) -> usize {
        match self {
            Content::Json => 1,
            Content::EventStream => 2,
        }
    }
}

/// A JSON answer with the headers it starts with ([`Content::headers`], or a virtual key's
/// [`super::limits::Gate::answer_headers`]).
pub(super) fn json_response(status: StatusCode, body: Bytes, headers: HeaderMap) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

pub(crate) async fn read_upstream_body(target: &Target, resp: Upstream) -> Result<(StatusCode, Bytes)> {
    let status = resp.status();
    let bytes = target.provider.read_body(resp).await?;
    // DeepSeek holds queued non-streaming requests open with blank lines: they are not
    // part of the JSON, so trim them rather than relay a body that starts with newlines.
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    Ok((status, bytes.slice(start..)))
}

pub(super) fn not_json(target: &Target) -> Error {
    Error::new(
        ErrorKind::UpstreamProtocol,
        format!("provider {} returned a body that is not valid JSON", target.provider.id),
    )
}

pub(super) fn money_headers(resp: &mut Response, s: &Settled) {
    let h = resp.headers_mut();
    let mut buf = [0; 24];
    for (name, value) in
        [(&X_BOURSE_COST, s.cost), (&X_BOURSE_REFERENCE_COST, s.reference), (&X_BOURSE_SAVED, s.reference - s.cost)]
    {
        // From the digits on the stack: the header value is their one copy.
        if let Ok(v) = HeaderValue::from_bytes(value.usd_ascii(&mut buf)) {
            h.insert(name.clone(), v);
        }
    }
    for (name, millionths) in [(&X_BOURSE_ENERGY, s.energy.uwh), (&X_BOURSE_CO2E, s.energy.co2e_ug)] {
        if let Ok(v) = HeaderValue::from_bytes(crate::meter::energy::millionths_ascii(millionths, &mut buf)) {
            h.insert(name.clone(), v);
        }
    }
    h.insert(X_BOURSE_ENERGY_METHOD.clone(), HeaderValue::from_static(ENERGY_METHOD));
}

/// A complete answer replayed as a stream in the client's dialect (a buffered cascade,
/// `dialect::replay`), with the money comment a stream ends with; the answer's headers stay
/// (its cost headers included: it was known before the first byte). Errors and bodies that
/// are not an answer go out as they are.
pub(super) async fn replayed(resp: Response, client: Dialect, include_usage: bool) -> Response {
    if !resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Error::new(ErrorKind::Internal, "the checked answer could not be read back").render(client);
    };
    let Some(stream) = crate::dialect::replay::stream_of(&bytes, client, include_usage) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let h = &mut parts.headers;
    let money = |name: &HeaderName| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("0").to_string();
    let comment = format!(
        ": x-bourse-cost-usd={} x-bourse-reference-cost-usd={} x-bourse-saved-usd={} x-bourse-energy-wh={} x-bourse-co2e-g={} (energy and CO2e: {ENERGY_METHOD})\n\n",
        money(&X_BOURSE_COST),
        money(&X_BOURSE_REFERENCE_COST),
        money(&X_BOURSE_SAVED),
        money(&X_BOURSE_ENERGY),
        money(&X_BOURSE_CO2E)
    );
    let mut out = Vec::with_capacity(stream.len() + comment.len());
    out.extend_from_slice(&stream);
    out.extend_from_slice(comment.as_bytes());
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

/// The SSE comment sent after `[DONE]`: streaming headers leave before the cost is known.
/// It carries the energy estimate too, labelled as one.
pub(super) fn money_comment(s: &Settled) -> Bytes {
    use crate::meter::energy::millionths;
    Bytes::from(format!(
        ": x-bourse-cost-usd={} x-bourse-reference-cost-usd={} x-bourse-saved-usd={} x-bourse-energy-wh={} x-bourse-co2e-g={} (energy and CO2e: {ENERGY_METHOD})\n\n",
        s.cost.usd(),
        s.reference.usd(),
        (s.reference - s.cost).usd(),
        millionths(s.energy.uwh),
        millionths(s.energy.co2e_ug)
    ))
}

pub(super) fn error_response(e: Error, target: &Target, dialect: Dialect) -> Response {
    let mut resp = e.render(dialect);
    provenance(&mut resp, target);
    resp
}

pub(super) fn route_reason(resp: &mut Response, reason: Option<&str>) {
    if let Some(v) = reason.and_then(|r| HeaderValue::from_str(r).ok()) {
        resp.headers_mut().insert(X_BOURSE_ROUTE_REASON.clone(), v);
    }
}

/// What a non-streaming answer (in the client's dialect) says of itself, for its span: id,
/// model, finish reasons, and its content when `content` (capture_content) is on. Read only
/// while traces are on.
pub(super) fn facts(body: &[u8], client: Dialect, content: bool) -> crate::relay::Facts {
    let mut f = crate::relay::Facts::default();
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return f };
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    f.id = text("id");
    f.model = text("model");
    match client {
        Dialect::Anthropic => {
            f.finish_reasons.extend(text("stop_reason"));
            if content {
                f.output = v.get("content").map(|c| c.to_string());
            }
        }
        _ => {
            let choices = v.get("choices").and_then(|c| c.as_array());
            for c in choices.into_iter().flatten() {
                if let Some(r) = c.get("finish_reason").and_then(|r| r.as_str()) {
                    f.finish_reasons.push(r.to_string());
                }
            }
            if content {
                f.output = v.get("choices").map(|c| c.to_string());
            }
        }
    }
    f
}
