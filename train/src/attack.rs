//! L∞ attacks on a differentiable classifier: PGD (random restarts), FGSM, MI-FGSM and
//! APGD-CE (Croce & Hein 2020). Every attack takes the model as a closure that must run in
//! eval mode; gradients are taken with respect to the input only (torch.autograd.grad
//! semantics), so parameter gradients are never touched.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Kind, Reduction, Tensor};

/// Floor of a gradient or perturbation norm before dividing by it: a zero gradient (a
/// saturated model) must give a zero step, not NaN.
const NORM_FLOOR: f64 = 1e-12;

/// A model under attack: images [B,C,H,W] in [0,1] → logits [B, classes].
pub type Model<'a> = &'a dyn Fn(&Tensor) -> Tensor;

/// Per-sample cross-entropy [B].
fn ce(logits: &Tensor, y: &Tensor) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(y, None, Reduction::None, -100, 0.0)
}

/// ∇ₓ of the summed per-sample loss, and the per-sample loss and logits at x.
fn grad(f: Model, x: &Tensor, y: &Tensor) -> (Tensor, Tensor, Tensor) {
    let x = x.detach().set_requires_grad(true);
    let logits = f(&x);
    let loss = ce(&logits, y);
    let g = Tensor::run_backward(&[loss.sum(Kind::Float)], &[&x], false, false);
    let g = g.into_iter().next().unwrap_or_else(|| x.zeros_like());
    (g, loss.detach(), logits.detach())
}

/// Projection onto the ε-ball around x0 intersected with [0,1].
fn project(x: &Tensor, x0: &Tensor, eps: f64) -> Tensor {
    x.clamp_tensor(Some(&(x0 - eps)), Some(&(x0 + eps)))
        .clamp(0.0, 1.0)
}

/// Where random starts come from: U[0, 1) noise shaped like its argument.
pub type Noise<'a> = &'a mut dyn FnMut(&Tensor) -> Tensor;

/// Noise from torch's global generator (the trainer reseeds it every epoch).
pub fn torch_noise(x: &Tensor) -> Tensor {
    x.rand_like()
}

/// Noise from a private, seeded generator: the same draws whatever else uses torch's global
/// one meanwhile (other threads, other tests, an embedding app), so an evaluation with a seed
/// is reproducible.
pub struct PrivateNoise(StdRng);

impl PrivateNoise {
    pub fn new(seed: u64) -> PrivateNoise {
        PrivateNoise(StdRng::seed_from_u64(seed))
    }

    /// U[0, 1) of `x`'s shape, kind and device.
    pub fn like(&mut self, x: &Tensor) -> Tensor {
        let v: Vec<f32> = (0..x.numel()).map(|_| self.0.gen::<f32>()).collect();
        Tensor::from_slice(&v)
            .view(x.size().as_slice())
            .to_kind(x.kind())
            .to_device(x.device())
    }
}

fn random_start(x0: &Tensor, eps: f64, noise: Noise) -> Tensor {
    project(&(x0 + noise(x0) * (2.0 * eps) - eps), x0, eps)
}

/// PGD (Madry et al.): uniform random start (drawn from `random_start_from`; `None` starts at
/// the clean point), steps of α·sign(∇), projection; returns the last iterate (reference
/// behaviour).
pub fn pgd(
    f: Model,
    x0: &Tensor,
    y: &Tensor,
    eps: f64,
    step: f64,
    steps: usize,
    random_start_from: Option<Noise>,
) -> Tensor {
    pgd_with(x0, eps, step, steps, random_start_from, |x| grad(f, x, y).0)
}

/// The PGD iteration with the input gradient of any loss: random start, `steps` signed
/// steps, projection; the last iterate.
fn pgd_with(
    x0: &Tensor,
    eps: f64,
    step: f64,
    steps: usize,
    random_start_from: Option<Noise>,
    input_grad: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    let mut x = if let Some(noise) = random_start_from {
        random_start(x0, eps, noise)
    } else {
        x0.shallow_clone()
    };
    for _ in 0..steps {
        let g = input_grad(&x);
        let _ng = tch::no_grad_guard();
        x = project(&(x + g.sign() * step), x0, eps);
    }
    x.detach()
}

