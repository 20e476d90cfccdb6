//! SA and RA of an int8 configuration, measured rather than assumed (issue #15).
//!
//! Quantization moves the decision boundary, so the float model's robustness does not carry
//! over. Two attacks, and the per-sample worst case of both:
//! * **transfer**: the float configuration's worst-case adversarial images (the float
//!   calibration's) replayed through the int8 graph;
//! * **direct**: the calibration's attacks run against the int8 graph itself, read by the
//!   training framework from the very file the device runs
//!   ([`oats_export::tch_graph::TchGraph`]), with a straight-through gradient through its
//!   quantizers, by the one evaluator ([`oats_train::eval::evaluate_fn`]).
//!
//! The verdicts are the engines': every image (clean, transfer, direct worst case) runs
//! through the int8 graph in each backend. A sample counts as robust only if every engine
//! classifies the clean image and every adversarial image correctly **and** the training
//! framework's reading was not fooled either: integer kernels requantize with their own
//! rounding, so an image on the boundary for one reading may sit just inside for another;
//! the worst of the readings is the honest number. `transfer` and each direct attack are
//! kept in `ra`; `ra_worst` is the per-sample worst case over all of them.
use std::collections::BTreeMap;
use std::path::Path;

use indicatif::ProgressBar;
use oats_export::tch_graph::TchGraph;
use oats_runtime::manifest::GraphEntry;
use oats_runtime::{OperatingPoint, Selector};
use oats_train::eval::{self, EvalOptions};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{CalibrateError, Result};
use crate::measure::{self, CalibrationSet};

/// Key of the transfer attack in an int8 graph's `ra`.
pub const TRANSFER: &str = "transfer";

/// What an int8 configuration's calibration adds to its report entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Int8Calibration {
    /// The float configuration it quantizes.
    pub float_id: String,
    /// Per engine: clean images whose top-1 differs from the training framework's reading of
    /// the same int8 graph.
    pub clean_disagreements: BTreeMap<String, usize>,
    /// Per engine: direct worst-case images on which the engine's verdict (fooled or not)
    /// differs from the training framework's.
    pub direct_disagreements: BTreeMap<String, usize>,
    /// Per engine: largest |engine − training framework| clean logit.
    pub max_clean_logit_diff: BTreeMap<String, f64>,
}

/// The measurement of one int8 graph: its operating point (SA, RA per attack, worst case,
/// engine verdicts), per-engine SA / worst RA, and the agreement record.
pub struct Int8Measurement {
    pub point: OperatingPoint,
    pub runtime_sa: BTreeMap<String, f64>,
    pub runtime_ra: BTreeMap<String, f64>,
    pub info: Int8Calibration,
}

/// The int8 graph of `entry` (its file, or derived from the package with its ranges), read
/// into the training framework.
pub fn tch_graph(
    dir: &Path,
    manifest: &oats_runtime::Manifest,
    entry: &GraphEntry,
) -> Result<TchGraph> {
    let invalid = |e: oats_export::ExportError| {
        CalibrateError::Invalid(format!("int8 graph {} in {}: {e}", entry.id, dir.display()))
    };
    let g = oats_export::int8::int8_graph(dir, manifest, entry).map_err(invalid)?;
    TchGraph::new(&g, Device::Cpu).map_err(invalid)
}

fn bools(t: &Tensor) -> Result<Vec<bool>> {
    Ok(Vec::<bool>::try_from(t.to_kind(Kind::Bool))?)
}

