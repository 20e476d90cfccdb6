//! The `oats` Python module: a thin PyO3 layer over [`oats_runtime::OatsModel`].
//!
//! ```python
//! import numpy as np, oats
//! m = oats.Model("assets/pretrained/oats-small-fmnist")
//! m.select(lambda_=0.15, width=1.0)            # any trained-range λ: derived on the device
//! logits, config = m.infer(np.zeros((1, 1, 28, 28), np.float32))
//! ```
//!
//! Every decision is the runtime's; this file converts arguments and results and maps each
//! kind of `RuntimeError` to its own exception class (all subclasses of `oats.OatsError`).
//! Inference releases the GIL, so Python threads infer in parallel (with tract).
#![warn(missing_docs)]

use std::collections::HashMap;
use std::path::PathBuf;

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray4, PyUntypedArrayMethods};
use oats_runtime::{
    Backend, Batch, ConfigInfo, ExportFiles, GraphEntry, OatsModel, Objective, Options, Policy,
    RuntimeError, Selector,
};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    oats,
    OatsError,
    PyException,
    "Base class of every oats error."
);
create_exception!(
    oats,
    InvalidArgumentError,
    OatsError,
    "An argument out of range: λ NaN or outside the trained range, an untrained width, an unknown backend or objective."
);
create_exception!(
    oats,
    ShapeError,
    OatsError,
    "The input is not N×C×H×W of the model's C, H, W, or the batch is empty."
);
create_exception!(
    oats,
    NonFiniteError,
    OatsError,
    "The input holds NaN or an infinity."
);
create_exception!(
    oats,
    ReadError,
    OatsError,
    "A file of the export could not be read (missing, not a regular file, too large)."
);
create_exception!(
    oats,
    IntegrityError,
    OatsError,
    "A file is not what the manifest says: sha256 mismatch, a path leaving the export, a graph or package refused by the checks."
);
create_exception!(
    oats,
    ManifestError,
    OatsError,
    "The manifest cannot be parsed, is invalid, or has an unsupported schema version."
);
create_exception!(
    oats,
    NoSuchConfigError,
    OatsError,
    "No configuration has the id or (λ, width) asked for."
);
create_exception!(
    oats,
    NoneQualifiesError,
    OatsError,
    "No configuration satisfies the policy."
);
create_exception!(
    oats,
    UnavailableError,
    OatsError,
    "The backend is not available (not built in, no library, no CUDA), or a derived configuration is over the cache budget."
);
create_exception!(
    oats,
    EngineError,
    OatsError,
    "The engine failed to load or run a graph."
);

/// The exception of `e` (one class per [`oats_runtime::ErrorKind`]), with the whole error
/// chain as its message.
fn to_py(e: RuntimeError) -> PyErr {
    use oats_runtime::ErrorKind as K;
    let msg = oats_io::error_chain(&e);
    match e.kind() {
        K::InvalidArgument => InvalidArgumentError::new_err(msg),
        K::Shape => ShapeError::new_err(msg),
        K::NonFinite => NonFiniteError::new_err(msg),
        K::Read => ReadError::new_err(msg),
        K::Integrity => IntegrityError::new_err(msg),
        K::Manifest => ManifestError::new_err(msg),
        K::NoSuchConfig => NoSuchConfigError::new_err(msg),
        K::NoneQualifies => NoneQualifiesError::new_err(msg),
        K::Unavailable => UnavailableError::new_err(msg),
        K::Engine => EngineError::new_err(msg),
        _ => OatsError::new_err(msg),
    }
}

/// A configuration of the model: listed in the manifest, or derived from the package.
#[pyclass(frozen, get_all, module = "oats")]
#[derive(Clone)]
struct Config {
    /// The manifest id, e.g. "l0.15-w1".
    id: String,
    /// The robustness weight λ (`lambda` is a Python keyword).
    lambda_: f64,
    /// The channel width multiplier.
    width: f64,
    /// Multiply-accumulates per image.
    macs: u64,
    /// Parameters of the graph.
    params: u64,
    /// Calibrated clean accuracy in [0, 1], or None.
    sa: Option<f64>,
    /// Calibrated robust accuracy (worst case over the attacks) in [0, 1], or None.
    ra: Option<f64>,
    /// True when derived on the device from the package, False for a graph file.
    derived: bool,
    /// Side exits of the configuration (0 without); the final classifier's exit index.
    side_exits: usize,
}

