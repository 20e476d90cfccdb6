//! Checkpoints: one safetensors file holding the weights (BN statistics included), the λ
//! encoding, the optimiser's momentum buffers and, in its metadata, the effective config,
//! the completed epoch count, the data set's shape and class names and the metrics history.
//! One file means one atomic rename: a run killed while saving keeps the previous checkpoint.
//!
//! RNG state: every epoch reseeds torch and the data order from (seed, epoch), so the
//! completed-epoch count *is* the RNG state and a resumed run repeats an uninterrupted one.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::limits::{
    read_limited, MAX_CHANNELS, MAX_CHECKPOINT_BYTES, MAX_CLASSES, MAX_IMAGE_SIDE, MAX_YAML_BYTES,
};

/// Atomic writes and sha256 for the trainer and its callers (the one implementation is
/// `oats_io`'s; its error converts into [`TrainError::Io`]).
pub use oats_io::{sha256_hex, write_atomic};

pub const FORMAT: &str = "oats-checkpoint/1";
pub const FILE_NAME: &str = "checkpoint.safetensors";
/// The checkpoint's record, written beside it at every save: see [`Record`].
pub const RECORD_FILE: &str = "checkpoint.yaml";
pub const RECORD_FORMAT: &str = "oats-checkpoint-record/1";

/// A checkpoint without its weights: its [`Meta`] (config, epochs, metrics history) and the
/// sha256 of the checkpoint file it describes.
///
/// Why: weights are megabytes, a run's numbers are kilobytes. A study keeps (commits) the
/// record and the `eval.yaml` made from the checkpoint, and a comparison reads them on a
/// machine that never held the weights; `eval.yaml` names the checkpoint's sha256, and so does
/// the record, which ties the two together.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub format: String,
    pub checkpoint_sha256: String,
    pub meta: Meta,
}

impl Record {
    /// Writes the record of the checkpoint whose bytes hash to `sha256`, atomically.
    pub fn save(path: &Path, meta: &Meta, sha256: &str) -> Result<()> {
        let r = Record {
            format: RECORD_FORMAT.into(),
            checkpoint_sha256: sha256.into(),
            meta: meta.clone(),
        };
        let text = serde_yaml::to_string(&r).map_err(|e| bad(path, e.to_string()))?;
        Ok(write_atomic(path, text.as_bytes())?)
    }

    /// Reads a record; a foreign, truncated or tampered file is a clear error naming it.
    pub fn load(path: &Path) -> Result<Record> {
        let bytes = read_limited(path, MAX_YAML_BYTES).map_err(|e| TrainError::io(path, e))?;
        let r: Record = serde_yaml::from_slice(&bytes)
            .map_err(|e| bad(path, format!("not a checkpoint record: {e}")))?;
        if r.format != RECORD_FORMAT {
            return Err(bad(
                path,
                format!(
                    "format {:?} is not supported (expected {RECORD_FORMAT:?})",
                    r.format
                ),
            ));
        }
        if !oats_io::is_sha256_hex(&r.checkpoint_sha256) {
            return Err(bad(
                path,
                format!(
                    "checkpoint_sha256 {:?} is not a sha256",
                    r.checkpoint_sha256
                ),
            ));
        }
        r.meta
            .validate()
            .map_err(|e| bad(path, format!("meta: {e}")))?;
        Ok(r)
    }
}

/// Everything a checkpoint holds besides the tensors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub config: TrainConfig,
    /// Completed epochs.
    pub epoch: usize,
    pub in_channels: i64,
    pub height: i64,
    pub width: i64,
    pub class_names: Vec<String>,
    #[serde(default)]
    pub history: Vec<EpochMetrics>,
}

impl Meta {
    /// Checks what a model is built from before it is built: the config, and an input shape
    /// and class count within [`crate::limits`] (a checkpoint declaring 10⁹ input channels
    /// would otherwise allocate a first convolution of that many weights).
    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        let side = |field: &str, v: i64, max: usize| -> Result<()> {
            if v < 1 || v as u64 > max as u64 {
                return Err(TrainError::invalid(
                    field,
                    v,
                    format!("must be in 1..={max}"),
                ));
            }
            Ok(())
        };
        side("in_channels", self.in_channels, MAX_CHANNELS)?;
        side("height", self.height, MAX_IMAGE_SIDE)?;
        side("width", self.width, MAX_IMAGE_SIDE)?;
        if self.class_names.is_empty() || self.class_names.len() > MAX_CLASSES {
            return Err(TrainError::invalid(
                "class_names",
                format!("{} names", self.class_names.len()),
                format!("need 1..={MAX_CLASSES}"),
            ));
        }
        Ok(())
    }
}

/// One line of the per-epoch metrics log, kept in the checkpoint's history.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
    /// Running clean accuracy of the training batches (full width, all λ). `None` when the
    /// run never makes a clean forward pass (a dedicated λ = 1 model), so there is nothing
    /// to measure; a 0 there would read as a broken model. Old checkpoints stored a number,
    /// which still reads as `Some`.
    #[serde(default)]
    pub train_sa: Option<f64>,
    pub samples_per_s: f64,
    pub seconds: f64,
    /// Validation clean accuracy at (λ=min, full width) and (λ=max, full width).
    pub val_sa_lambda_min: f64,
    pub val_sa_lambda_max: f64,
}

