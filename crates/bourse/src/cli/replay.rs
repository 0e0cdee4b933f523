//! `bourse replay` for a terminal or a machine: the summary of a replay (`crate::replay`) as
//! tables or JSON (USD as exact decimal strings beside the integer nano-USD), and its progress
//! bar. Money is summed as integers by the replay and only formatted here.

use crate::meter::Cost;
use crate::replay::{Mix, Money, Progress, Summary};
use serde_json::json;
use std::fmt::Write as _;
use std::time::Duration;

/// `saved` as a percentage of `reference`, to one decimal (integer arithmetic); `-` without a
/// reference cost.
fn pct(saved: i64, reference: i64) -> String {
    if reference <= 0 {
        return "-".into();
    }
    let tenths = i128::from(saved) * 1000 / i128::from(reference);
    let sign = if tenths < 0 { "-" } else { "" };
    format!("{sign}{}.{}%", tenths.abs() / 10, tenths.abs() % 10)
}

fn usd(nanos: i64) -> String {
    Cost(nanos).usd()
}

/// A signed change in USD (`+` shown).
fn change(nanos: i64) -> String {
    if nanos > 0 {
        format!("+{}", usd(nanos))
    } else {
        usd(nanos)
    }
}

fn money_json(m: &Money) -> serde_json::Value {
    json!({
        "requests": m.requests,
        "cost_nanos": m.cost_nanos,
        "reference_cost_nanos": m.reference_cost_nanos,
        "saved_nanos": m.saved_nanos(),
        "cost_usd": usd(m.cost_nanos),
        "reference_cost_usd": usd(m.reference_cost_nanos),
        "saved_usd": usd(m.saved_nanos()),
        "saved_pct": pct(m.saved_nanos(), m.reference_cost_nanos),
    })
}

/// Models by spend after, then spend before, then name.
fn models(s: &Summary) -> Vec<(&String, &Mix)> {
    let mut v: Vec<_> = s.models.iter().collect();
    v.sort_by(|a, b| {
        (b.1.after_cost_nanos, b.1.before_cost_nanos, b.1.after_requests)
            .cmp(&(a.1.after_cost_nanos, a.1.before_cost_nanos, a.1.after_requests))
            .then_with(|| a.0.cmp(b.0))
    });
    v
}

/// Reasons by requests, then name.
fn infeasible(s: &Summary) -> Vec<(&String, &Money)> {
    let mut v: Vec<_> = s.infeasible.iter().collect();
    v.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then_with(|| a.0.cmp(b.0)));
    v
}

fn bound(ms: Option<i64>, open: &str) -> String {
    ms.map_or_else(|| open.to_string(), crate::timespec::rfc3339)
}

/// What changed, in words.
fn scenario(s: &Summary) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &s.route {
        parts.push(format!("every request through route {r}"));
    }
    if let Some(p) = &s.policy {
        parts.push(format!("policy {p} on every route"));
    }
    parts.push(format!("catalog {}", s.catalog));
    parts.join(" · ")
}

