//! Fixtures shared by the calibrate crate's integration tests (`mod support;`): one untrained
//! OAT model and one hand-made evaluation report, so the tests that read runs back agree on
//! what a run holds.
use std::collections::BTreeMap;
use std::path::PathBuf;

use oats_runtime::OperatingPoint;
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
