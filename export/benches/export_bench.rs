//! Export benchmark (not a test; run with `cargo bench -p oats-export --features ort`):
//! 1. time to export + verify the 18 graphs of a small-preset OATS model, and the time to
//!    lower + write the 18 graphs of a (random-weight) slimmable ResNet-34 OATS model;
//!    For ResNet-34 also the configuration derived from the package against the folded graph
//!    file (batch 1 and 64, tract and ONNX Runtime, timed alternately, printed as ratios),
//!    and the time to derive an unseen λ;
//! 2. batch-1 and batch-64 latency of a folded graph in ONNX Runtime (and tract) against the
//!    unfolded, λ-conditioned tch model at the same (λ, width), measured interleaved in one
//!    run and printed as ratios.
//!
//! Checkpoint: $OATS_BENCH_CHECKPOINT (default runs/demo, made by ./oats demo); threads:
//! $OATS_BENCH_THREADS (default 1, for both tch and ort).
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use oats_export::{export, onnx, package, ExportOptions};
use oats_runtime::{Backend, Batch, Options};
use oats_train::config::{Arch, TrainConfig};
use oats_train::{checkpoint, TchModel};
use tch::{Device, Kind, Tensor};

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let ckpt = std::env::var("OATS_BENCH_CHECKPOINT")
        .map(PathBuf::from)
        .unwrap_or(root.join("runs/demo"));
    let threads: usize = std::env::var("OATS_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    tch::set_num_threads(threads as i32);
    let path = if ckpt.is_dir() {
        ckpt.join(checkpoint::FILE_NAME)
    } else {
        ckpt.clone()
    };
    let Ok((model, _)) = TchModel::load(&path, Device::Cpu) else {
        eprintln!(
            "no checkpoint at {} (run ./oats demo first or set OATS_BENCH_CHECKPOINT)",
            path.display()
        );
        std::process::exit(2);
    };
    let sha = checkpoint::sha256_hex(&std::fs::read(&path).unwrap_or_default());
    let tmp = tempfile::tempdir().expect("tempdir");
    let ort_ok = cfg!(feature = "ort") && std::env::var_os("ORT_DYLIB_PATH").is_some();

    // 1. Export time.
    let mut opts = ExportOptions::default();
    if ort_ok {
        opts.verify_with.push(Backend::Ort);
    }
    let t = Instant::now();
    let rep = export(
        &model,
        &sha,
        &tmp.path().join("small"),
        &opts,
        None,
        &ProgressBar::hidden(),
    )
    .expect("export");
    println!(
        "export small preset: {} graphs written + verified ({}) in {:.2} s",
        rep.manifest.graphs.len(),
        opts.verify_with
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join("+"),
        t.elapsed().as_secs_f64()
    );
    let mut cfg = TrainConfig::embedded_default();
    cfg.arch = Arch::Resnet34;
    let r34 = TchModel::new(
        &cfg,
        3,
        32,
        32,
        (0..10).map(|i| i.to_string()).collect(),
        Device::Cpu,
    );
    let t = Instant::now();
    let mut bytes = 0usize;
    let r34_pkg = package::package(&r34).expect("package");
    for &w in &cfg.widths {
        for &l in &cfg.lambdas {
            let g = r34_pkg
                .lower(&[l], w, oats_graph::Layout::Folded)
                .expect("lower");
            bytes += onnx::encode(&g, "").len();
        }
    }
    println!("export ResNet-34 OATS: package + 18 graphs lowered + encoded ({:.0} MB) in {:.2} s (verification not included)", bytes as f64 / 1e6, t.elapsed().as_secs_f64());

    // ResNet-34 graphs at λ = 0.2 for the three widths: does latency follow the MACs?
    let r34_dir = tmp.path().join("r34");
    let r34_opts = ExportOptions {
        lambdas: Some(vec![0.2]),
        verify_with: vec![Backend::Tract],
        ..Default::default()
    };
    let r34_rep = export(
        &r34,
        "0".repeat(64).as_str(),
        &r34_dir,
        &r34_opts,
        None,
        &ProgressBar::hidden(),
    )
    .expect("export r34");
    let backend = if ort_ok { Backend::Ort } else { Backend::Tract };
    let rt = oats_runtime::OatsModel::open(
        &r34_dir,
        &Options {
            backend,
            threads: Some(threads),
            preload: true,
            ..Options::default()
        },
    )
    .expect("open r34");
    let x1 = Batch::new([1, 3, 32, 32], vec![0.5; 3 * 32 * 32]).expect("batch");
    println!("\nResNet-34 OATS (random weights), λ = 0.2, batch 1, {} ({threads} thread(s)), median of 30:", backend.name());
    let mut lat = Vec::new();
    for g in &r34_rep.manifest.graphs {
        for _ in 0..3 {
            let _ = rt.infer_with(&g.id, &x1);
        }
        let ts: Vec<Duration> = (0..30)
            .map(|_| {
                let s = Instant::now();
                let _ = rt.infer_with(&g.id, &x1).expect("infer");
                s.elapsed()
            })
            .collect();
        let ms = median(ts);
        println!(
            "  width {:<5} {:>8.2} GMACs {:>8.2} ms",
            g.width,
            g.macs as f64 / 1e9,
            ms
        );
        lat.push(ms);
    }
    println!(
        "  latency ratio width 0.5 / width 1.0: {:.2} (MACs ratio {:.2})",
        lat[0] / lat[lat.len() - 1],
        r34_rep.manifest.graphs[0].macs as f64 / r34_rep.manifest.graphs[lat.len() - 1].macs as f64
    );

    // ResNet-34: the configuration derived from the package against the exported folded
    // graph file, timed alternately at batch 1 and 64 on each backend, and the cost of
    // deriving an unseen λ (the package read once, then per configuration).
    println!(
        "\nResNet-34 OATS (random weights), derived from the package vs the folded file, l0.2-w1, \
         {threads} thread(s), p50 of alternate runs:"
    );
    let mut r34_backends = vec![Backend::Tract];
    if ort_ok {
        r34_backends.push(Backend::Ort);
    }
    for backend in r34_backends {
        let rt = oats_runtime::OatsModel::open(
            &r34_dir,
            &Options {
                backend,
                threads: Some(threads),
                preload: true,
                ..Options::default()
            },
        )
        .expect("open r34");
        for (batch, iters) in [(1usize, 20usize), (64, 4)] {
            // tract runs ResNet-34 at batch 64 in seconds: fewer runs there.
            let iters = if backend == Backend::Tract && batch == 64 {
                2
            } else {
                iters
            };
            let d = oats_runtime::bench::derived_vs_folded(
                &rt,
                "l0.2-w1",
                &oats_runtime::bench::BenchConfig {
                    batch,
                    warmup: 1,
                    iters,
                },
            )
            .expect("derived vs folded");
            println!(
                "  {:<6} batch {:>2}: folded {:>9.2} ms, derived {:>9.2} ms, ratio {:.3} ({} runs each)",
                backend.name(),
                batch,
                d.folded_p50_ms,
                d.derived_p50_ms,
                d.ratio,
                d.iters
            );
        }
        let c = oats_runtime::bench::derive_cost(&rt, (0.15, 1.0), (0.2, 0.5), 1000)
            .expect("derive cost");
        println!(
            "  {:<6} derive {}: {:.0} ms (+ {:.0} ms reading the package once), session ≈ {:.1} MB; \
             cached switch median {:.0} ns, p99 {:.0} ns",
            backend.name(),
            c.id,
            c.derive_ms,
            c.package_ms,
            c.estimated_bytes as f64 / 1e6,
            c.switch_median_ns,
            c.switch_p99_ns
        );
    }

    // 2. Folded graph vs unfolded tch model, interleaved.
    let dir = tmp.path().join("small");
    let (lambda, width) = (0.2, 1.0);
    let id = oats_export::graph_id(lambda, width);
    let wi = model.width_index(width).expect("width");
    let cond = model.cond_for(lambda).expect("λ");
    let mut engines = vec![(
        "tract",
        oats_runtime::OatsModel::open(
            &dir,
            &Options {
                backend: Backend::Tract,
                threads: Some(threads),
                preload: true,
                ..Options::default()
            },
        )
        .expect("tract"),
    )];
    if ort_ok {
        engines.push((
            "ort",
            oats_runtime::OatsModel::open(
                &dir,
                &Options {
                    backend: Backend::Ort,
                    threads: Some(threads),
                    preload: true,
                    ..Options::default()
                },
            )
            .expect("ort"),
        ));
    }
    let [c, h, w] = [model.meta.in_channels, model.meta.height, model.meta.width];
    println!("\nlatency at (λ = {lambda}, width = {width}), {threads} thread(s), median of interleaved runs:");
    println!(
        "{:>6} {:>14} {:>12} {:>12} {:>14}",
        "batch", "tch unfolded", "backend", "folded", "tch / folded"
    );
    for batch in [1i64, 64] {
        let x = Tensor::rand([batch, c, h, w], (Kind::Float, Device::Cpu));
        let data = Vec::<f32>::try_from(x.flatten(0, -1)).expect("data");
        let b =
            Batch::new([batch as usize, c as usize, h as usize, w as usize], data).expect("batch");
        let iters = if batch == 1 { 300 } else { 30 };
        let mut t_tch = Vec::new();
        let mut t_eng: Vec<Vec<Duration>> = vec![Vec::new(); engines.len()];
        for _ in 0..5 {
            let _ = model.logits(&x, &cond, wi);
            for (_, e) in &engines {
                let _ = e.infer_with(&id, &b);
            }
        }
        for _ in 0..iters {
            let s = Instant::now();
            let _ng = tch::no_grad_guard();
            let _ = model.logits(&x, &cond, wi);
            t_tch.push(s.elapsed());
            for (k, (_, e)) in engines.iter().enumerate() {
                let s = Instant::now();
                let _ = e.infer_with(&id, &b).expect("infer");
                t_eng[k].push(s.elapsed());
            }
        }
        let tch_ms = median(t_tch);
        for (k, (name, _)) in engines.iter().enumerate() {
            let ms = median(t_eng[k].clone());
            println!(
                "{batch:>6} {tch_ms:>11.3} ms {name:>12} {ms:>9.3} ms {:>13.2}×",
                tch_ms / ms
            );
        }
    }

    // 3. Shared-weights layout (one graph per width, λ table) vs folded: size and latency.
    let shared_dir = tmp.path().join("shared");
    let sopts = ExportOptions {
        layout: oats_runtime::Layout::SharedWeights,
        ..Default::default()
    };
    let srep = export(
        &model,
        &sha,
        &shared_dir,
        &sopts,
        None,
        &ProgressBar::hidden(),
    )
    .expect("shared export");
    println!("\nshared-weights vs folded (small preset): {:.0} KiB vs {:.0} KiB on disk ({:.1}× smaller)", srep.bytes as f64 / 1024.0, rep.bytes as f64 / 1024.0, rep.bytes as f64 / srep.bytes as f64);
    for (name, backend) in [("tract", Backend::Tract), ("ort", Backend::Ort)] {
        if backend == Backend::Ort && !ort_ok {
            continue;
        }
        let o = Options {
            backend,
            threads: Some(threads),
            preload: true,
            ..Options::default()
        };
        let (f, sh) = (
            oats_runtime::OatsModel::open(&dir, &o).expect("folded"),
            oats_runtime::OatsModel::open(&shared_dir, &o).expect("shared"),
        );
        for batch in [1usize, 64] {
            let b = Batch::new(
                [batch, c as usize, h as usize, w as usize],
                vec![0.5; batch * (c * h * w) as usize],
            )
            .expect("batch");
            let (mut tf, mut ts) = (Vec::new(), Vec::new());
            let iters = if batch == 1 { 300 } else { 30 };
            for i in 0..iters + 5 {
                let s0 = Instant::now();
                let _ = f.infer_with(&id, &b).expect("folded");
                let d0 = s0.elapsed();
                let s1 = Instant::now();
                let _ = sh.infer_with(&id, &b).expect("shared");
                let d1 = s1.elapsed();
                if i >= 5 {
                    tf.push(d0);
                    ts.push(d1);
                }
            }
            let (mf, ms) = (median(tf), median(ts));
            println!("  {name:<5} batch {batch:>2}: folded {mf:.3} ms, shared {ms:.3} ms, shared/folded {:.2}", ms / mf);
        }
    }
}
