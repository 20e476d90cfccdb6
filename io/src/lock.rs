//! Advisory locks that serialise the oats processes writing one output: two `oats-export`
//! into one `--out`, `oats-calibrate` and `oats-bench --write-manifest` rewriting one
//! `manifest.yaml`, two `oats-train` in one run directory.
//!
//! A lock is an exclusive `flock` (std's [`File::lock`]) on a small lock file that is created
//! on demand and never deleted: deleting a lock file lets a waiter lock the deleted inode while
//! a newcomer locks a new file of the same name, and both would then believe they hold the lock.
//! For the same reason a lock is only taken as held once the locked file is still the one at
//! the path (a directory swapped into place by an export brings its own lock file).
//!
//! The lock is advisory: it keeps oats processes from losing each other's results, not a
//! hostile process from writing. The lock file is opened without following a symlink and must
//! be a regular file, so a planted link cannot make oats create or lock a file elsewhere.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// How often a lock is re-taken when the lock file at the path was replaced while waiting for
/// it (an export swapped a new directory into place). Each replacement means another process
/// finished a whole export meanwhile, so more than a few in a row means something keeps
/// replacing the file, and waiting longer would not help.
pub const MAX_LOCK_ATTEMPTS: usize = 8;

/// An exclusive advisory lock, held until dropped (the operating system also releases it when
/// the process dies, so a killed writer never leaves a stale lock).
#[derive(Debug)]
pub struct FileLock {
    // Closing the file releases the lock.
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Waits for the exclusive lock on `path`, creating the lock file when absent.
    pub fn acquire(path: &Path) -> Result<FileLock> {
        Self::take(path, true)?
            .ok_or_else(|| Error::new(path, io::Error::other("a blocking lock returned unheld")))
    }

    /// Takes the exclusive lock on `path` if no other process holds it, else `Ok(None)`.
    pub fn try_acquire(path: &Path) -> Result<Option<FileLock>> {
        Self::take(path, false)
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn take(path: &Path, wait: bool) -> Result<Option<FileLock>> {
        for _ in 0..MAX_LOCK_ATTEMPTS {
            let file = open_lock_file(path)?;
            if wait {
                file.lock().map_err(|e| Error::new(path, e))?;
            } else {
                match file.try_lock() {
                    Ok(()) => {}
                    Err(TryLockError::WouldBlock) => return Ok(None),
                    Err(TryLockError::Error(e)) => return Err(Error::new(path, e)),
                }
            }
            if still_at_path(&file, path)? {
                return Ok(Some(FileLock {
                    _file: file,
                    path: path.to_path_buf(),
                }));
            }
            // The file we locked is no longer the one at `path`: lock the new one.
        }
        Err(Error::new(
            path,
            io::Error::other(format!(
                "the lock file was replaced {MAX_LOCK_ATTEMPTS} times while waiting for it"
            )),
        ))
    }
}

/// Opens (creating) the lock file without following a symlink; it must be a regular file.
fn open_lock_file(path: &Path) -> Result<File> {
    let mut opts = OpenOptions::new();
    // Read and write: some systems only lock files opened for writing. Never truncate.
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A FIFO planted at the path would otherwise block the open.
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    }
    let file = opts.open(path).map_err(|e| {
        let e = if is_symlink(path) {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a symbolic link; a lock file must be a plain file (remove the link)",
            )
        } else {
            e
        };
        Error::new(path, e)
    })?;
    let meta = file.metadata().map_err(|e| Error::new(path, e))?;
    if !meta.is_file() {
        return Err(Error::new(
            path,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "is not a regular file; a lock file must be a plain file (remove it)",
            ),
        ));
    }
    Ok(file)
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Whether `file` is still the file at `path` (same device and inode).
#[cfg(unix)]
fn still_at_path(file: &File, path: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata().map_err(|e| Error::new(path, e))?;
    match std::fs::symlink_metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::new(path, e)),
    }
}

/// Without inode numbers the check cannot be made; a lock file is never replaced by oats
/// itself except through a directory swap, which only Unix performs atomically.
#[cfg(not(unix))]
fn still_at_path(_file: &File, _path: &Path) -> Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_not_taken_twice_and_is_released_on_drop() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(".lock");
        let held = FileLock::acquire(&p)?;
        assert_eq!(held.path(), p);
        // Another open file description (as another process would have) cannot take it.
        assert!(FileLock::try_acquire(&p)?.is_none());
        drop(held);
        assert!(FileLock::try_acquire(&p)?.is_some());
        assert!(p.is_file(), "the lock file stays");
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        let p = dir.path().join(".lock");
        std::os::unix::fs::symlink(&target, &p).expect("symlink");
        let err = FileLock::acquire(&p).expect_err("symlink");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!target.exists(), "nothing created through the link");
    }
}
