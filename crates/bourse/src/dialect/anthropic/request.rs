//! The request side of the Anthropic dialect: validating a client's `/v1/messages` body,
//! reading it into a [`Conversation`], and rendering a [`Conversation`] as a body an
//! Anthropic upstream accepts.

use crate::canonical::{
    ChatRequest, Conversation, Dialect, ImageSource, Message, Needs, Part, ResponseFormat, Role, Text, Thinking, Tool,
    ToolChoice, JSON_TOOL,
};
use crate::dialect::Shape;
use crate::error::{Error, ErrorKind, Result};
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// `max_tokens` sent upstream when the conversation sets none (Anthropic requires it).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Anthropic's smallest accepted `thinking.budget_tokens`.
const MIN_THINKING_BUDGET: u64 = 1024;

// ------------------------------------------------------------------ validation

/// `{param}: Field required`, as Anthropic words a missing field.
fn field_required(param: &str) -> Error {
    Error::invalid(param, format!("{param}: Field required"))
}

/// `{param}: Input should be {what}`, as Anthropic words a wrong type or value.
fn should_be(param: &str, what: &str) -> Error {
    Error::invalid(param, format!("{param}: Input should be {what}"))
}

/// What Anthropic says a field should have been.
fn expected(shape: Shape) -> &'static str {
    match shape {
        Shape::Bool => "a valid boolean",
        Shape::Number => "a valid number",
        Shape::Integer => "a valid integer",
        Shape::String => "a valid string",
        Shape::Object => "a valid dictionary",
        Shape::Array => "a valid list",
        Shape::StringOrArray => "a valid string or list",
        Shape::StringOrObject => "a valid string or dictionary",
    }
}

fn path(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

/// An optional field: absent or `null` is fine, anything else must have `shape`.
fn optional<'a>(obj: &'a Map<String, Value>, key: &str, base: &str, shape: Shape) -> Result<Option<&'a Value>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) if shape.matches(v) => Ok(Some(v)),
        Some(_) => Err(should_be(&path(base, key), expected(shape))),
    }
}

/// A required field of the given shape.
fn required<'a>(obj: &'a Map<String, Value>, key: &str, base: &str, shape: Shape) -> Result<&'a Value> {
    match obj.get(key) {
        None => Err(field_required(&path(base, key))),
        Some(v) if shape.matches(v) => Ok(v),
        Some(_) => Err(should_be(&path(base, key), expected(shape))),
    }
}

fn required_str<'a>(obj: &'a Map<String, Value>, key: &str, base: &str) -> Result<&'a str> {
    Ok(required(obj, key, base, Shape::String)?.as_str().unwrap_or_default())
}

fn as_object<'a>(v: &'a Value, param: &str) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| should_be(param, "a valid dictionary"))
}

