//! Derived configurations against the graphs the exporter would write, with no libtorch: a
//! package of random weights (oats-graph's own test fixtures), an export directory made of
//! it the way `oats-export` makes one (folded graphs at every trained (λ, width), the package,
//! a manifest of schema v2), and a reference bundle holding logits at unseen λ computed
//! through another lowering (the shared-weights graph: plain convolutions and per-channel
//! Mul/Add tables, nothing folded). The trainer's own logits at unseen λ are checked by
//! export/tests/it/package.rs, which has libtorch, through the same runtime code.
//!
//! Hostile-input cases keep their class prefixes (c5_, c6_).

use crate::common;
use crate::pkgfix;

use std::collections::HashMap;
use std::path::Path;

use common::{save, tempdir, tool_missing, write};
use oats_graph::{config_id, Package};
use oats_runtime::manifest::sha256_hex;
use oats_runtime::reference::check_reference;
use oats_runtime::{
    Backend, Batch, GraphEntry, InputSpec, Layout, Manifest, Metrics, OatsModel, Options,
    OutputSpec, PackageEntry, ReferenceBundle, RuntimeError, Selector, TrainingSummary,
};
use safetensors::tensor::{Dtype, TensorView};

/// λ the package was not trained at (pkgfix trains 0, 0.5, 1).
const UNSEEN: [f64; 2] = [0.15, 0.7];
/// Derived against the exporter's folded graph: the same arithmetic, the same bytes.
const TRAINED_TOLERANCE: f32 = 1e-5;
/// Derived against another lowering of the same λ (the bound for the trainer's).
const UNSEEN_TOLERANCE: f32 = 1e-4;
const N: usize = 4;

fn images() -> Vec<f32> {
    pkgfix::images(N, 11)
}

/// Writes `pkg` as an export into `dir`: folded graphs for every trained (λ, width), the
/// package, and a reference bundle with logits at the [`UNSEEN`] λ (shared-weights lowering).
fn write_export(dir: &Path, pkg: &Package) -> Manifest {
    let x = images();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
        vec![("input".into(), vec![N, 1, 8, 8], x.clone())];
    let mut graphs = Vec::new();
    for &w in pkg.widths() {
        for &l in pkg.lambdas() {
            let id = config_id(l, w);
            let mut g = pkg.lower_folded(l, w).expect("lower");
            g.name = id.clone();
            let bytes = oats_graph::to_onnx(&g);
            let file = format!("{id}.onnx");
            write(dir, &file, &bytes);
            // As the exporter's bundle: logits for every graph file too.
            tensors.push((
                format!("logits.{id}"),
                vec![N, 3],
                pkgfix::run(&g, &x, N, None),
            ));
            graphs.push(GraphEntry {
                id,
                lambda: l,
                width: w,
                file: Some(file),
                sha256: Some(sha256_hex(&bytes)),
                lambda_index: None,
                params: g.params(),
                macs: g.macs,
                opset: oats_graph::onnx::OPSET,
                precision: oats_runtime::Precision::Float32,
                quantization: None,
                metrics: Metrics::default(),
                exits: None,
            });
        }
    }
    let pkg_bytes = pkg.to_bytes().expect("package bytes");
    write(dir, oats_graph::package::FILE_NAME, &pkg_bytes);

    for &w in pkg.widths() {
        let shared = pkg
            .lower(&UNSEEN, w, oats_graph::Layout::SharedWeights)
            .expect("shared");
        for (k, &l) in UNSEEN.iter().enumerate() {
            let logits = pkgfix::run(&shared, &x, N, Some(k as i64));
            tensors.push((format!("logits.{}", config_id(l, w)), vec![N, 3], logits));
        }
    }
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, pkgfix::bytes(&v)))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("view"),
            )
        })
        .collect();
    let bundle = safetensors::serialize(views, None::<HashMap<String, String>>).expect("bundle");
    write(dir, "reference.safetensors", &bundle);

    let m = Manifest {
        schema_version: oats_runtime::SCHEMA_VERSION,
        model_id: "derive-test".into(),
        source_checkpoint_sha256: "ab".repeat(32),
        training: TrainingSummary {
            mode: "oats".into(),
            arch: "test".into(),
            dataset: "synthetic".into(),
            epsilon: 0.1,
            attack: "pgd".into(),
            lambdas: pkg.lambdas().to_vec(),
            widths: pkg.widths().to_vec(),
            epochs: 1,
        },
        input: InputSpec {
            name: oats_graph::INPUT.into(),
            shape: pkg.input_shape(),
            value_range: [0.0, 1.0],
        },
        output: OutputSpec {
            name: oats_graph::OUTPUT.into(),
            classes: pkg.classes(),
        },
        class_names: vec![],
        layout: Layout::Folded,
        graphs,
        reference: Some(ReferenceBundle {
            file: "reference.safetensors".into(),
            sha256: sha256_hex(&bundle),
        }),
        package: Some(PackageEntry {
            file: oats_graph::package::FILE_NAME.into(),
            sha256: sha256_hex(&pkg_bytes),
            format: oats_graph::package::FORMAT.into(),
            lambdas: pkg.lambdas().to_vec(),
            widths: pkg.widths().to_vec(),
        }),
    };
    save(dir, &m);
    m
}

