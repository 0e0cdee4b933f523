//! Scripted task answers: a request that carries a task marker is answered
//! right or wrong as [`SimConfig::tasks`] says, deterministically, so a
//! gateway's answer checks, cascades and routing can be tested against a
//! known ground truth.
//!
//! Each dialect turns its request into an [`Ask`] (the message text, the
//! declared tools, the tool choice and whether JSON was asked for) and renders
//! the [`Reply`] in its own wire shape. Everything here is dialect-free and a
//! pure function of the config and the request, so the same request gets the
//! same answer from any simulator instance, on any platform, streamed or not.
//!
//! The formats (marker, answers, judge) are documented for users on
//! [`SimConfig::tasks`] and in the crate docs; the code below is their only
//! implementation.

use serde_json::{Map, Value};

use crate::config::{SimConfig, TaskScript, WrongStyle};
use crate::text;

/// Opens a task marker: `[task:NAME item:ID answer:ANSWER]`.
const MARKER: &str = "[task:";
/// Marks a request as a judge request.
const JUDGE: &str = "[judge]";
/// The candidate answer a judge grades follows the last occurrence of this.
const GRADE: &str = "ANSWER TO GRADE:";
/// What a correct or plainly wrong answer says before its value.
const FINAL: &str = "Final answer: ";
/// The `refusal` wrong style.
pub(crate) const REFUSAL: &str = "I can't help with that.";

/// Whether a raw request body may carry a task marker. A cheap byte scan, so
/// unmarked requests (all of a load benchmark's) never pay for the full parse
/// that scripted answers need.
pub(crate) fn marked(body: &[u8]) -> bool {
    // Only a `[` can start the marker; prompts have few of them.
    body.iter().enumerate().any(|(at, &b)| b == b'[' && body[at..].starts_with(MARKER.as_bytes()))
}

/// What a scripted answer needs to know of a request, whatever its dialect.
#[derive(Debug, Default)]
pub(crate) struct Ask {
    /// The text of the system prompt and of every message, in order.
    pub(crate) texts: Vec<String>,
    /// Declared tools (functions).
    pub(crate) tools: Vec<Tool>,
    pub(crate) choice: Choice,
    /// The last turn carries a tool result, so the model answers instead of calling again.
    pub(crate) after_tool_result: bool,
    /// JSON was asked for as the answer's text, with the type its schema gives `answer`.
    pub(crate) json: Option<AnswerType>,
}

/// A declared tool.
#[derive(Debug)]
pub(crate) struct Tool {
    pub(crate) name: String,
    /// The type its parameter schema gives `answer`.
    pub(crate) answer: AnswerType,
}

/// The request's tool choice, in the terms all three dialects share.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) enum Choice {
    /// The model may call a tool or answer (`auto`, or no choice given).
    #[default]
    Auto,
    /// No tool calls (`none`, Gemini `NONE`).
    None,
    /// Some tool must be called (OpenAI `required`, Anthropic `any`, Gemini `ANY`).
    Any,
    /// This tool must be called.
    Named(String),
}

/// The JSON type an `answer` value takes: a number where the schema says
/// `integer` or `number` (and the answer parses as one), else a string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum AnswerType {
    #[default]
    String,
    Number,
}

impl AnswerType {
    /// The type a JSON schema gives `properties.answer` (`"type"`: a name, any
    /// case, as Gemini writes `INTEGER`, or a list of names).
    pub(crate) fn of(schema: Option<&Value>) -> AnswerType {
        let kind = schema.and_then(|s| s.get("properties")).and_then(|p| p.get("answer")).and_then(|a| a.get("type"));
        let numeric = |t: &Value| {
            t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("integer") || t.eq_ignore_ascii_case("number"))
        };
        match kind {
            Some(Value::Array(types)) if types.iter().any(numeric) => AnswerType::Number,
            Some(t) if numeric(t) => AnswerType::Number,
            _ => AnswerType::String,
        }
    }
}

/// Appends the text of a `content`-like value: a string, or an array of parts
/// whose `text` members are strings.
pub(crate) fn push_text(content: Option<&Value>, texts: &mut Vec<String>) {
    match content {
        Some(Value::String(s)) => texts.push(s.clone()),
        Some(Value::Array(parts)) => {
            texts.extend(parts.iter().filter_map(|p| p.get("text")?.as_str()).map(str::to_owned));
        }
        _ => {}
    }
}

