//! Inference backends. Each backend lives in its own file and is reached only through
//! [`Engine`], so an upstream API change (ort's `Session::run` becoming `&mut self`, tract's
//! tensor views) touches one file.

use std::fmt;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Backend {
    /// tract: pure Rust, always available, single-threaded.
    Tract,
    /// ONNX Runtime on the CPU (cargo feature `ort`; library loaded from `ORT_DYLIB_PATH`).
    Ort,
    /// ONNX Runtime with the CUDA execution provider. Registration failure is an error, never
    /// a silent fall-back to the CPU.
    OrtCuda,
}

impl Backend {
    /// Every backend's name, in the order [`Backend::name`] gives them.
    pub const NAMES: &'static [&'static str] = &["tract", "ort", "ort-cuda"];

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
    /// Resolved path, for error messages (and tract's external-data lookup).
    pub file: &'a Path,
    /// The verified file content.
    pub bytes: &'a [u8],
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
    pub(crate) fn load(backend: Backend, spec: &GraphSpec<'_>) -> Result<Engine> {
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

    /// Runs a validated `[n, C, H, W]` batch; returns logits `[n, classes]`, row-major.
    pub(crate) fn run(
        &self,
        data: &[f32],
        n: usize,
        lambda_index: Option<i64>,
    ) -> Result<Vec<f32>> {
        match self {
            Engine::Tract(g) => g.run(data, n, lambda_index),
            #[cfg(feature = "ort")]
            Engine::Ort(g) => g.run(data, n, lambda_index),
        }
    }
}

/// Checks an output shape and turns it into the flat logits; `backend` names the library in
/// the error.
pub(crate) fn check_logits(
    backend: &str,
    shape: &[usize],
    data: &[f32],
    n: usize,
    classes: usize,
) -> Result<Vec<f32>> {
    if shape != [n, classes] || data.len() != n * classes {
        return Err(RuntimeError::inference(
            backend,
            format!("graph returned logits of shape {shape:?}, expected [{n}, {classes}]"),
        ));
    }
    Ok(data.to_vec())
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
    fn backend_names_round_trip() {
        let all = [Backend::Tract, Backend::Ort, Backend::OrtCuda];
        for b in all {
            assert_eq!(b.name().parse::<Backend>().ok(), Some(b));
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
