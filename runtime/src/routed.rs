//! Routed inference over a configuration's side exits (manifest schema v3, `GraphEntry::exits`).
//!
//! The configuration is a chain of segment graphs with one head graph per side exit
//! (`oats_graph::Segmented`). A batch runs segment 0, then head 0; each sample whose exit
//! entropy is below the threshold is answered there (`oats_graph::routing`, the rule the
//! trainer's reference and calibration use), and only the rows left go on through segment 1,
//! and so on; the last segment ends in the final classifier. A batch therefore shrinks as its
//! samples leave, and a sample that leaves early never pays for the later segments.
//!
//! Each part is an ordinary graph to the engines: one input, one `[N, values]` output
//! (segments return their features flattened), checked like any graph file (sha256, then
//! `graph::inspect` against the shapes the manifest declares, then its MACs and params).
//!
//! The features stay inside the engine between parts ([`crate::engine::Activation`]): a
//! segment's output is fed to its head and to the next segment as the engine left it (tract:
//! the same reference-counted tensor, reshaped in place to `[N, C, H, W]`; ONNX Runtime: its
//! output value, read through a view). Only when some samples leave are the others gathered
//! into a smaller batch, the one copy that shrinking needs. With ONNX Runtime's CUDA
//! execution provider the outputs still come back to host memory between parts (ONNX
//! Runtime's default; keeping them on the device would take I/O binding, which nobody has
//! run here for want of a GPU). `bench::chaining` measures this against copying every
//! output through the caller's memory ([`Carry::ThroughHost`]).
use std::path::{Path, PathBuf};

use crate::engine::{Activation, Engine, GraphSpec, PartInput};
use crate::error::{Result, RuntimeError};
use crate::graph::{self, MAX_GRAPH_BYTES};
use crate::input::MAX_BATCH_ELEMENTS;
use crate::manifest::{sha256_hex, ExitsEntry, InputSpec, Manifest, OutputSpec, PartEntry};
use crate::model::Options;
use crate::source::Source;

/// How routed inference carries the features from one part to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carry {
    /// Left in the engine ([`Activation`]): what inference does.
    InEngine,
    /// Copied to the caller's memory after every part and back into the engine: the
    /// baseline `crate::bench::chaining` measures the first against.
    ThroughHost,
}

/// One loaded segment or head.
struct Part {
    engine: Engine,
    /// Values per sample of its largest tensor (bounds the batch).
    largest: u64,
    file: PathBuf,
}

/// The loaded parts of one configuration with exits.
pub(crate) struct Exits {
    segments: Vec<Part>,
    heads: Vec<Part>,
    /// [C, H, W] of the features each side exit's segment hands on.
    chw: Vec<[usize; 3]>,
    /// The calibrated thresholds, if the manifest has them.
    pub(crate) calibrated: Option<Vec<f64>>,
    pub(crate) exit_macs: Vec<u64>,
}

/// Every exit's logits of one batch, side exits first, the final one last.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitLogits {
    /// `logits[k]` is `[batch, classes]` row-major, all finite.
    pub logits: Vec<Vec<f32>>,
    /// Images in the batch.
    pub batch: usize,
    /// Logits per image.
    pub classes: usize,
}

impl Exits {
    /// Reads, verifies and loads every part of `entry` (a configuration with files).
    pub(crate) fn load(
        source: &Source,
        options: &Options,
        manifest: &Manifest,
        entry: &ExitsEntry,
    ) -> Result<Exits> {
        let (seg_io, head_io) = part_io(manifest, &entry.features);
        let mut segments = Vec::with_capacity(entry.segments.len());
        for (part, (input, output)) in entry.segments.iter().zip(&seg_io) {
            segments.push(read_part(source, options, part, input, output)?);
        }
        let mut heads = Vec::with_capacity(entry.heads.len());
        for (part, (input, output)) in entry.heads.iter().zip(&head_io) {
            heads.push(read_part(source, options, part, input, output)?);
        }
        Ok(Exits {
            segments,
            heads,
            chw: entry.features.clone(),
            calibrated: entry.routing.as_ref().map(|r| r.thresholds.clone()),
            exit_macs: entry.exit_macs.clone(),
        })
    }

