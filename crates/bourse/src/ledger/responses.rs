//! Stored Responses API answers, for `previous_response_id`: the Response object and every
//! input item of its conversation, kept in the ledger's store (SQLite or PostgreSQL) until
//! it expires.
//!
//! A stored response is the one deliberate copy of prompt and answer text Bourse keeps: the
//! client asked for it (`store`, true by default as with OpenAI; `store: false` keeps
//! nothing), and it lives only for `[responses] store_ttl`. It is read only by the key that
//! made it: a lookup names the key, and any other key (or an expired row) finds nothing, the
//! same answer an unknown id gets. Expired rows are deleted as new ones are written, through
//! the index on `expires_ms` (a delete that finds nothing costs one index probe).

use super::{Ledger, LedgerError};
use rusqlite::{params, OptionalExtension};

/// One stored response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    /// `resp_…`.
    pub id: String,
    /// The gateway key that made it (`""` when the gateway has no keys).
    pub key_id: String,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms after which the row is as good as gone.
    pub expires_ms: i64,
    /// Every input item of the conversation up to this response (a JSON array).
    pub input: String,
    /// The Response object (JSON).
    pub response: String,
}

const INSERT_SQLITE: &str = "INSERT INTO responses (id, key_id, created_ms, expires_ms, input, response) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const INSERT_PG: &str = "INSERT INTO responses (id, key_id, created_ms, expires_ms, input, response) \
     VALUES ($1, $2, $3, $4, $5, $6)";
const PURGE_SQLITE: &str = "DELETE FROM responses WHERE expires_ms <= ?1";
const PURGE_PG: &str = "DELETE FROM responses WHERE expires_ms <= $1";
const SELECT_SQLITE: &str = "SELECT id, key_id, created_ms, expires_ms, input, response FROM responses \
     WHERE id = ?1 AND key_id = ?2 AND expires_ms > ?3";
const SELECT_PG: &str = "SELECT id, key_id, created_ms, expires_ms, input, response FROM responses \
     WHERE id = $1 AND key_id = $2 AND expires_ms > $3";

impl Ledger {
    /// Stores a response, and deletes those expired by `now_ms`.
    pub async fn put_response(&self, r: StoredResponse, now_ms: i64) -> Result<(), LedgerError> {
        match self {
            Ledger::Sqlite(s) => {
                s.write_with(move |conn| {
                    let tx = conn.transaction()?;
                    tx.prepare_cached(PURGE_SQLITE)?.execute(params![now_ms])?;
                    tx.prepare_cached(INSERT_SQLITE)?.execute(params![
                        r.id,
                        r.key_id,
                        r.created_ms,
                        r.expires_ms,
                        r.input,
                        r.response
                    ])?;
                    tx.commit()?;
                    Ok(())
                })
                .await
            }
            Ledger::Postgres(p) => {
                // Two statements on the shared connection, each its own transaction (the
                // batch writer's are single statements too, so nothing interleaves inside
                // one): the purge need not be atomic with the insert.
                let client = p.client().await?;
                client.execute(PURGE_PG, &[&now_ms]).await?;
                client
                    .execute(INSERT_PG, &[&r.id, &r.key_id, &r.created_ms, &r.expires_ms, &r.input, &r.response])
                    .await?;
                Ok(())
            }
        }
    }

    /// The response `id` made by `key_id`, unless it expired by `now_ms`.
    pub async fn get_response(
        &self,
        id: &str,
        key_id: &str,
        now_ms: i64,
    ) -> Result<Option<StoredResponse>, LedgerError> {
        match self {
            Ledger::Sqlite(s) => {
                let (id, key_id) = (id.to_owned(), key_id.to_owned());
                s.read(move |conn| {
                    let mut stmt = conn.prepare_cached(SELECT_SQLITE)?;
                    let row = stmt
                        .query_row(params![id, key_id, now_ms], |r| {
                            Ok(StoredResponse {
                                id: r.get(0)?,
                                key_id: r.get(1)?,
                                created_ms: r.get(2)?,
                                expires_ms: r.get(3)?,
                                input: r.get(4)?,
                                response: r.get(5)?,
                            })
                        })
                        .optional()?;
                    Ok(row)
                })
                .await
            }
            Ledger::Postgres(p) => {
                let row = p.client().await?.query_opt(SELECT_PG, &[&id, &key_id, &now_ms]).await?;
                row.map(|r| {
                    Ok(StoredResponse {
                        id: r.try_get(0)?,
                        key_id: r.try_get(1)?,
                        created_ms: r.try_get(2)?,
                        expires_ms: r.try_get(3)?,
                        input: r.try_get(4)?,
                        response: r.try_get(5)?,
                    })
                })
                .transpose()
            }
        }
    }

    /// How many responses are stored, expired ones included (for tests and operators).
    pub async fn stored_responses(&self) -> Result<i64, LedgerError> {
        const COUNT: &str = "SELECT COUNT(*) FROM responses";
        match self {
            Ledger::Sqlite(s) => s.read(|conn| Ok(conn.query_row(COUNT, [], |r| r.get(0))?)).await,
            Ledger::Postgres(p) => Ok(p.client().await?.query_one(COUNT, &[]).await?.try_get(0)?),
        }
    }
}
