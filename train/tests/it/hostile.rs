//! Hostile inputs for the trainer and `oats-train` (issue 12, classes 3–5): data files,
//! configs, checkpoints and command-line values that are truncated, huge, special files,
//! NaN or out of range. Each ends in a clear error naming the offending thing (exit status
//! 1, no panic banner), quickly and within bounded memory; nothing is clamped or replaced.
//!
//! Test names carry their class: `c3_bounded_…` (bounded before allocating), `c4_no_panic_…`
//! (no panic crosses the boundary), `c5_no_silent_…` (no silent wrong answer).
use crate::common;

use oats_testkit::{closed_pipe, dev_full, mkfifo};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use oats_train::checkpoint::{self, Meta};
use oats_train::config::TrainConfig;
use oats_train::data::{self, DataError, Dataset, DatasetKind, Split};
use oats_train::{TchModel, TrainError};
use proptest::prelude::*;
use tch::{Device, Tensor};

const BIN: &str = env!("CARGO_BIN_EXE_oats-train");

/// Longest any one command of this file may take; a hang (a FIFO read) fails the test.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Address-space limit (KiB) of the resource tests, 2 GiB: 4× what the binary needs to start
/// (libtorch included, measured < 512 MiB), far below what an unchecked header or image
/// would allocate (3.4 TB for the IDX header, 30 GB for the 100,000² PNG, 40 GB for a
/// checkpoint's 10⁹-channel convolution).
const ULIMIT_KIB: u64 = 2 << 20;

// ---------------------------------------------------------------------------------------
// Helpers

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    secs: f64,
}

impl Outcome {
    /// Exit status 1, `needles` all in stderr, and no panic banner.
    fn refused(&self, needles: &[&str]) {
        assert_eq!(
            self.code,
            Some(1),
            "expected exit status 1; stderr:\n{}",
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked at"),
            "panic banner:\n{}",
            self.stderr
        );
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr lacks {n:?}:\n{}",
                self.stderr
            );
        }
    }
}

/// Runs `cmd` with `stdout`, killing it (and failing) after [`TIMEOUT`].
fn run_with(mut cmd: Command, stdout: Stdio) -> Outcome {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let mut out = child.stdout.take();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            std::io::Read::read_to_string(o, &mut s).ok();
        }
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            panic!("{cmd:?} did not end within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code: status.code(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: reader.join().unwrap_or_default(),
        secs: start.elapsed().as_secs_f64(),
    }
}

fn oats_train(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env("OMP_NUM_THREADS", "1");
    c
}

fn run(args: &[&str]) -> Outcome {
    run_with(oats_train(args), Stdio::piped())
}

/// `oats-train args…` under `ulimit -v ULIMIT_KIB`.
fn run_ulimited(args: &[&str]) -> Outcome {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -v {ULIMIT_KIB}; exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args)
        .env("OMP_NUM_THREADS", "1");
    run_with(c, Stdio::piped())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).expect("gz");
    e.finish().expect("gz")
}

/// An IDX data set of `n` images of `h`×`w` (train and test files), labels i % 10.
fn write_idx_dataset(dir: &Path, n: u32, h: u32, w: u32) {
    fs::create_dir_all(dir).expect("dir");
    for prefix in ["train", "t10k"] {
        let pixels: Vec<u8> = (0..n * h * w).map(|i| (i % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            idx_bytes(0x803, &[n, h, w], &pixels),
        )
        .expect("write");
        fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            idx_bytes(0x801, &[n], &labels),
        )
        .expect("write");
    }
}

/// A PNG whose header says `w`×`h` RGB; the pixel data is a few KB of zeros (a
/// decompression / aspect-ratio bomb: tiny on disk, huge once decoded).
fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    fn chunk(v: &mut Vec<u8>, ty: &[u8; 4], data: &[u8]) {
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(ty);
        v.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(ty);
        crc.update(data);
        v.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut v, b"IHDR", &ihdr);
    let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
    z.write_all(&vec![0u8; 1 << 16]).expect("zlib");
    chunk(&mut v, b"IDAT", &z.finish().expect("zlib"));
    chunk(&mut v, b"IEND", &[]);
    v
}

/// A config file for `cfg` in `dir`.
fn write_config(dir: &Path, cfg: &TrainConfig) -> PathBuf {
    let p = dir.join("config.yaml");
    fs::write(&p, cfg.to_yaml().expect("yaml")).expect("write");
    p
}

/// The config of the shared model: OAT, small preset, trained λ ∈ [0, 0.5] only (so that λ in
/// [0, 1] but outside the trained range can be tried), full width.
fn model_config() -> TrainConfig {
    let mut c = common::tiny_config("oat", 1, 64);
    c.lambdas = vec![0.0, 0.25, 0.5];
    c.encoding_dim = 16;
    c.validate().expect("config");
    c
}

