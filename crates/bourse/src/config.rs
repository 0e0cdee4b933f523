//! Configuration: one TOML file, validated once at start-up into a runtime [`Config`].
//!
//! Two stages: [`raw`] mirrors the file (unknown keys are errors) and [`Config::from_raw`]
//! turns it into values the gateway can use without further checks — parsed addresses,
//! resolved secrets, known provider kinds, absolute URLs, durations. Every error names
//! the exact path of the offending value (`providers.deepseek.base_url: ...`), so a
//! misconfiguration fails loudly at start-up and never per request.

pub mod raw;
pub mod routing;
pub mod secret;

use crate::catalog::Catalog;
use crate::check::CheckKind;
use crate::meter::Cost;
use crate::preset::{self, Preset};
use raw::{RawConfig, RawProvider};
pub use routing::{
    parse_quality, AgreeConfig, HealthConfig, JudgeConfig, Policy, RouteConfig, RouterConfig, Routing, ShadowConfig,
};
pub use secret::Secret;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4545";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
// Non-streaming reasoning calls send headers only when the answer is complete, so the
// first byte can legitimately take minutes.
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(300);
// Once an answer flows, its pieces come seconds apart at most (Anthropic pings a quiet stream,
// DeepSeek sends keep-alive lines); two minutes of nothing is a stalled upstream.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(900);
/// Savings are measured against a premium model most teams know the price of.
pub const DEFAULT_REFERENCE: &str = "openai/gpt-4o";
pub const DEFAULT_LEDGER_FILE: &str = "bourse.db";
/// `auto` asks for a "strong" model unless configured otherwise.
const DEFAULT_MIN_QUALITY: u32 = 1370;
/// Output tokens assumed for ranking before a model's average is observed.
const DEFAULT_EXPECTED_OUTPUT: u64 = 512;

/// A config error: the path of the offending value and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { path: path.into(), message: message.into() }
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub providers: Vec<ProviderConfig>,
    /// The price catalog in force (shipped or `catalog.file`, plus `[models]` overrides).
    pub catalog: Arc<Catalog>,
    /// `provider/model` of the reference model for counterfactual cost.
    pub reference: String,
    pub storage: StorageConfig,
    /// Where limit counters live (in process, or Redis shared by replicas).
    pub shared: SharedConfig,
    /// The response cache's settings; None: no store (no `[cache]` section and no route
    /// that turns it on).
    pub cache: Option<CacheConfig>,
    /// Routes, policies and the router's settings.
    pub routing: Routing,
    /// Metrics, traces and logs.
    pub telemetry: TelemetryConfig,
    /// The dashboard's sessions and refresh.
    pub dashboard: DashboardConfig,
    /// The Responses API's stored responses.
    pub responses: ResponsesConfig,
    /// Where the config came from, for logs and for files placed next to it.
    pub source: ConfigSource,
}

/// `[cache]`: the exact-match response cache (see `crate::cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Requests use it unless their route or key says otherwise: true when a `[cache]`
    /// section is written (and does not say `enabled = false`).
    pub enabled: bool,
    /// How long an answer is served.
    pub ttl: Duration,
    /// The in-memory store's bound on what it holds (answers, their names and keys).
    pub max_bytes: u64,
    /// The largest answer stored (in memory or in Redis).
    pub max_entry_bytes: u64,
    /// Answers are shared by every tenant (else each tenant has its own).
    pub share_across_tenants: bool,
}

pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(3600);
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 << 20;
pub const DEFAULT_CACHE_MAX_ENTRY_BYTES: u64 = 4 << 20;

/// `[dashboard]`: how `/dashboard` keeps its logins and how often its pages reload (it is on
/// whenever `server.admin_keys` is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DashboardConfig {
    /// Mark the session cookie `Secure` even when the request did not say it came over
    /// HTTPS (`x-forwarded-proto: https` from a TLS-terminating proxy sets it anyway).
    pub secure_cookie: bool,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// How often a page reloads itself.
    pub refresh: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            secure_cookie: false,
            session_ttl: Duration::from_secs(12 * 3600),
            refresh: Duration::from_secs(30),
        }
    }
}

/// `[responses]`: how long a Responses API answer stored for `previous_response_id` (in the
/// ledger's store) can be continued from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsesConfig {
    pub store_ttl: Duration,
}

impl Default for ResponsesConfig {
    /// 30 days, as long as OpenAI keeps stored responses.
    fn default() -> Self {
        ResponsesConfig { store_ttl: Duration::from_secs(30 * 86_400) }
    }
}

/// A stored response's lifetime: a whole number of days ("30d", at most ten years), or a
/// duration as [`parse_duration`] reads it.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    match s.trim().strip_suffix('d') {
        Some(days) => match days.trim().parse::<u64>() {
            Ok(n @ 1..=3650) => Ok(Duration::from_secs(n * 86_400)),
            _ => Err(format!("\"{s}\" must be a whole number of days from 1d to 3650d, or a duration like \"12h\"")),
        },
        None => parse_duration(s),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// `sqlite:PATH` or `postgres://...`; None when the ledger is off.
    pub url: Option<String>,
    /// Whether `url` was written in the config (else it defaults next to the config file).
    pub url_explicit: bool,
    pub queue: usize,
    pub on_full: OnFull,
}

/// What the ledger writer does when its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Wait briefly for room, then drop and count (the default: no silent loss).
    Block,
    /// Drop at once and count.
    Drop,
}

/// `[shared]`: the counters budgets and rate limits are kept in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedConfig {
    /// `redis://...`; None keeps counters in process (rebuilt from the ledger at start).
    pub redis_url: Option<Secret>,
    pub on_failure: OnSharedFailure,
}

/// What a request meets while the shared counters cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnSharedFailure {
    /// Refuse with 503 in the client's dialect: no limit can be overrun (the default).
    #[default]
    Closed,
    /// Serve on this process's own counters, log it and count it.
    Open,
}

