//! A Responses API request: checked at the edge ([`parse_request`]) and read into a
//! [`Conversation`] ([`ResponsesRequest::conversation`]), with the items of a previous
//! stored response first.

use crate::canonical::{
    Conversation, ImageSource, Message, Part, ResponseFormat, Role, Text, Thinking, Tool, ToolChoice,
};
use crate::dialect::openai::{check, parse_object, required_model, wrong};
use crate::dialect::Shape;
use crate::error::{Error, Result};
use serde_json::{json, Map, Value};

/// A checked `POST /v1/responses` body.
#[derive(Debug, Clone)]
pub struct ResponsesRequest {
    /// The model as the client named it: `provider/model`, a bare model, or a route.
    pub model: String,
    pub stream: bool,
    /// `store` as asked (OpenAI's default is true).
    pub store: bool,
    pub previous_response_id: Option<String>,
    body: Map<String, Value>,
}

/// The optional top-level fields whose type is checked (`null` always passes).
const FIELDS: &[(&str, Shape)] = &[
    ("input", Shape::StringOrArray),
    ("instructions", Shape::String),
    ("stream", Shape::Bool),
    ("store", Shape::Bool),
    ("previous_response_id", Shape::String),
    ("tools", Shape::Array),
    ("tool_choice", Shape::StringOrObject),
    ("parallel_tool_calls", Shape::Bool),
    ("text", Shape::Object),
    ("reasoning", Shape::Object),
    ("temperature", Shape::Number),
    ("top_p", Shape::Number),
    ("max_output_tokens", Shape::Integer),
    ("metadata", Shape::Object),
    ("user", Shape::String),
    ("safety_identifier", Shape::String),
    ("background", Shape::Bool),
    ("include", Shape::Array),
    ("truncation", Shape::String),
    ("service_tier", Shape::String),
    ("prompt_cache_key", Shape::String),
    ("stream_options", Shape::Object),
    ("top_logprobs", Shape::Integer),
    ("max_tool_calls", Shape::Integer),
];

/// Request features the gateway cannot serve: refused rather than silently dropped.
const REFUSED: &[(&str, &str)] = &[
    ("conversation", "conversations are not supported by this gateway; use previous_response_id or send the items"),
    ("prompt", "stored prompt templates are not supported by this gateway; send the input itself"),
];

