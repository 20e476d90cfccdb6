//! The training loop (docs/method.md §4, §5): per-sample λ with the zeros-first split, PGD in
//! eval mode without parameter gradients, loss averaged over the whole batch, and for
//! slimmable models one backward per width (descending) before a single optimiser step.
//!
//! SGD (momentum, weight decay on every parameter, PyTorch semantics) is written out here
//! rather than taken from tch so that its momentum buffers can be checkpointed: a resumed
//! run must continue exactly where the killed one stopped.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

use crate::attack;
use crate::checkpoint::{self, Meta};
use crate::config::{same_setting, ExitAttack, LambdaSampling, TrainConfig};
use crate::data::Dataset;
use crate::dist::{Dist, Start};
use crate::encoding::LambdaEncoding;
use crate::error::{Result, TrainError};
use crate::model::{NetSpec, Network};
use crate::nn::{Cond, Pass};
use crate::run_dir::{self, RunDir};

/// Defined beside the checkpoint that stores it (checkpoint.rs must not depend on this module);
/// re-exported here for the callers that name `trainer::EpochMetrics`.
pub use crate::checkpoint::EpochMetrics;

/// Floor of a measured duration before dividing by it (images/s): a zero elapsed time (an
/// empty or instant epoch) gives a huge finite rate instead of inf/NaN in the metrics.
const MIN_SECS: f64 = 1e-9;

/// Clean training accuracy of `seen` samples, `None` when no clean pass was made.
fn train_sa(correct: i64, seen: usize) -> Option<f64> {
    (seen > 0).then(|| correct as f64 / seen as f64)
}

/// A training SA for the log: "n/a" rather than a 0 that reads as a broken model.
fn fmt_sa(sa: Option<f64>) -> String {
    sa.map_or_else(|| "n/a".to_string(), |a| format!("{a:.3}"))
}

/// A model ready to run in tch: network, its variables and (if conditioned) its λ encoding.
/// Named after its engine to keep it apart from the runtime's `oats_runtime::OatsModel` (the
/// exported graphs), which calibration and export hold side by side.
pub struct TchModel {
    pub vs: VarStore,
    pub net: Network,
    pub encoding: Option<LambdaEncoding>,
    pub meta: Meta,
    /// SHA-256 of the checkpoint bytes this model was loaded from (`None` for a new model):
    /// reports name the model they measured by the bytes actually loaded, not by a later
    /// read of a file that may have been replaced in between.
    pub source_sha256: Option<String>,
}

impl TchModel {
    pub fn new(
        cfg: &TrainConfig,
        in_channels: i64,
        height: i64,
        width: i64,
        class_names: Vec<String>,
        device: Device,
    ) -> Self {
        let vs = VarStore::new(device);
        tch::manual_seed(cfg.seed as i64);
        let spec = NetSpec::from_config(cfg, in_channels, class_names.len() as i64);
        let net = Network::new(&vs.root(), &spec);
        let encoding = cfg
            .mode
            .conditioned()
            .then(|| LambdaEncoding::generate(&cfg.lambdas, cfg.encoding_dim, cfg.seed, device));
        let meta = Meta {
            config: cfg.clone(),
            epoch: 0,
            in_channels,
            height,
            width,
            class_names,
            history: vec![],
        };
        TchModel {
            vs,
            net,
            encoding,
            meta,
            source_sha256: None,
        }
    }

    /// A new model as `meta` describes it (config, input shape, classes), carrying `meta`
    /// (epoch, history); its weights are the seeded initial ones.
    pub fn from_meta(meta: &Meta, device: Device) -> Self {
        let mut model = TchModel::new(
            &meta.config,
            meta.in_channels,
            meta.height,
            meta.width,
            meta.class_names.clone(),
            device,
        );
        model.meta = meta.clone();
        model
    }

    /// Loads a checkpoint for inference or further training.
    pub fn load(path: &Path, device: Device) -> Result<(Self, HashMap<String, Tensor>)> {
        let loaded = checkpoint::load(path)?;
        let mut model = TchModel::from_meta(&loaded.meta, device);
        model.source_sha256 = Some(loaded.sha256.clone());
        checkpoint::restore(path, &model.vs.variables(), &loaded.tensors, "model.")?;
        if let Some(enc) = &mut model.encoding {
            let rows =
                loaded
                    .tensors
                    .get("lambda_encoding")
                    .ok_or_else(|| TrainError::Checkpoint {
                        path: path.into(),
                        reason: "missing lambda_encoding".into(),
                    })?;
            if rows.size() != enc.rows.size() {
                return Err(TrainError::Checkpoint {
                    path: path.into(),
                    reason: format!("lambda_encoding has shape {:?}", rows.size()),
                });
            }
            enc.rows = rows.to_device(device);
        }
        Ok((model, loaded.tensors))
    }

    pub fn config(&self) -> &TrainConfig {
        &self.meta.config
    }

    pub fn widths(&self) -> &[f64] {
        &self.net.spec.widths
    }

