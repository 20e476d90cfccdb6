//! oats-calibrate: measured clean accuracy (SA), robust accuracy (RA) and latency of every
//! exported (λ, width) configuration on this device. These are the numbers the runtime's
//! selection policy reads from the manifest, and the answer to the method's question "which
//! (accuracy, robustness) can this one model give without retraining?".
//!
//! Per graph of the manifest ([`calibrate`]):
//! 1. SA and RA on the **validation** split (never the test split) against the trainer's model
//!    at the same (λ, width), in eval mode: the exported graph has no input gradients. RA is
//!    reported per attack and as the per-sample worst case over the attacks (default PGD-20
//!    with 2 restarts and APGD-CE; docs/method.md §8), by the evaluator the test-split
//!    reports use too (`oats_train::eval`).
//! 2. Replay: the clean and the worst-case adversarial images run through the runtime's graph
//!    (tract, and ONNX Runtime with the `ort` feature); any classification that differs from
//!    the trainer's, other than at a tie (top-2 margin < [`measure::TIE_MARGIN`]), fails
//!    calibration naming the graph, as do clean logits that differ by more than
//!    [`measure::LOGIT_TOLERANCE`] (the graph bakes in a different BN branch than attacked).
//! 3. Latency through `oats_runtime::bench` ("<backend>/b<batch>": p50/p90/p99 ms).
//!
//! Then sanity checks ([`sanity`]), `metrics` of every manifest graph (merged under the export
//! directory's lock into the manifest as it is then, and saved atomically),
//! `calibration.yaml` ([`report::CalibrationReport`]) and the SA–RA frontier
//! (`frontier.png`, `frontier.svg`, [`plot`]) beside the manifest.
#![warn(clippy::unwrap_used)]

pub mod compare;
pub mod error;
pub mod exits;
pub mod gap;
pub mod grid;
pub mod int8;
pub mod measure;
pub mod plot;
pub mod report;
pub mod sanity;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use oats_runtime::manifest::{GraphEntry, ManifestLock, CONFIG_TOLERANCE, MANIFEST_FILE};
use oats_runtime::{Backend, Manifest, Options, Selector};
use oats_train::data::{self, Split};
use oats_train::eval::{self, EvalOptions};
use oats_train::limits::{MAX_BATCH_SIZE, MAX_BENCH_ITERS};
use oats_train::{checkpoint, TchModel};
use tch::Device;

pub use error::{CalibrateError, Result};
pub use measure::LatencySettings;
pub use oats_train::eval::{parse_attacks, AttackSpec, DEFAULT_ATTACKS};
pub use report::{CalibrationReport, GraphCalibration, Table};
pub use sanity::Sanity;

/// The split calibration measures on. The test split is where results are reported, so
/// calibration never touches it.
pub const SPLIT: Split = Split::Val;

/// What to calibrate and how.
#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    /// Export directory holding `manifest.yaml`; the report and plots are written there too.
    pub export_dir: PathBuf,
    /// Calibrate this λ grid instead of the manifest's graphs (`--lambdas`): every λ at every
    /// width of `widths`, each derived from the export's package unless the manifest has it
    /// already. Configurations new to the manifest are added to it as derived entries (no
    /// file), with their metrics, so policies can choose them.
    pub lambdas: Option<Vec<f64>>,
    /// The widths of the grid (default: every trained width); only with `lambdas`.
    pub widths: Option<Vec<f64>>,
    /// Dataset directory (default: the model's training config's).
    pub data_dir: Option<PathBuf>,
    pub attacks: Vec<AttackSpec>,
    /// L∞ radius (default: the manifest's training ε).
    pub eps: Option<f64>,
    /// Only the first N validation samples.
    pub limit: Option<usize>,
    /// Backends to replay and time with.
    pub backends: Vec<Backend>,
    /// Other calibration reports drawn as baseline points.
    pub baselines: Vec<PathBuf>,
    /// Samples for the ε sweep (sanity check (a)); 0 disables it.
    pub sanity_limit: usize,
    /// Samples per attack batch and per runtime call.
    pub batch: usize,
    pub latency: LatencySettings,
    /// Seeds the attacks' random starts (the same for every graph).
    pub seed: u64,
    /// Calibrate only the manifest's int8 graphs (`--int8-only`): their float
    /// configurations' worst-case images are computed for the transfer attack but their
    /// metrics are left as they are.
    pub int8_only: bool,
    /// Configurations with side exits: what the thresholds are fitted for (`--exit-budget`,
    /// default [`exits::DEFAULT_BUDGET`] of the whole network's MACs, or `--exit-mix`).
    pub exit_target: exits::ExitTarget,
    /// No progress bars.
    pub quiet: bool,
}

