//! SIGTERM under load, through the real `bourse serve` binary, on both stores (`sqlite::*`
//! and `postgres::*`, as in `ledger.rs`): what the gateway promises on a graceful stop.
//!
//! - Every request a client got an answer for has its ledger rows, one per upstream attempt
//!   (fallbacks included), and the ledger holds exactly as many rows as the upstreams saw
//!   attempts: nothing lost in the writer's queue, nothing counted twice.
//! - Streams open at the signal run to their proper last event (`[DONE]` and the cost
//!   comment; Anthropic's `message_stop`) within `server.shutdown_grace`.
//! - New connections are refused from the signal on, while those streams still run.
//! - The process exits 0 within the grace period.
//! - A stream that outlasts the grace period is cut at its end, and still metered.

mod common;
#[path = "common/pg.rs"]
mod pg;

use common::bin::{self, Served};
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generates `sqlite::$name` and `postgres::$name` for each shared test `$name(url)`.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = std::env::temp_dir().join(format!(
                        "bourse-shutdown-{}-{}-{}.db",
                        stringify!($name),
                        std::process::id(),
                        fastrand::u64(..)
                    ));
                    super::$name(&format!("sqlite:{}", db.display())).await;
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::pg::Database::create(stringify!($name)).await;
                    super::$name(&db.url).await;
                    db.drop().await;
                }
            )*
        }
    };
}

both_stores!(
    sigterm_under_load_loses_no_row_and_cuts_no_stream,
    sigterm_cuts_a_stream_at_the_grace_period_and_meters_it
);

/// The grace period of the load test: far longer than any of its requests, so a stream that
/// does not finish was cut by the gateway, not by the deadline.
const GRACE: Duration = Duration::from_secs(10);

/// Tokens per streamed answer, one chunk every 40 ms after 100 ms: a stream lasts ~1.1 s.
const TOKENS: u32 = 25;

/// The requests of the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// OpenAI, not streamed, `steady/sim-small`: one attempt.
    Plain,
    /// OpenAI, not streamed, the route: `flaky` (when tried) answers 503, then `steady`.
    Routed,
    /// OpenAI, streamed, `steady/sim-small`.
    Stream,
    /// OpenAI, streamed, the route: the 503 comes before the stream starts, so it falls back.
    RoutedStream,
    /// Anthropic Messages, streamed, `steady/sim-small` (translated from OpenAI's stream).
    AnthropicStream,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Plain, Kind::Routed, Kind::Stream, Kind::RoutedStream, Kind::AnthropicStream];

    fn routed(self) -> bool {
        matches!(self, Kind::Routed | Kind::RoutedStream)
    }

    fn streamed(self) -> bool {
        !matches!(self, Kind::Plain | Kind::Routed)
    }
}

/// What became of one request, as its client saw it.
#[derive(Debug)]
struct Outcome {
    id: String,
    kind: Kind,
    /// Sent after the signal.
    late: bool,
    /// The status line, if an answer came.
    status: Option<u16>,
    /// The whole answer arrived and ended as its kind must end.
    whole: bool,
    detail: String,
}

/// `[server]`, `[storage]`, two providers in front of two sims, and a route over both:
/// `flaky` is cheaper, so tried first while the planner expects it to answer, and its circuit
/// never opens.
fn config(flaky: &Sim, steady: &Sim, storage: &str, grace: Duration) -> String {
    let provider = |id: &str, sim: &Sim| {
        format!(
            "[providers.{id}]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nmodels = [\"sim-small\"]\n",
            sim.base_url()
        )
    };
    format!(
        "[server]\nshutdown_grace = \"{}ms\"\n[storage]\nurl = \"{storage}\"\n\
         [router]\nfailure_threshold = 1000000\n[routes.pair]\n{}{}{}quality = 1400\n{}quality = 1400\n",
        grace.as_millis(),
        provider("flaky", flaky),
        provider("steady", steady),
        price("flaky/sim-small", 0.1, 0.2),
        price("steady/sim-small", 1.0, 2.0),
    )
}

