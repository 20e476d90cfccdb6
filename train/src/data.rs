//! Image-classification datasets for adversarial training, read with pure Rust
//! (std + `flate2` + `image`; no libtorch), so loading can be tested without tch.
//!
//! Every dataset is returned as a [`Dataset`]: `f32` pixels in `[0, 1]` (byte / 255),
//! layout NCHW, **no** mean/std normalisation — adversarial attacks use an ε-ball
//! in raw `[0, 1]` pixel space, so any normalisation belongs inside the model.
//!
//! # Reference splits
//! The method's reference code trains on a fixed train/validation split of each
//! official training set and tests on the official test set. [`load`] reproduces it:
//!
//! | kind | Train | Val | Test |
//! |---|---|---|---|
//! | Fashion-MNIST (60,000) | first 50,000 | last 10,000 | `t10k-*` |
//! | CIFAR-10 (50,000) | first 45,000 | last 5,000 | `test_batch.bin` |
//! | SVHN (73,257) | first 68,257 | last 5,000 | `test_32x32.mat` |
//! | STL-10 (5,000) | first 4,500 | last 500 | `test_*.bin` |
//! | image folder | see [`DatasetKind::ImageFolder`] | | |
//!
//! Smaller files (e.g. a bundled subset) keep the same *fraction*, so the rule is
//! stated as "Val = the last ⌊n/k⌋ samples, Train = the rest" (see
//! [`DatasetKind::val_len`]). Val is always taken from the *end* of the training
//! file so that Train is a prefix of the file and never overlaps Val.
//!
//! Samples are returned in file order (not shuffled); shuffle batches at training time.

use std::fmt;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

mod cifar;
mod folder;
mod idx;
mod mat;
mod stl10;
mod svhn;

pub use idx::write_idx_gz;

/// An in-memory image dataset: `images` is NCHW `f32` in `[0, 1]`, `labels[i]` is the
/// class index (into `class_names`) of image `i`.
#[derive(Clone, PartialEq)]
pub struct Dataset {
    /// `len() * channels * height * width` values, NCHW, in `[0, 1]`.
    pub images: Vec<f32>,
    /// One class index per image, each `< class_names.len()`.
    pub labels: Vec<i64>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub class_names: Vec<String>,
}

impl fmt::Debug for Dataset {
    // Summarised: printing millions of pixels is never what anyone wants.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("len", &self.len())
            .field("shape_chw", &(self.channels, self.height, self.width))
            .field("classes", &self.class_names.len())
            .finish_non_exhaustive()
    }
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image: `channels * height * width`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// A new dataset holding the given images, in the given order (repeats allowed).
    ///
    /// # Panics
    /// If an index is `>= self.len()` (a caller bug, like slice indexing).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let il = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * il);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(&self.images[i * il..(i + 1) * il]);
            labels.push(self.labels[i]);
        }
        self.with_data(images, labels)
    }

    /// A new dataset holding images `r.start..r.end`.
    ///
    /// # Panics
    /// If the range is out of bounds or decreasing (like slice indexing).
    pub fn range(&self, r: Range<usize>) -> Dataset {
        let il = self.image_len();
        let images = self.images[r.start * il..r.end * il].to_vec();
        self.with_data(images, self.labels[r].to_vec())
    }

    fn with_data(&self, images: Vec<f32>, labels: Vec<i64>) -> Dataset {
        Dataset {
            images,
            labels,
            channels: self.channels,
            height: self.height,
            width: self.width,
            class_names: self.class_names.clone(),
        }
    }

    /// In place: keep only images `r` (no copy of the kept part beyond a memmove).
    fn keep_range(&mut self, r: Range<usize>) {
        let il = self.image_len();
        self.images.truncate(r.end * il);
        self.images.drain(..r.start * il);
        self.labels.truncate(r.end);
        self.labels.drain(..r.start);
    }

    fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.keep_range(0..n);
        }
    }
}

