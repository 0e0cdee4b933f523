//! The Anthropic-compatible surface: `POST /v1/messages` and
//! `POST /v1/messages/count_tokens`, as the official Anthropic SDKs and Claude-built tools
//! (coding agents reading `ANTHROPIC_BASE_URL`) speak them.
//!
//! Any `anthropic-version` is accepted (new SDKs send new dates; the wire is stable). The
//! gateway key may come as `x-api-key` (what Anthropic SDKs send) or as a bearer token.
//! Errors use Anthropic's shape, `{"type":"error","error":{"type","message"}}`.

use super::read_json_body;
use crate::dialect::anthropic;
use crate::error::{AnthropicError, Error};
use crate::exchange;
use crate::meter::estimate;
use crate::route::Overrides;
use crate::state::{Caller, SharedState};
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub async fn messages(state: SharedState, caller: Caller, req: Request) -> Result<Response, AnthropicError> {
    let (parts, body) = req.into_parts();
    let body = read_json_body(&parts.headers, body, &state).await?;
    let req = anthropic::parse_request(&body)?;
    let overrides = Overrides::from_headers(&parts.headers)?;
    Ok(exchange::chat(&state, &caller, req, &overrides, &parts.headers).await)
}

static X_BOURSE_ESTIMATE: HeaderName = HeaderName::from_static("x-bourse-estimate");

/// An estimate of the prompt's input tokens, counted locally with a BPE tokenizer
/// (o200k_base): close for most models, not the upstream's exact count, and free — no
/// upstream is called. `max_tokens` is not required here, as with Anthropic's endpoint.
pub async fn count_tokens(state: SharedState, req: Request) -> Result<Response, AnthropicError> {
    let (parts, body) = req.into_parts();
    let body = read_json_body(&parts.headers, body, &state).await?;
    let mut value: Value = serde_json::from_slice(&body).map_err(|e| {
        Error::new(crate::error::ErrorKind::InvalidJson, format!("the request body is not valid JSON: {e}"))
    })?;
    if let Some(obj) = value.as_object_mut() {
        obj.entry("max_tokens").or_insert(json!(1));
    }
    let req = anthropic::parse_request(&serde_json::to_vec(&value).unwrap_or_default())?;
    // The model must be one the gateway could serve (a route or a reachable model), as
    // with a real request; the count itself does not depend on it.
    if state.router.route_for(&req.model, &Overrides::default())?.is_none() {
        state.providers.resolve(&req.model)?;
    }
    let conv = std::sync::Arc::new(anthropic::conversation(req.body())?);
    let counted = conv.clone();
    let (tokens, how) = state
        .estimator
        .count(
            body.len(),
            move || anthropic::count_tokens(&counted, estimate::tokens),
            || anthropic::count_tokens(&conv, |t| estimate::heuristic(t.as_bytes())),
        )
        .await;
    let mut resp = axum::Json(json!({"input_tokens": tokens})).into_response();
    // How the count was made: the tokenizer, or its byte heuristic when the pool was busy.
    resp.headers_mut().insert(X_BOURSE_ESTIMATE.clone(), HeaderValue::from_static(how.as_str()));
    Ok(resp)
}
