//! Cascades over real sockets: upstream-sim providers scripted per task (`[task:…]` markers),
//! a route that checks answers and escalates a failed one to a better model.

mod common;

use bourse::ledger::LedgerEntry;
use common::*;
use serde_json::{json, Value};
use upstream_sim::{TaskScript, WrongStyle};

/// Four providers serving `sim-small`, by price: cheap (quality 1310) < low (1300: no better
/// than cheap, so never escalated to) < mid (1390) < premium (1450).
fn config(sims: &[(&str, &Sim)], url: &str, cascade: &str) -> String {
    let mut t = format!(
        "[storage]\nurl = \"{url}\"\n[router]\nmax_attempts = 3\n[routes.extract]\nmin_quality = \"adequate\"\ncascade = {cascade}\n"
    );
    for ((id, sim), (price, quality)) in sims.iter().zip([(0.1, 1310), (0.2, 1300), (1.0, 1390), (5.0, 1450)]) {
        t.push_str(&format!(
            "[providers.{id}]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"sim-small\"]\n\
             [models.\"{id}/sim-small\"]\ninput = {price}\noutput = {price}\nquality = {quality}\ncontext = 32000\n\
             capabilities = [\"tools\", \"json_schema\", \"streaming\"]\n",
            sim.base_url()
        ));
    }
    t
}

/// A sim whose model answers task `extract` correctly with probability `p` (wrong: `wrong`).
async fn sim(p: f64, wrong: WrongStyle) -> Sim {
    let script = TaskScript::new("*", "extract", p).wrong(wrong);
    Sim::start(SimConfig { tasks: vec![script], ..SimConfig::default() }).await.unwrap()
}

struct Fixture {
    sims: Vec<Sim>,
    gw: LedgerGateway,
    _db: std::path::PathBuf,
}

async fn fixture(p: [f64; 4], wrong: WrongStyle, cascade: &str) -> Fixture {
    let mut sims = Vec::new();
    for p in p {
        sims.push(sim(p, wrong).await);
    }
    let db = std::env::temp_dir().join(format!("bourse-cascade-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let url = format!("sqlite:{}", db.display());
    let named: Vec<(&str, &Sim)> = ["cheap", "low", "mid", "premium"].into_iter().zip(sims.iter()).collect();
    let gw = gateway_with_ledger(&config(&named, &url, cascade), &url).await;
    Fixture { sims, gw, _db: db }
}

fn schema_request(item: u32) -> Value {
    json!({
        "model": "extract",
        "messages": [{"role": "user", "content": format!("Extract the total. [task:extract item:{item} answer:42]")}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "total", "strict": true, "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string", "pattern": "^42$"}},
            "required": ["answer"],
            "additionalProperties": false
        }}}
    })
}

