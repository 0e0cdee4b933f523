//! The properties Bourse's fuzz targets check: one function per target, taking the fuzzer's
//! bytes and panicking when a property fails. The targets in `fuzz_targets/` call them, and
//! `crates/bourse/tests/fuzz_corpus.rs` includes this file as a module to replay the committed
//! corpora and regression inputs on the stable toolchain, so CI keeps both honest.
//!
//! Two of them are differential: HTTP framing against httparse ([`wire_head`],
//! [`wire_chunked`]) and the JSON scanner against serde_json ([`json_scan`]). Where the two
//! sides differ on purpose (a limit, a leniency RFC 9112 allows) the check compares only
//! where both are defined; each such place says why. docs/fuzzing.md lists them.

use bourse::canonical::Conversation;
use bourse::catalog::Catalog;
use bourse::config::Config;
use bourse::dialect::openai::{self, parse_chat_request, upstream_chat_body, NotJson, WireUsage};
use bourse::dialect::scan::{self, Raw};
use bourse::dialect::{anthropic, gemini};
use bourse::provider::http::wire::{self, Chunked, Framing, Head, Parsed};
use bourse::sse;
use bytes::{Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde_json::Value;
use std::collections::BTreeMap;

/// wire.rs's limits (private there): the longest head, the most header fields, the longest
/// chunk-size line.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
const MAX_CHUNK_LINE: usize = 4096;

/// A response head: `wire::parse_head` against httparse, with the framing decided again
/// here from httparse's fields by RFC 9112 section 6.3, and `wire::header` against
/// httparse's field values.
///
/// Divergences by design: wire refuses a head over 64 KiB or with more than 100 fields (a
/// limit); an invalid `Content-Length` is refused wherever it appears (even on a 204 or
/// beside `Transfer-Encoding`), and so is a comma list (`5, 5`), which RFC 9110 section 8.6
/// allows a recipient to refuse; lengths of more than 19 digits are refused (a limit that
/// keeps the sum from overflowing).
pub fn wire_head(data: &[u8]) {
    let ours = wire::parse_head(data);
    // Room for more fields than wire allows, so a head over its limit is still read here.
    let mut fields = [httparse::EMPTY_HEADER; 4 * MAX_HEADERS];
    let mut res = httparse::Response::new(&mut fields);
    match res.parse(data) {
        Err(e) => assert!(ours.is_err(), "accepted a head httparse refuses ({e}): {ours:?}"),
        Ok(httparse::Status::Partial) => match ours {
            Ok(Parsed::Partial) => {}
            // Over a limit before the head is complete.
            Err(_) if data.len() >= MAX_HEAD || newlines(data) > MAX_HEADERS => {}
            other => panic!("httparse needs more bytes, wire answered {other:?}"),
        },
        Ok(httparse::Status::Complete(len)) => {
            let status = res.code.unwrap_or(0);
            if res.headers.len() > MAX_HEADERS || status == 101 {
                assert!(ours.is_err(), "{} fields, status {status}: {ours:?}", res.headers.len());
                return;
            }
            if (100..200).contains(&status) {
                assert_eq!(ours, Ok(Parsed::Interim(len)));
                return;
            }
            let expected = reference_head(&res, len);
            assert_eq!(
                ours.as_ref().ok().copied(),
                expected.map(Parsed::Head),
                "head {:?}",
                String::from_utf8_lossy(data)
            );
            // Every field's first value, and no value for a name not sent.
            let head = &data[..len];
            for f in res.headers.iter() {
                let first =
                    res.headers.iter().find(|g| g.name.eq_ignore_ascii_case(f.name)).map(|g| g.value.trim_ascii());
                assert_eq!(wire::header(head, f.name), first, "field {:?}", f.name);
            }
            if !res.headers.iter().any(|g| g.name.eq_ignore_ascii_case("x-absent")) {
                assert_eq!(wire::header(head, "x-absent"), None);
            }
        }
    }
}

fn newlines(data: &[u8]) -> usize {
    data.iter().filter(|&&b| b == b'\n').count()
}

/// RFC 9112 section 6.3 over httparse's fields: `None` where the head is to be refused.
fn reference_head(res: &httparse::Response<'_, '_>, len: usize) -> Option<Head> {
    let status = res.code?;
    let values = |name: &'static str| {
        res.headers.iter().filter(move |f| f.name.eq_ignore_ascii_case(name)).map(|f| f.value.trim_ascii())
    };
    // Every Content-Length must be one decimal number, all of them the same.
    let mut lengths = Vec::new();
    for v in values("content-length") {
        if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
            return None;
        }
        lengths.push(std::str::from_utf8(v).ok()?.parse::<u64>().ok()?);
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return None;
    }
    let length = lengths.first().copied();
    // The codings of every Transfer-Encoding field in order, empty list elements ignored
    // (RFC 9110 section 5.6.1); the last one decides.
    let mut te_fields = values("transfer-encoding").peekable();
    let encoded = te_fields.peek().is_some();
    let codings: Vec<&[u8]> =
        te_fields.flat_map(|v| v.split(|&b| b == b',')).map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()).collect();
    let chunked = codings.last().is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
    // RFC 9112 section 9.3: `close` ends the connection; else HTTP/1.1 persists, HTTP/1.0
    // only with `keep-alive`.
    let options: Vec<&[u8]> =
        values("connection").flat_map(|v| v.split(|&b| b == b',')).map(<[u8]>::trim_ascii).collect();
    let has = |o: &[u8]| options.iter().any(|t| t.eq_ignore_ascii_case(o));
    let mut keep_alive = !has(b"close") && (res.version == Some(1) || has(b"keep-alive"));
    let framing = if status == 204 || status == 304 {
        Framing::Empty
    } else if encoded {
        // Both headers: possibly smuggling, so the connection is not reused.
        keep_alive &= length.is_none() && chunked;
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => {
                keep_alive = false;
                Framing::UntilClose
            }
        }
    };
    Some(Head { status, len, framing, keep_alive })
}

