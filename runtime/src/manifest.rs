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
pub(crate) use validate::same_values;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

use crate::files::read_regular_file_no_symlink;
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

/// Largest C·H·W of one model input (16 Mi values, 64 MiB of f32): a 3×2048×2048 image fits
/// with room to spare. [`crate::Manifest::validate`] refuses larger input shapes.
pub const MAX_INPUT_ELEMENTS: usize = 1 << 24;

/// The manifest format this crate writes for an export with a package: version 2 adds the
/// optional [`Manifest::package`]. Version 1 manifests (no package) still read and are saved
/// as they were read (a v1 manifest stays v1, so an older runtime can still read what
/// `oats-calibrate` rewrites); a `package` entry requires version 2.
pub const SCHEMA_VERSION: u32 = 2;

/// The first manifest format, without a package.
pub const SCHEMA_VERSION_V1: u32 = 1;

/// The manifest format of an export with side exits: version 3 adds [`GraphEntry::exits`].
/// The exporter writes it only for a model with exits, so a plain export stays readable by
/// a runtime that predates exits, and such a runtime refuses an exit export by its version
/// instead of running the backbone alone.
pub const SCHEMA_VERSION_EXITS: u32 = 3;

/// Every `schema_version` this crate reads.
pub const SUPPORTED_SCHEMAS: [u32; 3] = [SCHEMA_VERSION_V1, SCHEMA_VERSION, SCHEMA_VERSION_EXITS];

/// File name of the manifest inside an export directory.
pub const MANIFEST_FILE: &str = "manifest.yaml";

/// The lock file inside an export directory that serialises its writers (`oats-calibrate`,
/// `oats-bench --write-manifest`, and `oats-export` replacing the directory). Hidden, created on
/// demand, never removed (see `oats_io::lock`).
pub const LOCK_FILE: &str = ".oats.lock";

/// Largest manifest accepted, in bytes. A calibrated graph takes about 700 bytes, so this is
/// over a thousand graphs; it bounds the parser's memory (its event list grows with the text)
/// before a byte is parsed.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Name of the extra int64 input (shape `[1]`) of `shared_weights` graphs: oats-graph's, which
/// lowers them.
pub use oats_graph::LAMBDA_INDEX_INPUT;

/// How the graphs of an export are laid out (`folded` | `shared_weights`): oats-graph's type,
/// the one the exporter lowers with.
pub use oats_graph::Layout;

/// The contents of `manifest.yaml`: what the model takes and returns, and every configuration
/// the export offers. Obtained validated from [`Manifest::load`] or
/// [`crate::OatsModel::manifest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, 1, [`SCHEMA_VERSION`] or [`SCHEMA_VERSION_EXITS`]; a manifest is saved with the version it was
    /// read with.
    pub schema_version: u32,
    /// Names the model (not empty); informational.
    pub model_id: String,
    /// sha256 of the training checkpoint the export came from: tells two exports apart, and
    /// lets measurements refuse to be stored on an export made anew meanwhile.
    pub source_checkpoint_sha256: String,
    /// How the model was trained.
    pub training: TrainingSummary,
    /// What every configuration takes.
    pub input: InputSpec,
    /// What every configuration returns.
    pub output: OutputSpec,
    /// One name per output class, or empty; see [`Manifest::class_name`].
    pub class_names: Vec<String>,
    /// Whether each graph file holds one λ (`folded`) or all λ of a width selected by the
    /// `lambda_index` input (`shared_weights`).
    pub layout: Layout,
    /// Every configuration, in the order the export wrote them; the first is active when a
    /// model is opened. Never empty.
    pub graphs: Vec<GraphEntry>,
    /// Inputs and trainer logits per graph, to prove the export reproduces the trainer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceBundle>,
    /// Schema v2: the package every (λ, width) can be derived from on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageEntry>,
}

