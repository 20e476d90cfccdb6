//! int8 configurations in the runtime (issue #15), with no libtorch: a random package's
//! folded graphs and their QDQ twins (`oats_graph::quant`), listed with `precision: int8`.
//! They run in tract and ONNX Runtime, compute nearly the float logits and the same int8
//! logits in both (exact integer sums on every x86 CPU); selection keeps
//! (λ, width) selectors on the float graphs while ids and policies reach the int8 ones; and
//! a graph whose scales are missing, zero or NaN, or whose declared precision does not match
//! it, is refused with the reason.
//!
//! Hostile-input cases keep their class prefix (c5_: no silent wrong answer).
use crate::common;
use crate::pkgfix;

use std::path::Path;

use common::{base_manifest, save, tempdir, tool_missing, write};
use oats_graph::graph::{Data, Graph};
use oats_graph::quant;
use oats_graph::{config_id, Package};
use oats_runtime::manifest::sha256_hex;
use oats_runtime::{
    Backend, Batch, GraphEntry, LatencyStat, Layout, Manifest, Metrics, OatsModel, Options, Policy,
    Precision, Quantization, RuntimeError, Selector, TrainingSummary,
};

const N: usize = 8;

fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Tract];
    if cfg!(feature = "ort") {
        if std::env::var_os("ORT_DYLIB_PATH").is_some_and(|v| !v.is_empty()) {
            b.push(Backend::Ort);
        } else {
            tool_missing("ONNX Runtime (ORT_DYLIB_PATH is not set)");
        }
    }
    b
}

fn entry(id: &str, l: f64, w: f64, g: &Graph, bytes: &[u8], int8: bool) -> GraphEntry {
    GraphEntry {
        id: id.into(),
        lambda: l,
        width: w,
        file: Some(format!("{id}.onnx")),
        sha256: Some(sha256_hex(bytes)),
        lambda_index: None,
        params: g.params(),
        macs: g.macs,
        opset: oats_graph::onnx::OPSET,
        precision: if int8 {
            Precision::Int8
        } else {
            Precision::Float32
        },
        quantization: int8.then(|| Quantization {
            float_id: config_id(l, w),
            calibration_images: "synthetic[0..8]".into(),
            top1_agreement: 1.0,
            max_logit_error: 0.1,
            verification_images: "synthetic[0..8]".into(),
            activation_ranges: Vec::new(),
        }),
        metrics: Metrics::default(),
        exits: None,
    }
}

/// An export of `pkg` at λ ∈ {0, 1}, full width: float graphs and their int8 twins. Returns
/// the manifest and the int8 graphs (by id), for tests that tamper with them.
fn write_export(dir: &Path, pkg: &Package) -> (Manifest, Vec<(String, Graph)>) {
    let x = pkgfix::images(N, 5);
    let mut graphs = Vec::new();
    let mut int8 = Vec::new();
    for l in [0.0, 1.0] {
        let id = config_id(l, 1.0);
        let g = pkg.lower_folded(l, 1.0).expect("lower");
        let bytes = oats_graph::to_onnx(&g);
        write(dir, &format!("{id}.onnx"), &bytes);
        graphs.push(entry(&id, l, 1.0, &g, &bytes, false));
        let q = quant::quantize(&g, &pkgfix::ranges(&g, &x, N)).expect("quantize");
        let qid = format!("{id}-int8");
        let qbytes = oats_graph::to_onnx(&q);
        write(dir, &format!("{qid}.onnx"), &qbytes);
        graphs.push(entry(&qid, l, 1.0, &q, &qbytes, true));
        int8.push((qid, q));
    }
    let mut m = base_manifest(Layout::Folded, graphs);
    m.training = TrainingSummary {
        lambdas: vec![0.0, 0.5, 1.0],
        widths: pkg.widths().to_vec(),
        ..m.training
    };
    m.input.shape = [1, 8, 8];
    m.output.classes = 3;
    save(dir, &m);
    (m, int8)
}

fn open(dir: &Path, backend: Backend) -> Result<OatsModel, RuntimeError> {
    OatsModel::open(
        dir,
        &Options {
            backend,
            preload: true,
            ..Options::default()
        },
    )
}

