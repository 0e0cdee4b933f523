//! The usage ledger: one row per upstream attempt, written off the request path.
//!
//! [`LedgerEntry`] is built by the request path; [`Writer`] takes it without waiting
//! (a bounded queue drained by a background batch writer) and [`Ledger`] stores batches
//! in SQLite (the embedded default) or PostgreSQL, with per-minute and per-hour aggregates
//! beside the raw rows ([`aggregate`]) that reports ([`ReportQuery`]) and the dashboard's
//! series ([`SeriesQuery`]) are answered from.
//! No prompt or completion text is stored in ledger rows. The one exception is beside them:
//! a Responses API answer the client asked to store (`store`, OpenAI's default) is kept with
//! its input for `previous_response_id`, for a configured time ([`StoredResponse`]).

use crate::canonical::Usage;
/// Where the usage of an estimated row came from (defined beside the estimator, which
/// produces it; re-exported here because rows store it).
pub use crate::meter::estimate::Estimate;
use serde::Serialize;
use std::sync::Arc;

/// One upstream attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    pub request_id: String,
    /// 1 for the first attempt of a request, 2 for its first fallback, ...
    pub attempt: u32,
    /// Unix milliseconds when the attempt started.
    pub ts_ms: i64,
    /// Which gateway key the client used (an id, never the key), if keys are configured.
    pub key_id: Option<Arc<str>>,
    /// The tenant the key belongs to (virtual keys; None for config keys).
    pub tenant_id: Option<Arc<str>>,
    pub provider: String,
    pub model: String,
    /// Why this model was chosen (filled by the router).
    pub route_reason: Option<String>,
    pub usage: Usage,
    /// Integer nano-USD.
    pub cost_nanos: i64,
    pub reference_cost_nanos: i64,
    pub catalog_version: String,
    pub ttfb_ms: Option<u32>,
    pub latency_ms: u32,
    /// HTTP status the attempt ended with (as seen by the gateway).
    pub status: u16,
    pub error_kind: Option<String>,
    /// How the gateway counted the usage when the upstream never reported it (None: the
    /// upstream's own figures).
    pub estimate: Option<Estimate>,
    pub stream: bool,
    /// The answer checks this attempt ran and their outcomes, `complete:pass,json_schema:fail`
    /// (`check::encode`); None when none ran.
    pub checks: Option<String>,
    /// What the request needed of a model ([`crate::canonical::Needs::bits`]: tools 1,
    /// json_schema 2, vision 4), so `bourse replay` can re-plan it. The route it asked for
    /// is the `route=NAME` that starts a routed attempt's `route_reason`.
    pub needs: u8,
    /// Answered from the response cache: no upstream call was made and the cost is 0.
    pub cache_hit: bool,
    /// On a cache hit, what the cached answer cost when it was made (nano-USD): what the hit
    /// saved. 0 otherwise.
    pub cache_saved_nanos: i64,
    /// Estimated energy of the attempt, micro-watt-hours (None: no estimate, as on rows from
    /// before estimates). An estimate from the catalog's published figures, never a reading.
    pub energy_uwh: Option<i64>,
    /// Estimated emissions, micrograms CO2e, from the energy and the hosting region's grid
    /// intensity (None: no estimate).
    pub co2e_ug: Option<i64>,
}

impl LedgerEntry {
    /// The usage is the gateway's estimate, not the upstream's report.
    pub fn estimated(&self) -> bool {
        self.estimate.is_some()
    }
}

/// The stored columns in [`LedgerEntry`] field order (usage spread over five columns),
/// shared by both backends so their inserts and selects cannot drift apart.
macro_rules! entry_columns {
    () => {
        "request_id, attempt, ts_ms, key_id, provider, model, route_reason, \
         input_uncached, input_cache_read, input_cache_write, output, output_reasoning, \
         cost_nanos, reference_cost_nanos, catalog_version, ttfb_ms, latency_ms, status, \
         error_kind, estimated, stream, estimator, tenant_id, checks, \
         needs, cache_hit, cache_saved_nanos, energy_uwh, co2e_ug"
    };
}

/// How many columns [`entry_columns!`] names: a select's extra columns come after them.
const ENTRY_COLUMNS: usize = 29;

mod aggregate;
mod cascades;
mod evidence;
mod postgres;
mod replay;
mod report;
mod responses;
mod series;
mod sql;
mod sqlite;
mod tenancy;
mod writer;

