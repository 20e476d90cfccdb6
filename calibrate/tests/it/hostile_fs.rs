//! What oats-calibrate and oats-compare may replace, and how calibration's results merge with
//! oats-bench's in one manifest (issue 12, classes 1 and 2).
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};

use oats_calibrate::{plot, report, CalibrationReport, GraphCalibration, Sanity};
use oats_runtime::manifest::{latency_key, ManifestLock, MANIFEST_FILE};
use oats_runtime::{
    GraphEntry, InputSpec, LatencyStat, Layout, Manifest, Metrics, OperatingPoint, OutputSpec,
    RuntimeError, TrainingSummary, SCHEMA_VERSION,
};

fn stat(ms: f64) -> LatencyStat {
    LatencyStat {
        p50: ms,
        p90: ms,
        p99: ms,
    }
}

/// A two-graph manifest (the files are not needed: only the manifest is rewritten).
fn manifest() -> Manifest {
    let graph = |id: &str, lambda: f64| GraphEntry {
        id: id.into(),
        lambda,
        width: 1.0,
        file: Some(format!("{id}.onnx")),
        sha256: Some("ab".repeat(32)),
        lambda_index: None,
        params: 10,
        macs: 100,
        opset: 13,
        precision: oats_runtime::Precision::Float32,
        quantization: None,
        metrics: Metrics::default(),
        exits: None,
    };
    Manifest {
        schema_version: SCHEMA_VERSION,
        model_id: "oat-small-fashion-mnist-000000000000".into(),
        source_checkpoint_sha256: "cd".repeat(32),
        training: TrainingSummary {
            mode: "oat".into(),
            arch: "small".into(),
            dataset: "fashion-mnist".into(),
            epsilon: 0.1,
            attack: "pgd".into(),
            lambdas: vec![0.0, 1.0],
            widths: vec![1.0],
            epochs: 1,
        },
        input: InputSpec {
            name: "image".into(),
            shape: [1, 28, 28],
            value_range: [0.0, 1.0],
        },
        output: OutputSpec {
            name: "logits".into(),
            classes: 10,
        },
        class_names: (0..10).map(|i| i.to_string()).collect(),
        layout: Layout::Folded,
        graphs: vec![graph("l0-w1", 0.0), graph("l1-w1", 1.0)],
        reference: None,
        package: None,
    }
}

/// A calibration of both graphs that measured latency at "tract/b1".
fn calibration(m: &Manifest) -> CalibrationReport {
    let graphs = m
        .graphs
        .iter()
        .map(|g| GraphCalibration {
            id: g.id.clone(),
            point: OperatingPoint {
                lambda: g.lambda,
                width: g.width,
                sa: 0.8125, // 52 of 64: the manifest checks accuracies are whole counts
                ra: BTreeMap::from([("pgd5".to_string(), 0.40625)]),
                ra_worst: Some(0.40625),
                samples: 64,
                split: "val".into(),
                epsilon: 0.1,
            },
            macs: g.macs,
            params: g.params,
            runtime_sa: BTreeMap::new(),
            runtime_ra: BTreeMap::new(),
            replay: BTreeMap::new(),
            latency_ms: BTreeMap::from([(latency_key("tract", 1), stat(2.0))]),
            int8: None,
            exits: None,
        })
        .collect();
    CalibrationReport {
        format: report::FORMAT.into(),
        model_id: m.model_id.clone(),
        mode: "oat".into(),
        dataset: "fashion-mnist".into(),
        checkpoint_sha256: m.source_checkpoint_sha256.clone(),
        split: "val".into(),
        samples: 64,
        eps: 0.1,
        pgd_step: 0.025,
        attacks: vec!["pgd5".into()],
        attacks_pretty: "PGD-5".into(),
        seed: 0,
        device: "test".into(),
        backends: vec!["tract".into()],
        graphs,
        sanity: Sanity::default(),
        warnings: vec![],
    }
}

/// What `oats_calibrate::calibrate` does at its end: under the lock, re-read, check the
/// graphs, merge, save.
fn store_calibration(dir: &Path, measured: &Manifest, r: &CalibrationReport) {
    let lock = ManifestLock::acquire(dir).expect("lock");
    let mut m = lock.load().expect("load");
    m.ensure_same_graphs(measured, &dir.join(MANIFEST_FILE))
        .expect("same export");
    r.apply_to(&mut m).expect("apply");
    lock.save(&m).expect("save");
}

/// What `oats-bench --write-manifest` does: a locked update of its latency keys.
fn store_bench(dir: &Path, key: &str, ms: f64) {
    Manifest::update(dir, |m| {
        for g in &mut m.graphs {
            g.metrics.latency_ms.insert(key.into(), stat(ms));
        }
        Ok::<_, RuntimeError>(())
    })
    .expect("bench update");
}