/// Measures the int8 graph `entry` (module docs). `float_worst` are the float
/// configuration's worst-case images for `set`.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    dir: &Path,
    manifest: &oats_runtime::Manifest,
    entry: &GraphEntry,
    float_id: &str,
    float_worst: &Tensor,
    set: &CalibrationSet,
    opts: &EvalOptions,
    rts: &[oats_runtime::OatsModel],
    split: &str,
    bar: &ProgressBar,
) -> Result<Int8Measurement> {
    let tg = tch_graph(dir, manifest, entry)?;
    let f = |z: &Tensor| tg.logits(z);
    bar.set_message("attacking int8 (straight-through)");
    let direct = eval::evaluate_fn(
        &f,
        Device::Cpu,
        entry.lambda,
        entry.width,
        &set.x,
        &set.y,
        opts,
        bar,
    )?;
    let worst = direct
        .worst_case
        .as_ref()
        .ok_or_else(|| CalibrateError::Invalid("the evaluator kept no worst-case images".into()))?;
    let n = set.len();
    let y = &set.y;
    let selector = Selector::Id(entry.id.clone());
    let all_true = || Tensor::ones([n as i64], (Kind::Bool, Device::Cpu));
    let (mut clean_all, mut transfer_all, mut direct_all) = (all_true(), all_true(), all_true());
    let mut info = Int8Calibration {
        float_id: float_id.to_string(),
        clean_disagreements: BTreeMap::new(),
        direct_disagreements: BTreeMap::new(),
        max_clean_logit_diff: BTreeMap::new(),
    };
    let (mut runtime_sa, mut runtime_ra) = (BTreeMap::new(), BTreeMap::new());
    let tch_direct_fooled = worst.logits.argmax(1, false).ne_tensor(y);
    for rt in rts {
        let name = rt.backend().name().to_string();
        bar.set_message(format!("int8 replay {name}"));
        let clean = measure::run_graph(rt, &selector, &set.x, opts.batch)?;
        let transfer = measure::run_graph(rt, &selector, float_worst, opts.batch)?;
        let adv = measure::run_graph(rt, &selector, &worst.x, opts.batch)?;
        let clean_ok = clean.argmax(1, false).eq_tensor(y);
        let transfer_ok = transfer.argmax(1, false).eq_tensor(y);
        let direct_ok = adv.argmax(1, false).eq_tensor(y);
        let count = |t: &Tensor| t.sum(Kind::Int64).int64_value(&[]) as usize;
        info.clean_disagreements.insert(
            name.clone(),
            count(
                &clean
                    .argmax(1, false)
                    .ne_tensor(&worst.clean_logits.argmax(1, false)),
            ),
        );
        info.direct_disagreements.insert(
            name.clone(),
            count(&direct_ok.logical_not().ne_tensor(&tch_direct_fooled)),
        );
        info.max_clean_logit_diff.insert(
            name.clone(),
            (&clean - &worst.clean_logits).abs().max().double_value(&[]),
        );
        let frac = |t: &Tensor| count(t) as f64 / n.max(1) as f64;
        runtime_sa.insert(name.clone(), frac(&clean_ok));
        runtime_ra.insert(
            name,
            frac(&clean_ok.logical_and(&transfer_ok).logical_and(&direct_ok)),
        );
        clean_all = clean_all.logical_and(&clean_ok);
        transfer_all = transfer_all.logical_and(&transfer_ok);
        direct_all = direct_all.logical_and(&direct_ok);
    }
    let frac = |v: &[bool]| v.iter().filter(|&&b| b).count() as f64 / n.max(1) as f64;
    let clean_v = bools(&clean_all)?;
    let transfer_v = bools(&clean_all.logical_and(&transfer_all))?;
    let direct_engine = bools(&direct_all)?;
    let mut ra = BTreeMap::new();
    ra.insert(TRANSFER.to_string(), frac(&transfer_v));
    for (key, robust) in direct.attacks.iter().zip(&direct.samples.robust) {
        // The training framework's verdict per attack, counted only where every engine
        // classifies the clean image correctly.
        let v: Vec<bool> = robust.iter().zip(&clean_v).map(|(&r, &c)| r && c).collect();
        ra.insert(key.clone(), frac(&v));
    }
    let worst_v: Vec<bool> = (0..n)
        .map(|i| transfer_v[i] && direct_engine[i] && direct.samples.worst[i])
        .collect();
    let point = OperatingPoint {
        lambda: entry.lambda,
        width: entry.width,
        sa: frac(&clean_v),
        ra,
        ra_worst: Some(frac(&worst_v)),
        samples: n,
        split: split.to_string(),
        epsilon: opts.eps,
    };
    Ok(Int8Measurement {
        point,
        runtime_sa,
        runtime_ra,
        info,
    })
}