/// The package file of an export (schema v2): the model as plain data (`oats_graph::Package`),
/// from which the runtime derives any λ in the trained range at any trained width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageEntry {
    /// Relative to the export directory, normally `package.safetensors`.
    pub file: String,
    /// sha256 of the file, checked on the bytes parsed before anything is derived.
    pub sha256: String,
    /// The package format, `oats_graph::package::FORMAT` (e.g. "oats-package/1").
    pub format: String,
    /// The training λ values the package holds (equal to `training.lambdas`).
    pub lambdas: Vec<f64>,
    /// The trained widths (equal to `training.widths`).
    pub widths: Vec<f64>,
}

/// How the model was trained (informational; the runtime only validates ranges).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// "oat" | "oats" | "pgd-at" | "pgd-ats"
    pub mode: String,
    /// The network architecture.
    pub arch: String,
    /// The data set trained on.
    pub dataset: String,
    /// L∞ radius of the training attack (≥ 0).
    pub epsilon: f64,
    /// The attack trained against.
    pub attack: String,
    /// The λ values trained: every configuration's λ lies within their range, and derived
    /// configurations may use any λ in it.
    pub lambdas: Vec<f64>,
    /// The widths trained: every configuration's width is one of them.
    pub widths: Vec<f64>,
    /// Training epochs.
    pub epochs: u32,
}

/// The model's image input: what a [`crate::Batch`] must look like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Graph input name, normally "image".
    pub name: String,
    /// (C, H, W); the batch dimension is dynamic.
    pub shape: [usize; 3],
    /// Range of pixel values the graph expects, e.g. `[0.0, 1.0]`.
    pub value_range: [f32; 2],
}

/// The model's output: one logit per class for each image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Graph output name, normally "logits".
    pub name: String,
    /// Number of classes (logits per image).
    pub classes: usize,
}

/// One configuration (λ, width) of the model: a graph file, or (schema v2, with a package) a
/// configuration the runtime derives from the package when it is selected. Either way the
/// entry carries what policies choose by (MACs, calibrated metrics), so `oats-calibrate
/// --lambdas` can calibrate a λ grid finer than the exported graphs without writing a file
/// per configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphEntry {
    /// Unique id, e.g. "l0.1-w0.5".
    pub id: String,
    /// Robustness weight in [0, 1], within the range of `training.lambdas`.
    pub lambda: f64,
    /// Width multiplier, one of `training.widths`.
    pub width: f64,
    /// File name relative to the export directory. Several entries may share one file when
    /// `layout = shared_weights`. `None` (schema v2 only, with a package): derived from the
    /// package on the device ([`GraphEntry::is_derived`]); then `sha256` and `lambda_index`
    /// are absent too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// sha256 of `file`, present exactly when `file` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `shared_weights` only: the value fed to the int64 input `lambda_index` (shape `[1]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_index: Option<u32>,
    /// Parameter count; checked against the graph (or what is derived) at load.
    pub params: u64,
    /// Multiply-accumulates per image, what [`crate::Policy::max_macs`] reads; checked
    /// against the graph at load.
    pub macs: u64,
    /// ONNX opset of the graph; checked against the graph at load.
    pub opset: u32,
    /// Number format of the graph's weights and activations; `float32` when absent (every
    /// manifest before int8). Checked against the graph at load: an int8 graph holds
    /// QuantizeLinear nodes, a float one none.
    #[serde(default, skip_serializing_if = "Precision::is_float32")]
    pub precision: Precision,
    /// How an int8 graph was made; present exactly when `precision` is `int8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
    /// Calibrated accuracy and measured latency; empty until measured.
    #[serde(default)]
    pub metrics: Metrics,
    /// Schema v3: the configuration as chained segments and exit heads, for routed
    /// inference. `file` stays the whole backbone in one graph (the final exit only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exits: Option<ExitsEntry>,
}

/// The side exits of one configuration (schema v3): `segments[0]` maps the image to its
/// features, each later segment the previous features to its own, `heads[k]` the features of
/// `segments[k]` to exit k's logits, and the last segment ends in the final classifier
/// (`oats_graph::Segmented`). A sample leaves at the first exit whose softmax entropy is below
/// that exit's threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitsEntry {
    /// The blocks the side exits follow (1-based, strictly increasing).
    pub after_blocks: Vec<usize>,
    /// One more than the side exits.
    pub segments: Vec<PartEntry>,
    /// One per side exit.
    pub heads: Vec<PartEntry>,
    /// [C, H, W] of the features at each side exit: what its head and the next segment read
    /// (a segment returns them flattened).
    pub features: Vec<[usize; 3]>,
    /// MACs of one sample answered at each exit, the final one last (earlier heads
    /// included); strictly increasing. The final value is the entry's `macs` plus every head.
    pub exit_macs: Vec<u64>,
    /// The calibrated routing; absent until `oats-calibrate` fitted it (then the runtime
    /// runs the whole network unless thresholds are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
}