/// Which on-disk dataset format [`load`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// IDX files (`train-images-idx3-ubyte` etc., plain or `.gz`; MNIST works too).
    FashionMnist,
    /// CIFAR-10 "binary version" (`data_batch_K.bin`, `test_batch.bin`).
    Cifar10,
    /// SVHN cropped digits, `train_32x32.mat` / `test_32x32.mat` (MAT level 5).
    Svhn,
    /// STL-10 binary (`train_X.bin`, `train_y.bin`, `test_X.bin`, `test_y.bin`).
    Stl10,
    /// `dir/<class>/<image>` folders, decoded with the `image` crate.
    ///
    /// * If `dir` has a `train/`, `val/` or `test/` sub-folder ("split layout"), each
    ///   split is read from its folder, which holds the class folders. Without `val/`,
    ///   Val is every 10th file (per class, by file name) of `train/` and Train the
    ///   rest. Without `test/`, Test is an error. Class indices come from `train/`.
    /// * Otherwise the class folders are directly in `dir` ("flat layout"); Train is
    ///   all files except every 10th of each class (10th, 20th, … by sorted name),
    ///   Val is every 10th file, and there is no Test split (error), since silently
    ///   testing on training images would be worse than failing.
    ///
    /// Classes are sorted by folder name, files by file name; hidden entries and files
    /// whose extension is not a readable image format are skipped. Images are converted
    /// to RGB (alpha dropped) unless every image of the split is grayscale (then 1
    /// channel); all images of a split must have the same size.
    ImageFolder,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 5] = [
        DatasetKind::FashionMnist,
        DatasetKind::Cifar10,
        DatasetKind::Svhn,
        DatasetKind::Stl10,
        DatasetKind::ImageFolder,
    ];

    fn name(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Svhn => "svhn",
            DatasetKind::Stl10 => "stl10",
            DatasetKind::ImageFolder => "image-folder",
        }
    }

    /// Size of the Val split carved from the end of a training file of `n` samples
    /// (Train gets the other `n - val_len(n)`), reproducing the reference split for
    /// the full files and keeping the same fraction for smaller ones:
    ///
    /// * Fashion-MNIST: ⌊n/6⌋ (60,000 → 50,000 / 10,000).
    /// * CIFAR-10: ⌊n/10⌋ (50,000 → 45,000 / 5,000).
    /// * SVHN: min(5,000, ⌊n/14⌋) (73,257 → 68,257 / 5,000).
    /// * STL-10: ⌊n/10⌋ (5,000 → 4,500 / 500). The reference trains on all 5,000, but
    ///   then has no honest validation set; we hold out 10 % instead.
    /// * Image folder: not used (every 10th file per class, see [`DatasetKind::ImageFolder`]).
    pub fn val_len(self, n: usize) -> usize {
        match self {
            DatasetKind::FashionMnist => n / 6,
            DatasetKind::Cifar10 | DatasetKind::Stl10 | DatasetKind::ImageFolder => n / 10,
            DatasetKind::Svhn => (n / 14).min(5000),
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;

    /// Accepts the [`Display`](fmt::Display) names: `fashion-mnist`, `cifar10`, `svhn`,
    /// `stl10`, `image-folder` (ASCII case-insensitive; `_` may replace `-`).
    fn from_str(s: &str) -> Result<Self, DataError> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        DatasetKind::ALL
            .into_iter()
            .find(|k| k.name() == norm)
            .ok_or_else(|| DataError::UnknownName {
                what: "dataset kind",
                input: s.to_string(),
                expected: "fashion-mnist, cifar10, svhn, stl10, image-folder",
            })
    }
}

/// Which part of a dataset to load; see the module docs for the reference splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        })
    }
}

impl FromStr for Split {
    type Err = DataError;

    /// `train`, `val` (or `validation`), `test` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" | "validation" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(DataError::UnknownName {
                what: "split",
                input: s.to_string(),
                expected: "train, val, test",
            }),
        }
    }
}

