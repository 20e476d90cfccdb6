//! Benchmark an oats export: latency per graph, backend and batch size, switch cost, and
//! equivalence with the trainer's reference logits.

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Write;

use anyhow::{Context, Result};
use clap::Parser;
use oats_io::outln;
use oats_runtime::bench::{self, BenchConfig, BenchResult, SwitchCost};
use oats_runtime::manifest::{latency_key, MANIFEST_FILE};
use oats_runtime::reference::{self, ReferenceCheck, REFERENCE_TOLERANCE};
use oats_runtime::{Backend, LatencyStat, Manifest, OatsModel, Options, RuntimeError};
use serde::{Deserialize, Serialize};

/// Benchmark an oats export directory.
///
/// For every graph, backend and batch size: load + optimise time, warm-up, p50/p90/p99
/// latency, throughput and peak resident memory. Also the cost of switching between two
/// preloaded configurations, agreement with the manifest's reference bundle (fails above the
/// reference tolerance, 1e-4), and, for ONNX Runtime, the overhead of going through OatsModel
/// instead of a bare session. With a package (manifest schema v2) also: the latency of derived
/// configurations against the folded graph files of the same (λ, width), timed alternately in
/// this one run, at every --batch; the time to derive an unseen λ; its resident bytes; and
/// the cost of switching between two cached derived configurations. For configurations with
/// side exits: the whole graph against its chain of segments and heads (features left in the
/// engine, and copied through host memory), no sample leaving, timed in rotating rounds.
/// Prints a table; --out writes the same data as YAML (replacing
/// only an earlier oats-bench report); --write-manifest stores the latencies in manifest.yaml
/// (metrics.latency_ms["<backend>/b<batch>"]) so that latency policies can use them: under the
/// export directory's lock, merged into the manifest as it is on disk then, so that the results
/// of an oats-calibrate or another oats-bench running at the same time are kept. Graph files
/// and their sha256 are not touched.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Export directory holding manifest.yaml.
    export_dir: PathBuf,
    /// Backends to measure, comma-separated: tract, ort, ort-cuda.
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        value_delimiter = ',',
        default_value = "tract"
    )]
    backend: Vec<Backend>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    batch: Vec<usize>,
    /// Intra-op threads (ONNX Runtime only; tract is single-threaded).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed iterations per measurement.
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Untimed iterations before each measurement.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Only these graph ids, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    graphs: Vec<String>,
    /// select() calls timed for the switch cost.
    #[arg(long, default_value_t = 10_000)]
    switch_iters: usize,
    /// Store measured latencies in manifest.yaml (locked, merged, atomic rewrite).
    #[arg(long)]
    write_manifest: bool,
    /// λ to derive for the derive time and the cached switch (default: halfway between the
    /// first two trained λ, at the widest width; needs a package).
    #[arg(long)]
    derive_lambda: Option<f64>,
    /// Write the report as YAML to this file (an existing file must be an earlier oats-bench report).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    model_id: String,
    export_dir: PathBuf,
    results: Vec<BenchResult>,
    switch: Vec<SwitchBackend>,
    reference: Vec<ReferenceBackend>,
    #[cfg(feature = "ort")]
    ort_overhead: Vec<bench::OrtOverhead>,
    /// Which kernels ort runs int8 graphs with on this CPU (when ort is measured).
    #[cfg(feature = "ort")]
    #[serde(skip_serializing_if = "Option::is_none")]
    ort_int8_kernels: Option<&'static str>,
    derive: Vec<bench::DeriveCost>,
    derived_vs_folded: Vec<bench::DerivedVsFolded>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    int8_vs_float: Vec<bench::Int8VsFloat>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    chaining: Vec<bench::Chaining>,
}

/// What identifies an earlier report of this tool at `--out`, which alone it may replace.
#[derive(Deserialize)]
struct ReportProbe {
    #[allow(dead_code)]
    model_id: String,
    #[allow(dead_code)]
    export_dir: PathBuf,
    #[allow(dead_code)]
    results: Vec<serde_yaml::Value>,
}

fn is_bench_report(bytes: &[u8]) -> bool {
    serde_yaml::from_slice::<ReportProbe>(bytes).is_ok()
}

#[derive(Serialize)]
struct SwitchBackend {
    backend: Backend,
    #[serde(flatten)]
    cost: SwitchCost,
}

