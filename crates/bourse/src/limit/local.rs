//! The in-process counters: one mutex-guarded map of scopes. The default without
//! `[shared] redis_url`, and the fallback `on_shared_failure = "open"` serves on.
//! Rebuilt at start-up from the ledger ([`LocalCounters::seed`]).

use super::{Ask, Hold, Lease, LimitError, Remaining, ScopeKind, Spent, Usage};

#[derive(Clone, Debug, Default)]
pub struct LocalCounters {}

impl LocalCounters {
    pub fn new() -> LocalCounters {
        LocalCounters::default()
    }

    /// Set a scope's settled spend for the day and month holding `now_ms`, and in total (at
    /// start-up, from the ledger).
    pub fn seed(&self, _kind: ScopeKind, _id: &str, _now_ms: i64, _day: i64, _month: i64, _total: i64) {
        todo!("limit::local")
    }

    pub fn reserve(&self, _ask: &Ask<'_>) -> Result<(Hold, Remaining), LimitError> {
        todo!("limit::local")
    }

    pub fn settle(&self, _hold: Hold, _spent: Spent, _release: Option<Lease>) {
        todo!("limit::local")
    }

    pub fn release(&self, _lease: Lease) {
        todo!("limit::local")
    }

    pub fn usage(&self, _kind: ScopeKind, _id: &str, _now_ms: i64) -> Usage {
        todo!("limit::local")
    }
}
