//! Cascades: on a route with `cascade = ["complete", "json_schema", …]`, a non-streaming
//! answer must pass every listed check (`crate::check`) before the caller gets it. The
//! cheapest feasible model answers first; when a check fails, the request escalates to the
//! next candidate of **higher quality** (skipping cheaper-but-no-better ones), up to the
//! route's attempt limit. The caller gets the first answer that passes or, when none does,
//! the last one, marked `x-bourse-cascade: failed`.
//!
//! Every attempt is metered, settled and a ledger row with its check outcomes (`checks`);
//! every outcome is also counted as live evidence for the route and model
//! (`route::evidence`, source `check:NAME`). The route reason of an escalated attempt says
//! which check failed on which model.
//!
//! "Higher quality" compares the evidence lower bounds on the route when both models have
//! some, else their catalog scores (unrated counts lowest).
//!
//! Streamed requests are not cascaded: their first byte would have to wait for the whole
//! answer.

use crate::canonical::{ChatRequest, Dialect};
use crate::check::{self, Answer, CheckKind, Expectations, Outcome};
use crate::config::RouteConfig;
use crate::route::plan::Candidate;
use crate::route::Router;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

pub static X_BOURSE_CHECKS: HeaderName = HeaderName::from_static("x-bourse-checks");
pub static X_BOURSE_CASCADE: HeaderName = HeaderName::from_static("x-bourse-cascade");

/// One request's cascade.
pub(super) struct Cascade<'r> {
    route: &'r str,
    checks: &'r [CheckKind],
    expectations: Expectations,
    /// The outcomes of the attempt that answered last (None before any answer).
    last: Option<Vec<Outcome>>,
    /// The last answer that failed a check, kept for when no better candidate passes.
    failed: Option<Response>,
    /// The candidate that failed last: the next one must be of higher quality.
    floor: Option<Candidate>,
    /// Why the next attempt escalates (`json_schema failed on cheap/sim-small`).
    because: Option<String>,
    escalations: u32,
}

impl<'r> Cascade<'r> {
    /// The cascade of a request on `route`; None when the route has none, the request
    /// streams, or the request cannot be read as a conversation (it is then served unchecked,
    /// and the log says why).
    pub(super) fn new(route: &'r RouteConfig, req: &ChatRequest) -> Option<Cascade<'r>> {
        if route.cascade.is_empty() || req.stream {
            return None;
        }
        let expectations = match Expectations::of(req) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(route = %route.name, "cascade: request served unchecked: {}", e.message);
                return None;
            }
        };
        Some(Cascade {
            route: &route.name,
            checks: &route.cascade,
            expectations,
            last: None,
            failed: None,
            floor: None,
            because: None,
            escalations: 0,
        })
    }

    /// Whether `candidate` may answer next: after a failed check, only a candidate of higher
    /// quality than the one that failed.
    pub(super) fn admits(&self, router: &Router, candidate: &Candidate) -> bool {
        let Some(floor) = &self.floor else { return true };
        match (candidate.evidence, floor.evidence) {
            (Some(c), Some(f)) => c.lower_ppm > f.lower_ppm,
            _ => {
                let q = |c: &Candidate| router.entries[c.entry].model.quality.unwrap_or(0);
                q(candidate) > q(floor)
            }
        }
    }

    /// Runs the checks on an answer (`body`, in the client's dialect) from `model`
    /// (`provider/model`), counts each outcome as evidence for it on the route, and returns
    /// them encoded for the ledger row.
    pub(super) fn check(&mut self, router: &Router, body: &[u8], client: Dialect, model: &str) -> String {
        let outcomes: Vec<Outcome> = match Answer::from_body(body, client) {
            Ok(answer) => self.checks.iter().filter_map(|&k| check::run(k, &answer, &self.expectations)).collect(),
            // An answer the checks cannot read passes none of them.
            Err(e) => self
                .checks
                .iter()
                .map(|&check| Outcome { check, passed: false, detail: format!("not an answer: {e}") })
                .collect(),
        };
        for o in &outcomes {
            router.evidence.record(self.route, model, o.check.as_str(), o.passed);
        }
        let encoded = check::encode(&outcomes);
        self.last = Some(outcomes);
        encoded
    }

    /// Whether the answer just checked failed a check.
    pub(super) fn failed_now(&self) -> bool {
        self.last.as_ref().is_some_and(|o| o.iter().any(|o| !o.passed))
    }

    /// The answer of `candidate` (`model`) failed: keep it, and look for a better candidate.
    pub(super) fn escalate(&mut self, resp: Response, candidate: Candidate, model: &str) {
        let failed: Vec<&str> = self.last.iter().flatten().filter(|o| !o.passed).map(|o| o.check.as_str()).collect();
        self.because = Some(format!("{} failed on {model}", failed.join(", ")));
        self.failed = Some(resp);
        self.floor = Some(candidate);
        self.escalations += 1;
    }

    /// The route reason of the next attempt, with why it escalates (replacing "fallback").
    pub(super) fn explain(&mut self, reason: &mut String) {
        if let Some(because) = self.because.take() {
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
        // The last failure led nowhere: it was not an escalation.
        self.escalations -= 1;
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

/// The checks header of a checked answer (`complete:pass,json_schema:fail`).
pub(super) fn checks_header(resp: &mut Response, encoded: &str) {
    if let Ok(v) = HeaderValue::from_str(encoded) {
        resp.headers_mut().insert(X_BOURSE_CHECKS.clone(), v);
    }
}
