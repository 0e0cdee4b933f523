//! TEMPORARY stub, replaced by the admin branch.
use crate::tenancy::{Key, Tenant};
use std::sync::Arc;

#[derive(Debug)]
pub struct Resolved {
    pub key: Key,
    pub tenant: Arc<Tenant>,
}

#[derive(Debug)]
pub struct Directory {}

impl Directory {
    pub fn is_empty(&self) -> bool {
        true
    }

    pub fn lookup(&self, _presented: &str, _now_ms: i64) -> Option<Arc<Resolved>> {
        None
    }
}
