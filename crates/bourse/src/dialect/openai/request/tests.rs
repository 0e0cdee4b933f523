//! Tests of [`conversation`] and [`render_request`].

use super::*;
use crate::error::ErrorKind;

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn text(s: &str) -> Part {
    Part::Text(Text { text: s.to_string(), cache_control: None })
}

fn t(s: &str) -> Text {
    Text { text: s.to_string(), cache_control: None }
}

fn result(call_id: &str, s: &str) -> Part {
    Part::ToolResult { call_id: call_id.into(), content: vec![text(s)], is_error: false, cache_control: None }
}

fn call(id: &str, name: &str, arguments: Value) -> Part {
    Part::ToolCall { id: id.into(), name: name.into(), arguments }
}

fn rendered(conv: &Conversation, stream: bool) -> Value {
    serde_json::from_slice(&render_request(conv, "deepseek-chat", stream)).unwrap()
}

/// The OpenAI side of a complete tool loop.
fn tool_loop_body() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "24C"}]},
            {"role": "user", "content": "Which is warmer?"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, "strict": true}}],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "max_completion_tokens": 300,
        "max_tokens": 999,
        "temperature": 0.5,
        "seed": 7,
        "presence_penalty": 0.1
    })
}

// ---------------------------------------------------------------- conversation()

#[test]
fn system_and_developer_messages_go_to_system_in_order() {
    let conv = conversation(&obj(json!({"model": "m", "messages": [
        {"role": "system", "content": "one"},
        {"role": "developer", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": "three"}]},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "late"}
    ]})))
    .unwrap();
    assert_eq!(conv.system, vec![t("one"), t("two"), t("three"), t("late")]);
    let empty = conversation(&obj(json!({"model": "m", "messages": [{"role": "user", "content": null}]}))).unwrap();
    assert!(empty.messages.is_empty());
    assert_eq!(conv.messages, vec![Message { role: Role::User, parts: vec![text("hi")] }]);
}

#[test]
fn images_data_urls_become_base64() {
    let conv = conversation(&obj(json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "image_url", "image_url": {"url": "data:image/svg+xml,%3Csvg%3E"}}
    ]}]})))
    .unwrap();
    let parts = &conv.messages[0].parts;
    assert_eq!(parts[0], text("what is this"));
    assert_eq!(
        parts[1],
        Part::Image {
            source: ImageSource::Base64 { media_type: "image/png".into(), data: "iVBORw0KGgo=".into() },
            cache_control: None
        }
    );
    assert_eq!(
        parts[2],
        Part::Image { source: ImageSource::Url("https://example.com/cat.jpg".into()), cache_control: None }
    );
    assert_eq!(
        parts[3],
        // Not base64: decoded and re-encoded, so every renderer gets plain base64.
        Part::Image {
            source: ImageSource::Base64 { media_type: "image/svg+xml".into(), data: "PHN2Zz4=".into() },
            cache_control: None
        }
    );
}

