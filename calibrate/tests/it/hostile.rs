//! Hostile inputs for `oats-calibrate` and `oats-compare` (issue 12, classes 3–5):
//! out-of-range command-line values, special files where reports should be, and stdout on a
//! closed pipe or a full disk. Each ends in a clear error (exit status 1, no panic banner).
//!
//! Test names carry their class: `c3_bounded_…`, `c4_no_panic_…`, `c5_no_silent_…`.
use crate::support;

use oats_testkit::{closed_pipe, dev_full, mkfifo};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use oats_train::checkpoint;

const CALIBRATE: &str = env!("CARGO_BIN_EXE_oats-calibrate");
const COMPARE: &str = env!("CARGO_BIN_EXE_oats-compare");

fn pretrained() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/pretrained/oats-small-fmnist")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Exit status 1, `needles` in stderr, no panic banner.
fn refused(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr:\n{err}");
    oats_testkit::assert_no_panic_banner(&err);
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

fn run(bin: &str, args: &[&str], stdout: Stdio) -> Output {
    Command::new(bin)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
        .wait_with_output()
        .expect("wait")
}

/// An untrained OAT model saved as a run directory, once for all tests: the hostile values
/// are refused before its accuracy matters. Returns (dir, checkpoint, sha256).
fn fixture() -> &'static (tempfile::TempDir, PathBuf, String) {
    static F: OnceLock<(tempfile::TempDir, PathBuf, String)> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let m = support::untrained_oat();
        let t = m.checkpoint_tensors();
        let p = tmp.path().join(checkpoint::FILE_NAME);
        checkpoint::save(&p, &t, &m.meta).expect("save");
        let sha = checkpoint::load(&p).expect("load").sha256;
        (tmp, p, sha)
    })
}

#[test]
fn c3_bounded_calibrate_flags() {
    let (tmp, ckpt, _) = fixture();
    let export = tmp.path().join("no-export-needed");
    for (extra, needles) in [
        (&["--bench-iters", "0"][..], &["--bench-iters 0"][..]),
        (&["--bench-iters", "1000000000000"], &["--bench-iters"]),
        (&["--bench-batch", "0"], &["--bench-batch 0"]),
        (
            &["--bench-batch", "1,1000000000000"],
            &["--bench-batch 1000000000000"],
        ),
        (&["--batch", "0"], &["--batch 0"]),
        (&["--batch", "18446744073709551615"], &["--batch"]),
        (&["--limit", "0"], &["--limit 0"]),
        (&["--eps", "nan"], &["--eps NaN"]),
        (&["--eps", "2"], &["--eps 2"]),
        (&["--eps=-0.5"], &["--eps -0.5"]),
        (&["--attacks", "pgd100000"], &["pgd100000"]),
        (&["--attacks", "apgd5x1000"], &["restarts"]),
    ] {
        let mut a = vec!["--checkpoint", s(ckpt), "--export", s(&export), "--quiet"];
        a.extend_from_slice(extra);
        refused(&run(CALIBRATE, &a, Stdio::piped()), needles);
    }
    assert!(!export.exists(), "nothing was written");
}

#[test]
fn c3_bounded_calibrate_and_compare_special_files() {
    let (tmp, ckpt, sha) = fixture();
    // --show reads calibration.yaml: a FIFO there must not block, /dev/zero not read forever.
    let d = tmp.path().join("show-fifo");
    fs::create_dir_all(&d).expect("dir");
    mkfifo(&d.join("calibration.yaml"));
    refused(
        &run(CALIBRATE, &["--show", "--export", s(&d)], Stdio::piped()),
        &["calibration.yaml", "not a regular file"],
    );
    // A calibration report too large to be one.
    let d = tmp.path().join("show-big");
    fs::create_dir_all(&d).expect("dir");
    fs::File::create(d.join("calibration.yaml"))
        .expect("create")
        .set_len(17 << 20)
        .expect("sparse");
    refused(
        &run(CALIBRATE, &["--show", "--export", s(&d)], Stdio::piped()),
        &["calibration.yaml", "limit"],
    );
    // oats-compare: eval.yaml a FIFO, or the checkpoint /dev/zero.
    let r = tmp.path().join("cmp-fifo");
    fs::create_dir_all(&r).expect("dir");
    fs::copy(ckpt, r.join(checkpoint::FILE_NAME)).expect("copy");
    mkfifo(&r.join("eval.yaml"));
    let out = tmp.path().join("cmp-out");
    refused(
        &run(COMPARE, &[s(&r), "--out", s(&out)], Stdio::piped()),
        &["eval.yaml", "not a regular file"],
    );
    let r = tmp.path().join("cmp-zero");
    fs::create_dir_all(&r).expect("dir");
    std::os::unix::fs::symlink("/dev/zero", r.join(checkpoint::FILE_NAME)).expect("symlink");
    fs::write(
        r.join("eval.yaml"),
        serde_yaml::to_string(&support::eval_report(sha)).expect("yaml"),
    )
    .expect("write");
    refused(
        &run(COMPARE, &[s(&r), "--out", s(&out)], Stdio::piped()),
        &["checkpoint.safetensors", "not a regular file"],
    );
}

#[test]
fn c4_no_panic_calibrate_show_closed_stdout_and_full_disk() {
    let export = pretrained();
    for (what, stdout) in [("closed pipe", closed_pipe()), ("/dev/full", dev_full())] {
        let o = run(CALIBRATE, &["--show", "--export", s(&export)], stdout);
        refused(&o, &["<stdout>"]);
        let _ = what;
    }
    // The same command to a real pipe works (the failure above is the output's, not the
    // report's).
    let o = run(
        CALIBRATE,
        &["--show", "--export", s(&export)],
        Stdio::piped(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn c4_no_panic_compare_closed_stdout_and_full_disk() {
    let (tmp, ckpt, sha) = fixture();
    let r = tmp.path().join("cmp-run");
    fs::create_dir_all(&r).expect("dir");
    fs::copy(ckpt, r.join(checkpoint::FILE_NAME)).expect("copy");
    fs::write(
        r.join("eval.yaml"),
        serde_yaml::to_string(&support::eval_report(sha)).expect("yaml"),
    )
    .expect("write");
    for (i, stdout) in [closed_pipe(), dev_full()].into_iter().enumerate() {
        let out = tmp.path().join(format!("cmp-{i}/claim"));
        let o = run(COMPARE, &[s(&r), "--out", s(&out)], stdout);
        refused(&o, &["<stdout>"]);
        // The files were written before printing: a closed pipe loses no result.
        assert!(out.with_extension("md").exists(), "no {}.md", out.display());
    }
}