/// `[telemetry]`: what the gateway tells about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `/metrics` is served and the request path counts.
    pub metrics: bool,
    /// Per-tenant series carry the tenant's name.
    pub tenant_labels: bool,
    /// Where spans go (OTLP/HTTP, the full traces URL); None: no traces.
    pub otlp_endpoint: Option<String>,
    /// Prompts and completions on spans.
    pub capture_content: bool,
    pub log_format: LogFormat,
    /// One info line per request.
    pub access_log: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            metrics: true,
            tenant_labels: false,
            otlp_endpoint: None,
            capture_content: false,
            log_format: LogFormat::Text,
            access_log: false,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, one event a line.
    #[default]
    Text,
    /// One JSON object a line, fields at the top level.
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("\"{other}\" must be \"text\" or \"json\"")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    /// No file: presets enabled from their key variables.
    Environment,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub api_keys: Vec<Secret>,
    /// Keys that may call `/admin/v1/*` (and only that).
    pub admin_keys: Vec<Secret>,
    pub max_body_bytes: u64,
    pub shutdown_grace: Duration,
    pub limits: EdgeLimits,
}

/// What one client connection may hold and for how long: the edge's defence against slow,
/// idle and oversized clients (see `server::conn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// A request head must arrive whole within this time of its first byte (of the
    /// connection's accept, for its first request).
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// A response write that cannot make progress (the client stopped reading) for this
    /// long closes the connection, which cancels the upstream request.
    pub send_timeout: Duration,
    /// Client connections held at once; `None` until start-up sets it from the
    /// descriptor limit (the default), or as configured.
    pub max_connections: Option<usize>,
    /// Largest request head in bytes (431 beyond it).
    pub max_header_bytes: usize,
    /// Most header lines in a request head (431 beyond it).
    pub max_headers: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(60),
            max_connections: None,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Until the response headers; for a stream, until its first token (counted from the
    /// request too), since nothing reaches the client before it.
    pub first_byte: Duration,
    /// The longest silence of an answer that has started (a stream after its first token, a
    /// body after its first byte): a stall mid-answer is cut here, not at `total`.
    pub read: Duration,
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            first_byte: DEFAULT_FIRST_BYTE_TIMEOUT,
            read: DEFAULT_READ_TIMEOUT,
            total: DEFAULT_TOTAL_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub id: String,
    pub preset: &'static Preset,
    /// Absolute http(s) URL without a trailing slash; endpoint paths are appended.
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub models: Vec<String>,
    pub timeouts: Timeouts,
}

type EnvFn<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Load from an explicit path, else `$BOURSE_CONFIG`, else `./bourse.toml` if present,
    /// else a zero-config start from the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let chosen = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("BOURSE_CONFIG").map(PathBuf::from))
            .or_else(|| Some(PathBuf::from("bourse.toml")).filter(|p| p.exists()));
        match chosen {
            Some(p) => {
                let text =
                    std::fs::read_to_string(&p).map_err(|e| err("", format!("cannot read {}: {e}", p.display())))?;
                let mut cfg = Config::from_toml(&text, &process_env)?;
                // The embedded ledger lives next to the config file unless told otherwise.
                if let (false, Some(_)) = (cfg.storage.url_explicit, &cfg.storage.url) {
                    let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                    cfg.storage.url = Some(format!("sqlite:{}", dir.join(DEFAULT_LEDGER_FILE).display()));
                }
                cfg.source = ConfigSource::File(p);
                Ok(cfg)
            }
            None => Config::from_env(&process_env),
        }
    }

    /// Parse and validate TOML text.
    pub fn from_toml(text: &str, env: EnvFn<'_>) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // toml's message carries the line and a caret; the path says which key.
            err(if path == "." { String::new() } else { path }, inner.message().to_string())
        })?;
        Config::from_raw(raw, env)
    }

    /// Zero-config: every preset whose key variable is set becomes a provider named after it.
    /// A vendor's second endpoint (DeepSeek's Anthropic-compatible one, say) shares the key
    /// of its first and serves the same models, so only the first is enabled.
    pub fn from_env(env: EnvFn<'_>) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::default();
        for p in preset::PRESETS.iter().filter(|p| p.vendor == p.name) {
            if let Some(var) = p.key_env {
                if env(var).is_some_and(|v| !v.trim().is_empty()) {
                    raw.providers.insert(
                        p.name.to_string(),
                        RawProvider {
                            kind: p.name.to_string(),
                            api_key: Some(format!("env:{var}")),
                            base_url: None,
                            models: None,
                            connect_timeout: None,
                            first_byte_timeout: None,
                            read_timeout: None,
                            total_timeout: None,
                        },
                    );
                }
            }
        }
        if env("BOURSE_API_KEY").is_some_and(|v| !v.trim().is_empty()) {
            raw.server.api_keys.push("env:BOURSE_API_KEY".into());
        }
        let mut cfg = Config::from_raw(raw, env)?;
        cfg.source = ConfigSource::Environment;
        Ok(cfg)
    }

    pub fn from_raw(raw: RawConfig, env: EnvFn<'_>) -> Result<Config, ConfigError> {
        let listen_text = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|_| err("server.listen", format!("\"{listen_text}\" is not an address like 127.0.0.1:4545")))?;
        let mut api_keys = Vec::new();
        for (i, r) in raw.server.api_keys.iter().enumerate() {
            api_keys.push(secret::resolve(r, env).map_err(|m| err(format!("server.api_keys[{i}]"), m))?);
        }
        let mut admin_keys = Vec::new();
        for (i, r) in raw.server.admin_keys.iter().enumerate() {
            let k = secret::resolve(r, env).map_err(|m| err(format!("server.admin_keys[{i}]"), m))?;
            if api_keys.contains(&k) {
                return Err(err(format!("server.admin_keys[{i}]"), "is also a client key in server.api_keys"));
            }
            admin_keys.push(k);
        }
        let max_body_bytes = match raw.server.max_body_bytes {
            Some(0) => return Err(err("server.max_body_bytes", "must be greater than 0")),
            Some(n) => n,
            None => DEFAULT_MAX_BODY_BYTES,
        };
        let shutdown_grace = match &raw.server.shutdown_grace {
            Some(s) => parse_duration(s).map_err(|m| err("server.shutdown_grace", m))?,
            None => DEFAULT_SHUTDOWN_GRACE,
        };
        let limits = limits_from_raw(&raw.server)?;
        let mut providers = Vec::new();
        for (id, rp) in &raw.providers {
            providers.push(provider_from_raw(id, rp, env)?);
        }
        let catalog_text = match &raw.catalog.file {
            Some(f) => std::fs::read_to_string(f).map_err(|e| err("catalog.file", format!("cannot read {f}: {e}")))?,
            None => crate::catalog::SHIPPED.to_string(),
        };
        let ids: Vec<String> = providers.iter().map(|p| p.id.clone()).collect();
        let catalog = match Catalog::load_with(&catalog_text, &raw.models, &ids) {
            Ok((c, findings)) => {
                for w in &findings.warnings {
                    tracing::debug!("catalog: {w}");
                }
                c
            }
            Err(findings) => {
                let path = if raw.catalog.file.is_some() { "catalog.file" } else { "models" };
                return Err(err(path, findings.errors.join("; ")));
            }
        };
        let reference = raw.catalog.reference.clone().unwrap_or_else(|| DEFAULT_REFERENCE.to_string());
        if catalog.get(&reference).is_none() {
            return Err(err(
                "catalog.reference",
                format!("\"{reference}\" is not in the catalog; add it under [models]"),
            ));
        }
        let storage = storage_from_raw(&raw.storage)?;
        let shared = shared_from_raw(&raw.shared, env)?;
        let ids: Vec<&str> = providers.iter().map(|p| p.id.as_str()).collect();
        let routing = routing_from_raw(&raw, &ids, &catalog)?;
        let routes_cache = routing.routes.values().any(|r| r.cache == Some(true));
        let cache = cache_from_raw(raw.cache.as_ref(), routes_cache)?;
        let telemetry = telemetry_from_raw(&raw.telemetry)?;
        let dashboard = dashboard_from_raw(&raw.dashboard)?;
        let mut responses = ResponsesConfig::default();
        if let Some(t) = &raw.responses.store_ttl {
            responses.store_ttl = parse_ttl(t).map_err(|m| err("responses.store_ttl", m))?;
        }
        Ok(Config {
            server: ServerConfig { listen, api_keys, admin_keys, max_body_bytes, shutdown_grace, limits },
            providers,
            catalog: Arc::new(catalog),
            reference,
            storage,
            shared,
            cache,
            routing,
            telemetry,
            dashboard,
            responses,
            source: ConfigSource::Environment,
        })
    }
}

