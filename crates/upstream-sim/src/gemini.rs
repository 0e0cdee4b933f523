//! The Google Gemini dialect: `POST /v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent` (always answered as SSE, as with `?alt=sse`) and
//! `:countTokens`, with `google.rpc.Status`-shaped errors.
//!
//! Shares latency, failure injection, fake text and tool-argument synthesis
//! with the OpenAI dialect; only the wire shapes differ. Usage follows
//! Gemini's accounting: `promptTokenCount` includes the cached part
//! (`cachedContentTokenCount`), and thinking tokens (`thoughtsTokenCount`) are
//! counted apart from `candidatesTokenCount` but included in `totalTokenCount`.
//! As the real API does, zero cached and thought counts are omitted. With
//! `generationConfig.responseMimeType: "application/json"` the answer text is
//! a JSON object, `{"answer":"..."}`, as in the OpenAI dialect's JSON mode.
//! A request carrying a task marker gets its scripted answer (see `task`).

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::body::Script;
use crate::body::SimBody;
use crate::config::Failure;
use crate::openai::{self, Cut, TextLen, JSON};
use crate::server::{Ctx, Reply};
use crate::task::{self, AnswerType, Choice};
use crate::text;

/// One broken chunk for `malformed_json` streams.
const MALFORMED_CHUNK: &[u8] = b"data: {\"candidates\": [{\"content\": \n\n";

/// Entry point for `/v1beta/...` (and `/v1/models/{model}:method`).
pub(crate) async fn handle(ctx: &Ctx, method: &Method, path: &str, body: &Bytes) -> Reply {
    let target = path.strip_prefix("/v1beta/models/").or_else(|| path.strip_prefix("/v1/models/"));
    let Some((model, action)) = target.and_then(|t| t.rsplit_once(':')) else {
        return Reply::Respond(error_response(
            ctx,
            StatusCode::NOT_FOUND,
            &format!("Not found: {method} {path}"),
            None,
        ));
    };
    if method != Method::POST {
        return Reply::Respond(error_response(
            ctx,
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Method {method} is not allowed for {path}."),
            None,
        ));
    }
    match action {
        "generateContent" => generate(ctx, model, body, false).await,
        "streamGenerateContent" => generate(ctx, model, body, true).await,
        "countTokens" => count_tokens(ctx, body),
        _ => Reply::Respond(error_response(ctx, StatusCode::NOT_FOUND, &format!("Unknown method: {action}"), None)),
    }
}

/// `{"error":{"code","message","status"}}`; `status` defaults from the HTTP status.
fn error_response(ctx: &Ctx, status: StatusCode, message: &str, rpc_status: Option<&str>) -> Response<SimBody> {
    let body = ErrorBody {
        error: ErrorOut {
            code: status.as_u16(),
            message,
            status: rpc_status.unwrap_or_else(|| default_rpc_status(status)),
        },
    };
    ctx.response(status, JSON, SimBody::full(openai::to_json(&body)))
}

fn bad_request(ctx: &Ctx, message: &str) -> Reply {
    Reply::Respond(error_response(ctx, StatusCode::BAD_REQUEST, message, None))
}

/// The canonical `google.rpc.Code` name for an HTTP status.
fn default_rpc_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        405 => "UNIMPLEMENTED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "UNKNOWN",
    }
}

// ------------------------------------------------------------- requests

/// Field names are camelCase on the wire; the API also accepts snake_case.
#[derive(Deserialize)]
struct GenerateRequest {
    #[serde(default)]
    contents: Vec<ContentIn>,
    #[serde(rename = "systemInstruction", alias = "system_instruction")]
    system_instruction: Option<ContentIn>,
    tools: Option<Vec<ToolIn>>,
    #[serde(rename = "toolConfig", alias = "tool_config")]
    tool_config: Option<ToolConfig>,
    #[serde(rename = "generationConfig", alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
}

#[derive(Deserialize)]
struct GenerationConfig {
    #[serde(rename = "responseMimeType", alias = "response_mime_type")]
    response_mime_type: Option<String>,
}

#[derive(Deserialize)]
struct ContentIn {
    #[serde(default)]
    parts: Vec<PartIn>,
}