/// One segment or head: a graph file, or (for a configuration derived from the package, whose
/// entry has no file) what is derived on the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartEntry {
    /// Relative to the export directory; present exactly when the configuration's entry has
    /// a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// sha256 of the file, checked before it is parsed; present exactly when `file` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// MACs of one sample through this part alone; checked against the graph at load.
    pub macs: u64,
    /// Parameters of this part; checked against the graph at load.
    pub params: u64,
}

/// Entropy thresholds of the side exits and what they gave where they were fitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// Per side exit: a sample leaves there when the entropy of its softmax (nats) is below
    /// this. 0 never leaves early.
    pub thresholds: Vec<f64>,
    /// What they were fitted for, e.g. "0.7 of the full MACs".
    pub target: String,
    /// The images they were fitted on, e.g. "fashion-mnist val[0..1000]" (never test).
    pub fitted_on: String,
    /// Fraction of those images answered at each exit, the final one last (sums to 1).
    pub exit_mix: Vec<f64>,
    /// Mean MACs per image on them: what a policy's `max_macs` reads for this entry.
    pub mean_macs: f64,
    /// Clean accuracy of the routed prediction on them (what `infer` serves with these
    /// thresholds); a policy's `min_sa` reads it in place of `metrics.sa`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sa: Option<f64>,
    /// Per-sample worst-case robust accuracy of the routed prediction (main-branch, average,
    /// max-average and routed attacks); a policy's `min_ra` reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ra_worst: Option<f64>,
    /// Wall-clock ms per image of routed inference on the clean images, by
    /// "<backend>/b<batch>" (median of interleaved rounds, measured by calibration); a
    /// policy's latency constraint and objective read it in place of `metrics.latency_ms`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latency_ms: BTreeMap<String, f64>,
}

/// Number format of a graph (the manifest's `precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit float throughout.
    #[default]
    Float32,
    /// ONNX QDQ int8: per-channel symmetric int8 weights, per-tensor uint8 activations
    /// (`oats_graph::quant`).
    Int8,
}

