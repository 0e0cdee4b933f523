//! HTTP/1.1 response framing as pure functions over bytes: the response head (status,
//! whether the connection stays open, how the body is delimited) and the chunked transfer
//! coding. No I/O here, so every rule is tested on bytes alone.
//!
//! The rules are RFC 9112's (section 6.3, "Message Body Length"): a 1xx, 204 or 304 answer
//! has no body; `Transfer-Encoding` ending in `chunked` wins over `Content-Length` (and
//! then the connection is not reused: a message carrying both may be an attempt at request
//! smuggling); a valid `Content-Length` gives the length; otherwise the body runs until the
//! server closes the connection. Bare `\n` line ends are accepted, as httparse accepts them.

use bytes::{Buf, Bytes, BytesMut};
use std::fmt;

/// Longest response head accepted: vendors send a few hundred bytes; a server that sends
/// more than this is not speaking HTTP to us.
const MAX_HEAD: usize = 64 * 1024;

/// Most header fields in one response head.
const MAX_HEADERS: usize = 100;

/// Longest chunk-size line (size, extensions) and total trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

/// A response that broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(msg: impl Into<String>) -> WireError {
    WireError(msg.into())
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (204, 304, `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// A complete final response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub framing: Framing,
    /// The server lets the connection serve another request after this one.
    pub keep_alive: bool,
}

/// What the bytes at the start of a buffer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Head(Head),
    /// An interim (1xx) response of this many bytes, to skip: the final one follows.
    Interim(usize),
    /// Not a whole head yet.
    Partial,
}

/// Parse the response head at the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Result<Parsed, WireError> {
    // Uninitialised slots: zeroing 100 of them cost more than the rest of the parse.
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(bad(format!("response head larger than {MAX_HEAD} bytes")))
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(bad(format!("invalid HTTP response: {e}"))),
    };
    let status = res.code.unwrap_or(0);
    if (100..200).contains(&status) {
        // 101 would hand the connection to another protocol, which was never asked for.
        if status == 101 {
            return Err(bad("unexpected 101 Switching Protocols"));
        }
        return Ok(Parsed::Interim(len));
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    // RFC 9112 section 9.3: `close` ends the connection after this response; otherwise
    // HTTP/1.1 keeps it, HTTP/1.0 only with `keep-alive`.
    let (mut close_option, mut keep_alive_option) = (false, false);
    for f in res.headers.iter() {
        if f.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(f.value)?;
            if length.is_some_and(|m| m != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            // Only the last coding decides the framing (`gzip, chunked` is chunked); a field
            // with no coding in it (empty list elements only) changes nothing.
            if let Some(last) = last_token(f.value) {
                chunked = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if f.name.eq_ignore_ascii_case("connection") {
            for token in f.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close_option |= token.eq_ignore_ascii_case(b"close");
                keep_alive_option |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let mut close = close_option || (res.version != Some(1) && !keep_alive_option);
    let framing = if status == 204 || status == 304 {
        Framing::Empty
    } else if encoded {
        // Both headers: the length is not to be trusted, nor the connection after it.
        close |= length.is_some();
        if chunked {
            Framing::Chunked
        } else {
            close = true;
            Framing::UntilClose
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => {
                close = true;
                Framing::UntilClose
            }
        }
    };
    Ok(Parsed::Head(Head { status, len, framing, keep_alive: !close }))
}

fn parse_length(v: &[u8]) -> Result<u64, WireError> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(bad(format!("invalid Content-Length: {:?}", String::from_utf8_lossy(v))));
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The last element of a comma-separated list, skipping empty ones (RFC 9110 section
/// 5.6.1: `chunked,` is the list `chunked`).
fn last_token(v: &[u8]) -> Option<&[u8]> {
    v.rsplit(|&b| b == b',').map(<[u8]>::trim_ascii).find(|t| !t.is_empty())
}

/// The value of header `name` in a complete head (checked by [`parse_head`]), without
/// surrounding whitespace; the first one if it repeats.
pub fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    // Skip the status line; the head ends with an empty line.
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon].eq_ignore_ascii_case(name.as_bytes()).then(|| line[colon + 1..].trim_ascii())
    })
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the chunk-size line; `seen` bytes of it so far.
    Size {
        size: u64,
        digits: u8,
        after: AfterSize,
        seen: usize,
    },
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its line end.
    DataEnd {
        cr: bool,
    },
    /// After the last (zero) chunk: trailer lines until an empty one. `line` bytes of the
    /// current line so far, `total` of the whole section.
    Trailer {
        line: usize,
        total: usize,
    },
    Done,
}

/// What a chunk-size line has shown after its digits: `chunk-size [ BWS ";" chunk-ext ]
/// CRLF` (RFC 9112 section 7.1), so only whitespace, an extension or the line end may follow
/// the size, and a CR only just before the LF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterSize {
    /// Nothing yet: more digits may come.
    Digits,
    /// Whitespace: a `;` or the line end must come.
    Space,
    /// An extension (`;name=value`), read to the line end and ignored.
    Ext,
    /// A CR: the LF must come.
    Cr,
}

