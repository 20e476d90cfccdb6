//! oats-train: train OAT / OATS models and the PGD-AT / PGD-ATS baselines, and evaluate
//! checkpoints (SA and worst-case RA per (λ, width)).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use oats_io::{out, outln};
use oats_train::checkpoint;
use oats_train::config::{Arch, DeviceChoice, Mode, Overrides, TrainConfig};
use oats_train::data::{self, Split};
use oats_train::dist::{self as ddp, Dist, DistArgs, DistEnv, Start};
use oats_train::eval::{self, EvalOptions};
use oats_train::limits::{MAX_BATCH_SIZE, MAX_BENCH_ITERS, MAX_THREADS};
use oats_train::trainer::to_tensors;
use oats_train::{TchModel, Trainer};

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
    #[arg(long, value_enum, default_value_t = Mode::Oat)]
    mode: Mode,
    /// small: 1×28×28 inputs; any other: 3×32×32 (CIFAR shape).
    #[arg(long, value_enum, default_value_t = Arch::Small)]
    arch: Arch,
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
    /// Only an oats-train run's checkpoint, config.yaml and metrics.csv are ever replaced;
    /// other files of those names are refused, and nothing else in the directory is touched.
    #[arg(long, conflicts_with = "resume")]
    fresh: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    #[command(flatten)]
    overrides: Overrides,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    threads: Threads,
    /// Data-parallel training (README, "Data-parallel training"): `--nproc N` on one
    /// machine, or one process per rank with the torchrun variables or these flags.
    #[command(flatten, next_help_heading = "Data-parallel training")]
    dist: DistArgs,
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
    /// Attacks, comma-separated, each `<attack>[x<restarts>][@<step>]`: pgd<N>, fgsm, mifgsm,
    /// apgd[-ce][N]; e.g. `pgd20x2,apgd` (PGD-20 with 2 random restarts, APGD-CE), the same
    /// grammar as oats-calibrate. RA = per-sample worst case over them.
    #[arg(long, default_value = "pgd20")]
    attacks: String,
    /// L∞ radius (default: the training ε).
    #[arg(long)]
    eps: Option<f64>,
    /// PGD step size for attacks that do not set their own with `@<step>` (default ε/4).
    #[arg(long)]
    step_size: Option<f64>,
    /// Replaced by the attack grammar: write `pgd20x2` for PGD-20 with 2 restarts.
    #[arg(long, hide = true)]
    restarts: Option<usize>,
    /// Split to evaluate on: val or test.
    #[arg(long, default_value = "test")]
    split: Split,
    /// Data directory (default: the training config's).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Evaluate on the first N samples only.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// YAML report path (an existing file there must be an earlier eval report: nothing else is replaced).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Seeds the attacks' random starts, the same for every configuration (default: the
    /// training seed), as oats-calibrate does: a configuration's numbers do not depend on
    /// which others were evaluated.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    threads: Threads,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        oats_io::exit_with(e.as_ref());
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Train(a) => train(a),
        Cmd::Eval(a) => evaluate(a),
        Cmd::BenchStep(a) => bench_step(a),
        Cmd::DefaultConfig => Ok(out!("{}", oats_train::config::DEFAULT_CONFIG)?),
    }
}

/// `--threads` of train and eval (one definition, so both say the same).
#[derive(Args)]
struct Threads {
    /// Intra-op CPU threads for libtorch (default: OMP_NUM_THREADS, else one per core). Give
    /// each process 1 when several run side by side on one machine: processes that each take
    /// every core oversubscribe it and all run several times slower.
    #[arg(long)]
    threads: Option<i32>,
}

/// `--threads`: libtorch's intra-op thread count, unless left to its default.
fn set_threads(threads: Option<i32>) -> Result<()> {
    if let Some(n) = threads {
        if !(1..=MAX_THREADS).contains(&n) {
            bail!("--threads {n}: must be in 1..={MAX_THREADS}");
        }
        tch::set_num_threads(n);
    }
    Ok(())
}