/// A multi-exit model under attack (RDI-Nets, docs/method.md §7): images → the logits of
/// every exit, the final classifier last. Eval mode, like [`Model`].
pub type ExitsModel<'a> = &'a dyn Fn(&Tensor) -> Vec<Tensor>;

/// ∇ₓ of the summed per-sample `objective` of a multi-exit model's logits at x.
fn exits_input_grad(f: ExitsModel, x: &Tensor, objective: impl Fn(&[Tensor]) -> Tensor) -> Tensor {
    let xg = x.detach().set_requires_grad(true);
    let obj = objective(&f(&xg));
    let g = Tensor::run_backward(&[obj.sum(Kind::Float)], &[&xg], false, false);
    g.into_iter().next().unwrap_or_else(|| x.zeros_like())
}

/// Per-sample Σᵢ wᵢ·CEᵢ over the exits [B].
// Out of place on purpose: tch's `+=` adds in place into a tensor of the autograd graph.
#[allow(clippy::assign_op_pattern)]
fn weighted_ce(logits: &[Tensor], y: &Tensor, weights: &[f64]) -> Tensor {
    let mut loss = y.zeros_like().to_kind(Kind::Float);
    for (l, &w) in logits.iter().zip(weights) {
        if w != 0.0 {
            loss = loss + ce(l, y) * w;
        }
    }
    loss
}

/// PGD on a weighted sum of the exits' losses: `weights` = eᵢ attacks exit i alone (the
/// single-exit attack), all 1/K the average attack. Same steps, projection and random start
/// as [`pgd`].
#[allow(clippy::too_many_arguments)]
pub fn pgd_exits(
    f: ExitsModel,
    x0: &Tensor,
    y: &Tensor,
    eps: f64,
    step: f64,
    steps: usize,
    weights: &[f64],
    random_start_from: Option<Noise>,
) -> Tensor {
    pgd_with(x0, eps, step, steps, random_start_from, |x| {
        exits_input_grad(f, x, |l| weighted_ce(l, y, weights))
    })
}

/// Per-sample summed cross-entropy over all exits [B], without gradients.
pub fn exits_loss(f: ExitsModel, x: &Tensor, y: &Tensor) -> Tensor {
    let _ng = tch::no_grad_guard();
    let logits = f(x);
    weighted_ce(&logits, y, &vec![1.0; logits.len()])
}

/// RDI-Nets' max-average attack: one single-exit PGD per exit (each drawing its own random
/// start), and per sample the result whose summed loss over all exits is largest.
#[allow(clippy::too_many_arguments)]
pub fn max_average(
    f: ExitsModel,
    exits: usize,
    x0: &Tensor,
    y: &Tensor,
    eps: f64,
    step: f64,
    steps: usize,
    mut random_start_from: Option<Noise>,
) -> Tensor {
    let mut best: Option<(Tensor, Tensor)> = None;
    for i in 0..exits {
        let mut w = vec![0.0; exits];
        w[i] = 1.0;
        let noise = random_start_from.as_mut().map(|n| &mut **n as Noise);
        let x = pgd_exits(f, x0, y, eps, step, steps, &w, noise);
        let loss = exits_loss(f, &x, y);
        best = Some(match best {
            None => (x, loss),
            Some((bx, bl)) => {
                let better = loss.gt_tensor(&bl);
                let keep = better.view([-1, 1, 1, 1]);
                (x.where_self(&keep, &bx), loss.maximum(&bl))
            }
        });
    }
    best.map_or_else(|| x0.shallow_clone(), |(x, _)| x)
}

/// Per-sample entropy (nats) of softmax(logits) [B], differentiable.
pub fn entropy(logits: &Tensor) -> Tensor {
    let lp = logits.log_softmax(-1, Kind::Float);
    -(lp.exp() * &lp).sum_dim_intlist(-1, false, Kind::Float)
}

