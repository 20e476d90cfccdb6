//! The network as plain data: a mirror of the trainer's `oats_train::model::Body` (post-
//! activation ResNet for the small preset and ResNet-34, pre-activation Wide ResNet for
//! WRN-16-8 / WRN-40-2) holding the unfolded full-width tensors.
//!
//! The structure (layer sizes, strides, which layers slice with the width, where the
//! normalisation sites and shortcuts are) is what a package stores as JSON metadata; the
//! tensors (`#[serde(skip)]` fields) are stored beside it under names derived from their
//! position ([`Architecture::slots`]), so names can never disagree with the structure.
//!
//! Widths: a layer at width w uses the first [`channels_at`]`(C, w)` channels of its full-width
//! tensors (convolutions, classifier, FiLM MLP), except a convolution with `fixed_input`
//! (the stem), which always reads every input channel. Batch norms are switchable: one per
//! (width, branch), stored at that width's channel count.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fold::conv_out;
use crate::limits::{
    MAX_BLOCKS, MAX_CLASSES, MAX_ENCODING_DIM, MAX_INPUT_CHANNELS, MAX_INPUT_SIDE, MAX_KERNEL,
    MAX_LAYER_CHANNELS, MAX_NAME_CHARS, MAX_STRIDE, MAX_VALUES, MAX_WIDTHS,
};

/// Two λ (or two widths) denote the same setting when they differ by less than this: the
/// trainer's `oats_train::config::SAME_SETTING_TOL` (export's tests hold the two equal).
/// Settings are short decimals (0.1, 0.75), so two spellings of one differ by f64 round-off
/// (~1e-16) and two distinct ones by ≥ 1e-3 in practice.
pub const SAME_SETTING_TOL: f64 = 1e-9;

/// Whether `a` and `b` are the same λ or width setting ([`SAME_SETTING_TOL`]).
pub fn same_setting(a: f64, b: f64) -> bool {
    (a - b).abs() < SAME_SETTING_TOL
}

/// Channels a width factor keeps: `int(C·w)` as in the reference, at least 1. The trainer's
/// `oats_train::nn::channels_at`, reproduced to the bit (export's tests compare the two for
/// every preset channel count and width).
pub fn channels_at(channels: usize, width: f64) -> usize {
    ((channels as f64 * width) as i64).max(1) as usize
}

/// The whole network: input, widths, normalisation kind, body and classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Preset name ("small", "resnet34", "wrn16-8", "wrn40-2"); informational only.
    pub name: String,
    /// Input image [C, H, W].
    pub input: [usize; 3],
    /// The trained widths, strictly increasing, in (0, 1]; a width index is a position here.
    pub widths: Vec<f64>,
    /// BNs per (site, width): 2 = dual (clean for λ = 0, adversarial for λ > 0), 1 = single.
    pub branches: usize,
    /// Dimension D of the λ encoding of a FiLM-conditioned model (OAT / OATS); `None` for a
    /// model trained for one λ (PGD-AT / PGD-ATS).
    pub encoding_dim: Option<usize>,
    /// ε of every BN: y = (x − μ)/√(σ² + ε)·w + b.
    pub bn_eps: f64,
    pub body: Body,
    pub pool: Pool,
    pub classifier: Linear,
    /// Side exits (RDI-Nets) in block order; none for a plain model. Omitted from the JSON
    /// when empty, so a plain model's package is byte-identical to one written before exits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exits: Vec<ExitHead>,
}

/// A side exit after block `after_block` (1-based): the trainer's `oats_train::model::ExitHead`,
/// conv (3×3, stride 2, channels kept) → norm (FiLM if conditioned) → ReLU → global
/// average pool → classifier. It reads the block's output: for the post-activation ResNet
/// the activated sum, for the pre-activation Wide ResNet the raw sum (before any norm).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitHead {
    pub after_block: usize,
    pub conv: Conv,
    pub norm: NormSite,
    pub classifier: Linear,
}

