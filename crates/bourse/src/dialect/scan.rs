//! A validating JSON scanner over borrowed text: the members of an object and the elements
//! of an array, each left as its JSON text ([`Raw`]), with no tree, no allocation and no
//! unescaping unless asked.
//!
//! The hot path uses it twice per chat completion: to check a client's request (see
//! `openai/peek.rs`) and to read `usage` from the upstream's answer
//! (`openai::response_usage`: one checking pass over the answer, then [`Raw::fields`] over
//! the `usage` member, which needs no second check). It exists because it does both in
//! fewer instructions than serde_json (`cargo bench -p bourse --bench json`), and serde_json
//! stays the judge of anything unusual: the scanner only ever *accepts* text that serde_json
//! accepts, and every caller sends what it refuses to the serde_json path, so a refusal
//! here costs time, never a different answer.
//! Checked by the cases below and the property tests `response_usage_agrees_with_serde_json`
//! and `fast_path_agrees_with_the_map_walk` (`tests/translation_props.rs`). It is stricter
//! than serde_json where that is cheap: nesting deeper than serde_json's recursion limit, and
//! a lone UTF-16 surrogate in a `\u` escape, are refused.

use std::borrow::Cow;

/// serde_json refuses documents nested this deep when it builds values (its recursion limit
/// is 128 levels including the outermost); the scanner refuses them everywhere.
const MAX_DEPTH: usize = 127;

/// The text was not JSON the scanner accepts (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// One JSON value's text that [`members`] checked in full (directly, or as part of a value
/// that [`Raw::fields`] or [`Raw::elements`] took apart): the reason those two need not check
/// it again. Only this module makes one, but for [`Raw::checked`], whose callers vouch for
/// their text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a>(&'a str);

/// A member name as written, without its quotes. `escaped` names (containing `\`) are
/// not decoded: callers that look members up by name treat them as "can't tell".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key<'a> {
    pub text: &'a str,
    pub escaped: bool,
}

impl<'a> Raw<'a> {
    /// Text that [`members`] already accepted whole, to take apart again with
    /// [`Raw::fields`] or [`Raw::elements`] without checking it twice: a request body the
    /// peek checked (`RawBody`'s bytes), say. On text that was not checked these still never
    /// panic; they may just read it differently than serde_json would.
    pub fn checked(text: &'a str) -> Raw<'a> {
        // Checked text has only JSON's whitespace around it.
        Raw(text.trim_ascii())
    }

    pub fn get(self) -> &'a str {
        self.0
    }

    fn first(self) -> u8 {
        self.0.as_bytes().first().copied().unwrap_or(0)
    }

    pub fn is_null(self) -> bool {
        self.0 == "null"
    }

    pub fn is_string(self) -> bool {
        self.first() == b'"'
    }

    pub fn is_object(self) -> bool {
        self.first() == b'{'
    }

    pub fn is_array(self) -> bool {
        self.first() == b'['
    }

    /// The value of a non-negative integer; `None` for anything else, including one beyond
    /// u64. (A JSON number has no `+` and no leading zeros, so it parses as a u64 exactly
    /// when it is digits only.)
    pub fn as_u64(self) -> Option<u64> {
        self.0.parse().ok()
    }

