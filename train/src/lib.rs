//! oats-train: trains once-for-all adversarially robust classifiers.
//!
//! * OAT: one network conditioned on the robustness weight λ through FiLM layers fed by a
//!   λ encoding, with dual batch-norm (λ = 0 → clean BN, λ > 0 → adversarial BN).
//! * OATS: the same, slimmable (widths 0.5/0.75/1.0, one BN set per width).
//! * PGD-AT / PGD-ATS: the dedicated baselines (one fixed λ per model).
//!
//! Data flow: [`config::TrainConfig`] → [`trainer::Trainer`] → checkpoint
//! ([`checkpoint`]) → export (crate `oats-export`). See DESIGN.md at the repository root.
#![warn(clippy::unwrap_used)]

pub mod attack;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod encoding;
pub mod error;
pub mod eval;
pub mod limits;
pub mod model;
pub mod nn;
pub mod run_dir;
pub mod trainer;

pub use error::{Result, TrainError};
pub use trainer::{TchModel, Trainer};
