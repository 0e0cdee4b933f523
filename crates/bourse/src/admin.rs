//! Administering tenants and virtual keys: the operations the command line and the HTTP admin
//! API share ([`Admin`]), and the live directory every replica authenticates from
//! ([`Directory`]).
//!
//! [`Admin`] validates every input against the routing config (policy and route names must
//! exist) before it reaches the store, and every change it makes is one store transaction with
//! its audit row (`ledger::tenancy`). A secret is returned once, from [`Admin::create_key`] or
//! [`Admin::rotate_key`], and never stored, logged or put in an audit row: only its SHA-256 is.
//!
//! [`Directory`] is an in-memory snapshot (tenants, keys, and a map from secret hash to key)
//! behind an `RwLock<Arc<_>>`: a lookup clones an `Arc` and never waits on the store. It is
//! reloaded whole when the store's `directory_version` moves, polled every
//! [`REFRESH_EVERY`] (250 ms, so a revoke made on one replica is refused by every other within
//! a second).

use crate::config::routing::TIERS;
use crate::config::{parse_quality, Routing};
use crate::ledger::{Ledger, LedgerError};
use crate::limit::{Limits, Nanos};
use crate::tenancy::{self, format_usd, glob_match, AuditEntry, Downgrade, Key, Tenant, BUILTIN_TENANT, SECRET_PREFIX};
use crate::timespec::{now_ms, rfc3339};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Why an administrative operation was refused.
#[derive(Debug)]
pub enum AdminError {
    /// No such tenant or key.
    NotFound(String),
    /// An input is invalid: the message, and the field it is about (`budget_day_usd`, ...).
    Invalid(String, String),
    /// The name or id is taken, or the change contradicts the current state (a tenant with
    /// live keys, a revoked key to rotate).
    Conflict(String),
    /// The store failed.
    Store(LedgerError),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::NotFound(m) | AdminError::Conflict(m) => f.write_str(m),
            AdminError::Invalid(m, field) => write!(f, "{field}: {m}"),
            AdminError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AdminError {}

impl From<LedgerError> for AdminError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::NotFound(m) => AdminError::NotFound(m),
            LedgerError::Conflict(m) => AdminError::Conflict(m),
            e => AdminError::Store(e),
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> AdminError {
    AdminError::Invalid(message.into(), field.to_string())
}

/// A new tenant.
#[derive(Clone, Debug, Default)]
pub struct TenantInput {
    pub name: String,
    pub limits: Limits,
    pub policy: Option<String>,
    pub downgrade: Option<Downgrade>,
    pub metadata: Map<String, Value>,
}

/// A change to a tenant: `None` leaves a setting as it is, `Some(None)` clears it.
#[derive(Clone, Debug, Default)]
pub struct TenantPatch {
    pub limits: LimitsPatch,
    pub policy: Option<Option<String>>,
    pub downgrade: Option<Option<Downgrade>>,
    /// Replaces the metadata whole.
    pub metadata: Option<Map<String, Value>>,
}

/// A change to [`Limits`]: `None` leaves a limit as it is, `Some(None)` removes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitsPatch {
    pub budget_day: Option<Option<Nanos>>,
    pub budget_month: Option<Option<Nanos>>,
    pub budget_total: Option<Option<Nanos>>,
    pub rpm: Option<Option<u64>>,
    pub tpm: Option<Option<u64>>,
    pub concurrency: Option<Option<u64>>,
}

impl LimitsPatch {
    pub fn apply(&self, l: &mut Limits) {
        fn set<T: Copy>(slot: &mut Option<T>, v: Option<Option<T>>) {
            if let Some(v) = v {
                *slot = v;
            }
        }
        set(&mut l.budget_day, self.budget_day);
        set(&mut l.budget_month, self.budget_month);
        set(&mut l.budget_total, self.budget_total);
        set(&mut l.rpm, self.rpm);
        set(&mut l.tpm, self.tpm);
        set(&mut l.concurrency, self.concurrency);
    }

    /// The limits a new scope gets: what the patch sets.
    pub fn to_limits(&self) -> Limits {
        let mut l = Limits::default();
        self.apply(&mut l);
        l
    }
}

