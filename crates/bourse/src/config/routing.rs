//! The router's settings, as the config file sets them (`[routes.X]`, `[policies.X]`,
//! `[router]`): validated by [`crate::config`], read by [`crate::route`]. They live here,
//! below both, so the config does not reach into the planner and the planner is built from
//! its own settings rather than the whole config.

use crate::meter::Cost;
use std::collections::BTreeMap;
use std::time::Duration;

/// What the router is built from.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Named routes (`auto` always exists).
    pub routes: BTreeMap<String, RouteConfig>,
    /// Named data policies (`default` always exists).
    pub policies: BTreeMap<String, Policy>,
    pub router: RouterConfig,
}

/// Named quality tiers on the catalog's (LMArena-like) scale.
pub const TIERS: &[(&str, u32)] = &[("frontier", 1420), ("strong", 1370), ("adequate", 1300), ("basic", 0)];

/// A tier name or a number.
pub fn parse_quality(s: &str) -> Result<u32, String> {
    if let Some((_, q)) = TIERS.iter().find(|(n, _)| n.eq_ignore_ascii_case(s.trim())) {
        return Ok(*q);
    }
    s.trim()
        .parse::<u32>()
        .map_err(|_| format!("\"{s}\" is not a quality: use frontier, strong, adequate, basic, or a number like 1375"))
}

/// A quality floor relative to a model on the same task: `min_quality = "97% of openai/gpt-4o"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relative {
    /// The share, in parts per million (97% = 970,000).
    pub ppm: u32,
    /// `provider/model` of the reference (a catalog model; it need not be routable).
    pub reference: String,
}

/// Parses `P% of provider/model` (P in (0, 100], decimals allowed); None when `s` is not of
/// that form at all, an error when it is but does not hold up.
pub fn parse_relative(s: &str) -> Option<Result<Relative, String>> {
    let (pct, reference) = s.trim().split_once(" of ")?;
    let pct = pct.trim().strip_suffix('%')?;
    let reference = reference.trim();
    let v: f64 = match pct.trim().parse() {
        Ok(v) if v > 0.0 && v <= 100.0 => v,
        _ => return Some(Err(format!("\"{s}\": the share must be a percentage in (0, 100], like 97%"))),
    };
    if !reference.contains('/') || reference.starts_with('/') || reference.ends_with('/') {
        return Some(Err(format!("\"{s}\": the reference must be a model as provider/model")));
    }
    Some(Ok(Relative { ppm: (v * 10_000.0).round() as u32, reference: reference.to_string() }))
}

/// A named route: what "cheapest good-enough model" means for it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    /// The floor on the catalog's scale, for models without evidence on this route (0 when
    /// the floor is `relative`).
    pub min_quality: u32,
    /// `min_quality = "P% of provider/model"`: a model with evidence on this route needs a
    /// lower bound of at least P% of the reference's observed score; one without, a catalog
    /// score at least the reference's (a catalog score says nothing about a share of a task).
    pub relative: Option<Relative>,
    /// `min_score`: the floor on this route's evidence (a Wilson lower bound, ppm) for models
    /// that have some; they are then not held to the catalog floor.
    pub min_score_ppm: Option<u32>,
    /// `cascade`: the checks a non-streaming answer must pass, in order; when one fails the
    /// request escalates to a candidate of higher quality. Empty: no cascade. Streamed
    /// requests are served unchecked unless `cascade_streams`.
    pub cascade: Vec<crate::check::CheckKind>,
    /// `cascade_streaming = "buffer"`: streamed requests are cascaded too; their attempts go
    /// upstream without streaming and the answer that stands is replayed as a stream (the
    /// first byte waits for the checks).
    pub cascade_streams: bool,
    /// `agree`: how the `agree` check asks its scouts and compares answers (also what a
    /// shadow's answer is compared by). Defaults when not written.
    pub agree: AgreeConfig,
    /// `judge`: set when the cascade lists `judge`.
    pub judge: Option<JudgeConfig>,
    /// `shadow`: a reference model a sampled share of requests also goes to.
    pub shadow: Option<ShadowConfig>,
    pub policy: String,
    pub expected_output: u64,
    pub max_cost: Option<Cost>,
    /// `cache`: whether this route's requests use the response cache (None: `[cache]`'s
    /// default; a key's own `cache` may still turn it off).
    pub cache: Option<bool>,
    /// `cache_sampled`: answers to sampled requests (`temperature > 0`, or none given, which
    /// is the dialects' default of 1) are cached too; without it only `temperature = 0`
    /// answers are.
    pub cache_sampled: bool,
}

