//! The read `bourse replay` makes (`crate::replay`): every row of a window with the facts a
//! re-plan and a re-price need (route, needs, stream, the five token counts, recorded cost
//! and reference cost) and how the row stands in its request (side call, cache hit, failed,
//! an answer a cascade escalated past), streamed in chunks so a ten-million-row window is
//! never held in memory at once.
//!
//! The route is cut out of the route reason by the database (`route=NAME chose ...`, as
//! [`super::aggregate::route_of`] reads it), so the long reason text never leaves it. SQLite
//! keeps no time index on the ledger: its rows of a window are found through the id ranges of
//! the window's minutes (`ledger_minute_ids`), then filtered by time, as the reports' raw
//! edges are; PostgreSQL reads through its time index and streams the rows as they come.

use super::aggregate::Grain;
use super::{from_db, LedgerError};
use crate::canonical::Usage;
use tokio::sync::mpsc::Sender;

/// Rows per chunk handed to the consumer.
pub const CHUNK_ROWS: usize = 8_192;

/// One ledger row as replay reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayRow {
    /// 0 for a side call (a judge, a shadow), 1 for a request's first attempt, ...
    pub attempt: u32,
    /// The route the request asked for (None: it named its model).
    pub route: Option<String>,
    pub provider: String,
    pub model: String,
    /// [`crate::canonical::Needs::bits`].
    pub needs: u8,
    pub stream: bool,
    pub usage: Usage,
    pub cost_nanos: i64,
    pub reference_cost_nanos: i64,
    /// The attempt ended with an error kind.
    pub failed: bool,
    /// Its usage is the gateway's estimate.
    pub estimated: bool,
    pub cache_hit: bool,
    /// A checked answer that another attempt of its request followed (a cascade escalated
    /// past it): not the answer its request ended with.
    pub superseded: bool,
}

/// The columns, in [`ReplayRow`] order; `ROUTE` is the store's expression for the route.
macro_rules! replay_columns {
    ($route:expr) => {
        concat!(
            "attempt, ",
            $route,
            ", provider, model, needs, stream, input_uncached, input_cache_read, input_cache_write, output, \
             output_reasoning, cost_nanos, reference_cost_nanos, error_kind IS NOT NULL, estimated, cache_hit, \
             CASE WHEN checks IS NULL THEN 0 = 1 ELSE EXISTS (SELECT 1 FROM ledger AS n \
             WHERE n.request_id = l.request_id AND n.attempt = l.attempt + 1) END"
        )
    };
}

/// SQLite: the window's rows through its minutes' id ranges (`?1` the first minute, `?2` and
/// `?3` the window), in id order.
const SQLITE_SELECT: &str = concat!(
    "SELECT ",
    replay_columns!(
        "CASE WHEN substr(route_reason, 1, 6) = 'route=' \
         THEN substr(route_reason, 7, instr(substr(route_reason, 7) || ' ', ' ') - 1) END"
    ),
    " FROM ledger AS l WHERE id BETWEEN \
     (SELECT min(min_id) FROM ledger_minute_ids WHERE bucket_ms >= ?1 AND bucket_ms < ?3) \
     AND (SELECT max(max_id) FROM ledger_minute_ids WHERE bucket_ms >= ?1 AND bucket_ms < ?3) \
     AND ts_ms >= ?2 AND ts_ms < ?3 ORDER BY id"
);

/// PostgreSQL: the window's rows through the time index.
const POSTGRES_SELECT: &str = concat!(
    "SELECT ",
    replay_columns!("CASE WHEN left(route_reason, 6) = 'route=' THEN split_part(substr(route_reason, 7), ' ', 1) END"),
    " FROM ledger AS l WHERE ts_ms >= $1 AND ts_ms < $2"
);

/// A row's values by position, from either store.
trait Columns {
    fn int(&self, i: usize) -> Result<i64, LedgerError>;
    fn flag(&self, i: usize) -> Result<bool, LedgerError>;
    fn text(&self, i: usize) -> Result<Option<String>, LedgerError>;
}

