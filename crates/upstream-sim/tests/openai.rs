//! End-to-end tests of the OpenAI dialect over real HTTP, through reqwest,
//! the same client stack the gateway uses.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{client, sim, wait_for_stats};
use futures_util::StreamExt;
use serde_json::{json, Value};
use upstream_sim::{Failure, Sim, SimConfig, Stats, UsageChunkChoices, UsageStyle};

/// reqwest's `json` feature is off (the dev-dependency is shared with the
/// gateway's build), so these stand in for it.
trait JsonRequest {
    fn json<T: serde::Serialize>(self, value: &T) -> Self;
}

impl JsonRequest for reqwest::RequestBuilder {
    fn json<T: serde::Serialize>(self, value: &T) -> Self {
        self.header("content-type", "application/json").body(serde_json::to_vec(value).unwrap())
    }
}

trait JsonResponse {
    async fn json<T: serde::de::DeserializeOwned>(self) -> reqwest::Result<T>;
}

impl JsonResponse for reqwest::Response {
    async fn json<T: serde::de::DeserializeOwned>(self) -> reqwest::Result<T> {
        let bytes = self.bytes().await?;
        Ok(serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes))))
    }
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "gpt-test",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hello world!"},
                                          {"type": "image_url", "image_url": {"url": "http://x"}}]}
        ]
    })
}

async fn post(sim: &Sim, path: &str, body: &Value) -> reqwest::Response {
    client().post(format!("{}{path}", sim.base_url())).json(body).send().await.unwrap()
}

async fn post_json(sim: &Sim, path: &str, body: &Value) -> Value {
    let response = post(sim, path, body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The `data:` payloads of an SSE body, plus comment lines, in order.
#[derive(Debug)]
enum Event {
    Comment(String),
    Data(String),
}

fn parse_sse(text: &str) -> Vec<Event> {
    assert!(text.ends_with("\n\n") || text.is_empty(), "unterminated event");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            assert!(!e.contains('\n'), "one line per event: {e:?}");
            if let Some(c) = e.strip_prefix(':') {
                Event::Comment(c.trim().to_owned())
            } else {
                Event::Data(e.strip_prefix("data: ").expect("data line").to_owned())
            }
        })
        .collect()
}

/// Parsed chunks of a successful stream; asserts it ends with `[DONE]`.
async fn stream_chunks(sim: &Sim, body: &Value) -> Vec<Value> {
    let response = post(sim, "/chat/completions", body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let mut data: Vec<String> = parse_sse(&text)
        .into_iter()
        .filter_map(|e| match e {
            Event::Data(d) => Some(d),
            Event::Comment(_) => None,
        })
        .collect();
    assert_eq!(data.pop().as_deref(), Some("[DONE]"));
    data.iter().map(|d| serde_json::from_str(d).unwrap()).collect()
}

fn delta_texts(chunks: &[Value], field: &str) -> String {
    chunks.iter().filter_map(|c| c["choices"][0]["delta"][field].as_str()).collect()
}

#[tokio::test]
async fn non_stream_chat_shape_and_usage() {
    let sim = sim(SimConfig { output_tokens: 5, ..SimConfig::default() }).await;
    let v = post_json(&sim, "/chat/completions", &chat_body(false)).await;
    assert_eq!(v["id"], "chatcmpl-sim-1");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-test");
    assert_eq!(v["system_fingerprint"], "fp_upstream_sim");
    assert_eq!(v["service_tier"], "default");
    let choice = &v["choices"][0];
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "lorem ipsum dolor sit amet");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert!(choice["message"].get("reasoning_content").is_none());
    assert!(choice["message"].get("tool_calls").is_none());
    // "Be brief." (9) + "hello world!" (12) = 21 chars -> 6 tokens.
    assert_eq!(
        v["usage"],
        json!({
            "prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        })
    );

    // Configured counts, cached clamped to the prompt, reasoning on top of the answer.
    sim.set_config(SimConfig {
        output_tokens: 3,
        prompt_tokens: Some(100),
        cached_tokens: 500,
        reasoning_tokens: 4,
        ..SimConfig::default()
    });
    let v = post_json(&sim, "/chat/completions", &chat_body(false)).await;
    assert_eq!(v["id"], "chatcmpl-sim-2");
    let usage = &v["usage"];
    assert_eq!(usage["prompt_tokens"], 100);
    assert_eq!(usage["completion_tokens"], 7);
    assert_eq!(usage["total_tokens"], 107);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 100);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 4);
    let message = &v["choices"][0]["message"];
    assert_eq!(message["content"], "lorem ipsum dolor");
    assert_eq!(message["reasoning_content"], "considering the question carefully");
}

