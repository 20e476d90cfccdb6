//! Model input: the [`Batch`] tensor and turning image files into one.
//!
//! Images are decoded with the `image` crate (PNG, JPEG, BMP, GIF, PNM, TIFF, WebP), converted
//! to the model's channel count (1 → luma, 3 → RGB), resized so that the *shorter* side
//! matches and centre-cropped to H×W (aspect ratio is kept, the borders of a non-square image
//! are cut off rather than squashed), then scaled linearly from 0..=255 to the manifest's
//! `value_range`. Any further normalisation is the graph's business.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits};

use crate::error::{BoxError, Result, RuntimeError};
use crate::manifest::InputSpec;

/// Decoded images larger than this (in bytes) are refused: a hostile file must not make the
/// decoder allocate gigabytes.
const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;

/// An `[n, C, H, W]` f32 tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    shape: [usize; 4],
    data: Vec<f32>,
}

impl Batch {
    /// `data.len()` must equal the product of `shape`; otherwise a
    /// [`RuntimeError::Shape`] whose `got` is `[data.len()]`.
    pub fn new(shape: [usize; 4], data: Vec<f32>) -> Result<Batch> {
        let expected = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if expected != Some(data.len()) {
            return Err(RuntimeError::Shape {
                expected: shape.to_vec(),
                got: vec![data.len()],
            });
        }
        Ok(Batch { shape, data })
    }

    /// Loads and stacks images (see the module docs for the preprocessing).
    pub fn from_images<P: AsRef<Path>>(paths: &[P], spec: &InputSpec) -> Result<Batch> {
        let [c, h, w] = spec.shape;
        let mut data = Vec::with_capacity(paths.len() * c * h * w);
        for p in paths {
            data.extend(load_image(p.as_ref(), spec)?);
        }
        Batch::new([paths.len(), c, h, w], data)
    }

    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    pub fn batch_size(&self) -> usize {
        self.shape[0]
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
}

/// One image file as a `C*H*W` vector in CHW order.
pub fn load_image(path: &Path, spec: &InputSpec) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::read(path, e))?;
    decode_image(&bytes, spec, path)
}

/// Like [`load_image`] for bytes already in memory; `name` only labels errors.
pub fn decode_image(bytes: &[u8], spec: &InputSpec, name: &Path) -> Result<Vec<f32>> {
    let err = |source: BoxError| RuntimeError::Image {
        path: name.to_path_buf(),
        source,
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.into()))?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| err(e.into()))?;
    to_tensor(&img, spec).map_err(|message| err(message.into()))
}

fn to_tensor(img: &DynamicImage, spec: &InputSpec) -> Result<Vec<f32>, String> {
    let [c, h, w] = spec.shape;
    let (h32, w32) = (to_u32(h)?, to_u32(w)?);
    let img = resize_and_crop(img, w32, h32)?;
    let [lo, hi] = spec.value_range;
    let scale = |p: u8| lo + (hi - lo) * (f32::from(p) / 255.0);
    let plane = h * w;
    let mut out = vec![0.0; c * plane];
    match c {
        1 => {
            for (i, p) in img.to_luma8().pixels().enumerate() {
                out[i] = scale(p.0[0]);
            }
        }
        3 => {
            for (i, p) in img.to_rgb8().pixels().enumerate() {
                for ch in 0..3 {
                    out[ch * plane + i] = scale(p.0[ch]);
                }
            }
        }
        _ => {
            return Err(format!(
            "the model expects {c} channels; only 1 (grey) and 3 (RGB) can be made from an image"
        ))
        }
    }
    Ok(out)
}

/// Resize so the shorter side fits, then centre-crop to exactly `w`×`h`.
fn resize_and_crop(img: &DynamicImage, w: u32, h: u32) -> Result<DynamicImage, String> {
    let (iw, ih) = (img.width(), img.height());
    if iw == 0 || ih == 0 {
        return Err("image has no pixels".into());
    }
    if (iw, ih) == (w, h) {
        return Ok(img.clone());
    }
    let scale = f64::max(f64::from(w) / f64::from(iw), f64::from(h) / f64::from(ih));
    let rw = ((f64::from(iw) * scale).round() as u32).max(w);
    let rh = ((f64::from(ih) * scale).round() as u32).max(h);
    let resized = img.resize_exact(rw, rh, FilterType::Triangle);
    Ok(resized.crop_imm((rw - w) / 2, (rh - h) / 2, w, h))
}

fn to_u32(d: usize) -> Result<u32, String> {
    u32::try_from(d).map_err(|_| format!("dimension {d} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn spec(c: usize, h: usize, w: usize) -> InputSpec {
        InputSpec {
            name: "image".into(),
            shape: [c, h, w],
            value_range: [0.0, 1.0],
        }
    }

    #[test]
    fn crop_keeps_the_centre() {
        // 4x2 image: left half black, middle two columns white, right black.
        let mut img = GrayImage::new(4, 2);
        for y in 0..2 {
            img.put_pixel(1, y, Luma([255]));
            img.put_pixel(2, y, Luma([255]));
        }
        let out = to_tensor(&DynamicImage::ImageLuma8(img), &spec(1, 2, 2)).unwrap_or_default();
        assert_eq!(out, vec![1.0; 4]);
    }

    #[test]
    fn rgb_is_planar_and_scaled_to_value_range() {
        let img = RgbImage::from_pixel(2, 2, Rgb([255, 0, 51]));
        let s = InputSpec {
            value_range: [-1.0, 1.0],
            ..spec(3, 2, 2)
        };
        let out = to_tensor(&DynamicImage::ImageRgb8(img), &s).unwrap_or_default();
        assert_eq!(&out[0..4], &[1.0; 4]);
        assert_eq!(&out[4..8], &[-1.0; 4]);
        // 51/255 scaled to [-1, 1] is -0.6 up to f32 rounding.
        assert!((out[8] - (-0.6)).abs() < 1e-6);
    }

    #[test]
    fn unsupported_channel_count() {
        let img = DynamicImage::ImageLuma8(GrayImage::new(2, 2));
        assert!(to_tensor(&img, &spec(4, 2, 2)).is_err());
    }

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
