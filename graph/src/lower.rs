//! Lowering a package at one configuration to a plain [`Graph`] (what the exporter writes as
//! ONNX and a device runs).
//!
//! * Folded layout: for a fixed (λ, width) every BN∘FiLM becomes a per-channel affine
//!   ([`crate::affine`]) folded into the convolution before it (weights and bias); where no
//!   convolution precedes it (pre-activation WRN, after a residual sum) it stays Mul + Add.
//! * Shared-weights layout: one graph per width for K λ; convolutions keep their plain
//!   (sliced) weights and each affine is a [K, C] table selected by the int64 input
//!   [`LAMBDA_INDEX_INPUT`] (Gather → Reshape → Mul, Add).
//!
//! Every convolution and the classifier are sliced to the width's channels, so the MACs of a
//! narrow graph really shrink. Only standard ops (opset 13): Conv, Relu, Add, Mul,
//! GlobalAveragePool, Flatten, Gemm (+ Gather, Reshape in the shared layout); input
//! [`INPUT`] N×C×H×W, output [`OUTPUT`] N×classes, dynamic batch.
use crate::affine::Affine;
use crate::arch::{channels_at, Body, Conv, ExitHead, Linear, NormSite, Pool};
use crate::encoding::Condition;
use crate::error::{Error, Result};
use crate::fold::{conv_out, fold_affine_into_conv};
use crate::graph::{Attr, Graph, ValueInfo};
use crate::limits::MAX_LAMBDAS;
use crate::package::Package;

/// Name of the image input.
pub const INPUT: &str = "image";
/// Name of the logits output.
pub const OUTPUT: &str = "logits";
/// Name of the activation a segment of an exit model hands on ([`Segmented`]).
pub const FEATURES: &str = "features";
/// Name of the activation input of a later segment and of an exit head.
pub const FEATURES_INPUT: &str = "features_in";
/// Name of the int64 [1] input that selects the λ row of a shared-weights graph (the
/// runtime's `oats_runtime::manifest::LAMBDA_INDEX_INPUT`; export's tests hold them equal).
pub const LAMBDA_INDEX_INPUT: &str = "lambda_index";

/// How λ enters the graph. Also the manifest's `layout` field (`folded` | `shared_weights`;
/// `oats_runtime::Layout` is this type), so the name of a layout is defined once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// One λ, its affines folded into the convolutions: the fastest graph.
    Folded,
    /// K λ as [K, C] tables behind the input [`LAMBDA_INDEX_INPUT`]: one graph per width.
    SharedWeights,
}

/// A model with side exits lowered at one configuration, as chained graphs: `segments[0]`
/// maps [`INPUT`] to [`FEATURES`] (the block's output flattened to [N, C·H·W]);
/// `segments[k]` (k ≥ 1) maps the previous segment's features (as [`FEATURES_INPUT`],
/// [N, C, H, W]) to its own; `heads[k]` maps the features of
/// `segments[k]` to exit k's [`OUTPUT`] logits; the last segment ends in the final
/// classifier's [`OUTPUT`]. So `heads.len() + 1 == segments.len()`, and running every
/// segment in turn computes exactly what the plain graph computes. One graph with every exit
/// as an output would save nothing: an engine runs the whole graph whatever is fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmented {
    pub segments: Vec<Graph>,
    pub heads: Vec<Graph>,
}

impl Segmented {
    /// [C, H, W] of the features each side exit reads (the input of `heads[k]` and of
    /// `segments[k + 1]`).
    pub fn features(&self) -> Vec<[usize; 3]> {
        self.heads
            .iter()
            .map(|h| {
                let d = &h.inputs[0].dims;
                let at = |i: usize| d.get(i).copied().flatten().unwrap_or(0).max(0) as usize;
                [at(1), at(2), at(3)]
            })
            .collect()
    }

    /// MACs of one sample answered at each exit, the final classifier last: what it costs to
    /// reach exit k, every earlier head included (they ran and were not confident).
    pub fn exit_macs(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.segments.len());
        let mut acc = 0u64;
        for (k, seg) in self.segments.iter().enumerate() {
            acc = acc.saturating_add(seg.macs);
            match self.heads.get(k) {
                Some(head) => {
                    out.push(acc.saturating_add(head.macs));
                    acc = acc.saturating_add(head.macs);
                }
                None => out.push(acc),
            }
        }
        out
    }
}

