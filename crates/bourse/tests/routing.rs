//! Routing over real sockets: three upstream-sim providers priced differently.

mod common;

use common::*;
use serde_json::{json, Value};

/// cheap (CN-hosted, no tools, 8k context) < mid (US, tools, 32k) < premium (US, tools, 128k).
fn config(cheap: &Sim, mid: &Sim, premium: &Sim, storage: &str) -> String {
    let p = |id: &str, sim: &Sim| {
        format!(
            "[providers.{id}]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"sim-small\"]\nfirst_byte_timeout = \"500ms\"\n",
            sim.base_url()
        )
    };
    format!(
        r#"{}{}{}
[storage]
url = "{storage}"
[router]
max_attempts = 3
failure_threshold = 2
cooldown = "60s"
[policies.no_cn]
deny_hosting = ["CN"]
[routes.auto]
min_quality = "strong"
[models."cheap/sim-small"]
input = 0.1
output = 0.2
quality = 1380
hosting = "CN"
origin = "CN"
context = 8000
capabilities = ["streaming"]
[models."mid/sim-small"]
input = 1.0
output = 2.0
quality = 1390
hosting = "US"
origin = "US"
context = 32000
capabilities = ["tools", "streaming"]
[models."premium/sim-small"]
input = 5.0
output = 15.0
quality = 1450
hosting = "US"
origin = "US"
context = 128000
capabilities = ["tools", "streaming"]
"#,
        p("cheap", cheap),
        p("mid", mid),
        p("premium", premium)
    )
}

struct Fixture {
    cheap: Sim,
    mid: Sim,
    premium: Sim,
    gw: LedgerGateway,
    _db: std::path::PathBuf,
}

