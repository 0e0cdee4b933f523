//! Tests of the Gemini dialect: rendering, replies, streams, and a round trip through the simulator.

use super::request::SKIP_SIGNATURE;
use super::*;
use crate::canonical::{
    Conversation, Delta, ImageSource, Message, Part, Reply, ResponseFormat, Role, Text, Thinking, Tool, ToolChoice,
};
use crate::dialect::Decode;
use crate::sse;
use serde_json::json;

fn text(s: &str) -> Text {
    Text { text: s.to_string(), cache_control: None }
}

fn text_part(s: &str) -> Part {
    Part::Text(text(s))
}

fn rendered(conv: &Conversation) -> Value {
    serde_json::from_slice(&render_request(conv)).unwrap()
}

fn user(parts: Vec<Part>) -> Message {
    Message { role: Role::User, parts }
}

fn assistant(parts: Vec<Part>) -> Message {
    Message { role: Role::Assistant, parts }
}

fn result(call_id: &str, content: Vec<Part>, is_error: bool) -> Part {
    Part::ToolResult { call_id: call_id.into(), content, is_error, cache_control: None }
}

fn image(source: ImageSource) -> Part {
    Part::Image { source, cache_control: Some(json!({"type": "ephemeral"})) }
}

#[test]
fn endpoint_paths() {
    assert_eq!(endpoint_path("gemini-2.5-flash", false), "/models/gemini-2.5-flash:generateContent");
    assert_eq!(endpoint_path("gemini-2.5-flash", true), "/models/gemini-2.5-flash:streamGenerateContent?alt=sse");
    assert_eq!(endpoint_path("models/gemini-2.5-pro", false), "/models/gemini-2.5-pro:generateContent");
    assert_eq!(endpoint_path("tunedModels/mine", true), "/tunedModels/mine:streamGenerateContent?alt=sse");
}

