//! HTTP handlers, one module per client-facing surface.

pub mod admin;
pub mod anthropic;
pub mod metrics;
pub mod openai;
pub mod quote;
pub mod responses;
pub mod usage;

use crate::error::{Error, ErrorKind, Result};
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use bytes::BytesMut;
use hyper::body::Body as _;
use std::future::Future;
use std::time::Duration;

/// Check the content type and read the body: a body over `server.max_body_bytes` is
/// refused with a 413 before it is buffered, and one that stops arriving for
/// `server.idle_timeout` with a 408 (a client trickling its body cannot hold a connection).
pub async fn read_json_body(headers: &HeaderMap, body: Body, state: &AppState) -> Result<Bytes> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        let shown = if ct.is_empty() { "none".to_string() } else { format!("'{ct}'") };
        return Err(Error::new(
            ErrorKind::UnsupportedMediaType,
            format!("the request body must be JSON with 'content-type: application/json' (got {shown})"),
        ));
    }
    read_body(headers, body, state).await
}

/// Read a body of any type within `server.max_body_bytes` (413 beyond it, 408 when it stalls).
pub async fn read_body(headers: &HeaderMap, body: Body, state: &AppState) -> Result<Bytes> {
    let limit = state.max_body_bytes;
    let too_large = || {
        Error::new(ErrorKind::PayloadTooLarge, format!("the request body is larger than the limit of {limit} bytes"))
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = body;
    // One frame (the usual small body, already read with the head) is kept as it is;
    // more are joined.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    while let Some(frame) = next_frame(&mut body, state.limits.idle_timeout).await? {
        let Ok(data) = frame.into_data() else { continue };
        let have = first.as_ref().map_or(0, Bytes::len) + joined.len();
        if have + data.len() > limit {
            return Err(too_large());
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            None => joined.extend_from_slice(&data),
            Some(f) => {
                joined.reserve(declared.map_or(f.len() + data.len(), |n| n as usize));
                joined.extend_from_slice(&f);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

/// The body's next frame; a timer is set only if none is ready at once.
async fn next_frame(body: &mut Body, stall: Duration) -> Result<Option<hyper::body::Frame<Bytes>>> {
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let frame = std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(f) = std::pin::Pin::new(&mut *body).poll_frame(cx) {
            return std::task::Poll::Ready(Ok(f));
        }
        let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        t.as_mut().poll(cx).map(Err)
    })
    .await;
    match frame {
        Ok(None) => Ok(None),
        Ok(Some(Ok(f))) => Ok(Some(f)),
        Ok(Some(Err(e))) => Err(Error::new(ErrorKind::InvalidRequest, format!("could not read the request body: {e}"))),
        Err(()) => Err(Error::new(
            ErrorKind::RequestTimeout,
            format!("the request body stopped arriving for {} s (server.idle_timeout)", stall.as_secs()),
        )),
    }
}
