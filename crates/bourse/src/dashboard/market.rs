//! The market as the catalog describes it: every chat model's blended price against its
//! quality, who made it, whether its weights are open, which models a data policy removes,
//! the Pareto frontier with and without that policy, and the cheapest model at each quality
//! floor with and without it (what the policy costs).
//!
//! Pure: the catalog, the reference's id and a policy in, plain data out. Prices are compared
//! as integers (3 × input + output, pico-USD per token: the blended price times four), so the
//! frontier and the cheapest-model choices are exact; the ratio a reader sees is a float for
//! display only. The policy is checked by the planner's own rule
//! (`route::plan::model_policy_exclusion`), with each catalog entry's provider standing for
//! the endpoint serving it (its preset's hosting where the catalog names none).

use crate::catalog::{Catalog, Kind, Model};
use crate::config::routing::TIERS;
use crate::config::Policy;
use crate::route::plan::{model_policy_exclusion, Exclusion};

/// Where a model's maker is, for colouring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Region {
    Us,
    China,
    Europe,
    Other,
    Unknown,
}

impl Region {
    /// From an origin country code (or `EU`).
    pub fn of(origin: Option<&str>) -> Region {
        const EUROPE: [&str; 14] = ["EU", "FR", "DE", "GB", "UK", "NL", "IT", "ES", "SE", "CH", "FI", "PL", "AT", "BE"];
        match origin.map(str::to_ascii_uppercase).as_deref() {
            Some("US") => Region::Us,
            Some("CN") => Region::China,
            Some(o) if EUROPE.contains(&o) => Region::Europe,
            Some(_) => Region::Other,
            None => Region::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Region::Us => "US",
            Region::China => "China",
            Region::Europe => "Europe",
            Region::Other => "other",
            Region::Unknown => "unknown",
        }
    }

    /// The CSS class the chart colours it with.
    pub fn class(self) -> &'static str {
        match self {
            Region::Us => "r-us",
            Region::China => "r-cn",
            Region::Europe => "r-eu",
            Region::Other => "r-other",
            Region::Unknown => "r-unknown",
        }
    }
}

/// One rated, priced chat model of the catalog.
#[derive(Clone, Debug)]
pub struct Placed<'a> {
    pub model: &'a Model,
    /// 3 × input + output, pico-USD per token (four times the blended price).
    pub blended4: u128,
    pub quality: u32,
    pub region: Region,
    /// Why the policy removes it (None: it stays).
    pub removed: Option<Exclusion>,
    pub on_frontier: bool,
    /// On the frontier of what the policy leaves.
    pub on_policy_frontier: bool,
    pub reference: bool,
}

impl Placed<'_> {
    /// Blended USD per 1M tokens, for placing on the chart.
    pub fn price_usd(&self) -> f64 {
        self.blended4 as f64 / 4e6
    }

    /// The same, exactly, as decimal text (`0.0875`): `blended4` pico-USD per token is
    /// `blended4 × 25` units of 1e-8 USD per 1M tokens.
    pub fn price_text(&self) -> String {
        let units = self.blended4 * 25;
        let (int, frac) = (units / 100_000_000, units % 100_000_000);
        let frac = format!("{frac:08}");
        match frac.trim_end_matches('0') {
            "" => int.to_string(),
            f => format!("{int}.{f}"),
        }
    }
}

/// The cheapest model at one quality floor, with and without the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Floor {
    pub tier: &'static str,
    pub quality: u32,
    /// Indices into [`Market::placed`].
    pub without: Option<usize>,
    pub with: Option<usize>,
}

/// The market under one policy.
#[derive(Clone, Debug)]
pub struct Market<'a> {
    pub policy: Policy,
    /// Rated, priced chat models, cheapest first (ties: higher quality, then id).
    pub placed: Vec<Placed<'a>>,
    /// Chat models that cannot be placed, and why (unrated, or free).
    pub unplaced: Vec<(&'a Model, &'static str)>,
    pub floors: Vec<Floor>,
}

impl Market<'_> {
    /// The frontier's members (cheapest first), over everything or over what the policy
    /// leaves.
    pub fn frontier(&self, under_policy: bool) -> Vec<usize> {
        (0..self.placed.len())
            .filter(|i| if under_policy { self.placed[*i].on_policy_frontier } else { self.placed[*i].on_frontier })
            .collect()
    }

    /// How many times more the cheapest model at `floor` costs under the policy, in tenths
    /// (31 = 3.1×); None when either side has no model.
    pub fn ratio_tenths(&self, floor: &Floor) -> Option<u128> {
        let (a, b) = (self.placed[floor.without?].blended4, self.placed[floor.with?].blended4);
        (a > 0).then(|| (b * 10 + a / 2) / a)
    }
}

/// The built-in policy the market offers when none is chosen: no request processed in China.
pub fn no_cn_hosting() -> Policy {
    Policy { name: "no CN hosting".into(), deny_hosting: vec!["CN".into()], ..Policy::default() }
}

