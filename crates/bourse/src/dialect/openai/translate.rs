//! OpenAI Chat Completions ↔ canonical: requests, complete replies and streams.
//!
//! Used only when the two sides speak different dialects (same-dialect OpenAI traffic is
//! passed through elsewhere): an OpenAI client reaching an Anthropic or Gemini upstream
//! ([`conversation`], [`render_reply`], [`Encoder`]), or an Anthropic client reaching an
//! OpenAI-dialect vendor such as DeepSeek ([`render_request`], [`parse_reply`],
//! [`Decoder`]).
//!
//! Decisions worth knowing (each is also noted where it is made):
//! - `system`/`developer` messages go to `Conversation::system` wherever they appear, in
//!   order, even after the first user turn (the other dialects have one system slot).
//! - `tool` messages become tool-result parts of a user turn; consecutive ones share one
//!   turn, and a user message right after them joins that turn after the results.
//! - Tool-call `arguments` strings are parsed; an empty string is `{}`, and invalid JSON is
//!   kept as a JSON string value, which is rendered back verbatim.
//! - Request fields with no translation are dropped: `seed`, `logprobs`, `top_logprobs`,
//!   `logit_bias`, `presence_penalty`, `frequency_penalty`, `store`, `metadata`,
//!   `service_tier`, `modalities`, `audio`, `prediction`, tool `strict`. `n > 1` is refused.
//! - Refusals (`refusal` content parts, `message.refusal`, `delta.refusal`) are text.
//! - Only choice 0 of a stream or reply is read (n > 1 is never requested here).
//! - A stop reason of `stop` on an answer that called tools is reported as tool use (some
//!   OpenAI-compatible servers say `stop` there; the other dialects need `tool_use`).
//! - Towards OpenAI clients, thinking is `reasoning_content` (the DeepSeek convention);
//!   thinking signatures and redacted thinking have no place and are dropped; cache-write
//!   tokens are counted in `prompt_tokens` (OpenAI has no field for them).
//! - Towards OpenAI-dialect upstreams the output limit is `max_tokens` (widely known, unlike
//!   `max_completion_tokens`); `top_k` and tool-result `is_error` are dropped, as are images
//!   inside tool results (a `tool` message holds text only).

use super::WireUsage;
use crate::canonical::{
    Conversation, Delta, ImageSource, Message, Part, Reply, ResponseFormat, Role, StopReason, Text, Thinking, Tool,
    ToolChoice, Usage,
};
use crate::dialect::{synthetic_id, Decode, Encode};
use crate::error::{Error, ErrorKind, Result, UpstreamStatus};
use crate::sse;
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::{json, Map, Value};

// ------------------------------------------------------------------ helpers

fn synth_completion_id() -> String {
    synthetic_id("chatcmpl-")
}

fn synth_call_id() -> String {
    synthetic_id("call_")
}

/// An error the upstream reported inside a 200 body or stream (`{"error":{…}}`). The
/// vendor's `code`, when it is an HTTP error status, becomes the status; otherwise 500.
fn upstream_reported(data: &[u8]) -> Error {
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

/// Parse tool-call arguments as sent on the wire: a JSON string normally (some servers
/// send the object itself). Empty means no arguments; invalid JSON stays a string.
fn parse_arguments(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        Some(other) => other.clone(),
    }
}

/// The wire form of canonical arguments: a string value (unparseable arguments kept as
/// they came) is sent verbatim, anything else serialized.
fn arguments_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn map_finish_reason(reason: &str, called_tools: bool) -> StopReason {
    match reason {
        "length" | "max_tokens" => StopReason::MaxTokens,
        "tool_calls" | "function_call" | "tool_use" => StopReason::ToolUse,
        "content_filter" | "sensitive" | "safety" | "refusal" => StopReason::ContentFilter,
        _ if called_tools => StopReason::ToolUse,
        _ => StopReason::EndTurn,
    }
}

fn finish_reason(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::EndTurn | StopReason::StopSequence(_) => "stop",
        StopReason::MaxTokens => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::ContentFilter => "content_filter",
    }
}

/// The `usage` object OpenAI sends (and the official SDKs type), from canonical usage.
/// Cache writes are counted as ordinary prompt tokens: OpenAI has no field for them.
fn usage_json(u: &Usage) -> Value {
    let prompt = u.input_total();
    let completion = u.output_total();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
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
fn parse_usage(v: Value) -> Option<Usage> {
    serde_json::from_value::<WireUsage>(v).ok().map(|w| w.normalize())
}

fn image_url(source: &ImageSource) -> String {
    match source {
        ImageSource::Url(u) => u.clone(),
        ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
    }
}

// ------------------------------------------------------------------ request → canonical

const NOT_TRANSLATABLE: &str = "cannot be translated to the dialect this model's provider speaks (Anthropic or Gemini)";

/// Which content part types a message of some role may carry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Allowed {
    /// `text` only (system, developer).
    Text,
    /// `text` and `refusal` (assistant).
    TextOrRefusal,
    /// `text` and `image_url` (user, tool).
    TextOrImage,
}

/// The parts of a message's `content`: a string, an array of parts, or null/absent.
fn content_parts(content: Option<&Value>, i: usize, role: &str, allowed: Allowed) -> Result<Vec<Part>> {
    let parts = match content {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => return Ok(vec![Part::Text(Text { text: s.clone(), cache_control: None })]),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(Error::invalid(
                &format!("messages[{i}].content"),
                "'content' must be a string or an array of content parts",
            ))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let param = format!("messages[{i}].content[{j}]");
        let Some(obj) = p.as_object() else {
            return Err(Error::invalid(&param, format!("'{param}' must be an object")));
        };
        let cache_control = obj.get("cache_control").filter(|v| !v.is_null()).cloned();
        let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "text" | "refusal" if kind == "text" || allowed == Allowed::TextOrRefusal => {
                let Some(text) = obj.get(kind).and_then(Value::as_str) else {
                    return Err(Error::invalid(
                        &format!("{param}.{kind}"),
                        format!("a '{kind}' content part needs '{kind}' (a string)"),
                    ));
                };
                out.push(Part::Text(Text { text: text.to_string(), cache_control }));
            }
            "image_url" if allowed == Allowed::TextOrImage => {
                let url = match obj.get("image_url") {
                    Some(Value::Object(o)) => o.get("url").and_then(Value::as_str),
                    Some(Value::String(s)) => Some(s.as_str()),
                    _ => None,
                };
                let Some(url) = url else {
                    return Err(Error::invalid(
                        &format!("{param}.image_url.url"),
                        "an 'image_url' content part needs image_url.url (a string)",
                    ));
                };
                out.push(Part::Image { source: ImageSource::from_url(url), cache_control });
            }
            _ => {
                return Err(Error::invalid(
                    &format!("{param}.type"),
                    format!("content part type '{kind}' {NOT_TRANSLATABLE} in a {role} message"),
                ))
            }
        }
    }
    Ok(out)
}

fn texts(parts: Vec<Part>) -> impl Iterator<Item = Text> {
    parts.into_iter().filter_map(|p| match p {
        Part::Text(t) => Some(t),
        _ => None,
    })
}

fn tool_call_part(call: &Value, param: &str) -> Result<Part> {
    let kind = call.get("type").and_then(Value::as_str).unwrap_or("function");
    if kind != "function" {
        return Err(Error::invalid(
            &format!("{param}.type"),
            format!("tool call type '{kind}' {NOT_TRANSLATABLE}; only function calls can"),
        ));
    }
    let function = call.get("function");
    let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) else {
        return Err(Error::invalid(&format!("{param}.function.name"), "each tool call needs function.name (a string)"));
    };
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(synth_call_id);
    Ok(Part::ToolCall {
        id,
        name: name.to_string(),
        arguments: parse_arguments(function.and_then(|f| f.get("arguments"))),
    })
}

fn default_parameters() -> Value {
    json!({"type": "object", "properties": {}})
}

fn tool_from_function(f: &Value) -> Option<Tool> {
    Some(Tool {
        name: f.get("name")?.as_str()?.to_string(),
        description: f.get("description").and_then(Value::as_str).map(str::to_string),
        parameters: f.get("parameters").filter(|p| !p.is_null()).cloned().unwrap_or_else(default_parameters),
        cache_control: None,
    })
}

