//! The request side of OpenAI translation: [`conversation`] reads an OpenAI client's chat
//! request into a [`Conversation`], and [`render_request`] renders a [`Conversation`] as a
//! body an OpenAI-dialect upstream accepts.

use crate::canonical::{
    Conversation, ImageSource, Message, Part, ResponseFormat, Role, Text, Thinking, Tool, ToolChoice,
};
use crate::dialect::synthetic_id;
use crate::error::{Error, Result};
use serde_json::{json, Map, Value};

// ------------------------------------------------------------------ helpers

pub(super) fn synth_call_id() -> String {
    synthetic_id("call_")
}

/// Parse tool-call arguments as sent on the wire: a JSON string normally (some servers
/// send the object itself). Empty means no arguments; invalid JSON stays a string.
pub(super) fn parse_arguments(v: Option<&Value>) -> Value {
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
pub(super) fn assistant_message(parts: &[Part]) -> Option<Map<String, Value>> {
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

#[cfg(test)]
mod tests;
