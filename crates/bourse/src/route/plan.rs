//! The planner: of every model the gateway can reach, which are feasible for this request
//! and in what order to try them.
//!
//! Feasible = catalog chat models on configured providers, minus policy exclusions
//! (maker's country and hosting jurisdiction are separate checks), minus models lacking a
//! capability the request needs, minus models whose context cannot hold the estimated
//! prompt plus `max_tokens`, minus models below the quality floor, minus models whose
//! worst-case cost exceeds the request's ceiling or the policy's price cap. Ranking is by
//! expected cost (integer pico-dollars), ties broken by health and then observed latency.
//! Exclusions are kept as small enums and only turned into text when someone reads them
//! (the no-feasible-model error, `quote`), so planning stays allocation-light: it runs
//! on every routed request.

use super::evidence::{self, Quality, RouteTable};
use crate::canonical::Needs;
use crate::catalog::{Model, Rates};
use crate::config::Policy;
use crate::meter::Cost;
use crate::provider::Provider;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One routable (provider, model) pair, built once at start-up.
#[derive(Debug)]
pub struct Entry {
    /// `provider_id/model`, the health key and what clients see.
    pub key: Arc<str>,
    pub provider: Arc<Provider>,
    pub model: Model,
    /// Observed average visible+reasoning output tokens (EWMA ×1000; 0 = no sample yet).
    avg_output_milli: AtomicU64,
}

impl Entry {
    pub fn new(provider: Arc<Provider>, model: Model) -> Entry {
        let key = Arc::from(format!("{}/{}", provider.id, model.model));
        Entry { key, provider, model, avg_output_milli: AtomicU64::new(0) }
    }

    pub fn observed_output(&self) -> Option<u64> {
        match self.avg_output_milli.load(Ordering::Relaxed) {
            0 => None,
            m => Some(m.div_ceil(1000)),
        }
    }

    /// Fold a completed request's output tokens into the average (EWMA, α = 0.2). A lost
    /// update under contention only nudges an estimate, so relaxed atomics are enough.
    pub fn observe_output(&self, tokens: u64) {
        let sample = tokens.saturating_mul(1000).max(1);
        let old = self.avg_output_milli.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { (old * 4 + sample) / 5 };
        self.avg_output_milli.store(new.max(1), Ordering::Relaxed);
    }
}

/// Everything the planner needs to know about one request.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub policy: &'a Policy,
    pub min_quality: u32,
    /// Ceiling on this request's worst-case cost.
    pub max_cost: Option<Cost>,
    pub needs: Needs,
    pub stream: bool,
    /// The request set `reasoning_effort`.
    pub reasoning: bool,
    pub prompt_tokens: u64,
    pub max_tokens: Option<u64>,
    /// Output expected when neither max_tokens nor an observed average says otherwise.
    pub default_output: u64,
    /// The route's evidence (None: it has none).
    pub evidence: Option<&'a RouteTable>,
    /// The floor on evidence, for models with evidence on this route.
    pub min_score_ppm: Option<u32>,
    pub relative: Option<RelativeFloor<'a>>,
}

/// A floor relative to a reference model on the same task, resolved for one plan.
#[derive(Debug, Clone)]
pub struct RelativeFloor<'a> {
    /// The share, ppm.
    pub ppm: u32,
    pub reference: &'a Arc<str>,
    /// The reference's observed score on this route, ppm (None: no evidence for it here).
    pub reference_mean_ppm: Option<u32>,
    /// The reference's catalog score (None: unrated).
    pub reference_quality: Option<u32>,
}

/// Why a model was left out. Kept small; rendered on demand.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Exclusion {
    ProviderNotAllowed,
    ProviderDenied,
    OriginDenied {
        origin: String,
    },
    OriginUnknown,
    HostingDenied {
        hosting: String,
    },
    HostingUnknown,
    NotOpenWeights,
    MissingCapability {
        capability: &'static str,
    },
    ContextTooSmall {
        needed: u64,
        context: u64,
    },
    BelowQuality {
        quality: Option<u32>,
        floor: u32,
    },
    /// Its evidence on the route (Wilson lower bound, ppm) is under the route's `min_score`.
    BelowScore {
        lower_ppm: u32,
        n: u64,
        floor_ppm: u32,
    },
    /// Its evidence is under the share of the reference's observed score.
    BelowReference {
        lower_ppm: u32,
        n: u64,
        needed_ppm: u32,
        reference: Arc<str>,
    },
    /// Without evidence to compare, its catalog score is under the reference's.
    BelowReferenceCatalog {
        quality: Option<u32>,
        reference_quality: Option<u32>,
        reference: Arc<str>,
    },
    OverPriceCap {
        blended_usd_per_mtok: f64,
        cap: f64,
    },
    OverCostCeiling {
        max_cost_usd: String,
        ceiling_usd: String,
    },
    CircuitOpen,
}

