//! The PostgreSQL store, for gateways that share one ledger or already run PostgreSQL.
//!
//! Connections are made WITHOUT TLS for now (`NoTls`): use a local socket, a private
//! network or a TLS-terminating proxy; `sslmode=require` in the URL fails to connect
//! rather than silently going plain. One connection is kept and re-made lazily when it
//! drops, so a database restart costs the writer a retried batch rather than the ledger.
//!
//! A batch is one prepared statement: `INSERT ... SELECT * FROM UNNEST($1, ..., $23)` with one
//! array per column, and in data-modifying WITH clauses of the same statement the upserts of
//! its aggregates ([`super::aggregate`], pre-summed in memory) into the four aggregate tables.
//! A single statement is its own transaction (the rows and their sums, or nothing) and a
//! single round trip, whatever the batch size, and needs no connection of its own.

use super::aggregate::{read_sums, Aggregates, Fact, Segment, Successions, Table, UsageSums, TIMING_VALUES};
use super::series::{Answer, Plan};
use super::sql::{self, Dialect};
use super::{count_to_db, from_db, Estimate, LedgerEntry, LedgerError, Migration};
use crate::canonical::Usage;
use crate::timespec::now_ms;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, GenericClient, NoTls, Row, Statement};

const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, sql: include_str!("../../migrations/postgres/0001_ledger.sql"), backfill: false },
    Migration { version: 2, sql: include_str!("../../migrations/postgres/0002_estimator.sql"), backfill: false },
    Migration { version: 3, sql: include_str!("../../migrations/postgres/0003_tenancy.sql"), backfill: false },
    Migration { version: 4, sql: include_str!("../../migrations/postgres/0004_aggregates.sql"), backfill: true },
    Migration { version: 5, sql: include_str!("../../migrations/postgres/0005_installation.sql"), backfill: false },
    Migration { version: 6, sql: include_str!("../../migrations/postgres/0006_evidence.sql"), backfill: false },
    Migration { version: 7, sql: include_str!("../../migrations/postgres/0007_market.sql"), backfill: false },
    Migration { version: 8, sql: include_str!("../../migrations/postgres/0008_responses.sql"), backfill: false },
    Migration { version: 9, sql: include_str!("../../migrations/postgres/0009_energy.sql"), backfill: false },
];

/// Key for `pg_advisory_xact_lock`, so gateways starting together migrate one at a time
/// (`CREATE TABLE IF NOT EXISTS` alone still races in PostgreSQL). Arbitrary but fixed.
const MIGRATION_LOCK: i64 = 0x626f_7572_7365; // "bourse"

/// Used when the URL sets no `connect_timeout`, so an unreachable server fails a batch
/// (which the writer retries) instead of hanging it for the kernel's TCP timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const INSERT: &str = concat!(
    "INSERT INTO ledger (",
    entry_columns!(),
    ") SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], ",
    "$7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], ",
    "$14::bigint[], $15::text[], $16::bigint[], $17::bigint[], $18::integer[], $19::text[], $20::boolean[], ",
    "$21::boolean[], $22::text[], $23::text[], $24::text[], $25::smallint[], $26::boolean[], $27::bigint[], ",
    "$28::bigint[], $29::bigint[])"
);

const SELECT_BY_REQUEST: &str =
    concat!("SELECT ", entry_columns!(), " FROM ledger WHERE request_id = $1 ORDER BY attempt, id");

/// Whether a row has the next attempt of its request, for `ledger AS l` (the
/// `(request_id, attempt)` index answers it).
macro_rules! has_next {
    () => {
        "EXISTS (SELECT 1 FROM ledger AS n WHERE n.request_id = l.request_id AND n.attempt = l.attempt + 1)"
    };
}

const SELECT_AFTER_ID: &str =
    concat!("SELECT ", entry_columns!(), ", id, ", has_next!(), " FROM ledger AS l WHERE id > $1 ORDER BY id LIMIT $2");

/// The checked rows and side calls of a window, through the partial index `ledger_checked_ts`.
const SELECT_CHECKED: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " FROM ledger WHERE (checks IS NOT NULL OR attempt = 0) AND ts_ms >= $1 AND ts_ms < $2 ORDER BY request_id, attempt, id"
);

