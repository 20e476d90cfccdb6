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
