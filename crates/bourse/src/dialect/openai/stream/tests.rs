//! Tests of [`Decoder`] and [`Encoder`].

use super::*;
use crate::error::ErrorKind;

// ---------------------------------------------------------------- Decoder

fn decode_body(body: &str) -> Result<Vec<Delta>, Error> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for item in sse::parse_all(body.as_bytes()) {
        if let sse::Item::Event(ev) = item {
            d.event(&ev, &mut out)?;
        }
    }
    d.finish(&mut out);
    Ok(out)
}

fn sse_of(chunks: &[Value]) -> String {
    let mut s: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    s.push_str("data: [DONE]\n\n");
    s
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-chat",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
}

fn start() -> Delta {
    Delta::Start { id: "chatcmpl-1".into(), model: "deepseek-chat".into(), usage: None }
}

/// Whole: a finish reason, or `[DONE]` alone. Cut short: neither.
#[test]
fn decoder_knows_a_whole_answer_from_a_cut_one() {
    let fed = |chunks: &[Value], done: bool| {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.event(&sse::Event { data: c.to_string(), ..sse::Event::default() }, &mut out).unwrap();
        }
        if done {
            d.event(&sse::Event { data: "[DONE]".into(), ..sse::Event::default() }, &mut out).unwrap();
        }
        d.complete()
    };
    let text = chunk(json!({"content": "Hel"}), None);
    assert!(!fed(std::slice::from_ref(&text), false));
    assert!(fed(&[text.clone(), chunk(json!({}), Some("stop"))], false));
    assert!(fed(&[text], true));
}

#[test]
fn decoder_text_and_reasoning() {
    let body = format!(
        ": keep-alive\n\n{}",
        sse_of(&[
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(json!({"reasoning_content": "Think"}), None),
            chunk(json!({"reasoning_content": "ing."}), None),
            chunk(json!({"content": "Hel"}), None),
            chunk(json!({"content": "lo"}), None),
            chunk(json!({}), Some("length")),
        ])
    );
    assert_eq!(
        decode_body(&body).unwrap(),
        vec![
            start(),
            Delta::Thinking("Think".into()),
            Delta::Thinking("ing.".into()),
            Delta::Text("Hel".into()),
            Delta::Text("lo".into()),
            Delta::Stop(StopReason::MaxTokens),
        ]
    );
}

#[test]
fn decoder_tool_calls_split_across_chunks() {
    let body = sse_of(&[
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            None,
        ),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}), None),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}), None),
        chunk(
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}),
            None,
        ),
        // Some servers repeat the id and name on every fragment: no second start.
        chunk(
            json!({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "get_time", "arguments": ""}}]}),
            None,
        ),
        chunk(json!({}), Some("tool_calls")),
    ]);
    let deltas = decode_body(&body).unwrap();
    assert_eq!(
        deltas,
        vec![
            start(),
            Delta::ToolCallStart { index: 0, id: "call_a".into(), name: "get_weather".into() },
            Delta::ToolCallArgs { index: 0, json: "{\"ci".into() },
            Delta::ToolCallArgs { index: 0, json: "ty\":\"Paris\"}".into() },
            Delta::ToolCallStart { index: 1, id: "call_b".into(), name: "get_time".into() },
            Delta::ToolCallArgs { index: 1, json: "{}".into() },
            Delta::Stop(StopReason::ToolUse),
        ]
    );
    // `stop` with tool calls (some servers) still means tool use; missing indexes follow ids.
    let body = sse_of(&[
        chunk(json!({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]}), None),
        chunk(json!({"tool_calls": [{"id": "c2", "function": {"name": "g"}}]}), None),
        chunk(json!({"tool_calls": [{"function": {"arguments": "{\"x\":1}"}}]}), None),
        chunk(json!({}), Some("stop")),
    ]);
    assert_eq!(
        decode_body(&body).unwrap()[1..],
        [
            Delta::ToolCallStart { index: 0, id: "c1".into(), name: "f".into() },
            Delta::ToolCallArgs { index: 0, json: "{}".into() },
            Delta::ToolCallStart { index: 1, id: "c2".into(), name: "g".into() },
            Delta::ToolCallArgs { index: 1, json: "{\"x\":1}".into() },
            Delta::Stop(StopReason::ToolUse),
        ]
    );
}

