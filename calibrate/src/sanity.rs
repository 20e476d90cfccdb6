//! Sanity checks of the robustness numbers (docs/method.md §8):
//! (a) robust accuracy falls as ε grows and is ~0 at a large ε (else: gradient masking or a
//!     broken attack); (b) a stronger attack never reports a higher RA than a weaker one;
//! (c) the graph computes the attacked model's clean logits (the BN branch baked into the
//!     graph is the one the attack used): checked per graph by [`crate::measure::replay`]
//!     and summarised here.
use indicatif::ProgressBar;
use oats_runtime::OperatingPoint;
use oats_train::eval::{self, Attack, AttackSpec, EvalOptions};
use oats_train::TchModel;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::measure::CalibrationSet;

/// ε at which PGD-20 must leave (almost) nothing robust on [0,1] images.
pub const LARGE_EPS: f64 = 0.5;
/// Largest RA accepted at [`LARGE_EPS`].
pub const LARGE_EPS_MAX_RA: f64 = 0.05;
/// Slack of comparisons between accuracies and radii computed in f64 (sums and quotients of
/// counts): far below one sample's 1/n, far above rounding error.
pub const FLOAT_SLACK: f64 = 1e-12;

/// Multiples of the calibration ε in the sweep.
pub const EPS_FACTORS: [f64; 4] = [0.5, 1.0, 2.0, 4.0];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpsPoint {
    pub eps: f64,
    pub ra: f64,
}

/// Check (a).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpsSweep {
    pub graph: String,
    pub lambda: f64,
    pub width: f64,
    pub attack: String,
    pub samples: usize,
    /// Sorted by ε.
    pub points: Vec<EpsPoint>,
    /// RA never rises with ε by more than one sample.
    pub monotone: bool,
    pub large_eps: f64,
    pub ra_at_large_eps: f64,
    pub passed: bool,
}

/// All sanity results, as stored in the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sanity {
    /// (a); `None` when disabled (`--sanity-limit 0`).
    pub eps_sweep: Option<EpsSweep>,
    /// (a) on the int8 graph at the same configuration, attacked directly, when one was
    /// calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8_eps_sweep: Option<EpsSweep>,
    /// (b): one line per violation, with the numbers.
    pub ordering_violations: Vec<String>,
    /// (c): largest |Δlogit| between any graph (any backend) and the trainer on clean images;
    /// every graph passed (a failure stops calibration).
    pub max_clean_logit_diff: f64,
    pub logit_tolerance: f64,
    /// Replay: total argmax disagreements runtime vs trainer, all of them ties.
    pub replay_disagreements: usize,
    pub passed: bool,
}

impl Sanity {
    /// The warnings to print: failed checks with their numbers.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for s in self.eps_sweep.iter().chain(&self.int8_eps_sweep) {
            let curve = s
                .points
                .iter()
                .map(|p| format!("ε={}: {:.3}", p.eps, p.ra))
                .collect::<Vec<_>>()
                .join(", ");
            if !s.monotone {
                w.push(format!(
                    "sanity (a): {} RA of graph {} does not fall as ε grows ({curve})",
                    s.attack, s.graph
                ));
            }
            if s.ra_at_large_eps > LARGE_EPS_MAX_RA {
                w.push(format!(
                    "sanity (a): {} RA of graph {} is {:.3} at ε = {} (expected ≤ {LARGE_EPS_MAX_RA}): gradient masking or a broken attack? ({curve})",
                    s.attack, s.graph, s.ra_at_large_eps, s.large_eps
                ));
            }
        }
        w.extend(
            self.ordering_violations
                .iter()
                .map(|v| format!("sanity (b): {v}")),
        );
        w
    }
}

/// The radii of the sweep: ε × {0.5, 1, 2, 4} and [`LARGE_EPS`], sorted, without repeats.
pub fn sweep_eps(eps: f64) -> Vec<f64> {
    let mut list: Vec<f64> = EPS_FACTORS.iter().map(|f| f * eps).collect();
    list.push(LARGE_EPS);
    list.sort_by(f64::total_cmp);
    list.dedup_by(|a, b| (*a - *b).abs() < FLOAT_SLACK);
    list
}

