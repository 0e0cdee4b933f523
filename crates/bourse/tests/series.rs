//! The ledger's time series and routing summaries (`ledger/series.rs`) on both stores, against
//! the same sums computed here from the rows themselves: random rows (fallback chains, errors,
//! route reasons as the router writes them, latencies across every histogram bucket) and
//! windows that do and do not line up with the buckets.

#[macro_use]
#[path = "common/stores.rs"]
mod stores;

use bourse::canonical::Usage;
use bourse::ledger::{
    ErrorGroup, Histogram, LatencyPoint, Ledger, LedgerEntry, RouteGroup, SeriesBy, SeriesPoint, SeriesQuery,
    LATENCY_BOUNDS_MS,
};
use std::collections::{BTreeMap, HashSet};

both_stores!(series_equal_the_rows, routing_summaries_equal_the_rows, empty_windows_are_empty);

/// 2026-03-01T00:00:00Z, a whole day.
const T0: i64 = 1_772_323_200_000;

const MODELS: [(&str, &str); 4] =
    [("alpha", "small"), ("alpha", "large"), ("beta", "<script>alert(1)</script>"), ("gamma", "x/y")];
const ERRORS: [&str; 4] = ["upstream_5xx", "upstream_timeout", "upstream_rate_limited", "client_disconnected"];

/// A route reason as `Router::reason` writes it.
fn reason(route: &str, chose: &str, feasible: u32, attempt: u32) -> String {
    let mut s = format!("route={route} chose {chose} (expected $0.000012345); {feasible} feasible");
    if feasible > 1 {
        s.push_str("; runner-up other/model (expected $0.000023456)");
    }
    if attempt > 1 {
        s.push_str(&format!("; attempt {attempt} (fallback)"));
    }
    s
}

/// Requests of one to three attempts over three hours; every attempt but a request's last
/// failed. Some requests are routed (with reasons), some named their model.
fn rows(seed: u64) -> Vec<LedgerEntry> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::new();
    for i in 0..500 {
        let ts = T0 + rng.i64(0..3 * 3_600_000);
        let attempts = [1, 1, 1, 2, 3][rng.usize(..5)];
        let routed = rng.u8(..4) != 0;
        let route = ["auto", "cheap", "strong-not-cn"][rng.usize(..3)];
        let feasible = rng.u32(1..12);
        let tenant = [None, Some("acme"), Some("zeta")][rng.usize(..3)];
        for a in 1..=attempts {
            let (provider, model) = MODELS[rng.usize(..MODELS.len())];
            let last = a == attempts;
            let error = if last && rng.u8(..5) != 0 { None } else { Some(ERRORS[rng.usize(..ERRORS.len())]) };
            let cost = rng.i64(0..5_000_000);
            // A histogram bucket at random, then a value in it.
            let slot = rng.usize(..=LATENCY_BOUNDS_MS.len());
            let lo = if slot == 0 { 0 } else { LATENCY_BOUNDS_MS[slot - 1] };
            let hi = LATENCY_BOUNDS_MS.get(slot).copied().unwrap_or(lo * 2);
            let latency = rng.i64(lo..hi) as u32;
            out.push(LedgerEntry {
                request_id: format!("req-{seed}-{i}"),
                attempt: a,
                ts_ms: ts + i64::from(a) * 200,
                key_id: tenant.map(|t| format!("key_{t}").into()),
                tenant_id: tenant.map(Into::into),
                provider: provider.into(),
                model: model.into(),
                route_reason: routed.then(|| reason(route, &format!("{provider}/{model}"), feasible, a)),
                usage: Usage { input_uncached: 10, output: 20, ..Usage::default() },
                cost_nanos: cost,
                reference_cost_nanos: cost + rng.i64(0..10_000_000),
                catalog_version: "test".into(),
                ttfb_ms: rng.bool().then_some(latency / 2),
                latency_ms: latency,
                status: if error.is_some() { [502, 504, 429, 499][rng.usize(..4)] } else { 200 },
                error_kind: error.map(str::to_string),
                estimate: None,
                stream: rng.bool(),
                checks: None,
                needs: 0,
                cache_hit: false,
                cache_saved_nanos: 0,
                energy_uwh: None,
                co2e_ug: None,
            });
        }
    }
    out
}

