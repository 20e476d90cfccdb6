//! int8 against float on ResNet-34 (not a test; `cargo bench -p oats-export --features ort
//! --bench int8_bench`): a random-weight slimmable ResNet-34 OATS model (CIFAR shape) at
//! λ = 0.2, width 1, exported, quantized (ranges from random images: the speed of a graph
//! does not depend on its weights' values), and timed against its float configuration,
//! alternately in one run, at batch 1 and 64 in tract and ONNX Runtime; plus the storage
//! ratio. The small preset's ratios come from `oats-bench` on the pretrained model (README,
//! "int8").
//!
//! Threads: $OATS_BENCH_THREADS (default 1, for both tch and ort).
use indicatif::ProgressBar;
use oats_export::int8::{add_int8, Int8Options, RANGE_PERCENTILE};
use oats_export::{export, ExportOptions};
use oats_runtime::bench::{int8_vs_float, BenchConfig};
use oats_runtime::{Backend, Options};
use oats_train::config::{Arch, TrainConfig};
use oats_train::TchModel;
use tch::{Device, Kind, Tensor};

fn main() {
    let threads: usize = std::env::var("OATS_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    tch::set_num_threads(threads as i32);
    let ort_ok = cfg!(feature = "ort") && std::env::var_os("ORT_DYLIB_PATH").is_some();
    let mut cfg = TrainConfig::embedded_default();
    cfg.arch = Arch::Resnet34;
    let model = TchModel::new(
        &cfg,
        3,
        32,
        32,
        (0..10).map(|i| i.to_string()).collect(),
        Device::Cpu,
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("r34");
    export(
        &model,
        "0".repeat(64).as_str(),
        &dir,
        &ExportOptions {
            lambdas: Some(vec![0.2]),
            widths: Some(vec![1.0]),
            verify_with: vec![Backend::Tract],
            ..Default::default()
        },
        None,
        &ProgressBar::hidden(),
    )
    .expect("export");
    tch::manual_seed(7);
    let images = |n: i64| Tensor::rand([n, 3, 32, 32], (Kind::Float, Device::Cpu));
    let mut backends = vec![Backend::Tract];
    if ort_ok {
        backends.push(Backend::Ort);
    }
    let rep = add_int8(
        &dir,
        &Int8Options {
            lambdas: None,
            widths: None,
            calibration: images(32),
            calibration_images: "random [0, 1) images".into(),
            verification: images(8),
            verification_images: "random [0, 1) images".into(),
            verify_with: backends.clone(),
            percentile: RANGE_PERCENTILE,
            // Random weights: agreement means nothing here, only speed is measured.
            min_top1_agreement: 0.0,
        },
        &ProgressBar::hidden(),
    )
    .expect("int8");
    let c = &rep.configs[0];
    println!(
        "ResNet-34 OATS (random weights) l0.2-w1: int8 file {:.1} MB vs float {:.1} MB, storage ratio {:.3}",
        c.bytes as f64 / 1e6,
        c.float_bytes as f64 / 1e6,
        c.bytes as f64 / c.float_bytes as f64
    );
    println!("int8 against float, {threads} thread(s), p50 of alternate runs:");
    for backend in backends {
        let rt = oats_runtime::OatsModel::open(
            &dir,
            &Options {
                backend,
                threads: Some(threads),
                preload: true,
                ..Options::default()
            },
        )
        .expect("open");
        for (batch, iters) in [(1usize, 20usize), (64, 4)] {
            let iters = if backend == Backend::Tract && batch == 64 {
                2
            } else {
                iters
            };
            let d = int8_vs_float(
                &rt,
                &c.id,
                &BenchConfig {
                    batch,
                    warmup: 1,
                    iters,
                },
            )
            .expect("int8 vs float");
            println!(
                "  {:<6} batch {:>2}: float {:>9.2} ms, int8 {:>9.2} ms, ratio {:.3} ({} runs each)",
                backend.name(),
                batch,
                d.float_p50_ms,
                d.int8_p50_ms,
                d.ratio,
                d.iters
            );
        }
    }
}
