//! The upstream fault matrix: every way an upstream fails ([`Fault`]) × stream or not ×
//! the upstream's dialect (OpenAI, Anthropic, Gemini) × an explicit model or a route whose
//! next candidate is healthy × the client's surface (`/v1/chat/completions` or
//! `/v1/messages`), each cell over real sockets against upstream-sim, with its own gateway
//! and SQLite ledger so no circuit or counter of one cell touches another.
//!
//! What every cell must show:
//! - with a healthy candidate and nothing yet sent to the client, the request is served
//!   (by the fallback), and the ledger has the failed attempt and the one that answered;
//! - without one, a clean error in the client's dialect, with the status the fault calls
//!   for (and the upstream's `Retry-After` after a 429), and one ledger row saying why;
//! - a stream that fails after its first token reached the client ends with an error event
//!   in the client's dialect (no `[DONE]`, no `message_stop`), and its one ledger row is
//!   metered (usage and cost, estimated from what was relayed) with an error kind.
//!
//! Cells run concurrently; each failing cell is reported by name, and the test fails once
//! at the end with the whole list.

mod common;

use bourse::ledger::LedgerEntry;
use common::*;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;

/// How an upstream fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    RateLimited,
    Status500,
    Status503,
    Status529,
    Refused,
    StallBeforeFirstByte,
    /// Beyond the twelve faults of issue 18: the headers (and a stream's opening events), then
    /// nothing, as a provider that accepted the request and never starts the answer.
    StallBeforeFirstToken,
    StallMidStream,
    ResetMidStream,
    MalformedJson,
    TruncatedSse,
    /// Beyond the twelve faults of issue 18: a stream that ends cleanly between two events,
    /// mid-answer, which is easy to pass off as complete.
    EndsEarly,
    WrongContentType,
    ErrorIn200,
}

/// Delta chunks a mid-stream fault lets through first: the client has had its first token.
const CHUNKS_BEFORE_FAULT: u32 = 2;

