//! Per-graph measurements beside the evaluator's SA / RA (`oats_train::eval`, run on the
//! tch model in eval mode because the exported graph has no input gradients): the replay of
//! the clean and worst-case adversarial images through the runtime's graph, and the graph's
//! latency.
use std::collections::BTreeMap;

use oats_runtime::bench::{bench_config, BenchConfig};
use oats_runtime::{Batch, LatencyStat, OperatingPoint, Selector};
use oats_train::eval::WorstCase;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

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

/// Runs the clean and worst-case images through the configuration `config` names (a graph of
/// the manifest, or one `rt` derives from the package), `id` in reports and errors, and checks
/// that the
/// runtime classifies every sample as the trainer did (ties excepted) and that its clean
/// logits are the trainer's to [`LOGIT_TOLERANCE`]. `tch` is the trainer's measurement of
/// the graph's (λ, width) and `worst` its worst-case images. A failure names the graph.
pub fn replay(
    rt: &oats_runtime::OatsModel,
    id: &str,
    config: &Selector,
    tch: &OperatingPoint,
    worst: &WorstCase,
    set: &CalibrationSet,
    batch: usize,
) -> Result<Replay> {
    let (lambda, width) = (tch.lambda, tch.width);
    let tch_ra_worst = tch.ra_worst.unwrap_or(f64::NAN);
    let clean = run_graph(rt, config, &set.x, batch)?;
    let adv = run_graph(rt, config, &worst.x, batch)?;
    let y = &set.y;
    let rt_clean_ok = clean.argmax(1, false).eq_tensor(y);
    let rt_adv_ok = adv.argmax(1, false).eq_tensor(y).logical_and(&rt_clean_ok);
    let n = set.len();
    let frac = |c: i64| c as f64 / n.max(1) as f64;
    let (clean_disagreements, clean_ties) = disagreements(&clean, &worst.clean_logits);
    let (adv_disagreements, adv_ties) = disagreements(&adv, &worst.logits);
    let r = Replay {
        sa: frac(count(&rt_clean_ok)),
        ra: frac(count(&rt_adv_ok)),
        clean_disagreements,
        clean_ties,
        adv_disagreements,
        adv_ties,
        max_clean_logit_diff: (&clean - &worst.clean_logits).abs().max().double_value(&[]),
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
            tie_margin: TIE_MARGIN,
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
            tie_margin: TIE_MARGIN,
            tch: tch_ra_worst,
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

/// Logits of the configuration `config` for `x` ([N, C, H, W], CPU) as an [N, K] tensor.
pub(crate) fn run_graph(
    rt: &oats_runtime::OatsModel,
    config: &Selector,
    x: &Tensor,
    batch: usize,
) -> Result<Tensor> {
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
        let p = rt.infer_selected(config, &b)?;
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

/// Latency of the configuration `config` on `rt`'s backend, keyed "<backend>/b<batch>".
pub fn latency(
    rt: &oats_runtime::OatsModel,
    config: &Selector,
    s: &LatencySettings,
) -> Result<BTreeMap<String, LatencyStat>> {
    let mut out = BTreeMap::new();
    for &b in &s.batches {
        let r = bench_config(
            rt,
            config,
            &BenchConfig {
                batch: b,
                warmup: s.warmup,
                iters: s.iters,
            },
        )?;
        out.insert(
            oats_runtime::manifest::latency_key(rt.backend().name(), b),
            LatencyStat {
                p50: r.p50_ms,
                p90: r.p90_ms,
                p99: r.p99_ms,
            },
        );
    }
    Ok(out)
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
