//! `bourse evals import FILE.csv` and `bourse evals list`: quality evidence per route in, and
//! out as a table.
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
use crate::ledger::EvidenceRow;
use crate::route::evidence::{share, Quality};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

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
}
