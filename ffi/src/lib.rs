//! The C ABI of the oats runtime (`include/oats.h`, generated from this file by cbindgen).
//!
//! A thin layer over [`oats_runtime::OatsModel`]: every function converts its C arguments,
//! calls the Rust API and converts back; nothing here decides anything the Rust API does not.
//!
//! Conventions, the same for every function:
//! * The return value is an [`OatsStatus`]; on anything but `OATS_STATUS_OK` the message is
//!   kept per thread and read with [`oats_last_error`].
//! * Buffers belong to the caller. One that is too small gives `OATS_STATUS_BUFFER_TOO_SMALL`
//!   and the size needed (in its own unit: bytes for text, floats for logits).
//! * A handle ([`OatsModel`]) may be used from any number of threads at once: inferences run
//!   in parallel, and selecting a configuration never waits for them nor changes what they
//!   compute. [`oats_close`] must be the last call on it; it accepts NULL.
//! * No panic crosses the boundary: each entry point catches it and returns
//!   `OATS_STATUS_PANIC`.
//! * Numbers that a C caller may leave unset use NaN (`double`) or 0 (`uint64_t`) for "none",
//!   as each field says.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::unwrap_used)]

mod status;

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use oats_runtime::{
    Backend, Batch, ConfigInfo, ExportFiles, OatsModel as Model, Objective, Options, Policy,
    RuntimeError, Selector,
};

pub use status::OatsStatus;
use status::{set_last_error, Failure};

/// The version of this ABI: it changes whenever a function, struct or constant of
/// `oats.h` changes incompatibly. Compare [`oats_abi_version`] with the header's
/// `OATS_ABI_VERSION` at start-up.
pub const OATS_ABI_VERSION: u32 = 1;

/// [`OatsConfig::index`] of a configuration the manifest does not list (derived from the
/// package at a λ that was never exported or calibrated).
pub const OATS_NOT_LISTED: usize = !0;

/// An opened export: the manifest, its graphs (or package) and the active configuration.
/// Opaque; made by [`oats_open`] / [`oats_open_from_memory`], freed by [`oats_close`].
pub struct OatsModel {
    inner: Model,
}

/// Which engine runs the graphs (the values of [`OatsOptions::backend`]).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OatsBackend {
    /// tract: pure Rust, always built in; one inference per call, on the calling thread.
    Tract = 0,
    /// ONNX Runtime on the CPU: a library built with the `ort` feature, with the ONNX Runtime
    /// library named by the environment variable `ORT_DYLIB_PATH`.
    Ort = 1,
    /// ONNX Runtime with the CUDA execution provider: fails rather than run on the CPU.
    OrtCuda = 2,
}

/// What a policy optimises (the values of [`OatsPolicy::objective`]).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OatsObjective {
    /// Highest robust accuracy (ties: higher clean accuracy, then fewer MACs).
    MaxRa = 0,
    /// Highest clean accuracy (ties: higher robust accuracy, then fewer MACs).
    MaxSa = 1,
    /// Lowest median latency at the policy's latency key (ties: fewer MACs).
    MinLatency = 2,
}

/// How to open an export. Start from [`oats_options_default`] and change what you need.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct OatsOptions {
    /// One of [`OatsBackend`].
    pub backend: u32,
    /// Intra-op threads of ONNX Runtime; 0: its default (one per core). tract ignores it.
    pub threads: u32,
    /// 1: load every graph file at open, so every later switch is a pointer swap; 0: load on
    /// first use.
    pub preload: u8,
    /// Byte budget of the configurations derived from the package (least recently used
    /// evicted first); 0: no limit.
    pub cache_bytes: u64,
}

/// A file of an export held in memory, for [`oats_open_from_memory`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct OatsFile {
    /// The name the manifest uses (`manifest.yaml`, `package.safetensors`, `w1.onnx`, …),
    /// NUL-terminated UTF-8.
    pub name: *const c_char,
    /// The file's bytes; copied during the call.
    pub data: *const u8,
    /// Number of bytes at `data`.
    pub len: usize,
}