/// What a chunked decoder made of some bytes.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    data: Vec<u8>,
    error: bool,
    done: bool,
    /// Bytes the decoder took from its buffer (all of them, unless it finished or failed).
    consumed: usize,
}

/// Feeds `wire` to a decoder in pieces of `piece` bytes, stopping at the body's end or an
/// error.
fn decode_chunked(wire: &[u8], piece: usize) -> Decoded {
    let mut dec = Chunked::default();
    let mut buf = BytesMut::new();
    let mut out = Decoded { data: Vec::new(), error: false, done: false, consumed: 0 };
    let mut fed = 0;
    for p in wire.chunks(piece.max(1)) {
        buf.extend_from_slice(p);
        fed += p.len();
        loop {
            match dec.next(&mut buf) {
                Ok(Some(d)) => {
                    assert!(!d.is_empty(), "an empty piece of data");
                    out.data.extend_from_slice(&d);
                }
                Ok(None) => break,
                Err(_) => {
                    out.error = true;
                    out.consumed = fed - buf.len();
                    return out;
                }
            }
        }
        if dec.is_done() {
            break;
        }
    }
    out.done = dec.is_done();
    out.consumed = fed - buf.len();
    out
}

/// What a reference decoder built on httparse makes of a whole chunked body.
#[derive(Debug)]
pub enum Reference {
    Done {
        data: Vec<u8>,
        end: usize,
    },
    Partial,
    Invalid,
    /// Where the two are not meant to agree (see [`wire_chunked`]).
    Undefined,
}

/// The chunked decoder: the same answer whatever pieces the bytes arrive in, never more
/// data than bytes, and the same answer as a decoder built on httparse's `parse_chunk_size`
/// (size lines) and `parse_headers` (the trailer section), where both are defined. The first
/// byte of the input picks the piece size; the rest is the body.
///
/// Divergences by design, where nothing is compared: a bare LF line end (wire accepts it, as
/// RFC 9112 section 2.2 allows; httparse does not); a size line without digits (httparse
/// reads it as 0, wire refuses it) or with more than 15 (wire's limit) or longer than 4 KiB;
/// a trailer section httparse refuses (wire skips trailer fields unread, since nothing uses
/// them).
pub fn wire_chunked(data: &[u8]) {
    let Some((&seed, wire)) = data.split_first() else { return };
    let whole = decode_chunked(wire, wire.len());
    let pieces = decode_chunked(wire, usize::from(seed % 16) + 1);
    assert_eq!(whole, pieces, "pieces of {} bytes", seed % 16 + 1);
    assert!(whole.data.len() <= wire.len());
    match reference_chunked(wire) {
        Reference::Done { data, end } => {
            assert_eq!((whole.error, whole.done, whole.consumed), (false, true, end), "httparse read a whole body");
            assert_eq!(whole.data, data);
        }
        Reference::Partial => assert!(!whole.error && !whole.done, "httparse needs more bytes: {whole:?}"),
        Reference::Invalid => assert!(whole.error, "httparse refuses this body: {whole:?}"),
        Reference::Undefined => {}
    }
}