/// Whether the row's request has a next attempt anywhere in the ledger.
fn has_next(all: &[LedgerEntry], r: &LedgerEntry) -> bool {
    all.iter().any(|n| n.request_id == r.request_id && n.attempt == r.attempt + 1)
}

fn group_of(r: &LedgerEntry, by: SeriesBy) -> String {
    match by {
        SeriesBy::Total => "(all)".into(),
        SeriesBy::Provider => r.provider.clone(),
        SeriesBy::Model => format!("{}/{}", r.provider, r.model),
        SeriesBy::Tenant => r.tenant_id.as_deref().unwrap_or("(none)").to_string(),
        SeriesBy::Key => r.key_id.as_deref().unwrap_or("(none)").to_string(),
    }
}

/// A request counts in the bucket and group of its first attempt.
fn expected_series(all: &[LedgerEntry], q: &SeriesQuery) -> Vec<SeriesPoint> {
    let mut groups: BTreeMap<(i64, String), SeriesPoint> = BTreeMap::new();
    for r in all.iter().filter(|r| r.ts_ms >= q.since_ms && r.ts_ms < q.until_ms) {
        let start = r.ts_ms - r.ts_ms % q.bucket_ms;
        let group = group_of(r, q.by);
        let p = groups.entry((start, group.clone())).or_insert_with(|| SeriesPoint {
            start_ms: start,
            group,
            ..SeriesPoint::default()
        });
        p.requests += i64::from(r.attempt == 1);
        p.attempts += 1;
        p.cost_nanos += r.cost_nanos;
        p.reference_cost_nanos += r.reference_cost_nanos;
        p.errors += i64::from(r.error_kind.is_some());
        p.fallbacks += i64::from(r.attempt > 1);
        p.failed += i64::from(r.error_kind.is_some() && !has_next(all, r));
    }
    groups
        .into_values()
        .map(|mut p| {
            p.saved_nanos = p.reference_cost_nanos - p.cost_nanos;
            p
        })
        .collect()
}

fn expected_latency(all: &[LedgerEntry], q: &SeriesQuery) -> Vec<LatencyPoint> {
    let mut out: BTreeMap<i64, LatencyPoint> = BTreeMap::new();
    for r in all.iter().filter(|r| r.ts_ms >= q.since_ms && r.ts_ms < q.until_ms && r.status < 400) {
        let start = r.ts_ms - r.ts_ms % q.bucket_ms;
        let p = out.entry(start).or_insert_with(|| LatencyPoint { start_ms: start, ..LatencyPoint::default() });
        p.latency.counts[Histogram::slot(i64::from(r.latency_ms))] += 1;
        if let Some(t) = r.ttfb_ms {
            p.ttfb.counts[Histogram::slot(i64::from(t))] += 1;
        }
    }
    out.into_values().collect()
}

async fn store(url: &str, rows: &[LedgerEntry]) -> Ledger {
    let ledger = Ledger::open(url).await.unwrap();
    for chunk in rows.chunks(97) {
        ledger.append(chunk.to_vec()).await.unwrap();
    }
    ledger
}

async fn series_equal_the_rows(url: &str) {
    let all = rows(7);
    let ledger = store(url, &all).await;
    let windows = [
        (T0, T0 + 3 * 3_600_000),
        // Neither end on a minute.
        (T0 + 1_234_567, T0 + 9_876_543),
        (T0 + 3_600_000, T0 + 3_600_001),
    ];
    let mut checked = 0;
    for (since_ms, until_ms) in windows {
        for bucket_ms in [60_000, 30 * 60_000, 3_600_000, 86_400_000] {
            for by in [SeriesBy::Total, SeriesBy::Provider, SeriesBy::Model, SeriesBy::Tenant, SeriesBy::Key] {
                let q = SeriesQuery { since_ms, until_ms, bucket_ms, by };
                let got = ledger.series(&q).await.unwrap();
                assert_eq!(got, expected_series(&all, &q), "{q:?}");
                checked += got.len();
            }
            let q = SeriesQuery { since_ms, until_ms, bucket_ms, by: SeriesBy::Total };
            let got = ledger.latency_series(&q).await.unwrap();
            assert_eq!(got, expected_latency(&all, &q), "{q:?}");
        }
    }
    assert!(checked > 1_000, "the windows held rows: {checked} points");
    // Every bucket of the histogram was reached, so the bounds were all exercised.
    let whole = SeriesQuery { since_ms: T0, until_ms: T0 + 86_400_000, bucket_ms: 86_400_000, by: SeriesBy::Total };
    let day = &ledger.latency_series(&whole).await.unwrap()[0];
    assert!(day.latency.counts.iter().all(|c| *c > 0), "{:?}", day.latency.counts);
    let failed: i64 = ledger.series(&whole).await.unwrap().iter().map(|p| p.failed).sum();
    assert!(failed > 0 && failed < all.iter().filter(|r| r.error_kind.is_some()).count() as i64);
}

