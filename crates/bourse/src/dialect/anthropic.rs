//! The Anthropic Messages dialect (`POST /v1/messages`): request validation, the
//! conversion to and from [`Conversation`], response bodies, usage, error bodies and
//! streams ([`Decoder`], [`Encoder`]).
//!
//! Validation checks the type of every field Bourse depends on, so a client mistake
//! becomes a 400 naming the parameter (with Anthropic's wording, e.g.
//! `max_tokens: Field required`) instead of an opaque upstream error. Fields Bourse does
//! not know, block types it does not know and any `anthropic-version` are let through:
//! they reach an Anthropic upstream untouched, and only [`conversation`] — needed when
//! the upstream speaks another dialect — refuses what it cannot translate.
//!
//! Rendering for an upstream ([`render_request`]) produces what the real API accepts:
//! alternating roles, tool results first in their user turn, no empty text blocks, tool
//! ids matching `^[a-zA-Z0-9_-]+$`, thinking compatible with the sampling parameters, and
//! JSON mode done with a forced tool ([`JSON_TOOL`]).

mod request;
mod stream;

pub use request::{conversation, parse_request, passthrough_body, render_request, DEFAULT_MAX_TOKENS};
pub use stream::{Decoder, Encoder};

use crate::canonical::{Conversation, Part, Reply, ResponseFormat, StopReason, Text, Usage, JSON_TOOL};
use crate::dialect::openai::NotJson;
use crate::error::{Error, Result};
use request::tool_input;
use serde::Serialize;
use serde_json::{json, Value};
use std::borrow::Cow;

// ------------------------------------------------------------------ responses

fn stop_from(reason: Option<&str>, sequence: Option<&str>) -> StopReason {
    match reason {
        Some("max_tokens" | "model_context_window_exceeded") => StopReason::MaxTokens,
        Some("stop_sequence") => StopReason::StopSequence(sequence.map(str::to_string)),
        Some("tool_use") => StopReason::ToolUse,
        Some("refusal") => StopReason::ContentFilter,
        // end_turn, pause_turn, and whatever new reason a vendor invents.
        _ => StopReason::EndTurn,
    }
}

/// `stop_reason` and `stop_sequence` for a stop.
fn stop_fields(stop: &StopReason) -> (&'static str, Option<&str>) {
    match stop {
        StopReason::EndTurn => ("end_turn", None),
        StopReason::MaxTokens => ("max_tokens", None),
        StopReason::StopSequence(seq) => ("stop_sequence", seq.as_deref()),
        StopReason::ToolUse => ("tool_use", None),
        StopReason::ContentFilter => ("refusal", None),
    }
}

/// Anthropic's `stop_reason` for a stop.
pub fn stop_reason(stop: &StopReason) -> &'static str {
    stop_fields(stop).0
}

