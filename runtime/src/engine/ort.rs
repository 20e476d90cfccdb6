//! ONNX Runtime backend (cargo feature `ort`). The library is loaded at run time: nothing is
//! linked at build time, so a missing or wrong library must become an error here, not a panic
//! inside `ort`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ::ort::environment::Environment;
use ::ort::ep;
use ::ort::session::Session;
use ::ort::value::{DynValue, Tensor, TensorRef};

use super::{check_logits, panic_message, GraphSpec, PartInput};
use crate::error::{BoxError, Result, RuntimeError};
use crate::manifest::{InputSpec, OutputSpec, LAMBDA_INDEX_INPUT};

/// Environment variable naming the ONNX Runtime shared library.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The process-wide ONNX Runtime environment and the library it came from. `ort` allows one
/// environment per process, and the library cannot be unloaded, so it lives forever.
static ENVIRONMENT: Mutex<Option<(Environment, PathBuf)>> = Mutex::new(None);

/// Backend name in errors that do not depend on the execution provider.
const ORT: &str = "ort";

fn unavailable(message: String) -> RuntimeError {
    RuntimeError::unavailable(ORT, message)
}

/// [`RuntimeError::BackendUnavailable`] that keeps the underlying error.
fn unavailable_because(message: String, source: impl Into<BoxError>) -> RuntimeError {
    RuntimeError::BackendUnavailable {
        backend: ORT.into(),
        message,
        source: Some(source.into()),
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
        .map_err(|e| unavailable_because(format!("cannot resolve {}", path.display()), e))?;
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
            .map_err(|e| unavailable_because(format!("cannot load {}", path.display()), e))?;
        builder
            .with_name("oats")
            .with_telemetry(false)
            .build()
            .map_err(|e| unavailable_because("cannot create environment".into(), e))
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

/// Builds a session for the graph in `spec` and checks that its inputs are the ones the
/// manifest's layout implies. The only place sessions are configured (threads, exact
/// int8 kernels, CUDA).
fn session(spec: &GraphSpec<'_>, cuda: bool) -> Result<Session> {
    let backend = if cuda { "ort-cuda" } else { ORT };
    let load_err = |source: BoxError| RuntimeError::GraphLoad {
        file: spec.file.to_path_buf(),
        backend: backend.into(),
        source,
    };
    let env = environment()?;
    let mut builder = Session::builder(&env).map_err(|e| load_err(e.into()))?;
    if let Some(t) = spec.threads {
        builder = builder
            .with_intra_threads(t)
            .map_err(|e| load_err(::ort::Error::<()>::from(e).into()))?;
    }
    if u8s8_may_saturate() {
        builder = builder
            .with_precise_qmm()
            .map_err(|e| load_err(::ort::Error::<()>::from(e).into()))?;
    }
    if cuda {
        builder = builder
            .with_execution_providers([ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| RuntimeError::CudaUnavailable {
                source: ::ort::Error::<()>::from(e).into(),
            })?;
    }
    let session = match catch_unwind(AssertUnwindSafe(|| builder.commit_from_memory(spec.bytes))) {
        Ok(r) => r.map_err(|e| load_err(e.into()))?,
        Err(p) => {
            return Err(load_err(
                format!("onnxruntime panicked: {}", panic_message(&*p)).into(),
            ))
        }
    };
    let names: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    let mut expected = vec![spec.input.name.as_str()];
    if spec.shared {
        expected.push(LAMBDA_INDEX_INPUT);
    }
    let mut sorted = names.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    if sorted != expected {
        return Err(load_err(
            format!("graph inputs are {names:?}, expected {expected:?}").into(),
        ));
    }
    Ok(session)
}

/// Whether ONNX Runtime's fast int8 kernels would give wrong sums on this CPU, so sessions must
/// ask for its exact ones (`session.x64quantprecision`, ort's `with_precise_qmm`).
///
/// An int8 graph's Conv/Gemm multiply uint8 activations by int8 weights (graph/src/quant.rs).
/// On x86 without VNNI, ONNX Runtime's U8S8 kernels add each pair of products in saturating
/// 16-bit arithmetic (VPMADDUBSW), and 255 · 127 · 2 = 64,770 does not fit: on an AVX2-only
/// AMD EPYC ort's logits of a trained model moved by up to 0.24 and top-1 agreed with the
/// training framework's reading on 98.5 % of images (the export's bar is 99 %). With the
/// option set, ort rewrites the int8 weights as uint8 (w + 128, zero point moved with it) and
/// runs its U8U8 kernels, which widen to 16 bits before multiplying and so sum exactly: the
/// same integers VNNI (32-bit sums) and ARM's dot-product kernels compute. The option is left
/// off where VNNI is present, because the U8U8 kernels are slower there and nothing
/// saturates; on other architectures the option does not exist. Float graphs are untouched.
fn u8s8_may_saturate() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        // ONNX Runtime's VNNI kernels need AVX-VNNI, or AVX512-VNNI with AVX512 BW/DQ/VL.
        let avx512_vnni = std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl");
        !(avx512_vnni || std::arch::is_x86_feature_detected!("avxvnni"))
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        false
    }
}

/// Which ONNX Runtime kernels compute int8 graphs on this CPU, for benchmark reports: the
/// speed of an int8 configuration under ort depends on it (the exact U8U8 kernels of a CPU
/// without VNNI are slower than VNNI's).
pub fn int8_kernels() -> &'static str {
    if u8s8_may_saturate() {
        "U8U8, exact (this x86 CPU has no VNNI, so U8S8 sums would saturate)"
    } else if cfg!(any(target_arch = "x86", target_arch = "x86_64")) {
        "U8S8 with VNNI, exact"
    } else {
        "ort's default for this architecture"
    }
}