#[test]
fn decoder_usage_chunk_with_empty_null_or_absent_choices() {
    let usage = json!({"prompt_tokens": 100, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 40},
        "completion_tokens_details": {"reasoning_tokens": 30}});
    let expected =
        Usage { input_uncached: 60, input_cache_read: 40, input_cache_write: 0, output: 20, output_reasoning: 30 };
    for choices in [Some(json!([])), Some(Value::Null), None] {
        let mut last = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-chat", "usage": usage});
        if let Some(c) = &choices {
            last["choices"] = c.clone();
        }
        let mut stop = chunk(json!({}), Some("stop"));
        stop["usage"] = Value::Null;
        let body = sse_of(&[chunk(json!({"content": "x"}), None), stop, last]);
        assert_eq!(
            decode_body(&body).unwrap(),
            vec![start(), Delta::Text("x".into()), Delta::Stop(StopReason::EndTurn), Delta::Usage(expected)],
            "choices = {choices:?}"
        );
    }
    // Usage in the finishing chunk itself, and Moonshot's inside the choice.
    let mut fin = chunk(json!({}), Some("stop"));
    fin["usage"] = json!({"prompt_tokens": 3, "completion_tokens": 2});
    fin["choices"][0]["usage"] = json!({"prompt_tokens": 3, "completion_tokens": 2});
    let deltas = decode_body(&sse_of(&[fin])).unwrap();
    let small = Usage { input_uncached: 3, output: 2, ..Usage::default() };
    assert_eq!(deltas[1..], [Delta::Stop(StopReason::EndTurn), Delta::Usage(small), Delta::Usage(small)]);
}