#[pymethods]
impl Config {
    fn __repr__(&self) -> String {
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
        format!(
            "Config(id={:?}, lambda_={}, width={}, macs={}, sa={}, ra={}, derived={})",
            self.id,
            self.lambda_,
            self.width,
            self.macs,
            pct(self.sa),
            pct(self.ra),
            if self.derived { "True" } else { "False" }
        )
    }
}

impl From<&GraphEntry> for Config {
    fn from(g: &GraphEntry) -> Self {
        Config {
            id: g.id.clone(),
            lambda_: g.lambda,
            width: g.width,
            macs: g.macs,
            params: g.params,
            sa: g.metrics.sa,
            ra: g.metrics.robust_accuracy(),
            derived: g.is_derived(),
            side_exits: g.exits.as_ref().map_or(0, |e| e.heads.len()),
        }
    }
}

impl From<&ConfigInfo> for Config {
    fn from(c: &ConfigInfo) -> Self {
        let m = c.metrics.as_ref();
        Config {
            id: c.id.clone(),
            lambda_: c.lambda,
            width: c.width,
            macs: c.macs,
            params: c.params,
            sa: m.and_then(|m| m.sa),
            ra: m.and_then(|m| m.robust_accuracy()),
            derived: c.derived,
            side_exits: c.side_exits,
        }
    }
}

/// An oats export opened for inference: `Model(path)` for a directory, `Model.from_files`
/// for files held in memory. Safe to share between threads.
#[pyclass(frozen, module = "oats")]
struct Model {
    inner: OatsModel,
}

fn options(
    backend: &str,
    threads: Option<usize>,
    preload: bool,
    cache_bytes: Option<u64>,
) -> PyResult<Options> {
    Ok(Options {
        backend: backend.parse::<Backend>().map_err(to_py)?,
        threads,
        preload,
        cache_bytes,
        preload_derived: Vec::new(),
    })
}

