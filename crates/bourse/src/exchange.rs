//! One exchange with the upstreams, whichever dialect the client speaks: resolve or route,
//! attempt (with fallbacks), relay or translate the answer, meter it, and write the ledger.
//! The handlers in [`crate::api`] parse a request and call [`chat`] or [`embeddings`]; what
//! they get back is the response, in the client's dialect, errors included.
//!
//! The client's dialect decides how the request was parsed and how answers and errors are
//! rendered; the upstream's decides the wire in between. Same dialect on both sides passes
//! the body through (only `model` rewritten); otherwise the request goes through the
//! canonical [`Conversation`](crate::canonical::Conversation) and the answer through a
//! [`Reply`](crate::canonical::Reply) or a stream of deltas ([`crate::dialect`]).
//!
//! [`attempt`] is one upstream attempt from start to settlement (price, ledger row, health);
//! [`answer`] the headers an answer carries about itself (provenance, money, route reason);
//! [`cascade`] a route's answer checks and escalation, [`scouts`] the `agree` check's
//! parallel first round, and [`side`] the metered calls that answer no client (a judge's
//! grade, a shadow's answer); [`cached`] the response cache's hits and what it keeps.

mod answer;
mod attempt;
mod cached;
mod cascade;
mod limits;
mod scouts;
mod side;

pub(crate) use answer::read_upstream_body;
pub use answer::{
    X_BOURSE_COST, X_BOURSE_MODEL, X_BOURSE_PROVIDER, X_BOURSE_REFERENCE_COST, X_BOURSE_ROUTE_REASON, X_BOURSE_SAVED,
};
pub use cached::X_BOURSE_CACHE;
pub use limits::X_BOURSE_BUDGET_REMAINING;

