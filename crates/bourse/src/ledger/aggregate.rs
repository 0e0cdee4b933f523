//! Per-minute, per-hour and per-day aggregates kept beside the raw rows, so reports and the
//! dashboard read thousands of summary rows instead of millions of attempts.
//!
//! # What is kept
//!
//! Every row adds to four families of tables ([`Family`]), each cut by the dimensions one
//! kind of question groups by, so no question reads a table multiplied by dimensions it
//! does not ask about (keys times models times routes would be nearly as many rows as the
//! ledger):
//!
//! - **models** (`models_minute`, `_hour`, `_day`): by provider and model, with the
//!   time-to-first-byte and latency histograms of successful attempts ([`Histogram`]: fixed
//!   buckets, so percentiles come from integer counts). Answers the groupings by model,
//!   provider, day and none, and the latency series.
//! - **routes** (`routes_minute`, `_hour`, `_day`): by provider, model, route, feasible count
//!   and error kind. Answers the groupings by route and by error, and the routing summaries.
//! - **keys** (`keys_minute`, `_hour`, `_day`): by key and tenant. Answers the groupings by
//!   key, tenant, day or none, for everyone or for one key.
//! - **usage** (`usage_minute`, `_hour`, `_day`): by every dimension but the feasible count,
//!   stored key first. Answers one key's usage by model, provider, route or error.
//!
//! Each carries the same exact integer sums ([`UsageSums`]): requests, attempts, fallbacks,
//! errors, failed requests, estimated rows, the five token counts, nano-USD cost and
//! reference cost, and the energy estimate (µWh, µg CO2e; rows written before the estimate
//! existed add 0). A bucket is named by its first Unix millisecond, floored (rows before 1970
//! land in the right bucket too); days are UTC days. Absent key, tenant, route, feasible
//! count and error kind are stored as `''`.
//!
//! # Invariants
//!
//! - The aggregates of a batch are written in the same transaction as its raw rows (both
//!   stores), so they never disagree; existing ledgers are back-filled by the migration that
//!   creates them, through this same code.
//! - A batch is pre-summed here, in memory: one upsert per group per table, not per row.
//! - `requests` counts the rows of first attempts (`attempt = 1`). It is additive (a sum over
//!   buckets), unlike a count of distinct request ids, and equals that count when request ids
//!   are unique and every request's first attempt was recorded. A request that fell back is
//!   counted under the model it was first sent to; its fallbacks count under theirs.
//! - `failed` counts the attempts that ended in an error and are their request's last: no row
//!   of the same request id has the next attempt number. A failed attempt is written before
//!   the gateway knows whether it will fall back, so the store looks each batch's rows up
//!   against the rows already written ([`Fact::failed`]), and a later attempt takes its
//!   predecessor out of `failed` (a correction, [`Aggregates::of`]): the sums hold for any
//!   order and batching of the rows.
//!
//! # Answering a window
//!
//! [`segments`] cuts `[since, until)` into whole days (day rows), the whole hours at either
//! end (hour rows), the whole minutes beyond them (minute rows) and the parts of a minute
//! at the very edges (raw rows, at most one minute's worth each side): answers are exact for
//! any bounds, to the millisecond.

use super::LedgerEntry;
use std::collections::HashMap;

pub(crate) const MINUTE_MS: i64 = 60_000;
pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 86_400_000;

/// The resolution of an aggregate table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Grain {
    Minute,
    Hour,
    Day,
}

impl Grain {
    /// Coarsest first: the order [`segments`] tries them in.
    pub(crate) const ALL: [Grain; 3] = [Grain::Day, Grain::Hour, Grain::Minute];

    pub(crate) fn ms(self) -> i64 {
        match self {
            Grain::Minute => MINUTE_MS,
            Grain::Hour => HOUR_MS,
            Grain::Day => DAY_MS,
        }
    }

    /// The start of the bucket holding `ts_ms`.
    pub(crate) fn floor(self, ts_ms: i64) -> i64 {
        floor_to(ts_ms, self.ms())
    }
}

/// `x` rounded down to a multiple of `unit` (> 0); the few instants below i64's lowest
/// multiple go to i64::MIN rather than overflowing.
pub(crate) fn floor_to(x: i64, unit: i64) -> i64 {
    x.checked_sub(x.rem_euclid(unit)).unwrap_or(i64::MIN)
}

