//! Canonical deltas → the Responses API's stream of typed events.
//!
//! The sequence is OpenAI's: `response.created` and `response.in_progress` (with the
//! response so far), then per output item `response.output_item.added`, its part and delta
//! events (`response.content_part.added`, `response.output_text.delta` / `.done`,
//! `response.reasoning_text.delta` / `.done`, `response.function_call_arguments.delta` /
//! `.done`, `response.content_part.done`), `response.output_item.done`, and last exactly one
//! of `response.completed`, `response.incomplete` or `response.failed` with the whole
//! response. Every event carries `type` (also as the SSE `event:` name) and a
//! `sequence_number` counting from 0. There is no `[DONE]`.
//!
//! `output_index` is an item's place in `output`, given when the item opens. A text or
//! reasoning item stays open until something else starts; function calls stay open (their
//! arguments may still arrive by index) until the answer ends.

use super::reply::usage_json;
use super::{call_item, failed, message_item, output_text, reasoning_item, Head, Status};
use crate::canonical::{Delta, StopReason, Usage};
use crate::dialect::{synthetic_id, Encode};
use crate::error::Error;
use crate::sse;
use bytes::BytesMut;
use serde_json::{json, Value};

#[derive(Debug)]
enum Kind {
    Message,
    Reasoning,
    Call { index: u32, call_id: String, name: String },
}

/// One output item: its id, what it is, and its text (or a call's arguments) so far.
#[derive(Debug)]
struct Item {
    id: String,
    kind: Kind,
    text: String,
    open: bool,
}

impl Item {
    fn json(&self, status: &str) -> Value {
        match &self.kind {
            Kind::Message => message_item(&self.id, &self.text, status),
            Kind::Reasoning => reasoning_item(&self.id, &self.text, status),
            Kind::Call { call_id, name, .. } => call_item(&self.id, call_id, name, &self.text, status),
        }
    }
}

/// Deltas → Responses events for one response. Also keeps the final Response object, for
/// storing.
#[derive(Debug)]
pub struct Encoder {
    head: Head,
    seq: u64,
    started: bool,
    items: Vec<Item>,
    stop: Option<StopReason>,
    usage: Option<Usage>,
    /// The terminal event's response, once it is written.
    last: Option<Value>,
}

impl Encoder {
    pub fn new(head: Head) -> Encoder {
        Encoder { head, seq: 0, started: false, items: Vec::new(), stop: None, usage: None, last: None }
    }

    /// The final Response object, once the stream has ended (completed, incomplete or failed).
    pub fn response(&self) -> Option<&Value> {
        self.last.as_ref()
    }

    /// Whether the terminal event has been written (later deltas are ignored).
    pub fn ended(&self) -> bool {
        self.last.is_some()
    }

    fn emit(&mut self, kind: &str, mut ev: Value, out: &mut BytesMut) {
        if let Some(obj) = ev.as_object_mut() {
            obj.insert("type".into(), kind.into());
            obj.insert("sequence_number".into(), self.seq.into());
        }
        self.seq += 1;
        sse::write_event(Some(kind), &ev.to_string(), out);
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let r = self.head.response(Status::InProgress, Vec::new(), None);
        self.emit("response.created", json!({"response": r}), out);
        let r = self.head.response(Status::InProgress, Vec::new(), None);
        self.emit("response.in_progress", json!({"response": r}), out);
    }

    /// The open text or reasoning item, if it is the last item and of this kind.
    fn open_text(&self, reasoning: bool) -> Option<usize> {
        let last = self.items.len().checked_sub(1)?;
        let item = &self.items[last];
        let fits = matches!((&item.kind, reasoning), (Kind::Message, false) | (Kind::Reasoning, true));
        (item.open && fits).then_some(last)
    }

    /// Close the open text and reasoning items (a new item is starting).
    fn close_texts(&mut self, out: &mut BytesMut) {
        for i in 0..self.items.len() {
            if self.items[i].open && !matches!(self.items[i].kind, Kind::Call { .. }) {
                self.close(i, "completed", out);
            }
        }
    }

    fn open(&mut self, kind: Kind, out: &mut BytesMut) -> usize {
        let prefix = match kind {
            Kind::Message => "msg_",
            Kind::Reasoning => "rs_",
            Kind::Call { .. } => "fc_",
        };
        let item = Item { id: synthetic_id(prefix), kind, text: String::new(), open: true };
        let index = self.items.len();
        let json = item.json("in_progress");
        let (id, part) = match &item.kind {
            Kind::Message => (Some(item.id.clone()), output_text("")),
            Kind::Reasoning => (Some(item.id.clone()), json!({"type": "reasoning_text", "text": ""})),
            Kind::Call { .. } => (None, Value::Null),
        };
        self.items.push(item);
        // A new item: empty content (the parts are added by their own events).
        let mut added = json;
        if let Some(c) = added.get_mut("content") {
            *c = json!([]);
        }
        self.emit("response.output_item.added", json!({"output_index": index, "item": added}), out);
        if let Some(id) = id {
            let ev = json!({"item_id": id, "output_index": index, "content_index": 0, "part": part});
            self.emit("response.content_part.added", ev, out);
        }
        index
    }

