//! What `bourse demo` prints: the banner naming the simulated providers, the progress bar,
//! the report and where the gateway serves. Every block says "simulated". Money is the
//! ledger's integer nano-USD, formatted only here.

use super::report::{render, saved_pct};
use super::Format;
use crate::ledger::ReportRow;
use crate::meter::Cost;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A simulated provider, as the banner lists it.
#[derive(Debug, Clone)]
pub struct SimLine {
    pub id: &'static str,
    /// The preset that prices it.
    pub kind: &'static str,
    /// What it stands for: maker, hosting.
    pub what: &'static str,
    pub url: String,
}

/// A route, as the banner lists it.
#[derive(Debug, Clone)]
pub struct RouteLine {
    pub name: String,
    pub min_quality: u32,
    pub policy: String,
}

/// The banner: no key, no network, the simulators, the routes, the catalog and the ledger.
pub fn banner(sims: &[SimLine], routes: &[RouteLine], catalog: &str, reference: &str, ledger: &str) -> String {
    let mut out = String::from(
        "bourse demo: SIMULATED providers, no API key, no request leaves this machine\n\n\
         simulated providers (upstream-sim on 127.0.0.1, priced as the real vendor in the catalog):\n",
    );
    let w = sims.iter().map(|s| s.id.len()).max().unwrap_or(0);
    let k = sims.iter().map(|s| s.kind.len()).max().unwrap_or(0);
    let m = sims.iter().map(|s| s.what.len()).max().unwrap_or(0);
    for s in sims {
        let _ = writeln!(out, "  {:<w$}  {:<k$}  {:<m$}  {}", s.id, s.kind, s.what, s.url);
    }
    out.push_str("routes:\n");
    let r = routes.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for route in routes {
        let policy = if route.policy == "default" { String::new() } else { format!(", policy {}", route.policy) };
        let _ = writeln!(out, "  {:<r$}  quality >= {}{policy}", route.name, route.min_quality);
    }
    let _ = writeln!(out, "catalog {catalog}; savings against {reference}\nledger  {ledger}\n");
    out
}

/// How far the workload has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Requests answered, failed ones included.
    pub done: u64,
    pub failed: u64,
    /// What the answers so far said they cost.
    pub cost_nanos: i64,
}

/// One frame of the progress bar (`width` cells), without the carriage return.
pub fn progress_line(s: &Progress, total: usize, elapsed: Duration, width: usize) -> String {
    let done = usize::try_from(s.done).unwrap_or(usize::MAX).min(total);
    let filled = (done * width).checked_div(total).unwrap_or(width);
    let failed = if s.failed > 0 { format!("  {} failed", s.failed) } else { String::new() };
    format!(
        "simulated workload [{}{}] {done:>w$}/{total}  ${}  {:.1}s{failed}",
        "#".repeat(filled),
        "-".repeat(width - filled),
        Cost(s.cost_nanos).usd(),
        elapsed.as_secs_f64(),
        w = total.to_string().len(),
    )
}

/// The workload's last word: the full bar on a terminal, else one plain line.
pub fn progress_end(s: &Progress, total: usize, elapsed: Duration, terminal: bool) -> String {
    if terminal {
        return format!("\r{}\n", progress_line(s, total, elapsed, 30));
    }
    format!(
        "simulated workload: {} of {total} requests answered in {:.1}s, {} failed\n",
        s.done - s.failed,
        elapsed.as_secs_f64(),
        s.failed
    )
}

/// What the report says besides the ledger's rows: the workload as its clients saw it, and
/// the ledger writer's state.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub sent: u64,
    pub failed: u64,
    pub failures: &'a [String],
    /// The sum of the costs the answers stated.
    pub client_cost_nanos: i64,
    /// Successful answers that stated no cost.
    pub unpriced: u64,
    /// Rows the writer had not committed when the report was read.
    pub unwritten: u64,
    pub dropped: u64,
}

