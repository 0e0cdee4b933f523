//! The usage ledger: one row per upstream attempt, written off the request path.
//!
//! [`LedgerEntry`] is built by the request path; [`Writer`] takes it without waiting
//! (a bounded queue drained by a background batch writer) and [`Ledger`] stores batches
//! in SQLite (the embedded default) or PostgreSQL. Reports read aggregates back.
//! No prompt or completion text is ever stored.

use crate::canonical::Usage;
use serde::Serialize;

/// One upstream attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    pub request_id: String,
    /// 1 for the first attempt of a request, 2 for its first fallback, ...
    pub attempt: u32,
    /// Unix milliseconds when the attempt started.
    pub ts_ms: i64,
    /// Which gateway key the client used (an id, never the key), if keys are configured.
    pub key_id: Option<String>,
    pub provider: String,
    pub model: String,
    /// Why this model was chosen (filled by the router).
    pub route_reason: Option<String>,
    pub usage: Usage,
    /// Integer nano-USD.
    pub cost_nanos: i64,
    pub reference_cost_nanos: i64,
    pub catalog_version: String,
    pub ttfb_ms: Option<u32>,
    pub latency_ms: u32,
    /// HTTP status the attempt ended with (as seen by the gateway).
    pub status: u16,
    pub error_kind: Option<String>,
    /// Usage estimated by the gateway because the upstream never reported it.
    pub estimated: bool,
    pub stream: bool,
}
