//! Cascades: on a route with `cascade = ["complete", "json_schema", …]`, a non-streaming
//! answer must pass every listed check (`crate::check`) before the caller gets it. The
//! cheapest feasible model answers first; when a check fails, the request escalates to the
//! next candidate of **higher quality** (skipping cheaper-but-no-better ones), up to the
//! route's attempt limit. The caller gets the first answer that passes or, when none does,
//! the last one, marked `x-bourse-cascade: failed`.
//!
//! With `agree` listed, the first round is the route's `agree.models` cheapest feasible
//! candidates (scouts), asked in parallel ([`super::scouts`]); the quorum must agree, and the
//! caller gets the cheapest scout that agreed and passed the other checks. When they do not
//! agree, the request escalates past the best scout, and that one answer is checked by the
//! single-answer checks only (there is nothing left to agree with). With `judge` listed, a
//! sampled share of answers that passed everything else is graded by the route's judge
//! ([`super::side::judge`]); a judge that says nothing usable leaves the answer to its other
//! checks.
//!
//! Every attempt is metered, settled and a ledger row with its check outcomes (`checks`);
//! every outcome is also counted as live evidence for the route and model
//! (`route::evidence`, source `check:NAME`). The route reason of an escalated attempt says
//! which check failed on which model.
//!
//! "Higher quality" compares the evidence lower bounds on the route when both models have
//! some, else their catalog scores (unrated counts lowest).
//!
//! Streamed requests are cascaded only on a route with `cascade_streaming = "buffer"`: the
//! exchange then sends every attempt upstream without streaming and replays the answer that
//! stands as the client's stream (`dialect::replay`); the first byte waits for the checks.
//! Elsewhere a stream is served unchecked.

use crate::canonical::{ChatRequest, Dialect};
use crate::check::{self, Agreement, Answer, CheckKind, Expectations, Outcome};
use crate::config::{JudgeConfig, RouteConfig};
use crate::route::plan::Candidate;
use crate::route::Router;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

pub static X_BOURSE_CHECKS: HeaderName = HeaderName::from_static("x-bourse-checks");
pub static X_BOURSE_CASCADE: HeaderName = HeaderName::from_static("x-bourse-cascade");

/// One request's cascade.
pub(super) struct Cascade<'r> {
    route: &'r RouteConfig,
    expectations: Expectations,
    /// The outcomes of the attempt that answered last (None before any answer).
    last: Option<Vec<Outcome>>,
    /// The last answer that failed a check, kept for when no better candidate passes.
    failed: Option<Response>,
    /// The candidate that failed last: the next one must be of higher quality.
    floor: Option<Candidate>,
    /// Why the next attempt escalates (`json_schema failed on cheap/sim-small`).
    because: Option<String>,
    /// Attempts that escalated (counted as each one starts: a last failure leads nowhere).
    escalations: u32,
    /// The scouts' round is still to come (the cascade lists `agree`).
    scouting: bool,
    /// This request is in the judge's sample.
    judged: bool,
}

