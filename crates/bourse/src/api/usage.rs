//! `GET /v1/bourse/usage`: the ledger report as JSON (behind the gateway key like every
//! `/v1` route): requests, tokens by kind, cost, reference cost and savings.

use crate::error::{Error, ErrorKind, Result};
use crate::ledger::{GroupBy, ReportQuery};
use crate::state::{Caller, SharedState};
use crate::timespec;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
pub struct UsageParams {
    since: Option<String>,
    until: Option<String>,
    by: Option<String>,
}

pub fn group_by(s: Option<&str>) -> Result<GroupBy, String> {
    match s.unwrap_or("model") {
        "model" => Ok(GroupBy::Model),
        "provider" => Ok(GroupBy::Provider),
        "key" => Ok(GroupBy::Key),
        "tenant" => Ok(GroupBy::Tenant),
        "day" => Ok(GroupBy::Day),
        "route" => Ok(GroupBy::Route),
        "error" => Ok(GroupBy::Error),
        "none" | "total" => Ok(GroupBy::None),
        other => Err(format!("'by' must be model, provider, key, tenant, day, route, error or none, got \"{other}\"")),
    }
}

/// A virtual key sees its own usage only (whatever it asks to group by); config keys see all.
pub async fn usage(state: SharedState, caller: &Caller, uri: &axum::http::Uri) -> Result<Response> {
    let axum::extract::Query(p) = axum::extract::Query::<UsageParams>::try_from_uri(uri)
        .map_err(|e| Error::new(ErrorKind::InvalidRequest, format!("invalid query string: {}", e.body_text())))?;
    let Some(ledger) = &state.reports else {
        return Err(Error::new(ErrorKind::Unavailable, "the ledger is off ([storage] ledger = false)"));
    };
    let now = timespec::now_ms();
    let since =
        p.since.as_deref().map(|s| timespec::parse(s, now)).transpose().map_err(|m| Error::invalid("since", m))?;
    let until =
        p.until.as_deref().map(|s| timespec::parse(s, now)).transpose().map_err(|m| Error::invalid("until", m))?;
    let by = group_by(p.by.as_deref()).map_err(|m| Error::invalid("by", m))?;
    let own = caller.key.as_ref().map(|k| k.key.id.clone());
    let rows = ledger
        .report(&ReportQuery { since_ms: since, until_ms: until, by, key: own })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("ledger report failed: {e}")))?;
    let data: Vec<_> = rows.iter().map(crate::cli::report::row_json).collect();
    Ok(axum::Json(json!({"object": "list", "since_ms": since, "until_ms": until, "data": data})).into_response())
}
