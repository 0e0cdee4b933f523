//! The pages: what [`super::data`] returns, arranged as charts ([`super::chart`]) with the
//! table behind each, inside the shell ([`super::html::page`]).
//!
//! Chart ids (`data-chart`) are stable names the tests find charts by. Charts that stack
//! groups show the seven largest and fold the rest into `(others)`, so a ledger with many
//! models or keys still draws a readable chart; the tables list every group.

use super::chart::{self, Dot, Frontier, Line, Series, TimeAxis, Unit};
use super::data::{self, Span, WINDOWS};
use super::html::{self, count, esc, figure, percent, table, usd, usd_cents, Shell};
use super::market::Region;
use super::View;
use crate::config::DashboardConfig;
use crate::ledger::{Histogram, LatencyPoint, LedgerError, ReportRow, SeriesPoint};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A page's query string.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PageQuery {
    pub window: Option<String>,
    pub policy: Option<String>,
}

/// Why a page could not be drawn.
#[derive(Debug)]
pub enum PageError {
    /// The query asked for something that does not exist (400).
    BadInput(String),
    /// The ledger could not be read (503).
    Ledger(LedgerError),
}

impl From<LedgerError> for PageError {
    fn from(e: LedgerError) -> Self {
        PageError::Ledger(e)
    }
}

/// Stacked charts show this many groups, the rest as one.
const SHOWN: usize = 7;
const OTHERS: &str = "(others)";

/// The page `page` (one of `html::PAGES`).
pub async fn render(
    page: &str,
    view: &View<'_>,
    settings: &DashboardConfig,
    q: &PageQuery,
    now_ms: i64,
) -> Result<String, PageError> {
    let window = data::window(q.window.as_deref()).map_err(PageError::BadInput)?;
    let span = Span::of(window, now_ms);
    let title = html::PAGES.iter().find(|(p, _)| *p == page).map_or("Dashboard", |(_, t)| *t);
    let mut keep = String::new();
    let body = match (page, view.ledger) {
        ("market", _) => {
            if let Some(p) = &q.policy {
                keep =
                    format!("policy={}", percent_encoding::utf8_percent_encode(p, percent_encoding::NON_ALPHANUMERIC));
            }
            market(view, q.policy.as_deref())?
        }
        (_, None) => {
            "<p class=\"notice\">The ledger is off (<code>[storage] ledger = false</code>): there is no spend to show. \
                      The market page works without it.</p>"
                .to_string()
        }
        ("overview", Some(l)) => overview(&data::overview(l, &span).await?, &span, view.reference),
        ("models", Some(l)) => models(&data::models(l, &span).await?, &data::circuits(view), &span),
        ("tenants", Some(l)) => tenants(&data::tenants(l, &span).await?, &span),
        ("routing", Some(l)) => routing(&data::routing(l, &span).await?, &span),
        _ => return Err(PageError::BadInput(format!("no page named \"{page}\""))),
    };
    let names: Vec<&str> = WINDOWS.iter().map(|w| w.name).collect();
    Ok(html::page(
        &Shell {
            page,
            title,
            window: window.name,
            windows: &names,
            keep: &keep,
            refresh_secs: settings.refresh.as_secs().max(1),
            generated_ms: now_ms,
        },
        &body,
    ))
}

/// The login form, with an error above it if the last attempt failed.
pub fn login(error: Option<&str>, next: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(e) = error {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(e));
    }
    body.push_str(
        "<form method=\"post\" action=\"/dashboard/login\" class=\"login\">\
         <label for=\"key\">Admin key</label>\
         <input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" required autofocus>",
    );
    if let Some(n) = next {
        let _ = write!(body, "<input type=\"hidden\" name=\"next\" value=\"{}\">", esc(n));
    }
    body.push_str(
        "<button type=\"submit\">Log in</button></form>\
         <p class=\"note\">One of <code>server.admin_keys</code>. Client keys cannot open the dashboard.</p>",
    );
    html::bare("Bourse dashboard", &body)
}

fn axis(span: &Span) -> TimeAxis {
    TimeAxis { starts: span.starts.clone(), bucket_ms: span.bucket_ms }
}

