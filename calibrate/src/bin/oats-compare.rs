//! oats-compare: test-split results of several training runs side by side (table + plot).
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use oats_calibrate::compare::{self, RunResult};

#[derive(Parser)]
#[command(
    name = "oats-compare",
    version,
    about = "Put trained models side by side: a markdown table of SA / RA per (λ, width), their training cost, and one SA–RA plot",
    long_about = "Put trained models side by side: a markdown table of SA / RA per (λ, width), their training cost, and one SA–RA plot.\n\n\
Each RUN is a training run directory holding checkpoint.safetensors and eval.yaml, the test-split report of `oats-train eval --out <run>/eval.yaml`. The report must belong to the checkpoint (its sha256 is checked) and every run must have been evaluated the same way (split, ε, attacks, sample count); otherwise the command fails naming the two runs.\n\n\
In the plot, a λ-conditioned model (OAT, OATS) is a line through its λ points, one per width; a dedicated model (PGD-AT, PGD-ATS) is a triangle. With several widths, colour encodes width. Unseen λ (not in the training set, interpolated encoding) are marked \"(unseen)\".\n\n\
Example (the claim experiment, README \"Results\"):\n  oats-compare runs/claim/oat-dual runs/claim/oat-normal runs/claim/pgd-at-l* --out results/oat-vs-pgd-at --title \"OAT vs PGD-AT\""
)]
struct Cli {
    /// Training run directories (checkpoint.safetensors + eval.yaml).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Output path stem: writes <out>.md (tables), <out>.png and <out>.svg (plot); existing
    /// files there must be an earlier oats-compare output (the .md's first line marks it).
    #[arg(long)]
    out: PathBuf,
    /// Plot title.
    #[arg(
        long,
        default_value = "SA–RA: λ-conditioned models vs dedicated models"
    )]
    title: String,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        oats_io::exit_with(e.as_ref());
    }
}

fn run(cli: Cli) -> Result<()> {
    let with_ext = |ext: &str| {
        let mut p = cli.out.clone().into_os_string();
        p.push(format!(".{ext}"));
        PathBuf::from(p)
    };
    let (md_path, png, svg) = (with_ext("md"), with_ext("png"), with_ext("svg"));
    // Before any work: --out must not name a user's files.
    compare::ensure_outputs_replaceable(&md_path, &png, &svg)?;
    let runs = cli
        .runs
        .iter()
        .map(|d| RunResult::load(d).with_context(|| format!("run {}", d.display())))
        .collect::<Result<Vec<_>>>()?;
    compare::check_comparable(&runs)?;
    for r in &runs {
        if r.epochs < r.config.epochs {
            eprintln!(
                "warning: {} has finished {} of {} epochs",
                r.dir.display(),
                r.epochs,
                r.config.epochs
            );
        }
    }
    let gaps = compare::gap_table(&runs);
    let gaps = if gaps.is_empty() {
        gaps
    } else {
        format!("\n### Frontier gap (\"no worse\")\n\n{gaps}")
    };
    let md = format!(
        "## {}\n\n{}{gaps}\n### Training cost (this machine)\n\n{}",
        cli.title,
        compare::results_table(&runs),
        compare::cost_table(&runs)
    );
    if let Some(parent) = cli.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // Again: a file may have appeared meanwhile. The table is written first, so that the
    // plots are only ever written beside a table that marks them as this tool's.
    compare::ensure_outputs_replaceable(&md_path, &png, &svg)?;
    let file = format!("{}\n{md}", compare::TABLE_MARKER);
    oats_runtime::manifest::write_atomic(&md_path, file.as_bytes())?;
    compare::frontier(&runs, &cli.title).write_as(&png, &svg)?;
    // Printed after the files are written: a closed pipe (`| head`) loses nothing.
    oats_io::out!("{md}")?;
    eprintln!(
        "wrote {}, {}, {}",
        md_path.display(),
        png.display(),
        svg.display()
    );
    Ok(())
}