/// The tensors a checkpoint of `m` holds (model variables and λ encoding).
fn model_tensors(m: &TchModel) -> BTreeMap<String, Tensor> {
    m.checkpoint_tensors()
}

/// An untrained model of [`model_config`] on 1×28×28 Fashion-MNIST, saved once for all tests:
/// the hostile inputs are refused before its accuracy matters, and saving is instant.
fn fixture() -> &'static (tempfile::TempDir, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = save_model(tmp.path(), &model_config(), |_, _| {});
        (tmp, p)
    })
}

fn ckpt() -> &'static str {
    s(&fixture().1)
}

/// Saves an untrained model of `cfg` into `dir`, after `edit` changed its tensors and meta.
fn save_model(
    dir: &Path,
    cfg: &TrainConfig,
    edit: impl FnOnce(&mut BTreeMap<String, Tensor>, &mut Meta),
) -> PathBuf {
    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let m = TchModel::new(cfg, 1, 28, 28, names, Device::Cpu);
    let mut tensors = model_tensors(&m);
    let mut meta = m.meta.clone();
    edit(&mut tensors, &mut meta);
    fs::create_dir_all(dir).expect("dir");
    let p = dir.join(checkpoint::FILE_NAME);
    checkpoint::save(&p, &tensors, &meta).expect("save");
    p
}

/// `oats-train eval` of the shared model on 16 test samples with FGSM, unless `extra` (appended)
/// sets `--limit` or `--attacks`.
fn eval_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["eval", "--device", "cpu", "--checkpoint", ckpt()];
    if !extra.contains(&"--limit") {
        a.extend_from_slice(&["--limit", "16"]);
    }
    if !extra.contains(&"--attacks") {
        a.extend_from_slice(&["--attacks", "fgsm"]);
    }
    a.extend_from_slice(extra);
    a
}

/// The safetensors bytes of a checkpoint with its JSON header replaced by `edit(header)`.
fn with_header(bytes: &[u8], edit: impl FnOnce(&str) -> String) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).expect("utf-8 header");
    let new = edit(header);
    let mut out = (new.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(new.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

// ---------------------------------------------------------------------------------------
// Class 3: every value bounded before allocating

#[test]
fn c3_bounded_idx_huge_header_under_ulimit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    write_idx_dataset(&dir, 12, 28, 28);
    let images = dir.join("train-images-idx3-ubyte");
    // 4.29e9 images of 28×28 (3.4 TB) announced by a 19-byte file.
    fs::write(&images, idx_bytes(0x803, &[u32::MAX, 28, 28], &[1, 2, 3])).expect("write");
    let run_dir = tmp.path().join("run");
    let args = [
        "train",
        "--quiet",
        "--device",
        "cpu",
        "--data-dir",
        s(&dir),
        "--run-dir",
        s(&run_dir),
    ];
    let o = run_ulimited(&args);
    o.refused(&["train-images-idx3-ubyte", "4294967295 images of 28×28"]);
    assert!(o.secs < 20.0, "took {:.1}s", o.secs);
    // The same header through gzip (no file size to compare with): refused by the limit.
    fs::remove_file(&images).expect("rm");
    fs::write(
        dir.join("train-images-idx3-ubyte.gz"),
        gz(&idx_bytes(0x803, &[u32::MAX, 28, 28], &[1, 2, 3])),
    )
    .expect("write");
    let o = run_ulimited(&args);
    o.refused(&["train-images-idx3-ubyte.gz", "too large", "limit"]);
    assert!(!run_dir.join(checkpoint::FILE_NAME).exists());
}

#[test]
fn c3_bounded_idx_count_disagrees_with_file_size() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_idx_dataset(tmp.path(), 12, 28, 28);
    // 13 images announced, 12 present: truncated, named.
    let p = tmp.path().join("t10k-images-idx3-ubyte");
    let mut b = fs::read(&p).expect("read");
    b[4..8].copy_from_slice(&13u32.to_be_bytes());
    fs::write(&p, &b).expect("write");
    let e = data::load(DatasetKind::FashionMnist, tmp.path(), Split::Test, None).unwrap_err();
    assert!(
        matches!(e, DataError::Truncated { .. }) && e.to_string().contains("t10k-images"),
        "{e}"
    );
    // 11 announced, 12 present: the file is longer than its header says.
    b[4..8].copy_from_slice(&11u32.to_be_bytes());
    fs::write(&p, &b).expect("write");
    let e = data::load(DatasetKind::FashionMnist, tmp.path(), Split::Test, None).unwrap_err();
    assert!(e.to_string().contains("longer"), "{e}");
}