use crate::canonical::{ChatRequest, Dialect, EmbeddingsRequest, Usage};
use crate::dialect::openai as wire;
use crate::dialect::{anthropic, gemini, Decode, Encode};
use crate::error::{Error, ErrorKind, Result};
use crate::meter::estimate::{self, Answer, Counting};
use crate::meter::Price;
use crate::provider::Endpoint;
use crate::relay::{Ending, Mode, OnEnd, StreamEnd, StreamRelay, StreamSummary};
use crate::route::health::Availability;
use crate::route::{Overrides, Routed, Target};
use crate::state::{Caller, SharedState};
use crate::telemetry::Watch;
use answer::{
    error_response, json_response, money_comment, money_headers, not_json, provenance, route_reason, Content,
};
use attempt::{Attempt, Chosen};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use cascade::Cascade;
use limits::{Denied, Gate, Held};
use scouts::{Round, Scout};
use std::time::{Duration, Instant};

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
pub async fn chat(
    state: &SharedState,
    caller: &Caller,
    mut req: ChatRequest,
    overrides: &Overrides,
    headers: &HeaderMap,
) -> Response {
    let t = &state.telemetry;
    let mut watch = t.begin(caller.arrived, "chat", &req.model, Some(headers));
    if let (Some(span), true) = (watch.span(), t.capture_content) {
        // The conversation as the client sent it (system prompt included).
        let body = req.body();
        let messages: serde_json::Map<String, serde_json::Value> =
            ["system", "messages"].iter().filter_map(|k| Some((k.to_string(), body.get(*k)?.clone()))).collect();
        span.set("gen_ai.input.messages", serde_json::Value::Object(messages).to_string());
    }
    // The exchange is this block: its value is the answer, whichever way it ends, and it runs
    // in this function's own future (a nested one would add a state machine to every poll).
    // A shadowed request: its route, the shadow's model, and the request as sent.
    let mut shadow: Option<(String, String, ChatRequest)> = None;
    // A buffered stream's `include_usage`, when the answer is to be replayed as a stream.
    let mut buffered: Option<bool> = None;
    // What `x-bourse-cache` says (None: the cache is off for this request).
    let mut cache_said: Option<&'static str> = None;
    let mut resp = 'answer: {
        let client = req.dialect;
        let router = &state.router;
        let mut gate = Gate::new(state, caller);
        // A virtual key's rules: what it may call, its default route, its and its tenant's
        // policies, and the tenant's budget-aware downgrade.
        let own;
        let mut overrides = overrides;
        let mut downgraded = None;
        if let Some(k) = &caller.key {
            let mut o = overrides.clone();
            if let Err(e) = key_rules(state, k, &req, &mut o) {
                break 'answer e.render(client);
            }
            if let Some(g) = &gate {
                if let Some((floor, left, below)) = g.downgrade().await {
                    let route_floor = router.route_for(&req.model, &o).ok().flatten().map(|r| r.min_quality);
                    let current = o.min_quality.or(route_floor).unwrap_or(floor);
                    if floor < current {
                        o.min_quality = Some(floor);
                        downgraded = Some(format!(
                            "; downgraded: tenant budget {left}% left (below {below}%), quality floor {current} -> {floor}"
                        ));
                    }
                }
            }
            own = o;
            overrides = &own;
        }
        let (tries, plan) = match tries_for(state, &req, overrides) {
            Ok(x) => x,
            Err(e) => break 'answer e.render(client),
        };
        if let Some(p) = &plan {
            t.routed(&mut watch, &p.route);
        }
        // The response cache, once the plan says which model would answer: one branch while
        // it is off.
        let mut keep: Option<cached::Keep> = None;
        if let Some(cache) = &state.cache {
            let started = Instant::now();
            let route = plan.as_ref().and_then(|p| router.route(&p.route));
            if let Some(first) = first_model(router, &tries, caller) {
                match cached::consult(cache, caller, &req, route, first, headers).await {
                    None => {}
                    Some(cached::Consulted::Hit(entry)) => {
                        // The access line and span name who made the answer (no attempt did now).
                        watch.tried(&entry.provider, &entry.model);
                        let route = plan.as_ref().map(|p| p.route.as_str());
                        break 'answer cached::serve(state, caller, &req, &entry, gate.as_mut(), route, started).await;
                    }
                    Some(cached::Consulted::Go { keep: k, said }) => {
                        keep = k;
                        cache_said = Some(said);
                    }
                }
            }
        }
        // What a reservation needs: the prompt's estimated size and the output it may reach.
        let prompt_tokens = match (&gate, &plan) {
            (None, _) => 0,
            (Some(_), Some(p)) => p.prompt_tokens,
            // A named model: a quarter of the body's bytes, what the planner's estimate comes to
            // for text, and no lower (the body holds the prompt and a little JSON), without
            // scanning the body again.
            (Some(_), None) => match req.raw_body() {
                Some(raw) => raw.bytes.len() as u64 / 4 + 1,
                None => crate::route::prompt_facts(&req).0,
            },
        };
        let tokens = prompt_tokens + req.max_output_tokens.unwrap_or(limits::DEFAULT_TOKENS_RESERVED);
        let allowed_models = caller.key.as_ref().map(|k| &k.key.models).filter(|m| !m.is_empty());
        let mut refused: Option<crate::limit::Refusal> = None;
        // Candidates the key's `models` rule left out.
        let mut not_allowed = 0usize;
        let mut headroom: Option<i64> = None;
        let routed = plan.is_some();
        let beta = headers.get(&ANTHROPIC_BETA);
        // Explicit models get one attempt: the client's SDK owns retries (and sees Retry-After).
        let max_attempts = if routed { router.max_attempts } else { 1 };
        let mut attempt_no = 0u32;
        // A route's cascade (non-streaming requests): answers are checked, and one that fails
        // escalates to a better candidate.
        let route_config = plan.as_ref().and_then(|p| router.route(&p.route));
        // Boxed: the exchange's future holds a pointer, not the cascade (its expectations and
        // kept answer), so requests without one do not carry (and copy) its size.
        let mut cascade = route_config.and_then(|r| Cascade::new(r, &req, &caller.request_id)).map(Box::new);
        // A cascaded stream (`cascade_streaming = "buffer"`): its attempts go upstream without
        // streaming, and the answer that stands is replayed to the client as a stream.
        if req.stream && cascade.is_some() {
            buffered = Some(req.include_usage);
            if let Some(k) = &mut keep {
                k.replay = Some(req.include_usage);
            }
            req.stream = false;
            let body = req.body_mut();
            body.insert("stream".into(), serde_json::Value::Bool(false));
            body.remove("stream_options");
        }
        // Shadow sampling: a sampled non-streaming request is kept as sent, for its shadow.
        if let Some((r, s)) = route_config.and_then(|r| Some((r, r.shadow.as_ref()?))) {
            if !req.stream && side::sampled(&caller.request_id, "shadow", s.share_ppm) {
                shadow = Some((r.name.clone(), s.model.clone(), req.clone()));
            }
        }
        // The agree check's scouts, gathered before any of them is asked.
        let mut scouts: Vec<Scout> = Vec::new();
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
            if let (Chosen::Routed(i), Some(globs)) = (chosen, allowed_models) {
                let e = &router.entries[i];
                if !crate::admin::model_allowed(globs, &e.provider.id, &e.model.model) {
                    not_allowed += 1;
                    continue;
                }
            }
            // The attempt's worst case, for its reservation.
            let worst = match (&gate, chosen, &plan, rank) {
                (None, ..) => 0,
                (Some(_), Chosen::Routed(_), Some(p), Some(rank)) => {
                    crate::route::plan::cost_of(p.plan.candidates[rank].max_pico).0
                }
                (Some(_), Chosen::Explicit(price), ..) => {
                    crate::route::plan::cost_of(crate::route::plan::worst_case_pico(
                        state.meter.model(price),
                        prompt_tokens,
                        req.max_output_tokens,
                    ))
                    .0
                }
                (Some(_), Chosen::Routed(i), ..) => {
                    crate::route::plan::cost_of(crate::route::plan::worst_case_pico(
                        &router.entries[i].model,
                        prompt_tokens,
                        req.max_output_tokens,
                    ))
                    .0
                }
            };
            // A routed request whose budget cannot take this candidate tries the cheaper ones.
            if headroom.is_some_and(|h| worst > h) {
                continue;
            }
            // After a failed check, only a better candidate may answer.
            if let (Some(c), Some(p), Some(rank)) = (&cascade, &plan, rank) {
                if !c.admits(router, &p.plan.candidates[rank]) {
                    continue;
                }
            }
            if let Chosen::Routed(i) = chosen {
                if let Availability::Open { .. } = router.health.acquire(&router.entries[i].key, Instant::now()) {
                    continue;
                }
            }
            let held = match &mut gate {
                None => None,
                Some(g) => match g.reserve(worst, tokens).await {
                    Ok(h) => Some(h),
                    Err(Denied::Error(e)) => break 'answer limits::unavailable(e, client),
                    Err(Denied::Refused(r)) => match limits::headroom(&r) {
                        Some(h) if routed => {
                            headroom = Some(h);
                            refused = Some(r);
                            continue;
                        }
                        _ => break 'answer limits::refusal_response(&r, client, tokens),
                    },
                },
            };
            attempt_no += 1;
            if let (Some(k), Some(p), Some(rank), Chosen::Routed(entry)) =
                (cascade.as_deref().and_then(Cascade::scouts), &plan, rank, chosen)
            {
                let mut reason = router.reason(p, rank, 1);
                if let Some(d) = &downgraded {
                    reason.push_str(d);
                }
                reason.push_str(&format!("; agree scout {} of {k}", scouts.len() + 1));
                scouts.push(Scout { target, entry, rank, number: attempt_no, reason, held });
                if scouts.len() < k {
                    continue;
                }
                let (Some(c), Some(p)) = (cascade.as_deref_mut(), &plan) else { continue };
                let r = scouts::Request {
                    state,
                    caller,
                    req: &mut req,
                    plan: p,
                    gate: gate.as_mut(),
                    cascade: c,
                    watch: &mut watch,
                    shadowed: shadow.is_some(),
                    anthropic_beta: beta,
                };
                // Boxed: only agree routes ask scouts, and every request's future would
                // otherwise hold room for the round's state.
                match Box::pin(scouts::ask(r, std::mem::take(&mut scouts), k)).await {
                    Round::Done(resp) => break 'answer resp,
                    Round::Escalate(err) => {
                        if err.is_some() {
                            last_err = err;
                        }
                        continue;
                    }
                }
            }
            if attempt_no > 1 {
                tokio::time::sleep(backoff(attempt_no - 1)).await;
            }
            let reason = match (&plan, rank) {
                (Some(p), Some(rank)) => {
                    let mut r = router.reason(p, rank, attempt_no);
                    if let Some(d) = &downgraded {
                        r.push_str(d);
                    }
                    if let Some(c) = &mut cascade {
                        c.explain(&mut r);
                    }
                    Some(r)
                }
                _ => None,
            };
            let pass = Pass {
                number: attempt_no,
                reason,
                held,
                gate: gate.as_mut(),
                cascade: cascade.as_deref_mut(),
                watch: &mut watch,
                shadowed: shadow.is_some(),
                keep,
            };
            match attempt_chat(state, caller, &mut req, &target, chosen, pass, beta).await {
                Ok(resp) => match (&mut cascade, &plan, rank, chosen) {
                    (Some(c), Some(p), Some(rank), Chosen::Routed(i)) => {
                        if c.failed_now() {
                            c.escalate(resp, p.plan.candidates[rank], &router.entries[i].key);
                            continue;
                        }
                        break 'answer c.passed(resp);
                    }
                    _ => break 'answer resp,
                },
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
                        break 'answer error_response(e, &target, client);
                    }
                    last_err = Some((e, target));
                }
            }
        }
        // Fewer feasible candidates than scouts: those there are were gathered, and are asked
        // now (the missing ones count as giving no answer).
        if let (Some(k), Some(c), Some(p), false) =
            (cascade.as_deref().and_then(Cascade::scouts), cascade.as_deref_mut(), &plan, scouts.is_empty())
        {
            let r = scouts::Request {
                state,
                caller,
                req: &mut req,
                plan: p,
                gate: gate.as_mut(),
                cascade: c,
                watch: &mut watch,
                shadowed: shadow.is_some(),
                anthropic_beta: beta,
            };
            match Box::pin(scouts::ask(r, std::mem::take(&mut scouts), k)).await {
                Round::Done(resp) => break 'answer resp,
                Round::Escalate(err) => {
                    if err.is_some() {
                        last_err = err;
                    }
                }
            }
        }
        // No candidate passed the cascade's checks: the last answer, marked.
        if let Some(resp) = cascade.as_deref_mut().and_then(Cascade::exhausted) {
            break 'answer resp;
        }
        if let (Some(r), None) = (&refused, &last_err) {
            break 'answer limits::refusal_response(r, client, tokens);
        }
        if let (Some(k), None, 0) = (&caller.key, &last_err, attempt_no) {
            if not_allowed > 0 {
                let msg = format!(
                    "key '{}' may use none of the {not_allowed} feasible models of this route (it may use: {})",
                    k.key.id,
                    k.key.models.join(", ")
                );
                break 'answer Error::new(ErrorKind::Forbidden, msg).render(client);
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
    };
    if let Some(include_usage) = buffered {
        resp = answer::replayed(resp, req.dialect, include_usage).await;
    }
    if let Some(said) = cache_said {
        resp.headers_mut().insert(X_BOURSE_CACHE.clone(), HeaderValue::from_static(said));
    }
    // The answer goes out first; its shadow follows on a task of its own.
    if let Some((route, model, req)) = shadow {
        let served = resp.extensions_mut().remove::<Served>().filter(|_| resp.status().is_success());
        if let Some(Served { model: served_model, body }) = served {
            match crate::check::Answer::from_body(&body, req.dialect) {
                Ok(answer) => {
                    let s = side::Shadow { route, model, req, served: (served_model, answer) };
                    side::spawn(state, caller, watch.route, s);
                }
                Err(e) => tracing::debug!("shadow skipped: the served answer cannot be read: {e}"),
            }
        }
    }
    t.answered(watch, &resp, || caller.who());
    resp
}

