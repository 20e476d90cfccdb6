//! Lowering a trained network at one configuration to a plain graph.
//!
//! * Folded layout: for a fixed (λ, width) every BN∘FiLM becomes a per-channel affine that
//!   is folded into the convolution before it (weights and bias); where no convolution
//!   precedes it (pre-activation WRN, after a residual sum) it stays one Mul + Add.
//! * Shared-weights layout: one graph per width; convolutions keep their plain (sliced)
//!   weights and each affine is a [K, C] table of all K exported λ, selected by the int64
//!   input `lambda_index` (Gather → Reshape → Mul, Add).
//!
//! Every convolution and the classifier are sliced to the width's channels, so the MACs of
//! a narrow graph really shrink.
use oats_runtime::manifest::LAMBDA_INDEX_INPUT;
use oats_runtime::Layout;
use oats_train::model::{Body, Network};
use oats_train::nn::{Branch, NormSite, SlimConv};
use oats_train::TchModel;
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::fold::{conv_out, fold_affine_into_conv};
use crate::graph::{Attr, Graph, ValueInfo};

pub const INPUT: &str = "image";
pub const OUTPUT: &str = "logits";

fn vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(
        t.detach()
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .flatten(0, -1),
    )?)
}

/// The per-channel affines of one site for each exported λ: (scales, shifts), each K × C_w.
struct Affines {
    scale: Vec<Vec<f32>>,
    shift: Vec<Vec<f32>>,
}

struct Lowering {
    /// One conditioning per exported λ (a single one for the folded layout).
    conds: Vec<(Option<Tensor>, Branch)>,
    width: f64,
    wi: usize,
    layout: Layout,
    g: Graph,
    /// Spatial size of the current activation.
    hw: (i64, i64),
}

impl Lowering {
    fn affines(&self, site: &NormSite) -> Result<Affines> {
        let _ng = tch::no_grad_guard();
        let mut a = Affines {
            scale: vec![],
            shift: vec![],
        };
        for (enc, branch) in &self.conds {
            let (s, t) = site.affine(enc.as_ref(), *branch, self.wi);
            a.scale.push(vec_f32(&s)?);
            a.shift.push(vec_f32(&t)?);
        }
        Ok(a)
    }

    /// Conv (sliced to the width) with `site` folded in (folded layout) or followed by a
    /// λ-table affine (shared layout); `site = None` for a plain conv.
    fn conv(&mut self, x: &str, conv: &SlimConv, site: Option<&NormSite>) -> Result<String> {
        let w_t = conv.weight_at(self.width);
        let dims = w_t.size();
        let (o, i, k) = (dims[0], dims[1], dims[2]);
        let w = vec_f32(&w_t)?;
        let out_hw = (
            conv_out(self.hw.0, k, conv.stride, conv.padding),
            conv_out(self.hw.1, k, conv.stride, conv.padding),
        );
        self.g.macs += (out_hw.0 * out_hw.1 * o * i * k * k) as u64;
        self.hw = out_hw;
        let attrs = vec![
            ("kernel_shape", Attr::Ints(vec![k, k])),
            ("strides", Attr::Ints(vec![conv.stride, conv.stride])),
            ("pads", Attr::Ints(vec![conv.padding; 4])),
        ];
        match (site, self.layout) {
            (Some(site), Layout::Folded) => {
                let a = self.affines(site)?;
                let (wf, bf) = fold_affine_into_conv(&w, o as usize, &a.scale[0], &a.shift[0]);
                let wn = self.g.constant_f32("w", dims.clone(), wf);
                let bn = self.g.constant_f32("b", vec![o], bf);
                Ok(self.g.node("Conv", &[x, &wn, &bn], attrs))
            }
            _ => {
                let wn = self.g.constant_f32("w", dims.clone(), w);
                let y = self.g.node("Conv", &[x, &wn], attrs);
                match site {
                    Some(site) => self.affine(&y, site),
                    None => Ok(y),
                }
            }
        }
    }

    /// y = s·x + t as Mul + Add (constants in the folded layout, a λ table otherwise).
    fn affine(&mut self, x: &str, site: &NormSite) -> Result<String> {
        let a = self.affines(site)?;
        let c = a.scale[0].len() as i64;
        let (s, t) = match self.layout {
            Layout::Folded => (
                self.g
                    .constant_f32("s", vec![1, c, 1, 1], a.scale[0].clone()),
                self.g
                    .constant_f32("t", vec![1, c, 1, 1], a.shift[0].clone()),
            ),
            Layout::SharedWeights => {
                let k = a.scale.len() as i64;
                let shape = self.g.constant_i64("shape", vec![4], vec![1, c, 1, 1]);
                let st = self.g.constant_f32("s_table", vec![k, c], a.scale.concat());
                let tt = self.g.constant_f32("t_table", vec![k, c], a.shift.concat());
                let sg = self.g.node(
                    "Gather",
                    &[&st, LAMBDA_INDEX_INPUT],
                    vec![("axis", Attr::Int(0))],
                );
                let tg = self.g.node(
                    "Gather",
                    &[&tt, LAMBDA_INDEX_INPUT],
                    vec![("axis", Attr::Int(0))],
                );
                (
                    self.g.node("Reshape", &[&sg, &shape], vec![]),
                    self.g.node("Reshape", &[&tg, &shape], vec![]),
                )
            }
        };
        let m = self.g.node("Mul", &[x, &s], vec![]);
        Ok(self.g.node("Add", &[&m, &t], vec![]))
    }