impl CalibrateOptions {
    pub fn new(export_dir: impl Into<PathBuf>) -> Self {
        CalibrateOptions {
            export_dir: export_dir.into(),
            lambdas: None,
            widths: None,
            data_dir: None,
            attacks: parse_attacks(DEFAULT_ATTACKS).expect("the default attack list parses"),
            eps: None,
            limit: None,
            backends: vec![Backend::Tract],
            baselines: vec![],
            sanity_limit: 200,
            batch: 128,
            latency: LatencySettings::default(),
            seed: 0,
            int8_only: false,
            exit_target: exits::ExitTarget::Budget(exits::DEFAULT_BUDGET),
            quiet: false,
        }
    }
}

/// Resolves a checkpoint file or run directory, loads the model and calibrates.
pub fn run(
    checkpoint: &Path,
    device: Device,
    opts: &CalibrateOptions,
) -> Result<CalibrationReport> {
    let path = checkpoint_file(checkpoint);
    let (model, _) = TchModel::load(&path, device)?;
    // The hash of the bytes that were loaded, not of a second read of the file.
    let sha = model.source_sha256.clone().unwrap_or_default();
    calibrate(&model, &path, &sha, opts)
}

/// `dir/checkpoint.safetensors` for a run directory, else the path itself.
pub fn checkpoint_file(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join(checkpoint::FILE_NAME)
    } else {
        p.to_path_buf()
    }
}

