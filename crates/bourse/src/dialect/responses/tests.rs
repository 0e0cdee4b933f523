use super::*;
use crate::canonical::{Delta, Part, Reply, Role, Usage};
use crate::dialect::Encode;
use crate::error::{ErrorKind, UpstreamStatus};
use bytes::BytesMut;

fn req(v: Value) -> ResponsesRequest {
    parse_request(v.to_string().as_bytes()).unwrap()
}

fn err_param(v: Value) -> String {
    let e = parse_request(v.to_string().as_bytes()).and_then(|r| r.conversation(&[], &r.input_items())).unwrap_err();
    assert_eq!(e.status().as_u16(), 400, "{e:?}");
    e.param.unwrap_or_default()
}

#[test]
fn string_input_and_instructions_become_a_user_turn_and_system_text() {
    let r = req(json!({"model": "m", "input": "hi", "instructions": "be brief", "max_output_tokens": 50}));
    let conv = r.conversation(&[], &r.input_items()).unwrap();
    assert_eq!(conv.system.len(), 1);
    assert_eq!(conv.system[0].text, "be brief");
    assert_eq!(conv.messages.len(), 1);
    assert_eq!(conv.messages[0].role, Role::User);
    assert_eq!(
        conv.messages[0].parts,
        vec![Part::Text(crate::canonical::Text { text: "hi".into(), cache_control: None })]
    );
    assert_eq!(conv.max_output_tokens, Some(50));
    assert!(r.store && !r.stream);
}

#[test]
fn a_tool_round_trip_is_one_assistant_turn_then_one_user_turn() {
    let input = json!([
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"},
                                     {"type": "input_image", "image_url": "data:image/png;base64,QUJD"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "think"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": ""},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]},
    ]);
    let r = req(json!({"model": "m", "input": input, "tools": [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": true}
    ], "tool_choice": {"type": "function", "name": "get_weather"}, "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}, "strict": true}}, "reasoning": {"effort": "low"}}));
    let conv = r.conversation(&[], &r.input_items()).unwrap();
    assert_eq!(conv.messages.len(), 3, "{conv:?}");
    assert_eq!(conv.messages[0].parts.len(), 2);
    assert!(matches!(conv.messages[0].parts[1], Part::Image { .. }));
    let a = &conv.messages[1];
    assert_eq!(a.role, Role::Assistant);
    assert!(matches!(&a.parts[0], Part::Thinking { text, .. } if text == "think"));
    assert!(matches!(&a.parts[1], Part::Text(t) if t.text == "Let me look."));
    assert!(
        matches!(&a.parts[2], Part::ToolCall { id, arguments, .. } if id == "call_1" && arguments["city"] == "Paris")
    );
    assert!(matches!(&a.parts[3], Part::ToolCall { arguments, .. } if arguments == &json!({})));
    let u = &conv.messages[2];
    assert_eq!(u.role, Role::User);
    assert!(matches!(&u.parts[0], Part::ToolResult { call_id, .. } if call_id == "call_1"));
    assert!(matches!(&u.parts[1], Part::ToolResult { call_id, .. } if call_id == "call_2"));
    assert_eq!(conv.tools[0].name, "get_weather");
    assert_eq!(conv.tool_choice, Some(crate::canonical::ToolChoice::Tool("get_weather".into())));
    assert!(
        matches!(conv.response_format, crate::canonical::ResponseFormat::JsonSchema { ref name, strict: Some(true), .. } if name == "a")
    );
    assert_eq!(conv.thinking, Some(crate::canonical::Thinking::Effort("low".into())));
}

#[test]
fn history_comes_before_the_input_and_instructions_are_not_carried() {
    let r = req(json!({"model": "m", "input": "and now?", "previous_response_id": "resp_x"}));
    let history = vec![
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]}),
        json!({"type": "message", "role": "assistant", "status": "completed", "id": "msg_1",
               "content": [{"type": "output_text", "text": "answer", "annotations": [], "logprobs": []}]}),
    ];
    let conv = r.conversation(&history, &r.input_items()).unwrap();
    assert!(conv.system.is_empty());
    let roles: Vec<Role> = conv.messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::User, Role::Assistant, Role::User]);
    // A follow-up may send no input at all.
    let r = req(json!({"model": "m", "previous_response_id": "resp_x"}));
    assert!(r.input_items().is_empty());
    assert_eq!(r.conversation(&history, &[]).unwrap().messages.len(), 2);
}

