//! Complete (non-streaming) OpenAI replies: [`parse_reply`] reads an upstream's
//! `chat.completion` into a [`Reply`], and [`render_reply`] writes a [`Reply`] for an OpenAI
//! client. The finish-reason, usage and error helpers here are shared with the streams.

use super::request::{assistant_message, parse_arguments, synth_call_id};
use super::WireUsage;
use crate::canonical::{Part, Reply, StopReason, Text, Usage};
use crate::dialect::synthetic_id;
use crate::error::{Error, ErrorKind, Result, UpstreamStatus};
use serde::Deserialize;
use serde_json::{json, Map, Value};

// ------------------------------------------------------------------ helpers

pub(super) fn synth_completion_id() -> String {
    synthetic_id("chatcmpl-")
}

/// An error the upstream reported inside a 200 body or stream (`{"error":{…}}`). The
/// vendor's `code`, when it is an HTTP error status, becomes the status; otherwise 500.
pub(super) fn upstream_reported(data: &[u8]) -> Error {
    let v = crate::vendor::parse(crate::canonical::Dialect::OpenAi, data);
    let status =
        v.code.as_deref().and_then(|c| c.parse::<u16>().ok()).filter(|s| (400..=599).contains(s)).unwrap_or(500);
    let message = v.message.clone().unwrap_or_else(|| "the upstream reported an error".to_string());
    Error::new(
        ErrorKind::UpstreamStatus(Box::new(UpstreamStatus {
            status,
            vendor_type: v.kind,
            vendor_code: v.code,
            exhausted: false,
            retryable: status == 429 || status >= 500,
        })),
        message,
    )
}

pub(super) fn map_finish_reason(reason: &str, called_tools: bool) -> StopReason {
    match reason {
        "length" | "max_tokens" => StopReason::MaxTokens,
        "tool_calls" | "function_call" | "tool_use" => StopReason::ToolUse,
        "content_filter" | "sensitive" | "safety" | "refusal" => StopReason::ContentFilter,
        _ if called_tools => StopReason::ToolUse,
        _ => StopReason::EndTurn,
    }
}

/// OpenAI's `finish_reason` for a stop.
pub fn finish_reason(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::EndTurn | StopReason::StopSequence(_) => "stop",
        StopReason::MaxTokens => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::ContentFilter => "content_filter",
    }
}

/// The `usage` object OpenAI sends (and the official SDKs type), from canonical usage.
/// Cache writes are counted as ordinary prompt tokens: OpenAI has no field for them.
pub(super) fn usage_json(u: &Usage) -> Value {
    let prompt = u.input_total();
    let completion = u.output_total();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens_details": {"cached_tokens": u.input_cache_read, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": u.output_reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

/// Usage from a `usage` value; an odd shape is ignored (metering then estimates).
pub(super) fn parse_usage(v: Value) -> Option<Usage> {
    serde_json::from_value::<WireUsage>(v).ok().map(|w| w.normalize())
}

// ------------------------------------------------------------------ replies

#[derive(Deserialize)]
struct WireReply {
    id: Option<String>,
    model: Option<String>,
    choices: Option<Vec<WireChoice>>,
    usage: Option<Value>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    index: Option<u32>,
    message: Option<WireMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    /// A string; some vendors (Mistral) send an array of parts.
    content: Option<Value>,
    reasoning_content: Option<String>,
    /// OpenRouter and newer vLLM name it this way.
    reasoning: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
    function_call: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: Option<String>,
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    name: Option<String>,
    arguments: Option<Value>,
}

fn message_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str).is_none_or(|t| t == "text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// A `chat.completion` body → [`Reply`]. Unparseable bodies are an
/// [`ErrorKind::UpstreamProtocol`] error; an `{"error":…}` body is the upstream's error.
pub fn parse_reply(body: &[u8]) -> Result<Reply> {
    let wire: WireReply = serde_json::from_slice(body)
        .map_err(|e| Error::protocol(format!("the upstream's chat completion could not be parsed: {e}")))?;
    if wire.error.as_ref().is_some_and(|e| !e.is_null()) && wire.choices.is_none() {
        return Err(upstream_reported(body));
    }
    let choice = wire
        .choices
        .and_then(|cs| cs.into_iter().find(|c| c.index.unwrap_or(0) == 0))
        .ok_or_else(|| Error::protocol("the upstream's chat completion has no choices"))?;
    let msg = choice.message.ok_or_else(|| Error::protocol("the upstream's chat completion has no message"))?;
    let mut parts = Vec::new();
    if let Some(r) = msg.reasoning_content.or(msg.reasoning).filter(|s| !s.is_empty()) {
        parts.push(Part::Thinking { text: r, signature: None });
    }
    let text = message_text(msg.content.as_ref());
    if !text.is_empty() {
        parts.push(Part::Text(Text { text, cache_control: None }));
    } else if let Some(r) = msg.refusal.filter(|s| !s.is_empty()) {
        parts.push(Part::Text(Text { text: r, cache_control: None }));
    }
    let functions = msg
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.id, c.function))
        .chain(msg.function_call.map(|f| (None, Some(f))));
    for (id, function) in functions {
        let Some(f) = function else { continue };
        parts.push(Part::ToolCall {
            id: id.filter(|s| !s.is_empty()).unwrap_or_else(synth_call_id),
            name: f.name.unwrap_or_default(),
            arguments: parse_arguments(f.arguments.as_ref()),
        });
    }
    let called = parts.iter().any(|p| matches!(p, Part::ToolCall { .. }));
    Ok(Reply {
        id: wire.id.filter(|s| !s.is_empty()).unwrap_or_else(synth_completion_id),
        model: wire.model.unwrap_or_default(),
        parts,
        stop: map_finish_reason(choice.finish_reason.as_deref().unwrap_or(""), called),
        usage: wire.usage.and_then(parse_usage),
    })
}

/// [`Reply`] → `chat.completion` JSON for an OpenAI client, in the shape the official
/// SDKs type. Text parts are concatenated as a stream would deliver them; thinking goes
/// to `reasoning_content` (the DeepSeek convention); signatures and redacted thinking
/// cannot be represented and are dropped. `usage` is omitted when unknown.
pub fn render_reply(reply: &Reply) -> Vec<u8> {
    let mut message = assistant_message(&reply.parts).unwrap_or_else(|| {
        let mut m = Map::new();
        m.insert("role".into(), "assistant".into());
        m.insert("content".into(), Value::String(String::new()));
        m
    });
    message.insert("refusal".into(), Value::Null);
    let mut out = json!({
        "id": reply.id,
        "object": "chat.completion",
        "created": crate::timespec::now_secs(),
        "model": reply.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(&reply.stop),
        }],
    });
    if let (Some(u), Some(obj)) = (&reply.usage, out.as_object_mut()) {
        obj.insert("usage".into(), usage_json(u));
    }
    serde_json::to_vec(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests;
