//! Derived configurations: any λ in the trained range at any trained width, lowered on the
//! device from the export's package (schema v2) with the exporter's own code
//! (`oats_graph::Package::lower_folded`, then `oats_graph::to_onnx`), checked like a graph
//! file and loaded from bytes, and kept in a least-recently-used cache under a byte budget.
//!
//! * `PackageSource`: the package file, read once, its sha256 checked on the very bytes
//!   given to `Package::from_bytes`, and what it holds compared with the manifest.
//! * `DerivedCache`: the derived sessions. Each is an `Arc`; the active configuration and
//!   every inference in flight hold their own, so eviction only drops the cache's reference
//!   and never disturbs them (the session is freed when the last holder lets go).
//!
//! Resident bytes: a session is accounted by the length of its ONNX bytes
//! (`DerivedCache::insert`), which is its folded weights (f32) plus a few KiB of graph; for a
//! model with side exits, the segments and heads it derives too (about as much again).
//! Both engines keep one copy of the weights, tract repacked for its kernels, ONNX Runtime
//! as initializers; activations are allocated per inference and are not counted. `oats-bench`
//! prints this estimate next to the resident-set growth it measures.
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use oats_graph::Package;

use crate::error::{Result, RuntimeError};
use crate::manifest::{sha256_hex, Manifest, PackageEntry, CONFIG_TOLERANCE};
use crate::source::Source;

/// The package file of an export, read on first use.
pub(crate) struct PackageSource {
    pub entry: PackageEntry,
    /// Resolved inside the export directory.
    pub path: PathBuf,
    package: OnceLock<Arc<Package>>,
    loading: Mutex<()>,
}

impl PackageSource {
    pub fn new(entry: PackageEntry, path: PathBuf) -> Self {
        PackageSource {
            entry,
            path,
            package: OnceLock::new(),
            loading: Mutex::new(()),
        }
    }

    /// The package, read and checked once: a regular file of at most
    /// `oats_graph::limits::MAX_PACKAGE_BYTES`, the manifest's sha256 on exactly the bytes
    /// parsed, then its λ, widths, input and classes against the manifest.
    pub fn get(&self, source: &Source, manifest: &Manifest) -> Result<Arc<Package>> {
        if let Some(p) = self.package.get() {
            return Ok(p.clone());
        }
        let _guard = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = self.package.get() {
            return Ok(p.clone());
        }
        let bytes = source.read(
            &self.entry.file,
            &self.path,
            "a package",
            oats_graph::limits::MAX_PACKAGE_BYTES,
        )?;
        let actual = sha256_hex(&bytes);
        let expected = self.entry.sha256.to_ascii_lowercase();
        if actual != expected {
            return Err(RuntimeError::ShaMismatch {
                file: self.path.clone(),
                expected,
                actual,
            });
        }
        let pkg = Package::from_bytes(&bytes).map_err(|source| RuntimeError::Package {
            file: self.path.clone(),
            source,
        })?;
        drop(bytes);
        self.check(&pkg, manifest)?;
        Ok(self.package.get_or_init(|| Arc::new(pkg)).clone())
    }

    fn check(&self, pkg: &Package, m: &Manifest) -> Result<()> {
        let mismatch = |reason: String| RuntimeError::PackageMismatch {
            file: self.path.clone(),
            reason,
        };
        let same = crate::manifest::same_values;
        if pkg.format() != self.entry.format {
            // `oats-package/2` holds side exits: a manifest that disagrees would route with
            // exits the package lacks, or drop exits it has.
            return Err(mismatch(format!(
                "it is {:?}, the manifest's package.format is {:?}",
                pkg.format(),
                self.entry.format
            )));
        }
        if !same(pkg.lambdas(), &self.entry.lambdas) {
            return Err(mismatch(format!(
                "it holds λ {:?}, the manifest's package.lambdas are {:?}",
                pkg.lambdas(),
                self.entry.lambdas
            )));
        }
        if !same(pkg.widths(), &self.entry.widths) {
            return Err(mismatch(format!(
                "it holds widths {:?}, the manifest's package.widths are {:?}",
                pkg.widths(),
                self.entry.widths
            )));
        }
        if pkg.input_shape() != m.input.shape {
            return Err(mismatch(format!(
                "its input is {:?}, the manifest's input.shape is {:?}",
                pkg.input_shape(),
                m.input.shape
            )));
        }
        if pkg.classes() != m.output.classes {
            return Err(mismatch(format!(
                "it has {} classes, the manifest's output.classes is {}",
                pkg.classes(),
                m.output.classes
            )));
        }
        if m.input.name != oats_graph::INPUT || m.output.name != oats_graph::OUTPUT {
            return Err(mismatch(format!(
                "derived graphs read {:?} and write {:?}, the manifest names {:?} and {:?}",
                oats_graph::INPUT,
                oats_graph::OUTPUT,
                m.input.name,
                m.output.name
            )));
        }
        Ok(())
    }
}