fn telemetry_from_raw(raw: &raw::RawTelemetry) -> Result<TelemetryConfig, ConfigError> {
    let d = TelemetryConfig::default();
    let otlp_endpoint = match &raw.otlp_endpoint {
        None => None,
        Some(u) => {
            let base = validate_url(u).map_err(|m| err("telemetry.otlp_endpoint", m))?;
            // A collector's address gets the traces path, as OTEL_EXPORTER_OTLP_ENDPOINT does;
            // a URL with a path is used as written.
            let path = base.split_once("://").and_then(|(_, rest)| rest.find('/')).is_some();
            Some(if path { base } else { format!("{base}/v1/traces") })
        }
    };
    let log_format = match &raw.log_format {
        Some(f) => LogFormat::parse(f).map_err(|m| err("telemetry.log_format", m))?,
        None => d.log_format,
    };
    Ok(TelemetryConfig {
        metrics: raw.metrics.unwrap_or(d.metrics),
        tenant_labels: raw.tenant_labels.unwrap_or(d.tenant_labels),
        otlp_endpoint,
        capture_content: raw.capture_content.unwrap_or(d.capture_content),
        log_format,
        access_log: raw.access_log.unwrap_or(d.access_log),
    })
}

fn limits_from_raw(raw: &raw::RawServer) -> Result<EdgeLimits, ConfigError> {
    let d = EdgeLimits::default();
    let duration = |v: &Option<String>, path: &str, default: Duration| match v {
        Some(s) => parse_duration(s).map_err(|m| err(path, m)),
        None => Ok(default),
    };
    let count = |v: Option<u64>, path: &str, min: u64, max: u64| match v {
        Some(n) if n < min || n > max => Err(err(path, format!("must be between {min} and {max}"))),
        Some(n) => Ok(Some(n as usize)),
        None => Ok(None),
    };
    Ok(EdgeLimits {
        header_timeout: duration(&raw.header_timeout, "server.header_timeout", d.header_timeout)?,
        idle_timeout: duration(&raw.idle_timeout, "server.idle_timeout", d.idle_timeout)?,
        send_timeout: duration(&raw.send_timeout, "server.send_timeout", d.send_timeout)?,
        max_connections: count(raw.max_connections, "server.max_connections", 1, 1 << 20)?,
        // Below 1 KiB an SDK's ordinary head does not fit; above 1 MiB it is no limit.
        max_header_bytes: count(raw.max_header_bytes, "server.max_header_bytes", 1024, 1 << 20)?
            .unwrap_or(d.max_header_bytes),
        max_headers: count(raw.max_headers, "server.max_headers", 8, 1000)?.unwrap_or(d.max_headers),
    })
}

