//! Route planning over a 100-model catalog: `Router::plan` runs on every routed request,
//! so it should stay in the low microseconds (target: under 20 µs), also with quality
//! evidence for every model on each of 50 routes (the `task*` cases).
//!
//! Run with `cargo bench -p bourse --bench plan`.

use bourse::canonical::ChatRequest;
use bourse::config::Config;
use bourse::dialect::openai::parse_chat_request;
use bourse::ledger::EvidenceRow;
use bourse::provider::Provider;
use bourse::route::{Overrides, Providers, Router};
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

const PROVIDERS: usize = 4;
const MODELS: usize = 100;
/// Routes with evidence for every model: half floor on `min_score`, half relative to a model.
const TASKS: usize = 50;

/// Four providers that are never contacted, 100 priced chat models spread across them with
/// varied prices, quality (some unrated), origin and hosting, context and capabilities,
/// plus a policy and a route that use them.
fn config_toml() -> String {
    let mut t = String::new();
    for p in 0..PROVIDERS {
        writeln!(t, "[providers.p{p}]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:9/v1\"").unwrap();
    }
    let countries = ["US", "CN", "EU"];
    let contexts = [8_000u64, 32_000, 64_000, 128_000, 200_000, 1_000_000];
    for i in 0..MODELS {
        let p = i % PROVIDERS;
        // Deterministic spread: prices from $0.01 to ~$15 per 1M input tokens.
        let input = 0.01 + ((i * 37) % 100) as f64 * 0.15;
        let output = input * (2.0 + (i % 4) as f64);
        writeln!(t, "[models.\"p{p}/m{i}\"]\ninput = {input:.3}\noutput = {output:.3}").unwrap();
        if i % 7 != 0 {
            // 1200..=1490: some below "strong" (1370), some above "frontier" (1420).
            writeln!(t, "quality = {}", 1200 + (i * 53) % 300).unwrap();
        }
        let origin = countries[i % 3];
        let hosting = countries[(i / 3) % 3];
        writeln!(t, "origin = \"{origin}\"\nhosting = \"{hosting}\"\ncontext = {}", contexts[i % contexts.len()])
            .unwrap();
        let caps = match i % 5 {
            0 => r#"["streaming"]"#,
            1 => r#"["tools", "streaming"]"#,
            2 => r#"["tools", "json_schema", "streaming"]"#,
            3 => r#"["tools", "json_schema", "vision", "reasoning", "streaming"]"#,
            _ => r#"["json_schema", "streaming"]"#,
        };
        writeln!(t, "capabilities = {caps}\nopen_weights = {}", i % 2 == 0).unwrap();
    }
    t.push_str("[policies.no_cn]\ndeny_hosting = [\"CN\"]\n");
    t.push_str("[routes.strong_us]\nmin_quality = \"strong\"\npolicy = \"no_cn\"\n");
    for k in 0..TASKS {
        match k % 2 {
            0 => writeln!(t, "[routes.task{k}]\nmin_quality = \"strong\"\nmin_score = 0.8").unwrap(),
            _ => writeln!(t, "[routes.task{k}]\nmin_quality = \"95% of p1/m85\"").unwrap(),
        }
    }
    t
}

/// Evidence for every model on every task route: scores spread over [0.5, 1), 50 to 2,000
/// samples, from two sources each.
fn evidence() -> Vec<EvidenceRow> {
    let mut rows = Vec::new();
    for k in 0..TASKS {
        for i in 0..MODELS {
            for (s, source) in ["import", "check:complete"].into_iter().enumerate() {
                rows.push(EvidenceRow {
                    route: format!("task{k}"),
                    model: format!("p{}/m{i}", i % PROVIDERS),
                    source: source.into(),
                    score: 0.5 + ((i * 31 + k * 17 + s * 7) % 50) as f64 / 100.0,
                    n: 50 + ((i * 13 + k * 7) % 40) as u64 * 50,
                    updated_ms: 0,
                });
            }
        }
    }
    rows
}

fn router() -> Router {
    let cfg = Config::from_toml(&config_toml(), &|_| None).expect("bench config parses");
    let providers =
        Providers::new(cfg.providers.iter().map(|p| Arc::new(Provider::new(p).expect("provider builds"))).collect());
    Router::new(&providers, &cfg.catalog, &cfg.routing)
}

fn request(body: &str) -> ChatRequest {
    parse_chat_request(&Bytes::copy_from_slice(body.as_bytes())).expect("bench request parses")
}

fn bench_plan(c: &mut Criterion) {
    let router = router();
    assert_eq!(router.entries.len(), MODELS, "every configured model is routable");
    let overrides = Overrides::default();
    router.evidence.set_rows(evidence());
    let auto = router.route("auto").expect("auto route");
    let strong_us = router.route("strong_us").expect("strong_us route");
    let task_score = router.route("task20").expect("task20 route");
    let task_relative = router.route("task21").expect("task21 route");

    let short = request(r#"{"model":"auto","messages":[{"role":"user","content":"What is the capital of France?"}]}"#);
    let tools = request(
        r#"{"model":"strong_us","max_tokens":2000,"messages":[{"role":"user","content":"Weather in Paris?"}],
            "tools":[{"type":"function","function":{"name":"get_weather","description":"Current weather",
            "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]}"#,
    );
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(92); // ~4 KB
    let long =
        request(&serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": prompt}]}).to_string());

    // Each case must yield a real plan, so the loop measures ranking rather than an early error.
    for (route, req) in
        [(auto, &short), (strong_us, &tools), (auto, &long), (task_score, &short), (task_relative, &short)]
    {
        let routed = router.plan(route, &overrides, req, Instant::now()).expect("plan");
        assert!(!routed.plan.candidates.is_empty(), "route {} has candidates", route.name);
        if route.name.starts_with("task") {
            assert!(routed.plan.candidates.iter().all(|c| c.evidence.is_some()), "ranked on evidence");
            assert!(
                !routed.plan.excluded.is_empty(),
                "the evidence floor of {} excludes some: {} candidates, min_score {:?}, first {:?}",
                route.name,
                routed.plan.candidates.len(),
                route.min_score_ppm,
                routed.plan.candidates.first()
            );
        }
    }

    let mut g = c.benchmark_group("plan_100_models");
    g.bench_function("auto_short", |b| {
        b.iter(|| router.plan(black_box(auto), &overrides, black_box(&short), Instant::now()))
    });
    g.bench_function("strong_us_tools_max_tokens_2000", |b| {
        b.iter(|| router.plan(black_box(strong_us), &overrides, black_box(&tools), Instant::now()))
    });
    g.bench_function("auto_4kb_prompt", |b| {
        b.iter(|| router.plan(black_box(auto), &overrides, black_box(&long), Instant::now()))
    });
    g.bench_function("evidence_min_score_50_routes", |b| {
        b.iter(|| router.plan(black_box(task_score), &overrides, black_box(&short), Instant::now()))
    });
    g.bench_function("evidence_relative_50_routes", |b| {
        b.iter(|| router.plan(black_box(task_relative), &overrides, black_box(&short), Instant::now()))
    });
    g.finish();
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);