/// Calibrates every graph of the export in `opts.export_dir` against `model` (loaded from
/// `checkpoint`, whose bytes hash to `checkpoint_sha256`, which must be the manifest's source).
/// Nothing is written unless every graph passes the replay checks.
pub fn calibrate(
    model: &TchModel,
    checkpoint: &Path,
    checkpoint_sha256: &str,
    opts: &CalibrateOptions,
) -> Result<CalibrationReport> {
    // The request is checked first: a bad flag must not wait for (or hide behind) the files.
    if opts.attacks.is_empty() {
        return Err(CalibrateError::Invalid("no attack given".into()));
    }
    if opts.backends.is_empty() {
        return Err(CalibrateError::Invalid("no backend given".into()));
    }
    let invalid = |what: String| Err(CalibrateError::Invalid(what));
    if !(1..=MAX_BATCH_SIZE).contains(&opts.batch) {
        return invalid(format!(
            "--batch {}: must be in 1..={MAX_BATCH_SIZE}",
            opts.batch
        ));
    }
    if opts.limit == Some(0) {
        return invalid("--limit 0: must be ≥ 1 (leave it out for the whole split)".into());
    }
    if let Some(&b) = opts
        .latency
        .batches
        .iter()
        .find(|&&b| !(1..=MAX_BATCH_SIZE).contains(&b))
    {
        return invalid(format!(
            "--bench-batch {b}: must be in 1..={MAX_BATCH_SIZE}"
        ));
    }
    if opts.latency.batches.is_empty() {
        return invalid("--bench-batch: no batch size given".into());
    }
    if !(1..=MAX_BENCH_ITERS).contains(&opts.latency.iters) || opts.latency.warmup > MAX_BENCH_ITERS
    {
        return invalid(format!(
            "--bench-iters {} (warm-up {}): must be in 1..={MAX_BENCH_ITERS}",
            opts.latency.iters, opts.latency.warmup
        ));
    }
    if let Err(e) = opts.exit_target.check() {
        return invalid(e);
    }
    if opts.widths.is_some() && opts.lambdas.is_none() {
        return invalid("--widths: only with --lambdas (a grid of λ × width)".into());
    }
    for (flag, values) in [("--lambdas", &opts.lambdas), ("--widths", &opts.widths)] {
        match values {
            Some(v) if v.is_empty() => return invalid(format!("{flag}: no value given")),
            Some(v) => {
                if let Some(x) = v
                    .iter()
                    .find(|x| !(x.is_finite() && (0.0..=1.0).contains(*x)))
                {
                    return invalid(format!("{flag} {x}: must be a finite value in [0, 1]"));
                }
            }
            None => {}
        }
    }
    if let Some(eps) = opts
        .eps
        .filter(|e| !(e.is_finite() && *e > 0.0 && *e <= 1.0))
    {
        return invalid(format!("--eps {eps}: must be in (0, 1]"));
    }
    let manifest_path = opts.export_dir.join(MANIFEST_FILE);
    let manifest = Manifest::load(&manifest_path)?;
    if !manifest
        .source_checkpoint_sha256
        .eq_ignore_ascii_case(checkpoint_sha256)
    {
        return Err(CalibrateError::CheckpointMismatch {
            path: checkpoint.into(),
            manifest: manifest.source_checkpoint_sha256.clone(),
            checkpoint: checkpoint_sha256.into(),
        });
    }
    // Baselines are read first: a typo must not cost an hour of attacks.
    let baselines = opts
        .baselines
        .iter()
        .map(|p| CalibrationReport::load(p))
        .collect::<Result<Vec<_>>>()?;
    let eps = opts.eps.unwrap_or(manifest.training.epsilon);
    if !(eps.is_finite() && eps > 0.0 && eps <= 1.0) {
        return Err(CalibrateError::Invalid(format!(
            "ε = {eps}: must be in (0, 1] (pass --eps when the manifest's training ε is 0)"
        )));
    }
    let rts = opts
        .backends
        .iter()
        .map(|&backend| {
            oats_runtime::OatsModel::open(
                &opts.export_dir,
                &Options {
                    backend,
                    threads: None,
                    preload: true,
                    ..Options::default()
                },
            )
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let targets = targets(&manifest, &rts, opts)?;
    let set = load_set(model, &manifest, opts)?;
    let n = set.len();

    let eval_opts = EvalOptions {
        eps,
        attacks: opts.attacks.clone(),
        batch: opts.batch,
        // The same seed for every graph: each graph's numbers are reproducible on their own.
        seed: opts.seed,
        keep_worst: true,
    };
    let mut graphs = Vec::new();
    let total = targets.len();
    // Float configurations' worst-case images, by id: the int8 graphs' transfer attack.
    let mut float_worst: BTreeMap<String, tch::Tensor> = BTreeMap::new();
    for (gi, g) in targets.iter().enumerate() {
        let bar = progress(opts.quiet, n as u64, format!("{}/{total} {}", gi + 1, g.id));
        if let Some(entry) = g.int8.as_ref() {
            let float_id = entry
                .quantization
                .as_ref()
                .map(|q| q.float_id.clone())
                .unwrap_or_default();
            let fw = match float_worst.get(&float_id) {
                Some(x) => x.shallow_clone(),
                None => {
                    bar.set_message(format!("attacking float {float_id} (transfer)"));
                    let e =
                        eval::evaluate(model, g.lambda, g.width, &set.x, &set.y, &eval_opts, &bar)?;
                    bar.set_position(0);
                    let w = e.worst_case.ok_or_else(|| {
                        CalibrateError::Invalid("the evaluator kept no worst-case images".into())
                    })?;
                    w.x
                }
            };
            let m = int8::measure(
                &opts.export_dir,
                &manifest,
                entry,
                &float_id,
                &fw,
                &set,
                &eval_opts,
                &rts,
                &SPLIT.to_string(),
                &bar,
            )?;
            let mut latency_ms = BTreeMap::new();
            for rt in &rts {
                bar.set_message(format!("latency {}", rt.backend().name()));
                latency_ms.extend(measure::latency(rt, &g.selector, &opts.latency)?);
            }
            bar.finish_with_message(format!(
                "int8: SA {} worst RA {} (%, 95% CI; transfer and direct)",
                m.point.sa_interval(),
                m.point
                    .ra_worst_interval()
                    .map_or("-".into(), |i| i.to_string())
            ));
            graphs.push(GraphCalibration {
                id: g.id.clone(),
                point: m.point,
                macs: g.macs,
                params: g.params,
                runtime_sa: m.runtime_sa,
                runtime_ra: m.runtime_ra,
                replay: BTreeMap::new(),
                latency_ms,
                int8: Some(m.info),
                exits: None,
            });
            continue;
        }
        bar.set_message("attacking");
        let e = eval::evaluate(model, g.lambda, g.width, &set.x, &set.y, &eval_opts, &bar)?;
        let m = e.point(&SPLIT.to_string(), eps);
        let worst = e.worst_case.as_ref().ok_or_else(|| {
            CalibrateError::Invalid("the evaluator kept no worst-case images".into())
        })?;
        let (mut runtime_sa, mut runtime_ra, mut replay, mut latency_ms) = (
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
        );
        for rt in &rts {
            let name = rt.backend().name().to_string();
            bar.set_message(format!("replay {name}"));
            let r = measure::replay(rt, &g.id, &g.selector, &m, worst, &set, opts.batch)?;
            runtime_sa.insert(name.clone(), r.sa);
            runtime_ra.insert(name.clone(), r.ra);
            replay.insert(name.clone(), r);
            bar.set_message(format!("latency {name}"));
            latency_ms.extend(measure::latency(rt, &g.selector, &opts.latency)?);
        }
        let exit_entry = manifest
            .graph_index(&g.id)
            .and_then(|i| manifest.graphs[i].exits.as_ref());
        let exits_cal = match exit_entry {
            Some(entry) => {
                bar.set_message("exits: thresholds, multi-exit and slowdown attacks");
                Some(exits::calibrate(
                    model,
                    &rts,
                    &g.id,
                    g.lambda,
                    g.width,
                    g.macs,
                    entry,
                    &set,
                    &worst.x,
                    eps,
                    opts.seed,
                    &opts.exit_target,
                    opts.batch,
                )?)
            }
            None => None,
        };
        bar.finish_with_message(format!(
            "SA {} worst RA {} (%, 95% CI){}",
            m.sa_interval(),
            m.ra_worst_interval().map_or("-".into(), |i| i.to_string()),
            exits_cal.as_ref().map_or(String::new(), |e| format!(
                "; routed at {:.2} of the MACs: SA {:.1} worst RA {:.1}, slowdown {:.2} of the MACs",
                e.clean.macs_fraction,
                100.0 * e.clean.accuracy,
                100.0 * e.ra_worst,
                e.slowdown.macs_fraction
            ))
        ));
        graphs.push(GraphCalibration {
            id: g.id.clone(),
            point: m,
            macs: g.macs,
            params: g.params,
            runtime_sa,
            runtime_ra,
            replay,
            latency_ms,
            int8: None,
            exits: exits_cal,
        });
        float_worst.insert(g.id.clone(), worst.x.shallow_clone());
    }

    let eps_sweep = match sweep_graph(&manifest) {
        Some(gi) if opts.sanity_limit > 0 => {
            let g = &manifest.graphs[gi];
            let swept = sanity::Swept::Float(model);
            Some(sweep(swept, g, &set, eps, opts)?)
        }
        _ => None,
    };
    let ordering_violations = sanity::ordering(
        graphs.iter().map(|g| (g.id.as_str(), &g.point)),
        &opts.attacks,
        n,
    );
    let replays = graphs.iter().flat_map(|g| g.replay.values());
    let (max_diff, disagreements) = replays.fold((0.0f64, 0usize), |(d, k), r| {
        (
            d.max(r.max_clean_logit_diff),
            k + r.clean_disagreements + r.adv_disagreements,
        )
    });
    // (a) again on the int8 graph at the sweep's configuration, when one was calibrated.
    let int8_eps_sweep = match (&eps_sweep, opts.sanity_limit) {
        (Some(fs), limit) if limit > 0 => {
            match targets.iter().find_map(|t| {
                t.int8.as_ref().filter(|e| {
                    (e.lambda - fs.lambda).abs() <= CONFIG_TOLERANCE
                        && (e.width - fs.width).abs() <= CONFIG_TOLERANCE
                })
            }) {
                Some(e) => {
                    let tg = int8::tch_graph(&opts.export_dir, &manifest, e)?;
                    let f = |z: &tch::Tensor| tg.logits(z);
                    Some(sweep(sanity::Swept::Int8(&f), e, &set, eps, opts)?)
                }
                None => None,
            }
        }
        _ => None,
    };
    let mut sanity = Sanity {
        eps_sweep,
        int8_eps_sweep,
        ordering_violations,
        max_clean_logit_diff: max_diff,
        logit_tolerance: measure::LOGIT_TOLERANCE,
        replay_disagreements: disagreements,
        passed: false,
    };
    sanity.passed = sanity.warnings().is_empty();

    let cfg = model.config();
    let mut report = CalibrationReport {
        format: report::FORMAT.into(),
        model_id: manifest.model_id.clone(),
        mode: manifest.training.mode.clone(),
        dataset: manifest.training.dataset.clone(),
        checkpoint_sha256: checkpoint_sha256.into(),
        split: SPLIT.to_string(),
        samples: n,
        eps,
        pgd_step: eps / 4.0,
        attacks: opts.attacks.iter().map(AttackSpec::key).collect(),
        attacks_pretty: eval::pretty_list(&opts.attacks),
        seed: opts.seed,
        device: report::device_string(),
        backends: opts.backends.iter().map(|b| b.name().to_string()).collect(),
        graphs,
        warnings: sanity.warnings(),
        sanity,
    };
    for b in &baselines {
        if (b.eps - eps).abs() > sanity::FLOAT_SLACK
            || b.attacks != report.attacks
            || b.dataset != report.dataset
        {
            report.warnings.push(format!(
                "baseline {} was calibrated differently (dataset {}, ε = {}, attacks {:?}); its points are not directly comparable",
                b.model_id, b.dataset, b.eps, b.attacks
            ));
        }
    }
    if cfg.data.kind != manifest.training.dataset {
        report.warnings.push(format!(
            "the checkpoint's dataset is {:?} but the manifest says {:?}",
            cfg.data.kind, manifest.training.dataset
        ));
    }

    // Stored under the export directory's lock into the manifest as it is on disk now, not as
    // it was read an hour ago: latencies that an `oats-bench --write-manifest` stored meanwhile
    // are kept, and a directory exported anew meanwhile is refused, not mislabelled.
    let lock = ManifestLock::acquire(&opts.export_dir)?;
    let mut current = lock.load()?;
    current.ensure_same_graphs(&manifest, &manifest_path)?;
    add_derived(&mut current, &targets, &manifest_path)?;
    report.apply_to(&mut current)?;
    lock.save(&current)?;
    if opts.int8_only {
        // The float graphs' entries of an earlier calibration with the same settings stay in
        // the report (and the plot) beside the int8 ones just measured.
        if let Ok(old) = CalibrationReport::load(&opts.export_dir.join(report::REPORT_FILE)) {
            if old.samples == report.samples
                && (old.eps - report.eps).abs() <= sanity::FLOAT_SLACK
                && old.attacks == report.attacks
            {
                let fresh: Vec<String> = report.graphs.iter().map(|g| g.id.clone()).collect();
                let mut kept: Vec<GraphCalibration> = old
                    .graphs
                    .into_iter()
                    .filter(|g| !fresh.contains(&g.id))
                    .collect();
                kept.append(&mut report.graphs);
                report.graphs = kept;
            }
        }
    }
    report.save(&opts.export_dir.join(report::REPORT_FILE))?;
    plot::Frontier::of_calibration(&report, &baselines).write(&opts.export_dir)?;
    drop(lock);
    Ok(report)
}

/// One configuration to calibrate: a graph of the manifest, or a point of the `--lambdas`
/// grid (derived from the package unless the manifest has it).
struct Target {
    id: String,
    lambda: f64,
    width: f64,
    macs: u64,
    params: u64,
    /// How the runtimes select it.
    selector: Selector,
    /// The manifest has no entry at this (λ, width) yet: one is added when the measurements
    /// are stored.
    new: bool,
    /// The manifest entry of an int8 graph (calibrated by `int8::measure`).
    int8: Option<GraphEntry>,
}

/// What to calibrate: every graph of the manifest, or the `--lambdas` × `--widths` grid. Each
/// grid point is derived (or found) by the first runtime before any attack runs, so a λ
/// outside the trained range or an untrained width is refused at once, with the runtime's
/// reason.
fn targets(
    manifest: &Manifest,
    rts: &[oats_runtime::OatsModel],
    opts: &CalibrateOptions,
) -> Result<Vec<Target>> {
    let Some(lambdas) = &opts.lambdas else {
        let mut all: Vec<Target> = manifest
            .graphs
            .iter()
            .filter(|g| !opts.int8_only || g.is_int8())
            .map(|g| Target {
                id: g.id.clone(),
                lambda: g.lambda,
                width: g.width,
                macs: g.macs,
                params: g.params,
                selector: Selector::Id(g.id.clone()),
                new: false,
                int8: g.is_int8().then(|| g.clone()),
            })
            .collect();
        if all.is_empty() {
            return Err(CalibrateError::Invalid(format!(
                "{}: no {}graph to calibrate",
                opts.export_dir.join(MANIFEST_FILE).display(),
                if opts.int8_only { "int8 " } else { "" }
            )));
        }
        // Float first: their worst-case images are the int8 graphs' transfer attack.
        all.sort_by_key(|t| t.int8.is_some());
        return Ok(all);
    };
    if opts.int8_only {
        return Err(CalibrateError::Invalid(
            "--int8-only calibrates the manifest's int8 graphs; it takes no --lambdas grid".into(),
        ));
    }
    let Some(package) = &manifest.package else {
        return Err(CalibrateError::Invalid(format!(
            "--lambdas: {} lists no package to derive the grid from (an export of manifest \
             schema_version {} has one: export it anew)",
            opts.export_dir.join(MANIFEST_FILE).display(),
            oats_runtime::manifest::SCHEMA_VERSION
        )));
    };
    let widths = opts.widths.as_ref().unwrap_or(&package.widths);
    let mut out: Vec<Target> = Vec::new();
    for &width in widths {
        for &lambda in lambdas {
            let same = |l: f64, w: f64| {
                (l - lambda).abs() <= CONFIG_TOLERANCE && (w - width).abs() <= CONFIG_TOLERANCE
            };
            if out.iter().any(|t| same(t.lambda, t.width)) {
                continue; // listed twice
            }
            let listed = manifest
                .graphs
                .iter()
                .any(|g| !g.is_int8() && same(g.lambda, g.width));
            if !listed && package.format == oats_graph::package::FORMAT_EXITS {
                return Err(CalibrateError::Invalid(format!(
                    "--lambdas: λ {lambda} at width {width} is not in {}: a model with side \
                     exits is calibrated on the configurations its export lists, whose \
                     segments and heads the manifest describes; export it (oats-export \
                     --lambdas, with --package-only to ship no graph)",
                    opts.export_dir.join(MANIFEST_FILE).display()
                )));
            }
            let selector = Selector::Explicit { lambda, width };
            let mut info = None;
            for rt in rts {
                info = Some(
                    rt.prepare(&selector)
                        .map_err(|source| CalibrateError::GridPoint {
                            lambda,
                            width,
                            source,
                        })?,
                );
            }
            let Some(info) = info else {
                return Err(CalibrateError::Invalid("no backend given".into()));
            };
            out.push(Target {
                id: info.id.clone(),
                lambda,
                width,
                macs: info.macs,
                params: info.params,
                selector,
                new: !listed,
                int8: None,
            });
        }
    }
    Ok(out)
}

/// Adds to `current` (the manifest re-read under the lock) an entry derived from the package
/// for every grid point it does not have yet, so the measurements have somewhere to go and
/// policies can choose them.
fn add_derived(current: &mut Manifest, targets: &[Target], path: &Path) -> Result<()> {
    for t in targets.iter().filter(|t| t.new) {
        let at = current.graphs.iter().find(|g| {
            !g.is_int8()
                && (g.lambda - t.lambda).abs() <= CONFIG_TOLERANCE
                && (g.width - t.width).abs() <= CONFIG_TOLERANCE
        });
        match at {
            // Added by another calibration meanwhile: the measurements replace its.
            Some(g) if g.id == t.id && g.is_derived() => {}
            Some(g) => {
                return Err(CalibrateError::Invalid(format!(
                    "{}: configuration λ = {}, width {} became graph {:?} while it was being \
                     measured; calibrate again",
                    path.display(),
                    t.lambda,
                    t.width,
                    g.id
                )))
            }
            None => current.graphs.push(GraphEntry::derived(
                t.id.clone(),
                t.lambda,
                t.width,
                t.params,
                t.macs,
            )),
        }
    }
    Ok(())
}

/// The validation split of the model's dataset, limited, as tensors.
fn load_set(
    model: &TchModel,
    manifest: &Manifest,
    opts: &CalibrateOptions,
) -> Result<measure::CalibrationSet> {
    let cfg = model.config();
    let kind = cfg.data.kind;
    let dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| cfg.data.dir.clone());
    let ds = data::load(kind, &dir, SPLIT, opts.limit)?;
    if ds.is_empty() {
        return Err(CalibrateError::Invalid(format!(
            "{}: the {SPLIT} split is empty",
            dir.display()
        )));
    }
    let shape = [ds.channels, ds.height, ds.width];
    if shape != manifest.input.shape {
        return Err(CalibrateError::Invalid(format!(
            "{}: images are {shape:?} (C, H, W) but the graphs take {:?}",
            dir.display(),
            manifest.input.shape
        )));
    }
    // The attacked model must take them too (a manifest of another model's shape would
    // otherwise be attacked on data the model was never meant for).
    let in_data =
        |e: oats_train::TrainError| CalibrateError::Invalid(format!("{}: {e}", dir.display()));
    model
        .check_input(ds.channels as i64, ds.height as i64, ds.width as i64)
        .map_err(in_data)?;
    model.check_labels(&ds.labels).map_err(in_data)?;
    let (x, y) = oats_train::trainer::to_tensors(&ds, Device::Cpu)?;
    Ok(measure::CalibrationSet { x, y })
}

/// Sanity check (a) on graph `g` (the trainer's model or an int8 graph, `swept`), on the
/// first `opts.sanity_limit` samples of `set`, with its own progress bar.
fn sweep(
    swept: sanity::Swept<'_>,
    g: &GraphEntry,
    set: &measure::CalibrationSet,
    eps: f64,
    opts: &CalibrateOptions,
) -> Result<sanity::EpsSweep> {
    let bar = progress(
        opts.quiet,
        sanity::sweep_eps(eps).len() as u64,
        format!("sanity {}", g.id),
    );
    bar.set_message(format!(
        "PGD-20 RA over ε on {} samples",
        opts.sanity_limit.min(set.len())
    ));
    let s = sanity::eps_sweep(
        swept,
        &g.id,
        g.lambda,
        g.width,
        &set.head(opts.sanity_limit),
        eps,
        opts.batch,
        opts.seed,
        &bar,
    )?;
    bar.finish_and_clear();
    Ok(s)
}

/// Sanity (a) runs on the full-width graph at the largest λ.
fn sweep_graph(m: &Manifest) -> Option<usize> {
    let wmax = m
        .graphs
        .iter()
        .map(|g| g.width)
        .fold(f64::NEG_INFINITY, f64::max);
    m.graphs
        .iter()
        .enumerate()
        .filter(|(_, g)| g.width == wmax && !g.is_int8())
        .max_by(|a, b| a.1.lambda.total_cmp(&b.1.lambda))
        .map(|(i, _)| i)
}

fn progress(quiet: bool, len: u64, prefix: String) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}
