//! A run read back from what a study keeps of it: `eval.yaml` and the checkpoint's record
//! `checkpoint.yaml`, without the weights (`oats_train::checkpoint::Record`). The record must
//! give what the checkpoint gives, and a stale, tampered or foreign one is a clear error.
//! Also: every run the no-worse study committed (experiments/no-worse/results/runs) loads.
use crate::support;

use std::fs;
use std::path::{Path, PathBuf};

use oats_calibrate::compare::RunResult;
use oats_train::checkpoint::{self, Record};
use oats_train::config::TrainConfig;

/// An untrained OAT model saved as a run directory with its record and an eval.yaml.
/// Returns the checkpoint's sha256.
fn run_dir(dir: &Path) -> String {
    let m = support::untrained_oat();
    let sha = checkpoint::save(
        &dir.join(checkpoint::FILE_NAME),
        &m.checkpoint_tensors(),
        &m.meta,
    )
    .expect("save");
    Record::save(&dir.join(checkpoint::RECORD_FILE), &m.meta, &sha).expect("record");
    let report = support::eval_report(&sha);
    fs::write(
        dir.join("eval.yaml"),
        serde_yaml::to_string(&report).expect("yaml"),
    )
    .expect("write eval.yaml");
    sha
}

fn err(dir: &Path) -> String {
    match RunResult::load(dir) {
        Ok(_) => panic!("{}: load must fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn record_stands_in_for_the_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sha = run_dir(tmp.path());
    let with_weights = RunResult::load(tmp.path()).expect("load with checkpoint");
    let rec = Record::load(&tmp.path().join(checkpoint::RECORD_FILE)).expect("record");
    assert_eq!(rec.checkpoint_sha256, sha);
    fs::remove_file(tmp.path().join(checkpoint::FILE_NAME)).expect("rm");
    let without = RunResult::load(tmp.path()).expect("load from the record");
    assert_eq!(without.config, with_weights.config);
    assert_eq!(without.epochs, with_weights.epochs);
    assert_eq!(without.history, with_weights.history);
    assert_eq!(without.report, with_weights.report);
}

#[test]
fn stale_or_tampered_record_is_refused_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    run_dir(tmp.path());
    fs::remove_file(tmp.path().join(checkpoint::FILE_NAME)).expect("rm");
    let rec_path = tmp.path().join(checkpoint::RECORD_FILE);
    let good = fs::read_to_string(&rec_path).expect("read");
    let rec: Record = serde_yaml::from_str(&good).expect("parse");

    // A record of another checkpoint (a kill between checkpoint and record, or a copy from
    // another run): eval.yaml names a different sha256.
    let mut other = rec.clone();
    other.checkpoint_sha256 = "0".repeat(64);
    fs::write(&rec_path, serde_yaml::to_string(&other).expect("yaml")).expect("write");
    let e = err(tmp.path());
    assert!(
        e.contains("eval.yaml") && e.contains("checkpoint.yaml") && e.contains("sha256"),
        "{e}"
    );

    for (what, text) in [
        ("truncated", good[..good.len() / 2].to_string()),
        (
            "foreign format",
            good.replace(checkpoint::RECORD_FORMAT, "x/1"),
        ),
        (
            "not a sha256",
            good.replace(&rec.checkpoint_sha256, "not-a-hash"),
        ),
        ("empty", String::new()),
        ("not YAML", "\u{0}\u{1}garbage: [".into()),
    ] {
        fs::write(&rec_path, &text).expect("write");
        let e = err(tmp.path());
        assert!(e.contains("checkpoint.yaml"), "{what}: {e}");
    }

    // A record whose meta describes an impossible model is refused before anything uses it.
    let mut huge = rec.clone();
    huge.meta.in_channels = 1 << 30;
    fs::write(&rec_path, serde_yaml::to_string(&huge).expect("yaml")).expect("write");
    let e = err(tmp.path());
    assert!(
        e.contains("checkpoint.yaml") && e.contains("in_channels"),
        "{e}"
    );

    // Neither checkpoint nor record: the error names the checkpoint it looked for.
    fs::remove_file(&rec_path).expect("rm");
    let e = err(tmp.path());
    assert!(e.contains("checkpoint.safetensors"), "{e}");
}

/// Every run the study keeps loads (eval.yaml agrees with its record) and is the run its name
/// says: the committed config of that name, trained to its last epoch.
#[test]
fn committed_study_runs_load() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../experiments/no-worse");
    let runs = root.join("results/runs");
    let mut n = 0;
    for entry in fs::read_dir(&runs).expect("results/runs") {
        let dir = entry.expect("entry").path();
        let name = dir
            .file_name()
            .and_then(|s| s.to_str())
            .expect("utf-8 name");
        if !dir.is_dir() || name.starts_with('.') {
            continue;
        }
        let r = RunResult::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            !dir.join(checkpoint::FILE_NAME).exists(),
            "{name}: weights are not committed"
        );
        let cfg = TrainConfig::load(&root.join("configs").join(format!("{name}.yaml")))
            .unwrap_or_else(|e| panic!("{name}: its config: {e}"));
        assert_eq!(r.config.mode, cfg.mode, "{name}: mode");
        assert_eq!(r.config.seed, cfg.seed, "{name}: seed");
        assert_eq!(r.config.lambda, cfg.lambda, "{name}: λ");
        assert_eq!(
            r.config.channel_multiplier, cfg.channel_multiplier,
            "{name}: capacity"
        );
        assert_eq!(
            r.config.lambda_sampling, cfg.lambda_sampling,
            "{name}: λ sampling"
        );
        assert_eq!(r.epochs, cfg.epochs, "{name}: unfinished run kept");
        n += 1;
    }
    eprintln!("{n} kept study runs load");
}
