//! The model and price catalog: what each model costs, what it can do, who made it and
//! where it runs.
//!
//! The shipped catalog (`catalog/models.toml` at the repo root) is compiled into the
//! binary; a user file (`[catalog] file = ...`) replaces it and `[models."p/m"]` config
//! tables add or override entries. Prices are read as decimal USD per 1M tokens and held
//! as integer pico-dollars per token ([`Rate`]), so `tokens × rate` is exact integer
//! arithmetic. Validation runs once at load: implausible prices (a per-token value typed
//! into a per-million field, input above $200/M without an allowlist), missing prices,
//! unknown providers and duplicate ids are errors that name the entry.
//!
//! Every chat model in the shipped catalog carries exactly one of `quality` (a score) or
//! `quality_unrated` (the reason there is none), so "unrated" always says why. The rule is
//! graded by where an entry comes from ([`rating_rule`]): an error in the shipped catalog;
//! a warning in a user catalog file, because files written before the key existed, and
//! LiteLLM imports, have chat entries with neither and must keep loading; and nothing at all
//! for a `[models."p/m"]` table that adds a model, which is how a self-hosted model is
//! priced in one line. Both keys on one entry, or a reason on an embedding, is always an
//! error.
//!
//! Every model, chat and embedding, also carries an energy profile ([`energy`]): its size
//! class (`energy_class`, or `active_params` that pick one) with `energy_source`, and the grid
//! of its `hosting` region, under the same graded rule, so an attempt's energy estimate is
//! never a silent zero.

pub mod energy;
pub mod litellm;

use crate::fnv::{fnv1a, Fnv1a, OFFSET as FNV_OFFSET};
use crate::preset;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::BuildHasherDefault;

/// The shipped catalog, compiled in.
pub const SHIPPED: &str = include_str!("../../../catalog/models.toml");

/// Provider ids a catalog may name: every preset.
pub fn known_provider(id: &str) -> bool {
    preset::find(id).is_some()
}

/// Above this input price (USD per 1M) an entry needs `allow_expensive` in the catalog's
/// meta: o1-pro at $150/M is the most expensive real model; $10,000/M is a unit mistake.
const MAX_PLAUSIBLE_INPUT: f64 = 200.0;
const MAX_PLAUSIBLE_OUTPUT: f64 = 1000.0;
/// Below this (but above zero) a per-million price is almost surely a per-token value.
const MIN_PLAUSIBLE_PRICE: f64 = 0.001;

/// A price: integer pico-USD (1e-12 $) per token. $0.0028 per 1M tokens is 2,800.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rate(pub u64);

impl Rate {
    /// From USD per 1M tokens (as written in catalogs and config).
    pub fn from_usd_per_mtok(v: f64) -> Rate {
        Rate((v * 1_000_000.0).round() as u64)
    }

    pub fn usd_per_mtok(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }
}

/// The prices that apply to one request (after tier selection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rates {
    pub input: Rate,
    /// Cache reads; None means the vendor does not discount them (charged as input).
    pub cached_input: Option<Rate>,
    pub cache_write_5m: Option<Rate>,
    pub cache_write_1h: Option<Rate>,
    pub output: Rate,
    /// Reasoning output where priced separately; None means charged as output.
    pub reasoning_output: Option<Rate>,
}

/// A long-context tier: when the prompt exceeds `above` tokens, these rates apply to the
/// whole request (Gemini Pro / Claude Sonnet above 200k, GPT-5.5 above 272k).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tier {
    pub above: u64,
    pub rates: Rates,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Chat,
    Embedding,
}

/// What a model can do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    pub tools: bool,
    pub json_schema: bool,
    pub vision: bool,
    pub reasoning: bool,
    pub streaming: bool,
}

impl Capabilities {
    fn from_names(names: &[String], at: &str) -> Result<Capabilities, String> {
        let mut c = Capabilities::default();
        for n in names {
            match n.as_str() {
                "tools" => c.tools = true,
                "json_schema" => c.json_schema = true,
                "vision" => c.vision = true,
                "reasoning" => c.reasoning = true,
                "streaming" => c.streaming = true,
                other => {
                    return Err(format!(
                        "{at}.capabilities: unknown capability \"{other}\" (tools, json_schema, vision, reasoning, streaming)"
                    ))
                }
            }
        }
        Ok(c)
    }

    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.tools, "tools"),
            (self.json_schema, "json_schema"),
            (self.vision, "vision"),
            (self.reasoning, "reasoning"),
            (self.streaming, "streaming"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect()
    }
}

/// One catalog entry, validated.
#[derive(Clone, Debug, Serialize)]
pub struct Model {
    /// `provider/model`.
    pub id: String,
    pub provider: String,
    pub model: String,
    pub kind: Kind,
    pub rates: Rates,
    pub tiers: Vec<Tier>,
    pub context: Option<u64>,
    pub max_output: Option<u64>,
    pub capabilities: Capabilities,
    pub origin: Option<String>,
    pub hosting: Option<String>,
    pub open_weights: bool,
    pub license: Option<String>,
    pub quality: Option<u32>,
    pub quality_source: Option<String>,
    pub quality_date: Option<String>,
    /// Why a chat model has no `quality` (no public score found, and where it was looked
    /// for). None on rated models, on embeddings and on entries that give no reason.
    pub quality_unrated: Option<String>,
    pub price_source: Option<String>,
    pub price_date: Option<String>,
    pub currency: String,
    /// Size class and grid, with the integer rates an attempt's energy estimate uses.
    pub energy: energy::ModelEnergy,
}