fn load_split(
    cfg: &TrainConfig,
    dir: &Path,
    split: Split,
    limit: Option<usize>,
) -> Result<data::Dataset> {
    data::load(cfg.data.kind, dir, split, limit).with_context(|| {
        format!(
            "loading the {} split of {} from {}",
            split,
            cfg.data.kind,
            dir.display()
        )
    })
}

fn train(a: TrainArgs) -> Result<()> {
    // Before --nproc too, so that a bad value is refused once rather than by every rank (each
    // is started with the same flags).
    set_threads(a.threads.threads)?;
    if let Some(n) = a.dist.nproc {
        if a.dist.rank.is_some() || a.dist.world_size.is_some() || a.dist.local_rank.is_some() {
            bail!("--nproc {n} starts the ranks itself: leave out --rank, --world-size and --local-rank");
        }
        if std::env::var_os("WORLD_SIZE").is_some() {
            bail!("--nproc {n} starts the ranks itself, but WORLD_SIZE is set: unset it, or start the ranks yourself without --nproc");
        }
        if a.dist.master_addr.is_some() {
            bail!("--nproc runs every rank on this machine (127.0.0.1): leave out --master-addr");
        }
        let args = ddp::strip_nproc(std::env::args_os().skip(1));
        return Ok(ddp::launch_local(n, &args, a.dist.master_port)?);
    }
    let Some(env) = DistEnv::resolve(&a.dist)? else {
        let device = oats_train::device::resolve(a.device)?;
        let (mut t, _, _) = prepare(&a, device)?;
        t.run()?;
        return report_done(&t);
    };
    // One GPU per rank on a machine: cuda:LOCAL_RANK.
    let device = match oats_train::device::resolve(a.device)? {
        tch::Device::Cuda(_) => {
            let gpus = tch::Cuda::device_count();
            if env.local_rank as i64 >= gpus {
                bail!(
                    "rank {}: local rank {} needs GPU cuda:{}, but this machine has {gpus}: set LOCAL_RANK (or --local-rank) to this process's index on its machine",
                    env.rank, env.local_rank, env.local_rank
                );
            }
            tch::Device::Cuda(env.local_rank)
        }
        d => d,
    };
    let (rank, world) = (env.rank, env.world);
    let dist = Dist::connect(env, device)?;
    let mut t = if dist.is_root() {
        let backend = dist.backend();
        let (t, train, val) = prepare(&a, device)?;
        let b = t.model.config().batch_size;
        eprintln!(
            "data-parallel: {world} ranks ({backend}); each global batch of {b} is split into {}–{} rows per rank",
            b / world,
            b.div_ceil(world)
        );
        t.distribute(dist, &train, &val)?
    } else {
        let start = Start::receive(&dist)?;
        let cfg = &start.meta.config;
        let dir = a.overrides.data_dir.clone().unwrap_or(cfg.data.dir.clone());
        let train = load_split(cfg, &dir, Split::Train, cfg.data.limit)
            .with_context(|| format!("rank {rank}"))?;
        let val = load_split(cfg, &dir, Split::Val, cfg.data.val_limit)
            .with_context(|| format!("rank {rank}"))?;
        Trainer::join(dist, start, &train, &val, &a.run_dir, device)?
    };
    t.run()?;
    if t.is_root() {
        report_done(&t)?;
    }
    Ok(())
}

