//! `bourse catalog`: the catalog as an aligned table, JSON or CSV, filtered,
//! sorted, and priced relative to a reference model so the gap between premium and
//! low-cost models is visible at a glance.
//!
//! Prices are shown from the catalog's integer [`Rate`]s rather than from floats, so a
//! table cell reads exactly what the catalog says ($0.0028 stays 0.0028, not 0.003 or
//! 0.0027999999). The blended price is (3·input + output)/4, as [`Model::blended`] defines
//! it; here it is computed on the integers so sorting and display agree exactly.
//!
//! A chat model the catalog leaves unrated with a stated reason (`quality_unrated`) carries
//! that reason in JSON and CSV. The table marks it `unrated*` and lists the reasons under
//! the summary line, once per distinct reason, so the rows stay one line each.

use super::{csv_field, Format};
use crate::catalog::{Catalog, Kind, Model, Rate};
use serde::Serialize;
use std::cmp::Ordering;
use std::fmt::Write as _;

/// What to order rows by. Ties always fall back to the id, so output is deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Blended,
    Input,
    Output,
    /// Unrated models sort last in either direction: "no signal" is not "worst".
    Quality,
    Name,
    /// Price relative to the reference; the same order as `Blended`.
    Ratio,
}

/// Which models to show. Every set field must match; string fields compare
/// case-insensitively (`--origin us` finds `US`).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Exact provider id.
    pub provider: Option<String>,
    pub kind: Option<Kind>,
    /// ISO country of the maker.
    pub origin: Option<String>,
    /// Where the provider processes requests (ISO country or `EU`).
    pub hosting: Option<String>,
    pub open_weights_only: bool,
    /// Unrated models never pass a quality floor.
    pub min_quality: Option<u32>,
    /// Upper bound on the blended price, USD per 1M tokens (inclusive).
    pub max_blended: Option<f64>,
    /// Substring of the id, case-insensitive.
    pub search: Option<String>,
}

impl Filter {
    fn matches(&self, m: &Model) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| match want {
            None => true,
            Some(w) => have.is_some_and(|h| h.eq_ignore_ascii_case(w)),
        };
        eq(&self.provider, Some(&m.provider))
            && self.kind.is_none_or(|k| k == m.kind)
            && eq(&self.origin, m.origin.as_deref())
            && eq(&self.hosting, m.hosting.as_deref())
            && (!self.open_weights_only || m.open_weights)
            && self.min_quality.is_none_or(|q| m.quality.is_some_and(|mq| mq >= q))
            && self.max_blended.is_none_or(|max| blended_usd(m) <= max)
            && self.search.as_ref().is_none_or(|s| m.id.to_lowercase().contains(&s.to_lowercase()))
    }
}

/// The router's named quality tiers (catalog/README.md, "Quality scale and named tiers").
pub fn tier_name(quality: Option<u32>) -> &'static str {
    match quality {
        None => "unrated",
        Some(q) if q >= 1420 => "frontier",
        Some(q) if q >= 1370 => "strong",
        Some(q) if q >= 1300 => "adequate",
        Some(_) => "basic",
    }
}

/// 4 × the blended price in pico-USD per token: 3·input + output. Kept as an integer (and
/// in u128, since a config override can push a rate near u64::MAX) so that comparisons are
/// exact and ties are real ties.
fn blended4(m: &Model) -> u128 {
    3 * u128::from(m.rates.input.0) + u128::from(m.rates.output.0)
}

/// Blended USD per 1M tokens. One correctly rounded division from the exact integer, so
/// JSON shows 0.175 rather than 0.17500000000000002.
fn blended_usd(m: &Model) -> f64 {
    blended4(m) as f64 / 4_000_000.0
}

fn rate_usd(r: Rate) -> f64 {
    r.0 as f64 / 1_000_000.0
}

