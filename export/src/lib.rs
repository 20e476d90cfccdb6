//! oats-export: bakes each (λ, width) of a trained model into its own plain ONNX graph
//! (FiLM and BN folded into the convolutions, channels sliced to the width) and writes a
//! manifest; every graph is verified against the trainer before the export counts as done.
//!
//! Data flow: checkpoint → [`package::package`] (an [`oats_graph::Package`]: the structure
//! and every tensor once) → `package.safetensors`, and per graph [`Package::lower`]
//! (internal [`graph::Graph`]) → [`onnx::encode`] → files + `manifest.yaml` (types from
//! `oats-runtime`) → [`verify`] through the runtime's own engines (tract, and ONNX Runtime
//! when available). The arithmetic of the graphs (BN∘FiLM affines, folding, width slicing)
//! lives in `oats-graph`, which a device uses to derive the same graphs from the package.
#![warn(clippy::unwrap_used)]

pub mod error;
pub mod int8;
pub mod logits;
pub mod out_dir;
pub mod package;
pub mod tch_graph;
pub mod verify;

/// The plain graph, its ONNX encoding and the folding arithmetic, from `oats-graph` (kept
/// under their old paths).
pub use oats_graph::{fold, graph, onnx};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use oats_graph::Package;
use oats_runtime::manifest::{
    self, ExitsEntry, GraphEntry, InputSpec, Manifest, Metrics, OutputSpec, PackageEntry,
    PartEntry, ReferenceBundle, TrainingSummary,
};
use oats_runtime::{Backend, Layout};
use oats_train::TchModel;
use tch::{Kind, Tensor};

pub use error::{ExportError, Result};
pub use logits::{trainer_exit_logits, trainer_logits};

/// Default max |Δlogit| between an exported graph and the trainer (`--tolerance`). Folding
/// BN∘FiLM into the convolutions and another engine's f32 summation order move the logits
/// by a few 1e-6 (4.8e-6 on the demo export, README "Measured here"); a wrong fold, width slice
/// or BN branch moves them by far more than 1e-3 (the tests' 0.01 bias shift shows > 5e-3).
/// 1e-4 leaves a 20× margin above the round-off and stays well below any real error. The
/// calibration's replay uses the same bound (`oats_calibrate::measure::LOGIT_TOLERANCE`).
pub const DEFAULT_TOLERANCE: f64 = 1e-4;

/// What to export and how to check it.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// λ values (default: the model's training λ set). Unseen λ inside the trained range use
    /// the model's interpolated encoding.
    pub lambdas: Option<Vec<f64>>,
    /// Widths (default: all of the model's).
    pub widths: Option<Vec<f64>>,
    pub layout: Layout,
    /// Write no graph files: every configuration is listed in the manifest without a file
    /// and derived from the package on the device (verification runs the derived graphs).
    /// The smallest export; requires `layout` folded (what a derived graph is).
    pub package_only: bool,
    /// Backends that must reproduce the trainer's logits.
    pub verify_with: Vec<Backend>,
    /// Max |Δlogit| allowed (default [`DEFAULT_TOLERANCE`]).
    pub tolerance: f64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            lambdas: None,
            widths: None,
            layout: Layout::Folded,
            package_only: false,
            verify_with: vec![Backend::Tract],
            tolerance: DEFAULT_TOLERANCE,
        }
    }
}

/// λ between the training values at which the reference bundle also carries the trainer's
/// logits, at every trained width (`logits.<graph id>`, e.g. `logits.l0.15-w0.5`), so a device
/// that derives unseen configurations from the package can prove them without libtorch. Only
/// those inside a conditioned model's trained range are used.
pub const REFERENCE_UNSEEN_LAMBDAS: [f64; 3] = [0.15, 0.5, 0.7];

/// The package file written into every export (see [`PackageFile`]).
pub use oats_graph::package::FILE_NAME as PACKAGE_FILE;

/// The package written beside the graphs: what the manifest will list for a device that
/// derives configurations.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageFile {
    /// [`PACKAGE_FILE`], relative to the export directory.
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The result: the manifest written and the verification of every (graph, backend, inputs).
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub checks: Vec<verify::Check>,
    /// Bytes of the graph files.
    pub bytes: u64,
    pub package: PackageFile,
}

/// Short, stable text for a λ or width in ids and file names (`oats_graph::fmt_num`).
pub use oats_graph::fmt_num;

