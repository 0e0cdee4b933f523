//! The ledger's per-minute, per-hour and per-day aggregates against the raw rows, on both
//! stores.
//!
//! - A property test: random requests (1–3 attempts, some request ids reused, timestamps
//!   crowding minute, hour and day edges, on both sides of 1970), written in random batches
//!   and in any order; then every report grouping over random windows (aligned or not,
//!   bounded or not), answered from the aggregates, must equal a plain SQL query over the raw
//!   rows and a reference computed here in Rust, to the nano-dollar; the dashboard's series
//!   (every bucket width), latency histograms and routing summaries must equal the Rust
//!   reference too, failed requests included.
//! - A hand-checked series.
//! - The migration back-fills the aggregates of rows stored before it.

#[path = "common/pg.rs"]
mod pg;

use bourse::canonical::Usage;
use bourse::ledger::{
    ErrorGroup, Estimate, GroupBy, Histogram, LatencyPoint, Ledger, LedgerEntry, ReportQuery, ReportRow, RouteGroup,
    SeriesBy, SeriesPoint, SeriesQuery,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Every aggregate table (SQLite also keeps `ledger_minute_ids`).
const AGGREGATE_TABLES: [&str; 12] = [
    "models_minute",
    "models_hour",
    "models_day",
    "routes_minute",
    "routes_hour",
    "routes_day",
    "keys_minute",
    "keys_hour",
    "keys_day",
    "usage_minute",
    "usage_hour",
    "usage_day",
];

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

/// A store for one test: a SQLite file in a temp dir or a fresh PostgreSQL database (with a
/// connection of the test's own).
enum Store {
    Sqlite(PathBuf),
    Postgres(Box<(pg::Database, tokio_postgres::Client)>),
}

impl Store {
    async fn new(postgres: bool, tag: &str) -> Store {
        if postgres {
            let db = pg::Database::create(tag).await;
            let client = db.client().await;
            return Store::Postgres(Box::new((db, client)));
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("bourse-agg-{}-{tag}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Store::Sqlite(dir)
    }

    fn url(&self) -> String {
        match self {
            Store::Sqlite(dir) => format!("sqlite:{}", dir.join("ledger.db").display()),
            Store::Postgres(p) => p.0.url.clone(),
        }
    }

    /// Runs statements on a connection of the test's own.
    async fn exec(&self, sql: &str) {
        match self {
            Store::Sqlite(dir) => {
                rusqlite::Connection::open(dir.join("ledger.db")).unwrap().execute_batch(sql).unwrap()
            }
            Store::Postgres(p) => p.1.batch_execute(sql).await.unwrap(),
        }
    }

    /// Rows of a one-integer query.
    async fn count(&self, sql: &str) -> i64 {
        match self {
            Store::Sqlite(dir) => {
                rusqlite::Connection::open(dir.join("ledger.db")).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
            }
            Store::Postgres(p) => p.1.query_one(sql, &[]).await.unwrap().get(0),
        }
    }

    /// The report straight from the raw rows, in plain SQL (for the groupings that need no
    /// parsing of the route reason): the reference the aggregates must equal.
    async fn raw_report(&self, q: &ReportQuery) -> Vec<ReportRow> {
        let day = match self {
            Store::Sqlite(_) => "date(ts_ms / 1000.0, 'unixepoch')",
            Store::Postgres(..) => "to_char(TIMESTAMP '1970-01-01' + ts_ms * INTERVAL '1 millisecond', 'YYYY-MM-DD')",
        };
        let group = match q.by {
            GroupBy::Model => "provider || '/' || model",
            GroupBy::Provider => "provider",
            GroupBy::Key => "COALESCE(key_id, '(none)')",
            GroupBy::Tenant => "COALESCE(tenant_id, '(none)')",
            GroupBy::Error => "COALESCE(error_kind, '(none)')",
            GroupBy::None => "'(all)'",
            GroupBy::Day => day,
            // Would need the route parsed out of the reason: only the Rust reference checks it.
            GroupBy::Route => return Vec::new(),
        };
        let cast = if matches!(self, Store::Postgres(..)) { "::bigint" } else { "" };
        let sums: Vec<String> = [
            "input_uncached",
            "input_cache_read",
            "input_cache_write",
            "output",
            "output_reasoning",
            "cost_nanos",
            "reference_cost_nanos",
            "COALESCE(energy_uwh, 0)",
            "COALESCE(co2e_ug, 0)",
        ]
        .iter()
        .map(|c| format!("SUM({c}){cast}"))
        .collect();
        let (p1, p2, p3) = match self {
            Store::Sqlite(_) => ("?1", "?2", "?3"),
            Store::Postgres(..) => ("$1::bigint", "$2::bigint", "$3::text"),
        };
        let sql = format!(
            "SELECT CAST({group} AS TEXT), COUNT(*) FILTER (WHERE attempt = 1), COUNT(*), {}, COUNT(error_kind), \
             COUNT(*) FILTER (WHERE estimated) FROM ledger WHERE ({p1} IS NULL OR ts_ms >= {p1}) \
             AND ({p2} IS NULL OR ts_ms < {p2}) AND ({p3} IS NULL OR key_id = {p3}) GROUP BY 1",
            sums.join(", ")
        );
        let to_row = |g: String, v: [i64; 13]| ReportRow {
            group: g,
            requests: v[0],
            attempts: v[1],
            input_uncached: v[2],
            input_cache_read: v[3],
            input_cache_write: v[4],
            output: v[5],
            output_reasoning: v[6],
            cost_nanos: v[7],
            reference_cost_nanos: v[8],
            saved_nanos: v[8] - v[7],
            energy_uwh: v[9],
            co2e_ug: v[10],
            errors: v[11],
            estimated: v[12],
        };
        let mut rows: Vec<ReportRow> = match self {
            Store::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
                let mut stmt = conn.prepare(&sql).unwrap();
                let mut out = Vec::new();
                let mut rows = stmt.query(rusqlite::params![q.since_ms, q.until_ms, q.key]).unwrap();
                while let Some(r) = rows.next().unwrap() {
                    out.push(to_row(r.get(0).unwrap(), std::array::from_fn(|i| r.get(i + 1).unwrap())));
                }
                out
            }
            Store::Postgres(p) => {
                let rows = p.1.query(&sql, &[&q.since_ms, &q.until_ms, &q.key]).await.unwrap();
                rows.iter().map(|r| to_row(r.get(0), std::array::from_fn(|i| r.get(i + 1)))).collect()
            }
        };
        rows.sort_by(|a, b| b.cost_nanos.cmp(&a.cost_nanos).then_with(|| a.group.cmp(&b.group)));
        rows
    }

    /// Empties the ledger and its aggregates (between property cases).
    async fn clear(&self) {
        let extra = if matches!(self, Store::Sqlite(_)) { "DELETE FROM ledger_minute_ids;" } else { "" };
        let tables: Vec<String> = AGGREGATE_TABLES.iter().map(|t| format!("DELETE FROM {t};")).collect();
        self.exec(&format!("DELETE FROM ledger; {} {extra}", tables.join(" "))).await;
    }

    async fn drop(self) {
        match self {
            Store::Sqlite(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Store::Postgres(p) => {
                let (db, client) = *p;
                drop(client);
                db.drop().await;
            }
        }
    }
}

fn entry(request_id: &str, attempt: u32, ts_ms: i64) -> LedgerEntry {
    LedgerEntry {
        request_id: request_id.into(),
        attempt,
        ts_ms,
        key_id: None,
        tenant_id: None,
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        route_reason: None,
        usage: Usage::default(),
        cost_nanos: 0,
        reference_cost_nanos: 0,
        catalog_version: "test@2025-01-01#0".into(),
        ttfb_ms: None,
        latency_ms: 5,
        status: 200,
        error_kind: None,
        estimate: None,
        stream: false,
        checks: None,
        needs: 0,
        cache_hit: false,
        cache_saved_nanos: 0,
        energy_uwh: None,
        co2e_ug: None,
    }
}

// ---- the reference, in Rust ----

fn route(r: &LedgerEntry) -> Option<String> {
    let rest = r.route_reason.as_deref()?.strip_prefix("route=")?;
    Some(rest.split(' ').next().unwrap().to_string())
}

fn feasible(r: &LedgerEntry) -> Option<u32> {
    let reason = r.route_reason.as_deref()?;
    let after = &reason[reason.find("); ")? + 3..];
    after[..after.find(" feasible")?].parse().ok()
}

/// `YYYY-MM-DD` of a Unix-millisecond instant in UTC (Hinnant's civil-from-days).
fn utc_day(ts_ms: i64) -> String {
    let z = ts_ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn group(by: GroupBy, r: &LedgerEntry) -> String {
    let none = |v: Option<&str>| v.unwrap_or("(none)").to_string();
    match by {
        GroupBy::Model => format!("{}/{}", r.provider, r.model),
        GroupBy::Provider => r.provider.clone(),
        GroupBy::Key => none(r.key_id.as_deref()),
        GroupBy::Tenant => none(r.tenant_id.as_deref()),
        GroupBy::Day => utc_day(r.ts_ms),
        GroupBy::Route => none(route(r).as_deref()),
        GroupBy::Error => none(r.error_kind.as_deref()),
        GroupBy::None => "(all)".into(),
    }
}

fn series_group(by: SeriesBy, r: &LedgerEntry) -> String {
    group(
        match by {
            SeriesBy::Total => GroupBy::None,
            SeriesBy::Provider => GroupBy::Provider,
            SeriesBy::Model => GroupBy::Model,
            SeriesBy::Tenant => GroupBy::Tenant,
            SeriesBy::Key => GroupBy::Key,
        },
        r,
    )
}

fn in_window(r: &LedgerEntry, since: Option<i64>, until: Option<i64>) -> bool {
    since.is_none_or(|s| r.ts_ms >= s) && until.is_none_or(|u| r.ts_ms < u)
}

/// Whether any row has the row's request id and the next attempt number.
fn has_next(all: &[LedgerEntry], r: &LedgerEntry) -> bool {
    all.iter().any(|n| n.request_id == r.request_id && n.attempt == r.attempt + 1)
}

fn expected_report(rows: &[LedgerEntry], q: &ReportQuery) -> Vec<ReportRow> {
    let mut groups: BTreeMap<String, ReportRow> = BTreeMap::new();
    for r in rows.iter().filter(|r| in_window(r, q.since_ms, q.until_ms)) {
        if q.key.is_some() && r.key_id.as_deref() != q.key.as_deref() {
            continue;
        }
        let g = group(q.by, r);
        let e = groups.entry(g.clone()).or_insert_with(|| ReportRow { group: g, ..Default::default() });
        e.requests += i64::from(r.attempt == 1);
        e.attempts += 1;
        e.input_uncached += r.usage.input_uncached as i64;
        e.input_cache_read += r.usage.input_cache_read as i64;
        e.input_cache_write += r.usage.input_cache_write as i64;
        e.output += r.usage.output as i64;
        e.output_reasoning += r.usage.output_reasoning as i64;
        e.cost_nanos += r.cost_nanos;
        e.reference_cost_nanos += r.reference_cost_nanos;
        e.saved_nanos = e.reference_cost_nanos - e.cost_nanos;
        e.errors += i64::from(r.error_kind.is_some());
        e.estimated += i64::from(r.estimate.is_some());
        e.energy_uwh += r.energy_uwh.unwrap_or(0);
        e.co2e_ug += r.co2e_ug.unwrap_or(0);
    }
    let mut out: Vec<ReportRow> = groups.into_values().collect();
    out.sort_by(|a, b| b.cost_nanos.cmp(&a.cost_nanos).then_with(|| a.group.cmp(&b.group)));
    out
}

fn bucket(q: &SeriesQuery, r: &LedgerEntry) -> i64 {
    r.ts_ms.div_euclid(q.bucket_ms) * q.bucket_ms
}

fn expected_series(all: &[LedgerEntry], q: &SeriesQuery) -> Vec<SeriesPoint> {
    let mut groups: BTreeMap<(i64, String), SeriesPoint> = BTreeMap::new();
    for r in all.iter().filter(|r| in_window(r, Some(q.since_ms), Some(q.until_ms))) {
        let (start_ms, group) = (bucket(q, r), series_group(q.by, r));
        let p =
            groups.entry((start_ms, group.clone())).or_insert(SeriesPoint { start_ms, group, ..Default::default() });
        p.requests += i64::from(r.attempt == 1);
        p.attempts += 1;
        p.cost_nanos += r.cost_nanos;
        p.reference_cost_nanos += r.reference_cost_nanos;
        p.saved_nanos = p.reference_cost_nanos - p.cost_nanos;
        p.errors += i64::from(r.error_kind.is_some());
        p.fallbacks += i64::from(r.attempt > 1);
        p.failed += i64::from(r.error_kind.is_some() && !has_next(all, r));
    }
    groups.into_values().collect()
}

fn expected_latency(all: &[LedgerEntry], q: &SeriesQuery) -> Vec<LatencyPoint> {
    let mut out: BTreeMap<i64, LatencyPoint> = BTreeMap::new();
    for r in all.iter().filter(|r| in_window(r, Some(q.since_ms), Some(q.until_ms)) && r.status < 400) {
        let start_ms = bucket(q, r);
        let p = out.entry(start_ms).or_insert_with(|| LatencyPoint { start_ms, ..Default::default() });
        p.latency.counts[Histogram::slot(i64::from(r.latency_ms))] += 1;
        if let Some(t) = r.ttfb_ms {
            p.ttfb.counts[Histogram::slot(i64::from(t))] += 1;
        }
    }
    out.into_values().collect()
}

fn expected_routes(all: &[LedgerEntry], since: i64, until: i64) -> Vec<RouteGroup> {
    let mut want: BTreeMap<(Option<String>, Option<u32>, String), RouteGroup> = BTreeMap::new();
    for r in all.iter().filter(|r| in_window(r, Some(since), Some(until))) {
        let (route, feasible, model) = (route(r), feasible(r), format!("{}/{}", r.provider, r.model));
        let g = want.entry((route.clone(), feasible, model.clone())).or_insert_with(|| RouteGroup {
            route,
            feasible,
            model,
            ..Default::default()
        });
        g.first_attempts += i64::from(r.attempt == 1);
        g.fallback_attempts += i64::from(r.attempt > 1);
        g.errors += i64::from(r.error_kind.is_some());
        g.cost_nanos += r.cost_nanos;
    }
    want.into_values().collect()
}

fn expected_errors(all: &[LedgerEntry], since: i64, until: i64) -> Vec<ErrorGroup> {
    let mut want: BTreeMap<(String, String), ErrorGroup> = BTreeMap::new();
    for r in all.iter().filter(|r| in_window(r, Some(since), Some(until))) {
        let Some(kind) = r.error_kind.clone() else { continue };
        let model = format!("{}/{}", r.provider, r.model);
        let g = want.entry((kind.clone(), model.clone())).or_insert_with(|| ErrorGroup {
            error_kind: kind,
            model,
            ..Default::default()
        });
        g.attempts += 1;
        g.fell_back += i64::from(has_next(all, r));
    }
    want.into_values().collect()
}

// ---- the property ----

/// An instant within three days of `base` that often sits on (or a millisecond beside) a
/// minute, hour or day boundary.
fn instant(base: i64) -> impl Strategy<Value = i64> {
    prop_oneof![
        (-3i64..3, -1i64..=1).prop_map(move |(d, j)| base + d * DAY + j),
        (-3i64..3, -1i64..=1).prop_map(move |(h, j)| base + h * HOUR + j),
        (-180i64..180, -1i64..=1).prop_map(move |(m, j)| base + m * MIN + j),
        (-3 * HOUR..3 * HOUR).prop_map(move |o| base + o),
        (-3 * DAY..3 * DAY).prop_map(move |o| base + o),
    ]
}

/// One request: its attempts' rows (1 to 3, later attempts later). Its id is `req-{id / reuse}`:
/// with `reuse` above 1, requests share ids (as clients that send their own request ids may).
fn request(base: i64, id: usize, reuse: usize) -> impl Strategy<Value = Vec<LedgerEntry>> {
    let attempt = (
        0usize..3,
        0usize..2,
        0usize..3,
        0usize..3,
        0usize..3,
        (0u64..5_000, 0u64..2_000, 0u64..500, 0u64..4_000, 0u64..1_000),
        (0i64..2_000_000_000, 0i64..3_000_000_000),
        (proptest::option::of(0u32..150_000), 0u32..400_000),
        (any::<bool>(), 0usize..3),
        0i64..90_000,
    );
    (instant(base), proptest::collection::vec(attempt, 1..=3)).prop_map(move |(start, attempts)| {
        let mut ts = start;
        attempts
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let (
                    provider,
                    model,
                    key,
                    route,
                    error,
                    u,
                    (cost, reference),
                    (ttfb, latency),
                    (stream, estimate),
                    gap,
                ) = a;
                ts += gap;
                let key_id: Option<std::sync::Arc<str>> = [None, Some("k1"), Some("k2")][key].map(Into::into);
                let tenant_id = key_id.as_deref().map(|k| if k == "k1" { "acme".into() } else { "zeta".into() });
                let reason = match route {
                    0 => None,
                    1 => Some("route=auto chose a/x (expected $0.001); 3 feasible; runner-up a/y".to_string()),
                    _ => Some(format!(
                        "route=cheap chose b/x (expected $0.002); 7 feasible; attempt {} (fallback)",
                        i + 1
                    )),
                };
                LedgerEntry {
                    key_id,
                    tenant_id,
                    provider: ["a", "b", "c"][provider].into(),
                    model: ["x", "y"][model].into(),
                    route_reason: reason,
                    usage: Usage {
                        input_uncached: u.0,
                        input_cache_read: u.1,
                        input_cache_write: u.2,
                        output: u.3,
                        output_reasoning: u.4,
                    },
                    cost_nanos: cost,
                    reference_cost_nanos: reference,
                    ttfb_ms: ttfb,
                    latency_ms: latency,
                    status: [200, 502, 504][error],
                    error_kind: [None, Some("upstream_5xx"), Some("upstream_timeout")][error].map(String::from),
                    estimate: [None, Some(Estimate::Tokenizer), Some(Estimate::Heuristic)][estimate],
                    stream,
                    // Rows with and without an energy estimate (NULL adds 0).
                    energy_uwh: (u.0 % 2 == 0).then_some(u.0 as i64 * 3),
                    co2e_ug: (u.0 % 2 == 0).then_some(u.0 as i64),
                    ..entry(&format!("req-{}", id / reuse), i as u32 + 1, ts)
                }
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
struct Case {
    rows: Vec<LedgerEntry>,
    /// Sizes of the batches the rows are written in.
    batches: Vec<usize>,
    windows: Vec<(Option<i64>, Option<i64>)>,
}

fn case() -> impl Strategy<Value = Case> {
    // Around an hour of 2023, or around 1970 (buckets before the epoch floor downwards).
    let base = prop_oneof![Just(1_700_002_800_000i64), Just(0i64)];
    (base, 1usize..=3, any::<bool>())
        .prop_flat_map(|(base, reuse, shuffle)| {
            let requests =
                (1usize..40).prop_flat_map(move |n| (0..n).map(|i| request(base, i, reuse)).collect::<Vec<_>>());
            (requests, proptest::collection::vec(1usize..30, 1..8), any::<u64>()).prop_flat_map(
                move |(requests, batches, seed)| {
                    let mut rows: Vec<LedgerEntry> = requests.into_iter().flatten().collect();
                    if shuffle {
                        // Any order: a request's later attempt may be written before its earlier one.
                        fastrand::Rng::with_seed(seed).shuffle(&mut rows);
                    }
                    // Bounds on a row's own instant (or a millisecond either side) as often as on a
                    // minute, hour or day edge: the raw edges must keep exactly the rows they should.
                    let stamps: Vec<i64> = rows.iter().map(|r| r.ts_ms).collect();
                    let on_row = (proptest::sample::select(stamps), -1i64..=1).prop_map(|(t, j)| t + j);
                    let bound = proptest::option::weighted(0.9, prop_oneof![on_row, instant(base)]);
                    let windows = proptest::collection::vec((bound.clone(), bound), 4..8);
                    (Just(rows), Just(batches), windows)
                },
            )
        })
        .prop_map(|(rows, batches, windows)| Case { rows, batches, windows })
}

async fn check(store: &Store, ledger: &Ledger, case: &Case) {
    store.clear().await;
    let mut rest = &case.rows[..];
    for n in case.batches.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, tail) = rest.split_at((*n).min(rest.len()));
        ledger.append(batch.to_vec()).await.unwrap();
        rest = tail;
    }
    // Requests are first attempts: with unique request ids, as many as distinct ids.
    let all = ledger.report(&ReportQuery::default()).await.unwrap();
    let ids: BTreeSet<&str> = case.rows.iter().map(|r| r.request_id.as_str()).collect();
    let firsts = case.rows.iter().filter(|r| r.attempt == 1).count();
    assert_eq!(all[0].requests, firsts as i64);
    if firsts == ids.len() {
        assert_eq!(all[0].requests, ids.len() as i64, "unique ids: requests are the distinct ids");
    }

    for &(since_ms, until_ms) in &case.windows {
        for by in GroupBy::ALL {
            for key in [None, Some("k1".to_string())] {
                let q = ReportQuery { since_ms, until_ms, by, key };
                let got = ledger.report(&q).await.unwrap();
                assert_eq!(got, expected_report(&case.rows, &q), "{q:?}");
                if by != GroupBy::Route {
                    assert_eq!(got, store.raw_report(&q).await, "raw SQL, {q:?}");
                }
            }
        }
        let (Some(since_ms), Some(until_ms)) = (since_ms, until_ms) else { continue };
        for bucket_ms in [MIN, 5 * MIN, 30 * MIN, HOUR, 3 * HOUR, DAY] {
            // A minute-wide series over days is large; a few minutes of it are enough.
            let until_ms = if bucket_ms == MIN { until_ms.min(since_ms + 2 * HOUR) } else { until_ms };
            for by in [SeriesBy::Total, SeriesBy::Provider, SeriesBy::Model, SeriesBy::Tenant, SeriesBy::Key] {
                let q = SeriesQuery { since_ms, until_ms, bucket_ms, by };
                assert_eq!(ledger.series(&q).await.unwrap(), expected_series(&case.rows, &q), "{q:?}");
            }
            let q = SeriesQuery { since_ms, until_ms, bucket_ms, by: SeriesBy::Total };
            assert_eq!(ledger.latency_series(&q).await.unwrap(), expected_latency(&case.rows, &q), "{q:?}");
        }
        let mut routes = ledger.route_groups(since_ms, until_ms).await.unwrap();
        assert!(routes.windows(2).all(|w| w[0].first_attempts >= w[1].first_attempts));
        routes.sort_by(|a, b| (&a.route, a.feasible, &a.model).cmp(&(&b.route, b.feasible, &b.model)));
        assert_eq!(routes, expected_routes(&case.rows, since_ms, until_ms));
        let mut errors = ledger.error_groups(since_ms, until_ms).await.unwrap();
        assert!(errors.windows(2).all(|w| w[0].attempts >= w[1].attempts));
        errors.sort_by(|a, b| (&a.error_kind, &a.model).cmp(&(&b.error_kind, &b.model)));
        assert_eq!(errors, expected_errors(&case.rows, since_ms, until_ms));
    }
}

fn property(postgres: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = rt.block_on(Store::new(postgres, "property"));
    let ledger = rt.block_on(Ledger::open(&store.url())).unwrap();
    let cases = std::env::var("BOURSE_AGG_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&case(), |case| {
        rt.block_on(check(&store, &ledger, &case));
        Ok(())
    });
    drop(ledger);
    rt.block_on(store.drop());
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn sqlite_aggregates_equal_the_raw_rows() {
    property(false);
}

#[test]
fn postgres_aggregates_equal_the_raw_rows() {
    property(true);
}

// ---- a series by hand ----

async fn a_series_by_hand(postgres: bool) {
    let store = Store::new(postgres, "by_hand").await;
    let ledger = Ledger::open(&store.url()).await.unwrap();
    let t0 = 1_700_002_800_000; // an hour's start
    let routed = |e: LedgerEntry, n: u32| LedgerEntry {
        route_reason: Some(format!("route=auto chose a/x (expected $0.1); {n} feasible")),
        ..e
    };
    ledger
        .append(vec![
            // Hour 1: a request that fell back from a to b, and one that went to a.
            LedgerEntry {
                provider: "a".into(),
                error_kind: Some("upstream_5xx".into()),
                status: 502,
                latency_ms: 40,
                ..routed(entry("r1", 1, t0 + 10), 4)
            },
            LedgerEntry {
                provider: "b".into(),
                cost_nanos: 300,
                reference_cost_nanos: 1_000,
                ttfb_ms: Some(90),
                latency_ms: 900,
                ..routed(entry("r1", 2, t0 + 70), 4)
            },
            LedgerEntry {
                provider: "a".into(),
                cost_nanos: 100,
                reference_cost_nanos: 100,
                ttfb_ms: Some(20),
                latency_ms: 250,
                ..entry("r2", 1, t0 + 59 * MIN)
            },
            // Hour 2.
            LedgerEntry {
                provider: "b".into(),
                cost_nanos: 5,
                ttfb_ms: Some(3),
                latency_ms: 3,
                ..entry("r3", 1, t0 + HOUR)
            },
        ])
        .await
        .unwrap();
    let q = SeriesQuery { since_ms: t0, until_ms: t0 + 2 * HOUR, bucket_ms: HOUR, by: SeriesBy::Provider };
    let got = ledger.series(&q).await.unwrap();
    let summary: Vec<_> = got
        .iter()
        .map(|p| {
            let figures = [p.requests, p.attempts, p.fallbacks, p.errors, p.failed, p.cost_nanos, p.saved_nanos];
            (p.start_ms - t0, p.group.as_str(), figures)
        })
        .collect();
    assert_eq!(
        summary,
        [
            // r1 started on a and fell back to b: a request of a, a fallback of b, not failed.
            (0, "a", [2, 2, 0, 1, 0, 100, 0]),
            (0, "b", [0, 1, 1, 0, 0, 300, 700]),
            (HOUR, "b", [1, 1, 0, 0, 0, 5, -5]),
        ]
    );
    // Successful attempts only: in hour 1, latencies 900 and 250 ms, first bytes 90 and 20.
    let latency = ledger.latency_series(&q).await.unwrap();
    assert_eq!(latency.len(), 2);
    let h = &latency[0];
    assert_eq!((h.latency.total(), h.ttfb.total()), (2, 2));
    assert_eq!(h.latency.quantile(500).map(|q| q.ms()), Some(300));
    assert_eq!(h.latency.quantile(950).map(|q| q.ms()), Some(1_000));
    assert_eq!(h.ttfb.quantile(950).map(|q| q.ms()), Some(100));
    let model = |p: &str| format!("{p}/gpt-4o-mini");
    let routes = ledger.route_groups(t0, t0 + 2 * HOUR).await.unwrap();
    let routes: Vec<_> = routes
        .iter()
        .map(|g| {
            (
                g.route.as_deref(),
                g.feasible,
                g.model.clone(),
                [g.first_attempts, g.fallback_attempts, g.errors, g.cost_nanos],
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            (None, None, model("a"), [1, 0, 0, 100]),
            (None, None, model("b"), [1, 0, 0, 5]),
            (Some("auto"), Some(4), model("a"), [1, 0, 1, 0]),
            (Some("auto"), Some(4), model("b"), [0, 1, 0, 300]),
        ]
    );
    let errors = ledger.error_groups(t0, t0 + 2 * HOUR).await.unwrap();
    assert_eq!(
        errors,
        [ErrorGroup { error_kind: "upstream_5xx".into(), model: model("a"), attempts: 1, fell_back: 1 }]
    );

    // A failure in one batch and its fallback in a later one: failed until the fallback comes.
    let failure =
        LedgerEntry { error_kind: Some("upstream_timeout".into()), status: 504, ..entry("r4", 1, t0 + 2 * HOUR + 5) };
    ledger.append(vec![failure]).await.unwrap();
    let later = SeriesQuery { since_ms: t0 + 2 * HOUR, until_ms: t0 + 3 * HOUR, bucket_ms: DAY, by: SeriesBy::Total };
    assert_eq!(ledger.series(&later).await.unwrap()[0].failed, 1);
    ledger.append(vec![entry("r4", 2, t0 + 2 * HOUR + 70_000)]).await.unwrap();
    let after = ledger.series(&later).await.unwrap();
    assert_eq!((after[0].requests, after[0].attempts, after[0].failed), (1, 2, 0));
    assert_eq!(ledger.error_groups(later.since_ms, later.until_ms).await.unwrap()[0].fell_back, 1);

    // Buckets are whole minutes.
    let bad = SeriesQuery { bucket_ms: 1_000, ..q };
    assert!(ledger.series(&bad).await.unwrap_err().to_string().contains("whole number of minutes"));
    drop(ledger);
    store.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_series_by_hand() {
    a_series_by_hand(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_series_by_hand() {
    a_series_by_hand(true).await;
}

// ---- the back-fill ----

/// A ledger whose rows were stored before the aggregates existed: the migration that adds
/// them sums those rows, and reports over them are as before.
async fn migration_backfills(postgres: bool) {
    let store = Store::new(postgres, "backfill").await;
    let t0 = 1_700_002_800_000;
    let rows: Vec<LedgerEntry> = (0..500)
        .map(|i| LedgerEntry {
            key_id: Some(format!("k{}", i % 3).into()),
            provider: ["a", "b"][i % 2].into(),
            cost_nanos: 1_000 + i as i64,
            reference_cost_nanos: 5_000,
            ttfb_ms: Some(i as u32),
            latency_ms: 10 * i as u32,
            error_kind: (i % 7 == 0).then(|| "upstream_5xx".to_string()),
            status: if i % 7 == 0 { 502 } else { 200 },
            ..entry(&format!("r{}", i / 2), 1 + (i % 2) as u32, t0 + i as i64 * 37_003)
        })
        .collect();
    {
        let ledger = Ledger::open(&store.url()).await.unwrap();
        ledger.append(rows.clone()).await.unwrap();
    }
    // Back to the schema before the aggregates: their tables gone, the migration unapplied,
    // and so the later one that adds the energy columns to them (sqlite 10, postgres 9).
    let (version, energy, extra) = if postgres { (4, 9, "") } else { (5, 10, "DROP TABLE ledger_minute_ids;") };
    let drops: Vec<String> = AGGREGATE_TABLES.iter().map(|t| format!("DROP TABLE {t};")).collect();
    store
        .exec(&format!(
            "{} {extra} DELETE FROM schema_migrations WHERE version IN ({version}, {energy});",
            drops.join(" ")
        ))
        .await;
    let ledger = Ledger::open(&store.url()).await.unwrap();
    for t in AGGREGATE_TABLES {
        let sum = store.count(&format!("SELECT CAST(SUM(attempts) AS BIGINT) FROM {t}")).await;
        assert_eq!(sum, 500, "{t} was back-filled");
    }
    // The failed rows (every seventh) are not timed: the histograms count the successes.
    let successes = rows.iter().filter(|r| r.status < 400).count() as i64;
    let q = SeriesQuery { since_ms: t0, until_ms: t0 + DAY, bucket_ms: DAY, by: SeriesBy::Total };
    let day = ledger.latency_series(&q).await.unwrap();
    assert_eq!(day.iter().map(|p| p.latency.total()).sum::<i64>(), successes);
    for (since_ms, until_ms) in [(None, None), (Some(t0 + 61_001), Some(t0 + 3 * HOUR + 7)), (Some(t0 + HOUR), None)] {
        for by in GroupBy::ALL {
            let q = ReportQuery { since_ms, until_ms, by, key: None };
            assert_eq!(ledger.report(&q).await.unwrap(), expected_report(&rows, &q), "{q:?}");
        }
        let (since_ms, until_ms) = (since_ms.unwrap_or(t0), until_ms.unwrap_or(t0 + 6 * HOUR));
        let q = SeriesQuery { since_ms, until_ms, bucket_ms: HOUR, by: SeriesBy::Provider };
        assert_eq!(ledger.series(&q).await.unwrap(), expected_series(&rows, &q));
        assert_eq!(ledger.latency_series(&q).await.unwrap(), expected_latency(&rows, &q));
        let mut errors = ledger.error_groups(since_ms, until_ms).await.unwrap();
        errors.sort_by(|a, b| (&a.error_kind, &a.model).cmp(&(&b.error_kind, &b.model)));
        assert_eq!(errors, expected_errors(&rows, since_ms, until_ms), "back-filled failures");
    }
    // New rows add to the back-filled sums.
    ledger.append(vec![LedgerEntry { cost_nanos: 7, ..entry("new", 1, t0 + 10) }]).await.unwrap();
    let q = ReportQuery::default();
    let mut with_new = rows.clone();
    with_new.push(LedgerEntry { cost_nanos: 7, ..entry("new", 1, t0 + 10) });
    assert_eq!(ledger.report(&q).await.unwrap(), expected_report(&with_new, &q));
    drop(ledger);
    store.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migration_backfills() {
    migration_backfills(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migration_backfills() {
    migration_backfills(true).await;
}
