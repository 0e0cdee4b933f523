//! Shared harness for integration tests: upstream-sim instances and a gateway on real
//! sockets (in-process for most tests; the real binary where signals or exit codes matter).

#![allow(dead_code)]

pub mod bin;

use bourse::config::Config;
use bourse::state::AppState;
use std::net::SocketAddr;
use std::sync::Arc;
#[allow(unused_imports)]
pub use upstream_sim::{Failure, Sim, SimConfig};

/// Env lookups for configs built in tests: provider keys come from here, not the process.
pub fn test_env(name: &str) -> Option<String> {
    match name {
        "SIM_KEY" => Some("sk-sim-secret".into()),
        "GATEWAY_KEY" => Some("gw-secret".into()),
        "GATEWAY_KEY_2" => Some("gw-other".into()),
        _ => None,
    }
}

/// A gateway started as `bourse serve` starts one (`server::prepare`: the ledger and its writer,
/// the directory, the cache, the counters), serving on its own port until dropped.
pub struct Running {
    pub url: String,
    pub state: bourse::state::SharedState,
    task: tokio::task::JoinHandle<()>,
    _writer: Option<bourse::ledger::WriterHandle>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start [`Running`] from a config's TOML (secrets from [`test_env`]).
pub async fn start(toml: &str) -> Running {
    let cfg = Config::from_toml(toml, &test_env).expect("valid config");
    let (state, writer) = bourse::server::prepare(&cfg).await.expect("prepare");
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let s = state.clone();
    let task = tokio::spawn(async move { bourse::server::serve(listener, s, std::future::pending()).await });
    Running { url, state, task, _writer: writer }
}

pub struct Gateway {
    pub addr: SocketAddr,
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start the gateway in-process from TOML text.
pub async fn gateway(toml_text: &str) -> Gateway {
    gateway_from_config(Config::from_toml(toml_text, &test_env).expect("test config is valid")).await
}

/// Start the gateway in-process from a validated config (a zero-config start's, say).
pub async fn gateway_from_config(cfg: Config) -> Gateway {
    let state = Arc::new(AppState::from_config(&cfg).expect("state"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        bourse::server::serve(listener, state, std::future::pending()).await;
    });
    Gateway { addr, url: format!("http://{addr}"), task }
}

/// A provider table pointing at a sim, with the sim's models listed and priced
/// (Bourse refuses unpriced models): `sim-small` at $1/$2 per 1M with cache reads at
/// $0.10, and an embedding model `emb` at $0.02.
pub fn provider_toml(id: &str, sim: &Sim, extra: &str) -> String {
    format!(
        "[providers.{id}]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n{extra}\n{}{}",
        sim.base_url(),
        price(&format!("{id}/sim-small"), 1.0, 2.0),
        price(&format!("{id}/emb"), 0.02, 0.0),
    )
}

/// A `[models]` price table for one `provider/model`.
pub fn price(id: &str, input: f64, output: f64) -> String {
    format!("[models.\"{id}\"]\ninput = {input:?}\ncached_input = {:?}\noutput = {output:?}\n", input / 10.0)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub fn chat_body(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Say hello to the exchange."}]})
}

/// Assert an OpenAI-shaped error body with all four keys; return it.
pub fn assert_openai_error(body: &serde_json::Value) -> &serde_json::Map<String, serde_json::Value> {
    let e = body["error"].as_object().unwrap_or_else(|| panic!("not an OpenAI error: {body}"));
    for k in ["message", "type", "param", "code"] {
        assert!(e.contains_key(k), "error lacks '{k}': {body}");
    }
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    e
}

/// Read an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    bourse::sse::parse_all(body.as_bytes())
        .into_iter()
        .filter_map(|i| match i {
            bourse::sse::Item::Event(e) => Some(e.data),
            bourse::sse::Item::Comment(_) => None,
        })
        .collect()
}

/// Poll until `f` is true or ~3 s pass.
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..150 {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    f()
}

/// A gateway with a real ledger behind it, and a read handle on that ledger.
pub struct LedgerGateway {
    pub gateway: Gateway,
    pub ledger: bourse::ledger::Ledger,
    _writer: bourse::ledger::WriterHandle,
}

impl LedgerGateway {
    /// The first ledger row of a request, waiting for the background writer.
    pub async fn row(&self, request_id: &str) -> bourse::ledger::LedgerEntry {
        for _ in 0..200 {
            if let Some(r) = self.ledger.rows(request_id).await.unwrap().into_iter().next() {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("no ledger row for {request_id}");
    }
}

pub async fn gateway_with_ledger(toml_text: &str, url: &str) -> LedgerGateway {
    use bourse::ledger::{Ledger, Writer, WriterConfig};
    let cfg = Config::from_toml(toml_text, &test_env).expect("test config is valid");
    let mut state = AppState::from_config(&cfg).expect("state");
    let (writer, handle) = Writer::start(
        Ledger::open(url).await.unwrap(),
        WriterConfig { flush_interval: std::time::Duration::from_millis(10), ..WriterConfig::default() },
    );
    state.ledger = Some(writer);
    state.reports = Some(Ledger::open(url).await.unwrap());
    // Config keys' ids keyed as `bourse serve` keys them: by the store's secret.
    state.use_key_id_secret(&state.reports.as_ref().unwrap().key_id_secret().await.unwrap());
    let ledger = Ledger::open(url).await.unwrap();
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        bourse::server::serve(listener, state, std::future::pending()).await;
    });
    LedgerGateway { gateway: Gateway { addr, url: format!("http://{addr}"), task }, ledger, _writer: handle }
}