/// A new key.
#[derive(Clone, Debug, Default)]
pub struct KeyInput {
    pub tenant: String,
    pub name: Option<String>,
    pub limits: Limits,
    pub routes: Vec<String>,
    pub models: Vec<String>,
    pub policy: Option<String>,
    pub default_route: Option<String>,
    /// Whether the key's requests use the response cache (None: as the route says).
    pub cache: Option<bool>,
    pub metadata: Map<String, Value>,
    /// Unix milliseconds; must be in the future.
    pub expires_ms: Option<i64>,
}

/// The administrative operations, over one store and the routing config they validate against.
#[derive(Clone, Debug)]
pub struct Admin {
    ledger: Ledger,
    routing: Routing,
}

impl Admin {
    pub fn new(ledger: Ledger, routing: Routing) -> Admin {
        Admin { ledger, routing }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn check_limits(&self, l: &Limits) -> Result<(), AdminError> {
        for (field, v) in [
            ("budget_day_usd", l.budget_day),
            ("budget_month_usd", l.budget_month),
            ("budget_total_usd", l.budget_total),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(invalid(field, "must not be negative"));
            }
        }
        Ok(())
    }

    fn check_policy(&self, policy: Option<&str>) -> Result<(), AdminError> {
        match policy {
            Some(p) if !self.routing.policies.contains_key(p) => Err(invalid(
                "policy",
                format!(
                    "no policy named \"{p}\" in the config (known: {})",
                    self.routing.policies.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }

    fn check_downgrade(&self, d: Option<&Downgrade>) -> Result<(), AdminError> {
        match d {
            Some(d) if !(1..=99).contains(&d.below_percent) => {
                Err(invalid("downgrade.below", "must be between 1% and 99%"))
            }
            _ => Ok(()),
        }
    }

    fn check_tenant(&self, t: &Tenant) -> Result<(), AdminError> {
        self.check_limits(&t.limits)?;
        self.check_policy(t.policy.as_deref())?;
        self.check_downgrade(t.downgrade.as_ref())
    }

    pub async fn create_tenant(&self, actor: &str, input: TenantInput) -> Result<Tenant, AdminError> {
        if !tenancy::valid_tenant_name(&input.name) {
            return Err(invalid("name", "a tenant name is 1 to 64 characters of a-z, 0-9, _ and -"));
        }
        if input.name == BUILTIN_TENANT {
            return Err(invalid("name", format!("\"{BUILTIN_TENANT}\" is reserved for server.api_keys")));
        }
        let now = now_ms();
        let t = Tenant {
            name: input.name,
            limits: input.limits,
            policy: input.policy,
            downgrade: input.downgrade,
            metadata: input.metadata,
            created_ms: now,
            updated_ms: now,
        };
        self.check_tenant(&t)?;
        let audit = audit(actor, "tenant.create", &t.name, tenant_json(&t));
        self.ledger.put_tenant(&t, &audit, true).await?;
        Ok(t)
    }

    pub async fn set_tenant(&self, actor: &str, name: &str, patch: TenantPatch) -> Result<Tenant, AdminError> {
        let mut t = self.tenant(name).await?;
        patch.limits.apply(&mut t.limits);
        if let Some(p) = patch.policy {
            t.policy = p;
        }
        if let Some(d) = patch.downgrade {
            t.downgrade = d;
        }
        if let Some(m) = patch.metadata {
            t.metadata = m;
        }
        t.updated_ms = now_ms().max(t.updated_ms);
        self.check_tenant(&t)?;
        let audit = audit(actor, "tenant.set", &t.name, tenant_json(&t));
        self.ledger.put_tenant(&t, &audit, false).await?;
        Ok(t)
    }

    /// Refused while the tenant has keys that are not revoked (see `ledger::tenancy`).
    pub async fn delete_tenant(&self, actor: &str, name: &str) -> Result<(), AdminError> {
        let audit = audit(actor, "tenant.delete", name, json!({}));
        Ok(self.ledger.delete_tenant(name, &audit).await?)
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, AdminError> {
        Ok(self.ledger.tenants().await?)
    }

    pub async fn tenant(&self, name: &str) -> Result<Tenant, AdminError> {
        self.ledger.tenant(name).await?.ok_or_else(|| AdminError::NotFound(format!("no tenant named \"{name}\"")))
    }

    /// A new key and its secret (shown to the caller once; only its hash is stored).
    pub async fn create_key(&self, actor: &str, input: KeyInput) -> Result<(Key, String), AdminError> {
        if self.ledger.tenant(&input.tenant).await?.is_none() {
            return Err(AdminError::NotFound(format!("no tenant named \"{}\"", input.tenant)));
        }
        if input.name.as_ref().is_some_and(|n| n.is_empty() || n.chars().count() > 200) {
            return Err(invalid("name", "a key name is 1 to 200 characters"));
        }
        self.check_limits(&input.limits)?;
        self.check_policy(input.policy.as_deref())?;
        for r in &input.routes {
            let is_glob = r.contains(['*', '?']);
            if r.is_empty() || (!is_glob && !self.routing.routes.contains_key(r)) {
                return Err(invalid("routes", format!("no route named \"{r}\" in the config")));
            }
        }
        if input.models.iter().any(String::is_empty) {
            return Err(invalid("models", "a model pattern must not be empty"));
        }
        if let Some(d) = &input.default_route {
            if !self.routing.routes.contains_key(d) {
                return Err(invalid("default_route", format!("no route named \"{d}\" in the config")));
            }
            if !tenancy::allowed_by(&input.routes, d) {
                return Err(invalid("default_route", format!("\"{d}\" is not among the key's routes")));
            }
        }
        let now = now_ms();
        if input.expires_ms.is_some_and(|e| e <= now) {
            return Err(invalid("expires_at", "must be in the future"));
        }
        let secret = tenancy::new_secret().map_err(|e| AdminError::Store(LedgerError::Io(std::io::Error::other(e))))?;
        let id = tenancy::new_key_id().map_err(|e| AdminError::Store(LedgerError::Io(std::io::Error::other(e))))?;
        let key = Key {
            id,
            tenant: input.tenant,
            name: input.name,
            secret_sha256: tenancy::secret_sha256(&secret),
            limits: input.limits,
            routes: input.routes,
            models: input.models,
            policy: input.policy,
            default_route: input.default_route,
            cache: input.cache,
            metadata: input.metadata,
            created_ms: now,
            expires_ms: input.expires_ms,
            revoked_ms: None,
        };
        let audit = audit(actor, "key.create", &key.id, key_json(&key, now));
        self.ledger.put_key(&key, &audit, true).await?;
        Ok((key, secret))
    }

    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<Key>, AdminError> {
        Ok(self.ledger.keys(tenant).await?)
    }

    pub async fn key(&self, id: &str) -> Result<Key, AdminError> {
        self.ledger.key(id).await?.ok_or_else(|| AdminError::NotFound(format!("no key with id {id}")))
    }

    /// Revokes a key; revoking a revoked key changes nothing and returns it as it is.
    pub async fn revoke_key(&self, actor: &str, id: &str) -> Result<Key, AdminError> {
        let mut key = self.key(id).await?;
        if key.revoked_ms.is_some() {
            return Ok(key);
        }
        key.revoked_ms = Some(now_ms());
        let audit = audit(actor, "key.revoke", &key.id, json!({"tenant": key.tenant}));
        self.ledger.put_key(&key, &audit, false).await?;
        Ok(key)
    }

    /// A new secret for the same key (same id, limits and history); the old one stops working.
    pub async fn rotate_key(&self, actor: &str, id: &str) -> Result<(Key, String), AdminError> {
        let mut key = self.key(id).await?;
        if key.revoked_ms.is_some() {
            return Err(AdminError::Conflict(format!("key {id} is revoked: create a new key instead")));
        }
        let secret = tenancy::new_secret().map_err(|e| AdminError::Store(LedgerError::Io(std::io::Error::other(e))))?;
        key.secret_sha256 = tenancy::secret_sha256(&secret);
        let audit = audit(actor, "key.rotate", &key.id, json!({"tenant": key.tenant}));
        self.ledger.put_key(&key, &audit, false).await?;
        Ok((key, secret))
    }

    /// The newest `limit` audit rows, newest first.
    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, AdminError> {
        Ok(self.ledger.audit(limit).await?)
    }
}

fn audit(actor: &str, action: &str, target: &str, detail: Value) -> AuditEntry {
    AuditEntry { ts_ms: now_ms(), actor: actor.into(), action: action.into(), target: target.into(), detail }
}

/// `downgrade = {below, min_quality}` from its text forms (`"20%"`, `"adequate"` or `"1300"`).
pub fn parse_downgrade(below: &str, min_quality: &str) -> Result<Downgrade, AdminError> {
    Ok(Downgrade {
        below_percent: tenancy::parse_percent(below).map_err(|m| invalid("downgrade.below", m))?,
        min_quality: parse_quality(min_quality).map_err(|m| invalid("downgrade.min_quality", m))?,
    })
}

/// A quality as the config would name it: the tier's name when it is exactly one, else the number.
pub fn quality_json(q: u32) -> Value {
    match TIERS.iter().find(|(_, v)| *v == q) {
        Some((name, _)) => json!(name),
        None => json!(q),
    }
}

fn limits_json(l: &Limits, o: &mut Map<String, Value>) {
    let usd = |v: Option<Nanos>| v.map_or(Value::Null, |n| json!(format_usd(n)));
    o.insert("budget_day_usd".into(), usd(l.budget_day));
    o.insert("budget_month_usd".into(), usd(l.budget_month));
    o.insert("budget_total_usd".into(), usd(l.budget_total));
    o.insert("rpm".into(), json!(l.rpm));
    o.insert("tpm".into(), json!(l.tpm));
    o.insert("concurrency".into(), json!(l.concurrency));
}

/// A tenant as the admin API and `bourse tenants list --format json` show it.
pub fn tenant_json(t: &Tenant) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(t.name));
    limits_json(&t.limits, &mut o);
    o.insert("policy".into(), json!(t.policy));
    o.insert(
        "downgrade".into(),
        t.downgrade.as_ref().map_or(
            Value::Null,
            |d| json!({"below": format!("{}%", d.below_percent), "min_quality": quality_json(d.min_quality)}),
        ),
    );
    o.insert("metadata".into(), Value::Object(t.metadata.clone()));
    o.insert("created_at".into(), json!(rfc3339(t.created_ms)));
    o.insert("updated_at".into(), json!(rfc3339(t.updated_ms)));
    Value::Object(o)
}

/// A key's state at `now_ms`: `active`, `revoked` or `expired`.
pub fn key_state(k: &Key, now_ms: i64) -> &'static str {
    if k.revoked_ms.is_some_and(|t| t <= now_ms) {
        "revoked"
    } else if k.expires_ms.is_some_and(|t| t <= now_ms) {
        "expired"
    } else {
        "active"
    }
}

/// A key as the admin API and `bourse keys list --format json` show it: never its secret
/// nor its hash.
pub fn key_json(k: &Key, now_ms: i64) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(k.id));
    o.insert("tenant".into(), json!(k.tenant));
    o.insert("name".into(), json!(k.name));
    limits_json(&k.limits, &mut o);
    o.insert("routes".into(), json!(k.routes));
    o.insert("models".into(), json!(k.models));
    o.insert("policy".into(), json!(k.policy));
    o.insert("default_route".into(), json!(k.default_route));
    o.insert("cache".into(), json!(k.cache));
    o.insert("metadata".into(), Value::Object(k.metadata.clone()));
    o.insert("state".into(), json!(key_state(k, now_ms)));
    o.insert("created_at".into(), json!(rfc3339(k.created_ms)));
    o.insert("expires_at".into(), json!(k.expires_ms.map(rfc3339)));
    o.insert("revoked_at".into(), json!(k.revoked_ms.map(rfc3339)));
    Value::Object(o)
}

