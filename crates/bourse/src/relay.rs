//! Relaying an upstream SSE stream to the client, chunk by chunk.
//!
//! Each upstream chunk is parsed as it arrives and forwarded at once — no buffering
//! beyond the bytes of an incomplete event. Three modes ([`Mode`]):
//! - OpenAI to OpenAI: events pass through; the relay reads the usage chunk (Bourse
//!   always asks for it) and drops it again if the client did not ask for it.
//! - Same other dialect (Anthropic to Anthropic): events pass through untouched while a
//!   decoder watches them for usage.
//! - Different dialects: a decoder turns upstream events into canonical deltas and an
//!   encoder writes them as the client's events.
//!
//! Nothing reaches the client before the answer's first token ([`StreamRelay::first_token`]):
//! until then the events are held, and a failure — the body breaking, stalling or ending, an
//! error or malformed event — is the attempt's, which the exchange can still answer with
//! another candidate or a clean error status. From the first token on, the stream is the
//! client's, and relayed as it comes.
//!
//! Keep-alive comments are passed on, and a broken upstream becomes an error event in the
//! client's dialect (what its SDK raises on). So does a body that ends cleanly before the
//! answer's end as its dialect marks it (`[DONE]` or a finish reason, a stop reason): passed
//! on with a normal ending, a cut-off answer would look complete. In pass-through, where
//! events are not parsed, the one event a cut-off body may end inside (dispatched at its
//! end without its blank line) is checked to be whole JSON before it is forwarded. When the stream ends — completed, broken,
//! or dropped because the client went away — the `on_end` hook runs exactly once with
//! what was seen, so metering never misses a stream. What the hook sends last (the cost
//! comment) may have to wait for a token estimate: the relay then awaits it before it ends,
//! or, if the client goes away meanwhile, leaves it to finish on its own. While traces are
//! on, the relay also notes what the answer says of itself for its span ([`Facts`]: id,
//! model, finish reasons); otherwise it reads nothing more than relaying needs.
//!
//! A stream whose answer the response cache will keep is teed ([`StreamRelay::tee`]): the
//! bytes sent to the client, up to the end hook's own, are kept (chunks by reference, no
//! copy but the last one's) and handed to the hook only if the stream completed and they
//! fit the cache's bound ([`StreamSummary::teed`]).

use crate::canonical::StopReason;
use crate::canonical::{Delta, Dialect, Usage};
use crate::dialect::openai::think::ThinkSplitter;
use crate::dialect::openai::{
    chunk_has_finish_reason, chunk_has_usage, delta_text, reported_error, usage_chunk, with_empty_choices,
};
use crate::dialect::{Decode, Encode};
use crate::error::{Error, ErrorKind};
use crate::meter::estimate::Transcript;
use crate::provider::Provider;
use crate::provider::Upstream;
use crate::sse::{self, Item, Parser};
use bytes::{Bytes, BytesMut};
use futures_util::stream::Stream;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// How a relayed stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// `[DONE]` (or a clean end of the upstream body) reached the client.
    Completed,
    /// The upstream broke mid-stream; the client got an error event.
    UpstreamFailed(String),
    /// The client went away first; dropping the relay dropped the upstream request.
    ClientGone,
}

/// What the metering hook learns about a finished stream.
#[derive(Debug)]
pub struct StreamSummary {
    pub end: StreamEnd,
    /// Usage as the upstream reported it; None if its usage chunk never arrived.
    pub usage: Option<Usage>,
    /// Usage reported when the stream started and not final (Anthropic's `message_start`:
    /// the input exact, the output not yet counted), when the final usage never came.
    pub partial: Option<Usage>,
    /// Content events forwarded to the client.
    pub events: u64,
    /// The answer's text (and tool arguments) as relayed, kept within its budget only
    /// while the usage has not arrived, for an estimate should it never come.
    pub transcript: Transcript,
    /// What the answer said of itself, when asked for ([`StreamRelay::note_facts`]).
    pub facts: Option<Facts>,
    /// A teed stream that completed: every byte the client was sent before the end hook's.
    pub teed: Option<Bytes>,
}