async fn routing_summaries_equal_the_rows(url: &str) {
    let all = rows(11);
    let ledger = store(url, &all).await;
    let (since, until) = (T0 + 600_000, T0 + 2 * 3_600_000 + 1);
    let in_window: Vec<&LedgerEntry> = all.iter().filter(|r| r.ts_ms >= since && r.ts_ms < until).collect();

    let mut want: BTreeMap<(Option<String>, Option<u32>, String), RouteGroup> = BTreeMap::new();
    for r in &in_window {
        let (route, feasible) = match &r.route_reason {
            Some(reason) => {
                let route = reason["route=".len()..reason.find(" chose ").unwrap()].to_string();
                let after = &reason[reason.find("); ").unwrap() + 3..];
                (Some(route), Some(after[..after.find(" feasible").unwrap()].parse().unwrap()))
            }
            None => (None, None),
        };
        let model = format!("{}/{}", r.provider, r.model);
        let g = want.entry((route.clone(), feasible, model.clone())).or_insert_with(|| RouteGroup {
            route,
            feasible,
            model,
            ..RouteGroup::default()
        });
        g.first_attempts += i64::from(r.attempt == 1);
        g.fallback_attempts += i64::from(r.attempt > 1);
        g.errors += i64::from(r.error_kind.is_some());
        g.cost_nanos += r.cost_nanos;
    }
    let got = ledger.route_groups(since, until).await.unwrap();
    let mut got_sorted = got.clone();
    got_sorted.sort_by(|a, b| (&a.route, a.feasible, &a.model).cmp(&(&b.route, b.feasible, &b.model)));
    assert_eq!(got_sorted, want.into_values().collect::<Vec<_>>());
    assert!(got.windows(2).all(|w| w[0].first_attempts >= w[1].first_attempts), "most requests first");
    let routes: HashSet<Option<&str>> = got.iter().map(|g| g.route.as_deref()).collect();
    assert_eq!(routes, HashSet::from([None, Some("auto"), Some("cheap"), Some("strong-not-cn")]));

    let mut want: BTreeMap<(String, String), ErrorGroup> = BTreeMap::new();
    for r in in_window.iter().filter(|r| r.error_kind.is_some()) {
        let kind = r.error_kind.clone().unwrap();
        let model = format!("{}/{}", r.provider, r.model);
        let g = want.entry((kind.clone(), model.clone())).or_insert_with(|| ErrorGroup {
            error_kind: kind,
            model,
            ..ErrorGroup::default()
        });
        g.attempts += 1;
        g.fell_back += i64::from(has_next(&all, r));
    }
    let mut got = ledger.error_groups(since, until).await.unwrap();
    assert!(got.windows(2).all(|w| w[0].attempts >= w[1].attempts));
    got.sort_by(|a, b| (&a.error_kind, &a.model).cmp(&(&b.error_kind, &b.model)));
    assert_eq!(got, want.into_values().collect::<Vec<_>>());
    assert!(got.iter().any(|g| g.fell_back > 0) && got.iter().any(|g| g.fell_back < g.attempts));
}

async fn empty_windows_are_empty(url: &str) {
    let all = rows(3);
    let ledger = store(url, &all).await;
    let q = SeriesQuery { since_ms: T0 - 86_400_000, until_ms: T0, bucket_ms: 60_000, by: SeriesBy::Model };
    assert!(ledger.series(&q).await.unwrap().is_empty());
    assert!(ledger.latency_series(&q).await.unwrap().is_empty());
    assert!(ledger.route_groups(q.since_ms, q.until_ms).await.unwrap().is_empty());
    assert!(ledger.error_groups(q.since_ms, q.until_ms).await.unwrap().is_empty());
}
