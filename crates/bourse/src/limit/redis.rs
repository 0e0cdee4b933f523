//! The shared counters: Redis (or Valkey), one server-side script per decision.

use super::{Ask, Hold, Lease, LimitError, Remaining, ScopeKind, Spent, Usage};

#[derive(Clone, Debug)]
pub struct RedisCounters {}

impl RedisCounters {
    /// Connect to `url` (`redis://...`). Fails only on a malformed URL: an unreachable
    /// server is a per-decision [`LimitError::Unavailable`], so a replica starts (and serves,
    /// with "open") while Redis is down.
    pub async fn connect(_url: &str) -> Result<RedisCounters, String> {
        todo!("limit::redis")
    }

    pub async fn reserve(&self, _ask: &Ask<'_>) -> Result<(Hold, Remaining), LimitError> {
        todo!("limit::redis")
    }

    pub async fn settle(&self, _hold: Hold, _spent: Spent, _release: Option<Lease>) -> Result<(), LimitError> {
        todo!("limit::redis")
    }

    pub async fn release(&self, _lease: Lease) -> Result<(), LimitError> {
        todo!("limit::redis")
    }

    pub async fn usage(&self, _kind: ScopeKind, _id: &str, _group: &str, _now_ms: i64) -> Result<Usage, LimitError> {
        todo!("limit::redis")
    }
}
