//! Models side by side: the test-split reports of `oats-train eval` for several training
//! runs (one OAT/OATS model against the dedicated PGD-AT/PGD-ATS models it replaces) as a
//! markdown table, a training-cost table and one SA–RA plot.
//!
//! A run is a training run directory: `checkpoint.safetensors` (config and per-epoch history
//! live in its metadata) and `eval.yaml` (the report). The report's checkpoint hash must be
//! the checkpoint's: a report of an earlier epoch would silently compare the wrong model.
//!
//! Why not calibrate's report: calibration measures on the validation split for the
//! runtime's selection; claims are reported on the test split, which calibration never
//! touches.
use std::path::{Path, PathBuf};

use oats_runtime::OperatingPoint;
use oats_train::checkpoint;
use oats_train::config::{Mode, Norm, TrainConfig};
use oats_train::eval::EvalReport;
use oats_train::trainer::EpochMetrics;

use crate::error::{CalibrateError, Result};
use crate::gap::{Acc, Envelope, Est, Gap};
use crate::plot::{mode_label, Frontier, ModelPoints};

/// Floor of a wall time before dividing by it (a run with no recorded epoch time).
const MIN_SECONDS: f64 = 1e-9;

/// The report file `compare` reads from a run directory.
pub const EVAL_FILE: &str = "eval.yaml";

/// First line of the markdown file `oats-compare --out <stem>` writes: it marks `<stem>.md` as
/// this tool's, which alone lets a rerun replace it and the `<stem>.png` / `<stem>.svg` beside
/// it. Without it `--out README` would overwrite a user's README.md.
pub const TABLE_MARKER: &str =
    "<!-- written by oats-compare: rerunning it replaces this file and the .png / .svg beside it -->";

/// Whether `bytes` are a table that `oats-compare` wrote ([`TABLE_MARKER`]).
pub fn is_compare_table(bytes: &[u8]) -> bool {
    bytes.starts_with(TABLE_MARKER.as_bytes())
}

/// Refuses `--out <stem>` unless each of `<stem>.md`, `.png`, `.svg` is absent or an earlier
/// output of oats-compare: the table must carry [`TABLE_MARKER`]; the plots, which cannot
/// carry one, may be replaced only beside such a table.
pub fn ensure_outputs_replaceable(md: &Path, png: &Path, svg: &Path) -> Result<()> {
    oats_io::ensure_replaceable(md, "a table written by oats-compare", is_compare_table)
        .map_err(io_error)?;
    let table_is_ours = md.exists();
    for plot in [png, svg] {
        oats_io::ensure_replaceable(
            plot,
            "a plot written by oats-compare beside its table",
            |_| table_is_ours,
        )
        .map_err(io_error)?;
    }
    Ok(())
}

fn io_error(e: oats_io::Error) -> CalibrateError {
    CalibrateError::io(e.path, e.source)
}

/// One training run and its test-split evaluation.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub dir: PathBuf,
    pub config: TrainConfig,
    /// Completed epochs.
    pub epochs: usize,
    pub history: Vec<EpochMetrics>,
    pub report: EvalReport,
}

impl RunResult {
    /// Reads `<dir>/eval.yaml` and what it was made from: `<dir>/checkpoint.safetensors`, or,
    /// where the weights are not there, the checkpoint's record `<dir>/checkpoint.yaml` (what a
    /// study keeps of a run: see [`checkpoint::Record`]). Either must have the sha256 that
    /// eval.yaml names. Errors name the file.
    pub fn load(dir: &Path) -> Result<RunResult> {
        let ckpt = dir.join(checkpoint::FILE_NAME);
        let record = dir.join(checkpoint::RECORD_FILE);
        let (meta, sha, source) = if std::fs::symlink_metadata(&ckpt).is_err()
            && std::fs::symlink_metadata(&record).is_ok()
        {
            let r = checkpoint::Record::load(&record)?;
            (r.meta, r.checkpoint_sha256, record)
        } else {
            let loaded = checkpoint::load(&ckpt)?;
            // The hash of the bytes that were loaded, not of a second read of the file.
            (loaded.meta, loaded.sha256, ckpt)
        };
        let eval_path = dir.join(EVAL_FILE);
        let report = EvalReport::load(&eval_path)?;
        if report.checkpoint_sha256 != sha {
            return Err(CalibrateError::Invalid(format!(
                "{} was made from a checkpoint with sha256 {}, but {} names sha256 {sha}: re-run `oats-train eval` on the checkpoint",
                eval_path.display(),
                report.checkpoint_sha256,
                source.display()
            )));
        }
        if report.results.is_empty() {
            return Err(CalibrateError::Invalid(format!(
                "{}: no results",
                eval_path.display()
            )));
        }
        Ok(RunResult {
            dir: dir.into(),
            config: meta.config,
            epochs: meta.epoch,
            history: meta.history,
            report,
        })
    }

