//! oats-graph: an oats network as plain data, and the arithmetic a device needs to derive
//! any (λ, width) from it, with no tch: FiLM → BN affine, folding, width slicing, lowering
//! to a plain graph, ONNX bytes.
//!
//! The exporter (`oats-export`, which has tch) turns a trained model into a [`Package`] and
//! writes its graphs with [`Package::lower`] and [`to_onnx`]; a device (`oats-runtime`) loads
//! the same package and derives any configuration with the same code, so the exported graphs
//! and the derived ones cannot drift apart.
//!
//! ```no_run
//! use oats_graph::{Layout, Package};
//! let pkg = Package::load("export/package.safetensors")?;
//! // λ = 0.15 was not trained: its encoding interpolates λ = 0.1 and 0.2.
//! let graph = pkg.lower(&[0.15], 0.5, Layout::Folded)?;
//! let onnx_bytes = oats_graph::to_onnx(&graph);
//! # Ok::<(), oats_graph::Error>(())
//! ```
//!
//! Modules: [`arch`] (the structure and its tensors), [`encoding`] (λ → FiLM input and BN
//! branch), [`affine`] (BN∘FiLM as a per-channel affine), [`fold`], [`lower`] (package →
//! [`Graph`]), [`graph`] (the plain graph), [`onnx`] (the only module that writes protobuf),
//! [`package`] (the file format and its validation), [`quant`] (int8 graphs in QDQ form),
//! [`routing`] (the early-exit rule), [`limits`], [`error`].
#![warn(clippy::unwrap_used)]

pub mod affine;
pub mod arch;
pub mod encoding;
pub mod error;
pub mod fold;
pub mod graph;
pub mod limits;
pub mod lower;
pub mod onnx;
pub mod package;
pub mod quant;
pub mod routing;

pub use affine::Affine;
pub use arch::{channels_at, same_setting, Architecture, SAME_SETTING_TOL};
pub use encoding::{Branch, Condition, Encoding};
pub use error::{Error, Result};
pub use graph::Graph;
pub use lower::{Layout, Segmented, FEATURES, FEATURES_INPUT, INPUT, LAMBDA_INDEX_INPUT, OUTPUT};
pub use package::Package;

/// The ONNX bytes of `graph` (IR 8, opset 13), its name as the doc string.
pub fn to_onnx(graph: &Graph) -> Vec<u8> {
    onnx::encode(graph, &graph.name)
}

/// Short, stable text for a λ or width in ids and file names: 0.1 → "0.1", 1.0 → "1".
pub fn fmt_num(x: f64) -> String {
    let s = format!("{x}");
    s.trim_end_matches(".0").to_string()
}

/// The id of the configuration (λ, width), e.g. `l0.15-w0.5`: the exporter's graph ids and
/// the reference bundle's `logits.<id>` keys, for trained and derived configurations alike.
pub fn config_id(lambda: f64, width: f64) -> String {
    format!("l{}-w{}", fmt_num(lambda), fmt_num(width))
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_ids() {
        assert_eq!(super::config_id(0.15, 0.5), "l0.15-w0.5");
        assert_eq!(super::config_id(0.0, 1.0), "l0-w1");
    }
}
