//! CIFAR-10 "binary version" (`cifar-10-binary.tar.gz`).
//!
//! Each file is a sequence of 3073-byte records: 1 label byte, then 3072 pixel bytes
//! = 1024 R, 1024 G, 1024 B, each a row-major 32×32 plane — already CHW.
//!
//! Train/Val come from `data_batch_1.bin`, `data_batch_2.bin`, … concatenated in
//! that order. The batches present must be numbered contiguously from 1 (at most 5):
//! a gap means an incomplete download, which would silently shift the Val split.
//! `dir` may be the folder with the `.bin` files or its parent holding
//! `cifar-10-batches-bin/`.

use std::path::{Path, PathBuf};

use super::decode::{convert_labels, reserve_values, u8_to_unit};
use super::error::malformed;
use super::files::{class_names_from, maybe_nested, read_file};
use super::split::train_val;
use super::{DataError, Dataset, DatasetKind, Split};

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;
const RECORD: usize = 1 + PIXELS;
const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

pub(super) fn load(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let root = maybe_nested(dir, "cifar-10-batches-bin", "data_batch_1.bin");
    let class_names = class_names_from(&root.join("batches.meta.txt"), &CLASSES)?;
    let files = if split == Split::Test {
        vec![root.join("test_batch.bin")]
    } else {
        data_batches(&root)?
    };
    let mut ds = Dataset {
        images: Vec::new(),
        labels: Vec::new(),
        channels: 3,
        height: SIDE,
        width: SIDE,
        class_names,
    };
    for f in &files {
        read_batch(f, &mut ds)?;
    }
    train_val(ds, DatasetKind::Cifar10, split, &files[0])
}

fn data_batches(root: &Path) -> Result<Vec<PathBuf>, DataError> {
    let path = |k: usize| root.join(format!("data_batch_{k}.bin"));
    // `exists`, not `is_file`: a FIFO or device named like a batch is read (and refused as
    // such, naming it) rather than silently counted as missing.
    let present: Vec<usize> = (1..=5).filter(|&k| path(k).exists()).collect();
    if present.is_empty() {
        return Err(DataError::Missing {
            path: path(1),
            what: "no CIFAR-10 data_batch_K.bin files".into(),
        });
    }
    if let Some((i, &k)) = present.iter().enumerate().find(|&(i, &k)| k != i + 1) {
        return Err(DataError::Missing {
            path: path(i + 1),
            what: format!("data_batch_{k}.bin exists, so batches 1..{k} must all be present"),
        });
    }
    Ok(present.into_iter().map(path).collect())
}