/// The names and sizes a session is run with, taken from the manifest.
struct SessionIo {
    input_name: String,
    output_name: String,
    chw: [usize; 3],
    classes: usize,
    /// Whether the graph takes the int64 `lambda_index` input (layout shared_weights).
    shared: bool,
}

impl SessionIo {
    fn new(input: &InputSpec, output: &OutputSpec, shared: bool) -> SessionIo {
        SessionIo {
            input_name: input.name.clone(),
            output_name: output.name.clone(),
            chw: input.shape,
            classes: output.classes,
            shared,
        }
    }
}

/// Runs `session` on a validated `[n, C, H, W]` batch and returns the logits `[n, classes]`.
/// The one place that builds ort inputs (the image, and `lambda_index` for shared-weights
/// graphs) and reads the output: [`OrtGraph`] and [`BareSession`] both run through it.
fn run_session(
    session: &mut Session,
    io: &SessionIo,
    data: &[f32],
    n: usize,
    lambda_index: Option<i64>,
) -> Result<Vec<f32>> {
    let err = |e: ::ort::Error| RuntimeError::inference(ORT, e);
    let [c, h, w] = io.chw;
    let image = TensorRef::from_array_view(([n, c, h, w], data)).map_err(err)?;
    let outputs = if io.shared {
        let idx = lambda_index.ok_or_else(|| {
            RuntimeError::inference(
                ORT,
                format!("graph needs {LAMBDA_INDEX_INPUT:?} but the configuration has none"),
            )
        })?;
        let idx = Tensor::from_array(([1usize], vec![idx])).map_err(err)?;
        session
            .run(::ort::inputs![io.input_name.as_str() => image, LAMBDA_INDEX_INPUT => idx])
            .map_err(err)?
    } else {
        session
            .run(::ort::inputs![io.input_name.as_str() => image])
            .map_err(err)?
    };
    let out = outputs.get(&io.output_name).ok_or_else(|| {
        RuntimeError::inference(ORT, format!("graph has no output {:?}", io.output_name))
    })?;
    let (shape, logits) = out.try_extract_tensor::<f32>().map_err(err)?;
    let shape: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
        .collect();
    check_logits(ORT, &shape, logits, n, io.classes)
}

/// One graph on ONNX Runtime, shared by all threads.
pub(crate) struct OrtGraph {
    /// `Session::run` takes `&mut self`; runs on one graph are serialised.
    session: Mutex<Session>,
    io: SessionIo,
}