fn range(map: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<()> {
    if let Some(x) = map.get(key).and_then(Value::as_f64) {
        if x < lo {
            return Err(should_be(key, &format!("greater than or equal to {lo}")));
        }
        if x > hi {
            return Err(should_be(key, &format!("less than or equal to {hi}")));
        }
    }
    Ok(())
}

/// Validate one content block at `at` (e.g. `messages[0].content[2]`). Unknown block
/// types only need a `type`; they pass through to an Anthropic upstream.
fn validate_block(block: &Value, at: &str, vision: &mut bool) -> Result<()> {
    let obj = as_object(block, at)?;
    let kind = required_str(obj, "type", at)?;
    optional(obj, "cache_control", at, Shape::Object)?;
    match kind {
        "text" => {
            required(obj, "text", at, Shape::String)?;
        }
        "image" => {
            *vision = true;
            let src_at = path(at, "source");
            let src = as_object(required(obj, "source", at, Shape::Object)?, &src_at)?;
            match required_str(src, "type", &src_at)? {
                "base64" => {
                    required(src, "media_type", &src_at, Shape::String)?;
                    required(src, "data", &src_at, Shape::String)?;
                }
                "url" => {
                    required(src, "url", &src_at, Shape::String)?;
                }
                "file" => {
                    required(src, "file_id", &src_at, Shape::String)?;
                }
                _ => return Err(should_be(&path(&src_at, "type"), "'base64', 'url' or 'file'")),
            }
        }
        "document" => {
            required(obj, "source", at, Shape::Object)?;
        }
        "tool_use" => {
            required(obj, "id", at, Shape::String)?;
            required(obj, "name", at, Shape::String)?;
            required(obj, "input", at, Shape::Object)?;
        }
        "tool_result" => {
            required(obj, "tool_use_id", at, Shape::String)?;
            match obj.get("content") {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(Value::Array(blocks)) => {
                    for (i, b) in blocks.iter().enumerate() {
                        validate_block(b, &format!("{at}.content[{i}]"), vision)?;
                    }
                }
                Some(_) => return Err(should_be(&path(at, "content"), "a valid string or a list of content blocks")),
            }
            optional(obj, "is_error", at, Shape::Bool)?;
        }
        "thinking" => {
            required(obj, "thinking", at, Shape::String)?;
            required(obj, "signature", at, Shape::String)?;
        }
        "redacted_thinking" => {
            required(obj, "data", at, Shape::String)?;
        }
        _ => {}
    }
    Ok(())
}

/// `output_config.format` / `output_format`: `{type:"json_schema", schema:{…}}`.
/// Returns whether it asks for JSON.
fn validate_format(format: Option<&Value>, at: &str) -> Result<bool> {
    let Some(f) = format else { return Ok(false) };
    let obj = as_object(f, at)?;
    match required_str(obj, "type", at)? {
        "json_schema" => {
            required(obj, "schema", at, Shape::Object)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Validate a `/v1/messages` body (as the official Anthropic SDK sends it) and lift out
/// what the gateway needs.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest> {
    let map = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(Error::new(ErrorKind::InvalidRequest, "the request body must be a JSON object")),
        Err(e) => return Err(Error::new(ErrorKind::InvalidJson, format!("the request body is not valid JSON: {e}"))),
    };
    let model = required_str(&map, "model", "")?;
    if model.trim().is_empty() {
        return Err(Error::invalid("model", "model: String should have at least 1 character"));
    }
    let model = model.to_string();
    let max_tokens = required(&map, "max_tokens", "", Shape::Integer)?;
    let max_tokens = match max_tokens.as_u64() {
        Some(n) if n >= 1 => n,
        _ => return Err(should_be("max_tokens", "greater than or equal to 1")),
    };
    let messages = required(&map, "messages", "", Shape::Array)?.as_array().map(Vec::as_slice).unwrap_or_default();
    if messages.is_empty() {
        return Err(Error::invalid("messages", "messages: at least one message is required"));
    }
    let mut vision = false;
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let obj = as_object(m, &at)?;
        match required_str(obj, "role", &at)? {
            "user" | "assistant" => {}
            _ => return Err(should_be(&path(&at, "role"), "'user' or 'assistant'")),
        }
        match obj.get("content") {
            Some(Value::String(_)) => {}
            Some(Value::Array(blocks)) => {
                for (j, b) in blocks.iter().enumerate() {
                    validate_block(b, &format!("{at}.content[{j}]"), &mut vision)?;
                }
            }
            None => return Err(field_required(&path(&at, "content"))),
            Some(_) => return Err(should_be(&path(&at, "content"), "a valid string or a list of content blocks")),
        }
    }
    match map.get("system") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(Value::Array(blocks)) => {
            for (i, b) in blocks.iter().enumerate() {
                let at = format!("system[{i}]");
                validate_block(b, &at, &mut vision)?;
                if b.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(should_be(&path(&at, "type"), "'text'"));
                }
            }
        }
        Some(_) => return Err(should_be("system", "a valid string or a list of text blocks")),
    }
    for (key, shape) in [
        ("stream", Shape::Bool),
        ("temperature", Shape::Number),
        ("top_p", Shape::Number),
        ("top_k", Shape::Integer),
        ("stop_sequences", Shape::Array),
        ("tools", Shape::Array),
        ("tool_choice", Shape::Object),
        ("metadata", Shape::Object),
        ("thinking", Shape::Object),
        ("output_config", Shape::Object),
        ("output_format", Shape::Object),
    ] {
        optional(&map, key, "", shape)?;
    }
    range(&map, "temperature", 0.0, 1.0)?;
    range(&map, "top_p", 0.0, 1.0)?;
    range(&map, "top_k", 0.0, f64::INFINITY)?;
    if let Some(Value::Array(stops)) = map.get("stop_sequences") {
        if let Some(i) = stops.iter().position(|s| !s.is_string()) {
            return Err(should_be(&format!("stop_sequences[{i}]"), "a valid string"));
        }
    }
    if let Some(Value::Array(tools)) = map.get("tools") {
        for (i, t) in tools.iter().enumerate() {
            let at = format!("tools[{i}]");
            let obj = as_object(t, &at)?;
            required(obj, "name", &at, Shape::String)?;
            optional(obj, "description", &at, Shape::String)?;
            optional(obj, "cache_control", &at, Shape::Object)?;
            // Server tools (`web_search_20250305`, …) are configured by their `type` and
            // carry no schema; custom tools need one.
            let kind = optional(obj, "type", &at, Shape::String)?.and_then(Value::as_str);
            if matches!(kind, None | Some("custom")) {
                required(obj, "input_schema", &at, Shape::Object)?;
            }
        }
    }
    if let Some(tc) = map.get("tool_choice").and_then(Value::as_object) {
        match required_str(tc, "type", "tool_choice")? {
            "auto" | "any" | "none" => {}
            "tool" => {
                required(tc, "name", "tool_choice", Shape::String)?;
            }
            _ => return Err(should_be("tool_choice.type", "'auto', 'any', 'tool' or 'none'")),
        }
        optional(tc, "disable_parallel_tool_use", "tool_choice", Shape::Bool)?;
    }
    if let Some(meta) = map.get("metadata").and_then(Value::as_object) {
        optional(meta, "user_id", "metadata", Shape::String)?;
    }
    if let Some(th) = map.get("thinking").and_then(Value::as_object) {
        match required_str(th, "type", "thinking")? {
            "enabled" => {
                required(th, "budget_tokens", "thinking", Shape::Integer)?;
            }
            "disabled" | "adaptive" => {}
            _ => return Err(should_be("thinking.type", "'enabled', 'disabled' or 'adaptive'")),
        }
    }
    let mut json_schema = false;
    if let Some(oc) = map.get("output_config").and_then(Value::as_object) {
        let format = optional(oc, "format", "output_config", Shape::Object)?;
        json_schema |= validate_format(format, "output_config.format")?;
    }
    json_schema |= validate_format(map.get("output_format").filter(|v| !v.is_null()), "output_format")?;
    let stream = map.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let needs =
        Needs { tools: map.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty()), json_schema, vision };
    // Anthropic streams always carry usage (message_start and message_delta).
    Ok(ChatRequest::new(Dialect::Anthropic, model, stream, true, Some(max_tokens), needs, None).with_body(map))
}

