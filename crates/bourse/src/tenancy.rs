//! Tenants and their virtual keys, as data: what an administrator set for each, and the
//! rules every key obeys (secrets, validity, allowed routes and models).
//!
//! A tenant (a team, an org, a customer) owns keys; each has limits ([`Limits`]), an optional
//! data policy (a `[policies.X]` name) and free-form metadata. A key's secret is
//! `sk-bourse-` followed by 32 random base62 characters (~190 bits, from the operating
//! system's CSPRNG); only its SHA-256 is stored, and the secret is shown once, when the key is
//! created or rotated. Keys in `server.api_keys` are unlimited keys of the built-in tenant
//! [`BUILTIN_TENANT`] and are never stored.
//!
//! This module is pure: the store is `ledger::tenancy`, the live directory every replica
//! keeps is `admin::Directory`.

use crate::limit::Limits;
use serde::{Deserialize, Serialize};

/// The tenant `server.api_keys` belong to.
pub const BUILTIN_TENANT: &str = "builtin";

/// The prefix of every virtual key's secret.
pub const SECRET_PREFIX: &str = "sk-bourse-";

/// A tenant as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Unique and immutable; `[a-z0-9_-]`, 1 to 64 characters.
    pub name: String,
    pub limits: Limits,
    /// A `[policies.X]` name every request of the tenant's keys obeys.
    pub policy: Option<String>,
    /// Route with a lower quality floor when the remaining budget runs low.
    pub downgrade: Option<Downgrade>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// `downgrade = { below = "20%", min_quality = "adequate" }`: when the tightest budget has
/// less than `below_percent` of its limit left, routed requests use `min_quality` as their
/// floor (never lower than it, and never higher than the route's own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downgrade {
    /// 1..=99.
    pub below_percent: u32,
    /// On the catalog's quality scale.
    pub min_quality: u32,
}

/// A virtual key as stored (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// `key_` + 16 hex digits, random; what ledger rows and reports name.
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    /// Lower-case hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub limits: Limits,
    /// Route names the key may use (globs: `*` any run, `?` one character); empty: any.
    pub routes: Vec<String>,
    /// Models the key may name, as `provider/model` or bare model globs; empty: any.
    pub models: Vec<String>,
    /// A `[policies.X]` name, applied on top of the tenant's (it can only narrow it).
    pub policy: Option<String>,
    /// The route a request naming no model (or `model: "default"`) goes to.
    pub default_route: Option<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

impl Key {
    /// Usable at `now_ms`: not revoked and not expired.
    pub fn active(&self, now_ms: i64) -> bool {
        self.revoked_ms.is_none_or(|t| t > now_ms) && self.expires_ms.is_none_or(|t| t > now_ms)
    }
}

/// One audit row: who changed what, when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub ts_ms: i64,
    /// `admin:<key id>` over the API, `cli:<user>` from the command line.
    pub actor: String,
    /// `tenant.create`, `tenant.set`, `tenant.delete`, `key.create`, `key.revoke`, `key.rotate`.
    pub action: String,
    /// The tenant's name or the key's id.
    pub target: String,
    /// What was set (never a secret).
    pub detail: serde_json::Value,
}

/// TEMPORARY until the admin branch lands its matcher.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    pattern == "*" || pattern == text
}