impl OrtGraph {
    pub(crate) fn load(spec: &GraphSpec<'_>, cuda: bool) -> Result<OrtGraph> {
        Ok(OrtGraph {
            session: Mutex::new(session(spec, cuda)?),
            io: SessionIo::new(spec.input, spec.output, spec.shared),
        })
    }

    pub(crate) fn run(
        &self,
        data: &[f32],
        n: usize,
        lambda_index: Option<i64>,
    ) -> Result<Vec<f32>> {
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        run_session(&mut session, &self.io, data, n, lambda_index)
    }

    /// A chained part (one input, one output; see `Engine::run_part`): the input is a view
    /// of wherever its values lie (an earlier part's output value is read in place), and
    /// the output value ONNX Runtime allocated is returned as it is. ONNX Runtime reads any
    /// f32 buffer through a view, so the shape the consumers read is applied there and the
    /// output keeps the graph's own.
    pub(crate) fn run_part(
        &self,
        input: PartInput<'_>,
        n: usize,
        out_shape: &[usize],
    ) -> Result<DynValue> {
        let err = |e: ::ort::Error| RuntimeError::inference(ORT, e);
        if self.io.shared {
            return Err(RuntimeError::inference(
                ORT,
                "a chained part has exactly one input",
            ));
        }
        let [c, h, w] = self.io.chw;
        let view = TensorRef::from_array_view(([n, c, h, w], input.values()?)).map_err(err)?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let mut outputs = session
            .run(::ort::inputs![self.io.input_name.as_str() => view])
            .map_err(err)?;
        let out = outputs.remove(&self.io.output_name).ok_or_else(|| {
            RuntimeError::inference(
                ORT,
                format!("graph has no output {:?}", self.io.output_name),
            )
        })?;
        drop(outputs);
        drop(session);
        let (shape, data) = values(&out)?;
        let expected: usize = out_shape.iter().product();
        if shape.first() != Some(&n) || data.len() != expected {
            return Err(RuntimeError::inference(
                ORT,
                format!(
                    "graph returned a tensor of shape {shape:?}, expected {expected} values as \
                     {out_shape:?}"
                ),
            ));
        }
        Ok(out)
    }
}

/// The shape and f32 values of an output value, read in place.
pub(crate) fn values(v: &DynValue) -> Result<(Vec<usize>, &[f32])> {
    let (shape, data) = v
        .try_extract_tensor::<f32>()
        .map_err(|e| RuntimeError::inference(ORT, e))?;
    let shape = shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
        .collect();
    Ok((shape, data))
}

/// A value of `shape` that takes ownership of `data`.
pub(crate) fn tensor(shape: &[usize], data: Vec<f32>) -> Result<DynValue> {
    Tensor::from_array((shape.to_vec(), data))
        .map(|t| t.into_dyn())
        .map_err(|e| RuntimeError::inference(ORT, e))
}

/// A session built exactly like [`OrtGraph`]'s and run by the same [`run_session`], without
/// the mutex or anything [`crate::OatsModel`] adds: the baseline of
/// [`crate::bench::ort_overhead`].
pub(crate) struct BareSession {
    session: Session,
    io: SessionIo,
}

impl BareSession {
    pub(crate) fn load(spec: &GraphSpec<'_>, cuda: bool) -> Result<BareSession> {
        Ok(BareSession {
            session: session(spec, cuda)?,
            io: SessionIo::new(spec.input, spec.output, spec.shared),
        })
    }

    pub(crate) fn run(
        &mut self,
        data: &[f32],
        n: usize,
        lambda_index: Option<i64>,
    ) -> Result<Vec<f32>> {
        run_session(&mut self.session, &self.io, data, n, lambda_index)
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
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let lib = dir.join("libonnxruntime.so");
        std::fs::write(&lib, b"not a shared library").unwrap_or_else(|e| panic!("{e}"));
        // Either dlopen fails or (if another test loaded the real library first) the
        // "already loaded from elsewhere" refusal: both are BackendUnavailable.
        let e = init_ort(&lib).err();
        assert!(
            matches!(e, Some(RuntimeError::BackendUnavailable { .. })),
            "{e:?}"
        );
        // Cleanup only: a leftover directory in the temp dir does not affect the result.
        let _ = std::fs::remove_dir_all(&dir);
    }
}
