//! The JNI functions behind `java/java/oats/OatsModel.java`: a thin layer over
//! [`oats_runtime::OatsModel`], like the C ABI (`oats-ffi`) and the Python module.
//!
//! The Java class owns the handle (a `long`: a `Box<OatsModel>` pointer) and guards it with a
//! read-write lock, so `close` never races a call; every call here may run on any thread at
//! once (the model is `Send + Sync`). Every error becomes an `oats.OatsException` whose
//! `kind` names the runtime's error kind; a panic becomes one of kind "panic" and never
//! unwinds into the JVM.
#![warn(missing_docs)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use jni::objects::{
    JByteArray, JClass, JDoubleArray, JFloatArray, JObject, JObjectArray, JString, JValue,
};
use jni::sys::{jdouble, jdoubleArray, jint, jlong, jlongArray, jobject, jobjectArray};
use jni::JNIEnv;
use oats_runtime::{
    Backend, Batch, ConfigInfo, ExportFiles, GraphEntry, OatsModel, Objective, Options, Policy,
    RuntimeError, Selector,
};

const CONFIG_CLASS: &str = "oats/OatsModel$Config";
const CONFIG_CTOR: &str = "(Ljava/lang/String;DDJDDZI)V";

/// A failed call: the `kind` of the `OatsException` to throw, and its message.
struct Failure {
    kind: &'static str,
    message: String,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Self {
        Failure {
            kind: "invalid-argument",
            message: message.into(),
        }
    }
}

impl From<RuntimeError> for Failure {
    fn from(e: RuntimeError) -> Self {
        Failure {
            kind: e.kind().name(),
            message: oats_io::error_chain(&e),
        }
    }
}

/// A JNI failure (an exception already pending, a class not found): rethrown as is.
impl From<jni::errors::Error> for Failure {
    fn from(e: jni::errors::Error) -> Self {
        Failure {
            kind: "jni",
            message: e.to_string(),
        }
    }
}

/// Runs `body`; on failure throws an `OatsException` (unless an exception is already
/// pending) and returns `fallback`. Panics are caught.
fn guard<'local, T>(
    env: &mut JNIEnv<'local>,
    fallback: T,
    body: impl FnOnce(&mut JNIEnv<'local>) -> Result<T, Failure>,
) -> T {
    let result = catch_unwind(AssertUnwindSafe(|| body(env))).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Failure {
            kind: "panic",
            message: format!("internal error (panic): {what}"),
        })
    });
    match result {
        Ok(v) => v,
        Err(f) => {
            if !env.exception_check().unwrap_or(true) {
                throw(env, &f);
            }
            fallback
        }
    }
}

fn throw(env: &mut JNIEnv<'_>, f: &Failure) {
    let made = (|| -> jni::errors::Result<JObject<'_>> {
        let kind = env.new_string(f.kind)?;
        let msg = env.new_string(&f.message)?;
        env.new_object(
            "oats/OatsException",
            "(Ljava/lang/String;Ljava/lang/String;)V",
            &[JValue::Object(&kind), JValue::Object(&msg)],
        )
    })();
    match made {
        Ok(obj) => {
            let _ = env.throw(jni::objects::JThrowable::from(obj));
        }
        Err(_) => {
            let _ = env.throw_new("java/lang/RuntimeException", &f.message);
        }
    }
}

fn string(env: &mut JNIEnv<'_>, s: &JString<'_>, what: &str) -> Result<String, Failure> {
    if s.is_null() {
        return Err(Failure::invalid(format!("{what} is null")));
    }
    Ok(env.get_string(s)?.into())
}

fn options(env: &mut JNIEnv<'_>, backend: &JString<'_>) -> Result<Options, Failure> {
    let name = string(env, backend, "backend")?;
    Ok(Options {
        backend: name.parse::<Backend>()?,
        ..Options::default()
    })
}

