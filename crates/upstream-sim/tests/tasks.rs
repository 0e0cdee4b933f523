//! Scripted task answers over real HTTP: every wrong style in every dialect,
//! streamed and not, as text, JSON, a forced tool and a wanted tool call; judges;
//! agreement between models; and the config over `PUT /sim/config` and
//! `--config-json`. The hash and its statistics are unit-tested in `src/task/tests.rs`.

mod common;

use common::{client, json_of, parse_sse, post, sim};
use serde_json::{json, Value};
use upstream_sim::{Sim, SimConfig, TaskScript, WrongStyle};

const MODEL: &str = "sim-small";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
}

const DIALECTS: [Dialect; 3] = [Dialect::OpenAi, Dialect::Anthropic, Dialect::Gemini];

/// How the request asks for the answer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    Text,
    /// JSON as text: OpenAI `response_format`, Anthropic `output_config.format`,
    /// Gemini `responseMimeType`.
    Json,
    /// JSON through a forced tool `json_response`, as Bourse asks Anthropic for it.
    Forced,
    /// The marker asks for a call of `submit`, one of two tools on offer.
    Tool,
}

const FORMS: [Form; 4] = [Form::Text, Form::Json, Form::Forced, Form::Tool];

/// A reply reduced to what the dialects share. `finish` is `stop`, `call` or `length`.
#[derive(Debug, PartialEq)]
struct Got {
    text: String,
    /// Tool name and arguments (OpenAI: the `arguments` string as sent; others:
    /// the arguments object serialized).
    call: Option<(String, String)>,
    finish: &'static str,
}

fn answer_schema(kind: &str) -> Value {
    json!({"type": "object", "properties": {"answer": {"type": kind}}, "required": ["answer"]})
}

fn prompt(item: &str, form: Form) -> String {
    let tool = if form == Form::Tool { " tool:submit" } else { "" };
    format!("What is 17 + 25? [task:arith item:{item} answer:42{tool}]")
}

impl Dialect {
    fn path(self, model: &str, stream: bool) -> String {
        match self {
            Dialect::OpenAi => "/v1/chat/completions".to_owned(),
            Dialect::Anthropic => "/v1/messages".to_owned(),
            Dialect::Gemini if stream => format!("/v1beta/models/{model}:streamGenerateContent"),
            Dialect::Gemini => format!("/v1beta/models/{model}:generateContent"),
        }
    }