async fn start(flaky: &Sim, steady: &Sim, storage: &str, grace: Duration) -> (Served, tempfile::Path) {
    let cfg = tempfile::Path::new(&config(flaky, steady, storage, grace));
    let served = bin::serve(
        bin::command()
            .env("RUST_LOG", "bourse=info")
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg.0),
    )
    .await;
    (served, cfg)
}

/// Sends one request of `kind` with request id `id` and reads its answer to the end.
async fn send(
    http: &reqwest::Client,
    url: &str,
    kind: Kind,
    id: &str,
    open: &AtomicUsize,
) -> (Option<u16>, bool, String) {
    let (path, body) = match kind {
        Kind::Plain => ("/v1/chat/completions", chat_body("steady/sim-small")),
        Kind::Routed => ("/v1/chat/completions", chat_body("pair")),
        Kind::Stream => ("/v1/chat/completions", streamed(chat_body("steady/sim-small"))),
        Kind::RoutedStream => ("/v1/chat/completions", streamed(chat_body("pair"))),
        Kind::AnthropicStream => (
            "/v1/messages",
            json!({"model": "steady/sim-small", "max_tokens": 100, "stream": true,
                   "messages": [{"role": "user", "content": "Say hello to the exchange."}]}),
        ),
    };
    let resp = http
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-request-id", id)
        .body(body.to_string())
        .send()
        .await;
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) => return (None, false, format!("no answer: {e}")),
    };
    let status = resp.status().as_u16();
    if kind.streamed() {
        open.fetch_add(1, Ordering::SeqCst);
    }
    let mut bytes = Vec::new();
    let read = loop {
        match resp.chunk().await {
            Ok(Some(c)) => bytes.extend_from_slice(&c),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if kind.streamed() {
        open.fetch_sub(1, Ordering::SeqCst);
    }
    let text = String::from_utf8_lossy(&bytes).to_string();
    if let Err(e) = read {
        return (Some(status), false, format!("cut: {e}; {text}"));
    }
    let whole = status == 200
        && match kind {
            Kind::Plain | Kind::Routed => serde_json::from_str::<serde_json::Value>(&text)
                .is_ok_and(|v| v["choices"][0]["message"]["content"].is_string()),
            Kind::Stream | Kind::RoutedStream => stream_is_whole_openai(&text),
            Kind::AnthropicStream => stream_is_whole_anthropic(&text),
        };
    (Some(status), whole, text)
}

fn streamed(mut body: serde_json::Value) -> serde_json::Value {
    body["stream"] = json!(true);
    body
}

/// Every token, `[DONE]`, then the cost comment, and no error event.
fn stream_is_whole_openai(text: &str) -> bool {
    let data = sse_data(text);
    let tokens = data.iter().filter(|d| d.contains("\"content\":\"") && !d.contains("\"content\":\"\"")).count();
    data.last().map(String::as_str) == Some("[DONE]")
        && tokens == TOKENS as usize
        && !data.iter().any(|d| d.contains("\"error\""))
        && text.split("data: [DONE]").nth(1).is_some_and(|rest| rest.contains(": x-bourse-cost-usd="))
}

/// Every token and `message_stop` last, and no error event.
fn stream_is_whole_anthropic(text: &str) -> bool {
    let data = sse_data(text);
    let tokens = data.iter().filter(|d| d.contains("\"text_delta\"")).count();
    data.last().is_some_and(|d| d.contains("\"type\":\"message_stop\""))
        && tokens == TOKENS as usize
        && !data.iter().any(|d| d.contains("\"type\":\"error\""))
}

/// Ten clients send a mix of all five kinds back to back; SIGTERM lands while streams are
/// open. Then: the answers, the refusal of a new connection, the exit, and the ledger
/// against both the answers and the upstreams' own counts of attempts.
async fn sigterm_under_load_loses_no_row_and_cuts_no_stream(storage: &str) {
    let flaky = Sim::start(SimConfig {
        failure: Failure::Status { status: 503, retry_after: None, error_type: None, code: None, message: None },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let steady =
        Sim::start(SimConfig { ttft_ms: 100, chunk_delay_ms: 40, output_tokens: TOKENS, ..SimConfig::default() })
            .await
            .unwrap();
    let (mut gw, _cfg) = start(&flaky, &steady, storage, GRACE).await;
    let addr = gw.url.trim_start_matches("http://").to_string();

    let open = Arc::new(AtomicUsize::new(0));
    let signalled: Arc<Mutex<Option<Instant>>> = Arc::default();
    let clients: Vec<_> = (0..10)
        .map(|c| {
            let (url, open, signalled) = (gw.url.clone(), open.clone(), signalled.clone());
            tokio::spawn(async move {
                let http = client();
                let mut outcomes = Vec::new();
                let started = Instant::now();
                for n in 0.. {
                    let kind = Kind::ALL[(c + n) % Kind::ALL.len()];
                    let id = format!("c{c}-n{n}");
                    let sent = Instant::now();
                    let (status, whole, detail) = send(&http, &url, kind, &id, &open).await;
                    let late = signalled.lock().unwrap().is_some_and(|s| sent >= s);
                    let answered = status.is_some();
                    outcomes.push(Outcome { id, kind, late, status, whole, detail });
                    // After the signal the gateway takes no new request: stop at the first
                    // one that gets no answer (or after a minute, should it never come).
                    if (!answered && late) || started.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                }
                outcomes
            })
        })
        .collect();

    // Load for a while: answers have been written by the writer, others wait in its queue.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1_500) || open.load(Ordering::SeqCst) < 4 {
        assert!(t.elapsed() < Duration::from_secs(20), "streams never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at = Instant::now();
    *signalled.lock().unwrap() = Some(at);
    let open_at_signal = open.load(Ordering::SeqCst);
    gw.process.signal("TERM");
    gw.process.output.wait_for("shutting down", Duration::from_secs(5)).await.expect("the gateway saw the signal");
    let refused = tokio::net::TcpStream::connect(&addr).await;
    let streaming = open.load(Ordering::SeqCst);
    assert!(
        refused.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "a new connection after the signal: {refused:?}"
    );
    assert!(streaming > 0, "the refusal must come while streams are still open");

    let status = tokio::time::timeout(GRACE + Duration::from_secs(10), gw.process.child.wait())
        .await
        .expect("the gateway exits")
        .unwrap();
    let took = at.elapsed();
    let log = gw.process.output.lines().join("\n");
    assert!(status.success(), "{status:?}\n{log}");
    assert!(took < GRACE, "exited {took:?} after the signal; the grace period is {GRACE:?}\n{log}");
    assert!(!log.contains("shutdown deadline reached"), "no request should have needed the deadline:\n{log}");

    let mut outcomes = Vec::new();
    for c in clients {
        outcomes.extend(c.await.unwrap());
    }
    let answered: Vec<&Outcome> = outcomes.iter().filter(|o| o.status.is_some()).collect();
    for o in &answered {
        assert!(o.whole, "{} ({:?}{}) was answered but not whole: {}", o.id, o.kind, late(o), o.detail);
    }
    for o in outcomes.iter().filter(|o| o.status.is_none()) {
        assert!(o.late, "{} ({:?}) got no answer before the signal: {}", o.id, o.kind, o.detail);
    }
    assert!(answered.len() >= 20, "only {} answers", answered.len());

    // The ledger: each answered request's attempts, in order, the last one the answer.
    let ledger = bourse::ledger::Ledger::open(storage).await.unwrap();
    let (mut rows, mut fallbacks) = (0, 0);
    for o in &outcomes {
        let got = ledger.rows(&o.id).await.unwrap();
        rows += got.len();
        if o.status.is_none() {
            continue;
        }
        let summary: Vec<_> = got.iter().map(|r| (r.attempt, r.provider.as_str(), r.status)).collect();
        // The planner may skip `flaky` once it has seen it fail; when it tries it, the 503
        // is the first attempt's row.
        let mut want = match (o.kind.routed(), summary.len()) {
            (true, 2) => vec![(1, "flaky", 503)],
            _ => vec![],
        };
        want.push((want.len() as u32 + 1, "steady", 200));
        assert_eq!(summary, want, "{} ({:?}{}): its ledger rows", o.id, o.kind, late(o));
        fallbacks += usize::from(summary.len() == 2);
        let last = got.last().unwrap();
        assert!(last.usage.output > 0 && last.cost_nanos > 0, "{} is metered: {last:?}", o.id);
    }
    let stored = ledger.count().await.unwrap() as usize;
    let attempts = (flaky.stats().requests + steady.stats().requests) as usize;
    eprintln!(
        "{}: {} requests answered ({open_at_signal} streams open at the signal, {streaming} still open when a \
         new connection was refused), {} unanswered after it; exit {took:?} after SIGTERM; \
         {stored} ledger rows for {attempts} upstream attempts ({fallbacks} fallbacks)",
        storage.split(':').next().unwrap_or_default(),
        answered.len(),
        outcomes.len() - answered.len(),
    );
    assert!(fallbacks > 0, "some routed requests fell back from flaky to steady");
    assert_eq!(rows, stored, "every row belongs to a request the clients sent");
    assert_eq!(stored, attempts, "one ledger row per upstream attempt");
    assert_eq!(steady.stats().cancelled_streams, 0, "no upstream stream was cancelled");
}

fn late(o: &Outcome) -> &'static str {
    if o.late {
        ", sent after the signal"
    } else {
        ""
    }
}

/// A stream longer than the grace period: at the deadline the gateway ends it (the client
/// sees the stream break off, not a proper end), its upstream request is cancelled, its
/// attempt still gets its ledger row — `shutdown_deadline`, not the client's doing — and the
/// process exits 0 soon after the deadline (the ledger's flush comes after it).
async fn sigterm_cuts_a_stream_at_the_grace_period_and_meters_it(storage: &str) {
    let grace = Duration::from_secs(1);
    let flaky = Sim::start(SimConfig::default()).await.unwrap();
    // 100 tokens at 50 ms: 5 s, well past the grace period.
    let steady =
        Sim::start(SimConfig { chunk_delay_ms: 50, output_tokens: 100, ..SimConfig::default() }).await.unwrap();
    let (mut gw, _cfg) = start(&flaky, &steady, storage, grace).await;
    let open = AtomicUsize::new(0);
    let http = client();
    let stream = send(&http, &gw.url, Kind::Stream, "long", &open);
    let signal = async {
        while open.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        gw.process.signal("TERM");
        Instant::now()
    };
    let ((status, whole, text), at) = tokio::join!(stream, signal);
    let cut_after = at.elapsed();
    assert_eq!(status, Some(200));
    assert!(!whole, "the stream cannot have finished: {text}");
    let exit = tokio::time::timeout(Duration::from_secs(15), gw.process.child.wait()).await.unwrap().unwrap();
    let took = at.elapsed();
    let log = gw.process.output.lines().join("\n");
    assert!(exit.success(), "{exit:?}\n{log}");
    assert!(log.contains("shutdown deadline reached"), "the deadline is logged:\n{log}");
    // The stream ends at the deadline, and the process a little after it (the ledger's flush).
    assert!(cut_after >= grace.mul_f32(0.9), "cut {cut_after:?} after the signal, before the deadline");
    assert!(took < grace + Duration::from_secs(3), "exited {took:?} after the signal (grace {grace:?})\n{log}");
    assert!(eventually(|| steady.stats().cancelled_streams == 1).await, "the upstream stream was cancelled");

    let ledger = bourse::ledger::Ledger::open(storage).await.unwrap();
    let rows = ledger.rows("long").await.unwrap();
    assert_eq!(rows.len(), 1, "the cut stream's attempt has its row: {rows:?}\n{log}");
    let row = &rows[0];
    assert_eq!((row.status, row.error_kind.as_deref()), (503, Some("shutdown_deadline")), "{row:?}");
    assert!(row.stream && row.latency_ms >= 1_000, "{row:?}");
    assert_eq!(ledger.count().await.unwrap(), 1);
}

/// A config file removed on drop.
mod tempfile {
    pub struct Path(pub std::path::PathBuf);
    impl Path {
        pub fn new(text: &str) -> Self {
            let p = std::env::temp_dir().join(format!("bourse-test-{}-{}.toml", std::process::id(), fastrand::u64(..)));
            std::fs::write(&p, text).unwrap();
            Path(p)
        }
    }
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