impl Fault {
    const ALL: [Fault; 14] = [
        Fault::RateLimited,
        Fault::Status500,
        Fault::Status503,
        Fault::Status529,
        Fault::Refused,
        Fault::StallBeforeFirstByte,
        Fault::StallBeforeFirstToken,
        Fault::StallMidStream,
        Fault::ResetMidStream,
        Fault::MalformedJson,
        Fault::TruncatedSse,
        Fault::EndsEarly,
        Fault::WrongContentType,
        Fault::ErrorIn200,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::RateLimited => "429+retry-after",
            Fault::Status500 => "500",
            Fault::Status503 => "503",
            Fault::Status529 => "529",
            Fault::Refused => "connection-refused",
            Fault::StallBeforeFirstByte => "stall-before-first-byte",
            Fault::StallBeforeFirstToken => "stall-before-first-token",
            Fault::StallMidStream => "stall-mid-stream",
            Fault::ResetMidStream => "reset-mid-stream",
            Fault::MalformedJson => "malformed-json",
            Fault::TruncatedSse => "truncated-sse",
            Fault::EndsEarly => "clean-end-mid-answer",
            Fault::WrongContentType => "wrong-content-type",
            Fault::ErrorIn200 => "200-with-error-body",
        }
    }

    /// The sim's failure; None for a refused connection (nothing listens).
    fn failure(self) -> Option<Failure> {
        let status = |status, retry_after| Failure::Status {
            status,
            retry_after,
            error_type: None,
            code: None,
            message: Some(format!("simulated {status}")),
        };
        Some(match self {
            Fault::RateLimited => status(429, Some(1)),
            Fault::Status500 => status(500, None),
            Fault::Status503 => status(503, None),
            Fault::Status529 => status(529, None),
            Fault::Refused => return None,
            Fault::StallBeforeFirstByte => Failure::Stall,
            Fault::StallBeforeFirstToken => Failure::StallMidStream { after_chunks: 0 },
            Fault::StallMidStream => Failure::StallMidStream { after_chunks: CHUNKS_BEFORE_FAULT },
            Fault::ResetMidStream => Failure::DropMidStream { after_chunks: CHUNKS_BEFORE_FAULT },
            Fault::MalformedJson => Failure::MalformedJson,
            Fault::TruncatedSse => Failure::Truncate { after_chunks: CHUNKS_BEFORE_FAULT, mid_event: true },
            Fault::EndsEarly => Failure::Truncate { after_chunks: CHUNKS_BEFORE_FAULT, mid_event: false },
            Fault::WrongContentType => Failure::WrongContentType,
            Fault::ErrorIn200 => Failure::OkWithError { after_chunks: 0 },
        })
    }

    /// Whether, in a stream, the fault strikes after the client got its first token (and
    /// no fallback is possible any more).
    fn after_first_token(self, stream: bool) -> bool {
        stream && matches!(self, Fault::StallMidStream | Fault::ResetMidStream | Fault::TruncatedSse | Fault::EndsEarly)
    }

    /// What a client sees when nothing else can serve: the status on the OpenAI surface
    /// (None: any 5xx; also the failed attempt's ledger status), and the failed attempt's
    /// ledger error kind.
    fn outcome(self) -> (Option<u16>, &'static str) {
        match self {
            Fault::RateLimited => (Some(429), "upstream_rate_limited"),
            Fault::Status500 => (Some(500), "upstream_5xx"),
            Fault::Status503 => (Some(503), "upstream_5xx"),
            Fault::Status529 => (Some(529), "upstream_5xx"),
            Fault::Refused => (Some(502), "upstream_unreachable"),
            // A body that stops is one too (not a stream's: those are broken streams).
            Fault::StallBeforeFirstByte | Fault::StallBeforeFirstToken | Fault::StallMidStream => {
                (Some(504), "upstream_timeout")
            }
            Fault::ResetMidStream => (Some(502), "upstream_unreachable"),
            Fault::MalformedJson | Fault::TruncatedSse | Fault::EndsEarly | Fault::WrongContentType => {
                (Some(502), "upstream_protocol")
            }
            // The status the error object implies, which differs by vendor.
            Fault::ErrorIn200 => (None, "upstream_5xx"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upstream {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Upstream {
    const ALL: [Upstream; 3] = [Upstream::OpenAi, Upstream::Anthropic, Upstream::Gemini];

    fn name(self) -> &'static str {
        match self {
            Upstream::OpenAi => "openai",
            Upstream::Anthropic => "anthropic",
            Upstream::Gemini => "gemini",
        }
    }

    /// A provider table of this dialect at `addr`.
    fn provider(self, id: &str, addr: &str, extra: &str) -> String {
        let (kind, base) = match self {
            Upstream::OpenAi => ("openai-compatible", format!("http://{addr}/v1")),
            Upstream::Anthropic => ("anthropic-compatible", format!("http://{addr}")),
            Upstream::Gemini => ("gemini", format!("http://{addr}/v1beta")),
        };
        format!(
            "[providers.{id}]\nkind = \"{kind}\"\nbase_url = \"{base}\"\napi_key = \"env:SIM_KEY\"\nmodels = [\"sim-small\"]\n{extra}\n"
        )
    }

    /// The healthy fallback speaks another dialect, so falling back also re-renders the
    /// request for a different wire.
    fn fallback(self) -> Upstream {
        match self {
            Upstream::OpenAi => Upstream::Anthropic,
            Upstream::Anthropic => Upstream::Gemini,
            Upstream::Gemini => Upstream::OpenAi,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    OpenAi,
    Anthropic,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::OpenAi => "openai-client",
            Client::Anthropic => "anthropic-client",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    fault: Fault,
    stream: bool,
    upstream: Upstream,
    /// A route whose second candidate is healthy, or the failing model named explicitly.
    routed: bool,
    client: Client,
}

impl Cell {
    fn name(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.fault.name(),
            if self.stream { "stream" } else { "non-stream" },
            self.upstream.name(),
            if self.routed { "route" } else { "explicit" },
            self.client.name()
        )
    }
}

fn matrix() -> Vec<Cell> {
    let mut cells = Vec::new();
    for fault in Fault::ALL {
        for stream in [false, true] {
            for upstream in Upstream::ALL {
                for routed in [false, true] {
                    for client in [Client::OpenAi, Client::Anthropic] {
                        cells.push(Cell { fault, stream, upstream, routed, client });
                    }
                }
            }
        }
    }
    cells
}

/// Short timeouts for the first token and for silences mid-answer, so stalls resolve in
/// well under a second; the total stays long, as it must for long answers, so no stall is
/// cut by it.
const FAULTY_TIMEOUTS: &str =
    "connect_timeout = \"1s\"\nfirst_byte_timeout = \"500ms\"\nread_timeout = \"300ms\"\ntotal_timeout = \"30s\"";

/// A cell's gateway and upstreams, dropped (and its ledger removed) when the cell ends.
struct Rig {
    gw: LedgerGateway,
    faulty: Option<Sim>,
    /// For a refused connection: the port, bound and not listening, so no other cell's
    /// upstream can take it while this cell runs.
    _refusing: Option<tokio::net::TcpSocket>,
    healthy: Sim,
    db: std::path::PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.db.display()));
        }
    }
}

