//! The OpenAI dialect: `/v1/chat/completions` (plain and SSE streaming, tool
//! calls, JSON mode), `/v1/embeddings` and `/v1/models`, with OpenAI-shaped
//! errors.
//!
//! Requests are parsed into small borrowed structs that skip everything the
//! simulator does not use; prompt text is only counted, never copied, except
//! in a request carrying a task marker, which is parsed again for its
//! scripted answer (see `task`).
//! Responses are serialized from borrowed structs in a single pass.
//! Other vendors' dialects belong in sibling modules with the same shape:
//! a `handle` entry point returning a [`Reply`].

use std::borrow::Cow;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, RETRY_AFTER};
use hyper::{Method, Response, StatusCode};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::body::{push_stamp_now, FrameSource, Script, SimBody};
use crate::config::{Failure, SimConfig, UsageChunkChoices, UsageStyle};
use crate::server::{Ctx, Reply};
use crate::task::{self, AnswerType};
use crate::text;

/// `created` for models; a fixed date keeps the list byte-identical across runs.
const MODELS_CREATED: u64 = 1_700_000_000;
const FINGERPRINT: &str = "fp_upstream_sim";
const SERVICE_TIER: &str = "default";
pub(crate) const JSON: &str = "application/json";
/// What `malformed_json` sends: the start of a plausible body, cut off.
const MALFORMED_BODY: &[u8] = br#"{"id": "chatcmpl-sim-broken", "object": "chat.completion", "choices": ["#;
const MALFORMED_CHUNK: &[u8] = b"data: {\"id\": \"chatcmpl-sim-broken\", \"choices\": [{\"delta\": \n\n";
/// What `wrong_content_type` sends, as `text/html`.
const HTML_PAGE: &[u8] =
    b"<!DOCTYPE html>\n<html><head><title>503 Service Temporarily Unavailable</title></head>\n<body><h1>Service Temporarily Unavailable</h1></body></html>\n";
/// The message of the error a `ok_with_error` answer carries.
pub(crate) const OVERLOADED: &str = "simulated overload in a 200 answer";
/// Embedding vectors beyond this are refused rather than allocated.
const MAX_DIMS: u32 = 65_536;

/// Responses derived from the config alone, built once per `set_config`.
pub(crate) struct Precomputed {
    models_body: Bytes,
}

impl Precomputed {
    pub(crate) fn new(config: &SimConfig) -> Precomputed {
        let list = ModelList { object: "list", data: config.models.iter().map(|id| ModelOut::new(id)).collect() };
        Precomputed { models_body: Bytes::from(to_json(&list)) }
    }
}

/// Entry point for every `/v1` request.
pub(crate) async fn handle(ctx: &Ctx, method: &Method, path: &str, body: &Bytes) -> Reply {
    match (method, path) {
        (&Method::POST, "/v1/chat/completions") => chat(ctx, body).await,
        (&Method::POST, "/v1/embeddings") => embeddings(ctx, body).await,
        (&Method::GET, "/v1/models") => {
            Reply::Respond(ctx.response(StatusCode::OK, JSON, SimBody::full(ctx.active.openai.models_body.clone())))
        }
        (&Method::GET, _) if path.starts_with("/v1/models/") => {
            Reply::Respond(model(ctx, &path["/v1/models/".len()..]))
        }
        (_, "/v1/chat/completions" | "/v1/embeddings" | "/v1/models") => Reply::Respond(error_response(
            ctx,
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Method {method} is not allowed for {path}."),
            "invalid_request_error",
            Some("method_not_supported"),
        )),
        _ => Reply::Respond(unknown_route(ctx, method, path)),
    }
}

/// 404 for any path the simulator does not serve, worded like OpenAI's.
pub(crate) fn unknown_route(ctx: &Ctx, method: &Method, path: &str) -> Response<SimBody> {
    error_response(
        ctx,
        StatusCode::NOT_FOUND,
        &format!("Unknown request URL: {method} {path}. Please check the URL for typos."),
        "invalid_request_error",
        Some("unknown_url"),
    )
}

/// `{"error":{"message","type","param":null,"code"}}` with the given status.
pub(crate) fn error_response(
    ctx: &Ctx,
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
) -> Response<SimBody> {
    error_with_param(ctx, status, message, kind, None, code)
}

fn error_with_param(
    ctx: &Ctx,
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<SimBody> {
    let body = ErrorBody { error: ErrorOut { message, kind, param, code } };
    ctx.response(status, JSON, SimBody::full(to_json(&body)))
}

fn bad_request(ctx: &Ctx, message: &str) -> Reply {
    Reply::Respond(error_response(ctx, StatusCode::BAD_REQUEST, message, "invalid_request_error", None))
}

/// Turns the failures that do not depend on the payload into a
/// reply; `None` means "produce the payload" (possibly damaged later).
fn early_failure(ctx: &Ctx, failure: &Failure, stream: bool) -> Option<Reply> {
    early_failure_with(ctx, failure, stream, |status, failure| {
        error_response(
            ctx,
            status,
            failure.message,
            failure.error_type.unwrap_or_else(|| default_error_type(status)),
            failure.code,
        )
    })
}

/// The caller-visible parts of an injected `Failure::Status`, for a dialect
/// to render in its own error shape.
pub(crate) struct StatusFailure<'a> {
    pub(crate) message: &'a str,
    /// The configured `error_type`, if any; each dialect has its own default.
    pub(crate) error_type: Option<&'a str>,
    pub(crate) code: Option<&'a str>,
}