/// Why a dataset could not be loaded. Every file-related variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not found ({what})", path.display())]
    Missing { path: PathBuf, what: String },
    /// The file (after decompression) is shorter than its header / format requires.
    #[error("{}: truncated: {what} ({expected_bytes} bytes) but file has {actual_bytes} bytes", path.display())]
    Truncated {
        path: PathBuf,
        /// What the size was derived from, e.g. "header says 60000 images of 28×28".
        what: String,
        expected_bytes: u64,
        actual_bytes: u64,
    },
    #[error("{}: bad magic number 0x{found:08x}, expected 0x{expected:08x}", path.display())]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{}: malformed: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("{}: unsupported: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
    #[error("{}: contains no samples", path.display())]
    Empty { path: PathBuf },
    #[error("{}: the {split} split is empty ({reason})", path.display())]
    EmptySplit {
        path: PathBuf,
        split: Split,
        reason: String,
    },
    #[error("{} has {images} images but {} has {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        images_path: PathBuf,
        labels_path: PathBuf,
        images: usize,
        labels: usize,
    },
    #[error("{}: label {label} of sample {index} is out of range ({expected})", path.display())]
    BadLabel {
        path: PathBuf,
        index: usize,
        label: i64,
        expected: String,
    },
    #[error(
        "{}: image is {}×{} but {} (the first image) is {}×{}; all images must have the same size",
        path.display(), found.0, found.1, first.display(), expected.0, expected.1
    )]
    SizeMismatch {
        path: PathBuf,
        first: PathBuf,
        expected: (u32, u32),
        found: (u32, u32),
    },
    #[error("{}: cannot decode image: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("unknown {what} {input:?} (expected one of: {expected})")]
    UnknownName {
        what: &'static str,
        input: String,
        expected: &'static str,
    },
}

/// Loads `split` of dataset `kind` rooted at `dir`, applying the reference train/val
/// splits (module docs, [`DatasetKind::val_len`]). `limit` keeps only the first N
/// samples of the split (quick runs); `Some(0)` gives an empty dataset.
///
/// Errors if a needed file is missing or malformed, or if the split (before `limit`)
/// would be empty.
pub fn load(
    kind: DatasetKind,
    dir: &Path,
    split: Split,
    limit: Option<usize>,
) -> Result<Dataset, DataError> {
    let mut ds = match kind {
        DatasetKind::FashionMnist => idx::load(dir, split)?,
        DatasetKind::Cifar10 => cifar::load(dir, split)?,
        DatasetKind::Svhn => svhn::load(dir, split)?,
        DatasetKind::Stl10 => stl10::load(dir, split)?,
        DatasetKind::ImageFolder => folder::load(dir, split, limit)?,
    };
    if let Some(n) = limit {
        ds.truncate(n);
    }
    Ok(ds)
}

// ---------------------------------------------------------------------------
// Helpers shared by the format modules.