/// Constraints and objective of [`oats_select_policy`], over the metrics calibration stored
/// in the manifest. A constraint on a metric the manifest lacks fails the selection.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct OatsPolicy {
    /// Minimum clean accuracy in [0, 1]; NaN: none.
    pub min_sa: f64,
    /// Minimum robust accuracy (worst case over the calibrated attacks) in [0, 1]; NaN: none.
    pub min_ra: f64,
    /// Maximum multiply-accumulates per image; 0: none.
    pub max_macs: u64,
    /// Maximum median latency in ms at `latency_key`; NaN: none.
    pub max_latency_ms: f64,
    /// Which measured latency the latency constraint and objective read, e.g. "tract/b1";
    /// NULL: "tract/b1".
    pub latency_key: *const c_char,
    /// One of [`OatsObjective`].
    pub objective: u32,
}

/// A configuration of the model: listed in the manifest, or derived from the package.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct OatsConfig {
    /// Position in the manifest's list (what [`oats_config`] takes); [`OATS_NOT_LISTED`] for
    /// a derived configuration the manifest does not list. Its id: [`oats_config_id`].
    pub index: usize,
    /// Robustness weight λ.
    pub lambda: f64,
    /// Channel width multiplier.
    pub width: f64,
    /// Multiply-accumulates per image.
    pub macs: u64,
    /// Parameters of the graph.
    pub params: u64,
    /// Calibrated clean accuracy in [0, 1]; NaN: not calibrated.
    pub sa: f64,
    /// Calibrated robust accuracy (worst case) in [0, 1]; NaN: not calibrated.
    pub ra: f64,
    /// 1: derived on the device from the package; 0: a graph file of the export.
    pub derived: u8,
}

/// Runs `body`, turning an error or a panic into a status and the thread's last error.
fn guard(body: impl FnOnce() -> Result<(), Failure>) -> OatsStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error(None);
            OatsStatus::Ok
        }
        Ok(Err(f)) => {
            set_last_error(Some(f.message));
            f.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(Some(format!("internal error (panic): {what}")));
            OatsStatus::Panic
        }
    }
}

/// `p` as a reference, or a NULL-pointer failure naming `what`.
///
/// # Safety
/// `p` must be NULL or point to a valid `T` for the call's duration.
unsafe fn deref<'a, T>(p: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller's contract: NULL or valid.
    unsafe { p.as_ref() }.ok_or_else(|| Failure::null(what))
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

/// Writes `value` through `out` if `out` is not NULL.
///
/// # Safety
/// `out` must be NULL or point to writable memory for a `T`.
unsafe fn put<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: non-NULL and writable by the caller's contract.
        unsafe { out.write(value) };
    }
}

fn backend(code: u32) -> Result<Backend, Failure> {
    match code {
        0 => Ok(Backend::Tract),
        1 => Ok(Backend::Ort),
        2 => Ok(Backend::OrtCuda),
        other => Err(Failure::invalid(format!(
            "backend {other} is not one of OATS_BACKEND_TRACT (0), OATS_BACKEND_ORT (1), \
             OATS_BACKEND_ORT_CUDA (2)"
        ))),
    }
}

fn to_options(o: Option<&OatsOptions>) -> Result<Options, Failure> {
    let d = oats_options_default();
    let o = o.unwrap_or(&d);
    Ok(Options {
        backend: backend(o.backend)?,
        threads: (o.threads > 0).then_some(o.threads as usize),
        preload: o.preload != 0,
        cache_bytes: (o.cache_bytes > 0).then_some(o.cache_bytes),
        preload_derived: Vec::new(),
    })
}

/// The C view of `info`, with its position in `model`'s manifest.
fn config_of(model: &Model, info: &ConfigInfo) -> OatsConfig {
    let metrics = info.metrics.as_ref();
    OatsConfig {
        index: model
            .manifest()
            .graph_index(&info.id)
            .unwrap_or(OATS_NOT_LISTED),
        lambda: info.lambda,
        width: info.width,
        macs: info.macs,
        params: info.params,
        sa: metrics.and_then(|m| m.sa).unwrap_or(f64::NAN),
        ra: metrics
            .and_then(|m| m.robust_accuracy())
            .unwrap_or(f64::NAN),
        derived: u8::from(info.derived),
    }
}

