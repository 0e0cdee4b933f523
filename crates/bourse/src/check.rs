//! Answer checks: whether one non-streaming answer is good enough to keep, judged without
//! the network, so a route can escalate to a better model when a check fails.
//!
//! Five checks, each named in config by [`CheckKind`]:
//! - [`json_schema`]: the answer's JSON parses and validates against the request's
//!   `response_format` schema;
//! - [`tool_call`]: every tool call names a declared tool, its arguments validate against
//!   that tool's parameters, and a call is there when `tool_choice` demanded one;
//! - [`complete`]: the answer is not empty, not cut off by the output limit, not a refusal;
//! - [`agree`]: several models' answers give the same value ([`AgreeSpec`]);
//! - `judge`: a judge model grades the answer against a rubric; this module writes the
//!   judge's prompt ([`judge_conversation`]) and reads its reply ([`judge_outcome`]).
//!
//! Everything here is pure and synchronous: the exchange reads an [`Answer`] out of the body
//! it already holds in the client's dialect ([`Answer::from_body`]), what the request asked
//! for out of the request ([`Expectations::of`]), asks the other models (agree, judge), and
//! hands the results here. Each check yields an [`Outcome`], whose `detail` is short and
//! quotes at most a short excerpt of the answer, because it is recorded with the attempt;
//! which checks passed fits one text column of the ledger ([`encode`], [`decode`]).
//!
//! A check that has nothing to check (a schema check on a request without a schema, a tool
//! check on a request without tools) passes with the detail `not applicable`: a route that
//! lists a check for all its traffic should not escalate the requests the check cannot
//! judge.

use crate::canonical::{
    ChatRequest, Conversation, Dialect, Message, Part, ResponseFormat, Role, Text, ToolChoice, JSON_TOOL,
};
use crate::dialect::{anthropic, openai};
use crate::error::{Error, ErrorKind};
use regex::Regex;
use serde_json::Value;
use std::fmt;
use std::sync::{LazyLock, OnceLock};

/// The longest excerpt of an answer or a value a detail quotes, in characters.
const EXCERPT_CHARS: usize = 60;

/// The detail of a check that had nothing to check.
pub const NOT_APPLICABLE: &str = "not applicable";

// ------------------------------------------------------------------ kinds and outcomes

/// The checks, by the names config uses for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckKind {
    JsonSchema,
    ToolCall,
    Complete,
    Agree,
    Judge,
}

impl CheckKind {
    pub const ALL: [CheckKind; 5] =
        [CheckKind::JsonSchema, CheckKind::ToolCall, CheckKind::Complete, CheckKind::Agree, CheckKind::Judge];

    /// The name in config and in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::JsonSchema => "json_schema",
            CheckKind::ToolCall => "tool_call",
            CheckKind::Complete => "complete",
            CheckKind::Agree => "agree",
            CheckKind::Judge => "judge",
        }
    }

    /// A check by its config name; the error lists the names there are.
    pub fn parse(name: &str) -> Result<CheckKind, String> {
        CheckKind::ALL.into_iter().find(|k| k.as_str() == name).ok_or_else(|| {
            let names: Vec<&str> = CheckKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown check '{name}'; expected one of {}", names.join(", "))
        })
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one check said of one answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub check: CheckKind,
    pub passed: bool,
    /// Why, in a few words (no prompt; at most a short excerpt of the answer).
    pub detail: String,
}

impl Outcome {
    fn pass(check: CheckKind, detail: impl Into<String>) -> Outcome {
        Outcome { check, passed: true, detail: detail.into() }
    }

    fn fail(check: CheckKind, detail: impl Into<String>) -> Outcome {
        Outcome { check, passed: false, detail: detail.into() }
    }
}

/// Outcomes as the ledger keeps them, in one text column: `check:pass` or `check:fail`,
/// comma-separated, in order (`complete:pass,json_schema:fail`); no outcome is the empty
/// string. Details are not part of it: they are free text.
pub fn encode(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for (i, o) in outcomes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(o.check.as_str());
        out.push_str(if o.passed { ":pass" } else { ":fail" });
    }
    out
}

/// The column [`encode`] wrote, back as (check, passed) pairs. Anything else is an error
/// naming the part it could not read.
pub fn decode(column: &str) -> Result<Vec<(CheckKind, bool)>, String> {
    if column.is_empty() {
        return Ok(Vec::new());
    }
    column
        .split(',')
        .map(|item| {
            let (name, result) = item.split_once(':').ok_or_else(|| format!("'{item}' is not check:pass|fail"))?;
            let passed = match result {
                "pass" => true,
                "fail" => false,
                _ => return Err(format!("'{item}' is not check:pass|fail")),
            };
            Ok((CheckKind::parse(name)?, passed))
        })
        .collect()
}

// ------------------------------------------------------------------ answers

/// Why generation stopped, as the checks need it. Unlike [`crate::canonical::StopReason`]
/// it keeps a reason it does not know apart from a natural end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A natural end or a stop sequence.
    Stop,
    /// The output limit (OpenAI `length`, Anthropic `max_tokens`).
    Length,
    ToolCalls,
    /// A safety or policy filter, or Anthropic's `refusal` stop.
    ContentFilter,
    /// Any other reason, as the body gave it (empty when it gave none).
    Other(String),
}

impl Finish {
    fn name(&self) -> &str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
            Finish::ContentFilter => "content_filter",
            Finish::Other(reason) if reason.is_empty() => "no finish reason",
            Finish::Other(reason) => reason,
        }
    }
}

/// A tool call as the answer made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as sent: OpenAI's string verbatim, Anthropic's `input` as JSON text.
    pub arguments: String,
}

/// What the checks need of one non-streaming answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The text content, its parts joined (no reasoning, no refusal).
    pub text: String,
    pub finish: Finish,
    pub tool_calls: Vec<ToolCall>,
    /// The refusal the dialect marked as such (OpenAI `message.refusal` or a `refusal`
    /// content part).
    pub refusal: Option<String>,
}

/// A body that is not a chat answer in the dialect it was read as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotAnAnswer(pub String);

impl fmt::Display for NotAnAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotAnAnswer {}