/// The dimensions of a row, in the order of [`Group::dims`].
pub(crate) const DIMS: [&str; 7] = ["provider", "model", "key_id", "tenant_id", "route", "feasible", "error_kind"];

/// A family of aggregate tables: which dimensions its rows are keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    /// Provider and model; with timing histograms.
    Models,
    /// Provider, model, route, feasible count and error kind.
    Routes,
    /// Key and tenant.
    Keys,
    /// Every dimension but the feasible count.
    Usage,
}

impl Family {
    pub(crate) const ALL: [Family; 4] = [Family::Models, Family::Routes, Family::Keys, Family::Usage];

    /// The table of one grain (e.g. `models_hour`).
    pub(crate) fn table(self, g: Grain) -> &'static str {
        const NAMES: [[&str; 3]; 4] = [
            ["models_minute", "models_hour", "models_day"],
            ["routes_minute", "routes_hour", "routes_day"],
            ["keys_minute", "keys_hour", "keys_day"],
            ["usage_minute", "usage_hour", "usage_day"],
        ];
        NAMES[self as usize][g as usize]
    }

    /// Which of a row's [`DIMS`] (by index) key this family's rows.
    pub(crate) fn dims(self) -> &'static [usize] {
        match self {
            Family::Models => &[0, 1],
            Family::Routes => &[0, 1, 4, 5, 6],
            Family::Keys => &[2, 3],
            Family::Usage => &[0, 1, 2, 3, 4, 6],
        }
    }

    /// Whether its rows also hold timing histograms.
    pub(crate) fn timed(self) -> bool {
        self == Family::Models
    }

    /// How many values a row of its tables holds (see [`Group::values`]).
    pub(crate) fn value_count(self) -> usize {
        UsageSums::COLUMNS.len() + if self.timed() { TIMING_VALUES } else { 0 }
    }
}

/// Sums read back from a grouped read: the usage sums, then with `timed` the timing
/// histograms (the order [`Group::values`] writes them in).
pub(crate) fn read_sums(timed: bool, v: &[i64]) -> (UsageSums, Option<TimingSums>) {
    let n = UsageSums::COLUMNS.len();
    let mut u = [0; UsageSums::COLUMNS.len()];
    u.copy_from_slice(&v[..n]);
    (UsageSums::from_values(u), timed.then(|| TimingSums::from_values(&v[n..])))
}

/// Every aggregate table, in the order [`Aggregates::tables`] holds them: by family, finest
/// grain first.
pub(crate) fn tables() -> impl Iterator<Item = (Family, Grain)> {
    Family::ALL.into_iter().flat_map(|f| Grain::ALL.iter().rev().map(move |&g| (f, g)))
}

/// Upper bounds (exclusive, milliseconds) of the latency histograms' buckets; one more
/// bucket holds everything at or above the last bound. Steps of about 1.5× keep a
/// percentile within one step of the true value.
pub const LATENCY_BOUNDS_MS: [i64; 30] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1_000, 1_500, 2_000, 3_000, 5_000, 7_000,
    10_000, 15_000, 20_000, 30_000, 60_000, 120_000, 300_000,
];

/// Buckets per histogram.
const SLOTS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Counts of values per [`LATENCY_BOUNDS_MS`] bucket (the last slot: at or above the last
/// bound).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub counts: [i64; SLOTS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: [0; SLOTS] }
    }
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
        self.counts.iter().fold(0, |a: i64, c| a.saturating_add(*c))
    }

    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.saturating_add(b);
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

    /// The slot a value goes in.
    pub fn slot(ms: i64) -> usize {
        LATENCY_BOUNDS_MS.partition_point(|b| *b <= ms)
    }
}

/// The route a row was routed by, from its route reason (`route=NAME chose ...`, written by
/// `route::Router::reason`); `''` when the client named a model.
pub(crate) fn route_of(reason: Option<&str>) -> &str {
    reason.and_then(|r| r.strip_prefix("route=")).map(|r| r.split_once(' ').map_or(r, |(name, _)| name)).unwrap_or("")
}

