//! The client against a scripted server on a real socket: what it writes, how it reads each
//! kind of body, and when it reuses, drops or replaces a connection.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One answer: the pieces written (with a pause before each after the first), then whether
/// the server closes the connection.
struct Answer {
    pieces: Vec<Vec<u8>>,
    close: bool,
}

fn answer(text: &str) -> Answer {
    Answer { pieces: vec![text.as_bytes().to_vec()], close: false }
}

/// A server that reads requests (head and `content-length` body) on every connection it
/// accepts and answers the n-th request (counted over all connections) with `script(n)`.
struct Server {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Connections the client closed (seen as the end of a read or a failed write).
    closed: Arc<AtomicUsize>,
}

async fn server(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let closed = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let (c, r, d) = (connections.clone(), requests.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let (r, d, script) = (r.clone(), d.clone(), script.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(request) = read_request(&mut sock, &mut buf).await else {
                        d.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let n = {
                        let mut all = r.lock().unwrap();
                        all.push(request);
                        all.len() - 1
                    };
                    let a = script(n);
                    for (i, piece) in a.pieces.iter().enumerate() {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(30)).await;
                        }
                        if sock.write_all(piece).await.is_err() {
                            d.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    if a.close {
                        return;
                    }
                }
            });
        }
    });
    Server { addr, connections, requests, closed }
}

/// One request (head and `content-length` body) from `sock`; `None` when it closes first.
async fn read_request<S: AsyncRead + Unpin>(sock: &mut S, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(buf.drain(..end + 4 + len).collect());
            }
        }
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn client(addr: std::net::SocketAddr) -> Client {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("authorization", HeaderValue::from_static("Bearer sk-test"));
    let base: Uri = format!("http://{addr}/v1").parse().unwrap();
    Client::new(&base, &headers, Duration::from_secs(2)).unwrap()
}

async fn body_of(resp: Response) -> Result<Vec<u8>, HttpError> {
    resp.body.bytes(usize::MAX).await.map(|b| b.to_vec())
}