/// The bytes of a teed stream so far, while they fit `cap`.
struct Tee {
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
}

impl Tee {
    /// Keep `chunk`; past the cap, the tee gives up (the answer will not be stored).
    fn keep(tee: &mut Option<Tee>, chunk: &Bytes) {
        let Some(t) = tee else { return };
        t.len += chunk.len();
        match t.len > t.cap {
            true => *tee = None,
            false => t.chunks.push(chunk.clone()),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self.chunks.len() {
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => Bytes::from(self.chunks.concat()),
        }
    }
}

/// What an answer says of itself, for its span: its id and model, its finish reasons as the
/// client's dialect names them, and (non-streamed answers with content capture on) its
/// content.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Facts {
    pub id: Option<String>,
    pub model: Option<String>,
    pub finish_reasons: Vec<String>,
    pub output: Option<String>,
}

/// The facts being noted from a stream, and the dialect its client reads.
#[derive(Debug)]
struct Noting {
    client: Dialect,
    /// The answer's start (its id and model) has been read.
    started: bool,
    facts: Facts,
}

impl Noting {
    /// A decoded step: the start's id and model, a stop's reason.
    fn delta(&mut self, d: &Delta) {
        match d {
            Delta::Start { id, model, .. } if !self.started => {
                self.started = true;
                self.facts.id = Some(id.clone()).filter(|x| !x.is_empty());
                self.facts.model = Some(model.clone()).filter(|x| !x.is_empty());
            }
            Delta::Stop(stop) => self.facts.finish_reasons.push(stop_name(self.client, stop).to_string()),
            _ => {}
        }
    }

    /// An OpenAI chunk passed through: the first one's id and model, and any finish reasons
    /// (chunks are parsed only for these, and only while noting).
    fn openai_chunk(&mut self, data: &str) {
        if self.started && !chunk_has_finish_reason(data) {
            return;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else { return };
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|x| !x.is_empty()).map(str::to_string);
        if !self.started {
            self.started = true;
            self.facts.id = text("id");
            self.facts.model = text("model");
        }
        for c in v.get("choices").and_then(|c| c.as_array()).into_iter().flatten() {
            if let Some(r) = c.get("finish_reason").and_then(|r| r.as_str()) {
                self.facts.finish_reasons.push(r.to_string());
            }
        }
    }
}

/// A stop as the client's dialect names it.
fn stop_name(client: Dialect, stop: &StopReason) -> &'static str {
    match client {
        Dialect::Anthropic => crate::dialect::anthropic::stop_reason(stop),
        Dialect::OpenAi | Dialect::Gemini => crate::dialect::openai::finish_reason(stop),
    }
}

/// How upstream events become client events.
pub enum Mode {
    /// OpenAI client, OpenAI-dialect upstream. `include_usage`: the client asked for the
    /// usage chunk.
    OpenAi { include_usage: bool },
    /// Client and upstream speak the same (non-OpenAI) dialect: forward, and decode only
    /// to watch usage.
    Observe { client: Dialect, decoder: Box<dyn Decode> },
    /// Different dialects.
    Translate { decoder: Box<dyn Decode>, encoder: Box<dyn Encode> },
}

/// What the upstream gave next.
enum Next {
    /// Bytes for the client.
    Out(BytesMut),
    /// The upstream's stream is over: the bytes still to send, and how it ended.
    Over(BytesMut, Over),
}

/// How the upstream's stream ended.
enum Over {
    Completed,
    /// Broken: the error, and whether the bytes already say so to the client (the
    /// upstream's own error event, passed through or translated).
    Broke(Error, bool),
}

/// Called once when the stream ends; what it returns (e.g. a cost comment) is sent to the
/// client last, if the client is still there.
pub type OnEnd = Box<dyn FnOnce(StreamSummary) -> Ending + Send>;

/// What the end hook sends the client last.
pub enum Ending {
    /// These bytes, if any, now.
    Now(Option<Bytes>),
    /// What this yields, once it is ready (an estimate is being made). It runs to its end
    /// even if the client goes away first: it writes the ledger row.
    Later(Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>),
}

