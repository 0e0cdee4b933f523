//! The chat exchange, whichever dialect the client speaks: resolve or route, attempt
//! (with fallbacks), relay or translate the answer, meter it, and write the ledger.
//!
//! The client's dialect decides how the request was parsed and how answers and errors are
//! rendered; the upstream's decides the wire in between. Same dialect on both sides passes
//! the body through (only `model` rewritten); otherwise the request goes through the
//! canonical [`Conversation`](crate::canonical::Conversation) and the answer through a
//! [`Reply`](crate::canonical::Reply) or a stream of deltas ([`crate::dialect`]).

use crate::canonical::{ChatRequest, Dialect, Usage};
use crate::dialect::openai::{self as wire, translate};
use crate::dialect::{anthropic, gemini, Decode, Encode};
use crate::error::{Error, ErrorKind, Result};
use crate::ledger::Estimate;
use crate::ledger::LedgerEntry;
use crate::meter::estimate::{Answer, Counting};
use crate::meter::{Cost, Price};
use crate::provider::{Endpoint, Upstream};
use crate::relay::{Ending, Mode, OnEnd, StreamEnd, StreamRelay, StreamSummary};
use crate::route::health::Availability;
use crate::route::{Overrides, Routed, Target};
use crate::server::{AppState, Caller, SharedState};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::BytesMut;
use hyper::body::Body as _;
use std::future::Future;
use std::time::{Duration, Instant};

pub static X_BOURSE_PROVIDER: HeaderName = HeaderName::from_static("x-bourse-provider");
pub static X_BOURSE_MODEL: HeaderName = HeaderName::from_static("x-bourse-model");
pub static X_BOURSE_COST: HeaderName = HeaderName::from_static("x-bourse-cost-usd");
pub static X_BOURSE_REFERENCE_COST: HeaderName = HeaderName::from_static("x-bourse-reference-cost-usd");
pub static X_BOURSE_SAVED: HeaderName = HeaderName::from_static("x-bourse-saved-usd");
pub static X_BOURSE_ROUTE_REASON: HeaderName = HeaderName::from_static("x-bourse-route-reason");