/// How many models were feasible for a routed row (the digits of `...; N feasible`), `''`
/// when not routed (or not said).
pub(crate) fn feasible_of(reason: Option<&str>) -> &str {
    let Some(r) = reason else { return "" };
    let Some(end) = r.find(" feasible") else { return "" };
    let start = r[..end].rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
    let digits = &r[start..end];
    if digits.is_empty() || !r[..start].ends_with(' ') {
        return "";
    }
    digits
}

/// Adds without overflowing: sums of absurd (saturated) token counts stay at the maximum
/// instead of failing every later batch of their bucket.
fn add(a: &mut i64, b: i64) {
    *a = a.saturating_add(b);
}

/// The exact sums of a group. Column order: [`UsageSums::COLUMNS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct UsageSums {
    /// First attempts.
    pub requests: i64,
    pub attempts: i64,
    /// Attempts after the first of their request.
    pub fallbacks: i64,
    /// Attempts that ended with an error kind.
    pub errors: i64,
    /// Errors that were their request's last attempt.
    pub failed: i64,
    pub estimated: i64,
    pub input_uncached: i64,
    pub input_cache_read: i64,
    pub input_cache_write: i64,
    pub output: i64,
    pub output_reasoning: i64,
    pub cost_nanos: i64,
    pub reference_cost_nanos: i64,
    /// Estimated energy, micro-watt-hours (`LedgerEntry::energy_uwh`; none counts 0).
    pub energy_uwh: i64,
    /// Estimated emissions, micrograms CO2e.
    pub co2e_ug: i64,
}

impl UsageSums {
    pub(crate) const COLUMNS: [&'static str; 15] = [
        "requests",
        "attempts",
        "fallbacks",
        "errors",
        "failed",
        "estimated",
        "input_uncached",
        "input_cache_read",
        "input_cache_write",
        "output",
        "output_reasoning",
        "cost_nanos",
        "reference_cost_nanos",
        "energy_uwh",
        "co2e_ug",
    ];

    /// One row's sums; `failed`: whether it is a failed request's last attempt.
    pub(crate) fn of(r: &LedgerEntry, failed: bool) -> UsageSums {
        let u = &r.usage;
        UsageSums {
            requests: i64::from(r.attempt == 1),
            attempts: 1,
            fallbacks: i64::from(r.attempt > 1),
            errors: i64::from(r.error_kind.is_some()),
            failed: i64::from(failed),
            estimated: i64::from(r.estimated()),
            input_uncached: super::count_to_db(u.input_uncached),
            input_cache_read: super::count_to_db(u.input_cache_read),
            input_cache_write: super::count_to_db(u.input_cache_write),
            output: super::count_to_db(u.output),
            output_reasoning: super::count_to_db(u.output_reasoning),
            cost_nanos: r.cost_nanos,
            reference_cost_nanos: r.reference_cost_nanos,
            energy_uwh: r.energy_uwh.unwrap_or(0),
            co2e_ug: r.co2e_ug.unwrap_or(0),
        }
    }

    pub(crate) fn values(&self) -> [i64; 15] {
        [
            self.requests,
            self.attempts,
            self.fallbacks,
            self.errors,
            self.failed,
            self.estimated,
            self.input_uncached,
            self.input_cache_read,
            self.input_cache_write,
            self.output,
            self.output_reasoning,
            self.cost_nanos,
            self.reference_cost_nanos,
            self.energy_uwh,
            self.co2e_ug,
        ]
    }

    pub(crate) fn from_values(v: [i64; 15]) -> UsageSums {
        let [requests, attempts, fallbacks, errors, failed, estimated, input_uncached, input_cache_read, input_cache_write, output, output_reasoning, cost_nanos, reference_cost_nanos, energy_uwh, co2e_ug] =
            v;
        UsageSums {
            requests,
            attempts,
            fallbacks,
            errors,
            failed,
            estimated,
            input_uncached,
            input_cache_read,
            input_cache_write,
            output,
            output_reasoning,
            cost_nanos,
            reference_cost_nanos,
            energy_uwh,
            co2e_ug,
        }
    }

    pub(crate) fn merge(&mut self, o: &UsageSums) {
        let mut v = self.values();
        for (a, b) in v.iter_mut().zip(o.values()) {
            add(a, b);
        }
        *self = UsageSums::from_values(v);
    }
}

/// Time to first byte and latency of a group's successful attempts (status below 400; an
/// answer without a first byte counts in `latency` only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TimingSums {
    pub ttfb: Histogram,
    pub latency: Histogram,
}