/// The market of `catalog`'s chat models under `policy`; `reference` is the savings
/// reference's `provider/model`.
pub fn market<'a>(catalog: &'a Catalog, reference: &str, policy: &Policy) -> Market<'a> {
    let mut placed = Vec::new();
    let mut unplaced = Vec::new();
    for m in catalog.models().iter().filter(|m| m.kind == Kind::Chat) {
        let blended4 = 3 * u128::from(m.rates.input.0) + u128::from(m.rates.output.0);
        let Some(quality) = m.quality else {
            unplaced.push((m, "unrated"));
            continue;
        };
        if blended4 == 0 {
            unplaced.push((m, "free (no price to place)"));
            continue;
        }
        let hosting = crate::preset::find(&m.provider).and_then(|p| p.hosting);
        placed.push(Placed {
            model: m,
            blended4,
            quality,
            region: Region::of(m.origin.as_deref()),
            removed: model_policy_exclusion(&m.provider, hosting, m, policy),
            on_frontier: false,
            on_policy_frontier: false,
            reference: m.id == reference,
        });
    }
    placed.sort_by(|a, b| {
        a.blended4.cmp(&b.blended4).then_with(|| b.quality.cmp(&a.quality)).then_with(|| a.model.id.cmp(&b.model.id))
    });
    // Cheapest first: a model is on the frontier when nothing cheaper (or as cheap and
    // listed before it) is at least as good.
    let (mut best, mut best_kept) = (None::<u32>, None::<u32>);
    for p in &mut placed {
        if best.is_none_or(|b| p.quality > b) {
            p.on_frontier = true;
            best = Some(p.quality);
        }
        if p.removed.is_none() && best_kept.is_none_or(|b| p.quality > b) {
            p.on_policy_frontier = true;
            best_kept = Some(p.quality);
        }
    }
    let floors = TIERS
        .iter()
        .map(|(tier, quality)| Floor {
            tier,
            quality: *quality,
            without: placed.iter().position(|p| p.quality >= *quality),
            with: placed.iter().position(|p| p.quality >= *quality && p.removed.is_none()),
        })
        .collect();
    Market { policy: policy.clone(), placed, unplaced, floors }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::RawModel;
    use std::collections::BTreeMap;

    fn catalog() -> Catalog {
        let mut o = BTreeMap::new();
        let mut add =
            |id: &str, input: f64, output: f64, quality: Option<f64>, origin: &str, hosting: &str, open: bool| {
                o.insert(
                    id.to_string(),
                    RawModel {
                        input: Some(input),
                        output: Some(output),
                        quality,
                        origin: Some(origin.into()),
                        hosting: Some(hosting.into()),
                        open_weights: Some(open),
                        ..RawModel::default()
                    },
                );
            };
        add("openai/premium", 5.0, 20.0, Some(1450.0), "US", "US", false);
        add("openai/mid", 1.0, 4.0, Some(1380.0), "US", "US", false);
        add("deepseek/cheap", 0.1, 0.3, Some(1390.0), "CN", "CN", true);
        add("deepinfra/cn-open", 0.2, 0.6, Some(1385.0), "CN", "US", true);
        add("mistral/eu", 0.4, 2.0, Some(1330.0), "FR", "EU", true);
        add("openai/worse-and-dearer", 2.0, 8.0, Some(1360.0), "US", "US", false);
        add("openai/unrated", 1.0, 1.0, None, "US", "US", false);
        let text = "[meta]\nname = \"t\"\ndate = \"2026-01-01\"\n";
        Catalog::load(text, &o).unwrap().0
    }

    #[test]
    fn frontier_policy_and_floors() {
        let c = catalog();
        let m = market(&c, "openai/premium", &no_cn_hosting());
        let ids = |v: Vec<usize>| v.into_iter().map(|i| m.placed[i].model.id.as_str()).collect::<Vec<_>>();
        assert_eq!(m.placed.len(), 6);
        assert_eq!(m.unplaced.len(), 1);
        assert_eq!(ids(m.frontier(false)), ["deepseek/cheap", "openai/premium"]);
        assert_eq!(ids(m.frontier(true)), ["deepinfra/cn-open", "openai/premium"]);
        let removed: Vec<&str> = m.placed.iter().filter(|p| p.removed.is_some()).map(|p| p.model.id.as_str()).collect();
        assert_eq!(removed, ["deepseek/cheap"], "CN-made but US-hosted stays");
        assert!(m.placed.iter().any(|p| p.reference && p.model.id == "openai/premium"));
        let strong = m.floors.iter().find(|f| f.tier == "strong").unwrap();
        assert_eq!(m.placed[strong.without.unwrap()].model.id, "deepseek/cheap");
        assert_eq!(m.placed[strong.with.unwrap()].model.id, "deepinfra/cn-open");
        // (3 × 0.2 + 0.6) / (3 × 0.1 + 0.3) = 2.0
        assert_eq!(m.ratio_tenths(strong), Some(20));
        let frontier = m.floors.iter().find(|f| f.tier == "frontier").unwrap();
        assert_eq!(m.placed[frontier.with.unwrap()].model.id, "openai/premium");
        assert_eq!(m.ratio_tenths(frontier), Some(10));
        assert_eq!(m.placed[0].price_text(), "0.15");
        assert_eq!(Region::of(Some("fr")), Region::Europe);
        assert_eq!(Region::of(None), Region::Unknown);
    }

    #[test]
    fn the_shipped_catalog_places_its_rated_chat_models() {
        let c = Catalog::shipped().unwrap();
        let m = market(&c, crate::config::DEFAULT_REFERENCE, &no_cn_hosting());
        let rated = c.models().iter().filter(|m| m.kind == Kind::Chat && m.quality.is_some()).count();
        assert!(rated > 20);
        assert_eq!(m.placed.len() + m.unplaced.iter().filter(|(_, why)| why.starts_with("free")).count(), rated);
        assert!(m.placed.iter().any(|p| p.reference));
        assert!(m.placed.iter().any(|p| p.removed.is_some()) && m.placed.iter().any(|p| p.removed.is_none()));
        let f = m.frontier(false);
        assert!(f.windows(2).all(|w| m.placed[w[0]].quality < m.placed[w[1]].quality));
    }
}
