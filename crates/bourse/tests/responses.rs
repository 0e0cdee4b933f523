//! The Responses API (`POST /v1/responses`) over real sockets, against upstream-sim in every
//! dialect: ledger rows equal to the equivalent chat request's, a route falling back across
//! dialects, streams that break mid-way ending with `response.failed`, and stored responses
//! (`previous_response_id`) on both stores: continued by their key only, until they expire,
//! and never kept with `store: false`.

mod common;
#[macro_use]
#[path = "common/stores.rs"]
mod stores;

use common::{client, gateway_with_ledger, price, sse_data, Failure, LedgerGateway, Sim, SimConfig};
use serde_json::{json, Value};

const PROMPT: &str = "Say hello to the exchange.";

/// Providers `oa`, `an` and `ge` on one sim (OpenAI, Anthropic and Gemini dialects), priced.
fn providers(sim: &Sim) -> String {
    let root = format!("http://{}", sim.addr());
    let mut toml = format!(
        "[providers.oa]\nkind = \"openai-compatible\"\nbase_url = \"{root}/v1\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n\
         [providers.an]\nkind = \"anthropic-compatible\"\nbase_url = \"{root}\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n\
         [providers.ge]\nkind = \"gemini\"\nbase_url = \"{root}/v1beta\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n"
    );
    for p in ["oa", "an", "ge"] {
        toml.push_str(&price(&format!("{p}/sim-small"), 1.0, 2.0));
    }
    toml
}

/// A scratch SQLite ledger, removed on drop.
struct TempDb(std::path::PathBuf);

