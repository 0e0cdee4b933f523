//! The OpenAI Responses API (`POST /v1/responses`) as a client dialect: its request read into
//! the canonical [`Conversation`], and answers written as Response objects and as its
//! stream of typed events.
//!
//! The surface rides the exchange as a Chat Completions request: the handler
//! (`api/responses.rs`) renders the conversation as an OpenAI chat body, so routing,
//! fallbacks, limits, metering and the ledger treat it exactly as the equivalent chat request
//! (same rows, same cost), and every upstream dialect works. This module only translates at
//! the edge:
//! - [`request`]: input items (messages, `function_call`, `function_call_output`,
//!   `reasoning`), `instructions`, function tools, `text.format`, `reasoning.effort`,
//!   sampling and output limits → [`Conversation`]. Items a previous stored response holds
//!   come first (`previous_response_id`); its `instructions` are not carried over, as with
//!   OpenAI.
//! - [`reply`]: a canonical [`Reply`](crate::canonical::Reply) → a Response object (output
//!   items, usage, status).
//! - [`stream`]: canonical deltas → the official event sequence (`response.created`,
//!   `response.in_progress`, item and part events, then exactly one of
//!   `response.completed`, `response.incomplete` or `response.failed`), every event with
//!   its `sequence_number`, no `[DONE]`.
//!
//! Decisions worth knowing:
//! - Reasoning the upstream shows (DeepSeek's `reasoning_content`, Anthropic's thinking,
//!   Gemini's thoughts) is a `reasoning` item with the text as `content`
//!   (`reasoning_text`), not `summary`: it is the model's reasoning, not a summary of it.
//!   A reasoning item sent back as input becomes thinking again (text only: thinking
//!   signatures do not survive the chat carrier, so Anthropic tool loops with thinking on
//!   need `store` off and the full input instead — the Anthropic surface keeps them).
//! - Tools other than `function` (web search, file search, computer use, MCP, ...), input
//!   files, `item_reference`, `background`, `conversation` and `prompt` are refused with a
//!   400 naming the parameter: the gateway has nothing to run them with.
//! - Ignored (no effect on the answer Bourse can give): `include`, `truncation`,
//!   `service_tier`, `prompt_cache_key`, `safety_identifier` (sent as the end-user id),
//!   `stream_options`, `top_logprobs`, `max_tool_calls`, `text.verbosity`.

mod reply;
mod request;
mod stream;

pub use reply::{render_response, usage_json};
pub use request::{parse_request, ResponsesRequest};
pub use stream::Encoder;

use crate::canonical::StopReason;
use crate::dialect::synthetic_id;
use serde_json::{json, Map, Value};

/// A new response id (`resp_…`), as OpenAI's look.
pub fn response_id() -> String {
    synthetic_id("resp_")
}

/// What every Response object of one request repeats: its id, creation time, and the
/// request's settings as the client sent them (tools, `text`, `reasoning`, ...).
#[derive(Debug, Clone)]
pub struct Head {
    pub id: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The model as the client named it, until the upstream names the one that answered.
    pub model: String,
    /// Whether the response is kept for `previous_response_id`.
    pub store: bool,
    /// The echoed request fields, in the Response object's names.
    echo: Map<String, Value>,
}

impl Head {
    /// The response's head from its request. `store` is whether it will really be kept
    /// (false when the ledger is off, whatever the client asked).
    pub fn new(req: &ResponsesRequest, store: bool) -> Head {
        Head {
            id: response_id(),
            created_at: crate::timespec::now_secs(),
            model: req.model.clone(),
            store,
            echo: req.echo(),
        }
    }

    /// The Response object with this status, output and usage (`None`: not known yet).
    pub fn response(&self, status: Status, output: Vec<Value>, usage: Option<Value>) -> Value {
        let mut r = Map::new();
        r.insert("id".into(), self.id.clone().into());
        r.insert("object".into(), "response".into());
        r.insert("created_at".into(), self.created_at.into());
        r.insert("status".into(), status.name().into());
        r.insert("model".into(), self.model.clone().into());
        r.insert("output".into(), Value::Array(output));
        r.insert("usage".into(), usage.unwrap_or(Value::Null));
        r.insert("error".into(), Value::Null);
        r.insert("incomplete_details".into(), Value::Null);
        match &status {
            Status::Completed => {
                r.insert("completed_at".into(), crate::timespec::now_secs().into());
            }
            Status::Incomplete(reason) => {
                r.insert("incomplete_details".into(), json!({"reason": reason}));
            }
            Status::Failed { code, message } => {
                r.insert("error".into(), json!({"code": code, "message": message}));
            }
            Status::InProgress => {}
        }
        r.insert("store".into(), self.store.into());
        r.insert("background".into(), false.into());
        for (k, v) in &self.echo {
            r.insert(k.clone(), v.clone());
        }
        Value::Object(r)
    }
}

/// A response's status, with what the terminal ones carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Completed,
    /// `max_output_tokens` or `content_filter`.
    Incomplete(&'static str),
    /// `code` is one of the SDK's `ResponseError` codes (`server_error`, `rate_limit_exceeded`).
    Failed {
        code: &'static str,
        message: String,
    },
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete(_) => "incomplete",
            Status::Failed { .. } => "failed",
        }
    }

    /// How an answer that stopped for `stop` ends.
    pub fn of_stop(stop: Option<&StopReason>) -> Status {
        match stop {
            Some(StopReason::MaxTokens) => Status::Incomplete("max_output_tokens"),
            Some(StopReason::ContentFilter) => Status::Incomplete("content_filter"),
            Some(StopReason::EndTurn | StopReason::StopSequence(_) | StopReason::ToolUse) | None => Status::Completed,
        }
    }

    /// The status output items are given in a response that ended this way.
    fn item_status(&self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::InProgress => "in_progress",
            Status::Incomplete(_) | Status::Failed { .. } => "incomplete",
        }
    }
}

/// A response's error from a gateway error: OpenAI's `ResponseError` codes are few, so a
/// rate limit is `rate_limit_exceeded` and everything else `server_error`.
pub fn failed(e: &crate::error::Error) -> Status {
    let code = match e.status().as_u16() {
        429 => "rate_limit_exceeded",
        _ => "server_error",
    };
    Status::Failed { code, message: e.message.clone() }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [output_text(text)],
    })
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn reasoning_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "reasoning",
        "status": status,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    })
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    })
}

#[cfg(test)]
mod tests;