async fn rig(cell: &Cell, dir: &std::path::Path, n: usize) -> Rig {
    let faulty = match cell.fault.failure() {
        Some(failure) => Some(Sim::start(SimConfig { failure, ..SimConfig::default() }).await.unwrap()),
        None => None,
    };
    let refusing = match faulty {
        Some(_) => None,
        None => {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            Some(socket)
        }
    };
    let faulty_addr = match (&faulty, &refusing) {
        (Some(sim), _) => sim.addr().to_string(),
        (None, Some(socket)) => socket.local_addr().unwrap().to_string(),
        (None, None) => unreachable!("a cell has a faulty upstream or a refusing port"),
    };
    let healthy = Sim::start(SimConfig::default()).await.unwrap();
    // The faulty model is the cheaper, so a route tries it first.
    let toml = format!(
        "{}{}[models.\"bad/sim-small\"]\ninput = 0.5\ncached_input = 0.05\noutput = 1.0\nquality = 1400\n\
         [models.\"good/sim-small\"]\ninput = 1.0\ncached_input = 0.1\noutput = 2.0\nquality = 1400\n",
        cell.upstream.provider("bad", &faulty_addr, FAULTY_TIMEOUTS),
        cell.upstream.fallback().provider("good", &healthy.addr().to_string(), ""),
    );
    let db = dir.join(format!("cell-{n}.db"));
    let gw = gateway_with_ledger(&toml, &format!("sqlite:{}", db.display())).await;
    Rig { gw, faulty, _refusing: refusing, healthy, db }
}

/// The request a cell sends, and where.
fn request(cell: &Cell) -> (&'static str, Value) {
    let model = if cell.routed { "auto" } else { "bad/sim-small" };
    let messages = json!([{"role": "user", "content": "Say hello to the exchange."}]);
    match cell.client {
        Client::OpenAi => {
            let mut body = json!({"model": model, "messages": messages, "stream": cell.stream});
            if cell.stream {
                body["stream_options"] = json!({"include_usage": true});
            }
            ("/v1/chat/completions", body)
        }
        Client::Anthropic => {
            ("/v1/messages", json!({"model": model, "max_tokens": 256, "messages": messages, "stream": cell.stream}))
        }
    }
}

/// What came back to the client.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn events(&self) -> Vec<bourse::sse::Event> {
        bourse::sse::parse_all(self.text.as_bytes())
            .into_iter()
            .filter_map(|i| match i {
                bourse::sse::Item::Event(e) => Some(e),
                bourse::sse::Item::Comment(_) => None,
            })
            .collect()
    }
}

/// A complete answer in the client's dialect, with some text: Ok, or what is wrong with it.
fn check_served(cell: &Cell, a: &Answer) -> Result<(), String> {
    if a.status != 200 {
        return Err(format!("status {} (expected 200): {}", a.status, a.text));
    }
    if a.header("x-bourse-provider") != Some("good") {
        return Err(format!("served by {:?}, not the fallback", a.header("x-bourse-provider")));
    }
    let text = match (cell.client, cell.stream) {
        (Client::OpenAi, false) => {
            let v: Value = serde_json::from_str(&a.text).map_err(|e| format!("not JSON ({e}): {}", a.text))?;
            if v["object"] != "chat.completion" {
                return Err(format!("not a chat completion: {v}"));
            }
            v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string()
        }
        (Client::Anthropic, false) => {
            let v: Value = serde_json::from_str(&a.text).map_err(|e| format!("not JSON ({e}): {}", a.text))?;
            if v["type"] != "message" {
                return Err(format!("not a message: {v}"));
            }
            v["content"][0]["text"].as_str().unwrap_or_default().to_string()
        }
        (Client::OpenAi, true) => {
            let events = a.events();
            if events.last().map(|e| e.data.as_str()) != Some("[DONE]") {
                return Err(format!("the stream does not end with [DONE]: {}", a.text));
            }
            let mut text = String::new();
            for e in &events[..events.len() - 1] {
                let v: Value =
                    serde_json::from_str(&e.data).map_err(|err| format!("a chunk is not JSON ({err}): {}", e.data))?;
                if v.get("error").is_some() {
                    return Err(format!("an error chunk in a served stream: {}", e.data));
                }
                text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
            }
            text
        }
        (Client::Anthropic, true) => {
            let events = a.events();
            if events.last().and_then(|e| e.event.as_deref()) != Some("message_stop") {
                return Err(format!("the stream does not end with message_stop: {}", a.text));
            }
            let mut text = String::new();
            for e in &events {
                if e.event.as_deref() == Some("error") {
                    return Err(format!("an error event in a served stream: {}", e.data));
                }
                let v: Value =
                    serde_json::from_str(&e.data).map_err(|err| format!("an event is not JSON ({err}): {}", e.data))?;
                text.push_str(v["delta"]["text"].as_str().unwrap_or_default());
            }
            text
        }
    };
    if text.is_empty() {
        return Err(format!("no answer text: {}", a.text));
    }
    Ok(())
}

