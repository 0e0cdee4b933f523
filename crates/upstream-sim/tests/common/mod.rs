//! Helpers shared by the dialect tests: a proxy-free
//! reqwest client, JSON bodies without reqwest's `json` feature, and SSE parsing.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::Value;
use upstream_sim::{Sim, SimConfig, Stats};

pub fn client() -> reqwest::Client {
    // Tests talk to loopback only; a proxy from the environment must not interfere.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub async fn sim(config: SimConfig) -> Sim {
    Sim::start(config).await.unwrap()
}

/// POSTs `body` as JSON to `http://ADDR{path}` with extra `headers`.
pub async fn post(sim: &Sim, path: &str, headers: &[(&str, &str)], body: &Value) -> reqwest::Response {
    let mut request = client()
        .post(format!("http://{}{path}", sim.addr()))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

pub async fn json_of(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// One SSE event: its `event:` name (if any) and `data:` payload.
#[derive(Debug)]
pub struct SseEvent {
    pub name: Option<String>,
    pub data: String,
}

/// Parses a complete SSE body; every event must be `[event: NAME\n]data: ...`
/// terminated by a blank line.
pub fn parse_sse(text: &str) -> Vec<SseEvent> {
    assert!(text.ends_with("\n\n"), "unterminated event stream: {text:?}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut lines = e.lines();
            let first = lines.next().unwrap();
            let (name, data_line) = match first.strip_prefix("event: ") {
                Some(name) => (Some(name.to_owned()), lines.next().expect("data line after event line")),
                None => (None, first),
            };
            assert!(lines.next().is_none(), "one data line per event: {e:?}");
            let data = data_line.strip_prefix("data: ").unwrap_or_else(|| panic!("data line: {e:?}"));
            SseEvent { name, data: data.to_owned() }
        })
        .collect()
}

pub async fn wait_for_stats(sim: &Sim, want: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let stats = sim.stats();
        if want(&stats) || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