fn open(dir: &Path, backend: Backend, cache_bytes: Option<u64>) -> OatsModel {
    OatsModel::open(
        dir,
        &Options {
            backend,
            threads: Some(1),
            preload: false,
            cache_bytes,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("{backend}: {e}"))
}

/// The backends to check: tract always, ONNX Runtime when its library is there (under
/// OATS_REQUIRE_TOOLS=1 a missing one fails).
fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Tract];
    if cfg!(feature = "ort") {
        match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) if !p.is_empty() => v.push(Backend::Ort),
            _ => tool_missing("ONNX Runtime: ORT_DYLIB_PATH is not set"),
        }
    } else {
        // A build choice, not a missing tool: CI also tests the runtime with its default
        // features (no `ort`), where only tract can run.
        eprintln!("note: built without the `ort` feature: ONNX Runtime is not checked here");
    }
    v
}

fn batch() -> Batch {
    Batch::new([N, 1, 8, 8], images()).expect("batch")
}

fn diff(a: &[f32], b: &[f32]) -> f32 {
    oats_runtime::reference::max_abs_diff(a, b)
}

#[test]
fn derived_equals_the_folded_graph_at_every_trained_config() {
    for (name, pkg) in [("resnet", pkgfix::resnet(3)), ("wide", pkgfix::wide(4))] {
        let dir = tempdir();
        let m = write_export(dir.path(), &pkg);
        for backend in backends() {
            let model = open(dir.path(), backend, None);
            for g in &m.graphs {
                let folded = model
                    .infer_selected(&Selector::Id(g.id.clone()), &batch())
                    .unwrap_or_else(|e| panic!("{e}"));
                let derived = model
                    .infer_selected(
                        &Selector::Derived {
                            lambda: g.lambda,
                            width: g.width,
                        },
                        &batch(),
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(!folded.config.derived && derived.config.derived);
                assert_eq!(derived.config.id, g.id);
                assert_eq!(derived.config.macs, g.macs);
                assert_eq!(derived.config.metrics.as_ref(), Some(&g.metrics));
                let d = diff(&derived.logits, &folded.logits);
                assert!(d <= TRAINED_TOLERANCE, "{name} {backend} {}: {d:.2e}", g.id);
            }
        }
    }
}

#[test]
fn unseen_lambda_is_served_and_matches_the_reference_on_every_backend() {
    let pkg = pkgfix::resnet(5);
    let dir = tempdir();
    write_export(dir.path(), &pkg);
    let mut per_backend = Vec::new();
    for backend in backends() {
        let model = open(dir.path(), backend, None);
        // Explicit: no graph file at λ = 0.15, so it is derived.
        let info = model
            .select(&Selector::Explicit {
                lambda: 0.15,
                width: 0.5,
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(info.derived);
        assert_eq!(
            (info.id.as_str(), info.lambda, info.width),
            ("l0.15-w0.5", 0.15, 0.5)
        );
        assert_eq!(info.metrics, None, "λ 0.15 was never calibrated");
        let p = model.infer(&batch()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.config.id, "l0.15-w0.5");
        per_backend.push(p.logits);

        let checks = check_reference(&model)
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("bundle");
        for &w in pkg.widths() {
            for l in UNSEEN {
                let id = config_id(l, w);
                let c = checks
                    .iter()
                    .find(|c| c.graph_id == id)
                    .unwrap_or_else(|| panic!("{backend}: no check of derived {id}"));
                let d = c.max_abs_diff.expect("compared");
                assert!(d <= UNSEEN_TOLERANCE, "{backend} {id}: {d:.2e}");
            }
        }
    }
    // tract and ONNX Runtime ran the same derived bytes.
    if let [a, b] = &per_backend[..] {
        assert!(diff(a, b) <= UNSEEN_TOLERANCE);
    }
}

#[test]
fn cached_derived_configs_are_evicted_lru_without_disturbing_the_active_one() {
    let pkg = pkgfix::resnet(6);
    let dir = tempdir();
    write_export(dir.path(), &pkg);
    // Size of one session at width 1, to set a budget of exactly one.
    let probe = open(dir.path(), Backend::Tract, None);
    probe
        .select(&Selector::Derived {
            lambda: 0.15,
            width: 1.0,
        })
        .expect("derive");
    let one = probe.derived_report()[0].bytes;
    assert!(one > 0);

    let model = open(dir.path(), Backend::Tract, Some(one));
    let a = model
        .select(&Selector::Explicit {
            lambda: 0.15,
            width: 1.0,
        })
        .expect("a");
    let before = model.infer(&batch()).expect("infer a");
    // Deriving another evicts λ 0.15 from the cache; the active configuration holds it.
    let other = model
        .infer_selected(
            &Selector::Derived {
                lambda: 0.7,
                width: 1.0,
            },
            &batch(),
        )
        .expect("b");
    let report = model.derived_report();
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0].id, "l0.7-w1");
    let after = model.infer(&batch()).expect("infer a after eviction");
    assert_eq!(after.config, a);
    assert_eq!(after.logits, before.logits);
    assert_ne!(after.logits, other.logits);
    // Selecting it again derives it anew, with the same answer.
    model
        .select(&Selector::Derived {
            lambda: 0.15,
            width: 1.0,
        })
        .expect("again");
    assert_eq!(model.infer(&batch()).expect("infer").logits, before.logits);

    // A budget below one session refuses it and loads nothing.
    let tight = open(dir.path(), Backend::Tract, Some(one - 1));
    let e = tight.select(&Selector::Derived {
        lambda: 0.15,
        width: 1.0,
    });
    assert!(matches!(e, Err(RuntimeError::OverBudget { .. })), "{e:?}");
    assert!(tight.derived_report().is_empty());
}

#[test]
fn preloaded_derived_configs_are_cached_at_open() {
    let pkg = pkgfix::resnet(7);
    let dir = tempdir();
    write_export(dir.path(), &pkg);
    let model = OatsModel::open(
        dir.path(),
        &Options {
            preload_derived: vec![(0.15, 0.5), (0.7, 1.0)],
            ..Options::default()
        },
    )
    .expect("open");
    let ids: Vec<String> = model.derived_report().into_iter().map(|d| d.id).collect();
    assert_eq!(ids, ["l0.15-w0.5", "l0.7-w1"]);
}

#[test]
fn a_v1_manifest_still_reads_and_derives_nothing() {
    let dir = tempdir();
    let mut m = common::write_folded_export(dir.path());
    m.schema_version = 1;
    save(dir.path(), &m);
    let text = std::fs::read_to_string(dir.path().join("manifest.yaml")).expect("read");
    assert!(
        text.contains("schema_version: 1"),
        "a v1 manifest is saved as v1"
    );
    let model = OatsModel::open(dir.path(), &Options::default()).expect("v1 opens");
    assert!(!model.can_derive());
    let e = model.select(&Selector::Derived {
        lambda: 0.5,
        width: 1.0,
    });
    assert!(
        matches!(e, Err(RuntimeError::InvalidArgument { .. })),
        "{e:?}"
    );
}

/// Every bad request is a typed error, and nothing is read or loaded for it.
#[test]
fn c5_no_silent_bad_derive_requests_are_refused_before_loading() {
    let pkg = pkgfix::resnet(8);
    let dir = tempdir();
    write_export(dir.path(), &pkg);
    let model = open(dir.path(), Backend::Tract, None);
    // The package is gone after open: a request refused before reading cannot notice.
    let pkg_path = dir.path().join(oats_graph::package::FILE_NAME);
    std::fs::remove_file(&pkg_path).expect("rm");
    for (lambda, width, what) in [
        (f64::NAN, 1.0, "lambda"),
        (-0.1, 1.0, "lambda"),
        (1.5, 1.0, "lambda"),
        (0.3, 0.75, "width"),
        (0.3, f64::INFINITY, "width"),
    ] {
        for sel in [
            Selector::Derived { lambda, width },
            Selector::Explicit { lambda, width },
        ] {
            match model.select(&sel) {
                Err(RuntimeError::InvalidArgument { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{sel:?}: {other:?}"),
            }
        }
    }
    assert!(model.derived_report().is_empty());
    assert_eq!(
        model.active().id,
        "l0-w0.5",
        "the active configuration is unchanged"
    );
    // A valid request now reads the missing package: an error naming it.
    let e = model
        .select(&Selector::Derived {
            lambda: 0.3,
            width: 1.0,
        })
        .expect_err("missing package");
    assert!(e.to_string().contains("package.safetensors"), "{e}");
    // At open, a listed package that is missing is an incomplete export.
    let e = OatsModel::open(dir.path(), &Options::default()).err();
    let msg = e.map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("package.safetensors"), "{msg}");
}

#[test]
fn c6_integrity_an_altered_package_is_refused_and_loads_nothing() {
    let pkg = pkgfix::resnet(9);
    let dir = tempdir();
    write_export(dir.path(), &pkg);
    let path = dir.path().join(oats_graph::package::FILE_NAME);
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write");
    let model = open(dir.path(), Backend::Tract, None);
    let e = model.select(&Selector::Derived {
        lambda: 0.3,
        width: 1.0,
    });
    assert!(matches!(e, Err(RuntimeError::ShaMismatch { .. })), "{e:?}");
    assert!(model.derived_report().is_empty());
}

#[test]
fn c6_integrity_a_package_that_disagrees_with_the_manifest_is_refused() {
    let dir = tempdir();
    let mut m = write_export(dir.path(), &pkgfix::resnet(10));
    // Another model's package, listed with its true sha256: one λ where the manifest says 3.
    let other = pkgfix::unconditioned(10).to_bytes().expect("bytes");
    write(dir.path(), "other.safetensors", &other);
    if let Some(p) = m.package.as_mut() {
        p.file = "other.safetensors".into();
        p.sha256 = sha256_hex(&other);
    }
    save(dir.path(), &m);
    let model = open(dir.path(), Backend::Tract, None);
    let e = model.select(&Selector::Derived {
        lambda: 0.3,
        width: 1.0,
    });
    assert!(
        matches!(e, Err(RuntimeError::PackageMismatch { .. })),
        "{e:?}"
    );
    assert!(model.derived_report().is_empty());
}

#[test]
fn c6_integrity_manifest_package_entries_are_validated() {
    let dir = tempdir();
    let m = write_export(dir.path(), &pkgfix::resnet(12));
    let path = dir.path().join("manifest.yaml");
    type Edit = Box<dyn Fn(&mut Manifest)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("v1 with a package", Box::new(|m| m.schema_version = 1)),
        (
            "escaping file",
            Box::new(|m| m.package.as_mut().expect("p").file = "../p.safetensors".into()),
        ),
        (
            "bad sha",
            Box::new(|m| m.package.as_mut().expect("p").sha256 = "x".into()),
        ),
        (
            "other format",
            Box::new(|m| m.package.as_mut().expect("p").format = "oats-package/9".into()),
        ),
        (
            "λ not trained",
            Box::new(|m| m.package.as_mut().expect("p").lambdas = vec![0.0, 1.0]),
        ),
        (
            "widths not trained",
            Box::new(|m| m.package.as_mut().expect("p").widths = vec![1.0]),
        ),
    ];
    for (name, edit) in cases {
        let mut bad = m.clone();
        edit(&mut bad);
        let text = serde_yaml::to_string(&bad).expect("yaml");
        assert!(
            Manifest::from_yaml_str(&text, &path).is_err(),
            "{name} was accepted"
        );
    }
}

#[cfg(feature = "cli")]
#[test]
fn oats_run_lambda_serves_a_derived_configuration() {
    let dir = tempdir();
    write_export(dir.path(), &pkgfix::resnet(13));
    let img = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 20 + y * 5) as u8]));
    let path = dir.path().join("digit.png");
    img.save(&path).expect("png");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oats-run"))
        .arg(dir.path())
        .arg(&path)
        .args(["--lambda", "0.15"])
        .output()
        .expect("oats-run");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("derived from the package: l0.15-w1 (lambda 0.15, width 1,"),
        "{stdout}"
    );
    // Outside the trained range: a clear error, no panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oats-run"))
        .arg(dir.path())
        .arg(&path)
        .args(["--lambda", "1.5"])
        .output()
        .expect("oats-run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("1.5") && !stderr.contains("panicked at"),
        "{stderr}"
    );
}

