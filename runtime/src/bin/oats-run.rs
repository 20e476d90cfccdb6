//! Classify images with an oats export.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use oats_io::outln;
use oats_runtime::manifest::latency_key;
use oats_runtime::{Backend, Batch, OatsModel, Objective, Options, Policy, Selector};

/// Classify images with an oats export (manifest.yaml + ONNX graphs).
///
/// Choose the configuration explicitly (--id, or --lambda with an optional --width), by nearest λ
/// (--nearest), or by a policy over the metrics recorded in the manifest (--min-ra, --min-sa,
/// --max-latency-ms, --max-macs, --objective). Without any of these the first graph of the
/// manifest runs. With an export that has a package (manifest schema v2), --lambda takes any
/// λ in the trained range: a λ without a graph file is derived from the package on the spot.
/// Policies need calibrated metrics (oats-calibrate) and latencies
/// (oats-bench --write-manifest); a policy that cannot be checked is an error.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Export directory holding manifest.yaml.
    export_dir: PathBuf,
    /// Images to classify (PNG, JPEG, BMP, GIF, PNM, TIFF, WebP). Resized (shorter side) and
    /// centre-cropped to the model's input size.
    #[arg(required = true)]
    images: Vec<PathBuf>,

    /// Run the graph with this manifest id.
    #[arg(long, conflicts_with_all = ["lambda", "min_ra", "min_sa", "max_latency_ms", "max_macs", "objective"])]
    id: Option<String>,
    /// Robustness weight λ in [0, 1]. Any λ in the trained range when the export has a
    /// package (derived on the spot); otherwise one the manifest lists (or see --nearest).
    #[arg(long)]
    lambda: Option<f64>,
    /// Channel width, e.g. 0.5, 0.75, 1.0 (needs --lambda; default: the widest trained).
    #[arg(long, requires = "lambda")]
    width: Option<f64>,
    /// Use the λ closest to --lambda instead of requiring an exact match.
    #[arg(long, requires = "lambda")]
    nearest: bool,

    /// Policy: minimum robust accuracy (worst case over the calibrated attacks).
    #[arg(long, conflicts_with = "lambda")]
    min_ra: Option<f64>,
    /// Policy: minimum standard (clean) accuracy.
    #[arg(long, conflicts_with = "lambda")]
    min_sa: Option<f64>,
    /// Policy: maximum median latency in ms, read from the manifest at --latency-key.
    #[arg(long, conflicts_with = "lambda")]
    max_latency_ms: Option<f64>,
    /// Policy: maximum multiply-accumulates per image.
    #[arg(long, conflicts_with = "lambda")]
    max_macs: Option<u64>,
    /// Policy: what to optimise among the graphs that qualify [default: max-ra].
    #[arg(long, value_enum, conflicts_with = "lambda")]
    objective: Option<Objective>,
    /// Latency entry used by the policy [default: "<backend>/b1"].
    #[arg(long)]
    latency_key: Option<String>,

    /// Inference backend: tract (pure Rust), ort, ort-cuda (need the `ort` feature and
    /// ORT_DYLIB_PATH pointing at libonnxruntime.so).
    #[arg(long, value_enum, ignore_case = true, default_value = "tract")]
    backend: Backend,
    /// Number of classes to print per image.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    /// Intra-op threads (ONNX Runtime only).
    #[arg(long)]
    threads: Option<usize>,
    /// Models with early exits: the entropy threshold of each side exit, comma-separated
    /// (an image leaves at the first exit whose softmax entropy, in nats, is below its
    /// threshold; 0 never leaves early). Default: the thresholds oats-calibrate fitted; an
    /// uncalibrated exit model runs its whole network.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    thresholds: Option<Vec<f64>>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        oats_io::exit_with(e.as_ref());
    }
}