/// The largest `SHOWN` columns by total (ties by name), the rest summed as `(others)`.
fn top(mut columns: Vec<(String, Vec<i64>)>) -> Vec<Series> {
    columns.sort_by(|a, b| b.1.iter().sum::<i64>().cmp(&a.1.iter().sum::<i64>()).then_with(|| a.0.cmp(&b.0)));
    let mut out: Vec<Series> = Vec::new();
    for (i, (name, values)) in columns.into_iter().enumerate() {
        if i < SHOWN {
            out.push(Series { name, values });
        } else if i == SHOWN {
            out.push(Series { name: OTHERS.into(), values });
        } else if let Some(o) = out.last_mut() {
            for (a, b) in o.values.iter_mut().zip(values) {
                *a += b;
            }
        }
    }
    out
}

/// One row per bucket: its time, each series' figure, and the bucket's total.
fn series_rows(span: &Span, series: &[Series], unit: Unit) -> (Vec<String>, Vec<Vec<String>>) {
    let mut head = vec!["Bucket start (UTC)".to_string()];
    head.extend(series.iter().map(|s| s.name.clone()));
    head.push("Total".into());
    let rows = span
        .starts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut r = vec![html::utc(*t)];
            let mut total = 0;
            for s in series {
                total += s.values[i];
                r.push(esc(&unit.exact(s.values[i])).to_string());
            }
            r.push(esc(&unit.exact(total)).to_string());
            r
        })
        .collect();
    (head, rows)
}

fn line_rows(span: &Span, lines: &[Line], unit: Unit) -> (Vec<String>, Vec<Vec<String>>) {
    let mut head = vec!["Bucket start (UTC)".to_string()];
    head.extend(lines.iter().map(|l| l.name.clone()));
    let rows = span
        .starts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut r = vec![html::utc(*t)];
            r.extend(lines.iter().map(|l| l.values[i].map_or("—".to_string(), |v| esc(&unit.exact(v)).to_string())));
            r
        })
        .collect();
    (head, rows)
}

fn heads(h: &[String]) -> Vec<&str> {
    h.iter().map(String::as_str).collect()
}

/// A headline figure; `exact` (when not empty) is the figure to the nano-dollar, shown on
/// hover.
fn tile(out: &mut String, label: &str, value: &str, exact: &str, detail: &str) {
    let _ = write!(out, "<div class=\"tile\"><dt>{}</dt><dd title=\"{}\">{}</dd>", esc(label), esc(exact), esc(value));
    if !detail.is_empty() {
        let _ = write!(out, "<dd class=\"detail\">{}</dd>", esc(detail));
    }
    out.push_str("</div>");
}

fn quantile_text(h: &Histogram, permille: u32) -> String {
    match h.quantile(permille) {
        Some(crate::ledger::Quantile::UnderMs(v)) => format!("< {}", Unit::Ms.exact(v)),
        Some(crate::ledger::Quantile::AtLeastMs(v)) => format!("≥ {}", Unit::Ms.exact(v)),
        None => "—".into(),
    }
}

