//! The trainer's model as an [`oats_graph::Package`]: the one place where export reads the
//! network's tch tensors. It walks the trainer's structs (`Body`, `SlimConv`, `NormSite`), never
//! parameter names, so the package cannot drift from the model; `Package::new` then checks
//! the result like any loaded package.
use oats_graph::arch::{
    self, Architecture, BasicBlock, Bn, ExitHead, Film, Linear, Pool, Shortcut, WideBlock,
};
use oats_graph::Package;
use oats_train::model::Body;
use oats_train::nn::{self, NormSite, SlimConv, SlimLinear};
use oats_train::TchModel;
use tch::{Kind, Tensor};

use crate::error::{ExportError, Result};

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(
        t.detach()
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .flatten(0, -1),
    )?)
}

fn size(what: &str, v: i64) -> Result<usize> {
    usize::try_from(v).map_err(|_| ExportError::Invalid(format!("{what} = {v} is negative")))
}

fn conv(c: &SlimConv) -> Result<arch::Conv> {
    if c.bias.is_some() {
        return Err(ExportError::Invalid(
            "a convolution with a bias (the package's convolutions are bias-free)".into(),
        ));
    }
    Ok(arch::Conv {
        in_channels: size("in_channels", c.in_channels)?,
        out_channels: size("out_channels", c.out_channels)?,
        kernel: size("kernel", c.kernel)?,
        stride: size("stride", c.stride)?,
        padding: size("padding", c.padding)?,
        fixed_input: c.fixed_input,
        weight: values(&c.weight)?,
    })
}

fn site(s: &NormSite) -> Result<arch::NormSite> {
    let bn = s
        .bns
        .iter()
        .map(|per_width| {
            per_width
                .iter()
                .map(|b| {
                    Ok(Bn {
                        weight: values(&b.weight)?,
                        bias: values(&b.bias)?,
                        running_mean: values(&b.running_mean)?,
                        running_var: values(&b.running_var)?,
                    })
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let film = s
        .film
        .as_ref()
        .map(|f| {
            Ok::<_, ExportError>(Film {
                w1: values(&f.w1)?,
                b1: values(&f.b1)?,
                w2: values(&f.w2)?,
                b2: values(&f.b2)?,
            })
        })
        .transpose()?;
    Ok(arch::NormSite {
        channels: size("channels", s.channels)?,
        film,
        bn,
    })
}

fn linear(fc: &SlimLinear) -> Result<Linear> {
    Ok(Linear {
        in_features: size("fc.in_features", fc.in_features)?,
        classes: size("fc.classes", fc.classes)?,
        weight: values(&fc.weight)?,
        bias: values(&fc.bias)?,
    })
}

/// The package of `model`: its structure, every tensor once (full width), the BN ε and the
/// λ encoding, and its side exits if it has any.
pub fn package(model: &TchModel) -> Result<Package> {
    let _ng = tch::no_grad_guard();
    let net = &model.net;
    let spec = &net.spec;
    let m = &model.meta;
    let body = match &net.body {
        Body::ResNet {
            stem,
            stem_norm,
            blocks,
        } => arch::Body::Resnet {
            stem: conv(stem)?,
            stem_norm: site(stem_norm)?,
            blocks: blocks
                .iter()
                .map(|b| {
                    Ok(BasicBlock {
                        conv1: conv(&b.conv1)?,
                        norm1: site(&b.norm1)?,
                        conv2: conv(&b.conv2)?,
                        norm2: site(&b.norm2)?,
                        shortcut: b
                            .shortcut
                            .as_ref()
                            .map(|(c, n)| {
                                Ok::<_, ExportError>(Shortcut {
                                    conv: conv(c)?,
                                    norm: site(n)?,
                                })
                            })
                            .transpose()?,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        },
        Body::Wide {
            stem,
            blocks,
            final_norm,
        } => arch::Body::Wide {
            stem: conv(stem)?,
            blocks: blocks
                .iter()
                .map(|b| {
                    Ok(WideBlock {
                        norm1: site(&b.norm1)?,
                        conv1: conv(&b.conv1)?,
                        norm2: site(&b.norm2)?,
                        conv2: conv(&b.conv2)?,
                        shortcut: b.shortcut.as_ref().map(conv).transpose()?,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            final_norm: site(final_norm)?,
        },
    };
    let architecture = Architecture {
        name: model.config().arch.to_string(),
        input: [
            size("in_channels", m.in_channels)?,
            size("height", m.height)?,
            size("width", m.width)?,
        ],
        widths: spec.widths.clone(),
        branches: if spec.dual_bn { 2 } else { 1 },
        encoding_dim: spec.film_dim.map(|d| size("encoding_dim", d)).transpose()?,
        bn_eps: nn::BN_EPS,
        body,
        pool: Pool::GlobalAverage,
        classifier: linear(&net.fc)?,
        exits: net
            .exits
            .iter()
            .map(|e| {
                Ok(ExitHead {
                    after_block: e.after_block,
                    conv: conv(&e.conv)?,
                    norm: site(&e.norm)?,
                    classifier: linear(&e.fc)?,
                })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let rows = model
        .encoding
        .as_ref()
        .map(|e| values(&e.rows))
        .transpose()?;
    Ok(Package::new(
        architecture,
        model.config().train_lambdas(),
        rows,
    )?)
}
