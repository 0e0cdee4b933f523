//! The embedded SQLite store (the default).
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool (`spawn_blocking`),
//! never on a runtime worker. Two connections: one for writes and one for reads, so a long
//! report never holds up the batch writer (WAL lets readers and the writer run together).
//! Each connection sits behind a mutex because a `Connection` is not `Sync`.

use super::aggregate::{read_sums, Aggregates, Fact, Segment, Successions, UsageSums, TIMING_VALUES};
use super::series::{Answer, Plan};
use super::sql::{self, Dialect};
use super::{count_to_db, from_db, Estimate, LedgerEntry, LedgerError, Migration};
use crate::canonical::Usage;
use crate::timespec::now_ms;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, sql: include_str!("../../migrations/sqlite/0001_ledger.sql"), backfill: false },
    Migration { version: 2, sql: include_str!("../../migrations/sqlite/0002_drop_ts_index.sql"), backfill: false },
    Migration { version: 3, sql: include_str!("../../migrations/sqlite/0003_estimator.sql"), backfill: false },
    Migration { version: 4, sql: include_str!("../../migrations/sqlite/0004_tenancy.sql"), backfill: false },
    Migration { version: 5, sql: include_str!("../../migrations/sqlite/0005_aggregates.sql"), backfill: true },
    Migration { version: 6, sql: include_str!("../../migrations/sqlite/0006_installation.sql"), backfill: false },
    Migration { version: 7, sql: include_str!("../../migrations/sqlite/0007_evidence.sql"), backfill: false },
    Migration { version: 8, sql: include_str!("../../migrations/sqlite/0008_market.sql"), backfill: false },
    Migration { version: 9, sql: include_str!("../../migrations/sqlite/0009_responses.sql"), backfill: false },
    Migration { version: 10, sql: include_str!("../../migrations/sqlite/0010_energy.sql"), backfill: false },
];

/// How long a statement waits for another process's lock (e.g. a `sqlite3` shell running
/// a report) before failing; the batch writer retries on top of this.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Columns per ledger row, and rows per multi-row insert (21 × 32 = 672 bound
/// values, far below SQLite's 32,766 limit).
const COLUMNS: usize = super::ENTRY_COLUMNS;
const ROWS_PER_INSERT: usize = 32;

/// A batch cut into multi-row inserts: chunks of `ROWS_PER_INSERT`, then the rest in
/// powers of two (23 rows: 16 + 4 + 2 + 1). Six statement shapes in all, so every one
/// stays prepared in the statement cache: an odd-sized last chunk per batch meant parsing
/// a new statement of hundreds of parameters per batch.
fn insert_chunks(rows: &[LedgerEntry]) -> impl Iterator<Item = &[LedgerEntry]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = if rest.len() >= ROWS_PER_INSERT { ROWS_PER_INSERT } else { 1 << rest.len().ilog2() };
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// `INSERT OR FAIL ... VALUES (?, ...), (?, ...), ...` for a chunk of `n` rows (a power of
/// two up to `ROWS_PER_INSERT`), built once per shape.
///
/// `OR FAIL` rather than the default `ABORT`: ABORT keeps a statement journal so that a
/// failing statement can undo its own earlier rows, ~360 instructions per row; a batch is one
/// transaction that is rolled back whole on any error anyway (and a `LedgerEntry` cannot
/// break the table's constraints).
fn insert_sql(n: usize) -> &'static str {
    static SQL: [std::sync::OnceLock<String>; 6] = [const { std::sync::OnceLock::new() }; 6];
    debug_assert!(n.is_power_of_two() && n <= ROWS_PER_INSERT);
    SQL[n.ilog2() as usize].get_or_init(|| {
        let row = format!("({})", vec!["?"; COLUMNS].join(", "));
        format!("INSERT OR FAIL INTO ledger ({}) VALUES {}", entry_columns!(), vec![row; n].join(", "))
    })
}

