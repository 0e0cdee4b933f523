//! No input makes translation panic. Property tests over request-, reply- and stream-shaped
//! JSON built from the dialects' own field names (so values get past the first checks and
//! reach the translators), in every direction: client request → canonical → each upstream
//! dialect, upstream reply → canonical → each client dialect, upstream events → deltas →
//! client events. Anything translated must still be valid JSON.

use bourse::canonical::Delta;
use bourse::dialect::openai::{self, parse_chat_request, response_usage, upstream_chat_body, NotJson, WireUsage};
use bourse::dialect::{anthropic, gemini, Decode, Encode};
use bourse::route::plan::{estimate_prompt_tokens, prompt_facts_raw};
use bourse::sse::Event;
use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "tool_calls",
    "id",
    "function",
    "name",
    "arguments",
    "tool_call_id",
    "tools",
    "tool_choice",
    "input",
    "input_schema",
    "tool_use_id",
    "is_error",
    "source",
    "media_type",
    "data",
    "url",
    "image_url",
    "system",
    "max_tokens",
    "stream",
    "response_format",
    "json_schema",
    "schema",
    "thinking",
    "budget_tokens",
    "signature",
    "stop",
    "stop_sequences",
    "output_config",
    "format",
    "metadata",
    "user_id",
    "parameters",
    "reasoning_content",
    "temperature",
    "top_k",
    "choices",
    "message",
    "delta",
    "index",
    "finish_reason",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "candidates",
    "parts",
    "functionCall",
    "args",
    "usageMetadata",
    "promptTokenCount",
    "finishReason",
    "stop_reason",
    "partial_json",
    "content_block",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "thought",
    "error",
];

const STRINGS: &[&str] = &[
    "",
    "text",
    "tool_use",
    "tool_result",
    "image",
    "image_url",
    "thinking",
    "redacted_thinking",
    "user",
    "assistant",
    "system",
    "developer",
    "tool",
    "function",
    "auto",
    "any",
    "none",
    "required",
    "json_object",
    "json_schema",
    "enabled",
    "adaptive",
    "base64",
    "url",
    "data:image/png;base64,iVBORw0KGgo=",
    "data:,x",
    "https://example.com/a.png",
    "{",
    "{\"a\":1}",
    "[]",
    "stop",
    "length",
    "tool_calls",
    "end_turn",
    "STOP",
    "SAFETY",
    "message_start",
    "content_block_delta",
    "text_delta",
    "input_json_delta",
    "call_1",
    "toolu_1",
    "\u{1F600}",
    "a/b",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..100_000).prop_map(Value::from),
        (-1.0f64..3.0).prop_map(Value::from),
        Just(json!(u64::MAX)),
        proptest::sample::select(STRINGS).prop_map(Value::from),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// A message: a plausible role, then anything.
fn arb_message() -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(&["user", "assistant", "system", "tool", "developer"][..]),
        arb_json(),
        proptest::collection::vec((proptest::sample::select(KEYS), arb_json()), 0..3),
    )
        .prop_map(|(role, content, extra)| {
            let mut m = Map::new();
            for (k, v) in extra {
                m.insert(k.to_string(), v);
            }
            m.insert("role".into(), json!(role));
            m.insert("content".into(), content);
            Value::Object(m)
        })
}

fn arb_request() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(arb_message(), 1..5),
        proptest::collection::vec((proptest::sample::select(KEYS), arb_json()), 0..6),
    )
        .prop_map(|(messages, extra)| {
            let mut m = Map::new();
            for (k, v) in extra {
                m.insert(k.to_string(), v);
            }
            m.insert("model".into(), json!("a/b"));
            m.insert("max_tokens".into(), json!(64));
            m.insert("messages".into(), Value::Array(messages));
            Value::Object(m)
        })
}

/// The top-level fields chat validation checks, with right and wrong shapes and values
/// on both sides of the ranges.
const CHECKED: &[&str] = &[
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "seed",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "user",
    "metadata",
    "reasoning_effort",
    "store",
    "service_tier",
];