fn overview(d: &data::Overview, span: &Span, reference: &str) -> String {
    let mut out = String::new();
    let t = &d.totals;
    let failed: i64 = d.total.iter().map(|p| p.failed).sum();
    let fallbacks: i64 = d.total.iter().map(|p| p.fallbacks).sum();
    let (mut ttfb, mut latency) = (Histogram::default(), Histogram::default());
    for p in &d.latency {
        ttfb.add(&p.ttfb);
        latency.add(&p.latency);
    }
    out.push_str("<dl class=\"tiles\">");
    tile(&mut out, "Spend", &usd_cents(t.cost_nanos), &usd(t.cost_nanos), &format!("{} attempts", count(t.attempts)));
    let saved = t.reference_cost_nanos - t.cost_nanos;
    tile(
        &mut out,
        "Saved",
        &usd_cents(saved),
        &usd(saved),
        &format!("{} of {} on {reference}", percent(saved, t.reference_cost_nanos), usd_cents(t.reference_cost_nanos)),
    );
    tile(&mut out, "Requests", &count(t.requests), "", &format!("{} fallbacks", count(fallbacks)));
    tile(&mut out, "Failed", &percent(failed, t.requests), "", &format!("{} requests", count(failed)));
    let p = |h: &Histogram| format!("{} / {}", quantile_text(h, 500), quantile_text(h, 950));
    tile(&mut out, "TTFB p50 / p95", &p(&ttfb), "", "successful attempts");
    tile(&mut out, "Latency p50 / p95", &p(&latency), "", "successful attempts");
    out.push_str("</dl>");

    let ax = axis(span);
    let spend = top(span.columns(&d.by_provider, |p| p.cost_nanos));
    let (head, rows) = series_rows(span, &spend, Unit::Usd);
    figure(
        &mut out,
        "Spend by provider",
        "",
        &chart::stacked_area("spend-by-provider", "Spend by provider", &ax, &spend, Unit::Usd),
        "Spend per bucket and provider",
        &heads(&head),
        &rows,
    );

    let totals = span.columns(&d.total, |p| p.saved_nanos);
    let saved = totals.first().map_or_else(|| vec![0; span.starts.len()], |c| c.1.clone());
    let spent =
        span.columns(&d.total, |p| p.cost_nanos).first().map_or_else(|| vec![0; span.starts.len()], |c| c.1.clone());
    let cumulative = |v: &[i64]| {
        let mut acc = 0;
        v.iter()
            .map(|x| {
                acc += x;
                Some(acc)
            })
            .collect::<Vec<_>>()
    };
    let lines = [
        Line { name: format!("saved against {reference}"), values: cumulative(&saved), dashed: false },
        Line { name: "spent".into(), values: cumulative(&spent), dashed: true },
    ];
    let (head, rows) = line_rows(span, &lines, Unit::Usd);
    figure(
        &mut out,
        "Cumulative savings",
        &format!("What the same tokens would have cost on the reference model ({reference}), minus what they cost, added up over the window."),
        &chart::lines("savings", "Cumulative savings", &ax, &lines, Unit::Usd),
        "Cumulative saved and spent at the end of each bucket",
        &heads(&head),
        &rows,
    );

    let requests =
        span.columns(&d.total, |p| p.requests - p.failed).pop().map_or_else(|| vec![0; span.starts.len()], |c| c.1);
    let failed_v = span.columns(&d.total, |p| p.failed).pop().map_or_else(|| vec![0; span.starts.len()], |c| c.1);
    let bars = [
        Series { name: "answered".into(), values: requests.clone() },
        Series { name: "failed".into(), values: failed_v.clone() },
    ];
    let (head, rows) = series_rows(span, &bars, Unit::Count);
    figure(
        &mut out,
        "Requests",
        "A request is failed when its last attempt ended in an error.",
        &chart::stacked_bars("requests", "Requests", &ax, &bars, Unit::Count),
        "Requests per bucket",
        &heads(&head),
        &rows,
    );

    let rate: Vec<Option<i64>> =
        requests.iter().zip(&failed_v).map(|(ok, f)| (ok + f > 0).then(|| f * 1000 / (ok + f))).collect();
    let lines = [Line { name: "failed requests".into(), values: rate, dashed: false }];
    let (head, rows) = line_rows(span, &lines, Unit::Permille);
    figure(
        &mut out,
        "Error rate",
        "",
        &chart::lines("error-rate", "Error rate", &ax, &lines, Unit::Permille),
        "Share of requests that failed, per bucket",
        &heads(&head),
        &rows,
    );

    for (id, title, pick) in [
        ("ttfb", "Time to first byte", (|p: &LatencyPoint| p.ttfb.clone()) as fn(&LatencyPoint) -> Histogram),
        ("latency", "Latency", |p: &LatencyPoint| p.latency.clone()),
    ] {
        let mut p50 = vec![None; span.starts.len()];
        let mut p95 = vec![None; span.starts.len()];
        for p in &d.latency {
            if let Some(i) = span.index(p.start_ms) {
                let h = pick(p);
                p50[i] = h.quantile(500).map(|q| q.ms());
                p95[i] = h.quantile(950).map(|q| q.ms());
            }
        }
        let lines = [
            Line { name: "p50".into(), values: p50, dashed: false },
            Line { name: "p95".into(), values: p95, dashed: true },
        ];
        let (head, rows) = line_rows(span, &lines, Unit::Ms);
        figure(
            &mut out,
            title,
            "Successful attempts. Each percentile is the upper bound of the histogram bucket it falls in (steps of about 1.5×).",
            &chart::lines(id, title, &ax, &lines, Unit::Ms),
            &format!("{title}, p50 and p95 per bucket (under)"),
            &heads(&head),
            &rows,
        );
    }
    out
}

