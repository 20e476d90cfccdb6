//! `oats-export --out` under hostile file-system conditions (issue 12, classes 1 and 2): an
//! --out that is a user's directory, the training run directory, a file or a symlink; a
//! user's `<out>.old` / `<out>.partial` beside it; two exports into one --out at once.
//!
//! One tiny OAT model (one width, a few batches) is trained once per test process; every
//! export is of two λ, verified in tract only, so each takes about a second.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use oats_runtime::{Manifest, OatsModel, Options};
use oats_train::config::TrainConfig;
use oats_train::data::{self, DatasetKind, Split};
use oats_train::{checkpoint, Trainer};
use tch::Device;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/fashion-mnist-subset")
}

/// The run directory of a tiny trained OAT model, trained once for all tests of this file.
fn run_dir() -> &'static Path {
    static RUN: OnceLock<tempfile::TempDir> = OnceLock::new();
    RUN.get_or_init(|| {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let mut c = TrainConfig::embedded_default();
        c.mode = serde_yaml::from_str("oat").expect("mode");
        c.widths = vec![1.0];
        c.data.dir = assets();
        c.attack.steps = 1;
        c.epochs = 1;
        c.batch_size = 32;
        c.max_batches = Some(2);
        c.validate().expect("config");
        let train =
            data::load(DatasetKind::FashionMnist, &assets(), Split::Train, Some(64)).expect("data");
        let val =
            data::load(DatasetKind::FashionMnist, &assets(), Split::Val, Some(32)).expect("data");
        let mut t = Trainer::new(c, &train, &val, tmp.path(), Device::Cpu).expect("trainer");
        t.quiet = true;
        t.run().expect("train");
        tmp
    })
    .path()
}

fn export_cmd(out: &Path, lambdas: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oats-export"));
    c.arg("--checkpoint")
        .arg(run_dir())
        .arg("--out")
        .arg(out)
        .args(["--lambdas", lambdas, "--verify", "tract", "--quiet"])
        .arg("--data-dir")
        .arg(assets());
    c
}

fn export(out: &Path, lambdas: &str) -> Output {
    export_cmd(out, lambdas).output().expect("run oats-export")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "oats-export failed: {}", stderr(o));
}

/// Exit status 1, a message naming `what`, no panic banner.
fn assert_refused(o: &Output, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("refusing to replace"), "{err}");
    assert!(err.contains(what), "the message names {what:?}: {err}");
    assert!(!err.contains("panicked at"), "{err}");
}

/// Every file of the directory (relative path → bytes).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("list") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("inside").to_path_buf();
                all.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    all.sort();
    all
}

/// The export at `out` loads, every graph's sha256 matches (checked on load), and it holds
/// the λ asked for.
fn assert_valid_export(out: &Path, lambdas: &[f64]) -> Manifest {
    let model = OatsModel::open(out, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let m = model.manifest().clone();
    let got: Vec<f64> = m.graphs.iter().map(|g| g.lambda).collect();
    assert_eq!(got, lambdas);
    m
}

/// Names in `dir` other than those given: staging leftovers would show here.
fn extra_entries(dir: &Path, expected: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !expected.contains(&n.as_str()) && !n.ends_with(".oats.lock"))
        .collect()
}

#[test]
fn c1_no_destroy_export_over_a_users_directory_is_refused_and_nothing_deleted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("mine");
    std::fs::create_dir_all(out.join("sub")).expect("mkdir");
    std::fs::write(out.join("notes.txt"), "my notes").expect("write");
    std::fs::write(out.join("sub").join("data.bin"), [1u8, 2, 3]).expect("write");
    let before = snapshot(&out);
    let o = export(&out, "0,1");
    assert_refused(&o, "notes.txt");
    assert!(!stderr(&o).contains("my notes"), "content is never echoed");
    assert_eq!(snapshot(&out), before);
    assert!(extra_entries(tmp.path(), &["mine"]).is_empty());
}

#[test]
fn c1_no_destroy_export_over_the_run_directory_keeps_the_checkpoint() {
    // A copy of the run directory, used as both --checkpoint and --out.
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).expect("mkdir");
    for f in [checkpoint::FILE_NAME, "config.yaml", "metrics.csv"] {
        std::fs::copy(run_dir().join(f), run.join(f)).expect("copy");
    }
    let before = snapshot(&run);
    let o = Command::new(env!("CARGO_BIN_EXE_oats-export"))
        .arg("--checkpoint")
        .arg(&run)
        .arg("--out")
        .arg(&run)
        .args(["--lambdas", "0,1", "--verify", "tract", "--quiet"])
        .output()
        .expect("run");
    assert_refused(&o, checkpoint::FILE_NAME);
    assert_eq!(snapshot(&run), before, "the run directory is untouched");
}

