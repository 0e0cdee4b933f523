//! One upstream attempt, from start to settlement: when it started and how its target was
//! chosen; on success the price of its usage, the router told (observed output, health) and
//! its ledger row queued; on failure the same row with no usage, and the circuit told. Its
//! metrics and span are told too, and the attempt that answers a request writes the
//! request's last word (access line, end of its span) when it settles.

use super::limits::Held;
use crate::canonical::Usage;
use crate::error::{Error, ErrorKind};
use crate::ledger::{Estimate, LedgerEntry};
use crate::limit::Spent;
use crate::meter::energy::{self, Energy};
use crate::meter::{Cost, Price};
use crate::relay::Facts;
use crate::route::Target;
use crate::state::{Caller, SharedState, Shutdown};
use crate::telemetry::metrics::{Answered, Metrics, RouteId, SeriesId};
use crate::telemetry::{trace, Ending, Finish, Watch};
use std::time::{Duration, Instant};

/// How an attempt's target was chosen, which decides how it is priced and whom it reports to.
#[derive(Clone, Copy, Debug)]
pub(super) enum Chosen {
    /// Named by the client: priced by the catalog price found when the target was checked.
    Explicit(Price),
    /// A router entry (an index into its entries): priced by the entry's catalog model, and
    /// the entry's health and observed output are told the outcome.
    Routed(usize),
}

/// One upstream attempt, from start to settlement.
pub(super) struct Attempt {
    /// Taken by the settle: an attempt dropped with it still here was never settled (its
    /// client went away before the answer), and its drop records that.
    state: Option<SharedState>,
    caller: Caller,
    pub(super) target: Target,
    number: u32,
    route_reason: Option<String>,
    /// The answer checks this attempt's answer went through, for its ledger row.
    pub(super) checks: Option<String>,
    /// What the request needs of a model (`Needs::bits`), for its ledger row.
    pub(super) needs: u8,
    /// A side call (a judge's grade, a shadow's answer): attempt 0 in the ledger, and no
    /// counterfactual, since the reference model would not have made it either; its cost
    /// then counts against the savings.
    side: bool,
    chosen: Chosen,
    ts_ms: i64,
    pub(super) started: Instant,
    pub(super) ttfb: Option<Duration>,
    stream: bool,
    /// The attempt's budget and rate reservation (virtual keys), settled with its cost.
    pub(super) held: Option<Held>,
    route: RouteId,
    /// Its (provider, model) in the metrics (None: metrics off).
    series: Option<SeriesId>,
    /// Its span (traces on). Boxed, like `ending`: an attempt lives in the request's future,
    /// which should not grow with what only traces or the access line use.
    traced: Option<Box<Traced>>,
    /// Set on the attempt that answers: its settle ends the request.
    pub(super) ending: Option<Box<Ending>>,
    /// Streams, while metrics are on: sending to the answer's first token.
    first_token: Option<Duration>,
    /// Sending to the answer's last byte (or the failure): the row's latency and the
    /// metrics' operation duration. Noted by [`Attempt::waited`] for a non-streamed answer,
    /// else on first use (a stream's end).
    latency: Option<Duration>,
}

/// An attempt's span, and what its answer says of itself.
struct Traced {
    span: opentelemetry_sdk::trace::Span,
    facts: Facts,
}

/// What an attempt came to: its money and its energy estimate (the headers of a settled,
/// non-streaming response; a stream's closing comment).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Settled {
    pub(super) cost: Cost,
    pub(super) reference: Cost,
    pub(super) energy: Energy,
}

