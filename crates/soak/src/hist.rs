//! A compact log-linear histogram of `u64` samples (microseconds here), for
//! percentiles over millions of samples in fixed memory (~58 KiB).
//!
//! Values below 256 are counted exactly; above, each power of two is split
//! into 128 buckets, so a reported percentile is within 0.4% of a recorded
//! value. The maximum is kept exactly. [`SignedHistogram`] does the same for
//! values that may be negative (a gap minus the pacing interval).

const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
/// Index of `u64::MAX` is `(64 - 1 - SUB_BITS) * SUB + 2 * SUB - 1`.
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB + SUB;

pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS].into_boxed_slice(), count: 0, max: 0, sum: 0 }
    }
}

fn index(v: u64) -> usize {
    if v < 2 * SUB as u64 {
        return v as usize;
    }
    let shift = 63 - v.leading_zeros() - SUB_BITS;
    shift as usize * SUB + (v >> shift) as usize
}

/// The middle of bucket `i`'s value range.
fn value_at(i: usize) -> u64 {
    if i < 2 * SUB {
        return i as u64;
    }
    let shift = (i / SUB - 1) as u32;
    let low = ((i % SUB + SUB) as u64) << shift;
    low + ((1u64 << shift) - 1) / 2
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.count += 1;
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The value at quantile `q` (0..=1): the smallest recorded value with at
    /// least `q` of the samples at or below it, to the bucket's precision.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        self.at_rank(rank(q, self.count)?)
    }

    /// The `rank`-th smallest sample (1-based), to the bucket's precision.
    fn at_rank(&self, rank: u64) -> Option<u64> {
        if rank == 0 || rank > self.count {
            return None;
        }
        if rank == self.count {
            return Some(self.max);
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(value_at(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// The 1-based rank of quantile `q` among `count` samples.
fn rank(q: f64, count: u64) -> Option<u64> {
    (count > 0).then(|| ((q * count as f64).ceil() as u64).clamp(1, count))
}

/// Signed samples, kept as the magnitudes of the negative and of the other
/// ones in two [`Histogram`]s, so values near zero keep their precision.
#[derive(Default)]
pub struct SignedHistogram {
    neg: Histogram,
    pos: Histogram,
    max: i64,
}

impl SignedHistogram {
    pub fn record(&mut self, v: i64) {
        if self.count() == 0 || v > self.max {
            self.max = v;
        }
        if v < 0 {
            self.neg.record(v.unsigned_abs());
        } else {
            self.pos.record(v.unsigned_abs());
        }
    }

    pub fn count(&self) -> u64 {
        self.neg.count + self.pos.count
    }

    pub fn max(&self) -> Option<i64> {
        (self.count() > 0).then_some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count() > 0).then(|| (self.pos.sum as f64 - self.neg.sum as f64) / self.count() as f64)
    }

    pub fn quantile(&self, q: f64) -> Option<i64> {
        let rank = rank(q, self.count())?;
        let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if rank <= self.neg.count {
            // Ascending signed order is descending magnitude among the negatives.
            self.neg.at_rank(self.neg.count - rank + 1).map(|v| -signed(v))
        } else {
            self.pos.at_rank(rank - self.neg.count).map(signed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 40, (1 << 40) + 12345, u64::MAX / 3]) {
            let i = index(v);
            assert!(i == last || i == last + 1 || v > 100_000, "gap at {v}");
            last = i;
            let mid = value_at(i);
            assert!(mid.abs_diff(v) as f64 <= v as f64 / 256.0 + 0.5, "{v} -> {mid}");
            assert_eq!(index(mid), i);
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.quantile(0.0), Some(1));
        assert_eq!(h.quantile(0.1), Some(100));
        let p50 = h.quantile(0.5).unwrap();
        assert!((498..=502).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((986..=994).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), Some(1000));
        assert_eq!(h.max(), Some(1000));
        assert_eq!(h.mean(), Some(500.5));
    }

    #[test]
    fn signed_quantiles() {
        let mut h = SignedHistogram::default();
        assert_eq!((h.quantile(0.5), h.max(), h.mean()), (None, None, None));
        for v in -100..=299 {
            h.record(v);
        }
        assert_eq!(h.count(), 400);
        assert_eq!(h.quantile(0.0), Some(-100));
        assert_eq!(h.quantile(0.25), Some(-1));
        assert_eq!(h.quantile(0.2501), Some(0));
        assert_eq!(h.quantile(0.5), Some(99));
        assert_eq!(h.quantile(1.0), Some(299));
        assert_eq!(h.max(), Some(299));
        assert_eq!(h.mean(), Some(99.5));
        let mut h = SignedHistogram::default();
        h.record(-5);
        h.record(-7);
        assert_eq!((h.max(), h.quantile(0.5), h.quantile(1.0)), (Some(-5), Some(-7), Some(-5)));
    }
}
