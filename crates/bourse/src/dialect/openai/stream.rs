//! OpenAI chat streams: [`Decoder`] (upstream `chat.completion.chunk` events → [`Delta`]s)
//! and [`Encoder`] ([`Delta`]s → chunks for an OpenAI client whose upstream spoke another
//! dialect).

use super::reply::{finish_reason, map_finish_reason, parse_usage, synth_completion_id, upstream_reported, usage_json};
use super::request::synth_call_id;
use crate::canonical::{Delta, StopReason, Usage};
use crate::dialect::{Decode, Encode};
use crate::error::Error;
use crate::sse;
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::{json, Value};

// ------------------------------------------------------------------ stream decoding

#[derive(Deserialize)]
struct WireChunk {
    id: Option<String>,
    model: Option<String>,
    choices: Option<Vec<WireChunkChoice>>,
    usage: Option<Value>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    index: Option<u32>,
    delta: Option<WireDelta>,
    finish_reason: Option<String>,
    /// Moonshot reports usage inside the finishing choice.
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct WireDelta {
    content: Option<String>,
    reasoning_content: Option<String>,
    reasoning: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<WireToolDelta>>,
    function_call: Option<WireFunctionDelta>,
}

#[derive(Deserialize)]
struct WireToolDelta {
    index: Option<u32>,
    id: Option<String>,
    function: Option<WireFunctionDelta>,
}

#[derive(Deserialize)]
struct WireFunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

/// One tool call being streamed.
#[derive(Debug)]
struct Call {
    index: u32,
    id: Option<String>,
    started: bool,
    /// Argument text that arrived before the call's name (held until it is known).
    pending: String,
}

/// OpenAI `chat.completion.chunk` events → canonical deltas.
///
/// `Start` comes with the first chunk (an id is synthesized if it has none). A tool call
/// starts when its name is first seen (its id is synthesized if the server sends none);
/// the [`Delta`] index is the OpenAI index. A chunk with `usage` (whatever `choices` is)
/// becomes `Usage`. If the stream ends with `[DONE]` but no finish reason, `finish` reports
/// the natural one; a stream cut off before `[DONE]` gets no invented stop.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    stopped: bool,
    done: bool,
    calls: Vec<Call>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The slot of the call a fragment belongs to: by index, or — for servers that omit
    /// it — a new call when a new id appears, else the latest call.
    fn call_slot(&mut self, index: Option<u32>, id: Option<&str>) -> usize {
        let index = match index {
            Some(i) => i,
            None => match (self.calls.last(), id) {
                (Some(last), Some(id)) if last.id.as_deref() != Some(id) => last.index + 1,
                (Some(last), _) => last.index,
                (None, _) => 0,
            },
        };
        match self.calls.iter().position(|c| c.index == index) {
            Some(slot) => slot,
            None => {
                self.calls.push(Call { index, id: None, started: false, pending: String::new() });
                self.calls.len() - 1
            }
        }
    }

    fn tool_fragment(
        &mut self,
        index: Option<u32>,
        id: Option<String>,
        f: Option<WireFunctionDelta>,
        out: &mut Vec<Delta>,
    ) {
        let id = id.filter(|s| !s.is_empty());
        let slot = self.call_slot(index, id.as_deref());
        let call = &mut self.calls[slot];
        if call.id.is_none() {
            call.id = id;
        }
        let (name, args) = f.map_or((None, None), |f| (f.name.filter(|n| !n.is_empty()), f.arguments));
        if !call.started {
            if let Some(name) = name {
                call.started = true;
                let id = call.id.get_or_insert_with(synth_call_id).clone();
                out.push(Delta::ToolCallStart { index: call.index, id, name });
                if !call.pending.is_empty() {
                    out.push(Delta::ToolCallArgs { index: call.index, json: std::mem::take(&mut call.pending) });
                }
            }
        }
        if let Some(json) = args.filter(|a| !a.is_empty()) {
            if call.started {
                out.push(Delta::ToolCallArgs { index: call.index, json });
            } else {
                call.pending.push_str(&json);
            }
        }
    }