#[test]
fn int8_graphs_run_in_every_engine_near_the_float_logits() {
    let dir = tempdir();
    let (m, _) = write_export(dir.path(), &pkgfix::resnet(3));
    let x = pkgfix::images(N, 9);
    let batch = Batch::new([N, 1, 8, 8], x.clone()).expect("batch");
    let mut int8_logits: Vec<(Backend, f64, Vec<f32>, f32)> = Vec::new();
    for backend in backends() {
        let rt = open(dir.path(), backend).expect("open");
        for l in [0.0, 1.0] {
            let id = config_id(l, 1.0);
            let f = rt.infer_with(&id, &batch).expect("float");
            let q = rt.infer_with(&format!("{id}-int8"), &batch).expect("int8");
            let scale = f.logits.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = common::max_abs_diff(&f.logits, &q.logits);
            assert!(
                d > 0.0 && d <= 0.1 * scale,
                "{backend:?} λ {l}: int8 vs float max |Δ| {d} (logits up to {scale})"
            );
            int8_logits.push((backend, l, q.logits.clone(), d));
        }
        // (λ, width) selectors mean the float graph; the int8 twin is reached by id.
        let p = rt
            .infer_selected(
                &Selector::Explicit {
                    lambda: 1.0,
                    width: 1.0,
                },
                &batch,
            )
            .expect("explicit");
        assert_eq!(p.config.id, "l1-w1", "{backend:?}");
        let p = rt
            .infer_selected(
                &Selector::NearestLambda {
                    lambda: 0.9,
                    width: 1.0,
                },
                &batch,
            )
            .expect("nearest");
        assert_eq!(p.config.id, "l1-w1", "{backend:?}");
    }
    assert_eq!(m.graphs.iter().filter(|g| g.is_int8()).count(), 2);
    // The engines compute one int8 model: the same integers, up to float rounding in the
    // requantization. Their difference must be far below what quantization itself moves.
    // Without exact kernels on a CPU lacking VNNI, ort's saturating U8S8 sums moved these
    // logits by 0.16, 50× the quantization error (runtime/src/engine/ort.rs,
    // `u8s8_may_saturate`); with them the engines agree to ~1e-7.
    for (b, l, q, d) in &int8_logits {
        for (b2, l2, q2, _) in &int8_logits {
            if l == l2 && b != b2 {
                let e = common::max_abs_diff(q, q2);
                assert!(
                    e <= 0.25 * d,
                    "int8 λ {l}: {b:?} and {b2:?} differ by {e}, against a quantization error \
                     of {d}: one engine does not compute the int8 model"
                );
            }
        }
    }
}

/// A policy chooses between float and int8 by their measured numbers: with int8 faster and
/// as robust, min-latency takes it; with its RA below the bound, the float graph.
#[test]
fn a_policy_chooses_between_float_and_int8_by_their_numbers() {
    let dir = tempdir();
    let (mut m, _) = write_export(dir.path(), &pkgfix::resnet(3));
    for g in m.graphs.iter_mut() {
        let p50 = if g.is_int8() { 0.5 } else { 1.0 };
        g.metrics = Metrics {
            sa: Some(0.8),
            ra_worst: Some(if g.is_int8() { 0.55 } else { 0.6 } * g.lambda),
            split: Some("val".into()),
            samples: Some(100),
            epsilon: Some(0.1),
            ..Metrics::default()
        };
        g.metrics.latency_ms.insert(
            "tract/b1".into(),
            LatencyStat {
                p50,
                p90: p50,
                p99: p50,
            },
        );
    }
    save(dir.path(), &m);
    let rt = open(dir.path(), Backend::Tract).expect("open");
    let pick = |min_ra: f64| {
        let policy = Policy {
            min_ra: Some(min_ra),
            objective: oats_runtime::Objective::MinLatency,
            ..Policy::default()
        };
        let i = Selector::Policy(policy)
            .resolve(rt.manifest())
            .expect("policy");
        rt.manifest().graphs[i].id.clone()
    };
    assert_eq!(pick(0.5), "l1-w1-int8");
    assert_eq!(pick(0.58), "l1-w1");
}

