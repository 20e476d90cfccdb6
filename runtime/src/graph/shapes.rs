//! The operators the runtime hands to an engine, and what each does to types and shapes.
//!
//! Every node of a graph is followed from the image input to the output before tract or
//! ONNX Runtime sees the graph. A node is accepted only if its operator is one of
//! [`OPERATORS`] (what the exporter writes), its attributes are the ones that operator
//! defines with values in their domain, and its inputs have the types and shapes it needs.
//! That is what makes the two backends accept and refuse the same graphs (they differ in
//! what they tolerate outside the specification: a `transB` of 2, an unknown attribute), and
//! what bounds the memory a graph can ask for: the size of every tensor is known per image
//! ([`MAX_TENSOR_ELEMENTS`]) and the batch is bounded against the largest one. It also gives
//! the multiply-accumulates the manifest claims, counted as the exporter counts them.
//!
//! The batch dimension is kept symbolic ([`Dim::Batch`]): a node that would mix it with
//! other dimensions (a Flatten from axis 0, a Reshape that moves it, a broadcast against a
//! constant of another length) is refused, since its result would depend on the batch size.

use std::collections::HashMap;

use tract_onnx::pb;

use super::{dtype, f32_values, i64_values, is_default_domain};
use crate::manifest::LAMBDA_INDEX_INPUT;

/// The operators accepted: those export/lower.rs writes, and Constant. A graph with any
/// other operator is refused before an engine sees it.
pub const OPERATORS: &[&str] = &[
    "Add",
    "Constant",
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

/// Largest tensor a node may produce, in values per image (256 MiB of f32): a wide ResNet's
/// largest activation on 224×224 inputs is under 2 % of it. With the batch bounded against
/// the graph's largest tensor ([`crate::input::MAX_BATCH_ELEMENTS`]), this bounds what any
/// accepted graph can make an engine allocate.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 26;

/// `AttributeProto.AttributeType` codes.
mod attr_type {
    pub const FLOAT: i32 = 1;
    pub const INT: i32 = 2;
    pub const STRING: i32 = 3;
    pub const TENSOR: i32 = 4;
    pub const INTS: i32 = 7;
}

/// A dimension: the batch (symbolic) or a known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dim {
    Batch,
    N(u64),
}

impl Dim {
    /// Length for one image: the batch counts as 1.
    fn per_image(self) -> u64 {
        match self {
            Dim::Batch => 1,
            Dim::N(n) => n,
        }
    }
}

fn show(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Batch => "batch".to_string(),
            Dim::N(n) => n.to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    F32,
    I64,
    /// int8 graphs: weights and signed zero points.
    I8,
    /// int8 graphs: activations.
    U8,
    /// int8 graphs: biases.
    I32,
}

#[derive(Debug, Clone, PartialEq)]
struct Value {
    elem: Elem,
    dims: Vec<Dim>,
}

/// What following the shapes established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shapes {
    /// Multiply-accumulates of one image (convolutions and Gemm).
    pub macs: u64,
    /// Values per image of the largest tensor any node produces (the input included).
    pub largest: u64,
}

/// The graph's interface as the manifest describes it.
pub(crate) struct Interface<'a> {
    pub image: &'a str,
    pub chw: [usize; 3],
    pub shared: bool,
    pub output: &'a str,
    pub classes: usize,
}

fn elem_of(data_type: i32) -> Option<Elem> {
    match data_type {
        dtype::FLOAT => Some(Elem::F32),
        dtype::INT64 => Some(Elem::I64),
        dtype::INT8 => Some(Elem::I8),
        dtype::UINT8 => Some(Elem::U8),
        dtype::INT32 => Some(Elem::I32),
        _ => None,
    }
}

/// Known lengths of a constant; zero-length dimensions (empty tensors) are refused, since
/// the engines treat them differently.
fn const_dims(t: &pb::TensorProto) -> Result<Vec<Dim>, String> {
    t.dims
        .iter()
        .map(|&d| {
            u64::try_from(d)
                .ok()
                .filter(|&d| d > 0)
                .map(Dim::N)
                .ok_or_else(|| format!("tensor {:?} has dimensions {:?}", t.name, t.dims))
        })
        .collect()
}

