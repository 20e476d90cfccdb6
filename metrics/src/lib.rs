//! One measured configuration: clean accuracy (SA) and robust accuracy (RA) of a model at
//! (λ, width), with how they were measured (samples, split, ε), and their 95 % intervals.
//!
//! The same type is the row of `oats-train eval`'s report, of `oats-calibrate`'s report and
//! the accuracy part of the runtime manifest's metrics, so that every table and frontier plot
//! reads one shape. It lives in its own serde-only crate because both the trainer (tch) and
//! the edge runtime (tract, never libtorch) need it and neither may depend on the other.
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// z of a two-sided 95 % normal interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// SA and RA of one (λ, width) configuration, as fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    pub lambda: f64,
    pub width: f64,
    /// Standard (clean) accuracy.
    pub sa: f64,
    /// Robust accuracy per attack key (`pgd20x2`, `apgd-ce100`, …).
    #[serde(default)]
    pub ra: BTreeMap<String, f64>,
    /// Per-sample worst case over the attacks (robust only if correct when clean and under
    /// every attack); `None` when no attack was run.
    #[serde(default)]
    pub ra_worst: Option<f64>,
    /// Number of samples every fraction above is over.
    #[serde(default)]
    pub samples: usize,
    /// Data split ("val" for calibration, "test" for reported results). Reports written
    /// before points carried it have it once at the top; their loaders fill it in.
    #[serde(default)]
    pub split: String,
    /// L∞ radius of the attacks.
    #[serde(default)]
    pub epsilon: f64,
}

impl OperatingPoint {
    /// 95 % interval of the clean accuracy.
    pub fn sa_interval(&self) -> Interval {
        Interval::wilson_fraction(self.sa, self.samples)
    }

    /// 95 % interval of the worst-case robust accuracy (`None` without attacks).
    pub fn ra_worst_interval(&self) -> Option<Interval> {
        self.ra_worst
            .map(|p| Interval::wilson_fraction(p, self.samples))
    }

    /// 95 % interval of the robust accuracy under attack `key`.
    pub fn ra_interval(&self, key: &str) -> Option<Interval> {
        self.ra
            .get(key)
            .map(|&p| Interval::wilson_fraction(p, self.samples))
    }
}

/// A 95 % confidence interval of a proportion, as fractions in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// The measured proportion.
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
    pub samples: usize,
}

impl Interval {
    /// Wilson score interval for `successes` of `samples`: unlike the normal approximation it
    /// stays inside [0, 1] and is honest at 0 % and 100 % (where robust accuracies live).
    /// With no samples the interval is the whole [0, 1].
    pub fn wilson(successes: usize, samples: usize) -> Interval {
        if samples == 0 {
            return Interval {
                estimate: f64::NAN,
                low: 0.0,
                high: 1.0,
                samples,
            };
        }
        let n = samples as f64;
        let p = successes.min(samples) as f64 / n;
        let z2 = Z95 * Z95;
        let denom = 1.0 + z2 / n;
        let centre = (p + z2 / (2.0 * n)) / denom;
        let half = Z95 / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
        Interval {
            estimate: p,
            low: (centre - half).max(0.0),
            high: (centre + half).min(1.0),
            samples,
        }
    }

    /// The interval of a fraction measured on `samples` samples (the count is recovered by
    /// rounding `fraction × samples`, exact for every fraction a count produced).
    pub fn wilson_fraction(fraction: f64, samples: usize) -> Interval {
        if !fraction.is_finite() {
            return Interval {
                estimate: fraction,
                low: f64::NAN,
                high: f64::NAN,
                samples,
            };
        }
        let k = (fraction.clamp(0.0, 1.0) * samples as f64).round() as usize;
        let mut i = Interval::wilson(k, samples);
        i.estimate = fraction;
        i
    }

    /// The bounds in percent, for table columns: "73.6–84.8".
    pub fn range_pct(&self) -> String {
        format!("{:.1}–{:.1}", self.low * 100.0, self.high * 100.0)
    }

    /// Half the width, in the fraction's units (what "±" would say of a symmetric interval).
    pub fn half_width(&self) -> f64 {
        (self.high - self.low) / 2.0
    }
}

/// Percentages with one decimal: "79.7 (73.6–84.8)".
impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.1} ({:.1}–{:.1})",
            self.estimate * 100.0,
            self.low * 100.0,
            self.high * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_reference_values() {
        // Reference: statsmodels proportion_confint(k, n, method="wilson").
        let i = Interval::wilson(81, 263);
        assert!((i.low - 0.2553).abs() < 1e-4, "{i:?}");
        assert!((i.high - 0.3662).abs() < 1e-4, "{i:?}");
        // At 0 % and 100 % the interval is one-sided and stays in [0, 1].
        let zero = Interval::wilson(0, 200);
        assert_eq!(zero.low, 0.0);
        assert!((zero.high - 0.01884).abs() < 1e-4, "{zero:?}");
        let all = Interval::wilson(200, 200);
        assert_eq!(all.high, 1.0);
        assert!((all.low - 0.98116).abs() < 1e-4, "{all:?}");
    }

    #[test]
    fn demo_sized_samples_move_by_several_points() {
        // 200 samples at 70 %: the interval spans about ±6.3 points.
        let i = Interval::wilson_fraction(0.7, 200);
        assert!((i.half_width() - 0.0636).abs() < 2e-3, "{i:?}");
        assert_eq!(i.to_string(), "70.0 (63.3–75.9)");
        assert_eq!(Interval::wilson(0, 0).high, 1.0);
    }
}
