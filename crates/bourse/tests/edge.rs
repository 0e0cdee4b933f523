//! The edge against hostile and careless clients, over raw sockets: heads that never finish,
//! idle keep-alive connections, too many connections, oversized heads and bodies, and a
//! client that stops reading a stream. Each case also shows other clients still served.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A chat completion for `model` as raw HTTP/1.1 bytes (keep-alive).
fn chat_request(model: &str, stream: bool) -> Vec<u8> {
    let body = serde_json::json!({
        "model": model, "stream": stream,
        "messages": [{"role": "user", "content": "Say hello to the exchange."}],
    })
    .to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One response read off a raw connection: status, head text and body (Content-Length
/// framed). Panics on a connection that ends first.
async fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before a response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "connection closed in the body");
        body.extend_from_slice(&chunk[..n]);
    }
    (status, head, body)
}

/// Whether the peer closed the connection (EOF or reset) within `wait`; bytes it sends
/// first (an error answer) are read past.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(wait, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A non-streaming chat completion through the gateway answers 200.
async fn served(gw: &Gateway) {
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body(chat_body("sim/sim-small").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "another client was not served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_heads_are_closed_at_the_head_timeout_while_others_are_served() {
    bourse::server::raise_fd_limit();
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = gateway(&format!("[server]\nheader_timeout = \"1s\"\n{}", provider_toml("sim", &sim, ""))).await;
    let mut stalled = Vec::new();
    for _ in 0..2000 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: appl").await.unwrap();
        stalled.push((s, Instant::now()));
    }
    for _ in 0..10 {
        served(&gw).await;
    }
    let closes = stalled.into_iter().map(|(mut s, sent)| async move {
        let closed = closed_within(&mut s, Duration::from_secs(6)).await;
        (closed, sent.elapsed())
    });
    let results = futures_util::future::join_all(closes).await;
    let open = results.iter().filter(|(closed, _)| !closed).count();
    assert_eq!(open, 0, "{open} of 2000 half-sent heads were still open after 6 s");
    // Closed by the timeout, not at once: the slowest close came after the 1 s allowed.
    let latest = results.iter().map(|(_, t)| *t).max().unwrap();
    assert!(latest >= Duration::from_millis(900), "closed after {latest:?}, before the head timeout");
    served(&gw).await;
}

#[tokio::test]
async fn idle_keep_alive_connections_close_at_the_idle_timeout_not_the_head_timeout() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = gateway(&format!(
        "[server]\nheader_timeout = \"500ms\"\nidle_timeout = \"1500ms\"\n{}",
        provider_toml("sim", &sim, "")
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&chat_request("sim/sim-small", false)).await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
    // Idle for longer than the head timeout: still open, and serves the next request.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    s.write_all(&chat_request("sim/sim-small", false)).await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
    let idle = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await, "an idle connection was never closed");
    let after = idle.elapsed();
    assert!(after >= Duration::from_millis(1300), "closed after {after:?} idle, before the idle timeout");
    // A new connection that sends nothing is held only to the head timeout.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let opened = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
    assert!(opened.elapsed() < Duration::from_millis(1300), "a silent new connection waited {:?}", opened.elapsed());
}

#[tokio::test]
async fn connections_over_the_cap_get_a_readable_503() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = gateway(&format!("[server]\nmax_connections = 3\n{}", provider_toml("sim", &sim, ""))).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&chat_request("sim/sim-small", false)).await.unwrap();
        assert_eq!(read_response(&mut s).await.0, 200);
        held.push(s);
    }
    let mut over = TcpStream::connect(gw.addr).await.unwrap();
    over.write_all(&chat_request("sim/sim-small", false)).await.unwrap();
    let (status, head, body) = read_response(&mut over).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    let e = assert_openai_error(&v);
    assert_eq!(e["code"], "too_many_connections");
    assert_eq!(v["type"], "error", "Anthropic's shape too: {v}");
    assert_eq!(v["error"]["type"], "overloaded_error");
    // The held connections still work, and a freed slot is taken by the next client.
    held[0].write_all(&chat_request("sim/sim-small", false)).await.unwrap();
    assert_eq!(read_response(&mut held[0]).await.0, 200);
    drop(held.pop());
    let mut next = None;
    for _ in 0..50 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&chat_request("sim/sim-small", false)).await.unwrap();
        if read_response(&mut s).await.0 == 200 {
            next = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(next.is_some(), "the freed slot was never given to a new connection");
}

