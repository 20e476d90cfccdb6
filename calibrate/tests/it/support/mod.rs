//! Fixtures shared by the calibrate crate's integration tests: one untrained OAT model and
//! one hand-made evaluation report, so the tests that read runs back agree on what a run
//! holds; the bundled data and the engines to replay through.
use std::collections::BTreeMap;
use std::path::PathBuf;

use oats_runtime::{Backend, OperatingPoint};
use oats_testkit::tool_missing;
use oats_train::checkpoint;
use oats_train::config::{Mode, TrainConfig};
use oats_train::eval::EvalReport;
use oats_train::TchModel;
use tch::Device;

/// An untrained OAT model of the embedded default (one width, a 16-wide λ encoding) on the
/// bundled Fashion-MNIST subset's shape.
pub fn untrained_oat() -> TchModel {
    let mut c = TrainConfig::embedded_default();
    c.mode = Mode::Oat;
    c.widths = vec![1.0];
    c.encoding_dim = 16;
    c.data.dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/fashion-mnist-subset");
    c.validate().expect("config");
    let names = (0..10).map(|i| format!("c{i}")).collect();
    TchModel::new(&c, 1, 28, 28, names, Device::Cpu)
}

/// A hand-made test-split report of the checkpoint whose sha256 is `sha`: one point, λ = 0.
pub fn eval_report(sha: &str) -> EvalReport {
    EvalReport {
        checkpoint: checkpoint::FILE_NAME.into(),
        checkpoint_sha256: sha.into(),
        split: "test".into(),
        epsilon: 0.1,
        pgd_step: 0.025,
        attacks: vec!["pgd20".into()],
        seed: Some(0),
        results: vec![OperatingPoint {
            lambda: 0.0,
            width: 1.0,
            sa: 0.8,
            ra: BTreeMap::from([("pgd20".to_string(), 0.1)]),
            ra_worst: Some(0.1),
            samples: 100,
            split: "test".into(),
            epsilon: 0.1,
        }],
    }
}

/// The bundled Fashion-MNIST subset (assets/ at the repository root).
pub fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/fashion-mnist-subset")
}

/// The engines to replay through: tract always, ONNX Runtime when built in and installed
/// (a missing library is `tool_missing`: a skip, or a failure under OATS_REQUIRE_TOOLS=1).
pub fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Tract];
    if !cfg!(feature = "ort") {
        eprintln!("note: built without the `ort` feature: no ONNX Runtime replay here");
    } else if std::env::var_os("ORT_DYLIB_PATH").is_some_and(|v| !v.is_empty()) {
        b.push(Backend::Ort);
    } else {
        tool_missing("ONNX Runtime (ORT_DYLIB_PATH is not set): no ONNX Runtime replay");
    }
    b
}
