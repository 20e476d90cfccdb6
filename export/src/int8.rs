//! int8 configurations beside the float ones of an export (`oats-export --int8`, issue #15).
//!
//! For each chosen float configuration (λ, width) of an export directory:
//! 1. its folded float graph is lowered from the export's package (the arithmetic that made or
//!    derives the float graph);
//! 2. the range of every activation the int8 graph quantizes is measured on calibration
//!    images from the **training** split ([`TchGraph::values`]);
//! 3. [`oats_graph::quant::quantize`] writes the QDQ twin, `<id>.int8.onnx`;
//! 4. verification through the runtime's own engines on real images of another split: the
//!    int8 graph's top-1 must agree with the float configuration's on at least
//!    [`MIN_TOP1_AGREEMENT`] of them, and the logit error is recorded; the engines must also
//!    agree with the training framework's reading of the same int8 graph (what the calibrator
//!    attacks), see [`Int8Config::engine`];
//! 5. the per-layer report: for every quantized activation, the relative error of the int8
//!    graph's value against the float graph's, so one sees where the error enters.
//!
//! The entries (`precision: int8`, id `<float id>-int8`, `quantization` recording the
//! calibration and verification images) are added to the manifest under its lock, and
//! `int8-report.yaml` is written beside it. Graph files are written (each by rename) before
//! the manifest names them; a run that fails or is refused removes them and puts back any
//! earlier int8 file it displaced ([`Written`]), so the export is as it was. A run killed
//! outright can leave a new file under a name the manifest lists with the old sha256: the
//! runtime then refuses that graph, naming it, and the earlier file is beside it as
//! `.<file>.old`.
use std::collections::BTreeMap;
use std::path::Path;

use indicatif::ProgressBar;
use oats_graph::quant::{self, Range, Ranges};
use oats_graph::Package;
use oats_runtime::manifest::{self, GraphEntry, ManifestLock, Metrics, MANIFEST_FILE};
use oats_runtime::{Backend, Batch, Options, Precision, Quantization};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::{ExportError, Result};
use crate::tch_graph::TchGraph;

/// Least top-1 agreement between an int8 graph and its float configuration on the
/// verification images; below it the int8 graph is refused (issue #15).
pub const MIN_TOP1_AGREEMENT: f64 = 0.99;

/// Least top-1 agreement between an engine's int8 logits and the training framework's
/// reading of the same graph (what the calibrator attacks). Integer kernels requantize with
/// their own rounding, so the two differ by a few quantization steps at most; a graph the
/// engines read differently would make the direct attack meaningless.
pub const MIN_ENGINE_AGREEMENT: f64 = 0.99;

/// The report file written beside the manifest.
pub const REPORT_FILE: &str = "int8-report.yaml";

/// What to quantize and on which images.
pub struct Int8Options {
    /// λ of the float configurations to quantize (default: every float entry's).
    pub lambdas: Option<Vec<f64>>,
    /// Widths (default: every float entry's).
    pub widths: Option<Vec<f64>>,
    /// Calibration images [N, C, H, W] in [0, 1], from the training split.
    pub calibration: Tensor,
    /// What they are, e.g. "fashion-mnist train[0..512]" (recorded in the manifest).
    pub calibration_images: String,
    /// Verification images, from another split.
    pub verification: Tensor,
    /// What they are, e.g. "fashion-mnist val[0..1000]".
    pub verification_images: String,
    /// Engines that must run the int8 graphs.
    pub verify_with: Vec<Backend>,
    /// Percentile of the activation ranges ([`RANGE_PERCENTILE`] by default), in [50, 100].
    pub percentile: f64,
    /// Least top-1 agreement with the float configuration ([`MIN_TOP1_AGREEMENT`] by
    /// default); a test on an untrained model may lower it, a shipped model should not.
    pub min_top1_agreement: f64,
}

/// One quantized activation in the per-layer report.
#[derive(Debug, Clone, Serialize)]
pub struct LayerError {
    /// Value name in the graph (e.g. `relu_7`).
    pub value: String,
    /// The operator that produced it (`input` for the image).
    pub op: String,
    /// ‖int8 − float‖₂ / ‖float‖₂ of the value over the verification images, before this
    /// value's own quantizer: the error accumulated by the layers before it.
    pub rel_error: f64,
    /// Scale and zero point of its quantizer.
    pub scale: f32,
    pub zero_point: u8,
}

