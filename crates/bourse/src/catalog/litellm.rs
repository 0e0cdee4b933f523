//! Import from LiteLLM's `model_prices_and_context_window.json` into Bourse's catalog
//! format, with a report of every entry rejected and why.
//!
//! LiteLLM stores USD **per token**; Bourse stores USD per 1M tokens. Entries are kept
//! only for providers a Bourse preset serves, in the chat or embedding modes, with both
//! prices present and plausible (the file has known unit mistakes, such as `wandb/*`
//! prices written per million into per-token fields). Each accepted entry is validated by
//! the same rules as the shipped catalog.

use super::{model_from_raw, Findings, Kind, RawModel, RawRange, RawTier};
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// LiteLLM provider name → Bourse provider id.
const PROVIDERS: &[(&str, &str)] = &[
    ("openai", "openai"),
    ("anthropic", "anthropic"),
    ("gemini", "gemini"),
    ("deepseek", "deepseek"),
    ("dashscope", "dashscope"),
    ("moonshot", "moonshot"),
    ("zai", "zai"),
    ("minimax", "minimax"),
    ("mistral", "mistral"),
    ("groq", "groq"),
    ("together_ai", "together"),
    ("fireworks_ai", "fireworks"),
    ("deepinfra", "deepinfra"),
    ("openrouter", "openrouter"),
    ("xai", "xai"),
];

/// Long-context surcharge suffixes LiteLLM uses, with the prompt size they start above.
const TIER_SUFFIXES: &[(&str, u64)] = &[
    ("_above_128k_tokens", 128_000),
    ("_above_200k_tokens", 200_000),
    ("_above_272k_tokens", 272_000),
    ("_above_512k_tokens", 512_000),
];

#[derive(Debug, Default)]
pub struct Import {
    /// The converted catalog, as TOML in Bourse's format.
    pub toml: String,
    pub accepted: usize,
    /// (LiteLLM key, reason).
    pub rejected: Vec<(String, String)>,
}

fn per_m(entry: &Map<String, Value>, key: &str) -> Option<f64> {
    entry.get(key).and_then(Value::as_f64).map(|v| (v * 1e6 * 1e9).round() / 1e9)
}