/// One batch and its aggregates in one IMMEDIATE transaction, the rows as multi-row inserts.
fn insert(conn: &mut Connection, rows: &[LedgerEntry]) -> Result<(), LedgerError> {
    // IMMEDIATE takes the write lock up front, so a concurrent writer makes us wait
    // (busy_timeout) at BEGIN instead of failing half-way through the batch.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Which failed attempts are their request's last: looked up before the batch is in.
    let succession = Successions::of(rows);
    let mut stored = HashSet::new();
    let mut earlier = Vec::new();
    {
        let mut exists = tx.prepare_cached(SELECT_EXISTS)?;
        for &(id, n) in &succession.exists {
            if exists.exists(params![id, n])? {
                stored.insert((id.to_string(), n));
            }
        }
        let mut failed = tx.prepare_cached(SELECT_FAILED_AT)?;
        for &(id, n) in &succession.before {
            let mut found = failed.query(params![id, n])?;
            while let Some(row) = found.next()? {
                earlier.push(entry(row)?);
            }
        }
    }
    {
        // Many rows per statement: SQLite's per-statement work (bind reset, VDBE start-up)
        // is paid once per chunk instead of once per row. The full-size statement is held
        // for the whole batch: giving it back to the cache after each chunk clears all of its
        // bound values.
        let mut full = None;
        for chunk in insert_chunks(rows) {
            let mut other;
            let stmt = if chunk.len() == ROWS_PER_INSERT {
                match &mut full {
                    Some(stmt) => stmt,
                    None => full.insert(tx.prepare_cached(insert_sql(ROWS_PER_INSERT))?),
                }
            } else {
                other = tx.prepare_cached(insert_sql(chunk.len()))?;
                &mut other
            };
            bind(stmt, chunk)?;
            stmt.raw_execute()?;
        }
    }
    // Rowids of an INTEGER PRIMARY KEY table are one more than the largest so far, and the
    // write lock is ours: the batch holds the consecutive ids ending at the last one.
    let first = tx.last_insert_rowid() - rows.len() as i64 + 1;
    let (facts, corrections) = succession.resolve(|i| Some(first + i as i64), &stored, &earlier);
    upsert(&tx, &Aggregates::of(facts, corrections))?;
    tx.commit()?;
    Ok(())
}

/// Adds a set of rows' aggregates to the aggregate tables: one upsert per group.
fn upsert(conn: &Connection, agg: &Aggregates<'_>) -> Result<(), LedgerError> {
    for t in &agg.tables {
        let mut stmt = conn.prepare_cached(sql::sqlite_upsert(t.family, t.grain))?;
        for g in &t.groups {
            let mut n = 1;
            stmt.raw_bind_parameter(n, g.bucket_ms)?;
            for &i in t.family.dims() {
                n += 1;
                stmt.raw_bind_parameter(n, g.dims[i])?;
            }
            for v in g.values(t.family) {
                n += 1;
                stmt.raw_bind_parameter(n, v)?;
            }
            stmt.raw_execute()?;
        }
    }
    let mut stmt = conn.prepare_cached(sql::SQLITE_MINUTE_IDS_UPSERT)?;
    for (minute, lo, hi) in &agg.minute_ids {
        stmt.execute(params![minute, lo, hi])?;
    }
    Ok(())
}

/// Rows read per step of the back-fill: bounded memory whatever the ledger's size.
const BACKFILL_CHUNK: i64 = 100_000;

/// Sums every row already in the ledger into the aggregate tables (the migration that
/// creates them), a chunk of rows at a time, in id order.
fn backfill(conn: &Connection, chunk_rows: i64) -> Result<(), LedgerError> {
    let mut stmt = conn.prepare(SELECT_AFTER_ID)?;
    let mut after = i64::MIN;
    loop {
        let mut rows = stmt.query(params![after, chunk_rows])?;
        let mut chunk: Vec<(i64, bool, LedgerEntry)> = Vec::new();
        while let Some(row) = rows.next()? {
            chunk.push((row.get(COLUMNS)?, row.get(COLUMNS + 1)?, entry(row)?));
        }
        let Some(&(last, ..)) = chunk.last() else { return Ok(()) };
        let facts = chunk.iter().map(|(id, has_next, r)| Fact {
            id: Some(*id),
            row: r,
            failed: r.error_kind.is_some() && !has_next,
        });
        upsert(conn, &Aggregates::of(facts, []))?;
        after = last;
    }
}

