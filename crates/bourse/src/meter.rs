//! Metering: normalized usage × catalog rates → exact cost, and the counterfactual cost
//! of the same usage on the reference model.
//!
//! Rates are integer pico-USD per token, so every product is exact; a request's cost is
//! rounded once, half up, to integer nano-USD ([`Cost`]) — the unit ledger rows, headers
//! and reports use. Sums of rows are sums of integers: nothing is ever accumulated in
//! floating point.

pub mod bpe;
pub mod energy;
pub mod estimate;

use crate::canonical::Usage;
use crate::catalog::{Catalog, Model};
use crate::error::{Error, ErrorKind};
use std::sync::Arc;

/// Money in integer nano-USD (1e-9 $).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cost(pub i64);

impl Cost {
    /// Decimal USD with nine places, e.g. `0.000123450` — exact, no float formatting.
    pub fn usd(self) -> String {
        let mut buf = [0; 24];
        // Digits, point and sign only: always UTF-8.
        String::from_utf8(self.usd_ascii(&mut buf).to_vec()).unwrap_or_default()
    }

    /// [`Cost::usd`] as ASCII bytes written into the end of `buf`, without allocating:
    /// three of these go on every response as headers, which copy the bytes anyway.
    /// No `format!`: with padding it cost more than the rest of pricing together. The nine
    /// decimals are written digit by digit (zero-padded), the integer part by `itoa`.
    pub fn usd_ascii(self, buf: &mut [u8; 24]) -> &[u8] {
        fixed_ascii(self.0, 9, buf)
    }
}