#[derive(Serialize)]
struct ReferenceBackend {
    backend: Backend,
    tolerance: f32,
    checks: Vec<ReferenceCheck>,
}

fn main() -> ExitCode {
    run(Args::parse()).unwrap_or_else(|e| oats_io::exit_with(e.as_ref()))
}

fn run(args: Args) -> Result<ExitCode> {
    let mut report = None::<Report>;
    // The manifest the measurements belong to, and the latencies to store in it.
    let mut measured = None::<Manifest>;
    let mut latencies: Vec<(String, String, LatencyStat)> = Vec::new();
    let mut reference_failed = false;
    if let Some(out) = &args.out {
        // Before minutes of measuring: a wrong --out must not cost them.
        oats_io::ensure_replaceable(out, "an oats-bench report", is_bench_report)?;
    }

    for &backend in &args.backend {
        let options = Options {
            backend,
            threads: args.threads,
            preload: true,
            ..Options::default()
        };
        let model = OatsModel::open(&args.export_dir, &options)
            .with_context(|| format!("opening {} with {backend}", args.export_dir.display()))?;
        let m = model.manifest();
        let ids: Vec<String> = if args.graphs.is_empty() {
            m.graphs.iter().map(|g| g.id.clone()).collect()
        } else {
            args.graphs.clone()
        };
        let r = report.get_or_insert_with(|| Report {
            model_id: m.model_id.clone(),
            export_dir: args.export_dir.clone(),
            results: Vec::new(),
            switch: Vec::new(),
            reference: Vec::new(),
            #[cfg(feature = "ort")]
            ort_overhead: Vec::new(),
            #[cfg(feature = "ort")]
            ort_int8_kernels: args
                .backend
                .iter()
                .any(|b| matches!(b, Backend::Ort | Backend::OrtCuda))
                .then(oats_runtime::ort_int8_kernels),
            derive: Vec::new(),
            derived_vs_folded: Vec::new(),
            int8_vs_float: Vec::new(),
            chaining: Vec::new(),
        });
        match &measured {
            // Every backend must measure the same export (it may be re-exported meanwhile).
            Some(first) => m.ensure_same_graphs(first, &args.export_dir)?,
            None => measured = Some(m.clone()),
        }

        for id in &ids {
            for &batch in &args.batch {
                let cfg = BenchConfig {
                    batch,
                    warmup: args.warmup,
                    iters: args.iters,
                };
                let res = bench::bench_graph(&model, id, &cfg)
                    .with_context(|| format!("benchmarking {id} on {backend} at batch {batch}"))?;
                latencies.push((
                    id.clone(),
                    latency_key(&backend.to_string(), batch),
                    LatencyStat {
                        p50: res.p50_ms,
                        p90: res.p90_ms,
                        p99: res.p99_ms,
                    },
                ));
                r.results.push(res);
            }
        }

        if let (Some(a), Some(b)) = (ids.first(), ids.last()) {
            if a != b {
                let cost = bench::switch_cost(&model, a, b, args.switch_iters)?;
                r.switch.push(SwitchBackend { backend, cost });
            }
        }

        if model.can_derive() {
            let first = m
                .graphs
                .iter()
                .find(|g| ids.contains(&g.id))
                .map(|g| (g.lambda, g.width));
            let lambdas = &m.training.lambdas;
            let widest = m.training.widths.iter().copied().fold(f64::NAN, f64::max);
            let lambda = args.derive_lambda.unwrap_or(match lambdas[..] {
                [a, b, ..] => (a + b) / 2.0,
                [a] => a,
                [] => 0.0,
            });
            if let Some(other) = first {
                let cost = bench::derive_cost(&model, (lambda, widest), other, args.switch_iters)
                    .with_context(|| format!("deriving lambda {lambda}, width {widest}"))?;
                r.derive.push(cost);
            }
            // The first and the last graph file measured: the narrowest and the widest of an
            // export in its usual order. A configuration without a file (a package-only
            // export, or one calibrated from the package) is derived either way: there is
            // no folded file to compare it with.
            let with_file: Vec<&String> = ids
                .iter()
                .filter(|id| m.graphs.iter().any(|g| &g.id == *id && !g.is_derived()))
                .collect();
            let mut compared: Vec<&String> = with_file
                .iter()
                .take(1)
                .chain(with_file.last())
                .copied()
                .collect();
            compared.dedup();
            for id in compared {
                for &batch in &args.batch {
                    let cfg = BenchConfig {
                        batch,
                        warmup: args.warmup,
                        iters: args.iters,
                    };
                    let d = bench::derived_vs_folded(&model, id, &cfg).with_context(|| {
                        format!("derived against folded {id} on {backend} at batch {batch}")
                    })?;
                    r.derived_vs_folded.push(d);
                }
            }
        }

        // int8 graphs against their float configurations, timed alternately.
        for id in ids
            .iter()
            .filter(|id| m.graphs.iter().any(|g| &g.id == *id && g.is_int8()))
        {
            for &batch in &args.batch {
                let cfg = BenchConfig {
                    batch,
                    warmup: args.warmup,
                    iters: args.iters,
                };
                let d = bench::int8_vs_float(&model, id, &cfg).with_context(|| {
                    format!(
                        "int8 {id} against its float configuration on {backend} at batch {batch}"
                    )
                })?;
                r.int8_vs_float.push(d);
            }
        }

        // Configurations with side exits: the whole graph against its chain of parts, with
        // the features left in the engine and copied through host memory, in rotating rounds.
        for id in ids
            .iter()
            .filter(|id| m.graphs.iter().any(|g| &g.id == *id && g.exits.is_some()))
        {
            for &batch in &args.batch {
                let cfg = BenchConfig {
                    batch,
                    warmup: args.warmup,
                    iters: args.iters,
                };
                let d = bench::chaining(&model, id, &cfg).with_context(|| {
                    format!("chaining the segments of {id} on {backend} at batch {batch}")
                })?;
                r.chaining.push(d);
            }
        }

        if let Some(checks) =
            reference::check_reference(&model).context("checking the reference bundle")?
        {
            reference_failed |= checks.iter().any(|c| !c.passed());
            r.reference.push(ReferenceBackend {
                backend,
                tolerance: REFERENCE_TOLERANCE,
                checks,
            });
        }

        #[cfg(feature = "ort")]
        if backend != Backend::Tract {
            if let Some(id) = ids.first() {
                let o = bench::ort_overhead(&model, id, args.warmup, args.iters)?;
                r.ort_overhead.push(o);
            }
        }
    }

    let Some(report) = report else {
        anyhow::bail!("no backend given");
    };
    print_report(&report)?;

    if let Some(out) = &args.out {
        let text = serde_yaml::to_string(&report)?;
        // Checked again: the file may have appeared while measuring.
        oats_io::ensure_replaceable(out, "an oats-bench report", is_bench_report)?;
        oats_io::write_atomic(out, text.as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
        outln!("\nreport written to {}", out.display())?;
    }
    if args.write_manifest {
        if let Some(measured) = measured {
            let path = args.export_dir.join(MANIFEST_FILE);
            Manifest::update(&args.export_dir, |m| {
                m.ensure_same_graphs(&measured, &path)?;
                for (id, key, stat) in latencies {
                    if let Some(g) = m.graphs.iter_mut().find(|g| g.id == id) {
                        g.metrics.latency_ms.insert(key, stat);
                    }
                }
                Ok::<_, RuntimeError>(())
            })
            .with_context(|| format!("storing the latencies in {}", path.display()))?;
            outln!("latencies stored in {}", path.display())?;
        }
    }
    if reference_failed {
        // Best effort: the exit code says it too, and a closed stderr must not panic.
        let _ = writeln!(
            std::io::stderr(),
            "\nFAILED: outputs differ from the reference bundle by more than {REFERENCE_TOLERANCE}"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &Report) -> Result<()> {
    outln!("model {}  ({})", r.model_id, r.export_dir.display())?;
    if let Some(b) = r.results.first() {
        outln!(
            "{} warm-up and {} timed runs per row; load = parse + optimise of the graph file\n",
            b.warmup,
            b.iters
        )?;
    }
    #[cfg(feature = "ort")]
    if let Some(k) = r.ort_int8_kernels {
        outln!("ort int8 kernels on this CPU: {k}\n")?;
    }
    let header = [
        "backend",
        "graph",
        "batch",
        "load ms",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "img/s",
        "peak RSS MiB",
    ];
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|b| {
            vec![
                b.backend.to_string(),
                b.graph_id.clone(),
                b.batch.to_string(),
                format!("{:.1}", b.load_ms),
                format!("{:.3}", b.p50_ms),
                format!("{:.3}", b.p90_ms),
                format!("{:.3}", b.p99_ms),
                format!("{:.0}", b.throughput),
                b.peak_rss_kib
                    .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
            ]
        })
        .collect();
    print_table(&header, &rows)?;

    for s in &r.switch {
        outln!(
            "\nswitch cost ({}, {} <-> {}, {} selects): median {:.0} ns, p99 {:.0} ns",
            s.backend,
            s.cost.from,
            s.cost.to,
            s.cost.iters,
            s.cost.median_ns,
            s.cost.p99_ns
        )?;
    }
    for rb in &r.reference {
        outln!(
            "\nreference bundle ({}), tolerance {}:",
            rb.backend,
            rb.tolerance
        )?;
        for c in &rb.checks {
            match c.max_abs_diff {
                Some(d) => outln!(
                    "  {:<24} max |Δ| {:.2e}  {}",
                    if c.derived {
                        format!("{} (derived)", c.graph_id)
                    } else {
                        c.graph_id.clone()
                    },
                    d,
                    if c.passed() { "ok" } else { "FAIL" }
                )?,
                None => outln!("  {:<24} no reference logits in the bundle", c.graph_id)?,
            }
        }
    }
    if !r.derived_vs_folded.is_empty() {
        outln!("\nderived from the package against the folded graph file (timed alternately):")?;
        for d in &r.derived_vs_folded {
            outln!(
                "  {:<8} {:<16} batch {:>3}: folded p50 {:.4} ms, derived p50 {:.4} ms, ratio {:.3}",
                d.backend.name(),
                d.graph_id,
                d.batch,
                d.folded_p50_ms,
                d.derived_p50_ms,
                d.ratio
            )?;
        }
    }
    if !r.int8_vs_float.is_empty() {
        outln!("\nint8 against its float configuration (timed alternately):")?;
        for d in &r.int8_vs_float {
            outln!(
                "  {:<8} {:<18} batch {:>3}: float p50 {:.4} ms, int8 p50 {:.4} ms, ratio {:.3}",
                d.backend.name(),
                d.graph_id,
                d.batch,
                d.float_p50_ms,
                d.int8_p50_ms,
                d.ratio
            )?;
        }
    }
    if !r.chaining.is_empty() {
        outln!(
            "\nside exits, no sample leaving (timed in rotating rounds): whole graph, chain with \
             the features in the engine, chain copying them through host memory"
        )?;
        for d in &r.chaining {
            outln!(
                "  {:<8} {:<18} batch {:>3}: whole {:.4} ms, chained {:.4} ms ({:.3}x whole), \
                 through host {:.4} ms (in engine {:.3}x of it)",
                d.backend.name(),
                d.graph_id,
                d.batch,
                d.whole_p50_ms,
                d.chained_p50_ms,
                d.chain_ratio(),
                d.through_host_p50_ms,
                d.in_engine_ratio()
            )?;
        }
    }
    for d in &r.derive {
        outln!(
            "\nderive {} ({}): {:.1} ms (+ {:.1} ms reading the package once); session ≈ {} bytes \
             (estimate), resident set change {}; cached switch {} <-> {} ({} selects): median \
             {:.0} ns, p99 {:.0} ns",
            d.id,
            d.backend,
            d.derive_ms,
            d.package_ms,
            d.estimated_bytes,
            match d.rss_growth_bytes {
                Some(b) if b > 0 => format!("+{b} bytes"),
                // The allocator reused memory freed by the runs before: nothing to read.
                Some(_) => "none visible".to_string(),
                None => "unknown".to_string(),
            },
            d.id,
            d.switch_with,
            d.switch_iters,
            d.switch_median_ns,
            d.switch_p99_ns
        )?;
    }
    #[cfg(feature = "ort")]
    for o in &r.ort_overhead {
        outln!(
            "\nort overhead ({}, batch {}): bare session p50 {:.4} ms, through OatsModel {:.4} ms, ratio {:.3}",
            o.graph_id, o.batch, o.bare_p50_ms, o.model_p50_ms, o.ratio
        )?;
    }
    Ok(())
}

/// Left-aligned text, right-aligned numbers.
fn print_table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < 2 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        outln!("{}", parts.join("  ").trim_end())
    };
    line(header.to_vec())?;
    for row in rows {
        line(row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}