/// [`early_failure`] for any dialect: `render` builds the error response for
/// an injected status (its message quoting the request's credentials when the
/// config says `echo_credentials`, and the body of a non-streaming `ok_with_error`, a
/// 503's sent as a 200); `Retry-After`, close, stall and the HTML page are handled here.
pub(crate) fn early_failure_with(
    ctx: &Ctx,
    failure: &Failure,
    stream: bool,
    render: impl FnOnce(StatusCode, StatusFailure<'_>) -> Response<SimBody>,
) -> Option<Reply> {
    match failure {
        Failure::None
        | Failure::DropMidStream { .. }
        | Failure::StallMidStream { .. }
        | Failure::Truncate { .. }
        | Failure::MalformedJson => None,
        Failure::OkWithError { .. } if stream => None,
        Failure::OkWithError { .. } => {
            let failure = StatusFailure { message: OVERLOADED, error_type: None, code: None };
            let mut response = render(StatusCode::SERVICE_UNAVAILABLE, failure);
            *response.status_mut() = StatusCode::OK;
            Some(Reply::Respond(response))
        }
        Failure::WrongContentType => {
            Some(Reply::Respond(ctx.response(StatusCode::OK, "text/html; charset=utf-8", SimBody::full(HTML_PAGE))))
        }
        Failure::Close => Some(Reply::Close),
        Failure::Stall => Some(Reply::Stall),
        Failure::Status { status, retry_after, error_type, code, message } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = message.as_deref().unwrap_or("simulated failure");
            let echoed = ctx.credentials.as_ref().map(|c| format!("{message} (request credentials: {c})"));
            let mut response = render(
                status,
                StatusFailure {
                    message: echoed.as_deref().unwrap_or(message),
                    error_type: error_type.as_deref(),
                    code: code.as_deref(),
                },
            );
            if let Some(seconds) = retry_after {
                response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(*seconds));
            }
            Some(Reply::Respond(response))
        }
    }
}

fn default_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 => "timeout_error",
        409 => "conflict_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    write_json(&mut out, value);
    out
}

pub(crate) fn write_json<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    // Serializing these plain structs into a Vec cannot fail (no maps with
    // non-string keys, no fallible Serialize impls), so there is no error path.
    let _ = serde_json::to_writer(out, value);
}

/// Writes `count` copies of `line`, evenly spread over `ttft_ms`, as a
/// provider does while a request waits for capacity.
pub(crate) fn preamble(script: &mut Script, ttft_ms: u64, count: u32, line: &[u8]) {
    let step = ttft_ms / (u64::from(count) + 1);
    for _ in 0..count {
        script.wait(step);
        script.push(line);
    }
    script.wait(ttft_ms - step * u64::from(count));
}

/// Sends a complete non-streaming JSON payload, applying latency, keep-alive
/// blank lines and the payload-damaging failures.
pub(crate) async fn deliver(ctx: &Ctx, payload: Vec<u8>, failure: &Failure) -> Reply {
    let config = ctx.config();
    let payload = match failure {
        Failure::MalformedJson => ctx.malformed(MALFORMED_BODY).into_owned(),
        _ => payload,
    };
    // A body cut short: where it stops, it is cut as a stream would be.
    let cut = Cut::of(failure).map(|(_, cut)| cut).filter(|c| *c != Cut::Error);
    let blank_lines = config.keepalive_comments;
    if blank_lines == 0 && config.ttft_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(config.ttft_ms)).await;
    }
    if blank_lines == 0 && cut.is_none() {
        return Reply::Respond(ctx.response(StatusCode::OK, JSON, SimBody::full(payload)));
    }
    // Headers go out now; the body trickles.
    let mut script = Script::default();
    if blank_lines > 0 {
        preamble(&mut script, config.ttft_ms, blank_lines, b"\n");
    }
    let half = &payload[..payload.len() / 2];
    match cut {
        None => script.push(&payload),
        // Promise the full length, deliver half: the client sees a truncated body.
        Some(Cut::Abort) => {
            script.declare_len(blank_lines as usize + payload.len());
            script.push(half);
            script.abort();
        }
        Some(Cut::Stall) => {
            script.declare_len(blank_lines as usize + payload.len());
            script.push(half);
            script.stall();
        }
        // Chunked, so the half body ends as cleanly as a whole one.
        Some(Cut::Truncate { .. } | Cut::Error) => script.push(half),
    }
    Reply::Respond(ctx.response(StatusCode::OK, JSON, script.into_body(None)))
}