/// The reference's verdict on `wire` (the body, without [`wire_chunked`]'s first byte).
pub fn reference_chunked(wire: &[u8]) -> Reference {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let rest = &wire[at..];
        // The size line as wire reads it: up to the first LF.
        let line = match rest.iter().position(|&b| b == b'\n') {
            Some(lf) => &rest[..=lf],
            None => rest,
        };
        let bare_lf = line.ends_with(b"\n") && !line.contains(&b'\r');
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if bare_lf || digits > 15 || line.len() >= MAX_CHUNK_LINE {
            return Reference::Undefined;
        }
        let size = match httparse::parse_chunk_size(rest) {
            Err(_) => return Reference::Invalid,
            Ok(httparse::Status::Partial) if digits == 0 && !rest.is_empty() => return Reference::Undefined,
            Ok(httparse::Status::Partial) => return Reference::Partial,
            Ok(httparse::Status::Complete(_)) if digits == 0 => return Reference::Undefined,
            Ok(httparse::Status::Complete((n, size))) => {
                at += n;
                size
            }
        };
        if size == 0 {
            let rest = &wire[at..];
            if rest.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || rest[i - 1] != b'\r')) {
                return Reference::Undefined;
            }
            let mut fields = [httparse::EMPTY_HEADER; 64];
            return match httparse::parse_headers(rest, &mut fields) {
                Ok(httparse::Status::Complete((n, _))) => Reference::Done { data, end: at + n },
                Ok(httparse::Status::Partial) => Reference::Partial,
                Err(_) => Reference::Undefined,
            };
        }
        let left = (wire.len() - at) as u64;
        if left < size {
            return Reference::Partial;
        }
        let size = size as usize;
        data.extend_from_slice(&wire[at..at + size]);
        at += size;
        match &wire[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => return Reference::Undefined,
            [] | [b'\r'] => return Reference::Partial,
            _ => return Reference::Invalid,
        }
    }
}

/// The JSON scanner: whatever object `scan::members` accepts, serde_json accepts, and the
/// members the scanner hands out (names, values, and everything `Raw` reads from them:
/// strings, integers, kinds, the members and elements inside) are what serde_json reads.
/// Also `openai::response_usage` (the scanner's use on every answer) against serde_json's
/// typed read, and `Raw::checked` on unchecked text never panicking.
///
/// A number beyond a double (`1e400`) is accepted by the scanner, as by serde_json when it
/// skips a value; serde_json refuses it only when building a `Value`, so such values are
/// compared as skipped values only.
pub fn json_scan(data: &[u8]) {
    assert_eq!(openai::response_usage(data), usage_by_serde(data), "usage of {:?}", String::from_utf8_lossy(data));
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Raw::checked(text).fields(|_, _| {});
    let _ = Raw::checked(text).elements(|_| {});
    let mut members = Vec::new();
    if scan::members(text, |k, v| members.push((k, v))).is_err() {
        return;
    }
    assert!(serde_json::from_str::<IgnoredAny>(text).is_ok(), "serde_json refuses what the scanner accepted");
    let tree = serde_json::from_str::<Value>(text).ok();
    let mut last = BTreeMap::new();
    for (key, raw) in members {
        let name = key_name(key);
        if let Some(tree) = &tree {
            assert!(tree.get(&name).is_some(), "serde_json has no member {name:?}");
        }
        last.insert(name, raw);
        same_value(raw);
    }
    // Repeated names: serde_json keeps the last one, as a map does.
    if let Some(Value::Object(map)) = &tree {
        assert_eq!(map.len(), last.len());
        for (name, raw) in last {
            agree(raw, &map[&name]);
        }
    }
}

/// A member name, unescaped.
fn key_name(key: scan::Key<'_>) -> String {
    assert_eq!(key.escaped, key.text.contains('\\'));
    if key.escaped {
        serde_json::from_str(&format!("\"{}\"", key.text)).expect("an escaped name serde_json refuses")
    } else {
        key.text.to_owned()
    }
}

