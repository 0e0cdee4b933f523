//! Time series and routing summaries over the ledger, for the dashboard: spend, savings,
//! requests and failures per time bucket, latency histograms per bucket, and what the router
//! decided (routes, feasible counts, why attempts fell back).
//!
//! Every query here reads the raw rows of `[since_ms, until_ms)` and returns exact integer
//! sums; bucket starts are multiples of the bucket width since the Unix epoch (UTC), so a
//! caller that aligns its window to the width gets whole buckets. Both stores run the same
//! SQL text (`series_sql!` and friends): only placeholders, the string-search function and
//! the SUM cast differ, as in the reports.
//!
//! Latency percentiles come from fixed histograms ([`LATENCY_BOUNDS_MS`]): a percentile is
//! reported as the bound of the bucket it falls in ("under 300 ms"), which is exact about
//! what it claims and adds up across buckets and stores by plain integer addition.
//!
//! Routing facts are read back from the route reason each routed attempt stores
//! (`route=NAME chose MODEL (expected $X); N feasible; ...`, written by
//! `route::Router::reason`); rows without one were requests that named their model.

use super::{Ledger, LedgerError};
use rusqlite::params;

/// How series points are grouped within each bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeriesBy {
    /// One group, `(all)`.
    #[default]
    Total,
    Provider,
    /// `provider/model`.
    Model,
    /// The virtual key's tenant, `(none)` for config keys.
    Tenant,
    /// The gateway key id, `(none)` without one.
    Key,
}

/// Rows in `since_ms <= ts_ms < until_ms`, cut into buckets of `bucket_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesQuery {
    pub since_ms: i64,
    pub until_ms: i64,
    /// Bucket width in milliseconds (below 1 is taken as 1).
    pub bucket_ms: i64,
    pub by: SeriesBy,
}

/// One group's totals in one bucket. Buckets without rows are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeriesPoint {
    /// The bucket's start: a multiple of the width, Unix milliseconds.
    pub start_ms: i64,
    pub group: String,
    /// Distinct request ids with an attempt in this bucket and group.
    pub requests: i64,
    /// Rows (upstream attempts, fallbacks included).
    pub attempts: i64,
    pub cost_nanos: i64,
    pub reference_cost_nanos: i64,
    /// `reference_cost_nanos - cost_nanos`.
    pub saved_nanos: i64,
    /// Attempts that ended with an error kind.
    pub errors: i64,
    /// Attempts after a request's first (fallbacks).
    pub fallbacks: i64,
    /// Attempts that ended with an error and were their request's last: what the client saw
    /// fail.
    pub failed: i64,
}

/// Upper bounds (exclusive, milliseconds) of the latency histogram's buckets; one more
/// bucket holds everything at or above the last bound. Steps of about 1.5× keep a
/// percentile within one step of the true value.
pub const LATENCY_BOUNDS_MS: [i64; 30] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1_000, 1_500, 2_000, 3_000, 5_000, 7_000,
    10_000, 15_000, 20_000, 30_000, 60_000, 120_000, 300_000,
];

/// Counts of values per [`LATENCY_BOUNDS_MS`] bucket (the last slot: at or above the last
/// bound).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    pub counts: [i64; LATENCY_BOUNDS_MS.len() + 1],
}

/// Where a percentile falls: under a bound, or beyond the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantile {
    UnderMs(i64),
    AtLeastMs(i64),
}

impl Quantile {
    /// The bound in milliseconds, for plotting.
    pub fn ms(self) -> i64 {
        match self {
            Quantile::UnderMs(v) | Quantile::AtLeastMs(v) => v,
        }
    }
}

