//! Routing: which provider and upstream model serve a request.
//!
//! Addressing: `provider/model` picks that provider (the rest, slashes and all, is the
//! upstream model name, so `together/meta-llama/Llama-3.3-70B` works); a bare name goes to
//! a provider that lists it in its `models`. A route (`auto`, or one named in config)
//! instead asks the [`plan`]ner for the cheapest feasible models, which become the
//! fallback chain; [`health`] keeps failing provider+model pairs out of it for a while.

pub mod evidence;
pub mod health;
pub mod plan;
pub mod quote;

use crate::catalog::{Catalog, Kind};
use crate::config::Policy;
use crate::config::{RouteConfig, Routing};
use crate::error::{Error, ErrorKind, Result};
use crate::provider::Provider;
use health::Health;
use plan::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where one attempt goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    pub upstream_model: String,
}

/// The configured providers, in config order.
#[derive(Debug, Default)]
pub struct Providers {
    list: Vec<Arc<Provider>>,
}

impl Providers {
    pub fn new(list: Vec<Arc<Provider>>) -> Self {
        Providers { list }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Provider>> {
        self.list.iter().find(|p| p.id == id)
    }

    /// Resolve a client's model name to a target.
    pub fn resolve(&self, model: &str) -> Result<Target> {
        if let Some((prefix, rest)) = model.split_once('/') {
            if let Some(p) = self.get(prefix) {
                if rest.is_empty() {
                    return Err(Error {
                        param: Some("model".into()),
                        ..Error::new(
                            ErrorKind::ModelNotFound,
                            format!("model '{model}' names provider '{prefix}' but no model"),
                        )
                    });
                }
                return Ok(Target { provider: p.clone(), upstream_model: rest.to_string() });
            }
        }
        if let Some(p) = self.list.iter().find(|p| p.models.iter().any(|m| m == model)) {
            return Ok(Target { provider: p.clone(), upstream_model: model.to_string() });
        }
        Err(Error {
            param: Some("model".into()),
            ..Error::new(ErrorKind::ModelNotFound, self.not_found_message(model))
        })
    }

    fn not_found_message(&self, model: &str) -> String {
        if self.list.is_empty() {
            return format!(
                "model '{model}' not found: no providers are configured (set a provider key such as OPENAI_API_KEY, or add [providers.*] to the config)"
            );
        }
        let looked: Vec<String> = self
            .list
            .iter()
            .map(|p| {
                if p.models.is_empty() {
                    format!("{} (no models listed)", p.id)
                } else {
                    format!("{} ({})", p.id, p.models.join(", "))
                }
            })
            .collect();
        format!(
            "model '{model}' not found. Name it as 'provider/model' with one of the providers [{}], or list it under a provider's `models`. Looked in: {}",
            self.list.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", "),
            looked.join("; ")
        )
    }
}

/// Everything routing needs, built once at start-up.
#[derive(Debug)]
pub struct Router {
    /// Every routable (provider, chat model) pair.
    pub entries: Vec<Entry>,
    pub routes: BTreeMap<String, RouteConfig>,
    pub policies: BTreeMap<String, Policy>,
    pub health: Health,
    pub max_attempts: u32,
    /// Failures that open a circuit (an out-of-balance answer counts as all of them).
    pub failure_threshold: u32,
    /// Quality evidence per route, by entry.
    pub evidence: Arc<evidence::Evidence>,
    /// The catalog score of each relative floor's reference, by `provider/model`.
    reference_quality: BTreeMap<Arc<str>, Option<u32>>,
}

