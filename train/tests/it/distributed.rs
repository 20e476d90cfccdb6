//! Data-parallel training on gloo over loopback (DESIGN.md, "Data-parallel training"):
//! 2 ranks × half a batch train the same model as 1 process × the whole batch; replicas stay
//! equal; a rank that dies or hangs ends the run with an error within the timeout, and a
//! resume continues exactly. Every test is bounded in time.
use crate::common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use oats_train::checkpoint::{self, Loaded};
use oats_train::config::{LambdaSampling, TrainConfig};
use oats_train::dist::{Dist, DistEnv};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// OATS with λ ∈ {0, 1}, the reference sampling and an even batch: ⌈b/|S|⌉ zeros first puts
/// the clean half of each batch first (`ends` would put a quarter there), so rank 0 of 2 gets exactly the rows the clean BN sees in one process and
/// rank 1 those the adversarial BN sees. BN batch statistics then do not see the split, and
/// the comparison with one process is exact up to float summation order: 2 ranks compute
/// their convolutions on 32 rows and add two partial gradients, one process computes 64 rows
/// at once, and the results differ in the last bits.
///
/// That difference stays near 1e-7 for a few steps, but not for ever: PGD steps by the *sign*
/// of the input gradient, and once a last-bit difference flips one pixel's sign the two runs
/// part. When depends on the CPU's kernels and the data: on the machine this was first
/// measured on, the 8 steps of one epoch stayed at 2.4e-7 (5e-4 after 11 steps with 1 PGD
/// step); on an AVX2-only AMD EPYC (session 19, CI's kind of machine) they parted at 1.6e-2,
/// and 4 steps at 8.6e-5.
/// So the test below compares a whole epoch with ε = 0 (the attack runs, forward and backward
/// on every rank, but cannot move an image, so no sign can part the runs) and the real attack
/// over 2 steps, as the exits test does (on the EPYC: 1.3e-7 and 9.2e-8).
fn split_blind_config(epochs: usize) -> TrainConfig {
    let mut c = common::tiny_config("oats", epochs, 512);
    c.lambdas = vec![0.0, 1.0];
    c.lambda_sampling = LambdaSampling::Reference;
    c.widths = vec![0.5, 1.0];
    c.batch_size = 64;
    c.validate().expect("valid");
    c
}

fn write_config(dir: &Path, c: &TrainConfig) -> PathBuf {
    let p = dir.join("cfg.yaml");
    std::fs::write(&p, c.to_yaml().expect("yaml")).expect("write config");
    p
}

