//! Inference backends. Each backend lives in its own file and is reached only through
//! `Engine`, so an upstream API change (ort's `Session::run` becoming `&mut self`, tract's
//! tensor views) touches one file.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};
use crate::manifest::{InputSpec, OutputSpec};

#[cfg(feature = "ort")]
pub(crate) mod ort;
mod tract;

/// Which library runs the graphs. The names (`tract`, `ort`, `ort-cuda`) are the same in
/// manifests (serde), on the command line (clap `ValueEnum`, used by `oats-run` and `oats-bench`)
/// and in [`FromStr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "cli", value(rename_all = "kebab-case"))]
pub enum Backend {
    /// tract: pure Rust, always available. Each inference runs on the thread that calls it,
    /// using that thread only ([`crate::Options::threads`] is ignored); inferences on several
    /// threads run in parallel.
    Tract,
    /// ONNX Runtime on the CPU (cargo feature `ort`; library loaded from `ORT_DYLIB_PATH`).
    /// Uses [`crate::Options::threads`] intra-op threads per inference; inferences on the same
    /// graph take turns (one ONNX Runtime session per graph file, behind a mutex).
    Ort,
    /// ONNX Runtime with the CUDA execution provider. Registration failure is an error, never
    /// a silent fall-back to the CPU.
    OrtCuda,
}

impl Backend {
    /// Every backend's name, in the order [`Backend::name`] gives them.
    pub const NAMES: &'static [&'static str] = &["tract", "ort", "ort-cuda"];

    /// The name used in manifests, latency keys (`tract/b1`), errors and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::Ort => "ort",
            Backend::OrtCuda => "ort-cuda",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tract" => Ok(Backend::Tract),
            "ort" => Ok(Backend::Ort),
            "ort-cuda" => Ok(Backend::OrtCuda),
            _ => Err(RuntimeError::UnknownBackend {
                name: s.to_string(),
                expected: Backend::NAMES,
            }),
        }
    }
}

/// What a backend needs to load one graph file.
pub(crate) struct GraphSpec<'a> {
    /// Resolved path, for error messages.
    pub file: &'a Path,
    /// The verified file content (what ONNX Runtime loads; tract takes `proto`).
    #[cfg_attr(not(feature = "ort"), allow(dead_code))]
    pub bytes: &'a [u8],
    /// The same content decoded, and checked by [`crate::graph::inspect`].
    pub proto: &'a tract_onnx::pb::ModelProto,
    /// The image input's batch dimension as the graph declares it (`None`: dynamic).
    pub batch: Option<usize>,
    pub input: &'a InputSpec,
    pub output: &'a OutputSpec,
    /// Whether the graph has the int64 `lambda_index` input (layout shared_weights).
    pub shared: bool,
    /// Intra-op threads (ONNX Runtime only).
    #[cfg_attr(not(feature = "ort"), allow(dead_code))]
    pub threads: Option<usize>,
}

/// One loaded graph, ready to run from any thread.
pub(crate) enum Engine {
    Tract(tract::TractGraph),
    #[cfg(feature = "ort")]
    Ort(ort::OrtGraph),
}

impl Engine {
    /// Loads a graph that [`crate::graph::inspect`] accepted. A panic inside the library is
    /// caught and becomes [`RuntimeError::GraphLoad`]: the checks before should leave none,
    /// and this is the last line of defence for those they miss.
    pub(crate) fn load(backend: Backend, spec: &GraphSpec<'_>) -> Result<Engine> {
        match catch_unwind(AssertUnwindSafe(|| Self::load_unguarded(backend, spec))) {
            Ok(r) => r,
            Err(p) => Err(RuntimeError::GraphLoad {
                file: spec.file.to_path_buf(),
                backend: backend.name().into(),
                source: format!("{backend} panicked: {}", panic_message(&*p)).into(),
            }),
        }
    }