impl Precision {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Float32 => "float32",
            Precision::Int8 => "int8",
        }
    }
    fn is_float32(&self) -> bool {
        *self == Precision::Float32
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an int8 graph was made from its float configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// Id of the float graph it quantizes (same λ and width).
    pub float_id: String,
    /// The images its activation ranges were calibrated on, e.g.
    /// "fashion-mnist train[0..512]" (never the validation or test split).
    pub calibration_images: String,
    /// Top-1 agreement with the float graph on the verification images, in [0, 1].
    pub top1_agreement: f64,
    /// Largest |int8 − float| logit on the verification images.
    pub max_logit_error: f64,
    /// The images the agreement was measured on, e.g. "fashion-mnist val[0..1000]".
    pub verification_images: String,
    /// The calibrated [min, max] of each quantized activation, in the order
    /// `oats_graph::quant::activation_points` lists them. With the package, this is all a
    /// device needs to derive the configuration when the entry has no file
    /// (`oats_graph::quant::lower_int8`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activation_ranges: Vec<[f32; 2]>,
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
    /// Latency per `<backend>/b<batch>` key, e.g. "tract/b1".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latency_ms: BTreeMap<String, LatencyStat>,
    /// Data split the accuracies were measured on ("val" for calibration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Number of samples every accuracy is a fraction of; required when there are
    /// accuracies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// L∞ radius of the attacks behind `ra`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// The machine `oats-calibrate` measured on (CPU model, cores, architecture); latencies
    /// only hold there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl GraphEntry {
    /// The calibrated routing of a configuration with side exits: what `infer` serves for it.
    pub fn routing(&self) -> Option<&Routing> {
        self.exits.as_ref().and_then(|e| e.routing.as_ref())
    }

    /// Served by deriving it from the package, not from a graph file of its own.
    pub fn is_derived(&self) -> bool {
        self.file.is_none()
    }

    /// The entry of a configuration derived from the package (no file), uncalibrated: what
    /// the runtime lowers (`oats_graph::Package::lower_folded`) has these MACs and params and
    /// oats-graph's opset.
    pub fn derived(id: String, lambda: f64, width: f64, params: u64, macs: u64) -> GraphEntry {
        GraphEntry {
            id,
            lambda,
            width,
            file: None,
            sha256: None,
            lambda_index: None,
            params,
            macs,
            opset: oats_graph::onnx::OPSET,
            precision: Precision::Float32,
            quantization: None,
            metrics: Metrics::default(),
            exits: None,
        }
    }

    /// An int8 graph.
    pub fn is_int8(&self) -> bool {
        self.precision == Precision::Int8
    }
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

/// The key of [`Metrics::latency_ms`]: `<backend>/b<batch>`, e.g. `tract/b1`. Written by
/// `oats-bench --write-manifest` and `oats-calibrate`, read by the latency policies.
pub fn latency_key(backend: &str, batch: usize) -> String {
    format!("{backend}/b{batch}")
}

/// Latency percentiles of one inference, in milliseconds (p50 ≤ p90 ≤ p99).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyStat {
    /// Median; what latency policies compare.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// A safetensors file with tensor `input` f32 `[N,C,H,W]` and one tensor `logits.<graph id>`
/// f32 `[N, classes]` per graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceBundle {
    /// Relative to the export directory.
    pub file: String,
    /// sha256 of the file, checked on its bytes before they are parsed.
    pub sha256: String,
}

/// Only the version, parsed first so that a future format is reported as such instead of as
/// whatever field it happens to lack.
#[derive(Deserialize)]
struct VersionProbe {
    schema_version: u32,
}