impl Answer {
    /// An answer from a complete response body: an OpenAI `chat.completion` or an Anthropic
    /// `message`. Read here rather than through the dialects' `parse_reply`, which shape
    /// the answer for rendering in the other dialect: they turn refusals into text, parse
    /// tool arguments (the raw string is what a check must judge) and read an unknown stop
    /// reason as a natural end.
    pub fn from_body(body: &[u8], dialect: Dialect) -> Result<Answer, NotAnAnswer> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| NotAnAnswer(format!("the {} answer is not valid JSON: {e}", dialect.name())))?;
        match dialect {
            Dialect::OpenAi => Answer::from_openai(&v),
            Dialect::Anthropic => Answer::from_anthropic(&v),
            Dialect::Gemini => Err(NotAnAnswer("gemini is not a client dialect".into())),
        }
    }

    fn from_openai(v: &Value) -> Result<Answer, NotAnAnswer> {
        let not = |why: &str| NotAnAnswer(format!("the openai answer {why}"));
        if v.get("error").is_some_and(|e| !e.is_null()) && v.get("choices").is_none() {
            return Err(not("is an error body"));
        }
        let choices = v.get("choices").and_then(Value::as_array).ok_or_else(|| not("has no choices"))?;
        // Choice 0: Bourse never asks for more than one.
        let choice = choices
            .iter()
            .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
            .ok_or_else(|| not("has no choice 0"))?;
        let msg = choice.get("message").and_then(Value::as_object).ok_or_else(|| not("has no message"))?;
        let mut text = String::new();
        let mut refusal: Option<String> = None;
        match msg.get("content") {
            Some(Value::String(s)) => text.push_str(s),
            // Some vendors send parts; a `refusal` part is a refusal.
            Some(Value::Array(parts)) => {
                for p in parts {
                    match p.get("type").and_then(Value::as_str) {
                        Some("refusal") => {
                            refusal.get_or_insert_default().push_str(str_at(p, "refusal"));
                        }
                        None | Some("text") => text.push_str(str_at(p, "text")),
                        Some(_) => {}
                    }
                }
            }
            None | Some(Value::Null) => {}
            Some(_) => return Err(not("has a content that is neither text nor parts")),
        }
        if let Some(r) = msg.get("refusal").and_then(Value::as_str).filter(|r| !r.is_empty()) {
            refusal = Some(r.to_string());
        }
        let mut tool_calls = Vec::new();
        for call in msg.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let f = call.get("function").ok_or_else(|| not("has a tool call without a function"))?;
            tool_calls.push(openai_call(f).ok_or_else(|| not("has a tool call without a name"))?);
        }
        // The legacy single function call.
        if let Some(f) = msg.get("function_call").filter(|f| f.is_object()) {
            tool_calls.push(openai_call(f).ok_or_else(|| not("has a function call without a name"))?);
        }
        let finish = match choice.get("finish_reason").and_then(Value::as_str) {
            Some("stop") => Finish::Stop,
            Some("length" | "max_tokens") => Finish::Length,
            Some("tool_calls" | "function_call") => Finish::ToolCalls,
            Some("content_filter" | "sensitive" | "safety" | "refusal") => Finish::ContentFilter,
            other => Finish::Other(other.unwrap_or_default().to_string()),
        };
        Ok(Answer { text, finish, tool_calls, refusal })
    }

    fn from_anthropic(v: &Value) -> Result<Answer, NotAnAnswer> {
        let not = |why: &str| NotAnAnswer(format!("the anthropic answer {why}"));
        if v.get("type").and_then(Value::as_str) == Some("error") {
            return Err(not("is an error body"));
        }
        let content = v.get("content").and_then(Value::as_array).ok_or_else(|| not("has no content array"))?;
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in content {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => text.push_str(str_at(block, "text")),
                Some("tool_use") => {
                    let name =
                        block.get("name").and_then(Value::as_str).ok_or_else(|| not("has a nameless tool_use"))?;
                    let input = block.get("input").map_or_else(|| "{}".to_string(), Value::to_string);
                    tool_calls.push(ToolCall { name: name.to_string(), arguments: input });
                }
                // Thinking, redacted thinking, server tool blocks: not the answer.
                _ => {}
            }
        }
        let finish = match v.get("stop_reason").and_then(Value::as_str) {
            Some("end_turn" | "stop_sequence") => Finish::Stop,
            Some("max_tokens" | "model_context_window_exceeded") => Finish::Length,
            Some("tool_use") => Finish::ToolCalls,
            Some("refusal") => Finish::ContentFilter,
            other => Finish::Other(other.unwrap_or_default().to_string()),
        };
        Ok(Answer { text, finish, tool_calls, refusal: None })
    }

    /// The call of [`JSON_TOOL`], if the answer made one: JSON mode done with a forced tool
    /// (an Anthropic upstream read without translation) puts the answer in its arguments.
    fn json_tool_call(&self) -> Option<&ToolCall> {
        self.tool_calls.iter().find(|c| c.name == JSON_TOOL)
    }

    /// The text a JSON answer is in: the text, or, when there is none and the answer called
    /// [`JSON_TOOL`], that call's arguments.
    pub fn json_text(&self) -> &str {
        match self.json_tool_call() {
            Some(call) if self.text.trim().is_empty() => &call.arguments,
            _ => &self.text,
        }
    }

    /// What a judge grades: the text, then each tool call as `name(arguments)` on a line.
    pub fn graded_text(&self) -> String {
        let mut out = self.text.clone();
        for call in &self.tool_calls {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&call.name);
            out.push('(');
            out.push_str(&call.arguments);
            out.push(')');
        }
        out
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// An OpenAI `function` object as a call. `arguments` is a string on the wire; a vendor
/// that sends an object gets its JSON text.
fn openai_call(f: &Value) -> Option<ToolCall> {
    let name = f.get("name")?.as_str()?.to_string();
    let arguments = match f.get("arguments") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    };
    Some(ToolCall { name, arguments })
}

// ------------------------------------------------------------------ schemas

/// A JSON Schema compiled once, to validate any number of values. Drafts 2020-12 (the
/// default when `$schema` names none), 2019-09, 7, 6 and 4. References resolve only inside
/// the schema and to the standard meta-schemas: a client's schema never makes Bourse read
/// a file or fetch a URL.
pub struct Schema {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

/// Refuses every URL: the `file:` loader boon registers by default would otherwise let a
/// request's `$ref` read the gateway's files.
struct NoLoader;

impl boon::UrlLoader for NoLoader {
    fn load(&self, url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err(format!("{url}: external references are not resolved").into())
    }
}

/// Where the schema being compiled is said to live (it only names it; nothing is loaded).
const SCHEMA_URL: &str = "urn:bourse:schema";

impl Schema {
    /// Compiles `schema`; the error is short and says what is wrong with it.
    pub fn compile(schema: &Value) -> Result<Schema, String> {
        let mut compiler = boon::Compiler::new();
        compiler.set_default_draft(boon::Draft::V2020_12);
        compiler.use_loader(Box::new(NoLoader));
        let mut schemas = boon::Schemas::new();
        compiler.add_resource(SCHEMA_URL, schema.clone()).map_err(|e| excerpt(&e.to_string(), 160))?;
        let index = compiler.compile(SCHEMA_URL, &mut schemas).map_err(|e| excerpt(&e.to_string(), 160))?;
        Ok(Schema { schemas, index })
    }

    /// Whether `value` follows the schema; the error names where it first does not.
    pub fn validate(&self, value: &Value) -> Result<(), String> {
        self.schemas.validate(value, self.index).map_err(|e| {
            // The deepest first cause says the most; the top error only says "failed".
            let mut leaf = &e;
            while let Some(first) = leaf.causes.first() {
                leaf = first;
            }
            let at = leaf.instance_location.to_string();
            let at = if at.is_empty() { "/".to_string() } else { at };
            excerpt(&format!("at {at}: {}", leaf.kind), 160)
        })
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Schema")
    }
}

/// A schema compiled on first use and kept: the request's schemas are checked against every
/// answer a cascade or an agreement produces, and many requests never need one.
#[derive(Debug)]
struct LazySchema {
    source: Value,
    compiled: OnceLock<Result<Schema, String>>,
}

impl LazySchema {
    fn new(source: Value) -> LazySchema {
        LazySchema { source, compiled: OnceLock::new() }
    }

    fn get(&self) -> &Result<Schema, String> {
        self.compiled.get_or_init(|| Schema::compile(&self.source))
    }
}

// ------------------------------------------------------------------ expectations

/// What a request asked of its answer, as the checks need it.
#[derive(Debug)]
pub struct Expectations {
    /// The schema the answer's JSON must follow: `response_format` json_schema (or
    /// Anthropic's `output_config.format`), `{"type":"object"}` for `json_object`; None for
    /// a text answer.
    response: Option<LazySchema>,
    /// Declared tools and their parameter schemas, in order.
    tools: Vec<(String, LazySchema)>,
    tool_choice: Option<ToolChoice>,
    /// The text of the last user turn that has text: the question a judge sees.
    pub question: String,
}

impl Expectations {
    /// What `req` asks of its answer, read through its dialect's conversation. A request the
    /// dialect cannot read as one (a tool or block only its own vendor knows) has no
    /// expectations: the error says why, and such a request cannot be checked.
    pub fn of(req: &ChatRequest) -> Result<Expectations, Error> {
        let conv = match req.dialect {
            Dialect::OpenAi => openai::conversation(req.body())?,
            Dialect::Anthropic => anthropic::conversation(req.body())?,
            Dialect::Gemini => return Err(Error::new(ErrorKind::Internal, "Gemini is not a client dialect")),
        };
        Ok(Expectations::from_conversation(&conv))
    }