    fn load_unguarded(backend: Backend, spec: &GraphSpec<'_>) -> Result<Engine> {
        match backend {
            Backend::Tract => tract::TractGraph::load(spec).map(Engine::Tract),
            #[cfg(feature = "ort")]
            Backend::Ort => ort::OrtGraph::load(spec, false).map(Engine::Ort),
            #[cfg(feature = "ort")]
            Backend::OrtCuda => ort::OrtGraph::load(spec, true).map(Engine::Ort),
            #[cfg(not(feature = "ort"))]
            Backend::Ort | Backend::OrtCuda => Err(RuntimeError::unavailable(
                backend.name(),
                "oats-runtime was built without the `ort` cargo feature",
            )),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Engine::Tract(_) => "tract",
            #[cfg(feature = "ort")]
            Engine::Ort(_) => "ort",
        }
    }

    /// Runs a validated `[n, C, H, W]` batch; returns logits `[n, classes]`, row-major, all
    /// finite. A panic inside the library becomes [`RuntimeError::Inference`] (last line of
    /// defence, as in [`Engine::load`]).
    pub(crate) fn run(
        &self,
        data: &[f32],
        n: usize,
        lambda_index: Option<i64>,
    ) -> Result<Vec<f32>> {
        let run = || match self {
            Engine::Tract(g) => g.run(data, n, lambda_index),
            #[cfg(feature = "ort")]
            Engine::Ort(g) => g.run(data, n, lambda_index),
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(r) => r,
            Err(p) => Err(RuntimeError::inference(
                self.name(),
                format!("{} panicked: {}", self.name(), panic_message(&*p)),
            )),
        }
    }

    /// Runs one part of a chain (a segment or exit head: one input, one output, see
    /// `crate::routed`) on `n` samples and leaves its output in the engine, reshaped to
    /// `out_shape` (`[n, C, H, W]` for features the next parts read, `[n, classes]` for
    /// logits) so that it can be fed on without a copy. Panics are caught as in
    /// [`Engine::run`].
    pub(crate) fn run_part(
        &self,
        input: PartInput<'_>,
        n: usize,
        out_shape: &[usize],
    ) -> Result<Activation> {
        let run = || match self {
            Engine::Tract(g) => g.run_part(input, n, out_shape).map(Activation::Tract),
            #[cfg(feature = "ort")]
            Engine::Ort(g) => g.run_part(input, n, out_shape).map(Activation::Ort),
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(r) => r,
            Err(p) => Err(RuntimeError::inference(
                self.name(),
                format!("{} panicked: {}", self.name(), panic_message(&*p)),
            )),
        }
    }
}

/// What a chained part reads: the caller's batch (the first segment), or an earlier part's
/// [`Activation`].
#[derive(Clone, Copy)]
pub(crate) enum PartInput<'a> {
    Host(&'a [f32]),
    Engine(&'a Activation),
}

impl PartInput<'_> {
    /// The values, wherever they lie.
    pub(crate) fn values(&self) -> Result<&[f32]> {
        match self {
            PartInput::Host(d) => Ok(d),
            PartInput::Engine(a) => a.values(),
        }
    }
}

/// A part's output left where the engine put it: tract's reference-counted tensor, or ONNX
/// Runtime's output value (read in place through a view). Features pass from a segment to its
/// head and to the next segment without passing through the caller's memory; only when some
/// samples have left is the rest gathered ([`Activation::select`]), the one copy a smaller
/// batch needs. `Host` is what the chaining benchmark's baseline copies every output to.
pub(crate) enum Activation {
    Host {
        shape: Vec<usize>,
        data: Vec<f32>,
    },
    Tract(tract_onnx::prelude::TValue),
    #[cfg(feature = "ort")]
    Ort(::ort::value::DynValue),
}

impl Activation {
    /// The values in row-major order, read in place.
    pub(crate) fn values(&self) -> Result<&[f32]> {
        match self {
            Activation::Host { data, .. } => Ok(data),
            Activation::Tract(t) => tract::values(t),
            #[cfg(feature = "ort")]
            Activation::Ort(v) => ort::values(v).map(|(_, d)| d),
        }
    }

    /// The shape the values are read with.
    pub(crate) fn shape(&self) -> Result<Vec<usize>> {
        match self {
            Activation::Host { shape, .. } => Ok(shape.clone()),
            Activation::Tract(t) => Ok(t.shape().to_vec()),
            #[cfg(feature = "ort")]
            Activation::Ort(v) => ort::values(v).map(|(s, _)| s),
        }
    }