/// The trainer of a single process or of rank 0: a new run, or the one in --run-dir resumed.
fn prepare(a: &TrainArgs, device: tch::Device) -> Result<(Trainer, data::Dataset, data::Dataset)> {
    let ckpt = a.run_dir.join(checkpoint::FILE_NAME);
    if a.resume {
        if !ckpt.exists() {
            bail!("--resume: no checkpoint at {}", ckpt.display());
        }
        let fixed = Overrides {
            epochs: None,
            data_dir: None,
            ..a.overrides.clone()
        };
        if fixed != Overrides::default() {
            bail!("--resume continues the run with its saved config: only --epochs and --data-dir may be given");
        }
        let meta = checkpoint::load(&ckpt)?.meta;
        let cfg = meta.config;
        let dir = a.overrides.data_dir.clone().unwrap_or(cfg.data.dir.clone());
        let train = load_split(&cfg, &dir, Split::Train, cfg.data.limit)?;
        let val = load_split(&cfg, &dir, Split::Val, cfg.data.val_limit)?;
        let mut t = Trainer::resume(&a.run_dir, &train, &val, device, a.overrides.epochs)?;
        t.quiet = a.quiet;
        eprintln!(
            "resuming {} at epoch {}/{} on {:?}",
            a.run_dir.display(),
            t.epoch(),
            t.model.config().epochs,
            device
        );
        return Ok((t, train, val));
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
    cfg.apply(&a.overrides)?;
    let train = load_split(&cfg, &cfg.data.dir, Split::Train, cfg.data.limit)?;
    let val = load_split(&cfg, &cfg.data.dir, Split::Val, cfg.data.val_limit)?;
    eprintln!(
        "training {} ({}) on {} train / {} val images of {}, {} epochs on {:?} → {}",
        cfg.mode,
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
    Ok((t, train, val))
}

fn report_done(t: &Trainer) -> Result<()> {
    eprintln!("done: {}", t.run_dir.join(checkpoint::FILE_NAME).display());
    Ok(())
}

fn evaluate(a: EvalArgs) -> Result<()> {
    if a.restarts.is_some() {
        bail!("--restarts was replaced by the attack grammar: write e.g. --attacks pgd20x2 for PGD-20 with 2 random restarts");
    }
    if let Some(out) = &a.out {
        // Before the evaluation: a wrong --out must not cost it.
        oats_io::ensure_replaceable(out, "an oats-train eval report", eval::is_eval_report)?;
    }
    set_threads(a.threads.threads)?;
    let device = oats_train::device::resolve(a.device)?;
    let path = if a.checkpoint.is_dir() {
        a.checkpoint.join(checkpoint::FILE_NAME)
    } else {
        a.checkpoint.clone()
    };
    let (model, _) = TchModel::load(&path, device)?;
    let cfg = model.config().clone();
    // Every flag is checked before the data is loaded and anything runs: a NaN λ, a width the
    // model does not have or a batch of 10¹² is an error naming the flag, never clamped.
    if !(1..=MAX_BATCH_SIZE).contains(&a.batch) {
        bail!("--batch {}: must be in 1..={MAX_BATCH_SIZE}", a.batch);
    }
    if a.limit == Some(0) {
        bail!("--limit 0: must be ≥ 1 (leave it out to evaluate the whole split)");
    }
    let eps = a.eps.unwrap_or(cfg.epsilon);
    if !(eps.is_finite() && (0.0..=1.0).contains(&eps)) {
        bail!("--eps {eps}: must be a finite number in [0, 1] (pixel units)");
    }
    let lambdas = a.lambdas.clone().unwrap_or(cfg.train_lambdas());
    let widths = a.widths.clone().unwrap_or(model.widths().to_vec());
    if lambdas.is_empty() || widths.is_empty() {
        bail!("--lambdas and --widths need at least one value");
    }
    for &l in &lambdas {
        model.cond_for(l).context("--lambdas")?;
    }
    for &w in &widths {
        model.width_index(w).context("--widths")?;
    }
    let mut attacks = eval::parse_attacks(&a.attacks)?;
    if let Some(st) = a.step_size {
        if !(st.is_finite() && st > 0.0 && st <= 1.0) {
            bail!("--step-size {st}: must be in (0, 1]");
        }
        for s in attacks
            .iter_mut()
            .filter(|s| matches!(s.attack, eval::Attack::Pgd { .. }))
        {
            s.step.get_or_insert(st);
        }
    }
    let dir = a.data_dir.clone().unwrap_or(cfg.data.dir.clone());
    let ds = load_split(&cfg, &dir, a.split, a.limit)?;
    model
        .check_input(ds.channels as i64, ds.height as i64, ds.width as i64)
        .with_context(|| format!("the {} split in {}", a.split, dir.display()))?;
    model
        .check_labels(&ds.labels)
        .with_context(|| format!("the {} split in {}", a.split, dir.display()))?;
    let (x, y) = to_tensors(&ds, tch::Device::Cpu)?;
    let seed = a.seed.unwrap_or(cfg.seed);
    let opts = EvalOptions {
        eps,
        attacks,
        batch: a.batch,
        seed,
        keep_worst: false,
    };
    let total = (lambdas.len() * widths.len() * ds.len()) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("eval [{bar:30}] {pos}/{len} samples ({elapsed}<{eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let split = a.split.to_string();
    let configs: Vec<(f64, f64)> = widths
        .iter()
        .flat_map(|&w| lambdas.iter().map(move |&l| (l, w)))
        .collect();
    let results = eval::evaluate_grid(&model, &configs, &x, &y, &opts, &split, &bar)?;
    bar.finish_and_clear();
    let rep = eval::EvalReport {
        checkpoint: path.display().to_string(),
        checkpoint_sha256: model.source_sha256.clone().unwrap_or_default(),
        split,
        epsilon: eps,
        pgd_step: a.step_size.unwrap_or(eps / 4.0),
        attacks: opts.attacks.iter().map(|s| s.key()).collect(),
        seed: Some(seed),
        results,
    };
    outln!(
        "{} ({}), {} split of {} ({} samples), ε = {:.4}; accuracies in % with 95 % Wilson intervals",
        path.display(),
        cfg.mode.as_str(),
        rep.split,
        cfg.data.kind,
        ds.len(),
        eps
    )?;
    out!("{}", rep.table())?;
    if let Some(out) = &a.out {
        // Again: the file may have appeared during the evaluation.
        oats_io::ensure_replaceable(out, "an oats-train eval report", eval::is_eval_report)?;
        checkpoint::write_atomic(out, serde_yaml::to_string(&rep)?.as_bytes())?;
        eprintln!("report: {}", out.display());
    }
    Ok(())
}

fn bench_step(a: BenchArgs) -> Result<()> {
    use rand::SeedableRng;
    set_threads(Some(a.threads))?;
    if !(1..=MAX_BENCH_ITERS).contains(&a.iters) {
        bail!("--iters {}: must be in 1..={MAX_BENCH_ITERS}", a.iters);
    }
    let mut cfg = TrainConfig::embedded_default();
    cfg.set_mode(a.mode);
    cfg.arch = a.arch;
    if !cfg.mode.conditioned() {
        cfg.lambda = Some(1.0);
    }
    cfg.batch_size = a.batch;
    cfg.attack.steps = a.pgd_steps;
    let gray = matches!(cfg.arch, Arch::Small | Arch::SmallDeep);
    let (c, hw) = if gray { (1, 28) } else { (3, 32) };
    if !gray {
        cfg.epsilon = 8.0 / 255.0;
        cfg.attack.step_size = 2.0 / 255.0;
    }
    cfg.validate().context("--batch / --pgd-steps")?;
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
    let (x, y) = to_tensors(&ds, tch::Device::Cpu)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    t.step(&x, &y, 0.1, &mut rng)?;
    let start = std::time::Instant::now();
    for _ in 0..a.iters {
        t.step(&x, &y, 0.1, &mut rng)?;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    outln!(
        "tch {} {} {:.2}",
        a.mode,
        a.arch,
        (n * a.iters) as f64 / secs
    )?;
    Ok(())
}