    /// What `conv` asks of its answer, for a caller that has the conversation already.
    pub fn from_conversation(conv: &Conversation) -> Expectations {
        let response = match &conv.response_format {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(serde_json::json!({"type": "object"})),
            ResponseFormat::JsonSchema { schema, .. } => Some(schema.clone()),
        };
        let question = conv
            .messages
            .iter()
            .rev()
            .filter(|m| m.role == Role::User)
            .map(|m| {
                let texts: Vec<&str> = m
                    .parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Text(t) => Some(t.text.as_str()),
                        _ => None,
                    })
                    .collect();
                texts.join("\n")
            })
            .find(|t| !t.is_empty())
            .unwrap_or_default();
        Expectations {
            response: response.map(LazySchema::new),
            tools: conv.tools.iter().map(|t| (t.name.clone(), LazySchema::new(t.parameters.clone()))).collect(),
            tool_choice: conv.tool_choice.clone(),
            question,
        }
    }

    /// Whether the request asked for JSON.
    pub fn wants_json(&self) -> bool {
        self.response.is_some()
    }

    fn tool(&self, name: &str) -> Option<&LazySchema> {
        self.tools.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    /// Whether a call of `name` is the JSON answer rather than a tool call: JSON mode was
    /// asked for and no tool of that name was declared.
    fn is_json_answer(&self, name: &str) -> bool {
        self.wants_json() && name == JSON_TOOL && self.tool(JSON_TOOL).is_none()
    }
}

// ------------------------------------------------------------------ single-answer checks

/// Runs a check that needs only the answer and the request (`json_schema`, `tool_call`,
/// `complete`); None for `agree` and `judge`, which need other models' replies.
pub fn run(kind: CheckKind, answer: &Answer, exp: &Expectations) -> Option<Outcome> {
    match kind {
        CheckKind::JsonSchema => Some(json_schema(answer, exp)),
        CheckKind::ToolCall => Some(tool_call(answer, exp)),
        CheckKind::Complete => Some(complete(answer)),
        CheckKind::Agree | CheckKind::Judge => None,
    }
}

/// The answer's JSON ([`Answer::json_text`]) parses and follows the request's schema.
/// Not applicable to a request that did not ask for JSON. A schema that does not compile
/// fails the check (it cannot vouch for the answer), naming the schema as the cause.
pub fn json_schema(answer: &Answer, exp: &Expectations) -> Outcome {
    let kind = CheckKind::JsonSchema;
    let Some(schema) = &exp.response else { return Outcome::pass(kind, NOT_APPLICABLE) };
    let text = answer.json_text();
    let value: Value = match serde_json::from_str(text.trim()) {
        Ok(v) => v,
        Err(_) if text.trim().is_empty() => return Outcome::fail(kind, "no JSON: the answer is empty"),
        Err(e) => return Outcome::fail(kind, format!("not JSON ({e}): {}", excerpt(text, EXCERPT_CHARS))),
    };
    match schema.get() {
        Err(e) => Outcome::fail(kind, format!("the request's schema does not compile: {e}")),
        Ok(s) => match s.validate(&value) {
            Ok(()) => Outcome::pass(kind, "valid against the schema"),
            Err(e) => Outcome::fail(kind, e),
        },
    }
}

/// Every tool call names a declared tool and its arguments parse (as a JSON object) and
/// follow that tool's parameters; when `tool_choice` required a call (OpenAI `required`,
/// Anthropic `any`, or a named tool) there is one, to the named tool if it named one. The
/// call of [`JSON_TOOL`] that carries a JSON-mode answer is not a tool call. Not applicable
/// to a request without tools whose answer calls none.
pub fn tool_call(answer: &Answer, exp: &Expectations) -> Outcome {
    let kind = CheckKind::ToolCall;
    let calls: Vec<&ToolCall> = answer.tool_calls.iter().filter(|c| !exp.is_json_answer(&c.name)).collect();
    if exp.tools.is_empty() && calls.is_empty() {
        return Outcome::pass(kind, NOT_APPLICABLE);
    }
    for call in &calls {
        let name = excerpt(&call.name, EXCERPT_CHARS);
        let Some(schema) = exp.tool(&call.name) else {
            return Outcome::fail(kind, format!("calls '{name}', which the request did not declare"));
        };
        // An empty argument string is how some vendors write a call without arguments.
        let args = if call.arguments.trim().is_empty() { "{}" } else { call.arguments.as_str() };
        let value: Value = match serde_json::from_str(args) {
            Ok(v) => v,
            Err(e) => {
                return Outcome::fail(
                    kind,
                    format!("'{name}' arguments are not JSON ({e}): {}", excerpt(args, EXCERPT_CHARS)),
                )
            }
        };
        if !value.is_object() {
            return Outcome::fail(kind, format!("'{name}' arguments are not a JSON object"));
        }
        match schema.get() {
            Err(e) => return Outcome::fail(kind, format!("the schema of '{name}' does not compile: {e}")),
            Ok(s) => {
                if let Err(e) = s.validate(&value) {
                    return Outcome::fail(kind, format!("'{name}' arguments: {e}"));
                }
            }
        }
    }
    match &exp.tool_choice {
        Some(ToolChoice::None) if !calls.is_empty() => Outcome::fail(kind, "calls a tool, but tool_choice was none"),
        Some(ToolChoice::Any) if calls.is_empty() => Outcome::fail(kind, "no tool call, but tool_choice required one"),
        Some(ToolChoice::Tool(want)) if !calls.iter().any(|c| &c.name == want) => {
            Outcome::fail(kind, format!("no call of '{}', which tool_choice required", excerpt(want, EXCERPT_CHARS)))
        }
        _ if calls.is_empty() => Outcome::pass(kind, "no tool call, none required"),
        _ => Outcome::pass(kind, format!("{} tool call(s), all valid", calls.len())),
    }
}

/// The longest answer still read for refusal phrasing, in characters: a long answer that
/// opens with "I can't help with X, but here is Y" has done the work.
const REFUSAL_MAX_CHARS: usize = 240;

/// Apologies that may come before a refusal phrase (lowercase, straight apostrophes).
const APOLOGIES: &[&str] =
    &["i'm sorry, but ", "i am sorry, but ", "i'm sorry, ", "i am sorry, ", "sorry, but ", "sorry, "];

/// How a short answer opens when it is a refusal (lowercase, straight apostrophes). Kept
/// to phrasings that almost never start a real answer: a false match escalates a good
/// answer to a dearer model, which costs money but no correctness.
const REFUSALS: &[&str] = &[
    "i can't help with",
    "i cannot help with",
    "i can't assist with",
    "i cannot assist with",
    "i can't comply",
    "i cannot comply",
    "i'm unable to help",
    "i am unable to help",
    "i'm not able to help",
    "i am not able to help",
    "i won't be able to help",
    "i must decline",
];

/// Whether `text` reads as a refusal: short, and opening (perhaps after an apology) with
/// one of [`REFUSALS`].
fn sounds_like_refusal(text: &str) -> bool {
    let t = text.trim();
    if t.chars().count() > REFUSAL_MAX_CHARS {
        return false;
    }
    let t = t.to_lowercase().replace('\u{2019}', "'");
    let t = APOLOGIES.iter().find_map(|a| t.strip_prefix(a)).unwrap_or(&t);
    REFUSALS.iter().any(|r| t.starts_with(r))
}

