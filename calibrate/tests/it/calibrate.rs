//! Train a tiny OATS model for a few batches, export its 18 graphs, calibrate them with cheap
//! attacks on 64 validation samples, and check what calibration promises: every graph's
//! metrics in the manifest, the replay agreeing with the trainer (and failing, naming the
//! graph, when the graph is not the attacked model), the report, the table, the plots.
use crate::support::{assets, backends};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use indicatif::ProgressBar;
use oats_calibrate::measure::LOGIT_TOLERANCE;
use oats_calibrate::{
    parse_attacks, plot, report, CalibrateError, CalibrateOptions, CalibrationReport,
    GraphCalibration, LatencySettings, Sanity,
};
use oats_export::{export, ExportOptions};
use oats_runtime::{Backend, LatencyStat, Manifest, OperatingPoint, Policy, Selector};
use oats_train::config::TrainConfig;
use oats_train::data::{self, DatasetKind, Split};
use oats_train::eval::{self, EvalOptions};
use oats_train::{checkpoint, TchModel, Trainer};
use tch::Device;

/// An OATS model trained for a few dozen batches and its export, made once for all tests.
struct Fixture {
    dir: PathBuf,
    checkpoint: PathBuf,
    sha: String,
    export: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Under the target directory (cargo's scratch space for integration tests); the
        // directories of earlier runs whose process is gone are removed. This run's is kept
        // for people to look at (frontier.png).
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("oats-calibrate-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tmp.join(format!("oats-calibrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let run = dir.join("run");
        let mut c = TrainConfig::embedded_default();
        c.data.dir = assets();
        c.attack.steps = 1;
        c.epochs = 1;
        c.batch_size = 32;
        // Enough batches for the BN running statistics to settle: with fewer, the eval-mode
        // model is close to a constant function and no attack can move it.
        c.max_batches = Some(24);
        c.validate().expect("config");
        let train = data::load(
            DatasetKind::FashionMnist,
            &assets(),
            Split::Train,
            Some(24 * 32),
        )
        .expect("data");
        let val =
            data::load(DatasetKind::FashionMnist, &assets(), Split::Val, Some(64)).expect("data");
        let mut t = Trainer::new(c, &train, &val, &run, Device::Cpu).expect("trainer");
        t.quiet = true;
        t.run().expect("train");
        let checkpoint = run.join(checkpoint::FILE_NAME);
        let sha = checkpoint::sha256_hex(&std::fs::read(&checkpoint).expect("ckpt"));
        let (model, _) = TchModel::load(&checkpoint, Device::Cpu).expect("load");
        let export_dir = dir.join("export");
        export(
            &model,
            &sha,
            &export_dir,
            &ExportOptions::default(),
            None,
            &ProgressBar::hidden(),
        )
        .expect("export");
        Fixture {
            dir,
            checkpoint,
            sha,
            export: export_dir,
        }
    })
}

/// A private copy of the export (each test writes its own metrics).
fn copy_export(name: &str) -> PathBuf {
    let f = fixture();
    let dst = f.dir.join(name);
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).expect("mkdir");
    for e in std::fs::read_dir(&f.export).expect("read export") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, dst.join(p.file_name().expect("name"))).expect("copy");
    }
    dst
}

fn options(export_dir: &Path) -> CalibrateOptions {
    CalibrateOptions {
        data_dir: Some(assets()),
        attacks: parse_attacks("pgd5,apgd10").expect("attacks"),
        limit: Some(64),
        backends: backends(),
        sanity_limit: 32,
        batch: 64,
        latency: LatencySettings {
            batches: vec![1],
            warmup: 2,
            iters: 10,
        },
        quiet: true,
        ..CalibrateOptions::new(export_dir)
    }
}

