//! `POST /v1/bourse/quote`: what a chat request would cost on each feasible model, and why
//! the others were excluded — without calling any upstream.

use super::read_json_body;
use crate::dialect::openai::parse_chat_request;
use crate::error::Result;
use crate::route::Overrides;
use crate::state::SharedState;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use std::time::Instant;

pub async fn quote(state: SharedState, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let body = read_json_body(&headers, body, &state).await?;
    let req = parse_chat_request(&body)?;
    let overrides = Overrides::from_headers(&headers)?;
    let router = &state.router;
    // A request that names a model rather than a route is quoted on `auto`.
    let route = match router.route_for(&req.model, &overrides)? {
        Some(r) => r,
        None => router.route("auto").ok_or_else(|| crate::error::Error::invalid("model", "no route named auto"))?,
    };
    let routed = router.plan(route, &overrides, &req, Instant::now())?;
    Ok(axum::Json(router.quote_json(&routed)).into_response())
}