impl Router {
    /// Pair each configured provider with the catalog's chat models it serves: entries
    /// under its own id first, then its vendor's (a provider "ds" of kind "deepseek" or
    /// "deepseek-anthropic" serves the deepseek models). A provider that lists `models` serves only those.
    pub fn new(providers: &Providers, catalog: &Catalog, cfg: &Routing) -> Router {
        let mut entries = Vec::new();
        for p in providers.iter() {
            let mut seen = std::collections::HashSet::new();
            for owner in [p.id.as_str(), p.vendor] {
                for m in catalog.models().iter().filter(|m| m.kind == Kind::Chat && m.provider == owner) {
                    if !p.models.is_empty() && !p.models.contains(&m.model) {
                        continue;
                    }
                    if seen.insert(m.model.clone()) {
                        entries.push(Entry::new(p.clone(), m.clone()));
                    }
                }
            }
        }
        let reference_quality = cfg
            .routes
            .values()
            .filter_map(|r| r.relative.as_ref())
            .map(|rel| (Arc::from(rel.reference.as_str()), catalog.get(&rel.reference).and_then(|m| m.quality)))
            .collect();
        Router {
            health: Health::with_keys(cfg.router.health, entries.iter().map(|e| e.key.as_ref())),
            evidence: Arc::new(evidence::Evidence::new(entries.iter().map(|e| e.key.as_ref()))),
            reference_quality,
            entries,
            routes: cfg.routes.clone(),
            policies: cfg.policies.clone(),
            max_attempts: cfg.router.max_attempts,
            failure_threshold: cfg.router.health.failure_threshold,
        }
    }

    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.get(name)
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| &*e.key == key)
    }
}

/// Per-request routing overrides, from `x-bourse-*` headers (never forwarded upstream).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub route: Option<String>,
    pub min_quality: Option<u32>,
    pub policy: Option<String>,
    pub max_cost: Option<crate::meter::Cost>,
    /// Policies every candidate must also obey (a virtual key's and its tenant's), on top of
    /// the route's (or `policy`).
    pub narrow: Vec<String>,
}

impl Overrides {
    /// Parse the override headers; a bad value is a 400 naming the header.
    pub fn from_headers(h: &axum::http::HeaderMap) -> Result<Overrides> {
        // Most requests carry none: one pass over the names instead of four lookups.
        if !h.keys().any(|k| k.as_str().starts_with("x-bourse-")) {
            return Ok(Overrides::default());
        }
        let get = |name: &str| -> Result<Option<String>> {
            match h.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim().to_string()))
                    .map_err(|_| Error::invalid(name, format!("'{name}' must be ASCII"))),
            }
        };
        let min_quality = get("x-bourse-min-quality")?
            .map(|s| crate::config::parse_quality(&s).map_err(|m| Error::invalid("x-bourse-min-quality", m)))
            .transpose()?;
        let max_cost = get("x-bourse-max-cost-usd")?
            .map(|s| match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(crate::meter::Cost((v * 1e9).round() as i64)),
                _ => Err(Error::invalid("x-bourse-max-cost-usd", format!("'{s}' is not an amount in USD"))),
            })
            .transpose()?;
        Ok(Overrides {
            route: get("x-bourse-route")?,
            min_quality,
            policy: get("x-bourse-policy")?,
            max_cost,
            narrow: Vec::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.route.is_none() && self.min_quality.is_none() && self.policy.is_none() && self.max_cost.is_none()
    }
}

/// What the planner reads of a chat request: the capabilities it needs, whether it
/// streams or asks for reasoning, its estimated prompt tokens and its `max_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    pub needs: crate::canonical::Needs,
    pub stream: bool,
    pub reasoning: bool,
    pub prompt_tokens: u64,
    pub max_tokens: Option<u64>,
}

/// A routed request's plan, with what is needed to explain it.
#[derive(Debug)]
pub struct Routed {
    pub route: String,
    pub min_quality: u32,
    pub policy: String,
    pub max_cost: Option<crate::meter::Cost>,
    pub prompt_tokens: u64,
    pub plan: plan::Plan,
}

