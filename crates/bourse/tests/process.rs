//! The real `bourse` binary: start-up checks, signals, and environment handling.

mod common;

use common::*;
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// `bourse` as `common::bin::command` starts it, logging at info, its stderr read by the test.
fn bourse() -> Command {
    let mut c = common::bin::command();
    c.env("RUST_LOG", "bourse=info").stdout(Stdio::null());
    c
}

fn write_config(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::new(text)
}

/// A config with `head` (server and storage tables) and one priced provider, `alpha`, in
/// front of `sim`.
fn sim_config(head: &str, sim: &Sim) -> tempfile_path::TempPath {
    write_config(&format!(
        "{head}\n[providers.alpha]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\n{}",
        sim.base_url(),
        price("alpha/sim-small", 1.0, 2.0)
    ))
}

/// A tiny temp-file helper (no extra crate): removed on drop.
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn new(text: &str) -> Self {
            let p = std::env::temp_dir().join(format!("bourse-test-{}-{}.toml", std::process::id(), fastrand::u64(..)));
            std::fs::write(&p, text).unwrap();
            TempPath(p)
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Start `bourse serve` and wait for its "listening" line; returns the child and base URL.
async fn serve(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find("listening on http://") {
                let rest = &line[at + "listening on ".len()..];
                return rest.split_whitespace().next().unwrap_or_default().to_string();
            }
        }
        panic!("bourse exited before listening");
    })
    .await
    .expect("bourse did not start");
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

#[tokio::test]
async fn help_lists_the_commands() {
    let out = bourse().arg("--help").stdout(Stdio::piped()).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("serve") && text.contains("check"), "{text}");
}

#[tokio::test]
async fn config_errors_fail_at_startup_naming_the_path() {
    let cfg = write_config("[providers.deepseek]\nkind = \"deepseek\"\napi_key = \"env:BOURSE_TEST_UNSET_KEY\"\n");
    let out = bourse().args(["serve", "--config"]).arg(&cfg.0).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("providers.deepseek.api_key") && err.contains("BOURSE_TEST_UNSET_KEY"), "{err}");
}

#[tokio::test]
async fn refuses_non_loopback_without_keys_unless_told() {
    let out = bourse().args(["serve", "--listen", "0.0.0.0:0"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-no-auth"));
    let (mut child, _) = serve(bourse().args(["serve", "--listen", "0.0.0.0:0", "--insecure-no-auth"])).await;
    child.kill().await.unwrap();
}

#[tokio::test]
async fn zero_config_enables_presets_from_key_variables() {
    let cfg = bourse()
        .args(["check"])
        .env("DEEPSEEK_API_KEY", "sk-x")
        .env("MISTRAL_API_KEY", "m")
        .stdout(Stdio::piped())
        .output();
    let out = cfg.await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("deepseek") && text.contains("https://api.deepseek.com") && text.contains("mistral"),
        "{text}"
    );
    assert!(!text.contains("sk-x"), "keys are never printed");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_streams_then_exits() {
    let sim = Sim::start(SimConfig { output_tokens: 30, chunk_delay_ms: 20, ..SimConfig::default() }).await.unwrap();
    let cfg = sim_config("[server]\nshutdown_grace = \"20s\"\n[storage]\nledger = false", &sim);
    let (mut child, url) = serve(bourse().args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&cfg.0)).await;
    let mut body = chat_body("alpha/sim-small");
    body["stream"] = json!(true);
    let mut resp = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let mut text = String::from_utf8(resp.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    let pid = child.id().unwrap();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    while let Some(c) = resp.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&c));
    }
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "stream cut short: {text}");
    assert_eq!(data.iter().filter(|d| d.contains("\"content\":\"")).count(), 31, "every token arrived: {text}");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    // And it no longer accepts connections.
    assert!(client().get(format!("{url}/healthz")).send().await.is_err());
}