/// Same-dialect pass-through: the client's object with only `model` replaced.
pub fn passthrough_body(req: &mut ChatRequest, upstream_model: &str) -> Vec<u8> {
    let body = req.body_mut();
    body.insert("model".into(), Value::String(upstream_model.to_string()));
    serde_json::to_vec(body).unwrap_or_default()
}

// ------------------------------------------------------------------ request -> conversation

fn cache_control(obj: &Map<String, Value>) -> Option<Value> {
    obj.get("cache_control").filter(|v| !v.is_null()).cloned()
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

fn not_translatable(param: &str, what: &str) -> Error {
    Error::invalid(param, format!("{param}: {what} can only be sent to an Anthropic model"))
}

fn image_part(obj: &Map<String, Value>, at: &str) -> Result<Part> {
    let src_at = path(at, "source");
    let src = as_object(required(obj, "source", at, Shape::Object)?, &src_at)?;
    let source = match required_str(src, "type", &src_at)? {
        "base64" => ImageSource::Base64 {
            media_type: required_str(src, "media_type", &src_at)?.to_string(),
            data: required_str(src, "data", &src_at)?.to_string(),
        },
        "url" => ImageSource::from_url(required_str(src, "url", &src_at)?),
        other => return Err(not_translatable(&path(&src_at, "type"), &format!("an image with a '{other}' source"))),
    };
    Ok(Part::Image { source, cache_control: cache_control(obj) })
}

/// A plain-text document becomes text; other documents (PDF, files) have no equivalent.
fn document_part(obj: &Map<String, Value>, at: &str) -> Result<Part> {
    let src_at = path(at, "source");
    let src = as_object(required(obj, "source", at, Shape::Object)?, &src_at)?;
    match src.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Part::Text(Text {
            text: required_str(src, "data", &src_at)?.to_string(),
            cache_control: cache_control(obj),
        })),
        other => Err(not_translatable(
            &path(&src_at, "type"),
            &format!("a document with a '{}' source", other.unwrap_or("missing")),
        )),
    }
}