/// How a failure ends a stream before its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Abort the connection (`drop_mid_stream`).
    Abort,
    /// Send nothing more, connection held open (`stall_mid_stream`).
    Stall,
    /// A clean end of the body; with `true`, after half of the next event (`truncate`).
    Truncate { mid_event: bool },
    /// The dialect's error event, then a clean end of the body (`ok_with_error`).
    Error,
}

impl Cut {
    /// Where `failure` cuts a stream (after how many delta chunks), and how.
    pub(crate) fn of(failure: &Failure) -> Option<(usize, Cut)> {
        match *failure {
            Failure::DropMidStream { after_chunks } => Some((after_chunks as usize, Cut::Abort)),
            Failure::StallMidStream { after_chunks } => Some((after_chunks as usize, Cut::Stall)),
            Failure::Truncate { after_chunks, mid_event } => Some((after_chunks as usize, Cut::Truncate { mid_event })),
            Failure::OkWithError { after_chunks } => Some((after_chunks as usize, Cut::Error)),
            _ => None,
        }
    }

    /// Ends `script` this way. `next` writes the event that was due (a truncated
    /// stream sends half of it; None when none was left), `error` the dialect's
    /// error event.
    pub(crate) fn end(self, script: &mut Script, next: Option<&dyn Fn(&mut Script)>, error: &dyn Fn(&mut Script)) {
        match self {
            Cut::Abort => script.abort(),
            Cut::Stall => script.stall(),
            Cut::Truncate { mid_event: false } => {}
            Cut::Truncate { mid_event: true } => {
                if let Some(next) = next {
                    let at = script.buf().len();
                    next(script);
                    script.cut_from(at);
                }
            }
            Cut::Error => error(script),
        }
    }
}

// ---------------------------------------------------------------- chat

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    messages: Vec<MessageIn<'a>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    tools: Option<Vec<ToolIn>>,
    tool_choice: Option<Value>,
    response_format: Option<ResponseFormat>,
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(default)]
    content: TextLen,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ToolIn {
    function: Option<FunctionIn>,
}

#[derive(Deserialize)]
struct FunctionIn {
    name: String,
    parameters: Option<Value>,
}

#[derive(Deserialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: String,
}

