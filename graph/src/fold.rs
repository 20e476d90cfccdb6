//! Folding a per-channel affine y = s·x + t (BN and FiLM at a fixed λ, docs/method.md §6)
//! into the bias-free convolution before it: W'[o] = s[o]·W[o], b'[o] = t[o].
//! Pure functions over flat row-major buffers, tested inline.
use crate::error::{Error, Result};

/// Returns (W', b') for a convolution weight of `out_channels` rows; an error when the
/// lengths disagree (`scale`, `shift` of `out_channels` values, `weight` a multiple of it).
pub fn fold_affine_into_conv(
    weight: &[f32],
    out_channels: usize,
    scale: &[f32],
    shift: &[f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    if out_channels == 0
        || scale.len() != out_channels
        || shift.len() != out_channels
        || !weight.len().is_multiple_of(out_channels)
    {
        return Err(Error::Request(format!(
            "cannot fold an affine of {} scales and {} shifts into a convolution of {} \
             weights in {out_channels} rows",
            scale.len(),
            shift.len(),
            weight.len()
        )));
    }
    let per = weight.len() / out_channels;
    let mut w = weight.to_vec();
    if per > 0 {
        for (chunk, &s) in w.chunks_mut(per).zip(scale) {
            for v in chunk {
                *v *= s;
            }
        }
    }
    Ok((w, shift.to_vec()))
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
        let (wf, bf) = fold_affine_into_conv(&w, 2, &s, &t).unwrap();
        for o in 0..2 {
            let plain: f32 = (0..3).map(|i| w[o * 3 + i] * x[i]).sum::<f32>() * s[o] + t[o];
            let folded: f32 = (0..3).map(|i| wf[o * 3 + i] * x[i]).sum::<f32>() + bf[o];
            assert!((plain - folded).abs() < 1e-6, "{plain} vs {folded}");
        }
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        assert!(fold_affine_into_conv(&[1.0; 6], 2, &[1.0], &[0.0, 0.0]).is_err());
        assert!(fold_affine_into_conv(&[1.0; 5], 2, &[1.0; 2], &[0.0; 2]).is_err());
        assert!(fold_affine_into_conv(&[], 0, &[], &[]).is_err());
    }

    #[test]
    fn conv_output_sizes() {
        assert_eq!(conv_out(32, 3, 1, 1), 32);
        assert_eq!(conv_out(32, 3, 2, 1), 16);
        assert_eq!(conv_out(28, 1, 2, 0), 14);
        assert_eq!(conv_out(7, 3, 2, 1), 4);
    }
}