/// Which of the keys (request id, attempt) are stored.
const SELECT_EXISTS: &str = "SELECT DISTINCT request_id, attempt FROM ledger \
     WHERE (request_id, attempt) IN (SELECT * FROM UNNEST($1::text[], $2::bigint[]))";

/// The stored failed rows at the keys (request id, attempt).
const SELECT_FAILED_AT: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " FROM ledger WHERE (request_id, attempt) IN (SELECT * FROM UNNEST($1::text[], $2::bigint[])) ",
    "AND error_kind IS NOT NULL"
);

/// The raw rows of part of a minute at a window's edge, through the ledger's time index, each
/// with whether it has a next attempt.
const SELECT_RAW_EDGE: &str = concat!(
    "SELECT ",
    entry_columns!(),
    ", ",
    has_next!(),
    " FROM ledger AS l WHERE ts_ms >= $1 AND ts_ms < $2 AND ($3::text IS NULL OR key_id = $3)"
);

/// The batch statement: the rows and the upserts of their aggregates.
fn write_sql() -> &'static str {
    sql::postgres_write(INSERT)
}

/// A ledger in a PostgreSQL database. Clones share the connection.
#[derive(Clone)]
pub struct PostgresLedger {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    /// The live connection, replaced when it has closed. Held only to check or replace it.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

/// A connection and the statements prepared on it (statements belong to one connection).
struct Conn {
    client: Client,
    insert: Statement,
}

impl fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Config's Debug redacts the password.
        f.debug_struct("PostgresLedger").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl PostgresLedger {
    pub(super) async fn open(url: &str) -> Result<PostgresLedger, LedgerError> {
        let mut config: Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let mut client = connect(&config).await?;
        migrate(&mut client).await?;
        let insert = client.prepare(write_sql()).await?;
        let conn = Arc::new(Conn { client, insert });
        Ok(PostgresLedger { inner: Arc::new(Inner { config, conn: tokio::sync::Mutex::new(Some(conn)) }) })
    }

    /// A connection of its own, for a transaction that must not interleave with the batch
    /// writer's statements on the shared one (tenancy's changes: rare, so not pooled).
    pub(super) async fn dedicated(&self) -> Result<Client, LedgerError> {
        connect(&self.inner.config).await
    }

    /// The shared client, for single reads.
    pub(super) async fn client(&self) -> Result<impl std::ops::Deref<Target = Client>, LedgerError> {
        struct Shared(Arc<Conn>);
        impl std::ops::Deref for Shared {
            type Target = Client;
            fn deref(&self) -> &Client {
                &self.0.client
            }
        }
        Ok(Shared(self.conn().await?))
    }

    /// The current connection, reconnecting if the last one closed.
    async fn conn(&self) -> Result<Arc<Conn>, LedgerError> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(conn.clone());
        }
        *slot = None;
        let client = connect(&self.inner.config).await?;
        let insert = client.prepare(write_sql()).await?;
        let conn = Arc::new(Conn { client, insert });
        *slot = Some(conn.clone());
        tracing::info!("ledger: reconnected to PostgreSQL");
        Ok(conn)
    }

    pub(super) async fn append(&self, rows: &[LedgerEntry]) -> Result<(), LedgerError> {
        if rows.is_empty() {
            return Ok(());
        }
        let conn = self.conn().await?;
        let c = &conn.client;
        // Which failed attempts are their request's last: looked up before the batch is in.
        // A request's attempts are written by the one gateway that made them, one batch after
        // another, so no other writer adds to what these reads see.
        let succession = Successions::of(rows);
        let mut stored = HashSet::new();
        let mut earlier = Vec::new();
        if !succession.exists.is_empty() {
            let (ids, ns): (Vec<&str>, Vec<i64>) = succession.exists.iter().copied().unzip();
            for row in c.query(SELECT_EXISTS, &[&ids, &ns]).await? {
                stored.insert((row.try_get::<_, String>(0)?, row.try_get::<_, i64>(1)?));
            }
        }
        if !succession.before.is_empty() {
            let (ids, ns): (Vec<&str>, Vec<i64>) = succession.before.iter().copied().unzip();
            for row in c.query(SELECT_FAILED_AT, &[&ids, &ns]).await? {
                earlier.push(entry(&row)?);
            }
        }
        let (facts, corrections) = succession.resolve(|_| None, &stored, &earlier);
        write(c, &conn.insert, rows, &Aggregates::of(facts, corrections)).await
    }

    /// Answers a plan's pieces, one query each.
    pub(super) async fn answer(&self, plan: &Plan) -> Result<Answer, LedgerError> {
        let conn = self.conn().await?;
        let c = &conn.client;
        let mut out = Answer::default();
        let labels = plan.shape.labels();
        let timed = plan.timed && plan.family.timed();
        for seg in &plan.segments {
            match *seg {
                Segment::Buckets { grain, from, to } => {
                    let sql = sql::select(Dialect::Postgres, plan.family, grain, plan.shape, plan.key.is_some(), timed);
                    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&from, &to, &plan.step_ms];
                    if let Some(key) = &plan.key {
                        params.push(key);
                    }
                    let mut v = vec![0i64; UsageSums::COLUMNS.len() + if timed { TIMING_VALUES } else { 0 }];
                    for row in c.query(sql, &params).await? {
                        let l: Vec<String> = (1..=labels).map(|i| row.try_get(i)).collect::<Result<_, _>>()?;
                        for (i, x) in v.iter_mut().enumerate() {
                            *x = row.try_get(i + 1 + labels)?;
                        }
                        let (u, t) = read_sums(timed, &v);
                        out.sums.push((row.try_get(0)?, l, u, t));
                    }
                }
                Segment::Raw { from, to, .. } => {
                    for row in c.query(SELECT_RAW_EDGE, &[&from, &to, &plan.key]).await? {
                        out.raw.push((entry(&row)?, row.try_get(super::ENTRY_COLUMNS)?));
                    }
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn count(&self) -> Result<i64, LedgerError> {
        let conn = self.conn().await?;
        Ok(conn.client.query_one("SELECT COUNT(*) FROM ledger", &[]).await?.try_get(0)?)
    }

    pub(super) async fn checked(&self, since_ms: i64, until_ms: i64) -> Result<Vec<LedgerEntry>, LedgerError> {
        let rows = self.client().await?.query(SELECT_CHECKED, &[&since_ms, &until_ms]).await?;
        rows.iter().map(entry).collect()
    }

    pub(super) async fn rows(&self, request_id: &str) -> Result<Vec<LedgerEntry>, LedgerError> {
        let conn = self.conn().await?;
        let rows = conn.client.query(SELECT_BY_REQUEST, &[&request_id]).await?;
        rows.iter().map(entry).collect()
    }
}

async fn connect(config: &Config) -> Result<Client, LedgerError> {
    let (client, connection) = config.connect(NoTls).await?;
    // The connection future does the socket I/O for the client; it ends when the client
    // is dropped or the server goes away (then `is_closed` makes us reconnect).
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "ledger: PostgreSQL connection lost");
        }
    });
    Ok(client)
}

