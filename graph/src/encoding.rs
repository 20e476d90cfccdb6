//! The λ a model was trained for, and how any λ becomes a FiLM input and a BN branch
//! (docs/method.md §2; the trainer's `oats_train::encoding`, reproduced here without tch).
//!
//! * A training value λ_j is encoded as row j of the stored matrix Q ([K, D]).
//! * λ strictly between two training values λ_j < λ < λ_{j+1}: the linear interpolation
//!   (1−t)·q_j + t·q_{j+1}, t = (λ−λ_j)/(λ_{j+1}−λ_j), computed as the trainer does (f32
//!   rows times f32 weights).
//! * Any λ > 0 uses the adversarial BN (of a dual-BN model); λ = 0 the clean one.
//! * λ outside the trained range, outside [0, 1], or NaN is an error.
//! * A model trained for one λ (PGD-AT / PGD-ATS, no encoding) takes only that λ.
use crate::arch::same_setting;
use crate::error::{Error, Result};

/// Which BN of a dual pair serves a λ.
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

/// The training λ values and, for a FiLM-conditioned model, their encoding rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoding {
    /// Training λ, strictly increasing, in [0, 1]; exactly one for an unconditioned model.
    pub lambdas: Vec<f64>,
    /// Rows q_j, [len(lambdas), D] row-major; `None` for an unconditioned model.
    pub rows: Option<Vec<f32>>,
    /// D (0 without rows).
    pub dim: usize,
}

/// What one λ needs at every site: its encoding (if conditioned) and its BN branch.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub lambda: f64,
    /// [D], `None` for an unconditioned model.
    pub encoding: Option<Vec<f32>>,
    pub branch: Branch,
}

/// λ must be a finite number in [0, 1].
pub fn check_lambda(lambda: f64) -> Result<()> {
    if !lambda.is_finite() || !(0.0..=1.0).contains(&lambda) {
        return Err(Error::Lambda {
            value: lambda,
            reason: "λ must be a finite number in [0, 1]".into(),
        });
    }
    Ok(())
}

impl Encoding {
    /// Index of a training λ ([`same_setting`]).
    pub fn index_of(&self, lambda: f64) -> Option<usize> {
        self.lambdas.iter().position(|&l| same_setting(l, lambda))
    }

    fn row(&self, rows: &[f32], j: usize) -> Vec<f32> {
        rows.iter()
            .skip(j * self.dim)
            .take(self.dim)
            .copied()
            .collect()
    }

    /// The encoding and BN branch of `lambda`: a training value's row, or the interpolation
    /// of its two neighbours. `dual`: whether the model has a clean and an adversarial BN.
    pub fn condition(&self, lambda: f64, dual: bool) -> Result<Condition> {
        check_lambda(lambda)?;
        let branch = if dual {
            Branch::for_lambda(lambda)
        } else {
            Branch::Clean
        };
        let Some(rows) = &self.rows else {
            let own = self.lambdas.first().copied().unwrap_or(f64::NAN);
            if !same_setting(own, lambda) {
                return Err(Error::Lambda {
                    value: lambda,
                    reason: format!("this model was trained for λ = {own} only"),
                });
            }
            return Ok(Condition {
                lambda,
                encoding: None,
                branch,
            });
        };
        if let Some(j) = self.index_of(lambda) {
            return Ok(Condition {
                lambda,
                encoding: Some(self.row(rows, j)),
                branch,
            });
        }
        match self.lambdas.iter().position(|&l| l > lambda) {
            Some(h) if h > 0 => {
                let (a, b) = (self.lambdas[h - 1], self.lambdas[h]);
                let t = (lambda - a) / (b - a);
                // As the trainer's `qa * (1.0 - t) + qb * t` on f32 tensors: the f64 factors
                // enter the f32 kernel as f32.
                let (wa, wb) = ((1.0 - t) as f32, t as f32);
                let (qa, qb) = (self.row(rows, h - 1), self.row(rows, h));
                let enc = qa.iter().zip(&qb).map(|(x, y)| x * wa + y * wb).collect();
                Ok(Condition {
                    lambda,
                    encoding: Some(enc),
                    branch,
                })
            }
            _ => Err(Error::Lambda {
                value: lambda,
                reason: format!("outside the trained range {:?}", self.lambdas),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc() -> Encoding {
        Encoding {
            lambdas: vec![0.0, 0.5, 1.0],
            rows: Some(vec![1.0, 0.0, 0.0, 1.0, 2.0, 4.0]),
            dim: 2,
        }
    }

    #[test]
    fn training_values_take_their_row() {
        let c = enc().condition(0.5, true).unwrap();
        assert_eq!(c.encoding, Some(vec![0.0, 1.0]));
        assert_eq!(c.branch, Branch::Adv);
        assert_eq!(enc().condition(0.0, true).unwrap().branch, Branch::Clean);
        assert_eq!(enc().condition(0.5, false).unwrap().branch, Branch::Clean);
    }

    #[test]
    fn unseen_values_interpolate_their_neighbours() {
        let c = enc().condition(0.75, true).unwrap();
        assert_eq!(c.encoding, Some(vec![1.0, 2.5]));
        let c = enc().condition(0.1, true).unwrap();
        let e = c.encoding.unwrap();
        assert!(
            (e[0] - 0.8).abs() < 1e-6 && (e[1] - 0.2).abs() < 1e-6,
            "{e:?}"
        );
        assert_eq!(c.branch, Branch::Adv, "λ > 0 takes the adversarial BN");
    }

    #[test]
    fn out_of_range_is_an_error() {
        let narrow = Encoding {
            lambdas: vec![0.0, 0.5],
            rows: Some(vec![0.0; 4]),
            dim: 2,
        };
        for bad in [f64::NAN, -0.1, 1.5, f64::INFINITY, 0.7] {
            assert!(narrow.condition(bad, true).is_err(), "{bad}");
        }
        let fixed = Encoding {
            lambdas: vec![0.4],
            rows: None,
            dim: 0,
        };
        assert!(fixed.condition(0.4, false).is_ok());
        assert!(fixed.condition(0.5, false).is_err());
    }
}
