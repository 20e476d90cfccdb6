//! The output directory of an export: what `--out` may replace, where the new export is
//! staged, the lock that serialises exports into one `--out`, and the swap into place.
//!
//! Rules (DESIGN.md, "Export"):
//! - `--out` may be absent, an empty directory, or an **earlier export**: a directory whose
//!   `manifest.yaml` is a valid oats manifest and which holds nothing but the files that
//!   manifest lists and the files oats writes beside them ([`WRITTEN_BESIDE`], and the
//!   temporary files of an interrupted atomic write of those). Anything else (a user's
//!   directory, the training run directory, a file, a symlink) is refused, naming what is
//!   there, before any work is done and again just before the swap.
//! - The export is staged in a fresh, uniquely named hidden directory beside `--out`
//!   (`.<name>.XXXXXX`), never under a fixed name such as `<out>.partial` that could be the
//!   user's. A failed export removes it; a killed one leaves it (hidden) for the user.
//! - The finished export is swapped into place with [`oats_io::swap_dir`] (atomic exchange on
//!   Linux: a reader never sees `--out` missing), and the old tree is then removed.
//! - Two exports into one `--out` are serialised by the lock file `.<name>.oats.lock` beside
//!   it (the directory itself is replaced, so its lock cannot live inside it); the swap also
//!   holds the old export's own [`LOCK_FILE`] so that an `oats-calibrate` or `oats-bench`
//!   storing results into it finishes first (they notice the new export and store nothing).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use indicatif::ProgressBar;
use oats_io::{FileLock, Swapped};
use oats_runtime::manifest::{LOCK_FILE, MANIFEST_FILE};
use oats_runtime::Manifest;

use crate::error::{ExportError, Result};

/// Files that oats writes into an export directory besides those its manifest lists: the
/// manifest itself, the lock, and what
/// `oats-calibrate` adds (its report and frontier plots; `calibrate/tests/it/hostile_fs.rs` holds
/// these names to the calibrator's constants). An earlier export holding only these may be
/// replaced: everything in it was written by oats.
pub const WRITTEN_BESIDE: &[&str] = &[
    MANIFEST_FILE,
    LOCK_FILE,
    "calibration.yaml",
    "frontier.png",
    "frontier.svg",
    crate::int8::REPORT_FILE,
];

/// How many entries of a refused `--out` the error names: enough to recognise the directory,
/// few enough to read.
const NAMED_ENTRIES: usize = 5;

/// An `--out` that may be written: the lock beside it is held until the export is in place.
#[derive(Debug)]
pub struct OutDir {
    out: PathBuf,
    parent: PathBuf,
    name: OsString,
    _lock: FileLock,
}

/// A new export being written: `dir()` is inside a fresh hidden directory beside `--out`,
/// removed with everything in it when this is dropped.
#[derive(Debug)]
pub struct Staging {
    root: tempfile::TempDir,
    dir: PathBuf,
}

impl Staging {
    /// Where the new export's files go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl OutDir {
    /// Takes the lock for `out` (waiting, with a message on `bar`, while another export into it
    /// runs) and checks that what is there may be replaced.
    pub fn claim(out: &Path, bar: &ProgressBar) -> Result<OutDir> {
        let name = out
            .file_name()
            .filter(|_| !matches!(out.components().next_back(), Some(Component::ParentDir)))
            .ok_or_else(|| refused(out, "it names no directory (it ends in `..` or is a root)"))?
            .to_os_string();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| ExportError::io(&parent, e))?;
        let mut lock_name = OsString::from(".");
        lock_name.push(&name);
        lock_name.push(".oats.lock");
        let lock_path = parent.join(lock_name);
        let lock = match FileLock::try_acquire(&lock_path)? {
            Some(l) => l,
            None => {
                bar.set_message(format!(
                    "waiting for another oats-export into {} (lock {})",
                    out.display(),
                    lock_path.display()
                ));
                FileLock::acquire(&lock_path)?
            }
        };
        let dir = OutDir {
            out: out.to_path_buf(),
            parent,
            name,
            _lock: lock,
        };
        dir.check_replaceable()?;
        Ok(dir)
    }

    /// A fresh staging directory beside `--out` (same file system, so the swap is a rename).
    pub fn stage(&self) -> Result<Staging> {
        let mut prefix = OsString::from(".");
        prefix.push(&self.name);
        prefix.push(".");
        let root = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(&self.parent)
            .map_err(|e| ExportError::io(&self.parent, e))?;
        let dir = root.path().join("export");
        std::fs::create_dir(&dir).map_err(|e| ExportError::io(&dir, e))?;
        Ok(Staging { root, dir })
    }

    /// Puts the staged export at `--out`, replacing the earlier export there (checked again,
    /// under that export's own lock), then removes the old tree.
    pub fn commit(self, staging: Staging) -> Result<()> {
        let _old_lock = match std::fs::symlink_metadata(&self.out) {
            Ok(m) if m.is_dir() => Some(
                oats_runtime::manifest::ManifestLock::acquire(&self.out)
                    .map_err(ExportError::from)?,
            ),
            _ => None,
        };
        self.check_replaceable()?;
        let swapped = oats_io::swap_dir(&staging.dir, &self.out)?;
        if let Swapped::Replaced { old } = swapped {
            // Inside the staging root; dropping it removes the rest. A failure here leaves a
            // hidden directory beside --out, not a broken export, so it is not an error.
            let _ = std::fs::remove_dir_all(&old);
        }
        drop(staging.root);
        Ok(())
    }

    /// Refuses anything at `--out` that is not absent, empty, or an earlier export.
    fn check_replaceable(&self) -> Result<()> {
        check_replaceable(&self.out)
    }
}

