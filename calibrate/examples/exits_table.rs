//! The early-exit results (issue #16, experiments/exits/): reads the calibrations that
//! `experiments/exits/run.sh measure` wrote and prints the README's tables as Markdown:
//! - cost: per λ, the model without exits against the model with exits routed at each MACs
//!   budget, clean and under the slowdown attack, and with every exit forced (the chaining
//!   cost): mean MACs per image and wall-clock ms per image in each runtime at batch 1 and 64
//!   (the exit model's calibration times its routes and its plain graph side by side; the
//!   plain graph has exactly the no-exit model's operators and shapes);
//! - accuracy: SA and worst-case RA (95 % intervals) of the model without exits, of the exit
//!   model's final classifier, and of its routed prediction per attack.
//!
//! `cargo run -p oats-calibrate --example exits_table -- runs/exits > table.md`
use std::path::Path;

use anyhow::{bail, Context};
use oats_calibrate::exits::WallClock;
use oats_calibrate::{CalibrationReport, GraphCalibration};
use oats_runtime::Interval;

fn load(path: &Path) -> anyhow::Result<CalibrationReport> {
    CalibrationReport::load(path).with_context(|| format!("reading {}", path.display()))
}

fn pct(x: f64, n: usize) -> String {
    Interval::wilson_fraction(x, n).to_string()
}

fn clock(w: &[WallClock], batch: usize, pick: fn(&WallClock) -> f64) -> String {
    w.iter()
        .find(|w| w.batch == batch)
        .map_or("-".into(), |w| format!("{:.3}", pick(w)))
}

fn main() -> anyhow::Result<()> {
    let Some(root) = std::env::args().nth(1) else {
        bail!("usage: exits_table <runs folder, e.g. runs/exits>");
    };
    let root = Path::new(&root);
    let plain = load(&root.join("oats-plain/calibration/calibration.yaml"))?;
    let mut budgets: Vec<(f64, CalibrationReport)> = Vec::new();
    for e in std::fs::read_dir(root.join("oats-exits"))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(b) = name.strip_prefix("calibration-b") {
            let path = e.path().join("calibration.yaml");
            if path.exists() {
                budgets.push((
                    b.parse().context("budget in the folder name")?,
                    load(&path)?,
                ));
            }
        }
    }
    budgets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if budgets.is_empty() {
        bail!(
            "no calibration-b<budget> under {}",
            root.join("oats-exits").display()
        );
    }
    let backends = &budgets[0].1.backends;
    let find = |r: &CalibrationReport, l: f64| -> Option<GraphCalibration> {
        r.graphs
            .iter()
            .find(|g| {
                (g.point.lambda - l).abs() < 1e-9
                    && g.exits.is_some() == r.graphs[0].exits.is_some()
            })
            .cloned()
    };

    println!(
        "Cost per image ({} validation images; wall clock: median of interleaved rounds over 64 images, ms per image):\n",
        budgets[0].1.samples
    );
    let mut head = vec!["λ".to_string(), "model".into(), "MACs (× full)".into()];
    for b in backends {
        for batch in [1, 64] {
            head.push(format!("{b} b{batch}"));
        }
    }
    println!("| {} |", head.join(" | "));
    println!("|{}", "---|".repeat(head.len()));
    for p in &plain.graphs {
        let l = p.point.lambda;
        let row = |label: String, macs: String, cells: Vec<String>| {
            println!("| {l} | {label} | {macs} | {} |", cells.join(" | "));
        };
        // The whole network, timed beside the routes of the first budget.
        let Some(first) = find(&budgets[0].1, l) else {
            continue;
        };
        let e0 = first.exits.as_ref().context("exits")?;
        let cells = |pick: fn(&WallClock) -> f64, e: &oats_calibrate::exits::ExitsCalibration| {
            backends
                .iter()
                .flat_map(|b| {
                    let w = e.wall_clock.get(b).cloned().unwrap_or_default();
                    [clock(&w, 1, pick), clock(&w, 64, pick)]
                })
                .collect::<Vec<_>>()
        };
        row(
            "no exits (whole network)".into(),
            format!("{} (1.00)", p.macs),
            cells(|w| w.full_ms, e0),
        );
        for (b, r) in &budgets {
            let Some(g) = find(r, l) else { continue };
            let e = g.exits.as_ref().context("exits")?;
            row(
                format!("exits, budget {b}, clean"),
                format!("{:.0} ({:.2})", e.clean.mean_macs, e.clean.macs_fraction),
                cells(|w| w.clean_ms, e),
            );
            row(
                format!("exits, budget {b}, slowdown attack"),
                format!(
                    "{:.0} ({:.2})",
                    e.slowdown.mean_macs, e.slowdown.macs_fraction
                ),
                cells(|w| w.slowdown_ms, e),
            );
        }
        let last = e0.exit_macs.last().copied().unwrap_or(0);
        row(
            "exits, never leaving early (chaining cost)".into(),
            format!("{last} ({:.2})", last as f64 / e0.full_macs.max(1) as f64),
            cells(|w| w.never_ms, e0),
        );
    }

    println!(
        "\nAccuracy on the validation images (%, 95 % Wilson intervals; ε = {}):\n",
        plain.eps
    );
    println!("| λ | model | SA | worst RA | main-branch | average | max-average | routed | exit mix (clean) | exit mix (slowdown) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for p in &plain.graphs {
        let l = p.point.lambda;
        let n = p.point.samples;
        println!(
            "| {l} | no exits ({}) | {} | {} | | | | | | |",
            plain.attacks_pretty,
            pct(p.point.sa, n),
            p.point.ra_worst.map_or("-".into(), |r| pct(r, n)),
        );
        if let Some(g) = find(&budgets[0].1, l) {
            println!(
                "| {l} | exits, final classifier only ({}) | {} | {} | | | | | | |",
                budgets[0].1.attacks_pretty,
                pct(g.point.sa, n),
                g.point.ra_worst.map_or("-".into(), |r| pct(r, n)),
            );
        }
        for (b, r) in &budgets {
            let Some(g) = find(r, l) else { continue };
            let e = g.exits.as_ref().context("exits")?;
            let mix = |m: &[f64]| {
                m.iter()
                    .map(|x| format!("{:.0}", 100.0 * x))
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let ra = |k: &str| e.ra.get(k).map_or("-".into(), |v| pct(*v, n));
            println!(
                "| {l} | exits routed, budget {b} | {} | {} | {} | {} | {} | {} | {} | {} |",
                pct(e.clean.accuracy, n),
                pct(e.ra_worst, n),
                ra("main-branch"),
                ra("average"),
                ra("max-average"),
                ra("routed"),
                mix(&e.clean.exit_mix),
                mix(&e.slowdown.exit_mix),
            );
        }
    }
    Ok(())
}