/// Values per timing group: both histograms.
pub(crate) const TIMING_VALUES: usize = 2 * SLOTS;

impl TimingSums {
    /// The stored columns, in [`TimingSums::values`] order.
    pub(crate) fn columns() -> &'static [String] {
        static COLUMNS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        COLUMNS.get_or_init(|| {
            let mut c: Vec<String> = (0..SLOTS).map(|i| format!("ttfb_{i:02}")).collect();
            c.extend((0..SLOTS).map(|i| format!("latency_{i:02}")));
            c
        })
    }

    pub(crate) fn add_row(&mut self, r: &LedgerEntry) {
        if r.status >= 400 {
            return;
        }
        if let Some(t) = r.ttfb_ms {
            add(&mut self.ttfb.counts[Histogram::slot(i64::from(t))], 1);
        }
        add(&mut self.latency.counts[Histogram::slot(i64::from(r.latency_ms))], 1);
    }

    pub(crate) fn values(&self) -> [i64; TIMING_VALUES] {
        let mut v = [0; TIMING_VALUES];
        v[..SLOTS].copy_from_slice(&self.ttfb.counts);
        v[SLOTS..].copy_from_slice(&self.latency.counts);
        v
    }

    pub(crate) fn from_values(v: &[i64]) -> TimingSums {
        let mut t = TimingSums::default();
        t.ttfb.counts.copy_from_slice(&v[..SLOTS]);
        t.latency.counts.copy_from_slice(&v[SLOTS..TIMING_VALUES]);
        t
    }

    pub(crate) fn merge(&mut self, o: &TimingSums) {
        self.ttfb.add(&o.ttfb);
        self.latency.add(&o.latency);
    }
}

/// One group of one aggregate table: its bucket, its dimensions in [`DIMS`] order (those its
/// family does not keep are `""`), and its sums (timing kept by the timed family only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Group<'a> {
    pub bucket_ms: i64,
    pub dims: [&'a str; 7],
    pub usage: UsageSums,
    pub timing: TimingSums,
}

impl Group<'_> {
    /// The stored values of this group in its family's tables: the usage sums, then (models)
    /// the timing histograms.
    pub(crate) fn values(&self, f: Family) -> Vec<i64> {
        let mut v = self.usage.values().to_vec();
        if f.timed() {
            v.extend(self.timing.values());
        }
        v
    }
}

/// A row's dimensions in [`DIMS`] order.
pub(crate) fn dims_of(r: &LedgerEntry) -> [&str; 7] {
    let reason = r.route_reason.as_deref();
    [
        r.provider.as_str(),
        r.model.as_str(),
        r.key_id.as_deref().unwrap_or(""),
        r.tenant_id.as_deref().unwrap_or(""),
        route_of(reason),
        feasible_of(reason),
        r.error_kind.as_deref().unwrap_or(""),
    ]
}

/// A row to sum, with what the store knows about it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fact<'a> {
    /// Its id in the store, where the store has one and needs it (SQLite's minute id ranges).
    pub id: Option<i64>,
    pub row: &'a LedgerEntry,
    /// It ended in an error and no row has its request id and the next attempt number
    /// (among the rows already stored and those written with it).
    pub failed: bool,
}

