//! `manifest.yaml`: what an export directory holds. The exporter writes it, the calibrator and
//! `oats-bench --write-manifest` fill in [`Metrics`], the runtime reads it.
//!
//! Parsing always validates, so a [`Manifest`] obtained from [`Manifest::load`] is safe to act
//! on: graph file names cannot escape the export directory, numbers are in range and ids are
//! unique. The format is versioned by [`SCHEMA_VERSION`]; a manifest with another version is
//! refused with [`RuntimeError::UnsupportedSchema`] rather than half-understood.
//!
//! This file holds the schema and load/save; the checks ([`Manifest::validate`]) are in
//! `manifest/validate.rs`, the locked read-modify-write ([`Manifest::update`]) in
//! `manifest/update.rs`, path confinement and atomic writes in [`crate::files`] (re-exported
//! here).

mod update;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

pub use crate::files::{check_relative_file, resolve_in_dir, write_atomic};
pub use update::ManifestLock;

/// Lower-case hex sha256 of `bytes`, as stored in the manifest (the one implementation is
/// `oats_io`'s, re-exported for the runtime's callers).
pub use oats_io::sha256_hex;

/// Two λ or width values closer than this are the same configuration: far below any step
/// between two configurations worth exporting, far above the rounding error of a value that
/// went through YAML or a command line as decimal text. Used by selection and by manifest
/// validation (no two graphs may be the same configuration).
pub const CONFIG_TOLERANCE: f64 = 1e-9;

/// The manifest format this crate reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// File name of the manifest inside an export directory.
pub const MANIFEST_FILE: &str = "manifest.yaml";

/// The lock file inside an export directory that serialises its writers (`oats-calibrate`,
/// `oats-bench --write-manifest`, and `oats-export` replacing the directory). Hidden, created on
/// demand, never removed (see `oats_io::lock`).
pub const LOCK_FILE: &str = ".oats.lock";

/// Name of the extra int64 input (shape `[1]`) of `shared_weights` graphs.
pub const LAMBDA_INDEX_INPUT: &str = "lambda_index";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub model_id: String,
    pub source_checkpoint_sha256: String,
    pub training: TrainingSummary,
    pub input: InputSpec,
    pub output: OutputSpec,
    pub class_names: Vec<String>,
    pub layout: Layout,
    pub graphs: Vec<GraphEntry>,
    /// Inputs and trainer logits per graph, to prove the export reproduces the trainer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceBundle>,
}

/// How the model was trained (informational; the runtime only validates ranges).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// "oat" | "oats" | "pgd-at" | "pgd-ats"
    pub mode: String,
    pub arch: String,
    pub dataset: String,
    pub epsilon: f64,
    pub attack: String,
    pub lambdas: Vec<f64>,
    pub widths: Vec<f64>,
    pub epochs: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Graph input name, normally "image".
    pub name: String,
    /// (C, H, W); the batch dimension is dynamic.
    pub shape: [usize; 3],
    /// Range of pixel values the graph expects, e.g. `[0.0, 1.0]`.
    pub value_range: [f32; 2],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Graph output name, normally "logits".
    pub name: String,
    pub classes: usize,
}

/// How the graphs of an export are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// One self-contained graph per (λ, width): conditioning folded into the weights.
    Folded,
    /// One graph per width shared by all λ; λ is chosen by the int64 input `lambda_index`.
    SharedWeights,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphEntry {
    /// Unique id, e.g. "l0.1-w0.5".
    pub id: String,
    pub lambda: f64,
    pub width: f64,
    /// File name relative to the export directory. Several entries may share one file when
    /// `layout = shared_weights`.
    pub file: String,
    pub sha256: String,
    /// `shared_weights` only: the value fed to the int64 input `lambda_index` (shape `[1]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_index: Option<u32>,
    pub params: u64,
    pub macs: u64,
    pub opset: u32,
    #[serde(default)]
    pub metrics: Metrics,
}

