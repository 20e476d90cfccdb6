//! Shared helpers for the train crate's integration tests.
#![allow(dead_code)]
use std::path::PathBuf;

/// The bundled Fashion-MNIST subset (assets/ at the repository root).
pub fn assets_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/fashion-mnist-subset")
}

/// A tiny config: small preset, few samples, short PGD. `mode` as in the YAML.
pub fn tiny_config(mode: &str, epochs: usize, limit: usize) -> oats_train::config::TrainConfig {
    let mut c = oats_train::config::TrainConfig::embedded_default();
    c.set_mode(serde_yaml::from_str(mode).expect("mode"));
    if !c.mode.conditioned() {
        c.lambda = Some(0.5);
    }
    c.data.dir = assets_data();
    c.data.limit = Some(limit);
    c.data.val_limit = Some(200);
    c.attack.steps = 2;
    c.epochs = epochs;
    c.batch_size = 64;
    c.validate().expect("tiny config is valid");
    c
}
