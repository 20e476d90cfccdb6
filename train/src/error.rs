//! The one error type of the training library. Variants keep the offending path, value
//! and source so that a CLI can print exactly what went wrong and where.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    ConfigParse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid config: {field} = {value}: {reason}")]
    ConfigInvalid {
        field: String,
        value: String,
        reason: String,
    },
    #[error("invalid lambda {value}: {reason}")]
    Lambda { value: f64, reason: String },
    #[error("width {value} is not one of the model's widths {available:?}")]
    Width { value: f64, available: Vec<f64> },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("cannot write {what} as YAML: {source}")]
    Yaml {
        what: &'static str,
        #[source]
        source: serde_yaml::Error,
    },
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("device: {0}")]
    Device(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("data-parallel rank {rank}: {what}: {source}")]
    Dist {
        rank: usize,
        what: String,
        #[source]
        source: oats_c10d::Error,
    },
    #[error("data-parallel rank {rank}: the ranks' copies of {tensor} differ (replicas drifted apart; a bug, or ranks that were given different data or code)")]
    Replicas { rank: usize, tensor: String },
    #[error("data-parallel rank {rank}: {reason}")]
    DistSetup { rank: usize, reason: String },
    #[error("data-parallel launch: {0}")]
    Launch(String),
    #[error("training diverged at epoch {epoch}, batch {batch}: loss is {loss}")]
    Diverged {
        epoch: usize,
        batch: usize,
        loss: f64,
    },
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// A failed atomic write or hash keeps its path and `io::Error` source.
impl From<oats_io::Error> for TrainError {
    fn from(e: oats_io::Error) -> Self {
        TrainError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn invalid(field: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        TrainError::ConfigInvalid {
            field: field.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
