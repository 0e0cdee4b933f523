//! End-to-end tests of the Anthropic Messages dialect over real HTTP.

mod common;

use common::{json_of, parse_sse, post, sim, wait_for_stats, SseEvent};
use serde_json::{json, Value};
use upstream_sim::{Failure, Sim, SimConfig};

const HEADERS: &[(&str, &str)] = &[("x-api-key", "sk-ant-test"), ("anthropic-version", "2023-06-01")];

fn messages_body(stream: bool) -> Value {
    json!({
        "model": "claude-test",
        "max_tokens": 256,
        "stream": stream,
        // "Be brief." (9) + "hello world!" (12) = 21 chars -> 6 tokens.
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hello world!"},
                                         {"type": "image", "source": {"type": "base64", "data": "xx"}}]}
        ]
    })
}

fn tool_body(stream: bool) -> Value {
    let mut body = messages_body(stream);
    body["tools"] = json!([
        {"name": "get_weather", "description": "Weather for a city",
         "input_schema": {"type": "object",
                          "properties": {"location": {"type": "string"}, "days": {"type": "integer"}},
                          "required": ["location"]}},
        {"name": "other", "input_schema": {"type": "object", "properties": {}}}
    ]);
    body
}

async fn messages(sim: &Sim, body: &Value) -> Value {
    let response = post(sim, "/v1/messages", HEADERS, body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    json_of(response).await
}

/// Events of a successful stream, with data parsed; checks each `type`
/// matches its event name.
async fn stream_events(sim: &Sim, body: &Value) -> Vec<(String, Value)> {
    let response = post(sim, "/v1/messages", HEADERS, body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    parse_sse(&text)
        .into_iter()
        .map(|SseEvent { name, data }| {
            let name = name.unwrap_or_else(|| panic!("unnamed event: {data}"));
            let data: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(data["type"], name.as_str(), "type of {data}");
            (name, data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn non_stream_shape_and_usage() {
    let sim = sim(SimConfig { output_tokens: 5, cached_tokens: 2, ..SimConfig::default() }).await;
    let v = messages(&sim, &messages_body(false)).await;
    assert_eq!(
        v,
        json!({
            "id": "msg_sim_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [{"type": "text", "text": "lorem ipsum dolor sit amet"}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            // 6 prompt tokens, 2 of them cached: input_tokens excludes the cached part.
            "usage": {"input_tokens": 4, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 2, "output_tokens": 5}
        })
    );

    // Fixed prompt size, cache larger than the prompt is clamped.
    sim.set_config(SimConfig { prompt_tokens: Some(3), cached_tokens: 10, ..SimConfig::default() });
    let v = messages(&sim, &messages_body(false)).await;
    assert_eq!(v["id"], "msg_sim_2");
    assert_eq!(v["usage"]["input_tokens"], 0);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 3);
    assert_eq!(v["usage"]["output_tokens"], 12);

    let recorded = sim.last_request().unwrap();
    assert_eq!(recorded.method, "POST");
    assert_eq!(recorded.path, "/v1/messages");
    assert_eq!(recorded.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(recorded.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(recorded.body, messages_body(false));
    assert_eq!(sim.stats().requests, 2);
}

#[tokio::test]
async fn stream_event_order_and_text() {
    let sim = sim(SimConfig { output_tokens: 5, cached_tokens: 2, ..SimConfig::default() }).await;
    let full = messages(&sim, &messages_body(false)).await;
    let events = stream_events(&sim, &messages_body(true)).await;
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start = &events[0].1["message"];
    assert_eq!(start["id"], "msg_sim_2");
    assert_eq!(start["type"], "message");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["model"], "claude-test");
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["stop_sequence"], Value::Null);
    assert_eq!(start["usage"]["input_tokens"], 4);
    assert_eq!(start["usage"]["cache_read_input_tokens"], 2);
    assert_eq!(
        events[1].1,
        json!({"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}})
    );

    let mut text = String::new();
    for (_, delta) in &events[3..8] {
        assert_eq!(delta["index"], 0);
        assert_eq!(delta["delta"]["type"], "text_delta");
        text.push_str(delta["delta"]["text"].as_str().unwrap());
    }
    assert_eq!(text, full["content"][0]["text"].as_str().unwrap());
    assert_eq!(events[8].1, json!({"type": "content_block_stop", "index": 0}));
    assert_eq!(
        events[9].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": 5}})
    );
    assert_eq!(wait_for_stats(&sim, |s| s.completed_streams == 1).await.completed_streams, 1);
}

#[tokio::test]
async fn tool_use_non_stream_and_stream() {
    let sim = sim(SimConfig::default()).await;
    let v = messages(&sim, &tool_body(false)).await;
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(
        v["content"],
        json!([{"type": "tool_use", "id": "toolu_sim_1", "name": "get_weather",
                "input": {"location": "Paris", "days": 42}}])
    );
    assert_eq!(v["usage"]["output_tokens"], 12);

    let events = stream_events(&sim, &tool_body(true)).await;
    let names = names(&events);
    assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
    assert_eq!(names[names.len() - 3..], ["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "tool_use", "id": "toolu_sim_2", "name": "get_weather", "input": {}})
    );
    let deltas = &events[3..events.len() - 3];
    assert!(deltas.len() > 2, "input streamed in pieces");
    let mut partial = String::new();
    for (name, delta) in deltas {
        assert_eq!(name, "content_block_delta");
        assert_eq!(delta["delta"]["type"], "input_json_delta");
        partial.push_str(delta["delta"]["partial_json"].as_str().unwrap());
    }
    assert_eq!(serde_json::from_str::<Value>(&partial).unwrap(), json!({"location": "Paris", "days": 42}));
    assert_eq!(events[events.len() - 2].1["delta"]["stop_reason"], "tool_use");

    // A named tool choice picks that tool; "none" and a pending tool result answer in text.
    let mut body = tool_body(false);
    body["tool_choice"] = json!({"type": "tool", "name": "other"});
    let v = messages(&sim, &body).await;
    assert_eq!(v["content"][0]["name"], "other");
    assert_eq!(v["content"][0]["input"], json!({}));

    body["tool_choice"] = json!({"type": "none"});
    let v = messages(&sim, &body).await;
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["content"][0]["type"], "text");

    let mut body = tool_body(false);
    body["messages"] = json!([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}
    ]);
    let v = messages(&sim, &body).await;
    assert_eq!(v["stop_reason"], "end_turn");
}

#[tokio::test]
async fn injected_errors_in_anthropic_shape() {
    let sim = sim(SimConfig {
        failure: Failure::Status { status: 529, retry_after: None, error_type: None, code: None, message: None },
        ..SimConfig::default()
    })
    .await;
    for stream in [false, true] {
        let response = post(&sim, "/v1/messages", HEADERS, &messages_body(stream)).await;
        assert_eq!(response.status(), 529);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            json_of(response).await,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "simulated failure"}})
        );
    }

    sim.set_config(SimConfig {
        failure: Failure::Status { status: 429, retry_after: Some(3), error_type: None, code: None, message: None },
        fail_first_n: Some(1),
        ..SimConfig::default()
    });
    let response = post(&sim, "/v1/messages", HEADERS, &messages_body(false)).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    assert_eq!(
        json_of(response).await,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "simulated failure"}})
    );
    // The budget is spent: the next request succeeds.
    let v = messages(&sim, &messages_body(false)).await;
    assert_eq!(v["type"], "message");

    for (status, kind) in [(401, "authentication_error"), (400, "invalid_request_error"), (500, "api_error")] {
        sim.set_config(SimConfig {
            failure: Failure::Status { status, retry_after: None, error_type: None, code: None, message: None },
            ..SimConfig::default()
        });
        let response = post(&sim, "/v1/messages", HEADERS, &messages_body(false)).await;
        assert_eq!(response.status(), status);
        assert_eq!(json_of(response).await["error"]["type"], kind);
    }

    // Invalid requests are 400s in the same shape, not injected failures.
    sim.set_config(SimConfig::default());
    let response = post(&sim, "/v1/messages", HEADERS, &json!({"model": "m"})).await;
    assert_eq!(response.status(), 400);
    let v = json_of(response).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let response = post(&sim, "/v1/messages/batches", HEADERS, &json!({})).await;
    assert_eq!(response.status(), 404);
    assert_eq!(json_of(response).await["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn count_tokens() {
    let sim = sim(SimConfig {
        // Not a model request: injected failures do not apply.
        failure: Failure::Status { status: 529, retry_after: None, error_type: None, code: None, message: None },
        cached_tokens: 2,
        ..SimConfig::default()
    })
    .await;
    let mut body = messages_body(false);
    body.as_object_mut().unwrap().remove("max_tokens");
    body.as_object_mut().unwrap().remove("stream");
    let response = post(&sim, "/v1/messages/count_tokens", HEADERS, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await, json!({"input_tokens": 6}));

    sim.set_config(SimConfig { prompt_tokens: Some(1234), ..SimConfig::default() });
    let response = post(&sim, "/v1/messages/count_tokens", HEADERS, &body).await;
    assert_eq!(json_of(response).await, json!({"input_tokens": 1234}));
    assert_eq!(sim.last_request().unwrap().path, "/v1/messages/count_tokens");
    assert_eq!(sim.stats().requests, 2);
}

#[tokio::test]
async fn drop_mid_stream_never_finishes() {
    let sim = sim(SimConfig { failure: Failure::DropMidStream { after_chunks: 2 }, ..SimConfig::default() }).await;
    let response = post(&sim, "/v1/messages", HEADERS, &messages_body(true)).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    let mut failed = false;
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        match chunk {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the connection is aborted");
    let text = String::from_utf8(received).unwrap();
    assert_eq!(text.matches("event: content_block_delta").count(), 2);
    assert!(!text.contains("message_stop"));
}

#[tokio::test]
async fn ok_with_error_and_truncate_in_anthropic_shape() {
    let sim = sim(SimConfig { failure: Failure::OkWithError { after_chunks: 0 }, ..SimConfig::default() }).await;
    let response = post(&sim, "/v1/messages", HEADERS, &messages_body(false)).await;
    assert_eq!(response.status(), 200);
    let v = json_of(response).await;
    assert_eq!((v["type"].as_str(), v["error"]["type"].as_str()), (Some("error"), Some("api_error")), "{v}");
    let response = post(&sim, "/v1/messages", HEADERS, &messages_body(true)).await;
    let events = parse_sse(&response.text().await.unwrap());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].name.as_deref(), Some("error"));
    assert_eq!(serde_json::from_str::<Value>(&events[0].data).unwrap()["error"]["type"], "overloaded_error");

    // Mid-stream: the error follows the opening events and two deltas.
    sim.set_config(SimConfig { failure: Failure::OkWithError { after_chunks: 2 }, ..SimConfig::default() });
    let response = post(&sim, "/v1/messages", HEADERS, &messages_body(true)).await;
    let names: Vec<String> =
        parse_sse(&response.text().await.unwrap()).into_iter().map(|e| e.name.unwrap_or_default()).collect();
    assert_eq!(
        names,
        ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta", "error"]
    );

    sim.set_config(SimConfig {
        failure: Failure::Truncate { after_chunks: 2, mid_event: false },
        ..SimConfig::default()
    });
    let response = post(&sim, "/v1/messages", HEADERS, &messages_body(true)).await;
    let text = response.text().await.expect("a clean end of the body");
    assert_eq!(text.matches("event: content_block_delta").count(), 2);
    assert!(!text.contains("message_stop") && !text.contains("message_delta"), "{text}");
}

#[tokio::test]
async fn structured_output_answers_json() {
    let sim = sim(SimConfig { output_tokens: 3, ..SimConfig::default() }).await;
    for format_field in ["output_config", "output_format"] {
        let mut body = messages_body(false);
        let format = json!({"type": "json_schema", "schema": {"type": "object"}});
        body[format_field] = if format_field == "output_config" { json!({"format": format}) } else { format };
        let v = messages(&sim, &body).await;
        let text = v["content"][0]["text"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{format_field}: {text}: {e}"));
        assert!(parsed["answer"].is_string(), "{format_field}: {parsed}");
        // Streamed, the pieces join to the same JSON.
        body["stream"] = json!(true);
        let events = stream_events(&sim, &body).await;
        let joined: String =
            events.iter().filter_map(|(_, d)| d["delta"]["text"].as_str()).collect::<Vec<_>>().concat();
        assert!(serde_json::from_str::<Value>(&joined).unwrap()["answer"].is_string(), "{joined}");
    }
    // Without a format, plain text.
    let v = messages(&sim, &messages_body(false)).await;
    assert!(serde_json::from_str::<Value>(v["content"][0]["text"].as_str().unwrap()).is_err());
}