/// Check a `/v1/responses` body and lift out what the handler needs before the exchange.
pub fn parse_request(body: &[u8]) -> Result<ResponsesRequest> {
    // The OpenAI dialect's own checks: the same wording and error shapes as chat completions.
    let map = parse_object(body)?;
    let model = required_model(&map)?;
    for &(key, shape) in FIELDS {
        check(&map, key, shape)?;
    }
    for &(key, why) in REFUSED {
        if map.get(key).is_some_and(|v| !v.is_null()) {
            return Err(Error::invalid(key, why));
        }
    }
    if map.get("background").and_then(Value::as_bool) == Some(true) {
        return Err(Error::invalid("background", "background responses are not supported by this gateway"));
    }
    for (key, lo, hi) in [("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)] {
        if let Some(x) = map.get(key).and_then(Value::as_f64).filter(|x| !(lo..=hi).contains(x)) {
            return Err(Error::invalid(key, format!("'{key}' must be between {lo} and {hi}, got {x}")));
        }
    }
    if map.get("max_output_tokens").and_then(Value::as_i64).is_some_and(|n| n < 1) {
        return Err(Error::invalid("max_output_tokens", "'max_output_tokens' must be at least 1"));
    }
    let previous_response_id = map.get("previous_response_id").and_then(Value::as_str).map(str::to_string);
    let input_empty = match map.get("input") {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    if input_empty && previous_response_id.is_none() {
        return Err(Error::invalid("input", "you must provide an input parameter"));
    }
    let req = ResponsesRequest {
        model,
        stream: map.get("stream").and_then(Value::as_bool).unwrap_or(false),
        store: map.get("store").and_then(Value::as_bool).unwrap_or(true),
        previous_response_id,
        body: map,
    };
    // Tools, tool choice and format are checked now, before any stored response is read.
    let mut conv = Conversation::default();
    req.settings(&mut conv)?;
    Ok(req)
}

impl ResponsesRequest {
    /// This request's own input as items: a string is one user message.
    pub fn input_items(&self) -> Vec<Value> {
        match self.body.get("input") {
            Some(Value::String(s)) => {
                vec![json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": s}]})]
            }
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        }
    }

    /// The conversation: `history` (a previous response's input and output items), then this
    /// request's input, with this request's instructions and settings.
    pub fn conversation(&self, history: &[Value], input: &[Value]) -> Result<Conversation> {
        let mut conv = Conversation::default();
        if let Some(s) = self.body.get("instructions").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            conv.system.push(Text { text: s.to_string(), cache_control: None });
        }
        for (i, item) in history.iter().enumerate() {
            add_item(&mut conv, item, &format!("previous_response_id (stored item {i})"))?;
        }
        for (i, item) in input.iter().enumerate() {
            add_item(&mut conv, item, &format!("input[{i}]"))?;
        }
        if conv.messages.is_empty() {
            return Err(Error::invalid("input", "the input holds no message to answer"));
        }
        self.settings(&mut conv)?;
        Ok(conv)
    }

    /// Everything but the items: tools, tool choice, format, reasoning, limits, sampling.
    fn settings(&self, conv: &mut Conversation) -> Result<()> {
        let b = &self.body;
        if let Some(tools) = b.get("tools").and_then(Value::as_array) {
            for (i, t) in tools.iter().enumerate() {
                conv.tools.push(tool(t, i)?);
            }
        }
        conv.tool_choice = match b.get("tool_choice") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Any,
                other => {
                    return Err(Error::invalid(
                        "tool_choice",
                        format!("'{other}' is not a valid tool_choice; expected auto, none, required or a function"),
                    ))
                }
            }),
            Some(v) => match (v.get("type").and_then(Value::as_str), v.get("name").and_then(Value::as_str)) {
                (Some("function"), Some(name)) => Some(ToolChoice::Tool(name.to_string())),
                _ => {
                    return Err(Error::invalid(
                        "tool_choice",
                        "'tool_choice' must be auto, none, required or {\"type\":\"function\",\"name\":…}",
                    ))
                }
            },
        };
        conv.parallel_tool_calls = b.get("parallel_tool_calls").and_then(Value::as_bool);
        if let Some(format) = b.get("text").and_then(|t| t.get("format")).filter(|f| !f.is_null()) {
            conv.response_format = response_format(format)?;
        }
        conv.max_output_tokens = b.get("max_output_tokens").and_then(Value::as_u64);
        conv.temperature = b.get("temperature").and_then(Value::as_f64);
        conv.top_p = b.get("top_p").and_then(Value::as_f64);
        conv.thinking = match b.get("reasoning").and_then(|r| r.get("effort")) {
            None | Some(Value::Null) => None,
            Some(Value::String(e)) if e == "none" => Some(Thinking::Disabled),
            Some(Value::String(e)) => Some(Thinking::Effort(e.clone())),
            Some(other) => return Err(wrong("reasoning.effort", "a string", other)),
        };
        conv.user =
            ["user", "safety_identifier"].iter().find_map(|k| b.get(*k).and_then(Value::as_str)).map(Into::into);
        Ok(())
    }

    /// The request's settings as a Response object repeats them.
    pub(super) fn echo(&self) -> Map<String, Value> {
        let b = &self.body;
        let given = |k: &str| b.get(k).filter(|v| !v.is_null()).cloned();
        let mut e = Map::new();
        e.insert("instructions".into(), given("instructions").unwrap_or(Value::Null));
        e.insert("tools".into(), given("tools").unwrap_or_else(|| json!([])));
        e.insert("tool_choice".into(), given("tool_choice").unwrap_or_else(|| json!("auto")));
        e.insert("parallel_tool_calls".into(), given("parallel_tool_calls").unwrap_or(Value::Bool(true)));
        e.insert("text".into(), given("text").unwrap_or_else(|| json!({"format": {"type": "text"}})));
        e.insert("reasoning".into(), given("reasoning").unwrap_or_else(|| json!({"effort": null, "summary": null})));
        for k in ["temperature", "top_p", "max_output_tokens", "previous_response_id", "user"] {
            e.insert(k.into(), given(k).unwrap_or(Value::Null));
        }
        e.insert("metadata".into(), given("metadata").unwrap_or_else(|| json!({})));
        e.insert("truncation".into(), given("truncation").unwrap_or_else(|| json!("disabled")));
        e
    }
}

