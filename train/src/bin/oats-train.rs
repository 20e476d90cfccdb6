//! oats-train: train OAT / OATS models and the PGD-AT / PGD-ATS baselines, and evaluate
//! checkpoints (SA and worst-case RA per (λ, width)).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use oats_train::checkpoint;
use oats_train::config::{DeviceChoice, Mode, TrainConfig};
use oats_train::data::{self, DatasetKind, Split};
use oats_train::eval::{self, Attack, AttackSettings};
use oats_train::{OatsModel, Trainer};

#[derive(Parser)]
#[command(name = "oats-train", version, about = "Train once-for-all adversarially robust classifiers (OAT/OATS) and their PGD-AT/PGD-ATS baselines", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a model; checkpoints after every epoch into --run-dir.
    Train(TrainArgs),
    /// SA and robust accuracy of a checkpoint per (λ, width); writes a YAML report.
    Eval(EvalArgs),
    /// Print the embedded default config (a starting point for your own YAML).
    DefaultConfig,
    /// Time one training step on synthetic data (for bench/train-step.sh, which runs the same
    /// step in PyTorch eager side by side). Prints `tch <mode> <arch> <images/s>`.
    BenchStep(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// oat | oats | pgd-at | pgd-ats
    #[arg(long, default_value = "oat")]
    mode: String,
    /// small (1×28×28) | resnet34 (3×32×32)
    #[arg(long, default_value = "small")]
    arch: String,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, default_value_t = 7)]
    pgd_steps: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Intra-op threads (torch.set_num_threads on the PyTorch side too).
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

#[derive(Args)]
struct TrainArgs {
    /// YAML config; without it the embedded default (OATS, small preset, bundled Fashion-MNIST subset).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where checkpoint.safetensors, config.yaml and metrics.csv go.
    #[arg(long, default_value = "runs/default")]
    run_dir: PathBuf,
    /// Continue the run in --run-dir from its last completed epoch.
    #[arg(long)]
    resume: bool,
    /// Start over even if --run-dir holds a checkpoint (it is overwritten after the first epoch).
    #[arg(long, conflicts_with = "resume")]
    fresh: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Override: training mode (oat, oats, pgd-at, pgd-ats).
    #[arg(long)]
    mode: Option<String>,
    /// Override: fixed λ of a pgd-at / pgd-ats baseline.
    #[arg(long)]
    lambda: Option<f64>,
    /// Override: number of epochs (with --resume: extend the run).
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Override: data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override: use only the first N training samples.
    #[arg(long)]
    limit: Option<usize>,
    /// Override: stop each epoch after N batches (smoke tests).
    #[arg(long)]
    max_batches: Option<usize>,
    /// Override: norm (dual | normal).
    #[arg(long)]
    norm: Option<String>,
    /// Override: widths, comma-separated.
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<f64>>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Checkpoint file (or a run directory holding checkpoint.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// λ values (default: the training λ set); unseen λ inside the trained range are interpolated.
    #[arg(long, value_delimiter = ',')]
    lambdas: Option<Vec<f64>>,
    /// Widths (default: all of the model's).
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<f64>>,
    /// Attacks, comma-separated: pgd<N>, fgsm, mifgsm, apgd[-ce][N]. RA = per-sample worst case.
    #[arg(long, value_delimiter = ',', default_value = "pgd20")]
    attacks: Vec<String>,
    /// L∞ radius (default: the training ε).
    #[arg(long)]
    eps: Option<f64>,
    /// PGD step size (default ε/4).
    #[arg(long)]
    step_size: Option<f64>,
    /// PGD random restarts.
    #[arg(long, default_value_t = 1)]
    restarts: usize,
    /// Split to evaluate on: val or test.
    #[arg(long, default_value = "test")]
    split: String,
    /// Data directory (default: the training config's).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Evaluate on the first N samples only.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 256)]
    batch: i64,
    /// YAML report path.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    #[arg(long)]
    seed: Option<u64>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Train(a) => train(a),
        Cmd::Eval(a) => evaluate(a),
        Cmd::BenchStep(a) => bench_step(a),
        Cmd::DefaultConfig => {
            print!("{}", oats_train::config::DEFAULT_CONFIG);
            Ok(())
        }
    }
}

fn load_split(
    cfg: &TrainConfig,
    dir: &Path,
    split: Split,
    limit: Option<usize>,
) -> Result<data::Dataset> {
    let kind: DatasetKind = cfg.data.kind.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    data::load(kind, dir, split, limit).with_context(|| {
        format!(
            "loading {:?} split of {} from {}",
            split,
            cfg.data.kind,
            dir.display()
        )
    })
}