/// Check the content type and read the body: a body over `server.max_body_bytes` is
/// refused with a 413 before it is buffered, and one that stops arriving for
/// `server.idle_timeout` with a 408 (a client trickling its body cannot hold a connection).
pub async fn read_json_body(headers: &HeaderMap, body: Body, state: &AppState) -> Result<Bytes> {
    let limit = state.max_body_bytes;
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
    let mut body = body;
    // One frame (the usual small body, already read with the head) is kept as it is;
    // more are joined.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    while let Some(frame) = next_frame(&mut body, state.limits.idle_timeout).await? {
        let Ok(data) = frame.into_data() else { continue };
        let have = first.as_ref().map_or(0, Bytes::len) + joined.len();
        if have + data.len() > limit {
            return Err(too_large());
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            None => joined.extend_from_slice(&data),
            Some(f) => {
                joined.reserve(declared.map_or(f.len() + data.len(), |n| n as usize));
                joined.extend_from_slice(&f);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

/// The body's next frame; a timer is set only if none is ready at once.
async fn next_frame(body: &mut Body, stall: Duration) -> Result<Option<hyper::body::Frame<Bytes>>> {
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let frame = std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(f) = std::pin::Pin::new(&mut *body).poll_frame(cx) {
            return std::task::Poll::Ready(Ok(f));
        }
        let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        t.as_mut().poll(cx).map(Err)
    })
    .await;
    match frame {
        Ok(None) => Ok(None),
        Ok(Some(Ok(f))) => Ok(Some(f)),
        Ok(Some(Err(e))) => Err(Error::new(ErrorKind::InvalidRequest, format!("could not read the request body: {e}"))),
        Err(()) => Err(Error::new(
            ErrorKind::RequestTimeout,
            format!("the request body stopped arriving for {} s (server.idle_timeout)", stall.as_secs()),
        )),
    }
}

pub(crate) fn provenance(resp: &mut Response, target: &Target) {
    let h = resp.headers_mut();
    if let Some(v) = &target.provider.id_header {
        h.insert(X_BOURSE_PROVIDER.clone(), v.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&target.upstream_model) {
        h.insert(X_BOURSE_MODEL.clone(), v);
    }
}

pub(crate) fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    // Room for every header an answer gets (provenance, money, route, request id), so
    // adding them never regrows the map.
    let mut headers = HeaderMap::with_capacity(12);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
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

pub(crate) fn not_json(target: &Target) -> Error {
    Error::new(
        ErrorKind::UpstreamProtocol,
        format!("provider {} returned a body that is not valid JSON", target.provider.id),
    )
}

/// How an attempt's target was chosen, which decides how it is priced and whom it reports to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Chosen {
    /// Named by the client: priced by the catalog price found when the target was checked.
    Explicit(Price),
    /// A router entry (an index into its entries): priced by the entry's catalog model, and
    /// the entry's health and observed output are told the outcome.
    Routed(usize),
}

/// One upstream attempt, from start to settlement.
pub(crate) struct Attempt {
    state: SharedState,
    caller: Caller,
    target: Target,
    number: u32,
    route_reason: Option<String>,
    chosen: Chosen,
    ts_ms: i64,
    pub(crate) started: Instant,
    pub(crate) ttfb: Option<Duration>,
    stream: bool,
}

/// The money headers of a settled, non-streaming response.
pub(crate) struct Settled {
    cost: Cost,
    reference: Cost,
}

impl Attempt {
    pub(crate) fn start(
        state: &SharedState,
        caller: Caller,
        target: &Target,
        stream: bool,
        number: u32,
        route_reason: Option<String>,
        chosen: Chosen,
    ) -> Attempt {
        let ts_ms = crate::timespec::now_ms();
        Attempt {
            state: state.clone(),
            caller,
            target: target.clone(),
            number,
            route_reason,
            chosen,
            ts_ms,
            started: Instant::now(),
            ttfb: None,
            stream,
        }
    }

    /// The upstream answered: close its circuit and fold in its time to first byte.
    fn healthy(&self) {
        if let Chosen::Routed(i) = self.chosen {
            let router = &self.state.router;
            router.health.record_success(&router.entries[i].key, self.ttfb.unwrap_or_default(), Instant::now());
        }
    }

    /// Price the usage and build the ledger row. Returns the cost and the reference cost.
    pub(crate) fn settle(
        self,
        usage: Usage,
        estimate: Option<Estimate>,
        status: u16,
        error: Option<&str>,
    ) -> (Settled, Option<Record>) {
        if let (Chosen::Routed(i), None) = (self.chosen, error) {
            self.state.router.entries[i].observe_output(usage.output_total());
        }
        let meter = &self.state.meter;
        let model = match self.chosen {
            Chosen::Explicit(price) => meter.model(price),
            // The entry holds the catalog model the meter would find for its target.
            Chosen::Routed(i) => &self.state.router.entries[i].model,
        };
        let (cost, reference) = meter.settle(model, &usage);
        let entry = self.state.ledger.is_some().then(|| LedgerEntry {
            // `String::from`, not `to_string`: on an `Arc<str>` that goes through `Display`.
            request_id: String::from(&*self.caller.request_id),
            attempt: self.number,
            ts_ms: self.ts_ms,
            key_id: self.caller.key_id.as_deref().map(str::to_string),
            provider: self.target.provider.id.clone(),
            model: self.target.upstream_model.clone(),
            route_reason: self.route_reason,
            usage,
            cost_nanos: cost.0,
            reference_cost_nanos: reference.0,
            catalog_version: meter.catalog.version.clone(),
            ttfb_ms: self.ttfb.map(|d| d.as_millis() as u32),
            latency_ms: self.started.elapsed().as_millis() as u32,
            status,
            error_kind: error.map(str::to_string),
            estimate,
            stream: self.stream,
        });
        // The row travels with the state it came from (not a clone of the writer: its
        // reference counts are shared by every worker, so touching them costs).
        (Settled { cost, reference }, entry.map(|entry| Record { state: self.state, entry }))
    }

    /// A failed attempt: a ledger row with no usage, health told, the error handed back.
    pub(crate) async fn fail(self, e: Error) -> Error {
        if let (Chosen::Routed(i), crate::error::Origin::Upstream) = (self.chosen, e.origin()) {
            let router = &self.state.router;
            let key = &router.entries[i].key;
            // Out of balance will not fix itself within a cooldown: open the circuit now.
            let hits = match &e.kind {
                ErrorKind::UpstreamStatus(s) if s.exhausted => router.failure_threshold,
                _ => 1,
            };
            for _ in 0..hits {
                router.health.record_failure(key, Instant::now());
            }
        }
        let (_, record) = self.settle(Usage::default(), None, e.status().as_u16(), Some(e.label()));
        if let Some(r) = record {
            r.send().await;
        }
        e
    }
}

/// A ledger row on its way to the writer.
pub(crate) struct Record {
    state: SharedState,
    entry: LedgerEntry,
}

impl Record {
    /// Queue the row (the writer's full-queue policy applies; it never waits on the database).
    pub(crate) async fn send(self) {
        if let Some(writer) = &self.state.ledger {
            writer.record(self.entry).await;
        }
    }

    /// From synchronous code (the end of a stream, possibly inside a drop): queue the row
    /// at once if there is room (always, unless the store has fallen behind), else hand it
    /// to a task so the same full-queue policy applies.
    fn send_detached(self) {
        let Some(writer) = &self.state.ledger else { return };
        let Err(entry) = writer.offer(self.entry) else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let state = self.state;
                rt.spawn(async move { Record { state, entry }.send().await });
            }
            Err(_) => writer.try_record(entry),
        }
    }
}

