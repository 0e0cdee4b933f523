//! The OpenAI dialect: request validation, upstream bodies, usage and error bodies, and
//! translation to and from canonical.
//!
//! Validation checks the type of every field Bourse or the SDK contract depends on, so a
//! client mistake becomes a 400 naming the parameter instead of an opaque upstream error
//! (or a panic). Fields Bourse does not know are passed on untouched.
//!
//! Translation, OpenAI Chat Completions ↔ canonical (requests in `request.rs`, complete
//! replies in `reply.rs`, streams in `stream.rs`), is used only when the two sides speak
//! different dialects (same-dialect OpenAI traffic is passed through elsewhere): an OpenAI
//! client reaching an Anthropic or Gemini upstream ([`conversation`], [`render_reply`],
//! [`Encoder`]), or an Anthropic client reaching an OpenAI-dialect vendor such as DeepSeek
//! ([`render_request`], [`parse_reply`], [`Decoder`]).
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

mod peek;
mod reply;
mod request;
mod stream;
pub mod think;

pub use reply::{finish_reason, parse_reply, render_reply};
pub use request::{conversation, render_request};
pub use stream::{Decoder, Encoder};

use crate::canonical::{ChatRequest, Dialect, EmbeddingsRequest, Needs, RawBody, StreamOptions, Usage};
use crate::dialect::{scan, Shape};
use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

pub(super) fn parse_object(body: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::new(ErrorKind::InvalidRequest, "the request body must be a JSON object")),
        Err(e) => Err(Error::new(ErrorKind::InvalidJson, format!("the request body is not valid JSON: {e}"))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn wrong(param: &str, expected: &str, got: &Value) -> Error {
    Error::invalid(param, format!("'{param}' must be {expected}, got {}", type_name(got)))
}

pub(super) fn check(map: &Map<String, Value>, key: &str, shape: Shape) -> Result<()> {
    // `null` is always accepted for optional fields.
    let Some(v) = map.get(key) else { return Ok(()) };
    if v.is_null() || shape.matches(v) {
        return Ok(());
    }
    let expected = match shape {
        Shape::Bool => "a boolean",
        Shape::Number => "a number",
        Shape::Integer => "an integer",
        Shape::String => "a string",
        Shape::Object => "an object",
        Shape::Array => "an array",
        Shape::StringOrArray => "a string or an array",
        Shape::StringOrObject => "a string or an object",
    };
    Err(wrong(key, expected, v))
}

pub(super) fn required_model(map: &Map<String, Value>) -> Result<String> {
    match map.get("model") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(Error::invalid("model", "'model' must not be empty")),
        Some(other) => Err(wrong("model", "a string", other)),
        None => Err(Error::invalid("model", "you must provide a model parameter")),
    }
}

fn range(map: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<()> {
    if let Some(x) = map.get(key).and_then(Value::as_f64) {
        if !(lo..=hi).contains(&x) {
            return Err(Error::invalid(key, format!("'{key}' must be between {lo} and {hi}, got {x}")));
        }
    }
    Ok(())
}

const CHAT_ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];

/// The optional top-level chat fields whose type is checked (`null` always passes), for the
/// map walk and the look at the bytes alike.
const CHAT_FIELDS: &[(&str, Shape)] = &[
    ("stream", Shape::Bool),
    ("stream_options", Shape::Object),
    ("temperature", Shape::Number),
    ("top_p", Shape::Number),
    ("n", Shape::Integer),
    ("max_tokens", Shape::Integer),
    ("max_completion_tokens", Shape::Integer),
    ("presence_penalty", Shape::Number),
    ("frequency_penalty", Shape::Number),
    ("seed", Shape::Integer),
    ("stop", Shape::StringOrArray),
    ("tools", Shape::Array),
    ("tool_choice", Shape::StringOrObject),
    ("parallel_tool_calls", Shape::Bool),
    ("response_format", Shape::Object),
    ("logprobs", Shape::Bool),
    ("top_logprobs", Shape::Integer),
    ("logit_bias", Shape::Object),
    ("user", Shape::String),
    ("metadata", Shape::Object),
    ("reasoning_effort", Shape::String),
    ("store", Shape::Bool),
    ("service_tier", Shape::String),
];