impl Histogram {
    pub fn total(&self) -> i64 {
        self.counts.iter().sum()
    }

    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }

    /// The bucket holding the value of rank ⌈n × permille / 1000⌉ (1-based), None when
    /// empty. `quantile(500)` is the median, `quantile(950)` the p95.
    pub fn quantile(&self, permille: u32) -> Option<Quantile> {
        let n = self.total();
        if n == 0 {
            return None;
        }
        let rank = ((i128::from(n) * i128::from(permille) + 999) / 1000).max(1);
        let mut seen = 0i128;
        for (i, c) in self.counts.iter().enumerate() {
            seen += i128::from(*c);
            if seen >= rank {
                return Some(match LATENCY_BOUNDS_MS.get(i) {
                    Some(b) => Quantile::UnderMs(*b),
                    None => Quantile::AtLeastMs(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1]),
                });
            }
        }
        None
    }

    /// The slot a value goes in (what the SQL's `CASE` computes).
    pub fn slot(ms: i64) -> usize {
        LATENCY_BOUNDS_MS.iter().position(|b| ms < *b).unwrap_or(LATENCY_BOUNDS_MS.len())
    }

    /// Slot from the bound the SQL returns (`-1`: beyond the last).
    fn slot_of_bound(bound: i64) -> Result<usize, LedgerError> {
        if bound == -1 {
            return Ok(LATENCY_BOUNDS_MS.len());
        }
        LATENCY_BOUNDS_MS
            .iter()
            .position(|b| *b == bound)
            .ok_or_else(|| LedgerError::Corrupt(format!("latency bucket bound {bound} is not a known bound")))
    }
}

/// Time to first byte and total latency of the successful attempts (status below 400) in one
/// bucket. Attempts without a first byte (non-streaming answers report none) count only in
/// `latency`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyPoint {
    pub start_ms: i64,
    pub ttfb: Histogram,
    pub latency: Histogram,
}

/// Attempts of one route, feasible count and model (the model the attempt went to).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteGroup {
    /// The route's name; None for requests that named their model.
    pub route: Option<String>,
    /// How many models were feasible when the request was planned (None when not routed, or
    /// the reason cannot be read).
    pub feasible: Option<u32>,
    /// `provider/model`.
    pub model: String,
    /// First attempts: one per request.
    pub first_attempts: i64,
    /// Later attempts (fallbacks) that went to this model.
    pub fallback_attempts: i64,
    pub errors: i64,
    pub cost_nanos: i64,
}

/// Failed attempts of one error kind on one model, and how many of them were followed by a
/// fallback to another attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorGroup {
    pub error_kind: String,
    /// `provider/model`.
    pub model: String,
    pub attempts: i64,
    pub fell_back: i64,
}

/// The series query for one grouping, from literals (no text formatted into SQL at run
/// time). `later` is true when the request has an attempt after this row's: the
/// `(request_id, attempt)` index answers it.
macro_rules! series_sql {
    ($by:expr, sum_cast: $cast:literal, since: $since:literal, until: $until:literal, width: $width:literal) => {
        match $by {
            SeriesBy::Total => series_sql!(@ "CAST('(all)' AS TEXT)", $cast, $since, $until, $width),
            SeriesBy::Provider => series_sql!(@ "provider", $cast, $since, $until, $width),
            SeriesBy::Model => series_sql!(@ "provider || '/' || model", $cast, $since, $until, $width),
            SeriesBy::Tenant => series_sql!(@ "COALESCE(tenant_id, '(none)')", $cast, $since, $until, $width),
            SeriesBy::Key => series_sql!(@ "COALESCE(key_id, '(none)')", $cast, $since, $until, $width),
        }
    };
    (@ $group:literal, $cast:literal, $since:literal, $until:literal, $width:literal) => {
        concat!(
            "SELECT ts_ms - ts_ms % ", $width, " AS bucket, ", $group, " AS grp, COUNT(DISTINCT request_id), COUNT(*), ",
            "SUM(cost_nanos)", $cast, ", SUM(reference_cost_nanos)", $cast, ", COUNT(error_kind), ",
            "COUNT(*) FILTER (WHERE attempt > 1), ",
            "COUNT(*) FILTER (WHERE error_kind IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ledger AS later ",
            "WHERE later.request_id = ledger.request_id AND later.attempt = ledger.attempt + 1)) ",
            "FROM ledger WHERE ts_ms >= ", $since, " AND ts_ms < ", $until, " GROUP BY 1, 2"
        )
    };
}