    /// "OAT (dual BN)", "OAT (normal BN)", "OATS", "PGD-AT", "PGD-ATS".
    pub fn model_label(&self) -> String {
        let mode = mode_label(self.config.mode.as_str());
        match (self.config.mode, self.config.norm) {
            (Mode::Oat | Mode::Oats, Norm::Dual) => format!("{mode} (dual BN)"),
            (Mode::Oat | Mode::Oats, Norm::Normal) => format!("{mode} (normal BN)"),
            _ => mode,
        }
    }

    /// A dedicated model (one fixed λ) rather than a λ-conditioned one.
    pub fn dedicated(&self) -> bool {
        !self.config.mode.conditioned()
    }

    /// Wall time of the completed epochs (training only; the per-epoch validation check is
    /// excluded, as the trainer times it separately).
    pub fn train_seconds(&self) -> f64 {
        self.history.iter().map(|m| m.seconds).sum()
    }

    /// Whether λ was one of the training values (else the encoding was interpolated).
    pub fn seen(&self, lambda: f64) -> bool {
        self.dedicated()
            || self
                .config
                .lambdas
                .iter()
                .any(|&l| oats_train::config::same_setting(l, lambda))
    }

    fn lambda_label(&self, lambda: f64) -> String {
        if self.seen(lambda) {
            format!("{lambda}")
        } else {
            format!("{lambda} (unseen)")
        }
    }
}

/// The attack columns of the table: every attack any report ran, in first-seen order.
fn attack_names(runs: &[RunResult]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in runs {
        for a in &r.report.attacks {
            if !names.contains(a) {
                names.push(a.clone());
            }
        }
    }
    names
}

fn pct(v: f64) -> String {
    format!("{:.1}", v * 100.0)
}

/// Markdown table: one row per (run, width, λ).
pub fn results_table(runs: &[RunResult]) -> String {
    let attacks = attack_names(runs);
    let mut out = String::from("| model | λ | width | SA % |");
    for a in &attacks {
        out.push_str(&format!(" RA {a} % |"));
    }
    out.push_str(" worst RA % | n | SA 95 % CI | worst RA 95 % CI |");
    for a in &attacks {
        out.push_str(&format!(" RA {a} 95 % CI |"));
    }
    out.push_str("\n|---|---|---|---|");
    out.push_str(&"---|".repeat(2 * attacks.len() + 4));
    out.push('\n');
    for r in runs {
        let mut rows: Vec<&OperatingPoint> = r.report.results.iter().collect();
        rows.sort_by(|a, b| {
            b.width
                .total_cmp(&a.width)
                .then(a.lambda.total_cmp(&b.lambda))
        });
        for c in rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} |",
                r.model_label(),
                r.lambda_label(c.lambda),
                c.width,
                pct(c.sa)
            ));
            for a in &attacks {
                out.push_str(&format!(
                    " {} |",
                    c.ra.get(a).map_or("–".into(), |&v| pct(v))
                ));
            }
            let per_attack_ci: Vec<String> = attacks
                .iter()
                .map(|a| c.ra_interval(a).map_or("–".into(), |i| i.range_pct()))
                .collect();
            out.push_str(&format!(
                " {} | {} | {} | {} |",
                c.ra_worst.map_or("–".into(), pct),
                c.samples,
                c.sa_interval().range_pct(),
                c.ra_worst_interval().map_or("–".into(), |i| i.range_pct())
            ));
            for s in per_attack_ci {
                out.push_str(&format!(" {s} |"));
            }
            out.push('\n');
        }
    }
    out
}

