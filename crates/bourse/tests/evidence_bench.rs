//! The synthetic benchmark of routing on evidence: several tasks, five models with different
//! per-task accuracy and prices (upstream-sim scripted per task, each model's outcomes
//! independent), and three ways to serve the same items:
//!
//! - **always-reference**: every item to the premium reference model;
//! - **static floor**: route `static`, the catalog floor `strong`, no evidence, no checks;
//! - **evidence + cascade**: one route per task, floored on evidence (`min_score`) that an
//!   offline evaluation phase gathered through the gateway (separate items), with
//!   `cascade = ["complete", "json_schema"]`.
//!
//! A served answer is correct when it states the item's answer (`Final answer: X`, or the
//! JSON `{"answer": "X"}`); cost is the ledger's total for the strategy, in integer nano-USD.
//! As a test it runs small and asserts the claim (evidence + cascade reaches the reference's
//! accuracy within a few points at a fraction of its cost, and beats the static floor);
//! `bash bench/evidence.sh` runs it large and prints the table recorded in bench/RESULTS.md.
//!
//! Sizes: `BOURSE_BENCH_ITEMS` items per task per strategy (default 60),
//! `BOURSE_BENCH_EVAL_ITEMS` evaluation items per model and task (default 150).

mod common;

use bourse::ledger::{EvidenceRow, GroupBy, Ledger, ReportQuery, Writer, WriterConfig};
use common::*;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use upstream_sim::{TaskScript, WrongStyle};

/// (provider id, $ per 1M tokens in and out, catalog quality).
const MODELS: [(&str, f64, u32); 5] =
    [("tiny", 0.05, 1300), ("small", 0.15, 1340), ("mid", 0.6, 1380), ("large", 2.0, 1425), ("reference", 5.0, 1450)];