/// `units / 10^digits` as an exact decimal, trailing zeros trimmed down to `min_decimals`.
fn fixed(units: u128, digits: u32, min_decimals: usize) -> String {
    let scale = 10u128.pow(digits);
    let mut frac = format!("{:0width$}", units % scale, width = digits as usize);
    while frac.len() > min_decimals && frac.ends_with('0') {
        frac.pop();
    }
    if frac.is_empty() {
        format!("{}", units / scale)
    } else {
        format!("{}.{frac}", units / scale)
    }
}

/// A rate in USD per 1M tokens, exactly (rates are micro-USD per 1M, i.e. 6 decimals).
fn price(r: Rate, min_decimals: usize) -> String {
    fixed(u128::from(r.0), 6, min_decimals)
}

/// The blended price: (3·in + out)/4 has at most 8 decimals in USD per 1M. CSV gets all of
/// them; the table rounds to the catalog's own 6 decimals (half up) to stay narrow.
fn blended_price(m: &Model) -> String {
    fixed(blended4(m) * 25, 8, 0)
}

fn blended_price_short(m: &Model) -> String {
    fixed((blended4(m) * 25 + 50) / 100, 6, 2)
}

/// "0.06×" style: two decimals, but two significant digits below 0.01 so a model 3000×
/// cheaper than the reference does not read as 0.00×.
fn ratio_text(r: f64) -> String {
    if r == 0.0 {
        return "0×".into();
    }
    if r >= 0.01 {
        return format!("{r:.2}×");
    }
    let (mut decimals, mut t) = (2usize, r * 100.0);
    while t < 10.0 && decimals < 12 {
        t *= 10.0;
        decimals += 1;
    }
    format!("{r:.decimals$}×")
}

/// How many times cheaper: whole numbers from 10× up, one decimal below.
fn factor_text(f: f64) -> String {
    if f >= 10.0 {
        format!("{f:.0}×")
    } else {
        format!("{f:.1}×")
    }
}

/// Context windows are read at a glance in the table (1.05M, 272k); exact in JSON/CSV.
fn context_text(c: Option<u64>) -> String {
    match c {
        None => String::new(),
        Some(n) if n >= 1_000_000 => format!("{}M", fixed(u128::from(n / 10_000), 2, 0)),
        Some(n) if n >= 1_000 => format!("{}k", (n + 500) / 1_000),
        Some(n) => n.to_string(),
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Chat => "chat",
        Kind::Embedding => "embedding",
    }
}

fn compare(a: &Model, b: &Model, sort: SortKey, descending: bool) -> Ordering {
    let primary = match sort {
        SortKey::Blended | SortKey::Ratio => blended4(a).cmp(&blended4(b)),
        SortKey::Input => a.rates.input.cmp(&b.rates.input),
        SortKey::Output => a.rates.output.cmp(&b.rates.output),
        SortKey::Name => a.id.cmp(&b.id),
        SortKey::Quality => match (a.quality, b.quality) {
            (Some(x), Some(y)) => x.cmp(&y),
            // Unrated last whichever way the rated ones run, so decide before reversing.
            (Some(_), None) => return Ordering::Less,
            (None, Some(_)) => return Ordering::Greater,
            (None, None) => Ordering::Equal,
        },
    };
    let primary = if descending { primary.reverse() } else { primary };
    primary.then_with(|| blended4(a).cmp(&blended4(b))).then_with(|| a.id.cmp(&b.id))
}

/// One output row, shared by all three formats (field order is the column order).
#[derive(Serialize)]
struct Row<'a> {
    id: &'a str,
    kind: &'static str,
    input: f64,
    output: f64,
    blended: f64,
    quality: Option<u32>,
    tier: &'static str,
    /// The catalog's reason for having no score; None when rated or when none is given.
    quality_unrated: Option<&'a str>,
    origin: Option<&'a str>,
    hosting: Option<&'a str>,
    open_weights: bool,
    license: Option<&'a str>,
    context: Option<u64>,
    capabilities: Vec<&'static str>,
    /// Blended price over the reference's; None when the reference is free.
    vs_ref: Option<f64>,
    /// JSON only: the energy estimate's class, its source, whether it is the default, the
    /// grid region and the integer rates.
    energy: &'a crate::catalog::energy::ModelEnergy,
    #[serde(skip)]
    model: &'a Model,
}

