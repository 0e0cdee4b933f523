//! The fast path of chat request validation: a borrowed look at the bytes that checks the
//! same things as [`super::parse_chat_request`]'s map walk without building the map.
//!
//! A same-dialect request then goes upstream by splicing the model name into the client's
//! bytes (see [`super::upstream_chat_body`]): no map, no re-serialization. For a short chat
//! turn the map and its re-serialization were most of the gateway's own work per request;
//! for a long conversation they grow with every message, the splice does not.
//!
//! Both read the same tables ([`CHAT_FIELDS`], [`CHAT_RANGES`], [`CHAT_ROLES`]). It accepts
//! only requests the map walk accepts, and reads the same values from them (checked by
//! `pass_through_keeps_the_clients_bytes_but_the_model` in `openai.rs` and the property test
//! in `tests/translation_props.rs`). Anything unusual — an error to report, a duplicate or
//! escaped member name — returns `None`, and the map walk decides, with its exact messages.
//! The bytes are read by [`crate::dialect::scan`] (~40% fewer instructions than serde_json's
//! `RawValue`). One difference, by design: a number too large for
//! a double (`1e400`) in a field Bourse does not check is passed on as written (the map walk
//! refuses the whole body), like every other field Bourse does not know.

use super::{CHAT_FIELDS, CHAT_RANGES, CHAT_ROLES};
use crate::canonical::{ChatRequest, Dialect, Needs, RawBody, StreamOptions};
use crate::dialect::scan::{self, Key, Raw};
use crate::dialect::Shape;
use bytes::Bytes;

const FIELDS: usize = CHAT_FIELDS.len() + 2;
const MODEL: usize = CHAT_FIELDS.len();
const MESSAGES: usize = CHAT_FIELDS.len() + 1;

fn field_index(name: &str) -> Option<usize> {
    match name {
        "model" => Some(MODEL),
        "messages" => Some(MESSAGES),
        _ => CHAT_FIELDS.iter().position(|(f, _)| *f == name),
    }
}

/// The members of an object named by `index` (by position), each left as JSON text, `null`
/// read as absent (the map walk accepts `null` for every optional field); `each` lists the
/// object's members ([`scan::members`] for the body, which checks it, [`Raw::fields`] below
/// it, which need no second check). `None` for a value that is not an object, a member named
/// with escapes, or a looked-at member given twice (the map walk then decides, keeping the
/// last one).
fn pick<'a, const N: usize>(
    each: impl FnOnce(&mut dyn FnMut(Key<'a>, Raw<'a>)) -> Result<(), scan::Invalid>,
    index: impl Fn(&str) -> Option<usize>,
) -> Option<[Option<Raw<'a>>; N]> {
    let mut found = [None; N];
    let mut seen = [false; N];
    let mut plain = true;
    each(&mut |name: Key<'a>, value: Raw<'a>| {
        if name.escaped {
            plain = false;
        } else if let Some(i) = index(name.text) {
            plain &= !std::mem::replace(&mut seen[i], true);
            found[i] = (!value.is_null()).then_some(value);
        }
    })
    .ok()?;
    plain.then_some(found)
}

/// A message, a content part, a tool or a response format: the members looked at.
const ROLE: usize = 0;
const CONTENT: usize = 1;
const TYPE: usize = 0;
const FUNCTION: usize = 1;
const NAME: usize = 2;
const INCLUDE_USAGE: usize = 3;

fn message_member(name: &str) -> Option<usize> {
    match name {
        "role" => Some(ROLE),
        "content" => Some(CONTENT),
        _ => None,
    }
}

fn tagged_member(name: &str) -> Option<usize> {
    match name {
        "type" => Some(TYPE),
        "function" => Some(FUNCTION),
        "name" => Some(NAME),
        "include_usage" => Some(INCLUDE_USAGE),
        _ => None,
    }
}

fn tagged(v: Raw<'_>) -> Option<[Option<Raw<'_>>; 4]> {
    pick(|f| v.fields(f), tagged_member)
}

fn as_f64(v: Raw<'_>) -> Option<f64> {
    if Shape::Number.matches_raw(v.get()) {
        v.get().parse().ok()
    } else {
        None
    }
}

fn elements(v: Raw<'_>) -> Option<Vec<Raw<'_>>> {
    let mut out = Vec::new();
    v.elements(|e| out.push(e)).ok()?;
    Some(out)
}

/// The request, if the fast path can vouch for it; `None` sends it to the map walk.
pub(super) fn peek(body: &Bytes) -> Option<ChatRequest> {
    let text = std::str::from_utf8(body).ok()?;
    let top: [_; FIELDS] = pick(|f| scan::members(text, f), field_index)?;
    let field = |name: &str| field_index(name).and_then(|i| top[i]);
    if !CHAT_FIELDS.iter().zip(&top).all(|((_, shape), v)| v.is_none_or(|v| shape.matches_raw(v.get()))) {
        return None;
    }
    let in_range =
        |&(name, lo, hi): &(&str, f64, f64)| field(name).and_then(as_f64).is_none_or(|x| (lo..=hi).contains(&x));
    if !CHAT_RANGES.iter().all(in_range) {
        return None;
    }

    let model_raw = top[MODEL]?;
    let model = model_raw.str()?;
    if model.trim().is_empty() {
        return None;
    }
    let messages = elements(top[MESSAGES]?)?;
    if messages.is_empty() {
        return None;
    }
    let mut vision = false;
    for m in messages {
        let [role, content] = pick(|f| m.fields(f), message_member)?;
        if !CHAT_ROLES.contains(&&*role?.str()?) {
            return None;
        }
        match content {
            None => {}
            Some(c) if c.is_string() => {}
            Some(c) if c.is_array() => {
                for part in elements(c)?.into_iter().filter(|p| p.is_object()) {
                    vision |= tagged(part)?[TYPE].and_then(Raw::str).as_deref() == Some("image_url");
                }
            }
            Some(_) => return None,
        }
    }
    let mut tools = false;
    if let Some(list) = field("tools") {
        let list = elements(list)?;
        tools = !list.is_empty();
        for t in list {
            let function = tagged(t)?[FUNCTION].filter(|f| f.is_object())?;
            if !tagged(function)?[NAME].is_some_and(Raw::is_string) {
                return None;
            }
        }
    }
    let mut json_schema = false;
    if let Some(rf) = field("response_format") {
        match tagged(rf)?[TYPE].and_then(Raw::str).as_deref() {
            Some("text") => {}
            Some("json_object" | "json_schema") => json_schema = true,
            _ => return None,
        }
    }

    let stream = field("stream").is_some_and(|v| v.get() == "true");
    let stream_options = match field("stream_options") {
        None => StreamOptions::Absent,
        Some(o) => match tagged(o)?[INCLUDE_USAGE].map(Raw::get) {
            Some("true") => StreamOptions::IncludesUsage,
            _ => StreamOptions::Other,
        },
    };
    let include_usage = stream && stream_options == StreamOptions::IncludesUsage;
    let max_output_tokens =
        field("max_completion_tokens").and_then(Raw::as_u64).or_else(|| field("max_tokens").and_then(Raw::as_u64));
    // `model_raw` borrows from `body`: its offset there is where the value starts.
    let start = model_raw.get().as_ptr() as usize - body.as_ptr() as usize;
    let raw = RawBody { bytes: body.clone(), model: start..start + model_raw.get().len(), stream_options };
    let needs = Needs { tools, json_schema, vision };
    Some(ChatRequest::new(
        Dialect::OpenAi,
        model.into_owned(),
        stream,
        include_usage,
        max_output_tokens,
        needs,
        Some(raw),
    ))
}