impl Model {
    /// The rates for a request with this many prompt tokens (highest tier it exceeds).
    pub fn rates_for(&self, prompt_tokens: u64) -> &Rates {
        self.tiers.iter().rev().find(|t| prompt_tokens > t.above).map(|t| &t.rates).unwrap_or(&self.rates)
    }

    /// Blended price (3 input : 1 output) in USD per 1M tokens, for display and ranking.
    pub fn blended(&self) -> f64 {
        (3.0 * self.rates.input.usd_per_mtok() + self.rates.output.usd_per_mtok()) / 4.0
    }
}

/// A loaded catalog with its version.
#[derive(Clone, Debug)]
pub struct Catalog {
    pub name: String,
    pub date: String,
    /// `name@date#hash`: recorded with every price used, so old ledger rows stay explainable
    /// (the hash covers the catalog text, config overrides and the energy figures).
    pub version: String,
    pub cny_per_usd: Option<f64>,
    models: Vec<Model>,
    /// Position in `models` by id, keyed by bytes so that ids joined on the stack
    /// ([`Catalog::position_pair`]) are looked up without a UTF-8 check; FNV-1a, as the
    /// ids are fixed at load (see [`Fnv1a`]).
    index: HashMap<Box<[u8]>, usize, BuildHasherDefault<Fnv1a>>,
}

// ---- raw file format -------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    meta: RawMeta,
    #[serde(default, rename = "model")]
    models: Vec<RawModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    name: String,
    date: String,
    cny_per_usd: Option<f64>,
    /// Ids allowed above the plausibility ceiling (e.g. "openai/o1-pro").
    #[serde(default)]
    allow_expensive: Vec<String>,
}

/// Prices and facts of one entry, as in the catalog file. Also the shape of a config
/// `[models."provider/model"]` table, where every field is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub kind: Option<Kind>,
    pub input: Option<f64>,
    pub cached_input: Option<f64>,
    pub cache_write_5m: Option<f64>,
    pub cache_write_1h: Option<f64>,
    pub output: Option<f64>,
    pub reasoning_output: Option<f64>,
    #[serde(default)]
    pub tiers: Vec<RawTier>,
    #[serde(default)]
    pub ranges: Vec<RawRange>,
    pub context: Option<u64>,
    pub max_output: Option<u64>,
    pub capabilities: Option<Vec<String>>,
    pub origin: Option<String>,
    pub hosting: Option<String>,
    pub open_weights: Option<bool>,
    pub license: Option<String>,
    pub quality: Option<f64>,
    pub quality_source: Option<String>,
    pub quality_date: Option<String>,
    pub quality_unrated: Option<String>,
    pub price_source: Option<String>,
    pub price_date: Option<String>,
    pub currency: Option<String>,
    pub price_cny: Option<BTreeMap<String, f64>>,
    pub notes: Option<String>,
    pub dims: Option<u64>,
    /// Energy size class (`tiny`, `small`, `medium`, `large`, `frontier`; catalog/energy.toml).
    pub energy_class: Option<String>,
    /// Active parameters in billions (picks the energy class).
    pub active_params: Option<f64>,
    /// Where the size comes from, or why the class was chosen.
    pub energy_source: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub above: u64,
    pub input: Option<f64>,
    pub cached_input: Option<f64>,
    pub cache_write_5m: Option<f64>,
    pub cache_write_1h: Option<f64>,
    pub output: Option<f64>,
    pub reasoning_output: Option<f64>,
}

/// DashScope-style ranges: `from < prompt ≤ to` prices the whole request.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRange {
    pub from: u64,
    pub to: u64,
    pub input: Option<f64>,
    pub cached_input: Option<f64>,
    pub output: Option<f64>,
    pub reasoning_output: Option<f64>,
}

/// Problems found while loading: errors stop the load; warnings are reported.
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

fn check_price(at: &str, key: &str, v: Option<f64>, allow_expensive: bool, f: &mut Findings) -> Option<Rate> {
    let v = v?;
    if !v.is_finite() || v < 0.0 {
        f.errors.push(format!("{at}.{key}: {v} is not a price (USD per 1M tokens, ≥ 0)"));
        return None;
    }
    if v > 0.0 && v < MIN_PLAUSIBLE_PRICE {
        f.errors.push(format!(
            "{at}.{key}: {v} USD per 1M tokens is implausibly low — was a per-token price ({} per 1M) written here?",
            v * 1e6
        ));
        return None;
    }
    let ceiling = if key.contains("output") { MAX_PLAUSIBLE_OUTPUT } else { MAX_PLAUSIBLE_INPUT };
    if v > ceiling && !allow_expensive {
        f.errors.push(format!(
            "{at}.{key}: {v} USD per 1M tokens is above the plausibility ceiling of {ceiling}; add the id to meta.allow_expensive if it is real"
        ));
        return None;
    }
    Some(Rate::from_usd_per_mtok(v))
}

struct PriceFields {
    input: Option<f64>,
    cached_input: Option<f64>,
    cache_write_5m: Option<f64>,
    cache_write_1h: Option<f64>,
    output: Option<f64>,
    reasoning_output: Option<f64>,
}