/// The `provider/model` a request would be sent to first: the model it names, or its plan's
/// first candidate that its key may use.
fn first_model<'a>(router: &'a crate::route::Router, tries: &'a [Try], caller: &Caller) -> Option<(&'a str, &'a str)> {
    let allowed = caller.key.as_ref().map(|k| &k.key.models).filter(|m| !m.is_empty());
    tries.iter().find_map(|t| match t {
        Try::Explicit { target, .. } => Some((target.provider.id.as_str(), target.upstream_model.as_str())),
        Try::Routed { entry, .. } => {
            let e = &router.entries[*entry];
            let (provider, model) = (e.provider.id.as_str(), e.model.model.as_str());
            allowed.is_none_or(|g| crate::admin::model_allowed(g, provider, model)).then_some((provider, model))
        }
    })
}

/// A virtual key's rules on a chat request: its default route, the routes and models it may
/// use, and its own and its tenant's policies (added to the overrides, so the planner obeys
/// both; an explicitly named model is checked against them here).
fn key_rules(state: &SharedState, k: &crate::admin::Resolved, req: &ChatRequest, o: &mut Overrides) -> Result<()> {
    let router = &state.router;
    let key = &k.key;
    if o.route.is_none() && (req.model.is_empty() || req.model == "default") {
        o.route.clone_from(&key.default_route);
    }
    for p in [&k.tenant.policy, &key.policy].into_iter().flatten() {
        if !o.narrow.contains(p) {
            o.narrow.push(p.clone());
        }
    }
    let forbidden = |what: String| Err(Error::new(ErrorKind::Forbidden, what));
    if let Some(route) = router.route_for(&req.model, o)? {
        if !key.routes.is_empty() && !key.routes.iter().any(|g| crate::tenancy::glob_match(g, &route.name)) {
            return forbidden(format!(
                "key '{}' may not use route '{}' (it may use: {})",
                key.id,
                route.name,
                key.routes.join(", ")
            ));
        }
        return Ok(());
    }
    if key.models.is_empty() && o.narrow.is_empty() {
        return Ok(());
    }
    let target = state.providers.resolve(&req.model)?;
    let full = format!("{}/{}", target.provider.id, target.upstream_model);
    if !crate::admin::model_allowed(&key.models, &target.provider.id, &target.upstream_model) {
        return forbidden(format!(
            "key '{}' may not use model '{}' (it may use: {})",
            key.id,
            req.model,
            key.models.join(", ")
        ));
    }
    if !o.narrow.is_empty() {
        let Some(entry) = router.entry(&full) else {
            return forbidden(format!(
                "model '{full}' is not in the catalog, so the data policy of key '{}' cannot be checked",
                key.id
            ));
        };
        for name in &o.narrow {
            let policy = router.policies.get(name).ok_or_else(|| {
                Error::new(ErrorKind::Internal, format!("the key's policy '{name}' is no longer configured"))
            })?;
            if let Some(x) = crate::route::plan::policy_exclusion(entry, policy) {
                return forbidden(format!("model '{full}' is excluded by policy '{name}': {}", x.describe()));
            }
        }
    }
    Ok(())
}

