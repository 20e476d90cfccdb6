//! An oats [`Graph`] run in tch, differentiably: what the int8 work needs from the training
//! framework.
//!
//! * Calibrating activation ranges ([`TchGraph::values`] of the float graph).
//! * The per-layer error report (the same values in the float and the int8 graph).
//! * Attacking the int8 graph directly (issue #15): QuantizeLinear rounds with a
//!   straight-through gradient (identity inside the representable range, zero where it
//!   clamps), so PGD and APGD see the quantized model's own decision boundary.
//!
//! It interprets the very nodes a device runs (the int8 graph is the single statement of the
//! int8 model), so what is attacked is what is deployed. Only the operators the lowering and
//! [`oats_graph::quant`] write are accepted; anything else is an error at construction.
use std::collections::HashMap;

use oats_graph::graph::{Attr, Data, Graph, Node};
use tch::{Device, Kind, Tensor};

use crate::error::{ExportError, Result};

/// One node with its constant attributes resolved.
#[derive(Debug)]
enum Op {
    Conv {
        stride: i64,
        pad: i64,
    },
    Relu,
    Add,
    Mul,
    GlobalAveragePool,
    Flatten,
    Gemm,
    /// Straight-through rounding to [lo, hi].
    Quantize {
        axis: i64,
        lo: f64,
        hi: f64,
    },
    Dequantize {
        axis: i64,
    },
}

#[derive(Debug)]
struct Step {
    op: Op,
    inputs: Vec<String>,
    output: String,
}

/// A [`Graph`] whose constants live as tensors on one device (module docs).
#[derive(Debug)]
pub struct TchGraph {
    steps: Vec<Step>,
    consts: HashMap<String, Tensor>,
    input: String,
    output: String,
}

fn ints(n: &Node, name: &str) -> Option<Vec<i64>> {
    n.attrs.iter().find_map(|(k, a)| match a {
        Attr::Ints(v) if *k == name => Some(v.clone()),
        _ => None,
    })
}

fn int(n: &Node, name: &str) -> Option<i64> {
    n.attrs.iter().find_map(|(k, a)| match a {
        Attr::Int(v) if *k == name => Some(*v),
        _ => None,
    })
}

impl TchGraph {
    /// Converts `g` (a folded float graph or its int8 twin) for running on `device`.
    pub fn new(g: &Graph, device: Device) -> Result<TchGraph> {
        let bad = |n: &Node, why: &str| {
            ExportError::Invalid(format!("graph {:?}, node {}: {why}", g.name, n.op))
        };
        let mut consts = HashMap::new();
        let mut bounds: HashMap<&str, (f64, f64)> = HashMap::new();
        for i in &g.initializers {
            let dims = &i.dims;
            let t = match &i.data {
                Data::F32(v) => Tensor::from_slice(v),
                Data::I64(v) => Tensor::from_slice(v).to_kind(Kind::Float),
                Data::I8(v) => {
                    bounds.insert(&i.name, (-128.0, 127.0));
                    Tensor::from_slice(&v.iter().map(|&x| f32::from(x)).collect::<Vec<_>>())
                }
                Data::U8(v) => {
                    bounds.insert(&i.name, (0.0, 255.0));
                    Tensor::from_slice(&v.iter().map(|&x| f32::from(x)).collect::<Vec<_>>())
                }
                Data::I32(v) => {
                    Tensor::from_slice(&v.iter().map(|&x| x as f64).collect::<Vec<_>>())
                        .to_kind(Kind::Float)
                }
            };
            consts.insert(i.name.clone(), t.view(dims.as_slice()).to_device(device));
        }
        let mut steps = Vec::with_capacity(g.nodes.len());
        let mut defined: std::collections::HashSet<&str> =
            g.inputs.iter().map(|v| v.name.as_str()).collect();
        defined.extend(g.initializers.iter().map(|i| i.name.as_str()));
        for n in &g.nodes {
            if let Some(u) = n.inputs.iter().find(|i| !defined.contains(i.as_str())) {
                return Err(bad(n, &format!("reads {u:?} before anything defines it")));
            }
            let arity = match n.op {
                "Relu" | "GlobalAveragePool" | "Flatten" => 1..=1,
                "Add" | "Mul" => 2..=2,
                "QuantizeLinear" => 3..=3,
                _ => 2..=3,
            };
            if !arity.contains(&n.inputs.len()) || n.outputs.len() != 1 {
                return Err(bad(n, "unexpected number of inputs or outputs"));
            }
            defined.insert(n.outputs[0].as_str());
            let op = match n.op {
                "Conv" => {
                    let strides = ints(n, "strides").unwrap_or(vec![1, 1]);
                    let pads = ints(n, "pads").unwrap_or(vec![0; 4]);
                    if strides.len() != 2
                        || strides[0] != strides[1]
                        || pads.len() != 4
                        || pads.iter().any(|&p| p != pads[0])
                    {
                        return Err(bad(n, "only square strides and even padding"));
                    }
                    Op::Conv {
                        stride: strides[0],
                        pad: pads[0],
                    }
                }
                "Relu" => Op::Relu,
                "Add" => Op::Add,
                "Mul" => Op::Mul,
                "GlobalAveragePool" => Op::GlobalAveragePool,
                "Flatten" if int(n, "axis").unwrap_or(1) == 1 => Op::Flatten,
                "Gemm" if int(n, "transB") == Some(1) && int(n, "transA").unwrap_or(0) == 0 => {
                    Op::Gemm
                }
                "QuantizeLinear" => {
                    let (lo, hi) = n
                        .inputs
                        .get(2)
                        .and_then(|z| bounds.get(z.as_str()))
                        .copied()
                        .unwrap_or((0.0, 255.0));
                    Op::Quantize {
                        axis: int(n, "axis").unwrap_or(1),
                        lo,
                        hi,
                    }
                }
                "DequantizeLinear" => Op::Dequantize {
                    axis: int(n, "axis").unwrap_or(1),
                },
                _ => return Err(bad(n, "operator or attributes not supported")),
            };
            let output = n
                .outputs
                .first()
                .cloned()
                .ok_or_else(|| bad(n, "no output"))?;
            steps.push(Step {
                op,
                inputs: n.inputs.clone(),
                output,
            });
        }
        let input = g.inputs.first().map(|v| v.name.clone()).unwrap_or_default();
        let output = g
            .outputs
            .first()
            .map(|v| v.name.clone())
            .unwrap_or_default();
        if !defined.contains(output.as_str()) || g.inputs.len() != 1 {
            return Err(ExportError::Invalid(format!(
                "graph {:?}: needs one image input and a computed output {output:?}",
                g.name
            )));
        }
        Ok(TchGraph {
            steps,
            consts,
            input,
            output,
        })
    }

