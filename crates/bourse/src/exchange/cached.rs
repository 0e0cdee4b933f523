//! The response cache on the exchange ([`crate::cache`] has the key, the stores and the
//! rules): whether a request consults it, a hit served as an answer, and a fresh answer kept.
//!
//! A request consults it once it is planned and its key's rules have passed (a key may not
//! read a cached answer of a model or route it may not use), with the `provider/model` the
//! plan put first. The answer kept under that key is the one the client got, whichever
//! candidate made it (a fallback's, when the first failed; the one that passed a cascade's
//! checks); answers decided by an `agree` round of scouts are not kept. A hit:
//! - is admitted by the key's gate like any request (it counts against the requests per
//!   minute and the concurrency limit; its hold is 0 USD and 0 tokens and is settled at once;
//!   a key refused by a limit is refused here too);
//! - answers with the stored bytes, the original's provenance (`x-bourse-provider`,
//!   `x-bourse-model`), `x-bourse-cost-usd: 0`, the original's reference cost and a saving of
//!   all of it, `x-bourse-route-reason: cache hit`, `x-bourse-cache: hit` and `age` (seconds
//!   since it was stored); a stream replays its stored events and ends with its own cost
//!   comment;
//! - writes one ledger row: attempt 1, the original's provider and model, status 200, no
//!   usage (no tokens were processed), cost 0, the original's reference cost (so savings
//!   reports count the whole of what the request would have cost on the reference model),
//!   `cache_hit` and `cache_saved_nanos` = the original's cost; its route reason is `cache hit`
//!   after the route's `route=NAME` when it was routed (what `bourse replay` reads).
//!
//! `x-bourse-cache` says `miss` (consulted, nothing stored: the answer is kept if it
//! completes), `bypass` (the client's `Cache-Control` said `no-cache` or `no-store`) or
//! `uncacheable` (a sampled request on a route without `cache_sampled`); a request the cache
//! is off for carries no such header.

use super::answer::{money_comment, money_headers, Content};
use super::attempt::Settled;
use super::limits::{self, Denied, Gate};
use crate::cache::{Cache, Directive, Entry, Key};
use crate::canonical::{ChatRequest, Dialect};
use crate::ledger::LedgerEntry;
use crate::limit::Spent;
use crate::meter::Cost;
use crate::route::Target;
use crate::state::{Caller, SharedState};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use std::sync::Arc;
use std::time::Instant;

pub static X_BOURSE_CACHE: HeaderName = HeaderName::from_static("x-bourse-cache");