#[derive(Deserialize)]
struct PartIn {
    #[serde(default)]
    text: TextLen,
    #[serde(rename = "functionResponse", alias = "function_response")]
    function_response: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ToolIn {
    #[serde(rename = "functionDeclarations", alias = "function_declarations", default)]
    function_declarations: Vec<FunctionIn>,
}

#[derive(Deserialize)]
struct FunctionIn {
    name: String,
    parameters: Option<Value>,
    #[serde(rename = "parametersJsonSchema", alias = "parameters_json_schema")]
    parameters_json_schema: Option<Value>,
}

#[derive(Deserialize)]
struct ToolConfig {
    #[serde(rename = "functionCallingConfig", alias = "function_calling_config")]
    function_calling_config: Option<FunctionCallingConfig>,
}

#[derive(Deserialize)]
struct FunctionCallingConfig {
    mode: Option<String>,
    #[serde(rename = "allowedFunctionNames", alias = "allowed_function_names")]
    allowed_function_names: Option<Vec<String>>,
}

impl ContentIn {
    fn chars(&self) -> u64 {
        self.parts.iter().map(|p| p.text.0).sum()
    }
}

impl GenerateRequest {
    /// JSON mode (`generationConfig.responseMimeType: "application/json"`): the
    /// answer text is then a JSON object.
    fn json_mode(&self) -> bool {
        let mime = self.generation_config.as_ref().and_then(|c| c.response_mime_type.as_deref());
        mime.is_some_and(|m| m.eq_ignore_ascii_case("application/json"))
    }

    fn prompt_tokens(&self, ctx: &Ctx) -> u32 {
        let chars = self.system_instruction.as_ref().map_or(0, ContentIn::chars)
            + self.contents.iter().map(ContentIn::chars).sum::<u64>();
        ctx.config().prompt_tokens.unwrap_or_else(|| text::estimate_tokens(chars))
    }

    /// The first declared function (or the first allowed one), unless the
    /// last turn answers a function call or calling is switched off.
    fn pick_function(&self) -> Option<&FunctionIn> {
        let mut functions = self.tools.as_ref()?.iter().flat_map(|t| &t.function_declarations);
        let last_parts = self.contents.last().map_or(&[][..], |c| &c.parts);
        if last_parts.iter().any(|p| p.function_response.is_some()) {
            return None;
        }
        let config = self.tool_config.as_ref().and_then(|c| c.function_calling_config.as_ref());
        if config.and_then(|c| c.mode.as_deref()).is_some_and(|m| m.eq_ignore_ascii_case("none")) {
            return None;
        }
        match config.and_then(|c| c.allowed_function_names.as_ref()).and_then(|names| names.first()) {
            Some(name) => functions.find(|f| f.name == *name),
            None => functions.next(),
        }
    }
}

// --------------------------------------------------------------- answers

async fn generate(ctx: &Ctx, model: &str, body: &Bytes, stream: bool) -> Reply {
    let req: GenerateRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return bad_request(ctx, &format!("Invalid JSON payload received. {e}")),
    };
    if req.contents.is_empty() {
        return bad_request(ctx, "* GenerateContentRequest.contents: contents is not specified");
    }
    let scripted = match scripted_reply(ctx, model, body) {
        Ok(scripted) => scripted,
        Err(message) => return bad_request(ctx, &message),
    };
    let failure = ctx.take_failure();
    let early = openai::early_failure_with(ctx, failure, stream, |status, f| {
        error_response(ctx, status, f.message, f.error_type)
    });
    if let Some(reply) = early {
        return reply;
    }