    fn backend(&self) -> &'static str {
        match self {
            Activation::Host { .. } => "host",
            Activation::Tract(_) => "tract",
            #[cfg(feature = "ort")]
            Activation::Ort(_) => "ort",
        }
    }

    /// The values as `[n, classes]` logits, checked like every graph's output
    /// ([`check_logits`]), in place.
    pub(crate) fn logits(&self, n: usize, classes: usize) -> Result<&[f32]> {
        check_logits_view(self.backend(), &self.shape()?, self.values()?, n, classes)
    }

    /// Rows `rows` (first axis) as a new activation of the same engine, shaped `shape`
    /// (`rows.len()` first).
    pub(crate) fn select(&self, rows: &[usize], shape: &[usize]) -> Result<Activation> {
        let all = self.values()?;
        let n = self.shape()?.first().copied().unwrap_or(0);
        let per = all.len() / n.max(1);
        let mut data = Vec::with_capacity(rows.len() * per);
        for &r in rows {
            let row = all.get(r * per..(r + 1) * per).ok_or_else(|| {
                RuntimeError::inference(self.backend(), format!("row {r} of {n} selected"))
            })?;
            data.extend_from_slice(row);
        }
        let shape = shape.to_vec();
        match self {
            Activation::Host { .. } => Ok(Activation::Host { shape, data }),
            Activation::Tract(_) => tract::tensor(&shape, data).map(Activation::Tract),
            #[cfg(feature = "ort")]
            Activation::Ort(_) => ort::tensor(&shape, data).map(Activation::Ort),
        }
    }

    /// A copy in the caller's memory (the chaining benchmark's baseline).
    pub(crate) fn to_host(&self) -> Result<Activation> {
        Ok(Activation::Host {
            shape: self.shape()?,
            data: self.values()?.to_vec(),
        })
    }
}

/// Checks an output shape and values and turns them into the flat logits; `backend` names
/// the library in the error. Every backend's output goes through here. A non-finite logit is
/// an error, not an answer: its softmax is NaN and its top-k order meaningless.
pub(crate) fn check_logits(
    backend: &str,
    shape: &[usize],
    data: &[f32],
    n: usize,
    classes: usize,
) -> Result<Vec<f32>> {
    check_logits_view(backend, shape, data, n, classes).map(<[f32]>::to_vec)
}

/// [`check_logits`] without the copy: the checked logits where they lie.
pub(crate) fn check_logits_view<'a>(
    backend: &str,
    shape: &[usize],
    data: &'a [f32],
    n: usize,
    classes: usize,
) -> Result<&'a [f32]> {
    if shape != [n, classes] || Some(data.len()) != n.checked_mul(classes) {
        return Err(RuntimeError::inference(
            backend,
            format!("graph returned logits of shape {shape:?}, expected [{n}, {classes}]"),
        ));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(RuntimeError::inference(
            backend,
            format!(
                "graph returned a non-finite logit ({}) for batch item {}, class {}",
                data[i],
                i / classes.max(1),
                i % classes.max(1)
            ),
        ));
    }
    Ok(data)
}

/// Text of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_logits_are_errors() {
        assert!(check_logits("t", &[1, 2], &[0.5, -1.0], 1, 2).is_ok());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let e = check_logits("t", &[1, 2], &[0.5, bad], 1, 2).err();
            let msg = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(
                msg.contains("non-finite logit") && msg.contains("class 1"),
                "{msg}"
            );
        }
        assert!(check_logits("t", &[2, 2], &[0.0; 3], 2, 2).is_err());
    }

    #[test]
    fn backend_names_round_trip() {
        let all = [Backend::Tract, Backend::Ort, Backend::OrtCuda];
        for b in all {
            assert_eq!(b.name().parse::<Backend>().ok(), Some(b));
            #[cfg(feature = "cli")]
            assert_eq!(
                <Backend as clap::ValueEnum>::from_str(b.name(), false).ok(),
                Some(b)
            );
        }
        assert_eq!(
            all.map(Backend::name).as_slice(),
            Backend::NAMES,
            "Backend::NAMES lists every backend in order"
        );
        assert!(matches!(
            "cuda".parse::<Backend>(),
            Err(RuntimeError::UnknownBackend { name, .. }) if name == "cuda"
        ));
    }
}
