//! What the gateway tells about itself: [`metrics`] (`/metrics`), [`trace`]s (OTLP, off by
//! default) and logs.
//!
//! Logs are `tracing` events written to stderr as text or JSON (`--log-format`,
//! `[telemetry] log_format`), through a non-blocking writer: a bounded queue drained by a
//! thread of its own, which drops lines rather than make a request wait when stderr cannot
//! keep up. `RUST_LOG` overrides the default filter. With `[telemetry] access_log = true`
//! (or `--access-log`) every inference request ends with one info line (request id, key id,
//! tenant, route, provider, model, status, tokens, cost, TTFB, latency); it is off by
//! default because formatting it costs the request path more than everything else here
//! (bench/RESULTS.md). Prompts, completions and secrets are never logged.
//!
//! The exchange calls in at a few points: [`Telemetry::begin`] when a request arrives at it,
//! once per attempt (its series, span and outcome, in `exchange/attempt.rs`) and
//! [`Telemetry::answered`] when the answer's head leaves. A request's last word (its access
//! line and the end of its span) comes from the attempt that answered it, when it settles
//! (a stream's end), or from `answered` for a request no attempt answered.
//!
//! Every request goes through those points, so each is an inline check that does nothing
//! more while its part is off, with the work out of line: what only the access line and the
//! spans need lives in a box ([`Ending`]) that exists only while one of them is on, and no
//! clock is read for a part that is off. The request's future then carries a few words, not
//! the names and spans (the cost per request is in bench/RESULTS.md).

pub mod metrics;
pub mod trace;

use crate::config::{LogFormat, TelemetryConfig};
use metrics::{Metrics, RouteId, SeriesId};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

/// Keeps the log writer's thread; dropping it writes what is queued.
#[must_use = "logs still queued are lost when this is dropped"]
pub struct LogGuard {
    _worker: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Start logging in `format`. Call once, early; a second call changes nothing.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("bourse=info,warn"));
    let (writer, guard) =
        tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(true).finish(std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(false);
    let done = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init(),
    };
    LogGuard { _worker: done.is_ok().then_some(guard) }
}

/// The metrics, the tracer and the log switches of a running gateway.
#[derive(Debug, Default)]
pub struct Telemetry {
    pub metrics: Option<Arc<Metrics>>,
    /// Set at start-up when `otlp_endpoint` is configured (it needs the runtime).
    pub tracer: Option<trace::Tracer>,
    pub access_log: bool,
    pub capture_content: bool,
}

impl Telemetry {
    pub fn new(
        cfg: &TelemetryConfig,
        router: &crate::route::Router,
        providers: &crate::route::Providers,
        catalog: &crate::catalog::Catalog,
    ) -> Telemetry {
        Telemetry {
            metrics: cfg.metrics.then(|| Arc::new(Metrics::new(router, providers, catalog, cfg.tenant_labels))),
            tracer: None,
            access_log: cfg.access_log,
            capture_content: cfg.capture_content,
        }
    }

    /// Whether requests keep the names their access line or span need.
    fn wants_names(&self) -> bool {
        self.access_log || self.tracer.is_some()
    }

    /// Whether the edge notes when a request arrived: the gateway-latency histogram and the
    /// access line's latency read it; with neither, no clock is read for it.
    #[inline]
    pub fn times_requests(&self) -> bool {
        self.metrics.is_some() || self.access_log
    }

    /// A request reached the exchange. `model` is what the client named; `arrived` is the
    /// edge's note of its arrival (see [`Telemetry::times_requests`]).
    #[inline]
    pub fn begin(
        &self,
        arrived: Option<Instant>,
        operation: &'static str,
        model: &str,
        headers: Option<&axum::http::HeaderMap>,
    ) -> Watch {
        let ending = self.wants_names().then(|| self.ending(arrived, operation, model, headers));
        Watch {
            arrived,
            route: RouteId::default(),
            series: self.metrics.as_ref().map(|m| m.none()),
            upstream: Duration::ZERO,
            attempts: 0,
            ending,
            handed: false,
        }
    }

    /// What a request's access line and span will need, and its span started.
    #[inline(never)]
    fn ending(
        &self,
        arrived: Option<Instant>,
        operation: &'static str,
        model: &str,
        headers: Option<&axum::http::HeaderMap>,
    ) -> Box<Ending> {
        Box::new(Ending {
            arrived,
            route: None,
            span: self.tracer.as_ref().map(|t| t.request(operation, model, headers)),
            last: None,
            attempts: 0,
        })
    }

    /// The request is routed on `route`.
    pub fn routed(&self, w: &mut Watch, route: &str) {
        if let Some(m) = &self.metrics {
            w.route = m.route(route);
        }
        if let Some(end) = &mut w.ending {
            end.route = Some(route.to_string());
            if let Some(span) = &end.span {
                span.set("bourse.route", route.to_string());
            }
        }
    }