/// Relayed to a same-dialect upstream: Anthropic's beta flags switch on features (and
/// change response shapes) the client expects.
static ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// The upstream request body for `target`, and whether the answer's JSON arrives as the
/// JSON tool's input (JSON mode translated to an Anthropic upstream). Also how offline evals
/// (`crate::evals`) ask a model.
pub(crate) fn upstream_body(req: &mut ChatRequest, target: &Target) -> Result<(Vec<u8>, bool)> {
    let model = target.upstream_model.as_str();
    let upstream = target.provider.dialect;
    match (req.dialect, upstream) {
        (Dialect::OpenAi, Dialect::OpenAi) => return Ok((wire::upstream_chat_body(req, model), false)),
        (Dialect::Anthropic, Dialect::Anthropic) => return Ok((anthropic::passthrough_body(req, model), false)),
        _ => {}
    }
    let conv = match req.dialect {
        Dialect::OpenAi => wire::conversation(req.body())?,
        Dialect::Anthropic => anthropic::conversation(req.body())?,
        Dialect::Gemini => return Err(Error::new(ErrorKind::Internal, "Gemini is not a client dialect")),
    };
    let body = match upstream {
        Dialect::OpenAi => wire::render_request(&conv, model, req.stream),
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
            Box::new(wire::Decoder::new())
        }
        Dialect::Anthropic => Box::new(anthropic::Decoder::new(json_tool)),
        Dialect::Gemini => Box::new(gemini::Decoder::new()),
    };
    if req.dialect == upstream {
        return Mode::Observe { client: req.dialect, decoder };
    }
    let encoder: Box<dyn Encode> = match req.dialect {
        Dialect::Anthropic => Box::new(anthropic::Encoder::new()),
        _ => Box::new(wire::Encoder::new(req.include_usage)),
    };
    Mode::Translate { decoder, encoder }
}