/// Numeric fields with a range: (field, least, most), both inclusive.
const CHAT_RANGES: &[(&str, f64, f64)] = &[("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0), ("n", 1.0, 128.0)];

/// Validate a `/v1/chat/completions` body and lift out what the gateway needs: a borrowed
/// look at the bytes first (no map is built for a request that passes), and the full map
/// walk, with its exact error messages, for anything that look cannot vouch for.
pub fn parse_chat_request(body: &Bytes) -> Result<ChatRequest> {
    match peek::peek(body) {
        Some(req) => Ok(req),
        None => parse_chat_map(body),
    }
}

/// The map walk: validates every field and keeps the parsed object.
fn parse_chat_map(body: &[u8]) -> Result<ChatRequest> {
    let map = parse_object(body)?;
    let model = required_model(&map)?;
    let messages = match map.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(Error::invalid("messages", "'messages' must contain at least one message"))
        }
        Some(other) => return Err(wrong("messages", "an array", other)),
        None => return Err(Error::invalid("messages", "you must provide a messages parameter")),
    };
    let mut vision = false;
    for (i, m) in messages.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            return Err(wrong(&format!("messages[{i}]"), "an object", m));
        };
        match obj.get("role") {
            Some(Value::String(r)) if CHAT_ROLES.contains(&r.as_str()) => {}
            Some(Value::String(r)) => {
                return Err(Error::invalid(
                    &format!("messages[{i}].role"),
                    format!("'{r}' is not a valid role; expected one of {}", CHAT_ROLES.join(", ")),
                ))
            }
            Some(other) => return Err(wrong(&format!("messages[{i}].role"), "a string", other)),
            None => return Err(Error::invalid(&format!("messages[{i}].role"), "every message needs a 'role'")),
        }
        match obj.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                vision |= parts.iter().any(|p| p.get("type").and_then(Value::as_str) == Some("image_url"));
            }
            Some(other) => return Err(wrong(&format!("messages[{i}].content"), "a string or an array", other)),
        }
    }
    for &(key, shape) in CHAT_FIELDS {
        check(&map, key, shape)?;
    }
    for &(key, lo, hi) in CHAT_RANGES {
        range(&map, key, lo, hi)?;
    }
    if let Some(Value::Array(tools)) = map.get("tools") {
        for (i, t) in tools.iter().enumerate() {
            let name = t.get("function").and_then(|f| f.get("name"));
            if !t.is_object() || !matches!(name, Some(Value::String(_))) {
                return Err(Error::invalid(
                    &format!("tools[{i}].function.name"),
                    "each tool needs function.name (a string)",
                ));
            }
        }
    }
    if let Some(rf) = map.get("response_format").filter(|v| v.is_object()) {
        match rf.get("type").and_then(Value::as_str) {
            Some("text" | "json_object" | "json_schema") => {}
            _ => {
                return Err(Error::invalid(
                    "response_format.type",
                    "'response_format.type' must be one of text, json_object, json_schema",
                ))
            }
        }
    }
    let stream = map.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = stream
        && map.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    let max_output_tokens =
        ["max_completion_tokens", "max_tokens"].iter().find_map(|k| map.get(*k).and_then(Value::as_u64));
    let needs = Needs {
        tools: map.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty()),
        json_schema: matches!(
            map.get("response_format").and_then(|r| r.get("type")).and_then(Value::as_str),
            Some("json_object" | "json_schema")
        ),
        vision,
    };
    Ok(ChatRequest::new(Dialect::OpenAi, model, stream, include_usage, max_output_tokens, needs, None).with_body(map))
}

