//! The one robustness evaluator: clean accuracy (SA) and robust accuracy (RA) of a model at
//! fixed (λ, width), per attack and as the per-sample worst case over the attacks (never an
//! average: docs/method.md §8).
//!
//! `oats-train eval` (the reported numbers, test split) and `oats-calibrate` (the numbers
//! the runtime selects on, validation split) both call [`evaluate`], with attacks written in
//! one grammar ([`AttackSpec`]), so the two can only differ in the data they are given.
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use indicatif::ProgressBar;
use oats_metrics::OperatingPoint;
use tch::{Device, Kind, Tensor};

use crate::attack;
use crate::error::{Result, TrainError};
use crate::limits::{read_text_limited, MAX_BATCH_SIZE, MAX_YAML_BYTES};
use crate::trainer::TchModel;

/// An attack algorithm: `pgd<steps>` (e.g. pgd20), `fgsm`, `mifgsm`, `apgd` (APGD-CE, 100
/// iterations) or `apgd<iters>`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack {
    Pgd { steps: usize },
    Fgsm,
    MiFgsm,
    ApgdCe { iters: usize },
}

/// The bounds of the attack grammar (defined with the other limits).
pub use crate::limits::{MAX_ATTACK_STEPS, MAX_RESTARTS};

impl FromStr for Attack {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase().replace(['-', '_'], "");
        let num = |rest: &str, default: usize| -> Result<usize> {
            if rest.is_empty() {
                return Ok(default);
            }
            rest.parse::<usize>()
                .ok()
                .filter(|&n| (1..=MAX_ATTACK_STEPS).contains(&n))
                .ok_or_else(|| {
                    TrainError::invalid(
                        "attack",
                        s,
                        format!("step count must be 1..={MAX_ATTACK_STEPS}"),
                    )
                })
        };
        if let Some(r) = t.strip_prefix("pgd") {
            Ok(Attack::Pgd { steps: num(r, 20)? })
        } else if t == "fgsm" {
            Ok(Attack::Fgsm)
        } else if t == "mifgsm" {
            Ok(Attack::MiFgsm)
        } else if let Some(r) = t.strip_prefix("apgdce").or_else(|| t.strip_prefix("apgd")) {
            Ok(Attack::ApgdCe {
                iters: num(r, 100)?,
            })
        } else {
            Err(TrainError::invalid(
                "attack",
                s,
                "expected pgd<N>, fgsm, mifgsm or apgd[-ce][N]",
            ))
        }
    }
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attack::Pgd { steps } => write!(f, "pgd{steps}"),
            Attack::Fgsm => write!(f, "fgsm"),
            Attack::MiFgsm => write!(f, "mifgsm"),
            Attack::ApgdCe { iters } => write!(f, "apgd-ce{iters}"),
        }
    }
}

/// One attack as every tool runs it: the algorithm, its random restarts and (PGD) its step
/// size. Written `<attack>[x<restarts>][@<step>]`: `pgd20x2` (PGD-20, 2 restarts, step ε/4),
/// `pgd10@0.01`, `apgd` (APGD-CE, 100 iterations), `apgd10x3`, `fgsm`, `mifgsm`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttackSpec {
    pub attack: Attack,
    /// Random restarts (≥ 1); per sample, the first restart that fools the model wins.
    pub restarts: usize,
    /// PGD step size; `None` is ε/4 (2/255 at ε = 8/255).
    pub step: Option<f64>,
}

/// The default set of calibration: PGD-20 with 2 random restarts and APGD-CE
/// (docs/method.md §8: report APGD, not PGD alone).
pub const DEFAULT_ATTACKS: &str = "pgd20x2,apgd";

impl AttackSpec {
    /// One run of `attack`, default step.
    pub fn new(attack: Attack) -> AttackSpec {
        AttackSpec {
            attack,
            restarts: 1,
            step: None,
        }
    }

