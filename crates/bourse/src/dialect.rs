//! Wire formats spoken at the edges, each converting to and from [`crate::canonical`].
//!
//! Every dialect offers the same pieces: request → [`Conversation`] (client side),
//! [`Conversation`] → request body (upstream side), response body ↔ [`Reply`], and for
//! streams a [`Decode`] (upstream events → [`Delta`]s) and an [`Encode`] ([`Delta`]s →
//! client events). Same-dialect traffic skips all of this and passes through.
//!
//! [`Conversation`]: crate::canonical::Conversation
//! [`Reply`]: crate::canonical::Reply

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod replay;
pub mod responses;
// Public only so the fuzz targets (`fuzz/`) and their corpus test can check the scanner
// against serde_json directly; not part of the library's interface.
#[doc(hidden)]
pub mod scan;

use crate::canonical::Delta;
use crate::error::Error;
use crate::sse;
use bytes::BytesMut;
use serde_json::Value;

/// An id of our own for something the other dialect requires and the upstream did not
/// name (a message, a tool call): `prefix` + 24 random alphanumerics.
pub(crate) fn synthetic_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(24));
    id
}

/// Upstream stream events → canonical deltas. Stateful: one per stream.
pub trait Decode: Send {
    /// One SSE event from the upstream. An in-stream error event (Anthropic `error`,
    /// OpenAI `{"error":…}`) or unparseable data becomes `Err`; the stream then ends.
    fn event(&mut self, ev: &sse::Event, out: &mut Vec<Delta>) -> Result<(), Error>;
    /// The upstream body ended cleanly: emit whatever is still pending (e.g. a stop
    /// reason held back until usage arrived).
    fn finish(&mut self, out: &mut Vec<Delta>);
    /// Whether the events so far reached the answer's end as the dialect marks it (a finish
    /// or stop reason, `[DONE]`). A body that ends cleanly before that was cut short: its
    /// answer must not be passed off as complete.
    fn complete(&self) -> bool;
}

/// Canonical deltas → the client's stream events. Stateful: one per stream.
pub trait Encode: Send {
    fn delta(&mut self, d: &Delta, out: &mut BytesMut);
    /// The stream is complete: close open blocks and end it the way the dialect does
    /// (`[DONE]`, `message_stop`).
    fn finish(&mut self, out: &mut BytesMut);
    /// The stream broke: an error event in the dialect's shape (no clean ending follows).
    fn error(&mut self, e: &Error, out: &mut BytesMut);
}

/// The JSON shape a request field must have; validators in each dialect word the mismatch
/// their own way.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shape {
    Bool,
    Number,
    Integer,
    String,
    Object,
    Array,
    StringOrArray,
    StringOrObject,
}

impl Shape {
    pub(crate) fn matches(self, v: &Value) -> bool {
        match self {
            Shape::Bool => v.is_boolean(),
            Shape::Number => v.is_number(),
            Shape::Integer => v.is_i64() || v.is_u64(),
            Shape::String => v.is_string(),
            Shape::Object => v.is_object(),
            Shape::Array => v.is_array(),
            Shape::StringOrArray => v.is_string() || v.is_array(),
            Shape::StringOrObject => v.is_string() || v.is_object(),
        }
    }

    /// [`Shape::matches`] on a value still in its JSON text (valid JSON, not `null`), judged
    /// the way serde_json would parse it.
    pub(crate) fn matches_raw(self, t: &str) -> bool {
        let string = t.starts_with('"');
        let object = t.starts_with('{');
        let array = t.starts_with('[');
        match self {
            Shape::Bool => t == "true" || t == "false",
            Shape::Number => t.starts_with(|c: char| c == '-' || c.is_ascii_digit()),
            // serde_json reads `1.0`, `1e3` and `-0` as floats.
            Shape::Integer => t != "-0" && (t.parse::<i64>().is_ok() || t.parse::<u64>().is_ok()),
            Shape::String => string,
            Shape::Object => object,
            Shape::Array => array,
            Shape::StringOrArray => string || array,
            Shape::StringOrObject => string || object,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Shape;

    #[test]
    fn a_raw_shape_is_the_shape_of_the_parsed_value() {
        let shapes = [
            Shape::Bool,
            Shape::Number,
            Shape::Integer,
            Shape::String,
            Shape::Object,
            Shape::Array,
            Shape::StringOrArray,
            Shape::StringOrObject,
        ];
        let texts = [
            "true",
            "false",
            "0",
            "-0",
            "-1",
            "1.0",
            "1e3",
            "-0.0",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "\"1\"",
            "\"\"",
            "{}",
            "{\"a\":1}",
            "[]",
            "[1]",
        ];
        for text in texts {
            let raw: Box<serde_json::value::RawValue> = serde_json::from_str(text).unwrap();
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            for shape in shapes {
                assert_eq!(shape.matches_raw(raw.get()), shape.matches(&value), "{shape:?} of {text}");
            }
        }
    }
}
