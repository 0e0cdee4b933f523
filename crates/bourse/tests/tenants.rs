//! Tenants, virtual keys, budgets and rate limits end to end: keys made over the admin API,
//! requests through the gateway against upstream-sim with known usage, and the counters,
//! the ledger and the reports compared to the nano-dollar. In-process gateways with SQLite
//! and in-process counters; two real `bourse serve` processes sharing PostgreSQL and Redis.

mod common;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/redis.rs"]
mod redis_server;

use bourse::limit::{Counters, RedisCounters, ScopeKind};
use common::*;
use pg::Database;
use redis_server::RedisServer;
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN: &str = "gw-other"; // GATEWAY_KEY_2 in test_env

/// A sim answering every request with 1 prompt and 50 output tokens.
async fn sim() -> Sim {
    Sim::start(SimConfig { prompt_tokens: Some(1), output_tokens: 50, ..SimConfig::default() }).await.unwrap()
}

/// Nano-USD of one answer on `alpha/sim-small` at $100 / $200 per 1M (1 in, 50 out): $0.0101.
/// Its worst case with `max_tokens: 50` is a little more (the prompt is estimated at a few
/// tokens), so a reservation always covers the answer.
const ANSWER: i64 = 10_100_000;

/// `alpha/sim-small` at $100 / $200 per 1M.
fn config(sim: &Sim, storage: &str, extra: &str) -> String {
    format!(
        "[server]\napi_keys = [\"env:GATEWAY_KEY\"]\nadmin_keys = [\"env:GATEWAY_KEY_2\"]\n\
         [storage]\nurl = \"{storage}\"\n{extra}\n\
         [providers.alpha]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n{}",
        sim.base_url(),
        price("alpha/sim-small", 100.0, 200.0)
    )
}

/// The request builder with a JSON body (reqwest is built without its `json` feature).
fn with_json(r: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
    r.header("content-type", "application/json").body(serde_json::to_vec(body).unwrap())
}

async fn json_of(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null)
}

async fn admin(base: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = client().request(method, format!("{base}{path}")).bearer_auth(ADMIN);
    if let Some(b) = body {
        r = with_json(r, &b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, json_of(resp).await)
}

/// A tenant and one key on it; returns (key id, secret).
async fn tenant_and_key(base: &str, tenant: Value, key: Value) -> (String, String) {
    let (s, body) = admin(base, reqwest::Method::POST, "/admin/v1/tenants", Some(tenant)).await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = admin(base, reqwest::Method::POST, "/admin/v1/keys", Some(key)).await;
    assert_eq!(s, 201, "{body}");
    (body["id"].as_str().unwrap().to_string(), body["key"].as_str().unwrap().to_string())
}

fn ask(max_tokens: u64) -> Value {
    json!({"model": "alpha/sim-small", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]})
}

async fn chat(base: &str, secret: &str, body: &Value) -> reqwest::Response {
    with_json(client().post(format!("{base}/v1/chat/completions")).bearer_auth(secret), body).send().await.unwrap()
}

/// Polls `done` every 20 ms, failing the test if it is not true within a second.
async fn within_a_second<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < Duration::from_secs(1), "{what}: not within 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (what the gateway writes) as Unix ms.
fn unix_ms(s: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let month = time::Month::try_from(n(5..7) as u8).unwrap();
    let date = time::Date::from_calendar_date(n(0..4) as i32, month, n(8..10) as u8).unwrap();
    let midnight = date.midnight().assume_utc().unix_timestamp() * 1000;
    midnight + (n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) * 1000
}

/// An Anthropic Messages request with the key as `x-api-key`, as the Anthropic SDKs send it.
async fn messages(base: &str, secret: &str, body: &Value) -> reqwest::Response {
    let r = client()
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", secret)
        .header("anthropic-version", "2023-06-01");
    with_json(r, body).send().await.unwrap()
}

fn temp_db(tag: &str) -> String {
    let p = std::env::temp_dir().join(format!("bourse-tenants-{tag}-{}-{}.db", std::process::id(), fastrand::u64(..)));
    format!("sqlite:{}", p.display())
}