#[tokio::test]
async fn deepseek_usage_style() {
    let sim = sim(SimConfig {
        prompt_tokens: Some(50),
        cached_tokens: 20,
        usage_style: UsageStyle::DeepSeek,
        ..SimConfig::default()
    })
    .await;
    let v = post_json(&sim, "/chat/completions", &chat_body(false)).await;
    let usage = &v["usage"];
    assert_eq!(usage["prompt_cache_hit_tokens"], 20);
    assert_eq!(usage["prompt_cache_miss_tokens"], 30);
    assert_eq!(usage["prompt_tokens"], 50);
    assert!(usage.get("prompt_tokens_details").is_none());
}

#[tokio::test]
async fn stream_sequence_without_usage() {
    let sim = sim(SimConfig { output_tokens: 4, ..SimConfig::default() }).await;
    let chunks = stream_chunks(&sim, &chat_body(true)).await;
    // role, 4 content, finish
    assert_eq!(chunks.len(), 6, "{chunks:#?}");
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], "chatcmpl-sim-1");
        assert_eq!(c["model"], "gpt-test");
        assert!(c.get("usage").is_none(), "usage only with include_usage");
        assert_eq!(c["choices"][0]["index"], 0);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": "", "refusal": null}));
    for c in &chunks[1..5] {
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
        assert!(c["choices"][0]["delta"]["content"].is_string());
    }
    assert_eq!(delta_texts(&chunks, "content"), "lorem ipsum dolor sit");
    assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");

    let stats = wait_for_stats(&sim, |s| s.completed_streams == 1).await;
    assert_eq!(stats.completed_streams, 1);
    assert_eq!(stats.cancelled_streams, 0);
}

#[tokio::test]
async fn stream_usage_chunk_when_asked() {
    let sim = sim(SimConfig { output_tokens: 3, prompt_tokens: Some(10), ..SimConfig::default() }).await;
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = stream_chunks(&sim, &body).await;
    assert_eq!(chunks.len(), 6);
    for c in &chunks[..5] {
        assert_eq!(c["usage"], Value::Null);
        assert!(c.get("usage").is_some(), "explicit usage:null");
    }
    let last = &chunks[5];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 10);
    assert_eq!(last["usage"]["completion_tokens"], 3);
    assert_eq!(last["usage"]["total_tokens"], 13);
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    for (shape, check) in [(UsageChunkChoices::Null, Some(Value::Null)), (UsageChunkChoices::Absent, None)] {
        sim.set_config(SimConfig { usage_chunk_choices: shape, ..SimConfig::default() });
        let chunks = stream_chunks(&sim, &body).await;
        let last = chunks.last().unwrap();
        assert!(last["usage"].is_object());
        assert_eq!(last.get("choices").cloned(), check, "{shape:?}");
    }

    // include_usage: false is the same as not asking.
    body["stream_options"] = json!({"include_usage": false});
    let chunks = stream_chunks(&sim, &body).await;
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn stream_reasoning_and_think_tags() {
    let sim = sim(SimConfig { output_tokens: 2, reasoning_tokens: 3, think_tags: true, ..SimConfig::default() }).await;
    let chunks = stream_chunks(&sim, &chat_body(true)).await;
    assert_eq!(delta_texts(&chunks, "reasoning_content"), "considering the question");
    // All reasoning deltas come before any content delta.
    let first_content = chunks
        .iter()
        .position(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|s| !s.is_empty()))
        .unwrap();
    let last_reasoning =
        chunks.iter().rposition(|c| c["choices"][0]["delta"].get("reasoning_content").is_some()).unwrap();
    assert!(last_reasoning < first_content);
    let content = delta_texts(&chunks, "content");
    assert_eq!(content, "<think>some reasoning</think>\n\nlorem ipsum");
    let think_deltas: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|s| !s.is_empty())
        .take(3)
        .collect();
    assert_eq!(think_deltas, ["<think>", "some reasoning", "</think>\n\n"]);

    let v = post_json(&sim, "/chat/completions", &chat_body(false)).await;
    assert_eq!(v["choices"][0]["message"]["content"], content);
    assert_eq!(v["choices"][0]["message"]["reasoning_content"], "considering the question");
    assert_eq!(v["usage"]["completion_tokens"], 5);
}

fn tool_body(stream: bool) -> Value {
    let mut body = chat_body(stream);
    body["tools"] = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                           "days": {"type": "integer"}},
            "required": ["location"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    ]);
    body
}

