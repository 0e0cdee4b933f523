//! Cascades over real sockets: upstream-sim providers scripted per task (`[task:…]` markers),
//! a route that checks answers and escalates a failed one to a better model.

mod common;

use bourse::ledger::LedgerEntry;
use bourse::state::AppState;
use common::{bin, client, test_env, Sim, SimConfig};
use serde_json::{json, Value};
use std::sync::Arc;
use upstream_sim::{TaskScript, WrongStyle};

/// Four providers serving `sim-small`, by price: cheap (quality 1310) < low (1300: no better
/// than cheap, so never escalated to) < mid (1390) < premium (1450). `route` is the rest of
/// `[routes.extract]`; `side` are providers of models a check calls by name (a judge, a
/// shadow): rated 1000, below the route's floor, so never routed to.
fn config(sims: &[(&str, &Sim)], url: &str, route: &str, side: &[(&str, &str, &Sim)]) -> String {
    let mut t = format!(
        "[storage]\nurl = \"{url}\"\n[router]\nmax_attempts = 3\n[routes.extract]\nmin_quality = \"adequate\"\n{route}\n"
    );
    let routed = sims.iter().zip([(0.1, 1310), (0.2, 1300), (1.0, 1390), (5.0, 1450)]);
    let side = side.iter().map(|(id, model, sim)| ((*id, *sim), *model, (0.5, 1000)));
    for ((id, sim), model, (price, quality)) in routed.map(|((id, sim), q)| ((*id, *sim), "sim-small", q)).chain(side) {
        t.push_str(&format!(
            "[providers.{id}]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"{model}\"]\n\
             [models.\"{id}/{model}\"]\ninput = {price}\noutput = {price}\nquality = {quality}\ncontext = 32000\n\
             capabilities = [\"tools\", \"json_schema\", \"streaming\"]\n",
            sim.base_url()
        ));
    }
    t
}

/// `route` with a cascade of these checks.
fn cascading(checks: &str) -> String {
    format!("cascade = {checks}")
}

/// A sim whose model answers task `extract` correctly with probability `p` (wrong: `wrong`).
async fn sim(p: f64, wrong: WrongStyle) -> Sim {
    seeded_sim(p, wrong, 0).await
}

/// The same, with its own task seed: two sims with different seeds give different wrong
/// values for the same item.
async fn seeded_sim(p: f64, wrong: WrongStyle, task_seed: u64) -> Sim {
    let script = TaskScript::new("*", "extract", p).wrong(wrong);
    Sim::start(SimConfig { tasks: vec![script], task_seed, ..SimConfig::default() }).await.unwrap()
}

struct Fixture {
    sims: Vec<Sim>,
    url: String,
    ledger: bourse::ledger::Ledger,
    /// The gateway's state: its router's live evidence.
    state: Arc<AppState>,
    _gw: Gateway,
    _writer: bourse::ledger::WriterHandle,
    _db: std::path::PathBuf,
}

async fn fixture(p: [f64; 4], wrong: WrongStyle, cascade: &str) -> Fixture {
    let mut sims = Vec::new();
    for p in p {
        sims.push(sim(p, wrong).await);
    }
    fixture_with(sims, &cascading(cascade), &[]).await
}

