//! `dir/<class>/<image>` folders; layout and split rules are documented on
//! [`DatasetKind::ImageFolder`](super::DatasetKind::ImageFolder).

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use super::decode::{alloc_values, u8_to_unit};
use super::error::{io_err, malformed, too_large};
use super::{DataError, Dataset, Split};
use crate::limits::{
    read_limited, MAX_DATASET_VALUES, MAX_IMAGE_DECODE_BYTES, MAX_IMAGE_FILE_BYTES, MAX_IMAGE_SIDE,
};

/// Position (0-based, per class, by file name) of the files held out for Val when
/// there is no `val/` folder: the 10th, 20th, … file.
fn is_val_file(i: usize) -> bool {
    i % 10 == 9
}

pub(super) fn load(dir: &Path, split: Split, limit: Option<usize>) -> Result<Dataset, DataError> {
    let sub = |s: &str| Some(dir.join(s)).filter(|p| p.is_dir());
    let (train, val, test) = (sub("train"), sub("val"), sub("test"));
    let split_layout = train.is_some() || val.is_some() || test.is_some();
    let missing = |name: &str, what: &str| DataError::Missing {
        path: dir.join(name),
        what: what.to_string(),
    };
    // (folder holding the class folders, which files of each class to take)
    let (root, keep): (PathBuf, fn(usize) -> bool) = match (split, split_layout) {
        (Split::Test, false) => {
            return Err(missing(
                "test",
                "an image folder without train/ val/ test/ sub-folders has no Test split; add a test/ folder",
            ))
        }
        (Split::Test, true) => (test.ok_or_else(|| missing("test", "no test/ folder for the Test split"))?, |_| true),
        (Split::Val, true) if val.is_some() => (dir.join("val"), |_| true),
        (Split::Train, true) if val.is_some() => {
            (train.clone().ok_or_else(|| missing("train", "no train/ folder for the Train split"))?, |_| true)
        }
        (_, true) => (
            train.clone().ok_or_else(|| missing("train", "no train/ (and no val/) folder to take the split from"))?,
            if split == Split::Val { is_val_file } else { |i| !is_val_file(i) },
        ),
        (_, false) => (dir.to_path_buf(), if split == Split::Val { is_val_file } else { |i| !is_val_file(i) }),
    };
    // Class indices always come from the training classes, so labels agree across splits.
    let class_root = train.unwrap_or_else(|| root.clone());
    let class_names = list(&class_root, true)?;
    if class_names.is_empty() {
        return Err(DataError::Empty { path: class_root });
    }

    let mut files: Vec<(PathBuf, i64)> = Vec::new();
    for class in list(&root, true)? {
        let label = class_names
            .iter()
            .position(|c| *c == class)
            .ok_or_else(|| {
                malformed(
                    &root.join(&class),
                    format!("class folder not present in {}", class_root.display()),
                )
            })?;
        let class_dir = root.join(&class);
        let images: Vec<String> = list(&class_dir, false)?
            .into_iter()
            .filter(|f| ImageFormat::from_path(f).is_ok_and(|fmt| fmt.reading_enabled()))
            .collect();
        files.extend(
            images
                .into_iter()
                .enumerate()
                .filter(|&(i, _)| keep(i))
                .map(|(_, f)| (class_dir.join(f), label as i64)),
        );
    }
    if files.is_empty() {
        return Err(DataError::EmptySplit {
            path: root,
            split,
            reason: "no image files (by extension) selected for this split".into(),
        });
    }
    files.truncate(limit.unwrap_or(usize::MAX));
    decode_all(&files, class_names)
}

