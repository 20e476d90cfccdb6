//! Inference runtime for oats models: one adversarially robust classifier trained once for
//! many trade-offs, exported as one ONNX graph per (λ, width) configuration.
//!
//! λ ∈ [0, 1] weighs robustness against clean accuracy (higher λ: more robust, usually less
//! accurate on clean inputs); width ∈ {0.5, 0.75, 1.0} trades accuracy for speed. An export
//! directory holds `manifest.yaml` ([`Manifest`]) and the graphs. This crate loads it, checks
//! every graph against the sha256 in the manifest, picks a configuration and runs it with
//! [tract](https://github.com/sonos/tract) (default, pure Rust) or ONNX Runtime (cargo
//! feature `ort`, library loaded at run time from `ORT_DYLIB_PATH`). It never links libtorch.
//!
//! All graphs are loaded up front by default, so switching configuration at run time (say,
//! to a more robust one when the device is under attack, or a narrower one when the battery
//! is low) is an atomic pointer swap: it does not wait for inferences in flight, and every
//! [`Prediction`] says which configuration produced it. [`OatsModel`] is `Send + Sync`; share
//! it with an `Arc`.
//!
//! ```no_run
//! use oats_runtime::{Batch, OatsModel, Options, Policy, Selector};
//!
//! # fn main() -> Result<(), oats_runtime::RuntimeError> {
//! let model = OatsModel::open("export/", &Options::default())?;
//!
//! // An explicit configuration (with a package, manifest schema v2, any λ in the trained
//! // range: one without a graph file is derived on the spot and cached)...
//! model.select(&Selector::Explicit { lambda: 0.15, width: 1.0 })?;
//! // ...or the most robust one that meets a latency budget measured by `oats-bench`.
//! model.select(&Selector::Policy(Policy {
//!     max_latency_ms: Some(2.0),
//!     min_sa: Some(0.8),
//!     ..Policy::default()
//! }))?;
//!
//! let batch = Batch::from_images(&["cat.png"], &model.manifest().input)?;
//! let prediction = model.infer(&batch)?;
//! for top in &prediction.top_k(3)[0] {
//!     println!("{:>5.1}% {}", top.prob * 100.0, model.manifest().class_name(top.class));
//! }
//! println!("served by {}", prediction.config.id);
//! # Ok(())
//! # }
//! ```
//!
//! Errors are one enum, [`RuntimeError`], with the file, id or index involved. Policies that
//! refer to metrics the manifest lacks fail with [`RuntimeError::NoneQualifies`] saying which
//! metric to calibrate, rather than picking blindly.

#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod bench;
pub mod derive;
pub mod engine;
pub mod error;
pub mod files;
pub mod graph;
pub mod input;
pub mod manifest;
pub mod model;
pub mod prediction;
pub mod reference;
pub mod selection;
pub mod source;

pub use derive::DerivedInfo;
#[cfg(feature = "ort")]
pub use engine::ort::{init_ort, ORT_DYLIB_ENV};
pub use engine::Backend;
pub use error::{BoxError, Result, RuntimeError};
pub use input::Batch;
pub use manifest::{
    GraphEntry, InputSpec, LatencyStat, Layout, Manifest, Metrics, OutputSpec, PackageEntry,
    ReferenceBundle, TrainingSummary, SCHEMA_VERSION,
};
pub use model::{GraphLoadInfo, OatsModel, Options};
pub use oats_metrics::{Interval, OperatingPoint};
pub use prediction::{ConfigInfo, Prediction, Ranked};
pub use selection::{Objective, Policy, Selector};
pub use source::ExportFiles;
