//! Layers of a slimmable, λ-conditioned network: convolutions and a classifier that use
//! the first k channels of their full-width weights, and a normalisation site that holds
//! one BN per (width, branch) plus an optional FiLM MLP.
//!
//! Initialisation is PyTorch's default, set explicitly (tch's defaults differ): conv and
//! linear weights and biases U(±1/√fan_in), BN weight 1 and bias 0.
use std::sync::atomic::{AtomicI64, Ordering};

use tch::nn::{Init, Path};
use tch::Tensor;

/// Number of channels a width factor keeps: `int(C·w)` as in the reference, at least 1.
pub fn channels_at(c: i64, width: f64) -> i64 {
    ((c as f64 * width) as i64).max(1)
}

/// How one forward pass runs: train/eval (BN statistics and dropout) and which width. (Not
/// the training mode of the config, [`crate::config::Mode`].)
/// Passed explicitly so that "attacks run in eval mode" stays visible at every call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pass {
    pub train: bool,
    /// Index into the network's width list.
    pub width: usize,
}

/// Per-batch conditioning: the λ encodings of the rows (None for unconditioned networks),
/// and how many leading rows take the clean BN branch (λ = 0 rows are placed first).
#[derive(Debug)]
pub struct Cond {
    /// [B, D] or [1, D] (broadcast) encodings.
    pub enc: Option<Tensor>,
    /// Leading rows routed to BN_c; the rest go to BN_a. Ignored with a single BN.
    pub n_clean: i64,
}

impl Cond {
    pub fn narrow(&self, start: i64, len: i64, batch: i64) -> Cond {
        let enc = self.enc.as_ref().map(|e| {
            if e.size()[0] == batch {
                e.narrow(0, start, len)
            } else {
                e.shallow_clone()
            }
        });
        let n_clean = (self.n_clean - start).clamp(0, len);
        Cond { enc, n_clean }
    }
}

fn uniform(fan_in: i64) -> Init {
    let b = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// A convolution whose width-w version uses weight[..C_out·w, ..C_in·w].
#[derive(Debug)]
pub struct SlimConv {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub out_channels: i64,
    pub in_channels: i64,
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
    /// The stem always takes every image channel.
    pub fixed_input: bool,
}

impl SlimConv {
    pub fn new(
        p: Path,
        cin: i64,
        cout: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        fixed_input: bool,
    ) -> Self {
        let fan_in = cin * kernel * kernel;
        let weight = p.var("weight", &[cout, cin, kernel, kernel], uniform(fan_in));
        SlimConv {
            weight,
            bias: None,
            out_channels: cout,
            in_channels: cin,
            kernel,
            stride,
            padding,
            fixed_input,
        }
    }

    pub fn in_at(&self, width: f64) -> i64 {
        if self.fixed_input {
            self.in_channels
        } else {
            channels_at(self.in_channels, width)
        }
    }

    /// The weight slice used at `width`: [C_out·w, C_in·w, k, k].
    pub fn weight_at(&self, width: f64) -> Tensor {
        self.weight
            .narrow(0, 0, channels_at(self.out_channels, width))
            .narrow(1, 0, self.in_at(width))
    }

    pub fn forward(&self, xs: &Tensor, width: f64) -> Tensor {
        xs.conv2d(
            &self.weight_at(width),
            self.bias.as_ref(),
            [self.stride; 2],
            [self.padding; 2],
            [1; 2],
            1,
        )
    }
}

/// The classifier: the width-w subnetwork reads the first C·w features, all classes out.
#[derive(Debug)]
pub struct SlimLinear {
    pub weight: Tensor,
    pub bias: Tensor,
    pub in_features: i64,
    pub classes: i64,
}

impl SlimLinear {
    pub fn new(p: Path, fin: i64, classes: i64) -> Self {
        let weight = p.var("weight", &[classes, fin], uniform(fin));
        let bias = p.var("bias", &[classes], uniform(fin));
        SlimLinear {
            weight,
            bias,
            in_features: fin,
            classes,
        }
    }

    pub fn weight_at(&self, width: f64) -> Tensor {
        self.weight
            .narrow(1, 0, channels_at(self.in_features, width))
    }

    pub fn forward(&self, xs: &Tensor, width: f64) -> Tensor {
        xs.linear(&self.weight_at(width), Some(&self.bias))
    }
}

/// One batch-norm layer (affine, running statistics).
#[derive(Debug)]
pub struct Bn {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    /// Samples normalised in train mode (which update the running statistics) since the
    /// last [`Bn::take_seen`]. Data-parallel training averages the ranks' running statistics
    /// weighted by it: a rank that routed no sample through this BN (e.g. no adversarial
    /// rows in its shards) holds stale statistics and must not count.
    seen: AtomicI64,
}

pub const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

impl Bn {
    fn new(p: Path, c: i64) -> Self {
        Bn {
            weight: p.var("weight", &[c], Init::Const(1.0)),
            bias: p.var("bias", &[c], Init::Const(0.0)),
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
            seen: AtomicI64::new(0),
        }
    }

    /// The samples counted since the last call, resetting the count.
    pub fn take_seen(&self) -> i64 {
        self.seen.swap(0, Ordering::Relaxed)
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            self.seen.fetch_add(xs.size()[0], Ordering::Relaxed);
        }
        Tensor::batch_norm(
            xs,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            false,
        )
    }

    /// Eval-mode BN as a per-channel affine: (scale, shift).
    pub fn affine(&self) -> (Tensor, Tensor) {
        let inv = (&self.running_var + BN_EPS).rsqrt();
        let scale = &self.weight * inv;
        let shift = &self.bias - &self.running_mean * &scale;
        (scale, shift)
    }
}