/// The report: totals, savings, the check against what clients were told, then the model
/// and provider mix as `bourse report` tables.
pub fn report(
    total: &ReportRow,
    by_model: &[ReportRow],
    by_provider: &[ReportRow],
    reference: &str,
    f: &Facts<'_>,
) -> String {
    let mut out = String::from("\nbourse demo report (SIMULATED providers, catalog prices, read from the ledger)\n");
    let fell_back = total.errors;
    let _ = writeln!(
        out,
        "  requests   {} sent, {} in the ledger, {} upstream attempts ({fell_back} failed and fell back)",
        f.sent, total.requests, total.attempts
    );
    let _ = writeln!(out, "  spend      ${}", Cost(total.cost_nanos).usd());
    let _ =
        writeln!(out, "  reference  ${} for the same tokens on {reference}", Cost(total.reference_cost_nanos).usd());
    let _ = writeln!(out, "  saved      ${} ({})", Cost(total.saved_nanos).usd(), saved_pct(total));
    if f.client_cost_nanos == total.cost_nanos && f.unpriced == 0 {
        let _ = writeln!(
            out,
            "  answers    the costs stated to clients add up to ${}: the ledger's spend, to the nano-dollar",
            Cost(f.client_cost_nanos).usd()
        );
    } else {
        let _ = writeln!(
            out,
            "  answers    the costs stated to clients add up to ${} ({} answers stated none): the ledger says ${}",
            Cost(f.client_cost_nanos).usd(),
            f.unpriced,
            Cost(total.cost_nanos).usd()
        );
    }
    if f.failed > 0 {
        let _ = writeln!(out, "  failed     {} requests got no answer, e.g.:", f.failed);
        for why in f.failures {
            let _ = writeln!(out, "             {why}");
        }
    }
    if f.unwritten > 0 || f.dropped > 0 {
        let _ = writeln!(
            out,
            "  ledger     {} rows not yet written and {} dropped when this was read",
            f.unwritten, f.dropped
        );
    }
    out.push_str("\nmodel mix (simulated providers; requests that fell back count under each model tried)\n");
    out.push_str(&render(by_model, Format::Table));
    out.push_str("\nby provider (simulated)\n");
    out.push_str(&render(by_provider, Format::Table));
    out
}

/// Where the demo serves until Ctrl-C, and the admin key for the dashboard.
pub fn serving(addr: SocketAddr, admin_key: &str, ledger: &str, ledger_file: Option<&Path>, metrics: bool) -> String {
    let read_again = match ledger_file {
        Some(p) => format!("kept: bourse report --ledger {}", p.display()),
        None => format!("bourse report --ledger {ledger}"),
    };
    let metrics =
        if metrics { format!("\x20 metrics    http://{addr}/metrics  (Prometheus)\n") } else { String::new() };
    format!(
        "\nserving until Ctrl-C (SIMULATED providers stay up):\n\
         \x20 gateway    http://{addr}/v1  (OpenAI or Anthropic SDK, \"model\": \"auto\"; no key on loopback)\n\
         \x20 dashboard  http://{addr}/dashboard\n\
         {metrics}\
         \x20 admin key  {admin_key}  (the dashboard's login; /admin/v1 takes it too)\n\
         \x20 ledger     {ledger}  ({read_again})\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_in_proportion() {
        let s = Progress { done: 100, failed: 0, cost_nanos: 1_234_567 };
        let line = progress_line(&s, 400, Duration::from_millis(2500), 20);
        assert_eq!(line, "simulated workload [#####---------------] 100/400  $0.001234567  2.5s");
        let full = Progress { done: 400, failed: 2, cost_nanos: 5 };
        let line = progress_line(&full, 400, Duration::from_secs(9), 20);
        assert!(line.contains(&format!("[{}]", "#".repeat(20))) && line.ends_with("2 failed"), "{line}");
        assert!(progress_end(&full, 400, Duration::from_secs(9), false).contains("398 of 400 requests"));
    }

    #[test]
    fn the_report_checks_the_stated_costs_against_the_ledger() {
        let total = ReportRow {
            group: "(all)".into(),
            requests: 10,
            attempts: 11,
            cost_nanos: 1_000,
            reference_cost_nanos: 40_000,
            saved_nanos: 39_000,
            errors: 1,
            ..ReportRow::default()
        };
        let mut facts = Facts {
            sent: 10,
            failed: 0,
            failures: &[],
            client_cost_nanos: 1_000,
            unpriced: 0,
            unwritten: 0,
            dropped: 0,
        };
        let r = report(&total, &[], &[], "openai/gpt-4o", &facts);
        assert!(r.contains("SIMULATED"), "{r}");
        assert!(r.contains("saved      $0.000039000 (97.5%)"), "{r}");
        assert!(r.contains("to the nano-dollar"), "{r}");
        assert!(r.contains("1 failed and fell back"), "{r}");
        facts.client_cost_nanos = 999;
        let r = report(&total, &[], &[], "openai/gpt-4o", &facts);
        assert!(!r.contains("to the nano-dollar") && r.contains("the ledger says $0.000001000"), "{r}");
    }
}
