//! Storage of one model in each form a device could get (DESIGN.md, "The package"): the
//! package (every weight once), the 18 folded graphs, the 3 shared-weights graphs, and the
//! trainer's checkpoint (weights, λ encoding and SGD momentum, as saved after an epoch), for
//! the small preset and ResNet-34 (OATS, 6 λ × 3 widths). Sizes do not depend on the weights'
//! values, so untrained models are measured.
//!
//! `cargo run -p oats-export --example package_storage`
use std::collections::BTreeMap;

use oats_export::package;
use oats_graph::Layout;
use oats_train::config::{Arch, TrainConfig};
use oats_train::{checkpoint, TchModel};
use tch::Device;

fn mib(b: usize) -> String {
    format!("{:.2} MiB", b as f64 / (1 << 20) as f64)
}

fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    println!(
        "| model | package.safetensors | 18 folded graphs | 3 shared-weights graphs | checkpoint | folded / package | checkpoint / package |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, arch, c, hw) in [
        ("small preset (1×28×28)", Arch::Small, 1, 28),
        ("ResNet-34 (3×32×32)", Arch::Resnet34, 3, 32),
    ] {
        let mut cfg = TrainConfig::embedded_default();
        cfg.arch = arch;
        let classes: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let model = TchModel::new(&cfg, c, hw, hw, classes, Device::Cpu);
        let pkg = package::package(&model)?;
        let package_bytes = pkg.to_bytes()?.len();
        let mut folded = 0;
        let mut shared = 0;
        for &w in pkg.widths() {
            for &l in pkg.lambdas() {
                folded += oats_graph::to_onnx(&pkg.lower_folded(l, w)?).len();
            }
            shared +=
                oats_graph::to_onnx(&pkg.lower(pkg.lambdas(), w, Layout::SharedWeights)?).len();
        }
        // What the trainer saves after an epoch: the variables, the λ encoding, and one
        // momentum buffer per trainable variable.
        let mut tensors = BTreeMap::new();
        for (k, v) in model.vs.variables() {
            if v.requires_grad() {
                tensors.insert(format!("optim.momentum.{k}"), v.zeros_like());
            }
            tensors.insert(format!("model.{k}"), v);
        }
        if let Some(e) = &model.encoding {
            tensors.insert("lambda_encoding".into(), e.rows.shallow_clone());
        }
        let path = tmp.path().join(format!("{arch}.safetensors"));
        checkpoint::save(&path, &tensors, &model.meta)?;
        let ckpt = std::fs::metadata(&path)?.len() as usize;
        println!(
            "| {label} | {} | {} | {} | {} | {:.1}× | {:.1}× |",
            mib(package_bytes),
            mib(folded),
            mib(shared),
            mib(ckpt),
            folded as f64 / package_bytes as f64,
            ckpt as f64 / package_bytes as f64,
        );
    }
    Ok(())
}
