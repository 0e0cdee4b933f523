//! The aggregate tables' SQL, shared by both stores: built once per shape from constant
//! pieces (no value is ever formatted into SQL; every value is a bound parameter). The
//! stores differ only in placeholders, the cast that brings a PostgreSQL SUM back to bigint,
//! and the UTC-date expression.

use super::aggregate::{Family, Grain, TimingSums, UsageSums, DIMS};
use super::report::GroupBy;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The `n`-th bound parameter (1-based), typed where PostgreSQL needs a type.
    fn param(self, n: usize, pg_type: &str) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}::{pg_type}"),
        }
    }

    fn sum(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => format!("SUM({column})"),
            // SUM(bigint) is numeric in PostgreSQL.
            Dialect::Postgres => format!("SUM({column})::bigint"),
        }
    }

    /// `YYYY-MM-DD` of a Unix-millisecond column, in UTC whatever the session's time zone.
    fn day(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => format!("date({column} / 1000, 'unixepoch')"),
            // A timestamp WITHOUT time zone plus an interval keeps the session TimeZone out of it.
            Dialect::Postgres => {
                format!("to_char(TIMESTAMP '1970-01-01' + {column} * INTERVAL '1 millisecond', 'YYYY-MM-DD')")
            }
        }
    }
}

/// What an aggregate read groups by: the labels it returns for each group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One label, a report's or series' group.
    By(GroupBy),
    /// Route, feasible count, `provider/model` (`''` for no route, no count).
    Routes,
    /// Error kind, `provider/model`, of the attempts that ended with one.
    Errors,
}

impl Shape {
    const COUNT: usize = GroupBy::ALL.len() + 2;

    fn index(self) -> usize {
        match self {
            Shape::By(by) => by.index(),
            Shape::Routes => GroupBy::ALL.len(),
            Shape::Errors => GroupBy::ALL.len() + 1,
        }
    }

    /// How many labels a group has.
    pub(crate) fn labels(self) -> usize {
        match self {
            Shape::By(_) => 1,
            Shape::Routes => 3,
            Shape::Errors => 2,
        }
    }

    /// The labels as SQL over an aggregate table. They must agree with
    /// [`super::series::labels_of`] (checked by the property tests of `tests/aggregates.rs`).
    fn exprs(self, d: Dialect) -> Vec<String> {
        let or_none = |c: &str| format!("CASE WHEN {c} = '' THEN '(none)' ELSE {c} END");
        let model = "provider || '/' || model".to_string();
        match self {
            Shape::By(by) => vec![match by {
                GroupBy::Model => model,
                GroupBy::Provider => "provider".into(),
                GroupBy::Key => or_none("key_id"),
                GroupBy::Tenant => or_none("tenant_id"),
                GroupBy::Route => or_none("route"),
                GroupBy::Error => or_none("error_kind"),
                GroupBy::Day => d.day("bucket_ms"),
                GroupBy::None => "CAST('(all)' AS TEXT)".into(),
            }],
            Shape::Routes => vec!["route".into(), "feasible".into(), model],
            Shape::Errors => vec!["error_kind".into(), model],
        }
    }
}

/// The series bucket of an aggregate row: its bucket floored to the step (`?3`), or 0 when
/// the step is NULL (one bucket for the whole window). `%` truncates in both stores; adding
/// the step once more makes it a floor for buckets before 1970 too.
fn step_expr(d: Dialect) -> String {
    let s = d.param(3, "bigint");
    format!("CASE WHEN {s} IS NULL THEN 0 ELSE bucket_ms - ((bucket_ms % {s}) + {s}) % {s} END")
}

/// The value columns of a family's tables: the usage sums, then (models) the timing sums.
fn value_columns(f: Family) -> Vec<&'static str> {
    let mut v = UsageSums::COLUMNS.to_vec();
    if f.timed() {
        v.extend(TimingSums::columns().iter().map(String::as_str));
    }
    v
}

/// The key columns of a family's tables: the bucket, then its dimensions.
fn key_columns(f: Family) -> Vec<&'static str> {
    std::iter::once("bucket_ms").chain(f.dims().iter().map(|&i| DIMS[i])).collect()
}