async fn send(f: &Fixture, body: &Value, rid: &str) -> reqwest::Response {
    client()
        .post(format!("{}/v1/chat/completions", f.gw.gateway.url))
        .header("content-type", "application/json")
        .header("x-request-id", rid)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn rows(f: &Fixture, rid: &str, n: usize) -> Vec<LedgerEntry> {
    for _ in 0..200 {
        let rows = f.gw.ledger.rows(rid).await.unwrap();
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("fewer than {n} ledger rows for {rid}");
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheap_answer_failing_its_schema_escalates_past_no_better_models() {
    // cheap always answers invalid JSON; low would too, but is no better than cheap.
    let f = fixture([0.0, 0.0, 1.0, 1.0], WrongStyle::InvalidJson, r#"["complete", "json_schema"]"#).await;
    let resp = send(&f, &schema_request(1), "esc").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-bourse-provider"), "mid");
    assert_eq!(header(&resp, "x-bourse-cascade"), "passed; escalations=1");
    assert_eq!(header(&resp, "x-bourse-checks"), "complete:pass,json_schema:pass");
    let reason = header(&resp, "x-bourse-route-reason");
    assert!(reason.contains("attempt 2 (escalated: json_schema failed on cheap/sim-small)"), "{reason}");
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let content: Value = serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"answer": "42"}));
    let requests: Vec<u64> = f.sims.iter().map(|s| s.stats().requests).collect();
    assert_eq!(requests, [1, 0, 1, 0], "low is skipped: no better than cheap");
    // Both attempts are metered rows with their outcomes.
    let rows = rows(&f, "esc", 2).await;
    let summary: Vec<(u32, &str, u16, Option<&str>, bool)> = rows
        .iter()
        .map(|r| (r.attempt, r.provider.as_str(), r.status, r.checks.as_deref(), r.cost_nanos > 0))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "cheap", 200, Some("complete:pass,json_schema:fail"), true),
            (2, "mid", 200, Some("complete:pass,json_schema:pass"), true)
        ]
    );
    assert!(rows[1].route_reason.as_deref().unwrap().contains("escalated: json_schema failed on cheap/sim-small"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_nothing_passes_the_last_answer_comes_back_marked() {
    let f = fixture([0.0, 0.0, 0.0, 0.0], WrongStyle::Truncated, r#"["complete"]"#).await;
    let resp = send(&f, &schema_request(2), "none").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-bourse-provider"), "premium");
    assert_eq!(header(&resp, "x-bourse-cascade"), "failed; escalations=2");
    assert_eq!(header(&resp, "x-bourse-checks"), "complete:fail");
    let rows = rows(&f, "none", 3).await;
    let providers: Vec<&str> = rows.iter().map(|r| r.provider.as_str()).collect();
    assert_eq!(providers, ["cheap", "mid", "premium"], "max_attempts = 3, low skipped");
    assert!(rows.iter().all(|r| r.checks.as_deref() == Some("complete:fail")), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_answer_is_served_at_once_and_unchecked_routes_are_untouched() {
    let f = fixture([1.0, 1.0, 1.0, 1.0], WrongStyle::Answer, r#"["complete", "json_schema"]"#).await;
    let resp = send(&f, &schema_request(3), "ok").await;
    assert_eq!(header(&resp, "x-bourse-provider"), "cheap");
    assert_eq!(header(&resp, "x-bourse-cascade"), "passed; escalations=0");
    assert_eq!(rows(&f, "ok", 1).await[0].checks.as_deref(), Some("complete:pass,json_schema:pass"));
    // Streams are not cascaded; neither are explicit models.
    let mut stream = schema_request(4);
    stream["stream"] = json!(true);
    let resp = send(&f, &stream, "stream").await;
    assert_eq!((resp.status().as_u16(), header(&resp, "x-bourse-cascade")), (200, String::new()));
    let _ = resp.bytes().await;
    let mut explicit = schema_request(5);
    explicit["model"] = json!("cheap/sim-small");
    let resp = send(&f, &explicit, "explicit").await;
    assert_eq!((resp.status().as_u16(), header(&resp, "x-bourse-checks")), (200, String::new()));
    assert_eq!(rows(&f, "explicit", 1).await[0].checks, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_with_wrong_arguments_escalates() {
    let f = fixture([0.0, 0.0, 1.0, 1.0], WrongStyle::Answer, r#"["tool_call"]"#).await;
    let body = json!({
        "model": "extract",
        "messages": [{"role": "user", "content": "Submit the total. [task:extract item:6 answer:42 tool:submit]"}],
        "tools": [{"type": "function", "function": {"name": "submit", "parameters": {
            "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]
        }}}],
        "tool_choice": "required"
    });
    let resp = send(&f, &body, "tool").await;
    assert_eq!(header(&resp, "x-bourse-provider"), "mid");
    assert_eq!(header(&resp, "x-bourse-cascade"), "passed; escalations=1");
    let rows = rows(&f, "tool", 2).await;
    assert_eq!(rows[0].checks.as_deref(), Some("tool_call:fail"));
    assert_eq!(rows[1].checks.as_deref(), Some("tool_call:pass"));
}

#[test]
fn cascade_config_is_checked_at_start_up() {
    for (cascade, want) in [
        (r#"["complet"]"#, "routes.r.cascade: unknown check 'complet'"),
        (r#"["agree"]"#, "'agree' cannot be cascaded on yet"),
        (r#"["complete", "complete"]"#, "'complete' is listed twice"),
    ] {
        let e = bourse::config::Config::from_toml(&format!("[routes.r]\ncascade = {cascade}\n"), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{cascade}: {e}");
    }
}

/// A serving gateway stores its checks' outcomes as evidence for the route (every 5 s), where
/// `bourse evals list` and every replica read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_outcomes_become_stored_evidence() {
    let sims = [
        sim(0.0, WrongStyle::InvalidJson).await,
        sim(0.0, WrongStyle::InvalidJson).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let dir = std::env::temp_dir().join(format!("bourse-cascade-ev-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}", dir.join("ledger.db").display());
    let named: Vec<(&str, &Sim)> = ["cheap", "low", "mid", "premium"].into_iter().zip(sims.iter()).collect();
    let config = dir.join("bourse.toml");
    std::fs::write(&config, self::config(&named, &url, r#"["complete", "json_schema"]"#)).unwrap();
    let mut cmd = bin::command();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&config);
    let gw = bin::serve(&mut cmd).await;
    for item in 0..3 {
        let resp = client()
            .post(format!("{}/v1/chat/completions", gw.url))
            .header("content-type", "application/json")
            .body(schema_request(10 + item).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "x-bourse-cascade"), "passed; escalations=1");
    }
    let ledger = bourse::ledger::Ledger::open(&url).await.unwrap();
    let mut stored = Vec::new();
    for _ in 0..150 {
        stored = ledger.evidence().await.unwrap();
        if stored.len() == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let got: Vec<(&str, &str, &str, f64, u64)> =
        stored.iter().map(|r| (r.route.as_str(), r.model.as_str(), r.source.as_str(), r.score, r.n)).collect();
    assert_eq!(
        got,
        [
            ("extract", "cheap/sim-small", "check:complete", 1.0, 3),
            ("extract", "cheap/sim-small", "check:json_schema", 0.0, 3),
            ("extract", "mid/sim-small", "check:complete", 1.0, 3),
            ("extract", "mid/sim-small", "check:json_schema", 1.0, 3),
        ]
    );
    // The report by route shows the cascade: every request escalated once and passed at mid;
    // the counterfactual prices each first attempt's usage at mid's prices.
    let mut cmd = bin::command();
    cmd.args(["report", "--by", "route", "--format", "json", "--config"]).arg(&config);
    let (status, lines) = bin::Process::run(&mut cmd).await;
    assert!(status.success(), "{lines:?}");
    let report: Value = serde_json::from_str(&lines.join("\n")).unwrap();
    let checked = ledger.checked(None, None).await.unwrap();
    assert_eq!(checked.len(), 6);
    let cost: i64 = checked.iter().map(|r| r.cost_nanos).sum();
    let cfg = bourse::config::Config::from_toml(&std::fs::read_to_string(&config).unwrap(), &|_| None).unwrap();
    let mid = cfg.catalog.get("mid/sim-small").unwrap();
    let all_to_mid: i64 = checked.iter().filter(|r| r.attempt == 1).map(|r| bourse::meter::cost(&r.usage, mid).0).sum();
    assert_eq!(
        report["cascades"],
        json!([{
            "route": "extract", "requests": 3, "escalated": 3, "passed": 3, "attempts": 6,
            "cost_usd": bourse::meter::Cost(cost).usd(),
            "final_model": "mid/sim-small",
            "final_model_cost_usd": bourse::meter::Cost(all_to_mid).usd(),
        }])
    );
    let mut cmd = bin::command();
    cmd.args(["report", "--by", "route", "--config"]).arg(&config);
    let (_, lines) = bin::Process::run(&mut cmd).await;
    let table = lines.join("\n");
    assert!(table.contains("cascades (answers checked per route") && table.contains("mid/sim-small"), "{table}");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
