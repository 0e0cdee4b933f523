//! The HTTP/1.1 pieces the load generator needs: the one request it sends
//! (built once, written as one buffer) and the response head, parsed with
//! `httparse` into a status, the body's framing and whether the connection
//! can carry another request.

use serde_json::json;

/// The chat completion request body: a streaming request for `model`, asking
/// for the usage chunk if `include_usage`.
pub fn chat_body(model: &str, prompt: &str, include_usage: bool, max_tokens: Option<u32>) -> Vec<u8> {
    let mut body = json!({
        "model": model,
        "stream": true,
        "messages": [{"role": "user", "content": prompt}],
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    if let Some(n) = max_tokens {
        body["max_tokens"] = json!(n);
    }
    body.to_string().into_bytes()
}

/// `POST path` with `body` as JSON, for `host` (the Host header).
pub fn post_request(host: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(u64),
    /// No length: the body runs to the end of the connection.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
    /// The server will take another request on this connection.
    pub keep_alive: bool,
}

/// A response head that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError(pub String);

/// Heads larger than this are refused.
pub const MAX_HEAD: usize = 64 * 1024;

/// Parses the response head at the start of `buf`, skipping interim (1xx)
/// responses. `Ok(None)`: incomplete, read more. `Ok(Some((head, n)))`: the
/// body starts at `buf[n..]`.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut headers);
        let len = match res.parse(&buf[at..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() - at > MAX_HEAD => {
                return Err(HeadError("response head too large".into()))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(HeadError(format!("bad response head: {e}"))),
        };
        let status = res.code.unwrap_or(0);
        if (100..200).contains(&status) {
            at += len;
            continue;
        }
        let mut chunked = false;
        let mut length = None;
        let mut close = res.version == Some(0);
        for h in res.headers.iter() {
            let value = std::str::from_utf8(h.value).unwrap_or("").trim();
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.rsplit(',').next().is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<u64>().map_err(|_| HeadError(format!("bad content-length {value:?}")))?);
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        close = false;
                    }
                }
            }
        }
        let framing = if status == 204 || status == 304 {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        let keep_alive = !close && framing != Framing::UntilClose;
        return Ok(Some((Head { status, framing, keep_alive }, at + len)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let sse = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\n";
        assert_eq!(
            parse_head(sse).unwrap(),
            Some((Head { status: 200, framing: Framing::Chunked, keep_alive: true }, sse.len() - 3))
        );
        for cut in 0..sse.len() - 3 {
            assert_eq!(parse_head(&sse[..cut]).unwrap(), None);
        }
        let err = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        assert_eq!(
            parse_head(err).unwrap(),
            Some((Head { status: 503, framing: Framing::Length(2), keep_alive: false }, err.len() - 2))
        );
        let old = b"HTTP/1.0 200 OK\r\n\r\n";
        assert_eq!(
            parse_head(old).unwrap(),
            Some((Head { status: 200, framing: Framing::UntilClose, keep_alive: false }, old.len()))
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn request() {
        let body = chat_body("sim-small", "hi", true, Some(16));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["max_tokens"], 16);
        let req = post_request("127.0.0.1:1", "/v1/chat/completions", &body);
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"));
        assert!(text.ends_with(&format!("Content-Length: {}\r\n\r\n{}", body.len(), String::from_utf8_lossy(&body))));
    }
}
