//! The report of the "free but no worse" study (issue #18, experiments/no-worse/): reads the
//! finished runs under a runs folder (`m<capacity>-s<seed>-<model>`, each with its `eval.yaml`
//! and its checkpoint or the checkpoint's record; run.sh keeps the records of finished runs,
//! committed, in experiments/no-worse/results/runs), and writes
//! - `<out>/gap.md`: per (capacity, λ sampling) the shortfall of the OAT model against each
//!   dedicated PGD-AT model (`oats_calibrate::gap`: at OAT's best measured λ, the worse of
//!   the SA and RA differences), averaged over the seeds present, with 95 % intervals and the
//!   per-seed values, and the cell's worst;
//!   Then OATS against dedicated PGD-ATS (`m2-s<seed>-oats-ends`, `m2-s<seed>-pgd-ats-l<λ>`),
//!   the same measure at each width;
//!   then the full-split anchors (`full-m1-s0-{oat-ref,pgd-at-l0,pgd-at-l1}`, all 50,000
//!   training images) beside the same models on the study's subset, at λ = 0 and 1;
//!   then the measured points behind them (SA / RA per seed) and each model's training cost
//!   (one once-for-all model against the four dedicated ones);
//! - `<out>/gap.png`, `<out>/gap.svg`: the shortfall against capacity, a panel per dedicated
//!   λ and one for the worst of the four, a line per sampling;
//! - at the top of gap.md, the one-sentence answer (`oats_calibrate::gap::answer`), marked
//!   provisional while cells lack a seed.
//!
//! - with a third argument (README.md), the answer and the shortfall tables also replace the
//!   README's block between its `no-worse report` markers.
//!
//! `cargo run -p oats-calibrate --features ort --example no_worse -- experiments/no-worse/results/runs experiments/no-worse/results README.md`
//!
//! Cells with a missing run are reported as such; unfinished runs (no eval.yaml) are skipped.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use oats_calibrate::compare::{envelope, RunResult};
use oats_calibrate::gap::{self, Acc, Cell, Est};
use oats_calibrate::plot::{write_plot, GapPanel, GapPlot};

/// The dedicated models' λ, as named in the configs (`pgd-at-l<λ>`, `pgd-ats-l<λ>`).
const DEDICATED: [&str; 4] = ["0", "0.2", "0.4", "1"];
/// OATS against PGD-ATS: the capacity and widths of gen.sh's slimmable runs.
const OATS_CAPACITY: usize = 2;
const OATS_WIDTHS: [f64; 3] = [0.5, 0.75, 1.0];
/// Seeds per cell (gen.sh); a cell is complete when each has all four dedicated models.
const SEEDS: usize = 2;
/// The OAT runs (`m<cap>-s<seed>-<name>`) per λ sampling, and the capacities each is studied
/// at (gen.sh: the third factor, `robust`, at ×1 and ×2 only).
const SAMPLINGS: [(&str, &str, &[usize]); 3] = [
    ("oat-ref", "reference", &[1, 2, 4]),
    ("oat-ends", "ends", &[1, 2, 4]),
    ("oat-robust", "robust", &[1, 2]),
];

fn load(root: &Path, name: &str) -> Option<RunResult> {
    let dir = root.join(name);
    if !dir.join("eval.yaml").exists() {
        return None;
    }
    match RunResult::load(&dir) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("skipping {}: {e}", dir.display());
            None
        }
    }
}

/// The shortfall of the once-for-all run against one dedicated run, both at `width`.
fn shortfall(oat: &RunResult, ded: &RunResult, width: f64) -> Option<Est> {
    let env = envelope(oat, width);
    let p = ded
        .report
        .results
        .iter()
        .find(|p| oats_train::config::same_setting(p.width, width))?;
    env.gap(Acc {
        sa: p.sa,
        ra: p.ra_worst?,
        n: p.samples,
    })
    .shortfall
}

