//! The exact-match response cache over real sockets: hits, misses, expiry, tenants, streams
//! replayed byte for byte, the ledger's rows and savings, the client's `Cache-Control`, the
//! temperature rule, route and key overrides, start-up errors, limits on hits, and two
//! gateways sharing answers through a real `redis-server` (`common/redis.rs`).
//!
//! Every gateway here is started as `bourse serve` starts one (`server::prepare`), on its own
//! SQLite ledger, in front of upstream-sim, whose answers carry a per-request id: a hit's
//! bytes equal to the miss's show they were stored, and the sim's request count shows the
//! upstream was not asked again.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use bourse::config::Config;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const ADMIN: &str = "gw-other"; // GATEWAY_KEY_2 in test_env
const GATEWAY: &str = "gw-secret"; // GATEWAY_KEY

fn temp_db(tag: &str) -> String {
    let p = std::env::temp_dir().join(format!("bourse-cache-{tag}-{}-{}.db", std::process::id(), fastrand::u64(..)));
    format!("sqlite:{}", p.display())
}

/// `alpha/sim-small` ($1 / $2 per 1M, quality 1400) behind gateway and admin keys, a SQLite
/// ledger, `extra` (the `[cache]` section, routes...) and a `[routes.r]` that routes to it.
fn config(sim: &Sim, storage: &str, extra: &str) -> String {
    format!(
        "[server]\napi_keys = [\"env:GATEWAY_KEY\"]\nadmin_keys = [\"env:GATEWAY_KEY_2\"]\n\
         [storage]\nurl = \"{storage}\"\n{extra}\n\
         [providers.alpha]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n\
         [models.\"alpha/sim-small\"]\ninput = 1.0\noutput = 2.0\nquality = 1400\ncontext = 32000\n\
         capabilities = [\"tools\", \"json_schema\", \"streaming\"]\n",
        sim.base_url(),
    )
}

async fn sim() -> Sim {
    Sim::start(SimConfig { prompt_tokens: Some(1000), output_tokens: 50, ..SimConfig::default() }).await.unwrap()
}

/// A deterministic request: `temperature: 0`.
fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

/// POST `body` to `path` with `secret` and the extra headers; the whole answer.
async fn post(base: &str, path: &str, secret: &str, body: &Value, extra: &[(&str, &str)]) -> Answer {
    let mut r = client()
        .post(format!("{base}{path}"))
        .bearer_auth(secret)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01");
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    let resp = r.body(body.to_string()).send().await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    Answer { status, headers, body: resp.bytes().await.unwrap() }
}

async fn chat(base: &str, body: &Value, extra: &[(&str, &str)]) -> Answer {
    post(base, "/v1/chat/completions", GATEWAY, body, extra).await
}