#[cfg(feature = "cli")]
#[test]
fn oats_bench_prints_the_derived_ratio_derive_time_and_switch() {
    let dir = tempdir();
    write_export(dir.path(), &pkgfix::resnet(14));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oats-bench"))
        .arg(dir.path())
        .args(["--batch", "1,4", "--iters", "3", "--warmup", "1"])
        .args(["--switch-iters", "20", "--derive-lambda", "0.25"])
        .output()
        .expect("oats-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "derived from the package against the folded graph file",
        "l0-w0.5          batch   1",
        "l1-w1            batch   4",
        "ratio",
        "derive l0.25-w1 (tract):",
        "cached switch l0.25-w1 <-> l0-w0.5 (20 selects)",
        "l0.7-w1 (derived)",
    ] {
        assert!(stdout.contains(want), "{want:?} missing:\n{stdout}");
    }
}

/// Inferences running on another thread while the cache evicts the configuration they use
/// keep computing that configuration's logits.
#[test]
fn eviction_never_disturbs_inferences_in_flight() {
    let pkg = pkgfix::resnet(15);
    let dir = tempdir();
    write_export(dir.path(), &pkg);
    let probe = open(dir.path(), Backend::Tract, None);
    let info = probe
        .select(&Selector::Derived {
            lambda: 0.15,
            width: 1.0,
        })
        .expect("derive");
    let one = probe.derived_report()[0].bytes;
    let want = probe.infer(&batch()).expect("infer").logits;
    drop(probe);

    let model = std::sync::Arc::new(open(dir.path(), Backend::Tract, Some(one)));
    model
        .select(&Selector::Derived {
            lambda: 0.15,
            width: 1.0,
        })
        .expect("a");
    let worker = {
        let model = model.clone();
        std::thread::spawn(move || {
            (0..200)
                .map(|_| model.infer(&batch()).expect("infer"))
                .collect::<Vec<_>>()
        })
    };
    // Each of these evicts the one before (a budget of one session).
    for l in [0.2, 0.3, 0.35, 0.6, 0.8] {
        model
            .infer_selected(
                &Selector::Derived {
                    lambda: l,
                    width: 1.0,
                },
                &batch(),
            )
            .expect("derive other");
    }
    for p in worker.join().expect("worker") {
        assert_eq!(p.config.id, info.id);
        assert_eq!(p.logits, want);
    }
    assert_eq!(model.derived_report().len(), 1);
}

