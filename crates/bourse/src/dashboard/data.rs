//! Every read the dashboard makes, in one place: the ledger's reports and series for a window,
//! tenants' and keys' budgets, the circuits, and the market from the catalog. Pages only
//! arrange what these return.
//!
//! A window is a whole number of buckets ending with the bucket that holds "now" (bucket
//! starts are multiples of the width since the epoch, UTC), so the ledger's series line up
//! with the chart's x axis and the last bucket is the one still filling.

use super::market::{self, Market};
use super::View;
use crate::admin::{budget_use, BudgetUse};
use crate::config::Policy;
use crate::ledger::{
    ErrorGroup, GroupBy, LatencyPoint, Ledger, LedgerError, ReportQuery, ReportRow, RouteGroup, SeriesBy, SeriesPoint,
    SeriesQuery,
};
use crate::limit::{window_start, Window as BudgetWindow};
use std::collections::HashMap;

/// A window the pages offer: how many buckets of what width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub name: &'static str,
    pub buckets: i64,
    pub bucket_ms: i64,
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// 1h by the minute, 24h by the half hour, 7d by three hours, 30d by the day.
pub const WINDOWS: [Window; 4] = [
    Window { name: "1h", buckets: 60, bucket_ms: MINUTE },
    Window { name: "24h", buckets: 48, bucket_ms: 30 * MINUTE },
    Window { name: "7d", buckets: 56, bucket_ms: 3 * HOUR },
    Window { name: "30d", buckets: 30, bucket_ms: DAY },
];

/// The window a page was asked for (`24h` when none).
pub fn window(name: Option<&str>) -> Result<Window, String> {
    let name = name.unwrap_or("24h");
    WINDOWS.iter().find(|w| w.name == name).copied().ok_or_else(|| {
        format!("unknown window \"{name}\": choose {}", WINDOWS.iter().map(|w| w.name).collect::<Vec<_>>().join(", "))
    })
}

/// Values per bucket, by group.
pub type Columns = Vec<(String, Vec<i64>)>;

/// The buckets a chart covers: `[since_ms, until_ms)`, starts every `bucket_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub since_ms: i64,
    pub until_ms: i64,
    pub bucket_ms: i64,
    pub starts: Vec<i64>,
    pub now_ms: i64,
}

impl Span {
    /// The window's buckets, the last one holding `now_ms`.
    pub fn of(w: Window, now_ms: i64) -> Span {
        let until_ms = (now_ms.div_euclid(w.bucket_ms) + 1) * w.bucket_ms;
        let since_ms = until_ms - w.buckets * w.bucket_ms;
        Span::between(since_ms, now_ms, w.bucket_ms)
    }

    /// Buckets from `since_ms` (a multiple of the width) through the one holding `now_ms`.
    pub fn between(since_ms: i64, now_ms: i64, bucket_ms: i64) -> Span {
        let last = now_ms.div_euclid(bucket_ms) * bucket_ms;
        let starts: Vec<i64> = (0..).map(|i| since_ms + i * bucket_ms).take_while(|s| *s <= last).collect();
        Span { since_ms, until_ms: last + bucket_ms, bucket_ms, starts, now_ms }
    }

    pub fn series(&self, by: SeriesBy) -> SeriesQuery {
        SeriesQuery { since_ms: self.since_ms, until_ms: self.until_ms, bucket_ms: self.bucket_ms, by }
    }

    fn report(&self, by: GroupBy) -> ReportQuery {
        ReportQuery { since_ms: Some(self.since_ms), until_ms: Some(self.until_ms), by, key: None }
    }

    /// Which bucket a start falls in.
    pub fn index(&self, start_ms: i64) -> Option<usize> {
        let i = (start_ms - self.since_ms).checked_div(self.bucket_ms)?;
        usize::try_from(i).ok().filter(|i| *i < self.starts.len())
    }

    /// One value per bucket per group, from series points (`f` picks the figure).
    pub fn columns(&self, points: &[SeriesPoint], f: impl Fn(&SeriesPoint) -> i64) -> Columns {
        let mut by_group: Columns = Vec::new();
        let mut at: HashMap<&str, usize> = HashMap::new();
        for p in points {
            let Some(i) = self.index(p.start_ms) else { continue };
            let k = *at.entry(p.group.as_str()).or_insert_with(|| {
                by_group.push((p.group.clone(), vec![0; self.starts.len()]));
                by_group.len() - 1
            });
            by_group[k].1[i] += f(p);
        }
        by_group
    }
}

