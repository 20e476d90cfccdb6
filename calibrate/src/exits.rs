//! Calibration of a configuration with side exits (issue #16, docs/method.md §7): entropy
//! thresholds fitted on the validation split for a compute budget, and the routed prediction
//! measured clean, under the multi-exit attacks and under a slowdown attack.
//!
//! 1. **Thresholds.** The trainer's exit logits on the clean validation images give each
//!    exit's entropies. One quantile q sets every threshold (tₖ = the q-quantile of exit k's
//!    entropies); the mean MACs of the routed prediction fall as q grows, and q is the
//!    smallest that meets the budget (a fraction of the full network's MACs), found by
//!    bisection. The test split is never read.
//! 2. **Routed SA**, exit mix and mean MACs with those thresholds, by the routing rule
//!    (`oats_graph::routing`) on the trainer's logits, and replayed through every runtime's
//!    routed inference: an image routed or classified differently, other than at an entropy
//!    or logit tie, fails calibration.
//! 3. **Routed RA**, per sample the worst case over: the main-branch attack (the final
//!    classifier's worst-case images from the ordinary calibration), RDI-Nets' average and
//!    max-average attacks, and an adaptive attack on the routed output itself (PGD on the
//!    loss of the exit each image currently takes, re-routed every step).
//! 4. **Slowdown attack**: images in the same ε-ball whose early exits' entropies are pushed
//!    over their thresholds; its exit mix and mean MACs say what compute an attacker can
//!    force. Wall-clock time per image is measured in each runtime on the clean, the
//!    slowdown and the full-network routes.
use std::collections::BTreeMap;
use std::time::Instant;

use oats_runtime::manifest::{ExitsEntry, Routing};
use oats_runtime::{Batch, OatsModel};
use oats_train::attack::{self, PrivateNoise};
use oats_train::TchModel;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{CalibrateError, Result};
use crate::measure::CalibrationSet;

/// Default compute budget of the routed prediction ([`ExitTarget::Budget`]): this fraction of the whole network's
/// MACs on the validation images (the example).
pub const DEFAULT_BUDGET: f64 = 0.7;
/// PGD steps of the multi-exit attacks (as PGD-20), step ε/4, one random start.
pub const ATTACK_STEPS: usize = 20;
/// An entropy this close to its threshold may route differently in the runtime (f32 logits
/// from another engine) than by the trainer's logits: a tie, not a disagreement.
pub const ENTROPY_TIE: f64 = 1e-4;
/// Images timed per batch size for the wall-clock comparison.
const TIMED_IMAGES: usize = 64;
/// Interleaved timing rounds; the median is reported.
const TIMING_ROUNDS: usize = 7;

/// Routed prediction on one set of images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Routed {
    /// Accuracy of the routed prediction.
    pub accuracy: f64,
    /// Fraction answered at each exit, the final classifier last.
    pub exit_mix: Vec<f64>,
    /// Mean MACs per image.
    pub mean_macs: f64,
    /// `mean_macs` over the whole network's MACs (heads excluded).
    pub macs_fraction: f64,
}

/// Wall-clock milliseconds per image of routed inference in one runtime (the median of
/// interleaved rounds over the first 64 images).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WallClock {
    /// Batch size timed.
    pub batch: usize,
    /// The clean validation images, routed.
    pub clean_ms: f64,
    /// The slowdown attack's images, routed.
    pub slowdown_ms: f64,
    /// The clean images through the whole network (the configuration's plain graph).
    pub full_ms: f64,
    /// The clean images routed with every threshold 0: no image leaves early, so every
    /// segment and head runs. Against `full_ms` this is the cost of chaining the segments
    /// (one engine call per part, the features copied between them) plus the heads' MACs.
    pub never_ms: f64,
}

/// What calibration measured for one configuration with exits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitsCalibration {
    /// One entropy threshold per side exit.
    pub thresholds: Vec<f64>,
    /// What they were fitted for.
    pub target: String,
    /// MACs per image answered at each exit (earlier heads included).
    pub exit_macs: Vec<u64>,
    /// MACs of the whole network without heads (the plain graph).
    pub full_macs: u64,
    pub clean: Routed,
    /// Routed accuracy per attack ("main-branch", "average", "max-average", "routed").
    pub ra: BTreeMap<String, f64>,
    /// Per-sample worst case over `ra`'s attacks.
    pub ra_worst: f64,
    /// Routed prediction on the slowdown attack's images (accuracy against the true labels).
    pub slowdown: Routed,
    /// Per backend: wall-clock time per image at batch 1 and 64.
    pub wall_clock: BTreeMap<String, Vec<WallClock>>,
    /// Images (clean and attacked) the runtimes routed or classified differently from the
    /// trainer, ties excluded: always 0 in a calibration that was stored.
    pub runtime_disagreements: usize,
}

