//! The OpenAI-compatible surface over real sockets: bourse in front of upstream-sim.

mod common;

use common::*;
use serde_json::{json, Value};

async fn post(url: &str, body: &Value) -> reqwest::Response {
    client()
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .unwrap()
}

async fn json_of(resp: reqwest::Response) -> Value {
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn non_streaming_chat_forwards_every_field_and_rewrites_only_the_model() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = gateway(&provider_toml("alpha", &sim, "")).await;
    let body = json!({
        "model": "alpha/sim-small",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "temperature": 0.3, "top_p": 0.9, "max_tokens": 64, "max_completion_tokens": 64,
        "stop": ["\n\n"], "n": 1, "seed": 7, "logprobs": false, "reasoning_effort": "low",
        "user": "u-1", "metadata": {"team": "search"}, "x_unknown_field": {"nested": [1, 2, 3]}
    });
    let resp = post(&format!("{}/v1/chat/completions", gw.url), &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-bourse-provider"], "alpha");
    assert_eq!(resp.headers()["x-bourse-model"], "sim-small");
    assert!(resp.headers()["x-request-id"].to_str().unwrap().starts_with("req_"));
    let out = json_of(resp).await;
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["model"], "sim-small");

    let seen = sim.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    let mut expected = body.clone();
    expected["model"] = json!("sim-small");
    assert_eq!(seen.body, expected, "every field forwarded unchanged except model");
    let auth = seen.headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.as_str());
    assert_eq!(auth, Some("Bearer sk-sim-secret"));
}

#[tokio::test]
async fn bare_model_names_resolve_through_listed_models() {
    let a = Sim::start(SimConfig::default()).await.unwrap();
    let b = Sim::start(SimConfig::default()).await.unwrap();
    let toml = format!(
        "{}\n[providers.beta]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"only-on-beta\"]\n{}",
        provider_toml("alpha", &a, ""),
        b.base_url(),
        price("beta/only-on-beta", 0.5, 1.0)
    );
    let gw = gateway(&toml).await;
    let resp = post(&format!("{}/v1/chat/completions", gw.url), &chat_body("only-on-beta")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-bourse-provider"], "beta");
    assert_eq!(b.stats().requests, 1);
    assert_eq!(a.stats().requests, 0);
    assert_eq!(b.last_request().unwrap().body["model"], "only-on-beta");

    let resp = post(&format!("{}/v1/chat/completions", gw.url), &chat_body("gpt-9")).await;
    assert_eq!(resp.status(), 404);
    let body = json_of(resp).await;
    let e = assert_openai_error(&body);
    assert_eq!(e["code"], "model_not_found");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("alpha (sim-small)") && msg.contains("beta (only-on-beta)"), "{msg}");
}

#[tokio::test]
async fn streaming_relays_chunks_and_usage_only_when_asked() {
    let sim = Sim::start(SimConfig { output_tokens: 5, ..SimConfig::default() }).await.unwrap();
    let gw = gateway(&provider_toml("alpha", &sim, "")).await;
    let url = format!("{}/v1/chat/completions", gw.url);

    // Client did not ask for usage: bourse still asks upstream, and drops the usage chunk.
    let mut body = chat_body("alpha/sim-small");
    body["stream"] = json!(true);
    let resp = post(&url, &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(chunks.iter().all(|c| c.get("usage").is_none_or(Value::is_null)), "usage leaked: {text}");
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!content.is_empty());
    assert_eq!(sim.last_request().unwrap().body["stream_options"]["include_usage"], true);

    // Client asked: the usage chunk arrives, with choices empty.
    body["stream_options"] = json!({"include_usage": true});
    let text = post(&url, &body).await.text().await.unwrap();
    let data = sse_data(&text);
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() >= 5, "{usage}");
}

#[tokio::test]
async fn streaming_is_not_buffered() {
    let sim = Sim::start(SimConfig { output_tokens: 20, chunk_delay_ms: 50, ..SimConfig::default() }).await.unwrap();
    let gw = gateway(&provider_toml("alpha", &sim, "")).await;
    let mut body = chat_body("alpha/sim-small");
    body["stream"] = json!(true);
    let mut resp = post(&format!("{}/v1/chat/completions", gw.url), &body).await;
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data: "));
    // The first bytes reached us while the upstream was still producing the stream.
    assert_eq!(sim.stats().completed_streams, 0, "the gateway waited for the whole stream");
    while resp.chunk().await.unwrap().is_some() {}
    assert!(eventually(|| sim.stats().completed_streams == 1).await);
}

