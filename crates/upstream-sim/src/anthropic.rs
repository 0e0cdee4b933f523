//! The Anthropic Messages dialect: `POST /v1/messages` (plain and SSE
//! streaming with named events, tool use) and `POST /v1/messages/count_tokens`,
//! with Anthropic-shaped errors.
//!
//! Shares latency, failure injection, fake text and tool-argument synthesis
//! with the OpenAI dialect; only the wire shapes differ. Usage follows
//! Anthropic's accounting: `input_tokens` excludes the cached part of the
//! prompt, which is reported separately as `cache_read_input_tokens`.
//! `reasoning_tokens` is not used here (no `thinking` blocks are produced).
//! A request carrying a task marker gets its scripted answer (see `task`),
//! JSON through a forced tool coming back as that tool's input.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::body::{Script, SimBody};
use crate::config::Failure;
use crate::openai::{self, Cut, TextLen, JSON};
use crate::server::{Ctx, Reply};
use crate::task::{self, AnswerType, Choice};
use crate::text;

/// One broken event for `malformed_json` streams.
const MALFORMED_EVENT: &[u8] = b"event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"delta\": \n\n";
const PING: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";

/// Entry point for `/v1/messages` and everything under it.
pub(crate) async fn handle(ctx: &Ctx, method: &Method, path: &str, body: &Bytes) -> Reply {
    match (method, path) {
        (&Method::POST, "/v1/messages") => messages(ctx, body).await,
        (&Method::POST, "/v1/messages/count_tokens") => count_tokens(ctx, body),
        (_, "/v1/messages" | "/v1/messages/count_tokens") => Reply::Respond(error_response(
            ctx,
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Method {method} is not allowed for {path}."),
            "invalid_request_error",
        )),
        _ => Reply::Respond(error_response(
            ctx,
            StatusCode::NOT_FOUND,
            &format!("Not found: {method} {path}"),
            "not_found_error",
        )),
    }
}

/// `{"type":"error","error":{"type","message"}}` with the given status.
fn error_response(ctx: &Ctx, status: StatusCode, message: &str, kind: &str) -> Response<SimBody> {
    let body = ErrorBody { kind: "error", error: ErrorOut { kind, message } };
    ctx.response(status, JSON, SimBody::full(openai::to_json(&body)))
}

fn bad_request(ctx: &Ctx, message: &str) -> Reply {
    Reply::Respond(error_response(ctx, StatusCode::BAD_REQUEST, message, "invalid_request_error"))
}

fn default_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

// ------------------------------------------------------------- requests

#[derive(Deserialize)]
struct MessagesRequest<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    messages: Vec<MessageIn>,
    #[serde(default)]
    system: Content,
    stream: Option<bool>,
    tools: Option<Vec<ToolIn>>,
    tool_choice: Option<ToolChoice>,
    /// Structured outputs: `output_config.format` (current) or `output_format` (beta).
    output_config: Option<OutputConfig>,
    output_format: Option<Value>,
}

#[derive(Deserialize)]
struct OutputConfig {
    format: Option<Value>,
}

#[derive(Deserialize)]
struct MessageIn {
    #[serde(default)]
    content: Content,
}

#[derive(Deserialize)]
struct ToolIn {
    name: String,
    input_schema: Option<Value>,
}

#[derive(Deserialize)]
struct ToolChoice {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
}

