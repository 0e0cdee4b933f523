//! Offline evals (`bourse evals run`): a labelled dataset sent to candidate models through the
//! gateway's own provider code, each answer graded against its item's expectation, and the
//! result per model — accuracy, exact cost, latency — ready to store as a route's evidence.
//!
//! The steps are separate functions so each can be tested and the command can stop between
//! them: [`parse_dataset`] (strict: a bad line is an error naming it, before anything is sent),
//! [`resolve_models`] or [`route_models`], [`estimate`] (worst and expected cost at catalog
//! prices, integer pico-USD summed and rounded once), [`run`] (bounded concurrency, one call per
//! (model, item)), [`frontier`] and [`evidence_rows`].
//!
//! **Dataset.** JSON Lines, one item per line (blank lines skipped):
//!
//! ```text
//! {"id": "q1", "messages": [{"role": "user", "content": "What is 17 + 25?"}], "expected": {"text": "42"}}
//! {"id": "q2", "messages": [...], "expected": {"regex": "(?i)final answer:\\s*42\\b"}, "max_tokens": 200}
//! {"id": "q3", "messages": [...], "expected": {"schema": {"type": "object", "required": ["total"]}},
//!  "response_format": {"type": "json_object"}}
//! ```
//!
//! Members: `id` (a non-empty string, unique in the file), `messages` (OpenAI chat messages),
//! `expected` (exactly one of `text`, `regex`, `schema`), and optionally `max_tokens`,
//! `response_format`, `tools`, `tool_choice`, `temperature`; any other member is an error. The
//! item is sent as an OpenAI chat request with those members (translated for an Anthropic or
//! Gemini upstream as the gateway translates), never streamed.
//!
//! **Grading** ([`Expected::grade`]):
//! - `text`: passes when the expected text, normalized ([`check::normalize`]: trimmed,
//!   lowercased, whitespace runs as one space), equals the whole answer text normalized, or
//!   the answer's final answer normalized: the rest of the line after the last `final answer:`
//!   (any case), with one trailing `.` removed. A model that reasons first and then states
//!   `Final answer: 42` passes `{"text": "42"}`.
//! - `regex`: passes when the pattern matches anywhere in the answer text (anchor it to demand
//!   more).
//! - `schema`: passes when the answer's JSON — its text, trimmed, or, when the text is blank,
//!   the arguments of its first tool call — parses and validates against the schema.
//!
//! A call that fails (connect error, timeout, an HTTP error, a body that is not an answer)
//! counts as a failed item and is counted separately as an error.

use crate::canonical::{Dialect, Usage};
use crate::catalog::Model;
use crate::check::{self, Answer, Schema};
use crate::config::Config;
use crate::dialect::openai as wire;
use crate::exchange;
use crate::ledger::EvidenceRow;
use crate::meter::estimate::{self as tokens, Counting};
use crate::meter::{self, Cost};
use crate::provider::Endpoint;
use crate::route::plan::{cost_of, estimate_prompt_tokens, worst_case_pico};
use crate::route::{Overrides, Target};
use crate::state::AppState;
use bytes::Bytes;
use futures_util::StreamExt as _;
use regex::Regex;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The request members an item may carry besides `id`, `messages` and `expected`.
const REQUEST_MEMBERS: [&str; 5] = ["max_tokens", "response_format", "tools", "tool_choice", "temperature"];

/// What an item's answer must show to pass.
#[derive(Debug)]
pub enum Expected {
    Text(String),
    Regex(Regex),
    Schema(Box<Schema>),
}