    fn close(&mut self, i: usize, status: &str, out: &mut BytesMut) {
        self.items[i].open = false;
        let id = self.items[i].id.clone();
        let text = self.items[i].text.clone();
        match &self.items[i].kind {
            Kind::Message => {
                let ev = json!({"item_id": id, "output_index": i, "content_index": 0, "text": text, "logprobs": []});
                self.emit("response.output_text.done", ev, out);
                let ev = json!({"item_id": id, "output_index": i, "content_index": 0, "part": output_text(&text)});
                self.emit("response.content_part.done", ev, out);
            }
            Kind::Reasoning => {
                let ev = json!({"item_id": id, "output_index": i, "content_index": 0, "text": text});
                self.emit("response.reasoning_text.done", ev, out);
                let part = json!({"type": "reasoning_text", "text": text});
                let ev = json!({"item_id": id, "output_index": i, "content_index": 0, "part": part});
                self.emit("response.content_part.done", ev, out);
            }
            Kind::Call { name, .. } => {
                let ev = json!({"item_id": id, "output_index": i, "arguments": text, "name": name});
                self.emit("response.function_call_arguments.done", ev, out);
            }
        }
        let item = self.items[i].json(status);
        self.emit("response.output_item.done", json!({"output_index": i, "item": item}), out);
    }

    fn text(&mut self, reasoning: bool, t: &str, out: &mut BytesMut) {
        let i = match self.open_text(reasoning) {
            Some(i) => i,
            None => {
                self.close_texts(out);
                self.open(if reasoning { Kind::Reasoning } else { Kind::Message }, out)
            }
        };
        self.items[i].text.push_str(t);
        let id = self.items[i].id.clone();
        if reasoning {
            let ev = json!({"item_id": id, "output_index": i, "content_index": 0, "delta": t});
            self.emit("response.reasoning_text.delta", ev, out);
        } else {
            let ev = json!({"item_id": id, "output_index": i, "content_index": 0, "delta": t, "logprobs": []});
            self.emit("response.output_text.delta", ev, out);
        }
    }

    /// The stream's last event: the response as it ended.
    fn end(&mut self, status: Status, out: &mut BytesMut) {
        self.start(out);
        let kind = match status {
            Status::Completed | Status::InProgress => "response.completed",
            Status::Incomplete(_) => "response.incomplete",
            Status::Failed { .. } => "response.failed",
        };
        let item_status = status.item_status();
        let output = self.items.iter().map(|i| i.json(item_status)).collect();
        let response = self.head.response(status, output, self.usage.as_ref().map(usage_json));
        self.emit(kind, json!({"response": response}), out);
        self.last = Some(response);
    }
}

impl Encode for Encoder {
    fn delta(&mut self, d: &Delta, out: &mut BytesMut) {
        if self.ended() {
            return;
        }
        if let Delta::Start { model, usage, .. } = d {
            // The model that answers, as the upstream names it (once, before any event).
            if !self.started && !model.is_empty() {
                self.head.model.clone_from(model);
            }
            if usage.is_some() {
                self.usage = *usage;
            }
        }
        self.start(out);
        match d {
            Delta::Start { .. } => {}
            Delta::Text(t) if !t.is_empty() => self.text(false, t, out),
            Delta::Thinking(t) if !t.is_empty() => self.text(true, t, out),
            Delta::Text(_) | Delta::Thinking(_) => {}
            // Signatures and encrypted reasoning have no place in a Responses item here.
            Delta::ThinkingSignature(_) | Delta::RedactedThinking(_) => {}
            Delta::ToolCallStart { index, id, name } => {
                self.close_texts(out);
                self.open(Kind::Call { index: *index, call_id: id.clone(), name: name.clone() }, out);
            }
            Delta::ToolCallArgs { index, json } => {
                let found = self
                    .items
                    .iter()
                    .position(|it| it.open && matches!(&it.kind, Kind::Call { index: x, .. } if x == index));
                if let Some(i) = found {
                    self.items[i].text.push_str(json);
                    let ev = json!({"item_id": self.items[i].id, "output_index": i, "delta": json});
                    self.emit("response.function_call_arguments.delta", ev, out);
                }
            }
            Delta::Stop(s) => self.stop = Some(s.clone()),
            Delta::Usage(u) => self.usage = Some(*u),
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if self.ended() {
            return;
        }
        self.start(out);
        let status = Status::of_stop(self.stop.as_ref());
        let item_status = status.item_status();
        for i in 0..self.items.len() {
            if self.items[i].open {
                self.close(i, item_status, out);
            }
        }
        self.end(status, out);
    }

    fn error(&mut self, e: &Error, out: &mut BytesMut) {
        if self.ended() {
            return;
        }
        self.end(failed(e), out);
    }
}
