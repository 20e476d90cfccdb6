//! tract backend: pure Rust, optimised once at load, then shared by all threads (a tract plan
//! is immutable; each run gets its own state).

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::bail;

use super::{check_logits, GraphSpec, PartInput};
use crate::error::{BoxError, Result, RuntimeError};
use crate::manifest::LAMBDA_INDEX_INPUT;

/// Symbol of the dynamic batch dimension.
const BATCH_SYMBOL: &str = "N";

/// Backend name in errors.
const TRACT: &str = "tract";

#[derive(Clone, Copy)]
enum InputKind {
    Image,
    LambdaIndex,
}

pub(crate) struct TractGraph {
    plan: Arc<TypedRunnableModel>,
    /// Graph inputs in the graph's order.
    inputs: Vec<InputKind>,
    chw: [usize; 3],
    classes: usize,
}

impl TractGraph {
    pub(crate) fn load(spec: &GraphSpec<'_>) -> Result<TractGraph> {
        let err = |source: BoxError| RuntimeError::GraphLoad {
            file: spec.file.to_path_buf(),
            backend: TRACT.into(),
            source,
        };
        Self::load_inner(spec).map_err(|e| err(e.into()))
    }

    fn load_inner(spec: &GraphSpec<'_>) -> TractResult<TractGraph> {
        let onnx = tract_onnx::onnx();
        // No model directory: external data was refused by graph::inspect, and none may be
        // read from anywhere.
        let parsed = onnx.parse(spec.proto, None)?;
        if !parsed.unresolved_inputs.is_empty() {
            bail!("unresolved graph inputs: {:?}", parsed.unresolved_inputs);
        }
        let mut model = parsed.model;

        // graph::inspect checked that the graph declares the image input [batch, C, H, W]
        // with the manifest's C, H, W; the batch is the graph's (a fixed batch stays fixed).
        let [c, h, w] = spec.input.shape;
        let n: TDim = match spec.batch {
            Some(b) => b.into(),
            None => model.symbols.sym(BATCH_SYMBOL).into(),
        };
        let names: Vec<String> = model
            .input_outlets()?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let mut inputs = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if *name == spec.input.name {
                let shape: [TDim; 4] = [n.clone(), c.into(), h.into(), w.into()];
                model.set_input_fact(i, f32::fact(shape).into())?;
                inputs.push(InputKind::Image);
            } else if spec.shared && name == LAMBDA_INDEX_INPUT {
                model.set_input_fact(i, i64::fact([1usize]).into())?;
                inputs.push(InputKind::LambdaIndex);
            } else {
                bail!("unexpected graph input {name:?}");
            }
        }
        let count = |k: fn(&InputKind) -> bool| inputs.iter().filter(|x| k(x)).count();
        if count(|k| matches!(k, InputKind::Image)) != 1 {
            bail!(
                "graph has no input named {:?} (inputs: {names:?})",
                spec.input.name
            );
        }
        if spec.shared && count(|k| matches!(k, InputKind::LambdaIndex)) != 1 {
            bail!("layout shared_weights needs an int64 input {LAMBDA_INDEX_INPUT:?} (inputs: {names:?})");
        }
        model.select_outputs_by_name([spec.output.name.as_str()])?;
        let plan = model.into_optimized()?.into_runnable()?;
        Ok(TractGraph {
            plan,
            inputs,
            chw: spec.input.shape,
            classes: spec.output.classes,
        })
    }

    pub(crate) fn run(
        &self,
        data: &[f32],
        n: usize,
        lambda_index: Option<i64>,
    ) -> Result<Vec<f32>> {
        let err = |e: TractError| RuntimeError::inference(TRACT, e);
        let [c, h, w] = self.chw;
        let image = Tensor::from_shape(&[n, c, h, w], data).map_err(err)?;
        let mut image = Some(image);
        let mut values: TVec<TValue> = tvec![];
        for kind in &self.inputs {
            match kind {
                InputKind::Image => {
                    let t = image.take().ok_or_else(|| {
                        RuntimeError::inference(TRACT, "graph lists the image input twice")
                    })?;
                    values.push(t.into_tvalue());
                }
                InputKind::LambdaIndex => {
                    let idx = lambda_index.ok_or_else(|| {
                        RuntimeError::inference(
                            TRACT,
                            format!(
                                "graph needs {LAMBDA_INDEX_INPUT:?} but the configuration has none"
                            ),
                        )
                    })?;
                    values.push(tensor1(&[idx]).into_tvalue());
                }
            }
        }
        let outputs = self.plan.run(values).map_err(err)?;
        let out = outputs
            .first()
            .ok_or_else(|| RuntimeError::inference(TRACT, "graph returned no output"))?;
        let logits = out
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>())
            .map_err(err)?;
        check_logits(TRACT, out.shape(), logits, n, self.classes)
    }

    /// A chained part (one input, one output; see `Engine::run_part`): an earlier part's
    /// tensor of the right shape is fed as it is (a reference count, no copy); anything else
    /// is copied into a new tensor, as in [`TractGraph::run`].
    pub(crate) fn run_part(
        &self,
        input: PartInput<'_>,
        n: usize,
        out_shape: &[usize],
    ) -> Result<TValue> {
        let err = |e: TractError| RuntimeError::inference(TRACT, e);
        let [c, h, w] = self.chw;
        if self.inputs.len() != 1 {
            return Err(RuntimeError::inference(
                TRACT,
                "a chained part has exactly one input",
            ));
        }
        let shape = [n, c, h, w];
        let value = match input {
            PartInput::Engine(super::Activation::Tract(t)) if t.shape() == shape => t.clone(),
            other => Tensor::from_shape(&shape, other.values()?)
                .map_err(err)?
                .into_tvalue(),
        };
        let mut outputs = self.plan.run(tvec![value]).map_err(err)?;
        if outputs.is_empty() {
            return Err(RuntimeError::inference(TRACT, "graph returned no output"));
        }
        let out = outputs.remove(0);
        let expected: usize = out_shape.iter().product();
        if out.shape().first() != Some(&n) || out.len() != expected {
            return Err(RuntimeError::inference(
                TRACT,
                format!(
                    "graph returned a tensor of shape {:?}, expected {expected} values as \
                     {out_shape:?}",
                    out.shape()
                ),
            ));
        }
        // The plan's output is this run's alone, so this moves it; a reshape is metadata.
        Ok(out
            .into_tensor()
            .into_shape(out_shape)
            .map_err(err)?
            .into_tvalue())
    }
}

/// The f32 values of a tensor, in place.
pub(crate) fn values(t: &TValue) -> Result<&[f32]> {
    t.try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>())
        .map_err(|e| RuntimeError::inference(TRACT, e))
}

/// A tensor of `shape` that takes ownership of `data`.
pub(crate) fn tensor(shape: &[usize], data: Vec<f32>) -> Result<TValue> {
    let err = |e: String| RuntimeError::inference(TRACT, e);
    tract_ndarray::ArrayD::from_shape_vec(shape, data)
        .map_err(|e| err(e.to_string()))
        .map(|a| Tensor::from(a).into_tvalue())
}
