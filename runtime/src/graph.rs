//! What the runtime reads from an ONNX graph itself, before any engine sees it.
//!
//! The file is decoded once (`decode`) and `inspect`ed; only then does tract or ONNX
//! Runtime get it. Everything refused here is refused the same way on both backends:
//!
//! - data outside the file (ONNX external data): the manifest's sha256 covers the graph file
//!   only, and both libraries would read the named file (tract from the export directory,
//!   ONNX Runtime from the working directory);
//! - a tensor whose declared dimensions do not match the data it stores (an engine would
//!   allocate the declared size before noticing);
//! - inputs and outputs that disagree with the manifest: the image input must be declared
//!   `[batch, C, H, W]` with the manifest's C, H and W, the output `[batch, classes]` with its
//!   `classes`. The manifest's shapes are checked against the graph, never imposed on it;
//! - any operator, attribute, type or shape outside what the runtime follows node by node
//!   (graph/shapes.rs: the exporter's operators, each checked against its specification,
//!   every tensor's size bounded), and anything else an engine would read but nothing here
//!   checks (value_info hints, functions, training info, sparse initializers);
//!
//! and the facts the manifest's per-graph claims are checked against
//! (`GraphFacts::check_entry`): the opset, the parameter count, the MACs, and the number of
//! rows of the λ tables `lambda_index` selects from (an index past the end made tract panic
//! inside Gather).

mod shapes;

use prost::Message;
use tract_onnx::pb;

use crate::manifest::{GraphEntry, InputSpec, OutputSpec, LAMBDA_INDEX_INPUT};
pub use shapes::{MAX_TENSOR_ELEMENTS, OPERATORS};

/// ONNX IR versions accepted (the exporter writes 8): those both engines read the same way.
const IR_VERSIONS: std::ops::RangeInclusive<i64> = 7..=10;

/// Default-domain opsets accepted (the exporter writes 13): no operator in [`OPERATORS`]
/// changes meaning between them.
const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// Largest graph file read, in bytes: a protobuf message cannot exceed 2 GiB, so no valid
/// single-file ONNX graph is larger (and external data is refused). The memory is reserved
/// fallibly, so a device without it gets an error, not an abort.
pub const MAX_GRAPH_BYTES: u64 = (2 << 30) - 1;

/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL_DATA: i32 = 1;

/// `TensorProto.DataType` codes used here.
mod dtype {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const UINT16: i32 = 4;
    pub const INT16: i32 = 5;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const STRING: i32 = 8;
    pub const BOOL: i32 = 9;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const UINT32: i32 = 12;
    pub const UINT64: i32 = 13;
    pub const COMPLEX64: i32 = 14;
    pub const COMPLEX128: i32 = 15;
    pub const BFLOAT16: i32 = 16;
}

/// What [`inspect`] learnt from a graph file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GraphFacts {
    /// The image input's batch dimension as declared: `None` when symbolic (dynamic batch).
    pub batch: Option<usize>,
    /// Version of the default ONNX operator set.
    pub opset: i64,
    /// Values stored in the graph's initializers (what the exporter reports as `params`).
    pub params: u64,
    /// Multiply-accumulates of one image in convolutions and Gemm (what the exporter reports
    /// as `macs`).
    pub macs: u64,
    /// Values per image of the largest tensor the graph computes: the batch is bounded by it.
    pub largest: u64,
    /// Layout `shared_weights`: rows of the smallest λ table `lambda_index` gathers from.
    pub lambda_rows: Option<u64>,
    /// The graph quantizes (holds QuantizeLinear nodes): what `precision: int8` declares.
    pub int8: bool,
}

/// What the manifest says the graph file must be.
pub(crate) struct Expected<'a> {
    pub input: &'a InputSpec,
    pub output: &'a OutputSpec,
    /// Layout `shared_weights`: the graph takes `lambda_index`.
    pub shared: bool,
}

