//! Quotes: the ranked feasible candidates with minimum, expected and maximum cost, and
//! every excluded model with its reason — the planner's answer without calling any
//! upstream (`POST /v1/bourse/quote`, `bourse quote`; the terminal table is
//! [`crate::cli::quote`]).

use super::evidence::share;
use super::plan::cost_of;
use super::{Routed, Router};
use serde_json::{json, Value};

impl Router {
    pub fn quote_json(&self, r: &Routed) -> Value {
        let table = self.evidence.snapshot();
        let route_evidence = table.route(&r.route);
        // What a candidate's quality rests on: the route's evidence (pooled, with each source),
        // else its catalog score.
        let evidence_json = |key: &str, q: Option<super::evidence::Quality>| -> Value {
            let Some(q) = q else { return Value::Null };
            let sources: Vec<Value> = route_evidence
                .and_then(|t| t.sources.get(key))
                .into_iter()
                .flatten()
                .map(|(source, score, n)| json!({"source": source, "score": score, "n": n}))
                .collect();
            json!({
                "score": share(q.mean_ppm),
                "lower_bound": share(q.lower_ppm),
                "n": q.n,
                "sources": sources,
            })
        };
        let candidates: Vec<Value> = r
            .plan
            .candidates
            .iter()
            .enumerate()
            .map(|(rank, c)| {
                let e = &self.entries[c.entry];
                json!({
                    "rank": rank + 1,
                    "model": &*e.key,
                    "quality": e.model.quality,
                    "quality_basis": match (c.evidence, e.model.quality) {
                        (Some(_), _) => "evidence",
                        (None, Some(_)) => "catalog",
                        (None, None) => "unrated",
                    },
                    "evidence": evidence_json(&e.key, c.evidence),
                    "origin": e.model.origin,
                    "hosting": e.model.hosting.as_deref().or(e.provider.hosting),
                    "min_cost_usd": cost_of(c.min_pico).usd(),
                    "expected_cost_usd": cost_of(c.expected_pico).usd(),
                    "max_cost_usd": cost_of(c.max_pico).usd(),
                    "healthy": c.healthy,
                })
            })
            .collect();
        let excluded: Vec<Value> = r
            .plan
            .excluded
            .iter()
            .map(
                |(i, x)| json!({"model": &*self.entries[*i].key, "constraint": x.constraint(), "reason": x.describe()}),
            )
            .collect();
        json!({
            "route": r.route,
            "min_quality": r.min_quality,
            "min_score": self.route(&r.route).and_then(|c| c.min_score_ppm).map(share),
            "relative_floor": self.route(&r.route).and_then(|c| c.relative.as_ref()).map(|rel| {
                json!({"share": share(rel.ppm), "reference": rel.reference})
            }),
            "policy": r.policy,
            "max_cost_usd": r.max_cost.map(|c| c.usd()),
            "prompt_tokens_estimate": r.prompt_tokens,
            "candidates": candidates,
            "excluded": excluded,
        })
    }
}