    /// Refuses images of another C×H×W than the model was trained on: a different channel
    /// count would fail inside a convolution, and a different H×W would run (the networks
    /// pool adaptively) and silently measure the model on data it was never meant for.
    pub fn check_input(&self, channels: i64, height: i64, width: i64) -> Result<()> {
        let m = &self.meta;
        if (channels, height, width) != (m.in_channels, m.height, m.width) {
            return Err(TrainError::invalid(
                "data",
                format!("{channels}×{height}×{width} images"),
                format!(
                    "the model takes {}×{}×{} (C×H×W) images",
                    m.in_channels, m.height, m.width
                ),
            ));
        }
        Ok(())
    }

    /// Refuses labels outside the model's classes (a data set with more classes than the
    /// model): the loss would fail on them, and accuracies would count them as plain misses.
    pub fn check_labels(&self, labels: &[i64]) -> Result<()> {
        let k = self.meta.class_names.len() as i64;
        match labels.iter().position(|l| !(0..k).contains(l)) {
            None => Ok(()),
            Some(i) => Err(TrainError::invalid(
                "data",
                format!("label {} of sample {i}", labels[i]),
                format!("the model has {k} classes"),
            )),
        }
    }

    /// [`check_input`](Self::check_input) for an image batch `x`, which must be [N, C, H, W].
    pub fn check_input_tensor(&self, x: &Tensor) -> Result<()> {
        match x.size()[..] {
            [_, c, h, w] => self.check_input(c, h, w),
            ref other => Err(TrainError::invalid(
                "data",
                format!("a tensor of shape {other:?}"),
                "expected images [N, C, H, W]",
            )),
        }
    }

    pub fn width_index(&self, width: f64) -> Result<usize> {
        self.widths()
            .iter()
            .position(|&w| same_setting(w, width))
            .ok_or_else(|| TrainError::Width {
                value: width,
                available: self.widths().to_vec(),
            })
    }

    /// Eval-mode conditioning for one λ: encoding (interpolated if unseen) and BN branch.
    pub fn cond_for(&self, lambda: f64) -> Result<Cond> {
        crate::encoding::check_lambda(lambda)?;
        match &self.encoding {
            Some(enc) => Ok(Cond {
                enc: Some(enc.encode(lambda)?),
                n_clean: if lambda > 0.0 { 0 } else { i64::MAX },
            }),
            None => {
                let own = self.meta.config.lambda.unwrap_or(0.0);
                if !same_setting(own, lambda) {
                    return Err(TrainError::Lambda {
                        value: lambda,
                        reason: format!(
                            "this {} model was trained for λ = {own} only",
                            self.meta.config.mode.as_str()
                        ),
                    });
                }
                Ok(Cond {
                    enc: None,
                    n_clean: 0,
                })
            }
        }
    }

    /// Eval-mode logits at a fixed (λ, width); the function every attack and export check uses.
    pub fn logits(&self, x: &Tensor, cond: &Cond, width: usize) -> Tensor {
        let (c, pass) = eval_pass(x, cond, width);
        self.net.forward(x, &c, pass)
    }

    /// Eval-mode logits of every exit at a fixed (λ, width), side exits in block order and the
    /// final classifier last (just the final one for a model without exits): what exported
    /// segments and heads are verified against, and what routing is computed from.
    pub fn exit_logits(&self, x: &Tensor, cond: &Cond, width: usize) -> Vec<Tensor> {
        let (c, pass) = eval_pass(x, cond, width);
        self.net.forward_exits(x, &c, pass)
    }

    /// Tensors a checkpoint of this model holds: model variables (`model.*`) and the λ
    /// encoding. Public so that tools and tests write checkpoints the way the trainer does.
    pub fn checkpoint_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (k, v) in self.vs.variables() {
            out.insert(format!("model.{k}"), v);
        }
        if let Some(e) = &self.encoding {
            out.insert("lambda_encoding".into(), e.rows.shallow_clone());
        }
        out
    }
}

/// The condition and pass of an eval-mode forward of `x` at width index `width`: `cond`'s
/// clean-row count clamped to the batch.
fn eval_pass(x: &Tensor, cond: &Cond, width: usize) -> (Cond, Pass) {
    let c = Cond {
        enc: cond.enc.as_ref().map(|e| e.shallow_clone()),
        n_clean: cond.n_clean.min(x.size()[0]),
    };
    (
        c,
        Pass {
            train: false,
            width,
        },
    )
}

/// Training state: the model, the data on the device, momentum buffers.
pub struct Trainer {
    pub model: TchModel,
    pub run_dir: PathBuf,
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    momentum: BTreeMap<String, Tensor>,
    device: Device,
    pub quiet: bool,
    /// Data-parallel membership (`None`: a single process). See [`crate::dist`].
    dist: Option<Dist>,
}