pub use cascades::{cascades, CascadeRow};
pub use evidence::{EvidenceDelta, EvidenceRow};
pub use postgres::PostgresLedger;
pub use replay::{ReplayRow, CHUNK_ROWS};
pub use report::{GroupBy, ReportQuery, ReportRow};
pub use responses::StoredResponse;
pub use series::{
    ErrorGroup, Histogram, LatencyPoint, Quantile, RouteGroup, SeriesBy, SeriesPoint, SeriesQuery, LATENCY_BOUNDS_MS,
};
pub use sqlite::SqliteLedger;
pub use writer::{FullPolicy, PendingWriter, Writer, WriterConfig, WriterHandle, WriterStats};

use std::fmt;

/// Where ledger rows are stored. Clones share the same connections.
#[derive(Clone, Debug)]
pub enum Ledger {
    Sqlite(SqliteLedger),
    Postgres(PostgresLedger),
}

impl Ledger {
    /// Opens (creating on first use) the store named by `url` and brings its schema up to
    /// date: `sqlite:PATH` or a plain path ending in `.db`, or `postgres://...` /
    /// `postgresql://...` (connected without TLS for now; see [`PostgresLedger`]).
    pub async fn open(url: &str) -> Result<Ledger, LedgerError> {
        match parse_url(url)? {
            Target::Sqlite(path) => Ok(Ledger::Sqlite(SqliteLedger::open(path).await?)),
            Target::Postgres => Ok(Ledger::Postgres(PostgresLedger::open(url).await?)),
        }
    }

    /// Stores a batch atomically: all rows or none.
    pub async fn append(&self, rows: impl Into<Vec<LedgerEntry>>) -> Result<(), LedgerError> {
        self.write(rows.into()).await.1
    }

    /// [`Ledger::append`] for the batch writer: the rows move to the store (SQLite writes on
    /// a blocking thread, which needs them without a copy) and come back, for a retry or for
    /// the next batch to reuse the allocation. They come back empty only if the blocking
    /// task itself died (a panic), and then the error says so.
    pub(crate) async fn write(&self, rows: Vec<LedgerEntry>) -> (Vec<LedgerEntry>, Result<(), LedgerError>) {
        match self {
            Ledger::Sqlite(s) => s.append(rows).await,
            Ledger::Postgres(p) => {
                let r = p.append(&rows).await;
                (rows, r)
            }
        }
    }

    /// How many rows are stored.
    pub async fn count(&self) -> Result<i64, LedgerError> {
        match self {
            Ledger::Sqlite(s) => s.count().await,
            Ledger::Postgres(p) => p.count().await,
        }
    }

    /// Every attempt that ran answer checks in `[since_ms, until_ms)`, and every side call (a
    /// judge, a shadow: attempt 0), by request and attempt (the cascade report: see
    /// [`cascades`]).
    pub async fn checked(&self, since_ms: Option<i64>, until_ms: Option<i64>) -> Result<Vec<LedgerEntry>, LedgerError> {
        let (since, until) = (since_ms.unwrap_or(i64::MIN), until_ms.unwrap_or(i64::MAX));
        match self {
            Ledger::Sqlite(s) => s.checked(since, until).await,
            Ledger::Postgres(p) => p.checked(since, until).await,
        }
    }

    /// Every row of `[since_ms, until_ms)` as `bourse replay` reads it, sent to `out` in
    /// chunks as they are read (see [`ReplayRow`]); stops early, without an error, when the
    /// receiver is dropped.
    pub async fn replay_rows(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        out: tokio::sync::mpsc::Sender<Vec<ReplayRow>>,
    ) -> Result<(), LedgerError> {
        let (since, until) = (since_ms.unwrap_or(i64::MIN), until_ms.unwrap_or(i64::MAX));
        match self {
            Ledger::Sqlite(s) => s.replay_rows(since, until, out).await,
            Ledger::Postgres(p) => p.replay_rows(since, until, out).await,
        }
    }

    /// Every attempt stored for one request, in attempt order.
    pub async fn rows(&self, request_id: &str) -> Result<Vec<LedgerEntry>, LedgerError> {
        match self {
            Ledger::Sqlite(s) => s.rows(request_id).await,
            Ledger::Postgres(p) => p.rows(request_id).await,
        }
    }
}