/// Pooling between the body and the classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// Mean over H×W (the reference's adaptive average pool to 1×1).
    GlobalAverage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Body {
    /// Post-activation ResNet: stem conv → norm → ReLU, then [`BasicBlock`]s.
    Resnet {
        stem: Conv,
        stem_norm: NormSite,
        blocks: Vec<BasicBlock>,
    },
    /// Pre-activation Wide ResNet: stem conv, [`WideBlock`]s, then final norm → ReLU.
    Wide {
        stem: Conv,
        blocks: Vec<WideBlock>,
        final_norm: NormSite,
    },
}

/// conv1 → norm1 → ReLU → conv2 → norm2, plus the shortcut (identity, or a 1×1 conv → norm),
/// then ReLU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicBlock {
    pub conv1: Conv,
    pub norm1: NormSite,
    pub conv2: Conv,
    pub norm2: NormSite,
    pub shortcut: Option<Shortcut>,
}

/// A projection shortcut: 1×1 conv → norm (no FiLM in the presets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shortcut {
    pub conv: Conv,
    pub norm: NormSite,
}

/// a = ReLU(norm1(x)); out = conv2(ReLU(norm2(conv1(a)))) + (shortcut(a) or x). Dropout is
/// the identity at inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WideBlock {
    pub norm1: NormSite,
    pub conv1: Conv,
    pub norm2: NormSite,
    pub conv2: Conv,
    pub shortcut: Option<Conv>,
}

/// A bias-free square convolution (symmetric padding, no dilation, no groups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// Reads every input channel at every width (the stem reads the whole image); otherwise
    /// the first `channels_at(in_channels, w)`.
    pub fixed_input: bool,
    /// Full-width weight [out, in, k, k], row-major.
    #[serde(skip)]
    pub weight: Vec<f32>,
}

impl Conv {
    /// Input channels used at `width`.
    pub fn in_at(&self, width: f64) -> usize {
        if self.fixed_input {
            self.in_channels
        } else {
            channels_at(self.in_channels, width)
        }
    }

    fn weight_shape(&self) -> Vec<usize> {
        vec![
            self.out_channels,
            self.in_channels,
            self.kernel,
            self.kernel,
        ]
    }
}

/// A normalisation site: per (width, branch) a BN, then (if conditioned) FiLM:
/// y = γ·BN(x) + β with (γ, β) from the site's MLP on the λ encoding ([`crate::affine`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormSite {
    /// Full-width channels C.
    pub channels: usize,
    /// The site's FiLM MLP; stored in the metadata as `true` / `false`, its tensors beside.
    #[serde(with = "presence")]
    pub film: Option<Film>,
    /// `bn[width index][branch]`, each at `channels_at(C, width)` channels.
    #[serde(skip)]
    pub bn: Vec<Vec<Bn>>,
}

/// One batch norm's parameters and running statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bn {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
}

/// FiLM MLP (reference semantics): Linear(D → 2C) → LeakyReLU(0.01) → Linear(2C → 2C).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Film {
    /// [2C, D]
    pub w1: Vec<f32>,
    /// [2C]
    pub b1: Vec<f32>,
    /// [2C, 2C]
    pub w2: Vec<f32>,
    /// [2C]
    pub b2: Vec<f32>,
}

/// The classifier: at width w it reads the first `channels_at(in_features, w)` features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Linear {
    pub in_features: usize,
    pub classes: usize,
    /// [classes, in_features]
    #[serde(skip)]
    pub weight: Vec<f32>,
    /// [classes]
    #[serde(skip)]
    pub bias: Vec<f32>,
}

/// `Option<Film>` in the metadata as a bool: the MLP's tensors are stored beside it.
mod presence {
    use super::Film;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(f: &Option<Film>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(f.is_some())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Film>, D::Error> {
        Ok(bool::deserialize(d)?.then(Film::default))
    }
}

/// What a stored tensor holds, for the value checks beyond "finite".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotKind {
    Plain,
    /// A BN running variance: must be ≥ 0 (√(σ² + ε) of a negative σ² is NaN).
    Variance,
}

/// One tensor of the network: its canonical name and shape, and its data if present.
pub(crate) struct Slot<D> {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: SlotKind,
    pub data: Option<D>,
}

