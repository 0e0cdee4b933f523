use super::*;
use crate::sse::{parse_all, write_item, Item};
use serde_json::json;

/// An event as Anthropic writes it: `event: NAME` and one `data:` line.
fn ev(out: &mut BytesMut, data: Value) {
    let name = data["type"].as_str().unwrap().to_string();
    sse::write_event(Some(&name), &data.to_string(), out);
}

fn start_msg(id: &str, usage: Value) -> Value {
    json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": usage}})
}

fn block_start(index: u32, block: Value) -> Value {
    json!({"type": "content_block_start", "index": index, "content_block": block})
}

fn block_delta(index: u32, delta: Value) -> Value {
    json!({"type": "content_block_delta", "index": index, "delta": delta})
}

fn block_stop(index: u32) -> Value {
    json!({"type": "content_block_stop", "index": index})
}

fn full_usage(output: u64) -> Value {
    json!({"input_tokens": 25, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 100, "output_tokens": output})
}

/// Thinking with a signature, redacted thinking, text, and two tool calls — authored in
/// exactly the shape the encoder writes, so re-encoding must reproduce it.
fn authored_stream() -> BytesMut {
    let mut s = BytesMut::new();
    ev(&mut s, start_msg("msg_01A", full_usage(1)));
    ev(&mut s, json!({"type": "ping"}));
    ev(&mut s, block_start(0, json!({"type": "thinking", "thinking": "", "signature": ""})));
    ev(&mut s, block_delta(0, json!({"type": "thinking_delta", "thinking": "Let me think"})));
    ev(&mut s, block_delta(0, json!({"type": "thinking_delta", "thinking": " about Paris."})));
    ev(&mut s, block_delta(0, json!({"type": "signature_delta", "signature": "EqQBCkYIBRgC"})));
    ev(&mut s, block_stop(0));
    ev(&mut s, block_start(1, json!({"type": "redacted_thinking", "data": "RDATA"})));
    ev(&mut s, block_stop(1));
    ev(&mut s, block_start(2, json!({"type": "text", "text": ""})));
    ev(&mut s, block_delta(2, json!({"type": "text_delta", "text": "I'll look "})));
    ev(&mut s, block_delta(2, json!({"type": "text_delta", "text": "that up."})));
    ev(&mut s, block_stop(2));
    ev(&mut s, block_start(3, json!({"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}})));
    ev(&mut s, block_delta(3, json!({"type": "input_json_delta", "partial_json": ""})));
    ev(&mut s, block_delta(3, json!({"type": "input_json_delta", "partial_json": "{\"city\": "})));
    ev(&mut s, block_delta(3, json!({"type": "input_json_delta", "partial_json": "\"Paris\"}"})));
    ev(&mut s, block_stop(3));
    ev(&mut s, block_start(4, json!({"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}})));
    ev(&mut s, block_delta(4, json!({"type": "input_json_delta", "partial_json": "{}"})));
    ev(&mut s, block_stop(4));
    ev(
        &mut s,
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": full_usage(87)}),
    );
    ev(&mut s, json!({"type": "message_stop"}));
    s
}

fn usage(output: u64) -> Usage {
    Usage { input_uncached: 25, input_cache_read: 100, input_cache_write: 10, output, output_reasoning: 0 }
}

fn decode(body: &[u8], json_mode: bool) -> Result<Vec<Delta>, Error> {
    let mut d = Decoder::new(json_mode);
    let mut out = Vec::new();
    for item in parse_all(body) {
        if let Item::Event(e) = item {
            d.event(&e, &mut out)?;
        }
    }
    d.finish(&mut out);
    Ok(out)
}

fn encode(deltas: &[Delta]) -> BytesMut {
    let mut e = Encoder::new();
    let mut out = BytesMut::new();
    for d in deltas {
        e.delta(d, &mut out);
    }
    e.finish(&mut out);
    out
}

/// `(event name, data)` of every event.
fn events(body: &[u8]) -> Vec<(String, Value)> {
    parse_all(body)
        .into_iter()
        .map(|i| match i {
            Item::Event(e) => (e.event.unwrap_or_default(), serde_json::from_str(&e.data).unwrap()),
            Item::Comment(c) => panic!("unexpected comment {c}"),
        })
        .collect()
}

/// The stream re-serializes byte for byte (it is in canonical SSE form).
fn assert_canonical_sse(body: &[u8]) {
    let mut again = BytesMut::new();
    for item in parse_all(body) {
        write_item(&item, &mut again);
    }
    assert_eq!(&again[..], body);
}

/// Checks a stream event by event the way the SDKs consume it: message_start first,
/// blocks opened in index order, every delta inside the open block and of its kind,
/// one message_delta after the last block, message_stop last. Returns the events.
fn assert_valid_stream(body: &[u8]) -> Vec<(String, Value)> {
    let evs = events(body);
    assert!(!evs.is_empty());
    let mut open: Option<(u64, String)> = None;
    let mut next = 0;
    let mut seen_delta = false;
    for (n, (name, data)) in evs.iter().enumerate() {
        assert_eq!(data["type"], name.as_str(), "event name and data type agree");
        assert_eq!(n == 0, name == "message_start", "message_start first and only first: {name}");
        assert_eq!(n == evs.len() - 1, name == "message_stop", "message_stop last and only last: {name}");
        match name.as_str() {
            "message_start" => {
                let m = &data["message"];
                assert!(m["id"].is_string() && m["model"].is_string());
                assert_eq!(
                    (&m["type"], &m["role"], &m["content"]),
                    (&json!("message"), &json!("assistant"), &json!([]))
                );
                assert!(m["stop_reason"].is_null() && m["stop_sequence"].is_null());
                assert!(m["usage"]["input_tokens"].is_u64() && m["usage"]["output_tokens"].is_u64());
            }
            "ping" => {}
            "content_block_start" => {
                assert!(open.is_none(), "a block opened while another is open");
                assert!(!seen_delta);
                assert_eq!(data["index"], next);
                let kind = data["content_block"]["type"].as_str().unwrap().to_string();
                if kind == "tool_use" {
                    assert_eq!(data["content_block"]["input"], json!({}));
                    assert!(data["content_block"]["id"].is_string() && data["content_block"]["name"].is_string());
                }
                open = Some((next, kind));
                next += 1;
            }
            "content_block_delta" => {
                let (index, kind) = open.as_ref().expect("delta outside a block");
                assert_eq!(data["index"], *index);
                let expected = match data["delta"]["type"].as_str().unwrap() {
                    "text_delta" => "text",
                    "input_json_delta" => "tool_use",
                    "thinking_delta" | "signature_delta" => "thinking",
                    other => panic!("unexpected delta {other}"),
                };
                assert_eq!(kind, expected);
            }
            "content_block_stop" => {
                let (index, _) = open.take().expect("stop outside a block");
                assert_eq!(data["index"], index);
            }
            "message_delta" => {
                assert!(open.is_none() && !seen_delta, "message_delta once, after the blocks");
                seen_delta = true;
                assert!(data["delta"]["stop_reason"].is_string());
                assert!(data["usage"]["output_tokens"].is_u64() && data["usage"]["input_tokens"].is_u64());
            }
            "message_stop" => assert!(seen_delta),
            other => panic!("unexpected event {other}"),
        }
    }
    evs
}

#[test]
fn authored_stream_decodes_to_the_expected_deltas() {
    let deltas = decode(&authored_stream(), false).unwrap();
    assert_eq!(
        deltas,
        vec![
            Delta::Start { id: "msg_01A".into(), model: "claude-sonnet-4-5".into(), usage: Some(usage(1)) },
            Delta::Thinking("Let me think".into()),
            Delta::Thinking(" about Paris.".into()),
            Delta::ThinkingSignature("EqQBCkYIBRgC".into()),
            Delta::RedactedThinking("RDATA".into()),
            Delta::Text("I'll look ".into()),
            Delta::Text("that up.".into()),
            Delta::ToolCallStart { index: 0, id: "toolu_01".into(), name: "get_weather".into() },
            Delta::ToolCallArgs { index: 0, json: "".into() },
            Delta::ToolCallArgs { index: 0, json: "{\"city\": ".into() },
            Delta::ToolCallArgs { index: 0, json: "\"Paris\"}".into() },
            Delta::ToolCallStart { index: 1, id: "toolu_02".into(), name: "get_time".into() },
            Delta::ToolCallArgs { index: 1, json: "{}".into() },
            Delta::Stop(StopReason::ToolUse),
            Delta::Usage(usage(87)),
        ]
    );
}

/// Whole once the stop reason (or `message_stop`) has come; a stream cut before it is not.
#[test]
fn decoder_knows_a_whole_answer_from_a_cut_one() {
    let body = authored_stream();
    let mut d = Decoder::new(false);
    let mut out = Vec::new();
    let mut whole = Vec::new();
    for item in parse_all(&body) {
        if let Item::Event(e) = item {
            d.event(&e, &mut out).unwrap();
            whole.push((e.event.clone().unwrap_or_default(), d.complete()));
        }
    }
    let first = whole.iter().position(|(_, c)| *c).expect("the stream ends whole");
    assert_eq!(whole[first].0, "message_delta", "{whole:?}");
    assert!(whole[first..].iter().all(|(_, c)| *c));
    let mut bare = Decoder::new(false);
    bare.event(&sse::Event { data: json!({"type": "message_stop"}).to_string(), ..Default::default() }, &mut out)
        .unwrap();
    assert!(bare.complete(), "message_stop alone ends an answer");
}

#[test]
fn decode_encode_reproduces_the_stream() {
    let authored = authored_stream();
    assert_canonical_sse(&authored);
    assert_valid_stream(&authored);
    let deltas = decode(&authored, false).unwrap();
    let encoded = encode(&deltas);
    assert_canonical_sse(&encoded);
    assert_eq!(events(&encoded), events(&authored), "re-encoding gives the same events");
    assert_eq!(decode(&encoded, false).unwrap(), deltas);
}

fn json_tool_stream() -> BytesMut {
    let mut s = BytesMut::new();
    ev(&mut s, start_msg("msg_J", json!({"input_tokens": 40, "output_tokens": 1})));
    ev(&mut s, block_start(0, json!({"type": "tool_use", "id": "toolu_J", "name": JSON_TOOL, "input": {}})));
    ev(&mut s, json!({"type": "ping"}));
    ev(&mut s, block_delta(0, json!({"type": "input_json_delta", "partial_json": ""})));
    ev(&mut s, block_delta(0, json!({"type": "input_json_delta", "partial_json": "{\"answer\""})));
    ev(&mut s, block_delta(0, json!({"type": "input_json_delta", "partial_json": ": \"42\"}"})));
    ev(&mut s, block_stop(0));
    ev(
        &mut s,
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 12}}),
    );
    ev(&mut s, json!({"type": "message_stop"}));
    s
}

#[test]
fn json_mode_streams_the_json_tool_as_text() {
    let body = json_tool_stream();
    let u = Usage { input_uncached: 40, output: 12, ..Usage::default() };
    let deltas = decode(&body, true).unwrap();
    assert_eq!(
        deltas[1..],
        [
            Delta::Text("{\"answer\"".into()),
            Delta::Text(": \"42\"}".into()),
            Delta::Stop(StopReason::EndTurn),
            Delta::Usage(u),
        ]
    );
    let again = encode(&deltas);
    assert_valid_stream(&again);
    assert_eq!(decode(&again, true).unwrap(), deltas);
    // Outside JSON mode it is an ordinary tool call.
    let plain = decode(&body, false).unwrap();
    assert_eq!(plain[1], Delta::ToolCallStart { index: 0, id: "toolu_J".into(), name: JSON_TOOL.into() });
    assert_eq!(plain[plain.len() - 2], Delta::Stop(StopReason::ToolUse));
}

#[test]
fn decoder_merges_usage_and_skips_what_it_does_not_know() {
    let mut s = BytesMut::new();
    s.extend_from_slice(b": keep-alive\n\n");
    ev(&mut s, start_msg("msg_U", full_usage(1)));
    sse::write_event(Some("ping"), "not even json", &mut s);
    ev(&mut s, block_start(0, json!({"type": "text", "text": "Hi"})));
    ev(&mut s, block_delta(0, json!({"type": "citations_delta", "citation": {"cited_text": "x"}})));
    ev(&mut s, block_delta(0, json!({"type": "text_delta", "text": ""})));
    ev(&mut s, block_delta(0, json!({"type": "text_delta", "text": "!"})));
    ev(&mut s, block_stop(0));
    ev(
        &mut s,
        block_start(1, json!({"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}})),
    );
    ev(&mut s, block_delta(1, json!({"type": "input_json_delta", "partial_json": "{\"query\":\"x\"}"})));
    ev(&mut s, block_stop(1));
    ev(&mut s, json!({"type": "brand_new_event", "what": 1}));
    ev(&mut s, json!({"type": "message_delta", "delta": {"stop_reason": null}, "usage": {"output_tokens": 30}}));
    ev(
        &mut s,
        json!({"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "###"}, "usage": {"output_tokens": 31, "cache_read_input_tokens": 120}}),
    );
    ev(&mut s, json!({"type": "message_stop"}));
    let deltas = decode(&s, false).unwrap();
    let merged = Usage { input_cache_read: 120, ..usage(31) };
    assert_eq!(
        deltas[1..],
        [
            Delta::Text("Hi".into()),
            Delta::Text("!".into()),
            Delta::Usage(usage(30)),
            Delta::Stop(StopReason::StopSequence(Some("###".into()))),
            Delta::Usage(merged),
        ]
    );
    let again = encode(&deltas);
    let evs = assert_valid_stream(&again);
    let (_, md) = &evs[evs.len() - 2];
    assert_eq!(md["delta"], json!({"stop_reason": "stop_sequence", "stop_sequence": "###"}));
    assert_eq!(
        md["usage"],
        json!({"input_tokens": 25, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 120, "output_tokens": 31})
    );
    assert_eq!(decode(&again, false).unwrap()[1..3], deltas[1..3]);
}

fn decode_error(data: Value) -> Error {
    let mut s = BytesMut::new();
    ev(&mut s, start_msg("m", json!({"input_tokens": 1, "output_tokens": 1})));
    ev(&mut s, data);
    decode(&s, false).unwrap_err()
}

fn upstream(e: &Error) -> &UpstreamStatus {
    match &e.kind {
        ErrorKind::UpstreamStatus(s) => s,
        other => panic!("expected an upstream status, got {other:?}"),
    }
}

#[test]
fn error_events_and_garbage_become_errors() {
    let e = decode_error(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));
    assert_eq!(e.message, "Overloaded");
    assert_eq!((upstream(&e).status, e.retryable()), (529, true));
    assert_eq!(upstream(&e).vendor_type.as_deref(), Some("overloaded_error"));
    let e = decode_error(json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}));
    assert_eq!((upstream(&e).status, e.retryable()), (429, true));
    let e = decode_error(json!({"type": "error", "error": {"type": "api_error", "message": "boom"}}));
    assert_eq!((upstream(&e).status, e.retryable()), (500, true));
    let e = decode_error(json!({"type": "error", "error": {"type": "something_new", "message": "?"}}));
    assert_eq!(upstream(&e).status, 500);
    let e = decode_error(json!({"type": "error", "error": {"type": "rate_limit_error", "message": "cap",
        "details": {"error_code": "enforced_spend_limit_reached"}}}));
    assert!(upstream(&e).exhausted && !e.retryable());
    assert_eq!(upstream(&e).vendor_code.as_deref(), Some("enforced_spend_limit_reached"));
    let e = decode_error(json!({"type": "error", "error": {"type": "billing_error", "message": "no credit"}}));
    assert!(upstream(&e).exhausted && !e.retryable());

    let mut s = BytesMut::new();
    s.extend_from_slice(b"event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"delta\": \n\n");
    assert_eq!(decode(&s, false).unwrap_err().kind, ErrorKind::UpstreamProtocol);
}

#[test]
fn encoder_output_is_valid_for_other_dialects_deltas() {
    let u = Usage { input_uncached: 12, input_cache_read: 4, input_cache_write: 0, output: 9, output_reasoning: 3 };
    // An OpenAI-like upstream: no Start, usage before the stop, an empty text delta.
    let deltas = vec![
        Delta::Text("Hel".into()),
        Delta::Text("".into()),
        Delta::Text("lo".into()),
        Delta::ToolCallStart { index: 0, id: "call_1".into(), name: "f".into() },
        Delta::ToolCallArgs { index: 0, json: "{\"a\"".into() },
        Delta::ToolCallArgs { index: 0, json: ":1}".into() },
        Delta::ToolCallStart { index: 1, id: "call_2".into(), name: "g".into() },
        Delta::ToolCallArgs { index: 1, json: "{}".into() },
        // Late arguments for a closed call cannot go anywhere valid.
        Delta::ToolCallArgs { index: 0, json: "junk".into() },
        Delta::Usage(u),
        Delta::Stop(StopReason::ToolUse),
    ];
    let out = encode(&deltas);
    assert_canonical_sse(&out);
    let evs = assert_valid_stream(&out);
    assert!(evs[0].1["message"]["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(evs[1].0, "ping");
    let (_, md) = &evs[evs.len() - 2];
    assert_eq!(md["delta"], json!({"stop_reason": "tool_use", "stop_sequence": null}));
    assert_eq!(
        md["usage"],
        json!({"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 12})
    );
    assert_eq!(
        decode(&out, false).unwrap()[1..9],
        [
            Delta::Text("Hel".into()),
            Delta::Text("lo".into()),
            Delta::ToolCallStart { index: 0, id: "call_1".into(), name: "f".into() },
            Delta::ToolCallArgs { index: 0, json: "{\"a\"".into() },
            Delta::ToolCallArgs { index: 0, json: ":1}".into() },
            Delta::ToolCallStart { index: 1, id: "call_2".into(), name: "g".into() },
            Delta::ToolCallArgs { index: 1, json: "{}".into() },
            Delta::Stop(StopReason::ToolUse),
        ]
    );

    // Stop before Usage; Start with input usage; the last Usage wins.
    let start = Delta::Start {
        id: "gen-1".into(),
        model: "gpt-x".into(),
        usage: Some(Usage { input_uncached: 5, ..Usage::default() }),
    };
    let out = encode(&[start, Delta::Text("x".into()), Delta::Stop(StopReason::MaxTokens), Delta::Usage(u)]);
    let evs = assert_valid_stream(&out);
    assert_eq!(evs[0].1["message"]["id"], "gen-1", "the upstream id is kept");
    assert_eq!(evs[0].1["message"]["model"], "gpt-x");
    assert_eq!(evs[0].1["message"]["usage"]["input_tokens"], 5);
    assert_eq!(evs[evs.len() - 2].1["delta"]["stop_reason"], "max_tokens");
    assert_eq!(evs[evs.len() - 2].1["usage"]["output_tokens"], 12);

    // Nothing at all, or only empty text: still a complete message, ending in end_turn.
    for deltas in [vec![], vec![Delta::Text(String::new())]] {
        let evs = assert_valid_stream(&encode(&deltas));
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["message_start", "ping", "message_delta", "message_stop"]);
        assert_eq!(evs[2].1["delta"]["stop_reason"], "end_turn");
    }

    // A signed thinking block is closed before more thinking; kinds change blocks.
    let out = encode(&[
        Delta::Thinking("a".into()),
        Delta::ThinkingSignature("s1".into()),
        Delta::Thinking("b".into()),
        Delta::ThinkingSignature("s2".into()),
        Delta::Text("t".into()),
        Delta::Thinking("c".into()),
    ]);
    let evs = assert_valid_stream(&out);
    let kinds: Vec<&str> = evs
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| d["content_block"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["thinking", "thinking", "text", "thinking"]);
}

#[test]
fn encoder_error_and_finish_are_final() {
    let mut e = Encoder::new();
    let mut out = BytesMut::new();
    e.delta(&Delta::Text("partial".into()), &mut out);
    let before = out.len();
    let err = Error::new(ErrorKind::Unavailable, "all providers are overloaded");
    e.error(&err, &mut out);
    let tail = events(&out[before..]);
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].0, "error");
    assert_eq!(tail[0].1, err.anthropic_body());
    assert_eq!(tail[0].1["error"]["type"], "overloaded_error");
    let len = out.len();
    e.finish(&mut out);
    e.delta(&Delta::Text("more".into()), &mut out);
    assert_eq!(out.len(), len, "nothing follows an error event");

    let mut e = Encoder::new();
    let mut out = BytesMut::new();
    e.finish(&mut out);
    let len = out.len();
    e.finish(&mut out);
    e.delta(&Delta::Text("late".into()), &mut out);
    assert_eq!(out.len(), len, "nothing follows message_stop");
}

/// Extra check on real recordings in `../shared/fixtures/anthropic-message-streams/`
/// (outside the repository; ignored, with the reason, when absent).
#[test]
#[cfg_attr(not(shared_data), ignore = "needs ../shared beside the repository (recorded provider streams)")]
fn recorded_streams_decode_and_reencode_stably() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/anthropic-message-streams");
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    assert!(!files.is_empty());
    for path in files {
        let body = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let deltas = decode(&body, false).unwrap_or_else(|e| panic!("{name}: {e}"));
        let text: String =
            deltas.iter().filter_map(|d| if let Delta::Text(t) = d { Some(t.as_str()) } else { None }).collect();
        let args: String = deltas
            .iter()
            .filter_map(|d| if let Delta::ToolCallArgs { json, .. } = d { Some(json.as_str()) } else { None })
            .collect();
        let calls: Vec<&Delta> = deltas.iter().filter(|d| matches!(d, Delta::ToolCallStart { .. })).collect();
        let stop = deltas.iter().find_map(|d| if let Delta::Stop(s) = d { Some(s.clone()) } else { None });
        let last_usage = deltas.iter().rev().find_map(|d| if let Delta::Usage(u) = d { Some(*u) } else { None });
        assert!(matches!(deltas[0], Delta::Start { .. }), "{name}");
        match name.as_str() {
            "basic_response.txt" => {
                assert_eq!(text, "Hello there!");
                assert!(calls.is_empty());
                assert_eq!(stop, Some(StopReason::EndTurn));
                assert_eq!(last_usage, Some(Usage { input_uncached: 11, output: 6, ..Usage::default() }));
            }
            "tool_use_response.txt" => {
                assert_eq!(text, "I'll check the current weather in Paris for you.");
                assert_eq!(
                    calls,
                    [&Delta::ToolCallStart {
                        index: 0,
                        id: "toolu_01NRLabsLyVHZPKxbKvkfSMn".into(),
                        name: "get_weather".into()
                    }]
                );
                assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"location": "Paris"}));
                assert_eq!(stop, Some(StopReason::ToolUse));
                assert_eq!(last_usage, Some(Usage { input_uncached: 377, output: 65, ..Usage::default() }));
            }
            _ => eprintln!("note: {name} has no expected content here; checked for decoding and stability only"),
        }
        let encoded = encode(&deltas);
        assert_valid_stream(&encoded);
        assert_eq!(decode(&encoded, false).unwrap(), deltas, "{name}: decode → encode → decode");
    }
}
