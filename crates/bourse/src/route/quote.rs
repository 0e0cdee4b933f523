//! Quotes: the ranked feasible candidates with minimum, expected and maximum cost, and
//! every excluded model with its reason — the planner's answer without calling any
//! upstream (`POST /v1/bourse/quote`, `bourse quote`; the terminal table is
//! [`crate::cli::quote`]).

use super::plan::cost_of;
use super::{Routed, Router};
use serde_json::{json, Value};

impl Router {
    pub fn quote_json(&self, r: &Routed) -> Value {
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
            "policy": r.policy,
            "max_cost_usd": r.max_cost.map(|c| c.usd()),
            "prompt_tokens_estimate": r.prompt_tokens,
            "candidates": candidates,
            "excluded": excluded,
        })
    }
}
