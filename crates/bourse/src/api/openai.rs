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

/// What `owned_by` says for a route (`auto` and `[routes.*]`): the gateway picks the model
/// a route is served by, so the name is Bourse's own.
pub const ROUTE_OWNER: &str = "bourse";

/// OpenAI's model object. `owned_by` is the Bourse provider id that serves the model (the
/// `[providers.X]` table name, or the preset's name in a zero-config start) — whom the
/// request goes to and is billed by, which is what a client choosing from the list needs —
/// not the lab that trained it; for a route it is [`ROUTE_OWNER`].
fn model_object(id: &str, owner: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owner})
}

/// Every name a client can put in `model` and be served, in the order a client that shows
/// the list should offer them: the routes first (`auto`, then named routes by name; none
/// without a model to route to), then each provider's models in config order. A provider's
/// models are the catalog entries priced under its id or its vendor's (`[models]` tables
/// included), by name: exactly the `provider/model` names a request is served for (an
/// unpriced model is refused, so it is not listed). Bare names are not listed: each is one
/// of these under a shorter name, and retrieving it works.
fn routable(state: &AppState) -> Vec<Value> {
    let router = &state.router;
    let mut out = Vec::new();
    if !router.entries.is_empty() {
        let routes = router.routes.keys().filter(|r| r.as_str() != "auto");
        for name in router.route("auto").map(|r| &r.name).into_iter().chain(routes) {
            out.push(model_object(name, ROUTE_OWNER, state.started));
        }
    }
    for p in state.providers.iter() {
        let served: std::collections::BTreeSet<&str> = (state.meter.catalog.models().iter())
            .filter(|m| m.provider == p.id || m.provider == p.vendor)
            .map(|m| m.model.as_str())
            .collect();
        for m in served {
            out.push(model_object(&format!("{}/{m}", p.id), &p.id, state.started));
        }
    }
    out
}

/// `GET /v1/models`: see [`routable`].
pub fn list_models(state: &AppState) -> Response {
    axum::Json(json!({"object": "list", "data": routable(state)})).into_response()
}

/// `GET /v1/models/{id}`: the model object for `id` as asked (a bare name stays bare) when a
/// request naming it would be served, resolved as a request's `model` is (a route first, then
/// `provider/model` or a bare name); a 404 `model_not_found` otherwise.
pub fn get_model(state: &AppState, id: &str) -> Result<Response> {
    let router = &state.router;
    if router.route(id).is_some() && !router.entries.is_empty() {
        return Ok(axum::Json(model_object(id, ROUTE_OWNER, state.started)).into_response());
    }
    let target = state.providers.resolve(id)?;
    let p = &target.provider;
    if let Err(e) = state.meter.price(&p.id, p.vendor, &target.upstream_model) {
        return Err(Error { kind: ErrorKind::ModelNotFound, ..e });
    }
    Ok(axum::Json(model_object(id, &p.id, state.started)).into_response())
}