/// The images [N, C, H, W] and labels [N] of `d`; a data set whose fields disagree with each
/// other (they are public) is an error, not a panic inside `view`.
pub fn to_tensors(d: &Dataset, device: Device) -> Result<(Tensor, Tensor)> {
    let dims = [d.len(), d.channels, d.height, d.width];
    let shape: Vec<i64> = dims
        .iter()
        .map(|&v| i64::try_from(v))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| TrainError::invalid("data", format!("{dims:?}"), "does not fit a tensor"))?;
    let expected = dims.iter().try_fold(1usize, |a, &v| a.checked_mul(v));
    if expected != Some(d.images.len()) {
        return Err(TrainError::invalid(
            "data",
            format!("{} pixel values", d.images.len()),
            format!(
                "{} images of {}×{}×{} need {}",
                d.len(),
                d.channels,
                d.height,
                d.width,
                expected.map_or_else(|| "more than fit in memory".to_string(), |n| n.to_string())
            ),
        ));
    }
    let x = Tensor::from_slice(&d.images)
        .f_view(shape.as_slice())?
        .to_device(device);
    let y = Tensor::from_slice(&d.labels).to_device(device);
    Ok((x, y))
}

impl Trainer {
    /// A fresh run.
    pub fn new(
        cfg: TrainConfig,
        train: &Dataset,
        val: &Dataset,
        run_dir: &Path,
        device: Device,
    ) -> Result<Self> {
        if train.is_empty() {
            return Err(TrainError::invalid(
                "data",
                cfg.data.dir.display(),
                "the training split is empty",
            ));
        }
        // What the network is built from, checked before it is built.
        Meta {
            config: cfg.clone(),
            epoch: 0,
            in_channels: i64::try_from(train.channels).unwrap_or(i64::MAX),
            height: i64::try_from(train.height).unwrap_or(i64::MAX),
            width: i64::try_from(train.width).unwrap_or(i64::MAX),
            class_names: train.class_names.clone(),
            history: vec![],
        }
        .validate()?;
        let model = TchModel::new(
            &cfg,
            train.channels as i64,
            train.height as i64,
            train.width as i64,
            train.class_names.clone(),
            device,
        );
        Self::with_model(model, BTreeMap::new(), train, val, run_dir, device)
    }

    /// Continues the run whose checkpoint is in `run_dir`.
    pub fn resume(
        run_dir: &Path,
        train: &Dataset,
        val: &Dataset,
        device: Device,
        epochs: Option<usize>,
    ) -> Result<Self> {
        let path = run_dir.join(checkpoint::FILE_NAME);
        let (mut model, tensors) = TchModel::load(&path, device)?;
        if let Some(e) = epochs {
            model.meta.config.epochs = e;
            model.meta.config.validate()?;
        }
        let vars = model.vs.variables();
        let mut momentum = BTreeMap::new();
        for (k, v) in &tensors {
            if let Some(name) = k.strip_prefix("optim.momentum.") {
                // A buffer of another shape would fail inside the optimiser step.
                let expected = vars.get(name).map(Tensor::size);
                if expected.as_ref() != Some(&v.size()) {
                    return Err(TrainError::Checkpoint {
                        path: path.clone(),
                        reason: match expected {
                            Some(s) => {
                                format!("tensor {k}: shape {:?}, model expects {s:?}", v.size())
                            }
                            None => format!("tensor {k}: the model has no variable {name}"),
                        },
                    });
                }
                momentum.insert(name.to_string(), v.to_device(device));
            }
        }
        Self::with_model(model, momentum, train, val, run_dir, device)
    }

    fn with_model(
        model: TchModel,
        momentum: BTreeMap<String, Tensor>,
        train: &Dataset,
        val: &Dataset,
        run_dir: &Path,
        device: Device,
    ) -> Result<Self> {
        for d in [train, val] {
            model.check_input(d.channels as i64, d.height as i64, d.width as i64)?;
            model.check_labels(&d.labels)?;
        }
        let pad = model.config().data.crop_pad;
        if pad >= train.height.min(train.width) {
            return Err(TrainError::invalid(
                "data.crop_pad",
                pad,
                format!(
                    "must be smaller than the {}×{} images",
                    train.height, train.width
                ),
            ));
        }
        let (train_x, train_y) = to_tensors(train, device)?;
        let (val_x, val_y) = to_tensors(val, device)?;
        Ok(Trainer {
            model,
            run_dir: run_dir.to_path_buf(),
            train_x,
            train_y,
            val_x,
            val_y,
            momentum,
            device,
            quiet: false,
            dist: None,
        })
    }

    /// Rank 0 of a data-parallel run: tells the other ranks what to build (config, epoch,
    /// optimiser state names, a fingerprint of its data) and sends them its state.
    pub fn distribute(mut self, dist: Dist, train: &Dataset, val: &Dataset) -> Result<Self> {
        let arch = self.model.config().arch;
        if arch.dropout() > 0.0 {
            // Each rank would draw dropout masks for its own rows from the generator that
            // also gives the PGD starts of the whole batch: the ranks' streams would part
            // from one process's, and equal seeds would give every rank the same masks.
            return Err(TrainError::DistSetup {
                rank: dist.rank(),
                reason: format!(
                    "{arch} uses dropout ({}), which data-parallel training does not support \
                     yet: masks drawn per rank would break the one-process order of random \
                     numbers (README, \"Data-parallel training\"); train it in one process",
                    arch.dropout()
                ),
            });
        }
        let start = Start {
            meta: self.model.meta.clone(),
            momentum: self.momentum.keys().cloned().collect(),
            data: crate::dist::DataPrint::of(train, val),
            state: self.state_shapes(),
        };
        dist.publish(crate::dist::START_KEY, start.to_yaml()?.as_bytes())?;
        self.dist = Some(dist);
        self.share_state()?;
        Ok(self)
    }

