use super::*;
use crate::canonical::{Dialect, ImageSource, Message, Needs, Role, Thinking, Tool, ToolChoice};
use crate::error::ErrorKind;

fn err(body: &Value) -> Error {
    parse_request(body.to_string().as_bytes()).unwrap_err()
}

fn rendered(conv: &Conversation, stream: bool) -> Value {
    serde_json::from_slice(&render_request(conv, "claude-x", stream)).unwrap()
}

fn text(t: &str) -> Part {
    Part::Text(Text { text: t.into(), cache_control: None })
}

/// A request the way the official SDK sends one, using every block type.
fn sdk_request() -> Value {
    json!({
        "model": "anthropic/claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Look first.", "signature": "sig-abc"},
                {"type": "redacted_thinking", "data": "ENCRYPTED"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01", "name": "lookup", "input": {"q": "cat"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "a cat"}], "is_error": false},
                {"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}},
            ]},
        ],
        "tools": [{"name": "lookup", "description": "Look things up", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_k": 40,
        "metadata": {"user_id": "u-42"},
        "stream": true,
        "x_future_field": {"anything": [1, 2]},
    })
}

#[test]
fn sdk_shaped_requests_pass_and_lift_what_the_gateway_needs() {
    let req = parse_request(sdk_request().to_string().as_bytes()).unwrap();
    assert_eq!(req.dialect, Dialect::Anthropic);
    assert_eq!(req.model, "anthropic/claude-sonnet-4-5");
    assert!(req.stream && req.include_usage);
    assert_eq!(req.max_output_tokens, Some(1024));
    assert_eq!(req.needs, Needs { tools: true, json_schema: false, vision: true });
    assert!(req.body().contains_key("x_future_field"), "unknown fields are kept");

    // Minimal, string content, no vision/tools; server tools and unknown blocks pass.
    let minimal = json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
    let req = parse_request(minimal.to_string().as_bytes()).unwrap();
    assert_eq!(req.needs, Needs::default());
    assert!(!req.stream && req.include_usage);
    let server = json!({
        "model": "m", "max_tokens": 5, "system": "Be nice.",
        "messages": [
            {"role": "user", "content": [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]},
            {"role": "assistant", "content": [{"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}]},
        ],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        "thinking": {"type": "adaptive"},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        "temperature": null,
    });
    let req = parse_request(server.to_string().as_bytes()).unwrap();
    assert_eq!(req.needs, Needs { tools: true, json_schema: true, vision: false });
    let legacy = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
        "output_format": {"type": "json_schema", "schema": {"type": "object"}}});
    assert!(parse_request(legacy.to_string().as_bytes()).unwrap().needs.json_schema);
    // An image inside a tool result needs vision too.
    let nested = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]}]});
    assert!(parse_request(nested.to_string().as_bytes()).unwrap().needs.vision);
}

/// A change that breaks a valid request body.
type Mutation = Box<dyn Fn(&mut Value)>;

