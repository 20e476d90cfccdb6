//! Eval-mode BN∘FiLM at one (λ, width) as a per-channel affine y = s·x + t: the arithmetic
//! the exporter and a device share (docs/method.md §6; the trainer's `NormSite::affine`).
//!
//! * BN (eval): s_bn = w/√(σ² + ε), t_bn = b − μ·s_bn.
//! * FiLM (reference semantics, `oats_train::nn::Film::gamma_beta`): at width w with
//!   C_w = channels_at(C, w) the shared MLP is sliced to its first 2·C_w rows (and columns of
//!   the second layer): h = leaky(W1[:2C_w]·e + b1[:2C_w]), o = W2[:2C_w, :2C_w]·h + b2[:2C_w],
//!   γ = leaky(o[:C_w]), β = leaky(o[C_w:2C_w]), leaky = LeakyReLU(0.01). So β at a narrow
//!   width reuses rows that are γ at full width, as the reference does.
//! * Together: s = γ·s_bn, t = γ·t_bn + β.
//!
//! Everything is f32 like the trainer, except that dot products accumulate in f64 and round
//! once: the result is then independent of summation order, within an ulp or two of any f32
//! BLAS order (the trainer's), far below the 1e-5 the derived logits are held to.
use crate::arch::{Bn, Film};

/// Negative slope of the FiLM MLP's LeakyReLU (PyTorch's default, as in the reference).
pub const FILM_NEGATIVE_SLOPE: f32 = 0.01;

/// A per-channel affine y = scale·x + shift.
#[derive(Debug, Clone, PartialEq)]
pub struct Affine {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

impl Affine {
    /// Whether every value is finite (finite inputs can still overflow f32).
    pub fn is_finite(&self) -> bool {
        self.scale.iter().chain(&self.shift).all(|v| v.is_finite())
    }
}

fn leaky(x: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        x * FILM_NEGATIVE_SLOPE
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum::<f64>() as f32
}

/// Eval-mode BN as an affine (`oats_train::nn::Bn::affine`).
pub(crate) fn bn_affine(bn: &Bn, eps: f64) -> Affine {
    let eps = eps as f32;
    let scale: Vec<f32> = bn
        .weight
        .iter()
        .zip(&bn.running_var)
        .map(|(&w, &v)| w * (1.0 / (v + eps).sqrt()))
        .collect();
    let shift = bn
        .bias
        .iter()
        .zip(&bn.running_mean)
        .zip(&scale)
        .map(|((&b, &m), &s)| b - m * s)
        .collect();
    Affine { scale, shift }
}

/// (γ, β) of a FiLM MLP of full width `channels` at `cw` channels for encoding `enc` [D].
/// The shapes are the package's (validated when it was built or loaded).
pub(crate) fn film_gamma_beta(
    film: &Film,
    channels: usize,
    cw: usize,
    enc: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let d = enc.len();
    let h: Vec<f32> = film
        .w1
        .chunks_exact(d.max(1))
        .zip(&film.b1)
        .take(2 * cw)
        .map(|(row, &b)| leaky(dot(row, enc) + b))
        .collect();
    let out: Vec<f32> = film
        .w2
        .chunks_exact((2 * channels).max(1))
        .zip(&film.b2)
        .take(2 * cw)
        .map(|(row, &b)| dot(&row[..h.len().min(row.len())], &h) + b)
        .collect();
    let gamma = out.iter().take(cw).map(|&x| leaky(x)).collect();
    let beta = out.iter().skip(cw).take(cw).map(|&x| leaky(x)).collect();
    (gamma, beta)
}

/// BN then FiLM: s = γ·s_bn, t = γ·t_bn + β (`oats_train::nn::NormSite::affine`).
pub(crate) fn site_affine(bn: &Bn, eps: f64, film: Option<(&Film, usize, &[f32])>) -> Affine {
    let a = bn_affine(bn, eps);
    match film {
        None => a,
        Some((film, channels, enc)) => {
            let cw = a.scale.len();
            let (g, b) = film_gamma_beta(film, channels, cw, enc);
            Affine {
                scale: g.iter().zip(&a.scale).map(|(g, s)| g * s).collect(),
                shift: g
                    .iter()
                    .zip(&a.shift)
                    .zip(&b)
                    .map(|((g, t), b)| g * t + b)
                    .collect(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bn_affine_is_the_eval_formula() {
        let bn = Bn {
            weight: vec![2.0, 0.5],
            bias: vec![1.0, -1.0],
            running_mean: vec![0.5, 2.0],
            running_var: vec![4.0, 0.25],
        };
        let a = bn_affine(&bn, 0.0);
        assert_eq!(a.scale, vec![1.0, 1.0]);
        assert_eq!(a.shift, vec![0.5, -3.0]);
    }

    /// Full width: γ and β are the two halves of the MLP output; a narrow width slices the
    /// same MLP (β reads rows that are γ at full width).
    #[test]
    fn film_slices_the_shared_mlp_like_the_reference() {
        // C = 2, D = 1: W1 = [1, 2, 3, 4]ᵀ, b1 = 0, W2 = I (4×4), b2 = 0, e = [1].
        let mut w2 = vec![0.0; 16];
        for i in 0..4 {
            w2[i * 4 + i] = 1.0;
        }
        let film = Film {
            w1: vec![1.0, 2.0, 3.0, -4.0],
            b1: vec![0.0; 4],
            w2,
            b2: vec![0.0; 4],
        };
        let (g, b) = film_gamma_beta(&film, 2, 2, &[1.0]);
        assert_eq!(g, vec![1.0, 2.0]);
        assert_eq!(
            b,
            vec![3.0, -4.0 * 0.01 * 0.01],
            "leaky twice on a negative"
        );
        let (g, b) = film_gamma_beta(&film, 2, 1, &[1.0]);
        assert_eq!((g, b), (vec![1.0], vec![2.0]), "width 0.5: rows 0..2 only");
    }
}
