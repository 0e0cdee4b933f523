//! The OpenAI-compatible surface: `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`.

use crate::canonical::Usage;
use crate::dialect::openai::{self as wire, parse_chat_request, parse_embeddings_request};
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::{LedgerEntry, Writer};
use crate::meter::{estimate, Cost};
use crate::relay::{OnEnd, StreamEnd, StreamRelay, StreamSummary};
use crate::route::Target;
use crate::server::{KeyId, RequestId, SharedState};
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub static X_BOURSE_PROVIDER: HeaderName = HeaderName::from_static("x-bourse-provider");
pub static X_BOURSE_MODEL: HeaderName = HeaderName::from_static("x-bourse-model");
pub static X_BOURSE_COST: HeaderName = HeaderName::from_static("x-bourse-cost-usd");
pub static X_BOURSE_REFERENCE_COST: HeaderName = HeaderName::from_static("x-bourse-reference-cost-usd");
pub static X_BOURSE_SAVED: HeaderName = HeaderName::from_static("x-bourse-saved-usd");

/// Check the content type and read the body, refusing anything over the limit with a 413
/// before it is buffered.
pub async fn read_json_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        let shown = if ct.is_empty() { "none".to_string() } else { format!("'{ct}'") };
        return Err(Error::new(
            ErrorKind::UnsupportedMediaType,
            format!("the request body must be JSON with 'content-type: application/json' (got {shown})"),
        ));
    }
    let too_large = || {
        Error::new(ErrorKind::PayloadTooLarge, format!("the request body is larger than the limit of {limit} bytes"))
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(Error::new(ErrorKind::InvalidRequest, format!("could not read the request body: {e}"))),
    }
}

fn provenance(resp: &mut Response, target: &Target) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&target.provider.id) {
        h.insert(X_BOURSE_PROVIDER.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&target.upstream_model) {
        h.insert(X_BOURSE_MODEL.clone(), v);
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

async fn read_upstream_body(target: &Target, resp: reqwest::Response) -> Result<(StatusCode, Bytes)> {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::OK);
    let bytes = resp.bytes().await.map_err(|e| target.provider.transport_error(&e))?;
    // DeepSeek holds queued non-streaming requests open with blank lines: they are not
    // part of the JSON, so trim them rather than relay a body that starts with newlines.
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    Ok((status, bytes.slice(start..)))
}

fn require_json(target: &Target, body: &Bytes) -> Result<()> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        return Err(Error::new(
            ErrorKind::UpstreamProtocol,
            format!("provider {} returned a body that is not valid JSON", target.provider.id),
        ));
    }
    Ok(())
}

/// Who is asking, for the ledger.
#[derive(Clone, Debug)]
struct Caller {
    request_id: String,
    key_id: Option<String>,
}

fn caller(rid: Option<Extension<RequestId>>, key: Option<Extension<KeyId>>) -> Caller {
    Caller { request_id: rid.map(|r| r.0 .0.to_string()).unwrap_or_default(), key_id: key.map(|k| k.0 .0.to_string()) }
}

/// One upstream attempt, from start to settlement.
struct Attempt {
    state: SharedState,
    caller: Caller,
    target: Target,
    number: u32,
    ts_ms: i64,
    started: Instant,
    ttfb: Option<Duration>,
    stream: bool,
}

/// The money headers of a settled, non-streaming response.
struct Settled {
    cost: Cost,
    reference: Cost,
}

impl Attempt {
    fn start(state: &SharedState, caller: Caller, target: &Target, stream: bool) -> Attempt {
        let ts_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        Attempt {
            state: state.clone(),
            caller,
            target: target.clone(),
            number: 1,
            ts_ms,
            started: Instant::now(),
            ttfb: None,
            stream,
        }
    }

