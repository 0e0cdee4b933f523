//! The energy figures (`catalog/energy.toml`, compiled in) and each model's energy profile:
//! its size class and the grid its hosting region draws from, turned at load into integer
//! rates ([`EnergyRates`]: nano-watt-hours per token, PUE included, and gCO2e per kWh), so an
//! attempt's estimate is two multiplications and two divisions ([`crate::meter::energy`]).
//!
//! A model names its class (`energy_class`) or its active parameters in billions
//! (`active_params`, which picks the first class whose `max_active` it fits), with
//! `energy_source` saying where the size comes from or why the class was chosen. The rule
//! follows quality's ([`super::Rule`]): in the shipped catalog an entry without a class, or a
//! class without a source, or a hosting region with no grid figure, is a load error; a user
//! catalog file's or a `[models."p/m"]` table's entry without one gets the documented default
//! class (`meta.default_class`) with a warning that says so, and an unknown or absent hosting
//! region the world-average grid.

use super::{Findings, RawModel, Rule};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The shipped energy figures, compiled in.
pub const SHIPPED: &str = include_str!("../../../../catalog/energy.toml");

/// What one token costs in energy and a kilowatt-hour emits, as integers: rates for the
/// hot path, fixed at load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EnergyRates {
    /// Nano-watt-hours per input (prefill) token, PUE included.
    pub input_nwh: u64,
    /// Nano-watt-hours per output (decode) token, PUE included.
    pub output_nwh: u64,
    /// Grams CO2e per kWh of the hosting region's grid.
    pub grid_g_per_kwh: u64,
}

/// A model's energy profile: which class and grid its estimate uses, and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModelEnergy {
    /// The size class (`tiny` … `frontier`).
    pub class: String,
    /// Active parameters in billions, when the entry gives them.
    pub active_params: Option<f64>,
    /// Where the size comes from, or why the class was chosen. None when defaulted.
    pub source: Option<String>,
    /// The entry named no class: the default class applies.
    pub defaulted: bool,
    /// The grid region the CO2e is computed with (a `hosting` value, or `WORLD`).
    pub grid: String,
    pub rates: EnergyRates,
}

// ---- the figures file ----------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    meta: RawMeta,
    #[serde(rename = "class")]
    classes: Vec<RawClass>,
    #[serde(default, rename = "source")]
    sources: Vec<RawSource>,
    grid: BTreeMap<String, RawGrid>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    date: String,
    pue: f64,
    pue_source: String,
    default_class: String,
    default_grid: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClass {
    name: String,
    max_active: Option<f64>,
    representative_active: f64,
    input_wh_per_mtok: f64,
    output_wh_per_mtok: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    what: String,
    url: String,
    date: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrid {
    g_per_kwh: u64,
    year: u32,
    source: String,
}

/// One size class, its rates with the PUE applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Class {
    pub name: String,
    /// Upper bound of active parameters (billions), None for the largest class.
    pub max_active: Option<f64>,
    pub input_nwh: u64,
    pub output_nwh: u64,
}

/// One grid region's intensity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    pub g_per_kwh: u64,
    pub year: u32,
    pub source: String,
}

/// The energy figures, validated.
#[derive(Clone, Debug)]
pub struct EnergyTable {
    pub date: String,
    /// PUE in thousandths (1.2 is 1200).
    pub pue_permille: u64,
    pub pue_source: String,
    /// Ordered by `max_active`, the unbounded class last.
    pub classes: Vec<Class>,
    pub grids: BTreeMap<String, Grid>,
    pub default_class: usize,
    pub default_grid: String,
}

/// Wh per 1M tokens (µWh per token) to nano-watt-hours per token, times the PUE in
/// thousandths, rounded half up: 55 Wh/M at PUE 1.2 is 66,000 nWh per token.
fn nwh(wh_per_mtok: f64, pue_permille: u64) -> u64 {
    let raw = (wh_per_mtok * 1000.0).round() as u64;
    (raw * pue_permille + 500) / 1000
}