/// Build rates from fields, falling back to `base` for anything not given.
fn rates_from(at: &str, p: &PriceFields, base: Option<&Rates>, allow: bool, f: &mut Findings) -> Option<Rates> {
    let input = check_price(at, "input", p.input, allow, f).or(base.map(|b| b.input));
    let output = check_price(at, "output", p.output, allow, f).or(base.map(|b| b.output));
    Some(Rates {
        input: input?,
        output: output?,
        cached_input: check_price(at, "cached_input", p.cached_input, allow, f).or(base.and_then(|b| b.cached_input)),
        cache_write_5m: check_price(at, "cache_write_5m", p.cache_write_5m, allow, f)
            .or(base.and_then(|b| b.cache_write_5m)),
        cache_write_1h: check_price(at, "cache_write_1h", p.cache_write_1h, allow, f)
            .or(base.and_then(|b| b.cache_write_1h)),
        reasoning_output: check_price(at, "reasoning_output", p.reasoning_output, allow, f)
            .or(base.and_then(|b| b.reasoning_output)),
    })
}

/// Validate one raw entry into a model. `id` is `provider/model`; `at` names it in errors.
fn model_from_raw(id: &str, at: &str, r: &RawModel, allow: bool, f: &mut Findings) -> Option<Model> {
    model_from_raw_with(id, at, r, allow, &[], Rule::Warn, f)
}

/// How strictly a chat entry with neither `quality` nor `quality_unrated` (or with no
/// energy class) is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    /// Shipped catalog: every chat model is rated or says why not.
    Error,
    /// User catalog files (and LiteLLM imports): loaded, with a warning naming the entry.
    Warn,
    /// `[models."p/m"]` tables that add a model not in the catalog: no rating expected.
    None,
}

/// The rule for an entry: `shipped` when the catalog text is the compiled-in one (config
/// loads it as a copy, so this is decided by content, not by which function was called);
/// `from_config` when the entry exists only as a `[models."p/m"]` table. An override merged
/// onto a catalog entry keeps that entry's rule, and the merge lets it swap a reason for a
/// score (see [`merge`]).
fn rating_rule(shipped: bool, from_config: bool) -> Rule {
    match (from_config, shipped) {
        (true, _) => Rule::None,
        (false, true) => Rule::Error,
        (false, false) => Rule::Warn,
    }
}

/// Check the quality / quality_unrated pair of one entry; false when it is an error.
fn check_rating(at: &str, kind: Kind, r: &RawModel, rule: Rule, f: &mut Findings) -> bool {
    if let Some(why) = &r.quality_unrated {
        if kind == Kind::Embedding {
            f.errors.push(format!("{at}.quality_unrated: embeddings are not on the quality scale; remove the key"));
            return false;
        }
        if r.quality.is_some() {
            f.errors
                .push(format!("{at}: has both quality and quality_unrated; keep the score or the reason, not both"));
            return false;
        }
        if why.trim().is_empty() {
            f.errors.push(format!("{at}.quality_unrated: empty; say why the model has no score"));
            return false;
        }
        return true;
    }
    if kind == Kind::Chat && r.quality.is_none() {
        let msg = format!(
            "{at}: chat model has neither quality nor quality_unrated; add a score with its source, or quality_unrated = \"why there is none\""
        );
        match rule {
            Rule::Error => {
                f.errors.push(msg);
                return false;
            }
            Rule::Warn => f.warnings.push(format!("{msg} (treated as unrated)")),
            Rule::None => {}
        }
    }
    true
}