/// The `agree` check's settings.
#[derive(Debug, Clone)]
pub struct AgreeConfig {
    /// How many of the cheapest feasible candidates (scouts) are asked in parallel.
    pub models: usize,
    /// The `match` as written (`exact`, `regex:…`, `pointer:…`).
    pub matches: String,
    /// `matches`, compiled.
    pub spec: crate::check::AgreeSpec,
    pub quorum: crate::check::Quorum,
}

impl Default for AgreeConfig {
    fn default() -> Self {
        AgreeConfig {
            models: 2,
            matches: "exact".into(),
            spec: crate::check::AgreeSpec::Exact,
            quorum: crate::check::Quorum::All,
        }
    }
}

/// Compared by what was written: a compiled pattern has no equality of its own.
impl PartialEq for AgreeConfig {
    fn eq(&self, other: &Self) -> bool {
        (self.models, &self.matches, self.quorum) == (other.models, &other.matches, other.quorum)
    }
}

/// The `judge` check's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeConfig {
    /// `provider/model` of the judge (a configured provider, a priced catalog model).
    pub model: String,
    pub rubric: String,
    /// The share of checked answers judged, in parts per million.
    pub share_ppm: u32,
}

/// Shadow sampling's settings: the check is always `agree`, under the route's `agree.match`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// `provider/model` of the reference the sampled requests also go to.
    pub model: String,
    /// The share of non-streaming requests shadowed, in parts per million.
    pub share_ppm: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct RouterConfig {
    pub max_attempts: u32,
    pub health: HealthConfig,
}

/// Data-policy constraints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub name: String,
    /// Model makers' countries to avoid.
    pub deny_origin: Vec<String>,
    /// Jurisdictions where the request may not be processed.
    pub deny_hosting: Vec<String>,
    pub open_weights_only: bool,
    /// Empty = every configured provider.
    pub allow_providers: Vec<String>,
    pub deny_providers: Vec<String>,
    /// Cap on the blended (3 input : 1 output) price, USD per 1M tokens.
    pub max_price_per_mtok: Option<f64>,
}

impl Policy {
    /// Both policies at once: what either denies is denied, only what both allow is
    /// allowed, the lower price cap holds. A tenant's and a key's policies are combined
    /// this way, so a key can only narrow its tenant's.
    pub fn narrowed(&self, other: &Policy) -> Policy {
        let union = |a: &Vec<String>, b: &Vec<String>| {
            let mut v = a.clone();
            v.extend(b.iter().filter(|x| !a.contains(x)).cloned());
            v
        };
        let allow_providers = match (self.allow_providers.is_empty(), other.allow_providers.is_empty()) {
            (true, _) => other.allow_providers.clone(),
            (_, true) => self.allow_providers.clone(),
            // Both restrict: only the providers both allow (none in common: nothing routable).
            _ => {
                let both: Vec<String> =
                    self.allow_providers.iter().filter(|p| other.allow_providers.contains(p)).cloned().collect();
                if both.is_empty() {
                    vec![String::new()]
                } else {
                    both
                }
            }
        };
        Policy {
            name: format!("{}+{}", self.name, other.name),
            deny_origin: union(&self.deny_origin, &other.deny_origin),
            deny_hosting: union(&self.deny_hosting, &other.deny_hosting),
            open_weights_only: self.open_weights_only || other.open_weights_only,
            allow_providers,
            deny_providers: union(&self.deny_providers, &other.deny_providers),
            max_price_per_mtok: match (self.max_price_per_mtok, other.max_price_per_mtok) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// Tuning for the circuit breakers ([`crate::route::health::Health`]).
#[derive(Clone, Copy, Debug)]
pub struct HealthConfig {
    /// Consecutive failures that open the circuit. Zero is treated as one.
    pub failure_threshold: u32,
    /// How long an open circuit refuses attempts before allowing a probe.
    pub cooldown: Duration,
    /// Weight of each new sample in the TTFB average, in `[0, 1]`.
    pub ewma_alpha: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { failure_threshold: 3, cooldown: Duration::from_secs(30), ewma_alpha: 0.2 }
    }
}