fn report_rows(rows: &[ReportRow], total_cost: i64) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            vec![
                esc(&r.group).to_string(),
                count(r.requests),
                count(r.attempts),
                usd(r.cost_nanos),
                percent(r.cost_nanos, total_cost),
                if r.requests > 0 { usd(r.cost_nanos / r.requests) } else { "—".into() },
                usd(r.saved_nanos),
                count(r.errors),
            ]
        })
        .collect()
}

const REPORT_HEAD: [&str; 8] =
    ["Group", "Requests", "Attempts", "Spend", "Share of spend", "Average per request", "Saved", "Errors"];

fn models(d: &data::Models, circuits: &[data::Circuit], span: &Span) -> String {
    let mut out = String::new();
    let total_cost: i64 = d.by_model.iter().map(|r| r.cost_nanos).sum();
    let total_requests: i64 = d.by_model.iter().map(|r| r.requests).sum();
    let mut by_requests: Vec<&ReportRow> = d.by_model.iter().collect();
    by_requests.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.group.cmp(&b.group)));
    let mix: Vec<(String, i64)> = by_requests.iter().map(|r| (r.group.clone(), r.requests)).collect();
    let rows: Vec<Vec<String>> = by_requests
        .iter()
        .map(|r| vec![esc(&r.group).to_string(), count(r.requests), percent(r.requests, total_requests)])
        .collect();
    figure(
        &mut out,
        "Model mix",
        "Requests per model (a request that fell back counts once on each model it tried).",
        &chart::hbars("mix", "Requests by model", &mix, Unit::Count),
        "Requests by model",
        &["Model", "Requests", "Share"],
        &rows,
    );
    let share: Vec<(String, i64)> = d.by_model.iter().map(|r| (r.group.clone(), r.cost_nanos)).collect();
    figure(
        &mut out,
        "Cost share",
        "",
        &chart::hbars("cost-share", "Spend by model", &share, Unit::Usd),
        "Spend by model",
        &REPORT_HEAD.map(|h| if h == "Group" { "Model" } else { h }),
        &report_rows(&d.by_model, total_cost),
    );
    let mut avg: Vec<(String, i64)> =
        d.by_model.iter().filter(|r| r.requests > 0).map(|r| (r.group.clone(), r.cost_nanos / r.requests)).collect();
    avg.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rows: Vec<Vec<String>> = avg.iter().map(|(m, v)| vec![esc(m).to_string(), usd(*v)]).collect();
    figure(
        &mut out,
        "Average cost per request",
        "",
        &chart::hbars("avg-cost", "Average cost per request by model", &avg, Unit::Usd),
        "Average cost per request by model (spend ÷ requests, rounded down to the nano-dollar)",
        &["Model", "Average per request"],
        &rows,
    );
    let spend = top(span.columns(&d.by_model_series, |p| p.cost_nanos));
    let (head, rows) = series_rows(span, &spend, Unit::Usd);
    figure(
        &mut out,
        "Spend by model over time",
        "",
        &chart::stacked_area("spend-by-model", "Spend by model over time", &axis(span), &spend, Unit::Usd),
        "Spend per bucket and model",
        &heads(&head),
        &rows,
    );
    let provider_cost: i64 = d.by_provider.iter().map(|r| r.cost_nanos).sum();
    let providers: Vec<(String, i64)> = d.by_provider.iter().map(|r| (r.group.clone(), r.cost_nanos)).collect();
    figure(
        &mut out,
        "Providers",
        "",
        &chart::hbars("providers", "Spend by provider", &providers, Unit::Usd),
        "Spend by provider",
        &REPORT_HEAD.map(|h| if h == "Group" { "Provider" } else { h }),
        &report_rows(&d.by_provider, provider_cost),
    );
    let mut fell: BTreeMap<&str, i64> = BTreeMap::new();
    for e in &d.errors {
        *fell.entry(e.model.as_str()).or_default() += e.fell_back;
    }
    let mut fell: Vec<(String, i64)> =
        fell.into_iter().filter(|(_, n)| *n > 0).map(|(m, n)| (m.to_string(), n)).collect();
    fell.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rows: Vec<Vec<String>> = d
        .errors
        .iter()
        .map(|e| vec![esc(&e.model).to_string(), esc(&e.error_kind).to_string(), count(e.attempts), count(e.fell_back)])
        .collect();
    figure(
        &mut out,
        "Fallbacks",
        "Failed attempts on each model that the router followed with another model.",
        &chart::hbars("fallbacks-by-model", "Fallbacks away from each model", &fell, Unit::Count),
        "Failed attempts by model and error kind",
        &["Model", "Error kind", "Failed attempts", "Followed by a fallback"],
        &rows,
    );
    out.push_str("<section><h2>Circuits</h2><p class=\"note\">This process's circuit breakers now, per routable provider and model.</p>");
    let rows: Vec<Vec<String>> = circuits
        .iter()
        .map(|c| {
            vec![
                esc(&c.key).to_string(),
                if c.open { "<span class=\"bad\">open</span>".into() } else { "closed".into() },
                count(i64::from(c.consecutive_failures)),
                c.ewma_ttfb_ms.map_or("—".into(), |v| format!("{v:.1} ms")),
            ]
        })
        .collect();
    table(
        &mut out,
        "Circuit per provider and model",
        &["Provider/model", "Circuit", "Consecutive failures", "TTFB (moving average)"],
        &rows,
    );
    out.push_str("</section>");
    out
}