/// A `content` or `system` field: a string or an array of blocks. Only the
/// characters of `text` blocks are counted; `tool_result` blocks are noticed
/// so the simulated model does not call a tool again right after one.
#[derive(Default)]
struct Content {
    chars: u64,
    has_tool_result: bool,
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content blocks")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content { chars: v.chars().count() as u64, has_tool_result: false })
            }
            fn visit_unit<E: de::Error>(self) -> Result<Content, E> {
                Ok(Content::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                #[derive(Deserialize)]
                struct Block {
                    #[serde(rename = "type", default)]
                    kind: String,
                    #[serde(default)]
                    text: TextLen,
                }
                let mut content = Content::default();
                while let Some(block) = seq.next_element::<Block>()? {
                    content.chars += block.text.0;
                    content.has_tool_result |= block.kind == "tool_result";
                }
                Ok(content)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl MessagesRequest<'_> {
    fn prompt_tokens(&self, ctx: &Ctx) -> u32 {
        let chars = self.system.chars + self.messages.iter().map(|m| m.content.chars).sum::<u64>();
        ctx.config().prompt_tokens.unwrap_or_else(|| text::estimate_tokens(chars))
    }

    /// The first tool, unless the last turn carries a tool result or
    /// `tool_choice` says otherwise.
    fn pick_tool(&self) -> Option<&ToolIn> {
        let tools = self.tools.as_ref()?;
        if self.messages.last().is_some_and(|m| m.content.has_tool_result) {
            return None;
        }
        match &self.tool_choice {
            Some(choice) if choice.kind == "none" => None,
            Some(ToolChoice { kind, name: Some(name) }) if kind == "tool" => tools.iter().find(|t| t.name == *name),
            _ => tools.first(),
        }
    }
}

// --------------------------------------------------------------- answers

struct ToolUse {
    id: String,
    name: String,
    input: Value,
}

/// The simulated model's answer to one request, independent of streaming.
struct Answer<'r> {
    id: String,
    model: &'r str,
    /// Text pieces (one per streamed delta); empty for tool use.
    content: Vec<&'r str>,
    tool: Option<ToolUse>,
    stop_reason: &'static str,
    usage: Usage,
}

impl<'r> Answer<'r> {
    /// `scripted`: the request's scripted task answer, which replaces the filler
    /// text or tool use (not the usage).
    fn new(ctx: &Ctx, req: &'r MessagesRequest<'r>, scripted: Option<&'r task::Reply>) -> Answer<'r> {
        let config = ctx.config();
        let prompt_tokens = req.prompt_tokens(ctx);
        let cached = config.cached_tokens.min(prompt_tokens);
        let tool_id = || format!("toolu_sim_{}", ctx.n);
        let tool = match scripted {
            Some(reply) => match &reply.body {
                task::Body::Call { name, args } => {
                    Some(ToolUse { id: tool_id(), name: name.clone(), input: args.value() })
                }
                task::Body::Text(_) => None,
            },
            None => req.pick_tool().map(|t| ToolUse {
                id: tool_id(),
                name: t.name.clone(),
                input: openai::tool_arguments_value(t.input_schema.as_ref()),
            }),
        };
        let json_mode =
            req.output_config.as_ref().and_then(|c| c.format.as_ref()).or(req.output_format.as_ref()).is_some();
        let content = if let Some(task::Reply { body: task::Body::Text(scripted_text), .. }) = scripted {
            task::pieces(scripted_text, config.output_tokens)
        } else if tool.is_some() {
            Vec::new()
        } else {
            // Structured output answers with a JSON object, as the OpenAI dialect's JSON mode does.
            let mut pieces = Vec::with_capacity(config.output_tokens as usize + 2);
            if json_mode {
                pieces.push("{\"answer\":\"");
            }
            pieces.extend((0..config.output_tokens as usize).map(text::answer_token));
            if json_mode {
                pieces.push("\"}");
            }
            pieces
        };
        Answer {
            id: format!("msg_sim_{}", ctx.n),
            model: &req.model,
            content,
            stop_reason: match (scripted.is_some_and(|r| r.truncated), &tool) {
                (true, _) => "max_tokens",
                (false, Some(_)) => "tool_use",
                (false, None) => "end_turn",
            },
            tool,
            usage: Usage {
                input_tokens: prompt_tokens - cached,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: cached,
                output_tokens: config.output_tokens,
            },
        }
    }

    fn message<'a>(
        &'a self,
        content: Vec<BlockOut<'a>>,
        stop_reason: Option<&'static str>,
        usage: Usage,
    ) -> MessageOut<'a> {
        MessageOut {
            id: &self.id,
            kind: "message",
            role: "assistant",
            model: self.model,
            content,
            stop_reason,
            stop_sequence: (),
            usage,
        }
    }
}