#[test]
fn what_cannot_be_served_is_a_400_naming_the_parameter() {
    assert_eq!(err_param(json!({"input": "x"})), "model");
    assert_eq!(err_param(json!({"model": "m"})), "input");
    assert_eq!(err_param(json!({"model": "m", "input": 3})), "input");
    assert_eq!(err_param(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})), "tools[0].type");
    assert_eq!(err_param(json!({"model": "m", "input": "x", "tools": [{"type": "function"}]})), "tools[0].name");
    assert_eq!(err_param(json!({"model": "m", "input": "x", "background": true})), "background");
    assert_eq!(err_param(json!({"model": "m", "input": "x", "temperature": 3})), "temperature");
    assert_eq!(err_param(json!({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}})), "text.format.type");
    assert_eq!(err_param(json!({"model": "m", "input": "x", "tool_choice": "sometimes"})), "tool_choice");
    assert_eq!(err_param(json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]})), "input[0].type");
    assert_eq!(err_param(json!({"model": "m", "input": [{"role": "tool", "content": "x"}]})), "input[0].role");
    assert_eq!(
        err_param(json!({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]})),
        "input[0].call_id"
    );
    assert_eq!(
        err_param(
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]})
        ),
        "input[0].content[0].type"
    );
    assert_eq!(err_param(json!({"model": "m", "input": [7]})), "input[0]");
    let e = parse_request(b"[1]").unwrap_err();
    assert_eq!(e.status().as_u16(), 400);
    let e = parse_request(b"{nope").unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidJson);
}

fn head() -> Head {
    Head::new(&req(json!({"model": "route", "input": "x", "metadata": {"k": "v"}})), true)
}

#[test]
fn a_reply_becomes_reasoning_message_and_call_items() {
    let reply = Reply {
        id: "c1".into(),
        model: "sim-small".into(),
        parts: vec![
            Part::Thinking { text: "hmm".into(), signature: None },
            Part::Text(crate::canonical::Text { text: "a".into(), cache_control: None }),
            Part::Text(crate::canonical::Text { text: "b".into(), cache_control: None }),
            Part::ToolCall { id: "call_9".into(), name: "f".into(), arguments: json!({"x": 1}) },
        ],
        stop: StopReason::ToolUse,
        usage: Some(Usage {
            input_uncached: 7,
            input_cache_read: 3,
            output: 5,
            output_reasoning: 2,
            ..Usage::default()
        }),
    };
    let r = render_response(&head(), &reply);
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["model"], "sim-small");
    assert_eq!(r["metadata"], json!({"k": "v"}));
    let types: Vec<&str> = r["output"].as_array().unwrap().iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["reasoning", "message", "function_call"]);
    assert_eq!(r["output"][1]["content"][0]["text"], "ab");
    assert_eq!(r["output"][2]["call_id"], "call_9");
    assert_eq!(r["output"][2]["arguments"], "{\"x\":1}");
    assert_eq!(r["usage"]["input_tokens"], 10);
    assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 3);
    assert_eq!(r["usage"]["output_tokens"], 7);
    assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 2);
    assert_eq!(r["usage"]["total_tokens"], 17);
    let cut = Reply { stop: StopReason::MaxTokens, ..reply };
    let r = render_response(&head(), &cut);
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
}

/// The events of a stream, as (type, data) with the sequence numbers checked.
fn events(out: &BytesMut) -> Vec<(String, Value)> {
    let items = crate::sse::parse_all(out);
    let mut evs = Vec::new();
    for (n, item) in items.into_iter().enumerate() {
        let crate::sse::Item::Event(e) = item else { panic!("a comment in {out:?}") };
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(e.event.as_deref(), v["type"].as_str(), "the SSE event name is the type");
        assert_eq!(v["sequence_number"], n as u64, "sequence numbers count from 0 without gaps");
        evs.push((v["type"].as_str().unwrap().to_string(), v));
    }
    evs
}