/// Text and image parts of a tool result.
fn tool_result_content(content: Option<&Value>, at: &str) -> Result<Vec<Part>> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![Part::Text(Text { text: s.clone(), cache_control: None })]),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let at = format!("{at}[{i}]");
                let obj = as_object(b, &at)?;
                match required_str(obj, "type", &at)? {
                    "text" => Ok(Part::Text(Text {
                        text: required_str(obj, "text", &at)?.to_string(),
                        cache_control: cache_control(obj),
                    })),
                    "image" => image_part(obj, &at),
                    "document" => document_part(obj, &at),
                    other => Err(not_translatable(&path(&at, "type"), &format!("a '{other}' block in a tool result"))),
                }
            })
            .collect(),
        Some(_) => Err(should_be(at, "a valid string or a list of content blocks")),
    }
}

fn block_part(block: &Value, at: &str, role: Role) -> Result<Part> {
    let obj = as_object(block, at)?;
    let kind = required_str(obj, "type", at)?;
    let only = |wanted: Role| {
        if role == wanted {
            Ok(())
        } else {
            Err(Error::invalid(
                &path(at, "type"),
                format!("{}: '{kind}' blocks are not allowed in {} messages", path(at, "type"), role_name(role)),
            ))
        }
    };
    match kind {
        "text" => {
            Ok(Part::Text(Text { text: required_str(obj, "text", at)?.to_string(), cache_control: cache_control(obj) }))
        }
        "image" => {
            only(Role::User)?;
            image_part(obj, at)
        }
        "document" => {
            only(Role::User)?;
            document_part(obj, at)
        }
        "tool_use" => {
            only(Role::Assistant)?;
            Ok(Part::ToolCall {
                id: required_str(obj, "id", at)?.to_string(),
                name: required_str(obj, "name", at)?.to_string(),
                arguments: required(obj, "input", at, Shape::Object)?.clone(),
            })
        }
        "tool_result" => {
            only(Role::User)?;
            Ok(Part::ToolResult {
                call_id: required_str(obj, "tool_use_id", at)?.to_string(),
                content: tool_result_content(obj.get("content"), &path(at, "content"))?,
                is_error: obj.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                cache_control: cache_control(obj),
            })
        }
        "thinking" => {
            only(Role::Assistant)?;
            Ok(Part::Thinking {
                text: required_str(obj, "thinking", at)?.to_string(),
                signature: obj.get("signature").and_then(Value::as_str).map(str::to_string),
            })
        }
        "redacted_thinking" => {
            only(Role::Assistant)?;
            Ok(Part::RedactedThinking { data: required_str(obj, "data", at)?.to_string() })
        }
        other => Err(not_translatable(&path(at, "type"), &format!("a '{other}' block"))),
    }
}