#[test]
fn c3_bounded_data_fifo_and_device_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // IDX: a FIFO where the images file should be would block forever on open.
    let dir = tmp.path().join("fmnist");
    write_idx_dataset(&dir, 12, 28, 28);
    let images = dir.join("t10k-images-idx3-ubyte");
    fs::remove_file(&images).expect("rm");
    mkfifo(&images);
    let e = data::load(DatasetKind::FashionMnist, &dir, Split::Test, None).unwrap_err();
    assert!(
        e.to_string().contains("not a regular file") && e.to_string().contains("t10k-images"),
        "{e}"
    );
    // /dev/zero (through a symlink) would be read forever.
    fs::remove_file(&images).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", &images).expect("symlink");
    let e = data::load(DatasetKind::FashionMnist, &dir, Split::Test, None).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // CIFAR-10, STL-10, SVHN: the same for their binary files.
    for (kind, names) in [
        (DatasetKind::Cifar10, &["test_batch.bin"][..]),
        (DatasetKind::Cifar10, &["data_batch_1.bin"][..]),
        (DatasetKind::Stl10, &["test_X.bin", "test_y.bin"][..]),
        (DatasetKind::Svhn, &["test_32x32.mat"][..]),
    ] {
        let d = tmp.path().join(format!("{kind}-{}", names[0]));
        fs::create_dir_all(&d).expect("dir");
        for n in names {
            mkfifo(&d.join(n));
        }
        let split = if names[0].starts_with("data_batch") {
            Split::Train
        } else {
            Split::Test
        };
        let e = data::load(kind, &d, split, None).unwrap_err();
        assert!(
            e.to_string().contains("not a regular file") && e.to_string().contains(names[0]),
            "{kind}: {e}"
        );
    }
    // Class-name lists too.
    let d = tmp.path().join("cifar-names");
    fs::create_dir_all(&d).expect("dir");
    std::os::unix::fs::symlink("/dev/zero", d.join("batches.meta.txt")).expect("symlink");
    let e = data::load(DatasetKind::Cifar10, &d, Split::Test, None).unwrap_err();
    assert!(e.to_string().contains("batches.meta.txt"), "{e}");
    // An image folder: a FIFO named like an image.
    let d = tmp.path().join("folder");
    fs::create_dir_all(d.join("a")).expect("dir");
    mkfifo(&d.join("a").join("x.png"));
    let e = data::load(DatasetKind::ImageFolder, &d, Split::Train, None).unwrap_err();
    assert!(
        e.to_string().contains("not a regular file") && e.to_string().contains("x.png"),
        "{e}"
    );
}

#[test]
fn c3_bounded_image_folder_huge_dimensions_under_ulimit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (w, h) in [(1u32, 20_000_000u32), (1, 2_000_000), (100_000, 100_000)] {
        let dir = tmp.path().join(format!("img-{w}x{h}"));
        fs::create_dir_all(dir.join("a")).expect("dir");
        let png = bomb_png(w, h);
        assert!(png.len() < 8 << 10, "a small file: {} bytes", png.len());
        fs::write(dir.join("a").join("bomb.png"), &png).expect("write");
        let mut cfg = common::tiny_config("oat", 1, 64);
        cfg.data.kind = DatasetKind::ImageFolder;
        cfg.data.dir = dir.clone();
        let config = write_config(tmp.path(), &cfg);
        let run_dir = tmp.path().join("run");
        let o = run_ulimited(&[
            "train",
            "--quiet",
            "--device",
            "cpu",
            "--config",
            s(&config),
            "--run-dir",
            s(&run_dir),
        ]);
        o.refused(&["bomb.png", "too large", &format!("{w}×{h}")]);
        assert!(o.secs < 20.0, "{w}×{h} took {:.1}s", o.secs);
    }
}

#[test]
fn c3_bounded_config_special_and_huge_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fifo = tmp.path().join("config.yaml");
    mkfifo(&fifo);
    let big = tmp.path().join("big.yaml");
    let f = fs::File::create(&big).expect("create");
    f.set_len(17 << 20).expect("sparse 17 MiB");
    for (path, needle) in [
        (s(&fifo), "not a regular file"),
        ("/dev/zero", "not a regular file"),
        (s(&big), "limit"),
    ] {
        let run_dir = tmp.path().join("run");
        run(&[
            "train",
            "--quiet",
            "--config",
            path,
            "--run-dir",
            s(&run_dir),
        ])
        .refused(&[path, needle]);
    }
}