impl EnergyTable {
    /// Parse and check a figures file: every figure positive and finite (no silent zero),
    /// prefill no dearer than decode, classes ordered with exactly the last unbounded, every
    /// grid and the PUE sourced, the defaults present.
    pub fn parse(text: &str) -> Result<EnergyTable, String> {
        let raw: RawTable = toml::from_str(text).map_err(|e| format!("energy figures: {}", e.message()))?;
        let mut errors = Vec::new();
        let m = &raw.meta;
        if !(m.pue.is_finite() && (1.0..=3.0).contains(&m.pue)) {
            errors.push(format!("meta.pue: {} is not a PUE (1.0 to 3.0)", m.pue));
        }
        if m.pue_source.trim().is_empty() {
            errors.push("meta.pue_source: empty".to_string());
        }
        let pue_permille = (m.pue * 1000.0).round() as u64;
        let mut classes = Vec::new();
        let mut last_max = 0.0;
        for (i, c) in raw.classes.iter().enumerate() {
            let at = format!("class[{i}] ({})", c.name);
            for (k, v) in [
                ("input_wh_per_mtok", c.input_wh_per_mtok),
                ("output_wh_per_mtok", c.output_wh_per_mtok),
                ("representative_active", c.representative_active),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    errors.push(format!("{at}.{k}: {v} must be a positive figure"));
                }
            }
            if c.input_wh_per_mtok > c.output_wh_per_mtok {
                errors.push(format!("{at}: prefill (input) dearer than decode (output)"));
            }
            let unbounded_here = c.max_active.is_none();
            let is_last = i + 1 == raw.classes.len();
            if unbounded_here != is_last {
                errors.push(format!("{at}: exactly the last class has no max_active"));
            }
            if let Some(max) = c.max_active {
                if !(max.is_finite() && max > last_max) {
                    errors.push(format!("{at}.max_active: {max} must grow from class to class"));
                }
                last_max = max;
            }
            classes.push(Class {
                name: c.name.clone(),
                max_active: c.max_active,
                input_nwh: nwh(c.input_wh_per_mtok, pue_permille),
                output_nwh: nwh(c.output_wh_per_mtok, pue_permille),
            });
        }
        for (i, s) in raw.sources.iter().enumerate() {
            if [&s.name, &s.what, &s.url, &s.date].iter().any(|x| x.trim().is_empty()) {
                errors.push(format!("source[{i}]: name, what, url and date are all needed"));
            }
        }
        let mut grids = BTreeMap::new();
        for (region, g) in &raw.grid {
            if g.g_per_kwh == 0 || g.source.trim().is_empty() || g.year < 2000 {
                errors.push(format!("grid.{region}: needs a positive g_per_kwh, a year and a source"));
            }
            grids.insert(region.clone(), Grid { g_per_kwh: g.g_per_kwh, year: g.year, source: g.source.clone() });
        }
        let default_class = classes.iter().position(|c| c.name == m.default_class);
        if default_class.is_none() {
            errors.push(format!("meta.default_class: no class named {:?}", m.default_class));
        }
        if !grids.contains_key(&m.default_grid) {
            errors.push(format!("meta.default_grid: no grid named {:?}", m.default_grid));
        }
        if classes.is_empty() {
            errors.push("no classes".to_string());
        }
        if !errors.is_empty() {
            return Err(format!("energy figures: {}", errors.join("; ")));
        }
        Ok(EnergyTable {
            date: m.date.clone(),
            pue_permille,
            pue_source: m.pue_source.clone(),
            classes,
            grids,
            default_class: default_class.unwrap_or(0),
            default_grid: m.default_grid.clone(),
        })
    }

    /// The shipped figures, parsed once.
    pub fn shipped() -> Result<&'static EnergyTable, &'static str> {
        static TABLE: OnceLock<Result<EnergyTable, String>> = OnceLock::new();
        TABLE.get_or_init(|| EnergyTable::parse(SHIPPED)).as_ref().map_err(String::as_str)
    }

    pub fn class(&self, name: &str) -> Option<&Class> {
        self.classes.iter().find(|c| c.name == name)
    }

    /// The first class `active` billions of parameters fit.
    pub fn class_for_active(&self, active: f64) -> &Class {
        self.classes
            .iter()
            .find(|c| c.max_active.is_none_or(|max| active <= max))
            .unwrap_or(&self.classes[self.classes.len() - 1])
    }

    fn class_names(&self) -> String {
        self.classes.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The profile of one entry (`at` names it in findings), or None after an error.
    pub(super) fn profile(&self, at: &str, r: &RawModel, rule: Rule, f: &mut Findings) -> Option<ModelEnergy> {
        let class = match (&r.energy_class, r.active_params) {
            (Some(_), Some(_)) => {
                f.errors.push(format!(
                    "{at}: has both energy_class and active_params; give the parameters (they pick the class) or the class, not both"
                ));
                return None;
            }
            (Some(name), None) => match self.class(name) {
                Some(c) => Some(c),
                None => {
                    f.errors.push(format!("{at}.energy_class: unknown class \"{name}\" ({})", self.class_names()));
                    return None;
                }
            },
            (None, Some(a)) if !(a.is_finite() && a > 0.0) => {
                f.errors.push(format!("{at}.active_params: {a} is not a parameter count (billions, > 0)"));
                return None;
            }
            (None, Some(a)) => Some(self.class_for_active(a)),
            (None, None) => None,
        };
        let source = r.energy_source.as_ref().filter(|s| !s.trim().is_empty());
        if class.is_some() && source.is_none() && rule == Rule::Error {
            f.errors.push(format!(
                "{at}: energy_class or active_params without energy_source; say where the size comes from, or why the class"
            ));
            return None;
        }
        if class.is_none() && r.energy_source.is_some() {
            f.errors.push(format!("{at}.energy_source: without energy_class or active_params"));
            return None;
        }
        let defaulted = class.is_none();
        let class = match class {
            Some(c) => c,
            None => {
                let default = &self.classes[self.default_class];
                let msg = format!(
                    "{at}: no energy_class or active_params; add one with energy_source (where the size comes from)"
                );
                if rule == Rule::Error {
                    f.errors.push(msg);
                    return None;
                }
                f.warnings.push(format!("{msg} (its energy is estimated with the default class \"{}\")", default.name));
                default
            }
        };
        let grid = match r.hosting.as_deref() {
            Some(h) if self.grids.contains_key(h) => h.to_string(),
            Some(h) => {
                let msg = format!("{at}.hosting: no grid intensity for \"{h}\" in catalog/energy.toml");
                if rule == Rule::Error {
                    f.errors.push(msg);
                    return None;
                }
                f.warnings.push(format!("{msg} (its CO2e uses {})", self.default_grid));
                self.default_grid.clone()
            }
            None if rule == Rule::Error => {
                f.errors.push(format!("{at}: no hosting, so no grid intensity for its CO2e"));
                return None;
            }
            None => self.default_grid.clone(),
        };
        let g = &self.grids[&grid];
        Some(ModelEnergy {
            class: class.name.clone(),
            active_params: r.active_params,
            source: if defaulted { None } else { source.cloned() },
            defaulted,
            grid,
            rates: EnergyRates {
                input_nwh: class.input_nwh,
                output_nwh: class.output_nwh,
                grid_g_per_kwh: g.g_per_kwh,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> &'static EnergyTable {
        EnergyTable::shipped().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn shipped_figures_parse_with_the_pue_applied() {
        let t = table();
        assert_eq!(t.pue_permille, 1200);
        let names: Vec<&str> = t.classes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["tiny", "small", "medium", "large", "frontier"]);
        // 55 Wh per 1M output tokens = 55 µWh per token = 55,000 nWh, × 1.2 = 66,000.
        let small = t.class("small").unwrap();
        assert_eq!((small.input_nwh, small.output_nwh), (18_000, 66_000));
        let frontier = t.class("frontier").unwrap();
        assert_eq!((frontier.input_nwh, frontier.output_nwh), (300_000, 1_200_000));
        assert_eq!(t.grids["US"].g_per_kwh, 345);
        assert_eq!(t.classes[t.default_class].name, "large");
        for region in ["US", "CN", "EU", "SG", "WORLD"] {
            assert!(t.grids.contains_key(region), "{region}");
        }
    }

    #[test]
    fn active_parameters_pick_the_first_class_they_fit() {
        let t = table();
        let name = |a: f64| t.class_for_active(a).name.as_str();
        assert_eq!(name(0.11), "tiny");
        assert_eq!(name(2.0), "tiny");
        assert_eq!(name(5.1), "small");
        assert_eq!(name(37.0), "medium");
        assert_eq!(name(70.0), "large");
        assert_eq!(name(405.0), "frontier");
    }

    #[test]
    fn bad_figures_are_named() {
        let good = SHIPPED;
        let e = EnergyTable::parse(&good.replace("output_wh_per_mtok = 55.0", "output_wh_per_mtok = 0.0")).unwrap_err();
        assert!(e.contains("class[1] (small).output_wh_per_mtok"), "{e}");
        let e = EnergyTable::parse(&good.replace("pue = 1.2", "pue = 0.5")).unwrap_err();
        assert!(e.contains("meta.pue"), "{e}");
        let e = EnergyTable::parse(&good.replace("default_class = \"large\"", "default_class = \"huge\"")).unwrap_err();
        assert!(e.contains("default_class"), "{e}");
        let e = EnergyTable::parse(&good.replace("g_per_kwh = 582", "g_per_kwh = 0")).unwrap_err();
        assert!(e.contains("grid.CN"), "{e}");
    }
}
