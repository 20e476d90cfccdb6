//! ONNX Runtime backend (cargo feature `ort`). The library is loaded at run time: nothing is
//! linked at build time, so a missing or wrong library must become an error here, not a panic
//! inside `ort`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ::ort::environment::Environment;
use ::ort::ep;
use ::ort::session::Session;
use ::ort::value::{Tensor, TensorRef};

use super::{check_logits, panic_message, GraphSpec};
use crate::error::{Result, RuntimeError};
use crate::manifest::LAMBDA_INDEX_INPUT;

/// Environment variable naming the ONNX Runtime shared library.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The process-wide ONNX Runtime environment and the library it came from. `ort` allows one
/// environment per process, and the library cannot be unloaded, so it lives forever.
static ENVIRONMENT: Mutex<Option<(Environment, PathBuf)>> = Mutex::new(None);

fn unavailable(message: String) -> RuntimeError {
    RuntimeError::BackendUnavailable {
        backend: "ort".into(),
        message,
    }
}

/// Loads ONNX Runtime from `path` (a `libonnxruntime.so`, 1.31 or newer) and creates the
/// process-wide environment. Without this call, the first ort model loads the library named
/// by `ORT_DYLIB_PATH`. Calling it again with the same library is a no-op; a different
/// library cannot replace one already loaded.
pub fn init_ort(path: &Path) -> Result<()> {
    environment_from(path).map(drop)
}

pub(crate) fn environment() -> Result<Environment> {
    if let Some((env, _)) = lock_env().as_ref() {
        return Ok(env.clone());
    }
    let path = match std::env::var_os(ORT_DYLIB_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            return Err(unavailable(format!(
                "{ORT_DYLIB_ENV} is not set; point it at libonnxruntime.so (e.g. \
                 onnxruntime/capi/libonnxruntime.so.1.31.1 from the onnxruntime==1.31.1 wheel) \
                 or call oats_runtime::init_ort"
            )))
        }
    };
    environment_from(&path)
}

fn lock_env() -> std::sync::MutexGuard<'static, Option<(Environment, PathBuf)>> {
    ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner())
}

fn environment_from(path: &Path) -> Result<Environment> {
    if !path.is_file() {
        return Err(unavailable(format!(
            "ONNX Runtime library {} does not exist or is not a file",
            path.display()
        )));
    }
    // Absolute, because ort resolves relative paths against the executable's directory.
    let path = path
        .canonicalize()
        .map_err(|e| unavailable(format!("cannot resolve {}: {e}", path.display())))?;
    let mut slot = lock_env();
    if let Some((env, loaded)) = slot.as_ref() {
        if *loaded == path {
            return Ok(env.clone());
        }
        return Err(unavailable(format!(
            "ONNX Runtime is already loaded from {}; cannot load {} in the same process",
            loaded.display(),
            path.display()
        )));
    }
    let built = catch_unwind(AssertUnwindSafe(|| -> Result<Environment> {
        let builder = ::ort::init_from(&path)
            .map_err(|e| unavailable(format!("cannot load {}: {e}", path.display())))?;
        builder
            .with_name("oats")
            .with_telemetry(false)
            .build()
            .map_err(|e| unavailable(format!("cannot create environment: {e}")))
    }));
    let env = match built {
        Ok(r) => r?,
        Err(p) => {
            return Err(unavailable(format!(
                "loading {} panicked: {}",
                path.display(),
                panic_message(&*p)
            )))
        }
    };
    *slot = Some((env.clone(), path));
    Ok(env)
}