impl<'a> Row<'a> {
    fn new(m: &'a Model, reference4: u128) -> Row<'a> {
        Row {
            id: &m.id,
            kind: kind_name(m.kind),
            input: rate_usd(m.rates.input),
            output: rate_usd(m.rates.output),
            blended: blended_usd(m),
            quality: m.quality,
            tier: tier_name(m.quality),
            quality_unrated: m.quality_unrated.as_deref(),
            origin: m.origin.as_deref(),
            hosting: m.hosting.as_deref(),
            open_weights: m.open_weights,
            license: m.license.as_deref(),
            context: m.context,
            capabilities: m.capabilities.names(),
            vs_ref: (reference4 > 0).then(|| blended4(m) as f64 / reference4 as f64),
            energy: &m.energy,
            model: m,
        }
    }
}

#[derive(Serialize)]
struct JsonOut<'a> {
    catalog: &'a str,
    reference: &'a str,
    models: &'a [Row<'a>],
}

/// Render the catalog. `reference` is a catalog id (e.g. `openai/gpt-4o`) that every row's
/// blended price is compared to; it must exist in the catalog but need not pass the filter.
/// Table and CSV output end with a newline; JSON is pretty-printed with a trailing newline.
pub fn render(
    catalog: &Catalog,
    reference: &str,
    filter: &Filter,
    sort: SortKey,
    descending: bool,
    format: Format,
) -> Result<String, String> {
    let Some(reference_model) = catalog.get(reference) else {
        return Err(format!(
            "reference model \"{reference}\" is not in the catalog ({}); give a provider/model id such as openai/gpt-4o",
            catalog.version
        ));
    };
    let reference4 = blended4(reference_model);
    let mut models: Vec<&Model> = catalog.models().iter().filter(|m| filter.matches(m)).collect();
    models.sort_by(|a, b| compare(a, b, sort, descending));
    let rows: Vec<Row> = models.iter().map(|m| Row::new(m, reference4)).collect();
    match format {
        Format::Json => {
            let out = JsonOut { catalog: &catalog.version, reference, models: &rows };
            serde_json::to_string_pretty(&out).map(|s| s + "\n").map_err(|e| format!("catalog JSON: {e}"))
        }
        Format::Csv => Ok(csv(&rows)),
        Format::Table => Ok(table(catalog, reference_model, &rows)),
    }
}

const CSV_HEADER: [&str; 14] = [
    "id",
    "kind",
    "input",
    "output",
    "blended",
    "quality",
    "tier",
    "quality_unrated",
    "origin",
    "hosting",
    "open_weights",
    "context",
    "capabilities",
    "vs_ref",
];

