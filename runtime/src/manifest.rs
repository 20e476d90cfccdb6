//! `manifest.yaml`: what an export directory holds. The exporter writes it, the calibrator and
//! `oats-bench --write-manifest` fill in [`Metrics`], the runtime reads it.
//!
//! Parsing always validates, so a [`Manifest`] obtained from [`Manifest::load`] is safe to act
//! on: graph file names cannot escape the export directory, numbers are in range and ids are
//! unique. The format is versioned by [`SCHEMA_VERSION`]; a manifest with another version is
//! refused with [`RuntimeError::UnsupportedSchema`] rather than half-understood.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, RuntimeError};

/// The manifest format this crate reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// File name of the manifest inside an export directory.
pub const MANIFEST_FILE: &str = "manifest.yaml";

/// Name of the extra int64 input (shape `[1]`) of `shared_weights` graphs.
pub const LAMBDA_INDEX_INPUT: &str = "lambda_index";

const MAX_DIM: usize = 4096;
const MAX_CLASSES: usize = 100_000;

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
    /// Robust accuracy used by policies: `ra_worst`, else the minimum over `ra`.
    pub fn robust_accuracy(&self) -> Option<f64> {
        self.ra_worst
            .or_else(|| self.ra.values().copied().reduce(f64::min))
    }
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
        let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::io(path, e))?;
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
                message: e.to_string(),
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
        let text = serde_yaml::to_string(self).map_err(|e| RuntimeError::ManifestInvalid {
            path: path.to_path_buf(),
            reason: format!("cannot serialise: {e}"),
        })?;
        write_atomic(path, text.as_bytes())
    }

    /// Checks every invariant the runtime relies on; `source` names the file in errors.
    pub fn validate(&self, source: &Path) -> Result<()> {
        let invalid = |reason: String| RuntimeError::ManifestInvalid {
            path: source.to_path_buf(),
            reason,
        };
        if self.schema_version != SCHEMA_VERSION {
            return Err(RuntimeError::UnsupportedSchema {
                path: source.to_path_buf(),
                found: self.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        if self.model_id.trim().is_empty() {
            return Err(invalid("model_id is empty".into()));
        }
        check_sha("source_checkpoint_sha256", &self.source_checkpoint_sha256).map_err(invalid)?;

        let t = &self.training;
        if !(t.epsilon.is_finite() && t.epsilon >= 0.0) {
            return Err(invalid(format!(
                "training.epsilon {} is not a finite value ≥ 0",
                t.epsilon
            )));
        }
        for &l in &t.lambdas {
            check_lambda(l).map_err(|r| invalid(format!("training.lambdas: {r}")))?;
        }
        for &w in &t.widths {
            check_width(w).map_err(|r| invalid(format!("training.widths: {r}")))?;
        }

        if self.input.name.is_empty() || self.output.name.is_empty() {
            return Err(invalid(
                "input.name and output.name must not be empty".into(),
            ));
        }
        if let Some(d) = self
            .input
            .shape
            .iter()
            .find(|&&d| !(1..=MAX_DIM).contains(&d))
        {
            return Err(invalid(format!(
                "input.shape {:?}: dimension {d} is outside 1..={MAX_DIM}",
                self.input.shape
            )));
        }
        let [lo, hi] = self.input.value_range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(invalid(format!(
                "input.value_range [{lo}, {hi}] must be finite with min < max"
            )));
        }
        if !(1..=MAX_CLASSES).contains(&self.output.classes) {
            return Err(invalid(format!(
                "output.classes {} is outside 1..={MAX_CLASSES}",
                self.output.classes
            )));
        }
        if !self.class_names.is_empty() && self.class_names.len() != self.output.classes {
            return Err(invalid(format!(
                "{} class_names for {} output classes",
                self.class_names.len(),
                self.output.classes
            )));
        }

        if self.graphs.is_empty() {
            return Err(invalid("graphs is empty".into()));
        }
        let mut ids = HashSet::new();
        let mut configs = Vec::new();
        let mut file_sha: BTreeMap<&str, &str> = BTreeMap::new();
        for g in &self.graphs {
            let bad = |r: String| invalid(format!("graph {:?}: {r}", g.id));
            if g.id.is_empty() {
                return Err(invalid("a graph has an empty id".into()));
            }
            if !ids.insert(g.id.as_str()) {
                return Err(bad("duplicate id".into()));
            }
            check_lambda(g.lambda).map_err(bad)?;
            check_width(g.width).map_err(bad)?;
            if configs.iter().any(|&(l, w): &(f64, f64)| {
                (l - g.lambda).abs() < 1e-9 && (w - g.width).abs() < 1e-9
            }) {
                return Err(bad(format!(
                    "another graph already has lambda {} and width {}",
                    g.lambda, g.width
                )));
            }
            configs.push((g.lambda, g.width));
            check_relative_file(&g.file)?;
            check_sha("sha256", &g.sha256).map_err(bad)?;
            match (self.layout, g.lambda_index) {
                (Layout::SharedWeights, None) => {
                    return Err(bad("layout shared_weights requires lambda_index".into()))
                }
                (Layout::Folded, Some(_)) => {
                    return Err(bad(
                        "lambda_index is only allowed with layout shared_weights".into(),
                    ))
                }
                _ => {}
            }
            if let Some(prev) = file_sha.insert(&g.file, &g.sha256) {
                if self.layout == Layout::Folded {
                    return Err(bad(format!(
                        "file {:?} is used by several graphs, which only layout shared_weights allows",
                        g.file
                    )));
                }
                if prev != g.sha256 {
                    return Err(bad(format!(
                        "file {:?} is listed with two different sha256",
                        g.file
                    )));
                }
            }
            check_metrics(&g.metrics).map_err(bad)?;
        }
        if let Some(r) = &self.reference {
            check_relative_file(&r.file)?;
            check_sha("reference.sha256", &r.sha256).map_err(invalid)?;
        }
        Ok(())
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

fn check_lambda(l: f64) -> Result<(), String> {
    if l.is_finite() && (0.0..=1.0).contains(&l) {
        Ok(())
    } else {
        Err(format!("lambda {l} is not a finite value in [0, 1]"))
    }
}

fn check_width(w: f64) -> Result<(), String> {
    if w.is_finite() && w > 0.0 && w <= 1.0 {
        Ok(())
    } else {
        Err(format!("width {w} is not a finite value in (0, 1]"))
    }
}

fn check_sha(field: &str, s: &str) -> Result<(), String> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!("{field} {s:?} is not 64 hexadecimal characters"))
    }
}