/// Follows every node (see the module docs). The error is the reason for refusing.
pub(crate) fn walk(g: &pb::GraphProto, io: &Interface<'_>) -> Result<Shapes, String> {
    let mut values: HashMap<&str, Value> = HashMap::new();
    let mut constants: HashMap<&str, &pb::TensorProto> = HashMap::new();
    let [c, h, w] = io.chw.map(|d| Dim::N(d as u64));
    values.insert(
        io.image,
        Value {
            elem: Elem::F32,
            dims: vec![Dim::Batch, c, h, w],
        },
    );
    if io.shared {
        values.insert(
            LAMBDA_INDEX_INPUT,
            Value {
                elem: Elem::I64,
                dims: vec![Dim::N(1)],
            },
        );
    }
    let mut largest = io.chw.iter().map(|&d| d as u64).product::<u64>();
    for t in &g.initializer {
        let elem = elem_of(t.data_type).ok_or_else(|| {
            format!(
                "initializer {:?} has element type {}; graphs hold float (1), int64 (7) and, \
                 in int8 graphs, int8 (3), uint8 (2) and int32 (6) constants only",
                t.name, t.data_type
            )
        })?;
        let v = Value {
            elem,
            dims: const_dims(t)?,
        };
        if values.insert(&t.name, v).is_some() {
            return Err(format!("the name {:?} is defined twice", t.name));
        }
        constants.insert(&t.name, t);
    }
    let mut macs: u64 = 0;
    for n in &g.node {
        let (out, node_macs) = node(n, &values, &constants)?;
        let fail = |why: String| format!("node {:?} ({}): {why}", n.name, n.op_type);
        let size = out
            .dims
            .iter()
            .try_fold(1u64, |a, d| a.checked_mul(d.per_image()))
            .filter(|&s| s <= MAX_TENSOR_ELEMENTS)
            .ok_or_else(|| {
                fail(format!(
                    "its output {} holds more than {MAX_TENSOR_ELEMENTS} values per image",
                    show(&out.dims)
                ))
            })?;
        largest = largest.max(size);
        macs = macs
            .checked_add(node_macs)
            .ok_or_else(|| fail("multiply-accumulates overflow".into()))?;
        let name = n.output[0].as_str();
        if n.op_type == "Constant" {
            if let Some(t) = n.attribute.first().and_then(|a| a.t.as_ref()) {
                constants.insert(name, t);
            }
        }
        if values.insert(name, out).is_some() {
            return Err(fail(format!("the name {name:?} is defined twice")));
        }
    }
    for o in &g.output {
        if !values.contains_key(o.name.as_str()) {
            return Err(format!("graph output {:?} is computed by no node", o.name));
        }
    }
    let want = Value {
        elem: Elem::F32,
        dims: vec![Dim::Batch, Dim::N(io.classes as u64)],
    };
    match values.get(io.output) {
        Some(v) if *v == want => Ok(Shapes { macs, largest }),
        Some(v) => Err(format!(
            "the graph computes output {:?} as {:?} {}, the manifest needs float [batch, {}]",
            io.output,
            v.elem,
            show(&v.dims),
            io.classes
        )),
        None => Err(format!("no node computes output {:?}", io.output)),
    }
}

/// The attributes an operator defines, with their types.
fn allowed_attributes(op: &str) -> &'static [(&'static str, i32)] {
    use attr_type::*;
    match op {
        "Conv" => &[
            ("auto_pad", STRING),
            ("dilations", INTS),
            ("group", INT),
            ("kernel_shape", INTS),
            ("pads", INTS),
            ("strides", INTS),
        ],
        "Gemm" => &[
            ("alpha", FLOAT),
            ("beta", FLOAT),
            ("transA", INT),
            ("transB", INT),
        ],
        "Flatten" | "Gather" | "QuantizeLinear" | "DequantizeLinear" => &[("axis", INT)],
        "Reshape" => &[("allowzero", INT)],
        "Constant" => &[("value", TENSOR)],
        _ => &[],
    }
}

