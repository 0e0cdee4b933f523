//! Counterfactual replay (`bourse replay`): the ledger's past requests re-planned and re-priced
//! under another route, policy or catalog, and the difference summed — spend, savings against
//! the reference model, the model mix, and the requests that would have been refused and why.
//!
//! # What is replayed
//!
//! Each answered request once, from the attempt that answered it: a row with `attempt >= 1`,
//! no error kind, not a cache hit, and not a checked answer that another attempt of its
//! request followed (a cascade escalated past it). Everything else in the window is counted
//! with its recorded spend and left as it was, the same before and after: failed attempts
//! (a fallback's predecessors, and requests that failed outright, which have no answer whose
//! tokens could be re-priced), side calls (attempt 0: judges and shadows), answers a cascade
//! escalated past, and cache hits (no upstream call, cost 0; a hit stays a hit).
//!
//! # How a request is re-planned
//!
//! Its route is `--route` when given, else the route it asked for (`route=NAME` at the start
//! of its route reason); a request that named its model (no route) stays on that model unless
//! `--route` is given. The planner is the gateway's own ([`Router::plan_facts`]), on a router
//! built from the config's providers, routes and policies and the replay's catalog (`--catalog`,
//! else the config's), with `--policy` in place of each route's policy (as the
//! `x-bourse-policy` header would). What it reads of the request comes from the row:
//!
//! - needs (tools, JSON schema, vision) and whether it streamed: as recorded;
//! - prompt tokens: the recorded input tokens (uncached, cache reads and writes) — the
//!   upstream's count, where the live router had its own estimate from the body;
//! - `max_tokens`: the recorded output tokens (visible and reasoning), the answer's length:
//!   a model's context must hold the prompt and that answer, and a route's `max_cost` is
//!   checked against that answer's cost on each model;
//! - whether it asked for reasoning is not recorded: taken as not asked.
//!
//! Every candidate counts as healthy (no circuit history, no latency: ties go to the router's
//! entry order, providers as configured), no output averages are known (the planner expects the route's `expected_output`),
//! and quality evidence is what the store holds now. A virtual key's or tenant's own policy is
//! not applied (the ledger keeps the key, not the policy it had then).
//!
//! A request that named its model is kept on it and re-priced by the replay's catalog (a
//! model the catalog no longer prices would have been refused); under `--policy` it must also
//! pass that policy, as it would with a key carrying it.
//!
//! # How it is priced
//!
//! The recorded usage — all five counts, split between uncached input, cache reads and writes,
//! output and reasoning as the upstream reported it — at the chosen model's rates (its tier by
//! the recorded prompt), by [`meter::cost`]: integer pico-USD per token, rounded once per
//! request to nano-USD, summed as integers. The output count is the recorded one: the
//! answer's length is the best estimate of another model's. Rows whose usage the gateway
//! estimated are replayed like the rest and counted. The reference cost after is the same
//! usage on the config's reference model, priced by the replay's catalog; before, it is the
//! reference cost recorded with the row. Every sum is exact to the nano-dollar.
//!
//! # What is read
//!
//! The window's totals (rows and spend, also the progress bar's total) come from the ledger's
//! aggregates. The re-plan needs what the aggregates do not keep — each request's route,
//! needs, stream flag and token counts together, since context fit, tiers and the per-request
//! rounding depend on each request's own counts — so the window's rows are read once, a few
//! narrow columns, streamed in chunks ([`Ledger::replay_rows`]) while they are replayed. The
//! planner runs once per distinct shape (route, needs, stream, prompt tokens, output tokens),
//! not once per row.

use crate::canonical::Needs;
use crate::catalog::Catalog;
use crate::config::{Config, ConfigSource, Policy, RouteConfig};
use crate::ledger::{EvidenceRow, GroupBy, Ledger, ReplayRow, ReportQuery};
use crate::meter::{self, Meter};
use crate::provider::Provider;
use crate::route::plan::model_policy_exclusion;
use crate::route::{Facts, Overrides, Providers, Router};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// What the replay changes. All `None`: the config as it is now.
#[derive(Clone, Debug, Default)]
pub struct Scenario {
    /// Every request as if it had asked for this route.
    pub route: Option<String>,
    /// Each route's policy replaced by this one.
    pub policy: Option<String>,
    /// Prices and facts from this catalog (with the config's `[models]` over it), as if it
    /// were the config's `[catalog] file`.
    pub catalog: Option<Arc<Catalog>>,
}