#[test]
fn c3_bounded_config_yaml_nesting_and_alias_bombs() {
    // Nesting 10,000 deep inside a field, and a billion-laughs alias bomb.
    let deep = format!(
        "{}\nextra: {}{}\n",
        common_yaml(),
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (i, prev) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        bomb.push_str(&format!(
            "{i}: &{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        ));
    }
    for text in [deep, bomb] {
        let start = Instant::now();
        let e = TrainConfig::from_yaml(&text, Path::new("hostile.yaml")).unwrap_err();
        assert!(
            matches!(e, TrainError::ConfigParse { .. }) && e.to_string().contains("hostile.yaml"),
            "{e}"
        );
        assert!(start.elapsed() < Duration::from_secs(5), "{e}");
    }
}

fn common_yaml() -> String {
    oats_train::config::DEFAULT_CONFIG.to_string()
}

#[test]
fn c3_bounded_config_values() {
    let base = common::tiny_config("oats", 1, 64);
    let nan = f64::NAN;
    type Edit = Box<dyn Fn(&mut TrainConfig)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("epsilon", Box::new(move |c| c.epsilon = nan)),
        ("epsilon", Box::new(|c| c.epsilon = -0.1)),
        ("epsilon", Box::new(|c| c.epsilon = f64::INFINITY)),
        ("epochs", Box::new(|c| c.epochs = 0)),
        ("epochs", Box::new(|c| c.epochs = 1_000_000_000_000)),
        ("batch_size", Box::new(|c| c.batch_size = 0)),
        ("batch_size", Box::new(|c| c.batch_size = 1_000_000_000_000)),
        ("optim.lr", Box::new(move |c| c.optim.lr = nan)),
        ("optim.lr", Box::new(|c| c.optim.lr = -0.1)),
        ("optim.lr", Box::new(|c| c.optim.lr = 1e300)),
        ("optim.momentum", Box::new(move |c| c.optim.momentum = nan)),
        ("optim.momentum", Box::new(|c| c.optim.momentum = 1.5)),
        (
            "optim.weight_decay",
            Box::new(|c| c.optim.weight_decay = -1.0),
        ),
        (
            "optim.weight_decay",
            Box::new(|c| c.optim.weight_decay = f64::INFINITY),
        ),
        ("attack.steps", Box::new(|c| c.attack.steps = 0)),
        ("attack.steps", Box::new(|c| c.attack.steps = 1_000_000_000)),
        (
            "attack.step_size",
            Box::new(move |c| c.attack.step_size = nan),
        ),
        ("attack.step_size", Box::new(|c| c.attack.step_size = 5.0)),
        ("widths[]", Box::new(move |c| c.widths = vec![nan, 1.0])),
        ("widths[]", Box::new(|c| c.widths = vec![-0.5, 1.0])),
        ("lambdas[]", Box::new(move |c| c.lambdas = vec![0.0, nan])),
        (
            "lambdas[]",
            Box::new(|c| c.lambdas = vec![0.0, f64::INFINITY]),
        ),
        ("encoding_dim", Box::new(|c| c.encoding_dim = 1 << 40)),
        ("data.crop_pad", Box::new(|c| c.data.crop_pad = 1 << 40)),
        ("data.limit", Box::new(|c| c.data.limit = Some(0))),
        ("data.val_limit", Box::new(|c| c.data.val_limit = Some(0))),
        ("max_batches", Box::new(|c| c.max_batches = Some(0))),
    ];
    for (field, edit) in cases {
        let mut c = base.clone();
        edit(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
        // And through the YAML a user writes (NaN and inf spelled as YAML spells them).
        let yaml = c.to_yaml().expect("yaml");
        let e = TrainConfig::from_yaml(&yaml, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{field} (yaml): {e}");
    }
}

#[test]
fn c3_bounded_train_flags() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    for (flag, value, needles) in [
        (
            "--batch-size",
            "1000000000000",
            &["batch_size", "1000000000000"][..],
        ),
        ("--batch-size", "0", &["batch_size", "0"]),
        ("--epochs", "0", &["epochs", "0"]),
        ("--epochs", "1000000000000", &["epochs", "1000000000000"]),
        ("--limit", "0", &["data.limit", "0"]),
        ("--max-batches", "0", &["max_batches", "0"]),
        ("--widths", "nan,1", &["widths", "NaN"]),
        ("--lambda", "inf", &["lambda", "inf"]),
        ("--threads", "0", &["--threads", "0"]),
        ("--threads", "100000", &["--threads", "100000"]),
    ] {
        run(&["train", "--quiet", flag, value, "--run-dir", s(&run_dir)]).refused(needles);
    }
    assert!(!run_dir.exists(), "nothing was written");
    // --resume --epochs is checked too.
    let rd = tmp.path().join("resume");
    save_model(&rd, &model_config(), |_, _| {});
    for bad in ["0", "1000000000000"] {
        run(&[
            "train",
            "--quiet",
            "--resume",
            "--epochs",
            bad,
            "--run-dir",
            s(&rd),
        ])
        .refused(&["epochs", bad]);
    }
}

#[test]
fn c3_bounded_eval_flags() {
    for (extra, needles) in [
        (&["--batch", "0"][..], &["--batch", "0"][..]),
        (&["--batch", "1000000000000"], &["--batch", "1000000000000"]),
        (&["--batch", "18446744073709551615"], &["--batch"]),
        (&["--limit", "0"], &["--limit"]),
        (&["--eps", "nan"], &["--eps", "NaN"]),
        (&["--eps=-0.1"], &["--eps", "-0.1"]),
        (&["--eps", "2"], &["--eps", "2"]),
        (&["--attacks", "pgd100000"], &["pgd100000", "10000"]),
        (&["--attacks", "pgd20x1000"], &["pgd20x1000", "restarts"]),
        (&["--step-size", "inf"], &["--step-size"]),
        (&["--threads", "0"], &["--threads", "0"]),
    ] {
        run(&eval_args(extra)).refused(needles);
    }
}

#[test]
fn c3_bounded_bench_step_flags() {
    for (extra, needles) in [
        (&["--iters", "0"][..], &["--iters", "0"][..]),
        (&["--iters", "1000000000000"], &["--iters"]),
        (&["--threads", "0"], &["--threads", "0"]),
        (&["--threads=-3"], &["--threads", "-3"]),
        (&["--batch", "0"], &["batch_size", "0"]),
        (
            &["--batch", "1000000000000"],
            &["batch_size", "1000000000000"],
        ),
        (
            &["--pgd-steps", "1000000000"],
            &["attack.steps", "1000000000"],
        ),
        (&["--pgd-steps", "0"], &["attack.steps"]),
    ] {
        let mut a = vec!["bench-step"];
        a.extend_from_slice(extra);
        run(&a).refused(needles);
    }
}

#[test]
fn c3_bounded_checkpoint_huge_declared_shapes_and_meta() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = save_model(&tmp.path().join("zero"), &model_config(), |t, _| {
        t.insert("zz".into(), Tensor::zeros([0, 5], tch::kind::FLOAT_CPU));
    });
    let good = fs::read(&p).expect("read");
    // A tensor of shape [0, 2^64 - 2]: zero elements, so the data length agrees, but the
    // second dimension does not fit a tensor (was a panic inside `view`).
    let bad = with_header(&good, |h| {
        h.replacen("\"shape\":[0,5]", "\"shape\":[0,18446744073709551614]", 1)
    });
    assert_ne!(bad, good, "the header was edited");
    let p = tmp.path().join("shape.safetensors");
    fs::write(&p, &bad).expect("write");
    let e = checkpoint::load(&p).err().expect("refused");
    assert!(e.to_string().contains("tensor zz"), "{e}");
    // Meta declaring 10⁹ input channels, a 10⁶-pixel side or no classes: refused before the
    // network is built.
    for (field, edit) in [
        (
            "in_channels",
            Box::new(|m: &mut Meta| m.in_channels = 1_000_000_000) as Box<dyn Fn(&mut Meta)>,
        ),
        ("height", Box::new(|m: &mut Meta| m.height = 1_000_000)),
        ("width", Box::new(|m: &mut Meta| m.width = -28)),
        (
            "class_names",
            Box::new(|m: &mut Meta| m.class_names.clear()),
        ),
    ] {
        let d = tmp.path().join(field);
        let p = save_model(&d, &model_config(), |_, m| edit(m));
        let o = run_ulimited(&["eval", "--device", "cpu", "--checkpoint", s(&p)]);
        o.refused(&[s(&p), field]);
    }
}

#[test]
fn c3_bounded_checkpoint_special_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fifo = tmp.path().join("fifo.safetensors");
    mkfifo(&fifo);
    for p in [s(&fifo), "/dev/zero"] {
        run(&["eval", "--device", "cpu", "--checkpoint", p]).refused(&[p, "not a regular file"]);
    }
}