pub struct StreamRelay {
    body: crate::provider::http::Body,
    /// When the provider's total timeout, for the whole stream, runs out.
    deadline: tokio::time::Instant,
    /// When the upstream last sent something; after the first token, a silence of the
    /// provider's read timeout breaks the stream.
    last_read: tokio::time::Instant,
    /// Wakes the relay at the earlier of the two limits. Re-armed only when it fires, so a
    /// flowing stream pays one clock read per chunk and no timer update.
    timer: Pin<Box<tokio::time::Sleep>>,
    provider: Arc<Provider>,
    parser: Parser,
    items: Vec<Item>,
    mode: Mode,
    deltas: Vec<Delta>,
    /// MiniMax-style `<think>` in streamed content, moved to `reasoning_content`.
    think: Option<ThinkSplitter>,
    usage: Option<Usage>,
    partial: Option<Usage>,
    events: u64,
    transcript: Option<Transcript>,
    /// While traces are on: what the answer says of itself. Boxed: absent otherwise.
    noting: Option<Box<Noting>>,
    /// OpenAI pass-through: `[DONE]` or a finish reason has been relayed (other modes ask
    /// their decoder).
    complete: bool,
    /// The answer's first token has been seen: from here on the stream is the client's.
    first_token: bool,
    /// What was read before the first token, sent before anything else.
    held: Option<BytesMut>,
    /// The stream completed before [`StreamRelay::first_token`] returned: ended (with the
    /// hook) after `held` is sent.
    ended_early: bool,
    done: bool,
    on_end: Option<OnEnd>,
    /// The end hook's last bytes, being made.
    last: Option<Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>>,
    /// What the client was sent, for the response cache ([`StreamRelay::tee`]).
    tee: Option<Tee>,
}

impl StreamRelay {
    pub fn new(upstream: Upstream, provider: Arc<Provider>, mode: Mode, transcript: Transcript) -> Self {
        let think = matches!(mode, Mode::OpenAi { .. }) && provider.quirks.think_tags_in_content;
        StreamRelay {
            body: upstream.response.body,
            deadline: upstream.deadline,
            last_read: tokio::time::Instant::now(),
            // Until the first token, the exchange's own limit applies (and the total one).
            timer: Box::pin(tokio::time::sleep_until(upstream.deadline)),
            parser: Parser::new(),
            items: Vec::new(),
            mode,
            deltas: Vec::new(),
            think: think.then(ThinkSplitter::default),
            usage: None,
            partial: None,
            events: 0,
            transcript: Some(transcript),
            noting: None,
            complete: false,
            first_token: false,
            held: None,
            ended_early: false,
            done: false,
            on_end: None,
            last: None,
            tee: None,
            provider,
        }
    }

    /// Keep what the client is sent (up to `cap` bytes) for the end hook's summary.
    pub fn tee(&mut self, cap: usize) {
        self.tee = Some(Tee { chunks: Vec::new(), len: 0, cap });
    }

    /// Note what the answer says of itself (id, model, finish reasons as `client`'s dialect
    /// names them) for the stream's summary: for its span, while traces are on.
    pub fn note_facts(&mut self, client: Dialect) {
        self.noting = Some(Box::new(Noting { client, started: false, facts: Facts::default() }));
    }

    /// The hook run when the stream ends, set once the stream is the client's.
    pub fn set_on_end(&mut self, on_end: OnEnd) {
        self.on_end = Some(on_end);
    }

    /// Reads the upstream until the answer's first token (text, thinking, a tool call, a stop
    /// or usage), holding what it read for the client. Until then nothing has reached the
    /// client, so a stream that breaks, ends or reports an error first is this attempt's
    /// failure (returned); the caller bounds the wait with its time-to-first-token limit.
    pub async fn first_token(&mut self) -> Result<(), Error> {
        let mut held = BytesMut::new();
        loop {
            match std::future::poll_fn(|cx| self.poll_upstream(cx)).await {
                Next::Out(out) => held.extend_from_slice(&out),
                Next::Over(out, Over::Completed) => {
                    held.extend_from_slice(&out);
                    self.ended_early = true;
                    self.first_token = true;
                }
                Next::Over(_, Over::Broke(e, _)) => {
                    self.done = true;
                    return Err(e);
                }
            }
            if self.first_token {
                self.held = Some(held);
                // From here on, silences are limited too.
                let quiet_until = self.last_read + self.provider.timeouts.read;
                self.timer.as_mut().reset(quiet_until.min(self.deadline));
                return Ok(());
            }
        }
    }