#[tokio::test]
async fn tool_call_non_stream() {
    let sim = sim(SimConfig::default()).await;
    let v = post_json(&sim, "/chat/completions", &tool_body(false)).await;
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["id"], "call_sim_1");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"location": "Paris", "unit": "celsius", "days": 42}));

    // A named tool_choice picks that tool.
    let mut body = tool_body(false);
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_time"}});
    let v = post_json(&sim, "/chat/completions", &body).await;
    let call = &v["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "get_time");
    assert_eq!(call["arguments"], "{}");

    // Once the tool has answered, the model answers in text.
    let mut body = tool_body(false);
    body["messages"].as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_sim_1", "type": "function",
               "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]}),
        json!({"role": "tool", "tool_call_id": "call_sim_1", "content": "sunny"}),
    ]);
    let v = post_json(&sim, "/chat/completions", &body).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"]["content"].is_string());

    // tool_choice "none" disables tools.
    let mut body = tool_body(false);
    body["tool_choice"] = json!("none");
    let v = post_json(&sim, "/chat/completions", &body).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn tool_call_stream_deltas_reassemble() {
    let sim = sim(SimConfig::default()).await;
    let chunks = stream_chunks(&sim, &tool_body(true)).await;
    let head = &chunks[0]["choices"][0]["delta"];
    assert_eq!(head["role"], "assistant");
    let first = &head["tool_calls"][0];
    assert_eq!(first["index"], 0);
    assert_eq!(first["id"], "call_sim_1");
    assert_eq!(first["type"], "function");
    assert_eq!(first["function"]["name"], "get_weather");
    assert_eq!(first["function"]["arguments"], "");

    let fragments: Vec<&str> = chunks[1..]
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert!(fragments.len() >= 3, "{fragments:?}");
    for c in &chunks[1..] {
        let call = &c["choices"][0]["delta"]["tool_calls"][0];
        if call.is_object() {
            assert_eq!(call["index"], 0);
            assert!(call.get("id").is_none() && call["function"].get("name").is_none());
        }
    }
    let args: Value = serde_json::from_str(&fragments.concat()).unwrap();
    assert_eq!(args["location"], "Paris");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(delta_texts(&chunks, "content"), "");

    // Even a one-token budget spreads arguments over three deltas.
    sim.set_config(SimConfig { output_tokens: 1, ..SimConfig::default() });
    let chunks = stream_chunks(&sim, &tool_body(true)).await;
    let fragments = chunks.iter().skip(1).filter(|c| c["choices"][0]["delta"].get("tool_calls").is_some()).count();
    assert_eq!(fragments, 3);
}

#[tokio::test]
async fn json_mode_content_is_json() {
    let sim = sim(SimConfig { output_tokens: 4, ..SimConfig::default() }).await;
    for format in [
        json!({"type": "json_object"}),
        json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}),
    ] {
        let mut body = chat_body(false);
        body["response_format"] = format;
        let v = post_json(&sim, "/chat/completions", &body).await;
        let content: Value = serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
        assert_eq!(content, json!({"answer": "lorem ipsum dolor sit"}));

        body["stream"] = json!(true);
        let chunks = stream_chunks(&sim, &body).await;
        let streamed: Value = serde_json::from_str(&delta_texts(&chunks, "content")).unwrap();
        assert_eq!(streamed, content);
        assert!(chunks.len() > 4, "streamed in pieces");
    }
}

#[tokio::test]
async fn keepalive_comments_and_ttft() {
    let sim = sim(SimConfig { keepalive_comments: 3, ttft_ms: 500, output_tokens: 2, ..SimConfig::default() }).await;
    let started = Instant::now();
    let response = post(&sim, "/chat/completions", &chat_body(true)).await;
    // Headers are not held back by the time to first token.
    assert!(started.elapsed() < Duration::from_millis(400));
    let text = response.text().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    let events = parse_sse(&text);
    for e in &events[..3] {
        assert!(matches!(e, Event::Comment(c) if c == "keep-alive"), "{e:?}");
    }
    assert!(events[3..].iter().all(|e| matches!(e, Event::Data(_))));
    assert!(text.starts_with(": keep-alive\n\n: keep-alive\n\n: keep-alive\n\ndata: "));

    // Non-streaming: blank lines, then the JSON object.
    let started = Instant::now();
    let response = post(&sim, "/chat/completions", &chat_body(false)).await;
    assert!(started.elapsed() < Duration::from_millis(400));
    let text = response.text().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(text.starts_with("\n\n\n{"), "{text:?}");
    let v: Value = serde_json::from_str(text.trim_start()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "lorem ipsum");

    // Without keep-alives a non-streaming answer waits whole.
    sim.set_config(SimConfig { ttft_ms: 200, ..SimConfig::default() });
    let started = Instant::now();
    let response = post(&sim, "/chat/completions", &chat_body(false)).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    let declared = response.headers()["content-length"].clone();
    assert_eq!(declared, response.text().await.unwrap().len().to_string());
}