    /// The key of `metrics.ra` and of every report: `pgd20x2`, `apgd-ce100`, `fgsm`,
    /// `pgd10@0.01`.
    pub fn key(&self) -> String {
        let mut k = self.attack.to_string();
        if self.restarts > 1 {
            k.push_str(&format!("x{}", self.restarts));
        }
        if let Some(s) = self.step {
            k.push_str(&format!("@{s}"));
        }
        k
    }

    /// Name for people (plot labels): `PGD-20×2`, `APGD-CE`, `FGSM`, `MI-FGSM`.
    pub fn pretty(&self) -> String {
        let base = match self.attack {
            Attack::Pgd { steps } => format!("PGD-{steps}"),
            Attack::Fgsm => "FGSM".into(),
            Attack::MiFgsm => "MI-FGSM".into(),
            Attack::ApgdCe { iters: 100 } => "APGD-CE".into(),
            Attack::ApgdCe { iters } => format!("APGD-CE-{iters}"),
        };
        let mut p = base;
        if self.restarts > 1 {
            p.push_str(&format!("×{}", self.restarts));
        }
        if let Some(s) = self.step {
            p.push_str(&format!(" (step {s})"));
        }
        p
    }

    /// An iterative attack (expected to be at least as strong as FGSM).
    pub fn iterative(&self) -> bool {
        matches!(self.attack, Attack::Pgd { .. } | Attack::ApgdCe { .. })
    }

    /// The PGD step at radius `eps`.
    pub fn step_at(&self, eps: f64) -> f64 {
        self.step.unwrap_or(eps / 4.0)
    }

    /// Adversarial images for `x` (labels `y`) against `f` (which must run in eval mode),
    /// random starts drawn from `noise`. Restarts follow one per-sample rule for PGD and
    /// APGD-CE: the first restart that fools the model wins, else the last one's image.
    pub fn run(
        &self,
        f: attack::Model,
        x: &Tensor,
        y: &Tensor,
        eps: f64,
        noise: attack::Noise,
    ) -> Tensor {
        let mut once = || match self.attack {
            Attack::Pgd { steps } => {
                attack::pgd(f, x, y, eps, self.step_at(eps), steps, Some(&mut *noise))
            }
            Attack::Fgsm => attack::fgsm(f, x, y, eps),
            Attack::MiFgsm => attack::mi_fgsm(f, x, y, eps, 10, 1.0),
            Attack::ApgdCe { iters } => attack::apgd_ce(f, x, y, eps, iters, &mut *noise),
        };
        let mut best = once();
        for _ in 1..self.restarts.max(1) {
            let fooled = attack::fooled(f, &best, y);
            if fooled.all().int64_value(&[]) != 0 {
                break;
            }
            best = best.where_self(&fooled.view([-1, 1, 1, 1]), &once());
        }
        best
    }
}

impl fmt::Display for AttackSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

impl FromStr for AttackSpec {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let bad = |why: String| TrainError::invalid("attack", s, why);
        let (rest, step) = match t.split_once('@') {
            Some((r, st)) => {
                let v: f64 = st
                    .parse()
                    .map_err(|_| bad(format!("step {st:?} is not a number")))?;
                if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                    return Err(bad(format!("step {v} must be in (0, 1]")));
                }
                (r.to_string(), Some(v))
            }
            None => (t.clone(), None),
        };
        let (base, restarts) = match rest.rsplit_once('x') {
            Some((b, r)) if !b.is_empty() && r.bytes().all(|c| c.is_ascii_digit()) => {
                let n: usize = r
                    .parse()
                    .map_err(|_| bad(format!("restart count {r:?} is not a number")))?;
                (b.to_string(), n)
            }
            _ => (rest.clone(), 1),
        };
        if !(1..=MAX_RESTARTS).contains(&restarts) {
            return Err(bad(format!("restarts must be 1..={MAX_RESTARTS}")));
        }
        let attack: Attack = base.parse()?;
        if restarts > 1 && !matches!(attack, Attack::Pgd { .. } | Attack::ApgdCe { .. }) {
            return Err(bad(format!(
                "{attack} is deterministic; restarts apply to pgd and apgd only"
            )));
        }
        if step.is_some() && !matches!(attack, Attack::Pgd { .. }) {
            return Err(bad(format!(
                "{attack} has no step size to set; @<step> applies to pgd only"
            )));
        }
        Ok(AttackSpec {
            attack,
            restarts,
            step,
        })
    }
}

