//! The TOML config file exactly as written: serde types that reject unknown keys.
//!
//! Nothing here is trusted yet; `config::Config::from_raw` validates it once at start-up.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub catalog: RawCatalogSection,
    /// Price and fact overrides or additions, keyed by `provider/model`.
    #[serde(default)]
    pub models: BTreeMap<String, crate::catalog::RawModel>,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub routes: BTreeMap<String, RawRoute>,
    #[serde(default)]
    pub policies: BTreeMap<String, RawPolicy>,
    #[serde(default)]
    pub router: RawRouter,
    #[serde(default)]
    pub shared: RawShared,
    /// The exact-match response cache (off when absent).
    pub cache: Option<RawCache>,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub dashboard: RawDashboard,
    #[serde(default)]
    pub responses: RawResponses,
}

/// `[responses]`: the Responses API's stored responses (`previous_response_id`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponses {
    /// How long a stored response can be continued from, e.g. "30d" (the default), "12h".
    pub store_ttl: Option<String>,
}

/// `[telemetry]`: metrics, traces and logs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// Serve `/metrics` (default true).
    pub metrics: Option<bool>,
    /// Label per-tenant metrics (budget remaining) with the tenant's name (default false).
    pub tenant_labels: Option<bool>,
    /// An OTLP/HTTP collector (`http://host:4318`, or the full `.../v1/traces` URL); unset:
    /// no traces.
    pub otlp_endpoint: Option<String>,
    /// Put prompts and completions on spans (default false).
    pub capture_content: Option<bool>,
    /// "text" (default) or "json".
    pub log_format: Option<String>,
    /// One info line per request (default false).
    pub access_log: Option<bool>,
}

/// `/dashboard`'s settings (it is on whenever `server.admin_keys` is set).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDashboard {
    /// Always mark the session cookie `Secure` (behind a TLS-terminating proxy).
    pub secure_cookie: Option<bool>,
    /// How long a login lasts, e.g. "12h".
    pub session_ttl: Option<String>,
    /// How often a page reloads itself, e.g. "30s".
    pub refresh: Option<String>,
}

/// Where limit counters live when several replicas serve the same keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShared {
    /// `redis://...` (or `env:NAME` / `file:PATH` holding it); unset: counters in process.
    pub redis_url: Option<String>,
    /// "closed" (refuse with 503 while Redis is unreachable) or "open" (serve on local counters).
    pub on_shared_failure: Option<String>,
}

/// `[cache]`: the exact-match response cache. Its presence turns it on for every request
/// (unless `enabled = false`); a route's or a key's `cache` overrides that.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Whether requests use the cache unless their route or key says otherwise (default true).
    pub enabled: Option<bool>,
    /// How long an answer is served from the cache, e.g. "1h" (default "1h").
    pub ttl: Option<String>,
    /// The in-memory store's bound, e.g. "256MiB" (default "256MiB").
    pub max_bytes: Option<String>,
    /// The largest answer stored, e.g. "4MiB" (default "4MiB", and at most `max_bytes`).
    pub max_entry_bytes: Option<String>,
    /// Let every caller hit answers made for any tenant (default false: per tenant).
    pub share_across_tenants: Option<bool>,
}

/// A quality floor: a tier name ("strong") or a number on the catalog's scale.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawQuality {
    Number(u32),
    Name(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub min_quality: Option<RawQuality>,
    /// The floor on this route's evidence, a share in [0, 1].
    pub min_score: Option<f64>,
    pub policy: Option<String>,
    /// Output tokens expected when the request sets no max_tokens and nothing is observed yet.
    pub expected_output: Option<u64>,
    /// A ceiling on every request's worst-case cost on this route.
    pub max_cost_usd: Option<f64>,
    /// Checks an answer must pass; a failed one escalates to a better candidate.
    pub cascade: Option<Vec<String>>,
    /// Streams on a cascade route: "off" (served unchecked, the default) or "buffer".
    pub cascade_streaming: Option<String>,
    /// How the `agree` check asks and compares (cascade and shadow).
    pub agree: Option<RawAgree>,
    /// The `judge` check's model, rubric and sampled share.
    pub judge: Option<RawJudge>,
    /// A reference model that a sampled share of requests also goes to, after the answer.
    pub shadow: Option<RawShadow>,
    /// Use the response cache on this route (overrides `[cache] enabled`).
    pub cache: Option<bool>,
    /// Cache answers to requests sampled at `temperature > 0` (or with no temperature) too.
    pub cache_sampled: Option<bool>,
}

/// `agree = { models = 3, match = "regex:…", quorum = 2 }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgree {
    /// Scouts asked in parallel (default 2).
    pub models: Option<usize>,
    /// `exact` (default), `regex:<pattern>` or `pointer:<JSON pointer>`.
    #[serde(rename = "match")]
    pub matches: Option<String>,
    /// How many must agree (default: all of them).
    pub quorum: Option<usize>,
}

/// `judge = { model = "provider/model", rubric = "…", share = 1.0 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJudge {
    pub model: String,
    pub rubric: String,
    /// The share of checked answers that are judged, in [0, 1] (default 1).
    pub share: Option<f64>,
}

/// `shadow = { model = "provider/model", share = 0.05, check = "agree" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub model: String,
    /// The share of non-streaming requests shadowed, in [0, 1].
    pub share: f64,
    /// How the shadow's answer is compared with the served one: `agree` (the default).
    pub check: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub deny_origin: Vec<String>,
    #[serde(default)]
    pub deny_hosting: Vec<String>,
    #[serde(default)]
    pub open_weights_only: bool,
    #[serde(default)]
    pub allow_providers: Vec<String>,
    #[serde(default)]
    pub deny_providers: Vec<String>,
    pub max_price_per_mtok: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouter {
    /// Upstream attempts per routed request, fallbacks included.
    pub max_attempts: Option<u32>,
    /// Consecutive failures that open a provider+model circuit.
    pub failure_threshold: Option<u32>,
    /// How long an open circuit stays open before one probe.
    pub cooldown: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalogSection {
    /// A catalog file that replaces the shipped one.
    pub file: Option<String>,
    /// The premium model savings are measured against.
    pub reference: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// `sqlite:PATH` or `postgres://...`; default `sqlite:bourse.db` next to the config file.
    pub url: Option<String>,
    /// Set false to run without a ledger (benchmarks, stateless edge nodes).
    pub ledger: Option<bool>,
    /// Rows the background writer may hold before the full-queue policy applies.
    pub queue: Option<usize>,
    /// "block" (wait briefly, then drop and count) or "drop" (drop and count at once).
    pub on_full: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Keys for `/admin/v1/*` (references, like `api_keys`); client keys are refused there.
    #[serde(default)]
    pub admin_keys: Vec<String>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: Option<u64>,
    /// How long in-flight requests may run after SIGTERM, e.g. "30s".
    pub shutdown_grace: Option<String>,
    /// How long a request head may take to arrive whole.
    pub header_timeout: Option<String>,
    /// How long a keep-alive connection may sit idle between requests.
    pub idle_timeout: Option<String>,
    /// How long a response may wait on a client that does not read.
    pub send_timeout: Option<String>,
    /// Client connections held at once; more are refused with a 503.
    pub max_connections: Option<u64>,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: Option<u64>,
    /// Most header lines in a request head.
    pub max_headers: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: String,
    pub api_key: Option<String>,
    pub base_url: Option<String>,
    pub models: Option<Vec<String>>,
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    /// How long an answer that has started may send nothing, e.g. "120s".
    pub read_timeout: Option<String>,
    pub total_timeout: Option<String>,
}
