//! The state every request sees: the providers, the router, the meter, the estimator, the
//! ledger's writer, the gateway keys and the dashboard's sessions, built once from the
//! validated config; and the [`Caller`] the edge establishes for each request. Handlers and
//! the exchange read it; the server builds it and hands it to every connection.

use crate::admin::{Admin, Directory, Resolved};
use crate::config::{Config, EdgeLimits, Secret};
use crate::dashboard::{Dashboard, View};
use crate::ledger::{Ledger, Writer};
use crate::limit::{Counters, LocalCounters};
use crate::meter::estimate::Estimator;
use crate::meter::Meter;
use crate::provider::Provider;
use crate::route::{Providers, Router};
use crate::telemetry::Telemetry;
use crate::tenancy::{config_key_id, KeyIdSecret};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared, read-only state of a running gateway.
#[derive(Debug)]
pub struct AppState {
    pub providers: Providers,
    pub api_keys: Vec<Secret>,
    /// Keys for `/admin/v1/*`.
    pub admin_keys: Vec<Secret>,
    /// Tenants and virtual keys as every replica serves them (None without a ledger store).
    pub directory: Option<Arc<Directory>>,
    /// Tenant and key administration (`/admin/v1/*`), over the same store.
    pub admin: Option<Admin>,
    /// The counters budgets and rate limits are decided on.
    pub counters: Counters,
    /// Ids of the gateway keys (same order), for ledger rows: see [`config_key_id`].
    pub key_ids: Vec<Arc<str>>,
    /// Ids of the admin keys (same order), for audit rows and logs.
    pub admin_key_ids: Vec<Arc<str>>,
    pub meter: Meter,
    /// The tokenizer's pool, for usage the upstream never reported.
    pub estimator: Estimator,
    pub router: Router,
    /// Where ledger rows go; None when the ledger is off.
    pub ledger: Option<Writer>,
    /// A read handle for usage reports (and the store of Responses API answers).
    pub reports: Option<Ledger>,
    /// How long a stored Responses API answer can be continued from.
    pub responses: crate::config::ResponsesConfig,
    pub max_body_bytes: usize,
    /// What a client connection may hold, and for how long.
    pub limits: EdgeLimits,
    /// Unix seconds at start, for the `created` field of model objects.
    pub started: u64,
    /// Metrics, traces and the access log.
    pub telemetry: Telemetry,
    /// `/dashboard`'s sessions and settings.
    pub dashboard: Dashboard,
    /// How long in-flight requests may run once the server is told to stop, and whether
    /// that time has run out.
    pub shutdown: Shutdown,
    /// The response cache (None: off for every request). In memory here; in Redis once
    /// `server::prepare` finds `[shared] redis_url`.
    pub cache: Option<crate::cache::Cache>,
}

/// The end of a graceful stop: in-flight requests get `grace` to finish; past it the server
/// ends the rest, and an attempt ended then is the gateway's doing, not its client's.
#[derive(Debug, Default)]
pub struct Shutdown {
    pub grace: Duration,
    overdue: AtomicBool,
    /// Work that records a ledger row after its request is gone (a stream's token estimate,
    /// a row waiting for room in the writer's queue): the stop waits for it before the
    /// writer's last flush, or the row would come too late.
    pub settling: tokio_util::task::TaskTracker,
}

impl Shutdown {
    pub fn new(grace: Duration) -> Shutdown {
        Shutdown { grace, overdue: AtomicBool::new(false), settling: Default::default() }
    }

    /// The grace period ran out: requests still in flight are being ended.
    pub fn overdue(&self) -> bool {
        self.overdue.load(Ordering::Relaxed)
    }

    pub(crate) fn set_overdue(&self) {
        self.overdue.store(true, Ordering::Relaxed);
    }
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// Build runtime state (HTTP clients included) from a validated config. Config keys' ids
    /// are keyed with a secret of this process until [`AppState::use_key_id_secret`] gives
    /// it the store's.
    pub fn from_config(cfg: &Config) -> Result<AppState, String> {
        let mut list = Vec::new();
        for p in &cfg.providers {
            list.push(Arc::new(Provider::new(p)?));
        }
        let providers = Providers::new(list);
        let router = Router::new(&providers, &cfg.catalog, &cfg.routing);
        let telemetry = Telemetry::new(&cfg.telemetry, &router, &providers, &cfg.catalog);
        let secret = KeyIdSecret::ephemeral().map_err(|e| e.to_string())?;
        Ok(AppState {
            telemetry,
            router,
            providers,
            api_keys: cfg.server.api_keys.clone(),
            admin_keys: cfg.server.admin_keys.clone(),
            directory: None,
            admin: None,
            counters: Counters::Local(LocalCounters::new()),
            key_ids: ids(&secret, &cfg.server.api_keys),
            admin_key_ids: ids(&secret, &cfg.server.admin_keys),
            meter: Meter::new(cfg.catalog.clone(), cfg.reference.clone()),
            estimator: Estimator::new(),
            ledger: None,
            reports: None,
            responses: cfg.responses,
            max_body_bytes: usize::try_from(cfg.server.max_body_bytes).unwrap_or(usize::MAX),
            limits: cfg.server.limits,
            started: crate::timespec::now_secs(),
            dashboard: Dashboard::new(cfg.dashboard),
            shutdown: Shutdown::new(cfg.server.shutdown_grace),
            cache: cfg.cache.map(crate::cache::Cache::memory),
        })
    }

    /// Names config keys by `secret` from now on (the store's, so ids outlive the process).
    pub fn use_key_id_secret(&mut self, secret: &KeyIdSecret) {
        self.key_ids = ids(secret, &self.api_keys);
        self.admin_key_ids = ids(secret, &self.admin_keys);
    }

    /// What `/dashboard` may read.
    pub fn dashboard_view(&self) -> View<'_> {
        View {
            ledger: self.reports.as_ref(),
            catalog: &self.meter.catalog,
            reference: self.meter.reference().map_or("", |m| m.id.as_str()),
            router: &self.router,
            admin_keys: &self.admin_keys,
            admin_key_ids: &self.admin_key_ids,
        }
    }
}

fn ids(secret: &KeyIdSecret, keys: &[Secret]) -> Vec<Arc<str>> {
    keys.iter().map(|k| Arc::from(config_key_id(secret, k.expose()))).collect()
}

/// Who is asking, as the edge established it: the request id, the gateway key's id and,
/// for a virtual key, the key and its tenant as the directory held them.
#[derive(Clone, Debug)]
pub struct Caller {
    pub request_id: Arc<str>,
    pub key_id: Option<Arc<str>>,
    pub key: Option<Arc<Resolved>>,
    /// When the edge received the request, noted only while telemetry reads it
    /// ([`crate::telemetry::Telemetry::times_requests`]).
    pub arrived: Option<Instant>,
}

impl Caller {
    /// Who is asking, as telemetry names them.
    pub fn who(&self) -> crate::telemetry::Who<'_> {
        crate::telemetry::Who { request_id: &self.request_id, key_id: self.key_id.as_deref(), tenant: self.tenant_id() }
    }

    /// The tenant of a virtual key (config keys belong to no stored tenant).
    pub fn tenant_id(&self) -> Option<&str> {
        self.key.as_ref().map(|k| k.tenant.name.as_str())
    }
}