    let config = ctx.config();
    let prompt_tokens = req.prompt_tokens(ctx);
    let thoughts = config.reasoning_tokens;
    let usage = UsageMetadata {
        prompt_token_count: prompt_tokens,
        candidates_token_count: config.output_tokens,
        total_token_count: prompt_tokens.saturating_add(config.output_tokens).saturating_add(thoughts),
        cached_content_token_count: config.cached_tokens.min(prompt_tokens),
        thoughts_token_count: thoughts,
    };
    // A scripted task answer replaces the filler text or function call (not the usage).
    let call = match &scripted {
        Some(reply) => match &reply.body {
            task::Body::Call { name, args } => Some(FunctionCall { name, args: args.value() }),
            task::Body::Text(_) => None,
        },
        None => req.pick_function().map(|f| FunctionCall {
            name: &f.name,
            args: openai::tool_arguments_value(f.parameters.as_ref().or(f.parameters_json_schema.as_ref())),
        }),
    };
    let finish = if scripted.as_ref().is_some_and(|r| r.truncated) { "MAX_TOKENS" } else { "STOP" };
    let response_id = format!("sim-{}", ctx.n);
    let pieces: Vec<&str> = match &scripted {
        Some(task::Reply { body: task::Body::Text(scripted_text), .. }) => {
            task::pieces(scripted_text, config.output_tokens)
        }
        _ => {
            // In JSON mode the answer is `{"answer":"<the usual text>"}`, as in the OpenAI
            // dialect; the opening and closing pieces stream as chunks of their own.
            let json_mode = req.json_mode();
            let mut pieces = Vec::with_capacity(config.output_tokens as usize + 2);
            if json_mode {
                pieces.push("{\"answer\":\"");
            }
            pieces.extend((0..config.output_tokens as usize).map(text::answer_token));
            if json_mode {
                pieces.push("\"}");
            }
            pieces
        }
    };
    let response = |parts: Vec<PartOut<'_>>, last: bool| {
        let response: GenerateResponse<'_> = GenerateResponse {
            candidates: [Candidate {
                content: ContentOut { role: "model", parts },
                finish_reason: last.then_some(finish),
                index: 0,
            }],
            usage_metadata: last.then_some(usage),
            model_version: model,
            response_id: &response_id,
        };
        openai::to_json(&response)
    };

    if !stream {
        let text = pieces.concat();
        let part = match &call {
            Some(call) => PartOut::FunctionCall { function_call: call },
            None => PartOut::Text { text: &text },
        };
        return openai::deliver(ctx, response(vec![part], true), failure).await;
    }

    let mut script = Script::default();
    openai::preamble(&mut script, config.ttft_ms, config.keepalive_comments, b": keep-alive\n\n");
    if *failure == Failure::MalformedJson {
        script.push(&ctx.malformed(MALFORMED_CHUNK));
    }
    // A function call arrives whole in one chunk; text one piece per chunk,
    // the last piece together with the finish reason and usage.
    let chunks: Vec<PartOut<'_>> = match &call {
        Some(call) => vec![PartOut::FunctionCall { function_call: call }],
        None if pieces.is_empty() => vec![PartOut::Text { text: "" }],
        None => pieces.iter().map(|t| PartOut::Text { text: t }).collect(),
    };
    let count = chunks.len();
    // A cut stream never delivers the final chunk, which carries the usage.
    let cut = Cut::of(failure).map(|(n, how)| (n.min(count - 1), how));
    for (i, part) in chunks.into_iter().enumerate() {
        if i > 0 {
            script.wait(config.chunk_delay_ms);
        }
        let write = |script: &mut Script| {
            script.push(b"data: ");
            script.push(&response(vec![part], i + 1 == count));
            script.push(b"\n\n");
        };
        if let Some((_, how)) = cut.filter(|(at, _)| *at == i) {
            how.end(&mut script, Some(&write), &error_event);
            break;
        }
        write(&mut script);
    }
    Reply::Respond(openai::sse_response(ctx, script.into_body(ctx.stream_stats())))
}

/// The scripted task answer to a generate request, if its text carries a task marker.
fn scripted_reply(ctx: &Ctx, model: &str, body: &[u8]) -> Result<Option<task::Reply>, String> {
    if !task::marked(body) {
        return Ok(None);
    }
    let Ok(body) = serde_json::from_slice::<Value>(body) else { return Ok(None) };
    // Function call arguments are a JSON object here, so they cannot be broken JSON.
    task::reply(ctx.config(), model, &task_ask(&body), false)
}

/// A member by its camelCase wire name or the snake_case alias the API also accepts.
fn member<'v>(value: &'v Value, camel: &str, snake: &str) -> Option<&'v Value> {
    value.get(camel).or_else(|| value.get(snake))
}