/// The model behind `handle` (the Java class never passes a closed one).
fn model<'a>(handle: jlong) -> Result<&'a OatsModel, Failure> {
    if handle == 0 {
        return Err(Failure::invalid("the model is closed"));
    }
    // SAFETY: a pointer from Box::into_raw in nativeOpen*, kept alive by the Java object
    // until nativeClose, which its write lock keeps from running during this call.
    Ok(unsafe { &*(handle as *const OatsModel) })
}

fn into_handle(m: OatsModel) -> jlong {
    Box::into_raw(Box::new(m)) as jlong
}

#[allow(clippy::too_many_arguments)]
fn config_object<'local>(
    env: &mut JNIEnv<'local>,
    id: &str,
    lambda: f64,
    width: f64,
    macs: u64,
    sa: Option<f64>,
    ra: Option<f64>,
    derived: bool,
    side_exits: usize,
) -> Result<JObject<'local>, Failure> {
    let id = env.new_string(id)?;
    Ok(env.new_object(
        CONFIG_CLASS,
        CONFIG_CTOR,
        &[
            JValue::Object(&id),
            JValue::Double(lambda),
            JValue::Double(width),
            JValue::Long(macs as i64),
            JValue::Double(sa.unwrap_or(f64::NAN)),
            JValue::Double(ra.unwrap_or(f64::NAN)),
            JValue::Bool(u8::from(derived)),
            JValue::Int(jint::try_from(side_exits).unwrap_or(jint::MAX)),
        ],
    )?)
}

fn info_object<'local>(
    env: &mut JNIEnv<'local>,
    c: &ConfigInfo,
) -> Result<JObject<'local>, Failure> {
    let m = c.metrics.as_ref();
    config_object(
        env,
        &c.id,
        c.lambda,
        c.width,
        c.macs,
        m.and_then(|m| m.sa),
        m.and_then(|m| m.robust_accuracy()),
        c.derived,
        c.side_exits,
    )
}

fn entry_object<'local>(
    env: &mut JNIEnv<'local>,
    g: &GraphEntry,
) -> Result<JObject<'local>, Failure> {
    config_object(
        env,
        &g.id,
        g.lambda,
        g.width,
        g.macs,
        g.metrics.sa,
        g.metrics.robust_accuracy(),
        g.is_derived(),
        g.exits.as_ref().map_or(0, |e| e.heads.len()),
    )
}

/// `OatsModel.nativeOpen(String dir, String backend)`.
#[no_mangle]
pub extern "system" fn Java_oats_OatsModel_nativeOpen<'local>(
    mut env: JNIEnv<'local>,
    _class: JClass<'local>,
    dir: JString<'local>,
    backend: JString<'local>,
) -> jlong {
    guard(&mut env, 0, |env| {
        let dir = string(env, &dir, "dir")?;
        let opts = options(env, &backend)?;
        Ok(into_handle(OatsModel::open(dir, &opts)?))
    })
}

/// `OatsModel.nativeOpenFiles(String[] names, byte[][] contents, String backend)`.
#[no_mangle]
pub extern "system" fn Java_oats_OatsModel_nativeOpenFiles<'local>(
    mut env: JNIEnv<'local>,
    _class: JClass<'local>,
    names: JObjectArray<'local>,
    contents: JObjectArray<'local>,
    backend: JString<'local>,
) -> jlong {
    guard(&mut env, 0, |env| {
        let n = env.get_array_length(&names)?;
        if env.get_array_length(&contents)? != n {
            return Err(Failure::invalid("names and contents differ in length"));
        }
        let mut files = ExportFiles::new();
        for i in 0..n {
            let name = JString::from(env.get_object_array_element(&names, i)?);
            let name = string(env, &name, "a file name")?;
            let bytes = JByteArray::from(env.get_object_array_element(&contents, i)?);
            if bytes.is_null() {
                return Err(Failure::invalid(format!("the contents of {name} are null")));
            }
            files.insert(name, env.convert_byte_array(&bytes)?);
        }
        let opts = options(env, &backend)?;
        Ok(into_handle(OatsModel::open_from_memory(files, &opts)?))
    })
}

