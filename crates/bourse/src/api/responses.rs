//! The OpenAI Responses API surface: `POST /v1/responses`, as the official OpenAI SDKs
//! (`client.responses.create`, `.stream`, `.parse`) and Responses-speaking agents send it,
//! and `GET /v1/responses/{id}` (`client.responses.retrieve`) for a stored response.
//!
//! A request is read into the canonical conversation ([`crate::dialect::responses`]), with
//! the items of the stored response it continues (`previous_response_id`) first, and sent
//! through the exchange as the equivalent Chat Completions request: routing (route names,
//! bare models, `provider/model`), fallbacks, limits, metering and the ledger are the chat
//! path's, row for row. The exchange's answer (a `chat.completion`, or its stream of chunks)
//! is then written as a Response object or as the Responses event stream. Errors before the
//! answer are the exchange's, in OpenAI's error shape (the Responses API's too).
//!
//! A stream always ends with `response.completed`, `response.incomplete` or
//! `response.failed`, whatever the upstream does: a chunk stream that breaks, reports an
//! error or ends before its finish becomes `response.failed`. The exchange's stream is read
//! to its very end even after that event, so its metering runs as for any chat stream.
//!
//! Stored responses: with `store` (true unless the client says false) and a ledger, the
//! finished response and every input item of its conversation are written to the ledger's
//! store ([`crate::ledger::StoredResponse`]) before the answer (or a stream's last event)
//! goes out, so a follow-up can name it at once. They are scoped to the gateway key that
//! made them and kept for `[responses] store_ttl`. An unknown, expired or other key's id is
//! a 404 (`previous_response_not_found`). A failed response is not stored; with the ledger
//! off nothing is, and the response says `store: false`. This is the one place Bourse keeps
//! prompt and answer text, because the client asked it to.

use super::read_json_body;
use crate::canonical::{Delta, Part, Reply};
use crate::dialect::openai as wire;
use crate::dialect::responses::{self, render_response, Encoder, Head};
use crate::dialect::{Decode, Encode};
use crate::error::{Error, ErrorKind, ErrorLabel, Result};
use crate::exchange;
use crate::ledger::{Ledger, StoredResponse};
use crate::route::Overrides;
use crate::sse;
use crate::state::{Caller, SharedState};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::stream::Stream;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// `POST /v1/responses`.
pub async fn create(state: SharedState, caller: Caller, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let body = read_json_body(&parts.headers, body, &state).await?;
    let rr = responses::parse_request(&body)?;
    let overrides = Overrides::from_headers(&parts.headers)?;
    let key_id = caller.key_id.as_deref().unwrap_or("").to_string();
    let history = match &rr.previous_response_id {
        None => Vec::new(),
        Some(id) => match previous(&state, id, &key_id).await? {
            Some(items) => items,
            None => {
                let message = format!("Previous response with id '{id}' not found.");
                return Ok(not_found(message, Some(("previous_response_id", "previous_response_not_found"))));
            }
        },
    };
    let input = rr.input_items();
    let conv = rr.conversation(&history, &input)?;
    // Where the finished response goes, with the conversation's items serialized now.
    let keep = match (&state.reports, rr.store) {
        (Some(ledger), true) => Some(Keep {
            ledger: ledger.clone(),
            key_id,
            input: serde_json::to_string(&history.iter().chain(&input).collect::<Vec<_>>()).unwrap_or_default(),
            ttl: state.responses.store_ttl,
        }),
        _ => None,
    };
    drop(history);
    let head = Head::new(&rr, keep.is_some());
    let chat = Bytes::from(wire::render_request(&conv, &rr.model, rr.stream));
    drop(conv);
    let chat = wire::parse_chat_request(&chat)?;
    let resp = exchange::chat(&state, &caller, chat, &overrides, &parts.headers).await;
    if !resp.status().is_success() {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let is_sse =
        parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if is_sse {
        let relay = Relay::new(body, head, keep);
        return Ok(Response::from_parts(parts, Body::from_stream(relay)));
    }
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("the answer could not be read: {e}")))?;
    // The exchange's answer to an OpenAI chat request is a chat completion it has checked.
    let reply = wire::parse_reply(&bytes)?;
    let (out, response) = if rr.stream {
        // A stream was asked for but the upstream answered whole: its events all at once.
        parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        let mut enc = Encoder::new(head);
        let mut out = BytesMut::new();
        for d in deltas(reply) {
            enc.delta(&d, &mut out);
        }
        enc.finish(&mut out);
        (out.freeze(), enc.response().cloned().unwrap_or(Value::Null))
    } else {
        let response = render_response(&head, &reply);
        (Bytes::from(serde_json::to_vec(&response).unwrap_or_default()), response)
    };
    if let Some(keep) = keep {
        keep.store(&response).await;
    }
    Ok(Response::from_parts(parts, Body::from(out)))
}