/// One node: its output value and multiply-accumulates per image.
fn node(
    n: &pb::NodeProto,
    values: &HashMap<&str, Value>,
    constants: &HashMap<&str, &pb::TensorProto>,
) -> Result<(Value, u64), String> {
    let fail = |why: String| format!("node {:?} ({}): {why}", n.name, n.op_type);
    let op = n.op_type.as_str();
    if !is_default_domain(&n.domain) {
        return Err(fail(format!(
            "operator domain {:?} is not supported",
            n.domain
        )));
    }
    if !OPERATORS.contains(&op) {
        return Err(format!(
            "node {:?} uses operator {op:?}; oats-runtime checks and runs only {OPERATORS:?}",
            n.name
        ));
    }
    if n.output.len() != 1 || n.output[0].is_empty() {
        return Err(fail("it must have exactly one named output".into()));
    }
    let allowed = allowed_attributes(op);
    for (i, a) in n.attribute.iter().enumerate() {
        match allowed.iter().find(|(name, _)| *name == a.name) {
            None => return Err(fail(format!("attribute {:?} is not one of {op}'s", a.name))),
            Some((_, t)) if *t != a.r#type => {
                return Err(fail(format!(
                    "attribute {:?} has type {}, expected {t}",
                    a.name, a.r#type
                )))
            }
            _ => {}
        }
        if n.attribute[..i].iter().any(|b| b.name == a.name) {
            return Err(fail(format!("attribute {:?} is given twice", a.name)));
        }
    }
    let attr = |name: &str| find_attr(n, name);
    let int = |name: &str, default: i64| attr_int(n, name, default);

    let (min, max) = match op {
        "Constant" => (0, 0),
        "Relu" | "GlobalAveragePool" | "Flatten" => (1, 1),
        "Conv" | "Gemm" | "QuantizeLinear" | "DequantizeLinear" => (2, 3),
        _ => (2, 2),
    };
    if !(min..=max).contains(&n.input.len()) {
        return Err(fail(format!(
            "it has {} inputs, expected {min} to {max}",
            n.input.len()
        )));
    }
    let mut ins: Vec<&Value> = Vec::with_capacity(n.input.len());
    for name in &n.input {
        ins.push(values.get(name.as_str()).ok_or_else(|| {
            fail(format!(
                "it reads {name:?}, which no input, initializer or earlier node defines"
            ))
        })?);
    }
    let float = |i: usize| -> Result<&Value, String> {
        match ins.get(i) {
            Some(v) if v.elem == Elem::F32 => Ok(*v),
            Some(_) => Err(fail(format!("input {i} must be float"))),
            None => Err(fail(format!("input {i} is missing"))),
        }
    };
    let out = |elem: Elem, dims: Vec<Dim>| Value { elem, dims };

    Ok(match op {
        "Relu" => (float(0)?.clone(), 0),
        "Add" | "Mul" => {
            let (a, b) = (float(0)?, float(1)?);
            let dims = broadcast(&a.dims, &b.dims).ok_or_else(|| {
                fail(format!(
                    "{} and {} do not broadcast (for every batch size)",
                    show(&a.dims),
                    show(&b.dims)
                ))
            })?;
            (out(Elem::F32, dims), 0)
        }
        "GlobalAveragePool" => {
            let x = float(0)?;
            match x.dims.as_slice() {
                [b, c, Dim::N(_), Dim::N(_)] => {
                    (out(Elem::F32, vec![*b, *c, Dim::N(1), Dim::N(1)]), 0)
                }
                d => return Err(fail(format!("input {} is not [N, C, H, W]", show(d)))),
            }
        }
        "Flatten" => {
            let x = float(0)?;
            let rank = x.dims.len() as i64;
            let axis = int("axis", 1);
            let axis = if axis < 0 { axis + rank } else { axis };
            if !(0..=rank).contains(&axis) {
                return Err(fail(format!("axis {axis} is outside [-{rank}, {rank}]")));
            }
            let axis = axis as usize;
            let product = |d: &[Dim]| {
                d.iter()
                    .try_fold(1u64, |a, d| match d {
                        Dim::N(n) => a.checked_mul(*n),
                        Dim::Batch => None,
                    })
                    .map(Dim::N)
            };
            let batched = x.dims.contains(&Dim::Batch);
            let dims = match (batched, x.dims.first()) {
                (false, _) => vec![product(&x.dims[..axis]), product(&x.dims[axis..])],
                (true, Some(Dim::Batch)) if axis == 1 => {
                    vec![Some(Dim::Batch), product(&x.dims[1..])]
                }
                _ => {
                    return Err(fail(format!(
                        "flattening {} from axis {axis} would mix the batch with other \
                         dimensions",
                        show(&x.dims)
                    )))
                }
            };
            let dims: Option<Vec<Dim>> = dims.into_iter().collect();
            (
                out(
                    Elem::F32,
                    dims.ok_or_else(|| fail("dimensions overflow".into()))?,
                ),
                0,
            )
        }
        "Conv" => {
            for i in 0..ins.len() {
                float(i)?;
            }
            conv(n, &ins).map_err(fail)?
        }
        "Gemm" => {
            let (a, b) = (float(0)?, float(1)?);
            let trans = |name: &str| match int(name, 0) {
                0 => Ok(false),
                1 => Ok(true),
                v => Err(fail(format!("{name} is {v}; it must be 0 or 1"))),
            };
            let (ta, tb) = (trans("transA")?, trans("transB")?);
            for name in ["alpha", "beta"] {
                if let Some(a) = attr(name) {
                    if !a.f.is_finite() {
                        return Err(fail(format!("{name} is {}", a.f)));
                    }
                }
            }
            let (m, k) = match (a.dims.as_slice(), ta) {
                ([m, k], false) | ([k, m], true) => (*m, *k),
                (d, _) => return Err(fail(format!("A is {}, expected a matrix", show(d)))),
            };
            let (k2, cols) = match (b.dims.as_slice(), tb) {
                ([k, c], false) | ([c, k], true) => (*k, *c),
                (d, _) => return Err(fail(format!("B is {}, expected a matrix", show(d)))),
            };
            let (Dim::N(k), Dim::N(k2), Dim::N(cols)) = (k, k2, cols) else {
                return Err(fail("only the rows of A may be the batch".into()));
            };
            if k != k2 {
                return Err(fail(format!("inner dimensions {k} and {k2} differ")));
            }
            let result = vec![m, Dim::N(cols)];
            if n.input.len() == 3 {
                let bias = float(2)?;
                if broadcast(&bias.dims, &result).as_deref() != Some(result.as_slice()) {
                    return Err(fail(format!(
                        "C {} does not broadcast to {}",
                        show(&bias.dims),
                        show(&result)
                    )));
                }
            }
            let macs = m
                .per_image()
                .checked_mul(k)
                .and_then(|x| x.checked_mul(cols))
                .ok_or_else(|| fail("multiply-accumulates overflow".into()))?;
            (out(Elem::F32, result), macs)
        }
        "Gather" => {
            let data = float(0)?;
            let indices = ins[1];
            if indices.elem != Elem::I64 || indices.dims.contains(&Dim::Batch) {
                return Err(fail("indices must be int64 and not batched".into()));
            }
            if data.dims.contains(&Dim::Batch) {
                return Err(fail("gathering from batched data is not supported".into()));
            }
            let rank = data.dims.len() as i64;
            let axis = int("axis", 0);
            let axis = if axis < 0 { axis + rank } else { axis };
            if !(0..rank).contains(&axis) {
                return Err(fail(format!("axis {axis} is outside [-{rank}, {rank})")));
            }
            let axis = axis as usize;
            let len = data.dims[axis].per_image();
            let name = n.input[1].as_str();
            // lambda_index is bounded against every manifest graph (GraphFacts::check_entry).
            if name != LAMBDA_INDEX_INPUT {
                let idx = constants
                    .get(name)
                    .and_then(|t| i64_values(t))
                    .ok_or_else(|| fail("indices must be lambda_index or a constant".into()))?;
                let len_i = i64::try_from(len).unwrap_or(i64::MAX);
                if let Some(bad) = idx.iter().find(|&&i| i < -len_i || i >= len_i) {
                    return Err(fail(format!(
                        "index {bad} is outside the {len} entries on axis {axis}"
                    )));
                }
            }
            let dims = data.dims[..axis]
                .iter()
                .chain(&indices.dims)
                .chain(&data.dims[axis + 1..])
                .copied()
                .collect();
            (out(Elem::F32, dims), 0)
        }
        "Reshape" => {
            let x = float(0)?;
            if int("allowzero", 0) != 0 {
                return Err(fail("allowzero is not supported".into()));
            }
            let target = constants
                .get(n.input[1].as_str())
                .filter(|t| t.dims.len() == 1)
                .and_then(|t| i64_values(t))
                .ok_or_else(|| fail("the shape must be a 1-D int64 constant".into()))?;
            let dims = reshape(&x.dims, &target).ok_or_else(|| {
                fail(format!(
                    "{} cannot be reshaped to {target:?} (for every batch size)",
                    show(&x.dims)
                ))
            })?;
            (out(Elem::F32, dims), 0)
        }
        "QuantizeLinear" => {
            let x = float(0)?;
            let zp = quant_params(n, &ins, &x.dims, constants).map_err(fail)?;
            let elem = zp.unwrap_or(Elem::U8);
            if !matches!(elem, Elem::U8 | Elem::I8) {
                return Err(fail("the zero point must be uint8 or int8".into()));
            }
            (out(elem, x.dims.clone()), 0)
        }
        "DequantizeLinear" => {
            let x = ins[0];
            if !matches!(x.elem, Elem::U8 | Elem::I8 | Elem::I32) {
                return Err(fail("input 0 must be uint8, int8 or int32".into()));
            }
            if let Some(zp) = quant_params(n, &ins, &x.dims, constants).map_err(fail)? {
                if zp != x.elem {
                    return Err(fail(format!(
                        "the zero point is {zp:?}, the quantized input {:?}",
                        x.elem
                    )));
                }
            }
            (out(Elem::F32, x.dims.clone()), 0)
        }
        "Constant" => {
            let t = attr("value")
                .and_then(|a| a.t.as_ref())
                .ok_or_else(|| fail("it has no value".into()))?;
            let elem = elem_of(t.data_type)
                .ok_or_else(|| fail(format!("element type {} is not supported", t.data_type)))?;
            (out(elem, const_dims(t).map_err(fail)?), 0)
        }
        _ => return Err(fail("unsupported".into())),
    })
}