/// `export` rewritten as a package-only export: the graph files deleted, every entry without
/// a file (what `oats-export --package-only` writes), plus one derived entry at an unseen λ
/// with calibrated metrics (what `oats-calibrate --lambdas` adds).
fn package_only(dir: &Path, mut m: Manifest) -> Manifest {
    for g in &mut m.graphs {
        if let Some(f) = g.file.take() {
            std::fs::remove_file(dir.join(f)).expect("remove graph file");
        }
        g.sha256 = None;
    }
    let w = m.training.widths.iter().copied().fold(0.0, f64::max);
    let mut extra = GraphEntry::derived(config_id(0.15, w), 0.15, w, 0, 0);
    let first = m
        .graphs
        .iter()
        .find(|g| (g.width - w).abs() < 1e-9)
        .expect("a graph at the widest width");
    (extra.params, extra.macs) = (first.params, first.macs);
    extra.metrics.sa = Some(0.75);
    extra.metrics.ra_worst = Some(0.5);
    extra.metrics.samples = Some(4);
    m.graphs.push(extra);
    save(dir, &m);
    m
}

#[test]
fn a_package_only_export_serves_every_listed_configuration_by_deriving_it() {
    let dir = tempdir();
    let pkg = pkgfix::resnet(21);
    let with_files = write_export(dir.path(), &pkg);
    // The folded graphs' logits, before their files go.
    let folded: Vec<Vec<f32>> = {
        let model = open(dir.path(), Backend::Tract, None);
        with_files
            .graphs
            .iter()
            .map(|g| {
                model
                    .infer_selected(&Selector::Id(g.id.clone()), &batch())
                    .unwrap_or_else(|e| panic!("{e}"))
                    .logits
            })
            .collect()
    };
    let m = package_only(dir.path(), with_files.clone());
    for backend in backends() {
        // Opening derives the first configuration only (preload loads files, and there are
        // none).
        let model = open(dir.path(), backend, None);
        assert_eq!(model.derived_report().len(), 1, "{backend}");
        for (g, want) in m.graphs.iter().zip(&folded) {
            let p = model
                .infer_selected(&Selector::Id(g.id.clone()), &batch())
                .unwrap_or_else(|e| panic!("{backend} {}: {e}", g.id));
            assert!(p.config.derived, "{}", g.id);
            assert_eq!(p.config.id, g.id);
            let d = diff(&p.logits, want);
            assert!(d <= TRAINED_TOLERANCE, "{backend} {}: {d:.2e}", g.id);
        }
        // The reference bundle checks out through the derived configurations.
        let checks = check_reference(&model)
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("a bundle");
        assert!(checks.iter().all(|c| c.passed()), "{backend}: {checks:?}");
        // A policy chooses among the listed configurations, the derived one included: the
        // only one with metrics.
        let chosen = model
            .select(&Selector::Policy(oats_runtime::Policy {
                min_ra: Some(0.4),
                ..Default::default()
            }))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(chosen.id, config_id(0.15, 1.0));
        assert!(chosen.derived);
        assert_eq!(chosen.metrics.as_ref().and_then(|x| x.ra_worst), Some(0.5));
        // A bare ONNX Runtime session of a derived entry runs the same bytes.
        #[cfg(feature = "ort")]
        if backend == Backend::Ort {
            let o = oats_runtime::bench::ort_overhead(&model, &m.graphs[0].id, 1, 3)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(o.bare_p50_ms > 0.0);
        }
    }
}

