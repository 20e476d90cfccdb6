//! Replacing an output path without destroying what oats did not create there.
//!
//! - [`ensure_replaceable`]: a report, log or config that a tool rewrites may replace a file
//!   only when that file is recognisably an earlier one of the same kind; anything else at the
//!   path (a user's file, a checkpoint, a directory, a symlink) is refused with an error that
//!   says what is there.
//! - [`swap_dir`]: a finished output directory takes the place of the old one in one atomic
//!   step where the system allows it, so that a reader never finds the path missing.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Largest file [`ensure_replaceable`] reads to recognise it. Every file oats rewrites this way
/// (reports, configs, metric logs) is a few kilobytes to a few hundred; a larger file at the
/// path is something else (a checkpoint, a data set) and is refused without being read.
pub const MAX_RECOGNISED_BYTES: u64 = 16 << 20;

/// Returns `Ok(())` when `path` may be (re)written: nothing is there, or a regular file whose
/// bytes `is_ours` recognises as `what` (e.g. "an oats-train eval report"). Anything else is an
/// error of kind `AlreadyExists` naming the path and what is there; nothing is changed.
///
/// A symlink is refused rather than replaced: it is the user's, whatever it points at.
pub fn ensure_replaceable(
    path: &Path,
    what: &str,
    is_ours: impl FnOnce(&[u8]) -> bool,
) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::new(path, e)),
    };
    let refuse = |there: String| {
        Err(Error::new(
            path,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{there}, not {what}; refusing to replace it (oats only replaces what it \
                     wrote itself): move it away or choose another path"
                ),
            ),
        ))
    };
    let kind = meta.file_type();
    if kind.is_symlink() {
        return refuse("exists and is a symbolic link".into());
    }
    if kind.is_dir() {
        return refuse("exists and is a directory".into());
    }
    if !kind.is_file() {
        return refuse("exists and is a special file".into());
    }
    if meta.len() > MAX_RECOGNISED_BYTES {
        return refuse(format!("exists and holds {} bytes", meta.len()));
    }
    let mut bytes = Vec::new();
    open_no_follow(path)
        .and_then(|f| {
            f.take(MAX_RECOGNISED_BYTES + 1)
                .read_to_end(&mut bytes)
                .map(|_| ())
        })
        .map_err(|e| Error::new(path, e))?;
    if is_ours(&bytes) {
        Ok(())
    } else {
        refuse("exists".into())
    }
}

fn open_no_follow(path: &Path) -> io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    opts.open(path)
}

/// What [`swap_dir`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swapped {
    /// Nothing was at the target; the new directory was renamed there.
    Moved,
    /// The target's old directory now lies at `old` (inside the caller's staging directory),
    /// for the caller to remove.
    Replaced { old: PathBuf },
}

/// Puts the directory `new` at `target`, replacing the directory there, if any.
///
/// `new` must lie in a directory the caller created fresh (a `tempfile::TempDir` beside
/// `target`, on the same file system): where the old directory cannot be exchanged in one step
/// it is parked beside `new` in that directory, never under a fixed name that could be a user's
/// (`target.old`). The caller checks beforehand that what is at `target` may be replaced.
///
/// Linux: `renameat2(RENAME_EXCHANGE)` swaps the two directories atomically, so a reader of
/// `target` sees the old tree or the new one, never nothing; `RENAME_NOREPLACE` moves `new`
/// into place when nothing is there without replacing something that appeared meanwhile.
/// Elsewhere, or on a file system without these flags (some network and overlay file systems
/// answer EINVAL), two plain renames: the target is missing between them, for microseconds.
pub fn swap_dir(new: &Path, target: &Path) -> Result<Swapped> {
    #[cfg(target_os = "linux")]
    {
        if let Some(done) = linux::swap(new, target)? {
            return Ok(done);
        }
    }
    swap_with_two_renames(new, target)
}

/// The portable fallback: the old directory moves beside `new` first, then `new` into place.
fn swap_with_two_renames(new: &Path, target: &Path) -> Result<Swapped> {
    let exists = match std::fs::symlink_metadata(target) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::new(target, e)),
    };
    if !exists {
        std::fs::rename(new, target).map_err(|e| Error::new(target, e))?;
        return Ok(Swapped::Moved);
    }
    let old = parking_place(new)?;
    std::fs::rename(target, &old).map_err(|e| Error::new(target, e))?;
    if let Err(e) = std::fs::rename(new, target) {
        // Put the old one back; the new one stays in the staging directory.
        let _ = std::fs::rename(&old, target);
        return Err(Error::new(target, e));
    }
    Ok(Swapped::Replaced { old })
}

