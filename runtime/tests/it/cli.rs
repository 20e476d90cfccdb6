//! The two binaries, end to end on a fixture export.
#![cfg(feature = "cli")]

use crate::common;

use std::process::{Command, Output};

use common::*;
use oats_runtime::Manifest;

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e}"))
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn oats_run_prints_top_k_and_the_graph() {
    let dir = tempdir();
    write_folded_export(dir.path());
    let img = image::GrayImage::from_fn(10, 8, |x, y| image::Luma([(x * 20 + y * 5) as u8]));
    let path = dir.path().join("digit.png");
    img.save(&path).unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path().to_string_lossy().into_owned();
    let p = path.to_string_lossy().into_owned();

    let o = run(
        env!("CARGO_BIN_EXE_oats-run"),
        &[
            &d, &p, &p, "--lambda", "0.5", "--width", "1", "--top-k", "2",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("graph l0.5-w1"), "{out}");
    assert_eq!(out.matches("digit.png").count(), 2, "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_end().ends_with("cat")
                || l.trim_end().ends_with("dog")
                || l.trim_end().ends_with("bird"))
            .count(),
        4,
        "{out}"
    );

    let o = run(
        env!("CARGO_BIN_EXE_oats-run"),
        &[&d, &p, "--max-latency-ms", "2.5"],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("graph l1-w0.5"), "{out}");

    let o = run(
        env!("CARGO_BIN_EXE_oats-run"),
        &[&d, &p, "--max-latency-ms", "2.5", "--min-ra", "0.9"],
    );
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("best RA among graphs with latency"), "{err}");

    let o = run(env!("CARGO_BIN_EXE_oats-run"), &["--help"]);
    assert!(o.status.success());
    assert!(text(&o).0.contains("--max-latency-ms"));
}

#[test]
fn oats_bench_reports_and_writes_latencies() {
    let dir = tempdir();
    let mut m = write_shared_export(dir.path());
    for g in &mut m.graphs {
        g.metrics.latency_ms.clear();
    }
    save(dir.path(), &m);
    let before = std::fs::read(dir.path().join(file_of(&m.graphs[0]))).unwrap_or_default();
    let d = dir.path().to_string_lossy().into_owned();
    let out_file = dir.path().join("report.yaml");
    let o = run(
        env!("CARGO_BIN_EXE_oats-bench"),
        &[
            &d,
            "--batch",
            "1,4",
            "--iters",
            "5",
            "--warmup",
            "1",
            "--switch-iters",
            "100",
            "--write-manifest",
            "--out",
            &out_file.to_string_lossy(),
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("p50 ms") && out.contains("switch cost"),
        "{out}"
    );

    let report = std::fs::read_to_string(&out_file).unwrap_or_default();
    assert!(
        report.contains("p99_ms") && report.contains("median_ns"),
        "{report}"
    );

    let after = Manifest::load(dir.path().join("manifest.yaml")).unwrap_or_else(|e| panic!("{e}"));
    for g in &after.graphs {
        assert!(g.metrics.latency_ms.contains_key("tract/b1"), "{}", g.id);
        assert!(g.metrics.latency_ms.contains_key("tract/b4"), "{}", g.id);
    }
    // Graph files (and so their sha256) are untouched.
    assert_eq!(
        std::fs::read(dir.path().join(file_of(&m.graphs[0]))).unwrap_or_default(),
        before
    );
    assert_eq!(after.graphs[0].sha256, m.graphs[0].sha256);
}

#[cfg(feature = "ort")]
#[test]
fn oats_run_with_missing_ort_library_is_a_clear_error() {
    let dir = tempdir();
    write_folded_export(dir.path());
    let img = image::GrayImage::new(8, 8);
    let path = dir.path().join("x.png");
    img.save(&path).unwrap_or_else(|e| panic!("{e}"));
    let o = Command::new(env!("CARGO_BIN_EXE_oats-run"))
        .arg(dir.path())
        .arg(&path)
        .args(["--backend", "ort"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("backend ort is unavailable")
            && err.contains("/nonexistent/libonnxruntime.so"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let o = Command::new(env!("CARGO_BIN_EXE_oats-run"))
        .arg(dir.path())
        .arg(&path)
        .args(["--backend", "ort"])
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("ORT_DYLIB_PATH is not set"), "{err}");
}