/// Character count of a message `content`: a string, an array of parts
/// (only their `text` counts), or null. Counted in place, never copied.
#[derive(Default)]
pub(crate) struct TextLen(pub(crate) u64);

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextLen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an array of content parts, or null")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextLen, E> {
                Ok(TextLen(v.chars().count() as u64))
            }
            fn visit_unit<E: de::Error>(self) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_none<E: de::Error>(self) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<TextLen, D::Error> {
                TextLen::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextLen, A::Error> {
                #[derive(Deserialize)]
                struct Part {
                    #[serde(default)]
                    text: TextLen,
                }
                let mut total = 0;
                while let Some(part) = seq.next_element::<Part>()? {
                    total += part.text.0;
                }
                Ok(TextLen(total))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// The tool call the simulated model decides to make.
struct ToolCall {
    id: String,
    name: String,
    arguments: String,
}

/// The simulated model's answer to one chat request, independent of whether
/// it is streamed.
struct Answer<'r> {
    id: String,
    model: &'r str,
    created: u64,
    reasoning: Vec<&'static str>,
    /// Content pieces (one per streamed delta); unused for tool calls.
    content: Vec<&'r str>,
    tool_call: Option<ToolCall>,
    finish_reason: &'static str,
    usage: Usage,
}

impl<'r> Answer<'r> {
    /// `scripted`: the request's scripted task answer, which replaces the filler
    /// text or tool call (not the usage).
    fn new(ctx: &Ctx, req: &'r ChatRequest<'r>, scripted: Option<&'r task::Reply>) -> Answer<'r> {
        let config = ctx.config();
        let prompt_chars: u64 = req.messages.iter().map(|m| m.content.0).sum();
        let prompt_tokens = config.prompt_tokens.unwrap_or_else(|| text::estimate_tokens(prompt_chars));
        let usage = Usage::new(config, prompt_tokens, config.output_tokens.saturating_add(config.reasoning_tokens));
        let reasoning = (0..config.reasoning_tokens as usize).map(text::reasoning_token).collect();
        let call_id = || format!("call_sim_{}", ctx.n);
        let tool_call = match scripted {
            Some(reply) => match &reply.body {
                task::Body::Call { name, args } => {
                    Some(ToolCall { id: call_id(), name: name.clone(), arguments: args.text() })
                }
                task::Body::Text(_) => None,
            },
            None => pick_tool(req).map(|f| ToolCall {
                id: call_id(),
                name: f.name.clone(),
                arguments: tool_arguments(f.parameters.as_ref()),
            }),
        };
        let mut content = Vec::new();
        if let Some(task::Reply { body: task::Body::Text(scripted_text), .. }) = scripted {
            if config.think_tags {
                content.extend_from_slice(&text::THINK_PIECES);
            }
            content.extend(task::pieces(scripted_text, config.output_tokens));
        } else if tool_call.is_none() {
            let tokens = config.output_tokens as usize;
            let json_mode =
                req.response_format.as_ref().is_some_and(|f| f.kind == "json_object" || f.kind == "json_schema");
            content.reserve(tokens + 5);
            if config.think_tags {
                content.extend_from_slice(&text::THINK_PIECES);
            }
            if json_mode {
                content.push("{\"answer\":\"");
            }
            // One push per token, so each `&'static str` coerces to the vector's `&'r str`.
            for i in 0..tokens {
                content.push(text::answer_token(i));
            }
            if json_mode {
                content.push("\"}");
            }
        }
        Answer {
            id: format!("chatcmpl-sim-{}", ctx.n),
            model: &req.model,
            created: now_secs(),
            reasoning,
            content,
            finish_reason: match (scripted.is_some_and(|r| r.truncated), &tool_call) {
                (true, _) => "length",
                (false, Some(_)) => "tool_calls",
                (false, None) => "stop",
            },
            tool_call,
            usage,
        }
    }
}

/// The first declared function, unless the conversation is already
/// answering a tool call or `tool_choice` says otherwise.
fn pick_tool<'r>(req: &'r ChatRequest<'_>) -> Option<&'r FunctionIn> {
    let functions = req.tools.as_ref()?.iter().filter_map(|t| t.function.as_ref());
    if req.messages.last().is_some_and(|m| m.role == "tool") {
        return None;
    }
    match &req.tool_choice {
        Some(Value::String(mode)) if mode == "none" => None,
        Some(Value::Object(choice)) => {
            let wanted = choice.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            let mut functions = functions;
            match wanted {
                Some(name) => functions.find(|f| f.name == name),
                None => functions.next(),
            }
        }
        _ => functions.into_iter().next(),
    }
}

/// Arguments that satisfy the tool's JSON schema well enough for a client
/// to parse: one sample value per declared property.
fn tool_arguments(parameters: Option<&Value>) -> String {
    tool_arguments_value(parameters).to_string()
}

/// [`tool_arguments`] as a JSON object, for dialects that send arguments as
/// an object rather than a string.
pub(crate) fn tool_arguments_value(parameters: Option<&Value>) -> Value {
    let Some(properties) = parameters.and_then(|p| p.get("properties")).and_then(Value::as_object) else {
        return serde_json::json!({"location": "Paris"});
    };
    let args: serde_json::Map<String, Value> =
        properties.iter().map(|(name, schema)| (name.clone(), sample_value(name, schema))).collect();
    Value::Object(args)
}

fn sample_value(name: &str, schema: &Value) -> Value {
    if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
        return first.clone();
    }
    let kind = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        // `["string", "null"]` and the like: the first type will do.
        Some(Value::Array(types)) => types.first().and_then(Value::as_str).unwrap_or("string"),
        _ => "string",
    };
    match kind.to_ascii_lowercase().as_str() {
        "integer" | "number" => Value::from(42),
        "boolean" => Value::Bool(true),
        "array" => Value::Array(Vec::new()),
        "object" => Value::Object(serde_json::Map::new()),
        "null" => Value::Null,
        _ if name.contains("location") || name.contains("city") => Value::from("Paris"),
        _ => Value::from("sim"),
    }
}

async fn chat(ctx: &Ctx, body: &Bytes) -> Reply {
    let req: ChatRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return bad_request(ctx, &format!("Invalid chat completion request: {e}")),
    };
    let scripted = match scripted_reply(ctx, &req.model, body) {
        Ok(scripted) => scripted,
        Err(message) => return bad_request(ctx, &message),
    };
    let failure = ctx.take_failure();
    if let Some(reply) = early_failure(ctx, failure, req.stream == Some(true)) {
        return reply;
    }
    let answer = Answer::new(ctx, &req, scripted.as_ref());
    let reports_usage = ctx.config().usage_style != UsageStyle::Omitted;
    if req.stream == Some(true) {
        let include_usage = req.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        stream_chat(ctx, &answer, include_usage && reports_usage, failure)
    } else {
        deliver(ctx, completion_json(&answer, reports_usage), failure).await
    }
}

/// The scripted task answer to a chat request, if its text carries a task marker.
fn scripted_reply(ctx: &Ctx, model: &str, body: &[u8]) -> Result<Option<task::Reply>, String> {
    if !task::marked(body) {
        return Ok(None);
    }
    // Already parsed once into `ChatRequest`, so this only fails on an oddity
    // such as a marker outside any JSON string; such a request is unscripted.
    let Ok(body) = serde_json::from_slice::<Value>(body) else { return Ok(None) };
    task::reply(ctx.config(), model, &task_ask(&body), true)
}