/// The ABI version this library implements ([`OATS_ABI_VERSION`]).
#[no_mangle]
pub extern "C" fn oats_abi_version() -> u32 {
    OATS_ABI_VERSION
}

/// The library's version, e.g. "0.1.0": a static NUL-terminated string (do not free).
#[no_mangle]
pub extern "C" fn oats_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The default options: tract, ONNX Runtime's default threads, preload on, no cache budget.
#[no_mangle]
pub extern "C" fn oats_options_default() -> OatsOptions {
    OatsOptions {
        backend: OatsBackend::Tract as u32,
        threads: 0,
        preload: 1,
        cache_bytes: 0,
    }
}

/// Copies the message of this thread's last failed call into `buf` (at most `len` bytes,
/// always NUL-terminated when `len` > 0) and returns the bytes the whole message needs,
/// NUL included: a return value above `len` means it was cut. Returns 0 when the last call
/// on this thread succeeded. `buf` may be NULL to ask for the size.
///
/// # Safety
/// `buf` must be NULL or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn oats_last_error(buf: *mut c_char, len: usize) -> usize {
    status::with_last_error(|msg| {
        let Some(msg) = msg else { return 0 };
        let bytes = msg.as_bytes();
        if !buf.is_null() && len > 0 {
            let n = bytes.len().min(len - 1);
            // SAFETY: `buf` holds `len` > n bytes by the caller's contract; the regions
            // cannot overlap (one is ours).
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), n);
                buf.add(n).write(0);
            }
        }
        bytes.len() + 1
    })
}

/// Opens the export in directory `dir` (NUL-terminated UTF-8 path) with `options` (NULL:
/// the defaults) and stores the handle in `*out` (set to NULL on failure).
///
/// # Safety
/// `dir` must be a NUL-terminated string, `options` NULL or valid, `out` writable.
#[no_mangle]
pub unsafe extern "C" fn oats_open(
    dir: *const c_char,
    options: *const OatsOptions,
    out: *mut *mut OatsModel,
) -> OatsStatus {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: checked non-NULL; writable by the caller's contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: the caller's contract.
        let dir = unsafe { text(dir, "dir") }?;
        // SAFETY: the caller's contract.
        let opts = to_options(unsafe { options.as_ref() })?;
        let inner = Model::open(Path::new(dir), &opts)?;
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(Box::new(OatsModel { inner }))) };
        Ok(())
    })
}

/// Opens an export held in memory: `count` files at `files` (the manifest, `manifest.yaml`,
/// and every file it lists), each copied during the call, with the same checks as
/// [`oats_open`]. Errors name the files `memory:/<name>`.
///
/// # Safety
/// `files` must point to `count` valid [`OatsFile`]s (or be NULL with `count` 0), each
/// `data` to `len` readable bytes; `options` NULL or valid; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn oats_open_from_memory(
    files: *const OatsFile,
    count: usize,
    options: *const OatsOptions,
    out: *mut *mut OatsModel,
) -> OatsStatus {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: checked non-NULL; writable by the caller's contract.
        unsafe { out.write(std::ptr::null_mut()) };
        if files.is_null() && count > 0 {
            return Err(Failure::null("files"));
        }
        let list: &[OatsFile] = if count == 0 {
            &[]
        } else {
            // SAFETY: non-NULL, `count` valid elements by the caller's contract.
            unsafe { std::slice::from_raw_parts(files, count) }
        };
        let mut set = ExportFiles::new();
        for (i, f) in list.iter().enumerate() {
            // SAFETY: the caller's contract.
            let name = unsafe { text(f.name, &format!("files[{i}].name")) }?;
            if f.data.is_null() && f.len > 0 {
                return Err(Failure::null(&format!("files[{i}].data")));
            }
            let bytes: &[u8] = if f.len == 0 {
                &[]
            } else {
                // SAFETY: non-NULL, `len` readable bytes by the caller's contract.
                unsafe { std::slice::from_raw_parts(f.data, f.len) }
            };
            set.insert(name, bytes);
        }
        // SAFETY: the caller's contract.
        let opts = to_options(unsafe { options.as_ref() })?;
        let inner = Model::open_from_memory(set, &opts)?;
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(Box::new(OatsModel { inner }))) };
        Ok(())
    })
}