/// Parses a comma-separated list; an empty list and duplicates (same key) are errors.
pub fn parse_attacks(s: &str) -> Result<Vec<AttackSpec>> {
    let specs = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect::<Result<Vec<AttackSpec>>>()?;
    if specs.is_empty() {
        return Err(TrainError::invalid("attacks", s, "no attack given"));
    }
    for (i, a) in specs.iter().enumerate() {
        if specs[..i].iter().any(|b| b.key() == a.key()) {
            return Err(TrainError::invalid(
                "attacks",
                s,
                format!("{} is listed twice", a.key()),
            ));
        }
    }
    Ok(specs)
}

/// "PGD-20×2, APGD-CE" for axis labels.
pub fn pretty_list(specs: &[AttackSpec]) -> String {
    specs
        .iter()
        .map(AttackSpec::pretty)
        .collect::<Vec<_>>()
        .join(", ")
}

/// How [`evaluate`] measures.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// L∞ radius.
    pub eps: f64,
    pub attacks: Vec<AttackSpec>,
    /// Samples per forward/attack batch.
    pub batch: usize,
    /// Seeds the attacks' random starts, drawn from a generator of the evaluation's own (not
    /// torch's global one), anew for each configuration: its numbers depend on the model,
    /// samples, attacks, batch size and this seed alone, not on which configurations came
    /// before it or on other threads using torch.
    pub seed: u64,
    /// Keep the clean logits and the per-sample worst-case images ([`WorstCase`]).
    pub keep_worst: bool,
}

/// Per-sample outcomes, in the order of the samples given.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SampleResults {
    /// Correct when clean.
    pub clean: Vec<bool>,
    /// Per attack (in the order given): correct when clean and not fooled by that attack.
    pub robust: Vec<Vec<bool>>,
    /// Correct when clean and under every attack.
    pub worst: Vec<bool>,
}

/// What the calibration replays through the exported graph.
pub struct WorstCase {
    /// Clean logits [N, K], CPU.
    pub clean_logits: Tensor,
    /// [N, C, H, W], CPU: per sample an image that fools the model if any attack found one
    /// (the first attack's that did; the clean image itself when it is misclassified), else
    /// the last attack's image.
    pub x: Tensor,
    /// Logits on `x`, [N, K], CPU.
    pub logits: Tensor,
}

/// One configuration evaluated.
pub struct Evaluation {
    pub lambda: f64,
    pub width: f64,
    /// Attack keys, in the order run (the order of `samples.robust`).
    pub attacks: Vec<String>,
    pub samples: SampleResults,
    /// When [`EvalOptions::keep_worst`] was set.
    pub worst_case: Option<WorstCase>,
}