fn tenants(d: &data::Tenants, span: &Span) -> String {
    let mut out = String::new();
    for (id, title, rows, what) in [
        ("spend-by-tenant", "Spend by tenant", &d.by_tenant, "Tenant"),
        ("spend-by-key", "Spend by key", &d.by_key, "Key"),
    ] {
        let total: i64 = rows.iter().map(|r| r.cost_nanos).sum();
        let items: Vec<(String, i64)> = rows.iter().take(20).map(|r| (r.group.clone(), r.cost_nanos)).collect();
        figure(
            &mut out,
            title,
            if what == "Tenant" {
                "(none): config keys and requests without a key."
            } else {
                "The twenty largest; the table has every key."
            },
            &chart::hbars(id, title, &items, Unit::Usd),
            title,
            &REPORT_HEAD.map(|h| if h == "Group" { what } else { h }),
            &report_rows(rows, total),
        );
    }
    let rows: Vec<Vec<String>> = d
        .budgets
        .iter()
        .map(|b| {
            let u = &b.usage;
            let runway = match (u.runs_out_ms, u.resets_at_ms) {
                (Some(t), _) => format!("runs out {} UTC", html::utc(t)),
                (None, Some(r)) if u.spent_7d_nanos > 0 => format!("lasts until it resets {} UTC", html::utc(r)),
                (None, _) if u.spent_7d_nanos == 0 => "no spend in 7 days".into(),
                (None, _) => "lasts".into(),
            };
            vec![
                b.scope.to_string(),
                esc(&u.group).to_string(),
                u.window.to_string(),
                usd(u.limit_nanos),
                usd(u.used_nanos),
                usd(u.left_nanos),
                percent(u.used_nanos, u.limit_nanos),
                usd(u.spent_7d_nanos),
                runway,
            ]
        })
        .collect();
    out.push_str("<section><h2>Budgets</h2><p class=\"note\">Every budget of every tenant and key: use in its window now, and the runway at the last seven days' rate of spend.</p>");
    table(
        &mut out,
        "Budgets",
        &["Scope", "Tenant or key", "Window", "Limit", "Used", "Left", "Used %", "Spent in 7 days", "Runway"],
        &rows,
    );
    out.push_str("</section>");
    // The budgets nearest their limit get a burn-down each.
    let mut order: Vec<&data::Budget> = d.budgets.iter().collect();
    order.sort_by(|a, b| {
        let used =
            |x: &data::Budget| i128::from(x.usage.used_nanos) * 1_000_000 / i128::from(x.usage.limit_nanos.max(1));
        used(b).cmp(&used(a)).then_with(|| a.usage.group.cmp(&b.usage.group))
    });
    for (n, b) in order.iter().take(12).enumerate() {
        let u = &b.usage;
        // Left after bucket i: the limit less what was used up to its end.
        let used_before: i64 = u.used_nanos - b.spend.iter().sum::<i64>();
        let mut used = used_before;
        let left: Vec<i64> = b
            .spend
            .iter()
            .map(|s| {
                used += s;
                u.limit_nanos - used
            })
            .collect();
        let horizon = u.resets_at_ms.unwrap_or(span.now_ms + (span.now_ms - b.span.since_ms).max(1));
        let projection = u.runs_out_ms.filter(|t| *t <= horizon);
        let title = format!("{} {} · {} budget", b.scope, u.group, u.window);
        let rows: Vec<Vec<String>> = b
            .span
            .starts
            .iter()
            .zip(&left)
            .zip(&b.spend)
            .map(|((t, l), s)| vec![html::utc((t + b.span.bucket_ms).min(span.now_ms)), usd(*s), usd(*l)])
            .collect();
        figure(
            &mut out,
            &title,
            &format!(
                "Limit {}, {} left. The dashed line runs to where the budget is used up at the last seven days' rate.",
                usd(u.limit_nanos),
                usd(u.left_nanos)
            ),
            &chart::burndown(
                &format!("burndown-{n}"),
                &title,
                &TimeAxis { starts: b.span.starts.clone(), bucket_ms: b.span.bucket_ms },
                (u.limit_nanos - used_before, &left),
                u.limit_nanos,
                span.now_ms,
                projection,
            ),
            &format!("{title}: spend and what was left at the end of each bucket"),
            &["Bucket end (UTC)", "Spent in bucket", "Left"],
            &rows,
        );
    }
    if d.budgets.is_empty() {
        out.push_str("<p class=\"notice\">No tenant or key has a budget.</p>");
    }
    out
}