// ---------------------------------------------------------------------------------------
// Class 4: no panic crosses a public boundary

#[test]
fn c4_no_panic_closed_stdout_and_full_disk() {
    let cases: Vec<Vec<&str>> = vec![
        vec!["default-config"],
        eval_args(&["--batch", "16", "--threads", "1"]),
        vec![
            "bench-step",
            "--batch",
            "2",
            "--pgd-steps",
            "1",
            "--iters",
            "1",
            "--threads",
            "1",
        ],
    ];
    for args in cases {
        for (what, stdout) in [("closed pipe", closed_pipe()), ("/dev/full", dev_full())] {
            let o = run_with(oats_train(&args), stdout);
            assert_eq!(o.code, Some(1), "{args:?} to a {what}: {}", o.stderr);
            assert!(
                o.stderr.contains("<stdout>") && !o.stderr.contains("panicked at"),
                "{args:?} to a {what}: {}",
                o.stderr
            );
        }
    }
}

#[test]
fn c4_no_panic_checkpoint_tensor_of_another_shape() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = save_model(&tmp.path().join("a"), &model_config(), |t, _| {
        t.insert(
            "model.fc.weight".into(),
            Tensor::zeros([3, 3], tch::kind::FLOAT_CPU),
        );
    });
    run(&["eval", "--device", "cpu", "--checkpoint", s(&p)])
        .refused(&["model.fc.weight", "[3, 3]"]);
    let p = save_model(&tmp.path().join("b"), &model_config(), |t, _| {
        t.insert(
            "lambda_encoding".into(),
            Tensor::zeros([2, 16], tch::kind::FLOAT_CPU),
        );
    });
    run(&["eval", "--device", "cpu", "--checkpoint", s(&p)]).refused(&["lambda_encoding"]);
}

