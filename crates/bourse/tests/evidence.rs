//! Quality evidence per route: the store against both backends (`sqlite::<name>`,
//! `postgres::<name>`), and `bourse evals import|list`, `bourse quote` and `bourse serve`
//! reading it, through the real binary.

mod common;
#[macro_use]
#[path = "common/stores.rs"]
mod stores;

use bourse::ledger::{EvidenceDelta, EvidenceRow, Ledger, LedgerError};
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use stores::TempDir;

both_stores!(rows_are_replaced_and_live_outcomes_add_up_across_replicas, a_bad_row_stores_nothing);

fn row(route: &str, model: &str, source: &str, score: f64, n: u64) -> EvidenceRow {
    EvidenceRow { route: route.into(), model: model.into(), source: source.into(), score, n, updated_ms: 5 }
}

fn delta(passed: u64, n: u64) -> EvidenceDelta {
    EvidenceDelta { route: "tax".into(), model: "a/x".into(), source: "check:complete".into(), passed, n }
}

async fn rows_are_replaced_and_live_outcomes_add_up_across_replicas(url: &str) {
    let one = Ledger::open(url).await.unwrap();
    let two = Ledger::open(url).await.unwrap();
    one.put_evidence(vec![row("tax", "a/x", "import", 0.9, 100), row("tax", "b/y", "import", 0.5, 10)]).await.unwrap();
    // The same (route, model, source) again: replaced, not added.
    one.put_evidence(vec![row("tax", "a/x", "import", 0.8, 50)]).await.unwrap();
    // Two replicas fold live outcomes into one row at once: 40 rounds of 3-of-4 and 1-of-4.
    let adds = |ledger: Ledger, passed: u64| async move {
        for _ in 0..40 {
            ledger.add_evidence(vec![delta(passed, 4)], 9).await.unwrap();
        }
    };
    tokio::join!(adds(one.clone(), 3), adds(two.clone(), 1));
    // Deltas with no sample (or more passes than samples) are not stored.
    two.add_evidence(vec![delta(0, 0), delta(5, 4)], 9).await.unwrap();
    let got = two.evidence().await.unwrap();
    assert_eq!(got.len(), 3, "{got:?}");
    // 160 passes of 320, each add recomputing the share from the stored one.
    let live = &got[0];
    assert_eq!((live.source.as_str(), live.n, live.updated_ms), ("check:complete", 320, 9));
    assert!((live.score - 0.5).abs() < 1e-9, "{live:?}");
    assert_eq!(got[1], row("tax", "a/x", "import", 0.8, 50));
    assert_eq!(got[2], row("tax", "b/y", "import", 0.5, 10));
}

async fn a_bad_row_stores_nothing(url: &str) {
    let ledger = Ledger::open(url).await.unwrap();
    let e = ledger.put_evidence(vec![row("tax", "a/x", "import", 0.9, 100), row("tax", "b/y", "s", 1.5, 10)]).await;
    assert!(matches!(&e, Err(LedgerError::Invalid(m)) if m.contains("score 1.5 is outside [0, 1]")), "{e:?}");
    assert!(ledger.evidence().await.unwrap().is_empty());
}

