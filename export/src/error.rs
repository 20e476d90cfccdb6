//! Export errors: which graph, which value, by how much.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Train(#[from] oats_train::TrainError),
    #[error(transparent)]
    Runtime(#[from] oats_runtime::RuntimeError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("graph {graph}: verification failed on {inputs} inputs with {backend}: max |Δlogit| = {max_abs_diff:.3e} (limit {limit:.0e}), argmax differs on {argmax_mismatches} of {samples} samples")]
    Mismatch {
        graph: String,
        backend: String,
        inputs: String,
        max_abs_diff: f64,
        limit: f64,
        argmax_mismatches: usize,
        samples: usize,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;

impl ExportError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ExportError::Io {
            path: path.into(),
            source,
        }
    }
}