fn refused(path: &Path, reason: impl Into<String>) -> ExportError {
    ExportError::NotAnExport {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// `Ok` when `out` is absent, an empty directory, or an earlier export that holds only what oats
/// wrote; otherwise [`ExportError::NotAnExport`] naming what is there.
pub fn check_replaceable(out: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ExportError::io(out, e)),
    };
    if meta.file_type().is_symlink() {
        return Err(refused(
            out,
            "it is a symbolic link (pass the directory it points to, if that is an export)",
        ));
    }
    if !meta.is_dir() {
        return Err(refused(out, "it is a file, not a directory"));
    }
    let mut top = list(out)?;
    // The lock file that `commit` itself creates in an empty directory.
    top.retain(|n| n != LOCK_FILE);
    if top.is_empty() {
        return Ok(());
    }
    let manifest_path = out.join(MANIFEST_FILE);
    let is_plain_manifest =
        std::fs::symlink_metadata(&manifest_path).is_ok_and(|m| m.file_type().is_file());
    if !is_plain_manifest {
        return Err(refused(
            out,
            format!(
                "it is not an oats export (no {MANIFEST_FILE}); it holds {}",
                names(&top)
            ),
        ));
    }
    let manifest = Manifest::load(&manifest_path).map_err(|e| {
        refused(
            out,
            format!("its {MANIFEST_FILE} is not a valid oats manifest ({e})"),
        )
    })?;
    let mut allowed: BTreeSet<PathBuf> = manifest.listed_files().into_iter().map(normal).collect();
    allowed.extend(WRITTEN_BESIDE.iter().map(PathBuf::from));
    let mut foreign = Vec::new();
    walk(out, Path::new(""), &allowed, &mut foreign)?;
    if !foreign.is_empty() {
        return Err(refused(
            out,
            format!(
                "besides an earlier export it holds {} that oats did not write",
                names(&foreign)
            ),
        ));
    }
    Ok(())
}

/// A manifest file name as a relative path without `.` components (names are validated).
fn normal(file: &str) -> PathBuf {
    Path::new(file)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

fn list(dir: &Path) -> Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ExportError::io(dir, e))? {
        names.push(entry.map_err(|e| ExportError::io(dir, e))?.file_name());
    }
    names.sort();
    Ok(names)
}

/// Collects (relative paths of) entries below `dir` that are not allowed; stops early once
/// enough are found to name them.
fn walk(
    root: &Path,
    rel: &Path,
    allowed: &BTreeSet<PathBuf>,
    foreign: &mut Vec<OsString>,
) -> Result<()> {
    for name in list(&root.join(rel))? {
        if foreign.len() > NAMED_ENTRIES {
            return Ok(());
        }
        let r = rel.join(&name);
        let meta = std::fs::symlink_metadata(root.join(&r))
            .map_err(|e| ExportError::io(root.join(&r), e))?;
        let ok = if meta.file_type().is_file() {
            allowed.contains(&r) || is_interrupted_write(&r, allowed)
        } else if meta.file_type().is_dir() {
            let inside = allowed.iter().any(|a| a.starts_with(&r));
            if inside {
                walk(root, &r, allowed, foreign)?;
            }
            inside
        } else {
            false // symlinks, FIFOs, devices: never written by oats
        };
        if !ok {
            foreign.push(r.into_os_string());
        }
    }
    Ok(())
}

/// The temporary file of an atomic write of an allowed file that was killed before its
/// rename: `.<name>.<random>.tmp` beside it (`oats_io::write_atomic`).
fn is_interrupted_write(rel: &Path, allowed: &BTreeSet<PathBuf>) -> bool {
    let (Some(name), dir) = (rel.file_name().and_then(|n| n.to_str()), rel.parent()) else {
        return false;
    };
    let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    let Some((target, _random)) = inner.rsplit_once('.') else {
        return false;
    };
    allowed.contains(&dir.unwrap_or(Path::new("")).join(target))
}

/// "a, b, c and 2 more" (at most [`NAMED_ENTRIES`] names).
fn names(entries: &[OsString]) -> String {
    let shown: Vec<String> = entries
        .iter()
        .take(NAMED_ENTRIES)
        .map(|n| format!("{:?}", n.to_string_lossy()))
        .collect();
    let more = entries.len().saturating_sub(NAMED_ENTRIES);
    if more > 0 {
        format!("{} and more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_writes_of_allowed_files_only() {
        let allowed: BTreeSet<PathBuf> = ["manifest.yaml", "g/a.onnx"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert!(is_interrupted_write(
            Path::new(".manifest.yaml.a1B2c3.tmp"),
            &allowed
        ));
        assert!(is_interrupted_write(Path::new("g/.a.onnx.x.tmp"), &allowed));
        assert!(!is_interrupted_write(
            Path::new(".notes.txt.x.tmp"),
            &allowed
        ));
        assert!(!is_interrupted_write(
            Path::new("manifest.yaml.tmp"),
            &allowed
        ));
        assert!(!is_interrupted_write(Path::new(".manifest.yaml"), &allowed));
    }
}
