//! The energy estimate through the real gateway in front of upstream-sim: every ledger row an
//! attempt writes carries `energy_uwh` and `co2e_ug` (success, failure with no tokens,
//! stream, estimated usage, embeddings, a model with the default class), with exact values
//! computed by hand from catalog/energy.toml; the answer headers, the stream's closing
//! comment, `/metrics` and `bourse report` say the same numbers.

mod common;
#[path = "common/pg.rs"]
mod pg;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use upstream_sim::UsageStyle;

// Rates at PUE 1.2 (catalog/energy.toml), nano-watt-hours per token:
//   medium: 65 / 250 Wh per 1M tokens -> 78,000 in / 300,000 out
//   tiny:    2 /   7                   ->  2,400 in /   8,400 out
//   large: 170 / 670 (the default)     -> 204,000 in / 804,000 out
// Grids (gCO2e/kWh): US 345, CN 582, WORLD 481 (a model with no hosting).
const MEDIUM: (u64, u64) = (78_000, 300_000);
const TINY: (u64, u64) = (2_400, 8_400);
const LARGE: (u64, u64) = (204_000, 804_000);

/// (µWh, µg) from token totals, rates and grid, rounded half up once from the exact nWh.
fn expect(input: u64, output: u64, rates: (u64, u64), grid: u64) -> (i64, i64) {
    let nwh = input * rates.0 + output * rates.1;
    (((nwh + 500) / 1000) as i64, ((nwh * grid + 500_000) / 1_000_000) as i64)
}

/// Known usage: prompt 1000 (400 cached), completion 80 (30 of it reasoning).
fn known_usage() -> SimConfig {
    SimConfig {
        prompt_tokens: Some(1000),
        cached_tokens: 400,
        output_tokens: 50,
        reasoning_tokens: 30,
        usage_style: UsageStyle::OpenAi,
        ..SimConfig::default()
    }
}

fn config(sim: &Sim, storage_url: &str) -> String {
    format!(
        "[storage]\nurl = \"{storage_url}\"\n\
         [providers.alpha]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n\
         [models.\"alpha/sim-small\"]\ninput = 1.0\ncached_input = 0.1\noutput = 2.0\nhosting = \"US\"\n\
         energy_class = \"medium\"\nenergy_source = \"test: a medium model\"\n\
         [models.\"alpha/emb\"]\nkind = \"embedding\"\ninput = 0.02\nhosting = \"CN\"\n\
         active_params = 0.6\nenergy_source = \"test: 0.6B parameters\"\n\
         [models.\"alpha/plain\"]\ninput = 1.0\noutput = 2.0\n",
        sim.base_url()
    )
}

async fn post(gw: &LedgerGateway, path: &str, rid: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", gw.gateway.url))
        .header("content-type", "application/json")
        .header("x-request-id", rid)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers().get(name).unwrap_or_else(|| panic!("no {name}")).to_str().unwrap().to_string()
}

/// `/metrics` as `name{labels}` -> value.
async fn scrape(url: &str) -> BTreeMap<String, f64> {
    let text = client().get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.parse().unwrap())))
        .collect()
}

