//! oats-export: one verified ONNX graph per (λ, width) of a trained model, plus manifest.yaml.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use oats_export::{export, ExportOptions, DEFAULT_TOLERANCE};
use oats_runtime::{Backend, Layout};
use oats_train::checkpoint;
use oats_train::config::DeviceChoice;
use oats_train::data::{self, Split};
use oats_train::trainer::to_tensors;
use oats_train::TchModel;

#[derive(Parser)]
#[command(
    name = "oats-export",
    version,
    about = "Bake each (λ, width) of a trained OAT/OATS model into its own ONNX graph (FiLM and BN folded into the convolutions), or only into the package a device derives them from, plus manifest.yaml",
    long_about = "Bake each (λ, width) of a trained OAT/OATS (or PGD-AT/PGD-ATS) model into its own ONNX graph with FiLM and BN folded into the convolutions and every layer sliced to the width, plus manifest.yaml. Every graph is run through tract (and ONNX Runtime when ORT_DYLIB_PATH points at the library) on real and random inputs and compared with the trainer's logits; the export fails, naming the graph, if any logit differs by more than --tolerance or any argmax differs. Graphs are staged in a fresh hidden directory beside --out and swapped into place only when all pass (atomically on Linux: --out is never missing).\n\nEvery export also writes package.safetensors: the model with each weight stored once (structure, unfolded weights, BN statistics and FiLM MLPs per site, the λ encoding), from which oats-graph derives the graph of any trained width and any λ in the trained range with the same arithmetic as these graphs. With --package-only that is all it writes besides the manifest (which lists every (λ, width) without a file) and the reference bundle: the device derives each configuration when it is selected, at the folded graphs' speed, and the verification runs the derived graphs.\n\n--out must be absent, an empty directory, or an earlier export (a valid manifest.yaml, the files it lists, and calibration.yaml / frontier.png / frontier.svg): anything else, such as a training run directory or your own files, is refused and left untouched. Two exports into one --out wait for each other."
)]
struct Cli {
    /// Checkpoint file, or a run directory holding checkpoint.safetensors.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output directory: absent, empty, or an earlier export (replaced atomically on success).
    #[arg(long)]
    out: PathBuf,
    /// Widths to export (default: all of the model's; 1.0 for OAT / PGD-AT).
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<f64>>,
    /// λ values to export (default: the training set). Unseen λ inside the trained range use the interpolated encoding.
    #[arg(long, value_delimiter = ',')]
    lambdas: Option<Vec<f64>>,
    /// One graph per width with a λ table selected by the int64 input `lambda_index` (≈|λ|× less storage).
    #[arg(long, conflicts_with = "package_only")]
    shared_weights: bool,
    /// Write no graph files, only package.safetensors: every (λ, width) is listed in the manifest and derived on the device (verified here by deriving it).
    #[arg(long)]
    package_only: bool,
    /// Backends to verify with: tract, ort (default: tract, plus ort when its library is available).
    #[arg(long, value_delimiter = ',')]
    verify: Option<Vec<Backend>>,
    /// Max |Δlogit| between graph and trainer.
    #[arg(long, default_value_t = DEFAULT_TOLERANCE)]
    tolerance: f64,
    /// Data directory for the real verification inputs (default: the training config's; random inputs only if unreadable).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    device: DeviceChoice,
    /// Also write an int8 (ONNX QDQ) graph for each exported configuration: per-channel
    /// symmetric int8 weights, per-tensor uint8 activations calibrated on training images,
    /// verified against the float configuration (top-1 agreement ≥ 99 %) in every --verify
    /// engine; per-layer errors in int8-report.yaml.
    #[arg(long)]
    int8: bool,
    /// Add int8 graphs to the existing export --out (made from this --checkpoint) without
    /// exporting again: its manifest, calibrated metrics and files stay as they are.
    #[arg(long, conflicts_with_all = ["int8", "package_only", "shared_weights", "lambdas", "widths"])]
    int8_only: bool,
    /// Training images the int8 activation ranges are calibrated on (the first N).
    #[arg(long, default_value_t = 512)]
    int8_calibration: usize,
    /// Validation images the int8 graphs are verified on (the first N).
    #[arg(long, default_value_t = 1000)]
    int8_verification: usize,
    /// Percentile of each activation's calibration values its int8 range covers at each end.
    #[arg(long, default_value_t = oats_export::int8::RANGE_PERCENTILE)]
    int8_percentile: f64,
    /// Least top-1 agreement of an int8 graph with its float configuration.
    #[arg(long, default_value_t = oats_export::int8::MIN_TOP1_AGREEMENT)]
    int8_min_agreement: f64,
    /// Quantize only these λ (default: every float configuration).
    #[arg(long, value_delimiter = ',')]
    int8_lambdas: Option<Vec<f64>>,
    /// Quantize only these widths (default: every float configuration's).
    #[arg(long, value_delimiter = ',')]
    int8_widths: Option<Vec<f64>>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        oats_io::exit_with(e.as_ref());
    }
}

