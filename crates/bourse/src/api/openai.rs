//! The OpenAI-compatible surface: `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`.

use crate::dialect::openai::{self as wire, parse_chat_request, parse_embeddings_request};
use crate::error::{Error, ErrorKind, Result};
use crate::relay::StreamRelay;
use crate::route::Target;
use crate::server::SharedState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Value};

pub static X_BOURSE_PROVIDER: HeaderName = HeaderName::from_static("x-bourse-provider");
pub static X_BOURSE_MODEL: HeaderName = HeaderName::from_static("x-bourse-model");

/// Check the content type and read the body, refusing anything over the limit with a 413
/// before it is buffered.
pub async fn read_json_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        let shown = if ct.is_empty() { "none".to_string() } else { format!("'{ct}'") };
        return Err(Error::new(
            ErrorKind::UnsupportedMediaType,
            format!("the request body must be JSON with 'content-type: application/json' (got {shown})"),
        ));
    }
    let too_large = || {
        Error::new(ErrorKind::PayloadTooLarge, format!("the request body is larger than the limit of {limit} bytes"))
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(Error::new(ErrorKind::InvalidRequest, format!("could not read the request body: {e}"))),
    }
}

fn provenance(resp: &mut Response, target: &Target) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&target.provider.id) {
        h.insert(X_BOURSE_PROVIDER.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&target.upstream_model) {
        h.insert(X_BOURSE_MODEL.clone(), v);
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

async fn read_upstream_body(target: &Target, resp: reqwest::Response) -> Result<(StatusCode, Bytes)> {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::OK);
    let bytes = resp.bytes().await.map_err(|e| target.provider.transport_error(&e))?;
    // DeepSeek holds queued non-streaming requests open with blank lines: they are not
    // part of the JSON, so trim them rather than relay a body that starts with newlines.
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    Ok((status, bytes.slice(start..)))
}

fn require_json(target: &Target, body: &Bytes) -> Result<()> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        return Err(Error::new(
            ErrorKind::UpstreamProtocol,
            format!("provider {} returned a body that is not valid JSON", target.provider.id),
        ));
    }
    Ok(())
}

pub async fn chat_completions(State(state): State<SharedState>, headers: HeaderMap, body: Body) -> Result<Response> {
    let body = read_json_body(&headers, body, state.max_body_bytes).await?;
    let mut req = parse_chat_request(&body)?;
    let target = state.providers.resolve(&req.model)?;
    let upstream_body = wire::upstream_chat_body(&mut req, &target.upstream_model);
    let resp = target.provider.post_json("/chat/completions", upstream_body).await?;
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if req.stream && is_sse {
        let relay = StreamRelay::new(resp, target.provider.clone(), req.include_usage, None);
        let mut out = Response::new(Body::from_stream(relay));
        let h = out.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        provenance(&mut out, &target);
        return Ok(out);
    }
    let (status, bytes) = read_upstream_body(&target, resp).await?;
    require_json(&target, &bytes)?;
    let bytes = if target.provider.quirks.think_tags_in_content { wire::split_think_tags(bytes) } else { bytes };
    let mut out = json_response(status, bytes);
    provenance(&mut out, &target);
    Ok(out)
}

pub async fn embeddings(State(state): State<SharedState>, headers: HeaderMap, body: Body) -> Result<Response> {
    let body = read_json_body(&headers, body, state.max_body_bytes).await?;
    let mut req = parse_embeddings_request(&body)?;
    let target = state.providers.resolve(&req.model)?;
    let upstream_body = wire::upstream_embeddings_body(&mut req, &target.upstream_model);
    let resp = target.provider.post_json("/embeddings", upstream_body).await?;
    let (status, bytes) = read_upstream_body(&target, resp).await?;
    require_json(&target, &bytes)?;
    let mut out = json_response(status, bytes);
    provenance(&mut out, &target);
    Ok(out)
}

fn model_object(id: &str, owner: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owner})
}

/// Every `provider/model` the gateway can reach by name.
fn reachable(state: &SharedState) -> Vec<Value> {
    state
        .providers
        .iter()
        .flat_map(|p| p.models.iter().map(move |m| model_object(&format!("{}/{m}", p.id), &p.id, state.started)))
        .collect()
}

pub async fn list_models(State(state): State<SharedState>) -> Response {
    axum::Json(json!({"object": "list", "data": reachable(&state)})).into_response()
}

pub async fn get_model(State(state): State<SharedState>, Path(id): Path<String>) -> Result<Response> {
    // Only what the gateway lists is retrievable, so list and retrieve agree.
    let target = state.providers.resolve(&id)?;
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