    /// `resp`'s head is leaving: count the request, and if no attempt answered it, write its
    /// last word here (`who` asked).
    #[inline]
    pub fn answered<'a>(&self, w: Watch, resp: &axum::response::Response, who: impl FnOnce() -> Who<'a>) {
        if let (Some(m), Some(series), Some(arrived)) = (&self.metrics, w.series, w.arrived) {
            m.request(w.route, series, resp.status().as_u16(), arrived, w.upstream);
        }
        if let (false, Some(end)) = (w.handed, w.ending) {
            self.unanswered(*end, w.attempts, who(), resp);
        }
    }

    /// The last word of a request no attempt answered.
    #[inline(never)]
    fn unanswered(&self, mut end: Ending, attempts: u32, who: Who<'_>, resp: &axum::response::Response) {
        let status = resp.status().as_u16();
        // The label a rendered error carries.
        let error = resp.extensions().get::<crate::error::ErrorLabel>().map(|l| l.0);
        end.attempts = attempts;
        let last = end.last.take();
        let (provider, model) = match &last {
            Some((p, m)) => (Some(p.as_str()), Some(m.as_str())),
            None => (None, None),
        };
        self.finish(
            end,
            who,
            Finish { provider, model, status, error, ..Finish::default() },
            trace::Outcome::default(),
        );
    }

    /// A request's last word: its access line and the end of its span.
    pub fn finish<'a>(&self, end: Ending, who: Who<'_>, f: Finish<'a>, mut outcome: trace::Outcome<'a>) {
        if self.access_log {
            let mut cost = [0u8; 24];
            let cost = f.cost_nanos.map(|c| crate::meter::Cost(c).usd_ascii(&mut cost).to_vec());
            let cost = cost.as_deref().and_then(|c| std::str::from_utf8(c).ok()).unwrap_or("");
            tracing::info!(
                request_id = who.request_id,
                key_id = who.key_id.unwrap_or(""),
                tenant = who.tenant.unwrap_or(""),
                route = end.route.as_deref().unwrap_or(""),
                provider = f.provider.unwrap_or(""),
                model = f.model.unwrap_or(""),
                status = f.status,
                input_tokens = f.input_tokens,
                output_tokens = f.output_tokens,
                cost_usd = cost,
                ttfb_ms = f.ttfb.map(|d| d.as_secs_f64() * 1e3),
                latency_ms = end.arrived.map(|a| a.elapsed().as_secs_f64() * 1e3),
                attempts = end.attempts,
                error = f.error.unwrap_or(""),
                "request"
            );
        }
        if let Some(span) = end.span {
            outcome.provider = f.provider;
            outcome.status = f.status;
            outcome.error = f.error;
            outcome.cost_nanos = f.cost_nanos;
            outcome.input_tokens = f.input_tokens;
            outcome.output_tokens = f.output_tokens;
            span.end(outcome);
        }
    }
}

/// Who asked, as the access line names them (from the edge's `Caller`).
#[derive(Clone, Copy, Debug)]
pub struct Who<'a> {
    pub request_id: &'a str,
    pub key_id: Option<&'a str>,
    pub tenant: Option<&'a str>,
}

/// One request as the exchange goes through it. It lives in the request's future: what only
/// the access line and the span need is boxed in [`Ending`], and absent while both are off.
#[derive(Debug)]
pub struct Watch {
    arrived: Option<Instant>,
    pub route: RouteId,
    /// The pair that answered or was tried last (None: metrics off).
    pub series: Option<SeriesId>,
    /// Time spent waiting on upstreams (counted while metrics are on): excluded from what
    /// the gateway adds.
    pub upstream: Duration,
    pub attempts: u32,
    ending: Option<Box<Ending>>,
    handed: bool,
}

impl Watch {
    /// The request's span, while traces are on.
    #[inline]
    pub fn span(&self) -> Option<&trace::RequestSpan> {
        self.ending.as_ref().and_then(|e| e.span.as_ref())
    }

    /// An attempt at `provider`'s `model` starts: kept for the access line of a request no
    /// attempt answers.
    #[inline]
    pub fn tried(&mut self, provider: &str, model: &str) {
        if let Some(end) = &mut self.ending {
            end.tried(provider, model);
        }
    }

    /// The request's last word goes with the attempt that answers it: into `to`, when there
    /// is one to write (an access line or a span to end).
    #[inline]
    pub fn hand_over(&mut self, to: &mut Option<Box<Ending>>) {
        self.handed = true;
        if self.ending.is_some() {
            self.pass_ending(to);
        }
    }

    #[inline(never)]
    fn pass_ending(&mut self, to: &mut Option<Box<Ending>>) {
        *to = self.ending.take().map(|end| end.handed(self.attempts));
    }
}

/// What a request's access line and span need, from its arrival at the exchange to its last
/// word (written by the attempt that answered it, or when its answer leaves if none did).
#[derive(Debug)]
pub struct Ending {
    arrived: Option<Instant>,
    route: Option<String>,
    span: Option<trace::RequestSpan>,
    /// Provider and model of the last attempt, kept for a failed request's access line.
    last: Option<(String, String)>,
    attempts: u32,
}

impl Ending {
    #[inline(never)]
    fn tried(&mut self, provider: &str, model: &str) {
        self.last = Some((provider.to_string(), model.to_string()));
    }

    /// Handed to the attempt that answers, after `attempts` of them.
    fn handed(mut self: Box<Self>, attempts: u32) -> Box<Self> {
        self.attempts = attempts;
        self.last = None;
        self
    }
}

/// How a request ended, for its access line and span.
#[derive(Debug, Default)]
pub struct Finish<'a> {
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub status: u16,
    pub error: Option<&'a str>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cost_nanos: Option<i64>,
    pub ttfb: Option<Duration>,
}