/// Sorted names of the non-hidden sub-folders (`dirs`) or files of `dir`.
fn list(dir: &Path, dirs: bool) -> Result<Vec<String>, DataError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        // fs::metadata follows symlinks.
        let is_dir = fs::metadata(&path).map_err(io_err(&path))?.is_dir();
        if !name.starts_with('.') && is_dir == dirs {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Decodes every image; each is bounded before it is decoded: a regular file of at most
/// [`MAX_IMAGE_FILE_BYTES`], a header of at most [`MAX_IMAGE_SIDE`] per side and the size
/// of the first image, and all of them together at most [`MAX_DATASET_VALUES`].
fn decode_all(files: &[(PathBuf, i64)], class_names: Vec<String>) -> Result<Dataset, DataError> {
    let mut decoded: Vec<DynamicImage> = Vec::with_capacity(files.len());
    let mut size = (0, 0);
    for (i, (path, _)) in files.iter().enumerate() {
        let bytes = read_limited(path, MAX_IMAGE_FILE_BYTES).map_err(io_err(path))?;
        let found = read_dimensions(path, &bytes)?;
        if i == 0 {
            size = found;
            // Counted as 3 channels: whether the split is gray is known only once decoded.
            let values = (files.len() as u64)
                .saturating_mul(3)
                .saturating_mul(found.0 as u64 * found.1 as u64);
            if values > MAX_DATASET_VALUES {
                return Err(too_large(
                    path,
                    format!(
                        "{} images of {}×{} (this one's size) are {values} values",
                        files.len(),
                        found.0,
                        found.1
                    ),
                    format!("{MAX_DATASET_VALUES} values per split"),
                ));
            }
        } else if found != size {
            return Err(DataError::SizeMismatch {
                path: path.clone(),
                first: files[0].0.clone(),
                expected: size,
                found,
            });
        }
        decoded.push(decode(path, &bytes)?);
    }
    let gray = decoded.iter().all(|im| !im.color().has_color());
    let channels = if gray { 1 } else { 3 };
    let (w, h) = (size.0 as usize, size.1 as usize);
    let plane = w * h;
    let lut = u8_to_unit();
    let mut images = alloc_values(&files[0].0, files.len() * channels * plane)?;
    for (img, out) in decoded
        .into_iter()
        .zip(images.chunks_exact_mut(channels * plane))
    {
        if gray {
            for (o, &b) in out.iter_mut().zip(img.into_luma8().as_raw()) {
                *o = lut[b as usize];
            }
        } else {
            // Interleaved HWC -> planar CHW; alpha (if any) is dropped.
            for (k, px) in img.into_rgb8().as_raw().chunks_exact(3).enumerate() {
                for c in 0..3 {
                    out[c * plane + k] = lut[px[c] as usize];
                }
            }
        }
    }
    Ok(Dataset {
        images,
        labels: files.iter().map(|&(_, l)| l).collect(),
        channels,
        height: h,
        width: w,
        class_names,
    })
}

/// A reader of `bytes` (the file at `path`, read as the format its extension names) that
/// refuses to decode more than [`MAX_IMAGE_SIDE`] per side or [`MAX_IMAGE_DECODE_BYTES`].
fn reader<'a>(path: &Path, bytes: &'a [u8]) -> Result<ImageReader<Cursor<&'a [u8]>>, DataError> {
    let format = ImageFormat::from_path(path).map_err(|source| DataError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE as u32);
    limits.max_image_height = Some(MAX_IMAGE_SIDE as u32);
    limits.max_alloc = Some(MAX_IMAGE_DECODE_BYTES);
    reader.limits(limits);
    Ok(reader)
}

/// (width, height) from the image header only, each in `1..=MAX_IMAGE_SIDE`.
fn read_dimensions(path: &Path, bytes: &[u8]) -> Result<(u32, u32), DataError> {
    let decode_err = |source| DataError::Decode {
        path: path.to_path_buf(),
        source,
    };
    // Without limits here: the header is read to report the size, not to allocate for it.
    let format = ImageFormat::from_path(path).map_err(decode_err)?;
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(decode_err)?;
    if w == 0 || h == 0 {
        return Err(malformed(path, format!("image is {w}×{h}")));
    }
    if w as usize > MAX_IMAGE_SIDE || h as usize > MAX_IMAGE_SIDE {
        return Err(too_large(
            path,
            format!("image is {w}×{h} (width × height)"),
            format!("{MAX_IMAGE_SIDE} pixels per side"),
        ));
    }
    Ok((w, h))
}

