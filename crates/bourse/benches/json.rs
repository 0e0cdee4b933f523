//! The JSON work on every chat completion's hot path: checking the client's request and
//! reading `usage` from the upstream's answer, on the bodies `bench/run.sh` sends and gets.
//!
//! Run with `cargo bench -p bourse --bench json`. For instruction counts instead of time
//! (steadier on a shared machine), give an iteration count and run it under callgrind:
//! `BENCH_ITERS=10000 valgrind --tool=callgrind target/release/deps/json-*` (each function
//! runs that many times; divide its inclusive count by it).

use bourse::dialect::openai::{parse_chat_request, response_usage};
use bytes::Bytes;
use criterion::{black_box, criterion_group, Criterion};

const REQUEST: &str = r#"{"model":"sim/sim-small","stream":false,"max_tokens":16,"messages":[{"role":"user","content":"Say hello in one short sentence."}]}"#;

/// upstream-sim's answer to REQUEST, as `bench/run.sh` gets it.
const ANSWER: &str = r#"{"id":"chatcmpl-sim-1","object":"chat.completion","created":1795632851,"model":"sim-small","choices":[{"index":0,"message":{"role":"assistant","content":"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":12,"total_tokens":20,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"system_fingerprint":"fp_upstream_sim","service_tier":"default"}"#;

#[inline(never)]
fn check_request(body: &Bytes) {
    let req = parse_chat_request(black_box(body)).expect("the bench request is valid");
    black_box(req);
}

#[inline(never)]
fn read_usage(body: &[u8]) {
    let usage = response_usage(black_box(body)).expect("the bench answer is JSON");
    black_box(usage.expect("with usage"));
}

fn bench_json(c: &mut Criterion) {
    let request = Bytes::from_static(REQUEST.as_bytes());
    c.bench_function("check_request", |b| b.iter(|| check_request(&request)));
    c.bench_function("read_usage", |b| b.iter(|| read_usage(ANSWER.as_bytes())));
}

criterion_group!(benches, bench_json);

fn main() {
    if let Some(n) = std::env::var("BENCH_ITERS").ok().and_then(|n| n.parse::<u64>().ok()) {
        let request = Bytes::from_static(REQUEST.as_bytes());
        for _ in 0..n {
            check_request(&request);
        }
        for _ in 0..n {
            read_usage(ANSWER.as_bytes());
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