/// A gateway over these four routed sims (cheap, low, mid, premium), with a ledger, the
/// rest of the route's config and the side providers.
async fn fixture_with(sims: Vec<Sim>, route: &str, side: &[(&str, &str, &Sim)]) -> Fixture {
    use bourse::ledger::{Ledger, Writer, WriterConfig};
    let db = std::env::temp_dir().join(format!("bourse-cascade-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let url = format!("sqlite:{}", db.display());
    let named: Vec<(&str, &Sim)> = ["cheap", "low", "mid", "premium"].into_iter().zip(sims.iter()).collect();
    let cfg = bourse::config::Config::from_toml(&config(&named, &url, route, side), &test_env).unwrap();
    let mut state = AppState::from_config(&cfg).unwrap();
    let config = WriterConfig { flush_interval: std::time::Duration::from_millis(10), ..WriterConfig::default() };
    let (writer, handle) = Writer::start(Ledger::open(&url).await.unwrap(), config);
    state.ledger = Some(writer);
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = state.clone();
    let task = tokio::spawn(async move { bourse::server::serve(listener, serving, std::future::pending()).await });
    Fixture {
        sims,
        url: format!("http://{addr}"),
        ledger: Ledger::open(&url).await.unwrap(),
        state,
        _gw: Gateway { task },
        _writer: handle,
        _db: db,
    }
}

/// Stops the in-process gateway with the test.
struct Gateway {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
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
        .post(format!("{}/v1/chat/completions", f.url))
        .header("content-type", "application/json")
        .header("x-request-id", rid)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn rows(f: &Fixture, rid: &str, n: usize) -> Vec<LedgerEntry> {
    for _ in 0..200 {
        let rows = f.ledger.rows(rid).await.unwrap();
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
        (r#"["complete", "complete"]"#, "'complete' is listed twice"),
    ] {
        let e = bourse::config::Config::from_toml(&format!("[routes.r]\ncascade = {cascade}\n"), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{cascade}: {e}");
    }
    for (route, want) in [
        ("cascade = [\"complete\"]\ncascade_streaming = \"bufer\"", "\"bufer\" must be \"off\" or \"buffer\""),
        ("cascade_streaming = \"buffer\"", "routes.r.cascade_streaming: \"buffer\" needs a cascade on the route"),
    ] {
        let e =
            bourse::config::Config::from_toml(&format!("[routes.r]\n{route}\n"), &|_| None).unwrap_err().to_string();
        assert!(e.contains(want), "{route}: {e}");
    }
}

/// `bourse serve` (the real binary) over four sims on a store of its own: cheap and low answer
/// `extract` with invalid JSON, mid and premium correctly; the route cascades on `checks`.
struct Binary {
    gw: bin::Served,
    dir: std::path::PathBuf,
    config: std::path::PathBuf,
    url: String,
    /// Just before the process started.
    started: std::time::Instant,
    _sims: Vec<Sim>,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn serve_binary(checks: &str) -> Binary {
    let sims = vec![
        sim(0.0, WrongStyle::InvalidJson).await,
        sim(0.0, WrongStyle::InvalidJson).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let dir = std::env::temp_dir().join(format!("bourse-cascade-bin-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}", dir.join("ledger.db").display());
    let named: Vec<(&str, &Sim)> = ["cheap", "low", "mid", "premium"].into_iter().zip(sims.iter()).collect();
    let config = dir.join("bourse.toml");
    std::fs::write(&config, self::config(&named, &url, &cascading(checks), &[])).unwrap();
    let mut cmd = bin::command();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&config);
    let started = std::time::Instant::now();
    let gw = bin::serve(&mut cmd).await;
    Binary { gw, dir, config, url, started, _sims: sims }
}

/// A serving gateway stores its checks' outcomes as evidence for the route (every 5 s), where
/// `bourse evals list` and every replica read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_outcomes_become_stored_evidence() {
    let b = serve_binary(r#"["complete", "json_schema"]"#).await;
    for item in 0..3 {
        let resp = client()
            .post(format!("{}/v1/chat/completions", b.gw.url))
            .header("content-type", "application/json")
            .body(schema_request(10 + item).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "x-bourse-cascade"), "passed; escalations=1");
    }
    let ledger = bourse::ledger::Ledger::open(&b.url).await.unwrap();
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
    cmd.args(["report", "--by", "route", "--format", "json", "--config"]).arg(&b.config);
    let (status, lines) = bin::Process::run(&mut cmd).await;
    assert!(status.success(), "{lines:?}");
    let report: Value = serde_json::from_str(&lines.join("\n")).unwrap();
    let checked = ledger.checked(None, None).await.unwrap();
    assert_eq!(checked.len(), 6);
    let cost: i64 = checked.iter().map(|r| r.cost_nanos).sum();
    let cfg = bourse::config::Config::from_toml(&std::fs::read_to_string(&b.config).unwrap(), &|_| None).unwrap();
    let mid = cfg.catalog.get("mid/sim-small").unwrap();
    let all_to_mid: i64 = checked.iter().filter(|r| r.attempt == 1).map(|r| bourse::meter::cost(&r.usage, mid).0).sum();
    assert_eq!(
        report["cascades"],
        json!([{
            "route": "extract", "requests": 3, "escalated": 3, "passed": 3, "attempts": 6,
            "cost_usd": bourse::meter::Cost(cost).usd(),
            "final_model": "mid/sim-small",
            "final_model_cost_usd": bourse::meter::Cost(all_to_mid).usd(),
            "judged": 0, "shadowed": 0, "shadow_cost_usd": "0.000000000",
        }])
    );
    let mut cmd = bin::command();
    cmd.args(["report", "--by", "route", "--config"]).arg(&b.config);
    let (_, lines) = bin::Process::run(&mut cmd).await;
    let table = lines.join("\n");
    assert!(table.contains("cascades (answers checked per route") && table.contains("mid/sim-small"), "{table}");
}

// ------------------------------------------------------------------ agree

/// A plain question whose true answer is 42; scripted sims answer `Final answer: N`.
fn question(item: u32) -> Value {
    json!({
        "model": "extract",
        "messages": [{"role": "user", "content": format!("What is the total? [task:extract item:{item} answer:42]")}]
    })
}

const AGREE: &str =
    "cascade = [\"complete\", \"agree\"]\nagree = { models = 2, match = 'regex:(?i)final answer:\\s*(.+)' }";

fn summary(rows: &[LedgerEntry]) -> Vec<(u32, &str, Option<&str>)> {
    rows.iter().map(|r| (r.attempt, r.provider.as_str(), r.checks.as_deref())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scouts_that_agree_serve_the_cheapest_answer() {
    let sims = vec![
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let f = fixture_with(sims, AGREE, &[]).await;
    let resp = send(&f, &question(20), "agreed").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-bourse-provider"), "cheap");
    assert_eq!(header(&resp, "x-bourse-checks"), "complete:pass,agree:pass");
    assert_eq!(header(&resp, "x-bourse-cascade"), "passed; escalations=0");
    assert!(header(&resp, "x-bourse-route-reason").ends_with("; agree scout 1 of 2"));
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Final answer: 42");
    let requests: Vec<u64> = f.sims.iter().map(|s| s.stats().requests).collect();
    assert_eq!(requests, [1, 1, 0, 0], "the two cheapest are the scouts");
    // Each scout is a metered row with its outcomes; its route reason says it scouted.
    let rows = rows(&f, "agreed", 2).await;
    assert_eq!(
        summary(&rows),
        [(1, "cheap", Some("complete:pass,agree:pass")), (2, "low", Some("complete:pass,agree:pass"))]
    );
    assert!(rows.iter().all(|r| r.cost_nanos > 0 && r.error_kind.is_none()), "{rows:?}");
    assert!(rows[1].route_reason.as_deref().unwrap().contains("chose low/sim-small"), "{rows:?}");
    assert!(rows[1].route_reason.as_deref().unwrap().ends_with("; agree scout 2 of 2"), "{rows:?}");
    // Their agreement is live evidence for both.
    f.state.router.evidence.rebuild();
    let table = f.state.router.evidence.snapshot();
    for model in ["cheap/sim-small", "low/sim-small"] {
        let q = table.route("extract").and_then(|r| r.model(model)).unwrap();
        assert_eq!((q.mean_ppm, q.n), (1_000_000, 2), "{model}: complete and agree");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scouts_are_asked_at_once() {
    let slow = || async {
        let script = TaskScript::new("*", "extract", 1.0);
        Sim::start(SimConfig { tasks: vec![script], ttft_ms: 400, ..SimConfig::default() }).await.unwrap()
    };
    let sims = vec![slow().await, slow().await, slow().await, slow().await];
    let f = fixture_with(sims, AGREE, &[]).await;
    let started = std::time::Instant::now();
    let resp = send(&f, &question(24), "parallel").await;
    let took = started.elapsed();
    assert_eq!(header(&resp, "x-bourse-checks"), "complete:pass,agree:pass");
    assert!(took < std::time::Duration::from_millis(780), "two 400 ms scouts took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scouts_that_disagree_escalate_past_the_best_of_them() {
    // Both scouts are wrong, each its own way (their seeds differ).
    let sims = vec![
        seeded_sim(0.0, WrongStyle::Answer, 1).await,
        seeded_sim(0.0, WrongStyle::Answer, 2).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let f = fixture_with(sims, AGREE, &[]).await;
    let resp = send(&f, &question(21), "disagreed").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-bourse-provider"), "mid");
    assert_eq!(header(&resp, "x-bourse-cascade"), "passed; escalations=1");
    // The escalated answer has nothing left to agree with: its single-answer checks only.
    assert_eq!(header(&resp, "x-bourse-checks"), "complete:pass");
    let reason = header(&resp, "x-bourse-route-reason");
    assert!(
        reason.contains("attempt 3 (escalated: agree failed on scouts cheap/sim-small, low/sim-small)"),
        "{reason}"
    );
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Final answer: 42");
    let rows = rows(&f, "disagreed", 3).await;
    assert_eq!(
        summary(&rows),
        [
            (1, "cheap", Some("complete:pass,agree:fail")),
            (2, "low", Some("complete:pass,agree:fail")),
            (3, "mid", Some("complete:pass"))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_client_is_scouted_in_its_own_dialect() {
    let sims = vec![
        seeded_sim(0.0, WrongStyle::Answer, 1).await,
        seeded_sim(0.0, WrongStyle::Answer, 2).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let f = fixture_with(sims, AGREE, &[]).await;
    let body = json!({
        "model": "extract",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "What is the total? [task:extract item:25 answer:42]"}]
    });
    let resp = client()
        .post(format!("{}/v1/messages", f.url))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-request-id", "anthropic")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-bourse-provider"), "mid");
    assert_eq!(header(&resp, "x-bourse-cascade"), "passed; escalations=1");
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["content"][0]["text"], "Final answer: 42");
    let rows = rows(&f, "anthropic", 3).await;
    assert_eq!(rows[0].checks.as_deref(), Some("complete:pass,agree:fail"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_of_two_in_three_serves_the_cheapest_that_agreed() {
    // cheap is wrong; low and mid agree; max_attempts 3, so there is no escalation left.
    let sims = vec![
        seeded_sim(0.0, WrongStyle::Answer, 1).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let route = "cascade = [\"agree\"]\nagree = { models = 3, match = 'regex:(?i)final answer:\\s*(.+)', quorum = 2 }";
    let f = fixture_with(sims, route, &[]).await;
    let resp = send(&f, &question(22), "quorum").await;
    assert_eq!(header(&resp, "x-bourse-provider"), "low");
    assert_eq!(header(&resp, "x-bourse-checks"), "agree:pass");
    let rows = rows(&f, "quorum", 3).await;
    assert_eq!(
        summary(&rows),
        [(1, "cheap", Some("agree:fail")), (2, "low", Some("agree:pass")), (3, "mid", Some("agree:pass"))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scout_that_fails_is_a_row_and_gives_no_answer() {
    let failing = Sim::start(SimConfig {
        failure: upstream_sim::Failure::Status {
            status: 503,
            retry_after: None,
            error_type: None,
            code: None,
            message: None,
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let sims = vec![
        failing,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let f = fixture_with(sims, AGREE, &[]).await;
    let resp = send(&f, &question(23), "scout-failed").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-bourse-provider"), "mid", "one answer cannot make a quorum of all");
    let rows = rows(&f, "scout-failed", 3).await;
    let got: Vec<(u32, &str, u16, Option<&str>)> =
        rows.iter().map(|r| (r.attempt, r.provider.as_str(), r.status, r.checks.as_deref())).collect();
    assert_eq!(
        got,
        [
            (1, "cheap", 503, None),
            (2, "low", 200, Some("complete:pass,agree:fail")),
            (3, "mid", 200, Some("complete:pass"))
        ]
    );
}

// ------------------------------------------------------------------ judge

const JUDGED: &str = "cascade = [\"complete\", \"judge\"]\n\
                      judge = { model = \"judge/sim-judge\", rubric = \"[judge] The total must be right.\" }";

async fn judge_sim(failure: Option<upstream_sim::Failure>) -> Sim {
    Sim::start(SimConfig { failure: failure.unwrap_or_default(), ..SimConfig::default() }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_fail_escalates_and_each_judgement_is_a_row() {
    let sims = vec![
        sim(0.0, WrongStyle::Answer).await,
        sim(0.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let judge = judge_sim(None).await;
    let f = fixture_with(sims, JUDGED, &[("judge", "sim-judge", &judge)]).await;
    let resp = send(&f, &question(30), "judged").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-bourse-provider"), "mid");
    assert_eq!(header(&resp, "x-bourse-checks"), "complete:pass,judge:pass");
    assert_eq!(header(&resp, "x-bourse-cascade"), "passed; escalations=1");
    assert!(header(&resp, "x-bourse-route-reason").contains("(escalated: judge failed on cheap/sim-small)"));
    assert_eq!(judge.stats().requests, 2);
    // The judge saw the rubric, the question and the answer.
    let asked = judge.last_request().unwrap();
    let prompt = asked.body["messages"][1]["content"].as_str().unwrap().to_string();
    assert!(
        prompt.contains("[judge] The total must be right.") && prompt.contains("ANSWER TO GRADE:\nFinal answer: 42")
    );
    let rows = rows(&f, "judged", 4).await;
    let got: Vec<(u32, &str, Option<&str>, Option<&str>)> = rows
        .iter()
        .map(|r| {
            (r.attempt, r.provider.as_str(), r.checks.as_deref(), r.route_reason.as_deref().filter(|_| r.attempt == 0))
        })
        .collect();
    assert_eq!(
        got,
        [
            (0, "judge", None, Some("judge for cheap/sim-small")),
            (0, "judge", None, Some("judge for mid/sim-small")),
            (1, "cheap", Some("complete:pass,judge:fail"), None),
            (2, "mid", Some("complete:pass,judge:pass"), None)
        ]
    );
    // The judge's calls are spend with no counterfactual: they count against the savings.
    assert!(rows.iter().filter(|r| r.attempt == 0).all(|r| r.cost_nanos > 0 && r.reference_cost_nanos == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_that_errs_leaves_the_answer_to_its_other_checks() {
    let sims = vec![
        sim(0.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let down =
        upstream_sim::Failure::Status { status: 500, retry_after: None, error_type: None, code: None, message: None };
    let judge = judge_sim(Some(down)).await;
    let f = fixture_with(sims, JUDGED, &[("judge", "sim-judge", &judge)]).await;
    let resp = send(&f, &question(31), "judge-down").await;
    assert_eq!(header(&resp, "x-bourse-provider"), "cheap");
    assert_eq!(header(&resp, "x-bourse-checks"), "complete:pass");
    assert_eq!(header(&resp, "x-bourse-cascade"), "passed; escalations=0");
    let rows = rows(&f, "judge-down", 2).await;
    let got: Vec<(u32, &str, u16)> = rows.iter().map(|r| (r.attempt, r.provider.as_str(), r.status)).collect();
    assert_eq!(got, [(0, "judge", 500), (1, "cheap", 200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_share_of_zero_judges_nothing() {
    let sims = vec![
        sim(0.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let judge = judge_sim(None).await;
    let route = JUDGED.replace(" }", ", share = 0.0 }");
    let f = fixture_with(sims, &route, &[("judge", "sim-judge", &judge)]).await;
    let resp = send(&f, &question(32), "unjudged").await;
    assert_eq!(
        (header(&resp, "x-bourse-provider"), header(&resp, "x-bourse-checks")),
        ("cheap".into(), "complete:pass".into())
    );
    assert_eq!(judge.stats().requests, 0);
}

// ------------------------------------------------------------------ shadow

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadowed_request_is_answered_again_and_agreement_is_evidence() {
    let sims = vec![
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let reference = sim(1.0, WrongStyle::Answer).await;
    let route =
        "shadow = { model = \"ref/sim-small\", share = 1.0 }\nagree = { match = 'regex:(?i)final answer:\\s*(.+)' }";
    let f = fixture_with(sims, route, &[("ref", "sim-small", &reference)]).await;
    let resp = send(&f, &question(40), "shadowed").await;
    assert_eq!((resp.status().as_u16(), header(&resp, "x-bourse-provider")), (200, "cheap".to_string()));
    let shadowed = rows(&f, "shadowed", 2).await;
    let shadow = shadowed.iter().find(|r| r.attempt == 0).unwrap();
    assert_eq!(
        (shadow.provider.as_str(), shadow.route_reason.as_deref()),
        ("ref", Some("shadow for shadowed on route extract"))
    );
    assert!(shadow.cost_nanos > 0 && shadow.reference_cost_nanos == 0 && shadow.key_id.is_none(), "{shadow:?}");
    assert_eq!(shadow.error_kind, None);
    // The agreement is evidence for the model that served, under `check:shadow`.
    assert!(
        common::eventually(|| {
            f.state.router.evidence.rebuild();
            let table = f.state.router.evidence.snapshot();
            table
                .route("extract")
                .and_then(|r| r.model("cheap/sim-small"))
                .is_some_and(|q| q.n == 1 && q.mean_ppm == 1_000_000)
        })
        .await
    );
    // Streams are not shadowed.
    let mut stream = question(41);
    stream["stream"] = json!(true);
    let resp = send(&f, &stream, "streamed").await;
    let _ = resp.bytes().await;
    assert_eq!(rows(&f, "streamed", 1).await.len(), 1);
    assert_eq!(reference.stats().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_disagrees_is_evidence_against_the_served_model() {
    let sims = vec![
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let reference = sim(0.0, WrongStyle::Answer).await;
    let route = "shadow = { model = \"ref/sim-small\", share = 1.0 }";
    let f = fixture_with(sims, route, &[("ref", "sim-small", &reference)]).await;
    for i in 0..2 {
        assert_eq!(send(&f, &question(42 + i), &format!("against-{i}")).await.status(), 200);
    }
    assert!(
        common::eventually(|| {
            f.state.router.evidence.rebuild();
            let table = f.state.router.evidence.snapshot();
            let q = table.route("extract").and_then(|r| r.model("cheap/sim-small"));
            q.is_some_and(|q| q.n == 2 && q.mean_ppm == 0)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_share_of_zero_shadows_nothing() {
    let sims = vec![
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let reference = sim(1.0, WrongStyle::Answer).await;
    let route = "shadow = { model = \"ref/sim-small\", share = 0.0 }";
    let f = fixture_with(sims, route, &[("ref", "sim-small", &reference)]).await;
    for i in 0..5 {
        let resp = send(&f, &question(50 + i), &format!("plain-{i}")).await;
        assert_eq!(resp.status(), 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(reference.stats().requests, 0);
    assert!(rows(&f, "plain-4", 1).await.iter().all(|r| r.attempt == 1));
}

#[test]
fn agree_judge_and_shadow_config_is_checked_at_start_up() {
    let provider = "[providers.p]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:9\"\nmodels = [\"m\"]\n\
                    [models.\"p/m\"]\ninput = 1\noutput = 1\n";
    for (route, want) in [
        (
            "cascade = [\"agree\"]\nagree = { models = 1 }",
            "routes.r.agree.models: must be between 2 and router.max_attempts (3)",
        ),
        ("cascade = [\"agree\"]\nagree = { models = 4 }", "routes.r.agree.models"),
        ("cascade = [\"agree\"]\nagree = { match = \"fuzzy\" }", "routes.r.agree.match: agree 'fuzzy' must be exact"),
        ("cascade = [\"agree\"]\nagree = { match = \"regex:(\" }", "routes.r.agree.match: agree regex"),
        (
            "cascade = [\"agree\"]\nagree = { models = 2, quorum = 3 }",
            "routes.r.agree.quorum: must be between 2 and agree.models (2)",
        ),
        ("agree = { models = 2 }", "routes.r.agree: set, but neither the cascade"),
        ("cascade = [\"judge\"]", "routes.r.cascade: lists \"judge\" but the route sets no judge"),
        ("judge = { model = \"p/m\", rubric = \"x\" }", "routes.r.judge: set, but the cascade does not list"),
        (
            "cascade = [\"judge\"]\njudge = { model = \"q/m\", rubric = \"x\" }",
            "routes.r.judge.model: \"q\" is not a configured provider",
        ),
        (
            "cascade = [\"judge\"]\njudge = { model = \"p/n\", rubric = \"x\" }",
            "routes.r.judge.model: \"p/n\" is not in the catalog",
        ),
        ("cascade = [\"judge\"]\njudge = { model = \"p/m\", rubric = \" \" }", "routes.r.judge.rubric"),
        ("cascade = [\"judge\"]\njudge = { model = \"p/m\", rubric = \"x\", share = 2.0 }", "routes.r.judge.share"),
        ("shadow = { model = \"p/m\", share = -0.1 }", "routes.r.shadow.share"),
        (
            "shadow = { model = \"p/m\", share = 0.1, check = \"judge\" }",
            "routes.r.shadow.check: 'judge' is not a shadow check",
        ),
        ("shadow = { model = \"m\", share = 0.1 }", "routes.r.shadow.model: \"m\" must be a model as provider/model"),
        ("shadow = { model = \"p/m\", share = 0.1, sample = 1 }", "unknown field `sample`"),
    ] {
        let e = bourse::config::Config::from_toml(&format!("{provider}[routes.r]\n{route}\n"), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{route}: {e}");
    }
    let ok = "cascade = [\"agree\", \"judge\"]\nagree = { models = 3, match = 'pointer:/answer', quorum = 2 }\n\
              judge = { model = \"p/m\", rubric = \"x\", share = 0.5 }\nshadow = { model = \"p/m\", share = 0.05, check = \"agree\" }";
    bourse::config::Config::from_toml(&format!("{provider}[routes.r]\n{ok}\n"), &|_| None).unwrap();
}

// ------------------------------------------------------------------ budgets

/// A virtual key on a route that scouts, judges and shadows: each scout and the judge hold and
/// settle on the key's budget, the answering scout gives the concurrency lease back (a key
/// allowing one request at a time makes the next one), and the shadow is not the key's spend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scouts_and_judge_settle_on_the_keys_budget_and_the_shadow_does_not() {
    use bourse::limit::ScopeKind;
    let sims = [
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
        sim(1.0, WrongStyle::Answer).await,
    ];
    let (judge, reference) = (judge_sim(None).await, sim(1.0, WrongStyle::Answer).await);
    let db = std::env::temp_dir().join(format!("bourse-cascade-key-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let url = format!("sqlite:{}", db.display());
    let named: Vec<(&str, &Sim)> = ["cheap", "low", "mid", "premium"].into_iter().zip(sims.iter()).collect();
    let route = format!(
        "{AGREE}\n{}\nshadow = {{ model = \"ref/sim-small\", share = 1.0 }}",
        &JUDGED[JUDGED.find('\n').unwrap() + 1..]
    )
    .replace("cascade = [\"complete\", \"agree\"]", "cascade = [\"complete\", \"agree\", \"judge\"]");
    let side: [(&str, &str, &Sim); 2] = [("judge", "sim-judge", &judge), ("ref", "sim-small", &reference)];
    let toml = format!(
        "[server]\napi_keys = [\"env:GATEWAY_KEY\"]\nadmin_keys = [\"env:GATEWAY_KEY_2\"]\n{}",
        config(&named, &url, &route, &side)
    );
    let cfg = bourse::config::Config::from_toml(&toml, &test_env).unwrap();
    let (state, _writer) = bourse::server::prepare(&cfg).await.unwrap();
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let serving = state.clone();
    let _gw = Gateway {
        task: tokio::spawn(async move { bourse::server::serve(listener, serving, std::future::pending()).await }),
    };
    let admin = |path: &str, body: Value| {
        client()
            .post(format!("{base}{path}"))
            .bearer_auth("gw-other")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    assert_eq!(
        admin("/admin/v1/tenants", json!({"name": "acme", "budget_day_usd": "10"})).await.unwrap().status(),
        201
    );
    let key = admin("/admin/v1/keys", json!({"tenant": "acme", "concurrency": 1})).await.unwrap();
    let key: Value = serde_json::from_slice(&key.bytes().await.unwrap()).unwrap();
    let (id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    for rid in ["k1", "k2"] {
        let resp = client()
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(secret)
            .header("content-type", "application/json")
            .header("x-request-id", rid)
            .body(question(60).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{rid}: the answering scout gave the lease back");
        assert_eq!(header(&resp, "x-bourse-checks"), "complete:pass,agree:pass,judge:pass");
    }
    let ledger = state.reports.as_ref().unwrap();
    let mut rows = Vec::new();
    for _ in 0..200 {
        rows = [ledger.rows("k1").await.unwrap(), ledger.rows("k2").await.unwrap()].concat();
        if rows.len() == 8 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Per request: a shadow (no key), a judge and two scouts (the key's).
    let keyed: Vec<(u32, &str, Option<&str>)> =
        rows.iter().map(|r| (r.attempt, r.provider.as_str(), r.key_id.as_deref())).collect();
    let request = [(0, "ref", None), (0, "judge", Some(id)), (1, "cheap", Some(id)), (2, "low", Some(id))];
    let mut want = request.to_vec();
    want.extend(request);
    let mut sorted = keyed.clone();
    for part in sorted.chunks_mut(4) {
        part.sort_by_key(|(a, p, _)| (*a, *p != "ref"));
    }
    assert_eq!(sorted, want);
    let spent: i64 = rows.iter().filter(|r| r.key_id.is_some()).map(|r| r.cost_nanos).sum();
    let usage = state.counters.usage(ScopeKind::Tenant, "acme", "acme", bourse::timespec::now_ms()).await.unwrap();
    assert_eq!((usage.day, usage.reserved, usage.in_flight), (spent, 0, 0));
    let _ = std::fs::remove_file(&db);
}

/// `cascade_streaming = "buffer"`: a streamed request is cascaded like any other (its attempts
/// go upstream without streaming) and the answer that stands is replayed as a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_stream_is_checked_then_replayed() {
    let cascade = "[\"complete\", \"json_schema\"]\ncascade_streaming = \"buffer\"";
    let f = fixture([0.0, 0.0, 1.0, 1.0], WrongStyle::InvalidJson, cascade).await;
    let mut body = schema_request(30);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = send(&f, &body, "buffered").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "text/event-stream");
    assert_eq!(header(&resp, "x-bourse-provider"), "mid");
    assert_eq!(header(&resp, "x-bourse-cascade"), "passed; escalations=1");
    let cost = header(&resp, "x-bourse-cost-usd");
    let bytes = resp.bytes().await.unwrap();
    let items = bourse::sse::parse_all(&bytes);
    let mut data = Vec::new();
    let mut comments = Vec::new();
    for item in items {
        match item {
            bourse::sse::Item::Event(e) => data.push(e.data),
            bourse::sse::Item::Comment(c) => comments.push(c),
        }
    }
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let text: String =
        chunks.iter().filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str().map(str::to_string)).collect();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({"answer": "42"}));
    assert!(chunks.last().unwrap()["usage"]["total_tokens"].as_u64().unwrap() > 0, "the usage chunk asked for");
    assert!(comments.iter().any(|c| c.starts_with(&format!("x-bourse-cost-usd={cost} "))), "{comments:?}");
    // Both attempts went upstream without streaming, each a row with its checks.
    let rows = rows(&f, "buffered", 2).await;
    let got: Vec<(&str, bool, Option<&str>)> =
        rows.iter().map(|r| (r.provider.as_str(), r.stream, r.checks.as_deref())).collect();
    assert_eq!(
        got,
        [
            ("cheap", false, Some("complete:pass,json_schema:fail")),
            ("mid", false, Some("complete:pass,json_schema:pass"))
        ]
    );
    let upstream: &Value = &f.sims[2].last_request().unwrap().body;
    assert_eq!((upstream.get("stream"), upstream.get("stream_options")), (Some(&json!(false)), None));
}

/// A graceful stop stores the outcomes counted since the last evidence sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_stores_the_last_outcomes() {
    let mut b = serve_binary(r#"["json_schema"]"#).await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", b.gw.url))
        .header("content-type", "application/json")
        .body(schema_request(40).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-bourse-cascade"), "passed; escalations=1");
    b.gw.process.signal("TERM");
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), b.gw.process.child.wait()).await.unwrap();
    assert!(status.unwrap().success());
    // The periodic sync first runs 5 s after the start: before that, only the stop stored them.
    if b.started.elapsed() >= std::time::Duration::from_millis(4_500) {
        eprintln!("note: the periodic sync may have run too (the stop came {:?} after the start)", b.started.elapsed());
    }
    let stored = bourse::ledger::Ledger::open(&b.url).await.unwrap().evidence().await.unwrap();
    let got: Vec<(&str, &str, u64)> = stored.iter().map(|r| (r.model.as_str(), r.source.as_str(), r.n)).collect();
    assert_eq!(got, [("cheap/sim-small", "check:json_schema", 1), ("mid/sim-small", "check:json_schema", 1)]);
}