fn train(run_dir: &Path, config: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oats-train"));
    c.args(["train", "--quiet", "--device", "cpu", "--run-dir"])
        .arg(run_dir)
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .env_remove("WORLD_SIZE")
        .env_remove("RANK")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Output of a command that must end within `limit`, else it is killed and the test fails.
fn bounded(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = bounded(cmd.spawn().expect("spawn"), Duration::from_secs(300), what);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed: {err}");
    err
}

fn ckpt(run: &Path) -> Loaded {
    checkpoint::load(&run.join(checkpoint::FILE_NAME)).expect("checkpoint")
}

fn completed_epochs(run: &Path) -> usize {
    checkpoint::load(&run.join(checkpoint::FILE_NAME))
        .map(|l| l.meta.epoch)
        .unwrap_or(0)
}

/// Largest |a − b| over every tensor of two checkpoints (which must hold the same names).
fn max_diff(a: &Loaded, b: &Loaded) -> (f64, String) {
    assert_eq!(
        a.tensors.keys().collect::<std::collections::BTreeSet<_>>(),
        b.tensors.keys().collect(),
        "same tensors"
    );
    let mut worst = (0.0, String::new());
    for (k, ta) in &a.tensors {
        let d = (ta - &b.tensors[k]).abs().max().double_value(&[]);
        if d.is_nan() || d > worst.0 {
            worst = (d, k.clone());
        }
    }
    worst
}

#[test]
fn two_ranks_with_half_batches_train_what_one_process_trains() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // (ε, steps): a whole epoch of 8 steps where the attack cannot move an image, then the
    // real attack over the steps before a sign flip may part the runs (see above).
    let mut two = PathBuf::new();
    for (epsilon, steps) in [(0.0, None), (0.1, Some(2))] {
        let mut c = split_blind_config(1);
        c.epsilon = epsilon;
        c.max_batches = steps;
        c.validate().expect("valid");
        let dir = tmp.path().join(format!("eps{epsilon}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let cfg = write_config(&dir, &c);
        let one = dir.join("one");
        run_ok(&mut train(&one, &cfg, &[]), "one process");
        two = dir.join("two");
        let log = run_ok(&mut train(&two, &cfg, &["--nproc", "2"]), "2 ranks");
        assert!(log.contains("data-parallel: 2 ranks (gloo)"), "{log}");
        let (a, b) = (ckpt(&one), ckpt(&two));
        assert_eq!((a.meta.epoch, b.meta.epoch), (1, 1));
        assert!(
            b.tensors.keys().any(|k| k.starts_with("optim.momentum.")),
            "momentum is checkpointed"
        );
        let (d, k) = max_diff(&a, &b);
        assert!(
            d <= 1e-5,
            "ε {epsilon}: {k} differs by {d} between 1 × 64 and 2 × 32"
        );
        for (ma, mb) in a.meta.history.iter().zip(&b.meta.history) {
            assert!((ma.loss - mb.loss).abs() < 1e-5, "{ma:?} vs {mb:?}");
            assert_eq!(ma.val_sa_lambda_max, mb.val_sa_lambda_max);
        }
    }
    // Only rank 0 wrote: one checkpoint, config and metrics, nothing else.
    let mut files: Vec<String> = std::fs::read_dir(&two)
        .expect("run dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "checkpoint.safetensors",
            "checkpoint.yaml",
            "config.yaml",
            "metrics.csv"
        ]
    );
}

/// The same with early exits: the max-average attack makes one PGD run, and draws one random
/// start, per exit, and the ranks' generators must stay in step with one process through
/// every draw, including on the rank whose rows are all clean (a missed draw shows at the
/// first step). Max-average also *chooses* per sample the run with the largest summed loss,
/// a comparison that a last-bit difference flips sooner than a PGD sign (measured: 4.9e-8
/// after 2 steps, 3e-3 after 3), so it is compared over 2 steps; the average attack over 4.
#[test]
fn two_ranks_match_one_process_with_exits() {
    use oats_train::config::{ExitAttack, ExitsConfig};
    let tmp = tempfile::tempdir().expect("tempdir");
    for (attack, steps) in [(ExitAttack::MaxAverage, 2), (ExitAttack::Average, 4)] {
        let mut c = split_blind_config(1);
        c.max_batches = Some(steps);
        c.exits = Some(ExitsConfig {
            after_blocks: vec![1, 2],
            attack,
            single_exit: None,
        });
        c.validate().expect("valid");
        let dir = tmp.path().join(format!("{attack:?}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let cfg = write_config(&dir, &c);
        let (one, two) = (dir.join("one"), dir.join("two"));
        run_ok(&mut train(&one, &cfg, &[]), "one process");
        run_ok(&mut train(&two, &cfg, &["--nproc", "2"]), "2 ranks");
        let (a, b) = (ckpt(&one), ckpt(&two));
        assert!(a.tensors.keys().any(|k| k.starts_with("model.exits.")));
        let (d, k) = max_diff(&a, &b);
        assert!(
            d <= 1e-5,
            "{attack:?}: {k} differs by {d} between 1 × 64 and 2 × 32"
        );
    }
}

/// Three ranks, uneven shards (64 = 21 + 21 + 22), three widths, six λ: batch statistics see
/// the split here, so there is no one-process twin; the run checks at every epoch that the
/// replicas are equal (it fails naming the tensor otherwise) and must end cleanly.
#[test]
fn three_ranks_with_uneven_shards_keep_equal_replicas() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = common::tiny_config("oats", 2, 192);
    c.batch_size = 64;
    let cfg = write_config(tmp.path(), &c);
    let run = tmp.path().join("run");
    let log = run_ok(&mut train(&run, &cfg, &["--nproc", "3"]), "3 ranks");
    assert!(log.contains("split into 21–22 rows per rank"), "{log}");
    assert_eq!(completed_epochs(&run), 2);
}

/// The rank processes a `--nproc` launcher started (Linux: /proc's children list).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[test]
fn a_killed_rank_ends_the_run_with_an_error_and_resume_continues_exactly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(tmp.path(), &split_blind_config(3));
    // Uninterrupted, 2 ranks: what the killed and resumed 2-rank run must end with, bit for
    // bit (same shards, same arithmetic; a sum of two is the same in either order).
    let whole = tmp.path().join("whole");
    run_ok(
        &mut train(&whole, &cfg, &["--nproc", "2"]),
        "uninterrupted 2 ranks",
    );

    let run = tmp.path().join("run");
    let launcher = train(&run, &cfg, &["--nproc", "2", "--dist-timeout", "30"])
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while completed_epochs(&run) < 1 {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
        thread::sleep(Duration::from_millis(10));
    }
    let ranks = children_of(launcher.id());
    assert_eq!(ranks.len(), 2, "the launcher runs 2 ranks: {ranks:?}");
    // Rank 1, by the RANK its launcher gave it.
    let victim = *ranks
        .iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .unwrap_or_default()
                .split(|&b| b == 0)
                .any(|kv| kv == b"RANK=1")
        })
        .expect("a rank 1 process");
    let killed = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let killed_at = Instant::now();
    let out = bounded(launcher, Duration::from_secs(60), "launcher after a kill");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run must fail: {err}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "failed only after {:?}",
        killed_at.elapsed()
    );
    assert!(
        err.contains("data-parallel launch: rank 1 ended with signal: 9 (SIGKILL)")
            && err.contains("that ends the run"),
        "the launcher names the killed rank first: {err}"
    );
    assert!(
        err.contains("data-parallel rank 0: all-reducing"),
        "rank 0 names its failed collective: {err}"
    );
    let at_kill = completed_epochs(&run);
    assert!((1..3).contains(&at_kill), "killed at epoch {at_kill}");

    // Resume with the same world size: at most the interrupted epoch is lost, and the run
    // ends where the uninterrupted one did.
    let resumed = run_ok(
        Command::new(env!("CARGO_BIN_EXE_oats-train"))
            .args([
                "train", "--quiet", "--device", "cpu", "--resume", "--nproc", "2",
            ])
            .arg("--run-dir")
            .arg(&run)
            .env("OMP_NUM_THREADS", "1")
            .env_remove("WORLD_SIZE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
        "resume",
    );
    assert!(
        resumed.contains(&format!("at epoch {at_kill}/3")),
        "{resumed}"
    );
    let (d, k) = max_diff(&ckpt(&whole), &ckpt(&run));
    assert_eq!(d, 0.0, "{k} differs by {d} after kill and resume");
    let losses = |l: &Loaded| l.meta.history.iter().map(|m| m.loss).collect::<Vec<_>>();
    assert_eq!(losses(&ckpt(&whole)), losses(&ckpt(&run)));
}