/// The JSON format a request asks for: `output_config.format` (current) or the legacy
/// `output_format`.
fn response_format(body: &Map<String, Value>) -> ResponseFormat {
    let format = body.get("output_config").and_then(|c| c.get("format")).filter(|f| f.is_object());
    let format = format.or_else(|| body.get("output_format").filter(|f| f.is_object()));
    match format {
        Some(f) if f.get("type").and_then(Value::as_str) == Some("json_schema") => ResponseFormat::JsonSchema {
            name: "response".into(),
            schema: f.get("schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
            strict: None,
        },
        _ => ResponseFormat::Text,
    }
}

/// Anthropic request object (already validated) -> canonical conversation. Content the
/// other dialects cannot express (server tools, PDF documents, file sources, unknown
/// block types) is refused with a 400 naming the parameter.
pub fn conversation(body: &Map<String, Value>) -> Result<Conversation> {
    let mut conv = Conversation::default();
    match body.get("system") {
        Some(Value::String(s)) if !s.is_empty() => conv.system.push(Text { text: s.clone(), cache_control: None }),
        Some(Value::Array(blocks)) => {
            for (i, b) in blocks.iter().enumerate() {
                let at = format!("system[{i}]");
                let obj = as_object(b, &at)?;
                conv.system.push(Text {
                    text: required_str(obj, "text", &at)?.to_string(),
                    cache_control: cache_control(obj),
                });
            }
        }
        _ => {}
    }
    let messages = body.get("messages").and_then(Value::as_array).ok_or_else(|| field_required("messages"))?;
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let obj = as_object(m, &at)?;
        let role = match required_str(obj, "role", &at)? {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => return Err(should_be(&path(&at, "role"), "'user' or 'assistant'")),
        };
        let parts = match obj.get("content") {
            Some(Value::String(s)) => vec![Part::Text(Text { text: s.clone(), cache_control: None })],
            Some(Value::Array(blocks)) => blocks
                .iter()
                .enumerate()
                .map(|(j, b)| block_part(b, &format!("{at}.content[{j}]"), role))
                .collect::<Result<_>>()?,
            _ => return Err(should_be(&path(&at, "content"), "a valid string or a list of content blocks")),
        };
        conv.messages.push(Message { role, parts });
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        for (i, t) in tools.iter().enumerate() {
            let at = format!("tools[{i}]");
            let obj = as_object(t, &at)?;
            match obj.get("type").and_then(Value::as_str) {
                None | Some("custom") => {}
                Some(kind) => return Err(not_translatable(&path(&at, "type"), &format!("the server tool '{kind}'"))),
            }
            conv.tools.push(Tool {
                name: required_str(obj, "name", &at)?.to_string(),
                description: obj.get("description").and_then(Value::as_str).map(str::to_string),
                parameters: obj.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
                cache_control: cache_control(obj),
            });
        }
    }
    if let Some(tc) = body.get("tool_choice").and_then(Value::as_object) {
        conv.tool_choice = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => Some(ToolChoice::Auto),
            Some("any") => Some(ToolChoice::Any),
            Some("none") => Some(ToolChoice::None),
            Some("tool") => Some(ToolChoice::Tool(required_str(tc, "name", "tool_choice")?.to_string())),
            _ => return Err(should_be("tool_choice.type", "'auto', 'any', 'tool' or 'none'")),
        };
        conv.parallel_tool_calls = tc.get("disable_parallel_tool_use").and_then(Value::as_bool).map(|d| !d);
    }
    conv.response_format = response_format(body);
    conv.max_output_tokens = body.get("max_tokens").and_then(Value::as_u64);
    conv.temperature = body.get("temperature").and_then(Value::as_f64);
    conv.top_p = body.get("top_p").and_then(Value::as_f64);
    conv.top_k = body.get("top_k").and_then(Value::as_u64);
    if let Some(stops) = body.get("stop_sequences").and_then(Value::as_array) {
        conv.stop = stops.iter().filter_map(Value::as_str).map(str::to_string).collect();
    }
    if let Some(th) = body.get("thinking").and_then(Value::as_object) {
        conv.thinking = match th.get("type").and_then(Value::as_str) {
            Some("enabled") => Some(Thinking::Budget(th.get("budget_tokens").and_then(Value::as_u64).unwrap_or(0))),
            Some("adaptive") => Some(Thinking::Adaptive),
            Some("disabled") => Some(Thinking::Disabled),
            _ => return Err(should_be("thinking.type", "'enabled', 'disabled' or 'adaptive'")),
        };
    }
    conv.user = body.get("metadata").and_then(|m| m.get("user_id")).and_then(Value::as_str).map(str::to_string);
    Ok(conv)
}

