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
}