async fn chunks_of(mut body: Body) -> Vec<Result<Bytes, HttpError>> {
    let mut out = Vec::new();
    while let Some(c) = poll_fn(|cx| body.poll_chunk(cx)).await {
        out.push(c);
    }
    out
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

#[tokio::test]
async fn requests_are_written_in_full_and_connections_reused() {
    let s = server(|_| answer(OK)).await;
    let c = client(s.addr);
    let extra = (HeaderName::from_static("anthropic-beta"), HeaderValue::from_static("tools"));
    for i in 0..5 {
        let body = format!("{{\"n\":{i}}}");
        let resp = c.post("/v1/chat/completions", (i == 0).then_some(&extra), body.as_bytes()).await.unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.header("Content-Type"), Some("application/json"));
        assert_eq!(body_of(resp).await.unwrap(), b"{}");
    }
    assert_eq!(s.connections.load(Ordering::SeqCst), 1, "one keep-alive connection for sequential requests");
    let first = String::from_utf8(s.requests.lock().unwrap()[0].clone()).unwrap();
    let port = s.addr.port();
    assert_eq!(
        first,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n\
             authorization: Bearer sk-test\r\nanthropic-beta: tools\r\ncontent-length: 7\r\n\r\n{{\"n\":0}}"
        )
    );
    assert!(!String::from_utf8_lossy(&s.requests.lock().unwrap()[1]).contains("anthropic-beta"));
}

#[tokio::test]
async fn the_key_stays_out_of_debug_output() {
    let c = client("127.0.0.1:9".parse().unwrap());
    let shown = format!("{c:?}");
    assert!(shown.contains("http://127.0.0.1:9") && !shown.contains("sk-test"), "{shown}");
}

#[tokio::test]
async fn chunked_bodies_stream_piece_by_piece_and_then_reuse() {
    let s = server(|n| match n {
        0 => Answer {
            pieces: vec![
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
                b"6\r\ndata:1\r\n".to_vec(),
                b"6\r\ndata:2\r\n".to_vec(),
                b"0\r\n\r\n".to_vec(),
            ],
            close: false,
        },
        _ => answer(OK),
    })
    .await;
    let c = client(s.addr);
    let resp = c.post("/x", None, b"{}").await.unwrap();
    let chunks = chunks_of(resp.body).await;
    let chunks: Vec<Bytes> = chunks.into_iter().map(Result::unwrap).collect();
    // Each piece was handed out when it arrived, not gathered into one.
    assert_eq!(chunks, vec![Bytes::from_static(b"data:1"), Bytes::from_static(b"data:2")]);
    let resp = c.post("/x", None, b"{}").await.unwrap();
    assert_eq!(body_of(resp).await.unwrap(), b"{}");
    assert_eq!(s.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn close_delimited_and_connection_close_answers_are_not_reused() {
    let s = server(|n| match n {
        0 => Answer { pieces: vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec()], close: true },
        1 => Answer {
            pieces: vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec()],
            close: false,
        },
        _ => answer(OK),
    })
    .await;
    let c = client(s.addr);
    assert_eq!(body_of(c.post("/x", None, b"").await.unwrap()).await.unwrap(), b"until the end");
    assert_eq!(body_of(c.post("/x", None, b"").await.unwrap()).await.unwrap(), b"ok");
    assert_eq!(body_of(c.post("/x", None, b"").await.unwrap()).await.unwrap(), b"{}");
    assert_eq!(s.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_replaced() {
    // The server answers and hangs up each time, without saying so in the answer.
    let s = server(|_| Answer { pieces: vec![OK.as_bytes().to_vec()], close: true }).await;
    let c = client(s.addr);
    for _ in 0..3 {
        assert_eq!(body_of(c.post("/x", None, b"").await.unwrap()).await.unwrap(), b"{}");
        // Let the close arrive before the next request takes a connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.connections.load(Ordering::SeqCst), 3);
    assert_eq!(s.requests.lock().unwrap().len(), 3, "no request was lost or sent twice");
}

/// A pooled connection that looks open but cannot take the request (its writing side is
/// gone): the request goes out once, on a new connection.
#[tokio::test]
async fn a_write_that_fails_on_a_reused_connection_is_sent_on_a_new_one() {
    let s = server(|_| answer(OK)).await;
    let c = client(s.addr);
    // A peer that holds its end open and silent, so the pooled connection passes the
    // check at checkout and only the write can fail.
    let holder = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut dead = TcpStream::connect(holder.local_addr().unwrap()).await.unwrap();
    let _held = holder.accept().await.unwrap();
    dead.shutdown().await.unwrap();
    c.shared.put(Conn { io: Io::Tcp(dead), buf: BytesMut::new() });
    assert_eq!(body_of(c.post("/x", None, b"{}").await.unwrap()).await.unwrap(), b"{}");
    assert_eq!(s.requests.lock().unwrap().len(), 1, "sent once");
    assert_eq!(s.connections.load(Ordering::SeqCst), 1, "on a new connection");
    assert_eq!(lock(&c.shared.idle).len(), 1, "which went back to the pool");
}

#[tokio::test]
async fn a_body_dropped_early_closes_its_connection() {
    let s = server(|n| match n {
        0 => Answer {
            pieces: vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n".to_vec(),
                b"3\r\ntwo\r\n".to_vec(),
                b"0\r\n\r\n".to_vec(),
            ],
            close: false,
        },
        _ => answer(OK),
    })
    .await;
    let c = client(s.addr);
    let mut resp = c.post("/x", None, b"").await.unwrap();
    let first = poll_fn(|cx| resp.body.poll_chunk(cx)).await.unwrap().unwrap();
    assert_eq!(&first[..], b"one");
    drop(resp);
    // The server's reader sees the connection end: that is how an upstream learns of a cancel.
    for _ in 0..100 {
        if s.closed.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.closed.load(Ordering::SeqCst), 1);
    assert_eq!(body_of(c.post("/x", None, b"").await.unwrap()).await.unwrap(), b"{}");
    assert_eq!(s.connections.load(Ordering::SeqCst), 2, "the half-read connection was not reused");
}

#[tokio::test]
async fn broken_answers_are_errors() {
    let s = server(|n| match n {
        0 => Answer { pieces: vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort".to_vec()], close: true },
        1 => Answer {
            pieces: vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec()],
            close: true,
        },
        2 => Answer { pieces: vec![b"NOT HTTP AT ALL\r\n\r\n".to_vec()], close: true },
        3 => Answer { pieces: vec![b"HTTP/1.1 200 OK\r\ncontent-le".to_vec()], close: true },
        _ => Answer { pieces: vec![], close: true },
    })
    .await;
    let c = client(s.addr);
    let e = body_of(c.post("/x", None, b"").await.unwrap()).await.unwrap_err();
    assert!(e.to_string().contains("before the body was complete"), "{e}");
    assert!(body_of(c.post("/x", None, b"").await.unwrap()).await.unwrap_err().to_string().contains("chunk size"));
    assert!(c.post("/x", None, b"").await.unwrap_err().to_string().contains("invalid HTTP response"));
    assert!(c.post("/x", None, b"").await.unwrap_err().to_string().contains("middle of the response head"));
    let e = c.post("/x", None, b"").await.unwrap_err();
    assert!(!e.is_connect() && e.to_string().contains("closed before the response"), "{e}");
}

#[tokio::test]
async fn interim_answers_are_skipped_and_error_bodies_capped() {
    let big = "x".repeat(100);
    let s = server(move |_| {
        answer(&format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 100\r\n\r\n{big}"
        ))
    })
    .await;
    let c = client(s.addr);
    let resp = c.post("/x", None, b"").await.unwrap();
    assert_eq!(resp.status.as_u16(), 429);
    assert_eq!(resp.header("retry-after"), Some("7"));
    assert_eq!(resp.body.bytes(10).await.unwrap().len(), 10);
}

/// Once a body has started, a silence longer than the reader allows fails it as stalled
/// (a body of known length, a chunked one); before its first byte only the caller's own
/// deadline applies, since some servers send the head long before the body.
#[tokio::test]
async fn a_body_that_goes_quiet_once_started_is_stalled() {
    let s = server(|n| match n {
        0 => answer("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{\"a\":"),
        1 => answer("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n"),
        _ => Answer {
            pieces: vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n".to_vec(), b"{}".to_vec()],
            close: false,
        },
    })
    .await;
    let c = client(s.addr);
    for framing in ["content-length", "chunked"] {
        let resp = c.post("/x", None, b"").await.unwrap();
        let e = resp.body.bytes_within(usize::MAX, Some(Duration::from_millis(50))).await.unwrap_err();
        assert!(e.is_stalled(), "{framing}: {e}");
    }
    // The head, then the body 30 ms later: longer than the limit, but nothing had started.
    let resp = c.post("/x", None, b"").await.unwrap();
    assert_eq!(resp.body.bytes_within(usize::MAX, Some(Duration::from_millis(10))).await.unwrap(), &b"{}"[..]);
}

/// A large body in many small writes arrives whole, and the connection is reused after it.
#[tokio::test]
async fn large_bodies_arrive_whole() {
    let body: Vec<u8> = (0..3_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let expected = body.clone();
    let s = server(move |n| match n {
        0 => {
            let mut pieces = vec![format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes()];
            pieces.extend(body.chunks(700_000).map(<[u8]>::to_vec));
            Answer { pieces, close: false }
        }
        _ => answer(OK),
    })
    .await;
    let c = client(s.addr);
    assert_eq!(body_of(c.post("/x", None, b"").await.unwrap()).await.unwrap(), expected);
    assert_eq!(body_of(c.post("/x", None, b"").await.unwrap()).await.unwrap(), b"{}");
    assert_eq!(s.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refused_connections_are_connect_errors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let c = client(format!("127.0.0.1:{port}").parse().unwrap());
    let e = c.post("/x", None, b"").await.unwrap_err();
    assert!(e.is_connect(), "{e}");
}

/// A TLS server for `localhost` (certificate from `testdata/`, signed by its test CA) that
/// answers every request with [`OK`]; counts connections, and records the SNI name and ALPN
/// protocol of the last handshake.
async fn tls_server() -> (u16, Arc<AtomicUsize>, Arc<Mutex<(Option<String>, Option<Vec<u8>>)>>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = CertificateDer::from(include_bytes!("testdata/leaf.der").to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(include_bytes!("testdata/leaf.key.der").to_vec()));
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert], key).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new((None, None)));
    let (c, seen2) = (connections.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let (acceptor, seen) = (acceptor.clone(), seen2.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                {
                    let (_, conn) = tls.get_ref();
                    *seen.lock().unwrap() =
                        (conn.server_name().map(str::to_string), conn.alpn_protocol().map(<[u8]>::to_vec));
                }
                let mut buf = Vec::new();
                while read_request(&mut tls, &mut buf).await.is_some() {
                    if tls.write_all(OK.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, connections, seen)
}

fn tls_client(port: u16, roots: rustls::RootCertStore) -> Client {
    let base: Uri = format!("https://localhost:{port}/v1").parse().unwrap();
    let headers = HeaderMap::new();
    Client::with(&base, &headers, Duration::from_secs(2), &tls_config(roots), &Matcher::builder().build()).unwrap()
}

#[tokio::test]
async fn https_upstreams_are_checked_and_reused() {
    let (port, connections, seen) = tls_server().await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(include_bytes!("testdata/ca.der").to_vec())).unwrap();
    let c = tls_client(port, roots);
    assert!(format!("{c:?}").contains(&format!("\"https://localhost:{port}\"")), "{c:?}");
    for _ in 0..3 {
        let resp = c.post("/v1/chat/completions", None, b"").await.unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(body_of(resp).await.unwrap(), b"{}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1, "one TLS connection for sequential requests");
    assert_eq!(*seen.lock().unwrap(), (Some("localhost".to_string()), Some(b"http/1.1".to_vec())));

    // The same server is refused by a client that does not trust its CA (the bundled roots).
    let c = tls_client(port, rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() });
    let e = c.post("/v1/chat/completions", None, b"").await.unwrap_err();
    assert!(e.is_connect() && e.to_string().contains("TLS") && e.to_string().contains("certificate"), "{e}");
}

/// An address that swallows connection attempts (a listener whose backlog is full drops
/// further SYNs) does not use up the connect timeout: the next address gets its share.
#[tokio::test]
async fn a_silent_address_does_not_starve_the_next() {
    let silent = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    silent.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    silent.listen(0).unwrap();
    let silent_addr = silent.local_addr().unwrap().as_socket().unwrap();
    // Fill the backlog (never accepted), then check that a further attempt really hangs.
    let mut fillers = Vec::new();
    for _ in 0..3 {
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(silent_addr)).await {
            fillers.push(c);
        }
    }
    let hangs = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(silent_addr)).await.is_err();
    assert!(hangs, "the full backlog should swallow SYNs on this kernel");
    let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Bounded as `Client::connect` bounds it: had the silent address kept the whole
    // allowance, the good one would never have been tried.
    let within = Duration::from_secs(2);
    let tcp = tokio::time::timeout(within, connect_any(vec![silent_addr, good.local_addr().unwrap()], within))
        .await
        .expect("the second address was tried in time")
        .unwrap();
    assert_eq!(tcp.peer_addr().unwrap(), good.local_addr().unwrap());
}

#[test]
fn proxies_get_a_tunnel_or_the_absolute_form() {
    let proxies = Matcher::builder().http("http://u:p@proxy.test:3128").https("http://proxy.test:3128").build();
    let tls = tls_config(rustls::RootCertStore::empty());
    let headers = HeaderMap::new();
    let https: Uri = "https://[::1]:8443/v1".parse().unwrap();
    let c = Client::with(&https, &headers, Duration::from_secs(1), &tls, &proxies).unwrap();
    let connect = String::from_utf8(c.shared.tunnel.clone().unwrap()).unwrap();
    assert_eq!(connect, "CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n");
    assert_eq!((c.shared.host.as_str(), c.shared.port), ("proxy.test", 3128));
    assert!(!c.shared.absolute_form, "inside a tunnel requests use the origin form");

    let http: Uri = "http://llm.test/v1".parse().unwrap();
    let c = Client::with(&http, &headers, Duration::from_secs(1), &tls, &proxies).unwrap();
    assert!(c.shared.tunnel.is_none());
    assert!(c.shared.absolute_form);
    assert_eq!(c.shared.origin, "http://llm.test");
    let lines = String::from_utf8(c.shared.headers.clone()).unwrap();
    // "u:p" in base64.
    assert_eq!(lines, "host: llm.test\r\nproxy-authorization: Basic dTpw\r\n");
}

/// `Host` (the first header line) names the authority as written, with the port only when
/// it is not the scheme's default, and an IPv6 literal in brackets.
#[test]
fn host_lines() {
    let tls = tls_config(rustls::RootCertStore::empty());
    let none = Matcher::builder().build();
    let host = |base: &str| {
        let c = Client::with(&base.parse().unwrap(), &HeaderMap::new(), Duration::from_secs(1), &tls, &none).unwrap();
        String::from_utf8(c.shared.headers.clone()).unwrap()
    };
    assert_eq!(host("http://127.0.0.1:8080/v1"), "host: 127.0.0.1:8080\r\n");
    assert_eq!(host("http://localhost/v1"), "host: localhost\r\n");
    assert_eq!(host("http://localhost:80/v1"), "host: localhost\r\n");
    assert_eq!(host("http://[::1]:9000/x"), "host: [::1]:9000\r\n");
    assert_eq!(host("https://api.openai.com/v1"), "host: api.openai.com\r\n");
    assert_eq!(host("https://api.openai.com:443/v1"), "host: api.openai.com\r\n");
    assert_eq!(host("https://example.com:8443/v1"), "host: example.com:8443\r\n");
}
