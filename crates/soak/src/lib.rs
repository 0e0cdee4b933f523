//! `soak`: an open-stream load generator for SSE chat completions, used by
//! `bench/soak.sh` to measure how a gateway holds thousands of long-lived,
//! paced streams (against the bare pass-through proxy and the upstream itself).
//!
//! It speaks HTTP/1.1 over raw tokio TCP (one request written as one buffer,
//! the response head parsed with `httparse`, chunked and `Content-Length`
//! bodies decoded incrementally) and splits the body into SSE events. For each
//! content event it records the arrival time and upstream-sim's `sim_sent_us`
//! send stamp, giving time to first token, per-token transit time and the gap
//! between tokens. Two modes:
//!
//! - [`Mode::Hold`]: open N streams, ramped at a rate, one request each, and
//!   hold them all until they finish (or a deadline passes);
//! - [`Mode::Churn`]: C workers send streaming requests back to back on
//!   keep-alive connections for a duration.
//!
//! [`run`] returns one JSON object with the counts, errors by kind,
//! percentiles and `/proc` samples of the watched processes.

pub mod chunked;
pub mod exchange;
pub mod hist;
pub mod http;
pub mod procfs;
pub mod sse;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::task::JoinSet;

use exchange::{connect, exchange, lock, Ended, Failure, Plan, Recorder};
use hist::{Histogram, SignedHistogram};
use procfs::Watch;

/// What to run.
#[derive(Debug, Clone)]
pub enum Mode {
    /// `streams` streams, started at `rate` per second, each one request on
    /// its own connection; whatever is still open at `deadline` (from the start)
    /// counts as a timeout.
    Hold { streams: u64, rate: f64, deadline: Duration },
    /// `workers` connections sending requests back to back for `duration`; a
    /// request unanswered after `request_timeout` counts as a timeout.
    Churn { workers: u64, duration: Duration, request_timeout: Duration },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub addr: SocketAddr,
    pub path: String,
    pub model: String,
    pub prompt: String,
    /// Ask for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    pub max_tokens: Option<u32>,
    /// The upstream's pacing between tokens, subtracted from the measured gaps.
    pub interval_ms: u64,
    /// A progress line on stderr this often; `None`: quiet.
    pub progress: Option<Duration>,
    /// `/proc` sampling period.
    pub sample_every: Duration,
    /// Processes to sample: (name, pid). The generator itself is always sampled as "soak".
    pub watch: Vec<(String, String)>,
    /// `getconf CLK_TCK`, for the CPU times read from `/proc`.
    pub clk_tck: u64,
}

impl Options {
    /// Defaults for everything but the mode and the target.
    pub fn new(mode: Mode, addr: SocketAddr, model: &str) -> Options {
        Options {
            mode,
            addr,
            path: "/v1/chat/completions".to_owned(),
            model: model.to_owned(),
            prompt: "Say hello in one short sentence.".to_owned(),
            include_usage: true,
            max_tokens: None,
            interval_ms: 0,
            progress: None,
            sample_every: Duration::from_millis(500),
            watch: Vec::new(),
            clk_tck: 100,
        }
    }
}

struct Shared {
    plan: Plan,
    rec: Mutex<Recorder>,
}

/// Runs the load and returns the report.
pub async fn run(opts: Options) -> Value {
    let body = http::chat_body(&opts.model, &opts.prompt, opts.include_usage, opts.max_tokens);
    let request = http::post_request(&opts.addr.to_string(), &opts.path, &body);
    let rec = Recorder { interval_us: opts.interval_ms * 1000, ..Recorder::default() };
    let shared = Arc::new(Shared { plan: Plan { addr: opts.addr, request }, rec: Mutex::new(rec) });

    let start = Instant::now();
    let mut watches = vec![Watch::new("soak", "self")];
    watches.extend(opts.watch.iter().map(|(name, pid)| Watch::new(name, pid)));
    for w in &mut watches {
        w.sample(0.0, 0);
    }
    lock(&shared.rec).sample_load(0.0);
    let watches = Arc::new(Mutex::new(watches));
    let sampler = tokio::spawn(sample_loop(shared.clone(), watches.clone(), start, opts.sample_every));
    let progress =
        opts.progress.map(|every| tokio::spawn(progress_loop(shared.clone(), start, every, opts.mode.clone())));

    let load_start = Instant::now();
    match opts.mode {
        Mode::Hold { streams, rate, deadline } => hold(&shared, streams, rate, load_start + deadline).await,
        Mode::Churn { workers, duration, request_timeout } => {
            churn(&shared, workers, load_start + duration, request_timeout).await
        }
    }
    let wall = load_start.elapsed().as_secs_f64();

    sampler.abort();
    if let Some(p) = progress {
        p.abort();
    }
    let mut watches = watches.lock().unwrap_or_else(|e| e.into_inner());
    let t = start.elapsed().as_secs_f64();
    let open = {
        let mut rec = lock(&shared.rec);
        rec.sample_load(t);
        rec.open
    };
    let mut procs = Map::new();
    for w in watches.iter_mut() {
        w.sample(t, open);
        procs.insert(w.name.clone(), w.summary(opts.clk_tck));
    }
    let rec = lock(&shared.rec);
    report(&opts, &rec, wall, Value::Object(procs))
}

