//! Tenants, virtual keys and the audit trail, in the same store as the usage ledger.
//!
//! Every change is one transaction that writes the row(s), appends its [`AuditEntry`] and
//! bumps `directory_version` by one; replicas poll that number (`admin::Directory`) and
//! reload when it moves, so a change is either wholly visible, with its audit row, or not at
//! all. Reads take the version first and the rows after, so a snapshot is never older than
//! the version it is filed under (at worst one extra reload).
//!
//! What the gateway looks up by (a key's hash, tenant, times) has columns of its own; the rest
//! of what an administrator set is the `spec` column, JSON with budgets as integer nano-USD.
//!
//! A tenant is deleted only once every key it has is revoked: deleting it under live keys
//! would cut off clients as a side effect of what looks like housekeeping. Its revoked keys'
//! rows go with it (the audit trail keeps the record of them).
//!
//! The store also keeps the installation's secret that config keys' ids are keyed with
//! ([`Ledger::key_id_secret`]): it lives where the rows naming those ids live, so every
//! replica and restart agrees on them.
//!
//! SQLite changes run on the writer connection in an IMMEDIATE transaction. PostgreSQL changes
//! run on a connection of their own, so the transaction never interleaves with the batch
//! writer's inserts on the shared one; reads use the shared connection.

use super::{Ledger, LedgerError};
use crate::limit::{Limits, Nanos};
use crate::tenancy::{AuditEntry, Downgrade, Key, KeyIdSecret, Tenant};
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// [`Limits`] as stored in `spec` (budgets in nano-USD).
#[derive(Serialize, Deserialize, Default)]
struct LimitsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget_day_nanos: Option<Nanos>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget_month_nanos: Option<Nanos>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget_total_nanos: Option<Nanos>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    concurrency: Option<u64>,
}

impl From<&Limits> for LimitsSpec {
    fn from(l: &Limits) -> Self {
        LimitsSpec {
            budget_day_nanos: l.budget_day,
            budget_month_nanos: l.budget_month,
            budget_total_nanos: l.budget_total,
            rpm: l.rpm,
            tpm: l.tpm,
            concurrency: l.concurrency,
        }
    }
}

