//! Sanity checks of the robustness numbers (method-notes §8):
//! (a) robust accuracy falls as ε grows and is ~0 at a large ε (else: gradient masking or a
//!     broken attack); (b) a stronger attack never reports a higher RA than a weaker one;
//! (c) the graph computes the attacked model's clean logits (the BN branch baked into the
//!     graph is the one the attack used): checked per graph by [`crate::measure::replay`]
//!     and summarised here.
use indicatif::ProgressBar;
use oats_train::eval::Attack;
use oats_train::OatsModel;
use serde::{Deserialize, Serialize};

use crate::attacks::AttackSpec;
use crate::error::Result;
use crate::measure::{self, CalibrationSet};
use crate::report::GraphCalibration;

/// ε at which PGD-20 must leave (almost) nothing robust on [0,1] images.
pub const LARGE_EPS: f64 = 0.5;
/// Largest RA accepted at [`LARGE_EPS`].
pub const LARGE_EPS_MAX_RA: f64 = 0.05;
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
        if let Some(s) = &self.eps_sweep {
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
    list.dedup_by(|a, b| (*a - *b).abs() < 1e-12);
    list
}

/// (a): PGD-20 (one random start, step ε/4) RA at each of [`sweep_eps`] on `set` for the
/// graph at (λ, width); `bar` advances by one per radius.
#[allow(clippy::too_many_arguments)]
pub fn eps_sweep(
    model: &OatsModel,
    graph: &str,
    lambda: f64,
    width: f64,
    set: &CalibrationSet,
    eps: f64,
    batch: usize,
    bar: &ProgressBar,
) -> Result<EpsSweep> {
    let spec = AttackSpec {
        attack: Attack::Pgd { steps: 20 },
        restarts: 1,
    };
    let mut points = Vec::new();
    for e in sweep_eps(eps) {
        let m = measure::attack_graph(
            model,
            lambda,
            width,
            set,
            &[spec],
            e,
            batch,
            &ProgressBar::hidden(),
        )?;
        points.push(EpsPoint {
            eps: e,
            ra: m.ra_worst,
        });
        bar.inc(1);
    }
    let n = set.len().max(1) as f64;
    let monotone = points
        .windows(2)
        .all(|w| w[1].ra <= w[0].ra + 1.0 / n + 1e-12);
    let ra_at_large_eps = points
        .iter()
        .find(|p| (p.eps - LARGE_EPS).abs() < 1e-12)
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
pub fn ordering(
    graphs: &[GraphCalibration],
    attacks: &[AttackSpec],
    samples: usize,
) -> Vec<String> {
    let slack = 1.0 / samples.max(1) as f64;
    let mut v = Vec::new();
    let fgsm = attacks
        .iter()
        .find(|a| a.attack == Attack::Fgsm)
        .map(AttackSpec::key);
    for g in graphs {
        for (k, &ra) in &g.ra {
            if g.ra_worst > ra + 1e-12 {
                v.push(format!(
                    "graph {}: worst-case RA {:.4} > RA({k}) {ra:.4}",
                    g.id, g.ra_worst
                ));
            }
        }
        let Some(fk) = &fgsm else { continue };
        let Some(&ra_fgsm) = g.ra.get(fk) else {
            continue;
        };
        for a in attacks.iter().filter(|a| a.iterative()) {
            if let Some(&ra) = g.ra.get(&a.key()) {
                if ra > ra_fgsm + slack + 1e-12 {
                    v.push(format!("graph {}: RA({}) {ra:.4} > RA(fgsm) {ra_fgsm:.4} + 1/n ({slack:.4}): the iterative attack is weaker than one FGSM step", g.id, a.key()));
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn g(ra: &[(&str, f64)], worst: f64) -> GraphCalibration {
        GraphCalibration {
            id: "l0-w1".into(),
            lambda: 0.0,
            width: 1.0,
            macs: 1,
            params: 1,
            sa: 0.9,
            ra: ra.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ra_worst: worst,
            runtime_sa: BTreeMap::new(),
            runtime_ra: BTreeMap::new(),
            replay: BTreeMap::new(),
            latency_ms: BTreeMap::new(),
        }
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
        let attacks = crate::attacks::parse_list("pgd20,fgsm").expect("attacks");
        assert!(ordering(&[g(&[("pgd20", 0.4), ("fgsm", 0.5)], 0.4)], &attacks, 100).is_empty());
        // Within one sample of slack: fine.
        assert!(ordering(&[g(&[("pgd20", 0.505), ("fgsm", 0.5)], 0.5)], &attacks, 100).is_empty());
        let v = ordering(&[g(&[("pgd20", 0.6), ("fgsm", 0.5)], 0.5)], &attacks, 100);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("0.6000") && v[0].contains("0.5000"), "{v:?}");
        let v = ordering(&[g(&[("pgd20", 0.4), ("fgsm", 0.5)], 0.45)], &attacks, 100);
        assert_eq!(v.len(), 1, "{v:?}");
    }
}
