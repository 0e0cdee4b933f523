//! An attempt's energy and emissions **estimate**: its tokens times its model's per-token
//! rates (size class, PUE included; [`crate::catalog::energy`]), and that energy times the
//! hosting region's grid intensity.
//!
//! ```text
//! nWh    = (input tokens × input nWh/token) + (output tokens × output nWh/token)
//! µWh    = nWh / 1,000                   rounded half up
//! µgCO2e = nWh × gCO2e/kWh / 1,000,000   rounded half up   (1 nWh = 1e-12 kWh; 1 g = 1e6 µg)
//! ```
//!
//! Input counts every prompt token (cache reads and writes included: a cache read skips
//! most of its prefill, so counting it errs high); output counts reasoning tokens. Both
//! figures are rounded once, from the exact nWh, so µWh and µg are integers summed exactly
//! in the ledger and its reports. The work per attempt is two multiplications, two
//! divisions and the grid product.

use crate::canonical::Usage;
use crate::catalog::energy::EnergyRates;

/// An attempt's estimated energy (micro-watt-hours) and emissions (micrograms CO2e).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Energy {
    pub uwh: i64,
    pub co2e_ug: i64,
}

/// The estimate for `usage` at `rates`.
#[inline]
pub fn estimate(usage: &Usage, rates: &EnergyRates) -> Energy {
    // Any real attempt fits u64 (2^64 nWh is 18 TWh), where dividing by a constant is a
    // multiply and a shift; only absurd counts take the u128 path.
    let (input, output) = (usage.input_total(), usage.output_total());
    let fast = input
        .checked_mul(rates.input_nwh)
        .and_then(|i| output.checked_mul(rates.output_nwh).and_then(|o| i.checked_add(o)))
        .and_then(|nwh| Some((nwh.checked_add(500)?, nwh.checked_mul(rates.grid_g_per_kwh)?.checked_add(500_000)?)));
    if let Some((nwh_half, ug_half)) = fast {
        if let (Ok(uwh), Ok(ug)) = (i64::try_from(nwh_half / 1000), i64::try_from(ug_half / 1_000_000)) {
            return Energy { uwh, co2e_ug: ug };
        }
    }
    wide(usage, rates)
}

/// [`estimate`] in u128, saturating: counts no real attempt reaches.
#[cold]
fn wide(usage: &Usage, rates: &EnergyRates) -> Energy {
    // Each product of two u64 fits a u128; only the sums can overflow, on absurd counts.
    let nwh = (u128::from(usage.input_total()) * u128::from(rates.input_nwh))
        .saturating_add(u128::from(usage.output_total()) * u128::from(rates.output_nwh));
    let uwh = nwh.saturating_add(500) / 1000;
    let ug = nwh.saturating_mul(u128::from(rates.grid_g_per_kwh)).saturating_add(500_000) / 1_000_000;
    Energy { uwh: i64::try_from(uwh).unwrap_or(i64::MAX), co2e_ug: i64::try_from(ug).unwrap_or(i64::MAX) }
}

/// `units` millionths as a decimal with six places (`0.000123`), exact, written into the
/// end of `buf` without allocating: µWh as Wh, µg as g.
pub fn millionths_ascii(units: i64, buf: &mut [u8; 24]) -> &[u8] {
    super::fixed_ascii(units, 6, buf)
}