/// `OatsModel.nativeSelect(long, double lambda, double width, String id)`: by id when `id`
/// is not null, else (λ, width).
#[no_mangle]
pub extern "system" fn Java_oats_OatsModel_nativeSelect<'local>(
    mut env: JNIEnv<'local>,
    _class: JClass<'local>,
    handle: jlong,
    lambda: jdouble,
    width: jdouble,
    id: JString<'local>,
) -> jobject {
    guard(&mut env, std::ptr::null_mut(), |env| {
        let m = model(handle)?;
        let selector = if id.is_null() {
            Selector::Explicit { lambda, width }
        } else {
            Selector::Id(string(env, &id, "id")?)
        };
        let info = m.select(&selector)?;
        Ok(info_object(env, &info)?.into_raw())
    })
}

/// `OatsModel.nativeSelectPolicy(long, double minSa, double minRa, long maxMacs, String
/// objective)`.
#[no_mangle]
pub extern "system" fn Java_oats_OatsModel_nativeSelectPolicy<'local>(
    mut env: JNIEnv<'local>,
    _class: JClass<'local>,
    handle: jlong,
    min_sa: jdouble,
    min_ra: jdouble,
    max_macs: jlong,
    objective: JString<'local>,
) -> jobject {
    guard(&mut env, std::ptr::null_mut(), |env| {
        let m = model(handle)?;
        let objective = match string(env, &objective, "objective")?.as_str() {
            "max-ra" => Objective::MaxRa,
            "max-sa" => Objective::MaxSa,
            "min-latency" => Objective::MinLatency,
            other => {
                return Err(Failure::invalid(format!(
                    "objective {other:?}: expected \"max-ra\", \"max-sa\" or \"min-latency\""
                )))
            }
        };
        let some = |v: f64| (!v.is_nan()).then_some(v);
        let policy = Policy {
            min_sa: some(min_sa),
            min_ra: some(min_ra),
            max_macs: u64::try_from(max_macs).ok().filter(|&v| v > 0),
            objective,
            ..Policy::default()
        };
        let info = m.select(&Selector::Policy(policy))?;
        Ok(info_object(env, &info)?.into_raw())
    })
}

/// `OatsModel.nativeConfigs(long)`.
#[no_mangle]
pub extern "system" fn Java_oats_OatsModel_nativeConfigs<'local>(
    mut env: JNIEnv<'local>,
    _class: JClass<'local>,
    handle: jlong,
) -> jobjectArray {
    guard(&mut env, std::ptr::null_mut(), |env| {
        let m = model(handle)?;
        let graphs = &m.manifest().graphs;
        let len = jint::try_from(graphs.len())
            .map_err(|_| Failure::invalid("too many configurations for a Java array"))?;
        let array = env.new_object_array(len, CONFIG_CLASS, JObject::null())?;
        for (i, g) in graphs.iter().enumerate() {
            let obj = entry_object(env, g)?;
            env.set_object_array_element(&array, i as jint, &obj)?;
            env.delete_local_ref(obj)?;
        }
        Ok(array.into_raw())
    })
}

