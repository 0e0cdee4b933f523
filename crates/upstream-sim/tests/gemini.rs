//! End-to-end tests of the Google Gemini dialect over real HTTP.

mod common;

use common::{json_of, parse_sse, post, sim, wait_for_stats};
use serde_json::{json, Value};
use upstream_sim::{Failure, Sim, SimConfig};

const HEADERS: &[(&str, &str)] = &[("x-goog-api-key", "AIza-test")];
const GENERATE: &str = "/v1beta/models/gemini-test:generateContent";
const STREAM: &str = "/v1beta/models/gemini-test:streamGenerateContent?alt=sse";

fn generate_body() -> Value {
    json!({
        // "Be brief." (9) + "hello world!" (12) = 21 chars -> 6 tokens.
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "hello world!"},
                                                 {"inlineData": {"mimeType": "image/png", "data": "xx"}}]}],
        "generationConfig": {"maxOutputTokens": 256}
    })
}

fn tool_body() -> Value {
    let mut body = generate_body();
    body["tools"] = json!([{"functionDeclarations": [
        {"name": "get_weather", "description": "Weather for a city",
         "parameters": {"type": "OBJECT",
                        "properties": {"location": {"type": "STRING"}, "days": {"type": "INTEGER"}}}},
        {"name": "other", "parameters": {"type": "OBJECT", "properties": {}}}
    ]}]);
    body
}