/// `GET /v1/responses/{id}`: a stored response, to the key that made it (404 otherwise, as
/// for an unknown or expired id).
pub async fn retrieve(state: &SharedState, caller: &Caller, id: &str) -> Result<Response> {
    let key_id = caller.key_id.as_deref().unwrap_or("");
    let stored = match &state.reports {
        None => None,
        Some(ledger) => ledger.get_response(id, key_id, crate::timespec::now_ms()).await.map_err(|e| {
            tracing::warn!("responses: a stored response could not be read: {e}");
            Error::new(ErrorKind::Unavailable, "the stored response could not be read; try again")
        })?,
    };
    let Some(stored) = stored else {
        return Ok(not_found(format!("Response with id '{id}' not found."), None));
    };
    let mut resp = Response::new(Body::from(stored.response));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// The items a stored response continues with: its conversation's input, then its output.
/// `None` when there is no such response for this key (unknown, expired, another key's).
async fn previous(state: &SharedState, id: &str, key_id: &str) -> Result<Option<Vec<Value>>> {
    let Some(ledger) = &state.reports else { return Ok(None) };
    let stored = ledger.get_response(id, key_id, crate::timespec::now_ms()).await.map_err(|e| {
        tracing::warn!("responses: a stored response could not be read: {e}");
        Error::new(ErrorKind::Unavailable, "the stored response could not be read; try again")
    })?;
    let Some(stored) = stored else { return Ok(None) };
    let corrupt = || Error::new(ErrorKind::Internal, format!("the stored response '{id}' cannot be read"));
    let mut items: Vec<Value> = serde_json::from_str(&stored.input).map_err(|_| corrupt())?;
    let response: Value = serde_json::from_str(&stored.response).map_err(|_| corrupt())?;
    items.extend(response.get("output").and_then(Value::as_array).into_iter().flatten().cloned());
    Ok(Some(items))
}

/// OpenAI's 404 for a response it does not hold (unknown, expired, another key's), with the
/// parameter and code that named it, if one did.
fn not_found(message: String, param_code: Option<(&str, &str)>) -> Response {
    let (param, code) = param_code.unzip();
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}});
    let mut resp = (StatusCode::NOT_FOUND, serde_json::to_vec(&body).unwrap_or_default()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.extensions_mut().insert(ErrorLabel("not_found"));
    resp
}

