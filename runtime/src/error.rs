//! The one error type of the library. Variants are structured (paths, ids, numbers) so that
//! callers can react to them, and every wrapped error keeps its `#[source]`.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("cannot read or write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot parse {}{}: {message}", path.display(), location(*line, *column))]
    ManifestParse {
        path: PathBuf,
        /// 1-based; `None` when serde_yaml gave no location.
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },

    #[error("invalid manifest {}: {reason}", path.display())]
    ManifestInvalid { path: PathBuf, reason: String },

    #[error(
        "{} has schema_version {found}; this oats-runtime supports schema_version {supported} only \
         (re-export the model with a matching oats-export, or upgrade oats-runtime)",
        path.display()
    )]
    UnsupportedSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error("unsafe graph path {file:?}: {reason}")]
    UnsafePath { file: String, reason: String },

    #[error("sha256 mismatch for {}: manifest says {expected}, file has {actual}", file.display())]
    ShaMismatch {
        file: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("{backend} cannot load graph {}: {message}", file.display())]
    GraphLoad {
        file: PathBuf,
        backend: String,
        message: String,
    },

    #[error(
        "input shape {got:?} does not match the model's expected {expected:?} ([batch, C, H, W])"
    )]
    Shape {
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("input holds a non-finite value (NaN or infinity) at flat index {index}")]
    NonFinite { index: usize },

    #[error("input batch is empty (batch size must be at least 1)")]
    EmptyBatch,

    #[error("no configuration matches {requested}; available: {}", available.join(", "))]
    NoSuchConfig {
        requested: String,
        available: Vec<String>,
    },

    #[error("no configuration satisfies the policy: {reason}")]
    NoneQualifies { reason: String },

    #[error("backend {backend} is unavailable: {message}")]
    BackendUnavailable { backend: String, message: String },

    #[error("CUDA execution provider could not be registered (no silent CPU fallback): {message}")]
    CudaUnavailable { message: String },

    #[error("cannot use image {}: {message}", path.display())]
    Image { path: PathBuf, message: String },

    #[error("inference failed: {message}")]
    Inference { message: String },
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

impl RuntimeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            path: path.into(),
            source,
        }
    }
}