fn ort_available() -> bool {
    cfg!(feature = "ort")
        && std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| std::path::Path::new(&p).is_file())
}

/// Largest `--tolerance`: logits differing by more than 1 are a different model, whatever the
/// reason; a larger bound (or NaN, which every comparison passes) would verify nothing.
const MAX_TOLERANCE: f64 = 1.0;

fn run(cli: Cli) -> Result<()> {
    let start = Instant::now();
    if !(cli.tolerance > 0.0 && cli.tolerance <= MAX_TOLERANCE) {
        anyhow::bail!(
            "--tolerance {}: must be in (0, {MAX_TOLERANCE}]",
            cli.tolerance
        );
    }
    let device = oats_train::device::resolve(cli.device)?;
    let path = if cli.checkpoint.is_dir() {
        cli.checkpoint.join(checkpoint::FILE_NAME)
    } else {
        cli.checkpoint.clone()
    };
    let (model, _) = TchModel::load(&path, device)?;
    // The hash of the bytes that were loaded, not of a second read of the file.
    let sha = model.source_sha256.clone().unwrap_or_default();
    let cfg = model.config().clone();
    let verify_with = match &cli.verify {
        Some(list) => list.clone(),
        None if ort_available() => vec![Backend::Tract, Backend::Ort],
        None => vec![Backend::Tract],
    };
    let dir = cli.data_dir.clone().unwrap_or(cfg.data.dir.clone());
    let real = match data::load(cfg.data.kind, &dir, Split::Val, Some(64)) {
        Ok(ds) => {
            // Data of another shape is refused, never verified on (nor replaced by random
            // inputs): the user pointed at the wrong data set.
            model
                .check_input(ds.channels as i64, ds.height as i64, ds.width as i64)
                .with_context(|| format!("verification data in {}", dir.display()))?;
            Some(to_tensors(&ds, tch::Device::Cpu)?.0)
        }
        // Data the user named must be read; only the training config's may be missing.
        Err(e) if cli.data_dir.is_some() => {
            return Err(e).with_context(|| format!("--data-dir {}", dir.display()))
        }
        Err(e) => {
            eprintln!(
                "warning: no real verification inputs ({e}); verifying on random inputs only"
            );
            None
        }
    };
    let opts = ExportOptions {
        lambdas: cli.lambdas.clone(),
        widths: cli.widths.clone(),
        layout: if cli.shared_weights {
            Layout::SharedWeights
        } else {
            Layout::Folded
        },
        package_only: cli.package_only,
        verify_with: verify_with.clone(),
        tolerance: cli.tolerance,
    };
    let bar = if cli.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("export [{bar:30}] {pos}/{len} graphs {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if cli.int8_only {
        let m = oats_runtime::Manifest::load(cli.out.join(oats_runtime::manifest::MANIFEST_FILE))
            .with_context(|| format!("--int8-only: {} must be an export", cli.out.display()))?;
        if m.source_checkpoint_sha256 != sha {
            anyhow::bail!(
                "--int8-only: {} was exported from checkpoint {}, not {} ({})",
                cli.out.display(),
                m.source_checkpoint_sha256,
                sha,
                path.display()
            );
        }
        return int8(&cli, &model, &dir, verify_with, &bar, start);
    }
    let report = export(&model, &sha, &cli.out, &opts, real.as_ref(), &bar)?;
    bar.finish_and_clear();
    let worst = report
        .checks
        .iter()
        .map(|c| c.max_abs_diff)
        .fold(0.0, f64::max);
    let backends: Vec<&str> = opts.verify_with.iter().map(|b| b.name()).collect();
    let files = report
        .manifest
        .graphs
        .iter()
        .filter_map(|g| g.file.as_ref())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let written = if files == 0 {
        "no graph files: derived from the package on the device".to_string()
    } else {
        format!(
            "{files} graph files, {:.1} KiB",
            report.bytes as f64 / 1024.0
        )
    };
    oats_io::outln!(
        "exported {} configurations ({written}) to {} in {:.2}s; verified with {} on {} checks, max |Δlogit| = {:.2e}",
        report.manifest.graphs.len(),
        report.dir.display(),
        start.elapsed().as_secs_f64(),
        backends.join("+"),
        report.checks.len(),
        worst
    )?;
    oats_io::outln!(
        "package: {} ({:.1} KiB, sha256 {}): trained λ {:?}, widths {:?}",
        report.package.file,
        report.package.bytes as f64 / 1024.0,
        report.package.sha256,
        cfg.train_lambdas(),
        model.widths()
    )?;
    oats_io::outln!(
        "{:>12} {:>6} {:>6} {:>10} {:>12}",
        "graph",
        "λ",
        "width",
        "params",
        "MACs"
    )?;
    for g in &report.manifest.graphs {
        oats_io::outln!(
            "{:>12} {:>6} {:>6} {:>10} {:>12}",
            g.id,
            g.lambda,
            g.width,
            g.params,
            g.macs
        )?;
    }
    if cli.int8 {
        return int8(&cli, &model, &dir, opts.verify_with, &bar, start);
    }
    Ok(())
}