/// Decodes ONNX protobuf (prost bounds nesting depth; lengths are bounded by the input).
pub(crate) fn decode(bytes: &[u8]) -> Result<pb::ModelProto, prost::DecodeError> {
    pb::ModelProto::decode(bytes)
}

/// Checks a decoded graph against what the manifest says it is (see the module docs). The
/// error is the reason, for [`crate::RuntimeError::GraphRefused`].
pub(crate) fn inspect(
    model: &pb::ModelProto,
    expected: &Expected<'_>,
) -> Result<GraphFacts, String> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| "the file holds no graph".to_string())?;
    if !IR_VERSIONS.contains(&model.ir_version) {
        return Err(format!(
            "ONNX IR version {} is outside the supported {IR_VERSIONS:?}",
            model.ir_version
        ));
    }
    let opset = model
        .opset_import
        .iter()
        .find(|o| is_default_domain(&o.domain))
        .map(|o| o.version)
        .filter(|v| OPSETS.contains(v))
        .ok_or_else(|| format!("the graph must import a default opset in {OPSETS:?}"))?;
    for (what, present) in [
        ("model-local functions", !model.functions.is_empty()),
        ("training information", !model.training_info.is_empty()),
        ("value_info shape hints", !g.value_info.is_empty()),
        ("sparse initializers", !g.sparse_initializer.is_empty()),
        (
            "quantization annotations",
            !g.quantization_annotation.is_empty(),
        ),
    ] {
        if present {
            return Err(format!(
                "the graph holds {what}, which the engines would read and these checks do not"
            ));
        }
    }
    let mut params: u64 = 0;
    for t in &g.initializer {
        params = params
            .checked_add(check_tensor(t)?)
            .ok_or_else(|| "the initializers hold more than 2^64 values".to_string())?;
    }
    for n in &g.node {
        check_node_tensors(n)?;
    }

    let batch = check_inputs(g, expected)?;
    check_output(g, expected.output)?;
    let lambda_rows = if expected.shared {
        Some(lambda_rows(g)?)
    } else {
        None
    };
    let walked = shapes::walk(
        g,
        &shapes::Interface {
            image: &expected.input.name,
            chw: expected.input.shape,
            shared: expected.shared,
            output: &expected.output.name,
            classes: expected.output.classes,
        },
    )?;
    if let Some(b) = batch {
        let limit = crate::input::MAX_BATCH_ELEMENTS as u64;
        if (b as u64)
            .checked_mul(walked.largest)
            .is_none_or(|v| v > limit)
        {
            return Err(format!(
                "the graph's fixed batch of {b} images would need more than {limit} values in \
                 its largest tensor ({} per image)",
                walked.largest
            ));
        }
    }
    Ok(GraphFacts {
        batch,
        opset,
        params,
        macs: walked.macs,
        largest: walked.largest,
        lambda_rows,
        int8: g.node.iter().any(|n| n.op_type == "QuantizeLinear"),
    })
}

impl GraphFacts {
    /// Checks the claims of one manifest graph that uses this file; the error is the reason.
    pub(crate) fn check_entry(&self, g: &GraphEntry) -> Result<(), String> {
        let id = &g.id;
        if self.opset != i64::from(g.opset) {
            return Err(format!(
                "graph {id:?}: the manifest says opset {}, the file imports opset {}",
                g.opset, self.opset
            ));
        }
        if self.params != g.params {
            return Err(format!(
                "graph {id:?}: the manifest says {} params, the file's initializers hold {}",
                g.params, self.params
            ));
        }
        if self.int8 != g.is_int8() {
            let holds = if self.int8 {
                "int8 (QuantizeLinear nodes)"
            } else {
                "float32 only"
            };
            return Err(format!(
                "graph {id:?}: the manifest declares precision {}, the file is {holds}",
                g.precision
            ));
        }
        if self.macs != g.macs {
            return Err(format!(
                "graph {id:?}: the manifest says {} MACs, the file computes {} per image",
                g.macs, self.macs
            ));
        }
        match (g.lambda_index, self.lambda_rows) {
            (Some(k), Some(rows)) if u64::from(k) >= rows => Err(format!(
                "graph {id:?}: lambda_index {k} is past the end of the file's λ table of {rows} \
                 rows (valid: 0..={})",
                rows.saturating_sub(1)
            )),
            _ => Ok(()),
        }
    }
}

