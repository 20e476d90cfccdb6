//! File safety for an export directory: graph and bundle names confined to the directory
//! (lexically, then again on the file system through symlinks), and atomic writes.

use std::path::{Component, Path, PathBuf};

use crate::error::{Result, RuntimeError};

/// A graph file name must stay inside the export directory: relative, no `..`, no root. This
/// is the lexical check; [`resolve_in_dir`] repeats it on the file system (symlinks).
pub fn check_relative_file(file: &str) -> Result<()> {
    let unsafe_path = |reason: &str| RuntimeError::UnsafePath {
        file: file.to_string(),
        reason: reason.to_string(),
    };
    if file.is_empty() {
        return Err(unsafe_path("empty file name"));
    }
    if file.contains('\0') {
        return Err(unsafe_path("contains a NUL byte"));
    }
    let path = Path::new(file);
    if path.is_absolute() || path.has_root() {
        return Err(unsafe_path("absolute paths are not allowed"));
    }
    for c in path.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_path("`..` components are not allowed")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_path("absolute paths are not allowed"))
            }
        }
    }
    Ok(())
}

/// Joins `file` to `dir` and makes sure the result, with symlinks resolved, is still inside
/// `dir`. Returns the canonical path.
pub fn resolve_in_dir(dir: &Path, file: &str) -> Result<PathBuf> {
    check_relative_file(file)?;
    let root = dir.canonicalize().map_err(|e| RuntimeError::read(dir, e))?;
    let joined = root.join(file);
    let real = joined
        .canonicalize()
        .map_err(|e| RuntimeError::read(&joined, e))?;
    if !real.starts_with(&root) {
        return Err(RuntimeError::UnsafePath {
            file: file.to_string(),
            reason: format!(
                "resolves to {}, outside the export directory {}",
                real.display(),
                root.display()
            ),
        });
    }
    Ok(real)
}

/// [`oats_io::write_atomic`] with the runtime's error type ([`RuntimeError::Write`]): readers
/// see the old or the new file, and a failed write leaves the old one intact. Shared by the
/// manifest and the calibration report and plots.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    oats_io::write_atomic(path, bytes).map_err(|source| RuntimeError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_path_checks() {
        for ok in ["a.onnx", "graphs/a.onnx", "./a.onnx"] {
            assert!(check_relative_file(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../a.onnx",
            "graphs/../../a.onnx",
            "/etc/passwd",
            "a\0b",
        ] {
            assert!(
                matches!(
                    check_relative_file(bad),
                    Err(RuntimeError::UnsafePath { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