async fn generate(sim: &Sim, body: &Value) -> Value {
    let response = post(sim, GENERATE, HEADERS, body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    json_of(response).await
}

/// Parsed chunks of a successful stream (plain `data:` events, no `[DONE]`).
async fn stream_chunks(sim: &Sim, body: &Value) -> Vec<Value> {
    let response = post(sim, STREAM, HEADERS, body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    parse_sse(&text)
        .into_iter()
        .map(|e| {
            assert_eq!(e.name, None);
            assert_ne!(e.data, "[DONE]");
            serde_json::from_str(&e.data).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn non_stream_shape_and_usage() {
    let sim = sim(SimConfig { output_tokens: 5, cached_tokens: 2, reasoning_tokens: 3, ..SimConfig::default() }).await;
    let v = generate(&sim, &generate_body()).await;
    assert_eq!(
        v,
        json!({
            "candidates": [{
                "content": {"role": "model", "parts": [{"text": "lorem ipsum dolor sit amet"}]},
                "finishReason": "STOP",
                "index": 0
            }],
            // The prompt count includes the cached part; the total includes thoughts.
            "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 5, "totalTokenCount": 14,
                              "cachedContentTokenCount": 2, "thoughtsTokenCount": 3},
            "modelVersion": "gemini-test",
            "responseId": "sim-1"
        })
    );

    // Zero cached and thought counts are omitted, as the real API does.
    sim.set_config(SimConfig { prompt_tokens: Some(100), ..SimConfig::default() });
    let v = generate(&sim, &generate_body()).await;
    assert_eq!(
        v["usageMetadata"],
        json!({"promptTokenCount": 100, "candidatesTokenCount": 12, "totalTokenCount": 112})
    );

    let recorded = sim.last_request().unwrap();
    assert_eq!(recorded.method, "POST");
    assert_eq!(recorded.path, GENERATE);
    assert_eq!(recorded.header("x-goog-api-key"), Some("AIza-test"));
    assert_eq!(recorded.body, generate_body());
    assert_eq!(sim.stats().requests, 2);
}

#[tokio::test]
async fn stream_chunks_and_usage_on_last() {
    let sim = sim(SimConfig { output_tokens: 5, cached_tokens: 2, ..SimConfig::default() }).await;
    let full = generate(&sim, &generate_body()).await;
    let chunks = stream_chunks(&sim, &generate_body()).await;
    assert_eq!(chunks.len(), 5);
    let (last, rest) = chunks.split_last().unwrap();
    for chunk in rest {
        assert!(chunk.get("usageMetadata").is_none(), "usage only on the last chunk: {chunk}");
        assert!(chunk["candidates"][0].get("finishReason").is_none());
    }
    for chunk in &chunks {
        assert_eq!(chunk["candidates"][0]["content"]["role"], "model");
        assert_eq!(chunk["modelVersion"], "gemini-test");
        assert_eq!(chunk["responseId"], "sim-2");
    }
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"], full["usageMetadata"]);
    assert_eq!(
        last["usageMetadata"],
        json!({"promptTokenCount": 6, "candidatesTokenCount": 5, "totalTokenCount": 11, "cachedContentTokenCount": 2})
    );
    let text: String =
        chunks.iter().map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, full["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap());
    assert_eq!(sim.last_request().unwrap().path, "/v1beta/models/gemini-test:streamGenerateContent");
    assert_eq!(wait_for_stats(&sim, |s| s.completed_streams == 1).await.completed_streams, 1);
}

#[tokio::test]
async fn function_call_non_stream_and_stream() {
    let sim = sim(SimConfig::default()).await;
    let v = generate(&sim, &tool_body()).await;
    let want_part = json!({"functionCall": {"name": "get_weather", "args": {"location": "Paris", "days": 42}}});
    assert_eq!(v["candidates"][0]["content"]["parts"], json!([want_part.clone()]));
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 12);

    let chunks = stream_chunks(&sim, &tool_body()).await;
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0]["candidates"][0]["content"]["parts"], json!([want_part]));
    assert!(chunks[0]["usageMetadata"].is_object());

    // allowedFunctionNames picks the function; mode NONE and a pending function response answer in text.
    let mut body = tool_body();
    body["toolConfig"] = json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["other"]}});
    let v = generate(&sim, &body).await;
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["functionCall"], json!({"name": "other", "args": {}}));

    body["toolConfig"] = json!({"functionCallingConfig": {"mode": "NONE"}});
    let v = generate(&sim, &body).await;
    assert!(v["candidates"][0]["content"]["parts"][0]["text"].is_string());

    let mut body = tool_body();
    body["contents"] = json!([
        {"role": "user", "parts": [{"text": "weather?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"t": 20}}}]}
    ]);
    let v = generate(&sim, &body).await;
    assert!(v["candidates"][0]["content"]["parts"][0]["text"].is_string());
}

#[tokio::test]
async fn injected_errors_in_google_shape() {
    let sim = sim(SimConfig {
        failure: Failure::Status { status: 429, retry_after: Some(4), error_type: None, code: None, message: None },
        ..SimConfig::default()
    })
    .await;
    for path in [GENERATE, STREAM] {
        let response = post(&sim, path, HEADERS, &generate_body()).await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "4");
        assert_eq!(
            json_of(response).await,
            json!({"error": {"code": 429, "message": "simulated failure", "status": "RESOURCE_EXHAUSTED"}})
        );
    }

    for (status, rpc) in [(503, "UNAVAILABLE"), (529, "INTERNAL"), (401, "UNAUTHENTICATED")] {
        sim.set_config(SimConfig {
            failure: Failure::Status { status, retry_after: None, error_type: None, code: None, message: None },
            ..SimConfig::default()
        });
        let response = post(&sim, GENERATE, HEADERS, &generate_body()).await;
        assert_eq!(response.status(), status);
        let v = json_of(response).await;
        assert_eq!(v["error"]["code"], status);
        assert_eq!(v["error"]["status"], rpc);
    }

    // Invalid requests are 400 INVALID_ARGUMENT, not injected failures.
    sim.set_config(SimConfig::default());
    let response = post(&sim, GENERATE, HEADERS, &json!({"contents": []})).await;
    assert_eq!(response.status(), 400);
    assert_eq!(json_of(response).await["error"]["status"], "INVALID_ARGUMENT");

    let response = post(&sim, "/v1beta/models/gemini-test:embedEverything", HEADERS, &json!({})).await;
    assert_eq!(response.status(), 404);
    assert_eq!(json_of(response).await["error"]["status"], "NOT_FOUND");
}

#[tokio::test]
async fn ok_with_error_in_google_shape() {
    let sim = sim(SimConfig { failure: Failure::OkWithError { after_chunks: 0 }, ..SimConfig::default() }).await;
    let response = post(&sim, GENERATE, HEADERS, &generate_body()).await;
    assert_eq!(response.status(), 200);
    let v = json_of(response).await;
    assert_eq!((v["error"]["code"].as_u64(), v["error"]["status"].as_str()), (Some(503), Some("UNAVAILABLE")), "{v}");
    let response = post(&sim, STREAM, HEADERS, &generate_body()).await;
    let events = parse_sse(&response.text().await.unwrap());
    assert_eq!(events.len(), 1);
    assert_eq!(serde_json::from_str::<Value>(&events[0].data).unwrap()["error"]["code"], 503);
}

#[tokio::test]
async fn count_tokens_and_openai_alongside() {
    let sim = sim(SimConfig::default()).await;
    // Bare `contents`: "hello world!" -> 3 tokens.
    let contents = json!({"contents": generate_body()["contents"]});
    let response = post(&sim, "/v1beta/models/gemini-test:countTokens", HEADERS, &contents).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await, json!({"totalTokens": 3}));
    // A whole request, system instruction included: 6 tokens.
    let response = post(
        &sim,
        "/v1beta/models/gemini-test:countTokens",
        HEADERS,
        &json!({"generateContentRequest": generate_body()}),
    )
    .await;
    assert_eq!(json_of(response).await, json!({"totalTokens": 6}));

    // The same simulator still speaks OpenAI on its own paths.
    let response = post(
        &sim,
        "/v1/chat/completions",
        &[],
        &json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["object"], "chat.completion");
    assert_eq!(sim.stats().requests, 3);
}

#[tokio::test]
async fn json_mode_answers_a_json_object() {
    let sim = sim(SimConfig { output_tokens: 3, ..SimConfig::default() }).await;
    let mut body = generate_body();
    body["generationConfig"]["responseMimeType"] = json!("application/json");
    body["generationConfig"]["responseJsonSchema"] = json!({"type": "object"});

    let v = generate(&sim, &body).await;
    let text = v["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), json!({"answer": "lorem ipsum dolor"}));
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");

    // Streamed: the same text, split into the opening, each token and the closing.
    let chunks = stream_chunks(&sim, &body).await;
    let pieces: Vec<&str> =
        chunks.iter().map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(pieces, ["{\"answer\":\"", "lorem", " ipsum", " dolor", "\"}"]);
    assert_eq!(pieces.concat(), text);
    assert!(chunks.last().unwrap()["usageMetadata"].is_object());

    // Plain text without the MIME type; a function call wins over JSON mode.
    let v = generate(&sim, &generate_body()).await;
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], "lorem ipsum dolor");
    let mut body = tool_body();
    body["generationConfig"]["responseMimeType"] = json!("application/json");
    let v = generate(&sim, &body).await;
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["functionCall"]["name"], "get_weather");
}
