//! Metering over real sockets: upstream-sim reports known usage (cached and reasoning
//! tokens included); the cost headers and the ledger row must match to the nano-dollar,
//! on SQLite and on PostgreSQL.

mod common;
#[path = "common/pg.rs"]
mod pg;

use common::*;
use serde_json::{json, Value};
use upstream_sim::UsageStyle;

/// sim-small: $1 in / $0.10 cached / $2 out per 1M. Reference: $10 / $1 / $20.
/// Usage below: prompt 1000 of which 400 cached, completion 80 of which 30 reasoning.
///   cost = 600×1,000,000 + 400×100,000 + 80×2,000,000 pico = 800,000,000 pico = 800,000 nano
///   ref  = 600×10,000,000 + 400×1,000,000 + 80×20,000,000 = 8,000,000,000 pico = 8,000,000 nano
const COST: &str = "0.000800000";
const REFERENCE: &str = "0.008000000";
const SAVED: &str = "0.007200000";

fn known_usage(style: UsageStyle) -> SimConfig {
    SimConfig {
        prompt_tokens: Some(1000),
        cached_tokens: 400,
        output_tokens: 50,
        reasoning_tokens: 30,
        usage_style: style,
        ..SimConfig::default()
    }
}

fn config(sim: &Sim, storage_url: &str) -> String {
    format!(
        "[catalog]\nreference = \"alpha/ref\"\n[storage]\nurl = \"{storage_url}\"\n{}{}",
        provider_toml("alpha", sim, ""),
        price("alpha/ref", 10.0, 20.0),
    )
}