/// Binds `rows` to a multi-row insert, by position: a slice of `&dyn ToSql` per chunk cost
/// ~900 instructions per row more.
fn bind(stmt: &mut rusqlite::Statement<'_>, rows: &[LedgerEntry]) -> rusqlite::Result<()> {
    for (k, r) in rows.iter().enumerate() {
        let at = k * COLUMNS;
        let u = &r.usage;
        stmt.raw_bind_parameter(at + 1, &r.request_id)?;
        stmt.raw_bind_parameter(at + 2, r.attempt)?;
        stmt.raw_bind_parameter(at + 3, r.ts_ms)?;
        stmt.raw_bind_parameter(at + 4, r.key_id.as_deref())?;
        stmt.raw_bind_parameter(at + 5, &r.provider)?;
        stmt.raw_bind_parameter(at + 6, &r.model)?;
        stmt.raw_bind_parameter(at + 7, &r.route_reason)?;
        stmt.raw_bind_parameter(at + 8, count_to_db(u.input_uncached))?;
        stmt.raw_bind_parameter(at + 9, count_to_db(u.input_cache_read))?;
        stmt.raw_bind_parameter(at + 10, count_to_db(u.input_cache_write))?;
        stmt.raw_bind_parameter(at + 11, count_to_db(u.output))?;
        stmt.raw_bind_parameter(at + 12, count_to_db(u.output_reasoning))?;
        stmt.raw_bind_parameter(at + 13, r.cost_nanos)?;
        stmt.raw_bind_parameter(at + 14, r.reference_cost_nanos)?;
        stmt.raw_bind_parameter(at + 15, &r.catalog_version)?;
        stmt.raw_bind_parameter(at + 16, r.ttfb_ms)?;
        stmt.raw_bind_parameter(at + 17, r.latency_ms)?;
        stmt.raw_bind_parameter(at + 18, r.status)?;
        stmt.raw_bind_parameter(at + 19, &r.error_kind)?;
        stmt.raw_bind_parameter(at + 20, r.estimated())?;
        stmt.raw_bind_parameter(at + 21, r.stream)?;
        stmt.raw_bind_parameter(at + 22, r.estimate.map(Estimate::as_str))?;
        stmt.raw_bind_parameter(at + 23, r.tenant_id.as_deref())?;
        stmt.raw_bind_parameter(at + 24, r.checks.as_deref())?;
        stmt.raw_bind_parameter(at + 25, r.needs)?;
        stmt.raw_bind_parameter(at + 26, r.cache_hit)?;
        stmt.raw_bind_parameter(at + 27, r.cache_saved_nanos)?;
        stmt.raw_bind_parameter(at + 28, r.energy_uwh)?;
        stmt.raw_bind_parameter(at + 29, r.co2e_ug)?;
    }
    Ok(())
}

const SELECT_BY_REQUEST: &str =
    concat!("SELECT ", entry_columns!(), " FROM ledger WHERE request_id = ?1 ORDER BY attempt, id");

/// Whether a row has the next attempt of its request, for `ledger AS l` (the
/// `(request_id, attempt)` index answers it).
macro_rules! has_next {
    () => {
        "EXISTS (SELECT 1 FROM ledger AS n WHERE n.request_id = l.request_id AND n.attempt = l.attempt + 1)"
    };
}

const SELECT_AFTER_ID: &str =
    concat!("SELECT ", entry_columns!(), ", id, ", has_next!(), " FROM ledger AS l WHERE id > ?1 ORDER BY id LIMIT ?2");

const SELECT_EXISTS: &str = "SELECT 1 FROM ledger WHERE request_id = ?1 AND attempt = ?2";

/// The checked rows and side calls of a window, through the partial index `ledger_checked_ts`.
const SELECT_CHECKED: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " FROM ledger WHERE (checks IS NOT NULL OR attempt = 0) AND ts_ms >= ?1 AND ts_ms < ?2 ORDER BY request_id, attempt, id"
);

const SELECT_FAILED_AT: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " FROM ledger WHERE request_id = ?1 AND attempt = ?2 AND error_kind IS NOT NULL"
);