fn train(a: TrainArgs) -> Result<()> {
    let device = oats_train::device::resolve(a.device)?;
    let ckpt = a.run_dir.join(checkpoint::FILE_NAME);
    if a.resume {
        if !ckpt.exists() {
            bail!("--resume: no checkpoint at {}", ckpt.display());
        }
        let meta = checkpoint::load(&ckpt)?.meta;
        let cfg = meta.config;
        let dir = a.data_dir.clone().unwrap_or(cfg.data.dir.clone());
        let train = load_split(&cfg, &dir, Split::Train, cfg.data.limit)?;
        let val = load_split(&cfg, &dir, Split::Val, cfg.data.val_limit)?;
        let mut t = Trainer::resume(&a.run_dir, &train, &val, device, a.epochs)?;
        t.quiet = a.quiet;
        eprintln!(
            "resuming {} at epoch {}/{} on {:?}",
            a.run_dir.display(),
            t.epoch(),
            t.model.config().epochs,
            device
        );
        t.run()?;
        return report_done(&t);
    }
    if ckpt.exists() && !a.fresh {
        bail!(
            "{} already holds a checkpoint: pass --resume to continue it, --fresh to start over, or another --run-dir",
            a.run_dir.display()
        );
    }
    let mut cfg = match &a.config {
        Some(p) => TrainConfig::load(p)?,
        None => TrainConfig::embedded_default(),
    };
    if let Some(m) = &a.mode {
        cfg.mode = serde_yaml::from_str::<Mode>(m)
            .map_err(|_| anyhow::anyhow!("--mode {m}: expected oat, oats, pgd-at or pgd-ats"))?;
        if !cfg.mode.slimmable() {
            cfg.widths = vec![1.0];
        }
        if !cfg.mode.conditioned() && cfg.lambda.is_none() && a.lambda.is_none() {
            bail!("--mode {m} needs --lambda");
        }
    }
    if let Some(l) = a.lambda {
        cfg.lambda = Some(l);
    }
    if let Some(n) = &a.norm {
        cfg.norm = serde_yaml::from_str(n)
            .map_err(|_| anyhow::anyhow!("--norm {n}: expected dual or normal"))?;
    }
    if let Some(w) = a.widths.clone() {
        cfg.widths = w;
    }
    macro_rules! set {
        ($($f:ident => $($path:ident).+),*) => { $(if let Some(v) = a.$f.clone() { cfg.$($path).+ = v.into(); })* };
    }
    set!(epochs => epochs, batch_size => batch_size, seed => seed, data_dir => data.dir);
    if a.limit.is_some() {
        cfg.data.limit = a.limit;
    }
    if a.max_batches.is_some() {
        cfg.max_batches = a.max_batches;
    }
    cfg.validate()?;
    let train = load_split(&cfg, &cfg.data.dir, Split::Train, cfg.data.limit)?;
    let val = load_split(&cfg, &cfg.data.dir, Split::Val, cfg.data.val_limit)?;
    eprintln!(
        "training {} ({:?}) on {} train / {} val images of {}, {} epochs on {:?} → {}",
        cfg.mode.as_str(),
        cfg.arch,
        train.len(),
        val.len(),
        cfg.data.kind,
        cfg.epochs,
        device,
        a.run_dir.display()
    );
    let mut t = Trainer::new(cfg, &train, &val, &a.run_dir, device)?;
    t.quiet = a.quiet;
    t.run()?;
    report_done(&t)
}

fn report_done(t: &Trainer) -> Result<()> {
    eprintln!("done: {}", t.run_dir.join(checkpoint::FILE_NAME).display());
    Ok(())
}