/// Anthropic response JSON -> Reply. `json_mode`: the request asked for JSON via
/// [`JSON_TOOL`], so a JSON_TOOL tool_use block becomes the answer's text (its input
/// serialized), any other text is dropped (the answer must parse as JSON), and the
/// stop becomes EndTurn. Malformed body -> Err(UpstreamProtocol).
pub fn parse_reply(body: &[u8], json_mode: bool) -> Result<Reply> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Error::protocol(format!("the upstream's Anthropic response is not valid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| Error::protocol("the upstream's Anthropic response is not a JSON object"))?;
    if obj.get("type").and_then(Value::as_str) == Some("error") {
        return Err(stream::reported(&v));
    }
    let content = obj
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::protocol("the upstream's Anthropic response has no content array"))?;
    let mut parts = Vec::new();
    let mut json_answer: Option<usize> = None;
    let mut other_tools = false;
    for (i, block) in content.iter().enumerate() {
        let b = block
            .as_object()
            .ok_or_else(|| Error::protocol(format!("content[{i}] of the response is not an object")))?;
        let field = |k: &str| b.get(k).and_then(Value::as_str);
        let text = |k: &str| field(k).unwrap_or_default().to_string();
        match field("type") {
            Some("text") => parts.push(Part::Text(Text { text: text("text"), cache_control: None })),
            Some("thinking") => {
                parts.push(Part::Thinking { text: text("thinking"), signature: field("signature").map(str::to_string) })
            }
            Some("redacted_thinking") => parts.push(Part::RedactedThinking { data: text("data") }),
            Some("tool_use") => {
                let (Some(id), Some(name)) = (field("id"), field("name")) else {
                    return Err(Error::protocol(format!(
                        "content[{i}] of the response is a tool_use without id or name"
                    )));
                };
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                if json_mode && name == JSON_TOOL && json_answer.is_none() {
                    json_answer = Some(parts.len());
                    parts.push(Part::Text(Text { text: input.to_string(), cache_control: None }));
                } else {
                    other_tools = true;
                    parts.push(Part::ToolCall { id: id.to_string(), name: name.to_string(), arguments: input });
                }
            }
            // Server tool blocks (web search and the like) were handled upstream.
            _ => {}
        }
    }
    let mut stop =
        stop_from(obj.get("stop_reason").and_then(Value::as_str), obj.get("stop_sequence").and_then(Value::as_str));
    if let Some(at) = json_answer {
        let mut i = 0;
        parts.retain(|p| {
            let keep = i == at || !matches!(p, Part::Text(_));
            i += 1;
            keep
        });
        if stop == StopReason::ToolUse && !other_tools {
            stop = StopReason::EndTurn;
        }
    }
    Ok(Reply {
        id: obj.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
        model: obj.get("model").and_then(Value::as_str).unwrap_or_default().to_string(),
        parts,
        stop,
        usage: obj.get("usage").filter(|u| u.is_object()).map(usage_from),
    })
}

/// Usage as Anthropic reports it.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
struct UsageOut {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}

impl From<&Usage> for UsageOut {
    fn from(u: &Usage) -> Self {
        UsageOut {
            input_tokens: u.input_uncached,
            cache_creation_input_tokens: u.input_cache_write,
            cache_read_input_tokens: u.input_cache_read,
            // Anthropic's output count includes thinking.
            output_tokens: u.output_total(),
        }
    }
}

/// A content block as Anthropic sends it (in a message, or opening a streamed block).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockOut<'a> {
    Text { text: &'a str },
    Thinking { thinking: &'a str, signature: &'a str },
    RedactedThinking { data: &'a str },
    ToolUse { id: &'a str, name: &'a str, input: Cow<'a, Value> },
}

/// The `message` object (a reply, or the one `message_start` carries).
#[derive(Serialize)]
struct MessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<BlockOut<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'a str>,
    usage: UsageOut,
}

/// Reply -> Anthropic `message` JSON for an Anthropic client.
pub fn render_reply(reply: &Reply) -> Vec<u8> {
    let content = reply
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(BlockOut::Text { text: &t.text }),
            Part::Thinking { text, signature } => {
                Some(BlockOut::Thinking { thinking: text, signature: signature.as_deref().unwrap_or_default() })
            }
            Part::RedactedThinking { data } => Some(BlockOut::RedactedThinking { data }),
            Part::ToolCall { id, name, arguments } => {
                let input =
                    if arguments.is_object() { Cow::Borrowed(arguments) } else { Cow::Owned(tool_input(arguments)) };
                Some(BlockOut::ToolUse { id, name, input })
            }
            Part::Image { .. } | Part::ToolResult { .. } => None,
        })
        .collect();
    let (stop_reason, stop_sequence) = stop_fields(&reply.stop);
    let msg = MessageOut {
        id: &reply.id,
        kind: "message",
        role: "assistant",
        model: &reply.model,
        content,
        stop_reason: Some(stop_reason),
        stop_sequence,
        usage: reply.usage.as_ref().map(UsageOut::from).unwrap_or_default(),
    };
    serde_json::to_vec(&msg).unwrap_or_default()
}