/// The graph id of (λ, width), e.g. `l0.2-w0.5` (`oats_graph::config_id`, which a device uses
/// for derived configurations and their reference logits).
pub fn graph_id(lambda: f64, width: f64) -> String {
    oats_graph::config_id(lambda, width)
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(
        t.to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .flatten(0, -1),
    )?)
}

/// Exports `model` (loaded from `checkpoint`, whose bytes hash to `checkpoint_sha256`) into
/// `out`. `out` must be absent, empty or an earlier export ([`out_dir`]): anything else is
/// refused before any work is done. Graphs are written to a fresh hidden directory beside
/// `out` and swapped into place only after every one has been verified, so a failed or killed
/// export never leaves a half-valid directory, and a reader never finds `out` missing. Two
/// exports into one `out` wait for each other (lock beside `out`).
/// `real_inputs` ([N,C,H,W] in [0,1]) are used for verification and the reference bundle.
pub fn export(
    model: &TchModel,
    checkpoint_sha256: &str,
    out: &Path,
    opts: &ExportOptions,
    real_inputs: Option<&Tensor>,
    bar: &ProgressBar,
) -> Result<ExportReport> {
    let cfg = model.config();
    let lambdas = opts.lambdas.clone().unwrap_or_else(|| cfg.train_lambdas());
    let widths = opts
        .widths
        .clone()
        .unwrap_or_else(|| model.widths().to_vec());
    if opts.package_only && opts.layout != Layout::Folded {
        return Err(ExportError::Invalid(
            "a package-only export derives folded graphs on the device; it has no shared-weights \
             graph files"
                .into(),
        ));
    }
    if lambdas.is_empty() || widths.is_empty() {
        return Err(ExportError::Invalid(
            "nothing to export: empty λ or width list".into(),
        ));
    }
    for &l in &lambdas {
        model.cond_for(l)?; // NaN, out of [0,1], outside the trained range → error now
    }
    for &w in &widths {
        model.width_index(w)?;
    }
    if let Some(x) = real_inputs {
        model.check_input_tensor(x)?; // data of another C×H×W: refused, not run
    }
    let pkg = package::package(model)?;
    let has_exits = !pkg.architecture().exits.is_empty();
    if has_exits && opts.layout != Layout::Folded {
        return Err(ExportError::Invalid(format!(
            "the model has side exits (after blocks {:?}): they are exported as chained \
             segment and head graphs per folded configuration (or derived from the package \
             with --package-only), so --shared-weights is not available for it",
            pkg.exit_blocks()
        )));
    }
    let target = out_dir::OutDir::claim(out, bar)?;
    let stage = target.stage()?;
    let staging = stage.dir().to_path_buf();
    let m = &model.meta;
    let mut entries = Vec::new();
    let mut bytes_total = 0u64;
    let write = |name: &str, bytes: &[u8]| -> Result<String> {
        let p = staging.join(name);
        // A new file in a directory made fresh for this export: nothing to follow or replace.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .and_then(|mut f| std::io::Write::write_all(&mut f, bytes).and_then(|()| f.sync_all()))
            .map_err(|e| ExportError::io(&p, e))?;
        Ok(manifest::sha256_hex(bytes))
    };
    // Always written: it is what a device derives any (λ, width) from, and it is smaller than
    // the graphs (DESIGN.md, "The package").
    let pkg_bytes = pkg.to_bytes()?;
    let package_file = PackageFile {
        file: PACKAGE_FILE.to_string(),
        sha256: write(PACKAGE_FILE, &pkg_bytes)?,
        bytes: pkg_bytes.len() as u64,
    };
    drop(pkg_bytes);
    bar.set_length(
        (widths.len()
            * if opts.layout == Layout::Folded {
                lambdas.len()
            } else {
                1
            }) as u64,
    );
    for &w in &widths {
        match opts.layout {
            Layout::Folded => {
                for &l in &lambdas {
                    let id = graph_id(l, w);
                    bar.set_message(id.clone());
                    let mut g = pkg.lower(&[l], w, oats_graph::Layout::Folded)?;
                    g.name = id.clone();
                    // Package-only: lowered for its MACs and params, derived on the device.
                    let (file, sha256) = if opts.package_only {
                        (None, None)
                    } else {
                        let bytes = onnx::encode(
                            &g,
                            &format!("oats {} λ={l} width={w}", cfg.mode.as_str()),
                        );
                        let file = format!("{id}.onnx");
                        let sha256 = write(&file, &bytes)?;
                        bytes_total += bytes.len() as u64;
                        (Some(file), Some(sha256))
                    };
                    let exits = if has_exits {
                        let write = (!opts.package_only).then_some(&write as _);
                        let (entry, bytes) = write_exits(&pkg, &id, l, w, write)?;
                        bytes_total += bytes;
                        Some(entry)
                    } else {
                        None
                    };
                    entries.push(GraphEntry {
                        id,
                        lambda: l,
                        width: w,
                        file,
                        sha256,
                        lambda_index: None,
                        params: g.params(),
                        macs: g.macs,
                        opset: onnx::OPSET,
                        precision: oats_runtime::Precision::Float32,
                        quantization: None,
                        metrics: Metrics::default(),
                        exits,
                    });
                    bar.inc(1);
                }
            }
            Layout::SharedWeights => {
                let file = format!("w{}.onnx", fmt_num(w));
                bar.set_message(file.clone());
                let mut g = pkg.lower(&lambdas, w, oats_graph::Layout::SharedWeights)?;
                g.name = file.clone();
                let bytes = onnx::encode(
                    &g,
                    &format!("oats {} width={w}, λ table {lambdas:?}", cfg.mode.as_str()),
                );
                let sha256 = write(&file, &bytes)?;
                bytes_total += bytes.len() as u64;
                for (k, &l) in lambdas.iter().enumerate() {
                    entries.push(GraphEntry {
                        id: graph_id(l, w),
                        lambda: l,
                        width: w,
                        file: Some(file.clone()),
                        sha256: Some(sha256.clone()),
                        lambda_index: Some(k as u32),
                        params: g.params(),
                        macs: g.macs,
                        opset: onnx::OPSET,
                        precision: oats_runtime::Precision::Float32,
                        quantization: None,
                        metrics: Metrics::default(),
                        exits: None,
                    });
                }
                bar.inc(1);
            }
        }
    }
    // Inputs for verification and the reference bundle: real images when given, and random ones.
    let shape = [m.in_channels, m.height, m.width];
    tch::manual_seed(0x0a75);
    let random = Tensor::rand(
        [32, shape[0], shape[1], shape[2]],
        (Kind::Float, tch::Device::Cpu),
    );
    let real = real_inputs.map(|r| {
        r.narrow(0, 0, r.size()[0].min(64))
            .to_device(tch::Device::Cpu)
    });
    let reference_x = real
        .as_ref()
        .map(|r| r.narrow(0, 0, r.size()[0].min(16)))
        .unwrap_or_else(|| random.narrow(0, 0, 16));
    let mut ref_tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    ref_tensors.insert(
        "input".into(),
        (
            reference_x.size().iter().map(|&d| d as usize).collect(),
            to_vec(&reference_x)?,
        ),
    );
    for (id, lambda, width) in reference_configs(&pkg, &entries) {
        let logits = trainer_logits(
            model,
            lambda,
            width,
            &reference_x.to_device(model.vs.device()),
        )?;
        ref_tensors.insert(
            format!("logits.{id}"),
            (
                logits.size().iter().map(|&d| d as usize).collect(),
                to_vec(&logits)?,
            ),
        );
    }
    let ref_bytes = verify::encode_safetensors(&ref_tensors)?;
    let ref_sha = write("reference.safetensors", &ref_bytes)?;
    let manifest = Manifest {
        schema_version: if has_exits {
            manifest::SCHEMA_VERSION_EXITS
        } else {
            manifest::SCHEMA_VERSION
        },
        model_id: format!(
            "{}-{}-{}-{}",
            cfg.mode.as_str(),
            cfg.arch,
            cfg.data.kind,
            &checkpoint_sha256[..12.min(checkpoint_sha256.len())]
        )
        .to_lowercase(),
        source_checkpoint_sha256: checkpoint_sha256.to_string(),
        training: TrainingSummary {
            mode: cfg.mode.as_str().into(),
            arch: cfg.arch.to_string(),
            dataset: cfg.data.kind.to_string(),
            epsilon: cfg.epsilon,
            attack: format!(
                "PGD-{} (step {}, random start {}), L∞ ε = {}",
                cfg.attack.steps, cfg.attack.step_size, cfg.attack.random_start, cfg.epsilon
            ),
            lambdas: cfg.train_lambdas(),
            widths: model.widths().to_vec(),
            epochs: m.epoch as u32,
        },
        input: InputSpec {
            name: oats_graph::INPUT.into(),
            shape: [shape[0] as usize, shape[1] as usize, shape[2] as usize],
            value_range: [0.0, 1.0],
        },
        output: OutputSpec {
            name: oats_graph::OUTPUT.into(),
            classes: m.class_names.len(),
        },
        class_names: m.class_names.clone(),
        layout: opts.layout,
        graphs: entries,
        reference: Some(ReferenceBundle {
            file: "reference.safetensors".into(),
            sha256: ref_sha,
        }),
        package: Some(PackageEntry {
            file: package_file.file.clone(),
            sha256: package_file.sha256.clone(),
            format: pkg.format().into(),
            lambdas: pkg.lambdas().to_vec(),
            widths: pkg.widths().to_vec(),
        }),
    };
    manifest.save(staging.join("manifest.yaml"))?;
    bar.set_message("verifying");
    let mut inputs = vec![("random".to_string(), random)];
    if let Some(r) = real {
        inputs.insert(0, ("real".to_string(), r));
    }
    let checks = verify::verify(
        model,
        &staging,
        &manifest,
        &inputs,
        &opts.verify_with,
        opts.tolerance,
    )?;
    // Every graph passed: swap the directory into place.
    target.commit(stage)?;
    Ok(ExportReport {
        dir: out.to_path_buf(),
        manifest,
        checks,
        bytes: bytes_total,
        package: package_file,
    })
}