/// Measured quality and cost of one graph. Everything is optional: a fresh export has none,
/// `oats-calibrate` adds accuracies, `oats-bench --write-manifest` adds latencies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Standard (clean) accuracy in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sa: Option<f64>,
    /// Robust accuracy per attack name, in [0, 1].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ra: BTreeMap<String, f64>,
    /// Worst robust accuracy over all attacks evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ra_worst: Option<f64>,
    /// Latency per "<backend>/b<batch>" key, e.g. "tract/b1".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latency_ms: BTreeMap<String, LatencyStat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl Metrics {
    /// Copies the accuracies of `p` in (latency and device are left alone).
    pub fn set_accuracy(&mut self, p: &oats_metrics::OperatingPoint) {
        self.sa = Some(p.sa);
        self.ra = p.ra.clone();
        self.ra_worst = p.ra_worst;
        self.split = Some(p.split.clone());
        self.samples = Some(p.samples as u64);
        self.epsilon = Some(p.epsilon);
    }

    /// The accuracies of the graph at (λ, width), if it was calibrated.
    pub fn operating_point(&self, lambda: f64, width: f64) -> Option<oats_metrics::OperatingPoint> {
        Some(oats_metrics::OperatingPoint {
            lambda,
            width,
            sa: self.sa?,
            ra: self.ra.clone(),
            ra_worst: self.ra_worst,
            samples: usize::try_from(self.samples?).ok()?,
            split: self.split.clone().unwrap_or_default(),
            epsilon: self.epsilon.unwrap_or(f64::NAN),
        })
    }

    /// Robust accuracy used by policies: `ra_worst`, else the minimum over `ra`.
    pub fn robust_accuracy(&self) -> Option<f64> {
        self.ra_worst
            .or_else(|| self.ra.values().copied().reduce(f64::min))
    }
}

/// The key of [`Metrics::latency_ms`]: "<backend>/b<batch>", e.g. "tract/b1". Written by
/// `oats-bench --write-manifest` and `oats-calibrate`, read by the latency policies.
pub fn latency_key(backend: &str, batch: usize) -> String {
    format!("{backend}/b{batch}")
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyStat {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// A safetensors file with tensor `input` f32 `[N,C,H,W]` and one tensor `logits.<graph id>`
/// f32 `[N, classes]` per graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceBundle {
    pub file: String,
    pub sha256: String,
}

/// Only the version, parsed first so that a future format is reported as such instead of as
/// whatever field it happens to lack.
#[derive(Deserialize)]
struct VersionProbe {
    schema_version: u32,
}

impl Manifest {
    /// Reads and validates `path` (usually `<export-dir>/manifest.yaml`).
    pub fn load(path: impl AsRef<Path>) -> Result<Manifest> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::read(path, e))?;
        Manifest::from_yaml_str(&text, path)
    }

    /// Parses and validates YAML text; `source` only names the file in errors.
    pub fn from_yaml_str(text: &str, source: &Path) -> Result<Manifest> {
        if let Ok(probe) = serde_yaml::from_str::<VersionProbe>(text) {
            if probe.schema_version != SCHEMA_VERSION {
                return Err(RuntimeError::UnsupportedSchema {
                    path: source.to_path_buf(),
                    found: probe.schema_version,
                    supported: SCHEMA_VERSION,
                });
            }
        }
        let manifest: Manifest = serde_yaml::from_str(text).map_err(|e| {
            let loc = e.location();
            RuntimeError::ManifestParse {
                path: source.to_path_buf(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                source: e,
            }
        })?;
        manifest.validate(source)?;
        Ok(manifest)
    }

    /// Validates, then writes atomically: a temporary file in the same directory is synced and
    /// renamed over `path`, so a failed save leaves the previous manifest intact.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.validate(path)?;
        let text =
            serde_yaml::to_string(self).map_err(|source| RuntimeError::ManifestSerialize {
                path: path.to_path_buf(),
                source,
            })?;
        write_atomic(path, text.as_bytes())
    }

    /// Index of the graph with this id.
    pub fn graph_index(&self, id: &str) -> Option<usize> {
        self.graphs.iter().position(|g| g.id == id)
    }

    /// Class name for an output index, or the index itself when the manifest has no names.
    pub fn class_name(&self, class: usize) -> String {
        self.class_names
            .get(class)
            .cloned()
            .unwrap_or_else(|| class.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robust_accuracy_prefers_worst_then_min() {
        let mut m = Metrics::default();
        assert_eq!(m.robust_accuracy(), None);
        m.ra.insert("pgd20".into(), 0.5);
        m.ra.insert("fgsm".into(), 0.6);
        assert_eq!(m.robust_accuracy(), Some(0.5));
        m.ra_worst = Some(0.4);
        assert_eq!(m.robust_accuracy(), Some(0.4));
    }
}