    /// The parts of a configuration derived from the package (`encoded`), checked like
    /// files and loaded from bytes; `name` is `<package>#<id>`, what errors call them.
    /// `listed`: the manifest's exits at this (λ, width), whose features, MACs and params
    /// must be what is derived, and whose calibrated thresholds it routes with.
    pub(crate) fn derive(
        options: &Options,
        manifest: &Manifest,
        name: &Path,
        encoded: &EncodedExits,
        listed: Option<&ExitsEntry>,
    ) -> Result<Exits> {
        let EncodedExits {
            segments: seg_bytes,
            heads: head_bytes,
            features,
            exit_macs,
        } = encoded;
        if let Some(e) = listed {
            if e.features != *features || e.exit_macs != *exit_macs {
                return Err(RuntimeError::GraphRefused {
                    file: name.to_path_buf(),
                    reason: format!(
                        "the manifest's exits have features {:?} and exit_macs {:?}, the \
                         package gives {features:?} and {exit_macs:?}",
                        e.features, e.exit_macs
                    ),
                });
            }
        }
        let (seg_io, head_io) = part_io(manifest, features);
        let load = |kind: char,
                    k: usize,
                    onnx: &[u8],
                    claims: Option<&PartEntry>,
                    (input, output): &PartIo|
         -> Result<Part> {
            let mut file = name.as_os_str().to_owned();
            file.push(format!(".{kind}{k}"));
            check_and_load(options, PathBuf::from(file), onnx, claims, input, output)
        };
        let mut segments = Vec::with_capacity(seg_bytes.len());
        for (k, (b, io)) in seg_bytes.iter().zip(&seg_io).enumerate() {
            segments.push(load('s', k, b, listed.and_then(|e| e.segments.get(k)), io)?);
        }
        let mut heads = Vec::with_capacity(head_bytes.len());
        for (k, (b, io)) in head_bytes.iter().zip(&head_io).enumerate() {
            heads.push(load('e', k, b, listed.and_then(|e| e.heads.get(k)), io)?);
        }
        Ok(Exits {
            segments,
            heads,
            chw: features.clone(),
            calibrated: listed
                .and_then(|e| e.routing.as_ref())
                .map(|r| r.thresholds.clone()),
            exit_macs: exit_macs.clone(),
        })
    }

    /// Number of side exits.
    pub(crate) fn side_exits(&self) -> usize {
        self.heads.len()
    }