/// The raw rows of part of one minute (`?1`), found through that minute's id range (the
/// ledger has no time index), each with whether it has a next attempt. A minute with no rows
/// has no range, and BETWEEN NULL matches nothing.
const SELECT_RAW_EDGE: &str = concat!(
    "SELECT ",
    entry_columns!(),
    ", ",
    has_next!(),
    " FROM ledger AS l WHERE id BETWEEN (SELECT min_id FROM ledger_minute_ids WHERE bucket_ms = ?1) ",
    "AND (SELECT max_id FROM ledger_minute_ids WHERE bucket_ms = ?1) AND ts_ms >= ?2 AND ts_ms < ?3 ",
    "AND (?4 IS NULL OR key_id = ?4)"
);

/// A ledger in one SQLite file. Clones share the connections.
#[derive(Clone)]
pub struct SqliteLedger {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLedger").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl SqliteLedger {
    pub(super) async fn open(path: &str) -> Result<SqliteLedger, LedgerError> {
        let path = PathBuf::from(path);
        blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut writer = connect(&path)?;
            migrate(&mut writer)?;
            let reader = connect(&path)?;
            Ok(SqliteLedger { inner: Arc::new(Inner { path, writer: Mutex::new(writer), reader: Mutex::new(reader) }) })
        })
        .await
    }

    /// The file this ledger lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(super) async fn append(&self, rows: Vec<LedgerEntry>) -> (Vec<LedgerEntry>, Result<(), LedgerError>) {
        if rows.is_empty() {
            return (rows, Ok(()));
        }
        let inner = self.inner.clone();
        let task = tokio::task::spawn_blocking(move || {
            let r = insert(&mut lock(&inner.writer), &rows);
            (rows, r)
        });
        task.await.unwrap_or_else(|e| (Vec::new(), Err(LedgerError::Task(e.to_string()))))
    }

    /// Answers a plan's pieces in one read transaction (one snapshot of the file).
    pub(super) async fn answer(&self, plan: Plan) -> Result<Answer, LedgerError> {
        self.read(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let mut out = Answer::default();
            let labels = plan.shape.labels();
            let timed = plan.timed && plan.family.timed();
            for seg in &plan.segments {
                match *seg {
                    Segment::Buckets { grain, from, to } => {
                        let sql =
                            sql::select(Dialect::Sqlite, plan.family, grain, plan.shape, plan.key.is_some(), timed);
                        let mut stmt = tx.prepare_cached(sql)?;
                        stmt.raw_bind_parameter(1, from)?;
                        stmt.raw_bind_parameter(2, to)?;
                        stmt.raw_bind_parameter(3, plan.step_ms)?;
                        if let Some(key) = &plan.key {
                            stmt.raw_bind_parameter(4, key)?;
                        }
                        let mut rows = stmt.raw_query();
                        let mut v = vec![0i64; UsageSums::COLUMNS.len() + if timed { TIMING_VALUES } else { 0 }];
                        while let Some(row) = rows.next()? {
                            let l: Vec<String> = (1..=labels).map(|i| row.get(i)).collect::<Result<_, _>>()?;
                            for (i, x) in v.iter_mut().enumerate() {
                                *x = row.get(i + 1 + labels)?;
                            }
                            let (u, t) = read_sums(timed, &v);
                            out.sums.push((row.get(0)?, l, u, t));
                        }
                    }
                    Segment::Raw { minute, from, to } => {
                        let mut stmt = tx.prepare_cached(SELECT_RAW_EDGE)?;
                        let mut rows = stmt.query(params![minute, from, to, plan.key])?;
                        while let Some(row) = rows.next()? {
                            out.raw.push((entry(row)?, row.get(COLUMNS)?));
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn count(&self) -> Result<i64, LedgerError> {
        self.read(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0))?)).await
    }

    pub(super) async fn checked(&self, since_ms: i64, until_ms: i64) -> Result<Vec<LedgerEntry>, LedgerError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(SELECT_CHECKED)?;
            let mut rows = stmt.query(params![since_ms, until_ms])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(entry(row)?);
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn rows(&self, request_id: &str) -> Result<Vec<LedgerEntry>, LedgerError> {
        let request_id = request_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(SELECT_BY_REQUEST)?;
            let mut rows = stmt.query(params![request_id])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(entry(row)?);
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, LedgerError> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || f(&lock(&inner.reader))).await
    }

    /// Runs `f` with the writer connection on the blocking pool (tenancy's changes, which
    /// open their own IMMEDIATE transaction on it).
    pub(super) async fn write_with<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, LedgerError> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || f(&mut lock(&inner.writer))).await
    }
}

