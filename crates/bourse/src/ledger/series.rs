//! Time series and routing summaries over the ledger, for the dashboard: spend, savings,
//! requests and failures per time bucket, latency histograms per bucket, and what the router
//! decided (routes, feasible counts, why attempts fell back). Reports ([`Ledger::report`])
//! are answered by the same code.
//!
//! Everything here reads the aggregate tables ([`super::aggregate`]), not the raw rows: day
//! rows for buckets of whole days, hour rows for buckets of whole hours, minute rows for the
//! rest, and the raw rows only for the parts of a minute at a window's two edges. Every sum
//! is exact for any window; bucket starts are multiples of the bucket width since the Unix
//! epoch (UTC), and widths are whole minutes.
//!
//! Latency percentiles come from fixed histograms ([`LATENCY_BOUNDS_MS`]): a percentile is
//! reported as the bound of the bucket it falls in ("under 300 ms"), which is exact about
//! what it claims and adds up across buckets and stores by plain integer addition.
//!
//! Routing facts are read from the route reason each routed attempt stores
//! (`route=NAME chose MODEL (expected $X); N feasible; ...`, written by
//! `route::Router::reason`); rows without one were requests that named their model.

use super::aggregate::{dims_of, floor_to, Family, Grain, Segment, TimingSums, UsageSums, MINUTE_MS};
pub use super::aggregate::{Histogram, Quantile, LATENCY_BOUNDS_MS};
use super::report::{GroupBy, ReportQuery, ReportRow};
use super::sql::Shape;
use super::{Ledger, LedgerEntry, LedgerError};
use std::collections::HashMap;

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

impl SeriesBy {
    fn group(self) -> GroupBy {
        match self {
            SeriesBy::Total => GroupBy::None,
            SeriesBy::Provider => GroupBy::Provider,
            SeriesBy::Model => GroupBy::Model,
            SeriesBy::Tenant => GroupBy::Tenant,
            SeriesBy::Key => GroupBy::Key,
        }
    }
}

/// Rows in `since_ms <= ts_ms < until_ms`, cut into buckets of `bucket_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesQuery {
    pub since_ms: i64,
    pub until_ms: i64,
    /// Bucket width in milliseconds: a whole number of minutes (anything else is refused).
    pub bucket_ms: i64,
    pub by: SeriesBy,
}

impl SeriesQuery {
    fn check(&self) -> Result<(), LedgerError> {
        if self.bucket_ms <= 0 || self.bucket_ms % MINUTE_MS != 0 {
            return Err(LedgerError::Invalid(format!(
                "a series bucket must be a whole number of minutes, not {} ms",
                self.bucket_ms
            )));
        }
        Ok(())
    }
}

/// One group's totals in one bucket. Buckets without rows are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeriesPoint {
    /// The bucket's start: a multiple of the width, Unix milliseconds.
    pub start_ms: i64,
    pub group: String,
    /// Requests whose first attempt is in this bucket and group (with unique request ids,
    /// the distinct request ids of those first attempts; a request that fell back counts
    /// where it started).
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

/// Time to first byte and total latency of the successful attempts (status below 400) in one
/// bucket. Attempts without a first byte count only in `latency`.
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
    /// the reason does not say).
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

impl Ledger {
    /// Spend, savings, requests, errors, fallbacks and failures per bucket and group, sorted
    /// by bucket then group.
    pub async fn series(&self, q: &SeriesQuery) -> Result<Vec<SeriesPoint>, LedgerError> {
        q.check()?;
        let plan = Plan::new(Some(q.since_ms), Some(q.until_ms), Some(q.bucket_ms), Shape::By(q.by.group()), None);
        let mut points: Vec<SeriesPoint> = self
            .sums(&plan)
            .await?
            .into_iter()
            .map(|((start_ms, mut labels), (s, _))| SeriesPoint {
                start_ms,
                group: labels.pop().unwrap_or_default(),
                requests: s.requests,
                attempts: s.attempts,
                cost_nanos: s.cost_nanos,
                reference_cost_nanos: s.reference_cost_nanos,
                saved_nanos: s.reference_cost_nanos.saturating_sub(s.cost_nanos),
                errors: s.errors,
                fallbacks: s.fallbacks,
                failed: s.failed,
            })
            .collect();
        points.sort_by(|a, b| a.start_ms.cmp(&b.start_ms).then_with(|| a.group.cmp(&b.group)));
        Ok(points)
    }

