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

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;

use crate::derive::{DerivedCache, DerivedInfo, PackageSource};
use crate::engine::{Backend, Engine, GraphSpec};
use crate::error::{Result, RuntimeError};
use crate::graph::{self, GraphFacts, MAX_GRAPH_BYTES};
use crate::input::{Batch, MAX_BATCH_ELEMENTS};
use crate::manifest::{
    sha256_hex, GraphEntry, Layout, Manifest, Precision, CONFIG_TOLERANCE, MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
};
use crate::prediction::{ConfigInfo, Prediction};
use crate::routed::{Carry, EncodedExits, ExitLogits, Exits};
use crate::selection::Selector;
use crate::source::{ExportFiles, Source};

/// How to open an export. `Options::default()` is tract, every graph file preloaded, no
/// budget for derived sessions and nothing derived at open.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The library that runs every configuration of this model (one per model; open the
    /// export twice to compare backends).
    pub backend: Backend,
    /// Intra-op threads for ONNX Runtime (`None`: its default, one per core), 1 to
    /// [`MAX_THREADS`]. tract runs each inference on the calling thread and ignores this
    /// (a value outside the range is refused whatever the backend).
    pub threads: Option<usize>,
    /// Load every graph file at open (the default), so that any later switch to one of them
    /// costs only a pointer swap. With `false` only the first configuration is loaded; others
    /// load on first use (their cost is in [`OatsModel::load_report`]) and then stay loaded.
    /// Configurations of the manifest without a file ([`GraphEntry::is_derived`]) are not
    /// derived by preloading: they are derived sessions like any other, derived on first use
    /// or listed in `preload_derived`, and kept under `cache_bytes`.
    pub preload: bool,
    /// Byte budget of the derived sessions (configurations derived from the package, see
    /// [`crate::Selector::Derived`]), least recently used evicted first; `None`: no limit.
    /// A session is accounted by its estimated resident bytes (`crate::derive` says what is
    /// counted). Graph files of the manifest are not part of it.
    pub cache_bytes: Option<u64>,
    /// (λ, width) configurations to derive from the package at open, so that selecting them
    /// later is a pointer swap. Needs an export with a package.
    pub preload_derived: Vec<(f64, f64)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: Backend::Tract,
            threads: None,
            preload: true,
            cache_bytes: None,
            preload_derived: Vec::new(),
        }
    }
}

/// Most intra-op threads accepted in [`Options::threads`]: above the core count of any
/// machine this runs on; ONNX Runtime would try to start every one of them.
pub const MAX_THREADS: usize = 1024;

/// Cost of loading one graph file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphLoadInfo {
    /// The file name as the manifest lists it.
    pub file: String,
    /// Its size.
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
    /// Resolved inside the export directory (`memory:/<name>` for an export in memory): read
    /// from there, and names the file in errors.
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
    /// The segments and heads of a configuration with side exits (schema v3).
    exits: Option<Arc<Exits>>,
}

/// An opened export, ready to infer, with one active configuration. `Send + Sync`: share one
/// (e.g. in an `Arc`) between threads; [`OatsModel::infer`] and [`OatsModel::select`] may be
/// called from any of them at the same time. See the crate docs for an embedding guide.
pub struct OatsModel {
    export: OpenedExport,
    active: ArcSwap<ReadyConfig>,
    /// Entropy thresholds of the side exits set by [`OatsModel::set_thresholds`], in place of
    /// each configuration's calibrated ones.
    thresholds: ArcSwapOption<Vec<f64>>,
}