impl Attempt {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        state: &SharedState,
        caller: Caller,
        target: &Target,
        stream: bool,
        number: u32,
        route_reason: Option<String>,
        chosen: Chosen,
        watch: &mut Watch,
    ) -> Attempt {
        let ts_ms = crate::timespec::now_ms();
        let t = &state.telemetry;
        let series = t.metrics.as_ref().map(|m| match chosen {
            Chosen::Routed(i) => m.routed(i),
            Chosen::Explicit(price) => m.explicit(&target.provider, price.position()),
        });
        watch.attempts = number;
        if let (Some(m), Some(s)) = (&t.metrics, series) {
            watch.series = Some(s);
            if number > 1 {
                m.fallback(watch.route, s);
            }
        }
        let mut traced = None;
        if let (Some(tracer), Some(parent)) = (&t.tracer, watch.span()) {
            let operation = match chosen {
                Chosen::Explicit(p) if state.meter.model(p).kind == crate::catalog::Kind::Embedding => "embeddings",
                _ => "chat",
            };
            let start =
                trace::AttemptStart { operation, provider: &target.provider.id, model: &target.upstream_model, number };
            traced = Some(Box::new(Traced { span: tracer.attempt(parent, &start), facts: Facts::default() }));
        }
        watch.tried(&target.provider.id, &target.upstream_model);
        Attempt {
            route: watch.route,
            series,
            traced,
            ending: None,
            first_token: None,
            latency: None,
            state: Some(state.clone()),
            caller,
            target: target.clone(),
            number,
            route_reason,
            checks: None,
            needs: 0,
            side: false,
            chosen,
            ts_ms,
            started: Instant::now(),
            ttfb: None,
            stream,
            held: None,
        }
    }

    /// A side call at `target` (a judge's grade, a shadow's answer) for `caller`'s request,
    /// counted in the metrics under `route`: it answers no client, so it has no part in the
    /// request's telemetry (no span, no access line), and its ledger row is attempt 0 with
    /// `route_reason` saying what it was for.
    pub(super) fn aside(
        state: &SharedState,
        caller: Caller,
        target: &Target,
        price: Price,
        route_reason: String,
        route: RouteId,
    ) -> Attempt {
        let series = state.telemetry.metrics.as_ref().map(|m| m.explicit(&target.provider, price.position()));
        Attempt {
            route,
            series,
            traced: None,
            ending: None,
            first_token: None,
            latency: None,
            state: Some(state.clone()),
            caller,
            target: target.clone(),
            number: 0,
            route_reason: Some(route_reason),
            checks: None,
            needs: 0,
            side: true,
            chosen: Chosen::Explicit(price),
            ts_ms: crate::timespec::now_ms(),
            started: Instant::now(),
            ttfb: None,
            stream: false,
            held: None,
        }
    }

    /// The upstream was done with the request after `d` (the attempt ran beside others, so
    /// it is timed by its own clock, not by when the caller looked).
    pub(super) fn waited_for(&mut self, d: Duration) {
        self.latency = Some(d);
    }

    /// The status and error kind of this attempt if its request is dropped now ([`gone`]).
    pub(super) fn gone(&self) -> (u16, &'static str) {
        gone(&self.state().shutdown)
    }

    /// Held by work that settles this attempt after its request is gone, so a graceful
    /// stop waits for it before the ledger's last flush.
    pub(super) fn settling(&self) -> tokio_util::task::task_tracker::TaskTrackerToken {
        self.state().shutdown.settling.token()
    }

    fn state(&self) -> &SharedState {
        self.state.as_ref().expect("an attempt is used only until it is settled")
    }

    /// The upstream is done with the request (its answer is complete, or it failed): the
    /// attempt's latency, and while metrics are on, time the request waited on it. One clock
    /// read, and none when neither the ledger nor the metrics want the time.
    #[inline]
    pub(super) fn waited(&mut self, watch: &mut Watch) {
        if self.series.is_none() && self.state().ledger.is_none() {
            return;
        }
        let d = self.started.elapsed();
        self.latency = Some(d);
        if self.series.is_some() {
            watch.upstream += d;
        }
    }

    /// A stream's first token arrived: its time to first token, and while metrics are on, the
    /// request waited on the upstream until now (nothing reached the client before it); the
    /// rest of the stream is relayed, not waited on.
    #[inline]
    pub(super) fn first_token_came(&mut self, watch: &mut Watch) {
        if self.series.is_some() {
            let d = self.started.elapsed();
            self.first_token = Some(d);
            watch.upstream += d;
        }
    }

    /// Whether the attempt has a span (traces are on).
    pub(super) fn traced(&self) -> bool {
        self.traced.is_some()
    }

    /// What a streamed answer said of itself ([`crate::relay::StreamRelay::note_facts`]),
    /// for the spans.
    pub(super) fn streamed_facts(&mut self, facts: Option<Facts>) {
        if let (Some(t), Some(f)) = (&mut self.traced, facts) {
            t.facts = f;
        }
    }

    /// While traces are on: what a non-streamed answer (`body`, in `client`'s dialect) says
    /// of itself, for the spans.
    #[inline]
    pub(super) fn read_facts(&mut self, body: &[u8], client: crate::canonical::Dialect) {
        if self.traced.is_some() {
            self.read_facts_now(body, client);
        }
    }

    #[inline(never)]
    fn read_facts_now(&mut self, body: &[u8], client: crate::canonical::Dialect) {
        let Some(state) = &self.state else { return };
        if let Some(t) = &mut self.traced {
            t.facts = super::answer::facts(body, client, state.telemetry.capture_content);
        }
    }

    fn latency(&mut self) -> Duration {
        let started = self.started;
        *self.latency.get_or_insert_with(|| started.elapsed())
    }

    /// The upstream answered: close its circuit and fold in its time to first byte.
    pub(super) fn healthy(&self) {
        if let Chosen::Routed(i) = self.chosen {
            let router = &self.state().router;
            router.health.record_success(&router.entries[i].key, self.ttfb.unwrap_or_default(), Instant::now());
        }
    }

    /// Price the usage and build the ledger row. Returns the cost and the reference cost.
    pub(super) fn settle(
        mut self,
        usage: Usage,
        estimate: Option<Estimate>,
        status: u16,
        error: Option<&str>,
    ) -> (Settled, Option<Record>) {
        let state = self.state.take().expect("an attempt is settled once");
        if let (Chosen::Routed(i), None) = (self.chosen, error) {
            state.router.entries[i].observe_output(usage.output_total());
        }
        let meter = &state.meter;
        let model = match self.chosen {
            Chosen::Explicit(price) => meter.model(price),
            // The entry holds the catalog model the meter would find for its target.
            Chosen::Routed(i) => &state.router.entries[i].model,
        };
        let (cost, mut reference) = meter.settle(model, &usage);
        if self.side {
            reference = Cost(0);
        }
        // The model's rates were fixed at catalog load: a few integer operations here.
        let settled = Settled { cost, reference, energy: energy::estimate(&usage, &model.energy.rates) };
        self.tell(&state, &usage, &settled, status, error);
        if let Some(held) = self.held.take() {
            let u = &usage;
            let tokens = u.input_total().saturating_add(u.output_total());
            held.settle(Spent { cost: cost.0, tokens });
        }
        let entry =
            state.ledger.is_some().then(|| self.row(usage, &settled, &meter.catalog.version, status, error, estimate));
        // The row travels with the state it came from (not a clone of the writer: its
        // reference counts are shared by every worker, so touching them costs).
        (settled, entry.map(|entry| Record { state, entry }))
    }

    /// The metrics, the attempt's span and, for the attempt that answered, its request's
    /// last word: each only while it is on.
    #[inline]
    fn tell(&mut self, state: &SharedState, usage: &Usage, s: &Settled, status: u16, error: Option<&str>) {
        if let (Some(m), Some(series)) = (&state.telemetry.metrics, self.series) {
            self.count(m, series, usage, s, error);
        }
        if self.traced.is_some() || self.ending.is_some() {
            self.last_words(state, usage, s.cost.0, status, error);
        }
    }

    fn count(&mut self, m: &Metrics, series: SeriesId, usage: &Usage, s: &Settled, error: Option<&str>) {
        let (cost, reference) = (s.cost.0, s.reference.0);
        m.energy(self.route, series, s.energy.uwh, s.energy.co2e_ug);
        match error {
            None => {
                let a = Answered {
                    input_tokens: usage.input_uncached + usage.input_cache_read + usage.input_cache_write,
                    output_tokens: usage.output_total(),
                    cost_nanos: cost,
                    reference_nanos: reference,
                    duration: self.latency(),
                    first_token: self.first_token,
                };
                m.answered(self.route, series, &a)
            }
            Some(kind) => {
                m.failed(series, kind);
                if cost != 0 {
                    m.spent(self.route, series, cost, reference);
                }
            }
        }
    }

    /// The attempt's span ends, and if it answered, its request's access line and span.
    #[inline(never)]
    fn last_words(&mut self, state: &SharedState, usage: &Usage, cost: i64, status: u16, error: Option<&str>) {
        let output = usage.output_total();
        let input = usage.input_uncached + usage.input_cache_read + usage.input_cache_write;
        let used = error.is_none() || cost != 0;
        let (span, facts) = match self.traced.take() {
            Some(t) => (Some(t.span), t.facts),
            None => (None, Facts::default()),
        };
        let outcome = || trace::Outcome {
            provider: Some(&self.target.provider.id),
            response_model: facts.model.as_deref(),
            response_id: facts.id.as_deref(),
            finish_reasons: facts.finish_reasons.clone(),
            input_tokens: used.then_some(input),
            output_tokens: used.then_some(output),
            cost_nanos: Some(cost),
            status,
            error,
            route_reason: self.route_reason.as_deref(),
            output_messages: facts.output.clone(),
            ..trace::Outcome::default()
        };
        if let Some(span) = span {
            trace::end_attempt(span, outcome());
        }
        if let Some(end) = self.ending.take() {
            let f = Finish {
                provider: Some(&self.target.provider.id),
                model: Some(&self.target.upstream_model),
                status,
                error,
                input_tokens: used.then_some(input),
                output_tokens: used.then_some(output),
                cost_nanos: Some(cost),
                ttfb: self.ttfb,
            };
            state.telemetry.finish(*end, self.caller.who(), f, outcome());
        }
    }

    /// The attempt's ledger row.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        usage: Usage,
        s: &Settled,
        catalog_version: &str,
        status: u16,
        error: Option<&str>,
        estimate: Option<Estimate>,
    ) -> LedgerEntry {
        LedgerEntry {
            // `String::from`, not `to_string`: on an `Arc<str>` that goes through `Display`.
            request_id: String::from(&*self.caller.request_id),
            attempt: self.number,
            ts_ms: self.ts_ms,
            key_id: self.caller.key_id.clone(),
            tenant_id: self.caller.key.as_ref().map(|k| k.group.clone()),
            provider: self.target.provider.id.clone(),
            model: self.target.upstream_model.clone(),
            route_reason: self.route_reason.take(),
            checks: self.checks.take(),
            usage,
            cost_nanos: s.cost.0,
            reference_cost_nanos: s.reference.0,
            catalog_version: catalog_version.to_string(),
            ttfb_ms: self.ttfb.map(|d| d.as_millis() as u32),
            latency_ms: self.latency().as_millis() as u32,
            status,
            error_kind: error.map(str::to_string),
            estimate,
            stream: self.stream,
            needs: self.needs,
            cache_hit: false,
            cache_saved_nanos: 0,
            // Every row an attempt writes carries the estimate (0 for an attempt with no usage).
            energy_uwh: Some(s.energy.uwh),
            co2e_ug: Some(s.energy.co2e_ug),
        }
    }

    /// A failed attempt: a ledger row with no usage, health told, the error handed back
    /// without the provider's key in it, whatever the upstream quoted.
    pub(super) async fn fail(self, e: Error) -> Error {
        let e = self.target.provider.redact(e);
        if let (Chosen::Routed(i), crate::error::Origin::Upstream) = (self.chosen, e.origin()) {
            let router = &self.state().router;
            let key = &router.entries[i].key;
            // Out of balance will not fix itself within a cooldown: open the circuit now.
            let hits = match &e.kind {
                ErrorKind::UpstreamStatus(s) if s.exhausted => router.failure_threshold,
                _ => 1,
            };
            for _ in 0..hits {
                router.health.record_failure(key, Instant::now());
            }
        }
        let (_, record) = self.settle(Usage::default(), None, e.status().as_u16(), Some(e.label()));
        if let Some(r) = record {
            r.send().await;
        }
        e
    }
}