/// Which of a batch's attempts were their request's last, found with the store's help: the
/// keys (request id, attempt number) to look up among the rows already stored, before the
/// batch is written.
#[derive(Debug)]
pub(crate) struct Successions<'a> {
    rows: &'a [LedgerEntry],
    /// Keys whose presence among the stored rows matters: the next attempt of each failed
    /// row, and each fallback's own key (whether its predecessor already had a successor).
    pub exists: Vec<(&'a str, i64)>,
    /// Keys of the stored attempts the batch's fallbacks follow (their failed rows may stop
    /// counting as failed).
    pub before: Vec<(&'a str, i64)>,
}

impl<'a> Successions<'a> {
    pub(crate) fn of(rows: &'a [LedgerEntry]) -> Successions<'a> {
        let mut exists = Vec::new();
        let mut before = Vec::new();
        for r in rows {
            let (id, n) = (r.request_id.as_str(), i64::from(r.attempt));
            if r.error_kind.is_some() {
                exists.push((id, n + 1));
            }
            if n > 1 {
                exists.push((id, n));
                before.push((id, n - 1));
            }
        }
        for keys in [&mut exists, &mut before] {
            keys.sort_unstable();
            keys.dedup();
        }
        Successions { rows, exists, before }
    }

    /// The batch's facts (ids from `id`, by position) and the corrections of stored rows:
    /// `stored` holds the keys of [`Successions::exists`] found stored, `earlier` the stored
    /// failed rows at the keys of [`Successions::before`].
    pub(crate) fn resolve(
        &self,
        id: impl Fn(usize) -> Option<i64>,
        stored: &std::collections::HashSet<(String, i64)>,
        earlier: &'a [LedgerEntry],
    ) -> (Vec<Fact<'a>>, Vec<&'a LedgerEntry>) {
        let in_batch: std::collections::HashSet<(&str, i64)> =
            self.rows.iter().map(|r| (r.request_id.as_str(), i64::from(r.attempt))).collect();
        let present = |rid: &str, n: i64| in_batch.contains(&(rid, n)) || stored.contains(&(rid.to_string(), n));
        let facts = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| Fact {
                id: id(i),
                row: r,
                failed: r.error_kind.is_some() && !present(&r.request_id, i64::from(r.attempt) + 1),
            })
            .collect();
        // A stored failed row that had no next attempt among the stored rows, and gets one now.
        let corrections = earlier
            .iter()
            .filter(|p| p.error_kind.is_some() && !stored.contains(&(p.request_id.clone(), i64::from(p.attempt) + 1)))
            .collect();
        (facts, corrections)
    }
}

/// The groups of one aggregate table, sorted by key (so concurrent writers lock shared rows
/// in the same order).
#[derive(Debug)]
pub(crate) struct Table<'a> {
    pub family: Family,
    pub grain: Grain,
    pub groups: Vec<Group<'a>>,
}

/// The aggregates of a set of rows, for every table, and the id range of each minute's rows.
#[derive(Debug, Default)]
pub(crate) struct Aggregates<'a> {
    /// In [`tables`] order.
    pub tables: Vec<Table<'a>>,
    /// (minute, lowest id, highest id) of the rows summed, for stores that find a minute's
    /// raw rows by id (SQLite keeps no time index on the ledger).
    pub minute_ids: Vec<(i64, i64, i64)>,
}

type Sums<'a> = HashMap<(i64, [&'a str; 7]), (UsageSums, TimingSums)>;

impl<'a> Aggregates<'a> {
    /// Sums `facts`, and takes each of `corrections` (failed attempts already stored that the
    /// new rows show were not their request's last) out of `failed` where it was counted.
    pub(crate) fn of(
        facts: impl IntoIterator<Item = Fact<'a>>,
        corrections: impl IntoIterator<Item = &'a LedgerEntry>,
    ) -> Aggregates<'a> {
        // Every dimension at the minute first; each table is folded from it.
        let mut minute: Sums<'a> = HashMap::new();
        let mut ids: HashMap<i64, (i64, i64)> = HashMap::new();
        for f in facts {
            let bucket = Grain::Minute.floor(f.row.ts_ms);
            let (u, t) = minute.entry((bucket, dims_of(f.row))).or_default();
            u.merge(&UsageSums::of(f.row, f.failed));
            t.add_row(f.row);
            if let Some(id) = f.id {
                let e = ids.entry(bucket).or_insert((id, id));
                e.0 = e.0.min(id);
                e.1 = e.1.max(id);
            }
        }
        for p in corrections {
            let (u, _) = minute.entry((Grain::Minute.floor(p.ts_ms), dims_of(p))).or_default();
            u.failed = u.failed.saturating_sub(1);
        }
        let mut out = Vec::new();
        for (family, grain) in tables() {
            let mut sums: Sums<'a> = HashMap::new();
            for ((bucket, dims), (u, t)) in &minute {
                let mut kept = [""; 7];
                for &i in family.dims() {
                    kept[i] = dims[i];
                }
                let (su, st) = sums.entry((grain.floor(*bucket), kept)).or_default();
                su.merge(u);
                if family.timed() {
                    st.merge(t);
                }
            }
            let mut groups: Vec<Group<'a>> = sums
                .into_iter()
                .map(|((bucket_ms, dims), (usage, timing))| Group { bucket_ms, dims, usage, timing })
                .collect();
            groups.sort_unstable_by(|a, b| (a.bucket_ms, a.dims).cmp(&(b.bucket_ms, b.dims)));
            out.push(Table { family, grain, groups });
        }
        let mut minute_ids: Vec<(i64, i64, i64)> = ids.into_iter().map(|(m, (lo, hi))| (m, lo, hi)).collect();
        minute_ids.sort_unstable();
        Aggregates { tables: out, minute_ids }
    }
}