async fn post(gw: &LedgerGateway, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/chat/completions", gw.gateway.url))
        .header("content-type", "application/json")
        .header("x-request-id", body["_rid"].as_str().unwrap_or("rid"))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn suite(storage_url: &str) {
    let sim = Sim::start(known_usage(UsageStyle::OpenAi)).await.unwrap();
    let gw = gateway_with_ledger(&config(&sim, storage_url), storage_url).await;

    // Non-streaming, OpenAI usage shape.
    let mut body = chat_body("alpha/sim-small");
    body["_rid"] = json!("rid-openai");
    let resp = post(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-bourse-cost-usd"], COST);
    assert_eq!(h["x-bourse-reference-cost-usd"], REFERENCE);
    assert_eq!(h["x-bourse-saved-usd"], SAVED);
    assert_eq!(h["x-bourse-provider"], "alpha");
    assert_eq!(h["x-bourse-model"], "sim-small");
    let row = gw.row("rid-openai").await;
    assert_eq!(row.cost_nanos, 800_000);
    assert_eq!(row.reference_cost_nanos, 8_000_000);
    assert_eq!(
        (row.usage.input_uncached, row.usage.input_cache_read, row.usage.output, row.usage.output_reasoning),
        (600, 400, 50, 30)
    );
    assert_eq!((row.attempt, row.status, row.estimated(), row.stream), (1, 200, false, false));
    assert_eq!(row.provider, "alpha");
    assert_eq!(row.model, "sim-small");
    assert!(row.catalog_version.contains('#'), "{}", row.catalog_version);
    assert!(row.error_kind.is_none());

    // DeepSeek usage shape (prompt_cache_hit_tokens): same normalized usage, same cost.
    sim.set_config(known_usage(UsageStyle::DeepSeek));
    body["_rid"] = json!("rid-deepseek");
    let resp = post(&gw, &body).await;
    assert_eq!(resp.headers()["x-bourse-cost-usd"], COST);
    assert_eq!(gw.row("rid-deepseek").await.usage.input_cache_read, 400);

    // Streaming: the cost arrives as a comment after [DONE]; the row matches.
    sim.set_config(known_usage(UsageStyle::OpenAi));
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["_rid"] = json!("rid-stream");
    let text = post(&gw, &sbody).await.text().await.unwrap();
    assert!(text.contains(&format!(": x-bourse-cost-usd={COST} x-bourse-reference-cost-usd={REFERENCE}")), "{text}");
    let row = gw.row("rid-stream").await;
    assert_eq!((row.cost_nanos, row.stream, row.estimated()), (800_000, true, false));

    // A stream whose usage never arrives is estimated, not recorded as $0 (by the heuristic:
    // this provider's streams carry usage, so they keep no text for the tokenizer).
    sim.set_config(SimConfig {
        failure: Failure::DropMidStream { after_chunks: 4 },
        chunk_delay_ms: 5,
        ..known_usage(UsageStyle::OpenAi)
    });
    sbody["_rid"] = json!("rid-broken");
    let _ = post(&gw, &sbody).await.text().await;
    let row = gw.row("rid-broken").await;
    assert_eq!(row.estimate, Some(bourse::ledger::Estimate::Heuristic));
    assert_eq!(row.error_kind.as_deref(), Some("upstream_stream_broken"));
    assert!(row.usage.input_uncached > 0 && row.usage.output > 0, "{row:?}");
    assert!(row.cost_nanos > 0);

    // A stream that ends normally without usage (some self-hosted servers ignore
    // include_usage) still ends with its cost comment, which matches the row. This provider
    // had sent usage on its streams, so the first such stream kept no text and is estimated
    // by the heuristic; from then on its streams keep their text and are counted with the
    // tokenizer.
    sim.set_config(SimConfig { usage_style: UsageStyle::Omitted, ..SimConfig::default() });
    sbody["_rid"] = json!("rid-stream-no-usage-1");
    let first = post(&gw, &sbody).await.text().await.unwrap();
    let row = gw.row("rid-stream-no-usage-1").await;
    assert_eq!((row.status, row.estimate), (200, Some(bourse::ledger::Estimate::Heuristic)), "{row:?}");
    assert!(first.contains(&format!(": x-bourse-cost-usd={}", bourse::meter::Cost(row.cost_nanos).usd())), "{first}");
    sbody["_rid"] = json!("rid-stream-no-usage");
    let text = post(&gw, &sbody).await.text().await.unwrap();
    let row = gw.row("rid-stream-no-usage").await;
    assert_eq!((row.status, row.estimate), (200, Some(bourse::ledger::Estimate::Tokenizer)), "{row:?}");
    let answer: String = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert!(!answer.is_empty(), "{text}");
    assert_eq!(row.usage.output, bourse::meter::estimate::tokens(&answer), "the answer's exact o200k count");
    let comment = format!(": x-bourse-cost-usd={}", bourse::meter::Cost(row.cost_nanos).usd());
    assert!(
        text.contains(&comment) && text.find("[DONE]") < text.find(&comment),
        "the cost comment follows [DONE]: {text}"
    );

    // A complete answer without usage (some self-hosted servers) is estimated too, and the
    // cost the client is told is the cost recorded.
    sim.set_config(SimConfig { usage_style: UsageStyle::Omitted, ..SimConfig::default() });
    body["_rid"] = json!("rid-no-usage");
    let resp = post(&gw, &body).await;
    assert_eq!(resp.status(), 200);
    let told = resp.headers()["x-bourse-cost-usd"].to_str().unwrap().to_string();
    let answer: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert!(answer.get("usage").is_none(), "the sim left usage out: {answer}");
    let row = gw.row("rid-no-usage").await;
    assert!(row.estimated() && row.usage.input_uncached > 0 && row.usage.output > 0, "{row:?}");
    assert!(row.cost_nanos > 0);
    assert_eq!(told, bourse::meter::Cost(row.cost_nanos).usd());

    // A failed attempt is a row too.
    sim.set_config(SimConfig {
        failure: Failure::Status { status: 503, retry_after: None, error_type: None, code: None, message: None },
        ..SimConfig::default()
    });
    body["_rid"] = json!("rid-failed");
    assert_eq!(post(&gw, &body).await.status(), 503);
    let row = gw.row("rid-failed").await;
    assert_eq!((row.status, row.cost_nanos), (503, 0));
    assert_eq!(row.error_kind.as_deref(), Some("upstream_5xx"));

    // An unpriced model is refused, with the fix in the message; nothing reaches upstream.
    let before = sim.stats().requests;
    let resp = post(&gw, &chat_body("alpha/no-price-model")).await;
    assert_eq!(resp.status(), 400);
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("[models.\"alpha/no-price-model\"]"), "{v}");
    assert_eq!(sim.stats().requests, before);

    // The usage report adds the rows up exactly.
    let report: Value = serde_json::from_slice(
        &client()
            .get(format!("{}/v1/bourse/usage?by=model", gw.gateway.url))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let row = report["data"].as_array().unwrap().iter().find(|r| r["group"] == "alpha/sim-small").unwrap().clone();
    let mut estimated = 0;
    for rid in ["rid-broken", "rid-stream-no-usage-1", "rid-stream-no-usage", "rid-no-usage"] {
        estimated += gw.row(rid).await.cost_nanos;
    }
    assert_eq!(row["cost_nanos"], json!(800_000 * 3 + estimated));
    assert_eq!(row["errors"], json!(2));
}

#[tokio::test]
async fn metering_on_sqlite() {
    let path = std::env::temp_dir().join(format!("bourse-meter-{}-{}.db", std::process::id(), fastrand::u64(..)));
    suite(&format!("sqlite:{}", path.display())).await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn metering_on_postgres() {
    let db = pg::Database::create("metering").await;
    suite(&db.url).await;
    db.drop().await;
}

/// A non-streaming request whose client goes away before the answer: the upstream call is
/// cancelled with it, and the attempt still gets its ledger row (status 499, no usage: what
/// the upstream did by then is unknown) rather than none.
#[tokio::test]
async fn a_client_gone_before_the_answer_leaves_a_499_row() {
    let path = std::env::temp_dir().join(format!("bourse-gone-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let url = format!("sqlite:{}", path.display());
    let sim = Sim::start(SimConfig { ttft_ms: 3_000, ..known_usage(UsageStyle::OpenAi) }).await.unwrap();
    let gw = gateway_with_ledger(&config(&sim, &url), &url).await;
    let mut body = chat_body("alpha/sim-small");
    body["_rid"] = json!("rid-gone");
    let quick = reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_millis(300)).build().unwrap();
    let sent = quick
        .post(format!("{}/v1/chat/completions", gw.gateway.url))
        .header("content-type", "application/json")
        .header("x-request-id", "rid-gone")
        .body(body.to_string())
        .send()
        .await;
    assert!(sent.is_err_and(|e| e.is_timeout()), "the client gave up before the answer");
    let row = gw.row("rid-gone").await;
    assert_eq!((row.status, row.error_kind.as_deref(), row.cost_nanos), (499, Some("client_disconnected"), 0));
    assert_eq!(row.usage, bourse::canonical::Usage::default());
    let _ = std::fs::remove_file(&path);
}
