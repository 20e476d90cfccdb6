//! Hostile command lines for `oats-export` (issue 12, classes 3–5; the `--out` directory
//! handling has its own tests): special files, NaN or out-of-range values, verification data
//! of another shape, and stdout on a closed pipe or a full disk. Each ends in a clear error
//! (exit status 1, no panic banner), and nothing is exported from a refused request.
//!
//! Test names carry their class: `c3_bounded_…`, `c4_no_panic_…`, `c5_no_silent_…`.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use oats_train::checkpoint;
use oats_train::config::TrainConfig;
use oats_train::TchModel;
use tch::Device;

const BIN: &str = env!("CARGO_BIN_EXE_oats-export");

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

fn run(args: &[&str], stdout: Stdio) -> Output {
    Command::new(BIN)
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

/// An untrained OAT model trained for λ ∈ [0, 0.5] at width 1, saved once for all tests.
fn fixture() -> &'static (tempfile::TempDir, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut c = TrainConfig::embedded_default();
        c.mode = oats_train::config::Mode::Oat;
        c.widths = vec![1.0];
        c.lambdas = vec![0.0, 0.5];
        c.encoding_dim = 16;
        c.data.dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/fashion-mnist-subset");
        c.validate().expect("config");
        let names = (0..10).map(|i| format!("c{i}")).collect();
        let m = TchModel::new(&c, 1, 28, 28, names, Device::Cpu);
        let t = m.checkpoint_tensors();
        let p = tmp.path().join(checkpoint::FILE_NAME);
        checkpoint::save(&p, &t, &m.meta).expect("save");
        (tmp, p)
    })
}

/// `oats-export` of one graph of the fixture into `out`, verified with tract, plus `extra`.
fn export_args<'a>(out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "--checkpoint",
        s(&fixture().1),
        "--out",
        s(out),
        "--lambdas",
        "0",
        "--widths",
        "1",
        "--verify",
        "tract",
        "--quiet",
    ];
    a.extend_from_slice(extra);
    a
}

/// IDX test files of `n` images of `h`×`w`.
fn write_idx(dir: &Path, n: u32, h: u32, w: u32) {
    fs::create_dir_all(dir).expect("dir");
    let idx = |magic: u32, dims: &[u32], data: &[u8]| {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    };
    let px: Vec<u8> = (0..n * h * w).map(|i| (i % 251) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    fs::write(
        dir.join("train-images-idx3-ubyte"),
        idx(0x803, &[n, h, w], &px),
    )
    .expect("write");
    fs::write(
        dir.join("train-labels-idx1-ubyte"),
        idx(0x801, &[n], &labels),
    )
    .expect("write");
}

#[test]
fn c3_bounded_export_checkpoint_special_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fifo = tmp.path().join("fifo.safetensors");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let out = tmp.path().join("out");
    for p in [s(&fifo), "/dev/zero"] {
        let o = run(
            &["--checkpoint", p, "--out", s(&out), "--quiet"],
            Stdio::piped(),
        );
        refused(&o, &[p, "not a regular file"]);
    }
    assert!(!out.exists());
}

#[test]
fn c4_no_panic_export_closed_stdout_and_full_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stdouts = || {
        let (r, w) = std::io::pipe().expect("pipe");
        drop(r);
        let full = fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        [Stdio::from(w), Stdio::from(full)]
    };
    for (i, stdout) in stdouts().into_iter().enumerate() {
        let out = tmp.path().join(format!("export-{i}"));
        let o = run(&export_args(&out, &[]), stdout);
        refused(&o, &["<stdout>"]);
        // The export itself was complete before the summary failed to print.
        assert!(out.join("manifest.yaml").exists(), "{}", out.display());
    }
}