impl Evaluation {
    pub fn len(&self) -> usize {
        self.samples.clean.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The summary: SA, RA per attack and worst-case RA, on `split` at radius `eps`.
    pub fn point(&self, split: &str, eps: f64) -> OperatingPoint {
        let n = self.len();
        let frac = |v: &[bool]| v.iter().filter(|&&b| b).count() as f64 / n.max(1) as f64;
        OperatingPoint {
            lambda: self.lambda,
            width: self.width,
            sa: frac(&self.samples.clean),
            ra: self
                .attacks
                .iter()
                .zip(&self.samples.robust)
                .map(|(k, v)| (k.clone(), frac(v)))
                .collect(),
            ra_worst: (!self.attacks.is_empty()).then(|| frac(&self.samples.worst)),
            samples: n,
            split: split.to_string(),
            epsilon: eps,
        }
    }
}

/// The batch size of `opts`, checked before anything runs (0 would never finish).
fn check_batch(opts: &EvalOptions) -> Result<()> {
    if !(1..=MAX_BATCH_SIZE).contains(&opts.batch) {
        return Err(TrainError::invalid(
            "batch",
            opts.batch,
            format!("must be in 1..={MAX_BATCH_SIZE}"),
        ));
    }
    Ok(())
}

/// Evaluates `model` at (λ, width) on images `x` [N, C, H, W] in [0, 1] and labels `y` [N]
/// (any device; batches run on the model's), advancing `bar` by the samples done.
///
/// Only the samples classified correctly when clean are attacked: the others cannot count as
/// robust, so this saves compute without changing RA (demo: 0.74× the time).
pub fn evaluate(
    model: &TchModel,
    lambda: f64,
    width: f64,
    x: &Tensor,
    y: &Tensor,
    opts: &EvalOptions,
    bar: &ProgressBar,
) -> Result<Evaluation> {
    check_batch(opts)?;
    model.check_input_tensor(x)?;
    if !(opts.eps.is_finite() && opts.eps >= 0.0 && opts.eps <= 1.0) {
        return Err(TrainError::invalid(
            "epsilon",
            opts.eps.to_string(),
            "must be in [0, 1]",
        ));
    }
    let n = x.size()[0];
    if n == 0 {
        // An accuracy of no samples would print as 0 %, a number that was never measured.
        return Err(TrainError::invalid(
            "data",
            "0 samples",
            "nothing to evaluate on",
        ));
    }
    if y.size() != [n] || y.kind() != Kind::Int64 {
        return Err(TrainError::invalid(
            "labels",
            format!("{:?} {:?}", y.kind(), y.size()),
            format!("expected Int64 [{n}] to match the images"),
        ));
    }
    model.check_labels(&Vec::<i64>::try_from(y.to_device(Device::Cpu))?)?;
    let wi = model.width_index(width)?;
    let cond = model.cond_for(lambda)?;
    let f = |z: &Tensor| model.logits(z, &cond, wi);
    evaluate_fn(&f, model.vs.device(), lambda, width, x, y, opts, bar)
}

/// [`evaluate`] of any differentiable model `f` (eval mode, logits of a batch on `device`),
/// labelled (λ, width): the one evaluator, also for models that are not a [`TchModel`] (the
/// int8 graphs the calibrator attacks with straight-through gradients). `x` and `y` must
/// already be checked against the model (shape, labels in range).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_fn(
    f: attack::Model,
    device: Device,
    lambda: f64,
    width: f64,
    x: &Tensor,
    y: &Tensor,
    opts: &EvalOptions,
    bar: &ProgressBar,
) -> Result<Evaluation> {
    let n = x.size()[0];
    if n == 0 || y.size() != [n] {
        return Err(TrainError::invalid(
            "data",
            format!("{:?} images, {:?} labels", x.size(), y.size()),
            "need as many labels as images, at least one",
        ));
    }
    check_batch(opts)?;
    let mut private = attack::PrivateNoise::new(opts.seed);
    let mut noise = |x: &Tensor| private.like(x);
    let mut samples = SampleResults {
        robust: vec![Vec::with_capacity(n as usize); opts.attacks.len()],
        ..SampleResults::default()
    };
    let (mut clean_logits, mut worst_xs, mut worst_logits) = (Vec::new(), Vec::new(), Vec::new());
    let mut s0 = 0;
    while s0 < n {
        let len = (opts.batch as i64).min(n - s0);
        let xb = x.narrow(0, s0, len).to_device(device);
        let yb = y.narrow(0, s0, len).to_device(device);
        let logits = {
            let _ng = tch::no_grad_guard();
            f(&xb)
        };
        let ok_clean = logits.argmax(1, false).eq_tensor(&yb);
        let idx = ok_clean.nonzero().squeeze_dim(1);
        let attacked = idx.size()[0] > 0 && !opts.attacks.is_empty();
        let mut robust_all = ok_clean.shallow_clone();
        let mut wx = xb.shallow_clone();
        if attacked {
            let (xs, ys) = (xb.index_select(0, &idx), yb.index_select(0, &idx));
            let mut any_fooled = ys.zeros_like().to_kind(Kind::Bool);
            let mut worst_s: Option<Tensor> = None;
            for (ai, a) in opts.attacks.iter().enumerate() {
                let xa = a.run(&f, &xs, &ys, opts.eps, &mut noise);
                let fooled = attack::fooled(&f, &xa, &ys);
                let robust = ok_clean
                    .zeros_like()
                    .index_copy(0, &idx, &fooled.logical_not());
                samples.robust[ai].extend(bools(&robust)?);
                worst_s = Some(match worst_s {
                    // Keep an earlier fooling image; otherwise take this attack's.
                    Some(w) => w.where_self(&any_fooled.view([-1, 1, 1, 1]), &xa),
                    None => xa,
                });
                any_fooled = any_fooled.logical_or(&fooled);
            }
            robust_all = ok_clean
                .zeros_like()
                .index_copy(0, &idx, &any_fooled.logical_not());
            if let (true, Some(ws)) = (opts.keep_worst, worst_s) {
                wx = xb.copy().index_copy(0, &idx, &ws);
            }
        } else {
            for r in &mut samples.robust {
                r.extend(std::iter::repeat_n(false, len as usize));
            }
        }
        samples.clean.extend(bools(&ok_clean)?);
        samples.worst.extend(bools(&robust_all)?);
        if opts.keep_worst {
            let wl = {
                let _ng = tch::no_grad_guard();
                f(&wx)
            };
            clean_logits.push(logits.to_device(Device::Cpu));
            worst_logits.push(wl.to_device(Device::Cpu));
            worst_xs.push(wx.to_device(Device::Cpu));
        }
        s0 += len;
        bar.inc(len as u64);
    }
    let worst_case = opts.keep_worst.then(|| WorstCase {
        clean_logits: Tensor::cat(&clean_logits, 0),
        x: Tensor::cat(&worst_xs, 0),
        logits: Tensor::cat(&worst_logits, 0),
    });
    Ok(Evaluation {
        lambda,
        width,
        attacks: opts.attacks.iter().map(AttackSpec::key).collect(),
        samples,
        worst_case,
    })
}

