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

/// A named route: what "cheapest good-enough model" means for it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub min_quality: u32,
    pub policy: String,
    pub expected_output: u64,
    pub max_cost: Option<Cost>,
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
