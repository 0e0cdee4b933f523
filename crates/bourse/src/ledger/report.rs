//! Usage reports: aggregates over a time window, grouped one way.
//!
//! Both backends run the same aggregate query (see `report_sql!`); only the UTC-date
//! expression, the SUM cast and the placeholder syntax differ. Savings and ordering are
//! computed here so the two stores return identical rows (their text collations differ).

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
            "none" => Ok(GroupBy::None),
            _ => Err(format!("unknown grouping {s:?}: expected model, provider, key, tenant, day or none")),
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
            GroupBy::None => "none",
        })
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
    /// Distinct request ids.
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
}

impl ReportRow {
    /// Builds a row from the query's columns in `report_sql!` order (after the group).
    pub(super) fn from_sums(group: String, s: [i64; 11]) -> ReportRow {
        let [requests, attempts, input_uncached, input_cache_read, input_cache_write, output, output_reasoning, cost_nanos, reference_cost_nanos, errors, estimated] =
            s;
        ReportRow {
            group,
            requests,
            attempts,
            input_uncached,
            input_cache_read,
            input_cache_write,
            output,
            output_reasoning,
            cost_nanos,
            reference_cost_nanos,
            saved_nanos: 0,
            errors,
            estimated,
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

/// The report query for one grouping, assembled from literals at compile time so no text
/// is ever formatted into SQL at run time. Arguments: the grouping (an expression), the
/// backend's UTC-date expression for [`GroupBy::Day`], the cast that brings a SUM back to
/// an integer (PostgreSQL widens SUM(bigint) to numeric), and the two bound placeholders.
/// `COUNT(*) FILTER (WHERE ...)` and `GROUP BY 1` mean the same in SQLite and PostgreSQL.
macro_rules! report_sql {
    ($by:expr, day: $day:literal, sum_cast: $cast:literal, since: $since:literal, until: $until:literal, key: $key:literal) => {
        match $by {
            GroupBy::Model => report_sql!(@ "provider || '/' || model", $cast, $since, $until, $key),
            GroupBy::Provider => report_sql!(@ "provider", $cast, $since, $until, $key),
            GroupBy::Key => report_sql!(@ "COALESCE(key_id, '(none)')", $cast, $since, $until, $key),
            GroupBy::Tenant => report_sql!(@ "COALESCE(tenant_id, '(none)')", $cast, $since, $until, $key),
            GroupBy::Day => report_sql!(@ $day, $cast, $since, $until, $key),
            GroupBy::None => report_sql!(@ "CAST('(all)' AS TEXT)", $cast, $since, $until, $key),
        }
    };
    (@ $group:literal, $cast:literal, $since:literal, $until:literal, $key:literal) => {
        concat!(
            "SELECT ",
            $group,
            " AS grp, COUNT(DISTINCT request_id), COUNT(*), SUM(input_uncached)",
            $cast,
            ", SUM(input_cache_read)",
            $cast,
            ", SUM(input_cache_write)",
            $cast,
            ", SUM(output)",
            $cast,
            ", SUM(output_reasoning)",
            $cast,
            ", SUM(cost_nanos)",
            $cast,
            ", SUM(reference_cost_nanos)",
            $cast,
            ", COUNT(error_kind), COUNT(*) FILTER (WHERE estimated) FROM ledger WHERE (",
            $since,
            " IS NULL OR ts_ms >= ",
            $since,
            ") AND (",
            $until,
            " IS NULL OR ts_ms < ",
            $until,
            ") AND (",
            $key,
            " IS NULL OR key_id = ",
            $key,
            ") GROUP BY 1"
        )
    };
}
