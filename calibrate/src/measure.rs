//! Per-graph measurements: clean and robust accuracy of the trainer's model at the graph's
//! (λ, width) (the exported graph has no input gradients, so the attacks run on the tch
//! model in eval mode), the replay of the clean and worst-case adversarial images through
//! the runtime's graph, and the graph's latency.
use std::collections::BTreeMap;

use indicatif::ProgressBar;
use oats_runtime::bench::{bench_graph, BenchConfig};
use oats_runtime::{Batch, LatencyStat};
use oats_train::{attack, OatsModel};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::attacks::AttackSpec;
use crate::error::{CalibrateError, Result};

/// Samples whose trainer top-2 logit margin is below this are ties: the runtime may pick the
/// other class there without either side being wrong (f32 summation order differs).
pub const TIE_MARGIN: f64 = 1e-4;

/// Largest |Δlogit| between the graph and the trainer on clean images (sanity check (c)).
pub const LOGIT_TOLERANCE: f64 = 1e-4;

/// The images and labels calibration runs on.
pub struct CalibrationSet {
    /// [N, C, H, W] in [0, 1], CPU.
    pub x: Tensor,
    /// [N] class indices, CPU.
    pub y: Tensor,
}

impl CalibrationSet {
    pub fn len(&self) -> usize {
        self.y.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `n` samples.
    pub fn head(&self, n: usize) -> CalibrationSet {
        let n = n.min(self.len()) as i64;
        CalibrationSet {
            x: self.x.narrow(0, 0, n),
            y: self.y.narrow(0, 0, n),
        }
    }
}

/// What the trainer's model does at one (λ, width): accuracies and, per sample, the clean
/// logits and the worst-case adversarial image with its logits (for the replay).
pub struct TchMeasurement {
    pub sa: f64,
    /// Robust accuracy per attack key.
    pub ra: BTreeMap<String, f64>,
    /// Per-sample worst case over the attacks: robust only if correct when clean and under
    /// every attack.
    pub ra_worst: f64,
    pub samples: usize,
    /// [N, K], CPU.
    pub clean_logits: Tensor,
    /// [N, C, H, W], CPU: per sample an image that fools the model if any attack found one
    /// (the clean image itself when it is misclassified), else the last attack's image.
    pub worst_x: Tensor,
    /// Trainer logits on `worst_x`, [N, K], CPU.
    pub worst_logits: Tensor,
}

/// Runs every attack on `set` at (λ, width) in batches of `batch`; advances `bar` by the
/// number of samples done.
#[allow(clippy::too_many_arguments)]
pub fn attack_graph(
    model: &OatsModel,
    lambda: f64,
    width: f64,
    set: &CalibrationSet,
    attacks: &[AttackSpec],
    eps: f64,
    batch: usize,
    bar: &ProgressBar,
) -> Result<TchMeasurement> {
    let wi = model.width_index(width)?;
    let cond = model.cond_for(lambda)?;
    let device = model.vs.device();
    let f = |z: &Tensor| model.logits(z, &cond, wi);
    let n = set.len() as i64;
    let pgd_step = eps / 4.0;
    let mut clean = 0i64;
    let mut per_attack = vec![0i64; attacks.len()];
    let mut worst = 0i64;
    let (mut clean_logits, mut worst_xs, mut worst_logits) = (Vec::new(), Vec::new(), Vec::new());
    let mut s0 = 0;
    while s0 < n {
        let len = (batch as i64).min(n - s0);
        let xb = set.x.narrow(0, s0, len).to_device(device);
        let yb = set.y.narrow(0, s0, len).to_device(device);
        let logits = {
            let _ng = tch::no_grad_guard();
            f(&xb)
        };
        let ok_clean = logits.argmax(1, false).eq_tensor(&yb);
        clean += count(&ok_clean);
        // A sample is robust only if it is also classified correctly when clean, so only
        // those are attacked; a misclassified clean image is its own worst case.
        let idx = ok_clean.nonzero().squeeze_dim(1);
        let mut wx = xb.copy();
        if idx.size()[0] > 0 {
            let (xs, ys) = (xb.index_select(0, &idx), yb.index_select(0, &idx));
            let mut any_fooled = ys.zeros_like().to_kind(Kind::Bool);
            let mut worst_s: Option<Tensor> = None;
            for (ai, a) in attacks.iter().enumerate() {
                let xa = a.run(&f, &xs, &ys, eps, pgd_step);
                let fooled = attack::fooled(&f, &xa, &ys);
                per_attack[ai] += count(&fooled.logical_not());
                worst_s = Some(match worst_s {
                    // Keep an earlier fooling image; otherwise take this attack's.
                    Some(w) => w.where_self(&any_fooled.view([-1, 1, 1, 1]), &xa),
                    None => xa,
                });
                any_fooled = any_fooled.logical_or(&fooled);
            }
            worst += count(&any_fooled.logical_not());
            if let Some(ws) = worst_s {
                wx = wx.index_copy(0, &idx, &ws);
            }
        }
        let wl = {
            let _ng = tch::no_grad_guard();
            f(&wx)
        };
        clean_logits.push(logits.to_device(Device::Cpu));
        worst_logits.push(wl.to_device(Device::Cpu));
        worst_xs.push(wx.to_device(Device::Cpu));
        s0 += len;
        bar.inc(len as u64);
    }
    let frac = |c: i64| c as f64 / n.max(1) as f64;
    Ok(TchMeasurement {
        sa: frac(clean),
        ra: attacks
            .iter()
            .zip(&per_attack)
            .map(|(a, &c)| (a.key(), frac(c)))
            .collect(),
        ra_worst: frac(worst),
        samples: n as usize,
        clean_logits: Tensor::cat(&clean_logits, 0),
        worst_x: Tensor::cat(&worst_xs, 0),
        worst_logits: Tensor::cat(&worst_logits, 0),
    })
}

fn count(mask: &Tensor) -> i64 {
    mask.sum(Kind::Int64).int64_value(&[])
}

/// The replay of one graph on one backend, compared with the trainer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replay {
    /// Runtime clean accuracy.
    pub sa: f64,
    /// Runtime accuracy on the worst-case adversarial images (correct when clean too).
    pub ra: f64,
    /// Samples whose runtime argmax differs from the trainer's, clean images.
    pub clean_disagreements: usize,
    /// Of those, ties (trainer top-2 margin < [`TIE_MARGIN`]).
    pub clean_ties: usize,
    pub adv_disagreements: usize,
    pub adv_ties: usize,
    /// Sanity check (c): max |Δlogit| between graph and trainer on the clean images.
    pub max_clean_logit_diff: f64,
}