impl Exclusion {
    pub fn describe(&self) -> String {
        match self {
            Exclusion::ProviderNotAllowed => "provider not in the policy's allow_providers".into(),
            Exclusion::ProviderDenied => "provider in the policy's deny_providers".into(),
            Exclusion::OriginDenied { origin } => format!("made in {origin} (deny_origin)"),
            Exclusion::OriginUnknown => "maker's country unknown while deny_origin is set".into(),
            Exclusion::HostingDenied { hosting } => format!("hosted in {hosting} (deny_hosting)"),
            Exclusion::HostingUnknown => "hosting jurisdiction unknown while deny_hosting is set".into(),
            Exclusion::NotOpenWeights => "not open weights (open_weights_only)".into(),
            Exclusion::MissingCapability { capability } => format!("no {capability} support"),
            Exclusion::ContextTooSmall { needed, context } => {
                format!("context {context} tokens cannot hold ~{needed} (prompt + max_tokens)")
            }
            Exclusion::BelowQuality { quality: Some(q), floor } => format!("quality {q} below the floor {floor}"),
            Exclusion::BelowQuality { quality: None, floor } => format!("unrated, below the floor {floor}"),
            Exclusion::BelowScore { lower_ppm, n, floor_ppm } => format!(
                "evidence lower bound {} (n={n}) below min_score {}",
                evidence::share(*lower_ppm),
                evidence::share(*floor_ppm)
            ),
            Exclusion::BelowReference { lower_ppm, n, needed_ppm, reference } => format!(
                "evidence lower bound {} (n={n}) below {} needed relative to {reference}",
                evidence::share(*lower_ppm),
                evidence::share(*needed_ppm)
            ),
            Exclusion::BelowReferenceCatalog { quality, reference_quality, reference } => format!(
                "no evidence to compare with {reference} on this route; catalog quality {} is below its {}",
                quality.map_or("unrated".to_string(), |q| q.to_string()),
                reference_quality.map_or("unrated".to_string(), |q| q.to_string())
            ),
            Exclusion::OverPriceCap { blended_usd_per_mtok, cap } => {
                format!("blended ${blended_usd_per_mtok}/1M above max_price_per_mtok {cap}")
            }
            Exclusion::OverCostCeiling { max_cost_usd, ceiling_usd } => {
                format!("worst case ${max_cost_usd} above the ceiling ${ceiling_usd}")
            }
            Exclusion::CircuitOpen => "circuit open after repeated failures".into(),
        }
    }

    /// A short label grouping exclusions in error messages.
    pub fn constraint(&self) -> &'static str {
        match self {
            Exclusion::ProviderNotAllowed | Exclusion::ProviderDenied => "providers",
            Exclusion::OriginDenied { .. } | Exclusion::OriginUnknown => "deny_origin",
            Exclusion::HostingDenied { .. } | Exclusion::HostingUnknown => "deny_hosting",
            Exclusion::NotOpenWeights => "open_weights_only",
            Exclusion::MissingCapability { capability } => capability,
            Exclusion::ContextTooSmall { .. } => "context",
            Exclusion::BelowQuality { .. }
            | Exclusion::BelowReference { .. }
            | Exclusion::BelowReferenceCatalog { .. } => "min_quality",
            Exclusion::BelowScore { .. } => "min_score",
            Exclusion::OverPriceCap { .. } => "max_price_per_mtok",
            Exclusion::OverCostCeiling { .. } => "max_cost",
            Exclusion::CircuitOpen => "health",
        }
    }
}

/// A feasible candidate with its cost range (integer pico-USD).
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub entry: usize,
    pub min_pico: u128,
    pub expected_pico: u128,
    pub max_pico: u128,
    pub healthy: bool,
    /// EWMA time to first byte in microseconds (u64::MAX when unknown, so it sorts last).
    pub latency_us: u64,
    /// Its evidence on the route, if any (else its catalog score speaks for it).
    pub evidence: Option<Quality>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub candidates: Vec<Candidate>,
    pub excluded: Vec<(usize, Exclusion)>,
}

fn pico_to_cost(p: u128) -> Cost {
    Cost(i64::try_from(p.div_ceil(1000)).unwrap_or(i64::MAX))
}

pub fn cost_of(p: u128) -> Cost {
    pico_to_cost(p)
}

fn blended_usd(r: &Rates) -> f64 {
    (3.0 * r.input.usd_per_mtok() + r.output.usd_per_mtok()) / 4.0
}

