//! The only module that touches ONNX protobuf types (`tract_onnx::pb`, prost-generated, so
//! no `protoc` is needed): turns a [`Graph`] into the bytes of an ONNX model.
use prost::Message;
use tract_onnx::pb;

use crate::graph::{Attr, Data, Graph, ValueInfo};

pub const OPSET: u32 = 13;
const IR_VERSION: i64 = 8;
const FLOAT: i32 = 1;
const INT64: i32 = 7;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;

fn attr(name: &str, a: &Attr) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as T;
    let mut p = pb::AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match a {
        Attr::Int(i) => {
            p.r#type = T::Int as i32;
            p.i = *i;
        }
        Attr::Ints(v) => {
            p.r#type = T::Ints as i32;
            p.ints = v.clone();
        }
        Attr::Float(f) => {
            p.r#type = T::Float as i32;
            p.f = *f;
        }
    }
    p
}

fn value_info(v: &ValueInfo) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = v
        .dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => Value::DimValue(*n),
                None => Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: v.name.clone(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: if v.int64 { INT64 } else { FLOAT },
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Serialises `g` as an ONNX model (IR 8, opset 13) with `doc` as its doc string; tensors
/// as little-endian raw data.
pub fn encode(g: &Graph, doc: &str) -> Vec<u8> {
    let node = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| pb::NodeProto {
            input: n.inputs.clone(),
            output: n.outputs.clone(),
            name: format!("{}_{i}", n.op),
            op_type: n.op.to_string(),
            attribute: n.attrs.iter().map(|(k, a)| attr(k, a)).collect(),
            ..Default::default()
        })
        .collect();
    let initializer = g
        .initializers
        .iter()
        .map(|t| {
            let (data_type, raw_data) = match &t.data {
                Data::F32(v) => (FLOAT, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::I64(v) => (INT64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::I8(v) => (INT8, v.iter().map(|&x| x as u8).collect()),
                Data::U8(v) => (UINT8, v.clone()),
                Data::I32(v) => (INT32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            pb::TensorProto {
                dims: t.dims.clone(),
                data_type,
                name: t.name.clone(),
                raw_data,
                ..Default::default()
            }
        })
        .collect();
    let graph = pb::GraphProto {
        node,
        name: g.name.clone(),
        initializer,
        input: g.inputs.iter().map(value_info).collect(),
        output: g.outputs.iter().map(value_info).collect(),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET as i64,
        }],
        producer_name: "oats".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.to_string(),
        graph: Some(graph),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// Operators [`decode`] reads: what the lowering and [`crate::quant`] write.
const KNOWN_OPS: &[&str] = &[
    "Add",
    "Conv",
    "DequantizeLinear",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "Mul",
    "QuantizeLinear",
    "Relu",
    "Reshape",
];

/// The [`Graph`] of ONNX bytes that oats wrote ([`encode`]): raw little-endian initializers,
/// the operators and attributes oats writes. Anything else is an error, not a guess: this
/// reads graphs back for the training framework (the calibrator attacks an int8 file as the
/// device runs it), after the runtime has accepted the same bytes.
pub fn decode(bytes: &[u8]) -> crate::Result<Graph> {
    use crate::error::Error;
    let bad = |why: String| Error::Request(format!("ONNX graph: {why}"));
    let model = pb::ModelProto::decode(bytes).map_err(|e| bad(e.to_string()))?;
    let g = model.graph.ok_or_else(|| bad("no graph".into()))?;
    let mut out = Graph::new(&g.name);
    let dims_of = |v: &pb::ValueInfoProto| -> (bool, Vec<Option<i64>>) {
        use pb::tensor_shape_proto::dimension::Value;
        match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => (
                t.elem_type == INT64,
                t.shape
                    .as_ref()
                    .map(|s| {
                        s.dim
                            .iter()
                            .map(|d| match d.value {
                                Some(Value::DimValue(n)) => Some(n),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            _ => (false, Vec::new()),
        }
    };
    for (list, vs) in [(&mut out.inputs, &g.input), (&mut out.outputs, &g.output)] {
        for v in vs {
            let (int64, dims) = dims_of(v);
            list.push(ValueInfo {
                name: v.name.clone(),
                int64,
                dims,
            });
        }
    }
    for t in &g.initializer {
        let raw = &t.raw_data;
        let data = match t.data_type {
            FLOAT => Data::F32(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            INT64 => Data::I64(
                raw.chunks_exact(8)
                    .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .collect(),
            ),
            INT32 => Data::I32(
                raw.chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            INT8 => Data::I8(raw.iter().map(|&b| b as i8).collect()),
            UINT8 => Data::U8(raw.clone()),
            other => return Err(bad(format!("initializer {:?} has type {other}", t.name))),
        };
        let expected: i64 = t.dims.iter().product();
        if usize::try_from(expected).ok() != Some(data.len()) {
            return Err(bad(format!(
                "initializer {:?} holds {} values for dims {:?} (oats writes raw data)",
                t.name,
                data.len(),
                t.dims
            )));
        }
        out.initializers.push(crate::graph::Initializer {
            name: t.name.clone(),
            dims: t.dims.clone(),
            data,
        });
    }
    for n in &g.node {
        let op = KNOWN_OPS
            .iter()
            .find(|&&k| k == n.op_type)
            .ok_or_else(|| bad(format!("operator {:?} is not one oats writes", n.op_type)))?;
        let mut attrs = Vec::new();
        for a in &n.attribute {
            let name = [
                "axis",
                "kernel_shape",
                "strides",
                "pads",
                "transB",
                "transA",
            ]
            .into_iter()
            .find(|k| *k == a.name)
            .ok_or_else(|| bad(format!("attribute {:?} is not one oats writes", a.name)))?;
            use pb::attribute_proto::AttributeType as T;
            let v = match a.r#type {
                t if t == T::Int as i32 => Attr::Int(a.i),
                t if t == T::Ints as i32 => Attr::Ints(a.ints.clone()),
                t if t == T::Float as i32 => Attr::Float(a.f),
                t => return Err(bad(format!("attribute {:?} has type {t}", a.name))),
            };
            attrs.push((name, v));
        }
        out.nodes.push(crate::graph::Node {
            op,
            inputs: n.input.clone(),
            outputs: n.output.clone(),
            attrs,
        });
    }
    Ok(out)
}
