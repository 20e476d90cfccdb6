//! File safety for an export directory: graph and bundle names confined to the directory
//! (lexically, then again on the file system through symlinks), bounded reads of regular
//! files only, and atomic writes.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
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

/// Reads all of `path`, which must be a regular file of at most `limit` bytes (`what` names
/// the kind of file in errors). Symlinks are followed; [`read_regular_file_no_symlink`] is
/// for the manifest.
///
/// Everything is checked before anything is allocated or read: the type (a FIFO would block
/// the process, `/dev/zero` would never end), then the size. The file is opened
/// non-blocking and checked again through the open handle, so a file swapped for a FIFO in
/// between cannot hang the process either; a file that grows after the check is cut at
/// `limit + 1` bytes and refused.
pub fn read_regular_file(path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>> {
    read_checked(path, what, limit, true)
}

/// [`read_regular_file`] for a file that must not itself be a symlink (the manifest: what it
/// says decides which other files are trusted, so it must be the export's own file).
pub fn read_regular_file_no_symlink(
    path: &Path,
    what: &'static str,
    limit: u64,
) -> Result<Vec<u8>> {
    read_checked(path, what, limit, false)
}

fn read_checked(path: &Path, what: &'static str, limit: u64, follow: bool) -> Result<Vec<u8>> {
    let meta = if follow {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    }
    .map_err(|e| RuntimeError::read(path, e))?;
    if meta.file_type().is_symlink() {
        return Err(RuntimeError::UnsafePath {
            file: path.display().to_string(),
            reason: format!("{what} must be a regular file, not a symlink"),
        });
    }
    check_regular(path, &meta, what, limit)?;
    let file = open_for_reading(path, follow).map_err(|e| RuntimeError::read(path, e))?;
    // The file actually opened, which may not be the one checked above.
    let meta = file.metadata().map_err(|e| RuntimeError::read(path, e))?;
    check_regular(path, &meta, what, limit)?;
    let mut bytes = Vec::new();
    let expected = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    bytes.try_reserve_exact(expected).map_err(|_| {
        RuntimeError::read(
            path,
            std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("cannot allocate {expected} bytes to read it"),
            ),
        )
    })?;
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| RuntimeError::read(path, e))?;
    let size = bytes.len() as u64;
    if size > limit {
        return Err(RuntimeError::FileTooLarge {
            path: path.to_path_buf(),
            what,
            size,
            limit,
        });
    }
    Ok(bytes)
}

/// A regular file no larger than `limit`, or the error that says what it is instead.
fn check_regular(path: &Path, meta: &Metadata, what: &'static str, limit: u64) -> Result<()> {
    if !meta.is_file() {
        return Err(RuntimeError::NotRegularFile {
            path: path.to_path_buf(),
            kind: file_kind(meta),
        });
    }
    if meta.len() > limit {
        return Err(RuntimeError::FileTooLarge {
            path: path.to_path_buf(),
            what,
            size: meta.len(),
            limit,
        });
    }
    Ok(())
}

fn file_kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else {
        "a special file"
    }
}

/// Opens for reading without blocking on a FIFO (its type is then refused through the
/// handle) and, with `follow = false`, without following a symlink at the last component.
fn open_for_reading(path: &Path, follow: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut flags = libc::O_NONBLOCK;
        if !follow {
            flags |= libc::O_NOFOLLOW;
        }
        options.custom_flags(flags);
    }
    #[cfg(not(unix))]
    let _ = follow;
    options.open(path)
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
    fn bounded_reads() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("f");
        std::fs::write(&p, b"12345").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read_regular_file(&p, "a test file", 5).ok(),
            Some(b"12345".to_vec())
        );
        assert!(matches!(
            read_regular_file(&p, "a test file", 4),
            Err(RuntimeError::FileTooLarge {
                size: 5,
                limit: 4,
                ..
            })
        ));
        assert!(matches!(
            read_regular_file(dir.path(), "a test file", 4),
            Err(RuntimeError::NotRegularFile {
                kind: "a directory",
                ..
            })
        ));
    }

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
