//! Hostile file-system and concurrency cases of the runtime's writers (issue 12, classes 1
//! and 2): `manifest.yaml` rewritten by calibrate and bench at the same time, `oats-bench
//! --out` pointed at a user's file, an export re-made while it was being measured.

use crate::common;

use std::path::Path;
#[cfg(feature = "cli")]
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
#[cfg(feature = "cli")]
use std::time::{Duration, Instant};

use common::*;
use oats_runtime::manifest::MANIFEST_FILE;
#[cfg(feature = "cli")]
use oats_runtime::manifest::{ManifestLock, LOCK_FILE};
use oats_runtime::{LatencyStat, Manifest, RuntimeError};

/// Bound of every wait in this file: far above what the work takes (< 1 s each), far below
/// a hung test.
#[cfg(feature = "cli")]
const DEADLINE: Duration = Duration::from_secs(60);

fn stat(ms: f64) -> LatencyStat {
    LatencyStat {
        p50: ms,
        p90: ms,
        p99: ms,
    }
}

/// A folded export whose graphs carry no metrics yet, as oats-export leaves it.
fn fresh_export(dir: &Path) -> Manifest {
    let mut m = write_folded_export(dir);
    for g in &mut m.graphs {
        g.metrics = Default::default();
    }
    save(dir, &m);
    m
}

fn load(dir: &Path) -> Manifest {
    Manifest::load(dir.join(MANIFEST_FILE)).unwrap_or_else(|e| panic!("{e}"))
}

/// "calibrate" (accuracies and its latency keys) and "bench" (latency keys only) update one
/// manifest 25 times each, interleaved by the scheduler: every update of both survives.
#[test]
fn c2_atomic_concurrent_calibrate_and_bench_updates_lose_nothing() {
    let dir = tempdir();
    let m = fresh_export(dir.path());
    let rounds = 25;
    let start = Arc::new(Barrier::new(2));
    let writer = |who: &'static str| {
        let (dir, start) = (dir.path().to_path_buf(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            for i in 0..rounds {
                Manifest::update(&dir, |m| {
                    for g in &mut m.graphs {
                        if who == "calibrate" {
                            g.metrics.sa = Some(0.5);
                            g.metrics.ra_worst = Some(0.25);
                            // Accuracies must say what they were measured on.
                            g.metrics.samples = Some(64);
                        }
                        g.metrics
                            .latency_ms
                            .insert(format!("{who}/b{i}"), stat(i as f64 + 1.0));
                    }
                    Ok::<_, RuntimeError>(())
                })
                .unwrap_or_else(|e| panic!("{who}: {e}"));
            }
        })
    };
    let (a, b) = (writer("calibrate"), writer("bench"));
    a.join().expect("calibrate");
    b.join().expect("bench");
    let after = load(dir.path());
    assert_eq!(after.graphs.len(), m.graphs.len());
    for g in &after.graphs {
        assert_eq!(g.metrics.sa, Some(0.5), "{}", g.id);
        assert_eq!(g.metrics.ra_worst, Some(0.25), "{}", g.id);
        for who in ["calibrate", "bench"] {
            for i in 0..rounds {
                assert!(
                    g.metrics.latency_ms.contains_key(&format!("{who}/b{i}")),
                    "{}: {who}/b{i} lost",
                    g.id
                );
            }
        }
    }
}

#[test]
fn c2_atomic_a_failed_update_leaves_the_manifest_as_it_was() {
    let dir = tempdir();
    fresh_export(dir.path());
    let before = std::fs::read(dir.path().join(MANIFEST_FILE)).expect("read");
    let r = Manifest::update(dir.path(), |m| {
        m.graphs[0].metrics.sa = Some(0.9);
        Err::<(), _>(RuntimeError::ExportChanged {
            path: dir.path().into(),
            reason: "test".into(),
        })
    });
    assert!(r.is_err());
    assert_eq!(
        std::fs::read(dir.path().join(MANIFEST_FILE)).expect("read"),
        before
    );
    // An invalid change is refused by validation, and the file is kept too.
    let r = Manifest::update(dir.path(), |m| {
        m.graphs[0].metrics.sa = Some(7.0);
        Ok::<_, RuntimeError>(())
    });
    assert!(r.is_err(), "SA 7 is out of range");
    assert_eq!(
        std::fs::read(dir.path().join(MANIFEST_FILE)).expect("read"),
        before
    );
}