/// What a scripted answer needs of a chat completion request.
fn task_ask(body: &Value) -> task::Ask {
    let messages = body.get("messages").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let mut texts = Vec::new();
    for message in messages {
        task::push_text(message.get("content"), &mut texts);
    }
    let tools = body.get("tools").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let choice = match body.get("tool_choice") {
        Some(Value::String(mode)) if mode == "none" => task::Choice::None,
        Some(Value::String(mode)) if mode == "required" => task::Choice::Any,
        Some(Value::Object(choice)) => match choice.get("function").and_then(|f| f.get("name")).and_then(Value::as_str)
        {
            Some(name) => task::Choice::Named(name.to_owned()),
            None => task::Choice::Any,
        },
        _ => task::Choice::Auto,
    };
    let format = body.get("response_format");
    task::Ask {
        texts,
        tools: tools
            .iter()
            .filter_map(|t| {
                let function = t.get("function")?;
                let name = function.get("name")?.as_str()?.to_owned();
                Some(task::Tool { name, answer: AnswerType::of(function.get("parameters")) })
            })
            .collect(),
        choice,
        after_tool_result: messages.last().and_then(|m| m.get("role")).and_then(Value::as_str) == Some("tool"),
        json: match format.and_then(|f| f.get("type")).and_then(Value::as_str) {
            Some("json_object") => Some(AnswerType::String),
            Some("json_schema") => {
                Some(AnswerType::of(format.and_then(|f| f.get("json_schema")).and_then(|s| s.get("schema"))))
            }
            _ => None,
        },
    }
}

fn completion_json(answer: &Answer<'_>, reports_usage: bool) -> Vec<u8> {
    let reasoning = (!answer.reasoning.is_empty()).then(|| answer.reasoning.concat());
    let (content, tool_calls) = match &answer.tool_call {
        Some(call) => (
            None,
            Some([ToolCallOut {
                id: &call.id,
                kind: "function",
                function: FunctionOut { name: &call.name, arguments: &call.arguments },
            }]),
        ),
        None => (Some(answer.content.concat()), None),
    };
    to_json(&Completion {
        id: &answer.id,
        object: "chat.completion",
        created: answer.created,
        model: answer.model,
        choices: [Choice {
            index: 0,
            message: MessageOut { role: "assistant", content, refusal: (), reasoning_content: reasoning, tool_calls },
            logprobs: (),
            finish_reason: answer.finish_reason,
        }],
        usage: reports_usage.then_some(&answer.usage),
        system_fingerprint: FINGERPRINT,
        service_tier: SERVICE_TIER,
    })
}