impl Expected {
    /// Whether `answer` passes (see the module doc for the rules).
    pub fn grade(&self, answer: &Answer) -> bool {
        match self {
            Expected::Text(want) => {
                let want = check::normalize(want);
                check::normalize(&answer.text) == want || final_answer(&answer.text).is_some_and(|f| f == want)
            }
            Expected::Regex(re) => re.is_match(&answer.text),
            Expected::Schema(schema) => {
                let text = match answer.json_text() {
                    t if t.trim().is_empty() => answer.tool_calls.first().map_or("", |c| c.arguments.as_str()),
                    t => t,
                };
                serde_json::from_str::<Value>(text.trim()).is_ok_and(|v| schema.validate(&v).is_ok())
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Expected::Text(_) => "text",
            Expected::Regex(_) => "regex",
            Expected::Schema(_) => "schema",
        }
    }
}

/// The final answer a text states: the rest of the line after the last `final answer:` (any
/// case), without one trailing `.`, normalized. None when the text states none.
pub fn final_answer(text: &str) -> Option<String> {
    const MARK: &str = "final answer:";
    // ASCII lowercasing keeps byte offsets, so the position found applies to `text`.
    let at = text.to_ascii_lowercase().rfind(MARK)? + MARK.len();
    let line = text[at..].lines().next().unwrap_or("").trim();
    Some(check::normalize(line.strip_suffix('.').unwrap_or(line)))
}

/// One labelled item.
#[derive(Debug)]
pub struct Item {
    pub id: String,
    /// Its line in the file (1-based), for messages.
    pub line: usize,
    /// The chat request without `model`: `messages` and the optional members.
    pub request: Map<String, Value>,
    pub expected: Expected,
    /// Estimated prompt tokens (the router's estimate), for the cost estimate.
    pub prompt_tokens: u64,
    pub max_tokens: Option<u64>,
}

impl Item {
    /// The OpenAI chat request for `model`.
    fn body(&self, model: &str) -> Bytes {
        let mut body = self.request.clone();
        body.insert("model".into(), Value::String(model.to_string()));
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// Reads a dataset; the error names the first bad line and what is wrong with it.
pub fn parse_dataset(text: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut ids = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let item = parse_item(line, line_no).map_err(|e| format!("line {line_no}: {e}"))?;
        if !ids.insert(item.id.clone()) {
            return Err(format!("line {line_no}: id \"{}\" is given twice", item.id));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err("the dataset has no items".into());
    }
    Ok(items)
}

fn parse_item(line: &str, line_no: usize) -> Result<Item, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut obj) = value else { return Err("not a JSON object".into()) };
    let id = match obj.remove("id") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(_) => return Err("\"id\" must be a non-empty string".into()),
        None => return Err("no \"id\"".into()),
    };
    let expected = match obj.remove("expected") {
        Some(Value::Object(e)) => parse_expected(e)?,
        Some(_) => {
            return Err("\"expected\" must be an object: {\"text\": …}, {\"regex\": …} or {\"schema\": …}".into())
        }
        None => return Err("no \"expected\"".into()),
    };
    if !obj.contains_key("messages") {
        return Err("no \"messages\"".into());
    }
    if let Some(k) = obj.keys().find(|k| *k != "messages" && !REQUEST_MEMBERS.contains(&k.as_str())) {
        return Err(format!(
            "unknown member \"{k}\" (an item has id, messages, expected and optionally {})",
            REQUEST_MEMBERS.join(", ")
        ));
    }
    if obj.get("max_tokens").is_some_and(|m| m.as_u64().is_none_or(|n| n < 1)) {
        return Err("\"max_tokens\" must be a whole number of at least 1".into());
    }
    // The gateway's own validation of a chat request: what passes here is what it would send.
    let mut probe = obj.clone();
    probe.insert("model".into(), Value::String("evals".into()));
    let req = wire::parse_chat_request(&Bytes::from(serde_json::to_vec(&probe).unwrap_or_default()))
        .map_err(|e| format!("not a valid chat request: {}", e.message))?;
    let _ = wire::conversation(req.body()).map_err(|e| format!("not a valid chat request: {}", e.message))?;
    Ok(Item {
        id,
        line: line_no,
        prompt_tokens: estimate_prompt_tokens(&obj),
        max_tokens: req.max_output_tokens,
        request: obj,
        expected,
    })
}