/// Tensors by name, on the CPU.
pub struct Loaded {
    pub meta: Meta,
    pub tensors: HashMap<String, Tensor>,
    pub sha256: String,
}

fn bad(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn to_bytes(t: &Tensor) -> Result<(Vec<usize>, Vec<u8>)> {
    let t = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let v: Vec<f32> = Vec::<f32>::try_from(t.flatten(0, -1))?;
    Ok((shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
}

/// Writes `tensors` and `meta` to `path` atomically (temp file, fsync, rename); returns the
/// sha256 of the bytes written (what [`load`] will report for the file).
pub fn save(path: &Path, tensors: &BTreeMap<String, Tensor>, meta: &Meta) -> Result<String> {
    let mut raw = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (shape, bytes) = to_bytes(t)?;
        raw.push((name.clone(), shape, bytes));
    }
    let views = raw
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(path, e.to_string()))?;
    let mut md = HashMap::new();
    md.insert("format".to_string(), FORMAT.to_string());
    md.insert(
        "meta".to_string(),
        serde_yaml::to_string(meta).map_err(|e| bad(path, e.to_string()))?,
    );
    let bytes = safetensors::serialize(views, Some(md)).map_err(|e| bad(path, e.to_string()))?;
    write_atomic(path, &bytes)?;
    Ok(sha256_hex(&bytes))
}

/// Reads a checkpoint; a truncated, foreign or tampered file is a clear error.
///
/// Only a regular file of at most [`MAX_CHECKPOINT_BYTES`] is read. The metadata must be what
/// oats writes and describe a model within [`crate::limits`] ([`Meta::validate`]); every
/// tensor must be F32 with a shape that fits a tensor, and finite values (a NaN weight would
/// make every prediction of the model silently wrong).
pub fn load(path: &Path) -> Result<Loaded> {
    let bytes = read_limited(path, MAX_CHECKPOINT_BYTES).map_err(|e| TrainError::io(path, e))?;
    let sha256 = sha256_hex(&bytes);
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(path, format!("not a readable safetensors file ({e})")))?;
    let md = header.metadata().clone().unwrap_or_default();
    match md.get("format") {
        Some(f) if f == FORMAT => {}
        Some(f) => {
            return Err(bad(
                path,
                format!("format {f:?} is not supported (expected {FORMAT:?})"),
            ))
        }
        None => {
            return Err(bad(
                path,
                "no oats checkpoint metadata (not written by oats-train?)",
            ))
        }
    }
    let meta_text = md
        .get("meta")
        .ok_or_else(|| bad(path, "metadata has no `meta` entry"))?;
    let meta: Meta =
        serde_yaml::from_str(meta_text).map_err(|e| bad(path, format!("metadata: {e}")))?;
    meta.validate()
        .map_err(|e| bad(path, format!("metadata: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(path, e.to_string()))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(
                path,
                format!("tensor {name}: dtype {:?}, expected F32", view.dtype()),
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(bad(
                path,
                format!(
                    "tensor {name}: value {} at index {i} is not finite",
                    data[i]
                ),
            ));
        }
        // safetensors checked that the shape's product is the data's length; a dimension
        // may still not fit i64 when another is 0.
        let shape = view
            .shape()
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<std::result::Result<Vec<i64>, _>>()
            .map_err(|_| {
                bad(
                    path,
                    format!(
                        "tensor {name}: shape {:?} does not fit a tensor",
                        view.shape()
                    ),
                )
            })?;
        let t = Tensor::from_slice(&data)
            .f_view(shape.as_slice())
            .map_err(|e| bad(path, format!("tensor {name}: shape {shape:?}: {e}")))?;
        tensors.insert(name, t);
    }
    Ok(Loaded {
        meta,
        tensors,
        sha256,
    })
}

/// Copies `src` into the model variables, requiring an exact name and shape match.
pub fn restore(
    path: &Path,
    vars: &HashMap<String, Tensor>,
    src: &HashMap<String, Tensor>,
    prefix: &str,
) -> Result<()> {
    let _ng = tch::no_grad_guard();
    for (name, var) in vars {
        let key = format!("{prefix}{name}");
        let t = src
            .get(&key)
            .ok_or_else(|| bad(path, format!("missing tensor {key}")))?;
        if t.size() != var.size() {
            return Err(bad(
                path,
                format!(
                    "tensor {key}: shape {:?}, model expects {:?}",
                    t.size(),
                    var.size()
                ),
            ));
        }
        let mut v = var.shallow_clone();
        v.copy_(t);
    }
    let expected = vars.len();
    let found = src.keys().filter(|k| k.starts_with(prefix)).count();
    if found != expected {
        return Err(bad(
            path,
            format!("{found} tensors under {prefix:?}, model has {expected}"),
        ));
    }
    Ok(())
}