/// Routes, policies and router settings. `auto` and `default` exist even when not written.
fn routing_from_raw(raw: &RawConfig, provider_ids: &[&str], catalog: &Catalog) -> Result<Routing, ConfigError> {
    let mut policies = BTreeMap::new();
    policies.insert("default".to_string(), Policy { name: "default".into(), ..Policy::default() });
    for (name, p) in &raw.policies {
        let at = |k: &str| format!("policies.{name}.{k}");
        for (key, list) in [("allow_providers", &p.allow_providers), ("deny_providers", &p.deny_providers)] {
            for (i, id) in list.iter().enumerate() {
                if !provider_ids.contains(&id.as_str()) {
                    return Err(err(format!("{}[{i}]", at(key)), format!("\"{id}\" is not a configured provider")));
                }
            }
        }
        if let Some(cap) = p.max_price_per_mtok {
            if !(cap.is_finite() && cap >= 0.0) {
                return Err(err(at("max_price_per_mtok"), "must be a price in USD per 1M tokens"));
            }
        }
        let upper = |v: &Vec<String>| v.iter().map(|s| s.trim().to_ascii_uppercase()).collect::<Vec<_>>();
        policies.insert(
            name.clone(),
            Policy {
                name: name.clone(),
                deny_origin: upper(&p.deny_origin),
                deny_hosting: upper(&p.deny_hosting),
                open_weights_only: p.open_weights_only,
                allow_providers: p.allow_providers.clone(),
                deny_providers: p.deny_providers.clone(),
                max_price_per_mtok: p.max_price_per_mtok,
            },
        );
    }
    let max_attempts = raw.router.max_attempts.unwrap_or(3);
    if max_attempts == 0 {
        return Err(err("router.max_attempts", "must be at least 1"));
    }
    let mut routes = BTreeMap::new();
    routes.insert(
        "auto".to_string(),
        RouteConfig {
            name: "auto".into(),
            min_quality: DEFAULT_MIN_QUALITY,
            relative: None,
            min_score_ppm: None,
            cascade: Vec::new(),
            cascade_streams: false,
            agree: AgreeConfig::default(),
            judge: None,
            shadow: None,
            policy: "default".into(),
            expected_output: DEFAULT_EXPECTED_OUTPUT,
            max_cost: None,
            cache: None,
            cache_sampled: false,
        },
    );
    for (name, r) in &raw.routes {
        let at = |k: &str| format!("routes.{name}.{k}");
        if name.contains('/') || provider_ids.contains(&name.as_str()) {
            return Err(err(format!("routes.{name}"), "route names cannot contain '/' or equal a provider id"));
        }
        let (min_quality, relative) = match &r.min_quality {
            None => (DEFAULT_MIN_QUALITY, None),
            Some(raw::RawQuality::Number(n)) => (*n, None),
            Some(raw::RawQuality::Name(s)) => match crate::config::routing::parse_relative(s) {
                Some(rel) => {
                    let rel = rel.map_err(|m| err(at("min_quality"), m))?;
                    if catalog.get(&rel.reference).is_none() {
                        return Err(err(
                            at("min_quality"),
                            format!("the reference \"{}\" is not in the catalog", rel.reference),
                        ));
                    }
                    (0, Some(rel))
                }
                None => (parse_quality(s).map_err(|m| err(at("min_quality"), m))?, None),
            },
        };
        let cascade_streams = match r.cascade_streaming.as_deref() {
            None | Some("off") => false,
            Some("buffer") => true,
            Some(other) => {
                return Err(err(at("cascade_streaming"), format!("\"{other}\" must be \"off\" or \"buffer\"")))
            }
        };
        if cascade_streams && r.cascade.as_ref().is_none_or(Vec::is_empty) {
            return Err(err(at("cascade_streaming"), "\"buffer\" needs a cascade on the route"));
        }
        let mut cascade = Vec::new();
        for name in r.cascade.iter().flatten() {
            let kind = CheckKind::parse(name).map_err(|m| err(at("cascade"), m))?;
            if cascade.contains(&kind) {
                return Err(err(at("cascade"), format!("'{name}' is listed twice")));
            }
            cascade.push(kind);
        }
        let agree = agree_from_raw(r.agree.as_ref(), max_attempts, &at)?;
        let judge = match (&r.judge, cascade.contains(&CheckKind::Judge)) {
            (Some(j), true) => Some(judge_from_raw(j, provider_ids, catalog, &at)?),
            (Some(_), false) => return Err(err(at("judge"), "set, but the cascade does not list \"judge\"")),
            (None, true) => {
                return Err(err(at("cascade"), "lists \"judge\" but the route sets no judge = { model, rubric }"))
            }
            (None, false) => None,
        };
        let shadow = r.shadow.as_ref().map(|s| shadow_from_raw(s, provider_ids, catalog, &at)).transpose()?;
        if r.agree.is_some() && !cascade.contains(&CheckKind::Agree) && shadow.is_none() {
            return Err(err(at("agree"), "set, but neither the cascade (\"agree\") nor a shadow uses it"));
        }
        let min_score_ppm = match r.min_score {
            Some(v) if (0.0..=1.0).contains(&v) => Some((v * 1e6).round() as u32),
            Some(_) => return Err(err(at("min_score"), "must be a share in [0, 1], like 0.9")),
            None => None,
        };
        let policy = r.policy.clone().unwrap_or_else(|| "default".into());
        if !policies.contains_key(&policy) {
            return Err(err(at("policy"), format!("unknown policy \"{policy}\" (define [policies.{policy}])")));
        }
        let max_cost = match r.max_cost_usd {
            Some(v) if v.is_finite() && v >= 0.0 => Some(Cost((v * 1e9).round() as i64)),
            Some(_) => return Err(err(at("max_cost_usd"), "must be a non-negative amount in USD")),
            None => None,
        };
        routes.insert(
            name.clone(),
            RouteConfig {
                name: name.clone(),
                min_quality,
                relative,
                min_score_ppm,
                cascade,
                cascade_streams,
                agree,
                judge,
                shadow,
                policy,
                expected_output: r.expected_output.unwrap_or(DEFAULT_EXPECTED_OUTPUT),
                max_cost,
                cache: r.cache,
                cache_sampled: r.cache_sampled.unwrap_or(false),
            },
        );
    }
    let mut health = HealthConfig::default();
    if let Some(t) = raw.router.failure_threshold {
        if t == 0 {
            return Err(err("router.failure_threshold", "must be at least 1"));
        }
        health.failure_threshold = t;
    }
    if let Some(c) = &raw.router.cooldown {
        health.cooldown = parse_duration(c).map_err(|m| err("router.cooldown", m))?;
    }
    Ok(Routing { routes, policies, router: RouterConfig { max_attempts, health } })
}