/// Per task: its name, whether it asks for JSON, and per model (in `MODELS` order) the share
/// answered correctly and what a wrong answer looks like. The cheap models are as good as
/// the reference on some tasks and poor on others; some failures are detectable by checks
/// (invalid JSON, cut off, refusals), some are not (a wrong value).
type Task = (&'static str, bool, [(f64, WrongStyle); 5]);
const TASKS: [Task; 4] = [
    (
        "extract",
        true,
        [
            (0.90, WrongStyle::InvalidJson),
            (0.94, WrongStyle::InvalidJson),
            (0.93, WrongStyle::Answer),
            (0.97, WrongStyle::Answer),
            (0.98, WrongStyle::Answer),
        ],
    ),
    (
        "arith",
        false,
        [
            (0.30, WrongStyle::Answer),
            (0.98, WrongStyle::Answer),
            (0.85, WrongStyle::Answer),
            (0.97, WrongStyle::Answer),
            (0.98, WrongStyle::Answer),
        ],
    ),
    (
        "classify",
        false,
        [
            (0.55, WrongStyle::Answer),
            (0.92, WrongStyle::Truncated),
            (0.90, WrongStyle::Answer),
            (0.97, WrongStyle::Answer),
            (0.98, WrongStyle::Answer),
        ],
    ),
    (
        "qa",
        false,
        [
            (0.88, WrongStyle::Refusal),
            (0.80, WrongStyle::Answer),
            (0.96, WrongStyle::Refusal),
            (0.97, WrongStyle::Answer),
            (0.98, WrongStyle::Answer),
        ],
    ),
];

/// The evidence floor of the per-task routes.
const MIN_SCORE: f64 = 0.85;

fn size(var: &str, default: u32) -> u32 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn config(sims: &[Sim], url: &str) -> String {
    let mut t =
        format!("[storage]\nurl = \"{url}\"\n[router]\nmax_attempts = 3\n[routes.static]\nmin_quality = \"strong\"\n");
    for (task, ..) in TASKS {
        t.push_str(&format!(
            "[routes.task-{task}]\nmin_quality = \"strong\"\nmin_score = {MIN_SCORE}\ncascade = [\"complete\", \"json_schema\"]\n"
        ));
    }
    for ((id, price, quality), sim) in MODELS.iter().zip(sims) {
        t.push_str(&format!(
            "[providers.{id}]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"sim-small\"]\n\
             [models.\"{id}/sim-small\"]\ninput = {price}\noutput = {price}\nquality = {quality}\ncontext = 32000\n\
             capabilities = [\"json_schema\", \"streaming\"]\n",
            sim.base_url()
        ));
    }
    t
}

async fn sims() -> Vec<Sim> {
    let mut out = Vec::new();
    for (m, _) in MODELS.iter().enumerate() {
        let tasks = TASKS.iter().map(|(task, _, per)| TaskScript::new("*", task, per[m].0).wrong(per[m].1)).collect();
        // A seed per model: each model's outcomes are independent of the others'.
        let cfg = SimConfig { tasks, task_seed: 1_000 + m as u64, ..SimConfig::default() };
        out.push(Sim::start(cfg).await.unwrap());
    }
    out
}

/// A serving gateway: its URL, and its task (stopped when dropped).
struct Served {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gateway on its own ledger, with `evidence` loaded.
async fn gateway(
    sims: &[Sim],
    tag: &str,
    evidence: Vec<EvidenceRow>,
) -> (Served, Ledger, bourse::ledger::WriterHandle) {
    let db = std::env::temp_dir().join(format!("bourse-evbench-{tag}-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let url = format!("sqlite:{}", db.display());
    let cfg = bourse::config::Config::from_toml(&config(sims, &url), &test_env).unwrap();
    let mut state = bourse::state::AppState::from_config(&cfg).unwrap();
    let (writer, handle) = Writer::start(Ledger::open(&url).await.unwrap(), WriterConfig::default());
    state.ledger = Some(writer);
    state.router.evidence.set_rows(evidence);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(state);
    let task = tokio::spawn(async move { bourse::server::serve(listener, state, std::future::pending()).await });
    (Served { url: format!("http://{addr}"), task }, Ledger::open(&url).await.unwrap(), handle)
}

fn request(model: &str, task: &str, json_mode: bool, item: &str, answer: u32) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": format!("Item {item} of {task}. [task:{task} item:{item} answer:{answer}]")}],
    });
    if json_mode {
        body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {
            "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]
        }}});
    }
    body
}

/// Whether the answer states `answer`.
fn correct(body: &Value, answer: u32) -> bool {
    let content = body["choices"][0]["message"]["content"].as_str().unwrap_or("");
    let want = answer.to_string();
    if content.trim() == format!("Final answer: {want}") {
        return true;
    }
    serde_json::from_str::<Value>(content).is_ok_and(|v| v["answer"].as_str() == Some(want.as_str()))
}

