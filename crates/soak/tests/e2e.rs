//! End to end: `soak::run` against an in-process upstream-sim (paced hold,
//! unpaced churn, injected failures) and against canned responses from a
//! tiny raw server (cost comment after `[DONE]`, a body without `[DONE]`).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use soak::{Mode, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use upstream_sim::{Failure, Sim, SimConfig, UsageStyle};

fn hold(streams: u64, addr: SocketAddr) -> Options {
    Options::new(Mode::Hold { streams, rate: 200.0, deadline: Duration::from_secs(20) }, addr, "sim-small")
}

fn errors(report: &Value) -> u64 {
    report["errors"]["total"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_paced_streams() {
    let sim =
        Sim::start(SimConfig { stamp_chunks: true, chunk_delay_ms: 20, output_tokens: 25, ..SimConfig::default() })
            .await
            .unwrap();
    let mut opts = hold(20, sim.addr());
    opts.interval_ms = 20;
    opts.sample_every = Duration::from_millis(50);
    opts.watch = vec![("me".into(), std::process::id().to_string())];
    let r = soak::run(opts).await;
    assert_eq!(errors(&r), 0, "{r:#}");
    assert_eq!((r["started"].as_u64(), r["completed"].as_u64()), (Some(20), Some(20)), "{r:#}");
    assert_eq!(r["tokens"], 500);
    assert_eq!(r["unstamped"], 0);
    assert_eq!(r["cost_comments"], 0);
    assert_eq!(r["connections"], 20);
    assert!(r["max_open"].as_u64().unwrap() >= 10, "{r:#}");
    assert_eq!(r["ttft_ms"]["count"], 20);
    assert_eq!(r["transit_ms"]["count"], 500);
    // Loose bounds: these check the wiring, and the machine may be busy.
    assert!(r["transit_ms"]["p50"].as_f64().unwrap() < 100.0, "{r:#}");
    assert_eq!(r["gap_minus_interval_ms"]["count"], 480);
    let gap = r["gap_minus_interval_ms"]["p50"].as_f64().unwrap();
    assert!((-2.0..50.0).contains(&gap), "{r:#}");
    // 20 streams x one token per 20 ms while all are open.
    let rate = r["plateau_events_per_s"].as_f64().unwrap();
    assert!((300.0..1100.0).contains(&rate), "{r:#}");
    let me = &r["proc"]["me"];
    assert!(me["samples"].as_u64().unwrap() >= 3 && me["rss_plateau_kb"].as_u64().unwrap() > 0, "{me:#}");
    assert!(r["proc"]["soak"]["hwm_kb"].as_u64().unwrap() > 0);
    assert_eq!(sim.stats().completed_streams, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_short_streams_on_keep_alive() {
    let sim = Sim::start(SimConfig { output_tokens: 4, usage_style: UsageStyle::Omitted, ..SimConfig::default() })
        .await
        .unwrap();
    let mode = Mode::Churn { workers: 4, duration: Duration::from_secs(1), request_timeout: Duration::from_secs(5) };
    let mut opts = Options::new(mode, sim.addr(), "sim-small");
    opts.include_usage = false;
    let r = soak::run(opts).await;
    assert_eq!(errors(&r), 0, "{r:#}");
    let completed = r["completed"].as_u64().unwrap();
    assert!(completed > 20, "{r:#}");
    assert_eq!(r["started"].as_u64(), Some(completed));
    assert_eq!(r["tokens"].as_u64(), Some(completed * 4));
    assert_eq!(r["unstamped"].as_u64(), Some(completed * 4));
    assert_eq!(r["connections"].as_u64().unwrap(), 4 + r["stale_retries"].as_u64().unwrap(), "{r:#}");
    assert_eq!(r["ttft_ms"]["count"].as_u64(), Some(completed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_by_kind() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let cases = [
        (Failure::Status { status: 503, retry_after: None, error_type: None, code: None, message: None }, "status"),
        (Failure::DropMidStream { after_chunks: 2 }, "broken_body"),
        (Failure::Close, "broken_head"),
    ];
    for (failure, kind) in cases {
        sim.set_config(SimConfig { failure, ..SimConfig::default() });
        let r = soak::run(hold(3, sim.addr())).await;
        assert_eq!(r["completed"], 0, "{r:#}");
        assert_eq!(errors(&r), 3, "{r:#}");
        match kind {
            "status" => assert_eq!(r["errors"]["status"]["503"], 3),
            _ => assert_eq!(r["errors"][kind], 3, "{r:#}"),
        }
    }

    // A stall outlives the deadline.
    sim.set_config(SimConfig { failure: Failure::Stall, ..SimConfig::default() });
    let mut opts = hold(2, sim.addr());
    opts.mode = Mode::Hold { streams: 2, rate: 0.0, deadline: Duration::from_millis(300) };
    let r = soak::run(opts).await;
    assert_eq!(r["errors"]["timeout"], 2, "{r:#}");

    // Nothing listening.
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let r = soak::run(hold(2, port)).await;
    assert_eq!(r["errors"]["connect"], 2, "{r:#}");
    assert!(r["errors"]["first_connect_error"].is_string());
}

/// Serves `response` (written in `pieces`, 5 ms apart) to every connection.
async fn canned(response: &'static [u8], pieces: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let mut got = Vec::new();
                // The request: its head, then Content-Length bytes.
                loop {
                    let n = tcp.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let step = response.len().div_ceil(pieces);
                for piece in response.chunks(step) {
                    tcp.write_all(piece).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn cost_comment_and_missing_done() {
    let chunked: &'static [u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
        1c\r\ndata: {\"choices\":[{\"delta\":{\r\n1a\r\n\"content\":\"hi\"}}]}\n\ndata: \r\n\
        2d\r\n{\"choices\":[{\"delta\":{\"content\":\"there\"}}]}\n\n\r\n\
        e\r\ndata: [DONE]\n\n\r\n\
        2f\r\n: x-bourse-cost-usd=0.000001 x-bourse-saved=0\n\n\r\n0\r\n\r\n";
    for pieces in [1, 3, 17] {
        let r = soak::run(hold(2, canned(chunked, pieces).await)).await;
        assert_eq!(errors(&r), 0, "{r:#}");
        assert_eq!((r["completed"].as_u64(), r["cost_comments"].as_u64()), (Some(2), Some(2)), "{r:#}");
        assert_eq!(r["tokens"], 4, "{r:#}");
    }

    let no_done: &'static [u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 47\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
    let r = soak::run(hold(2, canned(no_done, 2).await)).await;
    assert_eq!(r["errors"]["no_done"], 2, "{r:#}");
    assert_eq!(r["tokens"], 2);
}