/// A scripted answer, ready for a dialect to render.
#[derive(Debug, PartialEq)]
pub(crate) struct Reply {
    pub(crate) body: Body,
    /// `true`: cut off by the output limit (`length`, `max_tokens`, `MAX_TOKENS`).
    pub(crate) truncated: bool,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Body {
    Text(String),
    Call { name: String, args: Args },
}

/// Tool-call arguments.
#[derive(Debug, PartialEq)]
pub(crate) enum Args {
    Json(Value),
    /// Text that does not parse as JSON; only produced for dialects whose
    /// arguments are a string (OpenAI), see [`reply`]'s `raw_args`.
    Raw(String),
}

impl Args {
    /// The arguments as the JSON text a string-typed `arguments` field carries.
    pub(crate) fn text(&self) -> String {
        match self {
            Args::Json(v) => v.to_string(),
            Args::Raw(s) => s.clone(),
        }
    }

    /// The arguments as a JSON object, for dialects whose arguments are an object.
    pub(crate) fn value(&self) -> Value {
        match self {
            Args::Json(v) => v.clone(),
            Args::Raw(_) => Value::Object(Map::new()),
        }
    }
}

/// Splits answer text into stream pieces, `tokens` of them (fewer for short
/// text, none for empty text): a scripted answer streams in about as many
/// chunks as an unscripted one.
pub(crate) fn pieces(text: &str, tokens: u32) -> Vec<&str> {
    if text.is_empty() {
        Vec::new()
    } else {
        text::split_even(text, tokens as usize)
    }
}

/// The scripted answer to a request for `model`, or `None` when its text has
/// no task marker (or only a `[judge]` without one): the request is then
/// answered as usual. `raw_args`: the dialect's tool arguments are a string,
/// so they can be invalid or truncated JSON; other dialects get an empty
/// object for truncated arguments and a text answer for invalid ones.
/// `Err` describes a malformed marker, for the dialect's 400.
pub(crate) fn reply(config: &SimConfig, model: &str, ask: &Ask, raw_args: bool) -> Result<Option<Reply>, String> {
    let Some(marker) = find_marker(&ask.texts)? else { return Ok(None) };
    let judge = ask.texts.iter().any(|t| t.contains(JUDGE));
    let (script, correct) = config.decide(model, &marker, judge);
    if judge {
        let candidate = candidate(&ask.texts);
        let pass = contains_token(&candidate, marker.answer) == correct;
        let verdict = if pass { "VERDICT: PASS" } else { "VERDICT: FAIL" };
        return Ok(Some(Reply { body: Body::Text(verdict.to_owned()), truncated: false }));
    }
    let style = match (correct, script) {
        (false, Some(s)) => Some(s.wrong),
        _ => None,
    };
    let hash = mix(config.task_seed, Role::Wrong, model, &marker);
    Ok(Some(render(&form(ask, &marker), style, &marker, hash, raw_args)))
}

impl SimConfig {
    /// The first script for `model` and `task` (answering, or judging with
    /// `judge`), as [`SimConfig::tasks`] describes.
    fn script(&self, model: &str, task: &str, judge: bool) -> Option<&TaskScript> {
        let fits = |pattern: &str, name: &str| pattern == "*" || pattern == name;
        self.tasks.iter().find(|s| s.judge == judge && fits(&s.model, model) && fits(&s.task, task))
    }

    /// Whether `model` answers `item` of `task` correctly under this config, as a
    /// request carrying that item's marker would show: for tests that need the
    /// ground truth without asking.
    pub fn answers_correctly(&self, model: &str, task: &str, item: &str) -> bool {
        self.outcome(model, task, item, false)
    }

    /// Whether judge `model` grades `item` of `task` correctly (its verdict is
    /// the true one) under this config.
    pub fn judges_correctly(&self, model: &str, task: &str, item: &str) -> bool {
        self.outcome(model, task, item, true)
    }

    fn outcome(&self, model: &str, task: &str, item: &str, judge: bool) -> bool {
        self.decide(model, &Marker { task, item, answer: "", tool: None }, judge).1
    }