/// Three sim providers: cheap (unrated), mid (strong), premium (frontier), and a route `tax`
/// that floors evidence at 0.9.
fn config(dir: &TempDir, cheap: &Sim, mid: &Sim, premium: &Sim) -> PathBuf {
    let mut text =
        format!("[storage]\nurl = \"{}\"\n[routes.tax]\nmin_quality = \"strong\"\nmin_score = 0.9\n", dir.url());
    for (id, sim, quality, price) in
        [("cheap", cheap, None, 0.05), ("mid", mid, Some(1390), 1.0), ("premium", premium, Some(1450), 5.0)]
    {
        text.push_str(&format!(
            "[providers.{id}]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"sim-small\"]\n\
             [models.\"{id}/sim-small\"]\ninput = {price}\noutput = {price}\ncontext = 32000\ncapabilities = [\"streaming\"]\n{}",
            sim.base_url(),
            quality.map(|q| format!("quality = {q}\n")).unwrap_or_default()
        ));
    }
    let path = dir.0.join("bourse.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn bourse(config: &PathBuf, args: &[&str]) -> (bool, String) {
    let mut cmd = bin::command();
    cmd.args(args).arg("--config").arg(config);
    let (status, lines) = bin::Process::run(&mut cmd).await;
    (status.success(), lines.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_evidence_is_listed_quoted_and_routed_on() {
    let dir = TempDir::new("cli");
    let (cheap, mid, premium) = (
        Sim::start(SimConfig::default()).await.unwrap(),
        Sim::start(SimConfig::default()).await.unwrap(),
        Sim::start(SimConfig::default()).await.unwrap(),
    );
    let config = config(&dir, &cheap, &mid, &premium);
    // A bad file stores nothing and names its line.
    let bad = dir.0.join("bad.csv");
    std::fs::write(&bad, "route,model,score,n,source\ntax,cheap/sim-small,0.97,500,ok\ntax,mid/sim-small,2,5,x\n")
        .unwrap();
    let (ok, out) = bourse(&config, &["evals", "import", bad.to_str().unwrap()]).await;
    assert!(!ok && out.contains("bad.csv: line 3: score \"2\" is not a share in [0, 1]"), "{out}");
    let (ok, out) = bourse(&config, &["evals", "list"]).await;
    assert!(ok && out.contains("no evidence stored"), "{out}");

    let good = dir.0.join("tax.csv");
    std::fs::write(
        &good,
        "route,model,score,n,source\n\
         tax,cheap/sim-small,0.97,500,\"internal tax set, 2026-11\"\n\
         tax,mid/sim-small,0.70,500,\"internal tax set, 2026-11\"\n",
    )
    .unwrap();
    let (ok, out) = bourse(&config, &["evals", "import", good.to_str().unwrap()]).await;
    assert!(ok && out.contains("imported 2 rows"), "{out}");
    let (ok, out) = bourse(&config, &["evals", "list", "--route", "tax"]).await;
    let cheap_line = out.lines().find(|l| l.trim_start().starts_with("cheap/sim-small")).unwrap_or_default();
    assert!(ok && cheap_line.contains("0.970") && cheap_line.contains("0.951"), "{out}");

    // The quote shows what each candidate's quality rests on.
    let req = dir.0.join("req.json");
    std::fs::write(&req, r#"{"model":"tax","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
    let (ok, out) = bourse(&config, &["quote", "--format", "json", req.to_str().unwrap()]).await;
    assert!(ok, "{out}");
    let q: Value = serde_json::from_str(&out).unwrap();
    let c = &q["candidates"];
    assert_eq!(c[0]["model"], "cheap/sim-small", "{q}");
    assert_eq!((&c[0]["quality_basis"], &c[0]["evidence"]["lower_bound"]), (&"evidence".into(), &"0.951".into()));
    assert_eq!(c[0]["evidence"]["sources"][0]["source"], "internal tax set, 2026-11");
    assert_eq!((&c[1]["model"], &c[1]["quality_basis"]), (&"premium/sim-small".into(), &"catalog".into()));
    assert_eq!(q["excluded"][0]["model"], "mid/sim-small");
    assert_eq!(q["min_score"], "0.900");

    // A serving gateway loads it: the unrated model proven on the task answers.
    let mut cmd = bin::command();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&config);
    let gw = bin::serve(&mut cmd).await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body(chat_body("tax").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reason = resp.headers()["x-bourse-route-reason"].to_str().unwrap().to_string();
    assert!(reason.starts_with("route=tax chose cheap/sim-small (expected $"), "{reason}");
    assert!(reason.contains(", evidence 0.951 n=500)") && reason.contains("; 2 feasible"), "{reason}");
    assert_eq!((cheap.stats().requests, mid.stats().requests, premium.stats().requests), (1, 0, 0));
}
