//! STL-10 binary version (`stl10_binary.tar.gz`).
//!
//! `*_X.bin`: uint8, per image 3 planes of 96×96 (R, G, B), each plane stored in
//! **column-major** order (MATLAB heritage): byte `c·9216 + w·96 + h` is pixel (c, h, w).
//! We transpose to row-major. `*_y.bin`: one uint8 label per image, 1..=10 → 0..=9.
//! `unlabeled_X.bin` is not used. `dir` may be the folder holding the files or its
//! parent holding `stl10_binary/`.

use std::path::Path;

use super::decode::{alloc_values, convert_labels, u8_to_unit};
use super::error::malformed;
use super::files::{class_names_from, maybe_nested, read_file};
use super::split::train_val;
use super::{DataError, Dataset, DatasetKind, Split};

const SIDE: usize = 96;
const PLANE: usize = SIDE * SIDE;
const IMAGE: usize = 3 * PLANE;
const CLASSES: [&str; 10] = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
];

pub(super) fn load(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let root = maybe_nested(dir, "stl10_binary", "train_X.bin");
    let prefix = if split == Split::Test {
        "test"
    } else {
        "train"
    };
    let (xp, yp) = (
        root.join(format!("{prefix}_X.bin")),
        root.join(format!("{prefix}_y.bin")),
    );
    let class_names = class_names_from(&root.join("class_names.txt"), &CLASSES)?;
    let x = read_file(&xp)?;
    let y = read_file(&yp)?;
    if x.is_empty() {
        return Err(DataError::Empty { path: xp });
    }
    if x.len() % IMAGE != 0 {
        return Err(malformed(
            &xp,
            format!("length {} is not a multiple of {IMAGE} (3×96×96)", x.len()),
        ));
    }
    let n = x.len() / IMAGE;
    if y.len() != n {
        return Err(DataError::CountMismatch {
            images_path: xp,
            labels_path: yp,
            images: n,
            labels: y.len(),
        });
    }
    let k = class_names.len() as i64;
    let labels = convert_labels(&yp, &y, &format!("1..={k}"), |v| {
        (1..=k).contains(&v).then_some(v - 1)
    })?;
    let lut = u8_to_unit();
    let mut images = alloc_values(&xp, x.len())?;
    for (src, dst) in x.chunks_exact(PLANE).zip(images.chunks_exact_mut(PLANE)) {
        // src is column-major: src[w*96 + h] -> dst[h*96 + w].
        for (w, col) in src.chunks_exact(SIDE).enumerate() {
            for (h, &b) in col.iter().enumerate() {
                dst[h * SIDE + w] = lut[b as usize];
            }
        }
    }
    let ds = Dataset {
        images,
        labels,
        channels: 3,
        height: SIDE,
        width: SIDE,
        class_names,
    };
    train_val(ds, DatasetKind::Stl10, split, &xp)
}

#[cfg(test)]
mod tests {
    use super::super::load as load_any;
    use super::*;
    use std::fs;

    fn px(i: usize, c: usize, h: usize, w: usize) -> u8 {
        ((i * 17 + c * 59 + h * 3 + w * 7) % 253) as u8
    }

    /// Column-major STL-10 bytes for images `0..n`.
    fn x_bytes(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n * IMAGE);
        for i in 0..n {
            for c in 0..3 {
                for w in 0..SIDE {
                    for h in 0..SIDE {
                        v.push(px(i, c, h, w));
                    }
                }
            }
        }
        v
    }

    #[test]
    fn stl10_column_major_to_row_major_and_labels() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("stl10_binary");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("train_X.bin"), x_bytes(10)).unwrap();
        fs::write(root.join("train_y.bin"), [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10]).unwrap();
        fs::write(root.join("test_X.bin"), x_bytes(2)).unwrap();
        fs::write(root.join("test_y.bin"), [10u8, 1]).unwrap();
        let train = load_any(DatasetKind::Stl10, tmp.path(), Split::Train, None).unwrap();
        let val = load_any(DatasetKind::Stl10, tmp.path(), Split::Val, None).unwrap();
        let test = load_any(DatasetKind::Stl10, &root, Split::Test, None).unwrap();
        assert_eq!((train.len(), val.len(), test.len()), (9, 1, 2));
        assert_eq!(train.labels, (0..9).collect::<Vec<i64>>());
        assert_eq!(val.labels, vec![9]);
        assert_eq!(test.labels, vec![9, 0]);
        assert_eq!(train.class_names[7], "monkey");
        let at = |d: &Dataset, i: usize, c: usize, h: usize, w: usize| {
            d.images[i * IMAGE + c * PLANE + h * SIDE + w]
        };
        for (i, c, h, w) in [(0, 0, 0, 1), (0, 0, 1, 0), (3, 1, 5, 90), (8, 2, 95, 2)] {
            assert_eq!(
                at(&train, i, c, h, w),
                px(i, c, h, w) as f32 / 255.0,
                "{i} {c} {h} {w}"
            );
        }
        assert_eq!(at(&val, 0, 2, 40, 7), px(9, 2, 40, 7) as f32 / 255.0);
        assert_eq!(at(&test, 1, 1, 94, 3), px(1, 1, 94, 3) as f32 / 255.0);
    }

    #[test]
    fn stl10_errors() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("test_X.bin"), x_bytes(2)).unwrap();
        fs::write(tmp.path().join("test_y.bin"), [0u8, 1]).unwrap();
        let e = load_any(DatasetKind::Stl10, tmp.path(), Split::Test, None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::BadLabel {
                    index: 0,
                    label: 0,
                    ..
                }
            ),
            "{e}"
        );
        fs::write(tmp.path().join("test_y.bin"), [1u8]).unwrap();
        let e = load_any(DatasetKind::Stl10, tmp.path(), Split::Test, None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::CountMismatch {
                    images: 2,
                    labels: 1,
                    ..
                }
            ),
            "{e}"
        );
        fs::write(tmp.path().join("test_X.bin"), &x_bytes(2)[1..]).unwrap();
        let e = load_any(DatasetKind::Stl10, tmp.path(), Split::Test, None).unwrap_err();
        assert!(
            matches!(e, DataError::Malformed { .. }) && e.to_string().contains("test_X.bin"),
            "{e}"
        );
        let e = load_any(DatasetKind::Stl10, tmp.path(), Split::Train, None).unwrap_err();
        assert!(
            matches!(&e, DataError::Missing { path, .. } if path.ends_with("train_X.bin")),
            "{e}"
        );
    }
}
