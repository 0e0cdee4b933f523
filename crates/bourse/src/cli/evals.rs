//! `bourse evals import FILE.csv` and `bourse evals list`: quality evidence per route in, and
//! out as a table. `bourse evals run`'s terminal side: its cost estimate, progress bar and
//! results ([`estimate_table`], [`progress_line`], [`results_table`], [`results_json`]); the
//! run itself is [`crate::evals`].
//!
//! The import file is CSV with a header row naming the columns `route,model,score,n,source`
//! (any order, no others):
//!
//! ```text
//! route,model,score,n,source
//! tax,deepseek/deepseek-chat,0.91,400,"internal tax set, 2026-11"
//! tax,openai/gpt-4o,0.95,400,"internal tax set, 2026-11"
//! ```
//!
//! - `route`: a route of the config (`[routes.X]`, or `auto`);
//! - `model`: `provider/model` as the catalog names it (it need not be routable: a relative
//!   floor's reference may be a model no provider here serves);
//! - `score`: the share of samples that passed, in [0, 1];
//! - `n`: the number of samples, a whole number ≥ 1;
//! - `source`: free text naming where the score comes from (shown with the evidence).
//!
//! A row replaces the stored one with the same route, model and source; the file is checked
//! whole first and stored in one transaction, so a bad row stores nothing.

use crate::catalog::Catalog;
use crate::evals::{Estimate, Progress, Score};
use crate::ledger::EvidenceRow;
use crate::meter::Cost;
use crate::route::evidence::{share, Quality};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

const COLUMNS: [&str; 5] = ["route", "model", "score", "n", "source"];

/// Reads an import file into rows, checking every one against the config's routes and the
/// catalog; the error names the line and the problem.
pub fn parse_import(
    text: &str,
    routes: &BTreeSet<String>,
    catalog: &Catalog,
    now_ms: i64,
) -> Result<Vec<EvidenceRow>, String> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| format!("cannot read the header row: {e}"))?.clone();
    let mut at = [usize::MAX; 5];
    for (i, h) in headers.iter().enumerate() {
        match COLUMNS.iter().position(|c| c.eq_ignore_ascii_case(h)) {
            Some(c) if at[c] == usize::MAX => at[c] = i,
            Some(_) => return Err(format!("the header names column \"{h}\" twice")),
            None => return Err(format!("unknown column \"{h}\": the columns are {}", COLUMNS.join(","))),
        }
    }
    if let Some(c) = at.iter().position(|&i| i == usize::MAX) {
        return Err(format!("the header has no \"{}\" column: the columns are {}", COLUMNS[c], COLUMNS.join(",")));
    }
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    for (i, record) in reader.records().enumerate() {
        // Line numbers as an editor shows them: the header is line 1.
        let line = i + 2;
        let record = record.map_err(|e| format!("line {line}: {e}"))?;
        let field = |c: usize| record.get(at[c]).unwrap_or("");
        let (route, model, score, n, source) = (field(0), field(1), field(2), field(3), field(4));
        if !routes.contains(route) {
            let known: Vec<&str> = routes.iter().map(String::as_str).collect();
            return Err(format!("line {line}: unknown route \"{route}\" (configured: {})", known.join(", ")));
        }
        if catalog.get(model).is_none() {
            return Err(format!("line {line}: model \"{model}\" is not in the catalog (write it as provider/model)"));
        }
        let score: f64 = match score.parse() {
            Ok(s) if (0.0..=1.0).contains(&s) => s,
            _ => return Err(format!("line {line}: score \"{score}\" is not a share in [0, 1]")),
        };
        let n: u64 = match n.parse() {
            Ok(n) if n >= 1 => n,
            _ => return Err(format!("line {line}: n \"{n}\" is not a whole number of samples (at least 1)")),
        };
        if source.is_empty() {
            return Err(format!("line {line}: source is empty (name where the score comes from)"));
        }
        if !seen.insert((route.to_string(), model.to_string(), source.to_string())) {
            return Err(format!("line {line}: route {route}, model {model} and source \"{source}\" are given twice"));
        }
        rows.push(EvidenceRow {
            route: route.into(),
            model: model.into(),
            source: source.into(),
            score,
            n,
            updated_ms: now_ms,
        });
    }
    if rows.is_empty() {
        return Err("the file has no rows after its header".into());
    }
    Ok(rows)
}

