//! The `agree` check's first round: the route's `agree.models` cheapest feasible candidates
//! (scouts) are asked the same request in parallel, and their answers compared
//! ([`crate::check::agree`]).
//!
//! Each scout is an attempt like any other, gathered by the chat loop (the same filters,
//! its own budget reservation and circuit probe): here it gets its own [`Attempt`] (metrics,
//! span, ledger row with its outcomes: the single-answer checks, then `agree:pass|fail`),
//! health is told how it went, and each outcome counts as evidence for its model. Only the
//! upstream calls overlap; everything else runs in order once they are all back, so no
//! shared state is touched by two scouts at once. A request waits for its slowest scout.
//!
//! The answer is the cheapest scout that agreed with the quorum and passed every other
//! check; it takes the request's concurrency lease and last word, as the attempt that
//! answers does. When there is none, the cheapest scout that answered is kept as the answer
//! of last resort and the request escalates past the best of the scouts.

use super::answer::{json_response, money_headers, provenance, read_upstream_body, route_reason, Content};
use super::attempt::{Attempt, Chosen};
use super::cascade::{self, Cascade};
use super::limits::{Gate, Held};
use super::{answer, answer_headers, fails_over, side, upstream_body, Served, ANTHROPIC_BETA};
use crate::canonical::{ChatRequest, RequestBody, Usage};
use crate::check::{Answer, Outcome};
use crate::error::Error;
use crate::meter::estimate::{self, Counting};
use crate::provider::Endpoint;
use crate::route::{Routed, Target};
use crate::state::{Caller, SharedState};
use crate::telemetry::Watch;
use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use std::time::Duration;

/// One scout, as the chat loop chose it.
pub(super) struct Scout {
    pub(super) target: Target,
    /// Its router entry.
    pub(super) entry: usize,
    /// Its place in the plan.
    pub(super) rank: usize,
    /// Its attempt number.
    pub(super) number: u32,
    pub(super) reason: String,
    pub(super) held: Option<Held>,
}

/// How the scouts' round ended.
pub(super) enum Round {
    /// The answer: the scouts agreed (marked passed), or they all failed with an error
    /// every model would give.
    Done(Response),
    /// No scout's answer passed: the cascade escalates past the best scout. Carries the last
    /// error, when some scout failed.
    Escalate(Option<(Error, Target)>),
}

/// A scout that answered.
struct Answered {
    attempt: Attempt,
    status: StatusCode,
    bytes: Bytes,
    usage: Option<Usage>,
    answer: Option<Answer>,
    outcomes: Vec<Outcome>,
}

/// What the round shares with the rest of the request.
pub(super) struct Request<'a, 'r> {
    pub(super) state: &'a SharedState,
    pub(super) caller: &'a Caller,
    pub(super) req: &'a mut ChatRequest,
    pub(super) plan: &'a Routed,
    pub(super) gate: Option<&'a mut Gate>,
    pub(super) cascade: &'a mut Cascade<'r>,
    pub(super) watch: &'a mut Watch,
    /// Keep the served answer for a shadow ([`Served`]).
    pub(super) shadowed: bool,
    /// The client's `anthropic-beta`, relayed to a same-dialect upstream as by any attempt.
    pub(super) anthropic_beta: Option<&'a HeaderValue>,
}