/// A free name beside `new` in the caller's fresh staging directory.
fn parking_place(new: &Path) -> Result<PathBuf> {
    let name = new.file_name().ok_or_else(|| {
        Error::new(
            new,
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no directory"),
        )
    })?;
    let mut old = name.to_os_string();
    old.push(".old");
    let old = new.with_file_name(old);
    if std::fs::symlink_metadata(&old).is_ok() {
        return Err(Error::new(
            &old,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists in the staging directory, which should be fresh",
            ),
        ));
    }
    Ok(old)
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::CString;
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use super::Swapped;
    use crate::{Error, Result};

    /// How often the move is retried when the target appears or disappears between the two
    /// system calls (another process creating or removing it): each retry follows a change
    /// made by someone else, so a few are plenty.
    const ATTEMPTS: usize = 4;

    /// `Ok(None)`: this system or file system lacks the flags; use the fallback.
    pub(super) fn swap(new: &Path, target: &Path) -> Result<Option<Swapped>> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| {
                Error::new(
                    p,
                    io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"),
                )
            })
        };
        let (from, to) = (c(new)?, c(target)?);
        for _ in 0..ATTEMPTS {
            match renameat2(&from, &to, libc::RENAME_NOREPLACE) {
                Ok(()) => return Ok(Some(Swapped::Moved)),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) if unsupported(&e) => return Ok(None),
                Err(e) => return Err(Error::new(target, e)),
            }
            match renameat2(&from, &to, libc::RENAME_EXCHANGE) {
                Ok(()) => {
                    return Ok(Some(Swapped::Replaced {
                        old: new.to_path_buf(),
                    }))
                }
                // Removed in between: try the plain move again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if unsupported(&e) => return Ok(None),
                Err(e) => return Err(Error::new(target, e)),
            }
        }
        Err(Error::new(
            target,
            io::Error::other(format!(
                "kept appearing and disappearing during {ATTEMPTS} attempts to move the new directory there"
            )),
        ))
    }

    fn unsupported(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
        )
    }

    fn renameat2(from: &CString, to: &CString, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: both paths are valid NUL-terminated strings that outlive the call; the call
        // reads them and touches no other memory.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                flags,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: Result<()>) -> Error {
        let e = r.expect_err("refused");
        assert_eq!(e.source.kind(), io::ErrorKind::AlreadyExists, "{e}");
        e
    }

    #[test]
    fn only_a_recognised_file_may_be_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("report.yaml");
        ensure_replaceable(&p, "a report", |_| false).expect("absent: fine");
        std::fs::write(&p, b"format: mine").expect("write");
        ensure_replaceable(&p, "a report", |b| b.starts_with(b"format: mine")).expect("ours");
        let e = refused(ensure_replaceable(&p, "a report", |_| false));
        assert!(e.to_string().contains("report.yaml"), "{e}");
        assert!(e.to_string().contains("not a report"), "{e}");
        refused(ensure_replaceable(dir.path(), "a report", |_| true));
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_is_refused_even_to_a_recognised_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real.yaml");
        std::fs::write(&real, b"ours").expect("write");
        let link = dir.path().join("link.yaml");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let e = refused(ensure_replaceable(&link, "a report", |_| true));
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[test]
    fn swap_moves_then_replaces_and_hands_back_the_old_tree() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("out");
        let stage1 = tempfile::tempdir_in(dir.path()).expect("stage");
        let new1 = stage1.path().join("new");
        std::fs::create_dir(&new1).expect("mkdir");
        std::fs::write(new1.join("v"), b"1").expect("write");
        assert_eq!(swap_dir(&new1, &target)?, Swapped::Moved);
        let stage2 = tempfile::tempdir_in(dir.path()).expect("stage");
        let new2 = stage2.path().join("new");
        std::fs::create_dir(&new2).expect("mkdir");
        std::fs::write(new2.join("v"), b"2").expect("write");
        let Swapped::Replaced { old } = swap_dir(&new2, &target)? else {
            panic!("expected a replacement");
        };
        assert_eq!(std::fs::read(target.join("v")).expect("read"), b"2");
        assert_eq!(std::fs::read(old.join("v")).expect("read"), b"1");
        assert!(
            old.starts_with(stage2.path()),
            "the old tree stays in the staging dir"
        );
        Ok(())
    }

    #[test]
    fn the_fallback_parks_the_old_tree_in_the_staging_dir() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("out");
        std::fs::create_dir(&target).expect("mkdir");
        std::fs::write(target.join("v"), b"1").expect("write");
        // A user's sibling with the name the old code used must survive.
        std::fs::create_dir(dir.path().join("out.old")).expect("mkdir");
        let stage = tempfile::tempdir_in(dir.path()).expect("stage");
        let new = stage.path().join("new");
        std::fs::create_dir(&new).expect("mkdir");
        std::fs::write(new.join("v"), b"2").expect("write");
        let Swapped::Replaced { old } = swap_with_two_renames(&new, &target)? else {
            panic!("expected a replacement");
        };
        assert!(old.starts_with(stage.path()));
        assert_eq!(std::fs::read(target.join("v")).expect("read"), b"2");
        assert!(dir.path().join("out.old").is_dir());
        Ok(())
    }
}
