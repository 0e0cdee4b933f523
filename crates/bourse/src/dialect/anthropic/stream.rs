//! Anthropic Messages streams: [`Decoder`] (upstream SSE events → [`Delta`]s) and
//! [`Encoder`] ([`Delta`]s → the events the official SDKs expect).
//!
//! The wire order is `message_start`, then per content block `content_block_start`,
//! `content_block_delta`s and `content_block_stop`, then `message_delta` (stop reason and
//! cumulative usage) and `message_stop`; `ping` may come at any time and `error` may
//! arrive after the HTTP 200.

use super::{stop_fields, stop_from, BlockOut, MessageOut, UsageOut};
use crate::canonical::{Delta, StopReason, Usage, JSON_TOOL};
use crate::dialect::{synthetic_id, Decode, Encode};
use crate::error::{Error, ErrorKind, UpstreamStatus};
use crate::sse;
use bytes::BytesMut;
use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;

// ------------------------------------------------------------------ decoding

/// What an open upstream content block is, by its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool_use block: the tool call's ordinal among this answer's tool calls.
    Tool(u32),
    /// The JSON-mode tool: its input is the answer's text.
    JsonTool,
    /// Server tool use, results, and block types we do not know: their deltas are dropped.
    Other,
}

/// Upstream Anthropic events → canonical deltas. One per stream.
#[derive(Debug, Default)]
pub struct Decoder {
    json_mode: bool,
    blocks: HashMap<u64, Block>,
    tool_calls: u32,
    json_tool_used: bool,
    /// A stop reason (`message_delta`) or `message_stop` has come: the answer is whole.
    ended: bool,
    /// Usage so far: input counts from `message_start`, updated by each `message_delta`
    /// (whose usage is cumulative and may carry only `output_tokens`).
    usage: Usage,
}

impl Decoder {
    /// `json_mode`: the request asked for JSON through [`JSON_TOOL`]; its input streams
    /// out as text and its tool_use stop as an end of turn.
    pub fn new(json_mode: bool) -> Self {
        Decoder { json_mode, ..Self::default() }
    }

    /// Overwrite the counts `usage` carries, keep the others.
    fn merge_usage(&mut self, usage: &Value) {
        let n = |k: &str| usage.get(k).and_then(Value::as_u64);
        if let Some(x) = n("input_tokens") {
            self.usage.input_uncached = x;
        }
        if let Some(x) = n("cache_read_input_tokens") {
            self.usage.input_cache_read = x;
        }
        if let Some(x) = n("cache_creation_input_tokens") {
            self.usage.input_cache_write = x;
        }
        if let Some(x) = n("output_tokens") {
            self.usage.output = x;
        }
    }

    fn block_start(&mut self, v: &Value, out: &mut Vec<Delta>) {
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        let cb = v.get("content_block").unwrap_or(&Value::Null);
        let field = |k: &str| cb.get(k).and_then(Value::as_str).unwrap_or_default();
        let block = match field("type") {
            "text" => {
                if !field("text").is_empty() {
                    out.push(Delta::Text(field("text").to_string()));
                }
                Block::Text
            }
            "thinking" => {
                if !field("thinking").is_empty() {
                    out.push(Delta::Thinking(field("thinking").to_string()));
                }
                if !field("signature").is_empty() {
                    out.push(Delta::ThinkingSignature(field("signature").to_string()));
                }
                Block::Thinking
            }
            "redacted_thinking" => {
                out.push(Delta::RedactedThinking(field("data").to_string()));
                Block::Other
            }
            "tool_use" => {
                // Streamed tool_use blocks open with `input: {}`; a vendor that sends the
                // whole input here instead still gets it through.
                let input = cb.get("input").filter(|i| i.as_object().is_some_and(|o| !o.is_empty()));
                let input = input.map(Value::to_string);
                if self.json_mode && field("name") == JSON_TOOL {
                    self.json_tool_used = true;
                    out.extend(input.map(Delta::Text));
                    Block::JsonTool
                } else {
                    let n = self.tool_calls;
                    self.tool_calls += 1;
                    out.push(Delta::ToolCallStart {
                        index: n,
                        id: field("id").to_string(),
                        name: field("name").to_string(),
                    });
                    out.extend(input.map(|json| Delta::ToolCallArgs { index: n, json }));
                    Block::Tool(n)
                }
            }
            _ => Block::Other,
        };
        self.blocks.insert(index, block);
    }

    fn block_delta(&mut self, v: &Value, out: &mut Vec<Delta>) {
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        let block = self.blocks.get(&index).copied();
        if block == Some(Block::Other) {
            return;
        }
        let d = v.get("delta").unwrap_or(&Value::Null);
        let field = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        match d.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                let text = field("text");
                if !text.is_empty() {
                    out.push(Delta::Text(text));
                }
            }
            Some("thinking_delta") => {
                let text = field("thinking");
                if !text.is_empty() {
                    out.push(Delta::Thinking(text));
                }
            }
            Some("signature_delta") => out.push(Delta::ThinkingSignature(field("signature"))),
            Some("input_json_delta") => match block {
                Some(Block::Tool(n)) => out.push(Delta::ToolCallArgs { index: n, json: field("partial_json") }),
                Some(Block::JsonTool) => {
                    let json = field("partial_json");
                    if !json.is_empty() {
                        out.push(Delta::Text(json));
                    }
                }
                _ => {}
            },
            // citations_delta and anything newer.
            _ => {}
        }
    }
}

