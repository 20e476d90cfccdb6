//! Attack specifications: an attack of `oats_train` plus a number of random restarts,
//! written `pgd20x2` (PGD-20, 2 restarts), `apgd` (APGD-CE, 100 iterations), `fgsm`, `mifgsm`.
use std::fmt;
use std::str::FromStr;

use oats_train::attack;
use oats_train::eval::{run_attack, Attack, AttackSettings};
use tch::Tensor;

use crate::error::{CalibrateError, Result};

/// The default set: PGD-20 with 2 random restarts and APGD-CE (method-notes §8: report APGD,
/// not PGD alone).
pub const DEFAULT_ATTACKS: &str = "pgd20x2,apgd";

/// One attack as calibration runs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttackSpec {
    pub attack: Attack,
    /// Random restarts (≥ 1); per sample, the first restart that fools the model wins.
    pub restarts: usize,
}

impl AttackSpec {
    /// Name used as the key of `metrics.ra` and in the report: `pgd20x2`, `apgd-ce100`, `fgsm`.
    pub fn key(&self) -> String {
        if self.restarts > 1 {
            format!("{}x{}", self.attack, self.restarts)
        } else {
            self.attack.to_string()
        }
    }

    /// Name for people (plot labels): `PGD-20×2`, `APGD-CE`, `FGSM`, `MI-FGSM`.
    pub fn pretty(&self) -> String {
        let base = match self.attack {
            Attack::Pgd { steps } => format!("PGD-{steps}"),
            Attack::Fgsm => "FGSM".into(),
            Attack::MiFgsm => "MI-FGSM".into(),
            Attack::ApgdCe { iters: 100 } => "APGD-CE".into(),
            Attack::ApgdCe { iters } => format!("APGD-CE-{iters}"),
        };
        if self.restarts > 1 {
            format!("{base}×{}", self.restarts)
        } else {
            base
        }
    }

    /// An iterative attack (expected to be at least as strong as FGSM).
    pub fn iterative(&self) -> bool {
        matches!(self.attack, Attack::Pgd { .. } | Attack::ApgdCe { .. })
    }

    /// Adversarial images for `x` (labels `y`) against `f`, in eval mode. PGD uses step
    /// `settings.pgd_step`; restarts of APGD-CE are run here with the same per-sample rule
    /// as PGD's (the first restart that fools the model wins, else the last one's image).
    pub fn run(&self, f: attack::Model, x: &Tensor, y: &Tensor, eps: f64, pgd_step: f64) -> Tensor {
        let s = AttackSettings {
            eps,
            pgd_step,
            restarts: self.restarts,
        };
        match self.attack {
            Attack::Pgd { .. } => run_attack(self.attack, f, x, y, &s),
            _ => {
                let mut best = run_attack(self.attack, f, x, y, &s);
                for _ in 1..self.restarts {
                    let fooled = attack::fooled(f, &best, y);
                    if fooled.all().int64_value(&[]) != 0 {
                        break;
                    }
                    let cand = run_attack(self.attack, f, x, y, &s);
                    best = best.where_self(&fooled.view([-1, 1, 1, 1]), &cand);
                }
                best
            }
        }
    }
}

impl fmt::Display for AttackSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

impl FromStr for AttackSpec {
    type Err = CalibrateError;
    /// `<attack>[x<restarts>]`, the attack as `oats_train::eval::Attack` parses it.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let (base, restarts) = match t.rsplit_once('x') {
            Some((b, r))
                if !b.is_empty() && !r.is_empty() && r.bytes().all(|c| c.is_ascii_digit()) =>
            {
                let n: usize = r.parse().map_err(|_| {
                    CalibrateError::Invalid(format!("attack {s:?}: bad restart count"))
                })?;
                (b.to_string(), n)
            }
            _ => (t.clone(), 1),
        };
        if !(1..=100).contains(&restarts) {
            return Err(CalibrateError::Invalid(format!(
                "attack {s:?}: restarts must be 1..=100"
            )));
        }
        let attack: Attack = base.parse()?;
        if restarts > 1 && !matches!(attack, Attack::Pgd { .. } | Attack::ApgdCe { .. }) {
            return Err(CalibrateError::Invalid(format!(
                "attack {s:?}: {attack} is deterministic; restarts apply to pgd and apgd only"
            )));
        }
        Ok(AttackSpec { attack, restarts })
    }
}

/// Parses a comma-separated list; duplicates (same key) are an error.
pub fn parse_list(s: &str) -> Result<Vec<AttackSpec>> {
    let specs = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect::<Result<Vec<AttackSpec>>>()?;
    if specs.is_empty() {
        return Err(CalibrateError::Invalid("no attack given".into()));
    }
    for (i, a) in specs.iter().enumerate() {
        if specs[..i].iter().any(|b| b.key() == a.key()) {
            return Err(CalibrateError::Invalid(format!(
                "attack {} is listed twice",
                a.key()
            )));
        }
    }
    Ok(specs)
}

/// "PGD-20×2, APGD-CE" for axis labels.
pub fn pretty_list(specs: &[AttackSpec]) -> String {
    specs
        .iter()
        .map(AttackSpec::pretty)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_restarts() {
        let l = parse_list(DEFAULT_ATTACKS).expect("default");
        assert_eq!(
            l,
            vec![
                AttackSpec {
                    attack: Attack::Pgd { steps: 20 },
                    restarts: 2
                },
                AttackSpec {
                    attack: Attack::ApgdCe { iters: 100 },
                    restarts: 1
                }
            ]
        );
        assert_eq!(l[0].key(), "pgd20x2");
        assert_eq!(l[1].key(), "apgd-ce100");
        assert_eq!(pretty_list(&l), "PGD-20×2, APGD-CE");
        let a: AttackSpec = "PGD-7".parse().expect("pgd7");
        assert_eq!(
            (a.attack, a.restarts, a.key()),
            (Attack::Pgd { steps: 7 }, 1, "pgd7".to_string())
        );
        assert_eq!(
            "apgd10x3".parse::<AttackSpec>().expect("apgd").key(),
            "apgd-ce10x3"
        );
        assert_eq!("fgsm".parse::<AttackSpec>().expect("fgsm").pretty(), "FGSM");
        assert_eq!(
            "mi-fgsm".parse::<AttackSpec>().expect("mifgsm").key(),
            "mifgsm"
        );
        for bad in ["fgsmx2", "pgd20x0", "pgd20x", "cw", "pgd0"] {
            assert!(bad.parse::<AttackSpec>().is_err(), "{bad}");
        }
        assert!(parse_list("pgd20,pgd20").is_err());
        assert!(parse_list(" , ").is_err());
    }
}