/// Where one piece of a window is answered from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Rows of the aggregate table of this grain with `from <= bucket_ms < to`.
    Buckets { grain: Grain, from: i64, to: i64 },
    /// Raw rows with `from <= ts_ms < to`, all within the minute starting at `minute`.
    Raw { minute: i64, from: i64, to: i64 },
}

/// Cuts the window `[since, until)` (None: unbounded) into pieces answered by the coarsest
/// grain that fits them whole. `grains` are the grains allowed, coarsest first (a series
/// whose step is not a whole number of hours cannot use hour rows). The pieces do not
/// overlap and cover the window exactly.
pub(crate) fn segments(since: Option<i64>, until: Option<i64>, grains: &[Grain]) -> Vec<Segment> {
    let mut out = Vec::new();
    // An unbounded side is any bucket: i64's extremes are never a bucket's start in practice
    // and compare correctly.
    let (lo, hi) = (since.unwrap_or(i64::MIN), until.unwrap_or(i64::MAX));
    if lo < hi {
        split(lo, hi, since.is_none(), until.is_none(), grains, &mut out);
    }
    out
}

fn split(lo: i64, hi: i64, open_lo: bool, open_hi: bool, grains: &[Grain], out: &mut Vec<Segment>) {
    let Some((&g, finer)) = grains.split_first() else {
        // Below the finest grain: raw rows, cut at minute boundaries (each piece within one
        // minute, so a store can find its rows through that minute's id range).
        let mut from = lo;
        while from < hi {
            let minute = Grain::Minute.floor(from);
            let to = hi.min(minute.saturating_add(MINUTE_MS));
            out.push(Segment::Raw { minute, from, to });
            from = to;
        }
        return;
    };
    let ms = g.ms();
    // Whole buckets: [first, last) where first is lo rounded up and last hi rounded down.
    let first = if open_lo { i64::MIN } else { ceil(lo, ms) };
    let last = if open_hi { i64::MAX } else { g.floor(hi) };
    if first < last {
        if !open_lo && lo < first {
            split(lo, first, false, false, finer, out);
        }
        out.push(Segment::Buckets { grain: g, from: first, to: last });
        if !open_hi && last < hi {
            split(last, hi, false, false, finer, out);
        }
    } else {
        split(lo, hi, open_lo, open_hi, finer, out);
    }
}