/// An Anthropic error object (an in-stream `error` event, or a 2xx body that is one) as an
/// upstream status error.
pub(super) fn reported(v: &Value) -> Error {
    let e = v.get("error").unwrap_or(&Value::Null);
    let kind = e.get("type").and_then(Value::as_str);
    let code = e.pointer("/details/error_code").and_then(Value::as_str);
    let message = e.get("message").and_then(Value::as_str).unwrap_or("the upstream stream reported an error");
    let status = match kind {
        Some("overloaded_error") => 529,
        Some("rate_limit_error") => 429,
        _ => 500,
    };
    // A spend cap or billing problem will not clear on retry; another provider may help.
    let exhausted = code == Some("enforced_spend_limit_reached") || kind == Some("billing_error");
    let upstream = UpstreamStatus {
        status,
        vendor_type: kind.map(str::to_string),
        vendor_code: code.map(str::to_string),
        exhausted,
        retryable: !exhausted,
    };
    Error::new(ErrorKind::UpstreamStatus(Box::new(upstream)), message)
}

impl Decode for Decoder {
    fn event(&mut self, ev: &sse::Event, out: &mut Vec<Delta>) -> Result<(), Error> {
        if ev.event.as_deref() == Some("ping") {
            return Ok(());
        }
        let v: Value = serde_json::from_str(&ev.data).map_err(|e| {
            Error::protocol(format!("the upstream sent a stream event that is not valid JSON ({e}): {:.200}", ev.data))
        })?;
        let kind = v.get("type").and_then(Value::as_str).or(ev.event.as_deref()).unwrap_or_default();
        match kind {
            "message_start" => {
                let msg = v.get("message").unwrap_or(&Value::Null);
                let usage = msg.get("usage").filter(|u| u.is_object());
                if let Some(u) = usage {
                    self.usage = Usage::default();
                    self.merge_usage(u);
                }
                let field = |k: &str| msg.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                out.push(Delta::Start { id: field("id"), model: field("model"), usage: usage.map(|_| self.usage) });
            }
            "content_block_start" => self.block_start(&v, out),
            "content_block_delta" => self.block_delta(&v, out),
            "message_delta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                if let Some(reason) = d.get("stop_reason").and_then(Value::as_str) {
                    self.ended = true;
                    let mut stop = stop_from(Some(reason), d.get("stop_sequence").and_then(Value::as_str));
                    if stop == StopReason::ToolUse && self.json_tool_used && self.tool_calls == 0 {
                        stop = StopReason::EndTurn;
                    }
                    out.push(Delta::Stop(stop));
                }
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    self.merge_usage(u);
                    out.push(Delta::Usage(self.usage));
                }
            }
            "error" => return Err(reported(&v)),
            "message_stop" => self.ended = true,
            // content_block_stop, ping, and event types added later.
            _ => {}
        }
        Ok(())
    }

    /// Anthropic reports stop and usage together in `message_delta`: nothing is held back.
    fn finish(&mut self, _out: &mut Vec<Delta>) {}

    fn complete(&self) -> bool {
        self.ended
    }
}

// ------------------------------------------------------------------ encoding

#[derive(Serialize)]
#[serde(tag = "type")]
enum DeltaOut<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum EventOut<'a> {
    MessageStart { message: MessageOut<'a> },
    ContentBlockStart { index: u32, content_block: BlockOut<'a> },
    ContentBlockDelta { index: u32, delta: DeltaOut<'a> },
    ContentBlockStop { index: u32 },
    MessageDelta { delta: StopOut<'a>, usage: UsageOut },
    MessageStop,
    Ping,
}

impl EventOut<'_> {
    fn name(&self) -> &'static str {
        match self {
            EventOut::MessageStart { .. } => "message_start",
            EventOut::ContentBlockStart { .. } => "content_block_start",
            EventOut::ContentBlockDelta { .. } => "content_block_delta",
            EventOut::ContentBlockStop { .. } => "content_block_stop",
            EventOut::MessageDelta { .. } => "message_delta",
            EventOut::MessageStop => "message_stop",
            EventOut::Ping => "ping",
        }
    }

    fn write(&self, out: &mut BytesMut) {
        let data = serde_json::to_string(self).unwrap_or_default();
        sse::write_event(Some(self.name()), &data, out);
    }
}

#[derive(Serialize)]
struct StopOut<'a> {
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
}

/// The kind of the content block the encoder has open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Text,
    /// `signed`: its signature was sent, so more thinking starts a new block.
    Thinking {
        signed: bool,
    },
    /// A tool_use block for canonical tool call `index`.
    Tool(u32),
}