#[test]
fn render_a_whole_conversation() {
    let conv = Conversation {
        system: vec![text("Be brief."), text(""), text("Use tools.")],
        messages: vec![
            user(vec![
                text_part("Weather in Paris?"),
                image(ImageSource::Base64 { media_type: "image/png".into(), data: "iVBORw0K".into() }),
                image(ImageSource::from_url("data:image/gif;base64,R0lGODlh")),
                image(ImageSource::Url("https://example.com/cat.WEBP?size=2#top".into())),
                image(ImageSource::Url("https://example.com/photo".into())),
            ]),
            assistant(vec![
                Part::Thinking { text: "they want weather".into(), signature: Some("anthropic-sig".into()) },
                text_part("Checking."),
                Part::ToolCall { id: "call_1".into(), name: "get_weather".into(), arguments: json!({"city": "Paris"}) },
                Part::ToolCall { id: "call_2".into(), name: "get_time".into(), arguments: json!({}) },
            ]),
            user(vec![
                result("call_1", vec![text_part(r#"{"temp":20,"sky":"clear"}"#)], false),
                result("call_2", vec![text_part("clock broke")], true),
                result(
                    "call_unknown",
                    vec![
                        text_part("line one"),
                        text_part("line two"),
                        image(ImageSource::Url("https://example.com/chart.png".into())),
                    ],
                    false,
                ),
            ]),
            // Consecutive user turns merge into one.
            user(vec![text_part("Thanks!"), text_part("")]),
            // An assistant turn with nothing Gemini can take is skipped, and the user
            // turns around it merge.
            assistant(vec![Part::RedactedThinking { data: "opaque".into() }]),
            user(vec![text_part("And tomorrow?")]),
            assistant(vec![Part::ToolCall {
                id: "call_3".into(),
                name: "get_weather".into(),
                arguments: json!("{\"city\":\"Lyon\"}"),
            }]),
        ],
        tools: vec![
            Tool {
                name: "get_weather".into(),
                description: Some("Weather for a city".into()),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                                   "required": ["city"], "additionalProperties": false}),
                cache_control: None,
            },
            Tool { name: "get_time".into(), description: None, parameters: Value::Null, cache_control: None },
        ],
        tool_choice: Some(ToolChoice::Tool("get_weather".into())),
        parallel_tool_calls: Some(false),
        response_format: ResponseFormat::JsonSchema {
            name: "weather".into(),
            schema: json!({"type": "object", "properties": {"temp": {"type": "number"}}}),
            strict: Some(true),
        },
        max_output_tokens: Some(256),
        temperature: Some(0.5),
        top_p: Some(0.9),
        top_k: Some(40),
        stop: vec!["END".into(), "STOP".into()],
        thinking: Some(Thinking::Budget(1024)),
        user: Some("user-7".into()),
    };
    let want = json!({
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use tools."}]},
        "contents": [
            {"role": "user", "parts": [
                {"text": "Weather in Paris?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
                {"inlineData": {"mimeType": "image/gif", "data": "R0lGODlh"}},
                {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.WEBP?size=2#top"}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/photo"}}
            ]},
            {"role": "model", "parts": [
                {"text": "Checking."},
                {"functionCall": {"id": "call_1", "name": "get_weather", "args": {"city": "Paris"}},
                 "thoughtSignature": SKIP_SIGNATURE},
                {"functionCall": {"id": "call_2", "name": "get_time", "args": {}}}
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"id": "call_1", "name": "get_weather",
                                      "response": {"temp": 20, "sky": "clear"}}},
                {"functionResponse": {"id": "call_2", "name": "get_time",
                                      "response": {"error": "clock broke"}}},
                {"functionResponse": {"id": "call_unknown", "name": "call_unknown",
                                      "response": {"content": "line one\nline two"}}},
                {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/chart.png"}},
                {"text": "Thanks!"},
                {"text": "And tomorrow?"}
            ]},
            {"role": "model", "parts": [
                {"functionCall": {"id": "call_3", "name": "get_weather", "args": {"city": "Lyon"}},
                 "thoughtSignature": SKIP_SIGNATURE}
            ]}
        ],
        "tools": [{"functionDeclarations": [
            {"name": "get_weather", "description": "Weather for a city",
             "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}},
                                      "required": ["city"], "additionalProperties": false}},
            {"name": "get_time"}
        ]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
        "generationConfig": {
            "temperature": 0.5,
            "topP": 0.9,
            "topK": 40,
            "maxOutputTokens": 256,
            "stopSequences": ["END", "STOP"],
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object", "properties": {"temp": {"type": "number"}}},
            "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": true}
        }
    });
    assert_eq!(rendered(&conv), want);
}

#[test]
fn render_tool_choices_thinking_and_json_object() {
    let tool = Tool { name: "f".into(), description: None, parameters: json!({"type": "object"}), cache_control: None };
    let base = Conversation { messages: vec![user(vec![text_part("hi")])], tools: vec![tool], ..Default::default() };
    for (choice, want) in [
        (ToolChoice::Auto, json!({"mode": "AUTO"})),
        (ToolChoice::Any, json!({"mode": "ANY"})),
        (ToolChoice::None, json!({"mode": "NONE"})),
        (ToolChoice::Tool("f".into()), json!({"mode": "ANY", "allowedFunctionNames": ["f"]})),
    ] {
        let conv = Conversation { tool_choice: Some(choice.clone()), ..base.clone() };
        assert_eq!(rendered(&conv)["toolConfig"]["functionCallingConfig"], want, "{choice:?}");
    }
    assert!(rendered(&base).get("toolConfig").is_none(), "no tool choice, no toolConfig");
    // A tool choice without tools says nothing Gemini can use.
    let bare = Conversation { tools: vec![], tool_choice: Some(ToolChoice::Any), ..base.clone() };
    let v = rendered(&bare);
    assert!(v.get("tools").is_none() && v.get("toolConfig").is_none(), "{v}");
    // Nothing set: no systemInstruction and no generationConfig at all.
    assert_eq!(v, json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}));

    for (thinking, want) in [
        (Thinking::Budget(0), json!({"thinkingBudget": 0, "includeThoughts": true})),
        (Thinking::Effort("minimal".into()), json!({"thinkingLevel": "low"})),
        (Thinking::Effort("low".into()), json!({"thinkingLevel": "low"})),
        (Thinking::Effort("medium".into()), json!({"thinkingLevel": "high"})),
        (Thinking::Effort("high".into()), json!({"thinkingLevel": "high"})),
        (Thinking::Adaptive, json!({"includeThoughts": true})),
        (Thinking::Disabled, json!({"thinkingBudget": 0})),
    ] {
        let conv = Conversation { thinking: Some(thinking.clone()), ..base.clone() };
        assert_eq!(rendered(&conv)["generationConfig"], json!({"thinkingConfig": want}), "{thinking:?}");
    }

    let conv = Conversation { response_format: ResponseFormat::JsonObject, ..base.clone() };
    assert_eq!(rendered(&conv)["generationConfig"], json!({"responseMimeType": "application/json"}));
}