/// A non-streaming answer in the client's dialect, with its usage (None if the upstream
/// reported none).
pub(crate) fn answer(
    req: &ChatRequest,
    target: &Target,
    bytes: Bytes,
    json_tool: bool,
) -> Result<(Bytes, Option<Usage>)> {
    let upstream = target.provider.dialect;
    let same = req.dialect == upstream;
    // The upstream's error (`{"error":…}`) under a 2xx is its error, not an answer: relayed
    // as one, it would reach the client as a success, unmetered and never fallen back from.
    let reported = |e: Error| Error { message: format!("provider {}: {}", target.provider.id, e.message), ..e };
    if same && upstream == Dialect::OpenAi {
        // One parse both validates the body and finds the usage.
        let usage = wire::response_usage(&bytes).map_err(|_| not_json(target))?;
        if let Some(e) = usage.is_none().then(|| wire::reported_error(&bytes)).flatten() {
            return Err(reported(e));
        }
        let bytes = if target.provider.quirks.think_tags_in_content { wire::split_think_tags(bytes) } else { bytes };
        return Ok((bytes, usage));
    }
    if same && upstream == Dialect::Anthropic {
        let usage = anthropic::response_usage(&bytes).map_err(|_| not_json(target))?;
        if let Some(e) = usage.is_none().then(|| anthropic::reported_error(&bytes)).flatten() {
            return Err(reported(e));
        }
        return Ok((bytes, usage));
    }
    let reply = match upstream {
        Dialect::OpenAi => wire::parse_reply(&bytes),
        Dialect::Anthropic => anthropic::parse_reply(&bytes, json_tool),
        Dialect::Gemini => gemini::parse_reply(&bytes),
    }
    .map_err(reported)?;
    let out = match req.dialect {
        Dialect::Anthropic => anthropic::render_reply(&reply),
        _ => wire::render_reply(&reply),
    };
    Ok((Bytes::from(out), reply.usage))
}

/// The answer a shadow compares with, carried on the response's extensions (never sent)
/// from the attempt that made it to the end of the exchange; only on a shadowed request.
#[derive(Clone)]
struct Served {
    /// `provider/model` that answered.
    model: String,
    /// The answer, in the client's dialect.
    body: Bytes,
}

