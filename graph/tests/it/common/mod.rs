//! Small synthetic packages for the tests (no trainer needed): a post-activation ResNet, a
//! pre-activation Wide ResNet and an unconditioned single-BN model, with deterministic
//! pseudo-random values, and a tract runner for their graphs.
#![allow(dead_code)]
use std::collections::BTreeMap;

use oats_graph::arch::{
    Architecture, BasicBlock, Bn, Body, Conv, ExitHead, Film, Linear, NormSite, Pool, Shortcut,
    WideBlock,
};
use oats_graph::{channels_at, Graph, Package};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use tract_onnx::prelude::*;

/// xorshift64*: deterministic values without a rand dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

pub const WIDTHS: [f64; 2] = [0.5, 1.0];
pub const LAMBDAS: [f64; 3] = [0.0, 0.5, 1.0];
pub const DIM: usize = 4;

fn conv(r: &mut Rng, cin: usize, cout: usize, k: usize, stride: usize, fixed: bool) -> Conv {
    let b = 1.0 / ((cin * k * k) as f32).sqrt();
    Conv {
        in_channels: cin,
        out_channels: cout,
        kernel: k,
        stride,
        padding: k / 2,
        fixed_input: fixed,
        weight: r.vec(cout * cin * k * k, -b, b),
    }
}

fn site(r: &mut Rng, c: usize, branches: usize, film: Option<usize>) -> NormSite {
    let bn = WIDTHS
        .iter()
        .map(|&w| {
            let cw = channels_at(c, w);
            (0..branches)
                .map(|_| Bn {
                    weight: r.vec(cw, 0.5, 1.5),
                    bias: r.vec(cw, -0.5, 0.5),
                    running_mean: r.vec(cw, -0.5, 0.5),
                    running_var: r.vec(cw, 0.5, 2.0),
                })
                .collect()
        })
        .collect();
    let film = film.map(|d| Film {
        w1: r.vec(2 * c * d, -0.5, 0.5),
        b1: r.vec(2 * c, 0.5, 1.0),
        w2: r.vec(4 * c * c, -0.3, 0.3),
        b2: r.vec(2 * c, 0.5, 1.0),
    });
    NormSite {
        channels: c,
        film,
        bn,
    }
}

fn arch(
    r: &mut Rng,
    body: Body,
    features: usize,
    branches: usize,
    dim: Option<usize>,
) -> Architecture {
    Architecture {
        name: "test".into(),
        input: [1, 8, 8],
        widths: WIDTHS.to_vec(),
        branches,
        encoding_dim: dim,
        bn_eps: 1e-5,
        body,
        pool: Pool::GlobalAverage,
        classifier: Linear {
            in_features: features,
            classes: 3,
            weight: r.vec(3 * features, -0.5, 0.5),
            bias: r.vec(3, -0.1, 0.1),
        },
        exits: vec![],
    }
}

/// A side exit after block `after_block` reading `c` channels (as the trainer builds it:
/// 3×3 stride-2 conv keeping the channels, a FiLM site, a classifier of 3 classes).
pub fn exit_head(
    seed: u64,
    after_block: usize,
    c: usize,
    branches: usize,
    dim: Option<usize>,
) -> ExitHead {
    let r = &mut Rng::new(seed ^ 0xe817);
    ExitHead {
        after_block,
        conv: conv(r, c, c, 3, 2, false),
        norm: site(r, c, branches, dim),
        classifier: Linear {
            in_features: c,
            classes: 3,
            weight: r.vec(3 * c, -0.5, 0.5),
            bias: r.vec(3, -0.1, 0.1),
        },
    }
}

/// [`resnet`] with a side exit after block 1 (4 channels at 8×8).
pub fn resnet_exits(seed: u64) -> Package {
    let mut a = resnet_arch(seed, true);
    a.exits = vec![exit_head(seed, 1, 4, 2, Some(DIM))];
    Package::new(a, LAMBDAS.to_vec(), Some(rows(seed))).expect("resnet with exits")
}