fn parse_expected(e: Map<String, Value>) -> Result<Expected, String> {
    if e.len() > 1 {
        return Err("\"expected\" must have exactly one of text, regex, schema".into());
    }
    let (kind, value) = match e.into_iter().next() {
        Some((k, v)) => (Some(k), Some(v)),
        None => (None, None),
    };
    match (kind.as_deref(), value) {
        (Some("text"), Some(Value::String(t))) if !check::normalize(&t).is_empty() => Ok(Expected::Text(t)),
        (Some("text"), _) => Err("expected.text must be a string with some text".into()),
        (Some("regex"), Some(Value::String(p))) => {
            Regex::new(&p).map(Expected::Regex).map_err(|e| format!("expected.regex does not compile: {e}"))
        }
        (Some("regex"), _) => Err("expected.regex must be a string".into()),
        (Some("schema"), Some(s @ Value::Object(_))) => Schema::compile(&s)
            .map(|s| Expected::Schema(Box::new(s)))
            .map_err(|e| format!("expected.schema does not compile: {e}")),
        (Some("schema"), _) => Err("expected.schema must be a JSON Schema object".into()),
        (Some(other), _) => Err(format!("expected.{other} is not a kind: use text, regex or schema")),
        (None, _) => Err("\"expected\" is empty".into()),
    }
}

/// How many items expect each kind, as `text 30, regex 5, schema 5`.
pub fn kinds(items: &[Item]) -> String {
    let mut out = Vec::new();
    for kind in ["text", "regex", "schema"] {
        let n = items.iter().filter(|i| i.expected.kind() == kind).count();
        if n > 0 {
            out.push(format!("{kind} {n}"));
        }
    }
    out.join(", ")
}

/// A model under evaluation: where it is called and the catalog entry that prices it.
#[derive(Debug, Clone)]
pub struct Contender {
    /// `provider/model`.
    pub key: String,
    pub target: Target,
    pub price: Model,
}

/// `provider/model` names, each served by a configured provider and priced by the catalog;
/// the error names every one that is not.
pub fn resolve_models(state: &AppState, names: &[String]) -> Result<Vec<Contender>, String> {
    let mut out: Vec<Contender> = Vec::new();
    let mut bad = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let Some((provider, model)) = name.split_once('/').filter(|(p, m)| !p.is_empty() && !m.is_empty()) else {
            bad.push(format!("{name} (write it as provider/model)"));
            continue;
        };
        let Some(p) = state.providers.get(provider) else {
            let ids: Vec<&str> = state.providers.iter().map(|p| p.id.as_str()).collect();
            bad.push(format!("{name} (no provider \"{provider}\" is configured; configured: {})", ids.join(", ")));
            continue;
        };
        let price = match state.meter.price(&p.id, p.vendor, model) {
            Ok(price) => state.meter.model(price).clone(),
            Err(_) => {
                bad.push(format!("{name} (no price in the catalog: price it under [models.\"{name}\"])"));
                continue;
            }
        };
        if out.iter().any(|c| c.key == name) {
            continue;
        }
        let target = Target { provider: p.clone(), upstream_model: model.to_string() };
        out.push(Contender { key: name.to_string(), target, price });
    }
    if !bad.is_empty() {
        return Err(format!("unknown model{}: {}", if bad.len() > 1 { "s" } else { "" }, bad.join("; ")));
    }
    if out.is_empty() {
        return Err("no model named: --models takes provider/model names, comma-separated".into());
    }
    Ok(out)
}

/// The models the router could send every item of the dataset to on `route`: the planner's
/// candidates for each item (policy, capabilities, context, quality floor, cost ceiling, as a
/// served request would be planned), those feasible for all of them, in the order of the
/// first item's ranking.
pub fn route_models(state: &AppState, route: &str, items: &[Item]) -> Result<Vec<Contender>, String> {
    let router = &state.router;
    let r = router.route(route).ok_or_else(|| format!("no route named {route}"))?;
    let mut keep: Option<Vec<usize>> = None;
    for item in items {
        let req = wire::parse_chat_request(&item.body(route)).map_err(|e| e.message)?;
        let routed = router.plan(r, &Overrides::default(), &req, Instant::now()).map_err(|e| e.message)?;
        let entries: Vec<usize> = routed.plan.candidates.iter().map(|c| c.entry).collect();
        keep = Some(match keep {
            None => entries,
            Some(k) => k.into_iter().filter(|e| entries.contains(e)).collect(),
        });
    }
    let names: Vec<String> = keep.unwrap_or_default().into_iter().map(|e| router.entries[e].key.to_string()).collect();
    if names.is_empty() {
        return Err(format!("no model is feasible on route {route} for every item: name them with --models"));
    }
    resolve_models(state, &names)
}