/// The answer says something (text or a tool call), was not cut off by the output limit,
/// was not stopped by a filter, and is not a refusal (marked by the dialect, or a short
/// answer in common refusal phrasing).
pub fn complete(answer: &Answer) -> Outcome {
    let kind = CheckKind::Complete;
    if answer.finish == Finish::Length {
        return Outcome::fail(kind, "cut off by the output limit (length)");
    }
    if answer.finish == Finish::ContentFilter {
        return Outcome::fail(kind, "stopped by a content filter or refusal (content_filter)");
    }
    if let Some(r) = &answer.refusal {
        return Outcome::fail(kind, format!("refused: {}", excerpt(r, EXCERPT_CHARS)));
    }
    if answer.text.trim().is_empty() && answer.tool_calls.is_empty() {
        return Outcome::fail(kind, "empty answer");
    }
    if sounds_like_refusal(&answer.text) {
        return Outcome::fail(kind, format!("reads as a refusal: {}", excerpt(&answer.text, EXCERPT_CHARS)));
    }
    Outcome::pass(kind, format!("complete ({})", answer.finish.name()))
}

// ------------------------------------------------------------------ agreement

/// What answers must have in common to agree. Written in config as `exact`,
/// `regex:<pattern>` or `pointer:<JSON pointer>`.
#[derive(Clone, Debug)]
pub enum AgreeSpec {
    /// The whole text, normalized ([`normalize`]).
    Exact,
    /// The first capture group that took part in the pattern's last match in the text (the
    /// whole match if the pattern has no group), normalized. The last match, because a
    /// model that reasons aloud states its final answer after its drafts.
    Regex(Regex),
    /// The value at this pointer in the answer's JSON ([`Answer::json_text`]): a string
    /// normalized, any other value as its compact JSON text; `null` is no value.
    Pointer(String),
}

impl AgreeSpec {
    /// Reads the config form; the error says what is wrong, for config validation at load.
    pub fn parse(spec: &str) -> Result<AgreeSpec, String> {
        if spec == "exact" {
            return Ok(AgreeSpec::Exact);
        }
        if let Some(pattern) = spec.strip_prefix("regex:") {
            return Regex::new(pattern).map(AgreeSpec::Regex).map_err(|e| format!("agree regex: {e}"));
        }
        if let Some(pointer) = spec.strip_prefix("pointer:") {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(format!("agree pointer '{pointer}' must be empty or start with '/'"));
            }
            return Ok(AgreeSpec::Pointer(pointer.to_string()));
        }
        Err(format!("agree '{spec}' must be exact, regex:<pattern> or pointer:<JSON pointer>"))
    }

    /// The value an answer gives under this spec; None when it gives none (a regex that
    /// does not match, a pointer to nothing, an empty answer), and such an answer never
    /// agrees.
    pub fn value(&self, answer: &Answer) -> Option<String> {
        let value = match self {
            AgreeSpec::Exact => normalize(&answer.text),
            AgreeSpec::Regex(re) => {
                let caps = re.captures_iter(&answer.text).last()?;
                let group = caps.iter().skip(1).flatten().next().or_else(|| caps.get(0))?;
                normalize(group.as_str())
            }
            AgreeSpec::Pointer(pointer) => {
                let json: Value = serde_json::from_str(answer.json_text().trim()).ok()?;
                match json.pointer(pointer)? {
                    Value::Null => return None,
                    Value::String(s) => normalize(s),
                    other => other.to_string(),
                }
            }
        };
        (!value.is_empty()).then_some(value)
    }
}

/// Trimmed, lowercased, every run of whitespace one space.
pub fn normalize(text: &str) -> String {
    text.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
}

/// How many answers must agree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quorum {
    /// Every answer asked for, failed attempts included.
    #[default]
    All,
    /// At least this many (at least one).
    AtLeast(usize),
}

/// What a set of answers agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agreement {
    /// Per answer, in the order given: whether it gave the majority value.
    pub agrees: Vec<bool>,
    /// The value more answers gave than any other; None when no answer gave one or two
    /// values tie for the most (then no answer agrees).
    pub value: Option<String>,
    /// How many answers gave `value`.
    pub count: usize,
    /// How many had to.
    pub needed: usize,
}

impl Agreement {
    /// Whether the quorum agreed.
    pub fn reached(&self) -> bool {
        self.value.is_some() && self.count >= self.needed
    }

    /// The outcome for the set: passed when the quorum agreed.
    pub fn outcome(&self) -> Outcome {
        let kind = CheckKind::Agree;
        let of = self.agrees.len();
        match &self.value {
            None if self.agrees.is_empty() => Outcome::fail(kind, "no answers"),
            None => Outcome::fail(kind, format!("no majority value among {of} answers")),
            Some(v) => {
                let detail = format!("{}/{of} agree on \"{}\" (need {})", self.count, excerpt(v, 40), self.needed);
                if self.reached() {
                    Outcome::pass(kind, detail)
                } else {
                    Outcome::fail(kind, detail)
                }
            }
        }
    }

    /// The outcome for answer `i`: passed when the quorum agreed and this answer is among
    /// those that did.
    pub fn outcome_for(&self, i: usize) -> Outcome {
        let set = self.outcome();
        let agrees = self.agrees.get(i).copied().unwrap_or(false);
        Outcome { passed: set.passed && agrees, ..set }
    }
}

/// Compares answers under `spec`. Each item is one answer asked for, None when that attempt
/// produced no answer (it never agrees, and counts against [`Quorum::All`]).
pub fn agree<'a>(answers: impl IntoIterator<Item = Option<&'a Answer>>, spec: &AgreeSpec, quorum: Quorum) -> Agreement {
    let values: Vec<Option<String>> = answers.into_iter().map(|a| a.and_then(|a| spec.value(a))).collect();
    // Few answers (k models): counting by scanning is simpler than a map and as fast.
    let mut best: Option<(&str, usize)> = None;
    let mut tied = false;
    for v in values.iter().flatten() {
        let n = values.iter().flatten().filter(|w| *w == v).count();
        match best {
            Some((b, m)) if n < m || (n == m && b == v) => {}
            Some((_, m)) if n == m => tied = true,
            _ => {
                best = Some((v.as_str(), n));
                tied = false;
            }
        }
    }
    let value = best.filter(|_| !tied).map(|(v, _)| v.to_string());
    let agrees: Vec<bool> = values.iter().map(|v| v.is_some() && *v == value).collect();
    let needed = match quorum {
        Quorum::All => values.len(),
        Quorum::AtLeast(n) => n.max(1),
    };
    Agreement { count: agrees.iter().filter(|a| **a).count(), agrees, value, needed }
}

// ------------------------------------------------------------------ judge

/// The judge's system text.
pub const JUDGE_SYSTEM: &str = "You are a strict grader. You judge whether an answer meets a rubric. \
                                You do not answer the question yourself.";

/// The judge's user message: the rubric, the question verbatim (markers in it survive),
/// the line `ANSWER TO GRADE:` and the answer, then how to reply. A simulated judge reads
/// this layout; change it together with the simulator.
pub fn judge_prompt(rubric: &str, question: &str, answer: &str) -> String {
    format!(
        "Grade the answer below against this rubric.\n\nRUBRIC:\n{rubric}\n\nQUESTION:\n{question}\n\n\
         ANSWER TO GRADE:\n{answer}\n\n\
         Reply with your reasoning if you need it, then end with exactly `VERDICT: PASS` if the answer \
         meets the rubric or `VERDICT: FAIL` if it does not."
    )
}

/// The judge's request as a conversation (rendered in the judge model's dialect by the
/// caller): [`JUDGE_SYSTEM`], one user turn of [`judge_prompt`], temperature 0.
pub fn judge_conversation(rubric: &str, question: &str, answer: &Answer) -> Conversation {
    let text = |t: String| Text { text: t, cache_control: None };
    Conversation {
        system: vec![text(JUDGE_SYSTEM.to_string())],
        messages: vec![Message {
            role: Role::User,
            parts: vec![Part::Text(text(judge_prompt(rubric, question, &answer.graded_text())))],
        }],
        temperature: Some(0.0),
        ..Conversation::default()
    }
}

