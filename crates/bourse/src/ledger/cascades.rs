//! The cascade report: per route, how often a checked answer escalated, and what the cascade
//! cost against sending every request straight to the model the escalations ended at.
//!
//! It reads the checked attempts of a window ([`Ledger::checked`](super::Ledger::checked):
//! rows with a `checks` column, through a partial index). A request is one request id; it
//! **escalated** when one of its attempts was an escalation, as that attempt's route reason
//! says (`attempt N (escalated: json_schema failed on …)`: the report counts what the route
//! reasons tell, and an `agree` scout that disagreed is not an escalation by itself); it
//! **passed** when its last checked attempt passed every check. Side calls (attempt 0) are
//! not attempts of the request: a judge's cost counts in its request's cascade cost (and
//! `judged`), a shadow's as the route's shadow spend (its route reason names the route). The **final model** of a
//! route is the one that most often served the last attempt of its escalated requests (of
//! all its requests, when none escalated). The counterfactual prices each request's first
//! attempt's usage (its prompt and answer sizes) at the final model's prices: the caller
//! passes the pricing, so this module needs no catalog.

use super::aggregate::route_of;
use super::LedgerEntry;
use crate::canonical::Usage;
use serde::Serialize;
use std::collections::BTreeMap;

/// One route's cascades in a window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CascadeRow {
    pub route: String,
    /// Requests with at least one checked attempt.
    pub requests: u64,
    pub escalated: u64,
    /// Requests whose last checked attempt passed every check.
    pub passed: u64,
    /// Checked attempts (every one metered).
    pub attempts: u64,
    /// What the checked attempts and their judges cost, nano-USD.
    pub cost_nanos: i64,
    /// Judge calls (each also in `cost_nanos`).
    pub judged: u64,
    /// Shadow calls on the route, and what they cost (not in `cost_nanos`: spend of the
    /// gateway's sampling, against the savings).
    pub shadowed: u64,
    pub shadow_cost_nanos: i64,
    /// `provider/model` the escalations ended at.
    pub final_model: Option<String>,
    /// The same requests sent straight to the final model, nano-USD (None: it has no price).
    pub final_model_cost_nanos: Option<i64>,
}

/// Summarizes `rows` (checked attempts, ordered by request and attempt) per route; `price`
/// prices a usage at a `provider/model` (None when the catalog has no price for it).
pub fn cascades(rows: &[LedgerEntry], price: impl Fn(&str, &Usage) -> Option<i64>) -> Vec<CascadeRow> {
    struct Request<'a> {
        route: &'a str,
        first: &'a LedgerEntry,
        last: &'a LedgerEntry,
        attempts: u64,
        cost: i64,
        escalated: bool,
    }
    // Side calls: judges by request, shadows by route.
    let mut judges: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    let mut shadows: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.attempt == 0) {
        let reason = r.route_reason.as_deref().unwrap_or("");
        let slot = match reason.split_once(" on route ") {
            Some((head, route)) if head.starts_with("shadow for ") => shadows.entry(route).or_default(),
            _ if reason.starts_with("judge for ") => judges.entry(&r.request_id).or_default(),
            _ => continue,
        };
        slot.0 += 1;
        slot.1 = slot.1.saturating_add(r.cost_nanos);
    }
    let mut requests: Vec<Request<'_>> = Vec::new();
    for r in rows.iter().filter(|r| r.attempt > 0) {
        match requests.last_mut().filter(|q| q.first.request_id == r.request_id) {
            Some(q) => {
                q.escalated |= r.route_reason.as_deref().is_some_and(|x| x.contains(" (escalated: "));
                q.last = r;
                q.attempts += 1;
                q.cost = q.cost.saturating_add(r.cost_nanos);
            }
            None => requests.push(Request {
                route: route_of(r.route_reason.as_deref()),
                first: r,
                last: r,
                attempts: 1,
                cost: r.cost_nanos,
                escalated: false,
            }),
        }
    }
    let mut by_route: BTreeMap<&str, Vec<&Request<'_>>> = BTreeMap::new();
    for q in &requests {
        by_route.entry(q.route).or_default().push(q);
    }
    for route in shadows.keys() {
        by_route.entry(route).or_default();
    }
    by_route
        .into_iter()
        .map(|(route, qs)| {
            let model = |r: &LedgerEntry| format!("{}/{}", r.provider, r.model);
            // The final model: most frequent last model of the escalated requests (of all, if
            // none escalated); ties go to the name that sorts first.
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            let escalated: Vec<&&Request<'_>> = qs.iter().filter(|q| q.escalated).collect();
            let pool: Vec<&&Request<'_>> = if escalated.is_empty() { qs.iter().collect() } else { escalated };
            for q in &pool {
                *counts.entry(model(q.last)).or_default() += 1;
            }
            let final_model = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(m, _)| m.clone());
            let final_model_cost_nanos = final_model.as_deref().and_then(|m| {
                qs.iter().try_fold(0i64, |sum, q| price(m, &q.first.usage).map(|c| sum.saturating_add(c)))
            });
            let judged: Vec<(u64, i64)> =
                qs.iter().filter_map(|q| judges.get(q.first.request_id.as_str()).copied()).collect();
            let (shadowed, shadow_cost_nanos) = shadows.get(route).copied().unwrap_or_default();
            CascadeRow {
                route: route.to_string(),
                requests: qs.len() as u64,
                escalated: qs.iter().filter(|q| q.escalated).count() as u64,
                passed: qs.iter().filter(|q| !failed(q.last)).count() as u64,
                attempts: qs.iter().map(|q| q.attempts).sum(),
                cost_nanos: qs
                    .iter()
                    .map(|q| q.cost)
                    .chain(judged.iter().map(|j| j.1))
                    .fold(0i64, |s, c| s.saturating_add(c)),
                judged: judged.iter().map(|j| j.0).sum(),
                shadowed,
                shadow_cost_nanos,
                final_model,
                final_model_cost_nanos,
            }
        })
        .collect()
}