/// A rank that hangs (stopped, its sockets open) makes rank 0 fail after --dist-timeout.
/// The ranks are started torchrun-style, from the environment.
#[test]
fn a_hung_rank_makes_the_others_fail_after_the_timeout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(tmp.path(), &split_blind_config(3));
    let run = tmp.path().join("run");
    let port = free_port().to_string();
    let rank = |r: &str| {
        let mut c = train(&run, &cfg, &["--dist-timeout", "4"]);
        c.env("WORLD_SIZE", "2")
            .env("RANK", r)
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port);
        c.spawn().expect("spawn rank")
    };
    let r0 = rank("0");
    let mut r1 = rank("1");
    let start = Instant::now();
    while completed_epochs(&run) < 1 {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
        thread::sleep(Duration::from_millis(10));
    }
    let stop = |sig: &str| {
        Command::new("kill")
            .args([sig, &r1.id().to_string()])
            .status()
            .expect("kill")
    };
    assert!(stop("-STOP").success());
    let stopped_at = Instant::now();
    let out = bounded(r0, Duration::from_secs(90), "rank 0 beside a hung rank");
    let waited = stopped_at.elapsed();
    let _ = stop("-KILL");
    let _ = r1.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rank 0 must fail: {err}");
    assert!(err.contains("data-parallel rank 0: all-reducing"), "{err}");
    assert!(waited < Duration::from_secs(60), "failed after {waited:?}");
}