fn route_name(r: &Option<String>) -> String {
    r.clone().unwrap_or_else(|| "(named model)".into())
}

fn routing(d: &data::Routing, span: &Span) -> String {
    let mut out = String::new();
    let mut by_route: BTreeMap<String, [i64; 4]> = BTreeMap::new();
    for g in &d.routes {
        let e = by_route.entry(route_name(&g.route)).or_default();
        e[0] += g.first_attempts;
        e[1] += g.fallback_attempts;
        e[2] += g.errors;
        e[3] += g.cost_nanos;
    }
    let mut items: Vec<(String, i64)> = by_route.iter().map(|(r, v)| (r.clone(), v[0])).collect();
    items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rows: Vec<Vec<String>> = by_route
        .iter()
        .map(|(r, v)| vec![esc(r).to_string(), count(v[0]), count(v[1]), count(v[2]), usd(v[3])])
        .collect();
    figure(
        &mut out,
        "Requests by route",
        "Routed requests by the route they asked for; (named model): requests that named provider/model.",
        &chart::hbars("routes", "Requests by route", &items, Unit::Count),
        "Attempts by route",
        &["Route", "Requests", "Fallback attempts", "Errors", "Spend"],
        &rows,
    );
    let mut chosen: BTreeMap<(String, String), [i64; 4]> = BTreeMap::new();
    for g in &d.routes {
        let e = chosen.entry((route_name(&g.route), g.model.clone())).or_default();
        e[0] += g.first_attempts;
        e[1] += g.fallback_attempts;
        e[2] += g.errors;
        e[3] += g.cost_nanos;
    }
    let mut items: Vec<(String, i64)> = chosen.iter().map(|((r, m), v)| (format!("{r} → {m}"), v[0] + v[1])).collect();
    items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    items.truncate(15);
    let rows: Vec<Vec<String>> = chosen
        .iter()
        .map(|((r, m), v)| {
            vec![esc(r).to_string(), esc(m).to_string(), count(v[0]), count(v[1]), count(v[2]), usd(v[3])]
        })
        .collect();
    figure(
        &mut out,
        "Where each route sent requests",
        "Attempts per route and model, first attempts and fallbacks together (the fifteen largest; the table has all).",
        &chart::hbars("route-models", "Attempts by route and model", &items, Unit::Count),
        "Attempts by route and model",
        &["Route", "Model", "First attempts", "Fallback attempts", "Errors", "Spend"],
        &rows,
    );
    let mut feasible: BTreeMap<u32, i64> = BTreeMap::new();
    let mut by_route_feasible: BTreeMap<(String, u32), i64> = BTreeMap::new();
    for g in d.routes.iter().filter(|g| g.route.is_some()) {
        if let Some(f) = g.feasible {
            *feasible.entry(f).or_default() += g.first_attempts;
            *by_route_feasible.entry((route_name(&g.route), f)).or_default() += g.first_attempts;
        }
    }
    let items: Vec<(String, i64)> = feasible.iter().map(|(f, n)| (format!("{f} feasible"), *n)).collect();
    let rows: Vec<Vec<String>> =
        by_route_feasible.iter().map(|((r, f), n)| vec![esc(r).to_string(), count(i64::from(*f)), count(*n)]).collect();
    figure(
        &mut out,
        "Feasible models per request",
        "How many models met each routed request's constraints (quality floor, policy, capabilities, context, cost ceiling) when it was planned.",
        &chart::hbars("feasible", "Routed requests by feasible count", &items, Unit::Count),
        "Routed requests by route and feasible count",
        &["Route", "Feasible models", "Requests"],
        &rows,
    );
    let mut causes: BTreeMap<&str, i64> = BTreeMap::new();
    for e in &d.errors {
        *causes.entry(e.error_kind.as_str()).or_default() += e.fell_back;
    }
    let mut items: Vec<(String, i64)> =
        causes.into_iter().filter(|(_, n)| *n > 0).map(|(k, n)| (k.to_string(), n)).collect();
    items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rows: Vec<Vec<String>> = d
        .errors
        .iter()
        .map(|e| vec![esc(&e.error_kind).to_string(), esc(&e.model).to_string(), count(e.attempts), count(e.fell_back)])
        .collect();
    figure(
        &mut out,
        "Why requests fell back",
        "The error that ended each attempt the router followed with another model.",
        &chart::hbars("fallback-causes", "Fallbacks by cause", &items, Unit::Count),
        "Failed attempts by error kind and model",
        &["Error kind", "Model", "Failed attempts", "Followed by a fallback"],
        &rows,
    );
    let fallbacks =
        span.columns(&d.total, |p: &SeriesPoint| p.fallbacks).pop().map_or_else(|| vec![0; span.starts.len()], |c| c.1);
    let series = [Series { name: "fallback attempts".into(), values: fallbacks }];
    let (head, rows) = series_rows(span, &series, Unit::Count);
    figure(
        &mut out,
        "Fallbacks over time",
        "",
        &chart::stacked_bars("fallbacks", "Fallbacks over time", &axis(span), &series, Unit::Count),
        "Fallback attempts per bucket",
        &heads(&head),
        &rows,
    );
    out
}