/// One streamed delta after the role chunk.
enum Event<'a> {
    Reasoning(&'static str),
    Content(&'a str),
    ToolHead,
    ToolArgs(&'a str),
}

fn stream_chat(ctx: &Ctx, answer: &Answer<'_>, include_usage: bool, failure: &Failure) -> Reply {
    let config = ctx.config();
    let mut events: Vec<Event> = answer.reasoning.iter().map(|r| Event::Reasoning(r)).collect();
    match &answer.tool_call {
        Some(call) => {
            events.push(Event::ToolHead);
            let pieces = (config.output_tokens as usize).max(3);
            events.extend(text::split_even(&call.arguments, pieces).into_iter().map(Event::ToolArgs));
        }
        None => events.extend(answer.content.iter().map(|c| Event::Content(c))),
    }

    let writer = ChunkWriter::new(answer, include_usage, config.stamp_chunks);
    let mut script = Script::default();
    preamble(&mut script, config.ttft_ms, config.keepalive_comments, b": keep-alive\n\n");
    let cut = Cut::of(failure);
    if let Some((0, Cut::Error)) = cut {
        // The error is the stream's first event.
        error_event(&mut script);
        return Reply::Respond(sse_response(ctx, script.into_body(ctx.stream_stats())));
    }

    // OpenAI folds the tool call's opening into the role chunk when nothing precedes it.
    let mut events = events.as_slice();
    if let [Event::ToolHead, rest @ ..] = events {
        let mut delta = writer.tool_head_delta();
        delta.role = Some("assistant");
        delta.content = Some(None);
        delta.refusal = Some(());
        writer.delta(&mut script, delta);
        events = rest;
    } else {
        writer.delta(
            &mut script,
            Delta { role: Some("assistant"), content: Some(Some("")), refusal: Some(()), ..Delta::default() },
        );
    }
    if *failure == Failure::MalformedJson {
        script.push(&ctx.malformed(MALFORMED_CHUNK));
    }

    // A plain paced answer (token i is `answer_token(i)`) is written chunk by chunk as it
    // is sent: built up front, a long stream would hold every chunk per connection.
    let plain = config.chunk_delay_ms > 0
        && cut.is_none()
        && answer.reasoning.is_empty()
        && answer.tool_call.is_none()
        && answer.content.iter().enumerate().all(|(i, c)| *c == text::answer_token(i));
    for (i, event) in events.iter().enumerate() {
        if plain && i == 1 {
            let source = PlainDeltas { head: writer.head.clone(), usage_null: writer.usage_null, stamp: writer.stamp };
            script.paced(config.chunk_delay_ms, 1..events.len(), Box::new(source));
            break;
        }
        if i > 0 {
            script.wait(config.chunk_delay_ms);
        }
        let write = |script: &mut Script| writer.delta(script, writer.event_delta(event));
        if let Some((at, how)) = cut.filter(|(at, _)| *at == i) {
            debug_assert_eq!(at, i);
            how.end(&mut script, Some(&write), &error_event);
            return Reply::Respond(sse_response(ctx, script.into_body(ctx.stream_stats())));
        }
        write(&mut script);
    }
    if let Some((_, how)) = cut {
        // Asked to cut after more chunks than there are: still never finish.
        how.end(&mut script, None, &error_event);
        return Reply::Respond(sse_response(ctx, script.into_body(ctx.stream_stats())));
    }

    writer.finish(&mut script, answer.finish_reason);
    if include_usage {
        let choices = match config.usage_chunk_choices {
            UsageChunkChoices::Empty => Choices::Empty,
            UsageChunkChoices::Null => Choices::Null,
            UsageChunkChoices::Absent => Choices::Absent,
        };
        writer.usage(&mut script, choices);
    }
    script.push(b"data: [DONE]\n\n");
    Reply::Respond(sse_response(ctx, script.into_body(ctx.stream_stats())))
}

/// An OpenAI error chunk, as OpenAI sends one when a stream fails after its 200.
fn error_event(script: &mut Script) {
    script.push(b"data: ");
    let body = ErrorBody { error: ErrorOut { message: OVERLOADED, kind: "server_error", param: None, code: None } };
    write_json(script.buf(), &body);
    script.push(b"\n\n");
}

pub(crate) fn sse_response(ctx: &Ctx, body: SimBody) -> Response<SimBody> {
    let mut response = ctx.response(StatusCode::OK, "text/event-stream", body);
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Serializes `chat.completion.chunk` events of one answer.
struct ChunkWriter<'a> {
    answer: &'a Answer<'a>,
    /// With `include_usage`, every chunk before the usage chunk carries `"usage":null`.
    usage_null: bool,
    /// `stamp_chunks`: every chunk ends with `"sim_sent_us":<send time>`.
    stamp: bool,
    /// `data: {"id":...,"choices":[{"index":0,"delta":` — identical for every
    /// delta chunk of the answer, so it is serialized once, not per token.
    head: Vec<u8>,
}

impl<'a> ChunkWriter<'a> {
    fn new(answer: &'a Answer<'a>, usage_null: bool, stamp: bool) -> ChunkWriter<'a> {
        let mut writer = ChunkWriter { answer, usage_null, stamp, head: Vec::new() };
        let mut head = Vec::with_capacity(256);
        writer.chunk_into(&mut head, Choices::Absent, UsageField::Omit);
        // Reopen the object (drop `}\n\n`) and start the choice.
        head.truncate(head.len().saturating_sub(3));
        head.extend_from_slice(br#","choices":[{"index":0,"delta":"#);
        writer.head = head;
        writer
    }

    fn tool_head_delta(&self) -> Delta<'a> {
        let call = self.answer.tool_call.as_ref();
        Delta {
            tool_calls: Some([ToolDelta {
                index: 0,
                id: call.map(|c| c.id.as_str()),
                kind: Some("function"),
                function: FunctionDelta { name: call.map(|c| c.name.as_str()), arguments: "" },
            }]),
            ..Delta::default()
        }
    }

    /// The delta chunk of one streamed event after the role chunk.
    fn event_delta<'e>(&self, event: &'e Event<'e>) -> Delta<'e>
    where
        'a: 'e,
    {
        match event {
            Event::Reasoning(r) => Delta { reasoning_content: Some(r), ..Delta::default() },
            Event::Content(c) => Delta { content: Some(Some(c)), ..Delta::default() },
            Event::ToolHead => self.tool_head_delta(),
            Event::ToolArgs(fragment) => Delta {
                tool_calls: Some([ToolDelta {
                    index: 0,
                    id: None,
                    kind: None,
                    function: FunctionDelta { name: None, arguments: fragment },
                }]),
                ..Delta::default()
            },
        }
    }

    /// A chunk with one choice and no finish reason: the per-token hot path.
    fn delta(&self, script: &mut Script, delta: Delta<'_>) {
        delta_chunk_open(script.buf(), &self.head, &delta, self.usage_null);
        self.close(script);
    }

    fn finish(&self, script: &mut Script, finish_reason: &str) {
        let usage = if self.usage_null { UsageField::Null } else { UsageField::Omit };
        let choice =
            ChunkChoice { index: 0, delta: Delta::default(), logprobs: (), finish_reason: Some(finish_reason) };
        self.serialized(script, Choices::One([choice]), usage);
    }

    fn usage(&self, script: &mut Script, choices: Choices<'_>) {
        self.serialized(script, choices, UsageField::Some(&self.answer.usage));
    }

    /// A whole chunk from [`Self::chunk_into`], reopened for the stamp if there is one.
    fn serialized(&self, script: &mut Script, choices: Choices<'_>, usage: UsageField<'_>) {
        self.chunk_into(script.buf(), choices, usage);
        if self.stamp {
            let buf = script.buf();
            // Drop `}\n\n`; `close` writes it back after the stamp.
            buf.truncate(buf.len().saturating_sub(3));
            self.close(script);
        }
    }

    /// Ends a chunk: the stamp slot if asked for, then `}` and the event's blank line.
    fn close(&self, script: &mut Script) {
        if self.stamp {
            script.push(br#","sim_sent_us":"#);
            script.stamp();
        }
        script.push(b"}\n\n");
    }

    fn chunk_into(&self, out: &mut Vec<u8>, choices: Choices<'_>, usage: UsageField<'_>) {
        out.extend_from_slice(b"data: ");
        write_json(
            out,
            &Chunk {
                id: &self.answer.id,
                object: "chat.completion.chunk",
                created: self.answer.created,
                model: self.answer.model,
                system_fingerprint: FINGERPRINT,
                service_tier: SERVICE_TIER,
                choices,
                usage,
            },
        );
        out.extend_from_slice(b"\n\n");
    }
}

/// A delta chunk up to its closing brace: `head`, the delta, the choice's tail and,
/// with `usage_null`, `"usage":null`.
fn delta_chunk_open(out: &mut Vec<u8>, head: &[u8], delta: &Delta<'_>, usage_null: bool) {
    out.extend_from_slice(head);
    write_json(out, delta);
    out.extend_from_slice(br#","logprobs":null,"finish_reason":null}]"#);
    if usage_null {
        out.extend_from_slice(br#","usage":null"#);
    }
}

/// The content chunks of a plain answer, written as they are sent: chunk `i`
/// carries `answer_token(i)`, stamped with the time it is written.
struct PlainDeltas {
    head: Vec<u8>,
    usage_null: bool,
    stamp: bool,
}

impl FrameSource for PlainDeltas {
    fn frame(&self, i: usize, out: &mut Vec<u8>) {
        let delta = Delta { content: Some(Some(text::answer_token(i))), ..Delta::default() };
        delta_chunk_open(out, &self.head, &delta, self.usage_null);
        if self.stamp {
            out.extend_from_slice(br#","sim_sent_us":"#);
            push_stamp_now(out);
        }
        out.extend_from_slice(b"}\n\n");
    }
}

// ------------------------------------------------------- response shapes

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: CompletionDetails,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_cache_hit_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_cache_miss_tokens: Option<u32>,
}

impl Usage {
    fn new(config: &SimConfig, prompt_tokens: u32, completion_tokens: u32) -> Usage {
        let cached = config.cached_tokens.min(prompt_tokens);
        let deepseek = config.usage_style == UsageStyle::DeepSeek;
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: (!deepseek).then_some(PromptDetails { cached_tokens: cached, audio_tokens: 0 }),
            completion_tokens_details: CompletionDetails {
                reasoning_tokens: config.reasoning_tokens.min(completion_tokens),
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
            prompt_cache_hit_tokens: deepseek.then_some(cached),
            prompt_cache_miss_tokens: deepseek.then_some(prompt_tokens - cached),
        }
    }
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u32,
    audio_tokens: u32,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u32,
    audio_tokens: u32,
    accepted_prediction_tokens: u32,
    rejected_prediction_tokens: u32,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Usage>,
    system_fingerprint: &'static str,
    service_tier: &'static str,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: MessageOut<'a>,
    logprobs: (),
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: Option<String>,
    refusal: (),
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallOut<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    service_tier: &'static str,
    #[serde(skip_serializing_if = "Choices::is_absent")]
    choices: Choices<'a>,
    #[serde(skip_serializing_if = "UsageField::is_omitted")]
    usage: UsageField<'a>,
}

enum Choices<'a> {
    One([ChunkChoice<'a>; 1]),
    Empty,
    Null,
    Absent,
}

impl Choices<'_> {
    fn is_absent(&self) -> bool {
        matches!(self, Choices::Absent)
    }
}

impl Serialize for Choices<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Choices::One(one) => one.serialize(s),
            Choices::Empty => <[(); 0]>::default().serialize(s),
            Choices::Null | Choices::Absent => s.serialize_none(),
        }
    }
}

enum UsageField<'a> {
    Omit,
    Null,
    Some(&'a Usage),
}

impl UsageField<'_> {
    fn is_omitted(&self) -> bool {
        matches!(self, UsageField::Omit)
    }
}