/// [`millionths_ascii`] as a String (reports, the stream's closing comment).
pub fn millionths(units: i64) -> String {
    let mut buf = [0; 24];
    String::from_utf8_lossy(millionths_ascii(units, &mut buf)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped medium class at PUE 1.2 (65 / 250 Wh per 1M tokens) on the US grid.
    const MEDIUM_US: EnergyRates = EnergyRates { input_nwh: 78_000, output_nwh: 300_000, grid_g_per_kwh: 345 };

    #[test]
    fn hand_computed_estimates() {
        // 1,000 prompt tokens and 500 output tokens on a medium model in the US:
        // 1,000 × 78,000 + 500 × 300,000 = 228,000,000 nWh = 228,000 µWh = 0.228 Wh;
        // × 345 g/kWh: 228,000,000 × 345 / 1e6 = 78,660 µg = 0.07866 g CO2e.
        let u = Usage { input_uncached: 1000, output: 500, ..Usage::default() };
        assert_eq!(estimate(&u, &MEDIUM_US), Energy { uwh: 228_000, co2e_ug: 78_660 });
        // Cache reads and writes count as input, reasoning as output:
        // (100 + 200 + 50) × 78,000 + (10 + 30) × 300,000 = 27,300,000 + 12,000,000 = 39,300,000 nWh.
        let u = Usage {
            input_uncached: 100,
            input_cache_read: 200,
            input_cache_write: 50,
            output: 10,
            output_reasoning: 30,
        };
        assert_eq!(estimate(&u, &MEDIUM_US), Energy { uwh: 39_300, co2e_ug: 13_559 });
        // 39,300,000 × 345 = 13,558,500,000 / 1e6 = 13,558.5 -> 13,559 (half up).
        assert_eq!(estimate(&Usage::default(), &MEDIUM_US), Energy::default());
    }

    #[test]
    fn rounding_is_once_and_half_up() {
        // One input token of the tiny class at PUE 1.2: 2,400 nWh = 2.4 µWh -> 2; on the
        // French grid (56 g/kWh): 2,400 × 56 / 1e6 = 0.1344 µg -> 0.
        let tiny_fr = EnergyRates { input_nwh: 2_400, output_nwh: 8_400, grid_g_per_kwh: 56 };
        assert_eq!(estimate(&Usage { input_uncached: 1, ..Usage::default() }, &tiny_fr), Energy { uwh: 2, co2e_ug: 0 });
        // 1,000 of them: 2,400,000 nWh = 2,400 µWh, × 56 / 1e6 = 134.4 µg -> 134.
        assert_eq!(
            estimate(&Usage { input_uncached: 1000, ..Usage::default() }, &tiny_fr),
            Energy { uwh: 2_400, co2e_ug: 134 }
        );
        // An output token: 8,400 nWh = 8.4 µWh -> 8; 8,400 × 56 = 470,400 -> 0.4704 µg -> 0.
        // Two: 16.8 -> 17 µWh (from the exact nWh, not 8 + 8).
        assert_eq!(estimate(&Usage { output: 2, ..Usage::default() }, &tiny_fr).uwh, 17);
    }

    #[test]
    fn the_fast_path_agrees_with_the_wide_one() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..10_000 {
            // Ordinary sizes, and now and then counts near the edge of the u64 path.
            let shift = if i % 10 == 0 { 20 } else { 44 };
            let u = Usage { input_uncached: next() >> shift, output: next() >> shift, ..Usage::default() };
            let r = EnergyRates { input_nwh: next() >> 44, output_nwh: next() >> 42, grid_g_per_kwh: next() >> 54 };
            assert_eq!(estimate(&u, &r), wide(&u, &r), "{u:?} {r:?}");
        }
    }

    #[test]
    fn absurd_counts_saturate_instead_of_wrapping() {
        let u = Usage { input_uncached: u64::MAX, output: u64::MAX, ..Usage::default() };
        let e = estimate(&u, &EnergyRates { input_nwh: u64::MAX, output_nwh: u64::MAX, grid_g_per_kwh: 1000 });
        assert_eq!(e, Energy { uwh: i64::MAX, co2e_ug: i64::MAX });
    }

    #[test]
    fn millionths_are_exact_decimals() {
        assert_eq!(millionths(0), "0.000000");
        assert_eq!(millionths(228_000), "0.228000");
        assert_eq!(millionths(1_234_567), "1.234567");
        assert_eq!(millionths(-5), "-0.000005");
        assert_eq!(millionths(i64::MAX), "9223372036854.775807");
    }
}
