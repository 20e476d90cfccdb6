//! Training behaviour and evaluation sanity on a small model trained on the bundled data.
use crate::common;

use indicatif::ProgressBar;
use oats_train::config::DeviceChoice;
use oats_train::data::{self, DatasetKind, Split};
use oats_train::eval::{self, Attack, AttackSpec, EvalOptions};
use oats_train::{checkpoint, TchModel, Trainer};
use tch::{Device, Tensor};

fn load(split: Split, limit: usize) -> data::Dataset {
    data::load(
        DatasetKind::FashionMnist,
        &common::assets_data(),
        split,
        Some(limit),
    )
    .expect("bundled data")
}

fn xy(d: &data::Dataset) -> (Tensor, Tensor) {
    let x = Tensor::from_slice(&d.images).view([d.len() as i64, 1, 28, 28]);
    (x, Tensor::from_slice(&d.labels))
}

/// A model trained for two epochs on 3,000 images: attacks must behave as attacks do.
#[test]
fn trained_model_attack_sanity() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_config("pgd-at", 2, 3000);
    cfg.lambda = Some(1.0);
    cfg.attack.steps = 3;
    cfg.batch_size = 128;
    let (train, val) = (load(Split::Train, 3000), load(Split::Val, 200));
    let mut t = Trainer::new(cfg, &train, &val, tmp.path(), Device::Cpu).expect("trainer");
    t.quiet = true;
    t.run().expect("train");
    let (model, _) =
        TchModel::load(&tmp.path().join(checkpoint::FILE_NAME), Device::Cpu).expect("load");
    // λ = 1 everywhere: no clean pass was made, so there is no training SA to report (not 0).
    assert!(
        model.meta.history.iter().all(|m| m.train_sa.is_none()),
        "{:?}",
        model.meta.history
    );
    let csv = std::fs::read_to_string(tmp.path().join("metrics.csv")).expect("metrics.csv");
    assert!(
        csv.lines().nth(1).is_some_and(|l| l.contains(",,")),
        "empty train_sa column: {csv}"
    );
    let test = load(Split::Test, 300);
    let (x, y) = xy(&test);
    let bar = ProgressBar::hidden();
    let opts = |eps: f64, attacks: Vec<Attack>| EvalOptions {
        eps,
        attacks: attacks.into_iter().map(AttackSpec::new).collect(),
        batch: 300,
        seed: 0,
        keep_worst: false,
    };
    let r = eval::evaluate(
        &model,
        1.0,
        1.0,
        &x,
        &y,
        &opts(0.1, vec![Attack::Fgsm, Attack::Pgd { steps: 20 }]),
        &bar,
    )
    .expect("eval")
    .point("test", 0.1);
    let (fgsm, pgd) = (r.ra["fgsm"], r.ra["pgd20"]);
    eprintln!(
        "SA {:.3} FGSM {:.3} PGD-20 {:.3} worst {:?}",
        r.sa, fgsm, pgd, r.ra_worst
    );
    assert!(r.sa > 0.5, "the model learned something: SA {}", r.sa);
    assert!(
        pgd <= fgsm + 0.01,
        "PGD-20 ({pgd}) must not be weaker than FGSM ({fgsm})"
    );
    assert!(
        r.ra_worst.expect("worst") <= pgd.min(fgsm) + 1e-12,
        "worst case is a per-sample minimum"
    );
    assert!(pgd < r.sa, "an attack lowers accuracy");
    let big = eval::evaluate(
        &model,
        1.0,
        1.0,
        &x,
        &y,
        &opts(0.5, vec![Attack::Pgd { steps: 20 }]),
        &bar,
    )
    .expect("eval")
    .point("test", 0.5);
    assert!(
        big.ra["pgd20"] < 0.05,
        "RA at ε = 0.5 must be ≈ 0, got {}",
        big.ra["pgd20"]
    );
}

/// OAT: the λ = 0 rows use the clean BN and the others the adversarial BN, in training and
/// at test time; unseen λ are interpolated, out-of-range λ refused.
#[test]
fn oat_conditioning_routes_and_refuses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = common::tiny_config("oat", 1, 256);
    let (train, val) = (load(Split::Train, 256), load(Split::Val, 64));
    let mut t = Trainer::new(cfg, &train, &val, tmp.path(), Device::Cpu).expect("trainer");
    t.quiet = true;
    t.run().expect("train");
    let m = &t.model;
    let (x, _) = xy(&val);
    let logits = |l: f64| m.logits(&x, &m.cond_for(l).expect("cond"), 0);
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    assert!(
        diff(&logits(0.0), &logits(0.1)) > 1e-4,
        "λ changes the output"
    );
    assert!(
        m.cond_for(0.25).is_ok(),
        "unseen λ inside the range is interpolated"
    );
    for bad in [f64::NAN, -0.5, 1.5] {
        assert!(m.cond_for(bad).is_err(), "λ = {bad} must be refused");
    }
    // Both BN branches were trained: their running means moved away from 0.
    let vars = m.vs.variables();
    for branch in ["clean", "adv"] {
        let key = format!("stem_norm.w0.{branch}.running_mean");
        let rm = vars.get(&key).unwrap_or_else(|| panic!("{key}"));
        assert!(
            rm.abs().sum(tch::Kind::Float).double_value(&[]) > 0.0,
            "{branch} BN never saw data"
        );
    }
}

#[test]
fn cuda_request_is_an_error_without_cuda() {
    let r = oats_train::device::resolve(DeviceChoice::Cuda);
    if tch::Cuda::is_available() {
        assert!(matches!(r, Ok(Device::Cuda(0))));
    } else {
        let e = r.expect_err("cuda without a GPU must fail").to_string();
        assert!(e.contains("--device cuda"), "{e}");
    }
    assert_eq!(
        oats_train::device::resolve(DeviceChoice::Cpu).expect("cpu"),
        Device::Cpu
    );
}

#[test]
fn truncated_or_foreign_checkpoint_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("checkpoint.safetensors");
    std::fs::write(&p, b"not a checkpoint").expect("write");
    let e = TchModel::load(&p, Device::Cpu)
        .err()
        .expect("garbage must fail")
        .to_string();
    assert!(e.contains("checkpoint.safetensors"), "{e}");
    let e = TchModel::load(&tmp.path().join("missing.safetensors"), Device::Cpu)
        .err()
        .expect("missing")
        .to_string();
    assert!(e.contains("missing.safetensors"), "{e}");
}