fn model_from_raw_with(
    id: &str,
    at: &str,
    r: &RawModel,
    allow: bool,
    extra_providers: &[String],
    rule: Rule,
    f: &mut Findings,
) -> Option<Model> {
    let (provider, model) = match id.split_once('/') {
        Some((p, m)) if !p.is_empty() && !m.is_empty() => (p.to_string(), m.to_string()),
        _ => {
            f.errors.push(format!("{at}: the id must be \"provider/model\""));
            return None;
        }
    };
    if !known_provider(&provider) && !extra_providers.contains(&provider) {
        f.errors.push(format!("{at}: unknown provider \"{provider}\""));
        return None;
    }
    let kind = r.kind.unwrap_or(Kind::Chat);
    let fields = PriceFields {
        input: r.input,
        cached_input: r.cached_input,
        cache_write_5m: r.cache_write_5m,
        cache_write_1h: r.cache_write_1h,
        // Embeddings have no output; a missing output price there is zero, not unknown.
        output: r.output.or((kind == Kind::Embedding).then_some(0.0)),
        reasoning_output: r.reasoning_output,
    };
    let errors_before = f.errors.len();
    let rates = rates_from(at, &fields, None, allow, f);
    let Some(rates) = rates else {
        if f.errors.len() == errors_before {
            f.errors.push(format!(
                "{at}: missing price (needs input and output in USD per 1M tokens; write 0 explicitly for free or self-hosted models)"
            ));
        }
        return None;
    };
    let mut tiers = Vec::new();
    for (i, t) in r.tiers.iter().enumerate() {
        let p = PriceFields {
            input: t.input,
            cached_input: t.cached_input,
            cache_write_5m: t.cache_write_5m,
            cache_write_1h: t.cache_write_1h,
            output: t.output,
            reasoning_output: t.reasoning_output,
        };
        if let Some(rates) = rates_from(&format!("{at}.tiers[{i}]"), &p, Some(&rates), allow, f) {
            tiers.push(Tier { above: t.above, rates });
        }
    }
    // Ranges become tiers at their lower bounds; the first range is the base price.
    for (i, rg) in r.ranges.iter().enumerate() {
        if rg.to <= rg.from {
            f.errors.push(format!("{at}.ranges[{i}]: 'to' must be greater than 'from'"));
            continue;
        }
        if rg.from == 0 {
            continue;
        }
        let p = PriceFields {
            input: rg.input,
            cached_input: rg.cached_input,
            cache_write_5m: None,
            cache_write_1h: None,
            output: rg.output,
            reasoning_output: rg.reasoning_output,
        };
        if let Some(rates) = rates_from(&format!("{at}.ranges[{i}]"), &p, Some(&rates), allow, f) {
            tiers.push(Tier { above: rg.from, rates });
        }
    }
    tiers.sort_by_key(|t| t.above);
    let capabilities = match Capabilities::from_names(r.capabilities.as_deref().unwrap_or(&[]), at) {
        // Every OpenAI-compatible chat endpoint streams: an entry that lists no
        // capabilities (a quick `[models]` price) is not excluded from streaming requests.
        Ok(c) if r.capabilities.is_none() && kind == Kind::Chat => Capabilities { streaming: true, ..c },
        Ok(c) => c,
        Err(e) => {
            f.errors.push(e);
            return None;
        }
    };
    let quality = match r.quality {
        Some(q) if q.is_finite() && (0.0..=5000.0).contains(&q) => Some(q.round() as u32),
        Some(q) => {
            f.errors.push(format!("{at}.quality: {q} is outside the catalog's quality scale"));
            return None;
        }
        None => None,
    };
    if !check_rating(at, kind, r, rule, f) {
        return None;
    }
    let energy = match energy::EnergyTable::shipped() {
        Ok(table) => table.profile(at, r, rule, f)?,
        Err(e) => {
            f.errors.push(e.to_string());
            return None;
        }
    };
    let currency = r.currency.clone().unwrap_or_else(|| "USD".into());
    if currency != "USD" && r.price_cny.is_none() {
        f.warnings.push(format!("{at}: currency {currency} without price_cny (the original prices)"));
    }
    if kind == Kind::Chat && r.price_source.is_none() {
        f.warnings.push(format!("{at}: no price_source"));
    }
    Some(Model {
        id: id.to_string(),
        provider,
        model,
        kind,
        rates,
        tiers,
        context: r.context,
        max_output: r.max_output,
        capabilities,
        origin: r.origin.clone(),
        hosting: r.hosting.clone(),
        open_weights: r.open_weights.unwrap_or(false),
        license: r.license.clone(),
        quality,
        quality_source: r.quality_source.clone(),
        quality_date: r.quality_date.clone(),
        quality_unrated: r.quality_unrated.clone(),
        price_source: r.price_source.clone(),
        price_date: r.price_date.clone(),
        currency,
        energy,
    })
}

/// Merge a config override onto an existing raw entry (config keys win).
///
/// A score and a reason for having none are one fact: a config `quality` replaces the
/// catalog's `quality_unrated` (rating a model the catalog could not), and a config
/// `quality_unrated` drops the catalog's score with its source and date.
fn merge(base: &RawModel, o: &RawModel) -> RawModel {
    macro_rules! pick {
        ($($f:ident),*) => { RawModel { $($f: o.$f.clone().or_else(|| base.$f.clone()),)* tiers: if o.tiers.is_empty() { base.tiers.clone() } else { o.tiers.clone() }, ranges: if o.ranges.is_empty() { base.ranges.clone() } else { o.ranges.clone() } } };
    }
    let mut m = pick!(
        provider,
        model,
        kind,
        input,
        cached_input,
        cache_write_5m,
        cache_write_1h,
        output,
        reasoning_output,
        context,
        max_output,
        capabilities,
        origin,
        hosting,
        open_weights,
        license,
        quality,
        quality_source,
        quality_date,
        quality_unrated,
        price_source,
        price_date,
        currency,
        price_cny,
        notes,
        dims,
        energy_class,
        active_params,
        energy_source
    );
    if o.quality.is_some() && o.quality_unrated.is_none() {
        m.quality_unrated = None;
    }
    if o.quality_unrated.is_some() && o.quality.is_none() {
        m.quality = None;
        m.quality_source = o.quality_source.clone();
        m.quality_date = o.quality_date.clone();
    }
    // A class and a parameter count are one fact, and the source goes with whichever the
    // override gives.
    if o.energy_class.is_some() || o.active_params.is_some() {
        m.energy_class = o.energy_class.clone();
        m.active_params = o.active_params;
        m.energy_source = o.energy_source.clone();
    }
    m
}

impl Catalog {
    /// Load catalog text plus config overrides (`[models."p/m"]`, keyed by id).
    pub fn load(text: &str, overrides: &BTreeMap<String, RawModel>) -> Result<(Catalog, Findings), Findings> {
        Catalog::load_with(text, overrides, &[])
    }