/// An attempt dropped unsettled: its request's future was dropped (the client closed the
/// connection before the answer, or the shutdown deadline passed), which also cancelled the
/// upstream call. Its row says so ([`gone`], no usage: what the upstream had done by then is
/// unknown); its hold, if any, is released at nothing by its own drop.
impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else { return };
        let (status, error) = gone(&state.shutdown);
        self.tell(&state, &Usage::default(), &Settled::default(), status, Some(error));
        if state.ledger.is_none() {
            return;
        }
        let version = state.meter.catalog.version.clone();
        let entry = self.row(Usage::default(), &Settled::default(), &version, status, Some(error), None);
        Record { state, entry }.send_detached();
    }
}

/// The status and error kind of an attempt whose request was dropped before it ended: 499
/// `client_disconnected` (nginx's code for a client that closed first), or 503
/// `shutdown_deadline` when the gateway ended it because `server.shutdown_grace` ran out.
fn gone(shutdown: &Shutdown) -> (u16, &'static str) {
    match shutdown.overdue() {
        true => (503, "shutdown_deadline"),
        false => (499, "client_disconnected"),
    }
}

/// A ledger row on its way to the writer.
pub(super) struct Record {
    state: SharedState,
    entry: LedgerEntry,
}

impl Record {
    /// Queue the row (the writer's full-queue policy applies; it never waits on the database).
    pub(super) async fn send(self) {
        if let Some(writer) = &self.state.ledger {
            writer.record(self.entry).await;
        }
    }

    /// From synchronous code (the end of a stream, possibly inside a drop): queue the row
    /// at once if there is room (always, unless the store has fallen behind), else hand it
    /// to a task so the same full-queue policy applies.
    pub(super) fn send_detached(self) {
        let Some(writer) = &self.state.ledger else { return };
        let Err(entry) = writer.offer(self.entry) else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let state = self.state;
                let settling = state.shutdown.settling.clone();
                settling.spawn_on(async move { Record { state, entry }.send().await }, &rt);
            }
            Err(_) => writer.try_record(entry),
        }
    }
}