/// `sync_bn` weights each rank's running statistics by the samples it normalised, and
/// `check_replicas` names a tensor that differs between ranks. Two ranks as threads.
#[test]
fn bn_statistics_are_averaged_by_samples_and_drift_is_named() {
    use tch::nn::VarStore;
    use tch::{Device, Kind, Tensor};
    let port = free_port();
    let rank = move |r: usize| {
        thread::spawn(move || {
            let env = DistEnv {
                rank: r,
                world: 2,
                local_rank: r,
                master_addr: "127.0.0.1".into(),
                master_port: port,
                timeout: Duration::from_secs(30),
            };
            let d = Dist::connect(env, Device::Cpu).expect("connect");
            let vs = VarStore::new(Device::Cpu);
            let site = oats_train::nn::NormSite::new(&vs.root(), 2, &[1.0], true, None);
            let (clean, adv) = (&site.bns[0][0], &site.bns[0][1]);
            // Rank 0 normalises 3 samples of mean 1 through the clean BN, rank 1 one sample
            // of mean 5; nobody uses the adversarial BN, whose statistics differ per rank.
            let x = Tensor::full(
                [if r == 0 { 3 } else { 1 }, 2, 1, 1],
                if r == 0 { 1.0 } else { 5.0 },
                (Kind::Float, Device::Cpu),
            );
            let cond = oats_train::nn::Cond {
                enc: None,
                n_clean: i64::MAX,
            };
            let _ = site.forward(
                &x,
                &cond,
                oats_train::nn::Pass {
                    train: true,
                    width: 0,
                },
            );
            let _ = adv.running_mean.shallow_clone().fill_(r as f64);
            let before = Vec::<f32>::try_from(&clean.running_mean).expect("values");
            d.sync_bn(&[clean, adv]).expect("sync");
            let mean = Vec::<f32>::try_from(&clean.running_mean).expect("values");
            let adv_mean = Vec::<f32>::try_from(&adv.running_mean).expect("values");
            let drift = d
                .check_replicas(&[(
                    "bn.adv.running_mean".into(),
                    adv.running_mean.shallow_clone(),
                )])
                .map_err(|e| e.to_string());
            (before, mean, adv_mean, drift)
        })
    };
    let (h0, h1) = (rank(0), rank(1));
    let (b0, m0, a0, e0) = h0.join().expect("rank 0");
    let (b1, m1, _, _) = h1.join().expect("rank 1");
    // Momentum 0.1 from 0: rank 0's running mean is 0.1, rank 1's 0.5.
    assert!(
        (b0[0] - 0.1).abs() < 1e-6 && (b1[0] - 0.5).abs() < 1e-6,
        "{b0:?} {b1:?}"
    );
    let want = (3.0 * 0.1 + 1.0 * 0.5) / 4.0;
    for m in [&m0, &m1] {
        assert!(m.iter().all(|v| (v - want).abs() < 1e-6), "{m:?} vs {want}");
    }
    assert_eq!(a0, vec![0.0, 0.0], "an unused BN keeps its value");
    let e0 = e0.expect_err("replicas differ");
    assert!(e0.contains("bn.adv.running_mean"), "{e0}");
}

/// Launch mistakes are refused with the flag or variable and value, before anything runs.
#[test]
fn bad_launch_settings_are_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(tmp.path(), &split_blind_config(1));
    let run = tmp.path().join("run");
    /// (flags, environment, expected words of the error)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--nproc", "0"], &[], "--nproc = 0"),
        (&["--nproc", "2", "--rank", "1"], &[], "leave out --rank"),
        (
            &["--nproc", "2"],
            &[("WORLD_SIZE", "2")],
            "WORLD_SIZE is set",
        ),
        (&["--rank", "1"], &[], "--rank = 1: needs --world-size"),
        (
            &["--local-rank", "1"],
            &[],
            "--local-rank = 1: needs --world-size",
        ),
        (&[], &[("WORLD_SIZE", "two")], "WORLD_SIZE = two"),
        (
            &[],
            &[("WORLD_SIZE", "2"), ("RANK", "2")],
            "rank = 2: must be below the world size 2",
        ),
        (&[], &[("WORLD_SIZE", "2")], "set --rank or $RANK"),
        (
            &["--world-size", "2", "--rank", "0", "--dist-timeout", "0"],
            &[],
            "--dist-timeout = 0",
        ),
        (
            &[],
            &[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "99999")],
            "MASTER_PORT = 99999",
        ),
    ];
    for (flags, env, want) in cases {
        let mut c = train(&run, &cfg, flags);
        for (k, v) in *env {
            c.env(k, v);
        }
        let out = bounded(c.spawn().expect("spawn"), Duration::from_secs(60), want);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} {env:?} must fail");
        assert!(
            err.contains(want),
            "{flags:?} {env:?}: want {want:?} in {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!run.exists(), "nothing was written");
}

/// A wide ResNet (dropout) is refused under data parallelism, with the reason, instead of
/// training with per-rank masks that break the one-process order of random numbers.
#[test]
fn dropout_models_are_refused_under_data_parallelism() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = split_blind_config(1);
    c.arch = oats_train::config::Arch::Wrn16_8;
    c.validate().expect("valid");
    // WRN on 28×28 gray images builds and would train; the refusal comes first.
    let cfg = write_config(tmp.path(), &c);
    let run = tmp.path().join("run");
    let out = bounded(
        train(&run, &cfg, &["--nproc", "2"]).spawn().expect("spawn"),
        Duration::from_secs(120),
        "wrn under --nproc 2",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("wrn16-8 uses dropout (0.3), which data-parallel training does not support"),
        "{err}"
    );
}
