//! The one error type of the library. Variants are structured (paths, ids, numbers) so that
//! callers can react to them, and every wrapped error keeps its `#[source]`.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// The error of a backend library (tract, ONNX Runtime, the `image` decoders) kept as the
/// source, or a plain message (`String::into`) where the runtime itself found the problem.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in this crate. Match on the variant to react (ask for another
/// configuration, re-download an export, report bad input); the `Display` text names the file,
/// id or limit involved and is meant for logs. `#[non_exhaustive]`: keep a catch-all arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Reading a file, or resolving a path on the file system, failed.
    #[error("cannot read {}: {source}", path.display())]
    ///
    /// A file the manifest lists but that is missing (on disk, or from the
    /// [`ExportFiles`](crate::ExportFiles) of an export in memory) is this error, with
    /// [`std::io::ErrorKind::NotFound`].
    Read {
        /// The file concerned (`memory:/<name>` for an export in memory).
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },

    /// Writing a file (atomically, see [`crate::manifest::write_atomic`]) failed; the previous
    /// file, if any, is intact.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file concerned.
        path: PathBuf,
        /// Why the write failed.
        #[source]
        source: oats_io::Error,
    },

    /// Taking the lock that serialises the writers of an export directory failed
    /// ([`crate::manifest::ManifestLock`]).
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        /// The lock file ([`crate::manifest::LOCK_FILE`] in the export directory).
        path: PathBuf,
        /// Why it could not be taken.
        #[source]
        source: oats_io::Error,
    },

    /// The export directory is no longer the one that was measured (it was exported anew
    /// meanwhile): storing the measurements would attach them to other graphs.
    #[error("{}: {reason}; nothing was stored", path.display())]
    ExportChanged {
        /// The manifest concerned.
        path: PathBuf,
        /// What differs from the export that was measured.
        reason: String,
    },

    /// The path is a FIFO, a device, a socket or a directory. Refused before the file is
    /// opened for reading, so that a FIFO cannot block the process and a device cannot feed
    /// it endless bytes.
    #[error("{} is {kind}, not a regular file; refusing to read it", path.display())]
    NotRegularFile {
        /// The file concerned.
        path: PathBuf,
        /// What it is instead, e.g. "a FIFO" or "a directory".
        kind: &'static str,
    },

    /// The file is larger than the limit for what it holds (checked before it is read).
    #[error(
        "{} is too large for {what}: {size} bytes, the limit is {limit} bytes",
        path.display()
    )]
    FileTooLarge {
        /// The file concerned.
        path: PathBuf,
        /// What the file was read as, e.g. "a manifest" or "an ONNX graph".
        what: &'static str,
        /// Its size in bytes.
        size: u64,
        /// The most bytes accepted for `what`.
        limit: u64,
    },

    /// The manifest is not YAML of the expected form: a syntax error, a missing field or a
    /// value of the wrong type.
    #[error("cannot parse {}{}: {source}", path.display(), location(*line, *column))]
    ManifestParse {
        /// The manifest concerned.
        path: PathBuf,
        /// 1-based; `None` when serde_yaml gave no location.
        line: Option<usize>,
        /// 1-based, like `line`.
        column: Option<usize>,
        /// The YAML parser's error.
        #[source]
        source: serde_yaml::Error,
    },

    /// The manifest parsed but breaks a rule the runtime relies on (a value out of range,
    /// duplicate ids, inconsistent metrics, a file without a sha256, ...), is not UTF-8, or
    /// holds YAML the runtime refuses before parsing (aliases, deep flow nesting). See
    /// [`crate::Manifest::validate`].
    #[error("invalid manifest {}: {reason}", path.display())]
    ManifestInvalid {
        /// The manifest concerned.
        path: PathBuf,
        /// The rule broken, naming the field or graph.
        reason: String,
    },

    /// The manifest could not be turned into YAML when saving it.
    #[error("cannot serialise the manifest for {}: {source}", path.display())]
    ManifestSerialize {
        /// Where it was to be saved.
        path: PathBuf,
        /// The YAML serialiser's error.
        #[source]
        source: serde_yaml::Error,
    },

    /// The reference bundle is not a safetensors file or lacks a tensor it must hold.
    #[error("reference bundle {}: {source}", path.display())]
    ReferenceFormat {
        /// The bundle concerned.
        path: PathBuf,
        /// The safetensors parser's error.
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// The reference bundle is a safetensors file, but a tensor has the wrong type or shape.
    #[error("reference bundle {}: {reason}", path.display())]
    ReferenceInvalid {
        /// The bundle concerned.
        path: PathBuf,
        /// Which tensor, and what is wrong with it.
        reason: String,
    },

    /// The manifest's `schema_version` is not one this crate reads (checked before the rest is
    /// parsed, so a newer format is reported as such rather than as a missing field).
    #[error(
        "{} has schema_version {found}; this oats-runtime supports schema_version 1 to {supported} \
         (re-export the model with a matching oats-export, or upgrade oats-runtime)",
        path.display()
    )]
    UnsupportedSchema {
        /// The manifest concerned.
        path: PathBuf,
        /// The version it declares.
        found: u32,
        /// The newest version this crate reads ([`crate::manifest::SCHEMA_VERSION_EXITS`]); every version from
        /// 1 up to it is read.
        supported: u32,
    },

    /// A file name from the manifest that would leave the export directory, or a manifest
    /// that is a symlink.
    #[error("unsafe path {file:?}: {reason}")]
    UnsafePath {
        /// The name as the manifest writes it (or the manifest's own path).
        file: String,
        /// Why it is refused.
        reason: String,
    },

    /// A file's content is not the one the manifest lists (a graph, the package or the
    /// reference bundle was altered, truncated or replaced). Nothing from it was loaded.
    #[error("sha256 mismatch for {}: manifest says {expected}, file has {actual}", file.display())]
    ShaMismatch {
        /// The file concerned.
        file: PathBuf,
        /// The sha256 the manifest lists.
        expected: String,
        /// The sha256 of the bytes read, lower-case hex.
        actual: String,
    },

    /// The graph file is readable ONNX but refused before any engine sees it: it disagrees
    /// with the manifest (input or output shape, opset, parameter count, MACs, a
    /// `lambda_index` beyond its λ table), or it reads data the manifest's sha256 does not
    /// cover (external data). Both backends refuse the same graphs.
    #[error("graph {} is refused: {reason}", file.display())]
    GraphRefused {
        /// The graph file; for a configuration derived from the package,
        /// `<package file>#<configuration id>`.
        file: PathBuf,
        /// What was refused.
        reason: String,
    },

    /// The graph passed the checks but could not be made ready to run: not decodable as ONNX,
    /// refused by the backend library, or its inputs are not those the manifest's layout
    /// implies. A panic inside the library while loading also ends here.
    #[error("{backend} cannot load graph {}: {source}", file.display())]
    GraphLoad {
        /// The graph file (`<package file>#<id>` for a derived configuration).
        file: PathBuf,
        /// The backend that was loading it ([`crate::Backend::name`]).
        backend: String,
        /// The library's error, or the runtime's message.
        #[source]
        source: BoxError,
    },

    #[error(
        "input shape {got:?} does not match the model's expected {expected:?} ([batch, C, H, W])"
    )]
    /// The input does not have the model's shape. From [`crate::OatsModel::infer`] and its
    /// siblings: C, H or W differ from the manifest's `input.shape`. From
    /// [`crate::Batch::new`]: the buffer's length is not the product of the shape (then
    /// `expected` is the shape given and `got` is `[buffer length]`).
    Shape {
        /// `[batch, C, H, W]` the model takes (or the shape given to `Batch::new`).
        expected: Vec<usize>,
        /// What was passed.
        got: Vec<usize>,
    },

    /// The input holds a NaN or an infinity; no engine is run on it.
    #[error("input holds a non-finite value (NaN or infinity) at flat index {index}")]
    NonFinite {
        /// Position of the first such value in the row-major `[n, C, H, W]` buffer.
        index: usize,
    },

    /// The batch holds no image.
    #[error("input batch is empty (batch size must be at least 1)")]
    EmptyBatch,

    /// A value the caller passed (λ, width, batch size, thread count, iteration count) is
    /// outside what the runtime accepts; nothing was clamped or substituted.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// The argument, e.g. "lambda", "width", "batch", "threads", "selector".
        what: String,
        /// What is wrong with it, and the accepted range where there is one.
        reason: String,
    },

    /// No configuration of the manifest is the one asked for (an unknown id, a (λ, width)
    /// without a graph in an export without a package, a width with no graph).
    #[error("no configuration matches {requested}; available: {}", available.join(", "))]
    NoSuchConfig {
        /// The request, in words.
        requested: String,
        /// Every configuration of the manifest, as `<id> (lambda <λ>, width <w>)`.
        available: Vec<String>,
    },

    /// A [`crate::Policy`] matches no configuration: its thresholds exclude every one, a
    /// threshold is not finite, or it needs a metric the manifest does not record (the reason
    /// then says whether to run `oats-calibrate` or `oats-bench --write-manifest`).
    #[error("no configuration satisfies the policy: {reason}")]
    NoneQualifies {
        /// Which constraint failed, and the best value that was available.
        reason: String,
    },

    /// A backend name ([`crate::Backend`]'s `FromStr`) that is none of `tract`, `ort`,
    /// `ort-cuda`.
    #[error("unknown backend {name:?} (expected one of: {})", expected.join(", "))]
    UnknownBackend {
        /// The name given.
        name: String,
        /// The names accepted ([`crate::Backend::NAMES`]).
        expected: &'static [&'static str],
    },

    /// The backend cannot run here: the crate was built without the `ort` feature, or the
    /// ONNX Runtime library could not be loaded (`ORT_DYLIB_PATH` unset or not naming a
    /// loadable library, or `init_ort` given another library than the one already loaded).
    #[error("backend {backend} is unavailable: {message}{}", caused_by(source.as_ref()))]
    BackendUnavailable {
        /// The backend asked for.
        backend: String,
        /// What is missing, and how to provide it.
        message: String,
        /// The library's error, when there is one (loading the ONNX Runtime library failed).
        #[source]
        source: Option<BoxError>,
    },

    /// [`crate::Backend::OrtCuda`] could not register ONNX Runtime's CUDA execution provider
    /// (for example a CPU-only build of the library, or no usable GPU). The graph is not run on
    /// the CPU instead; open with [`crate::Backend::Ort`] for that.
    #[error("CUDA execution provider could not be registered (no silent CPU fallback): {source}")]
    CudaUnavailable {
        /// ONNX Runtime's error.
        #[source]
        source: BoxError,
    },

    /// An image could not be decoded or converted to the model's input (feature `image`):
    /// an unknown or corrupt format, or a size over the decoding limits of [`crate::input`].
    #[error("cannot use image {}: {source}", path.display())]
    Image {
        /// The image file (or the name given to `input::decode_image`).
        path: PathBuf,
        /// The decoder's error, or the runtime's message.
        #[source]
        source: BoxError,
    },

    /// The export's package (schema v2) is not the one its manifest lists, or what it holds
    /// disagrees with the manifest, or a configuration could not be derived from it. Nothing
    /// was loaded.
    #[error("package {}: {source}", file.display())]
    Package {
        /// The package file.
        file: PathBuf,
        /// oats-graph's error.
        #[source]
        source: oats_graph::Error,
    },

    /// The package and the manifest disagree (λ, widths, input or output).
    #[error("package {} does not match the manifest: {reason}", file.display())]
    PackageMismatch {
        /// The package file.
        file: PathBuf,
        /// What differs.
        reason: String,
    },

    /// A derived configuration's engine would not fit [`crate::Options::cache_bytes`].
    #[error(
        "configuration {id} needs about {bytes} bytes, more than the cache budget of {budget} \
         bytes (Options::cache_bytes); nothing was loaded"
    )]
    OverBudget {
        /// The configuration that was to be derived.
        id: String,
        /// Its estimated resident size (see [`crate::derive`]).
        bytes: u64,
        /// [`crate::Options::cache_bytes`].
        budget: u64,
    },

    /// The engine failed while running a configuration, or returned logits of the wrong
    /// shape or with a NaN or infinity (never passed on as an answer). A panic inside the
    /// library also ends here. The model stays usable.
    #[error("{backend} inference failed: {source}")]
    Inference {
        /// The backend that ran it.
        backend: String,
        /// The library's error, or the runtime's message.
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

/// What a caller can do about an error: the grouping every binding reports (the C ABI's
/// status codes, the Python exception classes, `OatsException.kind` in Java). Kept here, one
/// mapping for all of them, so a new error variant is classified once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An argument out of its range: λ NaN or outside the trained range, an untrained width,
    /// an unknown backend, a bad option or policy threshold, an oversized batch.
    InvalidArgument,
    /// The input is not N×C×H×W of the model's C, H, W, or the batch is empty.
    Shape,
    /// The input holds NaN or an infinity.
    NonFinite,
    /// A file could not be read: missing, not a regular file, too large, or not among the
    /// files given in memory.
    Read,
    /// A file is not what the manifest says: sha256 mismatch, a path leaving the export, a
    /// graph or package refused by the checks, a package or reference bundle that disagrees.
    Integrity,
    /// The manifest cannot be parsed, is invalid, or has an unsupported schema version.
    Manifest,
    /// No configuration has the id or (λ, width) asked for.
    NoSuchConfig,
    /// No configuration satisfies the policy.
    NoneQualifies,
    /// The backend is not available (not built in, no library, no CUDA device), or a derived
    /// configuration is over the cache budget.
    Unavailable,
    /// The engine failed to load or run a graph.
    Engine,
    /// Anything else (writing files, locks, an export changed while measured).
    Other,
}