/// Regression: a momentum buffer of another shape than its variable was accepted on
/// `--resume` and made the first optimiser step panic inside libtorch (exit 101).
#[test]
fn c4_no_panic_resume_momentum_of_another_shape() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, needle) in [
        ("optim.momentum.fc.weight", "optim.momentum.fc.weight"),
        ("optim.momentum.no.such.var", "no variable"),
    ] {
        let dir = tmp.path().join(name);
        save_model(&dir, &model_config(), |t, _| {
            t.insert(name.into(), Tensor::zeros([7], tch::kind::FLOAT_CPU));
        });
        run(&[
            "train",
            "--quiet",
            "--device",
            "cpu",
            "--resume",
            "--epochs",
            "2",
            "--run-dir",
            s(&dir),
        ])
        .refused(&[needle]);
    }
}

#[test]
fn c4_no_panic_dataset_fields_that_disagree() {
    let ds = Dataset {
        images: vec![0.0; 10],
        labels: vec![0, 1],
        channels: 1,
        height: 28,
        width: 28,
        class_names: vec!["a".into(), "b".into()],
    };
    let e = oats_train::trainer::to_tensors(&ds, Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("10 pixel values"), "{e}");
    let huge = Dataset {
        channels: usize::MAX,
        ..ds
    };
    assert!(oats_train::trainer::to_tensors(&huge, Device::Cpu).is_err());
}

#[test]
fn c4_no_panic_labels_outside_the_model_classes() {
    let (m, _) = TchModel::load(Path::new(ckpt()), Device::Cpu).expect("load");
    let x = Tensor::zeros([2, 1, 28, 28], tch::kind::FLOAT_CPU);
    let opts = oats_train::eval::EvalOptions {
        eps: 0.1,
        attacks: oats_train::eval::parse_attacks("pgd2").expect("attacks"),
        batch: 2,
        seed: 0,
        keep_worst: false,
    };
    let bar = indicatif::ProgressBar::hidden();
    for y in [
        Tensor::from_slice(&[0i64, 10]),
        Tensor::from_slice(&[-1i64, 0]),
        Tensor::from_slice(&[0.0f32, 1.0]),
    ] {
        let e = oats_train::eval::evaluate(&m, 0.0, 1.0, &x, &y, &opts, &bar)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("label"), "{e}");
    }
    // Through the binary: an IDX data set whose labels exceed the model's 10 classes is
    // refused by the loader (Fashion-MNIST has 10), naming the file.
    let tmp = tempfile::tempdir().expect("tempdir");
    write_idx_dataset(tmp.path(), 12, 28, 28);
    let mut labels = vec![0u8; 12];
    labels[3] = 12;
    fs::write(
        tmp.path().join("t10k-labels-idx1-ubyte"),
        idx_bytes(0x801, &[12], &labels),
    )
    .expect("write");
    run(&eval_args(&["--data-dir", s(tmp.path())])).refused(&["t10k-labels-idx1-ubyte", "12"]);
}

// Fuzz targets (proptest, bounded): the IDX parser and the checkpoint loader fed mutated
// bytes must return Ok or a typed error, never panic.

fn fuzz_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Valid IDX test files: 6 images of 4×5 and their labels.
fn idx_seed() -> (Vec<u8>, Vec<u8>) {
    let px: Vec<u8> = (0..6 * 20).map(|i| i as u8).collect();
    (
        idx_bytes(0x803, &[6, 4, 5], &px),
        idx_bytes(0x801, &[6], &[0, 1, 2, 3, 4, 9]),
    )
}

/// Applies `muts` (position, value) and an optional cut to `bytes`.
fn mutate(mut bytes: Vec<u8>, muts: &[(usize, u8)], cut: Option<usize>, extra: &[u8]) -> Vec<u8> {
    let n = bytes.len();
    for &(i, v) in muts {
        bytes[i % n] = v;
    }
    if let Some(c) = cut {
        bytes.truncate(c % (n + 1));
    }
    bytes.extend_from_slice(extra);
    bytes
}

proptest! {
    #![proptest_config(fuzz_config(400))]

    #[test]
    fn c4_no_panic_fuzz_idx_parser(
        img_muts in prop::collection::vec((0usize..200, any::<u8>()), 0..6),
        lab_muts in prop::collection::vec((0usize..20, any::<u8>()), 0..3),
        cut in prop::option::of(0usize..200),
        extra in prop::collection::vec(any::<u8>(), 0..8),
        compress in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (img, lab) = idx_seed();
        let img = mutate(img, &img_muts, cut, &extra);
        let lab = mutate(lab, &lab_muts, None, &[]);
        let (ni, nl) = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte");
        if compress {
            fs::write(tmp.path().join(format!("{ni}.gz")), gz(&img)).expect("write");
            fs::write(tmp.path().join(format!("{nl}.gz")), gz(&lab)).expect("write");
        } else {
            fs::write(tmp.path().join(ni), &img).expect("write");
            fs::write(tmp.path().join(nl), &lab).expect("write");
        }
        match data::load(DatasetKind::FashionMnist, tmp.path(), Split::Test, None) {
            Ok(ds) => {
                prop_assert_eq!(ds.images.len(), ds.len() * ds.image_len());
                prop_assert!(ds.labels.iter().all(|l| (0..10).contains(l)));
            }
            Err(e) => prop_assert!(e.to_string().contains("t10k-"), "{}", e),
        }
    }
}