/// Checks the scale (input 1) and zero point (input 2) of a QuantizeLinear or
/// DequantizeLinear applied to a tensor of `dims`: constants, every scale finite and > 0,
/// one per tensor or one per channel of `axis` (never the batch). Returns the zero point's
/// element type when there is one.
fn quant_params(
    n: &pb::NodeProto,
    ins: &[&Value],
    dims: &[Dim],
    constants: &HashMap<&str, &pb::TensorProto>,
) -> Result<Option<Elem>, String> {
    let name = n.input[1].as_str();
    let scales = constants
        .get(name)
        .and_then(|t| f32_values(t))
        .ok_or_else(|| format!("the scale {name:?} must be a float constant"))?;
    if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(format!(
            "the scale {name:?} holds {bad}; every scale must be finite and > 0"
        ));
    }
    let per_tensor = match ins[1].dims.as_slice() {
        [] | [Dim::N(1)] => true,
        [Dim::N(c)] => {
            let rank = dims.len() as i64;
            let axis = attr_int(n, "axis", 1);
            let axis = if axis < 0 { axis + rank } else { axis };
            match usize::try_from(axis).ok().and_then(|a| dims.get(a)) {
                Some(Dim::N(len)) if len == c => false,
                Some(d) => {
                    return Err(format!(
                        "{c} scales for axis {axis} of length {}",
                        show(&[*d])
                    ))
                }
                None => return Err(format!("axis {axis} is outside a rank-{rank} input")),
            }
        }
        d => {
            return Err(format!(
                "the scale is {}, not a scalar or a vector",
                show(d)
            ))
        }
    };
    let Some(zp) = ins.get(2) else {
        return Ok(None);
    };
    let zname = n.input[2].as_str();
    if !constants.contains_key(zname) {
        return Err(format!("the zero point {zname:?} must be a constant"));
    }
    if zp.dims != ins[1].dims && !(per_tensor && zp.dims.len() <= 1) {
        return Err(format!(
            "the zero point is {}, the scale {}",
            show(&zp.dims),
            show(&ins[1].dims)
        ));
    }
    Ok(Some(zp.elem))
}