/// One table row of [`row`].
struct Row {
    md: String,
    /// Per dedicated λ ([`DEDICATED`]), the mean shortfall over the seeds present.
    per_lambda: Vec<Option<Est>>,
    /// The cell's worst: the mean over seeds of each seed's largest shortfall, where a seed
    /// has all four, and how many seeds that is.
    worst: Option<Est>,
    seeds: usize,
}

/// One table row: the once-for-all run `ofa` (`m<cap>-s<seed>-<ofa>`) against the four
/// dedicated runs `<dedicated>-l<λ>` at `width`, or `None` when no pair is evaluated yet.
fn row(
    root: &Path,
    label: &str,
    (cap, ofa, dedicated, width): (usize, &str, &str, f64),
    missing: &mut Vec<String>,
) -> Option<Row> {
    let mut cells = Vec::new();
    for lambda in DEDICATED {
        let mut per_seed = Vec::new();
        for seed in 0..SEEDS {
            let o = format!("m{cap}-s{seed}-{ofa}");
            let d = format!("m{cap}-s{seed}-{dedicated}-l{lambda}");
            match (load(root, &o), load(root, &d)) {
                (Some(o), Some(d)) => {
                    if let Some(g) = shortfall(&o, &d, width) {
                        per_seed.push((seed, g));
                    }
                }
                (o_run, d_run) => {
                    if o_run.is_none() {
                        missing.push(o);
                    }
                    if d_run.is_none() {
                        missing.push(d);
                    }
                }
            }
        }
        cells.push(per_seed);
    }
    if cells.iter().all(Vec::is_empty) {
        return None;
    }
    let mut row = format!("| {label} |");
    let mut per_lambda = Vec::new();
    for per_seed in &cells {
        let ests: Vec<Est> = per_seed.iter().map(|(_, e)| *e).collect();
        let mean = gap::mean(&ests);
        per_lambda.push(mean);
        match mean {
            None => row.push_str(" – |"),
            Some(m) => {
                let seeds: Vec<String> = per_seed
                    .iter()
                    .map(|(s, e)| format!("s{s} {:+.1}", e.value))
                    .collect();
                row.push_str(&format!(" {m} ({}) |", seeds.join(", ")));
            }
        }
    }
    // The cell's worst: per seed the largest of the four gaps, when all four exist.
    let mut worst_per_seed: Vec<Est> = Vec::new();
    for seed in 0..SEEDS {
        let gaps: Vec<Est> = cells
            .iter()
            .filter_map(|ps| ps.iter().find(|(s, _)| *s == seed).map(|(_, e)| *e))
            .collect();
        if gaps.len() == DEDICATED.len() {
            if let Some(w) = gaps.into_iter().max_by(|a, b| a.value.total_cmp(&b.value)) {
                worst_per_seed.push(w);
            }
        }
    }
    let worst = gap::mean(&worst_per_seed);
    match worst {
        Some(w) => row.push_str(&format!(
            " {w} ({} seed{}) |\n",
            worst_per_seed.len(),
            if worst_per_seed.len() == 1 { "" } else { "s" }
        )),
        None => row.push_str(" incomplete |\n"),
    }
    Some(Row {
        md: row,
        per_lambda,
        worst,
        seeds: worst_per_seed.len(),
    })
}

