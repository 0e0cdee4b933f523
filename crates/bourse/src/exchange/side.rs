//! Side calls: a judge grading an answer (the `judge` check) and a shadow answering a sampled
//! request again (shadow sampling). Each is a metered upstream attempt with a ledger row of
//! its own, so its cost is in the ledger, but it answers no client: the row is attempt 0, its
//! route reason says what it was for (`judge for cheap/sim-small`, `shadow for <request id> on
//! route <route>`), and it has no counterfactual (the reference model would not have made the call either), so
//! its cost counts against the savings.
//!
//! Neither can fail the request: a judge that errs or gives no verdict says nothing of the
//! answer (no outcome is recorded; the log says why), and a shadow runs after the answer was
//! served. Which requests are sampled is a hash of the request id ([`sampled`]): the same
//! request id is always sampled the same way, with no state kept.

use super::attempt::Attempt;
use super::limits::{Gate, Held};
use super::{answer as client_answer, answer::read_upstream_body, upstream_body};
use crate::canonical::{ChatRequest, Dialect, Part, RequestBody, Usage};
use crate::check::{self, Outcome, Quorum};
use crate::config::JudgeConfig;
use crate::dialect::{anthropic, gemini, openai};
use crate::error::Result;
use crate::meter::estimate::{Answer, Counting};
use crate::meter::Price;
use crate::provider::Endpoint;
use crate::route::Target;
use crate::state::{Caller, SharedState};
use crate::telemetry::metrics::RouteId;
use axum::body::Bytes;

/// Whether a request is in a sampled share (parts per million): FNV-1a of `purpose` and the
/// request id, so the judge's and the shadow's samples are drawn independently.
pub(super) fn sampled(request_id: &str, purpose: &str, share_ppm: u32) -> bool {
    let h = crate::fnv::fnv1a(request_id.as_bytes(), crate::fnv::fnv1a(purpose.as_bytes(), crate::fnv::OFFSET));
    h % 1_000_000 < u64::from(share_ppm)
}

/// The target and catalog price of a model a side call names (checked at start-up).
fn resolve(state: &SharedState, model: &str) -> Result<(Target, Price)> {
    let target = state.providers.resolve(model)?;
    let price = state.meter.price(&target.provider.id, target.provider.vendor, &target.upstream_model)?;
    Ok((target, price))
}

/// One side call: posts `body` to `target`, reads the upstream's answer with `read` (what
/// the caller wants of it, and its usage), settles and records the row. `body` is the
/// upstream request, in the target's dialect; an answer without usage is estimated from it.
#[allow(clippy::too_many_arguments)]
async fn call<T>(
    state: &SharedState,
    caller: Caller,
    (target, price): (&Target, Price),
    body: Vec<u8>,
    reason: String,
    route: RouteId,
    held: Option<Held>,
    read: impl FnOnce(Bytes) -> Result<(T, Option<Usage>)>,
) -> Result<T> {
    let mut attempt = Attempt::aside(state, caller, target, price, reason, route);
    attempt.held = held;
    // Kept only for an estimate, which needs the prompt as the upstream got it.
    let prompt: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
    let resp =
        match target.provider.post_json(Endpoint::Chat { model: &target.upstream_model, stream: false }, body).await {
            Ok(r) => r,
            Err(e) => return Err(attempt.fail(e).await),
        };
    attempt.ttfb = Some(attempt.started.elapsed());
    let read_body = read_upstream_body(target, resp).await;
    attempt.waited_for(attempt.started.elapsed());
    let (status, bytes) = match read_body {
        Ok(x) => x,
        Err(e) => return Err(attempt.fail(e).await),
    };
    let (value, usage) = match read(bytes.clone()) {
        Ok(x) => x,
        Err(e) => return Err(attempt.fail(e).await),
    };
    let (usage, estimate) = match usage {
        Some(u) => (u, None),
        None => {
            let counting = Counting { request: Some(RequestBody::from_map(prompt)), answer: Answer::Body(bytes) };
            let (usage, how) = state.estimator.usage(counting).await;
            (usage, Some(how))
        }
    };
    let (_, record) = attempt.settle(usage, estimate, status.as_u16(), None);
    if let Some(r) = record {
        r.send().await;
    }
    Ok(value)
}