    /// The value of a string, unescaped (borrowed when it has no escapes); `None` for other
    /// values.
    pub fn str(self) -> Option<Cow<'a, str>> {
        let inner = self.0.strip_prefix('"')?.strip_suffix('"')?;
        if inner.contains('\\') {
            serde_json::from_str(self.0).ok()
        } else {
            Some(Cow::Borrowed(inner))
        }
    }

    /// Calls `f` with each member of this object, in order, like [`members`] but without
    /// checking the text again: a `Raw` is text the scanner already checked, so this only
    /// finds where names and values end (about a third of the work). `Err` for other values.
    pub fn fields(self, mut f: impl FnMut(Key<'a>, Raw<'a>)) -> Result<(), Invalid> {
        let text = self.0;
        self.items(b'{', |b, i| {
            let (name_end, escaped) = string_end(b, i + 1)?;
            let key = Key { text: text.get(i + 1..name_end - 1).ok_or(Invalid)?, escaped };
            // Past the name: the colon, then the value.
            let start = ws(b, ws(b, name_end) + 1);
            let end = skim(b, start)?;
            f(key, Raw(text.get(start..end).ok_or(Invalid)?));
            Ok(end)
        })
    }

    /// Calls `f` with each element of this array, in order, without checking the text again
    /// (as [`Raw::fields`]). `Err` for other values.
    pub fn elements(self, mut f: impl FnMut(Raw<'a>)) -> Result<(), Invalid> {
        let text = self.0;
        self.items(b'[', |b, i| {
            let end = skim(b, i)?;
            f(Raw(text.get(i..end).ok_or(Invalid)?));
            Ok(end)
        })
    }

    /// The items of this container (`open` is `{` or `[`), each read by `item` from its
    /// first byte to the index just past it; the commas and whitespace between are skipped.
    #[inline(always)]
    fn items(self, open: u8, mut item: impl FnMut(&[u8], usize) -> Result<usize, Invalid>) -> Result<(), Invalid> {
        let b = self.0.as_bytes();
        if b.first() != Some(&open) {
            return Err(Invalid);
        }
        let close = if open == b'{' { b'}' } else { b']' };
        let mut i = ws(b, 1);
        if b.get(i) == Some(&close) {
            return Ok(());
        }
        loop {
            i = ws(b, item(b, i)?);
            match b.get(i) {
                Some(b',') => i = ws(b, i + 1),
                _ => return Ok(()),
            }
        }
    }
}

/// Checks that `text` is one JSON object with only whitespace around it, calling `f` with
/// each member, in order. `Err` if it is not (then `f` may have seen some members).
pub fn members<'a>(text: &'a str, mut f: impl FnMut(Key<'a>, Raw<'a>)) -> Result<(), Invalid> {
    let b = text.as_bytes();
    let i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err(Invalid);
    }
    let end = walk(b, i, |name, start, end| {
        if let Some((from, to, escaped)) = name {
            f(Key { text: &text[from..to], escaped }, Raw(&text[start..end]));
        }
    })?;
    if ws(b, end) == b.len() {
        Ok(())
    } else {
        Err(Invalid)
    }
}

/// Whether `text` is exactly one JSON value, with whitespace around it.
#[cfg(test)]
fn validate(text: &str) -> bool {
    let b = text.as_bytes();
    walk(b, ws(b, 0), |_, _, _| {}).is_ok_and(|end| ws(b, end) == b.len())
}

/// The index of the first non-whitespace byte at or after `i`. Compact JSON (what APIs send)
/// has none, so that case is one comparison.
#[inline(always)]
fn ws(b: &[u8], i: usize) -> usize {
    match b.get(i) {
        Some(&c) if c > b' ' => i,
        _ => ws_run(b, i),
    }
}

fn ws_run(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(i) {
        i += 1;
    }
    i
}