#[test]
fn c5_no_silent_export_flags() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    for (extra, needles) in [
        // NaN would pass every |Δlogit| comparison: nothing would be verified.
        (&["--tolerance", "nan"][..], &["--tolerance", "NaN"][..]),
        (&["--tolerance", "inf"], &["--tolerance", "inf"]),
        (&["--tolerance", "0"], &["--tolerance"]),
        (&["--tolerance=-1"], &["--tolerance", "-1"]),
        // λ: NaN, outside [0, 1], or outside the trained range [0, 0.5] (not clamped).
        (&["--lambdas", "nan"], &["NaN"]),
        (&["--lambdas", "1.5"], &["1.5"]),
        (&["--lambdas", "0.7"], &["0.7", "outside the trained range"]),
        (&["--widths", "0.5"], &["0.5", "widths"]),
    ] {
        // The later --lambdas / --widths replace export_args' defaults.
        refused(&run(&export_args(&out, extra), Stdio::piped()), needles);
        assert!(!out.exists(), "{extra:?} exported something");
    }
}

#[test]
fn c5_no_silent_export_verification_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    // Data of another shape: refused, not verified on, nor replaced by random inputs.
    let d32 = tmp.path().join("d32");
    write_idx(&d32, 12, 32, 32);
    let o = run(&export_args(&out, &["--data-dir", s(&d32)]), Stdio::piped());
    refused(&o, &["1×32×32", "1×28×28", s(&d32)]);
    // A --data-dir that cannot be read: an error, not a silent fall-back to random inputs.
    let missing = tmp.path().join("missing");
    let o = run(
        &export_args(&out, &["--data-dir", s(&missing)]),
        Stdio::piped(),
    );
    refused(&o, &["--data-dir", s(&missing)]);
    assert!(!out.exists());
}

/// int8 flags (issue #15): a bad percentile or agreement bar, or `--int8-only` on something
/// that is not an export of this checkpoint, is refused with the value, and nothing changes.
#[test]
fn c5_no_silent_int8_flags() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let ck = s(&fixture().1);
    let int8_only = |extra: &[&str]| {
        let mut a = vec![
            "--checkpoint",
            ck,
            "--out",
            s(&out),
            "--int8-only",
            "--quiet",
        ];
        a.extend_from_slice(extra);
        run(&a, Stdio::piped())
    };
    refused(&int8_only(&[]), &["--int8-only", "must be an export"]);
    assert!(!out.exists());
    let o = run(&export_args(&out, &[]), Stdio::piped());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = fs::read(out.join("manifest.yaml")).expect("manifest");
    for (extra, needles) in [
        (&["--int8-percentile", "10"][..], &["percentile 10"][..]),
        (&["--int8-percentile", "nan"], &["percentile NaN"]),
        (&["--int8-min-agreement", "2"], &["agreement 2"]),
    ] {
        refused(&int8_only(extra), needles);
        assert_eq!(
            fs::read(out.join("manifest.yaml")).expect("manifest"),
            before
        );
    }
    // The happy path of the CLI: the fixture is untrained (its agreement means nothing), so
    // the bar is lowered; the int8 twin is written, listed and verified.
    let o = int8_only(&["--int8-min-agreement", "0", "--int8-calibration", "64"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        text.contains("int8: 1 configurations") && text.contains("l0-w1-int8"),
        "{text}"
    );
    assert!(out.join("l0-w1.int8.onnx").is_file() && out.join("int8-report.yaml").is_file());
    let m = oats_runtime::Manifest::load(out.join("manifest.yaml")).expect("manifest");
    assert!(m.graphs.iter().any(|g| g.id == "l0-w1-int8" && g.is_int8()));
    // Another model's export: the manifest names its source checkpoint.
    let mut m = oats_runtime::Manifest::load(out.join("manifest.yaml")).expect("manifest");
    m.source_checkpoint_sha256 = "cd".repeat(32);
    m.save(out.join("manifest.yaml")).expect("save");
    refused(
        &int8_only(&[]),
        &["was exported from checkpoint", &"cd".repeat(32)],
    );
}