    /// Refuses a batch whose largest tensor in any part exceeds the engine's bound.
    fn check_batch(&self, n: usize) -> Result<()> {
        let limit = MAX_BATCH_ELEMENTS as u64;
        for p in self.segments.iter().chain(&self.heads) {
            if (n as u64).checked_mul(p.largest).is_none_or(|v| v > limit) {
                return Err(RuntimeError::invalid_argument(
                    "batch",
                    format!(
                        "{n} images: {} computes a tensor of {} values per image, so this \
                         batch would need more than {limit} values; use batches of at most {}",
                        p.file.display(),
                        p.largest,
                        limit / p.largest.max(1)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The shape segment `k`'s output is read with: the features `[n, C, H, W]` its head
    /// and the next segment take, or the final logits.
    fn segment_out(&self, k: usize, n: usize, classes: usize) -> Vec<usize> {
        match self.chw.get(k) {
            Some(&[c, h, w]) => vec![n, c, h, w],
            None => vec![n, classes],
        }
    }

    /// Runs every segment and every head on the whole batch: the logits of every exit.
    pub(crate) fn run_all(&self, data: &[f32], n: usize, classes: usize) -> Result<ExitLogits> {
        self.check_batch(n)?;
        let mut x: Option<Activation> = None;
        let mut logits = Vec::with_capacity(self.segments.len());
        for (k, seg) in self.segments.iter().enumerate() {
            let input = x.as_ref().map_or(PartInput::Host(data), PartInput::Engine);
            let out = seg
                .engine
                .run_part(input, n, &self.segment_out(k, n, classes))?;
            match self.heads.get(k) {
                Some(head) => {
                    let h = head
                        .engine
                        .run_part(PartInput::Engine(&out), n, &[n, classes])?;
                    logits.push(h.logits(n, classes)?.to_vec());
                }
                None => logits.push(out.logits(n, classes)?.to_vec()),
            }
            x = Some(out);
        }
        Ok(ExitLogits {
            logits,
            batch: n,
            classes,
        })
    }

    /// Routed inference with one threshold per side exit: returns the logits of the exit
    /// that answered each sample (`[n, classes]`) and that exit's index (the final
    /// classifier is [`Exits::side_exits`]).
    pub(crate) fn run_routed(
        &self,
        data: &[f32],
        n: usize,
        classes: usize,
        thresholds: &[f64],
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        self.route(data, n, classes, thresholds, Carry::InEngine)
    }

    /// [`Exits::run_routed`], with the features carried between parts as `carry` says.
    pub(crate) fn route(
        &self,
        data: &[f32],
        n: usize,
        classes: usize,
        thresholds: &[f64],
        carry: Carry,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        self.check_thresholds(thresholds)?;
        self.check_batch(n)?;
        let mut logits = vec![0f32; n * classes];
        let mut exit = vec![self.side_exits(); n];
        // The original row of each sample still running, and their features (None: the
        // caller's batch, before the first segment).
        let mut rows: Vec<usize> = (0..n).collect();
        let mut x: Option<Activation> = None;
        for (k, seg) in self.segments.iter().enumerate() {
            let m = rows.len();
            let input = x.as_ref().map_or(PartInput::Host(data), PartInput::Engine);
            let mut out = seg
                .engine
                .run_part(input, m, &self.segment_out(k, m, classes))?;
            if carry == Carry::ThroughHost {
                out = out.to_host()?;
            }
            let Some(head) = self.heads.get(k) else {
                let out = out.logits(m, classes)?;
                for (j, &r) in rows.iter().enumerate() {
                    logits[r * classes..(r + 1) * classes]
                        .copy_from_slice(&out[j * classes..(j + 1) * classes]);
                }
                break;
            };
            let h = head
                .engine
                .run_part(PartInput::Engine(&out), m, &[m, classes])?;
            let h = h.logits(m, classes)?;
            // Positions in this batch of the samples that go on.
            let mut stay = Vec::with_capacity(m);
            for (j, &r) in rows.iter().enumerate() {
                let row = &h[j * classes..(j + 1) * classes];
                if oats_graph::routing::leaves(row, thresholds[k]) {
                    logits[r * classes..(r + 1) * classes].copy_from_slice(row);
                    exit[r] = k;
                } else {
                    stay.push(j);
                }
            }
            if stay.is_empty() {
                break;
            }
            // Fed on as it is when every sample stays; gathered (the one copy) otherwise.
            x = Some(if stay.len() == m && carry == Carry::InEngine {
                out
            } else {
                out.select(&stay, &self.segment_out(k, stay.len(), classes))?
            });
            rows = stay.iter().map(|&j| rows[j]).collect();
        }
        Ok((logits, exit))
    }

    /// One finite, non-negative threshold per side exit.
    pub(crate) fn check_thresholds(&self, thresholds: &[f64]) -> Result<()> {
        if thresholds.len() != self.side_exits() {
            return Err(RuntimeError::invalid_argument(
                "thresholds",
                format!(
                    "{} values for {} side exits",
                    thresholds.len(),
                    self.side_exits()
                ),
            ));
        }
        if let Some(t) = thresholds.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
            return Err(RuntimeError::invalid_argument(
                "thresholds",
                format!("{t}: an entropy threshold is finite and ≥ 0 (0 never leaves early)"),
            ));
        }
        Ok(())
    }
}

/// The segments and heads of one configuration lowered from the package
/// (`Package::lower_segments`) and encoded as ONNX, before anything decodes or loads them:
/// what [`Exits::derive`] loads, once the cache has admitted [`EncodedExits::bytes`].
pub(crate) struct EncodedExits {
    segments: Vec<Vec<u8>>,
    heads: Vec<Vec<u8>>,
    features: Vec<[usize; 3]>,
    exit_macs: Vec<u64>,
}

impl EncodedExits {
    pub(crate) fn new(lowered: &oats_graph::Segmented) -> EncodedExits {
        EncodedExits {
            segments: lowered.segments.iter().map(oats_graph::to_onnx).collect(),
            heads: lowered.heads.iter().map(oats_graph::to_onnx).collect(),
            features: lowered.features(),
            exit_macs: lowered.exit_macs(),
        }
    }

    /// ONNX bytes of every part: what the derived cache accounts for them.
    pub(crate) fn bytes(&self) -> u64 {
        self.segments
            .iter()
            .chain(&self.heads)
            .map(|b| b.len() as u64)
            .sum()
    }
}

/// What a part reads and what it returns.
type PartIo = (InputSpec, OutputSpec);

/// The input and output each segment and each head declares, from the features' [C, H, W]
/// at each side exit: segment 0 reads the image, later ones and the heads the features;
/// segments end in features (flattened), the last one and the heads in logits.
fn part_io(manifest: &Manifest, features: &[[usize; 3]]) -> (Vec<PartIo>, Vec<PartIo>) {
    let features_in = |chw: [usize; 3]| InputSpec {
        name: oats_graph::FEATURES_INPUT.into(),
        shape: chw,
        value_range: [f32::MIN, f32::MAX],
    };
    let features_out = |chw: [usize; 3]| OutputSpec {
        name: oats_graph::FEATURES.into(),
        classes: chw.iter().product(),
    };
    let segments = (0..=features.len())
        .map(|k| {
            let input = match k {
                0 => manifest.input.clone(),
                _ => features_in(features[k - 1]),
            };
            let output = match features.get(k) {
                Some(&chw) => features_out(chw),
                None => manifest.output.clone(),
            };
            (input, output)
        })
        .collect();
    let heads = features
        .iter()
        .map(|&chw| (features_in(chw), manifest.output.clone()))
        .collect();
    (segments, heads)
}

/// Reads one part's file and checks its sha256 on the bytes loaded, then
/// [`check_and_load`].
fn read_part(
    source: &Source,
    options: &Options,
    part: &PartEntry,
    input: &InputSpec,
    output: &OutputSpec,
) -> Result<Part> {
    // Manifest validation gives every part of a configuration with a file its file and sha256.
    let (Some(file), Some(sha256)) = (&part.file, &part.sha256) else {
        return Err(RuntimeError::invalid_argument(
            "exits",
            "a segment or head of a configuration with a file has no file or sha256",
        ));
    };
    let path = source.locate(file)?;
    let bytes = source.read(file, &path, "an ONNX graph", MAX_GRAPH_BYTES)?;
    let actual = sha256_hex(&bytes);
    if actual != sha256.to_ascii_lowercase() {
        return Err(RuntimeError::ShaMismatch {
            file: path,
            expected: sha256.clone(),
            actual,
        });
    }
    check_and_load(options, path, &bytes, Some(part), input, output)
}

/// Decodes one part, inspects it against the shapes it must have and (if the manifest lists
/// it) its claimed MACs and params, and loads it. `path` names it in errors.
fn check_and_load(
    options: &Options,
    path: PathBuf,
    bytes: &[u8],
    claims: Option<&PartEntry>,
    input: &InputSpec,
    output: &OutputSpec,
) -> Result<Part> {
    let proto = graph::decode(bytes).map_err(|e| RuntimeError::GraphLoad {
        file: path.clone(),
        backend: options.backend.name().into(),
        source: e.into(),
    })?;
    let refused = |reason: String| RuntimeError::GraphRefused {
        file: path.clone(),
        reason,
    };
    let facts = graph::inspect(
        &proto,
        &graph::Expected {
            input,
            output,
            shared: false,
        },
    )
    .map_err(refused)?;
    if facts.int8 {
        return Err(refused("a segment or head computes in int8".into()));
    }
    if let Some(part) = claims.filter(|p| facts.macs != p.macs || facts.params != p.params) {
        return Err(refused(format!(
            "the manifest says {} MACs and {} params (float32), the graph computes {} MACs \
             with {} params",
            part.macs, part.params, facts.macs, facts.params
        )));
    }
    let engine = Engine::load(
        options.backend,
        &GraphSpec {
            file: &path,
            bytes,
            proto: &proto,
            batch: facts.batch,
            input,
            output,
            shared: false,
            threads: options.threads,
        },
    )?;
    Ok(Part {
        engine,
        largest: facts.largest,
        file: path,
    })
}

#[cfg(test)]
mod tests {
    use super::Carry;
    use crate::{Backend, Batch, OatsModel, Options};

    /// The committed exit export (scripts/make-exits-fixture.sh).
    fn fixture() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/fixtures/exits-tiny")
    }

    fn backends() -> Vec<Backend> {
        let mut b = vec![Backend::Tract];
        if !cfg!(feature = "ort") {
            eprintln!("note: built without the `ort` feature: tract only");
        } else if std::env::var_os("ORT_DYLIB_PATH").is_some_and(|v| !v.is_empty()) {
            b.push(Backend::Ort);
        } else {
            oats_testkit::tool_missing("ONNX Runtime: the in-engine features ran in tract only");
        }
        b
    }

    /// Features left in the engine route every image as copying them through host memory
    /// does, to the same logits, whether samples leave (rows gathered) or not.
    #[test]
    fn features_in_the_engine_route_as_features_through_host_memory() {
        let n = 12;
        let data: Vec<f32> = (0..n * 28 * 28)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let batch = Batch::new([n, 1, 28, 28], data).unwrap_or_else(|e| panic!("{e}"));
        for backend in backends() {
            let m = OatsModel::open(
                fixture(),
                &Options {
                    backend,
                    ..Options::default()
                },
            )
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
            let id = "l1-w0.5";
            let all = m.infer_exits(id, &batch).unwrap_or_else(|e| panic!("{e}"));
            let parts: Vec<&[f32]> = all.logits.iter().map(Vec::as_slice).collect();
            let ents = oats_graph::routing::entropies(&parts, all.classes);
            // Between two neighbouring entropies of exit 0 (no image on the threshold), and
            // above all of exit 1: images leave at both side exits.
            let mut e0 = ents[0].clone();
            e0.sort_by(f64::total_cmp);
            let mid = (e0[n / 2 - 1] + e0[n / 2]) / 2.0;
            let split = [mid, ents[1].iter().copied().fold(0.0, f64::max) + 1e-3];
            for t in [split, [0.0, 0.0]] {
                let a = m
                    .infer_routed_carry(id, &batch, &t, Carry::InEngine)
                    .unwrap_or_else(|e| panic!("{e}"));
                let b = m
                    .infer_routed_carry(id, &batch, &t, Carry::ThroughHost)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(a.exits, b.exits, "{backend} {t:?}");
                assert_eq!(a.logits, b.logits, "{backend} {t:?}");
            }
            let a = m
                .infer_routed_carry(id, &batch, &split, Carry::InEngine)
                .unwrap_or_else(|e| panic!("{e}"));
            let exits = a.exits.unwrap_or_default();
            assert!(
                exits.contains(&0) && exits.contains(&1),
                "{backend}: {exits:?}"
            );
        }
    }
}