/// Rewrites the int8 graph `id` with `edit` applied, fixing its sha256 in the manifest (as a
/// careless tool would), and returns the reason the runtime refuses the export.
fn refused(edit: impl Fn(&mut Graph), declare: Option<Precision>) -> String {
    let dir = tempdir();
    let (mut m, int8) = write_export(dir.path(), &pkgfix::resnet(3));
    let (id, mut g) = int8[1].clone();
    edit(&mut g);
    let bytes = oats_graph::to_onnx(&g);
    write(dir.path(), &format!("{id}.onnx"), &bytes);
    let e = m.graphs.iter_mut().find(|e| e.id == id).expect("entry");
    e.sha256 = Some(sha256_hex(&bytes));
    e.params = g.params();
    if let Some(p) = declare {
        e.precision = p;
        if p == Precision::Float32 {
            e.quantization = None;
            // Its float twin would claim the same (λ, width, precision): out of the way.
            let twin = id.trim_end_matches("-int8").to_string();
            m.graphs.retain(|g| g.id != twin);
        }
    }
    save(dir.path(), &m);
    let mut reasons = Vec::new();
    for backend in backends() {
        match open(dir.path(), backend) {
            Ok(_) => panic!("{backend:?} accepted a bad int8 graph"),
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains(&id), "{backend:?}: {text}");
                reasons.push(text);
            }
        }
    }
    reasons.join("\n")
}

fn set_first_scale(g: &mut Graph, v: f32) {
    let name = g
        .nodes
        .iter()
        .find(|n| n.op == "QuantizeLinear")
        .map(|n| n.inputs[1].clone())
        .expect("a quantizer");
    let init = g
        .initializers
        .iter_mut()
        .find(|i| i.name == name)
        .expect("scale");
    init.data = Data::F32(vec![v]);
}

#[test]
fn c5_int8_graphs_with_bad_scales_are_refused() {
    let zero = refused(|g| set_first_scale(g, 0.0), None);
    assert!(zero.contains("finite and > 0"), "{zero}");
    let nan = refused(|g| set_first_scale(g, f32::NAN), None);
    assert!(
        nan.contains("NaN") && nan.contains("finite and > 0"),
        "{nan}"
    );
    let missing = refused(
        |g| {
            for n in g.nodes.iter_mut().filter(|n| n.op == "QuantizeLinear") {
                n.inputs.truncate(1);
            }
        },
        None,
    );
    assert!(missing.contains("inputs, expected 2 to 3"), "{missing}");
}

#[test]
fn c5_declared_precision_must_match_the_graph() {
    let said_float = refused(|_| {}, Some(Precision::Float32));
    assert!(
        said_float.contains("precision float32") && said_float.contains("int8"),
        "{said_float}"
    );
    // A float graph declared int8: the float twin's bytes under the int8 entry.
    let dir = tempdir();
    let (mut m, _) = write_export(dir.path(), &pkgfix::resnet(3));
    let float_bytes = std::fs::read(dir.path().join("l1-w1.onnx")).expect("read");
    write(dir.path(), "l1-w1-int8.onnx", &float_bytes);
    let e = m
        .graphs
        .iter_mut()
        .find(|e| e.id == "l1-w1-int8")
        .expect("entry");
    e.sha256 = Some(sha256_hex(&float_bytes));
    let float = m.graphs.iter().find(|e| e.id == "l1-w1").expect("float");
    let params = float.params;
    m.graphs
        .iter_mut()
        .find(|e| e.id == "l1-w1-int8")
        .expect("entry")
        .params = params;
    save(dir.path(), &m);
    let err = open(dir.path(), Backend::Tract)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("precision int8") && err.contains("float32 only"),
        "{err}"
    );
}

#[test]
fn c5_manifest_rules_for_int8_entries() {
    let dir = tempdir();
    let (m, _) = write_export(dir.path(), &pkgfix::resnet(3));
    let path = dir.path().join("manifest.yaml");
    let mut bad = m.clone();
    bad.graphs[1].quantization = None;
    let e = bad.save(&path).unwrap_err().to_string();
    assert!(e.contains("without `quantization`"), "{e}");
    let mut bad = m.clone();
    bad.graphs[0].quantization = m.graphs[1].quantization.clone();
    let e = bad.save(&path).unwrap_err().to_string();
    assert!(e.contains("quantization given for a float32 graph"), "{e}");
    let mut bad = m.clone();
    let dup = bad.graphs[1].clone();
    bad.graphs.push(GraphEntry {
        id: "another".into(),
        ..dup
    });
    let e = bad.save(&path).unwrap_err().to_string();
    assert!(e.contains("another int8 graph already has"), "{e}");
    let mut bad = m;
    if let Some(q) = bad.graphs[1].quantization.as_mut() {
        q.top1_agreement = f64::NAN;
    }
    let e = bad.save(&path).unwrap_err().to_string();
    assert!(e.contains("top1_agreement"), "{e}");
}