/// A decoder for the chunked transfer coding that hands out data as it arrives, without
/// waiting for a whole chunk: a streamed answer reaches the client as the upstream sends it.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked { state: State::Size { size: 0, digits: 0, after: AfterSize::Digits, seen: 0 } }
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next piece of data from `buf` (taken out of it without copying), or `None` when
    /// `buf` holds no data yet: then either the body is done ([`Chunked::is_done`]) or more
    /// bytes are needed. Framing bytes are consumed as they are read.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        self.skip_framing(buf)?;
        match &mut self.state {
            State::Data(left) if !buf.is_empty() => {
                let n = (*left).min(buf.len() as u64) as usize;
                let data = buf.split_to(n).freeze();
                *left -= n as u64;
                if *left == 0 {
                    self.state = State::DataEnd { cr: false };
                }
                // Read on, so a body whose end has arrived is seen to be done now. An error
                // there waits for the next call (which fails at the same byte): the data
                // taken out of `buf` is handed out first, as it would be had the bytes after
                // it arrived later.
                let _ = self.skip_framing(buf);
                Ok(Some(data))
            }
            _ => Ok(None),
        }
    }

    /// Consume framing bytes (size lines, line ends, trailers) until data, the end, or the
    /// end of `buf`.
    fn skip_framing(&mut self, buf: &mut BytesMut) -> Result<(), WireError> {
        loop {
            let Some(&b) = buf.first() else { return Ok(()) };
            match &mut self.state {
                State::Data(_) | State::Done => return Ok(()),
                State::Size { size, digits, after, seen } => {
                    *seen += 1;
                    if *seen > MAX_CHUNK_LINE {
                        return Err(bad("chunk-size line too long"));
                    }
                    match b {
                        b'\n' => {
                            if *digits == 0 {
                                return Err(bad("chunk-size line without a size"));
                            }
                            self.state =
                                if *size == 0 { State::Trailer { line: 0, total: 0 } } else { State::Data(*size) };
                        }
                        _ if *after == AfterSize::Cr => return Err(bad("CR without LF in a chunk-size line")),
                        b'\r' if *digits > 0 => *after = AfterSize::Cr,
                        _ if *after == AfterSize::Ext => {}
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if *after == AfterSize::Digits => {
                            if *digits >= 15 {
                                return Err(bad("chunk size too large"));
                            }
                            *size = *size << 4 | u64::from((b as char).to_digit(16).unwrap_or(0));
                            *digits += 1;
                        }
                        b' ' | b'\t' if *digits > 0 => *after = AfterSize::Space,
                        b';' if *digits > 0 => *after = AfterSize::Ext,
                        _ => return Err(bad(format!("invalid byte {b:#04x} in a chunk size"))),
                    }
                }
                State::DataEnd { cr } => match b {
                    b'\r' if !*cr => *cr = true,
                    b'\n' => self.state = State::Size { size: 0, digits: 0, after: AfterSize::Digits, seen: 0 },
                    _ => return Err(bad("chunk data longer than its size")),
                },
                State::Trailer { line, total } => {
                    *total += 1;
                    if *total > MAX_TRAILERS {
                        return Err(bad("trailer section too large"));
                    }
                    match b {
                        b'\n' if *line == 0 => self.state = State::Done,
                        b'\n' => *line = 0,
                        // A lone CR before the LF does not start a line.
                        b'\r' => {}
                        _ => *line += 1,
                    }
                }
            }
            buf.advance(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(text: &str) -> Head {
        match parse_head(text.as_bytes()).unwrap() {
            Parsed::Head(h) => h,
            other => panic!("{other:?} for {text:?}"),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n");
        assert_eq!((h.status, h.framing, h.keep_alive), (200, Framing::Length(12), true));
        assert_eq!(h.len, "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n".len());
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        // Empty list elements are not codings (RFC 9110 section 5.6.1).
        assert_eq!(head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, \r\n\r\n").framing, Framing::Chunked);
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: ,\r\n\r\n").framing,
            Framing::Chunked
        );
        // Both: chunked wins, and the connection is not trusted after it.
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        assert_eq!(head("HTTP/1.1 304 Not Modified\r\n\r\n").framing, Framing::Empty);
        assert_eq!(head("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").framing, Framing::Empty);
        // Repeated but equal lengths are one length.
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n").framing,
            Framing::Length(3)
        );
    }

    #[test]
    fn connection_reuse() {
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 1\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.1 200 OK\r\nconnection: upgrade, Close\r\ncontent-length: 1\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 1\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\ncontent-length: 1\r\n\r\n").keep_alive);
        // `close` wins, wherever `keep-alive` stands.
        assert!(!head("HTTP/1.0 200 OK\r\nConnection: close, keep-alive\r\ncontent-length: 1\r\n\r\n").keep_alive);
        assert!(
            !head("HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\ncontent-length: 1\r\n\r\n")
                .keep_alive
        );
    }

    #[test]
    fn interim_partial_and_broken_heads() {
        let interim = "HTTP/1.1 100 Continue\r\n\r\n";
        let both = format!("{interim}HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx");
        assert_eq!(parse_head(both.as_bytes()).unwrap(), Parsed::Interim(interim.len()));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap(), Parsed::Partial);
        assert_eq!(parse_head(b"").unwrap(), Parsed::Partial);
        for broken in [
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "SSH-2.0-OpenSSH_9.2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        ] {
            assert!(parse_head(broken.as_bytes()).is_err(), "{broken:?}");
        }
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert!(parse_head(huge.as_bytes()).is_err());
    }

    #[test]
    fn header_lookup() {
        let text = "HTTP/1.1 429 Too Many Requests\r\nContent-Type:  application/json \r\nRetry-After: 7\r\nx-a: 1\r\nx-a: 2\r\n\r\n";
        let h = head(text);
        let raw = &text.as_bytes()[..h.len];
        assert_eq!(header(raw, "content-type"), Some(&b"application/json"[..]));
        assert_eq!(header(raw, "RETRY-AFTER"), Some(&b"7"[..]));
        assert_eq!(header(raw, "x-a"), Some(&b"1"[..]));
        assert_eq!(header(raw, "x-b"), None);
        // The status line is not a header, whatever it holds.
        assert_eq!(header(b"HTTP/1.1 200 a: b\r\n\r\n", "HTTP/1.1 200 a"), None);
    }

    /// Feed `wire` to a decoder in pieces of the given sizes (cycled); returns the data and
    /// whether the body ended.
    fn decode(wire: &[u8], pieces: &[usize]) -> Result<(Vec<u8>, bool), WireError> {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut sizes = pieces.iter().copied().cycle();
        while at < wire.len() {
            let n = sizes.next().unwrap_or(1).max(1).min(wire.len() - at);
            buf.extend_from_slice(&wire[at..at + n]);
            at += n;
            while let Some(data) = dec.next(&mut buf)? {
                assert!(!data.is_empty());
                out.extend_from_slice(&data);
            }
        }
        Ok((out, dec.is_done() && buf.is_empty()))
    }

    #[test]
    fn chunked_examples() {
        let wire = b"5\r\nhello\r\n7;name=value\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(decode(wire, &[1]).unwrap(), (b"hello, world".to_vec(), true));
        assert_eq!(decode(wire, &[usize::MAX]).unwrap(), (b"hello, world".to_vec(), true));
        // Bare LF line ends and upper-case hex.
        assert_eq!(decode(b"A\nabcdefghij\n0\n\n", &[3]).unwrap(), (b"abcdefghij".to_vec(), true));
        // Not finished: no terminating chunk yet.
        assert_eq!(decode(b"3\r\nabc\r\n", &[2]).unwrap(), (b"abc".to_vec(), false));
        // Whitespace before an extension, and an extension holding anything but a line end.
        assert_eq!(decode(b"3 \t;a= \"\x01\"\r\nabc\r\n0\r\n\r\n", &[1]).unwrap(), (b"abc".to_vec(), true));
        for broken in [
            &b"x\r\n"[..],
            b"\r\n",
            b"3\r\nabcd\r\n",
            b"10000000000000000\r\n",
            b"-1\r\n",
            b" 3\r\nabc",
            // After the size only whitespace, an extension or the line end; a CR only before LF.
            b"3 4\r\nabc\r\n",
            b"3 x\r\nabc\r\n",
            b"3\rx\nabc\r\n",
            b"3;a\rb\r\nabc\r\n",
        ] {
            assert!(decode(broken, &[1]).is_err(), "{:?}", String::from_utf8_lossy(broken));
        }
        let long_ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert!(decode(long_ext.as_bytes(), &[64]).is_err());
    }

    #[test]
    fn data_comes_out_before_an_error_after_it() {
        // Whether the broken line end arrives with the data or later, the data comes first.
        let mut dec = Chunked::default();
        let mut buf = BytesMut::from(&b"5\r\nhelloX"[..]);
        assert_eq!(dec.next(&mut buf).unwrap().as_deref(), Some(&b"hello"[..]));
        assert!(dec.next(&mut buf).is_err());
    }

    #[test]
    fn data_arrives_before_its_chunk_ends() {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::from(&b"a\r\nhel"[..]);
        assert_eq!(dec.next(&mut buf).unwrap().as_deref(), Some(&b"hel"[..]));
        assert_eq!(dec.next(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"lo worl");
        assert_eq!(dec.next(&mut buf).unwrap().as_deref(), Some(&b"lo worl"[..]));
        // The last data and the terminator together: done as soon as the data is out.
        buf.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(dec.next(&mut buf).unwrap(), None);
        assert!(dec.is_done() && buf.is_empty());
    }

    proptest! {
        /// Any body, cut into any chunks (with or without extensions and trailers) and
        /// delivered in any pieces, decodes to itself.
        #[test]
        fn chunked_round_trip(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
            ext in any::<bool>(),
            trailers in any::<bool>(),
            upper in any::<bool>(),
            pieces in proptest::collection::vec(1usize..40, 1..6),
        ) {
            let mut wire = Vec::new();
            for c in &chunks {
                let size = if upper { format!("{:X}", c.len()) } else { format!("{:x}", c.len()) };
                wire.extend_from_slice(size.as_bytes());
                if ext {
                    wire.extend_from_slice(b" ; a=\"b\"");
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(c);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n");
            if trailers {
                wire.extend_from_slice(b"x-checksum: abc\r\nx-other: 1\r\n");
            }
            wire.extend_from_slice(b"\r\n");
            let (out, done) = decode(&wire, &pieces).unwrap();
            prop_assert_eq!(out, chunks.concat());
            prop_assert!(done);
        }

        /// Whatever the bytes, the decoder answers (data, need more, or an error) and never
        /// hands out more bytes than it was given.
        #[test]
        fn chunked_never_panics(wire in proptest::collection::vec(any::<u8>(), 0..200), pieces in proptest::collection::vec(1usize..20, 1..4)) {
            if let Ok((out, _)) = decode(&wire, &pieces) {
                prop_assert!(out.len() <= wire.len());
            }
        }

        #[test]
        fn heads_never_panic(wire in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_head(&wire);
        }
    }
}