/// Per-site context for the tensor walk.
#[derive(Clone)]
struct SiteCtx {
    widths: Vec<f64>,
    branches: usize,
    dim: usize,
}

fn branch_name(branches: usize, b: usize) -> &'static str {
    match (branches, b) {
        (2, 0) => "clean",
        (2, _) => "adv",
        _ => "bn",
    }
}

/// Generates the immutable and the mutable tensor walk from one body, so the two cannot
/// disagree on names, shapes or order. Slots whose BN entry is missing (a package built in
/// memory with too few widths or branches) come out with `data: None`.
macro_rules! walk {
    ($fn_name:ident, $iter:ident, $($mut:ident)?) => {
        /// Every tensor of the network in a fixed order, with its canonical name and shape.
        pub(crate) fn $fn_name(&$($mut)? self) -> Vec<Slot<&$($mut)? Vec<f32>>> {
            fn conv<'a>(name: String, c: &'a $($mut)? Conv, out: &mut Vec<Slot<&'a $($mut)? Vec<f32>>>) {
                let shape = c.weight_shape();
                out.push(Slot { name: format!("{name}.weight"), shape, kind: SlotKind::Plain, data: Some(&$($mut)? c.weight) });
            }
            fn site<'a>(name: &str, s: &'a $($mut)? NormSite, ctx: &SiteCtx, out: &mut Vec<Slot<&'a $($mut)? Vec<f32>>>) {
                let (c, d) = (s.channels, ctx.dim);
                let NormSite { bn, film, .. } = s;
                let mut per_width = bn.$iter();
                for (wi, &w) in ctx.widths.iter().enumerate() {
                    let cw = channels_at(c, w);
                    let mut per_branch = per_width.next().map(|v| v.$iter());
                    for b in 0..ctx.branches {
                        let prefix = format!("{name}.w{wi}.{}", branch_name(ctx.branches, b));
                        let (wt, bi, rm, rv) = match per_branch.as_mut().and_then(|it| it.next()) {
                            Some(Bn { weight, bias, running_mean, running_var }) => {
                                (Some(weight), Some(bias), Some(running_mean), Some(running_var))
                            }
                            None => (None, None, None, None),
                        };
                        for (suffix, data, kind) in [
                            ("weight", wt, SlotKind::Plain),
                            ("bias", bi, SlotKind::Plain),
                            ("running_mean", rm, SlotKind::Plain),
                            ("running_var", rv, SlotKind::Variance),
                        ] {
                            out.push(Slot { name: format!("{prefix}.{suffix}"), shape: vec![cw], kind, data });
                        }
                    }
                }
                if let Some(Film { w1, b1, w2, b2 }) = film {
                    for (suffix, shape, data) in [
                        ("fc1_weight", vec![2 * c, d], w1),
                        ("fc1_bias", vec![2 * c], b1),
                        ("fc2_weight", vec![2 * c, 2 * c], w2),
                        ("fc2_bias", vec![2 * c], b2),
                    ] {
                        out.push(Slot { name: format!("{name}.film.{suffix}"), shape, kind: SlotKind::Plain, data: Some(data) });
                    }
                }
            }
            let ctx = SiteCtx {
                widths: self.widths.clone(),
                branches: self.branches,
                dim: self.encoding_dim.unwrap_or(0),
            };
            let mut out = Vec::new();
            let Architecture { body, classifier, exits, .. } = self;
            match body {
                Body::Resnet { stem, stem_norm, blocks } => {
                    conv("stem".into(), stem, &mut out);
                    site("stem_norm", stem_norm, &ctx, &mut out);
                    for (i, b) in blocks.$iter().enumerate() {
                        let BasicBlock { conv1, norm1, conv2, norm2, shortcut } = b;
                        conv(format!("blocks.{i}.conv1"), conv1, &mut out);
                        site(&format!("blocks.{i}.norm1"), norm1, &ctx, &mut out);
                        conv(format!("blocks.{i}.conv2"), conv2, &mut out);
                        site(&format!("blocks.{i}.norm2"), norm2, &ctx, &mut out);
                        if let Some(Shortcut { conv: sc, norm }) = shortcut {
                            conv(format!("blocks.{i}.shortcut"), sc, &mut out);
                            site(&format!("blocks.{i}.shortcut_norm"), norm, &ctx, &mut out);
                        }
                    }
                }
                Body::Wide { stem, blocks, final_norm } => {
                    conv("stem".into(), stem, &mut out);
                    for (i, b) in blocks.$iter().enumerate() {
                        let WideBlock { norm1, conv1, norm2, conv2, shortcut } = b;
                        site(&format!("blocks.{i}.norm1"), norm1, &ctx, &mut out);
                        conv(format!("blocks.{i}.conv1"), conv1, &mut out);
                        site(&format!("blocks.{i}.norm2"), norm2, &ctx, &mut out);
                        conv(format!("blocks.{i}.conv2"), conv2, &mut out);
                        if let Some(sc) = shortcut {
                            conv(format!("blocks.{i}.shortcut"), sc, &mut out);
                        }
                    }
                    site("final_norm", final_norm, &ctx, &mut out);
                }
            }
            let Linear { in_features, classes, weight, bias } = classifier;
            let (classes, fin) = (*classes, *in_features);
            out.push(Slot { name: "fc.weight".into(), shape: vec![classes, fin], kind: SlotKind::Plain, data: Some(weight) });
            out.push(Slot { name: "fc.bias".into(), shape: vec![classes], kind: SlotKind::Plain, data: Some(bias) });
            for e in exits.$iter() {
                let ExitHead { after_block, conv: c, norm, classifier } = e;
                let name = format!("exits.{after_block}");
                conv(format!("{name}.conv"), c, &mut out);
                site(&format!("{name}.norm"), norm, &ctx, &mut out);
                let Linear { in_features, classes, weight, bias } = classifier;
                let (classes, fin) = (*classes, *in_features);
                out.push(Slot { name: format!("{name}.fc.weight"), shape: vec![classes, fin], kind: SlotKind::Plain, data: Some(weight) });
                out.push(Slot { name: format!("{name}.fc.bias"), shape: vec![classes], kind: SlotKind::Plain, data: Some(bias) });
            }
            out
        }
    };
}