/// Sums of one aggregate table by (series bucket, labels) over `?1 <= bucket_ms < ?2` with
/// the step `?3`, and with `key`, only the rows of the key `?4`. Columns: bucket, the shape's
/// labels, the usage sums ([`UsageSums::COLUMNS`]), then with `timed` (models tables only)
/// the timing sums ([`TimingSums::columns`]). The shape's labels must be dimensions the
/// family keeps.
pub(crate) fn select(d: Dialect, f: Family, g: Grain, shape: Shape, key: bool, timed: bool) -> &'static str {
    const SHAPES: usize = 2 * Family::ALL.len() * 3 * Shape::COUNT * 4;
    static SQL: OnceLock<Vec<OnceLock<String>>> = OnceLock::new();
    let cells = SQL.get_or_init(|| (0..SHAPES).map(|_| OnceLock::new()).collect());
    let i = ((((d as usize) * Family::ALL.len() + f as usize) * 3 + g as usize) * Shape::COUNT + shape.index()) * 4
        + 2 * usize::from(key)
        + usize::from(timed);
    cells[i].get_or_init(|| {
        let labels = shape.exprs(d);
        let mut columns: Vec<&str> = UsageSums::COLUMNS.to_vec();
        if timed && f.timed() {
            columns.extend(TimingSums::columns().iter().map(String::as_str));
        }
        let sums: Vec<String> = columns.iter().map(|c| d.sum(c)).collect();
        let mut filter = String::new();
        if key {
            filter.push_str(&format!(" AND key_id = {}", d.param(4, "text")));
        }
        if shape == Shape::Errors {
            filter.push_str(" AND error_kind <> ''");
        }
        let groups: Vec<String> = (1..=labels.len() + 1).map(|n| n.to_string()).collect();
        format!(
            "SELECT {}, {}, {} FROM {} WHERE bucket_ms >= {} AND bucket_ms < {}{filter} GROUP BY {}",
            step_expr(d),
            labels.join(", "),
            sums.join(", "),
            f.table(g),
            d.param(1, "bigint"),
            d.param(2, "bigint"),
            groups.join(", "),
        )
    })
}

/// `c = table.c + EXCLUDED.c`. Token counts and money are held at i64's bounds instead of
/// failing: a single absurd (saturated) count must not make its bucket refuse every later
/// batch. Counts of rows cannot come near those bounds.
fn add_column(table: &str, c: &str) -> String {
    const SATURATING: [&str; 9] = [
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
    let (t, e) = (format!("{table}.{c}"), format!("EXCLUDED.{c}"));
    if !SATURATING.contains(&c) {
        return format!("{c} = {t} + {e}");
    }
    const MAX: &str = "9223372036854775807";
    const MIN: &str = "(-9223372036854775807 - 1)";
    format!(
        "{c} = CASE WHEN {e} > 0 THEN CASE WHEN {t} > {MAX} - {e} THEN {MAX} ELSE {t} + {e} END \
         WHEN {e} < 0 THEN CASE WHEN {t} < {MIN} - {e} THEN {MIN} ELSE {t} + {e} END ELSE {t} END"
    )
}

/// `ON CONFLICT (key) DO UPDATE SET` every value column to its sum.
fn on_conflict(table: &str, f: Family) -> String {
    let set: Vec<String> = value_columns(f).iter().map(|c| add_column(table, c)).collect();
    format!("ON CONFLICT ({}) DO UPDATE SET {}", key_columns(f).join(", "), set.join(", "))
}

/// SQLite: one group's upsert into one table (`?1` the bucket, then the family's dimensions,
/// then its value columns).
pub(crate) fn sqlite_upsert(f: Family, g: Grain) -> &'static str {
    static SQL: [[OnceLock<String>; 3]; Family::ALL.len()] = [const { [const { OnceLock::new() }; 3] }; 4];
    SQL[f as usize][g as usize].get_or_init(|| {
        let columns: Vec<&str> = key_columns(f).into_iter().chain(value_columns(f)).collect();
        let params: Vec<String> = (1..=columns.len()).map(|n| format!("?{n}")).collect();
        let table = f.table(g);
        format!("INSERT INTO {table} ({}) VALUES ({}) {}", columns.join(", "), params.join(", "), on_conflict(table, f))
    })
}