/// Frees the model. NULL is accepted (and does nothing). No other call on `model` may run
/// at the same time or after.
///
/// # Safety
/// `model` must be NULL or a handle from [`oats_open`] / [`oats_open_from_memory`] not yet
/// closed.
#[no_mangle]
pub unsafe extern "C" fn oats_close(model: *mut OatsModel) {
    if model.is_null() {
        return;
    }
    // Dropping runs engine destructors; a panic there must not cross the boundary.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a live handle made by Box::into_raw, by the caller's contract.
        drop(unsafe { Box::from_raw(model) });
    }));
}

/// The input shape (C, H, W) of one image into `out[0..3]`, and the number of classes into
/// `*classes`.
///
/// # Safety
/// `model` a live handle; `out` NULL or 3 writable `size_t`; `classes` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn oats_shape(
    model: *const OatsModel,
    out: *mut usize,
    classes: *mut usize,
) -> OatsStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = unsafe { deref(model, "model") }?.inner.manifest();
        if !out.is_null() {
            for (i, d) in m.input.shape.iter().enumerate() {
                // SAFETY: 3 writable elements by the caller's contract.
                unsafe { out.add(i).write(*d) };
            }
        }
        // SAFETY: the caller's contract.
        unsafe { put(classes, m.output.classes) };
        Ok(())
    })
}

/// The number of configurations the manifest lists (graph files and derived entries).
///
/// # Safety
/// `model` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn oats_config_count(model: *const OatsModel, out: *mut usize) -> OatsStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = unsafe { deref(model, "model") }?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: checked non-NULL.
        unsafe { out.write(m.inner.manifest().graphs.len()) };
        Ok(())
    })
}

/// The configuration at `index` of the manifest (0 ≤ index < [`oats_config_count`]).
///
/// # Safety
/// `model` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn oats_config(
    model: *const OatsModel,
    index: usize,
    out: *mut OatsConfig,
) -> OatsStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = &unsafe { deref(model, "model") }?.inner;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let graphs = &m.manifest().graphs;
        let g = graphs.get(index).ok_or_else(|| {
            Failure::invalid(format!(
                "index {index} is past the {} configurations",
                graphs.len()
            ))
        })?;
        let c = OatsConfig {
            index,
            lambda: g.lambda,
            width: g.width,
            macs: g.macs,
            params: g.params,
            sa: g.metrics.sa.unwrap_or(f64::NAN),
            ra: g.metrics.robust_accuracy().unwrap_or(f64::NAN),
            derived: u8::from(g.is_derived()),
        };
        // SAFETY: checked non-NULL.
        unsafe { out.write(c) };
        Ok(())
    })
}

/// The id of the configuration at `index` (e.g. "l0.2-w0.5"), NUL-terminated, into `buf` of
/// `len` bytes; `*needed` (if not NULL) gets the bytes it takes, NUL included. A `len` below
/// that is `OATS_STATUS_BUFFER_TOO_SMALL` and writes nothing.
///
/// # Safety
/// `model` a live handle; `buf` NULL or `len` writable bytes; `needed` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn oats_config_id(
    model: *const OatsModel,
    index: usize,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> OatsStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = &unsafe { deref(model, "model") }?.inner;
        let graphs = &m.manifest().graphs;
        let id = &graphs
            .get(index)
            .ok_or_else(|| {
                Failure::invalid(format!(
                    "index {index} is past the {} configurations",
                    graphs.len()
                ))
            })?
            .id;
        let need = id.len() + 1;
        // SAFETY: the caller's contract.
        unsafe { put(needed, need) };
        if buf.is_null() || len < need {
            return Err(Failure::too_small(format!(
                "the id {id:?} needs {need} bytes, the buffer has {len}"
            )));
        }
        // SAFETY: `len` ≥ need writable bytes by the caller's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(id.as_ptr(), buf.cast::<u8>(), id.len());
            buf.add(id.len()).write(0);
        }
        Ok(())
    })
}