// ------------------------------------------------------------------ conversation -> request

/// A tool id Anthropic accepts (`^[a-zA-Z0-9_-]+$`). Other vendors' ids (Kimi's
/// `functions.get_weather:0`) are mapped deterministically, so a tool_use and the
/// tool_result answering it still match.
fn tool_id(id: &str) -> Cow<'_, str> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if id.is_empty() {
        Cow::Borrowed("toolu_unnamed")
    } else if id.chars().all(ok) {
        Cow::Borrowed(id)
    } else {
        Cow::Owned(id.chars().map(|c| if ok(c) { c } else { '_' }).collect())
    }
}

/// Tool arguments as a `tool_use.input` object. Arguments that are a JSON string holding
/// an object (an upstream that never parsed them) are parsed; anything else that is not
/// an object becomes `{}`, which is all Anthropic accepts.
pub(super) fn tool_input(args: &Value) -> Value {
    match args {
        Value::Object(_) => args.clone(),
        Value::String(s) => serde_json::from_str::<Value>(s).ok().filter(Value::is_object).unwrap_or_else(|| json!({})),
        _ => json!({}),
    }
}

fn image_source(source: &ImageSource) -> Value {
    match source {
        ImageSource::Base64 { media_type, data } => json!({"type": "base64", "media_type": media_type, "data": data}),
        ImageSource::Url(url) => json!({"type": "url", "url": url}),
    }
}

fn with_cache_control(mut block: Value, cc: &Option<Value>) -> Value {
    if let (Some(cc), Some(obj)) = (cc, block.as_object_mut()) {
        obj.insert("cache_control".into(), cc.clone());
    }
    block
}

/// Anthropic rejects text blocks without non-whitespace text.
fn text_block(t: &Text) -> Option<Value> {
    (!t.text.trim().is_empty()).then(|| with_cache_control(json!({"type": "text", "text": t.text}), &t.cache_control))
}

/// The block for one part, or None for parts Anthropic cannot take: empty text and
/// thinking without a signature (another vendor's reasoning, which Anthropic would
/// refuse as unsigned).
fn part_block(part: &Part) -> Option<Value> {
    match part {
        Part::Text(t) => text_block(t),
        Part::Image { source, cache_control } => {
            Some(with_cache_control(json!({"type": "image", "source": image_source(source)}), cache_control))
        }
        Part::ToolCall { id, name, arguments } => {
            Some(json!({"type": "tool_use", "id": tool_id(id), "name": name, "input": tool_input(arguments)}))
        }
        Part::ToolResult { call_id, content, is_error, cache_control } => {
            let mut block = json!({"type": "tool_result", "tool_use_id": tool_id(call_id)});
            let blocks: Vec<Value> = content
                .iter()
                .filter_map(|p| match p {
                    Part::Text(t) => text_block(t),
                    Part::Image { .. } => part_block(p),
                    _ => None,
                })
                .collect();
            let content = match (content.as_slice(), blocks.len()) {
                (_, 0) => None,
                ([Part::Text(Text { text, cache_control: None })], 1) => Some(Value::String(text.clone())),
                _ => Some(Value::Array(blocks)),
            };
            if let Some(content) = content {
                block["content"] = content;
            }
            if *is_error {
                block["is_error"] = Value::Bool(true);
            }
            Some(with_cache_control(block, cache_control))
        }
        Part::Thinking { text, signature: Some(sig) } => {
            Some(json!({"type": "thinking", "thinking": text, "signature": sig}))
        }
        Part::Thinking { signature: None, .. } => None,
        Part::RedactedThinking { data } => Some(json!({"type": "redacted_thinking", "data": data})),
    }
}