/// One evaluator: calibration (validation split, for the runtime) and `oats-train eval`'s
/// grid (the reported numbers) give the same SA, RA per attack and worst-case RA for the same
/// model, samples, attacks and seed.
#[test]
fn eval_and_calibrate_give_the_same_numbers() {
    let f = fixture();
    let dir = copy_export("same-numbers");
    let mut opts = options(&dir);
    opts.attacks = parse_attacks("pgd3x2,fgsm").expect("attacks");
    opts.limit = Some(48);
    opts.sanity_limit = 0;
    opts.seed = 7;
    opts.backends = vec![Backend::Tract];
    let (model, _) = TchModel::load(&f.checkpoint, Device::Cpu).expect("load");
    let rep = oats_calibrate::calibrate(&model, &f.checkpoint, &f.sha, &opts).expect("calibrate");
    let ds = data::load(DatasetKind::FashionMnist, &assets(), Split::Val, Some(48)).expect("data");
    let x = tch::Tensor::from_slice(&ds.images).view([ds.len() as i64, 1, 28, 28]);
    let y = tch::Tensor::from_slice(&ds.labels);
    let configs: Vec<(f64, f64)> = rep
        .graphs
        .iter()
        .map(|g| (g.point.lambda, g.point.width))
        .collect();
    let eval_opts = EvalOptions {
        eps: rep.eps,
        attacks: opts.attacks.clone(),
        // The same batches: the attacks' random starts are drawn per batch.
        batch: opts.batch,
        seed: opts.seed,
        keep_worst: false,
    };
    let points = eval::evaluate_grid(
        &model,
        &configs,
        &x,
        &y,
        &eval_opts,
        "val",
        &ProgressBar::hidden(),
    )
    .expect("eval");
    let mut attacked = 0;
    for (g, p) in rep.graphs.iter().zip(&points) {
        assert_eq!(&g.point, p, "graph {}", g.id);
        attacked += usize::from(p.ra_worst.is_some_and(|r| r < p.sa));
    }
    assert_eq!(points.len(), 18);
    assert!(
        attacked > 0,
        "no attack moved any configuration: the comparison proves nothing"
    );
}