async fn migrate(client: &mut Client) -> Result<(), LedgerError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint PRIMARY KEY, applied_ms bigint NOT NULL)",
    )
    .await?;
    // A back-fill reads and writes rows with today's statements, so it runs once every step
    // is applied (in the same transaction), whichever step asked for it.
    let mut backfills = false;
    for m in MIGRATIONS {
        let applied =
            tx.query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[&m.version]).await?.is_some();
        if !applied {
            tx.batch_execute(m.sql).await?;
            backfills |= m.backfill;
            tx.execute("INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)", &[&m.version, &now_ms()])
                .await?;
        }
    }
    if backfills {
        backfill(&tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Rows read per step of the back-fill: bounded memory whatever the ledger's size.
const BACKFILL_CHUNK: i64 = 50_000;

/// Sums every row already in the ledger into the aggregate tables (the migration that
/// creates them), a chunk of rows at a time in id order, through the batch statement with
/// no rows to insert.
async fn backfill(tx: &tokio_postgres::Transaction<'_>) -> Result<(), LedgerError> {
    let select = tx.prepare(SELECT_AFTER_ID).await?;
    let upsert = tx.prepare(write_sql()).await?;
    let mut after = i64::MIN;
    loop {
        let rows = tx.query(&select, &[&after, &BACKFILL_CHUNK]).await?;
        let Some(last) = rows.last() else { return Ok(()) };
        after = last.try_get(super::ENTRY_COLUMNS)?;
        let chunk = rows
            .iter()
            .map(|r| Ok((entry(r)?, r.try_get::<_, bool>(super::ENTRY_COLUMNS + 1)?)))
            .collect::<Result<Vec<_>, LedgerError>>()?;
        let facts =
            chunk.iter().map(|(r, has_next)| Fact { id: None, row: r, failed: r.error_kind.is_some() && !has_next });
        write(tx, &upsert, &[], &Aggregates::of(facts, [])).await?;
    }
}

/// Runs the batch statement: `rows` into the ledger and `agg` into the aggregate tables.
async fn write(
    client: &impl GenericClient,
    statement: &Statement,
    rows: &[LedgerEntry],
    agg: &Aggregates<'_>,
) -> Result<(), LedgerError> {
    let col = |f: fn(&LedgerEntry) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    let request_id: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    let attempt = col(|r| i64::from(r.attempt));
    let ts_ms = col(|r| r.ts_ms);
    let key_id: Vec<Option<&str>> = rows.iter().map(|r| r.key_id.as_deref()).collect();
    let provider: Vec<&str> = rows.iter().map(|r| r.provider.as_str()).collect();
    let model: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    let route_reason: Vec<Option<&str>> = rows.iter().map(|r| r.route_reason.as_deref()).collect();
    let input_uncached = col(|r| count_to_db(r.usage.input_uncached));
    let input_cache_read = col(|r| count_to_db(r.usage.input_cache_read));
    let input_cache_write = col(|r| count_to_db(r.usage.input_cache_write));
    let output = col(|r| count_to_db(r.usage.output));
    let output_reasoning = col(|r| count_to_db(r.usage.output_reasoning));
    let cost_nanos = col(|r| r.cost_nanos);
    let reference_cost_nanos = col(|r| r.reference_cost_nanos);
    let catalog_version: Vec<&str> = rows.iter().map(|r| r.catalog_version.as_str()).collect();
    let ttfb_ms: Vec<Option<i64>> = rows.iter().map(|r| r.ttfb_ms.map(i64::from)).collect();
    let latency_ms = col(|r| i64::from(r.latency_ms));
    let status: Vec<i32> = rows.iter().map(|r| i32::from(r.status)).collect();
    let error_kind: Vec<Option<&str>> = rows.iter().map(|r| r.error_kind.as_deref()).collect();
    let estimated: Vec<bool> = rows.iter().map(LedgerEntry::estimated).collect();
    let stream: Vec<bool> = rows.iter().map(|r| r.stream).collect();
    let estimator: Vec<Option<&str>> = rows.iter().map(|r| r.estimate.map(Estimate::as_str)).collect();
    let tenant_id: Vec<Option<&str>> = rows.iter().map(|r| r.tenant_id.as_deref()).collect();
    let checks: Vec<Option<&str>> = rows.iter().map(|r| r.checks.as_deref()).collect();
    let needs: Vec<i16> = rows.iter().map(|r| i16::from(r.needs)).collect();
    let cache_hit: Vec<bool> = rows.iter().map(|r| r.cache_hit).collect();
    let cache_saved_nanos = col(|r| r.cache_saved_nanos);
    let energy_uwh: Vec<Option<i64>> = rows.iter().map(|r| r.energy_uwh).collect();
    let co2e_ug: Vec<Option<i64>> = rows.iter().map(|r| r.co2e_ug).collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        &request_id,
        &attempt,
        &ts_ms,
        &key_id,
        &provider,
        &model,
        &route_reason,
        &input_uncached,
        &input_cache_read,
        &input_cache_write,
        &output,
        &output_reasoning,
        &cost_nanos,
        &reference_cost_nanos,
        &catalog_version,
        &ttfb_ms,
        &latency_ms,
        &status,
        &error_kind,
        &estimated,
        &stream,
        &estimator,
        &tenant_id,
        &checks,
        &needs,
        &cache_hit,
        &cache_saved_nanos,
        &energy_uwh,
        &co2e_ug,
    ];
    // Every aggregate table's columns as arrays, in `sql::postgres_write`'s order.
    let tables: Vec<Arrays<'_>> = agg.tables.iter().map(Arrays::of).collect();
    for a in &tables {
        a.bind(&mut params);
    }
    client.execute(statement, &params).await?;
    Ok(())
}

/// One aggregate table's groups as one array per column: bucket, the family's dimensions,
/// its values.
struct Arrays<'a> {
    bucket: Vec<i64>,
    dims: Vec<Vec<&'a str>>,
    values: Vec<Vec<i64>>,
}