/// `v` units of 10^-`places` (at most 9) as a decimal with `places` zero-padded decimals
/// (`fixed_ascii(123_450, 9, ..)` is `0.000123450`), exact, written into the end of `buf`
/// without allocating: nano-USD as USD, µWh as Wh. Sign, up to 19 integer digits, point and
/// decimals fit 24 bytes; filled from the right.
pub fn fixed_ascii(v: i64, places: u32, buf: &mut [u8; 24]) -> &[u8] {
    debug_assert!(places <= 9);
    let scale = 10u64.pow(places);
    let mut at = buf.len();
    let (int, mut frac) = (v.unsigned_abs() / scale, v.unsigned_abs() % scale);
    for _ in 0..places {
        at -= 1;
        buf[at] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    at -= 1;
    buf[at] = b'.';
    let mut ints = itoa::Buffer::new();
    let digits = ints.format(int).as_bytes();
    buf[at - digits.len()..at].copy_from_slice(digits);
    at -= digits.len();
    if v < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

impl std::ops::Sub for Cost {
    type Output = Cost;
    fn sub(self, rhs: Cost) -> Cost {
        Cost(self.0.saturating_sub(rhs.0))
    }
}

/// The cost of `usage` on `model`. Token kinds without a dedicated price are charged at
/// the price they fall back to (cache reads and writes as input, reasoning as output), so
/// nothing is silently free.
pub fn cost(usage: &Usage, model: &Model) -> Cost {
    let r = model.rates_for(usage.input_total());
    let pico: u128 = u128::from(usage.input_uncached) * u128::from(r.input.0)
        + u128::from(usage.input_cache_read) * u128::from(r.cached_input.unwrap_or(r.input).0)
        + u128::from(usage.input_cache_write) * u128::from(r.cache_write_5m.unwrap_or(r.input).0)
        + u128::from(usage.output) * u128::from(r.output.0)
        + u128::from(usage.output_reasoning) * u128::from(r.reasoning_output.unwrap_or(r.output).0);
    let nanos = (pico + 500) / 1000;
    Cost(i64::try_from(nanos).unwrap_or(i64::MAX))
}

/// The catalog entry that prices a target, found once per request by [`Meter::price`] and
/// kept by position: an attempt outlives the request's borrows (a stream settles when it
/// ends), and settling should not look the entry up again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price(usize);

impl Price {
    /// The catalog position it stands for (the metrics find their series by it).
    pub fn position(self) -> usize {
        self.0
    }
}

/// Prices requests against the catalog in force and the reference model.
#[derive(Debug)]
pub struct Meter {
    pub catalog: Arc<Catalog>,
    /// The reference model's entry, looked up once.
    reference: Option<Model>,
}

impl Meter {
    /// `reference` must be in the catalog (config validation guarantees it).
    pub fn new(catalog: Arc<Catalog>, reference: String) -> Meter {
        let reference = catalog.get(&reference).cloned();
        Meter { catalog, reference }
    }

    /// The catalog entry for a target, as a handle for [`Meter::model`]: `id/model`, else
    /// `vendor/model` (a provider named "ds" of kind "deepseek" or "deepseek-anthropic" is
    /// priced by the deepseek entries). A model with no known price is refused rather than
    /// metered as free: the error says how to price it.
    pub fn price(&self, provider: &str, vendor: &str, model: &str) -> Result<Price, Error> {
        let found = self.catalog.position_pair(provider, model).or_else(|| self.catalog.position_pair(vendor, model));
        if let Some(i) = found {
            return Ok(Price(i));
        }
        let id = format!("{provider}/{model}");
        Err(Error {
            param: Some("model".into()),
            ..Error::new(
                ErrorKind::ModelNotAllowed,
                format!(
                    "model '{id}' has no price in the catalog, so Bourse will not route to it (it would be metered as free). \
                     Price it in the config: [models.\"{id}\"] input = <USD per 1M>, output = <USD per 1M> \
                     (write 0 for a self-hosted model)"
                ),
            )
        })
    }

    /// The entry a [`Price`] from this meter stands for.
    pub fn model(&self, price: Price) -> &Model {
        &self.catalog.models()[price.0]
    }

    pub fn reference(&self) -> Option<&Model> {
        self.reference.as_ref()
    }

    /// Actual cost and the counterfactual cost of the same usage on the reference model.
    pub fn settle(&self, model: &Model, usage: &Usage) -> (Cost, Cost) {
        let actual = cost(usage, model);
        let reference = self.reference().map(|r| cost(usage, r)).unwrap_or_default();
        (actual, reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn catalog() -> Catalog {
        let text = "[meta]\nname = \"t\"\ndate = \"d\"\n\
            [[model]]\nprovider = \"deepseek\"\nmodel = \"deepseek-chat\"\ninput = 0.28\ncached_input = 0.028\noutput = 0.42\n\
            [[model]]\nprovider = \"openai\"\nmodel = \"o3\"\ninput = 2\ncached_input = 0.5\noutput = 8\nreasoning_output = 8\n\
            [[model]]\nprovider = \"gemini\"\nmodel = \"pro\"\ninput = 1.25\noutput = 10\ntiers = [{ above = 200000, input = 2.5, output = 15 }]\n";
        Catalog::load(text, &BTreeMap::new()).unwrap().0
    }

    #[test]
    fn exact_costs_by_token_kind() {
        let c = catalog();
        let ds = c.get("deepseek/deepseek-chat").unwrap();
        // 1000 uncached × 280,000 pico + 4000 cached × 28,000 + 500 out × 420,000 = 280M + 112M + 210M pico
        let u = Usage { input_uncached: 1000, input_cache_read: 4000, output: 500, ..Usage::default() };
        assert_eq!(cost(&u, ds), Cost(602_000));
        assert_eq!(cost(&u, ds).usd(), "0.000602000");
        let g = c.get("gemini/pro").unwrap();
        let long = Usage { input_uncached: 250_000, output: 1000, ..Usage::default() };
        assert_eq!(cost(&long, g), Cost(250_000 * 2_500 + 1000 * 15_000));
    }

    #[test]
    fn rounding_is_once_and_half_up() {
        let c = catalog();
        let ds = c.get("deepseek/deepseek-chat").unwrap();
        // 1 cached token = 28,000 pico = 28 nano exactly; 1 token at 0.0028/M would be 2.8 nano -> 3
        assert_eq!(cost(&Usage { input_cache_read: 1, ..Usage::default() }, ds), Cost(28));
    }

    #[test]
    fn usd_is_the_exact_decimal() {
        let reference = |c: i64| {
            let n = c.unsigned_abs();
            format!("{}{}.{:09}", if c < 0 { "-" } else { "" }, n / 1_000_000_000, n % 1_000_000_000)
        };
        for c in [0, 1, -1, 9, 10, 999_999_999, 1_000_000_000, -1_000_000_001, 123_456_789_012, i64::MAX, i64::MIN] {
            assert_eq!(Cost(c).usd(), reference(c), "{c}");
        }
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            assert_eq!(Cost(x).usd(), reference(x), "{x}");
            assert_eq!(Cost(x >> 30).usd(), reference(x >> 30), "{}", x >> 30);
        }
        assert_eq!(Cost(602_000).usd(), "0.000602000");
    }

    proptest! {
        #[test]
        fn cost_is_additive_within_rounding(a in 0u64..10_000_000, b in 0u64..10_000_000, o in 0u64..1_000_000) {
            let c = catalog();
            let m = c.get("openai/o3").unwrap();
            let whole = cost(&Usage { input_uncached: a + b, output: o, ..Usage::default() }, m).0;
            let parts = cost(&Usage { input_uncached: a, ..Usage::default() }, m).0
                + cost(&Usage { input_uncached: b, ..Usage::default() }, m).0
                + cost(&Usage { output: o, ..Usage::default() }, m).0;
            // Every rate here is a whole number of nano-USD per token, so parts add up exactly.
            prop_assert_eq!(whole, parts);
        }
    }
}