/// Requests and their spend: exact integer nano-USD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Money {
    pub requests: u64,
    pub cost_nanos: i64,
    pub reference_cost_nanos: i64,
}

impl Money {
    fn add(&mut self, cost_nanos: i64, reference_cost_nanos: i64) {
        self.requests += 1;
        self.cost_nanos = self.cost_nanos.saturating_add(cost_nanos);
        self.reference_cost_nanos = self.reference_cost_nanos.saturating_add(reference_cost_nanos);
    }

    /// What the reference model would have cost more.
    pub fn saved_nanos(&self) -> i64 {
        self.reference_cost_nanos.saturating_sub(self.cost_nanos)
    }
}

/// One model's share before and after.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Mix {
    pub before_requests: u64,
    pub before_cost_nanos: i64,
    pub after_requests: u64,
    pub after_cost_nanos: i64,
}

/// The rows of the window that were not replayed, by kind, with their recorded spend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Attempts that ended in an error.
    pub failed: Money,
    /// Judges and shadows (attempt 0).
    pub side_calls: Money,
    /// Checked answers a cascade escalated past.
    pub escalated: Money,
    /// Answers from the response cache.
    pub cache_hits: Money,
}

/// A replay's result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub route: Option<String>,
    pub policy: Option<String>,
    /// The catalog the replay priced with (its version).
    pub catalog: String,
    /// The reference model savings are measured against.
    pub reference: String,
    /// Rows in the window and their spend, from the aggregates.
    pub ledger_rows: i64,
    pub ledger_cost_nanos: i64,
    /// Rows read.
    pub rows: u64,
    /// Every replayed request, as recorded.
    pub before: Money,
    /// The requests still feasible, as replayed.
    pub after: Money,
    /// The requests still feasible, as recorded (`after` compares with this like for like).
    pub kept_before: Money,
    /// Replayed requests whose usage the gateway had estimated.
    pub estimated: u64,
    /// Feasible requests that went to another model.
    pub moved: u64,
    /// By `provider/model`.
    pub models: BTreeMap<String, Mix>,
    /// Requests that would have been refused, by reason, with their recorded spend.
    pub infeasible: BTreeMap<String, Money>,
    pub skipped: Skipped,
}

impl Summary {
    /// Spend after minus spend before (negative: the scenario spends less).
    pub fn change_nanos(&self) -> i64 {
        self.after.cost_nanos.saturating_sub(self.before.cost_nanos)
    }

    pub fn infeasible_requests(&self) -> u64 {
        self.infeasible.values().map(|m| m.requests).sum()
    }
}

/// How far a replay has come.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub rows: u64,
    /// Rows in the window (from the aggregates; 0 when unknown).
    pub total: u64,
    pub before_nanos: i64,
    pub after_nanos: i64,
}

/// The catalog in `file` with the config's `[models]` tables over it, as the config would load
/// it with `[catalog] file` set to `file`.
pub fn load_catalog(cfg: &Config, file: &Path) -> Result<Arc<Catalog>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    // The `[models]` tables are only in the config file (a config from the environment has none).
    let overrides = match &cfg.source {
        ConfigSource::File(p) => {
            let cfg_text =
                std::fs::read_to_string(p).map_err(|e| format!("cannot read the config {}: {e}", p.display()))?;
            toml::from_str::<crate::config::raw::RawConfig>(&cfg_text)
                .map_err(|e| format!("config {}: {}", p.display(), e.message()))?
                .models
        }
        ConfigSource::Environment => BTreeMap::new(),
    };
    let ids: Vec<String> = cfg.providers.iter().map(|p| p.id.clone()).collect();
    let (catalog, _) = Catalog::load_with(&text, &overrides, &ids)
        .map_err(|f| format!("{}: {}", file.display(), f.errors.join("; ")))?;
    if catalog.get(&cfg.reference).is_none() {
        return Err(format!(
            "{}: the reference model {} is not in it (savings are measured against it)",
            file.display(),
            cfg.reference
        ));
    }
    Ok(Arc::new(catalog))
}

/// What the planner decided for one shape: the entry chosen, or why none was.
#[derive(Clone, Debug)]
enum Choice {
    Entry(usize),
    Refused(Arc<str>),
}

/// A routed request's shape: everything its plan depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Shape {
    route: usize,
    needs: u8,
    stream: bool,
    prompt: u64,
    output: u64,
}

