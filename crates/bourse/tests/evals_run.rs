//! `bourse evals run` end to end through the real binary: upstream-sim providers scripted per
//! task (`[task:…]` markers) with known accuracies and prices, a 40-item dataset of all three
//! expectation kinds, and what the command prints and stores checked against the sims' own
//! ground truth (`SimConfig::answers_correctly`).

mod common;

use bourse::ledger::Ledger;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use upstream_sim::TaskScript;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("bourse-evals-run-{}-{tag}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn url(&self) -> String {
        format!("sqlite:{}", self.0.join("ledger.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const ITEMS: usize = 40;

/// Four models by price (USD per 1M tokens, input and output alike) and how often each
/// answers task `arith` correctly: `dear` costs most and is no better than `mid`.
const MODELS: [(&str, f64, f64); 4] =
    [("cheap", 0.1, 0.3), ("mid", 1.0, 0.7), ("premium", 5.0, 1.0), ("dear", 8.0, 0.5)];

/// Every answer takes 3 ms and reports 20 prompt and 10 output tokens: a call costs 30 ×
/// price per token.
fn sim_config(p: f64) -> SimConfig {
    SimConfig {
        ttft_ms: 3,
        tasks: vec![TaskScript::new("*", "arith", p)],
        task_seed: 17,
        prompt_tokens: Some(20),
        output_tokens: 10,
        ..SimConfig::default()
    }
}

/// The four sims as providers serving `sim-small`, `down` (nothing listens there) and a
/// route `arith` with no quality floor.
fn config(dir: &TempDir, sims: &[Sim]) -> PathBuf {
    let mut text = format!("[storage]\nurl = \"{}\"\n[routes.arith]\nmin_quality = \"basic\"\n", dir.url());
    let bases = sims.iter().map(Sim::base_url).chain([format!("http://127.0.0.1:{}/v1", closed_port())]);
    for ((id, price, _), base) in MODELS.iter().chain([&("down", 0.05, 0.0)]).zip(bases) {
        text.push_str(&format!(
            "[providers.{id}]\nkind = \"openai-compatible\"\nbase_url = \"{base}\"\nmodels = [\"sim-small\"]\n\
             [models.\"{id}/sim-small\"]\ninput = {price:?}\noutput = {price:?}\ncontext = 32000\n\
             capabilities = [\"json_schema\"]\n"
        ));
    }
    let path = dir.0.join("bourse.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// 40 items: 30 expecting text, 5 a regex, 5 a schema (asked for as JSON).
fn dataset(dir: &TempDir) -> PathBuf {
    let mut lines = Vec::new();
    for i in 0..ITEMS {
        let answer = i * 7 + 3;
        let marker = format!("[task:arith item:q{i} answer:{answer}]");
        let mut item = json!({
            "id": format!("q{i}"),
            "messages": [{"role": "user", "content": format!("What is {i} * 7 + 3? {marker}")}],
            "max_tokens": 64,
        });
        item["expected"] = match i {
            0..30 => json!({"text": answer.to_string()}),
            30..35 => json!({"regex": format!("(?i)final answer:\\s*{answer}\\b")}),
            _ => {
                item["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {
                    "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}});
                json!({"schema": {"type": "object", "properties": {"answer": {"const": answer.to_string()}},
                    "required": ["answer"]}})
            }
        };
        lines.push(item.to_string());
    }
    let path = dir.0.join("arith.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn evals_run(config: &Path, args: &[&str]) -> Run {
    let mut cmd = bin::command();
    cmd.args(["evals", "run", "--config"]).arg(config).args(args);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output()).await.unwrap().unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn requests(sims: &[Sim]) -> Vec<u64> {
    sims.iter().map(|s| s.stats().requests).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_is_estimated_confirmed_run_scored_and_stored() {
    let dir = TempDir::new("e2e");
    let mut sims = Vec::new();
    for (_, _, p) in MODELS {
        sims.push(Sim::start(sim_config(p)).await.unwrap());
    }
    let config = config(&dir, &sims);
    let data = dataset(&dir);
    let data_arg = data.to_str().unwrap();
    let all = "cheap/sim-small,mid/sim-small,premium/sim-small,dear/sim-small,down/sim-small";

    // Without --yes and without a terminal: the estimate, then a refusal, and nothing sent.
    let r = evals_run(&config, &["--route", "arith", "--dataset", data_arg, "--models", all]).await;
    assert!(!r.ok, "{}", r.stdout);
    assert!(r.stderr.contains("40 items (text 30, regex 5, schema 5)"), "{}", r.stderr);
    assert!(r.stderr.contains("5 models: 200 requests, 4 at a time"), "{}", r.stderr);
    // cheap at $0.1 per 1M tokens, 100 nano-USD per token: each item's
    // estimated prompt (text bytes / 4 rounded up, + 4 for its message, + 3) and its
    // max_tokens of output, which is also the expected output (below the route's 512).
    let tokens: u64 = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["messages"][0]["content"].as_str().unwrap().len() as u64).div_ceil(4) + 4 + 3 + 64
        })
        .sum();
    let cost = bourse::meter::Cost(i64::try_from(tokens * 100).unwrap()).usd();
    let cheap = r.stderr.lines().find(|l| l.trim_start().starts_with("cheap/sim-small")).unwrap();
    assert_eq!(cheap.matches(&cost).count(), 2, "expected and worst case {cost}: {cheap}");
    assert!(r.stderr.contains("not sending 200 requests without confirmation"), "{}", r.stderr);
    assert_eq!(requests(&sims), [0, 0, 0, 0]);

    // Checked before anything is sent: an unknown model, a bad line, an unknown route.
    let r =
        evals_run(&config, &["--route", "arith", "--dataset", data_arg, "--models", "cheap/sim-small,nope/x", "--yes"])
            .await;
    assert!(!r.ok && r.stderr.contains("unknown model: nope/x (no provider \"nope\" is configured"), "{}", r.stderr);
    let bad = dir.0.join("bad.jsonl");
    let good_line = std::fs::read_to_string(&data).unwrap().lines().next().unwrap().to_string();
    std::fs::write(&bad, format!("{good_line}\n{{\"id\":\"x\",\"messages\":[]}}\n")).unwrap();
    let r = evals_run(&config, &["--route", "arith", "--dataset", bad.to_str().unwrap(), "--yes"]).await;
    assert!(!r.ok && r.stderr.contains("bad.jsonl: line 2: no \"expected\""), "{}", r.stderr);
    let r = evals_run(&config, &["--route", "tax", "--dataset", data_arg, "--yes"]).await;
    assert!(!r.ok && r.stderr.contains("unknown route \"tax\""), "{}", r.stderr);
    assert_eq!(requests(&sims), [0, 0, 0, 0]);

    // The run.
    let r =
        evals_run(&config, &["--route", "arith", "--dataset", data_arg, "--models", all, "--yes", "--format", "json"])
            .await;
    assert!(r.ok, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("evals: 200 requests in"), "plain progress off a terminal: {}", r.stderr);
    assert_eq!(requests(&sims), [40, 40, 40, 40]);
    let out: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (out["route"].as_str(), out["source"].as_str(), out["stored"].as_bool()),
        (Some("arith"), Some("evals:arith"), Some(true))
    );
    let models = out["models"].as_array().unwrap();
    let mut passed = Vec::new();
    for (i, (id, price, p)) in MODELS.iter().enumerate() {
        let m = &models[i];
        assert_eq!(m["model"], format!("{id}/sim-small"));
        // Exactly the items the sim answers correctly pass.
        let truth = sim_config(*p);
        let want: Vec<String> = (0..ITEMS)
            .filter(|i| !truth.answers_correctly("sim-small", "arith", &format!("q{i}")))
            .map(|i| format!("q{i}"))
            .collect();
        assert_eq!(m["failed_items"], json!(want), "{id}");
        let n_passed = (ITEMS - want.len()) as u64;
        assert_eq!(
            (m["n"].as_u64(), m["passed"].as_u64(), m["errors"].as_u64()),
            (Some(40), Some(n_passed), Some(0)),
            "{id}"
        );
        // Metered exactly: 40 calls × 30 tokens × price.
        let nanos = (40.0 * 30.0 * price * 1000.0_f64).round() as i64;
        assert_eq!(m["cost"]["nanos"].as_i64(), Some(nanos), "{id}");
        assert_eq!(m["cost_per_item"]["nanos"].as_i64(), Some(nanos / 40), "{id}");
        let (p50, p95) = (m["latency_p50_ms"].as_u64().unwrap(), m["latency_p95_ms"].as_u64().unwrap());
        assert!(3 <= p50 && p50 <= p95, "{id}: {p50} {p95}");
        passed.push(n_passed);
    }
    // The draws give the three scripted models distinct accuracies in price order, and dear
    // no better than mid: it is dominated; cheap, mid and premium are the frontier.
    assert!(passed[0] < passed[1] && passed[1] < passed[2] && passed[2] == 40 && passed[3] <= passed[1], "{passed:?}");
    let frontier: Vec<bool> = models.iter().map(|m| m["frontier"].as_bool().unwrap()).collect();
    assert_eq!(frontier, [true, true, true, false, false]);
    // down: every call failed, counted as failures and errors, costing nothing.
    let down = &models[4];
    assert_eq!(
        (down["passed"].as_u64(), down["errors"].as_u64(), down["cost"]["nanos"].as_i64()),
        (Some(0), Some(40), Some(0))
    );
    assert!(down["first_error"].as_str().unwrap().contains("cannot connect to provider down"), "{down}");

    // Stored as evidence: one row per model, score passed / n.
    let rows = Ledger::open(&dir.url()).await.unwrap().evidence().await.unwrap();
    let got: Vec<(String, String, String, u64)> =
        rows.iter().map(|r| (r.route.clone(), r.model.clone(), r.source.clone(), r.n)).collect();
    let mut want: Vec<(String, String, String, u64)> = MODELS
        .iter()
        .map(|m| m.0)
        .chain(["down"])
        .map(|id| ("arith".into(), format!("{id}/sim-small"), "evals:arith".into(), 40))
        .collect();
    want.sort();
    assert_eq!(got, want);
    for r in &rows {
        let i = models.iter().position(|m| m["model"] == r.model.as_str()).unwrap();
        assert_eq!(r.score, models[i]["passed"].as_u64().unwrap() as f64 / 40.0, "{}", r.model);
    }

    // Without --models: the route's feasible models (all five); as a table, not stored.
    let r = evals_run(&config, &["--route", "arith", "--dataset", data_arg, "--yes", "--no-store"]).await;
    assert!(r.ok, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(requests(&sims), [80, 80, 80, 80]);
    let premium = r.stdout.lines().find(|l| l.trim_start().starts_with("premium/sim-small")).unwrap();
    assert!(premium.contains("40/40") && premium.contains("1.000") && premium.trim_end().ends_with('*'), "{premium}");
    let dear = r.stdout.lines().find(|l| l.trim_start().starts_with("dear/sim-small")).unwrap();
    assert!(!dear.trim_end().ends_with('*'), "{dear}");
    assert!(r.stdout.contains("frontier (cheapest first; lower bound, cost): cheap/sim-small ("), "{}", r.stdout);
    assert!(r.stdout.contains("not stored (--no-store)"), "{}", r.stdout);
    // A rerun replaces rows, and a --no-store run leaves them alone.
    assert_eq!(Ledger::open(&dir.url()).await.unwrap().evidence().await.unwrap(), rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_dialect_is_asked_and_graded_alike() {
    // One sim reached as an OpenAI, an Anthropic and a Gemini provider: the same outcome per
    // item (its draw depends on the model name, the same in all three), so the same items must
    // pass, JSON items included (Anthropic answers those through a forced tool, Gemini as JSON
    // text), and the same usage is metered.
    let dir = TempDir::new("dialects");
    let sim = Sim::start(sim_config(0.6)).await.unwrap();
    let root = format!("http://{}", sim.addr());
    let mut text = "[storage]\nledger = false\n[routes.arith]\nmin_quality = \"basic\"\n".to_string();
    for (id, kind, base) in [
        ("oa", "openai-compatible", format!("{root}/v1")),
        ("an", "anthropic-compatible", root.clone()),
        ("ge", "gemini", format!("{root}/v1beta")),
    ] {
        text.push_str(&format!(
            "[providers.{id}]\nkind = \"{kind}\"\nbase_url = \"{base}\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n\
             [models.\"{id}/sim-small\"]\ninput = 1.0\noutput = 2.0\ncontext = 32000\ncapabilities = [\"json_schema\"]\n"
        ));
    }
    let config = dir.0.join("bourse.toml");
    std::fs::write(&config, text).unwrap();
    let data = dataset(&dir);
    let mut cmd = bin::command();
    cmd.env("SIM_KEY", "sk-sim").args(["evals", "run", "--config"]).arg(&config).args([
        "--route",
        "arith",
        "--dataset",
        data.to_str().unwrap(),
        "--models",
        "oa/sim-small,an/sim-small,ge/sim-small",
        "--yes",
        "--no-store",
        "--format",
        "json",
    ]);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sim.stats().requests, 120);
    let out: Value = serde_json::from_str(&stdout).unwrap();
    let truth = sim_config(0.6);
    let failed: Vec<String> = (0..ITEMS)
        .filter(|i| !truth.answers_correctly("sim-small", "arith", &format!("q{i}")))
        .map(|i| format!("q{i}"))
        .collect();
    assert!(!failed.is_empty() && failed.len() < ITEMS, "{failed:?}");
    for m in out["models"].as_array().unwrap() {
        assert_eq!(m["failed_items"], json!(failed), "{}", m["model"]);
        assert_eq!(m["errors"].as_u64(), Some(0), "{}", m["model"]);
        // 20 prompt tokens at $1 per 1M and 10 output at $2: 40_000 nano-USD a call.
        assert_eq!(m["cost"]["nanos"].as_i64(), Some(40 * 40_000), "{}", m["model"]);
    }
    assert_eq!(out["stored"], json!(false));
}