/// A value the scanner handed out, against serde_json's reading of the same text.
fn same_value(raw: Raw<'_>) {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(v) => agree(raw, &v),
        Err(_) => assert!(serde_json::from_str::<IgnoredAny>(raw.get()).is_ok(), "serde_json refuses {:?}", raw.get()),
    }
}

fn agree(raw: Raw<'_>, v: &Value) {
    assert_eq!(
        (raw.is_null(), raw.is_string(), raw.is_object(), raw.is_array()),
        (v.is_null(), v.is_string(), v.is_object(), v.is_array()),
        "kind of {:?}",
        raw.get()
    );
    assert_eq!(raw.str().as_deref(), v.as_str());
    assert_eq!(raw.as_u64(), v.as_u64(), "integer {:?}", raw.get());
    match v {
        Value::Object(map) => {
            let mut last = BTreeMap::new();
            raw.fields(|k, r| {
                last.insert(key_name(k), r);
            })
            .expect("fields of a checked object");
            assert_eq!(last.keys().collect::<Vec<_>>(), map.keys().collect::<Vec<_>>());
            for (name, r) in last {
                agree(r, &map[&name]);
            }
        }
        Value::Array(items) => {
            let mut got = Vec::new();
            raw.elements(|r| got.push(r)).expect("elements of a checked array");
            assert_eq!(got.len(), items.len());
            for (r, v) in got.into_iter().zip(items) {
                agree(r, v);
            }
        }
        _ => assert_eq!(serde_json::from_str::<Value>(raw.get()).ok().as_ref(), Some(v)),
    }
}

/// `response_usage` as serde_json alone reads it: the answer with a typed `usage`, else
/// whether it is JSON at all.
fn usage_by_serde(body: &[u8]) -> Result<Option<bourse::canonical::Usage>, NotJson> {
    #[derive(serde::Deserialize)]
    struct UsageOnly {
        #[serde(default)]
        usage: Option<WireUsage>,
    }
    match serde_json::from_slice::<UsageOnly>(body) {
        Ok(u) => Ok(u.usage.map(|u| u.normalize())),
        Err(_) => serde_json::from_slice::<IgnoredAny>(body).map(|_| None).map_err(|_| NotJson),
    }
}

fn assert_json(bytes: &[u8], what: &str) {
    assert!(
        serde_json::from_slice::<IgnoredAny>(bytes).is_ok(),
        "{what} is not JSON: {}",
        String::from_utf8_lossy(bytes)
    );
}

/// Every upstream dialect's request for a conversation is JSON.
fn render_everywhere(conv: &Conversation) {
    assert_json(&openai::render_request(conv, "m", false), "openai request");
    assert_json(&openai::render_request(conv, "m", true), "openai stream request");
    assert_json(&anthropic::render_request(conv, "m", true), "anthropic request");
    assert_json(&gemini::render_request(conv), "gemini request");
    let _ = anthropic::count_tokens(conv, bourse::meter::estimate::tokens);
}

/// An OpenAI chat request: the fast path (`openai/peek.rs`, the scanner) accepts only what
/// the map walk (serde_json) accepts, reads the same values and sends the same JSON
/// upstream; whatever is accepted translates to every upstream dialect as JSON.
///
/// The map walk is forced by a leading duplicate `model` member, which the fast path
/// refuses and the map walk resolves to the last one (so only bodies that start with `{`
/// are compared). One difference by design (`openai/peek.rs`): a number beyond a double in a
/// field Bourse does not check is passed on as written by the fast path and refused by the
/// map walk, so bodies serde_json can skip but not build a `Value` from are not compared.
pub fn openai_request(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    let fast = parse_chat_request(&body);
    let beyond_double =
        serde_json::from_slice::<IgnoredAny>(data).is_ok() && serde_json::from_slice::<Value>(data).is_err();
    if let (Some(rest), false) = (data.strip_prefix(b"{"), beyond_double) {
        let mut forced = br#"{"model":0,"#.to_vec();
        forced.extend_from_slice(rest);
        let slow = parse_chat_request(&forced.into());
        match (&fast, slow) {
            (Ok(f), Ok(s)) => {
                assert_eq!(
                    (&f.model, f.stream, f.include_usage, f.max_output_tokens, f.needs),
                    (&s.model, s.stream, s.include_usage, s.max_output_tokens, s.needs)
                );
                assert_eq!(f.body(), s.body());
                let (mut f, mut s) = (f.clone(), s);
                let fb: Value = serde_json::from_slice(&upstream_chat_body(&mut f, "up/m")).expect("fast body JSON");
                let sb: Value = serde_json::from_slice(&upstream_chat_body(&mut s, "up/m")).expect("map body JSON");
                assert_eq!(fb, sb);
            }
            (Ok(f), Err(e)) => {
                panic!("the fast path accepted what the map walk refuses ({}): {:?}", e.message, f.model)
            }
            _ => {}
        }
    }
    if let Ok(mut req) = fast {
        assert_json(&upstream_chat_body(&mut req, "m"), "upstream body");
        if let Ok(conv) = openai::conversation(req.body()) {
            render_everywhere(&conv);
        }
    }
}