#[test]
fn c6_integrity_a_derived_entry_claiming_other_macs_is_refused() {
    let dir = tempdir();
    let mut m = package_only(dir.path(), write_export(dir.path(), &pkgfix::resnet(22)));
    // A policy reads MACs: a manifest that understates them must not steer it.
    let last = m.graphs.len() - 1;
    m.graphs[last].macs /= 2;
    save(dir.path(), &m);
    let model = open(dir.path(), Backend::Tract, None);
    match model.select(&Selector::Id(m.graphs[last].id.clone())) {
        Err(RuntimeError::GraphRefused { file, reason }) => {
            assert!(reason.contains("MACs"), "{reason}");
            assert!(file.to_string_lossy().contains("#l0.15-w1"), "{file:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[cfg(feature = "cli")]
#[test]
fn oats_bench_on_a_package_only_export_times_derived_configurations() {
    let dir = tempdir();
    package_only(dir.path(), write_export(dir.path(), &pkgfix::resnet(23)));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oats-bench"))
        .arg(dir.path())
        .args(["--iters", "3", "--warmup", "1", "--switch-iters", "10"])
        .output()
        .expect("oats-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No folded file to compare with: no ratio, but every configuration timed and checked.
    assert!(
        !stdout.contains("against the folded graph file"),
        "{stdout}"
    );
    for want in ["l0-w0.5", "l0.15-w1", "derive "] {
        assert!(stdout.contains(want), "{want:?} missing:\n{stdout}");
    }
}

#[test]
fn a_package_only_export_in_memory_derives_and_checks_its_reference() {
    let dir = tempdir();
    package_only(dir.path(), write_export(dir.path(), &pkgfix::resnet(24)));
    let files = common::export_files(dir.path());
    drop(dir);
    for backend in backends() {
        let model = OatsModel::open_from_memory(
            files.clone(),
            &Options {
                backend,
                threads: Some(1),
                ..Options::default()
            },
        )
        .unwrap_or_else(|e| panic!("{backend}: {e}"));
        let p = model
            .infer_selected(
                &Selector::Explicit {
                    lambda: 0.7,
                    width: 1.0,
                },
                &batch(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(p.config.derived);
        let checks = check_reference(&model)
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("a bundle");
        assert!(checks.iter().all(|c| c.passed()), "{backend}: {checks:?}");
    }
}