impl Manifest {
    /// Reads and validates `path` (usually `<export-dir>/manifest.yaml`). The file must be a
    /// regular file, not a symlink (what the manifest says decides which graph files are
    /// trusted, so it must be the export's own), of at most [`MAX_MANIFEST_BYTES`].
    pub fn load(path: impl AsRef<Path>) -> Result<Manifest> {
        let path = path.as_ref();
        let bytes = read_regular_file_no_symlink(path, "a manifest", MAX_MANIFEST_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|e| RuntimeError::ManifestInvalid {
            path: path.to_path_buf(),
            reason: format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?;
        Manifest::from_yaml_str(&text, path)
    }

    /// Parses and validates YAML text; `source` only names the file in errors. Text over
    /// [`MAX_MANIFEST_BYTES`], YAML aliases and deep flow nesting are refused before parsing
    /// (see [`yaml_refusal`]); block nesting costs the parser linear time and is bounded by
    /// the size.
    pub fn from_yaml_str(text: &str, source: &Path) -> Result<Manifest> {
        let size = text.len() as u64;
        if size > MAX_MANIFEST_BYTES {
            return Err(RuntimeError::FileTooLarge {
                path: source.to_path_buf(),
                what: "a manifest",
                size,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        if let Some(r) = yaml_refusal(text) {
            return Err(yaml_refused(source, r));
        }
        if let Ok(probe) = serde_yaml::from_str::<VersionProbe>(text) {
            if !SUPPORTED_SCHEMAS.contains(&probe.schema_version) {
                return Err(RuntimeError::UnsupportedSchema {
                    path: source.to_path_buf(),
                    found: probe.schema_version,
                    supported: SCHEMA_VERSION_EXITS,
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
        // What load would refuse is not written (a string such as a class name " *x").
        if let Some(r) = yaml_refusal(&text) {
            return Err(yaml_refused(path, r));
        }
        write_atomic(path, text.as_bytes())
    }

    /// Every file the manifest lists, as written in it: graph files, the segments and heads of
    /// configurations with side exits, the reference bundle and the package (a file shared
    /// by several graphs is listed once per graph).
    pub fn listed_files(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for g in &self.graphs {
            out.extend(g.file.as_deref());
            if let Some(e) = &g.exits {
                out.extend(
                    e.segments
                        .iter()
                        .chain(&e.heads)
                        .filter_map(|p| p.file.as_deref()),
                );
            }
        }
        out.extend(self.reference.iter().map(|r| r.file.as_str()));
        out.extend(self.package.iter().map(|p| p.file.as_str()));
        out
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

/// Deepest nesting of flow collections (`[`, `{`) accepted. oats writes block style, where
/// flow collections appear only empty (`[]`); the YAML scanner's cost grows with the square
/// of the flow depth (100,000 nested `[` in 200 KB took over a minute to refuse).
pub const MAX_FLOW_DEPTH: usize = 32;

/// Why [`yaml_refusal`] refuses a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YamlRefusal {
    /// A `*` that could start an alias.
    Alias,
    /// Flow collections nested deeper than [`MAX_FLOW_DEPTH`].
    Nesting,
}

/// Line and column (1-based) of the first thing in `text` that the manifest parser is not
/// given, if any: a YAML alias, or flow collections nested deeper than [`MAX_FLOW_DEPTH`].
///
/// An alias repeats an anchored node wherever it appears, so a few kilobytes of aliases to
/// a long string expand to gigabytes in the parsed manifest (serde_yaml bounds the number of
/// alias jumps, not the bytes they copy). oats never writes aliases, so they are refused
/// outright. The rules are deliberately simpler than YAML's grammar and err towards
/// refusing: a `*` counts unless the character before it is an ASCII letter or digit (`a*b`
/// is a plain scalar; `*a`, `[*a`, `: *a`, even `' *a'` in quotes or a comment, count), and
/// every `[` or `{` counts as nesting, in quotes too. oats' own writer applies the same rules
/// before saving ([`Manifest::save`]), so what it writes it can read.
pub fn yaml_refusal(text: &str) -> Option<(usize, usize, YamlRefusal)> {
    let mut prev: Option<char> = None;
    let (mut line, mut column, mut depth) = (1, 0, 0usize);
    for ch in text.chars() {
        column += 1;
        match ch {
            '*' if !prev.is_some_and(|p| p.is_ascii_alphanumeric()) => {
                return Some((line, column, YamlRefusal::Alias))
            }
            '[' | '{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some((line, column, YamlRefusal::Nesting));
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            '\n' => {
                line += 1;
                column = 0;
            }
            _ => {}
        }
        prev = Some(ch);
    }
    None
}

fn yaml_refused(path: &Path, (line, column, why): (usize, usize, YamlRefusal)) -> RuntimeError {
    let reason = match why {
        YamlRefusal::Alias => format!(
            "line {line}, column {column}: a `*` that can start a YAML alias; aliases are \
             refused (they can expand a small file into gigabytes, and oats never writes them)"
        ),
        YamlRefusal::Nesting => format!(
            "line {line}, column {column}: `[` / `{{` nested more than {MAX_FLOW_DEPTH} deep"
        ),
    };
    RuntimeError::ManifestInvalid {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_refusals() {
        use YamlRefusal::*;
        assert_eq!(yaml_refusal("a: b*c\nd: 2*3\ne: [[1], {x: []}]\n"), None);
        assert_eq!(yaml_refusal("a: &x 1\nb: *x\n"), Some((2, 4, Alias)));
        assert_eq!(yaml_refusal("*x"), Some((1, 1, Alias)));
        assert_eq!(yaml_refusal("a: [1,*x]"), Some((1, 7, Alias)));
        assert_eq!(yaml_refusal("a:\u{2028}*x"), Some((1, 4, Alias)));
        let deep = format!("a: {}", "[".repeat(MAX_FLOW_DEPTH + 1));
        assert_eq!(yaml_refusal(&deep), Some((1, 4 + MAX_FLOW_DEPTH, Nesting)));
        let ok = format!(
            "a: {}{}",
            "[".repeat(MAX_FLOW_DEPTH),
            "]".repeat(MAX_FLOW_DEPTH)
        );
        assert_eq!(yaml_refusal(&ok), None);
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