/// The overview's figures.
#[derive(Debug, Default)]
pub struct Overview {
    pub totals: ReportRow,
    pub by_provider: Vec<SeriesPoint>,
    pub total: Vec<SeriesPoint>,
    pub latency: Vec<LatencyPoint>,
}

async fn report(ledger: &Ledger, span: &Span, by: GroupBy) -> Result<Vec<ReportRow>, LedgerError> {
    ledger.report(&span.report(by)).await
}

pub async fn overview(ledger: &Ledger, span: &Span) -> Result<Overview, LedgerError> {
    Ok(Overview {
        totals: report(ledger, span, GroupBy::None).await?.pop().unwrap_or_default(),
        by_provider: ledger.series(&span.series(SeriesBy::Provider)).await?,
        total: ledger.series(&span.series(SeriesBy::Total)).await?,
        latency: ledger.latency_series(&span.series(SeriesBy::Total)).await?,
    })
}

/// The models-and-providers page's figures.
#[derive(Debug, Default)]
pub struct Models {
    pub by_model: Vec<ReportRow>,
    pub by_provider: Vec<ReportRow>,
    pub by_model_series: Vec<SeriesPoint>,
    pub errors: Vec<ErrorGroup>,
}

pub async fn models(ledger: &Ledger, span: &Span) -> Result<Models, LedgerError> {
    Ok(Models {
        by_model: report(ledger, span, GroupBy::Model).await?,
        by_provider: report(ledger, span, GroupBy::Provider).await?,
        by_model_series: ledger.series(&span.series(SeriesBy::Model)).await?,
        errors: ledger.error_groups(span.since_ms, span.until_ms).await?,
    })
}

/// One routable provider+model's circuit, as this process sees it now.
#[derive(Clone, Debug, PartialEq)]
pub struct Circuit {
    pub key: String,
    pub open: bool,
    pub consecutive_failures: u32,
    pub ewma_ttfb_ms: Option<f64>,
}

/// Every routable entry's circuit (closed with no failures until something is recorded).
pub fn circuits(view: &View<'_>) -> Vec<Circuit> {
    let recorded: HashMap<String, crate::route::health::EntrySnapshot> =
        view.router.health.snapshot().into_iter().collect();
    let mut out: Vec<Circuit> = view
        .router
        .entries
        .iter()
        .map(|e| {
            let s = recorded.get(&*e.key);
            Circuit {
                key: e.key.to_string(),
                open: s.is_some_and(|s| s.open),
                consecutive_failures: s.map_or(0, |s| s.consecutive_failures),
                ewma_ttfb_ms: s.and_then(|s| s.ewma_ttfb_ms),
            }
        })
        .collect();
    // Open circuits first, then by failures, then by key.
    out.sort_by(|a, b| {
        b.open
            .cmp(&a.open)
            .then_with(|| b.consecutive_failures.cmp(&a.consecutive_failures))
            .then_with(|| a.key.cmp(&b.key))
    });
    out
}

/// One budget with the spend of its scope per bucket since its window began (for the
/// burn-down; the dashboard's window for all-time budgets).
#[derive(Clone, Debug)]
pub struct Budget {
    /// `tenant` or `key`.
    pub scope: &'static str,
    pub usage: BudgetUse,
    pub span: Span,
    pub spend: Vec<i64>,
}

/// The tenants-and-keys page's figures.
#[derive(Debug, Default)]
pub struct Tenants {
    pub by_tenant: Vec<ReportRow>,
    pub by_key: Vec<ReportRow>,
    pub budgets: Vec<Budget>,
}