/// What running the dataset on one model may cost, at catalog prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    pub model: String,
    /// Estimated prompt tokens over all items.
    pub prompt_tokens: u64,
    /// Expected output tokens over all items: per item the route's `expected_output`, capped by
    /// its `max_tokens`.
    pub expected_output: u64,
    /// Every item's prompt at the input price and its output at the expected count.
    pub expected: Cost,
    /// Every item's prompt plus the most output it can get (its `max_tokens`, else the
    /// model's maximum output) at the output price: what the router would reserve.
    pub worst: Cost,
}

/// The estimate per model; sums are in integer pico-USD, rounded up to nano-USD once per
/// model (as the router rounds a worst case).
pub fn estimate(items: &[Item], models: &[Contender], expected_output: u64) -> Vec<Estimate> {
    models
        .iter()
        .map(|c| {
            let (mut prompt, mut output, mut expected, mut worst) = (0u64, 0u64, 0u128, 0u128);
            for item in items {
                let rates = c.price.rates_for(item.prompt_tokens);
                let out = item.max_tokens.map_or(expected_output, |m| m.min(expected_output));
                prompt += item.prompt_tokens;
                output += out;
                expected += u128::from(item.prompt_tokens) * u128::from(rates.input.0)
                    + u128::from(out) * u128::from(rates.output.0);
                worst += worst_case_pico(&c.price, item.prompt_tokens, item.max_tokens);
            }
            Estimate {
                model: c.key.clone(),
                prompt_tokens: prompt,
                expected_output: output,
                expected: cost_of(expected),
                worst: cost_of(worst),
            }
        })
        .collect()
}

/// The sum of the estimates: (expected, worst).
pub fn estimate_total(estimates: &[Estimate]) -> (Cost, Cost) {
    estimates.iter().fold((Cost(0), Cost(0)), |(e, w), x| (Cost(e.0 + x.expected.0), Cost(w.0 + x.worst.0)))
}

/// One call's outcome.
#[derive(Debug, Clone)]
pub struct Call {
    pub model: usize,
    pub item: usize,
    pub passed: bool,
    /// Why the call failed (no answer to grade).
    pub error: Option<String>,
    pub cost: Cost,
    /// The usage was estimated: the upstream reported none.
    pub estimated: bool,
    pub latency: Duration,
}

/// The running totals the progress bar shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub errors: usize,
    pub cost: Cost,
}

/// Sends every item to every model, at most `concurrency` calls at once, and returns every
/// call's outcome (in completion order). `progress` is told after each call.
pub async fn run(
    state: &AppState,
    items: &[Item],
    models: &[Contender],
    concurrency: usize,
    mut progress: impl FnMut(&Progress),
) -> Vec<Call> {
    // Item by item, every model in turn: all models advance together, so a run stopped early
    // still compares them on the same items.
    let pairs = (0..items.len()).flat_map(|i| (0..models.len()).map(move |m| (m, i)));
    let mut calls = futures_util::stream::iter(pairs)
        .map(|(m, i)| call(state, &models[m], &items[i], m, i))
        .buffer_unordered(concurrency.max(1));
    let mut p = Progress { total: items.len() * models.len(), ..Progress::default() };
    let mut out = Vec::with_capacity(p.total);
    while let Some(c) = calls.next().await {
        p.done += 1;
        p.errors += usize::from(c.error.is_some());
        p.cost = Cost(p.cost.0 + c.cost.0);
        progress(&p);
        out.push(c);
    }
    out
}