#[tokio::test]
async fn chunk_delay_spaces_chunks() {
    let sim = sim(SimConfig { chunk_delay_ms: 40, output_tokens: 6, ..SimConfig::default() }).await;
    let started = Instant::now();
    let chunks = stream_chunks(&sim, &chat_body(true)).await;
    assert_eq!(chunks.len(), 8);
    // 5 gaps between 6 content chunks.
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn paced_chunks_match_unpaced() {
    // Paced plain answers are written chunk by chunk as they are sent; the chunks must be
    // the same as those of an unpaced answer built up front (but for id and created).
    let strip = |chunks: Vec<Value>| -> Vec<Value> {
        chunks
            .into_iter()
            .map(|mut c| {
                let o = c.as_object_mut().unwrap();
                o.remove("id");
                o.remove("created");
                c
            })
            .collect()
    };
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    for (output_tokens, include_usage) in [(30, true), (30, false), (1, true), (2, false)] {
        if !include_usage {
            body.as_object_mut().unwrap().remove("stream_options");
        }
        let sim = sim(SimConfig { output_tokens, chunk_delay_ms: 1, ..SimConfig::default() }).await;
        let paced = strip(stream_chunks(&sim, &body).await);
        sim.set_config(SimConfig { output_tokens, ..SimConfig::default() });
        let unpaced = strip(stream_chunks(&sim, &body).await);
        assert_eq!(paced, unpaced, "{output_tokens} tokens, include_usage {include_usage}");
        let stats = wait_for_stats(&sim, |s| s.completed_streams == 2).await;
        assert_eq!(stats.completed_streams, 2);
    }
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
}

#[tokio::test]
async fn stamp_chunks_adds_send_time() {
    // Off by default: no extra member.
    let sim = sim(SimConfig { output_tokens: 2, ..SimConfig::default() }).await;
    let chunks = stream_chunks(&sim, &chat_body(true)).await;
    assert!(chunks.iter().all(|c| c.get("sim_sent_us").is_none()));

    // On: every chunk (role, content, finish, usage) carries its own send time, in order,
    // the paced ones at least the pacing apart; non-streaming answers are untouched.
    sim.set_config(SimConfig { stamp_chunks: true, chunk_delay_ms: 30, output_tokens: 4, ..SimConfig::default() });
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let before = unix_micros();
    let chunks = stream_chunks(&sim, &body).await;
    let after = unix_micros();
    assert_eq!(chunks.len(), 7, "{chunks:#?}");
    let stamps: Vec<u64> = chunks.iter().map(|c| c["sim_sent_us"].as_u64().expect("stamp")).collect();
    assert!(stamps.iter().all(|&t| before <= t && t <= after), "{stamps:?} not in [{before}, {after}]");
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    // Content chunks 1..=4: three paced gaps.
    for w in stamps[1..5].windows(2) {
        assert!(w[1] - w[0] >= 30_000, "{stamps:?}");
    }
    assert_eq!(delta_texts(&chunks, "content"), "lorem ipsum dolor sit");
    assert!(chunks[6]["usage"].is_object());
    let v = post_json(&sim, "/chat/completions", &chat_body(false)).await;
    assert!(v.get("sim_sent_us").is_none());

    // Unpaced chunks share one frame and one send time.
    sim.set_config(SimConfig { stamp_chunks: true, output_tokens: 3, ..SimConfig::default() });
    let chunks = stream_chunks(&sim, &chat_body(true)).await;
    let first = chunks[0]["sim_sent_us"].as_u64().unwrap();
    assert!(chunks.iter().all(|c| c["sim_sent_us"].as_u64() == Some(first)));
}

#[tokio::test]
async fn status_failure() {
    let sim = sim(SimConfig {
        failure: Failure::Status { status: 429, retry_after: Some(7), error_type: None, code: None, message: None },
        ..SimConfig::default()
    })
    .await;
    for stream in [false, true] {
        let response = post(&sim, "/chat/completions", &chat_body(stream)).await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(response.headers()["content-type"], "application/json");
        let v: Value = response.json().await.unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "simulated failure", "type": "rate_limit_error",
                             "param": null, "code": null}})
        );
    }
    sim.set_config(SimConfig {
        failure: Failure::Status {
            status: 503,
            retry_after: None,
            error_type: Some("overloaded".into()),
            code: Some("busy".into()),
            message: Some("try later".into()),
        },
        ..SimConfig::default()
    });
    let response = post(&sim, "/embeddings", &json!({"model": "e", "input": "x"})).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_none());
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["error"]["type"], "overloaded");
    assert_eq!(v["error"]["code"], "busy");
    assert_eq!(v["error"]["message"], "try later");

    // Failures are for model endpoints: listing models still works.
    let response = client().get(format!("{}/models", sim.base_url())).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

