//! A run killed (SIGKILL) after a checkpoint and resumed with --resume ends with exactly the
//! weights, momentum buffers and history of an uninterrupted run with the same seed.
use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oats_train::checkpoint;

const EPOCHS: &str = "4";

fn train_cmd(run_dir: &Path, config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oats-train"));
    c.args([
        "train",
        "--quiet",
        "--device",
        "cpu",
        "--epochs",
        EPOCHS,
        "--run-dir",
    ])
    .arg(run_dir)
    .arg("--config")
    .arg(config)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

fn completed_epochs(run_dir: &Path) -> usize {
    checkpoint::load(&run_dir.join(checkpoint::FILE_NAME))
        .map(|l| l.meta.epoch)
        .unwrap_or(0)
}

#[test]
fn killed_run_resumes_to_identical_weights() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = common::tiny_config("oats", 4, 640);
    let cfg_path = tmp.path().join("cfg.yaml");
    std::fs::write(&cfg_path, cfg.to_yaml().expect("yaml")).expect("write config");

    // Uninterrupted.
    let a = tmp.path().join("a");
    let st = train_cmd(&a, &cfg_path).status().expect("spawn");
    assert!(st.success(), "uninterrupted run failed");

    // Killed after its first checkpoint, then resumed.
    let b = tmp.path().join("b");
    let mut child = train_cmd(&b, &cfg_path).spawn().expect("spawn");
    let start = Instant::now();
    while completed_epochs(&b) < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint after 300 s"
        );
        if let Ok(Some(st)) = child.try_wait() {
            panic!("run ended before it could be killed: {st}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    let at_kill = completed_epochs(&b);
    assert!(
        (1..4).contains(&at_kill),
        "killed at epoch {at_kill}: the test did not interrupt the run"
    );
    let st = Command::new(env!("CARGO_BIN_EXE_oats-train"))
        .args([
            "train",
            "--quiet",
            "--device",
            "cpu",
            "--resume",
            "--run-dir",
        ])
        .arg(&b)
        .status()
        .expect("spawn resume");
    assert!(st.success(), "resume failed");

    let la = checkpoint::load(&a.join(checkpoint::FILE_NAME)).expect("load a");
    let lb = checkpoint::load(&b.join(checkpoint::FILE_NAME)).expect("load b");
    assert_eq!(la.meta.epoch, 4);
    assert_eq!(lb.meta.epoch, 4);
    assert_eq!(la.tensors.len(), lb.tensors.len());
    let mut max = 0.0f64;
    for (k, ta) in &la.tensors {
        let tb = lb
            .tensors
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing after resume"));
        let d = (ta - tb).abs().max().double_value(&[]);
        max = max.max(d);
        assert_eq!(d, 0.0, "{k} differs by {d} after kill + resume");
    }
    assert!(
        la.tensors.keys().any(|k| k.starts_with("optim.momentum.")),
        "momentum buffers are checkpointed"
    );
    let (ha, hb): (Vec<f64>, Vec<f64>) = (
        la.meta.history.iter().map(|m| m.loss).collect(),
        lb.meta.history.iter().map(|m| m.loss).collect(),
    );
    assert_eq!(ha, hb, "per-epoch losses differ");
    // The record beside the checkpoint describes the checkpoint that is there after the resume.
    let rec = checkpoint::Record::load(&b.join(checkpoint::RECORD_FILE)).expect("record");
    assert_eq!(
        rec.checkpoint_sha256, lb.sha256,
        "record names another checkpoint"
    );
    assert_eq!(
        rec.meta, lb.meta,
        "record's meta differs from the checkpoint's"
    );
    let csv = std::fs::read_to_string(b.join("metrics.csv")).expect("metrics.csv");
    assert_eq!(
        csv.lines().count(),
        5,
        "header + one line per epoch, no duplicates:\n{csv}"
    );
}

#[test]
fn existing_run_is_not_overwritten_without_resume_or_fresh() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = common::tiny_config("oat", 1, 128);
    let cfg_path = tmp.path().join("cfg.yaml");
    std::fs::write(&cfg_path, cfg.to_yaml().expect("yaml")).expect("write config");
    let run = tmp.path().join("run");
    assert!(train_cmd(&run, &cfg_path)
        .status()
        .expect("spawn")
        .success());
    let before = std::fs::read(run.join(checkpoint::FILE_NAME)).expect("ckpt");
    let out = train_cmd(&run, &cfg_path)
        .stderr(Stdio::piped())
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--resume"), "{err}");
    assert_eq!(
        before,
        std::fs::read(run.join(checkpoint::FILE_NAME)).expect("ckpt"),
        "checkpoint untouched"
    );
}