    /// The logits of `x` [N, C, H, W].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.output.clone();
        let mut v = self.values(x, std::slice::from_ref(&out))?;
        v.pop()
            .ok_or_else(|| ExportError::Invalid(format!("no value {out:?}")))
    }

    /// [`TchGraph::forward`] for the attacks, which take a plain function: every name a node
    /// reads was checked at construction, so the only failure left would be a defect here.
    pub fn logits(&self, x: &Tensor) -> Tensor {
        self.forward(x)
            .unwrap_or_else(|e| panic!("a graph checked at construction failed to run: {e}"))
    }

    /// The values `names` for images `x`, in that order (every node runs).
    pub fn values(&self, x: &Tensor, names: &[String]) -> Result<Vec<Tensor>> {
        let mut env: HashMap<&str, Tensor> = HashMap::new();
        env.insert(self.input.as_str(), x.shallow_clone());
        for s in &self.steps {
            let arg = |i: usize| -> Result<Tensor> {
                let name = s.inputs.get(i).map(String::as_str).unwrap_or("");
                env.get(name)
                    .or_else(|| self.consts.get(name))
                    .map(Tensor::shallow_clone)
                    .ok_or_else(|| ExportError::Invalid(format!("value {name:?} is undefined")))
            };
            // A per-channel parameter along `axis` of a rank-`rank` tensor.
            let along = |p: Tensor, axis: i64, rank: usize| -> Tensor {
                if p.dim() == 0 || p.numel() == 1 {
                    return p.reshape([] as [i64; 0]);
                }
                let mut shape = vec![1i64; rank];
                let a = if axis < 0 { axis + rank as i64 } else { axis };
                shape[a.clamp(0, rank as i64 - 1) as usize] = -1;
                p.reshape(shape.as_slice())
            };
            let y = match &s.op {
                Op::Conv { stride, pad } => {
                    let b = (s.inputs.len() > 2).then(|| arg(2)).transpose()?;
                    arg(0)?.conv2d(
                        &arg(1)?,
                        b.as_ref(),
                        [*stride, *stride],
                        [*pad, *pad],
                        [1, 1],
                        1,
                    )
                }
                Op::Relu => arg(0)?.relu(),
                Op::Add => arg(0)? + arg(1)?,
                Op::Mul => arg(0)? * arg(1)?,
                Op::GlobalAveragePool => arg(0)?.adaptive_avg_pool2d([1, 1]),
                Op::Flatten => arg(0)?.flatten(1, -1),
                Op::Gemm => {
                    let b = (s.inputs.len() > 2).then(|| arg(2)).transpose()?;
                    arg(0)?.linear(&arg(1)?, b.as_ref())
                }
                Op::Quantize { axis, lo, hi } => {
                    let x = arg(0)?;
                    let r = x.dim();
                    let scale = along(arg(1)?, *axis, r);
                    let zp = along(arg(2)?, *axis, r);
                    let y = &x / &scale;
                    // Round forward, identity backward; the clamp stops the gradient outside.
                    let rounded = &y + (y.round() - &y).detach();
                    (rounded + zp).clamp(*lo, *hi)
                }
                Op::Dequantize { axis } => {
                    let q = arg(0)?;
                    let r = q.dim();
                    let scale = along(arg(1)?, *axis, r);
                    match s.inputs.get(2) {
                        Some(_) => (q - along(arg(2)?, *axis, r)) * scale,
                        None => q * scale,
                    }
                }
            };
            env.insert(s.output.as_str(), y);
        }
        names
            .iter()
            .map(|n| {
                env.get(n.as_str())
                    .map(Tensor::shallow_clone)
                    .ok_or_else(|| ExportError::Invalid(format!("no value {n:?}")))
            })
            .collect()
    }
}
