//! The PostgreSQL store, for gateways that share one ledger or already run PostgreSQL.
//!
//! Connections are made WITHOUT TLS for now (`NoTls`): use a local socket, a private
//! network or a TLS-terminating proxy; `sslmode=require` in the URL fails to connect
//! rather than silently going plain. One connection is kept and re-made lazily when it
//! drops, so a database restart costs the writer a retried batch rather than the ledger.
//!
//! A batch is one prepared `INSERT ... SELECT * FROM UNNEST($1, ..., $21)` with one array
//! per column: a single statement (hence its own transaction, all rows or none) and a
//! single round trip, whatever the batch size.

use super::report::{GroupBy, ReportQuery, ReportRow};
use super::{count_to_db, from_db, Estimate, LedgerEntry, LedgerError, Migration};
use crate::canonical::Usage;
use crate::timespec::now_ms;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, sql: include_str!("../../migrations/postgres/0001_ledger.sql") },
    Migration { version: 2, sql: include_str!("../../migrations/postgres/0002_estimator.sql") },
    Migration { version: 3, sql: include_str!("../../migrations/postgres/0003_tenancy.sql") },
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
    "$21::boolean[], $22::text[], $23::text[])"
);

const SELECT_BY_REQUEST: &str =
    concat!("SELECT ", entry_columns!(), " FROM ledger WHERE request_id = $1 ORDER BY attempt, id");

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
        let insert = client.prepare(INSERT).await?;
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
        let insert = client.prepare(INSERT).await?;
        let conn = Arc::new(Conn { client, insert });
        *slot = Some(conn.clone());
        tracing::info!("ledger: reconnected to PostgreSQL");
        Ok(conn)
    }

    pub(super) async fn append(&self, rows: &[LedgerEntry]) -> Result<(), LedgerError> {
        if rows.is_empty() {
            return Ok(());
        }
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

        let conn = self.conn().await?;
        conn.client
            .execute(
                &conn.insert,
                &[
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
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn report(&self, q: &ReportQuery) -> Result<Vec<ReportRow>, LedgerError> {
        // Adding an interval to a timestamp WITHOUT time zone keeps the session TimeZone out
        // of it: the date is always UTC, like SQLite's.
        let sql = report_sql!(
            q.by,
            day: "to_char(TIMESTAMP '1970-01-01' + ts_ms * INTERVAL '1 millisecond', 'YYYY-MM-DD')",
            sum_cast: "::bigint",
            since: "$1::bigint",
            until: "$2::bigint",
            key: "$3::text"
        );
        let conn = self.conn().await?;
        let rows = conn.client.query(sql, &[&q.since_ms, &q.until_ms, &q.key]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut sums = [0i64; 11];
            for (i, s) in sums.iter_mut().enumerate() {
                *s = row.try_get(i + 1)?;
            }
            out.push(ReportRow::from_sums(row.try_get(0)?, sums));
        }
        Ok(out)
    }

    pub(super) async fn count(&self) -> Result<i64, LedgerError> {
        let conn = self.conn().await?;
        Ok(conn.client.query_one("SELECT COUNT(*) FROM ledger", &[]).await?.try_get(0)?)
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
    for m in MIGRATIONS {
        let applied =
            tx.query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[&m.version]).await?.is_some();
        if !applied {
            tx.batch_execute(m.sql).await?;
            tx.execute("INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)", &[&m.version, &now_ms()])
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

fn entry(row: &Row) -> Result<LedgerEntry, LedgerError> {
    Ok(LedgerEntry {
        request_id: row.try_get(0)?,
        attempt: from_db(row.try_get(1)?, "attempt")?,
        ts_ms: row.try_get(2)?,
        key_id: row.try_get(3)?,
        tenant_id: row.try_get(22)?,
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