/// An Anthropic Messages request: whatever parses translates to every upstream dialect as
/// JSON, and its pass-through body is JSON.
pub fn anthropic_request(data: &[u8]) {
    if let Ok(mut req) = anthropic::parse_request(data) {
        if let Ok(conv) = anthropic::conversation(req.body()) {
            render_everywhere(&conv);
        }
        assert_json(&anthropic::passthrough_body(&mut req, "m"), "anthropic pass-through");
    }
}

/// The SSE parser: the same items whatever pieces the stream arrives in (empty pieces
/// included), and what it parsed, written back by `sse::write_item`, parses to the same
/// items. The first byte says how many cut points follow (up to 7), each a byte scaled to the
/// stream's length; the rest is the stream.
pub fn sse(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 8).min(rest.len());
    let (cuts, stream) = rest.split_at(n);
    let whole = sse::parse_all(stream);
    let mut points: Vec<usize> = cuts.iter().map(|&c| usize::from(c) * stream.len() / 255).collect();
    points.sort_unstable();
    let mut parser = sse::Parser::new();
    let mut pieces = Vec::new();
    let mut last = 0;
    for p in points {
        parser.feed(&stream[last..p], &mut pieces);
        last = p;
    }
    parser.feed(&stream[last..], &mut pieces);
    parser.finish(&mut pieces);
    assert_eq!(whole, pieces, "cut at {cuts:?}");
    let mut written = BytesMut::new();
    for item in &whole {
        sse::write_item(item, &mut written);
    }
    assert_eq!(sse::parse_all(&written), whole, "written as {:?}", String::from_utf8_lossy(&written));
}

/// The value every `env:NAME` secret reference resolves to ([`config`]), but `env:UNSET`.
const SECRET: &str = "fuzz-secret-7f3a9c";

/// Config loading: any text gives a config or an error naming a path, never a panic, and a
/// config's `Debug` never shows a secret. Texts that name a file anywhere (`catalog.file`,
/// `file:` secrets) are skipped: the fuzzer must not read the machine's files (`/dev/zero`
/// would never end).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(doc) = text.parse::<toml::Table>() {
        if mentions_file(&toml::Value::Table(doc)) {
            return;
        }
    }
    let env = |name: &str| (name != "UNSET").then(|| SECRET.to_string());
    if let Ok(cfg) = Config::from_toml(text, &env) {
        let shown = format!("{cfg:?}");
        assert!(!shown.contains(SECRET), "a secret in the config's Debug: {shown}");
    }
}

fn mentions_file(v: &toml::Value) -> bool {
    match v {
        toml::Value::String(s) => s.to_ascii_lowercase().contains("file"),
        toml::Value::Array(a) => a.iter().any(mentions_file),
        toml::Value::Table(t) => t.iter().any(|(k, v)| k.to_ascii_lowercase().contains("file") || mentions_file(v)),
        _ => false,
    }
}

/// Catalog loading: any text gives a catalog or findings, never a panic; a catalog finds
/// each of its models by id (both lookups), and loading the same text again gives the same
/// version.
pub fn catalog(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Catalog::load(text, &BTreeMap::new()) {
        Ok((cat, _)) => {
            for (i, m) in cat.models().iter().enumerate() {
                assert_eq!(m.id, format!("{}/{}", m.provider, m.model));
                assert_eq!(cat.get(&m.id).map(|g| &g.id), Some(&m.id));
                assert_eq!(cat.position_pair(&m.provider, &m.model), Some(i));
            }
            let again = Catalog::load(text, &BTreeMap::new()).map(|(c, _)| c.version);
            assert_eq!(again.ok(), Some(cat.version));
        }
        Err(findings) => {
            assert!(!findings.errors.is_empty(), "refused without an error");
            let _ = Catalog::describe(&findings);
        }
    }
}
