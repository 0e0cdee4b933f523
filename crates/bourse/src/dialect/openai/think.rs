//! MiniMax-style `<think>…</think>` at the start of streamed `content`, moved to
//! `reasoning_content` chunk by chunk.
//!
//! The tags can be split anywhere across deltas ("<thi", "nk>"), so each choice keeps a
//! little state: text that might still turn out to be the start of a tag is held back
//! until the next delta decides it. Nothing else is delayed.

use serde_json::Value;

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before any visible text: is the answer going to start with `<think>`?
    #[default]
    Start,
    Think,
    /// Just after `</think>`: the blank lines before the answer are dropped.
    AfterThink,
    Answer,
}

#[derive(Debug, Default)]
struct Choice {
    phase: Phase,
    pending: String,
}

/// Length of the longest suffix of `s` that is a proper prefix of `tag`.
fn partial_tag_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&k| s.len() >= k && s.is_char_boundary(s.len() - k) && tag.starts_with(&s[s.len() - k..]))
        .unwrap_or(0)
}

impl Choice {
    /// Feed a content delta; returns (reasoning, content) to emit now.
    fn push(&mut self, text: &str) -> (String, String) {
        let mut reasoning = String::new();
        let mut content = String::new();
        self.pending.push_str(text);
        loop {
            match self.phase {
                Phase::Start => {
                    let t = self.pending.trim_start();
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.pending = rest.to_string();
                        self.phase = Phase::Think;
                    } else if OPEN.starts_with(t) {
                        return (reasoning, content); // undecided: wait for more
                    } else {
                        content.push_str(&std::mem::take(&mut self.pending));
                        self.phase = Phase::Answer;
                        return (reasoning, content);
                    }
                }
                Phase::Think => {
                    if let Some(i) = self.pending.find(CLOSE) {
                        reasoning.push_str(&self.pending[..i]);
                        self.pending.drain(..i + CLOSE.len());
                        self.phase = Phase::AfterThink;
                        continue;
                    }
                    let keep = partial_tag_suffix(&self.pending, CLOSE);
                    let emit = self.pending.len() - keep;
                    reasoning.push_str(&self.pending[..emit]);
                    self.pending.drain(..emit);
                    return (reasoning, content);
                }
                Phase::AfterThink => {
                    let start = self.pending.len() - self.pending.trim_start().len();
                    self.pending.drain(..start);
                    if self.pending.is_empty() {
                        return (reasoning, content);
                    }
                    self.phase = Phase::Answer;
                }
                Phase::Answer => {
                    content.push_str(&std::mem::take(&mut self.pending));
                    return (reasoning, content);
                }
            }
        }
    }
}

/// Per-stream state for every choice index.
#[derive(Debug, Default)]
pub struct ThinkSplitter {
    choices: Vec<Choice>,
}

impl ThinkSplitter {
    /// Rewrite one chunk's JSON; None if it needs no change (or is not a chat chunk).
    pub fn rewrite(&mut self, data: &str) -> Option<String> {
        if !data.contains("\"content\"") {
            return None;
        }
        let mut v: Value = serde_json::from_str(data).ok()?;
        let mut changed = false;
        for choice in v.get_mut("choices")?.as_array_mut()? {
            let idx = choice.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else { continue };
            let Some(text) = delta.get("content").and_then(Value::as_str).map(str::to_string) else { continue };
            if self.choices.len() <= idx {
                self.choices.resize_with(idx + 1, Choice::default);
            }
            let (reasoning, content) = self.choices[idx].push(&text);
            if reasoning.is_empty() && content == text {
                continue;
            }
            delta.insert("content".into(), Value::String(content));
            if !reasoning.is_empty() {
                let prior = delta.get("reasoning_content").and_then(Value::as_str).unwrap_or("").to_string();
                delta.insert("reasoning_content".into(), Value::String(prior + &reasoning));
            }
            changed = true;
        }
        if changed {
            serde_json::to_string(&v).ok()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(pieces: &[&str]) -> (String, String) {
        let mut c = Choice::default();
        let (mut r, mut a) = (String::new(), String::new());
        for p in pieces {
            let (x, y) = c.push(p);
            r.push_str(&x);
            a.push_str(&y);
        }
        (r, a)
    }

    #[test]
    fn tags_split_anywhere() {
        assert_eq!(run(&["<think>", "plan", "</think>", "\n\nHi"]), ("plan".into(), "Hi".into()));
        assert_eq!(run(&["<th", "ink>pl", "an</th", "ink>Hi", " there"]), ("plan".into(), "Hi there".into()));
        assert_eq!(run(&["Hello", " world"]), ("".into(), "Hello world".into()));
        assert_eq!(run(&["<", "b>bold"]), ("".into(), "<b>bold".into()));
    }

    #[test]
    fn chunk_rewrite_moves_reasoning() {
        let mut s = ThinkSplitter::default();
        let out = s.rewrite(r#"{"choices":[{"index":0,"delta":{"content":"<think>why"}}]}"#).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["choices"][0]["delta"]["content"], "");
        assert_eq!(v["choices"][0]["delta"]["reasoning_content"], "why");
        let out = s.rewrite(r#"{"choices":[{"index":0,"delta":{"content":"</think>Answer"}}]}"#).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["choices"][0]["delta"]["content"], "Answer");
        assert!(s.rewrite(r#"{"choices":[{"index":0,"delta":{"content":" more"}}]}"#).is_none());
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_result(think in "[a-z ]{0,20}", answer in "[a-zA-Z ]{1,20}", cuts in proptest::collection::vec(0usize..60, 0..6)) {
            let whole = format!("<think>{think}</think>{answer}");
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(whole.len())).collect();
            points.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for p in points { pieces.push(&whole[last..p]); last = p; }
            pieces.push(&whole[last..]);
            let (r, a) = run(&pieces);
            prop_assert_eq!(r, think);
            prop_assert_eq!(a, answer.trim_start().to_string());
        }
    }
}