/// A route's `agree` (defaults when not written): at least two scouts, no more than a
/// request may attempt, and a quorum between two and the scouts.
fn agree_from_raw(
    raw: Option<&raw::RawAgree>,
    max_attempts: u32,
    at: &dyn Fn(&str) -> String,
) -> Result<AgreeConfig, ConfigError> {
    let d = AgreeConfig::default();
    let Some(raw) = raw else { return Ok(d) };
    let models = raw.models.unwrap_or(d.models);
    if models < 2 || models > max_attempts as usize {
        return Err(err(
            at("agree.models"),
            format!("must be between 2 and router.max_attempts ({max_attempts}): every scout is an attempt"),
        ));
    }
    let matches = raw.matches.clone().unwrap_or(d.matches);
    let spec = crate::check::AgreeSpec::parse(&matches).map_err(|m| err(at("agree.match"), m))?;
    let quorum = match raw.quorum {
        None => crate::check::Quorum::All,
        Some(q) if (2..=models).contains(&q) => crate::check::Quorum::AtLeast(q),
        Some(_) => return Err(err(at("agree.quorum"), format!("must be between 2 and agree.models ({models})"))),
    };
    Ok(AgreeConfig { models, matches, spec, quorum })
}

/// A share in [0, 1] as parts per million.
fn share_ppm(v: f64, path: String) -> Result<u32, ConfigError> {
    if !(0.0..=1.0).contains(&v) {
        return Err(err(path, "must be a share in [0, 1], like 0.05"));
    }
    Ok((v * 1e6).round() as u32)
}

/// A model a check calls by name: `provider/model` on a configured provider, priced in the
/// catalog (its calls are metered like any attempt).
fn side_model(model: &str, provider_ids: &[&str], catalog: &Catalog, path: String) -> Result<(), ConfigError> {
    let Some((provider, _)) = model.split_once('/') else {
        return Err(err(path, format!("\"{model}\" must be a model as provider/model")));
    };
    if !provider_ids.contains(&provider) {
        return Err(err(path, format!("\"{provider}\" is not a configured provider")));
    }
    if catalog.get(model).is_none() {
        return Err(err(path, format!("\"{model}\" is not in the catalog; add its prices under [models]")));
    }
    Ok(())
}

fn judge_from_raw(
    raw: &raw::RawJudge,
    provider_ids: &[&str],
    catalog: &Catalog,
    at: &dyn Fn(&str) -> String,
) -> Result<JudgeConfig, ConfigError> {
    side_model(&raw.model, provider_ids, catalog, at("judge.model"))?;
    if raw.rubric.trim().is_empty() {
        return Err(err(at("judge.rubric"), "must say what a passing answer does"));
    }
    let share_ppm = share_ppm(raw.share.unwrap_or(1.0), at("judge.share"))?;
    Ok(JudgeConfig { model: raw.model.clone(), rubric: raw.rubric.clone(), share_ppm })
}

fn shadow_from_raw(
    raw: &raw::RawShadow,
    provider_ids: &[&str],
    catalog: &Catalog,
    at: &dyn Fn(&str) -> String,
) -> Result<ShadowConfig, ConfigError> {
    side_model(&raw.model, provider_ids, catalog, at("shadow.model"))?;
    match raw.check.as_deref() {
        None | Some("agree") => {}
        Some(other) => return Err(err(at("shadow.check"), format!("'{other}' is not a shadow check: use agree"))),
    }
    Ok(ShadowConfig { model: raw.model.clone(), share_ppm: share_ppm(raw.share, at("shadow.share"))? })
}

fn storage_from_raw(raw: &raw::RawStorage) -> Result<StorageConfig, ConfigError> {
    let url = match &raw.url {
        Some(u) if u.starts_with("sqlite:") || u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            Some(u.clone())
        }
        Some(u) => return Err(err("storage.url", format!("\"{u}\" must start with sqlite: or postgres://"))),
        None => Some(format!("sqlite:{DEFAULT_LEDGER_FILE}")),
    };
    let on_full = match raw.on_full.as_deref() {
        None | Some("block") => OnFull::Block,
        Some("drop") => OnFull::Drop,
        Some(other) => return Err(err("storage.on_full", format!("\"{other}\" must be \"block\" or \"drop\""))),
    };
    let queue = raw.queue.unwrap_or(10_000);
    if queue == 0 {
        return Err(err("storage.queue", "must be greater than 0"));
    }
    Ok(StorageConfig {
        url: if raw.ledger == Some(false) { None } else { url },
        url_explicit: raw.url.is_some(),
        queue,
        on_full,
    })
}

/// `[cache]`, or the defaults when only a route turns the cache on; None when nothing does.
fn cache_from_raw(raw: Option<&raw::RawCache>, routes_cache: bool) -> Result<Option<CacheConfig>, ConfigError> {
    // A route's `cache = true` alone: a store with the defaults, used by such routes only.
    let only_routes = raw::RawCache { enabled: Some(false), ..raw::RawCache::default() };
    let raw = match raw {
        Some(r) => r,
        None if routes_cache => &only_routes,
        None => return Ok(None),
    };
    let ttl = match &raw.ttl {
        Some(t) => parse_duration(t).map_err(|m| err("cache.ttl", m))?,
        None => DEFAULT_CACHE_TTL,
    };
    if ttl < Duration::from_millis(1) {
        return Err(err("cache.ttl", "must be at least 1ms"));
    }
    let size = |v: &Option<String>, path: &str, default: u64| match v {
        Some(s) => match parse_size(s) {
            Ok(0) => Err(err(path, "must be greater than 0")),
            Ok(n) => Ok(n),
            Err(m) => Err(err(path, m)),
        },
        None => Ok(default),
    };
    let max_bytes = size(&raw.max_bytes, "cache.max_bytes", DEFAULT_CACHE_MAX_BYTES)?;
    let max_entry_bytes =
        size(&raw.max_entry_bytes, "cache.max_entry_bytes", DEFAULT_CACHE_MAX_ENTRY_BYTES.min(max_bytes))?;
    if max_entry_bytes > max_bytes {
        return Err(err("cache.max_entry_bytes", format!("must not exceed cache.max_bytes ({max_bytes} bytes)")));
    }
    Ok(Some(CacheConfig {
        enabled: raw.enabled.unwrap_or(true),
        ttl,
        max_bytes,
        max_entry_bytes,
        share_across_tenants: raw.share_across_tenants.unwrap_or(false),
    }))
}

