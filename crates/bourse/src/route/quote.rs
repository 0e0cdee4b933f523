//! Quotes: the ranked feasible candidates with minimum, expected and maximum cost, and
//! every excluded model with its reason — the planner's answer without calling any
//! upstream (`POST /v1/bourse/quote`, `bourse quote`).

use super::plan::cost_of;
use super::{Routed, Router};
use serde_json::{json, Value};
use std::fmt::Write as _;

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

    pub fn quote_table(&self, r: &Routed) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "route {} · min_quality {} · policy {} · ~{} prompt tokens · {} feasible, {} excluded\n",
            r.route,
            r.min_quality,
            r.policy,
            r.prompt_tokens,
            r.plan.candidates.len(),
            r.plan.excluded.len()
        );
        let width = self.entries.iter().map(|e| e.key.len()).max().unwrap_or(10).max(10);
        let _ = writeln!(
            out,
            "{:>4}  {:<width$}  {:>7}  {:>13}  {:>13}  {:>13}",
            "rank", "model", "quality", "min $", "expected $", "max $"
        );
        for (rank, c) in r.plan.candidates.iter().enumerate() {
            let e = &self.entries[c.entry];
            let _ = writeln!(
                out,
                "{:>4}  {:<width$}  {:>7}  {:>13}  {:>13}  {:>13}{}",
                rank + 1,
                &*e.key,
                e.model.quality.map(|q| q.to_string()).unwrap_or_else(|| "-".into()),
                cost_of(c.min_pico).usd(),
                cost_of(c.expected_pico).usd(),
                cost_of(c.max_pico).usd(),
                if c.healthy { "" } else { "  (circuit open)" }
            );
        }
        if !r.plan.excluded.is_empty() {
            let _ = writeln!(out, "\nexcluded:");
            for (i, x) in &r.plan.excluded {
                let _ = writeln!(out, "  {:<width$}  {}", &*self.entries[*i].key, x.describe());
            }
        }
        out
    }
}
