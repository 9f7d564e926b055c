//! Tails owns the count distributions the baseline tests against: how
//! improbable a bucket's count is under a Poisson, or a negative binomial
//! when the key is over-dispersed, as -log10 of the tail probability.

use statrs::distribution::{DiscreteCDF, NegativeBinomial, Poisson};

/// A Poisson, or when `var` exceeds the mean a negative binomial, with the
/// given mean.
enum Counts {
    Poisson(Poisson),
    NegBin(NegativeBinomial),
}

impl Counts {
    fn new(mean: f64, var: f64) -> Option<Counts> {
        // statrs panics on some extreme parameters; no real key expects a
        // billion calls a bucket.
        if !(mean.is_finite() && var.is_finite() && mean > 0.0 && mean < 1e9 && var < 1e15) {
            return None;
        }
        if var > mean * 1.05 {
            let r = (mean * mean / (var - mean)).max(1e-6);
            NegativeBinomial::new(r, r / (r + mean))
                .ok()
                .map(Counts::NegBin)
        } else {
            Poisson::new(mean).ok().map(Counts::Poisson)
        }
    }
    fn sf(&self, x: u64) -> f64 {
        match self {
            Counts::Poisson(d) => d.sf(x),
            Counts::NegBin(d) => d.sf(x),
        }
    }
    fn cdf(&self, x: u64) -> f64 {
        match self {
            Counts::Poisson(d) => d.cdf(x),
            Counts::NegBin(d) => d.cdf(x),
        }
    }
}

fn neg_log10(p: f64) -> f64 {
    if p > 0.0 {
        (-p.log10()).clamp(0.0, 300.0)
    } else {
        300.0
    }
}

/// -log10 P(X >= observed).
pub fn score_up(observed: u32, mean: f64, var: f64) -> f64 {
    if observed == 0 {
        return 0.0;
    }
    let mean = mean.max(0.1);
    Counts::new(mean, var.max(mean)).map_or(0.0, |d| neg_log10(d.sf(u64::from(observed - 1))))
}

/// -log10 P(X <= observed).
pub fn score_down(observed: u32, mean: f64, var: f64) -> f64 {
    let mean = mean.max(0.1);
    Counts::new(mean, var.max(mean)).map_or(0.0, |d| neg_log10(d.cdf(u64::from(observed))))
}
