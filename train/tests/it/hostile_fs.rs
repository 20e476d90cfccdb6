//! What `oats-train` (and the demo script) may replace or delete (issue 12, classes 1 and 2):
//! a run directory with other programs' files in it, `eval --out` pointed at a user's file or
//! the checkpoint, two runs in one directory, `./oats demo --fresh` with a mistyped run path.
use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use oats_train::data::{self, DatasetKind, Split};
use oats_train::{checkpoint, Trainer};
use tch::Device;

/// A trained tiny run (one epoch, two batches), made once for the tests of this file.
fn trained_run() -> &'static Path {
    static RUN: OnceLock<tempfile::TempDir> = OnceLock::new();
    RUN.get_or_init(|| {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let mut c = common::tiny_config("oat", 1, 64);
        c.max_batches = Some(2);
        c.attack.steps = 1;
        let load = |split, n| {
            data::load(
                DatasetKind::FashionMnist,
                &common::assets_data(),
                split,
                Some(n),
            )
            .expect("data")
        };
        let mut t = Trainer::new(
            c,
            &load(Split::Train, 64),
            &load(Split::Val, 32),
            tmp.path(),
            Device::Cpu,
        )
        .expect("trainer");
        t.quiet = true;
        t.run().expect("train");
        tmp
    })
    .path()
}

fn oats_train(args: &[&str], run_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oats-train"))
        .arg("train")
        .args([
            "--quiet", "--device", "cpu", "--mode", "oat", "--widths", "1",
        ])
        .args(["--epochs", "1", "--max-batches", "1", "--limit", "64"])
        .arg("--data-dir")
        .arg(common::assets_data())
        .args(args)
        .arg("--run-dir")
        .arg(run_dir)
        .output()
        .expect("run oats-train")
}

fn eval_to(out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oats-train"))
        .args([
            "eval",
            "--device",
            "cpu",
            "--attacks",
            "fgsm",
            "--limit",
            "8",
        ])
        .arg("--checkpoint")
        .arg(trained_run())
        .arg("--out")
        .arg(out)
        .output()
        .expect("run oats-train eval")
}

/// Exit status 1, stderr naming `what`, no panic banner.
fn assert_refused(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(what), "names {what:?}: {err}");
    assert!(!err.contains("panicked at"), "{err}");
}

/// The refused file's content is not in the message.
fn assert_not_echoed(o: &Output, secret: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains(secret), "echoes the file: {err}");
}

#[test]
fn c1_no_destroy_eval_out_refuses_a_users_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let notes = tmp.path().join("notes.yaml");
    std::fs::write(&notes, "todo: call Bob").expect("write");
    let o = eval_to(&notes);
    assert_refused(&o, "notes.yaml");
    assert_not_echoed(&o, "call Bob");
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an oats-train eval report"));
    assert_eq!(
        std::fs::read_to_string(&notes).expect("kept"),
        "todo: call Bob"
    );
}

#[test]
fn c1_no_destroy_eval_out_refuses_the_checkpoint_and_replaces_its_own_report() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ckpt = tmp.path().join(checkpoint::FILE_NAME);
    std::fs::copy(trained_run().join(checkpoint::FILE_NAME), &ckpt).expect("copy");
    let before = std::fs::read(&ckpt).expect("read");
    assert_refused(&eval_to(&ckpt), checkpoint::FILE_NAME);
    assert_eq!(std::fs::read(&ckpt).expect("read"), before);
    // Its own report, twice: the second run replaces the first.
    let report = tmp.path().join("eval.yaml");
    for _ in 0..2 {
        let o = eval_to(&report);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    oats_train::eval::EvalReport::load(&report).expect("a report");
}

#[test]
fn c1_no_destroy_training_refuses_another_programs_config_yaml() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("config.yaml");
    std::fs::write(&config, "server:\n  port: 8080\n  token: s3cr3t\n").expect("write");
    let o = oats_train(&[], tmp.path());
    assert_refused(&o, "config.yaml");
    assert_not_echoed(&o, "s3cr3t");
    assert_eq!(
        std::fs::read_to_string(&config).expect("kept"),
        "server:\n  port: 8080\n  token: s3cr3t\n"
    );
    assert!(!tmp.path().join(checkpoint::FILE_NAME).exists());
}

