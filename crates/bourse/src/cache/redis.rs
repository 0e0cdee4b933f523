//! The Redis store: one string per entry, `bourse:cache:v1:<key in hex>` ->
//! [`Entry::encode`], written with `SET ... PX <ttl>` so Redis expires it, read with `GET`.
//! The key is a digest: the name says nothing of the tenant, the request or the answer.
//!
//! Its own connection (not the counters'): an answer of megabytes on the wire would
//! otherwise queue the counters' decisions behind it. Every call is bounded by the counters'
//! [`TIMEOUT`]; a failure is a miss (or a store that did not happen), logged at most once a
//! minute, and the connection manager reconnects in the background.

use super::{Entry, Key};
use crate::limit::redis::TIMEOUT;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

const PREFIX: &str = "bourse:cache:v1:";

pub(super) struct RedisStore {
    conn: ConnectionManager,
    /// When a failure was last logged (Unix ms).
    warned: Arc<AtomicI64>,
}

fn name(key: &Key) -> String {
    let mut s = String::with_capacity(PREFIX.len() + 64);
    s.push_str(PREFIX);
    s.push_str(&key.hex());
    s
}

/// Log a failed call, at most once a minute (every request would otherwise log it while the
/// server is down).
fn failed(warned: &AtomicI64, what: &str, e: &dyn std::fmt::Display) {
    let now = crate::timespec::now_ms();
    let last = warned.load(Ordering::Relaxed);
    if now - last >= 60_000 && warned.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        tracing::warn!(error = %e, "response cache: Redis {what} failed (answers are served uncached meanwhile)");
    }
}

impl RedisStore {
    pub(super) fn connect(url: &str) -> Result<RedisStore, String> {
        let conn = crate::limit::redis::lazy_connection(url)?;
        Ok(RedisStore { conn, warned: Arc::new(AtomicI64::new(i64::MIN / 2)) })
    }

    pub(super) async fn get(&self, key: &Key) -> Option<Entry> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("GET");
        let call = cmd.arg(name(key)).query_async::<Option<Vec<u8>>>(&mut conn);
        // A little over the connection's own timeouts: a connect then a call.
        match tokio::time::timeout(TIMEOUT * 2, call).await {
            Ok(Ok(value)) => Entry::decode(Bytes::from(value?)),
            Ok(Err(e)) => {
                failed(&self.warned, "GET", &e);
                None
            }
            Err(_) => {
                failed(&self.warned, "GET", &"timed out");
                None
            }
        }
    }

    /// Writes on a task of its own: the answer does not wait for it.
    pub(super) fn put(&self, key: &Key, entry: &Entry, ttl_ms: i64) {
        let (mut conn, warned) = (self.conn.clone(), self.warned.clone());
        let (name, value) = (name(key), entry.encode());
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            let mut cmd = redis::cmd("SET");
            let call = cmd.arg(name).arg(value).arg("PX").arg(ttl_ms.max(1)).query_async::<()>(&mut conn);
            match tokio::time::timeout(TIMEOUT * 2, call).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed(&warned, "SET", &e),
                Err(_) => failed(&warned, "SET", &"timed out"),
            }
        });
    }
}