/// Skips the value starting at `b[i]` (no leading whitespace), checking it in full; the
/// index just past it. `inner` is told of each member (object) or element (array) of that
/// value, with its name's span and whether it has escapes (members only), and its value's
/// span. Iterative, with the open containers in a bit stack, so a deeply nested body costs
/// no Rust stack; one loop for every depth, so the caller's look costs a few instructions per
/// member and nothing below.
#[inline(always)]
fn walk(
    b: &[u8],
    mut i: usize,
    mut inner: impl FnMut(Option<(usize, usize, bool)>, usize, usize),
) -> Result<usize, Invalid> {
    // The open containers: `object` is the innermost; `outer` has a bit per enclosing one
    // (1 = object), innermost lowest.
    let mut outer: u128 = 0;
    let mut object = false;
    let mut depth = 0usize;
    // At depth 1: the current member's name span and escapes, and where its value starts.
    let mut name = None;
    let mut start = 0;
    loop {
        // A value starts at `i`.
        if depth == 1 {
            start = i;
        }
        match b.get(i) {
            Some(&open @ (b'{' | b'[')) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Invalid);
                }
                outer = outer << 1 | u128::from(object);
                object = open == b'{';
                i = ws(b, i + 1);
                match (b.get(i), object) {
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        // Empty: closed at once.
                        i += 1;
                        depth -= 1;
                        object = outer & 1 == 1;
                        outer >>= 1;
                    }
                    (_, true) => {
                        let (end, n) = member_name(b, i)?;
                        if depth == 1 {
                            name = Some(n);
                        }
                        i = end;
                        continue;
                    }
                    (_, false) => continue,
                }
            }
            Some(b'"') => i = string_end(b, i + 1)?.0,
            Some(b't') => i = literal(b, i, b"true")?,
            Some(b'f') => i = literal(b, i, b"false")?,
            Some(b'n') => i = literal(b, i, b"null")?,
            Some(b'-' | b'0'..=b'9') => i = number_end(b, i)?,
            _ => return Err(Invalid),
        }
        // After a value: close containers until one continues with a comma.
        loop {
            if depth == 0 {
                return Ok(i);
            }
            if depth == 1 {
                inner(name.take(), start, i);
            }
            i = ws(b, i);
            match (b.get(i), object) {
                (Some(b','), true) => {
                    let (end, n) = member_name(b, ws(b, i + 1))?;
                    if depth == 1 {
                        name = Some(n);
                    }
                    i = end;
                    break;
                }
                (Some(b','), false) => {
                    i = ws(b, i + 1);
                    break;
                }
                (Some(b'}'), true) | (Some(b']'), false) => {
                    // The container closed was a value one level up: loop to report it.
                    i += 1;
                    depth -= 1;
                    object = outer & 1 == 1;
                    outer >>= 1;
                }
                _ => return Err(Invalid),
            }
        }
    }
}

/// The index just past the checked value that starts at `b[i]`: strings by their quotes,
/// containers by counting brackets outside strings, anything else up to the next
/// delimiter. Only for text [`walk`] accepted; `Err` if it was not (never a panic).
fn skim(b: &[u8], mut i: usize) -> Result<usize, Invalid> {
    match b.get(i) {
        Some(b'"') => Ok(string_end(b, i + 1)?.0),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            loop {
                match b.get(i) {
                    Some(b'"') => {
                        i = string_end(b, i + 1)?.0;
                        continue;
                    }
                    Some(b'{' | b'[') => depth += 1,
                    Some(b'}' | b']') => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(i + 1);
                        }
                    }
                    Some(_) => {}
                    None => return Err(Invalid),
                }
                i += 1;
            }
        }
        Some(_) => {
            while let Some(c) = b.get(i) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                    break;
                }
                i += 1;
            }
            Ok(i)
        }
        None => Err(Invalid),
    }
}

/// Skips `"name" :` and the whitespace after it: the index of the value, and the name's
/// span (without quotes) and whether it has escapes.
#[inline(always)]
fn member_name(b: &[u8], i: usize) -> Result<(usize, (usize, usize, bool)), Invalid> {
    if b.get(i) != Some(&b'"') {
        return Err(Invalid);
    }
    let (end, escaped) = string_end(b, i + 1)?;
    let after = ws(b, end);
    if b.get(after) != Some(&b':') {
        return Err(Invalid);
    }
    Ok((ws(b, after + 1), (i + 1, end - 1, escaped)))
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, Invalid> {
    if b.get(i..i + word.len()) == Some(word) {
        Ok(i + word.len())
    } else {
        Err(Invalid)
    }
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, as RFC 8259 and serde_json.
#[inline]
fn number_end(b: &[u8], mut i: usize) -> Result<usize, Invalid> {
    let digits = |b: &[u8], mut i: usize| {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            Err(Invalid)
        } else {
            Ok(i)
        }
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i)?,
        _ => return Err(Invalid),
    }
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        i = digits(b, i)?;
    }
    Ok(i)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bytes of `w` that are zero, flagged by their high bit. Only the lowest flag is exact