/// Every row of a request, waiting for the writer.
async fn rows(gw: &Running, request_id: &str, n: usize) -> Vec<bourse::ledger::LedgerEntry> {
    let ledger = gw.state.reports.as_ref().unwrap();
    for _ in 0..250 {
        let rows = ledger.rows(request_id).await.unwrap();
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{request_id}: fewer than {n} ledger rows");
}

fn nanos(usd: &str) -> i64 {
    let (int, frac) = usd.split_once('.').unwrap();
    int.parse::<i64>().unwrap() * 1_000_000_000 + frac.parse::<i64>().unwrap()
}

const CACHE: &str = "[cache]\nttl = \"1h\"\nmax_bytes = \"16MiB\"\n";

/// A non-streamed answer is stored on its miss and served again on the next identical
/// request — in both client dialects — at no cost, with the original's provenance, and the
/// ledger's row for the hit says what it saved.
#[tokio::test]
async fn a_repeat_is_a_free_hit_with_the_originals_provenance_and_its_saving_in_the_ledger() {
    let sim = sim().await;
    let gw = start(&config(&sim, &temp_db("hit"), CACHE)).await;
    let body = ask("alpha/sim-small", "What is the capital of France?");
    let miss = chat(&gw.url, &body, &[("x-request-id", "r-miss")]).await;
    assert_eq!(miss.status, 200);
    assert_eq!(miss.header("x-bourse-cache"), "miss");
    let cost = nanos(miss.header("x-bourse-cost-usd"));
    let reference = nanos(miss.header("x-bourse-reference-cost-usd"));
    assert!(cost > 0 && reference > cost, "{cost} {reference}");
    assert_eq!(sim.stats().requests, 1);

    let hit = chat(&gw.url, &body, &[("x-request-id", "r-hit")]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(sim.stats().requests, 1, "a hit does not go upstream");
    assert_eq!(hit.body, miss.body, "the stored answer, byte for byte");
    assert_eq!(hit.header("x-bourse-cache"), "hit");
    assert_eq!(hit.header("content-type"), "application/json");
    assert_eq!((hit.header("x-bourse-provider"), hit.header("x-bourse-model")), ("alpha", "sim-small"));
    assert_eq!(hit.header("x-bourse-cost-usd"), "0.000000000");
    assert_eq!(nanos(hit.header("x-bourse-reference-cost-usd")), reference);
    assert_eq!(nanos(hit.header("x-bourse-saved-usd")), reference);
    assert_eq!(hit.header("x-bourse-route-reason"), "cache hit");
    assert_eq!(hit.header("age"), "0");

    let m = &rows(&gw, "r-miss", 1).await[0];
    assert_eq!((m.cache_hit, m.cache_saved_nanos, m.cost_nanos), (false, 0, cost));
    let h = rows(&gw, "r-hit", 1).await;
    assert_eq!(h.len(), 1, "a hit is one row");
    let h = &h[0];
    assert!(h.cache_hit);
    assert_eq!((h.cost_nanos, h.cache_saved_nanos, h.reference_cost_nanos), (0, cost, reference));
    assert_eq!((h.provider.as_str(), h.model.as_str(), h.attempt, h.status), ("alpha", "sim-small", 1, 200));
    assert_eq!(h.usage, bourse::canonical::Usage::default(), "no tokens were processed");
    assert_eq!((h.energy_uwh, h.co2e_ug), (Some(0), Some(0)), "no inference ran: an estimate of 0, not none");
    assert!(m.energy_uwh.is_some_and(|e| e > 0), "the miss ran the model: {:?}", m.energy_uwh);
    assert_eq!(hit.header("x-bourse-energy-wh"), "0.000000");
    assert_eq!(h.route_reason.as_deref(), Some("cache hit"));
    assert!(!h.stream && h.error_kind.is_none());

    // Another question is another key.
    let other = chat(&gw.url, &ask("alpha/sim-small", "And of Spain?"), &[]).await;
    assert_eq!(other.header("x-bourse-cache"), "miss");
    assert_eq!(sim.stats().requests, 2);

    // The Anthropic surface: its own answers (its own wire format), hit the same way.
    let a = json!({"model": "alpha/sim-small", "max_tokens": 100, "temperature": 0,
                   "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let miss = post(&gw.url, "/v1/messages", GATEWAY, &a, &[]).await;
    assert_eq!((miss.status, miss.header("x-bourse-cache")), (200, "miss"), "not the OpenAI answer");
    let hit = post(&gw.url, "/v1/messages", GATEWAY, &a, &[]).await;
    assert_eq!((hit.status, hit.header("x-bourse-cache")), (200, "hit"));
    assert_eq!(hit.body, miss.body);
    let v: Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(sim.stats().requests, 3);
}

/// The SSE comment a stream ends with (cost, reference, saving), and the bytes before it.
fn split_comment(body: &[u8]) -> (&[u8], &str) {
    let text = std::str::from_utf8(body).unwrap();
    let at = text.rfind(": x-bourse-cost-usd=").unwrap_or_else(|| panic!("no cost comment: {text}"));
    (&body[..at], &text[at..])
}

/// A stream is stored as the client received it and replayed byte for byte at the SSE
/// level (only the cost comment after the last event differs: the hit's costs nothing); in
/// both dialects, with and without the usage chunk, and apart from the non-streamed answer.
#[tokio::test]
async fn streams_replay_byte_identical_events() {
    let sim = sim().await;
    // The same sim as an Anthropic upstream too: every relay mode (OpenAI pass-through,
    // Anthropic observed, translated either way) is teed.
    let an = format!(
        "[providers.an]\nkind = \"anthropic-compatible\"\nbase_url = \"http://{}\"\napi_key = \"env:SIM_KEY\"\n\
         models = [\"sim-small\"]\n{}",
        sim.addr(),
        price("an/sim-small", 1.0, 2.0)
    );
    let gw = start(&config(&sim, &temp_db("stream"), &format!("{CACHE}{an}"))).await;
    let question = "Tell me about the exchange.";
    let openai = json!({"model": "alpha/sim-small", "temperature": 0, "stream": true,
                        "messages": [{"role": "user", "content": question}]});
    let with_usage = json!({"model": "alpha/sim-small", "temperature": 0, "stream": true,
                            "stream_options": {"include_usage": true},
                            "messages": [{"role": "user", "content": question}]});
    let anthropic = json!({"model": "alpha/sim-small", "max_tokens": 100, "temperature": 0, "stream": true,
                           "messages": [{"role": "user", "content": question}]});
    let to_an = |v: &Value| {
        let mut v = v.clone();
        v["model"] = json!("an/sim-small");
        v
    };
    let (openai_an, anthropic_an) = (to_an(&with_usage), to_an(&anthropic));
    let mut upstream = 0;
    for (path, body) in [
        ("/v1/chat/completions", &openai),
        ("/v1/chat/completions", &with_usage),
        ("/v1/messages", &anthropic),
        ("/v1/chat/completions", &openai_an),
        ("/v1/messages", &anthropic_an),
    ] {
        let miss = post(&gw.url, path, GATEWAY, body, &[("x-request-id", "s-miss")]).await;
        upstream += 1;
        assert_eq!((miss.status, miss.header("x-bourse-cache")), (200, "miss"), "{path} {body}");
        assert_eq!(sim.stats().requests, upstream);
        let hit = post(&gw.url, path, GATEWAY, body, &[("x-request-id", "s-hit")]).await;
        assert_eq!((hit.status, hit.header("x-bourse-cache")), (200, "hit"), "{path} {body}");
        assert_eq!(sim.stats().requests, upstream, "{path}: replayed, not asked again");
        assert_eq!(hit.header("content-type"), "text/event-stream");
        let (miss_events, miss_comment) = split_comment(&miss.body);
        let (hit_events, hit_comment) = split_comment(&hit.body);
        assert_eq!(hit_events, miss_events, "{path}: the same SSE bytes");
        assert!(miss_events.len() > 100, "{}", String::from_utf8_lossy(miss_events));
        // The miss's comment: its cost; the hit's: nothing spent, all of the reference saved.
        let field = |c: &str, k: &str| {
            let at = c.find(&format!("{k}=")).unwrap() + k.len() + 1;
            nanos(c[at..].split_whitespace().next().unwrap())
        };
        let reference = field(miss_comment, "x-bourse-reference-cost-usd");
        assert!(field(miss_comment, "x-bourse-cost-usd") > 0);
        assert_eq!(field(hit_comment, "x-bourse-cost-usd"), 0);
        assert_eq!(field(hit_comment, "x-bourse-reference-cost-usd"), reference);
        assert_eq!(field(hit_comment, "x-bourse-saved-usd"), reference);
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    let plain = post(&gw.url, "/v1/chat/completions", GATEWAY, &openai, &[]).await;
    let usage = post(&gw.url, "/v1/chat/completions", GATEWAY, &with_usage, &[]).await;
    let usage_chunk = "\"usage\":{\"";
    assert!(text(&usage.body).contains(usage_chunk), "{}", text(&usage.body));
    assert!(!text(&plain.body).contains(usage_chunk), "{}", text(&plain.body));
    // The same question unstreamed is its own entry.
    let unstreamed = chat(&gw.url, &ask("alpha/sim-small", question), &[]).await;
    assert_eq!(unstreamed.header("x-bourse-cache"), "miss");
    // The hit's row: a stream, no usage, what the miss cost saved.
    let miss_rows = rows(&gw, "s-miss", 5).await;
    let hit_rows = rows(&gw, "s-hit", 5).await;
    for (m, h) in miss_rows.iter().zip(&hit_rows) {
        assert!(m.stream && h.stream && h.cache_hit && !m.cache_hit);
        assert_eq!((h.cost_nanos, h.reference_cost_nanos), (0, m.reference_cost_nanos));
        assert!(m.cost_nanos > 0);
    }
    let mut saved: Vec<i64> = hit_rows.iter().map(|r| r.cache_saved_nanos).collect();
    let mut spent: Vec<i64> = miss_rows.iter().map(|r| r.cost_nanos).collect();
    saved.sort();
    spent.sort();
    assert_eq!(saved, spent);
}

/// On a cascade route whose streams are buffered (`cascade_streaming = "buffer"`), the answer
/// that passed its checks is kept as the stream the client got, and replayed as one; the
/// unstreamed request is its own entry. An `anthropic-beta` header is part of an Anthropic
/// request's key.
#[tokio::test]
async fn a_checked_answer_replayed_as_a_stream_is_kept_as_one() {
    let sim = sim().await;
    let route = "[routes.checked]\nmin_quality = 1300\ncascade = [\"complete\"]\ncascade_streaming = \"buffer\"\n";
    let gw = start(&config(&sim, &temp_db("cascade"), &format!("{CACHE}{route}"))).await;
    let streamed = json!({"model": "checked", "temperature": 0, "stream": true,
                          "messages": [{"role": "user", "content": "checked"}]});
    let miss = chat(&gw.url, &streamed, &[]).await;
    assert_eq!((miss.status, miss.header("x-bourse-cache")), (200, "miss"));
    assert!(!miss.header("x-bourse-cascade").is_empty(), "the answer was checked");
    let hit = chat(&gw.url, &streamed, &[]).await;
    assert_eq!((hit.header("x-bourse-cache"), hit.header("content-type")), ("hit", "text/event-stream"));
    assert_eq!(split_comment(&hit.body).0, split_comment(&miss.body).0);
    assert!(String::from_utf8_lossy(&hit.body).contains("data: [DONE]"));
    assert_eq!(sim.stats().requests, 1);
    let unstreamed = ask("checked", "checked");
    assert_eq!(chat(&gw.url, &unstreamed, &[]).await.header("x-bourse-cache"), "miss");
    let hit = chat(&gw.url, &unstreamed, &[]).await;
    assert_eq!((hit.header("x-bourse-cache"), hit.header("content-type")), ("hit", "application/json"));
    // Anthropic's beta flags change answers: another flag, another entry.
    let a = json!({"model": "alpha/sim-small", "max_tokens": 50, "temperature": 0,
                   "messages": [{"role": "user", "content": "beta"}]});
    let said = |r: Answer| r.header("x-bourse-cache").to_string();
    assert_eq!(said(post(&gw.url, "/v1/messages", GATEWAY, &a, &[]).await), "miss");
    assert_eq!(said(post(&gw.url, "/v1/messages", GATEWAY, &a, &[("anthropic-beta", "x-2025")]).await), "miss");
    assert_eq!(said(post(&gw.url, "/v1/messages", GATEWAY, &a, &[("anthropic-beta", "x-2025")]).await), "hit");
    assert_eq!(said(post(&gw.url, "/v1/messages", GATEWAY, &a, &[]).await), "hit");
}

/// A stream that does not complete is not stored: the next identical request goes upstream.
#[tokio::test]
async fn a_broken_stream_or_a_failed_answer_is_not_stored() {
    let sim = sim().await;
    let gw = start(&config(&sim, &temp_db("broken"), CACHE)).await;
    let streamed = json!({"model": "alpha/sim-small", "temperature": 0, "stream": true,
                          "messages": [{"role": "user", "content": "a long answer"}]});
    sim.set_config(SimConfig { failure: Failure::DropMidStream { after_chunks: 3 }, ..sim.config() });
    let broken = chat(&gw.url, &streamed, &[]).await;
    assert_eq!((broken.status, broken.header("x-bourse-cache")), (200, "miss"));
    assert!(String::from_utf8_lossy(&broken.body).contains("error"), "the client saw the break");
    sim.set_config(SimConfig { failure: Failure::None, ..sim.config() });
    let next = chat(&gw.url, &streamed, &[]).await;
    assert_eq!(next.header("x-bourse-cache"), "miss", "the broken stream was not kept");
    assert_eq!(chat(&gw.url, &streamed, &[]).await.header("x-bourse-cache"), "hit");
    // An error status is not an answer to keep.
    let body = ask("alpha/sim-small", "fails first");
    let status = Failure::Status { status: 500, retry_after: None, error_type: None, code: None, message: None };
    sim.set_config(SimConfig { failure: status, ..sim.config() });
    let failed = chat(&gw.url, &body, &[]).await;
    assert_eq!((failed.status, failed.header("x-bourse-cache")), (500, "miss"));
    sim.set_config(SimConfig { failure: Failure::None, ..sim.config() });
    assert_eq!(chat(&gw.url, &body, &[]).await.header("x-bourse-cache"), "miss");
    assert_eq!(chat(&gw.url, &body, &[]).await.header("x-bourse-cache"), "hit");
}

/// An answer is served for the TTL, and not after.
#[tokio::test]
async fn an_answer_expires_after_its_ttl() {
    let sim = sim().await;
    let gw = start(&config(&sim, &temp_db("ttl"), "[cache]\nttl = \"400ms\"\n")).await;
    let body = ask("alpha/sim-small", "ttl");
    assert_eq!(chat(&gw.url, &body, &[]).await.header("x-bourse-cache"), "miss");
    assert_eq!(chat(&gw.url, &body, &[]).await.header("x-bourse-cache"), "hit");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(chat(&gw.url, &body, &[]).await.header("x-bourse-cache"), "miss");
    assert_eq!(sim.stats().requests, 2);
    assert_eq!(chat(&gw.url, &body, &[]).await.header("x-bourse-cache"), "hit");
}

async fn admin(base: &str, path: &str, body: Value) -> Value {
    let resp = client()
        .post(format!("{base}{path}"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(status, 201, "{path}: {v}");
    v
}

/// A virtual key's secret, on a tenant created if it is new.
async fn key(base: &str, tenant: &str, spec: Value) -> String {
    let _ = client()
        .post(format!("{base}/admin/v1/tenants"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(json!({"name": tenant}).to_string())
        .send()
        .await
        .unwrap();
    let mut spec = spec;
    spec["tenant"] = json!(tenant);
    admin(base, "/admin/v1/keys", spec).await["key"].as_str().unwrap().to_string()
}

/// Each tenant has its own answers (its keys share them); `share_across_tenants` shares
/// them between all.
#[tokio::test]
async fn tenants_do_not_see_each_others_answers_unless_configured() {
    let sim = sim().await;
    let gw = start(&config(&sim, &temp_db("tenants"), CACHE)).await;
    let a1 = key(&gw.url, "acme", json!({})).await;
    let a2 = key(&gw.url, "acme", json!({})).await;
    let b = key(&gw.url, "globex", json!({})).await;
    let body = ask("alpha/sim-small", "the same question");
    let said = |a: Answer| a.header("x-bourse-cache").to_string();
    let path = "/v1/chat/completions";
    assert_eq!(said(post(&gw.url, path, &a1, &body, &[]).await), "miss");
    assert_eq!(said(post(&gw.url, path, &a1, &body, &[]).await), "hit");
    assert_eq!(said(post(&gw.url, path, &a2, &body, &[]).await), "hit", "the tenant's other key");
    assert_eq!(said(post(&gw.url, path, &b, &body, &[]).await), "miss", "another tenant");
    assert_eq!(said(chat(&gw.url, &body, &[]).await), "miss", "config keys are the built-in tenant");
    assert_eq!(sim.stats().requests, 3);
    let hit_row_tenant = {
        let r = post(&gw.url, path, &b, &body, &[("x-request-id", "b-hit")]).await;
        assert_eq!(r.header("x-bourse-cache"), "hit");
        rows(&gw, "b-hit", 1).await[0].tenant_id.clone()
    };
    assert_eq!(hit_row_tenant.as_deref(), Some("globex"));
    drop(gw);

    let shared = start(&config(&sim, &temp_db("shared"), &format!("{CACHE}share_across_tenants = true\n"))).await;
    let a = key(&shared.url, "acme", json!({})).await;
    let b = key(&shared.url, "globex", json!({})).await;
    assert_eq!(said(post(&shared.url, path, &a, &body, &[]).await), "miss");
    assert_eq!(said(post(&shared.url, path, &b, &body, &[]).await), "hit");
    assert_eq!(said(chat(&shared.url, &body, &[]).await), "hit");
}

/// `Cache-Control: no-cache` skips the lookup and the fresh answer replaces the stored one;
/// `no-store` skips both.
#[tokio::test]
async fn no_cache_bypasses_and_refreshes_and_no_store_leaves_it_alone() {
    let sim = sim().await;
    let gw = start(&config(&sim, &temp_db("nocache"), CACHE)).await;
    let body = ask("alpha/sim-small", "fresh, please");
    let first = chat(&gw.url, &body, &[]).await;
    let fresh = chat(&gw.url, &body, &[("cache-control", "no-cache")]).await;
    assert_eq!(fresh.header("x-bourse-cache"), "bypass");
    assert_eq!(sim.stats().requests, 2, "no-cache went upstream");
    assert_ne!(fresh.body, first.body, "a new answer (the sim numbers its answers)");
    assert!(nanos(fresh.header("x-bourse-cost-usd")) > 0);
    let hit = chat(&gw.url, &body, &[]).await;
    assert_eq!(hit.header("x-bourse-cache"), "hit");
    assert_eq!(hit.body, fresh.body, "the fresh answer replaced the stored one");
    let unstored = chat(&gw.url, &body, &[("cache-control", "no-store")]).await;
    assert_eq!(unstored.header("x-bourse-cache"), "bypass");
    assert_eq!(sim.stats().requests, 3);
    let hit = chat(&gw.url, &body, &[]).await;
    assert_eq!(hit.body, fresh.body, "no-store kept nothing");
    assert_eq!(sim.stats().requests, 3);
}

/// A sampled request (temperature above 0, or none given) is cached only on a route that
/// says `cache_sampled = true`.
#[tokio::test]
async fn sampled_requests_are_cached_only_where_the_route_opts_in() {
    let sim = sim().await;
    let routes = "[routes.r]\nmin_quality = 1300\n[routes.creative]\nmin_quality = 1300\ncache_sampled = true\n";
    let gw = start(&config(&sim, &temp_db("sampled"), &format!("{CACHE}{routes}"))).await;
    let said = |a: Answer| a.header("x-bourse-cache").to_string();
    let warm = json!({"model": "r", "temperature": 0.7, "messages": [{"role": "user", "content": "a poem"}]});
    let unset = json!({"model": "alpha/sim-small", "messages": [{"role": "user", "content": "a poem"}]});
    for body in [&warm, &unset] {
        assert_eq!(said(chat(&gw.url, body, &[]).await), "uncacheable", "{body}");
        assert_eq!(said(chat(&gw.url, body, &[]).await), "uncacheable", "{body}");
    }
    assert_eq!(sim.stats().requests, 4);
    let cold = json!({"model": "r", "temperature": 0, "messages": [{"role": "user", "content": "a poem"}]});
    assert_eq!(said(chat(&gw.url, &cold, &[]).await), "miss");
    assert_eq!(said(chat(&gw.url, &cold, &[]).await), "hit");
    let creative =
        json!({"model": "creative", "temperature": 0.7, "messages": [{"role": "user", "content": "a poem"}]});
    assert_eq!(said(chat(&gw.url, &creative, &[]).await), "miss");
    assert_eq!(said(chat(&gw.url, &creative, &[]).await), "hit");
    assert_eq!(sim.stats().requests, 6);
    // The route's hit row names the route first, as routed rows do.
    let r = chat(&gw.url, &creative, &[("x-request-id", "creative-hit")]).await;
    assert_eq!(r.header("x-bourse-cache"), "hit");
    assert_eq!(rows(&gw, "creative-hit", 1).await[0].route_reason.as_deref(), Some("route=creative; cache hit"));
}

/// `cache` on a route or a key overrides `[cache] enabled`, and a `false` wins.
#[tokio::test]
async fn routes_and_keys_override_the_section() {
    let sim = sim().await;
    let said = |a: &Answer| a.header("x-bourse-cache").to_string();
    let path = "/v1/chat/completions";
    // Off by default; one route and one key turn it on.
    let routes = "[cache]\nenabled = false\n[routes.cached]\nmin_quality = 1300\ncache = true\n\
                  [routes.plain]\nmin_quality = 1300\n";
    let gw = start(&config(&sim, &temp_db("override-off"), routes)).await;
    let on = key(&gw.url, "acme", json!({"cache": true})).await;
    let off = key(&gw.url, "acme", json!({"cache": false})).await;
    let plain = ask("plain", "override");
    let r = chat(&gw.url, &plain, &[]).await;
    assert_eq!((r.status, said(&r)), (200, String::new()), "off: no header");
    assert_eq!(said(&chat(&gw.url, &plain, &[]).await), "");
    assert_eq!(sim.stats().requests, 2);
    let cached = ask("cached", "override");
    assert_eq!(said(&chat(&gw.url, &cached, &[]).await), "miss");
    assert_eq!(said(&chat(&gw.url, &cached, &[]).await), "hit");
    assert_eq!(said(&post(&gw.url, path, &off, &cached, &[]).await), "", "the key's false wins");
    assert_eq!(said(&post(&gw.url, path, &on, &plain, &[]).await), "miss", "the key's true");
    assert_eq!(said(&post(&gw.url, path, &on, &plain, &[]).await), "hit");
    // The key's setting is stored and listed.
    let list = client().get(format!("{}/admin/v1/keys", gw.url)).bearer_auth(ADMIN).send().await.unwrap();
    let list: Value = serde_json::from_slice(&list.bytes().await.unwrap()).unwrap();
    let mut said_cache: Vec<Value> = list["data"].as_array().unwrap().iter().map(|k| k["cache"].clone()).collect();
    said_cache.sort_by_key(|v| v.to_string());
    assert_eq!(said_cache, [json!(false), json!(true)], "{list}");
    drop(gw);
    // On by default; a route turns it off, even for a key that turns it on.
    let routes = format!("{CACHE}[routes.fresh]\nmin_quality = 1300\ncache = false\n");
    let gw = start(&config(&sim, &temp_db("override-on"), &routes)).await;
    let on = key(&gw.url, "acme", json!({"cache": true})).await;
    let fresh = ask("fresh", "override");
    assert_eq!(said(&chat(&gw.url, &fresh, &[]).await), "");
    assert_eq!(said(&post(&gw.url, path, &on, &fresh, &[]).await), "");
    assert_eq!(said(&chat(&gw.url, &ask("alpha/sim-small", "override"), &[]).await), "miss");
    // A key's `cache` must be a boolean.
    let bad = client()
        .post(format!("{}/admin/v1/keys", gw.url))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(json!({"tenant": "acme", "cache": "yes"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

/// A hit is a request to a key's limits (its per-minute count), and spends nothing.
#[tokio::test]
async fn a_hit_counts_as_a_request_and_spends_nothing() {
    let sim = sim().await;
    let gw = start(&config(&sim, &temp_db("limits"), CACHE)).await;
    let k = key(&gw.url, "acme", json!({"rpm": 2, "budget_total_usd": "1.00"})).await;
    let body = ask("alpha/sim-small", "limited");
    let path = "/v1/chat/completions";
    let miss = post(&gw.url, path, &k, &body, &[]).await;
    let cost = nanos(miss.header("x-bourse-cost-usd"));
    let hit = post(&gw.url, path, &k, &body, &[]).await;
    assert_eq!(hit.header("x-bourse-cache"), "hit");
    assert_eq!(hit.header("x-ratelimit-remaining-requests"), "0");
    let budget_left = nanos(hit.header("x-bourse-budget-remaining-usd"));
    assert_eq!(budget_left, 1_000_000_000 - cost, "the hit spent nothing");
    let refused = post(&gw.url, path, &k, &body, &[]).await;
    assert_eq!(refused.status, 429, "the third request in the minute, hit or not");
    assert_eq!(sim.stats().requests, 1);
}

/// Bad `[cache]` values stop the start-up, naming their path.
#[tokio::test]
async fn config_errors_name_the_path_at_start_up() {
    let sim = sim().await;
    for (section, path) in [
        ("[cache]\nttl = \"forever\"\n", "cache.ttl"),
        ("[cache]\nttl = \"0s\"\n", "cache.ttl"),
        ("[cache]\nmax_bytes = \"lots\"\n", "cache.max_bytes"),
        ("[cache]\nmax_bytes = \"12XB\"\n", "cache.max_bytes"),
        ("[cache]\nmax_bytes = \"0\"\n", "cache.max_bytes"),
        ("[cache]\nmax_bytes = \"1KiB\"\nmax_entry_bytes = \"2KiB\"\n", "cache.max_entry_bytes"),
    ] {
        let e = Config::from_toml(&config(&sim, "sqlite::memory:", section), &test_env).unwrap_err();
        assert_eq!(e.path, path, "{section}: {e}");
    }
    let e = Config::from_toml(&config(&sim, "sqlite::memory:", "[cache]\nsize = 1\n"), &test_env).unwrap_err();
    assert!(e.to_string().contains("cache") && e.to_string().contains("size"), "{e}");
    let e =
        Config::from_toml(&config(&sim, "sqlite::memory:", "[routes.r]\ncache = \"yes\"\n"), &test_env).unwrap_err();
    assert!(e.to_string().contains("routes.r.cache"), "{e}");
    // The real binary: `bourse serve` exits non-zero with the path on its output.
    let dir = std::env::temp_dir().join(format!("bourse-cache-bad-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bourse.toml");
    std::fs::write(&file, config(&sim, "sqlite::memory:", "[cache]\nmax_bytes = \"256 potatoes\"\n")).unwrap();
    let mut cmd = common::bin::command();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&file);
    cmd.env("GATEWAY_KEY", "gw").env("GATEWAY_KEY_2", "admin").env("SIM_KEY", "sk");
    let (status, lines) = common::bin::Process::run(&mut cmd).await;
    assert!(!status.success());
    assert!(lines.iter().any(|l| l.contains("cache.max_bytes")), "{lines:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two gateways on one Redis share answers: one's miss is the other's hit (streams included),
/// stored under a digest with the TTL as its expiry.
#[tokio::test]
async fn two_gateways_share_answers_through_redis() {
    if !std::path::Path::new("/usr/bin/redis-server").is_file() {
        eprintln!("skipped: /usr/bin/redis-server is not installed (./scripts/redis installs it)");
        return;
    }
    let redis = redis_server::RedisServer::start();
    let sim = sim().await;
    let extra = format!("{CACHE}[shared]\nredis_url = \"{}\"\n", redis.url);
    let a = start(&config(&sim, &temp_db("redis-a"), &extra)).await;
    let b = start(&config(&sim, &temp_db("redis-b"), &extra)).await;
    assert!(a.state.cache.as_ref().unwrap().held().is_none(), "the Redis store");
    let body = ask("alpha/sim-small", "shared");
    let streamed = json!({"model": "alpha/sim-small", "temperature": 0, "stream": true,
                          "messages": [{"role": "user", "content": "shared"}]});
    for (body, n) in [(&body, 1), (&streamed, 2)] {
        let miss = chat(&a.url, body, &[]).await;
        assert_eq!(miss.header("x-bourse-cache"), "miss");
        // The entry is written just after the answer: the other replica finds it within a second.
        let mut hit = None;
        for _ in 0..50 {
            let r = chat(&b.url, body, &[("x-request-id", "on-b")]).await;
            if r.header("x-bourse-cache") == "hit" {
                hit = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let hit = hit.expect("replica b never hit replica a's answer");
        match n {
            1 => assert_eq!(hit.body, miss.body),
            _ => assert_eq!(split_comment(&hit.body).0, split_comment(&miss.body).0),
        }
        // Replica b's misses while the write was in flight went upstream too; none after.
        let asked = sim.stats().requests;
        assert_eq!(chat(&a.url, body, &[]).await.header("x-bourse-cache"), "hit");
        assert_eq!(sim.stats().requests, asked);
    }
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("/usr/bin/redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8(out.stdout).unwrap()
    };
    let keys = cli(&["--scan", "--pattern", "bourse:cache:v1:*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in keys {
        assert_eq!(k.len(), "bourse:cache:v1:".len() + 64, "{k}");
        let ttl: i64 = cli(&["pttl", k]).trim().parse().unwrap();
        assert!(ttl > 3_500_000 && ttl <= 3_600_000, "{ttl}");
    }
    // With Redis gone, the cache is a miss and the answer still comes.
    drop(redis);
    let r = chat(&a.url, &ask("alpha/sim-small", "redis is gone"), &[]).await;
    assert_eq!((r.status, r.header("x-bourse-cache")), (200, "miss"));
}