    /// Like [`Catalog::load`], also accepting entries for the configured provider ids in
    /// `extra_providers` (a user's `[providers.mybox]` can be priced as `mybox/model`).
    pub fn load_with(
        text: &str,
        overrides: &BTreeMap<String, RawModel>,
        extra_providers: &[String],
    ) -> Result<(Catalog, Findings), Findings> {
        let mut f = Findings::default();
        let raw: RawCatalog = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                f.errors.push(format!("catalog: {}", e.message()));
                return Err(f);
            }
        };
        let shipped = text == SHIPPED;
        // (id, where it is named in errors, the raw entry, whether it exists only in config)
        let mut entries: Vec<(String, String, RawModel, bool)> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, m) in raw.models.iter().enumerate() {
            let (Some(p), Some(name)) = (&m.provider, &m.model) else {
                f.errors.push(format!("catalog model[{i}]: needs provider and model"));
                continue;
            };
            let id = format!("{p}/{name}");
            if let Some(prev) = seen.insert(id.clone(), i) {
                f.errors.push(format!("catalog model[{i}] ({id}): duplicate id (also model[{prev}])"));
                continue;
            }
            entries.push((id.clone(), format!("catalog model[{i}] ({id})"), m.clone(), false));
        }
        let mut hash = fnv1a(text.as_bytes(), FNV_OFFSET);
        // The energy figures are part of what a row's estimate was made with.
        hash = fnv1a(energy::SHIPPED.as_bytes(), hash);
        for (id, o) in overrides {
            hash = fnv1a(format!("{id}{o:?}").as_bytes(), hash);
            let at = format!("models.\"{id}\"");
            match entries.iter_mut().find(|(eid, _, _, _)| eid == id) {
                Some(e) => {
                    e.2 = merge(&e.2, o);
                    e.1 = at;
                }
                None => entries.push((id.clone(), at, o.clone(), true)),
            }
        }
        let mut models = Vec::new();
        for (id, at, r, from_config) in &entries {
            let allow = raw.meta.allow_expensive.contains(id);
            let rule = rating_rule(shipped, *from_config);
            if let Some(m) = model_from_raw_with(id, at, r, allow, extra_providers, rule, &mut f) {
                models.push(m);
            }
        }
        if !f.errors.is_empty() {
            return Err(f);
        }
        let index = models.iter().enumerate().map(|(i, m)| (m.id.as_bytes().into(), i)).collect();
        let version = format!("{}@{}#{:08x}", raw.meta.name, raw.meta.date, hash as u32);
        Ok((
            Catalog {
                name: raw.meta.name,
                date: raw.meta.date,
                version,
                cny_per_usd: raw.meta.cny_per_usd,
                models,
                index,
            },
            f,
        ))
    }

    /// The shipped catalog with no overrides.
    pub fn shipped() -> Result<Catalog, Findings> {
        Catalog::load(SHIPPED, &BTreeMap::new()).map(|(c, _)| c)
    }

    pub fn get(&self, id: &str) -> Option<&Model> {
        self.index.get(id.as_bytes()).map(|&i| &self.models[i])
    }

    /// Where the entry [`Catalog::get`] would find for `{prefix}/{model}` is in
    /// [`Catalog::models`], without allocating for ids of ordinary length (this runs on
    /// every request).
    pub fn position_pair(&self, prefix: &str, model: &str) -> Option<usize> {
        let mut buf = [0u8; 160];
        let n = prefix.len() + 1 + model.len();
        if n > buf.len() {
            return self.index.get(format!("{prefix}/{model}").as_bytes()).copied();
        }
        buf[..prefix.len()].copy_from_slice(prefix.as_bytes());
        buf[prefix.len()] = b'/';
        buf[prefix.len() + 1..n].copy_from_slice(model.as_bytes());
        // Keyed by bytes, so the joined id needs no UTF-8 check to be looked up.
        self.index.get(&buf[..n]).copied()
    }

    pub fn models(&self) -> &[Model] {
        &self.models
    }

    /// Render findings for humans.
    pub fn describe(f: &Findings) -> String {
        let mut s = String::new();
        for e in &f.errors {
            let _ = writeln!(s, "error: {e}");
        }
        for w in &f.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "[meta]\nname = \"t\"\ndate = \"2026-07-20\"\n";

    fn load(models: &str) -> Result<Catalog, String> {
        Catalog::load(&format!("{META}{models}"), &BTreeMap::new()).map(|(c, _)| c).map_err(|f| Catalog::describe(&f))
    }

    #[test]
    fn shipped_catalog_loads_and_is_large_enough() {
        let c = Catalog::shipped().unwrap_or_else(|f| panic!("{}", Catalog::describe(&f)));
        let chat = c.models().iter().filter(|m| m.kind == Kind::Chat).count();
        let emb = c.models().iter().filter(|m| m.kind == Kind::Embedding).count();
        assert!(chat >= 60, "{chat} chat models");
        assert!(emb >= 8, "{emb} embedding models");
        for m in c.models() {
            assert!(
                m.price_source.is_some() && m.price_date.is_some(),
                "{}: price must trace to a source and date",
                m.id
            );
        }
        assert!(c.version.starts_with(&format!("{}@{}#", c.name, c.date)));
    }

    #[test]
    fn shipped_chat_models_are_rated_or_say_why() {
        let c = Catalog::shipped().unwrap_or_else(|f| panic!("{}", Catalog::describe(&f)));
        let is_date = |d: &str| {
            let b = d.as_bytes();
            b.len() == 10 && b[4] == b'-' && b[7] == b'-' && d.chars().filter(char::is_ascii_digit).count() == 8
        };
        let mut unrated = 0;
        for m in c.models() {
            match m.kind {
                Kind::Embedding => assert!(m.quality_unrated.is_none(), "{}: embeddings are not rated", m.id),
                Kind::Chat => match (m.quality, &m.quality_unrated) {
                    (Some(_), None) => {
                        let source = m.quality_source.as_deref().unwrap_or("");
                        assert!(!source.trim().is_empty(), "{}: quality without quality_source", m.id);
                        let date = m.quality_date.as_deref().unwrap_or("");
                        assert!(is_date(date), "{}: quality_date {date:?} is not YYYY-MM-DD", m.id);
                    }
                    (None, Some(why)) => {
                        unrated += 1;
                        assert!(why.len() > 40, "{}: the reason should say what was searched: {why:?}", m.id);
                        assert!(
                            m.quality_source.is_none() && m.quality_date.is_none(),
                            "{}: a source or date without a score",
                            m.id
                        );
                    }
                    (q, why) => panic!("{}: needs exactly one of quality / quality_unrated ({q:?}, {why:?})", m.id),
                },
            }
        }
        // catalog/README.md states the count; keep it in step with the file.
        let chat = c.models().iter().filter(|m| m.kind == Kind::Chat).count();
        let readme = include_str!("../../../catalog/README.md");
        let claim = format!("{unrated} of {chat} chat entries have no score, each with its reason");
        assert!(readme.contains(&claim), "catalog/README.md should say \"{claim}\"");
    }

    #[test]
    fn shipped_models_have_a_sourced_energy_class_and_a_grid() {
        let c = Catalog::shipped().unwrap_or_else(|f| panic!("{}", Catalog::describe(&f)));
        let table = energy::EnergyTable::shipped().unwrap();
        let by_price_tier = "undisclosed by the vendor; class from its output-price tier";
        let with_params = c.models().iter().filter(|m| m.energy.active_params.is_some()).count();
        // catalog/README.md states the counts; keep them in step with the file.
        let readme = include_str!("../../../catalog/README.md");
        let claim = format!("; {with_params} entries) or `energy_class`");
        assert!(readme.contains(&claim), "catalog/README.md should say \"{claim}\"");
        let claim = format!("({} entries):", c.models().len() - with_params);
        assert!(readme.contains(&claim), "catalog/README.md should say \"{claim}\"");
        for m in c.models() {
            let e = &m.energy;
            assert!(!e.defaulted, "{}: no energy class", m.id);
            let source = e.source.as_deref().unwrap_or("");
            assert!(source.len() > 20, "{}: energy_source should say where the size comes from: {source:?}", m.id);
            assert_eq!(Some(e.grid.as_str()), m.hosting.as_deref(), "{}: the grid is the hosting region's", m.id);
            assert!(e.rates.input_nwh > 0 && e.rates.output_nwh >= e.rates.input_nwh, "{}: {:?}", m.id, e.rates);
            assert!(e.rates.grid_g_per_kwh > 0, "{}", m.id);
            if let Some(a) = e.active_params {
                assert_eq!(table.class_for_active(a).name, e.class, "{}: {a}B active", m.id);
            }
            // The price-tier rule of catalog/README.md, where it is the stated reason (a
            // Beijing copy says it takes the Singapore listing's class instead).
            if source.starts_with(by_price_tier) && !source.contains("Beijing copy") {
                let out = m.rates.output.usd_per_mtok();
                let want = match out {
                    o if o >= 10.0 => "frontier",
                    o if o >= 3.0 => "large",
                    o if o >= 0.8 => "medium",
                    _ => "small",
                };
                assert_eq!(e.class, want, "{}: output ${out}/M", m.id);
            }
        }
    }

    #[test]
    fn energy_classes_are_checked_by_where_the_entry_comes_from() {
        let entry = |extra: &str| {
            format!("{META}[[model]]\nprovider = \"openai\"\nmodel = \"x\"\ninput = 1\noutput = 1\nhosting = \"US\"\n{extra}")
        };
        // The shipped rule: no class, a class without a source, an unknown hosting region.
        let raw = RawModel {
            input: Some(1.0),
            output: Some(1.0),
            hosting: Some("US".into()),
            quality_unrated: Some("not rated here".into()),
            ..Default::default()
        };
        let at = "catalog model[0] (openai/x)";
        let mut f = Findings::default();
        assert!(model_from_raw_with("openai/x", at, &raw, false, &[], Rule::Error, &mut f).is_none());
        assert!(f.errors[0].contains("openai/x") && f.errors[0].contains("no energy_class"), "{f:?}");
        let classed = RawModel { energy_class: Some("small".into()), ..raw.clone() };
        let mut f = Findings::default();
        assert!(model_from_raw_with("openai/x", at, &classed, false, &[], Rule::Error, &mut f).is_none());
        assert!(f.errors[0].contains("without energy_source"), "{f:?}");
        let elsewhere = RawModel { energy_source: Some("model card".into()), hosting: Some("MARS".into()), ..classed };
        let mut f = Findings::default();
        assert!(model_from_raw_with("openai/x", at, &elsewhere, false, &[], Rule::Error, &mut f).is_none());
        assert!(f.errors[0].contains("no grid intensity for \"MARS\""), "{f:?}");
        // A user catalog file: the default class, with a warning that says so.
        let (c, f) = Catalog::load(&entry(""), &BTreeMap::new()).unwrap();
        let e = &c.get("openai/x").unwrap().energy;
        assert!(e.defaulted && e.class == "large" && e.source.is_none(), "{e:?}");
        assert!(f.warnings.iter().any(|w| w.contains("openai/x") && w.contains("default class \"large\"")), "{f:?}");
        // Parameters pick the class; both, an unknown class or a bad count are errors anywhere.
        let (c, _) = Catalog::load(&entry("active_params = 37\nenergy_source = \"card\"\n"), &BTreeMap::new()).unwrap();
        assert_eq!(c.get("openai/x").unwrap().energy.class, "medium");
        let e =
            load("[[model]]\nprovider = \"openai\"\nmodel = \"x\"\ninput = 1\noutput = 1\nenergy_class = \"huge\"\n")
                .unwrap_err();
        assert!(e.contains("unknown class \"huge\""), "{e}");
        let e = Catalog::load(&entry("energy_class = \"small\"\nactive_params = 8\n"), &BTreeMap::new())
            .map(|_| ())
            .unwrap_err();
        assert!(Catalog::describe(&e).contains("both energy_class and active_params"));
        let e = Catalog::load(&entry("active_params = -1\n"), &BTreeMap::new()).map(|_| ()).unwrap_err();
        assert!(Catalog::describe(&e).contains("not a parameter count"));
        // A config table that adds a model: default class and world grid, said in a warning;
        // one that overrides an entry may set the parameters, which replace its class.
        let mut o = BTreeMap::new();
        o.insert("vllm/llama".to_string(), RawModel { input: Some(0.0), output: Some(0.0), ..Default::default() });
        o.insert("openai/x".to_string(), RawModel { active_params: Some(8.0), ..Default::default() });
        let (c, f) = Catalog::load(&entry("energy_class = \"frontier\"\nenergy_source = \"guess\"\n"), &o).unwrap();
        let v = &c.get("vllm/llama").unwrap().energy;
        assert!(v.defaulted && v.grid == "WORLD" && v.rates.grid_g_per_kwh == 481, "{v:?}");
        assert!(f.warnings.iter().any(|w| w.contains("vllm/llama") && w.contains("default class")), "{f:?}");
        let x = &c.get("openai/x").unwrap().energy;
        assert_eq!((x.class.as_str(), x.source.as_deref(), x.defaulted), ("small", None, false));
    }

    #[test]
    fn quality_and_quality_unrated_are_checked_by_where_the_entry_comes_from() {
        let chat =
            |extra: &str| format!("[[model]]\nprovider = \"openai\"\nmodel = \"x\"\ninput = 1\noutput = 1\n{extra}");
        // A user catalog file: an entry with neither still loads, with a warning naming it.
        let (c, f) = Catalog::load(&format!("{META}{}", chat("")), &BTreeMap::new()).unwrap();
        assert!(c.get("openai/x").unwrap().quality_unrated.is_none());
        assert!(f.warnings.iter().any(|w| w.contains("openai/x") && w.contains("quality_unrated")), "{:?}", f.warnings);
        let (c, f) =
            Catalog::load(&format!("{META}{}", chat("quality_unrated = \"not benchmarked\"\n")), &BTreeMap::new())
                .unwrap();
        assert_eq!(c.get("openai/x").unwrap().quality_unrated.as_deref(), Some("not benchmarked"));
        assert!(!f.warnings.iter().any(|w| w.contains("quality_unrated")), "{:?}", f.warnings);
        // Contradictions are errors in any catalog.
        let e = load(&chat("quality = 1300\nquality_unrated = \"none\"\n")).unwrap_err();
        assert!(e.contains("openai/x") && e.contains("both quality and quality_unrated"), "{e}");
        let e = load(&chat("quality_unrated = \" \"\n")).unwrap_err();
        assert!(e.contains("quality_unrated: empty"), "{e}");
        let e = load("[[model]]\nprovider = \"openai\"\nmodel = \"e\"\nkind = \"embedding\"\ninput = 0.02\nquality_unrated = \"n/a\"\n")
            .unwrap_err();
        assert!(e.contains("openai/e") && e.contains("embeddings are not on the quality scale"), "{e}");
        // The shipped catalog's rule: neither is an error that names the entry.
        let raw = RawModel { input: Some(1.0), output: Some(1.0), ..Default::default() };
        let mut f = Findings::default();
        assert!(model_from_raw_with("openai/x", "catalog model[0] (openai/x)", &raw, false, &[], Rule::Error, &mut f)
            .is_none());
        assert!(
            f.errors[0].contains("openai/x") && f.errors[0].contains("neither quality nor quality_unrated"),
            "{f:?}"
        );
        assert_eq!((rating_rule(true, false), rating_rule(false, false)), (Rule::Error, Rule::Warn));
        assert_eq!((rating_rule(true, true), rating_rule(false, true)), (Rule::None, Rule::None));
        // A config table that adds a model needs no rating and gets no warning.
        let mut o = BTreeMap::new();
        o.insert("vllm/llama".to_string(), RawModel { input: Some(0.0), output: Some(0.0), ..Default::default() });
        let (c, f) = Catalog::load(META, &o).unwrap();
        assert!(c.get("vllm/llama").unwrap().quality.is_none());
        assert!(!f.warnings.iter().any(|w| w.contains("quality")), "{:?}", f.warnings);
    }

    #[test]
    fn config_can_rate_an_unrated_entry_or_unrate_a_rated_one() {
        let base = format!(
            "{META}[[model]]\nprovider = \"qianfan\"\nmodel = \"ernie\"\ninput = 1\noutput = 1\nquality_unrated = \"no score found\"\n\
             [[model]]\nprovider = \"openai\"\nmodel = \"x\"\ninput = 1\noutput = 1\nquality = 1400\nquality_source = \"s\"\nquality_date = \"2026-01-01\"\n"
        );
        let mut o = BTreeMap::new();
        o.insert("qianfan/ernie".to_string(), RawModel { quality: Some(1390.0), ..Default::default() });
        o.insert(
            "openai/x".to_string(),
            RawModel { quality_unrated: Some("our own evals disagree".into()), ..Default::default() },
        );
        let (c, _) = Catalog::load(&base, &o).unwrap_or_else(|f| panic!("{}", Catalog::describe(&f)));
        let e = c.get("qianfan/ernie").unwrap();
        assert_eq!((e.quality, e.quality_unrated.as_deref()), (Some(1390), None));
        let x = c.get("openai/x").unwrap();
        assert_eq!((x.quality, x.quality_source.as_deref()), (None, None));
        assert_eq!(x.quality_unrated.as_deref(), Some("our own evals disagree"));
    }

    #[test]
    fn prices_are_exact_integers() {
        let c = load("[[model]]\nprovider = \"deepseek\"\nmodel = \"v\"\ninput = 0.14\ncached_input = 0.0028\noutput = 0.28\nprice_source = \"x\"\nprice_date = \"d\"\n").unwrap();
        let m = c.get("deepseek/v").unwrap();
        assert_eq!(m.rates.input, Rate(140_000));
        assert_eq!(m.rates.cached_input, Some(Rate(2_800)));
        assert_eq!(m.rates.output, Rate(280_000));
    }

    #[test]
    fn position_pair_finds_the_joined_id_at_any_length() {
        let long = "m".repeat(300);
        let entry = |m: &str| format!("[[model]]\nprovider = \"deepseek\"\nmodel = \"{m}\"\ninput = 1\noutput = 2\n");
        let c = load(&format!("{}{}", entry("v"), entry(&long))).unwrap();
        let id = |prefix: &str, model: &str| c.position_pair(prefix, model).map(|i| c.models()[i].id.as_str());
        assert_eq!(id("deepseek", "v"), Some("deepseek/v"));
        assert_eq!(id("deepseek", &long), Some(format!("deepseek/{long}").as_str()));
        assert_eq!(id("deepseek", "w"), None);
        assert_eq!(c.get("deepseek/v").map(|m| m.id.as_str()), Some("deepseek/v"));
    }

    #[test]
    fn implausible_missing_unknown_and_duplicate_entries_are_named() {
        let e = load("[[model]]\nprovider = \"openai\"\nmodel = \"x\"\ninput = 0.0000025\noutput = 10\n").unwrap_err();
        assert!(e.contains("openai/x") && e.contains("per-token"), "{e}");
        let e = load("[[model]]\nprovider = \"openai\"\nmodel = \"x\"\ninput = 10000\noutput = 10\n").unwrap_err();
        assert!(e.contains("openai/x") && e.contains("ceiling"), "{e}");
        let e = load("[[model]]\nprovider = \"openai\"\nmodel = \"x\"\ninput = 1\n").unwrap_err();
        assert!(e.contains("missing price"), "{e}");
        let e = load("[[model]]\nprovider = \"nowhere\"\nmodel = \"x\"\ninput = 1\noutput = 1\n").unwrap_err();
        assert!(e.contains("unknown provider \"nowhere\""), "{e}");
        let one = "[[model]]\nprovider = \"openai\"\nmodel = \"x\"\ninput = 1\noutput = 1\n";
        let e = load(&format!("{one}{one}")).unwrap_err();
        assert!(e.contains("duplicate id"), "{e}");
        let ok = Catalog::load(
            "[meta]\nname = \"t\"\ndate = \"d\"\nallow_expensive = [\"openai/o1-pro\"]\n[[model]]\nprovider = \"openai\"\nmodel = \"o1-pro\"\ninput = 150\noutput = 600\n",
            &BTreeMap::new(),
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn tiers_and_ranges_pick_by_prompt_size() {
        let c = load(
            "[[model]]\nprovider = \"gemini\"\nmodel = \"pro\"\ninput = 1.25\noutput = 10\ntiers = [{ above = 200000, input = 2.5, output = 15 }]\n\
             [[model]]\nprovider = \"dashscope\"\nmodel = \"qwen3-max\"\ninput = 1.2\noutput = 6\nranges = [{ from = 0, to = 32000, input = 1.2, output = 6 }, { from = 32000, to = 128000, input = 2.4, output = 12 }]\n",
        )
        .unwrap();
        let g = c.get("gemini/pro").unwrap();
        assert_eq!(g.rates_for(200_000).input, Rate(1_250_000));
        assert_eq!(g.rates_for(200_001).input, Rate(2_500_000));
        let q = c.get("dashscope/qwen3-max").unwrap();
        assert_eq!(q.rates_for(32_000).output, Rate(6_000_000));
        assert_eq!(q.rates_for(32_001).output, Rate(12_000_000));
    }

    #[test]
    fn config_overrides_add_and_replace() {
        let base = format!("{META}[[model]]\nprovider = \"deepseek\"\nmodel = \"deepseek-chat\"\ninput = 0.28\noutput = 0.42\nquality = 1375\n");
        let mut o = BTreeMap::new();
        o.insert("deepseek/deepseek-chat".to_string(), RawModel { output: Some(0.5), ..Default::default() });
        o.insert("vllm/llama".to_string(), RawModel { input: Some(0.0), output: Some(0.0), ..Default::default() });
        let (c, _) = Catalog::load(&base, &o).unwrap();
        let d = c.get("deepseek/deepseek-chat").unwrap();
        assert_eq!((d.rates.input, d.rates.output, d.quality), (Rate(280_000), Rate(500_000), Some(1375)));
        assert_eq!(c.get("vllm/llama").unwrap().rates.input, Rate(0));
        let plain = Catalog::load(&base, &BTreeMap::new()).unwrap().0;
        assert_ne!(plain.version, c.version, "overrides change the catalog version");
    }
}