/// One engine's reading of an int8 graph.
#[derive(Debug, Clone, Serialize)]
pub struct EngineCheck {
    pub backend: String,
    /// Top-1 agreement with the float configuration in the same engine.
    pub top1_agreement: f64,
    /// Largest |int8 − float| logit.
    pub max_logit_error: f64,
    /// Mean |int8 − float| logit.
    pub mean_logit_error: f64,
    /// Top-1 agreement with the training framework's reading of the int8 graph.
    pub agreement_with_tch: f64,
    /// Largest |engine − tch| int8 logit.
    pub max_diff_to_tch: f64,
}

/// One int8 configuration made.
#[derive(Debug, Clone, Serialize)]
pub struct Int8Config {
    pub id: String,
    pub float_id: String,
    pub lambda: f64,
    pub width: f64,
    /// The int8 graph file; `None` when it is derived from the package (its float
    /// configuration is).
    pub file: Option<String>,
    /// Bytes of the int8 ONNX graph (as a file), and of the float graph it replaces.
    pub bytes: u64,
    pub float_bytes: u64,
    pub engine: Vec<EngineCheck>,
    pub layers: Vec<LayerError>,
}

/// `int8-report.yaml`.
#[derive(Debug, Clone, Serialize)]
pub struct Int8Report {
    pub calibration_images: String,
    pub verification_images: String,
    pub min_top1_agreement: f64,
    pub configs: Vec<Int8Config>,
}

fn to_batch(x: &Tensor) -> Result<Batch> {
    let d = x.size();
    let data = Vec::<f32>::try_from(x.to_kind(Kind::Float).contiguous().flatten(0, -1))?;
    Ok(Batch::new(
        [d[0] as usize, d[1] as usize, d[2] as usize, d[3] as usize],
        data,
    )?)
}

fn logits_tensor(p: &oats_runtime::Prediction) -> Tensor {
    Tensor::from_slice(&p.logits).view([p.batch as i64, p.classes as i64])
}

fn agreement(a: &Tensor, b: &Tensor) -> f64 {
    a.argmax(1, false)
        .eq_tensor(&b.argmax(1, false))
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

/// Default percentile of an activation's calibration values its range covers at each end
/// ([`ranges`], `--int8-percentile`).
pub const RANGE_PERCENTILE: f64 = 99.99;

/// Largest sample of values a percentile is taken from, per batch (tch's quantile takes at
/// most 2^24 values; a strided sample of this size bounds the time too).
const PERCENTILE_SAMPLE: i64 = 1 << 20;

/// Activation ranges of `g` over `x`: per batch of up to 256 images the
/// `percentile`-th percentile at each end (the extreme 0.01 % of values clip, which
/// buys resolution for the rest), averaged over the batches (the batch extremes when the
/// percentile is 100). The image input takes [0, 1]. Compared on the demo model (DESIGN.md,
/// "int8"): min/max, 99.99, 99.999 and a least-squares clip all gave 98.7–99.9 % top-1
/// agreement per configuration; 99.99 the fewest below 99 %.
fn ranges(g: &TchGraph, points: &[String], x: &Tensor, percentile: f64) -> Result<Ranges> {
    let q = percentile / 100.0;
    let mut sums: Vec<(f64, f64, f64)> = vec![(0.0, 0.0, 0.0); points.len()];
    let _ng = tch::no_grad_guard();
    let n = x.size()[0];
    let mut s = 0;
    while s < n {
        let len = 256.min(n - s);
        let vals = g.values(&x.narrow(0, s, len), points)?;
        for (acc, v) in sums.iter_mut().zip(vals) {
            let flat = v.flatten(0, -1).to_kind(Kind::Float);
            let numel = flat.size()[0];
            let sample = if numel > PERCENTILE_SAMPLE {
                flat.slice(
                    0,
                    0,
                    numel,
                    (numel + PERCENTILE_SAMPLE - 1) / PERCENTILE_SAMPLE,
                )
            } else {
                flat
            };
            let (lo, hi) = if q >= 1.0 {
                (
                    sample.min().double_value(&[]),
                    sample.max().double_value(&[]),
                )
            } else {
                let qs = Tensor::from_slice(&[1.0 - q, q]).to_kind(Kind::Float);
                let r = sample.quantile(&qs, None, false, "linear");
                (r.double_value(&[0]), r.double_value(&[1]))
            };
            let w = len as f64;
            *acc = (acc.0 + w * lo, acc.1 + w * hi, acc.2 + w);
        }
        s += len;
    }
    Ok(points
        .iter()
        .zip(sums)
        .map(|(p, (lo, hi, w))| {
            let mut r = Range::empty();
            if p == oats_graph::INPUT {
                // Images are [0, 1] (the manifest's value_range): scale 1/255 represents
                // 8-bit images exactly, whatever the calibration images' extremes.
                r.include(0.0, 1.0);
            } else {
                r.include((lo / w) as f32, (hi / w) as f32);
            }
            (p.clone(), r)
        })
        .collect())
}

/// The int8 graph of `entry` in the export in `dir` (manifest `manifest`): its file, read
/// back, or, for an entry without a file, derived from the package with its ranges
/// (`oats_graph::quant::lower_int8`, as the runtime derives it).
pub fn int8_graph(
    dir: &Path,
    manifest: &oats_runtime::Manifest,
    entry: &GraphEntry,
) -> Result<oats_graph::Graph> {
    if let Some(file) = &entry.file {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).map_err(|e| ExportError::io(&path, e))?;
        if entry.sha256.as_deref() != Some(manifest::sha256_hex(&bytes).as_str()) {
            return Err(ExportError::Invalid(format!(
                "{}: sha256 differs from the manifest's",
                path.display()
            )));
        }
        return Ok(oats_graph::onnx::decode(&bytes)?);
    }
    let ranges = entry
        .quantization
        .as_ref()
        .map(|q| q.activation_ranges.as_slice())
        .unwrap_or_default();
    let pkg = load_package(dir, manifest)?;
    Ok(quant::lower_int8(&pkg, entry.lambda, entry.width, ranges)?)
}

