//! Token estimates for when a provider never reports usage: a stream cut short by the
//! client or the upstream, a self-hosted server that ignores `stream_options.include_usage`,
//! or an answer without a `usage` member. Also the count behind
//! `/v1/messages/count_tokens`.
//!
//! Two ways to count, and the ledger says which ([`Estimate`]):
//! - **Tokenizer**: OpenAI's o200k_base BPE ([`super::bpe`]): exact for OpenAI's models,
//!   within a few percent for most others. It runs on a small fixed pool of threads
//!   ([`Estimator`]), never on the async workers (a long prompt takes milliseconds) and
//!   never on a number of threads that grows with load.
//! - **Heuristic**: [`heuristic`] over the text's bytes, made at once on the caller's
//!   thread when the pool is saturated ([`QUEUE_JOBS`] jobs or [`QUEUE_BYTES`] bytes
//!   already waiting), when a stream's text was too long to keep, or when it was not kept
//!   because its provider reports usage on its streams ([`Transcript`]).
//!
//! Memory: one tokenizer table, loaded on first use (a few MB), the pool's
//! [`POOL_THREADS`] thread(s), what is queued (bounded above) and the text streams keep
//! for a possible estimate ([`KEEP_PER_STREAM`] each, [`KEEP_TOTAL`] in all).

use crate::canonical::{RequestBody, Usage};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// How an estimated row's tokens were counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimate {
    /// With the o200k BPE tokenizer: exact for OpenAI's models, close for most others.
    Tokenizer,
    /// With the byte-count rule, when the tokenizer's pool was saturated (or the text too
    /// large to keep): cheaper and rougher.
    Heuristic,
}

impl Estimate {
    pub fn as_str(self) -> &'static str {
        match self {
            Estimate::Tokenizer => "tokenizer",
            Estimate::Heuristic => "heuristic",
        }
    }

    /// The stored columns back: `estimated` and `estimator` (rows written before the
    /// `estimator` column existed were all counted with the tokenizer).
    pub fn from_columns(estimated: bool, estimator: Option<&str>) -> Option<Estimate> {
        match (estimated, estimator) {
            (_, Some("heuristic")) => Some(Estimate::Heuristic),
            (true, _) | (_, Some(_)) => Some(Estimate::Tokenizer),
            (false, None) => None,
        }
    }
}

/// Threads that run the tokenizer.
pub const POOL_THREADS: usize = 1;
/// Estimates waiting for the pool at most; more are made with the heuristic.
pub const QUEUE_JOBS: usize = 256;
/// Bytes of text waiting for the pool at most (requests and answers held by queued jobs).
pub const QUEUE_BYTES: usize = 64 << 20;
/// Text one stream keeps for its estimate; past it, the rest is counted by the heuristic
/// as it passes.
pub const KEEP_PER_STREAM: usize = 256 << 10;
/// Text all streams together keep at most.
pub const KEEP_TOTAL: usize = 64 << 20;

/// Chat framing overhead per message (role and separators), as OpenAI documents it.
const PER_MESSAGE_OVERHEAD: u64 = 4;

/// Tokens in a text, with the tokenizer. Callers on async workers go through the
/// [`Estimator`] instead.
pub fn tokens(text: &str) -> u64 {
    super::bpe::Bpe::o200k().count(text) as u64
}

/// Tokens in a text by its bytes alone: a quarter of the ASCII bytes (English prose and
/// code run at about four bytes a token) and two thirds of a token for every other
/// character (CJK characters are about one token each, accented and Cyrillic letters
/// less). Cheap, rough, and never zero for text that is not empty.
pub fn heuristic(text: &[u8]) -> u64 {
    let ascii = text.iter().filter(|b| b.is_ascii()).count() as u64;
    // Every character that is not ASCII starts with a byte >= 0xC0 in UTF-8.
    let others = text.iter().filter(|&&b| b >= 0xC0).count() as u64;
    ascii.div_ceil(4) + (others * 2).div_ceil(3)
}