/// The model an ε sweep attacks: the trainer's, or an int8 graph read by the training
/// framework (straight-through gradients, `crate::int8`).
pub enum Swept<'a> {
    Float(&'a TchModel),
    Int8(oats_train::attack::Model<'a>),
}

/// (a): PGD-20 (one random start, step ε/4) RA at each of [`sweep_eps`] on `set` for the
/// graph at (λ, width); `bar` advances by one per radius.
#[allow(clippy::too_many_arguments)]
pub fn eps_sweep(
    model: Swept<'_>,
    graph: &str,
    lambda: f64,
    width: f64,
    set: &CalibrationSet,
    eps: f64,
    batch: usize,
    seed: u64,
    bar: &ProgressBar,
) -> Result<EpsSweep> {
    let spec = AttackSpec::new(Attack::Pgd { steps: 20 });
    let mut points = Vec::new();
    for e in sweep_eps(eps) {
        let opts = EvalOptions {
            eps: e,
            attacks: vec![spec],
            batch,
            seed,
            keep_worst: false,
        };
        let m = match &model {
            Swept::Float(model) => eval::evaluate(
                model,
                lambda,
                width,
                &set.x,
                &set.y,
                &opts,
                &ProgressBar::hidden(),
            )?,
            Swept::Int8(f) => eval::evaluate_fn(
                *f,
                tch::Device::Cpu,
                lambda,
                width,
                &set.x,
                &set.y,
                &opts,
                &ProgressBar::hidden(),
            )?,
        };
        points.push(EpsPoint {
            eps: e,
            ra: m.point("", e).ra_worst.unwrap_or(f64::NAN),
        });
        bar.inc(1);
    }
    let n = set.len().max(1) as f64;
    let monotone = points
        .windows(2)
        .all(|w| w[1].ra <= w[0].ra + 1.0 / n + FLOAT_SLACK);
    let ra_at_large_eps = points
        .iter()
        .find(|p| (p.eps - LARGE_EPS).abs() < FLOAT_SLACK)
        .map_or(f64::NAN, |p| p.ra);
    Ok(EpsSweep {
        graph: graph.into(),
        lambda,
        width,
        attack: spec.key(),
        samples: set.len(),
        points,
        monotone,
        large_eps: LARGE_EPS,
        ra_at_large_eps,
        passed: monotone && ra_at_large_eps <= LARGE_EPS_MAX_RA,
    })
}

/// (b): worst-case RA ≤ every per-attack RA; iterative attacks (PGD, APGD) ≤ FGSM + 1/n.
/// `graphs` are (graph id, its measurement).
pub fn ordering<'a>(
    graphs: impl IntoIterator<Item = (&'a str, &'a OperatingPoint)>,
    attacks: &[AttackSpec],
    samples: usize,
) -> Vec<String> {
    let slack = 1.0 / samples.max(1) as f64;
    let mut v = Vec::new();
    let fgsm = attacks
        .iter()
        .find(|a| a.attack == Attack::Fgsm)
        .map(AttackSpec::key);
    for (id, g) in graphs {
        let worst = g.ra_worst.unwrap_or(f64::NAN);
        for (k, &ra) in &g.ra {
            if worst > ra + FLOAT_SLACK {
                v.push(format!(
                    "graph {id}: worst-case RA {worst:.4} > RA({k}) {ra:.4}"
                ));
            }
        }
        let Some(fk) = &fgsm else { continue };
        let Some(&ra_fgsm) = g.ra.get(fk) else {
            continue;
        };
        for a in attacks.iter().filter(|a| a.iterative()) {
            if let Some(&ra) = g.ra.get(&a.key()) {
                if ra > ra_fgsm + slack + FLOAT_SLACK {
                    v.push(format!("graph {id}: RA({}) {ra:.4} > RA(fgsm) {ra_fgsm:.4} + 1/n ({slack:.4}): the iterative attack is weaker than one FGSM step", a.key()));
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(ra: &[(&str, f64)], worst: f64) -> [(&'static str, OperatingPoint); 1] {
        [(
            "l0-w1",
            OperatingPoint {
                lambda: 0.0,
                width: 1.0,
                sa: 0.9,
                ra: ra.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                ra_worst: Some(worst),
                samples: 100,
                split: "val".into(),
                epsilon: 0.1,
            },
        )]
    }

    fn check(g: &[(&'static str, OperatingPoint); 1], attacks: &[AttackSpec]) -> Vec<String> {
        ordering(g.iter().map(|(id, p)| (*id, p)), attacks, 100)
    }

    #[test]
    fn sweep_radii() {
        assert_eq!(sweep_eps(0.1), vec![0.05, 0.1, 0.2, 0.4, 0.5]);
        // 8/255: 4ε < 0.5.
        assert_eq!(sweep_eps(8.0 / 255.0).len(), 5);
        // ε = 0.125: 4ε = 0.5 appears once.
        assert_eq!(sweep_eps(0.125), vec![0.0625, 0.125, 0.25, 0.5]);
    }

    #[test]
    fn ordering_flags_weak_iterative_attacks_and_bad_worst_case() {
        let attacks = eval::parse_attacks("pgd20,fgsm").expect("attacks");
        assert!(check(&g(&[("pgd20", 0.4), ("fgsm", 0.5)], 0.4), &attacks).is_empty());
        // Within one sample of slack: fine.
        assert!(check(&g(&[("pgd20", 0.505), ("fgsm", 0.5)], 0.5), &attacks).is_empty());
        let v = check(&g(&[("pgd20", 0.6), ("fgsm", 0.5)], 0.5), &attacks);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("0.6000") && v[0].contains("0.5000"), "{v:?}");
        let v = check(&g(&[("pgd20", 0.4), ("fgsm", 0.5)], 0.45), &attacks);
        assert_eq!(v.len(), 1, "{v:?}");
    }
}
