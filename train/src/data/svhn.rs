//! SVHN cropped digits (format 2): `train_32x32.mat`, `test_32x32.mat` (`extra` unused).
//!
//! Variables (as `scipy.io.loadmat` shows them): `X` uint8 of shape 32×32×3×N and
//! `y` N×1 (double) with labels 1..=10, where 10 means digit 0 (mapped to class 0,
//! so class `k` is digit `k`). MATLAB stores `X` column-major with `X(h, w, c, n)`
//! the pixel at row `h`, column `w` (that is how `imshow(X(:,:,:,n))` / scipy's
//! `X[:, :, :, n]` show the image), i.e. byte `h + 32·(w + 32·(c + 3·n))`; we
//! transpose to NCHW.

use std::path::Path;

use super::decode::{alloc_values, u8_to_unit};
use super::error::malformed;
use super::split::train_val;
use super::{mat, DataError, Dataset, DatasetKind, Split};

pub(super) fn load(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let name = if split == Split::Test {
        "test_32x32.mat"
    } else {
        "train_32x32.mat"
    };
    let path = dir.join(name);
    let ds = read(&path)?;
    train_val(ds, DatasetKind::Svhn, split, &path)
}

fn read(path: &Path) -> Result<Dataset, DataError> {
    let mut x = None;
    let mut y = None;
    for v in mat::read_vars(path, &["X", "y"])? {
        if v.name == "X" {
            x = Some(v);
        } else {
            y = Some(v);
        }
    }
    let (Some(x), Some(y)) = (x, y) else {
        return Err(malformed(path, "expected numeric variables X and y"));
    };
    // MATLAB drops trailing singleton dims, so a single image is 32×32×3.
    let (h, w, c, n) = match x.dims[..] {
        [h, w, c] => (h, w, c, 1),
        [h, w, c, n] => (h, w, c, n),
        _ => {
            return Err(malformed(
                path,
                format!("X has dimensions {:?}, expected H×W×C×N", x.dims),
            ))
        }
    };
    if n == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    if h == 0 || w == 0 || c == 0 {
        return Err(malformed(path, format!("X has dimensions {:?}", x.dims)));
    }
    if y.len() != n || y.dims.iter().filter(|&&d| d != 1).count() > 1 {
        return Err(malformed(
            path,
            format!("X holds {n} images but y has dimensions {:?}", y.dims),
        ));
    }
    let raw_y = y.to_f64(path)?;
    let labels = raw_y
        .iter()
        .enumerate()
        .map(|(index, &v)| {
            if v.fract() == 0.0 && (1.0..=10.0).contains(&v) {
                Ok(v as i64 % 10)
            } else {
                Err(DataError::BadLabel {
                    path: path.to_path_buf(),
                    index,
                    label: v as i64,
                    expected: format!("an integer 1..=10 (10 = digit 0), got {v}"),
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let src = x.into_u8(path)?;
    let lut = u8_to_unit();
    let mut images = alloc_values(path, src.len())?;
    // src[h + H*(w + W*(c + C*n))] -> images[((n*C + c)*H + h)*W + w]; the (c, n)
    // planes are contiguous in both layouts, only h/w swap.
    let plane = h * w;
    for (s, d) in src.chunks_exact(plane).zip(images.chunks_exact_mut(plane)) {
        for (wi, col) in s.chunks_exact(h).enumerate() {
            for (hi, &b) in col.iter().enumerate() {
                d[hi * w + wi] = lut[b as usize];
            }
        }
    }
    Ok(Dataset {
        images,
        labels,
        channels: c,
        height: h,
        width: w,
        class_names: (0..10).map(|d| d.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::load as load_any;
    use super::super::mat::writer::*;
    use super::*;
    use std::fs;

    const H: usize = 32;
    const W: usize = 32;

    fn px(n: usize, c: usize, h: usize, w: usize) -> u8 {
        ((n * 29 + c * 83 + h * 5 + w * 11) % 256) as u8
    }

    /// X in MATLAB column-major order: index h + 32*(w + 32*(c + 3*n)).
    fn x_col_major(n_images: usize) -> Vec<u8> {
        let mut v = vec![0u8; H * W * 3 * n_images];
        for n in 0..n_images {
            for c in 0..3 {
                for w in 0..W {
                    for h in 0..H {
                        v[h + H * (w + W * (c + 3 * n))] = px(n, c, h, w);
                    }
                }
            }
        }
        v
    }

    /// A SVHN-like MAT-file: labels 1..=10 cycling, y as doubles.
    pub(crate) fn svhn_mat(n: usize, compress: bool) -> Vec<u8> {
        let y: Vec<u8> = (0..n)
            .flat_map(|i| (((i % 10) + 1) as f64).to_le_bytes())
            .collect();
        file(
            &[
                matrix("X", MX_UINT8, &[32, 32, 3, n as u32], 2, &x_col_major(n)),
                matrix("y", MX_DOUBLE, &[n as u32, 1], MI_DOUBLE, &y),
            ],
            compress,
        )
    }

    fn at(d: &Dataset, n: usize, c: usize, h: usize, w: usize) -> f32 {
        d.images[((n * 3 + c) * H + h) * W + w]
    }

    #[test]
    fn svhn_pixels_labels_and_splits() {
        for compress in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            fs::write(tmp.path().join("train_32x32.mat"), svhn_mat(28, compress)).unwrap();
            fs::write(tmp.path().join("test_32x32.mat"), svhn_mat(11, compress)).unwrap();
            let train = load_any(DatasetKind::Svhn, tmp.path(), Split::Train, None).unwrap();
            let val = load_any(DatasetKind::Svhn, tmp.path(), Split::Val, None).unwrap();
            let test = load_any(DatasetKind::Svhn, tmp.path(), Split::Test, None).unwrap();
            assert_eq!((train.len(), val.len(), test.len()), (26, 2, 11)); // ⌊28/14⌋ = 2
            assert_eq!((train.channels, train.height, train.width), (3, 32, 32));
            // Stored 1..=10 -> 1..9, 0 (10 = digit 0).
            assert_eq!(&test.labels, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
            assert_eq!(val.labels, vec![7, 8]); // samples 26, 27 stored as 7, 8
            assert_eq!(test.class_names[0], "0");
            for (n, c, h, w) in [(0, 0, 0, 1), (0, 0, 1, 0), (5, 2, 31, 7), (25, 1, 3, 30)] {
                assert_eq!(
                    at(&train, n, c, h, w),
                    px(n, c, h, w) as f32 / 255.0,
                    "{n} {c} {h} {w}"
                );
            }
            assert_eq!(at(&val, 1, 2, 17, 4), px(27, 2, 17, 4) as f32 / 255.0);
            assert_eq!(at(&test, 10, 0, 9, 31), px(10, 0, 9, 31) as f32 / 255.0);
        }
    }

    #[test]
    fn svhn_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("test_32x32.mat");
        let full = svhn_mat(3, true);
        fs::write(&p, &full[..full.len() / 2]).unwrap();
        let e = load_any(DatasetKind::Svhn, tmp.path(), Split::Test, None).unwrap_err();
        assert!(
            matches!(e, DataError::Truncated { .. }) && e.to_string().contains("test_32x32.mat"),
            "{e}"
        );
        // Label 0 is not a valid SVHN label (digit 0 is stored as 10).
        let y: Vec<u8> = [3.0f64, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bad = file(
            &[
                matrix("X", MX_UINT8, &[32, 32, 3, 2], 2, &x_col_major(2)),
                matrix("y", MX_DOUBLE, &[2, 1], MI_DOUBLE, &y),
            ],
            false,
        );
        fs::write(&p, bad).unwrap();
        let e = load_any(DatasetKind::Svhn, tmp.path(), Split::Test, None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::BadLabel {
                    index: 1,
                    label: 0,
                    ..
                }
            ),
            "{e}"
        );
        // y count differs from N.
        let bad = file(
            &[
                matrix("X", MX_UINT8, &[32, 32, 3, 2], 2, &x_col_major(2)),
                matrix("y", MX_DOUBLE, &[1, 1], MI_DOUBLE, &y[..8]),
            ],
            false,
        );
        fs::write(&p, bad).unwrap();
        let e = load_any(DatasetKind::Svhn, tmp.path(), Split::Test, None).unwrap_err();
        assert!(e.to_string().contains("X holds 2 images"), "{e}");
        let e = load_any(DatasetKind::Svhn, tmp.path(), Split::Train, None).unwrap_err();
        assert!(
            matches!(&e, DataError::Missing { path, .. } if path.ends_with("train_32x32.mat")),
            "{e}"
        );
    }
}