fn find_attr<'n>(n: &'n pb::NodeProto, name: &str) -> Option<&'n pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn attr_int(n: &pb::NodeProto, name: &str, default: i64) -> i64 {
    find_attr(n, name).map_or(default, |a| a.i)
}

fn attr_ints<'n>(n: &'n pb::NodeProto, name: &str) -> Option<&'n [i64]> {
    find_attr(n, name).map(|a| a.ints.as_slice())
}

/// Conv (float inputs, checked by the caller): `[batch, C, H, W]` with weights
/// `[O, C/group, kh, kw]` and an optional bias `[O]`.
fn conv(n: &pb::NodeProto, ins: &[&Value]) -> Result<(Value, u64), String> {
    let ints = |name: &str| attr_ints(n, name);
    let (x, wt) = (ins[0], ins[1]);
    let [b, Dim::N(c), Dim::N(ih), Dim::N(iw)] = x.dims.as_slice() else {
        return Err(format!("input {} is not [N, C, H, W]", show(&x.dims)));
    };
    let [Dim::N(o), Dim::N(i), Dim::N(kh), Dim::N(kw)] = wt.dims.as_slice() else {
        return Err(format!("weights {} are not [O, I, kh, kw]", show(&wt.dims)));
    };
    if ins.len() == 3 && ins[2].dims != [Dim::N(*o)] {
        return Err(format!("the bias is not [{o}]"));
    }
    let group = u64::try_from(attr_int(n, "group", 1)).unwrap_or(0);
    if group == 0 || i.checked_mul(group) != Some(*c) || o % group != 0 {
        return Err(format!(
            "{c} input channels, weights for {i} per group and group {group} do not fit"
        ));
    }
    let pair = |name: &str, default: [i64; 2]| -> Result<[i64; 2], String> {
        match ints(name) {
            None => Ok(default),
            Some(&[a, b]) if a >= 1 && b >= 1 => Ok([a, b]),
            Some(v) => Err(format!("{name} {v:?} is not two positive numbers")),
        }
    };
    let k = [*kh, *kw].map(|d| i64::try_from(d).unwrap_or(i64::MAX));
    if pair("kernel_shape", k)? != k {
        return Err(format!(
            "kernel_shape {:?} disagrees with the weights {}",
            ints("kernel_shape").unwrap_or_default(),
            show(&wt.dims)
        ));
    }
    let [sh, sw] = pair("strides", [1, 1])?;
    let [dh, dw] = pair("dilations", [1, 1])?;
    let [pt, pl, pb, pr] = match ints("pads") {
        None => [0; 4],
        Some(&[a, b, c, d]) if [a, b, c, d].iter().all(|&p| p >= 0) => [a, b, c, d],
        Some(v) => return Err(format!("pads {v:?} are not four non-negative numbers")),
    };
    if let Some(a) = n.attribute.iter().find(|a| a.name == "auto_pad") {
        if a.s != b"NOTSET" {
            return Err("only auto_pad NOTSET (explicit pads) is supported".into());
        }
    }
    let oh = window_out(*ih, k[0], sh, [pt, pb], dh);
    let ow = window_out(*iw, k[1], sw, [pl, pr], dw);
    let (Some(oh), Some(ow)) = (oh, ow) else {
        return Err(format!(
            "the {kh}×{kw} kernel does not fit the {ih}×{iw} input"
        ));
    };
    let macs = [*o, oh, ow, *i, *kh, *kw]
        .iter()
        .try_fold(1u64, |a, &t| a.checked_mul(t))
        .ok_or_else(|| "multiply-accumulates overflow".to_string())?;
    Ok((
        Value {
            elem: Elem::F32,
            dims: vec![*b, Dim::N(*o), Dim::N(oh), Dim::N(ow)],
        },
        macs,
    ))
}