/// (a borrow can flag a byte above a real zero), which is all [`string_end`] reads.
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGHS
}

/// From just past a string's opening quote: the index just past its closing quote, and
/// whether it has escapes. Control characters are refused, escapes checked (a `\u` high
/// surrogate must be followed by a `\u` low one); other bytes pass as they are (the text is a
/// `&str`, so already UTF-8). Eight bytes at a time until something needs a look.
#[inline(always)]
fn string_end(b: &[u8], mut i: usize) -> Result<(usize, bool), Invalid> {
    let mut escaped = false;
    loop {
        while let Some(chunk) = b.get(i..i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            let stop = zero_bytes(w ^ (ONES * u64::from(b'"')))
                | zero_bytes(w ^ (ONES * u64::from(b'\\')))
                | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS);
            if stop != 0 {
                i += (stop.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        match b.get(i) {
            Some(b'"') => return Ok((i + 1, escaped)),
            Some(b'\\') => {
                escaped = true;
                i = escape_end(b, i + 1)?;
            }
            Some(&c) if c < 0x20 => return Err(Invalid),
            Some(_) => i += 1,
            None => return Err(Invalid),
        }
    }
}

/// From just past a backslash: the index past the escape.
#[inline(never)]
fn escape_end(b: &[u8], i: usize) -> Result<usize, Invalid> {
    match b.get(i) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 1),
        Some(b'u') => {
            let unit = hex4(b, i + 1)?;
            match unit {
                0xD800..=0xDBFF => {
                    if b.get(i + 5..i + 7) != Some(b"\\u") {
                        return Err(Invalid);
                    }
                    match hex4(b, i + 7)? {
                        0xDC00..=0xDFFF => Ok(i + 11),
                        _ => Err(Invalid),
                    }
                }
                0xDC00..=0xDFFF => Err(Invalid),
                _ => Ok(i + 5),
            }
        }
        _ => Err(Invalid),
    }
}