/// One chat request through a gateway whose only provider is at `base` and whose
/// environment sets `var` (a proxy variable) to `proxy`; returns the status and body.
async fn chat_via_proxy(base: &str, var: &str, proxy: String) -> (u16, String) {
    let cfg = write_config(&format!(
        "[storage]\nledger = false\n[providers.far]\nkind = \"openai-compatible\"\nbase_url = \"{base}\"\n{}",
        price("far/m", 1.0, 1.0)
    ));
    let (mut child, url) =
        serve(bourse().args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&cfg.0).env(var, proxy)).await;
    let resp = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat_body("far/m").to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    child.kill().await.unwrap();
    (status, text)
}

/// A one-shot fake proxy: accepts one connection, reads the request head, answers `reply`,
/// and hands back what it received.
async fn one_shot_proxy(reply: String) -> (std::net::SocketAddr, tokio::task::JoinHandle<String>) {
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = proxy.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut sock, _) = proxy.accept().await.unwrap();
        let mut buf = vec![0u8; 8192];
        let mut got = Vec::new();
        loop {
            let n = sock.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            if n == 0 || got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        tokio::io::AsyncWriteExt::write_all(&mut sock, reply.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&got).to_string()
    });
    (addr, seen)
}

#[tokio::test]
async fn upstream_requests_honour_http_proxy() {
    // A one-shot forward proxy that answers for any absolute-form request it receives.
    let body = r#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"via proxy"},"finish_reason":"stop"}]}"#;
    let (proxy_addr, seen) = one_shot_proxy(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
    .await;
    let (status, text) =
        chat_via_proxy("http://llm.bourse-test.invalid/v1", "HTTP_PROXY", format!("http://{proxy_addr}")).await;
    assert_eq!(status, 200);
    assert!(text.contains("via proxy"), "{text}");
    let request = seen.await.unwrap();
    assert_eq!(request.lines().next(), Some("POST http://llm.bourse-test.invalid/v1/chat/completions HTTP/1.1"));
}

/// An https upstream behind `HTTPS_PROXY` is reached through a `CONNECT` tunnel to its
/// host and port, with the proxy's credentials from the proxy URL (TLS then runs inside the
/// tunnel, end to end; this fake proxy refuses the tunnel, so the request ends in a 502).
#[tokio::test]
async fn https_upstreams_tunnel_through_https_proxy() {
    let refuse = "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let (proxy_addr, seen) = one_shot_proxy(refuse.to_string()).await;
    let (status, text) =
        chat_via_proxy("https://llm.bourse-test.invalid/v1", "HTTPS_PROXY", format!("http://user:pass@{proxy_addr}"))
            .await;
    assert_eq!(status, 502, "{text}");
    let request = seen.await.unwrap();
    let mut lines = request.lines();
    assert_eq!(lines.next(), Some("CONNECT llm.bourse-test.invalid:443 HTTP/1.1"), "{request}");
    // "user:pass" in base64.
    assert!(
        request.to_ascii_lowercase().contains("proxy-authorization: basic dxnlcjpwyxnz"),
        "the proxy's credentials travel with the CONNECT: {request}"
    );
}

#[tokio::test]
async fn sigterm_flushes_every_ledger_row() {
    const N: usize = 200;
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let db = std::env::temp_dir().join(format!("bourse-flush-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let url = format!("sqlite:{}", db.display());
    let cfg = sim_config(&format!("[storage]\nurl = \"{url}\""), &sim);
    let (mut child, gw) = serve(bourse().args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&cfg.0)).await;
    let c = client();
    let sends = (0..N).map(|_| {
        c.post(format!("{gw}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(chat_body("alpha/sim-small").to_string())
            .send()
    });
    for r in futures_util::future::join_all(sends).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    // Signal right away: rows may still sit in the writer's queue.
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let ledger = bourse::ledger::Ledger::open(&url).await.unwrap();
    assert_eq!(ledger.count().await.unwrap(), N as i64, "every request has its ledger row after SIGTERM");
    drop(ledger);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

#[tokio::test]
async fn catalog_and_report_commands() {
    // The catalog table shows the price gap against the reference at a glance.
    let out = bourse().args(["catalog", "--kind", "chat"]).stdout(Stdio::piped()).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("deepseek/deepseek-v4-flash") && text.contains("openai/gpt-5.5"), "{text:.400}");
    assert!(text.contains("reference openai/gpt-4o") && text.contains("cheaper than reference"), "{text:.400}");
    let out = bourse().args(["catalog", "--format", "json", "--provider", "deepseek"]).stdout(Stdio::piped()).output();
    let json: serde_json::Value = serde_json::from_slice(&out.await.unwrap().stdout).unwrap();
    assert!(json["models"].as_array().unwrap().iter().all(|m| m["id"].as_str().unwrap().starts_with("deepseek/")));

    // Requests through a served gateway, then `bourse report` over the same config.
    let sim =
        Sim::start(SimConfig { prompt_tokens: Some(1000), output_tokens: 10, ..SimConfig::default() }).await.unwrap();
    let db = std::env::temp_dir().join(format!("bourse-report-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let cfg = sim_config(&format!("[storage]\nurl = \"sqlite:{}\"", db.display()), &sim);
    let (mut child, gw) = serve(bourse().args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&cfg.0)).await;
    for _ in 0..3 {
        let r = client()
            .post(format!("{gw}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(chat_body("alpha/sim-small").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(child.wait().await.unwrap().success());
    let out = bourse()
        .args(["report", "--by", "model", "--format", "json", "--config"])
        .arg(&cfg.0)
        .stdout(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &report["data"][0];
    assert_eq!(row["group"], "alpha/sim-small");
    assert_eq!(row["requests"], 3);
    // 3 × (1000 × $1/M + 10 × $2/M) = 3 × 1,020,000 nano-USD = $0.003060000
    assert_eq!(row["cost_usd"], "0.003060000");
    let table = bourse().args(["report", "--config"]).arg(&cfg.0).stdout(Stdio::piped()).output().await.unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("0.003060000"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// `bourse report` refuses a bound that looks like a date but is not one in the calendar,
/// naming the flag and the day the month lacks, before it opens any ledger.
#[tokio::test]
async fn report_refuses_dates_the_calendar_does_not_have() {
    let db = std::env::temp_dir().join(format!("bourse-report-dates-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let cases = [
        ("--since", "2026-02-31", "--since: \"2026-02-31\" is not a date: February 2026 has days 1 to 28"),
        ("--until", "2025-02-29", "--until: \"2025-02-29\" is not a date: February 2025 has days 1 to 28"),
        ("--since", "2026-04-31", "--since: \"2026-04-31\" is not a date: April 2026 has days 1 to 30"),
    ];
    for (flag, date, message) in cases {
        let out = bourse().args(["report", "--ledger"]).arg(&db).args([flag, date]).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {date} was accepted");
        assert!(stderr.contains(message), "{flag} {date}: {stderr}");
    }
    assert!(!db.exists(), "a refused report opens no ledger");
}

#[tokio::test]
async fn no_proxy_bypasses_the_proxy() {
    // HTTP_PROXY points at a port where nothing listens; NO_PROXY exempts the upstream's host,
    // so the request must go straight to it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let cfg = write_config(&format!(
        "[storage]\nledger = false\n[providers.near]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\n{}",
        sim.base_url(),
        price("near/sim-small", 1.0, 1.0)
    ));
    let (mut child, url) = serve(
        bourse()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg.0)
            .env("HTTP_PROXY", format!("http://{dead}"))
            .env("NO_PROXY", "127.0.0.1,localhost"),
    )
    .await;
    let resp = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat_body("near/sim-small").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(sim.stats().requests, 1);
    child.kill().await.unwrap();
}

/// A number from a process's /proc status (`Threads`, `VmRSS` in kB, ...); 0 if absent.
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let value = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'));
    value.and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// Streams whose upstream never reports usage are counted on the tokenizer's fixed pool:
/// under a steady load of them the gateway's threads stay at its workers, the main thread,
/// the pool, the log writer and the ledger's writer, and every stream still ends with its
/// cost comment. (Counted on tokio's blocking pool instead, the same load grew the process
/// by a thread for every estimate waiting while the tokenizer loaded.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_less_streams_are_estimated_on_a_fixed_number_of_threads() {
    let sim = Sim::start(SimConfig {
        usage_style: upstream_sim::UsageStyle::Omitted,
        output_tokens: 40,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let db = std::env::temp_dir().join(format!("bourse-threads-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let cfg = sim_config(&format!("[storage]\nurl = \"sqlite:{}\"", db.display()), &sim);
    let (mut child, url) = serve(bourse().args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&cfg.0)).await;
    let pid = child.id().unwrap();
    let mut body = chat_body("alpha/sim-small");
    body["stream"] = json!(true);
    let body = body.to_string();
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move {
                let http = client();
                let (mut streams, mut with_cost) = (0, 0);
                while std::time::Instant::now() < until {
                    let resp = http
                        .post(format!("{url}/v1/chat/completions"))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    let text = resp.text().await.unwrap();
                    streams += 1;
                    let done = text.find("data: [DONE]").expect("a complete stream");
                    with_cost += usize::from(text[done..].contains(": x-bourse-cost-usd="));
                }
                (streams, with_cost)
            })
        })
        .collect();
    let mut peak = proc_status(pid, "Threads");
    while std::time::Instant::now() < until {
        peak = peak.max(proc_status(pid, "Threads"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut streams, mut with_cost) = (0, 0);
    for c in clients {
        let (s, w) = c.await.unwrap();
        streams += s;
        with_cost += w;
    }
    peak = peak.max(proc_status(pid, "Threads"));
    child.kill().await.unwrap();
    let _ = std::fs::remove_file(&db);
    assert!(streams >= 64, "only {streams} streams in 3 s");
    assert_eq!(with_cost, streams, "every usage-less stream ends with its cost comment");
    // tokio's workers (one per core), the main thread, the tokenizer's pool, the log writer's
    // thread, and on tokio's blocking pool the ledger's writer (one batch at a time, one more
    // in passing) and the directory's poll of the store (a SQLite read every 250 ms).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bound = (2 * workers + bourse::meter::estimate::POOL_THREADS + 4) as u64;
    assert!(peak <= bound, "{peak} threads (bound {bound} with {workers} workers)");
}

/// A client that stops reading a stream whose upstream sends as fast as it can: the
/// gateway holds only what its buffers take (the relay stops reading the upstream when the
/// client's socket is full), so its memory does not grow with the tens of MB the upstream
/// has to send.
#[tokio::test]
async fn a_client_that_stops_reading_does_not_grow_the_gateways_memory() {
    use tokio::io::AsyncWriteExt;
    let sim = Sim::start(SimConfig { output_tokens: 400_000, ..SimConfig::default() }).await.unwrap();
    let cfg = sim_config("[server]\nsend_timeout = \"60s\"\n[storage]\nledger = false", &sim);
    let (mut child, url) = serve(bourse().args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&cfg.0)).await;
    let pid = child.id().unwrap();
    let mut body = chat_body("alpha/sim-small");
    body["stream"] = json!(true);
    let body = body.to_string();
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 256];
    let n = s.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    // The answer is ~50 MB; the sockets between hold a few MB of it. Watch for 3 s.
    let start = proc_status(pid, "VmRSS");
    let mut peak = start;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(proc_status(pid, "VmRSS"));
    }
    child.kill().await.unwrap();
    assert!(peak - start < 8 * 1024, "the gateway grew {} KB for a client that reads nothing", peak - start);
    drop(s);
}