/// `x` rounded up to a multiple of `ms` (saturating at the top of i64).
fn ceil(x: i64, ms: i64) -> i64 {
    let r = x.rem_euclid(ms);
    if r == 0 {
        x
    } else {
        x.saturating_add(ms - r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routes_and_feasible_counts_come_from_the_reason() {
        let r = "route=strong-not-cn chose deepinfra/openai/gpt-oss-120b (expected $0.000135950); 11 feasible; \
                 runner-up deepinfra/x (expected $0.1); attempt 2 (fallback)";
        assert_eq!(route_of(Some(r)), "strong-not-cn");
        assert_eq!(feasible_of(Some(r)), "11");
        assert_eq!(feasible_of(Some("route=a chose b (expected $1); 3 feasible")), "3");
        assert_eq!(route_of(Some("route=auto")), "auto");
        assert_eq!((route_of(None), feasible_of(None)), ("", ""));
        assert_eq!((route_of(Some("something else")), feasible_of(Some("no count feasible"))), ("", ""));
    }

    #[test]
    fn histogram_slots_are_exclusive_above() {
        assert_eq!(Histogram::slot(0), 0);
        assert_eq!(Histogram::slot(1), 1);
        assert_eq!(Histogram::slot(299_999), LATENCY_BOUNDS_MS.len() - 1);
        assert_eq!(Histogram::slot(300_000), LATENCY_BOUNDS_MS.len());
        assert!(LATENCY_BOUNDS_MS.windows(2).all(|w| w[0] < w[1]));
    }

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
    }

    /// Sums of rows, then of the same rows minus a correction, through every table.
    #[test]
    fn a_batch_folds_into_every_table_and_corrections_only_move_failed() {
        let row = |attempt, ts_ms, error: Option<&str>| LedgerEntry {
            request_id: "r".into(),
            attempt,
            ts_ms,
            key_id: Some("k".into()),
            tenant_id: Some("t".into()),
            provider: "p".into(),
            model: "m".into(),
            route_reason: Some("route=auto chose p/m (expected $1); 4 feasible".into()),
            usage: crate::canonical::Usage { output: 7, ..Default::default() },
            cost_nanos: 5,
            reference_cost_nanos: 9,
            catalog_version: "v".into(),
            ttfb_ms: Some(40),
            latency_ms: 90,
            status: if error.is_some() { 502 } else { 200 },
            error_kind: error.map(String::from),
            estimate: None,
            stream: false,
            checks: None,
            needs: 0,
            cache_hit: false,
            cache_saved_nanos: 0,
            energy_uwh: None,
            co2e_ug: None,
        };
        let rows = [row(1, 59_999, Some("upstream_5xx")), row(2, 60_000, None)];
        let earlier = row(1, 0, Some("upstream_timeout"));
        let facts =
            [Fact { id: Some(10), row: &rows[0], failed: false }, Fact { id: Some(11), row: &rows[1], failed: false }];
        let agg = Aggregates::of(facts, [&earlier]);
        assert_eq!(agg.tables.len(), tables().count());
        for t in &agg.tables {
            let attempts: i64 = t.groups.iter().map(|g| g.usage.attempts).sum();
            let failed: i64 = t.groups.iter().map(|g| g.usage.failed).sum();
            let requests: i64 = t.groups.iter().map(|g| g.usage.requests).sum();
            assert_eq!((attempts, failed, requests), (2, -1, 1), "{:?} {:?}", t.family, t.grain);
            let timed: i64 = t.groups.iter().map(|g| g.timing.latency.total()).sum();
            assert_eq!(timed, if t.family.timed() { 1 } else { 0 }, "only successes are timed, only by models");
            for g in &t.groups {
                for (i, d) in g.dims.iter().enumerate() {
                    assert!(t.family.dims().contains(&i) || d.is_empty(), "{:?} keeps no {}", t.family, DIMS[i]);
                }
            }
        }
        // The two rows fall in two minutes, one hour and one day.
        let minutes = agg.tables.iter().find(|t| t.family == Family::Keys && t.grain == Grain::Minute).unwrap();
        assert_eq!(minutes.groups.iter().map(|g| g.bucket_ms).collect::<Vec<_>>(), [0, 60_000]);
        assert_eq!(agg.minute_ids, [(0, 10, 10), (60_000, 11, 11)], "the correction adds no id");
    }

    #[test]
    fn floors_go_down_before_1970() {
        assert_eq!(Grain::Minute.floor(-1), -60_000);
        assert_eq!(Grain::Minute.floor(0), 0);
        assert_eq!(Grain::Hour.floor(3_599_999), 0);
        assert_eq!(Grain::Hour.floor(-3_600_000), -3_600_000);
        assert_eq!(Grain::Minute.floor(i64::MIN), i64::MIN);
        assert_eq!(Grain::Minute.floor(i64::MAX), i64::MAX - i64::MAX.rem_euclid(60_000));
    }

    #[test]
    fn a_window_splits_into_hours_minutes_and_raw_edges() {
        let m = MINUTE_MS;
        let h = HOUR_MS;
        let g = &Grain::ALL;
        // 00:00:30 .. 02:01:10
        let s = segments(Some(30_000), Some(2 * h + m + 10_000), g);
        assert_eq!(
            s,
            [
                Segment::Raw { minute: 0, from: 30_000, to: m },
                Segment::Buckets { grain: Grain::Minute, from: m, to: h },
                Segment::Buckets { grain: Grain::Hour, from: h, to: 2 * h },
                Segment::Buckets { grain: Grain::Minute, from: 2 * h, to: 2 * h + m },
                Segment::Raw { minute: 2 * h + m, from: 2 * h + m, to: 2 * h + m + 10_000 },
            ]
        );
        // Within one minute, across a minute's edge, and unbounded.
        assert_eq!(segments(Some(5), Some(9), g), [Segment::Raw { minute: 0, from: 5, to: 9 }]);
        assert_eq!(
            segments(Some(m - 1), Some(m + 1), g),
            [Segment::Raw { minute: 0, from: m - 1, to: m }, Segment::Raw { minute: m, from: m, to: m + 1 }]
        );
        assert_eq!(segments(None, None, g), [Segment::Buckets { grain: Grain::Day, from: i64::MIN, to: i64::MAX }]);
        assert_eq!(
            segments(None, Some(h + 1), g),
            [
                Segment::Buckets { grain: Grain::Day, from: i64::MIN, to: 0 },
                Segment::Buckets { grain: Grain::Hour, from: 0, to: h },
                Segment::Raw { minute: h, from: h, to: h + 1 }
            ]
        );
        // Days, then hours, then minutes, then raw rows, at each end.
        let d = DAY_MS;
        assert_eq!(
            segments(Some(d - h - m - 1), Some(3 * d + h + m + 1), g),
            [
                Segment::Raw { minute: d - h - 2 * m, from: d - h - m - 1, to: d - h - m },
                Segment::Buckets { grain: Grain::Minute, from: d - h - m, to: d - h },
                Segment::Buckets { grain: Grain::Hour, from: d - h, to: d },
                Segment::Buckets { grain: Grain::Day, from: d, to: 3 * d },
                Segment::Buckets { grain: Grain::Hour, from: 3 * d, to: 3 * d + h },
                Segment::Buckets { grain: Grain::Minute, from: 3 * d + h, to: 3 * d + h + m },
                Segment::Raw { minute: 3 * d + h + m, from: 3 * d + h + m, to: 3 * d + h + m + 1 },
            ]
        );
        assert_eq!(segments(Some(10), Some(10), g), []);
        assert_eq!(segments(Some(10), Some(5), g), []);
        // Without hour rows.
        assert_eq!(
            segments(Some(0), Some(2 * h), &[Grain::Minute]),
            [Segment::Buckets { grain: Grain::Minute, from: 0, to: 2 * h }]
        );
    }

    /// Every millisecond of the window is covered by exactly one piece, and no piece reaches
    /// outside it; bucket pieces are whole buckets of their grain.
    fn check_cover(since: Option<i64>, until: Option<i64>, grains: &[Grain]) {
        let s = segments(since, until, grains);
        let (lo, hi) = (since.unwrap_or(i64::MIN), until.unwrap_or(i64::MAX));
        let mut at = lo;
        for seg in &s {
            let (from, to) = match *seg {
                Segment::Buckets { grain, from, to } => {
                    assert!(grains.contains(&grain));
                    if from != i64::MIN {
                        assert_eq!(grain.floor(from), from, "{seg:?}");
                    }
                    if to != i64::MAX {
                        assert_eq!(grain.floor(to), to, "{seg:?}");
                    }
                    (from, to)
                }
                Segment::Raw { minute, from, to } => {
                    assert_eq!(Grain::Minute.floor(from), minute);
                    assert!(to <= minute + MINUTE_MS);
                    (from, to)
                }
            };
            assert!(from < to, "{seg:?}");
            // Unbounded ends start the cover at the extreme.
            assert_eq!(from, at, "{since:?}..{until:?}: {s:?}");
            at = to;
        }
        if lo < hi {
            assert_eq!(at, hi, "{since:?}..{until:?}: {s:?}");
        } else {
            assert!(s.is_empty());
        }
        // At most a minute of raw rows on each side.
        let raw: i64 = s.iter().map(|x| if let Segment::Raw { from, to, .. } = x { to - from } else { 0 }).sum();
        assert!(raw < 2 * MINUTE_MS, "{s:?}");
    }

    proptest! {
        #[test]
        fn segments_cover_any_window_exactly(
            since in proptest::option::of(-3 * DAY_MS..3 * DAY_MS),
            len in prop_oneof![0i64..6 * HOUR_MS, 0i64..5 * DAY_MS],
            open_until in any::<bool>(),
            grains in 0usize..3,
        ) {
            let until = if open_until { None } else { Some(since.unwrap_or(0) + len) };
            let grains: &[Grain] = [&Grain::ALL[..], &Grain::ALL[1..], &Grain::ALL[2..]][grains];
            check_cover(since, until, grains);
        }
    }
}