/// Output length of a convolution window along one axis, `None` when it does not fit.
fn window_out(input: u64, k: i64, stride: i64, pads: [i64; 2], dilation: i64) -> Option<u64> {
    let span = i128::from(dilation) * (i128::from(k) - 1) + 1;
    let room = i128::from(input) + i128::from(pads[0]) + i128::from(pads[1]) - span;
    if k < 1 || stride < 1 || dilation < 1 || room < 0 {
        return None;
    }
    u64::try_from(room / i128::from(stride) + 1).ok()
}

/// Numpy broadcasting; the batch broadcasts only against 1 (anything else would depend on
/// the batch size).
fn broadcast(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let rank = a.len().max(b.len());
    let at = |s: &[Dim], i: usize| {
        let pad = rank - s.len();
        if i < pad {
            Dim::N(1)
        } else {
            s[i - pad]
        }
    };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (Dim::N(1), y) => Some(y),
            (x, Dim::N(1)) => Some(x),
            _ => None,
        })
        .collect()
}

/// ONNX Reshape without `allowzero`: 0 copies the input's dimension at that position, one -1
/// is inferred. The batch must be copied in place by a 0.
fn reshape(x: &[Dim], target: &[i64]) -> Option<Vec<Dim>> {
    let known = |d: &[Dim]| {
        d.iter().try_fold(1u64, |a, d| match d {
            Dim::N(n) => a.checked_mul(*n),
            Dim::Batch => Some(a),
        })
    };
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            0 => out.push(*x.get(i)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(Dim::N(1));
            }
            t if t > 0 => out.push(Dim::N(u64::try_from(t).ok()?)),
            _ => return None,
        }
    }
    let batches = |d: &[Dim]| d.iter().filter(|&&d| d == Dim::Batch).count();
    if batches(x) != batches(&out) {
        return None;
    }
    let (total, have) = (known(x)?, known(&out)?);
    match infer {
        Some(i) => {
            if have == 0 || total % have != 0 || total / have == 0 {
                return None;
            }
            out[i] = Dim::N(total / have);
        }
        None if have != total => return None,
        None => {}
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Dim::{Batch, N};

    #[test]
    fn broadcasting_keeps_the_batch_apart() {
        assert_eq!(
            broadcast(&[Batch, N(3)], &[N(1), N(3)]),
            Some(vec![Batch, N(3)])
        );
        assert_eq!(broadcast(&[Batch, N(3)], &[N(3)]), Some(vec![Batch, N(3)]));
        assert_eq!(broadcast(&[Batch, N(3)], &[N(2), N(3)]), None);
        assert_eq!(
            broadcast(&[N(2), N(1)], &[N(1), N(5)]),
            Some(vec![N(2), N(5)])
        );
    }

    #[test]
    fn reshape_rules() {
        assert_eq!(
            reshape(&[N(1), N(6)], &[1, 6, 1, 1]),
            Some(vec![N(1), N(6), N(1), N(1)])
        );
        assert_eq!(
            reshape(&[Batch, N(2), N(3)], &[0, -1]),
            Some(vec![Batch, N(6)])
        );
        assert_eq!(reshape(&[Batch, N(2), N(3)], &[-1, 6]), None);
        assert_eq!(reshape(&[N(4)], &[3, -1]), None);
        assert_eq!(reshape(&[N(4)], &[-1, -1]), None);
    }

    #[test]
    fn windows() {
        assert_eq!(window_out(8, 3, 1, [1, 1], 1), Some(8));
        assert_eq!(window_out(32, 3, 2, [1, 1], 1), Some(16));
        assert_eq!(window_out(2, 5, 1, [0, 0], 1), None);
        assert_eq!(window_out(8, 3, 0, [0, 0], 1), None);
    }
}