/// Runs the clean and worst-case images through graph `id` of `rt` and checks that the
/// runtime classifies every sample as the trainer did (ties excepted) and that its clean
/// logits are the trainer's to [`LOGIT_TOLERANCE`]. A failure names the graph.
pub fn replay(
    rt: &oats_runtime::OatsModel,
    id: &str,
    lambda: f64,
    width: f64,
    tch: &TchMeasurement,
    set: &CalibrationSet,
    batch: usize,
) -> Result<Replay> {
    let clean = run_graph(rt, id, &set.x, batch)?;
    let adv = run_graph(rt, id, &tch.worst_x, batch)?;
    let y = &set.y;
    let rt_clean_ok = clean.argmax(1, false).eq_tensor(y);
    let rt_adv_ok = adv.argmax(1, false).eq_tensor(y).logical_and(&rt_clean_ok);
    let n = set.len();
    let frac = |c: i64| c as f64 / n.max(1) as f64;
    let (clean_disagreements, clean_ties) = disagreements(&clean, &tch.clean_logits);
    let (adv_disagreements, adv_ties) = disagreements(&adv, &tch.worst_logits);
    let r = Replay {
        sa: frac(count(&rt_clean_ok)),
        ra: frac(count(&rt_adv_ok)),
        clean_disagreements,
        clean_ties,
        adv_disagreements,
        adv_ties,
        max_clean_logit_diff: (&clean - &tch.clean_logits).abs().max().double_value(&[]),
    };
    let backend = rt.backend().name().to_string();
    if clean_disagreements > clean_ties {
        return Err(CalibrateError::ReplayMismatch {
            graph: id.into(),
            backend,
            images: "clean",
            samples: n,
            disagreements: clean_disagreements,
            ties: clean_ties,
            tch: tch.sa,
            runtime: r.sa,
        });
    }
    if adv_disagreements > adv_ties {
        return Err(CalibrateError::ReplayMismatch {
            graph: id.into(),
            backend,
            images: "adversarial",
            samples: n,
            disagreements: adv_disagreements,
            ties: adv_ties,
            tch: tch.ra_worst,
            runtime: r.ra,
        });
    }
    // A NaN difference fails too.
    if r.max_clean_logit_diff.is_nan() || r.max_clean_logit_diff > LOGIT_TOLERANCE {
        return Err(CalibrateError::LogitMismatch {
            graph: id.into(),
            backend,
            lambda,
            width,
            max_abs_diff: r.max_clean_logit_diff,
            limit: LOGIT_TOLERANCE,
        });
    }
    Ok(r)
}