pub(crate) const SQLITE_MINUTE_IDS_UPSERT: &str = "INSERT INTO ledger_minute_ids (bucket_ms, min_id, max_id) \
     VALUES (?1, ?2, ?3) ON CONFLICT (bucket_ms) DO UPDATE SET \
     min_id = MIN(min_id, excluded.min_id), max_id = MAX(max_id, excluded.max_id)";

/// PostgreSQL: a batch's raw rows and every aggregate table's upserts in one statement (one
/// round trip, atomic without a transaction of its own, so the connection stays shareable).
/// Parameters: the ledger's 24 columns as arrays (`insert_raw`), then for each table in
/// [`super::aggregate::tables`] order one array per key and value column. With no raw rows it
/// only upserts (the back-fill). PostgreSQL runs every data-modifying WITH clause whether or
/// not it is read.
pub(crate) fn postgres_write(insert_raw: &str) -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let mut n = super::ENTRY_COLUMNS;
        let mut ctes = vec![format!("raw AS ({insert_raw})")];
        for (i, (f, g)) in super::aggregate::tables().enumerate() {
            let table = f.table(g);
            let keys = key_columns(f);
            let values = value_columns(f);
            let arrays: Vec<String> = keys
                .iter()
                .map(|c| if *c == "bucket_ms" { "bigint[]" } else { "text[]" })
                .chain(values.iter().map(|_| "bigint[]"))
                .map(|ty| {
                    n += 1;
                    format!("${n}::{ty}")
                })
                .collect();
            let columns: Vec<&str> = keys.iter().chain(&values).copied().collect();
            ctes.push(format!(
                "w{i} AS (INSERT INTO {table} ({}) SELECT * FROM UNNEST({}) {})",
                columns.join(", "),
                arrays.join(", "),
                on_conflict(table, f)
            ));
        }
        format!("WITH {} SELECT 1", ctes.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_use_the_stores_placeholders() {
        let s = select(Dialect::Sqlite, Family::Models, Grain::Hour, Shape::By(GroupBy::Model), false, true);
        assert!(s.contains("FROM models_hour") && s.contains("SUM(latency_30)") && !s.contains('$'), "{s}");
        assert!(!s.contains("key_id"), "{s}");
        let untimed = select(Dialect::Sqlite, Family::Models, Grain::Hour, Shape::By(GroupBy::Model), false, false);
        assert!(!untimed.contains("latency"), "{untimed}");
        let p = select(Dialect::Postgres, Family::Usage, Grain::Minute, Shape::By(GroupBy::Day), true, false);
        assert!(
            p.contains("key_id = $4::text") && p.contains("SUM(cost_nanos)::bigint") && p.contains("to_char"),
            "{p}"
        );
        assert!(!p.contains("latency"), "{p}");
        let r = select(Dialect::Sqlite, Family::Routes, Grain::Day, Shape::Errors, false, false);
        assert!(r.contains("error_kind <> ''") && r.contains("GROUP BY 1, 2, 3"), "{r}");
        let w = postgres_write("INSERT INTO ledger (x) SELECT * FROM UNNEST($1::text[])");
        // 29 raw columns, then 3 × (1 + 2 + 15 + 62) models, 3 × (1 + 5 + 15) routes, 3 × (1 + 2 + 15)
        // keys and 3 × (1 + 6 + 15) usage arrays.
        let last = 29 + 3 * 80 + 3 * 21 + 3 * 18 + 3 * 22;
        assert!(w.contains(&format!("${last}::bigint[]")) && !w.contains(&format!("${}", last + 1)));
        assert!(
            w.contains("cost_nanos = CASE") && w.contains("latency_30 = models_day.latency_30 + EXCLUDED.latency_30")
        );
    }
}