/// What the judge said of `answer` (from `judged`, `provider/model`) to `question`, or None
/// when it said nothing usable (an upstream error, no verdict, a budget that cannot take the
/// call): then the answer stands on its other checks. A virtual key's budget pays for the
/// judge like for any attempt of its request: reserved first, settled at the metered cost.
#[allow(clippy::too_many_arguments)]
pub(super) async fn judge(
    state: &SharedState,
    caller: &Caller,
    judge: &JudgeConfig,
    question: &str,
    answer: &check::Answer,
    judged: &str,
    gate: Option<&mut Gate>,
    route: RouteId,
) -> Option<Outcome> {
    let skipped = |why: String| {
        tracing::warn!(judge = %judge.model, judged, request_id = %caller.request_id, "judge check skipped: {why}");
        None
    };
    let (target, price) = match resolve(state, &judge.model) {
        Ok(x) => x,
        Err(e) => return skipped(e.message),
    };
    let conv = check::judge_conversation(&judge.rubric, question, answer);
    let model = target.upstream_model.as_str();
    let body = match target.provider.dialect {
        Dialect::OpenAi => openai::render_request(&conv, model, false),
        Dialect::Anthropic => anthropic::render_request(&conv, model, false),
        Dialect::Gemini => gemini::render_request(&conv),
    };
    let mut held = None;
    if let Some(g) = gate {
        // The prompt's bytes over four (what the planner estimates for text), and the
        // judge's longest answer.
        let prompt = body.len() as u64 / 4 + 1;
        let worst =
            crate::route::plan::cost_of(crate::route::plan::worst_case_pico(state.meter.model(price), prompt, None)).0;
        match g.reserve(worst, prompt + super::limits::DEFAULT_TOKENS_RESERVED).await {
            Ok(h) => held = Some(h),
            Err(_) => return skipped("the key's budget or rate limits cannot take the judge's call".into()),
        }
    }
    let dialect = target.provider.dialect;
    let read = |bytes: Bytes| {
        let reply = match dialect {
            Dialect::OpenAi => openai::parse_reply(&bytes),
            Dialect::Anthropic => anthropic::parse_reply(&bytes, false),
            Dialect::Gemini => gemini::parse_reply(&bytes),
        }?;
        let text: String = (reply.parts.iter())
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.text.as_str()),
                _ => None,
            })
            .collect();
        Ok((text, reply.usage))
    };
    let reason = format!("judge for {judged}");
    match call(state, caller.clone(), (&target, price), body, reason, route, held, read).await {
        Ok(text) => match check::judge_outcome(&text) {
            Ok(outcome) => Some(outcome),
            Err(e) => skipped(e.0),
        },
        Err(e) => skipped(e.message),
    }
}

/// What a shadow needs once the request is served.
pub(super) struct Shadow {
    pub(super) route: String,
    /// `provider/model` of the reference.
    pub(super) model: String,
    /// The request as the client sent it.
    pub(super) req: ChatRequest,
    /// `provider/model` that served the answer, and the answer.
    pub(super) served: (String, check::Answer),
}

/// Sends a served request to its route's shadow model on a task of its own (the client does
/// not wait for it; a graceful stop does). The two answers are compared by the route's
/// `agree` spec, and whether they agreed is counted as evidence for the served model on the
/// route under the check name `shadow` (source `check:shadow`). The shadow's call is
/// booked without the request's key: it is the gateway's sampling, not the caller's spend,
/// so no key's budget pays for it and a report tells it apart by its route reason,
/// `shadow for <request id> on route <route>`.
pub(super) fn spawn(state: &SharedState, caller: &Caller, route: RouteId, shadow: Shadow) {
    let state = state.clone();
    let caller = Caller { key_id: None, key: None, arrived: None, request_id: caller.request_id.clone() };
    let settling = state.shutdown.settling.clone();
    settling.spawn(async move {
        if let Err(e) = run(&state, caller, route, shadow).await {
            tracing::warn!("shadow call failed: {}", e.message);
        }
    });
}

async fn run(state: &SharedState, caller: Caller, route: RouteId, shadow: Shadow) -> Result<()> {
    let Shadow { route: route_name, model, mut req, served: (served_model, served) } = shadow;
    let (target, price) = resolve(state, &model)?;
    let client = req.dialect;
    let (body, json_tool) = upstream_body(&mut req, &target)?;
    let reason = format!("shadow for {} on route {route_name}", caller.request_id);
    let read = |bytes: Bytes| client_answer(&req, &target, bytes, json_tool);
    let bytes = call(state, caller, (&target, price), body, reason, route, None, read).await?;
    let Some(config) = state.router.route(&route_name) else { return Ok(()) };
    let theirs = check::Answer::from_body(&bytes, client).ok();
    let agreement = check::agree([Some(&served), theirs.as_ref()], &config.agree.spec, Quorum::All);
    state.router.evidence.record(&route_name, &served_model, "shadow", agreement.reached());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_samples_about_that_share_and_the_ends_are_exact() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("req-{i}")).collect();
        let count = |purpose: &str, ppm: u32| ids.iter().filter(|id| sampled(id, purpose, ppm)).count();
        assert_eq!(count("shadow", 0), 0);
        assert_eq!(count("shadow", 1_000_000), ids.len());
        let five = count("shadow", 50_000);
        assert!((800..1200).contains(&five), "5% of 20,000 drew {five}");
        // The same id is drawn the same way every time; the judge's draw is another one.
        let both = ids.iter().filter(|id| sampled(id, "shadow", 500_000) && sampled(id, "judge", 500_000)).count();
        assert!((4_500..5_500).contains(&both), "independent halves overlap on {both}");
        assert!(ids.iter().all(|id| sampled(id, "judge", 300_000) == sampled(id, "judge", 300_000)));
    }
}