#[test]
fn c1_no_destroy_export_replaces_an_earlier_export_and_its_calibration() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("export");
    assert_ok(&export(&out, "0,1"));
    assert_valid_export(&out, &[0.0, 1.0]);
    // What oats-calibrate adds beside the manifest, and an interrupted atomic write of it.
    for f in [
        "calibration.yaml",
        "frontier.png",
        "frontier.svg",
        ".calibration.yaml.Ab12Cd.tmp",
    ] {
        std::fs::write(out.join(f), "calibrated").expect("write");
    }
    assert_ok(&export(&out, "0,0.5,1"));
    assert_valid_export(&out, &[0.0, 0.5, 1.0]);
    assert!(
        !out.join("calibration.yaml").exists(),
        "the old export went as a whole"
    );
    assert!(extra_entries(tmp.path(), &["export"]).is_empty());
}

#[test]
fn c1_no_destroy_export_keeps_a_users_old_and_partial_siblings() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("export");
    for sibling in ["export.old", "export.partial"] {
        std::fs::create_dir(tmp.path().join(sibling)).expect("mkdir");
        std::fs::write(tmp.path().join(sibling).join("mine.txt"), sibling).expect("write");
    }
    // Once into nothing, once over the earlier export.
    assert_ok(&export(&out, "0,1"));
    assert_ok(&export(&out, "0,1"));
    for sibling in ["export.old", "export.partial"] {
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(sibling).join("mine.txt")).expect("kept"),
            sibling
        );
    }
    assert_valid_export(&out, &[0.0, 1.0]);
    assert!(extra_entries(tmp.path(), &["export", "export.old", "export.partial"]).is_empty());
}

#[test]
fn c1_no_destroy_an_earlier_export_with_a_users_file_added_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("export");
    assert_ok(&export(&out, "0,1"));
    std::fs::write(out.join("README.md"), "hand-written").expect("write");
    let before = snapshot(&out);
    let o = export(&out, "0,1");
    assert_refused(&o, "README.md");
    assert_eq!(snapshot(&out), before);
}

#[test]
fn c1_no_destroy_a_file_or_symlink_at_out_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("export");
    std::fs::write(&file, "a file").expect("write");
    assert_refused(&export(&file, "0,1"), "export");
    assert_eq!(std::fs::read_to_string(&file).expect("kept"), "a file");
    #[cfg(unix)]
    {
        let target = tmp.path().join("target");
        std::fs::create_dir(&target).expect("mkdir");
        std::fs::write(target.join("x"), "x").expect("write");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert_refused(&export(&link, "0,1"), "symbolic link");
        assert_eq!(
            std::fs::read_to_string(target.join("x")).expect("kept"),
            "x"
        );
    }
}

/// Two exports into one --out at once (different λ sets): each finishes or refuses clearly,
/// and --out ends as one complete, valid export of one of them.
#[test]
fn c2_atomic_two_exports_into_one_out_at_the_same_time() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("export");
    // An earlier export, so that both runs replace something.
    assert_ok(&export(&out, "0,1"));
    let spawn = |l: &str| {
        export_cmd(&out, l)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (spawn("0,0.5,1"), spawn("0,1"));
    let outs = [
        a.wait_with_output().expect("wait"),
        b.wait_with_output().expect("wait"),
    ];
    let mut finished = 0;
    for o in &outs {
        let err = stderr(o);
        assert!(!err.contains("panicked at"), "{err}");
        if o.status.success() {
            finished += 1;
        } else {
            assert!(
                err.contains(&*out.to_string_lossy()),
                "a clear refusal: {err}"
            );
        }
    }
    assert!(finished >= 1, "at least one export finished");
    let m = Manifest::load(out.join("manifest.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let lambdas: Vec<f64> = m.graphs.iter().map(|g| g.lambda).collect();
    assert!(
        lambdas == [0.0, 0.5, 1.0] || lambdas == [0.0, 1.0],
        "{lambdas:?}"
    );
    assert_valid_export(&out, &lambdas);
    // Exactly the listed files: nothing of the other export mixed in.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".oats.lock")
        .collect();
    names.sort();
    let mut want: Vec<String> = m.graphs.iter().filter_map(|g| g.file.clone()).collect();
    want.extend([
        "manifest.yaml".to_string(),
        "package.safetensors".to_string(),
        "reference.safetensors".to_string(),
    ]);
    want.sort();
    assert_eq!(names, want);
    assert!(extra_entries(tmp.path(), &["export"]).is_empty());
}

/// `--package-only` writes the package, the manifest and the reference bundle, no graph file,
/// and replacing a folded export with it leaves none of the old graph files behind;
/// `--shared-weights` with it is refused by the command line.
#[test]
fn package_only_writes_no_graph_files_and_replaces_a_folded_export() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("export");
    assert_ok(&export(&out, "0,1"));
    assert!(std::fs::read_dir(&out)
        .expect("read")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".onnx")));
    let o = export_cmd(&out, "0,0.5,1")
        .arg("--package-only")
        .output()
        .expect("run");
    assert_ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("no graph files: derived from the package on the device"),
        "{stdout}"
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .expect("read")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "manifest.yaml",
            "package.safetensors",
            "reference.safetensors"
        ]
    );
    let m = oats_runtime::Manifest::load(out.join("manifest.yaml")).expect("manifest");
    assert!(m.graphs.iter().all(|g| g.is_derived()));
    let o = export_cmd(&out, "0,1")
        .args(["--package-only", "--shared-weights"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}
