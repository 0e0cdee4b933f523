//! Every error class the gateway renders, over real sockets, in OpenAI's shape.

mod common;

use common::*;
use serde_json::{json, Value};

async fn send(
    url: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = client().post(url).header("content-type", content_type).body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let v =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("non-JSON body: {}", String::from_utf8_lossy(&bytes)));
    (status, headers, v)
}

/// A plain chat completion for `model` through the gateway.
async fn chat(gw: &Gateway, model: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    send(&format!("{}/v1/chat/completions", gw.url), "application/json", chat_body(model).to_string()).await
}

#[tokio::test]
async fn client_mistakes_are_4xx_never_500() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = gateway(&format!("[server]\nmax_body_bytes = 4096\n{}", provider_toml("alpha", &sim, ""))).await;
    let url = format!("{}/v1/chat/completions", gw.url);
    // (name, content type, body, expected status, expected `param`)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("malformed json", "application/json", b"{\"model\": ".to_vec(), 400, None),
        ("not an object", "application/json", b"[1,2]".to_vec(), 400, None),
        (
            "missing model",
            "application/json",
            br#"{"messages":[{"role":"user","content":"x"}]}"#.to_vec(),
            400,
            Some("model"),
        ),
        ("missing messages", "application/json", br#"{"model":"alpha/sim-small"}"#.to_vec(), 400, Some("messages")),
        (
            "wrong type",
            "application/json",
            br#"{"model":"alpha/sim-small","messages":[{"role":"user","content":"x"}],"temperature":"warm"}"#.to_vec(),
            400,
            Some("temperature"),
        ),
        ("form content type", "application/x-www-form-urlencoded", b"model=x".to_vec(), 415, None),
        ("too large", "application/json", vec![b' '; 10_000], 413, None),
        (
            "unknown model",
            "application/json",
            br#"{"model":"nowhere/x","messages":[{"role":"user","content":"x"}]}"#.to_vec(),
            404,
            Some("model"),
        ),
    ];
    for (name, ct, body, status, param) in cases {
        let (got, _, v) = send(&url, ct, body).await;
        assert_eq!(got, status, "{name}: {v}");
        let e = assert_openai_error(&v);
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{name}");
        }
    }
    assert_eq!(sim.stats().requests, 0, "no client mistake reaches the upstream");
    // The gateway is still serving after all of that.
    let (ok, _, _) = send(&url, "application/json", chat_body("alpha/sim-small").to_string()).await;
    assert_eq!(ok, 200);
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let gw = gateway("").await;
    let r = client().get(format!("{}/v1/nope", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_openai_error(&serde_json::from_slice(&r.bytes().await.unwrap()).unwrap());
    let r = client().get(format!("{}/v1/chat/completions", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_openai_error(&serde_json::from_slice(&r.bytes().await.unwrap()).unwrap());
    let r = client().post(format!("{}/v1/models", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET,HEAD");
    // GET routes answer HEAD, with the headers and no body.
    let r = client().head(format!("{}/healthz", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    assert!(r.bytes().await.unwrap().is_empty());
    // Under /v1/messages the client speaks Anthropic: so do the route table's refusals.
    let r = client().get(format!("{}/v1/messages", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    // A prefix of a route is not the route.
    let r = client().get(format!("{}/v1/models/", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = client().get(format!("{}/v1/chat/completions/x", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn gateway_keys_are_required_when_configured() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let toml = format!(
        "[server]\napi_keys = [\"env:GATEWAY_KEY\", \"env:GATEWAY_KEY_2\"]\n{}",
        provider_toml("alpha", &sim, "")
    );
    let gw = gateway(&toml).await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let body = chat_body("alpha/sim-small").to_string();
    for auth in [None, Some("Bearer wrong"), Some("Basic Z3ctc2VjcmV0")] {
        let mut req = client().post(&url).header("content-type", "application/json").body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(assert_openai_error(&v)["type"], "authentication_error");
    }
    for key in ["gw-secret", "gw-other"] {
        let resp = client()
            .post(&url)
            .header("content-type", "application/json")
            .bearer_auth(key)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Health checks stay open for load balancers.
    assert_eq!(client().get(format!("{}/healthz", gw.url)).send().await.unwrap().status(), 200);
    // Every `/v1` path is behind the key, known or not: no route list for strangers.
    assert_eq!(client().get(format!("{}/v1/nope", gw.url)).send().await.unwrap().status(), 401);
    let known = client().get(format!("{}/v1/nope", gw.url)).bearer_auth("gw-secret").send().await.unwrap();
    assert_eq!(known.status(), 404);
    // The gateway key is not forwarded upstream; the provider's key is.
    let seen = sim.last_request().unwrap();
    let auth = seen.headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.clone());
    assert_eq!(auth.as_deref(), Some("Bearer sk-sim-secret"));
}

#[tokio::test]
async fn upstream_unreachable_is_502() {
    // Bind then drop: nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = gateway(&format!(
        "[providers.dead]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nconnect_timeout = \"1s\"\n{}",
        price("dead/m", 1.0, 1.0)
    ))
    .await;
    let (status, _, v) = chat(&gw, "dead/m").await;
    assert_eq!(status, 502);
    assert_eq!(assert_openai_error(&v)["code"], "upstream_unreachable");
}

#[tokio::test]
async fn upstream_timeout_is_504() {
    let sim = Sim::start(SimConfig { failure: Failure::Stall, ..SimConfig::default() }).await.unwrap();
    let gw = gateway(&provider_toml("slow", &sim, "first_byte_timeout = \"300ms\"")).await;
    let (status, _, v) = chat(&gw, "slow/sim-small").await;
    assert_eq!(status, 504);
    assert_eq!(assert_openai_error(&v)["code"], "upstream_timeout");
}

#[tokio::test]
async fn upstream_connection_closed_is_502() {
    let sim = Sim::start(SimConfig { failure: Failure::Close, ..SimConfig::default() }).await.unwrap();
    let gw = gateway(&provider_toml("flaky", &sim, "")).await;
    let (status, _, v) = chat(&gw, "flaky/sim-small").await;
    assert_eq!(status, 502, "{v}");
    assert_openai_error(&v);
}

#[tokio::test]
async fn upstream_statuses_are_relayed_with_retry_after() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = gateway(&provider_toml("alpha", &sim, "")).await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let cases = [
        (429, Some(7), Some("rate_limit_exceeded"), Some("requests")),
        (429, None, Some("insufficient_quota"), Some("insufficient_quota")),
        (400, None, Some("context_length_exceeded"), Some("invalid_request_error")),
        (500, None, None, None),
        (503, Some(2), None, None),
    ];
    for (status, retry_after, code, kind) in cases {
        sim.set_config(SimConfig {
            failure: Failure::Status {
                status,
                retry_after,
                error_type: kind.map(Into::into),
                code: code.map(Into::into),
                message: Some(format!("simulated {status}")),
            },
            ..SimConfig::default()
        });
        let (got, headers, v) = send(&url, "application/json", chat_body("alpha/sim-small").to_string()).await;
        assert_eq!(got, status, "{v}");
        let e = assert_openai_error(&v);
        assert!(e["message"].as_str().unwrap().contains(&format!("simulated {status}")), "{v}");
        if let Some(c) = code {
            assert_eq!(e["code"], c);
        }
        match retry_after {
            Some(s) => assert_eq!(headers["retry-after"], s.to_string().as_str()),
            None => assert!(headers.get("retry-after").is_none()),
        }
    }
}

#[tokio::test]
async fn malformed_upstream_json_is_502() {
    let sim = Sim::start(SimConfig { failure: Failure::MalformedJson, ..SimConfig::default() }).await.unwrap();
    let gw = gateway(&provider_toml("alpha", &sim, "")).await;
    let (status, _, v) = chat(&gw, "alpha/sim-small").await;
    assert_eq!(status, 502);
    assert_eq!(assert_openai_error(&v)["code"], "upstream_protocol_error");
}

#[tokio::test]
async fn upstream_dropping_mid_stream_ends_with_an_error_event() {
    let sim = Sim::start(SimConfig { failure: Failure::DropMidStream { after_chunks: 3 }, ..SimConfig::default() })
        .await
        .unwrap();
    let gw = gateway(&provider_toml("alpha", &sim, "")).await;
    let mut body = chat_body("alpha/sim-small");
    body["stream"] = json!(true);
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let data = sse_data(&text);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_openai_error(&last);
    assert!(data.len() >= 3, "chunks before the break were delivered: {text}");
}

#[tokio::test]
async fn client_disconnect_mid_stream_cancels_upstream() {
    let sim = Sim::start(SimConfig { output_tokens: 200, chunk_delay_ms: 20, ..SimConfig::default() }).await.unwrap();
    let gw = gateway(&provider_toml("alpha", &sim, "")).await;
    let mut body = chat_body("alpha/sim-small");
    body["stream"] = json!(true);
    let mut resp = client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    resp.chunk().await.unwrap().unwrap();
    drop(resp);
    assert!(
        eventually(|| sim.stats().cancelled_streams == 1).await,
        "upstream stream not cancelled: {:?}",
        sim.stats()
    );
    assert_eq!(sim.stats().completed_streams, 0);
}

#[tokio::test]
async fn no_input_stops_the_gateway_serving() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = gateway(&provider_toml("alpha", &sim, "")).await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let nasty: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, 0x00],
        b"{\"model\":\"alpha/sim-small\",\"messages\":[{\"role\":\"user\",\"content\":{\"a\":1}}]}".to_vec(),
        b"{\"model\":\"alpha/sim-small\",\"messages\":[null]}".to_vec(),
        b"{\"model\":\"\\ud800\",\"messages\":[]}".to_vec(),
        format!("{{\"model\":\"alpha/sim-small\",\"messages\":{}1{}}}", "[".repeat(200), "]".repeat(200)).into_bytes(),
        b"{\"model\":\"alpha/sim-small\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":1e308}".to_vec(),
        b"{\"model\":\"alpha/\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}".to_vec(),
        b"{\"model\":\"alpha/sim-small\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream_options\":5}"
            .to_vec(),
    ];
    for body in nasty {
        let resp =
            client().post(&url).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
        assert!(resp.status().is_client_error(), "{} for {}", resp.status(), String::from_utf8_lossy(&body));
    }
    let ok =
        client().post(&url).header("content-type", "application/json").body(chat_body("alpha/sim-small").to_string());
    assert_eq!(ok.send().await.unwrap().status(), 200);
}

/// A report bound that looks like a date but is not one in the calendar is a 400 on `since`
/// or `until` that says which day the month lacks, not a report of some other period.
#[tokio::test]
async fn usage_refuses_dates_the_calendar_does_not_have() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let db = std::env::temp_dir().join(format!("bourse-usage-dates-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let gw = gateway_with_ledger(&provider_toml("alpha", &sim, ""), &format!("sqlite:{}", db.display())).await;
    let cases = [
        ("since=2026-02-31", "since", "\"2026-02-31\" is not a date: February 2026 has days 1 to 28"),
        ("since=2026-01-01&until=2025-02-29", "until", "\"2025-02-29\" is not a date: February 2025 has days 1 to 28"),
        ("until=2026-04-31", "until", "\"2026-04-31\" is not a date: April 2026 has days 1 to 30"),
        ("since=2026-13-01", "since", "\"2026-13-01\" is not a date: months run from 1 to 12"),
    ];
    for (query, param, message) in cases {
        let r = client().get(format!("{}/v1/bourse/usage?{query}", gw.gateway.url)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let e = assert_openai_error(&body);
        assert_eq!((e["param"].as_str(), e["message"].as_str()), (Some(param), Some(message)), "{query}");
    }
    let ok = client().get(format!("{}/v1/bourse/usage?since=2024-02-29", gw.gateway.url)).send().await.unwrap();
    assert_eq!(ok.status(), 200, "a leap day is a date");
    drop(gw);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}