impl Serialize for UsageField<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UsageField::Some(usage) => usage.serialize(s),
            UsageField::Omit | UsageField::Null => s.serialize_none(),
        }
    }
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: (),
    finish_reason: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    /// `Some(None)` is an explicit `"content": null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    /// `Some(())` is an explicit `"refusal": null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorOut<'a>,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

// ---------------------------------------------------------------- models

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelOut<'a>>,
}

#[derive(Serialize)]
struct ModelOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

impl ModelOut<'_> {
    fn new(id: &str) -> ModelOut<'_> {
        ModelOut { id, object: "model", created: MODELS_CREATED, owned_by: "upstream-sim" }
    }
}

fn model(ctx: &Ctx, id: &str) -> Response<SimBody> {
    if ctx.config().models.iter().any(|m| m == id) {
        ctx.response(StatusCode::OK, JSON, SimBody::full(to_json(&ModelOut::new(id))))
    } else {
        error_with_param(
            ctx,
            StatusCode::NOT_FOUND,
            &format!("The model '{id}' does not exist"),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        )
    }
}

// ------------------------------------------------------------ embeddings

#[derive(Deserialize)]
struct EmbeddingRequest<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    input: EmbeddingInput,
    encoding_format: Option<String>,
    dimensions: Option<u32>,
}