/// The int8 step: calibration images from the training split, verification images from the
/// validation split; a summary per configuration.
fn int8(
    cli: &Cli,
    model: &TchModel,
    data_dir: &std::path::Path,
    verify_with: Vec<Backend>,
    bar: &ProgressBar,
    start: Instant,
) -> Result<()> {
    let cfg = model.config();
    let load = |split: Split, n: usize| -> Result<tch::Tensor> {
        let ds = data::load(cfg.data.kind, data_dir, split, Some(n))
            .with_context(|| format!("int8 {split:?} images in {}", data_dir.display()))?;
        model.check_input(ds.channels as i64, ds.height as i64, ds.width as i64)?;
        Ok(to_tensors(&ds, tch::Device::Cpu)?.0)
    };
    let calibration = load(Split::Train, cli.int8_calibration)?;
    let verification = load(Split::Val, cli.int8_verification)?;
    let describe =
        |split: &str, x: &tch::Tensor| format!("{} {split}[0..{}]", cfg.data.kind, x.size()[0]);
    let opts = oats_export::int8::Int8Options {
        lambdas: cli.int8_lambdas.clone(),
        widths: cli.int8_widths.clone(),
        calibration_images: describe("train", &calibration),
        verification_images: describe("val", &verification),
        calibration,
        verification,
        verify_with,
        percentile: cli.int8_percentile,
        min_top1_agreement: cli.int8_min_agreement,
    };
    bar.reset();
    bar.set_style(
        ProgressStyle::with_template("int8 [{bar:30}] {pos}/{len} configurations {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = oats_export::int8::add_int8(&cli.out, &opts, bar)?;
    bar.finish_and_clear();
    oats_io::outln!(
        "int8: {} configurations in {:.2}s (ranges from {}, verified on {}; per-layer errors in {})",
        report.configs.len(),
        start.elapsed().as_secs_f64(),
        report.calibration_images,
        report.verification_images,
        cli.out.join(oats_export::int8::REPORT_FILE).display()
    )?;
    oats_io::outln!(
        "{:>18} {:>9} {:>10} {:>12} {:>12} {:>10}",
        "int8 graph",
        "backend",
        "top-1 agr.",
        "max |Δlogit|",
        "mean |Δlogit|",
        "size ratio"
    )?;
    for c in &report.configs {
        for e in &c.engine {
            oats_io::outln!(
                "{:>18} {:>9} {:>9.2}% {:>12.4} {:>12.4} {:>10.3}",
                c.id,
                e.backend,
                100.0 * e.top1_agreement,
                e.max_logit_error,
                e.mean_logit_error,
                c.bytes as f64 / c.float_bytes as f64
            )?;
        }
    }
    Ok(())
}