/// An int8 entry without a file is derived from the package with its ranges: the same
/// logits (the same bytes) as the int8 graph file, in every engine; without ranges the
/// manifest is refused.
#[test]
fn int8_configurations_derive_from_the_package() {
    let pkg = pkgfix::resnet(3);
    let (with_file, derived) = (tempdir(), tempdir());
    let (m, int8) = write_export(with_file.path(), &pkg);
    let pkg_bytes = pkg.to_bytes().expect("package");
    let x = pkgfix::images(N, 5);
    let mut md = m.clone();
    for dir in [with_file.path(), derived.path()] {
        write(dir, oats_graph::package::FILE_NAME, &pkg_bytes);
    }
    let package = oats_runtime::PackageEntry {
        file: oats_graph::package::FILE_NAME.into(),
        sha256: sha256_hex(&pkg_bytes),
        format: oats_graph::package::FORMAT.into(),
        lambdas: pkg.lambdas().to_vec(),
        widths: pkg.widths().to_vec(),
    };
    md.package = Some(package);
    for g in md.graphs.iter_mut() {
        let file = g.file.clone().expect("file");
        if g.is_int8() {
            // The ranges the int8 file was quantized with, as the exporter records them.
            let lowered = pkg.lower_folded(g.lambda, g.width).expect("lower");
            let list = quant::range_list(&lowered, &pkgfix::ranges(&lowered, &x, N)).expect("list");
            if let Some(q) = g.quantization.as_mut() {
                q.activation_ranges = list;
            }
            g.file = None;
            g.sha256 = None;
        } else {
            std::fs::copy(with_file.path().join(&file), derived.path().join(&file)).expect("copy");
        }
    }
    save(derived.path(), &md);
    let batch = Batch::new([N, 1, 8, 8], pkgfix::images(N, 9)).expect("batch");
    for backend in backends() {
        let a = open(with_file.path(), backend).expect("open file export");
        let b = open(derived.path(), backend).expect("open derived export");
        for (id, _) in &int8 {
            let fa = a.infer_with(id, &batch).expect("file");
            let fb = b.infer_with(id, &batch).expect("derived");
            assert_eq!(fa.logits, fb.logits, "{backend:?} {id}");
            assert!(fb.config.derived, "{id} should be derived");
        }
        assert!(b
            .derived_report()
            .iter()
            .all(|d| d.precision == Precision::Int8));
    }
    let mut bad = md.clone();
    if let Some(q) = bad.graphs[1].quantization.as_mut() {
        q.activation_ranges.clear();
    }
    let e = bad
        .save(derived.path().join("manifest.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("activation_ranges"), "{e}");
    let mut bad = md;
    if let Some(q) = bad.graphs[1].quantization.as_mut() {
        q.activation_ranges[0] = [1.0, f32::NAN];
    }
    let e = bad
        .save(derived.path().join("manifest.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("activation_ranges[0]"), "{e}");
}

/// The runtime asks ONNX Runtime for its exact U8U8 kernels exactly where the CPU has no VNNI
/// (runtime/src/engine/ort.rs, `u8s8_may_saturate`): checked against the kernel's own list of
/// CPU flags, a second source beside the standard library's detection.
#[cfg(all(feature = "ort", target_os = "linux", target_arch = "x86_64"))]
#[test]
fn exact_int8_kernels_are_asked_for_where_the_cpu_has_no_vnni() {
    let info = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .expect("a flags line")
        .split_whitespace()
        .collect();
    let has = |f: &str| flags.contains(&f);
    let vnni = has("avx_vnni")
        || ["avx512_vnni", "avx512bw", "avx512dq", "avx512vl"]
            .iter()
            .all(|f| has(f));
    let kernels = oats_runtime::ort_int8_kernels();
    assert_eq!(
        kernels.starts_with("U8U8"),
        !vnni,
        "VNNI {vnni}, kernels {kernels:?}, flags {flags:?}"
    );
}