/// [`evaluate`] at every (λ, width) of `configs`, summarised as operating points on `split`
/// (what `oats-train eval` reports). Each configuration is seeded the same, as in
/// calibration, so both give the same numbers for the same samples.
pub fn evaluate_grid(
    model: &TchModel,
    configs: &[(f64, f64)],
    x: &Tensor,
    y: &Tensor,
    opts: &EvalOptions,
    split: &str,
    bar: &ProgressBar,
) -> Result<Vec<OperatingPoint>> {
    configs
        .iter()
        .map(|&(lambda, width)| {
            bar.set_message(format!("λ={lambda} w={width}"));
            Ok(evaluate(model, lambda, width, x, y, opts, bar)?.point(split, opts.eps))
        })
        .collect()
}

/// A boolean [B] tensor as a vector.
fn bools(mask: &Tensor) -> Result<Vec<bool>> {
    let v = Vec::<i64>::try_from(mask.to_kind(Kind::Int64).to_device(Device::Cpu))?;
    Ok(v.into_iter().map(|b| b != 0).collect())
}

/// The YAML report of `oats-train eval`: every configuration's SA and RA, and what they
/// were measured with. `oats-compare` reads these back to put models side by side.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalReport {
    pub checkpoint: String,
    /// SHA-256 of the checkpoint bytes evaluated, so a stale report can be detected.
    pub checkpoint_sha256: String,
    pub split: String,
    pub epsilon: f64,
    /// The default PGD step (ε/4 unless `--step-size`); an attack key with `@<step>` says
    /// its own.
    pub pgd_step: f64,
    /// Attack keys (the keys of every result's `ra`).
    pub attacks: Vec<String>,
    pub seed: Option<u64>,
    pub results: Vec<OperatingPoint>,
}