fn market(view: &View<'_>, name: Option<&str>) -> Result<String, PageError> {
    let policy = data::policy(view, name).map_err(PageError::BadInput)?;
    let (m, routable) = data::market(view, &policy);
    let mut out = String::new();
    out.push_str("<nav class=\"policies\" aria-label=\"Policy\"><span>Policy:</span>");
    for (n, p) in data::policies(view) {
        let current = if n.as_deref() == name { " aria-current=\"true\"" } else { "" };
        let href = match &n {
            None => "/dashboard/market".to_string(),
            Some(n) => format!(
                "/dashboard/market?policy={}",
                percent_encoding::utf8_percent_encode(n, percent_encoding::NON_ALPHANUMERIC)
            ),
        };
        let label = if n.is_none() { format!("{} (built in)", p.name) } else { p.name.clone() };
        let _ = write!(out, "<a href=\"{}\"{current}>{}</a>", esc(&href), esc(&label));
    }
    out.push_str("</nav>");
    let strong = m.floors.iter().find(|f| f.tier == "strong");
    if let Some((f, tenths)) = strong.and_then(|f| Some((f, m.ratio_tenths(f)?))) {
        let (without, with) = (&m.placed[f.without.unwrap_or(0)], &m.placed[f.with.unwrap_or(0)]);
        let detail = if f.with == f.without {
            format!(
                "the cheapest strong model, {} at ${}/1M (blended), is allowed.",
                esc(&with.model.id),
                with.price_text()
            )
        } else {
            format!(
                "{} at ${}/1M instead of {} at ${}/1M (blended).",
                esc(&with.model.id),
                with.price_text(),
                esc(&without.model.id),
                without.price_text()
            )
        };
        let _ = write!(
            out,
            "<p class=\"headline\" data-ratio-tenths=\"{tenths}\"><strong>{} costs {}.{}×</strong> at the strong floor: {detail}</p>",
            esc(&policy.name),
            tenths / 10,
            tenths % 10,
        );
    }
    let all = m.frontier(false);
    let kept = m.frontier(true);
    let dots: Vec<Dot> = m
        .placed
        .iter()
        .map(|p| Dot {
            id: p.model.id.clone(),
            price: p.price_usd(),
            price_text: p.price_text(),
            quality: i64::from(p.quality),
            region_class: p.region.class(),
            region: p.region.name(),
            open_weights: p.model.open_weights,
            removed: p.removed.is_some(),
            reference: p.reference,
            tagged: p.on_frontier || p.on_policy_frontier || p.reference,
        })
        .collect();
    let frontiers = [
        Frontier { name: "frontier of every model".into(), members: all.clone(), dashed: false },
        Frontier { name: format!("frontier under {}", policy.name), members: kept.clone(), dashed: true },
    ];
    let chart = chart::market("market", "Quality against blended price", &dots, &frontiers);
    let mut legend = String::from("<ul class=\"legend\">");
    let present: std::collections::BTreeSet<Region> = m.placed.iter().map(|p| p.region).collect();
    for r in present {
        let _ = write!(legend, "<li><span class=\"sw {}\"></span>made in {}</li>", r.class(), r.name());
    }
    legend.push_str(
        "<li>● closed weights</li><li>◆ open weights</li><li class=\"removed\">faded: removed by the policy</li>\
         <li>— frontier</li><li>- - frontier under the policy</li><li>◎ reference</li></ul>",
    );
    let rows: Vec<Vec<String>> = m
        .placed
        .iter()
        .map(|p| {
            let md = p.model;
            vec![
                esc(&md.id).to_string(),
                esc(md.origin.as_deref().unwrap_or("—")).to_string(),
                esc(md.hosting.as_deref().or(crate::preset::find(&md.provider).and_then(|x| x.hosting)).unwrap_or("—"))
                    .to_string(),
                if md.open_weights { "open".into() } else { "closed".into() },
                p.quality.to_string(),
                format!("${}", p.price_text()),
                format!("${}", md.rates.input.usd_per_mtok()),
                format!("${}", md.rates.output.usd_per_mtok()),
                match (p.on_frontier, p.on_policy_frontier) {
                    (true, true) => "both".into(),
                    (true, false) => "all".into(),
                    (false, true) => "under policy".into(),
                    (false, false) => String::new(),
                },
                p.removed.as_ref().map_or(String::new(), |x| esc(&x.describe()).to_string()),
                if routable.contains(&md.id) { "yes".into() } else { String::new() },
            ]
        })
        .collect();
    let mut chart_and_legend = chart;
    chart_and_legend.push_str(&legend);
    figure(
        &mut out,
        "Quality against price",
        &format!(
            "Every rated, priced chat model in the catalog ({}), by blended price (3 input : 1 output tokens) and quality. The frontier joins the models nothing cheaper beats.",
            view.catalog.version
        ),
        &chart_and_legend,
        "Catalog chat models, cheapest first",
        &["Model", "Made in", "Hosted in", "Weights", "Quality", "Blended $/1M", "Input $/1M", "Output $/1M", "On frontier", "Removed by policy", "Routable here"],
        &rows,
    );
    let rows: Vec<Vec<String>> = m
        .floors
        .iter()
        .map(|f| {
            let cell = |i: Option<usize>| {
                i.map_or("—".to_string(), |i| {
                    format!("{} (${}/1M)", esc(&m.placed[i].model.id), m.placed[i].price_text())
                })
            };
            vec![
                f.tier.to_string(),
                f.quality.to_string(),
                cell(f.without),
                cell(f.with),
                m.ratio_tenths(f).map_or("—".into(), |t| format!("{}.{}×", t / 10, t % 10)),
            ]
        })
        .collect();
    out.push_str("<section><h2>What the policy costs</h2><p class=\"note\">The cheapest rated model at each quality floor, blended price, with and without the policy.</p>");
    table(
        &mut out,
        "Cheapest model per floor",
        &["Floor", "Quality at least", "Without the policy", "With the policy", "Costs"],
        &rows,
    );
    out.push_str("</section>");
    let rows: Vec<Vec<String>> =
        m.unplaced.iter().map(|(md, why)| vec![esc(&md.id).to_string(), why.to_string()]).collect();
    let _ =
        write!(out, "<section><h2>Not on the chart</h2><details><summary>{} chat models</summary>", m.unplaced.len());
    table(&mut out, "Chat models without a place on the chart", &["Model", "Why"], &rows);
    out.push_str("</details></section>");
    Ok(out)
}