fn reply(body: Value) -> Reply {
    parse_reply(&serde_json::to_vec(&body).unwrap()).unwrap()
}

#[test]
fn parse_a_text_answer() {
    let r = reply(json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}, {"text": " world"}]},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2, "totalTokenCount": 12},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-1"
    }));
    assert_eq!(
        r,
        Reply {
            id: "resp-1".into(),
            model: "gemini-2.5-flash".into(),
            parts: vec![text_part("Hello world")],
            stop: StopReason::EndTurn,
            usage: Some(Usage { input_uncached: 10, output: 2, ..Usage::default() }),
        }
    );
    let r = reply(json!({"candidates": [{"content": {"parts": [{"text": "cut"}]}, "finishReason": "MAX_TOKENS"}]}));
    assert_eq!(r.stop, StopReason::MaxTokens);
    assert_eq!(r.usage, None);
    assert!(r.id.starts_with("gemini-"), "a synthesized id: {}", r.id);
}

#[test]
fn parse_a_function_call_answer() {
    let r = reply(json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Let me check."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "days": [1, 2], "x": {"y": null}}},
             "thoughtSignature": "c2ln"},
            {"functionCall": {"id": "fc-9", "name": "get_time", "args": {}}},
            {"functionCall": {"name": "no_args"}}
        ]}, "finishReason": "STOP"}],
        "modelVersion": "gemini-3-pro",
        "responseId": "resp-2"
    }));
    assert_eq!(r.stop, StopReason::ToolUse);
    assert_eq!(
        r.parts,
        vec![
            text_part("Let me check."),
            Part::ToolCall {
                id: "call_resp-2_0".into(),
                name: "get_weather".into(),
                arguments: json!({"city": "Paris", "days": [1, 2], "x": {"y": null}}),
            },
            Part::ToolCall { id: "fc-9".into(), name: "get_time".into(), arguments: json!({}) },
            Part::ToolCall { id: "call_resp-2_2".into(), name: "no_args".into(), arguments: json!({}) },
        ]
    );
    // Without a responseId the synthesized call ids are still unique within the reply.
    let r = reply(json!({"candidates": [{"content": {"parts": [
        {"functionCall": {"name": "a", "args": {}}}, {"functionCall": {"name": "b", "args": {}}}
    ]}}]}));
    let ids: Vec<&str> = r
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::ToolCall { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(ids, [format!("call_{}_0", r.id), format!("call_{}_1", r.id)]);
    assert_eq!(r.stop, StopReason::ToolUse, "no finishReason, but calls");
}

