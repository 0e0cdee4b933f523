//! `bourse report`: ledger aggregates as a table, JSON or CSV. Money is summed as integer
//! nano-USD by the database and only formatted here; the energy estimate likewise, as µWh
//! and µg CO2e, shown in Wh and grams and always labelled "est.".

use super::{csv_field, Format};
use crate::ledger::ReportRow;
use crate::meter::energy::millionths;
use crate::meter::Cost;
use serde_json::json;
use std::fmt::Write as _;

/// Savings as a percentage of the reference cost, to one decimal (integer arithmetic).
pub fn saved_pct(r: &ReportRow) -> String {
    if r.reference_cost_nanos <= 0 {
        return "-".into();
    }
    let tenths = (i128::from(r.saved_nanos) * 1000) / i128::from(r.reference_cost_nanos);
    format!("{}.{}%", tenths / 10, (tenths % 10).abs())
}

fn total(rows: &[ReportRow]) -> ReportRow {
    let mut t = ReportRow { group: "TOTAL".into(), ..ReportRow::default() };
    for r in rows {
        t.requests += r.requests;
        t.attempts += r.attempts;
        t.input_uncached += r.input_uncached;
        t.input_cache_read += r.input_cache_read;
        t.input_cache_write += r.input_cache_write;
        t.output += r.output;
        t.output_reasoning += r.output_reasoning;
        t.cost_nanos += r.cost_nanos;
        t.reference_cost_nanos += r.reference_cost_nanos;
        t.saved_nanos += r.saved_nanos;
        t.errors += r.errors;
        t.estimated += r.estimated;
        t.energy_uwh = t.energy_uwh.saturating_add(r.energy_uwh);
        t.co2e_ug = t.co2e_ug.saturating_add(r.co2e_ug);
    }
    t
}

/// Under the table: what the two energy columns are.
pub const ENERGY_NOTE: &str = "energy_wh_est, co2e_g_est: ESTIMATES, not measurements: tokens x per-token energy of the model's size class x PUE, and x the hosting region's grid intensity (figures and sources: catalog/energy.toml)";

const HEADER: [&str; 16] = [
    "group",
    "requests",
    "attempts",
    "input",
    "cache_read",
    "cache_write",
    "output",
    "reasoning",
    "cost_usd",
    "reference_usd",
    "saved_usd",
    "saved_pct",
    "errors",
    "estimated",
    "energy_wh_est",
    "co2e_g_est",
];

fn cells(r: &ReportRow) -> Vec<String> {
    vec![
        r.group.clone(),
        r.requests.to_string(),
        r.attempts.to_string(),
        r.input_uncached.to_string(),
        r.input_cache_read.to_string(),
        r.input_cache_write.to_string(),
        r.output.to_string(),
        r.output_reasoning.to_string(),
        Cost(r.cost_nanos).usd(),
        Cost(r.reference_cost_nanos).usd(),
        Cost(r.saved_nanos).usd(),
        saved_pct(r),
        r.errors.to_string(),
        r.estimated.to_string(),
        millionths(r.energy_uwh),
        millionths(r.co2e_ug),
    ]
}

/// One report row as JSON: the integer fields plus exact decimal USD strings (shared by
/// `bourse report --format json` and `GET /v1/bourse/usage`).
pub fn row_json(r: &ReportRow) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("cost_usd".into(), json!(Cost(r.cost_nanos).usd()));
        o.insert("reference_cost_usd".into(), json!(Cost(r.reference_cost_nanos).usd()));
        o.insert("saved_usd".into(), json!(Cost(r.saved_nanos).usd()));
        o.insert("saved_pct".into(), json!(saved_pct(r)));
        o.insert("energy_wh_est".into(), json!(millionths(r.energy_uwh)));
        o.insert("co2e_g_est".into(), json!(millionths(r.co2e_ug)));
    }
    v
}