fn decode(path: &Path, bytes: &[u8]) -> Result<DynamicImage, DataError> {
    reader(path, bytes)?
        .decode()
        .map_err(|source| DataError::Decode {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::super::{load as load_any, DatasetKind};
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn rgb(seed: u8, w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([seed, x as u8 * 10 + y as u8, 255 - seed]))
    }

    /// `root/<class>/<i>.png` for the given per-class counts, 4×3 RGB images.
    fn write_classes(root: &Path, classes: &[(&str, usize)]) {
        for (ci, &(class, count)) in classes.iter().enumerate() {
            fs::create_dir_all(root.join(class)).unwrap();
            for i in 0..count {
                rgb((ci * 100 + i) as u8, 4, 3)
                    .save(root.join(class).join(format!("{i:02}.png")))
                    .unwrap();
            }
        }
    }

    #[test]
    fn folder_flat_layout_every_10th_is_val() {
        let tmp = tempfile::tempdir().unwrap();
        write_classes(tmp.path(), &[("cat", 11), ("bird", 2)]);
        fs::write(tmp.path().join("cat").join("notes.txt"), "not an image").unwrap();
        fs::write(tmp.path().join("cat").join(".hidden.png"), "junk").unwrap();
        let train = load_any(DatasetKind::ImageFolder, tmp.path(), Split::Train, None).unwrap();
        let val = load_any(DatasetKind::ImageFolder, tmp.path(), Split::Val, None).unwrap();
        assert_eq!(train.class_names, ["bird", "cat"]);
        assert_eq!((train.channels, train.height, train.width), (3, 3, 4));
        // bird 00, 01; cat 00..08 and 10 (09 is the 10th file -> Val)
        assert_eq!(train.labels, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert_eq!(val.labels, [1]);
        // val image = cat/09.png: seed 9; pixel (c=1, y=2, x=3) = 3*10 + 2.
        let plane = 12;
        assert_eq!(val.images[0], 9.0 / 255.0);
        assert_eq!(val.images[plane + 2 * 4 + 3], 32.0 / 255.0);
        assert_eq!(val.images[2 * plane + 5], 246.0 / 255.0);
        // train[11] = cat/10.png (seed 10)
        assert_eq!(train.images[11 * 3 * plane], 10.0 / 255.0);
        // bird is class 0 (sorted) but was written with seed 100+.
        assert_eq!(train.images[0], 100.0 / 255.0);
        assert_eq!(
            load_any(DatasetKind::ImageFolder, tmp.path(), Split::Train, Some(3))
                .unwrap()
                .len(),
            3
        );
        let e = load_any(DatasetKind::ImageFolder, tmp.path(), Split::Test, None).unwrap_err();
        assert!(
            matches!(e, DataError::Missing { .. }) && e.to_string().contains("test"),
            "{e}"
        );
    }

    #[test]
    fn folder_split_layout_and_grayscale() {
        let tmp = tempfile::tempdir().unwrap();
        for split in ["train", "test"] {
            for (ci, class) in ["a", "b"].iter().enumerate() {
                let d = tmp.path().join(split).join(class);
                fs::create_dir_all(&d).unwrap();
                for i in 0..3u8 {
                    GrayImage::from_fn(2, 2, |x, y| {
                        Luma([ci as u8 * 50 + i * 10 + (2 * y + x) as u8])
                    })
                    .save(d.join(format!("{i}.png")))
                    .unwrap();
                }
            }
        }
        // test/ only has class b: labels must still use train/'s indices.
        fs::remove_dir_all(tmp.path().join("test").join("a")).unwrap();
        let test = load_any(DatasetKind::ImageFolder, tmp.path(), Split::Test, None).unwrap();
        assert_eq!((test.channels, test.height, test.width), (1, 2, 2));
        assert_eq!(test.labels, [1, 1, 1]);
        assert_eq!(
            test.images[4..8],
            [60.0 / 255.0, 61.0 / 255.0, 62.0 / 255.0, 63.0 / 255.0]
        );
        // No val/: train/ has 3 files per class -> no 10th file -> Val is empty.
        assert_eq!(
            load_any(DatasetKind::ImageFolder, tmp.path(), Split::Train, None)
                .unwrap()
                .len(),
            6
        );
        let e = load_any(DatasetKind::ImageFolder, tmp.path(), Split::Val, None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::EmptySplit {
                    split: Split::Val,
                    ..
                }
            ),
            "{e}"
        );
        // With val/: it is used as is.
        fs::create_dir_all(tmp.path().join("val").join("a")).unwrap();
        fs::copy(
            tmp.path().join("train/a/0.png"),
            tmp.path().join("val/a/x.png"),
        )
        .unwrap();
        assert_eq!(
            load_any(DatasetKind::ImageFolder, tmp.path(), Split::Val, None)
                .unwrap()
                .labels,
            [0]
        );
        // A class folder unknown to train/ is an error.
        fs::create_dir_all(tmp.path().join("val").join("zebra")).unwrap();
        let e = load_any(DatasetKind::ImageFolder, tmp.path(), Split::Val, None).unwrap_err();
        assert!(e.to_string().contains("zebra"), "{e}");
    }

    #[test]
    fn folder_size_mismatch_and_bad_image_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_classes(tmp.path(), &[("a", 2), ("b", 1)]);
        rgb(7, 5, 3)
            .save(tmp.path().join("b").join("zz.png"))
            .unwrap();
        let e = load_any(DatasetKind::ImageFolder, tmp.path(), Split::Train, None).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(&e, DataError::SizeMismatch { path, expected: (4, 3), found: (5, 3), .. } if path.ends_with("b/zz.png")),
            "{msg}"
        );
        assert!(
            msg.contains("zz.png") && msg.contains("5×3") && msg.contains("a/00.png"),
            "{msg}"
        );
        fs::write(tmp.path().join("b").join("zz.png"), b"not a png").unwrap();
        let e = load_any(DatasetKind::ImageFolder, tmp.path(), Split::Train, None).unwrap_err();
        assert!(
            matches!(&e, DataError::Decode { path, .. } if path.ends_with("b/zz.png")),
            "{e}"
        );
    }
}