/// The maps here are keyed by the ledger's own names and numbers, looked up for every row:
/// FNV-1a rather than SipHash (nothing here is chosen by an adversary probing the process).
type Fnv = std::hash::BuildHasherDefault<crate::fnv::Fnv1a>;

/// A named model's catalog position, or why it would be refused.
type NamedPrice = Result<usize, Arc<str>>;

/// Shapes remembered at most; the memo starts over when full (bounded memory).
const MEMO_LIMIT: usize = 1 << 20;

/// The planner's constraint labels ([`crate::route::plan::Exclusion::constraint`]) in the
/// order it checks them, which is the order an infeasible request's reason lists them in.
const CONSTRAINTS: [&str; 15] = [
    "providers",
    "deny_origin",
    "deny_hosting",
    "open_weights_only",
    "tools",
    "json_schema",
    "vision",
    "reasoning",
    "streaming",
    "context",
    "min_quality",
    "min_score",
    "max_price_per_mtok",
    "max_cost",
    "health",
];

/// Model names seen, interned: rows repeat a few models millions of times.
#[derive(Default)]
struct Names {
    by_provider: HashMap<String, HashMap<String, usize, Fnv>, Fnv>,
    names: Vec<String>,
}

impl Names {
    fn id(&mut self, provider: &str, model: &str) -> usize {
        if let Some(&i) = self.by_provider.get(provider).and_then(|m| m.get(model)) {
            return i;
        }
        let i = self.names.len();
        self.names.push(format!("{provider}/{model}"));
        self.by_provider.entry(provider.to_string()).or_default().insert(model.to_string(), i);
        i
    }
}

/// Re-plans and re-prices rows one at a time and keeps the sums.
pub struct Replayer {
    router: Router,
    meter: Meter,
    providers: Providers,
    /// Index of each configured route (the memo's key), by name.
    routes: HashMap<String, usize, Fnv>,
    route_list: Vec<RouteConfig>,
    /// `--route`'s index.
    forced_route: Option<usize>,
    policy: Option<Policy>,
    overrides: Overrides,
    memo: HashMap<Shape, Choice, Fnv>,
    /// A named model's price (catalog position) or why it would be refused, by provider and model.
    named: HashMap<String, HashMap<String, NamedPrice, Fnv>, Fnv>,
    names: Names,
    /// Each entry's interned name.
    entry_names: Vec<usize>,
    mix: Vec<Mix>,
    summary: Summary,
}

impl Replayer {
    /// A replayer for `cfg` changed by `scenario`, with the store's quality `evidence`. An
    /// unknown route or policy is an error naming the configured ones.
    pub fn new(cfg: &Config, scenario: &Scenario, evidence: Vec<EvidenceRow>) -> Result<Replayer, String> {
        let catalog = scenario.catalog.clone().unwrap_or_else(|| cfg.catalog.clone());
        let mut list = Vec::new();
        for p in &cfg.providers {
            list.push(Arc::new(Provider::new(p)?));
        }
        let providers = Providers::new(list);
        let router = Router::new(&providers, &catalog, &cfg.routing);
        router.evidence.set_rows(evidence);
        let route_list: Vec<RouteConfig> = router.routes.values().cloned().collect();
        let routes: HashMap<String, usize, Fnv> =
            route_list.iter().enumerate().map(|(i, r)| (r.name.clone(), i)).collect();
        let forced_route =
            match &scenario.route {
                Some(r) => Some(*routes.get(r).ok_or_else(|| {
                    format!("--route: unknown route '{r}'; configured: {}", names(router.routes.keys()))
                })?),
                None => None,
            };
        let policy = match &scenario.policy {
            Some(p) => Some(router.policies.get(p).cloned().ok_or_else(|| {
                format!("--policy: unknown policy '{p}'; configured: {}", names(router.policies.keys()))
            })?),
            None => None,
        };
        let meter = Meter::new(catalog.clone(), cfg.reference.clone());
        if meter.reference().is_none() {
            return Err(format!("the reference model {} is not in the catalog", cfg.reference));
        }
        let mut names = Names::default();
        let entry_names = router.entries.iter().map(|e| names.id(&e.provider.id, &e.model.model)).collect();
        let summary = Summary {
            route: scenario.route.clone(),
            policy: scenario.policy.clone(),
            catalog: catalog.version.clone(),
            reference: cfg.reference.clone(),
            ..Summary::default()
        };
        Ok(Replayer {
            overrides: Overrides { policy: scenario.policy.clone(), ..Overrides::default() },
            router,
            meter,
            providers,
            routes,
            route_list,
            forced_route,
            policy,
            memo: HashMap::default(),
            named: HashMap::default(),
            names,
            entry_names,
            mix: Vec::new(),
            summary,
        })
    }