/// Runs SQLite work on the blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, LedgerError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, LedgerError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| LedgerError::Task(e.to_string()))?
}

/// A panic while holding the lock cannot leave the connection mid-transaction (rusqlite
/// rolls back on drop), so a poisoned lock is still safe to use.
fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Statements a connection keeps prepared. A batch uses up to 21 (six insert shapes, two
/// lookups, twelve aggregate upserts and the minute ids), and rusqlite's default of 16 made
/// the least recently used one miss every time: each batch parsed every upsert again.
const STATEMENT_CACHE: usize = 64;

fn connect(path: &Path) -> Result<Connection, LedgerError> {
    let conn = Connection::open(path)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: readers never block the writer and a commit is one append to the log.
    // Switching a new file to WAL needs an exclusive lock, and SQLite can answer BUSY here
    // without consulting the busy handler when several processes open the file at once:
    // retry briefly rather than fail start-up.
    let mut tries = 0;
    let mode: String = loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)) {
            Ok(m) => break m,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if tries < 100
                    && matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    };
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "ledger: SQLite refused WAL mode; writes will be slower");
    }
    // NORMAL in WAL mode survives a process crash (SIGKILL) and only risks the last
    // commits on power loss, for far fewer fsyncs than FULL.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoint less often than the default 1,000 pages: index pages touched by many
    // batches are then copied into the database file once per checkpoint rather than
    // once per few batches (measured: file writes were the ledger's largest cost).
    conn.pragma_update(None, "wal_autocheckpoint", 16_000)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), LedgerError> {
    // IMMEDIATE so two processes opening a fresh file at once apply each step once.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
    )?;
    // A back-fill reads and writes rows with today's statements, so it runs once every step
    // is applied (in the same transaction), whichever step asked for it.
    let mut backfills = false;
    for m in MIGRATIONS {
        let applied = tx
            .query_row("SELECT 1 FROM schema_migrations WHERE version = ?1", params![m.version], |_| Ok(()))
            .optional()?
            .is_some();
        if !applied {
            tx.execute_batch(m.sql)?;
            backfills |= m.backfill;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
                params![m.version, now_ms()],
            )?;
        }
    }
    if backfills {
        backfill(&tx, BACKFILL_CHUNK)?;
    }
    tx.commit()?;
    Ok(())
}

