//! Calibration errors: which graph, which backend, by how much.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error(transparent)]
    Train(#[from] oats_train::TrainError),
    #[error(transparent)]
    Runtime(#[from] oats_runtime::RuntimeError),
    #[error(transparent)]
    Data(#[from] oats_train::data::DataError),
    #[error(transparent)]
    Export(#[from] oats_export::ExportError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{}: format {found:?} is not {expected:?}", path.display())]
    Format {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error(
        "the export was made from checkpoint sha256 {manifest}, but {} has sha256 {checkpoint}: \
         calibrating one model's graphs with another model's attacks would measure nothing",
        path.display()
    )]
    CheckpointMismatch {
        path: PathBuf,
        manifest: String,
        checkpoint: String,
    },
    /// The runtime's graph and the attacked trainer model classify differently beyond ties.
    #[error(
        "graph {graph}: replay through {backend} disagrees with the trainer's model on {disagreements} of {samples} \
         {images} images, of which only {ties} are ties (top-2 logit margin < {tie_margin:.0e}); trainer {what} {tch:.4}, \
         runtime {runtime:.4}. The exported graph does not compute the attacked model",
        what = if *.images == "clean" { "SA" } else { "RA" }
    )]
    ReplayMismatch {
        graph: String,
        backend: String,
        /// "clean" or "adversarial".
        images: &'static str,
        samples: usize,
        disagreements: usize,
        ties: usize,
        /// Top-2 logit margin under which a disagreement is a tie.
        tie_margin: f64,
        /// Trainer's SA (clean) or worst-case RA (adversarial).
        tch: f64,
        /// The runtime's.
        runtime: f64,
    },
    /// Sanity check (c): the graph's clean logits are not the trainer's at that (λ, width),
    /// e.g. because the graph bakes in the other BN branch.
    #[error(
        "graph {graph}: {backend} clean logits differ from the trainer's at λ = {lambda}, width = {width} by up to \
         {max_abs_diff:.3e} (limit {limit:.0e}): the graph and the attacked model are not the same function \
         (BN branch or weights differ)"
    )]
    LogitMismatch {
        graph: String,
        backend: String,
        lambda: f64,
        width: f64,
        max_abs_diff: f64,
        limit: f64,
    },
    /// A point of the `--lambdas` grid the export cannot serve (λ outside the trained range,
    /// a width not trained, a package that does not check out).
    #[error("--lambdas/--widths: configuration λ = {lambda}, width {width}")]
    GridPoint {
        lambda: f64,
        width: f64,
        #[source]
        source: oats_runtime::RuntimeError,
    },
    #[error("plot {}: {message}", path.display())]
    Plot { path: PathBuf, message: String },
    #[error("invalid request: {0}")]
    Invalid(String),
}

pub type Result<T, E = CalibrateError> = std::result::Result<T, E>;

impl CalibrateError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CalibrateError::Io {
            path: path.into(),
            source,
        }
    }
}
