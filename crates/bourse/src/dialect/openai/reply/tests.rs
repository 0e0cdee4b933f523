//! Tests of [`parse_reply`] and [`render_reply`].

use super::*;

fn text(s: &str) -> Part {
    Part::Text(Text { text: s.to_string(), cache_control: None })
}

fn call(id: &str, name: &str, arguments: Value) -> Part {
    Part::ToolCall { id: id.into(), name: name.into(), arguments }
}

#[test]
fn parse_reply_reads_reasoning_text_tool_calls_and_usage() {
    let body = json!({
        "id": "chatcmpl-123", "object": "chat.completion", "created": 1, "model": "deepseek-reasoner",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Let me look.", "reasoning_content": "thinking...",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":[1,2]}"}}]},
            "logprobs": null, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 40}, "completion_tokens_details": {"reasoning_tokens": 30}}
    });
    let reply = parse_reply(&serde_json::to_vec(&body).unwrap()).unwrap();
    assert_eq!(
        reply,
        Reply {
            id: "chatcmpl-123".into(),
            model: "deepseek-reasoner".into(),
            parts: vec![
                Part::Thinking { text: "thinking...".into(), signature: None },
                text("Let me look."),
                call("call_1", "f", json!({"a": [1, 2]})),
            ],
            stop: StopReason::ToolUse,
            usage: Some(Usage {
                input_uncached: 60,
                input_cache_read: 40,
                input_cache_write: 0,
                output: 20,
                output_reasoning: 30
            }),
        }
    );
    let with_reason = |reason: &str| {
        let b = json!({"id": "x", "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": reason}]});
        parse_reply(&serde_json::to_vec(&b).unwrap()).unwrap()
    };
    assert_eq!(with_reason("stop").stop, StopReason::EndTurn);
    assert_eq!(with_reason("length").stop, StopReason::MaxTokens);
    assert_eq!(with_reason("function_call").stop, StopReason::ToolUse);
    assert_eq!(with_reason("content_filter").stop, StopReason::ContentFilter);
    assert_eq!(with_reason("stop").usage, None);
    // DeepSeek's cache fields go through the same normalization.
    let ds = json!({"id": "x", "model": "m", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}});
    assert_eq!(parse_reply(&serde_json::to_vec(&ds).unwrap()).unwrap().usage.unwrap().input_cache_read, 64);
    // A refusal is the answer's text.
    let refusal = json!({"id": "x", "model": "m", "choices": [{"message": {"content": null, "refusal": "I can't."}, "finish_reason": "stop"}]});
    assert_eq!(parse_reply(&serde_json::to_vec(&refusal).unwrap()).unwrap().parts, vec![text("I can't.")]);
}

#[test]
fn parse_reply_errors() {
    for bad in
        [&b"{\"id\": \"x\", \"choices\": ["[..], b"<html>", br#"{"id":"x","choices":[]}"#, br#"{"choices":"nope"}"#]
    {
        assert_eq!(parse_reply(bad).unwrap_err().kind, ErrorKind::UpstreamProtocol, "{}", String::from_utf8_lossy(bad));
    }
    let e = parse_reply(br#"{"error":{"message":"overloaded","type":"server_error","code":503}}"#).unwrap_err();
    let ErrorKind::UpstreamStatus(s) = &e.kind else { panic!("{e:?}") };
    assert_eq!((s.status, s.retryable), (503, true));
    assert_eq!(e.message, "overloaded");
}

#[test]
fn render_reply_matches_the_sdk_shape_and_round_trips() {
    let reply = Reply {
        id: "msg_01XYZ".into(),
        model: "claude-sonnet-4-5".into(),
        parts: vec![
            Part::Thinking { text: "hmm".into(), signature: Some("sig".into()) },
            Part::RedactedThinking { data: "zzz".into() },
            call("toolu_1", "get_weather", json!({"city": "Paris"})),
            call("toolu_2", "get_time", json!({})),
        ],
        stop: StopReason::ToolUse,
        usage: Some(Usage {
            input_uncached: 10,
            input_cache_read: 1000,
            input_cache_write: 5,
            output: 20,
            output_reasoning: 7,
        }),
    };
    let mut out: Value = serde_json::from_slice(&render_reply(&reply)).unwrap();
    assert!(out["created"].as_u64().unwrap() > 1_700_000_000);
    out.as_object_mut().unwrap().remove("created");
    assert_eq!(
        out,
        json!({
            "id": "msg_01XYZ",
            "object": "chat.completion",
            "model": "claude-sonnet-4-5",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": null,
                    "reasoning_content": "hmm",
                    "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                    ],
                    "refusal": null
                },
                "logprobs": null,
                "finish_reason": "tool_calls"
            }],
            "usage": {
                "prompt_tokens": 1015,
                "completion_tokens": 27,
                "total_tokens": 1042,
                "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 7, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
            }
        })
    );
    // Back again: what OpenAI can carry survives (cache writes become plain input).
    let back = parse_reply(&render_reply(&reply)).unwrap();
    assert_eq!(back.id, reply.id);
    assert_eq!(
        back.parts,
        vec![Part::Thinking { text: "hmm".into(), signature: None }, reply.parts[2].clone(), reply.parts[3].clone()]
    );
    assert_eq!(back.stop, StopReason::ToolUse);
    assert_eq!(
        back.usage,
        Some(Usage {
            input_uncached: 15,
            input_cache_read: 1000,
            input_cache_write: 0,
            output: 20,
            output_reasoning: 7
        })
    );

    for (stop, wire) in [
        (StopReason::EndTurn, "stop"),
        (StopReason::StopSequence(Some("END".into())), "stop"),
        (StopReason::MaxTokens, "length"),
        (StopReason::ContentFilter, "content_filter"),
    ] {
        let r = Reply { id: "a".into(), model: "m".into(), parts: vec![text("x"), text("y")], stop, usage: None };
        let v: Value = serde_json::from_slice(&render_reply(&r)).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], wire);
        assert_eq!(v["choices"][0]["message"]["content"], "xy");
        assert!(v["choices"][0]["message"].get("reasoning_content").is_none());
        assert!(v.get("usage").is_none());
    }
}