fn checked_fields_request() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        leaf(),
        Just(json!(-0.0)),
        Just(json!(2.5)),
        Just(json!(129)),
        Just(json!(1.0)),
        Just(json!({"include_usage": true})),
        Just(json!({"include_usage": false})),
        Just(json!({"type": "json_schema", "json_schema": {"name": "x"}})),
        Just(json!({"type": "nope"})),
        Just(json!([{"type": "function", "function": {"name": "f"}}])),
        Just(json!([{"type": "function", "function": {"name": 3}}])),
        Just(json!(["x"])),
    ];
    (
        proptest::collection::vec(arb_message(), 0..3),
        proptest::collection::vec((proptest::sample::select(CHECKED), value), 0..5),
        proptest::option::of(leaf()),
    )
        .prop_map(|(messages, fields, model)| {
            let mut m = Map::new();
            for (k, v) in fields {
                m.insert(k.to_string(), v);
            }
            m.insert("model".into(), model.unwrap_or(json!("p/m")));
            m.insert("messages".into(), Value::Array(messages));
            Value::Object(m)
        })
}

fn text() -> impl Strategy<Value = Value> {
    proptest::sample::select(STRINGS).prop_map(Value::from)
}

fn maybe<T: std::fmt::Debug + Clone>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    proptest::option::of(s)
}

/// An OpenAI chat request that is mostly valid: real roles and part shapes, odd values.
fn openai_request() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        text().prop_map(|t| json!({"type": "text", "text": t})),
        text().prop_map(|u| json!({"type": "image_url", "image_url": {"url": u}})),
        arb_json(),
    ];
    let call = (text(), text(), text()).prop_map(
        |(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}),
    );
    let message = prop_oneof![
        (proptest::sample::select(&["system", "developer", "user"][..]), text())
            .prop_map(|(r, t)| json!({"role": r, "content": t})),
        proptest::collection::vec(part, 0..3).prop_map(|p| json!({"role": "user", "content": p})),
        (maybe(text()), proptest::collection::vec(call, 0..3), maybe(text())).prop_map(|(c, calls, reasoning)| {
            let mut m = json!({"role": "assistant", "content": c});
            if !calls.is_empty() {
                m["tool_calls"] = Value::Array(calls);
            }
            if let Some(r) = reasoning {
                m["reasoning_content"] = r;
            }
            m
        }),
        (text(), text()).prop_map(|(id, c)| json!({"role": "tool", "tool_call_id": id, "content": c})),
    ];
    let tool = (text(), maybe(arb_json()))
        .prop_map(|(n, params)| json!({"type": "function", "function": {"name": n, "parameters": params}}));
    (
        proptest::collection::vec(message, 1..6),
        maybe(proptest::collection::vec(tool, 1..3)),
        maybe(prop_oneof![text(), Just(json!({"type": "function", "function": {"name": "text"}}))]),
        maybe(prop_oneof![
            Just(json!({"type": "json_object"})),
            arb_json().prop_map(|s| json!({"type": "json_schema", "json_schema": {"name": "x", "schema": s}})),
        ]),
        maybe((proptest::sample::select(KEYS), arb_json())),
        any::<bool>(),
    )
        .prop_map(|(messages, tools, choice, format, extra, stream)| {
            let mut m = json!({"model": "a/b", "messages": messages, "stream": stream});
            if let Some(t) = tools {
                m["tools"] = Value::Array(t);
            }
            if let Some(c) = choice {
                m["tool_choice"] = c;
            }
            if let Some(f) = format {
                m["response_format"] = f;
            }
            if let Some((k, v)) = extra {
                m[k] = v;
            }
            m
        })
}

