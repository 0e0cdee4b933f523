//! The fast path of chat request validation: a borrowed look at the bytes that checks the
//! same things as [`super::parse_chat_request`]'s map walk without building the map.
//!
//! A same-dialect request then goes upstream by splicing the model name into the client's
//! bytes (see [`super::upstream_chat_body`]): no map, no re-serialization. For a short chat
//! turn the map and its re-serialization were most of the gateway's own work per request;
//! for a long conversation they grow with every message, the splice does not.
//!
//! It accepts only requests the map walk accepts, and reads the same values from them
//! (checked by the tests below and the property test in `tests/translation_props.rs`).
//! Anything unusual — an error to report, duplicate keys — returns `None`, and the map walk
//! decides, with its exact messages. One difference, by design: a number too large for a
//! double (`1e400`) in a field Bourse does not check is passed on as written (the map walk
//! refuses the whole body), like every other field Bourse does not know.

use super::CHAT_ROLES;
use crate::canonical::{ChatRequest, Dialect, Needs, RawBody, StreamOptions};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The top-level fields the map walk checks, each left unparsed. Absent and `null` both
/// read as `None`, as the map walk accepts `null` for every optional field.
#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow)]
    temperature: Option<&'a RawValue>,
    #[serde(borrow)]
    top_p: Option<&'a RawValue>,
    #[serde(borrow)]
    n: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    presence_penalty: Option<&'a RawValue>,
    #[serde(borrow)]
    frequency_penalty: Option<&'a RawValue>,
    #[serde(borrow)]
    seed: Option<&'a RawValue>,
    #[serde(borrow)]
    stop: Option<&'a RawValue>,
    #[serde(borrow)]
    tools: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_choice: Option<&'a RawValue>,
    #[serde(borrow)]
    parallel_tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    response_format: Option<&'a RawValue>,
    #[serde(borrow)]
    logprobs: Option<&'a RawValue>,
    #[serde(borrow)]
    top_logprobs: Option<&'a RawValue>,
    #[serde(borrow)]
    logit_bias: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning_effort: Option<&'a RawValue>,
    #[serde(borrow)]
    store: Option<&'a RawValue>,
    #[serde(borrow)]
    service_tier: Option<&'a RawValue>,
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
fn is_bool(v: &RawValue) -> bool {
    matches!(v.get(), "true" | "false")
}
fn is_number(v: &RawValue) -> bool {
    v.get().starts_with(|c: char| c == '-' || c.is_ascii_digit())
}
/// What serde_json reads as an integer: an i64 or u64 (not `1.0`, not `1e3`, and not
/// `-0`, which it reads as a float).
fn is_integer(v: &RawValue) -> bool {
    let t = v.get();
    t != "-0" && (t.parse::<i64>().is_ok() || t.parse::<u64>().is_ok())
}
fn as_str(v: &RawValue) -> Option<Cow<'_, str>> {
    if is_string(v) {
        serde_json::from_str(v.get()).ok()
    } else {
        None
    }
}
fn as_f64(v: &RawValue) -> Option<f64> {
    if is_number(v) {
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
    let top: Top<'_> = serde_json::from_slice(body).ok()?;
    // Shapes, as the map walk checks them (null was read as absent).
    let shaped = |v: Option<&RawValue>, ok: fn(&RawValue) -> bool| v.is_none_or(ok);
    let string_or_array = |v: &RawValue| is_string(v) || is_array(v);
    let string_or_object = |v: &RawValue| is_string(v) || is_object(v);
    let all_shaped = shaped(top.stream, is_bool)
        && shaped(top.stream_options, is_object)
        && shaped(top.temperature, is_number)
        && shaped(top.top_p, is_number)
        && shaped(top.n, is_integer)
        && shaped(top.max_tokens, is_integer)
        && shaped(top.max_completion_tokens, is_integer)
        && shaped(top.presence_penalty, is_number)
        && shaped(top.frequency_penalty, is_number)
        && shaped(top.seed, is_integer)
        && shaped(top.stop, string_or_array)
        && shaped(top.tools, is_array)
        && shaped(top.tool_choice, string_or_object)
        && shaped(top.parallel_tool_calls, is_bool)
        && shaped(top.response_format, is_object)
        && shaped(top.logprobs, is_bool)
        && shaped(top.top_logprobs, is_integer)
        && shaped(top.logit_bias, is_object)
        && shaped(top.user, is_string)
        && shaped(top.metadata, is_object)
        && shaped(top.reasoning_effort, is_string)
        && shaped(top.store, is_bool)
        && shaped(top.service_tier, is_string);
    if !all_shaped {
        return None;
    }
    let in_range = |v: Option<&RawValue>, lo: f64, hi: f64| v.and_then(as_f64).is_none_or(|x| (lo..=hi).contains(&x));
    if !(in_range(top.temperature, 0.0, 2.0) && in_range(top.top_p, 0.0, 1.0) && in_range(top.n, 1.0, 128.0)) {
        return None;
    }

    let model_raw = top.model?;
    let model = as_str(model_raw)?;
    if model.trim().is_empty() {
        return None;
    }
    let messages: Vec<&RawValue> = parse(top.messages?)?;
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
    if let Some(list) = top.tools {
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
    if let Some(rf) = top.response_format {
        match parse::<Tagged<'_>>(rf)?.kind.and_then(as_str).as_deref() {
            Some("text") => {}
            Some("json_object" | "json_schema") => json_schema = true,
            _ => return None,
        }
    }

    let stream = top.stream.is_some_and(|v| v.get() == "true");
    let stream_options = match top.stream_options {
        None => StreamOptions::Absent,
        Some(o) => match parse::<Tagged<'_>>(o)?.include_usage.map(RawValue::get) {
            Some("true") => StreamOptions::IncludesUsage,
            _ => StreamOptions::Other,
        },
    };
    let include_usage = stream && stream_options == StreamOptions::IncludesUsage;
    let as_u64 = |v: Option<&RawValue>| v.and_then(|v| v.get().parse::<u64>().ok());
    let max_output_tokens = as_u64(top.max_completion_tokens).or_else(|| as_u64(top.max_tokens));
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