/// Selects `selector` and reports what now serves inferences through `served`.
///
/// # Safety
/// `model` a live handle; `served` NULL or writable.
unsafe fn select(
    model: *const OatsModel,
    served: *mut OatsConfig,
    selector: impl FnOnce() -> Result<Selector, Failure>,
) -> OatsStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = &unsafe { deref(model, "model") }?.inner;
        let info = m.select(&selector()?)?;
        // SAFETY: the caller's contract.
        unsafe { put(served, config_of(m, &info)) };
        Ok(())
    })
}

/// Makes (λ, width) the active configuration: a listed one, or with a package (manifest
/// schema v2) any λ in the trained range at a trained width, derived on the device.
/// `served` (if not NULL) receives it.
///
/// # Safety
/// `model` a live handle; `served` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn oats_select(
    model: *const OatsModel,
    lambda: f64,
    width: f64,
    served: *mut OatsConfig,
) -> OatsStatus {
    // SAFETY: forwarded contract.
    unsafe { select(model, served, || Ok(Selector::Explicit { lambda, width })) }
}

/// Makes the listed configuration at `width` with the λ closest to `lambda` active (ties go
/// to the larger λ); a λ outside the listed range at that width is refused.
///
/// # Safety
/// `model` a live handle; `served` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn oats_select_nearest(
    model: *const OatsModel,
    lambda: f64,
    width: f64,
    served: *mut OatsConfig,
) -> OatsStatus {
    // SAFETY: forwarded contract.
    unsafe {
        select(model, served, || {
            Ok(Selector::NearestLambda { lambda, width })
        })
    }
}

/// Makes the configuration with manifest id `id` (NUL-terminated) active.
///
/// # Safety
/// `model` a live handle; `id` a NUL-terminated string; `served` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn oats_select_id(
    model: *const OatsModel,
    id: *const c_char,
    served: *mut OatsConfig,
) -> OatsStatus {
    // SAFETY: forwarded contract.
    unsafe {
        select(model, served, || {
            // SAFETY: the caller's contract.
            Ok(Selector::Id(text(id, "id")?.to_string()))
        })
    }
}

/// Makes the best configuration under `policy` active (see [`OatsPolicy`]); when none
/// qualifies, `OATS_STATUS_NONE_QUALIFIES` says which constraint excluded the rest.
///
/// # Safety
/// `model` a live handle; `policy` valid (its `latency_key` NULL or NUL-terminated);
/// `served` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn oats_select_policy(
    model: *const OatsModel,
    policy: *const OatsPolicy,
    served: *mut OatsConfig,
) -> OatsStatus {
    // SAFETY: forwarded contract.
    unsafe {
        select(model, served, || {
            // SAFETY: the caller's contract.
            let p = deref(policy, "policy")?;
            let objective = match p.objective {
                0 => Objective::MaxRa,
                1 => Objective::MaxSa,
                2 => Objective::MinLatency,
                other => {
                    return Err(Failure::invalid(format!(
                        "objective {other} is not one of OATS_OBJECTIVE_MAX_RA (0), \
                         OATS_OBJECTIVE_MAX_SA (1), OATS_OBJECTIVE_MIN_LATENCY (2)"
                    )))
                }
            };
            let latency_key = if p.latency_key.is_null() {
                Policy::default().latency_key
            } else {
                // SAFETY: non-NULL, NUL-terminated by the caller's contract.
                text(p.latency_key, "policy.latency_key")?.to_string()
            };
            let some = |v: f64| (!v.is_nan()).then_some(v);
            Ok(Selector::Policy(Policy {
                min_sa: some(p.min_sa),
                min_ra: some(p.min_ra),
                max_macs: (p.max_macs > 0).then_some(p.max_macs),
                max_latency_ms: some(p.max_latency_ms),
                latency_key,
                objective,
            }))
        })
    }
}