fn hex4(b: &[u8], i: usize) -> Result<u32, Invalid> {
    let digits = b.get(i..i + 4).ok_or(Invalid)?;
    digits.iter().try_fold(0u32, |acc, &c| {
        let d = (c as char).to_digit(16).ok_or(Invalid)?;
        Ok(acc * 16 + d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(text).is_ok()
    }

    #[test]
    fn agrees_with_serde_json_on_valid_and_invalid_text() {
        let cases = [
            "{}",
            "[]",
            " { } ",
            "0",
            "-0",
            "-0.5e+10",
            "1E5",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "1e+",
            "+1",
            "true",
            "tru",
            "nul",
            "null ",
            "\"\"",
            "\"abc",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
            "\"\\u00g9\"",
            "\"\\x\"",
            "\"\\ud83d\\ude00\"",
            "\"tab\there\"",
            "\"line\nbreak\"",
            "{\"a\":1,}",
            "{\"a\":1 \"b\":2}",
            "{\"a\" 1}",
            "{1:2}",
            "[1,]",
            "[,1]",
            "[1 2]",
            "[1]]",
            "{\"a\":[1,{\"b\":[true,false,null]}],\"c\":\"d\"}",
            "{\"a\":1}x",
            "{\"a\":1} {}",
            "\"héllo wörld, a string longer than eight bytes \\n with escapes\"",
            "[\"0123456789abcdef\\\"\",\"x\"]",
        ];
        for text in cases {
            assert_eq!(validate(text), serde_accepts(text), "{text:?}");
        }
    }

    #[test]
    fn refuses_what_serde_json_would_refuse_to_build() {
        // A lone surrogate, and nesting past serde_json's recursion limit.
        assert!(!validate("\"\\ud83d\""));
        assert!(!validate("\"\\ude00\""));
        assert!(!validate("\"\\ud83dx\""));
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(validate(&deep(MAX_DEPTH)));
        assert!(serde_accepts(&deep(MAX_DEPTH)));
        assert!(!validate(&deep(MAX_DEPTH + 1)));
        assert!(!serde_accepts(&deep(MAX_DEPTH + 1)));
    }

    fn all_members(text: &str) -> Result<Vec<(Key<'_>, Raw<'_>)>, Invalid> {
        let mut out = Vec::new();
        members(text, |k, v| out.push((k, v)))?;
        Ok(out)
    }

    #[test]
    fn members_and_elements_are_the_values_as_written() {
        let doc = r#" {"model" : "m", "n":[1, {"x":2} ,"s", []], "e\u0078":null, "o":{}, "last":{"a":[{}]}} "#;
        let members = all_members(doc).unwrap();
        let names: Vec<_> = members.iter().map(|(k, _)| (k.text, k.escaped)).collect();
        assert_eq!(names, [("model", false), ("n", false), ("e\\u0078", true), ("o", false), ("last", false)]);
        let values: Vec<_> = members.iter().map(|(_, v)| v.get()).collect();
        assert_eq!(values, ["\"m\"", "[1, {\"x\":2} ,\"s\", []]", "null", "{}", "{\"a\":[{}]}"]);
        let mut elements = Vec::new();
        members[1].1.elements(|e| elements.push(e.get())).unwrap();
        assert_eq!(elements, ["1", "{\"x\":2}", "\"s\"", "[]"]);
        let mut inner = Vec::new();
        super::members(members[4].1.get(), |k, v| inner.push((k.text, v.get()))).unwrap();
        assert_eq!(inner, [("a", "[{}]")]);
        assert_eq!(members[0].1.str().as_deref(), Some("m"));
        assert_eq!(Raw("\"a\\u0062c\"").str().as_deref(), Some("abc"));
        assert_eq!(Raw("1").str(), None);
        assert_eq!(all_members("{}").unwrap(), []);
        assert!(super::members("1", |_, _| ()).is_err());
        assert!(Raw("{}").elements(|_| ()).is_err());
        let mut none = 0;
        Raw("[]").elements(|_| none += 1).unwrap();
        assert_eq!(none, 0);
    }

    /// `fields` reads a checked object exactly as `members` does: names, escapes and value
    /// spans, through strings holding brackets, quotes and escapes, nesting, whitespace and
    /// numbers in every form.
    #[test]
    fn fields_of_a_checked_object_are_its_members() {
        let docs = [
            r#"{}"#,
            r#" { } "#,
            r#"{"a":1}"#,
            r#"{ "a" : -1.5e+3 , "b":true,"c" :false, "d": null }"#,
            r#"{"s":"x}]\"{[","t\"k":"\u0041","n":[1,[2,{"z":"]}"}]],"o":{"p":{"q":[]}}, "e":""}"#,
            "{\n\t\"w\" :\r\n {\"x\" : [ 1 , 2 ] } ,\n \"y\":0\n}",
            r#"{"prompt_tokens":8,"completion_tokens":12,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0}}"#,
        ];
        for doc in docs {
            let object = Raw(doc.trim());
            assert!(validate(doc), "{doc}");
            let mut fields = Vec::new();
            object.fields(|k, v| fields.push((k, v))).unwrap();
            assert_eq!(fields, all_members(doc).unwrap(), "{doc}");
        }
        assert!(Raw("[1]").fields(|_, _| ()).is_err());
        assert!(Raw("null").fields(|_, _| ()).is_err());
    }

    #[test]
    fn a_document_is_valid_only_to_its_end() {
        assert!(all_members("{\"a\":1}  \n").is_ok());
        assert!(all_members("{\"a\":1} x").is_err());
        assert!(all_members("{\"a\":1").is_err());
        assert!(all_members("{\"a\":[1,2}").is_err());
        assert!(all_members("[1]").is_err());
        assert!(all_members("{\"a\":1,\"b\":x,\"c\":2}").is_err());
    }
}