/// What one attempt carries in from the loop: its number, its route reason, its reservation
/// and the request's gate (whose lease goes with the attempt that answers).
struct Pass<'g, 'r> {
    number: u32,
    reason: Option<String>,
    held: Option<Held>,
    gate: Option<&'g mut Gate>,
    /// The request's cascade: the attempt checks its answer (recorded in its ledger row).
    cascade: Option<&'g mut Cascade<'r>>,
    watch: &'g mut Watch,
    /// Keep the answer for a shadow ([`Served`]).
    shadowed: bool,
    /// Keep a complete answer in the response cache, under this key.
    keep: Option<cached::Keep>,
}

impl Pass<'_, '_> {
    /// This attempt answers the request: its settle gives the request's lease back and
    /// writes the request's last word.
    #[inline]
    fn answers(&mut self, attempt: &mut Attempt) {
        if let (Some(h), Some(g)) = (attempt.held.as_mut(), self.gate.as_mut()) {
            h.lease = g.lease();
        }
        self.watch.hand_over(&mut attempt.ending);
    }
}

/// An answer's first headers: a virtual key's carry its budget and rate-limit headers.
fn answer_headers(gate: Option<&Gate>, content: Content, client: Dialect) -> HeaderMap {
    match gate {
        Some(g) => g.answer_headers(content, client),
        None => content.headers(),
    }
}

