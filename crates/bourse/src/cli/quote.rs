//! `bourse quote` as a table: the route's ranked candidates with their catalog quality, their
//! evidence on the route (observed score, its lower bound and sample count; `- (catalog)`
//! where there is none and the catalog score speaks for the model), their minimum, expected
//! and maximum cost, then every excluded model with its reason.

use crate::route::evidence::share;
use crate::route::plan::cost_of;
use crate::route::{Routed, Router};
use std::fmt::Write as _;

pub fn table(router: &Router, r: &Routed) -> String {
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
    let width = router.entries.iter().map(|e| e.key.len()).max().unwrap_or(10).max(10);
    let _ = writeln!(
        out,
        "{:>4}  {:<width$}  {:>7}  {:<22}  {:>13}  {:>13}  {:>13}",
        "rank", "model", "quality", "evidence (lower, n)", "min $", "expected $", "max $"
    );
    for (rank, c) in r.plan.candidates.iter().enumerate() {
        let e = &router.entries[c.entry];
        let _ = writeln!(
            out,
            "{:>4}  {:<width$}  {:>7}  {:<22}  {:>13}  {:>13}  {:>13}{}",
            rank + 1,
            &*e.key,
            e.model.quality.map(|q| q.to_string()).unwrap_or_else(|| "-".into()),
            c.evidence.map_or_else(
                || "- (catalog)".to_string(),
                |q| format!("{} ({}, n={})", share(q.mean_ppm), share(q.lower_ppm), q.n)
            ),
            cost_of(c.min_pico).usd(),
            cost_of(c.expected_pico).usd(),
            cost_of(c.max_pico).usd(),
            if c.healthy { "" } else { "  (circuit open)" }
        );
    }
    if !r.plan.excluded.is_empty() {
        let _ = writeln!(out, "\nexcluded:");
        for (i, x) in &r.plan.excluded {
            let _ = writeln!(out, "  {:<width$}  {}", &*router.entries[*i].key, x.describe());
        }
    }
    out
}