/// The opened export: manifest, options, graph files and the ready form of each
/// configuration. Everything here is independent of which configuration is active.
struct OpenedExport {
    /// Where the files are read from.
    source: Source,
    manifest: Manifest,
    options: Options,
    files: Vec<GraphFile>,
    /// Per manifest graph: the index of its file in `files`; `None` for a configuration
    /// derived from the package.
    file_of: Vec<Option<usize>>,
    /// Per manifest graph, built on first use.
    ready: Vec<OnceLock<Arc<ReadyConfig>>>,
    /// The package (schema v2), when the manifest lists one.
    package: Option<PackageSource>,
    /// Derived configurations, least recently used evicted first.
    derived: Mutex<DerivedCache<ReadyConfig>>,
    /// Held while deriving, so two threads never derive (and load) the same configuration
    /// twice and the budget is never overshot by a race.
    deriving: Mutex<()>,
}

impl OatsModel {
    /// Opens `<dir>/manifest.yaml`, checks every graph path (also through symlinks) and, with
    /// `preload`, verifies each file's sha256 and loads it. The first graph of the manifest is
    /// active initially.
    pub fn open(dir: impl AsRef<Path>, options: &Options) -> Result<OatsModel> {
        let dir = dir.as_ref().to_path_buf();
        // Checked first: a bad option must not wait for the files.
        check_options(options)?;
        let manifest = Manifest::load(dir.join(MANIFEST_FILE))?;
        OatsModel::open_source(Source::Dir(dir), manifest, options)
    }