/// The active configuration.
///
/// # Safety
/// `model` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn oats_active(model: *const OatsModel, out: *mut OatsConfig) -> OatsStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = &unsafe { deref(model, "model") }?.inner;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: checked non-NULL.
        unsafe { out.write(config_of(m, &m.active())) };
        Ok(())
    })
}

/// Runs the active configuration on `n` images of C×H×W floats (NCHW, row-major, in the
/// manifest's value range, usually [0, 1]), writing `n` × classes logits to
/// `logits` (room for `logits_len` floats). `*needed` (if not NULL) gets the floats the
/// logits take; a smaller `logits_len` is `OATS_STATUS_BUFFER_TOO_SMALL` and runs nothing.
/// `served` (if not NULL) receives the configuration that computed them, which may differ
/// from the one selected before the call if another thread switched meanwhile. A
/// configuration with side exits routes each image by the thresholds
/// ([`oats_set_thresholds`]); [`oats_infer_routed`] also says which exit answered.
///
/// # Safety
/// `model` a live handle; `input` `n·c·h·w` readable floats; `logits` `logits_len` writable
/// floats; `needed` and `served` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn oats_infer(
    model: *const OatsModel,
    input: *const f32,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    logits: *mut f32,
    logits_len: usize,
    needed: *mut usize,
    served: *mut OatsConfig,
) -> OatsStatus {
    // SAFETY: the same contract, and no exits buffer.
    unsafe {
        oats_infer_routed(
            model,
            input,
            n,
            c,
            h,
            w,
            logits,
            logits_len,
            needed,
            served,
            std::ptr::null_mut(),
        )
    }
}

/// [`oats_infer`], and per image the exit that answered it, written to `exits` (room for
/// `n` values; NULL: not wanted): 0 for the first side exit, up to the number of side exits
/// for the final classifier (every image's value when the configuration has no exits or no
/// thresholds, so the whole network ran).
///
/// # Safety
/// As [`oats_infer`]; `exits` NULL or `n` writable `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn oats_infer_routed(
    model: *const OatsModel,
    input: *const f32,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    logits: *mut f32,
    logits_len: usize,
    needed: *mut usize,
    served: *mut OatsConfig,
    exits: *mut u32,
) -> OatsStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = &unsafe { deref(model, "model") }?.inner;
        let classes = m.manifest().output.classes;
        let need = n
            .checked_mul(classes)
            .ok_or_else(|| Failure::invalid(format!("n = {n} images is too many")))?;
        // SAFETY: the caller's contract.
        unsafe { put(needed, need) };
        let len = [n, c, h, w]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Failure::invalid(format!("shape [{n}, {c}, {h}, {w}] overflows")))?;
        if input.is_null() && len > 0 {
            return Err(Failure::null("input"));
        }
        if logits.is_null() || logits_len < need {
            return Err(Failure::too_small(format!(
                "{n} images × {classes} classes need {need} floats, the buffer has {logits_len}"
            )));
        }
        let data = if len == 0 {
            Vec::new()
        } else {
            // SAFETY: non-NULL, `len` readable floats by the caller's contract.
            unsafe { std::slice::from_raw_parts(input, len) }.to_vec()
        };
        let p = m.infer(&Batch::new([n, c, h, w], data)?)?;
        let out = p.logits.get(..need).ok_or_else(|| {
            Failure::from(RuntimeError::Inference {
                backend: m.backend().name().into(),
                source: format!("{} logits for {need} expected", p.logits.len()).into(),
            })
        })?;
        // SAFETY: `logits_len` ≥ need writable floats by the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(out.as_ptr(), logits, need) };
        if !exits.is_null() {
            for (i, e) in p.answering_exits().into_iter().take(n).enumerate() {
                // SAFETY: `n` writable values at non-NULL `exits` by the caller's contract;
                // an exit index is at most a manifest's count of heads, far below u32::MAX.
                unsafe { exits.add(i).write(e as u32) };
            }
        }
        // SAFETY: the caller's contract.
        unsafe { put(served, config_of(m, &p.config)) };
        Ok(())
    })
}