#[test]
fn calibrates_every_graph_and_draws_the_frontier() {
    let f = fixture();
    let dir = copy_export("calibrated");
    let opts = options(&dir);
    let (model, _) = TchModel::load(&f.checkpoint, Device::Cpu).expect("load");
    let rep = oats_calibrate::calibrate(&model, &f.checkpoint, &f.sha, &opts).expect("calibrate");
    print!("{}", rep.table());
    for w in &rep.warnings {
        eprintln!("warning: {w}");
    }
    let m = Manifest::load(dir.join("manifest.yaml")).expect("manifest");
    assert_eq!(m.graphs.len(), 18);
    assert_eq!(rep.graphs.len(), 18);
    let keys = ["apgd-ce10", "pgd5"];
    let backend_names: Vec<String> = opts.backends.iter().map(|b| b.name().to_string()).collect();
    for (g, r) in m.graphs.iter().zip(&rep.graphs) {
        assert_eq!(g.id, r.id);
        let mt = &g.metrics;
        let sa = mt.sa.expect("sa");
        let worst = mt.ra_worst.expect("ra_worst");
        assert_eq!(
            mt.ra.keys().map(String::as_str).collect::<Vec<_>>(),
            keys,
            "{}",
            g.id
        );
        for (k, &ra) in &mt.ra {
            assert!(worst <= ra, "{}: worst {worst} > {k} {ra}", g.id);
            assert!(ra <= sa, "{}: RA {k} {ra} > SA {sa}", g.id);
        }
        assert_eq!(mt.split.as_deref(), Some("val"));
        assert_eq!(mt.samples, Some(64));
        assert_eq!(mt.epsilon, Some(0.1));
        assert!(mt
            .device
            .as_deref()
            .is_some_and(|d| d.contains("logical cores")));
        for b in &backend_names {
            let l = mt
                .latency_ms
                .get(&format!("{b}/b1"))
                .unwrap_or_else(|| panic!("{}: no {b}/b1 latency", g.id));
            assert!(l.p50 > 0.0 && l.p50 <= l.p90 && l.p90 <= l.p99, "{l:?}");
            // The replay passed: the runtime agrees with the trainer except at ties.
            let rp = &r.replay[b];
            assert_eq!(rp.clean_disagreements, rp.clean_ties, "{}", g.id);
            assert_eq!(rp.adv_disagreements, rp.adv_ties, "{}", g.id);
            assert!(
                ((r.runtime_sa[b] - sa) * 64.0).abs() <= rp.clean_ties as f64 + 1e-9,
                "{}: runtime SA {} vs {sa}",
                g.id,
                r.runtime_sa[b]
            );
            assert!(
                ((r.runtime_ra[b] - worst) * 64.0).abs()
                    <= (rp.clean_ties + rp.adv_ties) as f64 + 1e-9,
                "{}: runtime RA {} vs {worst}",
                g.id,
                r.runtime_ra[b]
            );
            assert!(rp.max_clean_logit_diff <= LOGIT_TOLERANCE, "{rp:?}");
        }
    }
    // Sanity: (a) ran on the full-width, largest-λ graph; (c) is within tolerance.
    let sweep = rep.sanity.eps_sweep.as_ref().expect("eps sweep");
    assert_eq!(sweep.graph, "l1-w1");
    let eps: Vec<f64> = sweep.points.iter().map(|p| p.eps).collect();
    assert_eq!(eps, vec![0.05, 0.1, 0.2, 0.4, 0.5]);
    assert!(
        sweep.ra_at_large_eps <= 0.05,
        "PGD-20 at ε = 0.5 leaves {} robust",
        sweep.ra_at_large_eps
    );
    assert!(rep.sanity.max_clean_logit_diff <= LOGIT_TOLERANCE);
    assert_eq!(rep.sanity.passed, rep.warnings.is_empty());
    // The report on disk is the one returned.
    assert_eq!(
        CalibrationReport::load(&dir.join(report::REPORT_FILE)).expect("report"),
        rep
    );
    assert_eq!(rep.split, "val");
    // The table shows the manifest's numbers.
    let t = rep.table();
    assert_eq!(t.rows.len(), 18);
    for (i, g) in m.graphs.iter().enumerate() {
        let mt = &g.metrics;
        assert_eq!(t.cell(i, "graph"), Some(g.id.as_str()));
        assert_eq!(
            t.cell(i, "SA %"),
            Some(report::pct(mt.sa.expect("sa")).as_str())
        );
        for k in keys {
            assert_eq!(
                t.cell(i, &format!("{k} %")),
                Some(report::pct(mt.ra[k]).as_str()),
                "{} {k}",
                g.id
            );
        }
        assert_eq!(
            t.cell(i, "worst RA %"),
            Some(report::pct(mt.ra_worst.expect("worst")).as_str())
        );
        assert_eq!(
            t.cell(i, "p50 tract/b1 ms"),
            Some(report::ms(mt.latency_ms["tract/b1"].p50).as_str())
        );
        assert_eq!(t.cell(i, "MACs"), Some(report::fmt_macs(g.macs).as_str()));
    }
    assert!(t.to_string().lines().count() == 19);
    // The plots.
    let png = std::fs::read(dir.join(plot::PNG_FILE)).expect("png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let img = image::load_from_memory(&png).expect("decode png");
    assert_eq!((img.width(), img.height()), plot::SIZE);
    let svg = std::fs::read_to_string(dir.join(plot::SVG_FILE)).expect("svg");
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{}",
        &svg[..svg.len().min(80)]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("width 0.5") && svg.contains("λ=") && svg.contains("clean accuracy"));
    // The runtime's policy can now choose by measured numbers.
    let rt = oats_runtime::OatsModel::open(&dir, &oats_runtime::Options::default()).expect("open");
    let best = m
        .graphs
        .iter()
        .map(|g| g.metrics.ra_worst.unwrap_or(0.0))
        .fold(0.0, f64::max);
    let chosen = rt
        .select(&Selector::Policy(Policy {
            max_latency_ms: Some(1e6),
            ..Policy::default()
        }))
        .expect("policy");
    let ra = m
        .graphs
        .iter()
        .find(|g| g.id == chosen.id)
        .and_then(|g| g.metrics.ra_worst)
        .expect("chosen");
    assert_eq!(ra, best);
}