    /// Opens an export held in memory (APK assets, an iOS bundle, a download): `files` holds
    /// `manifest.yaml` and the files it lists, by the names it lists them under. The checks
    /// are those of [`OatsModel::open`]: the manifest is validated, every name must be a plain
    /// relative path, every file is bounded and its sha256 checked on the bytes loaded. Errors
    /// name the files `memory:/<name>`.
    pub fn open_from_memory(files: ExportFiles, options: &Options) -> Result<OatsModel> {
        check_options(options)?;
        let source = Source::Memory(Arc::new(files));
        let located = source.locate(MANIFEST_FILE)?;
        let bytes = source.read(MANIFEST_FILE, &located, "a manifest", MAX_MANIFEST_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|e| RuntimeError::ManifestInvalid {
            path: located.clone(),
            reason: format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?;
        let manifest = Manifest::from_yaml_str(&text, &located)?;
        OatsModel::open_source(source, manifest, options)
    }

    fn open_source(source: Source, manifest: Manifest, options: &Options) -> Result<OatsModel> {
        let mut files: Vec<GraphFile> = Vec::new();
        let mut file_of = Vec::with_capacity(manifest.graphs.len());
        for g in &manifest.graphs {
            // Validation guarantees a sha256 beside every file.
            let (Some(name), Some(sha256)) = (&g.file, &g.sha256) else {
                file_of.push(None);
                continue;
            };
            let i = match files.iter().position(|f| &f.file == name) {
                Some(i) => i,
                None => {
                    files.push(GraphFile {
                        file: name.clone(),
                        path: source.locate(name)?,
                        sha256: sha256.to_ascii_lowercase(),
                        engine: OnceLock::new(),
                        largest: OnceLock::new(),
                        info: OnceLock::new(),
                        loading: Mutex::new(()),
                    });
                    files.len() - 1
                }
            };
            file_of.push(Some(i));
        }
        let ready = manifest.graphs.iter().map(|_| OnceLock::new()).collect();
        let package = match &manifest.package {
            Some(p) => Some(PackageSource::new(p.clone(), source.locate(&p.file)?)),
            None => None,
        };
        let export = OpenedExport {
            source,
            manifest,
            options: options.clone(),
            files,
            file_of,
            ready,
            package,
            derived: Mutex::new(DerivedCache::new(options.cache_bytes)),
            deriving: Mutex::new(()),
        };
        if options.preload {
            for i in 0..export.files.len() {
                export.engine(i)?;
            }
            // The segments and heads of configurations with side exits, too.
            for (i, g) in export.manifest.graphs.iter().enumerate() {
                if g.exits.is_some() {
                    export.prepare(i)?;
                }
            }
        }
        for &(lambda, width) in &options.preload_derived {
            export.derive(lambda, width)?;
        }
        let first = export.prepare(0)?;
        Ok(OatsModel {
            export,
            active: ArcSwap::new(first),
            thresholds: ArcSwapOption::empty(),
        })
    }

    /// The validated manifest: input shape and value range, class names, and every
    /// configuration with its calibrated metrics.
    pub fn manifest(&self) -> &Manifest {
        &self.export.manifest
    }

    /// The export directory; `None` for an export opened from memory.
    pub fn dir(&self) -> Option<&Path> {
        self.export.source.dir()
    }

    /// Reads the file `name` of the export (a name the manifest lists), bounded by `limit`:
    /// from the directory, confined to it, or from memory. Returns where it was found (the
    /// path that names it in errors) and its bytes.
    pub(crate) fn read_file(
        &self,
        name: &str,
        what: &'static str,
        limit: u64,
    ) -> Result<(PathBuf, Vec<u8>)> {
        let located = self.export.source.locate(name)?;
        let bytes = self.export.source.read(name, &located, what, limit)?;
        Ok((located, bytes))
    }

    /// The backend every configuration of this model runs on ([`Options::backend`]).
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
    ///
    /// With a package (schema v2), [`Selector::Explicit`] accepts any λ in the trained range
    /// at any trained width: a (λ, width) without a graph file is derived from the package
    /// (or taken from the cache of derived sessions), and [`Selector::Derived`] derives even
    /// where a graph file exists. Selecting a cached configuration is a pointer swap.
    pub fn select(&self, selector: &Selector) -> Result<Arc<ConfigInfo>> {
        let next = self.export.ready_for(selector)?;
        let info = next.info.clone();
        self.active.store(next);
        Ok(info)
    }

    /// Runs the configuration chosen by `selector` (deriving it if needed, as
    /// [`OatsModel::select`] does), leaving the active one untouched.
    pub fn infer_selected(&self, selector: &Selector, input: &Batch) -> Result<Prediction> {
        self.validate(input)?;
        let config = self.export.ready_for(selector)?;
        self.run(&config, input)
    }

    /// The configuration `selector` names, made ready to run (loaded, or derived as
    /// [`OatsModel::select`] would) without making it active.
    pub fn prepare(&self, selector: &Selector) -> Result<Arc<ConfigInfo>> {
        Ok(self.export.ready_for(selector)?.info.clone())
    }

    /// Whether the export has a package, so that any λ in the trained range can be derived.
    pub fn can_derive(&self) -> bool {
        self.export.package.is_some()
    }

    /// The derived sessions now cached, least recently used first.
    pub fn derived_report(&self) -> Vec<DerivedInfo> {
        self.export
            .derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .infos()
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
        self.export.file(index)?.info.get().cloned()
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
        self.run_routed(active, input, true)
    }

    /// Runs the whole network of the configuration `selector` names as one graph, ignoring
    /// its side exits (if any) and any thresholds: what benchmarks on synthetic images time,
    /// since routing depends on the images (calibration measures routed inference on real
    /// ones). For a configuration without exits this is [`OatsModel::infer_selected`].
    pub fn infer_whole(&self, selector: &Selector, input: &Batch) -> Result<Prediction> {
        self.validate(input)?;
        let config = self.export.ready_for(selector)?;
        self.run_routed(&config, input, false)
    }

    fn run_routed(&self, active: &ReadyConfig, input: &Batch, route: bool) -> Result<Prediction> {
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
        let classes = self.export.manifest.output.classes;
        if let Some(exits) = active.exits.as_ref().filter(|_| route) {
            let set = self.thresholds.load_full();
            let thresholds = set.as_deref().or(exits.calibrated.as_ref());
            if let Some(t) = thresholds {
                let (logits, exit) = exits.run_routed(input.data(), n, classes, t)?;
                return Ok(Prediction {
                    logits,
                    batch: n,
                    classes,
                    config: active.info.clone(),
                    exits: Some(exit),
                });
            }
        }
        let logits = active.engine.run(input.data(), n, active.lambda_index)?;
        Ok(Prediction {
            logits,
            batch: n,
            classes,
            config: active.info.clone(),
            exits: None,
        })
    }

    /// Sets the entropy thresholds of the side exits (one per side exit, finite and ≥ 0; 0
    /// never leaves early) for every configuration with exits, in place of their calibrated
    /// ones; `None` goes back to the calibrated thresholds. Like selecting a configuration,
    /// this is a pointer swap: inferences in flight finish with the thresholds they started
    /// with. Refused for a model without exits.
    pub fn set_thresholds(&self, thresholds: Option<Vec<f64>>) -> Result<()> {
        if let Some(t) = &thresholds {
            let exits = self.any_exits()?;
            exits.check_thresholds(t)?;
        }
        self.thresholds.store(thresholds.map(Arc::new));
        Ok(())
    }

    /// The thresholds the active configuration routes with: those set by
    /// [`OatsModel::set_thresholds`], else its calibrated ones; `None` when it has no exits
    /// or nothing to route with (then the whole network runs).
    pub fn thresholds(&self) -> Option<Vec<f64>> {
        let active = self.active.load();
        let exits = active.exits.as_ref()?;
        match self.thresholds.load_full() {
            Some(t) => Some(t.as_ref().clone()),
            None => exits.calibrated.clone(),
        }
    }

    /// MACs of one image answered at each exit of the active configuration (earlier heads
    /// included), the final classifier last; `None` without exits. With a measured exit mix
    /// this is the expected compute of a policy.
    pub fn exit_macs(&self) -> Option<Vec<u64>> {
        self.active
            .load()
            .exits
            .as_ref()
            .map(|e| e.exit_macs.clone())
    }

    /// The logits of every exit of configuration `id` (every segment and head runs on the
    /// whole batch): what export verification and threshold calibration read.
    pub fn infer_exits(&self, id: &str, input: &Batch) -> Result<ExitLogits> {
        let index = Selector::Id(id.to_string()).resolve(&self.export.manifest)?;
        self.validate(input)?;
        let config = self.export.prepare(index)?;
        let exits = config.exits.as_ref().ok_or_else(|| no_exits(id))?;
        exits.run_all(
            input.data(),
            input.batch_size(),
            self.export.manifest.output.classes,
        )
    }

    /// Routed inference of configuration `id` with these thresholds (calibration), leaving
    /// the active configuration and the thresholds set untouched.
    pub fn infer_routed_with(
        &self,
        id: &str,
        input: &Batch,
        thresholds: &[f64],
    ) -> Result<Prediction> {
        self.infer_routed_carry(id, input, thresholds, Carry::InEngine)
    }

    /// [`OatsModel::infer_routed_with`], carrying the features between parts as `carry`
    /// says (`bench::chaining` compares the two).
    pub(crate) fn infer_routed_carry(
        &self,
        id: &str,
        input: &Batch,
        thresholds: &[f64],
        carry: Carry,
    ) -> Result<Prediction> {
        let index = Selector::Id(id.to_string()).resolve(&self.export.manifest)?;
        self.validate(input)?;
        let config = self.export.prepare(index)?;
        let exits = config.exits.as_ref().ok_or_else(|| no_exits(id))?;
        let n = input.batch_size();
        let classes = self.export.manifest.output.classes;
        let (logits, exit) = exits.route(input.data(), n, classes, thresholds, carry)?;
        Ok(Prediction {
            logits,
            batch: n,
            classes,
            config: config.info.clone(),
            exits: Some(exit),
        })
    }

    /// The exits of the active configuration, or of the first configuration that has any.
    fn any_exits(&self) -> Result<Arc<Exits>> {
        if let Some(e) = &self.active.load().exits {
            return Ok(e.clone());
        }
        let m = &self.export.manifest;
        let index = m
            .graphs
            .iter()
            .position(|g| g.exits.is_some())
            .ok_or_else(|| no_exits(&m.model_id))?;
        self.export
            .prepare(index)?
            .exits
            .clone()
            .ok_or_else(|| no_exits(&m.model_id))
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
        let Some(file) = self.export.file_of[index] else {
            // Derived: the same bytes the model's own session was loaded from.
            let g = &self.export.manifest.graphs[index];
            let int8 = g.is_int8().then_some(index);
            let d = self.export.lower(g.lambda, g.width, int8, |_, _| Ok(()))?;
            return crate::engine::ort::BareSession::load(&self.export.lowered_spec(&d), cuda);
        };
        let checked = self.export.read_checked(file)?;
        crate::engine::ort::BareSession::load(
            &self.export.spec(&self.export.files[file], &checked),
            cuda,
        )
    }
}

impl OpenedExport {
    /// The file behind manifest graph `graph`; `None` when it is derived from the package.
    fn file(&self, graph: usize) -> Option<&GraphFile> {
        self.file_of[graph].map(|i| &self.files[i])
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

    /// What a backend needs to load the lowered configuration `d`.
    fn lowered_spec<'a>(&'a self, d: &'a Lowered) -> GraphSpec<'a> {
        GraphSpec {
            file: &d.file,
            bytes: &d.checked.bytes,
            proto: &d.checked.proto,
            batch: d.checked.facts.batch,
            input: &self.manifest.input,
            output: &self.manifest.output,
            shared: false,
            threads: self.options.threads,
        }
    }

    /// The ready-to-run form of graph `index`, built once; a configuration without a file is
    /// derived from the package (and cached under the budget like any derived session).
    fn prepare(&self, index: usize) -> Result<Arc<ReadyConfig>> {
        if let Some(a) = self.ready[index].get() {
            return Ok(a.clone());
        }
        let g = &self.manifest.graphs[index];
        let Some(file) = self.file_of[index] else {
            return self.derive_entry(g.lambda, g.width, g.is_int8().then_some(index));
        };
        let engine = self.engine(file)?;
        let exits = match &g.exits {
            Some(e) => Some(Arc::new(Exits::load(
                &self.source,
                &self.options,
                &self.manifest,
                e,
            )?)),
            None => None,
        };
        let ready = Arc::new(ReadyConfig {
            info: Arc::new(ConfigInfo {
                id: g.id.clone(),
                lambda: g.lambda,
                width: g.width,
                backend: self.options.backend,
                params: g.params,
                macs: g.macs,
                derived: false,
                metrics: Some(g.metrics.clone()),
                side_exits: g.exits.as_ref().map_or(0, |e| e.heads.len()),
            }),
            engine,
            lambda_index: g.lambda_index.map(i64::from),
            // Set by engine() before it returns; the fallback refuses every batch.
            largest: self.files[file].largest.get().copied().unwrap_or(u64::MAX),
            exits,
        });
        // A concurrent caller may have won the race; either value is equivalent.
        Ok(self.ready[index].get_or_init(|| ready).clone())
    }

    /// The ready configuration `selector` names: a manifest graph, or (with a package) a
    /// derived one.
    fn ready_for(&self, selector: &Selector) -> Result<Arc<ReadyConfig>> {
        match selector {
            Selector::Derived { lambda, width } => self.derive(*lambda, *width),
            Selector::Explicit { lambda, width } if self.package.is_some() => {
                match selector.resolve(&self.manifest) {
                    Ok(i) => self.prepare(i),
                    Err(RuntimeError::NoSuchConfig { .. }) => self.derive(*lambda, *width),
                    Err(e) => Err(e),
                }
            }
            _ => self.prepare(selector.resolve(&self.manifest)?),
        }
    }

    /// The derived session of (λ, width): from the cache, else lowered from the package
    /// ([`OpenedExport::lower`]), loaded from bytes and cached. A request the package cannot
    /// serve (λ NaN or outside the trained range, a width not trained, no package) is refused
    /// before anything is read or loaded.
    fn derive(&self, lambda: f64, width: f64) -> Result<Arc<ReadyConfig>> {
        self.derive_entry(lambda, width, None)
    }

    /// [`Self::derive`] of the float configuration, or (`int8`: the index of an int8 entry of
    /// the manifest without a file) of that int8 configuration, quantized with its ranges.
    fn derive_entry(
        &self,
        lambda: f64,
        width: f64,
        int8: Option<usize>,
    ) -> Result<Arc<ReadyConfig>> {
        self.package_source(lambda, width)?;
        let precision = if int8.is_some() {
            Precision::Int8
        } else {
            Precision::Float32
        };
        let cached = |cache: &Mutex<DerivedCache<ReadyConfig>>| {
            cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(lambda, width, precision)
        };
        if let Some(r) = cached(&self.derived) {
            return Ok(r);
        }
        let _guard = self.deriving.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = cached(&self.derived) {
            return Ok(r);
        }
        // Reads the package on first use; what is timed is this configuration's own cost.
        self.package_source(lambda, width)?
            .get(&self.source, &self.manifest)?;
        let t0 = Instant::now();
        let d = self.lower(lambda, width, int8, |estimate, id| {
            let cache = self.derived.lock().unwrap_or_else(|e| e.into_inner());
            if cache.fits(estimate) {
                Ok(())
            } else {
                Err(RuntimeError::OverBudget {
                    id: id.to_string(),
                    bytes: estimate,
                    budget: cache.budget().unwrap_or(u64::MAX),
                })
            }
        })?;
        // A model with side exits: its segments and heads too, so that it routes like a
        // configuration with files (int8 configurations are plain). Encoded, then admitted
        // with the whole graph, before anything is decoded or loaded.
        let parts = match int8 {
            None => self.encode_exits(lambda, width, &d.id)?,
            Some(_) => None,
        };
        let estimate = d.checked.bytes.len() as u64 + parts.as_ref().map_or(0, |p| p.bytes());
        {
            let cache = self.derived.lock().unwrap_or_else(|e| e.into_inner());
            if !cache.fits(estimate) {
                return Err(RuntimeError::OverBudget {
                    id: d.id.clone(),
                    bytes: estimate,
                    budget: cache.budget().unwrap_or(u64::MAX),
                });
            }
        }
        let listed = self.listed(lambda, width).and_then(|g| g.exits.as_ref());
        let exits = match &parts {
            Some(p) => Some(Arc::new(Exits::derive(
                &self.options,
                &self.manifest,
                &d.file,
                p,
                listed,
            )?)),
            None => None,
        };
        drop(parts);
        let engine = Arc::new(Engine::load(self.options.backend, &self.lowered_spec(&d))?);
        let ready = Arc::new(ReadyConfig {
            info: Arc::new(ConfigInfo {
                id: d.id.clone(),
                lambda,
                width,
                backend: self.options.backend,
                params: d.params,
                macs: d.macs,
                derived: true,
                metrics: d.metrics,
                side_exits: exits.as_ref().map_or(0, |e| e.side_exits()),
            }),
            engine,
            lambda_index: None,
            largest: d.checked.facts.largest,
            exits,
        });
        let info = DerivedInfo {
            id: d.id,
            lambda,
            width,
            precision,
            bytes: estimate,
            derive_ms: t0.elapsed().as_secs_f64() * 1e3,
        };
        self.derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(info, ready.clone());
        Ok(ready)
    }

    /// The float configuration the manifest lists at (λ, width), if any.
    fn listed(&self, lambda: f64, width: f64) -> Option<&GraphEntry> {
        self.manifest.graphs.iter().find(|g| {
            !g.is_int8()
                && (g.lambda - lambda).abs() <= CONFIG_TOLERANCE
                && (g.width - width).abs() <= CONFIG_TOLERANCE
        })
    }

    /// The segments and heads of (λ, width) lowered from a package with side exits
    /// (`lower_segments`) and encoded; `None` for a package without exits. The manifest's
    /// entry at this (λ, width), if any, must agree on whether there are exits and after
    /// which blocks (`id` names it in errors).
    fn encode_exits(&self, lambda: f64, width: f64, id: &str) -> Result<Option<EncodedExits>> {
        let source = self.package_source(lambda, width)?;
        let pkg = source.get(&self.source, &self.manifest)?;
        let blocks = pkg.exit_blocks();
        let mismatch = |reason: String| RuntimeError::PackageMismatch {
            file: source.path.clone(),
            reason,
        };
        match self.listed(lambda, width).map(|g| g.exits.as_ref()) {
            Some(Some(e)) if e.after_blocks != blocks => {
                return Err(mismatch(format!(
                    "its side exits follow blocks {blocks:?}, the manifest's {id} lists them \
                     after {:?}",
                    e.after_blocks
                )))
            }
            Some(None) if !blocks.is_empty() => {
                return Err(mismatch(format!(
                    "it has side exits after blocks {blocks:?}, the manifest's {id} lists none"
                )))
            }
            _ => {}
        }
        if blocks.is_empty() {
            return Ok(None);
        }
        let lowered = pkg
            .lower_segments(&[lambda], width, oats_graph::Layout::Folded)
            .map_err(|e| RuntimeError::Package {
                file: source.path.clone(),
                source: e,
            })?;
        Ok(Some(EncodedExits::new(&lowered)))
    }

    /// The package, if (λ, width) is a configuration it can serve.
    fn package_source(&self, lambda: f64, width: f64) -> Result<&PackageSource> {
        let source = self.package.as_ref().ok_or_else(|| {
            RuntimeError::invalid_argument(
                "selector",
                format!(
                    "lambda {lambda}, width {width} cannot be derived: the manifest lists no \
                     package (an export of schema_version {} has one)",
                    crate::manifest::SCHEMA_VERSION
                ),
            )
        })?;
        check_derivable(&source.entry, lambda, width)?;
        Ok(source)
    }

    /// The folded graph of (λ, width) lowered from the package with the exporter's code
    /// (`lower_folded`, then `to_onnx`) and checked like a graph file ([`graph::inspect`],
    /// and the claims of the manifest's entry at that configuration, if any). `admit` sees the
    /// ONNX size and the id before anything is decoded, and may refuse.
    fn lower(
        &self,
        lambda: f64,
        width: f64,
        int8: Option<usize>,
        admit: impl FnOnce(u64, &str) -> Result<()>,
    ) -> Result<Lowered> {
        let source = self.package_source(lambda, width)?;
        let pkg = source.get(&self.source, &self.manifest)?;
        let m = &self.manifest;
        // A configuration of the manifest at this (λ, width) and precision lends its id and
        // its calibration.
        let listed = match int8 {
            Some(i) => m.graphs.get(i),
            None => self.listed(lambda, width),
        };
        let id = listed.map_or_else(|| oats_graph::config_id(lambda, width), |g| g.id.clone());
        let pkg_err = |source_err: oats_graph::Error| RuntimeError::Package {
            file: source.path.clone(),
            source: source_err,
        };
        let mut lowered = match listed.filter(|g| g.is_int8()) {
            // The folded graph quantized with the entry's ranges (oats_graph::quant).
            Some(g) => {
                let ranges = g
                    .quantization
                    .as_ref()
                    .map(|q| q.activation_ranges.as_slice())
                    .unwrap_or_default();
                oats_graph::quant::lower_int8(&pkg, lambda, width, ranges).map_err(pkg_err)?
            }
            None => pkg.lower_folded(lambda, width).map_err(pkg_err)?,
        };
        lowered.name = id.clone();
        let bytes = oats_graph::to_onnx(&lowered);
        admit(bytes.len() as u64, &id)?;
        // The name in errors: the package and the configuration derived from it.
        let file = source.path.with_file_name(format!(
            "{}#{id}",
            source
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let refused = |reason: String| RuntimeError::GraphRefused {
            file: file.clone(),
            reason,
        };
        let proto = graph::decode(&bytes).map_err(|e| RuntimeError::GraphLoad {
            file: file.clone(),
            backend: self.options.backend.name().into(),
            source: e.into(),
        })?;
        let facts = graph::inspect(
            &proto,
            &graph::Expected {
                input: &m.input,
                output: &m.output,
                shared: false,
            },
        )
        .map_err(refused)?;
        let mut entry =
            GraphEntry::derived(id.clone(), lambda, width, lowered.params(), lowered.macs);
        if int8.is_some() {
            entry.precision = Precision::Int8;
        }
        facts.check_entry(&entry).map_err(refused)?;
        // What the manifest claims for it (MACs and params, which policies read) must be what
        // is derived.
        if let Some(g) = listed {
            facts.check_entry(g).map_err(refused)?;
        }
        Ok(Lowered {
            id,
            file,
            params: entry.params,
            macs: entry.macs,
            metrics: listed.map(|g| g.metrics.clone()),
            checked: CheckedGraph {
                bytes,
                proto,
                facts,
            },
        })
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
        let bytes = file.read_verified(&self.source)?;
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
        for (g, _) in m
            .graphs
            .iter()
            .zip(&self.file_of)
            .filter(|&(_, &f)| f == Some(i))
        {
            facts.check_entry(g).map_err(refused)?;
        }
        Ok(CheckedGraph {
            bytes,
            proto,
            facts,
        })
    }
}

fn no_exits(what: &str) -> RuntimeError {
    RuntimeError::invalid_argument(
        "exits",
        format!("{what} has no side exits (manifest schema 3 with `exits`)"),
    )
}

/// Refuses options no export can be opened with.
fn check_options(options: &Options) -> Result<()> {
    if let Some(t) = options.threads {
        if !(1..=MAX_THREADS).contains(&t) {
            return Err(RuntimeError::invalid_argument(
                "threads",
                format!("{t} is outside 1..={MAX_THREADS} (leave it unset for the default)"),
            ));
        }
    }
    Ok(())
}

/// Refuses, before the package is read, a (λ, width) it cannot serve: λ NaN, outside [0, 1]
/// or outside the trained range, a width that was not trained.
fn check_derivable(p: &crate::manifest::PackageEntry, lambda: f64, width: f64) -> Result<()> {
    crate::selection::check_request(lambda, width)?;
    let lo = p.lambdas.iter().copied().reduce(f64::min);
    let hi = p.lambdas.iter().copied().reduce(f64::max);
    if let (Some(lo), Some(hi)) = (lo, hi) {
        if lambda < lo - CONFIG_TOLERANCE || lambda > hi + CONFIG_TOLERANCE {
            return Err(RuntimeError::invalid_argument(
                "lambda",
                format!(
                    "{lambda} is outside the trained range [{lo}, {hi}]; a derived \
                     configuration would be an extrapolation"
                ),
            ));
        }
    }
    if !p
        .widths
        .iter()
        .any(|w| (w - width).abs() <= CONFIG_TOLERANCE)
    {
        return Err(RuntimeError::invalid_argument(
            "width",
            format!("{width} is not a trained width {:?}", p.widths),
        ));
    }
    Ok(())
}

/// A configuration lowered from the package by [`OpenedExport::lower`].
struct Lowered {
    id: String,
    /// `<package>#<id>`: names it in errors.
    file: PathBuf,
    params: u64,
    macs: u64,
    /// The calibration of the manifest's entry at this (λ, width), if any.
    metrics: Option<crate::manifest::Metrics>,
    checked: CheckedGraph,
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
    fn read_verified(&self, source: &Source) -> Result<Vec<u8>> {
        let bytes = source.read(&self.file, &self.path, "an ONNX graph", MAX_GRAPH_BYTES)?;
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