/// Anthropic's documented error types.
const ANTHROPIC_TYPES: &[&str] = &[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
    "billing_error",
];

/// An error object in the client's dialect (the whole body, or an event's data).
fn check_error_object(client: Client, data: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(data).map_err(|e| format!("error body not JSON ({e}): {data}"))?;
    match client {
        Client::OpenAi => {
            let e = v["error"].as_object().ok_or_else(|| format!("not an OpenAI error: {v}"))?;
            for k in ["message", "type", "param", "code"] {
                if !e.contains_key(k) {
                    return Err(format!("OpenAI error lacks '{k}': {v}"));
                }
            }
            if e["message"].as_str().is_none_or(str::is_empty) {
                return Err(format!("OpenAI error without a message: {v}"));
            }
        }
        Client::Anthropic => {
            if v["type"] != "error" {
                return Err(format!("not an Anthropic error: {v}"));
            }
            let kind = v["error"]["type"].as_str().unwrap_or_default();
            if !ANTHROPIC_TYPES.contains(&kind) {
                return Err(format!("Anthropic error type '{kind}' is not one of Anthropic's: {v}"));
            }
            if v["error"]["message"].as_str().is_none_or(str::is_empty) {
                return Err(format!("Anthropic error without a message: {v}"));
            }
        }
    }
    Ok(())
}

/// A clean error response in the client's dialect, with the status the fault calls for.
fn check_error_response(cell: &Cell, a: &Answer) -> Result<(), String> {
    let (status, _) = cell.fault.outcome();
    let want = match (cell.client, status) {
        // Anthropic's SDKs raise OverloadedError on 529: every overload is one there.
        (Client::Anthropic, Some(503 | 529)) => Some(529),
        (_, s) => s,
    };
    match want {
        Some(s) if a.status != s => return Err(format!("status {} (expected {s}): {}", a.status, a.text)),
        None if !(500..=599).contains(&a.status) => {
            return Err(format!("status {} (expected a 5xx): {}", a.status, a.text))
        }
        _ => {}
    }
    if !a.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
        return Err(format!("error content type {:?}: {}", a.header("content-type"), a.text));
    }
    check_error_object(cell.client, &a.text)?;
    if cell.fault == Fault::RateLimited && a.header("retry-after") != Some("1") {
        return Err(format!("the upstream's Retry-After is not relayed: {:?}", a.header("retry-after")));
    }
    Ok(())
}

/// A stream that broke after its first token: text relayed, then an error event in the
/// client's dialect, and no sign of a normal end.
fn check_broken_stream(cell: &Cell, a: &Answer) -> Result<(), String> {
    if a.status != 200 {
        return Err(format!("status {} (expected 200 and a stream): {}", a.status, a.text));
    }
    let events = a.events();
    let Some(last) = events.last() else { return Err(format!("no events: {}", a.text)) };
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let v: Value =
            serde_json::from_str(&e.data).map_err(|err| format!("an event is not JSON ({err}): {}", e.data))?;
        text.push_str(v["choices"][0]["delta"]["content"].as_str().or(v["delta"]["text"].as_str()).unwrap_or_default());
    }
    if text.is_empty() {
        return Err(format!("no text before the break: {}", a.text));
    }
    match cell.client {
        Client::OpenAi => {
            if events.iter().any(|e| e.data == "[DONE]") {
                return Err(format!("a broken stream ends with [DONE]: {}", a.text));
            }
        }
        Client::Anthropic => {
            if last.event.as_deref() != Some("error") {
                return Err(format!("the last event is {:?}, not an error: {}", last.event, a.text));
            }
            if events.iter().any(|e| e.event.as_deref() == Some("message_stop")) {
                return Err(format!("a broken stream has message_stop: {}", a.text));
            }
        }
    }
    check_error_object(cell.client, &last.data).map_err(|e| format!("last event: {e}"))
}