#[test]
fn client_mistakes_name_the_parameter() {
    assert_eq!(parse_request(b"{nope").unwrap_err().kind, ErrorKind::InvalidJson);
    assert_eq!(parse_request(b"[1]").unwrap_err().kind, ErrorKind::InvalidRequest);
    let base = || json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|b| drop(b.as_object_mut().unwrap().remove("max_tokens"))), "max_tokens"),
        (Box::new(|b| b["max_tokens"] = json!(0)), "max_tokens"),
        (Box::new(|b| b["max_tokens"] = json!("10")), "max_tokens"),
        (Box::new(|b| b["max_tokens"] = json!(1.5)), "max_tokens"),
        (Box::new(|b| drop(b.as_object_mut().unwrap().remove("model"))), "model"),
        (Box::new(|b| b["model"] = json!("")), "model"),
        (Box::new(|b| b["model"] = json!(3)), "model"),
        (Box::new(|b| drop(b.as_object_mut().unwrap().remove("messages"))), "messages"),
        (Box::new(|b| b["messages"] = json!([])), "messages"),
        (Box::new(|b| b["messages"] = json!({"role": "user"})), "messages"),
        (Box::new(|b| b["messages"] = json!(["hi"])), "messages[0]"),
        (Box::new(|b| b["messages"][0]["role"] = json!("system")), "messages[0].role"),
        (Box::new(|b| drop(b["messages"][0].as_object_mut().unwrap().remove("role"))), "messages[0].role"),
        (Box::new(|b| drop(b["messages"][0].as_object_mut().unwrap().remove("content"))), "messages[0].content"),
        (Box::new(|b| b["messages"][0]["content"] = json!(7)), "messages[0].content"),
        (Box::new(|b| b["messages"][0]["content"] = json!([{"text": "x"}])), "messages[0].content[0].type"),
        (Box::new(|b| b["messages"][0]["content"] = json!([{"type": "text"}])), "messages[0].content[0].text"),
        (
            Box::new(|b| b["messages"][0]["content"] = json!([{"type": "image", "source": {"type": "gif"}}])),
            "messages[0].content[0].source.type",
        ),
        (
            Box::new(|b| {
                b["messages"][0]["content"] =
                    json!([{"type": "image", "source": {"type": "base64", "media_type": "image/png"}}])
            }),
            "messages[0].content[0].source.data",
        ),
        (
            Box::new(|b| {
                b["messages"][0]["content"] = json!([{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}])
            }),
            "messages[0].content[0].input",
        ),
        (
            Box::new(|b| b["messages"][0]["content"] = json!([{"type": "tool_result", "content": "x"}])),
            "messages[0].content[0].tool_use_id",
        ),
        (
            Box::new(|b| b["messages"][0]["content"] = json!([{"type": "thinking", "thinking": "t"}])),
            "messages[0].content[0].signature",
        ),
        (Box::new(|b| b["system"] = json!(5)), "system"),
        (
            Box::new(|b| b["system"] = json!([{"type": "image", "source": {"type": "url", "url": "u"}}])),
            "system[0].type",
        ),
        (Box::new(|b| b["stream"] = json!("yes")), "stream"),
        (Box::new(|b| b["temperature"] = json!(1.5)), "temperature"),
        (Box::new(|b| b["temperature"] = json!("hot")), "temperature"),
        (Box::new(|b| b["top_p"] = json!(2)), "top_p"),
        (Box::new(|b| b["top_k"] = json!(0.5)), "top_k"),
        (Box::new(|b| b["stop_sequences"] = json!("END")), "stop_sequences"),
        (Box::new(|b| b["stop_sequences"] = json!(["a", 1])), "stop_sequences[1]"),
        (Box::new(|b| b["tools"] = json!({"name": "f"})), "tools"),
        (Box::new(|b| b["tools"] = json!([{"input_schema": {}}])), "tools[0].name"),
        (Box::new(|b| b["tools"] = json!([{"name": "f"}])), "tools[0].input_schema"),
        (Box::new(|b| b["tool_choice"] = json!("auto")), "tool_choice"),
        (Box::new(|b| b["tool_choice"] = json!({"type": "tool"})), "tool_choice.name"),
        (Box::new(|b| b["tool_choice"] = json!({"type": "required"})), "tool_choice.type"),
        (Box::new(|b| b["metadata"] = json!({"user_id": 5})), "metadata.user_id"),
        (Box::new(|b| b["thinking"] = json!({"type": "enabled"})), "thinking.budget_tokens"),
        (Box::new(|b| b["thinking"] = json!({"type": "on"})), "thinking.type"),
        (Box::new(|b| b["output_config"] = json!({"format": {"type": "json_schema"}})), "output_config.format.schema"),
        (Box::new(|b| b["output_format"] = json!("json")), "output_format"),
    ];
    for (mutate, param) in cases {
        let mut body = base();
        mutate(&mut body);
        let e = err(&body);
        assert_eq!(e.kind, ErrorKind::InvalidRequest, "{param}: {body}");
        assert_eq!(e.param.as_deref(), Some(param), "{body}");
        assert!(e.message.starts_with(&format!("{param}: ")), "{}", e.message);
    }
    let mut body = base();
    body.as_object_mut().unwrap().remove("max_tokens");
    assert_eq!(err(&body).message, "max_tokens: Field required");
}