#[test]
fn c2_atomic_calibration_and_bench_results_both_survive_in_either_order() {
    for bench_first in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = manifest();
        m.save(dir.path().join(MANIFEST_FILE)).expect("save");
        let r = calibration(&m);
        if bench_first {
            store_bench(dir.path(), "ort/b8", 5.0);
            store_calibration(dir.path(), &m, &r);
        } else {
            store_calibration(dir.path(), &m, &r);
            store_bench(dir.path(), "ort/b8", 5.0);
        }
        let after = Manifest::load(dir.path().join(MANIFEST_FILE)).expect("load");
        for g in &after.graphs {
            assert_eq!(g.metrics.sa, Some(0.8125), "bench first: {bench_first}");
            assert_eq!(g.metrics.ra_worst, Some(0.40625));
            assert!(g.metrics.latency_ms.contains_key("tract/b1"));
            assert!(
                g.metrics.latency_ms.contains_key("ort/b8"),
                "bench's latency lost (bench first: {bench_first})"
            );
        }
    }
}

/// Calibration and bench storing at the same time, many times over.
#[test]
fn c2_atomic_concurrent_calibration_and_bench_stores_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = manifest();
    m.save(dir.path().join(MANIFEST_FILE)).expect("save");
    let r = calibration(&m);
    let rounds = 20;
    let start = Arc::new(Barrier::new(2));
    let cal = {
        let (dir, start, m) = (dir.path().to_path_buf(), start.clone(), m.clone());
        std::thread::spawn(move || {
            start.wait();
            for _ in 0..rounds {
                store_calibration(&dir, &m, &r);
            }
        })
    };
    let bench = {
        let (dir, start) = (dir.path().to_path_buf(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            for i in 0..rounds {
                store_bench(&dir, &format!("ort/b{}", i + 2), i as f64);
            }
        })
    };
    cal.join().expect("calibrate");
    bench.join().expect("bench");
    let after = Manifest::load(dir.path().join(MANIFEST_FILE)).expect("load");
    for g in &after.graphs {
        assert_eq!(g.metrics.sa, Some(0.8125));
        for i in 0..rounds {
            assert!(
                g.metrics
                    .latency_ms
                    .contains_key(&format!("ort/b{}", i + 2)),
                "{}: ort/b{} lost",
                g.id,
                i + 2
            );
        }
    }
}

#[test]
fn c2_atomic_calibration_of_a_re_exported_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let measured = manifest();
    let mut now = measured.clone();
    now.graphs[0].sha256 = Some("ef".repeat(32));
    now.save(dir.path().join(MANIFEST_FILE)).expect("save");
    let before = std::fs::read(dir.path().join(MANIFEST_FILE)).expect("read");
    let lock = ManifestLock::acquire(dir.path()).expect("lock");
    let current = lock.load().expect("load");
    let err = current
        .ensure_same_graphs(&measured, &dir.path().join(MANIFEST_FILE))
        .expect_err("changed");
    assert!(err.to_string().contains("l0-w1"), "{err}");
    drop(lock);
    assert_eq!(
        std::fs::read(dir.path().join(MANIFEST_FILE)).expect("read"),
        before
    );
}

/// The export may replace a calibrated export only because it knows every file calibration
/// writes beside the manifest.
#[test]
fn c1_no_destroy_the_exporter_knows_every_file_calibration_writes() {
    for f in [report::REPORT_FILE, plot::PNG_FILE, plot::SVG_FILE] {
        assert!(
            oats_export::out_dir::WRITTEN_BESIDE.contains(&f),
            "{f} is missing from oats_export::out_dir::WRITTEN_BESIDE"
        );
    }
}

fn compare(out: &Path) -> std::process::Output {
    // The runs do not exist: a refused --out must be reported before they are read.
    Command::new(env!("CARGO_BIN_EXE_oats-compare"))
        .arg("/nonexistent/run")
        .arg("--out")
        .arg(out)
        .output()
        .expect("run oats-compare")
}

#[test]
fn c1_no_destroy_compare_out_refuses_a_users_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // --out README would write README.md.
    std::fs::write(tmp.path().join("README.md"), "# my project").expect("write");
    let o = compare(&tmp.path().join("README"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("README.md") && err.contains("not a table written by oats-compare"),
        "{err}"
    );
    assert!(
        !err.contains("panicked at") && !err.contains("my project"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("README.md")).expect("kept"),
        "# my project"
    );
    // A plot of that name without the tool's table beside it is the user's.
    std::fs::write(tmp.path().join("logo.png"), "png").expect("write");
    let o = compare(&tmp.path().join("logo"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("logo.png"), "{err}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("logo.png")).expect("kept"),
        "png"
    );
    // Beside a table the tool wrote, the refusal is over and the runs are read (and missing).
    std::fs::write(
        tmp.path().join("logo.md"),
        format!("{}\n## old", oats_calibrate::compare::TABLE_MARKER),
    )
    .expect("write");
    let o = compare(&tmp.path().join("logo"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/run"), "{err}");
}