async fn hold(shared: &Arc<Shared>, streams: u64, rate: f64, deadline: Instant) {
    let period = if rate > 0.0 { Duration::from_secs_f64(1.0 / rate) } else { Duration::ZERO };
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..streams {
        let at = start + period.mul_f64(i as f64);
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        set.spawn(hold_one(shared.clone(), deadline));
    }
    while set.join_next().await.is_some() {}
}

async fn hold_one(shared: Arc<Shared>, deadline: Instant) {
    let deadline = tokio::time::Instant::from(deadline);
    let mut tcp = match tokio::time::timeout_at(deadline, connect(shared.plan.addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return connect_failed(&shared, &e),
        Err(_) => return lock(&shared.rec).errors.add(Failure::Timeout),
    };
    {
        let mut rec = lock(&shared.rec);
        rec.connections += 1;
        rec.opened();
    }
    let ended = tokio::time::timeout_at(deadline, exchange(&mut tcp, &shared.plan, &shared.rec, false))
        .await
        .unwrap_or(Ended::Failed { failure: Failure::Timeout, reusable: false });
    let mut rec = lock(&shared.rec);
    rec.open -= 1;
    rec.settle(ended);
}

fn connect_failed(shared: &Shared, e: &std::io::Error) {
    let mut rec = lock(&shared.rec);
    rec.errors.add(Failure::Connect);
    if rec.first_connect_error.is_none() {
        rec.first_connect_error = Some(e.to_string());
    }
}

async fn churn(shared: &Arc<Shared>, workers: u64, end: Instant, request_timeout: Duration) {
    let mut set = JoinSet::new();
    for _ in 0..workers {
        set.spawn(churn_worker(shared.clone(), end, request_timeout));
    }
    while set.join_next().await.is_some() {}
}

async fn churn_worker(shared: Arc<Shared>, end: Instant, request_timeout: Duration) {
    let mut conn = None;
    while Instant::now() < end {
        let (mut tcp, reused) = match conn.take() {
            Some(tcp) => (tcp, true),
            None => match tokio::time::timeout(request_timeout, connect(shared.plan.addr)).await {
                Ok(Ok(tcp)) => {
                    lock(&shared.rec).connections += 1;
                    (tcp, false)
                }
                Ok(Err(e)) => {
                    connect_failed(&shared, &e);
                    // Do not spin on a refusing port.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    lock(&shared.rec).errors.add(Failure::Timeout);
                    continue;
                }
            },
        };
        lock(&shared.rec).opened();
        let ended = tokio::time::timeout(request_timeout, exchange(&mut tcp, &shared.plan, &shared.rec, reused))
            .await
            .unwrap_or(Ended::Failed { failure: Failure::Timeout, reusable: false });
        {
            let mut rec = lock(&shared.rec);
            rec.open -= 1;
            rec.settle(ended);
        }
        if let Ended::Done { reusable: true, .. } | Ended::Failed { reusable: true, .. } = ended {
            conn = Some(tcp);
        }
    }
}

async fn sample_loop(shared: Arc<Shared>, watches: Arc<Mutex<Vec<Watch>>>, start: Instant, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        let open = {
            let mut rec = lock(&shared.rec);
            rec.sample_load(t);
            rec.open
        };
        for w in watches.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
            w.sample(t, open);
        }
    }
}