/// The body to send upstream: the client's object with the upstream model name, and —
/// for streams — `stream_options.include_usage` forced on, so usage is always known.
pub fn upstream_chat_body(req: &mut ChatRequest, upstream_model: &str) -> Vec<u8> {
    if let Some(spliced) = req.raw_body().and_then(|raw| splice(raw, req.stream, upstream_model)) {
        return spliced;
    }
    let stream = req.stream;
    let body = req.body_mut();
    body.insert("model".into(), Value::String(upstream_model.to_string()));
    if stream {
        let opts = body.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
        if !opts.is_object() {
            *opts = Value::Object(Map::new());
        }
        if let Some(o) = opts.as_object_mut() {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    serde_json::to_vec(body).unwrap_or_default()
}

/// [`upstream_chat_body`] on the client's bytes: the model value replaced in place and, for
/// a stream without `stream_options`, `"stream_options":{"include_usage":true}` added as
/// the first member. `None` when a stream's `stream_options` would need editing inside.
fn splice(raw: &RawBody, stream: bool, upstream_model: &str) -> Option<Vec<u8>> {
    let add_options = match (stream, raw.stream_options) {
        (false, _) | (true, StreamOptions::IncludesUsage) => false,
        (true, StreamOptions::Absent) => true,
        (true, StreamOptions::Other) => return None,
    };
    const OPTIONS: &[u8] = br#""stream_options":{"include_usage":true},"#;
    let b = &raw.bytes[..];
    let model = serde_json::to_vec(upstream_model).ok()?;
    let mut out = Vec::with_capacity(b.len() + model.len() + OPTIONS.len());
    let mut rest = 0;
    if add_options {
        // The body is an object with at least `model` and `messages`: after its `{` a member
        // always follows, so the added one ends with a comma.
        let open = b.iter().position(|&c| c == b'{')? + 1;
        out.extend_from_slice(&b[..open]);
        out.extend_from_slice(OPTIONS);
        rest = open;
    }
    out.extend_from_slice(&b[rest..raw.model.start]);
    out.extend_from_slice(&model);
    out.extend_from_slice(&b[raw.model.end..]);
    Some(out)
}

/// Validate a `/v1/embeddings` body.
pub fn parse_embeddings_request(body: &[u8]) -> Result<EmbeddingsRequest> {
    let map = parse_object(body)?;
    let model = required_model(&map)?;
    match map.get("input") {
        Some(Value::String(_)) => {}
        Some(Value::Array(a)) if !a.is_empty() => {
            let ok = a.iter().all(Value::is_string)
                || a.iter().all(Value::is_u64)
                || a.iter().all(|x| x.as_array().is_some_and(|t| t.iter().all(Value::is_u64)));
            if !ok {
                return Err(Error::invalid(
                    "input",
                    "'input' must be a string, an array of strings, or an array of token arrays",
                ));
            }
        }
        Some(Value::Array(_)) => return Err(Error::invalid("input", "'input' must not be empty")),
        Some(other) => return Err(wrong("input", "a string or an array", other)),
        None => return Err(Error::invalid("input", "you must provide an input parameter")),
    }
    match map.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "float" || s == "base64" => {}
        Some(_) => return Err(Error::invalid("encoding_format", "'encoding_format' must be \"float\" or \"base64\"")),
    }
    check(&map, "dimensions", Shape::Integer)?;
    check(&map, "user", Shape::String)?;
    Ok(EmbeddingsRequest { model, body: map })
}

pub fn upstream_embeddings_body(req: &mut EmbeddingsRequest, upstream_model: &str) -> Vec<u8> {
    req.body.insert("model".into(), Value::String(upstream_model.to_string()));
    serde_json::to_vec(&req.body).unwrap_or_default()
}

/// The `usage` object as OpenAI-dialect vendors report it (OpenAI, DeepSeek, Moonshot's
/// older top-level `cached_tokens`, Responses-style `input_tokens_details`).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
    /// DeepSeek: hit + miss = prompt_tokens.
    #[serde(default)]
    pub prompt_cache_hit_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_cache_miss_tokens: Option<u64>,
    /// Moonshot (older API) reports cached tokens at the top level.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

impl WireUsage {
    /// Normalize: cached tokens are a subset of `prompt_tokens` and reasoning a subset of
    /// `completion_tokens` in this dialect, so they are subtracted, never added. Counts a
    /// vendor reports inconsistently (a subset larger than its total) are clamped so no
    /// token is counted twice.
    pub fn normalize(&self) -> Usage {
        let cache_read = self
            .prompt_cache_hit_tokens
            .or_else(|| self.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens))
            .or(self.cached_tokens)
            .unwrap_or(0)
            .min(self.prompt_tokens);
        let reasoning = self
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0)
            .min(self.completion_tokens);
        Usage {
            input_uncached: self.prompt_tokens - cache_read,
            input_cache_read: cache_read,
            input_cache_write: 0,
            output: self.completion_tokens - reasoning,
            output_reasoning: reasoning,
        }
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Usage from a complete non-streaming response body: `Ok(None)` if the body is JSON
/// without (usable) usage, `Err` if it is not JSON at all.
pub fn response_usage(body: &[u8]) -> Result<Option<Usage>, NotJson> {
    if let Some(usage) = scanned_usage(body) {
        return Ok(usage);
    }
    match serde_json::from_slice::<UsageOnly>(body) {
        Ok(u) => Ok(u.usage.map(|u| u.normalize())),
        // Valid JSON whose usage has an odd shape: relay it, estimate the usage.
        Err(_) => serde_json::from_slice::<serde::de::IgnoredAny>(body).map(|_| None).map_err(|_| NotJson),
    }
}

/// [`response_usage`] by the scanner, which checks the answer once and reads its `usage`
/// member by hand when it is plain (else with serde_json; a typed parse of the whole answer
/// cost more).
/// `None` when it cannot vouch for the answer — not an object, not UTF-8, not JSON, a member
/// name with escapes, `usage` twice — and serde_json decides as before.
fn scanned_usage(body: &[u8]) -> Option<Option<Usage>> {
    let text = std::str::from_utf8(body).ok()?;
    let (mut usage, mut unsure) = (None, false);
    scan::members(text, |name, value| {
        unsure |= name.escaped || (name.text == "usage" && usage.replace(value).is_some());
    })
    .ok()?;
    if unsure {
        return None;
    }
    // As serde_json reads `usage: Option<WireUsage>`: null is none, a wrong shape is none.
    let usage = usage
        .filter(|u| !u.is_null())
        .and_then(|u| plain_usage(u).or_else(|| serde_json::from_str::<WireUsage>(u.get()).ok()));
    Some(usage.map(|u| u.normalize()))
}

/// A `usage` object read by hand when it is the plain kind every vendor sends (counts as
/// unsigned integers, details objects, names without escapes, none twice); `None` leaves it
/// to serde_json, which then decides exactly as it would have. The scanner already checked
/// this text, so [`scan::Raw::fields`] only finds where its members end (serde_json on the
/// member costs ~3.9k instructions, two-fifths of reading the usage).
fn plain_usage(u: scan::Raw<'_>) -> Option<WireUsage> {
    let mut w = WireUsage::default();
    let (mut seen, mut plain) = (0u8, true);
    u.fields(|name, v| {
        let slot = match name.text {
            _ if name.escaped => {
                plain = false;
                return;
            }
            "prompt_tokens" => 0,
            "completion_tokens" => 1,
            "prompt_tokens_details" => 2,
            "completion_tokens_details" => 3,
            "prompt_cache_hit_tokens" => 4,
            "prompt_cache_miss_tokens" => 5,
            "cached_tokens" => 6,
            _ => return,
        };
        plain &= seen & (1 << slot) == 0;
        seen |= 1 << slot;
        let read = match slot {
            0 => v.as_u64().map(|n| w.prompt_tokens = n),
            1 => v.as_u64().map(|n| w.completion_tokens = n),
            2 => details(v, "cached_tokens")
                .map(|d| w.prompt_tokens_details = d.map(|cached_tokens| PromptDetails { cached_tokens })),
            3 => details(v, "reasoning_tokens").map(|d| {
                w.completion_tokens_details = d.map(|reasoning_tokens| CompletionDetails { reasoning_tokens })
            }),
            4 => optional_count(v).map(|n| w.prompt_cache_hit_tokens = n),
            5 => optional_count(v).map(|n| w.prompt_cache_miss_tokens = n),
            _ => optional_count(v).map(|n| w.cached_tokens = n),
        };
        plain &= read.is_some();
    })
    .ok()?;
    plain.then_some(w)
}

/// `Option<u64>`: null is `Some(None)`.
fn optional_count(v: scan::Raw<'_>) -> Option<Option<u64>> {
    if v.is_null() {
        Some(None)
    } else {
        v.as_u64().map(Some)
    }
}

/// A details object with one optional count named `field`: null is `Some(None)`.
fn details(v: scan::Raw<'_>, field: &str) -> Option<Option<Option<u64>>> {
    if v.is_null() {
        return Some(None);
    }
    if !v.is_object() {
        return None;
    }
    let (mut found, mut plain) = (None, true);
    v.fields(|name, v| {
        if name.escaped {
            plain = false;
        } else if name.text == field {
            plain &= found.is_none();
            found = Some(optional_count(v));
        }
    })
    .ok()?;
    if !plain {
        return None;
    }
    // Absent, or present and read (`None` inside when it was not a plain count).
    match found {
        None => Some(Some(None)),
        Some(read) => read.map(Some),
    }
}

/// A response body that is not JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotJson;

/// The members that tell an error object from an answer, their values unread.
#[derive(Deserialize)]
struct ErrorProbe {
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    choices: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    data: Option<serde::de::IgnoredAny>,
}

/// The error an upstream sent as a 2xx body (`{"error":{…}}` with no `choices` or `data`),
/// classified as the status it implies; None for an answer. For a body without usage (an
/// error body has none), so answers that report usage never pay for the look.
pub fn reported_error(body: &[u8]) -> Option<Error> {
    // Only an object: serde would read a struct from an array too.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let probe: ErrorProbe = serde_json::from_slice(body).ok()?;
    (probe.error.is_some() && probe.choices.is_none() && probe.data.is_none()).then(|| reply::upstream_reported(body))
}

/// The answer's text in a stream chunk, piece by piece: the string values of `content`,
/// `reasoning_content` and `arguments` (tool calls), for a usage estimate should the
/// upstream never report one. Runs on every relayed chunk, so it looks only for those
/// three member names and does not check the rest of the JSON; a value with escapes is
/// decoded by serde_json. Text is all it needs to be right about: its count is an estimate.
pub fn delta_text(data: &str, mut text: impl FnMut(&str)) {
    let b = data.as_bytes();
    let mut at = 0;
    while let Some(q) = memchr_quote_colon(b, at) {
        // `q` is the closing quote of a member name: `"name"` then `:`.
        let name_end = q;
        let Some(name_start) = b[..name_end].iter().rposition(|&c| c == b'"') else { break };
        let name = &b[name_start + 1..name_end];
        let mut v = q + 1;
        while v < b.len() && (b[v] == b':' || b[v].is_ascii_whitespace()) {
            v += 1;
        }
        at = v.max(q + 1);
        if b.get(v) != Some(&b'"') {
            continue;
        }
        // The string's end: the next quote not escaped. Strings of other members are
        // skipped whole, so nothing inside them is taken for a member name.
        let mut end = v + 1;
        let mut escaped = false;
        while end < b.len() && b[end] != b'"' {
            escaped |= b[end] == b'\\';
            end += if b[end] == b'\\' { 2 } else { 1 };
        }
        if end >= b.len() {
            break;
        }
        at = end + 1;
        if !matches!(name, b"content" | b"reasoning_content" | b"arguments") {
            continue;
        }
        if escaped {
            if let Ok(s) = serde_json::from_str::<String>(&data[v..=end]) {
                text(&s);
            }
        } else {
            text(&data[v + 1..end]);
        }
    }
}

/// The position of the next `"` that is followed (after optional whitespace) by `:`, from
/// `from`: the end of a member name.
fn memchr_quote_colon(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = b.get(i..)?.iter().position(|&c| c == b'"') {
        let q = i + off;
        let mut j = q + 1;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if b.get(j) == Some(&b':') {
            return Some(q);
        }
        i = q + 1;
    }
    None
}

/// Cheap test for whether a stream chunk carries a non-null `usage` object, so that only
/// that chunk is parsed on the hot path.
pub fn chunk_has_usage(data: &str) -> bool {
    let mut rest = data;
    while let Some(at) = rest.find("\"usage\"") {
        let after = rest[at + 7..].trim_start();
        if let Some(v) = after.strip_prefix(':') {
            if v.trim_start().starts_with('{') {
                return true;
            }
        }
        rest = &rest[at + 7..];
    }
    false
}

/// Cheap test for whether a stream chunk carries a finish reason (a string
/// `finish_reason`), which says the answer is whole.
pub fn chunk_has_finish_reason(data: &str) -> bool {
    const NAME: &str = "\"finish_reason\"";
    let mut rest = data;
    while let Some(at) = rest.find(NAME) {
        rest = &rest[at + NAME.len()..];
        if let Some(v) = rest.trim_start().strip_prefix(':') {
            if v.trim_start().starts_with('"') {
                return true;
            }
        }
    }
    false
}

#[derive(Deserialize)]
struct UsageChunk {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// A chunk that carries usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenUsage {
    pub usage: Usage,
    /// The usage-only final chunk (`choices` empty, null or absent), which a client that
    /// did not ask for usage must not see.
    pub usage_only: bool,
    /// `choices` was null or absent (vLLM and others): the SDKs need a list there.
    pub choices_missing: bool,
}

pub fn usage_chunk(data: &str) -> Option<SeenUsage> {
    let c: UsageChunk = serde_json::from_str(data).ok()?;
    Some(SeenUsage {
        usage: c.usage?.normalize(),
        usage_only: c.choices.as_ref().is_none_or(Vec::is_empty),
        choices_missing: c.choices.is_none(),
    })
}

/// Rewrite a usage chunk whose `choices` is null or missing to `"choices":[]`, the shape
/// OpenAI sends and the official SDKs require.
pub fn with_empty_choices(data: &str) -> Option<String> {
    let mut v: Value = serde_json::from_str(data).ok()?;
    v.as_object_mut()?.insert("choices".into(), Value::Array(Vec::new()));
    serde_json::to_string(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_object_in_a_2xx_body_is_the_upstreams_error() {
        let status = |e: &Error| match &e.kind {
            ErrorKind::UpstreamStatus(s) => (s.status, s.retryable, s.vendor_type.clone()),
            other => panic!("{other:?}"),
        };
        let e = reported_error(br#"{"error":{"message":"busy","type":"server_error","param":null,"code":null}}"#)
            .expect("an error body");
        assert_eq!(status(&e), (500, true, Some("server_error".into())));
        assert_eq!(e.message, "busy");
        let e = reported_error(br#"{"error":{"message":"slow down","code":429}}"#).expect("an error body");
        assert_eq!(status(&e).0, 429);
        // Answers, whatever else they carry, and bodies that are not JSON objects.
        for body in [
            &br#"{"id":"x","choices":[],"error":null}"#[..],
            br#"{"error":{"message":"partial"},"choices":[{"index":0}]}"#,
            br#"{"object":"list","data":[],"error":{"message":"x"}}"#,
            br#"{"id":"x","choices":[]}"#,
            b"<html>",
            b"[1]",
        ] {
            assert!(reported_error(body).is_none(), "{}", String::from_utf8_lossy(body));
        }
    }

    fn texts(data: &str) -> Vec<String> {
        let mut out = Vec::new();
        delta_text(data, |t| out.push(t.to_string()));
        out
    }

    #[test]
    fn delta_text_reads_content_reasoning_and_tool_arguments() {
        let c =
            r#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}"#;
        assert_eq!(texts(c), ["Hello"]);
        let r = r#"{"choices":[{"delta":{"reasoning_content":"think","content":null}}]}"#;
        assert_eq!(texts(r), ["think"]);
        let t =
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"a\":1}"}}]}}]}"#;
        assert_eq!(texts(t), [r#"{"a":1}"#], "escapes are decoded");
        // Spaces around the colon (Python servers), and a newline escape.
        assert_eq!(texts(r#"{"choices": [{"delta": {"content" : "a\nb"}}]}"#), ["a\nb"]);
        // A member name inside another string is not a member.
        let tricky = r#"{"id":"\"content\":\"no","choices":[{"delta":{"content":"yes"}}]}"#;
        assert_eq!(texts(tricky), ["yes"]);
        // Cut short: nothing past the break, and no panic.
        assert_eq!(texts(r#"{"choices":[{"delta":{"content":"unterminated"#), Vec::<String>::new());
        for cut in 0..c.len() {
            let _ = texts(&c[..cut]);
        }
    }

    fn err_param(body: &str) -> (ErrorKind, Option<String>) {
        let e = parse_chat_request(&Bytes::copy_from_slice(body.as_bytes())).unwrap_err();
        (e.kind, e.param)
    }

    #[test]
    fn validation_names_the_parameter() {
        assert_eq!(err_param("{not json").0, ErrorKind::InvalidJson);
        assert_eq!(err_param("[1]").0, ErrorKind::InvalidRequest);
        assert_eq!(err_param(r#"{"messages":[{"role":"user","content":"x"}]}"#).1.as_deref(), Some("model"));
        assert_eq!(err_param(r#"{"model":"m"}"#).1.as_deref(), Some("messages"));
        assert_eq!(err_param(r#"{"model":7,"messages":[]}"#).1.as_deref(), Some("model"));
        assert_eq!(err_param(r#"{"model":"m","messages":[]}"#).1.as_deref(), Some("messages"));
        assert_eq!(err_param(r#"{"model":"m","messages":[{"content":"x"}]}"#).1.as_deref(), Some("messages[0].role"));
        assert_eq!(err_param(r#"{"model":"m","messages":[{"role":"wizard"}]}"#).1.as_deref(), Some("messages[0].role"));
        let m = r#""model":"m","messages":[{"role":"user","content":"hi"}]"#;
        for (field, bad) in [
            ("temperature", r#""hot""#),
            ("temperature", "3"),
            ("stream", r#""yes""#),
            ("max_tokens", "1.5"),
            ("n", "0"),
            ("stop", "5"),
            ("tools", r#"{"a":1}"#),
            ("response_format", r#""json""#),
        ] {
            let (_, param) = err_param(&format!("{{{m},\"{field}\":{bad}}}"));
            assert_eq!(param.as_deref(), Some(field), "{field}={bad}");
        }
        assert_eq!(
            err_param(&format!("{{{m},\"tools\":[{{\"type\":\"function\"}}]}}")).1.as_deref(),
            Some("tools[0].function.name")
        );
    }

    #[test]
    fn unknown_fields_and_nulls_pass_through() {
        let body = r#"{"model":"deepseek/deepseek-chat","messages":[{"role":"user","content":"hi"}],"temperature":null,"x_vendor":{"a":[1,2]},"stream":true}"#;
        let mut req = parse_chat_request(&Bytes::copy_from_slice(body.as_bytes())).unwrap();
        assert!(req.stream && !req.include_usage);
        let out: Value = serde_json::from_slice(&upstream_chat_body(&mut req, "deepseek-chat")).unwrap();
        assert_eq!(out["model"], "deepseek-chat");
        assert_eq!(out["x_vendor"]["a"][1], 2);
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert!(out["temperature"].is_null());
    }

    #[test]
    fn pass_through_keeps_the_clients_bytes_but_the_model() {
        // Spacing, key order, number spelling and escapes arrive upstream as the client wrote
        // them: only the model value changes (and a stream gains `stream_options` first).
        let body =
            "{ \"x\": 1.50, \"model\" : \"a\\/b\", \"messages\":[{\"role\":\"user\",\"content\":\"caf\\u00e9\"}] }";
        let mut req = parse_chat_request(&Bytes::copy_from_slice(body.as_bytes())).unwrap();
        assert_eq!(req.model, "a/b");
        assert!(req.raw_body().is_some(), "the fast path took it");
        let out = upstream_chat_body(&mut req, "b\"c");
        assert_eq!(String::from_utf8(out).unwrap(), body.replace("\"a\\/b\"", "\"b\\\"c\""));
        let stream = body.replacen('{', "{\"stream\":true,", 1);
        let mut req = parse_chat_request(&Bytes::from(stream.clone())).unwrap();
        let out = String::from_utf8(upstream_chat_body(&mut req, "b")).unwrap();
        let want =
            stream.replacen('{', "{\"stream_options\":{\"include_usage\":true},", 1).replace("\"a\\/b\"", "\"b\"");
        assert_eq!(out, want);
        // `stream_options` present without include_usage: the map rewrites it.
        let other = body.replacen('{', "{\"stream\":true,\"stream_options\":{\"x\":1},", 1);
        let mut req = parse_chat_request(&Bytes::from(other)).unwrap();
        let out: Value = serde_json::from_slice(&upstream_chat_body(&mut req, "b")).unwrap();
        assert_eq!(out["stream_options"], serde_json::json!({"x": 1, "include_usage": true}));
        // Duplicate keys: the map walk decides (the last one wins, as everywhere in serde_json).
        let dup = r#"{"model":"x","model":"a/b","messages":[{"role":"user","content":"hi"}]}"#;
        let req = parse_chat_request(&Bytes::from_static(dup.as_bytes())).unwrap();
        assert_eq!(req.model, "a/b");
        assert!(req.raw_body().is_none());
    }

    #[test]
    fn the_map_walk_sends_numbers_as_written() {
        // A repeated name sends the body to the map walk, which writes every number again: a
        // long one must come out as the double nearest to what the client wrote.
        let body = r#"{"model":"x","model":"m","messages":[{"role":"user","content":"hi"}],"x":83333333333333333333333333333333333333333}"#;
        let mut req = parse_chat_request(&Bytes::from_static(body.as_bytes())).unwrap();
        assert!(req.raw_body().is_none());
        let out = String::from_utf8(upstream_chat_body(&mut req, "m")).unwrap();
        assert!(out.contains(r#""x":8.333333333333333e+40"#), "{out}");
    }

    #[test]
    fn needs_are_detected() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}],"tools":[{"type":"function","function":{"name":"f"}}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{}}},"max_completion_tokens":50}"#;
        let req = parse_chat_request(&Bytes::copy_from_slice(body.as_bytes())).unwrap();
        assert_eq!(req.needs, Needs { tools: true, json_schema: true, vision: true });
        assert_eq!(req.max_output_tokens, Some(50));
    }

    #[test]
    fn usage_normalization_per_vendor_shape() {
        let openai: WireUsage = serde_json::from_str(
            r#"{"prompt_tokens":100,"completion_tokens":50,"prompt_tokens_details":{"cached_tokens":40},"completion_tokens_details":{"reasoning_tokens":30}}"#,
        )
        .unwrap();
        assert_eq!(
            openai.normalize(),
            Usage { input_uncached: 60, input_cache_read: 40, input_cache_write: 0, output: 20, output_reasoning: 30 }
        );
        let deepseek: WireUsage = serde_json::from_str(
            r#"{"prompt_tokens":100,"completion_tokens":5,"prompt_cache_hit_tokens":64,"prompt_cache_miss_tokens":36}"#,
        )
        .unwrap();
        assert_eq!(deepseek.normalize().input_cache_read, 64);
        assert_eq!(deepseek.normalize().input_uncached, 36);
        let bogus: WireUsage = serde_json::from_str(
            r#"{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":99}}"#,
        )
        .unwrap();
        assert_eq!(bogus.normalize().input_total(), 10);
    }

    #[test]
    fn usage_chunk_detection() {
        assert!(!chunk_has_usage(r#"{"choices":[{"delta":{"content":"\"usage\": {"}}],"usage":null}"#));
        assert!(chunk_has_usage(r#"{"choices":[],"usage": {"prompt_tokens":1}}"#));
        assert!(chunk_has_finish_reason(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#));
        assert!(chunk_has_finish_reason(r#"{"choices":[{"delta":{}, "finish_reason" : "length"}]}"#));
        assert!(!chunk_has_finish_reason(r#"{"choices":[{"delta":{"content":"x"},"finish_reason":null}]}"#));
        assert!(!chunk_has_finish_reason(r#"{"choices":[{"delta":{"content":"\"finish_reason\":\"stop"}}]}"#));
        let seen = usage_chunk(r#"{"choices":null,"usage":{"prompt_tokens":3,"completion_tokens":2}}"#).unwrap();
        assert!(seen.usage_only && seen.choices_missing);
        assert_eq!(seen.usage.output, 2);
        let seen =
            usage_chunk(r#"{"choices":[{"delta":{}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#).unwrap();
        assert!(!seen.usage_only, "a chunk that still carries choices must be forwarded");
        assert!(usage_chunk(r#"{"usage":{"prompt_tokens":3}}"#).unwrap().choices_missing);
        let fixed: Value = serde_json::from_str(&with_empty_choices(r#"{"id":"x","usage":{}}"#).unwrap()).unwrap();
        assert_eq!(fixed["choices"], serde_json::json!([]));
    }
}

/// MiniMax-style `<think>…</think>` at the start of `message.content`: move the reasoning
/// to `message.reasoning_content` (where DeepSeek and others put it) so clients see only
/// the answer. Bodies without the tag are returned byte-for-byte.
pub fn split_think_tags(body: bytes::Bytes) -> bytes::Bytes {
    const OPEN: &str = "<think>";
    const CLOSE: &str = "</think>";
    if !body.windows(OPEN.len()).any(|w| w == OPEN.as_bytes()) {
        return body;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else { return body };
    let mut changed = false;
    if let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) {
        for choice in choices {
            let Some(msg) = choice.get_mut("message").and_then(Value::as_object_mut) else { continue };
            let Some(content) = msg.get("content").and_then(Value::as_str) else { continue };
            let trimmed = content.trim_start();
            let Some(rest) = trimmed.strip_prefix(OPEN) else { continue };
            let Some(end) = rest.find(CLOSE) else { continue };
            let reasoning = rest[..end].trim().to_string();
            let answer = rest[end + CLOSE.len()..].trim_start().to_string();
            msg.insert("content".into(), Value::String(answer));
            msg.entry("reasoning_content").or_insert(Value::String(reasoning));
            changed = true;
        }
    }
    if !changed {
        return body;
    }
    serde_json::to_vec(&v).map(bytes::Bytes::from).unwrap_or(body)
}

#[cfg(test)]
mod think_tests {
    use super::*;

    #[test]
    fn think_tags_move_to_reasoning_content() {
        let body = bytes::Bytes::from_static(
            br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"<think>plan it</think>\n\nThe answer."}}]}"#,
        );
        let out: Value = serde_json::from_slice(&split_think_tags(body)).unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "The answer.");
        assert_eq!(out["choices"][0]["message"]["reasoning_content"], "plan it");
        let plain = bytes::Bytes::from_static(br#"{"choices":[{"message":{"content":"no tags"}}]}"#);
        assert_eq!(split_think_tags(plain.clone()), plain);
    }
}
