//! File access shared by the format readers: reading a whole file, finding the extracted
//! folder, optional class-name files.
use std::path::{Path, PathBuf};

use super::error::io_err;
use super::DataError;
use crate::limits::{read_limited, read_text_limited, MAX_CLASS_NAMES_BYTES, MAX_DATA_FILE_BYTES};

/// The whole file, at most [`MAX_DATA_FILE_BYTES`]; a missing file is [`DataError::Missing`]
/// (not a bare `NotFound`), a FIFO or device an error (see [`read_limited`]).
pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    if !path.exists() {
        return Err(DataError::Missing {
            path: path.to_path_buf(),
            what: "file does not exist".into(),
        });
    }
    read_limited(path, MAX_DATA_FILE_BYTES).map_err(io_err(path))
}

/// `dir/sub` if it is a directory and `dir` itself does not contain `probe`,
/// else `dir` (lets users point at either the archive root or the extracted folder).
pub(super) fn maybe_nested(dir: &Path, sub: &str, probe: &str) -> PathBuf {
    let nested = dir.join(sub);
    if !dir.join(probe).exists() && nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Class names from a text file (one per line, blank lines ignored), or `default`
/// when the file does not exist.
pub(super) fn class_names_from(path: &Path, default: &[&str]) -> Result<Vec<String>, DataError> {
    if !path.exists() {
        return Ok(default.iter().map(|s| s.to_string()).collect());
    }
    let text = read_text_limited(path, MAX_CLASS_NAMES_BYTES).map_err(io_err(path))?;
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