/// Whether `bytes` are an `oats-train eval` report, the only file `eval --out` may replace.
/// Lenient about fields that later versions added, strict enough that no other YAML passes.
pub fn is_eval_report(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[allow(dead_code)]
        checkpoint_sha256: String,
        #[allow(dead_code)]
        split: String,
        #[allow(dead_code)]
        results: Vec<serde_yaml::Value>,
    }
    serde_yaml::from_slice::<Probe>(bytes).is_ok()
}

impl EvalReport {
    /// Reads a report; a missing, unreadable or malformed file is an error naming it.
    /// Reports written before each result carried its split and ε get the report's.
    pub fn load(path: &Path) -> Result<EvalReport> {
        let text = read_text_limited(path, MAX_YAML_BYTES).map_err(|e| TrainError::io(path, e))?;
        let mut r: EvalReport = serde_yaml::from_str(&text).map_err(|e| {
            let loc = e.location();
            TrainError::ConfigParse {
                path: path.into(),
                line: loc.as_ref().map_or(0, |l| l.line()),
                column: loc.map_or(0, |l| l.column()),
                message: e.to_string(),
            }
        })?;
        for p in &mut r.results {
            if p.split.is_empty() {
                p.split = r.split.clone();
            }
            if p.epsilon == 0.0 {
                p.epsilon = r.epsilon;
            }
        }
        Ok(r)
    }

    /// The printed table: one row per configuration, every accuracy with its 95 % interval
    /// (Wilson) and the sample count.
    pub fn table(&self) -> String {
        let mut header = vec![
            "λ".to_string(),
            "width".into(),
            "n".into(),
            "SA % (95% CI)".into(),
        ];
        header.extend(self.attacks.iter().map(|a| format!("RA {a} %")));
        header.push("worst RA %".into());
        let rows: Vec<Vec<String>> = self
            .results
            .iter()
            .map(|p| {
                let mut r = vec![
                    p.lambda.to_string(),
                    p.width.to_string(),
                    p.samples.to_string(),
                    p.sa_interval().to_string(),
                ];
                r.extend(self.attacks.iter().map(|a| {
                    p.ra_interval(a)
                        .map_or_else(|| "-".to_string(), |i| i.to_string())
                }));
                r.push(
                    p.ra_worst_interval()
                        .map_or_else(|| "-".to_string(), |i| i.to_string()),
                );
                r
            })
            .collect();
        render_table(&header, &rows)
    }
}

/// Plain text table: first column left-aligned, the others right-aligned.
pub fn render_table(header: &[String], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .chain([&header[c]])
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for cells in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        for (c, w) in widths.iter().enumerate() {
            let s = cells.get(c).map_or("", String::as_str);
            let pad = " ".repeat(w.saturating_sub(s.chars().count()));
            if c == 0 {
                out.push_str(&format!("{s}{pad}"));
            } else {
                out.push_str(&format!("  {pad}{s}"));
            }
        }
        out.push('\n');
    }
    out
}