    /// The script that fits, and whether this answer (or verdict) is correct:
    /// its draw is below the script's `p_correct`, or no script fits.
    fn decide(&self, model: &str, marker: &Marker<'_>, judge: bool) -> (Option<&TaskScript>, bool) {
        let script = self.script(model, marker.task, judge);
        let correct = script.is_none_or(|s| draw(self.task_seed, Role::of(judge), model, marker) < s.p_correct);
        (script, correct)
    }
}

/// A parsed task marker; borrowed from the request text.
#[derive(Debug, PartialEq)]
struct Marker<'t> {
    task: &'t str,
    item: &'t str,
    answer: &'t str,
    tool: Option<&'t str>,
}

/// The first task marker in `texts`. A marker that opens but is not
/// well formed is an error rather than silently no marker, so a typo in a
/// test's prompt shows up at once.
fn find_marker(texts: &[String]) -> Result<Option<Marker<'_>>, String> {
    let Some((text, at)) = texts.iter().find_map(|t| Some((t, t.find(MARKER)?))) else { return Ok(None) };
    let rest = &text[at + 1..];
    let Some(end) = rest.find(']') else { return Err("upstream-sim: task marker without a closing ']'".to_owned()) };
    parse_marker(&rest[..end]).map(Some)
}

/// Parses `task:NAME item:ID answer:ANSWER [tool:FUNC]` (options after the
/// first in any order, each once).
fn parse_marker(inside: &str) -> Result<Marker<'_>, String> {
    let malformed = |why: &str| format!("upstream-sim: malformed task marker [{inside}]: {why}");
    let (mut task, mut item, mut answer, mut tool) = (None, None, None, None);
    for option in inside.split_whitespace() {
        let Some((key, value)) = option.split_once(':') else {
            return Err(malformed(&format!("'{option}' is not KEY:VALUE")));
        };
        if value.is_empty() {
            return Err(malformed(&format!("'{key}' is empty")));
        }
        let slot = match key {
            "task" => &mut task,
            "item" => &mut item,
            "answer" => &mut answer,
            "tool" => &mut tool,
            _ => return Err(malformed(&format!("unknown option '{key}' (task, item, answer, tool)"))),
        };
        if slot.replace(value).is_some() {
            return Err(malformed(&format!("'{key}' given twice")));
        }
    }
    match (task, item, answer) {
        (Some(task), Some(item), Some(answer)) => Ok(Marker { task, item, answer, tool }),
        _ => Err(malformed("task, item and answer are all required")),
    }
}