/// [`wide`] with a side exit after block 1 (6 channels at 4×4, before any norm).
pub fn wide_exits(seed: u64) -> Package {
    let mut a = wide_arch(seed);
    a.exits = vec![exit_head(seed, 1, 6, 2, Some(DIM))];
    Package::new(a, LAMBDAS.to_vec(), Some(rows(seed))).expect("wide with exits")
}

/// The output of a one-input `graph` in tract for `x` of shape `shape` (any first input:
/// an image or a segment's features).
pub fn run_shaped(graph: &Graph, x: &[f32], shape: &[usize]) -> Vec<f32> {
    let bytes = oats_graph::to_onnx(graph);
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("parse");
    model
        .set_input_fact(0, f32::fact(shape).into())
        .expect("fact");
    let plan = model
        .into_optimized()
        .expect("optimise")
        .into_runnable()
        .expect("plan");
    let out = plan
        .run(tvec![Tensor::from_shape(shape, x)
            .expect("shape")
            .into_tvalue()])
        .expect("run");
    out[0]
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>())
        .expect("f32")
        .to_vec()
}

/// Post-activation ResNet: stem 1→4, a block 4→4, a block 4→6 with stride 2 and a shortcut.
pub fn resnet_arch(seed: u64, conditioned: bool) -> Architecture {
    let r = &mut Rng::new(seed);
    let (branches, dim) = if conditioned {
        (2, Some(DIM))
    } else {
        (1, None)
    };
    let body = Body::Resnet {
        stem: conv(r, 1, 4, 3, 1, true),
        stem_norm: site(r, 4, branches, dim),
        blocks: vec![
            BasicBlock {
                conv1: conv(r, 4, 4, 3, 1, false),
                norm1: site(r, 4, branches, dim),
                conv2: conv(r, 4, 4, 3, 1, false),
                norm2: site(r, 4, branches, dim),
                shortcut: None,
            },
            BasicBlock {
                conv1: conv(r, 4, 6, 3, 2, false),
                norm1: site(r, 6, branches, dim),
                conv2: conv(r, 6, 6, 3, 1, false),
                norm2: site(r, 6, branches, dim),
                shortcut: Some(Shortcut {
                    conv: conv(r, 4, 6, 1, 2, false),
                    norm: site(r, 6, branches, None),
                }),
            },
        ],
    };
    arch(r, body, 6, branches, dim)
}

/// Pre-activation Wide ResNet: stem 1→4, a block 4→6 (stride 2, shortcut), a block 6→6.
pub fn wide_arch(seed: u64) -> Architecture {
    let r = &mut Rng::new(seed);
    let dim = Some(DIM);
    let body = Body::Wide {
        stem: conv(r, 1, 4, 3, 1, true),
        blocks: vec![
            WideBlock {
                norm1: site(r, 4, 2, dim),
                conv1: conv(r, 4, 6, 3, 2, false),
                norm2: site(r, 6, 2, dim),
                conv2: conv(r, 6, 6, 3, 1, false),
                shortcut: Some(conv(r, 4, 6, 1, 2, false)),
            },
            WideBlock {
                norm1: site(r, 6, 2, dim),
                conv1: conv(r, 6, 6, 3, 1, false),
                norm2: site(r, 6, 2, dim),
                conv2: conv(r, 6, 6, 3, 1, false),
                shortcut: None,
            },
        ],
        final_norm: site(r, 6, 2, None),
    };
    arch(r, body, 6, 2, dim)
}

pub fn rows(seed: u64) -> Vec<f32> {
    Rng::new(seed ^ 0xe7c).vec(LAMBDAS.len() * DIM, -1.0, 1.0)
}

pub fn resnet(seed: u64) -> Package {
    Package::new(resnet_arch(seed, true), LAMBDAS.to_vec(), Some(rows(seed))).expect("resnet")
}

