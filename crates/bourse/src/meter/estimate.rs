//! Token estimates for when a provider never reports usage (a stream cut short by the
//! client or the upstream). Counted with a real BPE tokenizer (OpenAI's o200k_base via
//! tiktoken-rs): exact for OpenAI models, within a few percent for most others. Rows
//! priced from an estimate are marked `estimated` in the ledger.

use serde_json::Value;
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

/// Chat framing overhead per message (role and separators), as OpenAI documents it.
const PER_MESSAGE_OVERHEAD: u64 = 4;

fn bpe() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

/// Tokens in a text.
pub fn tokens(text: &str) -> u64 {
    match bpe() {
        Some(b) => b.encode_ordinary(text).len() as u64,
        // The tokenizer ships inside the crate, so this is unreachable in practice; a
        // chars/4 estimate still beats recording zero.
        None => (text.chars().count() as u64).div_ceil(4),
    }
}

fn text_of(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Array(items) => items.iter().for_each(|i| text_of(i, out)),
        Value::Object(o) => {
            for key in ["text", "content", "arguments", "name", "reasoning_content"] {
                if let Some(x) = o.get(key) {
                    text_of(x, out);
                }
            }
            if let Some(f) = o.get("function") {
                text_of(f, out);
            }
            if let Some(t) = o.get("tool_calls") {
                text_of(t, out);
            }
        }
        _ => {}
    }
}

/// Prompt tokens of a chat request object, OpenAI or Anthropic (system, messages and tool
/// definitions).
pub fn prompt_tokens(body: &serde_json::Map<String, Value>) -> u64 {
    let mut text = String::new();
    let mut messages = 0u64;
    // Anthropic requests carry the system prompt apart from the messages.
    if let Some(system) = body.get("system") {
        text_of(system, &mut text);
        text.push('\n');
    }
    if let Some(Value::Array(ms)) = body.get("messages") {
        messages = ms.len() as u64;
        for m in ms {
            text_of(m, &mut text);
            text.push('\n');
        }
    }
    if let Some(tools) = body.get("tools") {
        text.push_str(&tools.to_string());
    }
    tokens(&text) + messages * PER_MESSAGE_OVERHEAD + 3
}

/// Completion tokens from the `data:` payloads of a relayed stream.
pub fn completion_tokens(events: &[String]) -> u64 {
    let mut text = String::new();
    for e in events {
        if let Ok(v) = serde_json::from_str::<Value>(e) {
            if let Some(Value::Array(choices)) = v.get("choices") {
                for c in choices {
                    if let Some(d) = c.get("delta") {
                        text_of(d, &mut text);
                    }
                }
            }
        }
    }
    tokens(&text)
}

/// Completion tokens of a non-streaming response body that carried no usage.
pub fn response_completion_tokens(body: &[u8]) -> u64 {
    let mut text = String::new();
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(Value::Array(choices)) = v.get("choices") {
            for c in choices {
                if let Some(m) = c.get("message") {
                    text_of(m, &mut text);
                }
            }
        }
    }
    tokens(&text)
}

/// Input tokens of an embeddings request (strings; token arrays count as given).
pub fn embedding_input_tokens(body: &serde_json::Map<String, Value>) -> u64 {
    match body.get("input") {
        Some(Value::String(s)) => tokens(s),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => tokens(s),
                Value::Array(t) => t.len() as u64,
                _ => 1,
            })
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_the_real_tokenizer() {
        // "hello world" is two tokens in o200k_base.
        assert_eq!(tokens("hello world"), 2);
        let body: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"messages":[{"role":"user","content":"hello world"}]}"#).unwrap();
        assert_eq!(prompt_tokens(&body), tokens("hello world\n") + 4 + 3);
        let ev = vec![
            r#"{"choices":[{"delta":{"content":"hello"}}]}"#.to_string(),
            r#"{"choices":[{"delta":{"content":" world"}}]}"#.to_string(),
        ];
        assert_eq!(completion_tokens(&ev), 2);
    }
}
