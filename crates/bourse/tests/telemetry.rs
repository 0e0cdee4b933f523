//! Telemetry over real sockets: `/metrics` moves by the right amounts and keeps its label sets
//! bounded, an in-test OTLP/HTTP receiver gets the request and attempt spans (a fallback as
//! two attempt spans under one request), and the real binary writes one JSON access line per
//! request. (The contract tests parse `/metrics` with the Prometheus Python client's parsers.)

mod common;

use bourse::config::Config;
use bourse::state::AppState;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Two providers in front of their own sims: `cheap` first on the `auto` route, `mid` next.
fn config(cheap: &Sim, mid: &Sim, extra: &str) -> String {
    let p = |id: &str, sim: &Sim| {
        format!(
            "[providers.{id}]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"sim-small\"]\nfirst_byte_timeout = \"2s\"\n",
            sim.base_url()
        )
    };
    format!(
        r#"{}{}
{extra}
[router]
failure_threshold = 1
cooldown = "60s"
[routes.auto]
min_quality = 1300
[models."cheap/sim-small"]
input = 0.5
output = 1.0
quality = 1380
[models."mid/sim-small"]
input = 1.0
output = 2.0
quality = 1390
"#,
        p("cheap", cheap),
        p("mid", mid)
    )
}

/// A gateway whose state the test keeps (to flush its tracer).
async fn start(toml: &str) -> (Arc<AppState>, String, tokio::task::JoinHandle<()>) {
    let cfg = Config::from_toml(toml, &test_env).expect("test config is valid");
    let mut state = AppState::from_config(&cfg).expect("state");
    if let Some(endpoint) = &cfg.telemetry.otlp_endpoint {
        state.telemetry.tracer = Some(bourse::telemetry::trace::Tracer::start(endpoint).unwrap());
    }
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let s = state.clone();
    let task = tokio::spawn(async move { bourse::server::serve(listener, s, std::future::pending()).await });
    (state, url, task)
}

async fn chat(url: &str, model: &str, rid: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", rid)
        .body(chat_body(model).to_string())
        .send()
        .await
        .unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null), headers)
}

/// `/metrics` as `name{labels}` -> value (comments and `# EOF` skipped).
async fn scrape(url: &str) -> BTreeMap<String, f64> {
    let resp = client().get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {l}"));
            (k.to_string(), v.parse::<f64>().unwrap_or_else(|_| panic!("not a value: {l}")))
        })
        .collect()
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