#[test]
fn passthrough_replaces_only_the_model() {
    let mut req = parse_request(sdk_request().to_string().as_bytes()).unwrap();
    let out: Value = serde_json::from_slice(&passthrough_body(&mut req, "claude-sonnet-4-5-20250929")).unwrap();
    let mut expected = sdk_request();
    expected["model"] = json!("claude-sonnet-4-5-20250929");
    assert_eq!(out, expected);
}

#[test]
fn conversation_reads_every_field() {
    let body = sdk_request();
    let conv = conversation(body.as_object().unwrap()).unwrap();
    assert_eq!(conv.system, vec![Text { text: "Be brief.".into(), cache_control: Some(json!({"type": "ephemeral"})) }]);
    assert_eq!(conv.messages.len(), 3);
    assert_eq!(
        conv.messages[0].parts[1],
        Part::Image {
            source: ImageSource::Base64 { media_type: "image/png".into(), data: "iVBORw0KGgo=".into() },
            cache_control: None
        }
    );
    assert_eq!(
        conv.messages[1].parts,
        vec![
            Part::Thinking { text: "Look first.".into(), signature: Some("sig-abc".into()) },
            Part::RedactedThinking { data: "ENCRYPTED".into() },
            text("Let me check."),
            Part::ToolCall { id: "toolu_01".into(), name: "lookup".into(), arguments: json!({"q": "cat"}) },
        ]
    );
    assert_eq!(
        conv.messages[2].parts[0],
        Part::ToolResult {
            call_id: "toolu_01".into(),
            content: vec![text("a cat")],
            is_error: false,
            cache_control: None
        }
    );
    assert_eq!(conv.tools[0].name, "lookup");
    assert_eq!(conv.tools[0].description.as_deref(), Some("Look things up"));
    assert_eq!(conv.tool_choice, Some(ToolChoice::Auto));
    assert_eq!(conv.parallel_tool_calls, Some(false));
    assert_eq!(conv.stop, vec!["END".to_string()]);
    assert_eq!((conv.temperature, conv.top_k, conv.max_output_tokens), (Some(0.5), Some(40), Some(1024)));
    assert_eq!(conv.user.as_deref(), Some("u-42"));

    let mut b = json!({"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]});
    for (thinking, expected) in [
        (json!({"type": "enabled", "budget_tokens": 2048}), Thinking::Budget(2048)),
        (json!({"type": "adaptive"}), Thinking::Adaptive),
        (json!({"type": "disabled"}), Thinking::Disabled),
    ] {
        b["thinking"] = thinking;
        assert_eq!(conversation(b.as_object().unwrap()).unwrap().thinking, Some(expected));
    }
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    for key in ["output_config", "output_format"] {
        let mut b = b.clone();
        let format = json!({"type": "json_schema", "schema": schema});
        b[key] = if key == "output_config" { json!({"format": format}) } else { format };
        assert_eq!(
            conversation(b.as_object().unwrap()).unwrap().response_format,
            ResponseFormat::JsonSchema { name: "response".into(), schema: schema.clone(), strict: None }
        );
    }
}

#[test]
fn conversation_refuses_what_other_dialects_cannot_carry() {
    let with = |content: Value, role: &str| json!({"model": "m", "max_tokens": 9, "messages": [{"role": role, "content": content}]});
    let cases = [
        (
            with(json!([{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]), "assistant"),
            "messages[0].content[0].type",
        ),
        (
            with(
                json!([{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "x"}}]),
                "user",
            ),
            "messages[0].content[0].source.type",
        ),
        (
            with(json!([{"type": "image", "source": {"type": "file", "file_id": "f"}}]), "user"),
            "messages[0].content[0].source.type",
        ),
        (
            with(json!([{"type": "tool_use", "id": "t", "name": "f", "input": {}}]), "user"),
            "messages[0].content[0].type",
        ),
        (with(json!([{"type": "tool_result", "tool_use_id": "t"}]), "assistant"), "messages[0].content[0].type"),
        (
            with(json!([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "search_result"}]}]), "user"),
            "messages[0].content[0].content[0].type",
        ),
    ];
    for (body, param) in cases {
        let e = conversation(body.as_object().unwrap()).unwrap_err();
        assert_eq!((e.kind, e.param.as_deref()), (ErrorKind::InvalidRequest, Some(param)), "{body}");
    }
    let mut body = with(json!("x"), "user");
    body["tools"] = json!([{"type": "web_search_20250305", "name": "web_search"}]);
    assert_eq!(conversation(body.as_object().unwrap()).unwrap_err().param.as_deref(), Some("tools[0].type"));
    // A plain-text document is just text.
    let doc = with(
        json!([{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Doc body"}}]),
        "user",
    );
    assert_eq!(conversation(doc.as_object().unwrap()).unwrap().messages[0].parts, vec![text("Doc body")]);
}

#[test]
fn anthropic_conversation_survives_render_and_reparse() {
    let conv = conversation(sdk_request().as_object().unwrap()).unwrap();
    let body = render_request(&conv, "claude-sonnet-4-5", true);
    // What we render is itself a valid request.
    let req = parse_request(&body).unwrap();
    assert_eq!(req.body()["model"], "claude-sonnet-4-5");
    assert_eq!(req.body()["stream"], true);
    assert_eq!(conversation(req.body()).unwrap(), conv);

    // Thinking settings, a stop sequence list and a text document too.
    let mut b = sdk_request();
    b["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
    b.as_object_mut().unwrap().remove("temperature");
    b.as_object_mut().unwrap().remove("top_k");
    b["max_tokens"] = json!(8192);
    b["stop_sequences"] = json!(["END", "STOP"]);
    let conv = conversation(b.as_object().unwrap()).unwrap();
    let back = conversation(&parse_request(&render_request(&conv, "m", false)).unwrap().body().clone()).unwrap();
    assert_eq!(back, conv);
    assert_eq!(back.stop, vec!["END".to_string(), "STOP".to_string()]);
}

#[test]
fn openai_shaped_conversation_renders_to_alternating_turns() {
    let conv = Conversation {
        system: vec![
            Text { text: "Sys one".into(), cache_control: None },
            Text { text: "Sys two".into(), cache_control: None },
        ],
        messages: vec![
            Message { role: Role::User, parts: vec![text("first")] },
            Message { role: Role::User, parts: vec![text("second")] },
            Message {
                role: Role::Assistant,
                parts: vec![
                    // DeepSeek-style unsigned reasoning cannot go to Anthropic.
                    Part::Thinking { text: "hmm".into(), signature: None },
                    text(""),
                    Part::ToolCall {
                        id: "functions.get_weather:0".into(),
                        name: "get_weather".into(),
                        arguments: json!("{\"city\":\"Paris\"}"),
                    },
                    Part::ToolCall { id: "call_2".into(), name: "get_time".into(), arguments: json!({}) },
                ],
            },
            // OpenAI `tool` messages: one user turn each.
            Message {
                role: Role::User,
                parts: vec![Part::ToolResult {
                    call_id: "functions.get_weather:0".into(),
                    content: vec![text("sunny")],
                    is_error: false,
                    cache_control: None,
                }],
            },
            Message {
                role: Role::User,
                parts: vec![Part::ToolResult {
                    call_id: "call_2".into(),
                    content: vec![text("noon")],
                    is_error: true,
                    cache_control: None,
                }],
            },
            Message { role: Role::User, parts: vec![text("and now?")] },
            Message { role: Role::Assistant, parts: vec![text("   ")] },
            Message {
                role: Role::User,
                parts: vec![Part::Image {
                    source: ImageSource::from_url("data:image/jpeg;base64,/9j/4AAQ"),
                    cache_control: None,
                }],
            },
            Message { role: Role::Assistant, parts: vec![text("Prefill ")] },
        ],
        tools: vec![Tool {
            name: "get_weather".into(),
            description: None,
            parameters: Value::Null,
            cache_control: None,
        }],
        tool_choice: Some(ToolChoice::Any),
        temperature: Some(1.7),
        stop: vec!["\n".into(), "###".into()],
        ..Default::default()
    };
    let out = rendered(&conv, false);
    assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS);
    assert_eq!(out["temperature"], 1.0, "OpenAI's 0..2 is clamped to Anthropic's 0..1");
    assert_eq!(out["stop_sequences"], json!(["###"]), "whitespace-only stop sequences are refused by Anthropic");
    assert_eq!(out["system"], json!([{"type": "text", "text": "Sys one"}, {"type": "text", "text": "Sys two"}]));
    assert_eq!(out["tools"][0]["input_schema"]["type"], "object");
    assert_eq!(out["tool_choice"], json!({"type": "any"}));
    let msgs = out["messages"].as_array().unwrap();
    let roles: Vec<&str> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(msgs[0]["content"], json!([{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]));
    assert_eq!(
        msgs[1]["content"],
        json!([
            {"type": "tool_use", "id": "functions_get_weather_0", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
        ])
    );
    // Tool results first, ids matching their calls; the whitespace-only assistant turn
    // vanished, so the image joined the same user turn.
    assert_eq!(
        msgs[2]["content"],
        json!([
            {"type": "tool_result", "tool_use_id": "functions_get_weather_0", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "noon", "is_error": true},
            {"type": "text", "text": "and now?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
        ])
    );
    assert_eq!(msgs[3]["content"], json!([{"type": "text", "text": "Prefill"}]), "no trailing whitespace in a prefill");
    // And it is a valid Anthropic request.
    parse_request(out.to_string().as_bytes()).unwrap();
}

#[test]
fn results_go_first_in_a_user_turn_even_after_text() {
    let conv = Conversation {
        messages: vec![
            Message { role: Role::User, parts: vec![text("q")] },
            Message {
                role: Role::Assistant,
                parts: vec![Part::ToolCall { id: "a".into(), name: "f".into(), arguments: json!({}) }],
            },
            Message {
                role: Role::User,
                parts: vec![
                    text("note"),
                    Part::ToolResult { call_id: "a".into(), content: vec![], is_error: false, cache_control: None },
                ],
            },
        ],
        ..Default::default()
    };
    let out = rendered(&conv, false);
    assert_eq!(
        out["messages"][2]["content"],
        json!([{"type": "tool_result", "tool_use_id": "a"}, {"type": "text", "text": "note"}])
    );
    assert!(out.get("tools").is_none() && out.get("tool_choice").is_none());
}

#[test]
fn thinking_effort_budget_and_sampling_rules() {
    let base =
        Conversation { messages: vec![Message { role: Role::User, parts: vec![text("x")] }], ..Default::default() };
    for (effort, budget) in [("minimal", 1024), ("low", 1024), ("medium", 4096), ("high", 16384)] {
        let conv = Conversation { thinking: Some(Thinking::Effort(effort.into())), ..base.clone() };
        let out = rendered(&conv, false);
        assert_eq!(out["thinking"], json!({"type": "enabled", "budget_tokens": budget}), "{effort}");
        assert!(out["max_tokens"].as_u64().unwrap() > budget, "{effort}: max_tokens must exceed the budget");
    }
    let conv = Conversation {
        thinking: Some(Thinking::Budget(8000)),
        max_output_tokens: Some(2000),
        temperature: Some(0.2),
        top_k: Some(5),
        top_p: Some(0.5),
        ..base.clone()
    };
    let out = rendered(&conv, false);
    assert_eq!(out["max_tokens"], 10000);
    assert!(out.get("temperature").is_none() && out.get("top_k").is_none() && out.get("top_p").is_none());
    let conv = Conversation { thinking: Some(Thinking::Budget(10)), max_output_tokens: Some(9000), ..base.clone() };
    assert_eq!(rendered(&conv, false)["thinking"]["budget_tokens"], 1024, "Anthropic's minimum budget");
    assert_eq!(rendered(&conv, false)["max_tokens"], 9000);
    for off in [Thinking::Disabled, Thinking::Budget(0), Thinking::Effort("none".into())] {
        let conv = Conversation { thinking: Some(off), temperature: Some(0.3), ..base.clone() };
        let out = rendered(&conv, false);
        assert!(out.get("thinking").is_none());
        assert_eq!(out["temperature"], 0.3);
    }
    let conv = Conversation { thinking: Some(Thinking::Adaptive), ..base.clone() };
    assert_eq!(rendered(&conv, true)["thinking"], json!({"type": "adaptive"}));
    assert_eq!(rendered(&conv, true)["stream"], true);
    let conv = Conversation {
        user: Some("u1".into()),
        parallel_tool_calls: Some(false),
        tools: vec![Tool {
            name: "f".into(),
            description: Some("d".into()),
            parameters: json!({"type": "object"}),
            cache_control: Some(json!({"type": "ephemeral"})),
        }],
        ..base
    };
    let out = rendered(&conv, false);
    assert_eq!(out["metadata"], json!({"user_id": "u1"}));
    assert_eq!(out["tool_choice"], json!({"type": "auto", "disable_parallel_tool_use": true}));
    assert_eq!(
        out["tools"][0],
        json!({"name": "f", "description": "d", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}})
    );
}

#[test]
fn json_mode_forces_the_json_tool() {
    let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]});
    let base = Conversation {
        messages: vec![Message { role: Role::User, parts: vec![text("x")] }],
        response_format: ResponseFormat::JsonSchema { name: "r".into(), schema: schema.clone(), strict: Some(true) },
        ..Default::default()
    };
    let out = rendered(&base, false);
    let tools = out["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["name"], JSON_TOOL);
    assert_eq!(tools[0]["input_schema"], schema);
    assert!(tools[0]["description"].as_str().unwrap().contains("calling this tool"));
    assert_eq!(out["tool_choice"], json!({"type": "tool", "name": JSON_TOOL}));

    let obj = Conversation { response_format: ResponseFormat::JsonObject, ..base.clone() };
    assert_eq!(rendered(&obj, false)["tools"][0]["input_schema"], json!({"type": "object"}));

    let other =
        Tool { name: "search".into(), description: None, parameters: json!({"type": "object"}), cache_control: None };
    let with_tools = Conversation { tools: vec![other], ..base.clone() };
    let out = rendered(&with_tools, false);
    assert_eq!(out["tools"].as_array().unwrap().len(), 2);
    assert_eq!(out["tool_choice"], json!({"type": "any"}));
    let none = Conversation { tool_choice: Some(ToolChoice::None), ..with_tools.clone() };
    assert_eq!(rendered(&none, false)["tool_choice"], json!({"type": "tool", "name": JSON_TOOL}));
    // Anthropic refuses forced tool use with thinking on.
    let thinking = Conversation { thinking: Some(Thinking::Effort("low".into())), ..base };
    assert_eq!(rendered(&thinking, false)["tool_choice"], json!({"type": "auto"}));
    // Likewise without JSON mode, for a client that forces a tool.
    let forced = Conversation {
        response_format: ResponseFormat::Text,
        tool_choice: Some(ToolChoice::Tool("search".into())),
        ..with_tools
    };
    assert_eq!(rendered(&forced, false)["tool_choice"], json!({"type": "tool", "name": "search"}));
    let forced = Conversation { thinking: Some(Thinking::Adaptive), ..forced };
    assert_eq!(rendered(&forced, false)["tool_choice"], json!({"type": "auto"}));
}

fn reply_body(content: Value, stop: &str) -> Vec<u8> {
    json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": content,
        "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20},
    })
    .to_string()
    .into_bytes()
}