#[test]
fn parse_thought_parts() {
    let r = reply(json!({
        "candidates": [{"content": {"parts": [
            {"text": "Thinking it", "thought": true},
            {"text": " over.", "thought": true, "thoughtSignature": "c2lnMQ=="},
            {"text": "The answer", "thoughtSignature": "c2lnMg=="},
            {"text": " is 4."},
            {"text": "", "thoughtSignature": "c2lnMw=="}
        ]}, "finishReason": "STOP"}],
        "responseId": "r"
    }));
    assert_eq!(
        r.parts,
        vec![
            Part::Thinking { text: "Thinking it over.".into(), signature: Some("c2lnMQ==".into()) },
            text_part("The answer is 4."),
        ]
    );
    assert_eq!(r.stop, StopReason::EndTurn);
}

#[test]
fn usage_is_split_into_disjoint_counts() {
    let u = usage_from(&json!({
        "promptTokenCount": 100, "cachedContentTokenCount": 40, "candidatesTokenCount": 20,
        "thoughtsTokenCount": 30, "toolUsePromptTokenCount": 5, "totalTokenCount": 155
    }));
    assert_eq!(
        u,
        Usage { input_uncached: 65, input_cache_read: 40, input_cache_write: 0, output: 20, output_reasoning: 30 }
    );
    // The sum is everything billed: totalTokenCount.
    assert_eq!(u.input_total() + u.output_total(), 155);
    // A cached count larger than the prompt is clamped: nothing counts twice.
    assert_eq!(usage_from(&json!({"promptTokenCount": 10, "cachedContentTokenCount": 99})).input_total(), 10);
    assert_eq!(usage_from(&json!({})), Usage::default());
    let r = reply(json!({
        "candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 1000, "cachedContentTokenCount": 800,
                          "candidatesTokenCount": 7, "thoughtsTokenCount": 93}
    }));
    assert_eq!(
        r.usage,
        Some(Usage {
            input_uncached: 200,
            input_cache_read: 800,
            input_cache_write: 0,
            output: 7,
            output_reasoning: 93
        })
    );
}

#[test]
fn safety_blocks_are_content_filtered() {
    let r = reply(json!({
        "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "blocked-1"
    }));
    assert_eq!(r.parts, vec![]);
    assert_eq!(r.stop, StopReason::ContentFilter);
    assert_eq!(r.id, "blocked-1");
    assert_eq!(r.usage, Some(Usage { input_uncached: 7, ..Usage::default() }));
    for reason in ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"] {
        let r = reply(json!({"candidates": [{"finishReason": reason, "index": 0}]}));
        assert_eq!((r.stop, r.parts.len()), (StopReason::ContentFilter, 0), "{reason}");
    }
    for reason in ["OTHER", "MALFORMED_FUNCTION_CALL", "LANGUAGE", "FINISH_REASON_UNSPECIFIED"] {
        assert_eq!(reply(json!({"candidates": [{"finishReason": reason}]})).stop, StopReason::EndTurn, "{reason}");
    }
}