fn tool(t: &Value, i: usize) -> Result<Tool> {
    let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "function" {
        return Err(Error::invalid(
            &format!("tools[{i}].type"),
            format!("tool type '{kind}' is not supported by this gateway; only function tools are"),
        ));
    }
    let Some(name) = t.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
        return Err(Error::invalid(&format!("tools[{i}].name"), "each function tool needs 'name' (a string)"));
    };
    Ok(Tool {
        name: name.to_string(),
        description: t.get("description").and_then(Value::as_str).map(str::to_string),
        parameters: t
            .get("parameters")
            .filter(|p| !p.is_null())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        cache_control: None,
    })
}

fn response_format(f: &Value) -> Result<ResponseFormat> {
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let Some(schema) = f.get("schema").filter(|s| s.is_object()) else {
                return Err(Error::invalid("text.format.schema", "a json_schema format needs 'schema' (an object)"));
            };
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                return Err(Error::invalid("text.format.name", "a json_schema format needs 'name' (a string)"));
            };
            Ok(ResponseFormat::JsonSchema {
                name: name.to_string(),
                schema: schema.clone(),
                strict: f.get("strict").and_then(Value::as_bool),
            })
        }
        _ => {
            Err(Error::invalid("text.format.type", "'text.format.type' must be one of text, json_object, json_schema"))
        }
    }
}

/// Tool-call arguments as sent (a JSON string): empty means none, invalid JSON stays a string
/// (rendered back verbatim), as the chat dialect reads them.
fn arguments(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        Some(other) => other.clone(),
    }
}

/// Append parts to the conversation's last turn if it has this role, else as a new turn:
/// an assistant's reasoning, text and calls arrive as separate items but are one turn, and
/// so are a round of tool outputs.
fn push(conv: &mut Conversation, role: Role, parts: Vec<Part>) {
    if parts.is_empty() {
        return;
    }
    match conv.messages.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => conv.messages.push(Message { role, parts }),
    }
}

fn string_field<'a>(obj: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(wrong(&format!("{at}.{key}"), "a string", other)),
        None => Err(Error::invalid(&format!("{at}.{key}"), format!("'{at}' needs '{key}' (a string)"))),
    }
}

