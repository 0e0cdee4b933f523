//! The Google Gemini dialect (`generateContent` / `streamGenerateContent?alt=sse`), spoken
//! only towards upstreams: [`Conversation`] → request body, response body → [`Reply`],
//! stream events → [`Delta`]s ([`Decoder`]), and `google.rpc.Status` error bodies.
//!
//! What has no Gemini equivalent is dropped when rendering: `user`,
//! `parallel_tool_calls`, `cache_control` markers (Gemini caches implicitly, or through an
//! explicit `cachedContent` resource Bourse does not manage), the JSON schema's `name` and
//! `strict`, and thinking parts (see [`render_request`]).
//!
//! Usage follows Gemini's accounting: `promptTokenCount` includes
//! `cachedContentTokenCount`, `thoughtsTokenCount` is apart from `candidatesTokenCount`
//! (and billed as output), and `toolUsePromptTokenCount` is apart from the prompt.

use crate::canonical::{
    Conversation, Delta, ImageSource, Part, ResponseFormat, Role, StopReason, Thinking, ToolChoice, Usage,
};
use crate::dialect::{synthetic_id, Decode};
use crate::error::{Error, ErrorKind, Result};
use crate::preset::Quirks;
use crate::sse;
use crate::vendor;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The signature Gemini documents for function calls it did not generate itself (history
/// from another model, or calls whose signature was lost): it skips the thought-signature
/// validation that Gemini 3 enforces on the function calls of a tool loop (a missing
/// signature there is a 400).
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// The URL path (relative to a base like https://generativelanguage.googleapis.com/v1beta)
/// for a model: "/models/{model}:generateContent" or
/// "/models/{model}:streamGenerateContent?alt=sse". A model given as "models/x" (or a
/// tuned model as "tunedModels/x") is not doubled.
pub fn endpoint_path(model: &str, stream: bool) -> String {
    let model = model.trim_start_matches('/');
    let resource = if model.starts_with("models/") || model.starts_with("tunedModels/") {
        model.to_string()
    } else {
        format!("models/{model}")
    };
    let method = if stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
    format!("/{resource}:{method}")
}

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

// ------------------------------------------------------------------ responses

/// A `GenerateContentResponse` (whole, or one stream chunk), as far as Bourse reads it.
/// Every field may be absent or null; unknown fields and part kinds are ignored.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    candidates: Option<Vec<WireCandidate>>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<Value>,
    model_version: Option<String>,
    response_id: Option<String>,
    /// A `google.rpc.Status` sent in place of a response (in-stream errors).
    error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    content: Option<WireContent>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireContent {
    parts: Option<Vec<WirePart>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    text: Option<String>,
    thought: Option<bool>,
    thought_signature: Option<String>,
    function_call: Option<WireFunctionCall>,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    id: Option<String>,
    name: String,
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

impl WireResponse {
    fn parse(data: &[u8]) -> Result<WireResponse> {
        let unreadable = |e: &dyn std::fmt::Display| {
            Error::protocol(format!("the Gemini upstream sent an unreadable response: {e}"))
        };
        match serde_json::from_slice::<Value>(data) {
            Ok(v @ Value::Object(_)) => serde_json::from_value(v).map_err(|e| unreadable(&e)),
            Ok(_) => Err(unreadable(&"not a JSON object")),
            Err(e) => Err(unreadable(&e)),
        }
    }

    /// The first candidate's parts (Bourse asks for one candidate).
    fn parts(&self) -> &[WirePart] {
        let candidate = self.candidates.as_deref().and_then(<[_]>::first);
        candidate.and_then(|c| c.content.as_ref()).and_then(|c| c.parts.as_deref()).unwrap_or(&[])
    }

    fn finish_reason(&self) -> Option<&str> {
        self.candidates.as_deref().and_then(<[_]>::first).and_then(|c| c.finish_reason.as_deref())
    }

    /// The prompt was blocked: no candidates, and `promptFeedback.blockReason` says why.
    fn blocked(&self) -> bool {
        self.candidates.as_ref().is_none_or(Vec::is_empty)
            && self.prompt_feedback.as_ref().is_some_and(|f| f.block_reason.is_some())
    }
}

/// An id for an answer Gemini did not name.
fn synthesize_id() -> String {
    synthetic_id("gemini-")
}

/// The id of tool call `index` of answer `response_id`, when Gemini gives none.
fn call_id(given: Option<&str>, response_id: &str, index: u32) -> String {
    match given {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => format!("call_{response_id}_{index}"),
    }
}

/// Gemini's `finishReason` → canonical. `STOP` after function calls is a tool use (Gemini
/// has no reason of its own for it); a matched stop sequence is also `STOP`, so it cannot
/// be told apart from a natural end.
fn stop_reason(reason: Option<&str>, called: bool) -> StopReason {
    match reason {
        Some("MAX_TOKENS") => StopReason::MaxTokens,
        Some(
            "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "IMAGE_SAFETY"
            | "IMAGE_PROHIBITED_CONTENT"
            | "IMAGE_RECITATION",
        ) => StopReason::ContentFilter,
        _ if called => StopReason::ToolUse,
        _ => StopReason::EndTurn,
    }
}

/// `generateContent` response JSON → [`Reply`]. Adjacent text parts (and adjacent thought
/// parts) are joined. A thought signature on a non-thought part (Gemini puts them on
/// function calls and final text) is not kept: rendering does not send signatures back.
/// Malformed → `Err` (UpstreamProtocol); an error object in a 200 body → `Err`
/// (UpstreamStatus).
///
/// [`Reply`]: crate::canonical::Reply
pub fn parse_reply(body: &[u8]) -> Result<crate::canonical::Reply> {
    let response = WireResponse::parse(body)?;
    if let Some(error) = &response.error {
        return Err(status_error(error));
    }
    let id = response.response_id.clone().filter(|s| !s.is_empty()).unwrap_or_else(synthesize_id);
    let mut parts: Vec<Part> = Vec::new();
    let mut calls = 0u32;
    for part in response.parts() {
        if let Some(call) = &part.function_call {
            parts.push(Part::ToolCall {
                id: call_id(call.id.as_deref(), &id, calls),
                name: call.name.clone(),
                arguments: call.args.clone().filter(|a| !a.is_null()).unwrap_or_else(|| json!({})),
            });
            calls += 1;
        } else if let Some(text) = &part.text {
            if part.thought == Some(true) {
                match parts.last_mut() {
                    Some(Part::Thinking { text: prev, signature }) => {
                        prev.push_str(text);
                        if part.thought_signature.is_some() {
                            signature.clone_from(&part.thought_signature);
                        }
                    }
                    _ => parts.push(Part::Thinking { text: text.clone(), signature: part.thought_signature.clone() }),
                }
            } else if !text.is_empty() {
                match parts.last_mut() {
                    Some(Part::Text(prev)) => prev.text.push_str(text),
                    _ => parts.push(Part::Text(crate::canonical::Text { text: text.clone(), cache_control: None })),
                }
            }
        }
    }
    let stop =
        if response.blocked() { StopReason::ContentFilter } else { stop_reason(response.finish_reason(), calls > 0) };
    Ok(crate::canonical::Reply {
        id,
        model: response.model_version.clone().unwrap_or_default(),
        parts,
        stop,
        usage: response.usage_metadata.as_ref().filter(|u| u.is_object()).map(usage_from),
    })
}

/// Gemini `usageMetadata` → canonical [`Usage`]: the cached count is a subset of
/// `promptTokenCount` (clamped to it, so no token counts twice), tool-use prompt tokens
/// are input apart from the prompt, thoughts are output apart from the candidates.
pub fn usage_from(v: &Value) -> Usage {
    let count = |key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
    let prompt = count("promptTokenCount");
    let cached = count("cachedContentTokenCount").min(prompt);
    Usage {
        input_uncached: prompt - cached + count("toolUsePromptTokenCount"),
        input_cache_read: cached,
        input_cache_write: 0,
        output: count("candidatesTokenCount"),
        output_reasoning: count("thoughtsTokenCount"),
    }
}

// ------------------------------------------------------------------ errors

/// An error object Gemini sent with a 200 (in a stream, or as a whole body) → an
/// UpstreamStatus error, classified like an error status with the same code.
fn status_error(error: &Value) -> Error {
    let vendor = vendor::google_status(error);
    let code = error.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok()).unwrap_or(500);
    let message = format!(
        "the Gemini upstream reported an error ({code} {}): {}",
        vendor.kind.as_deref().unwrap_or("UNKNOWN"),
        vendor.message.as_deref().unwrap_or("no message")
    );
    Error::new(ErrorKind::UpstreamStatus(Box::new(vendor::classify(code, &vendor, &Quirks::default()))), message)
}

// ------------------------------------------------------------------ streams

/// `streamGenerateContent?alt=sse` events → [`Delta`]s. Every `data:` is a partial
/// `GenerateContentResponse`: text arrives in pieces, function calls whole (each becomes
/// a `ToolCallStart` and one `ToolCallArgs`), `usageMetadata` may ride on several chunks
/// (each becomes a `Usage`; the last wins), and the finish reason is held until
/// [`Decode::finish`], so the `Stop` comes once, after the last usage.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The answer's id, once the first chunk has been seen.
    id: Option<String>,
    /// Tool calls seen so far (the next call's index).
    calls: u32,
    /// The last finish reason seen.
    finish_reason: Option<String>,
    blocked: bool,
    stopped: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    fn start(&mut self, id: Option<&str>, model: Option<&str>, out: &mut Vec<Delta>) -> String {
        if let Some(id) = &self.id {
            return id.clone();
        }
        let id = id.filter(|s| !s.is_empty()).map_or_else(synthesize_id, str::to_string);
        out.push(Delta::Start { id: id.clone(), model: model.unwrap_or_default().to_string(), usage: None });
        self.id = Some(id.clone());
        id
    }
}

