//! Inference runtime for oats models: one adversarially robust classifier trained once for
//! many trade-offs, exported as one ONNX graph per (λ, width) configuration.
//!
//! λ ∈ [0, 1] weighs robustness against clean accuracy (higher λ: more robust, usually less
//! accurate on clean inputs); width ∈ {0.5, 0.75, 1.0} trades accuracy for speed. An export
//! directory holds `manifest.yaml` ([`Manifest`]) and the graphs. This crate loads it, checks
//! every graph against the sha256 in the manifest, picks a configuration and runs it with
//! [tract](https://github.com/sonos/tract) (default, pure Rust) or ONNX Runtime (cargo
//! feature `ort`, library loaded at run time from `ORT_DYLIB_PATH`). It never links libtorch.
//!
//! All graphs are loaded up front by default, so switching configuration at run time (say,
//! to a more robust one when the device is under attack, or a narrower one when the battery
//! is low) is an atomic pointer swap: it does not wait for inferences in flight, and every
//! [`Prediction`] says which configuration produced it. [`OatsModel`] is `Send + Sync`; share
//! it with an `Arc`.
//!
//! ```no_run
//! use oats_runtime::{Batch, OatsModel, Options, Policy, Selector};
//!
//! # fn main() -> Result<(), oats_runtime::RuntimeError> {
//! let model = OatsModel::open("export/", &Options::default())?;
//!
//! // An explicit configuration (with a package, manifest schema v2, any λ in the trained
//! // range: one without a graph file is derived on the spot and cached)...
//! model.select(&Selector::Explicit { lambda: 0.15, width: 1.0 })?;
//! // ...or the most robust one that meets a latency budget measured by `oats-bench`.
//! model.select(&Selector::Policy(Policy {
//!     max_latency_ms: Some(2.0),
//!     min_sa: Some(0.8),
//!     ..Policy::default()
//! }))?;
//!
//! let batch = Batch::from_images(&["cat.png"], &model.manifest().input)?;
//! let prediction = model.infer(&batch)?;
//! for top in &prediction.top_k(3)[0] {
//!     println!("{:>5.1}% {}", top.prob * 100.0, model.manifest().class_name(top.class));
//! }
//! println!("served by {}", prediction.config.id);
//! # Ok(())
//! # }
//! ```
//!
//! The rest of this page is a guide for embedding the runtime in an application.
//!
//! # Opening an export
//!
//! [`OatsModel::open`] takes the export directory as `oats-export` wrote it. It reads and
//! validates `manifest.yaml`, checks that every graph file and the package it lists resolve
//! inside the directory (also through symlinks) and, with [`Options::preload`] (the
//! default), reads every graph file, checks its sha256 on the bytes it then loads, checks the
//! graph against the manifest and loads it in the backend. The first configuration of the
//! manifest is active when `open` returns, so a model that opened can infer at once.
//!
//! Where the files are not in a directory (APK assets, an iOS bundle, a download kept in
//! memory), hand them over as an [`ExportFiles`], by the names the manifest lists them under,
//! to [`OatsModel::open_from_memory`]. The checks are the same; errors name the files
//! `memory:/<name>`, and a file the manifest lists but the set lacks is
//! [`RuntimeError::Read`]. Files the manifest does not list are never read.
//!
//! ```no_run
//! use oats_runtime::{ExportFiles, OatsModel, Options};
//!
//! # fn main() -> Result<(), oats_runtime::RuntimeError> {
//! // (name, bytes) of every file of the export directory, as the app bundles them.
//! let assets: Vec<(String, Vec<u8>)> = Vec::new();
//! let mut files = ExportFiles::new();
//! for (name, bytes) in assets {
//!     files.insert(name, bytes);
//! }
//! let model = OatsModel::open_from_memory(files, &Options::default())?;
//! # Ok(())
//! # }
//! ```
//!
//! The manifest is not signed: whoever can write the export can write a matching sha256 for
//! any graph. An app that loads exports from elsewhere should authenticate `manifest.yaml`
//! itself (a signature over its bytes, or a pinned sha256) before opening it.
//!
//! # Input
//!
//! A [`Batch`] is an `[n, C, H, W]` f32 tensor, row-major. [`Batch::new`] takes a raw buffer
//! (camera frames, a tensor from another library): C, H and W must be the manifest's
//! [`InputSpec::shape`], the values on the scale of [`InputSpec::value_range`], the channels
//! in the order [`Batch::from_images`] produces (RGB for three channels, luma for one). The
//! runtime checks the shape and that every value is finite, not the range.
//!
//! ```no_run
//! # use oats_runtime::{Batch, OatsModel, Options};
//! # fn main() -> Result<(), oats_runtime::RuntimeError> {
//! # let model = OatsModel::open("export/", &Options::default())?;
//! let [c, h, w] = model.manifest().input.shape;
//! let pixels = vec![0.5_f32; 2 * c * h * w]; // two images, one C×H×W block each
//! let prediction = model.infer(&Batch::new([2, c, h, w], pixels)?)?;
//! let second_image_logits = prediction.row(1);
//! # Ok(())
//! # }
//! ```
//!
//! With the default cargo feature `image`, [`Batch::from_images`] decodes image files (and
//! [`input::decode_image`] encoded bytes already in memory), centre-crops them to the model's
//! aspect ratio, resizes them to H×W and scales them to the value range; [`input`] describes
//! the preprocessing and its size limits.
//!
//! A [`Prediction`] holds the logits (`[n, classes]`, all finite) and
//! [`Prediction::config`], the configuration that actually ran; [`Prediction::top_k`] ranks
//! the classes of each image with softmax probabilities, and [`Manifest::class_name`] names
//! them.
//!
//! # Choosing a configuration
//!
//! [`OatsModel::select`] makes a configuration active for every later [`OatsModel::infer`];
//! [`OatsModel::infer_selected`] runs one without changing the active one, and
//! [`OatsModel::prepare`] loads (or derives) one ahead of time. A [`Selector`] names it:
//!
//! * [`Selector::Explicit`]: exactly this (λ, width): one the manifest lists or, with a
//!   package, any λ in the trained range at a trained width (below).
//! * [`Selector::NearestLambda`]: the manifest's configuration at this width with the
//!   closest λ (ties: the larger λ). A λ outside the range exported at that width is refused,
//!   not clamped.
//! * [`Selector::Id`]: by manifest id, e.g. `l0.5-w1`.
//! * [`Selector::Policy`]: the best configuration under a [`Policy`] over the metrics the
//!   manifest records: minimum SA and RA (written by `oats-calibrate`), maximum MACs, maximum
//!   p50 latency (written by `oats-bench --write-manifest`), and an [`Objective`]. Latencies
//!   are read at [`Policy::latency_key`], `tract/b1` by default: set it
//!   ([`manifest::latency_key`]) to the backend and batch size the app runs. A policy that
//!   needs a metric the manifest lacks is an error saying which tool records it, never a
//!   blind pick.
//! * [`Selector::Derived`]: this (λ, width) derived from the package, even where a graph
//!   file exists.
//!
//! Any λ in the trained range: an export with a package (manifest schema v2, which
//! `oats-export` writes; [`OatsModel::can_derive`] says whether there is one) can serve every
//! λ within the range of `training.lambdas` at every trained width, not only the exported
//! ones. [`Selector::Explicit`] for a (λ, width) without a graph file derives it from the
//! package on the calling thread, with the exporter's own code; the result is checked like a
//! graph file and kept in a cache of derived sessions, so selecting it again is a lookup and
//! a pointer swap. The package is read and its sha256 checked on the first derivation. Its
//! [`ConfigInfo`] has `derived: true` and the metrics of the manifest entry at that (λ,
//! width), if there is one. Manifest entries without a file ([`GraphEntry::is_derived`],
//! written by `oats-export --package-only` and `oats-calibrate --lambdas`) are configurations
//! like any other for every selector, policies included, and are derived the same way when
//! first used. Policies choose among the manifest's entries only: to let a policy consider a
//! λ between the exported ones, calibrate it into the manifest.
//!
//! Selecting a loaded or cached configuration is a pointer swap. Selecting one that must be
//! loaded (with `preload: false`) or derived first does that work on the thread that called
//! `select`; inferences running meanwhile are not held up.
//!
//! ```no_run
//! use oats_runtime::manifest::latency_key;
//! use oats_runtime::{Objective, OatsModel, Options, Policy, Selector};
//!
//! # fn main() -> Result<(), oats_runtime::RuntimeError> {
//! # let model = OatsModel::open("export/", &Options::default())?;
//! model.select(&Selector::NearestLambda { lambda: 0.3, width: 0.5 })?;
//! model.select(&Selector::Id("l1-w0.5".into()))?;
//! let chosen = model.select(&Selector::Policy(Policy {
//!     min_ra: Some(0.4),
//!     objective: Objective::MaxSa,
//!     latency_key: latency_key("tract", 1),
//!     ..Policy::default()
//! }))?;
//! println!("now serving {} (λ {}, width {})", chosen.id, chosen.lambda, chosen.width);
//! # Ok(())
//! # }
//! ```
//!
//! # Options
//!
//! [`Options`] is fixed when the export is opened:
//!
//! * [`Options::backend`]: [`Backend::Tract`] (default), [`Backend::Ort`] or
//!   [`Backend::OrtCuda`], for every configuration of the model.
//! * [`Options::threads`]: ONNX Runtime's intra-op threads per inference (`None`: its
//!   default); see below.
//! * [`Options::preload`] (default `true`): load every graph file at open, so that every
//!   switch between them is a pointer swap. With `false` only the first configuration is
//!   loaded at open and the others on first use ([`OatsModel::load_report`] shows what was
//!   loaded and what it cost). Entries without a file are not preloaded by this.
//! * [`Options::cache_bytes`] (default `None`, no limit): the memory budget of derived
//!   sessions, each accounted by the size of its derived ONNX graph (about its folded f32
//!   weights; activations are not counted). The least recently used are evicted first; one
//!   larger than the whole budget is [`RuntimeError::OverBudget`]. Eviction never disturbs
//!   the active configuration or an inference in flight: they hold their own reference, and
//!   the memory is freed when they let go. Selecting an evicted configuration again derives
//!   it again. Graph files are not under this budget. [`OatsModel::derived_report`] lists
//!   what is cached.
//! * [`Options::preload_derived`]: (λ, width) pairs to derive at open (the export needs a
//!   package), so that switching to them is a pointer swap from the start.
//!
//! # Threads
//!
//! tract runs one inference per call, on the thread that calls [`OatsModel::infer`], and
//! ignores [`Options::threads`]. To use several cores with tract, call `infer` from several
//! threads: the model is `Send + Sync`, all threads share one loaded copy of each graph, and
//! [`OatsModel::select`] never blocks inferences (each finishes on the configuration it began
//! with). ONNX Runtime uses [`Options::threads`] for its intra-op threads within each
//! inference; calls from several threads on the same graph take turns, since each graph has
//! one ONNX Runtime session and it runs one inference at a time (under `shared_weights` the
//! λ of a width share one graph file, hence one session).
//!
//! ```no_run
//! use oats_runtime::{Batch, OatsModel, Options, RuntimeError, Selector};
//!
//! # fn main() -> Result<(), RuntimeError> {
//! let model = OatsModel::open("export/", &Options::default())?;
//! let batches: Vec<Batch> = Vec::new();
//! let model = &model;
//! std::thread::scope(|s| -> Result<(), RuntimeError> {
//!     let running: Vec<_> = batches.iter().map(|b| s.spawn(move || model.infer(b))).collect();
//!     // Does not wait for the inferences above, nor change what they compute.
//!     model.select(&Selector::NearestLambda { lambda: 1.0, width: 0.5 })?;
//!     for handle in running {
//!         let prediction = handle.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
//!         println!("{} images on {}", prediction.batch, prediction.config.id);
//!     }
//!     Ok(())
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! # ONNX Runtime
//!
//! Built with the cargo feature `ort`, the runtime can run graphs with ONNX Runtime
//! ([`Backend::Ort`], [`Backend::OrtCuda`]). Nothing is linked at build time: the shared
//! library (`libonnxruntime.so`, 1.31 or newer) is loaded when the first ort model is opened,
//! from the path in the environment variable `ORT_DYLIB_PATH`, or from the path given to
//! `oats_runtime::init_ort` called before. Once loaded, the library stays for the life of the
//! process; `init_ort` with another path is then refused. A library that is missing or cannot
//! be loaded is [`RuntimeError::BackendUnavailable`], as is an ort backend in a build without
//! the feature.
//! `ORT_DYLIB_PATH` names native code loaded into the process: do not let untrusted parties
//! set it.
//!
//! [`Backend::OrtCuda`] registers the CUDA execution provider and fails with
//! [`RuntimeError::CudaUnavailable`] if it cannot; it never falls back to the CPU silently.
//! Use [`Backend::Ort`] for the CPU.
//!
//! # Cargo features
//!
//! * `image` (default): image files as input ([`Batch::from_images`], [`input::load_image`],
//!   [`input::decode_image`]). `default-features = false` drops the `image` crate, for apps
//!   that hand over raw buffers.
//! * `ort`: the ONNX Runtime backends, as above.
//! * `cli`: the command-line tools `oats-run` (classify images) and `oats-bench` (latency,
//!   switch cost, reference check), and clap's `ValueEnum` on [`Backend`] and [`Objective`].
//!   Not needed to embed the runtime.
//!
//! # Errors
//!
//! Every fallible call returns one enum, [`RuntimeError`], whose variants carry the file, id,
//! index or limit involved. Nothing is clamped, substituted or silently fallen back from.
//! The ones to expect:
//!
//! * Bad input: [`RuntimeError::Shape`] (C, H or W not the model's, or a buffer whose length
//!   does not match the shape given to [`Batch::new`]), [`RuntimeError::NonFinite`] (a NaN or
//!   infinity, with its index), [`RuntimeError::EmptyBatch`], and
//!   [`RuntimeError::InvalidArgument`] for a batch over the memory limits
//!   ([`input::MAX_BATCH_ELEMENTS`] values, or a batch that would make the graph's largest
//!   tensor exceed it) and for a λ or width that is not finite, out of range or not derivable.
//!   [`RuntimeError::Image`] for an image that cannot be decoded.
//! * Missing or altered files: [`RuntimeError::Read`] (a file missing or unreadable),
//!   [`RuntimeError::ShaMismatch`] (content not the one the manifest lists),
//!   [`RuntimeError::UnsafePath`] (a name leaving the export directory, a symlinked
//!   manifest), [`RuntimeError::NotRegularFile`], [`RuntimeError::FileTooLarge`].
//! * A bad manifest: [`RuntimeError::ManifestParse`] (not YAML of the expected form),
//!   [`RuntimeError::ManifestInvalid`] (a rule broken, e.g. a value out of range or a
//!   duplicate id), [`RuntimeError::UnsupportedSchema`] (a `schema_version` this crate does not
//!   read: upgrade the runtime or re-export).
//! * Graphs and the package: [`RuntimeError::GraphRefused`] (a graph that disagrees with
//!   the manifest or uses what the runtime does not run), [`RuntimeError::GraphLoad`] (the
//!   backend could not load it), [`RuntimeError::Package`] and
//!   [`RuntimeError::PackageMismatch`] (a package that cannot be parsed or does not match the
//!   manifest), [`RuntimeError::OverBudget`].
//! * Selection: [`RuntimeError::NoSuchConfig`] (no configuration with that id or (λ, width);
//!   lists those available), [`RuntimeError::NoneQualifies`] (no configuration meets the
//!   policy, or it needs a metric to calibrate first).
//! * Backends: [`RuntimeError::BackendUnavailable`], [`RuntimeError::CudaUnavailable`],
//!   [`RuntimeError::UnknownBackend`] (parsing a backend name), and
//!   [`RuntimeError::Inference`] when an engine fails or returns a non-finite logit; a panic
//!   inside a backend library is caught and reported as `GraphLoad` or `Inference`.
//!
//! A failed [`OatsModel::select`] leaves the active configuration as it was. After deploying
//! an export, [`reference::check_reference`] compares what this runtime computes with the
//! trainer's logits recorded at export.

#![warn(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod bench;
pub mod derive;
pub mod engine;
pub mod error;
pub mod files;
pub mod graph;
pub mod input;
pub mod manifest;
pub mod model;
pub mod prediction;
pub mod reference;
pub mod routed;
pub mod selection;
pub mod source;

pub use derive::DerivedInfo;
#[cfg(feature = "ort")]
pub use engine::ort::{init_ort, int8_kernels as ort_int8_kernels, ORT_DYLIB_ENV};
pub use engine::Backend;
pub use error::{BoxError, ErrorKind, Result, RuntimeError};
pub use input::Batch;
pub use manifest::{
    GraphEntry, InputSpec, LatencyStat, Layout, Manifest, Metrics, OutputSpec, PackageEntry,
    Precision, Quantization, ReferenceBundle, TrainingSummary, SCHEMA_VERSION,
};
pub use model::{GraphLoadInfo, OatsModel, Options};
pub use oats_metrics::{Interval, OperatingPoint};
pub use prediction::{ConfigInfo, Prediction, Ranked};
pub use routed::ExitLogits;
pub use selection::{Objective, Policy, Selector};
pub use source::ExportFiles;