/// An Anthropic Messages request that is mostly valid.
fn anthropic_request() -> impl Strategy<Value = Value> {
    let user_block = prop_oneof![
        text().prop_map(|t| json!({"type": "text", "text": t})),
        text()
            .prop_map(|d| json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": d}})),
        text().prop_map(|u| json!({"type": "image", "source": {"type": "url", "url": u}})),
        (
            text(),
            prop_oneof![
                text(),
                proptest::collection::vec(text().prop_map(|t| json!({"type": "text", "text": t})), 0..2)
                    .prop_map(Value::Array)
            ],
            any::<bool>()
        )
            .prop_map(|(id, c, e)| json!({"type": "tool_result", "tool_use_id": id, "content": c, "is_error": e})),
        arb_json(),
    ];
    let assistant_block = prop_oneof![
        text().prop_map(|t| json!({"type": "text", "text": t})),
        (text(), text(), arb_json())
            .prop_map(|(id, n, i)| json!({"type": "tool_use", "id": id, "name": n, "input": i})),
        (text(), maybe(text())).prop_map(|(t, sig)| json!({"type": "thinking", "thinking": t, "signature": sig})),
        text().prop_map(|d| json!({"type": "redacted_thinking", "data": d})),
    ];
    let message = prop_oneof![
        text().prop_map(|t| json!({"role": "user", "content": t})),
        proptest::collection::vec(user_block, 0..3).prop_map(|b| json!({"role": "user", "content": b})),
        proptest::collection::vec(assistant_block, 0..3).prop_map(|b| json!({"role": "assistant", "content": b})),
    ];
    let tool = (text(), arb_json()).prop_map(|(n, s)| json!({"name": n, "input_schema": s}));
    (
        proptest::collection::vec(message, 1..6),
        maybe(prop_oneof![
            text(),
            Just(json!([{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}]))
        ]),
        maybe(proptest::collection::vec(tool, 1..3)),
        maybe(prop_oneof![
            Just(json!({"type": "auto"})),
            Just(json!({"type": "any"})),
            Just(json!({"type": "none"})),
            text().prop_map(|n| json!({"type": "tool", "name": n})),
        ]),
        maybe(prop_oneof![
            (1u64..50_000).prop_map(|b| json!({"type": "enabled", "budget_tokens": b})),
            Just(json!({"type": "adaptive"})),
            Just(json!({"type": "disabled"})),
        ]),
        maybe(arb_json().prop_map(|s| json!({"format": {"type": "json_schema", "schema": s}}))),
        maybe((proptest::sample::select(KEYS), arb_json())),
        (1u64..100_000, any::<bool>()),
    )
        .prop_map(|(messages, system, tools, choice, thinking, output, extra, (max_tokens, stream))| {
            let mut m = json!({"model": "a/b", "max_tokens": max_tokens, "messages": messages, "stream": stream});
            for (k, v) in
                [("system", system), ("tool_choice", choice), ("thinking", thinking), ("output_config", output)]
            {
                if let Some(v) = v {
                    m[k] = v;
                }
            }
            if let Some(t) = tools {
                m["tools"] = Value::Array(t);
            }
            if let Some((k, v)) = extra {
                if k != "max_tokens" && k != "messages" && k != "model" {
                    m[k] = v;
                }
            }
            m
        })
}

fn assert_json(bytes: &[u8], what: &str) {
    assert!(
        serde_json::from_slice::<Value>(bytes).is_ok(),
        "{what} rendered invalid JSON: {}",
        String::from_utf8_lossy(bytes)
    );
}

fn render_everywhere(conv: &bourse::canonical::Conversation) {
    assert_json(&openai::render_request(conv, "m", false), "openai request");
    assert_json(&openai::render_request(conv, "m", true), "openai stream request");
    assert_json(&anthropic::render_request(conv, "m", true), "anthropic request");
    assert_json(&gemini::render_request(conv), "gemini request");
    let _ = anthropic::count_tokens(conv, bourse::meter::estimate::tokens);
}

fn encode_everywhere(deltas: &[Delta]) {
    let mut out = BytesMut::new();
    let mut encoders: Vec<Box<dyn Encode>> =
        vec![Box::new(anthropic::Encoder::new()), Box::new(openai::Encoder::new(true))];
    for e in &mut encoders {
        for d in deltas {
            e.delta(d, &mut out);
        }
        e.finish(&mut out);
    }
    // Every event the encoders wrote carries JSON (or OpenAI's [DONE]).
    for item in bourse::sse::parse_all(&out) {
        if let bourse::sse::Item::Event(ev) = item {
            assert!(ev.data == "[DONE]" || serde_json::from_str::<Value>(&ev.data).is_ok(), "bad event {}", ev.data);
        }
    }
}

/// Upstream stream events in the shapes the decoders expect, with odd values and order.
fn stream_event() -> impl Strategy<Value = (Option<&'static str>, Value)> {
    let openai_chunk = (
        maybe(text()),
        maybe((0u32..3, maybe(text()), maybe(text()), maybe(text()))),
        maybe(text()),
        any::<bool>(),
    )
        .prop_map(|(content, call, finish, usage)| {
            let mut delta = json!({});
            if let Some(c) = content {
                delta["content"] = c;
            }
            if let Some((i, id, name, args)) = call {
                delta["tool_calls"] = json!([{"index": i, "id": id, "function": {"name": name, "arguments": args}}]);
            }
            let mut chunk =
                json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            if usage {
                chunk["usage"] =
                    json!({"prompt_tokens": 5, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 9}});
            }
            (None, chunk)
        });
    let anthropic_event = prop_oneof![
        Just(("message_start", json!({"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}}))),
        (0u32..3, proptest::sample::select(&["text", "tool_use", "thinking", "redacted_thinking"][..]), text()).prop_map(|(i, t, v)| {
            ("content_block_start", json!({"type": "content_block_start", "index": i, "content_block": {"type": t, "id": v, "name": v, "text": "", "input": {}, "data": v}}))
        }),
        (0u32..3, proptest::sample::select(&["text_delta", "input_json_delta", "thinking_delta", "signature_delta"][..]), text()).prop_map(|(i, t, v)| {
            ("content_block_delta", json!({"type": "content_block_delta", "index": i, "delta": {"type": t, "text": v, "partial_json": v, "thinking": v, "signature": v}}))
        }),
        (0u32..3).prop_map(|i| ("content_block_stop", json!({"type": "content_block_stop", "index": i}))),
        text().prop_map(|r| ("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": r}, "usage": {"output_tokens": 7}}))),
        Just(("message_stop", json!({"type": "message_stop"}))),
    ]
    .prop_map(|(n, v)| (Some(n), v));
    let gemini_chunk = (maybe(text()), maybe((text(), arb_json())), maybe(text()), any::<bool>()).prop_map(|(t, call, finish, thought)| {
        let mut parts = Vec::new();
        if let Some(t) = t {
            parts.push(json!({"text": t, "thought": thought}));
        }
        if let Some((name, args)) = call {
            parts.push(json!({"functionCall": {"name": name, "args": args}}));
        }
        (None, json!({"responseId": "r", "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish}],
            "usageMetadata": {"promptTokenCount": 4, "cachedContentTokenCount": 9, "candidatesTokenCount": 2}}))
    });
    prop_oneof![openai_chunk, anthropic_event, gemini_chunk]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn openai_requests_translate_without_panicking(req in prop_oneof![openai_request(), arb_request()]) {
        let body = serde_json::to_vec(&req).unwrap();
        if let Ok(parsed) = parse_chat_request(&body.clone().into()) {
            if let Ok(conv) = openai::conversation(parsed.body()) {
                render_everywhere(&conv);
            }
        }
    }

    /// The planner's prompt facts read from a request's bytes equal those read from its parsed
    /// map, whenever the byte reader answers (escaped and repeated names are left to the map:
    /// see `prompt_facts_raw`'s unit test).
    #[test]
    fn prompt_facts_from_bytes_agree_with_the_map(
        req in prop_oneof![openai_request(), arb_request(), checked_fields_request()],
    ) {
        let body = serde_json::to_vec(&req).unwrap();
        let facts = prompt_facts_raw(&body);
        prop_assert!(facts.is_some() || !req.is_object(), "declined a plain body: {}", String::from_utf8_lossy(&body));
        if let Some(facts) = facts {
            let map: Map<String, Value> = serde_json::from_slice(&body).unwrap();
            let reasoning = map.get("reasoning_effort").is_some_and(|v| !v.is_null());
            prop_assert_eq!(facts, (estimate_prompt_tokens(&map), reasoning));
        }
    }

    /// The fast path (a borrowed look at the bytes, then splicing the model in) accepts only
    /// what the map walk accepts, reads the same values, and sends the same JSON upstream.
    /// The map walk is forced by a leading duplicate `model` key, which the look refuses
    /// and the map walk resolves to the last one.
    #[test]
    fn fast_path_agrees_with_the_map_walk(
        req in prop_oneof![openai_request(), arb_request(), checked_fields_request()],
        model in proptest::sample::select(&["up/m", "m\"q", "ü"][..]),
    ) {
        let body = serde_json::to_vec(&req).unwrap();
        let mut forced = br#"{"model":0,"#.to_vec();
        forced.extend_from_slice(&body[1..]);
        let fast = parse_chat_request(&body.clone().into());
        let slow = parse_chat_request(&forced.into());
        match (fast, slow) {
            (Ok(mut f), Ok(mut s)) => {
                prop_assert!(f.raw_body().is_some() || req.get("model").is_some());
                prop_assert_eq!(
                    (&f.model, f.stream, f.include_usage, f.max_output_tokens, f.needs),
                    (&s.model, s.stream, s.include_usage, s.max_output_tokens, s.needs)
                );
                prop_assert_eq!(f.body(), s.body());
                let (fb, sb) = (upstream_chat_body(&mut f, model), upstream_chat_body(&mut s, model));
                prop_assert_eq!(serde_json::from_slice::<Value>(&fb).unwrap(), serde_json::from_slice::<Value>(&sb).unwrap());
            }
            (Ok(f), Err(e)) => prop_assert!(false, "fast path accepted what the map walk refuses ({}): {:?}", e.message, f.model),
            _ => {}
        }
    }

    #[test]
    fn anthropic_requests_translate_without_panicking(req in prop_oneof![anthropic_request(), arb_request()]) {
        let body = serde_json::to_vec(&req).unwrap();
        if let Ok(mut parsed) = anthropic::parse_request(&body) {
            if let Ok(conv) = anthropic::conversation(parsed.body()) {
                render_everywhere(&conv);
            }
            assert_json(&anthropic::passthrough_body(&mut parsed, "m"), "anthropic pass-through");
        }
    }

    #[test]
    fn replies_translate_without_panicking(reply in arb_json()) {
        let body = serde_json::to_vec(&reply).unwrap();
        let _ = anthropic::response_usage(&body);
        let parsed = [
            openai::parse_reply(&body),
            anthropic::parse_reply(&body, false),
            anthropic::parse_reply(&body, true),
            gemini::parse_reply(&body),
        ];
        for r in parsed.into_iter().flatten() {
            assert_json(&openai::render_reply(&r), "openai reply");
            assert_json(&anthropic::render_reply(&r), "anthropic reply");
        }
    }

    #[test]
    fn streams_translate_without_panicking(
        events in proptest::collection::vec(prop_oneof![
            stream_event(),
            (proptest::option::of(proptest::sample::select(STRINGS)), arb_json()),
        ], 0..16)
    ) {
        let mut decoders: Vec<Box<dyn Decode>> = vec![
            Box::new(openai::Decoder::new()),
            Box::new(anthropic::Decoder::new(false)),
            Box::new(anthropic::Decoder::new(true)),
            Box::new(gemini::Decoder::new()),
        ];
        for d in &mut decoders {
            let mut deltas = Vec::new();
            for (name, data) in &events {
                let ev = Event { event: name.map(str::to_string), data: data.to_string(), id: None };
                if d.event(&ev, &mut deltas).is_err() {
                    break;
                }
            }
            d.finish(&mut deltas);
            encode_everywhere(&deltas);
        }
    }
}

/// The generators are only worth something if their requests get past validation and into
/// the translators: check that a fair share (a quarter) of them do, in both client dialects.
#[test]
fn generated_requests_reach_the_translators() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut openai, mut anthropic_ok, n) = (0, 0, 500);
    for _ in 0..n {
        let body = serde_json::to_vec(&openai_request().new_tree(&mut runner).unwrap().current()).unwrap();
        if parse_chat_request(&body.clone().into()).is_ok_and(|r| openai::conversation(r.body()).is_ok()) {
            openai += 1;
        }
        let body = serde_json::to_vec(&anthropic_request().new_tree(&mut runner).unwrap().current()).unwrap();
        if anthropic::parse_request(&body).is_ok_and(|r| anthropic::conversation(r.body()).is_ok()) {
            anthropic_ok += 1;
        }
    }
    eprintln!("translated: openai {openai}/{n}, anthropic {anthropic_ok}/{n}");
    assert!(openai * 4 >= n, "only {openai}/{n} OpenAI requests reached translation");
    assert!(anthropic_ok * 4 >= n, "only {anthropic_ok}/{n} Anthropic requests reached translation");
}