    fn finish(&mut self, end: StreamEnd) -> Ending {
        self.done = true;
        let Some(hook) = self.on_end.take() else { return Ending::Now(None) };
        let transcript = self.transcript.take().expect("a stream ends once");
        let partial = if self.usage.is_none() { self.partial } else { None };
        let facts = self.noting.take().map(|n| n.facts);
        let teed = self.tee.take().filter(|_| end == StreamEnd::Completed).map(Tee::into_bytes);
        hook(StreamSummary { end, usage: self.usage, partial, events: self.events, transcript, facts, teed })
    }

    /// End the stream: `out` (what is left to send), then whatever the end hook adds now;
    /// what it adds later is polled for next.
    fn end_with(&mut self, end: StreamEnd, mut out: BytesMut) -> Bytes {
        if self.tee.is_some() && !out.is_empty() {
            Tee::keep(&mut self.tee, &Bytes::copy_from_slice(&out));
        }
        match self.finish(end) {
            Ending::Now(Some(trailer)) => out.extend_from_slice(&trailer),
            Ending::Now(None) => {}
            Ending::Later(last) => self.last = Some(last),
        }
        out.freeze()
    }

    /// The usage arrived: the kept text is no longer needed.
    fn saw_usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
        if let Some(t) = &mut self.transcript {
            t.clear();
        }
    }

    /// Note usage and keep text for a possible estimate, from decoded deltas.
    fn observe(&mut self) {
        if !self.first_token {
            self.first_token = self.deltas.iter().any(|d| !matches!(d, Delta::Start { .. }));
        }
        if let Some(n) = &mut self.noting {
            for d in &self.deltas {
                n.delta(d);
            }
        }
        for i in 0..self.deltas.len() {
            match &self.deltas[i] {
                // The start's usage counts the input, not yet the output: text is still kept.
                Delta::Start { usage: Some(u), .. } => self.partial = Some(*u),
                Delta::Usage(u) => {
                    let u = *u;
                    self.saw_usage(u);
                }
                Delta::Text(t) | Delta::Thinking(t) | Delta::ToolCallArgs { json: t, .. } if self.usage.is_none() => {
                    if let Some(kept) = &mut self.transcript {
                        kept.push(t);
                    }
                }
                _ => {}
            }
        }
    }

    /// Serialize parsed items into `out`, filtering, translating and observing as we go.
    /// Returns the error that ended the stream, if an upstream event was one.
    fn forward(&mut self, out: &mut BytesMut) -> Option<Error> {
        if matches!(self.mode, Mode::OpenAi { .. }) {
            return self.forward_openai(out);
        }
        let items = std::mem::take(&mut self.items);
        for item in items {
            let Item::Event(ev) = item else {
                sse::write_item(&item, out);
                continue;
            };
            self.events += 1;
            let result = match &mut self.mode {
                Mode::Observe { decoder, .. } => {
                    let r = decoder.event(&ev, &mut self.deltas);
                    match &r {
                        // Unparseable: the client's SDK would choke on it too; it gets an
                        // error event in its dialect instead (below).
                        Err(e) if e.kind == ErrorKind::UpstreamProtocol => {}
                        // The client speaks this dialect: its own event goes through as
                        // sent (an upstream error event included).
                        _ => sse::write_item(&Item::Event(ev), out),
                    }
                    r
                }
                Mode::Translate { decoder, encoder } => {
                    let r = decoder.event(&ev, &mut self.deltas).map_err(|e| self.provider.redact(e));
                    for d in &self.deltas {
                        encoder.delta(d, out);
                    }
                    if let Err(e) = &r {
                        encoder.error(e, out);
                    }
                    r
                }
                Mode::OpenAi { .. } => Ok(()),
            };
            self.observe();
            self.deltas.clear();
            if let Err(e) = result {
                if e.kind == ErrorKind::UpstreamProtocol && matches!(self.mode, Mode::Observe { .. }) {
                    self.error_event(&e, out);
                }
                return Some(e);
            }
        }
        None
    }

    /// The upstream body ended cleanly: flush the decoder and end the client's stream, or,
    /// if the answer had not reached its end, say why it is broken.
    fn close(&mut self, out: &mut BytesMut) -> Result<(), Error> {
        let complete = match &self.mode {
            Mode::OpenAi { .. } => self.complete,
            Mode::Observe { decoder, .. } | Mode::Translate { decoder, .. } => decoder.complete(),
        };
        if !complete {
            return Err(Error::protocol(format!(
                "provider {} ended its stream before the answer was finished",
                self.provider.id
            )));
        }
        match &mut self.mode {
            Mode::OpenAi { .. } => return Ok(()),
            Mode::Observe { decoder, .. } => decoder.finish(&mut self.deltas),
            Mode::Translate { decoder, encoder } => {
                decoder.finish(&mut self.deltas);
                for d in &self.deltas {
                    encoder.delta(d, out);
                }
                encoder.finish(out);
            }
        }
        self.observe();
        self.deltas.clear();
        Ok(())
    }

    /// Pass-through: of the events dispatched at the body's end, drop one that is not whole
    /// JSON (the body was cut inside it). Returns whether one was dropped.
    fn drop_cut_event(&mut self) -> bool {
        if !matches!(self.mode, Mode::OpenAi { .. }) {
            return false;
        }
        let before = self.items.len();
        self.items.retain(|item| match item {
            Item::Event(ev) => ev.data == "[DONE]" || serde_json::from_str::<serde::de::IgnoredAny>(&ev.data).is_ok(),
            Item::Comment(_) => true,
        });
        self.items.len() < before
    }

    /// An error event in the client's dialect, for a stream that broke (without the
    /// provider's key, should the upstream's words have quoted it).
    fn error_event(&mut self, err: &Error, out: &mut BytesMut) {
        let redacted = self.provider.redact(err.clone());
        let err = &redacted;
        match &mut self.mode {
            Mode::OpenAi { .. } | Mode::Observe { client: Dialect::OpenAi | Dialect::Gemini, .. } => {
                out.extend_from_slice(&sse::frame(&err.openai_body().to_string()))
            }
            Mode::Observe { client: Dialect::Anthropic, .. } => {
                sse::write_event(Some("error"), &err.anthropic_body().to_string(), out)
            }
            Mode::Translate { encoder, .. } => encoder.error(err, out),
        }
    }

    /// OpenAI to OpenAI: pass events through, reading (and maybe dropping) the usage chunk.
    /// Returns the error that ended the stream: an error chunk (passed through, the client's
    /// SDK raises on it), or, before the first token, a chunk that is not JSON.
    fn forward_openai(&mut self, out: &mut BytesMut) -> Option<Error> {
        let include_usage = matches!(self.mode, Mode::OpenAi { include_usage: true });
        for item in self.items.drain(..) {
            match item {
                Item::Comment(_) => sse::write_item(&item, out),
                Item::Event(mut ev) => {
                    // Events are not parsed on the way through, except the few before the
                    // first token, whose failure can still be answered otherwise.
                    if !self.first_token && ev.data != "[DONE]" {
                        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&ev.data) {
                            return Some(Error::protocol(format!(
                                "provider {} sent a stream chunk that is not JSON ({e}): {:.200}",
                                self.provider.id, ev.data
                            )));
                        }
                    }
                    if ev.data.trim_start().starts_with("{\"error\"") {
                        if let Some(e) = reported_error(ev.data.as_bytes()) {
                            sse::write_item(&Item::Event(ev), out);
                            let message = format!("provider {}: {}", self.provider.id, e.message);
                            return Some(Error { message, ..e });
                        }
                    }
                    if chunk_has_usage(&ev.data) {
                        if let Some(seen) = usage_chunk(&ev.data) {
                            self.usage = Some(seen.usage);
                            if let Some(t) = &mut self.transcript {
                                t.clear();
                            }
                            if seen.usage_only && !include_usage {
                                continue;
                            }
                            if seen.choices_missing {
                                if let Some(fixed) = with_empty_choices(&ev.data) {
                                    ev.data = fixed;
                                }
                            }
                        }
                    }
                    if !self.complete && (ev.data == "[DONE]" || chunk_has_finish_reason(&ev.data)) {
                        self.complete = true;
                    }
                    if !self.first_token {
                        let mut text = false;
                        delta_text(&ev.data, |t| text |= !t.is_empty());
                        self.first_token = text || self.complete || self.usage.is_some();
                    }
                    if ev.data != "[DONE]" {
                        if let Some(n) = &mut self.noting {
                            n.openai_chunk(&ev.data);
                        }
                        if let Some(rewritten) = self.think.as_mut().and_then(|t| t.rewrite(&ev.data)) {
                            ev.data = rewritten;
                        }
                        self.events += 1;
                        // Only needed if usage never arrives; once it has, stop keeping text.
                        if let (None, Some(kept)) = (self.usage, &mut self.transcript) {
                            delta_text(&ev.data, |t| kept.push(t));
                        }
                    }
                    sse::write_item(&Item::Event(ev), out);
                }
            }
        }
        None
    }

    /// Called while the body has nothing to give: the error if the total timeout has run
    /// out, or (after the first token) the read timeout; else the timer is re-armed for the
    /// earlier of the two.
    fn poll_limits(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        loop {
            std::task::ready!(self.timer.as_mut().poll(cx));
            let now = tokio::time::Instant::now();
            if now >= self.deadline {
                return Poll::Ready(self.provider.total_timeout());
            }
            let mut next = self.deadline;
            if self.first_token {
                let quiet_until = self.last_read + self.provider.timeouts.read;
                if now >= quiet_until {
                    return Poll::Ready(self.provider.read_timeout());
                }
                next = next.min(quiet_until);
            }
            self.timer.as_mut().reset(next);
        }
    }

    /// The upstream's next bytes for the client, or the end of its stream. Errors are not
    /// yet written for the client (unless the upstream's own event says so): before the
    /// first token they are the attempt's, after it the stream's.
    fn poll_upstream(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        loop {
            // The limits are checked only when the body has nothing to give, so a stream
            // that is flowing is never cut between two ready chunks.
            let polled = match self.body.poll_chunk(cx) {
                Poll::Pending => match self.poll_limits(cx) {
                    Poll::Ready(e) => Poll::Ready(Some(Err(e))),
                    Poll::Pending => Poll::Pending,
                },
                Poll::Ready(Some(Ok(data))) => {
                    self.last_read = tokio::time::Instant::now();
                    Poll::Ready(Some(Ok(data)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(self.provider.body_error(&e)))),
                Poll::Ready(None) => Poll::Ready(None),
            };
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    self.parser.feed(&chunk, &mut self.items);
                    if self.items.is_empty() {
                        continue;
                    }
                    let mut out = BytesMut::new();
                    if let Some(e) = self.forward(&mut out) {
                        // An upstream error event: the client has it; the stream is over.
                        return Poll::Ready(Next::Over(out, Over::Broke(e, true)));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Next::Out(out));
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    let err = Error { message: format!("the upstream stream broke: {}", err.message), ..err };
                    return Poll::Ready(Next::Over(BytesMut::new(), Over::Broke(err, false)));
                }
                Poll::Ready(None) => {
                    self.parser.finish(&mut self.items);
                    let cut = self.drop_cut_event();
                    let mut out = BytesMut::new();
                    let over = match self.forward(&mut out) {
                        Some(e) => Over::Broke(e, true),
                        None => match self.close(&mut out) {
                            Ok(()) if !cut => Over::Completed,
                            Ok(()) => Over::Broke(
                                Error::protocol(format!(
                                    "provider {} ended its stream inside an event",
                                    self.provider.id
                                )),
                                false,
                            ),
                            Err(e) => Over::Broke(e, false),
                        },
                    };
                    return Poll::Ready(Next::Over(out, over));
                }
            }
        }
    }
}