/// A run's cost: training seconds (the sum of its epochs' wall times, so a killed and resumed
/// run counts each epoch once) and evaluation seconds (run.sh's `eval-time.txt`, when kept).
fn cost(root: &Path, name: &str) -> Option<(f64, Option<f64>)> {
    let r = load(root, name)?;
    let train: f64 = r.history.iter().map(|m| m.seconds).sum();
    let eval = std::fs::read_to_string(root.join(name).join("eval-time.txt"))
        .ok()
        .and_then(|t| {
            t.trim()
                .strip_prefix("eval_seconds:")
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
    Some((train, eval))
}

/// "1.6 h + 48 min eval" for a mean over seeds, or "–".
fn cost_cell(per_seed: &[(f64, Option<f64>)]) -> String {
    if per_seed.is_empty() {
        return "–".into();
    }
    let n = per_seed.len() as f64;
    let train = per_seed.iter().map(|c| c.0).sum::<f64>() / n / 3600.0;
    let evals: Vec<f64> = per_seed.iter().filter_map(|c| c.1).collect();
    let mut cell = format!("{train:.2} h");
    if !evals.is_empty() {
        let e = evals.iter().sum::<f64>() / evals.len() as f64 / 60.0;
        cell.push_str(&format!(" + {e:.0} min eval"));
    }
    cell.push_str(&format!(
        " ({} seed{})",
        per_seed.len(),
        if per_seed.len() == 1 { "" } else { "s" }
    ));
    cell
}

/// The summed cost of the four dedicated runs `<prefix>-l<λ>`, when all four are kept.
fn four_cost(root: &Path, prefix: &str) -> Option<(f64, Option<f64>)> {
    let four: Vec<_> = DEDICATED
        .iter()
        .filter_map(|l| cost(root, &format!("{prefix}-l{l}")))
        .collect();
    (four.len() == DEDICATED.len()).then(|| {
        (
            four.iter().map(|c| c.0).sum(),
            four.iter().map(|c| c.1).sum::<Option<f64>>(),
        )
    })
}

/// The training cost table: per capacity, each once-for-all run against the four dedicated
/// runs it replaces (their sum, for seeds that have all four). Wall times on one libtorch
/// thread of a 2-core machine, beside other work: loose, but side by side.
fn cost_table(root: &Path) -> String {
    let mut md = String::from(
        "| capacity | OAT reference | OAT ends | OAT robust | PGD-AT, the four models together |\n|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    for cap in [1usize, 2, 4] {
        let ofas = SAMPLINGS.map(|(name, _, _)| name);
        rows.push((format!("×{cap}"), cap, ofas, "pgd-at"));
    }
    let mut any = false;
    for (label, cap, ofas, ded) in rows {
        let mut cells = Vec::new();
        for ofa in ofas {
            let per_seed: Vec<_> = (0..SEEDS)
                .filter_map(|seed| cost(root, &format!("m{cap}-s{seed}-{ofa}")))
                .collect();
            cells.push(cost_cell(&per_seed));
        }
        let per_seed: Vec<_> = (0..SEEDS)
            .filter_map(|seed| four_cost(root, &format!("m{cap}-s{seed}-{ded}")))
            .collect();
        cells.push(cost_cell(&per_seed));
        if cells.iter().any(|c| c != "–") {
            any = true;
            md.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
        }
    }
    let oats: Vec<_> = (0..SEEDS)
        .filter_map(|seed| cost(root, &format!("m{OATS_CAPACITY}-s{seed}-oats-ends")))
        .collect();
    let pgd_ats: Vec<_> = (0..SEEDS)
        .filter_map(|seed| four_cost(root, &format!("m{OATS_CAPACITY}-s{seed}-pgd-ats")))
        .collect();
    if !oats.is_empty() || !pgd_ats.is_empty() {
        any = true;
        md.push_str(&format!(
            "| ×{OATS_CAPACITY} slimmable: OATS ends against PGD-ATS | – | {} | – | {} |\n",
            cost_cell(&oats),
            cost_cell(&pgd_ats)
        ));
    }
    if any {
        md
    } else {
        String::new()
    }
}

/// "SA / RA" (%, worst RA) of run `r` at λ `lambda` (as named in the configs) and `width`.
fn point(r: &RunResult, lambda: &str, width: f64) -> Option<String> {
    let l: f64 = lambda.parse().ok()?;
    let p = r.report.results.iter().find(|p| {
        oats_train::config::same_setting(p.width, width)
            && oats_train::config::same_setting(p.lambda, l)
    })?;
    let ra = p
        .ra_worst
        .map_or("–".to_string(), |ra| format!("{:.1}", 100.0 * ra));
    Some(format!("{:.1} / {ra}", 100.0 * p.sa))
}

/// The full-split anchors (gen.sh: `full-m1-s0-*`, ×1, seed 0, reference sampling, all
/// 50,000 training images: the 10-epoch table) beside the same three models on the
/// study's 15,000-image subset, so that a reader sees whether the subset shows the gap the
/// full split does: the OAT model and the dedicated PGD-AT models at the two ends (λ = 0, 1),
/// each with its shortfall.
fn anchors_table(root: &Path) -> String {
    let mut md = String::from(
        "| training images (×1, seed 0, reference) | OAT λ = 0 | PGD-AT λ = 0 | shortfall | OAT λ = 1 | PGD-AT λ = 1 | shortfall |\n|---|---|---|---|---|---|---|\n",
    );
    let mut any = false;
    for (label, prefix) in [
        ("15,000 (the study's subset)", "m1-s0"),
        ("50,000 (full split)", "full-m1-s0"),
    ] {
        let Some(oat) = load(root, &format!("{prefix}-oat-ref")) else {
            continue;
        };
        let mut cells = Vec::new();
        for lambda in ["0", "1"] {
            let ded = load(root, &format!("{prefix}-pgd-at-l{lambda}"));
            let dash = || "–".to_string();
            cells.push(point(&oat, lambda, 1.0).unwrap_or_else(dash));
            cells.push(
                ded.as_ref()
                    .and_then(|d| point(d, lambda, 1.0))
                    .unwrap_or_else(dash),
            );
            cells.push(
                ded.as_ref()
                    .and_then(|d| shortfall(&oat, d, 1.0))
                    .map_or_else(dash, |e| e.to_string()),
            );
        }
        any = true;
        md.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    }
    if any {
        md
    } else {
        String::new()
    }
}

/// The measured points behind the shortfalls: SA / worst RA (%) of each run at the
/// dedicated models' λ, per seed, at `width`.
fn points_table(root: &Path, caps: &[usize], cols: &[(&str, &str)], width: f64) -> String {
    let mut md = format!(
        "| capacity, λ | {} |\n|---|{}\n",
        cols.iter().map(|c| c.0).collect::<Vec<_>>().join(" | "),
        "---|".repeat(cols.len())
    );
    let mut any = false;
    for &cap in caps {
        for lambda in DEDICATED {
            let mut cells = Vec::new();
            for (_, model) in cols {
                let mut per_seed = Vec::new();
                for seed in 0..SEEDS {
                    let name = if model.ends_with("-l") {
                        format!("m{cap}-s{seed}-{model}{lambda}")
                    } else {
                        format!("m{cap}-s{seed}-{model}")
                    };
                    let Some(r) = load(root, &name) else { continue };
                    if let Some(p) = point(&r, lambda, width) {
                        per_seed.push(format!("s{seed} {p}"));
                    }
                }
                if per_seed.is_empty() {
                    cells.push("–".to_string());
                } else {
                    any = true;
                    cells.push(per_seed.join(", "));
                }
            }
            if cells.iter().any(|c| c != "–") {
                md.push_str(&format!(
                    "| ×{cap}, λ = {lambda} | {} |\n",
                    cells.join(" | ")
                ));
            }
        }
    }
    if any {
        md
    } else {
        String::new()
    }
}

/// The markers of the README block that [`splice`] rewrites.
const BEGIN: &str = "<!-- no-worse report: begin (written by calibrate/examples/no_worse.rs) -->";
const END: &str = "<!-- no-worse report: end -->";

/// Replaces what lies between [`BEGIN`] and [`END`] in `path` with `text`, so that the README
/// shows the report's numbers without a hand copy that could drift from them.
fn splice(path: &Path, text: &str) -> anyhow::Result<()> {
    let old =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(b), Some(e)) = (old.find(BEGIN), old.find(END)) else {
        bail!(
            "{}: no study block; it needs the lines {BEGIN} and {END}",
            path.display()
        );
    };
    let start = b + BEGIN.len();
    if e < start {
        bail!("{}: {END} comes before {BEGIN}", path.display());
    }
    let new = format!("{}\n\n{}\n{}", &old[..start], text.trim(), &old[e..]);
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, new).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(out)) = (args.next(), args.next()) else {
        bail!(
            "usage: no_worse <runs folder, e.g. experiments/no-worse/results/runs> <output folder> \
             [README.md: its block between {BEGIN} and {END} becomes the answer and tables]"
        );
    };
    let (root, out) = (PathBuf::from(root), PathBuf::from(out));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut md = String::from(
        "| capacity | λ sampling | λ = 0 | λ = 0.2 | λ = 0.4 | λ = 1 | worst of the four |\n|---|---|---|---|---|---|---|\n",
    );
    // Figure panels: one per dedicated λ, then the worst of the four; in each, per sampling,
    // (capacity, shortfall).
    let mut panels: Vec<BTreeMap<&str, Vec<(f64, Est)>>> =
        vec![BTreeMap::new(); DEDICATED.len() + 1];
    let mut missing = Vec::new();
    let mut oat_cells = Vec::new();
    for cap in [1usize, 2, 4] {
        for (oat_name, sampling, caps) in SAMPLINGS {
            if !caps.contains(&cap) {
                continue;
            }
            let label = format!("×{cap} | {sampling}");
            let mut cell = Cell {
                label: format!("×{cap} with the {sampling} sampling"),
                worst: None,
                seeds: 0,
            };
            if let Some(r) = row(&root, &label, (cap, oat_name, "pgd-at", 1.0), &mut missing) {
                md.push_str(&r.md);
                let points = r.per_lambda.iter().chain(std::iter::once(&r.worst));
                for (panel, est) in panels.iter_mut().zip(points) {
                    if let Some(e) = est {
                        panel.entry(sampling).or_default().push((cap as f64, *e));
                    }
                }
                (cell.worst, cell.seeds) = (r.worst, r.seeds);
            }
            oat_cells.push(cell);
        }
    }
    // OATS against PGD-ATS, width by width (gen.sh: ×2, `ends` sampling).
    let mut oats_md = String::new();
    let mut oats_cells = Vec::new();
    for width in OATS_WIDTHS {
        let label = format!("×{OATS_CAPACITY}, width {width} | ends");
        let mut cell = Cell {
            label: format!("width {width}"),
            worst: None,
            seeds: 0,
        };
        if let Some(r) = row(
            &root,
            &label,
            (OATS_CAPACITY, "oats-ends", "pgd-ats", width),
            &mut missing,
        ) {
            oats_md.push_str(&r.md);
            (cell.worst, cell.seeds) = (r.worst, r.seeds);
        }
        oats_cells.push(cell);
    }
    if !oats_md.is_empty() {
        md.push_str(
            "\n**OATS against dedicated PGD-ATS** (same measure, at each width):\n\n\
             | capacity, width | λ sampling | λ = 0 | λ = 0.2 | λ = 0.4 | λ = 1 | worst of the four |\n\
             |---|---|---|---|---|---|---|\n",
        );
        md.push_str(&oats_md);
    }
    md.push_str(
        "\nShortfall of the once-for-all model (OAT; OATS) against each dedicated one \
         (PGD-AT; PGD-ATS), in accuracy points: at its best measured λ, the worse of the SA \
         and RA differences (positive: the dedicated model is better; ≤ 1: one once-for-all \
         λ is within 1 point of it in both). Mean over the seeds present ± 95 % interval, \
         per-seed values in brackets. Test[:1000], worst of PGD-20 and APGD-CE, ε = 0.1. \
         Written by `calibrate/examples/no_worse.rs`.\n",
    );
    let anchors = anchors_table(&root);
    if !anchors.is_empty() {
        md.push_str(
            "\n**The full-split anchors**: does the 15,000-image subset show the full \
             split's gap? The same three ×1 seed-0 models trained on all 50,000 images (SA / \
             worst RA, %; shortfall as above):\n\n",
        );
        md.push_str(&anchors);
    }
    // What the README shows: the answer (prepended below), the shortfall tables and anchors.
    let summary_len = md.len();
    let pts = points_table(
        &root,
        &[1, 2, 4],
        &[
            ("OAT reference", "oat-ref"),
            ("OAT ends", "oat-ends"),
            ("OAT robust", "oat-robust"),
            ("PGD-AT", "pgd-at-l"),
        ],
        1.0,
    );
    if !pts.is_empty() {
        md.push_str(
            "\n**The measured points** (SA / worst RA, %, per seed; the once-for-all model at \
             each dedicated model's λ; its other λ enter the shortfall too):\n\n",
        );
        md.push_str(&pts);
    }
    for width in OATS_WIDTHS {
        let pts = points_table(
            &root,
            &[OATS_CAPACITY],
            &[("OATS ends", "oats-ends"), ("PGD-ATS", "pgd-ats-l")],
            width,
        );
        if !pts.is_empty() {
            md.push_str(&format!("\nOATS and PGD-ATS at width {width}:\n\n"));
            md.push_str(&pts);
        }
    }
    let costs = cost_table(&root);
    if !costs.is_empty() {
        md.push_str(
            "\n**Training cost** (wall time on one libtorch thread of the 2-core machine, \
             beside other work, so loose; mean over the seeds present. \"Free\": one \
             once-for-all model against the four dedicated ones):\n\n",
        );
        md.push_str(&costs);
    }
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        md.push_str(&format!("\nNot (yet) evaluated: {}.\n", missing.join(", ")));
    }
    // The one-sentence answer the issue asks for, computed from the table (gap::answer: a cell
    // counts with both seeds; it holds when its mean worst shortfall is ≤ 1 point).
    let answer = format!(
        "**Answer.** {}\n\n**OATS** (×{OATS_CAPACITY}, ends sampling, width by width): {}\n\n",
        gap::answer(
            "One OAT model replaces the four dedicated PGD-AT models (λ = 0, 0.2, 0.4, 1)",
            &oat_cells,
            SEEDS,
            1.0
        ),
        gap::answer(
            "one OATS model replaces the four dedicated PGD-ATS models",
            &oats_cells,
            SEEDS,
            1.0
        )
    );
    let summary = format!("{answer}{}", &md[..summary_len]);
    let md = answer + &md;
    if let Some(readme) = args.next() {
        splice(Path::new(&readme), &summary)?;
        eprintln!("updated the study block of {readme}");
    }
    let md_path = out.join("gap.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    let titles = DEDICATED
        .iter()
        .map(|l| format!("against PGD-AT λ = {l}"))
        .chain(std::iter::once(
            "worst of the four (seeds with all four)".to_string(),
        ));
    let fig = GapPlot {
        title: "\"Free but no worse\": OAT against dedicated PGD-AT".into(),
        subtitle: "shortfall of one OAT model (at its best λ, the worse of the SA and RA differences) · Fashion-MNIST 15k, 10 epochs · test[:1000], worst of PGD-20 and APGD-CE, ε = 0.1".into(),
        panels: titles
            .zip(panels)
            .map(|(title, series)| GapPanel {
                title,
                series: series
                    .into_iter()
                    .map(|(s, v)| (format!("λ sampling: {s}"), v))
                    .collect(),
            })
            .collect(),
        capacities: vec![1.0, 2.0, 4.0],
    };
    write_plot(&fig, &out.join("gap.png"), &out.join("gap.svg"))?;
    print!("{md}");
    eprintln!("wrote {}, gap.png, gap.svg", md_path.display());
    Ok(())
}