/// The text a judge grades: what follows the last `ANSWER TO GRADE:` in the
/// text holding it, with any task or judge markers removed so that a marker's
/// own `answer:` never counts as the candidate's.
fn candidate(texts: &[String]) -> String {
    let Some(tail) = texts.iter().rev().find_map(|t| t.rfind(GRADE).map(|at| &t[at + GRADE.len()..])) else {
        return String::new();
    };
    let mut out = String::with_capacity(tail.len());
    let mut rest = tail;
    loop {
        let next = [rest.find(MARKER), rest.find(JUDGE)].into_iter().flatten().min();
        let Some(at) = next else { break };
        out.push_str(&rest[..at]);
        match rest[at..].find(']') {
            Some(end) => rest = &rest[at + end + 1..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether `needle` occurs in `hay` as a whole word: not continued by a
/// letter, digit or `_` on a side where `needle` itself ends in one. So `4`
/// is not found in `14` or `4.5`'s neighbour `45`, but is in `{"answer":"4"}`.
pub(crate) fn contains_token(hay: &str, needle: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let (Some(first), Some(last)) = (needle.chars().next(), needle.chars().next_back()) else { return false };
    hay.match_indices(needle).any(|(at, _)| {
        let before = hay[..at].chars().next_back();
        let after = hay[at + needle.len()..].chars().next();
        let joined_before = word(first) && before.is_some_and(word);
        let joined_after = word(last) && after.is_some_and(word);
        !(joined_before || joined_after)
    })
}

/// How the answer is delivered.
#[derive(Debug, PartialEq)]
enum Form<'a> {
    /// Plain text: `Final answer: ANSWER`.
    Text,
    /// JSON text: `{"answer":ANSWER}`.
    Json(AnswerType),
    /// A call of tool `name` with arguments `{"answer":ANSWER}`. `wanted`: the
    /// marker asked for this tool, so a wrong answer is a schema violation;
    /// otherwise the call is the dialect's way of returning JSON (a forced
    /// tool), and a wrong answer is a wrong value.
    Call { name: &'a str, answer: AnswerType, wanted: bool },
}

fn form<'a>(ask: &'a Ask, marker: &Marker<'_>) -> Form<'a> {
    let tool = |name: &str| ask.tools.iter().find(|t| t.name == name);
    let may_call = ask.choice != Choice::None && !ask.after_tool_result;
    let forced = match &ask.choice {
        Choice::Named(name) => tool(name),
        Choice::Any => ask.tools.first(),
        Choice::Auto | Choice::None => None,
    };
    // The marker's tool, unless the request forces a different one.
    let wanted = marker.tool.and_then(tool).filter(|t| match &ask.choice {
        Choice::Named(name) => *name == t.name,
        _ => true,
    });
    match (may_call, wanted, forced) {
        (true, Some(t), _) => Form::Call { name: &t.name, answer: t.answer, wanted: true },
        (true, None, Some(t)) => Form::Call { name: &t.name, answer: t.answer, wanted: false },
        _ => ask.json.map_or(Form::Text, Form::Json),
    }
}

/// The answer in `form`: correct when `style` is `None`, else wrong that way.
fn render(form: &Form<'_>, style: Option<WrongStyle>, marker: &Marker<'_>, hash: u64, raw_args: bool) -> Reply {
    let text = |s: String| Reply { body: Body::Text(s), truncated: false };
    let call =
        |name: &str, args: Args, truncated: bool| Reply { body: Body::Call { name: name.to_owned(), args }, truncated };
    let object = |value: Value| Value::Object(Map::from_iter([("answer".to_owned(), value)]));
    let wrong = || wrong_answer(hash, marker.answer);
    match (form, style) {
        (_, Some(WrongStyle::Empty)) => text(String::new()),
        (_, Some(WrongStyle::Refusal)) => text(REFUSAL.to_owned()),
        (Form::Text, None) => text(format!("{FINAL}{}", marker.answer)),
        // Nothing to break when no JSON was asked for: just a wrong answer.
        (Form::Text, Some(WrongStyle::Answer | WrongStyle::InvalidJson)) => text(format!("{FINAL}{}", wrong())),
        (Form::Text, Some(WrongStyle::Truncated)) => {
            Reply { body: Body::Text(first_half(&format!("{FINAL}{}", marker.answer))), truncated: true }
        }
        (Form::Json(kind), None) => text(object(typed(marker.answer, *kind)).to_string()),
        (Form::Json(kind), Some(WrongStyle::Answer)) => text(object(typed(&wrong(), *kind)).to_string()),
        (Form::Json(kind), Some(WrongStyle::Truncated)) => {
            Reply { body: Body::Text(first_half(&object(typed(marker.answer, *kind)).to_string())), truncated: true }
        }
        (Form::Json(_), Some(WrongStyle::InvalidJson)) => text(invalid_json(&wrong())),
        (Form::Call { name, answer, .. }, None) => call(name, Args::Json(object(typed(marker.answer, *answer))), false),
        (Form::Call { name, answer, wanted: false }, Some(WrongStyle::Answer)) => {
            call(name, Args::Json(object(typed(&wrong(), *answer))), false)
        }
        // The value's type contradicts the schema, so a schema check catches it.
        (Form::Call { name, answer, wanted: true }, Some(WrongStyle::Answer)) => {
            let value = match answer {
                AnswerType::Number => Value::from(wrong()),
                AnswerType::String => Value::from(10_000 + hash % 90_000),
            };
            call(name, Args::Json(object(value)), false)
        }
        (Form::Call { name, answer, .. }, Some(WrongStyle::Truncated)) => {
            let args = if raw_args {
                Args::Raw(first_half(&object(typed(marker.answer, *answer)).to_string()))
            } else {
                Args::Json(Value::Object(Map::new()))
            };
            call(name, args, true)
        }
        (Form::Call { name, .. }, Some(WrongStyle::InvalidJson)) => {
            if raw_args {
                call(name, Args::Raw(invalid_json(&wrong())), false)
            } else {
                text(invalid_json(&wrong()))
            }
        }
    }
}

/// `answer` as a JSON number when `kind` says so and it parses as one, else a string.
fn typed(answer: &str, kind: AnswerType) -> Value {
    match kind {
        AnswerType::Number => {
            serde_json::from_str::<serde_json::Number>(answer).map_or_else(|_| answer.into(), Value::from)
        }
        AnswerType::String => answer.into(),
    }
}

/// Python-dict style, a common way for a model to miss JSON: single quotes.
fn invalid_json(answer: &str) -> String {
    format!("{{'answer': '{answer}'}}")
}

/// The first half of `s` (by characters), as a reply cut off by the output limit.
fn first_half(s: &str) -> String {
    s.chars().take(s.chars().count() / 2).collect()
}

/// Words for wrong non-numeric answers, each followed by three digits.
const WRONG_WORDS: [&str; 16] = [
    "amber", "basalt", "cobalt", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "kelp", "lumen",
    "meridian", "nectar", "onyx", "prism",
];

/// A wrong answer, derived from `hash` (seed, model, task and item): an integer
/// answer is off by 1 to 999 either way (never below 0 for a non-negative
/// answer), anything else becomes a word and three digits. The plain reply carrying it never contains the right answer
/// as a whole word (so a judge does not pass it), unless the right answer is
/// a word of `Final answer:` itself.
fn wrong_answer(hash: u64, answer: &str) -> String {
    let mut state = hash;
    let mut candidate = String::new();
    // Rarely a candidate contains the answer (5 vs -5): draw again.
    for _ in 0..16 {
        state = splitmix64(state);
        candidate = match answer.parse::<i64>() {
            Ok(n) => {
                let offset = 1 + (state % 999) as i64;
                // A count or a year does not turn negative when a model gets it wrong.
                let down = state >> 63 == 1 && (n < 0 || n >= offset);
                if down { n.saturating_sub(offset) } else { n.saturating_add(offset) }.to_string()
            }
            Err(_) => {
                format!("{}{}", WRONG_WORDS[(state >> 32) as usize % WRONG_WORDS.len()], 100 + (state >> 8) % 900)
            }
        };
        if candidate != answer && !contains_token(&format!("{FINAL}{candidate}"), answer) {
            break;
        }
    }
    candidate
}

/// What a draw decides; part of the hash, so a model's answering, judging
/// and wrong answers are independent of each other.
#[derive(Clone, Copy)]
enum Role {
    Answer,
    Judge,
    Wrong,
}

impl Role {
    fn of(judge: bool) -> Role {
        if judge {
            Role::Judge
        } else {
            Role::Answer
        }
    }

    fn tag(self) -> &'static [u8] {
        match self {
            Role::Answer => b"answer",
            Role::Judge => b"judge",
            Role::Wrong => b"wrong",
        }
    }
}

/// A 64-bit hash of (seed, role, model, task, item): FNV-1a over the seed's
/// little-endian bytes and each string followed by `0xff` (never a byte of
/// UTF-8, so the fields cannot run into each other), then SplitMix64's
/// finalizer, because FNV-1a alone mixes its last bytes into the high bits
/// poorly. Fixed arithmetic on bytes: the same on every platform and run.
fn mix(seed: u64, role: Role, model: &str, marker: &Marker<'_>) -> u64 {
    let mut h = text::fnv1a(text::FNV_START, &seed.to_le_bytes());
    for field in [role.tag(), model.as_bytes(), marker.task.as_bytes(), marker.item.as_bytes()] {
        h = text::fnv1a(h, field);
        h = text::fnv1a(h, &[0xff]);
    }
    splitmix64(h)
}

/// [`mix`] mapped to `[0, 1)`: its top 53 bits over 2^53, exactly representable.
fn draw(seed: u64, role: Role, model: &str, marker: &Marker<'_>) -> f64 {
    (mix(seed, role, model, marker) >> 11) as f64 / (1u64 << 53) as f64
}

/// SplitMix64's step and output function (Steele, Lea and Flood, 2014).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
