//! Server-sent events: an incremental parser for upstream streams and a writer for ours.
//!
//! The parser follows the WHATWG event-stream rules that matter for LLM APIs: lines end in
//! `\n`, `\r\n` or `\r`; `data:` lines of one event are joined with `\n`; a blank line
//! dispatches the event; lines starting with `:` are comments (DeepSeek sends
//! `: keep-alive` while a request waits in its queue) and are surfaced so a proxy can pass
//! them on; unknown fields are ignored. Bytes may arrive split anywhere, even inside a
//! UTF-8 character or between `\r` and `\n`.

use bytes::{BufMut, Bytes, BytesMut};

/// One parsed item of an event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Event(Event),
    /// A comment line's text (after the colon and one optional space).
    Comment(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; None means the default "message".
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

/// Incremental parser: feed bytes as they arrive, collect items.
#[derive(Debug, Default)]
pub struct Parser {
    buf: BytesMut,
    /// The previous chunk ended in `\r`; a leading `\n` in the next one belongs to it.
    skip_lf: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; complete items are appended to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Item>) {
        // An empty chunk says nothing about the byte after the `\r`: keep waiting for it.
        if self.skip_lf && !chunk.is_empty() {
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
            self.skip_lf = false;
        }
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        let mut i = 0;
        let buf = std::mem::take(&mut self.buf);
        while i < buf.len() {
            let b = buf[i];
            if b == b'\n' || b == b'\r' {
                self.line(&buf[start..i], out);
                if b == b'\r' {
                    if i + 1 < buf.len() {
                        if buf[i + 1] == b'\n' {
                            i += 1;
                        }
                    } else {
                        self.skip_lf = true;
                    }
                }
                start = i + 1;
            }
            i += 1;
        }
        self.buf = buf;
        let _ = self.buf.split_to(start);
    }

    /// End of stream: a final event that lacks its blank line is still dispatched, since
    /// several servers omit it; a partial last line is treated as complete.
    pub fn finish(&mut self, out: &mut Vec<Item>) {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.line(&rest, out);
        }
        self.dispatch(out);
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<Item>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        let text = String::from_utf8_lossy(line);
        if let Some(comment) = text.strip_prefix(':') {
            out.push(Item::Comment(comment.strip_prefix(' ').unwrap_or(comment).to_string()));
            return;
        }
        let (field, value) = match text.find(':') {
            Some(at) => {
                let v = &text[at + 1..];
                (&text[..at], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&text[..], ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            "id" => self.id = Some(value.to_string()),
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Item>) {
        if self.has_data {
            out.push(Item::Event(Event {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
                id: self.id.take(),
            }));
            self.has_data = false;
        } else {
            // An event with no data is not dispatched (per the spec), and its fields reset.
            self.event = None;
            self.id = None;
        }
    }
}

/// Serialize one item in canonical form (`event:` / `id:` / `data:` lines, blank line).
pub fn write_item(item: &Item, out: &mut BytesMut) {
    match item {
        Item::Comment(c) => {
            for line in c.split('\n') {
                out.put_slice(b": ");
                out.put_slice(line.as_bytes());
                out.put_u8(b'\n');
            }
            out.put_u8(b'\n');
        }
        Item::Event(e) => {
            if let Some(id) = &e.id {
                out.put_slice(b"id: ");
                out.put_slice(id.as_bytes());
                out.put_u8(b'\n');
            }
            write_event(e.event.as_deref(), &e.data, out)
        }
    }
}

/// Write an event with the given name (None = default) and data.
pub fn write_event(event: Option<&str>, data: &str, out: &mut BytesMut) {
    out.reserve(data.len() + 16);
    if let Some(name) = event {
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_u8(b'\n');
    }
    for line in data.split('\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// A one-event frame as bytes (for error events and `[DONE]`).
pub fn frame(data: &str) -> Bytes {
    let mut out = BytesMut::new();
    write_event(None, data, &mut out);
    out.freeze()
}

/// Parse a complete body (tests, fixtures, tools).
pub fn parse_all(body: &[u8]) -> Vec<Item> {
    let mut p = Parser::new();
    let mut out = Vec::new();
    p.feed(body, &mut out);
    p.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events(items: &[Item]) -> Vec<&Event> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e),
                Item::Comment(_) => None,
            })
            .collect()
    }

    #[test]
    fn basic_stream_with_comments_crlf_and_multiline_data() {
        let body = b": keep-alive\r\n\r\ndata: {\"a\":1}\r\n\r\nevent: ping\ndata: x\ndata: y\n\ndata: [DONE]\n\n";
        let items = parse_all(body);
        assert_eq!(items[0], Item::Comment("keep-alive".into()));
        let ev = events(&items);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].data, "{\"a\":1}");
        assert_eq!(ev[1].event.as_deref(), Some("ping"));
        assert_eq!(ev[1].data, "x\ny");
        assert_eq!(ev[2].data, "[DONE]");
    }

    #[test]
    fn cr_split_across_chunks_is_one_line_end() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.feed(b"data: a\r", &mut out);
        p.feed(b"\n\r", &mut out);
        p.feed(b"\ndata: b\n\n", &mut out);
        let ev = events(&out);
        assert_eq!(ev.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn empty_chunk_between_cr_and_lf_is_not_a_blank_line() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.feed(b"data: a\r", &mut out);
        p.feed(b"", &mut out);
        p.feed(b"\ndata: b\n\n", &mut out);
        assert_eq!(events(&out).iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["a\nb"]);
    }

    #[test]
    fn field_without_space_and_unknown_fields() {
        let items = parse_all(b"data:x\nretry: 10\nfoo: bar\n\nevent: only\n\n");
        let ev = events(&items);
        assert_eq!(ev.len(), 1, "an event without data is not dispatched");
        assert_eq!(ev[0].data, "x");
        assert_eq!(ev[0].event, None);
    }

    #[test]
    fn final_event_without_blank_line_is_kept() {
        let ev = parse_all(b"data: last");
        assert_eq!(events(&ev)[0].data, "last");
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            proptest::option::of("[a-z_]{1,12}"),
            // data may hold newlines and any non-CR/LF text, including multibyte chars
            proptest::collection::vec("[^\r\n]{0,20}", 1..4).prop_map(|lines| lines.join("\n")),
        )
            .prop_map(|(event, data)| Event { event, data, id: None })
    }

    proptest! {
        #[test]
        fn roundtrip_under_any_chunking(evs in proptest::collection::vec(arb_event(), 0..8), cuts in proptest::collection::vec(0usize..400, 0..10)) {
            let mut body = BytesMut::new();
            for e in &evs {
                write_event(e.event.as_deref(), &e.data, &mut body);
            }
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            points.sort_unstable();
            let mut p = Parser::new();
            let mut out = Vec::new();
            let mut last = 0;
            for c in points {
                p.feed(&body[last..c], &mut out);
                last = c;
            }
            p.feed(&body[last..], &mut out);
            p.finish(&mut out);
            let got: Vec<Event> = out.into_iter().filter_map(|i| match i { Item::Event(e) => Some(e), Item::Comment(_) => None }).collect();
            prop_assert_eq!(got, evs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut p = Parser::new();
            let mut out = Vec::new();
            for c in &chunks {
                p.feed(c, &mut out);
            }
            p.finish(&mut out);
        }
    }
}