/// Builds a plain session for `bytes`: the same settings [`OrtGraph`] uses, without any
/// wrapping. Benchmarks compare against it to measure the wrapper's overhead.
pub(crate) fn session(
    file: &Path,
    bytes: &[u8],
    cuda: bool,
    threads: Option<usize>,
) -> Result<Session> {
    let load_err = |message: String| RuntimeError::GraphLoad {
        file: file.to_path_buf(),
        backend: if cuda { "ort-cuda" } else { "ort" }.into(),
        message,
    };
    let env = environment()?;
    let mut builder = Session::builder(&env).map_err(|e| load_err(e.to_string()))?;
    if let Some(t) = threads {
        builder = builder
            .with_intra_threads(t)
            .map_err(|e| load_err(e.to_string()))?;
    }
    if cuda {
        builder = builder
            .with_execution_providers([ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| RuntimeError::CudaUnavailable {
                message: e.to_string(),
            })?;
    }
    match catch_unwind(AssertUnwindSafe(|| builder.commit_from_memory(bytes))) {
        Ok(r) => r.map_err(|e| load_err(e.to_string())),
        Err(p) => Err(load_err(format!(
            "onnxruntime panicked: {}",
            panic_message(&*p)
        ))),
    }
}

pub(crate) struct OrtGraph {
    /// `Session::run` takes `&mut self`; runs on one graph are serialised.
    session: Mutex<Session>,
    input_name: String,
    output_name: String,
    chw: [usize; 3],
    classes: usize,
    shared: bool,
}

impl OrtGraph {
    pub(crate) fn load(spec: &GraphSpec<'_>, cuda: bool) -> Result<OrtGraph> {
        let session = session(spec.file, spec.bytes, cuda, spec.threads)?;
        let names: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        let mut expected = vec![spec.input.name.as_str()];
        if spec.shared {
            expected.push(LAMBDA_INDEX_INPUT);
        }
        let mut sorted = names.clone();
        sorted.sort_unstable();
        expected.sort_unstable();
        if sorted != expected {
            return Err(RuntimeError::GraphLoad {
                file: spec.file.to_path_buf(),
                backend: "ort".into(),
                message: format!("graph inputs are {names:?}, expected {expected:?}"),
            });
        }
        Ok(OrtGraph {
            session: Mutex::new(session),
            input_name: spec.input.name.clone(),
            output_name: spec.output.name.clone(),
            chw: spec.input.shape,
            classes: spec.output.classes,
            shared: spec.shared,
        })
    }

    pub(crate) fn run(
        &self,
        data: &[f32],
        n: usize,
        lambda_index: Option<i64>,
    ) -> Result<Vec<f32>> {
        let err = |e: ::ort::Error| RuntimeError::Inference {
            message: format!("onnxruntime: {e}"),
        };
        let [c, h, w] = self.chw;
        let image = TensorRef::from_array_view(([n, c, h, w], data)).map_err(err)?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = if self.shared {
            let idx = lambda_index.ok_or_else(|| RuntimeError::Inference {
                message: format!(
                    "graph needs {LAMBDA_INDEX_INPUT:?} but the configuration has none"
                ),
            })?;
            let idx = Tensor::from_array(([1usize], vec![idx])).map_err(err)?;
            session
                .run(::ort::inputs![self.input_name.as_str() => image, LAMBDA_INDEX_INPUT => idx])
                .map_err(err)?
        } else {
            session
                .run(::ort::inputs![self.input_name.as_str() => image])
                .map_err(err)?
        };
        let out = outputs
            .get(&self.output_name)
            .ok_or_else(|| RuntimeError::Inference {
                message: format!("graph has no output {:?}", self.output_name),
            })?;
        let (shape, logits) = out.try_extract_tensor::<f32>().map_err(err)?;
        let shape: Vec<usize> = shape
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect();
        check_logits(&shape, logits, n, self.classes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_an_error() {
        let e = init_ort(Path::new("/nonexistent/libonnxruntime.so")).err();
        assert!(
            matches!(e, Some(RuntimeError::BackendUnavailable { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn garbage_library_is_an_error() {
        let dir = std::env::temp_dir().join(format!("oats-ort-garbage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let lib = dir.join("libonnxruntime.so");
        std::fs::write(&lib, b"not a shared library").ok();
        // Either dlopen fails or (if another test loaded the real library first) the
        // "already loaded from elsewhere" refusal: both are BackendUnavailable.
        let e = init_ort(&lib).err();
        assert!(
            matches!(e, Some(RuntimeError::BackendUnavailable { .. })),
            "{e:?}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