    /// A rank other than 0: builds the model rank 0 described (its config and epoch, from the
    /// store; nothing is read from the run directory) and takes rank 0's state.
    pub fn join(
        dist: Dist,
        start: Start,
        train: &Dataset,
        val: &Dataset,
        run_dir: &Path,
        device: Device,
    ) -> Result<Self> {
        let mine = crate::dist::DataPrint::of(train, val);
        if mine != start.data {
            return Err(TrainError::DistSetup {
                rank: dist.rank(),
                reason: format!(
                    "this rank's data ({mine}) differs from rank 0's ({}): every rank must read the same data set",
                    start.data
                ),
            });
        }
        start.meta.validate()?;
        let model = TchModel::from_meta(&start.meta, device);
        let vars = model.vs.variables();
        let mut momentum = BTreeMap::new();
        for name in &start.momentum {
            let v = vars.get(name).ok_or_else(|| TrainError::DistSetup {
                rank: dist.rank(),
                reason: format!("rank 0 has optimiser state for {name}, which this model lacks"),
            })?;
            momentum.insert(name.clone(), v.zeros_like());
        }
        let mut t = Self::with_model(model, momentum, train, val, run_dir, device)?;
        let mine = t.state_shapes();
        if mine != start.state {
            let first = mine
                .iter()
                .zip(&start.state)
                .find(|(a, b)| a != b)
                .map_or_else(
                    || {
                        format!(
                            "{} tensors here, {} on rank 0",
                            mine.len(),
                            start.state.len()
                        )
                    },
                    |(a, b)| format!("{} {:?} here, {} {:?} on rank 0", a.0, a.1, b.0, b.1),
                );
            return Err(TrainError::DistSetup {
                rank: dist.rank(),
                reason: format!("this rank built another model than rank 0 ({first}); are all ranks the same oats-train build?"),
            });
        }
        t.quiet = true;
        t.dist = Some(dist);
        t.share_state()?;
        Ok(t)
    }