impl Columns for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<i64, LedgerError> {
        Ok(self.get(i)?)
    }
    fn flag(&self, i: usize) -> Result<bool, LedgerError> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<Option<String>, LedgerError> {
        Ok(self.get(i)?)
    }
}

impl Columns for tokio_postgres::Row {
    fn int(&self, i: usize) -> Result<i64, LedgerError> {
        // needs is a smallint in PostgreSQL, every other integer a bigint.
        match i {
            4 => Ok(i64::from(self.try_get::<_, i16>(i)?)),
            _ => Ok(self.try_get(i)?),
        }
    }
    fn flag(&self, i: usize) -> Result<bool, LedgerError> {
        Ok(self.try_get(i)?)
    }
    fn text(&self, i: usize) -> Result<Option<String>, LedgerError> {
        Ok(self.try_get(i)?)
    }
}

fn row_of(r: &impl Columns) -> Result<ReplayRow, LedgerError> {
    Ok(ReplayRow {
        attempt: from_db(r.int(0)?, "attempt")?,
        // `route=` followed by nothing is no route (as the aggregates read it).
        route: r.text(1)?.filter(|s| !s.is_empty()),
        provider: r.text(2)?.unwrap_or_default(),
        model: r.text(3)?.unwrap_or_default(),
        needs: from_db(r.int(4)?, "needs")?,
        stream: r.flag(5)?,
        usage: Usage {
            input_uncached: from_db(r.int(6)?, "input_uncached")?,
            input_cache_read: from_db(r.int(7)?, "input_cache_read")?,
            input_cache_write: from_db(r.int(8)?, "input_cache_write")?,
            output: from_db(r.int(9)?, "output")?,
            output_reasoning: from_db(r.int(10)?, "output_reasoning")?,
        },
        cost_nanos: r.int(11)?,
        reference_cost_nanos: r.int(12)?,
        failed: r.flag(13)?,
        estimated: r.flag(14)?,
        cache_hit: r.flag(15)?,
        superseded: r.flag(16)?,
    })
}

/// Sends `chunk` on `out` from a blocking thread; false when the consumer is gone.
fn send_blocking(out: &Sender<Vec<ReplayRow>>, chunk: &mut Vec<ReplayRow>) -> bool {
    let full = std::mem::replace(chunk, Vec::with_capacity(CHUNK_ROWS));
    full.is_empty() || out.blocking_send(full).is_ok()
}

impl super::SqliteLedger {
    pub(super) async fn replay_rows(
        &self,
        since: i64,
        until: i64,
        out: Sender<Vec<ReplayRow>>,
    ) -> Result<(), LedgerError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare(SQLITE_SELECT)?;
            let first_minute = Grain::Minute.floor(since);
            let mut rows = stmt.query(rusqlite::params![first_minute, since, until])?;
            let mut chunk = Vec::with_capacity(CHUNK_ROWS);
            while let Some(r) = rows.next()? {
                chunk.push(row_of(r)?);
                if chunk.len() == CHUNK_ROWS && !send_blocking(&out, &mut chunk) {
                    return Ok(());
                }
            }
            send_blocking(&out, &mut chunk);
            Ok(())
        })
        .await
    }
}

impl super::PostgresLedger {
    pub(super) async fn replay_rows(
        &self,
        since: i64,
        until: i64,
        out: Sender<Vec<ReplayRow>>,
    ) -> Result<(), LedgerError> {
        use futures_util::StreamExt as _;
        let client = self.client().await?;
        let stmt = client.prepare(POSTGRES_SELECT).await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&since, &until];
        let rows = client.query_raw(&stmt, params).await?;
        futures_util::pin_mut!(rows);
        let mut chunk = Vec::with_capacity(CHUNK_ROWS);
        while let Some(r) = rows.next().await {
            chunk.push(row_of(&r?)?);
            if chunk.len() == CHUNK_ROWS {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_ROWS));
                if out.send(full).await.is_err() {
                    return Ok(());
                }
            }
        }
        if !chunk.is_empty() {
            let _ = out.send(chunk).await;
        }
        Ok(())
    }
}