/// What a scripted answer needs of a generate request.
fn task_ask(body: &Value) -> task::Ask {
    let mut texts = Vec::new();
    let system = member(body, "systemInstruction", "system_instruction");
    task::push_text(system.and_then(|s| s.get("parts")), &mut texts);
    let contents = body.get("contents").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    for content in contents {
        task::push_text(content.get("parts"), &mut texts);
    }
    let last_parts = contents.last().and_then(|c| c.get("parts")).and_then(Value::as_array);
    let tools = body.get("tools").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let declarations =
        tools.iter().filter_map(|t| member(t, "functionDeclarations", "function_declarations")?.as_array()).flatten();
    let calling = member(body, "toolConfig", "tool_config")
        .and_then(|c| member(c, "functionCallingConfig", "function_calling_config"));
    let mode = calling.and_then(|c| c.get("mode")).and_then(Value::as_str).unwrap_or("AUTO");
    let allowed = calling
        .and_then(|c| member(c, "allowedFunctionNames", "allowed_function_names"))
        .and_then(|names| names.get(0)?.as_str());
    let generation = member(body, "generationConfig", "generation_config");
    let mime = generation.and_then(|g| member(g, "responseMimeType", "response_mime_type")).and_then(Value::as_str);
    let schema = generation.and_then(|g| {
        member(g, "responseJsonSchema", "response_json_schema")
            .or_else(|| member(g, "responseSchema", "response_schema"))
    });
    task::Ask {
        texts,
        tools: declarations
            .filter_map(|f| {
                let name = f.get("name")?.as_str()?.to_owned();
                let parameters =
                    f.get("parameters").or_else(|| member(f, "parametersJsonSchema", "parameters_json_schema"));
                Some(task::Tool { name, answer: AnswerType::of(parameters) })
            })
            .collect(),
        choice: match (mode.to_ascii_uppercase().as_str(), allowed) {
            ("NONE", _) => Choice::None,
            ("ANY", Some(name)) => Choice::Named(name.to_owned()),
            ("ANY", None) => Choice::Any,
            _ => Choice::Auto,
        },
        after_tool_result: last_parts
            .is_some_and(|parts| parts.iter().any(|p| member(p, "functionResponse", "function_response").is_some())),
        json: mime.filter(|m| m.eq_ignore_ascii_case("application/json")).map(|_| AnswerType::of(schema)),
    }
}

/// An error chunk, as the API sends one when a stream fails after its 200.
fn error_event(script: &mut Script) {
    script.push(b"data: ");
    let body = ErrorBody { error: ErrorOut { code: 503, message: openai::OVERLOADED, status: "UNAVAILABLE" } };
    openai::write_json(script.buf(), &body);
    script.push(b"\n\n");
}

fn count_tokens(ctx: &Ctx, body: &Bytes) -> Reply {
    #[derive(Deserialize)]
    struct CountRequest {
        #[serde(default)]
        contents: Vec<ContentIn>,
        #[serde(rename = "generateContentRequest", alias = "generate_content_request")]
        generate_content_request: Option<GenerateRequest>,
    }
    let req: CountRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return bad_request(ctx, &format!("Invalid JSON payload received. {e}")),
    };
    let total = match &req.generate_content_request {
        Some(inner) => inner.prompt_tokens(ctx),
        None => ctx
            .config()
            .prompt_tokens
            .unwrap_or_else(|| text::estimate_tokens(req.contents.iter().map(ContentIn::chars).sum::<u64>())),
    };
    let payload = openai::to_json(&TokenCount { total_tokens: total });
    Reply::Respond(ctx.response(StatusCode::OK, JSON, SimBody::full(payload)))
}

// ------------------------------------------------------- response shapes

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse<'a> {
    candidates: [Candidate<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_metadata: Option<UsageMetadata>,
    model_version: &'a str,
    response_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    content: ContentOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
    index: u32,
}

#[derive(Serialize)]
struct ContentOut<'a> {
    role: &'static str,
    parts: Vec<PartOut<'a>>,
}

#[derive(Serialize, Clone, Copy)]
#[serde(untagged)]
enum PartOut<'a> {
    Text {
        text: &'a str,
    },
    FunctionCall {
        #[serde(rename = "functionCall")]
        function_call: &'a FunctionCall<'a>,
    },
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    args: Value,
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: u32,
    candidates_token_count: u32,
    total_token_count: u32,
    #[serde(skip_serializing_if = "is_zero")]
    cached_content_token_count: u32,
    #[serde(skip_serializing_if = "is_zero")]
    thoughts_token_count: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenCount {
    total_tokens: u32,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorOut<'a>,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    code: u16,
    message: &'a str,
    status: &'a str,
}
