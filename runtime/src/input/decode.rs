//! Image files → model input (feature `image`): decoding with bounded sizes, channel
//! conversion, centre crop, resize and scaling, as the parent module describes.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits};

use super::{MAX_DECODE_BYTES, MAX_IMAGE_FILE_BYTES, MAX_IMAGE_SIDE, MAX_INPUT_ELEMENTS};
use crate::error::{BoxError, Result};
use crate::files::read_regular_file;
use crate::manifest::InputSpec;
use crate::RuntimeError;

/// One image file as a `C*H*W` vector in CHW order. The file must be a regular file of at
/// most [`MAX_IMAGE_FILE_BYTES`] (a FIFO or a device is refused without being opened).
pub fn load_image(path: &Path, spec: &InputSpec) -> Result<Vec<f32>> {
    let bytes = read_regular_file(path, "an image", MAX_IMAGE_FILE_BYTES)?;
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
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| err(e.into()))?;
    to_tensor(&img, spec).map_err(|message| err(message.into()))
}

fn to_tensor(img: &DynamicImage, spec: &InputSpec) -> Result<Vec<f32>, String> {
    let [c, h, w] = spec.shape;
    let elements = c.checked_mul(h).and_then(|x| x.checked_mul(w));
    if elements.is_none_or(|n| n > MAX_INPUT_ELEMENTS) {
        return Err(format!(
            "the model input {c}×{h}×{w} holds more than {MAX_INPUT_ELEMENTS} values"
        ));
    }
    let (h32, w32) = (to_u32(h)?, to_u32(w)?);
    let img = crop_and_resize(img, w32, h32)?;
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

/// Centre-crop to the aspect ratio of `w`×`h` (keeping the whole shorter side), then resize
/// to exactly `w`×`h`. The same picture as resizing the shorter side first and cropping
/// after, but nothing larger than the source or the result is ever allocated: resizing
/// first would enlarge a thin strip along its long side (1×2,000,000 to 8 wide: 16 million
/// rows of 8 pixels).
fn crop_and_resize(img: &DynamicImage, w: u32, h: u32) -> Result<DynamicImage, String> {
    let (iw, ih) = (img.width(), img.height());
    if iw == 0 || ih == 0 {
        return Err("image has no pixels".into());
    }
    if w == 0 || h == 0 {
        return Err(format!("cannot resize to {w}×{h}"));
    }
    if (iw, ih) == (w, h) {
        return Ok(img.clone());
    }
    // The largest w:h window that fits in the image, in source pixels.
    let (cw, ch) = if u64::from(iw) * u64::from(h) >= u64::from(ih) * u64::from(w) {
        // Wider than the target: keep the full height.
        let cw = (f64::from(ih) * f64::from(w) / f64::from(h)).round() as u32;
        (cw.clamp(1, iw), ih)
    } else {
        let ch = (f64::from(iw) * f64::from(h) / f64::from(w)).round() as u32;
        (iw, ch.clamp(1, ih))
    };
    let cropped = img.crop_imm((iw - cw) / 2, (ih - ch) / 2, cw, ch);
    if (cw, ch) == (w, h) {
        return Ok(cropped);
    }
    Ok(cropped.resize_exact(w, h, FilterType::Triangle))
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
}
