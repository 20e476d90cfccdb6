//! The trainer's side of every comparison: its eval-mode logits at one (λ, width). Used by the
//! export (reference bundle) and by [`crate::verify`]; it depends on neither.
use oats_train::TchModel;
use tch::Tensor;

use crate::error::Result;

/// Trainer logits (eval mode) at one configuration, in batches of 256.
pub fn trainer_logits(model: &TchModel, lambda: f64, width: f64, x: &Tensor) -> Result<Tensor> {
    let _ng = tch::no_grad_guard();
    let wi = model.width_index(width)?;
    let cond = model.cond_for(lambda)?;
    let mut outs = Vec::new();
    let n = x.size()[0];
    for s in (0..n).step_by(256) {
        outs.push(model.logits(&x.narrow(0, s, 256.min(n - s)), &cond, wi));
    }
    Ok(Tensor::cat(&outs, 0))
}

/// Trainer logits (eval mode) of every exit at one configuration, side exits first and the
/// final classifier last, in batches of 256.
pub fn trainer_exit_logits(
    model: &TchModel,
    lambda: f64,
    width: f64,
    x: &Tensor,
) -> Result<Vec<Tensor>> {
    let _ng = tch::no_grad_guard();
    let wi = model.width_index(width)?;
    let cond = model.cond_for(lambda)?;
    let mut per_exit: Vec<Vec<Tensor>> = Vec::new();
    let n = x.size()[0];
    for s in (0..n).step_by(256) {
        let outs = model.exit_logits(&x.narrow(0, s, 256.min(n - s)), &cond, wi);
        per_exit.resize_with(outs.len(), Vec::new);
        for (k, o) in outs.into_iter().enumerate() {
            per_exit[k].push(o);
        }
    }
    Ok(per_exit.iter().map(|v| Tensor::cat(v, 0)).collect())
}