    /// TTFB and latency histograms of successful attempts per bucket (`q.by` is ignored: one
    /// histogram pair per bucket), sorted by bucket. Buckets with no successful attempt are
    /// absent.
    pub async fn latency_series(&self, q: &SeriesQuery) -> Result<Vec<LatencyPoint>, LedgerError> {
        q.check()?;
        let mut plan = Plan::new(Some(q.since_ms), Some(q.until_ms), Some(q.bucket_ms), Shape::By(GroupBy::None), None);
        plan.timed = true;
        let mut points: Vec<LatencyPoint> = self
            .sums(&plan)
            .await?
            .into_iter()
            .filter(|(_, (_, t))| t.latency.total() > 0)
            .map(|((start_ms, _), (_, t))| LatencyPoint { start_ms, ttfb: t.ttfb, latency: t.latency })
            .collect();
        points.sort_by_key(|p| p.start_ms);
        Ok(points)
    }

    /// Attempts in `[since_ms, until_ms)` by route, feasible count and model, most first
    /// attempts first (then route, feasible count, model).
    pub async fn route_groups(&self, since_ms: i64, until_ms: i64) -> Result<Vec<RouteGroup>, LedgerError> {
        let plan = Plan::new(Some(since_ms), Some(until_ms), None, Shape::Routes, None);
        let mut groups: Vec<RouteGroup> = self
            .sums(&plan)
            .await?
            .into_iter()
            .map(|((_, labels), (s, _))| {
                let [route, feasible, model]: [String; 3] = labels.try_into().unwrap_or_default();
                RouteGroup {
                    route: (!route.is_empty()).then_some(route),
                    feasible: feasible.parse().ok(),
                    model,
                    first_attempts: s.requests,
                    fallback_attempts: s.fallbacks,
                    errors: s.errors,
                    cost_nanos: s.cost_nanos,
                }
            })
            .collect();
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
        let plan = Plan::new(Some(since_ms), Some(until_ms), None, Shape::Errors, None);
        let mut groups: Vec<ErrorGroup> = self
            .sums(&plan)
            .await?
            .into_iter()
            .map(|((_, labels), (s, _))| {
                let [error_kind, model]: [String; 2] = labels.try_into().unwrap_or_default();
                ErrorGroup { error_kind, model, attempts: s.errors, fell_back: s.errors.saturating_sub(s.failed) }
            })
            .collect();
        groups.sort_by(|a, b| {
            b.attempts
                .cmp(&a.attempts)
                .then_with(|| a.error_kind.cmp(&b.error_kind))
                .then_with(|| a.model.cmp(&b.model))
        });
        Ok(groups)
    }

    /// Sums rows in `[since_ms, until_ms)` (either bound optional), most expensive group
    /// first.
    pub async fn report(&self, q: &ReportQuery) -> Result<Vec<ReportRow>, LedgerError> {
        let plan = Plan::new(q.since_ms, q.until_ms, None, Shape::By(q.by), q.key.clone());
        let rows = self
            .sums(&plan)
            .await?
            .into_iter()
            .map(|((_, mut labels), (s, _))| ReportRow::from_sums(labels.pop().unwrap_or_default(), &s))
            .collect();
        Ok(super::report::finish(rows))
    }

