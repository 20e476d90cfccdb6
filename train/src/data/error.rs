//! [`DataError`]: why a dataset could not be loaded, and the constructors the format
//! readers share.
use std::io;
use std::path::{Path, PathBuf};

use super::Split;

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
    /// A header, folder or image announces more than a limit of [`crate::limits`] allows;
    /// refused before anything is allocated for it.
    #[error("{}: too large: {what} (limit: {limit})", path.display())]
    TooLarge {
        path: PathBuf,
        /// What was announced, e.g. "header says 4294967295 images of 28×28".
        what: String,
        /// The limit, with its unit.
        limit: String,
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

/// `map_err` adapter: an `io::Error` on `path` becomes [`DataError::Io`] naming it.
pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// [`DataError::TooLarge`] for `path`.
pub(super) fn too_large(
    path: &Path,
    what: impl Into<String>,
    limit: impl std::fmt::Display,
) -> DataError {
    DataError::TooLarge {
        path: path.to_path_buf(),
        what: what.into(),
        limit: limit.to_string(),
    }
}

/// [`DataError::Malformed`] for `path`.
pub(super) fn malformed(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Malformed {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}
