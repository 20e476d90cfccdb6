//! The calibration report (`calibration.yaml` beside the manifest), the printed table, and
//! the manifest's `metrics` filled from the report.
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use oats_runtime::{Interval, LatencyStat, Manifest, Metrics, OperatingPoint};
use oats_train::limits::{read_text_limited, MAX_YAML_BYTES};
use serde::{Deserialize, Serialize};

use crate::error::{CalibrateError, Result};
use crate::measure::Replay;
use crate::sanity::Sanity;

pub const FORMAT: &str = "oats-calibration/1";
pub const REPORT_FILE: &str = "calibration.yaml";

/// Everything one calibration measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    pub format: String,
    pub model_id: String,
    /// Training mode of the model ("oats", "pgd-at", …), for baseline labels.
    pub mode: String,
    pub dataset: String,
    pub checkpoint_sha256: String,
    /// Split the numbers come from: always "val" (the test split is for reported results).
    pub split: String,
    pub samples: usize,
    pub eps: f64,
    pub pgd_step: f64,
    /// Attack keys, in the order run (also the keys of every graph's `ra`).
    pub attacks: Vec<String>,
    /// "PGD-20×2, APGD-CE": the attacks for people.
    pub attacks_pretty: String,
    pub seed: u64,
    pub device: String,
    /// Backends the graphs were replayed and timed with.
    pub backends: Vec<String>,
    pub graphs: Vec<GraphCalibration>,
    pub sanity: Sanity,
    /// Failed sanity checks and other things to look at, with numbers.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One graph's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphCalibration {
    pub id: String,
    /// The trainer's SA and RA at the graph's (λ, width): `lambda`, `width`, `sa`, `ra` (per
    /// attack), `ra_worst` (per-sample worst case), `samples`, `split`, `epsilon`.
    #[serde(flatten)]
    pub point: OperatingPoint,
    pub macs: u64,
    pub params: u64,
    /// Per backend: clean accuracy of the exported graph.
    pub runtime_sa: BTreeMap<String, f64>,
    /// Per backend: the graph's accuracy on the worst-case adversarial images.
    pub runtime_ra: BTreeMap<String, f64>,
    /// Per backend: agreement with the trainer.
    pub replay: BTreeMap<String, Replay>,
    /// "<backend>/b<batch>" → milliseconds.
    pub latency_ms: BTreeMap<String, LatencyStat>,
    /// int8 graphs: how the engines and the attacked reading agreed (`crate::int8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<crate::int8::Int8Calibration>,
    /// Configurations with side exits: thresholds and the routed prediction's numbers
    /// (`crate::exits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exits: Option<crate::exits::ExitsCalibration>,
}

impl GraphCalibration {
    /// The worst-case RA (calibration always runs at least one attack).
    pub fn ra_worst(&self) -> f64 {
        self.point.ra_worst.unwrap_or(f64::NAN)
    }
}

impl CalibrationReport {
    /// Reads a report. Reports written before each graph carried its split, sample count and
    /// ε get the report's.
    pub fn load(path: &Path) -> Result<CalibrationReport> {
        let text =
            read_text_limited(path, MAX_YAML_BYTES).map_err(|e| CalibrateError::io(path, e))?;
        let mut r: CalibrationReport =
            serde_yaml::from_str(&text).map_err(|e| CalibrateError::Yaml {
                path: path.into(),
                source: e,
            })?;
        if r.format != FORMAT {
            return Err(CalibrateError::Format {
                path: path.into(),
                found: r.format,
                expected: FORMAT,
            });
        }
        for g in &mut r.graphs {
            let p = &mut g.point;
            if p.samples == 0 {
                p.samples = r.samples;
            }
            if p.split.is_empty() {
                p.split = r.split.clone();
            }
            if p.epsilon == 0.0 {
                p.epsilon = r.eps;
            }
        }
        Ok(r)
    }