/// Turns as Anthropic requires them: alternating roles (consecutive turns of one role
/// merged, empty turns dropped), tool results first in their user turn, and no trailing
/// whitespace at the end of a final assistant turn (a prefill).
fn render_messages(messages: &[Message]) -> Vec<Value> {
    let mut turns: Vec<(Role, Vec<Value>)> = Vec::new();
    for m in messages {
        let blocks: Vec<Value> = m.parts.iter().filter_map(part_block).collect();
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((role, acc)) if *role == m.role => acc.extend(blocks),
            _ => turns.push((m.role, blocks)),
        }
    }
    for (role, blocks) in &mut turns {
        if *role == Role::User {
            // Stable: tool results keep their order, and so does the rest.
            blocks.sort_by_key(|b| b["type"] != "tool_result");
        }
    }
    if let Some((Role::Assistant, blocks)) = turns.last_mut() {
        if let Some(Value::String(text)) = blocks.last_mut().filter(|b| b["type"] == "text").map(|b| &mut b["text"]) {
            let end = text.trim_end().len();
            text.truncate(end);
        }
    }
    turns.into_iter().map(|(role, content)| json!({"role": role_name(role), "content": content})).collect()
}

/// Thinking budget for an OpenAI-style effort level; None turns thinking off.
fn effort_budget(effort: &str) -> Option<u64> {
    match effort {
        "none" => None,
        "minimal" | "low" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16384),
        "xhigh" => Some(32768),
        _ => Some(4096),
    }
}

/// The `thinking` object, and the budget it sets.
fn render_thinking(thinking: Option<&Thinking>) -> Option<(Value, Option<u64>)> {
    let budget = match thinking? {
        Thinking::Adaptive => return Some((json!({"type": "adaptive"}), None)),
        Thinking::Disabled | Thinking::Budget(0) => return None,
        Thinking::Budget(n) => *n,
        Thinking::Effort(e) => effort_budget(e)?,
    };
    let budget = budget.max(MIN_THINKING_BUDGET);
    Some((json!({"type": "enabled", "budget_tokens": budget}), Some(budget)))
}