impl From<LimitsSpec> for Limits {
    fn from(l: LimitsSpec) -> Self {
        Limits {
            budget_day: l.budget_day_nanos,
            budget_month: l.budget_month_nanos,
            budget_total: l.budget_total_nanos,
            rpm: l.rpm,
            tpm: l.tpm,
            concurrency: l.concurrency,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct TenantSpec {
    #[serde(default)]
    limits: LimitsSpec,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    downgrade: Option<Downgrade>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

#[derive(Serialize, Deserialize)]
struct KeySpec {
    #[serde(default)]
    limits: LimitsSpec,
    #[serde(default)]
    routes: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    default_route: Option<String>,
    /// Absent in specs written before the response cache: as the route says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache: Option<bool>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

fn tenant_spec(t: &Tenant) -> String {
    let spec = TenantSpec {
        limits: (&t.limits).into(),
        policy: t.policy.clone(),
        downgrade: t.downgrade.clone(),
        metadata: t.metadata.clone(),
    };
    serde_json::to_string(&spec).unwrap_or_default()
}

fn key_spec(k: &Key) -> String {
    let spec = KeySpec {
        limits: (&k.limits).into(),
        routes: k.routes.clone(),
        models: k.models.clone(),
        policy: k.policy.clone(),
        default_route: k.default_route.clone(),
        cache: k.cache,
        metadata: k.metadata.clone(),
    };
    serde_json::to_string(&spec).unwrap_or_default()
}

fn corrupt(what: &str, e: serde_json::Error) -> LedgerError {
    LedgerError::Corrupt(format!("{what}: spec is not valid JSON: {e}"))
}

/// A `tenants` row's columns.
struct TenantRow {
    name: String,
    spec: String,
    created_ms: i64,
    updated_ms: i64,
}

impl TenantRow {
    fn into_tenant(self) -> Result<Tenant, LedgerError> {
        let spec: TenantSpec = serde_json::from_str(&self.spec).map_err(|e| corrupt(&self.name, e))?;
        Ok(Tenant {
            name: self.name,
            limits: spec.limits.into(),
            policy: spec.policy,
            downgrade: spec.downgrade,
            metadata: spec.metadata,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
        })
    }
}

/// An `api_keys` row's columns.
struct KeyRow {
    id: String,
    tenant: String,
    name: Option<String>,
    secret_sha256: String,
    spec: String,
    created_ms: i64,
    expires_ms: Option<i64>,
    revoked_ms: Option<i64>,
}

impl KeyRow {
    fn into_key(self) -> Result<Key, LedgerError> {
        let spec: KeySpec = serde_json::from_str(&self.spec).map_err(|e| corrupt(&self.id, e))?;
        Ok(Key {
            id: self.id,
            tenant: self.tenant,
            name: self.name,
            secret_sha256: self.secret_sha256,
            limits: spec.limits.into(),
            routes: spec.routes,
            models: spec.models,
            policy: spec.policy,
            default_route: spec.default_route,
            cache: spec.cache,
            metadata: spec.metadata,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            revoked_ms: self.revoked_ms,
        })
    }
}

const TENANT_COLUMNS: &str = "name, spec, created_ms, updated_ms";
const KEY_COLUMNS: &str = "id, tenant, name, secret_sha256, spec, created_ms, expires_ms, revoked_ms";

fn tenant_exists(name: &str) -> LedgerError {
    LedgerError::Conflict(format!("tenant \"{name}\" already exists"))
}

fn no_tenant(name: &str) -> LedgerError {
    LedgerError::NotFound(format!("no tenant named \"{name}\""))
}

fn key_exists(id: &str) -> LedgerError {
    LedgerError::Conflict(format!("key {id} already exists (or its secret is in use)"))
}

fn no_key(id: &str) -> LedgerError {
    LedgerError::NotFound(format!("no key with id {id}"))
}

fn live_keys(name: &str, n: i64) -> LedgerError {
    LedgerError::Conflict(format!("tenant \"{name}\" still has {n} key(s) not revoked: revoke them first"))
}

fn detail(a: &AuditEntry) -> String {
    a.detail.to_string()
}

impl Ledger {
    /// Creates (`create`: refused with [`LedgerError::Conflict`] if the name exists) or
    /// replaces (refused with [`LedgerError::NotFound`] if it does not) a tenant.
    pub async fn put_tenant(&self, t: &Tenant, audit: &AuditEntry, create: bool) -> Result<(), LedgerError> {
        let (t, audit) = (t.clone(), audit.clone());
        match self {
            Ledger::Sqlite(s) => {
                s.write_with(move |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let exists = tx
                        .query_row("SELECT 1 FROM tenants WHERE name = ?1", params![t.name], |_| Ok(()))
                        .optional()?
                        .is_some();
                    match (create, exists) {
                        (true, true) => return Err(tenant_exists(&t.name)),
                        (false, false) => return Err(no_tenant(&t.name)),
                        (true, false) => tx.execute(
                            "INSERT INTO tenants (name, spec, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4)",
                            params![t.name, tenant_spec(&t), t.created_ms, t.updated_ms],
                        )?,
                        (false, true) => tx.execute(
                            "UPDATE tenants SET spec = ?2, updated_ms = ?3 WHERE name = ?1",
                            params![t.name, tenant_spec(&t), t.updated_ms],
                        )?,
                    };
                    sqlite_audit(&tx, &audit)?;
                    tx.commit()?;
                    Ok(())
                })
                .await
            }
            Ledger::Postgres(p) => {
                let mut client = p.dedicated().await?;
                let tx = client.transaction().await?;
                let exists = tx.query_opt("SELECT 1 FROM tenants WHERE name = $1", &[&t.name]).await?.is_some();
                let spec = tenant_spec(&t);
                match (create, exists) {
                    (true, true) => return Err(tenant_exists(&t.name)),
                    (false, false) => return Err(no_tenant(&t.name)),
                    (true, false) => tx
                        .execute(
                            "INSERT INTO tenants (name, spec, created_ms, updated_ms) VALUES ($1, $2, $3, $4)",
                            &[&t.name, &spec, &t.created_ms, &t.updated_ms],
                        )
                        .await
                        .map_err(|e| unique(e, || tenant_exists(&t.name)))?,
                    (false, true) => {
                        tx.execute(
                            "UPDATE tenants SET spec = $2, updated_ms = $3 WHERE name = $1",
                            &[&t.name, &spec, &t.updated_ms],
                        )
                        .await?
                    }
                };
                pg_audit(&tx, &audit).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// Deletes a tenant and its revoked keys' rows; refused with [`LedgerError::Conflict`]
    /// while any of its keys is not revoked (see the module doc).
    pub async fn delete_tenant(&self, name: &str, audit: &AuditEntry) -> Result<(), LedgerError> {
        let (name, audit) = (name.to_owned(), audit.clone());
        match self {
            Ledger::Sqlite(s) => {
                s.write_with(move |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let live: i64 = tx.query_row(
                        "SELECT COUNT(*) FROM api_keys WHERE tenant = ?1 AND revoked_ms IS NULL",
                        params![name],
                        |r| r.get(0),
                    )?;
                    if live > 0 {
                        return Err(live_keys(&name, live));
                    }
                    tx.execute("DELETE FROM api_keys WHERE tenant = ?1", params![name])?;
                    if tx.execute("DELETE FROM tenants WHERE name = ?1", params![name])? == 0 {
                        return Err(no_tenant(&name));
                    }
                    sqlite_audit(&tx, &audit)?;
                    tx.commit()?;
                    Ok(())
                })
                .await
            }
            Ledger::Postgres(p) => {
                let mut client = p.dedicated().await?;
                let tx = client.transaction().await?;
                // Lock the tenant so no key is added to it between the count and the delete.
                if tx.query_opt("SELECT 1 FROM tenants WHERE name = $1 FOR UPDATE", &[&name]).await?.is_none() {
                    return Err(no_tenant(&name));
                }
                let live: i64 = tx
                    .query_one("SELECT COUNT(*) FROM api_keys WHERE tenant = $1 AND revoked_ms IS NULL", &[&name])
                    .await?
                    .try_get(0)?;
                if live > 0 {
                    return Err(live_keys(&name, live));
                }
                tx.execute("DELETE FROM api_keys WHERE tenant = $1", &[&name]).await?;
                tx.execute("DELETE FROM tenants WHERE name = $1", &[&name]).await?;
                pg_audit(&tx, &audit).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// Every tenant, by name.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, LedgerError> {
        self.tenants_where(None).await
    }

    /// One tenant.
    pub async fn tenant(&self, name: &str) -> Result<Option<Tenant>, LedgerError> {
        Ok(self.tenants_where(Some(name)).await?.pop())
    }

    async fn tenants_where(&self, name: Option<&str>) -> Result<Vec<Tenant>, LedgerError> {
        let name = name.map(str::to_owned);
        let rows = match self {
            Ledger::Sqlite(s) => {
                s.read(move |conn| {
                    let sql =
                        format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE ?1 IS NULL OR name = ?1 ORDER BY name");
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let mut rows = stmt.query(params![name])?;
                    let mut out = Vec::new();
                    while let Some(r) = rows.next()? {
                        out.push(TenantRow {
                            name: r.get(0)?,
                            spec: r.get(1)?,
                            created_ms: r.get(2)?,
                            updated_ms: r.get(3)?,
                        });
                    }
                    Ok(out)
                })
                .await?
            }
            Ledger::Postgres(p) => {
                let sql =
                    format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE $1::text IS NULL OR name = $1 ORDER BY name");
                let client = p.client().await?;
                let rows = client.query(&sql, &[&name]).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push(TenantRow {
                        name: r.try_get(0)?,
                        spec: r.try_get(1)?,
                        created_ms: r.try_get(2)?,
                        updated_ms: r.try_get(3)?,
                    });
                }
                out
            }
        };
        rows.into_iter().map(TenantRow::into_tenant).collect()
    }

    /// Creates (`create`: the tenant must exist, and the id and the secret's hash must be
    /// new) or replaces a key (found by id: a revoke sets `revoked_ms`, a rotation the hash).
    pub async fn put_key(&self, k: &Key, audit: &AuditEntry, create: bool) -> Result<(), LedgerError> {
        let (k, audit) = (k.clone(), audit.clone());
        match self {
            Ledger::Sqlite(s) => {
                s.write_with(move |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let spec = key_spec(&k);
                    if create {
                        let tenant = tx
                            .query_row("SELECT 1 FROM tenants WHERE name = ?1", params![k.tenant], |_| Ok(()))
                            .optional()?;
                        if tenant.is_none() {
                            return Err(no_tenant(&k.tenant));
                        }
                        let taken = tx
                            .query_row(
                                "SELECT 1 FROM api_keys WHERE id = ?1 OR secret_sha256 = ?2",
                                params![k.id, k.secret_sha256],
                                |_| Ok(()),
                            )
                            .optional()?;
                        if taken.is_some() {
                            return Err(key_exists(&k.id));
                        }
                        tx.execute(
                            "INSERT INTO api_keys (id, tenant, name, secret_sha256, spec, created_ms, expires_ms, revoked_ms)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                            params![k.id, k.tenant, k.name, k.secret_sha256, spec, k.created_ms, k.expires_ms, k.revoked_ms],
                        )?;
                    } else {
                        let taken = tx
                            .query_row(
                                "SELECT 1 FROM api_keys WHERE id <> ?1 AND secret_sha256 = ?2",
                                params![k.id, k.secret_sha256],
                                |_| Ok(()),
                            )
                            .optional()?;
                        if taken.is_some() {
                            return Err(key_exists(&k.id));
                        }
                        let n = tx.execute(
                            "UPDATE api_keys SET name = ?2, secret_sha256 = ?3, spec = ?4, expires_ms = ?5, revoked_ms = ?6
                             WHERE id = ?1",
                            params![k.id, k.name, k.secret_sha256, spec, k.expires_ms, k.revoked_ms],
                        )?;
                        if n == 0 {
                            return Err(no_key(&k.id));
                        }
                    }
                    sqlite_audit(&tx, &audit)?;
                    tx.commit()?;
                    Ok(())
                })
                .await
            }
            Ledger::Postgres(p) => {
                let mut client = p.dedicated().await?;
                let tx = client.transaction().await?;
                let spec = key_spec(&k);
                if create {
                    // FOR SHARE: the tenant cannot be deleted until this commits.
                    if tx.query_opt("SELECT 1 FROM tenants WHERE name = $1 FOR SHARE", &[&k.tenant]).await?.is_none() {
                        return Err(no_tenant(&k.tenant));
                    }
                    tx.execute(
                        "INSERT INTO api_keys (id, tenant, name, secret_sha256, spec, created_ms, expires_ms, revoked_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        &[&k.id, &k.tenant, &k.name, &k.secret_sha256, &spec, &k.created_ms, &k.expires_ms, &k.revoked_ms],
                    )
                    .await
                    .map_err(|e| unique(e, || key_exists(&k.id)))?;
                } else {
                    let n = tx
                        .execute(
                            "UPDATE api_keys SET name = $2, secret_sha256 = $3, spec = $4, expires_ms = $5, revoked_ms = $6
                             WHERE id = $1",
                            &[&k.id, &k.name, &k.secret_sha256, &spec, &k.expires_ms, &k.revoked_ms],
                        )
                        .await
                        .map_err(|e| unique(e, || key_exists(&k.id)))?;
                    if n == 0 {
                        return Err(no_key(&k.id));
                    }
                }
                pg_audit(&tx, &audit).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// Every key (of one tenant, if given), oldest first.
    pub async fn keys(&self, tenant: Option<&str>) -> Result<Vec<Key>, LedgerError> {
        self.keys_where(tenant, None).await
    }

    /// One key by id.
    pub async fn key(&self, id: &str) -> Result<Option<Key>, LedgerError> {
        Ok(self.keys_where(None, Some(id)).await?.pop())
    }

    async fn keys_where(&self, tenant: Option<&str>, id: Option<&str>) -> Result<Vec<Key>, LedgerError> {
        let (tenant, id) = (tenant.map(str::to_owned), id.map(str::to_owned));
        let rows = match self {
            Ledger::Sqlite(s) => {
                s.read(move |conn| {
                    let sql = format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR id = ?2)
                         ORDER BY created_ms, id"
                    );
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let mut rows = stmt.query(params![tenant, id])?;
                    let mut out = Vec::new();
                    while let Some(r) = rows.next()? {
                        out.push(KeyRow {
                            id: r.get(0)?,
                            tenant: r.get(1)?,
                            name: r.get(2)?,
                            secret_sha256: r.get(3)?,
                            spec: r.get(4)?,
                            created_ms: r.get(5)?,
                            expires_ms: r.get(6)?,
                            revoked_ms: r.get(7)?,
                        });
                    }
                    Ok(out)
                })
                .await?
            }
            Ledger::Postgres(p) => {
                let sql = format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys
                     WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR id = $2) ORDER BY created_ms, id"
                );
                let client = p.client().await?;
                let rows = client.query(&sql, &[&tenant, &id]).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push(KeyRow {
                        id: r.try_get(0)?,
                        tenant: r.try_get(1)?,
                        name: r.try_get(2)?,
                        secret_sha256: r.try_get(3)?,
                        spec: r.try_get(4)?,
                        created_ms: r.try_get(5)?,
                        expires_ms: r.try_get(6)?,
                        revoked_ms: r.try_get(7)?,
                    });
                }
                out
            }
        };
        rows.into_iter().map(KeyRow::into_key).collect()
    }

    /// The newest `limit` audit rows, newest first.
    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, LedgerError> {
        let limit = i64::from(limit);
        let rows: Vec<(i64, String, String, String, String)> = match self {
            Ledger::Sqlite(s) => {
                s.read(move |conn| {
                    let mut stmt = conn.prepare_cached(
                        "SELECT ts_ms, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1",
                    )?;
                    let mut rows = stmt.query(params![limit])?;
                    let mut out = Vec::new();
                    while let Some(r) = rows.next()? {
                        out.push((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?));
                    }
                    Ok(out)
                })
                .await?
            }
            Ledger::Postgres(p) => {
                let client = p.client().await?;
                let rows = client
                    .query(
                        "SELECT ts_ms, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT $1",
                        &[&limit],
                    )
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?));
                }
                out
            }
        };
        rows.into_iter()
            .map(|(ts_ms, actor, action, target, detail)| {
                let detail = serde_json::from_str(&detail).map_err(|e| corrupt("audit", e))?;
                Ok(AuditEntry { ts_ms, actor, action, target, detail })
            })
            .collect()
    }

    /// The installation's [`KeyIdSecret`], made by the first gateway to ask (the first insert
    /// wins, so replicas starting together agree) and read back by every other and every
    /// restart.
    pub async fn key_id_secret(&self) -> Result<KeyIdSecret, LedgerError> {
        const READ: &str = "SELECT key_id_secret FROM installation WHERE id = 1";
        let offered = KeyIdSecret::generate().map_err(|e| LedgerError::Io(std::io::Error::other(e)))?;
        let stored: String = match self {
            Ledger::Sqlite(s) => {
                s.write_with(move |conn| {
                    const OFFER: &str = "INSERT OR IGNORE INTO installation (id, key_id_secret) VALUES (1, ?1)";
                    conn.execute(OFFER, params![offered])?;
                    Ok(conn.query_row(READ, [], |r| r.get(0))?)
                })
                .await?
            }
            Ledger::Postgres(p) => {
                const OFFER: &str =
                    "INSERT INTO installation (id, key_id_secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING";
                let client = p.client().await?;
                client.execute(OFFER, &[&offered]).await?;
                client.query_one(READ, &[]).await?.try_get(0)?
            }
        };
        KeyIdSecret::from_stored(&stored)
            .ok_or_else(|| LedgerError::Corrupt("installation.key_id_secret is not 64 hex digits".into()))
    }

    /// How many changes the directory has seen; moves on every change.
    pub async fn directory_version(&self) -> Result<i64, LedgerError> {
        const SQL: &str = "SELECT version FROM directory_version WHERE id = 1";
        match self {
            Ledger::Sqlite(s) => s.read(|conn| Ok(conn.query_row(SQL, [], |r| r.get(0))?)).await,
            Ledger::Postgres(p) => Ok(p.client().await?.query_one(SQL, &[]).await?.try_get(0)?),
        }
    }

    /// The version and everything filed under it (or something newer): what a replica
    /// serves from.
    pub async fn directory(&self) -> Result<(i64, Vec<Tenant>, Vec<Key>), LedgerError> {
        let version = self.directory_version().await?;
        Ok((version, self.tenants().await?, self.keys(None).await?))
    }
}

const AUDIT_SQLITE: &str = "INSERT INTO audit (ts_ms, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)";
const AUDIT_PG: &str = "INSERT INTO audit (ts_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)";
const BUMP: &str = "UPDATE directory_version SET version = version + 1 WHERE id = 1";

fn sqlite_audit(tx: &rusqlite::Transaction<'_>, a: &AuditEntry) -> Result<(), LedgerError> {
    tx.execute(AUDIT_SQLITE, params![a.ts_ms, a.actor, a.action, a.target, detail(a)])?;
    tx.execute(BUMP, [])?;
    Ok(())
}

async fn pg_audit(tx: &tokio_postgres::Transaction<'_>, a: &AuditEntry) -> Result<(), LedgerError> {
    tx.execute(AUDIT_PG, &[&a.ts_ms, &a.actor, &a.action, &a.target, &detail(a)]).await?;
    tx.execute(BUMP, &[]).await?;
    Ok(())
}

/// A unique violation (a concurrent change won the race) as the caller's conflict.
fn unique(e: tokio_postgres::Error, conflict: impl FnOnce() -> LedgerError) -> LedgerError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        conflict()
    } else {
        e.into()
    }
}