    /// Price the usage and build the ledger row. Returns the cost and the reference cost.
    fn settle(self, usage: Usage, estimated: bool, status: u16, error: Option<&str>) -> (Settled, Option<Record>) {
        let meter = &self.state.meter;
        let priced = meter.priced(&self.target.provider.id, self.target.provider.kind, &self.target.upstream_model);
        let (cost, reference) = match priced {
            Ok(m) => meter.settle(m, &usage),
            // Unreachable: unpriced targets are refused before any attempt starts.
            Err(_) => (Cost::default(), Cost::default()),
        };
        let record = self.state.ledger.clone().map(|writer| Record {
            writer,
            entry: LedgerEntry {
                request_id: self.caller.request_id,
                attempt: self.number,
                ts_ms: self.ts_ms,
                key_id: self.caller.key_id,
                provider: self.target.provider.id.clone(),
                model: self.target.upstream_model.clone(),
                route_reason: None,
                usage,
                cost_nanos: cost.0,
                reference_cost_nanos: reference.0,
                catalog_version: meter.catalog.version.clone(),
                ttfb_ms: self.ttfb.map(|d| d.as_millis() as u32),
                latency_ms: self.started.elapsed().as_millis() as u32,
                status,
                error_kind: error.map(str::to_string),
                estimated,
                stream: self.stream,
            },
        });
        (Settled { cost, reference }, record)
    }

    /// A failed attempt: a ledger row with no usage, and the error as the client sees it.
    async fn fail(self, e: Error) -> Response {
        let target = self.target.clone();
        let (_, record) = self.settle(Usage::default(), false, e.status().as_u16(), Some(e.label()));
        if let Some(r) = record {
            r.send().await;
        }
        let mut resp = e.into_response();
        provenance(&mut resp, &target);
        resp
    }
}

/// A ledger row on its way to the writer.
struct Record {
    writer: Writer,
    entry: LedgerEntry,
}

impl Record {
    /// Queue the row (the writer's full-queue policy applies; it never waits on the database).
    async fn send(self) {
        self.writer.record(self.entry).await;
    }

    /// From synchronous code (the end of a stream, possibly inside a drop): queue the row
    /// at once if there is room (always, unless the store has fallen behind), else hand it
    /// to a task so the same full-queue policy applies.
    fn send_detached(self) {
        let Err(entry) = self.writer.offer(self.entry) else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { self.writer.record(entry).await });
            }
            Err(_) => self.writer.try_record(entry),
        }
    }
}

fn money_headers(resp: &mut Response, s: &Settled) {
    let h = resp.headers_mut();
    for (name, value) in
        [(&X_BOURSE_COST, s.cost), (&X_BOURSE_REFERENCE_COST, s.reference), (&X_BOURSE_SAVED, s.reference - s.cost)]
    {
        if let Ok(v) = HeaderValue::from_str(&value.usd()) {
            h.insert(name.clone(), v);
        }
    }
}

/// The SSE comment sent after `[DONE]`: streaming headers leave before the cost is known.
fn money_comment(s: &Settled) -> Bytes {
    Bytes::from(format!(
        ": x-bourse-cost-usd={} x-bourse-reference-cost-usd={} x-bourse-saved-usd={}\n\n",
        s.cost.usd(),
        s.reference.usd(),
        (s.reference - s.cost).usd()
    ))
}

