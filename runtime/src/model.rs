//! [`OatsModel`]: an export directory loaded for inference, with one active configuration
//! that can be switched at any time from any thread.
//!
//! Switching is cheap because every configuration is prepared in advance (engine loaded,
//! [`ConfigInfo`] built) and the active one is a pointer swapped atomically ([`ArcSwap`]). An
//! inference takes its own reference to the configuration it starts with, so a switch never
//! waits for running inferences and never changes what they compute.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::engine::{Backend, Engine, GraphSpec};
use crate::error::{Result, RuntimeError};
use crate::files::read_regular_file;
use crate::graph::{self, GraphFacts, MAX_GRAPH_BYTES};
use crate::input::{Batch, MAX_BATCH_ELEMENTS};
use crate::manifest::{resolve_in_dir, sha256_hex, Layout, Manifest, MANIFEST_FILE};
use crate::prediction::{ConfigInfo, Prediction};
use crate::selection::Selector;

/// How to open an export.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub backend: Backend,
    /// Intra-op threads for ONNX Runtime (`None`: its default, one per core), 1 to
    /// [`MAX_THREADS`]. tract runs each inference on the calling thread and ignores this.
    pub threads: Option<usize>,
    /// Load every graph at open (the default), so that any later switch costs only a pointer
    /// swap. With `false` only the first configuration is loaded; others load on first use
    /// (their cost is in [`OatsModel::load_report`]) and then stay loaded.
    pub preload: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: Backend::Tract,
            threads: None,
            preload: true,
        }
    }
}

/// Most intra-op threads accepted in [`Options::threads`]: above the core count of any
/// machine this runs on; ONNX Runtime would try to start every one of them.
pub const MAX_THREADS: usize = 1024;

/// Cost of loading one graph file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphLoadInfo {
    pub file: String,
    pub bytes: u64,
    /// Reading the file and checking its sha256.
    pub read_ms: f64,
    /// Parsing and optimising it in the backend.
    pub load_ms: f64,
}

/// One distinct graph file of the export and its engine once loaded. A file is loaded once
/// however many configurations use it (under `shared_weights` all λ of a width share one), so
/// engines are kept per file, not per manifest graph.
struct GraphFile {
    /// The name in the manifest.
    file: String,
    /// Resolved inside the export directory.
    path: PathBuf,
    /// Expected, lower case.
    sha256: String,
    engine: OnceLock<Arc<Engine>>,
    /// Values per image of the largest tensor the graph computes (graph::inspect), set with
    /// `engine`.
    largest: OnceLock<u64>,
    info: OnceLock<GraphLoadInfo>,
    /// Held while loading, so two threads never load the same file twice.
    loading: Mutex<()>,
}

/// One manifest graph ready to run: its engine, the value of its `lambda_index` input, and the
/// [`ConfigInfo`] every [`Prediction`] it serves carries. Built once per graph, so that making
/// it active is only a pointer swap.
struct ReadyConfig {
    info: Arc<ConfigInfo>,
    engine: Arc<Engine>,
    lambda_index: Option<i64>,
    /// Values per image of the graph's largest tensor: bounds the batch.
    largest: u64,
}

pub struct OatsModel {
    dir: PathBuf,
    export: OpenedExport,
    active: ArcSwap<ReadyConfig>,
}

/// The opened export: manifest, options, graph files and the ready form of each
/// configuration. Everything here is independent of which configuration is active.
struct OpenedExport {
    manifest: Manifest,
    options: Options,
    files: Vec<GraphFile>,
    /// Per manifest graph: the index of its file in `files`.
    file_of: Vec<usize>,
    /// Per manifest graph, built on first use.
    ready: Vec<OnceLock<Arc<ReadyConfig>>>,
}

