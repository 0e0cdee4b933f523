//! `/metrics`: the Prometheus/OpenMetrics exposition ([`crate::telemetry::metrics`]), with
//! what is read at scrape time: the ledger writer's queue, the circuits, and (with
//! `[telemetry] tenant_labels`) what each tenant's budgets have left. No key is asked: like
//! `/healthz`, it is for the operator's network (see the README).

use crate::limit::{ScopeKind, Window};
use crate::state::AppState;
use crate::telemetry::metrics::Scrape;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// OpenMetrics 1.0 text, which Prometheus scrapes natively and its classic text parser reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn metrics(state: &AppState) -> Response {
    let Some(m) = &state.telemetry.metrics else {
        return crate::error::Error::new(crate::error::ErrorKind::NotFound, "metrics are off").into_response();
    };
    let now = std::time::Instant::now();
    let open_circuits = state
        .router
        .entries
        .iter()
        .filter(|e| !state.router.health.is_available(&e.key, now))
        .map(|e| e.key.to_string())
        .collect();
    let mut budgets = Vec::new();
    let tenants = state.directory.as_ref().map(|d| d.tenants_snapshot()).unwrap_or_default();
    if state.telemetry.metrics.as_ref().is_some_and(|m| m.tenant_labels()) {
        let now_ms = crate::timespec::now_ms();
        for t in tenants.iter() {
            let l = &t.limits;
            let windows =
                [(Window::Day, l.budget_day), (Window::Month, l.budget_month), (Window::Total, l.budget_total)];
            if windows.iter().all(|(_, b)| b.is_none()) {
                continue;
            }
            // A tenant whose counters cannot be read is left out of this scrape.
            let Ok(used) = state.counters.usage(ScopeKind::Tenant, &t.name, &t.name, now_ms).await else { continue };
            for (w, budget) in windows {
                let Some(budget) = budget else { continue };
                let spent = match w {
                    Window::Day => used.day,
                    Window::Month => used.month,
                    Window::Total => used.total,
                };
                budgets.push((t.name.clone(), w.as_str(), budget - spent));
            }
        }
    }
    let scrape = Scrape { ledger: state.ledger.as_ref().map(|w| w.stats()), open_circuits, budgets };
    let mut resp = m.encode(scrape).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}