pub(crate) fn money_headers(resp: &mut Response, s: &Settled) {
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

/// One place to try, in the order to try them.
enum Try {
    /// The model the client named, checked and priced before any attempt.
    Explicit { target: Target, price: Price },
    /// A router entry (its target is built only if it is tried), and its position in the
    /// plan, for the route reason.
    Routed { entry: usize, rank: usize },
}

/// Whether a failed routed attempt should move on to the next candidate. Client-side
/// rejections (400, 404, 413, 422 — bad input, content refused) would fail the same way
/// everywhere, so they return at once.
fn fails_over(e: &Error) -> bool {
    match &e.kind {
        ErrorKind::UpstreamStatus(s) => s.retryable || s.exhausted || matches!(s.status, 401..=403),
        ErrorKind::UpstreamUnreachable | ErrorKind::UpstreamTimeout | ErrorKind::UpstreamProtocol => true,
        _ => false,
    }
}

/// Jittered backoff before the next candidate: spreads retries from many clients so a
/// struggling fleet is not hit in lockstep. 20 ms doubling per attempt, ±50%, capped.
fn backoff(attempt: u32) -> Duration {
    let base = 20u64.saturating_mul(1 << attempt.min(5)).min(400);
    Duration::from_millis(base / 2 + fastrand::u64(0..=base))
}

/// Where to try, in order: the ranked candidates of a route (with its plan, for the route
/// reason), or the one target an explicit model names. Errors are the client's.
fn tries_for(state: &SharedState, req: &ChatRequest, overrides: &Overrides) -> Result<(Vec<Try>, Option<Routed>)> {
    let router = &state.router;
    let Some(route) = router.route_for(&req.model, overrides)? else {
        let target = state.providers.resolve(&req.model)?;
        let price = state.meter.price(&target.provider.id, target.provider.vendor, &target.upstream_model)?;
        return Ok((vec![Try::Explicit { target, price }], None));
    };
    let routed = router.plan(route, overrides, req, Instant::now())?;
    if routed.plan.candidates.is_empty() {
        return Err(router.no_feasible(&routed));
    }
    // Only indices here: targets are built for the few candidates actually tried.
    let tries =
        (routed.plan.candidates.iter().enumerate()).map(|(rank, c)| Try::Routed { entry: c.entry, rank }).collect();
    Ok((tries, Some(routed)))
}

/// Serve one chat request end to end. Every outcome, errors included, is a response in
/// the client's dialect.
pub(crate) async fn exchange(
    state: &SharedState,
    caller: Caller,
    mut req: ChatRequest,
    overrides: &Overrides,
    headers: &HeaderMap,
) -> Response {
    let client = req.dialect;
    let router = &state.router;
    let (tries, plan) = match tries_for(state, &req, overrides) {
        Ok(x) => x,
        Err(e) => return e.render(client),
    };
    let routed = plan.is_some();
    let beta = headers.get(&ANTHROPIC_BETA);
    // Explicit models get one attempt: the client's SDK owns retries (and sees Retry-After).
    let max_attempts = if routed { router.max_attempts } else { 1 };
    let mut attempt_no = 0u32;
    let mut last_err: Option<(Error, Target)> = None;
    let mut exhausted: Vec<String> = Vec::new();
    let mut overloaded = 0u32;
    for t in tries {
        if attempt_no >= max_attempts {
            break;
        }
        let (target, chosen, rank) = match t {
            Try::Explicit { target, price } => (target, Chosen::Explicit(price), None),
            Try::Routed { entry, rank } => {
                let e = &router.entries[entry];
                let target = Target { provider: e.provider.clone(), upstream_model: e.model.model.clone() };
                (target, Chosen::Routed(entry), Some(rank))
            }
        };
        if exhausted.contains(&target.provider.id) {
            continue;
        }
        if let Chosen::Routed(i) = chosen {
            if let Availability::Open { .. } = router.health.acquire(&router.entries[i].key, Instant::now()) {
                continue;
            }
        }
        attempt_no += 1;
        if attempt_no > 1 {
            tokio::time::sleep(backoff(attempt_no - 1)).await;
        }
        let reason = match (&plan, rank) {
            (Some(p), Some(rank)) => Some(router.reason(p, rank, attempt_no)),
            _ => None,
        };
        match attempt_chat(state, &caller, &mut req, &target, chosen, attempt_no, reason, beta).await {
            Ok(resp) => return resp,
            Err(e) => {
                if let ErrorKind::UpstreamStatus(s) = &e.kind {
                    if s.exhausted {
                        exhausted.push(target.provider.id.clone());
                    }
                    if matches!(s.status, 503 | 529) {
                        overloaded += 1;
                    }
                }
                if !routed || !fails_over(&e) {
                    return error_response(e, &target, client);
                }
                last_err = Some((e, target));
            }
        }
    }
    match last_err {
        // Every candidate tried was overloaded: say so (Anthropic clients get 529), not
        // just the last one's words.
        Some((e, target)) if overloaded == attempt_no && attempt_no > 1 => {
            let e = Error { message: format!("every candidate model is overloaded; last: {}", e.message), ..e };
            error_response(e, &target, client)
        }
        Some((e, target)) => error_response(e, &target, client),
        None => Error::new(
            ErrorKind::Unavailable,
            "every feasible model is temporarily unavailable (circuits open after repeated failures)",
        )
        .render(client),
    }
}

/// Relayed to a same-dialect upstream: Anthropic's beta flags switch on features (and
/// change response shapes) the client expects.
static ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// The upstream request body for `target`, and whether the answer's JSON arrives as the
/// JSON tool's input (JSON mode translated to an Anthropic upstream).
fn upstream_body(req: &mut ChatRequest, target: &Target) -> Result<(Vec<u8>, bool)> {
    let model = target.upstream_model.as_str();
    let upstream = target.provider.dialect;
    match (req.dialect, upstream) {
        (Dialect::OpenAi, Dialect::OpenAi) => return Ok((wire::upstream_chat_body(req, model), false)),
        (Dialect::Anthropic, Dialect::Anthropic) => return Ok((anthropic::passthrough_body(req, model), false)),
        _ => {}
    }
    let conv = match req.dialect {
        Dialect::OpenAi => translate::conversation(req.body())?,
        Dialect::Anthropic => anthropic::conversation(req.body())?,
        Dialect::Gemini => return Err(Error::new(ErrorKind::Internal, "Gemini is not a client dialect")),
    };
    let body = match upstream {
        Dialect::OpenAi => translate::render_request(&conv, model, req.stream),
        Dialect::Anthropic => anthropic::render_request(&conv, model, req.stream),
        Dialect::Gemini => gemini::render_request(&conv),
    };
    Ok((body, upstream == Dialect::Anthropic && conv.response_format.is_json()))
}

/// How the stream relay treats this pair of dialects.
fn stream_mode(req: &ChatRequest, upstream: Dialect, json_tool: bool) -> Mode {
    let decoder: Box<dyn Decode> = match upstream {
        Dialect::OpenAi => {
            if req.dialect == Dialect::OpenAi {
                return Mode::OpenAi { include_usage: req.include_usage };
            }
            Box::new(translate::Decoder::new())
        }
        Dialect::Anthropic => Box::new(anthropic::Decoder::new(json_tool)),
        Dialect::Gemini => Box::new(gemini::Decoder::new()),
    };
    if req.dialect == upstream {
        return Mode::Observe { client: req.dialect, decoder };
    }
    let encoder: Box<dyn Encode> = match req.dialect {
        Dialect::Anthropic => Box::new(anthropic::Encoder::new()),
        _ => Box::new(translate::Encoder::new(req.include_usage)),
    };
    Mode::Translate { decoder, encoder }
}

/// A non-streaming answer in the client's dialect, with its usage (None if the upstream
/// reported none).
fn answer(req: &ChatRequest, target: &Target, bytes: Bytes, json_tool: bool) -> Result<(Bytes, Option<Usage>)> {
    let upstream = target.provider.dialect;
    let same = req.dialect == upstream;
    if same && upstream == Dialect::OpenAi {
        // One parse both validates the body and finds the usage.
        let usage = wire::response_usage(&bytes).map_err(|_| not_json(target))?;
        let bytes = if target.provider.quirks.think_tags_in_content { wire::split_think_tags(bytes) } else { bytes };
        return Ok((bytes, usage));
    }
    if same && upstream == Dialect::Anthropic {
        let usage = anthropic::response_usage(&bytes).map_err(|_| not_json(target))?;
        return Ok((bytes, usage));
    }
    let reply = match upstream {
        Dialect::OpenAi => translate::parse_reply(&bytes),
        Dialect::Anthropic => anthropic::parse_reply(&bytes, json_tool),
        Dialect::Gemini => gemini::parse_reply(&bytes),
    }
    .map_err(|e| Error { message: format!("provider {}: {}", target.provider.id, e.message), ..e })?;
    let out = match req.dialect {
        Dialect::Anthropic => anthropic::render_reply(&reply),
        _ => translate::render_reply(&reply),
    };
    Ok((Bytes::from(out), reply.usage))
}

pub(crate) fn error_response(e: Error, target: &Target, dialect: Dialect) -> Response {
    let mut resp = e.render(dialect);
    provenance(&mut resp, target);
    resp
}

/// One attempt at a chat request: send, relay (or translate), settle. Writes the attempt's
/// ledger row and updates health; returns the error (already recorded) for the caller to
/// decide on a fallback.
#[allow(clippy::too_many_arguments)]
async fn attempt_chat(
    state: &SharedState,
    caller: &Caller,
    req: &mut ChatRequest,
    target: &Target,
    chosen: Chosen,
    number: u32,
    reason: Option<String>,
    anthropic_beta: Option<&HeaderValue>,
) -> std::result::Result<Response, Error> {
    let client = req.dialect;
    let upstream = target.provider.dialect;
    // A request that cannot be translated is the client's mistake, the same everywhere:
    // no attempt, no ledger row.
    let (upstream_body, json_tool) = upstream_body(req, target)?;
    let extra = anthropic_beta.filter(|_| client == upstream).map(|b| (ANTHROPIC_BETA.clone(), b.clone()));
    let mut attempt = Attempt::start(state, caller.clone(), target, req.stream, number, reason.clone(), chosen);
    let endpoint = Endpoint::Chat { model: &target.upstream_model, stream: req.stream };
    let resp = match target.provider.post_json_with(endpoint, upstream_body, extra).await {
        Ok(r) => r,
        Err(e) => return Err(attempt.fail(e).await),
    };
    attempt.ttfb = Some(attempt.started.elapsed());
    let is_sse = resp.header("content-type").is_some_and(|v| v.starts_with("text/event-stream"));
    if req.stream && is_sse {
        attempt.healthy();
        // This attempt answers the request (no fallback after a stream starts): keep the
        // body for a possible estimate, in an allocation of its own (see `detached`).
        let request = req.take_body().detached();
        let estimator = state.estimator.clone();
        let on_end: OnEnd = Box::new(move |summary: StreamSummary| {
            let (status, error) = match &summary.end {
                StreamEnd::Completed => (200, None),
                StreamEnd::UpstreamFailed(_) => (502, Some("upstream_stream_broken")),
                StreamEnd::ClientGone => (499, Some("client_disconnected")),
            };
            attempt.target.provider.stream_ended(summary.usage.is_some(), summary.end == StreamEnd::Completed);
            if let Some(usage) = summary.usage {
                let (settled, record) = attempt.settle(usage, None, status, error);
                if let Some(r) = record {
                    r.send_detached();
                }
                return Ending::Now(Some(money_comment(&settled)));
            }
            // The usage never came: count the tokens (on the tokenizer's pool), then settle.
            // A stream that ended normally gets its cost comment once that is done.
            let counting = Counting { request, answer: Answer::Streamed(summary.transcript) };
            let completed = summary.end == StreamEnd::Completed;
            Ending::Later(Box::pin(async move {
                let (usage, how) = estimator.usage(counting).await;
                let (settled, record) = attempt.settle(usage, Some(how), status, error);
                if let Some(r) = record {
                    r.send().await;
                }
                completed.then(|| money_comment(&settled))
            }))
        });
        let mode = stream_mode(req, upstream, json_tool);
        // Text for an estimate is kept only while the provider has not shown that its
        // streams carry usage; after that, a stream cut short is estimated from a tally.
        let transcript = match target.provider.streams_report_usage() {
            true => state.estimator.tally(),
            false => state.estimator.transcript(),
        };
        let relay = StreamRelay::new(resp, target.provider.clone(), mode, transcript, Some(on_end));
        let mut out = Response::new(Body::from_stream(relay));
        let h = out.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        provenance(&mut out, target);
        route_reason(&mut out, reason.as_deref());
        return Ok(out);
    }
    let (status, bytes) = match read_upstream_body(target, resp).await {
        Ok(x) => x,
        Err(e) => return Err(attempt.fail(e).await),
    };
    let (bytes, usage) = match answer(req, target, bytes, json_tool) {
        Ok(x) => x,
        Err(e) => return Err(attempt.fail(e).await),
    };
    attempt.healthy();
    let (usage, estimate) = match usage {
        Some(u) => (u, None),
        None => {
            // The request is answered: its body moves to the tokenizer's pool (and is
            // parsed there if it never was).
            let counting = Counting { request: req.take_body(), answer: Answer::Body(bytes.clone()) };
            let (usage, how) = state.estimator.usage(counting).await;
            (usage, Some(how))
        }
    };
    let (settled, record) = attempt.settle(usage, estimate, status.as_u16(), None);
    if let Some(r) = record {
        r.send().await;
    }
    let mut out = json_response(status, bytes);
    provenance(&mut out, target);
    money_headers(&mut out, &settled);
    route_reason(&mut out, reason.as_deref());
    Ok(out)
}

fn route_reason(resp: &mut Response, reason: Option<&str>) {
    if let Some(v) = reason.and_then(|r| HeaderValue::from_str(r).ok()) {
        resp.headers_mut().insert(X_BOURSE_ROUTE_REASON.clone(), v);
    }
}
