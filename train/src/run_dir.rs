//! The run directory: the files a training run writes there, which existing files it may
//! replace, and the lock that keeps two runs out of one directory.
//!
//! A run writes `checkpoint.safetensors`, its record `checkpoint.yaml`, `config.yaml` and
//! `metrics.csv` (each atomically)
//! and holds `.oats.lock` while it trains. `--run-dir` is a path the user types, so it may be a
//! directory with other things in it (a project root with its own `config.yaml`): a run
//! replaces only files that an earlier oats-train run wrote, recognised by their content, and
//! refuses anything else with an error naming the file. Other files in the directory are never
//! touched.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oats_io::FileLock;

use crate::checkpoint;
use crate::error::{Result, TrainError};

/// The effective config of the run.
pub const CONFIG_FILE: &str = "config.yaml";
/// One line per completed epoch, rewritten from the checkpoint's history after each epoch.
pub const METRICS_FILE: &str = "metrics.csv";
/// Held while a run trains in the directory (see `oats_io::lock`).
pub const LOCK_FILE: &str = ".oats.lock";
/// The header of [`METRICS_FILE`], which also identifies it as a run's.
pub const METRICS_HEADER: &str =
    "epoch,lr,loss,train_sa,samples_per_s,seconds,val_sa_lambda_min,val_sa_lambda_max";

/// Largest safetensors header read to recognise a checkpoint: safetensors' own limit
/// (100 MB); an oats checkpoint's header is a few kilobytes, so a larger value is not one.
const MAX_CHECKPOINT_HEADER: u64 = 100_000_000;

/// A run directory that this process trains in; the lock is released when it is dropped.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: FileLock,
}

impl RunDir {
    /// Creates `dir` if needed, takes its lock (another run training there is an error, not a
    /// wait: two runs would overwrite each other's checkpoints) and checks that the files the
    /// run writes are absent or an earlier run's. `replaces_checkpoint`: a new run (not a
    /// resume of the checkpoint there), which will overwrite `checkpoint.safetensors`.
    pub fn claim(dir: &Path, replaces_checkpoint: bool) -> Result<RunDir> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = FileLock::try_acquire(&lock_path)?.ok_or_else(|| {
            TrainError::io(
                &lock_path,
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "another oats-train is training in {} (it holds this lock); wait for it or choose another --run-dir",
                        dir.display()
                    ),
                ),
            )
        })?;
        oats_io::ensure_replaceable(
            &dir.join(CONFIG_FILE),
            "the config.yaml of an oats-train run",
            is_run_config,
        )?;
        oats_io::ensure_replaceable(
            &dir.join(METRICS_FILE),
            "the metrics.csv of an oats-train run",
            |b| b.starts_with(METRICS_HEADER.as_bytes()),
        )?;
        oats_io::ensure_replaceable(
            &dir.join(checkpoint::RECORD_FILE),
            "the checkpoint.yaml (checkpoint record) of an oats-train run",
            |b| b.starts_with(format!("format: {}", checkpoint::RECORD_FORMAT).as_bytes()),
        )?;
        let ckpt = dir.join(checkpoint::FILE_NAME);
        if replaces_checkpoint && std::fs::symlink_metadata(&ckpt).is_ok() {
            ensure_oats_checkpoint(&ckpt)?;
        }
        Ok(RunDir {
            path: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A run's config.yaml: a YAML mapping with the keys every oats config has. Deliberately
/// lenient (a config of an older oats-train is still a run's), and strict enough that another
/// program's config.yaml is not.
fn is_run_config(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[allow(dead_code)]
        mode: serde_yaml::Value,
        #[allow(dead_code)]
        arch: serde_yaml::Value,
        #[allow(dead_code)]
        epochs: serde_yaml::Value,
        #[allow(dead_code)]
        data: serde_yaml::Value,
    }
    serde_yaml::from_slice::<Probe>(bytes).is_ok()
}

/// Refuses `path` unless it is a regular file whose safetensors header says it was written by
/// oats-train (any format version): a new run must not overwrite another program's
/// `checkpoint.safetensors`. Only the header is read.
pub fn ensure_oats_checkpoint(path: &Path) -> Result<()> {
    let refuse = |what: &str| {
        TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: format!(
            "{what}; a new run replaces only an earlier oats-train run's checkpoint, so it is left as it is (move it away or choose another --run-dir)"
        ),
    }
    };
    let meta = std::fs::symlink_metadata(path).map_err(|e| TrainError::io(path, e))?;
    if meta.file_type().is_symlink() {
        return Err(refuse("is a symbolic link"));
    }
    if !meta.is_file() {
        return Err(refuse("is not a regular file"));
    }
    let header = read_header(path).map_err(|e| TrainError::io(path, e))?;
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__")]
        metadata: Option<std::collections::BTreeMap<String, String>>,
    }
    let format = header
        .and_then(|h| serde_yaml::from_slice::<Header>(&h).ok())
        .and_then(|h| h.metadata)
        .and_then(|m| m.get("format").cloned());
    match format {
        Some(f) if f.starts_with("oats-checkpoint/") => Ok(()),
        _ => Err(refuse("is not an oats-train checkpoint")),
    }
}

/// The JSON header of a safetensors file, or `None` when the length prefix is implausible.
fn read_header(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut f = File::open(path)?;
    let mut len = [0u8; 8];
    if f.read_exact(&mut len).is_err() {
        return Ok(None);
    }
    let n = u64::from_le_bytes(len);
    if n > MAX_CHECKPOINT_HEADER {
        return Ok(None);
    }
    let mut header = Vec::new();
    f.take(n).read_to_end(&mut header)?;
    Ok((header.len() as u64 == n).then_some(header))
}

/// `metrics.csv` for a run's history: the header and one line per completed epoch.
pub fn metrics_csv(history: &[checkpoint::EpochMetrics]) -> String {
    let mut out = format!("{METRICS_HEADER}\n");
    for m in history {
        out.push_str(&format!(
            "{},{:.6},{:.5},{},{:.1},{:.2},{:.4},{:.4}\n",
            m.epoch,
            m.lr,
            m.loss,
            m.train_sa.map(|a| format!("{a:.4}")).unwrap_or_default(),
            m.samples_per_s,
            m.seconds,
            m.val_sa_lambda_min,
            m.val_sa_lambda_max
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_config_is_recognised_and_others_are_not() {
        assert!(is_run_config(crate::config::DEFAULT_CONFIG.as_bytes()));
        assert!(!is_run_config(b"server:\n  port: 8080\n"));
        assert!(!is_run_config(b"\xff\xfe not yaml"));
    }

    #[test]
    fn a_foreign_safetensors_file_is_not_a_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("checkpoint.safetensors");
        let header = br#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0; 4]);
        std::fs::write(&p, &bytes).expect("write");
        assert!(ensure_oats_checkpoint(&p).is_err());
        std::fs::write(&p, b"short").expect("write");
        assert!(ensure_oats_checkpoint(&p).is_err());
        let header = br#"{"__metadata__":{"format":"oats-checkpoint/1","meta":"x"}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        std::fs::write(&p, &bytes).expect("write");
        assert!(ensure_oats_checkpoint(&p).is_ok());
    }
}