/// The same for the fast-path property: a fair share of its requests must pass validation
/// on the fast path (so the comparison is not only between two refusals), and a fair share
/// must be refused (so the refusals are compared too).
#[test]
fn generated_requests_exercise_the_fast_path() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut fast, mut refused, n) = (0, 0, 600);
    let strategy = prop_oneof![openai_request(), arb_request(), checked_fields_request()];
    for _ in 0..n {
        let body = serde_json::to_vec(&strategy.new_tree(&mut runner).unwrap().current()).unwrap();
        match parse_chat_request(&body.into()) {
            Ok(r) if r.raw_body().is_some() => fast += 1,
            Ok(_) => {}
            Err(_) => refused += 1,
        }
    }
    eprintln!("fast path: {fast}/{n} accepted, {refused}/{n} refused");
    assert!(fast * 4 >= n, "only {fast}/{n} requests took the fast path");
    assert!(refused * 4 >= n, "only {refused}/{n} requests were refused");
}

/// What `response_usage` answered before the scanner: serde_json reads the whole answer
/// with a typed `usage`, and judges any answer that fails that as JSON or not.
fn usage_by_serde(body: &[u8]) -> Result<Option<bourse::canonical::Usage>, NotJson> {
    #[derive(serde::Deserialize)]
    struct UsageOnly {
        #[serde(default)]
        usage: Option<WireUsage>,
    }
    match serde_json::from_slice::<UsageOnly>(body) {
        Ok(u) => Ok(u.usage.map(|u| u.normalize())),
        Err(_) => serde_json::from_slice::<serde::de::IgnoredAny>(body).map(|_| None).map_err(|_| NotJson),
    }
}