/// A judge's grade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
}

/// A judge reply without a verdict: the judge failed, which says nothing of the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoVerdict(pub String);

impl fmt::Display for NoVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoVerdict {}

static VERDICT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\bverdict\s*:\s*(pass|fail)\b").expect("the verdict pattern is valid"));

/// The last `VERDICT: PASS` or `VERDICT: FAIL` in the reply (any case): the last, because a
/// judge may quote the instruction or change its mind before it ends.
pub fn parse_verdict(reply: &str) -> Result<Verdict, NoVerdict> {
    let caps = VERDICT.captures_iter(reply).last().ok_or_else(|| {
        NoVerdict(format!("the judge's reply has no VERDICT: PASS|FAIL: {}", excerpt(reply, EXCERPT_CHARS)))
    })?;
    Ok(if caps[1].eq_ignore_ascii_case("pass") { Verdict::Pass } else { Verdict::Fail })
}

/// The judge check's outcome from the judge's reply text; a reply without a verdict is an
/// error of the judge, not a failed answer.
pub fn judge_outcome(reply: &str) -> Result<Outcome, NoVerdict> {
    Ok(match parse_verdict(reply)? {
        Verdict::Pass => Outcome::pass(CheckKind::Judge, "the judge's verdict: PASS"),
        Verdict::Fail => Outcome::fail(CheckKind::Judge, "the judge's verdict: FAIL"),
    })
}

// ------------------------------------------------------------------ details