/// An audit row as JSON.
pub fn audit_json(a: &AuditEntry) -> Value {
    json!({"ts": rfc3339(a.ts_ms), "actor": a.actor, "action": a.action, "target": a.target, "detail": a.detail})
}

/// How often [`Directory::spawn_refresh`] is meant to poll the store.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// A key as a request resolves it: the key and its tenant.
#[derive(Debug)]
pub struct Resolved {
    pub key: Key,
    pub tenant: Arc<Tenant>,
    /// The limit scopes every request of this key is admitted by (key, then tenant), built
    /// once per directory load rather than per request.
    pub scopes: Arc<[crate::limit::Scope]>,
    /// The tenant's name: the counters' hash tag.
    pub group: Arc<str>,
    /// The key's id, shared: every request's caller and ledger row name the key by it.
    pub id: Arc<str>,
}

impl Resolved {
    pub fn new(key: Key, tenant: Arc<Tenant>) -> Resolved {
        use crate::limit::{Scope, ScopeKind};
        let group: Arc<str> = Arc::from(tenant.name.as_str());
        let id: Arc<str> = Arc::from(key.id.as_str());
        let scopes = Arc::from([
            Scope { kind: ScopeKind::Key, id: id.clone(), limits: key.limits.clone() },
            Scope { kind: ScopeKind::Tenant, id: group.clone(), limits: tenant.limits.clone() },
        ]);
        Resolved { key, tenant, scopes, group, id }
    }
}

