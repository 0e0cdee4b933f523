//! Server-sent events from a decoded body, fed in arbitrary pieces: an
//! incremental line splitter that yields each event's data and each comment,
//! and a byte-level classifier for OpenAI chat chunks.
//!
//! The classifier does not parse JSON: it looks for `"content":"<non-empty>`
//! and `"sim_sent_us":<digits>` in the compact JSON that upstream-sim writes
//! and proxies pass through byte for byte. That keeps a content event at a few
//! hundred nanoseconds and no allocation.

/// One thing the splitter found.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// The `data` of a complete event (several `data:` lines joined by `\n`).
    Data(&'a [u8]),
    /// A comment line, without its leading `:`.
    Comment(&'a [u8]),
}

/// Splits a byte stream into SSE items. Lines end with `\n` or `\r\n`; `event:`,
/// `id:` and `retry:` fields are ignored. Buffers only an incomplete line and the
/// data of the event being read (both reused, so allocation stops after the first
/// few events).
#[derive(Debug, Default)]
pub struct SseSplitter {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

impl SseSplitter {
    pub fn feed(&mut self, mut input: &[u8], f: &mut impl FnMut(Item<'_>)) {
        while let Some(nl) = input.iter().position(|&b| b == b'\n') {
            let (line, rest) = input.split_at(nl);
            input = &rest[1..];
            if self.line.is_empty() {
                on_line(line, &mut self.data, &mut self.has_data, f);
            } else {
                self.line.extend_from_slice(line);
                on_line(&self.line, &mut self.data, &mut self.has_data, f);
                self.line.clear();
            }
        }
        self.line.extend_from_slice(input);
    }
}

fn on_line(line: &[u8], data: &mut Vec<u8>, has_data: &mut bool, f: &mut impl FnMut(Item<'_>)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.first() {
        None => {
            if *has_data {
                f(Item::Data(data));
                data.clear();
                *has_data = false;
            }
        }
        Some(b':') => f(Item::Comment(&line[1..])),
        Some(_) => {
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => (&line[..i], line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..])),
                None => (line, &[][..]),
            };
            if field == b"data" {
                if *has_data {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                *has_data = true;
            }
        }
    }
}

/// What an event's data means to the load generator.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// `[DONE]`.
    Done,
    /// A chunk with non-empty `delta.content`: one token; `sent_us` is upstream-sim's
    /// `sim_sent_us` stamp if present.
    Content { sent_us: Option<u64> },
    /// Anything else (the role chunk, finish, usage, errors).
    Other,
}

pub fn classify(data: &[u8]) -> Event {
    if data == b"[DONE]" {
        return Event::Done;
    }
    if !has_content(data) {
        return Event::Other;
    }
    let sent_us = value_after(data, b"\"sim_sent_us\":").and_then(|rest| {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
    });
    Event::Content { sent_us }
}

/// A `"content":"` whose string is not empty (so not the role chunk's `""`, not
/// `null`; `"reasoning_content"` does not match because of the leading quote).
fn has_content(data: &[u8]) -> bool {
    let key = b"\"content\":";
    let mut from = 0;
    while let Some(rest) = value_after(&data[from..], key) {
        if rest.len() >= 2 && rest[0] == b'"' && rest[1] != b'"' {
            return true;
        }
        from = data.len() - rest.len();
    }
    false
}

/// What follows the first `key` in `hay`, leading whitespace skipped.
fn value_after<'a>(hay: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = find(hay, key)?;
    let rest = &hay[at + key.len()..];
    let ws = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
    Some(&rest[ws..])
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, tail) = needle.split_first()?;
    let mut at = 0;
    while let Some(i) = hay[at..].iter().position(|&b| b == first) {
        let start = at + i;
        if hay[start + 1..].starts_with(tail) {
            return Some(start);
        }
        at = start + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Data(String),
        Comment(String),
    }

    fn split(input: &[u8], cuts: &[usize]) -> Vec<Owned> {
        let mut s = SseSplitter::default();
        let mut out = Vec::new();
        let mut at = 0;
        for &end in cuts.iter().chain([&input.len()]) {
            let end = end.clamp(at, input.len());
            s.feed(&input[at..end], &mut |item| {
                out.push(match item {
                    Item::Data(d) => Owned::Data(String::from_utf8_lossy(d).into_owned()),
                    Item::Comment(c) => Owned::Comment(String::from_utf8_lossy(c).into_owned()),
                })
            });
            at = end;
        }
        out
    }

    const STREAM: &[u8] = b": keep-alive\n\ndata: {\"a\":1}\n\nevent: x\r\ndata:two\r\ndata: lines\r\n\r\n\
        data: [DONE]\n\n: x-bourse-cost-usd=0.0001 x\n\ndata: unterminated";

    #[test]
    fn splits_across_any_boundary() {
        let want = vec![
            Owned::Comment(" keep-alive".into()),
            Owned::Data("{\"a\":1}".into()),
            Owned::Data("two\nlines".into()),
            Owned::Data("[DONE]".into()),
            Owned::Comment(" x-bourse-cost-usd=0.0001 x".into()),
        ];
        assert_eq!(split(STREAM, &[]), want);
        for a in 0..STREAM.len() {
            for b in a..STREAM.len() {
                assert_eq!(split(STREAM, &[a, b]), want, "cuts at {a}, {b}");
            }
        }
        let cuts: Vec<usize> = (1..STREAM.len()).collect();
        assert_eq!(split(STREAM, &cuts), want);
    }

    #[test]
    fn classifies_openai_chunks() {
        let role = br#"{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"sim_sent_us":1733000000000001}"#;
        let token = br#"{"id":"c","choices":[{"index":0,"delta":{"content":"lorem "},"logprobs":null,"finish_reason":null}],"usage":null,"sim_sent_us":  1733000000000002}"#;
        let bare = br#"{"choices":[{"delta":{"content": "x"}}]}"#;
        let reasoning = br#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#;
        let null = br#"{"choices":[{"delta":{"content":null}}]}"#;
        let usage = br#"{"choices":[],"usage":{"prompt_tokens":1},"sim_sent_us":1}"#;
        assert_eq!(classify(role), Event::Other);
        assert_eq!(classify(token), Event::Content { sent_us: Some(1_733_000_000_000_002) });
        assert_eq!(classify(bare), Event::Content { sent_us: None });
        assert_eq!(classify(reasoning), Event::Other);
        assert_eq!(classify(null), Event::Other);
        assert_eq!(classify(usage), Event::Other);
        assert_eq!(classify(b"[DONE]"), Event::Done);
        // An empty content first, a real one later in the same chunk.
        assert_eq!(classify(br#"{"content":"","x":{"content":"y"}}"#), Event::Content { sent_us: None });
    }

    #[test]
    fn find_works() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"", b"a"), None);
        assert_eq!(find(b"a", b""), None);
    }
}