/// Whether an attempt failed one of its checks.
fn failed(r: &LedgerEntry) -> bool {
    r.checks.as_deref().is_some_and(|c| c.split(',').any(|o| o.ends_with(":fail")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(request: &str, attempt: u32, model: &str, checks: &str, cost: i64, input: u64) -> LedgerEntry {
        let (provider, model) = model.split_once('/').unwrap();
        let why = match attempt {
            1 => String::new(),
            n => format!("; attempt {n} (escalated: a check failed)"),
        };
        LedgerEntry {
            request_id: request.into(),
            attempt,
            ts_ms: 0,
            key_id: None,
            tenant_id: None,
            provider: provider.into(),
            model: model.into(),
            route_reason: Some(format!("route=extract chose {provider}/{model} (expected $0.1); 3 feasible{why}")),
            usage: Usage { input_uncached: input, output: 10, ..Usage::default() },
            cost_nanos: cost,
            reference_cost_nanos: 0,
            catalog_version: "t".into(),
            ttfb_ms: None,
            latency_ms: 1,
            status: 200,
            error_kind: None,
            estimate: None,
            stream: false,
            checks: Some(checks.into()),
            needs: 0,
            cache_hit: false,
            cache_saved_nanos: 0,
            energy_uwh: None,
            co2e_ug: None,
        }
    }

    #[test]
    fn escalations_and_the_final_models_counterfactual() {
        let rows = [
            // Escalated once, passed at mid.
            row("a", 1, "cheap/m", "complete:pass,json_schema:fail", 10, 100),
            row("a", 2, "mid/m", "complete:pass,json_schema:pass", 100, 100),
            // Passed at once.
            row("b", 1, "cheap/m", "complete:pass,json_schema:pass", 20, 200),
            // Escalated twice, nothing passed.
            row("c", 1, "cheap/m", "complete:fail", 5, 50),
            row("c", 2, "mid/m", "complete:fail", 50, 50),
            row("c", 3, "top/m", "complete:fail", 500, 50),
        ];
        // The final model (mid: the last model of 1 of 2 escalated requests, tied with top,
        // and "mid/m" sorts first) at 1 nano per input token.
        let price = |m: &str, u: &Usage| (m == "mid/m").then_some(u.input_uncached as i64);
        let got = cascades(&rows, price);
        assert_eq!(
            got,
            [CascadeRow {
                route: "extract".into(),
                requests: 3,
                escalated: 2,
                passed: 2,
                attempts: 6,
                cost_nanos: 685,
                final_model: Some("mid/m".into()),
                final_model_cost_nanos: Some(350),
                ..CascadeRow::default()
            }]
        );
        // A final model without a price: no counterfactual rather than a wrong one.
        assert_eq!(cascades(&rows, |_, _| None)[0].final_model_cost_nanos, None);
        // Nothing escalated: the model that served them.
        let calm = [row("x", 1, "cheap/m", "complete:pass", 1, 1)];
        assert_eq!(cascades(&calm, |_, _| Some(0))[0].final_model.as_deref(), Some("cheap/m"));
        assert!(cascades(&[], |_, _| Some(0)).is_empty());
        // Scouts that disagree are not escalations by themselves; a side call (attempt 0) is
        // not an attempt of the request.
        let mut scout = row("s", 2, "mid/m", "complete:pass,agree:pass", 3, 1);
        scout.route_reason = Some("route=extract chose mid/m (expected $0.1); 3 feasible; agree scout 2 of 2".into());
        let mut judge = row("s", 0, "top/m", "complete:pass", 9, 1);
        judge.route_reason = Some("judge for cheap/m".into());
        let mut shadow = row("other-request", 0, "top/m", "", 20, 1);
        shadow.checks = None;
        shadow.route_reason = Some("shadow for other-request on route extract".into());
        let mut elsewhere = shadow.clone();
        elsewhere.route_reason = Some("shadow for x on route plain".into());
        let scouted = [judge, row("s", 1, "cheap/m", "complete:pass,agree:fail", 1, 1), scout, shadow, elsewhere];
        let got = cascades(&scouted, |_, _| Some(0));
        let e = &got[0];
        assert_eq!(
            (
                e.route.as_str(),
                e.requests,
                e.escalated,
                e.attempts,
                e.cost_nanos,
                e.judged,
                e.shadowed,
                e.shadow_cost_nanos
            ),
            ("extract", 1, 0, 2, 13, 1, 1, 20),
            "the judge's 9 in the cascade's cost, the shadow's 20 apart"
        );
        // A route with only shadows has a row of its own.
        assert_eq!((got[1].route.as_str(), got[1].requests, got[1].shadowed), ("plain", 0, 1));
    }
}