/// One attempt at a chat request: send, relay (or translate), settle. Writes the attempt's
/// ledger row and updates health; returns the error (already recorded) for the caller to
/// decide on a fallback.
async fn attempt_chat(
    state: &SharedState,
    caller: &Caller,
    req: &mut ChatRequest,
    target: &Target,
    chosen: Chosen,
    mut pass: Pass<'_, '_>,
    anthropic_beta: Option<&HeaderValue>,
) -> std::result::Result<Response, Error> {
    let (number, reason) = (pass.number, pass.reason.take());
    let client = req.dialect;
    let upstream = target.provider.dialect;
    // A request that cannot be translated is the client's mistake, the same everywhere:
    // no attempt, no ledger row.
    let (upstream_body, json_tool) = upstream_body(req, target)?;
    let extra = anthropic_beta.filter(|_| client == upstream).map(|b| (ANTHROPIC_BETA.clone(), b.clone()));
    let mut attempt =
        Attempt::start(state, caller.clone(), target, req.stream, number, reason.clone(), chosen, pass.watch);
    attempt.needs = req.needs.bits();
    attempt.held = pass.held.take();
    let endpoint = Endpoint::Chat { model: &target.upstream_model, stream: req.stream };
    let resp = match target.provider.post_json_with(endpoint, upstream_body, extra).await {
        Ok(r) => r,
        Err(e) => {
            attempt.waited(pass.watch);
            return Err(attempt.fail(e).await);
        }
    };
    attempt.ttfb = Some(attempt.started.elapsed());
    let is_sse = resp.header("content-type").is_some_and(|v| v.starts_with("text/event-stream"));
    if req.stream && is_sse {
        let mode = stream_mode(req, upstream, json_tool);
        // Text for an estimate is kept only while the provider has not shown that its
        // streams carry usage; after that, a stream cut short is estimated from a tally.
        let transcript = match target.provider.streams_report_usage() {
            true => state.estimator.tally(),
            false => state.estimator.transcript(),
        };
        let mut relay = StreamRelay::new(resp, target.provider.clone(), mode, transcript);
        if attempt.traced() {
            relay.note_facts(client);
        }
        let fresh = pass.keep.map(|k| cached::Fresh::new(state, k, target));
        if let (Some(_), Some(c)) = (&fresh, &state.cache) {
            relay.tee(usize::try_from(c.config.max_entry_bytes).unwrap_or(usize::MAX));
        }
        // Nothing reaches the client before the first token: a stream that fails sooner is
        // this attempt's failure, and another candidate (or a clean error status) answers.
        let first_token_by = tokio::time::Instant::from_std(attempt.started) + target.provider.timeouts.first_byte;
        let first = match tokio::time::timeout_at(first_token_by, relay.first_token()).await {
            Ok(first) => first,
            Err(_) => Err(target.provider.first_token_timeout()),
        };
        if let Err(e) = first {
            attempt.waited(pass.watch);
            return Err(attempt.fail(e).await);
        }
        attempt.first_token_came(pass.watch);
        attempt.healthy();
        pass.answers(&mut attempt);
        // This attempt answers the request (no fallback once a token is the client's): keep
        // the body for a possible estimate, in an allocation of its own (see `detached`).
        let request = req.take_body().detached();
        let estimator = state.estimator.clone();
        let on_end: OnEnd = Box::new(move |mut summary: StreamSummary| {
            attempt.streamed_facts(summary.facts);
            // Set only when the stream completed and its bytes are kept.
            let teed = summary.teed.take();
            let (status, error) = match &summary.end {
                StreamEnd::Completed => (200, None),
                StreamEnd::UpstreamFailed(_) => (502, Some("upstream_stream_broken")),
                StreamEnd::ClientGone => {
                    let (status, error) = attempt.gone();
                    (status, Some(error))
                }
            };
            attempt.target.provider.stream_ended(summary.usage.is_some(), summary.end == StreamEnd::Completed);
            if let Some(usage) = summary.usage {
                let (settled, record) = attempt.settle(usage, None, status, error);
                if let Some(r) = record {
                    r.send_detached();
                }
                if let (Some(f), Some(body)) = (fresh, teed) {
                    f.store(body, true, client, &settled);
                }
                return Ending::Now(Some(money_comment(&settled)));
            }
            // The usage never came: count the tokens (on the tokenizer's pool), then settle.
            // A stream that ended normally gets its cost comment once that is done. When the
            // upstream counted the input at the start, only the output is estimated.
            let partial = summary.partial;
            let request = if partial.is_some() { None } else { Some(request) };
            let counting = Counting { request, answer: Answer::Streamed(summary.transcript) };
            let completed = summary.end == StreamEnd::Completed;
            let settling = attempt.settling();
            Ending::Later(Box::pin(async move {
                let _settling = settling;
                let (mut usage, how) = estimator.usage(counting).await;
                if let Some(p) = partial {
                    usage = Usage { output: usage.output.max(p.output), ..p };
                }
                let (settled, record) = attempt.settle(usage, Some(how), status, error);
                if let Some(r) = record {
                    r.send().await;
                }
                if let (Some(f), Some(body)) = (fresh, teed) {
                    f.store(body, true, client, &settled);
                }
                completed.then(|| money_comment(&settled))
            }))
        });
        relay.set_on_end(on_end);
        let mut out = Response::new(Body::from_stream(relay));
        *out.headers_mut() = answer_headers(pass.gate.as_deref(), Content::EventStream, client);
        provenance(&mut out, target);
        route_reason(&mut out, reason.as_deref());
        return Ok(out);
    }
    let read = read_upstream_body(target, resp).await;
    attempt.waited(pass.watch);
    let (status, bytes) = match read {
        Ok(x) => x,
        Err(e) => return Err(attempt.fail(e).await),
    };
    let (bytes, usage) = match answer(req, target, bytes, json_tool) {
        Ok(x) => x,
        Err(e) => return Err(attempt.fail(e).await),
    };
    attempt.healthy();
    // The cascade's checks, before the settle writes the row they are recorded in. An answer
    // that fails one does not answer the request (yet): the lease and the request's last word
    // stay with the request for the attempt that does (or for its end, if none passes).
    let checked = match pass.cascade.as_deref_mut() {
        None => None,
        Some(c) => {
            let model = format!("{}/{}", target.provider.id, target.upstream_model);
            let (answer, mut outcomes) = c.single(&bytes, client);
            if let (Some(a), Some(judge)) = (&answer, c.judge(&outcomes)) {
                let route = pass.watch.route;
                let gate = pass.gate.as_deref_mut();
                // Boxed, like the scouts' round: few requests are judged.
                let judged = Box::pin(side::judge(state, caller, judge, c.question(), a, &model, gate, route));
                if let Some(o) = judged.await {
                    outcomes.push(o);
                }
            }
            Some(c.conclude(&state.router, &model, outcomes, true))
        }
    };
    attempt.checks.clone_from(&checked);
    if !pass.cascade.as_deref().is_some_and(Cascade::failed_now) {
        pass.answers(&mut attempt);
    }
    attempt.read_facts(&bytes, client);
    let (usage, estimate) = match usage {
        Some(u) => (u, None),
        None => {
            // The request is answered: its body moves to the tokenizer's pool (and is
            // parsed there if it never was). A cascade may still escalate it: a copy then.
            let request = match pass.cascade.is_some() {
                true => crate::canonical::RequestBody::from_map(req.body().clone()),
                false => req.take_body(),
            };
            let counting = Counting { request: Some(request), answer: Answer::Body(bytes.clone()) };
            let (usage, how) = state.estimator.usage(counting).await;
            (usage, Some(how))
        }
    };
    let (settled, record) = attempt.settle(usage, estimate, status.as_u16(), None);
    if let Some(r) = record {
        r.send().await;
    }
    // A complete answer that stands (no failed check escalates it) is kept; a stream the
    // upstream would not stream is not (its bytes are not the stream the key is for).
    if let Some(k) = pass.keep {
        let stands = !pass.cascade.as_deref().is_some_and(Cascade::failed_now);
        if status == axum::http::StatusCode::OK && stands && !req.stream {
            cached::Fresh::new(state, k, target).store(bytes.clone(), false, client, &settled);
        }
    }
    let kept = pass.shadowed.then(|| bytes.clone());
    let mut out = json_response(status, bytes, answer_headers(pass.gate.as_deref(), Content::Json, client));
    provenance(&mut out, target);
    money_headers(&mut out, &settled);
    route_reason(&mut out, reason.as_deref());
    if let Some(checked) = &checked {
        cascade::checks_header(&mut out, checked);
    }
    if let Some(body) = kept {
        let model = format!("{}/{}", target.provider.id, target.upstream_model);
        out.extensions_mut().insert(Served { model, body });
    }
    Ok(out)
}

