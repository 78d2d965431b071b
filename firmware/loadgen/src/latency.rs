//! One-way latency histogram, HDR-style: exact below 1,024 ns, then 64 sub-buckets per power of
//! two (≤ 1.6 % relative error), fixed size, no allocation per sample.

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Values below this are recorded exactly.
const LINEAR_LIMIT: u64 = 1024;
/// Powers of two above the linear range covered (1 µs .. ~1,100 s).
const OCTAVES: usize = 31;
const BUCKETS: usize = LINEAR_LIMIT as usize + OCTAVES * SUB;

/// Latency histogram in nanoseconds.
#[derive(Clone)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("total", &self.total)
            .field("max", &self.max)
            .finish()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR_LIMIT {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros(); // ≥ 10
    let octave = (msb - 10) as usize;
    if octave >= OCTAVES {
        return BUCKETS - 1;
    }
    let sub = ((v >> (msb - SUB_BITS)) as usize) & (SUB - 1);
    LINEAR_LIMIT as usize + octave * SUB + sub
}

/// Upper bound of the values a bucket holds (what percentiles report, so they never flatter).
fn bucket_upper(b: usize) -> u64 {
    if b < LINEAR_LIMIT as usize {
        return b as u64;
    }
    let octave = ((b - LINEAR_LIMIT as usize) / SUB) as u32;
    let sub = ((b - LINEAR_LIMIT as usize) % SUB) as u64;
    let msb = octave + 10;
    let base = 1u64 << msb;
    let width = 1u64 << (msb - SUB_BITS);
    base + (sub + 1) * width - 1
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    /// Records one latency.
    pub fn record(&mut self, ns: u64) {
        if let Some(c) = self.counts.get_mut(bucket_of(ns)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(ns);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest latency recorded.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The latency at quantile `q` (0..=1), rounded up to its bucket's upper bound; 0 if empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_upper(b).min(self.max);
            }
        }
        self.max
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_bucket_precision() {
        let mut h = LatencyHistogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 10); // 10 ns .. 1 ms uniformly
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "p50 {p50}");
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.02, "p99 {p99}");
        assert_eq!(h.max(), 1_000_000);
        assert_eq!(h.quantile(1.0), 1_000_000);
    }

    #[test]
    fn bucket_bounds_contain_value() {
        for v in [
            0u64,
            1,
            1023,
            1024,
            1025,
            65_535,
            1 << 20,
            123_456_789,
            1 << 40,
        ] {
            let b = bucket_of(v);
            assert!(bucket_upper(b) >= v, "v {v}");
            if b > 0 {
                assert!(bucket_upper(b - 1) < v, "v {v}");
            }
        }
        // Absurd values land in the last bucket instead of out of bounds.
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn merge_and_empty() {
        let mut a = LatencyHistogram::new();
        assert_eq!(a.quantile(0.99), 0);
        let mut b = LatencyHistogram::new();
        b.record(5_000);
        a.merge(&b);
        assert_eq!(a.count(), 1);
        assert!(a.quantile(0.5) >= 5_000);
    }
}