async fn call(state: &AppState, c: &Contender, item: &Item, model: usize, index: usize) -> Call {
    let started = Instant::now();
    let mut out = Call {
        model,
        item: index,
        passed: false,
        error: None,
        cost: Cost(0),
        estimated: false,
        latency: Duration::ZERO,
    };
    match ask(state, c, item).await {
        Ok((answer, usage, estimated)) => {
            out.passed = item.expected.grade(&answer);
            out.cost = meter::cost(&usage, &c.price);
            out.estimated = estimated;
        }
        Err(e) => out.error = Some(e),
    }
    out.latency = started.elapsed();
    out
}

/// One item to one model: the answer (read as an OpenAI answer, whatever the upstream's
/// dialect), its usage, and whether that usage was estimated.
async fn ask(state: &AppState, c: &Contender, item: &Item) -> Result<(Answer, Usage, bool), String> {
    let target = &c.target;
    let provider = &target.provider;
    let redacted = |e: crate::error::Error| provider.redact(e).message;
    let mut req = wire::parse_chat_request(&item.body(&c.key)).map_err(|e| e.message)?;
    // The exchange's own translation, both ways: the item as the upstream's request, its
    // answer as an OpenAI answer.
    let (body, json_tool) = exchange::upstream_body(&mut req, target).map_err(|e| e.message)?;
    let endpoint = Endpoint::Chat { model: &target.upstream_model, stream: false };
    let upstream = provider.post_json(endpoint, body).await.map_err(redacted)?;
    let (_, bytes) = exchange::read_upstream_body(target, upstream).await.map_err(redacted)?;
    let (openai_body, usage) = exchange::answer(&req, target, bytes, json_tool).map_err(redacted)?;
    let answer = Answer::from_body(&openai_body, Dialect::OpenAi).map_err(|e| e.0)?;
    match usage {
        Some(u) => Ok((answer, u, false)),
        None => {
            let counting = Counting { request: Some(req.take_body()), answer: tokens::Answer::Body(openai_body) };
            let (u, _) = state.estimator.usage(counting).await;
            Ok((answer, u, true))
        }
    }
}

/// One model's result over the dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Score {
    pub model: String,
    pub n: u64,
    /// Items whose answer passed (failed calls never do).
    pub passed: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Calls whose usage the upstream did not report (estimated, then priced).
    pub estimated: u64,
    /// The metered cost of every answer.
    pub cost: Cost,
    /// Latency of the calls that answered (send to last body byte), nearest-rank percentiles.
    pub p50: Option<Duration>,
    pub p95: Option<Duration>,
    /// The first error, as an example.
    pub first_error: Option<String>,
    /// Ids of the items that did not pass, in dataset order.
    pub failed_items: Vec<String>,
}

impl Score {
    /// Cost per item, rounded down to the nano-USD.
    pub fn per_item(&self) -> Cost {
        Cost(self.cost.0 / i64::try_from(self.n.max(1)).unwrap_or(i64::MAX))
    }

    /// The share that passed, in [0, 1].
    pub fn accuracy(&self) -> f64 {
        self.passed as f64 / self.n.max(1) as f64
    }
}

/// Calls gathered per model, in `models` order.
pub fn scores(calls: &[Call], items: &[Item], models: &[Contender]) -> Vec<Score> {
    models
        .iter()
        .enumerate()
        .map(|(m, c)| {
            let mut mine: Vec<&Call> = calls.iter().filter(|x| x.model == m).collect();
            mine.sort_by_key(|x| x.item);
            let mut latencies: Vec<Duration> = mine.iter().filter(|x| x.error.is_none()).map(|x| x.latency).collect();
            latencies.sort_unstable();
            Score {
                model: c.key.clone(),
                n: items.len() as u64,
                passed: mine.iter().filter(|x| x.passed).count() as u64,
                errors: mine.iter().filter(|x| x.error.is_some()).count() as u64,
                estimated: mine.iter().filter(|x| x.estimated).count() as u64,
                cost: Cost(mine.iter().map(|x| x.cost.0).sum()),
                p50: percentile(&latencies, 50),
                p95: percentile(&latencies, 95),
                first_error: mine.iter().find_map(|x| x.error.clone()),
                failed_items: mine.iter().filter(|x| !x.passed).map(|x| items[x.item].id.clone()).collect(),
            }
        })
        .collect()
}