/// OpenAI chat request object (already validated by `parse_chat_request`) → canonical
/// conversation. Fails with a 400 naming the parameter for what cannot be translated.
pub fn conversation(body: &Map<String, Value>) -> Result<Conversation> {
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(Error::invalid("n", "n > 1 is only supported when the upstream speaks the OpenAI dialect"));
    }
    let mut conv = Conversation::default();
    let messages = body.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    // The last turn holds tool results that later tool (and one user) messages join.
    let mut tool_turn_open = false;
    // The id given to the last legacy `function_call`, for the `function` message answering it.
    let mut legacy_call: Option<String> = None;
    for (i, m) in messages.iter().enumerate() {
        let Some(obj) = m.as_object() else { continue };
        let role = obj.get("role").and_then(Value::as_str).unwrap_or("");
        let content = obj.get("content");
        match role {
            // Wherever they appear (even after the first user turn), in order: the other
            // dialects have a single system slot, and moving them there keeps their text.
            "system" | "developer" => conv.system.extend(texts(content_parts(content, i, role, Allowed::Text)?)),
            "user" => {
                let parts = content_parts(content, i, role, Allowed::TextOrImage)?;
                match conv.messages.last_mut() {
                    Some(last) if tool_turn_open => last.parts.extend(parts),
                    // A user message without content (`null`) makes no turn.
                    _ if parts.is_empty() => {}
                    _ => conv.messages.push(Message { role: Role::User, parts }),
                }
                tool_turn_open = false;
            }
            "assistant" => {
                let mut parts = Vec::new();
                if let Some(r) = obj.get("reasoning_content").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    parts.push(Part::Thinking { text: r.to_string(), signature: None });
                }
                // `content: ""` next to tool calls is common and means nothing.
                parts.extend(
                    content_parts(content, i, role, Allowed::TextOrRefusal)?
                        .into_iter()
                        .filter(|p| !matches!(p, Part::Text(t) if t.text.is_empty())),
                );
                if let Some(r) = obj.get("refusal").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    parts.push(Part::Text(Text { text: r.to_string(), cache_control: None }));
                }
                match obj.get("tool_calls") {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(calls)) => {
                        for (k, c) in calls.iter().enumerate() {
                            parts.push(tool_call_part(c, &format!("messages[{i}].tool_calls[{k}]"))?);
                        }
                    }
                    Some(_) => {
                        return Err(Error::invalid(
                            &format!("messages[{i}].tool_calls"),
                            "'tool_calls' must be an array",
                        ))
                    }
                }
                if let Some(fc) = obj.get("function_call").filter(|v| v.is_object()) {
                    let id = synth_call_id();
                    let call = json!({"id": id, "type": "function", "function": fc});
                    parts.push(tool_call_part(&call, &format!("messages[{i}].function_call"))?);
                    legacy_call = Some(id);
                }
                // An assistant turn with nothing in it is dropped (Anthropic refuses empty turns).
                if !parts.is_empty() {
                    conv.messages.push(Message { role: Role::Assistant, parts });
                }
                tool_turn_open = false;
            }
            "tool" | "function" => {
                let call_id = if role == "tool" {
                    match obj.get("tool_call_id").and_then(Value::as_str) {
                        Some(id) => id.to_string(),
                        None => {
                            return Err(Error::invalid(
                                &format!("messages[{i}].tool_call_id"),
                                "a tool message needs 'tool_call_id' (a string)",
                            ))
                        }
                    }
                } else {
                    legacy_call.take().unwrap_or_else(synth_call_id)
                };
                let part = Part::ToolResult {
                    call_id,
                    content: content_parts(content, i, role, Allowed::TextOrImage)?,
                    is_error: false,
                    cache_control: None,
                };
                match conv.messages.last_mut() {
                    Some(last) if tool_turn_open => last.parts.push(part),
                    _ => conv.messages.push(Message { role: Role::User, parts: vec![part] }),
                }
                tool_turn_open = true;
            }
            _ => {}
        }
    }

    match body.get("tools") {
        Some(Value::Array(tools)) => {
            for (i, t) in tools.iter().enumerate() {
                let kind = t.get("type").and_then(Value::as_str).unwrap_or("function");
                if kind != "function" {
                    return Err(Error::invalid(
                        &format!("tools[{i}].type"),
                        format!("tool type '{kind}' {NOT_TRANSLATABLE}; only function tools can"),
                    ));
                }
                let Some(tool) = t.get("function").and_then(tool_from_function) else {
                    return Err(Error::invalid(
                        &format!("tools[{i}].function.name"),
                        "each tool needs function.name (a string)",
                    ));
                };
                conv.tools.push(tool);
            }
        }
        // Legacy `functions`, only when `tools` is absent.
        _ => {
            if let Some(Value::Array(functions)) = body.get("functions") {
                conv.tools.extend(functions.iter().filter_map(tool_from_function));
            }
        }
    }

    let choice = body.get("tool_choice").filter(|v| !v.is_null()).map(|v| (v, "tool_choice"));
    let legacy = body.get("function_call").filter(|v| !v.is_null()).map(|v| (v, "function_call"));
    conv.tool_choice = match choice.or(legacy) {
        None => None,
        Some((Value::String(s), param)) => Some(match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Any,
            other => {
                return Err(Error::invalid(
                    param,
                    format!("'{other}' is not a valid {param}; expected auto, none, required or a function"),
                ))
            }
        }),
        Some((v, param)) => {
            let name = v.get("function").and_then(|f| f.get("name")).or_else(|| v.get("name")).and_then(Value::as_str);
            match name {
                Some(n) => Some(ToolChoice::Tool(n.to_string())),
                None => {
                    return Err(Error::invalid(
                        param,
                        format!("'{param}' must be auto, none, required or {{\"type\":\"function\",\"function\":{{\"name\":…}}}}"),
                    ))
                }
            }
        }
    };
    conv.parallel_tool_calls = body.get("parallel_tool_calls").and_then(Value::as_bool);

    if let Some(rf) = body.get("response_format").and_then(Value::as_object) {
        conv.response_format = match rf.get("type").and_then(Value::as_str) {
            Some("json_object") => ResponseFormat::JsonObject,
            Some("json_schema") => {
                let Some(js) = rf.get("json_schema").and_then(Value::as_object) else {
                    return Err(Error::invalid(
                        "response_format.json_schema",
                        "response_format of type json_schema needs 'json_schema' (an object)",
                    ));
                };
                ResponseFormat::JsonSchema {
                    name: js.get("name").and_then(Value::as_str).unwrap_or("response").to_string(),
                    schema: js
                        .get("schema")
                        .filter(|s| !s.is_null())
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object"})),
                    strict: js.get("strict").and_then(Value::as_bool),
                }
            }
            _ => ResponseFormat::Text,
        };
    }

    conv.max_output_tokens =
        ["max_completion_tokens", "max_tokens"].iter().find_map(|k| body.get(*k).and_then(Value::as_u64));
    conv.temperature = body.get("temperature").and_then(Value::as_f64);
    conv.top_p = body.get("top_p").and_then(Value::as_f64);
    // Not OpenAI's, but vLLM-style servers and some clients send it.
    conv.top_k = body.get("top_k").and_then(Value::as_u64);
    conv.stop = match body.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            let mut stop = Vec::with_capacity(a.len());
            for s in a {
                match s.as_str() {
                    Some(s) => stop.push(s.to_string()),
                    None => return Err(Error::invalid("stop", "'stop' must be a string or an array of strings")),
                }
            }
            stop
        }
        _ => Vec::new(),
    };
    conv.thinking = match body.get("reasoning_effort").and_then(Value::as_str) {
        Some("none") => Some(Thinking::Disabled),
        Some(effort) => Some(Thinking::Effort(effort.to_string())),
        // Anthropic-style `thinking` that some OpenAI clients (and gateways) send.
        None => body.get("thinking").and_then(|t| match t.get("type").and_then(Value::as_str) {
            Some("enabled") => {
                Some(t.get("budget_tokens").and_then(Value::as_u64).map_or(Thinking::Adaptive, Thinking::Budget))
            }
            Some("adaptive") => Some(Thinking::Adaptive),
            Some("disabled") => Some(Thinking::Disabled),
            _ => None,
        }),
    };
    conv.user = body.get("user").and_then(Value::as_str).map(str::to_string);
    Ok(conv)
}

