//! What an upstream says when it fails, and what that means for the gateway.
//!
//! Vendors write error bodies in a handful of shapes ([`parse`]): OpenAI's
//! `{"error":{"message","type","code"}}` (and numeric or string codes, `{"error":"text"}`,
//! MiniMax's `base_resp`), Anthropic's `{"type":"error","error":{...}}` with
//! `error.details.error_code`, and Gemini's `google.rpc.Status`. [`classify`] turns a status
//! and what the body said into the taxonomy's [`UpstreamStatus`]: can the same request
//! succeed if tried again, and is the account out of balance (fail over, never retry the
//! same provider). It sits below both the transport ([`crate::provider`], which reads error
//! statuses) and the wire formats ([`crate::dialect`]: Gemini reports errors inside 200
//! answers), so neither calls the other for it.

use crate::canonical::Dialect;
use crate::error::UpstreamStatus;
use crate::preset::Quirks;
use serde_json::Value;

/// What an upstream said in its error body, whatever its shape.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VendorError {
    pub message: Option<String>,
    pub kind: Option<String>,
    pub code: Option<String>,
}

/// An error body from an upstream of `dialect`.
pub fn parse(dialect: Dialect, body: &[u8]) -> VendorError {
    match dialect {
        Dialect::OpenAi => openai_shape(body),
        Dialect::Anthropic => anthropic_shape(body),
        Dialect::Gemini => gemini_shape(body),
    }
}

/// A JSON string or number as text (vendors send error codes as either).
fn stringify(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `{"error":{"message","type","code"}}` (OpenAI and most), numeric or string codes
/// (Zhipu, Gemini's OpenAI endpoint), `{"error":"text"}`, `base_resp{status_code,status_msg}`
/// (MiniMax); a body that is not JSON becomes the message (its first 300 characters).
fn openai_shape(body: &[u8]) -> VendorError {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body).trim().chars().take(300).collect::<String>();
        return VendorError { message: (!text.is_empty()).then_some(text), ..Default::default() };
    };
    if let Some(e) = v.get("error") {
        if let Some(text) = e.as_str() {
            return VendorError { message: Some(text.to_string()), ..Default::default() };
        }
        return VendorError {
            message: e.get("message").and_then(stringify),
            kind: e.get("type").and_then(stringify).or_else(|| e.get("status").and_then(stringify)),
            code: e.get("code").and_then(stringify),
        };
    }
    if let Some(b) = v.get("base_resp") {
        return VendorError {
            message: b.get("status_msg").and_then(stringify),
            kind: None,
            code: b.get("status_code").and_then(stringify),
        };
    }
    VendorError { message: v.get("message").and_then(stringify), ..Default::default() }
}

/// Anthropic's `error.type`, `error.details.error_code` (e.g.
/// `enforced_spend_limit_reached`) and `error.message`. Bodies in other shapes (an
/// Anthropic-compatible vendor answering OpenAI-style, plain text) are read as
/// [`openai_shape`] reads them.
fn anthropic_shape(body: &[u8]) -> VendorError {
    let mut out = openai_shape(body);
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(code) = v.pointer("/error/details/error_code").and_then(Value::as_str) {
            out.code = Some(code.to_string());
        }
    }
    out
}

/// A google.rpc.Status error body → message, kind: its status (e.g. `RESOURCE_EXHAUSTED`),
/// code: the first `details[].reason`, if any. Also reads the one-element array a non-SSE
/// stream wraps it in; a body that is not such JSON is read as [`openai_shape`] reads it.
fn gemini_shape(body: &[u8]) -> VendorError {
    let error = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items.first().and_then(|v| v.get("error")).cloned(),
        Ok(v) => v.get("error").cloned(),
        Err(_) => None,
    };
    match error {
        Some(error) => google_status(&error),
        None => openai_shape(body),
    }
}

/// The `error` object of a `google.rpc.Status` body (also sent inside a 200 answer).
pub fn google_status(error: &Value) -> VendorError {
    if let Some(text) = error.as_str() {
        return VendorError { message: Some(text.to_string()), ..Default::default() };
    }
    let reason = error
        .get("details")
        .and_then(Value::as_array)
        .and_then(|details| details.iter().find_map(|d| d.get("reason").and_then(stringify)));
    VendorError {
        message: error.get("message").and_then(stringify),
        kind: error.get("status").and_then(stringify),
        code: reason,
    }
}

/// Vendor error codes/types that mean "out of balance or quota": never retried on the
/// same provider, whatever the status (OpenAI and DashScope `insufficient_quota`,
/// DashScope `Arrearage`, Zhipu 1112/1113/1121, Anthropic spend limits, MiniMax 1008,
/// Moonshot `exceeded_current_quota_error`).
const EXHAUSTED_CODES: &[&str] = &[
    "insufficient_quota",
    "Arrearage",
    "1112",
    "1113",
    "1121",
    "1008",
    "enforced_spend_limit_reached",
    "billing_error",
    "exceeded_current_quota_error",
    "insufficient_balance",
];

