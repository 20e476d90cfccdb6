//! oats-calibrate: measured SA / RA / latency of every exported graph, written into the manifest.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use oats_calibrate::{
    parse_attacks, plot, report, CalibrateOptions, LatencySettings, DEFAULT_ATTACKS,
};
use oats_io::{out, outln};
use oats_runtime::Backend;
use oats_train::config::DeviceChoice;

#[derive(Parser)]
#[command(
    name = "oats-calibrate",
    version,
    about = "Measure clean accuracy, robust accuracy and latency of every exported (λ, width) graph, or of a λ grid derived from the package, on this device, and write them into the manifest",
    long_about = "Measure every exported (λ, width) configuration of an oats model on this device, so that the runtime's selection policy can pick by measured numbers.\n\n\
For each graph of <export>/manifest.yaml: clean accuracy (SA) and robust accuracy (RA) on the validation split (never the test split), with the attacks run against the training framework's model at the same (λ, width) in eval mode (the exported graph has no input gradients). RA is given per attack and as the per-sample worst case over all attacks. The clean images and, per sample, the worst-case adversarial image are then replayed through the runtime's graph (tract, and ONNX Runtime when built with the `ort` feature and ORT_DYLIB_PATH is set): any sample classified differently from the trainer, except at a tie (top-2 logit margin < 1e-4), or clean logits that differ by more than 1e-4, fail the command naming the graph. Latency (p50/p90/p99) comes from oats-runtime's benchmark.\n\n\
--lambdas calibrates a λ grid chosen here instead of the manifest's graphs (with --widths, at those widths; default every trained width), straight from the export's package: any λ in the trained range, e.g. `--lambdas 0:0.05:1` for 0, 0.05, …, 1. Each configuration the manifest does not list yet is added to it as a derived configuration (no file: the runtime derives it from the package when it is selected), with its measured metrics, so that selection policies can choose it.\n\n\
Writes: the metrics of every graph into manifest.yaml (atomically), calibration.yaml (per graph numbers, sanity checks) and the SA–RA frontier frontier.png / frontier.svg, all beside the manifest.\n\n\
Sanity checks, printed and stored: (a) PGD-20 RA of the full-width, largest-λ graph at ε × {0.5, 1, 2, 4} and at ε = 0.5 must fall with ε and be ≤ 0.05 at ε = 0.5; (b) the worst case is ≤ every attack, and PGD/APGD are not weaker than FGSM (when both are run); (c) the replayed clean logits equal the trainer's at that (λ, width), i.e. the BN branch attacked is the one baked into the graph. Failed (a)/(b) checks are warnings (errors with --strict)."
)]
struct Cli {
    /// Checkpoint file, or a run directory holding checkpoint.safetensors (must be the checkpoint the export was made from).
    #[arg(long, required_unless_present = "show")]
    checkpoint: Option<PathBuf>,
    /// Measure nothing: print the trade-off table of the calibration already stored in <export>/calibration.yaml.
    #[arg(long)]
    show: bool,
    /// Export directory (holds manifest.yaml; the report and plots are written there).
    #[arg(long)]
    export: PathBuf,
    /// Calibrate this λ grid instead of the manifest's graphs, derived from the export's package: comma-separated values and inclusive ranges <start>:<step>:<end>, e.g. `0:0.05:1` or `0,0.15,0.5`.
    #[arg(long)]
    lambdas: Option<String>,
    /// Widths of the --lambdas grid (same grammar; default: every trained width).
    #[arg(long, requires = "lambdas")]
    widths: Option<String>,
    /// Dataset directory (default: the one in the model's training config). Its validation split is used.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Attacks, comma-separated, each `<attack>[x<restarts>][@<step>]` (the grammar of
    /// `oats-train eval`): pgd<steps>, apgd[<iters>], fgsm, mifgsm; PGD's step defaults to ε/4.
    #[arg(long, default_value = DEFAULT_ATTACKS)]
    attacks: String,
    /// L∞ radius in pixel units (images in [0, 1]); default: the manifest's training ε.
    #[arg(long)]
    eps: Option<f64>,
    /// Use only the first N validation samples.
    #[arg(long)]
    limit: Option<usize>,
    /// Backends to replay and time with: tract, ort (default: tract, plus ort when built with `ort` and ORT_DYLIB_PATH is set).
    #[arg(long, value_delimiter = ',')]
    backend: Option<Vec<Backend>>,
    /// Another model's calibration.yaml to draw as baseline points (e.g. a PGD-AT model); repeatable.
    #[arg(long)]
    baseline: Vec<PathBuf>,
    /// Samples for the ε-sweep sanity check (0: skip it).
    #[arg(long, default_value_t = 200)]
    sanity_limit: usize,
    /// Samples per attack batch.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Batch sizes to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    bench_batch: Vec<usize>,
    /// Timed inferences per graph, backend and batch size (after 10 % as warm-up).
    #[arg(long, default_value_t = 100)]
    bench_iters: usize,
    /// Seed of the attacks' random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device for the attacks (the trainer's model).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    device: DeviceChoice,
    /// Fail (exit status 2) when a sanity check of (a) or (b) fails.
    #[arg(long)]
    strict: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Calibrate only the manifest's int8 graphs (made by `oats-export --int8`): SA and RA
    /// under the float configuration's worst-case images replayed (transfer) and under the
    /// attacks run on the int8 graph itself with straight-through gradients (direct), worst
    /// case of both. Without it, int8 graphs are calibrated with the rest.
    #[arg(long, conflicts_with = "lambdas")]
    int8_only: bool,
    /// Configurations with side exits (early exits): fit the entropy thresholds on the
    /// validation split so that the routed prediction costs at most this fraction of the
    /// whole network's MACs [default: 0.7], then measure it clean, under the main-branch, average,
    /// max-average and routed attacks, and under a slowdown attack.
    #[arg(long, value_name = "FRACTION", conflicts_with = "exit_mix")]
    exit_budget: Option<f64>,
    /// Configurations with side exits: fit the thresholds so that these fractions of the
    /// validation images leave at each exit, the final classifier last (e.g. 0.3,0.3,0.4),
    /// instead of a MACs budget.
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "FRACTIONS")]
    exit_mix: Option<Vec<f64>>,
}