/// Writes one file of the export by name and returns its sha256.
type WriteFile<'a> = dyn Fn(&str, &[u8]) -> Result<String> + 'a;

/// Writes the segment and head graphs of configuration `id` (files `<id>.s<k>.onnx` and
/// `<id>.e<k>.onnx`) with `write` and returns their manifest entry and their bytes. Without
/// `write` (package-only) nothing is written: the entry lists what the device will derive.
fn write_exits(
    pkg: &Package,
    id: &str,
    lambda: f64,
    width: f64,
    write: Option<&WriteFile<'_>>,
) -> Result<(ExitsEntry, u64)> {
    let seg = pkg.lower_segments(&[lambda], width, oats_graph::Layout::Folded)?;
    let mut bytes_total = 0u64;
    let mut part = |g: &oats_graph::Graph, name: String| -> Result<PartEntry> {
        let (file, sha256) = match write {
            Some(write) => {
                let bytes = onnx::encode(g, &name);
                bytes_total += bytes.len() as u64;
                (Some(name.clone()), Some(write(&name, &bytes)?))
            }
            None => (None, None),
        };
        Ok(PartEntry {
            file,
            sha256,
            macs: g.macs,
            params: g.params(),
        })
    };
    let segments = seg
        .segments
        .iter()
        .enumerate()
        .map(|(k, g)| part(g, format!("{id}.s{k}.onnx")))
        .collect::<Result<Vec<_>>>()?;
    let heads = seg
        .heads
        .iter()
        .enumerate()
        .map(|(k, g)| part(g, format!("{id}.e{k}.onnx")))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        ExitsEntry {
            after_blocks: pkg.exit_blocks(),
            segments,
            heads,
            features: seg.features(),
            exit_macs: seg.exit_macs(),
            routing: None,
        },
        bytes_total,
    ))
}

/// The configurations whose trainer logits go into the reference bundle: every exported
/// graph, then every trained (λ, width) and every [`REFERENCE_UNSEEN_LAMBDAS`] value the
/// package accepts at every width, each once, as (graph id, λ, width).
pub fn reference_configs(pkg: &Package, entries: &[GraphEntry]) -> Vec<(String, f64, f64)> {
    let mut out: Vec<(String, f64, f64)> = entries
        .iter()
        .map(|e| (e.id.clone(), e.lambda, e.width))
        .collect();
    let unseen = REFERENCE_UNSEEN_LAMBDAS
        .iter()
        .copied()
        .filter(|&l| pkg.condition(l).is_ok());
    let lambdas: Vec<f64> = pkg.lambdas().iter().copied().chain(unseen).collect();
    for &w in pkg.widths() {
        for &l in &lambdas {
            let id = graph_id(l, w);
            if !out.iter().any(|(i, _, _)| *i == id) {
                out.push((id, l, w));
            }
        }
    }
    out
}