#[test]
fn tool_loop_becomes_one_user_turn_of_results_then_text() {
    let conv = conversation(&obj(tool_loop_body())).unwrap();
    assert_eq!(conv.system, vec![t("Be brief.")]);
    assert_eq!(
        conv.messages,
        vec![
            Message { role: Role::User, parts: vec![text("Weather in Paris and Rome?")] },
            Message {
                role: Role::Assistant,
                parts: vec![
                    call("call_a", "get_weather", json!({"city": "Paris"})),
                    call("call_b", "get_weather", json!({"city": "Rome"})),
                ]
            },
            Message {
                role: Role::User,
                parts: vec![result("call_a", "18C"), result("call_b", "24C"), text("Which is warmer?")]
            },
        ]
    );
    assert_eq!(
        conv.tools,
        vec![Tool {
            name: "get_weather".into(),
            description: Some("Weather by city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            cache_control: None,
        }]
    );
    assert_eq!(conv.tool_choice, Some(ToolChoice::Any));
    assert_eq!(conv.parallel_tool_calls, Some(false));
    assert_eq!(conv.max_output_tokens, Some(300), "max_completion_tokens wins over max_tokens");
    assert_eq!(conv.temperature, Some(0.5));
}

#[test]
fn assistant_reasoning_refusal_odd_arguments_and_legacy_function_call() {
    let conv = conversation(&obj(json!({"model": "m", "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "reasoning_content": "let me think", "content": [{"type": "text", "text": "A"}, {"type": "refusal", "refusal": "no"}],
         "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": ""}}
         ]},
        {"role": "assistant", "content": "", "function_call": {"name": "old", "arguments": "{\"x\":1}"}},
        {"role": "function", "name": "old", "content": "done"}
    ]})))
    .unwrap();
    assert_eq!(
        conv.messages[1].parts,
        vec![
            Part::Thinking { text: "let me think".into(), signature: None },
            text("A"),
            text("no"),
            call("c1", "f", Value::String("{not json".into())),
            call("c2", "g", json!({})),
        ]
    );
    let Part::ToolCall { id, name, arguments } = &conv.messages[2].parts[0] else { panic!() };
    assert_eq!((name.as_str(), arguments), ("old", &json!({"x": 1})));
    assert_eq!(conv.messages[2].parts.len(), 1, "empty content next to a call is dropped");
    assert_eq!(conv.messages[3].parts, vec![result(id, "done")], "the function result answers the legacy call");
}

#[test]
fn response_formats_tool_choices_and_sampling() {
    let base = |extra: Value| {
        let mut b = obj(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
        b.extend(obj(extra));
        conversation(&b).unwrap()
    };
    assert_eq!(base(json!({})).response_format, ResponseFormat::Text);
    assert_eq!(base(json!({"response_format": {"type": "text"}})).response_format, ResponseFormat::Text);
    assert_eq!(base(json!({"response_format": {"type": "json_object"}})).response_format, ResponseFormat::JsonObject);
    assert_eq!(
        base(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}, "strict": true}}}))
            .response_format,
        ResponseFormat::JsonSchema {
            name: "answer".into(),
            schema: json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
            strict: Some(true)
        }
    );
    assert_eq!(base(json!({"tool_choice": "auto"})).tool_choice, Some(ToolChoice::Auto));
    assert_eq!(base(json!({"tool_choice": "none"})).tool_choice, Some(ToolChoice::None));
    assert_eq!(
        base(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}})).tool_choice,
        Some(ToolChoice::Tool("f".into()))
    );
    let c = base(json!({"max_tokens": 40, "top_p": 0.9, "stop": "END", "reasoning_effort": "high", "user": "u-1",
        "tools": [{"type": "function", "function": {"name": "bare"}}]}));
    assert_eq!(c.max_output_tokens, Some(40));
    assert_eq!(c.top_p, Some(0.9));
    assert_eq!(c.stop, vec!["END".to_string()]);
    assert_eq!(c.thinking, Some(Thinking::Effort("high".into())));
    assert_eq!(c.user.as_deref(), Some("u-1"));
    assert_eq!(c.tools[0].parameters, json!({"type": "object", "properties": {}}));
    assert_eq!(base(json!({"stop": ["a", "b"]})).stop, vec!["a".to_string(), "b".to_string()]);
}

#[test]
fn untranslatable_input_is_a_400_naming_the_parameter() {
    let err = conversation(&obj(json!({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "listen"}, {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}]}
    ]})))
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    assert_eq!(err.param.as_deref(), Some("messages[0].content[1].type"));
    assert!(err.message.contains("input_audio"), "{}", err.message);
    let err = conversation(&obj(json!({"model": "m", "messages": [
        {"role": "user", "content": "x"}, {"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}
    ]})))
    .unwrap_err();
    assert_eq!(err.param.as_deref(), Some("messages[1].content[0].type"));
    let err =
        conversation(&obj(json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}))).unwrap_err();
    assert_eq!(err.param.as_deref(), Some("n"));
    assert!(err.message.contains("n > 1"));
    let err = conversation(&obj(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}))).unwrap_err();
    assert_eq!(err.param.as_deref(), Some("messages[0].tool_call_id"));
}

