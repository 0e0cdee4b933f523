//! The Google Gemini dialect (`generateContent` / `streamGenerateContent?alt=sse`), spoken
//! only towards upstreams: [`Conversation`] → request body, response body → [`Reply`],
//! stream events → [`Delta`]s ([`Decoder`]), and `google.rpc.Status` error bodies.
//!
//! Usage follows Gemini's accounting: `promptTokenCount` includes
//! `cachedContentTokenCount`, `thoughtsTokenCount` is apart from `candidatesTokenCount`
//! (and billed as output), and `toolUsePromptTokenCount` is apart from the prompt.
//!
//! [`Conversation`]: crate::canonical::Conversation
//! [`Reply`]: crate::canonical::Reply
//! [`Delta`]: crate::canonical::Delta

mod reply;
mod request;
mod stream;

pub use reply::parse_reply;
pub use request::render_request;
pub use stream::Decoder;

use crate::canonical::{StopReason, Usage};
use crate::dialect::synthetic_id;
use crate::error::{Error, ErrorKind, Result};
use crate::preset::Quirks;
use crate::vendor;
use serde::Deserialize;
use serde_json::Value;

/// The URL path (relative to a base like https://generativelanguage.googleapis.com/v1beta)
/// for a model: "/models/{model}:generateContent" or
/// "/models/{model}:streamGenerateContent?alt=sse". A model given as "models/x" (or a
/// tuned model as "tunedModels/x") is not doubled.
pub fn endpoint_path(model: &str, stream: bool) -> String {
    let model = model.trim_start_matches('/');
    let resource = if model.starts_with("models/") || model.starts_with("tunedModels/") {
        model.to_string()
    } else {
        format!("models/{model}")
    };
    let method = if stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
    format!("/{resource}:{method}")
}

// ------------------------------------------------------------------ responses

/// A `GenerateContentResponse` (whole, or one stream chunk), as far as Bourse reads it.
/// Every field may be absent or null; unknown fields and part kinds are ignored.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    candidates: Option<Vec<WireCandidate>>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<Value>,
    model_version: Option<String>,
    response_id: Option<String>,
    /// A `google.rpc.Status` sent in place of a response (in-stream errors).
    error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    content: Option<WireContent>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireContent {
    parts: Option<Vec<WirePart>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    text: Option<String>,
    thought: Option<bool>,
    thought_signature: Option<String>,
    function_call: Option<WireFunctionCall>,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    id: Option<String>,
    name: String,
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

impl WireResponse {
    fn parse(data: &[u8]) -> Result<WireResponse> {
        let unreadable = |e: &dyn std::fmt::Display| {
            Error::protocol(format!("the Gemini upstream sent an unreadable response: {e}"))
        };
        match serde_json::from_slice::<Value>(data) {
            Ok(v @ Value::Object(_)) => serde_json::from_value(v).map_err(|e| unreadable(&e)),
            Ok(_) => Err(unreadable(&"not a JSON object")),
            Err(e) => Err(unreadable(&e)),
        }
    }

    /// The first candidate's parts (Bourse asks for one candidate).
    fn parts(&self) -> &[WirePart] {
        let candidate = self.candidates.as_deref().and_then(<[_]>::first);
        candidate.and_then(|c| c.content.as_ref()).and_then(|c| c.parts.as_deref()).unwrap_or(&[])
    }

    fn finish_reason(&self) -> Option<&str> {
        self.candidates.as_deref().and_then(<[_]>::first).and_then(|c| c.finish_reason.as_deref())
    }

    /// The prompt was blocked: no candidates, and `promptFeedback.blockReason` says why.
    fn blocked(&self) -> bool {
        self.candidates.as_ref().is_none_or(Vec::is_empty)
            && self.prompt_feedback.as_ref().is_some_and(|f| f.block_reason.is_some())
    }
}

/// An id for an answer Gemini did not name.
fn synthesize_id() -> String {
    synthetic_id("gemini-")
}

/// The id of tool call `index` of answer `response_id`, when Gemini gives none.
fn call_id(given: Option<&str>, response_id: &str, index: u32) -> String {
    match given {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => format!("call_{response_id}_{index}"),
    }
}

/// Gemini's `finishReason` → canonical. `STOP` after function calls is a tool use (Gemini
/// has no reason of its own for it); a matched stop sequence is also `STOP`, so it cannot
/// be told apart from a natural end.
fn stop_reason(reason: Option<&str>, called: bool) -> StopReason {
    match reason {
        Some("MAX_TOKENS") => StopReason::MaxTokens,
        Some(
            "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "IMAGE_SAFETY"
            | "IMAGE_PROHIBITED_CONTENT"
            | "IMAGE_RECITATION",
        ) => StopReason::ContentFilter,
        _ if called => StopReason::ToolUse,
        _ => StopReason::EndTurn,
    }
}

/// Gemini `usageMetadata` → canonical [`Usage`]: the cached count is a subset of
/// `promptTokenCount` (clamped to it, so no token counts twice), tool-use prompt tokens
/// are input apart from the prompt, thoughts are output apart from the candidates.
pub fn usage_from(v: &Value) -> Usage {
    let count = |key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
    let prompt = count("promptTokenCount");
    let cached = count("cachedContentTokenCount").min(prompt);
    Usage {
        input_uncached: prompt - cached + count("toolUsePromptTokenCount"),
        input_cache_read: cached,
        input_cache_write: 0,
        output: count("candidatesTokenCount"),
        output_reasoning: count("thoughtsTokenCount"),
    }
}

// ------------------------------------------------------------------ errors

/// An error object Gemini sent with a 200 (in a stream, or as a whole body) → an
/// UpstreamStatus error, classified like an error status with the same code.
fn status_error(error: &Value) -> Error {
    let vendor = vendor::google_status(error);
    let code = error.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok()).unwrap_or(500);
    let message = format!(
        "the Gemini upstream reported an error ({code} {}): {}",
        vendor.kind.as_deref().unwrap_or("UNKNOWN"),
        vendor.message.as_deref().unwrap_or("no message")
    );
    Error::new(ErrorKind::UpstreamStatus(Box::new(vendor::classify(code, &vendor, &Quirks::default()))), message)
}

#[cfg(test)]
mod tests;