/// `CASE` giving the bound of [`LATENCY_BOUNDS_MS`] a column's value falls under (`-1`
/// beyond the last). The bounds are written out here and checked against the constant by
/// the tests.
macro_rules! bound_case {
    ($col:literal) => {
        concat!(
            "CASE WHEN ",
            $col,
            " < 1 THEN 1 WHEN ",
            $col,
            " < 2 THEN 2 WHEN ",
            $col,
            " < 3 THEN 3 WHEN ",
            $col,
            " < 5 THEN 5 WHEN ",
            $col,
            " < 7 THEN 7 WHEN ",
            $col,
            " < 10 THEN 10 WHEN ",
            $col,
            " < 15 THEN 15 WHEN ",
            $col,
            " < 20 THEN 20 WHEN ",
            $col,
            " < 30 THEN 30 WHEN ",
            $col,
            " < 50 THEN 50 WHEN ",
            $col,
            " < 70 THEN 70 WHEN ",
            $col,
            " < 100 THEN 100 WHEN ",
            $col,
            " < 150 THEN 150 WHEN ",
            $col,
            " < 200 THEN 200 WHEN ",
            $col,
            " < 300 THEN 300 WHEN ",
            $col,
            " < 500 THEN 500 WHEN ",
            $col,
            " < 700 THEN 700 WHEN ",
            $col,
            " < 1000 THEN 1000 WHEN ",
            $col,
            " < 1500 THEN 1500 WHEN ",
            $col,
            " < 2000 THEN 2000 WHEN ",
            $col,
            " < 3000 THEN 3000 WHEN ",
            $col,
            " < 5000 THEN 5000 WHEN ",
            $col,
            " < 7000 THEN 7000 WHEN ",
            $col,
            " < 10000 THEN 10000 WHEN ",
            $col,
            " < 15000 THEN 15000 WHEN ",
            $col,
            " < 20000 THEN 20000 WHEN ",
            $col,
            " < 30000 THEN 30000 WHEN ",
            $col,
            " < 60000 THEN 60000 WHEN ",
            $col,
            " < 120000 THEN 120000 WHEN ",
            $col,
            " < 300000 THEN 300000 ELSE -1 END"
        )
    };
}

/// Histogram rows of one latency column: (bucket, bound, count); only successful attempts
/// count.
macro_rules! latency_sql {
    ($col:literal, since: $since:literal, until: $until:literal, width: $width:literal) => {
        concat!(
            "SELECT ts_ms - ts_ms % ",
            $width,
            " AS bucket, ",
            bound_case!($col),
            " AS bound, COUNT(*) FROM ledger ",
            "WHERE ts_ms >= ",
            $since,
            " AND ts_ms < ",
            $until,
            " AND status < 400 AND ",
            $col,
            " IS NOT NULL ",
            "GROUP BY 1, 2"
        )
    };
}

/// The route's name and the feasible count, cut out of `route_reason` with the store's
/// string search (`instr` in SQLite, `strpos` in PostgreSQL): text up to " chose " after
/// `route=`, and the text between the first "); " and " feasible".
macro_rules! routes_sql {
    (find: $find:literal, sum_cast: $cast:literal, since: $since:literal, until: $until:literal) => {
        concat!(
            "SELECT CASE WHEN route_reason LIKE 'route=%' AND ",
            $find,
            "(route_reason, ' chose ') > 7 ",
            "THEN substr(route_reason, 7, ",
            $find,
            "(route_reason, ' chose ') - 7) END AS route, ",
            "CASE WHEN ",
            $find,
            "(route_reason, '); ') > 0 AND ",
            $find,
            "(route_reason, ' feasible') > ",
            $find,
            "(route_reason, '); ') THEN substr(route_reason, ",
            $find,
            "(route_reason, '); ') + 3, ",
            $find,
            "(route_reason, ' feasible') - ",
            $find,
            "(route_reason, '); ') - 3) END AS feasible, ",
            "provider || '/' || model, COUNT(*) FILTER (WHERE attempt = 1), COUNT(*) FILTER (WHERE attempt > 1), ",
            "COUNT(error_kind), SUM(cost_nanos)",
            $cast,
            " FROM ledger WHERE ts_ms >= ",
            $since,
            " AND ts_ms < ",
            $until,
            " GROUP BY 1, 2, 3"
        )
    };
}