/// Serve one embeddings request: the model it names, one attempt (embeddings are not
/// routed), metered, with the same provenance and money headers as chat.
pub async fn embeddings(state: &SharedState, caller: &Caller, mut req: EmbeddingsRequest) -> Response {
    let t = &state.telemetry;
    let mut watch = t.begin(caller.arrived, "embeddings", &req.model, None);
    // As in `chat`: the exchange is this block, its value the answer.
    let resp = 'answer: {
        let target = match state.providers.resolve(&req.model) {
            Ok(t) => t,
            Err(e) => break 'answer e.render(Dialect::OpenAi),
        };
        let price = match state.meter.price(&target.provider.id, target.provider.vendor, &target.upstream_model) {
            Ok(p) => p,
            Err(e) => break 'answer e.render(Dialect::OpenAi),
        };
        // A virtual key's limits: the input's estimated tokens at the input price (embeddings
        // have no output) are reserved, and settled at the metered cost.
        let mut gate = Gate::new(state, caller);
        let mut held = None;
        if let Some(g) = &mut gate {
            let tokens = req.body.get("input").map_or(0, |v| estimate::heuristic(v.to_string().as_bytes()));
            let worst = crate::route::plan::cost_of(crate::route::plan::worst_case_pico(
                state.meter.model(price),
                tokens,
                Some(0),
            ))
            .0;
            match g.reserve(worst, tokens).await {
                Ok(mut h) => {
                    h.lease = g.lease();
                    held = Some(h);
                }
                Err(Denied::Error(e)) => break 'answer limits::unavailable(e, Dialect::OpenAi),
                Err(Denied::Refused(r)) => break 'answer limits::refusal_response(&r, Dialect::OpenAi, tokens),
            }
        }
        let upstream_body = wire::upstream_embeddings_body(&mut req, &target.upstream_model);
        let mut attempt =
            Attempt::start(state, caller.clone(), &target, false, 1, None, Chosen::Explicit(price), &mut watch);
        attempt.held = held;
        let read = match target.provider.post_json(Endpoint::Embeddings, upstream_body).await {
            Ok(r) => {
                attempt.ttfb = Some(attempt.started.elapsed());
                let read = read_upstream_body(&target, r).await;
                attempt.waited(&mut watch);
                read
            }
            Err(e) => {
                attempt.waited(&mut watch);
                Err(e)
            }
        };
        // Its one attempt answers the request, whatever the outcome.
        watch.hand_over(&mut attempt.ending);
        let (status, bytes) = match read {
            Ok(x) => x,
            Err(e) => break 'answer error_response(attempt.fail(e).await, &target, Dialect::OpenAi),
        };
        let usage = match wire::response_usage(&bytes) {
            Ok(u) => u,
            Err(wire::NotJson) => {
                break 'answer error_response(attempt.fail(not_json(&target)).await, &target, Dialect::OpenAi)
            }
        };
        if let Some(e) = usage.is_none().then(|| wire::reported_error(&bytes)).flatten() {
            let e = Error { message: format!("provider {}: {}", target.provider.id, e.message), ..e };
            break 'answer error_response(attempt.fail(e).await, &target, Dialect::OpenAi);
        }
        let (usage, estimate) = match usage {
            Some(u) => (u, None),
            None => {
                let input = std::sync::Arc::new(req.body.remove("input").unwrap_or_default());
                let counted = input.clone();
                let heuristic = || estimate::heuristic(input.to_string().as_bytes());
                let (tokens, how) = state
                    .estimator
                    .count(bytes.len(), move || estimate::embedding_input_tokens(&counted), heuristic)
                    .await;
                (Usage { input_uncached: tokens, ..Usage::default() }, Some(how))
            }
        };
        let (settled, record) = attempt.settle(usage, estimate, status.as_u16(), None);
        if let Some(r) = record {
            r.send().await;
        }
        let mut out = json_response(status, bytes, answer_headers(gate.as_ref(), Content::Json, Dialect::OpenAi));
        provenance(&mut out, &target);
        money_headers(&mut out, &settled);
        out
    };
    t.answered(watch, &resp, || caller.who());
    resp
}
