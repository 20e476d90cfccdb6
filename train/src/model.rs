//! The networks: a post-activation ResNet (CIFAR ResNet-34, the small preset) and a
//! pre-activation Wide ResNet (WRN-16-8, WRN-40-2), each optionally λ-conditioned (FiLM),
//! dual-BN and slimmable. One struct per block; every parameter path is built here, in
//! one place, and the exporter reads the tensors through these structs, never by name.
use tch::nn::{Path, VarStore};
use tch::Tensor;

use crate::config::{Arch, Norm, TrainConfig};
use crate::nn::{channels_at, Cond, NormSite, Pass, SlimConv, SlimLinear};

/// What a network is built from; saved in the checkpoint (as part of the config).
#[derive(Debug, Clone, PartialEq)]
pub struct NetSpec {
    pub arch: Arch,
    pub in_channels: i64,
    pub classes: i64,
    pub widths: Vec<f64>,
    pub dual_bn: bool,
    /// D of the λ encoding when FiLM-conditioned.
    pub film_dim: Option<i64>,
    /// Every channel count of the preset times this (capacity; 1 = the preset).
    pub channel_multiplier: i64,
    /// Side exits after these blocks (1-based; `exits.after_blocks`), none by default.
    pub exits: Vec<usize>,
}

impl NetSpec {
    pub fn from_config(cfg: &TrainConfig, in_channels: i64, classes: i64) -> Self {
        NetSpec {
            arch: cfg.arch,
            in_channels,
            classes,
            widths: cfg.widths.clone(),
            dual_bn: cfg.mode.conditioned() && cfg.norm == Norm::Dual,
            film_dim: cfg.mode.conditioned().then_some(cfg.encoding_dim as i64),
            channel_multiplier: cfg.channel_multiplier as i64,
            exits: cfg
                .exits
                .as_ref()
                .map(|e| e.after_blocks.clone())
                .unwrap_or_default(),
        }
    }
}

/// A side exit (RDI-Nets, docs/method.md §7): 3×3 stride-2 conv (channels kept) → BN/FiLM
/// (dual and switchable as in the body) → ReLU → global average pool → linear. Cheap next
/// to a block: one conv at a quarter of the block's resolution.
#[derive(Debug)]
pub struct ExitHead {
    /// The block it follows (1-based).
    pub after_block: usize,
    pub conv: SlimConv,
    pub norm: NormSite,
    pub fc: SlimLinear,
}

impl ExitHead {
    fn forward(&self, h: &Tensor, cond: &Cond, pass: Pass, w: f64) -> Tensor {
        let o = self
            .norm
            .forward(&self.conv.forward(h, w), cond, pass)
            .relu();
        let pooled = o.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        self.fc.forward(&pooled, w)
    }
}

/// Post-activation basic block: conv→BN→FiLM→ReLU→conv→BN→FiLM→(+shortcut)→ReLU; the
/// projection shortcut's 1×1 conv→BN has no FiLM.
#[derive(Debug)]
pub struct BasicBlock {
    pub conv1: SlimConv,
    pub norm1: NormSite,
    pub conv2: SlimConv,
    pub norm2: NormSite,
    pub shortcut: Option<(SlimConv, NormSite)>,
}

/// Pre-activation wide block: BN→FiLM→ReLU→conv→BN→FiLM→ReLU→dropout→conv (+shortcut);
/// when the shape changes the shortcut is a 1×1 conv of the activated input.
#[derive(Debug)]
pub struct WideBlock {
    pub norm1: NormSite,
    pub conv1: SlimConv,
    pub norm2: NormSite,
    pub conv2: SlimConv,
    pub shortcut: Option<SlimConv>,
    pub dropout: f64,
}

#[derive(Debug)]
pub enum Body {
    /// stem conv→norm→ReLU, basic blocks.
    ResNet {
        stem: SlimConv,
        stem_norm: NormSite,
        blocks: Vec<BasicBlock>,
    },
    /// stem conv, wide blocks, final BN (no FiLM)→ReLU.
    Wide {
        stem: SlimConv,
        blocks: Vec<WideBlock>,
        final_norm: NormSite,
    },
}

#[derive(Debug)]
pub struct Network {
    pub spec: NetSpec,
    pub body: Body,
    pub fc: SlimLinear,
    /// Side exits in block order (empty without `exits`).
    pub exits: Vec<ExitHead>,
}