/// The export's package, checked against the manifest's sha256.
fn load_package(dir: &Path, manifest: &oats_runtime::Manifest) -> Result<Package> {
    let pkg_entry = manifest.package.as_ref().ok_or_else(|| {
        ExportError::Invalid(format!(
            "{}: no package; int8 graphs are made from the package (export again)",
            dir.join(MANIFEST_FILE).display()
        ))
    })?;
    let pkg_path = dir.join(&pkg_entry.file);
    let pkg_bytes = std::fs::read(&pkg_path).map_err(|e| ExportError::io(&pkg_path, e))?;
    if manifest::sha256_hex(&pkg_bytes) != pkg_entry.sha256 {
        return Err(ExportError::Invalid(format!(
            "{}: sha256 differs from the manifest's",
            pkg_path.display()
        )));
    }
    Ok(Package::from_bytes(&pkg_bytes)?)
}

/// Adds int8 configurations to the export in `dir` (module docs).
pub fn add_int8(dir: &Path, opts: &Int8Options, bar: &ProgressBar) -> Result<Int8Report> {
    if !(50.0..=100.0).contains(&opts.percentile) {
        return Err(ExportError::Invalid(format!(
            "int8 range percentile {}: must be in [50, 100]",
            opts.percentile
        )));
    }
    if !(0.0..=1.0).contains(&opts.min_top1_agreement) {
        return Err(ExportError::Invalid(format!(
            "int8 minimum top-1 agreement {}: must be in [0, 1]",
            opts.min_top1_agreement
        )));
    }
    for (what, x) in [
        ("calibration", &opts.calibration),
        ("verification", &opts.verification),
    ] {
        if x.dim() != 4 || x.size()[0] == 0 {
            return Err(ExportError::Invalid(format!(
                "int8 {what} images must be a non-empty [N, C, H, W] batch, got {:?}",
                x.size()
            )));
        }
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest = oats_runtime::Manifest::load(&manifest_path)?;
    let pkg = load_package(dir, &manifest)?;
    let chosen: Vec<&GraphEntry> = manifest
        .graphs
        .iter()
        .filter(|g| !g.is_int8())
        .filter(|g| {
            opts.lambdas.as_ref().is_none_or(|ls| {
                ls.iter()
                    .any(|l| (l - g.lambda).abs() <= manifest::CONFIG_TOLERANCE)
            })
        })
        .filter(|g| {
            opts.widths.as_ref().is_none_or(|ws| {
                ws.iter()
                    .any(|w| (w - g.width).abs() <= manifest::CONFIG_TOLERANCE)
            })
        })
        .collect();
    if chosen.is_empty() {
        return Err(ExportError::Invalid(
            "no float configuration of the manifest matches --int8-lambdas / --int8-widths".into(),
        ));
    }
    bar.set_length(chosen.len() as u64);
    let calib = opts.calibration.to_device(Device::Cpu);
    let verif = opts.verification.to_device(Device::Cpu);
    let mut configs = Vec::new();
    let mut entries = Vec::new();
    let mut written = Written::default();
    for e in &chosen {
        bar.set_message(format!("{} int8", e.id));
        let g = pkg.lower_folded(e.lambda, e.width)?;
        let fg = TchGraph::new(&g, Device::Cpu)?;
        let points = quant::activation_points(&g);
        let r = ranges(&fg, &points, &calib, opts.percentile)?;
        let mut q = quant::quantize(&g, &r)?;
        let id = format!("{}-int8", e.id);
        q.name = id.clone();
        let bytes = oats_graph::onnx::encode(
            &q,
            &format!(
                "oats int8 λ={} width={} (activation ranges: {})",
                e.lambda, e.width, opts.calibration_images
            ),
        );
        let float_bytes = oats_graph::onnx::encode(&g, "").len() as u64;
        let activation_ranges = quant::range_list(&g, &r)?;
        // A float configuration derived from the package has an int8 twin derived from it
        // too (its ranges in the manifest); one with a graph file gets an int8 file.
        let file = if e.is_derived() {
            None
        } else {
            let file = format!("{}.int8.onnx", e.id);
            written.write(dir, &file, &bytes)?;
            Some(file)
        };
        // The per-layer report: each quantized value in both graphs (float-domain, before its
        // own quantizer), on the verification images.
        let qg = TchGraph::new(&q, Device::Cpu)?;
        let (fv, qv, tch_int8) = {
            let _ng = tch::no_grad_guard();
            let fv = fg.values(&verif, &points)?;
            let qv = qg.values(&verif, &points)?;
            (fv, qv, qg.forward(&verif)?)
        };
        let producers: BTreeMap<&str, &str> = g
            .nodes
            .iter()
            .flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n.op)))
            .collect();
        let mut layers = Vec::with_capacity(points.len());
        for ((p, a), b) in points.iter().zip(&fv).zip(&qv) {
            let norm = a.norm().double_value(&[]);
            let rel = (b - a).norm().double_value(&[]) / norm.max(f64::MIN_POSITIVE);
            let aq = quant::ActQuant::from_range(&r[p], p)?;
            layers.push(LayerError {
                value: p.clone(),
                op: producers.get(p.as_str()).unwrap_or(&"input").to_string(),
                rel_error: rel,
                scale: aq.scale,
                zero_point: aq.zero_point,
            });
        }
        entries.push(GraphEntry {
            id: id.clone(),
            lambda: e.lambda,
            width: e.width,
            sha256: file.as_ref().map(|_| manifest::sha256_hex(&bytes)),
            file: file.clone(),
            lambda_index: None,
            params: q.params(),
            macs: q.macs,
            opset: oats_graph::onnx::OPSET,
            precision: Precision::Int8,
            quantization: Some(Quantization {
                float_id: e.id.clone(),
                calibration_images: opts.calibration_images.clone(),
                top1_agreement: 0.0,
                max_logit_error: 0.0,
                verification_images: opts.verification_images.clone(),
                activation_ranges,
            }),
            metrics: Metrics::default(),
            exits: None,
        });
        configs.push((
            Int8Config {
                id,
                float_id: e.id.clone(),
                lambda: e.lambda,
                width: e.width,
                file,
                bytes: bytes.len() as u64,
                float_bytes,
                engine: Vec::new(),
                layers,
            },
            tch_int8,
        ));
        bar.inc(1);
    }
    // Into the manifest (under its lock), then verify through the runtime as a device would
    // load it; a failure takes the new entries out again.
    let lock = ManifestLock::acquire(dir)?;
    let mut current = lock.load()?;
    current.ensure_same_graphs(&manifest, &manifest_path)?;
    let before = current.clone();
    current
        .graphs
        .retain(|g| !entries.iter().any(|n| n.id == g.id));
    current.graphs.extend(entries);
    lock.save(&current)?;
    let verified = verify(
        dir,
        &mut configs,
        &verif,
        &opts.verify_with,
        opts.min_top1_agreement,
    );
    let mut configs: Vec<Int8Config> = configs.into_iter().map(|(c, _)| c).collect();
    if let Err(e) = verified {
        lock.save(&before)?;
        return Err(e); // `written` puts the earlier files back
    }
    for g in current.graphs.iter_mut() {
        let Some(c) = configs.iter().find(|c| c.id == g.id) else {
            continue;
        };
        if let Some(q) = g.quantization.as_mut() {
            q.top1_agreement = c
                .engine
                .iter()
                .map(|e| e.top1_agreement)
                .fold(1.0, f64::min);
            q.max_logit_error = c
                .engine
                .iter()
                .map(|e| e.max_logit_error)
                .fold(0.0, f64::max);
        }
    }
    lock.save(&current)?;
    written.commit();
    configs.sort_by(|a, b| a.id.cmp(&b.id));
    let report = Int8Report {
        calibration_images: opts.calibration_images.clone(),
        verification_images: opts.verification_images.clone(),
        min_top1_agreement: opts.min_top1_agreement,
        configs,
    };
    let text = serde_yaml::to_string(&report)
        .map_err(|e| ExportError::Invalid(format!("int8 report: {e}")))?;
    let path = dir.join(REPORT_FILE);
    let tmp = dir.join(format!(".{REPORT_FILE}.tmp"));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| ExportError::io(&path, e))?;
    drop(lock);
    Ok(report)
}