    /// Calls whose name never came: start them nameless so their arguments are not lost.
    fn flush_calls(&mut self, out: &mut Vec<Delta>) {
        for call in self.calls.iter_mut().filter(|c| !c.started) {
            call.started = true;
            let id = call.id.get_or_insert_with(synth_call_id).clone();
            out.push(Delta::ToolCallStart { index: call.index, id, name: String::new() });
            if !call.pending.is_empty() {
                out.push(Delta::ToolCallArgs { index: call.index, json: std::mem::take(&mut call.pending) });
            }
        }
    }
}

impl Decode for Decoder {
    fn event(&mut self, ev: &sse::Event, out: &mut Vec<Delta>) -> Result<(), Error> {
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: WireChunk = serde_json::from_str(data)
            .map_err(|e| Error::protocol(format!("the upstream sent a stream chunk that could not be parsed: {e}")))?;
        if ev.event.as_deref() == Some("error") || chunk.error.as_ref().is_some_and(|e| !e.is_null()) {
            return Err(upstream_reported(data.as_bytes()));
        }
        if !self.started {
            self.started = true;
            out.push(Delta::Start {
                id: chunk.id.filter(|s| !s.is_empty()).unwrap_or_else(synth_completion_id),
                model: chunk.model.unwrap_or_default(),
                usage: None,
            });
        }
        for choice in chunk.choices.unwrap_or_default() {
            // Only the first choice: n > 1 is never requested by translation.
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(d) = choice.delta {
                if let Some(r) = d.reasoning_content.or(d.reasoning).filter(|s| !s.is_empty()) {
                    out.push(Delta::Thinking(r));
                }
                if let Some(t) = d.content.filter(|s| !s.is_empty()) {
                    out.push(Delta::Text(t));
                }
                if let Some(t) = d.refusal.filter(|s| !s.is_empty()) {
                    out.push(Delta::Text(t));
                }
                for tc in d.tool_calls.unwrap_or_default() {
                    self.tool_fragment(tc.index, tc.id, tc.function, out);
                }
                if let Some(f) = d.function_call {
                    self.tool_fragment(Some(0), None, Some(f), out);
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|s| !s.is_empty()) {
                if !self.stopped {
                    self.stopped = true;
                    self.flush_calls(out);
                    out.push(Delta::Stop(map_finish_reason(&reason, !self.calls.is_empty())));
                }
            }
            if let Some(u) = choice.usage.and_then(parse_usage) {
                out.push(Delta::Usage(u));
            }
        }
        if let Some(u) = chunk.usage.and_then(parse_usage) {
            out.push(Delta::Usage(u));
        }
        Ok(())
    }

    /// A finish reason, or `[DONE]` (some servers send no finish reason).
    fn complete(&self) -> bool {
        self.stopped || self.done
    }

    fn finish(&mut self, out: &mut Vec<Delta>) {
        self.flush_calls(out);
        if self.done && !self.stopped {
            self.stopped = true;
            out.push(Delta::Stop(map_finish_reason("", !self.calls.is_empty())));
        }
    }
}

// ------------------------------------------------------------------ stream encoding

/// Canonical deltas → OpenAI `chat.completion.chunk` events, for an OpenAI client whose
/// upstream spoke another dialect.
///
/// The first chunk carries `role: assistant` and `content: ""`, as OpenAI's does. The stop
/// reason and usage are held until [`Encode::finish`], which sends the finishing chunk, the
/// usage chunk (`choices: []`, only when the client asked for it and usage is known), then
/// `[DONE]`. With `include_usage`, every other chunk carries `"usage":null`, as OpenAI's do.
/// Thinking signatures and redacted thinking cannot be represented and are dropped.
#[derive(Debug)]
pub struct Encoder {
    include_usage: bool,
    /// The answer's id and model, from `Start`.
    id: Option<String>,
    model: String,
    created: u64,
    /// `{"id":…,"object":…,"created":…,"model":…` — the same for every chunk, built when
    /// the first chunk is written.
    head: String,
    stop: Option<StopReason>,
    usage: Option<Usage>,
    called_tools: bool,
    closed: bool,
}

impl Encoder {
    pub fn new(include_usage: bool) -> Self {
        Encoder {
            include_usage,
            id: None,
            model: String::new(),
            created: crate::timespec::now_secs(),
            head: String::new(),
            stop: None,
            usage: None,
            called_tools: false,
            closed: false,
        }
    }