#[tokio::test]
async fn vendor_stream_quirks_keepalive_and_null_choices() {
    let cfg = SimConfig {
        keepalive_comments: 3,
        usage_chunk_choices: upstream_sim::UsageChunkChoices::Null,
        usage_style: upstream_sim::UsageStyle::DeepSeek,
        reasoning_tokens: 4,
        ..SimConfig::default()
    };
    let sim = Sim::start(cfg).await.unwrap();
    let gw = gateway(&provider_toml("ds", &sim, "")).await;
    let mut body = chat_body("ds/sim-small");
    body["stream"] = json!(true);
    let text = post(&format!("{}/v1/chat/completions", gw.url), &body).await.text().await.unwrap();
    assert!(text.starts_with(": keep-alive"), "keep-alive comments are passed on: {text:.80}");
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert!(data.iter().all(|d| !d.contains("\"usage\":{")), "usage chunk with choices:null must be dropped");
    assert!(data.iter().any(|d| d.contains("reasoning_content")), "reasoning_content passes through");

    // A client that asked for usage gets the chunk, with `choices: null` rewritten to `[]`
    // (the official SDKs reject null there).
    body["stream_options"] = json!({"include_usage": true});
    let text = post(&format!("{}/v1/chat/completions", gw.url), &body).await.text().await.unwrap();
    let data = sse_data(&text);
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]), "{usage}");
    assert!(usage["usage"]["prompt_cache_hit_tokens"].is_u64());

    // Non-streaming with DeepSeek-style leading blank lines still yields clean JSON.
    let resp = post(&format!("{}/v1/chat/completions", gw.url), &chat_body("ds/sim-small")).await;
    assert_eq!(resp.status(), 200);
    let v = json_of(resp).await;
    assert!(v["usage"]["prompt_cache_hit_tokens"].is_u64());
}

#[tokio::test]
async fn minimax_think_tags_become_reasoning_content() {
    let sim = Sim::start(SimConfig { think_tags: true, ..SimConfig::default() }).await.unwrap();
    let toml = format!(
        "[providers.minimax]\nkind = \"minimax\"\nbase_url = \"{}\"\napi_key = \"env:SIM_KEY\"\n{}",
        sim.base_url(),
        price("minimax/MiniMax-M2", 0.3, 1.2)
    );
    let gw = gateway(&toml).await;
    let v = json_of(post(&format!("{}/v1/chat/completions", gw.url), &chat_body("minimax/MiniMax-M2")).await).await;
    let msg = &v["choices"][0]["message"];
    assert!(!msg["content"].as_str().unwrap().contains("<think>"), "{v}");
    assert!(!msg["reasoning_content"].as_str().unwrap().is_empty(), "{v}");

    // Streaming: the tags arrive split across deltas; content deltas never show them.
    let mut body = chat_body("minimax/MiniMax-M2");
    body["stream"] = json!(true);
    let text = post(&format!("{}/v1/chat/completions", gw.url), &body).await.text().await.unwrap();
    let (mut content, mut reasoning) = (String::new(), String::new());
    for d in sse_data(&text).iter().filter(|d| d.starts_with('{')) {
        let c: Value = serde_json::from_str(d).unwrap();
        content.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        reasoning.push_str(c["choices"][0]["delta"]["reasoning_content"].as_str().unwrap_or(""));
    }
    assert!(!content.contains("think>") && !content.is_empty(), "{content}");
    assert!(!reasoning.is_empty() && !reasoning.contains("think>"), "{reasoning}");
}

#[tokio::test]
async fn embeddings_float_and_base64_pass_through() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = gateway(&provider_toml("alpha", &sim, "")).await;
    let url = format!("{}/v1/embeddings", gw.url);
    let f = json_of(post(&url, &json!({"model": "alpha/emb", "input": ["a", "b"]})).await).await;
    assert_eq!(f["data"].as_array().unwrap().len(), 2);
    assert!(f["data"][0]["embedding"].is_array());
    let b = json_of(post(&url, &json!({"model": "alpha/emb", "input": ["a", "b"], "encoding_format": "base64"})).await)
        .await;
    assert!(b["data"][0]["embedding"].is_string());
    assert_eq!(sim.last_request().unwrap().body["encoding_format"], "base64");
    let bad = post(&url, &json!({"model": "alpha/emb"})).await;
    assert_eq!(bad.status(), 400);
    assert_eq!(assert_openai_error(&json_of(bad).await)["param"], "input");
}

async fn get(url: &str) -> reqwest::Response {
    client().get(url).send().await.unwrap()
}

