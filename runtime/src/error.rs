//! The one error type of the library. Variants are structured (paths, ids, numbers) so that
//! callers can react to them, and every wrapped error keeps its `#[source]`.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// The error of a backend library (tract, ONNX Runtime, the `image` decoders) kept as the
/// source, or a plain message (`String::into`) where the runtime itself found the problem.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Reading a file, or resolving a path on the file system, failed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Writing a file (atomically, see [`crate::manifest::write_atomic`]) failed; the previous
    /// file, if any, is intact.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: oats_io::Error,
    },

    /// Taking the lock that serialises the writers of an export directory failed
    /// ([`crate::manifest::ManifestLock`]).
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: oats_io::Error,
    },

    /// The export directory is no longer the one that was measured (it was exported anew
    /// meanwhile): storing the measurements would attach them to other graphs.
    #[error("{}: {reason}; nothing was stored", path.display())]
    ExportChanged { path: PathBuf, reason: String },

    /// The path is a FIFO, a device, a socket or a directory. Refused before the file is
    /// opened for reading, so that a FIFO cannot block the process and a device cannot feed
    /// it endless bytes.
    #[error("{} is {kind}, not a regular file; refusing to read it", path.display())]
    NotRegularFile { path: PathBuf, kind: &'static str },

    /// The file is larger than the limit for what it holds (checked before it is read).
    #[error(
        "{} is too large for {what}: {size} bytes, the limit is {limit} bytes",
        path.display()
    )]
    FileTooLarge {
        path: PathBuf,
        what: &'static str,
        size: u64,
        limit: u64,
    },

    #[error("cannot parse {}{}: {source}", path.display(), location(*line, *column))]
    ManifestParse {
        path: PathBuf,
        /// 1-based; `None` when serde_yaml gave no location.
        line: Option<usize>,
        column: Option<usize>,
        #[source]
        source: serde_yaml::Error,
    },

    #[error("invalid manifest {}: {reason}", path.display())]
    ManifestInvalid { path: PathBuf, reason: String },

    #[error("cannot serialise the manifest for {}: {source}", path.display())]
    ManifestSerialize {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },

    /// The reference bundle is not a safetensors file or lacks a tensor it must hold.
    #[error("reference bundle {}: {source}", path.display())]
    ReferenceFormat {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// The reference bundle is a safetensors file, but a tensor has the wrong type or shape.
    #[error("reference bundle {}: {reason}", path.display())]
    ReferenceInvalid { path: PathBuf, reason: String },

    #[error(
        "{} has schema_version {found}; this oats-runtime supports schema_version 1 to {supported} \
         (re-export the model with a matching oats-export, or upgrade oats-runtime)",
        path.display()
    )]
    UnsupportedSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// A file name from the manifest that would leave the export directory, or a manifest
    /// that is a symlink.
    #[error("unsafe path {file:?}: {reason}")]
    UnsafePath { file: String, reason: String },

    #[error("sha256 mismatch for {}: manifest says {expected}, file has {actual}", file.display())]
    ShaMismatch {
        file: PathBuf,
        expected: String,
        actual: String,
    },

    /// The graph file is readable ONNX but refused before any engine sees it: it disagrees
    /// with the manifest (input or output shape, opset, parameter count, MACs, a
    /// `lambda_index` beyond its λ table), or it reads data the manifest's sha256 does not
    /// cover (external data). Both backends refuse the same graphs.
    #[error("graph {} is refused: {reason}", file.display())]
    GraphRefused { file: PathBuf, reason: String },

    #[error("{backend} cannot load graph {}: {source}", file.display())]
    GraphLoad {
        file: PathBuf,
        backend: String,
        #[source]
        source: BoxError,
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

    /// A value the caller passed (λ, width, batch size, thread count, iteration count) is
    /// outside what the runtime accepts; nothing was clamped or substituted.
    #[error("invalid {what}: {reason}")]
    InvalidArgument { what: String, reason: String },

    #[error("no configuration matches {requested}; available: {}", available.join(", "))]
    NoSuchConfig {
        requested: String,
        available: Vec<String>,
    },

    #[error("no configuration satisfies the policy: {reason}")]
    NoneQualifies { reason: String },

    #[error("unknown backend {name:?} (expected one of: {})", expected.join(", "))]
    UnknownBackend {
        name: String,
        expected: &'static [&'static str],
    },

    #[error("backend {backend} is unavailable: {message}{}", caused_by(source.as_ref()))]
    BackendUnavailable {
        backend: String,
        message: String,
        /// The library's error, when there is one (loading the ONNX Runtime library failed).
        #[source]
        source: Option<BoxError>,
    },

    #[error("CUDA execution provider could not be registered (no silent CPU fallback): {source}")]
    CudaUnavailable {
        #[source]
        source: BoxError,
    },

    #[error("cannot use image {}: {source}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: BoxError,
    },

    /// The export's package (schema v2) is not the one its manifest lists, or what it holds
    /// disagrees with the manifest, or a configuration could not be derived from it. Nothing
    /// was loaded.
    #[error("package {}: {source}", file.display())]
    Package {
        file: PathBuf,
        #[source]
        source: oats_graph::Error,
    },

    /// The package and the manifest disagree (λ, widths, input or output).
    #[error("package {} does not match the manifest: {reason}", file.display())]
    PackageMismatch { file: PathBuf, reason: String },

    /// A derived configuration's engine would not fit [`crate::Options::cache_bytes`].
    #[error(
        "configuration {id} needs about {bytes} bytes, more than the cache budget of {budget} \
         bytes (Options::cache_bytes); nothing was loaded"
    )]
    OverBudget { id: String, bytes: u64, budget: u64 },

    #[error("{backend} inference failed: {source}")]
    Inference {
        backend: String,
        #[source]
        source: BoxError,
    },
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

/// ": <source>" for messages whose source is optional.
fn caused_by(source: Option<&BoxError>) -> String {
    source.map(|e| format!(": {e}")).unwrap_or_default()
}

impl RuntimeError {
    /// [`RuntimeError::Read`] of `path`.
    pub(crate) fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Read {
            path: path.into(),
            source,
        }
    }

    /// [`RuntimeError::InvalidArgument`] about `what`.
    pub(crate) fn invalid_argument(what: impl Into<String>, reason: impl Into<String>) -> Self {
        RuntimeError::InvalidArgument {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// [`RuntimeError::BackendUnavailable`] with a message and no library error.
    pub(crate) fn unavailable(backend: impl Into<String>, message: impl Into<String>) -> Self {
        RuntimeError::BackendUnavailable {
            backend: backend.into(),
            message: message.into(),
            source: None,
        }
    }

    /// [`RuntimeError::Inference`] on `backend` caused by `source` (a library error, or a
    /// message where the runtime found the problem).
    pub(crate) fn inference(backend: impl Into<String>, source: impl Into<BoxError>) -> Self {
        RuntimeError::Inference {
            backend: backend.into(),
            source: source.into(),
        }
    }
}
