//! A complete answer as a Response object: [`render_response`] turns a canonical [`Reply`]
//! into output items (reasoning, one message per run of text, function calls, in the order
//! the model produced them), its status and usage.

use super::{call_item, message_item, reasoning_item, Head, Status};
use crate::canonical::{Part, Reply, Usage};
use crate::dialect::synthetic_id;
use serde_json::{json, Value};

/// The Responses `usage` object from canonical usage. Cache reads and writes are both part
/// of `input_tokens`; reasoning is part of `output_tokens`.
pub fn usage_json(u: &Usage) -> Value {
    let input = u.input_total();
    let output = u.output_total();
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": u.input_cache_read, "cache_write_tokens": u.input_cache_write},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": u.output_reasoning},
        "total_tokens": input.saturating_add(output),
    })
}

/// Tool-call arguments as the wire carries them: a string (kept verbatim when the model's
/// were not JSON), else the JSON text.
pub(super) fn arguments_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The Response object for a complete reply (the model that answered named in it).
pub fn render_response(head: &Head, reply: &Reply) -> Value {
    let status = Status::of_stop(Some(&reply.stop));
    let item_status = status.item_status();
    let mut output = Vec::new();
    let mut text: Option<String> = None;
    let flush = |text: &mut Option<String>, output: &mut Vec<Value>| {
        if let Some(t) = text.take() {
            output.push(message_item(&synthetic_id("msg_"), &t, item_status));
        }
    };
    for p in &reply.parts {
        match p {
            Part::Text(t) => text.get_or_insert_with(String::new).push_str(&t.text),
            Part::Thinking { text: t, .. } => {
                flush(&mut text, &mut output);
                output.push(reasoning_item(&synthetic_id("rs_"), t, item_status));
            }
            Part::ToolCall { id, name, arguments } => {
                flush(&mut text, &mut output);
                output.push(call_item(&synthetic_id("fc_"), id, name, &arguments_string(arguments), item_status));
            }
            // Encrypted reasoning only Anthropic can read; the rest never occur in answers.
            Part::RedactedThinking { .. } | Part::Image { .. } | Part::ToolResult { .. } => {}
        }
    }
    flush(&mut text, &mut output);
    let mut head = head.clone();
    if !reply.model.is_empty() {
        head.model.clone_from(&reply.model);
    }
    head.response(status, output, reply.usage.as_ref().map(usage_json))
}