    /// Replays one row (or counts it as not replayed).
    pub fn add(&mut self, row: &ReplayRow) {
        let s = &mut self.summary;
        s.rows += 1;
        let skipped = if row.attempt == 0 {
            Some(&mut s.skipped.side_calls)
        } else if row.cache_hit {
            Some(&mut s.skipped.cache_hits)
        } else if row.failed {
            Some(&mut s.skipped.failed)
        } else if row.superseded {
            Some(&mut s.skipped.escalated)
        } else {
            None
        };
        if let Some(m) = skipped {
            m.add(row.cost_nanos, row.reference_cost_nanos);
            return;
        }
        s.before.add(row.cost_nanos, row.reference_cost_nanos);
        s.estimated += u64::from(row.estimated);
        let before = self.names.id(&row.provider, &row.model);
        self.mix_at(before).before_requests += 1;
        let m = self.mix_at(before);
        m.before_cost_nanos = m.before_cost_nanos.saturating_add(row.cost_nanos);
        let route = match self.forced_route {
            Some(i) => Some(Ok(i)),
            None => row.route.as_deref().map(|r| self.routes.get(r).copied().ok_or(r)),
        };
        let choice = match route {
            Some(Ok(i)) => self.plan(i, row),
            Some(Err(gone)) => Err(Arc::from(format!("route '{gone}' is not configured"))),
            None => self.named(row),
        };
        let s = &mut self.summary;
        match choice {
            Ok((after, cost)) => {
                let reference = self.meter.reference().map_or(0, |r| meter::cost(&row.usage, r).0);
                s.after.add(cost, reference);
                s.kept_before.add(row.cost_nanos, row.reference_cost_nanos);
                s.moved += u64::from(after != before);
                let m = self.mix_at(after);
                m.after_requests += 1;
                m.after_cost_nanos = m.after_cost_nanos.saturating_add(cost);
            }
            Err(reason) => {
                // Refused requests spend nothing after; their recorded spend is listed.
                let entry = match s.infeasible.get_mut(&*reason) {
                    Some(e) => e,
                    None => s.infeasible.entry(reason.to_string()).or_default(),
                };
                entry.add(row.cost_nanos, row.reference_cost_nanos);
            }
        }
    }

    fn mix_at(&mut self, name: usize) -> &mut Mix {
        if self.mix.len() <= name {
            self.mix.resize(name + 1, Mix::default());
        }
        &mut self.mix[name]
    }

    /// A routed row on route `i`: the model the planner chooses (its interned name) and the
    /// row's usage priced on it, or why no model is feasible.
    fn plan(&mut self, i: usize, row: &ReplayRow) -> Result<(usize, i64), Arc<str>> {
        let output = row.usage.output.saturating_add(row.usage.output_reasoning);
        let shape = Shape { route: i, needs: row.needs, stream: row.stream, prompt: row.usage.input_total(), output };
        let choice = match self.memo.get(&shape) {
            Some(c) => c.clone(),
            None => {
                let c = self.choose(shape);
                if self.memo.len() >= MEMO_LIMIT {
                    self.memo.clear();
                }
                self.memo.insert(shape, c.clone());
                c
            }
        };
        match choice {
            Choice::Entry(e) => Ok((self.entry_names[e], meter::cost(&row.usage, &self.router.entries[e].model).0)),
            Choice::Refused(why) => Err(why),
        }
    }

    /// The planner's first candidate for a shape.
    fn choose(&self, s: Shape) -> Choice {
        let facts = Facts {
            needs: Needs::from_bits(s.needs),
            stream: s.stream,
            reasoning: false,
            prompt_tokens: s.prompt,
            max_tokens: Some(s.output),
        };
        // Every candidate available, no latency known: ties go to the entries' order.
        match self.router.plan_facts(&self.route_list[s.route], &self.overrides, &facts, |_| (true, None)) {
            Ok(routed) => match routed.plan.candidates.first() {
                Some(c) => Choice::Entry(c.entry),
                None => {
                    let mut seen = [false; CONSTRAINTS.len()];
                    let mut other = Vec::new();
                    for (_, x) in &routed.plan.excluded {
                        match CONSTRAINTS.iter().position(|c| *c == x.constraint()) {
                            Some(at) => seen[at] = true,
                            None => other.push(x.constraint()),
                        }
                    }
                    let mut labels: Vec<&str> =
                        CONSTRAINTS.iter().zip(seen).filter(|(_, s)| *s).map(|(c, _)| *c).collect();
                    labels.extend(other);
                    Choice::Refused(Arc::from(match labels.is_empty() {
                        true => "no model configured".to_string(),
                        false => format!("no feasible model: {}", labels.join(", ")),
                    }))
                }
            },
            // The route's own policy is missing from the config (validated at load, so only a
            // config that changed under it).
            Err(e) => Choice::Refused(Arc::from(e.message)),
        }
    }