impl ExitsCalibration {
    /// The manifest's routing entry: the thresholds and what the routed prediction was
    /// measured to do with them (policies read these for this configuration).
    pub fn routing(&self, fitted_on: String) -> Routing {
        let latency_ms = self
            .wall_clock
            .iter()
            .flat_map(|(backend, v)| {
                v.iter().map(move |w| {
                    (
                        oats_runtime::manifest::latency_key(backend, w.batch),
                        w.clean_ms,
                    )
                })
            })
            .collect();
        Routing {
            thresholds: self.thresholds.clone(),
            target: self.target.clone(),
            fitted_on,
            exit_mix: self.clean.exit_mix.clone(),
            mean_macs: self.clean.mean_macs,
            sa: Some(self.clean.accuracy),
            ra_worst: Some(self.ra_worst),
            latency_ms,
        }
    }
}

/// Thresholds t (one per side exit) whose routed mean MACs on `entropies` (`[exit][image]`,
/// side exits only) stay within `budget_macs`, with as few images leaving early as that
/// allows. `None` when even every image leaving at the first exit exceeds the budget.
pub fn fit_budget(entropies: &[Vec<f64>], exit_macs: &[u64], budget_macs: f64) -> Option<Vec<f64>> {
    let sorted: Vec<Vec<f64>> = entropies
        .iter()
        .map(|e| {
            let mut v: Vec<f64> = e.iter().copied().filter(|x| x.is_finite()).collect();
            v.sort_by(f64::total_cmp);
            v
        })
        .collect();
    let thresholds = |q: f64| -> Vec<f64> { sorted.iter().map(|v| quantile(v, q)).collect() };
    let cost = |t: &[f64]| mean_macs(&route_entropies(entropies, t), exit_macs);
    if cost(&thresholds(0.0)) <= budget_macs {
        return Some(thresholds(0.0));
    }
    if cost(&thresholds(1.0)) > budget_macs {
        return None;
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if cost(&thresholds(mid)) <= budget_macs {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(thresholds(hi))
}

/// Thresholds that send the fraction `mix[k]` of the images to side exit k (`mix` has one
/// entry per exit, the final one last, and sums to 1): exit by exit, the images still
/// running with the lowest entropies leave. `entropies` is `[exit][image]`, side exits only.
pub fn fit_mix(entropies: &[Vec<f64>], mix: &[f64]) -> Vec<f64> {
    let n = entropies.first().map_or(0, Vec::len);
    let mut running: Vec<usize> = (0..n).collect();
    let mut thresholds = Vec::with_capacity(entropies.len());
    for (k, e) in entropies.iter().enumerate() {
        let want =
            ((mix.get(k).copied().unwrap_or(0.0) * n as f64).round() as usize).min(running.len());
        let mut vals: Vec<f64> = running
            .iter()
            .map(|&i| e[i])
            .filter(|v| v.is_finite())
            .collect();
        vals.sort_by(f64::total_cmp);
        let t = quantile(&vals, want as f64 / vals.len().max(1) as f64);
        thresholds.push(t);
        running.retain(|&i| e[i].partial_cmp(&t) != Some(std::cmp::Ordering::Less));
    }
    thresholds
}

/// What the thresholds are fitted for (`--exit-budget` or `--exit-mix`).
#[derive(Debug, Clone, PartialEq)]
pub enum ExitTarget {
    /// The routed prediction's mean MACs at most this fraction of the whole network's.
    Budget(f64),
    /// These fractions of the validation images leave at each exit, the final one last.
    Mix(Vec<f64>),
}

impl ExitTarget {
    /// Refuses a budget outside (0, 1] and a mix that is not fractions summing to 1.
    pub fn check(&self) -> std::result::Result<(), String> {
        match self {
            ExitTarget::Budget(b) if !(b.is_finite() && *b > 0.0 && *b <= 1.0) => Err(format!(
                "--exit-budget {b}: must be a fraction of the full MACs in (0, 1]"
            )),
            ExitTarget::Mix(m)
                if m.iter().any(|x| !(0.0..=1.0).contains(x))
                    || (m.iter().sum::<f64>() - 1.0).abs() > 1e-6 =>
            {
                Err(format!(
                    "--exit-mix {m:?}: must be fractions (one per exit, the final one last) \
                     summing to 1"
                ))
            }
            _ => Ok(()),
        }
    }

    fn describe(&self) -> String {
        match self {
            ExitTarget::Budget(b) => format!("{b} of the full MACs"),
            ExitTarget::Mix(m) => format!("exit mix {m:?}"),
        }
    }
}

/// A threshold below which a fraction ≈ q of the sorted values lie: the midpoint between the
/// two values around that rank (0 for q = 0: nothing leaves; past the largest for q = 1).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let j = ((q * n as f64).floor() as usize).min(n);
    match j {
        0 => 0.0,
        j if j >= n => sorted[n - 1] + 1e-6,
        j => 0.5 * (sorted[j - 1] + sorted[j]),
    }
}

/// The exit of each image from precomputed entropies (`[exit][image]`, side exits only).
fn route_entropies(entropies: &[Vec<f64>], thresholds: &[f64]) -> Vec<usize> {
    let n = entropies.first().map_or(0, Vec::len);
    (0..n)
        .map(|i| {
            entropies
                .iter()
                .zip(thresholds)
                .position(|(e, &t)| e[i] < t)
                .unwrap_or(entropies.len())
        })
        .collect()
}

fn mean_macs(exits: &[usize], exit_macs: &[u64]) -> f64 {
    if exits.is_empty() {
        return 0.0;
    }
    exits.iter().map(|&k| exit_macs[k] as f64).sum::<f64>() / exits.len() as f64
}

fn exit_mix(exits: &[usize], n_exits: usize) -> Vec<f64> {
    let mut m = vec![0.0; n_exits];
    for &k in exits {
        m[k] += 1.0;
    }
    let n = exits.len().max(1) as f64;
    m.iter().map(|c| c / n).collect()
}

/// The trainer's exit logits of `x` as `[exit][image·class]` f32 rows.
fn trainer_rows(model: &TchModel, lambda: f64, width: f64, x: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = oats_export::trainer_exit_logits(model, lambda, width, x)?;
    t.iter()
        .map(|l| {
            Ok(Vec::<f32>::try_from(
                l.to_device(tch::Device::Cpu)
                    .to_kind(Kind::Float)
                    .contiguous()
                    .flatten(0, -1),
            )?)
        })
        .collect()
}

/// The routed prediction of the trainer's logits: per image its exit and predicted class.
fn trainer_routed(
    rows: &[Vec<f32>],
    classes: usize,
    thresholds: &[f64],
) -> (Vec<usize>, Vec<usize>) {
    let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
    let exits = oats_graph::routing::route(&refs, classes, thresholds);
    let preds = exits
        .iter()
        .enumerate()
        .map(|(i, &k)| argmax(&rows[k][i * classes..(i + 1) * classes]))
        .collect();
    (exits, preds)
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Top-2 margin of a row (ties make argmax comparisons meaningless).
fn margin(row: &[f32]) -> f32 {
    let mut v = row.to_vec();
    v.sort_by(|a, b| b.total_cmp(a));
    v.first().copied().unwrap_or(0.0) - v.get(1).copied().unwrap_or(f32::NEG_INFINITY)
}

fn labels(y: &Tensor) -> Result<Vec<usize>> {
    Ok(Vec::<i64>::try_from(y.to_kind(Kind::Int64).contiguous())?
        .into_iter()
        .map(|v| v as usize)
        .collect())
}

fn batch_of(x: &Tensor) -> Result<Batch> {
    let d: Vec<usize> = x.size().iter().map(|&v| v as usize).collect();
    let data = Vec::<f32>::try_from(x.to_kind(Kind::Float).contiguous().flatten(0, -1))?;
    Ok(Batch::new([d[0], d[1], d[2], d[3]], data)?)
}

/// Replays `x` through each runtime's routed inference and counts the images routed or
/// classified differently from the trainer's routed prediction, excluding ties.
#[allow(clippy::too_many_arguments)]
fn replay(
    rts: &[OatsModel],
    id: &str,
    x: &Tensor,
    rows: &[Vec<f32>],
    classes: usize,
    thresholds: &[f64],
    batch: usize,
) -> Result<usize> {
    let (want_exit, want_pred) = trainer_routed(rows, classes, thresholds);
    let n = want_exit.len();
    let mut bad = 0;
    for rt in rts {
        for s in (0..n).step_by(batch.max(1)) {
            let m = batch.min(n - s);
            let b = batch_of(&x.narrow(0, s as i64, m as i64))?;
            let p = rt.infer_routed_with(id, &b, thresholds)?;
            let got_exit = p.exits.unwrap_or_default();
            for (j, &kg) in got_exit.iter().enumerate().take(m) {
                let i = s + j;
                let ke = want_exit[i];
                if ke != kg {
                    let k = ke.min(kg);
                    let h = oats_graph::routing::entropy(&rows[k][i * classes..(i + 1) * classes]);
                    if (h - thresholds[k]).abs() >= ENTROPY_TIE {
                        bad += 1;
                    }
                    continue;
                }
                let row = &p.logits[j * classes..(j + 1) * classes];
                if argmax(row) != want_pred[i]
                    && f64::from(margin(row)) >= crate::measure::TIE_MARGIN
                {
                    bad += 1;
                }
            }
        }
    }
    Ok(bad)
}

/// One timed pass: wall-clock ms per image of `batches` through routed inference with
/// `thresholds` in `rt` (`None`: the plain graph).
fn time_pass(
    rt: &OatsModel,
    id: &str,
    batches: &[Batch],
    thresholds: Option<&[f64]>,
) -> Result<f64> {
    let images: usize = batches.iter().map(Batch::batch_size).sum();
    let t0 = Instant::now();
    for b in batches {
        match thresholds {
            Some(t) => drop(rt.infer_routed_with(id, b, t)?),
            None => drop(rt.infer_with(id, b)?),
        }
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3 / images.max(1) as f64)
}

/// The first [`TIMED_IMAGES`] images of `x` in batches of `batch`.
fn timed_batches(x: &Tensor, batch: usize) -> Result<Vec<Batch>> {
    let n = (x.size()[0] as usize).min(TIMED_IMAGES);
    (0..n)
        .step_by(batch)
        .map(|s| batch_of(&x.narrow(0, s as i64, batch.min(n - s) as i64)))
        .collect()
}

/// Wall-clock ms per image at `batch`: the clean images routed, the slowdown images routed,
/// the clean images through the plain graph and routed with thresholds 0, timed side by side in [`TIMING_ROUNDS`]
/// interleaved rounds after a warm-up pass (so drift of a noisy machine hits all four
/// alike); the median round of each.
fn wall_clock(
    rt: &OatsModel,
    id: &str,
    clean: &Tensor,
    slow: &Tensor,
    thresholds: &[f64],
    batch: usize,
) -> Result<WallClock> {
    let (c, s) = (timed_batches(clean, batch)?, timed_batches(slow, batch)?);
    let never = vec![0.0; thresholds.len()];
    let cases: [(&[Batch], Option<&[f64]>); 4] = [
        (&c, Some(thresholds)),
        (&s, Some(thresholds)),
        (&c, None),
        (&c, Some(&never)),
    ];
    for (b, t) in cases {
        time_pass(rt, id, b, t)?;
    }
    let mut samples = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..TIMING_ROUNDS {
        for (k, (b, t)) in cases.iter().enumerate() {
            samples[k].push(time_pass(rt, id, b, *t)?);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(WallClock {
        batch,
        clean_ms: median(&mut samples[0]),
        slowdown_ms: median(&mut samples[1]),
        full_ms: median(&mut samples[2]),
        never_ms: median(&mut samples[3]),
    })
}

/// Calibrates configuration `id` (λ, width, its manifest `entry`) on `set`, thresholds fitted
/// for `target`; `main_branch` holds the final classifier's worst-case
/// images from the ordinary calibration.
#[allow(clippy::too_many_arguments)]
pub fn calibrate(
    model: &TchModel,
    rts: &[OatsModel],
    id: &str,
    lambda: f64,
    width: f64,
    full_macs: u64,
    entry: &ExitsEntry,
    set: &CalibrationSet,
    main_branch: &Tensor,
    eps: f64,
    seed: u64,
    target: &ExitTarget,
    batch: usize,
) -> Result<ExitsCalibration> {
    let classes = model.net.fc.classes as usize;
    let n_exits = entry.segments.len();
    let exit_macs = &entry.exit_macs;
    let y = labels(&set.y)?;
    let accuracy = |preds: &[usize]| -> f64 {
        preds.iter().zip(&y).filter(|(p, t)| p == t).count() as f64 / y.len().max(1) as f64
    };
    let routed = |exits: &[usize], preds: &[usize]| Routed {
        accuracy: accuracy(preds),
        exit_mix: exit_mix(exits, n_exits),
        mean_macs: mean_macs(exits, exit_macs),
        macs_fraction: mean_macs(exits, exit_macs) / full_macs.max(1) as f64,
    };

    // 1. Thresholds on the clean validation images.
    let clean_rows = trainer_rows(model, lambda, width, &set.x)?;
    let refs: Vec<&[f32]> = clean_rows.iter().map(Vec::as_slice).collect();
    let ents = oats_graph::routing::entropies(&refs[..n_exits - 1], classes);
    let thresholds = match target {
        ExitTarget::Budget(budget) => fit_budget(&ents, exit_macs, budget * full_macs as f64)
            .ok_or_else(|| {
                CalibrateError::Invalid(format!(
                    "{id}: a budget of {budget} × {full_macs} MACs is below the first exit's \
                     cost ({} MACs): no routing meets it",
                    exit_macs[0]
                ))
            })?,
        ExitTarget::Mix(mix) => {
            if mix.len() != n_exits {
                return Err(CalibrateError::Invalid(format!(
                    "{id}: --exit-mix has {} fractions, the model has {n_exits} exits (the \
                     final one included)",
                    mix.len()
                )));
            }
            fit_mix(&ents, mix)
        }
    };
    let (exits, preds) = trainer_routed(&clean_rows, classes, &thresholds);
    let clean = routed(&exits, &preds);
    let mut disagreements = replay(rts, id, &set.x, &clean_rows, classes, &thresholds, batch)?;

    // 2. Attacks on the routed prediction (trainer, eval mode), per-sample worst case.
    let wi = model.width_index(width)?;
    let cond = model.cond_for(lambda)?;
    let f = |x: &Tensor| model.exit_logits(x, &cond, wi);
    let step = eps / 4.0;
    let mut noise = PrivateNoise::new(seed);
    let n = set.len();
    let mut correct_all = vec![true; n];
    let mut worst_x = set.x.shallow_clone();
    let mut ra = BTreeMap::new();
    let average = vec![1.0 / n_exits as f64; n_exits];
    for name in ["main-branch", "average", "max-average", "routed"] {
        let mut parts = Vec::new();
        for s in (0..n).step_by(batch.max(1)) {
            let m = batch.min(n - s) as i64;
            let x0 = set.x.narrow(0, s as i64, m);
            let y0 = set.y.narrow(0, s as i64, m);
            let mut nz = |t: &Tensor| noise.like(t);
            let adv = match name {
                "main-branch" => main_branch.narrow(0, s as i64, m),
                "average" => attack::pgd_exits(
                    &f,
                    &x0,
                    &y0,
                    eps,
                    step,
                    ATTACK_STEPS,
                    &average,
                    Some(&mut nz),
                ),
                "max-average" => attack::max_average(
                    &f,
                    n_exits,
                    &x0,
                    &y0,
                    eps,
                    step,
                    ATTACK_STEPS,
                    Some(&mut nz),
                ),
                _ => attack::pgd_routed(
                    &f,
                    &x0,
                    &y0,
                    eps,
                    step,
                    ATTACK_STEPS,
                    &thresholds,
                    Some(&mut nz),
                ),
            };
            parts.push(adv);
        }
        let adv = Tensor::cat(&parts, 0);
        let rows = trainer_rows(model, lambda, width, &adv)?;
        let (_, preds) = trainer_routed(&rows, classes, &thresholds);
        ra.insert(name.to_string(), accuracy(&preds));
        let mut keep = vec![false; n];
        for i in 0..n {
            if correct_all[i] && preds[i] != y[i] {
                correct_all[i] = false;
                keep[i] = true;
            }
        }
        let mask = Tensor::from_slice(&keep).view([n as i64, 1, 1, 1]);
        worst_x = adv.where_self(&mask, &worst_x);
    }
    let ra_worst = correct_all.iter().filter(|&&c| c).count() as f64 / n.max(1) as f64;
    let worst_rows = trainer_rows(model, lambda, width, &worst_x)?;
    disagreements += replay(rts, id, &worst_x, &worst_rows, classes, &thresholds, batch)?;

    // 3. Slowdown.
    let mut parts = Vec::new();
    for s in (0..n).step_by(batch.max(1)) {
        let x0 = set.x.narrow(0, s as i64, batch.min(n - s) as i64);
        let mut nz = |t: &Tensor| noise.like(t);
        parts.push(attack::slowdown(
            &f,
            &x0,
            eps,
            step,
            ATTACK_STEPS,
            &thresholds,
            Some(&mut nz),
        ));
    }
    let slow_x = Tensor::cat(&parts, 0);
    let slow_rows = trainer_rows(model, lambda, width, &slow_x)?;
    let (slow_exits, slow_preds) = trainer_routed(&slow_rows, classes, &thresholds);
    let slowdown = routed(&slow_exits, &slow_preds);
    disagreements += replay(rts, id, &slow_x, &slow_rows, classes, &thresholds, batch)?;
    if disagreements > 0 {
        return Err(CalibrateError::Invalid(format!(
            "{id}: the runtime's routed inference disagrees with the trainer's on \
             {disagreements} images (routed to another exit or classified differently, ties \
             excluded)"
        )));
    }

    // 4. Wall clock, per runtime.
    let mut clocks = BTreeMap::new();
    for rt in rts {
        let v = [1usize, 64]
            .into_iter()
            .map(|b| wall_clock(rt, id, &set.x, &slow_x, &thresholds, b))
            .collect::<Result<Vec<_>>>()?;
        clocks.insert(rt.backend().name().to_string(), v);
    }
    Ok(ExitsCalibration {
        thresholds,
        target: target.describe(),
        exit_macs: exit_macs.clone(),
        full_macs,
        clean,
        ra,
        ra_worst,
        slowdown,
        wall_clock: clocks,
        runtime_disagreements: disagreements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_fit_meets_the_budget_with_the_fewest_early_exits() {
        // 100 images, two side exits; entropies spread over [0, 1).
        let e0: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        let e1: Vec<f64> = (0..100).map(|i| ((i * 37) % 100) as f64 / 100.0).collect();
        let ents = vec![e0, e1];
        let macs = [40, 70, 100];
        let t = fit_budget(&ents, &macs, 70.0).expect("fits");
        let exits = route_entropies(&ents, &t);
        let m = mean_macs(&exits, &macs);
        assert!(m <= 70.0, "{m}");
        assert!(m > 68.0, "not far under the budget: {m}");
        // A generous budget: nothing leaves early; an impossible one: none.
        assert_eq!(fit_budget(&ents, &macs, 100.0), Some(vec![0.0, 0.0]));
        assert_eq!(fit_budget(&ents, &macs, 39.0), None);
        assert!(fit_budget(&ents, &macs, 40.0).is_some());
    }

    #[test]
    fn mix_fit_sends_the_asked_fractions() {
        let e0: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        let e1: Vec<f64> = (0..100).map(|i| ((i * 37) % 100) as f64 / 100.0).collect();
        let ents = vec![e0, e1];
        let t = fit_mix(&ents, &[0.3, 0.2, 0.5]);
        let mix = exit_mix(&route_entropies(&ents, &t), 3);
        assert!(
            (mix[0] - 0.3).abs() < 1e-9 && (mix[1] - 0.2).abs() < 1e-9,
            "{mix:?}"
        );
        assert!(ExitTarget::Mix(vec![0.3, 0.3]).check().is_err());
        assert!(ExitTarget::Budget(1.5).check().is_err());
        assert!(ExitTarget::Mix(vec![0.3, 0.7]).check().is_ok());
    }

    #[test]
    fn quantiles_split_between_values() {
        let v = [0.1, 0.2, 0.3, 0.4];
        assert_eq!(quantile(&v, 0.0), 0.0);
        assert!((quantile(&v, 0.5) - 0.25).abs() < 1e-12);
        assert!(quantile(&v, 1.0) > 0.4);
    }
}