impl Decode for Decoder {
    fn event(&mut self, ev: &sse::Event, out: &mut Vec<Delta>) -> Result<(), Error> {
        let data = ev.data.trim();
        if data.is_empty() || data == "[DONE]" {
            return Ok(());
        }
        let chunk = WireResponse::parse(data.as_bytes())?;
        if let Some(error) = &chunk.error {
            return Err(status_error(error));
        }
        let id = self.start(chunk.response_id.as_deref(), chunk.model_version.as_deref(), out);
        for part in chunk.parts() {
            if let Some(call) = &part.function_call {
                let index = self.calls;
                self.calls += 1;
                out.push(Delta::ToolCallStart {
                    index,
                    id: call_id(call.id.as_deref(), &id, index),
                    name: call.name.clone(),
                });
                let args =
                    call.args.as_ref().filter(|a| !a.is_null()).map_or_else(|| "{}".to_string(), Value::to_string);
                out.push(Delta::ToolCallArgs { index, json: args });
            } else if let Some(text) = &part.text {
                if part.thought == Some(true) {
                    if !text.is_empty() {
                        out.push(Delta::Thinking(text.clone()));
                    }
                    if let Some(signature) = &part.thought_signature {
                        out.push(Delta::ThinkingSignature(signature.clone()));
                    }
                } else if !text.is_empty() {
                    out.push(Delta::Text(text.clone()));
                }
            }
        }
        if let Some(usage) = chunk.usage_metadata.as_ref().filter(|u| u.is_object()) {
            out.push(Delta::Usage(usage_from(usage)));
        }
        if let Some(reason) = chunk.finish_reason() {
            self.finish_reason = Some(reason.to_string());
        }
        self.blocked |= chunk.blocked();
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Delta>) {
        if self.stopped {
            return;
        }
        self.start(None, None, out);
        let stop = if self.blocked {
            StopReason::ContentFilter
        } else {
            stop_reason(self.finish_reason.as_deref(), self.calls > 0)
        };
        out.push(Delta::Stop(stop));
        self.stopped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Message, Reply, Text, Tool};