fn usd(h: &reqwest::header::HeaderMap, name: &str) -> f64 {
    h[name].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn metrics_count_requests_tokens_money_fallbacks_errors_and_circuits() {
    let (cheap, mid) =
        (Sim::start(SimConfig::default()).await.unwrap(), Sim::start(SimConfig::default()).await.unwrap());
    let (_state, url, _task) = start(&config(&cheap, &mid, "")).await;
    let before = scrape(&url).await;
    assert!(before.keys().all(|k| !k.starts_with("bourse_requests_total")), "{before:?}");

    // Three answers from a named model: counts, tokens and money match the responses.
    let (mut input, mut output, mut cost, mut saved) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..3 {
        let (status, body, h) = chat(&url, "cheap/sim-small", &format!("named-{i}")).await;
        assert_eq!(status, 200, "{body}");
        input += body["usage"]["prompt_tokens"].as_f64().unwrap();
        output += body["usage"]["completion_tokens"].as_f64().unwrap();
        cost += usd(&h, "x-bourse-cost-usd");
        saved += usd(&h, "x-bourse-saved-usd");
    }
    let m = scrape(&url).await;
    let pair = r#"route="",provider="cheap",model="sim-small""#;
    assert_eq!(get(&m, &format!(r#"bourse_requests_total{{{pair},status_class="2xx"}}"#)), 3.0);
    let genai = r#"gen_ai_operation_name="chat",gen_ai_provider_name="cheap",gen_ai_request_model="sim-small""#;
    assert_eq!(get(&m, &format!(r#"gen_ai_client_token_usage_sum{{{genai},gen_ai_token_type="input"}}"#)), input);
    assert_eq!(get(&m, &format!(r#"gen_ai_client_token_usage_sum{{{genai},gen_ai_token_type="output"}}"#)), output);
    assert_eq!(get(&m, &format!(r#"gen_ai_client_token_usage_count{{{genai},gen_ai_token_type="input"}}"#)), 3.0);
    assert_eq!(get(&m, &format!(r#"gen_ai_client_operation_duration_seconds_count{{{genai}}}"#)), 3.0);
    assert!((get(&m, &format!("bourse_cost_usd_total{{{pair}}}")) - cost).abs() < 1e-12, "{cost} {m:?}");
    assert!((get(&m, &format!("bourse_savings_usd_total{{{pair}}}")) - saved).abs() < 1e-12, "{saved}");
    assert_eq!(get(&m, r#"bourse_gateway_latency_seconds_count{route=""}"#), 3.0);
    // The gateway's own time is far below the upstream's round trip on loopback.
    assert!(get(&m, r#"bourse_gateway_latency_seconds_sum{route=""}"#) < 0.5);
    assert_eq!(get(&m, r#"bourse_circuit_open{provider="cheap",model="sim-small"}"#), 0.0);

    // `cheap` fails: `auto` falls back to `mid`, and the failure opens cheap's circuit (the
    // threshold is 1), so the second request goes to `mid` at once.
    cheap.set_config(SimConfig {
        failure: Failure::Status { status: 503, retry_after: None, error_type: None, code: None, message: None },
        ..SimConfig::default()
    });
    for i in 0..2 {
        let (status, body, h) = chat(&url, "auto", &format!("fallback-{i}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(h["x-bourse-provider"], "mid");
    }
    let m = scrape(&url).await;
    assert_eq!(
        get(&m, r#"bourse_requests_total{route="auto",provider="mid",model="sim-small",status_class="2xx"}"#),
        2.0
    );
    assert_eq!(get(&m, r#"bourse_fallbacks_total{route="auto",provider="mid",model="sim-small"}"#), 1.0);
    assert_eq!(
        get(&m, r#"bourse_upstream_errors_total{provider="cheap",model="sim-small",error_kind="upstream_5xx"}"#),
        1.0
    );
    assert_eq!(cheap.stats().requests, 4);
    assert_eq!(get(&m, r#"bourse_circuit_open{provider="cheap",model="sim-small"}"#), 1.0);
    assert_eq!(get(&m, r#"bourse_gateway_latency_seconds_count{route="auto"}"#), 2.0);
}

#[tokio::test]
async fn label_sets_stay_bounded_whatever_clients_send() {
    let (cheap, mid) =
        (Sim::start(SimConfig::default()).await.unwrap(), Sim::start(SimConfig::default()).await.unwrap());
    let (_state, url, _task) = start(&config(&cheap, &mid, "")).await;
    // One of each kind first: what it creates is the most any number of them may.
    let kinds = |i: usize| match i % 4 {
        0 => format!("cheap/invented-{i}"),
        1 => format!("invented-{i}"),
        2 => "cheap/sim-small".to_string(),
        _ => "auto".to_string(),
    };
    for i in 0..4 {
        chat(&url, &kinds(i), &format!("warm-{i}")).await;
    }
    let series = scrape(&url).await.len();
    let reqs = futures_util::stream::iter(4..1004).map(|i| {
        let url = url.clone();
        async move { chat(&url, &kinds(i), &format!("rid-{i}-{}", fastrand::u64(..))).await.0 }
    });
    use futures_util::StreamExt;
    let statuses: Vec<u16> = reqs.buffer_unordered(16).collect().await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 500, "{statuses:?}");
    let m = scrape(&url).await;
    assert_eq!(m.len(), series, "new series after 1,000 requests with new ids and model names");
    assert!(m.keys().all(|k| !k.contains("invented") && !k.contains("rid-")), "{m:?}");
    assert_eq!(get(&m, r#"bourse_requests_total{route="",provider="",model="",status_class="4xx"}"#), 502.0);
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let (cheap, mid) =
        (Sim::start(SimConfig::default()).await.unwrap(), Sim::start(SimConfig::default()).await.unwrap());
    let (_state, url, _task) = start(&config(&cheap, &mid, "[telemetry]\nmetrics = false\n")).await;
    assert_eq!(chat(&url, "cheap/sim-small", "off-1").await.0, 200);
    assert_eq!(client().get(format!("{url}/metrics")).send().await.unwrap().status(), 404);
}