macro_rules! errors_sql {
    (since: $since:literal, until: $until:literal) => {
        concat!(
            "SELECT error_kind, provider || '/' || model, COUNT(*), COUNT(*) FILTER (WHERE EXISTS (SELECT 1 ",
            "FROM ledger AS later WHERE later.request_id = ledger.request_id AND later.attempt = ledger.attempt + 1)) ",
            "FROM ledger WHERE ts_ms >= ",
            $since,
            " AND ts_ms < ",
            $until,
            " AND error_kind IS NOT NULL GROUP BY 1, 2"
        )
    };
}

const SQLITE_TTFB: &str = latency_sql!("ttfb_ms", since: "?1", until: "?2", width: "?3");
const SQLITE_LATENCY: &str = latency_sql!("latency_ms", since: "?1", until: "?2", width: "?3");
const PG_TTFB: &str = latency_sql!("ttfb_ms", since: "$1::bigint", until: "$2::bigint", width: "$3::bigint");
const PG_LATENCY: &str = latency_sql!("latency_ms", since: "$1::bigint", until: "$2::bigint", width: "$3::bigint");
const SQLITE_ROUTES: &str = routes_sql!(find: "instr", sum_cast: "", since: "?1", until: "?2");
const PG_ROUTES: &str = routes_sql!(find: "strpos", sum_cast: "::bigint", since: "$1::bigint", until: "$2::bigint");
const SQLITE_ERRORS: &str = errors_sql!(since: "?1", until: "?2");
const PG_ERRORS: &str = errors_sql!(since: "$1::bigint", until: "$2::bigint");

fn point(start_ms: i64, group: String, s: [i64; 7]) -> SeriesPoint {
    let [requests, attempts, cost_nanos, reference_cost_nanos, errors, fallbacks, failed] = s;
    SeriesPoint {
        start_ms,
        group,
        requests,
        attempts,
        cost_nanos,
        reference_cost_nanos,
        saved_nanos: reference_cost_nanos.saturating_sub(cost_nanos),
        errors,
        fallbacks,
        failed,
    }
}

/// Sorted by bucket, then group.
fn sorted(mut points: Vec<SeriesPoint>) -> Vec<SeriesPoint> {
    points.sort_by(|a, b| a.start_ms.cmp(&b.start_ms).then_with(|| a.group.cmp(&b.group)));
    points
}

/// Folds `(bucket, which, bound, count)` rows into points sorted by bucket.
fn latency_points(rows: Vec<(i64, bool, i64, i64)>) -> Result<Vec<LatencyPoint>, LedgerError> {
    let mut by_bucket: std::collections::BTreeMap<i64, LatencyPoint> = Default::default();
    for (bucket, is_ttfb, bound, count) in rows {
        let p = by_bucket.entry(bucket).or_insert_with(|| LatencyPoint { start_ms: bucket, ..Default::default() });
        let h = if is_ttfb { &mut p.ttfb } else { &mut p.latency };
        h.counts[Histogram::slot_of_bound(bound)?] += count;
    }
    Ok(by_bucket.into_values().collect())
}

fn route_group(route: Option<String>, feasible: Option<String>, model: String, s: [i64; 4]) -> RouteGroup {
    let [first_attempts, fallback_attempts, errors, cost_nanos] = s;
    RouteGroup {
        route,
        feasible: feasible.and_then(|f| f.trim().parse().ok()),
        model,
        first_attempts,
        fallback_attempts,
        errors,
        cost_nanos,
    }
}