    fn text(s: &str) -> Text {
        Text { text: s.to_string(), cache_control: None }
    }

    fn text_part(s: &str) -> Part {
        Part::Text(text(s))
    }

    fn rendered(conv: &Conversation) -> Value {
        serde_json::from_slice(&render_request(conv)).unwrap()
    }

    fn user(parts: Vec<Part>) -> Message {
        Message { role: Role::User, parts }
    }

    fn assistant(parts: Vec<Part>) -> Message {
        Message { role: Role::Assistant, parts }
    }

    fn result(call_id: &str, content: Vec<Part>, is_error: bool) -> Part {
        Part::ToolResult { call_id: call_id.into(), content, is_error, cache_control: None }
    }

    fn image(source: ImageSource) -> Part {
        Part::Image { source, cache_control: Some(json!({"type": "ephemeral"})) }
    }

    #[test]
    fn endpoint_paths() {
        assert_eq!(endpoint_path("gemini-2.5-flash", false), "/models/gemini-2.5-flash:generateContent");
        assert_eq!(endpoint_path("gemini-2.5-flash", true), "/models/gemini-2.5-flash:streamGenerateContent?alt=sse");
        assert_eq!(endpoint_path("models/gemini-2.5-pro", false), "/models/gemini-2.5-pro:generateContent");
        assert_eq!(endpoint_path("tunedModels/mine", true), "/tunedModels/mine:streamGenerateContent?alt=sse");
    }