/// Stored evidence as a table per route: each model's pooled score, its lower bound and
/// sample count, then its sources. `route`: only that one.
pub fn table(rows: &[EvidenceRow], route: Option<&str>) -> String {
    let mut by_route: BTreeMap<&str, BTreeMap<&str, Vec<&EvidenceRow>>> = BTreeMap::new();
    for r in rows.iter().filter(|r| route.is_none_or(|x| x == r.route)) {
        by_route.entry(&r.route).or_default().entry(&r.model).or_default().push(r);
    }
    if by_route.is_empty() {
        return match route {
            Some(r) => format!("no evidence for route {r}\n"),
            None => "no evidence stored (bourse evals import FILE.csv adds some)\n".into(),
        };
    }
    let mut out = String::new();
    for (route, models) in by_route {
        let width = models.keys().map(|m| m.len()).max().unwrap_or(5).max(5);
        let _ = writeln!(out, "route {route}");
        let _ = writeln!(out, "  {:<width$}  {:>6}  {:>6}  {:>7}  sources", "model", "score", "lower", "n");
        for (model, rs) in models {
            let passes: f64 = rs.iter().map(|r| r.score * r.n as f64).sum();
            let n: u64 = rs.iter().map(|r| r.n).sum();
            let Some(q) = Quality::of(passes, n) else { continue };
            let sources: Vec<String> = rs.iter().map(|r| format!("{} ({:.3}, n={})", r.source, r.score, r.n)).collect();
            let _ = writeln!(
                out,
                "  {model:<width$}  {:>6}  {:>6}  {:>7}  {}",
                share(q.mean_ppm),
                share(q.lower_ppm),
                q.n,
                sources.join("; ")
            );
        }
        out.push('\n');
    }
    out
}

/// What a run is about, for the headings.
#[derive(Debug, Clone, Copy)]
pub struct RunFacts<'a> {
    pub route: &'a str,
    /// The dataset file as given.
    pub dataset: &'a str,
    pub items: usize,
    /// `text 30, regex 5, schema 5`.
    pub kinds: &'a str,
    /// The evidence source (`evals:<stem>`).
    pub source: &'a str,
}

/// The cost estimate shown before anything is sent: per model, the prompt tokens, expected
/// output tokens, expected and worst-case cost, then the totals.
pub fn estimate_table(f: &RunFacts<'_>, estimates: &[Estimate], concurrency: usize) -> String {
    let calls = f.items * estimates.len();
    let mut out = format!(
        "bourse evals run: {} items ({}) from {} on route {}, {} models: {calls} requests, {concurrency} at a time

",
        f.items,
        f.kinds,
        f.dataset,
        f.route,
        estimates.len()
    );
    let width = estimates.iter().map(|e| e.model.len()).max().unwrap_or(5).max(5);
    let _ = writeln!(
        out,
        "  {:<width$}  {:>13}  {:>13}  {:>14}  {:>14}",
        "model", "prompt tokens", "output (exp.)", "expected $", "worst case $"
    );
    for e in estimates {
        let _ = writeln!(
            out,
            "  {:<width$}  {:>13}  {:>13}  {:>14}  {:>14}",
            e.model,
            e.prompt_tokens,
            e.expected_output,
            e.expected.usd(),
            e.worst.usd()
        );
    }
    let (expected, worst) = crate::evals::estimate_total(estimates);
    let _ = writeln!(out, "  {:<width$}  {:>13}  {:>13}  {:>14}  {:>14}", "total", "", "", expected.usd(), worst.usd());
    out.push_str(
        "\n  catalog prices; prompt tokens estimated as the router does; expected output: the route's\n  \
         expected_output, capped by max_tokens; worst case: max_tokens, else the model's maximum output\n\n",
    );
    out
}

