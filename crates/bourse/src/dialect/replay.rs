//! A complete answer replayed as its dialect's stream: what a streaming client gets when the
//! gateway had to hold the whole answer first (a cascade with `cascade_streaming = "buffer"`
//! checks it before the first byte).
//!
//! - OpenAI: a `chat.completion` becomes `chat.completion.chunk`s: per choice, one with the
//!   role (and empty content), one with the whole content, one per tool call (id, name and
//!   all its arguments), one with the finish reason; then, when the client asked for it
//!   (`stream_options.include_usage`), one with `choices: []` and the usage; then `[DONE]`.
//! - Anthropic: a `message` becomes `message_start` (the message without content, its input
//!   usage, `output_tokens` 0), per content block `content_block_start`, one delta with the
//!   block's whole text (`text_delta`), tool input (`input_json_delta`) or thinking
//!   (`thinking_delta`, then `signature_delta`) and `content_block_stop`; then
//!   `message_delta` (stop reason and output usage) and `message_stop`.
//!
//! Ids, model, `created` and usage are the answer's own, so the stream reassembles to the
//! same answer.

use crate::canonical::Dialect;
use crate::sse::write_event;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

/// `body` (a complete answer in `dialect`) as that dialect's stream; None when it is not one.
pub fn stream_of(body: &[u8], dialect: Dialect, include_usage: bool) -> Option<Bytes> {
    let answer: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let mut out = BytesMut::with_capacity(body.len() * 2 + 256);
    match dialect {
        Dialect::Anthropic => anthropic(&answer, &mut out)?,
        _ => openai(&answer, include_usage, &mut out)?,
    }
    Some(out.freeze())
}

fn openai(answer: &Map<String, Value>, include_usage: bool, out: &mut BytesMut) -> Option<()> {
    let choices = answer.get("choices")?.as_array()?;
    let chunk = |choices: Value| {
        let mut c = Map::new();
        for key in ["id", "created", "model", "system_fingerprint", "service_tier"] {
            if let Some(v) = answer.get(key) {
                c.insert(key.into(), v.clone());
            }
        }
        c.insert("object".into(), json!("chat.completion.chunk"));
        c.insert("choices".into(), choices);
        Value::Object(c).to_string()
    };
    for (i, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(i));
        let message = choice.get("message").and_then(Value::as_object);
        let role = message.and_then(|m| m.get("role")).cloned().unwrap_or(json!("assistant"));
        let first = json!([{"index": index, "delta": {"role": role, "content": ""}, "finish_reason": null}]);
        write_event(None, &chunk(first), out);
        if let Some(m) = message {
            for key in ["content", "refusal", "reasoning_content"] {
                if let Some(text) = m.get(key).filter(|v| v.as_str().is_some_and(|s| !s.is_empty())) {
                    let delta = json!([{"index": index, "delta": {key: text}, "finish_reason": null}]);
                    write_event(None, &chunk(delta), out);
                }
            }
            for (k, call) in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let mut call = call.as_object().cloned().unwrap_or_default();
                call.insert("index".into(), json!(k));
                let delta = json!([{"index": index, "delta": {"tool_calls": [call]}, "finish_reason": null}]);
                write_event(None, &chunk(delta), out);
            }
        }
        let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        write_event(None, &chunk(json!([{"index": index, "delta": {}, "finish_reason": finish}])), out);
    }
    if include_usage {
        if let Some(usage) = answer.get("usage") {
            let mut c: Value = serde_json::from_str(&chunk(json!([]))).ok()?;
            c["usage"] = usage.clone();
            write_event(None, &c.to_string(), out);
        }
    }
    write_event(None, "[DONE]", out);
    Some(())
}