impl Ledger {
    /// Spend, savings, requests, errors, fallbacks and failures per bucket and group, sorted
    /// by bucket then group.
    pub async fn series(&self, q: &SeriesQuery) -> Result<Vec<SeriesPoint>, LedgerError> {
        let SeriesQuery { since_ms, until_ms, bucket_ms, by } = *q;
        let bucket_ms = bucket_ms.max(1);
        let points = match self {
            Ledger::Sqlite(s) => {
                let sql = series_sql!(by, sum_cast: "", since: "?1", until: "?2", width: "?3");
                s.read(move |conn| {
                    let mut stmt = conn.prepare_cached(sql)?;
                    let mut rows = stmt.query(params![since_ms, until_ms, bucket_ms])?;
                    let mut out = Vec::new();
                    while let Some(row) = rows.next()? {
                        let mut sums = [0i64; 7];
                        for (i, v) in sums.iter_mut().enumerate() {
                            *v = row.get(i + 2)?;
                        }
                        out.push(point(row.get(0)?, row.get(1)?, sums));
                    }
                    Ok(out)
                })
                .await?
            }
            Ledger::Postgres(p) => {
                let sql = series_sql!(by, sum_cast: "::bigint", since: "$1::bigint", until: "$2::bigint", width: "$3::bigint");
                let client = p.client().await?;
                let rows = client.query(sql, &[&since_ms, &until_ms, &bucket_ms]).await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    let mut sums = [0i64; 7];
                    for (i, v) in sums.iter_mut().enumerate() {
                        *v = row.try_get(i + 2)?;
                    }
                    out.push(point(row.try_get(0)?, row.try_get(1)?, sums));
                }
                out
            }
        };
        Ok(sorted(points))
    }

    /// TTFB and latency histograms of successful attempts per bucket (`q.by` is ignored: one
    /// histogram pair per bucket), sorted by bucket.
    pub async fn latency_series(&self, q: &SeriesQuery) -> Result<Vec<LatencyPoint>, LedgerError> {
        let SeriesQuery { since_ms, until_ms, bucket_ms, .. } = *q;
        let bucket_ms = bucket_ms.max(1);
        let rows = match self {
            Ledger::Sqlite(s) => {
                s.read(move |conn| {
                    let mut out = Vec::new();
                    for (sql, is_ttfb) in [(SQLITE_TTFB, true), (SQLITE_LATENCY, false)] {
                        let mut stmt = conn.prepare_cached(sql)?;
                        let mut rows = stmt.query(params![since_ms, until_ms, bucket_ms])?;
                        while let Some(row) = rows.next()? {
                            out.push((row.get(0)?, is_ttfb, row.get(1)?, row.get(2)?));
                        }
                    }
                    Ok(out)
                })
                .await?
            }
            Ledger::Postgres(p) => {
                let client = p.client().await?;
                let mut out = Vec::new();
                for (sql, is_ttfb) in [(PG_TTFB, true), (PG_LATENCY, false)] {
                    for row in client.query(sql, &[&since_ms, &until_ms, &bucket_ms]).await? {
                        // The CASE yields integer literals: int4 in PostgreSQL.
                        let bound: i32 = row.try_get(1)?;
                        out.push((row.try_get(0)?, is_ttfb, i64::from(bound), row.try_get(2)?));
                    }
                }
                out
            }
        };
        latency_points(rows)
    }

    /// Attempts in `[since_ms, until_ms)` by route, feasible count and model, most first
    /// attempts first (then route, feasible count, model).
    pub async fn route_groups(&self, since_ms: i64, until_ms: i64) -> Result<Vec<RouteGroup>, LedgerError> {
        let mut groups = match self {
            Ledger::Sqlite(s) => {
                s.read(move |conn| {
                    let mut stmt = conn.prepare_cached(SQLITE_ROUTES)?;
                    let mut rows = stmt.query(params![since_ms, until_ms])?;
                    let mut out = Vec::new();
                    while let Some(row) = rows.next()? {
                        let sums = [row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?];
                        out.push(route_group(row.get(0)?, row.get(1)?, row.get(2)?, sums));
                    }
                    Ok(out)
                })
                .await?
            }
            Ledger::Postgres(p) => {
                let client = p.client().await?;
                let rows = client.query(PG_ROUTES, &[&since_ms, &until_ms]).await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    let sums = [row.try_get(3)?, row.try_get(4)?, row.try_get(5)?, row.try_get(6)?];
                    out.push(route_group(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, sums));
                }
                out
            }
        };
        groups.sort_by(|a, b| {
            b.first_attempts
                .cmp(&a.first_attempts)
                .then_with(|| a.route.cmp(&b.route))
                .then_with(|| a.feasible.cmp(&b.feasible))
                .then_with(|| a.model.cmp(&b.model))
        });
        Ok(groups)
    }

    /// Failed attempts in `[since_ms, until_ms)` by error kind and model, most first.
    pub async fn error_groups(&self, since_ms: i64, until_ms: i64) -> Result<Vec<ErrorGroup>, LedgerError> {
        let mut groups = match self {
            Ledger::Sqlite(s) => {
                s.read(move |conn| {
                    let mut stmt = conn.prepare_cached(SQLITE_ERRORS)?;
                    let mut rows = stmt.query(params![since_ms, until_ms])?;
                    let mut out = Vec::new();
                    while let Some(row) = rows.next()? {
                        out.push(ErrorGroup {
                            error_kind: row.get(0)?,
                            model: row.get(1)?,
                            attempts: row.get(2)?,
                            fell_back: row.get(3)?,
                        });
                    }
                    Ok(out)
                })
                .await?
            }
            Ledger::Postgres(p) => {
                let client = p.client().await?;
                let rows = client.query(PG_ERRORS, &[&since_ms, &until_ms]).await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    out.push(ErrorGroup {
                        error_kind: row.try_get(0)?,
                        model: row.try_get(1)?,
                        attempts: row.try_get(2)?,
                        fell_back: row.try_get(3)?,
                    });
                }
                out
            }
        };
        groups.sort_by(|a, b| {
            b.attempts
                .cmp(&a.attempts)
                .then_with(|| a.error_kind.cmp(&b.error_kind))
                .then_with(|| a.model.cmp(&b.model))
        });
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_fall_in_the_bucket_of_their_rank() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(500), None);
        // 10 values under 100 ms, 10 under 300 ms: the median is the 10th, under 100.
        h.counts[Histogram::slot(99)] += 10;
        h.counts[Histogram::slot(250)] += 10;
        assert_eq!(h.quantile(500), Some(Quantile::UnderMs(100)));
        assert_eq!(h.quantile(501), Some(Quantile::UnderMs(300)));
        assert_eq!(h.quantile(950), Some(Quantile::UnderMs(300)));
        h.counts[Histogram::slot(400_000)] += 100;
        assert_eq!(h.quantile(950), Some(Quantile::AtLeastMs(300_000)));
        assert_eq!(Histogram::slot(0), 0);
        assert_eq!(Histogram::slot(1), 1);
        assert_eq!(Histogram::slot(299_999), LATENCY_BOUNDS_MS.len() - 1);
        assert_eq!(Histogram::slot(300_000), LATENCY_BOUNDS_MS.len());
    }

    /// The bounds the SQL `CASE` is written with are the constant's, value for value.
    #[test]
    fn the_sql_case_follows_the_bounds() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let sql = concat!("SELECT ", bound_case!("?1"));
        for ms in (0..=400_000i64).step_by(1).filter(|v| *v < 1_000 || v % 250 == 0) {
            let bound: i64 = conn.query_row(sql, [ms], |r| r.get(0)).unwrap();
            let want = LATENCY_BOUNDS_MS.get(Histogram::slot(ms)).copied().unwrap_or(-1);
            assert_eq!(bound, want, "{ms} ms");
        }
        for b in LATENCY_BOUNDS_MS {
            for ms in [b - 1, b] {
                let bound: i64 = conn.query_row(sql, [ms], |r| r.get(0)).unwrap();
                assert_eq!(Histogram::slot_of_bound(bound).unwrap(), Histogram::slot(ms), "{ms} ms");
            }
        }
    }
}