/// The exit each sample takes [B] (int64; the final classifier is `thresholds.len()`): the
/// first side exit whose entropy is below its threshold, as `oats_graph::routing::route`
/// decides on the device (there in f64 from f32 logits, here in f32: they may differ only
/// where an entropy is within round-off of its threshold).
pub fn route(logits: &[Tensor], thresholds: &[f64]) -> Tensor {
    let _ng = tch::no_grad_guard();
    let final_exit = thresholds.len() as i64;
    let Some(first) = logits.first() else {
        return Tensor::zeros([0], (Kind::Int64, tch::Device::Cpu));
    };
    let b = first.size()[0];
    let mut exit = Tensor::full([b], final_exit, (Kind::Int64, first.device()));
    for (k, (l, &t)) in logits.iter().zip(thresholds).enumerate().rev() {
        let leaves = entropy(l).lt(t);
        exit = exit.where_self(
            &leaves.logical_not(),
            &Tensor::full([b], k as i64, (Kind::Int64, first.device())),
        );
    }
    exit
}

/// The logits of the exit each sample takes ([`route`]) [B, classes].
pub fn routed_logits(logits: &[Tensor], exit: &Tensor) -> Tensor {
    let stacked = Tensor::stack(logits, 0); // [E, B, C]
    let b = exit.size()[0];
    let c = stacked.size()[2];
    let idx = exit.view([1, b, 1]).expand([1, b, c], false);
    stacked.gather(0, &idx, false).squeeze_dim(0)
}

/// The adaptive attack on routed inference: PGD on the cross-entropy of the exit each sample
/// takes at the current iterate (re-routed every step, so the attack follows the sample
/// across exits). Same steps, projection and random start as [`pgd`].
#[allow(clippy::too_many_arguments)]
pub fn pgd_routed(
    f: ExitsModel,
    x0: &Tensor,
    y: &Tensor,
    eps: f64,
    step: f64,
    steps: usize,
    thresholds: &[f64],
    random_start_from: Option<Noise>,
) -> Tensor {
    pgd_with(x0, eps, step, steps, random_start_from, |x| {
        exits_input_grad(f, x, |logits| {
            let exit = route(logits, thresholds);
            ce(&routed_logits(logits, &exit), y)
        })
    })
}

/// The slowdown attack: PGD raising the entropy of every side exit until it reaches its
/// threshold (the objective Σₖ min(Hₖ − tₖ, 0) is maximised, so an exit already past its
/// threshold stops pulling), keeping inputs from leaving early and forcing the full compute.
/// Labels are not used: the attacker only wants the compute.
// Out of place on purpose (as in `weighted_ce`): `+=` would add into the autograd graph.
#[allow(clippy::assign_op_pattern)]
pub fn slowdown(
    f: ExitsModel,
    x0: &Tensor,
    eps: f64,
    step: f64,
    steps: usize,
    thresholds: &[f64],
    random_start_from: Option<Noise>,
) -> Tensor {
    pgd_with(x0, eps, step, steps, random_start_from, |x| {
        exits_input_grad(f, x, |logits| {
            let mut obj = Tensor::zeros([x.size()[0]], (Kind::Float, x.device()));
            for (l, &t) in logits.iter().zip(thresholds) {
                // A small margin past the threshold, so round-off cannot route it out again.
                obj = obj + (entropy(l) - (t + 1e-3)).clamp_max(0.0);
            }
            obj
        })
    })
}

/// FGSM: one step of size ε from the clean point.
pub fn fgsm(f: Model, x0: &Tensor, y: &Tensor, eps: f64) -> Tensor {
    let (g, _, _) = grad(f, x0, y);
    let _ng = tch::no_grad_guard();
    project(&(x0 + g.sign() * eps), x0, eps).detach()
}

/// MI-FGSM (Dong et al. 2018): momentum μ over L1-normalised gradients, α = ε/steps.
pub fn mi_fgsm(f: Model, x0: &Tensor, y: &Tensor, eps: f64, steps: usize, mu: f64) -> Tensor {
    let steps = steps.max(1);
    let alpha = eps / steps as f64;
    let mut x = x0.shallow_clone();
    let mut m = x0.zeros_like();
    for _ in 0..steps {
        let (g, _, _) = grad(f, &x, y);
        let _ng = tch::no_grad_guard();
        let l1 = g
            .abs()
            .flatten(1, -1)
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
            .clamp_min(NORM_FLOOR);
        m = m * mu + g / l1.view([-1, 1, 1, 1]);
        x = project(&(x + m.sign() * alpha), x0, eps);
    }
    x.detach()
}