impl Architecture {
    walk!(slots, iter,);
    walk!(slots_mut, iter_mut, mut);

    /// The normalisation sites in network order with their names (the names [`crate::Package::affine`]
    /// takes: `stem_norm`, `blocks.3.norm1`, `blocks.3.shortcut_norm`, `final_norm`, …).
    pub fn sites(&self) -> Vec<(String, &NormSite)> {
        let mut out = Vec::new();
        match &self.body {
            Body::Resnet {
                stem_norm, blocks, ..
            } => {
                out.push(("stem_norm".to_string(), stem_norm));
                for (i, b) in blocks.iter().enumerate() {
                    out.push((format!("blocks.{i}.norm1"), &b.norm1));
                    out.push((format!("blocks.{i}.norm2"), &b.norm2));
                    if let Some(sc) = &b.shortcut {
                        out.push((format!("blocks.{i}.shortcut_norm"), &sc.norm));
                    }
                }
            }
            Body::Wide {
                blocks, final_norm, ..
            } => {
                for (i, b) in blocks.iter().enumerate() {
                    out.push((format!("blocks.{i}.norm1"), &b.norm1));
                    out.push((format!("blocks.{i}.norm2"), &b.norm2));
                }
                out.push(("final_norm".to_string(), final_norm));
            }
        }
        for e in &self.exits {
            out.push((format!("exits.{}.norm", e.after_block), &e.norm));
        }
        out
    }

    /// Number of residual blocks of the body.
    pub fn blocks(&self) -> usize {
        match &self.body {
            Body::Resnet { blocks, .. } => blocks.len(),
            Body::Wide { blocks, .. } => blocks.len(),
        }
    }

    /// Index of a trained width ([`same_setting`]).
    pub fn width_index(&self, width: f64) -> Result<usize> {
        self.widths
            .iter()
            .position(|&w| same_setting(w, width))
            .ok_or_else(|| Error::Width {
                value: width,
                available: self.widths.clone(),
            })
    }

