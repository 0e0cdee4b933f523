//! Usage reports: sums over a time window, grouped one way.
//!
//! A report is read from the aggregate tables (see [`super::aggregate`]): hour rows for the
//! whole hours of the window, minute rows for the whole minutes at its ends and raw rows
//! for the parts of a minute at its edges, so it is exact for any bounds. Savings and
//! ordering are computed here so the two stores return identical rows (their text
//! collations differ).

use super::aggregate::UsageSums;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How report rows are grouped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// `provider/model`.
    Model,
    Provider,
    /// The gateway key id, `(none)` when the request used none.
    Key,
    /// The virtual key's tenant, `(none)` for config keys.
    Tenant,
    /// UTC date, `YYYY-MM-DD`.
    Day,
    /// The route a request was routed by, `(none)` when the client named a model.
    Route,
    /// The attempt's error kind, `(none)` for attempts that succeeded.
    Error,
    /// One row, `(all)`.
    #[default]
    None,
}

impl FromStr for GroupBy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "model" => Ok(GroupBy::Model),
            "provider" => Ok(GroupBy::Provider),
            "key" => Ok(GroupBy::Key),
            "tenant" => Ok(GroupBy::Tenant),
            "day" => Ok(GroupBy::Day),
            "route" => Ok(GroupBy::Route),
            "error" => Ok(GroupBy::Error),
            "none" => Ok(GroupBy::None),
            _ => {
                Err(format!("unknown grouping {s:?}: expected model, provider, key, tenant, day, route, error or none"))
            }
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Key => "key",
            GroupBy::Tenant => "tenant",
            GroupBy::Day => "day",
            GroupBy::Route => "route",
            GroupBy::Error => "error",
            GroupBy::None => "none",
        })
    }
}

impl GroupBy {
    pub const ALL: [GroupBy; 8] = [
        GroupBy::Model,
        GroupBy::Provider,
        GroupBy::Key,
        GroupBy::Tenant,
        GroupBy::Day,
        GroupBy::Route,
        GroupBy::Error,
        GroupBy::None,
    ];

    pub(super) fn index(self) -> usize {
        match self {
            GroupBy::Model => 0,
            GroupBy::Provider => 1,
            GroupBy::Key => 2,
            GroupBy::Tenant => 3,
            GroupBy::Day => 4,
            GroupBy::Route => 5,
            GroupBy::Error => 6,
            GroupBy::None => 7,
        }
    }
}

/// Which rows a report covers: `since_ms <= ts_ms < until_ms`, either bound optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportQuery {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    #[serde(default)]
    pub by: GroupBy,
    /// Only this key's rows (a virtual key reading its own usage).
    #[serde(default)]
    pub key: Option<String>,
}

/// One group's totals. Token and nano-USD sums are exact integers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    pub group: String,
    /// Requests: first attempts (`attempt = 1`), so a request that fell back to another
    /// model counts under the model it was first sent to. With unique request ids this is
    /// the number of distinct request ids of the group's first attempts.
    pub requests: i64,
    /// Rows (upstream attempts, fallbacks included).
    pub attempts: i64,
    pub input_uncached: i64,
    pub input_cache_read: i64,
    pub input_cache_write: i64,
    pub output: i64,
    pub output_reasoning: i64,
    pub cost_nanos: i64,
    pub reference_cost_nanos: i64,
    /// `reference_cost_nanos - cost_nanos`.
    pub saved_nanos: i64,
    /// Attempts that ended with an error kind.
    pub errors: i64,
    /// Attempts whose usage the gateway estimated.
    pub estimated: i64,
    /// ESTIMATED energy, micro-watt-hours (see `meter/energy.rs`; rows from before the
    /// estimate existed add 0).
    pub energy_uwh: i64,
    /// ESTIMATED emissions, micrograms CO2e.
    pub co2e_ug: i64,
}

impl ReportRow {
    pub(super) fn from_sums(group: String, s: &UsageSums) -> ReportRow {
        ReportRow {
            group,
            requests: s.requests,
            attempts: s.attempts,
            input_uncached: s.input_uncached,
            input_cache_read: s.input_cache_read,
            input_cache_write: s.input_cache_write,
            output: s.output,
            output_reasoning: s.output_reasoning,
            cost_nanos: s.cost_nanos,
            reference_cost_nanos: s.reference_cost_nanos,
            saved_nanos: 0,
            errors: s.errors,
            estimated: s.estimated,
            energy_uwh: s.energy_uwh,
            co2e_ug: s.co2e_ug,
        }
    }
}

/// Fills in savings and orders rows (cost descending, then group by byte order).
pub(super) fn finish(mut rows: Vec<ReportRow>) -> Vec<ReportRow> {
    for r in &mut rows {
        r.saved_nanos = r.reference_cost_nanos.saturating_sub(r.cost_nanos);
    }
    rows.sort_by(|a, b| b.cost_nanos.cmp(&a.cost_nanos).then_with(|| a.group.cmp(&b.group)));
    rows
}