    fn body(self, model: &str, text: &str, form: Form, stream: bool) -> Value {
        let mut body = match self {
            Dialect::OpenAi => json!({"model": model, "stream": stream, "messages": [
                {"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]}),
            Dialect::Anthropic => json!({"model": model, "max_tokens": 100, "stream": stream, "system": "Be brief.",
                "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}),
            Dialect::Gemini => json!({"systemInstruction": {"parts": [{"text": "Be brief."}]},
                "contents": [{"role": "user", "parts": [{"text": text}]}]}),
        };
        let tools = |names: &[&str]| -> Vec<(String, Value)> {
            names.iter().map(|n| (n.to_string(), answer_schema("string"))).collect()
        };
        let declared = match form {
            Form::Text | Form::Json => Vec::new(),
            Form::Forced => tools(&["json_response"]),
            Form::Tool => tools(&["lookup", "submit"]),
        };
        if !declared.is_empty() {
            body["tools"] = match self {
                Dialect::OpenAi => declared
                    .iter()
                    .map(|(n, s)| json!({"type": "function", "function": {"name": n, "parameters": s}}))
                    .collect(),
                Dialect::Anthropic => declared.iter().map(|(n, s)| json!({"name": n, "input_schema": s})).collect(),
                Dialect::Gemini => json!([{"functionDeclarations":
                    declared.iter().map(|(n, s)| json!({"name": n, "parameters": s})).collect::<Vec<_>>()}]),
            };
        }
        match (self, form) {
            (_, Form::Text | Form::Tool) => {}
            (Dialect::OpenAi, Form::Json) => {
                body["response_format"] =
                    json!({"type": "json_schema", "json_schema": {"name": "a", "schema": answer_schema("string")}})
            }
            (Dialect::Anthropic, Form::Json) => {
                body["output_config"] = json!({"format": {"type": "json_schema", "schema": answer_schema("string")}})
            }
            (Dialect::Gemini, Form::Json) => {
                body["generationConfig"] =
                    json!({"responseMimeType": "application/json", "responseJsonSchema": answer_schema("string")})
            }
            (Dialect::OpenAi, Form::Forced) => {
                body["tool_choice"] = json!({"type": "function", "function": {"name": "json_response"}})
            }
            (Dialect::Anthropic, Form::Forced) => {
                body["tool_choice"] = json!({"type": "tool", "name": "json_response"})
            }
            (Dialect::Gemini, Form::Forced) => {
                body["toolConfig"] =
                    json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["json_response"]}})
            }
        }
        body
    }

    /// Sends `body` and reduces the answer, checking the finish reason's spelling.
    async fn ask(self, sim: &Sim, model: &str, body: &Value, stream: bool) -> Got {
        let response = post(sim, &self.path(model, stream), &[], body).await;
        assert_eq!(response.status(), 200, "{self:?}");
        if !stream {
            let v = json_of(response).await;
            return self.parse(&v);
        }
        let text = response.text().await.unwrap();
        let events: Vec<Value> = parse_sse(&text)
            .into_iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        self.parse_stream(&events)
    }

    fn finish(self, reason: &str, called: bool) -> &'static str {
        match (self, reason) {
            (Dialect::OpenAi, "stop") | (Dialect::Anthropic, "end_turn") => "stop",
            (Dialect::OpenAi, "tool_calls") | (Dialect::Anthropic, "tool_use") => "call",
            (Dialect::Gemini, "STOP") if called => "call",
            (Dialect::Gemini, "STOP") => "stop",
            (Dialect::OpenAi, "length") | (Dialect::Anthropic, "max_tokens") | (Dialect::Gemini, "MAX_TOKENS") => {
                "length"
            }
            _ => panic!("{self:?}: unexpected finish reason {reason}"),
        }
    }

    fn parse(self, v: &Value) -> Got {
        let (text, call, reason) = match self {
            Dialect::OpenAi => {
                let choice = &v["choices"][0];
                let message = &choice["message"];
                let call = message["tool_calls"].get(0).map(|c| {
                    (
                        c["function"]["name"].as_str().unwrap().to_owned(),
                        c["function"]["arguments"].as_str().unwrap().to_owned(),
                    )
                });
                (message["content"].as_str().unwrap_or_default().to_owned(), call, &choice["finish_reason"])
            }
            Dialect::Anthropic => {
                let blocks = v["content"].as_array().unwrap();
                let text = blocks.iter().filter_map(|b| b["text"].as_str()).collect();
                let call = blocks
                    .iter()
                    .find(|b| b["type"] == "tool_use")
                    .map(|b| (b["name"].as_str().unwrap().to_owned(), b["input"].to_string()));
                (text, call, &v["stop_reason"])
            }
            Dialect::Gemini => {
                let candidate = &v["candidates"][0];
                let parts = candidate["content"]["parts"].as_array().unwrap();
                let text = parts.iter().filter_map(|p| p["text"].as_str()).collect();
                let call = parts
                    .iter()
                    .find_map(|p| p.get("functionCall"))
                    .map(|c| (c["name"].as_str().unwrap().to_owned(), c["args"].to_string()));
                (text, call, &candidate["finishReason"])
            }
        };
        let finish = self.finish(reason.as_str().unwrap(), call.is_some());
        Got { text, call, finish }
    }

    fn parse_stream(self, events: &[Value]) -> Got {
        let mut text = String::new();
        let mut name: Option<String> = None;
        let mut args = String::new();
        let mut reason = None;
        for e in events {
            match self {
                Dialect::OpenAi => {
                    let Some(choice) = e["choices"].get(0) else { continue };
                    let delta = &choice["delta"];
                    text.push_str(delta["content"].as_str().unwrap_or_default());
                    if let Some(call) = delta["tool_calls"].get(0) {
                        if let Some(n) = call["function"]["name"].as_str() {
                            name = Some(n.to_owned());
                        }
                        args.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
                    }
                    if let Some(r) = choice["finish_reason"].as_str() {
                        reason = Some(r.to_owned());
                    }
                }
                Dialect::Anthropic => match e["type"].as_str().unwrap() {
                    "content_block_start" if e["content_block"]["type"] == "tool_use" => {
                        name = Some(e["content_block"]["name"].as_str().unwrap().to_owned());
                    }
                    "content_block_delta" => {
                        text.push_str(e["delta"]["text"].as_str().unwrap_or_default());
                        args.push_str(e["delta"]["partial_json"].as_str().unwrap_or_default());
                    }
                    "message_delta" => reason = Some(e["delta"]["stop_reason"].as_str().unwrap().to_owned()),
                    _ => {}
                },
                Dialect::Gemini => {
                    let candidate = &e["candidates"][0];
                    for p in candidate["content"]["parts"].as_array().unwrap() {
                        text.push_str(p["text"].as_str().unwrap_or_default());
                        if let Some(c) = p.get("functionCall") {
                            name = Some(c["name"].as_str().unwrap().to_owned());
                            args = c["args"].to_string();
                        }
                    }
                    if let Some(r) = candidate["finishReason"].as_str() {
                        reason = Some(r.to_owned());
                    }
                }
            }
        }
        // Anthropic streams an object's text; compare it as the object it is.
        if self == Dialect::Anthropic {
            if let Ok(v) = serde_json::from_str::<Value>(&args) {
                args = v.to_string();
            }
        }
        let call = name.map(|n| (n, args));
        let finish = self.finish(&reason.expect("a finish reason"), call.is_some());
        Got { text, call, finish }
    }
}

fn text(s: &str, finish: &'static str) -> Got {
    Got { text: s.to_owned(), call: None, finish }
}

/// A wrong plain answer: `Final answer: N`, N an integer other than 42.
fn assert_wrong_final(got: &Got) {
    let n: i64 = got.text.strip_prefix("Final answer: ").and_then(|n| n.parse().ok()).expect(&got.text);
    assert_ne!(n, 42);
    assert_eq!((got.call.as_ref(), got.finish), (None, "stop"));
}

/// `{"answer":"N"}`, N an integer other than 42.
fn assert_wrong_json(json: &str) {
    let v: Value = serde_json::from_str(json).unwrap();
    let n: i64 = v["answer"].as_str().expect(json).parse().unwrap();
    assert_ne!(n, 42);
}

fn assert_broken_json(json: &str) {
    assert!(json.starts_with("{'answer': '"), "{json}");
    assert!(serde_json::from_str::<Value>(json).is_err());
}

/// What the reply of `dialect` in `form` looks like when right (`style` None)
/// or wrong in `style`.
fn check(dialect: Dialect, form: Form, style: Option<WrongStyle>, got: &Got) {
    use WrongStyle::*;
    let tool = if form == Form::Tool { "submit" } else { "json_response" };
    let called =
        |args: &str, finish| Got { text: String::new(), call: Some((tool.to_owned(), args.to_owned())), finish };
    let raw_args = dialect == Dialect::OpenAi;
    match (form, style) {
        (_, Some(Empty)) => assert_eq!(*got, text("", "stop")),
        (_, Some(Refusal)) => assert_eq!(*got, text("I can't help with that.", "stop")),
        (Form::Text, None) => assert_eq!(*got, text("Final answer: 42", "stop")),
        (Form::Text, Some(Answer | InvalidJson)) => assert_wrong_final(got),
        (Form::Text, Some(Truncated)) => assert_eq!(*got, text("Final an", "length")),
        (Form::Json, None) => assert_eq!(*got, text(r#"{"answer":"42"}"#, "stop")),
        (Form::Json, Some(Answer)) => {
            assert_wrong_json(&got.text);
            assert_eq!((got.call.as_ref(), got.finish), (None, "stop"));
        }
        (Form::Json, Some(Truncated)) => assert_eq!(*got, text(r#"{"answe"#, "length")),
        (Form::Json, Some(InvalidJson)) => {
            assert_broken_json(&got.text);
            assert_eq!((got.call.as_ref(), got.finish), (None, "stop"));
        }
        (Form::Forced | Form::Tool, None) => assert_eq!(*got, called(r#"{"answer":"42"}"#, "call")),
        (Form::Forced, Some(Answer)) => {
            let (name, args) = got.call.as_ref().expect("a call");
            assert_eq!((name.as_str(), got.text.as_str(), got.finish), (tool, "", "call"));
            assert_wrong_json(args);
        }
        (Form::Tool, Some(Answer)) => {
            let (name, args) = got.call.as_ref().expect("a call");
            assert_eq!((name.as_str(), got.text.as_str(), got.finish), (tool, "", "call"));
            let v: Value = serde_json::from_str(args).unwrap();
            assert!(v["answer"].is_u64(), "a schema violation: {args}");
        }
        (Form::Forced | Form::Tool, Some(Truncated)) if raw_args => assert_eq!(*got, called(r#"{"answe"#, "length")),
        (Form::Forced | Form::Tool, Some(Truncated)) => assert_eq!(*got, called("{}", "length")),
        (Form::Forced | Form::Tool, Some(InvalidJson)) if raw_args => {
            let (name, args) = got.call.as_ref().expect("a call");
            assert_eq!((name.as_str(), got.finish), (tool, "call"));
            assert_broken_json(args);
        }
        (Form::Forced | Form::Tool, Some(InvalidJson)) => {
            assert_broken_json(&got.text);
            assert_eq!((got.call.as_ref(), got.finish), (None, "stop"));
        }
    }
}

const STYLES: [Option<WrongStyle>; 6] = [
    None,
    Some(WrongStyle::Answer),
    Some(WrongStyle::Empty),
    Some(WrongStyle::Truncated),
    Some(WrongStyle::InvalidJson),
    Some(WrongStyle::Refusal),
];

fn always(style: Option<WrongStyle>) -> SimConfig {
    let script = match style {
        None => TaskScript::new(MODEL, "arith", 1.0),
        Some(style) => TaskScript::new(MODEL, "arith", 0.0).wrong(style),
    };
    SimConfig { tasks: vec![script], task_seed: 3, output_tokens: 4, ..SimConfig::default() }
}

#[tokio::test]
async fn every_style_in_every_form_and_dialect_streamed_or_not() {
    let sim = sim(SimConfig::default()).await;
    for style in STYLES {
        sim.set_config(always(style));
        for form in FORMS {
            let mut texts = Vec::new();
            for dialect in DIALECTS {
                let whole =
                    dialect.ask(&sim, MODEL, &dialect.body(MODEL, &prompt("q1", form), form, false), false).await;
                let streamed =
                    dialect.ask(&sim, MODEL, &dialect.body(MODEL, &prompt("q1", form), form, true), true).await;
                check(dialect, form, style, &whole);
                assert_eq!(streamed, whole, "{dialect:?} {form:?} {style:?}: a stream carries the same answer");
                texts.push(whole.text);
            }
            // Same model, item and seed: the same words in every dialect.
            if matches!(form, Form::Text | Form::Json) {
                assert!(texts.iter().all(|t| *t == texts[0]), "{form:?} {style:?}: {texts:?}");
            }
        }
    }
}

#[tokio::test]
async fn unmarked_requests_are_answered_as_before() {
    let plain = sim(SimConfig::default()).await;
    let scripted = sim(SimConfig { tasks: always(Some(WrongStyle::Refusal)).tasks, ..SimConfig::default() }).await;
    for dialect in DIALECTS {
        for form in [Form::Text, Form::Json, Form::Forced] {
            for stream in [false, true] {
                let body = dialect.body(MODEL, "What is 17 + 25? [task] [judge] answer:42", form, stream);
                let want = dialect.ask(&plain, MODEL, &body, stream).await;
                assert_eq!(dialect.ask(&scripted, MODEL, &body, stream).await, want, "{dialect:?} {form:?}");
                assert_ne!(want.text, "I can't help with that.");
            }
        }
    }
}

#[tokio::test]
async fn usage_is_as_configured_or_derived() {
    let sim = sim(SimConfig { prompt_tokens: Some(50), ..always(Some(WrongStyle::Empty)) }).await;
    let body = |dialect: Dialect| dialect.body(MODEL, &prompt("q1", Form::Text), Form::Text, false);
    let v = json_of(post(&sim, "/v1/chat/completions", &[], &body(Dialect::OpenAi)).await).await;
    assert_eq!((v["usage"]["prompt_tokens"].as_u64(), v["usage"]["completion_tokens"].as_u64()), (Some(50), Some(4)));
    let v = json_of(post(&sim, "/v1/messages", &[], &body(Dialect::Anthropic)).await).await;
    assert_eq!((v["usage"]["input_tokens"].as_u64(), v["usage"]["output_tokens"].as_u64()), (Some(50), Some(4)));
    let path = Dialect::Gemini.path(MODEL, false);
    let v = json_of(post(&sim, &path, &[], &body(Dialect::Gemini)).await).await;
    let usage = &v["usageMetadata"];
    assert_eq!((usage["promptTokenCount"].as_u64(), usage["candidatesTokenCount"].as_u64()), (Some(50), Some(4)));

    // Derived from the prompt's characters, as for any request.
    let mut config = always(None);
    config.tasks.clear();
    sim.set_config(config);
    let v = json_of(post(&sim, "/v1/chat/completions", &[], &body(Dialect::OpenAi)).await).await;
    let chars = "Be brief.".len() + prompt("q1", Form::Text).len();
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(chars.div_ceil(4) as u64));
    assert_eq!(v["choices"][0]["message"]["content"], "Final answer: 42", "a marker no script fits: correct");
}

#[tokio::test]
async fn outcomes_match_the_ground_truth_and_the_seed() {
    let config = SimConfig { task_seed: 9, tasks: vec![TaskScript::new("*", "arith", 0.6)], ..SimConfig::default() };
    let sim = sim(config.clone()).await;
    let other_seed = upstream_sim::Sim::start(SimConfig { task_seed: 10, ..config.clone() }).await.unwrap();
    let mut right = 0;
    let mut seeds_differ = 0;
    for i in 0..300 {
        let item = format!("q{i}");
        let body = Dialect::OpenAi.body(MODEL, &prompt(&item, Form::Text), Form::Text, false);
        let got = Dialect::OpenAi.ask(&sim, MODEL, &body, false).await;
        let correct = got.text == "Final answer: 42";
        assert_eq!(correct, config.answers_correctly(MODEL, "arith", &item), "{item}");
        assert_eq!(Dialect::OpenAi.ask(&sim, MODEL, &body, false).await, got, "asked again: the same answer");
        seeds_differ += usize::from(Dialect::OpenAi.ask(&other_seed, MODEL, &body, false).await != got);
        right += usize::from(correct);
    }
    // The binomial bounds are unit-tested on 2,000 items; here only sanity.
    assert!((120..=240).contains(&right), "{right} of 300");
    assert!(seeds_differ > 50, "another seed, other outcomes: {seeds_differ}");
}

#[tokio::test]
async fn agreeing_models_are_usually_right() {
    let models = ["model-a", "model-b", "model-c"];
    let config = SimConfig { task_seed: 1, tasks: vec![TaskScript::new("*", "*", 0.5)], ..SimConfig::default() };
    let sim = sim(config).await;
    let (mut agreements, mut wrong_agreements) = (0, 0);
    for i in 0..200 {
        let mut answers = Vec::new();
        for model in models {
            let body = Dialect::OpenAi.body(model, &prompt(&format!("i{i}"), Form::Text), Form::Text, false);
            answers.push(Dialect::OpenAi.ask(&sim, model, &body, false).await.text);
        }
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            if answers[a] == answers[b] {
                agreements += 1;
                wrong_agreements += usize::from(answers[a] != "Final answer: 42");
            }
        }
    }
    // Both right on a quarter of 600 pairs; both wrong and equal about once in 2,000.
    assert!(agreements > 100, "{agreements}");
    assert!(wrong_agreements <= 2, "{wrong_agreements} wrong answers agreed");
}

fn judge_prompt(item: &str, candidate: &str) -> String {
    format!(
        "[judge] Grade the answer to: What is 17 + 25? [task:arith item:{item} answer:42]\n\
         Reply with VERDICT: PASS or VERDICT: FAIL.\nANSWER TO GRADE: {candidate}"
    )
}

#[tokio::test]
async fn judges_in_every_dialect() {
    let judge = "sim-judge";
    let config = SimConfig {
        task_seed: 4,
        // The answering script must not touch the judge's verdicts.
        tasks: vec![TaskScript::judge(judge, "arith", 0.75), TaskScript::new("*", "*", 0.0)],
        ..SimConfig::default()
    };
    let sim = sim(config.clone()).await;
    for dialect in DIALECTS {
        let mut right = 0;
        for i in 0..200 {
            let item = format!("j{i}");
            let truth = i % 3 != 0;
            let candidate = if truth { r#"{"answer":"42"}"# } else { "Final answer: 24" };
            let stream = i % 2 == 0;
            let form = if i % 5 == 0 { Form::Json } else { Form::Text };
            let body = dialect.body(judge, &judge_prompt(&item, candidate), form, stream);
            let got = dialect.ask(&sim, judge, &body, stream).await;
            assert!(got.text == "VERDICT: PASS" || got.text == "VERDICT: FAIL", "{got:?}");
            assert_eq!(got.finish, "stop");
            let judged_right = (got.text == "VERDICT: PASS") == truth;
            assert_eq!(judged_right, config.judges_correctly(judge, "arith", &item), "{dialect:?} {item}");
            right += usize::from(judged_right);
        }
        assert!((125..=175).contains(&right), "{dialect:?}: {right} of 200 at 75%");
    }
    // A judge without a script is always right.
    let body = Dialect::OpenAi.body("other", &judge_prompt("x", "Final answer: 42"), Form::Text, false);
    assert_eq!(Dialect::OpenAi.ask(&sim, "other", &body, false).await.text, "VERDICT: PASS");
}

#[tokio::test]
async fn tool_result_turn_gets_a_plain_answer() {
    let sim = sim(always(None)).await;
    let mut body = Dialect::OpenAi.body(MODEL, &prompt("q1", Form::Tool), Form::Tool, false);
    body["messages"].as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
               "function": {"name": "submit", "arguments": "{\"answer\":\"42\"}"}}]}),
        json!({"role": "tool", "tool_call_id": "c1", "content": "ok"}),
    ]);
    assert_eq!(Dialect::OpenAi.ask(&sim, MODEL, &body, false).await, text("Final answer: 42", "stop"));
}

#[tokio::test]
async fn malformed_markers_are_refused_in_every_dialect() {
    let sim = sim(SimConfig::default()).await;
    for dialect in DIALECTS {
        let body = dialect.body(MODEL, "Q [task:arith item:q1 anwser:42]", Form::Text, false);
        let response = post(&sim, &dialect.path(MODEL, false), &[], &body).await;
        assert_eq!(response.status(), 400, "{dialect:?}");
        let v = json_of(response).await;
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("unknown option 'anwser'"), "{dialect:?}: {message}");
    }
}

#[tokio::test]
async fn config_over_http() {
    let sim = sim(SimConfig::default()).await;
    let http = client();
    let url = format!("http://{}/sim/config", sim.addr());
    let json = r#"{"task_seed": 42, "tasks": [
        {"model": "sim-small", "task": "arith", "p_correct": 0.6, "wrong": "truncated"},
        {"model": "sim-judge", "p_correct": 0.95, "judge": true}]}"#;
    let response = http.put(&url).body(json).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let config = sim.config();
    assert_eq!(config.task_seed, 42);
    assert_eq!(
        config.tasks,
        [
            TaskScript::new("sim-small", "arith", 0.6).wrong(WrongStyle::Truncated),
            TaskScript::judge("sim-judge", "*", 0.95)
        ]
    );
    let got: SimConfig = serde_json::from_slice(&http.get(&url).send().await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(got, config);

    for bad in [
        r#"{"tasks": [{"model": "m", "p_correct": 0.5, "wrongstyle": "empty"}]}"#,
        r#"{"tasks": [{"model": "m", "p_correct": 1.5}]}"#,
        r#"{"tasks": [{"model": "m"}]}"#,
        r#"{"tasks": [{"p_correct": 0.5, "wrong": "garbled"}]}"#,
        r#"{"task_seeds": 1}"#,
    ] {
        let response = http.put(&url).body(bad).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(sim.config(), config, "a bad config changes nothing");
    }
}

#[test]
fn config_json_on_the_command_line() {
    use std::process::Command;
    let bin = env!("CARGO_BIN_EXE_upstream-sim");
    // A misspelt field ends the process before it listens.
    let out = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--config-json", r#"{"tasks":[{"p_correct":0.5,"judg":true}]}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid --config-json") && stderr.contains("judg"), "{stderr}");
    assert!(out.stdout.is_empty());

    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let json = r#"{"task_seed":5,"tasks":[{"model":"m","task":"t","p_correct":0,"wrong":"refusal"}]}"#;
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--config-json", json])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim_end().strip_prefix("upstream-sim listening on ").unwrap().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let result = runtime.block_on(async {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "[task:t item:1 answer:x]"}]});
        let response = client()
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        response.bytes().await
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let v: Value = serde_json::from_slice(&result.unwrap()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "I can't help with that.");
}