struct Lowering<'p> {
    pkg: &'p Package,
    /// One condition per λ (a single one for the folded layout).
    conds: Vec<Condition>,
    width: f64,
    wi: usize,
    layout: Layout,
    g: Graph,
    /// Spatial size of the current activation.
    hw: (i64, i64),
    /// Channels of the current activation at this width.
    ch: i64,
    /// Split at the side exits ([`Package::lower_segments`]) instead of skipping them.
    split: bool,
    segments: Vec<Graph>,
    heads: Vec<Graph>,
}

impl Package {
    /// The graph of this model at `width` for `lambdas`: exactly one λ for
    /// [`Layout::Folded`]; 1..=[`MAX_LAMBDAS`] for [`Layout::SharedWeights`], where
    /// `lambda_index` k selects `lambdas[k]`. Any λ the package accepts
    /// ([`Package::condition`]) may be asked for, trained or not. The graph is named
    /// "oats"; callers rename it as they like (`graph.name`).
    pub fn lower(&self, lambdas: &[f64], width: f64, layout: Layout) -> Result<Graph> {
        let (mut segments, _) = self.lowering(lambdas, width, layout, false)?.run()?;
        segments
            .pop()
            .ok_or_else(|| Error::Request("lowering gave no graph".into()))
    }

    /// The chained segment and head graphs of a model with side exits at `width` for
    /// `lambdas` (as for [`Package::lower`]); see [`Segmented`]. [`Package::lower`] of the
    /// same model ignores the exits and gives the whole backbone as one graph.
    pub fn lower_segments(&self, lambdas: &[f64], width: f64, layout: Layout) -> Result<Segmented> {
        if self.architecture().exits.is_empty() {
            return Err(Error::Request(
                "the model has no side exits to split at".into(),
            ));
        }
        let (segments, heads) = self.lowering(lambdas, width, layout, true)?.run()?;
        Ok(Segmented { segments, heads })
    }

    fn lowering(
        &self,
        lambdas: &[f64],
        width: f64,
        layout: Layout,
        split: bool,
    ) -> Result<Lowering<'_>> {
        match (layout, lambdas.len()) {
            (Layout::Folded, 1) => {}
            (Layout::Folded, n) => {
                return Err(Error::Request(format!(
                    "a folded graph holds exactly one λ, not {n}"
                )))
            }
            (Layout::SharedWeights, n) if (1..=MAX_LAMBDAS).contains(&n) => {}
            (Layout::SharedWeights, n) => {
                return Err(Error::Request(format!(
                    "a shared-weights graph holds 1..={MAX_LAMBDAS} λ, not {n}"
                )))
            }
        }
        let wi = self.width_index(width)?;
        let conds = lambdas
            .iter()
            .map(|&l| self.condition(l))
            .collect::<Result<Vec<_>>>()?;
        let [c, h, w] = self.input_shape();
        let (c, h, w) = (c as i64, h as i64, w as i64);
        let mut l = Lowering {
            pkg: self,
            conds,
            width: self.widths()[wi],
            wi,
            layout,
            g: Graph::new("oats"),
            hw: (h, w),
            ch: c,
            split,
            segments: Vec::new(),
            heads: Vec::new(),
        };
        l.start_graph(INPUT);
        Ok(l)
    }

    /// [`Package::lower`] of one λ in the folded layout.
    pub fn lower_folded(&self, lambda: f64, width: f64) -> Result<Graph> {
        self.lower(&[lambda], width, Layout::Folded)
    }
}