/// A size in bytes: "256MiB", "64KiB", "1GiB", "10MB", "512KB", "1GB", "4096B", or a bare
/// number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| format!("\"{s}\" is not a size like \"256MiB\" or \"64KiB\""))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("\"{s}\": unknown unit \"{other}\" (use B, KiB, MiB, GiB, KB, MB or GB)")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("\"{s}\" is too large"))
}

fn dashboard_from_raw(raw: &raw::RawDashboard) -> Result<DashboardConfig, ConfigError> {
    let mut d = DashboardConfig { secure_cookie: raw.secure_cookie.unwrap_or(false), ..DashboardConfig::default() };
    if let Some(t) = &raw.session_ttl {
        d.session_ttl = parse_duration(t).map_err(|m| err("dashboard.session_ttl", m))?;
    }
    if let Some(r) = &raw.refresh {
        d.refresh = parse_duration(r).map_err(|m| err("dashboard.refresh", m))?;
        if d.refresh < Duration::from_secs(1) {
            return Err(err("dashboard.refresh", "must be at least 1s"));
        }
    }
    Ok(d)
}

/// A ledger named on a command line, as a storage URL: a `sqlite:` or `postgres://` URL as
/// given, anything else as the path of a SQLite file.
pub fn storage_url(path_or_url: &str) -> String {
    if ["sqlite:", "postgres://", "postgresql://"].iter().any(|p| path_or_url.starts_with(p)) {
        path_or_url.to_string()
    } else {
        format!("sqlite:{path_or_url}")
    }
}

fn shared_from_raw(raw: &raw::RawShared, env: EnvFn<'_>) -> Result<SharedConfig, ConfigError> {
    let redis_url = match &raw.redis_url {
        None => None,
        Some(r) if r.starts_with("env:") || r.starts_with("file:") => {
            Some(secret::resolve(r, env).map_err(|m| err("shared.redis_url", m))?)
        }
        Some(r) => Some(Secret::new(r.clone())),
    };
    if let Some(u) = &redis_url {
        let u = u.expose();
        if !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("redis+unix://")) {
            // Never echo it: a URL with a typo may still carry a password.
            return Err(err("shared.redis_url", "must start with redis://, rediss:// or redis+unix://"));
        }
    }
    let on_failure = match raw.on_shared_failure.as_deref() {
        None | Some("closed") => OnSharedFailure::Closed,
        Some("open") => OnSharedFailure::Open,
        Some(o) => return Err(err("shared.on_shared_failure", format!("\"{o}\" must be \"closed\" or \"open\""))),
    };
    Ok(SharedConfig { redis_url, on_failure })
}

fn provider_from_raw(id: &str, rp: &RawProvider, env: EnvFn<'_>) -> Result<ProviderConfig, ConfigError> {
    let at = |key: &str| format!("providers.{id}.{key}");
    let valid_id = !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if !valid_id {
        return Err(err(
            format!("providers.{id}"),
            "provider ids use lowercase letters, digits, '-' and '_' (the id is the prefix clients write before '/')",
        ));
    }
    let preset = preset::find(&rp.kind).ok_or_else(|| {
        err(at("kind"), format!("unknown kind \"{}\"; expected one of: {}", rp.kind, preset::kinds().join(", ")))
    })?;
    let base_url = match (&rp.base_url, preset.base_url) {
        (Some(u), _) => validate_url(u).map_err(|m| err(at("base_url"), m))?,
        (None, Some(default)) => default.to_string(),
        (None, None) => {
            return Err(err(
                at("base_url"),
                format!("required for kind \"{}\" (e.g. \"http://127.0.0.1:8000/v1\")", rp.kind),
            ))
        }
    };
    let api_key = match &rp.api_key {
        Some(r) => Some(secret::resolve(r, env).map_err(|m| err(at("api_key"), m))?),
        None if preset.key_required => {
            let example = preset.key_env.unwrap_or("API_KEY");
            return Err(err(
                at("api_key"),
                format!("required for kind \"{}\" (e.g. api_key = \"env:{example}\")", rp.kind),
            ));
        }
        None => None,
    };
    let mut models = Vec::new();
    for (i, m) in rp.models.iter().flatten().enumerate() {
        if m.trim().is_empty() {
            return Err(err(format!("{}[{i}]", at("models")), "model names cannot be empty"));
        }
        if models.contains(m) {
            return Err(err(format!("{}[{i}]", at("models")), format!("\"{m}\" is listed twice")));
        }
        models.push(m.clone());
    }
    let mut timeouts = Timeouts::default();
    for (key, value, slot) in [
        ("connect_timeout", &rp.connect_timeout, &mut timeouts.connect),
        ("first_byte_timeout", &rp.first_byte_timeout, &mut timeouts.first_byte),
        ("read_timeout", &rp.read_timeout, &mut timeouts.read),
        ("total_timeout", &rp.total_timeout, &mut timeouts.total),
    ] {
        if let Some(v) = value {
            *slot = parse_duration(v).map_err(|m| err(at(key), m))?;
        }
    }
    if timeouts.first_byte > timeouts.total {
        return Err(err(at("first_byte_timeout"), "cannot be longer than total_timeout"));
    }
    if timeouts.read > timeouts.total {
        return Err(err(at("read_timeout"), "cannot be longer than total_timeout"));
    }
    Ok(ProviderConfig { id: id.to_string(), preset, base_url, api_key, models, timeouts })
}

