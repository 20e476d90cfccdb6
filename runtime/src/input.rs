//! Model input: the [`Batch`] tensor, and (feature `image`, on by default) turning image
//! files into one (`decode`).
//!
//! Images are decoded with the `image` crate (PNG, JPEG, BMP, GIF, PNM, TIFF, WebP), converted
//! to the model's channel count (1 → luma, 3 → RGB), centre-cropped to the model's aspect
//! ratio and resized to H×W (the shorter side is kept whole, the borders of a non-square image
//! are cut off rather than squashed), then scaled linearly from 0..=255 to the manifest's
//! `value_range`. Any further normalisation is the graph's business.
//!
//! Every size is bounded before the memory for it is taken: the file ([`MAX_IMAGE_FILE_BYTES`],
//! regular files only), the decoded image (each side at most [`MAX_IMAGE_SIDE`], all pixels
//! at most [`MAX_DECODE_BYTES`], checked from the header before decoding), the batch
//! ([`MAX_BATCH_ELEMENTS`]). Cropping before resizing means the resized image is always
//! exactly H×W: a 1×2,000,000 strip is never enlarged to 8×16,000,000 on the way.

#[cfg(feature = "image")]
mod decode;
#[cfg(feature = "image")]
pub use decode::{decode_image, load_image};

use crate::error::{Result, RuntimeError};

/// Decoded images larger than this (in bytes) are refused: a hostile file must not make the
/// decoder allocate gigabytes. Checked by the decoder against the header's dimensions before
/// the pixel buffer is allocated.
pub const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;

/// Longest image side accepted, in pixels, checked from the header before decoding. Above
/// any camera sensor (a 200-megapixel sensor is about 16,000 pixels wide), and it keeps
/// thin strips (1×2,000,000) out before their rows are read.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// Largest image file read, in bytes: an uncompressed 24-bit 4096×4096 BMP is 48 MiB.
pub const MAX_IMAGE_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Re-exported where images are turned into inputs; a limit of the manifest's input shape.
pub use crate::manifest::MAX_INPUT_ELEMENTS;

/// Largest batch, in values (n·C·H·W; 256 Mi values, 1 GiB of f32): batch 1024 of 3×224×224
/// fits. [`Batch::new`], [`Batch::from_images`] and [`crate::bench::synthetic_batch`] refuse
/// larger batches before allocating them.
pub const MAX_BATCH_ELEMENTS: usize = 1 << 28;

/// Checks that an `[n, C, H, W]` batch is within [`MAX_BATCH_ELEMENTS`] and returns its
/// number of values.
pub fn batch_elements(shape: [usize; 4]) -> Result<usize> {
    let too_large = || {
        RuntimeError::invalid_argument(
            "batch",
            format!(
                "shape {shape:?} holds more than {MAX_BATCH_ELEMENTS} values; use smaller batches"
            ),
        )
    };
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(too_large)?;
    if n > MAX_BATCH_ELEMENTS {
        return Err(too_large());
    }
    Ok(n)
}

/// An `[n, C, H, W]` f32 tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    shape: [usize; 4],
    data: Vec<f32>,
}

impl Batch {
    /// `data.len()` must equal the product of `shape`; otherwise a
    /// [`RuntimeError::Shape`] whose `got` is `[data.len()]`. Shapes over
    /// [`MAX_BATCH_ELEMENTS`] values are [`RuntimeError::InvalidArgument`].
    pub fn new(shape: [usize; 4], data: Vec<f32>) -> Result<Batch> {
        let expected = batch_elements(shape)?;
        if expected != data.len() {
            return Err(RuntimeError::Shape {
                expected: shape.to_vec(),
                got: vec![data.len()],
            });
        }
        Ok(Batch { shape, data })
    }

    /// Loads and stacks images (see the module docs for the preprocessing). Feature `image`.
    #[cfg(feature = "image")]
    pub fn from_images<P: AsRef<std::path::Path>>(
        paths: &[P],
        spec: &crate::manifest::InputSpec,
    ) -> Result<Batch> {
        let [c, h, w] = spec.shape;
        let len = batch_elements([paths.len(), c, h, w])?;
        let mut data = Vec::with_capacity(len);
        for p in paths {
            data.extend(load_image(p.as_ref(), spec)?);
        }
        Batch::new([paths.len(), c, h, w], data)
    }

    /// `[n, C, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// `n`, the number of images.
    pub fn batch_size(&self) -> usize {
        self.shape[0]
    }

    /// The values, row-major (image, then channel, then row, then column).
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The buffer back, for reuse.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_checks_length() {
        assert!(Batch::new([2, 1, 2, 2], vec![0.0; 8]).is_ok());
        assert!(matches!(
            Batch::new([2, 1, 2, 2], vec![0.0; 7]),
            Err(RuntimeError::Shape { .. })
        ));
        assert!(Batch::new([usize::MAX, 2, 1, 1], vec![]).is_err());
    }
}