/// One consistent load of the store.
struct Snapshot {
    version: i64,
    tenants: Vec<Arc<Tenant>>,
    keys: Vec<Key>,
    by_hash: HashMap<String, Arc<Resolved>>,
    /// Secrets already verified against `by_hash` in this snapshot, so a key's later requests
    /// skip the SHA-256 (~2,500 instructions of a request's ~78,000). Only secrets that matched
    /// a key enter it, so it holds at most one entry per key and a client cannot grow it; the
    /// map's hasher is keyed (SipHash with random keys), so lookup timing says nothing about a
    /// cached secret. It goes with the snapshot when the store changes.
    verified: RwLock<HashMap<Box<str>, Arc<Resolved>>>,
}

impl Snapshot {
    fn build(version: i64, tenants: Vec<Tenant>, keys: Vec<Key>) -> Snapshot {
        let tenants: Vec<Arc<Tenant>> = tenants.into_iter().map(Arc::new).collect();
        let by_name: HashMap<&str, &Arc<Tenant>> = tenants.iter().map(|t| (t.name.as_str(), t)).collect();
        let by_hash = keys
            .iter()
            .filter(|k| k.revoked_ms.is_none())
            .filter_map(|k| {
                let tenant = Arc::clone(by_name.get(k.tenant.as_str())?);
                Some((k.secret_sha256.clone(), Arc::new(Resolved::new(k.clone(), tenant))))
            })
            .collect();
        Snapshot { version, tenants, keys, by_hash, verified: RwLock::default() }
    }
}