fn run(args: Args) -> Result<()> {
    let options = Options {
        backend: args.backend,
        threads: args.threads,
        preload: false,
        ..Options::default()
    };
    let model = OatsModel::open(&args.export_dir, &options)
        .with_context(|| format!("opening export {}", args.export_dir.display()))?;

    if let Some(selector) = selector(&args, model.manifest()) {
        model
            .select(&selector)
            .context("selecting a configuration")?;
    }

    if let Some(t) = &args.thresholds {
        model
            .set_thresholds(Some(t.clone()))
            .context("--thresholds")?;
    }
    let manifest = model.manifest();
    let batch = Batch::from_images(&args.images, &manifest.input)?;
    let prediction = model.infer(&batch)?;
    let c = &prediction.config;
    outln!(
        "{} {} (lambda {}, width {}, {} backend, {} MACs)",
        if c.derived {
            "derived from the package:"
        } else {
            "graph"
        },
        c.id,
        c.lambda,
        c.width,
        c.backend,
        c.macs
    )?;
    let after_blocks = manifest
        .graphs
        .iter()
        .find(|g| g.id == c.id)
        .and_then(|g| g.exits.as_ref())
        .map(|e| e.after_blocks.clone())
        .unwrap_or_default();
    for (i, (path, top)) in args
        .images
        .iter()
        .zip(prediction.top_k(args.top_k))
        .enumerate()
    {
        outln!("{}", path.display())?;
        if let Some(k) = prediction.exits.as_ref().and_then(|e| e.get(i)) {
            match after_blocks.get(*k) {
                Some(b) => outln!("  answered by early exit {k} (after block {b})")?,
                None => outln!("  answered by the final classifier (no early exit was confident)")?,
            }
        }
        for r in top {
            outln!(
                "  {:>6.2}%  {}",
                r.prob * 100.0,
                manifest.class_name(r.class)
            )?;
        }
    }
    // What the configuration that served was measured to do (after the predictions, whose
    // lines come first for scripts that read them).
    if let Some(p) = c
        .metrics
        .as_ref()
        .and_then(|m| m.operating_point(c.lambda, c.width))
    {
        let worst = p
            .ra_worst_interval()
            .map_or_else(|| "-".to_string(), |i| i.to_string());
        outln!(
            "measured for graph {} on {} {} samples (ε = {}): SA {} %, worst-case RA {} % (95% CI)",
            c.id,
            p.samples,
            p.split,
            p.epsilon,
            p.sa_interval(),
            worst
        )?;
    }
    Ok(())
}

fn selector(args: &Args, manifest: &oats_runtime::Manifest) -> Option<Selector> {
    if let Some(id) = &args.id {
        return Some(Selector::Id(id.clone()));
    }
    if let Some(lambda) = args.lambda {
        // The widest trained width (NaN never wins, and an empty list leaves 1.0).
        let widest = || {
            manifest
                .training
                .widths
                .iter()
                .copied()
                .chain(manifest.graphs.iter().map(|g| g.width))
                .fold(f64::NAN, f64::max)
        };
        let width = args.width.unwrap_or_else(|| match widest() {
            w if w.is_finite() => w,
            _ => 1.0,
        });
        return Some(if args.nearest {
            Selector::NearestLambda { lambda, width }
        } else {
            Selector::Explicit { lambda, width }
        });
    }
    let policy = Policy {
        min_sa: args.min_sa,
        min_ra: args.min_ra,
        max_macs: args.max_macs,
        max_latency_ms: args.max_latency_ms,
        latency_key: args
            .latency_key
            .clone()
            .unwrap_or_else(|| latency_key(args.backend.name(), 1)),
        objective: args.objective.unwrap_or(Objective::MaxRa),
    };
    let any_policy = args.min_sa.is_some()
        || args.min_ra.is_some()
        || args.max_macs.is_some()
        || args.max_latency_ms.is_some()
        || args.latency_key.is_some()
        || args.objective.is_some();
    any_policy.then_some(Selector::Policy(policy))
}
