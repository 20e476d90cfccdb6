//! Read-modify-write of `manifest.yaml` by several processes without losing anyone's results.
//!
//! `oats-calibrate` adds accuracies (and its latencies), `oats-bench --write-manifest` adds
//! latencies, possibly at the same time, each after minutes of measuring. Each of them used
//! to save the manifest it had read at its start, so the later save erased the earlier one's
//! numbers. Now every writer takes the export directory's lock ([`LOCK_FILE`]), re-reads the
//! manifest as it is on disk *then*, changes only its own fields and saves atomically before
//! letting go: whatever the order, both sets of results survive.

use std::path::{Path, PathBuf};

use oats_io::FileLock;

use super::{Manifest, LOCK_FILE, MANIFEST_FILE};
use crate::error::{Result, RuntimeError};

/// The held lock of an export directory: while it lives, no other oats process rewrites the
/// manifest, the calibration report or the plots, and no export replaces the directory.
#[derive(Debug)]
pub struct ManifestLock {
    _lock: FileLock,
    dir: PathBuf,
}

impl ManifestLock {
    /// Waits until no other oats process writes the export directory `dir`, then holds it.
    pub fn acquire(dir: &Path) -> Result<ManifestLock> {
        let path = dir.join(LOCK_FILE);
        let lock =
            FileLock::acquire(&path).map_err(|source| RuntimeError::Lock { path, source })?;
        Ok(ManifestLock {
            _lock: lock,
            dir: dir.to_path_buf(),
        })
    }

    /// `<dir>/manifest.yaml`.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    /// The manifest as it is on disk now (validated).
    pub fn load(&self) -> Result<Manifest> {
        Manifest::load(self.manifest_path())
    }

    /// Validates and saves atomically.
    pub fn save(&self, manifest: &Manifest) -> Result<()> {
        manifest.save(self.manifest_path())
    }
}

impl Manifest {
    /// Locks the export directory `dir`, re-reads its manifest, applies `change` and saves the
    /// result atomically, all under the lock. `change` must touch only the fields its caller
    /// owns (calibrate: accuracies and its latency keys; bench: its latency keys), so that
    /// another writer's results, read back from disk here, are kept. An error from `change`
    /// leaves the manifest as it was.
    pub fn update<T, E>(
        dir: &Path,
        change: impl FnOnce(&mut Manifest) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<RuntimeError>,
    {
        let lock = ManifestLock::acquire(dir)?;
        let mut manifest = lock.load()?;
        let out = change(&mut manifest)?;
        lock.save(&manifest)?;
        Ok(out)
    }

    /// Refuses when `self` (re-read under the lock) describes other graphs than `measured`
    /// (read when the measuring began): another checkpoint, or a graph whose file, hash, λ,
    /// width or λ index differs. The directory was then exported anew in between, and storing
    /// the measurements would attach them to graphs that were never measured.
    pub fn ensure_same_graphs(&self, measured: &Manifest, path: &Path) -> Result<()> {
        let changed = |reason: String| {
            Err(RuntimeError::ExportChanged {
                path: path.to_path_buf(),
                reason,
            })
        };
        if !self
            .source_checkpoint_sha256
            .eq_ignore_ascii_case(&measured.source_checkpoint_sha256)
        {
            return changed(format!(
                "the export now comes from checkpoint sha256 {}, not {} as when the measuring began (exported anew meanwhile?)",
                self.source_checkpoint_sha256, measured.source_checkpoint_sha256
            ));
        }
        // Derived configurations are only as unchanged as the package they come from.
        let package_sha = |m: &Manifest| m.package.as_ref().map(|p| p.sha256.clone());
        if !same_sha(&package_sha(self), &package_sha(measured)) {
            return changed(
                "the package is no longer the one that was measured (exported anew meanwhile?)"
                    .into(),
            );
        }
        for g in &measured.graphs {
            let now = self.graphs.iter().find(|n| n.id == g.id);
            let same = now.is_some_and(|n| {
                n.file == g.file
                    && same_sha(&n.sha256, &g.sha256)
                    && n.lambda_index == g.lambda_index
                    && n.lambda.to_bits() == g.lambda.to_bits()
                    && n.width.to_bits() == g.width.to_bits()
            });
            if !same {
                return changed(format!(
                    "graph {} is no longer the graph that was measured (exported anew meanwhile?)",
                    g.id
                ));
            }
        }
        Ok(())
    }
}

/// Two optional sha256 are the same file: both absent, or equal ignoring case.
fn same_sha(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}