/// Wait for the ledger writer, then total cost of a key's rows.
async fn ledger_cost(state: &bourse::state::SharedState, key_id: &str, rows: i64) -> i64 {
    use bourse::ledger::{GroupBy, ReportQuery};
    let ledger = state.reports.as_ref().unwrap();
    for _ in 0..200 {
        let q = ReportQuery { since_ms: None, until_ms: None, by: GroupBy::Key, key: Some(key_id.to_string()) };
        let r = ledger.report(&q).await.unwrap();
        if r.first().is_some_and(|r| r.attempts >= rows) {
            return r[0].cost_nanos;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("ledger rows for {key_id} never reached {rows}");
}

#[tokio::test]
async fn a_budget_holds_and_the_refusal_is_budget_exceeded() {
    let sim = sim().await;
    let gw = start(&config(&sim, &temp_db("budget"), "")).await;
    let (id, secret) = tenant_and_key(
        &gw.url,
        json!({"name": "acme", "budget_day_usd": "0.10"}),
        json!({"tenant": "acme", "name": "ci"}),
    )
    .await;
    let mut served = 0;
    let mut last_left = None;
    for _ in 0..10 {
        let r = chat(&gw.url, &secret, &ask(50)).await;
        match r.status().as_u16() {
            200 => {
                served += 1;
                last_left = r.headers().get("x-bourse-budget-remaining-usd").map(|v| v.to_str().unwrap().to_string());
            }
            429 => {
                assert_eq!(r.headers().get("x-should-retry").unwrap(), "false");
                let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(retry > 0 && retry <= 86_400, "{retry}");
                let body: Value = json_of(r).await;
                let e = assert_openai_error(&body);
                assert_eq!(e["type"], "budget_exceeded");
                assert_eq!(e["code"], "budget_exceeded");
                let msg = e["message"].as_str().unwrap();
                assert!(msg.contains("daily budget of tenant 'acme'") && msg.contains("resets at"), "{msg}");
                break;
            }
            s => panic!("unexpected {s}: {}", r.text().await.unwrap()),
        }
    }
    // $0.0101 each: 9 fit under $0.10 ($0.0909); the tenth's worst case (over $0.0101) does not.
    assert_eq!(served, 9, "served");
    // The ninth answer's header: $0.10 less 8 settled answers and the ninth's reservation.
    let left: f64 = last_left.expect("budget header").parse().unwrap();
    assert!(left > 0.0 && left < 0.1 - 9.0 * 0.0101 + 1e-9, "{left}");
    assert_eq!(ledger_cost(&gw.state, &id, 9).await, 9 * ANSWER);
    let usage = gw.state.counters.usage(ScopeKind::Tenant, "acme", "acme", bourse::timespec::now_ms()).await.unwrap();
    assert_eq!((usage.day, usage.total, usage.reserved), (9 * ANSWER, 9 * ANSWER, 0));
    // A config key is not a tenant's: unlimited, as before.
    let r = chat(&gw.url, "gw-secret", &ask(50)).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_headers_in_each_dialect() {
    let sim = sim().await;
    let gw = start(&config(&sim, &temp_db("rpm"), "")).await;
    let (_, secret) =
        tenant_and_key(&gw.url, json!({"name": "team"}), json!({"tenant": "team", "rpm": 3, "tpm": 100000})).await;
    let r = chat(&gw.url, &secret, &ask(50)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "2");
    assert!(r.headers()["x-ratelimit-reset-requests"].to_str().unwrap().ends_with('s'));
    assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "100000");
    let anthropic =
        json!({"model": "alpha/sim-small", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]});
    let r = messages(&gw.url, &secret, &anthropic).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["anthropic-ratelimit-requests-limit"], "3");
    assert_eq!(r.headers()["anthropic-ratelimit-requests-remaining"], "1");
    assert!(r.headers()["anthropic-ratelimit-requests-reset"].to_str().unwrap().ends_with('Z'));
    assert_eq!(chat(&gw.url, &secret, &ask(50)).await.status(), 200);
    let r = chat(&gw.url, &secret, &ask(50)).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = json_of(r).await;
    assert_eq!(assert_openai_error(&body)["code"], "rate_limit_exceeded");
    let r = messages(&gw.url, &secret, &anthropic).await;
    assert_eq!(r.status(), 429);
    let body: Value = json_of(r).await;
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn a_restart_without_redis_keeps_the_days_spend() {
    let sim = sim().await;
    let db = temp_db("restart");
    let toml = config(&sim, &db, "");
    let (id, secret) = {
        let gw = start(&toml).await;
        let (id, secret) = tenant_and_key(
            &gw.url,
            json!({"name": "acme", "budget_day_usd": "0.05", "budget_month_usd": "1"}),
            json!({"tenant": "acme"}),
        )
        .await;
        for _ in 0..3 {
            assert_eq!(chat(&gw.url, &secret, &ask(50)).await.status(), 200);
        }
        assert_eq!(ledger_cost(&gw.state, &id, 3).await, 3 * ANSWER);
        (id, secret)
    };
    let gw = start(&toml).await;
    let now = bourse::timespec::now_ms();
    let key = gw.state.counters.usage(ScopeKind::Key, &id, "acme", now).await.unwrap();
    let tenant = gw.state.counters.usage(ScopeKind::Tenant, "acme", "acme", now).await.unwrap();
    assert_eq!((key.day, key.month, key.total), (3 * ANSWER, 3 * ANSWER, 3 * ANSWER));
    assert_eq!((tenant.day, tenant.month, tenant.total), (3 * ANSWER, 3 * ANSWER, 3 * ANSWER));
    // Only one more answer fits in today's $0.05, as it would have before the restart.
    assert_eq!(chat(&gw.url, &secret, &ask(50)).await.status(), 200);
    assert_eq!(chat(&gw.url, &secret, &ask(50)).await.status(), 429);
}

/// `(group, requests)` of a report by key through the usage API (as the config key sees
/// it: every key), once it holds `requests` requests in all.
async fn usage_by_key(base: &str, requests: u64) -> Vec<(String, u64)> {
    let url = format!("{base}/v1/bourse/usage?by=key&since=2000-01-01");
    for _ in 0..200 {
        let body = json_of(client().get(&url).bearer_auth("gw-secret").send().await.unwrap()).await;
        let rows: Vec<(String, u64)> = (body["data"].as_array().unwrap().iter())
            .map(|r| (r["group"].as_str().unwrap().to_string(), r["requests"].as_u64().unwrap()))
            .collect();
        if rows.iter().map(|r| r.1).sum::<u64>() >= requests {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the ledger never held {requests} requests");
}

/// A config key's id in ledger rows, reports and audit rows is HMAC-SHA-256 of the key under
/// a secret its store made once: the same after a restart (a report by key keeps one row
/// per key), another in another installation, and 64 bits long. An unkeyed 32-bit hash of
/// the key let anyone who reads reports test guesses at a short key offline.
#[tokio::test]
async fn config_key_ids_are_keyed_by_a_secret_the_store_keeps() {
    let sim = sim().await;
    let here = config(&sim, &temp_db("key-id-here"), "");
    let id = {
        let gw = start(&here).await;
        assert_eq!(chat(&gw.url, "gw-secret", &ask(5)).await.status(), 200);
        let rows = usage_by_key(&gw.url, 1).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        rows[0].0.clone()
    };
    let hex = id.strip_prefix("key_").unwrap_or_else(|| panic!("{id}"));
    assert!(hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");

    // Restarted on the same store: the same id, so the report still groups the key as one.
    let gw = start(&here).await;
    assert_eq!(chat(&gw.url, "gw-secret", &ask(5)).await.status(), 200);
    assert_eq!(usage_by_key(&gw.url, 2).await, [(id.clone(), 2)]);
    // The admin key's id in the audit trail is made the same way.
    let (status, body) = admin(&gw.url, reqwest::Method::POST, "/admin/v1/tenants", Some(json!({"name": "t"}))).await;
    assert_eq!(status, 201, "{body}");
    let (_, audit) = admin(&gw.url, reqwest::Method::GET, "/admin/v1/audit", None).await;
    let actor = audit["data"][0]["actor"].as_str().unwrap_or_default();
    let admin_hex = actor.strip_prefix("admin:key_").unwrap_or_else(|| panic!("{audit}"));
    assert!(admin_hex.len() == 16 && admin_hex.bytes().all(|b| b.is_ascii_hexdigit()), "{actor}");

    // Another installation: the same key gets another id.
    let elsewhere = start(&config(&sim, &temp_db("key-id-elsewhere"), "")).await;
    assert_eq!(chat(&elsewhere.url, "gw-secret", &ask(5)).await.status(), 200);
    let rows = usage_by_key(&elsewhere.url, 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_ne!(rows[0].0, id, "the id must not be computable from the key alone");
}

#[tokio::test]
async fn a_tenant_near_its_budget_is_routed_to_a_cheaper_model_under_the_lower_floor() {
    let sim = sim().await;
    let extra = format!(
        "[routes.smart]\nmin_quality = \"strong\"\n[routes.cheap]\nmin_quality = 0\n\
         [providers.lo]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n\
         [models.\"lo/sim-small\"]\ninput = 1.0\noutput = 2.0\nquality = 1310.0\n\
         [models.\"alpha/sim-small\"]\ninput = 100.0\noutput = 200.0\nquality = 1400.0\n",
        sim.base_url()
    );
    // The alpha price comes from `extra` (with a quality); `config` adds none of its own here.
    let toml = format!(
        "[server]\napi_keys = [\"env:GATEWAY_KEY\"]\nadmin_keys = [\"env:GATEWAY_KEY_2\"]\n[storage]\nurl = \"{}\"\n\
         [providers.alpha]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n{extra}",
        temp_db("downgrade"),
        sim.base_url()
    );
    let gw = start(&toml).await;
    let (_, secret) = tenant_and_key(
        &gw.url,
        json!({"name": "lean", "budget_day_usd": "0.0505", "downgrade": {"below": "50%", "min_quality": "adequate"}}),
        json!({"tenant": "lean"}),
    )
    .await;
    let routed = json!({"model": "smart", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]});
    let mut models = Vec::new();
    let mut reasons = Vec::new();
    for _ in 0..5 {
        let r = chat(&gw.url, &secret, &routed).await;
        assert_eq!(r.status(), 200);
        models.push(r.headers()["x-bourse-provider"].to_str().unwrap().to_string());
        reasons.push(r.headers()["x-bourse-route-reason"].to_str().unwrap().to_string());
    }
    // $0.0101 each on alpha (the only strong model): after 3, 40% of the day's $0.0505 is
    // left, under 50%, so the floor drops to adequate and lo (1310, 100× cheaper) is chosen.
    assert_eq!(models, ["alpha", "alpha", "alpha", "lo", "lo"], "{reasons:?}");
    assert!(!reasons[2].contains("downgraded"), "{}", reasons[2]);
    assert!(
        reasons[3].contains("downgraded: tenant budget 40% left (below 50%), quality floor 1370 -> 1300"),
        "{}",
        reasons[3]
    );
    // A key whose `models` leave out alpha is routed among the rest only: `auto` (no floor
    // here... the default floor) picks lo, and `smart`, which only alpha meets, is refused.
    let (_, lo_only) =
        tenant_and_key(&gw.url, json!({"name": "other"}), json!({"tenant": "other", "models": ["lo/*"]})).await;
    let r = chat(
        &gw.url,
        &lo_only,
        &json!({"model": "cheap", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-bourse-provider"], "lo");
    let r = chat(&gw.url, &lo_only, &routed).await;
    assert_eq!(r.status(), 403);
    let body = json_of(r).await;
    assert!(body["error"]["message"].as_str().unwrap().contains("may use none of the 1 feasible models"), "{body}");
}

#[tokio::test]
async fn key_rules_limit_models_and_revocation_is_immediate() {
    let sim = sim().await;
    let gw = start(&config(&sim, &temp_db("rules"), "")).await;
    let (id, secret) =
        tenant_and_key(&gw.url, json!({"name": "t"}), json!({"tenant": "t", "models": ["other/*"]})).await;
    let r = chat(&gw.url, &secret, &ask(50)).await;
    assert_eq!(r.status(), 403);
    let body: Value = json_of(r).await;
    assert!(assert_openai_error(&body)["message"].as_str().unwrap().contains("may not use model"), "{body}");
    // Client keys cannot use the admin API.
    let r = client().get(format!("{}/admin/v1/keys", gw.url)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client().get(format!("{}/admin/v1/keys", gw.url)).bearer_auth("gw-secret").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let (s, _) = admin(&gw.url, reqwest::Method::POST, &format!("/admin/v1/keys/{id}/revoke"), None).await;
    assert_eq!(s, 200);
    within_a_second("the revoked key is refused", || async { chat(&gw.url, &secret, &ask(50)).await.status() == 401 })
        .await;
}

// ---------------------------------------------------------------- two replicas

struct Replica {
    url: String,
    _child: tokio::process::Child,
}

async fn replica(config_path: &std::path::Path) -> Replica {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bourse"))
        .args(["serve", "--config"])
        .arg(config_path)
        .env("GATEWAY_KEY", "gw-secret")
        .env("GATEWAY_KEY_2", ADMIN)
        .env("SIM_KEY", "sk-sim-secret")
        .env("RUST_LOG", "bourse=info")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find("listening on http://") {
                return line[at + "listening on ".len()..].split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("bourse exited before listening");
    })
    .await
    .expect("bourse did not start");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Replica { url, _child: child }
}

fn free_listen() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Two `bourse serve` processes on one PostgreSQL and one Redis: a $1.00 budget and a
/// 100-requests-per-minute limit hold across both, a revoke on one is refused by the other
/// within a second, and the counters equal the ledger equal the report.
#[tokio::test]
async fn two_replicas_share_budgets_rate_limits_and_revocations() {
    let sim = sim().await;
    let db = Database::create("replicas").await;
    let redis = RedisServer::start();
    let write = |listen: &str| {
        let text = format!(
            "[server]\nlisten = \"{listen}\"\napi_keys = [\"env:GATEWAY_KEY\"]\nadmin_keys = [\"env:GATEWAY_KEY_2\"]\n\
             [storage]\nurl = \"{}\"\n[shared]\nredis_url = \"{}\"\n\
             [providers.alpha]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n{}",
            db.url,
            redis.url,
            sim.base_url(),
            price("alpha/sim-small", 100.0, 200.0)
        );
        let p = std::env::temp_dir().join(format!("bourse-replica-{}-{}.toml", std::process::id(), fastrand::u64(..)));
        std::fs::write(&p, text).unwrap();
        p
    };
    let (pa, pb) = (write(&free_listen()), write(&free_listen()));
    let a = replica(&pa).await;
    let b = replica(&pb).await;
    let (key, secret) = tenant_and_key(
        &a.url,
        json!({"name": "shared"}),
        json!({"tenant": "shared", "budget_total_usd": "1.00", "name": "budget"}),
    )
    .await;
    // The other replica learns of the key within its poll.
    within_a_second("replica b sees the new key", || async { chat(&b.url, &secret, &ask(50)).await.status() != 401 })
        .await;
    // 200 concurrent requests, split across the replicas (one already served above).
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = if i % 2 == 0 { a.url.clone() } else { b.url.clone() };
        let secret = secret.clone();
        tasks.push(tokio::spawn(async move {
            let r = chat(&url, &secret, &ask(50)).await;
            let status = r.status().as_u16();
            let body: Value = json_of(r).await;
            (status, body)
        }));
    }
    let (mut served, mut refused) = (1, 0);
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => served += 1,
            (429, body) => {
                assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
                refused += 1;
            }
            (s, body) => panic!("neither served nor budget_exceeded: {s} {body}"),
        }
    }
    assert_eq!(served + refused, 201);
    // $0.0101 each, $1.00 in all: at most 99 fit. Reservations (each the answer plus the
    // prompt estimated at a quarter of the body's bytes: ~$0.0126) turn some away while others
    // are in flight (at least 79 fit), never let one more through.
    assert!((79..=99).contains(&served), "served {served}");
    let ledger = bourse::ledger::Ledger::open(&db.url).await.unwrap();
    let q = bourse::ledger::ReportQuery {
        since_ms: None,
        until_ms: None,
        by: bourse::ledger::GroupBy::Key,
        key: Some(key.clone()),
    };
    let mut spent = 0;
    for _ in 0..250 {
        let rows = ledger.report(&q).await.unwrap();
        if rows.first().is_some_and(|r| r.attempts == served) {
            spent = rows[0].cost_nanos;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(spent, served * ANSWER, "ledger total");
    assert!(spent <= 1_000_000_000);
    let counters = RedisCounters::connect(&redis.url).await.unwrap();
    let now = bourse::timespec::now_ms();
    let mut settled = None;
    for _ in 0..100 {
        let u = counters.usage(ScopeKind::Key, &key, "shared", now).await.unwrap();
        if u.reserved == 0 && u.in_flight == 0 {
            settled = Some(u);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let u = settled.expect("reservations and leases all released");
    assert_eq!(u.total, spent, "redis counter = ledger");
    let t = counters.usage(ScopeKind::Tenant, "shared", "shared", now).await.unwrap();
    assert_eq!(t.total, spent);
    // `bourse report --by key` reads the same number.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bourse"))
        .args(["report", "--by", "key", "--since", "2000-01-01", "--format", "json", "--config"])
        .arg(&pa)
        .env("GATEWAY_KEY", "gw-secret")
        .env("GATEWAY_KEY_2", ADMIN)
        .env("SIM_KEY", "sk-sim-secret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = report["data"].as_array().unwrap().iter().find(|r| r["group"] == key.as_str()).expect("key row");
    assert_eq!(row["cost_nanos"], spent, "report = ledger");
    // The key's budget: used, left, and its runway at the week's rate (all of it spent
    // today, so left × 7 days ÷ spent from now).
    let budgets = report["budgets"].as_array().expect("budgets in the report");
    let budget = budgets.iter().find(|b| b["group"] == key.as_str()).expect("the key's budget");
    assert_eq!(budget["window"], "total");
    assert_eq!(budget["limit_usd"], "1.000000000");
    assert_eq!(budget["used_usd"], bourse::meter::Cost(spent).usd());
    assert_eq!(budget["left_usd"], bourse::meter::Cost(1_000_000_000 - spent).usd());
    assert_eq!(budget["spent_7d_usd"], bourse::meter::Cost(spent).usd());
    let left_ms = (1_000_000_000 - spent) as i128 * 7 * 86_400_000 / spent as i128;
    let runs_out = unix_ms(budget["runs_out_at"].as_str().expect("a runway"));
    let expect = now as i128 + left_ms;
    assert!((runs_out as i128 - expect).abs() < 60_000, "{budget}");

    // Requests per minute: exactly 100 of 300 across both replicas.
    let (_, rpm_secret) = {
        let (s, body) = admin(
            &a.url,
            reqwest::Method::POST,
            "/admin/v1/keys",
            Some(json!({"tenant": "shared", "rpm": 100, "name": "rpm"})),
        )
        .await;
        assert_eq!(s, 201, "{body}");
        (body["id"].as_str().unwrap().to_string(), body["key"].as_str().unwrap().to_string())
    };
    // The tenant's budget is spent: give the tenant room (the key has no budget of its own).
    let (s, body) =
        admin(&a.url, reqwest::Method::PATCH, "/admin/v1/tenants/shared", Some(json!({"budget_total_usd": null})))
            .await;
    assert_eq!(s, 200, "{body}");
    // A request for an unknown model is refused before any counter: it only shows the key.
    within_a_second("replica b sees the rpm key", || async {
        chat(&b.url, &rpm_secret, &json!({"model": "nope"})).await.status() != 401
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let url = if i % 2 == 0 { a.url.clone() } else { b.url.clone() };
        let secret = rpm_secret.clone();
        tasks.push(tokio::spawn(async move { chat(&url, &secret, &ask(50)).await.status().as_u16() }));
    }
    let mut by_status = std::collections::BTreeMap::new();
    for t in tasks {
        *by_status.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(by_status.get(&200), Some(&100), "{by_status:?}");
    assert_eq!(by_status.get(&429), Some(&200), "{by_status:?}");

    // Tokens per minute across both replicas: each request reserves its estimated prompt plus
    // max_tokens (50) and uses 51 tokens, so what is used stays under the limit (the README's
    // estimate error is what a prompt uses beyond its estimate; here none).
    let (s, body) = admin(
        &a.url,
        reqwest::Method::POST,
        "/admin/v1/keys",
        Some(json!({"tenant": "shared", "tpm": 600, "name": "tpm"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let tpm_secret = body["key"].as_str().unwrap().to_string();
    within_a_second("replica b sees the tpm key", || async {
        chat(&b.url, &tpm_secret, &json!({"model": "nope"})).await.status() != 401
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let url = if i % 2 == 0 { a.url.clone() } else { b.url.clone() };
        let secret = tpm_secret.clone();
        tasks.push(tokio::spawn(async move {
            let r = chat(&url, &secret, &ask(50)).await;
            (r.status().as_u16(), json_of(r).await)
        }));
    }
    let mut served = 0u64;
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => served += 1,
            (429, body) => assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}"),
            (s, body) => panic!("{s} {body}"),
        }
    }
    assert!(served * 51 <= 600, "{served} requests used {} tokens of a 600-token minute", served * 51);
    assert!(served >= 5, "only {served} served: reservations far above use");

    // A key revoked on one replica is refused by the other within 1 s.
    let (s, _) = admin(&a.url, reqwest::Method::POST, &format!("/admin/v1/keys/{key}/revoke"), None).await;
    assert_eq!(s, 200);
    within_a_second("replica b refuses the revoked key", || async {
        chat(&b.url, &secret, &ask(50)).await.status() == 401
    })
    .await;
    drop((a, b));
    let _ = std::fs::remove_file(pa);
    let _ = std::fs::remove_file(pb);
    drop(ledger);
    db.drop().await;
}

/// Redis going away mid-run: "closed" refuses with 503 in the client's dialect, "open"
/// serves on the replica's own counters; nothing panics and every served request has its
/// ledger row.
#[tokio::test]
async fn redis_stopped_mid_run_closed_refuses_open_serves() {
    let sim = sim().await;
    let mut redis = RedisServer::start();
    for (mode, expect) in [("closed", 503u16), ("open", 200u16)] {
        let extra = format!("[shared]\nredis_url = \"{}\"\non_shared_failure = \"{mode}\"\n", redis.url);
        let gw = start(&config(&sim, &temp_db(mode), &extra)).await;
        assert!(matches!(gw.state.counters, Counters::Shared { .. }));
        let (id, secret) =
            tenant_and_key(&gw.url, json!({"name": "t"}), json!({"tenant": "t", "budget_day_usd": "5"})).await;
        assert_eq!(chat(&gw.url, &secret, &ask(50)).await.status(), 200);
        redis.stop();
        let r = chat(&gw.url, &secret, &ask(50)).await;
        assert_eq!(r.status().as_u16(), expect, "{mode}");
        if expect == 503 {
            let body: Value = json_of(r).await;
            assert_eq!(assert_openai_error(&body)["code"], "unavailable");
            let anthropic = json!({"model": "alpha/sim-small", "max_tokens": 50,
                                   "messages": [{"role": "user", "content": "hi"}]});
            let r = messages(&gw.url, &secret, &anthropic).await;
            assert_eq!(r.status().as_u16(), 503);
            let body: Value = json_of(r).await;
            assert_eq!(body["type"], "error", "{body}");
        } else {
            assert!(gw.state.counters.shared_failures() >= 1);
        }
        // Every served request is in the ledger.
        let served = if expect == 200 { 2 } else { 1 };
        assert_eq!(ledger_cost(&gw.state, &id, served).await, served * ANSWER);
        redis.restart();
    }
}

/// Nothing stays reserved: 10,000 mixed requests on two replicas sharing PostgreSQL and
/// Redis — answers, routed requests whose first candidate fails (fallbacks), first-byte
/// timeouts, streams read to the end and streams the client abandons after the first
/// chunk — leave every hold and lease released, and the counters equal to the ledger.
#[tokio::test]
async fn ten_thousand_mixed_requests_leave_nothing_reserved() {
    let ok = Sim::start(SimConfig { prompt_tokens: Some(1), output_tokens: 50, ..SimConfig::default() }).await.unwrap();
    let flaky = Sim::start(SimConfig {
        failure: Failure::Status { status: 503, retry_after: None, error_type: None, code: None, message: None },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let stall = Sim::start(SimConfig { failure: Failure::Stall, ..SimConfig::default() }).await.unwrap();
    let slow =
        Sim::start(SimConfig { prompt_tokens: Some(1), output_tokens: 50, chunk_delay_ms: 5, ..SimConfig::default() })
            .await
            .unwrap();
    let db = Database::create("mixed").await;
    let redis = RedisServer::start();
    let provider = |id: &str, sim: &Sim, extra: &str, input: f64, output: f64| {
        format!(
            "[providers.{id}]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n{extra}\n{}",
            sim.base_url(),
            price(&format!("{id}/sim-small"), input, output)
        )
    };
    let toml = format!(
        "[server]\napi_keys = [\"env:GATEWAY_KEY\"]\nadmin_keys = [\"env:GATEWAY_KEY_2\"]\n[storage]\nurl = \"{}\"\n\
         [shared]\nredis_url = \"{}\"\n[router]\nfailure_threshold = 1000000\n[routes.mix]\nmin_quality = 0\n{}{}{}{}",
        db.url,
        redis.url,
        provider("ok", &ok, "", 100.0, 200.0),
        provider("flaky", &flaky, "", 1.0, 2.0),
        provider("stall", &stall, "first_byte_timeout = \"200ms\"", 100.0, 200.0),
        provider("slow", &slow, "", 100.0, 200.0),
    );
    let a = start(&toml).await;
    let b = start(&toml).await;
    let (key, secret) = tenant_and_key(
        &a.url,
        json!({"name": "mixed", "budget_day_usd": "1000", "rpm": 1000000, "concurrency": 200}),
        json!({"tenant": "mixed", "budget_total_usd": "1000", "tpm": 100000000, "concurrency": 100}),
    )
    .await;
    b.state.directory.as_ref().unwrap().refresh().await.unwrap();
    let sem = Arc::new(tokio::sync::Semaphore::new(48));
    let mut tasks = Vec::new();
    for i in 0..10_000u32 {
        let url = if i % 2 == 0 { a.url.clone() } else { b.url.clone() };
        let secret = secret.clone();
        let permit = sem.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let (model, stream, abandon) = match i % 10 {
                0 => ("stall/sim-small", false, false),
                1 => ("slow/sim-small", true, true),
                2..=4 => ("mix", i % 3 == 0, false),
                _ => ("ok/sim-small", i % 7 == 0, false),
            };
            let body = json!({"model": model, "stream": stream, "max_tokens": 50,
                              "messages": [{"role": "user", "content": "hi"}]});
            let mut r = chat(&url, &secret, &body).await;
            let status = r.status().as_u16();
            if abandon {
                // Read the first chunk, then go away mid-stream.
                let _ = r.chunk().await;
                drop(r);
            } else {
                let _ = r.bytes().await;
            }
            (model, status)
        }));
    }
    let mut by: std::collections::BTreeMap<(&str, u16), u32> = std::collections::BTreeMap::new();
    for t in tasks {
        *by.entry(t.await.unwrap()).or_default() += 1;
    }
    // Every kind happened as intended: timeouts are 504s, everything else was answered.
    assert_eq!(by.get(&("stall/sim-small", 504)), Some(&1000), "{by:?}");
    assert_eq!(by.get(&("slow/sim-small", 200)), Some(&1000), "{by:?}");
    assert_eq!(by.get(&("mix", 200)), Some(&3000), "{by:?}");
    assert_eq!(by.get(&("ok/sim-small", 200)), Some(&5000), "{by:?}");
    let counters = RedisCounters::connect(&redis.url).await.unwrap();
    let ledger = bourse::ledger::Ledger::open(&db.url).await.unwrap();
    let q = bourse::ledger::ReportQuery {
        since_ms: None,
        until_ms: None,
        by: bourse::ledger::GroupBy::Key,
        key: Some(key.clone()),
    };
    // Abandoned streams settle when the gateway notices the client has gone; give the
    // writers and the settles a moment, then everything must agree exactly.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut k, mut t, mut rows) = (Default::default(), Default::default(), Vec::new());
    while Instant::now() < deadline {
        let now = bourse::timespec::now_ms();
        k = counters.usage(ScopeKind::Key, &key, "mixed", now).await.unwrap();
        t = counters.usage(ScopeKind::Tenant, "mixed", "mixed", now).await.unwrap();
        rows = ledger.report(&q).await.unwrap();
        let (total, attempts) = rows.first().map_or((0, 0), |r| (r.cost_nanos, r.attempts));
        // Failed attempts' rows cost nothing: wait for every row, not only for the money.
        let settled = k.reserved == 0 && k.in_flight == 0 && t.in_flight == 0;
        if settled && k.total == total && t.day == total && attempts == 13_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = rows.first().expect("ledger rows");
    assert_eq!((k.reserved, k.in_flight, t.reserved, t.in_flight), (0, 0, 0, 0), "{k:?} {t:?}");
    assert_eq!(k.total, row.cost_nanos, "key counter = ledger");
    assert_eq!((t.day, t.total), (row.cost_nanos, row.cost_nanos), "tenant counters = ledger");
    // 10,000 requests; the 3,000 routed ones each made a failed first attempt.
    assert_eq!(row.requests, 10_000);
    assert_eq!(row.attempts, 13_000);
    assert!(row.cost_nanos >= 8_000 * ANSWER, "{}", row.cost_nanos);
    drop((a, b, ledger));
    db.drop().await;
}

#[tokio::test]
async fn tokens_per_minute_and_concurrency_hold_and_usage_shows_only_the_keys_own() {
    let sim = sim().await;
    let gw = start(&config(&sim, &temp_db("tpm"), "")).await;
    // Each request reserves its estimated prompt plus max_tokens (50) and uses 51 tokens:
    // a 500-token minute admits 9 (9 × ~55 reserved fits, a tenth does not).
    let (id, secret) = tenant_and_key(&gw.url, json!({"name": "tok"}), json!({"tenant": "tok", "tpm": 500})).await;
    // A request whose own reservation is over the limit can never fit: not worth a retry.
    let r = chat(&gw.url, &secret, &ask(1000)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-should-retry"], "false");
    assert!(r.headers().get("retry-after").is_none());
    let body = json_of(r).await;
    assert!(body["error"]["message"].as_str().unwrap().starts_with("request too large"), "{body}");
    let mut served = 0u64;
    for _ in 0..20 {
        match chat(&gw.url, &secret, &ask(50)).await.status().as_u16() {
            200 => served += 1,
            429 => break,
            s => panic!("{s}"),
        }
    }
    // What was used stays within the limit (each request's reservation covered its use).
    assert!(served * 51 <= 500 && served >= 8, "served {served}");
    // After the settles, the window holds the actual 51 per request: room for one more
    // reservation only if 500 − 51·served ≥ the next reservation.
    let r = chat(&gw.url, &secret, &ask(1)).await;
    assert_eq!(r.status(), 200, "a small request fits in what the settles gave back");
    assert!(r.headers()["x-ratelimit-remaining-tokens"].to_str().unwrap().parse::<u64>().unwrap() < 500 - served * 51);
    // Another key's and a config key's requests are not in this key's usage.
    let (_, other) = tenant_and_key(&gw.url, json!({"name": "other"}), json!({"tenant": "other"})).await;
    assert_eq!(chat(&gw.url, &other, &ask(50)).await.status(), 200);
    assert_eq!(chat(&gw.url, "gw-secret", &ask(50)).await.status(), 200);
    ledger_cost(&gw.state, &id, served as i64 + 1).await;
    let usage = |key: &str| {
        let url = format!("{}/v1/bourse/usage?by=key&since=2000-01-01", gw.url);
        let key = key.to_string();
        async move { json_of(client().get(url).bearer_auth(key).send().await.unwrap()).await }
    };
    let mine = usage(&secret).await;
    let groups: Vec<&str> = mine["data"].as_array().unwrap().iter().map(|r| r["group"].as_str().unwrap()).collect();
    assert_eq!(groups, [id.as_str()], "{mine}");
    assert_eq!(mine["data"][0]["requests"], served + 1);
    let all = usage("gw-secret").await;
    assert!(all["data"].as_array().unwrap().len() >= 3, "{all}");

    // Concurrency: two slow streams at once on a key allowing one.
    sim.set_config(SimConfig { prompt_tokens: Some(1), output_tokens: 20, chunk_delay_ms: 20, ..SimConfig::default() });
    let (_, one) = tenant_and_key(&gw.url, json!({"name": "solo"}), json!({"tenant": "solo", "concurrency": 1})).await;
    let stream = json!({"model": "alpha/sim-small", "stream": true, "max_tokens": 20,
                        "messages": [{"role": "user", "content": "hi"}]});
    let first = chat(&gw.url, &one, &stream).await;
    assert_eq!(first.status(), 200);
    let second = chat(&gw.url, &one, &stream).await;
    assert_eq!(second.status(), 429);
    let body = json_of(second).await;
    assert!(body["error"]["message"].as_str().unwrap().contains("concurrent requests"), "{body}");
    // The first stream ends: its lease is back and the next request is admitted.
    let _ = first.bytes().await.unwrap();
    let mut admitted = false;
    for _ in 0..50 {
        if chat(&gw.url, &one, &ask(5)).await.status() == 200 {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "the lease was not given back when the stream ended");
}