/// `echo_credentials`: an injected error quotes the credential headers it received, in every
/// dialect, and so does a malformed payload; the same error without it quotes nothing.
#[tokio::test]
async fn status_failures_can_echo_the_credentials() {
    let failure = Failure::Status { status: 401, retry_after: None, error_type: None, code: None, message: None };
    let sim = sim(SimConfig { failure: failure.clone(), echo_credentials: true, ..SimConfig::default() }).await;
    let send = |path: &str, header: &'static str, value: &'static str, body: Value| {
        let url = format!("http://{}{path}", sim.addr());
        async move {
            let r = client().post(url).header(header, value).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 401);
            r.json::<Value>().await.unwrap()
        }
    };
    let openai = send("/v1/chat/completions", "authorization", "Bearer sk-one", chat_body(false)).await;
    assert_eq!(openai["error"]["message"], "simulated failure (request credentials: authorization: Bearer sk-one)");
    let anthropic = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let anthropic = send("/v1/messages", "x-api-key", "sk-two", anthropic).await;
    assert_eq!(anthropic["error"]["message"], "simulated failure (request credentials: x-api-key: sk-two)");
    let gemini = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let gemini = send("/v1beta/models/m:generateContent", "x-goog-api-key", "sk-three", gemini).await;
    assert_eq!(gemini["error"]["message"], "simulated failure (request credentials: x-goog-api-key: sk-three)");
    sim.set_config(SimConfig { failure, ..SimConfig::default() });
    let quiet = send("/v1/chat/completions", "authorization", "Bearer sk-one", chat_body(false)).await;
    assert_eq!(quiet["error"]["message"], "simulated failure");

    // A malformed payload quotes them too: the body, or the stream's broken event.
    sim.set_config(SimConfig { failure: Failure::MalformedJson, echo_credentials: true, ..SimConfig::default() });
    let url = format!("{}/chat/completions", sim.base_url());
    for stream in [false, true] {
        let r = client().post(&url).header("authorization", "Bearer sk-four").json(&chat_body(stream)).send().await;
        let text = r.unwrap().text().await.unwrap();
        assert!(text.contains("\"request credentials: authorization: Bearer sk-four\""), "{text}");
        if stream {
            let broken = text.split("\n\n").find(|e| e.contains("sk-four")).unwrap();
            assert!(broken.starts_with("data: {\"id\": \"chatcmpl-sim-broken\""), "{broken}");
            assert!(serde_json::from_str::<Value>(&broken["data: ".len()..]).is_err(), "{broken}");
        } else {
            assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
        }
    }
}

#[tokio::test]
async fn close_failure_gives_no_response() {
    let sim = sim(SimConfig { failure: Failure::Close, ..SimConfig::default() }).await;
    let err =
        client().post(format!("{}/chat/completions", sim.base_url())).json(&chat_body(false)).send().await.unwrap_err();
    assert!(err.status().is_none());
    assert!(!err.is_timeout());
    // The request was read before hanging up.
    assert_eq!(sim.stats().requests, 1);
    assert_eq!(sim.last_request().unwrap().body["model"], "gpt-test");
}

#[tokio::test]
async fn stall_failure_never_answers() {
    let sim = sim(SimConfig { failure: Failure::Stall, ..SimConfig::default() }).await;
    let err = client()
        .post(format!("{}/chat/completions", sim.base_url()))
        .timeout(Duration::from_millis(300))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(sim.stats().requests, 1);
}