/// Sends every (model, task, item, answer) and returns which were answered correctly.
async fn run(gw: &Served, items: Vec<(String, &'static str, bool, String, u32)>) -> Vec<bool> {
    let http = client();
    stream::iter(items)
        .map(|(model, task, json_mode, item, answer)| {
            let http = http.clone();
            let url = format!("{}/v1/chat/completions", gw.url);
            async move {
                let body = request(&model, task, json_mode, &item, answer);
                let resp =
                    http.post(url).header("content-type", "application/json").body(body.to_string()).send().await;
                let resp = resp.unwrap();
                assert_eq!(resp.status(), 200, "{model} {task} {item}");
                let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
                correct(&v, answer)
            }
        })
        .buffered(16)
        .collect()
        .await
}

/// The ledger's total cost.
async fn total_cost(ledger: &Ledger) -> i64 {
    let q = ReportQuery { since_ms: None, until_ms: None, by: GroupBy::None, key: None };
    ledger.report(&q).await.unwrap().iter().map(|r| r.cost_nanos).sum()
}

fn answer_of(task: usize, item: u32) -> u32 {
    1 + (item * 7 + task as u32 * 13) % 97
}

struct Outcome {
    name: &'static str,
    accuracy: f64,
    cost_nanos: i64,
    attempts: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_and_cascades_reach_the_reference_for_a_fraction_of_its_cost() {
    let n = size("BOURSE_BENCH_ITEMS", 60);
    let eval_n = size("BOURSE_BENCH_EVAL_ITEMS", 150);
    let sims = sims().await;

    // Offline evaluation through the gateway (explicit models, items of their own).
    let (gw, ledger, _h) = gateway(&sims, "eval", Vec::new()).await;
    let mut items = Vec::new();
    for (t, (task, json_mode, _)) in TASKS.iter().enumerate() {
        for (id, ..) in MODELS {
            for i in 0..eval_n {
                items.push((format!("{id}/sim-small"), *task, *json_mode, format!("e{i}"), answer_of(t, 10_000 + i)));
            }
        }
    }
    let graded = run(&gw, items.clone()).await;
    let mut evidence = Vec::new();
    for (chunk, results) in items.chunks(eval_n as usize).zip(graded.chunks(eval_n as usize)) {
        let passed = results.iter().filter(|c| **c).count();
        evidence.push(EvidenceRow {
            route: format!("task-{}", chunk[0].1),
            model: chunk[0].0.clone(),
            source: "evals:synthetic".into(),
            score: passed as f64 / results.len() as f64,
            n: results.len() as u64,
            updated_ms: 0,
        });
    }
    drop((gw, ledger));

    let mut outcomes = Vec::new();
    for (name, route) in
        [("always-reference", None), ("static floor (strong)", Some("static")), ("evidence + cascade", Some("task-"))]
    {
        let (gw, ledger, writer) = gateway(&sims, name.split(' ').next().unwrap(), evidence.clone()).await;
        let mut items = Vec::new();
        for (t, (task, json_mode, _)) in TASKS.iter().enumerate() {
            let model = match route {
                None => "reference/sim-small".to_string(),
                Some("task-") => format!("task-{task}"),
                Some(r) => r.to_string(),
            };
            for i in 0..n {
                items.push((model.clone(), *task, *json_mode, format!("i{i}"), answer_of(t, i)));
            }
        }
        let total = items.len();
        let right = run(&gw, items).await.iter().filter(|c| **c).count();
        // Every answer is in; its rows are flushed before the ledger is read.
        drop(gw);
        writer.shutdown().await;
        let cost_nanos = total_cost(&ledger).await;
        let attempts = ledger.count().await.unwrap();
        outcomes.push(Outcome { name, accuracy: right as f64 / total as f64, cost_nanos, attempts });
    }

    let reference = &outcomes[0];
    println!(
        "\n{} items per strategy ({} tasks × {n}); evidence from {eval_n} evaluation items per model and task",
        4 * n,
        TASKS.len()
    );
    println!("| strategy | accuracy | cost (USD) | cost vs always-reference | upstream attempts |");
    println!("|---|---:|---:|---:|---:|");
    for o in &outcomes {
        println!(
            "| {} | {:.1}% | {} | {:.1}% | {} |",
            o.name,
            o.accuracy * 100.0,
            bourse::meter::Cost(o.cost_nanos).usd(),
            o.cost_nanos as f64 * 100.0 / reference.cost_nanos as f64,
            o.attempts
        );
    }
    let (static_floor, evidence) = (&outcomes[1], &outcomes[2]);
    // The claim, with room for sampling noise at the test's size (a few points).
    assert!(evidence.accuracy >= reference.accuracy - 0.04, "evidence + cascade below the reference's accuracy");
    assert!(evidence.accuracy > static_floor.accuracy, "evidence + cascade no better than the static floor");
    assert!(evidence.cost_nanos * 4 < reference.cost_nanos, "evidence + cascade costs over a quarter of the reference");
    assert!(evidence.attempts > (4 * n) as i64, "some answers escalated");
}