    /// Runs a plan on the store and folds its answers into (bucket, labels) sums.
    async fn sums(&self, plan: &Plan) -> Result<Sums, LedgerError> {
        let answer = match self {
            Ledger::Sqlite(s) => s.answer(plan.clone()).await?,
            Ledger::Postgres(p) => p.answer(plan).await?,
        };
        let mut sums = Sums::new();
        for (bucket, labels, u, t) in answer.sums {
            let e = sums.entry((bucket, labels)).or_default();
            e.0.merge(&u);
            if let Some(t) = t {
                e.1.merge(&t);
            }
        }
        // The raw rows at the edges, summed as a batch is.
        for (r, has_next) in &answer.raw {
            let minute = Grain::Minute.floor(r.ts_ms);
            let Some(labels) = labels_of(plan.shape, minute, &dims_of(r)) else { continue };
            let bucket = plan.step_ms.map_or(0, |s| floor_to(minute, s));
            let e = sums.entry((bucket, labels)).or_default();
            e.0.merge(&UsageSums::of(r, r.error_kind.is_some() && !has_next));
            if plan.timed {
                e.1.add_row(r);
            }
        }
        Ok(sums)
    }
}

/// What a store is asked: the pieces of the window, which family of tables answers them, how
/// to label and bucket the groups, which rows.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    pub segments: Vec<Segment>,
    pub family: Family,
    pub shape: Shape,
    /// Read the timing histograms too (models tables only).
    pub timed: bool,
    /// Series buckets (None: one bucket, 0).
    pub step_ms: Option<i64>,
    /// Only this key's rows.
    pub key: Option<String>,
}

impl Plan {
    fn new(since: Option<i64>, until: Option<i64>, step_ms: Option<i64>, shape: Shape, key: Option<String>) -> Plan {
        let family = family(shape, key.is_some());
        // A series may read a grain only if its buckets hold whole buckets of that grain.
        let grains: Vec<Grain> = Grain::ALL.into_iter().filter(|g| step_ms.is_none_or(|s| s % g.ms() == 0)).collect();
        let segments = super::aggregate::segments(since, until, &grains);
        Plan { segments, family, shape, timed: false, step_ms, key }
    }
}

/// The family of tables that answers a question, for everyone or for one key: the narrowest
/// that keeps both the labels and the filter.
fn family(shape: Shape, key: bool) -> Family {
    match shape {
        Shape::Routes | Shape::Errors => Family::Routes,
        Shape::By(GroupBy::Key | GroupBy::Tenant) => Family::Keys,
        Shape::By(GroupBy::Day | GroupBy::None) if key => Family::Keys,
        Shape::By(_) if key => Family::Usage,
        Shape::By(GroupBy::Route | GroupBy::Error) => Family::Routes,
        Shape::By(_) => Family::Models,
    }
}

/// What a store answers: sums per (series bucket, labels) from the aggregate tables (bucket 0
/// without a step; timing when the plan asks), and the raw rows of the window's edges, each
/// with whether its request has a next attempt.
#[derive(Debug, Default)]
pub(super) struct Answer {
    pub sums: Vec<(i64, Vec<String>, UsageSums, Option<TimingSums>)>,
    pub raw: Vec<(LedgerEntry, bool)>,
}

type Sums = HashMap<(i64, Vec<String>), (UsageSums, TimingSums)>;