fn matches_any(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x.eq_ignore_ascii_case(v))
}

/// Check one entry (index `i`) against the hard constraints (everything but cost and health).
fn exclude(i: usize, e: &Entry, ask: &Ask<'_>) -> Option<Exclusion> {
    if let Some(x) = policy_exclusion(e, ask.policy) {
        return Some(x);
    }
    let m = &e.model;
    let caps = &m.capabilities;
    for (needed, has, name) in [
        (ask.needs.tools, caps.tools, "tools"),
        (ask.needs.json_schema, caps.json_schema, "json_schema"),
        (ask.needs.vision, caps.vision, "vision"),
        (ask.reasoning, caps.reasoning, "reasoning"),
        (ask.stream, caps.streaming, "streaming"),
    ] {
        if needed && !has {
            return Some(Exclusion::MissingCapability { capability: name });
        }
    }
    if let Some(context) = m.context {
        let needed = ask.prompt_tokens + ask.max_tokens.unwrap_or(0);
        if needed > context {
            return Some(Exclusion::ContextTooSmall { needed, context });
        }
    }
    quality_exclusion(ask.evidence.and_then(|t| t.get(i)), m.quality, ask)
}

/// The quality floors: a relative floor (on evidence when both the model and the reference
/// have some on the route, else on catalog scores), then `min_score` for a model with
/// evidence, else the catalog floor.
fn quality_exclusion(evidence: Option<Quality>, quality: Option<u32>, ask: &Ask<'_>) -> Option<Exclusion> {
    if let Some(rel) = &ask.relative {
        match (evidence, rel.reference_mean_ppm) {
            (Some(q), Some(mean)) => {
                let needed_ppm = (u64::from(mean) * u64::from(rel.ppm) / u64::from(evidence::PPM)) as u32;
                if q.lower_ppm < needed_ppm {
                    let reference = rel.reference.clone();
                    return Some(Exclusion::BelowReference { lower_ppm: q.lower_ppm, n: q.n, needed_ppm, reference });
                }
            }
            _ => {
                if rel.reference_quality.is_none_or(|r| quality.is_none_or(|q| q < r)) {
                    let reference = rel.reference.clone();
                    let reference_quality = rel.reference_quality;
                    return Some(Exclusion::BelowReferenceCatalog { quality, reference_quality, reference });
                }
            }
        }
    }
    if let (Some(q), Some(floor_ppm)) = (evidence, ask.min_score_ppm) {
        if q.lower_ppm < floor_ppm {
            return Some(Exclusion::BelowScore { lower_ppm: q.lower_ppm, n: q.n, floor_ppm });
        }
        return None;
    }
    if ask.min_quality > 0 && quality.is_none_or(|q| q < ask.min_quality) {
        return Some(Exclusion::BelowQuality { quality, floor: ask.min_quality });
    }
    None
}

/// What a data policy says of one entry: who may serve it, where its maker and its hosting
/// are, whether its weights are open, its price. Also checked for explicitly named models
/// when a virtual key carries a policy.
pub fn policy_exclusion(e: &Entry, p: &Policy) -> Option<Exclusion> {
    model_policy_exclusion(&e.provider.id, e.provider.hosting, &e.model, p)
}

/// [`policy_exclusion`] for a catalog model served by `provider`, whose endpoint processes
/// requests in `provider_hosting` when the catalog does not say where the model is hosted
/// (the market view asks it of every catalog model, configured or not).
pub fn model_policy_exclusion(
    provider: &str,
    provider_hosting: Option<&str>,
    m: &Model,
    p: &Policy,
) -> Option<Exclusion> {
    if !p.allow_providers.is_empty() && !p.allow_providers.iter().any(|a| *a == provider) {
        return Some(Exclusion::ProviderNotAllowed);
    }
    if p.deny_providers.iter().any(|d| *d == provider) {
        return Some(Exclusion::ProviderDenied);
    }
    if !p.deny_origin.is_empty() {
        match &m.origin {
            Some(o) if matches_any(&p.deny_origin, o) => return Some(Exclusion::OriginDenied { origin: o.clone() }),
            Some(_) => {}
            None => return Some(Exclusion::OriginUnknown),
        }
    }
    if !p.deny_hosting.is_empty() {
        // The catalog says where this provider serves the model; the preset is the fallback.
        match m.hosting.as_deref().or(provider_hosting) {
            Some(h) if matches_any(&p.deny_hosting, h) => {
                return Some(Exclusion::HostingDenied { hosting: h.to_string() })
            }
            Some(_) => {}
            None => return Some(Exclusion::HostingUnknown),
        }
    }
    if p.open_weights_only && !m.open_weights {
        return Some(Exclusion::NotOpenWeights);
    }
    if let Some(cap) = p.max_price_per_mtok {
        let b = blended_usd(&m.rates);
        if b > cap {
            return Some(Exclusion::OverPriceCap { blended_usd_per_mtok: b, cap });
        }
    }
    None
}