// ---------------------------------------------------------------- render_request()

#[test]
fn tool_loop_round_trips_through_render_request() {
    let conv = conversation(&obj(tool_loop_body())).unwrap();
    let out = rendered(&conv, true);
    assert_eq!(
        out,
        json!({
            "model": "deepseek-chat",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_b", "content": "24C"},
                {"role": "user", "content": "Which is warmer?"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "max_tokens": 300,
            "temperature": 0.5,
            "stream": true,
            "stream_options": {"include_usage": true}
        })
    );
    // And back: the same conversation.
    assert_eq!(conversation(&obj(out)).unwrap(), conv);
}

#[test]
fn render_request_from_an_anthropic_shaped_conversation() {
    let conv = Conversation {
        system: vec![t("You are terse."), t("Answer in French.")],
        messages: vec![
            Message {
                role: Role::User,
                parts: vec![
                    text("look"),
                    Part::Image {
                        source: ImageSource::Base64 { media_type: "image/jpeg".into(), data: "/9j/4A==".into() },
                        cache_control: Some(json!({"type": "ephemeral"})),
                    },
                ],
            },
            Message {
                role: Role::Assistant,
                parts: vec![
                    Part::Thinking { text: "a cat?".into(), signature: Some("sig".into()) },
                    Part::RedactedThinking { data: "xyz".into() },
                    text("Checking."),
                    call("toolu_1", "lookup", json!({"q": "cat"})),
                ],
            },
            Message {
                role: Role::User,
                // Text before the result in the canonical turn: the tool message still goes first.
                parts: vec![
                    text("also this"),
                    Part::ToolResult {
                        call_id: "toolu_1".into(),
                        content: vec![
                            text("a cat"),
                            Part::Image { source: ImageSource::Url("https://x/y.png".into()), cache_control: None },
                            text("probably"),
                        ],
                        is_error: true,
                        cache_control: None,
                    },
                ],
            },
            Message { role: Role::Assistant, parts: vec![Part::RedactedThinking { data: "only".into() }] },
        ],
        tool_choice: Some(ToolChoice::None),
        top_k: Some(40),
        stop: vec!["\n\nHuman:".into()],
        thinking: Some(Thinking::Budget(4096)),
        user: Some("user-9".into()),
        response_format: ResponseFormat::JsonSchema {
            name: "r".into(),
            schema: json!({"type": "object"}),
            strict: None,
        },
        ..Conversation::default()
    };
    let out = rendered(&conv, false);
    assert_eq!(
        out,
        json!({
            "model": "deepseek-chat",
            "messages": [
                {"role": "system", "content": "You are terse.\n\nAnswer in French."},
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4A=="}}
                ]},
                {"role": "assistant", "content": "Checking.", "reasoning_content": "a cat?", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"cat\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "a cat\n\nprobably"},
                {"role": "user", "content": "also this"}
            ],
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}},
            "stop": ["\n\nHuman:"],
            "user": "user-9",
            "reasoning_effort": "medium"
        }),
        "no tools means no tool_choice; top_k dropped; no stream fields"
    );
    for (budget, effort) in [(1024, "low"), (2048, "low"), (2049, "medium"), (8192, "medium"), (8193, "high")] {
        let c = Conversation { thinking: Some(Thinking::Budget(budget)), ..Conversation::default() };
        assert_eq!(rendered(&c, false)["reasoning_effort"], effort, "budget {budget}");
    }
    let c = Conversation { thinking: Some(Thinking::Adaptive), ..Conversation::default() };
    assert!(rendered(&c, false).get("reasoning_effort").is_none());
}