    /// The model to name if the stream never sends `Start` (normally it does).
    pub fn with_model(mut self, model: &str) -> Self {
        self.model = model.to_string();
        self
    }

    /// Write the role chunk if nothing was written yet.
    fn open(&mut self, out: &mut BytesMut) {
        if !self.head.is_empty() {
            return;
        }
        let id = self.id.get_or_insert_with(synth_completion_id);
        self.head = format!(
            "{{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{}",
            Value::String(id.clone()),
            self.created,
            Value::String(self.model.clone()),
        );
        self.chunk(&json!({"role": "assistant", "content": ""}), None, out);
    }

    fn chunk(&self, delta: &Value, finish: Option<&str>, out: &mut BytesMut) {
        let mut data = String::with_capacity(self.head.len() + 128);
        data.push_str(&self.head);
        data.push_str(",\"choices\":[{\"index\":0,\"delta\":");
        data.push_str(&delta.to_string());
        data.push_str(",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => {
                data.push('"');
                data.push_str(f);
                data.push('"');
            }
            None => data.push_str("null"),
        }
        data.push_str("}]");
        if self.include_usage {
            data.push_str(",\"usage\":null");
        }
        data.push('}');
        sse::write_event(None, &data, out);
    }
}

impl Encode for Encoder {
    fn delta(&mut self, d: &Delta, out: &mut BytesMut) {
        if self.closed {
            return;
        }
        let delta = match d {
            Delta::Start { id, model, usage } => {
                if self.head.is_empty() {
                    self.id = Some(id.clone());
                    if !model.is_empty() {
                        self.model = model.clone();
                    }
                }
                if usage.is_some() {
                    self.usage = *usage;
                }
                self.open(out);
                return;
            }
            Delta::Text(t) if !t.is_empty() => json!({"content": t}),
            Delta::Thinking(t) if !t.is_empty() => json!({"reasoning_content": t}),
            Delta::ToolCallStart { index, id, name } => {
                self.called_tools = true;
                json!({"tool_calls": [{
                    "index": index,
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }]})
            }
            Delta::ToolCallArgs { index, json } if !json.is_empty() => {
                json!({"tool_calls": [{"index": index, "function": {"arguments": json}}]})
            }
            Delta::Stop(s) => {
                self.stop = Some(s.clone());
                return;
            }
            Delta::Usage(u) => {
                self.usage = Some(*u);
                return;
            }
            // Not representable in this dialect (or empty).
            Delta::ThinkingSignature(_)
            | Delta::RedactedThinking(_)
            | Delta::Text(_)
            | Delta::Thinking(_)
            | Delta::ToolCallArgs { .. } => return,
        };
        self.open(out);
        self.chunk(&delta, None, out);
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if self.closed {
            return;
        }
        self.open(out);
        let stop =
            self.stop.take().unwrap_or(if self.called_tools { StopReason::ToolUse } else { StopReason::EndTurn });
        self.chunk(&json!({}), Some(finish_reason(&stop)), out);
        if self.include_usage {
            if let Some(u) = &self.usage {
                let data = format!("{},\"choices\":[],\"usage\":{}}}", self.head, usage_json(u));
                sse::write_event(None, &data, out);
            }
        }
        sse::write_event(None, "[DONE]", out);
        self.closed = true;
    }

    fn error(&mut self, e: &Error, out: &mut BytesMut) {
        if self.closed {
            return;
        }
        sse::write_event(None, &e.openai_body().to_string(), out);
        self.closed = true;
    }
}

#[cfg(test)]
mod tests;