/// The cell's ledger rows, once `n` have arrived (and a moment more, to see any extra).
async fn rows(rig: &Rig, rid: &str, n: usize) -> Vec<LedgerEntry> {
    for _ in 0..150 {
        if rig.gw.ledger.rows(rid).await.unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut rows = rig.gw.ledger.rows(rid).await.unwrap();
    rows.sort_by_key(|r| r.attempt);
    rows
}

fn describe(rows: &[LedgerEntry]) -> String {
    let parts: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "#{} {} {} {:?} out={} cost={}",
                r.attempt,
                r.provider,
                r.status,
                r.error_kind,
                r.usage.output_total(),
                r.cost_nanos
            )
        })
        .collect();
    format!("[{}]", parts.join("; "))
}

async fn run(cell: Cell, dir: &std::path::Path, n: usize) -> Result<(), String> {
    let rig = rig(&cell, dir, n).await;
    let rid = format!("fault-{n}");
    let (path, body) = request(&cell);
    let resp = client()
        .post(format!("{}{path}", rig.gw.gateway.url))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-request-id", &rid)
        .body(body.to_string())
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.map_err(|e| format!("reading the answer failed: {e}"))?;
    let answer = Answer { status, headers, text };
    let (status, error_kind) = cell.fault.outcome();

    if cell.fault.after_first_token(cell.stream) {
        check_broken_stream(&cell, &answer)?;
        let rows = rows(&rig, &rid, 1).await;
        let [row] = rows.as_slice() else {
            return Err(format!("{} ledger rows (expected 1): {}", rows.len(), describe(&rows)));
        };
        if row.provider != "bad" || row.error_kind.as_deref() != Some("upstream_stream_broken") || row.status != 502 {
            return Err(format!("the broken stream's row: {}", describe(&rows)));
        }
        if row.usage.output_total() == 0 || row.cost_nanos <= 0 {
            return Err(format!("the broken stream is not metered: {}", describe(&rows)));
        }
        if rig.healthy.stats().requests != 0 {
            return Err("a stream the client already had was tried again elsewhere".into());
        }
        return Ok(());
    }

    if cell.routed {
        check_served(&cell, &answer)?;
        let rows = rows(&rig, &rid, 2).await;
        let ok = matches!(rows.as_slice(), [failed, served]
            if failed.provider == "bad" && failed.error_kind.as_deref() == Some(error_kind)
                && served.provider == "good" && served.status == 200 && served.error_kind.is_none()
                && served.usage.output_total() > 0);
        if !ok {
            return Err(format!("ledger rows (expected bad: {error_kind}, then good: 200): {}", describe(&rows)));
        }
    } else {
        check_error_response(&cell, &answer)?;
        let rows = rows(&rig, &rid, 1).await;
        let ok = matches!(rows.as_slice(), [failed]
            if failed.provider == "bad" && failed.error_kind.as_deref() == Some(error_kind)
                && status.map_or((500..=599).contains(&failed.status), |s| failed.status == s));
        if !ok {
            return Err(format!("ledger rows (expected one, bad: {error_kind}): {}", describe(&rows)));
        }
        if rig.healthy.stats().requests != 0 {
            return Err("an explicit model was tried elsewhere".into());
        }
    }
    if let Some(sim) = &rig.faulty {
        if sim.stats().requests != 1 {
            return Err(format!("the faulty upstream got {} requests (expected 1)", sim.stats().requests));
        }
    }
    Ok(())
}

/// A failure's description cut to a readable length (answers can be long).
fn clip(s: &str) -> String {
    const MAX: usize = 400;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{} […]", &s[..at]),
        None => s.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_fault_is_served_or_cleanly_refused() {
    let dir = std::env::temp_dir().join(format!("bourse-faults-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let cells = matrix();
    let total = cells.len();
    let started = std::time::Instant::now();
    let results: Vec<(Cell, Result<(), String>)> = stream::iter(cells.into_iter().enumerate().map(|(n, cell)| {
        let dir = dir.clone();
        async move { (cell, run(cell, &dir, n).await) }
    }))
    .buffer_unordered(48)
    .collect()
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut failures: Vec<String> =
        results.into_iter().filter_map(|(cell, r)| r.err().map(|e| format!("{}: {}", cell.name(), clip(&e)))).collect();
    failures.sort();
    eprintln!("{total} cells in {:.1}s, {} failing", started.elapsed().as_secs_f64(), failures.len());
    assert!(failures.is_empty(), "{} of {total} cells fail:\n{}", failures.len(), failures.join("\n"));
}