#[test]
fn c1_no_destroy_fresh_refuses_a_checkpoint_oats_did_not_write() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ckpt = tmp.path().join(checkpoint::FILE_NAME);
    // A safetensors file of another program.
    let header =
        br#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 4]);
    std::fs::write(&ckpt, &bytes).expect("write");
    let o = oats_train(&["--fresh"], tmp.path());
    assert_refused(&o, "not an oats-train checkpoint");
    assert_eq!(std::fs::read(&ckpt).expect("kept"), bytes);
}

#[test]
fn c1_no_destroy_a_checkpoint_yaml_oats_did_not_write_is_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let theirs = tmp.path().join(checkpoint::RECORD_FILE);
    std::fs::write(&theirs, "checkpoint: every 5 minutes\n").expect("write");
    let o = oats_train(&[], tmp.path());
    assert_refused(&o, "checkpoint record");
    assert_eq!(
        std::fs::read_to_string(&theirs).expect("kept"),
        "checkpoint: every 5 minutes\n"
    );
    assert!(!tmp.path().join(checkpoint::FILE_NAME).exists());
}

#[test]
fn c1_no_destroy_fresh_replaces_an_earlier_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for f in [
        checkpoint::FILE_NAME,
        checkpoint::RECORD_FILE,
        "config.yaml",
        "metrics.csv",
    ] {
        std::fs::copy(trained_run().join(f), tmp.path().join(f)).expect("copy");
    }
    std::fs::write(tmp.path().join("my-notes.txt"), "mine").expect("write");
    let o = oats_train(&["--fresh"], tmp.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("my-notes.txt")).expect("kept"),
        "mine"
    );
    let csv = std::fs::read_to_string(tmp.path().join("metrics.csv")).expect("csv");
    assert_eq!(
        csv.lines().count(),
        2,
        "header and the one new epoch: {csv}"
    );
}

#[test]
fn c2_atomic_a_second_run_in_a_locked_run_directory_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let held =
        oats_io::FileLock::acquire(&tmp.path().join(oats_train::run_dir::LOCK_FILE)).expect("lock");
    let o = oats_train(&[], tmp.path());
    assert_refused(&o, "another oats-train is training");
    assert!(!tmp.path().join(checkpoint::FILE_NAME).exists());
    drop(held);
}

#[cfg(unix)]
#[test]
fn c2_atomic_a_planted_metrics_csv_symlink_is_not_written_through() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "keep").expect("write");
    std::os::unix::fs::symlink(&victim, tmp.path().join("metrics.csv")).expect("symlink");
    let o = oats_train(&[], tmp.path());
    assert_refused(&o, "symbolic link");
    assert_eq!(std::fs::read_to_string(&victim).expect("kept"), "keep");
}

fn demo_fresh(run: &Path) -> Output {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .arg("--fresh")
        .env("OATS_DEMO_RUN", run)
        // Without cargo on the PATH the demo stops at its build stage, right after --fresh.
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("run demo.sh")
}

#[test]
fn c1_no_destroy_demo_fresh_refuses_a_directory_it_did_not_make() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).expect("mkdir");
    std::fs::write(mine.join("thesis.tex"), "years of work").expect("write");
    std::fs::write(mine.join("config.yaml"), "mode: oats").expect("write");
    let o = demo_fresh(&mine);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("thesis.tex") && err.contains("nothing was removed"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("thesis.tex")).expect("kept"),
        "years of work"
    );
    #[cfg(unix)]
    {
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&mine, &link).expect("symlink");
        let o = demo_fresh(&link);
        assert_eq!(o.status.code(), Some(2));
        assert!(link.exists() && mine.join("thesis.tex").exists());
    }
    // A demo run (only what the demo writes) is removed: every file a real training run
    // wrote (so a file the trainer starts writing cannot make --fresh refuse the demo's own
    // run), and the later stages' outputs.
    let demo = tmp.path().join("demo");
    std::fs::create_dir_all(demo.join("export")).expect("mkdir");
    let trained: Vec<_> = std::fs::read_dir(trained_run())
        .expect("trained run")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(trained.iter().any(|f| f == checkpoint::FILE_NAME));
    for f in trained
        .iter()
        .map(|f| f.to_str().expect("utf-8"))
        .chain(["eval.txt", ".oats.lock"])
    {
        std::fs::write(demo.join(f), "x").expect("write");
    }
    let o = demo_fresh(&demo);
    assert!(!demo.exists(), "{}", String::from_utf8_lossy(&o.stderr));
}