    /// Gives every site its empty BN slots ([width][branch]) so a tensor walk can fill them.
    pub(crate) fn prepare_slots(&mut self) {
        let (nw, nb) = (self.widths.len(), self.branches);
        let fill = |s: &mut NormSite| s.bn = vec![vec![Bn::default(); nb]; nw];
        match &mut self.body {
            Body::Resnet {
                stem_norm, blocks, ..
            } => {
                fill(stem_norm);
                for b in blocks {
                    fill(&mut b.norm1);
                    fill(&mut b.norm2);
                    if let Some(sc) = &mut b.shortcut {
                        fill(&mut sc.norm);
                    }
                }
            }
            Body::Wide {
                blocks, final_norm, ..
            } => {
                for b in blocks {
                    fill(&mut b.norm1);
                    fill(&mut b.norm2);
                }
                fill(final_norm);
            }
        }
        for e in &mut self.exits {
            fill(&mut e.norm);
        }
    }

    /// Checks the structure, before any tensor is looked at: every size within
    /// [`crate::limits`], and every layer consistent with what flows into it at every width
    /// (channels, spatial size, residual sums, classifier input), so that lowering any
    /// (λ, width) builds a well-formed graph. The total tensor size is bounded too.
    pub fn validate(&self) -> Result<()> {
        if self.name.chars().count() > MAX_NAME_CHARS || self.name.chars().any(|c| c.is_control()) {
            return Err(Error::invalid(
                "architecture.name",
                &self.name,
                format!("must be at most {MAX_NAME_CHARS} printable characters"),
            ));
        }
        let [c, h, w] = self.input;
        bounded("architecture.input[0] (channels)", c, 1, MAX_INPUT_CHANNELS)?;
        bounded("architecture.input[1] (height)", h, 1, MAX_INPUT_SIDE)?;
        bounded("architecture.input[2] (width)", w, 1, MAX_INPUT_SIDE)?;
        if self.widths.is_empty() || self.widths.len() > MAX_WIDTHS {
            return Err(Error::invalid(
                "architecture.widths",
                format!("{} values", self.widths.len()),
                format!("need 1..={MAX_WIDTHS}"),
            ));
        }
        for &wd in &self.widths {
            if !(wd.is_finite() && wd > 0.0 && wd <= 1.0) {
                return Err(Error::invalid(
                    "architecture.widths[]",
                    wd,
                    "must be in (0, 1]",
                ));
            }
        }
        if !self
            .widths
            .windows(2)
            .all(|p| p[1] - p[0] >= SAME_SETTING_TOL)
        {
            return Err(Error::invalid(
                "architecture.widths",
                format!("{:?}", self.widths),
                "must be strictly increasing",
            ));
        }
        if !(1..=2).contains(&self.branches) {
            return Err(Error::invalid(
                "architecture.branches",
                self.branches,
                "must be 1 (single BN) or 2 (clean and adversarial BN)",
            ));
        }
        if let Some(d) = self.encoding_dim {
            bounded("architecture.encoding_dim", d, 1, MAX_ENCODING_DIM)?;
        }
        if !(self.bn_eps.is_finite() && self.bn_eps > 0.0 && self.bn_eps <= 1.0) {
            return Err(Error::invalid(
                "architecture.bn_eps",
                self.bn_eps,
                "must be in (0, 1]",
            ));
        }
        let mut flow = Flow {
            arch: self,
            channels: vec![c; self.widths.len()],
            hw: (h, w),
        };
        // The activation after each block, where a side exit may read it.
        let mut taps = Vec::new();
        match &self.body {
            Body::Resnet {
                stem,
                stem_norm,
                blocks,
            } => {
                bounded("architecture.body.blocks", blocks.len(), 0, MAX_BLOCKS)?;
                flow.conv("stem", stem)?;
                flow.site("stem_norm", stem_norm)?;
                for (i, b) in blocks.iter().enumerate() {
                    let input = flow.clone_state();
                    flow.conv(&format!("blocks.{i}.conv1"), &b.conv1)?;
                    flow.site(&format!("blocks.{i}.norm1"), &b.norm1)?;
                    flow.conv(&format!("blocks.{i}.conv2"), &b.conv2)?;
                    flow.site(&format!("blocks.{i}.norm2"), &b.norm2)?;
                    let main = flow.clone_state();
                    flow.set_state(input);
                    if let Some(sc) = &b.shortcut {
                        flow.conv(&format!("blocks.{i}.shortcut"), &sc.conv)?;
                        flow.site(&format!("blocks.{i}.shortcut_norm"), &sc.norm)?;
                    }
                    flow.same_as(&format!("blocks.{i} (residual sum)"), &main)?;
                    taps.push(flow.clone_state());
                }
            }
            Body::Wide {
                stem,
                blocks,
                final_norm,
            } => {
                bounded("architecture.body.blocks", blocks.len(), 0, MAX_BLOCKS)?;
                flow.conv("stem", stem)?;
                for (i, b) in blocks.iter().enumerate() {
                    let input = flow.clone_state();
                    flow.site(&format!("blocks.{i}.norm1"), &b.norm1)?;
                    let activated = flow.clone_state();
                    flow.conv(&format!("blocks.{i}.conv1"), &b.conv1)?;
                    flow.site(&format!("blocks.{i}.norm2"), &b.norm2)?;
                    flow.conv(&format!("blocks.{i}.conv2"), &b.conv2)?;
                    let main = flow.clone_state();
                    match &b.shortcut {
                        Some(sc) => {
                            flow.set_state(activated);
                            flow.conv(&format!("blocks.{i}.shortcut"), sc)?;
                        }
                        None => flow.set_state(input),
                    }
                    flow.same_as(&format!("blocks.{i} (residual sum)"), &main)?;
                    taps.push(flow.clone_state());
                }
                flow.site("final_norm", final_norm)?;
            }
        }
        let fc = &self.classifier;
        bounded(
            "architecture.classifier.in_features",
            fc.in_features,
            1,
            MAX_LAYER_CHANNELS,
        )?;
        bounded(
            "architecture.classifier.classes",
            fc.classes,
            1,
            MAX_CLASSES,
        )?;
        for (wi, &wd) in self.widths.iter().enumerate() {
            let want = channels_at(fc.in_features, wd);
            if want != flow.channels[wi] {
                return Err(Error::invalid(
                    "architecture.classifier.in_features",
                    fc.in_features,
                    format!(
                        "reads {want} features at width {wd}, but the body gives {}",
                        flow.channels[wi]
                    ),
                ));
            }
        }
        let classes = fc.classes;
        let mut previous = 0;
        for (j, e) in self.exits.iter().enumerate() {
            let field = format!("architecture.exits[{j}].after_block");
            if e.after_block <= previous || e.after_block >= taps.len() {
                return Err(Error::invalid(
                    field,
                    e.after_block,
                    format!(
                        "exits must follow strictly increasing blocks in 1..={} (the final \
                         classifier is the last exit)",
                        taps.len().saturating_sub(1)
                    ),
                ));
            }
            previous = e.after_block;
            let name = format!("exits.{}", e.after_block);
            flow.set_state(taps[e.after_block - 1].clone());
            flow.conv(&format!("{name}.conv"), &e.conv)?;
            flow.site(&format!("{name}.norm"), &e.norm)?;
            let fc = &e.classifier;
            if fc.classes != classes {
                return Err(Error::invalid(
                    format!("architecture {name}.classifier.classes"),
                    fc.classes,
                    format!("the final classifier has {classes} classes"),
                ));
            }
            for (wi, &wd) in self.widths.iter().enumerate() {
                let want = channels_at(fc.in_features, wd);
                if want != flow.channels[wi] {
                    return Err(Error::invalid(
                        format!("architecture {name}.classifier.in_features"),
                        fc.in_features,
                        format!(
                            "reads {want} features at width {wd}, but the head gives {}",
                            flow.channels[wi]
                        ),
                    ));
                }
            }
        }
        let total = self.slots().iter().try_fold(0u64, |acc, s| {
            let n = s
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))?;
            acc.checked_add(n)
        });
        match total {
            Some(n) if n <= MAX_VALUES => Ok(()),
            _ => Err(Error::invalid(
                "architecture",
                total.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string()),
                format!("declares more than {MAX_VALUES} tensor values in all"),
            )),
        }
    }
}