/// Sets the entropy thresholds of the side exits, `count` doubles at `thresholds`, one per
/// side exit (finite, ≥ 0; 0 never leaves early), for every configuration with exits, in
/// place of the calibrated ones; `thresholds` NULL with `count` 0 returns to the calibrated
/// thresholds (NULL with `count` > 0 is `OATS_STATUS_NULL_POINTER`). A pointer swap like
/// selecting: inferences in flight keep the thresholds they started with. A model without
/// exits, or a count other than its side exits', is `OATS_STATUS_INVALID_ARGUMENT`.
///
/// # Safety
/// `model` a live handle; `thresholds` NULL or `count` readable doubles.
#[no_mangle]
pub unsafe extern "C" fn oats_set_thresholds(
    model: *const OatsModel,
    thresholds: *const f64,
    count: usize,
) -> OatsStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = &unsafe { deref(model, "model") }?.inner;
        let t = match (thresholds.is_null(), count) {
            (true, 0) => None,
            (true, _) => return Err(Failure::null("thresholds")),
            (false, 0) => Some(Vec::new()), // refused by the runtime: no side exit takes none
            // SAFETY: non-NULL, `count` readable doubles by the caller's contract.
            (false, _) => Some(unsafe { std::slice::from_raw_parts(thresholds, count) }.to_vec()),
        };
        m.set_thresholds(t)?;
        Ok(())
    })
}

/// Writes `values` to `out` (room for `cap` of them) and their number
/// to `*count`; a smaller `cap` is `OATS_STATUS_BUFFER_TOO_SMALL` with `*count` set.
///
/// # Safety
/// `out` NULL or `cap` writable `T`; `count` writable.
unsafe fn put_list<T: Copy>(
    values: &[T],
    out: *mut T,
    cap: usize,
    count: *mut usize,
) -> Result<(), Failure> {
    if count.is_null() {
        return Err(Failure::null("count"));
    }
    // SAFETY: checked non-NULL, writable by the caller's contract.
    unsafe { count.write(values.len()) };
    if values.is_empty() {
        return Ok(());
    }
    if out.is_null() || cap < values.len() {
        return Err(Failure::too_small(format!(
            "{} values, the buffer has room for {cap}",
            values.len()
        )));
    }
    // SAFETY: `cap` ≥ len writable values at non-NULL `out`.
    unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), out, values.len()) };
    Ok(())
}

/// The thresholds the active configuration routes with (those set by
/// [`oats_set_thresholds`], else its calibrated ones), one per side exit, into `out` (room
/// for `cap`); `*count` gets how many: 0 when it has no exits or nothing to route with (then
/// the whole network runs). A smaller `cap` (or `out` NULL) is
/// `OATS_STATUS_BUFFER_TOO_SMALL` with `*count` set, so a first call can ask the size.
///
/// # Safety
/// `model` a live handle; `out` NULL or `cap` writable doubles; `count` writable.
#[no_mangle]
pub unsafe extern "C" fn oats_thresholds(
    model: *const OatsModel,
    out: *mut f64,
    cap: usize,
    count: *mut usize,
) -> OatsStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = &unsafe { deref(model, "model") }?.inner;
        let t = m.thresholds().unwrap_or_default();
        // SAFETY: the caller's contract.
        unsafe { put_list(&t, out, cap, count) }
    })
}

/// Multiply-accumulates of one image answered at each exit of the active configuration
/// (earlier heads included), the final classifier last, into `out` (room for `cap`);
/// `*count` gets how many: 0 without exits. A smaller `cap` (or `out` NULL) is
/// `OATS_STATUS_BUFFER_TOO_SMALL` with `*count` set.
///
/// # Safety
/// `model` a live handle; `out` NULL or `cap` writable `uint64_t`; `count` writable.
#[no_mangle]
pub unsafe extern "C" fn oats_exit_macs(
    model: *const OatsModel,
    out: *mut u64,
    cap: usize,
    count: *mut usize,
) -> OatsStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = &unsafe { deref(model, "model") }?.inner;
        let macs = m.exit_macs().unwrap_or_default();
        // SAFETY: the caller's contract.
        unsafe { put_list(&macs, out, cap, count) }
    })
}