/// Boolean [B]: does the model misclassify x?
pub fn fooled(f: Model, x: &Tensor, y: &Tensor) -> Tensor {
    let _ng = tch::no_grad_guard();
    f(x).argmax(1, false).ne_tensor(y)
}

/// Where `fooled_a` holds keep `a`, elsewhere take `b`.
fn keep_fooling(a: &Tensor, b: &Tensor, fooled_a: &Tensor) -> Tensor {
    let m = fooled_a.view([-1, 1, 1, 1]);
    a.where_self(&m, b)
}

/// APGD checkpoints w_j: the paper's p0 = 0, p1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06),
/// in the integer form of the reference implementation (first interval ⌊0.22N⌋, each next
/// one ⌊0.03N⌋ shorter but at least ⌊0.06N⌋), which avoids ceil() of rounding noise.
pub fn apgd_checkpoints(n_iter: usize) -> Vec<usize> {
    let first = ((0.22 * n_iter as f64) as usize).max(1);
    let decr = ((0.03 * n_iter as f64) as usize).max(1);
    let min = ((0.06 * n_iter as f64) as usize).max(1);
    let mut w = vec![0];
    let mut interval = first;
    while w[w.len() - 1] + interval <= n_iter {
        w.push(w[w.len() - 1] + interval);
        interval = interval.saturating_sub(decr).max(min);
    }
    w
}

