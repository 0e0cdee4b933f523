//! Complete Gemini replies: [`parse_reply`] reads a `generateContent` response into a
//! [`Reply`](crate::canonical::Reply).

use super::{call_id, status_error, stop_reason, synthesize_id, usage_from, WireResponse};
use crate::canonical::{Part, StopReason};
use crate::error::Result;
use serde_json::json;

/// `generateContent` response JSON → [`Reply`]. Adjacent text parts (and adjacent thought
/// parts) are joined. A thought signature on a non-thought part (Gemini puts them on
/// function calls and final text) is not kept: rendering does not send signatures back.
/// Malformed → `Err` (UpstreamProtocol); an error object in a 200 body → `Err`
/// (UpstreamStatus).
///
/// [`Reply`]: crate::canonical::Reply
pub fn parse_reply(body: &[u8]) -> Result<crate::canonical::Reply> {
    let response = WireResponse::parse(body)?;
    if let Some(error) = &response.error {
        return Err(status_error(error));
    }
    let id = response.response_id.clone().filter(|s| !s.is_empty()).unwrap_or_else(synthesize_id);
    let mut parts: Vec<Part> = Vec::new();
    let mut calls = 0u32;
    for part in response.parts() {
        if let Some(call) = &part.function_call {
            parts.push(Part::ToolCall {
                id: call_id(call.id.as_deref(), &id, calls),
                name: call.name.clone(),
                arguments: call.args.clone().filter(|a| !a.is_null()).unwrap_or_else(|| json!({})),
            });
            calls += 1;
        } else if let Some(text) = &part.text {
            if part.thought == Some(true) {
                match parts.last_mut() {
                    Some(Part::Thinking { text: prev, signature }) => {
                        prev.push_str(text);
                        if part.thought_signature.is_some() {
                            signature.clone_from(&part.thought_signature);
                        }
                    }
                    _ => parts.push(Part::Thinking { text: text.clone(), signature: part.thought_signature.clone() }),
                }
            } else if !text.is_empty() {
                match parts.last_mut() {
                    Some(Part::Text(prev)) => prev.text.push_str(text),
                    _ => parts.push(Part::Text(crate::canonical::Text { text: text.clone(), cache_control: None })),
                }
            }
        }
    }
    let stop =
        if response.blocked() { StopReason::ContentFilter } else { stop_reason(response.finish_reason(), calls > 0) };
    Ok(crate::canonical::Reply {
        id,
        model: response.model_version.clone().unwrap_or_default(),
        parts,
        stop,
        usage: response.usage_metadata.as_ref().filter(|u| u.is_object()).map(usage_from),
    })
}