/// The int8 graph files a run writes. Until [`Written::commit`], dropping it removes each and
/// puts back the file it displaced (an earlier int8 graph of that name, which the manifest on
/// disk still names with its sha256): a run that fails or is refused leaves the export as it
/// was.
#[derive(Default)]
struct Written {
    /// (file written, the earlier file moved aside).
    files: Vec<(std::path::PathBuf, Option<std::path::PathBuf>)>,
    committed: bool,
}

impl Written {
    fn write(&mut self, dir: &Path, file: &str, bytes: &[u8]) -> Result<()> {
        let path = dir.join(file);
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, bytes).map_err(|e| ExportError::io(&tmp, e))?;
        let old = if path.exists() {
            let old = dir.join(format!(".{file}.old"));
            std::fs::rename(&path, &old).map_err(|e| ExportError::io(&path, e))?;
            Some(old)
        } else {
            None
        };
        self.files.push((path.clone(), old));
        std::fs::rename(&tmp, &path).map_err(|e| ExportError::io(&path, e))
    }

    fn commit(mut self) {
        for (_, old) in &self.files {
            if let Some(o) = old {
                let _ = std::fs::remove_file(o);
            }
        }
        self.committed = true;
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for (path, old) in self.files.iter().rev() {
            let _ = std::fs::remove_file(path);
            if let Some(o) = old {
                let _ = std::fs::rename(o, path);
            }
        }
    }
}

