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
//! Keep-alive comments are passed on, and a broken upstream becomes an error event in the
//! client's dialect (what its SDK raises on). When the stream ends — completed, broken,
//! or dropped because the client went away — the `on_end` hook runs exactly once with
//! what was seen, so metering never misses a stream. What the hook sends last (the cost
//! comment) may have to wait for a token estimate: the relay then awaits it before it ends,
//! or, if the client goes away meanwhile, leaves it to finish on its own.

use crate::canonical::{Delta, Dialect, Usage};
use crate::dialect::openai::think::ThinkSplitter;
use crate::dialect::openai::{chunk_has_usage, delta_text, usage_chunk, with_empty_choices};
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
    /// When the first of them was (time to first token).
    pub first_event: Option<std::time::Instant>,
    /// The answer's text (and tool arguments) as relayed, kept within its budget only
    /// while the usage has not arrived, for an estimate should it never come.
    pub transcript: Transcript,
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
    /// The provider's total timeout, for the whole stream.
    deadline: Pin<Box<tokio::time::Sleep>>,
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
    first_event: Option<std::time::Instant>,
    transcript: Option<Transcript>,
    done: bool,
    on_end: Option<OnEnd>,
    /// The end hook's last bytes, being made.
    last: Option<Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>>,
}

impl StreamRelay {
    pub fn new(
        upstream: Upstream,
        provider: Arc<Provider>,
        mode: Mode,
        transcript: Transcript,
        on_end: Option<OnEnd>,
    ) -> Self {
        let think = matches!(mode, Mode::OpenAi { .. }) && provider.quirks.think_tags_in_content;
        StreamRelay {
            body: upstream.response.body,
            deadline: Box::pin(tokio::time::sleep_until(upstream.deadline)),
            parser: Parser::new(),
            items: Vec::new(),
            mode,
            deltas: Vec::new(),
            think: think.then(ThinkSplitter::default),
            usage: None,
            partial: None,
            events: 0,
            first_event: None,
            transcript: Some(transcript),
            done: false,
            on_end,
            last: None,
            provider,
        }
    }

    fn finish(&mut self, end: StreamEnd) -> Ending {
        self.done = true;
        let Some(hook) = self.on_end.take() else { return Ending::Now(None) };
        let transcript = self.transcript.take().expect("a stream ends once");
        let partial = if self.usage.is_none() { self.partial } else { None };
        let first_event = self.first_event;
        hook(StreamSummary { end, usage: self.usage, partial, events: self.events, first_event, transcript })
    }

    /// End the stream: `out` (what is left to send), then whatever the end hook adds now;
    /// what it adds later is polled for next.
    fn end_with(&mut self, end: StreamEnd, mut out: BytesMut) -> Bytes {
        match self.finish(end) {
            Ending::Now(Some(trailer)) => out.extend_from_slice(&trailer),
            Ending::Now(None) => {}
            Ending::Later(last) => self.last = Some(last),
        }
        out.freeze()
    }

    /// One more content event; the first one's time is kept.
    fn count_event(&mut self) {
        if self.events == 0 {
            self.first_event = Some(std::time::Instant::now());
        }
        self.events += 1;
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
            self.forward_openai(out);
            return None;
        }
        let items = std::mem::take(&mut self.items);
        for item in items {
            let Item::Event(ev) = item else {
                sse::write_item(&item, out);
                continue;
            };
            self.count_event();
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

    /// The upstream body ended cleanly: flush the decoder and end the client's stream.
    fn close(&mut self, out: &mut BytesMut) {
        match &mut self.mode {
            Mode::OpenAi { .. } => return,
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
    fn forward_openai(&mut self, out: &mut BytesMut) {
        let include_usage = matches!(self.mode, Mode::OpenAi { include_usage: true });
        for item in self.items.drain(..) {
            match item {
                Item::Comment(_) => sse::write_item(&item, out),
                Item::Event(mut ev) => {
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
                    if ev.data != "[DONE]" {
                        if let Some(rewritten) = self.think.as_mut().and_then(|t| t.rewrite(&ev.data)) {
                            ev.data = rewritten;
                        }
                        if self.events == 0 {
                            self.first_event = Some(std::time::Instant::now());
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
    }
}

impl Stream for StreamRelay {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(last) = &mut this.last {
            let bytes = std::task::ready!(last.as_mut().poll(cx));
            this.last = None;
            return Poll::Ready(bytes.map(Ok));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            // The deadline is checked only when the body has nothing to give, so a stream
            // that is flowing is never cut between two ready chunks.
            let polled = match this.body.poll_chunk(cx) {
                Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => {
                    Poll::Ready(Some(Err(this.provider.total_timeout())))
                }
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(data))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(this.provider.body_error(&e)))),
                Poll::Ready(None) => Poll::Ready(None),
            };
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    this.parser.feed(&chunk, &mut this.items);
                    if this.items.is_empty() {
                        continue;
                    }
                    let mut out = BytesMut::new();
                    if let Some(e) = this.forward(&mut out) {
                        // An upstream error event: the client has it; the stream is over.
                        return Poll::Ready(Some(Ok(this.end_with(StreamEnd::UpstreamFailed(e.message), out))));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out.freeze())));
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    let msg = format!("the upstream stream broke: {}", err.message);
                    let err = Error { message: msg.clone(), ..err };
                    let mut out = BytesMut::new();
                    this.error_event(&err, &mut out);
                    return Poll::Ready(Some(Ok(this.end_with(StreamEnd::UpstreamFailed(msg), out))));
                }
                Poll::Ready(None) => {
                    this.parser.finish(&mut this.items);
                    let mut out = BytesMut::new();
                    let end = match this.forward(&mut out) {
                        Some(e) => StreamEnd::UpstreamFailed(e.message),
                        None => {
                            this.close(&mut out);
                            StreamEnd::Completed
                        }
                    };
                    let out = this.end_with(end, out);
                    if out.is_empty() {
                        // Nothing more now: the hook's last bytes, if it is making them.
                        return self.poll_next(cx);
                    }
                    return Poll::Ready(Some(Ok(out)));
                }
            }
        }
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