/// Stages of a post-activation ResNet: (stem channels, [(channels, blocks, first stride)]),
/// every channel count times `m`.
fn resnet_stages(arch: Arch, m: i64) -> (i64, Vec<(i64, usize, i64)>) {
    let (c0, stages) = match arch {
        Arch::Small => (16, vec![(16, 1, 2), (32, 1, 2), (64, 1, 2)]),
        Arch::SmallDeep => (16, vec![(16, 3, 2), (32, 3, 2), (64, 3, 2)]),
        _ => (64, vec![(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]),
    };
    (
        c0 * m,
        stages.into_iter().map(|(c, n, s)| (c * m, n, s)).collect(),
    )
}

impl Network {
    pub fn new(p: &Path, spec: &NetSpec) -> Self {
        let ws = &spec.widths;
        let site = |p: Path, c: i64, film: bool| {
            NormSite::new(
                &p,
                c,
                ws,
                spec.dual_bn,
                if film { spec.film_dim } else { None },
            )
        };
        let mut block_channels: Vec<i64> = Vec::new();
        let (body, features) = match spec.arch {
            Arch::Small | Arch::SmallDeep | Arch::Resnet34 => {
                let (c0, stages) = resnet_stages(spec.arch, spec.channel_multiplier);
                let stem = SlimConv::new(p / "stem", spec.in_channels, c0, 3, 1, 1, true);
                let stem_norm = site(p / "stem_norm", c0, true);
                let mut blocks = Vec::new();
                let mut cin = c0;
                for (si, &(c, n, stride)) in stages.iter().enumerate() {
                    for bi in 0..n {
                        let q = p / format!("layer{}", si + 1) / bi.to_string();
                        let s = if bi == 0 { stride } else { 1 };
                        let shortcut = (s != 1 || cin != c).then(|| {
                            (
                                SlimConv::new(&q / "shortcut", cin, c, 1, s, 0, false),
                                site(&q / "shortcut_norm", c, false),
                            )
                        });
                        block_channels.push(c);
                        blocks.push(BasicBlock {
                            conv1: SlimConv::new(&q / "conv1", cin, c, 3, s, 1, false),
                            norm1: site(&q / "norm1", c, true),
                            conv2: SlimConv::new(&q / "conv2", c, c, 3, 1, 1, false),
                            norm2: site(&q / "norm2", c, true),
                            shortcut,
                        });
                        cin = c;
                    }
                }
                (
                    Body::ResNet {
                        stem,
                        stem_norm,
                        blocks,
                    },
                    cin,
                )
            }
            Arch::Wrn16_8 | Arch::Wrn40_2 => {
                let (depth, k) = if spec.arch == Arch::Wrn16_8 {
                    (16, 8)
                } else {
                    (40, 2)
                };
                let n = (depth - 4) / 6;
                let m = spec.channel_multiplier;
                let stem = SlimConv::new(p / "stem", spec.in_channels, 16 * m, 3, 1, 1, true);
                let mut blocks = Vec::new();
                let mut cin = 16 * m;
                for (gi, (c, stride)) in [(16 * k * m, 1), (32 * k * m, 2), (64 * k * m, 2)]
                    .into_iter()
                    .enumerate()
                {
                    for bi in 0..n {
                        let q = p / format!("group{}", gi + 1) / bi.to_string();
                        let s = if bi == 0 { stride } else { 1 };
                        block_channels.push(c);
                        blocks.push(WideBlock {
                            norm1: site(&q / "norm1", cin, true),
                            conv1: SlimConv::new(&q / "conv1", cin, c, 3, s, 1, false),
                            norm2: site(&q / "norm2", c, true),
                            conv2: SlimConv::new(&q / "conv2", c, c, 3, 1, 1, false),
                            shortcut: (cin != c)
                                .then(|| SlimConv::new(&q / "shortcut", cin, c, 1, s, 0, false)),
                            dropout: spec.arch.dropout(),
                        });
                        cin = c;
                    }
                }
                let final_norm = site(p / "final_norm", cin, false);
                (
                    Body::Wide {
                        stem,
                        blocks,
                        final_norm,
                    },
                    cin,
                )
            }
        };
        let fc = SlimLinear::new(p / "fc", features, spec.classes);
        let exits = spec
            .exits
            .iter()
            .filter_map(|&k| {
                let c = *block_channels.get(k.checked_sub(1)?)?;
                let q = p / "exits" / k.to_string();
                Some(ExitHead {
                    after_block: k,
                    conv: SlimConv::new(&q / "conv", c, c, 3, 2, 1, false),
                    norm: site(&q / "norm", c, true),
                    fc: SlimLinear::new(&q / "fc", c, spec.classes),
                })
            })
            .collect();
        Network {
            spec: spec.clone(),
            body,
            fc,
            exits,
        }
    }

    /// Every normalisation site, in forward order.
    pub fn norm_sites(&self) -> Vec<&NormSite> {
        let mut out = Vec::new();
        match &self.body {
            Body::ResNet {
                stem_norm, blocks, ..
            } => {
                out.push(stem_norm);
                for b in blocks {
                    out.extend([&b.norm1, &b.norm2]);
                    if let Some((_, n)) = &b.shortcut {
                        out.push(n);
                    }
                }
            }
            Body::Wide {
                blocks, final_norm, ..
            } => {
                for b in blocks {
                    out.extend([&b.norm1, &b.norm2]);
                }
                out.push(final_norm);
            }
        }
        out.extend(self.exits.iter().map(|e| &e.norm));
        out
    }

    /// Every BN layer (all sites, widths and branches), in one fixed order.
    pub fn all_bns(&self) -> Vec<&crate::nn::Bn> {
        self.norm_sites()
            .into_iter()
            .flat_map(NormSite::all_bns)
            .collect()
    }

    pub fn width(&self, pass: Pass) -> f64 {
        self.spec.widths[pass.width]
    }

    /// Logits [B, classes] of the final classifier. `cond.enc` must be set for conditioned
    /// networks. Side exits, if any, are not computed.
    pub fn forward(&self, xs: &Tensor, cond: &Cond, pass: Pass) -> Tensor {
        let h = self.body(xs, cond, pass, &mut |_, _| {});
        self.classify(&h, self.width(pass))
    }

    /// Logits of every exit, the side exits in block order and the final classifier last
    /// (just the final one without exits).
    pub fn forward_exits(&self, xs: &Tensor, cond: &Cond, pass: Pass) -> Vec<Tensor> {
        let w = self.width(pass);
        let mut outs = Vec::with_capacity(self.exits.len() + 1);
        let mut heads = self.exits.iter().peekable();
        let h = self.body(xs, cond, pass, &mut |k, h| {
            if let Some(head) = heads.next_if(|e| e.after_block == k) {
                outs.push(head.forward(h, cond, pass, w));
            }
        });
        outs.push(self.classify(&h, w));
        outs
    }

    fn classify(&self, h: &Tensor, w: f64) -> Tensor {
        let pooled = h.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        self.fc.forward(&pooled, w)
    }

    /// The body's features before pooling; `tap(k, h)` sees the output of block k (1-based).
    fn body(
        &self,
        xs: &Tensor,
        cond: &Cond,
        pass: Pass,
        tap: &mut dyn FnMut(usize, &Tensor),
    ) -> Tensor {
        let w = self.width(pass);
        match &self.body {
            Body::ResNet {
                stem,
                stem_norm,
                blocks,
            } => {
                let mut h = stem_norm.forward(&stem.forward(xs, w), cond, pass).relu();
                for (k, b) in blocks.iter().enumerate() {
                    let o = b.norm1.forward(&b.conv1.forward(&h, w), cond, pass).relu();
                    let o = b.norm2.forward(&b.conv2.forward(&o, w), cond, pass);
                    let sc = match &b.shortcut {
                        Some((conv, norm)) => norm.forward(&conv.forward(&h, w), cond, pass),
                        None => h,
                    };
                    h = (o + sc).relu();
                    tap(k + 1, &h);
                }
                h
            }
            Body::Wide {
                stem,
                blocks,
                final_norm,
            } => {
                let mut h = stem.forward(xs, w);
                for (k, b) in blocks.iter().enumerate() {
                    let a = b.norm1.forward(&h, cond, pass).relu();
                    let sc = match &b.shortcut {
                        Some(conv) => conv.forward(&a, w),
                        None => h,
                    };
                    let o = b.norm2.forward(&b.conv1.forward(&a, w), cond, pass).relu();
                    let o = o.dropout(b.dropout, pass.train);
                    h = b.conv2.forward(&o, w) + sc;
                    tap(k + 1, &h);
                }
                final_norm.forward(&h, cond, pass).relu()
            }
        }
    }

    /// Number of channels of the classifier input at a width (for tests and export).
    pub fn features_at(&self, width: f64) -> i64 {
        channels_at(self.fc.in_features, width)
    }
}

/// Total number of trainable parameters (BN running statistics excluded).
pub fn param_count(vs: &VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn count(arch: Arch, widths: &[f64], dual: bool, film: bool) -> i64 {
        let vs = VarStore::new(Device::Cpu);
        let spec = NetSpec {
            arch,
            in_channels: 3,
            classes: 10,
            widths: widths.to_vec(),
            dual_bn: dual,
            film_dim: film.then_some(128),
            channel_multiplier: 1,
            exits: vec![],
        };
        let _net = Network::new(&vs.root(), &spec);
        param_count(&vs)
    }

    /// Checksums from docs/method.md §2 (counted by instantiating the reference models).
    #[test]
    fn parameter_counts_match_the_reference_models() {
        let full = [1.0];
        let slim = [0.5, 0.75, 1.0];
        assert_eq!(
            count(Arch::Resnet34, &full, false, false),
            21_282_122,
            "plain ResNet-34"
        );
        assert_eq!(
            count(Arch::Resnet34, &full, true, true),
            33_355_466,
            "ResNet34-OAT"
        );
        assert_eq!(
            count(Arch::Wrn16_8, &full, true, true),
            16_228_922,
            "WRN-16-8-OAT"
        );
        assert_eq!(
            count(Arch::Wrn40_2, &full, true, true),
            3_886_394,
            "WRN-40-2-OAT"
        );
        assert_eq!(
            count(Arch::Resnet34, &slim, true, true),
            33_398_026,
            "SlimmableResNet34-OAT"
        );
        assert_eq!(
            count(Arch::Resnet34, &slim, false, false),
            21_303_402,
            "SlimmableResNet34 (PGD-ATS)"
        );
    }

    #[test]
    fn forward_shapes_at_every_width() {
        let vs = VarStore::new(Device::Cpu);
        let spec = NetSpec {
            arch: Arch::Small,
            in_channels: 1,
            classes: 10,
            widths: vec![0.5, 0.75, 1.0],
            dual_bn: true,
            film_dim: Some(16),
            channel_multiplier: 1,
            exits: vec![],
        };
        let net = Network::new(&vs.root(), &spec);
        let x = Tensor::rand([4, 1, 28, 28], (tch::Kind::Float, Device::Cpu));
        let enc = Tensor::randn([4, 16], (tch::Kind::Float, Device::Cpu));
        for wi in 0..3 {
            let cond = Cond {
                enc: Some(enc.shallow_clone()),
                n_clean: 2,
            };
            let y = net.forward(
                &x,
                &cond,
                Pass {
                    train: true,
                    width: wi,
                },
            );
            assert_eq!(y.size(), vec![4, 10]);
        }
    }

    /// The capacity knob multiplies every channel count: the small preset at ×2 has 32/64/128
    /// channels, its classifier reads 128 features, and slimming still takes the first
    /// `channels_at(C, w)` of them.
    #[test]
    fn channel_multiplier_scales_every_channel_count() {
        let vs = VarStore::new(Device::Cpu);
        let spec = NetSpec {
            arch: Arch::Small,
            in_channels: 1,
            classes: 10,
            widths: vec![0.5, 1.0],
            dual_bn: true,
            film_dim: Some(16),
            channel_multiplier: 2,
            exits: vec![],
        };
        let net = Network::new(&vs.root(), &spec);
        assert_eq!(net.fc.in_features, 128);
        assert_eq!(net.features_at(0.5), 64);
        let Body::ResNet { stem, blocks, .. } = &net.body else {
            panic!("small is a ResNet")
        };
        assert_eq!(stem.out_channels, 32);
        let outs: Vec<i64> = blocks.iter().map(|b| b.conv2.out_channels).collect();
        assert_eq!(outs, [32, 64, 128]);
        let x = Tensor::rand([2, 1, 28, 28], (tch::Kind::Float, Device::Cpu));
        let cond = Cond {
            enc: Some(Tensor::randn([2, 16], (tch::Kind::Float, Device::Cpu))),
            n_clean: 1,
        };
        let y = net.forward(
            &x,
            &cond,
            Pass {
                train: false,
                width: 0,
            },
        );
        assert_eq!(y.size(), [2, 10]);
        // Convolutions grow 4×, FiLM/BN/classifier 2×: more than twice the parameters.
        let vs1 = VarStore::new(Device::Cpu);
        let _n1 = Network::new(
            &vs1.root(),
            &NetSpec {
                channel_multiplier: 1,
                ..spec
            },
        );
        let (one, two) = (param_count(&vs1), param_count(&vs));
        assert!(two > 2 * one, "×2 channels: {two} vs {one}");
    }
}