async fn fixture() -> Fixture {
    let cheap = Sim::start(SimConfig::default()).await.unwrap();
    let mid = Sim::start(SimConfig::default()).await.unwrap();
    let premium = Sim::start(SimConfig::default()).await.unwrap();
    let db = std::env::temp_dir().join(format!("bourse-route-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let url = format!("sqlite:{}", db.display());
    let gw = gateway_with_ledger(&config(&cheap, &mid, &premium, &url), &url).await;
    Fixture { cheap, mid, premium, gw, _db: db }
}

async fn chat(f: &Fixture, body: &Value, rid: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client()
        .post(format!("{}/v1/chat/completions", f.gw.gateway.url))
        .header("content-type", "application/json")
        .header("x-request-id", rid);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(body.to_string()).send().await.unwrap()
}

async fn rows(f: &Fixture, rid: &str, n: usize) -> Vec<bourse::ledger::LedgerEntry> {
    for _ in 0..200 {
        let rows = f.gw.ledger.rows(rid).await.unwrap();
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("fewer than {n} ledger rows for {rid}");
}

#[tokio::test]
async fn auto_goes_to_the_cheapest_feasible_model_and_explains_why() {
    let f = fixture().await;
    let resp = chat(&f, &chat_body("auto"), "r1", &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-bourse-provider"], "cheap");
    let reason = resp.headers()["x-bourse-route-reason"].to_str().unwrap().to_string();
    assert!(reason.contains("chose cheap/sim-small") && reason.contains("3 feasible"), "{reason}");
    assert!(reason.contains("runner-up mid/sim-small"), "{reason}");
    assert_eq!(f.cheap.stats().requests, 1);
    assert_eq!(f.cheap.last_request().unwrap().body["model"], "sim-small");
    let row = &rows(&f, "r1", 1).await[0];
    assert_eq!(row.route_reason.as_deref(), Some(reason.as_str()));
    // A named route works through the header too, and the header never reaches upstream.
    let resp = chat(&f, &chat_body("anything-else"), "r1b", &[("x-bourse-route", "auto")]).await;
    assert_eq!(resp.headers()["x-bourse-provider"], "cheap");
    assert!(f.cheap.last_request().unwrap().header("x-bourse-route").is_none());
}

#[tokio::test]
async fn failures_fall_over_to_the_next_candidate_and_the_ledger_keeps_both_attempts() {
    let f = fixture().await;
    let failures = [
        (
            "r5xx",
            Failure::Status { status: 503, retry_after: None, error_type: None, code: None, message: None },
            "upstream_5xx",
        ),
        (
            "r429",
            Failure::Status {
                status: 429,
                retry_after: Some(1),
                error_type: None,
                code: Some("rate_limit_exceeded".into()),
                message: None,
            },
            "upstream_rate_limited",
        ),
        ("rtimeout", Failure::Stall, "upstream_timeout"),
    ];
    for (rid, failure, kind) in failures {
        // Fresh fixture per case so an opened circuit from one case does not steer the next.
        let f2 = fixture().await;
        f2.cheap.set_config(SimConfig { failure, ..SimConfig::default() });
        let resp = chat(&f2, &chat_body("auto"), rid, &[]).await;
        assert_eq!(resp.status(), 200, "{rid}");
        assert_eq!(resp.headers()["x-bourse-provider"], "mid", "{rid}");
        assert!(resp.headers()["x-bourse-route-reason"].to_str().unwrap().contains("attempt 2 (fallback)"));
        let rows = rows(&f2, rid, 2).await;
        assert_eq!(rows.len(), 2, "{rid}");
        assert_eq!(
            (rows[0].attempt, rows[0].provider.as_str(), rows[0].error_kind.as_deref()),
            (1, "cheap", Some(kind))
        );
        assert_eq!((rows[1].attempt, rows[1].provider.as_str(), rows[1].error_kind.as_deref()), (2, "mid", None));
        assert!(rows[1].cost_nanos > 0 && rows[0].cost_nanos == 0);
    }
    drop(f);
}

#[tokio::test]
async fn client_errors_return_at_once_without_fallback() {
    let f = fixture().await;
    f.cheap.set_config(SimConfig {
        failure: Failure::Status {
            status: 400,
            retry_after: None,
            error_type: Some("invalid_request_error".into()),
            code: Some("context_length_exceeded".into()),
            message: None,
        },
        ..SimConfig::default()
    });
    let resp = chat(&f, &chat_body("auto"), "r400", &[]).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(f.mid.stats().requests + f.premium.stats().requests, 0);
}

#[tokio::test]
async fn out_of_balance_fails_over_and_keeps_the_provider_out() {
    let f = fixture().await;
    f.cheap.set_config(SimConfig {
        failure: Failure::Status {
            status: 429,
            retry_after: None,
            error_type: Some("insufficient_quota".into()),
            code: Some("insufficient_quota".into()),
            message: Some("You exceeded your current quota".into()),
        },
        ..SimConfig::default()
    });
    let resp = chat(&f, &chat_body("auto"), "rq1", &[]).await;
    assert_eq!(resp.headers()["x-bourse-provider"], "mid");
    // The circuit is open: the next request does not try the exhausted provider at all.
    let resp = chat(&f, &chat_body("auto"), "rq2", &[]).await;
    assert_eq!(resp.headers()["x-bourse-provider"], "mid");
    assert_eq!(f.cheap.stats().requests, 1);
}

#[tokio::test]
async fn capabilities_context_and_policy_shape_the_choice() {
    let f = fixture().await;
    // Tools: cheap has none.
    let mut body = chat_body("auto");
    body["tools"] =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let resp = chat(&f, &body, "rtools", &[]).await;
    assert_eq!(resp.headers()["x-bourse-provider"], "mid");
    // A long prompt (~12k tokens) skips the 8k-context model.
    let long = "lorem ipsum dolor sit amet ".repeat(1800);
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": long}]});
    let resp = chat(&f, &body, "rlong", &[]).await;
    assert_eq!(resp.headers()["x-bourse-provider"], "mid");
    // deny_hosting = ["CN"] (policy via header) skips the CN-hosted model.
    let resp = chat(&f, &chat_body("auto"), "rpol", &[("x-bourse-policy", "no_cn")]).await;
    assert_eq!(resp.headers()["x-bourse-provider"], "mid");
    // A quality floor via header.
    let resp = chat(&f, &chat_body("auto"), "rq", &[("x-bourse-min-quality", "frontier")]).await;
    assert_eq!(resp.headers()["x-bourse-provider"], "premium");
    assert_eq!(f.cheap.stats().requests, 0);
}

#[tokio::test]
async fn no_feasible_model_is_a_400_naming_the_constraints() {
    let f = fixture().await;
    let resp = chat(&f, &chat_body("auto"), "rnone", &[("x-bourse-min-quality", "1500")]).await;
    assert_eq!(resp.status(), 400);
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let e = assert_openai_error(&v);
    assert_eq!(e["code"], "no_feasible_model");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("min_quality: 3"), "{msg}");
    let resp = chat(&f, &chat_body("auto"), "rbad", &[("x-bourse-min-quality", "excellent")]).await;
    assert_eq!(resp.status(), 400);
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"]["param"], "x-bourse-min-quality");
}

#[tokio::test]
async fn routed_streams_work_and_are_metered() {
    let f = fixture().await;
    let mut body = chat_body("auto");
    body["stream"] = json!(true);
    let resp = chat(&f, &body, "rstream", &[]).await;
    assert_eq!(resp.headers()["x-bourse-provider"], "cheap");
    let text = resp.text().await.unwrap();
    assert!(text.contains("data: [DONE]") && text.contains(": x-bourse-cost-usd="));
    let row = &rows(&f, "rstream", 1).await[0];
    assert!(row.stream && row.cost_nanos > 0 && row.route_reason.is_some());
}

#[tokio::test]
async fn quote_ranks_and_explains_without_calling_upstream() {
    let f = fixture().await;
    let mut body = chat_body("auto");
    body["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    body["max_tokens"] = json!(100);
    let resp = client()
        .post(format!("{}/v1/bourse/quote", f.gw.gateway.url))
        .header("content-type", "application/json")
        .header("x-bourse-max-cost-usd", "0.01")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let q: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let models: Vec<&str> = q["candidates"].as_array().unwrap().iter().map(|c| c["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["mid/sim-small", "premium/sim-small"]);
    let c = &q["candidates"][0];
    // mid: $1/M in, $2/M out; 100 output tokens at most.
    let max: f64 = c["max_cost_usd"].as_str().unwrap().parse().unwrap();
    let min: f64 = c["min_cost_usd"].as_str().unwrap().parse().unwrap();
    assert!(min > 0.0 && min < max && max < 0.001, "{c}");
    let ex = &q["excluded"][0];
    assert_eq!(ex["model"], "cheap/sim-small");
    assert_eq!(ex["constraint"], "tools");
    assert_eq!(f.cheap.stats().requests + f.mid.stats().requests + f.premium.stats().requests, 0);
}