/// The nearest-rank percentile of sorted values: the smallest value with at least `p`% of
/// them at or below it.
pub fn percentile(sorted: &[Duration], p: usize) -> Option<Duration> {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Which models are on the price–quality frontier: no other model is at least as accurate
/// and at most as costly while better in one of them. Every model is scored on the same
/// items, so passes compare as accuracies; costs are the metered totals. A model that passed
/// nothing is never on it: it offers no quality at any price (and one whose every call
/// failed would otherwise be "cheapest").
pub fn frontier(scores: &[Score]) -> Vec<bool> {
    scores
        .iter()
        .map(|a| {
            a.passed > 0
                && !scores
                    .iter()
                    .any(|b| b.passed >= a.passed && b.cost <= a.cost && (b.passed > a.passed || b.cost < a.cost))
        })
        .collect()
}

/// The evidence source of a run on `dataset`: `evals:` and the file's stem.
pub fn source(dataset: &std::path::Path) -> String {
    let stem = dataset.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    format!("evals:{stem}")
}

/// One evidence row per model: score passed / n, errors counted as failures.
pub fn evidence_rows(route: &str, source: &str, scores: &[Score], now_ms: i64) -> Vec<EvidenceRow> {
    scores
        .iter()
        .map(|s| EvidenceRow {
            route: route.to_string(),
            model: s.model.clone(),
            source: source.to_string(),
            score: s.accuracy(),
            n: s.n,
            updated_ms: now_ms,
        })
        .collect()
}

/// The route's `expected_output` (the estimate's output per item without a lower
/// `max_tokens`), or an error naming the configured routes.
pub fn route_expected_output(cfg: &Config, route: &str) -> Result<u64, String> {
    match cfg.routing.routes.get(route) {
        Some(r) => Ok(r.expected_output),
        None => {
            let known: Vec<&str> = cfg.routing.routes.keys().map(String::as_str).collect();
            Err(format!("unknown route \"{route}\" (configured: {})", known.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Finish, ToolCall};

    fn answer(text: &str) -> Answer {
        Answer { text: text.into(), finish: Finish::Stop, tool_calls: Vec::new(), refusal: None }
    }

    fn line(expected: &str, extra: &str) -> String {
        format!(r#"{{"id":"q","messages":[{{"role":"user","content":"hi"}}],"expected":{expected}{extra}}}"#)
    }

    fn one(expected: &str) -> Expected {
        parse_dataset(&line(expected, "")).unwrap().remove(0).expected
    }

    #[test]
    fn text_passes_on_the_whole_answer_or_its_final_answer() {
        let e = one(r#"{"text":"  Forty  Two "}"#);
        assert!(e.grade(&answer("forty two")));
        assert!(e.grade(&answer("Let me think.\nFinal answer: 41\nNo wait.\nFINAL ANSWER:  forty   two.")));
        assert!(!e.grade(&answer("Final answer: forty two\nFinal answer: 41")), "the last one counts");
        assert!(!e.grade(&answer("forty two, I think")));
        assert!(!e.grade(&answer("Final answer: forty two point five")));
        assert_eq!(final_answer("no answer here"), None);
        assert_eq!(final_answer("Final answer: 42\nbecause"), Some("42".into()));
    }

    #[test]
    fn regex_matches_anywhere_and_schema_validates_the_json() {
        let e = one(r#"{"regex":"(?i)final answer:\\s*42\\b"}"#);
        assert!(e.grade(&answer("so... final ANSWER: 42")));
        assert!(!e.grade(&answer("Final answer: 421")));
        let e = one(r#"{"schema":{"type":"object","properties":{"answer":{"const":"42"}},"required":["answer"]}}"#);
        assert!(e.grade(&answer(" {\"answer\": \"42\"} ")));
        assert!(!e.grade(&answer("{\"answer\": \"43\"}")));
        assert!(!e.grade(&answer("{'answer': '42'}")));
        let call = ToolCall { name: "submit".into(), arguments: "{\"answer\":\"42\"}".into() };
        let mut a = answer("");
        a.tool_calls.push(call);
        assert!(e.grade(&a), "a blank text: the first tool call's arguments");
    }

    #[test]
    fn a_bad_line_is_named_with_its_problem() {
        let ok = line(r#"{"text":"a"}"#, "");
        for (text, want) in [
            ("{".to_string(), "line 1: not JSON"),
            ("[1]".into(), "line 1: not a JSON object"),
            (format!("{ok}\n\n{ok}"), "line 3: id \"q\" is given twice"),
            (r#"{"messages":[],"expected":{"text":"a"}}"#.into(), "no \"id\""),
            (r#"{"id":"q","expected":{"text":"a"}}"#.into(), "no \"messages\""),
            (r#"{"id":"q","messages":[{"role":"user","content":"x"}]}"#.into(), "no \"expected\""),
            (line(r#"{"text":"a","regex":"b"}"#, ""), "exactly one of"),
            (line(r#"{"exact":"a"}"#, ""), "expected.exact is not a kind"),
            (line(r#"{"text":" "}"#, ""), "expected.text must be"),
            (line(r#"{"regex":"("}"#, ""), "expected.regex does not compile"),
            (line(r#"{"schema":{"type":"nope"}}"#, ""), "expected.schema does not compile"),
            (line(r#"{"schema":"x"}"#, ""), "expected.schema must be"),
            (line(r#"{"text":"a"}"#, r#","stream":true"#), "unknown member \"stream\""),
            (line(r#"{"text":"a"}"#, r#","max_tokens":0"#), "\"max_tokens\" must be"),
            (
                r#"{"id":"q","messages":[{"role":"robot","content":"x"}],"expected":{"text":"a"}}"#.into(),
                "not a valid chat request",
            ),
            (r#"{"id":"q","messages":[],"expected":{"text":"a"}}"#.into(), "not a valid chat request"),
            ("\n \n".into(), "no items"),
        ] {
            let e = parse_dataset(&text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn an_item_keeps_its_request_members_and_estimates() {
        let text = line(r#"{"text":"a"}"#, r#","max_tokens":50,"response_format":{"type":"json_object"}"#);
        let items = parse_dataset(&format!("\n{text}\n")).unwrap();
        let item = &items[0];
        assert_eq!((item.id.as_str(), item.line, item.max_tokens), ("q", 2, Some(50)));
        assert!(item.request.contains_key("response_format") && !item.request.contains_key("expected"));
        // "hi": 1 token of text, 4 of framing for the message, 3 for the reply.
        assert_eq!(item.prompt_tokens, 8);
        assert_eq!(kinds(&items), "text 1");
    }

    fn contender(key: &str, input: f64, output: f64, max_output: Option<u64>) -> Contender {
        let text = format!(
            "[meta]\nname = \"t\"\ndate = \"d\"\n[[model]]\nprovider = \"deepseek\"\nmodel = \"{key}\"\ninput = {input:?}\noutput = {output:?}\n{}",
            max_output.map(|m| format!("max_output = {m}\n")).unwrap_or_default()
        );
        let catalog = crate::catalog::Catalog::load(&text, &Default::default()).unwrap().0;
        let price = catalog.models()[0].clone();
        let cfg = crate::config::Config::from_toml(
            "[providers.p]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:9\"\n",
            &|_| None,
        )
        .unwrap();
        let provider = std::sync::Arc::new(crate::provider::Provider::new(&cfg.providers[0]).unwrap());
        Contender { key: format!("p/{key}"), target: Target { provider, upstream_model: key.into() }, price }
    }

    #[test]
    fn the_estimate_sums_integer_picodollars_and_rounds_once() {
        let items = parse_dataset(&format!(
            "{}\n{}",
            line(r#"{"text":"a"}"#, r#","max_tokens":100"#),
            line(r#"{"text":"a"}"#, r#","max_tokens":1000"#).replace("\"q\"", "\"r\"")
        ))
        .unwrap();
        // $0.3 / $0.7 per 1M: 0.3 and 0.7 micro-USD per token, 300_000 and 700_000 pico-USD.
        let models = [contender("m", 0.3, 0.7, Some(4000))];
        let e = &estimate(&items, &models, 512)[0];
        // Each item: 8 prompt tokens; output 100 (its max_tokens) and 512 (the route's expected).
        assert_eq!((e.prompt_tokens, e.expected_output), (16, 612));
        // expected: 16 × 300_000 + 612 × 700_000 = 433_200_000 pico = 433_200 nano.
        assert_eq!(e.expected, Cost(433_200));
        // worst: 16 × 300_000 + (100 + 1000) × 700_000 = 774_800_000 pico.
        assert_eq!(e.worst, Cost(774_800));
        // Fractions of a nano-USD add up before the one rounding (up): at $0.3003 per 1M an
        // item's 8 prompt tokens cost 2402.4 nano-USD; two cost 4804.8, not 2 × 2403.
        let odd = [contender("o", 0.3003, 0.7, None)];
        assert_eq!(estimate(&items, &odd, 0)[0].expected, Cost(4805));
        assert_eq!(estimate_total(&estimate(&items, &models, 512)), (Cost(433_200), Cost(774_800)));
    }

    #[test]
    fn models_are_configured_priced_provider_model_names() {
        let cfg = crate::config::Config::from_toml(
            "[providers.p]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:9\"\n\
             [models.\"p/m\"]\ninput = 1.0\noutput = 2.0\n",
            &|_| None,
        )
        .unwrap();
        let state = AppState::from_config(&cfg).unwrap();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let got = resolve_models(&state, &names(&[" p/m", "p/m"])).unwrap();
        assert_eq!(got.len(), 1, "trimmed, and named once");
        assert_eq!((got[0].key.as_str(), got[0].target.upstream_model.as_str()), ("p/m", "m"));
        let e = resolve_models(&state, &names(&["p/m", "q/x", "p/free", "bare"])).unwrap_err();
        assert!(e.starts_with("unknown models: q/x (no provider \"q\" is configured; configured: p)"), "{e}");
        assert!(
            e.contains("p/free (no price in the catalog") && e.contains("bare (write it as provider/model)"),
            "{e}"
        );
        assert!(resolve_models(&state, &names(&[""])).unwrap_err().contains("no model named"));
    }

    fn score(model: &str, passed: u64, cost: i64) -> Score {
        Score {
            model: model.into(),
            n: 10,
            passed,
            errors: 0,
            estimated: 0,
            cost: Cost(cost),
            p50: None,
            p95: None,
            first_error: None,
            failed_items: Vec::new(),
        }
    }

    #[test]
    fn the_frontier_keeps_models_nothing_beats_on_both_price_and_accuracy() {
        let s = [
            score("cheap", 3, 100),
            score("mid", 7, 500),
            score("dear-and-worse", 6, 900),
            score("premium", 10, 2000),
            score("same-as-mid", 7, 500),
            score("pricier-same", 10, 2500),
            score("all-failed", 0, 0),
        ];
        assert_eq!(frontier(&s), [true, true, false, true, true, false, false]);
        assert_eq!(frontier(&[]), Vec::<bool>::new());
    }

    #[test]
    fn percentiles_are_nearest_rank_and_rows_score_passes_over_items() {
        let ms: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 50), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&ms, 95), Some(Duration::from_millis(19)));
        assert_eq!(percentile(&ms[..1], 95), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 50), None);
        let rows = evidence_rows("tax", "evals:set", &[score("a/x", 7, 1)], 9);
        assert_eq!(
            rows,
            [EvidenceRow {
                route: "tax".into(),
                model: "a/x".into(),
                source: "evals:set".into(),
                score: 0.7,
                n: 10,
                updated_ms: 9
            }]
        );
        assert_eq!(source(std::path::Path::new("/data/tax-2026.jsonl")), "evals:tax-2026");
        assert_eq!(score("a", 3, 1001).per_item(), Cost(100));
    }
}