impl Router {
    /// The route a request asks for, if any: the `x-bourse-route` header, else a `model`
    /// that names a route.
    pub fn route_for<'a>(&'a self, model: &str, o: &Overrides) -> Result<Option<&'a RouteConfig>> {
        match &o.route {
            Some(name) => self.route(name).map(Some).ok_or_else(|| {
                Error::invalid(
                    "x-bourse-route",
                    format!(
                        "unknown route '{name}'; configured: {}",
                        self.routes.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            }),
            None => Ok(self.route(model)),
        }
    }

    /// Plan a chat request on a route. `now` is for health checks.
    pub fn plan(
        &self,
        route: &RouteConfig,
        o: &Overrides,
        req: &crate::canonical::ChatRequest,
        now: std::time::Instant,
    ) -> Result<Routed> {
        let (prompt_tokens, reasoning) = prompt_facts(req);
        let facts =
            Facts { needs: req.needs, stream: req.stream, reasoning, prompt_tokens, max_tokens: req.max_output_tokens };
        let health = &self.health;
        self.plan_facts(route, o, &facts, |e| {
            (health.is_available(&e.key, now), health.ewma_ttfb(&e.key).map(|d| d.as_micros() as u64))
        })
    }

    /// [`Router::plan`] from what the planner reads of a request rather than the request
    /// itself, with each entry's health given by `health(entry) -> (available, latency_us)`:
    /// `bourse replay` re-plans ledger rows, which keep these facts but no body, as if every
    /// candidate were healthy.
    pub fn plan_facts(
        &self,
        route: &RouteConfig,
        o: &Overrides,
        facts: &Facts,
        health: impl Fn(&Entry) -> (bool, Option<u64>),
    ) -> Result<Routed> {
        let mut policy_name = o.policy.clone().unwrap_or_else(|| route.policy.clone());
        let mut policy = self
            .policies
            .get(&policy_name)
            .ok_or_else(|| Error::invalid("x-bourse-policy", format!("unknown policy '{policy_name}'")))?;
        let narrowed;
        if !o.narrow.is_empty() {
            let mut p = policy.clone();
            for name in &o.narrow {
                let extra = self.policies.get(name).ok_or_else(|| {
                    Error::new(ErrorKind::Internal, format!("the key's policy '{name}' is no longer configured"))
                })?;
                p = p.narrowed(extra);
            }
            policy_name = p.name.clone();
            narrowed = p;
            policy = &narrowed;
        }
        let Facts { needs, stream, reasoning, prompt_tokens, max_tokens } = *facts;
        let min_quality = o.min_quality.unwrap_or(route.min_quality);
        let max_cost = match (o.max_cost, route.max_cost) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let table = self.evidence.snapshot();
        let evidence = table.route(&route.name);
        let relative = route.relative.as_ref().and_then(|rel| {
            let (reference, quality) = self.reference_quality.get_key_value(rel.reference.as_str())?;
            Some(plan::RelativeFloor {
                ppm: rel.ppm,
                reference,
                reference_mean_ppm: evidence.and_then(|t| t.model(reference)).map(|q| q.mean_ppm),
                reference_quality: *quality,
            })
        });
        let ask = plan::Ask {
            policy,
            min_quality,
            max_cost,
            needs,
            stream,
            reasoning,
            prompt_tokens,
            max_tokens,
            default_output: route.expected_output,
            evidence,
            min_score_ppm: route.min_score_ppm,
            relative,
        };
        let plan = plan::plan(&self.entries, &ask, health);
        Ok(Routed { route: route.name.clone(), min_quality, policy: policy_name, max_cost, prompt_tokens, plan })
    }

    /// The 4xx for a plan with no feasible model: which constraints removed how many
    /// candidates, with examples.
    pub fn no_feasible(&self, r: &Routed) -> Error {
        let mut groups: BTreeMap<&'static str, (usize, Vec<&str>)> = BTreeMap::new();
        for (i, x) in &r.plan.excluded {
            let g = groups.entry(x.constraint()).or_default();
            g.0 += 1;
            if g.1.len() < 3 {
                g.1.push(&self.entries[*i].key);
            }
        }
        let parts: Vec<String> = groups
            .iter()
            .map(|(c, (n, examples))| {
                format!("{c}: {n} ({}{})", examples.join(", "), if *n > 3 { ", ..." } else { "" })
            })
            .collect();
        let detail = if self.entries.is_empty() {
            "no configured provider serves a priced catalog model".to_string()
        } else {
            format!("of {} models, removed by {}", self.entries.len(), parts.join("; "))
        };
        Error {
            param: Some("model".into()),
            ..Error::new(
                ErrorKind::NoFeasibleModel,
                format!(
                    "no model satisfies route '{}' (min_quality {}, policy '{}'): {detail}",
                    r.route, r.min_quality, r.policy
                ),
            )
        }
    }

    /// The `x-bourse-route-reason` text: chosen model, its expected cost and what its quality
    /// rests on (`evidence LOWER n=N`: the Wilson lower bound of its score on this route;
    /// `catalog Q`; `unrated`), how many were feasible, and the runner-up.
    pub fn reason(&self, r: &Routed, chosen: usize, attempt: u32) -> String {
        let c = &r.plan.candidates;
        // One buffer, written piece by piece: this runs on every routed request, and the
        // formatting machinery cost more than the rest of it.
        let mut s = String::with_capacity(160);
        let show = |s: &mut String, i: usize| {
            let cand = &c[i];
            s.push_str(&self.entries[cand.entry].key);
            s.push_str(" (expected $");
            let mut buf = [0; 24];
            // Digits, point and sign: ASCII.
            s.push_str(std::str::from_utf8(plan::cost_of(cand.expected_pico).usd_ascii(&mut buf)).unwrap_or("?"));
            // What its quality rests on: the route's evidence, else the catalog.
            match (cand.evidence, self.entries[cand.entry].model.quality) {
                (Some(q), _) => {
                    s.push_str(", evidence ");
                    s.push_str(&evidence::share(q.lower_ppm));
                    s.push_str(" n=");
                    s.push_str(itoa::Buffer::new().format(q.n));
                }
                (None, Some(q)) => {
                    s.push_str(", catalog ");
                    s.push_str(itoa::Buffer::new().format(q));
                }
                (None, None) => s.push_str(", unrated"),
            }
            s.push(')');
        };
        s.push_str("route=");
        s.push_str(&r.route);
        s.push_str(" chose ");
        show(&mut s, chosen);
        s.push_str("; ");
        s.push_str(itoa::Buffer::new().format(c.len()));
        s.push_str(" feasible");
        if let Some(i) = (0..c.len()).find(|i| *i != chosen) {
            s.push_str("; runner-up ");
            show(&mut s, i);
        }
        if attempt > 1 {
            s.push_str("; attempt ");
            s.push_str(itoa::Buffer::new().format(attempt));
            s.push_str(" (fallback)");
        }
        s
    }
}