/// A complete reply as the deltas a stream of it would have given.
fn deltas(reply: Reply) -> Vec<Delta> {
    let mut out = vec![Delta::Start { id: reply.id, model: reply.model, usage: None }];
    let mut calls = 0;
    for p in reply.parts {
        match p {
            Part::Text(t) => out.push(Delta::Text(t.text)),
            Part::Thinking { text, .. } => out.push(Delta::Thinking(text)),
            Part::ToolCall { id, name, arguments } => {
                out.push(Delta::ToolCallStart { index: calls, id, name });
                let json = match arguments {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.push(Delta::ToolCallArgs { index: calls, json });
                calls += 1;
            }
            Part::RedactedThinking { .. } | Part::Image { .. } | Part::ToolResult { .. } => {}
        }
    }
    out.push(Delta::Stop(reply.stop));
    out.extend(reply.usage.map(Delta::Usage));
    out
}

/// Where a finished response is stored.
struct Keep {
    ledger: Ledger,
    key_id: String,
    /// Every input item of the conversation (a JSON array).
    input: String,
    ttl: Duration,
}

impl Keep {
    /// The row for `response`; None for a response that failed (nothing to continue from).
    fn row(self, response: &Value) -> Option<(Ledger, StoredResponse, i64)> {
        if response.get("status").and_then(Value::as_str) == Some("failed") {
            return None;
        }
        let id = response.get("id").and_then(Value::as_str)?.to_string();
        let now = crate::timespec::now_ms();
        let ttl = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let row = StoredResponse {
            id,
            key_id: self.key_id,
            created_ms: now,
            expires_ms: now.saturating_add(ttl),
            input: self.input,
            response: response.to_string(),
        };
        Some((self.ledger, row, now))
    }

    /// Store it; a failure is logged (the answer still goes out; a follow-up then gets 404).
    async fn store(self, response: &Value) {
        if let Some((ledger, row, now)) = self.row(response) {
            put(ledger, row, now).await;
        }
    }
}

async fn put(ledger: Ledger, row: StoredResponse, now: i64) {
    if let Err(e) = ledger.put_response(row, now).await {
        tracing::warn!("responses: a response could not be stored: {e}");
    }
}

/// The exchange's chat-chunk stream → the Responses event stream.
struct Relay {
    inner: axum::body::BodyDataStream,
    parser: sse::Parser,
    decoder: wire::Decoder,
    encoder: Encoder,
    items: Vec<sse::Item>,
    deltas: Vec<Delta>,
    keep: Option<Keep>,
    /// The bytes that end with the terminal event, held until its response is stored (a task
    /// of its own: a client that leaves does not cancel the write).
    held: Option<(BytesMut, tokio::task::JoinHandle<()>)>,
    inner_done: bool,
}

impl Relay {
    fn new(body: Body, head: Head, keep: Option<Keep>) -> Relay {
        Relay {
            inner: body.into_data_stream(),
            parser: sse::Parser::new(),
            decoder: wire::Decoder::new(),
            encoder: Encoder::new(head),
            items: Vec::new(),
            deltas: Vec::new(),
            keep,
            held: None,
            inner_done: false,
        }
    }

    /// Translate the parsed items into `out`; comments (keep-alives, the cost comment) pass.
    fn translate(&mut self, out: &mut BytesMut) {
        for item in self.items.drain(..) {
            let ev = match item {
                sse::Item::Comment(_) => {
                    sse::write_item(&item, out);
                    continue;
                }
                sse::Item::Event(ev) => ev,
            };
            if self.encoder.ended() {
                continue;
            }
            match self.decoder.event(&ev, &mut self.deltas) {
                Ok(()) => {
                    for d in self.deltas.drain(..) {
                        self.encoder.delta(&d, out);
                    }
                    if ev.data.trim() == "[DONE]" {
                        self.decoder.finish(&mut self.deltas);
                        for d in self.deltas.drain(..) {
                            self.encoder.delta(&d, out);
                        }
                        self.encoder.finish(out);
                    }
                }
                Err(e) => self.encoder.error(&e, out),
            }
        }
    }

    /// The chunk stream is over: end the response if it has not ended.
    fn end(&mut self, out: &mut BytesMut) {
        if self.encoder.ended() {
            return;
        }
        self.decoder.finish(&mut self.deltas);
        for d in self.deltas.drain(..) {
            self.encoder.delta(&d, out);
        }
        if self.decoder.complete() {
            self.encoder.finish(out);
        } else {
            self.encoder.error(&Error::protocol("the answer's stream ended before the answer was complete"), out);
        }
    }
}

impl Stream for Relay {
    type Item = std::result::Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some((_, task)) = &mut this.held {
                // Stored or not (a failure was logged), the last event goes out now.
                let _ = std::task::ready!(Pin::new(task).poll(cx));
                let out = this.held.take().map(|(out, _)| out).unwrap_or_default();
                return Poll::Ready(Some(Ok(out.freeze())));
            }
            if this.inner_done {
                return Poll::Ready(None);
            }
            let was_ended = this.encoder.ended();
            let mut out = BytesMut::new();
            match std::task::ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(chunk)) => {
                    this.parser.feed(&chunk, &mut this.items);
                    this.translate(&mut out);
                }
                Some(Err(e)) => {
                    this.inner_done = true;
                    this.translate(&mut out);
                    if !this.encoder.ended() {
                        this.encoder.error(&Error::protocol(format!("the answer's stream broke: {e}")), &mut out);
                    }
                }
                None => {
                    this.inner_done = true;
                    this.parser.finish(&mut this.items);
                    this.translate(&mut out);
                    this.end(&mut out);
                }
            }
            if !was_ended && this.encoder.ended() {
                let row = match (this.keep.take(), this.encoder.response()) {
                    (Some(keep), Some(r)) => keep.row(r),
                    _ => None,
                };
                if let Some((ledger, row, now)) = row {
                    this.held = Some((out, tokio::spawn(put(ledger, row, now))));
                    continue;
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(out.freeze())));
            }
        }
    }
}