// ------------------------------------------------------------------ canonical → request

fn joined<'a>(texts: impl Iterator<Item = &'a str>, sep: &str) -> String {
    texts.collect::<Vec<_>>().join(sep)
}

fn render_user(parts: &[Part], out: &mut Vec<Value>) {
    // Tool results first, one `tool` message each: OpenAI wants them right after the
    // assistant message that made the calls, before any other user content.
    for p in parts {
        if let Part::ToolResult { call_id, content, .. } = p {
            // Images in tool results cannot be expressed in a `tool` message: dropped.
            // `is_error` has no OpenAI field either.
            let text = joined(
                content.iter().filter_map(|c| match c {
                    Part::Text(t) => Some(t.text.as_str()),
                    _ => None,
                }),
                "\n\n",
            );
            out.push(json!({"role": "tool", "tool_call_id": call_id, "content": text}));
        }
    }
    let rest: Vec<&Part> = parts.iter().filter(|p| matches!(p, Part::Text(_) | Part::Image { .. })).collect();
    if rest.is_empty() {
        return;
    }
    let content = if rest.iter().all(|p| matches!(p, Part::Text(_))) {
        // Plain string content: every OpenAI-compatible vendor accepts it.
        Value::String(joined(
            rest.iter().filter_map(|p| match p {
                Part::Text(t) => Some(t.text.as_str()),
                _ => None,
            }),
            "\n\n",
        ))
    } else {
        Value::Array(
            rest.iter()
                .filter_map(|p| match p {
                    Part::Text(t) => Some(json!({"type": "text", "text": t.text})),
                    Part::Image { source, .. } => {
                        Some(json!({"type": "image_url", "image_url": {"url": image_url(source)}}))
                    }
                    _ => None,
                })
                .collect(),
        )
    };
    out.push(json!({"role": "user", "content": content}));
}

/// An assistant message from canonical parts, as OpenAI shapes it (for upstream requests
/// and for replies); None when the parts carry nothing OpenAI can show.
fn assistant_message(parts: &[Part]) -> Option<Map<String, Value>> {
    let mut text = String::new();
    let mut has_text = false;
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for p in parts {
        match p {
            Part::Text(t) => {
                text.push_str(&t.text);
                has_text = true;
            }
            Part::Thinking { text: t, .. } => reasoning.push_str(t),
            Part::ToolCall { id, name, arguments } => calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": arguments_string(arguments)},
            })),
            // Encrypted reasoning only an Anthropic upstream can read; images and tool
            // results do not occur in assistant turns.
            Part::RedactedThinking { .. } | Part::Image { .. } | Part::ToolResult { .. } => {}
        }
    }
    if !has_text && calls.is_empty() && reasoning.is_empty() {
        return None;
    }
    let mut msg = Map::new();
    msg.insert("role".into(), "assistant".into());
    // null when the turn only calls tools, as OpenAI itself sends it.
    let content = if has_text || calls.is_empty() { Value::String(text) } else { Value::Null };
    msg.insert("content".into(), content);
    // DeepSeek takes its reasoning back this way (it must, in thinking-mode tool loops).
    if !reasoning.is_empty() {
        msg.insert("reasoning_content".into(), Value::String(reasoning));
    }
    if !calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(calls));
    }
    Some(msg)
}

fn render_assistant(parts: &[Part], out: &mut Vec<Value>) {
    if let Some(msg) = assistant_message(parts) {
        out.push(Value::Object(msg));
    }
}

fn effort_for_budget(budget: u64) -> &'static str {
    match budget {
        0..=2048 => "low",
        2049..=8192 => "medium",
        _ => "high",
    }
}