    /// A row that named its model: the same model (its interned name) and the row's usage
    /// priced by the replay's catalog, or why it would be refused.
    fn named(&mut self, row: &ReplayRow) -> Result<(usize, i64), Arc<str>> {
        let known = self.named.get(&row.provider).and_then(|m| m.get(&row.model)).cloned();
        let price = match known {
            Some(p) => p,
            None => {
                let p = self.name_price(&row.provider, &row.model);
                self.named.entry(row.provider.clone()).or_default().insert(row.model.clone(), p.clone());
                p
            }
        }?;
        let cost = meter::cost(&row.usage, &self.meter.catalog.models()[price]).0;
        Ok((self.names.id(&row.provider, &row.model), cost))
    }

    fn name_price(&self, provider: &str, model: &str) -> Result<usize, Arc<str>> {
        let p = self.providers.get(provider);
        let vendor = p.map_or(provider, |p| p.vendor);
        let price =
            self.meter.price(provider, vendor, model).map_err(|_| Arc::from("named model not in the catalog"))?;
        if let Some(policy) = &self.policy {
            let m = self.meter.model(price);
            if let Some(x) = model_policy_exclusion(provider, p.and_then(|p| p.hosting), m, policy) {
                return Err(Arc::from(format!("named model denied by the policy: {}", x.constraint())));
            }
        }
        Ok(price.position())
    }

    /// The sums so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The sums, with the model mix by name.
    pub fn finish(mut self) -> Summary {
        for (i, m) in self.mix.iter().enumerate() {
            if *m != Mix::default() {
                self.summary.models.insert(self.names.names[i].clone(), *m);
            }
        }
        self.summary
    }
}

fn names<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = keys.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Replays the rows of `[since_ms, until_ms)` in `ledger` under `scenario`, calling `progress`
/// after each chunk. The config's routes and policies are checked before anything is read.
pub async fn run(
    ledger: &Ledger,
    cfg: &Config,
    scenario: &Scenario,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    mut progress: impl FnMut(&Progress),
) -> Result<Summary, String> {
    let evidence = ledger.evidence().await.map_err(|e| format!("cannot read quality evidence: {e}"))?;
    let mut replayer = Replayer::new(cfg, scenario, evidence)?;
    // The window's rows and spend, from the aggregates.
    let q = ReportQuery { since_ms, until_ms, by: GroupBy::None, key: None };
    let totals = ledger.report(&q).await.map_err(|e| format!("cannot read the ledger: {e}"))?;
    let (ledger_rows, ledger_cost_nanos) =
        totals.iter().fold((0i64, 0i64), |(n, c), r| (n + r.attempts, c + r.cost_nanos));
    // Reading and replaying overlap: the store reads the next chunk while this one is planned.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let reader = {
        let ledger = ledger.clone();
        tokio::spawn(async move { ledger.replay_rows(since_ms, until_ms, tx).await })
    };
    let mut p = Progress { total: u64::try_from(ledger_rows).unwrap_or(0), ..Progress::default() };
    while let Some(chunk) = rx.recv().await {
        for row in &chunk {
            replayer.add(row);
        }
        let s = replayer.summary();
        p.rows = s.rows;
        p.before_nanos = s.before.cost_nanos;
        p.after_nanos = s.after.cost_nanos;
        progress(&p);
    }
    reader
        .await
        .map_err(|e| format!("the ledger read stopped: {e}"))?
        .map_err(|e| format!("cannot read the ledger: {e}"))?;
    let mut summary = replayer.finish();
    summary.since_ms = since_ms;
    summary.until_ms = until_ms;
    summary.ledger_rows = ledger_rows;
    summary.ledger_cost_nanos = ledger_cost_nanos;
    Ok(summary)
}