    #[test]
    fn render_a_whole_conversation() {
        let conv = Conversation {
            system: vec![text("Be brief."), text(""), text("Use tools.")],
            messages: vec![
                user(vec![
                    text_part("Weather in Paris?"),
                    image(ImageSource::Base64 { media_type: "image/png".into(), data: "iVBORw0K".into() }),
                    image(ImageSource::from_url("data:image/gif;base64,R0lGODlh")),
                    image(ImageSource::Url("https://example.com/cat.WEBP?size=2#top".into())),
                    image(ImageSource::Url("https://example.com/photo".into())),
                ]),
                assistant(vec![
                    Part::Thinking { text: "they want weather".into(), signature: Some("anthropic-sig".into()) },
                    text_part("Checking."),
                    Part::ToolCall {
                        id: "call_1".into(),
                        name: "get_weather".into(),
                        arguments: json!({"city": "Paris"}),
                    },
                    Part::ToolCall { id: "call_2".into(), name: "get_time".into(), arguments: json!({}) },
                ]),
                user(vec![
                    result("call_1", vec![text_part(r#"{"temp":20,"sky":"clear"}"#)], false),
                    result("call_2", vec![text_part("clock broke")], true),
                    result(
                        "call_unknown",
                        vec![
                            text_part("line one"),
                            text_part("line two"),
                            image(ImageSource::Url("https://example.com/chart.png".into())),
                        ],
                        false,
                    ),
                ]),
                // Consecutive user turns merge into one.
                user(vec![text_part("Thanks!"), text_part("")]),
                // An assistant turn with nothing Gemini can take is skipped, and the user
                // turns around it merge.
                assistant(vec![Part::RedactedThinking { data: "opaque".into() }]),
                user(vec![text_part("And tomorrow?")]),
                assistant(vec![Part::ToolCall {
                    id: "call_3".into(),
                    name: "get_weather".into(),
                    arguments: json!("{\"city\":\"Lyon\"}"),
                }]),
            ],
            tools: vec![
                Tool {
                    name: "get_weather".into(),
                    description: Some("Weather for a city".into()),
                    parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                                       "required": ["city"], "additionalProperties": false}),
                    cache_control: None,
                },
                Tool { name: "get_time".into(), description: None, parameters: Value::Null, cache_control: None },
            ],
            tool_choice: Some(ToolChoice::Tool("get_weather".into())),
            parallel_tool_calls: Some(false),
            response_format: ResponseFormat::JsonSchema {
                name: "weather".into(),
                schema: json!({"type": "object", "properties": {"temp": {"type": "number"}}}),
                strict: Some(true),
            },
            max_output_tokens: Some(256),
            temperature: Some(0.5),
            top_p: Some(0.9),
            top_k: Some(40),
            stop: vec!["END".into(), "STOP".into()],
            thinking: Some(Thinking::Budget(1024)),
            user: Some("user-7".into()),
        };
        let want = json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use tools."}]},
            "contents": [
                {"role": "user", "parts": [
                    {"text": "Weather in Paris?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
                    {"inlineData": {"mimeType": "image/gif", "data": "R0lGODlh"}},
                    {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.WEBP?size=2#top"}},
                    {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/photo"}}
                ]},
                {"role": "model", "parts": [
                    {"text": "Checking."},
                    {"functionCall": {"id": "call_1", "name": "get_weather", "args": {"city": "Paris"}},
                     "thoughtSignature": SKIP_SIGNATURE},
                    {"functionCall": {"id": "call_2", "name": "get_time", "args": {}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"id": "call_1", "name": "get_weather",
                                          "response": {"temp": 20, "sky": "clear"}}},
                    {"functionResponse": {"id": "call_2", "name": "get_time",
                                          "response": {"error": "clock broke"}}},
                    {"functionResponse": {"id": "call_unknown", "name": "call_unknown",
                                          "response": {"content": "line one\nline two"}}},
                    {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/chart.png"}},
                    {"text": "Thanks!"},
                    {"text": "And tomorrow?"}
                ]},
                {"role": "model", "parts": [
                    {"functionCall": {"id": "call_3", "name": "get_weather", "args": {"city": "Lyon"}},
                     "thoughtSignature": SKIP_SIGNATURE}
                ]}
            ],
            "tools": [{"functionDeclarations": [
                {"name": "get_weather", "description": "Weather for a city",
                 "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}},
                                          "required": ["city"], "additionalProperties": false}},
                {"name": "get_time"}
            ]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
            "generationConfig": {
                "temperature": 0.5,
                "topP": 0.9,
                "topK": 40,
                "maxOutputTokens": 256,
                "stopSequences": ["END", "STOP"],
                "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object", "properties": {"temp": {"type": "number"}}},
                "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": true}
            }
        });
        assert_eq!(rendered(&conv), want);
    }

    #[test]
    fn render_tool_choices_thinking_and_json_object() {
        let tool =
            Tool { name: "f".into(), description: None, parameters: json!({"type": "object"}), cache_control: None };
        let base =
            Conversation { messages: vec![user(vec![text_part("hi")])], tools: vec![tool], ..Default::default() };
        for (choice, want) in [
            (ToolChoice::Auto, json!({"mode": "AUTO"})),
            (ToolChoice::Any, json!({"mode": "ANY"})),
            (ToolChoice::None, json!({"mode": "NONE"})),
            (ToolChoice::Tool("f".into()), json!({"mode": "ANY", "allowedFunctionNames": ["f"]})),
        ] {
            let conv = Conversation { tool_choice: Some(choice.clone()), ..base.clone() };
            assert_eq!(rendered(&conv)["toolConfig"]["functionCallingConfig"], want, "{choice:?}");
        }
        assert!(rendered(&base).get("toolConfig").is_none(), "no tool choice, no toolConfig");
        // A tool choice without tools says nothing Gemini can use.
        let bare = Conversation { tools: vec![], tool_choice: Some(ToolChoice::Any), ..base.clone() };
        let v = rendered(&bare);
        assert!(v.get("tools").is_none() && v.get("toolConfig").is_none(), "{v}");
        // Nothing set: no systemInstruction and no generationConfig at all.
        assert_eq!(v, json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}));

        for (thinking, want) in [
            (Thinking::Budget(0), json!({"thinkingBudget": 0, "includeThoughts": true})),
            (Thinking::Effort("minimal".into()), json!({"thinkingLevel": "low"})),
            (Thinking::Effort("low".into()), json!({"thinkingLevel": "low"})),
            (Thinking::Effort("medium".into()), json!({"thinkingLevel": "high"})),
            (Thinking::Effort("high".into()), json!({"thinkingLevel": "high"})),
            (Thinking::Adaptive, json!({"includeThoughts": true})),
            (Thinking::Disabled, json!({"thinkingBudget": 0})),
        ] {
            let conv = Conversation { thinking: Some(thinking.clone()), ..base.clone() };
            assert_eq!(rendered(&conv)["generationConfig"], json!({"thinkingConfig": want}), "{thinking:?}");
        }

        let conv = Conversation { response_format: ResponseFormat::JsonObject, ..base.clone() };
        assert_eq!(rendered(&conv)["generationConfig"], json!({"responseMimeType": "application/json"}));
    }