fn main() {
    match run(Cli::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => oats_io::exit_with(e.as_ref()),
    }
}

fn ort_available() -> bool {
    cfg!(feature = "ort")
        && std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| std::path::Path::new(&p).is_file())
}

fn run(cli: Cli) -> Result<i32> {
    if cli.show {
        let path = cli.export.join(report::REPORT_FILE);
        let rep = oats_calibrate::CalibrationReport::load(&path)
            .with_context(|| format!("reading the calibration of {}", cli.export.display()))?;
        outln!(
            "{} on {} {} samples (ε = {}, attacks {}), {}; accuracies in %",
            rep.model_id,
            rep.samples,
            rep.split,
            rep.eps,
            rep.attacks_pretty,
            rep.device
        )?;
        out!("{}", rep.table())?;
        return Ok(0);
    }
    let Some(checkpoint) = &cli.checkpoint else {
        anyhow::bail!("--checkpoint is required unless --show is given");
    };
    let start = Instant::now();
    let device = oats_train::device::resolve(cli.device)?;
    let backends = match &cli.backend {
        Some(list) => list.clone(),
        None if ort_available() => vec![Backend::Tract, Backend::Ort],
        None => vec![Backend::Tract],
    };
    let grid = |flag: &str, text: &Option<String>| -> Result<Option<Vec<f64>>> {
        Ok(match text {
            Some(t) => Some(oats_calibrate::grid::parse_grid(flag, t)?),
            None => None,
        })
    };
    let opts = CalibrateOptions {
        lambdas: grid("--lambdas", &cli.lambdas)?,
        widths: grid("--widths", &cli.widths)?,
        data_dir: cli.data.clone(),
        attacks: parse_attacks(&cli.attacks).context("--attacks")?,
        eps: cli.eps,
        limit: cli.limit,
        backends,
        baselines: cli.baseline.clone(),
        sanity_limit: cli.sanity_limit,
        batch: cli.batch,
        latency: LatencySettings {
            batches: cli.bench_batch.clone(),
            warmup: (cli.bench_iters / 10).max(1),
            iters: cli.bench_iters,
        },
        seed: cli.seed,
        quiet: cli.quiet,
        int8_only: cli.int8_only,
        exit_target: match cli.exit_mix {
            Some(m) => oats_calibrate::exits::ExitTarget::Mix(m),
            None => oats_calibrate::exits::ExitTarget::Budget(
                cli.exit_budget
                    .unwrap_or(oats_calibrate::exits::DEFAULT_BUDGET),
            ),
        },
        ..CalibrateOptions::new(&cli.export)
    };
    let rep = oats_calibrate::run(checkpoint, device, &opts)
        .with_context(|| format!("calibrating {}", cli.export.display()))?;
    outln!(
        "calibrated {} graphs of {} on {} {} samples (ε = {}, attacks {}) in {:.1}s on {}",
        rep.graphs.len(),
        rep.model_id,
        rep.samples,
        rep.split,
        rep.eps,
        rep.attacks_pretty,
        start.elapsed().as_secs_f64(),
        rep.device
    )?;
    out!("{}", rep.table())?;
    let s = &rep.sanity;
    let ties = match s.replay_disagreements {
        0 => "no sample classified differently".to_string(),
        k => format!("{k} samples classified differently, all at ties"),
    };
    if rep.graphs.iter().any(|g| g.int8.is_none()) {
        outln!("replay: every float graph agrees with the trainer's model ({ties}); clean logits within {:.0e} (max |Δ| {:.2e})", s.logit_tolerance, s.max_clean_logit_diff)?;
    }
    for g in rep
        .graphs
        .iter()
        .filter_map(|g| g.int8.as_ref().map(|i| (&g.id, i)))
    {
        let (id, i) = g;
        let per = |m: &std::collections::BTreeMap<String, usize>| {
            m.iter()
                .map(|(b, k)| format!("{b} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        outln!(
            "int8 {id}: engines vs the attacked reading: clean top-1 differs on [{}], direct verdict on [{}] of {} samples (counted against it: RA is the worst case)",
            per(&i.clean_disagreements),
            per(&i.direct_disagreements),
            rep.samples
        )?;
    }
    for sw in s.eps_sweep.iter().chain(&s.int8_eps_sweep) {
        let curve = sw
            .points
            .iter()
            .map(|p| {
                let i = oats_runtime::Interval::wilson_fraction(p.ra, sw.samples);
                format!("ε={}: {i}", p.eps)
            })
            .collect::<Vec<_>>()
            .join(", ");
        outln!(
            "ε sweep ({} on {}, {} samples, RA % with 95% CI): {curve} [{}]",
            sw.attack,
            sw.graph,
            sw.samples,
            if sw.passed { "ok" } else { "FAILED" }
        )?;
    }
    for w in &rep.warnings {
        outln!("warning: {w}")?;
    }
    outln!(
        "wrote {}, {} and {} / {} in {}",
        oats_runtime::manifest::MANIFEST_FILE,
        report::REPORT_FILE,
        plot::PNG_FILE,
        plot::SVG_FILE,
        cli.export.display()
    )?;
    Ok(if cli.strict && !s.passed { 2 } else { 0 })
}