#[test]
fn malformed_bodies_are_protocol_errors() {
    for body in [
        &b"{\"candidates\": [{\"content\": "[..],
        b"not json",
        b"[1, 2]",
        b"\"text\"",
        br#"{"candidates": "many"}"#,
        br#"{"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}"#,
    ] {
        let e = parse_reply(body).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UpstreamProtocol, "{}", String::from_utf8_lossy(body));
    }
    // Nulls and unknown fields are fine.
    let r = parse_reply(br#"{"candidates": null, "usageMetadata": null, "newField": 1}"#).unwrap();
    assert_eq!((r.parts, r.stop, r.usage), (vec![], StopReason::EndTurn, None));
    // An error object in a 200 body is the upstream's error, not ours.
    let e = parse_reply(br#"{"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}"#).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::UpstreamStatus(ref s) if s.status == 500 && s.retryable), "{e:?}");
}

fn decode(events: &[Value]) -> (Decoder, Vec<Delta>) {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for v in events {
        d.event(&sse::Event { data: v.to_string(), ..Default::default() }, &mut out).unwrap();
    }
    (d, out)
}

#[test]
fn decode_a_stream() {
    let chunk = |parts: Value| {
        json!({"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
                                      "modelVersion": "gemini-2.5-pro", "responseId": "abc"})
    };
    let mut first = chunk(json!([{"text": "Planning", "thought": true}, {"text": " it.", "thought": true}]));
    first["usageMetadata"] = json!({"promptTokenCount": 10, "totalTokenCount": 10});
    let mut last = chunk(json!([{"text": ""}]));
    last["candidates"][0]["finishReason"] = json!("STOP");
    last["usageMetadata"] = json!({"promptTokenCount": 10, "cachedContentTokenCount": 4,
                                   "candidatesTokenCount": 9, "thoughtsTokenCount": 6});
    let (mut d, mut out) = decode(&[
        first,
        chunk(json!([{"text": "Hello"}])),
        chunk(json!([{"text": " there", "thoughtSignature": "c2ln"}])),
        chunk(json!([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                     {"functionCall": {"id": "fc-2", "name": "get_time"}}])),
        last,
    ]);
    d.finish(&mut out);
    d.finish(&mut out);
    assert_eq!(
        out,
        vec![
            Delta::Start { id: "abc".into(), model: "gemini-2.5-pro".into(), usage: None },
            Delta::Thinking("Planning".into()),
            Delta::Thinking(" it.".into()),
            Delta::Usage(Usage { input_uncached: 10, ..Usage::default() }),
            Delta::Text("Hello".into()),
            Delta::Text(" there".into()),
            Delta::ToolCallStart { index: 0, id: "call_abc_0".into(), name: "get_weather".into() },
            Delta::ToolCallArgs { index: 0, json: r#"{"city":"Paris"}"#.into() },
            Delta::ToolCallStart { index: 1, id: "fc-2".into(), name: "get_time".into() },
            Delta::ToolCallArgs { index: 1, json: "{}".into() },
            Delta::Usage(Usage {
                input_uncached: 6,
                input_cache_read: 4,
                input_cache_write: 0,
                output: 9,
                output_reasoning: 6
            }),
            Delta::Stop(StopReason::ToolUse),
        ]
    );
}

#[test]
fn decode_stop_reasons_and_signatures() {
    let (mut d, mut out) = decode(&[
        json!({"candidates": [{"content": {"parts": [{"text": "hm", "thought": true, "thoughtSignature": "c2ln"}]}}]}),
        json!({"candidates": [{"content": {"parts": [{"text": "cut"}]}, "finishReason": "MAX_TOKENS"}]}),
    ]);
    d.finish(&mut out);
    let Delta::Start { id, model, usage: None } = &out[0] else { panic!("{out:?}") };
    assert!(id.starts_with("gemini-") && model.is_empty(), "{id} {model}");
    assert_eq!(
        out[1..],
        [
            Delta::Thinking("hm".into()),
            Delta::ThinkingSignature("c2ln".into()),
            Delta::Text("cut".into()),
            Delta::Stop(StopReason::MaxTokens)
        ]
    );

    // A blocked prompt: no candidates, a block reason.
    let (mut d, mut out) =
        decode(&[json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "responseId": "b"})]);
    d.finish(&mut out);
    assert_eq!(
        out,
        [Delta::Start { id: "b".into(), model: String::new(), usage: None }, Delta::Stop(StopReason::ContentFilter)]
    );

    // A stream is whole with its finish reason, or its block; not without either.
    let (d, _) = decode(&[json!({"candidates": [{"content": {"parts": [{"text": "cut"}]}}]})]);
    assert!(!d.complete());
    let (d, _) = decode(&[json!({"candidates": [{"content": {"parts": []}, "finishReason": "STOP"}]})]);
    assert!(d.complete());
    let (d, _) = decode(&[json!({"promptFeedback": {"blockReason": "SAFETY"}})]);
    assert!(d.complete());

    // Asked to finish anyway, an empty stream still starts before it stops.
    let (mut d, mut out) = decode(&[]);
    d.finish(&mut out);
    assert!(matches!(out[..], [Delta::Start { .. }, Delta::Stop(StopReason::EndTurn)]), "{out:?}");
}