    /// Every tensor of the training state, in one order on every rank: variables and the λ
    /// encoding (the checkpoint's model part) by name, then the momentum buffers by name.
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self.model.checkpoint_tensors().into_iter().collect();
        out.extend(
            self.momentum
                .iter()
                .map(|(k, v)| (format!("optim.momentum.{k}"), v.shallow_clone())),
        );
        out
    }

    fn state_shapes(&self) -> Vec<(String, Vec<i64>)> {
        self.state_tensors()
            .into_iter()
            .map(|(k, t)| (k, t.size()))
            .collect()
    }

    /// Rank 0's state overwrites every rank's, then the replicas are checked equal.
    fn share_state(&mut self) -> Result<()> {
        let Some(d) = &self.dist else { return Ok(()) };
        let mut ts: Vec<Tensor> = self.state_tensors().into_iter().map(|(_, t)| t).collect();
        d.broadcast_from_root(&mut ts)?;
        d.check_replicas(&self.state_tensors())
    }

    /// Whether this process writes checkpoints, metrics and logs (rank 0, or no ranks).
    pub fn is_root(&self) -> bool {
        self.dist.as_ref().is_none_or(Dist::is_root)
    }

    pub fn epoch(&self) -> usize {
        self.model.meta.epoch
    }

    /// Trains the remaining epochs, checkpointing after each one. The run directory is locked
    /// for the whole run, and files there that an earlier run did not write are refused, not
    /// overwritten ([`RunDir::claim`]).
    pub fn run(&mut self) -> Result<()> {
        // Serialised before anything is written: an error leaves no empty config.yaml behind.
        let cfg_yaml = self.model.config().to_yaml()?;
        // Only rank 0 touches the run directory; the other ranks hold no files.
        let _run = if self.is_root() {
            // A model loaded from a checkpoint resumes that checkpoint; a new one replaces it.
            let run = RunDir::claim(&self.run_dir, self.model.source_sha256.is_none())?;
            let cfg_path = self.run_dir.join(run_dir::CONFIG_FILE);
            checkpoint::write_atomic(&cfg_path, cfg_yaml.as_bytes())?;
            Some(run)
        } else {
            None
        };
        while self.epoch() < self.model.config().epochs {
            let m = self.train_epoch()?;
            self.model.meta.epoch += 1;
            self.model.meta.history.push(m);
            if self.is_root() {
                self.save()?;
                self.write_metrics()?;
            }
        }
        if let Some(d) = &self.dist {
            // Rank 0 returns only after its last checkpoint is written; the others wait for
            // it, so that a launcher sees every rank end together.
            d.barrier()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let mut tensors = self.model.checkpoint_tensors();
        for (k, v) in &self.momentum {
            tensors.insert(format!("optim.momentum.{k}"), v.shallow_clone());
        }
        let sha = checkpoint::save(
            &self.run_dir.join(checkpoint::FILE_NAME),
            &tensors,
            &self.model.meta,
        )?;
        // After the checkpoint: a kill between the two leaves a record naming the previous
        // checkpoint's sha256, which no eval.yaml of the new one matches.
        checkpoint::Record::save(
            &self.run_dir.join(checkpoint::RECORD_FILE),
            &self.model.meta,
            &sha,
        )
    }

    /// Rewrites metrics.csv from the checkpoint's history, atomically: after a resume it holds
    /// no duplicates, and a kill never leaves half a line (appending in place could, and would
    /// follow a symlink planted at the path).
    fn write_metrics(&self) -> Result<()> {
        let path = self.run_dir.join(run_dir::METRICS_FILE);
        let csv = run_dir::metrics_csv(&self.model.meta.history);
        Ok(checkpoint::write_atomic(&path, csv.as_bytes())?)
    }

    fn train_epoch(&mut self) -> Result<EpochMetrics> {
        let cfg = self.model.config().clone();
        let epoch = self.epoch();
        // The RNG state is a function of (seed, epoch): see checkpoint.rs.
        tch::manual_seed(
            (cfg.seed as i64)
                .wrapping_mul(1_000_003)
                .wrapping_add(epoch as i64 + 1),
        );
        let mut rng = StdRng::seed_from_u64(
            cfg.seed
                .wrapping_mul(0x9E37_79B9)
                .wrapping_add(epoch as u64),
        );
        let lr = cfg.lr_at(epoch);
        let n = self.train_x.size()[0] as usize;
        let mut order: Vec<i64> = (0..n as i64).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        let b = cfg.batch_size;
        let mut batches = n.div_ceil(b);
        if let Some(m) = cfg.max_batches {
            batches = batches.min(m);
        }
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(batches as u64)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut seen, mut seen_clean) = (0.0, 0i64, 0usize, 0usize);
        for bi in 0..batches {
            let idx = &order[bi * b..((bi + 1) * b).min(n)];
            let idx_t = Tensor::from_slice(idx).to_device(self.device);
            let x = self.train_x.index_select(0, &idx_t);
            let y = self.train_y.index_select(0, &idx_t);
            let x = augment(&x, cfg.data.crop_pad, cfg.data.flip, &mut rng);
            let (loss, c) = self.step(&x, &y, lr, &mut rng)?;
            if !loss.is_finite() {
                return Err(TrainError::Diverged {
                    epoch: epoch + 1,
                    batch: bi,
                    loss,
                });
            }
            loss_sum += loss * idx.len() as f64;
            if let Some(c) = c {
                correct += c;
                seen_clean += idx.len();
            }
            seen += idx.len();
            let rate = seen as f64 / start.elapsed().as_secs_f64().max(MIN_SECS);
            bar.set_message(format!(
                "loss {:.3} sa {} {:.0} img/s",
                loss_sum / seen as f64,
                fmt_sa(train_sa(correct, seen_clean)),
                rate
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let secs = start.elapsed().as_secs_f64();
        if let Some(d) = &self.dist {
            // Before validation and the checkpoint: one set of BN statistics, and proof that
            // the replicas are still the same model.
            d.sync_bn(&self.model.net.all_bns())?;
            d.check_replicas(&self.state_tensors())?;
        }
        let (lo, hi) = if self.is_root() {
            self.val_sa()
        } else {
            (f64::NAN, f64::NAN)
        };
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / seen.max(1) as f64,
            train_sa: train_sa(correct, seen_clean),
            samples_per_s: seen as f64 / secs.max(MIN_SECS),
            seconds: secs,
            val_sa_lambda_min: lo,
            val_sa_lambda_max: hi,
        };
        if self.is_root() {
            let limit = cfg.data.val_limit.unwrap_or(usize::MAX);
            let n_val = (self.val_x.size()[0].max(0) as usize).min(limit);
            let ci = |p: f64| oats_metrics::Interval::wilson_fraction(p, n_val);
            eprintln!(
                "epoch {}/{}: loss {:.4}  train SA {}  val SA % (n = {n_val}, 95% CI) λmin {} λmax {}  {:.0} img/s  {:.1}s",
                m.epoch,
                cfg.epochs,
                m.loss,
                fmt_sa(m.train_sa),
                ci(lo),
                ci(hi),
                m.samples_per_s,
                secs
            );
        }
        Ok(m)
    }

    /// Clean validation accuracy at the smallest and largest training λ, full width.
    fn val_sa(&self) -> (f64, f64) {
        let lambdas = self.model.config().train_lambdas();
        let full = self.model.widths().len() - 1;
        let acc = |l: f64| -> f64 {
            let Ok(cond) = self.model.cond_for(l) else {
                return f64::NAN;
            };
            let _ng = tch::no_grad_guard();
            let limit = self.model.config().data.val_limit.unwrap_or(usize::MAX) as i64;
            let n = self.val_x.size()[0].min(limit);
            if n == 0 {
                return f64::NAN;
            }
            let mut correct = 0i64;
            for s in (0..n).step_by(500) {
                let len = 500.min(n - s);
                let x = self.val_x.narrow(0, s, len);
                let pred = self.model.logits(&x, &cond, full).argmax(1, false);
                correct += pred
                    .eq_tensor(&self.val_y.narrow(0, s, len))
                    .sum(Kind::Int64)
                    .int64_value(&[]);
            }
            correct as f64 / n as f64
        };
        (acc(lambdas[0]), acc(*lambdas.last().unwrap_or(&0.0)))
    }

    /// λ per sample for a batch of `b`, as `lambda_sampling` says: the reference puts
    /// ⌈b/|S|⌉ zeros first and draws the rest i.i.d. uniform over the non-zero training values;
    /// `ends` puts ⌈b/4⌉ zeros first, ⌈b/4⌉ at the largest λ last, and draws the middle the
    /// same way; `robust` the same with ⌈b/2⌉ at the largest λ. Returns (indices into S, λ values, n_clean).
    fn sample_lambdas(&self, b: usize, rng: &mut StdRng) -> (Vec<i64>, Vec<f64>, i64) {
        sample_lambdas(self.model.config(), b, rng)
    }

    /// One optimiser step; returns (batch loss, correct clean predictions at full width).
    /// The count is `None` when the batch had no clean pass (every sample at λ = 1).
    /// Public for the step benchmark (`oats-train bench-step`).
    // `loss = loss + …` on purpose: tch's `+=` is an in-place add on a tensor of the
    // autograd graph; out of place keeps the graph the same as the reference's.
    #[allow(clippy::assign_op_pattern)]
    pub fn step(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        lr: f64,
        rng: &mut StdRng,
    ) -> Result<(f64, Option<i64>)> {
        let cfg = self.model.config().clone();
        // Everything random is drawn for the whole (global) batch on every rank, so that the
        // generators stay in step with a single process; each rank then computes its rows.
        let b = x.size()[0];
        let (idx, lam, n0) = self.sample_lambdas(b as usize, rng);
        let adv_start = if cfg.mode.conditioned() { n0 } else { 0 };
        let any_adv = lam[adv_start as usize..].iter().any(|&l| l > 0.0);
        let needs_clean = lam.iter().any(|&l| l < 1.0);
        let rows = self
            .dist
            .as_ref()
            .map_or(0..b as usize, |d| d.shard(b as usize));
        let (lo, n) = (rows.start as i64, rows.len() as i64);
        let (xl, yl) = (x.narrow(0, lo, n), y.narrow(0, lo, n));
        let lam_t = Tensor::from_slice(&lam[rows.clone()])
            .to_kind(Kind::Float)
            .to_device(self.device);
        let enc =
            self.model.encoding.as_ref().map(|e| {
                e.rows_for(&Tensor::from_slice(&idx[rows.clone()]).to_device(self.device))
            });
        // This rank's adversarial rows: [a0, lo + n) of the batch, `na` of them.
        let a0 = adv_start.max(lo);
        let na = (lo + n - a0).max(0);
        for v in self.model.vs.trainable_variables() {
            let mut g = v.grad();
            if g.defined() {
                // In place; the returned handle is `g` itself (kept only because it is must_use).
                let _zeroed = g.f_zero_()?;
            }
        }
        let nw = self.model.widths().len();
        let (mut total, mut correct) = (0.0, None);
        for wi in (0..nw).rev() {
            let cond = Cond {
                enc: enc.as_ref().map(|e| e.shallow_clone()),
                n_clean: (n0 - lo).clamp(0, n),
            };
            let mut loss = Tensor::zeros([], (Kind::Float, self.device));
            let mut ran = false;
            if needs_clean && n > 0 {
                let all = self.model.net.forward_exits(
                    &xl,
                    &cond,
                    Pass {
                        train: true,
                        width: wi,
                    },
                );
                if wi == nw - 1 {
                    if let Some(logits) = all.last() {
                        correct = Some(
                            logits
                                .argmax(1, false)
                                .eq_tensor(&yl)
                                .sum(Kind::Int64)
                                .int64_value(&[]),
                        );
                    }
                }
                // Every exit's loss, summed (RDI-Nets); one term without exits.
                for logits in &all {
                    let ce =
                        logits.cross_entropy_loss::<Tensor>(&yl, None, Reduction::None, -100, 0.0);
                    loss = loss + (lam_t.ones_like() - &lam_t).multiply(&ce).sum(Kind::Float);
                }
                ran = true;
            }
            if any_adv {
                // Random starts are drawn for the whole batch's adversarial rows (what one
                // process draws), one per PGD run, and each rank takes its rows; a rank with
                // no adversarial rows still draws, to keep its generator in step.
                let draw = || x.narrow(0, adv_start, b - adv_start).rand_like();
                if na == 0 && cfg.attack.random_start {
                    for _ in 0..pgd_runs(&cfg) {
                        let _ = draw();
                    }
                }
                if na > 0 {
                    let xa = xl.narrow(0, a0 - lo, na);
                    let ya = yl.narrow(0, a0 - lo, na);
                    let acond = cond.narrow(a0 - lo, na, n);
                    let acond = Cond {
                        enc: acond.enc,
                        n_clean: 0,
                    };
                    let net = &self.model.net;
                    let f = |z: &Tensor| {
                        net.forward(
                            z,
                            &acond,
                            Pass {
                                train: false,
                                width: wi,
                            },
                        )
                    };
                    let mut own_noise = |_: &Tensor| draw().narrow(0, a0 - adv_start, na);
                    let noise = cfg
                        .attack
                        .random_start
                        .then_some(&mut own_noise as attack::Noise);
                    let (eps, step, steps) = (cfg.epsilon, cfg.attack.step_size, cfg.attack.steps);
                    let x_adv = match &cfg.exits {
                        None => attack::pgd(&f, &xa, &ya, eps, step, steps, noise),
                        Some(e) => {
                            let fe = |z: &Tensor| {
                                net.forward_exits(
                                    z,
                                    &acond,
                                    Pass {
                                        train: false,
                                        width: wi,
                                    },
                                )
                            };
                            let k = e.count();
                            let weights = match e.attack {
                                ExitAttack::MaxAverage => None,
                                ExitAttack::Average => Some(vec![1.0 / k as f64; k]),
                                ExitAttack::Single => {
                                    let mut w = vec![0.0; k];
                                    w[e.single_exit.unwrap_or(k).clamp(1, k) - 1] = 1.0;
                                    Some(w)
                                }
                            };
                            match weights {
                                None => {
                                    attack::max_average(&fe, k, &xa, &ya, eps, step, steps, noise)
                                }
                                Some(w) => {
                                    attack::pgd_exits(&fe, &xa, &ya, eps, step, steps, &w, noise)
                                }
                            }
                        }
                    };
                    let all = net.forward_exits(
                        &x_adv,
                        &acond,
                        Pass {
                            train: true,
                            width: wi,
                        },
                    );
                    for logits in &all {
                        let ce = logits.cross_entropy_loss::<Tensor>(
                            &ya,
                            None,
                            Reduction::None,
                            -100,
                            0.0,
                        );
                        loss = loss + (lam_t.narrow(0, a0 - lo, na) * ce).sum(Kind::Float);
                    }
                    ran = true;
                }
            }
            if ran {
                // Mean over the whole (global) batch; the widths' losses are averaged
                // (paper, Fig. 3).
                let loss = loss / (b as f64 * nw as f64);
                loss.backward();
                total += loss.double_value(&[]);
            }
        }
        if let Some(d) = &self.dist {
            let mut vars: Vec<(String, Tensor)> = self
                .model
                .vs
                .variables()
                .into_iter()
                .filter(|(_, v)| v.requires_grad())
                .collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            let vars: Vec<Tensor> = vars.into_iter().map(|(_, v)| v).collect();
            let mut stats = [total, correct.unwrap_or(0) as f64];
            d.all_reduce_grads(&vars, &mut stats)?;
            total = stats[0];
            correct = needs_clean.then_some(stats[1] as i64);
        }
        self.sgd(lr)?;
        Ok((total, correct))
    }

    /// SGD with momentum and weight decay, PyTorch semantics (dampening 0, no Nesterov):
    /// d = g + wd·p; buf = d (first step) or μ·buf + d; p −= lr·buf.
    fn sgd(&mut self, lr: f64) -> Result<()> {
        let cfg = self.model.config();
        let (mu, wd) = (cfg.optim.momentum, cfg.optim.weight_decay);
        let _ng = tch::no_grad_guard();
        for (name, p) in self.model.vs.variables() {
            if !p.requires_grad() {
                continue;
            }
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let d = &g + &p * wd;
            let buf = match self.momentum.remove(&name) {
                Some(b) if mu != 0.0 => b * mu + d,
                _ => d,
            };
            let mut p = p;
            // In place, like the zeroing above; a libtorch error is the run's error.
            let _updated = p.f_sub_(&(&buf * lr))?;
            self.momentum.insert(name, buf);
        }
        Ok(())
    }
}

/// PGD runs per adversarial batch: one, or one per exit for the max-average attack.
fn pgd_runs(cfg: &TrainConfig) -> usize {
    match &cfg.exits {
        Some(e) if e.attack == ExitAttack::MaxAverage => e.count(),
        _ => 1,
    }
}

/// [`Trainer::sample_lambdas`] for a config (a free function so that tests can call it).
fn sample_lambdas(cfg: &TrainConfig, b: usize, rng: &mut StdRng) -> (Vec<i64>, Vec<f64>, i64) {
    if !cfg.mode.conditioned() {
        let l = cfg.lambda.unwrap_or(0.0);
        return (vec![0; b], vec![l; b], 0);
    }
    let s = &cfg.lambdas;
    let (n0, n_top) = match (s.len(), cfg.lambda_sampling) {
        (1, _) => (b, 0),
        (k, LambdaSampling::Reference) => (b.div_ceil(k), 0),
        (_, LambdaSampling::Ends) => {
            let n0 = b.div_ceil(4).min(b);
            (n0, b.div_ceil(4).min(b - n0))
        }
        (_, LambdaSampling::Robust) => {
            let n0 = b.div_ceil(4).min(b);
            (n0, b.div_ceil(2).min(b - n0))
        }
    };
    let top = s.len() as i64 - 1;
    let idx: Vec<i64> = (0..b)
        .map(|i| {
            if i < n0 {
                0
            } else if i >= b - n_top {
                top
            } else {
                rng.gen_range(1..s.len()) as i64
            }
        })
        .collect();
    let lam = idx.iter().map(|&i| s[i as usize]).collect();
    (idx, lam, n0 as i64)
}

/// Pad-and-random-crop and random horizontal flips, per sample, from the run's RNG.
fn augment(x: &Tensor, pad: usize, flip: bool, rng: &mut StdRng) -> Tensor {
    if pad == 0 && !flip {
        return x.shallow_clone();
    }
    let s = x.size();
    let (b, h, w) = (s[0], s[2], s[3]);
    let p = pad as i64;
    let padded = if p > 0 {
        x.constant_pad_nd([p, p, p, p])
    } else {
        x.shallow_clone()
    };
    let mut out = Vec::with_capacity(b as usize);
    for i in 0..b {
        let (dy, dx) = if p > 0 {
            (rng.gen_range(0..=2 * p), rng.gen_range(0..=2 * p))
        } else {
            (0, 0)
        };
        let mut img = padded.get(i).narrow(1, dy, h).narrow(2, dx, w);
        if flip && rng.gen_bool(0.5) {
            img = img.flip([2]);
        }
        out.push(img);
    }
    Tensor::stack(&out, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn oat(sampling: LambdaSampling) -> TrainConfig {
        let mut cfg = TrainConfig::embedded_default();
        cfg.mode = crate::config::Mode::Oat;
        cfg.widths = vec![1.0];
        cfg.lambdas = vec![0.0, 0.1, 0.2, 0.3, 0.4, 1.0];
        cfg.lambda_sampling = sampling;
        cfg.validate().expect("valid");
        cfg
    }

    /// Share of each λ index over many batches of 128.
    fn shares(cfg: &TrainConfig) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut n = vec![0usize; cfg.lambdas.len()];
        let batches = 400;
        for _ in 0..batches {
            let (idx, lam, n0) = sample_lambdas(cfg, 128, &mut rng);
            assert!(idx[..n0 as usize].iter().all(|&i| i == 0), "zeros first");
            assert!(
                idx[n0 as usize..].iter().all(|&i| i > 0),
                "only zeros first"
            );
            assert!(lam
                .iter()
                .zip(&idx)
                .all(|(&l, &i)| l == cfg.lambdas[i as usize]));
            for i in idx {
                n[i as usize] += 1;
            }
        }
        n.iter()
            .map(|&c| c as f64 / (128 * batches) as f64)
            .collect()
    }

    #[test]
    fn reference_sampling_gives_each_lambda_a_sixth_of_s1() {
        let s = shares(&oat(LambdaSampling::Reference));
        assert!((s[0] - 22.0 / 128.0).abs() < 1e-12, "⌈128/6⌉ zeros: {s:?}");
        for &v in &s[1..] {
            assert!((v - (1.0 - 22.0 / 128.0) / 5.0).abs() < 0.01, "{s:?}");
        }
    }

    /// `ends` and `robust`: ¼ zeros first, the largest λ last with `top` of the batch, the
    /// middle uniform over the non-zero values; tiny batches keep at least the clean rows.
    fn check_end_weighted(sampling: LambdaSampling, top: f64) {
        let s = shares(&oat(sampling));
        let middle = (1.0 - 0.25 - top) / 5.0;
        assert!((s[0] - 0.25).abs() < 1e-12, "{sampling}: {s:?}");
        assert!((s[5] - (top + middle)).abs() < 0.01, "{sampling}: {s:?}");
        for &v in &s[1..5] {
            assert!((v - middle).abs() < 0.01, "{sampling}: {s:?}");
        }
        let mut rng = StdRng::seed_from_u64(1);
        let (idx, _, n0) = sample_lambdas(&oat(sampling), 8, &mut rng);
        let n_top = (8.0 * top) as usize;
        assert_eq!(n0, 2, "{sampling}");
        assert!(idx[..2].iter().all(|&i| i == 0), "{sampling}: {idx:?}");
        assert!(
            idx[8 - n_top..].iter().all(|&i| i == 5),
            "{sampling}: {idx:?}"
        );
        for b in 1..4 {
            let (idx, _, n0) = sample_lambdas(&oat(sampling), b, &mut rng);
            assert_eq!((idx.len(), n0), (b, 1), "{sampling}");
        }
    }

    #[test]
    fn ends_sampling_weights_the_ends() {
        check_end_weighted(LambdaSampling::Ends, 0.25);
    }

    #[test]
    fn robust_sampling_gives_the_largest_lambda_half_the_batch() {
        check_end_weighted(LambdaSampling::Robust, 0.5);
        // In tiny batches the largest λ takes what the clean rows leave.
        let mut rng = StdRng::seed_from_u64(2);
        for b in 2..4 {
            let (idx, _, _) = sample_lambdas(&oat(LambdaSampling::Robust), b, &mut rng);
            assert!(idx[1..].iter().all(|&i| i == 5), "{idx:?}");
        }
    }
}