fn bounded(field: &str, v: usize, lo: usize, hi: usize) -> Result<()> {
    if v < lo || v > hi {
        return Err(Error::invalid(field, v, format!("must be in {lo}..={hi}")));
    }
    Ok(())
}

/// Channels per width and spatial size of the activation, followed through the network.
struct Flow<'a> {
    arch: &'a Architecture,
    channels: Vec<usize>,
    hw: (usize, usize),
}

impl Flow<'_> {
    fn clone_state(&self) -> (Vec<usize>, (usize, usize)) {
        (self.channels.clone(), self.hw)
    }

    fn set_state(&mut self, s: (Vec<usize>, (usize, usize))) {
        (self.channels, self.hw) = s;
    }

    fn conv(&mut self, name: &str, c: &Conv) -> Result<()> {
        let f = |field: &str| format!("architecture {name}.{field}");
        bounded(&f("in_channels"), c.in_channels, 1, MAX_LAYER_CHANNELS)?;
        bounded(&f("out_channels"), c.out_channels, 1, MAX_LAYER_CHANNELS)?;
        bounded(&f("kernel"), c.kernel, 1, MAX_KERNEL)?;
        bounded(&f("stride"), c.stride, 1, MAX_STRIDE)?;
        bounded(&f("padding"), c.padding, 0, c.kernel - 1)?;
        for (wi, &w) in self.arch.widths.iter().enumerate() {
            if c.in_at(w) != self.channels[wi] {
                return Err(Error::invalid(
                    f("in_channels"),
                    c.in_channels,
                    format!(
                        "reads {} channels at width {w}, but {} flow into it",
                        c.in_at(w),
                        self.channels[wi]
                    ),
                ));
            }
            self.channels[wi] = channels_at(c.out_channels, w);
        }
        let (h, w) = self.hw;
        if h + 2 * c.padding < c.kernel || w + 2 * c.padding < c.kernel {
            return Err(Error::invalid(
                f("kernel"),
                c.kernel,
                format!("larger than its padded {h}×{w} input"),
            ));
        }
        let out = |s: usize| {
            conv_out(s as i64, c.kernel as i64, c.stride as i64, c.padding as i64) as usize
        };
        self.hw = (out(h), out(w));
        Ok(())
    }

    fn site(&mut self, name: &str, s: &NormSite) -> Result<()> {
        bounded(
            &format!("architecture {name}.channels"),
            s.channels,
            1,
            MAX_LAYER_CHANNELS,
        )?;
        for (wi, &w) in self.arch.widths.iter().enumerate() {
            if channels_at(s.channels, w) != self.channels[wi] {
                return Err(Error::invalid(
                    format!("architecture {name}.channels"),
                    s.channels,
                    format!(
                        "normalises {} channels at width {w}, but {} flow into it",
                        channels_at(s.channels, w),
                        self.channels[wi]
                    ),
                ));
            }
        }
        if s.film.is_some() && self.arch.encoding_dim.is_none() {
            return Err(Error::invalid(
                format!("architecture {name}.film"),
                true,
                "a FiLM site needs a λ encoding (architecture.encoding_dim)",
            ));
        }
        Ok(())
    }

    /// The two operands of a residual sum must agree at every width.
    fn same_as(&self, name: &str, other: &(Vec<usize>, (usize, usize))) -> Result<()> {
        if (&self.channels, self.hw) != (&other.0, other.1) {
            return Err(Error::invalid(
                format!("architecture {name}"),
                format!(
                    "{:?} channels of {}×{} + {:?} channels of {}×{}",
                    other.0, other.1 .0, other.1 .1, self.channels, self.hw.0, self.hw.1
                ),
                "the two operands differ",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_at_truncates_like_the_reference() {
        assert_eq!(channels_at(16, 0.5), 8);
        assert_eq!(channels_at(16, 0.75), 12);
        assert_eq!(channels_at(10, 0.75), 7);
        assert_eq!(channels_at(3, 0.1), 1, "at least one channel");
        assert_eq!(channels_at(512, 1.0), 512);
    }
}
