//! Quality evidence per route, in the ledger's store: for each (route, model, source), a
//! score in [0, 1] over `n` samples. The router reads all of it ([`Ledger::evidence`]) and
//! ranks a route's models on it (`route::evidence`).
//!
//! Two ways in:
//! - [`Ledger::put_evidence`] sets rows (an import, an offline eval's result): a row for the
//!   same (route, model, source) is replaced.
//! - [`Ledger::add_evidence`] folds live outcomes into a row (`n` more samples of which
//!   `passed` passed), so replicas adding at once never lose each other's counts: the new
//!   score is computed by the store from the stored one.

use super::{count_to_db, from_db, Ledger, LedgerError};
use rusqlite::params;

/// One model's evidence from one source on one route.
#[derive(Clone, Debug, PartialEq)]
pub struct EvidenceRow {
    pub route: String,
    /// `provider/model`.
    pub model: String,
    pub source: String,
    /// Share of samples that passed, in [0, 1].
    pub score: f64,
    pub n: u64,
    /// Unix ms of the last change.
    pub updated_ms: i64,
}

/// Live outcomes to fold into one (route, model, source) row.
#[derive(Clone, Debug, PartialEq)]
pub struct EvidenceDelta {
    pub route: String,
    pub model: String,
    pub source: String,
    pub passed: u64,
    pub n: u64,
}

const SELECT: &str =
    "SELECT route, model, source, score, n, updated_ms FROM route_evidence ORDER BY route, model, source";

const PUT_SQLITE: &str = "INSERT INTO route_evidence (route, model, source, score, n, updated_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
     ON CONFLICT (route, model, source) DO UPDATE SET score = excluded.score, n = excluded.n, \
     updated_ms = excluded.updated_ms";
const PUT_PG: &str = "INSERT INTO route_evidence (route, model, source, score, n, updated_ms) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (route, model, source) DO UPDATE SET score = excluded.score, n = excluded.n, \
     updated_ms = excluded.updated_ms";

/// The stored score times n plus the new passes, over the new n (n > 0: a delta of none is
/// never written).
const ADD_SQLITE: &str = "INSERT INTO route_evidence (route, model, source, score, n, updated_ms) \
     VALUES (?1, ?2, ?3, CAST(?4 AS REAL) / ?5, ?5, ?6) \
     ON CONFLICT (route, model, source) DO UPDATE SET \
     score = MIN(1.0, (route_evidence.score * route_evidence.n + ?4) / (route_evidence.n + ?5)), \
     n = route_evidence.n + ?5, updated_ms = excluded.updated_ms";
/// `$4` the passes and `$7` the samples as doubles, `$5` the samples as the stored integer.
const ADD_PG: &str = "INSERT INTO route_evidence (route, model, source, score, n, updated_ms) \
     VALUES ($1, $2, $3, $4::float8 / $7::float8, $5, $6) \
     ON CONFLICT (route, model, source) DO UPDATE SET \
     score = LEAST(1.0, (route_evidence.score * route_evidence.n + $4::float8) / (route_evidence.n + $7::float8)), \
     n = route_evidence.n + $5, updated_ms = excluded.updated_ms";

fn check_row(r: &EvidenceRow) -> Result<(), LedgerError> {
    if !(0.0..=1.0).contains(&r.score) {
        return Err(LedgerError::Invalid(format!(
            "evidence for {} on route {}: score {} is outside [0, 1]",
            r.model, r.route, r.score
        )));
    }
    Ok(())
}

impl Ledger {
    /// Every evidence row, ordered by route, model and source.
    pub async fn evidence(&self) -> Result<Vec<EvidenceRow>, LedgerError> {
        fn row(
            route: String,
            model: String,
            source: String,
            score: f64,
            n: i64,
            updated_ms: i64,
        ) -> Result<EvidenceRow, LedgerError> {
            Ok(EvidenceRow { route, model, source, score, n: from_db(n, "route_evidence.n")?, updated_ms })
        }
        match self {
            Ledger::Sqlite(s) => {
                s.read(|conn| {
                    let mut stmt = conn.prepare(SELECT)?;
                    let rows =
                        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?;
                    let mut out = Vec::new();
                    for r in rows {
                        let (route, model, source, score, n, at) = r?;
                        out.push(row(route, model, source, score, n, at)?);
                    }
                    Ok(out)
                })
                .await
            }
            Ledger::Postgres(p) => {
                let rows = p.client().await?.query(SELECT, &[]).await?;
                rows.iter()
                    .map(|r| {
                        row(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?, r.try_get(5)?)
                    })
                    .collect()
            }
        }
    }

    /// Sets these rows (replacing any with the same route, model and source), all or none.
    pub async fn put_evidence(&self, rows: Vec<EvidenceRow>) -> Result<(), LedgerError> {
        for r in &rows {
            check_row(r)?;
        }
        match self {
            Ledger::Sqlite(s) => {
                s.write_with(move |conn| {
                    let tx = conn.transaction()?;
                    {
                        let mut stmt = tx.prepare(PUT_SQLITE)?;
                        for r in &rows {
                            stmt.execute(params![r.route, r.model, r.source, r.score, count_to_db(r.n), r.updated_ms])?;
                        }
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await
            }
            Ledger::Postgres(p) => {
                let mut client = p.dedicated().await?;
                let tx = client.transaction().await?;
                let stmt = tx.prepare(PUT_PG).await?;
                for r in &rows {
                    tx.execute(&stmt, &[&r.route, &r.model, &r.source, &r.score, &count_to_db(r.n), &r.updated_ms])
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// Folds live outcomes into their rows (creating them), all or none. Deltas with no
    /// sample are skipped.
    pub async fn add_evidence(&self, deltas: Vec<EvidenceDelta>, now_ms: i64) -> Result<(), LedgerError> {
        let deltas: Vec<EvidenceDelta> = deltas.into_iter().filter(|d| d.n > 0 && d.passed <= d.n).collect();
        if deltas.is_empty() {
            return Ok(());
        }
        match self {
            Ledger::Sqlite(s) => {
                s.write_with(move |conn| {
                    let tx = conn.transaction()?;
                    {
                        let mut stmt = tx.prepare(ADD_SQLITE)?;
                        for d in &deltas {
                            stmt.execute(params![
                                d.route,
                                d.model,
                                d.source,
                                count_to_db(d.passed),
                                count_to_db(d.n),
                                now_ms
                            ])?;
                        }
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await
            }
            Ledger::Postgres(p) => {
                let mut client = p.dedicated().await?;
                let tx = client.transaction().await?;
                let stmt = tx.prepare(ADD_PG).await?;
                for d in &deltas {
                    let (passed, n, n_f) = (d.passed as f64, count_to_db(d.n), d.n as f64);
                    tx.execute(&stmt, &[&d.route, &d.model, &d.source, &passed, &n, &now_ms, &n_f]).await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    }
}