/// Upstream answers around a `usage` object of plain and odd members (negative, fractional,
/// quoted, too large, null, duplicated, escaped names, details of every shape), sometimes two
/// `usage` members or none, sometimes with one byte changed, inserted or removed.
fn answer_text() -> impl Strategy<Value = Vec<u8>> {
    const NAMES: &[&str] = &[
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
        "prompt_cache_hit_tokens",
        "prompt_cache_miss_tokens",
        "cached_tokens",
        "prompt_\\u0074okens",
    ];
    const VALUES: &[&str] = &[
        "0",
        "12",
        "7 ",
        "-1",
        "1.5",
        "1e2",
        "null",
        "\"3\"",
        "18446744073709551615",
        "18446744073709551616",
        "{\"cached_tokens\":2}",
        "{\"reasoning_tokens\":null,\"audio_tokens\":0}",
        "{\"cached_tokens\":1,\"cached_tokens\":2}",
        "{\"reasoning_\\u0074okens\":4}",
        "{\"reasoning_tokens\":-4}",
        "{}",
        "[]",
        "[1,{\"a\":\"x\\\"y\"}]",
    ];
    let member = (proptest::sample::select(NAMES), proptest::sample::select(VALUES));
    let usage = proptest::collection::vec(member, 0..7).prop_map(|ms| {
        let inner: Vec<String> = ms.iter().map(|(n, v)| format!("\"{n}\":{v}")).collect();
        format!("{{{}}}", inner.join(","))
    });
    let usage_value = prop_oneof![4 => usage, 1 => Just("null".to_string()), 1 => Just("3".to_string())];
    let shape = 0..6u8;
    let edit = proptest::option::of((
        any::<proptest::sample::Index>(),
        0..3u8,
        proptest::sample::select(&b"{}[],:\"\\ 0a-.en\x01"[..]),
    ));
    (usage_value, proptest::option::of(Just("{\"prompt_tokens\":1}")), shape, edit).prop_map(|(usage, second, shape, edit)| {
        let choices = r#""choices":[{"index":0,"message":{"role":"assistant","content":"h\u00e9llo \"there\""},"finish_reason":"stop"}]"#;
        let mut text = match shape {
            0 => format!(r#"{{"id":"c",{choices},"usage":{usage}}}"#),
            1 => format!(r#" {{ "usage" : {usage} , "id" : "c" }} "#),
            2 => format!(r#"{{"id":"c",{choices}}}"#),
            3 => format!(r#"[{{"usage":{usage}}}]"#),
            4 => format!(r#"{{"us\u0061ge":{usage},"id":"c"}}"#),
            _ => format!(r#"{{"usage":{usage},"usage":{}}}"#, second.unwrap_or("null")),
        }
        .into_bytes();
        if let Some((at, kind, byte)) = edit {
            let i = at.index(text.len());
            match kind {
                0 => text[i] = byte,
                1 => text.insert(i, byte),
                _ => {
                    text.remove(i);
                }
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    /// The scanner reads usage from an upstream answer exactly as serde_json did: the same
    /// counts, the same "no usage", and the same verdict on what is not JSON (which becomes a
    /// 502). It only ever accepts what serde_json accepts.
    #[test]
    fn response_usage_agrees_with_serde_json(body in answer_text()) {
        prop_assert_eq!(response_usage(&body), usage_by_serde(&body), "{}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn the_usage_strategy_reaches_every_verdict() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut some, mut none, mut not_json) = (0, 0, 0);
    for _ in 0..2000 {
        let body = answer_text().new_tree(&mut runner).unwrap().current();
        match usage_by_serde(&body) {
            Ok(Some(_)) => some += 1,
            Ok(None) => none += 1,
            Err(NotJson) => not_json += 1,
        }
    }
    assert!(some > 300 && none > 300 && not_json > 200, "some {some}, none {none}, not JSON {not_json}");
}
