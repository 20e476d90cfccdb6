//! Folding a per-channel affine y = s·x + t (BN and FiLM at a fixed λ, docs/method.md §6)
//! into the bias-free convolution before it: W'[o] = s[o]·W[o], b'[o] = t[o].
//! Pure functions over flat row-major buffers, tested inline.

/// Returns (W', b') for a convolution weight of `out_channels` rows.
pub fn fold_affine_into_conv(
    weight: &[f32],
    out_channels: usize,
    scale: &[f32],
    shift: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(scale.len(), out_channels);
    assert_eq!(shift.len(), out_channels);
    let per = weight.len() / out_channels.max(1);
    let mut w = weight.to_vec();
    for (o, chunk) in w.chunks_mut(per).enumerate() {
        for v in chunk {
            *v *= scale[o];
        }
    }
    (w, shift.to_vec())
}

/// Output size of a convolution along one axis.
pub fn conv_out(size: i64, kernel: i64, stride: i64, pad: i64) -> i64 {
    (size + 2 * pad - kernel) / stride + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// conv(x, W)·s + t must equal conv(x, W') + b' for a 1×1 convolution (a matrix product).
    #[test]
    fn folding_matches_the_unfolded_affine() {
        let w = [1.0f32, 2.0, 3.0, -1.0, 0.5, 4.0]; // 2 outputs × 3 inputs
        let (s, t) = ([2.0f32, -0.5], [0.25f32, 1.0]);
        let x = [0.3f32, -1.2, 2.0];
        let (wf, bf) = fold_affine_into_conv(&w, 2, &s, &t);
        for o in 0..2 {
            let plain: f32 = (0..3).map(|i| w[o * 3 + i] * x[i]).sum::<f32>() * s[o] + t[o];
            let folded: f32 = (0..3).map(|i| wf[o * 3 + i] * x[i]).sum::<f32>() + bf[o];
            assert!((plain - folded).abs() < 1e-6, "{plain} vs {folded}");
        }
    }

    #[test]
    fn conv_output_sizes() {
        assert_eq!(conv_out(32, 3, 1, 1), 32);
        assert_eq!(conv_out(32, 3, 2, 1), 16);
        assert_eq!(conv_out(28, 1, 2, 0), 14);
        assert_eq!(conv_out(7, 3, 2, 1), 4);
    }
}