impl Lowering<'_> {
    fn affines(&self, site: &NormSite) -> Result<Vec<Affine>> {
        self.conds
            .iter()
            .map(|c| self.pkg.site_affine(site, c, self.wi))
            .collect()
    }

    fn non_finite(&self, what: &str) -> Error {
        Error::NonFinite {
            what: what.into(),
            lambda: self.conds.first().map_or(f64::NAN, |c| c.lambda),
            width: self.width,
        }
    }

    /// The weight slice used at this width: [C_out·w, C_in·w, k, k] of the full-width tensor.
    fn sliced_weight(&self, conv: &Conv) -> Result<(Vec<i64>, Vec<f32>)> {
        let (o, i, k) = (
            channels_at(conv.out_channels, self.width),
            conv.in_at(self.width),
            conv.kernel,
        );
        let kk = k * k;
        let mut w = Vec::with_capacity(o * i * kk);
        for oo in 0..o {
            let start = oo * conv.in_channels * kk;
            let row = conv.weight.get(start..start + i * kk).ok_or_else(|| {
                Error::Request("convolution weight shorter than its shape".into())
            })?;
            w.extend_from_slice(row);
        }
        Ok((vec![o as i64, i as i64, k as i64, k as i64], w))
    }

    /// Conv (sliced to the width) with `site` folded in (folded layout) or followed by a
    /// λ-table affine (shared layout); `site = None` for a plain conv.
    fn conv(&mut self, x: &str, conv: &Conv, site: Option<&NormSite>) -> Result<String> {
        let (dims, w) = self.sliced_weight(conv)?;
        let (o, i, k) = (dims[0], dims[1], dims[2]);
        let (stride, padding) = (conv.stride as i64, conv.padding as i64);
        let out_hw = (
            conv_out(self.hw.0, k, stride, padding),
            conv_out(self.hw.1, k, stride, padding),
        );
        let macs = [out_hw.0, out_hw.1, o, i, k, k]
            .iter()
            .fold(1u64, |a, &d| a.saturating_mul(d.max(0) as u64));
        self.g.macs = self.g.macs.saturating_add(macs);
        self.hw = out_hw;
        self.ch = o;
        let attrs = vec![
            ("kernel_shape", Attr::Ints(vec![k, k])),
            ("strides", Attr::Ints(vec![stride, stride])),
            ("pads", Attr::Ints(vec![padding; 4])),
        ];
        match (site, self.layout) {
            (Some(site), Layout::Folded) => {
                let a = self.affines(site)?;
                let a = a.first().ok_or_else(|| Error::Request("no λ".into()))?;
                let (wf, bf) = fold_affine_into_conv(&w, o as usize, &a.scale, &a.shift)?;
                if !wf.iter().all(|v| v.is_finite()) {
                    return Err(self.non_finite("a folded convolution weight"));
                }
                let wn = self.g.constant_f32("w", dims, wf);
                let bn = self.g.constant_f32("b", vec![o], bf);
                Ok(self.g.node("Conv", &[x, &wn, &bn], attrs))
            }
            _ => {
                let wn = self.g.constant_f32("w", dims, w);
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
        let first = a.first().ok_or_else(|| Error::Request("no λ".into()))?;
        let c = first.scale.len() as i64;
        let (s, t) = match self.layout {
            Layout::Folded => (
                self.g
                    .constant_f32("s", vec![1, c, 1, 1], first.scale.clone()),
                self.g
                    .constant_f32("t", vec![1, c, 1, 1], first.shift.clone()),
            ),
            Layout::SharedWeights => {
                let k = a.len() as i64;
                let shape = self.g.constant_i64("shape", vec![4], vec![1, c, 1, 1]);
                let scales: Vec<f32> = a.iter().flat_map(|x| x.scale.iter().copied()).collect();
                let shifts: Vec<f32> = a.iter().flat_map(|x| x.shift.iter().copied()).collect();
                let st = self.g.constant_f32("s_table", vec![k, c], scales);
                let tt = self.g.constant_f32("t_table", vec![k, c], shifts);
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

    /// Gives the (empty) current graph its inputs: `input` (the image or a segment's
    /// features) at the current shape, and the λ index of the shared layout.
    fn start_graph(&mut self, input: &str) {
        self.g.inputs.push(ValueInfo {
            name: input.into(),
            int64: false,
            dims: vec![None, Some(self.ch), Some(self.hw.0), Some(self.hw.1)],
        });
        if self.layout == Layout::SharedWeights {
            self.g.inputs.push(ValueInfo {
                name: LAMBDA_INDEX_INPUT.into(),
                int64: true,
                dims: vec![Some(1)],
            });
        }
    }

    /// After block `k` (1-based) with activation `h`: at a side exit (when splitting), ends
    /// the current segment with `h` as its [`FEATURES`] output, lowers the exit's head, and
    /// starts the next segment reading [`FEATURES_INPUT`]. Returns the activation to go on
    /// with.
    fn tap(&mut self, k: usize, h: String) -> Result<String> {
        let pkg = self.pkg;
        let Some(head) = pkg
            .architecture()
            .exits
            .iter()
            .find(|e| e.after_block == k)
            .filter(|_| self.split)
        else {
            return Ok(h);
        };
        // Flattened, so that a segment is, to an engine, a graph like any other: one input,
        // one [N, values] output. The next segment reads the same memory as [N, C, H, W].
        let flat = self.g.node("Flatten", &[&h], vec![("axis", Attr::Int(1))]);
        let mut seg = std::mem::replace(&mut self.g, Graph::new("oats"));
        seg.rename_output(&flat, FEATURES);
        seg.outputs.push(ValueInfo {
            name: FEATURES.into(),
            int64: false,
            dims: vec![None, Some(self.ch * self.hw.0 * self.hw.1)],
        });
        self.segments.push(seg);
        let (hw, ch) = (self.hw, self.ch);
        self.start_graph(FEATURES_INPUT);
        self.head(head)?;
        let head_graph = std::mem::replace(&mut self.g, Graph::new("oats"));
        self.heads.push(head_graph);
        (self.hw, self.ch) = (hw, ch);
        self.start_graph(FEATURES_INPUT);
        Ok(FEATURES_INPUT.to_string())
    }

    /// An exit head on [`FEATURES_INPUT`]: conv → norm → ReLU → pool → classifier.
    fn head(&mut self, head: &ExitHead) -> Result<()> {
        let o = self.conv(FEATURES_INPUT, &head.conv, Some(&head.norm))?;
        let o = self.relu(&o);
        self.classify(&o, &head.classifier)
    }

    /// Pool → flatten → the width's slice of `fc`, as the graph's [`OUTPUT`].
    fn classify(&mut self, h: &str, fc: &Linear) -> Result<()> {
        let pooled = match self.pkg.architecture().pool {
            Pool::GlobalAverage => self.g.node("GlobalAveragePool", &[h], vec![]),
        };
        let flat = self
            .g
            .node("Flatten", &[&pooled], vec![("axis", Attr::Int(1))]);
        let (classes, fin) = (fc.classes, fc.in_features);
        let feats = channels_at(fin, self.width);
        let mut w = Vec::with_capacity(classes * feats);
        for row in fc.weight.chunks_exact(fin).take(classes) {
            w.extend_from_slice(&row[..feats.min(row.len())]);
        }
        let (classes, feats) = (classes as i64, feats as i64);
        let w = self.g.constant_f32("fc_w", vec![classes, feats], w);
        let b = self.g.constant_f32("fc_b", vec![classes], fc.bias.clone());
        self.g.macs = self.g.macs.saturating_add((classes * feats) as u64);
        let logits = self
            .g
            .node("Gemm", &[&flat, &w, &b], vec![("transB", Attr::Int(1))]);
        self.g.rename_output(&logits, OUTPUT);
        self.g.outputs.push(ValueInfo {
            name: OUTPUT.into(),
            int64: false,
            dims: vec![None, Some(classes)],
        });
        Ok(())
    }

    fn relu(&mut self, x: &str) -> String {
        self.g.node("Relu", &[x], vec![])
    }

    fn add(&mut self, a: &str, b: &str) -> String {
        self.g.node("Add", &[a, b], vec![])
    }

    /// Lowers the whole network: one graph, or the segments and heads when splitting.
    fn run(mut self) -> Result<(Vec<Graph>, Vec<Graph>)> {
        let pkg = self.pkg;
        let arch = pkg.architecture();
        let mut h = INPUT.to_string();
        match &arch.body {
            Body::Resnet {
                stem,
                stem_norm,
                blocks,
            } => {
                h = self.conv(&h, stem, Some(stem_norm))?;
                h = self.relu(&h);
                for (k, b) in blocks.iter().enumerate() {
                    let (hw_in, ch_in) = (self.hw, self.ch);
                    let o = self.conv(&h, &b.conv1, Some(&b.norm1))?;
                    let o = self.relu(&o);
                    let o = self.conv(&o, &b.conv2, Some(&b.norm2))?;
                    let sc = match &b.shortcut {
                        Some(sc) => {
                            (self.hw, self.ch) = (hw_in, ch_in);
                            self.conv(&h, &sc.conv, Some(&sc.norm))?
                        }
                        None => h.clone(),
                    };
                    let sum = self.add(&o, &sc);
                    h = self.relu(&sum);
                    h = self.tap(k + 1, h)?;
                }
            }
            Body::Wide {
                stem,
                blocks,
                final_norm,
            } => {
                h = self.conv(&h, stem, None)?;
                for (k, b) in blocks.iter().enumerate() {
                    let (hw_in, ch_in) = (self.hw, self.ch);
                    let a = self.affine(&h, &b.norm1)?;
                    let a = self.relu(&a);
                    let sc = match &b.shortcut {
                        Some(conv) => {
                            let s = self.conv(&a, conv, None)?;
                            (self.hw, self.ch) = (hw_in, ch_in);
                            s
                        }
                        None => h.clone(),
                    };
                    let o = self.conv(&a, &b.conv1, Some(&b.norm2))?;
                    let o = self.relu(&o);
                    let o = self.conv(&o, &b.conv2, None)?;
                    h = self.add(&o, &sc);
                    h = self.tap(k + 1, h)?;
                }
                let a = self.affine(&h, final_norm)?;
                h = self.relu(&a);
            }
        }
        self.classify(&h, &arch.classifier)?;
        self.segments.push(self.g);
        Ok((self.segments, self.heads))
    }
}