/// `OatsModel.nativeInfer(long, float[] input, int n, int c, int h, int w)`.
#[no_mangle]
pub extern "system" fn Java_oats_OatsModel_nativeInfer<'local>(
    mut env: JNIEnv<'local>,
    _class: JClass<'local>,
    handle: jlong,
    input: JFloatArray<'local>,
    n: jint,
    c: jint,
    h: jint,
    w: jint,
) -> jobject {
    guard(&mut env, std::ptr::null_mut(), |env| {
        let m = model(handle)?;
        if input.is_null() {
            return Err(Failure::invalid("input is null"));
        }
        let dims: Vec<usize> = [n, c, h, w]
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| Failure::invalid(format!("shape [{n}, {c}, {h}, {w}] is negative")))?;
        let shape = [dims[0], dims[1], dims[2], dims[3]];
        let len = usize::try_from(env.get_array_length(&input)?).unwrap_or(0);
        let mut data = vec![0f32; len];
        env.get_float_array_region(&input, 0, &mut data)?;
        let p = m.infer(&Batch::new(shape, data)?)?;
        let out_len = jint::try_from(p.logits.len())
            .map_err(|_| Failure::invalid("too many logits for a Java array"))?;
        let logits = env.new_float_array(out_len)?;
        env.set_float_array_region(&logits, 0, &p.logits)?;
        let config = info_object(env, &p.config)?;
        let classes = jint::try_from(p.classes).unwrap_or(jint::MAX);
        // An exit index is at most a manifest's count of heads.
        let answered: Vec<jint> = p
            .answering_exits()
            .into_iter()
            .map(|e| jint::try_from(e).unwrap_or(jint::MAX))
            .collect();
        let exits = env.new_int_array(jint::try_from(answered.len()).unwrap_or(0))?;
        env.set_int_array_region(&exits, 0, &answered)?;
        Ok(env
            .new_object(
                "oats/OatsModel$Result",
                "([FILoats/OatsModel$Config;[I)V",
                &[
                    JValue::Object(&logits),
                    JValue::Int(classes),
                    JValue::Object(&config),
                    JValue::Object(&exits),
                ],
            )?
            .into_raw())
    })
}

/// `OatsModel.nativeSetThresholds(long, double[])`: null returns to the calibrated ones.
#[no_mangle]
pub extern "system" fn Java_oats_OatsModel_nativeSetThresholds<'local>(
    mut env: JNIEnv<'local>,
    _class: JClass<'local>,
    handle: jlong,
    thresholds: JDoubleArray<'local>,
) {
    guard(&mut env, (), |env| {
        let m = model(handle)?;
        let t = if thresholds.is_null() {
            None
        } else {
            let len = usize::try_from(env.get_array_length(&thresholds)?).unwrap_or(0);
            let mut t = vec![0f64; len];
            env.get_double_array_region(&thresholds, 0, &mut t)?;
            Some(t)
        };
        m.set_thresholds(t)?;
        Ok(())
    })
}

/// `OatsModel.nativeThresholds(long)`: null when the active configuration has none.
#[no_mangle]
pub extern "system" fn Java_oats_OatsModel_nativeThresholds<'local>(
    mut env: JNIEnv<'local>,
    _class: JClass<'local>,
    handle: jlong,
) -> jdoubleArray {
    guard(&mut env, std::ptr::null_mut(), |env| {
        let Some(t) = model(handle)?.thresholds() else {
            return Ok(std::ptr::null_mut());
        };
        let array = env.new_double_array(jint::try_from(t.len()).unwrap_or(0))?;
        env.set_double_array_region(&array, 0, &t)?;
        Ok(array.into_raw())
    })
}

/// `OatsModel.nativeExitMacs(long)`: null without exits.
#[no_mangle]
pub extern "system" fn Java_oats_OatsModel_nativeExitMacs<'local>(
    mut env: JNIEnv<'local>,
    _class: JClass<'local>,
    handle: jlong,
) -> jlongArray {
    guard(&mut env, std::ptr::null_mut(), |env| {
        let Some(macs) = model(handle)?.exit_macs() else {
            return Ok(std::ptr::null_mut());
        };
        let macs: Vec<jlong> = macs
            .iter()
            .map(|&v| jlong::try_from(v).unwrap_or(jlong::MAX))
            .collect();
        let array = env.new_long_array(jint::try_from(macs.len()).unwrap_or(0))?;
        env.set_long_array_region(&array, 0, &macs)?;
        Ok(array.into_raw())
    })
}

/// `OatsModel.nativeClose(long)`: frees the model (0 is accepted).
#[no_mangle]
pub extern "system" fn Java_oats_OatsModel_nativeClose<'local>(
    _env: JNIEnv<'local>,
    _class: JClass<'local>,
    handle: jlong,
) {
    if handle != 0 {
        let _ = catch_unwind(|| {
            // SAFETY: a pointer from Box::into_raw; the Java class calls this once, under its
            // write lock, and zeroes its handle after.
            drop(unsafe { Box::from_raw(handle as *mut OatsModel) });
        });
    }
}