fn keys_empty(snapshot: &RwLock<Arc<Snapshot>>) -> bool {
    snapshot.read().unwrap_or_else(PoisonError::into_inner).keys.is_empty()
}

/// The live view of tenants and keys a replica authenticates from (see the module doc).
pub struct Directory {
    ledger: Ledger,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Whether the snapshot holds any key: read on every authenticated request, including
    /// those with a config key, so it is one atomic load rather than a lock.
    has_keys: std::sync::atomic::AtomicBool,
    /// One reload at a time (a slow store must not stack them up).
    reloading: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory").field("version", &self.current().version).finish_non_exhaustive()
    }
}

impl Directory {
    /// Loads everything from the store.
    pub async fn load(ledger: Ledger) -> Result<Directory, LedgerError> {
        let (version, tenants, keys) = ledger.directory().await?;
        let snapshot = RwLock::new(Arc::new(Snapshot::build(version, tenants, keys)));
        let has_keys = std::sync::atomic::AtomicBool::new(!keys_empty(&snapshot));
        Ok(Directory { ledger, snapshot, has_keys, reloading: tokio::sync::Mutex::new(()) })
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The key a presented secret belongs to, if it is usable at `now_ms` (not revoked, not
    /// expired, its tenant present). A string without [`SECRET_PREFIX`] is refused unhashed.
    pub fn lookup(&self, presented_secret: &str, now_ms: i64) -> Option<Arc<Resolved>> {
        if !presented_secret.starts_with(SECRET_PREFIX) {
            return None;
        }
        let snap = self.current();
        let cached = snap.verified.read().unwrap_or_else(PoisonError::into_inner).get(presented_secret).cloned();
        let found = match cached {
            Some(found) => found,
            None => {
                let found = Arc::clone(snap.by_hash.get(&tenancy::secret_sha256(presented_secret))?);
                let mut verified = snap.verified.write().unwrap_or_else(PoisonError::into_inner);
                if verified.len() < snap.by_hash.len() {
                    verified.insert(Box::from(presented_secret), Arc::clone(&found));
                }
                found
            }
        };
        found.key.active(now_ms).then_some(found)
    }

    /// No virtual key exists (revoked ones count: a gateway that had keys stays closed).
    pub fn is_empty(&self) -> bool {
        !self.has_keys.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The store's version this snapshot was loaded at.
    pub fn version(&self) -> i64 {
        self.current().version
    }

    /// Reloads when the store's `directory_version` has moved; true if it reloaded.
    pub async fn refresh(&self) -> Result<bool, LedgerError> {
        let _one = self.reloading.lock().await;
        let version = self.ledger.directory_version().await?;
        if version == self.current().version {
            return Ok(false);
        }
        let (version, tenants, keys) = self.ledger.directory().await?;
        let next = Arc::new(Snapshot::build(version, tenants, keys));
        self.has_keys.store(!next.keys.is_empty(), std::sync::atomic::Ordering::Relaxed);
        *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(true)
    }

    /// Polls [`Directory::refresh`] every `every` until the task is aborted; a failed poll is
    /// logged and the current snapshot kept.
    pub fn spawn_refresh(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e, "directory: reload failed; serving the last snapshot");
                }
            }
        })
    }

    /// The tenants of the current snapshot, by name.
    pub fn tenants_snapshot(&self) -> Vec<Arc<Tenant>> {
        self.current().tenants.clone()
    }

    /// The keys of the current snapshot (revoked ones included), oldest first.
    pub fn keys_snapshot(&self) -> Vec<Key> {
        self.current().keys.clone()
    }
}