/// What the cache knows of one derived session.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DerivedInfo {
    /// The configuration's id: the manifest entry's at this (λ, width) if there is one,
    /// else `oats_graph::config_id(λ, width)`.
    pub id: String,
    /// λ as requested.
    pub lambda: f64,
    /// Width as requested.
    pub width: f64,
    /// Float32, or an int8 configuration derived with its manifest entry's ranges.
    pub precision: crate::Precision,
    /// Estimated resident bytes (the module docs say what is counted).
    pub bytes: u64,
    /// Lowering, encoding, checking and loading it in the engine (not reading the package,
    /// which happens once).
    pub derive_ms: f64,
}

struct Entry<T> {
    info: DerivedInfo,
    value: Arc<T>,
    last_use: u64,
}

/// Least-recently-used cache of derived sessions under an optional byte budget.
pub(crate) struct DerivedCache<T> {
    budget: Option<u64>,
    entries: Vec<Entry<T>>,
    tick: u64,
}

impl<T> DerivedCache<T> {
    pub fn new(budget: Option<u64>) -> Self {
        DerivedCache {
            budget,
            entries: Vec::new(),
            tick: 0,
        }
    }

    pub fn budget(&self) -> Option<u64> {
        self.budget
    }

    /// The session of (λ, width) at `precision`, marked as used now.
    pub fn get(&mut self, lambda: f64, width: f64, precision: crate::Precision) -> Option<Arc<T>> {
        self.tick += 1;
        let tick = self.tick;
        let e = self.entries.iter_mut().find(|e| {
            (e.info.lambda - lambda).abs() <= CONFIG_TOLERANCE
                && (e.info.width - width).abs() <= CONFIG_TOLERANCE
                && e.info.precision == precision
        })?;
        e.last_use = tick;
        Some(e.value.clone())
    }

    /// Whether a session of `bytes` may be cached at all.
    pub fn fits(&self, bytes: u64) -> bool {
        self.budget.is_none_or(|b| bytes <= b)
    }

    /// Adds a session, then evicts the least recently used others until the total is within
    /// the budget. Returns what was evicted. (An evicted session lives on while the active
    /// configuration or an inference holds it.)
    pub fn insert(&mut self, info: DerivedInfo, value: Arc<T>) -> Vec<DerivedInfo> {
        self.tick += 1;
        self.entries.push(Entry {
            info,
            value,
            last_use: self.tick,
        });
        let mut evicted = Vec::new();
        while let Some(budget) = self.budget {
            if self.used() <= budget || self.entries.len() <= 1 {
                break;
            }
            let newest = self.tick;
            let Some(i) = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.last_use != newest)
                .min_by_key(|(_, e)| e.last_use)
                .map(|(i, _)| i)
            else {
                break;
            };
            evicted.push(self.entries.remove(i).info);
        }
        evicted
    }

    /// Bytes of every cached session.
    pub fn used(&self) -> u64 {
        self.entries.iter().map(|e| e.info.bytes).sum()
    }

    /// The cached sessions, least recently used first.
    pub fn infos(&self) -> Vec<DerivedInfo> {
        let mut v: Vec<&Entry<T>> = self.entries.iter().collect();
        v.sort_by_key(|e| e.last_use);
        v.into_iter().map(|e| e.info.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(l: f64, bytes: u64) -> DerivedInfo {
        DerivedInfo {
            precision: crate::Precision::Float32,
            id: oats_graph::config_id(l, 1.0),
            lambda: l,
            width: 1.0,
            bytes,
            derive_ms: 0.0,
        }
    }

    #[test]
    fn lru_under_budget() {
        let mut c = DerivedCache::new(Some(250));
        assert!(c.insert(info(0.1, 100), Arc::new(1)).is_empty());
        assert!(c.insert(info(0.2, 100), Arc::new(2)).is_empty());
        assert_eq!(
            c.get(0.1, 1.0, crate::Precision::Float32).as_deref(),
            Some(&1)
        );
        // 0.2 is now the least recently used.
        let ev = c.insert(info(0.3, 100), Arc::new(3));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].lambda, 0.2);
        assert!(c.get(0.2, 1.0, crate::Precision::Float32).is_none());
        assert_eq!(c.used(), 200);
        assert!(!c.fits(251) && c.fits(250));
    }

    #[test]
    fn held_sessions_survive_eviction() {
        let mut c = DerivedCache::new(Some(100));
        let held = Arc::new(7);
        c.insert(info(0.1, 100), held.clone());
        c.insert(info(0.2, 100), Arc::new(8));
        assert!(c.get(0.1, 1.0, crate::Precision::Float32).is_none());
        assert_eq!(*held, 7);
        assert_eq!(Arc::strong_count(&held), 1);
    }
}