#[test]
fn a_streamed_answer_follows_the_official_event_sequence() {
    let mut enc = Encoder::new(head());
    let mut out = BytesMut::new();
    for d in [
        Delta::Start { id: "c".into(), model: "sim-small".into(), usage: None },
        Delta::Thinking("hm".into()),
        Delta::Text("Hel".into()),
        Delta::Text("lo".into()),
        Delta::ToolCallStart { index: 0, id: "call_1".into(), name: "f".into() },
        Delta::ToolCallArgs { index: 0, json: "{\"a\"".into() },
        Delta::ToolCallArgs { index: 0, json: ":1}".into() },
        Delta::Stop(StopReason::ToolUse),
        Delta::Usage(Usage { input_uncached: 4, output: 6, ..Usage::default() }),
    ] {
        enc.delta(&d, &mut out);
    }
    enc.finish(&mut out);
    let evs = events(&out);
    let types: Vec<&str> = evs.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.reasoning_text.delta",
            "response.reasoning_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(evs[0].1["response"]["status"], "in_progress");
    assert_eq!(evs[0].1["response"]["model"], "sim-small");
    assert_eq!(evs[10].1["output_index"], 1);
    assert_eq!(evs[12].1["text"], "Hello");
    assert_eq!(evs[18].1["arguments"], "{\"a\":1}");
    assert_eq!(evs[18].1["name"], "f");
    let done = &evs[20].1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"].as_array().unwrap().len(), 3);
    assert_eq!(done["output"][2]["call_id"], "call_1");
    assert_eq!(done["usage"]["total_tokens"], 10);
    assert_eq!(enc.response(), Some(done));
}

#[test]
fn a_stream_that_breaks_ends_with_response_failed() {
    let mut enc = Encoder::new(head());
    let mut out = BytesMut::new();
    enc.delta(&Delta::Start { id: "c".into(), model: "m".into(), usage: None }, &mut out);
    enc.delta(&Delta::Text("partial".into()), &mut out);
    let e = crate::error::Error::new(
        ErrorKind::UpstreamStatus(Box::new(UpstreamStatus {
            status: 429,
            vendor_type: None,
            vendor_code: None,
            exhausted: false,
            retryable: true,
        })),
        "slow down",
    );
    enc.error(&e, &mut out);
    // Nothing after the terminal event.
    enc.delta(&Delta::Text("more".into()), &mut out);
    enc.finish(&mut out);
    let evs = events(&out);
    let (last, v) = evs.last().unwrap();
    assert_eq!(last, "response.failed");
    assert_eq!(evs.iter().filter(|(t, _)| t.starts_with("response.failed") || t == "response.completed").count(), 1);
    assert_eq!(v["response"]["status"], "failed");
    assert_eq!(v["response"]["error"], json!({"code": "rate_limit_exceeded", "message": "slow down"}));
    assert_eq!(v["response"]["output"][0]["content"][0]["text"], "partial");
    assert_eq!(v["response"]["output"][0]["status"], "incomplete");

    // A stream that broke before anything came still opens with created and in_progress.
    let mut enc = Encoder::new(head());
    let mut out = BytesMut::new();
    enc.error(&crate::error::Error::new(ErrorKind::UpstreamTimeout, "late"), &mut out);
    let types: Vec<String> = events(&out).into_iter().map(|(t, _)| t).collect();
    assert_eq!(types, ["response.created", "response.in_progress", "response.failed"]);
}

#[test]
fn a_cut_answer_ends_with_response_incomplete() {
    let mut enc = Encoder::new(head());
    let mut out = BytesMut::new();
    enc.delta(&Delta::Text("long".into()), &mut out);
    enc.delta(&Delta::Stop(StopReason::MaxTokens), &mut out);
    enc.finish(&mut out);
    let evs = events(&out);
    let (last, v) = evs.last().unwrap();
    assert_eq!(last, "response.incomplete");
    assert_eq!(v["response"]["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(v["response"]["output"][0]["status"], "incomplete");
}