/// Canonical deltas → Anthropic events for an Anthropic client. One per stream.
#[derive(Debug, Default)]
pub struct Encoder {
    started: bool,
    done: bool,
    /// The open block and its index.
    open: Option<(Open, u32)>,
    next_block: u32,
    stop: Option<StopReason>,
    usage: Option<Usage>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    fn start(&mut self, id: &str, model: &str, out: &mut BytesMut) {
        self.started = true;
        let message = MessageOut {
            id,
            kind: "message",
            role: "assistant",
            model,
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: self.usage.as_ref().map(UsageOut::from).unwrap_or_default(),
        };
        EventOut::MessageStart { message }.write(out);
        EventOut::Ping.write(out);
    }

    /// The upstream never said `Start`: open the message with an id of our own.
    fn ensure_started(&mut self, out: &mut BytesMut) {
        if !self.started {
            self.start(&synthetic_id("msg_"), "", out);
        }
    }

    fn close(&mut self, out: &mut BytesMut) {
        if let Some((_, index)) = self.open.take() {
            EventOut::ContentBlockStop { index }.write(out);
        }
    }

    /// Open a new block (closing the current one) and return its index.
    fn open(&mut self, kind: Open, block: BlockOut<'_>, out: &mut BytesMut) -> u32 {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        EventOut::ContentBlockStart { index, content_block: block }.write(out);
        self.open = Some((kind, index));
        index
    }

    /// The index of an open text block, opening one if needed.
    fn text_block(&mut self, out: &mut BytesMut) -> u32 {
        match self.open {
            Some((Open::Text, index)) => index,
            _ => self.open(Open::Text, BlockOut::Text { text: "" }, out),
        }
    }

    /// The index of an open thinking block; `more_text`: a signed block cannot take more.
    fn thinking_block(&mut self, more_text: bool, out: &mut BytesMut) -> u32 {
        match self.open {
            Some((Open::Thinking { signed }, index)) if !(signed && more_text) => index,
            _ => self.open(Open::Thinking { signed: false }, BlockOut::Thinking { thinking: "", signature: "" }, out),
        }
    }

    fn write_delta(index: u32, delta: DeltaOut<'_>, out: &mut BytesMut) {
        EventOut::ContentBlockDelta { index, delta }.write(out);
    }
}

impl Encode for Encoder {
    fn delta(&mut self, d: &Delta, out: &mut BytesMut) {
        if self.done {
            return;
        }
        match d {
            Delta::Start { id, model, usage } => {
                if usage.is_some() {
                    self.usage = *usage;
                }
                if !self.started {
                    self.start(id, model, out);
                }
            }
            Delta::Text(text) => {
                if text.is_empty() {
                    return;
                }
                self.ensure_started(out);
                let index = self.text_block(out);
                Self::write_delta(index, DeltaOut::Text { text }, out);
            }
            Delta::Thinking(text) => {
                if text.is_empty() {
                    return;
                }
                self.ensure_started(out);
                let index = self.thinking_block(true, out);
                Self::write_delta(index, DeltaOut::Thinking { thinking: text }, out);
            }
            Delta::ThinkingSignature(sig) => {
                self.ensure_started(out);
                let index = self.thinking_block(false, out);
                self.open = Some((Open::Thinking { signed: true }, index));
                Self::write_delta(index, DeltaOut::Signature { signature: sig }, out);
            }
            Delta::RedactedThinking(data) => {
                self.ensure_started(out);
                // Complete in its start event, as Anthropic sends it: opened and closed at once.
                self.open(Open::Text, BlockOut::RedactedThinking { data }, out);
                self.close(out);
            }
            Delta::ToolCallStart { index, id, name } => {
                self.ensure_started(out);
                let input = Cow::Owned(Value::Object(serde_json::Map::new()));
                self.open(Open::Tool(*index), BlockOut::ToolUse { id, name, input }, out);
            }
            Delta::ToolCallArgs { index, json } => match self.open {
                Some((Open::Tool(open), block)) if open == *index => {
                    Self::write_delta(block, DeltaOut::InputJson { partial_json: json }, out);
                }
                // Anthropic cannot reopen a closed block; upstreams stream the arguments
                // of one call before the next call starts.
                _ => tracing::warn!(tool_call = index, "tool call arguments after the call's block closed; dropped"),
            },
            Delta::Stop(stop) => self.stop = Some(stop.clone()),
            Delta::Usage(usage) => self.usage = Some(*usage),
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.ensure_started(out);
        self.done = true;
        self.close(out);
        let (stop_reason, stop_sequence) = stop_fields(self.stop.as_ref().unwrap_or(&StopReason::EndTurn));
        EventOut::MessageDelta {
            delta: StopOut { stop_reason, stop_sequence },
            usage: self.usage.as_ref().map(UsageOut::from).unwrap_or_default(),
        }
        .write(out);
        EventOut::MessageStop.write(out);
    }

    fn error(&mut self, e: &Error, out: &mut BytesMut) {
        self.done = true;
        sse::write_event(Some("error"), &e.anthropic_body().to_string(), out);
    }
}

#[cfg(test)]
mod tests;
