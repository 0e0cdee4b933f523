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

    /// A request reached the exchange. `model` is what the client named.
    pub fn begin(
        &self,
        arrived: Instant,
        operation: &'static str,
        model: &str,
        headers: Option<&axum::http::HeaderMap>,
    ) -> Watch {
        Watch {
            arrived,
            route: RouteId::default(),
            series: self.metrics.as_ref().map(|m| m.none()),
            route_name: None,
            upstream: Duration::ZERO,
            attempts: 0,
            span: self.tracer.as_ref().map(|t| t.request(operation, model, headers)),
            last: None,
            handed: false,
        }
    }

    /// The request is routed on `route`.
    pub fn routed(&self, w: &mut Watch, route: &str) {
        if let Some(m) = &self.metrics {
            w.route = m.route(route);
        }
        if self.wants_names() {
            w.route_name = Some(route.to_string());
        }
        if let Some(span) = &w.span {
            span.set("bourse.route", route.to_string());
        }
    }

    /// The answer's head is leaving: count the request, and if no attempt answered it, write
    /// its last word here.
    pub fn answered(&self, w: Watch, who: Who<'_>, status: u16, error: Option<&'static str>) {
        if let (Some(m), Some(series)) = (&self.metrics, w.series) {
            m.request(w.route, series, status, w.arrived.elapsed().saturating_sub(w.upstream));
        }
        if w.handed {
            return;
        }
        let (provider, model) = match &w.last {
            Some((p, m)) => (Some(p.as_str()), Some(m.as_str())),
            None => (None, None),
        };
        let end = Ending { arrived: w.arrived, route: w.route_name, span: w.span, attempts: w.attempts };
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
                latency_ms = end.arrived.elapsed().as_secs_f64() * 1e3,
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

/// One request as the exchange goes through it.
#[derive(Debug)]
pub struct Watch {
    arrived: Instant,
    pub route: RouteId,
    /// The pair that answered or was tried last (None: metrics off).
    pub series: Option<SeriesId>,
    route_name: Option<String>,
    /// Time spent waiting on upstreams: excluded from what the gateway adds.
    pub upstream: Duration,
    pub attempts: u32,
    pub span: Option<trace::RequestSpan>,
    /// Provider and model of the last attempt, kept for a failed request's access line.
    pub last: Option<(String, String)>,
    handed: bool,
}

impl Watch {
    /// The request's last word goes with the attempt that answers it.
    pub fn hand_over(&mut self) -> Ending {
        self.handed = true;
        Ending {
            arrived: self.arrived,
            route: self.route_name.clone(),
            span: self.span.take(),
            attempts: self.attempts,
        }
    }
}

/// What the answering attempt needs to write its request's last word.
#[derive(Debug)]
pub struct Ending {
    arrived: Instant,
    route: Option<String>,
    span: Option<trace::RequestSpan>,
    attempts: u32,
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