/// Markdown table of training cost: epochs, wall time, throughput.
pub fn cost_table(runs: &[RunResult]) -> String {
    let mut out = String::from("| model | λ | widths | epochs | train wall time (min) | train img/s |\n|---|---|---|---|---|---|\n");
    for r in runs {
        let lam = match r.config.lambda {
            Some(l) if r.dedicated() => format!("{l}"),
            _ => format!("{:?}", r.config.lambdas),
        };
        let secs = r.train_seconds();
        let imgs: f64 = r.history.iter().map(|m| m.samples_per_s * m.seconds).sum();
        out.push_str(&format!(
            "| {} | {} | {:?} | {} | {:.1} | {:.0} |\n",
            r.model_label(),
            lam,
            r.config.widths,
            r.epochs,
            secs / 60.0,
            imgs / secs.max(MIN_SECONDS)
        ));
    }
    out
}

/// The (SA, RA) of a report point, `None` without an attack.
fn acc(p: &OperatingPoint) -> Option<Acc> {
    Some(Acc {
        sa: p.sa,
        ra: p.ra_worst?,
        n: p.samples,
    })
}

/// The envelope of a conditioned run's λ points at one width.
pub fn envelope(run: &RunResult, width: f64) -> Envelope {
    let pts: Vec<Acc> = run
        .report
        .results
        .iter()
        .filter(|p| oats_train::config::same_setting(p.width, width))
        .filter_map(acc)
        .collect();
    Envelope::new(&pts)
}

/// The gap of each dedicated model to each λ-conditioned model's frontier at the same width
/// (module [`crate::gap`]): one row per (conditioned model, dedicated point).
pub fn gap_rows(runs: &[RunResult]) -> Vec<(String, String, Gap)> {
    let mut rows = Vec::new();
    for c in runs.iter().filter(|r| !r.dedicated()) {
        for d in runs.iter().filter(|r| r.dedicated()) {
            for p in &d.report.results {
                let Some(point) = acc(p) else { continue };
                let env = envelope(c, p.width);
                if env.points().is_empty() {
                    continue;
                }
                rows.push((
                    format!("{} w{}", c.model_label(), p.width),
                    format!(
                        "{} λ={} w{}: {} / {}",
                        d.model_label(),
                        p.lambda,
                        p.width,
                        pct(p.sa),
                        pct(point.ra)
                    ),
                    env.gap(point),
                ));
            }
        }
    }
    rows
}

/// Markdown table of [`gap_rows`]; empty when the runs hold no conditioned and dedicated pair.
pub fn gap_table(runs: &[RunResult]) -> String {
    let rows = gap_rows(runs);
    if rows.is_empty() {
        return String::new();
    }
    let show = |e: Option<Est>| e.map_or_else(|| "–".to_string(), |e| e.to_string());
    let mut out = String::from(
        "| frontier of | dedicated model (SA % / RA %) | RA gap at its SA | SA gap at its RA | shortfall |\n|---|---|---|---|---|\n",
    );
    for (c, d, g) in rows {
        out.push_str(&format!(
            "| {c} | {d} | {} | {} | {} |\n",
            show(g.ra),
            show(g.sa),
            show(g.shortfall)
        ));
    }
    out.push_str("\nAccuracy points (positive: the dedicated model is better), 95 % intervals. RA/SA gap: against the frontier linear between the measured λ points. Shortfall: at the best measured λ, the worse of the SA and RA differences; ≤ 1 means one λ is within 1 point in both (`calibrate/src/gap.rs`).\n");
    out
}