pub fn wide(seed: u64) -> Package {
    Package::new(wide_arch(seed), LAMBDAS.to_vec(), Some(rows(seed))).expect("wide")
}

/// A PGD-AT-like model: single BN, no FiLM, trained for λ = 0.4 only.
pub fn unconditioned(seed: u64) -> Package {
    Package::new(resnet_arch(seed, false), vec![0.4], None).expect("unconditioned")
}

/// Images [n, 1, 8, 8] in [0, 1].
pub fn images(n: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).vec(n * 64, 0.0, 1.0)
}

/// Logits [n, classes] of `graph` in tract; `lambda_index` for shared-weights graphs.
pub fn run(graph: &Graph, x: &[f32], n: usize, lambda_index: Option<i64>) -> Vec<f32> {
    let mut out = run_in_tract(graph, x, n, lambda_index, None);
    out.swap_remove(0)
}

/// The outputs of `graph` in tract for `n` images `x` (8×8, one channel), flattened: the
/// graph's own output, or the values `names`.
fn run_in_tract(
    graph: &Graph,
    x: &[f32],
    n: usize,
    lambda_index: Option<i64>,
    names: Option<&[String]>,
) -> Vec<Vec<f32>> {
    let bytes = oats_graph::to_onnx(graph);
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("parse");
    model
        .set_input_fact(0, f32::fact([n, 1, 8, 8]).into())
        .expect("fact");
    if lambda_index.is_some() {
        model
            .set_input_fact(1, i64::fact([1usize]).into())
            .expect("fact");
    }
    if let Some(names) = names {
        model.select_outputs_by_name(names).expect("outputs");
    }
    let plan = model
        .into_optimized()
        .expect("optimise")
        .into_runnable()
        .expect("plan");
    let mut inputs: TVec<TValue> = tvec![Tensor::from_shape(&[n, 1, 8, 8], x)
        .expect("shape")
        .into_tvalue()];
    if let Some(k) = lambda_index {
        inputs.push(tensor1(&[k]).into_tvalue());
    }
    plan.run(inputs)
        .expect("run")
        .iter()
        .map(|t| {
            t.try_as_plain_ram()
                .and_then(|v| v.as_slice::<f32>())
                .expect("f32")
                .to_vec()
        })
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A tensor of a package file: dtype, shape, raw bytes.
pub type Raw = (Dtype, Vec<usize>, Vec<u8>);

/// The metadata JSON and the tensors of a package file.
pub fn split(bytes: &[u8]) -> (serde_json::Value, BTreeMap<String, Raw>) {
    let (_, md) = SafeTensors::read_metadata(bytes).expect("metadata");
    let text = md.metadata().as_ref().expect("md")["oats_package"].clone();
    let st = SafeTensors::deserialize(bytes).expect("st");
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    (serde_json::from_str(&text).expect("json"), tensors)
}

/// A package file from (possibly altered) parts.
pub fn join(meta: &serde_json::Value, tensors: &BTreeMap<String, Raw>) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    let md = std::collections::HashMap::from([("oats_package".to_string(), meta.to_string())]);
    safetensors::serialize(views, Some(md)).expect("serialize")
}

pub fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The values `names` of `graph` in tract for images `x` (n of them), flattened.
pub fn run_values(graph: &Graph, x: &[f32], n: usize, names: &[String]) -> Vec<Vec<f32>> {
    run_in_tract(graph, x, n, None, Some(names))
}

/// Activation ranges of `g` (its `oats_graph::quant::activation_points`) over `n` images `x`,
/// measured in tract: what an int8 export calibrates.
pub fn ranges(g: &Graph, x: &[f32], n: usize) -> oats_graph::quant::Ranges {
    let points = oats_graph::quant::activation_points(g);
    let vals = run_values(g, x, n, &points);
    points
        .into_iter()
        .zip(vals)
        .map(|(p, v)| {
            let mut r = oats_graph::quant::Range::empty();
            for &a in &v {
                r.include(a, a);
            }
            (p, r)
        })
        .collect()
}