    fn reply(body: Value) -> Reply {
        parse_reply(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    #[test]
    fn parse_a_text_answer() {
        let r = reply(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}, {"text": " world"}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2, "totalTokenCount": 12},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "resp-1"
        }));
        assert_eq!(
            r,
            Reply {
                id: "resp-1".into(),
                model: "gemini-2.5-flash".into(),
                parts: vec![text_part("Hello world")],
                stop: StopReason::EndTurn,
                usage: Some(Usage { input_uncached: 10, output: 2, ..Usage::default() }),
            }
        );
        let r = reply(json!({"candidates": [{"content": {"parts": [{"text": "cut"}]}, "finishReason": "MAX_TOKENS"}]}));
        assert_eq!(r.stop, StopReason::MaxTokens);
        assert_eq!(r.usage, None);
        assert!(r.id.starts_with("gemini-"), "a synthesized id: {}", r.id);
    }

    #[test]
    fn parse_a_function_call_answer() {
        let r = reply(json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "Let me check."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "days": [1, 2], "x": {"y": null}}},
                 "thoughtSignature": "c2ln"},
                {"functionCall": {"id": "fc-9", "name": "get_time", "args": {}}},
                {"functionCall": {"name": "no_args"}}
            ]}, "finishReason": "STOP"}],
            "modelVersion": "gemini-3-pro",
            "responseId": "resp-2"
        }));
        assert_eq!(r.stop, StopReason::ToolUse);
        assert_eq!(
            r.parts,
            vec![
                text_part("Let me check."),
                Part::ToolCall {
                    id: "call_resp-2_0".into(),
                    name: "get_weather".into(),
                    arguments: json!({"city": "Paris", "days": [1, 2], "x": {"y": null}}),
                },
                Part::ToolCall { id: "fc-9".into(), name: "get_time".into(), arguments: json!({}) },
                Part::ToolCall { id: "call_resp-2_2".into(), name: "no_args".into(), arguments: json!({}) },
            ]
        );
        // Without a responseId the synthesized call ids are still unique within the reply.
        let r = reply(json!({"candidates": [{"content": {"parts": [
            {"functionCall": {"name": "a", "args": {}}}, {"functionCall": {"name": "b", "args": {}}}
        ]}}]}));
        let ids: Vec<&str> = r
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::ToolCall { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(ids, [format!("call_{}_0", r.id), format!("call_{}_1", r.id)]);
        assert_eq!(r.stop, StopReason::ToolUse, "no finishReason, but calls");
    }

    #[test]
    fn parse_thought_parts() {
        let r = reply(json!({
            "candidates": [{"content": {"parts": [
                {"text": "Thinking it", "thought": true},
                {"text": " over.", "thought": true, "thoughtSignature": "c2lnMQ=="},
                {"text": "The answer", "thoughtSignature": "c2lnMg=="},
                {"text": " is 4."},
                {"text": "", "thoughtSignature": "c2lnMw=="}
            ]}, "finishReason": "STOP"}],
            "responseId": "r"
        }));
        assert_eq!(
            r.parts,
            vec![
                Part::Thinking { text: "Thinking it over.".into(), signature: Some("c2lnMQ==".into()) },
                text_part("The answer is 4."),
            ]
        );
        assert_eq!(r.stop, StopReason::EndTurn);
    }

    #[test]
    fn usage_is_split_into_disjoint_counts() {
        let u = usage_from(&json!({
            "promptTokenCount": 100, "cachedContentTokenCount": 40, "candidatesTokenCount": 20,
            "thoughtsTokenCount": 30, "toolUsePromptTokenCount": 5, "totalTokenCount": 155
        }));
        assert_eq!(
            u,
            Usage { input_uncached: 65, input_cache_read: 40, input_cache_write: 0, output: 20, output_reasoning: 30 }
        );
        // The sum is everything billed: totalTokenCount.
        assert_eq!(u.input_total() + u.output_total(), 155);
        // A cached count larger than the prompt is clamped: nothing counts twice.
        assert_eq!(usage_from(&json!({"promptTokenCount": 10, "cachedContentTokenCount": 99})).input_total(), 10);
        assert_eq!(usage_from(&json!({})), Usage::default());
        let r = reply(json!({
            "candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 1000, "cachedContentTokenCount": 800,
                              "candidatesTokenCount": 7, "thoughtsTokenCount": 93}
        }));
        assert_eq!(
            r.usage,
            Some(Usage {
                input_uncached: 200,
                input_cache_read: 800,
                input_cache_write: 0,
                output: 7,
                output_reasoning: 93
            })
        );
    }

    #[test]
    fn safety_blocks_are_content_filtered() {
        let r = reply(json!({
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
            "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "blocked-1"
        }));
        assert_eq!(r.parts, vec![]);
        assert_eq!(r.stop, StopReason::ContentFilter);
        assert_eq!(r.id, "blocked-1");
        assert_eq!(r.usage, Some(Usage { input_uncached: 7, ..Usage::default() }));
        for reason in ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"] {
            let r = reply(json!({"candidates": [{"finishReason": reason, "index": 0}]}));
            assert_eq!((r.stop, r.parts.len()), (StopReason::ContentFilter, 0), "{reason}");
        }
        for reason in ["OTHER", "MALFORMED_FUNCTION_CALL", "LANGUAGE", "FINISH_REASON_UNSPECIFIED"] {
            assert_eq!(reply(json!({"candidates": [{"finishReason": reason}]})).stop, StopReason::EndTurn, "{reason}");
        }
    }

    #[test]
    fn malformed_bodies_are_protocol_errors() {
        for body in [
            &b"{\"candidates\": [{\"content\": "[..],
            b"not json",
            b"[1, 2]",
            b"\"text\"",
            br#"{"candidates": "many"}"#,
            br#"{"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}"#,
        ] {
            let e = parse_reply(body).unwrap_err();
            assert_eq!(e.kind, ErrorKind::UpstreamProtocol, "{}", String::from_utf8_lossy(body));
        }
        // Nulls and unknown fields are fine.
        let r = parse_reply(br#"{"candidates": null, "usageMetadata": null, "newField": 1}"#).unwrap();
        assert_eq!((r.parts, r.stop, r.usage), (vec![], StopReason::EndTurn, None));
        // An error object in a 200 body is the upstream's error, not ours.
        let e = parse_reply(br#"{"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}"#).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::UpstreamStatus(ref s) if s.status == 500 && s.retryable), "{e:?}");
    }

    fn decode(events: &[Value]) -> (Decoder, Vec<Delta>) {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for v in events {
            d.event(&sse::Event { data: v.to_string(), ..Default::default() }, &mut out).unwrap();
        }
        (d, out)
    }

    #[test]
    fn decode_a_stream() {
        let chunk = |parts: Value| {
            json!({"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
                                          "modelVersion": "gemini-2.5-pro", "responseId": "abc"})
        };
        let mut first = chunk(json!([{"text": "Planning", "thought": true}, {"text": " it.", "thought": true}]));
        first["usageMetadata"] = json!({"promptTokenCount": 10, "totalTokenCount": 10});
        let mut last = chunk(json!([{"text": ""}]));
        last["candidates"][0]["finishReason"] = json!("STOP");
        last["usageMetadata"] = json!({"promptTokenCount": 10, "cachedContentTokenCount": 4,
                                       "candidatesTokenCount": 9, "thoughtsTokenCount": 6});
        let (mut d, mut out) = decode(&[
            first,
            chunk(json!([{"text": "Hello"}])),
            chunk(json!([{"text": " there", "thoughtSignature": "c2ln"}])),
            chunk(json!([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                         {"functionCall": {"id": "fc-2", "name": "get_time"}}])),
            last,
        ]);
        d.finish(&mut out);
        d.finish(&mut out);
        assert_eq!(
            out,
            vec![
                Delta::Start { id: "abc".into(), model: "gemini-2.5-pro".into(), usage: None },
                Delta::Thinking("Planning".into()),
                Delta::Thinking(" it.".into()),
                Delta::Usage(Usage { input_uncached: 10, ..Usage::default() }),
                Delta::Text("Hello".into()),
                Delta::Text(" there".into()),
                Delta::ToolCallStart { index: 0, id: "call_abc_0".into(), name: "get_weather".into() },
                Delta::ToolCallArgs { index: 0, json: r#"{"city":"Paris"}"#.into() },
                Delta::ToolCallStart { index: 1, id: "fc-2".into(), name: "get_time".into() },
                Delta::ToolCallArgs { index: 1, json: "{}".into() },
                Delta::Usage(Usage {
                    input_uncached: 6,
                    input_cache_read: 4,
                    input_cache_write: 0,
                    output: 9,
                    output_reasoning: 6
                }),
                Delta::Stop(StopReason::ToolUse),
            ]
        );
    }

    #[test]
    fn decode_stop_reasons_and_signatures() {
        let (mut d, mut out) = decode(&[
            json!({"candidates": [{"content": {"parts": [{"text": "hm", "thought": true, "thoughtSignature": "c2ln"}]}}]}),
            json!({"candidates": [{"content": {"parts": [{"text": "cut"}]}, "finishReason": "MAX_TOKENS"}]}),
        ]);
        d.finish(&mut out);
        let Delta::Start { id, model, usage: None } = &out[0] else { panic!("{out:?}") };
        assert!(id.starts_with("gemini-") && model.is_empty(), "{id} {model}");
        assert_eq!(
            out[1..],
            [
                Delta::Thinking("hm".into()),
                Delta::ThinkingSignature("c2ln".into()),
                Delta::Text("cut".into()),
                Delta::Stop(StopReason::MaxTokens)
            ]
        );

        // A blocked prompt: no candidates, a block reason.
        let (mut d, mut out) =
            decode(&[json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "responseId": "b"})]);
        d.finish(&mut out);
        assert_eq!(
            out,
            [
                Delta::Start { id: "b".into(), model: String::new(), usage: None },
                Delta::Stop(StopReason::ContentFilter)
            ]
        );

        // An empty stream still starts before it stops; no finish reason is a natural end.
        let (mut d, mut out) = decode(&[]);
        d.finish(&mut out);
        assert!(matches!(out[..], [Delta::Start { .. }, Delta::Stop(StopReason::EndTurn)]), "{out:?}");
    }

    #[test]
    fn decode_errors() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let ev = |data: &str| sse::Event { data: data.into(), ..Default::default() };
        d.event(&ev(r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}]}}],"responseId":"r"}"#), &mut out).unwrap();
        let e = d
            .event(
                &ev(r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#),
                &mut out,
            )
            .unwrap_err();
        let ErrorKind::UpstreamStatus(s) = &e.kind else { panic!("{e:?}") };
        assert_eq!((s.status, s.vendor_type.as_deref(), s.retryable), (503, Some("UNAVAILABLE"), true));
        assert!(e.message.contains("The model is overloaded."), "{}", e.message);

        let e = Decoder::new().event(&ev(r#"{"candidates": [{"content": "#), &mut out).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UpstreamProtocol);
        let e = Decoder::new().event(&ev("[]"), &mut out).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UpstreamProtocol);
    }

    /// Against the simulator: what `render_request` sends is accepted, and what comes back
    /// parses, streamed or not, in JSON mode and with a function call.
    #[tokio::test]
    async fn round_trip_through_the_simulator() {
        let sim = upstream_sim::Sim::start(upstream_sim::SimConfig {
            output_tokens: 3,
            cached_tokens: 2,
            reasoning_tokens: 4,
            prompt_tokens: Some(10),
            ..Default::default()
        })
        .await
        .unwrap();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let post = |conv: &Conversation, stream: bool| {
            let url = format!("http://{}/v1beta{}", sim.addr(), endpoint_path("models/gemini-test", stream));
            client.post(url).header("content-type", "application/json").body(render_request(conv)).send()
        };
        let usage =
            Usage { input_uncached: 8, input_cache_read: 2, input_cache_write: 0, output: 3, output_reasoning: 4 };

        let json_conv = Conversation {
            system: vec![text("Answer in JSON.")],
            messages: vec![user(vec![text_part("hello")])],
            response_format: ResponseFormat::JsonObject,
            ..Default::default()
        };
        let r = parse_reply(&post(&json_conv, false).await.unwrap().bytes().await.unwrap()).unwrap();
        assert_eq!(r.parts, vec![text_part(r#"{"answer":"lorem ipsum dolor"}"#)]);
        assert_eq!((r.stop, r.usage, r.model.as_str()), (StopReason::EndTurn, Some(usage), "gemini-test"));

        let body = post(&json_conv, true).await.unwrap().bytes().await.unwrap();
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for item in sse::parse_all(&body) {
            if let sse::Item::Event(ev) = item {
                d.event(&ev, &mut out).unwrap();
            }
        }
        d.finish(&mut out);
        let streamed: String = out
            .iter()
            .filter_map(|d| match d {
                Delta::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(streamed, r#"{"answer":"lorem ipsum dolor"}"#);
        assert_eq!(out[out.len() - 2..], [Delta::Usage(usage), Delta::Stop(StopReason::EndTurn)]);

        let tool_conv = Conversation {
            messages: vec![user(vec![text_part("weather?")])],
            tools: vec![Tool {
                name: "get_weather".into(),
                description: None,
                parameters: json!({"type": "object", "properties": {"location": {"type": "string"}}}),
                cache_control: None,
            }],
            ..Default::default()
        };
        let r = parse_reply(&post(&tool_conv, false).await.unwrap().bytes().await.unwrap()).unwrap();
        let [Part::ToolCall { id, name, arguments }] = &r.parts[..] else { panic!("{:?}", r.parts) };
        assert_eq!((name.as_str(), arguments), ("get_weather", &json!({"location": "Paris"})));
        assert_eq!(r.stop, StopReason::ToolUse);

        // The result goes back (name resolved from the call) and the model answers in text.
        let mut answered = tool_conv.clone();
        answered.messages.push(assistant(r.parts.clone()));
        answered.messages.push(user(vec![result(id, vec![text_part("sunny")], false)]));
        let sent: Value = serde_json::from_slice(&render_request(&answered)).unwrap();
        assert_eq!(sent["contents"][2]["parts"][0]["functionResponse"]["name"], "get_weather");
        let r = parse_reply(&post(&answered, false).await.unwrap().bytes().await.unwrap()).unwrap();
        assert_eq!((r.parts, r.stop), (vec![text_part("lorem ipsum dolor")], StopReason::EndTurn));
    }
}