async fn messages(ctx: &Ctx, body: &Bytes) -> Reply {
    let req: MessagesRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return bad_request(ctx, &format!("Invalid messages request: {e}")),
    };
    let scripted = match scripted_reply(ctx, &req.model, body) {
        Ok(scripted) => scripted,
        Err(message) => return bad_request(ctx, &message),
    };
    let failure = ctx.take_failure();
    let early = openai::early_failure_with(ctx, failure, req.stream == Some(true), |status, f| {
        error_response(ctx, status, f.message, f.error_type.unwrap_or_else(|| default_error_type(status)))
    });
    if let Some(reply) = early {
        return reply;
    }
    let answer = Answer::new(ctx, &req, scripted.as_ref());
    if req.stream == Some(true) {
        stream(ctx, &answer, failure)
    } else {
        let text = answer.content.concat();
        let block = match &answer.tool {
            Some(tool) => BlockOut::ToolUse { id: &tool.id, name: &tool.name, input: &tool.input },
            None => BlockOut::Text { text: &text },
        };
        let payload = openai::to_json(&answer.message(vec![block], Some(answer.stop_reason), answer.usage));
        openai::deliver(ctx, payload, failure).await
    }
}

/// The scripted task answer to a messages request, if its text carries a task marker.
fn scripted_reply(ctx: &Ctx, model: &str, body: &[u8]) -> Result<Option<task::Reply>, String> {
    if !task::marked(body) {
        return Ok(None);
    }
    let Ok(body) = serde_json::from_slice::<Value>(body) else { return Ok(None) };
    // Tool input is a JSON object here, so it cannot be broken JSON.
    task::reply(ctx.config(), model, &task_ask(&body), false)
}

/// What a scripted answer needs of a messages request. Bourse asks for JSON with
/// a forced tool, which is [`Choice::Named`]; native structured output
/// (`output_config.format`, `output_format`) asks for JSON text.
fn task_ask(body: &Value) -> task::Ask {
    let mut texts = Vec::new();
    task::push_text(body.get("system"), &mut texts);
    let messages = body.get("messages").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    for message in messages {
        task::push_text(message.get("content"), &mut texts);
    }
    let last_blocks = messages.last().and_then(|m| m.get("content")).and_then(Value::as_array);
    let tools = body.get("tools").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let choice = body.get("tool_choice");
    let format = body.get("output_config").and_then(|c| c.get("format")).or_else(|| body.get("output_format"));
    task::Ask {
        texts,
        tools: tools
            .iter()
            .filter_map(|t| {
                let name = t.get("name")?.as_str()?.to_owned();
                Some(task::Tool { name, answer: AnswerType::of(t.get("input_schema")) })
            })
            .collect(),
        choice: match choice.and_then(|c| c.get("type")).and_then(Value::as_str) {
            Some("none") => Choice::None,
            Some("any") => Choice::Any,
            Some("tool") => match choice.and_then(|c| c.get("name")).and_then(Value::as_str) {
                Some(name) => Choice::Named(name.to_owned()),
                None => Choice::Any,
            },
            _ => Choice::Auto,
        },
        after_tool_result: last_blocks
            .is_some_and(|blocks| blocks.iter().any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))),
        json: format.filter(|f| !f.is_null()).map(|f| AnswerType::of(f.get("schema"))),
    }
}

fn count_tokens(ctx: &Ctx, body: &Bytes) -> Reply {
    let req: MessagesRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return bad_request(ctx, &format!("Invalid count_tokens request: {e}")),
    };
    let payload = openai::to_json(&TokenCount { input_tokens: req.prompt_tokens(ctx) });
    Reply::Respond(ctx.response(StatusCode::OK, JSON, SimBody::full(payload)))
}

/// Writes one `event: NAME\ndata: {json}\n\n`.
fn event<T: Serialize>(script: &mut Script, name: &str, data: &T) {
    script.push(b"event: ");
    script.push(name.as_bytes());
    script.push(b"\ndata: ");
    openai::write_json(script.buf(), data);
    script.push(b"\n\n");
}

/// An `error` event, as the API sends one when it is overloaded after its 200.
fn error_event(script: &mut Script) {
    event(
        script,
        "error",
        &ErrorBody { kind: "error", error: ErrorOut { kind: "overloaded_error", message: openai::OVERLOADED } },
    );
}

