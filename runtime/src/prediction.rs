//! What an inference returns: logits, plus which configuration produced them (the active
//! configuration may change between the call and the answer).

use std::sync::Arc;

use serde::Serialize;

use crate::engine::Backend;

/// A configuration of the loaded model: one (λ, width) on one backend, loaded from a graph
/// file or derived from the package. Shared (`Arc`) by every [`Prediction`] it serves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigInfo {
    /// The manifest id (`l0.15-w1`), or for a derived configuration the id of the manifest
    /// entry at this (λ, width) if there is one, else `oats_graph::config_id(λ, width)`.
    pub id: String,
    /// Robustness weight in [0, 1]: higher is more robust, usually less accurate on clean
    /// inputs.
    pub lambda: f64,
    /// Width multiplier in (0, 1]: narrower is cheaper, usually less accurate.
    pub width: f64,
    /// The library that runs it.
    pub backend: Backend,
    /// Parameter count of the graph.
    pub params: u64,
    /// Multiply-accumulates per image.
    pub macs: u64,
    /// Derived on the device from the package, not loaded from a graph file.
    pub derived: bool,
    /// What the manifest records for this (λ, width) (its graph's metrics), if anything: a
    /// derived configuration at an uncalibrated λ has none.
    pub metrics: Option<crate::manifest::Metrics>,
    /// Side exits of this configuration (manifest schema v3); 0 without. The final
    /// classifier's exit index is this number.
    pub side_exits: usize,
}

/// The result of one inference: raw logits (no softmax applied; [`Prediction::top_k`] gives
/// probabilities) and the configuration that computed them.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// `[batch, classes]`, row-major; every value finite.
    pub logits: Vec<f32>,
    /// Number of images, as in the input batch.
    pub batch: usize,
    /// Number of classes (`output.classes` of the manifest).
    pub classes: usize,
    /// The configuration that actually ran.
    pub config: Arc<ConfigInfo>,
    /// Routed inference over side exits (manifest schema v3): per batch item, the exit that
    /// answered it, 0 for the first side exit up to the number of side exits for the final
    /// classifier. `None` when the whole network ran (no exits, or no thresholds).
    pub exits: Option<Vec<usize>>,
}

/// One entry of a top-k list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// Output index; [`crate::Manifest::class_name`] gives its name.
    pub class: usize,
    /// Softmax probability.
    pub prob: f32,
    /// The raw logit.
    pub logit: f32,
}

impl Prediction {
    /// Per batch item, the exit that answered it: [`Prediction::exits`] when the inference
    /// was routed, else the final classifier ([`ConfigInfo::side_exits`]) for every item.
    /// What the bindings return, so that callers need not tell the two cases apart.
    pub fn answering_exits(&self) -> Vec<usize> {
        match &self.exits {
            Some(e) => e.clone(),
            None => vec![self.config.side_exits; self.batch],
        }
    }

    /// Logits of batch item `i`; `None` past the end of the batch.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        let start = i.checked_mul(self.classes)?;
        self.logits.get(start..start.checked_add(self.classes)?)
    }

    /// For each batch item, the `k` most likely classes, best first (ties: lower class index).
    pub fn top_k(&self, k: usize) -> Vec<Vec<Ranked>> {
        (0..self.batch)
            .map_while(|i| self.row(i))
            .map(|row| {
                let probs = softmax(row);
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                order
                    .into_iter()
                    .take(k)
                    .map(|class| Ranked {
                        class,
                        prob: probs[class],
                        logit: row[class],
                    })
                    .collect()
            })
            .collect()
    }
}

/// Numerically stable softmax (max subtracted first).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probabilities computed in f32 from small logits agree with the exact value to well
    /// within this (f32 has ~7 significant digits).
    const PROB_TOLERANCE: f32 = 1e-6;

    #[test]
    fn softmax_is_stable_and_normalised() {
        let p = softmax(&[1000.0, 1000.0, 0.0]);
        assert!(
            (p[0] - 0.5).abs() < PROB_TOLERANCE
                && (p[1] - 0.5).abs() < PROB_TOLERANCE
                && p[2] < PROB_TOLERANCE
        );
        let s: f32 = softmax(&[0.1, -2.0, 3.0]).iter().sum();
        assert!((s - 1.0).abs() < PROB_TOLERANCE);
    }

    #[test]
    fn top_k_orders_rows() {
        let p = Prediction {
            logits: vec![0.0, 2.0, 1.0, 5.0, 5.0, -1.0],
            batch: 2,
            classes: 3,
            config: Arc::new(ConfigInfo {
                id: "x".into(),
                lambda: 0.0,
                width: 1.0,
                backend: Backend::Tract,
                params: 0,
                macs: 0,
                derived: false,
                metrics: None,
                side_exits: 0,
            }),
            exits: None,
        };
        assert_eq!(p.answering_exits(), vec![0, 0]);
        let t = p.top_k(2);
        assert_eq!(t[0].iter().map(|r| r.class).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(t[1].iter().map(|r| r.class).collect::<Vec<_>>(), vec![0, 1]);
        assert!((t[1][0].prob - t[1][1].prob).abs() < PROB_TOLERANCE);
        assert_eq!(p.top_k(10)[0].len(), 3);
    }
}