impl ErrorKind {
    /// The kind's stable name, e.g. "invalid-argument" (Java's `OatsException.kind`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::Shape => "shape",
            ErrorKind::NonFinite => "non-finite",
            ErrorKind::Read => "read",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Manifest => "manifest",
            ErrorKind::NoSuchConfig => "no-such-config",
            ErrorKind::NoneQualifies => "none-qualifies",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Engine => "engine",
            ErrorKind::Other => "other",
        }
    }
}

impl RuntimeError {
    /// What a caller can do about this error ([`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        use RuntimeError as E;
        match self {
            E::InvalidArgument { .. } | E::UnknownBackend { .. } => ErrorKind::InvalidArgument,
            E::Shape { .. } | E::EmptyBatch => ErrorKind::Shape,
            E::NonFinite { .. } => ErrorKind::NonFinite,
            E::Read { .. } | E::NotRegularFile { .. } | E::FileTooLarge { .. } => ErrorKind::Read,
            E::ShaMismatch { .. }
            | E::UnsafePath { .. }
            | E::GraphRefused { .. }
            | E::Package { .. }
            | E::PackageMismatch { .. }
            | E::ReferenceFormat { .. }
            | E::ReferenceInvalid { .. } => ErrorKind::Integrity,
            E::ManifestParse { .. } | E::ManifestInvalid { .. } | E::UnsupportedSchema { .. } => {
                ErrorKind::Manifest
            }
            E::NoSuchConfig { .. } => ErrorKind::NoSuchConfig,
            E::NoneQualifies { .. } => ErrorKind::NoneQualifies,
            E::BackendUnavailable { .. } | E::CudaUnavailable { .. } | E::OverBudget { .. } => {
                ErrorKind::Unavailable
            }
            E::GraphLoad { .. } | E::Inference { .. } => ErrorKind::Engine,
            E::Write { .. }
            | E::Lock { .. }
            | E::ExportChanged { .. }
            | E::ManifestSerialize { .. }
            | E::Image { .. } => ErrorKind::Other,
        }
    }

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
