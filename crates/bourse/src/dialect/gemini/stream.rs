//! Gemini streams: [`Decoder`] turns `streamGenerateContent?alt=sse` events into [`Delta`]s.

use super::{call_id, status_error, stop_reason, synthesize_id, usage_from, WireResponse};
use crate::canonical::{Delta, StopReason};
use crate::dialect::Decode;
use crate::error::Error;
use crate::sse;
use serde_json::Value;

// ------------------------------------------------------------------ streams

/// `streamGenerateContent?alt=sse` events → [`Delta`]s. Every `data:` is a partial
/// `GenerateContentResponse`: text arrives in pieces, function calls whole (each becomes
/// a `ToolCallStart` and one `ToolCallArgs`), `usageMetadata` may ride on several chunks
/// (each becomes a `Usage`; the last wins), and the finish reason is held until
/// [`Decode::finish`], so the `Stop` comes once, after the last usage.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The answer's id, once the first chunk has been seen.
    id: Option<String>,
    /// Tool calls seen so far (the next call's index).
    calls: u32,
    /// The last finish reason seen.
    finish_reason: Option<String>,
    blocked: bool,
    stopped: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    fn start(&mut self, id: Option<&str>, model: Option<&str>, out: &mut Vec<Delta>) -> String {
        if let Some(id) = &self.id {
            return id.clone();
        }
        let id = id.filter(|s| !s.is_empty()).map_or_else(synthesize_id, str::to_string);
        out.push(Delta::Start { id: id.clone(), model: model.unwrap_or_default().to_string(), usage: None });
        self.id = Some(id.clone());
        id
    }
}

impl Decode for Decoder {
    fn event(&mut self, ev: &sse::Event, out: &mut Vec<Delta>) -> Result<(), Error> {
        let data = ev.data.trim();
        if data.is_empty() || data == "[DONE]" {
            return Ok(());
        }
        let chunk = WireResponse::parse(data.as_bytes())?;
        if let Some(error) = &chunk.error {
            return Err(status_error(error));
        }
        let id = self.start(chunk.response_id.as_deref(), chunk.model_version.as_deref(), out);
        for part in chunk.parts() {
            if let Some(call) = &part.function_call {
                let index = self.calls;
                self.calls += 1;
                out.push(Delta::ToolCallStart {
                    index,
                    id: call_id(call.id.as_deref(), &id, index),
                    name: call.name.clone(),
                });
                let args =
                    call.args.as_ref().filter(|a| !a.is_null()).map_or_else(|| "{}".to_string(), Value::to_string);
                out.push(Delta::ToolCallArgs { index, json: args });
            } else if let Some(text) = &part.text {
                if part.thought == Some(true) {
                    if !text.is_empty() {
                        out.push(Delta::Thinking(text.clone()));
                    }
                    if let Some(signature) = &part.thought_signature {
                        out.push(Delta::ThinkingSignature(signature.clone()));
                    }
                } else if !text.is_empty() {
                    out.push(Delta::Text(text.clone()));
                }
            }
        }
        if let Some(usage) = chunk.usage_metadata.as_ref().filter(|u| u.is_object()) {
            out.push(Delta::Usage(usage_from(usage)));
        }
        if let Some(reason) = chunk.finish_reason() {
            self.finish_reason = Some(reason.to_string());
        }
        self.blocked |= chunk.blocked();
        Ok(())
    }

    /// The last chunk carries the finish reason; a blocked prompt has none.
    fn complete(&self) -> bool {
        self.finish_reason.is_some() || self.blocked
    }

    fn finish(&mut self, out: &mut Vec<Delta>) {
        if self.stopped {
            return;
        }
        self.start(None, None, out);
        let stop = if self.blocked {
            StopReason::ContentFilter
        } else {
            stop_reason(self.finish_reason.as_deref(), self.calls > 0)
        };
        out.push(Delta::Stop(stop));
        self.stopped = true;
    }
}
