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
//! escaped member name — returns `None`, and the map walk decides, with its exact messages. One difference, by design: a number too large for a
//! double (`1e400`) in a field Bourse does not check is passed on as written (the map walk
//! refuses the whole body), like every other field Bourse does not know.

use super::{CHAT_FIELDS, CHAT_RANGES, CHAT_ROLES};
use crate::canonical::{ChatRequest, Dialect, Needs, RawBody, StreamOptions};
use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The top-level members of the body, borrowed: the ones validation looks at, by the
/// position of their name in [`CHAT_FIELDS`] (then `model`, `messages`), each left unparsed.
/// `null` reads as absent, as the map walk accepts `null` for every optional field.
/// `None` for a body that is not an object, a member named with escapes, or a looked-at
/// member given twice (the map walk then decides, keeping the last one).
struct Members<'a>([Option<&'a RawValue>; FIELDS]);

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

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Walk;
        impl<'de> Visitor<'de> for Walk {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                use serde::de::Error;
                let mut found = [None; FIELDS];
                let mut seen = [false; FIELDS];
                while let Some(name) = map.next_key::<&'de str>()? {
                    let Some(i) = field_index(name) else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    };
                    if std::mem::replace(&mut seen[i], true) {
                        return Err(A::Error::custom("duplicate field"));
                    }
                    let value: &'de RawValue = map.next_value()?;
                    found[i] = (value.get() != "null").then_some(value);
                }
                Ok(Members(found))
            }
        }
        d.deserialize_map(Walk)
    }
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// A content part, a tool or a response format: only its `type`/`function`.
#[derive(Deserialize)]
struct Tagged<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    function: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    include_usage: Option<&'a RawValue>,
}

/// JSON value kinds, from the first byte of a (valid) raw value.
fn is_string(v: &RawValue) -> bool {
    v.get().starts_with('"')
}
fn is_object(v: &RawValue) -> bool {
    v.get().starts_with('{')
}
fn is_array(v: &RawValue) -> bool {
    v.get().starts_with('[')
}
fn as_str(v: &RawValue) -> Option<Cow<'_, str>> {
    if is_string(v) {
        serde_json::from_str(v.get()).ok()
    } else {
        None
    }
}
fn as_f64(v: &RawValue) -> Option<f64> {
    if crate::dialect::Shape::Number.matches_raw(v) {
        v.get().parse().ok()
    } else {
        None
    }
}
fn parse<'a, T: Deserialize<'a>>(v: &'a RawValue) -> Option<T> {
    serde_json::from_str(v.get()).ok()
}

/// The request, if the fast path can vouch for it; `None` sends it to the map walk.
pub(super) fn peek(body: &Bytes) -> Option<ChatRequest> {
    let Members(top) = serde_json::from_slice(body).ok()?;
    let field = |name: &str| field_index(name).and_then(|i| top[i]);
    if !CHAT_FIELDS.iter().zip(&top).all(|((_, shape), v)| v.is_none_or(|v| shape.matches_raw(v))) {
        return None;
    }
    let in_range =
        |&(name, lo, hi): &(&str, f64, f64)| field(name).and_then(as_f64).is_none_or(|x| (lo..=hi).contains(&x));
    if !CHAT_RANGES.iter().all(in_range) {
        return None;
    }

    let model_raw = top[MODEL]?;
    let model = as_str(model_raw)?;
    if model.trim().is_empty() {
        return None;
    }
    let messages: Vec<&RawValue> = parse(top[MESSAGES]?)?;
    if messages.is_empty() {
        return None;
    }
    let mut vision = false;
    for m in messages {
        if !is_object(m) {
            return None;
        }
        let m: Message<'_> = parse(m)?;
        if !CHAT_ROLES.contains(&&*as_str(m.role?)?) {
            return None;
        }
        match m.content {
            None => {}
            Some(c) if is_string(c) => {}
            Some(c) if is_array(c) => {
                let parts: Vec<&RawValue> = parse(c)?;
                for p in parts.into_iter().filter(|p| is_object(p)) {
                    let p: Tagged<'_> = parse(p)?;
                    vision |= p.kind.and_then(as_str).as_deref() == Some("image_url");
                }
            }
            Some(_) => return None,
        }
    }
    let mut tools = false;
    if let Some(list) = field("tools") {
        let list: Vec<&RawValue> = parse(list)?;
        tools = !list.is_empty();
        for t in list {
            if !is_object(t) {
                return None;
            }
            let f = parse::<Tagged<'_>>(t)?.function.filter(|f| is_object(f))?;
            if !parse::<Tagged<'_>>(f)?.name.is_some_and(is_string) {
                return None;
            }
        }
    }
    let mut json_schema = false;
    if let Some(rf) = field("response_format") {
        match parse::<Tagged<'_>>(rf)?.kind.and_then(as_str).as_deref() {
            Some("text") => {}
            Some("json_object" | "json_schema") => json_schema = true,
            _ => return None,
        }
    }

    let stream = field("stream").is_some_and(|v| v.get() == "true");
    let stream_options = match field("stream_options") {
        None => StreamOptions::Absent,
        Some(o) => match parse::<Tagged<'_>>(o)?.include_usage.map(RawValue::get) {
            Some("true") => StreamOptions::IncludesUsage,
            _ => StreamOptions::Other,
        },
    };
    let include_usage = stream && stream_options == StreamOptions::IncludesUsage;
    let as_u64 = |v: Option<&RawValue>| v.and_then(|v| v.get().parse::<u64>().ok());
    let max_output_tokens = as_u64(field("max_completion_tokens")).or_else(|| as_u64(field("max_tokens")));
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