fn flag(entry: &Map<String, Value>, key: &str) -> bool {
    entry.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// Convert the whole file. `date` is the snapshot date recorded as the price date.
pub fn import(json: &str, date: &str) -> Result<Import, String> {
    let root: Map<String, Value> = serde_json::from_str(json).map_err(|e| format!("not a LiteLLM price file: {e}"))?;
    let mut out = Import::default();
    let mut body = String::new();
    let mut seen = std::collections::HashSet::new();
    for (key, v) in &root {
        if key == "sample_spec" || key == "fallback_generalizations" {
            continue;
        }
        let Some(entry) = v.as_object() else {
            out.rejected.push((key.clone(), "not an object".into()));
            continue;
        };
        let mode = entry.get("mode").and_then(Value::as_str).unwrap_or("");
        let kind = match mode {
            "chat" => Kind::Chat,
            "embedding" => Kind::Embedding,
            other => {
                out.rejected.push((key.clone(), format!("mode \"{other}\" is not chat or embedding")));
                continue;
            }
        };
        let lp = entry.get("litellm_provider").and_then(Value::as_str).unwrap_or("");
        let Some(&(_, provider)) = PROVIDERS.iter().find(|(l, _)| *l == lp) else {
            out.rejected.push((key.clone(), format!("provider \"{lp}\" is not served by a Bourse preset")));
            continue;
        };
        // Host-prefixed keys ("groq/llama-3.3-70b") carry the provider; the rest is the model.
        let model = key.strip_prefix(&format!("{lp}/")).unwrap_or(key).to_string();
        let id = format!("{provider}/{model}");
        if !seen.insert(id.clone()) {
            out.rejected.push((key.clone(), format!("duplicate of {id}")));
            continue;
        }
        let mut raw = RawModel {
            provider: Some(provider.into()),
            model: Some(model.clone()),
            kind: Some(kind),
            input: per_m(entry, "input_cost_per_token"),
            cached_input: per_m(entry, "cache_read_input_token_cost"),
            cache_write_5m: per_m(entry, "cache_creation_input_token_cost"),
            cache_write_1h: per_m(entry, "cache_creation_input_token_cost_above_1hr"),
            output: per_m(entry, "output_cost_per_token"),
            reasoning_output: per_m(entry, "output_cost_per_reasoning_token"),
            context: entry.get("max_input_tokens").and_then(Value::as_u64),
            max_output: entry.get("max_output_tokens").and_then(Value::as_u64),
            price_source: Some(
                entry
                    .get("source")
                    .and_then(Value::as_str)
                    .map_or_else(|| "LiteLLM price file".to_string(), |s| format!("LiteLLM price file ({s})")),
            ),
            price_date: Some(date.to_string()),
            ..RawModel::default()
        };
        for (suffix, above) in TIER_SUFFIXES {
            let input = per_m(entry, &format!("input_cost_per_token{suffix}"));
            let output = per_m(entry, &format!("output_cost_per_token{suffix}"));
            let cached_input = per_m(entry, &format!("cache_read_input_token_cost{suffix}"));
            if input.is_some() || output.is_some() {
                raw.tiers.push(RawTier { above: *above, input, output, cached_input, ..RawTier::default() });
            }
        }
        if let Some(Value::Array(tp)) = entry.get("tiered_pricing") {
            for t in tp {
                let range = t.get("range").and_then(Value::as_array);
                let bound = |i: usize| range.and_then(|r| r.get(i)).and_then(Value::as_f64).map(|x| x as u64);
                let (Some(from), Some(to)) = (bound(0), bound(1)) else { continue };
                let obj = t.as_object().cloned().unwrap_or_default();
                raw.ranges.push(RawRange {
                    from,
                    to,
                    input: per_m(&obj, "input_cost_per_token"),
                    output: per_m(&obj, "output_cost_per_token"),
                    reasoning_output: per_m(&obj, "output_cost_per_reasoning_token"),
                    cached_input: per_m(&obj, "cache_read_input_token_cost"),
                });
            }
            // Ranged entries have no flat price: the first range is the base.
            if let Some(first) = raw.ranges.iter().min_by_key(|r| r.from) {
                raw.input = raw.input.or(first.input);
                raw.output = raw.output.or(first.output);
            }
        }
        let mut caps = Vec::new();
        for (flag_key, name) in [
            ("supports_function_calling", "tools"),
            ("supports_response_schema", "json_schema"),
            ("supports_vision", "vision"),
            ("supports_reasoning", "reasoning"),
        ] {
            if flag(entry, flag_key) {
                caps.push(name.to_string());
            }
        }
        if kind == Kind::Chat {
            caps.push("streaming".into());
        }
        raw.capabilities = Some(caps);
        let mut f = Findings::default();
        if model_from_raw(&id, key, &raw, false, &mut f).is_none() {
            out.rejected.push((key.clone(), f.errors.join("; ")));
            continue;
        }
        write_entry(&mut body, &raw);
        out.accepted += 1;
    }
    out.toml = format!(
        "# Imported from LiteLLM's model_prices_and_context_window.json (MIT, BerriAI/litellm).\n[meta]\nname = \"litellm-import\"\ndate = \"{date}\"\n{body}"
    );
    Ok(out)
}

fn num(v: f64) -> String {
    // Shortest exact decimal that round-trips; TOML needs a digit after the point.
    let s = format!("{v}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn write_entry(out: &mut String, r: &RawModel) {
    let _ = writeln!(out, "\n[[model]]");
    for (k, v) in [("provider", &r.provider), ("model", &r.model)] {
        if let Some(v) = v {
            let _ = writeln!(out, "{k} = {}", toml_str(v));
        }
    }
    if r.kind == Some(Kind::Embedding) {
        let _ = writeln!(out, "kind = \"embedding\"");
    }
    for (k, v) in [
        ("input", r.input),
        ("cached_input", r.cached_input),
        ("cache_write_5m", r.cache_write_5m),
        ("cache_write_1h", r.cache_write_1h),
        ("output", r.output),
        ("reasoning_output", r.reasoning_output),
    ] {
        if let Some(v) = v {
            let _ = writeln!(out, "{k} = {}", num(v));
        }
    }
    if !r.tiers.is_empty() {
        let tiers: Vec<String> = r
            .tiers
            .iter()
            .map(|t| {
                let mut parts = vec![format!("above = {}", t.above)];
                for (k, v) in [("input", t.input), ("output", t.output), ("cached_input", t.cached_input)] {
                    if let Some(v) = v {
                        parts.push(format!("{k} = {}", num(v)));
                    }
                }
                format!("{{ {} }}", parts.join(", "))
            })
            .collect();
        let _ = writeln!(out, "tiers = [{}]", tiers.join(", "));
    }
    if !r.ranges.is_empty() {
        let ranges: Vec<String> = r
            .ranges
            .iter()
            .map(|g| {
                let mut parts = vec![format!("from = {}", g.from), format!("to = {}", g.to)];
                for (k, v) in [("input", g.input), ("output", g.output), ("reasoning_output", g.reasoning_output)] {
                    if let Some(v) = v {
                        parts.push(format!("{k} = {}", num(v)));
                    }
                }
                format!("{{ {} }}", parts.join(", "))
            })
            .collect();
        let _ = writeln!(out, "ranges = [{}]", ranges.join(", "));
    }
    for (k, v) in [("context", r.context), ("max_output", r.max_output)] {
        if let Some(v) = v {
            let _ = writeln!(out, "{k} = {v}");
        }
    }
    if let Some(c) = &r.capabilities {
        let names: Vec<String> = c.iter().map(|n| toml_str(n)).collect();
        let _ = writeln!(out, "capabilities = [{}]", names.join(", "));
    }
    for (k, v) in [("price_source", &r.price_source), ("price_date", &r.price_date)] {
        if let Some(v) = v {
            let _ = writeln!(out, "{k} = {}", toml_str(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Rate};
    use std::collections::BTreeMap;

    const SAMPLE: &str = r#"{
      "sample_spec": {"input_cost_per_token": 0},
      "gpt-4o": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                 "cache_read_input_token_cost": 1.25e-06, "max_input_tokens": 128000, "max_output_tokens": 16384,
                 "supports_function_calling": true, "supports_vision": true, "supports_response_schema": true},
      "deepseek-v4-flash": {"litellm_provider": "deepseek", "mode": "chat", "input_cost_per_token": 1.4e-07,
                 "output_cost_per_token": 2.8e-07, "cache_read_input_token_cost": 2.8e-09},
      "gemini-2.5-pro": {"litellm_provider": "gemini", "mode": "chat", "input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
                 "input_cost_per_token_above_200k_tokens": 2.5e-06, "output_cost_per_token_above_200k_tokens": 1.5e-05},
      "dashscope/qwen3-max": {"litellm_provider": "dashscope", "mode": "chat", "tiered_pricing": [
                 {"range": [0, 32000], "input_cost_per_token": 1.2e-06, "output_cost_per_token": 6e-06},
                 {"range": [32000, 128000], "input_cost_per_token": 2.4e-06, "output_cost_per_token": 1.2e-05}]},
      "text-embedding-3-small": {"litellm_provider": "openai", "mode": "embedding", "input_cost_per_token": 2e-08, "output_cost_per_token": 0},
      "wandb/Qwen/Qwen3-235B": {"litellm_provider": "wandb", "mode": "chat", "input_cost_per_token": 0.01, "output_cost_per_token": 0.01},
      "together_ai/bad-units": {"litellm_provider": "together_ai", "mode": "chat", "input_cost_per_token": 0.0009, "output_cost_per_token": 0.0009},
      "groq/no-price": {"litellm_provider": "groq", "mode": "chat"},
      "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation"}
    }"#;

    #[test]
    fn sample_converts_and_rejects_with_reasons() {
        let imp = import(SAMPLE, "2026-07-18").unwrap();
        assert_eq!(imp.accepted, 5, "{:?}", imp.rejected);
        let reason = |k: &str| imp.rejected.iter().find(|(key, _)| key == k).map(|(_, r)| r.clone()).unwrap();
        assert!(reason("wandb/Qwen/Qwen3-235B").contains("not served"));
        assert!(reason("together_ai/bad-units").contains("ceiling"), "{}", reason("together_ai/bad-units"));
        assert!(reason("groq/no-price").contains("missing price"));
        assert!(reason("dall-e-3").contains("image_generation"));
        let (cat, _) = Catalog::load(&imp.toml, &BTreeMap::new())
            .unwrap_or_else(|f| panic!("{}\n{}", Catalog::describe(&f), imp.toml));
        let g = cat.get("openai/gpt-4o").unwrap();
        assert_eq!(
            (g.rates.input, g.rates.cached_input, g.rates.output),
            (Rate(2_500_000), Some(Rate(1_250_000)), Rate(10_000_000))
        );
        assert!(g.capabilities.tools && g.capabilities.vision && g.capabilities.json_schema);
        assert_eq!(cat.get("deepseek/deepseek-v4-flash").unwrap().rates.cached_input, Some(Rate(2_800)));
        assert_eq!(cat.get("gemini/gemini-2.5-pro").unwrap().rates_for(300_000).input, Rate(2_500_000));
        let q = cat.get("dashscope/qwen3-max").unwrap();
        assert_eq!((q.rates_for(1000).input, q.rates_for(64_000).input), (Rate(1_200_000), Rate(2_400_000)));
    }

    /// Extra check on the full LiteLLM file in ../shared (ignored, with the reason, when absent).
    #[test]
    #[cfg_attr(not(shared_data), ignore = "needs ../shared beside the repository (LiteLLM's price file)")]
    fn full_litellm_file_imports() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/catalog/litellm_model_prices.json");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let imp = import(&text, "2026-07-18").unwrap();
        assert!(imp.accepted > 300, "accepted only {}", imp.accepted);
        // The known per-token/per-million unit mistakes never get in.
        assert!(imp.rejected.iter().any(|(k, _)| k.starts_with("wandb/")));
        let (cat, _) =
            Catalog::load(&imp.toml, &BTreeMap::new()).unwrap_or_else(|f| panic!("{}", Catalog::describe(&f)));
        assert_eq!(cat.models().len(), imp.accepted);
        assert_eq!(cat.get("deepseek/deepseek-chat").map(|m| m.rates.input), Some(Rate(280_000)));
    }
}
