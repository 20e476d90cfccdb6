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

mod cifar;
mod dataset;
mod decode;
mod error;
mod files;
mod folder;
mod idx;
mod kind;
mod mat;
mod split;
mod stl10;
mod svhn;

use std::path::Path;

pub use dataset::Dataset;
pub use error::DataError;
pub use idx::write_idx_gz;
pub use kind::DatasetKind;
pub use split::Split;

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