fn anthropic(answer: &Map<String, Value>, out: &mut BytesMut) -> Option<()> {
    let content = answer.get("content")?.as_array()?;
    let usage = answer.get("usage").and_then(Value::as_object);
    let mut start = answer.clone();
    start.insert("content".into(), json!([]));
    start.insert("stop_reason".into(), Value::Null);
    start.insert("stop_sequence".into(), Value::Null);
    let mut start_usage = usage.cloned().unwrap_or_default();
    start_usage.insert("output_tokens".into(), json!(0));
    start.insert("usage".into(), Value::Object(start_usage));
    let event = |name: &str, data: Value, out: &mut BytesMut| write_event(Some(name), &data.to_string(), out);
    event("message_start", json!({"type": "message_start", "message": start}), out);
    for (index, block) in content.iter().enumerate() {
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        let (opening, deltas): (Value, Vec<Value>) = match kind {
            "text" => (
                json!({"type": "text", "text": ""}),
                vec![json!({"type": "text_delta", "text": block.get("text").cloned().unwrap_or(json!(""))})],
            ),
            "tool_use" | "server_tool_use" => {
                let input = block.get("input").map_or_else(|| "{}".to_string(), Value::to_string);
                let mut opening = block.clone();
                opening["input"] = json!({});
                (opening, vec![json!({"type": "input_json_delta", "partial_json": input})])
            }
            "thinking" => {
                let mut deltas = vec![
                    json!({"type": "thinking_delta", "thinking": block.get("thinking").cloned().unwrap_or(json!(""))}),
                ];
                if let Some(sig) = block.get("signature") {
                    deltas.push(json!({"type": "signature_delta", "signature": sig}));
                }
                (json!({"type": "thinking", "thinking": ""}), deltas)
            }
            // Anything else (redacted thinking, tool results) starts whole.
            _ => (block.clone(), Vec::new()),
        };
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": opening}),
            out,
        );
        for delta in deltas {
            event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": delta}), out);
        }
        event("content_block_stop", json!({"type": "content_block_stop", "index": index}), out);
    }
    let output_tokens = usage.and_then(|u| u.get("output_tokens")).cloned().unwrap_or(json!(0));
    let stop = json!({
        "type": "message_delta",
        "delta": {"stop_reason": answer.get("stop_reason"), "stop_sequence": answer.get("stop_sequence")},
        "usage": {"output_tokens": output_tokens},
    });
    event("message_delta", stop, out);
    event("message_stop", json!({"type": "message_stop"}), out);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::{parse_all, Item};

    fn events(body: &Bytes) -> Vec<(Option<String>, String)> {
        parse_all(body)
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some((e.event.clone(), e.data.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_openai_answer_replays_as_chunks_that_reassemble_to_it() {
        let answer = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Final answer: 42",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]
            }}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        });
        let body = stream_of(answer.to_string().as_bytes(), Dialect::OpenAi, true).unwrap();
        let evs = events(&body);
        assert_eq!(evs.last().unwrap().1, "[DONE]");
        let chunks: Vec<Value> = evs[..evs.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "chatcmpl-1" && c["created"] == 7));
        let deltas: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"].get(0)).map(|c| &c["delta"]).collect();
        let text: String = deltas.iter().filter_map(|d| d["content"].as_str()).collect();
        assert_eq!(text, "Final answer: 42");
        assert_eq!(deltas[0]["role"], "assistant");
        let call = deltas.iter().find_map(|d| d["tool_calls"].get(0)).unwrap();
        assert_eq!(
            (&call["index"], &call["id"], &call["function"]["arguments"]),
            (&json!(0), &json!("call_1"), &json!("{\"a\":1}"))
        );
        let finish: Vec<&Value> =
            chunks.iter().filter_map(|c| c["choices"].get(0)).map(|c| &c["finish_reason"]).collect();
        let set: Vec<&Value> = finish.into_iter().filter(|f| !f.is_null()).collect();
        assert_eq!(set, [&json!("tool_calls")]);
        let last = chunks.last().unwrap();
        assert_eq!((&last["choices"], &last["usage"]["total_tokens"]), (&json!([]), &json!(8)));
        // Without include_usage: no usage chunk.
        let plain = stream_of(answer.to_string().as_bytes(), Dialect::OpenAi, false).unwrap();
        assert!(!String::from_utf8_lossy(&plain).contains("total_tokens"));
        assert_eq!(stream_of(b"not json", Dialect::OpenAi, false), None);
        assert_eq!(stream_of(b"{}", Dialect::OpenAi, false), None);
    }

    #[test]
    fn an_anthropic_answer_replays_as_events_that_reassemble_to_it() {
        let answer = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Final answer: 42"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 9, "output_tokens": 4}
        });
        let body = stream_of(answer.to_string().as_bytes(), Dialect::Anthropic, false).unwrap();
        let evs = events(&body);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        assert_eq!(names.first(), Some(&"message_start"));
        assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
        let data: Vec<Value> = evs.iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
        assert_eq!(data[0]["message"]["usage"], json!({"input_tokens": 9, "output_tokens": 0}));
        assert_eq!(data[0]["message"]["content"], json!([]));
        // Reassemble the blocks as a client would.
        let mut blocks: Vec<Value> = Vec::new();
        for d in &data {
            match d["type"].as_str().unwrap() {
                "content_block_start" => blocks.push(d["content_block"].clone()),
                "content_block_delta" => {
                    let b = blocks.last_mut().unwrap();
                    let delta = &d["delta"];
                    match delta["type"].as_str().unwrap() {
                        "text_delta" => {
                            b["text"] =
                                json!(format!("{}{}", b["text"].as_str().unwrap(), delta["text"].as_str().unwrap()))
                        }
                        "thinking_delta" => {
                            b["thinking"] = json!(format!(
                                "{}{}",
                                b["thinking"].as_str().unwrap(),
                                delta["thinking"].as_str().unwrap()
                            ))
                        }
                        "signature_delta" => b["signature"] = delta["signature"].clone(),
                        "input_json_delta" => {
                            b["input"] = serde_json::from_str(delta["partial_json"].as_str().unwrap()).unwrap()
                        }
                        other => panic!("{other}"),
                    }
                }
                _ => {}
            }
        }
        assert_eq!(Value::Array(blocks), answer["content"]);
        let delta = data.iter().find(|d| d["type"] == "message_delta").unwrap();
        assert_eq!((&delta["delta"]["stop_reason"], &delta["usage"]["output_tokens"]), (&json!("tool_use"), &json!(4)));
    }
}