/// The planner's prompt estimate and whether `reasoning_effort` is set: from the client's
/// bytes when the request kept them, else from its map (see [`plan::prompt_facts_raw`]).
/// A chat request's estimated prompt tokens and whether it asks for reasoning.
pub fn prompt_facts(req: &crate::canonical::ChatRequest) -> (u64, bool) {
    if let Some(facts) = req.raw_body().and_then(|raw| plan::prompt_facts_raw(&raw.bytes)) {
        return facts;
    }
    let body = req.body();
    (plan::estimate_prompt_tokens(body), body.get("reasoning_effort").is_some_and(|v| !v.is_null()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::ChatRequest;
    use crate::config::Config;
    use crate::dialect::openai::parse_chat_request;
    use proptest::prelude::*;
    use std::time::Instant;

    /// Three providers, six models: prices, quality, capabilities, origin and hosting vary.
    const BASE: &str = r#"
        [providers.us]
        kind = "openai-compatible"
        base_url = "http://127.0.0.1:9/v1"
        [providers.cn]
        kind = "openai-compatible"
        base_url = "http://127.0.0.1:9/v1"
        [providers.host]
        kind = "openai-compatible"
        base_url = "http://127.0.0.1:9/v1"
        [models."us/premium"]
        input = 5.0
        output = 20.0
        quality = 1450
        origin = "US"
        hosting = "US"
        context = 200000
        capabilities = ["tools", "json_schema", "vision", "reasoning", "streaming"]
        [models."us/mid"]
        input = 1.0
        output = 4.0
        quality = 1380
        origin = "US"
        hosting = "US"
        context = 128000
        capabilities = ["tools", "json_schema", "streaming"]
        [models."cn/cheap"]
        input = 0.1
        output = 0.3
        quality = 1390
        origin = "CN"
        hosting = "CN"
        open_weights = true
        context = 64000
        capabilities = ["tools", "streaming"]
        [models."host/cn-open"]
        input = 0.2
        output = 0.6
        quality = 1385
        origin = "CN"
        hosting = "US"
        open_weights = true
        context = 32000
        capabilities = ["streaming"]
        [models."host/tiny"]
        input = 0.01
        output = 0.02
        quality = 1250
        origin = "US"
        hosting = "US"
        context = 8000
        capabilities = ["tools", "streaming"]
        [models."host/unrated"]
        input = 0.001
        output = 0.002
        hosting = "US"
        origin = "FR"
    "#;

    fn router(extra: &str) -> Router {
        let cfg = Config::from_toml(&format!("{BASE}\n{extra}"), &|_| None).unwrap();
        let providers = Providers::new(cfg.providers.iter().map(|p| Arc::new(Provider::new(p).unwrap())).collect());
        Router::new(&providers, &cfg.catalog, &cfg.routing)
    }

    fn req(extra: &str) -> ChatRequest {
        parse_chat_request(
            &format!(r#"{{"model":"auto","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#).into(),
        )
        .unwrap()
    }

    fn ranked(r: &Router, route: &str, o: &Overrides, rq: &ChatRequest) -> Vec<String> {
        let routed = r.plan(r.route(route).unwrap(), o, rq, Instant::now()).unwrap();
        routed.plan.candidates.iter().map(|c| r.entries[c.entry].key.to_string()).collect()
    }

    fn excluded_for(r: &Router, route: &str, o: &Overrides, rq: &ChatRequest, key: &str) -> Option<plan::Exclusion> {
        let routed = r.plan(r.route(route).unwrap(), o, rq, Instant::now()).unwrap();
        routed.plan.excluded.iter().find(|(i, _)| &*r.entries[*i].key == key).map(|(_, x)| x.clone())
    }

    #[test]
    fn table_of_constraints() {
        let policies = r#"
            [policies.no_cn_made]
            deny_origin = ["CN"]
            [policies.no_cn_hosted]
            deny_hosting = ["cn"]
            [policies.open]
            open_weights_only = true
            [policies.only_host]
            allow_providers = ["host"]
            [policies.not_cn]
            deny_providers = ["cn"]
            [policies.cheap]
            max_price_per_mtok = 1.0
            [routes.any]
            min_quality = "basic"
            [routes.frontier]
            min_quality = "frontier"
            [routes.strong_no_cn_made]
            min_quality = "strong"
            policy = "no_cn_made"
            [routes.strong_no_cn_hosted]
            min_quality = "strong"
            policy = "no_cn_hosted"
            [routes.open]
            min_quality = 1300
            policy = "open"
            [routes.only_host]
            min_quality = "basic"
            policy = "only_host"
            [routes.not_cn]
            min_quality = "strong"
            policy = "not_cn"
            [routes.cheap_strong]
            min_quality = "strong"
            policy = "cheap"
        "#;
        let r = router(policies);
        let none = Overrides::default();
        let plain = req("");
        // (route, request extra, expected ranking)
        let cases: &[(&str, &str, &[&str])] = &[
            ("auto", "", &["cn/cheap", "host/cn-open", "us/mid", "us/premium"]),
            // "basic" is no floor at all: unrated models qualify.
            ("any", "", &["host/unrated", "host/tiny", "cn/cheap", "host/cn-open", "us/mid", "us/premium"]),
            ("frontier", "", &["us/premium"]),
            ("strong_no_cn_made", "", &["us/mid", "us/premium"]),
            // A Chinese open-weight model on a US host passes deny_hosting, not deny_origin.
            ("strong_no_cn_hosted", "", &["host/cn-open", "us/mid", "us/premium"]),
            ("open", "", &["cn/cheap", "host/cn-open"]),
            ("only_host", "", &["host/unrated", "host/tiny", "host/cn-open"]),
            ("not_cn", "", &["host/cn-open", "us/mid", "us/premium"]),
            ("cheap_strong", "", &["cn/cheap", "host/cn-open"]),
            (
                "auto",
                r#","tools":[{"type":"function","function":{"name":"f"}}]"#,
                &["cn/cheap", "us/mid", "us/premium"],
            ),
            ("auto", r#","response_format":{"type":"json_object"}"#, &["us/mid", "us/premium"]),
            ("auto", r#","reasoning_effort":"low""#, &["us/premium"]),
            ("auto", r#","max_tokens":40000"#, &["cn/cheap", "us/mid", "us/premium"]),
            ("auto", r#","max_tokens":100000"#, &["us/mid", "us/premium"]),
            ("auto", r#","max_tokens":150000"#, &["us/premium"]),
            // Combination: open weights, tools, not CN-hosted -> nothing.
            ("open", r#","tools":[{"type":"function","function":{"name":"f"}}]"#, &["cn/cheap"]),
        ];
        for (route, extra, want) in cases {
            assert_eq!(ranked(&r, route, &none, &req(extra)), *want, "route {route} {extra}");
        }
        assert!(matches!(
            excluded_for(&r, "strong_no_cn_hosted", &none, &plain, "cn/cheap"),
            Some(plan::Exclusion::HostingDenied { .. })
        ));
        assert!(matches!(
            excluded_for(&r, "auto", &none, &plain, "host/unrated"),
            Some(plan::Exclusion::BelowQuality { quality: None, .. })
        ));
        assert!(matches!(
            excluded_for(
                &r,
                "auto",
                &none,
                &req(r#","tools":[{"type":"function","function":{"name":"f"}}]"#),
                "host/cn-open"
            ),
            Some(plan::Exclusion::MissingCapability { capability: "tools" })
        ));
    }

    #[test]
    fn header_overrides_and_cost_ceiling() {
        let r = router("[policies.no_cn]\ndeny_hosting = [\"CN\"]\n");
        let o = Overrides { min_quality: Some(1420), ..Overrides::default() };
        assert_eq!(ranked(&r, "auto", &o, &req("")), ["us/premium"]);
        let o = Overrides { policy: Some("no_cn".into()), ..Overrides::default() };
        assert_eq!(ranked(&r, "auto", &o, &req(""))[0], "host/cn-open");
        // Worst case with max_tokens 1000: premium 1000 × $20/M = $0.02 > $0.01 ceiling.
        let o = Overrides { max_cost: Some(crate::meter::Cost(10_000_000)), ..Overrides::default() };
        let got = ranked(&r, "auto", &o, &req(r#","max_tokens":1000"#));
        assert!(!got.contains(&"us/premium".to_string()) && got.contains(&"us/mid".to_string()), "{got:?}");
        assert!(matches!(
            excluded_for(&r, "auto", &o, &req(r#","max_tokens":1000"#), "us/premium"),
            Some(plan::Exclusion::OverCostCeiling { .. })
        ));
    }

    #[test]
    fn no_feasible_model_says_which_constraints_removed_what() {
        let r = router("");
        let rq = req(r#","reasoning_effort":"high","response_format":{"type":"json_object"}"#);
        let o = Overrides { max_cost: Some(crate::meter::Cost(1)), ..Overrides::default() };
        let routed = r.plan(r.route("auto").unwrap(), &o, &rq, Instant::now()).unwrap();
        assert!(routed.plan.candidates.is_empty());
        let e = r.no_feasible(&routed);
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        for needle in
            ["route 'auto'", "of 6 models", "json_schema: 4", "max_cost: 1 (us/premium)", "reasoning: 1 (us/mid)"]
        {
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
    }

    #[test]
    fn open_circuits_rank_after_healthy_ties_and_observed_output_moves_ranking() {
        let r = router("");
        // Long outputs observed on cn/cheap make host/cn-open cheaper in expectation.
        let cheap = r.entries.iter().find(|e| &*e.key == "cn/cheap").unwrap();
        for _ in 0..20 {
            cheap.observe_output(20_000);
        }
        assert_eq!(ranked(&r, "auto", &Overrides::default(), &req(""))[0], "host/cn-open");
    }

    fn evidence(route: &str, model: &str, score: f64, n: u64) -> crate::ledger::EvidenceRow {
        crate::ledger::EvidenceRow {
            route: route.into(),
            model: model.into(),
            source: "test".into(),
            score,
            n,
            updated_ms: 0,
        }
    }

    fn reason_of(r: &Router, route: &str) -> String {
        let routed = r.plan(r.route(route).unwrap(), &Overrides::default(), &req(""), Instant::now()).unwrap();
        r.reason(&routed, 0, 1)
    }

    #[test]
    fn a_route_with_evidence_ranks_on_its_lower_bound_and_falls_back_to_the_catalog() {
        let r = router("[routes.tax]\nmin_quality = \"strong\"\nmin_score = 0.9\n");
        // Without evidence: the catalog floor (strong = 1370) as on any route.
        assert_eq!(
            ranked(&r, "tax", &Overrides::default(), &req("")),
            ["cn/cheap", "host/cn-open", "us/mid", "us/premium"]
        );
        assert!(reason_of(&r, "tax").contains("chose cn/cheap (expected $"), "{}", reason_of(&r, "tax"));
        assert!(reason_of(&r, "tax").contains(", catalog 1390)"), "{}", reason_of(&r, "tax"));
        r.evidence.set_rows(vec![
            // Unrated in the catalog, proven on the task: now feasible, and the cheapest.
            evidence("tax", "host/unrated", 0.97, 500),
            // Rated strong, but poor on this task: out.
            evidence("tax", "cn/cheap", 0.60, 300),
            // Ten lucky answers: lower bound 0.722 < 0.9, out.
            evidence("tax", "host/cn-open", 1.0, 10),
            // Another route's evidence changes nothing here.
            evidence("other", "host/tiny", 1.0, 1000),
        ]);
        assert_eq!(ranked(&r, "tax", &Overrides::default(), &req("")), ["host/unrated", "us/mid", "us/premium"]);
        let reason = reason_of(&r, "tax");
        assert!(reason.contains("chose host/unrated (expected $") && reason.contains(", evidence 0.95"), "{reason}");
        assert!(
            reason.contains("n=500)") && reason.contains("runner-up us/mid") && reason.contains("catalog 1380)"),
            "{reason}"
        );
        match excluded_for(&r, "tax", &Overrides::default(), &req(""), "cn/cheap") {
            Some(plan::Exclusion::BelowScore { n: 300, floor_ppm: 900_000, lower_ppm }) => assert!(lower_ppm < 600_000),
            other => panic!("{other:?}"),
        }
        let lucky = excluded_for(&r, "tax", &Overrides::default(), &req(""), "host/cn-open").unwrap();
        assert_eq!(lucky.describe(), "evidence lower bound 0.722 (n=10) below min_score 0.900");
        // Without min_score, evidence does not relax the catalog floor.
        let r = router("[routes.tax]\nmin_quality = \"strong\"\n");
        r.evidence.set_rows(vec![evidence("tax", "host/unrated", 0.97, 500)]);
        assert_eq!(
            ranked(&r, "tax", &Overrides::default(), &req("")),
            ["cn/cheap", "host/cn-open", "us/mid", "us/premium"]
        );
    }

    #[test]
    fn relative_floors_compare_with_the_reference_on_the_same_task() {
        let r = router("[routes.tax]\nmin_quality = \"97% of us/premium\"\n");
        // No evidence at all: only models at least as good as the reference in the catalog.
        assert_eq!(ranked(&r, "tax", &Overrides::default(), &req("")), ["us/premium"]);
        let x = excluded_for(&r, "tax", &Overrides::default(), &req(""), "us/mid").unwrap();
        assert_eq!(
            x.describe(),
            "no evidence to compare with us/premium on this route; catalog quality 1380 is below its 1450"
        );
        r.evidence.set_rows(vec![
            evidence("tax", "us/premium", 0.90, 1000),
            // Needs a lower bound ≥ 0.97 × 0.90 = 0.873.
            evidence("tax", "cn/cheap", 0.90, 1000),     // lower 0.880: in
            evidence("tax", "host/cn-open", 0.88, 1000), // lower 0.859: out
            evidence("tax", "host/tiny", 0.95, 20),      // lower 0.764: out (too few samples)
        ]);
        assert_eq!(ranked(&r, "tax", &Overrides::default(), &req("")), ["cn/cheap", "us/premium"]);
        match excluded_for(&r, "tax", &Overrides::default(), &req(""), "host/cn-open") {
            Some(plan::Exclusion::BelowReference { needed_ppm: 873_000, n: 1000, ref reference, .. }) => {
                assert_eq!(&**reference, "us/premium")
            }
            other => panic!("{other:?}"),
        }
        // A model without evidence still needs the reference's catalog score.
        assert!(matches!(
            excluded_for(&r, "tax", &Overrides::default(), &req(""), "us/mid"),
            Some(plan::Exclusion::BelowReferenceCatalog { quality: Some(1380), reference_quality: Some(1450), .. })
        ));
    }

    #[test]
    fn relative_floors_are_checked_at_start_up() {
        for (floor, want) in [
            ("97% of nope/model", "routes.tax.min_quality: the reference \"nope/model\" is not in the catalog"),
            ("0% of us/premium", "the share must be a percentage in (0, 100]"),
            ("101% of us/premium", "the share must be a percentage"),
            ("97% of premium", "the reference must be a model as provider/model"),
            ("97 of us/premium", "is not a quality"),
        ] {
            let e = Config::from_toml(&format!("{BASE}\n[routes.tax]\nmin_quality = \"{floor}\"\n"), &|_| None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{floor}: {e}");
        }
        let e =
            Config::from_toml(&format!("{BASE}\n[routes.tax]\nmin_score = 1.5\n"), &|_| None).unwrap_err().to_string();
        assert!(e.contains("routes.tax.min_score: must be a share in [0, 1]"), "{e}");
    }

    /// (input cents/M, output cents/M, quality, tools, cn-hosted, context k, open)
    type ArbModel = (u32, u32, Option<u32>, bool, bool, u64, bool);

    fn arb_catalog() -> impl Strategy<Value = Vec<ArbModel>> {
        proptest::collection::vec(
            (
                1u32..2000,
                1u32..6000,
                proptest::option::of(1200u32..1500),
                any::<bool>(),
                any::<bool>(),
                4u64..256,
                any::<bool>(),
            ),
            1..12,
        )
    }

    proptest! {
        #[test]
        fn chosen_is_feasible_and_nothing_feasible_is_cheaper(
            models in arb_catalog(),
            floor in 1200u32..1500,
            tools in any::<bool>(),
            deny_cn in any::<bool>(),
            max_tokens in proptest::option::of(1u64..200_000),
        ) {
            let mut text = String::from("[providers.p]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[policies.pol]\n");
            if deny_cn {
                text.push_str("deny_hosting = [\"CN\"]\n");
            }
            text.push_str(&format!("[routes.r]\nmin_quality = {floor}\npolicy = \"pol\"\n"));
            for (i, (inp, out, q, t, cn, ctx, open)) in models.iter().enumerate() {
                text.push_str(&format!(
                    "[models.\"p/m{i}\"]\ninput = {}\noutput = {}\n{}hosting = \"{}\"\ncontext = {}\nopen_weights = {open}\ncapabilities = [{}\"streaming\"]\n",
                    *inp as f64 / 100.0, *out as f64 / 100.0,
                    q.map(|q| format!("quality = {q}\n")).unwrap_or_default(),
                    if *cn { "CN" } else { "US" }, ctx * 1000, if *t { "\"tools\", " } else { "" }
                ));
            }
            let r = router_from(&text);
            let extra = format!(
                "{}{}",
                if tools { r#","tools":[{"type":"function","function":{"name":"f"}}]"# } else { "" },
                max_tokens.map(|m| format!(r#","max_tokens":{m}"#)).unwrap_or_default()
            );
            let rq = req(&extra);
            let routed = r.plan(r.route("r").unwrap(), &Overrides::default(), &rq, Instant::now()).unwrap();
            let prompt = routed.prompt_tokens;
            // Independent statement of feasibility.
            let feasible = |i: usize| {
                let (_, _, q, t, cn, ctx, _) = models[i];
                q.is_some_and(|q| q >= floor) && (!tools || t) && !(deny_cn && cn)
                    && prompt + max_tokens.unwrap_or(0) <= ctx * 1000
            };
            let idx = |key: &str| key.trim_start_matches("p/m").parse::<usize>().unwrap();
            for c in &routed.plan.candidates {
                prop_assert!(feasible(idx(&r.entries[c.entry].key)));
            }
            for (i, _) in &routed.plan.excluded {
                prop_assert!(!feasible(idx(&r.entries[*i].key)));
            }
            if let Some(first) = routed.plan.candidates.first() {
                for c in &routed.plan.candidates {
                    prop_assert!(c.expected_pico >= first.expected_pico);
                }
            }
            prop_assert_eq!(routed.plan.candidates.len() + routed.plan.excluded.len(), models.len());
        }
    }

    fn router_from(text: &str) -> Router {
        let cfg = Config::from_toml(text, &|_| None).unwrap();
        let providers = Providers::new(cfg.providers.iter().map(|p| Arc::new(Provider::new(p).unwrap())).collect());
        Router::new(&providers, &cfg.catalog, &cfg.routing)
    }
}