/// FiLM MLP (reference semantics): Linear(D→2C) → LeakyReLU(0.01) → Linear(2C→2C);
/// γ = leaky_relu(out[:C]), β = leaky_relu(out[C:2C]); applied as y = γ·x + β. At width w
/// the MLP is sliced to its first 2·C_w rows/columns, as the reference does (so β at a
/// narrow width reuses rows that are γ at full width; documented in DESIGN.md).
#[derive(Debug)]
pub struct Film {
    pub w1: Tensor,
    pub b1: Tensor,
    pub w2: Tensor,
    pub b2: Tensor,
}

impl Film {
    fn new(p: Path, dim: i64, c: i64) -> Self {
        Film {
            w1: p.var("fc1_weight", &[2 * c, dim], uniform(dim)),
            b1: p.var("fc1_bias", &[2 * c], uniform(dim)),
            w2: p.var("fc2_weight", &[2 * c, 2 * c], uniform(2 * c)),
            b2: p.var("fc2_bias", &[2 * c], uniform(2 * c)),
        }
    }

    /// (γ, β), each [rows of enc, cw].
    pub fn gamma_beta(&self, enc: &Tensor, cw: i64) -> (Tensor, Tensor) {
        let h = enc
            .linear(
                &self.w1.narrow(0, 0, 2 * cw),
                Some(&self.b1.narrow(0, 0, 2 * cw)),
            )
            .leaky_relu();
        let out = h.linear(
            &self.w2.narrow(0, 0, 2 * cw).narrow(1, 0, 2 * cw),
            Some(&self.b2.narrow(0, 0, 2 * cw)),
        );
        (
            out.narrow(1, 0, cw).leaky_relu(),
            out.narrow(1, cw, cw).leaky_relu(),
        )
    }
}

/// Which BN of a dual pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    Clean = 0,
    Adv = 1,
}

impl Branch {
    /// λ = 0 → clean BN, λ > 0 → adversarial BN (reference rule).
    pub fn for_lambda(lambda: f64) -> Branch {
        if lambda > 0.0 {
            Branch::Adv
        } else {
            Branch::Clean
        }
    }
}

/// A normalisation site: BN (per width; dual or single) followed by optional FiLM.
#[derive(Debug)]
pub struct NormSite {
    pub channels: i64,
    pub widths: Vec<f64>,
    /// bns[width][branch]; one branch when the network uses a single BN.
    pub bns: Vec<Vec<Bn>>,
    pub film: Option<Film>,
}

impl NormSite {
    pub fn new(p: &Path, c: i64, widths: &[f64], dual: bool, film_dim: Option<i64>) -> Self {
        let bns = widths
            .iter()
            .enumerate()
            .map(|(wi, &w)| {
                let cw = channels_at(c, w);
                let branches: &[&str] = if dual { &["clean", "adv"] } else { &["bn"] };
                branches
                    .iter()
                    .map(|b| Bn::new(p / format!("w{wi}") / *b, cw))
                    .collect()
            })
            .collect();
        let film = film_dim.map(|d| Film::new(p / "film", d, c));
        NormSite {
            channels: c,
            widths: widths.to_vec(),
            bns,
            film,
        }
    }

    /// Every BN of the site, width by width.
    pub fn all_bns(&self) -> impl Iterator<Item = &Bn> {
        self.bns.iter().flatten()
    }

    pub fn dual(&self) -> bool {
        self.bns.first().is_some_and(|b| b.len() == 2)
    }

    fn bn(&self, width: usize, branch: Branch) -> &Bn {
        let set = &self.bns[width];
        &set[(branch as usize).min(set.len() - 1)]
    }

    pub fn forward(&self, xs: &Tensor, cond: &Cond, pass: Pass) -> Tensor {
        let b = xs.size()[0];
        let ys = if self.dual() {
            let n0 = cond.n_clean.clamp(0, b);
            let mut parts = Vec::with_capacity(2);
            if n0 > 0 {
                parts.push(
                    self.bn(pass.width, Branch::Clean)
                        .forward(&xs.narrow(0, 0, n0), pass.train),
                );
            }
            if n0 < b {
                parts.push(
                    self.bn(pass.width, Branch::Adv)
                        .forward(&xs.narrow(0, n0, b - n0), pass.train),
                );
            }
            if parts.len() == 1 {
                parts.pop().unwrap_or_else(|| xs.shallow_clone())
            } else {
                Tensor::cat(&parts, 0)
            }
        } else {
            self.bn(pass.width, Branch::Clean).forward(xs, pass.train)
        };
        match (&self.film, &cond.enc) {
            (Some(film), Some(enc)) => {
                let cw = xs.size()[1];
                let (g, be) = film.gamma_beta(enc, cw);
                ys * g.view([-1, cw, 1, 1]) + be.view([-1, cw, 1, 1])
            }
            _ => ys,
        }
    }

    /// Eval-mode BN∘FiLM at one (λ encoding, branch, width) as a per-channel affine
    /// y = s·x + t (docs/method.md §6). This is what export folds into the convolution.
    pub fn affine(&self, enc: Option<&Tensor>, branch: Branch, width: usize) -> (Tensor, Tensor) {
        let (s, t) = self.bn(width, branch).affine();
        match (&self.film, enc) {
            (Some(film), Some(e)) => {
                let cw = s.size()[0];
                let (g, b) = film.gamma_beta(e, cw);
                let (g, b) = (g.view([cw]), b.view([cw]));
                (&g * s, g * t + b)
            }
            _ => (s, t),
        }
    }
}