/// Whether `model` is allowed by a key's model patterns (empty: any). A pattern with a `/`
/// matches `provider/model`; one without matches the bare model name.
pub fn model_allowed(patterns: &[String], provider: &str, model: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| {
            if p.contains('/') {
                glob_match(p, &format!("{provider}/{model}"))
            } else {
                glob_match(p, model)
            }
        })
}

/// One budget of a tenant or key, as `bourse report --by tenant|key` shows it: what is used
/// in the window now, and when it runs out at the last seven days' rate of spend.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BudgetUse {
    /// The tenant's name or the key's id.
    pub group: String,
    pub window: &'static str,
    pub limit_nanos: Nanos,
    /// Settled spend in the window (from the ledger).
    pub used_nanos: Nanos,
    pub left_nanos: Nanos,
    /// Spend over the last seven days.
    pub spent_7d_nanos: Nanos,
    /// Unix ms when the budget runs out at that rate; None with no spend in seven days, or
    /// when the window starts again first (`resets_at_ms`).
    pub runs_out_ms: Option<i64>,
    pub resets_at_ms: Option<i64>,
}

/// Every budget of every tenant (`GroupBy::Tenant`) or key (`GroupBy::Key`) with its use
/// now and its runway. Integer arithmetic throughout: runway = left × 7 days ÷ 7-day spend.
pub async fn budget_use(
    ledger: &Ledger,
    by: crate::ledger::GroupBy,
    now_ms: i64,
) -> Result<Vec<BudgetUse>, LedgerError> {
    use crate::ledger::{GroupBy, ReportQuery};
    use crate::limit::{window_end, window_start, Window};
    const WEEK_MS: i64 = 7 * 86_400_000;
    let scopes: Vec<(String, Limits)> = match by {
        GroupBy::Tenant => ledger.tenants().await?.into_iter().map(|t| (t.name, t.limits)).collect(),
        GroupBy::Key => ledger.keys(None).await?.into_iter().map(|k| (k.id, k.limits)).collect(),
        _ => return Ok(Vec::new()),
    };
    // No budget anywhere: nothing to read from the ledger.
    if scopes.iter().all(|(_, l)| l.budget_day.is_none() && l.budget_month.is_none() && l.budget_total.is_none()) {
        return Ok(Vec::new());
    }
    let spend = |since: Option<i64>| {
        let q = ReportQuery { since_ms: since, until_ms: None, by, key: None };
        async move {
            let rows = ledger.report(&q).await?;
            Ok::<HashMap<String, i64>, LedgerError>(rows.into_iter().map(|r| (r.group, r.cost_nanos)).collect())
        }
    };
    let week = spend(Some(now_ms - WEEK_MS)).await?;
    let mut out = Vec::new();
    for window in [Window::Day, Window::Month, Window::Total] {
        let used = spend(window_start(window, now_ms)).await?;
        for (group, limits) in &scopes {
            let limit = match window {
                Window::Day => limits.budget_day,
                Window::Month => limits.budget_month,
                Window::Total => limits.budget_total,
            };
            let Some(limit) = limit else { continue };
            let used = used.get(group).copied().unwrap_or(0);
            let left = (limit - used).max(0);
            let spent_7d = week.get(group).copied().unwrap_or(0);
            let resets_at_ms = window_end(window, now_ms);
            let runs_out_ms = (spent_7d > 0)
                .then(|| {
                    now_ms
                        + i64::try_from(i128::from(left) * i128::from(WEEK_MS) / i128::from(spent_7d))
                            .unwrap_or(i64::MAX)
                })
                .filter(|t| resets_at_ms.is_none_or(|r| *t < r));
            out.push(BudgetUse {
                group: group.clone(),
                window: window.as_str(),
                limit_nanos: limit,
                used_nanos: used,
                left_nanos: left,
                spent_7d_nanos: spent_7d,
                runs_out_ms,
                resets_at_ms,
            });
        }
    }
    out.sort_by(|a, b| a.group.cmp(&b.group));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDb(std::path::PathBuf);

    impl TempDb {
        fn new(tag: &str) -> TempDb {
            TempDb(std::env::temp_dir().join(format!(
                "bourse-admin-{tag}-{}-{}.db",
                std::process::id(),
                fastrand::u64(..)
            )))
        }

        fn url(&self) -> String {
            format!("sqlite:{}", self.0.display())
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
        }
    }

    pub(crate) fn routing() -> Routing {
        crate::config::Config::from_toml(
            "[policies.eu]\ndeny_hosting = [\"US\"]\n[routes.cheap]\nmin_quality = \"basic\"\n",
            &|_| None,
        )
        .unwrap()
        .routing
    }

    async fn admin(db: &TempDb) -> Admin {
        Admin::new(Ledger::open(&db.url()).await.unwrap(), routing())
    }

    #[tokio::test]
    async fn validation_names_the_field() {
        let db = TempDb::new("validation");
        let a = admin(&db).await;
        let field = |e: AdminError| match e {
            AdminError::Invalid(_, f) => f,
            other => panic!("{other}"),
        };
        let bad = |name: &str| TenantInput { name: name.into(), ..TenantInput::default() };
        assert_eq!(field(a.create_tenant("t", bad("Bad Name")).await.unwrap_err()), "name");
        assert_eq!(field(a.create_tenant("t", bad(BUILTIN_TENANT)).await.unwrap_err()), "name");
        let policy = TenantInput { policy: Some("nope".into()), ..bad("a") };
        assert_eq!(field(a.create_tenant("t", policy).await.unwrap_err()), "policy");
        let negative = TenantInput { limits: Limits { budget_day: Some(-1), ..Limits::default() }, ..bad("a") };
        assert_eq!(field(a.create_tenant("t", negative).await.unwrap_err()), "budget_day_usd");
        let down = TenantInput { downgrade: Some(Downgrade { below_percent: 100, min_quality: 1 }), ..bad("a") };
        assert_eq!(field(a.create_tenant("t", down).await.unwrap_err()), "downgrade.below");
        assert!(a.list_tenants().await.unwrap().is_empty());

        a.create_tenant("t", TenantInput { policy: Some("eu".into()), ..bad("a") }).await.unwrap();
        let key = |f: fn(&mut KeyInput)| {
            let mut k = KeyInput { tenant: "a".into(), ..KeyInput::default() };
            f(&mut k);
            k
        };
        assert_eq!(field(a.create_key("t", key(|k| k.routes = vec!["nope".into()])).await.unwrap_err()), "routes");
        a.create_key("t", key(|k| k.routes = vec!["ch*".into()])).await.unwrap();
        let d = key(|k| k.default_route = Some("nope".into()));
        assert_eq!(field(a.create_key("t", d).await.unwrap_err()), "default_route");
        let d = key(|k| {
            k.routes = vec!["cheap".into()];
            k.default_route = Some("auto".into());
        });
        assert_eq!(field(a.create_key("t", d).await.unwrap_err()), "default_route");
        assert_eq!(field(a.create_key("t", key(|k| k.expires_ms = Some(1))).await.unwrap_err()), "expires_at");
        let orphan = KeyInput { tenant: "zz".into(), ..KeyInput::default() };
        assert!(matches!(a.create_key("t", orphan).await.unwrap_err(), AdminError::NotFound(_)));
        assert!(matches!(a.create_tenant("t", bad("a")).await.unwrap_err(), AdminError::Conflict(_)));
        assert_eq!(parse_downgrade("20%", "adequate").unwrap(), Downgrade { below_percent: 20, min_quality: 1300 });
    }

    #[tokio::test]
    async fn the_directory_follows_creates_revokes_and_rotations() {
        let db = TempDb::new("directory");
        let a = admin(&db).await;
        a.create_tenant("cli:me", TenantInput { name: "acme".into(), ..TenantInput::default() }).await.unwrap();
        let (key, secret) =
            a.create_key("cli:me", KeyInput { tenant: "acme".into(), ..KeyInput::default() }).await.unwrap();
        // A second replica's view, over its own connections to the same file.
        let dir = Directory::load(Ledger::open(&db.url()).await.unwrap()).await.unwrap();
        let now = now_ms();
        let found = dir.lookup(&secret, now).unwrap();
        assert_eq!((found.key.id.as_str(), found.tenant.name.as_str()), (key.id.as_str(), "acme"));
        assert!(dir.lookup("sk-other", now).is_none());
        assert!(dir.lookup(&format!("{secret}x"), now).is_none());
        // A verified secret is remembered, but its key's validity is still checked each time.
        let (_, brief) = a
            .create_key(
                "cli:me",
                KeyInput { tenant: "acme".into(), expires_ms: Some(now + 60_000), ..KeyInput::default() },
            )
            .await
            .unwrap();
        assert!(dir.refresh().await.unwrap());
        assert!(dir.lookup(&brief, now).is_some());
        assert!(dir.lookup(&brief, now).is_some(), "from the verified secrets");
        assert!(dir.lookup(&brief, now + 60_000).is_none(), "expired, even when remembered");

        let (_, fresh) = a.rotate_key("cli:me", &key.id).await.unwrap();
        assert!(dir.lookup(&secret, now).is_some(), "until the next refresh");
        assert!(dir.refresh().await.unwrap());
        assert!(!dir.refresh().await.unwrap(), "nothing changed since");
        assert!(dir.lookup(&secret, now).is_none(), "the old secret stops working");
        assert_eq!(dir.lookup(&fresh, now).unwrap().key.id, key.id);

        a.revoke_key("cli:me", &key.id).await.unwrap();
        let dir = Arc::new(dir);
        let task = Arc::clone(&dir).spawn_refresh(Duration::from_millis(20));
        let start = std::time::Instant::now();
        while dir.lookup(&fresh, now).is_some() {
            assert!(start.elapsed() < Duration::from_secs(5), "the revoke never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        assert_eq!(dir.keys_snapshot().len(), 2);
        assert_eq!(dir.tenants_snapshot().len(), 1);
        assert!(matches!(a.rotate_key("cli:me", &key.id).await.unwrap_err(), AdminError::Conflict(_)));
        let actions: Vec<String> = a.audit(10).await.unwrap().into_iter().map(|e| e.action).collect();
        assert_eq!(actions, ["key.revoke", "key.rotate", "key.create", "key.create", "tenant.create"]);
        assert!(!a.audit(10).await.unwrap().iter().any(|e| e.detail.to_string().contains(&fresh[10..])));
    }

    #[test]
    fn expiry_is_checked_at_lookup_time() {
        let tenant = Tenant {
            name: "a".into(),
            limits: Limits::default(),
            policy: None,
            downgrade: None,
            metadata: Map::new(),
            created_ms: 0,
            updated_ms: 0,
        };
        let key = Key {
            id: "key_1".into(),
            tenant: "a".into(),
            name: None,
            secret_sha256: tenancy::secret_sha256("sk-bourse-x"),
            limits: Limits::default(),
            routes: vec![],
            models: vec![],
            policy: None,
            default_route: None,
            cache: None,
            metadata: Map::new(),
            created_ms: 0,
            expires_ms: Some(100),
            revoked_ms: None,
        };
        let snap = Snapshot::build(
            1,
            vec![tenant],
            vec![key.clone(), Key { id: "key_2".into(), tenant: "gone".into(), ..key.clone() }],
        );
        assert_eq!(snap.by_hash.len(), 1, "a key whose tenant is missing resolves to nothing");
        assert_eq!(key_state(&key, 99), "active");
        assert_eq!(key_state(&key, 100), "expired");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert!(model_allowed(&["openai/*".into()], "openai", "gpt-4o"));
        assert!(!model_allowed(&["gpt-*".into()], "x", "claude"));
    }
}