fn entry(row: &rusqlite::Row<'_>) -> Result<LedgerEntry, LedgerError> {
    Ok(LedgerEntry {
        request_id: row.get(0)?,
        attempt: from_db(row.get(1)?, "attempt")?,
        ts_ms: row.get(2)?,
        key_id: row.get::<_, Option<String>>(3)?.map(Arc::from),
        tenant_id: row.get::<_, Option<String>>(22)?.map(Arc::from),
        checks: row.get(23)?,
        needs: row.get(24)?,
        cache_hit: row.get(25)?,
        cache_saved_nanos: row.get(26)?,
        energy_uwh: row.get(27)?,
        co2e_ug: row.get(28)?,
        provider: row.get(4)?,
        model: row.get(5)?,
        route_reason: row.get(6)?,
        usage: Usage {
            input_uncached: from_db(row.get(7)?, "input_uncached")?,
            input_cache_read: from_db(row.get(8)?, "input_cache_read")?,
            input_cache_write: from_db(row.get(9)?, "input_cache_write")?,
            output: from_db(row.get(10)?, "output")?,
            output_reasoning: from_db(row.get(11)?, "output_reasoning")?,
        },
        cost_nanos: row.get(12)?,
        reference_cost_nanos: row.get(13)?,
        catalog_version: row.get(14)?,
        ttfb_ms: row.get::<_, Option<i64>>(15)?.map(|v| from_db(v, "ttfb_ms")).transpose()?,
        latency_ms: from_db(row.get(16)?, "latency_ms")?,
        status: from_db(row.get(17)?, "status")?,
        error_kind: row.get(18)?,
        estimate: Estimate::from_columns(row.get(19)?, row.get::<_, Option<String>>(21)?.as_deref()),
        stream: row.get(20)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database file in the temp dir, removed (with its WAL files) on drop.
    struct TempDb(PathBuf);

    impl TempDb {
        fn new(tag: &str) -> TempDb {
            TempDb(std::env::temp_dir().join(format!("bourse-{tag}-{}-{}.db", std::process::id(), fastrand::u64(..))))
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
        }
    }

    fn entry(request_id: &str) -> LedgerEntry {
        LedgerEntry {
            request_id: request_id.into(),
            attempt: 1,
            ts_ms: 1_700_000_000_000,
            key_id: None,
            tenant_id: None,
            provider: "p".into(),
            model: "m".into(),
            route_reason: None,
            usage: Usage { input_uncached: 3, output: 4, ..Usage::default() },
            cost_nanos: 7,
            reference_cost_nanos: 9,
            catalog_version: "v".into(),
            ttfb_ms: Some(1),
            latency_ms: 2,
            status: 200,
            error_kind: None,
            estimate: None,
            stream: false,
            checks: None,
            needs: 0,
            cache_hit: false,
            cache_saved_nanos: 0,
            energy_uwh: Some(11),
            co2e_ug: Some(5),
        }
    }

    fn names(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    #[tokio::test]
    async fn a_version_1_file_upgrades_in_place() {
        let db = TempDb::new("upgrade");
        {
            let mut conn = connect(&db.0).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
            )
            .unwrap();
            tx.execute_batch(MIGRATIONS[0].sql).unwrap();
            tx.execute("INSERT INTO schema_migrations VALUES (1, 0)", []).unwrap();
            // A row as version 1 wrote it: estimated, with no `estimator` column yet.
            tx.execute(
                "INSERT INTO ledger (request_id, attempt, ts_ms, provider, model, input_uncached, input_cache_read,
                 input_cache_write, output, output_reasoning, cost_nanos, reference_cost_nanos, catalog_version,
                 ttfb_ms, latency_ms, status, estimated, stream)
                 VALUES ('before', 1, 1700000000000, 'p', 'm', 3, 0, 0, 4, 0, 7, 9, 'v', 1, 2, 200, 1, 0)",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
            let indexes = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger' ORDER BY 1";
            assert_eq!(names(&conn, indexes), ["ledger_request_id", "ledger_ts_ms"]);
        }
        let ledger = SqliteLedger::open(db.0.to_str().unwrap()).await.unwrap();
        assert_eq!(ledger.count().await.unwrap(), 1, "the rows stay");
        // Estimated before the column existed: counted with the tokenizer, as all were then;
        // no energy estimate (NULL), no needs, no cache hit.
        let before =
            LedgerEntry { estimate: Some(Estimate::Tokenizer), energy_uwh: None, co2e_ug: None, ..entry("before") };
        assert_eq!(ledger.rows("before").await.unwrap(), [before]);
        ledger.append(vec![LedgerEntry { estimate: Some(Estimate::Heuristic), ..entry("after") }]).await.1.unwrap();
        assert_eq!(ledger.rows("after").await.unwrap()[0].estimate, Some(Estimate::Heuristic));
        let conn = lock(&ledger.inner.reader);
        let indexes = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger' ORDER BY 1";
        assert_eq!(
            names(&conn, indexes),
            ["ledger_checked_ts", "ledger_request_id"],
            "the unused time index is gone (the checked rows' partial one is not that)"
        );
        // The cascade report reads the checked rows through their partial index, never a scan.
        let sql = format!("EXPLAIN QUERY PLAN {}", SELECT_CHECKED.replace("?1", "0").replace("?2", "1"));
        let mut stmt = conn.prepare(&sql).unwrap();
        let plan: Vec<String> = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap().map(Result::unwrap).collect();
        assert!(plan.iter().any(|d| d.contains("ledger_checked_ts")), "{plan:?}");
        assert_eq!(
            names(&conn, "SELECT CAST(version AS TEXT) FROM schema_migrations ORDER BY version"),
            MIGRATIONS.iter().map(|m| m.version.to_string()).collect::<Vec<_>>(),
            "every step applied once"
        );
    }

    /// Every aggregate table's rows, in key order.
    fn aggregate_tables(conn: &Connection) -> Vec<Vec<String>> {
        ["models_minute", "models_day", "routes_hour", "keys_hour", "usage_minute", "usage_day", "ledger_minute_ids"]
            .iter()
            .map(|t| {
                // Every column as text, one line per row.
                let cols: Vec<String> = {
                    let stmt = conn.prepare(&format!("SELECT * FROM {t}")).unwrap();
                    stmt.column_names().iter().map(|c| format!("CAST({c} AS TEXT)")).collect()
                };
                names(conn, &format!("SELECT {} FROM {t} ORDER BY 1", cols.join(" || ',' || ")))
            })
            .collect()
    }

    /// The back-fill, in chunks that do not divide the rows evenly, writes exactly what the
    /// batches wrote.
    #[tokio::test]
    async fn a_chunked_backfill_equals_the_batches() {
        let db = TempDb::new("backfill");
        let ledger = SqliteLedger::open(db.0.to_str().unwrap()).await.unwrap();
        let mut conn = lock(&ledger.inner.writer);
        for b in 0..5i64 {
            let rows: Vec<LedgerEntry> = (0..13i64)
                .map(|i| LedgerEntry {
                    ts_ms: 1_700_000_000_000 + (b * 13 + i) * 41_000,
                    provider: ["p", "q"][(i % 2) as usize].into(),
                    key_id: (i % 3 == 0).then(|| "k".into()),
                    cost_nanos: b * 100 + i,
                    ttfb_ms: Some((i * 40) as u32),
                    latency_ms: (i * 90) as u32,
                    ..entry(&format!("r{b}-{i}"))
                })
                .collect();
            insert(&mut conn, &rows).unwrap();
        }
        let written = aggregate_tables(&conn);
        assert!(written.iter().all(|t| !t.is_empty()));
        for (f, g) in super::super::aggregate::tables() {
            conn.execute_batch(&format!("DELETE FROM {}", f.table(g))).unwrap();
        }
        conn.execute_batch("DELETE FROM ledger_minute_ids").unwrap();
        backfill(&conn, 7).unwrap();
        assert_eq!(aggregate_tables(&conn), written);
    }

    /// Statements are `INSERT OR FAIL` (no statement journal): a row refused in the second
    /// statement of a batch still leaves nothing of the batch behind.
    #[tokio::test]
    async fn a_batch_is_written_whole_or_not_at_all() {
        let db = TempDb::new("whole-batch");
        let ledger = SqliteLedger::open(db.0.to_str().unwrap()).await.unwrap();
        let mut conn = lock(&ledger.inner.writer);
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON ledger WHEN NEW.request_id = 'bad'
             BEGIN SELECT RAISE(FAIL, 'refused'); END",
        )
        .unwrap();
        // 32 rows in the first statement, then 8 with the refused one last.
        let mut rows: Vec<LedgerEntry> = (0..39).map(|i| entry(&format!("ok-{i}"))).collect();
        rows.push(entry("bad"));
        assert!(insert(&mut conn, &rows).is_err());
        let count: i64 = conn.query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0)).unwrap();
        assert_eq!(count, 0);
        let sums: i64 = conn.query_row("SELECT COUNT(*) FROM models_minute", [], |r| r.get(0)).unwrap();
        assert_eq!(sums, 0, "nor any of its aggregates");
        rows.pop();
        insert(&mut conn, &rows).unwrap();
        let count: i64 = conn.query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0)).unwrap();
        assert_eq!(count, 39);
        let sums: i64 = conn.query_row("SELECT SUM(attempts) FROM keys_day", [], |r| r.get(0)).unwrap();
        assert_eq!(sums, 39);
    }
}