/// One frame of the progress bar (`width` cells), without the carriage return.
pub fn progress_line(p: &Progress, elapsed: Duration, width: usize) -> String {
    let done = p.done.min(p.total);
    let filled = (done * width).checked_div(p.total).unwrap_or(width);
    let errors = if p.errors > 0 { format!("  {} errors", p.errors) } else { String::new() };
    format!(
        "evals [{}{}] {done:>w$}/{}  ${}  {:.1}s{errors}",
        "#".repeat(filled),
        "-".repeat(width - filled),
        p.total,
        p.cost.usd(),
        elapsed.as_secs_f64(),
        w = p.total.to_string().len(),
    )
}

/// The run's last progress word: the full bar on a terminal, else one plain line.
pub fn progress_end(p: &Progress, elapsed: Duration, terminal: bool) -> String {
    if terminal {
        return format!("\r{}\n", progress_line(p, elapsed, 30));
    }
    format!("evals: {} requests in {:.1}s, {} errors, ${}\n", p.done, elapsed.as_secs_f64(), p.errors, p.cost.usd())
}

fn millis(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| d.as_millis().to_string())
}

fn lower_ppm(s: &Score) -> u32 {
    Quality::of(s.passed as f64, s.n).map_or(0, |q| q.lower_ppm)
}

