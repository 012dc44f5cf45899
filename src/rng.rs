//! Deterministic random numbers. Everything random in corefocus (initialisation,
//! shuffling, splits, dropout, Gumbel noise) derives from a user seed through these, so a
//! run is reproducible and a resumed run continues the same stream.

/// SplitMix64: a small, fast generator with a 64-bit state that is trivial to save.
#[derive(Clone, Debug)]
pub struct Rng {
    pub state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// The SplitMix64 finaliser: a good 64-bit hash.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Counter-based uniform in [0, 1) for element `index` of stream `seed`: dropout masks and
/// Gumbel noise are recomputed in backward from (seed, index) instead of being stored.
#[inline]
pub fn hash_uniform(seed: u64, index: u64) -> f32 {
    let h = mix64(seed ^ mix64(index.wrapping_add(0x632B_E59B_D9B4_E019)));
    (h >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            let x = a.uniform();
            assert_eq!(x, b.uniform());
            assert!((0.0..1.0).contains(&x));
        }
        let mean: f64 = (0..20000).map(|_| a.normal()).sum::<f64>() / 20000.0;
        assert!(mean.abs() < 0.05, "normal mean {mean}");
        let u: f32 = (0..20000).map(|i| hash_uniform(3, i)).sum::<f32>() / 20000.0;
        assert!((u - 0.5).abs() < 0.02, "hash_uniform mean {u}");
    }
}