/// The most output a request can get from `model`: its `max_tokens`, else the model's
/// maximum output, else what its context leaves after the prompt.
fn max_output(model: &Model, prompt_tokens: u64, max_tokens: Option<u64>) -> u64 {
    max_tokens.or(model.max_output).or(model.context.map(|c| c.saturating_sub(prompt_tokens))).unwrap_or(4096)
}

/// A request's worst-case cost on `model` (integer pico-USD): the prompt at the input price
/// plus the most output it can get at the output (or reasoning) price. What the router's
/// cost ceiling and the budgets' reservations are checked against.
pub fn worst_case_pico(model: &Model, prompt_tokens: u64, max_tokens: Option<u64>) -> u128 {
    let r = model.rates_for(prompt_tokens);
    let worst_output = u128::from(r.reasoning_output.unwrap_or(r.output).0.max(r.output.0));
    u128::from(prompt_tokens) * u128::from(r.input.0)
        + u128::from(max_output(model, prompt_tokens, max_tokens)) * worst_output
}

/// Plan a request over `entries`. `health(entry) -> (available, latency_us)`.
pub fn plan(entries: &[Entry], ask: &Ask<'_>, health: impl Fn(&Entry) -> (bool, Option<u64>)) -> Plan {
    let mut out = Plan { candidates: Vec::with_capacity(entries.len()), excluded: Vec::new() };
    let prompt = u128::from(ask.prompt_tokens);
    for (i, e) in entries.iter().enumerate() {
        if let Some(x) = exclude(i, e, ask) {
            out.excluded.push((i, x));
            continue;
        }
        let r = e.model.rates_for(ask.prompt_tokens);
        let input = u128::from(r.input.0);
        let cached = u128::from(r.cached_input.unwrap_or(r.input).0);
        let output = u128::from(r.output.0);
        let max_out = max_output(&e.model, ask.prompt_tokens, ask.max_tokens);
        let expected_out = e.observed_output().unwrap_or(ask.default_output).min(max_out);
        let min_pico = prompt * cached.min(input);
        let expected_pico = prompt * input + u128::from(expected_out) * output;
        let max_pico = worst_case_pico(&e.model, ask.prompt_tokens, ask.max_tokens);
        if let Some(ceiling) = ask.max_cost {
            let worst = pico_to_cost(max_pico);
            if worst > ceiling {
                out.excluded
                    .push((i, Exclusion::OverCostCeiling { max_cost_usd: worst.usd(), ceiling_usd: ceiling.usd() }));
                continue;
            }
        }
        let (healthy, latency) = health(e);
        out.candidates.push(Candidate {
            entry: i,
            min_pico,
            expected_pico,
            max_pico,
            healthy,
            latency_us: latency.unwrap_or(u64::MAX),
            evidence: ask.evidence.and_then(|t| t.get(i)),
        });
    }
    out.candidates.sort_unstable_by(|a, b| {
        (a.expected_pico, !a.healthy, a.latency_us, a.entry).cmp(&(b.expected_pico, !b.healthy, b.latency_us, b.entry))
    });
    out
}

/// Rough prompt tokens without a tokenizer, for routing: bytes of message text and tool
/// definitions / 4, plus framing per message. Cheap enough for every request; the ledger
/// uses the provider's real counts.
pub fn estimate_prompt_tokens(body: &serde_json::Map<String, serde_json::Value>) -> u64 {
    fn text_bytes(v: &serde_json::Value) -> u64 {
        match v {
            serde_json::Value::String(s) => s.len() as u64,
            serde_json::Value::Array(a) => a.iter().map(text_bytes).sum(),
            serde_json::Value::Object(o) => o.iter().filter(|(k, _)| *k != "role").map(|(_, v)| text_bytes(v)).sum(),
            _ => 0,
        }
    }
    let mut bytes = 0;
    let mut messages = 0;
    if let Some(serde_json::Value::Array(ms)) = body.get("messages") {
        messages = ms.len() as u64;
        bytes += ms.iter().map(text_bytes).sum::<u64>();
    }
    if let Some(t) = body.get("tools") {
        bytes += text_bytes(t);
    }
    tokens_for(bytes, messages)
}

/// The estimate from text bytes and message count: bytes / 4, plus framing per message.
fn tokens_for(text_bytes: u64, messages: u64) -> u64 {
    text_bytes.div_ceil(4) + messages * 4 + 3
}