#[tokio::test]
async fn energy_on_sqlite() {
    let path = std::env::temp_dir().join(format!("bourse-energy-{}-{}.db", std::process::id(), fastrand::u64(..)));
    every_row_an_attempt_writes_carries_the_energy_estimate(&format!("sqlite:{}", path.display())).await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn energy_on_postgres() {
    let db = pg::Database::create("energy").await;
    every_row_an_attempt_writes_carries_the_energy_estimate(&db.url).await;
    db.drop().await;
}

async fn every_row_an_attempt_writes_carries_the_energy_estimate(url: &str) {
    let sim = Sim::start(known_usage()).await.unwrap();
    let gw = gateway_with_ledger(&config(&sim, url), url).await;
    // (request id, the row's expected (µWh, µg) where it is known exactly)
    let mut rows: Vec<(&str, Option<(i64, i64)>)> = Vec::new();

    // A non-streamed answer: 1,000 prompt tokens and 80 output tokens on a medium model in
    // the US: 1,000 × 78,000 + 80 × 300,000 = 102,000,000 nWh = 102,000 µWh = 0.102 Wh;
    // × 345 g/kWh = 35,190 µg = 0.035190 g.
    let medium = expect(1000, 80, MEDIUM, 345);
    assert_eq!(medium, (102_000, 35_190));
    let resp = post(&gw, "/v1/chat/completions", "e-plain", &chat_body("alpha/sim-small")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-bourse-energy-wh"), "0.102000");
    assert_eq!(header(&resp, "x-bourse-co2e-g"), "0.035190");
    assert!(header(&resp, "x-bourse-energy-method").starts_with("estimate;"));
    rows.push(("e-plain", Some(medium)));

    // Streamed: the same figures in the closing comment, after the cost.
    let mut body = chat_body("alpha/sim-small");
    body["stream"] = json!(true);
    let text = post(&gw, "/v1/chat/completions", "e-stream", &body).await.text().await.unwrap();
    assert!(
        text.contains(" x-bourse-energy-wh=0.102000 x-bourse-co2e-g=0.035190 (energy and CO2e: estimate;"),
        "{text}"
    );
    rows.push(("e-stream", Some(medium)));

    // The Anthropic surface, same model: same estimate.
    let msg = json!({"model": "alpha/sim-small", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    let resp = post(&gw, "/v1/messages", "e-anthropic", &msg).await;
    assert_eq!((resp.status().as_u16(), header(&resp, "x-bourse-energy-wh")), (200, "0.102000".to_string()));
    rows.push(("e-anthropic", Some(medium)));

    // A model added by config with no class: the default (large) and the world grid.
    let default = expect(1000, 80, LARGE, 481);
    let resp = post(&gw, "/v1/chat/completions", "e-default", &chat_body("alpha/plain")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-bourse-energy-wh"), bourse::meter::energy::millionths(default.0));
    rows.push(("e-default", Some(default)));

    // Embeddings: a tiny model hosted in CN, input tokens only.
    let resp = post(&gw, "/v1/embeddings", "e-embed", &json!({"model": "alpha/emb", "input": ["a b c", "d e"]})).await;
    assert_eq!(resp.status(), 200);
    let energy = header(&resp, "x-bourse-energy-wh");
    let answer: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    let prompt = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0, "{answer}");
    let embed = expect(prompt, 0, TINY, 582);
    assert_eq!(energy, bourse::meter::energy::millionths(embed.0));
    rows.push(("e-embed", Some(embed)));

    // A failure with no tokens: the row still carries the estimate, 0.
    sim.set_config(SimConfig {
        failure: Failure::Status { status: 400, retry_after: None, error_type: None, code: None, message: None },
        ..known_usage()
    });
    let resp = post(&gw, "/v1/chat/completions", "e-failed", &chat_body("alpha/sim-small")).await;
    assert!(!resp.status().is_success(), "{}", resp.status());
    rows.push(("e-failed", Some((0, 0))));

    // A stream cut short: usage estimated by the gateway, energy estimated from it.
    sim.set_config(SimConfig {
        failure: Failure::DropMidStream { after_chunks: 4 },
        chunk_delay_ms: 5,
        ..known_usage()
    });
    let _ = post(&gw, "/v1/chat/completions", "e-estimated", &body).await.text().await;
    rows.push(("e-estimated", None));

    for (rid, want) in &rows {
        let row = gw.row(rid).await;
        let all = gw.ledger.rows(rid).await.unwrap();
        for r in &all {
            assert!(r.energy_uwh.is_some() && r.co2e_ug.is_some(), "{rid}: a row without the estimate: {r:?}");
        }
        let got = (row.energy_uwh.unwrap(), row.co2e_ug.unwrap());
        let want = want.unwrap_or_else(|| {
            // Estimated usage: the same arithmetic over what the row says was used.
            assert!(row.estimated() && row.usage.output > 0, "{row:?}");
            expect(row.usage.input_total(), row.usage.output_total(), MEDIUM, 345)
        });
        assert_eq!(got, want, "{rid}: {row:?}");
        if *rid == "e-estimated" {
            assert!(got.0 > 0, "{row:?}");
        }
    }
    // No other rows were written than those checked.
    assert_eq!(gw.ledger.count().await.unwrap(), rows.len() as i64);

    // /metrics: the energy of the medium model's answers, in Wh and grams, labelled estimates.
    let m = scrape(&gw.gateway.url).await;
    let pair = "{route=\"\",provider=\"alpha\",model=\"sim-small\"}";
    let estimated = {
        let r = gw.row("e-estimated").await;
        (r.energy_uwh.unwrap(), r.co2e_ug.unwrap())
    };
    let uwh = 3 * medium.0 + estimated.0;
    let ug = 3 * medium.1 + estimated.1;
    let wh = m[&format!("bourse_energy_wh_total{pair}")];
    let g = m[&format!("bourse_co2e_grams_total{pair}")];
    assert!((wh - uwh as f64 / 1e6).abs() < 1e-9, "{wh} vs {uwh} µWh");
    assert!((g - ug as f64 / 1e6).abs() < 1e-9, "{g} vs {ug} µg");
    let text = client().get(format!("{}/metrics", gw.gateway.url)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("# HELP bourse_energy_wh ESTIMATED energy"), "{text}");
    assert!(text.contains("# HELP bourse_co2e_grams ESTIMATED emissions"), "{text}");

    // The report's sums are the rows' sums, exactly.
    let report = gw
        .ledger
        .report(&bourse::ledger::ReportQuery { by: bourse::ledger::GroupBy::Model, ..Default::default() })
        .await
        .unwrap();
    let small = report.iter().find(|r| r.group == "alpha/sim-small").unwrap();
    assert_eq!((small.energy_uwh, small.co2e_ug), (uwh, ug));
    let emb = report.iter().find(|r| r.group == "alpha/emb").unwrap();
    assert_eq!((emb.energy_uwh, emb.co2e_ug), embed);
    let table = bourse::cli::report::render(&report, bourse::cli::Format::Table);
    assert!(table.contains("energy_wh_est") && table.contains("ESTIMATES"), "{table}");
}