impl OatsModel {
    /// Opens `<dir>/manifest.yaml`, checks every graph path (also through symlinks) and, with
    /// `preload`, verifies each file's sha256 and loads it. The first graph of the manifest is
    /// active initially.
    pub fn open(dir: impl AsRef<Path>, options: &Options) -> Result<OatsModel> {
        if let Some(t) = options.threads {
            if !(1..=MAX_THREADS).contains(&t) {
                return Err(RuntimeError::invalid_argument(
                    "threads",
                    format!("{t} is outside 1..={MAX_THREADS} (leave it unset for the default)"),
                ));
            }
        }
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::load(dir.join(MANIFEST_FILE))?;
        let mut files: Vec<GraphFile> = Vec::new();
        let mut file_of = Vec::with_capacity(manifest.graphs.len());
        for g in &manifest.graphs {
            let i = match files.iter().position(|f| f.file == g.file) {
                Some(i) => i,
                None => {
                    files.push(GraphFile {
                        file: g.file.clone(),
                        path: resolve_in_dir(&dir, &g.file)?,
                        sha256: g.sha256.to_ascii_lowercase(),
                        engine: OnceLock::new(),
                        largest: OnceLock::new(),
                        info: OnceLock::new(),
                        loading: Mutex::new(()),
                    });
                    files.len() - 1
                }
            };
            file_of.push(i);
        }
        let ready = manifest.graphs.iter().map(|_| OnceLock::new()).collect();
        let export = OpenedExport {
            manifest,
            options: options.clone(),
            files,
            file_of,
            ready,
        };
        if options.preload {
            for i in 0..export.files.len() {
                export.engine(i)?;
            }
        }
        let first = export.prepare(0)?;
        Ok(OatsModel {
            dir,
            export,
            active: ArcSwap::new(first),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.export.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn backend(&self) -> Backend {
        self.export.options.backend
    }

    /// The configuration new inferences will use.
    pub fn active(&self) -> Arc<ConfigInfo> {
        self.active.load().info.clone()
    }

    /// Makes the configuration chosen by `selector` active. Inferences already running finish
    /// on the configuration they started with. Loads the graph first if it is not loaded yet
    /// (only possible with `preload: false`).
    pub fn select(&self, selector: &Selector) -> Result<Arc<ConfigInfo>> {
        let index = selector.resolve(&self.export.manifest)?;
        let next = self.export.prepare(index)?;
        let info = next.info.clone();
        self.active.store(next);
        Ok(info)
    }

    /// Runs the active configuration.
    pub fn infer(&self, input: &Batch) -> Result<Prediction> {
        self.validate(input)?;
        let active = self.active.load_full();
        self.run(&active, input)
    }

    /// Runs the configuration with this manifest id, leaving the active one untouched
    /// (calibration and benchmarks).
    pub fn infer_with(&self, id: &str, input: &Batch) -> Result<Prediction> {
        let index = Selector::Id(id.to_string()).resolve(&self.export.manifest)?;
        self.validate(input)?;
        let active = self.export.prepare(index)?;
        self.run(&active, input)
    }

    /// Load cost of each graph file loaded so far, in manifest order.
    pub fn load_report(&self) -> Vec<GraphLoadInfo> {
        self.export
            .files
            .iter()
            .filter_map(|f| f.info.get().cloned())
            .collect()
    }

    /// Load cost of the file behind the graph `id`, if it is loaded.
    pub fn load_info(&self, id: &str) -> Option<GraphLoadInfo> {
        let index = self.export.manifest.graph_index(id)?;
        self.export.file(index).info.get().cloned()
    }

    fn validate(&self, input: &Batch) -> Result<()> {
        let [n, c, h, w] = input.shape();
        if n == 0 {
            return Err(RuntimeError::EmptyBatch);
        }
        let [ec, eh, ew] = self.export.manifest.input.shape;
        if [c, h, w] != [ec, eh, ew] {
            return Err(RuntimeError::Shape {
                expected: vec![n, ec, eh, ew],
                got: vec![n, c, h, w],
            });
        }
        if let Some(index) = input.data().iter().position(|v| !v.is_finite()) {
            return Err(RuntimeError::NonFinite { index });
        }
        Ok(())
    }

    fn run(&self, active: &ReadyConfig, input: &Batch) -> Result<Prediction> {
        let n = input.batch_size();
        // What the engine will allocate grows with the batch times the largest tensor.
        let limit = MAX_BATCH_ELEMENTS as u64;
        if (n as u64)
            .checked_mul(active.largest)
            .is_none_or(|v| v > limit)
        {
            return Err(RuntimeError::invalid_argument(
                "batch",
                format!(
                    "{n} images: graph {} computes a tensor of {} values per image, so this \
                     batch would need more than {limit} values; use batches of at most {}",
                    active.info.id,
                    active.largest,
                    limit / active.largest.max(1)
                ),
            ));
        }
        let logits = active.engine.run(input.data(), n, active.lambda_index)?;
        Ok(Prediction {
            logits,
            batch: n,
            classes: self.export.manifest.output.classes,
            config: active.info.clone(),
        })
    }

    /// A bare ONNX Runtime session on the (verified) file behind graph `id`, configured as
    /// this model's own engine is, for [`crate::bench::ort_overhead`]. The model must have
    /// been opened with an ort backend.
    #[cfg(feature = "ort")]
    pub(crate) fn bare_ort_session(&self, id: &str) -> Result<crate::engine::ort::BareSession> {
        let cuda = match self.backend() {
            Backend::Ort => false,
            Backend::OrtCuda => true,
            Backend::Tract => {
                return Err(RuntimeError::unavailable(
                    "ort",
                    "a bare ONNX Runtime session needs a model opened with an ort backend",
                ))
            }
        };
        let index = Selector::Id(id.to_string()).resolve(&self.export.manifest)?;
        let file = self.export.file_of[index];
        let checked = self.export.read_checked(file)?;
        crate::engine::ort::BareSession::load(
            &self.export.spec(&self.export.files[file], &checked),
            cuda,
        )
    }
}

impl OpenedExport {
    /// The file behind manifest graph `graph`.
    fn file(&self, graph: usize) -> &GraphFile {
        &self.files[self.file_of[graph]]
    }

    /// What a backend needs to load `file`, whose verified and inspected content is
    /// `checked`.
    fn spec<'a>(&'a self, file: &'a GraphFile, checked: &'a CheckedGraph) -> GraphSpec<'a> {
        GraphSpec {
            file: &file.path,
            bytes: &checked.bytes,
            proto: &checked.proto,
            batch: checked.facts.batch,
            input: &self.manifest.input,
            output: &self.manifest.output,
            shared: self.manifest.layout == Layout::SharedWeights,
            threads: self.options.threads,
        }
    }

    /// The ready-to-run form of graph `index`, built once.
    fn prepare(&self, index: usize) -> Result<Arc<ReadyConfig>> {
        if let Some(a) = self.ready[index].get() {
            return Ok(a.clone());
        }
        let g = &self.manifest.graphs[index];
        let file = self.file_of[index];
        let engine = self.engine(file)?;
        let ready = Arc::new(ReadyConfig {
            info: Arc::new(ConfigInfo {
                id: g.id.clone(),
                lambda: g.lambda,
                width: g.width,
                backend: self.options.backend,
                params: g.params,
                macs: g.macs,
            }),
            engine,
            lambda_index: g.lambda_index.map(i64::from),
            // Set by engine() before it returns; the fallback refuses every batch.
            largest: self.files[file].largest.get().copied().unwrap_or(u64::MAX),
        });
        // A concurrent caller may have won the race; either value is equivalent.
        Ok(self.ready[index].get_or_init(|| ready).clone())
    }

    /// The engine of file `i`, loading (and verifying) the file on first use.
    fn engine(&self, i: usize) -> Result<Arc<Engine>> {
        let file = &self.files[i];
        if let Some(e) = file.engine.get() {
            return Ok(e.clone());
        }
        let _guard = file.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = file.engine.get() {
            return Ok(e.clone());
        }
        let t0 = Instant::now();
        let checked = self.read_checked(i)?;
        let read_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let engine = Arc::new(Engine::load(
            self.options.backend,
            &self.spec(file, &checked),
        )?);
        let load_ms = t1.elapsed().as_secs_f64() * 1e3;
        let _ = file.largest.set(checked.facts.largest);
        // `set` fails only if `info` is already set; `loading` is held and `engine` was empty,
        // so this is the first load of the file and the result can be ignored.
        let _ = file.info.set(GraphLoadInfo {
            file: file.file.clone(),
            bytes: checked.bytes.len() as u64,
            read_ms,
            load_ms,
        });
        Ok(file.engine.get_or_init(|| engine).clone())
    }

    /// Reads file `i`, checks its sha256, decodes it and checks it against the manifest
    /// ([`graph::inspect`], then the claims of every manifest graph that uses the file).
    /// Backend-independent, so both backends accept and refuse the same files.
    fn read_checked(&self, i: usize) -> Result<CheckedGraph> {
        let file = &self.files[i];
        let bytes = file.read_verified()?;
        let proto = graph::decode(&bytes).map_err(|e| RuntimeError::GraphLoad {
            file: file.path.clone(),
            backend: self.options.backend.name().into(),
            source: e.into(),
        })?;
        let refused = |reason: String| RuntimeError::GraphRefused {
            file: file.path.clone(),
            reason,
        };
        let m = &self.manifest;
        let facts = graph::inspect(
            &proto,
            &graph::Expected {
                input: &m.input,
                output: &m.output,
                shared: m.layout == Layout::SharedWeights,
            },
        )
        .map_err(refused)?;
        for (g, _) in m.graphs.iter().zip(&self.file_of).filter(|&(_, &f)| f == i) {
            facts.check_entry(g).map_err(refused)?;
        }
        Ok(CheckedGraph {
            bytes,
            proto,
            facts,
        })
    }
}

/// A graph file's content after [`OpenedExport::read_checked`].
struct CheckedGraph {
    bytes: Vec<u8>,
    proto: tract_onnx::pb::ModelProto,
    facts: GraphFacts,
}

impl GraphFile {
    /// Reads the file (a regular file of at most [`MAX_GRAPH_BYTES`]) and checks it against
    /// the manifest's sha256. The bytes checked are the bytes loaded: there is no window for
    /// the file to change in between.
    fn read_verified(&self) -> Result<Vec<u8>> {
        let bytes = read_regular_file(&self.path, "an ONNX graph", MAX_GRAPH_BYTES)?;
        let actual = sha256_hex(&bytes);
        if actual != self.sha256 {
            return Err(RuntimeError::ShaMismatch {
                file: self.path.clone(),
                expected: self.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}