/// Why the ledger could not be opened, written or read.
#[derive(Debug)]
pub enum LedgerError {
    /// The URL names no supported store.
    Url(String),
    Io(std::io::Error),
    Sqlite(rusqlite::Error),
    Postgres(tokio_postgres::Error),
    /// A stored value does not fit its Rust type (a row written by something else).
    Corrupt(String),
    /// The blocking task running SQLite work panicked or was cancelled.
    Task(String),
    /// A tenancy change names a tenant or key that already exists (or a secret already in use).
    Conflict(String),
    /// A tenancy change names a tenant or key that does not exist.
    NotFound(String),
    /// A query that cannot be answered as asked (an empty window, a step that is not whole
    /// minutes...): the caller's mistake.
    Invalid(String),
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::Url(msg) => write!(f, "ledger url: {msg}"),
            LedgerError::Io(e) => write!(f, "ledger: {e}"),
            LedgerError::Sqlite(e) => write!(f, "ledger (sqlite): {e}"),
            LedgerError::Postgres(e) => write!(f, "ledger (postgres): {e}"),
            LedgerError::Corrupt(msg) => write!(f, "ledger: corrupt row: {msg}"),
            LedgerError::Task(msg) => write!(f, "ledger: sqlite task failed: {msg}"),
            LedgerError::Conflict(msg) | LedgerError::NotFound(msg) | LedgerError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for LedgerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LedgerError::Io(e) => Some(e),
            LedgerError::Sqlite(e) => Some(e),
            LedgerError::Postgres(e) => Some(e),
            LedgerError::Url(_)
            | LedgerError::Corrupt(_)
            | LedgerError::Task(_)
            | LedgerError::Conflict(_)
            | LedgerError::NotFound(_)
            | LedgerError::Invalid(_) => None,
        }
    }
}

impl From<std::io::Error> for LedgerError {
    fn from(e: std::io::Error) -> Self {
        LedgerError::Io(e)
    }
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Sqlite(e)
    }
}

impl From<tokio_postgres::Error> for LedgerError {
    fn from(e: tokio_postgres::Error) -> Self {
        LedgerError::Postgres(e)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Sqlite(&'a str),
    Postgres,
}

fn parse_url(url: &str) -> Result<Target<'_>, LedgerError> {
    // `sqlite://` first so `sqlite:///abs/x.db` keeps its leading slash.
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        return match path {
            "" => Err(LedgerError::Url("sqlite: needs a file path, e.g. sqlite:data/ledger.db".into())),
            // An in-memory database would silently vanish on restart and is per-connection,
            // so the writer and reader connections would not even see the same rows.
            ":memory:" => Err(LedgerError::Url("sqlite::memory: is not supported: the ledger must be a file".into())),
            _ => Ok(Target::Sqlite(path)),
        };
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres);
    }
    if url.ends_with(".db") && !url.contains("://") {
        return Ok(Target::Sqlite(url));
    }
    // Never echo the URL: a postgres-like URL with a typo may still carry a password.
    Err(LedgerError::Url("expected sqlite:PATH, a path ending in .db, or postgres://...".into()))
}

/// One embedded schema step; `version` is recorded in `schema_migrations` once applied.
struct Migration {
    version: i64,
    sql: &'static str,
    /// After the SQL, sum the rows already stored into the aggregate tables it created (in
    /// the same transaction, by the code that sums every batch).
    backfill: bool,
}

/// Token counts are u64 in Rust but signed 64-bit in both stores. Saturating (instead of
/// failing) keeps one absurd upstream count from costing its batch-mates their rows.
fn count_to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Narrows a stored integer back to its field type; out of range means the row was not
/// written by this code, which is reported rather than wrapped.
fn from_db<T: TryFrom<i64>>(v: i64, column: &'static str) -> Result<T, LedgerError> {
    T::try_from(v).map_err(|_| LedgerError::Corrupt(format!("{column} = {v} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_column_count_is_the_list_s() {
        assert_eq!(entry_columns!().split(',').count(), ENTRY_COLUMNS);
    }

    #[test]
    fn urls_pick_the_store() {
        assert_eq!(parse_url("sqlite:data/ledger.db").unwrap(), Target::Sqlite("data/ledger.db"));
        assert_eq!(parse_url("sqlite:///var/lib/bourse/l.sqlite").unwrap(), Target::Sqlite("/var/lib/bourse/l.sqlite"));
        assert_eq!(parse_url("sqlite://rel.db").unwrap(), Target::Sqlite("rel.db"));
        assert_eq!(parse_url("ledger.db").unwrap(), Target::Sqlite("ledger.db"));
        assert_eq!(parse_url("/tmp/x/ledger.db").unwrap(), Target::Sqlite("/tmp/x/ledger.db"));
        assert_eq!(parse_url("postgres://u:p@h/db").unwrap(), Target::Postgres);
        assert_eq!(parse_url("postgresql://h/db").unwrap(), Target::Postgres);
        for bad in ["sqlite:", "sqlite::memory:", "mysql://h/db", "ledger.txt", "http://x/ledger.db"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_never_reach_url_errors() {
        let err = parse_url("postgress://user:hunter2@db/ledger").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn stored_integers_narrow_or_fail() {
        assert_eq!(count_to_db(u64::MAX), i64::MAX);
        assert_eq!(from_db::<u32>(7, "attempt").unwrap(), 7);
        assert!(from_db::<u32>(-1, "attempt").is_err());
        assert!(from_db::<u16>(70_000, "status").is_err());
    }
}