impl TempDb {
    fn new(tag: &str) -> TempDb {
        let p =
            std::env::temp_dir().join(format!("bourse-responses-{tag}-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&p).unwrap();
        TempDb(p)
    }
    fn url(&self) -> String {
        format!("sqlite:{}", self.0.join("ledger.db").display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn post(gw: &LedgerGateway, path: &str, body: &Value, rid: &str, key: Option<&str>) -> reqwest::Response {
    let mut r = client()
        .post(format!("{}{path}", gw.gateway.url))
        .header("content-type", "application/json")
        .header("x-request-id", rid);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r.body(body.to_string()).send().await.unwrap()
}

async fn responses(gw: &LedgerGateway, body: &Value, rid: &str) -> reqwest::Response {
    post(gw, "/v1/responses", body, rid, None).await
}

/// A Responses event stream as its events' JSON, checking what every stream must hold:
/// `type` as the SSE event name, sequence numbers from 0 without gaps, created and
/// in_progress first, and exactly one terminal event, last.
fn events(body: &str) -> Vec<Value> {
    let data = sse_data(body);
    assert!(!data.iter().any(|d| d == "[DONE]"), "a Responses stream has no [DONE]: {body}");
    let evs: Vec<Value> = data.iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    for (n, e) in evs.iter().enumerate() {
        assert_eq!(e["sequence_number"], n as u64, "{body}");
    }
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(&types[..2], ["response.created", "response.in_progress"], "{types:?}");
    let terminal = |t: &str| matches!(t, "response.completed" | "response.incomplete" | "response.failed");
    assert_eq!(types.iter().filter(|t| terminal(t)).count(), 1, "{types:?}");
    assert!(terminal(types.last().unwrap()), "{types:?}");
    evs
}

fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap())
        .filter_map(|c| c["text"].as_str())
        .collect()
}

/// The columns that say what a request cost and who served it (not when, how fast or its id).
fn money(r: &bourse::ledger::LedgerEntry) -> Value {
    json!({
        "attempt": r.attempt, "provider": r.provider, "model": r.model, "usage": r.usage,
        "cost": r.cost_nanos, "reference": r.reference_cost_nanos, "catalog": r.catalog_version,
        "status": r.status, "error": r.error_kind, "estimated": r.estimated(), "stream": r.stream,
        "key": r.key_id.as_deref(), "tenant": r.tenant_id.as_deref(), "reason": r.route_reason,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responses_request_writes_the_ledger_row_of_the_equivalent_chat_request() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let db = TempDb::new("rows");
    let gw = gateway_with_ledger(&providers(&sim), &db.url()).await;
    for provider in ["oa", "an", "ge"] {
        for stream in [false, true] {
            let model = format!("{provider}/sim-small");
            let mut chat = json!({"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream});
            if stream {
                chat["stream_options"] = json!({"include_usage": true});
            }
            let cid = format!("chat-{provider}-{stream}");
            let resp = post(&gw, "/v1/chat/completions", &chat, &cid, None).await;
            assert_eq!(resp.status(), 200, "{cid}");
            let chat_cost = resp.headers().get("x-bourse-cost-usd").cloned();
            resp.text().await.unwrap();
            let rid = format!("resp-{provider}-{stream}");
            let resp = responses(&gw, &json!({"model": model, "input": PROMPT, "stream": stream}), &rid).await;
            assert_eq!(resp.status(), 200, "{rid}");
            assert_eq!(resp.headers()["x-bourse-provider"], provider);
            assert_eq!(resp.headers().get("x-bourse-cost-usd").cloned(), chat_cost, "{rid}");
            let body = resp.text().await.unwrap();
            let response = if stream {
                events(&body).pop().unwrap()["response"].clone()
            } else {
                serde_json::from_str(&body).unwrap()
            };
            assert_eq!(response["status"], "completed", "{rid}: {body}");
            assert!(!output_text(&response).is_empty(), "{rid}: {body}");
            let (c, r) = (gw.row(&cid).await, gw.row(&rid).await);
            assert!(r.usage.input_total() > 0 && r.usage.output_total() > 0 && r.cost_nanos > 0, "{r:?}");
            assert_eq!(money(&r), money(&c), "{rid} against {cid}");
            assert_eq!(response["usage"]["input_tokens"], r.usage.input_total(), "{rid}");
            assert_eq!(response["usage"]["output_tokens"], r.usage.output_total(), "{rid}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_falls_back_to_a_candidate_of_another_dialect() {
    let bad = Sim::start(SimConfig {
        failure: Failure::Status { status: 503, retry_after: None, error_type: None, code: None, message: None },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let good = Sim::start(SimConfig::default()).await.unwrap();
    let toml = format!(
        "[providers.cheap]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"sim-small\"]\n\
         [providers.an]\nkind = \"anthropic-compatible\"\nbase_url = \"http://{}\"\nmodels = [\"sim-small\"]\n\
         {}{}[routes.mixed]\nmin_quality = \"basic\"\npolicy = \"two\"\n\
         [policies.two]\nallow_providers = [\"cheap\", \"an\"]\n[router]\nmax_attempts = 2\nfailure_threshold = 1000\n",
        bad.base_url(),
        good.addr(),
        // Far apart, so the planner's learned output lengths never reorder them.
        price("cheap/sim-small", 0.01, 0.02),
        price("an/sim-small", 5.0, 10.0),
    );
    let db = TempDb::new("fallback");
    let gw = gateway_with_ledger(&toml, &db.url()).await;
    for stream in [false, true] {
        let rid = format!("fb-{stream}");
        let body = json!({"model": "mixed", "input": PROMPT, "instructions": "Be brief.", "stream": stream});
        let resp = responses(&gw, &body, &rid).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-bourse-provider"], "an", "the Anthropic candidate answered");
        let text = resp.text().await.unwrap();
        let response = if stream {
            events(&text).pop().unwrap()["response"].clone()
        } else {
            serde_json::from_str(&text).unwrap()
        };
        assert_eq!(response["status"], "completed", "{text}");
        assert!(!output_text(&response).is_empty());
        // The Anthropic candidate got the conversation in its own dialect.
        let sent = good.last_request().unwrap().body;
        assert_eq!(sent["system"], "Be brief.", "{sent}");
        assert_eq!(sent["messages"][0]["role"], "user", "{sent}");
        let mut rows = Vec::new();
        for _ in 0..200 {
            rows = gw.ledger.rows(&rid).await.unwrap();
            if rows.len() >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let who: Vec<(&str, u16)> = rows.iter().map(|r| (r.provider.as_str(), r.status)).collect();
        assert_eq!(who, [("cheap", 503), ("an", 200)], "{rid}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_mid_way_ends_with_response_failed() {
    let sim = Sim::start(SimConfig {
        chunk_delay_ms: 5,
        failure: Failure::DropMidStream { after_chunks: 3 },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let db = TempDb::new("broken");
    let gw = gateway_with_ledger(&providers(&sim), &db.url()).await;
    for provider in ["oa", "an", "ge"] {
        let rid = format!("broken-{provider}");
        let body = json!({"model": format!("{provider}/sim-small"), "input": PROMPT, "stream": true});
        let resp = responses(&gw, &body, &rid).await;
        assert_eq!(resp.status(), 200, "{rid}: the first tokens came, so the stream is the client's");
        let text = resp.text().await.unwrap();
        let evs = events(&text);
        let last = evs.last().unwrap();
        assert_eq!(last["type"], "response.failed", "{rid}: {text}");
        assert_eq!(last["response"]["status"], "failed");
        assert_eq!(last["response"]["error"]["code"], "server_error");
        assert!(last["response"]["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(evs.iter().any(|e| e["type"] == "response.output_text.delta"), "{rid}: {text}");
        // The attempt is metered as a broken stream, as a chat stream's would be.
        let row = gw.row(&rid).await;
        assert_eq!(row.status, 502, "{rid}");
        // A failed response is not stored: there is nothing to continue from.
        let id = last["response"]["id"].as_str().unwrap();
        assert!(gw.ledger.get_response(id, "", bourse::timespec::now_ms()).await.unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_are_400s_in_openai_s_shape() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let db = TempDb::new("mistakes");
    let gw = gateway_with_ledger(&providers(&sim), &db.url()).await;
    for (body, param) in [
        (json!({"model": "oa/sim-small"}), "input"),
        (json!({"model": "oa/sim-small", "input": "x", "tools": [{"type": "web_search"}]}), "tools[0].type"),
        (
            json!({"model": "oa/sim-small", "input": [{"type": "function_call_output", "call_id": "c"}]}),
            "input[0].output",
        ),
        (json!({"model": "oa/sim-small", "input": "x", "stream": "yes"}), "stream"),
    ] {
        let resp = responses(&gw, &body, "bad").await;
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        let e = common::assert_openai_error(&v);
        assert_eq!(e["param"], param, "{v}");
    }
    let resp = client()
        .post(format!("{}/v1/responses", gw.gateway.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = responses(&gw, &json!({"model": "nope/none", "input": "x"}), "unknown-model").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(sim.stats().requests, 0, "no mistake reached the upstream");
}

// ------------------------------------------------------------------ stored responses, both stores

const KEY_1: &str = "gw-secret";
const KEY_2: &str = "gw-other";

async fn keyed_gateway(sim: &Sim, url: &str, ttl: &str) -> LedgerGateway {
    let toml = format!(
        "[server]\napi_keys = [\"env:GATEWAY_KEY\", \"env:GATEWAY_KEY_2\"]\n[responses]\nstore_ttl = \"{ttl}\"\n{}",
        providers(sim)
    );
    gateway_with_ledger(&toml, url).await
}

async fn create(gw: &LedgerGateway, body: Value, key: &str) -> (u16, Value) {
    let resp = post(gw, "/v1/responses", &body, "store", Some(key)).await;
    let status = resp.status().as_u16();
    let stream = body["stream"] == true;
    let text = resp.text().await.unwrap();
    let v = if stream && status == 200 {
        events(&text).pop().unwrap()["response"].clone()
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, v)
}

fn assert_not_found(status: u16, v: &Value) {
    assert_eq!(status, 404, "{v}");
    let e = common::assert_openai_error(v);
    assert_eq!(e["code"], "previous_response_not_found", "{v}");
    assert_eq!(e["param"], "previous_response_id", "{v}");
}

async fn stored_responses_continue_only_for_their_key(url: &str) {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = keyed_gateway(&sim, url, "1h").await;
    for stream in [false, true] {
        let first =
            json!({"model": "an/sim-small", "input": "first question", "instructions": "Be brief.", "stream": stream});
        let (status, r1) = create(&gw, first, KEY_1).await;
        assert_eq!(status, 200, "{r1}");
        assert_eq!(r1["store"], true);
        let id = r1["id"].as_str().unwrap();
        let answer = output_text(&r1);
        assert!(!answer.is_empty());
        // Another key cannot see it, nor retrieve it; its own key can.
        let get = |key: &'static str| {
            let url = format!("{}/v1/responses/{id}", gw.gateway.url);
            async move { client().get(url).bearer_auth(key).send().await.unwrap() }
        };
        assert_eq!(get(KEY_2).await.status(), 404);
        let got: Value = serde_json::from_str(&get(KEY_1).await.text().await.unwrap()).unwrap();
        assert_eq!(got, r1, "retrieved as it was answered");
        let next = json!({"model": "oa/sim-small", "input": "and then?", "previous_response_id": id, "stream": stream});
        let (status, v) = create(&gw, next.clone(), KEY_2).await;
        assert_not_found(status, &v);
        // Its own key continues it, on another provider: the conversation so far goes upstream
        // (the first input and answer, then the new input; the old instructions do not).
        let (status, r2) = create(&gw, next, KEY_1).await;
        assert_eq!(status, 200, "{r2}");
        assert_eq!(r2["previous_response_id"], id);
        let sent = sim.last_request().unwrap().body;
        let messages = sent["messages"].as_array().unwrap();
        let said: Vec<(&str, &str)> =
            messages.iter().map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap_or(""))).collect();
        assert_eq!(said, [("user", "first question"), ("assistant", answer.as_str()), ("user", "and then?")], "{sent}");
        // And the continuation is itself continued: the whole chain goes up.
        let third = json!({"model": "oa/sim-small", "input": "last", "previous_response_id": r2["id"]});
        let (status, _) = create(&gw, third, KEY_1).await;
        assert_eq!(status, 200);
        assert_eq!(sim.last_request().unwrap().body["messages"].as_array().unwrap().len(), 5);
    }
    let (status, v) =
        create(&gw, json!({"model": "oa/sim-small", "input": "x", "previous_response_id": "resp_nope"}), KEY_1).await;
    assert_not_found(status, &v);
}

async fn store_false_keeps_nothing(url: &str) {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = keyed_gateway(&sim, url, "1h").await;
    for stream in [false, true] {
        let before = gw.ledger.stored_responses().await.unwrap();
        let (status, r) =
            create(&gw, json!({"model": "oa/sim-small", "input": "x", "store": false, "stream": stream}), KEY_1).await;
        assert_eq!(status, 200);
        assert_eq!(r["store"], false);
        assert_eq!(gw.ledger.stored_responses().await.unwrap(), before, "store: false keeps no row");
        let next = json!({"model": "oa/sim-small", "input": "y", "previous_response_id": r["id"]});
        let (status, v) = create(&gw, next, KEY_1).await;
        assert_not_found(status, &v);
    }
    // The default is to store.
    let (_, r) = create(&gw, json!({"model": "oa/sim-small", "input": "x"}), KEY_1).await;
    assert_eq!(r["store"], true);
    assert_eq!(gw.ledger.stored_responses().await.unwrap(), 1);
}

async fn stored_responses_expire(url: &str) {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = keyed_gateway(&sim, url, "1s").await;
    let (status, r) = create(&gw, json!({"model": "oa/sim-small", "input": "x"}), KEY_1).await;
    assert_eq!(status, 200);
    let next = json!({"model": "oa/sim-small", "input": "y", "previous_response_id": r["id"]});
    let (status, _) = create(&gw, next.clone(), KEY_1).await;
    assert_eq!(status, 200, "fresh: continued");
    // The TTL passes (this waits for the expiry itself, not for speed).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, v) = create(&gw, next, KEY_1).await;
    assert_not_found(status, &v);

    // The store itself, on explicit clocks: a row is read until its expiry and deleted by the
    // next write after it.
    let ledger = &gw.ledger;
    let base = ledger.stored_responses().await.unwrap();
    let row = |id: &str, now: i64| bourse::ledger::StoredResponse {
        id: id.into(),
        key_id: "k".into(),
        created_ms: now,
        expires_ms: now + 1000,
        input: "[]".into(),
        response: "{}".into(),
    };
    let t0 = bourse::timespec::now_ms() + 3_600_000;
    ledger.put_response(row("resp_a", t0), t0).await.unwrap();
    assert!(ledger.get_response("resp_a", "k", t0 + 999).await.unwrap().is_some());
    assert!(ledger.get_response("resp_a", "other", t0).await.unwrap().is_none(), "scoped to its key");
    assert!(ledger.get_response("resp_a", "k", t0 + 1000).await.unwrap().is_none(), "expired");
    ledger.put_response(row("resp_b", t0 + 2000), t0 + 2000).await.unwrap();
    // resp_a and every row the gateway stored above (an hour earlier) are gone.
    assert_eq!(ledger.stored_responses().await.unwrap(), 1, "{base} rows before");
}

both_stores!(stored_responses_continue_only_for_their_key, store_false_keeps_nothing, stored_responses_expire);