/// Results per (λ, width) in one map, for tests and tools that look one up.
pub fn by_config(points: &[OperatingPoint]) -> BTreeMap<(String, String), &OperatingPoint> {
    points
        .iter()
        .map(|p| ((p.lambda.to_string(), p.width.to_string()), p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_names() {
        assert_eq!(
            "pgd20".parse::<Attack>().unwrap(),
            Attack::Pgd { steps: 20 }
        );
        assert_eq!("PGD-7".parse::<Attack>().unwrap(), Attack::Pgd { steps: 7 });
        assert_eq!(
            "apgd-ce".parse::<Attack>().unwrap(),
            Attack::ApgdCe { iters: 100 }
        );
        assert_eq!("mi-fgsm".parse::<Attack>().unwrap(), Attack::MiFgsm);
        assert!("pgd0".parse::<Attack>().is_err());
        assert!("cw".parse::<Attack>().is_err());
    }

    #[test]
    fn one_grammar_for_restarts_and_steps() {
        let l = parse_attacks(DEFAULT_ATTACKS).expect("default");
        assert_eq!(
            l,
            vec![
                AttackSpec {
                    attack: Attack::Pgd { steps: 20 },
                    restarts: 2,
                    step: None
                },
                AttackSpec::new(Attack::ApgdCe { iters: 100 }),
            ]
        );
        assert_eq!(l[0].key(), "pgd20x2");
        assert_eq!(l[1].key(), "apgd-ce100");
        assert_eq!(pretty_list(&l), "PGD-20×2, APGD-CE");
        let a: AttackSpec = "PGD-7".parse().expect("pgd7");
        assert_eq!(
            (a.attack, a.restarts, a.key()),
            (Attack::Pgd { steps: 7 }, 1, "pgd7".to_string())
        );
        assert_eq!(
            "apgd10x3".parse::<AttackSpec>().expect("apgd").key(),
            "apgd-ce10x3"
        );
        assert_eq!("fgsm".parse::<AttackSpec>().expect("fgsm").pretty(), "FGSM");
        assert_eq!(
            "mi-fgsm".parse::<AttackSpec>().expect("mifgsm").key(),
            "mifgsm"
        );
        let s: AttackSpec = "pgd10x2@0.01".parse().expect("step");
        assert_eq!(
            (s.restarts, s.step, s.key()),
            (2, Some(0.01), "pgd10x2@0.01".into())
        );
        assert_eq!(s.key().parse::<AttackSpec>().expect("round trip"), s);
        assert_eq!(s.step_at(0.1), 0.01);
        assert_eq!(
            AttackSpec::new(Attack::Pgd { steps: 1 }).step_at(0.1),
            0.025
        );
        for bad in [
            "fgsmx2",
            "pgd20x0",
            "pgd20x",
            "cw",
            "pgd0",
            "fgsm@0.1",
            "pgd20@0",
            "pgd20@nan",
            "pgd20x101",
        ] {
            assert!(bad.parse::<AttackSpec>().is_err(), "{bad}");
        }
        assert!(parse_attacks("pgd20,pgd20").is_err());
        assert!(parse_attacks(" , ").is_err());
    }

    #[test]
    fn points_count_per_sample() {
        let e = Evaluation {
            lambda: 0.2,
            width: 1.0,
            attacks: vec!["pgd20".into(), "fgsm".into()],
            samples: SampleResults {
                clean: vec![true, true, true, false],
                robust: vec![
                    vec![true, false, true, false],
                    vec![true, true, false, false],
                ],
                worst: vec![true, false, false, false],
            },
            worst_case: None,
        };
        let p = e.point("val", 0.1);
        assert_eq!((p.sa, p.ra_worst, p.samples), (0.75, Some(0.25), 4));
        assert_eq!(p.ra["pgd20"], 0.5);
        assert_eq!(p.ra["fgsm"], 0.5);
    }

    #[test]
    fn table_carries_intervals_and_counts() {
        let r = EvalReport {
            checkpoint: "c".into(),
            checkpoint_sha256: "s".into(),
            split: "test".into(),
            epsilon: 0.1,
            pgd_step: 0.025,
            attacks: vec!["pgd20".into()],
            seed: Some(0),
            results: vec![OperatingPoint {
                lambda: 0.0,
                width: 1.0,
                sa: 0.7,
                ra: [("pgd20".to_string(), 0.0)].into(),
                ra_worst: Some(0.0),
                samples: 200,
                split: "test".into(),
                epsilon: 0.1,
            }],
        };
        let t = r.table();
        assert!(t.contains("70.0 (63.3–75.9)"), "{t}");
        assert!(t.contains("0.0 (0.0–1.9)"), "{t}");
        assert!(t.lines().next().unwrap_or("").contains(" n "), "{t}");
    }
}