fn is_default_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

/// Element count of a tensor, refusing external data and a declared shape that the stored
/// data does not fill.
fn check_tensor(t: &pb::TensorProto) -> Result<u64, String> {
    if t.data_location == Some(EXTERNAL_DATA) || !t.external_data.is_empty() {
        return Err(format!(
            "tensor {:?} keeps its data in an external file, which the manifest's sha256 does \
             not cover (store the data inside the graph file)",
            t.name
        ));
    }
    let declared = element_count(&t.dims)
        .ok_or_else(|| format!("tensor {:?} has invalid dimensions {:?}", t.name, t.dims))?;
    if let Some(stored) = stored_elements(t) {
        if stored != Some(declared) {
            return Err(format!(
                "tensor {:?} declares dimensions {:?} ({declared} values) but stores {}",
                t.name,
                t.dims,
                match stored {
                    Some(n) => format!("{n} values"),
                    None => format!("{} bytes, not a whole number of values", t.raw_data.len()),
                }
            ));
        }
    }
    Ok(declared)
}

/// Product of non-negative dimensions, `None` on a negative one or overflow.
fn element_count(dims: &[i64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, &d| {
        u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// Values stored: `None` (outer) when the type's storage is not known here, `Some(None)` when
/// `raw_data` is not a whole number of values.
fn stored_elements(t: &pb::TensorProto) -> Option<Option<u64>> {
    use dtype::*;
    if !t.raw_data.is_empty() {
        let size: u64 = match t.data_type {
            UINT8 | INT8 | BOOL => 1,
            UINT16 | INT16 | FLOAT16 | BFLOAT16 => 2,
            FLOAT | INT32 | UINT32 => 4,
            INT64 | DOUBLE | UINT64 | COMPLEX64 => 8,
            COMPLEX128 => 16,
            _ => return None,
        };
        let bytes = t.raw_data.len() as u64;
        return Some(bytes.is_multiple_of(size).then_some(bytes / size));
    }
    let n = match t.data_type {
        FLOAT => t.float_data.len(),
        COMPLEX64 => t.float_data.len() / 2,
        INT32 | INT16 | INT8 | UINT16 | UINT8 | BOOL | FLOAT16 | BFLOAT16 => t.int32_data.len(),
        INT64 => t.int64_data.len(),
        DOUBLE => t.double_data.len(),
        COMPLEX128 => t.double_data.len() / 2,
        UINT32 | UINT64 => t.uint64_data.len(),
        STRING => t.string_data.len(),
        _ => return None,
    };
    Some(Some(n as u64))
}

/// The tensors in a node's attributes (Constant values). Graph-valued attributes are
/// refused with their operator (no operator in [`OPERATORS`] has one).
fn check_node_tensors(n: &pb::NodeProto) -> Result<(), String> {
    for a in &n.attribute {
        for t in a.t.iter().chain(&a.tensors) {
            check_tensor(t)?;
        }
        for s in a.sparse_tensor.iter().chain(&a.sparse_tensors) {
            for t in s.values.iter().chain(&s.indices) {
                check_tensor(t)?;
            }
        }
    }
    Ok(())
}

/// A declared dimension.
#[derive(Debug, Clone, PartialEq)]
enum Dim {
    Value(i64),
    Param(String),
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Value(v) => write!(f, "{v}"),
            Dim::Param(p) => write!(f, "{p}"),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

fn show(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Element type and declared shape (`None`: no shape declared) of a tensor value.
fn declared(v: &pb::ValueInfoProto) -> Option<(i32, Option<Vec<Dim>>)> {
    let pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    let dims = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Dim::Value(*v),
                Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => {
                    Dim::Param(p.clone())
                }
                None => Dim::Unknown,
            })
            .collect()
    });
    Some((t.elem_type, dims))
}

/// The graph's inputs are exactly the manifest's image input (and `lambda_index` under
/// shared_weights), with the manifest's types and shapes. Returns the declared batch size
/// (`None` when dynamic).
fn check_inputs(g: &pb::GraphProto, expected: &Expected<'_>) -> Result<Option<usize>, String> {
    let initializers: std::collections::HashSet<&str> =
        g.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = g
        .input
        .iter()
        .filter(|v| !initializers.contains(v.name.as_str()))
        .collect();
    let mut names: Vec<&str> = inputs.iter().map(|v| v.name.as_str()).collect();
    let mut wanted = vec![expected.input.name.as_str()];
    if expected.shared {
        wanted.push(LAMBDA_INDEX_INPUT);
    }
    names.sort_unstable();
    wanted.sort_unstable();
    if names != wanted {
        return Err(format!(
            "the graph's inputs are {names:?}; the manifest (input.name, layout) needs {wanted:?}"
        ));
    }
    let mut batch = None;
    for v in inputs {
        let (elem, dims) =
            declared(v).ok_or_else(|| format!("input {:?} is not declared as a tensor", v.name))?;
        if v.name == LAMBDA_INDEX_INPUT && expected.shared {
            if elem != dtype::INT64 {
                return Err(format!(
                    "input {LAMBDA_INDEX_INPUT:?} has element type {elem}, expected int64 (7)"
                ));
            }
            if let Some(d) = dims {
                if !matches!(d.as_slice(), [Dim::Value(1) | Dim::Param(_) | Dim::Unknown]) {
                    return Err(format!(
                        "input {LAMBDA_INDEX_INPUT:?} is declared {}, expected [1]",
                        show(&d)
                    ));
                }
            }
            continue;
        }
        if elem != dtype::FLOAT {
            return Err(format!(
                "input {:?} has element type {elem}, expected float (1)",
                v.name
            ));
        }
        let [c, h, w] = expected.input.shape;
        let want = |d: usize| Dim::Value(i64::try_from(d).unwrap_or(i64::MAX));
        let mismatch = |d: &[Dim]| {
            format!(
                "the manifest's input.shape is [{c}, {h}, {w}] but the graph declares input {:?} \
                 as {} (expected [batch, {c}, {h}, {w}])",
                v.name,
                show(d)
            )
        };
        let dims = dims.ok_or_else(|| {
            format!(
                "input {:?} declares no shape, so the manifest's input.shape cannot be checked",
                v.name
            )
        })?;
        match dims.as_slice() {
            [n, dc, dh, dw] if [dc, dh, dw] == [&want(c), &want(h), &want(w)] => {
                batch = match n {
                    Dim::Value(b) => Some(
                        usize::try_from(*b)
                            .ok()
                            .filter(|&b| b >= 1)
                            .ok_or_else(|| mismatch(&dims))?,
                    ),
                    Dim::Param(_) | Dim::Unknown => None,
                };
            }
            _ => return Err(mismatch(&dims)),
        }
    }
    Ok(batch)
}

/// The manifest's output exists, is float and is declared `[batch, classes]`.
fn check_output(g: &pb::GraphProto, output: &OutputSpec) -> Result<(), String> {
    let v = g
        .output
        .iter()
        .find(|v| v.name == output.name)
        .ok_or_else(|| {
            let names: Vec<&str> = g.output.iter().map(|v| v.name.as_str()).collect();
            format!(
                "the graph has no output {:?} (output.name); its outputs are {names:?}",
                output.name
            )
        })?;
    let (elem, dims) =
        declared(v).ok_or_else(|| format!("output {:?} is not declared as a tensor", v.name))?;
    if elem != dtype::FLOAT {
        return Err(format!(
            "output {:?} has element type {elem}, expected float (1)",
            v.name
        ));
    }
    let dims = dims.ok_or_else(|| {
        format!(
            "output {:?} declares no shape, so the manifest's output.classes cannot be checked",
            v.name
        )
    })?;
    let classes = Dim::Value(i64::try_from(output.classes).unwrap_or(i64::MAX));
    match dims.as_slice() {
        [_, k] if *k == classes => Ok(()),
        _ => Err(format!(
            "the manifest's output.classes is {} but the graph declares output {:?} as {} \
             (expected [batch, {}])",
            output.classes,
            v.name,
            show(&dims),
            output.classes
        )),
    }
}

/// The dimensions of a constant: an initializer or the `value` of a Constant node.
fn constant<'a>(g: &'a pb::GraphProto, name: &str) -> Option<&'a pb::TensorProto> {
    g.initializer.iter().find(|t| t.name == name).or_else(|| {
        g.node
            .iter()
            .filter(|n| n.op_type == "Constant" && is_default_domain(&n.domain))
            .find(|n| n.output.first().is_some_and(|o| o == name))
            .and_then(|n| n.attribute.iter().find(|a| a.name == "value"))
            .and_then(|a| a.t.as_ref())
    })
}