#[tokio::test]
async fn drop_mid_stream_failure() {
    let sim = sim(SimConfig { failure: Failure::DropMidStream { after_chunks: 2 }, ..SimConfig::default() }).await;
    let response = post(&sim, "/chat/completions", &chat_body(true)).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    let mut failed = false;
    while let Some(item) = body.next().await {
        match item {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the stream must end in a transport error");
    let text = String::from_utf8(received).unwrap();
    let data: Vec<Value> = parse_sse(&text)
        .into_iter()
        .map(|e| match e {
            Event::Data(d) => serde_json::from_str(&d).unwrap(),
            Event::Comment(c) => panic!("unexpected comment {c}"),
        })
        .collect();
    // role chunk + 2 content chunks, no finish, no usage, no [DONE]
    assert_eq!(data.len(), 3, "{text}");
    assert_eq!(delta_texts(&data, "content"), "lorem ipsum");
    assert!(data.iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
    // A deliberate drop is neither a completed nor a cancelled stream.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sim.stats().completed_streams, 0);
    assert_eq!(sim.stats().cancelled_streams, 0);

    // Non-streaming: headers, then a truncated body.
    let response = post(&sim, "/chat/completions", &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err());
}

#[tokio::test]
async fn stall_mid_stream_failure() {
    let sim = sim(SimConfig { failure: Failure::StallMidStream { after_chunks: 2 }, ..SimConfig::default() }).await;
    let response = post(&sim, "/chat/completions", &chat_body(true)).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    // The role chunk and two content chunks arrive, then nothing.
    while tokio::time::timeout(Duration::from_millis(300), async {
        let bytes = body.next().await.expect("the body stays open").unwrap();
        received.extend_from_slice(&bytes);
    })
    .await
    .is_ok()
    {}
    let text = String::from_utf8(received).unwrap();
    assert_eq!(parse_sse(&text).len(), 3, "{text}");
    assert!(!text.contains("finish_reason\":\"stop"), "{text}");
    drop(body);

    // Non-streaming: headers, part of the body, then nothing.
    let response = post(&sim, "/chat/completions", &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    assert!(tokio::time::timeout(Duration::from_millis(300), response.bytes()).await.is_err());
}

#[tokio::test]
async fn truncate_failure_ends_cleanly_mid_answer() {
    let at_boundary = Failure::Truncate { after_chunks: 2, mid_event: false };
    let sim = sim(SimConfig { failure: at_boundary, ..SimConfig::default() }).await;
    let response = post(&sim, "/chat/completions", &chat_body(true)).await;
    let text = response.text().await.expect("a clean end of the body");
    let data: Vec<Value> = parse_sse(&text)
        .into_iter()
        .map(|e| match e {
            Event::Data(d) => serde_json::from_str(&d).unwrap(),
            Event::Comment(c) => panic!("unexpected comment {c}"),
        })
        .collect();
    assert_eq!(delta_texts(&data, "content"), "lorem ipsum");
    assert!(data.iter().all(|c| c["choices"][0]["finish_reason"].is_null()), "{text}");

    sim.set_config(SimConfig {
        failure: Failure::Truncate { after_chunks: 2, mid_event: true },
        ..SimConfig::default()
    });
    let response = post(&sim, "/chat/completions", &chat_body(true)).await;
    let text = response.text().await.expect("a clean end of the body");
    let (whole, part) = text.rsplit_once("\n\n").unwrap();
    assert_eq!(whole.matches("data: ").count(), 3, "{text}");
    assert!(part.starts_with("data: {") && serde_json::from_str::<Value>(&part[6..]).is_err(), "{part:?}");

    // Non-streaming: a cleanly ended body that is half the answer.
    let response = post(&sim, "/chat/completions", &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("a clean end of the body");
    assert!(text.starts_with('{') && serde_json::from_str::<Value>(&text).is_err(), "{text}");
}

#[tokio::test]
async fn wrong_content_type_and_ok_with_error_failures() {
    let sim = sim(SimConfig { failure: Failure::WrongContentType, ..SimConfig::default() }).await;
    for stream in [false, true] {
        let response = post(&sim, "/chat/completions", &chat_body(stream)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
        assert!(response.text().await.unwrap().starts_with("<!DOCTYPE html>"));
    }

    sim.set_config(SimConfig { failure: Failure::OkWithError { after_chunks: 0 }, ..SimConfig::default() });
    let response = post(&sim, "/chat/completions", &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error", "{v}");
    let response = post(&sim, "/chat/completions", &chat_body(true)).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let events = parse_sse(&text);
    assert_eq!(events.len(), 1, "the error is the only event: {text}");
    let Event::Data(d) = &events[0] else { panic!("{text}") };
    assert_eq!(serde_json::from_str::<Value>(d).unwrap()["error"]["type"], "server_error");

    // After two content chunks, the error ends the stream.
    sim.set_config(SimConfig { failure: Failure::OkWithError { after_chunks: 2 }, ..SimConfig::default() });
    let response = post(&sim, "/chat/completions", &chat_body(true)).await;
    let text = response.text().await.unwrap();
    let data: Vec<Value> = parse_sse(&text)
        .into_iter()
        .map(|e| match e {
            Event::Data(d) => serde_json::from_str(&d).unwrap(),
            Event::Comment(c) => panic!("unexpected comment {c}"),
        })
        .collect();
    assert_eq!(data.len(), 4, "{text}");
    assert_eq!(delta_texts(&data[..3], "content"), "lorem ipsum");
    assert!(data[3]["error"].is_object(), "{text}");
}

#[tokio::test]
async fn malformed_json_failure() {
    let sim = sim(SimConfig { failure: Failure::MalformedJson, output_tokens: 3, ..SimConfig::default() }).await;
    let response = post(&sim, "/chat/completions", &chat_body(false)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

    let response = post(&sim, "/chat/completions", &chat_body(true)).await;
    let text = response.text().await.unwrap();
    let data: Vec<String> = parse_sse(&text)
        .into_iter()
        .filter_map(|e| match e {
            Event::Data(d) => Some(d),
            Event::Comment(_) => None,
        })
        .collect();
    let bad: Vec<&String> =
        data.iter().filter(|d| *d != "[DONE]" && serde_json::from_str::<Value>(d).is_err()).collect();
    assert_eq!(bad.len(), 1, "{data:?}");
    assert_eq!(data.last().unwrap(), "[DONE]");
    // The rest of the stream is intact.
    let good: Vec<Value> = data.iter().filter_map(|d| serde_json::from_str(d).ok()).collect();
    assert_eq!(delta_texts(&good, "content"), "lorem ipsum dolor");
}

#[tokio::test]
async fn fail_first_n_then_succeed() {
    let failing = SimConfig {
        failure: Failure::Status { status: 500, retry_after: None, error_type: None, code: None, message: None },
        fail_first_n: Some(2),
        ..SimConfig::default()
    };
    let sim = sim(failing.clone()).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(post(&sim, "/chat/completions", &chat_body(false)).await.status().as_u16());
    }
    assert_eq!(statuses, [500, 500, 200, 200]);
    let err: Value = {
        sim.set_config(failing);
        post(&sim, "/chat/completions", &chat_body(false)).await.json().await.unwrap()
    };
    assert_eq!(err["error"]["type"], "server_error");
    // Setting the config restarted the budget: one failure was used above.
    assert_eq!(post(&sim, "/chat/completions", &chat_body(false)).await.status(), 500);
    assert_eq!(post(&sim, "/chat/completions", &chat_body(false)).await.status(), 200);
}

#[tokio::test]
async fn invalid_requests_get_400() {
    let sim = sim(SimConfig::default()).await;
    let response = client()
        .post(format!("{}/chat/completions", sim.base_url()))
        .header("content-type", "application/json")
        .body("{\"model\": \"x\", \"messages\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].is_string());
    assert_eq!(v["error"]["param"], Value::Null);

    let response = post(&sim, "/chat/completions", &json!({"messages": []})).await;
    assert_eq!(response.status(), 400);
    let response = post(&sim, "/embeddings", &json!({"model": "e", "input": []})).await;
    assert_eq!(response.status(), 400);
    let response = post(&sim, "/embeddings", &json!({"model": "e", "input": "x", "encoding_format": "hex"})).await;
    assert_eq!(response.status(), 400);
    // The last request is recorded even when it is rejected.
    assert_eq!(sim.last_request().unwrap().body["encoding_format"], "hex");
}

#[tokio::test]
async fn embeddings_float_and_base64_agree() {
    let sim = sim(SimConfig { embedding_dims: 16, ..SimConfig::default() }).await;
    let input = json!(["The quick brown fox", "jumps"]);
    let float = post_json(&sim, "/embeddings", &json!({"model": "emb", "input": input})).await;
    let b64 =
        post_json(&sim, "/embeddings", &json!({"model": "emb", "input": input, "encoding_format": "base64"})).await;
    assert_eq!(float["object"], "list");
    assert_eq!(float["model"], "emb");
    // 19 + 5 = 24 chars -> 6 tokens
    assert_eq!(float["usage"], json!({"prompt_tokens": 6, "total_tokens": 6}));
    let data = float["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, (f, b)) in data.iter().zip(b64["data"].as_array().unwrap()).enumerate() {
        assert_eq!(f["object"], "embedding");
        assert_eq!(f["index"], i);
        assert_eq!(b["index"], i);
        let floats: Vec<f32> = serde_json::from_value(f["embedding"].clone()).unwrap();
        assert_eq!(floats.len(), 16);
        let bytes = base64::engine::general_purpose::STANDARD.decode(b["embedding"].as_str().unwrap()).unwrap();
        let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(floats, decoded);
        let norm: f32 = floats.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);

    // Deterministic: the same text embeds the same, wherever it appears.
    let single = post_json(&sim, "/embeddings", &json!({"model": "emb", "input": "jumps"})).await;
    assert_eq!(single["data"][0]["embedding"], data[1]["embedding"]);
    assert_eq!(single["usage"]["prompt_tokens"], 2);

    // Token-id input and the `dimensions` parameter.
    let tokens = post_json(&sim, "/embeddings", &json!({"model": "emb", "input": [1, 2, 3], "dimensions": 4})).await;
    assert_eq!(tokens["data"].as_array().unwrap().len(), 1);
    assert_eq!(tokens["data"][0]["embedding"].as_array().unwrap().len(), 4);
    assert_eq!(tokens["usage"]["prompt_tokens"], 3);
    let batches = post_json(&sim, "/embeddings", &json!({"model": "emb", "input": [[1, 2], [3, 4, 5]]})).await;
    assert_eq!(batches["data"].as_array().unwrap().len(), 2);
    assert_eq!(batches["usage"]["prompt_tokens"], 5);
}

#[tokio::test]
async fn models_list_and_retrieve() {
    let sim = sim(SimConfig { models: vec!["alpha".into(), "org/beta".into()], ..SimConfig::default() }).await;
    let http = client();
    let list: Value = http.get(format!("{}/models", sim.base_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["id"], "alpha");
    assert_eq!(data[0]["object"], "model");
    assert_eq!(data[0]["owned_by"], "upstream-sim");
    assert!(data[0]["created"].is_u64());
    assert_eq!(data[1]["id"], "org/beta");

    let one: Value =
        http.get(format!("{}/models/org/beta", sim.base_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(one, data[1]);

    let missing = http.get(format!("{}/models/gamma", sim.base_url())).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let v: Value = missing.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn unknown_routes_stats_and_last_request() {
    let sim = sim(SimConfig::default()).await;
    assert_eq!(sim.last_request(), None);
    let http = client();
    let response = http
        .post(format!("{}/responses", sim.base_url()))
        .header("X-Custom", "Yes")
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("/v1/responses"));

    let recorded = sim.last_request().unwrap();
    assert_eq!(recorded.method, "POST");
    assert_eq!(recorded.path, "/v1/responses");
    assert_eq!(recorded.body, json!({"a": 1}));
    assert_eq!(recorded.header("x-custom"), Some("Yes"));
    assert!(recorded.headers.iter().any(|(n, v)| n == "x-custom" && v == "Yes"));
    assert!(recorded.headers.iter().all(|(n, _)| *n == n.to_lowercase()));

    // Outside /v1: 404, not counted, not recorded.
    let response = http.get(format!("http://{}/health", sim.addr())).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(sim.stats().requests, 1);
    assert_eq!(sim.last_request().unwrap().path, "/v1/responses");

    let response = http.get(format!("{}/chat/completions", sim.base_url())).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(sim.stats().requests, 2);
    assert_eq!(sim.last_request().unwrap().body, Value::Null);
}

#[tokio::test]
async fn client_drop_mid_stream_counts_as_cancelled() {
    let sim = sim(SimConfig { chunk_delay_ms: 50, output_tokens: 100, ..SimConfig::default() }).await;
    let response = post(&sim, "/chat/completions", &chat_body(true)).await;
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    assert_eq!(sim.stats().cancelled_streams, 0);
    drop(body);

    let stats = wait_for_stats(&sim, |s| s.cancelled_streams == 1).await;
    assert_eq!(stats.cancelled_streams, 1);
    assert_eq!(stats.completed_streams, 0);
}

#[tokio::test]
async fn client_drop_during_ttft_counts_as_cancelled() {
    let sim = sim(SimConfig { ttft_ms: 5_000, ..SimConfig::default() }).await;
    let response = post(&sim, "/chat/completions", &chat_body(true)).await;
    assert_eq!(response.status(), 200);
    drop(response);
    let stats = wait_for_stats(&sim, |s| s.cancelled_streams == 1).await;
    assert_eq!(stats.cancelled_streams, 1);
}

#[tokio::test]
async fn control_endpoints_over_http() {
    let sim = sim(SimConfig::default()).await;
    let http = client();
    let root = format!("http://{}", sim.addr());
    let response = http
        .put(format!("{root}/sim/config"))
        .body(r#"{"output_tokens": 2, "failure": {"kind": "status", "status": 418}, "fail_first_n": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(sim.config().output_tokens, 2);

    let teapot = post(&sim, "/chat/completions", &chat_body(false)).await;
    assert_eq!(teapot.status(), 418);
    let v = post_json(&sim, "/chat/completions", &chat_body(false)).await;
    assert_eq!(v["choices"][0]["message"]["content"], "lorem ipsum");

    let stats: Stats = http.get(format!("{root}/sim/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats.requests, 2);
    let last: upstream_sim::RecordedRequest =
        http.get(format!("{root}/sim/last-request")).send().await.unwrap().json().await.unwrap();
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(last.body["model"], "gpt-test");

    let config: SimConfig = http.get(format!("{root}/sim/config")).send().await.unwrap().json().await.unwrap();
    assert_eq!(config, sim.config());

    let bad = http.put(format!("{root}/sim/config")).body(r#"{"outputtokens": 2}"#).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(sim.config().output_tokens, 2, "a bad config changes nothing");
    // Control requests are not counted.
    assert_eq!(sim.stats().requests, 2);
}

#[tokio::test]
async fn keep_alive_and_concurrency() {
    let sim = sim(SimConfig::default()).await;
    let http = client();
    let url = format!("{}/chat/completions", sim.base_url());
    let body = chat_body(false);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    let r = http.post(&url).json(&body).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(sim.stats().requests, 400);
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let sim = sim(SimConfig::default()).await;
    let url = format!("{}/models", sim.base_url());
    assert!(client().get(&url).send().await.is_ok());
    sim.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(client().get(&url).send().await.is_err());
}

#[test]
fn binary_prints_ready_line_and_serves() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_upstream-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--config-json",
            r#"{"models":["m1"],"output_tokens":9}"#,
            "--output-tokens",
            "3",
            "--threads",
            "2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .trim_end()
        .strip_prefix("upstream-sim listening on ")
        .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
        .to_owned();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let result = runtime.block_on(async {
        let http = client();
        let v: Value = http
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&chat_body(false))
            .send()
            .await?
            .json()
            .await?;
        let config: Value = http.get(format!("http://{addr}/sim/config")).send().await?.json().await?;
        Ok::<_, reqwest::Error>((v, config))
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let (v, config) = result.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3, "flags override the JSON");
    assert_eq!(config["models"], json!(["m1"]));
}