/// Measurements of an export that was exported anew meanwhile are refused, not attached to
/// the new graphs.
#[test]
fn c2_atomic_results_for_replaced_graphs_are_refused() {
    let dir = tempdir();
    let measured = fresh_export(dir.path());
    let mut now = measured.clone();
    now.graphs[1].sha256 = Some("cd".repeat(32));
    let err = now
        .ensure_same_graphs(&measured, &dir.path().join(MANIFEST_FILE))
        .expect_err("a changed graph");
    assert!(matches!(err, RuntimeError::ExportChanged { .. }), "{err}");
    assert!(err.to_string().contains(&measured.graphs[1].id), "{err}");
    let mut now = measured.clone();
    now.source_checkpoint_sha256 = "ef".repeat(32);
    assert!(now
        .ensure_same_graphs(&measured, &dir.path().join(MANIFEST_FILE))
        .is_err());
    measured
        .ensure_same_graphs(&measured, &dir.path().join(MANIFEST_FILE))
        .expect("the same export");
}

#[cfg(feature = "cli")]
fn bench(dir: &Path, batch: &str, out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_oats-bench"))
        .arg(dir)
        .args(["--backend", "tract", "--batch", batch])
        .args(["--iters", "2", "--warmup", "1", "--switch-iters", "10"])
        .arg("--write-manifest")
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oats-bench")
}

#[cfg(feature = "cli")]
/// Two `oats-bench --write-manifest` processes (batch 1 and batch 2) measure one export while
/// the test holds the export's lock; once both have measured (their --out reports exist, which
/// they write just before storing), the lock is released and both store. Both sets of
/// latencies must be in the manifest, whichever stored first.
#[test]
fn c2_atomic_two_bench_processes_store_into_one_manifest_without_loss() {
    let dir = tempdir();
    fresh_export(dir.path());
    let reports = tempdir();
    let (r1, r2) = (
        reports.path().join("b1.yaml"),
        reports.path().join("b2.yaml"),
    );
    let held = ManifestLock::acquire(dir.path()).expect("lock");
    let mut children = [bench(dir.path(), "1", &r1), bench(dir.path(), "2", &r2)];
    let start = Instant::now();
    // Polls a condition (both reports written, or a child gone) with a deadline.
    while !(r1.exists() && r2.exists())
        && children
            .iter_mut()
            .all(|c| c.try_wait().expect("wait").is_none())
        && start.elapsed() < DEADLINE
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(held);
    for c in children {
        let o = c.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "oats-bench failed: {err}");
        assert!(!err.contains("panicked at"), "{err}");
    }
    let after = load(dir.path());
    for g in &after.graphs {
        for key in ["tract/b1", "tract/b2"] {
            assert!(
                g.metrics.latency_ms.contains_key(key),
                "{}: {key} lost",
                g.id
            );
        }
    }
    assert!(dir.path().join(LOCK_FILE).is_file());
}

#[cfg(feature = "cli")]
fn bench_out(dir: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oats-bench"))
        .arg(dir)
        .args(["--batch", "1", "--iters", "1", "--warmup", "0"])
        .arg("--out")
        .arg(out)
        .output()
        .expect("run oats-bench")
}

#[cfg(feature = "cli")]
#[test]
fn c1_no_destroy_bench_out_refuses_a_users_file_and_the_manifest() {
    let dir = tempdir();
    fresh_export(dir.path());
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "my private notes").expect("write");
    let manifest_before = std::fs::read(dir.path().join(MANIFEST_FILE)).expect("read");
    for target in [notes.clone(), dir.path().join(MANIFEST_FILE)] {
        let o = bench_out(dir.path(), &target);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{target:?} was replaced");
        assert!(
            err.contains(&*target.file_name().expect("name").to_string_lossy()),
            "{err}"
        );
        assert!(err.contains("not an oats-bench report"), "{err}");
        assert!(!err.contains("panicked at"), "{err}");
        assert!(!err.contains("my private notes"), "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(&notes).expect("read"),
        "my private notes"
    );
    assert_eq!(
        std::fs::read(dir.path().join(MANIFEST_FILE)).expect("read"),
        manifest_before
    );
    // An earlier report is replaced.
    let report = dir.path().join("bench.yaml");
    for _ in 0..2 {
        let o = bench_out(dir.path(), &report);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[cfg(feature = "cli")]
#[cfg(unix)]
#[test]
fn c2_atomic_bench_out_through_a_planted_symlink_is_refused() {
    let dir = tempdir();
    fresh_export(dir.path());
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").expect("write");
    let link = dir.path().join("bench.yaml");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let o = bench_out(dir.path(), &link);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep");
}
