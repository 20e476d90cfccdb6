//! Test fixtures: a tiny conv classifier written as ONNX with `tract_onnx::pb`, a plain-Rust
//! reference forward pass for it, and export directories (graphs + manifest.yaml).
#![allow(dead_code)]

// For the tests that need ONNX Runtime (ort.rs, pretrained.rs); the others include this
// module without using it.
#[allow(unused_imports)]
pub use oats_testkit::tool_missing;
use std::path::Path;

use oats_runtime::manifest::sha256_hex;
use oats_runtime::{
    GraphEntry, InputSpec, LatencyStat, Layout, Manifest, Metrics, OutputSpec, TrainingSummary,
    SCHEMA_VERSION,
};
use prost::Message;
use tract_onnx::pb;

pub const C: usize = 1;
pub const H: usize = 8;
pub const W: usize = 8;
pub const CLASSES: usize = 3;
const FILTERS: usize = 2;

/// Parameters of: Conv(2 filters 3×3, pad 1, bias) → Relu → GlobalAveragePool → Flatten →
/// Gemm(→ 3 classes).
#[derive(Debug, Clone)]
pub struct TinyWeights {
    pub conv_w: Vec<f32>, // [2, 1, 3, 3]
    pub conv_b: Vec<f32>, // [2]
    pub fc_w: Vec<f32>,   // [3, 2]
    pub fc_b: Vec<f32>,   // [3]
}

/// Deterministic values in [-1, 1) from a seed (xorshift).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

impl TinyWeights {
    pub fn new(seed: u64) -> TinyWeights {
        let v = values(seed, 18 + 2 + 6 + 3);
        TinyWeights {
            conv_w: v[0..18].to_vec(),
            conv_b: v[18..20].to_vec(),
            fc_w: v[20..26].iter().map(|x| x * 4.0).collect(),
            fc_b: v[26..29].to_vec(),
        }
    }

    /// Different weights for every (λ, width).
    pub fn for_config(lambda: f64, width: f64) -> TinyWeights {
        TinyWeights::new(
            ((lambda * 1000.0) as u64) * 7919 + ((width * 1000.0) as u64) * 104_729 + 1,
        )
    }

    /// Reference forward pass: `x` is `[n, 1, 8, 8]`, result `[n, 3]`.
    pub fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n * CLASSES);
        for b in 0..n {
            let img = &x[b * H * W..(b + 1) * H * W];
            let mut pooled = [0.0f32; FILTERS];
            for (f, p) in pooled.iter_mut().enumerate() {
                let mut sum = 0.0;
                for y in 0..H as isize {
                    for xx in 0..W as isize {
                        let mut acc = self.conv_b[f];
                        for ky in 0..3isize {
                            for kx in 0..3isize {
                                let (iy, ix) = (y + ky - 1, xx + kx - 1);
                                if (0..H as isize).contains(&iy) && (0..W as isize).contains(&ix) {
                                    acc += self.conv_w[f * 9 + (ky * 3 + kx) as usize]
                                        * img[iy as usize * W + ix as usize];
                                }
                            }
                        }
                        sum += acc.max(0.0);
                    }
                }
                *p = sum / (H * W) as f32;
            }
            for k in 0..CLASSES {
                out.push(
                    self.fc_b[k]
                        + (0..FILTERS)
                            .map(|f| self.fc_w[k * FILTERS + f] * pooled[f])
                            .sum::<f32>(),
                );
            }
        }
        out
    }
}