/// (samples whose argmax differs, how many of those are trainer-side ties).
fn disagreements(runtime: &Tensor, trainer: &Tensor) -> (usize, usize) {
    let differ = runtime
        .argmax(1, false)
        .ne_tensor(&trainer.argmax(1, false));
    let top2 = trainer.topk(2.min(trainer.size()[1]), 1, true, true).0;
    let margin = if top2.size()[1] == 2 {
        top2.select(1, 0) - top2.select(1, 1)
    } else {
        top2.select(1, 0).ones_like()
    };
    let tie = margin.lt(TIE_MARGIN);
    (
        count(&differ) as usize,
        count(&differ.logical_and(&tie)) as usize,
    )
}

/// Logits of graph `id` for `x` ([N, C, H, W], CPU) as an [N, K] tensor.
fn run_graph(rt: &oats_runtime::OatsModel, id: &str, x: &Tensor, batch: usize) -> Result<Tensor> {
    let dims = x.size();
    let n = dims[0];
    let mut outs = Vec::new();
    let mut s0 = 0;
    while s0 < n {
        let len = (batch as i64).min(n - s0);
        let xb = x.narrow(0, s0, len).to_kind(Kind::Float).contiguous();
        let data = Vec::<f32>::try_from(xb.flatten(0, -1))?;
        let b = Batch::new(
            [
                len as usize,
                dims[1] as usize,
                dims[2] as usize,
                dims[3] as usize,
            ],
            data,
        )?;
        let p = rt.infer_with(id, &b)?;
        outs.push(Tensor::from_slice(&p.logits).view([p.batch as i64, p.classes as i64]));
        s0 += len;
    }
    Ok(Tensor::cat(&outs, 0))
}

/// How latency is measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySettings {
    /// Batch sizes (1 at least is what the selection policy reads).
    pub batches: Vec<usize>,
    pub warmup: usize,
    pub iters: usize,
}

impl Default for LatencySettings {
    fn default() -> Self {
        LatencySettings {
            batches: vec![1],
            warmup: 10,
            iters: 100,
        }
    }
}

/// Latency of graph `id` on `rt`'s backend, keyed "<backend>/b<batch>".
pub fn latency(
    rt: &oats_runtime::OatsModel,
    id: &str,
    s: &LatencySettings,
) -> Result<BTreeMap<String, LatencyStat>> {
    let mut out = BTreeMap::new();
    for &b in &s.batches {
        let r = bench_graph(
            rt,
            id,
            &BenchConfig {
                batch: b,
                warmup: s.warmup,
                iters: s.iters,
            },
        )?;
        out.insert(
            latency_key(rt.backend().name(), b),
            LatencyStat {
                p50: r.p50_ms,
                p90: r.p90_ms,
                p99: r.p99_ms,
            },
        );
    }
    Ok(out)
}

pub fn latency_key(backend: &str, batch: usize) -> String {
    format!("{backend}/b{batch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_excuse_only_boundary_disagreements() {
        // Trainer: sample 0 is a tie between classes 0 and 1, sample 1 is clear-cut.
        let trainer = Tensor::from_slice(&[1.0f32, 1.0 - 5e-5, 0.0, 2.0, 0.0, 0.0]).view([2, 3]);
        let same = trainer.shallow_clone();
        assert_eq!(disagreements(&same, &trainer), (0, 0));
        let flip_tie = Tensor::from_slice(&[1.0f32 - 1e-4, 1.0, 0.0, 2.0, 0.0, 0.0]).view([2, 3]);
        assert_eq!(disagreements(&flip_tie, &trainer), (1, 1));
        let flip_clear = Tensor::from_slice(&[1.0f32, 1.0 - 5e-5, 0.0, 0.0, 3.0, 0.0]).view([2, 3]);
        assert_eq!(disagreements(&flip_clear, &trainer), (1, 0));
    }
}
