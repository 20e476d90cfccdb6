//! The early-exit rule (RDI-Nets): a sample leaves at the first side exit whose softmax
//! entropy is below that exit's threshold, else at the final classifier. One definition for
//! the device (`oats-runtime`, which stops running segments), the trainer's reference and
//! calibration (which fit the thresholds), so the three cannot disagree on the arithmetic.

/// Entropy in nats of softmax(`logits`), computed in f64 (stable: shifted by the maximum).
/// NaN for an empty row or a non-finite logit.
pub fn entropy(logits: &[f32]) -> f64 {
    if logits.is_empty() || logits.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let z: f64 = logits.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    let log_z = z.ln();
    // H = −Σ p log p with log p = (x − max) − log Z.
    -logits
        .iter()
        .map(|&v| {
            let lp = f64::from(v) - max - log_z;
            lp.exp() * lp
        })
        .sum::<f64>()
}

/// Whether a sample with these logits leaves at an exit with `threshold` (entropy strictly
/// below it; a NaN entropy never leaves).
pub fn leaves(logits: &[f32], threshold: f64) -> bool {
    entropy(logits) < threshold
}

/// The exit each sample takes, given every exit's logits (`exits[k]` is `[n, classes]`
/// row-major, side exits first, the final one last) and one threshold per side exit:
/// what routed inference computes, without stopping early.
pub fn route(exits: &[&[f32]], classes: usize, thresholds: &[f64]) -> Vec<usize> {
    let n = exits.first().map_or(0, |e| e.len() / classes.max(1));
    let last = exits.len().saturating_sub(1);
    (0..n)
        .map(|i| {
            thresholds
                .iter()
                .zip(exits)
                .position(|(&t, e)| {
                    e.get(i * classes..(i + 1) * classes)
                        .is_some_and(|row| leaves(row, t))
                })
                .unwrap_or(last)
        })
        .collect()
}

/// Every exit's entropy per sample (`[exit][sample]`) of `exits` as in [`route`].
pub fn entropies(exits: &[&[f32]], classes: usize) -> Vec<Vec<f64>> {
    exits
        .iter()
        .map(|e| e.chunks_exact(classes.max(1)).map(entropy).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_known_distributions() {
        assert!(entropy(&[0.0, 0.0]).sub_ln(2.0) < 1e-12);
        assert!(entropy(&[0.0; 10]).sub_ln(10.0) < 1e-12);
        assert!(entropy(&[100.0, 0.0, 0.0]) < 1e-30);
        assert!(
            entropy(&[1e30, -1e30]).is_finite(),
            "shifted by the maximum"
        );
        assert!(entropy(&[f32::NAN, 0.0]).is_nan());
        assert!(!leaves(&[f32::NAN, 0.0], 10.0));
    }

    trait SubLn {
        fn sub_ln(self, x: f64) -> f64;
    }
    impl SubLn for f64 {
        fn sub_ln(self, x: f64) -> f64 {
            (self - x.ln()).abs()
        }
    }

    #[test]
    fn route_takes_the_first_confident_exit() {
        // Two samples, two classes, two side exits + final.
        let e0 = [5.0, 0.0, 0.0, 0.0]; // sample 0 confident, sample 1 not
        let e1 = [0.0, 0.0, 9.0, 0.0]; // sample 1 confident here
        let fin = [1.0, 0.0, 0.0, 1.0];
        let exits: [&[f32]; 3] = [&e0, &e1, &fin];
        assert_eq!(route(&exits, 2, &[0.1, 0.1]), vec![0, 1]);
        assert_eq!(route(&exits, 2, &[0.0, 0.0]), vec![2, 2], "0 never leaves");
        assert_eq!(
            route(&exits, 2, &[1.0, 1.0]),
            vec![0, 0],
            "ln 2 < 1: all leave"
        );
    }
}