/// The summary as JSON.
pub fn json(s: &Summary) -> String {
    let models: Vec<_> = models(s)
        .into_iter()
        .map(|(name, m)| {
            json!({
                "model": name,
                "before_requests": m.before_requests, "before_cost_nanos": m.before_cost_nanos,
                "before_cost_usd": usd(m.before_cost_nanos),
                "after_requests": m.after_requests, "after_cost_nanos": m.after_cost_nanos,
                "after_cost_usd": usd(m.after_cost_nanos),
            })
        })
        .collect();
    let refused: Vec<_> = infeasible(s)
        .into_iter()
        .map(|(reason, m)| {
            json!({"reason": reason, "requests": m.requests, "cost_before_nanos": m.cost_nanos,
                   "cost_before_usd": usd(m.cost_nanos)})
        })
        .collect();
    let k = &s.skipped;
    let v = json!({
        "since": s.since_ms.map(crate::timespec::rfc3339),
        "until": s.until_ms.map(crate::timespec::rfc3339),
        "route": s.route,
        "policy": s.policy,
        "catalog": s.catalog,
        "reference": s.reference,
        "ledger": {"rows": s.ledger_rows, "cost_nanos": s.ledger_cost_nanos, "cost_usd": usd(s.ledger_cost_nanos)},
        "rows_read": s.rows,
        "before": money_json(&s.before),
        "after": money_json(&s.after),
        "kept_before": money_json(&s.kept_before),
        "change_nanos": s.change_nanos(),
        "change_usd": usd(s.change_nanos()),
        "estimated": s.estimated,
        "moved": s.moved,
        "infeasible_requests": s.infeasible_requests(),
        "models": models,
        "infeasible": refused,
        "not_replayed": {
            "failed": money_json(&k.failed), "side_calls": money_json(&k.side_calls),
            "escalated": money_json(&k.escalated), "cache_hits": money_json(&k.cache_hits),
        },
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Rows of cells, the first column left-aligned and the rest right-aligned.
fn table(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..n).map(|i| rows.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            let _ = match i {
                0 => write!(out, "{c:<w$}", w = widths[0]),
                _ => write!(out, "  {c:>w$}", w = widths[i]),
            };
        }
        // An empty last cell leaves padding: no trailing spaces.
        out.truncate(out.trim_end_matches(' ').len());
        out.push('\n');
    }
    out
}

/// The summary as tables: the window and what was not replayed, spend and savings before and
/// after, the model mix, and the requests that would have been refused.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "replay {} .. {} · {} · reference {}",
        bound(s.since_ms, "the start"),
        bound(s.until_ms, "now"),
        scenario(s),
        s.reference
    );
    let _ = writeln!(
        out,
        "ledger: {} rows, ${} (from the aggregates); replayed {} answered requests ({} with estimated usage)",
        s.ledger_rows,
        usd(s.ledger_cost_nanos),
        s.before.requests,
        s.estimated
    );
    let k = &s.skipped;
    let _ = writeln!(
        out,
        "not replayed, kept as recorded: {} failed attempts ${}, {} side calls ${}, {} escalated answers ${}, {} cache hits\n",
        k.failed.requests,
        usd(k.failed.cost_nanos),
        k.side_calls.requests,
        usd(k.side_calls.cost_nanos),
        k.escalated.requests,
        usd(k.escalated.cost_nanos),
        k.cache_hits.requests
    );
    let (b, a) = (&s.before, &s.after);
    let requests_change = i128::from(a.requests) - i128::from(b.requests);
    out.push_str(&table(&[
        vec!["".into(), "before".into(), "after".into(), "change".into()],
        vec!["requests".into(), b.requests.to_string(), a.requests.to_string(), format!("{requests_change:+}")],
        vec!["spend $".into(), usd(b.cost_nanos), usd(a.cost_nanos), change(s.change_nanos())],
        vec![
            format!("reference ({}) $", s.reference),
            usd(b.reference_cost_nanos),
            usd(a.reference_cost_nanos),
            change(a.reference_cost_nanos.saturating_sub(b.reference_cost_nanos)),
        ],
        vec![
            "saved vs reference $".into(),
            usd(b.saved_nanos()),
            usd(a.saved_nanos()),
            change(a.saved_nanos().saturating_sub(b.saved_nanos())),
        ],
        vec![
            "saved %".into(),
            pct(b.saved_nanos(), b.reference_cost_nanos),
            pct(a.saved_nanos(), a.reference_cost_nanos),
            String::new(),
        ],
    ]));
    let kept = &s.kept_before;
    let _ = writeln!(
        out,
        "\nthe {} requests feasible in both: ${} before, ${} after ({}); {} moved to another model",
        kept.requests,
        usd(kept.cost_nanos),
        usd(a.cost_nanos),
        change(a.cost_nanos.saturating_sub(kept.cost_nanos)),
        s.moved
    );
    if !s.models.is_empty() {
        out.push_str("\nmodel mix\n");
        let mut rows = vec![vec![
            "model".to_string(),
            "requests before".into(),
            "spend before $".into(),
            "requests after".into(),
            "spend after $".into(),
        ]];
        for (name, m) in models(s) {
            rows.push(vec![
                name.clone(),
                m.before_requests.to_string(),
                usd(m.before_cost_nanos),
                m.after_requests.to_string(),
                usd(m.after_cost_nanos),
            ]);
        }
        out.push_str(&table(&rows));
    }
    if s.infeasible.is_empty() {
        out.push_str("\nno request would have been refused\n");
    } else {
        let _ = writeln!(out, "\nwould have been refused: {} requests", s.infeasible_requests());
        let mut rows = vec![vec!["reason".to_string(), "requests".into(), "spend before $".into()]];
        for (reason, m) in infeasible(s) {
            rows.push(vec![reason.clone(), m.requests.to_string(), usd(m.cost_nanos)]);
        }
        out.push_str(&table(&rows));
    }
    if s.rows == 0 {
        out.push_str("(no ledger rows in this period)\n");
    }
    out
}

/// The progress bar: rows replayed of the window's, spend before and after so far.
pub fn progress_line(p: &Progress, elapsed: Duration, width: usize) -> String {
    let done = p.rows.min(p.total);
    let filled = usize::try_from((u128::from(done) * width as u128).checked_div(u128::from(p.total)).unwrap_or(0))
        .unwrap_or(width)
        .min(width);
    format!(
        "replay [{}{}] {done:>w$}/{} rows  ${} -> ${}  {:.1}s",
        "#".repeat(filled),
        "-".repeat(width - filled),
        p.total,
        usd(p.before_nanos),
        usd(p.after_nanos),
        elapsed.as_secs_f64(),
        w = p.total.to_string().len(),
    )
}

/// The last progress word: the full bar on a terminal (then a new line), else one plain line.
pub fn progress_end(p: &Progress, elapsed: Duration, terminal: bool) -> String {
    if terminal {
        return format!("\r{}\n", progress_line(p, elapsed, 30));
    }
    format!("replay: {} rows in {:.1}s\n", p.rows, elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_and_changes_are_exact_and_signed() {
        assert_eq!(pct(1, 3), "33.3%");
        assert_eq!(pct(-1, 3), "-33.3%");
        assert_eq!(pct(5, 0), "-");
        assert_eq!(change(1), "+0.000000001");
        assert_eq!(change(-1_500_000_000), "-1.500000000");
    }

    #[test]
    fn the_bar_fills_with_the_rows() {
        let p = Progress { rows: 5, total: 10, before_nanos: 2, after_nanos: 1 };
        let line = progress_line(&p, Duration::from_millis(1500), 10);
        assert_eq!(line, "replay [#####-----]  5/10 rows  $0.000000002 -> $0.000000001  1.5s");
        // More rows than the aggregates counted (rows written meanwhile): a full bar, no panic.
        let over = Progress { rows: 12, total: 10, ..p };
        assert!(progress_line(&over, Duration::ZERO, 10).contains("[##########]"));
        let none = Progress { rows: 3, total: 0, ..p };
        assert!(progress_line(&none, Duration::ZERO, 4).contains("[----]"));
    }
}