#[pymethods]
impl Model {
    /// Opens the export in directory `path`. `backend`: "tract" (pure Rust), "ort" or
    /// "ort-cuda" (ONNX Runtime, library from ORT_DYLIB_PATH); `threads`: ONNX Runtime's
    /// intra-op threads; `preload`: load every graph file now; `cache_bytes`: byte budget of
    /// derived configurations.
    #[new]
    #[pyo3(signature = (path, backend = "tract", threads = None, preload = true, cache_bytes = None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        backend: &str,
        threads: Option<usize>,
        preload: bool,
        cache_bytes: Option<u64>,
    ) -> PyResult<Self> {
        let opts = options(backend, threads, preload, cache_bytes)?;
        let inner = py.detach(|| OatsModel::open(&path, &opts)).map_err(to_py)?;
        Ok(Model { inner })
    }

    /// Opens an export held in memory: `files` maps each name the manifest uses
    /// ("manifest.yaml", "package.safetensors", …) to its bytes (e.g. read from an archive).
    #[staticmethod]
    #[pyo3(signature = (files, backend = "tract", threads = None, preload = true, cache_bytes = None))]
    fn from_files(
        py: Python<'_>,
        files: HashMap<String, Vec<u8>>,
        backend: &str,
        threads: Option<usize>,
        preload: bool,
        cache_bytes: Option<u64>,
    ) -> PyResult<Self> {
        let opts = options(backend, threads, preload, cache_bytes)?;
        let mut set = ExportFiles::new();
        for (name, bytes) in files {
            set.insert(name, bytes);
        }
        let inner = py
            .detach(|| OatsModel::open_from_memory(set, &opts))
            .map_err(to_py)?;
        Ok(Model { inner })
    }

    /// The configurations the manifest lists, in its order.
    #[getter]
    fn configs(&self) -> Vec<Config> {
        self.inner
            .manifest()
            .graphs
            .iter()
            .map(Config::from)
            .collect()
    }

    /// The configuration new inferences use.
    #[getter]
    fn active(&self) -> Config {
        Config::from(&*self.inner.active())
    }

    /// (C, H, W) of one input image.
    #[getter]
    fn input_shape(&self) -> (usize, usize, usize) {
        let [c, h, w] = self.inner.manifest().input.shape;
        (c, h, w)
    }

    /// The class names, index = logit position (may be empty).
    #[getter]
    fn class_names(&self) -> Vec<String> {
        self.inner.manifest().class_names.clone()
    }

    /// Makes a configuration active and returns it: by `id`, or by `lambda_` at `width`
    /// (default: the widest trained). Any λ in the trained range is served (derived from the
    /// package where the manifest lists none); `nearest=True` takes the listed λ closest to
    /// `lambda_` instead.
    #[pyo3(signature = (lambda_ = None, width = None, *, id = None, nearest = false))]
    fn select(
        &self,
        py: Python<'_>,
        lambda_: Option<f64>,
        width: Option<f64>,
        id: Option<String>,
        nearest: bool,
    ) -> PyResult<Config> {
        let selector = match (id, lambda_) {
            (Some(id), None) if width.is_none() && !nearest => Selector::Id(id),
            (None, Some(lambda)) => {
                let width = width.unwrap_or_else(|| {
                    self.inner
                        .manifest()
                        .training
                        .widths
                        .iter()
                        .copied()
                        .fold(f64::NAN, f64::max)
                });
                if nearest {
                    Selector::NearestLambda { lambda, width }
                } else {
                    Selector::Explicit { lambda, width }
                }
            }
            _ => {
                return Err(InvalidArgumentError::new_err(
                    "select: give either id=… alone, or lambda_=… (with width=… and nearest=…)",
                ))
            }
        };
        let info = py.detach(|| self.inner.select(&selector)).map_err(to_py)?;
        Ok(Config::from(&*info))
    }

    /// Makes the best configuration under the constraints active and returns it, choosing
    /// by the metrics calibration stored in the manifest. `objective`: "max-ra", "max-sa" or
    /// "min-latency"; `latency_key`: which measured latency to read (default "tract/b1").
    #[pyo3(signature = (*, min_sa = None, min_ra = None, max_macs = None, max_latency_ms = None, latency_key = None, objective = "max-ra"))]
    #[allow(clippy::too_many_arguments)]
    fn select_policy(
        &self,
        py: Python<'_>,
        min_sa: Option<f64>,
        min_ra: Option<f64>,
        max_macs: Option<u64>,
        max_latency_ms: Option<f64>,
        latency_key: Option<String>,
        objective: &str,
    ) -> PyResult<Config> {
        let objective = match objective {
            "max-ra" => Objective::MaxRa,
            "max-sa" => Objective::MaxSa,
            "min-latency" => Objective::MinLatency,
            other => {
                return Err(InvalidArgumentError::new_err(format!(
                    "objective {other:?}: expected \"max-ra\", \"max-sa\" or \"min-latency\""
                )))
            }
        };
        let policy = Policy {
            min_sa,
            min_ra,
            max_macs,
            max_latency_ms,
            latency_key: latency_key.unwrap_or_else(|| Policy::default().latency_key),
            objective,
        };
        let info = py
            .detach(|| self.inner.select(&Selector::Policy(policy)))
            .map_err(to_py)?;
        Ok(Config::from(&*info))
    }

    /// Runs the active configuration on `x`, a float32 array of shape (N, C, H, W) in the
    /// manifest's value range (usually [0, 1]). Returns (logits of shape (N, classes), the
    /// Config that computed them). Releases the GIL while it runs.
    fn infer<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray4<'py, f32>,
    ) -> PyResult<(Bound<'py, numpy::PyArray2<f32>>, Config)> {
        let s = x.shape();
        let shape = [s[0], s[1], s[2], s[3]];
        // Logical order whatever the strides (a transposed or sliced view is copied right).
        let data: Vec<f32> = x.as_array().iter().copied().collect();
        let p = py
            .detach(|| Batch::new(shape, data).and_then(|b| self.inner.infer(&b)))
            .map_err(to_py)?;
        let config = Config::from(&*p.config);
        let logits = PyArray1::from_vec(py, p.logits).reshape([p.batch, p.classes])?;
        Ok((logits, config))
    }

    /// Like `infer`, and which exit answered each image: returns (logits of shape
    /// (N, classes), exits of shape (N,) as int64, the Config). An exit is 0 for the first
    /// side exit up to `Config.side_exits` for the final classifier (every image's, when the
    /// configuration has no exits or no thresholds to route with). Releases the GIL.
    #[allow(clippy::type_complexity)]
    fn infer_routed<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray4<'py, f32>,
    ) -> PyResult<(
        Bound<'py, numpy::PyArray2<f32>>,
        Bound<'py, PyArray1<i64>>,
        Config,
    )> {
        let s = x.shape();
        let shape = [s[0], s[1], s[2], s[3]];
        let data: Vec<f32> = x.as_array().iter().copied().collect();
        let p = py
            .detach(|| Batch::new(shape, data).and_then(|b| self.inner.infer(&b)))
            .map_err(to_py)?;
        let exits: Vec<i64> = p.answering_exits().into_iter().map(|e| e as i64).collect();
        let config = Config::from(&*p.config);
        let logits = PyArray1::from_vec(py, p.logits).reshape([p.batch, p.classes])?;
        Ok((logits, PyArray1::from_vec(py, exits), config))
    }

    /// Sets the entropy thresholds of the side exits, one float per side exit (finite,
    /// >= 0; 0 never leaves early), for every configuration with exits; None returns to the
    /// calibrated ones. Takes effect for the next inference (in-flight ones keep theirs).
    /// InvalidArgumentError for a model without exits or the wrong number of values.
    #[pyo3(signature = (thresholds))]
    fn set_thresholds(&self, thresholds: Option<Vec<f64>>) -> PyResult<()> {
        self.inner.set_thresholds(thresholds).map_err(to_py)
    }

    /// The thresholds the active configuration routes with (set, else calibrated), or None
    /// when it has no exits or nothing to route with (then the whole network runs).
    #[getter]
    fn thresholds(&self) -> Option<Vec<f64>> {
        self.inner.thresholds()
    }

    /// Multiply-accumulates of one image answered at each exit of the active configuration
    /// (earlier heads included), the final classifier last; None without exits.
    #[getter]
    fn exit_macs(&self) -> Option<Vec<u64>> {
        self.inner.exit_macs()
    }

    fn __repr__(&self) -> String {
        let m = self.inner.manifest();
        format!(
            "Model({:?}, {} configurations, backend {:?}, active {:?})",
            m.model_id,
            m.graphs.len(),
            self.inner.backend().name(),
            self.inner.active().id
        )
    }
}

/// The `oats` module.
#[pymodule]
#[pyo3(name = "oats")]
fn oats_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Model>()?;
    m.add_class::<Config>()?;
    for (name, ty) in [
        ("OatsError", py.get_type::<OatsError>()),
        (
            "InvalidArgumentError",
            py.get_type::<InvalidArgumentError>(),
        ),
        ("ShapeError", py.get_type::<ShapeError>()),
        ("NonFiniteError", py.get_type::<NonFiniteError>()),
        ("ReadError", py.get_type::<ReadError>()),
        ("IntegrityError", py.get_type::<IntegrityError>()),
        ("ManifestError", py.get_type::<ManifestError>()),
        ("NoSuchConfigError", py.get_type::<NoSuchConfigError>()),
        ("NoneQualifiesError", py.get_type::<NoneQualifiesError>()),
        ("UnavailableError", py.get_type::<UnavailableError>()),
        ("EngineError", py.get_type::<EngineError>()),
    ] {
        m.add(name, ty)?;
    }
    Ok(())
}