/// A valid checkpoint of a tiny model (small preset at width 1, 2 classes): the seed the
/// checkpoint fuzzer mutates.
fn ckpt_seed() -> &'static Vec<u8> {
    static S: OnceLock<Vec<u8>> = OnceLock::new();
    S.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = save_model(tmp.path(), &model_config(), |_, _| {});
        fs::read(p).expect("read")
    })
}

/// Interesting numbers to put in place of a number of the header (shapes, offsets, and the
/// YAML metadata's in_channels, height, epoch…).
fn hostile_number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("-1".to_string()),
        Just("4294967295".to_string()),
        Just("9223372036854775807".to_string()),
        Just("18446744073709551615".to_string()),
        Just("1e308".to_string()),
        Just(".nan".to_string()),
        Just("4097".to_string()),
        Just("65537".to_string()),
        // Small enough that a model built from them stays cheap to run.
        (0u64..64).prop_map(|v| v.to_string()),
    ]
}

/// Byte ranges of `header` where numbers mean something: 0 = the YAML metadata (in_channels,
/// height, epochs, batch_size…), 1 = the tensors' shapes, 2 = anywhere (offsets included).
fn regions(header: &str, target: u8) -> Vec<(usize, usize)> {
    let find_all = |open: &str, close: char| -> Vec<(usize, usize)> {
        header
            .match_indices(open)
            .map(|(i, _)| {
                let a = i + open.len();
                let z = header[a..].find(close).map_or(header.len(), |j| a + j);
                (a, z)
            })
            .collect()
    };
    match target {
        0 => find_all("\"meta\":\"", '"'),
        1 => find_all("\"shape\":[", ']'),
        _ => vec![(0, header.len())],
    }
}

/// Replaces the `k`-th run of ASCII digits inside the `target` regions of `header` (mod
/// their count) with `v`.
fn replace_number(header: &str, target: u8, k: usize, v: &str) -> String {
    let b = header.as_bytes();
    let mut runs = Vec::new();
    for (lo, hi) in regions(header, target) {
        let mut i = lo;
        while i < hi {
            if b[i].is_ascii_digit() {
                let start = i;
                while i < hi && b[i].is_ascii_digit() {
                    i += 1;
                }
                runs.push((start, i));
            } else {
                i += 1;
            }
        }
    }
    if runs.is_empty() {
        return header.to_string();
    }
    let (a, z) = runs[k % runs.len()];
    format!("{}{v}{}", &header[..a], &header[z..])
}