/// What consulting the cache came to.
pub(super) enum Consulted {
    /// A stored answer.
    Hit(Arc<Entry>),
    /// Looked up (or skipped at the client's `no-cache`): `keep` says where a complete
    /// answer is to be stored, if anywhere; `said` is the `x-bourse-cache` value.
    Go { keep: Option<Keep>, said: &'static str },
}

/// Where a fresh answer goes: its key, and for a request whose stream is replayed from a
/// complete answer (a buffered cascade), the `include_usage` the replay uses, since the
/// client (and so the stored entry) gets a stream.
#[derive(Clone, Copy)]
pub(super) struct Keep {
    pub(super) key: Key,
    pub(super) replay: Option<bool>,
}

/// Consult the cache for `req`, planned to `provider`/`model` first on `route` (None: an
/// explicitly named model); None when the cache is off for it.
pub(super) async fn consult(
    cache: &Cache,
    caller: &Caller,
    req: &ChatRequest,
    route: Option<&crate::config::RouteConfig>,
    (provider, model): (&str, &str),
    headers: &HeaderMap,
) -> Option<Consulted> {
    let key_says = caller.key.as_ref().and_then(|k| k.key.cache);
    if !cache.applies(key_says, route.and_then(|r| r.cache)) {
        return None;
    }
    if crate::cache::sampled(req) && !route.is_some_and(|r| r.cache_sampled) {
        return Some(Consulted::Go { keep: None, said: "uncacheable" });
    }
    let directive = Directive::of(headers);
    if directive == Directive::NoStore {
        return Some(Consulted::Go { keep: None, said: "bypass" });
    }
    let beta = match req.dialect {
        Dialect::Anthropic => headers.get("anthropic-beta").map_or(&b""[..], |v| v.as_bytes()),
        _ => b"",
    };
    let key = Key::of(cache.scope(caller.tenant_id()), req, provider, model, beta);
    let keep = Some(Keep { key, replay: None });
    if directive == Directive::NoCache {
        return Some(Consulted::Go { keep, said: "bypass" });
    }
    match cache.get(&key).await {
        Some(entry) => Some(Consulted::Hit(entry)),
        None => Some(Consulted::Go { keep, said: "miss" }),
    }
}

/// Serve a hit: admitted by the key's gate, answered from `entry`, recorded in the ledger.
pub(super) async fn serve(
    state: &SharedState,
    caller: &Caller,
    req: &ChatRequest,
    entry: &Entry,
    gate: Option<&mut Gate>,
    route: Option<&str>,
    started: Instant,
) -> Response {
    let client = req.dialect;
    let ts_ms = crate::timespec::now_ms();
    let mut gate = gate;
    if let Some(g) = gate.as_deref_mut() {
        match g.reserve(0, 0).await {
            Ok(mut held) => {
                held.lease = g.lease();
                held.settle(Spent::default());
            }
            Err(Denied::Error(e)) => return limits::unavailable(e, client),
            Err(Denied::Refused(r)) => return limits::refusal_response(&r, client, 0),
        }
    }
    let content = if entry.stream { Content::EventStream } else { Content::Json };
    let headers = match gate.as_deref() {
        Some(g) => g.answer_headers(content, client),
        None => content.headers(),
    };
    // No upstream ran: no cost and no inference energy (an estimate of 0, not a missing one).
    let settled = Settled { cost: Cost(0), reference: Cost(entry.reference_nanos), ..Settled::default() };
    let body = match entry.stream {
        true => {
            let chunks = [entry.body.clone(), money_comment(&settled)];
            Body::from_stream(futures_util::stream::iter(chunks.map(Ok::<Bytes, std::convert::Infallible>)))
        }
        false => Body::from(entry.body.clone()),
    };
    let mut out = Response::new(body);
    *out.headers_mut() = headers;
    let h = out.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&entry.provider) {
        h.insert(super::X_BOURSE_PROVIDER.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&entry.model) {
        h.insert(super::X_BOURSE_MODEL.clone(), v);
    }
    h.insert(super::X_BOURSE_ROUTE_REASON.clone(), HeaderValue::from_static("cache hit"));
    h.insert(X_BOURSE_CACHE.clone(), HeaderValue::from_static("hit"));
    let age = (ts_ms - entry.stored_ms).max(0) / 1000;
    h.insert(header::AGE, HeaderValue::from(age));
    if !entry.stream {
        money_headers(&mut out, &settled);
    }
    if let Some(writer) = &state.ledger {
        let latency_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        let row = LedgerEntry {
            request_id: String::from(&*caller.request_id),
            attempt: 1,
            ts_ms,
            key_id: caller.key_id.clone(),
            tenant_id: caller.key.as_ref().map(|k| k.group.clone()),
            provider: entry.provider.clone(),
            model: entry.model.clone(),
            route_reason: Some(match route {
                Some(r) => format!("route={r}; cache hit"),
                None => "cache hit".to_string(),
            }),
            usage: Default::default(),
            cost_nanos: 0,
            reference_cost_nanos: entry.reference_nanos,
            catalog_version: state.meter.catalog.version.clone(),
            ttfb_ms: Some(latency_ms),
            latency_ms,
            status: 200,
            error_kind: None,
            estimate: None,
            stream: req.stream,
            checks: None,
            needs: req.needs.bits(),
            cache_hit: true,
            cache_saved_nanos: entry.cost_nanos,
            energy_uwh: Some(settled.energy.uwh),
            co2e_ug: Some(settled.energy.co2e_ug),
        };
        writer.record(row).await;
    }
    out
}

/// A fresh answer to keep: who made it, and the cache and key it goes to. Built when the
/// answer is about to be relayed, stored once it is complete and priced.
pub(super) struct Fresh {
    state: SharedState,
    keep: Keep,
    provider: String,
    model: String,
}

impl Fresh {
    pub(super) fn new(state: &SharedState, keep: Keep, target: &Target) -> Fresh {
        Fresh { state: state.clone(), keep, provider: target.provider.id.clone(), model: target.upstream_model.clone() }
    }

    /// Store the complete answer `body` (in `client`'s dialect; a stream's events, or a
    /// JSON answer, replayed as a stream first when the client asked for one) at what it
    /// cost.
    pub(super) fn store(self, body: Bytes, stream: bool, client: Dialect, settled: &Settled) {
        let Some(cache) = &self.state.cache else { return };
        let (body, stream) = match (stream, self.keep.replay) {
            (false, Some(include_usage)) => match crate::dialect::replay::stream_of(&body, client, include_usage) {
                Some(s) => (s, true),
                None => return,
            },
            _ => (body, stream),
        };
        let entry = Entry {
            stream,
            stored_ms: crate::timespec::now_ms(),
            cost_nanos: settled.cost.0,
            reference_nanos: settled.reference.0,
            provider: self.provider,
            model: self.model,
            body,
        };
        cache.put(self.keep.key, entry);
    }
}