fn read_batch(path: &Path, ds: &mut Dataset) -> Result<(), DataError> {
    let bytes = read_file(path)?;
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    if bytes.len() % RECORD != 0 {
        return Err(malformed(
            path,
            format!(
                "length {} is not a multiple of {RECORD} (1 label byte + 3×32×32 pixel bytes)",
                bytes.len()
            ),
        ));
    }
    let n_classes = ds.class_names.len() as i64;
    let raw: Vec<u8> = bytes.chunks_exact(RECORD).map(|r| r[0]).collect();
    let expected = format!("0..{n_classes}");
    let labels = convert_labels(path, &raw, &expected, |v| (v < n_classes).then_some(v))?;
    let lut = u8_to_unit();
    reserve_values(path, &mut ds.images, raw.len() * PIXELS)?;
    for r in bytes.chunks_exact(RECORD) {
        ds.images.extend(r[1..].iter().map(|&b| lut[b as usize]));
    }
    ds.labels.extend(labels);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::load as load_any;
    use super::*;
    use std::fs;

    /// Byte of image `i` at channel `c`, row `h`, col `w`.
    fn px(i: usize, c: usize, h: usize, w: usize) -> u8 {
        ((i * 13 + c * 101 + h * 5 + w * 3) % 251) as u8
    }

    fn batch(first: usize, n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for i in first..first + n {
            v.push((i % 10) as u8);
            for c in 0..3 {
                for h in 0..SIDE {
                    for w in 0..SIDE {
                        v.push(px(i, c, h, w));
                    }
                }
            }
        }
        v
    }

    fn at(ds: &Dataset, i: usize, c: usize, h: usize, w: usize) -> f32 {
        ds.images[i * PIXELS + c * 1024 + h * 32 + w]
    }

    #[test]
    fn cifar_batches_pixels_labels_and_splits() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cifar-10-batches-bin");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("data_batch_1.bin"), batch(0, 6)).unwrap();
        fs::write(root.join("data_batch_2.bin"), batch(6, 14)).unwrap();
        fs::write(root.join("test_batch.bin"), batch(100, 3)).unwrap();
        // Parent dir works (nested cifar-10-batches-bin/).
        let train = load_any(DatasetKind::Cifar10, tmp.path(), Split::Train, None).unwrap();
        let val = load_any(DatasetKind::Cifar10, &root, Split::Val, None).unwrap();
        let test = load_any(DatasetKind::Cifar10, tmp.path(), Split::Test, None).unwrap();
        assert_eq!((train.len(), val.len(), test.len()), (18, 2, 3));
        assert_eq!((train.channels, train.height, train.width), (3, 32, 32));
        assert_eq!(train.class_names[1], "automobile");
        assert_eq!(&train.labels[..12], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
        assert_eq!(val.labels, vec![8, 9]); // samples 18, 19
        assert_eq!(test.labels, vec![0, 1, 2]);
        for (i, c, h, w) in [(0, 0, 0, 0), (7, 1, 31, 0), (17, 2, 3, 30)] {
            assert_eq!(
                at(&train, i, c, h, w),
                px(i, c, h, w) as f32 / 255.0,
                "train {i} {c} {h} {w}"
            );
        }
        assert_eq!(at(&val, 1, 2, 10, 20), px(19, 2, 10, 20) as f32 / 255.0);
        assert_eq!(at(&test, 2, 0, 31, 31), px(102, 0, 31, 31) as f32 / 255.0);
    }

    #[test]
    fn cifar_class_names_from_meta() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("test_batch.bin"), batch(0, 2)).unwrap();
        let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        fs::write(
            tmp.path().join("batches.meta.txt"),
            names.join("\n") + "\n\n",
        )
        .unwrap();
        let test = load_any(DatasetKind::Cifar10, tmp.path(), Split::Test, None).unwrap();
        assert_eq!(test.class_names, names);
    }

    #[test]
    fn cifar_bad_length_gap_and_label() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = batch(0, 2);
        b.pop();
        fs::write(tmp.path().join("data_batch_1.bin"), &b).unwrap();
        let e = load_any(DatasetKind::Cifar10, tmp.path(), Split::Train, None).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, DataError::Malformed { .. })
                && msg.contains("data_batch_1.bin")
                && msg.contains("3073"),
            "{msg}"
        );

        fs::write(tmp.path().join("data_batch_1.bin"), batch(0, 20)).unwrap();
        fs::write(tmp.path().join("data_batch_3.bin"), batch(0, 2)).unwrap();
        let e = load_any(DatasetKind::Cifar10, tmp.path(), Split::Train, None).unwrap_err();
        assert!(
            matches!(&e, DataError::Missing { path, .. } if path.ends_with("data_batch_2.bin")),
            "{e}"
        );

        fs::remove_file(tmp.path().join("data_batch_3.bin")).unwrap();
        let mut b = batch(0, 20);
        b[5 * RECORD] = 10;
        fs::write(tmp.path().join("data_batch_1.bin"), &b).unwrap();
        let e = load_any(DatasetKind::Cifar10, tmp.path(), Split::Val, None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::BadLabel {
                    index: 5,
                    label: 10,
                    ..
                }
            ),
            "{e}"
        );

        let empty = tempfile::tempdir().unwrap();
        let e = load_any(DatasetKind::Cifar10, empty.path(), Split::Train, None).unwrap_err();
        assert!(matches!(e, DataError::Missing { .. }), "{e}");
    }
}
