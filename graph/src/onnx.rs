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