impl<'r> Cascade<'r> {
    /// The cascade of a request on `route`; None when the route has none, the request
    /// streams, or the request cannot be read as a conversation (it is then served unchecked,
    /// and the log says why).
    pub(super) fn new(route: &'r RouteConfig, req: &ChatRequest, request_id: &str) -> Option<Cascade<'r>> {
        if route.cascade.is_empty() || (req.stream && !route.cascade_streams) {
            return None;
        }
        let expectations = match Expectations::of(req) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(route = %route.name, "cascade: request served unchecked: {}", e.message);
                return None;
            }
        };
        let judged = route.judge.as_ref().is_some_and(|j| super::side::sampled(request_id, "judge", j.share_ppm));
        Some(Cascade {
            route,
            expectations,
            last: None,
            failed: None,
            floor: None,
            because: None,
            escalations: 0,
            scouting: route.cascade.contains(&CheckKind::Agree),
            judged,
        })
    }

    /// Whether `candidate` may answer next: after a failed check, only a candidate of higher
    /// quality than the one that failed.
    pub(super) fn admits(&self, router: &Router, candidate: &Candidate) -> bool {
        self.floor.as_ref().is_none_or(|floor| higher(router, candidate, floor))
    }

    /// How many scouts to gather before anyone answers; None once they have been asked (or
    /// when the cascade does not list `agree`).
    pub(super) fn scouts(&self) -> Option<usize> {
        self.scouting.then_some(self.route.agree.models)
    }

    /// The single-answer checks (`complete`, `json_schema`, `tool_call`) on an answer
    /// (`body`, in the client's dialect), and the answer as the other checks read it (None
    /// when it cannot be read: then it fails every check listed).
    pub(super) fn single(&self, body: &[u8], client: Dialect) -> (Option<Answer>, Vec<Outcome>) {
        match Answer::from_body(body, client) {
            Ok(answer) => {
                let outcomes =
                    self.route.cascade.iter().filter_map(|&k| check::run(k, &answer, &self.expectations)).collect();
                (Some(answer), outcomes)
            }
            // A scout's `agree` outcome comes from the agreement, and a judge is not asked
            // about what cannot be read.
            Err(e) => {
                let outcomes = (self.route.cascade.iter())
                    .filter(|&&k| k != CheckKind::Judge && !(k == CheckKind::Agree && self.scouting))
                    .map(|&check| Outcome { check, passed: false, detail: format!("not an answer: {e}") })
                    .collect();
                (None, outcomes)
            }
        }
    }

    /// The scouts' answers compared under the route's `agree` (each None when that scout
    /// gave no answer). The scouts' round is then over.
    pub(super) fn agreement(&mut self, answers: &[Option<&Answer>]) -> Agreement {
        self.scouting = false;
        let a = &self.route.agree;
        check::agree(answers.iter().copied(), &a.spec, a.quorum)
    }

    /// The judge, when this request is in its sample and the answer passed every check so
    /// far (a judge is not paid to grade an answer that is escalated anyway).
    pub(super) fn judge(&self, outcomes: &[Outcome]) -> Option<&'r JudgeConfig> {
        let judge = self.route.judge.as_ref()?;
        (self.judged && outcomes.iter().all(|o| o.passed)).then_some(judge)
    }

    /// The question the judge sees.
    pub(super) fn question(&self) -> &str {
        &self.expectations.question
    }

    /// An answer's outcomes are final: each counted as evidence for `model` (`provider/model`)
    /// on the route; returned encoded for the ledger row. They are the cascade's latest when
    /// `latest` (the answer that decides whether to escalate).
    pub(super) fn conclude(&mut self, router: &Router, model: &str, outcomes: Vec<Outcome>, latest: bool) -> String {
        for o in &outcomes {
            router.evidence.record(&self.route.name, model, o.check.as_str(), o.passed);
        }
        let encoded = check::encode(&outcomes);
        if latest {
            self.last = Some(outcomes);
        }
        encoded
    }

    /// Whether the answer just checked failed a check.
    pub(super) fn failed_now(&self) -> bool {
        self.last.as_ref().is_some_and(|o| o.iter().any(|o| !o.passed))
    }

    /// The answer of `candidate` (`model`) failed: keep it, and look for a better candidate.
    pub(super) fn escalate(&mut self, resp: Response, candidate: Candidate, model: &str) {
        let failed: Vec<&str> = self.last.iter().flatten().filter(|o| !o.passed).map(|o| o.check.as_str()).collect();
        let because = format!("{} failed on {model}", failed.join(", "));
        self.escalate_because(Some(resp), candidate, because);
    }

    /// Escalate past `floor` because of `because`, keeping `resp` (if any) as the answer of
    /// last resort.
    pub(super) fn escalate_because(&mut self, resp: Option<Response>, floor: Candidate, because: String) {
        self.because = Some(because);
        if resp.is_some() {
            self.failed = resp;
        }
        self.floor = Some(floor);
    }

    /// The route reason of the next attempt, with why it escalates (replacing "fallback"); the
    /// attempt counts as an escalation.
    pub(super) fn explain(&mut self, reason: &mut String) {
        if let Some(because) = self.because.take() {
            self.escalations += 1;
            let why = format!(" (escalated: {because})");
            match reason.rfind(" (fallback)") {
                Some(at) => reason.replace_range(at..at + " (fallback)".len(), &why),
                None => reason.push_str(&why),
            }
        }
    }

    /// The answer that passed, marked with its checks and how many escalations it took.
    pub(super) fn passed(&self, mut resp: Response) -> Response {
        self.mark(&mut resp, "passed");
        resp
    }

    /// No candidate left passed: the last answer that failed, marked so; None when no answer
    /// failed a check (the request ended another way).
    pub(super) fn exhausted(&mut self) -> Option<Response> {
        let mut resp = self.failed.take()?;
        self.mark(&mut resp, "failed");
        Some(resp)
    }

    fn mark(&self, resp: &mut Response, verdict: &str) {
        let h = resp.headers_mut();
        let value = format!("{verdict}; escalations={}", self.escalations);
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(X_BOURSE_CASCADE.clone(), v);
        }
    }
}

/// Whether `a` is of higher quality than `b` on the route: evidence lower bounds when both
/// have some, else catalog scores (unrated lowest).
pub(super) fn higher(router: &Router, a: &Candidate, b: &Candidate) -> bool {
    match (a.evidence, b.evidence) {
        (Some(x), Some(y)) => x.lower_ppm > y.lower_ppm,
        _ => {
            let q = |c: &Candidate| router.entries[c.entry].model.quality.unwrap_or(0);
            q(a) > q(b)
        }
    }
}

/// The checks header of a checked answer (`complete:pass,json_schema:fail`).
pub(super) fn checks_header(resp: &mut Response, encoded: &str) {
    if let Ok(v) = HeaderValue::from_str(encoded) {
        resp.headers_mut().insert(X_BOURSE_CHECKS.clone(), v);
    }
}