fn csv(rows: &[Row]) -> String {
    let mut out = CSV_HEADER.join(",");
    out.push('\n');
    for r in rows {
        let m = r.model;
        let fields = [
            r.id.to_string(),
            r.kind.to_string(),
            price(m.rates.input, 0),
            price(m.rates.output, 0),
            blended_price(m),
            r.quality.map(|q| q.to_string()).unwrap_or_default(),
            r.tier.to_string(),
            r.quality_unrated.unwrap_or_default().to_string(),
            r.origin.unwrap_or_default().to_string(),
            r.hosting.unwrap_or_default().to_string(),
            if r.open_weights { "yes" } else { "no" }.to_string(),
            r.context.map(|c| c.to_string()).unwrap_or_default(),
            r.capabilities.join(","),
            r.vs_ref.map(|v| v.to_string()).unwrap_or_default(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

fn table(catalog: &Catalog, reference: &Model, rows: &[Row]) -> String {
    // (header, right-aligned): numbers align on the right so magnitudes line up.
    const COLUMNS: [(&str, bool); 13] = [
        ("id", false),
        ("kind", false),
        ("input $/1M", true),
        ("output $/1M", true),
        ("blended 3:1 $/1M", true),
        ("quality", true),
        ("tier", false),
        ("origin", false),
        ("hosting", false),
        ("open weights", false),
        ("context", true),
        ("capabilities", false),
        ("vs ref", true),
    ];
    let cells: Vec<[String; 13]> = rows
        .iter()
        .map(|r| {
            let m = r.model;
            [
                r.id.to_string(),
                r.kind.to_string(),
                price(m.rates.input, 2),
                price(m.rates.output, 2),
                blended_price_short(m),
                r.quality.map(|q| q.to_string()).unwrap_or_default(),
                if r.quality_unrated.is_some() { format!("{}{UNRATED_MARK}", r.tier) } else { r.tier.to_string() },
                r.origin.unwrap_or_default().to_string(),
                r.hosting.unwrap_or_default().to_string(),
                if r.open_weights { "yes" } else { "no" }.to_string(),
                context_text(r.context),
                r.capabilities.join(","),
                r.vs_ref.map(ratio_text).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    // Widths in chars, not bytes: "×" is two bytes but one column.
    let mut widths = COLUMNS.map(|(h, _)| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: [&str; 13]| {
        let mut l = String::new();
        for (i, c) in cols.iter().enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let pad = " ".repeat(widths[i].saturating_sub(c.chars().count()));
            if COLUMNS[i].1 {
                l.push_str(&pad);
                l.push_str(c);
            } else {
                l.push_str(c);
                l.push_str(&pad);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(COLUMNS.map(|(h, _)| h));
    for row in &cells {
        line(std::array::from_fn(|i| row[i].as_str()));
    }
    out.push_str(&footer(catalog, reference, rows));
    out.push_str(&unrated_reasons(rows));
    out
}

/// Appended to the tier of a row whose reason is listed under the table.
const UNRATED_MARK: char = '*';

/// The reasons behind the `unrated*` rows, one line per distinct reason in row order, with
/// every id that shares it (hosted copies of one model usually do). Empty when no row has one.
fn unrated_reasons(rows: &[Row]) -> String {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in rows {
        let Some(why) = r.quality_unrated else { continue };
        match groups.iter_mut().find(|(w, _)| *w == why) {
            Some((_, ids)) => ids.push(r.id),
            None => groups.push((why, vec![r.id])),
        }
    }
    if groups.is_empty() {
        return String::new();
    }
    let mut s = format!("{UNRATED_MARK} unrated, with the catalog's reason (quality_unrated):\n");
    for (why, ids) in groups {
        let _ = writeln!(s, "  {}: {why}", ids.join(", "));
    }
    s
}

/// The summary line. "Cheapest" is the cheapest *paid* model of the reference's kind among
/// the rows shown: a free model would make the factor infinite, and an embedding model
/// is no substitute for a chat reference.
fn footer(catalog: &Catalog, reference: &Model, rows: &[Row]) -> String {
    let n = rows.len();
    let mut s = format!(
        "{n} model{} · catalog {} · reference {} (blended ${}/1M)",
        if n == 1 { "" } else { "s" },
        catalog.version,
        reference.id,
        blended_price_short(reference)
    );
    let same_kind = rows.iter().map(|r| r.model).filter(|m| m.kind == reference.kind);
    let free = same_kind.clone().filter(|m| blended4(m) == 0).count();
    if let Some(cheapest) = same_kind.filter(|m| blended4(m) > 0).min_by_key(|m| (blended4(m), &m.id)) {
        let _ = write!(s, " · cheapest: {} ${}/1M", cheapest.id, blended_price_short(cheapest));
        let (c, r) = (blended4(cheapest), blended4(reference));
        let _ = match c.cmp(&r) {
            Ordering::Less => write!(s, " ({} cheaper than reference)", factor_text(r as f64 / c as f64)),
            Ordering::Equal => write!(s, " (same as reference)"),
            Ordering::Greater => write!(s, " ({} the reference price)", factor_text(c as f64 / r as f64)),
        };
    }
    if free > 0 {
        let _ = write!(s, " · {free} free model{}", if free == 1 { "" } else { "s" });
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Rates;
    use std::collections::BTreeMap;

    const TEXT: &str = r#"[meta]
name = "t"
date = "d"

[[model]]
provider = "openai"
model = "gpt-4o"
input = 2.5
output = 10
quality = 1285
context = 128000
capabilities = ["tools", "vision"]
origin = "US"
hosting = "US"

[[model]]
provider = "openai"
model = "gpt-5.5"
input = 5
output = 30
quality = 1445
context = 1050000
origin = "US"
hosting = "US"

[[model]]
provider = "deepseek"
model = "deepseek-v4-flash"
input = 0.14
cached_input = 0.0028
output = 0.28
origin = "CN"
hosting = "CN"
open_weights = true
license = "MIT"
quality_unrated = "no public score yet, as of 2026-07"

[[model]]
provider = "mistral"
model = "mistral-small"
input = 0.06
output = 0.18
quality = 1335
origin = "FR"
hosting = "EU"
open_weights = true
license = "Apache-2.0"

[[model]]
provider = "zai"
model = "glm-4.7-flash"
input = 0
output = 0
quality = 1380
origin = "CN"
hosting = "SG"

[[model]]
provider = "openai"
model = "text-embedding-3-small"
kind = "embedding"
input = 0.02
"#;

    fn cat() -> Catalog {
        Catalog::load(TEXT, &BTreeMap::new()).map(|(c, _)| c).unwrap_or_else(|f| panic!("{}", Catalog::describe(&f)))
    }

    fn ids(filter: &Filter, sort: SortKey, descending: bool) -> Vec<String> {
        let out = render(&cat(), "openai/gpt-4o", filter, sort, descending, Format::Csv).unwrap();
        out.lines().skip(1).map(|l| l.split(',').next().unwrap().to_string()).collect()
    }

    #[test]
    fn tiers_follow_the_readme_boundaries() {
        assert_eq!(tier_name(None), "unrated");
        assert_eq!(tier_name(Some(1420)), "frontier");
        assert_eq!(tier_name(Some(1419)), "strong");
        assert_eq!(tier_name(Some(1370)), "strong");
        assert_eq!(tier_name(Some(1300)), "adequate");
        assert_eq!(tier_name(Some(1299)), "basic");
    }

    #[test]
    fn filters_narrow_the_rows() {
        let f = |f: Filter| ids(&f, SortKey::Name, false);
        assert_eq!(f(Filter { provider: Some("OpenAI".into()), ..Default::default() }).len(), 3);
        assert_eq!(f(Filter { kind: Some(Kind::Embedding), ..Default::default() }), ["openai/text-embedding-3-small"]);
        assert_eq!(
            f(Filter { origin: Some("cn".into()), ..Default::default() }),
            ["deepseek/deepseek-v4-flash", "zai/glm-4.7-flash"]
        );
        assert_eq!(f(Filter { hosting: Some("EU".into()), ..Default::default() }), ["mistral/mistral-small"]);
        assert_eq!(
            f(Filter { open_weights_only: true, ..Default::default() }),
            ["deepseek/deepseek-v4-flash", "mistral/mistral-small"]
        );
        // Unrated models never clear a quality floor.
        assert_eq!(
            f(Filter { min_quality: Some(1380), ..Default::default() }),
            ["openai/gpt-5.5", "zai/glm-4.7-flash"]
        );
        // Inclusive bound, compared exactly: deepseek's blended is exactly 0.175.
        assert_eq!(
            f(Filter { max_blended: Some(0.175), kind: Some(Kind::Chat), ..Default::default() }),
            ["deepseek/deepseek-v4-flash", "mistral/mistral-small", "zai/glm-4.7-flash"]
        );
        assert_eq!(
            f(Filter { search: Some("GPT-".into()), ..Default::default() }),
            ["openai/gpt-4o", "openai/gpt-5.5"]
        );
        let none = render(
            &cat(),
            "openai/gpt-4o",
            &Filter { search: Some("nothing".into()), ..Default::default() },
            SortKey::Blended,
            false,
            Format::Table,
        )
        .unwrap();
        assert!(none.lines().last().unwrap().starts_with("0 models · catalog t@d#"), "{none}");
    }

    #[test]
    fn sorting_by_price_quality_and_name() {
        let all = Filter::default();
        assert_eq!(
            ids(&all, SortKey::Blended, false),
            [
                "zai/glm-4.7-flash",
                "openai/text-embedding-3-small",
                "mistral/mistral-small",
                "deepseek/deepseek-v4-flash",
                "openai/gpt-4o",
                "openai/gpt-5.5"
            ]
        );
        assert_eq!(ids(&all, SortKey::Ratio, true)[0], "openai/gpt-5.5");
        assert_eq!(ids(&all, SortKey::Output, true)[..2], ["openai/gpt-5.5", "openai/gpt-4o"]);
        assert_eq!(ids(&all, SortKey::Input, false)[..2], ["zai/glm-4.7-flash", "openai/text-embedding-3-small"]);
        // Unrated last in both directions; ties on quality (both unrated) go cheapest first.
        let unrated = ["openai/text-embedding-3-small", "deepseek/deepseek-v4-flash"];
        let desc = ids(&all, SortKey::Quality, true);
        assert_eq!(desc[..4], ["openai/gpt-5.5", "zai/glm-4.7-flash", "mistral/mistral-small", "openai/gpt-4o"]);
        assert_eq!(desc[4..], unrated);
        let asc = ids(&all, SortKey::Quality, false);
        assert_eq!(asc[..4], ["openai/gpt-4o", "mistral/mistral-small", "zai/glm-4.7-flash", "openai/gpt-5.5"]);
        assert_eq!(asc[4..], unrated);
        assert_eq!(ids(&all, SortKey::Name, false)[0], "deepseek/deepseek-v4-flash");
    }

    #[test]
    fn json_has_exact_numbers_and_ratios() {
        let out = render(&cat(), "openai/gpt-4o", &Filter::default(), SortKey::Blended, false, Format::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["catalog"].as_str().unwrap().starts_with("t@d#"));
        assert_eq!(v["reference"], "openai/gpt-4o");
        let models = v["models"].as_array().unwrap();
        assert_eq!(models.len(), 6);
        let get = |id: &str| models.iter().find(|m| m["id"] == id).unwrap().clone();
        let ds = get("deepseek/deepseek-v4-flash");
        assert_eq!(ds["input"], 0.14);
        assert_eq!(ds["output"], 0.28);
        assert_eq!(ds["blended"], 0.175);
        // gpt-4o blends to 4.375; 0.175 / 4.375 = 0.04.
        assert_eq!(ds["vs_ref"], 0.04);
        assert_eq!(ds["quality"], serde_json::Value::Null);
        assert_eq!(ds["tier"], "unrated");
        assert_eq!(ds["quality_unrated"], "no public score yet, as of 2026-07");
        assert_eq!(ds["open_weights"], true);
        assert_eq!(ds["license"], "MIT");
        assert_eq!(ds["kind"], "chat");
        let g = get("openai/gpt-5.5");
        assert_eq!(g["blended"], 11.25);
        assert!((g["vs_ref"].as_f64().unwrap() - 11.25 / 4.375).abs() < 1e-12);
        assert_eq!(g["tier"], "frontier");
        assert_eq!(g["quality_unrated"], serde_json::Value::Null);
        assert_eq!(g["context"], 1_050_000);
        assert_eq!(get("openai/gpt-4o")["vs_ref"], 1.0);
        assert_eq!(get("openai/gpt-4o")["capabilities"], serde_json::json!(["tools", "vision"]));
        assert_eq!(get("zai/glm-4.7-flash")["vs_ref"], 0.0);
        assert_eq!(get("openai/text-embedding-3-small")["kind"], "embedding");
        // The energy profile: this test catalog names no classes, so each has the default.
        let e = &g["energy"];
        assert_eq!(
            (&e["class"], &e["defaulted"], &e["source"]),
            (&serde_json::json!("large"), &serde_json::json!(true), &serde_json::Value::Null)
        );
        assert_eq!(e["rates"]["output_nwh"], 804_000);

        // A free reference has no meaningful ratio: null, not infinity.
        let out =
            render(&cat(), "zai/glm-4.7-flash", &Filter::default(), SortKey::Blended, false, Format::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["models"].as_array().unwrap().iter().all(|m| m["vs_ref"].is_null()));
    }

    #[test]
    fn csv_quotes_fields_with_commas_and_quotes() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("tools,vision"), "\"tools,vision\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        let out = render(&cat(), "openai/gpt-4o", &Filter::default(), SortKey::Blended, false, Format::Csv).unwrap();
        let mut lines = out.lines();
        assert_eq!(
            lines.next().unwrap(),
            "id,kind,input,output,blended,quality,tier,quality_unrated,origin,hosting,open_weights,context,capabilities,vs_ref"
        );
        let row = out.lines().find(|l| l.starts_with("openai/gpt-4o,")).unwrap();
        assert_eq!(row, "openai/gpt-4o,chat,2.5,10,4.375,1285,basic,,US,US,no,128000,\"tools,vision\",1");
        let row = out.lines().find(|l| l.starts_with("deepseek/")).unwrap();
        assert_eq!(
            row,
            "deepseek/deepseek-v4-flash,chat,0.14,0.28,0.175,,unrated,\"no public score yet, as of 2026-07\",CN,CN,yes,,streaming,0.04"
        );
        assert!(out.ends_with('\n'));
    }

    #[test]
    fn table_is_aligned_and_summarised() {
        let out = render(&cat(), "openai/gpt-4o", &Filter::default(), SortKey::Blended, false, Format::Table).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        // Header, six rows, the summary, then the unrated reasons (a heading and one reason).
        assert_eq!(lines.len(), 1 + 6 + 1 + 2, "{out}");
        assert!(lines[0].starts_with("id ") && lines[0].ends_with("vs ref"), "{out}");
        // Right-aligned last column: every row ends at the same char width as the header.
        let width = lines[0].chars().count();
        assert!(lines[1..7].iter().all(|l| l.chars().count() == width), "{out}");
        let ds = lines.iter().find(|l| l.starts_with("deepseek/")).unwrap();
        assert!(
            ds.contains(" 0.14 ") && ds.contains(" 0.28 ") && ds.contains(" 0.175 ") && ds.ends_with("0.04×"),
            "{ds}"
        );
        // The row is marked and its reason listed under the table; the embedding, which has
        // no quality either, is plain "unrated" (it gives no reason).
        assert!(ds.contains(" unrated* "), "{ds}");
        let e = lines.iter().find(|l| l.starts_with("openai/text-embedding-3-small ")).unwrap();
        assert!(e.contains(" unrated ") && !e.contains('*'), "{e}");
        assert_eq!(lines[8], "* unrated, with the catalog's reason (quality_unrated):");
        assert_eq!(lines[9], "  deepseek/deepseek-v4-flash: no public score yet, as of 2026-07");
        let g = lines.iter().find(|l| l.starts_with("openai/gpt-4o ")).unwrap();
        assert!(g.contains(" 2.50 ") && g.contains(" 10.00 ") && g.contains(" 128k ") && g.ends_with("1.00×"), "{g}");
        assert!(lines.iter().any(|l| l.starts_with("openai/gpt-5.5 ") && l.contains(" 1.05M ")), "{out}");
        // Cheapest paid chat model; the free one and the embedding are not "cheapest".
        let footer = lines[7];
        assert!(footer.starts_with("6 models · catalog t@d#"), "{footer}");
        assert!(
            footer.ends_with(
                " · reference openai/gpt-4o (blended $4.375/1M) · cheapest: mistral/mistral-small $0.09/1M (49× cheaper than reference) · 1 free model"
            ),
            "{footer}"
        );
    }

    #[test]
    fn small_prices_and_ratios_stay_readable() {
        assert_eq!(price(Rate(2_800), 2), "0.0028");
        assert_eq!(price(Rate(2_500_000), 2), "2.50");
        assert_eq!(price(Rate(20_833), 2), "0.020833");
        assert_eq!(price(Rate(10_000_000), 0), "10");
        assert_eq!(price(Rate(0), 2), "0.00");
        // dashscope-cn/qwen-plus: (3 × 0.111111 + 0.277778) / 4 = 0.15277775 exactly.
        let m = |input, output| Model {
            rates: Rates { input: Rate(input), output: Rate(output), ..Default::default() },
            ..cat().models()[0].clone()
        };
        assert_eq!(blended_price(&m(111_111, 277_778)), "0.15277775");
        assert_eq!(blended_price_short(&m(111_111, 277_778)), "0.152778");
        assert_eq!(blended_price_short(&m(2_500_000, 10_000_000)), "4.375");
        assert_eq!(ratio_text(0.0625), "0.06×");
        assert_eq!(ratio_text(2.571), "2.57×");
        assert_eq!(ratio_text(0.00034), "0.00034×");
        assert_eq!(ratio_text(0.0), "0×");
        assert_eq!(factor_text(48.6), "49×");
        assert_eq!(factor_text(2.54), "2.5×");
        assert_eq!(context_text(Some(131_072)), "131k");
        assert_eq!(context_text(Some(1_000_000)), "1M");
        assert_eq!(context_text(None), "");
    }

    #[test]
    fn unknown_reference_is_named() {
        let e = render(&cat(), "openai/gpt-9", &Filter::default(), SortKey::Blended, false, Format::Table).unwrap_err();
        assert!(e.contains("\"openai/gpt-9\""), "{e}");
    }

    #[test]
    fn shipped_catalog_renders_against_gpt_4o() {
        let c = Catalog::shipped().unwrap_or_else(|f| panic!("{}", Catalog::describe(&f)));
        let chat = Filter { kind: Some(Kind::Chat), ..Default::default() };
        let out = render(&c, "openai/gpt-4o", &chat, SortKey::Blended, false, Format::Table).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        let chat_count = c.models().iter().filter(|m| m.kind == Kind::Chat).count();
        let mut reasons: Vec<&str> = c.models().iter().filter_map(|m| m.quality_unrated.as_deref()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert!(!reasons.is_empty());
        // Header, rows, summary, then a heading and one line per distinct reason.
        assert_eq!(lines.len(), chat_count + 2 + 1 + reasons.len(), "{out}");
        assert!(lines.iter().any(|l| l.starts_with("deepseek/deepseek-v4-flash ")), "{out}");
        let g = lines.iter().find(|l| l.starts_with("openai/gpt-5.5 ")).unwrap();
        assert!(g.contains("frontier") && g.ends_with("2.57×"), "{g}");
        let ernie = lines.iter().find(|l| l.starts_with("qianfan/ernie-5.0 ")).unwrap();
        assert!(ernie.contains(" unrated* "), "{ernie}");
        // Two hosts of the same alias share their reason on one line.
        assert!(
            lines.iter().any(|l| l.starts_with("  ")
                && l.contains("dashscope/qwen-flash")
                && l.contains("dashscope-cn/qwen-flash")),
            "{out}"
        );
        let footer = lines[chat_count + 1];
        assert!(footer.starts_with(&format!("{chat_count} models · catalog {} ", c.version)), "{footer}");
        assert!(footer.contains("reference openai/gpt-4o (blended $4.375/1M) · cheapest: "), "{footer}");
        for format in [Format::Json, Format::Csv] {
            let out = render(&c, "openai/gpt-4o", &Filter::default(), SortKey::Quality, true, format).unwrap();
            assert!(out.contains("deepseek/") && out.contains("openai/gpt-5.5"));
        }
        let json = render(&c, "openai/gpt-4o", &Filter::default(), SortKey::Blended, false, Format::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["models"].as_array().unwrap().len(), c.models().len());
    }
}