/// The whole request written before anything is read, as the SDKs do: a 40 MiB body over
/// the 32 MiB default limit. Returns the answer and the connection.
async fn send_whole_then_read(gw: &Gateway, chunked: bool) -> ((u16, String, Vec<u8>), TcpStream) {
    let size = 40 * 1024 * 1024;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let framing = if chunked { "transfer-encoding: chunked".to_string() } else { format!("content-length: {size}") };
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let piece = vec![b' '; 1024 * 1024];
    for _ in 0..size / piece.len() {
        if chunked {
            s.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.unwrap();
        }
        s.write_all(&piece).await.expect("the gateway stopped reading the body before the client finished it");
        if chunked {
            s.write_all(b"\r\n").await.unwrap();
        }
    }
    if chunked {
        s.write_all(b"0\r\n\r\n").await.unwrap();
    }
    (read_response(&mut s).await, s)
}

#[tokio::test]
async fn oversized_bodies_get_a_413_the_client_can_read_and_the_connection_lives_on() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = gateway(&provider_toml("sim", &sim, "")).await;
    for chunked in [false, true] {
        let ((status, head, body), mut s) = send_whole_then_read(&gw, chunked).await;
        assert_eq!(status, 413, "chunked={chunked}: {head}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(assert_openai_error(&v)["code"], "request_too_large", "{v}");
        // The rest of the body was read, so the connection can carry the next request.
        s.write_all(&chat_request("sim/sim-small", false)).await.unwrap();
        assert_eq!(read_response(&mut s).await.0, 200, "chunked={chunked}");
    }
}

#[tokio::test]
async fn oversized_and_overlong_heads_get_431() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw =
        gateway(&format!("[server]\nmax_header_bytes = 4096\nmax_headers = 20\n{}", provider_toml("sim", &sim, "")))
            .await;
    let big = format!("GET /healthz HTTP/1.1\r\nhost: gw\r\nx-big: {}\r\n\r\n", "a".repeat(8000));
    let many: String = std::iter::once("GET /healthz HTTP/1.1\r\nhost: gw\r\n".to_string())
        .chain((0..30).map(|i| format!("x-h{i}: v\r\n")))
        .collect::<String>()
        + "\r\n";
    let fits: String = std::iter::once("GET /healthz HTTP/1.1\r\nhost: gw\r\n".to_string())
        .chain((0..15).map(|i| format!("x-h{i}: {}\r\n", "v".repeat(100))))
        .collect::<String>()
        + "\r\n";
    for (name, head, want) in [("8 KB header", big, 431), ("31 headers", many, 431), ("16 headers, 2 KB", fits, 200)] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut s).await.0, want, "{name}");
    }
    served(&gw).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_a_stream_is_cut_off_and_its_row_metered() {
    // A long answer sent as fast as the sockets take it: far more than the buffers between
    // the upstream and a client that does not read can hold.
    let sim = Sim::start(SimConfig { output_tokens: 200_000, ..SimConfig::default() }).await.unwrap();
    let db = std::env::temp_dir().join(format!("bourse-edge-{}-{}.db", std::process::id(), fastrand::u64(..)));
    let url = format!("sqlite:{}", db.display());
    let lg = gateway_with_ledger(&format!("[server]\nsend_timeout = \"1s\"\n{}", provider_toml("sim", &sim, "")), &url)
        .await;
    let gw = &lg.gateway;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(&chat_request("sim/sim-small", true)).await.unwrap();
    // Read the head only; the answer streams on and nobody reads it.
    let mut head = [0u8; 512];
    let n = s.read(&mut head).await.unwrap();
    let text = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let id = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-request-id:").map(|v| v.trim().to_string()))
        .expect("x-request-id");
    // Others are served meanwhile. After the send timeout the gateway gives up on the
    // client: the relay is dropped (which closes the upstream connection) and the attempt
    // is metered as the client's disconnect, with what was relayed counted.
    served(gw).await;
    let row = lg.row(&id).await;
    assert_eq!((row.status, row.error_kind.as_deref()), (499, Some("client_disconnected")), "{row:?}");
    assert!(row.usage.output > 0, "what was relayed is metered: {row:?}");
    assert!(closed_within(&mut s, Duration::from_secs(10)).await, "the stalled connection stayed open");
    served(gw).await;
    let _ = std::fs::remove_file(&db);
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_a_408() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let gw = gateway(&format!("[server]\nidle_timeout = \"1s\"\n{}", provider_toml("sim", &sim, ""))).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":").await.unwrap();
    let sent = Instant::now();
    served(&gw).await;
    let (status, _, body) = read_response(&mut s).await;
    assert_eq!(status, 408);
    assert!(sent.elapsed() >= Duration::from_millis(900), "answered after {:?}", sent.elapsed());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(assert_openai_error(&v)["code"], "request_timeout", "{v}");
}