/// Ids of a `/v1/models` list, after checking every entry has OpenAI's model shape.
fn listed_ids(list: &Value) -> Vec<String> {
    assert_eq!(list["object"], "list", "{list}");
    let data = list["data"].as_array().unwrap_or_else(|| panic!("no data: {list}"));
    for m in data {
        assert_eq!(m["object"], "model", "{m}");
        assert!(m["created"].as_u64().is_some_and(|c| c > 0), "{m}");
        assert!(m["owned_by"].as_str().is_some_and(|o| !o.is_empty()), "{m}");
    }
    data.iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

/// The list holds what a client can name and be served (routes, then every priced model of
/// every provider), and retrieving an id answers with that id, whichever way it resolves.
#[tokio::test]
async fn models_list_and_retrieve() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = gateway(&provider_toml("alpha", &sim, "[routes.cheap]\nmin_quality = \"basic\"\n")).await;
    let list: Value = json_of(get(&format!("{}/v1/models", gw.url)).await).await;
    let ids = listed_ids(&list);
    assert_eq!(ids, ["auto", "cheap", "alpha/emb", "alpha/sim-small"], "{list}");
    assert_eq!(list["data"][0]["owned_by"], "bourse");
    assert_eq!(list["data"][2]["owned_by"], "alpha");
    // Every listed id is retrievable as itself.
    for id in &ids {
        let one = get(&format!("{}/v1/models/{id}", gw.url)).await;
        assert_eq!(one.status(), 200, "{id}");
        assert_eq!(json_of(one).await["id"], id.as_str());
    }
    // An SDK may percent-encode the slash of `provider/model`.
    let encoded = get(&format!("{}/v1/models/alpha%2Fsim-small", gw.url)).await;
    assert_eq!(json_of(encoded).await["id"], "alpha/sim-small");
    // A bare name is answered with the bare name: the id is what the client asked for.
    let by_bare = get(&format!("{}/v1/models/sim-small", gw.url)).await;
    assert_eq!(by_bare.status(), 200);
    let by_bare = json_of(by_bare).await;
    assert_eq!((&by_bare["id"], &by_bare["owned_by"]), (&json!("sim-small"), &json!("alpha")), "{by_bare}");
    // Neither an unpriced model of a known provider nor an unknown name can be served.
    for missing in ["alpha/nope", "nope", "beta/sim-small"] {
        let r = get(&format!("{}/v1/models/{missing}", gw.url)).await;
        assert_eq!(r.status(), 404, "{missing}");
        assert_eq!(assert_openai_error(&json_of(r).await)["code"], "model_not_found", "{missing}");
    }
}

/// With no config file and one provider's key in the environment, every catalog model of
/// that provider can be named and served, and so can `auto`: the list says so, so chat UIs
/// and IDE plugins that pick a model from it have something to pick. Without any provider
/// there is nothing to route to, `auto` included.
#[tokio::test]
async fn zero_config_lists_auto_and_every_catalog_model_of_the_enabled_provider() {
    let env = |name: &str| (name == "DEEPSEEK_API_KEY").then(|| "sk-deepseek-test".to_string());
    let cfg = bourse::config::Config::from_env(&env).unwrap();
    let mut expected: Vec<String> =
        cfg.catalog.models().iter().filter(|m| m.provider == "deepseek").map(|m| m.id.clone()).collect();
    assert!(expected.len() >= 2, "the shipped catalog prices DeepSeek's models");
    let gw = gateway_from_config(cfg).await;
    let list: Value = json_of(get(&format!("{}/v1/models", gw.url)).await).await;
    let ids = listed_ids(&list);
    assert_eq!(ids.first().map(String::as_str), Some("auto"), "{list}");
    let mut models = ids[1..].to_vec();
    models.sort();
    expected.sort();
    assert_eq!(models, expected, "{list}");
    assert!(list["data"].as_array().unwrap()[1..].iter().all(|m| m["owned_by"] == "deepseek"), "{list}");
    for id in ["auto", expected[0].as_str(), expected[1].as_str()] {
        let one = get(&format!("{}/v1/models/{id}", gw.url)).await;
        assert_eq!(one.status(), 200, "{id}");
        assert_eq!(json_of(one).await["id"], id);
    }

    let none = |_: &str| None;
    let gw = gateway_from_config(bourse::config::Config::from_env(&none).unwrap()).await;
    let list: Value = json_of(get(&format!("{}/v1/models", gw.url)).await).await;
    assert!(listed_ids(&list).is_empty(), "{list}");
    let auto = get(&format!("{}/v1/models/auto", gw.url)).await;
    assert_eq!(auto.status(), 404);
    assert_openai_error(&json_of(auto).await);
}

#[tokio::test]
async fn health_ready_and_request_ids() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = gateway(&provider_toml("alpha", &sim, "")).await;
    let h = client().get(format!("{}/healthz", gw.url)).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let r = client().get(format!("{}/readyz", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["providers"][0], "alpha");
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .header("x-request-id", "trace-abc-123")
        .body(chat_body("alpha/sim-small").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-abc-123");
    let empty = gateway("").await;
    let r = client().get(format!("{}/readyz", empty.url)).send().await.unwrap();
    assert_eq!(r.status(), 503);
}