fn text_of(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Array(items) => items.iter().for_each(|i| text_of(i, out)),
        Value::Object(o) => {
            for key in ["text", "content", "arguments", "name", "reasoning_content", "thinking", "input"] {
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

/// The prompt's text (system, messages and tool definitions) of a chat request object,
/// OpenAI or Anthropic, and its message count.
fn prompt_text(body: &serde_json::Map<String, Value>) -> (String, u64) {
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
    (text, messages)
}

/// Prompt tokens of a chat request object, with the tokenizer.
pub fn prompt_tokens(body: &serde_json::Map<String, Value>) -> u64 {
    let (text, messages) = prompt_text(body);
    tokens(&text) + messages * PER_MESSAGE_OVERHEAD + 3
}

/// The answer's text in a non-streaming response body without usage: OpenAI's
/// `choices[].message`, or Anthropic's `content` blocks.
fn response_text(body: &[u8]) -> String {
    let mut text = String::new();
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        match (v.get("choices"), v.get("content")) {
            (Some(Value::Array(choices)), _) => {
                for c in choices {
                    if let Some(m) = c.get("message") {
                        text_of(m, &mut text);
                    }
                }
            }
            (_, Some(content)) => text_of(content, &mut text),
            _ => {}
        }
    }
    text
}

/// Input tokens of an embeddings request's `input` (strings; token arrays count as given).
pub fn embedding_input_tokens(input: &Value) -> u64 {
    match input {
        Value::String(s) => tokens(s),
        Value::Array(items) => items
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

/// What an attempt's estimate counts: the request (for the prompt; None when the upstream
/// already counted the input) and the answer.
pub struct Counting {
    pub request: Option<RequestBody>,
    pub answer: Answer,
}

/// The answer to count.
pub enum Answer {
    /// A complete response body (OpenAI or Anthropic shape).
    Body(Bytes),
    /// The text a stream relayed.
    Streamed(Transcript),
}

impl Counting {
    /// Bytes this job holds while it waits.
    fn size(&self) -> usize {
        let answer = match &self.answer {
            Answer::Body(b) => b.len(),
            Answer::Streamed(t) => t.text.len(),
        };
        self.request.as_ref().map_or(0, RequestBody::byte_len) + answer
    }

    /// With the tokenizer. The answer's part of a long stream that was not kept is
    /// counted by the heuristic as it passed; then the estimate is marked heuristic.
    fn tokenize(&self) -> (Usage, Estimate) {
        let prompt = self.request.as_ref().map_or(0, |r| prompt_tokens(r.map()));
        let (output, how) = match &self.answer {
            Answer::Body(b) => (tokens(&response_text(b)), Estimate::Tokenizer),
            Answer::Streamed(t) => {
                let how = if t.rough == 0 { Estimate::Tokenizer } else { Estimate::Heuristic };
                (tokens(&t.text) + t.rough, how)
            }
        };
        (Usage { input_uncached: prompt, output, ..Usage::default() }, how)
    }

    /// With the heuristic: the prompt from the request's bytes as sent (its JSON included:
    /// an overcount), the answer from its text.
    fn heuristic(&self) -> Usage {
        let prompt = match &self.request {
            None => 0,
            Some(r) => match r.raw_bytes() {
                Some(raw) => heuristic(raw),
                None => {
                    let (text, messages) = prompt_text(r.map());
                    heuristic(text.as_bytes()) + messages * PER_MESSAGE_OVERHEAD + 3
                }
            },
        };
        let output = match &self.answer {
            Answer::Body(b) => heuristic(response_text(b).as_bytes()),
            Answer::Streamed(t) => heuristic(t.text.as_bytes()) + t.rough,
        };
        Usage { input_uncached: prompt, output, ..Usage::default() }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The tokenizer's pool and the budgets of what waits for it and what streams keep.
/// Clones share them.
#[derive(Clone, Default)]
pub struct Estimator {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Started on first use.
    jobs: OnceLock<Mutex<mpsc::Sender<Job>>>,
    queued_jobs: AtomicUsize,
    queued_bytes: AtomicUsize,
    kept: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Estimator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Estimator")
            .field("queued_jobs", &self.shared.queued_jobs.load(Relaxed))
            .field("kept", &self.shared.kept.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// A place in the queue, given back when its job ends (or is dropped unrun).
struct Ticket {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.shared.queued_jobs.fetch_sub(1, Relaxed);
        self.shared.queued_bytes.fetch_sub(self.bytes, Relaxed);
    }
}

impl Estimator {
    pub fn new() -> Estimator {
        Estimator::default()
    }

    /// The usage of `job`: counted with the tokenizer on the pool, or here and now with the
    /// heuristic when the pool is saturated.
    pub async fn usage(&self, job: Counting) -> (Usage, Estimate) {
        let job = Arc::new(job);
        let counted = self.run(job.size(), {
            let job = job.clone();
            move || job.tokenize()
        });
        match counted {
            Some(rx) => match rx.await {
                Ok(counted) => counted,
                // The job did not finish (it panicked): never record nothing.
                Err(_) => (job.heuristic(), Estimate::Heuristic),
            },
            None => (job.heuristic(), Estimate::Heuristic),
        }
    }

    /// `count(text)` on the pool, or `heuristic(text)` here when the pool is saturated.
    pub async fn count<T: Send + 'static>(
        &self,
        bytes: usize,
        count: impl FnOnce() -> T + Send + 'static,
        heuristic: impl FnOnce() -> T,
    ) -> (T, Estimate) {
        match self.run(bytes, count) {
            Some(rx) => match rx.await {
                Ok(n) => (n, Estimate::Tokenizer),
                Err(_) => (heuristic(), Estimate::Heuristic),
            },
            None => (heuristic(), Estimate::Heuristic),
        }
    }

    /// Queue `work` on the pool if there is room for it.
    fn run<T: Send + 'static>(
        &self,
        bytes: usize,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<tokio::sync::oneshot::Receiver<T>> {
        let s = &self.shared;
        if s.queued_jobs.fetch_add(1, Relaxed) >= QUEUE_JOBS {
            s.queued_jobs.fetch_sub(1, Relaxed);
            return None;
        }
        if s.queued_bytes.fetch_add(bytes, Relaxed).saturating_add(bytes) > QUEUE_BYTES {
            s.queued_jobs.fetch_sub(1, Relaxed);
            s.queued_bytes.fetch_sub(bytes, Relaxed);
            return None;
        }
        let ticket = Ticket { shared: self.shared.clone(), bytes };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let counted = work();
            // The place is free before the caller hears back.
            drop(ticket);
            let _ = tx.send(counted);
        });
        let jobs = s.jobs.get_or_init(|| Mutex::new(start_pool()));
        jobs.lock().unwrap_or_else(PoisonError::into_inner).send(job).ok()?;
        Some(rx)
    }

    /// Somewhere for a stream to keep its text, charged to the shared budget.
    pub fn transcript(&self) -> Transcript {
        Transcript { text: String::new(), rough: 0, keep: true, kept: self.shared.kept.clone() }
    }

    /// A transcript that keeps no text and only tallies it with the heuristic: for a stream
    /// whose provider reports usage on its streams, where an estimate is needed only if the
    /// stream is cut short, and every open stream's memory counts.
    pub fn tally(&self) -> Transcript {
        Transcript { text: String::new(), rough: 0, keep: false, kept: self.shared.kept.clone() }
    }

    /// Estimates waiting for the pool now.
    pub fn queued(&self) -> usize {
        self.shared.queued_jobs.load(Relaxed)
    }
}

/// The pool's threads, reading jobs from one queue. A job that panics is caught (its
/// caller falls back to the heuristic), so the thread carries on.
fn start_pool() -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..POOL_THREADS {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new().name(format!("bourse-tokens-{i}")).spawn(move || loop {
            let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
            let Ok(job) = job else { return };
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        });
        if let Err(e) = spawned {
            // Without a thread the queue is never read: every estimate waits on a job that
            // never runs, and its caller falls back to the heuristic when the job is dropped.
            tracing::error!(error = %e, "cannot start the tokenizer thread; estimates fall back to the heuristic");
        }
    }
    tx
}

/// The text a stream relayed, kept for an estimate in case its usage never arrives. Its
/// capacity is charged to a budget shared by every stream ([`KEEP_TOTAL`]) and capped per
/// stream ([`KEEP_PER_STREAM`]); text that does not fit, or that a tally does not keep, is
/// counted by the heuristic as it passes (`rough`) and dropped.
pub struct Transcript {
    text: String,
    rough: u64,
    /// Keep text (else only tally it).
    keep: bool,
    kept: Arc<AtomicUsize>,
}

impl Transcript {
    pub fn push(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        let need = self.text.len() + s.len();
        if !self.keep || (need > self.text.capacity() && !self.grow(need)) {
            self.rough += heuristic(s.as_bytes());
            return;
        }
        self.text.push_str(s);
    }

    /// Make room for `need` bytes if both budgets allow it.
    fn grow(&mut self, need: usize) -> bool {
        let old = self.text.capacity();
        let new = need.max(old * 2).clamp(256, KEEP_PER_STREAM);
        if need > new {
            return false;
        }
        let more = new - old;
        if self.kept.fetch_add(more, Relaxed).saturating_add(more) > KEEP_TOTAL {
            self.kept.fetch_sub(more, Relaxed);
            return false;
        }
        self.text.reserve_exact(new - self.text.len());
        // The allocator may round up; charge what is held.
        let extra = self.text.capacity() - new;
        self.kept.fetch_add(extra, Relaxed);
        true
    }

    /// Nothing was relayed.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.rough == 0
    }

    /// The text is no longer needed (the usage arrived): give its memory back now.
    pub fn clear(&mut self) {
        self.kept.fetch_sub(self.text.capacity(), Relaxed);
        self.text = String::new();
        self.rough = 0;
    }
}

impl Drop for Transcript {
    fn drop(&mut self) {
        self.kept.fetch_sub(self.text.capacity(), Relaxed);
    }
}

impl std::fmt::Debug for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the text: it is the model's answer.
        f.debug_struct("Transcript").field("bytes", &self.text.len()).field("rough", &self.rough).finish()
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
        assert_eq!(tokens(&response_text(br#"{"choices":[{"message":{"content":"hello world"}}]}"#)), 2);
        assert_eq!(tokens(&response_text(br#"{"content":[{"type":"text","text":"hello world"}]}"#)), 2);
    }

    #[test]
    fn the_heuristic_is_rough_but_never_zero() {
        assert_eq!(heuristic(b""), 0);
        assert_eq!(heuristic(b"a"), 1);
        assert_eq!(heuristic(b"hello world!"), 3);
        // Three CJK characters (nine bytes): two tokens.
        assert_eq!(heuristic("東京都".as_bytes()), 2);
    }

    #[test]
    fn transcripts_keep_text_within_both_budgets() {
        let est = Estimator::new();
        let mut t = est.transcript();
        t.push("hello ");
        t.push("world");
        assert_eq!((t.text.as_str(), t.rough), ("hello world", 0));
        let charged = est.shared.kept.load(Relaxed);
        assert_eq!(charged, t.text.capacity());
        // Past the per-stream cap, text is counted as it passes and not kept.
        let big = "x".repeat(KEEP_PER_STREAM);
        t.push(&big);
        assert_eq!((t.text.len(), t.rough), (11, heuristic(big.as_bytes())));
        drop(t);
        assert_eq!(est.shared.kept.load(Relaxed), 0, "dropping a transcript gives its budget back");
        // A tally keeps nothing.
        let mut tally = est.tally();
        tally.push("hello world");
        assert_eq!((tally.text.capacity(), tally.rough), (0, heuristic(b"hello world")));
        // The shared budget: a transcript cannot grow once the total is spent.
        est.shared.kept.store(KEEP_TOTAL, Relaxed);
        let mut t = est.transcript();
        t.push("hello");
        assert_eq!((t.text.len(), t.rough), (0, heuristic(b"hello")));
    }

    #[tokio::test]
    async fn a_saturated_pool_falls_back_to_the_heuristic() {
        let est = Estimator::new();
        let request = || {
            crate::canonical::RequestBody::from_map(
                serde_json::from_str(r#"{"messages":[{"role":"user","content":"hello world"}]}"#).unwrap(),
            )
        };
        let (u, how) =
            est.usage(Counting { request: Some(request()), answer: Answer::Body(Bytes::from_static(b"{}")) }).await;
        assert_eq!((u.input_uncached, how), (tokens("hello world\n") + 7, Estimate::Tokenizer));
        // Fill the queue: a job that waits on a gate, then jobs behind it. The next estimate
        // is made at once, with the heuristic.
        let (open, gate) = std::sync::mpsc::channel::<()>();
        let mut held = vec![est.run(0, move || {
            let _ = gate.recv();
        })];
        for _ in 1..QUEUE_JOBS {
            held.push(est.run(0, || ()));
        }
        assert!(held.iter().all(Option::is_some));
        assert_eq!(est.queued(), QUEUE_JOBS);
        let (u, how) =
            est.usage(Counting { request: Some(request()), answer: Answer::Body(Bytes::from_static(b"{}")) }).await;
        assert_eq!(how, Estimate::Heuristic);
        assert!(u.input_uncached > 0);
        let (n, how) = est.count(5, || 99u64, || 7u64).await;
        assert_eq!((n, how), (7, Estimate::Heuristic));
        // Open the gate: every job runs, and the queue empties.
        open.send(()).unwrap();
        for rx in held.into_iter().flatten() {
            rx.await.unwrap();
        }
        assert_eq!(est.queued(), 0);
    }
}