pub async fn tenants(ledger: &Ledger, span: &Span) -> Result<Tenants, LedgerError> {
    let now = span.now_ms;
    let mut budgets = Vec::new();
    for (scope, group, by) in [("tenant", GroupBy::Tenant, SeriesBy::Tenant), ("key", GroupBy::Key, SeriesBy::Key)] {
        let uses = budget_use(ledger, group, now).await?;
        let mut spend: HashMap<&'static str, (Span, Columns)> = HashMap::new();
        for u in uses {
            if !spend.contains_key(u.window) {
                let s = match u.window {
                    "day" => Span::between(window_start(BudgetWindow::Day, now).unwrap_or(now), now, HOUR),
                    "month" => Span::between(window_start(BudgetWindow::Month, now).unwrap_or(now), now, DAY),
                    _ => span.clone(),
                };
                let points = ledger.series(&s.series(by)).await?;
                let columns = s.columns(&points, |p| p.cost_nanos);
                spend.insert(u.window, (s, columns));
            }
            let (s, columns) = &spend[u.window];
            let values =
                columns.iter().find(|(g, _)| *g == u.group).map_or_else(|| vec![0; s.starts.len()], |(_, v)| v.clone());
            budgets.push(Budget { scope, usage: u, span: s.clone(), spend: values });
        }
    }
    Ok(Tenants {
        by_tenant: report(ledger, span, GroupBy::Tenant).await?,
        by_key: report(ledger, span, GroupBy::Key).await?,
        budgets,
    })
}

/// The routing page's figures.
#[derive(Debug, Default)]
pub struct Routing {
    pub routes: Vec<RouteGroup>,
    pub errors: Vec<ErrorGroup>,
    pub total: Vec<SeriesPoint>,
}

pub async fn routing(ledger: &Ledger, span: &Span) -> Result<Routing, LedgerError> {
    Ok(Routing {
        routes: ledger.route_groups(span.since_ms, span.until_ms).await?,
        errors: ledger.error_groups(span.since_ms, span.until_ms).await?,
        total: ledger.series(&span.series(SeriesBy::Total)).await?,
    })
}

/// The policies the market page offers: the built-in "no CN hosting" first (chosen when the
/// request names none), then every configured one but `default` (which removes nothing).
pub fn policies(view: &View<'_>) -> Vec<(Option<String>, Policy)> {
    let mut out = vec![(None, market::no_cn_hosting())];
    out.extend(view.router.policies.iter().filter(|(n, _)| *n != "default").map(|(n, p)| (Some(n.clone()), p.clone())));
    out
}

/// The configured policy named `name`, or the built-in one for None.
pub fn policy(view: &View<'_>, name: Option<&str>) -> Result<Policy, String> {
    match name {
        None => Ok(market::no_cn_hosting()),
        Some(n) => view.router.policies.get(n).cloned().ok_or_else(|| format!("no policy named \"{n}\" in the config")),
    }
}

/// The catalog's market under `policy`, and which catalog entries this gateway can route to.
pub fn market<'a>(view: &View<'a>, policy: &Policy) -> (Market<'a>, std::collections::HashSet<String>) {
    let routable = view.router.entries.iter().map(|e| e.model.id.clone()).collect();
    (market::market(view.catalog, view.reference, policy), routable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_end_with_the_bucket_holding_now() {
        let now = 1_772_323_200_000 + 7 * HOUR + 12 * MINUTE + 5_000;
        let s = Span::of(window(Some("24h")).unwrap(), now);
        assert_eq!(s.starts.len(), 48);
        assert_eq!(s.until_ms, 1_772_323_200_000 + 7 * HOUR + 30 * MINUTE);
        assert_eq!(s.until_ms - s.since_ms, 24 * HOUR);
        assert_eq!(s.starts[47], s.until_ms - 30 * MINUTE);
        assert_eq!(s.index(s.starts[3]), Some(3));
        assert_eq!(s.index(s.until_ms), None);
        assert_eq!(window(None).unwrap().name, "24h");
        assert!(window(Some("2h")).unwrap_err().contains("1h, 24h, 7d, 30d"));
        let day = Span::between(1_772_323_200_000, now, HOUR);
        assert_eq!(day.starts.len(), 8);
        let points = [
            SeriesPoint { start_ms: day.starts[0], group: "a".into(), cost_nanos: 5, ..SeriesPoint::default() },
            SeriesPoint { start_ms: day.starts[7], group: "a".into(), cost_nanos: 6, ..SeriesPoint::default() },
            SeriesPoint { start_ms: day.starts[2], group: "b".into(), cost_nanos: 7, ..SeriesPoint::default() },
        ];
        let cols = day.columns(&points, |p| p.cost_nanos);
        assert_eq!(cols[0], ("a".into(), vec![5, 0, 0, 0, 0, 0, 0, 6]));
        assert_eq!(cols[1], ("b".into(), vec![0, 0, 7, 0, 0, 0, 0, 0]));
    }
}