proptest! {
    #![proptest_config(fuzz_config(256))]

    #[test]
    fn c4_no_panic_fuzz_checkpoint_loader(
        numbers in prop::collection::vec((0u8..3, any::<usize>(), hostile_number()), 1..4),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..2),
        cut in prop::option::of(any::<usize>()),
    ) {
        let seed = ckpt_seed();
        let mut bytes = with_header(seed, |h| {
            numbers.iter().fold(h.to_string(), |h, (t, k, v)| replace_number(&h, *t, *k, v))
        });
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().expect("8")) as usize;
        for &(i, v) in &flips {
            // Mostly in the header, where the structure is.
            let at = if i % 4 == 0 { i % bytes.len() } else { i % header_end.min(bytes.len()) };
            bytes[at] = v;
        }
        if let Some(c) = cut.filter(|c| c % 4 == 0) {
            bytes.truncate(c % (bytes.len() + 1));
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("c.safetensors");
        fs::write(&p, &bytes).expect("write");
        match TchModel::load(&p, Device::Cpu) {
            Ok((m, _)) => {
                // Whatever loads must be a usable model of what it declares.
                let meta = &m.meta;
                prop_assert!(meta.validate().is_ok());
                if let (Ok(cond), true) = (m.cond_for(0.0), meta.height * meta.width <= 64 * 64) {
                    let x = Tensor::zeros(
                        [1, meta.in_channels, meta.height, meta.width],
                        tch::kind::FLOAT_CPU,
                    );
                    let logits = m.logits(&x, &cond, m.widths().len() - 1);
                    prop_assert_eq!(logits.size(), vec![1, meta.class_names.len() as i64]);
                }
            }
            Err(e) => prop_assert!(e.to_string().contains("c.safetensors"), "{}", e),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Class 5: no silent wrong answer

#[test]
fn c5_no_silent_eval_on_data_of_another_shape() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Fashion-MNIST files of 32×32 images: the 28×28 model would run on them (it pools
    // adaptively) and report numbers for data it was never meant for.
    write_idx_dataset(tmp.path(), 12, 32, 32);
    let o = run(&eval_args(&["--data-dir", s(tmp.path())]));
    o.refused(&["1×32×32", "1×28×28", s(tmp.path())]);
    assert!(o.stdout.is_empty(), "no table: {}", o.stdout);
}

#[test]
fn c5_no_silent_eval_lambda_and_width() {
    for (flag, value, needle) in [
        ("--lambdas", "nan", "NaN"),
        ("--lambdas", "0,inf", "inf"),
        ("--lambdas=-0.1", "", "-0.1"),
        ("--lambdas", "1.5", "1.5"),
        // In [0, 1] but outside the trained range [0, 0.5]: refused, not clamped to 0.5.
        ("--lambdas", "0.7", "outside the trained range"),
        ("--widths", "0.5", "0.5"),
        ("--widths", "nan", "NaN"),
    ] {
        let args = if value.is_empty() {
            eval_args(&[flag])
        } else {
            eval_args(&[flag, value])
        };
        let o = run(&args);
        o.refused(&[flag.split('=').next().unwrap_or(flag), needle]);
        assert!(o.stdout.is_empty(), "{flag} {value}: {}", o.stdout);
    }
    // The library refuses the same, for every caller (calibrate, export).
    let (m, _) = TchModel::load(Path::new(ckpt()), Device::Cpu).expect("load");
    for l in [f64::NAN, f64::INFINITY, -0.1, 0.7, 1.0] {
        assert!(m.cond_for(l).is_err(), "λ = {l}");
    }
    assert!(m.cond_for(0.4).is_ok(), "inside the trained range");
}

#[test]
fn c5_no_silent_dedicated_model_at_another_lambda() {
    let mut cfg = common::tiny_config("pgd-at", 1, 64);
    cfg.lambda = Some(0.5);
    let m = TchModel::new(&cfg, 1, 28, 28, vec!["a".into(), "b".into()], Device::Cpu);
    assert!(m.cond_for(0.5).is_ok());
    for l in [0.0, 0.4, 1.0, f64::NAN] {
        let e = m.cond_for(l).expect_err("refused");
        assert!(
            e.to_string()
                .contains(if l.is_nan() { "NaN" } else { "0.5" }),
            "{e}"
        );
    }
}

#[test]
fn c5_no_silent_eval_with_no_samples() {
    // --limit 0 is refused (checked above); a split that loads empty is too: 0 % of nothing
    // would read as a measured accuracy.
    let (m, _) = TchModel::load(Path::new(ckpt()), Device::Cpu).expect("load");
    let x = Tensor::zeros([0, 1, 28, 28], tch::kind::FLOAT_CPU);
    let y = Tensor::zeros([0], tch::kind::INT64_CPU);
    let opts = oats_train::eval::EvalOptions {
        eps: 0.1,
        attacks: vec![],
        batch: 4,
        seed: 0,
        keep_worst: false,
    };
    let e = oats_train::eval::evaluate(
        &m,
        0.0,
        1.0,
        &x,
        &y,
        &opts,
        &indicatif::ProgressBar::hidden(),
    )
    .err()
    .expect("refused");
    assert!(e.to_string().contains("0 samples"), "{e}");
}

#[test]
fn c5_no_silent_checkpoint_with_non_finite_weights() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = save_model(tmp.path(), &model_config(), |t, _| {
        let w = t["model.fc.weight"].copy();
        let _ = w.view([-1]).get(0).fill_(f64::NAN);
        t.insert("model.fc.weight".into(), w);
    });
    run(&["eval", "--device", "cpu", "--checkpoint", s(&p)])
        .refused(&["model.fc.weight", "not finite"]);
}

#[test]
fn c5_no_silent_training_data_of_another_shape_or_classes() {
    // Resuming on data of another shape or with more classes than the model is refused.
    let tmp = tempfile::tempdir().expect("tempdir");
    let rd = tmp.path().join("run");
    save_model(&rd, &model_config(), |_, _| {});
    let data = tmp.path().join("data32");
    write_idx_dataset(&data, 12, 32, 32);
    run(&[
        "train",
        "--quiet",
        "--resume",
        "--epochs",
        "2",
        "--data-dir",
        s(&data),
        "--run-dir",
        s(&rd),
    ])
    .refused(&["1×32×32", "1×28×28"]);
    // A crop pad as large as the images would crop mostly padding.
    let mut cfg = common::tiny_config("oat", 1, 64);
    cfg.data.crop_pad = 28;
    let config = write_config(tmp.path(), &cfg);
    run(&[
        "train",
        "--quiet",
        "--config",
        s(&config),
        "--run-dir",
        s(&tmp.path().join("r2")),
    ])
    .refused(&["data.crop_pad", "28×28"]);
}