/// The results: per model its accuracy (passes of items, the share and its Wilson 95% lower
/// bound), metered cost in total and per item, latency, errors, and `*` on the price–quality
/// frontier; then the frontier from cheapest up, an example of each model's errors, and
/// where the evidence went.
pub fn results_table(f: &RunFacts<'_>, scores: &[Score], frontier: &[bool], stored: bool) -> String {
    let mut out = format!("\nroute {} · {} · {} items · source {}\n\n", f.route, f.dataset, f.items, f.source);
    let width = scores.iter().map(|s| s.model.len()).max().unwrap_or(5).max(5);
    let _ = writeln!(
        out,
        "  {:<width$}  {:>9}  {:>5}  {:>5}  {:>14}  {:>14}  {:>7}  {:>7}  {:>6}  frontier",
        "model", "passed", "acc", "lower", "cost $", "per item $", "p50 ms", "p95 ms", "errors"
    );
    for (s, on) in scores.iter().zip(frontier) {
        let q = Quality::of(s.passed as f64, s.n);
        let line = format!(
            "  {:<width$}  {:>9}  {:>5}  {:>5}  {:>14}  {:>14}  {:>7}  {:>7}  {:>6}  {}",
            s.model,
            format!("{}/{}", s.passed, s.n),
            q.map_or("-".into(), |q| share(q.mean_ppm)),
            q.map_or("-".into(), |q| share(q.lower_ppm)),
            s.cost.usd(),
            s.per_item().usd(),
            millis(s.p50),
            millis(s.p95),
            s.errors,
            if *on { "*" } else { "" }
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let mut front: Vec<&Score> = scores.iter().zip(frontier).filter(|(_, on)| **on).map(|(s, _)| s).collect();
    front.sort_by_key(|s| (s.cost, s.passed));
    let path: Vec<String> =
        front.iter().map(|s| format!("{} ({}, ${})", s.model, share(lower_ppm(s)), s.cost.usd())).collect();
    let _ = writeln!(out, "\nfrontier (cheapest first; lower bound, cost): {}", path.join(" < "));
    let estimated: u64 = scores.iter().map(|s| s.estimated).sum();
    if estimated > 0 {
        let _ = writeln!(out, "{estimated} answers reported no usage: their cost is from counted tokens");
    }
    for s in scores {
        if let Some(e) = &s.first_error {
            let _ = writeln!(out, "{}: {} errors, e.g. {e}", s.model, s.errors);
        }
    }
    if stored {
        let _ = writeln!(out, "stored as evidence for route {} (source {})", f.route, f.source);
    } else {
        let _ = writeln!(out, "not stored (--no-store)");
    }
    out
}

fn money(c: Cost) -> serde_json::Value {
    json!({"usd": c.usd(), "nanos": c.0})
}

/// The results as JSON, for machines: the same numbers as the table, money as decimal text
/// and integer nano-USD, latencies in milliseconds.
pub fn results_json(f: &RunFacts<'_>, scores: &[Score], frontier: &[bool], stored: bool) -> serde_json::Value {
    let models: Vec<serde_json::Value> = scores
        .iter()
        .zip(frontier)
        .map(|(s, on)| {
            let q = Quality::of(s.passed as f64, s.n);
            json!({
                "model": s.model,
                "n": s.n,
                "passed": s.passed,
                "accuracy": q.map(|q| share(q.mean_ppm)),
                "lower_bound": q.map(|q| share(q.lower_ppm)),
                "errors": s.errors,
                "usage_estimated": s.estimated,
                "cost": money(s.cost),
                "cost_per_item": money(s.per_item()),
                "latency_p50_ms": s.p50.map(|d| d.as_millis() as u64),
                "latency_p95_ms": s.p95.map(|d| d.as_millis() as u64),
                "frontier": on,
                "failed_items": s.failed_items,
                "first_error": s.first_error,
            })
        })
        .collect();
    json!({
        "route": f.route,
        "dataset": f.dataset,
        "items": f.items,
        "source": f.source,
        "stored": stored,
        "models": models,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (BTreeSet<String>, Catalog) {
        let routes = ["auto", "tax"].into_iter().map(String::from).collect();
        (routes, Catalog::shipped().expect("the shipped catalog loads"))
    }

    #[test]
    fn an_import_reads_every_column_in_any_order_with_quoted_commas() {
        let (routes, catalog) = setup();
        let text = "n,source,route,model,score\n400,\"tax set, 2026-11\",tax,deepseek/deepseek-chat,0.91\n\
                    10, lucky ,tax,openai/gpt-4o,1\n";
        let rows = parse_import(text, &routes, &catalog, 7).unwrap();
        assert_eq!(
            rows[0],
            EvidenceRow {
                route: "tax".into(),
                model: "deepseek/deepseek-chat".into(),
                source: "tax set, 2026-11".into(),
                score: 0.91,
                n: 400,
                updated_ms: 7
            }
        );
        assert_eq!((rows[1].source.as_str(), rows[1].score, rows[1].n), ("lucky", 1.0, 10));
    }

    #[test]
    fn a_bad_import_names_its_line_and_problem() {
        let (routes, catalog) = setup();
        let head = "route,model,score,n,source\n";
        for (body, want) in [
            ("nope,openai/gpt-4o,0.9,10,s\n", "line 2: unknown route \"nope\""),
            ("tax,openai/gpt-9,0.9,10,s\n", "line 2: model \"openai/gpt-9\" is not in the catalog"),
            ("tax,openai/gpt-4o,1.2,10,s\n", "line 2: score \"1.2\" is not a share"),
            ("tax,openai/gpt-4o,0.9,0,s\n", "line 2: n \"0\" is not a whole number"),
            ("tax,openai/gpt-4o,0.9,2.5,s\n", "line 2: n \"2.5\""),
            ("tax,openai/gpt-4o,0.9,10,\n", "line 2: source is empty"),
            ("tax,openai/gpt-4o,0.9,10,s\ntax,openai/gpt-4o,0.8,10,s\n", "line 3: route tax, model openai/gpt-4o"),
            ("tax,openai/gpt-4o,0.9\n", "line 2:"),
            ("", "no rows"),
        ] {
            let e = parse_import(&format!("{head}{body}"), &routes, &catalog, 0).unwrap_err();
            assert!(e.contains(want), "{body:?}: {e}");
        }
        let e = parse_import("route,model,score,n\ntax,openai/gpt-4o,1,1\n", &routes, &catalog, 0).unwrap_err();
        assert!(e.contains("no \"source\" column"), "{e}");
        let e = parse_import("route,model,score,n,source,extra\n", &routes, &catalog, 0).unwrap_err();
        assert!(e.contains("unknown column \"extra\""), "{e}");
    }

    #[test]
    fn the_table_pools_sources_per_model() {
        let row = |model: &str, source: &str, score: f64, n: u64| EvidenceRow {
            route: "tax".into(),
            model: model.into(),
            source: source.into(),
            score,
            n,
            updated_ms: 0,
        };
        let rows = [row("a/x", "import", 0.9, 100), row("a/x", "check:complete", 0.5, 100), row("b/y", "s", 1.0, 10)];
        let t = table(&rows, None);
        assert!(t.contains("route tax"), "{t}");
        let ax = t.lines().find(|l| l.trim_start().starts_with("a/x")).unwrap();
        assert!(
            ax.contains("0.700") && ax.contains("  200  ") && ax.contains("import (0.900, n=100); check:complete"),
            "{ax}"
        );
        let by = t.lines().find(|l| l.trim_start().starts_with("b/y")).unwrap();
        assert!(by.contains("1.000") && by.contains("0.722"), "{by}");
        assert_eq!(table(&rows, Some("other")), "no evidence for route other\n");
    }

    #[test]
    fn a_run_renders_its_estimate_progress_and_results() {
        let facts = RunFacts { route: "tax", dataset: "tax.jsonl", items: 10, kinds: "text 10", source: "evals:tax" };
        let est = [Estimate {
            model: "a/x".into(),
            prompt_tokens: 120,
            expected_output: 5120,
            expected: Cost(1_234),
            worst: Cost(99_000),
        }];
        let t = estimate_table(&facts, &est, 4);
        assert!(
            t.contains("10 items (text 10) from tax.jsonl on route tax, 1 models: 10 requests, 4 at a time"),
            "{t}"
        );
        let total = t.lines().find(|l| l.trim_start().starts_with("total")).unwrap();
        assert!(total.contains("0.000001234") && total.contains("0.000099000"), "{total}");
        let p = Progress { done: 5, total: 10, errors: 1, cost: Cost(1500) };
        let line = progress_line(&p, Duration::from_millis(1500), 10);
        assert_eq!(line, "evals [#####-----]  5/10  $0.000001500  1.5s  1 errors");
        assert_eq!(
            progress_end(&p, Duration::from_secs(2), false),
            "evals: 5 requests in 2.0s, 1 errors, $0.000001500\n"
        );
        let score = |model: &str, passed, cost, errors| Score {
            model: String::from(model),
            n: 10,
            passed,
            errors,
            estimated: 0,
            cost: Cost(cost),
            p50: Some(Duration::from_millis(12)),
            p95: Some(Duration::from_millis(40)),
            first_error: (errors > 0).then(|| "provider b timed out".to_string()),
            failed_items: Vec::new(),
        };
        let scores = [score("a/x", 10, 5000, 0), score("b/y", 7, 1000, 1), score("c/z", 6, 2000, 0)];
        let t = results_table(&facts, &scores, &[true, true, false], true);
        let b = t.lines().find(|l| l.trim_start().starts_with("b/y")).unwrap();
        assert!(b.contains("7/10") && b.contains("0.700") && b.contains("0.396") && b.contains("0.000000100"), "{b}");
        assert!(b.trim_end().ends_with('*'), "{b}");
        assert!(!t.lines().find(|l| l.trim_start().starts_with("c/z")).unwrap().trim_end().ends_with('*'));
        assert!(
            t.contains("frontier (cheapest first; lower bound, cost): b/y (0.396, $0.000001000) < a/x (0.722"),
            "{t}"
        );
        assert!(
            t.contains("b/y: 1 errors, e.g. provider b timed out") && t.contains("stored as evidence for route tax")
        );
        let j = results_json(&facts, &scores, &[true, true, false], false);
        assert_eq!(j["models"][1]["cost"], json!({"usd": "0.000001000", "nanos": 1000}));
        assert_eq!(
            (j["models"][1]["lower_bound"].as_str(), j["models"][2]["frontier"].as_bool()),
            (Some("0.396"), Some(false))
        );
    }
}