fn tensor(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

enum Dim {
    Param(&'static str),
    Value(i64),
}

fn value_info(
    name: &str,
    elem_type: pb::tensor_proto::DataType,
    dims: &[Dim],
) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem_type as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Dim::Param(p) => Value::DimParam(p.to_string()),
                                Dim::Value(v) => Value::DimValue(*v),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The tiny classifier as ONNX bytes (opset 13, IR 8). With `lambda_table` (rows of 3) the
/// graph gets an int64 input `lambda_index` [1] and adds `table[lambda_index]` to the logits,
/// like a shared_weights export.
pub fn tiny_model(w: &TinyWeights, lambda_table: Option<&[[f32; 3]]>) -> Vec<u8> {
    use pb::tensor_proto::DataType;
    let gemm_out = if lambda_table.is_some() {
        "gemm"
    } else {
        "logits"
    };
    let mut nodes = vec![
        node(
            "Conv",
            &["image", "conv_w", "conv_b"],
            "conv",
            vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])],
        ),
        node("Relu", &["conv"], "relu", vec![]),
        node("GlobalAveragePool", &["relu"], "gap", vec![]),
        node("Flatten", &["gap"], "flat", vec![int("axis", 1)]),
        node(
            "Gemm",
            &["flat", "fc_w", "fc_b"],
            gemm_out,
            vec![int("transB", 1)],
        ),
    ];
    let mut initializer = vec![
        tensor("conv_w", &[2, 1, 3, 3], &w.conv_w),
        tensor("conv_b", &[2], &w.conv_b),
        tensor("fc_w", &[3, 2], &w.fc_w),
        tensor("fc_b", &[3], &w.fc_b),
    ];
    let n = Dim::Param("N");
    let mut input = vec![value_info(
        "image",
        DataType::Float,
        &[n, Dim::Value(1), Dim::Value(8), Dim::Value(8)],
    )];
    if let Some(table) = lambda_table {
        let flat: Vec<f32> = table.iter().flatten().copied().collect();
        initializer.push(tensor("lambda_table", &[table.len() as i64, 3], &flat));
        nodes.push(node(
            "Gather",
            &["lambda_table", "lambda_index"],
            "offset",
            vec![int("axis", 0)],
        ));
        nodes.push(node("Add", &["gemm", "offset"], "logits", vec![]));
        input.push(value_info(
            "lambda_index",
            DataType::Int64,
            &[Dim::Value(1)],
        ));
    }
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "oats-runtime-tests".into(),
        graph: Some(pb::GraphProto {
            name: "tiny".into(),
            node: nodes,
            initializer,
            input,
            output: vec![value_info(
                "logits",
                DataType::Float,
                &[Dim::Param("N"), Dim::Value(3)],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// Multiply-accumulates of the tiny classifier per image, as the exporter counts them:
/// the 3×3 conv (8·8 outputs × 2 filters × 1 channel × 9) and the Gemm (3 × 2).
pub const TINY_MACS: u64 = 8 * 8 * 2 * 9 + 3 * 2;

/// Values in the tiny classifier's initializers (conv 18 + 2, fc 6 + 3), plus the λ table
/// (3 per λ) when it has one: what the manifest's `params` must say.
pub fn tiny_params(with_lambda_table: bool) -> u64 {
    29 + if with_lambda_table {
        3 * LAMBDAS.len() as u64
    } else {
        0
    }
}

pub const LAMBDAS: [f64; 3] = [0.0, 0.5, 1.0];
pub const WIDTHS: [f64; 2] = [0.5, 1.0];

/// Per-λ offsets added by shared_weights graphs.
pub fn lambda_table() -> Vec<[f32; 3]> {
    LAMBDAS
        .iter()
        .enumerate()
        .map(|(i, _)| [i as f32 * 0.25, -(i as f32) * 0.5, 0.1 * i as f32])
        .collect()
}

pub fn graph_id(lambda: f64, width: f64) -> String {
    format!("l{lambda}-w{width}")
}

/// Calibrated-looking metrics: robustness grows with λ, accuracy and cost with width.
fn metrics(lambda: f64, width: f64) -> Metrics {
    let mut m = Metrics {
        sa: Some(0.9 - 0.1 * lambda + 0.05 * width),
        ra_worst: Some(0.1 + 0.4 * lambda + 0.05 * width),
        split: Some("test".into()),
        samples: Some(1000),
        epsilon: Some(0.1),
        ..Metrics::default()
    };
    m.ra.insert("pgd20".into(), m.ra_worst.unwrap_or(0.0));
    let p50 = 1.0 + 2.0 * width;
    m.latency_ms.insert(
        "tract/b1".into(),
        LatencyStat {
            p50,
            p90: p50 * 1.1,
            p99: p50 * 1.3,
        },
    );
    m
}

pub fn base_manifest(layout: Layout, graphs: Vec<GraphEntry>) -> Manifest {
    Manifest {
        schema_version: SCHEMA_VERSION,
        model_id: "tiny-test".into(),
        source_checkpoint_sha256: "ab".repeat(32),
        training: TrainingSummary {
            mode: "oats".into(),
            arch: "tiny-conv".into(),
            dataset: "synthetic".into(),
            epsilon: 0.1,
            attack: "pgd".into(),
            lambdas: LAMBDAS.to_vec(),
            widths: WIDTHS.to_vec(),
            epochs: 1,
        },
        input: InputSpec {
            name: "image".into(),
            shape: [C, H, W],
            value_range: [0.0, 1.0],
        },
        output: OutputSpec {
            name: "logits".into(),
            classes: CLASSES,
        },
        class_names: vec!["cat".into(), "dog".into(), "bird".into()],
        layout,
        graphs,
        reference: None,
        package: None,
    }
}

/// Writes one graph per (λ, width) plus manifest.yaml into `dir`.
pub fn write_folded_export(dir: &Path) -> Manifest {
    let mut graphs = Vec::new();
    for &width in &WIDTHS {
        for &lambda in &LAMBDAS {
            let id = graph_id(lambda, width);
            let bytes = tiny_model(&TinyWeights::for_config(lambda, width), None);
            let file = format!("{id}.onnx");
            write(dir, &file, &bytes);
            graphs.push(entry(&id, lambda, width, &file, &bytes, None));
        }
    }
    let m = base_manifest(Layout::Folded, graphs);
    save(dir, &m);
    m
}

/// Writes one graph per width, shared by all λ through `lambda_index`.
pub fn write_shared_export(dir: &Path) -> Manifest {
    let table = lambda_table();
    let mut graphs = Vec::new();
    for &width in &WIDTHS {
        let bytes = tiny_model(&TinyWeights::for_config(0.0, width), Some(&table));
        let file = format!("w{width}.onnx");
        write(dir, &file, &bytes);
        for (k, &lambda) in LAMBDAS.iter().enumerate() {
            graphs.push(entry(
                &graph_id(lambda, width),
                lambda,
                width,
                &file,
                &bytes,
                Some(k as u32),
            ));
        }
    }
    let m = base_manifest(Layout::SharedWeights, graphs);
    save(dir, &m);
    m
}

fn entry(
    id: &str,
    lambda: f64,
    width: f64,
    file: &str,
    bytes: &[u8],
    lambda_index: Option<u32>,
) -> GraphEntry {
    GraphEntry {
        id: id.into(),
        lambda,
        width,
        file: Some(file.into()),
        sha256: Some(sha256_hex(bytes)),
        lambda_index,
        params: tiny_params(lambda_index.is_some()),
        macs: TINY_MACS,
        opset: 13,
        precision: oats_runtime::Precision::Float32,
        quantization: None,
        metrics: metrics(lambda, width),
        exits: None,
    }
}

/// Expected logits of a manifest entry, computed without any ONNX runtime.
pub fn expected(m: &Manifest, g: &GraphEntry, x: &[f32], n: usize) -> Vec<f32> {
    match m.layout {
        Layout::Folded => TinyWeights::for_config(g.lambda, g.width).forward(x, n),
        Layout::SharedWeights => {
            let base = TinyWeights::for_config(0.0, g.width).forward(x, n);
            let row = lambda_table()[g.lambda_index.unwrap_or(0) as usize];
            base.iter()
                .enumerate()
                .map(|(i, v)| v + row[i % CLASSES])
                .collect()
        }
    }
}

/// `n` deterministic images in [0, 1].
pub fn images(n: usize, seed: u64) -> Vec<f32> {
    values(seed, n * C * H * W)
        .into_iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect()
}

pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}: index {i}: got {g}, want {w}");
    }
}

/// Largest |a − b| over two equally long slices of logits.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "logits of different lengths");
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

pub fn write(dir: &Path, file: &str, bytes: &[u8]) {
    std::fs::write(dir.join(file), bytes).unwrap_or_else(|e| panic!("write {file}: {e}"));
}

pub fn save(dir: &Path, m: &Manifest) {
    m.save(dir.join("manifest.yaml"))
        .unwrap_or_else(|e| panic!("save manifest: {e}"));
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

/// The file of graph `g`: every graph of these fixtures has one (a configuration derived from
/// the package has none, and a test that meets one here is wrong).
pub fn file_of(g: &GraphEntry) -> &str {
    g.file
        .as_deref()
        .unwrap_or_else(|| panic!("graph {} has no file", g.id))
}

/// Every file of the export directory `dir`, by name, as an app hands them to
/// `OatsModel::open_from_memory`.
pub fn export_files(dir: &Path) -> oats_runtime::ExportFiles {
    let mut files = oats_runtime::ExportFiles::new();
    for e in std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
    {
        let bytes = std::fs::read(e.path()).unwrap_or_else(|e| panic!("{e}"));
        files.insert(e.file_name().to_string_lossy().into_owned(), bytes);
    }
    files
}