/// The replay check bites: when the attacked model is not what the graph computes, the
/// command fails naming the graph, and writes nothing.
#[test]
fn replay_mismatch_fails_naming_the_graph() {
    let f = fixture();
    let dir = copy_export("mismatch");
    let mut opts = options(&dir);
    opts.attacks = parse_attacks("pgd2").expect("attacks");
    opts.limit = Some(32);
    let before = std::fs::read(dir.join("manifest.yaml")).expect("manifest");
    let first = Manifest::load(dir.join("manifest.yaml"))
        .expect("manifest")
        .graphs[0]
        .id
        .clone();

    let (model, _) = TchModel::load(&f.checkpoint, Device::Cpu).expect("load");
    let bias = |delta: &[f32]| {
        let _ng = tch::no_grad_guard();
        let vars = model.vs.variables();
        let mut b = vars.get("fc.bias").expect("fc.bias").shallow_clone();
        let _ = b.f_add_(&tch::Tensor::from_slice(delta)).expect("add");
    };
    // One class pushed far up: the trainer now predicts it almost everywhere, the graph does not.
    let mut push = vec![0.0f32; 10];
    push[3] = 50.0;
    bias(&push);
    match oats_calibrate::calibrate(&model, &f.checkpoint, &f.sha, &opts) {
        Err(CalibrateError::ReplayMismatch {
            graph,
            backend,
            disagreements,
            ties,
            ..
        }) => {
            assert_eq!(graph, first);
            assert_eq!(backend, "tract");
            assert!(disagreements > ties, "{disagreements} vs {ties}");
        }
        other => panic!(
            "expected a replay mismatch, got {:?}",
            other.map(|r| r.graphs.len())
        ),
    }
    // Undo, then shift every logit alike: same classifications, different logits (check (c)).
    push[3] = -50.0;
    bias(&push);
    bias(&[0.01; 10]);
    match oats_calibrate::calibrate(&model, &f.checkpoint, &f.sha, &opts) {
        Err(e @ CalibrateError::LogitMismatch { .. }) => {
            let CalibrateError::LogitMismatch {
                ref graph,
                max_abs_diff,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(graph, &first);
            assert!(max_abs_diff > 5e-3, "{max_abs_diff}");
            assert!(e.to_string().contains(&first), "{e}");
        }
        other => panic!(
            "expected a logit mismatch, got {:?}",
            other.map(|r| r.graphs.len())
        ),
    }
    // Another checkpoint than the export's source is refused before any work.
    let e = oats_calibrate::calibrate(&model, &f.checkpoint, &"0".repeat(64), &opts)
        .expect_err("wrong sha");
    assert!(
        matches!(e, CalibrateError::CheckpointMismatch { .. }),
        "{e}"
    );
    assert_eq!(
        std::fs::read(dir.join("manifest.yaml")).expect("manifest"),
        before,
        "a failed calibration must not touch the manifest"
    );
    assert!(!dir.join(report::REPORT_FILE).exists());
}

/// A hand-made baseline report: one PGD-AT model at λ = 0.4.
fn baseline(path: &Path) {
    let g = GraphCalibration {
        id: "l0.4-w1".into(),
        point: OperatingPoint {
            lambda: 0.4,
            width: 1.0,
            sa: 0.7,
            ra: BTreeMap::from([("pgd3".to_string(), 0.35), ("fgsm".to_string(), 0.4)]),
            ra_worst: Some(0.3),
            samples: 16,
            split: "val".into(),
            epsilon: 0.1,
        },
        macs: 1000,
        params: 100,
        runtime_sa: BTreeMap::new(),
        runtime_ra: BTreeMap::new(),
        replay: BTreeMap::new(),
        latency_ms: BTreeMap::from([(
            "tract/b1".to_string(),
            LatencyStat {
                p50: 1.0,
                p90: 1.0,
                p99: 1.0,
            },
        )]),
        int8: None,
        exits: None,
    };
    let r = CalibrationReport {
        format: report::FORMAT.into(),
        model_id: "pgd-at-small-fashion-mnist-000000000000".into(),
        mode: "pgd-at".into(),
        dataset: "fashion-mnist".into(),
        checkpoint_sha256: "0".repeat(64),
        split: "val".into(),
        samples: 16,
        eps: 0.1,
        pgd_step: 0.025,
        attacks: vec!["pgd3".into(), "fgsm".into()],
        attacks_pretty: "PGD-3, FGSM".into(),
        seed: 0,
        device: "test".into(),
        backends: vec!["tract".into()],
        graphs: vec![g],
        sanity: Sanity::default(),
        warnings: vec![],
    };
    r.save(path).expect("save baseline");
}

#[test]
fn cli_runs_and_explains_itself() {
    let f = fixture();
    let exe = env!("CARGO_BIN_EXE_oats-calibrate");
    let help = std::process::Command::new(exe)
        .arg("--help")
        .output()
        .expect("run --help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success());
    for word in [
        "--checkpoint",
        "--export",
        "--attacks",
        "--baseline",
        "--sanity-limit",
        "validation",
        "worst case",
    ] {
        assert!(text.contains(word), "--help lacks {word:?}:\n{text}");
    }
    let dir = copy_export("cli");
    let base = f.dir.join("baseline.yaml");
    baseline(&base);
    let out = std::process::Command::new(exe)
        .args([
            "--checkpoint",
            f.checkpoint
                .parent()
                .expect("run dir")
                .to_str()
                .expect("utf-8"),
        ])
        .args(["--export", dir.to_str().expect("utf-8")])
        .args(["--data", assets().to_str().expect("utf-8")])
        .args([
            "--attacks",
            "pgd3,fgsm",
            "--limit",
            "16",
            "--sanity-limit",
            "16",
            "--bench-iters",
            "5",
            "--backend",
            "tract",
            "--quiet",
        ])
        .args(["--baseline", base.to_str().expect("utf-8")])
        .output()
        .expect("run oats-calibrate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "oats-calibrate failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
    assert!(
        stdout.contains("worst RA %")
            && stdout.contains("p50 tract/b1 ms")
            && stdout.contains("ε sweep"),
        "{stdout}"
    );
    let m = Manifest::load(dir.join("manifest.yaml")).expect("manifest");
    for g in &m.graphs {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{} ", g.id))),
            "no row for {}",
            g.id
        );
        assert_eq!(g.metrics.samples, Some(16));
        assert!(g.metrics.ra.contains_key("pgd3") && g.metrics.ra.contains_key("fgsm"));
    }
    let svg = std::fs::read_to_string(dir.join(plot::SVG_FILE)).expect("svg");
    assert!(svg.contains("PGD-AT λ=0.4"), "baseline point not labelled");
    // Keep a copy of the picture for people to look at.
    let _ = std::fs::copy(dir.join(plot::PNG_FILE), f.dir.join("cli-frontier.png"));
}

/// A hand-made test-split report for the fixture's checkpoint (`oats-train eval` output).
fn eval_report(sha: &str, eps: f64) -> oats_train::eval::EvalReport {
    let r = |lambda: f64, sa: f64, ra: f64| OperatingPoint {
        lambda,
        width: 1.0,
        sa,
        ra: BTreeMap::from([
            ("pgd20".to_string(), ra + 0.01),
            ("apgd-ce100".to_string(), ra),
        ]),
        ra_worst: Some(ra),
        samples: 100,
        split: "test".into(),
        epsilon: eps,
    };
    oats_train::eval::EvalReport {
        checkpoint: "checkpoint.safetensors".into(),
        checkpoint_sha256: sha.into(),
        split: "test".into(),
        epsilon: eps,
        pgd_step: eps / 4.0,
        attacks: vec!["pgd20".into(), "apgd-ce100".into()],
        seed: Some(0),
        results: vec![r(0.0, 0.8, 0.1), r(0.15, 0.75, 0.4), r(1.0, 0.7, 0.5)],
    }
}

fn run_copy(name: &str, eval: &oats_train::eval::EvalReport) -> PathBuf {
    let f = fixture();
    let dir = f.dir.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(&f.checkpoint, dir.join(checkpoint::FILE_NAME)).expect("copy checkpoint");
    std::fs::write(
        dir.join("eval.yaml"),
        serde_yaml::to_string(eval).expect("yaml"),
    )
    .expect("write eval");
    dir
}

#[test]
fn compare_puts_runs_side_by_side_and_refuses_stale_or_mismatched_reports() {
    let f = fixture();
    let exe = env!("CARGO_BIN_EXE_oats-compare");
    let a = run_copy("cmp-a", &eval_report(&f.sha, 0.1));
    let out = f.dir.join("cmp/claim");
    let run = |args: &[&Path]| {
        let mut c = std::process::Command::new(exe);
        c.args(args).arg("--out").arg(&out);
        c.output().expect("run oats-compare")
    };
    let o = run(&[&a]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // λ = 0.15 is not in the training set: marked, and the numbers are the report's.
    assert!(
        stdout.contains("| OATS (dual BN) | 0.15 (unseen) | 1 | 75.0 | 41.0 | 40.0 | 40.0 | 100 |"),
        "{stdout}"
    );
    assert!(stdout.contains("Training cost"), "{stdout}");
    // The file is what was printed, after the line that marks it as this tool's.
    assert_eq!(
        std::fs::read_to_string(out.with_extension("md")).expect("md"),
        format!("{}\n{stdout}", oats_calibrate::compare::TABLE_MARKER)
    );
    let svg = std::fs::read_to_string(out.with_extension("svg")).expect("svg");
    assert!(
        svg.contains("λ=0.15 (unseen)"),
        "unseen λ not labelled in the plot"
    );
    assert!(out.with_extension("png").exists());

    // A report of another checkpoint (e.g. an earlier epoch) is refused, naming the file.
    let stale = run_copy("cmp-stale", &eval_report(&"0".repeat(64), 0.1));
    let o = run(&[&stale]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("cmp-stale/eval.yaml") && err.contains("sha256"),
        "{err}"
    );

    // Runs evaluated at different ε cannot share a table.
    let b = run_copy("cmp-b", &eval_report(&f.sha, 0.2));
    let o = run(&[&a, &b]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("not comparable") && err.contains("cmp-b"),
        "{err}"
    );
}

/// `--lambdas` on a package-only export (`oats-export --package-only`): the grid is derived
/// from the package, replayed through the derived sessions, and stored as derived entries a
/// policy can choose; a grid point the package cannot serve is refused before any attack.
#[test]
fn a_lambda_grid_is_calibrated_from_the_package_and_policies_choose_from_it() {
    let f = fixture();
    let (model, _) = TchModel::load(&f.checkpoint, Device::Cpu).expect("load");
    let dir = f.dir.join("package-only");
    let _ = std::fs::remove_dir_all(&dir);
    let rep = export(
        &model,
        &f.sha,
        &dir,
        &ExportOptions {
            package_only: true,
            ..ExportOptions::default()
        },
        None,
        &ProgressBar::hidden(),
    )
    .expect("package-only export");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .expect("read export")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!files.iter().any(|f| f.ends_with(".onnx")), "{files:?}");
    assert!(rep.manifest.graphs.iter().all(|g| g.is_derived()));
    assert_eq!(rep.manifest.graphs.len(), 18);

    // Not a λ at all / not a trained width (the runtime's reason, before any attack).
    let bad = |lambdas: Vec<f64>, widths: Option<Vec<f64>>| {
        oats_calibrate::run(
            &f.checkpoint,
            Device::Cpu,
            &CalibrateOptions {
                lambdas: Some(lambdas),
                widths,
                ..options(&dir)
            },
        )
    };
    match bad(vec![0.1, 1.5], None) {
        Err(CalibrateError::Invalid(m)) => assert!(m.contains("--lambdas 1.5"), "{m}"),
        other => panic!("{other:?}"),
    }
    match bad(vec![0.1], Some(vec![0.6])) {
        Err(e @ CalibrateError::GridPoint { .. }) => {
            let chain = oats_io::error_chain(&e);
            assert!(
                chain.contains("width 0.6") && chain.contains("not a trained width"),
                "{chain}"
            );
        }
        other => panic!("{other:?}"),
    }

    let opts = CalibrateOptions {
        lambdas: Some(oats_calibrate::grid::parse_grid("--lambdas", "0.1:0.05:0.2").expect("grid")),
        widths: Some(vec![0.5, 1.0]),
        limit: Some(32),
        sanity_limit: 0,
        ..options(&dir)
    };
    let rep = oats_calibrate::run(&f.checkpoint, Device::Cpu, &opts).expect("calibrate grid");
    let ids: Vec<&str> = rep.graphs.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "l0.1-w0.5",
            "l0.15-w0.5",
            "l0.2-w0.5",
            "l0.1-w1",
            "l0.15-w1",
            "l0.2-w1"
        ]
    );
    let m = Manifest::load(dir.join("manifest.yaml")).expect("manifest");
    // 18 trained configurations, plus the two unseen λ at two widths.
    assert_eq!(m.graphs.len(), 20);
    for id in &ids {
        let g = &m.graphs[m.graph_index(id).expect("listed")];
        assert!(g.is_derived());
        assert_eq!(g.metrics.samples, Some(32), "{id}");
        assert!(g.metrics.ra_worst.is_some(), "{id}");
        assert!(!g.metrics.latency_ms.is_empty(), "{id}");
    }
    // Configurations outside the grid keep no metrics (they were not measured).
    let g = &m.graphs[m.graph_index("l1-w1").expect("l1-w1")];
    assert!(g.metrics.sa.is_none());

    // The runtime serves what the policy picks from the grid.
    let rt = oats_runtime::OatsModel::open(&dir, &oats_runtime::Options::default()).expect("open");
    let chosen = rt
        .select(&Selector::Policy(Policy {
            objective: oats_runtime::Objective::MaxSa,
            ..Policy::default()
        }))
        .expect("policy");
    assert!(
        ids.contains(&chosen.id.as_str()) && chosen.derived,
        "{chosen:?}"
    );

    // Calibrating the grid again replaces its numbers and adds nothing.
    oats_calibrate::run(&f.checkpoint, Device::Cpu, &opts).expect("again");
    let again = Manifest::load(dir.join("manifest.yaml")).expect("manifest");
    assert_eq!(again.graphs.len(), 20);
}