/// APGD-CE (Croce & Hein 2020, Alg. 1): step size η⁽⁰⁾ = 2ε, momentum α = 0.75, and at
/// each checkpoint w_j the step size is halved and the iterate restarted from the best point
/// when fewer than ρ = 0.75 of the steps since w_{j−1} increased the loss (condition 1) or
/// when neither η nor the best loss changed since the last checkpoint (condition 2).
/// Everything is per sample. Returns, per sample, an iterate that fools the model if any
/// did, else the highest-loss iterate.
pub fn apgd_ce(f: Model, x0: &Tensor, y: &Tensor, eps: f64, n_iter: usize, noise: Noise) -> Tensor {
    let n_iter = n_iter.max(1);
    let b = x0.size()[0];
    let dev = x0.device();
    let checkpoints = apgd_checkpoints(n_iter);
    let rho = 0.75;
    let alpha = 0.75;
    // Start: a random point of the ε-ball (as AutoAttack does).
    let t = noise(x0) * 2.0 - 1.0;
    let tmax = t
        .abs()
        .flatten(1, -1)
        .amax([1i64].as_slice(), false)
        .clamp_min(NORM_FLOOR);
    let mut x = project(&(x0 + t * eps / tmax.view([-1, 1, 1, 1])), x0, eps);
    let (mut g, mut loss, logits) = grad(f, &x, y);
    let mut adv = x.shallow_clone();
    let mut ever_fooled = logits.argmax(1, false).ne_tensor(y);
    let mut x_best = x.shallow_clone();
    let mut g_best = g.shallow_clone();
    let mut loss_best = loss.shallow_clone();
    let mut eta = Tensor::full([b], 2.0 * eps, (Kind::Float, dev));
    let mut x_prev = x.shallow_clone();
    let mut increases = Tensor::zeros([b], (Kind::Float, dev));
    let mut last_ckpt_eta = eta.shallow_clone();
    let mut last_ckpt_best = loss_best.shallow_clone();
    let mut last_w = 0usize;
    for k in 0..n_iter {
        let x_new = {
            let _ng = tch::no_grad_guard();
            let e4 = eta.view([-1, 1, 1, 1]);
            let z = project(&(&x + g.sign() * &e4), x0, eps);
            if k == 0 {
                z
            } else {
                project(
                    &(&x + (z - &x) * alpha + (&x - &x_prev) * (1.0 - alpha)),
                    x0,
                    eps,
                )
            }
        };
        let (g_new, loss_new, logits_new) = grad(f, &x_new, y);
        let _ng = tch::no_grad_guard();
        let fooled_now = logits_new.argmax(1, false).ne_tensor(y);
        let newly = fooled_now.logical_and(&ever_fooled.logical_not());
        adv = keep_fooling(&x_new, &adv, &newly);
        ever_fooled = ever_fooled.logical_or(&fooled_now);
        increases += loss_new.gt_tensor(&loss).to_kind(Kind::Float);
        let better = loss_new.gt_tensor(&loss_best);
        x_best = keep_fooling(&x_new, &x_best, &better);
        g_best = keep_fooling(&g_new, &g_best, &better);
        loss_best = loss_new.where_self(&better, &loss_best);
        x_prev = x;
        x = x_new;
        g = g_new;
        loss = loss_new;
        let step = k + 1;
        if checkpoints.contains(&step) && step > 0 {
            let span = (step - last_w) as f64;
            let cond1 = increases.lt(rho * span);
            let cond2 = last_ckpt_eta
                .eq_tensor(&eta)
                .logical_and(&last_ckpt_best.eq_tensor(&loss_best));
            let reduce = cond1.logical_or(&cond2);
            last_ckpt_eta = eta.shallow_clone();
            last_ckpt_best = loss_best.shallow_clone();
            eta = (&eta * 0.5).where_self(&reduce, &eta);
            // Restart the reduced samples from their best point, without momentum.
            x = keep_fooling(&x_best, &x, &reduce);
            g = keep_fooling(&g_best, &g, &reduce);
            x_prev = x.shallow_clone();
            increases = increases.zeros_like();
            last_w = step;
        }
    }
    keep_fooling(&adv, &x_best, &ever_fooled).detach()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn apgd_checkpoints_follow_the_paper() {
        // For N = 100: p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (rounded up).
        assert_eq!(
            apgd_checkpoints(100),
            vec![0, 22, 41, 57, 70, 80, 87, 93, 99]
        );
    }

    /// A linear classifier: the optimal L∞ attack is known in closed form, so every attack
    /// must stay inside the ball and the iterative ones must reach the optimum.
    #[test]
    fn attacks_respect_the_ball_and_find_the_linear_optimum() {
        tch::manual_seed(0);
        let w = Tensor::randn([2, 12], (Kind::Float, Device::Cpu));
        let f = |x: &Tensor| x.flatten(1, -1).matmul(&w.tr());
        let x0 = Tensor::rand([8, 3, 2, 2], (Kind::Float, Device::Cpu)) * 0.5 + 0.25;
        let y = f(&x0).argmax(1, false);
        let eps = 0.1;
        for (name, xa) in [
            (
                "pgd",
                pgd(&f, &x0, &y, eps, 0.025, 10, Some(&mut torch_noise)),
            ),
            ("fgsm", fgsm(&f, &x0, &y, eps)),
            ("mifgsm", mi_fgsm(&f, &x0, &y, eps, 10, 1.0)),
            ("apgd", apgd_ce(&f, &x0, &y, eps, 20, &mut torch_noise)),
        ] {
            let d = (&xa - &x0).abs().max().double_value(&[]);
            assert!(d <= eps + 1e-6, "{name}: left the ball by {d}");
            assert!(xa.min().double_value(&[]) >= 0.0 && xa.max().double_value(&[]) <= 1.0);
            // The summed margin (true − other logit) must fall.
            let other = y.ones_like() - &y;
            let margin = |x: &Tensor| {
                let l = f(x);
                (l.gather(1, &y.view([-1, 1]), false) - l.gather(1, &other.view([-1, 1]), false))
                    .sum(Kind::Float)
                    .double_value(&[])
            };
            let (margin_clean, margin_adv) = (margin(&x0), margin(&xa));
            assert!(
                margin_adv < margin_clean,
                "{name}: did not reduce the margin"
            );
        }
        let opt = {
            let dw = (w.get(1) - w.get(0)).view([1, 3, 2, 2]);
            let sign = (&y * 2 - y.ones_like())
                .to_kind(Kind::Float)
                .view([-1, 1, 1, 1]); // y=1 → move towards class 0
            (&x0 - dw.sign() * sign * eps).clamp(0.0, 1.0)
        };
        let pgd_x = pgd(&f, &x0, &y, eps, 0.025, 20, None);
        let gap = (pgd_x - opt).abs().max().double_value(&[]);
        assert!(gap < 1e-5, "PGD did not reach the corner: {gap}");
    }
}