impl Stream for StreamRelay {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let ended = match this.held.take() {
            // The whole stream came before its first token was looked for.
            Some(held) if this.ended_early => Some(this.end_with(StreamEnd::Completed, held)),
            Some(held) if !held.is_empty() => {
                let held = held.freeze();
                Tee::keep(&mut this.tee, &held);
                return Poll::Ready(Some(Ok(held)));
            }
            _ => None,
        };
        let out = match ended {
            Some(out) => out,
            None => {
                if let Some(last) = &mut this.last {
                    let bytes = std::task::ready!(last.as_mut().poll(cx));
                    this.last = None;
                    return Poll::Ready(bytes.map(Ok));
                }
                if this.done {
                    return Poll::Ready(None);
                }
                match std::task::ready!(this.poll_upstream(cx)) {
                    Next::Out(out) => {
                        let out = out.freeze();
                        Tee::keep(&mut this.tee, &out);
                        return Poll::Ready(Some(Ok(out)));
                    }
                    Next::Over(out, Over::Completed) => this.end_with(StreamEnd::Completed, out),
                    Next::Over(mut out, Over::Broke(e, written)) => {
                        if !written {
                            this.error_event(&e, &mut out);
                        }
                        this.end_with(StreamEnd::UpstreamFailed(e.message), out)
                    }
                }
            }
        };
        if out.is_empty() {
            // Nothing more now: the hook's last bytes, if it is making them.
            return self.poll_next(cx);
        }
        Poll::Ready(Some(Ok(out)))
    }
}