/// The error an upstream sent as a 2xx body (`{"type":"error","error":{…}}`), classified
/// as the status its type implies; None for an answer.
pub fn reported_error(body: &[u8]) -> Option<Error> {
    let v: Value = serde_json::from_slice(body).ok()?;
    (v.get("type").and_then(Value::as_str) == Some("error")).then(|| stream::reported(&v))
}

/// Usage from an Anthropic response body (for pass-through metering): `Ok(None)` if the
/// body is JSON without a usage object, `Err(NotJson)` if it is not JSON.
pub fn response_usage(body: &[u8]) -> Result<Option<Usage>, NotJson> {
    let v: Value = serde_json::from_slice(body).map_err(|_| NotJson)?;
    Ok(v.get("usage").filter(|u| u.is_object()).map(usage_from))
}

/// Anthropic usage object -> canonical Usage. Anthropic's `input_tokens` excludes cache
/// reads and writes (reported apart), so the three map one-to-one onto the disjoint
/// canonical counts; `output_tokens` includes thinking, which Anthropic does not count
/// separately, so `output_reasoning` stays 0.
pub fn usage_from(v: &Value) -> Usage {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_uncached: n("input_tokens"),
        input_cache_read: n("cache_read_input_tokens"),
        input_cache_write: n("cache_creation_input_tokens"),
        output: n("output_tokens"),
        output_reasoning: 0,
    }
}

// ------------------------------------------------------------------ count_tokens

/// Framing tokens per message (role and separators), an estimate.
const PER_MESSAGE_OVERHEAD: u64 = 4;
/// About what an image costs at the size Anthropic scales images to (~1.15 megapixels,
/// `width * height / 750`); the real cost depends on the dimensions, not known here.
const IMAGE_TOKENS: u64 = 1600;
/// Anthropic adds a system prompt of about this many tokens when tools are present.
const TOOL_USE_PROMPT_TOKENS: u64 = 340;

fn part_text(part: &Part, text: &mut String, images: &mut u64) {
    match part {
        Part::Text(t) => text.push_str(&t.text),
        Part::Image { .. } => *images += 1,
        Part::ToolCall { name, arguments, .. } => {
            text.push_str(name);
            text.push_str(&arguments.to_string());
        }
        Part::ToolResult { content, .. } => content.iter().for_each(|p| part_text(p, text, images)),
        // Thinking from earlier turns is dropped from the context by Anthropic.
        Part::Thinking { .. } | Part::RedactedThinking { .. } => {}
    }
    text.push('\n');
}

/// Estimated input tokens of a request, for `POST /v1/messages/count_tokens`. This is an
/// ESTIMATE, not Anthropic's count: `count` (the gateway's BPE tokenizer, or its byte
/// heuristic when that is busy) over the system text, message text, tool_use inputs, tool
/// results and tool definitions (as JSON, including a JSON-mode schema), plus a
/// per-message overhead, a flat allowance per image, and the tool-use system prompt
/// Anthropic adds when tools are present.
pub fn count_tokens(conv: &Conversation, count: impl FnOnce(&str) -> u64) -> u64 {
    let mut text = String::new();
    let mut images = 0;
    for s in &conv.system {
        text.push_str(&s.text);
        text.push('\n');
    }
    for m in &conv.messages {
        m.parts.iter().for_each(|p| part_text(p, &mut text, &mut images));
    }
    for t in &conv.tools {
        text.push_str(&json!({"name": t.name, "description": t.description, "input_schema": t.parameters}).to_string());
    }
    match &conv.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => text.push_str(r#"{"type":"object"}"#),
        ResponseFormat::JsonSchema { schema, .. } => text.push_str(&schema.to_string()),
    }
    let tools_prompt =
        if conv.tools.is_empty() && !conv.response_format.is_json() { 0 } else { TOOL_USE_PROMPT_TOKENS };
    count(&text) + conv.messages.len() as u64 * PER_MESSAGE_OVERHEAD + images * IMAGE_TOKENS + tools_prompt
}

#[cfg(test)]
mod tests;