pub fn render(rows: &[ReportRow], format: Format) -> String {
    match format {
        Format::Json => {
            let data: Vec<_> = rows.iter().map(row_json).collect();
            let t = total(rows);
            serde_json::to_string_pretty(&json!({"data": data, "total": {
                "requests": t.requests, "cost_usd": Cost(t.cost_nanos).usd(),
                "reference_cost_usd": Cost(t.reference_cost_nanos).usd(), "saved_usd": Cost(t.saved_nanos).usd(),
                "saved_pct": saved_pct(&t), "errors": t.errors,
                "energy_wh_est": millionths(t.energy_uwh), "co2e_g_est": millionths(t.co2e_ug)},
                "energy_note": ENERGY_NOTE}))
            .unwrap_or_default()
        }
        Format::Csv => {
            let mut out = HEADER.join(",");
            out.push('\n');
            for r in rows {
                out.push_str(&cells(r).iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
                out.push('\n');
            }
            out
        }
        Format::Table => {
            let mut table: Vec<Vec<String>> = vec![HEADER.iter().map(|h| h.to_string()).collect()];
            table.extend(rows.iter().map(cells));
            if rows.len() > 1 {
                table.push(cells(&total(rows)));
            }
            let widths: Vec<usize> =
                (0..HEADER.len()).map(|i| table.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
            let mut out = String::new();
            for row in &table {
                for (i, c) in row.iter().enumerate() {
                    if i == 0 {
                        let _ = write!(out, "{c:<w$}", w = widths[i]);
                    } else {
                        let _ = write!(out, "  {c:>w$}", w = widths[i]);
                    }
                }
                out.push('\n');
            }
            if rows.is_empty() {
                out.push_str("(no ledger rows in this period)\n");
            } else {
                // After a blank line: the table's rows end where a reader (or a parser) expects.
                out.push('\n');
                out.push_str(ENERGY_NOTE);
                out.push('\n');
            }
            out
        }
    }
}

/// The cascades of `--by route` (routes with answer checks or shadows): requests, how many
/// escalated and passed, attempts, judge calls, what they cost (judges included), the same
/// requests sent straight to the model the escalations ended at, and the shadow calls and
/// their spend. JSON: a `cascades` array (USD as exact strings).
pub fn cascades(list: &[crate::ledger::CascadeRow], format: Format) -> String {
    let usd = |n: Option<i64>| n.map_or("-".to_string(), |n| Cost(n).usd());
    match format {
        Format::Json => {
            let data: Vec<_> = list
                .iter()
                .map(|c| {
                    json!({
                        "route": c.route, "requests": c.requests, "escalated": c.escalated, "passed": c.passed,
                        "attempts": c.attempts, "cost_usd": Cost(c.cost_nanos).usd(),
                        "final_model": c.final_model, "final_model_cost_usd": c.final_model_cost_nanos.map(|n| Cost(n).usd()),
                        "judged": c.judged, "shadowed": c.shadowed, "shadow_cost_usd": Cost(c.shadow_cost_nanos).usd(),
                    })
                })
                .collect();
            serde_json::to_string_pretty(&json!({ "cascades": data })).unwrap_or_default()
        }
        _ => {
            if list.is_empty() {
                return String::new();
            }
            let mut out = String::from(
                "\ncascades (answers checked per route; escalated = a check failed and a better model was asked)\n",
            );
            let head = [
                "route",
                "requests",
                "escalated",
                "passed",
                "attempts",
                "judged",
                "cost $",
                "final model",
                "all to final $",
                "shadowed",
                "shadow $",
            ];
            let mut table: Vec<Vec<String>> = vec![head.iter().map(|h| h.to_string()).collect()];
            for c in list {
                table.push(vec![
                    c.route.clone(),
                    c.requests.to_string(),
                    c.escalated.to_string(),
                    c.passed.to_string(),
                    c.attempts.to_string(),
                    c.judged.to_string(),
                    Cost(c.cost_nanos).usd(),
                    c.final_model.clone().unwrap_or_else(|| "-".into()),
                    usd(c.final_model_cost_nanos),
                    c.shadowed.to_string(),
                    Cost(c.shadow_cost_nanos).usd(),
                ]);
            }
            let widths: Vec<usize> =
                (0..head.len()).map(|i| table.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
            for row in &table {
                for (i, c) in row.iter().enumerate() {
                    match i {
                        0 | 7 => {
                            let _ = write!(out, "{}{c:<w$}", if i == 0 { "" } else { "  " }, w = widths[i]);
                        }
                        _ => {
                            let _ = write!(out, "  {c:>w$}", w = widths[i]);
                        }
                    }
                }
                out.push('\n');
            }
            out
        }
    }
}

/// The budgets of `--by tenant|key`: use in each window and the runway at the last seven
/// days' rate. JSON: a `budgets` array (USD as exact strings, times as RFC 3339).
pub fn budgets(list: &[crate::admin::BudgetUse], format: Format) -> String {
    use crate::timespec::rfc3339;
    let runway = |b: &crate::admin::BudgetUse| match (b.runs_out_ms, b.spent_7d_nanos, b.resets_at_ms) {
        (Some(t), ..) => format!("runs out {}", rfc3339(t)),
        (None, 0, _) => "no spend in 7 days".to_string(),
        (None, _, Some(r)) => format!("lasts until the reset, {}", rfc3339(r)),
        (None, _, None) => "-".to_string(),
    };
    match format {
        Format::Json => {
            let data: Vec<_> = list
                .iter()
                .map(|b| {
                    json!({"group": b.group, "window": b.window, "limit_usd": Cost(b.limit_nanos).usd(),
                           "used_usd": Cost(b.used_nanos).usd(), "left_usd": Cost(b.left_nanos).usd(),
                           "spent_7d_usd": Cost(b.spent_7d_nanos).usd(),
                           "runs_out_at": b.runs_out_ms.map(rfc3339), "resets_at": b.resets_at_ms.map(rfc3339),
                           "runway": runway(b)})
                })
                .collect();
            serde_json::to_string_pretty(&json!({ "budgets": data })).unwrap_or_default()
        }
        Format::Csv | Format::Table => {
            let header = ["group", "budget", "limit_usd", "used_usd", "left_usd", "spent_7d_usd", "runway"];
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|b| {
                    vec![
                        b.group.clone(),
                        b.window.to_string(),
                        Cost(b.limit_nanos).usd(),
                        Cost(b.used_nanos).usd(),
                        Cost(b.left_nanos).usd(),
                        Cost(b.spent_7d_nanos).usd(),
                        runway(b),
                    ]
                })
                .collect();
            if format == Format::Csv {
                let mut out = header.join(",");
                out.push('\n');
                for r in &rows {
                    out.push_str(&r.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
                    out.push('\n');
                }
                return out;
            }
            if rows.is_empty() {
                return "\n(no budgets set)\n".to_string();
            }
            let mut table = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
            table.extend(rows);
            let widths: Vec<usize> =
                (0..header.len()).map(|i| table.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
            let mut out = String::from("\nbudgets\n");
            for row in &table {
                for (i, c) in row.iter().enumerate() {
                    match i {
                        0 | 1 | 6 => {
                            let _ = write!(out, "{}{c:<w$}", if i == 0 { "" } else { "  " }, w = widths[i]);
                        }
                        _ => {
                            let _ = write!(out, "  {c:>w$}", w = widths[i]);
                        }
                    }
                }
                out.push('\n');
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(g: &str, cost: i64, reference: i64) -> ReportRow {
        ReportRow {
            group: g.into(),
            requests: 2,
            attempts: 3,
            cost_nanos: cost,
            reference_cost_nanos: reference,
            saved_nanos: reference - cost,
            ..ReportRow::default()
        }
    }

    #[test]
    fn table_totals_and_percentages_are_exact() {
        let rows = [row("a/x", 800_000, 8_000_000), row("b/y", 1, 3)];
        let t = render(&rows, Format::Table);
        assert!(t.contains("0.000800000") && t.contains("90.0%") && t.contains("66.6%"), "{t}");
        // The totals close the table; the energy columns' note follows a blank line.
        let body: Vec<&str> = t.lines().take_while(|l| !l.is_empty()).collect();
        assert!(body.last().unwrap().starts_with("TOTAL"), "{t}");
        assert!(t.contains("0.008000003"), "{t}");
        let csv = render(&[row("a,b", 1, 2)], Format::Csv);
        assert!(csv.lines().nth(1).unwrap().starts_with("\"a,b\",2,3"), "{csv}");
        let j: serde_json::Value = serde_json::from_str(&render(&rows, Format::Json)).unwrap();
        assert_eq!(j["total"]["cost_usd"], "0.000800001");
    }

    #[test]
    fn energy_columns_are_exact_and_labelled_estimates() {
        // 228,000 µWh and 78,660 µg (a medium model's 1,000 in / 500 out in the US, see
        // meter/energy.rs) plus 1 µWh and 1 µg.
        let a = ReportRow { energy_uwh: 228_000, co2e_ug: 78_660, ..row("a/x", 2, 1) };
        let b = ReportRow { energy_uwh: 1, co2e_ug: 1, ..row("b/y", 1, 1) };
        let t = render(&[a.clone(), b.clone()], Format::Table);
        let head = t.lines().next().unwrap();
        assert!(head.contains("energy_wh_est") && head.contains("co2e_g_est"), "{t}");
        let total = t.lines().find(|l| l.starts_with("TOTAL")).unwrap();
        assert!(total.contains("0.228001") && total.contains("0.078661"), "{t}");
        assert!(t.lines().last().unwrap().contains("ESTIMATES"), "{t}");
        let csv = render(std::slice::from_ref(&a), Format::Csv);
        assert!(csv.lines().next().unwrap().ends_with(",energy_wh_est,co2e_g_est"), "{csv}");
        assert!(csv.lines().nth(1).unwrap().ends_with(",0.228000,0.078660"), "{csv}");
        let j: serde_json::Value = serde_json::from_str(&render(&[a, b], Format::Json)).unwrap();
        assert_eq!(j["data"][0]["energy_uwh"], 228_000);
        assert_eq!(j["data"][0]["energy_wh_est"], "0.228000");
        assert_eq!(j["total"]["co2e_g_est"], "0.078661");
        assert!(j["energy_note"].as_str().unwrap().contains("ESTIMATES"));
    }
}
