//! Gemini requests: [`render_request`] renders a [`Conversation`] as a `generateContent`
//! body.
//!
//! What has no Gemini equivalent is dropped when rendering: `user`,
//! `parallel_tool_calls`, `cache_control` markers (Gemini caches implicitly, or through an
//! explicit `cachedContent` resource Bourse does not manage), the JSON schema's `name` and
//! `strict`, and thinking parts (see [`render_request`]).

use crate::canonical::{Conversation, ImageSource, Part, ResponseFormat, Role, Thinking, ToolChoice};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The signature Gemini documents for function calls it did not generate itself (history
/// from another model, or calls whose signature was lost): it skips the thought-signature
/// validation that Gemini 3 enforces on the function calls of a tool loop (a missing
/// signature there is a 400).
pub(super) const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

// ------------------------------------------------------------------ requests

/// Canonical → `generateContent` request body.
///
/// - Consecutive turns of the same role are merged (Gemini wants them alternating), and a
///   turn left with no parts is skipped; empty text parts are dropped (Gemini rejects them).
/// - Tool results become `functionResponse` parts. Gemini needs the function's name there,
///   which canonical results do not carry: it is looked up from the earlier tool call with
///   the same id (the id itself when there is none). Images in a tool result follow the
///   `functionResponse` as parts of the same user turn.
/// - Thinking and redacted-thinking parts are dropped: Gemini does not take reasoning text
///   back, and its thought signatures are opaque bytes attached to the following part, a
///   different mechanism that another vendor's signature would only break. Instead, the
///   first function call of every model turn carries the documented validator-skipping
///   signature, so Gemini 3 accepts tool loops (including ones begun on another model).
pub fn render_request(conv: &Conversation) -> Vec<u8> {
    let mut body = Map::new();

    let system: Vec<Value> =
        conv.system.iter().filter(|t| !t.text.is_empty()).map(|t| json!({"text": t.text})).collect();
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }

    // Tool-call id → function name, filled in conversation order so a result finds the
    // call made before it.
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut contents: Vec<(Role, Vec<Value>)> = Vec::new();
    for message in &conv.messages {
        let mut parts = Vec::new();
        for part in &message.parts {
            match part {
                Part::Text(t) if t.text.is_empty() => {}
                Part::Text(t) => parts.push(json!({"text": t.text})),
                Part::Image { source, .. } => parts.push(image_part(source)),
                Part::ToolCall { id, name, arguments } => {
                    names.insert(id, name);
                    parts.push(json!({"functionCall": {"id": id, "name": name, "args": call_args(arguments)}}));
                }
                Part::ToolResult { call_id, content, is_error, .. } => {
                    let name = names.get(call_id.as_str()).copied().unwrap_or(call_id);
                    let text = content
                        .iter()
                        .filter_map(|p| match p {
                            Part::Text(t) => Some(t.text.as_str()),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    let response = if *is_error {
                        json!({"error": text})
                    } else {
                        match serde_json::from_str::<Value>(&text) {
                            Ok(object @ Value::Object(_)) => object,
                            _ => json!({"content": text}),
                        }
                    };
                    parts.push(json!({"functionResponse": {"id": call_id, "name": name, "response": response}}));
                    for inner in content {
                        if let Part::Image { source, .. } = inner {
                            parts.push(image_part(source));
                        }
                    }
                }
                Part::Thinking { .. } | Part::RedactedThinking { .. } => {}
            }
        }
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((role, existing)) if *role == message.role => existing.extend(parts),
            _ => contents.push((message.role, parts)),
        }
    }
    let contents: Vec<Value> = contents
        .into_iter()
        .map(|(role, mut parts)| {
            if role == Role::Assistant {
                if let Some(call) = parts.iter_mut().find(|p| p.get("functionCall").is_some()) {
                    call["thoughtSignature"] = Value::from(SKIP_SIGNATURE);
                }
            }
            let role = if role == Role::User { "user" } else { "model" };
            json!({"role": role, "parts": parts})
        })
        .collect();
    body.insert("contents".into(), Value::Array(contents));

    if !conv.tools.is_empty() {
        let declarations: Vec<Value> = conv
            .tools
            .iter()
            .map(|t| {
                let mut d = Map::new();
                d.insert("name".into(), Value::from(t.name.as_str()));
                if let Some(description) = &t.description {
                    d.insert("description".into(), Value::from(description.as_str()));
                }
                // `parametersJsonSchema` takes full JSON Schema; the older `parameters`
                // takes only an OpenAPI subset and rejects keywords clients commonly send
                // (`additionalProperties`, `$ref`, `anyOf` in places, ...).
                if !t.parameters.is_null() {
                    d.insert("parametersJsonSchema".into(), t.parameters.clone());
                }
                Value::Object(d)
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
        // A calling mode without declarations is meaningless, so only set it with tools.
        if let Some(choice) = &conv.tool_choice {
            let config = match choice {
                ToolChoice::Auto => json!({"mode": "AUTO"}),
                ToolChoice::Any => json!({"mode": "ANY"}),
                ToolChoice::None => json!({"mode": "NONE"}),
                ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
            };
            body.insert("toolConfig".into(), json!({"functionCallingConfig": config}));
        }
    }

    // `candidateCount` is left out: Bourse answers with one candidate.
    let mut generation = Map::new();
    if let Some(t) = conv.temperature {
        generation.insert("temperature".into(), json!(t));
    }
    if let Some(p) = conv.top_p {
        generation.insert("topP".into(), json!(p));
    }
    if let Some(k) = conv.top_k {
        generation.insert("topK".into(), json!(k));
    }
    if let Some(n) = conv.max_output_tokens {
        generation.insert("maxOutputTokens".into(), json!(n));
    }
    if !conv.stop.is_empty() {
        generation.insert("stopSequences".into(), json!(conv.stop));
    }
    match &conv.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => {
            generation.insert("responseMimeType".into(), json!("application/json"));
        }
        ResponseFormat::JsonSchema { schema, .. } => {
            generation.insert("responseMimeType".into(), json!("application/json"));
            generation.insert("responseJsonSchema".into(), schema.clone());
        }
    }
    if let Some(thinking) = &conv.thinking {
        let config = match thinking {
            Thinking::Budget(n) => json!({"thinkingBudget": n, "includeThoughts": true}),
            Thinking::Effort(level) => json!({"thinkingLevel": thinking_level(level)}),
            Thinking::Adaptive => json!({"includeThoughts": true}),
            Thinking::Disabled => json!({"thinkingBudget": 0}),
        };
        generation.insert("thinkingConfig".into(), config);
    }
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }

    serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
}

/// OpenAI-style effort → Gemini `thinkingLevel`, which every Gemini 3 model accepts as
/// `low` or `high`: none/minimal/low → low, anything else (medium, high, xhigh) → high.
fn thinking_level(effort: &str) -> &'static str {
    match effort.to_ascii_lowercase().as_str() {
        "none" | "minimal" | "low" => "low",
        _ => "high",
    }
}

/// Function-call arguments must be an object; a JSON string holding one is unwrapped and
/// anything else becomes `{}`.
fn call_args(arguments: &Value) -> Value {
    match arguments {
        Value::Object(_) => arguments.clone(),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(object @ Value::Object(_)) => object,
            _ => json!({}),
        },
        _ => json!({}),
    }
}

fn image_part(source: &ImageSource) -> Value {
    match source {
        ImageSource::Base64 { media_type, data } => json!({"inlineData": {"mimeType": media_type, "data": data}}),
        ImageSource::Url(url) => json!({"fileData": {"mimeType": guess_mime(url), "fileUri": url}}),
    }
}

/// The MIME type of a file URL, from its extension; JPEG when unknown.
fn guess_mime(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => "image/jpeg",
    }
}
