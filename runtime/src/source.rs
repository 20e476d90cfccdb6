//! Where an export's files come from: a directory on disk ([`crate::OatsModel::open`]), or
//! memory ([`crate::OatsModel::open_from_memory`]: files an app carries as APK assets or in an
//! iOS bundle, or downloaded, never written to disk).
//!
//! Both go through the same checks: a name from the manifest must be a plain relative path
//! ([`crate::manifest::check_relative_file`]), every file is bounded by the same size limit
//! before it is used, and the sha256 the manifest lists is checked on exactly the bytes that
//! are then loaded. What differs is only how bytes are found: on disk, through the
//! confinement and regular-file checks of [`crate::files`]; in memory, by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, RuntimeError};
use crate::files::{check_relative_file, read_regular_file, resolve_in_dir};

/// The files of an export held in memory, by the names the manifest uses (`manifest.yaml`,
/// `package.safetensors`, `w1.onnx`, …). Only the files the manifest lists are ever read; the
/// bytes are shared, not copied, when the map is cloned.
#[derive(Debug, Clone, Default)]
pub struct ExportFiles {
    files: BTreeMap<String, Arc<[u8]>>,
}

impl ExportFiles {
    /// An empty set of files.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the file `name`, a name as the manifest writes it.
    pub fn insert(&mut self, name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> &mut Self {
        self.files.insert(name.into(), bytes.into());
        self
    }

    /// The names held, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    fn get(&self, name: &str) -> Option<&Arc<[u8]>> {
        self.files.get(name)
    }
}

/// The prefix of the paths that name in-memory files in errors (`memory:/w1.onnx`): never a
/// real file, so an error cannot be mistaken for one about the disk.
pub const MEMORY_PREFIX: &str = "memory:";

/// Where an opened export reads its files.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Dir(PathBuf),
    Memory(Arc<ExportFiles>),
}

impl Source {
    /// The path that names `name` in errors, and on disk the file read: confined to the
    /// directory (also through symlinks). Refuses a name that is not a plain relative path.
    pub fn locate(&self, name: &str) -> Result<PathBuf> {
        match self {
            Source::Dir(dir) => resolve_in_dir(dir, name),
            Source::Memory(_) => {
                check_relative_file(name)?;
                Ok(Path::new(MEMORY_PREFIX).join(name))
            }
        }
    }

    /// The bytes of `name` (found at `located`, from [`Source::locate`]), at most `limit`
    /// of them; `what` says what the file is in errors.
    pub fn read(
        &self,
        name: &str,
        located: &Path,
        what: &'static str,
        limit: u64,
    ) -> Result<Vec<u8>> {
        match self {
            Source::Dir(_) => read_regular_file(located, what, limit),
            Source::Memory(files) => {
                let bytes = files.get(name).ok_or_else(|| {
                    RuntimeError::read(
                        located,
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("{what} the manifest lists is not among the files given"),
                        ),
                    )
                })?;
                let size = bytes.len() as u64;
                if size > limit {
                    return Err(RuntimeError::FileTooLarge {
                        path: located.to_path_buf(),
                        what,
                        size,
                        limit,
                    });
                }
                Ok(bytes.to_vec())
            }
        }
    }

    /// The directory, for an export opened from one.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Source::Dir(d) => Some(d),
            Source::Memory(_) => None,
        }
    }
}
