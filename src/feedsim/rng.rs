//! A tiny deterministic random source: every value the simulator produces is
//! a pure function of the seed and a few integers naming what it is for, so
//! responses do not depend on request order or page size.

pub use crate::primitives::mix;

/// Hashes a string tag into a stream selector.
pub fn tag(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01B3)
    })
}

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `(seed, stream, parts…)`.
    pub fn new(seed: u64, stream: &str, parts: &[u64]) -> Rng {
        Rng(mix(seed ^ tag(stream))).with(parts)
    }

    /// The generator [`Rng::new`] gives for this one's `(seed, stream,
    /// parts…)` followed by `more`: a loop drawing per item of one owner
    /// mixes the owner's part once, not once per item.
    pub fn with(&self, more: &[u64]) -> Rng {
        let mut s = self.0;
        for &p in more {
            s = mix(s ^ p);
        }
        Rng(s)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform integer in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        debug_assert!(lo <= hi);
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }

    /// Uniform float in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Log-uniform float in `[lo, hi)`: for amounts spanning magnitudes.
    pub fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.unit()).exp()
    }

    /// Index chosen with the given weights.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        self.weighted_by(weights, |&w| w)
    }

    /// Index into `items` chosen with the weights `weight` gives them.
    pub fn weighted_by<T>(&mut self, items: &[T], weight: impl Fn(&T) -> u32) -> usize {
        let total: u32 = items.iter().map(&weight).sum();
        let mut x = (self.next_u64() % u64::from(total)) as u32;
        for (i, item) in items.iter().enumerate() {
            let w = weight(item);
            if x < w {
                return i;
            }
            x -= w;
        }
        items.len() - 1
    }

    /// One element of a slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }
}