fn choice_json(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::Any => json!({"type": "any"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
    }
}

/// Canonical -> Anthropic Messages request body for an upstream, with `model` and
/// `stream` set.
///
/// Besides the shape, this makes the body acceptable to the real API:
/// - `max_tokens` is always present ([`DEFAULT_MAX_TOKENS`]); with thinking it is raised
///   above the budget (by the requested amount) when it would not exceed it.
/// - An effort level becomes a budget: minimal/low 1024, medium 4096, high 16384, xhigh
///   32768 (`none` turns thinking off); budgets below Anthropic's minimum of 1024 are
///   raised to it, a budget of 0 turns thinking off.
/// - With thinking on, Anthropic refuses `temperature`, `top_k`, `top_p` below 0.95 and
///   forced tool use, so those are left out (JSON mode then asks with `auto`).
/// - `temperature` is clamped to Anthropic's 0..=1 (OpenAI allows up to 2).
/// - JSON mode adds [`JSON_TOOL`] (its schema the requested one, `{"type":"object"}` for
///   any object) and forces it when the request has no other tools (or forbade them),
///   else requires some tool (`any`), or keeps a specifically named tool.
pub fn render_request(conv: &Conversation, model: &str, stream: bool) -> Vec<u8> {
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let thinking = render_thinking(conv.thinking.as_ref());
    let mut max_tokens = conv.max_output_tokens.unwrap_or(DEFAULT_MAX_TOKENS).max(1);
    if let Some((_, Some(budget))) = &thinking {
        if max_tokens <= *budget {
            max_tokens += budget;
        }
    }
    out.insert("max_tokens".into(), json!(max_tokens));
    let system: Vec<&Text> = conv.system.iter().filter(|t| !t.text.trim().is_empty()).collect();
    match system.as_slice() {
        [] => {}
        [Text { text, cache_control: None }] => {
            out.insert("system".into(), json!(text));
        }
        texts => {
            out.insert("system".into(), Value::Array(texts.iter().filter_map(|t| text_block(t)).collect()));
        }
    }
    out.insert("messages".into(), Value::Array(render_messages(&conv.messages)));

    let mut tools: Vec<Value> = conv
        .tools
        .iter()
        .map(|t| {
            let mut tool = json!({
                "name": t.name,
                "input_schema": if t.parameters.is_object() { t.parameters.clone() } else { json!({"type": "object", "properties": {}}) },
            });
            if let Some(d) = &t.description {
                tool["description"] = json!(d);
            }
            with_cache_control(tool, &t.cache_control)
        })
        .collect();
    let has_tools = !tools.is_empty();
    let mut choice = conv.tool_choice.as_ref().filter(|_| has_tools).map(choice_json);
    let schema = match &conv.response_format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(json!({"type": "object"})),
        ResponseFormat::JsonSchema { schema, .. } => {
            Some(if schema.is_object() { schema.clone() } else { json!({"type": "object"}) })
        }
    };
    if let Some(schema) = schema {
        tools.push(json!({
            "name": JSON_TOOL,
            "description": "Give your final answer by calling this tool: its input is the answer, a JSON value \
                            following this schema. Do not answer in plain text.",
            "input_schema": schema,
        }));
        choice = Some(match &conv.tool_choice {
            _ if thinking.is_some() => json!({"type": "auto"}),
            Some(ToolChoice::Tool(name)) if has_tools => json!({"type": "tool", "name": name}),
            Some(ToolChoice::None) => json!({"type": "tool", "name": JSON_TOOL}),
            _ if !has_tools => json!({"type": "tool", "name": JSON_TOOL}),
            _ => json!({"type": "any"}),
        });
    } else if thinking.is_some() && matches!(conv.tool_choice, Some(ToolChoice::Any | ToolChoice::Tool(_))) {
        choice = Some(json!({"type": "auto"}));
    }
    if conv.parallel_tool_calls == Some(false) && !tools.is_empty() {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c["type"] != "none" {
            c["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(c) = choice {
            out.insert("tool_choice".into(), c);
        }
    }

    if !conv.stop.is_empty() {
        let stops: Vec<&String> = conv.stop.iter().filter(|s| !s.trim().is_empty()).collect();
        if !stops.is_empty() {
            out.insert("stop_sequences".into(), json!(stops));
        }
    }
    let thinking_on = thinking.is_some();
    if let Some(t) = conv.temperature.filter(|_| !thinking_on) {
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = conv.top_p.filter(|p| !thinking_on || *p >= 0.95) {
        out.insert("top_p".into(), json!(p.clamp(0.0, 1.0)));
    }
    if let Some(k) = conv.top_k.filter(|_| !thinking_on) {
        out.insert("top_k".into(), json!(k));
    }
    if let Some((t, _)) = thinking {
        out.insert("thinking".into(), t);
    }
    if let Some(user) = &conv.user {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    out.insert("stream".into(), Value::Bool(stream));
    serde_json::to_vec(&out).unwrap_or_default()
}