/// Decide whether an upstream error status can be retried, and whether it means the
/// account is out of balance (fail over, never retry the same provider).
pub fn classify(status: u16, vendor: &VendorError, quirks: &Quirks) -> UpstreamStatus {
    let says = |s: &Option<String>| s.as_deref().is_some_and(|v| EXHAUSTED_CODES.contains(&v));
    let exhausted =
        status == 402 || quirks.exhausted_statuses.contains(&status) || says(&vendor.code) || says(&vendor.kind);
    let retryable = !exhausted && matches!(status, 408 | 409 | 425 | 429 | 500..=599);
    UpstreamStatus { status, vendor_type: vendor.kind.clone(), vendor_code: vendor.code.clone(), exhausted, retryable }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendor(code: Option<&str>, kind: Option<&str>) -> VendorError {
        VendorError { message: None, kind: kind.map(Into::into), code: code.map(Into::into) }
    }

    #[test]
    fn rate_limits_retry_but_out_of_balance_does_not() {
        let q = Quirks::default();
        let rl = classify(429, &vendor(Some("rate_limit_exceeded"), Some("requests")), &q);
        assert!(rl.retryable && !rl.exhausted);
        let quota = classify(429, &vendor(Some("insufficient_quota"), Some("insufficient_quota")), &q);
        assert!(!quota.retryable && quota.exhausted);
        let zhipu = classify(429, &vendor(Some("1113"), None), &q);
        assert!(zhipu.exhausted && !zhipu.retryable);
        let deepseek = classify(402, &vendor(None, None), &q);
        assert!(deepseek.exhausted);
        let moonshot = crate::preset::find("moonshot").unwrap().quirks;
        assert!(classify(403, &vendor(None, None), &moonshot).exhausted);
        assert!(!classify(403, &vendor(None, None), &q).exhausted);
        for s in [500, 502, 503, 529] {
            assert!(classify(s, &vendor(None, None), &q).retryable, "{s}");
        }
        for s in [400, 401, 404, 422] {
            assert!(!classify(s, &vendor(None, None), &q).retryable, "{s}");
        }
    }

    #[test]
    fn openai_shapes() {
        let z = openai_shape(br#"{"error":{"code":1113,"message":"balance"}}"#);
        assert_eq!(z.code.as_deref(), Some("1113"));
        let g = openai_shape(br#"{"error":{"code":429,"message":"m","status":"RESOURCE_EXHAUSTED"}}"#);
        assert_eq!(g.kind.as_deref(), Some("RESOURCE_EXHAUSTED"));
        let mm = openai_shape(br#"{"base_resp":{"status_code":1008,"status_msg":"insufficient balance"}}"#);
        assert_eq!(mm.code.as_deref(), Some("1008"));
        assert_eq!(openai_shape(b"upstream connect error").message.as_deref(), Some("upstream connect error"));
    }

    #[test]
    fn anthropic_shapes_read_type_code_and_message() {
        let e = parse(
            Dialect::Anthropic,
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"Spend limit reached","details":{"error_code":"enforced_spend_limit_reached"}},"request_id":"req_1"}"#,
        );
        assert_eq!(e.kind.as_deref(), Some("rate_limit_error"));
        assert_eq!(e.code.as_deref(), Some("enforced_spend_limit_reached"));
        assert_eq!(e.message.as_deref(), Some("Spend limit reached"));
        let e = parse(
            Dialect::Anthropic,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!((e.kind.as_deref(), e.code), (Some("overloaded_error"), None));
        assert_eq!(parse(Dialect::Anthropic, b"Bad Gateway").message.as_deref(), Some("Bad Gateway"));
    }

    #[test]
    fn gemini_shapes() {
        let body = br#"{"error": {"code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                 "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests"}]},
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}
            ]}}"#;
        assert_eq!(
            parse(Dialect::Gemini, body),
            VendorError {
                message: Some("You exceeded your current quota, please check your plan and billing details.".into()),
                kind: Some("RESOURCE_EXHAUSTED".into()),
                code: Some("RATE_LIMIT_EXCEEDED".into()),
            }
        );
        let wrapped =
            parse(Dialect::Gemini, br#"[{"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}]"#);
        assert_eq!(
            wrapped,
            VendorError { message: Some("bad".into()), kind: Some("INVALID_ARGUMENT".into()), code: None }
        );
        assert_eq!(
            parse(Dialect::Gemini, b"upstream connect error").message.as_deref(),
            Some("upstream connect error")
        );
    }
}