fn int_attr(n: &pb::NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// Rows of the smallest λ table: every reader of `lambda_index` must be a Gather of a
/// constant table, so that the index can be bounded by the table's length on its axis.
fn lambda_rows(g: &pb::GraphProto) -> Result<u64, String> {
    let mut rows: Option<u64> = None;
    for n in g
        .node
        .iter()
        .filter(|n| n.input.iter().any(|i| i == LAMBDA_INDEX_INPUT))
    {
        let refuse = || {
            format!(
                "{LAMBDA_INDEX_INPUT} feeds node {:?} ({}); only the indices of a Gather from a \
                 constant λ table can be checked against the manifest's lambda_index",
                n.name, n.op_type
            )
        };
        let gather = n.op_type == "Gather" && is_default_domain(&n.domain);
        if !gather || n.input.len() != 2 || n.input[0] == LAMBDA_INDEX_INPUT {
            return Err(refuse());
        }
        let table = constant(g, &n.input[0]).ok_or_else(refuse)?;
        let rank = i64::try_from(table.dims.len()).unwrap_or(i64::MAX);
        let axis = int_attr(n, "axis").unwrap_or(0);
        let axis = if axis < 0 { axis + rank } else { axis };
        let len = usize::try_from(axis)
            .ok()
            .and_then(|a| table.dims.get(a))
            .and_then(|&d| u64::try_from(d).ok())
            .ok_or_else(|| {
                format!(
                    "Gather {:?}: axis {axis} is outside its table {:?} of dimensions {:?}",
                    n.name, table.name, table.dims
                )
            })?;
        rows = Some(rows.map_or(len, |r| r.min(len)));
    }
    rows.ok_or_else(|| {
        format!(
            "layout shared_weights, but the graph never reads {LAMBDA_INDEX_INPUT}: every λ would \
             give the same output"
        )
    })
}

/// Integer values of a small constant (Reshape targets, Gather indices).
/// The values of a float constant (raw little-endian or `float_data`).
fn f32_values(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != dtype::FLOAT {
        return None;
    }
    if t.raw_data.is_empty() {
        return Some(t.float_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(4) {
        return None;
    }
    Some(
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

fn i64_values(t: &pb::TensorProto) -> Option<Vec<i64>> {
    if t.data_type != dtype::INT64 {
        return None;
    }
    if t.raw_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(8) {
        return None;
    }
    Some(
        t.raw_data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect(),
    )
}