    fn relu(&mut self, x: &str) -> String {
        self.g.node("Relu", &[x], vec![])
    }

    fn add(&mut self, a: &str, b: &str) -> String {
        self.g.node("Add", &[a, b], vec![])
    }

    fn lower(mut self, net: &Network) -> Result<Graph> {
        let mut h = INPUT.to_string();
        match &net.body {
            Body::ResNet {
                stem,
                stem_norm,
                blocks,
            } => {
                h = self.conv(&h, stem, Some(stem_norm))?;
                h = self.relu(&h);
                for b in blocks {
                    let hw_in = self.hw;
                    let o = self.conv(&h, &b.conv1, Some(&b.norm1))?;
                    let o = self.relu(&o);
                    let o = self.conv(&o, &b.conv2, Some(&b.norm2))?;
                    let sc = match &b.shortcut {
                        Some((conv, norm)) => {
                            let hw_out = self.hw;
                            self.hw = hw_in;
                            let s = self.conv(&h, conv, Some(norm))?;
                            debug_assert_eq!(self.hw, hw_out);
                            s
                        }
                        None => h.clone(),
                    };
                    let sum = self.add(&o, &sc);
                    h = self.relu(&sum);
                }
            }
            Body::Wide {
                stem,
                blocks,
                final_norm,
            } => {
                h = self.conv(&h, stem, None)?;
                for b in blocks {
                    let hw_in = self.hw;
                    let a = self.affine(&h, &b.norm1)?;
                    let a = self.relu(&a);
                    let sc = match &b.shortcut {
                        Some(conv) => {
                            let s = self.conv(&a, conv, None)?;
                            self.hw = hw_in;
                            s
                        }
                        None => h.clone(),
                    };
                    let o = self.conv(&a, &b.conv1, Some(&b.norm2))?;
                    let o = self.relu(&o);
                    let o = self.conv(&o, &b.conv2, None)?;
                    h = self.add(&o, &sc);
                }
                let a = self.affine(&h, final_norm)?;
                h = self.relu(&a);
            }
        }
        let pooled = self.g.node("GlobalAveragePool", &[&h], vec![]);
        let flat = self
            .g
            .node("Flatten", &[&pooled], vec![("axis", Attr::Int(1))]);
        let fw = net.fc.weight_at(self.width);
        let (classes, feats) = (fw.size()[0], fw.size()[1]);
        let w = self
            .g
            .constant_f32("fc_w", vec![classes, feats], vec_f32(&fw)?);
        let b = self
            .g
            .constant_f32("fc_b", vec![classes], vec_f32(&net.fc.bias)?);
        self.g.macs += (classes * feats) as u64;
        let logits = self
            .g
            .node("Gemm", &[&flat, &w, &b], vec![("transB", Attr::Int(1))]);
        self.g.rename_output(&logits, OUTPUT);
        self.g.outputs.push(ValueInfo {
            name: OUTPUT.into(),
            int64: false,
            dims: vec![None, Some(classes)],
        });
        Ok(self.g)
    }
}

/// Lowers the model at `width` for the λ list. Folded layout: exactly one λ. Shared
/// layout: all λ, selected by `lambda_index` (the position in `lambdas`).
pub fn lower(
    model: &TchModel,
    lambdas: &[f64],
    width: f64,
    layout: Layout,
    name: &str,
) -> Result<Graph> {
    let wi = model.width_index(width)?;
    let mut conds = Vec::new();
    for &l in lambdas {
        let c = model.cond_for(l)?;
        conds.push((
            c.enc,
            if model.net.spec.dual_bn {
                Branch::for_lambda(l)
            } else {
                Branch::Clean
            },
        ));
    }
    let m = &model.meta;
    let mut g = Graph::new(name);
    g.inputs.push(ValueInfo {
        name: INPUT.into(),
        int64: false,
        dims: vec![None, Some(m.in_channels), Some(m.height), Some(m.width)],
    });
    if layout == Layout::SharedWeights {
        g.inputs.push(ValueInfo {
            name: LAMBDA_INDEX_INPUT.into(),
            int64: true,
            dims: vec![Some(1)],
        });
    }
    let low = Lowering {
        conds,
        width,
        wi,
        layout,
        g,
        hw: (m.height, m.width),
    };
    low.lower(&model.net)
}