/// Canonical → OpenAI chat request body for an upstream. `stream` also sets
/// `stream_options.include_usage`, so usage is always known.
///
/// The output limit goes out as `max_tokens`, which every OpenAI-compatible vendor
/// knows (many reject or ignore `max_completion_tokens`). `top_k` has no OpenAI field and
/// is dropped; `tool_choice` and `parallel_tool_calls` are sent only with tools (OpenAI
/// rejects them otherwise).
pub fn render_request(conv: &Conversation, model: &str, stream: bool) -> Vec<u8> {
    let mut messages = Vec::with_capacity(conv.messages.len() + 1);
    if !conv.system.is_empty() {
        let system = joined(conv.system.iter().map(|t| t.text.as_str()), "\n\n");
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in &conv.messages {
        match m.role {
            Role::User => render_user(&m.parts, &mut messages),
            Role::Assistant => render_assistant(&m.parts, &mut messages),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("messages".into(), Value::Array(messages));
    if !conv.tools.is_empty() {
        let tools = conv
            .tools
            .iter()
            .map(|t| {
                let mut f = Map::new();
                f.insert("name".into(), t.name.clone().into());
                if let Some(d) = &t.description {
                    f.insert("description".into(), d.clone().into());
                }
                f.insert("parameters".into(), t.parameters.clone());
                json!({"type": "function", "function": f})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = &conv.tool_choice {
            let v = match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Any => json!("required"),
                ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
            };
            body.insert("tool_choice".into(), v);
        }
        if let Some(p) = conv.parallel_tool_calls {
            body.insert("parallel_tool_calls".into(), p.into());
        }
    }
    match &conv.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        ResponseFormat::JsonSchema { name, schema, strict } => {
            let mut js = Map::new();
            js.insert("name".into(), name.clone().into());
            js.insert("schema".into(), schema.clone());
            if let Some(s) = strict {
                js.insert("strict".into(), (*s).into());
            }
            body.insert("response_format".into(), json!({"type": "json_schema", "json_schema": js}));
        }
    }
    if let Some(n) = conv.max_output_tokens {
        body.insert("max_tokens".into(), n.into());
    }
    if let Some(t) = conv.temperature {
        body.insert("temperature".into(), t.into());
    }
    if let Some(p) = conv.top_p {
        body.insert("top_p".into(), p.into());
    }
    if !conv.stop.is_empty() {
        body.insert("stop".into(), conv.stop.clone().into());
    }
    if let Some(u) = &conv.user {
        body.insert("user".into(), u.clone().into());
    }
    // Adaptive means the vendor's default and Disabled the absence of the field.
    let effort = match &conv.thinking {
        Some(Thinking::Effort(e)) => Some(e.as_str()),
        Some(Thinking::Budget(n)) => Some(effort_for_budget(*n)),
        Some(Thinking::Adaptive | Thinking::Disabled) | None => None,
    };
    if let Some(e) = effort {
        body.insert("reasoning_effort".into(), e.into());
    }
    if stream {
        body.insert("stream".into(), true.into());
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
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

// ------------------------------------------------------------------ stream decoding

#[derive(Deserialize)]
struct WireChunk {
    id: Option<String>,
    model: Option<String>,
    choices: Option<Vec<WireChunkChoice>>,
    usage: Option<Value>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    index: Option<u32>,
    delta: Option<WireDelta>,
    finish_reason: Option<String>,
    /// Moonshot reports usage inside the finishing choice.
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct WireDelta {
    content: Option<String>,
    reasoning_content: Option<String>,
    reasoning: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<WireToolDelta>>,
    function_call: Option<WireFunctionDelta>,
}

#[derive(Deserialize)]
struct WireToolDelta {
    index: Option<u32>,
    id: Option<String>,
    function: Option<WireFunctionDelta>,
}

#[derive(Deserialize)]
struct WireFunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

/// One tool call being streamed.
#[derive(Debug)]
struct Call {
    index: u32,
    id: Option<String>,
    started: bool,
    /// Argument text that arrived before the call's name (held until it is known).
    pending: String,
}

/// OpenAI `chat.completion.chunk` events → canonical deltas.
///
/// `Start` comes with the first chunk (an id is synthesized if it has none). A tool call
/// starts when its name is first seen (its id is synthesized if the server sends none);
/// the [`Delta`] index is the OpenAI index. A chunk with `usage` (whatever `choices` is)
/// becomes `Usage`. If the stream ends with `[DONE]` but no finish reason, `finish` reports
/// the natural one; a stream cut off before `[DONE]` gets no invented stop.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    stopped: bool,
    done: bool,
    calls: Vec<Call>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The slot of the call a fragment belongs to: by index, or — for servers that omit
    /// it — a new call when a new id appears, else the latest call.
    fn call_slot(&mut self, index: Option<u32>, id: Option<&str>) -> usize {
        let index = match index {
            Some(i) => i,
            None => match (self.calls.last(), id) {
                (Some(last), Some(id)) if last.id.as_deref() != Some(id) => last.index + 1,
                (Some(last), _) => last.index,
                (None, _) => 0,
            },
        };
        match self.calls.iter().position(|c| c.index == index) {
            Some(slot) => slot,
            None => {
                self.calls.push(Call { index, id: None, started: false, pending: String::new() });
                self.calls.len() - 1
            }
        }
    }

    fn tool_fragment(
        &mut self,
        index: Option<u32>,
        id: Option<String>,
        f: Option<WireFunctionDelta>,
        out: &mut Vec<Delta>,
    ) {
        let id = id.filter(|s| !s.is_empty());
        let slot = self.call_slot(index, id.as_deref());
        let call = &mut self.calls[slot];
        if call.id.is_none() {
            call.id = id;
        }
        let (name, args) = f.map_or((None, None), |f| (f.name.filter(|n| !n.is_empty()), f.arguments));
        if !call.started {
            if let Some(name) = name {
                call.started = true;
                let id = call.id.get_or_insert_with(synth_call_id).clone();
                out.push(Delta::ToolCallStart { index: call.index, id, name });
                if !call.pending.is_empty() {
                    out.push(Delta::ToolCallArgs { index: call.index, json: std::mem::take(&mut call.pending) });
                }
            }
        }
        if let Some(json) = args.filter(|a| !a.is_empty()) {
            if call.started {
                out.push(Delta::ToolCallArgs { index: call.index, json });
            } else {
                call.pending.push_str(&json);
            }
        }
    }

    /// Calls whose name never came: start them nameless so their arguments are not lost.
    fn flush_calls(&mut self, out: &mut Vec<Delta>) {
        for call in self.calls.iter_mut().filter(|c| !c.started) {
            call.started = true;
            let id = call.id.get_or_insert_with(synth_call_id).clone();
            out.push(Delta::ToolCallStart { index: call.index, id, name: String::new() });
            if !call.pending.is_empty() {
                out.push(Delta::ToolCallArgs { index: call.index, json: std::mem::take(&mut call.pending) });
            }
        }
    }
}

impl Decode for Decoder {
    fn event(&mut self, ev: &sse::Event, out: &mut Vec<Delta>) -> Result<(), Error> {
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: WireChunk = serde_json::from_str(data)
            .map_err(|e| Error::protocol(format!("the upstream sent a stream chunk that could not be parsed: {e}")))?;
        if ev.event.as_deref() == Some("error") || chunk.error.as_ref().is_some_and(|e| !e.is_null()) {
            return Err(upstream_reported(data.as_bytes()));
        }
        if !self.started {
            self.started = true;
            out.push(Delta::Start {
                id: chunk.id.filter(|s| !s.is_empty()).unwrap_or_else(synth_completion_id),
                model: chunk.model.unwrap_or_default(),
                usage: None,
            });
        }
        for choice in chunk.choices.unwrap_or_default() {
            // Only the first choice: n > 1 is never requested by translation.
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(d) = choice.delta {
                if let Some(r) = d.reasoning_content.or(d.reasoning).filter(|s| !s.is_empty()) {
                    out.push(Delta::Thinking(r));
                }
                if let Some(t) = d.content.filter(|s| !s.is_empty()) {
                    out.push(Delta::Text(t));
                }
                if let Some(t) = d.refusal.filter(|s| !s.is_empty()) {
                    out.push(Delta::Text(t));
                }
                for tc in d.tool_calls.unwrap_or_default() {
                    self.tool_fragment(tc.index, tc.id, tc.function, out);
                }
                if let Some(f) = d.function_call {
                    self.tool_fragment(Some(0), None, Some(f), out);
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|s| !s.is_empty()) {
                if !self.stopped {
                    self.stopped = true;
                    self.flush_calls(out);
                    out.push(Delta::Stop(map_finish_reason(&reason, !self.calls.is_empty())));
                }
            }
            if let Some(u) = choice.usage.and_then(parse_usage) {
                out.push(Delta::Usage(u));
            }
        }
        if let Some(u) = chunk.usage.and_then(parse_usage) {
            out.push(Delta::Usage(u));
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Delta>) {
        self.flush_calls(out);
        if self.done && !self.stopped {
            self.stopped = true;
            out.push(Delta::Stop(map_finish_reason("", !self.calls.is_empty())));
        }
    }
}

// ------------------------------------------------------------------ stream encoding

/// Canonical deltas → OpenAI `chat.completion.chunk` events, for an OpenAI client whose
/// upstream spoke another dialect.
///
/// The first chunk carries `role: assistant` and `content: ""`, as OpenAI's does. The stop
/// reason and usage are held until [`Encode::finish`], which sends the finishing chunk, the
/// usage chunk (`choices: []`, only when the client asked for it and usage is known), then
/// `[DONE]`. With `include_usage`, every other chunk carries `"usage":null`, as OpenAI's do.
/// Thinking signatures and redacted thinking cannot be represented and are dropped.
#[derive(Debug)]
pub struct Encoder {
    include_usage: bool,
    /// The answer's id and model, from `Start`.
    id: Option<String>,
    model: String,
    created: u64,
    /// `{"id":…,"object":…,"created":…,"model":…` — the same for every chunk, built when
    /// the first chunk is written.
    head: String,
    stop: Option<StopReason>,
    usage: Option<Usage>,
    called_tools: bool,
    closed: bool,
}

impl Encoder {
    pub fn new(include_usage: bool) -> Self {
        Encoder {
            include_usage,
            id: None,
            model: String::new(),
            created: crate::timespec::now_secs(),
            head: String::new(),
            stop: None,
            usage: None,
            called_tools: false,
            closed: false,
        }
    }

    /// The model to name if the stream never sends `Start` (normally it does).
    pub fn with_model(mut self, model: &str) -> Self {
        self.model = model.to_string();
        self
    }

    /// Write the role chunk if nothing was written yet.
    fn open(&mut self, out: &mut BytesMut) {
        if !self.head.is_empty() {
            return;
        }
        let id = self.id.get_or_insert_with(synth_completion_id);
        self.head = format!(
            "{{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{}",
            Value::String(id.clone()),
            self.created,
            Value::String(self.model.clone()),
        );
        self.chunk(&json!({"role": "assistant", "content": ""}), None, out);
    }

    fn chunk(&self, delta: &Value, finish: Option<&str>, out: &mut BytesMut) {
        let mut data = String::with_capacity(self.head.len() + 128);
        data.push_str(&self.head);
        data.push_str(",\"choices\":[{\"index\":0,\"delta\":");
        data.push_str(&delta.to_string());
        data.push_str(",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => {
                data.push('"');
                data.push_str(f);
                data.push('"');
            }
            None => data.push_str("null"),
        }
        data.push_str("}]");
        if self.include_usage {
            data.push_str(",\"usage\":null");
        }
        data.push('}');
        sse::write_event(None, &data, out);
    }
}

impl Encode for Encoder {
    fn delta(&mut self, d: &Delta, out: &mut BytesMut) {
        if self.closed {
            return;
        }
        let delta = match d {
            Delta::Start { id, model, usage } => {
                if self.head.is_empty() {
                    self.id = Some(id.clone());
                    if !model.is_empty() {
                        self.model = model.clone();
                    }
                }
                if usage.is_some() {
                    self.usage = *usage;
                }
                self.open(out);
                return;
            }
            Delta::Text(t) if !t.is_empty() => json!({"content": t}),
            Delta::Thinking(t) if !t.is_empty() => json!({"reasoning_content": t}),
            Delta::ToolCallStart { index, id, name } => {
                self.called_tools = true;
                json!({"tool_calls": [{
                    "index": index,
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }]})
            }
            Delta::ToolCallArgs { index, json } if !json.is_empty() => {
                json!({"tool_calls": [{"index": index, "function": {"arguments": json}}]})
            }
            Delta::Stop(s) => {
                self.stop = Some(s.clone());
                return;
            }
            Delta::Usage(u) => {
                self.usage = Some(*u);
                return;
            }
            // Not representable in this dialect (or empty).
            Delta::ThinkingSignature(_)
            | Delta::RedactedThinking(_)
            | Delta::Text(_)
            | Delta::Thinking(_)
            | Delta::ToolCallArgs { .. } => return,
        };
        self.open(out);
        self.chunk(&delta, None, out);
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if self.closed {
            return;
        }
        self.open(out);
        let stop =
            self.stop.take().unwrap_or(if self.called_tools { StopReason::ToolUse } else { StopReason::EndTurn });
        self.chunk(&json!({}), Some(finish_reason(&stop)), out);
        if self.include_usage {
            if let Some(u) = &self.usage {
                let data = format!("{},\"choices\":[],\"usage\":{}}}", self.head, usage_json(u));
                sse::write_event(None, &data, out);
            }
        }
        sse::write_event(None, "[DONE]", out);
        self.closed = true;
    }

    fn error(&mut self, e: &Error, out: &mut BytesMut) {
        if self.closed {
            return;
        }
        sse::write_event(None, &e.openai_body().to_string(), out);
        self.closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn text(s: &str) -> Part {
        Part::Text(Text { text: s.to_string(), cache_control: None })
    }

    fn t(s: &str) -> Text {
        Text { text: s.to_string(), cache_control: None }
    }

    fn result(call_id: &str, s: &str) -> Part {
        Part::ToolResult { call_id: call_id.into(), content: vec![text(s)], is_error: false, cache_control: None }
    }

    fn call(id: &str, name: &str, arguments: Value) -> Part {
        Part::ToolCall { id: id.into(), name: name.into(), arguments }
    }

    fn rendered(conv: &Conversation, stream: bool) -> Value {
        serde_json::from_slice(&render_request(conv, "deepseek-chat", stream)).unwrap()
    }

    /// The OpenAI side of a complete tool loop.
    fn tool_loop_body() -> Value {
        json!({
            "model": "claude-sonnet-4-5",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "24C"}]},
                {"role": "user", "content": "Which is warmer?"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, "strict": true}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "max_completion_tokens": 300,
            "max_tokens": 999,
            "temperature": 0.5,
            "seed": 7,
            "presence_penalty": 0.1
        })
    }

    // ---------------------------------------------------------------- conversation()

    #[test]
    fn system_and_developer_messages_go_to_system_in_order() {
        let conv = conversation(&obj(json!({"model": "m", "messages": [
            {"role": "system", "content": "one"},
            {"role": "developer", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": "three"}]},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "late"}
        ]})))
        .unwrap();
        assert_eq!(conv.system, vec![t("one"), t("two"), t("three"), t("late")]);
        let empty = conversation(&obj(json!({"model": "m", "messages": [{"role": "user", "content": null}]}))).unwrap();
        assert!(empty.messages.is_empty());
        assert_eq!(conv.messages, vec![Message { role: Role::User, parts: vec![text("hi")] }]);
    }

    #[test]
    fn images_data_urls_become_base64() {
        let conv = conversation(&obj(json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "image_url", "image_url": {"url": "data:image/svg+xml,%3Csvg%3E"}}
        ]}]})))
        .unwrap();
        let parts = &conv.messages[0].parts;
        assert_eq!(parts[0], text("what is this"));
        assert_eq!(
            parts[1],
            Part::Image {
                source: ImageSource::Base64 { media_type: "image/png".into(), data: "iVBORw0KGgo=".into() },
                cache_control: None
            }
        );
        assert_eq!(
            parts[2],
            Part::Image { source: ImageSource::Url("https://example.com/cat.jpg".into()), cache_control: None }
        );
        assert_eq!(
            parts[3],
            // Not base64: decoded and re-encoded, so every renderer gets plain base64.
            Part::Image {
                source: ImageSource::Base64 { media_type: "image/svg+xml".into(), data: "PHN2Zz4=".into() },
                cache_control: None
            }
        );
    }

    #[test]
    fn tool_loop_becomes_one_user_turn_of_results_then_text() {
        let conv = conversation(&obj(tool_loop_body())).unwrap();
        assert_eq!(conv.system, vec![t("Be brief.")]);
        assert_eq!(
            conv.messages,
            vec![
                Message { role: Role::User, parts: vec![text("Weather in Paris and Rome?")] },
                Message {
                    role: Role::Assistant,
                    parts: vec![
                        call("call_a", "get_weather", json!({"city": "Paris"})),
                        call("call_b", "get_weather", json!({"city": "Rome"})),
                    ]
                },
                Message {
                    role: Role::User,
                    parts: vec![result("call_a", "18C"), result("call_b", "24C"), text("Which is warmer?")]
                },
            ]
        );
        assert_eq!(
            conv.tools,
            vec![Tool {
                name: "get_weather".into(),
                description: Some("Weather by city".into()),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
                cache_control: None,
            }]
        );
        assert_eq!(conv.tool_choice, Some(ToolChoice::Any));
        assert_eq!(conv.parallel_tool_calls, Some(false));
        assert_eq!(conv.max_output_tokens, Some(300), "max_completion_tokens wins over max_tokens");
        assert_eq!(conv.temperature, Some(0.5));
    }

    #[test]
    fn assistant_reasoning_refusal_odd_arguments_and_legacy_function_call() {
        let conv = conversation(&obj(json!({"model": "m", "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "reasoning_content": "let me think", "content": [{"type": "text", "text": "A"}, {"type": "refusal", "refusal": "no"}],
             "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": ""}}
             ]},
            {"role": "assistant", "content": "", "function_call": {"name": "old", "arguments": "{\"x\":1}"}},
            {"role": "function", "name": "old", "content": "done"}
        ]})))
        .unwrap();
        assert_eq!(
            conv.messages[1].parts,
            vec![
                Part::Thinking { text: "let me think".into(), signature: None },
                text("A"),
                text("no"),
                call("c1", "f", Value::String("{not json".into())),
                call("c2", "g", json!({})),
            ]
        );
        let Part::ToolCall { id, name, arguments } = &conv.messages[2].parts[0] else { panic!() };
        assert_eq!((name.as_str(), arguments), ("old", &json!({"x": 1})));
        assert_eq!(conv.messages[2].parts.len(), 1, "empty content next to a call is dropped");
        assert_eq!(conv.messages[3].parts, vec![result(id, "done")], "the function result answers the legacy call");
    }

    #[test]
    fn response_formats_tool_choices_and_sampling() {
        let base = |extra: Value| {
            let mut b = obj(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
            b.extend(obj(extra));
            conversation(&b).unwrap()
        };
        assert_eq!(base(json!({})).response_format, ResponseFormat::Text);
        assert_eq!(base(json!({"response_format": {"type": "text"}})).response_format, ResponseFormat::Text);
        assert_eq!(
            base(json!({"response_format": {"type": "json_object"}})).response_format,
            ResponseFormat::JsonObject
        );
        assert_eq!(
            base(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}, "strict": true}}}))
                .response_format,
            ResponseFormat::JsonSchema {
                name: "answer".into(),
                schema: json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
                strict: Some(true)
            }
        );
        assert_eq!(base(json!({"tool_choice": "auto"})).tool_choice, Some(ToolChoice::Auto));
        assert_eq!(base(json!({"tool_choice": "none"})).tool_choice, Some(ToolChoice::None));
        assert_eq!(
            base(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}})).tool_choice,
            Some(ToolChoice::Tool("f".into()))
        );
        let c = base(json!({"max_tokens": 40, "top_p": 0.9, "stop": "END", "reasoning_effort": "high", "user": "u-1",
            "tools": [{"type": "function", "function": {"name": "bare"}}]}));
        assert_eq!(c.max_output_tokens, Some(40));
        assert_eq!(c.top_p, Some(0.9));
        assert_eq!(c.stop, vec!["END".to_string()]);
        assert_eq!(c.thinking, Some(Thinking::Effort("high".into())));
        assert_eq!(c.user.as_deref(), Some("u-1"));
        assert_eq!(c.tools[0].parameters, json!({"type": "object", "properties": {}}));
        assert_eq!(base(json!({"stop": ["a", "b"]})).stop, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn untranslatable_input_is_a_400_naming_the_parameter() {
        let err = conversation(&obj(json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "listen"}, {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}]}
        ]})))
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest);
        assert_eq!(err.param.as_deref(), Some("messages[0].content[1].type"));
        assert!(err.message.contains("input_audio"), "{}", err.message);
        let err = conversation(&obj(json!({"model": "m", "messages": [
            {"role": "user", "content": "x"}, {"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}
        ]})))
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[1].content[0].type"));
        let err = conversation(&obj(json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]})))
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("n"));
        assert!(err.message.contains("n > 1"));
        let err =
            conversation(&obj(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}))).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].tool_call_id"));
    }

    // ---------------------------------------------------------------- render_request()

    #[test]
    fn tool_loop_round_trips_through_render_request() {
        let conv = conversation(&obj(tool_loop_body())).unwrap();
        let out = rendered(&conv, true);
        assert_eq!(
            out,
            json!({
                "model": "deepseek-chat",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Weather in Paris and Rome?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
                    {"role": "tool", "tool_call_id": "call_b", "content": "24C"},
                    {"role": "user", "content": "Which is warmer?"}
                ],
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
                "tool_choice": "required",
                "parallel_tool_calls": false,
                "max_tokens": 300,
                "temperature": 0.5,
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
        // And back: the same conversation.
        assert_eq!(conversation(&obj(out)).unwrap(), conv);
    }

    #[test]
    fn render_request_from_an_anthropic_shaped_conversation() {
        let conv = Conversation {
            system: vec![t("You are terse."), t("Answer in French.")],
            messages: vec![
                Message {
                    role: Role::User,
                    parts: vec![
                        text("look"),
                        Part::Image {
                            source: ImageSource::Base64 { media_type: "image/jpeg".into(), data: "/9j/4A==".into() },
                            cache_control: Some(json!({"type": "ephemeral"})),
                        },
                    ],
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![
                        Part::Thinking { text: "a cat?".into(), signature: Some("sig".into()) },
                        Part::RedactedThinking { data: "xyz".into() },
                        text("Checking."),
                        call("toolu_1", "lookup", json!({"q": "cat"})),
                    ],
                },
                Message {
                    role: Role::User,
                    // Text before the result in the canonical turn: the tool message still goes first.
                    parts: vec![
                        text("also this"),
                        Part::ToolResult {
                            call_id: "toolu_1".into(),
                            content: vec![
                                text("a cat"),
                                Part::Image { source: ImageSource::Url("https://x/y.png".into()), cache_control: None },
                                text("probably"),
                            ],
                            is_error: true,
                            cache_control: None,
                        },
                    ],
                },
                Message { role: Role::Assistant, parts: vec![Part::RedactedThinking { data: "only".into() }] },
            ],
            tool_choice: Some(ToolChoice::None),
            top_k: Some(40),
            stop: vec!["\n\nHuman:".into()],
            thinking: Some(Thinking::Budget(4096)),
            user: Some("user-9".into()),
            response_format: ResponseFormat::JsonSchema {
                name: "r".into(),
                schema: json!({"type": "object"}),
                strict: None,
            },
            ..Conversation::default()
        };
        let out = rendered(&conv, false);
        assert_eq!(
            out,
            json!({
                "model": "deepseek-chat",
                "messages": [
                    {"role": "system", "content": "You are terse.\n\nAnswer in French."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4A=="}}
                    ]},
                    {"role": "assistant", "content": "Checking.", "reasoning_content": "a cat?", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"cat\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "a cat\n\nprobably"},
                    {"role": "user", "content": "also this"}
                ],
                "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}},
                "stop": ["\n\nHuman:"],
                "user": "user-9",
                "reasoning_effort": "medium"
            }),
            "no tools means no tool_choice; top_k dropped; no stream fields"
        );
        for (budget, effort) in [(1024, "low"), (2048, "low"), (2049, "medium"), (8192, "medium"), (8193, "high")] {
            let c = Conversation { thinking: Some(Thinking::Budget(budget)), ..Conversation::default() };
            assert_eq!(rendered(&c, false)["reasoning_effort"], effort, "budget {budget}");
        }
        let c = Conversation { thinking: Some(Thinking::Adaptive), ..Conversation::default() };
        assert!(rendered(&c, false).get("reasoning_effort").is_none());
    }

    // ---------------------------------------------------------------- replies

    #[test]
    fn parse_reply_reads_reasoning_text_tool_calls_and_usage() {
        let body = json!({
            "id": "chatcmpl-123", "object": "chat.completion", "created": 1, "model": "deepseek-reasoner",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Let me look.", "reasoning_content": "thinking...",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":[1,2]}"}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
                "prompt_tokens_details": {"cached_tokens": 40}, "completion_tokens_details": {"reasoning_tokens": 30}}
        });
        let reply = parse_reply(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(
            reply,
            Reply {
                id: "chatcmpl-123".into(),
                model: "deepseek-reasoner".into(),
                parts: vec![
                    Part::Thinking { text: "thinking...".into(), signature: None },
                    text("Let me look."),
                    call("call_1", "f", json!({"a": [1, 2]})),
                ],
                stop: StopReason::ToolUse,
                usage: Some(Usage {
                    input_uncached: 60,
                    input_cache_read: 40,
                    input_cache_write: 0,
                    output: 20,
                    output_reasoning: 30
                }),
            }
        );
        let with_reason = |reason: &str| {
            let b = json!({"id": "x", "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": reason}]});
            parse_reply(&serde_json::to_vec(&b).unwrap()).unwrap()
        };
        assert_eq!(with_reason("stop").stop, StopReason::EndTurn);
        assert_eq!(with_reason("length").stop, StopReason::MaxTokens);
        assert_eq!(with_reason("function_call").stop, StopReason::ToolUse);
        assert_eq!(with_reason("content_filter").stop, StopReason::ContentFilter);
        assert_eq!(with_reason("stop").usage, None);
        // DeepSeek's cache fields go through the same normalization.
        let ds = json!({"id": "x", "model": "m", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}});
        assert_eq!(parse_reply(&serde_json::to_vec(&ds).unwrap()).unwrap().usage.unwrap().input_cache_read, 64);
        // A refusal is the answer's text.
        let refusal = json!({"id": "x", "model": "m", "choices": [{"message": {"content": null, "refusal": "I can't."}, "finish_reason": "stop"}]});
        assert_eq!(parse_reply(&serde_json::to_vec(&refusal).unwrap()).unwrap().parts, vec![text("I can't.")]);
    }

    #[test]
    fn parse_reply_errors() {
        for bad in
            [&b"{\"id\": \"x\", \"choices\": ["[..], b"<html>", br#"{"id":"x","choices":[]}"#, br#"{"choices":"nope"}"#]
        {
            assert_eq!(
                parse_reply(bad).unwrap_err().kind,
                ErrorKind::UpstreamProtocol,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let e = parse_reply(br#"{"error":{"message":"overloaded","type":"server_error","code":503}}"#).unwrap_err();
        let ErrorKind::UpstreamStatus(s) = &e.kind else { panic!("{e:?}") };
        assert_eq!((s.status, s.retryable), (503, true));
        assert_eq!(e.message, "overloaded");
    }

    #[test]
    fn render_reply_matches_the_sdk_shape_and_round_trips() {
        let reply = Reply {
            id: "msg_01XYZ".into(),
            model: "claude-sonnet-4-5".into(),
            parts: vec![
                Part::Thinking { text: "hmm".into(), signature: Some("sig".into()) },
                Part::RedactedThinking { data: "zzz".into() },
                call("toolu_1", "get_weather", json!({"city": "Paris"})),
                call("toolu_2", "get_time", json!({})),
            ],
            stop: StopReason::ToolUse,
            usage: Some(Usage {
                input_uncached: 10,
                input_cache_read: 1000,
                input_cache_write: 5,
                output: 20,
                output_reasoning: 7,
            }),
        };
        let mut out: Value = serde_json::from_slice(&render_reply(&reply)).unwrap();
        assert!(out["created"].as_u64().unwrap() > 1_700_000_000);
        out.as_object_mut().unwrap().remove("created");
        assert_eq!(
            out,
            json!({
                "id": "msg_01XYZ",
                "object": "chat.completion",
                "model": "claude-sonnet-4-5",
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": null,
                        "reasoning_content": "hmm",
                        "tool_calls": [
                            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                            {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                        ],
                        "refusal": null
                    },
                    "logprobs": null,
                    "finish_reason": "tool_calls"
                }],
                "usage": {
                    "prompt_tokens": 1015,
                    "completion_tokens": 27,
                    "total_tokens": 1042,
                    "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 7, "audio_tokens": 0,
                        "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
                }
            })
        );
        // Back again: what OpenAI can carry survives (cache writes become plain input).
        let back = parse_reply(&render_reply(&reply)).unwrap();
        assert_eq!(back.id, reply.id);
        assert_eq!(
            back.parts,
            vec![
                Part::Thinking { text: "hmm".into(), signature: None },
                reply.parts[2].clone(),
                reply.parts[3].clone()
            ]
        );
        assert_eq!(back.stop, StopReason::ToolUse);
        assert_eq!(
            back.usage,
            Some(Usage {
                input_uncached: 15,
                input_cache_read: 1000,
                input_cache_write: 0,
                output: 20,
                output_reasoning: 7
            })
        );

        for (stop, wire) in [
            (StopReason::EndTurn, "stop"),
            (StopReason::StopSequence(Some("END".into())), "stop"),
            (StopReason::MaxTokens, "length"),
            (StopReason::ContentFilter, "content_filter"),
        ] {
            let r = Reply { id: "a".into(), model: "m".into(), parts: vec![text("x"), text("y")], stop, usage: None };
            let v: Value = serde_json::from_slice(&render_reply(&r)).unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], wire);
            assert_eq!(v["choices"][0]["message"]["content"], "xy");
            assert!(v["choices"][0]["message"].get("reasoning_content").is_none());
            assert!(v.get("usage").is_none());
        }
    }

    // ---------------------------------------------------------------- Decoder

    fn decode_body(body: &str) -> Result<Vec<Delta>, Error> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for item in sse::parse_all(body.as_bytes()) {
            if let sse::Item::Event(ev) = item {
                d.event(&ev, &mut out)?;
            }
        }
        d.finish(&mut out);
        Ok(out)
    }

    fn sse_of(chunks: &[Value]) -> String {
        let mut s: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        s.push_str("data: [DONE]\n\n");
        s
    }

    fn chunk(delta: Value, finish: Option<&str>) -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-chat",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    }

    fn start() -> Delta {
        Delta::Start { id: "chatcmpl-1".into(), model: "deepseek-chat".into(), usage: None }
    }

    #[test]
    fn decoder_text_and_reasoning() {
        let body = format!(
            ": keep-alive\n\n{}",
            sse_of(&[
                chunk(json!({"role": "assistant", "content": ""}), None),
                chunk(json!({"reasoning_content": "Think"}), None),
                chunk(json!({"reasoning_content": "ing."}), None),
                chunk(json!({"content": "Hel"}), None),
                chunk(json!({"content": "lo"}), None),
                chunk(json!({}), Some("length")),
            ])
        );
        assert_eq!(
            decode_body(&body).unwrap(),
            vec![
                start(),
                Delta::Thinking("Think".into()),
                Delta::Thinking("ing.".into()),
                Delta::Text("Hel".into()),
                Delta::Text("lo".into()),
                Delta::Stop(StopReason::MaxTokens),
            ]
        );
    }

    #[test]
    fn decoder_tool_calls_split_across_chunks() {
        let body = sse_of(&[
            chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                None,
            ),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}), None),
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}),
                None,
            ),
            // Some servers repeat the id and name on every fragment: no second start.
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "get_time", "arguments": ""}}]}),
                None,
            ),
            chunk(json!({}), Some("tool_calls")),
        ]);
        let deltas = decode_body(&body).unwrap();
        assert_eq!(
            deltas,
            vec![
                start(),
                Delta::ToolCallStart { index: 0, id: "call_a".into(), name: "get_weather".into() },
                Delta::ToolCallArgs { index: 0, json: "{\"ci".into() },
                Delta::ToolCallArgs { index: 0, json: "ty\":\"Paris\"}".into() },
                Delta::ToolCallStart { index: 1, id: "call_b".into(), name: "get_time".into() },
                Delta::ToolCallArgs { index: 1, json: "{}".into() },
                Delta::Stop(StopReason::ToolUse),
            ]
        );
        // `stop` with tool calls (some servers) still means tool use; missing indexes follow ids.
        let body = sse_of(&[
            chunk(json!({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]}), None),
            chunk(json!({"tool_calls": [{"id": "c2", "function": {"name": "g"}}]}), None),
            chunk(json!({"tool_calls": [{"function": {"arguments": "{\"x\":1}"}}]}), None),
            chunk(json!({}), Some("stop")),
        ]);
        assert_eq!(
            decode_body(&body).unwrap()[1..],
            [
                Delta::ToolCallStart { index: 0, id: "c1".into(), name: "f".into() },
                Delta::ToolCallArgs { index: 0, json: "{}".into() },
                Delta::ToolCallStart { index: 1, id: "c2".into(), name: "g".into() },
                Delta::ToolCallArgs { index: 1, json: "{\"x\":1}".into() },
                Delta::Stop(StopReason::ToolUse),
            ]
        );
    }

    #[test]
    fn decoder_usage_chunk_with_empty_null_or_absent_choices() {
        let usage = json!({"prompt_tokens": 100, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 40},
            "completion_tokens_details": {"reasoning_tokens": 30}});
        let expected =
            Usage { input_uncached: 60, input_cache_read: 40, input_cache_write: 0, output: 20, output_reasoning: 30 };
        for choices in [Some(json!([])), Some(Value::Null), None] {
            let mut last = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-chat", "usage": usage});
            if let Some(c) = &choices {
                last["choices"] = c.clone();
            }
            let mut stop = chunk(json!({}), Some("stop"));
            stop["usage"] = Value::Null;
            let body = sse_of(&[chunk(json!({"content": "x"}), None), stop, last]);
            assert_eq!(
                decode_body(&body).unwrap(),
                vec![start(), Delta::Text("x".into()), Delta::Stop(StopReason::EndTurn), Delta::Usage(expected)],
                "choices = {choices:?}"
            );
        }
        // Usage in the finishing chunk itself, and Moonshot's inside the choice.
        let mut fin = chunk(json!({}), Some("stop"));
        fin["usage"] = json!({"prompt_tokens": 3, "completion_tokens": 2});
        fin["choices"][0]["usage"] = json!({"prompt_tokens": 3, "completion_tokens": 2});
        let deltas = decode_body(&sse_of(&[fin])).unwrap();
        let small = Usage { input_uncached: 3, output: 2, ..Usage::default() };
        assert_eq!(deltas[1..], [Delta::Stop(StopReason::EndTurn), Delta::Usage(small), Delta::Usage(small)]);
    }

    #[test]
    fn decoder_errors_and_endings() {
        let err = decode_body(&format!(
            "{}data: {}\n\n",
            sse_of(&[chunk(json!({"content": "x"}), None)]).replace("data: [DONE]\n\n", ""),
            json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": 429}})
        ))
        .unwrap_err();
        let ErrorKind::UpstreamStatus(s) = &err.kind else { panic!("{err:?}") };
        assert_eq!((s.status, s.retryable, s.vendor_type.as_deref()), (429, true, Some("rate_limit_error")));
        assert_eq!(err.message, "Rate limit reached");
        let err = decode_body("data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n").unwrap_err();
        let ErrorKind::UpstreamStatus(s) = &err.kind else { panic!("{err:?}") };
        assert_eq!((s.status, s.retryable), (500, true));
        let err = decode_body("data: {\"id\": \"chatcmpl-sim-broken\", \"choices\": [{\"delta\": \n\n").unwrap_err();
        assert_eq!(err.kind, ErrorKind::UpstreamProtocol);
        // [DONE] without a finish reason: the natural stop. Cut off before [DONE]: none.
        let ended = decode_body(&sse_of(&[chunk(json!({"content": "x"}), None)])).unwrap();
        assert_eq!(ended.last(), Some(&Delta::Stop(StopReason::EndTurn)));
        let cut = decode_body(&format!("data: {}\n\n", chunk(json!({"content": "x"}), None))).unwrap();
        assert_eq!(cut, vec![start(), Delta::Text("x".into())]);
        // Only choice 0 is read.
        let mut other = chunk(json!({"content": "ignored"}), None);
        other["choices"][0]["index"] = json!(1);
        assert_eq!(decode_body(&sse_of(&[other])).unwrap(), vec![start(), Delta::Stop(StopReason::EndTurn)]);
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/openai-chat-streams");

    #[test]
    fn decoder_on_recorded_openai_streams() {
        let Ok(dir) = std::fs::read_dir(FIXTURES) else {
            eprintln!("note: {FIXTURES} is absent; skipping the recorded-stream check");
            return;
        };
        let mut files = 0;
        let mut with_calls = 0;
        for entry in dir.flatten() {
            let body = std::fs::read_to_string(entry.path()).unwrap();
            let deltas = decode_body(&body).unwrap_or_else(|e| panic!("{}: {e:?}", entry.path().display()));
            files += 1;
            assert!(matches!(deltas.first(), Some(Delta::Start { id, .. }) if id.starts_with("chatcmpl-")));
            assert_eq!(deltas.iter().filter(|d| matches!(d, Delta::Stop(_))).count(), 1, "{}", entry.path().display());
            assert!(matches!(deltas.last(), Some(Delta::Usage(u)) if u.output_total() > 0));
            // Every recording answers something: text (refusals included) or tool calls.
            assert!(
                deltas
                    .iter()
                    .any(|d| matches!(d, Delta::Text(t) if !t.is_empty()) || matches!(d, Delta::ToolCallStart { .. })),
                "{}",
                entry.path().display()
            );
            let mut args: Vec<String> = Vec::new();
            for d in &deltas {
                match d {
                    Delta::ToolCallStart { index, id, name } => {
                        assert_eq!(*index as usize, args.len());
                        assert!(id.starts_with("call_") && !name.is_empty());
                        args.push(String::new());
                    }
                    Delta::ToolCallArgs { index, json } => args[*index as usize].push_str(json),
                    _ => {}
                }
            }
            if !args.is_empty() {
                with_calls += 1;
                assert!(deltas.contains(&Delta::Stop(StopReason::ToolUse)));
            }
            for a in &args {
                let v: Value = serde_json::from_str(a).unwrap_or_else(|e| panic!("{a}: {e}"));
                assert!(v.is_object());
            }
        }
        assert!(files > 0 && with_calls > 0, "{files} files, {with_calls} with tool calls");
    }

    // ---------------------------------------------------------------- Encoder

    fn encode(enc: &mut Encoder, deltas: &[Delta]) -> BytesMut {
        let mut out = BytesMut::new();
        for d in deltas {
            enc.delta(d, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    fn data_of(body: &[u8]) -> Vec<String> {
        sse::parse_all(body)
            .into_iter()
            .filter_map(|i| match i {
                sse::Item::Event(e) => Some(e.data),
                sse::Item::Comment(_) => None,
            })
            .collect()
    }

    fn sample_deltas() -> Vec<Delta> {
        vec![
            Delta::Start { id: "msg_1".into(), model: "claude-sonnet-4-5".into(), usage: None },
            Delta::Thinking("Let me".into()),
            Delta::ThinkingSignature("sig".into()),
            Delta::Thinking(" think.".into()),
            Delta::RedactedThinking("opaque".into()),
            Delta::Text("Checking".into()),
            Delta::Text(" the weather.".into()),
            Delta::ToolCallStart { index: 0, id: "toolu_a".into(), name: "get_weather".into() },
            Delta::ToolCallArgs { index: 0, json: "{\"city\":".into() },
            Delta::ToolCallArgs { index: 0, json: "\"Paris\"}".into() },
            Delta::ToolCallStart { index: 1, id: "toolu_b".into(), name: "get_time".into() },
            Delta::ToolCallArgs { index: 1, json: "{}".into() },
            Delta::Stop(StopReason::ToolUse),
            Delta::Usage(Usage { input_uncached: 5, output: 1, ..Usage::default() }),
            Delta::Usage(Usage {
                input_uncached: 50,
                input_cache_read: 7,
                output: 30,
                output_reasoning: 4,
                ..Usage::default()
            }),
        ]
    }

    #[test]
    fn encoder_chunks_decode_back_to_the_same_deltas() {
        let deltas = sample_deltas();
        let body = encode(&mut Encoder::new(true), &deltas);
        let data = data_of(&body);
        let first: Value = serde_json::from_str(&data[0]).unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(first["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(first["usage"], Value::Null);
        assert!(first.get("usage").is_some(), "with include_usage, chunks carry usage: null");
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let usage_chunk: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["prompt_tokens"], 57);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 34);
        assert_eq!(usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"], 7);
        assert_eq!(usage_chunk["usage"]["completion_tokens_details"]["reasoning_tokens"], 4);
        let finish: Value = serde_json::from_str(&data[data.len() - 3]).unwrap();
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        let tool_head: Value = serde_json::from_str(data.iter().find(|d| d.contains("toolu_a")).unwrap()).unwrap();
        assert_eq!(
            tool_head["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})
        );
        for d in &data[..data.len() - 1] {
            let v: Value = serde_json::from_str(d).unwrap();
            assert_eq!((v["id"].as_str(), v["model"].as_str()), (Some("msg_1"), Some("claude-sonnet-4-5")));
            assert_eq!(v["created"], first["created"]);
        }

        let decoded = decode_body(std::str::from_utf8(&body).unwrap()).unwrap();
        let expected: Vec<Delta> = deltas
            .iter()
            .filter(|d| !matches!(d, Delta::ThinkingSignature(_) | Delta::RedactedThinking(_)))
            // Only the last usage is sent.
            .filter(|d| !matches!(d, Delta::Usage(u) if u.input_uncached == 5))
            .cloned()
            .collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn encoder_without_include_usage_and_without_start() {
        let body = encode(
            &mut Encoder::new(false).with_model("gemini-2.5-pro"),
            &[
                Delta::Text("hi".into()),
                Delta::Stop(StopReason::StopSequence(Some("END".into()))),
                Delta::Usage(Usage { input_uncached: 3, output: 1, ..Usage::default() }),
            ],
        );
        let data = data_of(&body);
        assert_eq!(data.len(), 4, "role, text, finish, [DONE]: {data:?}");
        assert!(data.iter().all(|d| !d.contains("\"usage\"")), "no usage anywhere: {data:?}");
        let first: Value = serde_json::from_str(&data[0]).unwrap();
        assert!(first["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(first["model"], "gemini-2.5-pro");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let finish: Value = serde_json::from_str(&data[2]).unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(data[3], "[DONE]");
    }

    #[test]
    fn encoder_error_event_ends_the_stream() {
        let mut enc = Encoder::new(true);
        let mut out = BytesMut::new();
        enc.delta(&Delta::Start { id: "msg_1".into(), model: "m".into(), usage: None }, &mut out);
        enc.delta(&Delta::Text("par".into()), &mut out);
        enc.error(&Error::new(ErrorKind::UpstreamTimeout, "the upstream stopped sending"), &mut out);
        enc.finish(&mut out);
        enc.delta(&Delta::Text("late".into()), &mut out);
        let data = data_of(&out);
        assert_eq!(data.len(), 3, "{data:?}");
        let err: Value = serde_json::from_str(&data[2]).unwrap();
        assert_eq!(err["error"]["message"], "the upstream stopped sending");
        assert_eq!(err["error"]["code"], "upstream_timeout");
        assert!(!data.iter().any(|d| d == "[DONE]"));
        // What the Decoder makes of it: an error.
        assert!(decode_body(std::str::from_utf8(&out).unwrap()).is_err());
    }
}
