//! The OpenAI-compatible surface: `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`.

use super::read_json_body;
use crate::dialect::openai::{parse_chat_request, parse_embeddings_request};
use crate::error::{Error, ErrorKind, Result};
use crate::exchange;
use crate::route::Overrides;
use crate::state::{AppState, Caller, SharedState};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub async fn chat_completions(state: SharedState, caller: Caller, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let body = read_json_body(&parts.headers, body, &state).await?;
    let req = parse_chat_request(&body)?;
    let overrides = Overrides::from_headers(&parts.headers)?;
    Ok(exchange::chat(&state, &caller, req, &overrides, &parts.headers).await)
}

pub async fn embeddings(state: SharedState, caller: Caller, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let body = read_json_body(&parts.headers, body, &state).await?;
    let req = parse_embeddings_request(&body)?;
    Ok(exchange::embeddings(&state, &caller, req).await)
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