impl<'a> Arrays<'a> {
    fn of(t: &Table<'a>) -> Self {
        let n = t.groups.len();
        let dims = t.family.dims();
        let values = t.family.value_count();
        let mut a = Arrays {
            bucket: Vec::with_capacity(n),
            dims: vec![Vec::with_capacity(n); dims.len()],
            values: vec![Vec::with_capacity(n); values],
        };
        for g in &t.groups {
            a.bucket.push(g.bucket_ms);
            for (column, &i) in a.dims.iter_mut().zip(dims) {
                column.push(g.dims[i]);
            }
            for (column, v) in a.values.iter_mut().zip(g.values(t.family)) {
                column.push(v);
            }
        }
        a
    }

    fn bind<'b>(&'b self, params: &mut Vec<&'b (dyn ToSql + Sync)>) {
        params.push(&self.bucket);
        params.extend(self.dims.iter().map(|d| d as &(dyn ToSql + Sync)));
        params.extend(self.values.iter().map(|v| v as &(dyn ToSql + Sync)));
    }
}

fn entry(row: &Row) -> Result<LedgerEntry, LedgerError> {
    Ok(LedgerEntry {
        request_id: row.try_get(0)?,
        attempt: from_db(row.try_get(1)?, "attempt")?,
        ts_ms: row.try_get(2)?,
        key_id: row.try_get::<_, Option<String>>(3)?.map(Arc::from),
        tenant_id: row.try_get::<_, Option<String>>(22)?.map(Arc::from),
        checks: row.try_get(23)?,
        needs: from_db(i64::from(row.try_get::<_, i16>(24)?), "needs")?,
        cache_hit: row.try_get(25)?,
        cache_saved_nanos: row.try_get(26)?,
        energy_uwh: row.try_get(27)?,
        co2e_ug: row.try_get(28)?,
        provider: row.try_get(4)?,
        model: row.try_get(5)?,
        route_reason: row.try_get(6)?,
        usage: Usage {
            input_uncached: from_db(row.try_get(7)?, "input_uncached")?,
            input_cache_read: from_db(row.try_get(8)?, "input_cache_read")?,
            input_cache_write: from_db(row.try_get(9)?, "input_cache_write")?,
            output: from_db(row.try_get(10)?, "output")?,
            output_reasoning: from_db(row.try_get(11)?, "output_reasoning")?,
        },
        cost_nanos: row.try_get(12)?,
        reference_cost_nanos: row.try_get(13)?,
        catalog_version: row.try_get(14)?,
        ttfb_ms: row.try_get::<_, Option<i64>>(15)?.map(|v| from_db(v, "ttfb_ms")).transpose()?,
        latency_ms: from_db(row.try_get(16)?, "latency_ms")?,
        status: from_db(i64::from(row.try_get::<_, i32>(17)?), "status")?,
        error_kind: row.try_get(18)?,
        estimate: Estimate::from_columns(row.try_get(19)?, row.try_get::<_, Option<&str>>(21)?),
        stream: row.try_get(20)?,
    })
}
