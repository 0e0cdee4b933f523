//! The OpenAI-compatible surface: `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`.

use super::chat::{
    self, error_response, json_response, money_headers, not_json, provenance, read_json_body, read_upstream_body,
    Attempt, Chosen,
};
use crate::canonical::{Dialect, Usage};
use crate::dialect::openai::{self as wire, parse_chat_request, parse_embeddings_request};
use crate::error::{Error, ErrorKind, Result};
use crate::meter::estimate;
use crate::provider::Endpoint;
use crate::route::Overrides;
use crate::server::{AppState, Caller, SharedState};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub use super::chat::{
    X_BOURSE_COST, X_BOURSE_MODEL, X_BOURSE_PROVIDER, X_BOURSE_REFERENCE_COST, X_BOURSE_ROUTE_REASON, X_BOURSE_SAVED,
};

pub async fn chat_completions(state: SharedState, caller: Caller, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let body = read_json_body(&parts.headers, body, &state).await?;
    let req = parse_chat_request(&body)?;
    let overrides = Overrides::from_headers(&parts.headers)?;
    Ok(chat::exchange(&state, caller, req, &overrides, &parts.headers).await)
}

pub async fn embeddings(state: SharedState, caller: Caller, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let body = read_json_body(&parts.headers, body, &state).await?;
    let mut req = parse_embeddings_request(&body)?;
    let target = state.providers.resolve(&req.model)?;
    let price = state.meter.price(&target.provider.id, target.provider.vendor, &target.upstream_model)?;
    let upstream_body = wire::upstream_embeddings_body(&mut req, &target.upstream_model);
    let mut attempt = Attempt::start(&state, caller, &target, false, 1, None, Chosen::Explicit(price));
    let resp = match target.provider.post_json(Endpoint::Embeddings, upstream_body).await {
        Ok(r) => r,
        Err(e) => return Ok(error_response(attempt.fail(e).await, &target, Dialect::OpenAi)),
    };
    attempt.ttfb = Some(attempt.started.elapsed());
    let (status, bytes) = match read_upstream_body(&target, resp).await {
        Ok(x) => x,
        Err(e) => return Ok(error_response(attempt.fail(e).await, &target, Dialect::OpenAi)),
    };
    let usage = match wire::response_usage(&bytes) {
        Ok(u) => u,
        Err(wire::NotJson) => {
            return Ok(error_response(attempt.fail(not_json(&target)).await, &target, Dialect::OpenAi))
        }
    };
    let (usage, estimate) = match usage {
        Some(u) => (u, None),
        None => {
            let input = std::sync::Arc::new(req.body.remove("input").unwrap_or_default());
            let counted = input.clone();
            let heuristic = || estimate::heuristic(input.to_string().as_bytes());
            let (tokens, how) =
                state.estimator.count(bytes.len(), move || estimate::embedding_input_tokens(&counted), heuristic).await;
            (Usage { input_uncached: tokens, ..Usage::default() }, Some(how))
        }
    };
    let (settled, record) = attempt.settle(usage, estimate, status.as_u16(), None);
    if let Some(r) = record {
        r.send().await;
    }
    let mut out = json_response(status, bytes);
    provenance(&mut out, &target);
    money_headers(&mut out, &settled);
    Ok(out)
}

fn model_object(id: &str, owner: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owner})
}

/// Every `provider/model` the gateway can reach by name.
fn reachable(state: &AppState) -> Vec<Value> {
    state
        .providers
        .iter()
        .flat_map(|p| p.models.iter().map(move |m| model_object(&format!("{}/{m}", p.id), &p.id, state.started)))
        .collect()
}

pub fn list_models(state: &AppState) -> Response {
    axum::Json(json!({"object": "list", "data": reachable(state)})).into_response()
}

pub fn get_model(state: &AppState, id: &str) -> Result<Response> {
    // Only what the gateway lists is retrievable, so list and retrieve agree.
    let target = state.providers.resolve(id)?;
    let full = format!("{}/{}", target.provider.id, target.upstream_model);
    if !target.provider.models.contains(&target.upstream_model) {
        return Err(Error {
            param: Some("model".into()),
            ..Error::new(
                ErrorKind::ModelNotFound,
                format!("model '{full}' is not listed by provider '{}'", target.provider.id),
            )
        });
    }
    Ok(axum::Json(model_object(&full, &target.provider.id, state.started)).into_response())
}