pub async fn chat_completions(
    State(state): State<SharedState>,
    rid: Option<Extension<RequestId>>,
    key: Option<Extension<KeyId>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let body = read_json_body(&headers, body, state.max_body_bytes).await?;
    let mut req = parse_chat_request(&body)?;
    let target = state.providers.resolve(&req.model)?;
    state.meter.priced(&target.provider.id, target.provider.kind, &target.upstream_model)?;
    let upstream_body = wire::upstream_chat_body(&mut req, &target.upstream_model);
    let mut attempt = Attempt::start(&state, caller(rid, key), &target, req.stream);
    let resp = match target.provider.post_json("/chat/completions", upstream_body).await {
        Ok(r) => r,
        Err(e) => return Ok(attempt.fail(e).await),
    };
    attempt.ttfb = Some(attempt.started.elapsed());
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if req.stream && is_sse {
        let request_body = std::mem::take(&mut req.body);
        let on_end: OnEnd = Box::new(move |summary: StreamSummary| {
            let (usage, estimated) = match summary.usage {
                Some(u) => (u, false),
                None => (
                    Usage {
                        input_uncached: estimate::prompt_tokens(&request_body),
                        output: estimate::completion_tokens(&summary.data),
                        ..Usage::default()
                    },
                    true,
                ),
            };
            let (status, error) = match &summary.end {
                StreamEnd::Completed => (200, None),
                StreamEnd::UpstreamFailed(_) => (502, Some("upstream_stream_broken")),
                StreamEnd::ClientGone => (499, Some("client_disconnected")),
            };
            let (settled, record) = attempt.settle(usage, estimated, status, error);
            if let Some(r) = record {
                r.send_detached();
            }
            Some(money_comment(&settled))
        });
        let relay = StreamRelay::new(resp, target.provider.clone(), req.include_usage, Some(on_end));
        let mut out = Response::new(Body::from_stream(relay));
        let h = out.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        provenance(&mut out, &target);
        return Ok(out);
    }
    let (status, bytes) = match read_upstream_body(&target, resp).await.and_then(|(s, b)| {
        require_json(&target, &b)?;
        Ok((s, b))
    }) {
        Ok(x) => x,
        Err(e) => return Ok(attempt.fail(e).await),
    };
    let bytes = if target.provider.quirks.think_tags_in_content { wire::split_think_tags(bytes) } else { bytes };
    let (usage, estimated) = match wire::response_usage(&bytes) {
        Some(u) => (u, false),
        None => (
            Usage {
                input_uncached: estimate::prompt_tokens(&req.body),
                output: estimate::response_completion_tokens(&bytes),
                ..Usage::default()
            },
            true,
        ),
    };
    let (settled, record) = attempt.settle(usage, estimated, status.as_u16(), None);
    if let Some(r) = record {
        r.send().await;
    }
    let mut out = json_response(status, bytes);
    provenance(&mut out, &target);
    money_headers(&mut out, &settled);
    Ok(out)
}

pub async fn embeddings(
    State(state): State<SharedState>,
    rid: Option<Extension<RequestId>>,
    key: Option<Extension<KeyId>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let body = read_json_body(&headers, body, state.max_body_bytes).await?;
    let mut req = parse_embeddings_request(&body)?;
    let target = state.providers.resolve(&req.model)?;
    state.meter.priced(&target.provider.id, target.provider.kind, &target.upstream_model)?;
    let upstream_body = wire::upstream_embeddings_body(&mut req, &target.upstream_model);
    let mut attempt = Attempt::start(&state, caller(rid, key), &target, false);
    let resp = match target.provider.post_json("/embeddings", upstream_body).await {
        Ok(r) => r,
        Err(e) => return Ok(attempt.fail(e).await),
    };
    attempt.ttfb = Some(attempt.started.elapsed());
    let (status, bytes) = match read_upstream_body(&target, resp).await.and_then(|(s, b)| {
        require_json(&target, &b)?;
        Ok((s, b))
    }) {
        Ok(x) => x,
        Err(e) => return Ok(attempt.fail(e).await),
    };
    let (usage, estimated) = match wire::response_usage(&bytes) {
        Some(u) => (u, false),
        None => (Usage { input_uncached: estimate::embedding_input_tokens(&req.body), ..Usage::default() }, true),
    };
    let (settled, record) = attempt.settle(usage, estimated, status.as_u16(), None);
    if let Some(r) = record {
        r.send().await;
    }
    let mut out = json_response(status, bytes);
    provenance(&mut out, &target);
    money_headers(&mut out, &settled);
    Ok(out)
}

fn model_object(id: &str, owner: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owner})
}

/// Every `provider/model` the gateway can reach by name.
fn reachable(state: &SharedState) -> Vec<Value> {
    state
        .providers
        .iter()
        .flat_map(|p| p.models.iter().map(move |m| model_object(&format!("{}/{m}", p.id), &p.id, state.started)))
        .collect()
}

pub async fn list_models(State(state): State<SharedState>) -> Response {
    axum::Json(json!({"object": "list", "data": reachable(&state)})).into_response()
}

pub async fn get_model(State(state): State<SharedState>, Path(id): Path<String>) -> Result<Response> {
    // Only what the gateway lists is retrievable, so list and retrieve agree.
    let target = state.providers.resolve(&id)?;
    let full = format!("{}/{}", target.provider.id, target.upstream_model);
    if !target.provider.models.contains(&target.upstream_model) {
        return Err(Error {
            param: Some("model".into()),
            ..Error::new(
                ErrorKind::ModelNotFound,
                format!("model '{full}' is not listed by provider '{}'", target.provider.id),
            )
        });
    }
    Ok(axum::Json(model_object(&full, &target.provider.id, state.started)).into_response())
}