    /// Writes atomically (temporary file in the same directory, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_yaml::to_string(self).map_err(|e| CalibrateError::Yaml {
            path: path.into(),
            source: e,
        })?;
        write_atomic(path, text.as_bytes())
    }

    /// The manifest's metrics for graph `g`.
    pub fn metrics(&self, g: &GraphCalibration) -> Metrics {
        let mut m = Metrics {
            latency_ms: g.latency_ms.clone(),
            device: Some(self.device.clone()),
            ..Metrics::default()
        };
        m.set_accuracy(&g.point);
        m
    }

    /// Stores what calibration measured in every calibrated graph of `manifest` (matched by
    /// id): the accuracies, the device, and the latency keys it measured. Latency keys it did
    /// not measure (another backend or batch size, stored by `oats-bench --write-manifest`) are
    /// kept: several tools fill in one manifest.
    pub fn apply_to(&self, manifest: &mut Manifest) -> Result<()> {
        for g in &self.graphs {
            let i = manifest.graph_index(&g.id).ok_or_else(|| {
                CalibrateError::Invalid(format!("graph {} is not in the manifest", g.id))
            })?;
            let mut new = self.metrics(g);
            let old = std::mem::take(&mut manifest.graphs[i].metrics.latency_ms);
            for (key, stat) in old {
                new.latency_ms.entry(key).or_insert(stat);
            }
            manifest.graphs[i].metrics = new;
            if let (Some(cal), Some(entry)) = (&g.exits, manifest.graphs[i].exits.as_mut()) {
                entry.routing = Some(cal.routing(format!(
                    "{} {}[0..{}]",
                    self.dataset, self.split, g.point.samples
                )));
            }
        }
        Ok(())
    }

    /// The table printed after calibration: one row per graph; every accuracy of the trainer's
    /// model comes with its 95 % interval (Wilson) over the `n` samples.
    pub fn table(&self) -> Table {
        let mut header: Vec<String> = ["graph", "λ", "width", "MACs", "n", "SA %", SA_CI]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for a in &self.attacks {
            header.push(format!("{a} %"));
            header.push(format!("{a} {CI}"));
        }
        header.push("worst RA %".into());
        header.push(WORST_CI.into());
        header.extend(self.backends.iter().map(|b| format!("RA {b} %")));
        let lat_keys: Vec<String> = self
            .backends
            .iter()
            .map(|b| oats_runtime::manifest::latency_key(b, 1))
            .collect();
        header.extend(lat_keys.iter().map(|k| format!("p50 {k} ms")));
        let rows = self
            .graphs
            .iter()
            .map(|g| {
                let p = &g.point;
                let mut r = vec![
                    g.id.clone(),
                    p.lambda.to_string(),
                    p.width.to_string(),
                    fmt_macs(g.macs),
                    p.samples.to_string(),
                    pct(p.sa),
                    ci(Some(p.sa_interval())),
                ];
                for a in &self.attacks {
                    r.push(p.ra.get(a).map_or("-".into(), |&v| pct(v)));
                    r.push(ci(p.ra_interval(a)));
                }
                r.push(pct(g.ra_worst()));
                r.push(ci(p.ra_worst_interval()));
                r.extend(
                    self.backends
                        .iter()
                        .map(|b| g.runtime_ra.get(b).map_or("-".into(), |&v| pct(v))),
                );
                r.extend(
                    lat_keys
                        .iter()
                        .map(|k| g.latency_ms.get(k).map_or("-".into(), |l| ms(l.p50))),
                );
                r
            })
            .collect();
        Table { header, rows }
    }
}

/// Header of the interval columns.
const CI: &str = "95% CI";
const SA_CI: &str = "SA 95% CI";
const WORST_CI: &str = "worst 95% CI";

/// An interval as "73.6–84.8" (percent).
fn ci(i: Option<Interval>) -> String {
    i.map_or("-".into(), |i| i.range_pct())
}

/// A fraction as a percentage with one decimal: 0.796875 → "79.7".
pub fn pct(x: f64) -> String {
    format!("{:.1}", x * 100.0)
}

/// Milliseconds with three decimals.
pub fn ms(x: f64) -> String {
    format!("{x:.3}")
}

/// 1_159_000_000 → "1.16G", 290_000_000 → "290M", 12_345 → "12.3K".
pub fn fmt_macs(m: u64) -> String {
    let v = m as f64;
    let (x, unit) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "K")
    } else {
        return m.to_string();
    };
    let digits = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else {
        2
    };
    format!("{x:.digits$}{unit}")
}

/// A plain text table: right-aligned columns, first column left-aligned.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// The cell of `row` in the column named `column`.
    pub fn cell(&self, row: usize, column: &str) -> Option<&str> {
        let c = self.header.iter().position(|h| h == column)?;
        self.rows.get(row)?.get(c).map(String::as_str)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&oats_train::eval::render_table(&self.header, &self.rows))
    }
}

/// "Intel(R) Xeon(R) … (2 logical cores, x86_64)" from /proc/cpuinfo where it exists.
pub fn device_string() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arch = std::env::consts::ARCH;
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines().find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
        })
    });
    match model {
        Some(m) => format!("{m} ({cores} logical cores, {arch})"),
        None => format!("{arch} CPU ({cores} logical cores)"),
    }
}

/// Atomic write (the runtime's: temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(oats_runtime::manifest::write_atomic(path, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(fmt_macs(1_159_000_000), "1.16G");
        assert_eq!(fmt_macs(290_000_000), "290M");
        assert_eq!(fmt_macs(12_345), "12.3K");
        assert_eq!(fmt_macs(999), "999");
        assert_eq!(pct(0.796875), "79.7");
        assert_eq!(pct(1.0), "100.0");
    }

    #[test]
    fn table_aligns_and_finds_cells() {
        let t = Table {
            header: vec!["graph".into(), "SA %".into()],
            rows: vec![
                vec!["l0-w1".into(), "79.7".into()],
                vec!["l0.1-w0.5".into(), "8.0".into()],
            ],
        };
        assert_eq!(t.cell(1, "SA %"), Some("8.0"));
        assert_eq!(t.cell(0, "nope"), None);
        let s = t.to_string();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "graph      SA %");
        assert_eq!(lines[1], "l0-w1      79.7");
        assert_eq!(lines[2], "l0.1-w0.5   8.0");
    }
}