/// One input to embed: a seed for its vector and its size for usage.
struct InputItem {
    seed: u64,
    chars: u64,
    tokens: u64,
}

/// `input`: a string, an array of strings, an array of token ids, or an
/// array of token-id arrays. Hashed and measured in place, never copied.
struct EmbeddingInput(Vec<InputItem>);

/// An element of an `input` array.
enum InputElem {
    Text(InputItem),
    Token(u64),
    Tokens(InputItem),
}

fn text_item(s: &str) -> InputItem {
    InputItem { seed: text::fnv1a(text::FNV_START, s.as_bytes()), chars: s.chars().count() as u64, tokens: 0 }
}

fn tokens_item(tokens: &[u64]) -> InputItem {
    let seed = tokens.iter().fold(text::FNV_START ^ 0x7f, |h, t| text::fnv1a(h, &t.to_le_bytes()));
    InputItem { seed, chars: 0, tokens: tokens.len() as u64 }
}

impl<'de> Deserialize<'de> for InputElem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InputElem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a token id or an array of token ids")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<InputElem, E> {
                Ok(InputElem::Text(text_item(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<InputElem, E> {
                Ok(InputElem::Token(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<InputElem, E> {
                u64::try_from(v).map(InputElem::Token).map_err(|_| E::custom("token ids must not be negative"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<InputElem, A::Error> {
                let mut tokens = Vec::new();
                while let Some(t) = seq.next_element::<u64>()? {
                    tokens.push(t);
                }
                Ok(InputElem::Tokens(tokens_item(&tokens)))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for EmbeddingInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EmbeddingInput;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings or token ids")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EmbeddingInput, E> {
                Ok(EmbeddingInput(vec![text_item(v)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EmbeddingInput, A::Error> {
                let mut items = Vec::new();
                let mut flat_tokens = Vec::new();
                while let Some(elem) = seq.next_element::<InputElem>()? {
                    match elem {
                        InputElem::Text(item) | InputElem::Tokens(item) => items.push(item),
                        InputElem::Token(t) => flat_tokens.push(t),
                    }
                }
                match (items.is_empty(), flat_tokens.is_empty()) {
                    // A flat array of ids is a single tokenized input.
                    (true, false) => Ok(EmbeddingInput(vec![tokens_item(&flat_tokens)])),
                    (false, true) => Ok(EmbeddingInput(items)),
                    (true, true) => Err(de::Error::custom("input must not be empty")),
                    (false, false) => Err(de::Error::custom("input mixes token ids with strings or token arrays")),
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingOut>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct EmbeddingOut {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    /// Little-endian `f32`s, base64-encoded.
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u32,
    total_tokens: u32,
}

async fn embeddings(ctx: &Ctx, body: &Bytes) -> Reply {
    let req: EmbeddingRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return bad_request(ctx, &format!("Invalid embeddings request: {e}")),
    };
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return bad_request(ctx, &format!("Invalid encoding_format '{other}': expected 'float' or 'base64'."))
        }
    };
    let config = ctx.config();
    let dims = req.dimensions.unwrap_or(config.embedding_dims);
    if dims == 0 || dims > MAX_DIMS {
        return bad_request(ctx, &format!("dimensions must be between 1 and {MAX_DIMS}, got {dims}."));
    }
    let failure = ctx.take_failure();
    if let Some(reply) = early_failure(ctx, failure, false) {
        return reply;
    }

    let items = &req.input.0;
    let prompt_tokens = config.prompt_tokens.unwrap_or_else(|| {
        let chars: u64 = items.iter().map(|i| i.chars).sum();
        let tokens: u64 = items.iter().map(|i| i.tokens).sum();
        let from_chars = if chars > 0 { text::estimate_tokens(chars) } else { 0 };
        u32::try_from(tokens).unwrap_or(u32::MAX).saturating_add(from_chars).max(1)
    });
    let data = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let vector = text::embedding(item.seed, dims as usize);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Vector::Float(vector)
            };
            EmbeddingOut { object: "embedding", index, embedding }
        })
        .collect();
    let payload = to_json(&EmbeddingList {
        object: "list",
        data,
        model: &req.model,
        usage: EmbeddingUsage { prompt_tokens, total_tokens: prompt_tokens },
    });
    deliver(ctx, payload, failure).await
}