/// Runs every new int8 graph and its float configuration in each engine (module docs, 4).
fn verify(
    dir: &Path,
    configs: &mut [(Int8Config, Tensor)],
    x: &Tensor,
    backends: &[Backend],
    min_agreement: f64,
) -> Result<()> {
    let batch = to_batch(x)?;
    for &backend in backends {
        let rt = oats_runtime::OatsModel::open(
            dir,
            &Options {
                backend,
                threads: None,
                preload: false,
                ..Options::default()
            },
        )?;
        for (c, tch_int8) in configs.iter_mut() {
            let float = logits_tensor(&rt.infer_with(&c.float_id, &batch)?);
            let int8 = logits_tensor(&rt.infer_with(&c.id, &batch)?);
            let err = (&int8 - &float).abs();
            let check = EngineCheck {
                backend: backend.name().into(),
                top1_agreement: agreement(&int8, &float),
                max_logit_error: err.max().double_value(&[]),
                mean_logit_error: err.mean(Kind::Double).double_value(&[]),
                agreement_with_tch: agreement(&int8, tch_int8),
                max_diff_to_tch: (&int8 - &*tch_int8).abs().max().double_value(&[]),
            };
            if check.top1_agreement < min_agreement {
                return Err(ExportError::Invalid(format!(
                    "int8 graph {}: top-1 agrees with the float configuration on {:.2} % of \
                     the verification images in {}, below the required {:.0} % (max |Δlogit| \
                     {:.3})",
                    c.id,
                    100.0 * check.top1_agreement,
                    check.backend,
                    100.0 * min_agreement,
                    check.max_logit_error
                )));
            }
            if check.agreement_with_tch < MIN_ENGINE_AGREEMENT {
                return Err(ExportError::Invalid(format!(
                    "int8 graph {}: {} and the training framework read it differently (top-1 \
                     agrees on {:.2} %, max |Δlogit| {:.3}); its robustness could not be \
                     measured by attacking it",
                    c.id,
                    check.backend,
                    100.0 * check.agreement_with_tch,
                    check.max_diff_to_tch
                )));
            }
            c.engine.push(check);
        }
    }
    Ok(())
}