fn evaluate(a: EvalArgs) -> Result<()> {
    let device = oats_train::device::resolve(a.device)?;
    let path = if a.checkpoint.is_dir() {
        a.checkpoint.join(checkpoint::FILE_NAME)
    } else {
        a.checkpoint.clone()
    };
    let (model, _) = OatsModel::load(&path, device)?;
    let cfg = model.config().clone();
    let attacks: Vec<Attack> = a
        .attacks
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let split = match a.split.as_str() {
        "val" => Split::Val,
        "test" => Split::Test,
        s => bail!("--split {s}: expected val or test"),
    };
    let dir = a.data_dir.clone().unwrap_or(cfg.data.dir.clone());
    let ds = load_split(&cfg, &dir, split, a.limit)?;
    let x = tch::Tensor::from_slice(&ds.images)
        .view([
            ds.len() as i64,
            ds.channels as i64,
            ds.height as i64,
            ds.width as i64,
        ])
        .to_device(device);
    let y = tch::Tensor::from_slice(&ds.labels).to_device(device);
    let mut s = AttackSettings::new(a.eps.unwrap_or(cfg.epsilon));
    if let Some(st) = a.step_size {
        s.pgd_step = st;
    }
    s.restarts = a.restarts.max(1);
    tch::manual_seed(a.seed.unwrap_or(cfg.seed) as i64);
    let lambdas = a.lambdas.clone().unwrap_or(cfg.train_lambdas());
    let widths = a.widths.clone().unwrap_or(model.widths().to_vec());
    let total = (lambdas.len() * widths.len() * ds.len()) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("eval [{bar:30}] {pos}/{len} samples ({elapsed}<{eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results = Vec::new();
    for &w in &widths {
        for &l in &lambdas {
            bar.set_message(format!("λ={l} w={w}"));
            results.push(eval::evaluate(
                &model, l, w, &x, &y, &attacks, &s, a.batch, &bar,
            )?);
        }
    }
    bar.finish_and_clear();
    let names: Vec<String> = attacks.iter().map(|a| a.to_string()).collect();
    println!(
        "{} ({}), {} split of {} ({} samples), ε = {:.4}",
        path.display(),
        cfg.mode.as_str(),
        a.split,
        cfg.data.kind,
        ds.len(),
        s.eps
    );
    print!("{:>6} {:>6} {:>7}", "λ", "width", "SA");
    for n in &names {
        print!(" {:>9}", format!("RA {n}"));
    }
    println!(" {:>9}", "RA worst");
    for r in &results {
        print!("{:>6} {:>6} {:>7.4}", r.lambda, r.width, r.sa);
        for n in &names {
            print!(" {:>9.4}", r.ra.get(n).copied().unwrap_or(f64::NAN));
        }
        println!(" {:>9.4}", r.ra_worst.unwrap_or(f64::NAN));
    }
    if let Some(out) = &a.out {
        let sha = checkpoint::sha256_hex(&std::fs::read(&path)?);
        let rep = eval::EvalReport {
            checkpoint: path.display().to_string(),
            checkpoint_sha256: sha,
            split: a.split.clone(),
            epsilon: s.eps,
            pgd_step: s.pgd_step,
            restarts: s.restarts,
            attacks: names,
            results,
        };
        checkpoint::write_atomic(out, serde_yaml::to_string(&rep)?.as_bytes())?;
        eprintln!("report: {}", out.display());
    }
    Ok(())
}

fn bench_step(a: BenchArgs) -> Result<()> {
    use rand::SeedableRng;
    tch::set_num_threads(a.threads);
    let mut cfg = TrainConfig::embedded_default();
    cfg.mode = serde_yaml::from_str(&a.mode)
        .map_err(|_| anyhow::anyhow!("--mode {}: expected oat, oats, pgd-at or pgd-ats", a.mode))?;
    cfg.arch = serde_yaml::from_str(&a.arch)
        .map_err(|_| anyhow::anyhow!("--arch {}: expected small or resnet34", a.arch))?;
    if !cfg.mode.slimmable() {
        cfg.widths = vec![1.0];
    }
    if !cfg.mode.conditioned() {
        cfg.lambda = Some(1.0);
    }
    cfg.batch_size = a.batch;
    cfg.attack.steps = a.pgd_steps;
    let (c, hw) = if cfg.arch == oats_train::config::Arch::Small {
        (1, 28)
    } else {
        (3, 32)
    };
    if cfg.arch != oats_train::config::Arch::Small {
        cfg.epsilon = 8.0 / 255.0;
        cfg.attack.step_size = 2.0 / 255.0;
    }
    cfg.validate()?;
    let n = a.batch;
    let ds = data::Dataset {
        images: tch::Tensor::rand(
            [(n * c * hw * hw) as i64],
            (tch::Kind::Float, tch::Device::Cpu),
        )
        .try_into()?,
        labels: (0..n as i64).map(|i| i % 10).collect(),
        channels: c,
        height: hw,
        width: hw,
        class_names: (0..10).map(|i| i.to_string()).collect(),
    };
    let tmp = std::env::temp_dir().join(format!("oats-bench-{}", std::process::id()));
    let mut t = Trainer::new(cfg, &ds, &ds, &tmp, tch::Device::Cpu)?;
    let x = tch::Tensor::from_slice(&ds.images).view([n as i64, c as i64, hw as i64, hw as i64]);
    let y = tch::Tensor::from_slice(&ds.labels);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    t.step(&x, &y, 0.1, &mut rng);
    let start = std::time::Instant::now();
    for _ in 0..a.iters.max(1) {
        t.step(&x, &y, 0.1, &mut rng);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "tch {} {} {:.2}",
        a.mode,
        a.arch,
        (n * a.iters.max(1)) as f64 / secs
    );
    Ok(())
}