#[test]
fn decoder_errors_and_endings() {
    let err = decode_body(&format!(
        "{}data: {}\n\n",
        sse_of(&[chunk(json!({"content": "x"}), None)]).replace("data: [DONE]\n\n", ""),
        json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": 429}})
    ))
    .unwrap_err();
    let ErrorKind::UpstreamStatus(s) = &err.kind else { panic!("{err:?}") };
    assert_eq!((s.status, s.retryable, s.vendor_type.as_deref()), (429, true, Some("rate_limit_error")));
    assert_eq!(err.message, "Rate limit reached");
    let err = decode_body("data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n").unwrap_err();
    let ErrorKind::UpstreamStatus(s) = &err.kind else { panic!("{err:?}") };
    assert_eq!((s.status, s.retryable), (500, true));
    let err = decode_body("data: {\"id\": \"chatcmpl-sim-broken\", \"choices\": [{\"delta\": \n\n").unwrap_err();
    assert_eq!(err.kind, ErrorKind::UpstreamProtocol);
    // [DONE] without a finish reason: the natural stop. Cut off before [DONE]: none.
    let ended = decode_body(&sse_of(&[chunk(json!({"content": "x"}), None)])).unwrap();
    assert_eq!(ended.last(), Some(&Delta::Stop(StopReason::EndTurn)));
    let cut = decode_body(&format!("data: {}\n\n", chunk(json!({"content": "x"}), None))).unwrap();
    assert_eq!(cut, vec![start(), Delta::Text("x".into())]);
    // Only choice 0 is read.
    let mut other = chunk(json!({"content": "ignored"}), None);
    other["choices"][0]["index"] = json!(1);
    assert_eq!(decode_body(&sse_of(&[other])).unwrap(), vec![start(), Delta::Stop(StopReason::EndTurn)]);
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/openai-chat-streams");

#[test]
#[cfg_attr(not(shared_data), ignore = "needs ../shared beside the repository (recorded provider streams)")]
fn decoder_on_recorded_openai_streams() {
    let dir = std::fs::read_dir(FIXTURES).unwrap_or_else(|e| panic!("{FIXTURES}: {e}"));
    let mut files = 0;
    let mut with_calls = 0;
    for entry in dir.flatten() {
        let body = std::fs::read_to_string(entry.path()).unwrap();
        let deltas = decode_body(&body).unwrap_or_else(|e| panic!("{}: {e:?}", entry.path().display()));
        files += 1;
        assert!(matches!(deltas.first(), Some(Delta::Start { id, .. }) if id.starts_with("chatcmpl-")));
        assert_eq!(deltas.iter().filter(|d| matches!(d, Delta::Stop(_))).count(), 1, "{}", entry.path().display());
        assert!(matches!(deltas.last(), Some(Delta::Usage(u)) if u.output_total() > 0));
        // Every recording answers something: text (refusals included) or tool calls.
        assert!(
            deltas
                .iter()
                .any(|d| matches!(d, Delta::Text(t) if !t.is_empty()) || matches!(d, Delta::ToolCallStart { .. })),
            "{}",
            entry.path().display()
        );
        let mut args: Vec<String> = Vec::new();
        for d in &deltas {
            match d {
                Delta::ToolCallStart { index, id, name } => {
                    assert_eq!(*index as usize, args.len());
                    assert!(id.starts_with("call_") && !name.is_empty());
                    args.push(String::new());
                }
                Delta::ToolCallArgs { index, json } => args[*index as usize].push_str(json),
                _ => {}
            }
        }
        if !args.is_empty() {
            with_calls += 1;
            assert!(deltas.contains(&Delta::Stop(StopReason::ToolUse)));
        }
        for a in &args {
            let v: Value = serde_json::from_str(a).unwrap_or_else(|e| panic!("{a}: {e}"));
            assert!(v.is_object());
        }
    }
    assert!(files > 0 && with_calls > 0, "{files} files, {with_calls} with tool calls");
}

// ---------------------------------------------------------------- Encoder

fn encode(enc: &mut Encoder, deltas: &[Delta]) -> BytesMut {
    let mut out = BytesMut::new();
    for d in deltas {
        enc.delta(d, &mut out);
    }
    enc.finish(&mut out);
    out
}

fn data_of(body: &[u8]) -> Vec<String> {
    sse::parse_all(body)
        .into_iter()
        .filter_map(|i| match i {
            sse::Item::Event(e) => Some(e.data),
            sse::Item::Comment(_) => None,
        })
        .collect()
}

fn sample_deltas() -> Vec<Delta> {
    vec![
        Delta::Start { id: "msg_1".into(), model: "claude-sonnet-4-5".into(), usage: None },
        Delta::Thinking("Let me".into()),
        Delta::ThinkingSignature("sig".into()),
        Delta::Thinking(" think.".into()),
        Delta::RedactedThinking("opaque".into()),
        Delta::Text("Checking".into()),
        Delta::Text(" the weather.".into()),
        Delta::ToolCallStart { index: 0, id: "toolu_a".into(), name: "get_weather".into() },
        Delta::ToolCallArgs { index: 0, json: "{\"city\":".into() },
        Delta::ToolCallArgs { index: 0, json: "\"Paris\"}".into() },
        Delta::ToolCallStart { index: 1, id: "toolu_b".into(), name: "get_time".into() },
        Delta::ToolCallArgs { index: 1, json: "{}".into() },
        Delta::Stop(StopReason::ToolUse),
        Delta::Usage(Usage { input_uncached: 5, output: 1, ..Usage::default() }),
        Delta::Usage(Usage {
            input_uncached: 50,
            input_cache_read: 7,
            output: 30,
            output_reasoning: 4,
            ..Usage::default()
        }),
    ]
}

#[test]
fn encoder_chunks_decode_back_to_the_same_deltas() {
    let deltas = sample_deltas();
    let body = encode(&mut Encoder::new(true), &deltas);
    let data = data_of(&body);
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    assert_eq!(first["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(first["usage"], Value::Null);
    assert!(first.get("usage").is_some(), "with include_usage, chunks carry usage: null");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let usage_chunk: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 57);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 34);
    assert_eq!(usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"], 7);
    assert_eq!(usage_chunk["usage"]["completion_tokens_details"]["reasoning_tokens"], 4);
    let finish: Value = serde_json::from_str(&data[data.len() - 3]).unwrap();
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    let tool_head: Value = serde_json::from_str(data.iter().find(|d| d.contains("toolu_a")).unwrap()).unwrap();
    assert_eq!(
        tool_head["choices"][0]["delta"],
        json!({"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})
    );
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!((v["id"].as_str(), v["model"].as_str()), (Some("msg_1"), Some("claude-sonnet-4-5")));
        assert_eq!(v["created"], first["created"]);
    }

    let decoded = decode_body(std::str::from_utf8(&body).unwrap()).unwrap();
    let expected: Vec<Delta> = deltas
        .iter()
        .filter(|d| !matches!(d, Delta::ThinkingSignature(_) | Delta::RedactedThinking(_)))
        // Only the last usage is sent.
        .filter(|d| !matches!(d, Delta::Usage(u) if u.input_uncached == 5))
        .cloned()
        .collect();
    assert_eq!(decoded, expected);
}

#[test]
fn encoder_without_include_usage_and_without_start() {
    let body = encode(
        &mut Encoder::new(false).with_model("gemini-2.5-pro"),
        &[
            Delta::Text("hi".into()),
            Delta::Stop(StopReason::StopSequence(Some("END".into()))),
            Delta::Usage(Usage { input_uncached: 3, output: 1, ..Usage::default() }),
        ],
    );
    let data = data_of(&body);
    assert_eq!(data.len(), 4, "role, text, finish, [DONE]: {data:?}");
    assert!(data.iter().all(|d| !d.contains("\"usage\"")), "no usage anywhere: {data:?}");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert!(first["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(first["model"], "gemini-2.5-pro");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let finish: Value = serde_json::from_str(&data[2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(data[3], "[DONE]");
}

#[test]
fn encoder_error_event_ends_the_stream() {
    let mut enc = Encoder::new(true);
    let mut out = BytesMut::new();
    enc.delta(&Delta::Start { id: "msg_1".into(), model: "m".into(), usage: None }, &mut out);
    enc.delta(&Delta::Text("par".into()), &mut out);
    enc.error(&Error::new(ErrorKind::UpstreamTimeout, "the upstream stopped sending"), &mut out);
    enc.finish(&mut out);
    enc.delta(&Delta::Text("late".into()), &mut out);
    let data = data_of(&out);
    assert_eq!(data.len(), 3, "{data:?}");
    let err: Value = serde_json::from_str(&data[2]).unwrap();
    assert_eq!(err["error"]["message"], "the upstream stopped sending");
    assert_eq!(err["error"]["code"], "upstream_timeout");
    assert!(!data.iter().any(|d| d == "[DONE]"));
    // What the Decoder makes of it: an error.
    assert!(decode_body(std::str::from_utf8(&out).unwrap()).is_err());
}