fn validate_url(u: &str) -> Result<String, String> {
    let parsed: axum::http::Uri = u.parse().map_err(|e| format!("\"{u}\" is not a valid URL ({e})"))?;
    match parsed.scheme_str() {
        Some("http" | "https") => {}
        Some(_) => return Err(format!("\"{u}\" must use http or https")),
        None => return Err(format!("\"{u}\" is not a valid URL (it needs http:// or https://)")),
    }
    if parsed.host().is_none_or(str::is_empty) {
        return Err(format!("\"{u}\" has no host"));
    }
    if parsed.query().is_some() || u.contains('#') {
        return Err(format!("\"{u}\" must not have a query or fragment"));
    }
    Ok(u.trim_end_matches('/').to_string())
}

/// "250ms", "30s", "5m", "1h"; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len()));
    let n: f64 = num.parse().map_err(|_| format!("\"{s}\" is not a duration like \"30s\" or \"500ms\""))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("\"{s}\": unknown unit \"{other}\" (use ms, s, m or h)")),
    };
    if !(secs > 0.0 && secs.is_finite() && secs < 86_400.0 * 7.0) {
        return Err(format!("\"{s}\" must be between 0 and 7 days"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "DEEPSEEK_API_KEY" => Some("sk-ds".into()),
            "BOURSE_API_KEY" => Some("gw-key".into()),
            _ => None,
        }
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, &env)
    }

    fn path_of(text: &str) -> String {
        load(text).unwrap_err().path
    }

    #[test]
    fn the_documented_example_loads() {
        let cfg = load(
            r#"
            [server]
            listen = "127.0.0.1:4545"
            api_keys = ["env:BOURSE_API_KEY"]
            [providers.deepseek]
            kind = "deepseek"
            api_key = "env:DEEPSEEK_API_KEY"
            models = ["deepseek-chat"]
            first_byte_timeout = "20s"
            read_timeout = "45s"
            "#,
        )
        .unwrap();
        let p = &cfg.providers[0];
        assert_eq!(p.base_url, "https://api.deepseek.com");
        assert_eq!(p.api_key.as_ref().unwrap().expose(), "sk-ds");
        assert_eq!(p.timeouts.first_byte, Duration::from_secs(20));
        assert_eq!(p.timeouts.read, Duration::from_secs(45));
        assert_eq!(cfg.server.api_keys[0].expose(), "gw-key");
        assert_eq!(cfg.server.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(cfg.server.limits, crate::config::EdgeLimits::default());
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let e =
            load("[providers.deepseek]\nkind = \"deepseek\"\napi_key = \"env:DEEPSEEK_API_KEY\"\nbase_ulr = \"x\"\n")
                .unwrap_err();
        assert_eq!(e.path, "providers.deepseek.base_ulr");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = load("[server]\nlisten = \"127.0.0.1:1\"\nport = 3\n").unwrap_err();
        assert_eq!(e.path, "server.port");
        assert!(load("[serverr]\n").unwrap_err().to_string().contains("serverr"));
    }

    #[test]
    fn each_bad_value_names_its_path() {
        assert_eq!(
            path_of("[providers.x]\nkind = \"openai-compatible\"\nbase_url = \"not a url\"\n"),
            "providers.x.base_url"
        );
        assert_eq!(
            path_of("[providers.x]\nkind = \"openai-compatible\"\nbase_url = \"ftp://h/v1\"\n"),
            "providers.x.base_url"
        );
        assert_eq!(path_of("[providers.x]\nkind = \"vllm\"\n"), "providers.x.base_url");
        assert_eq!(path_of("[providers.x]\nkind = \"nope\"\n"), "providers.x.kind");
        assert_eq!(path_of("[providers.o]\nkind = \"openai\"\n"), "providers.o.api_key");
        assert_eq!(path_of("[providers.o]\nkind = \"openai\"\napi_key = \"env:MISSING_KEY\"\n"), "providers.o.api_key");
        assert_eq!(path_of("[providers.o]\nkind = \"openai\"\napi_key = \"sk-literal\"\n"), "providers.o.api_key");
        assert_eq!(path_of("[server]\nlisten = \"localhost\"\n"), "server.listen");
        assert_eq!(path_of("[server]\napi_keys = [\"env:NOPE\"]\n"), "server.api_keys[0]");
        assert_eq!(path_of("[server]\nmax_body_bytes = 0\n"), "server.max_body_bytes");
        assert_eq!(path_of("[server]\nshutdown_grace = \"soon\"\n"), "server.shutdown_grace");
        assert_eq!(path_of("[server]\nheader_timeout = \"0s\"\n"), "server.header_timeout");
        assert_eq!(path_of("[server]\nidle_timeout = \"forever\"\n"), "server.idle_timeout");
        assert_eq!(path_of("[server]\nsend_timeout = \"1 week\"\n"), "server.send_timeout");
        assert_eq!(path_of("[server]\nmax_connections = 0\n"), "server.max_connections");
        assert_eq!(path_of("[server]\nmax_header_bytes = 100\n"), "server.max_header_bytes");
        assert_eq!(path_of("[server]\nmax_headers = 100000\n"), "server.max_headers");
        assert_eq!(
            path_of("[providers.x]\nkind = \"vllm\"\nbase_url = \"http://h:1/v1\"\ntotal_timeout = \"5 parsecs\"\n"),
            "providers.x.total_timeout"
        );
        assert_eq!(
            path_of("[providers.x]\nkind = \"vllm\"\nbase_url = \"http://h:1/v1\"\nread_timeout = \"1000s\"\n"),
            "providers.x.read_timeout"
        );
        assert_eq!(
            path_of("[providers.x]\nkind = \"vllm\"\nbase_url = \"http://h:1/v1\"\nmodels = [\"a\", \"a\"]\n"),
            "providers.x.models[1]"
        );
        assert_eq!(path_of("[providers.Bad]\nkind = \"vllm\"\nbase_url = \"http://h:1\"\n"), "providers.Bad");
        assert_eq!(path_of("[providers.x]\nkind = 3\n"), "providers.x.kind");
    }

    #[test]
    fn duplicate_provider_ids_fail() {
        let e = load("[providers.a]\nkind = \"vllm\"\nbase_url = \"http://h:1\"\n[providers.a]\nkind = \"vllm\"\nbase_url = \"http://h:2\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("duplicate") && e.to_string().contains('a'), "{e}");
    }

    #[test]
    fn zero_config_enables_presets_whose_key_is_set() {
        let cfg = Config::from_env(&env).unwrap();
        let ids: Vec<_> = cfg.providers.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["deepseek"]);
        assert_eq!(cfg.server.api_keys.len(), 1);
        assert_eq!(cfg.source, ConfigSource::Environment);
    }

    #[test]
    fn catalog_overrides_reference_and_storage() {
        let cfg = load(
            "[models.\"vllm/llama\"]\ninput = 0\noutput = 0\n[catalog]\nreference = \"openai/gpt-4o\"\n[storage]\nurl = \"postgres://u@h/db\"\non_full = \"drop\"\n",
        )
        .unwrap();
        assert!(cfg.catalog.get("vllm/llama").is_some());
        assert_eq!(cfg.storage.url.as_deref(), Some("postgres://u@h/db"));
        assert_eq!(cfg.storage.on_full, OnFull::Drop);
        assert_eq!(path_of("[catalog]\nreference = \"nope/x\"\n"), "catalog.reference");
        assert_eq!(path_of("[storage]\nurl = \"mysql://x\"\n"), "storage.url");
        let e = load("[models.\"openai/gpt-x\"]\ninput = 0.0000025\noutput = 1\n").unwrap_err();
        assert!(e.to_string().contains("models.\"openai/gpt-x\".input"), "{e}");
        assert_eq!(load("[storage]\nledger = false\n").unwrap().storage.url, None);
    }

    #[test]
    fn telemetry_section() {
        let cfg = load("").unwrap();
        assert_eq!(cfg.telemetry, TelemetryConfig::default());
        assert!(cfg.telemetry.metrics && !cfg.telemetry.access_log && cfg.telemetry.otlp_endpoint.is_none());
        let cfg = load(
            "[telemetry]\nmetrics = false\notlp_endpoint = \"http://127.0.0.1:4318\"\nlog_format = \"json\"\naccess_log = true\n",
        )
        .unwrap();
        assert!(!cfg.telemetry.metrics && cfg.telemetry.access_log);
        assert_eq!(cfg.telemetry.log_format, LogFormat::Json);
        assert_eq!(cfg.telemetry.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318/v1/traces"));
        let cfg = load("[telemetry]\notlp_endpoint = \"https://c.example/otlp/v1/traces\"\n").unwrap();
        assert_eq!(cfg.telemetry.otlp_endpoint.as_deref(), Some("https://c.example/otlp/v1/traces"));
        assert_eq!(path_of("[telemetry]\notlp_endpoint = \"grpc://h:4317\"\n"), "telemetry.otlp_endpoint");
        assert_eq!(path_of("[telemetry]\nlog_format = \"yaml\"\n"), "telemetry.log_format");
        assert_eq!(path_of("[telemetry]\nmetrix = true\n"), "telemetry.metrix");
    }

    #[test]
    fn dashboard_settings() {
        let d = load("").unwrap().dashboard;
        assert_eq!(d, DashboardConfig::default());
        let d = load("[dashboard]\nsecure_cookie = true\nsession_ttl = \"1h\"\nrefresh = \"5s\"\n").unwrap().dashboard;
        assert_eq!(
            d,
            DashboardConfig {
                secure_cookie: true,
                session_ttl: Duration::from_secs(3600),
                refresh: Duration::from_secs(5)
            }
        );
        assert_eq!(path_of("[dashboard]\nsession_ttl = \"later\"\n"), "dashboard.session_ttl");
        assert_eq!(path_of("[dashboard]\nrefresh = \"100ms\"\n"), "dashboard.refresh");
        assert_eq!(path_of("[dashboard]\ntheme = \"dark\"\n"), "dashboard.theme");
    }

    #[test]
    fn ledgers_named_on_a_command_line() {
        assert_eq!(storage_url("/tmp/x.db"), "sqlite:/tmp/x.db");
        assert_eq!(storage_url("sqlite:a.db"), "sqlite:a.db");
        assert_eq!(storage_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn responses_store_ttl() {
        assert_eq!(load("").unwrap().responses.store_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(
            load("[responses]\nstore_ttl = \"2d\"\n").unwrap().responses.store_ttl,
            Duration::from_secs(2 * 86_400)
        );
        assert_eq!(load("[responses]\nstore_ttl = \"90s\"\n").unwrap().responses.store_ttl, Duration::from_secs(90));
        for bad in ["0d", "1.5d", "forever", "9999d"] {
            assert_eq!(path_of(&format!("[responses]\nstore_ttl = \"{bad}\"\n")), "responses.store_ttl", "{bad}");
        }
        assert_eq!(path_of("[responses]\nttl = \"1d\"\n"), "responses.ttl");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn cache_sizes_and_the_section() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size(" 4 KiB ").unwrap(), 4096);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("512").unwrap(), 512);
        for bad in ["", "MiB", "-1MiB", "1.5MiB", "1TiB", "99999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(load("").unwrap().cache, None);
        let c = load("[cache]\n").unwrap().cache.unwrap();
        assert!(c.enabled && !c.share_across_tenants);
        assert_eq!((c.ttl, c.max_bytes, c.max_entry_bytes), (DEFAULT_CACHE_TTL, 256 << 20, 4 << 20));
        // A route's `cache = true` alone: a store with the defaults, off for other requests.
        let c = load("[routes.r]\ncache = true\n").unwrap().cache.unwrap();
        assert!(!c.enabled);
        assert_eq!(load("[routes.r]\ncache = false\n").unwrap().cache, None);
        // A small store's entries are at most its size.
        assert_eq!(load("[cache]\nmax_bytes = \"1MiB\"\n").unwrap().cache.unwrap().max_entry_bytes, 1 << 20);
        assert_eq!(path_of("[cache]\nttl = \"8d\"\n"), "cache.ttl");
        assert_eq!(path_of("[cache]\nmax_entry_bytes = \"0\"\n"), "cache.max_entry_bytes");
    }
}