#[test]
fn json_mode_reply_turns_the_tool_call_into_text() {
    let body = reply_body(
        json!([
            {"type": "text", "text": "Here you go:"},
            {"type": "tool_use", "id": "toolu_9", "name": JSON_TOOL, "input": {"answer": "42"}},
        ]),
        "tool_use",
    );
    let r = parse_reply(&body, true).unwrap();
    assert_eq!(r.parts, vec![text(r#"{"answer":"42"}"#)]);
    assert_eq!(r.stop, StopReason::EndTurn);
    // Without JSON mode it is just a tool call.
    let r = parse_reply(&body, false).unwrap();
    assert_eq!(r.stop, StopReason::ToolUse);
    assert!(
        matches!(&r.parts[1], Part::ToolCall { id, name, arguments } if id == "toolu_9" && name == JSON_TOOL && arguments["answer"] == "42")
    );
}

#[test]
fn usage_keeps_cache_reads_and_writes_apart_from_input() {
    let u = usage_from(
        &json!({"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20, "service_tier": "standard"}),
    );
    assert_eq!(
        u,
        Usage { input_uncached: 10, input_cache_read: 100, input_cache_write: 20, output: 5, output_reasoning: 0 }
    );
    assert_eq!(u.input_total(), 130, "Anthropic's input_tokens excludes the cache counts");
    assert_eq!(usage_from(&json!({"input_tokens": 3})), Usage { input_uncached: 3, ..Usage::default() });
    assert_eq!(response_usage(&reply_body(json!([]), "end_turn")), Ok(Some(u)));
    assert_eq!(response_usage(b"{\"id\":\"x\"}"), Ok(None));
    assert_eq!(response_usage(b"<html>"), Err(NotJson));

    // An error object under a 2xx is the upstream's error, classified by its type.
    let overloaded = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let e = reported_error(overloaded).expect("an error body");
    assert_eq!((e.status().as_u16(), e.label(), e.message.as_str()), (529, "upstream_5xx", "Overloaded"));
    assert_eq!(parse_reply(overloaded, false).unwrap_err().status().as_u16(), 529);
    let api = reported_error(br#"{"type":"error","error":{"type":"api_error","message":"x"}}"#).unwrap();
    assert_eq!(api.status().as_u16(), 500);
    assert!(reported_error(&reply_body(json!([]), "end_turn")).is_none());
    assert!(reported_error(b"<html>").is_none());

    let reply = Reply {
        id: "chatcmpl-1".into(),
        model: "gpt-x".into(),
        parts: vec![text("hi")],
        stop: StopReason::EndTurn,
        usage: Some(Usage {
            input_uncached: 7,
            input_cache_read: 3,
            input_cache_write: 0,
            output: 4,
            output_reasoning: 6,
        }),
    };
    let out: Value = serde_json::from_slice(&render_reply(&reply)).unwrap();
    assert_eq!(out["id"], "chatcmpl-1", "ids are kept, not invented");
    assert_eq!(
        out["usage"],
        json!({"input_tokens": 7, "output_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3})
    );
}

#[test]
fn replies_parse_and_render_both_ways() {
    let body = reply_body(
        json!([
            {"type": "thinking", "thinking": "Think.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "R"},
            {"type": "text", "text": "Calling.", "citations": null},
            {"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {}},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1]}},
        ]),
        "tool_use",
    );
    let r = parse_reply(&body, false).unwrap();
    assert_eq!((r.id.as_str(), r.model.as_str()), ("msg_1", "claude-x"));
    assert_eq!(
        r.parts,
        vec![
            Part::Thinking { text: "Think.".into(), signature: Some("sig".into()) },
            Part::RedactedThinking { data: "R".into() },
            text("Calling."),
            Part::ToolCall { id: "toolu_1".into(), name: "f".into(), arguments: json!({"a": [1]}) },
        ]
    );
    assert_eq!(r.stop, StopReason::ToolUse);
    let out: Value = serde_json::from_slice(&render_reply(&r)).unwrap();
    assert_eq!(out["type"], "message");
    assert_eq!(out["role"], "assistant");
    assert_eq!(out["content"][3], json!({"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1]}}));
    assert_eq!(parse_reply(&render_reply(&r), false).unwrap(), r);

    for (wire, stop) in [
        ("end_turn", StopReason::EndTurn),
        ("pause_turn", StopReason::EndTurn),
        ("max_tokens", StopReason::MaxTokens),
        ("tool_use", StopReason::ToolUse),
        ("refusal", StopReason::ContentFilter),
    ] {
        assert_eq!(parse_reply(&reply_body(json!([]), wire), false).unwrap().stop, stop, "{wire}");
    }
    let mut v: Value = serde_json::from_slice(&reply_body(json!([]), "stop_sequence")).unwrap();
    v["stop_sequence"] = json!("###");
    let r = parse_reply(v.to_string().as_bytes(), false).unwrap();
    assert_eq!(r.stop, StopReason::StopSequence(Some("###".into())));
    let out: Value = serde_json::from_slice(&render_reply(&r)).unwrap();
    assert_eq!((&out["stop_reason"], &out["stop_sequence"]), (&json!("stop_sequence"), &json!("###")));
    let out: Value =
        serde_json::from_slice(&render_reply(&Reply { usage: None, stop: StopReason::ContentFilter, ..r })).unwrap();
    assert_eq!(out["stop_reason"], "refusal");
    assert_eq!(out["stop_sequence"], Value::Null);
    assert_eq!(out["usage"]["input_tokens"], 0);

    for bad in [
        &b"not json"[..],
        b"[]",
        b"{\"id\":\"x\"}",
        br#"{"content":[{"type":"tool_use","input":{}}]}"#,
        br#"{"content":[1]}"#,
    ] {
        assert_eq!(
            parse_reply(bad, false).unwrap_err().kind,
            ErrorKind::UpstreamProtocol,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn token_count_estimate_covers_every_input() {
    use crate::meter::estimate::tokens;
    let base = Conversation {
        system: vec![Text { text: "You are terse.".into(), cache_control: None }],
        messages: vec![Message { role: Role::User, parts: vec![text("What is the capital of France?")] }],
        ..Default::default()
    };
    let plain = count_tokens(&base, tokens);
    let only_text = crate::meter::estimate::tokens("You are terse.\nWhat is the capital of France?\n");
    assert!(plain >= only_text && plain <= only_text + 10, "{plain} vs {only_text}");

    let long_tool = Tool {
        name: "lookup".into(),
        description: Some("Look up a fact in a large encyclopedia of facts about places and people.".into()),
        parameters: json!({"type": "object", "properties": {"query": {"type": "string"}}}),
        cache_control: None,
    };
    let with_tools = Conversation { tools: vec![long_tool], ..base.clone() };
    assert!(count_tokens(&with_tools, tokens) > plain + 20);

    let mut loop_conv = base.clone();
    loop_conv.messages.push(Message {
        role: Role::Assistant,
        parts: vec![Part::ToolCall {
            id: "t".into(),
            name: "lookup".into(),
            arguments: json!({"query": "capital of France"}),
        }],
    });
    loop_conv.messages.push(Message {
        role: Role::User,
        parts: vec![Part::ToolResult {
            call_id: "t".into(),
            content: vec![text("Paris is the capital.")],
            is_error: false,
            cache_control: None,
        }],
    });
    let with_loop = count_tokens(&loop_conv, tokens);
    assert!(with_loop > plain + 10, "{with_loop} vs {plain}");
    let mut with_image = base;
    with_image.messages[0]
        .parts
        .push(Part::Image { source: ImageSource::Url("https://x/y.png".into()), cache_control: None });
    assert!(count_tokens(&with_image, tokens) >= plain + IMAGE_TOKENS);
}