/// Asks `scouts` in parallel and decides on their answers. `wanted` is how many scouts the
/// route asks for: when fewer were feasible, the missing ones count as giving no answer.
pub(super) async fn ask(r: Request<'_, '_>, mut scouts: Vec<Scout>, wanted: usize) -> Round {
    let Request { state, caller, req, plan, mut gate, cascade, watch, shadowed, anthropic_beta } = r;
    let client = req.dialect;
    let (mut bodies, mut json_tools) = (Vec::with_capacity(scouts.len()), Vec::with_capacity(scouts.len()));
    for s in &scouts {
        match upstream_body(req, &s.target) {
            Ok((body, json_tool)) => {
                bodies.push(body);
                json_tools.push(json_tool);
            }
            // The client's request cannot be translated: the same for every model.
            Err(e) => return Round::Done(e.render(client)),
        }
    }
    let needs = req.needs.bits();
    let mut attempts: Vec<Attempt> = (scouts.iter_mut())
        .map(|s| {
            let reason = Some(s.reason.clone());
            let mut a = Attempt::start(
                state,
                caller.clone(),
                &s.target,
                false,
                s.number,
                reason,
                Chosen::Routed(s.entry),
                watch,
            );
            a.held = s.held.take();
            a.needs = needs;
            a
        })
        .collect();
    let calls = scouts.iter().zip(bodies).zip(&attempts).map(|((s, body), a)| {
        let (started, target) = (a.started, &s.target);
        let extra =
            anthropic_beta.filter(|_| client == target.provider.dialect).map(|b| (ANTHROPIC_BETA.clone(), b.clone()));
        async move {
            let endpoint = Endpoint::Chat { model: &target.upstream_model, stream: false };
            match target.provider.post_json_with(endpoint, body, extra).await {
                Err(e) => (None, started.elapsed(), Err(e)),
                Ok(resp) => {
                    let ttfb = started.elapsed();
                    let read = read_upstream_body(target, resp).await;
                    (Some(ttfb), started.elapsed(), read)
                }
            }
        }
    });
    let results = futures_util::future::join_all(calls).await;
    // The request waited as long as its slowest scout.
    if state.telemetry.metrics.is_some() {
        watch.upstream += results.iter().map(|(_, d, _)| *d).max().unwrap_or(Duration::ZERO);
    }
    let mut answered: Vec<Option<Answered>> = Vec::with_capacity(scouts.len());
    let mut last_err: Option<(Error, Target)> = None;
    let mut final_err: Option<(Error, Target)> = None;
    for ((mut attempt, (ttfb, took, read)), (s, json_tool)) in
        attempts.drain(..).zip(results).zip(scouts.iter().zip(&json_tools))
    {
        attempt.ttfb = ttfb;
        attempt.waited_for(took);
        let read = read.and_then(|(status, bytes)| Ok((status, answer(req, &s.target, bytes, *json_tool)?)));
        let (status, (bytes, usage)) = match read {
            Ok(x) => x,
            Err(e) => {
                let e = attempt.fail(e).await;
                let slot = if fails_over(&e) { &mut last_err } else { &mut final_err };
                *slot = Some((e, s.target.clone()));
                answered.push(None);
                continue;
            }
        };
        attempt.healthy();
        attempt.read_facts(&bytes, client);
        let (answer, outcomes) = cascade.single(&bytes, client);
        answered.push(Some(Answered { attempt, status, bytes, usage, answer, outcomes }));
    }
    if answered.iter().all(Option::is_none) {
        if let Some((e, target)) = final_err {
            return Round::Done(super::answer::error_response(e, &target, client));
        }
    }
    let mut answers: Vec<Option<&Answer>> =
        answered.iter().map(|a| a.as_ref().and_then(|a| a.answer.as_ref())).collect();
    answers.resize(wanted.max(answers.len()), None);
    let agreement = cascade.agreement(&answers);
    let model = |s: &Scout| format!("{}/{}", s.target.provider.id, s.target.upstream_model);
    for (i, a) in answered.iter_mut().enumerate() {
        if let Some(a) = a {
            a.outcomes.push(agreement.outcome_for(i));
        }
    }
    let mut winner = answered.iter().position(|a| a.as_ref().is_some_and(|a| a.outcomes.iter().all(|o| o.passed)));
    if let Some(w) = winner {
        let s = &scouts[w];
        let a = answered[w].as_mut().expect("the winner answered");
        if let (Some(answer), Some(judge)) = (&a.answer, cascade.judge(&a.outcomes)) {
            let route = watch.route;
            let g = gate.as_deref_mut();
            if let Some(o) = side::judge(state, caller, judge, cascade.question(), answer, &model(s), g, route).await {
                if !o.passed {
                    winner = None;
                }
                a.outcomes.push(o);
            }
        }
    }
    // The answer to serve: the winner's, else the cheapest answer as the one of last resort.
    let served = winner.or_else(|| answered.iter().position(Option::is_some));
    let mut because: Vec<&'static str> = Vec::new();
    let mut out = None;
    for (i, a) in answered.into_iter().enumerate() {
        let Some(Answered { mut attempt, status, bytes, usage, outcomes, .. }) = a else { continue };
        let s = &scouts[i];
        for o in outcomes.iter().filter(|o| !o.passed) {
            if !because.contains(&o.check.as_str()) {
                because.push(o.check.as_str());
            }
        }
        if served == Some(i) {
            if let (Some(h), Some(g)) = (attempt.held.as_mut(), gate.as_mut()) {
                h.lease = g.lease();
            }
            watch.hand_over(&mut attempt.ending);
        }
        let checks = cascade.conclude(&state.router, &model(s), outcomes, served == Some(i));
        attempt.checks = Some(checks.clone());
        let (usage, estimate) = match usage {
            Some(u) => (u, None),
            None => {
                let request = RequestBody::from_map(req.body().clone());
                let counting = Counting { request: Some(request), answer: estimate::Answer::Body(bytes.clone()) };
                let (usage, how) = state.estimator.usage(counting).await;
                (usage, Some(how))
            }
        };
        let (settled, record) = attempt.settle(usage, estimate, status.as_u16(), None);
        if let Some(r) = record {
            r.send().await;
        }
        if served == Some(i) {
            let headers = answer_headers(gate.as_deref(), Content::Json, client);
            let served_body = shadowed.then(|| Served { model: model(s), body: bytes.clone() });
            let mut resp = json_response(status, bytes, headers);
            provenance(&mut resp, &s.target);
            money_headers(&mut resp, &settled);
            route_reason(&mut resp, Some(&s.reason));
            cascade::checks_header(&mut resp, &checks);
            if let Some(served) = served_body {
                resp.extensions_mut().insert(served);
            }
            out = Some(resp);
        }
    }
    if winner.is_some() {
        if let Some(resp) = out {
            return Round::Done(cascade.passed(resp));
        }
    }
    // Past the best scout: only a candidate of higher quality may answer next.
    let candidates = &plan.plan.candidates;
    let best = (scouts.iter().map(|s| candidates[s.rank])).reduce(|best, c| {
        if cascade::higher(&state.router, &c, &best) {
            c
        } else {
            best
        }
    });
    let names: Vec<String> = scouts.iter().map(model).collect();
    let because = if because.is_empty() { "agree".to_string() } else { because.join(", ") };
    if let Some(best) = best {
        cascade.escalate_because(out, best, format!("{because} failed on scouts {}", names.join(", ")));
    }
    Round::Escalate(last_err.or(final_err))
}