async fn progress_loop(shared: Arc<Shared>, start: Instant, every: Duration, mode: Mode) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut last = (Instant::now(), 0u64);
    let goal = match mode {
        Mode::Hold { streams, .. } => format!("/{streams}"),
        Mode::Churn { .. } => String::new(),
    };
    loop {
        tick.tick().await;
        let (open, started, completed, errors, tokens) = {
            let r = lock(&shared.rec);
            (r.open, r.started, r.completed, r.errors.total(), r.tokens)
        };
        let now = Instant::now();
        let rate = (tokens - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
        last = (now, tokens);
        eprintln!(
            "[soak] {:6.1}s open {open}{goal} started {started} completed {completed} errors {errors} tokens {tokens} \
             events/s {rate:.0}",
            start.elapsed().as_secs_f64()
        );
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn quantiles(h: &Histogram, qs: &[(&str, f64)]) -> Value {
    let mut m = Map::new();
    m.insert("count".into(), json!(h.count()));
    for (name, q) in qs {
        m.insert((*name).into(), json!(h.quantile(*q).map(ms)));
    }
    m.insert("max".into(), json!(h.max().map(ms)));
    m.insert("mean".into(), json!(h.mean().map(|v| v / 1000.0)));
    Value::Object(m)
}

fn signed_quantiles(h: &SignedHistogram, qs: &[(&str, f64)]) -> Value {
    let ms = |us: i64| us as f64 / 1000.0;
    let mut m = Map::new();
    m.insert("count".into(), json!(h.count()));
    for (name, q) in qs {
        m.insert((*name).into(), json!(h.quantile(*q).map(ms)));
    }
    m.insert("max".into(), json!(h.max().map(ms)));
    m.insert("mean".into(), json!(h.mean().map(|v| v / 1000.0)));
    Value::Object(m)
}

fn report(opts: &Options, rec: &Recorder, wall: f64, procs: Value) -> Value {
    let mode = match &opts.mode {
        Mode::Hold { streams, rate, deadline } => {
            json!({"mode": "hold", "streams": streams, "ramp_per_s": rate, "deadline_s": deadline.as_secs_f64()})
        }
        Mode::Churn { workers, duration, request_timeout } => json!({
            "mode": "churn", "workers": workers, "seconds": duration.as_secs_f64(),
            "request_timeout_s": request_timeout.as_secs_f64(),
        }),
    };
    let e = &rec.errors;
    let status: Map<String, Value> = e.status.iter().map(|(s, n)| (s.to_string(), json!(n))).collect();
    let mut out = json!({
        "target": opts.addr.to_string(),
        "path": opts.path,
        "model": opts.model,
        "include_usage": opts.include_usage,
        "interval_ms": opts.interval_ms,
        "wall_s": wall,
        "started": rec.started,
        "completed": rec.completed,
        "cost_comments": rec.cost_comments,
        "max_open": rec.max_open,
        "connections": rec.connections,
        "stale_retries": rec.stale_retries,
        "errors": {
            "total": e.total(),
            "connect": e.connect,
            "status": status,
            "broken_head": e.broken_head,
            "broken_body": e.broken_body,
            "timeout": e.timeout,
            "no_done": e.no_done,
            "first_connect_error": rec.first_connect_error,
        },
        "tokens": rec.tokens,
        "events_per_s": rec.tokens as f64 / wall.max(1e-9),
        "plateau_events_per_s": rec.plateau_rate(),
        // [seconds, open streams, tokens so far] at each /proc sample.
        "load_series": rec.load.iter().map(|(t, open, tokens)| json!([(t * 10.0).round() / 10.0, open, tokens])).collect::<Vec<_>>(),
        "unstamped": rec.unstamped,
        "transit_negative": rec.transit_negative,
        "ttft_ms": quantiles(&rec.ttft, &[("p50", 0.5), ("p99", 0.99)]),
        "transit_ms": quantiles(&rec.transit, &[("p50", 0.5), ("p99", 0.99), ("p999", 0.999)]),
        "gap_minus_interval_ms": signed_quantiles(&rec.gap, &[("p50", 0.5), ("p99", 0.99)]),
        "proc": procs,
    });
    if let (Value::Object(out), Value::Object(mode)) = (&mut out, mode) {
        out.extend(mode);
    }
    out
}
