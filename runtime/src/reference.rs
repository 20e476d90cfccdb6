//! The reference check: the trainer's logits recorded at export (the manifest's
//! [`ReferenceBundle`](crate::manifest::ReferenceBundle)) against what this runtime computes
//! for the same inputs, graph by graph. `oats-bench` runs it and fails above
//! [`REFERENCE_TOLERANCE`]; integrators can call [`check_reference`] after deploying an export.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde::Serialize;

use crate::error::{Result, RuntimeError};
use crate::input::Batch;
use crate::manifest::sha256_hex;
use crate::model::OatsModel;
use crate::selection::Selector;

/// Largest |Δ| between the runtime's logits and the trainer's reference logits accepted as
/// "the same model" (f32 kernels differ in summation order between frameworks).
pub const REFERENCE_TOLERANCE: f32 = 1e-4;

/// Largest reference bundle read, in bytes. The exporter writes a few dozen inputs and their
/// logits per graph (the pretrained example's bundle is 62 KiB); 256 MiB leaves room for
/// thousands of large images while keeping a hostile file from taking the device's memory.
pub const MAX_REFERENCE_BYTES: u64 = 256 * 1024 * 1024;

/// Agreement of one graph with the trainer's reference logits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReferenceCheck {
    /// The configuration checked.
    pub graph_id: String,
    /// Inputs compared (the bundle's batch size).
    pub samples: usize,
    /// `None` when the bundle holds no `logits.<graph id>` for this graph.
    pub max_abs_diff: Option<f32>,
    /// A configuration derived from the package (`graph_id` is its `config_id`), not a
    /// graph file.
    pub derived: bool,
}

impl ReferenceCheck {
    /// Whether the bundle had logits for this graph and they agree within
    /// [`REFERENCE_TOLERANCE`]; a graph without reference logits does not pass.
    pub fn passed(&self) -> bool {
        self.max_abs_diff.is_some_and(|d| d <= REFERENCE_TOLERANCE)
    }
}

/// Runs the reference bundle's `input` through every graph and compares with its
/// `logits.<graph id>` (a graph file without them does not pass; a derived entry without
/// them is skipped), then, with a package, every other `logits.<config id>` of the bundle
/// through the configuration derived on the device. `Ok(None)` when the manifest names no
/// bundle.
pub fn check_reference(model: &OatsModel) -> Result<Option<Vec<ReferenceCheck>>> {
    let m = model.manifest();
    let Some(reference) = &m.reference else {
        return Ok(None);
    };
    let (path, bytes) =
        model.read_file(&reference.file, "a reference bundle", MAX_REFERENCE_BYTES)?;
    let actual = sha256_hex(&bytes);
    if actual != reference.sha256.to_ascii_lowercase() {
        return Err(RuntimeError::ShaMismatch {
            file: path,
            expected: reference.sha256.clone(),
            actual,
        });
    }
    let invalid = |reason: String| RuntimeError::ReferenceInvalid {
        path: path.clone(),
        reason,
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|source| RuntimeError::ReferenceFormat {
        path: path.clone(),
        source,
    })?;
    let (shape, input) = read_f32(&st, "input", &path)?;
    let [c, h, w] = m.input.shape;
    let n = match shape[..] {
        [n, sc, sh, sw] if [sc, sh, sw] == [c, h, w] => n,
        _ => {
            return Err(invalid(format!(
                "input has shape {shape:?}, expected [N, {c}, {h}, {w}]"
            )))
        }
    };
    let batch = Batch::new([n, c, h, w], input)?;
    let mut out = Vec::new();
    for g in &m.graphs {
        let name = format!("logits.{}", g.id);
        let listed = st.names().contains(&name.as_str());
        // An entry without a file that the bundle has no logits for was added after the
        // export (a calibrated grid point): it is derived by the same code the bundle's
        // derived entries check below, so there is nothing of its own to compare.
        if g.is_derived() && !listed {
            continue;
        }
        let max_abs_diff = if listed {
            let (lshape, expected) = read_f32(&st, &name, &path)?;
            if lshape != [n, m.output.classes] {
                return Err(invalid(format!(
                    "{name} has shape {lshape:?}, expected [{n}, {}]",
                    m.output.classes
                )));
            }
            let got = model.infer_with(&g.id, &batch)?;
            Some(max_abs_diff(&got.logits, &expected))
        } else {
            None
        };
        out.push(ReferenceCheck {
            graph_id: g.id.clone(),
            samples: n,
            max_abs_diff,
            // A manifest entry without a file runs derived too.
            derived: g.is_derived(),
        });
    }
    // With a package, every `logits.<config_id>` of the bundle is also checked against the
    // configuration derived on this device: the trained (λ, width), where it must equal the
    // folded graph's, and the unseen λ the exporter added.
    if model.can_derive() {
        let mut names = st.names();
        names.sort();
        for name in names {
            let Some(id) = name.strip_prefix("logits.") else {
                continue;
            };
            // A listed entry without a file was checked, derived, above.
            if m.graphs.iter().any(|g| g.is_derived() && g.id == id) {
                continue;
            }
            let Some((lambda, width)) = parse_config_id(id) else {
                continue;
            };
            let (lshape, expected) = read_f32(&st, name, &path)?;
            if lshape != [n, m.output.classes] {
                return Err(invalid(format!(
                    "{name} has shape {lshape:?}, expected [{n}, {}]",
                    m.output.classes
                )));
            }
            let got = model.infer_selected(&Selector::Derived { lambda, width }, &batch)?;
            out.push(ReferenceCheck {
                graph_id: got.config.id.clone(),
                samples: n,
                max_abs_diff: Some(max_abs_diff(&got.logits, &expected)),
                derived: true,
            });
        }
    }
    Ok(Some(out))
}

/// (λ, width) of an `oats_graph::config_id` such as `l0.15-w0.5`; `None` for any other text
/// (it must round-trip, so `l0.150-w0.5` is not one).
pub fn parse_config_id(id: &str) -> Option<(f64, f64)> {
    let (l, w) = id.strip_prefix('l')?.split_once("-w")?;
    let (lambda, width) = (l.parse::<f64>().ok()?, w.parse::<f64>().ok()?);
    (oats_graph::config_id(lambda, width) == id).then_some((lambda, width))
}

/// Tensor `name` of the bundle at `path` as (shape, f32 values).
fn read_f32(st: &SafeTensors<'_>, name: &str, path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let t = st
        .tensor(name)
        .map_err(|source| RuntimeError::ReferenceFormat {
            path: path.to_path_buf(),
            source,
        })?;
    if t.dtype() != Dtype::F32 {
        return Err(RuntimeError::ReferenceInvalid {
            path: path.to_path_buf(),
            reason: format!("tensor {name} is {:?}, expected F32", t.dtype()),
        });
    }
    let data = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((t.shape().to_vec(), data))
}

/// Largest absolute difference; NaN anywhere counts as infinitely different.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_nan() {
            f32::INFINITY
        } else {
            m.max(d)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 1.0]), 1.0);
        assert_eq!(max_abs_diff(&[f32::NAN], &[0.0]), f32::INFINITY);
        assert_eq!(max_abs_diff(&[1.0], &[]), f32::INFINITY);
    }

    #[test]
    fn config_ids_parse() {
        assert_eq!(parse_config_id("l0.15-w0.5"), Some((0.15, 0.5)));
        assert_eq!(parse_config_id("l0-w1"), Some((0.0, 1.0)));
        assert_eq!(parse_config_id("l0.150-w0.5"), None);
        assert_eq!(parse_config_id("input"), None);
    }
}
