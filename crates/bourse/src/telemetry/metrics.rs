//! The gateway's metrics, as `/metrics` serves them (Prometheus/OpenMetrics text).
//!
//! Every series a request can touch is known at start-up: routes come from the config, and
//! each (provider, model) pair from the providers and the catalog models they serve, plus one
//! `other` per provider and one empty pair for requests refused before any attempt. A request
//! therefore finds its cells by index ([`RouteId`], [`SeriesId`]: resolved from the router
//! entry or the catalog position the exchange already holds) and counts with relaxed atomic
//! adds: no lock, no allocation, no string hashed. A client that invents model names cannot
//! create series: names are never read from the request.
//!
//! Values are kept here (integers: tokens, nanoseconds, nano-USD) and handed to
//! `prometheus-client`'s encoder at scrape time, which writes the exposition; cells that never
//! moved are left out, so a large catalog does not make a large scrape.
//!
//! Names follow the OpenTelemetry GenAI semantic conventions (v1.41) the way the OpenTelemetry
//! Prometheus exporter maps them (dots to underscores, the unit as a suffix, `_total` on
//! counters); the gateway's own are under `bourse_`. The README lists them all.

use crate::ledger::WriterStats;
use crate::provider::Provider;
use crate::route::Router;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A route, by position (0: the request named a model, not a route).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteId(u16);

/// A (provider, model) pair, by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesId(u32);

/// Status classes: 1xx to 5xx.
const CLASSES: usize = 5;
const CLASS_NAMES: [&str; CLASSES] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The error kinds an upstream attempt ends with (labels of [`crate::error::Error::label`],
/// and the stream's own); anything else is `other`.
const ERROR_KINDS: [&str; 11] = [
    "upstream_unreachable",
    "upstream_timeout",
    "upstream_rate_limited",
    "upstream_exhausted",
    "upstream_5xx",
    "upstream_4xx",
    "upstream_protocol",
    "upstream_stream_broken",
    "client_disconnected",
    "shutdown_deadline",
    "other",
];

/// Bucket bounds the GenAI conventions recommend, in the unit the cells count in.
const TOKEN_BOUNDS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];
const DURATION_BOUNDS: [f64; 14] =
    [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];
const TTFT_BOUNDS: [f64; 16] =
    [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
const TPOT_BOUNDS: [f64; 13] = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];
/// What the gateway adds is sub-millisecond when all is well: finer at the bottom.
const GATEWAY_BOUNDS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The most bounds a histogram has (the time-to-first-token one).
const MAX_BOUNDS: usize = 16;
const _: () = assert!(
    TOKEN_BOUNDS.len() <= MAX_BOUNDS
        && DURATION_BOUNDS.len() <= MAX_BOUNDS
        && TTFT_BOUNDS.len() <= MAX_BOUNDS
        && TPOT_BOUNDS.len() <= MAX_BOUNDS
        && GATEWAY_BOUNDS.len() <= MAX_BOUNDS
);

/// A histogram over integer observations (tokens or nanoseconds): counts per bucket (not
/// cumulative; the encoder accumulates) and their sum; the count is the buckets' total.
/// Fixed-size arrays: finding and counting a bucket takes no bounds check and no pointer
/// chase, on every answer.
#[derive(Debug)]
struct Hist {
    /// Upper bounds in the observations' unit, then `u64::MAX` up to [`MAX_BOUNDS`]: a search
    /// past the last bound stops at the +Inf bucket.
    bounds: [u64; MAX_BOUNDS],
    /// Upper bounds as exported.
    exported: &'static [f64],
    /// One per bound, then +Inf (the rest unused).
    buckets: [AtomicU64; MAX_BOUNDS + 1],
    sum: AtomicU64,
    /// Exported unit per observed unit (1e-9 for nanoseconds as seconds).
    scale: f64,
}

impl Hist {
    fn new(exported: &'static [f64], scale: f64) -> Hist {
        let mut bounds = [u64::MAX; MAX_BOUNDS];
        for (b, e) in bounds.iter_mut().zip(exported) {
            *b = (e / scale).round() as u64;
        }
        Hist { bounds, exported, buckets: Default::default(), sum: AtomicU64::new(0), scale }
    }