/// The labels of a row of the minute starting at `minute` with these dimensions
/// ([`super::aggregate::DIMS`] order): what the SQL of [`Shape`]'s label expressions gives
/// aggregate rows. None when the shape leaves the row out (errors: rows without one).
pub(super) fn labels_of(shape: Shape, minute: i64, dims: &[&str; 7]) -> Option<Vec<String>> {
    let or_none = |s: &str| if s.is_empty() { "(none)".to_string() } else { s.to_string() };
    let [provider, model, key_id, tenant_id, route, feasible, error_kind] = *dims;
    let by = match shape {
        Shape::By(by) => by,
        Shape::Routes => return Some(vec![route.into(), feasible.into(), format!("{provider}/{model}")]),
        Shape::Errors if error_kind.is_empty() => return None,
        Shape::Errors => return Some(vec![error_kind.into(), format!("{provider}/{model}")]),
    };
    Some(vec![match by {
        GroupBy::Model => format!("{provider}/{model}"),
        GroupBy::Provider => provider.to_string(),
        GroupBy::Key => or_none(key_id),
        GroupBy::Tenant => or_none(tenant_id),
        GroupBy::Route => or_none(route),
        GroupBy::Error => or_none(error_kind),
        GroupBy::Day => crate::timespec::rfc3339(minute).chars().take(10).collect(),
        GroupBy::None => "(all)".to_string(),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grains(step: Option<i64>) -> Vec<Grain> {
        let p = Plan::new(Some(0), Some(30 * 86_400_000), step, Shape::By(GroupBy::None), None);
        let mut g: Vec<Grain> = p
            .segments
            .iter()
            .filter_map(|s| if let Segment::Buckets { grain, .. } = s { Some(*grain) } else { None })
            .collect();
        g.dedup();
        g
    }

    #[test]
    fn grains_hold_whole_buckets_of_the_step() {
        assert_eq!(grains(None), [Grain::Day]);
        assert_eq!(grains(Some(86_400_000)), [Grain::Day]);
        assert_eq!(grains(Some(3 * 3_600_000)), [Grain::Hour]);
        assert_eq!(grains(Some(30 * 60_000)), [Grain::Minute]);
    }

    #[test]
    fn each_question_reads_the_narrowest_family() {
        assert_eq!(family(Shape::By(GroupBy::Model), false), Family::Models);
        assert_eq!(family(Shape::By(GroupBy::Day), false), Family::Models);
        assert_eq!(family(Shape::By(GroupBy::Route), false), Family::Routes);
        assert_eq!(family(Shape::Errors, false), Family::Routes);
        assert_eq!(family(Shape::By(GroupBy::Key), false), Family::Keys);
        assert_eq!(family(Shape::By(GroupBy::None), true), Family::Keys);
        assert_eq!(family(Shape::By(GroupBy::Model), true), Family::Usage);
        assert_eq!(family(Shape::By(GroupBy::Error), true), Family::Usage);
    }

    #[test]
    fn labels_follow_the_shape() {
        let dims = ["p", "m", "", "t", "auto", "4", "x"];
        let one = |by| labels_of(Shape::By(by), -60_000, &dims).unwrap().pop().unwrap();
        assert_eq!(one(GroupBy::Day), "1969-12-31");
        assert_eq!(one(GroupBy::Key), "(none)");
        assert_eq!(one(GroupBy::Tenant), "t");
        assert_eq!(one(GroupBy::Model), "p/m");
        assert_eq!(one(GroupBy::Error), "x");
        assert_eq!(one(GroupBy::Route), "auto");
        assert_eq!(labels_of(Shape::Routes, 0, &dims).unwrap(), ["auto", "4", "p/m"]);
        assert_eq!(labels_of(Shape::Errors, 0, &dims).unwrap(), ["x", "p/m"]);
        assert_eq!(labels_of(Shape::Errors, 0, &["p", "m", "", "", "", "", ""]), None);
    }

    #[tokio::test]
    async fn buckets_are_whole_minutes() {
        let dir = std::env::temp_dir().join(format!("bourse-series-{}-{}", std::process::id(), fastrand::u64(..)));
        let ledger = Ledger::open(&format!("sqlite:{}", dir.join("l.db").display())).await.unwrap();
        let q = SeriesQuery { since_ms: 0, until_ms: 60_000, bucket_ms: 1_000, by: SeriesBy::Total };
        let e = ledger.series(&q).await.unwrap_err();
        assert!(matches!(e, LedgerError::Invalid(_)) && e.to_string().contains("whole number of minutes"), "{e}");
        assert!(ledger.latency_series(&SeriesQuery { bucket_ms: 0, ..q }).await.is_err());
        assert!(ledger.series(&SeriesQuery { bucket_ms: 60_000, ..q }).await.unwrap().is_empty());
        drop(ledger);
        let _ = std::fs::remove_dir_all(dir);
    }
}
