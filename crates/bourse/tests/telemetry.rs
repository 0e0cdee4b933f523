//! Telemetry over real sockets: every series issue 16 lists moves by the right amount for
//! known requests (tokens, durations and stream timings by their counts, requests, cost,
//! savings and overspend, fallbacks, upstream errors, circuits, gateway latency, the ledger's
//! written, queued and dropped rows, tenants' budgets left) and label sets stay bounded; an
//! in-test OTLP/HTTP receiver gets the request and attempt spans (a fallback as two attempt
//! spans under one request, streams with their response id, model and finish reasons); and
//! the real binary writes one JSON access line per request. (The contract tests parse
//! `/metrics` with the Prometheus Python client's parsers.)

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
async fn streams_count_time_to_first_token_and_per_output_token() {
    // Five tokens, the first after 60 ms, then one every 5 ms.
    let streaming = SimConfig { ttft_ms: 60, chunk_delay_ms: 5, output_tokens: 5, ..SimConfig::default() };
    let (cheap, mid) = (Sim::start(streaming).await.unwrap(), Sim::start(SimConfig::default()).await.unwrap());
    let (_state, url, _task) = start(&config(&cheap, &mid, "")).await;
    let mut body = chat_body("cheap/sim-small");
    body["stream"] = json!(true);
    for _ in 0..2 {
        let resp = client()
            .post(format!("{url}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.text().await.unwrap().contains("data: [DONE]"));
    }
    // A non-streamed answer has no time to first token.
    assert_eq!(chat(&url, "cheap/sim-small", "plain").await.0, 200);
    let m = scrape(&url).await;
    let genai = r#"gen_ai_operation_name="chat",gen_ai_provider_name="cheap",gen_ai_request_model="sim-small""#;
    let h = |name: &str, part: &str| get(&m, &format!("{name}_{part}{{{genai}}}"));
    assert_eq!(h("gen_ai_server_time_to_first_token_seconds", "count"), 2.0);
    assert_eq!(h("gen_ai_server_time_per_output_token_seconds", "count"), 2.0);
    assert_eq!(h("gen_ai_client_operation_duration_seconds", "count"), 3.0);
    // No first token sooner than the sim sent it, nor the next four.
    let first = format!(r#"gen_ai_server_time_to_first_token_seconds_bucket{{{genai},le="0.04"}}"#);
    assert_eq!(get(&m, &first), 0.0, "{m:?}");
    assert!(h("gen_ai_server_time_to_first_token_seconds", "sum") >= 0.12, "{m:?}");
    assert!(h("gen_ai_server_time_per_output_token_seconds", "sum") >= 0.009, "{m:?}");
    let tokens = format!(r#"gen_ai_client_token_usage_sum{{{genai},gen_ai_token_type="output"}}"#);
    assert_eq!(get(&m, &tokens), 15.0);
    assert_eq!(
        get(&m, r#"bourse_requests_total{route="",provider="cheap",model="sim-small",status_class="2xx"}"#),
        3.0
    );
    // What the gateway added excludes the wait for each stream's first token: all three
    // together took less than one such wait.
    assert_eq!(get(&m, r#"bourse_gateway_latency_seconds_count{route=""}"#), 3.0);
    assert!(get(&m, r#"bourse_gateway_latency_seconds_sum{route=""}"#) < 0.06, "{m:?}");
}

#[tokio::test]
async fn answers_dearer_than_the_reference_count_as_overspend() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let toml = format!(
        "[providers.dear]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"sim-small\"]\n{}",
        sim.base_url(),
        price("dear/sim-small", 100.0, 200.0)
    );
    let (_state, url, _task) = start(&toml).await;
    let (mut cost, mut reference) = (0.0, 0.0);
    for i in 0..2 {
        let (status, _, h) = chat(&url, "dear/sim-small", &format!("dear-{i}")).await;
        assert_eq!(status, 200);
        cost += usd(&h, "x-bourse-cost-usd");
        reference += usd(&h, "x-bourse-reference-cost-usd");
    }
    assert!(cost > reference, "{cost} {reference}");
    let m = scrape(&url).await;
    let pair = r#"route="",provider="dear",model="sim-small""#;
    assert!((get(&m, &format!("bourse_cost_usd_total{{{pair}}}")) - cost).abs() < 1e-12, "{m:?}");
    assert!((get(&m, &format!("bourse_overspend_usd_total{{{pair}}}")) - (cost - reference)).abs() < 1e-12, "{m:?}");
    assert_eq!(get(&m, &format!("bourse_savings_usd_total{{{pair}}}")), 0.0);
}

#[tokio::test]
async fn ledger_rows_written_queued_and_dropped_are_counted() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let db = std::env::temp_dir().join(format!("bourse-ledger-gauge-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let toml = format!(
        "[storage]\nurl = \"sqlite:{}\"\n[providers.alpha]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"sim-small\"]\n{}",
        db.display(),
        sim.base_url(),
        price("alpha/sim-small", 1.0, 2.0)
    );
    let (url, _task, _writer) = start_prepared(&toml).await;
    // Until the writer has settled on `written` and `dropped` (it flushes every 200 ms and
    // retries a failed batch three times within a second).
    let settled = |written: f64, dropped: f64| {
        let url = url.clone();
        async move {
            for _ in 0..250 {
                let m = scrape(&url).await;
                if get(&m, "bourse_ledger_written_rows_total") == written
                    && get(&m, "bourse_ledger_dropped_rows_total") == dropped
                {
                    return m;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the ledger never reached {written} written and {dropped} dropped: {:?}", scrape(&url).await);
        }
    };
    let m = scrape(&url).await;
    assert_eq!(
        (get(&m, "bourse_ledger_queue_depth"), get(&m, "bourse_ledger_written_rows_total")),
        (0.0, 0.0),
        "{m:?}"
    );
    assert!(m.contains_key("bourse_ledger_dropped_rows_total"), "{m:?}");
    for i in 0..3 {
        assert_eq!(chat(&url, "alpha/sim-small", &format!("row-{i}")).await.0, 200);
    }
    let m = settled(3.0, 0.0).await;
    assert_eq!(get(&m, "bourse_ledger_queue_depth"), 0.0);

    // The store breaks: the next two rows are given up on after the retries.
    rusqlite::Connection::open(&db).unwrap().execute_batch("DROP TABLE ledger").unwrap();
    for i in 0..2 {
        assert_eq!(chat(&url, "alpha/sim-small", &format!("lost-{i}")).await.0, 200);
    }
    let m = settled(3.0, 2.0).await;
    assert_eq!(get(&m, "bourse_ledger_queue_depth"), 0.0);
    let _ = std::fs::remove_file(&db);
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

/// A gateway started as `bourse serve` prepares one (ledger, tenants and keys, counters),
/// with `GATEWAY_KEY_2` ("gw-other") as its admin key.
async fn start_prepared(toml: &str) -> (String, tokio::task::JoinHandle<()>, Option<bourse::ledger::WriterHandle>) {
    let cfg = Config::from_toml(toml, &test_env).expect("test config is valid");
    let (state, writer) = bourse::server::prepare(&cfg).await.expect("prepare");
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move { bourse::server::serve(listener, state, std::future::pending()).await });
    (url, task, writer)
}

async fn admin_post(url: &str, path: &str, body: Value) -> Value {
    let resp = client()
        .post(format!("{url}{path}"))
        .bearer_auth("gw-other")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

/// `bourse_tenant_budget_remaining_usd{tenant, window}` as nano-USD, or None if absent.
fn budget_left(m: &BTreeMap<String, f64>, tenant: &str, window: &str) -> Option<i64> {
    let key = format!(r#"bourse_tenant_budget_remaining_usd{{tenant="{tenant}",window="{window}"}}"#);
    m.get(&key).map(|usd| (usd * 1e9).round() as i64)
}

#[tokio::test]
async fn tenant_budget_gauges_move_by_what_a_request_spent_and_appear_only_with_tenant_labels() {
    // Every answer: 1 prompt and 50 output tokens at $100 / $200 per million, $0.0101.
    const ANSWER: i64 = 10_100_000;
    let sim =
        Sim::start(SimConfig { prompt_tokens: Some(1), output_tokens: 50, ..SimConfig::default() }).await.unwrap();
    for labels in [true, false] {
        let db =
            std::env::temp_dir().join(format!("bourse-budget-gauge-{}-{}.db", std::process::id(), fastrand::u64(..)));
        let toml = format!(
            "[server]\nadmin_keys = [\"env:GATEWAY_KEY_2\"]\n[storage]\nurl = \"sqlite:{}\"\n[telemetry]\ntenant_labels = {labels}\n\
             [providers.alpha]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"sim-small\"]\n{}",
            db.display(),
            sim.base_url(),
            price("alpha/sim-small", 100.0, 200.0)
        );
        let (url, _task, _writer) = start_prepared(&toml).await;
        admin_post(
            &url,
            "/admin/v1/tenants",
            json!({"name": "acme", "budget_day_usd": "0.10", "budget_total_usd": "2"}),
        )
        .await;
        admin_post(&url, "/admin/v1/tenants", json!({"name": "open"})).await;
        let key = admin_post(&url, "/admin/v1/keys", json!({"tenant": "acme"})).await;
        let secret = key["key"].as_str().unwrap();

        let before = scrape(&url).await;
        // max_tokens bounds the reservation (its worst case) within the day's budget.
        let mut body = chat_body("alpha/sim-small");
        body["max_tokens"] = json!(50);
        let send = client()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(secret)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(send.status(), 200);
        let cost = (usd(send.headers(), "x-bourse-cost-usd") * 1e9).round() as i64;
        assert_eq!(cost, ANSWER);
        let after = scrape(&url).await;

        if !labels {
            // Tenant names are labels only when asked for: no series at all.
            for m in [&before, &after] {
                assert!(m.keys().all(|k| !k.starts_with("bourse_tenant_budget")), "{m:?}");
            }
            let _ = std::fs::remove_file(&db);
            continue;
        }
        assert_eq!(budget_left(&before, "acme", "day"), Some(100_000_000));
        assert_eq!(budget_left(&before, "acme", "total"), Some(2_000_000_000));
        assert_eq!(budget_left(&after, "acme", "day"), Some(100_000_000 - ANSWER));
        assert_eq!(budget_left(&after, "acme", "total"), Some(2_000_000_000 - ANSWER));
        // A window without a budget, and a tenant without budgets, have no series.
        for m in [&before, &after] {
            assert_eq!(budget_left(m, "acme", "month"), None);
            assert!(m.keys().all(|k| !k.contains(r#"tenant="open""#)), "{m:?}");
        }
        let _ = std::fs::remove_file(&db);
    }
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let (cheap, mid) =
        (Sim::start(SimConfig::default()).await.unwrap(), Sim::start(SimConfig::default()).await.unwrap());
    let (_state, url, _task) = start(&config(&cheap, &mid, "[telemetry]\nmetrics = false\n")).await;
    assert_eq!(chat(&url, "cheap/sim-small", "off-1").await.0, 200);
    assert_eq!(client().get(format!("{url}/metrics")).send().await.unwrap().status(), 404);
}

/// An OTLP/HTTP receiver: every span posted to `/v1/traces` (protobuf), kept in order.
async fn receiver() -> (String, Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let spans = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let kept = spans.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let kept = kept.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let kept = kept.clone();
                async move {
                    use http_body_util::BodyExt;
                    assert_eq!(req.uri().path(), "/v1/traces");
                    assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let export = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                    for rs in export.resource_spans {
                        for ss in rs.scope_spans {
                            kept.lock().unwrap().extend(ss.spans);
                        }
                    }
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        axum::body::Bytes::new(),
                    )))
                }
            });
            let io = hyper_util::rt::TokioIo::new(tcp);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    });
    (url, spans)
}

/// A span's attributes as JSON values (strings, numbers, arrays of strings).
fn attrs(span: &opentelemetry_proto::tonic::trace::v1::Span) -> BTreeMap<String, Value> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    fn json_of(v: &Option<V>) -> Value {
        match v {
            Some(V::StringValue(s)) => json!(s),
            Some(V::IntValue(i)) => json!(i),
            Some(V::DoubleValue(d)) => json!(d),
            Some(V::BoolValue(b)) => json!(b),
            Some(V::ArrayValue(a)) => Value::Array(a.values.iter().map(|x| json_of(&x.value)).collect()),
            other => json!(format!("{other:?}")),
        }
    }
    span.attributes
        .iter()
        .map(|kv| (kv.key.clone(), json_of(&kv.value.as_ref().and_then(|v| v.value.clone()))))
        .collect()
}

#[tokio::test]
async fn otlp_receiver_gets_request_and_attempt_spans_with_genai_attributes() {
    let (collector, spans) = receiver().await;
    let (cheap, mid) =
        (Sim::start(SimConfig::default()).await.unwrap(), Sim::start(SimConfig::default()).await.unwrap());
    let extra = format!("[telemetry]\notlp_endpoint = \"{collector}\"\n");
    let (state, url, _task) = start(&config(&cheap, &mid, &extra)).await;
    let tracer = state.telemetry.tracer.as_ref().unwrap();

    // A named model: one request span, one attempt span under it.
    let (status, body, h) = chat(&url, "cheap/sim-small", "trace-1").await;
    assert_eq!(status, 200);
    tracer.flush().await;
    let got = spans.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:#?}");
    let (attempt, request) = (&got[0], &got[1]);
    assert_eq!(request.name, "chat cheap/sim-small");
    assert_eq!(attempt.name, "chat sim-small");
    assert_eq!(attempt.parent_span_id, request.span_id);
    assert_eq!(attempt.trace_id, request.trace_id);
    assert!(request.parent_span_id.is_empty());
    let a = attrs(attempt);
    assert_eq!(a["gen_ai.operation.name"], "chat");
    assert_eq!(a["gen_ai.provider.name"], "cheap");
    assert_eq!(a["gen_ai.request.model"], "sim-small");
    assert_eq!(a["gen_ai.response.model"], body["model"]);
    assert_eq!(a["gen_ai.response.id"], body["id"]);
    assert_eq!(a["gen_ai.response.finish_reasons"], json!(["stop"]));
    assert_eq!(a["gen_ai.usage.input_tokens"], body["usage"]["prompt_tokens"]);
    assert_eq!(a["gen_ai.usage.output_tokens"], body["usage"]["completion_tokens"]);
    assert_eq!(a["bourse.attempt"], 1);
    assert!((a["bourse.cost_usd"].as_f64().unwrap() - usd(&h, "x-bourse-cost-usd")).abs() < 1e-15);
    assert!(!a.contains_key("gen_ai.system") && !a.contains_key("error.type"), "{a:?}");
    // No prompt or completion text unless capture_content is on.
    assert!(!a.contains_key("gen_ai.input.messages") && !a.contains_key("gen_ai.output.messages"));
    let r = attrs(request);
    assert_eq!(r["gen_ai.request.model"], "cheap/sim-small");
    assert_eq!(r["gen_ai.provider.name"], "cheap");
    assert_eq!(r["http.response.status_code"], 200);
    assert_eq!(r["gen_ai.usage.output_tokens"], body["usage"]["completion_tokens"]);
    let text = format!("{got:?}");
    assert!(!text.contains("Say hello to the exchange"), "prompt text in a span");

    // A fallback: two attempt spans under one request span.
    spans.lock().unwrap().clear();
    cheap.set_config(SimConfig {
        failure: Failure::Status { status: 503, retry_after: None, error_type: None, code: None, message: None },
        ..SimConfig::default()
    });
    let (status, _, h) = chat(&url, "auto", "trace-2").await;
    assert_eq!((status, h["x-bourse-provider"].to_str().unwrap()), (200, "mid"));
    tracer.flush().await;
    let got = spans.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "{got:#?}");
    let request = got.iter().find(|s| s.parent_span_id.is_empty()).unwrap();
    assert_eq!(request.name, "chat auto");
    let mut tries: Vec<_> = got.iter().filter(|s| s.parent_span_id == request.span_id).collect();
    tries.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(tries.len(), 2);
    let (first, second) = (attrs(tries[0]), attrs(tries[1]));
    assert_eq!((&first["gen_ai.provider.name"], &first["bourse.attempt"]), (&json!("cheap"), &json!(1)));
    assert_eq!(first["error.type"], "upstream_5xx");
    assert_eq!(first["bourse.error.kind"], "upstream_5xx");
    assert_eq!((&second["gen_ai.provider.name"], &second["bourse.attempt"]), (&json!("mid"), &json!(2)));
    assert!(!second.contains_key("error.type"));
    assert!(second["bourse.route.reason"].as_str().unwrap().contains("attempt 2 (fallback)"), "{second:?}");
    let r = attrs(request);
    assert_eq!(r["bourse.route"], "auto");
    assert_eq!(r["gen_ai.provider.name"], "mid");
    assert!(r["bourse.route.reason"].as_str().unwrap().contains("chose mid/sim-small"), "{r:?}");
    tracer.shutdown().await;
}

/// The `data:` payloads of an SSE body, as JSON (`[DONE]` left out).
fn sse_data(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

#[tokio::test]
async fn streamed_answers_spans_carry_the_response_id_model_and_finish_reasons() {
    let (collector, spans) = receiver().await;
    let (cheap, mid) =
        (Sim::start(SimConfig::default()).await.unwrap(), Sim::start(SimConfig::default()).await.unwrap());
    let extra = format!("[telemetry]\notlp_endpoint = \"{collector}\"\n");
    let (state, url, _task) = start(&config(&cheap, &mid, &extra)).await;
    let tracer = state.telemetry.tracer.as_ref().unwrap();
    let attempt_and_request = |got: &[opentelemetry_proto::tonic::trace::v1::Span]| {
        assert_eq!(got.len(), 2, "{got:#?}");
        let request = got.iter().find(|s| s.parent_span_id.is_empty()).unwrap().clone();
        let attempt = got.iter().find(|s| s.parent_span_id == request.span_id).unwrap().clone();
        (attempt, request)
    };

    // OpenAI client, OpenAI upstream: the chunks pass through; the span has what they say.
    let mut body = chat_body("cheap/sim-small");
    body["stream"] = json!(true);
    let resp = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let chunks = sse_data(&resp.text().await.unwrap());
    let (id, model) = (chunks[0]["id"].clone(), chunks[0]["model"].clone());
    assert!(id.as_str().is_some_and(|s| !s.is_empty()) && model.as_str().is_some_and(|s| !s.is_empty()));
    let finish: Vec<Value> = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c.get("finish_reason").filter(|r| r.is_string()).cloned())
        .collect();
    assert_eq!(finish, vec![json!("stop")]);
    tracer.flush().await;
    let (attempt, request) = attempt_and_request(&spans.lock().unwrap());
    for a in [attrs(&attempt), attrs(&request)] {
        assert_eq!(a["gen_ai.response.id"], id, "{a:?}");
        assert_eq!(a["gen_ai.response.model"], model, "{a:?}");
        assert_eq!(a["gen_ai.response.finish_reasons"], json!(finish), "{a:?}");
        assert!(a["gen_ai.usage.output_tokens"].as_i64().unwrap() > 0, "{a:?}");
    }

    // Anthropic client, OpenAI upstream: the stream is translated; the span has what the
    // client's events say, the stop reason in Anthropic's words.
    spans.lock().unwrap().clear();
    let body = json!({"model": "cheap/sim-small", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "Say hello to the exchange."}]});
    let resp = client()
        .post(format!("{url}/v1/messages"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = sse_data(&resp.text().await.unwrap());
    let start = events.iter().find(|e| e["type"] == "message_start").unwrap();
    let stop = events.iter().find(|e| e["type"] == "message_delta").unwrap();
    assert_eq!(stop["delta"]["stop_reason"], "end_turn");
    tracer.flush().await;
    let (attempt, request) = attempt_and_request(&spans.lock().unwrap());
    for a in [attrs(&attempt), attrs(&request)] {
        assert_eq!(a["gen_ai.response.id"], start["message"]["id"], "{a:?}");
        assert_eq!(a["gen_ai.response.model"], start["message"]["model"], "{a:?}");
        assert_eq!(a["gen_ai.response.finish_reasons"], json!(["end_turn"]), "{a:?}");
    }
    tracer.shutdown().await;
}

#[tokio::test]
async fn content_goes_on_spans_only_when_enabled_and_traceparent_is_continued() {
    let (collector, spans) = receiver().await;
    let (cheap, mid) =
        (Sim::start(SimConfig::default()).await.unwrap(), Sim::start(SimConfig::default()).await.unwrap());
    let extra = format!("[telemetry]\notlp_endpoint = \"{collector}\"\ncapture_content = true\n");
    let (state, url, _task) = start(&config(&cheap, &mid, &extra)).await;
    let resp = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .body(chat_body("cheap/sim-small").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tracer = state.telemetry.tracer.as_ref().unwrap();
    tracer.flush().await;
    let got = spans.lock().unwrap().clone();
    let request = got.iter().find(|s| s.name == "chat cheap/sim-small").unwrap();
    assert_eq!(hex(&request.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(hex(&request.parent_span_id), "b7ad6b7169203331");
    let r = attrs(request);
    assert!(r["gen_ai.input.messages"].as_str().unwrap().contains("Say hello to the exchange"), "{r:?}");
    let attempt = got.iter().find(|s| s.name == "chat sim-small").unwrap();
    assert!(attrs(attempt)["gen_ai.output.messages"].as_str().is_some_and(|s| !s.is_empty()));
    tracer.shutdown().await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Start the real binary with `args`, logging JSON; returns it, its URL and its log lines.
async fn serve_binary(
    config: &std::path::Path,
    args: &[&str],
) -> (tokio::process::Child, String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bourse"));
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "BOURSE_CONFIG"] {
        cmd.env_remove(var);
    }
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(config).args(args);
    cmd.env("BOURSE_TEST_KEY", "gw-access-secret").env("RUST_LOG", "bourse=info");
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    let url = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let v = rx.recv().await.expect("bourse exited before listening");
            if let Some(at) = v["message"].as_str().and_then(|m| m.find("http://").map(|i| m[i..].to_string())) {
                return at;
            }
        }
    })
    .await
    .expect("bourse did not start");
    (child, url, rx)
}

#[tokio::test]
async fn the_binary_writes_one_json_access_line_per_request() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let config = std::env::temp_dir().join(format!("bourse-access-{}-{}.toml", std::process::id(), fastrand::u64(..)));
    std::fs::write(
        &config,
        format!(
            "[server]\napi_keys = [\"env:BOURSE_TEST_KEY\"]\n[storage]\nledger = false\n[providers.alpha]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"sim-small\"]\n{}",
            sim.base_url(),
            price("alpha/sim-small", 1.0, 2.0)
        ),
    )
    .unwrap();
    let (mut child, url, mut logs) = serve_binary(&config, &["--log-format", "json", "--access-log"]).await;
    let send = |model: &str, rid: &str, stream: bool| {
        let mut body = chat_body(model);
        body["stream"] = json!(stream);
        client()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth("gw-access-secret")
            .header("x-request-id", rid)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let ok = send("alpha/sim-small", "acc-1", false).await.unwrap();
    assert_eq!(ok.status(), 200);
    let cost = ok.headers()["x-bourse-cost-usd"].to_str().unwrap().to_string();
    let body: Value = serde_json::from_slice(&ok.bytes().await.unwrap()).unwrap();
    assert_eq!(send("alpha/invented", "acc-2", false).await.unwrap().status(), 400);
    let streamed = send("alpha/sim-small", "acc-3", true).await.unwrap().text().await.unwrap();
    assert!(streamed.contains("[DONE]"));

    let mut access = BTreeMap::new();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while access.len() < 3 {
            let v = logs.recv().await.expect("bourse stopped logging");
            all.push(v.to_string());
            if v["message"] == "request" && v.get("request_id").is_some() {
                assert_eq!(v["level"], "INFO", "{v}");
                access.insert(v["request_id"].as_str().unwrap().to_string(), v);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fewer than 3 access lines: {all:#?}"));
    let a = &access["acc-1"];
    // A config key's id: keyed by a secret of the installation (here, of the process: no
    // store), so only its shape is known from outside.
    let key_id = a["key_id"].as_str().unwrap();
    let hex = key_id.strip_prefix("key_").unwrap_or_else(|| panic!("{a}"));
    assert!(hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
    assert!(access.values().all(|v| v["key_id"] == key_id), "{access:?}");
    assert_eq!((&a["provider"], &a["model"], &a["status"]), (&json!("alpha"), &json!("sim-small"), &json!(200)));
    assert_eq!((&a["route"], &a["tenant"], &a["error"]), (&json!(""), &json!(""), &json!("")));
    assert_eq!(a["input_tokens"], body["usage"]["prompt_tokens"]);
    assert_eq!(a["output_tokens"], body["usage"]["completion_tokens"]);
    assert_eq!(a["cost_usd"], cost.as_str());
    assert_eq!(a["attempts"], 1);
    let (ttfb, latency) = (a["ttfb_ms"].as_f64().unwrap(), a["latency_ms"].as_f64().unwrap());
    assert!(ttfb > 0.0 && latency >= ttfb, "{a}");
    let e = &access["acc-2"];
    assert_eq!((&e["status"], &e["error"], &e["attempts"]), (&json!(400), &json!("model_not_allowed"), &json!(0)));
    let s = &access["acc-3"];
    assert_eq!((&s["status"], &s["provider"]), (&json!(200), &json!("alpha")));
    assert!(s["output_tokens"].as_u64().unwrap() > 0, "{s}");
    // Never the prompt, never the key.
    for line in &all {
        assert!(!line.contains("Say hello") && !line.contains("gw-access-secret"), "{line}");
    }
    child.kill().await.unwrap();
    let _ = std::fs::remove_file(&config);
}