#[test]
fn decode_errors() {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let ev = |data: &str| sse::Event { data: data.into(), ..Default::default() };
    d.event(&ev(r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}]}}],"responseId":"r"}"#), &mut out).unwrap();
    let e = d
        .event(&ev(r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#), &mut out)
        .unwrap_err();
    let ErrorKind::UpstreamStatus(s) = &e.kind else { panic!("{e:?}") };
    assert_eq!((s.status, s.vendor_type.as_deref(), s.retryable), (503, Some("UNAVAILABLE"), true));
    assert!(e.message.contains("The model is overloaded."), "{}", e.message);

    let e = Decoder::new().event(&ev(r#"{"candidates": [{"content": "#), &mut out).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UpstreamProtocol);
    let e = Decoder::new().event(&ev("[]"), &mut out).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UpstreamProtocol);
}

/// Against the simulator: what `render_request` sends is accepted, and what comes back
/// parses, streamed or not, in JSON mode and with a function call.
#[tokio::test]
async fn round_trip_through_the_simulator() {
    let sim = upstream_sim::Sim::start(upstream_sim::SimConfig {
        output_tokens: 3,
        cached_tokens: 2,
        reasoning_tokens: 4,
        prompt_tokens: Some(10),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let post = |conv: &Conversation, stream: bool| {
        let url = format!("http://{}/v1beta{}", sim.addr(), endpoint_path("models/gemini-test", stream));
        client.post(url).header("content-type", "application/json").body(render_request(conv)).send()
    };
    let usage = Usage { input_uncached: 8, input_cache_read: 2, input_cache_write: 0, output: 3, output_reasoning: 4 };

    let json_conv = Conversation {
        system: vec![text("Answer in JSON.")],
        messages: vec![user(vec![text_part("hello")])],
        response_format: ResponseFormat::JsonObject,
        ..Default::default()
    };
    let r = parse_reply(&post(&json_conv, false).await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(r.parts, vec![text_part(r#"{"answer":"lorem ipsum dolor"}"#)]);
    assert_eq!((r.stop, r.usage, r.model.as_str()), (StopReason::EndTurn, Some(usage), "gemini-test"));

    let body = post(&json_conv, true).await.unwrap().bytes().await.unwrap();
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for item in sse::parse_all(&body) {
        if let sse::Item::Event(ev) = item {
            d.event(&ev, &mut out).unwrap();
        }
    }
    d.finish(&mut out);
    let streamed: String = out
        .iter()
        .filter_map(|d| match d {
            Delta::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(streamed, r#"{"answer":"lorem ipsum dolor"}"#);
    assert_eq!(out[out.len() - 2..], [Delta::Usage(usage), Delta::Stop(StopReason::EndTurn)]);

    let tool_conv = Conversation {
        messages: vec![user(vec![text_part("weather?")])],
        tools: vec![Tool {
            name: "get_weather".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"location": {"type": "string"}}}),
            cache_control: None,
        }],
        ..Default::default()
    };
    let r = parse_reply(&post(&tool_conv, false).await.unwrap().bytes().await.unwrap()).unwrap();
    let [Part::ToolCall { id, name, arguments }] = &r.parts[..] else { panic!("{:?}", r.parts) };
    assert_eq!((name.as_str(), arguments), ("get_weather", &json!({"location": "Paris"})));
    assert_eq!(r.stop, StopReason::ToolUse);

    // The result goes back (name resolved from the call) and the model answers in text.
    let mut answered = tool_conv.clone();
    answered.messages.push(assistant(r.parts.clone()));
    answered.messages.push(user(vec![result(id, vec![text_part("sunny")], false)]));
    let sent: Value = serde_json::from_slice(&render_request(&answered)).unwrap();
    assert_eq!(sent["contents"][2]["parts"][0]["functionResponse"]["name"], "get_weather");
    let r = parse_reply(&post(&answered, false).await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!((r.parts, r.stop), (vec![text_part("lorem ipsum dolor")], StopReason::EndTurn));
}