fn check_metrics(m: &Metrics) -> Result<(), String> {
    let unit = |name: &str, v: f64| {
        if v.is_finite() && (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(format!("metrics.{name} {v} is not in [0, 1]"))
        }
    };
    if let Some(v) = m.sa {
        unit("sa", v)?;
    }
    if let Some(v) = m.ra_worst {
        unit("ra_worst", v)?;
    }
    for (k, &v) in &m.ra {
        unit(&format!("ra.{k}"), v)?;
    }
    for (k, s) in &m.latency_ms {
        if ![s.p50, s.p90, s.p99]
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0)
        {
            return Err(format!(
                "metrics.latency_ms.{k} holds a negative or non-finite value"
            ));
        }
    }
    if let Some(e) = m.epsilon {
        if !(e.is_finite() && e >= 0.0) {
            return Err(format!("metrics.epsilon {e} is not a finite value ≥ 0"));
        }
    }
    Ok(())
}

/// A graph file name must stay inside the export directory: relative, no `..`, no root. This
/// is the lexical check; [`resolve_in_dir`] repeats it on the file system (symlinks).
pub fn check_relative_file(file: &str) -> Result<()> {
    let unsafe_path = |reason: &str| RuntimeError::UnsafePath {
        file: file.to_string(),
        reason: reason.to_string(),
    };
    if file.is_empty() {
        return Err(unsafe_path("empty file name"));
    }
    if file.contains('\0') {
        return Err(unsafe_path("contains a NUL byte"));
    }
    let path = Path::new(file);
    if path.is_absolute() || path.has_root() {
        return Err(unsafe_path("absolute paths are not allowed"));
    }
    for c in path.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_path("`..` components are not allowed")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_path("absolute paths are not allowed"))
            }
        }
    }
    Ok(())
}

/// Joins `file` to `dir` and makes sure the result, with symlinks resolved, is still inside
/// `dir`. Returns the canonical path.
pub fn resolve_in_dir(dir: &Path, file: &str) -> Result<PathBuf> {
    check_relative_file(file)?;
    let root = dir.canonicalize().map_err(|e| RuntimeError::io(dir, e))?;
    let joined = root.join(file);
    let real = joined
        .canonicalize()
        .map_err(|e| RuntimeError::io(&joined, e))?;
    if !real.starts_with(&root) {
        return Err(RuntimeError::UnsafePath {
            file: file.to_string(),
            reason: format!(
                "resolves to {}, outside the export directory {}",
                real.display(),
                root.display()
            ),
        });
    }
    Ok(real)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is synced and
/// renamed over `path`, so readers see the old or the new file and a failed write leaves the
/// old one intact. Shared by the manifest and the calibration report and plots.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| RuntimeError::ManifestInvalid {
            path: path.to_path_buf(),
            reason: "save path has no file name".into(),
        })?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(RuntimeError::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        RuntimeError::io(path, e)
    })
}

/// Lower-case hex sha256 of `bytes`, as stored in the manifest.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// sha256 of a file's content.
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
    Ok(sha256_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_path_checks() {
        for ok in ["a.onnx", "graphs/a.onnx", "./a.onnx"] {
            assert!(check_relative_file(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../a.onnx",
            "graphs/../../a.onnx",
            "/etc/passwd",
            "a\0b",
        ] {
            assert!(
                matches!(
                    check_relative_file(bad),
                    Err(RuntimeError::UnsafePath { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sha_format() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(check_sha("x", &"A".repeat(64)).is_ok());
        assert!(check_sha("x", &"g".repeat(64)).is_err());
        assert!(check_sha("x", &"a".repeat(63)).is_err());
    }

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