fn stream(ctx: &Ctx, answer: &Answer<'_>, failure: &Failure) -> Reply {
    let config = ctx.config();
    let mut script = Script::default();
    openai::preamble(&mut script, config.ttft_ms, config.keepalive_comments, b": keep-alive\n\n");
    let cut = Cut::of(failure);
    if let Some((0, Cut::Error)) = cut {
        // The error is the stream's first event.
        error_event(&mut script);
        return Reply::Respond(openai::sse_response(ctx, script.into_body(ctx.stream_stats())));
    }

    // Like the real API: the start message already counts one output token.
    let start_usage = Usage { output_tokens: 1, ..answer.usage };
    event(
        &mut script,
        "message_start",
        &MessageStart { kind: "message_start", message: answer.message(Vec::new(), None, start_usage) },
    );
    let tool_json = answer.tool.as_ref().map(|t| t.input.to_string());
    // A streamed `tool_use` block starts with `input: {}`.
    let empty_input = Value::Object(serde_json::Map::new());
    let (block, deltas): (BlockOut<'_>, Vec<DeltaOut<'_>>) = match (&answer.tool, &tool_json) {
        (Some(tool), Some(json)) => {
            let pieces = text::split_even(json, (config.output_tokens as usize).max(3));
            // The real API opens tool input with an empty fragment.
            let deltas =
                std::iter::once("").chain(pieces).map(|p| DeltaOut::InputJsonDelta { partial_json: p }).collect();
            (BlockOut::ToolUse { id: &tool.id, name: &tool.name, input: &empty_input }, deltas)
        }
        _ => (BlockOut::Text { text: "" }, answer.content.iter().map(|t| DeltaOut::TextDelta { text: t }).collect()),
    };
    event(
        &mut script,
        "content_block_start",
        &BlockStart { kind: "content_block_start", index: 0, content_block: block },
    );
    script.push(PING);
    if *failure == Failure::MalformedJson {
        script.push(&ctx.malformed(MALFORMED_EVENT));
    }

    for (i, delta) in deltas.iter().enumerate() {
        if i > 0 {
            script.wait(config.chunk_delay_ms);
        }
        let write = |script: &mut Script| {
            event(script, "content_block_delta", &BlockDelta { kind: "content_block_delta", index: 0, delta })
        };
        if let Some((_, how)) = cut.filter(|(at, _)| *at == i) {
            // No stop events: the stream just ends badly.
            how.end(&mut script, Some(&write), &error_event);
            return Reply::Respond(openai::sse_response(ctx, script.into_body(ctx.stream_stats())));
        }
        write(&mut script);
    }
    if let Some((_, how)) = cut {
        how.end(&mut script, None, &error_event);
        return Reply::Respond(openai::sse_response(ctx, script.into_body(ctx.stream_stats())));
    }

    event(&mut script, "content_block_stop", &BlockStop { kind: "content_block_stop", index: 0 });
    event(
        &mut script,
        "message_delta",
        &MessageDelta {
            kind: "message_delta",
            delta: StopDelta { stop_reason: answer.stop_reason, stop_sequence: () },
            usage: OutputUsage { output_tokens: answer.usage.output_tokens },
        },
    );
    event(&mut script, "message_stop", &TypeOnly { kind: "message_stop" });
    Reply::Respond(openai::sse_response(ctx, script.into_body(ctx.stream_stats())))
}

// ------------------------------------------------------- response shapes

#[derive(Serialize, Clone, Copy)]
struct Usage {
    input_tokens: u32,
    cache_creation_input_tokens: u32,
    cache_read_input_tokens: u32,
    output_tokens: u32,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<BlockOut<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: (),
    usage: Usage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockOut<'a> {
    Text { text: &'a str },
    ToolUse { id: &'a str, name: &'a str, input: &'a Value },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DeltaOut<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: MessageOut<'a>,
}

#[derive(Serialize)]
struct BlockStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: BlockOut<'a>,
}

#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: &'a DeltaOut<'a>,
}

#[derive(Serialize)]
struct BlockStop {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
}

#[derive(Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta,
    usage: OutputUsage,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: (),
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u32,
}

#[derive(Serialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct TokenCount {
    input_tokens: u32,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorOut<'a>,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}