/// A grid needs a package to derive from, and --widths needs --lambdas.
#[test]
fn a_lambda_grid_without_a_package_or_lambdas_is_refused() {
    let f = fixture();
    let dir = copy_export("grid-v1");
    let mut m = Manifest::load(dir.join("manifest.yaml")).expect("manifest");
    m.package = None;
    m.schema_version = oats_runtime::manifest::SCHEMA_VERSION_V1;
    m.save(dir.join("manifest.yaml")).expect("save");
    let cases = [
        (
            CalibrateOptions {
                lambdas: Some(vec![0.15]),
                ..options(&dir)
            },
            "lists no package",
        ),
        (
            CalibrateOptions {
                widths: Some(vec![0.5]),
                ..options(&dir)
            },
            "only with --lambdas",
        ),
    ];
    for (opts, want) in cases {
        match oats_calibrate::run(&f.checkpoint, Device::Cpu, &opts) {
            Err(CalibrateError::Invalid(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("{want}: {other:?}"),
        }
    }
}

/// int8 end to end on the tiny model (issue #15): `oats-export --int8` quantizes and verifies
/// two configurations in every engine, refuses one that misses the agreement bar (leaving the
/// manifest as it was), and `oats-calibrate --int8-only` measures them with the transfer and
/// the direct (straight-through) attack, verdicts from the engines, float metrics untouched.
#[test]
fn int8_graphs_are_exported_verified_and_attacked() {
    use oats_export::int8::{add_int8, Int8Options, MIN_TOP1_AGREEMENT, RANGE_PERCENTILE};
    let f = fixture();
    let dir = copy_export("int8");
    let train = data::load(
        DatasetKind::FashionMnist,
        &assets(),
        Split::Train,
        Some(256),
    )
    .expect("data");
    let val =
        data::load(DatasetKind::FashionMnist, &assets(), Split::Val, Some(200)).expect("data");
    let x = |ds: &data::Dataset| {
        oats_train::trainer::to_tensors(ds, Device::Cpu)
            .expect("t")
            .0
    };
    let opts = |pct: f64, min: f64| Int8Options {
        lambdas: Some(vec![0.0, 1.0]),
        widths: Some(vec![1.0]),
        calibration: x(&train),
        calibration_images: "fashion-mnist train[0..256]".into(),
        verification: x(&val),
        verification_images: "fashion-mnist val[0..200]".into(),
        verify_with: backends(),
        percentile: pct,
        min_top1_agreement: min,
    };
    // Clipping half of every activation cannot keep 100 % agreement: refused, nothing added.
    let before = std::fs::read(dir.join("manifest.yaml")).expect("manifest");
    let err = add_int8(&dir, &opts(50.0, 1.0), &ProgressBar::hidden())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("top-1 agrees") && err.contains("-int8"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.join("manifest.yaml")).expect("manifest"),
        before
    );
    // The tiny model is barely trained (small logit margins): the bar is lowered here, the
    // agreement is recorded; shipped models keep MIN_TOP1_AGREEMENT.
    let rep = add_int8(&dir, &opts(RANGE_PERCENTILE, 0.5), &ProgressBar::hidden()).expect("int8");
    const { assert!(MIN_TOP1_AGREEMENT >= 0.99) };
    assert_eq!(rep.configs.len(), 2);
    let m = Manifest::load(dir.join("manifest.yaml")).expect("manifest");
    for c in &rep.configs {
        assert_eq!(c.engine.len(), backends().len(), "{}", c.id);
        for e in &c.engine {
            assert!(
                e.top1_agreement >= 0.5 && e.agreement_with_tch >= 0.99,
                "{e:?}"
            );
        }
        assert!(
            !c.layers.is_empty() && c.layers[0].op == "input",
            "{:?}",
            c.layers
        );
        assert!(c
            .layers
            .iter()
            .all(|l| l.rel_error.is_finite() && l.scale > 0.0));
        assert!(
            c.bytes * 2 < c.float_bytes,
            "{} vs {}",
            c.bytes,
            c.float_bytes
        );
        let g = &m.graphs[m.graph_index(&c.id).expect("listed")];
        let q = g.quantization.as_ref().expect("quantization");
        assert!(g.is_int8() && q.float_id == c.float_id);
        assert_eq!(q.calibration_images, "fashion-mnist train[0..256]");
        assert!(dir.join(format!("{}.int8.onnx", c.float_id)).is_file());
    }
    assert!(dir.join("int8-report.yaml").is_file());
    // A refused second run leaves the int8 files and the manifest as they were.
    let files_before: Vec<Vec<u8>> = rep
        .configs
        .iter()
        .map(|c| std::fs::read(dir.join(format!("{}.int8.onnx", c.float_id))).expect("file"))
        .collect();
    let manifest_before = std::fs::read(dir.join("manifest.yaml")).expect("manifest");
    assert!(add_int8(&dir, &opts(50.0, 1.0), &ProgressBar::hidden()).is_err());
    for (c, bytes) in rep.configs.iter().zip(&files_before) {
        let now = std::fs::read(dir.join(format!("{}.int8.onnx", c.float_id))).expect("file");
        assert_eq!(&now, bytes, "{} was replaced by a refused run", c.id);
    }
    assert_eq!(
        std::fs::read(dir.join("manifest.yaml")).expect("manifest"),
        manifest_before
    );
    let floats_before: Vec<_> = m.graphs.iter().filter(|g| !g.is_int8()).cloned().collect();

    let copts = CalibrateOptions {
        int8_only: true,
        ..options(&dir)
    };
    let (model, _) = TchModel::load(&f.checkpoint, Device::Cpu).expect("load");
    let cal = oats_calibrate::calibrate(&model, &f.checkpoint, &f.sha, &copts).expect("calibrate");
    assert_eq!(cal.graphs.len(), 2, "only the int8 graphs");
    let m = Manifest::load(dir.join("manifest.yaml")).expect("manifest");
    let floats_after: Vec<_> = m.graphs.iter().filter(|g| !g.is_int8()).cloned().collect();
    assert_eq!(floats_after, floats_before, "float metrics untouched");
    for r in &cal.graphs {
        let info = r.int8.as_ref().expect("int8 record");
        assert!(info.float_id.starts_with('l'), "{info:?}");
        let mt = &m.graphs[m.graph_index(&r.id).expect("listed")].metrics;
        let worst = mt.ra_worst.expect("worst");
        let keys: Vec<&str> = mt.ra.keys().map(String::as_str).collect();
        assert_eq!(keys, ["apgd-ce10", "pgd5", "transfer"], "{}", r.id);
        for (k, &ra) in &mt.ra {
            assert!(worst <= ra + 1e-12, "{}: worst {worst} > {k} {ra}", r.id);
        }
        assert!(worst <= mt.sa.expect("sa"));
        for b in backends() {
            assert!(r.runtime_ra[b.name()] >= worst - 1e-12, "{}", r.id);
            assert!(mt.latency_ms.contains_key(&format!("{}/b1", b.name())));
        }
    }
    let s = cal.sanity.int8_eps_sweep.as_ref().expect("int8 ε sweep");
    assert_eq!(s.graph, "l1-w1-int8");
    assert!(s.points.len() >= 4);
}