/// At most `max` characters of `text` on one line, `…` where it was cut.
fn excerpt(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        None => one_line,
        Some((at, _)) => format!("{}…", &one_line[..at]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn openai_body(message: Value, finish: &str) -> Vec<u8> {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        })
        .to_string()
        .into_bytes()
    }

    fn openai(message: Value, finish: &str) -> Answer {
        Answer::from_body(&openai_body(message, finish), Dialect::OpenAi).unwrap()
    }

    fn anthropic(content: Value, stop: &str) -> Answer {
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                          "content": content, "stop_reason": stop});
        Answer::from_body(body.to_string().as_bytes(), Dialect::Anthropic).unwrap()
    }

    fn text(t: &str) -> Answer {
        Answer { text: t.to_string(), finish: Finish::Stop, tool_calls: Vec::new(), refusal: None }
    }

    fn calls(calls: &[(&str, &str)]) -> Answer {
        Answer {
            text: String::new(),
            finish: Finish::ToolCalls,
            tool_calls: calls.iter().map(|(n, a)| ToolCall { name: n.to_string(), arguments: a.to_string() }).collect(),
            refusal: None,
        }
    }

    fn openai_request(body: Value) -> Expectations {
        let req = openai::parse_chat_request(&bytes::Bytes::from(body.to_string())).unwrap();
        Expectations::of(&req).unwrap()
    }

    fn anthropic_request(body: Value) -> Expectations {
        let req = anthropic::parse_request(body.to_string().as_bytes()).unwrap();
        Expectations::of(&req).unwrap()
    }

    fn person_schema() -> Value {
        json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
            "required": ["name", "age"],
            "additionalProperties": false,
        })
    }

    /// An OpenAI request asking for `person_schema` answers.
    fn wants_person() -> Expectations {
        openai_request(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "Who?"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": person_schema()}},
        }))
    }

    fn weather_tool() -> Value {
        json!({"type": "function", "function": {"name": "weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    fn with_tools(choice: Option<Value>) -> Expectations {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "Weather?"}],
                              "tools": [weather_tool()]});
        if let Some(c) = choice {
            body["tool_choice"] = c;
        }
        openai_request(body)
    }

    fn plain() -> Expectations {
        openai_request(json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}))
    }

    // -------------------------------------------------------------- kinds and the ledger

    #[test]
    fn check_names_round_trip_and_unknown_ones_are_listed() {
        for kind in CheckKind::ALL {
            assert_eq!(CheckKind::parse(kind.as_str()), Ok(kind));
        }
        let err = CheckKind::parse("schema").unwrap_err();
        assert!(err.contains("'schema'") && err.contains("json_schema, tool_call, complete, agree, judge"), "{err}");
    }

    #[test]
    fn the_ledger_column_round_trips() {
        let outcomes = [
            Outcome::pass(CheckKind::Complete, "complete (stop)"),
            Outcome::fail(CheckKind::JsonSchema, "at /age: want integer, but got string"),
            Outcome::pass(CheckKind::Judge, "x"),
        ];
        let column = encode(&outcomes);
        assert_eq!(column, "complete:pass,json_schema:fail,judge:pass");
        assert_eq!(
            decode(&column).unwrap(),
            [(CheckKind::Complete, true), (CheckKind::JsonSchema, false), (CheckKind::Judge, true)]
        );
        assert_eq!(encode(&[]), "");
        assert_eq!(decode("").unwrap(), []);
        for bad in ["complete", "complete:ok", "nope:pass", "complete:pass,", "complete:pass;agree:fail"] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }

    // -------------------------------------------------------------- reading answers

    #[test]
    fn an_openai_answer_keeps_text_finish_raw_arguments_and_refusal() {
        let a = openai(json!({"role": "assistant", "content": "Hello"}), "stop");
        assert_eq!(a, text("Hello"));

        let a = openai(
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": "{broken"}}]}),
            "tool_calls",
        );
        assert_eq!(a.finish, Finish::ToolCalls);
        assert_eq!(a.text, "");
        // Verbatim, spacing and invalid JSON included: the check judges what was sent.
        assert_eq!(a.tool_calls[0], ToolCall { name: "weather".into(), arguments: "{\"city\": \"Oslo\"}".into() });
        assert_eq!(a.tool_calls[1].arguments, "{broken");

        let a = openai(json!({"role": "assistant", "content": null, "refusal": "I won't."}), "stop");
        assert_eq!(a.refusal.as_deref(), Some("I won't."));
        assert_eq!(a.text, "");

        let a = openai(
            json!({"role": "assistant", "content": [
                {"type": "text", "text": "Part one. "}, {"type": "refusal", "refusal": "No more."},
                {"type": "text", "text": "Part two."}]}),
            "stop",
        );
        assert_eq!(a.text, "Part one. Part two.");
        assert_eq!(a.refusal.as_deref(), Some("No more."));

        let a =
            openai(json!({"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}), "function_call");
        assert_eq!(a.tool_calls, [ToolCall { name: "f".into(), arguments: "{}".into() }]);
        assert_eq!(a.finish, Finish::ToolCalls);

        assert_eq!(openai(json!({"content": "x"}), "length").finish, Finish::Length);
        assert_eq!(openai(json!({"content": "x"}), "content_filter").finish, Finish::ContentFilter);
        assert_eq!(openai(json!({"content": "x"}), "eos").finish, Finish::Other("eos".into()));
    }

    #[test]
    fn an_anthropic_answer_joins_text_blocks_and_writes_tool_input_as_json() {
        let a = anthropic(
            json!([
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me check. "},
                {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "text", "text": "Done."},
            ]),
            "tool_use",
        );
        assert_eq!(a.text, "Let me check. Done.");
        assert_eq!(a.tool_calls, [ToolCall { name: "weather".into(), arguments: r#"{"city":"Oslo"}"#.into() }]);
        assert_eq!(a.finish, Finish::ToolCalls);
        assert_eq!(a.refusal, None);
        for (stop, finish) in [
            ("end_turn", Finish::Stop),
            ("stop_sequence", Finish::Stop),
            ("max_tokens", Finish::Length),
            ("model_context_window_exceeded", Finish::Length),
            ("refusal", Finish::ContentFilter),
            ("pause_turn", Finish::Other("pause_turn".into())),
        ] {
            assert_eq!(anthropic(json!([{"type": "text", "text": "x"}]), stop).finish, finish, "{stop}");
        }
    }

    #[test]
    fn a_body_that_is_not_an_answer_says_why() {
        let err = |body: &str, d: Dialect| Answer::from_body(body.as_bytes(), d).unwrap_err().0;
        assert!(err("not json", Dialect::OpenAi).contains("not valid JSON"));
        assert!(err(r#"{"error":{"message":"boom"}}"#, Dialect::OpenAi).contains("error body"));
        assert!(err(r#"{"choices":[]}"#, Dialect::OpenAi).contains("no choice 0"));
        assert!(err(r#"{"choices":[{"index":0}]}"#, Dialect::OpenAi).contains("no message"));
        assert!(err(r#"{"choices":[{"message":{"content":5}}]}"#, Dialect::OpenAi).contains("neither text"));
        assert!(err(r#"{"choices":[{"message":{"tool_calls":[{"function":{}}]}}]}"#, Dialect::OpenAi)
            .contains("without a name"));
        assert!(err(r#"[1]"#, Dialect::OpenAi).contains("no choices"));
        assert!(err(r#"{"type":"error","error":{"type":"overloaded_error"}}"#, Dialect::Anthropic).contains("error"));
        assert!(err(r#"{"type":"message"}"#, Dialect::Anthropic).contains("no content array"));
        assert!(err(r#"{"content":[{"type":"tool_use","input":{}}]}"#, Dialect::Anthropic).contains("nameless"));
        assert!(err("{}", Dialect::Gemini).contains("not a client dialect"));
    }

    // -------------------------------------------------------------- expectations

    #[test]
    fn expectations_come_from_either_dialect() {
        let exp = openai_request(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "First question"},
                {"role": "assistant", "content": "First answer"},
                {"role": "user", "content": [{"type": "text", "text": "Second"}, {"type": "text", "text": "question"}]},
            ],
            "tools": [weather_tool()],
            "tool_choice": "required",
            "response_format": {"type": "json_object"},
        }));
        assert_eq!(exp.question, "Second\nquestion");
        assert!(exp.wants_json());
        assert_eq!(exp.tool_choice, Some(ToolChoice::Any));
        assert_eq!(exp.tools.len(), 1);
        assert_eq!(exp.tools[0].0, "weather");

        let exp = anthropic_request(json!({
            "model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "What is the capital of France? [[task:geo-1]]"}],
            "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "lookup"},
            "output_config": {"format": {"type": "json_schema", "schema": person_schema()}},
        }));
        assert_eq!(exp.question, "What is the capital of France? [[task:geo-1]]");
        assert_eq!(exp.tool_choice, Some(ToolChoice::Tool("lookup".into())));
        assert_eq!(exp.response.as_ref().map(|s| &s.source), Some(&person_schema()));

        let exp = plain();
        assert!(!exp.wants_json() && exp.tools.is_empty() && exp.tool_choice.is_none());
    }

    #[test]
    fn expectations_can_be_shared_between_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Expectations>();
        send_sync::<Answer>();
        send_sync::<AgreeSpec>();
    }

    // -------------------------------------------------------------- json_schema

    #[test]
    fn json_schema_passes_a_valid_answer_and_names_what_is_wrong_with_others() {
        let exp = wants_person();
        let ok = json_schema(&text(r#"{"name": "Ada", "age": 36}"#), &exp);
        assert!(ok.passed, "{ok:?}");
        assert_eq!(ok.check, CheckKind::JsonSchema);

        let bad = json_schema(&text(r#"{"name": "Ada", "age": "36"}"#), &exp);
        assert!(!bad.passed);
        assert!(bad.detail.contains("/age"), "{}", bad.detail);

        let missing = json_schema(&text(r#"{"name": "Ada"}"#), &exp);
        assert!(!missing.passed && missing.detail.contains("age"), "{}", missing.detail);

        let extra = json_schema(&text(r#"{"name": "Ada", "age": 1, "x": 2}"#), &exp);
        assert!(!extra.passed, "{extra:?}");

        let prose = json_schema(&text("Ada is 36 years old, and she wrote the first program."), &exp);
        assert!(!prose.passed && prose.detail.starts_with("not JSON"), "{}", prose.detail);
        // A short excerpt only.
        assert!(prose.detail.chars().count() < 140, "{}", prose.detail);

        let empty = json_schema(&text("  "), &exp);
        assert_eq!(empty.detail, "no JSON: the answer is empty");
        assert!(!empty.passed);
    }

    #[test]
    fn json_schema_does_not_apply_to_a_text_request() {
        let o = json_schema(&text("not json at all"), &plain());
        assert_eq!(o, Outcome::pass(CheckKind::JsonSchema, NOT_APPLICABLE));
    }

    #[test]
    fn json_object_mode_wants_an_object() {
        let exp = openai_request(json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                        "response_format": {"type": "json_object"}}));
        assert!(json_schema(&text(r#"{"a": [1]}"#), &exp).passed);
        assert!(!json_schema(&text("[1, 2]"), &exp).passed);
    }

    #[test]
    fn json_mode_through_the_json_tool_is_checked_on_the_tool_input() {
        let exp = wants_person();
        // An Anthropic body with JSON mode done by the forced tool, read as it came.
        let good = anthropic(
            json!([{"type": "tool_use", "id": "t", "name": JSON_TOOL, "input": {"name": "Ada", "age": 36}}]),
            "tool_use",
        );
        assert!(json_schema(&good, &exp).passed, "{:?}", json_schema(&good, &exp));
        // Not a tool call of the request's: the tool check has nothing to judge.
        assert_eq!(tool_call(&good, &exp).detail, NOT_APPLICABLE);
        assert!(complete(&good).passed);

        let bad = anthropic(
            json!([{"type": "tool_use", "id": "t", "name": JSON_TOOL, "input": {"name": "Ada", "age": -1}}]),
            "tool_use",
        );
        let o = json_schema(&bad, &exp);
        assert!(!o.passed && o.detail.contains("/age"), "{o:?}");
    }

    #[test]
    fn draft_7_schemas_with_definitions_work() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "definitions": {"n": {"type": "integer"}},
            "type": "array", "items": {"$ref": "#/definitions/n"},
        });
        let exp = openai_request(json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}}));
        assert!(json_schema(&text("[1, 2, 3]"), &exp).passed);
        let o = json_schema(&text("[1, 2.5]"), &exp);
        assert!(!o.passed && o.detail.contains("/1"), "{o:?}");
    }

    #[test]
    fn a_schema_never_reads_a_file() {
        // A file that a `file:` reference could reach, whose schema would accept anything.
        let path = std::env::temp_dir().join(format!("bourse-check-{}.json", std::process::id()));
        std::fs::write(&path, "{}").unwrap();
        let schema = json!({"$ref": format!("file://{}", path.display())});
        let exp = openai_request(json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}}));
        let o = json_schema(&text("{}"), &exp);
        std::fs::remove_file(&path).unwrap();
        assert!(!o.passed && o.detail.starts_with("the request's schema does not compile"), "{o:?}");
    }

    #[test]
    fn a_schema_that_does_not_compile_fails_the_check() {
        let exp = openai_request(json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": 5}}}}));
        let o = json_schema(&text("{}"), &exp);
        assert!(!o.passed && o.detail.starts_with("the request's schema does not compile"), "{o:?}");
    }

    // -------------------------------------------------------------- tool_call

    #[test]
    fn tool_call_passes_valid_calls_of_declared_tools() {
        let exp = with_tools(None);
        let o = tool_call(&calls(&[("weather", r#"{"city": "Oslo"}"#)]), &exp);
        assert!(o.passed, "{o:?}");
        assert_eq!(o.detail, "1 tool call(s), all valid");
        // No call when none was required.
        assert_eq!(tool_call(&text("It is sunny."), &exp).detail, "no tool call, none required");
        assert!(tool_call(&text("It is sunny."), &with_tools(Some(json!("auto")))).passed);
    }

    #[test]
    fn tool_call_fails_bad_calls_for_the_reason_they_are_bad() {
        let exp = with_tools(None);
        let fails = |a: Answer, why: &str| {
            let o = tool_call(&a, &exp);
            assert!(!o.passed && o.detail.contains(why), "{o:?} should say {why}");
        };
        fails(calls(&[("forecast", "{}")]), "'forecast', which the request did not declare");
        fails(calls(&[("weather", "{city: Oslo}")]), "'weather' arguments are not JSON");
        fails(calls(&[("weather", r#"["Oslo"]"#)]), "not a JSON object");
        fails(calls(&[("weather", r#"{"city": 5}"#)]), "'weather' arguments: at /city");
        fails(calls(&[("weather", "")]), "'weather' arguments: at /");
        // One bad call among good ones is enough.
        fails(calls(&[("weather", r#"{"city": "Oslo"}"#), ("weather", "{}")]), "city");
    }

    #[test]
    fn tool_call_holds_the_answer_to_tool_choice() {
        let required = with_tools(Some(json!("required")));
        let o = tool_call(&text("Sunny."), &required);
        assert_eq!(o, Outcome::fail(CheckKind::ToolCall, "no tool call, but tool_choice required one"));
        assert!(tool_call(&calls(&[("weather", r#"{"city": "Oslo"}"#)]), &required).passed);

        let named = openai_request(json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [weather_tool(), {"type": "function", "function": {"name": "time"}}],
            "tool_choice": {"type": "function", "function": {"name": "time"}}}));
        let o = tool_call(&calls(&[("weather", r#"{"city": "Oslo"}"#)]), &named);
        assert!(!o.passed && o.detail == "no call of 'time', which tool_choice required", "{o:?}");
        // A tool declared without parameters takes any object.
        assert!(tool_call(&calls(&[("time", "{}")]), &named).passed);

        let none = with_tools(Some(json!("none")));
        assert!(!tool_call(&calls(&[("weather", r#"{"city": "Oslo"}"#)]), &none).passed);
        assert!(tool_call(&text("Sunny."), &none).passed);
    }

    #[test]
    fn tool_call_does_not_apply_without_tools_but_catches_calls_nobody_declared() {
        assert_eq!(tool_call(&text("Hi"), &plain()).detail, NOT_APPLICABLE);
        assert!(!tool_call(&calls(&[("weather", "{}")]), &plain()).passed);
        // Without JSON mode, a call of the JSON tool is a call like any other.
        assert!(!tool_call(&calls(&[(JSON_TOOL, "{}")]), &plain()).passed);
    }

    // -------------------------------------------------------------- complete

    #[test]
    fn complete_passes_text_or_tool_calls() {
        assert_eq!(complete(&text("Paris.")), Outcome::pass(CheckKind::Complete, "complete (stop)"));
        assert!(complete(&calls(&[("weather", "{}")])).passed);
        assert!(complete(&text("I can help with that: Paris.")).passed);
        // A vendor that gives no finish reason is not held to one.
        let body = br#"{"choices":[{"message":{"content":"Paris."},"finish_reason":null}]}"#;
        let a = Answer::from_body(body, Dialect::OpenAi).unwrap();
        assert_eq!(a.finish, Finish::Other(String::new()));
        assert_eq!(complete(&a).detail, "complete (no finish reason)");
    }

    #[test]
    fn complete_fails_empty_cut_off_filtered_and_refused_answers() {
        let fails = |a: Answer, why: &str| {
            let o = complete(&a);
            assert!(!o.passed && o.detail.starts_with(why), "{o:?} should say {why}");
        };
        fails(text(" \n"), "empty answer");
        fails(Answer { finish: Finish::Length, ..text("Paris is the cap") }, "cut off by the output limit");
        fails(Answer { finish: Finish::ContentFilter, ..text("") }, "stopped by a content filter");
        fails(Answer { refusal: Some("I can't do that.".into()), ..text("") }, "refused: I can't do that.");
        fails(text("I can't help with that."), "reads as a refusal");
        fails(text("I\u{2019}m sorry, but I cannot assist with this request."), "reads as a refusal");
        fails(text("Sorry, I must decline."), "reads as a refusal");
        fails(anthropic(json!([{"type": "text", "text": "Paris"}]), "max_tokens"), "cut off");
        fails(anthropic(json!([]), "refusal"), "stopped by a content filter");
    }

    #[test]
    fn a_long_answer_that_opens_with_a_refusal_phrase_is_still_an_answer() {
        let long = format!("I can't help with the first part, but here is the second: {}", "detail ".repeat(40));
        assert!(complete(&text(&long)).passed);
    }

    #[test]
    fn run_dispatches_the_single_answer_checks() {
        let exp = wants_person();
        let a = text(r#"{"name": "Ada", "age": 36}"#);
        for kind in [CheckKind::JsonSchema, CheckKind::ToolCall, CheckKind::Complete] {
            let o = run(kind, &a, &exp).unwrap();
            assert_eq!(o.check, kind);
            assert!(o.passed, "{o:?}");
        }
        assert!(!run(CheckKind::JsonSchema, &text("{}"), &exp).unwrap().passed);
        assert_eq!(run(CheckKind::Agree, &a, &exp), None);
        assert_eq!(run(CheckKind::Judge, &a, &exp), None);
    }

    // -------------------------------------------------------------- agree

    fn agreement(spec: &str, texts: &[&str], quorum: Quorum) -> Agreement {
        let answers: Vec<Answer> = texts.iter().map(|t| text(t)).collect();
        agree(answers.iter().map(Some), &AgreeSpec::parse(spec).unwrap(), quorum)
    }

    #[test]
    fn exact_agreement_ignores_case_and_spacing() {
        let a = agreement("exact", &["  Paris ", "paris", "PARIS\n"], Quorum::All);
        assert_eq!(a.value.as_deref(), Some("paris"));
        assert_eq!(a.agrees, [true, true, true]);
        assert!(a.reached());
        let o = a.outcome();
        assert_eq!(o, Outcome::pass(CheckKind::Agree, "3/3 agree on \"paris\" (need 3)"));

        let a = agreement("exact", &["The  capital is\tParis", "the capital is paris"], Quorum::All);
        assert!(a.reached());
        let a = agreement("exact", &["Paris", "Paris."], Quorum::All);
        assert!(!a.reached());
    }

    #[test]
    fn a_majority_short_of_the_quorum_fails_but_names_who_agreed() {
        let a = agreement("exact", &["Paris", "Lyon", "paris"], Quorum::All);
        assert_eq!(a.value.as_deref(), Some("paris"));
        assert_eq!(a.agrees, [true, false, true]);
        assert_eq!((a.count, a.needed), (2, 3));
        assert!(!a.reached());
        assert!(!a.outcome().passed);
        assert!(!a.outcome_for(0).passed);

        let a = agreement("exact", &["Paris", "Lyon", "paris"], Quorum::AtLeast(2));
        assert!(a.reached());
        assert!(a.outcome_for(0).passed && !a.outcome_for(1).passed && a.outcome_for(2).passed);
        assert_eq!(a.outcome().detail, "2/3 agree on \"paris\" (need 2)");
        assert!(!a.outcome_for(7).passed);
    }

    #[test]
    fn a_tie_for_the_most_is_no_agreement() {
        let a = agreement("exact", &["Paris", "Lyon", "paris", "lyon"], Quorum::AtLeast(2));
        assert_eq!(a.value, None);
        assert_eq!(a.agrees, [false; 4]);
        assert!(!a.reached());
        assert_eq!(a.outcome(), Outcome::fail(CheckKind::Agree, "no majority value among 4 answers"));
        // One more vote breaks the tie, wherever it comes.
        let a = agreement("exact", &["lyon", "Paris", "Lyon", "paris", "LYON"], Quorum::AtLeast(3));
        assert_eq!(a.value.as_deref(), Some("lyon"));
        assert!(a.reached());
    }

    #[test]
    fn regex_agreement_compares_the_captured_answer() {
        let spec = r"regex:(?i)final answer:\s*(.+)";
        let a = agreement(
            spec,
            &[
                "Let me think. 6*7 = 42.\nFinal answer: 42",
                "FINAL ANSWER:   42  ",
                "Final answer: 41?\nNo wait. Final answer: 42",
            ],
            Quorum::All,
        );
        assert_eq!(a.value.as_deref(), Some("42"));
        assert!(a.reached(), "{a:?}");

        // An answer the pattern finds nothing in never agrees, even with another such.
        let a = agreement(spec, &["42", "forty-two", "Final answer: 42"], Quorum::AtLeast(1));
        assert_eq!(a.agrees, [false, false, true]);
        let a = agreement(spec, &["no marker", "none here"], Quorum::AtLeast(1));
        assert_eq!(a.value, None);
        assert_eq!(a.outcome().detail, "no majority value among 2 answers");

        // Without a group, the whole match.
        let a = agreement(r"regex:\d+", &["It is 42.", "42!"], Quorum::All);
        assert_eq!(a.value.as_deref(), Some("42"));
        // The first group that took part.
        let a = agreement(r"regex:yes=(\w+)|no=(\w+)", &["no=Paris", "yes=paris"], Quorum::All);
        assert_eq!(a.value.as_deref(), Some("paris"));
        assert!(a.reached());
    }

    #[test]
    fn pointer_agreement_compares_the_value_at_the_pointer() {
        let a = agreement(
            "pointer:/answer",
            &[r#"{"answer": "Paris", "why": "capital"}"#, r#"{"why": "big", "answer": " paris"}"#],
            Quorum::All,
        );
        assert_eq!(a.value.as_deref(), Some("paris"));
        assert!(a.reached());

        let a = agreement("pointer:/n", &[r#"{"n": 3}"#, r#"{"n": 3}"#, r#"{"n": "3"}"#], Quorum::All);
        assert_eq!(a.value.as_deref(), Some("3"));
        assert_eq!(a.agrees, [true, true, true], "a string and a number with the same text agree");
        let a = agreement("pointer:/n", &[r#"{"n": [1, 2]}"#, r#"{"n": [1,2]}"#, r#"{"n": [2, 1]}"#], Quorum::All);
        assert_eq!(a.agrees, [true, true, false]);

        // Missing, null, or not JSON: no value.
        let a = agreement(
            "pointer:/answer",
            &[r#"{"other": 1}"#, r#"{"answer": null}"#, "answer: Paris", r#"{"answer": "Paris"}"#],
            Quorum::AtLeast(1),
        );
        assert_eq!(a.agrees, [false, false, false, true]);

        // The JSON tool's input is the answer's JSON.
        let via_tool = calls(&[(JSON_TOOL, r#"{"answer":"Paris"}"#)]);
        let spec = AgreeSpec::parse("pointer:/answer").unwrap();
        assert_eq!(spec.value(&via_tool).as_deref(), Some("paris"));
    }

    #[test]
    fn an_attempt_without_an_answer_counts_against_all() {
        let paris = text("Paris");
        let spec = AgreeSpec::Exact;
        let a = agree([Some(&paris), None, Some(&paris)], &spec, Quorum::All);
        assert_eq!(a.agrees, [true, false, true]);
        assert!(!a.reached());
        assert!(agree([Some(&paris), None, Some(&paris)], &spec, Quorum::AtLeast(2)).reached());
        let none = agree([], &spec, Quorum::All);
        assert!(!none.reached());
        assert_eq!(none.outcome().detail, "no answers");
    }

    #[test]
    fn agree_specs_are_validated_when_config_loads() {
        assert!(matches!(AgreeSpec::parse("exact"), Ok(AgreeSpec::Exact)));
        assert!(matches!(AgreeSpec::parse("pointer:/a/0"), Ok(AgreeSpec::Pointer(p)) if p == "/a/0"));
        assert!(matches!(AgreeSpec::parse("pointer:"), Ok(AgreeSpec::Pointer(p)) if p.is_empty()));
        assert!(AgreeSpec::parse("regex:(unclosed").unwrap_err().starts_with("agree regex:"));
        assert!(AgreeSpec::parse("pointer:answer").unwrap_err().contains("start with '/'"));
        assert!(AgreeSpec::parse("Exact").unwrap_err().contains("exact, regex:<pattern> or pointer:"));
        assert!(AgreeSpec::parse("").is_err());
    }

    // -------------------------------------------------------------- judge

    #[test]
    fn the_judge_prompt_has_rubric_question_answer_and_instruction_in_order() {
        let question = "What is 6*7? [[task:math-7 expect=42]]\nShow your work.";
        let p = judge_prompt("Correct and shows work.", question, "6*7 = 42");
        let rubric = p.find("Correct and shows work.").unwrap();
        let q = p.find(question).expect("the question verbatim");
        let marker = p.find("\nANSWER TO GRADE:\n6*7 = 42\n").expect("the answer after its own line");
        let instruction = p.find("exactly `VERDICT: PASS`").unwrap();
        assert!(p[instruction..].contains("`VERDICT: FAIL`"));
        assert!(rubric < q && q < marker && marker < instruction, "{p}");

        let answer = Answer { text: "Let me look.".into(), ..calls(&[("weather", r#"{"city":"Oslo"}"#)]) };
        let conv = judge_conversation("Uses the tool.", question, &answer);
        assert_eq!(conv.system[0].text, JUDGE_SYSTEM);
        assert_eq!(conv.temperature, Some(0.0));
        assert_eq!(conv.messages.len(), 1);
        assert_eq!(conv.messages[0].role, Role::User);
        let Part::Text(t) = &conv.messages[0].parts[0] else { panic!("a text part") };
        assert_eq!(t.text, judge_prompt("Uses the tool.", question, "Let me look.\nweather({\"city\":\"Oslo\"})"));
    }

    #[test]
    fn the_judge_reply_is_read_for_its_last_verdict() {
        assert_eq!(parse_verdict("VERDICT: PASS"), Ok(Verdict::Pass));
        assert_eq!(parse_verdict("The answer is wrong.\nVERDICT: FAIL"), Ok(Verdict::Fail));
        assert_eq!(parse_verdict("verdict: pass"), Ok(Verdict::Pass));
        assert_eq!(parse_verdict("**Verdict:Fail**"), Ok(Verdict::Fail));
        // The last one counts: the judge first quotes the instruction, then decides.
        assert_eq!(
            parse_verdict("I must reply VERDICT: PASS or VERDICT: FAIL. It misses the units.\nVERDICT: FAIL"),
            Ok(Verdict::Fail)
        );
        assert_eq!(parse_verdict("VERDICT: FAIL... on reflection, VERDICT: PASS"), Ok(Verdict::Pass));

        for reply in ["", "PASS", "Looks good to me.", "VERDICT: MAYBE", "VERDICT: PASSABLE", "NOVERDICT: PASS"] {
            assert!(parse_verdict(reply).is_err(), "{reply:?}");
        }
        assert_eq!(
            judge_outcome("VERDICT: PASS").unwrap(),
            Outcome::pass(CheckKind::Judge, "the judge's verdict: PASS")
        );
        assert!(!judge_outcome("VERDICT: FAIL").unwrap().passed);
        let err = judge_outcome("I think it is fine").unwrap_err();
        assert!(err.0.contains("no VERDICT") && err.0.contains("I think it is fine"), "{err}");
    }

    #[test]
    fn details_quote_short_one_line_excerpts() {
        assert_eq!(excerpt("a\n  b", 10), "a b");
        assert_eq!(excerpt("ééééé", 3), "ééé…");
        assert_eq!(excerpt("abc", 3), "abc");
    }
}
