//! The λ encoding fed to every FiLM layer (docs/method.md §2).
//!
//! Training value λ_j is encoded as row j of an orthogonal matrix Q (QR of a D×D Gaussian
//! matrix). Unlike the reference, Q is stored in the checkpoint: regenerating it on resume
//! would silently give a resumed model different encodings.
//!
//! Unseen λ: a λ strictly between two training values λ_j < λ < λ_{j+1} is encoded as the
//! linear interpolation (1−t)·q_j + t·q_{j+1}, t = (λ−λ_j)/(λ_{j+1}−λ_j). The reference maps
//! unknown λ to index 0 silently; we define it instead. λ outside the training range, or
//! outside [0, 1], or NaN, is an error. Any λ > 0 uses the adversarial BN.
use tch::{Device, Kind, Tensor};

use crate::config::same_setting;
use crate::error::{Result, TrainError};

#[derive(Debug)]
pub struct LambdaEncoding {
    /// Training λ values, strictly increasing.
    pub lambdas: Vec<f64>,
    /// Rows q_j, shape [len(lambdas), D].
    pub rows: Tensor,
}

impl LambdaEncoding {
    /// Draws a fresh encoding from `seed` (only when a run starts; resumes load it). The
    /// Gaussian matrix comes from a private RNG (Box–Muller over `StdRng`), not torch's
    /// global one, so concurrent model construction cannot change it.
    pub fn generate(lambdas: &[f64], dim: usize, seed: u64, device: Device) -> Self {
        use rand::{Rng, SeedableRng};
        let _guard = tch::no_grad_guard();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5e_ed1a_3bda);
        let gauss: Vec<f64> = (0..dim * dim)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.gen_range(f64::MIN_POSITIVE..1.0), rng.gen());
                (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect();
        let g = Tensor::from_slice(&gauss).view([dim as i64, dim as i64]);
        let (q, _r) = Tensor::linalg_qr(&g, "reduced");
        let rows = q
            .narrow(0, 0, lambdas.len() as i64)
            .to_kind(Kind::Float)
            .to_device(device);
        LambdaEncoding {
            lambdas: lambdas.to_vec(),
            rows,
        }
    }

    pub fn dim(&self) -> i64 {
        self.rows.size()[1]
    }

    /// Index of a training λ (the same setting, see [`same_setting`]).
    pub fn index_of(&self, lambda: f64) -> Option<usize> {
        self.lambdas.iter().position(|&l| same_setting(l, lambda))
    }

    /// The encoding of one λ, shape [1, D], training value or interpolated.
    pub fn encode(&self, lambda: f64) -> Result<Tensor> {
        check_lambda(lambda)?;
        if let Some(j) = self.index_of(lambda) {
            return Ok(self.rows.narrow(0, j as i64, 1));
        }
        let hi = self.lambdas.iter().position(|&l| l > lambda);
        match hi {
            Some(h) if h > 0 => {
                let (a, b) = (self.lambdas[h - 1], self.lambdas[h]);
                let t = (lambda - a) / (b - a);
                let qa = self.rows.narrow(0, h as i64 - 1, 1);
                let qb = self.rows.narrow(0, h as i64, 1);
                Ok(qa * (1.0 - t) + qb * t)
            }
            _ => Err(TrainError::Lambda {
                value: lambda,
                reason: format!("outside the trained range {:?}", self.lambdas),
            }),
        }
    }

    /// Per-sample encodings [B, D] for training indices.
    pub fn rows_for(&self, indices: &Tensor) -> Tensor {
        self.rows.index_select(0, indices)
    }
}

/// λ must be a finite number in [0, 1].
pub fn check_lambda(lambda: f64) -> Result<()> {
    if !lambda.is_finite() || !(0.0..=1.0).contains(&lambda) {
        return Err(TrainError::Lambda {
            value: lambda,
            reason: "λ must be a finite number in [0, 1]".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc() -> LambdaEncoding {
        LambdaEncoding::generate(&[0.0, 0.1, 0.2, 0.3, 0.4, 1.0], 128, 7, Device::Cpu)
    }

    #[test]
    fn rows_are_orthonormal() {
        let e = enc();
        let gram = e.rows.matmul(&e.rows.tr());
        let eye = Tensor::eye(6, (Kind::Float, Device::Cpu));
        let err = (gram - eye).abs().max().double_value(&[]);
        assert!(err < 1e-5, "max |QQᵀ − I| = {err}");
    }

    #[test]
    fn same_seed_same_encoding() {
        let (a, b) = (enc(), enc());
        assert_eq!((a.rows - b.rows).abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn interpolates_between_neighbours() {
        let e = enc();
        let mid = e.encode(0.7).unwrap();
        let want = e.rows.narrow(0, 4, 1) * 0.5 + e.rows.narrow(0, 5, 1) * 0.5;
        assert!((mid - want).abs().max().double_value(&[]) < 1e-6);
        let exact = e.encode(0.2).unwrap();
        assert_eq!(
            (exact - e.rows.narrow(0, 2, 1))
                .abs()
                .max()
                .double_value(&[]),
            0.0
        );
    }

    #[test]
    fn rejects_out_of_range() {
        let e = enc();
        for bad in [f64::NAN, -0.1, 1.01, f64::INFINITY] {
            assert!(e.encode(bad).is_err(), "{bad}");
        }
        let narrow = LambdaEncoding::generate(&[0.0, 0.5], 16, 1, Device::Cpu);
        assert!(narrow.encode(0.7).is_err(), "above the trained range");
    }
}