    fn seconds(exported: &'static [f64]) -> Hist {
        Hist::new(exported, 1e-9)
    }

    fn observe(&self, v: u64) {
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(MAX_BOUNDS);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(d.subsec_nanos())));
    }

    /// Observations so far.
    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    fn encode(&self, e: &mut MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = Vec::with_capacity(self.exported.len() + 1);
        let mut count = 0;
        // The cells past +Inf are never used.
        for (i, b) in self.buckets.iter().enumerate().take(self.exported.len() + 1) {
            let n = b.load(Relaxed);
            count += n;
            buckets.push((self.exported.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        let sum = self.sum.load(Relaxed) as f64 * self.scale;
        e.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// The GenAI histograms of one (provider, model), made on its first answer.
#[derive(Debug)]
struct GenAi {
    input_tokens: Hist,
    output_tokens: Hist,
    duration: Hist,
    ttft: Hist,
    tpot: Hist,
}

impl GenAi {
    fn new() -> GenAi {
        GenAi {
            input_tokens: Hist::new(&TOKEN_BOUNDS, 1.0),
            output_tokens: Hist::new(&TOKEN_BOUNDS, 1.0),
            duration: Hist::seconds(&DURATION_BOUNDS),
            ttft: Hist::seconds(&TTFT_BOUNDS),
            tpot: Hist::seconds(&TPOT_BOUNDS),
        }
    }
}

/// One (provider, model) pair's labels and its lazily made histograms.
#[derive(Debug)]
struct Series {
    provider: Arc<str>,
    model: Arc<str>,
    /// `gen_ai.operation.name`: from the catalog model's kind.
    operation: &'static str,
    genai: OnceLock<Box<GenAi>>,
}

/// A provider's series, found by the catalog position of the model an attempt is priced by.
#[derive(Debug)]
struct ProviderSeries {
    provider: Arc<Provider>,
    /// (catalog position, series), sorted by position.
    by_price: Vec<(usize, u32)>,
    /// Anything this provider serves that is not among them.
    other: u32,
}

/// Money of one (route, series) cell, in nano-USD.
#[derive(Debug, Default)]
struct Money {
    cost: AtomicU64,
    /// Reference cost minus cost, for attempts cheaper than the reference.
    savings: AtomicU64,
    /// Cost minus reference cost, for attempts dearer than it: savings minus this is the net.
    overspend: AtomicU64,
    /// Estimated energy, micro-watt-hours, and emissions, micrograms CO2e (meter/energy.rs).
    energy_uwh: AtomicU64,
    co2e_ug: AtomicU64,
}

/// What a settled attempt tells the metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Answered {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_nanos: i64,
    pub reference_nanos: i64,
    /// From sending the request to the end of the answer (the stream's end for a stream).
    pub duration: Duration,
    /// Streams only: from sending the request to the first content event.
    pub first_token: Option<Duration>,
}

/// Values read at scrape time from other parts of the gateway.
#[derive(Debug, Default)]
pub struct Scrape {
    pub ledger: Option<WriterStats>,
    /// Router entry keys (`provider/model`) whose circuit is open, among all of them.
    pub open_circuits: Vec<String>,
    /// (tenant, window, nano-USD left) for every budget a tenant sets.
    pub budgets: Vec<(String, &'static str, i64)>,
}

/// The instruments, and the label sets resolved at start-up.
#[derive(Debug)]
pub struct Metrics {
    routes: Vec<Box<str>>,
    series: Vec<Series>,
    /// Router entry index to series.
    entry_series: Vec<u32>,
    /// Router entry keys, for the circuit gauge.
    entry_keys: Vec<Arc<str>>,
    providers: Vec<ProviderSeries>,
    /// [route][series][class]
    requests: Box<[AtomicU64]>,
    /// [route][series]
    money: Box<[Money]>,
    /// [route][series]: attempts that were a fallback (attempt 2 and later).
    fallbacks: Box<[AtomicU64]>,
    /// [series][error kind]
    errors: Box<[AtomicU64]>,
    /// [route]
    gateway: Box<[Hist]>,
    tenant_labels: bool,
}

impl Metrics {
    /// The label sets of a gateway: its routes, and every (provider, model) the router or the
    /// catalog pairs with a configured provider.
    pub fn new(
        router: &Router,
        providers: &crate::route::Providers,
        catalog: &crate::catalog::Catalog,
        tenant_labels: bool,
    ) -> Metrics {
        let mut routes: Vec<Box<str>> = vec!["".into()];
        routes.extend(router.routes.keys().map(|k| Box::from(k.as_str())));
        let mut series: Vec<Series> = Vec::new();
        let mut index: HashMap<(usize, String), u32> = HashMap::new();
        let mut per_provider = Vec::new();
        let operation = |k: crate::catalog::Kind| match k {
            crate::catalog::Kind::Chat => "chat",
            crate::catalog::Kind::Embedding => "embeddings",
        };
        for (pi, p) in providers.iter().enumerate() {
            let provider: Arc<str> = Arc::from(p.id.as_str());
            let mut by_price = Vec::new();
            for (ci, m) in catalog.models().iter().enumerate() {
                if m.provider != p.id && m.provider != p.vendor {
                    continue;
                }
                let s = *index.entry((pi, m.model.clone())).or_insert_with(|| {
                    series.push(Series {
                        provider: provider.clone(),
                        model: Arc::from(m.model.as_str()),
                        operation: operation(m.kind),
                        genai: OnceLock::new(),
                    });
                    (series.len() - 1) as u32
                });
                by_price.push((ci, s));
            }
            by_price.sort_unstable();
            series.push(Series {
                provider: provider.clone(),
                model: Arc::from("other"),
                operation: "chat",
                genai: OnceLock::new(),
            });
            per_provider.push(ProviderSeries { provider: p.clone(), by_price, other: (series.len() - 1) as u32 });
        }
        let mut entry_series = Vec::with_capacity(router.entries.len());
        for e in &router.entries {
            let pi = providers.iter().position(|p| Arc::ptr_eq(p, &e.provider)).unwrap_or(0);
            let s = match index.get(&(pi, e.model.model.clone())) {
                Some(s) => *s,
                None => per_provider.get(pi).map_or(0, |p: &ProviderSeries| p.other),
            };
            entry_series.push(s);
        }
        // The pair of a request refused before any attempt.
        series.push(Series {
            provider: Arc::from(""),
            model: Arc::from(""),
            operation: "chat",
            genai: OnceLock::new(),
        });
        let cells = routes.len() * series.len();
        let atomics = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        Metrics {
            requests: atomics(cells * CLASSES),
            money: (0..cells).map(|_| Money::default()).collect(),
            fallbacks: atomics(cells),
            errors: atomics(series.len() * ERROR_KINDS.len()),
            gateway: routes.iter().map(|_| Hist::seconds(&GATEWAY_BOUNDS)).collect(),
            entry_keys: router.entries.iter().map(|e| e.key.clone()).collect(),
            routes,
            series,
            entry_series,
            providers: per_provider,
            tenant_labels,
        }
    }

    /// Whether per-tenant series carry the tenant's name (`[telemetry] tenant_labels`).
    pub fn tenant_labels(&self) -> bool {
        self.tenant_labels
    }

    /// A route by name (a handful, compared in order).
    pub fn route(&self, name: &str) -> RouteId {
        RouteId(self.routes.iter().skip(1).position(|r| &**r == name).map_or(0, |i| i as u16 + 1))
    }

    /// The series of a router entry.
    pub fn routed(&self, entry: usize) -> SeriesId {
        SeriesId(self.entry_series.get(entry).copied().unwrap_or(self.none().0))
    }

    /// The series of an attempt at a named model: its provider (by identity) and the catalog
    /// position its price came from.
    pub fn explicit(&self, provider: &Arc<Provider>, catalog_position: usize) -> SeriesId {
        let Some(p) = self.providers.iter().find(|p| Arc::ptr_eq(&p.provider, provider)) else {
            return self.none();
        };
        match p.by_price.binary_search_by_key(&catalog_position, |(c, _)| *c) {
            Ok(i) => SeriesId(p.by_price[i].1),
            Err(_) => SeriesId(p.other),
        }
    }

    /// The empty pair: a request that made no attempt.
    pub fn none(&self) -> SeriesId {
        SeriesId(self.series.len() as u32 - 1)
    }

    fn cell(&self, route: RouteId, series: SeriesId) -> usize {
        usize::from(route.0) * self.series.len() + series.0 as usize
    }

    /// A request's answer is leaving the gateway: its status, and the time the gateway added
    /// (from its arrival to now, less `upstream`, what it spent waiting on upstreams).
    #[inline(never)]
    pub fn request(&self, route: RouteId, series: SeriesId, status: u16, arrived: Instant, upstream: Duration) {
        let class = usize::from(status / 100).clamp(1, CLASSES) - 1;
        self.requests[self.cell(route, series) * CLASSES + class].fetch_add(1, Relaxed);
        self.gateway[usize::from(route.0)].observe_duration(arrived.elapsed().saturating_sub(upstream));
    }

    /// An attempt was priced (a stream cut short costs what it used).
    pub fn spent(&self, route: RouteId, series: SeriesId, cost_nanos: i64, reference_nanos: i64) {
        let m = &self.money[self.cell(route, series)];
        let (cost, reference) = (cost_nanos.max(0) as u64, reference_nanos.max(0) as u64);
        m.cost.fetch_add(cost, Relaxed);
        if reference >= cost {
            m.savings.fetch_add(reference - cost, Relaxed);
        } else {
            m.overspend.fetch_add(cost - reference, Relaxed);
        }
    }

    /// An attempt's energy estimate (nothing to add when it used no tokens).
    #[inline]
    pub fn energy(&self, route: RouteId, series: SeriesId, uwh: i64, co2e_ug: i64) {
        if uwh > 0 {
            let m = &self.money[self.cell(route, series)];
            m.energy_uwh.fetch_add(uwh as u64, Relaxed);
            m.co2e_ug.fetch_add(co2e_ug.max(0) as u64, Relaxed);
        }
    }

    /// An attempt was answered and priced.
    pub fn answered(&self, route: RouteId, series: SeriesId, a: &Answered) {
        self.spent(route, series, a.cost_nanos, a.reference_nanos);
        let g = self.series[series.0 as usize].genai.get_or_init(|| Box::new(GenAi::new()));
        g.input_tokens.observe(a.input_tokens);
        g.output_tokens.observe(a.output_tokens);
        g.duration.observe_duration(a.duration);
        if let Some(first) = a.first_token {
            g.ttft.observe_duration(first);
            // Per output token after the first, as the conventions define it.
            if a.output_tokens > 1 {
                let after = a.duration.saturating_sub(first);
                g.tpot.observe_duration(after / u32::try_from(a.output_tokens - 1).unwrap_or(u32::MAX));
            }
        }
    }

    /// An attempt failed with `kind` (an error label).
    pub fn failed(&self, series: SeriesId, kind: &str) {
        let k = ERROR_KINDS.iter().position(|x| *x == kind).unwrap_or(ERROR_KINDS.len() - 1);
        self.errors[series.0 as usize * ERROR_KINDS.len() + k].fetch_add(1, Relaxed);
    }

    /// A routed request moved on to another candidate.
    pub fn fallback(&self, route: RouteId, series: SeriesId) {
        self.fallbacks[self.cell(route, series)].fetch_add(1, Relaxed);
    }

    /// The exposition, with the values read at scrape time.
    pub fn encode(self: &Arc<Self>, scrape: Scrape) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Exposition { metrics: self.clone(), scrape }));
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// One scrape: the metrics and what was read for it, as a `prometheus-client` collector.
#[derive(Debug)]
struct Exposition {
    metrics: Arc<Metrics>,
    scrape: Scrape,
}

/// A counter's value, read from the cells (the crate's own metric types own their storage).
struct Count<T>(T);

impl<T: prometheus_client::encoding::EncodeCounterValue> EncodeMetric for Count<T> {
    fn encode(&self, mut e: MetricEncoder) -> Result<(), std::fmt::Error> {
        e.encode_counter::<NoLabelSet, _, u64>(&self.0, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A gauge's value, read at scrape time.
struct Level<T>(T);

impl<T: prometheus_client::encoding::EncodeGaugeValue> EncodeMetric for Level<T> {
    fn encode(&self, mut e: MetricEncoder) -> Result<(), std::fmt::Error> {
        e.encode_gauge(&self.0)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

fn usd(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

impl prometheus_client::collector::Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &*self.metrics;
        let n = m.series.len();
        let cells = || (0..m.routes.len()).flat_map(move |r| (0..n).map(move |s| (r, s, r * n + s)));
        let labels = |r: usize, s: usize| {
            let x = &m.series[s];
            [("route", m.routes[r].to_string()), ("provider", x.provider.to_string()), ("model", x.model.to_string())]
        };
        let genai_labels = |s: &Series| {
            [
                ("gen_ai_operation_name", s.operation.to_string()),
                ("gen_ai_provider_name", s.provider.to_string()),
                ("gen_ai_request_model", s.model.to_string()),
            ]
        };

        // GenAI semantic conventions.
        let usd_unit = Unit::Other("usd".into());
        {
            let mut f = enc.encode_descriptor(
                "gen_ai_client_token_usage",
                "Tokens per upstream answer (gen_ai.client.token.usage), by gen_ai_token_type",
                None,
                MetricType::Histogram,
            )?;
            for s in &m.series {
                let Some(g) = s.genai.get() else { continue };
                for (kind, h) in [("input", &g.input_tokens), ("output", &g.output_tokens)] {
                    let l = genai_labels(s);
                    let set = [&l[0], &l[1], &l[2], &("gen_ai_token_type", kind.to_string())];
                    let set: Vec<(&str, &str)> = set.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    h.encode(&mut f.encode_family(&set)?)?;
                }
            }
        }
        for (name, help, pick) in [
            (
                "gen_ai_client_operation_duration",
                "Upstream answer time, request sent to answer complete, successful attempts (gen_ai.client.operation.duration)",
                (|g: &GenAi| &g.duration) as fn(&GenAi) -> &Hist,
            ),
            (
                "gen_ai_server_time_to_first_token",
                "Streams: request sent to first content event (gen_ai.server.time_to_first_token)",
                |g: &GenAi| &g.ttft,
            ),
            (
                "gen_ai_server_time_per_output_token",
                "Streams: time per output token after the first (gen_ai.server.time_per_output_token)",
                |g: &GenAi| &g.tpot,
            ),
        ] {
            let mut f = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
            for s in &m.series {
                let Some(g) = s.genai.get() else { continue };
                let h = pick(g);
                if h.count() == 0 {
                    continue;
                }
                h.encode(&mut f.encode_family(&genai_labels(s))?)?;
            }
        }

        // Bourse's own.
        {
            let mut f = enc.encode_descriptor(
                "bourse_requests",
                "Requests answered, by route, the provider and model that answered (or last tried), and status class",
                None,
                MetricType::Counter,
            )?;
            for (r, s, c) in cells() {
                for (k, class) in CLASS_NAMES.iter().enumerate() {
                    let v = m.requests[c * CLASSES + k].load(Relaxed);
                    if v == 0 {
                        continue;
                    }
                    let l = labels(r, s);
                    let set = [&l[0], &l[1], &l[2], &("status_class", class.to_string())];
                    Count(v).encode(f.encode_family(&set.map(|(k, v)| (*k, v.as_str())))?)?;
                }
            }
        }
        for (name, help, pick) in [
            ("bourse_cost", "Metered cost of upstream answers, USD", (|x: &Money| &x.cost) as fn(&Money) -> &AtomicU64),
            (
                "bourse_savings",
                "Reference cost minus cost, over answers cheaper than the reference model, USD",
                |x: &Money| &x.savings,
            ),
            (
                "bourse_overspend",
                "Cost minus reference cost, over answers dearer than the reference model, USD",
                |x: &Money| &x.overspend,
            ),
        ] {
            let mut f = enc.encode_descriptor(name, help, Some(&usd_unit), MetricType::Counter)?;
            for (r, s, c) in cells() {
                let v = pick(&m.money[c]).load(Relaxed);
                if v == 0 && m.money[c].cost.load(Relaxed) == 0 {
                    continue;
                }
                Count(usd(v)).encode(f.encode_family(&labels(r, s))?)?;
            }
        }
        for (name, help, unit, pick) in [
            (
                "bourse_energy",
                "ESTIMATED energy of upstream attempts, Wh: tokens x per-token energy of the model's size class (ML.ENERGY, Epoch AI) x PUE, catalog/energy.toml",
                Unit::Other("wh".into()),
                (|x: &Money| &x.energy_uwh) as fn(&Money) -> &AtomicU64,
            ),
            (
                "bourse_co2e",
                "ESTIMATED emissions of upstream attempts, grams CO2e: the energy estimate x the hosting region's grid intensity (Ember, EEA, EMA), catalog/energy.toml",
                Unit::Other("grams".into()),
                |x: &Money| &x.co2e_ug,
            ),
        ] {
            let mut f = enc.encode_descriptor(name, help, Some(&unit), MetricType::Counter)?;
            for (r, s, c) in cells() {
                if m.money[c].energy_uwh.load(Relaxed) == 0 {
                    continue;
                }
                // Micro-units counted, whole units exported.
                Count(pick(&m.money[c]).load(Relaxed) as f64 / 1e6).encode(f.encode_family(&labels(r, s))?)?;
            }
        }
        {
            let mut f = enc.encode_descriptor(
                "bourse_fallbacks",
                "Attempts made after an earlier candidate failed, by the candidate fallen back to",
                None,
                MetricType::Counter,
            )?;
            for (r, s, c) in cells() {
                let v = m.fallbacks[c].load(Relaxed);
                if v > 0 {
                    Count(v).encode(f.encode_family(&labels(r, s))?)?;
                }
            }
        }
        {
            let mut f = enc.encode_descriptor(
                "bourse_upstream_errors",
                "Upstream attempts that failed, by error kind",
                None,
                MetricType::Counter,
            )?;
            for (s, x) in m.series.iter().enumerate() {
                for (k, kind) in ERROR_KINDS.iter().enumerate() {
                    let v = m.errors[s * ERROR_KINDS.len() + k].load(Relaxed);
                    if v > 0 {
                        let set = [("provider", &*x.provider), ("model", &*x.model), ("error_kind", *kind)];
                        Count(v).encode(f.encode_family(&set)?)?;
                    }
                }
            }
        }
        {
            let mut f = enc.encode_descriptor(
                "bourse_gateway_latency",
                "Time the gateway added to a request: arrival to the answer's head, less the time spent waiting on upstreams",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (r, h) in m.gateway.iter().enumerate() {
                if h.count() > 0 {
                    h.encode(&mut f.encode_family(&[("route", &*m.routes[r])])?)?;
                }
            }
        }
        {
            let mut f = enc.encode_descriptor(
                "bourse_circuit_open",
                "1 while a provider+model circuit is open (or half-open), else 0",
                None,
                MetricType::Gauge,
            )?;
            for (i, key) in m.entry_keys.iter().enumerate() {
                let x = &m.series[m.entry_series[i] as usize];
                let open = self.scrape.open_circuits.iter().any(|k| **k == **key);
                let set = [("provider", &*x.provider), ("model", &*x.model)];
                Level(i64::from(open)).encode(f.encode_family(&set)?)?;
            }
        }
        if let Some(l) = &self.scrape.ledger {
            let queue = "Ledger rows accepted and not yet written";
            Level(l.queued).encode(enc.encode_descriptor(
                "bourse_ledger_queue_depth",
                queue,
                None,
                MetricType::Gauge,
            )?)?;
            for (name, help, v) in [
                ("bourse_ledger_written_rows", "Ledger rows committed to the store", l.written),
                ("bourse_ledger_dropped_rows", "Ledger rows lost (queue full, store failing, shut down)", l.dropped),
            ] {
                Count(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)?;
            }
        }
        if m.tenant_labels && !self.scrape.budgets.is_empty() {
            let mut f = enc.encode_descriptor(
                "bourse_tenant_budget_remaining",
                "What a tenant's budget has left in its window (day, month or total), USD",
                Some(&usd_unit),
                MetricType::Gauge,
            )?;
            for (tenant, window, left) in &self.scrape.budgets {
                let set = [("tenant", tenant.as_str()), ("window", *window)];
                Level(*left as f64 / 1e9).encode(f.encode_family(&set)?)?;
            }
        }
        Ok(())
    }
}