/// Cuts Train (the first `n - val`) or Val (the last `val`) out of a full training file.
/// `path` names the file for the error message.
fn train_val(
    mut ds: Dataset,
    kind: DatasetKind,
    split: Split,
    path: &Path,
) -> Result<Dataset, DataError> {
    let n = ds.len();
    let val = kind.val_len(n);
    let r = match split {
        Split::Train => 0..n - val,
        Split::Val => n - val..n,
        Split::Test => return Ok(ds),
    };
    if r.is_empty() {
        return Err(DataError::EmptySplit {
            path: path.to_path_buf(),
            split,
            reason: format!("{n} training samples, {val} of them held out for val"),
        });
    }
    ds.keep_range(r);
    Ok(ds)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn malformed(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Malformed {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    if !path.exists() {
        return Err(DataError::Missing {
            path: path.to_path_buf(),
            what: "file does not exist".into(),
        });
    }
    fs::read(path).map_err(io_err(path))
}

/// `dir/sub` if it is a directory and `dir` itself does not contain `probe`,
/// else `dir` (lets users point at either the archive root or the extracted folder).
fn maybe_nested(dir: &Path, sub: &str, probe: &str) -> PathBuf {
    let nested = dir.join(sub);
    if !dir.join(probe).exists() && nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Class names from a text file (one per line, blank lines ignored), or `default`
/// when the file does not exist.
fn class_names_from(path: &Path, default: &[&str]) -> Result<Vec<String>, DataError> {
    if !path.exists() {
        return Ok(default.iter().map(|s| s.to_string()).collect());
    }
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(names)
}

/// Byte → `[0, 1]` lookup (exactly `b as f32 / 255.0`).
fn u8_to_unit() -> [f32; 256] {
    let mut t = [0f32; 256];
    for (i, v) in t.iter_mut().enumerate() {
        *v = i as f32 / 255.0;
    }
    t
}

/// Checks every label is in `0..num_classes` and converts to `i64`. `map` turns the
/// raw stored value into a class index (e.g. SVHN's 10 → 0) or `None` if invalid.
fn convert_labels<T: Copy + Into<i64>>(
    path: &Path,
    raw: &[T],
    expected: &str,
    map: impl Fn(i64) -> Option<i64>,
) -> Result<Vec<i64>, DataError> {
    raw.iter()
        .enumerate()
        .map(|(index, &v)| {
            let v: i64 = v.into();
            map(v).ok_or_else(|| DataError::BadLabel {
                path: path.to_path_buf(),
                index,
                label: v,
                expected: expected.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(n: usize) -> Dataset {
        Dataset {
            images: (0..n * 2).map(|v| v as f32).collect(),
            labels: (0..n as i64).collect(),
            channels: 1,
            height: 1,
            width: 2,
            class_names: vec!["a".into()],
        }
    }

    #[test]
    fn subset_range_and_keep_range() {
        let d = tiny(5);
        assert_eq!(d.image_len(), 2);
        let s = d.subset(&[3, 0, 3]);
        assert_eq!(s.labels, vec![3, 0, 3]);
        assert_eq!(s.images, vec![6.0, 7.0, 0.0, 1.0, 6.0, 7.0]);
        let r = d.range(1..3);
        assert_eq!(r.labels, vec![1, 2]);
        assert_eq!(r.images, vec![2.0, 3.0, 4.0, 5.0]);
        let mut k = d.clone();
        k.keep_range(2..4);
        assert_eq!(k, d.range(2..4));
        assert!(d.range(2..2).is_empty());
    }

    #[test]
    fn reference_split_sizes() {
        let cases = [
            (DatasetKind::FashionMnist, 60_000, 10_000),
            (DatasetKind::Cifar10, 50_000, 5_000),
            (DatasetKind::Svhn, 73_257, 5_000),
            (DatasetKind::Stl10, 5_000, 500),
            (DatasetKind::FashionMnist, 12, 2),
            (DatasetKind::Svhn, 28, 2),
        ];
        for (kind, n, val) in cases {
            assert_eq!(kind.val_len(n), val, "{kind} n={n}");
        }
        let d = train_val(
            tiny(12),
            DatasetKind::FashionMnist,
            Split::Val,
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(d.labels, vec![10, 11]);
        let d = train_val(
            tiny(12),
            DatasetKind::FashionMnist,
            Split::Train,
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(d.labels, (0..10).collect::<Vec<_>>());
        let e = train_val(
            tiny(5),
            DatasetKind::FashionMnist,
            Split::Val,
            Path::new("f.idx"),
        )
        .unwrap_err();
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
    }

    #[test]
    fn kind_and_split_parse_and_display() {
        for k in DatasetKind::ALL {
            assert_eq!(k.to_string().parse::<DatasetKind>().unwrap(), k);
        }
        assert_eq!(
            "CIFAR10".parse::<DatasetKind>().unwrap(),
            DatasetKind::Cifar10
        );
        assert_eq!(
            "fashion_mnist".parse::<DatasetKind>().unwrap(),
            DatasetKind::FashionMnist
        );
        assert!("mnist2".parse::<DatasetKind>().is_err());
        for s in [Split::Train, Split::Val, Split::Test] {
            assert_eq!(s.to_string().parse::<Split>().unwrap(), s);
        }
        let e = "dev".parse::<Split>().unwrap_err().to_string();
        assert!(
            e.contains("\"dev\"") && e.contains("train, val, test"),
            "{e}"
        );
    }
}