/// One input item into the conversation. `at` names it in errors.
fn add_item(conv: &mut Conversation, item: &Value, at: &str) -> Result<()> {
    let Some(obj) = item.as_object() else {
        return Err(wrong(at, "an object", item));
    };
    let kind = match obj.get("type") {
        None | Some(Value::Null) => "message",
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(wrong(&format!("{at}.type"), "a string", other)),
    };
    match kind {
        "message" => {
            let role = string_field(obj, "role", at)?;
            let content = obj.get("content");
            match role {
                "user" => push(conv, Role::User, content_parts(content, at, true)?),
                "assistant" => {
                    // Empty text next to tool calls means nothing (and Anthropic refuses it).
                    let parts = content_parts(content, at, false)?
                        .into_iter()
                        .filter(|p| !matches!(p, Part::Text(t) if t.text.is_empty()))
                        .collect();
                    push(conv, Role::Assistant, parts)
                }
                // Wherever they appear, in order: the other dialects have one system slot.
                "system" | "developer" => {
                    conv.system.extend(content_parts(content, at, false)?.into_iter().filter_map(|p| match p {
                        Part::Text(t) => Some(t),
                        _ => None,
                    }))
                }
                other => {
                    return Err(Error::invalid(
                        &format!("{at}.role"),
                        format!("'{other}' is not a valid role; expected user, assistant, system or developer"),
                    ))
                }
            }
        }
        "function_call" => {
            let call_id = string_field(obj, "call_id", at)?;
            let name = string_field(obj, "name", at)?;
            let part = Part::ToolCall {
                id: call_id.to_string(),
                name: name.to_string(),
                arguments: arguments(obj.get("arguments")),
            };
            push(conv, Role::Assistant, vec![part]);
        }
        "function_call_output" => {
            let call_id = string_field(obj, "call_id", at)?;
            let content = match obj.get("output") {
                Some(Value::String(s)) => vec![Part::Text(Text { text: s.clone(), cache_control: None })],
                Some(v @ Value::Array(_)) => content_parts(Some(v), &format!("{at}.output"), true)?,
                Some(other) => return Err(wrong(&format!("{at}.output"), "a string or an array", other)),
                None => return Err(Error::invalid(&format!("{at}.output"), "a function_call_output needs 'output'")),
            };
            let part = Part::ToolResult { call_id: call_id.to_string(), content, is_error: false, cache_control: None };
            push(conv, Role::User, vec![part]);
        }
        "reasoning" => {
            // The reasoning text itself if the item has it, else its summary.
            let texts = |key: &str| -> String {
                obj.get(key)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n\n")
                    })
                    .unwrap_or_default()
            };
            let mut text = texts("content");
            if text.is_empty() {
                text = texts("summary");
            }
            if !text.is_empty() {
                push(conv, Role::Assistant, vec![Part::Thinking { text, signature: None }]);
            }
        }
        other => {
            return Err(Error::invalid(
                &format!("{at}.type"),
                format!(
                    "input item type '{other}' is not supported by this gateway; \
                     expected message, function_call, function_call_output or reasoning"
                ),
            ))
        }
    }
    Ok(())
}

/// A message's content: a string, or parts (`input_text`, `output_text`, `refusal`, and for
/// user turns `input_image`).
fn content_parts(content: Option<&Value>, at: &str, images: bool) -> Result<Vec<Part>> {
    let parts = match content {
        Some(Value::String(s)) => return Ok(vec![Part::Text(Text { text: s.clone(), cache_control: None })]),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(wrong(&format!("{at}.content"), "a string or an array", other)),
        None => return Err(Error::invalid(&format!("{at}.content"), "a message needs 'content'")),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let at = format!("{at}.content[{j}]");
        let Some(obj) = p.as_object() else {
            return Err(wrong(&at, "an object", p));
        };
        let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "input_text" | "output_text" | "text" => {
                let text = string_field(obj, "text", &at)?;
                out.push(Part::Text(Text { text: text.to_string(), cache_control: None }));
            }
            "refusal" => {
                let text = string_field(obj, "refusal", &at)?;
                out.push(Part::Text(Text { text: text.to_string(), cache_control: None }));
            }
            "input_image" if images => {
                let url = match obj.get("image_url") {
                    Some(Value::String(u)) => u,
                    _ if obj.get("file_id").is_some_and(|f| !f.is_null()) => {
                        return Err(Error::invalid(
                            &format!("{at}.file_id"),
                            "uploaded files are not supported by this gateway; send the image as image_url",
                        ))
                    }
                    _ => return Err(Error::invalid(&format!("{at}.image_url"), "an input_image needs 'image_url'")),
                };
                out.push(Part::Image { source: ImageSource::from_url(url), cache_control: None });
            }
            other => {
                return Err(Error::invalid(
                    &format!("{at}.type"),
                    format!("content part type '{other}' is not supported here by this gateway"),
                ))
            }
        }
    }
    Ok(out)
}