/// [`estimate_prompt_tokens`] and whether `reasoning_effort` is set (not null), read from a
/// request's JSON text instead of its parsed map, which a pass-through request never needs
/// otherwise (building it costs ~5k instructions, more than the rest of the plan). The same
/// members, counted the same way; `None` where the text has
/// something the map would read differently (a member name with escapes, a name twice in
/// one object below the top level: serde_json keeps the last), and the caller uses the map.
///
/// `text` is a JSON object the scanner has already checked (a `RawBody`'s bytes: the peek
/// checked the whole body), so it is only taken apart here, not checked a second time.
pub fn prompt_facts_raw(text: &[u8]) -> Option<(u64, bool)> {
    use crate::dialect::scan::Raw;
    /// Member names seen in one object, to notice a repeated one; objects with more members
    /// than this (no message has them) go to the map.
    const NAMES: usize = 16;
    fn text_bytes(v: Raw<'_>, unsure: &mut bool) -> u64 {
        if v.is_string() {
            return match v.str() {
                Some(s) => s.len() as u64,
                None => {
                    *unsure = true;
                    0
                }
            };
        }
        let mut sum = 0;
        if v.is_array() {
            *unsure |= v.elements(|e| sum += text_bytes(e, unsure)).is_err();
        } else if v.is_object() {
            let (mut names, mut seen) = ([""; NAMES], 0);
            *unsure |= v
                .fields(|k, e| {
                    *unsure |= k.escaped || seen == NAMES || names[..seen].contains(&k.text);
                    if seen < NAMES {
                        names[seen] = k.text;
                        seen += 1;
                    }
                    if k.text != "role" {
                        sum += text_bytes(e, unsure);
                    }
                })
                .is_err();
        }
        sum
    }
    let text = std::str::from_utf8(text).ok()?;
    let (mut messages, mut tools, mut reasoning, mut unsure) = (None, None, None, false);
    Raw::checked(text)
        .fields(|k, v| match k.text {
            _ if k.escaped => unsure = true,
            // serde_json's map keeps the last of a name given twice: so do these.
            "messages" => messages = Some(v),
            "tools" => tools = Some(v),
            "reasoning_effort" => reasoning = Some(v),
            _ => {}
        })
        .ok()?;
    let (mut bytes, mut count) = (0, 0);
    if let Some(ms) = messages.filter(|m| m.is_array()) {
        unsure |= ms
            .elements(|m| {
                count += 1;
                bytes += text_bytes(m, &mut unsure);
            })
            .is_err();
    }
    if let Some(t) = tools {
        bytes += text_bytes(t, &mut unsure);
    }
    let reasoning = reasoning.is_some_and(|r| !r.is_null());
    (!unsure).then_some((tokens_for(bytes, count), reasoning))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-read prompt facts equal the map's on escapes, nesting, non-array `messages` and a
    /// top-level name given twice (the last wins in both); where a map would read the text
    /// differently (an escaped member name, a name twice in a nested object) they decline.
    #[test]
    fn prompt_facts_from_bytes_match_the_map_or_decline() {
        let agree = [
            r#"{"model":"auto","messages":[{"role":"user","content":"h\u00e9llo\n"},{"role":"assistant","content":[{"type":"text","text":"ok"}]}]}"#,
            r#"{"messages":"not a list","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#,
            r#"{"messages":[{"content":"first"}],"messages":[{"content":"second one"}],"reasoning_effort":"low"}"#,
            r#"{"messages":[],"reasoning_effort":null}"#,
            r#"{"messages":[{"role":"user","content":"x","n":1,"b":true,"z":null}],"tools":"t"}"#,
        ];
        for text in agree {
            let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).unwrap();
            let want = (estimate_prompt_tokens(&map), map.get("reasoning_effort").is_some_and(|v| !v.is_null()));
            assert_eq!(prompt_facts_raw(text.as_bytes()), Some(want), "{text}");
        }
        for text in [
            r#"{"messages":[{"r\u006fle":"user","content":"x"}]}"#,
            r#"{"messages":[{"content":"a","content":"bb"}]}"#,
            r#"{"mess\u0061ges":[]}"#,
            r#"[1]"#,
        ] {
            assert_eq!(prompt_facts_raw(text.as_bytes()), None, "{text}");
        }
        // Text the scanner never checked is outside the contract, but still no panic.
        for text in [r#"{"messages":[}"#, r#"{"messages":[{"content":"#, "{", "", "\"x"] {
            let _ = prompt_facts_raw(text.as_bytes());
        }
    }
}
