//! `upstream-sim`: a fake LLM provider for integration tests and load
//! benchmarks of the Bourse gateway, and for `bourse demo`.
//!
//! A [`Sim`] is an HTTP server on a local port that answers like a real
//! provider, with configurable latency, usage-reporting quirks and injected
//! failures. It speaks three dialects at once, told apart by path: OpenAI
//! (`/v1/chat/completions`, `/v1/embeddings`, `/v1/models`), Anthropic
//! (`/v1/messages`, `/v1/messages/count_tokens`) and Gemini
//! (`/v1beta/models/{model}:generateContent`, `:streamGenerateContent`,
//! `:countTokens`). Start several to stand in for several providers:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use upstream_sim::{Failure, Sim, SimConfig};
//! let primary = Sim::start(SimConfig {
//!     failure: Failure::Status { status: 503, retry_after: None, error_type: None, code: None, message: None },
//!     ..SimConfig::default()
//! }).await?;
//! let fallback = Sim::start(SimConfig { ttft_ms: 20, ..SimConfig::default() }).await?;
//! println!("{} then {}", primary.base_url(), fallback.base_url());
//! # Ok(()) }
//! ```
//!
//! The `upstream-sim` binary runs one instance on a fixed port
//! (`upstream-sim --listen 127.0.0.1:9100 --ttft-ms 20`). Both it and the
//! library expose the same controls over HTTP, outside the API paths:
//! `GET /sim/stats`, `GET /sim/last-request`, `GET /sim/config` and
//! `PUT /sim/config` (a JSON [`SimConfig`], replacing the current one).
//!
//! # Scripted tasks
//!
//! By default every answer is the same filler text. To test answer checks,
//! cascades and routing, a request can instead carry a task item, as a marker
//! anywhere in its message text, and [`SimConfig::tasks`] says per model and
//! task how often it is answered correctly and what a wrong answer looks like
//! ([`WrongStyle`]). Outcomes are a deterministic hash of
//! ([`SimConfig::task_seed`], model, task, item), so a benchmark is reproducible
//! and [`SimConfig::answers_correctly`] tells a test the ground truth. Usage is
//! reported as for any other answer, and a stream carries the same content as
//! the non-streamed answer. The config, as JSON (`--config-json`, `PUT /sim/config`):
//!
//! ```json
//! {"task_seed": 42,
//!  "tasks": [
//!    {"model": "sim-small", "task": "arith", "p_correct": 0.6, "wrong": "answer"},
//!    {"model": "sim-small", "task": "extract", "p_correct": 0.5, "wrong": "invalid_json"},
//!    {"model": "sim-large", "task": "*", "p_correct": 0.9},
//!    {"model": "sim-judge", "p_correct": 0.95, "judge": true}]}
//! ```
//!
//! A request to `sim-small` whose prompt says
//! `What is 17 + 25? [task:arith item:q17 answer:42]` is answered
//! `Final answer: 42` on 60% of items, `Final answer: <another integer>` on the
//! rest; in JSON mode `{"answer":"42"}`; with
//! `[task:arith item:q17 answer:42 tool:submit]` and a declared tool `submit`,
//! by a call of `submit` with `{"answer":"42"}`. A judge request to
//! `sim-judge`:
//!
//! ```text
//! [judge] Grade the answer to: What is 17 + 25? [task:arith item:q17 answer:42]
//! Reply with VERDICT: PASS or VERDICT: FAIL.
//! ANSWER TO GRADE: Final answer: 42
//! ```
//!
//! is answered `VERDICT: PASS` (or, on the 5% of items where this judge errs,
//! `VERDICT: FAIL`). The full rules are on [`SimConfig::tasks`].

mod anthropic;
mod body;
pub mod config;
mod gemini;
mod openai;
mod server;
mod task;
mod text;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{Failure, SimConfig, TaskScript, UsageChunkChoices, UsageStyle, WrongStyle};

use server::Shared;

/// Counters since the simulator started. Only API (`/v1`, `/v1beta`) requests count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// API requests received (any method or path, including failed ones).
    pub requests: u64,
    /// Streaming responses whose last byte was handed to the connection.
    pub completed_streams: u64,
    /// Streaming responses abandoned because the client went away first.
    pub cancelled_streams: u64,
}

/// The most recent API (`/v1`, `/v1beta`) request, as received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// In arrival order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The parsed JSON body, or `Null` if it was empty or not JSON.
    pub body: serde_json::Value,
}

impl RecordedRequest {
    /// The first value of header `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A running simulator. Dropping it (or calling [`Sim::shutdown`]) stops the
/// server and closes its connections.
pub struct Sim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Sim {
    /// Starts a simulator on an ephemeral port of 127.0.0.1.
    pub async fn start(config: SimConfig) -> io::Result<Sim> {
        Sim::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Starts a simulator on `addr`. Must be called inside a Tokio runtime,
    /// which then runs the server.
    pub async fn bind(addr: SocketAddr, config: SimConfig) -> io::Result<Sim> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let task = tokio::spawn(server::serve(listener, shared.clone()));
        Ok(Sim { addr, shared, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`, the base URL an OpenAI client expects.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Replaces the config; requests that arrive afterwards use it. Also
    /// restarts the `fail_first_n` budget.
    pub fn set_config(&self, config: SimConfig) {
        self.shared.set_config(config);
    }

    /// The config in force.
    pub fn config(&self) -> SimConfig {
        self.shared.active().config.clone()
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.last_request()
    }

    /// Stops the server now; same as dropping it.
    pub fn shutdown(self) {}
}

impl Drop for Sim {
    fn drop(&mut self) {
        // The accept loop owns the connection tasks, so aborting it ends them all.
        self.task.abort();
    }
}