impl Drop for StreamRelay {
    fn drop(&mut self) {
        let last = match self.done {
            false => match self.finish(StreamEnd::ClientGone) {
                Ending::Later(last) => Some(last),
                Ending::Now(_) => None,
            },
            true => self.last.take(),
        };
        // The client is gone, but the hook's work (an estimate, the ledger row) is not
        // done: it finishes on its own.
        if let Some(last) = last {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noting(client: Dialect) -> Noting {
        Noting { client, started: false, facts: Facts::default() }
    }

    fn facts(id: Option<&str>, model: Option<&str>, reasons: &[&str]) -> Facts {
        Facts {
            id: id.map(str::to_string),
            model: model.map(str::to_string),
            finish_reasons: reasons.iter().map(|r| r.to_string()).collect(),
            output: None,
        }
    }

    #[test]
    fn decoded_streams_give_their_start_and_stops_in_the_clients_words() {
        let mut n = noting(Dialect::Anthropic);
        n.delta(&Delta::Start { id: "msg_1".into(), model: "claude".into(), usage: None });
        n.delta(&Delta::Start { id: "again".into(), model: "other".into(), usage: None });
        n.delta(&Delta::Text("hi".into()));
        n.delta(&Delta::Stop(StopReason::MaxTokens));
        assert_eq!(n.facts, facts(Some("msg_1"), Some("claude"), &["max_tokens"]));
        let mut n = noting(Dialect::OpenAi);
        // Gemini's stream may name no model: none is noted.
        n.delta(&Delta::Start { id: "g1".into(), model: String::new(), usage: None });
        n.delta(&Delta::Stop(StopReason::ToolUse));
        assert_eq!(n.facts, facts(Some("g1"), None, &["tool_calls"]));
    }

    #[test]
    fn passed_through_openai_chunks_give_the_first_ones_id_and_every_finish_reason() {
        let mut n = noting(Dialect::OpenAi);
        n.openai_chunk(
            r#"{"id":"c1","model":"gpt","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#,
        );
        n.openai_chunk(r#"{"id":"c2","model":"gpt-x","choices":[{"index":0,"delta":{"content":"b"}}]}"#);
        n.openai_chunk(r#"{"id":"c1","model":"gpt","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#);
        n.openai_chunk(r#"{"id":"c1","model":"gpt","choices":[],"usage":{"prompt_tokens":1}}"#);
        n.openai_chunk("not json");
        assert_eq!(n.facts, facts(Some("c1"), Some("gpt"), &["length"]));
    }
}
