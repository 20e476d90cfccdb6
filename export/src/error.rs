//! Export errors: which graph, which value, by how much.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Train(#[from] oats_train::TrainError),
    #[error(transparent)]
    Runtime(#[from] oats_runtime::RuntimeError),
    #[error(transparent)]
    Graph(#[from] oats_graph::Error),
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
    /// `--out` holds something an export may not replace (see `out_dir`).
    #[error(
        "refusing to replace {}: {reason}. oats-export replaces only an earlier export (a \
         directory with a valid manifest.yaml, the files it lists and what oats writes beside \
         them); nothing was changed: move it away or choose another --out",
        path.display()
    )]
    NotAnExport { path: PathBuf, reason: String },
    #[error("invalid request: {0}")]
    Invalid(String),
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;

/// A failed lock, swap or atomic write keeps its path and `io::Error` source.
impl From<oats_io::Error> for ExportError {
    fn from(e: oats_io::Error) -> Self {
        ExportError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl ExportError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ExportError::Io {
            path: path.into(),
            source,
        }
    }
}
