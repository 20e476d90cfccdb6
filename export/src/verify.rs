//! Proof that every exported graph computes the trainer's logits: each graph is run through
//! the runtime's own engines (the code an integrator ships) on real and random inputs and
//! compared with the tch model in eval mode at the same (λ, width).
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use oats_runtime::manifest::Manifest;
use oats_runtime::{Backend, Batch, Options};
use oats_train::TchModel;
use safetensors::tensor::{Dtype, TensorView};
use tch::{Kind, Tensor};

use crate::error::{ExportError, Result};
use crate::logits::{trainer_exit_logits, trainer_logits};

/// One comparison.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Check {
    pub graph: String,
    pub backend: String,
    pub inputs: String,
    pub samples: usize,
    pub max_abs_diff: f64,
    pub argmax_mismatches: usize,
}

pub fn encode_safetensors(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (s, v))| {
            (
                k.clone(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (k.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ExportError::Invalid(e.to_string()))?;
    safetensors::serialize(views, None::<HashMap<String, String>>)
        .map_err(|e| ExportError::Invalid(e.to_string()))
}

/// One comparison of `got` with the trainer's `want` ([N, classes] each): a [`Check`], or
/// [`ExportError::Mismatch`] when a logit differs by more than `tolerance` (or is NaN) or
/// any argmax differs.
fn compare(
    got: &Tensor,
    want: &Tensor,
    graph: String,
    backend: &str,
    inputs: &str,
    tolerance: f64,
) -> Result<Check> {
    let max_abs_diff = (got - want).abs().max().double_value(&[]);
    let argmax_mismatches = got
        .argmax(1, false)
        .ne_tensor(&want.argmax(1, false))
        .sum(Kind::Int64)
        .int64_value(&[]) as usize;
    let samples = got.size()[0] as usize;
    if max_abs_diff.is_nan() || max_abs_diff > tolerance || argmax_mismatches > 0 {
        return Err(ExportError::Mismatch {
            graph,
            backend: backend.into(),
            inputs: inputs.into(),
            max_abs_diff,
            limit: tolerance,
            argmax_mismatches,
            samples,
        });
    }
    Ok(Check {
        graph,
        backend: backend.into(),
        inputs: inputs.into(),
        samples,
        max_abs_diff,
        argmax_mismatches,
    })
}

/// Verifies all graphs of `manifest` in `dir` on each backend; fails on the first graph
/// whose logits differ by more than `tolerance` or whose argmax differs anywhere.
pub fn verify(
    model: &TchModel,
    dir: &Path,
    manifest: &Manifest,
    inputs: &[(String, Tensor)],
    backends: &[Backend],
    tolerance: f64,
) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    for &backend in backends {
        let rt = oats_runtime::OatsModel::open(
            dir,
            &Options {
                backend,
                threads: None,
                preload: true,
                ..Options::default()
            },
        )?;
        for e in &manifest.graphs {
            for (name, x) in inputs {
                let want =
                    trainer_logits(model, e.lambda, e.width, &x.to_device(model.vs.device()))?
                        .to_device(tch::Device::Cpu);
                let dims = x.size();
                let data =
                    Vec::<f32>::try_from(x.to_kind(Kind::Float).contiguous().flatten(0, -1))?;
                let batch = Batch::new(
                    [
                        dims[0] as usize,
                        dims[1] as usize,
                        dims[2] as usize,
                        dims[3] as usize,
                    ],
                    data,
                )?;
                let got = rt.infer_with(&e.id, &batch)?;
                let got_t =
                    Tensor::from_slice(&got.logits).view([got.batch as i64, got.classes as i64]);
                checks.push(compare(
                    &got_t,
                    &want,
                    e.id.clone(),
                    backend.name(),
                    name,
                    tolerance,
                )?);
                if e.exits.is_some() {
                    checks.extend(verify_exits(
                        model, &rt, &e.id, e.lambda, e.width, name, x, &batch, tolerance,
                    )?);
                }
            }
        }
    }
    Ok(checks)
}

/// Every exit of a configuration with side exits, run through its chained segments and heads
/// in the runtime, against the trainer's `exit_logits`: one check per exit (`<id>#exit<k>`,
/// the final classifier last).
#[allow(clippy::too_many_arguments)]
fn verify_exits(
    model: &TchModel,
    rt: &oats_runtime::OatsModel,
    id: &str,
    lambda: f64,
    width: f64,
    inputs: &str,
    x: &Tensor,
    batch: &Batch,
    tolerance: f64,
) -> Result<Vec<Check>> {
    let want = trainer_exit_logits(model, lambda, width, &x.to_device(model.vs.device()))?;
    let got = rt.infer_exits(id, batch)?;
    if got.logits.len() != want.len() {
        return Err(ExportError::Invalid(format!(
            "graph {id}: the runtime computed {} exits, the trainer {}",
            got.logits.len(),
            want.len()
        )));
    }
    let mut checks = Vec::new();
    for (k, (g, w)) in got.logits.iter().zip(&want).enumerate() {
        let w = w.to_device(tch::Device::Cpu);
        let g = Tensor::from_slice(g).view([got.batch as i64, got.classes as i64]);
        checks.push(compare(
            &g,
            &w,
            format!("{id}#exit{k}"),
            rt.backend().name(),
            inputs,
            tolerance,
        )?);
    }
    Ok(checks)
}