/// The SA–RA plot of `runs`: a λ-conditioned model is a line per width through its λ
/// points; dedicated models are triangles, one series per (mode, width). When the runs span
/// several widths, colour encodes width; otherwise each conditioned model gets its own.
pub fn frontier(runs: &[RunResult], title: &str) -> Frontier {
    let models: Vec<ModelPoints> = runs
        .iter()
        .map(|r| ModelPoints {
            label: r.model_label(),
            dedicated: r.dedicated(),
            point_prefix: String::new(),
            points: r.report.results.iter().collect(),
            trained_lambdas: (!r.dedicated()).then_some(r.config.lambdas.as_slice()),
            unlabelled: false,
        })
        .collect();
    let first = runs.first();
    let attacks = first.map_or(String::new(), |r| r.report.attacks.join(" + "));
    let (split, n, eps, data) = first.map_or((String::new(), 0, 0.0, String::new()), |r| {
        (
            r.report.split.clone(),
            r.report.results[0].samples,
            r.report.epsilon,
            r.config.data.kind.to_string(),
        )
    });
    Frontier::build(
        title.to_string(),
        &format!(
            "{data} {split} split, n = {n}, L∞ ε = {eps} · lines: one λ-conditioned model (points = λ) · triangles: one dedicated model per point"
        ),
        format!("robust accuracy (%), worst of {attacks}"),
        &models,
    )
}

/// Runs whose reports were made with different settings cannot share a table; this names
/// the first difference.
pub fn check_comparable(runs: &[RunResult]) -> Result<()> {
    let Some(first) = runs.first() else {
        return Err(CalibrateError::Invalid("no runs to compare".into()));
    };
    for r in &runs[1..] {
        let (a, b) = (&first.report, &r.report);
        let same_n = a.results[0].samples == b.results[0].samples;
        if a.split != b.split
            || a.epsilon != b.epsilon
            || a.attacks != b.attacks
            || !same_n
            || first.config.data.kind != r.config.data.kind
        {
            return Err(CalibrateError::Invalid(format!(
                "{} and {} were evaluated differently (split {} / {}, ε {} / {}, attacks {:?} / {:?}, n {} / {}, data {} / {}): their numbers are not comparable",
                first.dir.display(),
                r.dir.display(),
                a.split,
                b.split,
                a.epsilon,
                b.epsilon,
                a.attacks,
                b.attacks,
                a.results[0].samples,
                b.results[0].samples,
                first.config.data.kind,
                r.config.data.kind
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(mode: Mode, lambda: Option<f64>, points: &[(f64, f64, f64)]) -> RunResult {
        let mut config = TrainConfig::embedded_default();
        config.set_mode(mode);
        config.lambda = lambda;
        let results = points
            .iter()
            .map(|&(l, sa, ra)| OperatingPoint {
                lambda: l,
                width: 1.0,
                sa,
                ra: BTreeMap::new(),
                ra_worst: Some(ra),
                samples: 1000,
                split: "test".into(),
                epsilon: 0.1,
            })
            .collect();
        RunResult {
            dir: "run".into(),
            config,
            epochs: 1,
            history: vec![],
            report: EvalReport {
                checkpoint: "c".into(),
                checkpoint_sha256: "0".into(),
                split: "test".into(),
                epsilon: 0.1,
                pgd_step: 0.025,
                attacks: vec![],
                seed: None,
                results,
            },
        }
    }

    #[test]
    fn the_gap_table_has_a_row_per_dedicated_point_and_none_without_pairs() {
        let oat = run(
            Mode::Oat,
            None,
            &[
                (0.0, 0.877, 0.004),
                (0.4, 0.860, 0.682),
                (1.0, 0.851, 0.688),
            ],
        );
        let pgd = run(Mode::PgdAt, Some(1.0), &[(1.0, 0.856, 0.738)]);
        let t = gap_table(&[oat.clone(), pgd]);
        assert!(
            t.contains(
                "| OAT (dual BN) w1 | PGD-AT λ=1 w1: 85.6 / 73.8 | +5.3 ± 3.4 | – | +5.0 ± 4.0 |"
            ),
            "{t}"
        );
        assert_eq!(gap_table(&[oat]), "");
    }
}
