//! The training configuration: one YAML file holds every hyper-parameter; CLI flags
//! override fields; the effective config is saved beside (and inside) the checkpoint so a
//! run can be resumed or reproduced from it alone.
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::DatasetKind;
use crate::error::{Result, TrainError};
use crate::limits::{
    read_text_limited, MAX_ATTACK_STEPS, MAX_BATCH_SIZE, MAX_CHANNEL_MULTIPLIER, MAX_EPOCHS,
    MAX_IMAGE_SIDE, MAX_LR, MAX_YAML_BYTES,
};

/// Two λ (or two widths) denote the same setting when they differ by less than this. They
/// are written as short decimals (0.1, 0.75) in YAML, CLI flags and manifests, so two
/// spellings of one setting differ only by f64 round-off (~1e-16), and two distinct settings
/// by at least 1e-3 in practice: 1e-9 is far from both.
pub const SAME_SETTING_TOL: f64 = 1e-9;

/// Whether `a` and `b` are the same λ (or width) setting; see [`SAME_SETTING_TOL`].
pub fn same_setting(a: f64, b: f64) -> bool {
    (a - b).abs() < SAME_SETTING_TOL
}

/// What is trained. OAT/OATS are the once-for-all methods; PGD-AT/PGD-ATS the dedicated
/// baselines they are compared against (one fixed λ per model).
///
/// The YAML (serde) and CLI (clap) spellings are the same: `oat`, `oats`, `pgd-at`, `pgd-ats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Mode {
    Oat,
    Oats,
    PgdAt,
    PgdAts,
}

impl Mode {
    /// λ-conditioned (FiLM) models.
    pub fn conditioned(self) -> bool {
        matches!(self, Mode::Oat | Mode::Oats)
    }
    /// Slimmable (several widths) models.
    pub fn slimmable(self) -> bool {
        matches!(self, Mode::Oats | Mode::PgdAts)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Oat => "oat",
            Mode::Oats => "oats",
            Mode::PgdAt => "pgd-at",
            Mode::PgdAts => "pgd-ats",
        }
    }
}

/// Network architecture presets (docs/method.md §2). YAML and CLI spellings: `small`,
/// `small-deep`, `resnet34`, `wrn16-8`, `wrn40-2` (spelled out per variant: digits make automatic case
/// conversion ambiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Arch {
    /// Post-activation ResNet with one basic block per stage (16/32/64 channels, every stage
    /// strided: 28×28 → 14 → 7 → 4, ≈2.7 M MACs at full width): trains in minutes on a
    /// 2-core CPU on 28×28 gray images.
    #[serde(rename = "small")]
    #[value(name = "small")]
    Small,
    /// The small preset with three basic blocks per stage (9 blocks, ≈9 M MACs at full
    /// width, 28×28 → 14 → 7 → 4): deep enough that an early exit after stage 1 or 2 skips
    /// compute a CPU can measure, where the small preset's whole network costs about as much
    /// as an inference call's overhead (issue #16).
    #[serde(rename = "small-deep")]
    #[value(name = "small-deep")]
    SmallDeep,
    /// CIFAR ResNet-34 (post-activation BasicBlock, [3,4,6,3]).
    #[serde(rename = "resnet34")]
    #[value(name = "resnet34")]
    Resnet34,
    /// Pre-activation WRN-16-8 (SVHN), dropout 0.3.
    #[serde(rename = "wrn16-8")]
    #[value(name = "wrn16-8")]
    Wrn16_8,
    /// Pre-activation WRN-40-2 (STL-10), dropout 0.3.
    #[serde(rename = "wrn40-2")]
    #[value(name = "wrn40-2")]
    Wrn40_2,
}

impl Arch {
    /// Dropout probability inside the blocks (the wide ResNets' 0.3; none elsewhere).
    pub fn dropout(self) -> f64 {
        match self {
            Arch::Wrn16_8 | Arch::Wrn40_2 => 0.3,
            Arch::Small | Arch::SmallDeep | Arch::Resnet34 => 0.0,
        }
    }

    /// Residual blocks of the body, counted as `exits.after_blocks` counts them.
    pub fn blocks(self) -> usize {
        match self {
            Arch::Small => 3,
            Arch::SmallDeep => 9,
            Arch::Resnet34 => 16,
            Arch::Wrn16_8 => 6,
            Arch::Wrn40_2 => 18,
        }
    }

    /// The YAML / CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Small => "small",
            Arch::SmallDeep => "small-deep",
            Arch::Resnet34 => "resnet34",
            Arch::Wrn16_8 => "wrn16-8",
            Arch::Wrn40_2 => "wrn40-2",
        }
    }
}

/// Dual BN (λ=0 → BN_c, λ>0 → BN_a) or a single BN (the paper's "normal BN" ablation).
/// YAML and CLI spellings: `dual`, `normal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Norm {
    Dual,
    Normal,
}

impl Norm {
    /// The YAML / CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Norm::Dual => "dual",
            Norm::Normal => "normal",
        }
    }
}

/// How the λ of each batch's samples are drawn from S (OAT/OATS; docs/method.md §4).
/// YAML and CLI spellings: `reference`, `ends`, `robust`.
///
/// The default for OAT/OATS is [`LambdaSampling::Ends`] (issue #18: no worse than the
/// reference anywhere the "no worse" study measured, better at λ = 1 in every cell). What a
/// config that leaves the field out means depends on who wrote it, see
/// [`TrainConfig::from_yaml`] (a user: the default) and [`LambdaSampling::unnamed_in_saved`]
/// (a checkpoint saved before the switch: the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum LambdaSampling {
    /// The reference: ⌈b/|S|⌉ zeros first, the rest i.i.d. uniform over the non-zero values
    /// (with S1 each of λ = 0 and λ = 1 gets 1/6 of a batch). The only value a dedicated
    /// baseline (one fixed λ) takes.
    Reference,
    /// More weight on the ends: ⌈b/4⌉ zeros first, ⌈b/4⌉ at the largest λ last, the rest
    /// i.i.d. uniform over the non-zero values (with S1: λ = 0 gets 1/4 of a batch, the
    /// largest λ 1/4 + 1/10 = 0.35, each middle value 0.1). The default for OAT/OATS since
    /// issue #18 (DESIGN.md, "Comparisons and the claim experiment"; experiments/no-worse/).
    Ends,
    /// Half of each batch at the largest λ: ⌈b/4⌉ zeros first, ⌈b/2⌉ at the largest λ last,
    /// the rest i.i.d. uniform over the non-zero values (with S1: λ = 0 gets 1/4, the largest
    /// λ 1/2 + 1/20 = 0.55, each middle value 0.05). The study's third factor: `ends` closed
    /// part of the robust end's shortfall by giving λ = 1 more of the batch; this asks
    /// whether more closes the rest, and what the middle λ pay for it.
    Robust,
}

impl LambdaSampling {
    /// The YAML / CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LambdaSampling::Reference => "reference",
            LambdaSampling::Ends => "ends",
            LambdaSampling::Robust => "robust",
        }
    }
    fn is_reference(&self) -> bool {
        *self == LambdaSampling::Reference
    }

    /// The default for a model trained in `mode`: `ends` for OAT/OATS, `reference` (the
    /// only valid value) for the dedicated baselines.
    pub fn default_for(mode: Mode) -> Self {
        if mode.conditioned() {
            LambdaSampling::Ends
        } else {
            LambdaSampling::Reference
        }
    }

    /// What a *saved* config (a checkpoint's metadata, its record) that leaves the field out
    /// means: `reference`. Saved configs left it out at the reference until the default
    /// became `ends`, and have named it always since, so a missing field marks a run trained
    /// before the switch (the shipped model, the claim runs, the study's records).
    pub fn unnamed_in_saved() -> Self {
        LambdaSampling::Reference
    }
}

impl fmt::Display for LambdaSampling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Norm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// CUDA when available, CPU otherwise.
    Auto,
    Cpu,
    /// CUDA or a clear error; never a silent CPU run.
    Cuda,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// fashion-mnist | cifar10 | svhn | stl10 | image-folder (an unknown name is a parse
    /// error that lists these).
    pub kind: DatasetKind,
    /// Directory holding the files in the data set's standard on-disk format.
    pub dir: PathBuf,
    /// Use only the first N training samples (quick runs).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Use only the first N validation samples for the per-epoch evaluation.
    #[serde(default)]
    pub val_limit: Option<usize>,
    /// Pad-and-random-crop by this many pixels (0 = off).
    #[serde(default)]
    pub crop_pad: usize,
    /// Random horizontal flips.
    #[serde(default)]
    pub flip: bool,
}

/// PGD used to make the training examples (docs/method.md §1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackConfig {
    pub steps: usize,
    /// Step size α in pixel units. The paper's text uses 2/255 for ε = 8/255; the reference
    /// code uses min(1.25ε, ε+4/255)/steps. Stated here so nobody has to guess.
    pub step_size: f64,
    #[serde(default = "yes")]
    pub random_start: bool,
}

fn yes() -> bool {
    true
}

/// Robust early exits (RDI-Nets, docs/method.md §7): side classifiers after some residual
/// blocks, trained with the backbone, so that an input may leave the network early.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitsConfig {
    /// A side exit after each of these residual blocks, counted from 1 through the whole body
    /// (small: 3 blocks, resnet34: 16, wrn16-8: 6, wrn40-2: 18), strictly increasing, before
    /// the last block (the final classifier is always the last exit).
    pub after_blocks: Vec<usize>,
    /// How training's adversarial examples are made (docs/method.md §7).
    #[serde(default)]
    pub attack: ExitAttack,
    /// The exit the `single` attack targets, 1-based over all exits, the final one last
    /// (default: the final exit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_exit: Option<usize>,
}

/// The attack on a multi-exit network that makes training's adversarial examples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitAttack {
    /// One PGD per exit, each on that exit's loss; per sample, the one whose summed loss over
    /// all exits is largest (RDI-Nets' default).
    #[default]
    MaxAverage,
    /// One PGD on the mean of the exits' losses.
    Average,
    /// One PGD on one exit's loss (`single_exit`).
    Single,
}

impl ExitsConfig {
    /// Number of exits including the final classifier.
    pub fn count(&self) -> usize {
        self.after_blocks.len() + 1
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// cosine (stepped per epoch, as the reference) | constant
    #[serde(default)]
    pub schedule: LrSchedule,
}

/// How the learning rate moves over the epochs; see [`TrainConfig::lr_at`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    /// Cosine annealing from `lr` towards 0, stepped once per epoch (the reference's).
    #[default]
    Cosine,
    /// `lr` throughout.
    Constant,
}

impl LrSchedule {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LrSchedule::Cosine => "cosine",
            LrSchedule::Constant => "constant",
        }
    }
}

impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub mode: Mode,
    pub arch: Arch,
    #[serde(default = "dual")]
    pub norm: Norm,
    pub data: DataConfig,
    /// L∞ radius in pixel units ([0,1] images).
    pub epsilon: f64,
    pub attack: AttackConfig,
    /// Training λ set S (OAT/OATS). Must contain 0.
    #[serde(default = "s1")]
    pub lambdas: Vec<f64>,
    /// The fixed λ of a PGD-AT / PGD-ATS baseline.
    #[serde(default)]
    pub lambda: Option<f64>,
    /// Width factors (OATS / PGD-ATS); [1.0] otherwise.
    #[serde(default = "full_width")]
    pub widths: Vec<f64>,
    /// Dimension D of the λ encoding (rows of a D×D orthogonal matrix).
    #[serde(default = "enc_dim")]
    pub encoding_dim: usize,
    /// How each batch's λ are drawn from `lambdas` (OAT/OATS only). Always written; when
    /// absent, a user's config gets [`LambdaSampling::default_for`] its mode (see
    /// [`TrainConfig::from_yaml`]) and a saved one [`LambdaSampling::unnamed_in_saved`].
    #[serde(default = "LambdaSampling::unnamed_in_saved")]
    pub lambda_sampling: LambdaSampling,
    /// Capacity: every channel count of the preset times this (1 = the preset; 2 doubles
    /// the channels, ≈4× the MACs). Left out of a saved config when 1, so runs and
    /// checkpoints from before it read and hash as before.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub channel_multiplier: usize,
    pub optim: OptimConfig,
    pub epochs: usize,
    pub batch_size: usize,
    #[serde(default)]
    pub seed: u64,
    /// Stop each epoch after this many batches (smoke tests only).
    #[serde(default)]
    pub max_batches: Option<usize>,
    /// Robust early exits; none by default (left out of saved configs then, so older runs
    /// read and hash as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exits: Option<ExitsConfig>,
}

fn dual() -> Norm {
    Norm::Dual
}
fn s1() -> Vec<f64> {
    vec![0.0, 0.1, 0.2, 0.3, 0.4, 1.0]
}
fn full_width() -> Vec<f64> {
    vec![1.0]
}
fn enc_dim() -> usize {
    128
}
fn one() -> usize {
    1
}
fn is_one(v: &usize) -> bool {
    *v == 1
}

/// Command-line overrides of a [`TrainConfig`] (`oats-train train --mode … --epochs …`),
/// applied with [`TrainConfig::apply`]. `None` keeps the config's value.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct Overrides {
    /// Override: training mode.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Override: fixed λ of a pgd-at / pgd-ats baseline.
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Override: number of epochs (with --resume: extend the run).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override: batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override: seed (initialisation, data order, attack starts).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override: data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Override: use only the first N training samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Override: stop each epoch after N batches (smoke tests).
    #[arg(long)]
    pub max_batches: Option<usize>,
    /// Override: norm.
    #[arg(long, value_enum)]
    pub norm: Option<Norm>,
    /// Override: widths, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub widths: Option<Vec<f64>>,
    /// Override: λ sampling (OAT/OATS): ends (the default), reference (the paper's), robust.
    #[arg(long, value_enum)]
    pub lambda_sampling: Option<LambdaSampling>,
    /// Override: channel multiplier (capacity).
    #[arg(long)]
    pub channel_multiplier: Option<usize>,
}

/// The embedded default: OATS on the bundled Fashion-MNIST subset, small preset.
pub const DEFAULT_CONFIG: &str = include_str!("../../assets/configs/oats-small-fmnist.yaml");

/// The one field [`TrainConfig::from_yaml`] must know was given, not defaulted.
#[derive(Deserialize)]
struct NamedFields {
    #[serde(default)]
    lambda_sampling: Option<serde::de::IgnoredAny>,
}

impl TrainConfig {
    /// Parses and validates a config a user wrote (`--config`, the embedded default, an
    /// experiment's configs). Where it leaves `lambda_sampling` out, the model gets the
    /// default for its mode ([`LambdaSampling::default_for`]: `ends` for OAT/OATS), unlike a
    /// saved config, which names it (a checkpoint's metadata is read by serde alone).
    pub fn from_yaml(text: &str, source: &Path) -> Result<Self> {
        let parse_error = |e: serde_yaml::Error| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            TrainError::ConfigParse {
                path: source.to_path_buf(),
                line,
                column,
                message: e.to_string(),
            }
        };
        let mut cfg: TrainConfig = serde_yaml::from_str(text).map_err(parse_error)?;
        let named: NamedFields = serde_yaml::from_str(text).map_err(parse_error)?;
        if named.lambda_sampling.is_none() {
            cfg.lambda_sampling = LambdaSampling::default_for(cfg.mode);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a YAML config: a regular file of at most [`MAX_YAML_BYTES`] (a FIFO or
    /// `/dev/zero` is an error, not a hang), whose nesting and aliases serde_yaml bounds.
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_text_limited(path, MAX_YAML_BYTES).map_err(|e| TrainError::io(path, e))?;
        Self::from_yaml(&text, path)
    }

    pub fn embedded_default() -> Self {
        // The embedded file is checked by a unit test; a failure here is a build defect.
        Self::from_yaml(DEFAULT_CONFIG, Path::new("<embedded default>"))
            .unwrap_or_else(|e| panic!("embedded default config is invalid: {e}"))
    }

    /// The config as YAML, as a run's `config.yaml` holds it.
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml::to_string(self).map_err(|source| TrainError::Yaml {
            what: "the config",
            source,
        })
    }

    /// Applies command-line overrides (every `Some` replaces its field), then validates.
    ///
    /// Switching `mode` also fixes what the new mode implies: widths become `[1.0]` for a
    /// non-slimmable mode, and `lambda` is dropped for a λ-conditioned one (OAT/OATS use
    /// `lambdas`) unless given; a PGD-AT/PGD-ATS mode needs a `lambda` from the config or
    /// the overrides. Crossing between a baseline and OAT/OATS resets `lambda_sampling` to
    /// the new mode's default unless `--lambda-sampling` is given.
    pub fn apply(&mut self, o: &Overrides) -> Result<()> {
        if let Some(mode) = o.mode {
            self.set_mode(mode);
            if !mode.conditioned() && self.lambda.is_none() && o.lambda.is_none() {
                return Err(TrainError::invalid(
                    "mode",
                    mode,
                    "pgd-at / pgd-ats need a fixed λ: pass --lambda",
                ));
            }
        }
        if let Some(l) = o.lambda {
            self.lambda = Some(l);
        }
        if let Some(n) = o.norm {
            self.norm = n;
        }
        if let Some(w) = &o.widths {
            self.widths = w.clone();
        }
        if let Some(n) = o.epochs {
            self.epochs = n;
        }
        if let Some(n) = o.batch_size {
            self.batch_size = n;
        }
        if let Some(s) = o.seed {
            self.seed = s;
        }
        if let Some(d) = &o.data_dir {
            self.data.dir = d.clone();
        }
        if o.limit.is_some() {
            self.data.limit = o.limit;
        }
        if o.max_batches.is_some() {
            self.max_batches = o.max_batches;
        }
        if let Some(l) = o.lambda_sampling {
            self.lambda_sampling = l;
        }
        if let Some(m) = o.channel_multiplier {
            self.channel_multiplier = m;
        }
        self.validate()
    }

    /// Switches to `mode` with what it implies, as `--mode` does (see [`TrainConfig::apply`],
    /// which also checks that a baseline has its λ): widths `[1.0]` for a non-slimmable mode,
    /// no fixed `lambda` for OAT/OATS, and the new mode's default `lambda_sampling` when
    /// crossing between a baseline and OAT/OATS. Not validated.
    pub fn set_mode(&mut self, mode: Mode) {
        if mode.conditioned() != self.mode.conditioned() {
            self.lambda_sampling = LambdaSampling::default_for(mode);
        }
        self.mode = mode;
        if !mode.slimmable() {
            self.widths = vec![1.0];
        }
        if mode.conditioned() {
            self.lambda = None;
        }
    }

    /// The λ values this model is trained with: S for OAT/OATS, {λ} for the baselines.
    pub fn train_lambdas(&self) -> Vec<f64> {
        if self.mode.conditioned() {
            self.lambdas.clone()
        } else {
            vec![self.lambda.unwrap_or(0.0)]
        }
    }

    /// Checks every value before anything is allocated or run for it: NaN, infinite,
    /// negative and absurdly large numbers are refused with the field, value and bound.
    pub fn validate(&self) -> Result<()> {
        let unit = |name: &str, v: f64| -> Result<()> {
            if !v.is_finite() || !(0.0..=1.0).contains(&v) {
                return Err(TrainError::invalid(
                    name,
                    v,
                    "must be a finite number in [0, 1]",
                ));
            }
            Ok(())
        };
        if !self.epsilon.is_finite() || self.epsilon < 0.0 || self.epsilon > 1.0 {
            return Err(TrainError::invalid(
                "epsilon",
                self.epsilon,
                "must be in [0, 1] (pixel units)",
            ));
        }
        if !(self.attack.step_size.is_finite()
            && self.attack.step_size > 0.0
            && self.attack.step_size <= 1.0)
        {
            return Err(TrainError::invalid(
                "attack.step_size",
                self.attack.step_size,
                "must be in (0, 1] (pixel units)",
            ));
        }
        if !(1..=MAX_ATTACK_STEPS).contains(&self.attack.steps) {
            return Err(TrainError::invalid(
                "attack.steps",
                self.attack.steps,
                format!("must be in 1..={MAX_ATTACK_STEPS}"),
            ));
        }
        if !(1..=MAX_CHANNEL_MULTIPLIER).contains(&self.channel_multiplier) {
            return Err(TrainError::invalid(
                "channel_multiplier",
                self.channel_multiplier,
                format!("must be in 1..={MAX_CHANNEL_MULTIPLIER}"),
            ));
        }
        if let Some(e) = &self.exits {
            let n = self.arch.blocks();
            let ok = !e.after_blocks.is_empty()
                && e.after_blocks.windows(2).all(|w| w[0] < w[1])
                && e.after_blocks.iter().all(|&k| (1..n).contains(&k));
            if !ok {
                return Err(TrainError::invalid(
                    "exits.after_blocks",
                    format!("{:?}", e.after_blocks),
                    format!(
                        "need strictly increasing block numbers in 1..={} ({} has {n} blocks; the final classifier is the last exit)",
                        n - 1,
                        self.arch
                    ),
                ));
            }
            match (e.attack, e.single_exit) {
                (ExitAttack::Single, Some(k)) if !(1..=e.count()).contains(&k) => {
                    return Err(TrainError::invalid(
                        "exits.single_exit",
                        k,
                        format!(
                            "must be in 1..={} (the exits, the final one last)",
                            e.count()
                        ),
                    ));
                }
                (ExitAttack::Single, _) => {}
                (_, Some(k)) => {
                    return Err(TrainError::invalid(
                        "exits.single_exit",
                        k,
                        "only with attack: single",
                    ));
                }
                _ => {}
            }
        }
        if !self.mode.conditioned() && !self.lambda_sampling.is_reference() {
            return Err(TrainError::invalid(
                "lambda_sampling",
                self.lambda_sampling,
                "only for oat / oats (a baseline trains one fixed λ)",
            ));
        }
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return Err(TrainError::invalid(
                "epochs",
                self.epochs,
                format!("must be in 1..={MAX_EPOCHS}"),
            ));
        }
        let at_least_one = |name: &str, v: Option<usize>| -> Result<()> {
            match v {
                Some(0) => Err(TrainError::invalid(
                    name,
                    0,
                    "must be ≥ 1 (leave it out for no limit)",
                )),
                _ => Ok(()),
            }
        };
        at_least_one("data.limit", self.data.limit)?;
        at_least_one("data.val_limit", self.data.val_limit)?;
        at_least_one("max_batches", self.max_batches)?;
        if self.data.crop_pad > MAX_IMAGE_SIDE {
            return Err(TrainError::invalid(
                "data.crop_pad",
                self.data.crop_pad,
                format!("must be ≤ {MAX_IMAGE_SIDE} (and smaller than the images)"),
            ));
        }
        if self.mode.conditioned() {
            if self.lambdas.is_empty() || self.lambdas.len() > self.encoding_dim {
                return Err(TrainError::invalid(
                    "lambdas",
                    format!("{:?}", self.lambdas),
                    format!("need 1..={} values", self.encoding_dim),
                ));
            }
            for &l in &self.lambdas {
                unit("lambdas[]", l)?;
            }
            if !self.lambdas.windows(2).all(|w| w[0] < w[1]) {
                return Err(TrainError::invalid(
                    "lambdas",
                    format!("{:?}", self.lambdas),
                    "must be strictly increasing",
                ));
            }
            if self.lambdas[0] != 0.0 {
                return Err(TrainError::invalid(
                    "lambdas",
                    format!("{:?}", self.lambdas),
                    "must start with 0 (clean branch)",
                ));
            }
            if self.lambda.is_some() {
                return Err(TrainError::invalid(
                    "lambda",
                    format!("{:?}", self.lambda),
                    "only for pgd-at / pgd-ats; OAT uses `lambdas`",
                ));
            }
        } else {
            match self.lambda {
                Some(l) => unit("lambda", l)?,
                None => {
                    return Err(TrainError::invalid(
                        "lambda",
                        "missing",
                        "pgd-at / pgd-ats need a fixed `lambda`",
                    ))
                }
            }
        }
        if self.widths.is_empty() {
            return Err(TrainError::invalid(
                "widths",
                "[]",
                "need at least one width",
            ));
        }
        for &w in &self.widths {
            if !w.is_finite() || w <= 0.0 || w > 1.0 {
                return Err(TrainError::invalid("widths[]", w, "must be in (0, 1]"));
            }
        }
        if !self.widths.windows(2).all(|w| w[0] < w[1]) {
            return Err(TrainError::invalid(
                "widths",
                format!("{:?}", self.widths),
                "must be strictly increasing",
            ));
        }
        if !self.mode.slimmable() && self.widths != [1.0] {
            return Err(TrainError::invalid(
                "widths",
                format!("{:?}", self.widths),
                "only oats / pgd-ats are slimmable; use [1.0]",
            ));
        }
        if self.mode.slimmable() && self.widths.last() != Some(&1.0) {
            return Err(TrainError::invalid(
                "widths",
                format!("{:?}", self.widths),
                "must include 1.0",
            ));
        }
        if !(2..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(TrainError::invalid(
                "batch_size",
                self.batch_size,
                format!("must be in 2..={MAX_BATCH_SIZE}"),
            ));
        }
        if self.encoding_dim == 0 || self.encoding_dim > 4096 {
            return Err(TrainError::invalid(
                "encoding_dim",
                self.encoding_dim,
                "must be in 1..=4096",
            ));
        }
        if !(self.optim.lr > 0.0 && self.optim.lr <= MAX_LR) {
            return Err(TrainError::invalid(
                "optim.lr",
                self.optim.lr,
                format!("must be in (0, {MAX_LR}]"),
            ));
        }
        if !(0.0..1.0).contains(&self.optim.momentum) {
            return Err(TrainError::invalid(
                "optim.momentum",
                self.optim.momentum,
                "must be in [0, 1)",
            ));
        }
        if !(0.0..1.0).contains(&self.optim.weight_decay) {
            return Err(TrainError::invalid(
                "optim.weight_decay",
                self.optim.weight_decay,
                "must be in [0, 1)",
            ));
        }
        Ok(())
    }

    /// Learning rate at `epoch` (0-based): cosine annealing stepped per epoch, as the
    /// reference trainer does.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match self.optim.schedule {
            LrSchedule::Cosine => {
                let t = epoch as f64 / self.epochs.max(1) as f64;
                0.5 * self.optim.lr * (1.0 + (std::f64::consts::PI * t).cos())
            }
            LrSchedule::Constant => self.optim.lr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = TrainConfig::embedded_default();
        assert_eq!(c.mode, Mode::Oats);
        assert_eq!(c.widths, vec![0.5, 0.75, 1.0]);
    }

    #[test]
    fn parse_error_names_line() {
        let bad = DEFAULT_CONFIG.replace("epsilon: 0.1", "epsilon: [oops");
        let err = TrainConfig::from_yaml(&bad, Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.yaml:"), "{err}");
    }

    #[test]
    fn rejects_bad_values() {
        let base = TrainConfig::embedded_default();
        let mut c = base.clone();
        c.lambdas = vec![0.0, f64::NAN];
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.lambdas = vec![0.0, 1.5];
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.widths = vec![0.5, 0.75];
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.set_mode(Mode::PgdAt);
        assert!(c.validate().is_err(), "pgd-at without lambda");
        c.lambda = Some(0.5);
        assert!(c.validate().is_ok());
    }

    /// The study knobs (issue #18). `channel_multiplier` is left out of a saved config at 1,
    /// so older configs and checkpoints read as before; bad values name the field.
    #[test]
    fn capacity_and_lambda_sampling() {
        let base = TrainConfig::embedded_default();
        assert_eq!(base.channel_multiplier, 1);
        assert_eq!(base.lambda_sampling, LambdaSampling::Ends);
        let yaml = base.to_yaml().unwrap();
        assert!(!yaml.contains("channel_multiplier"), "{yaml}");
        let text = format!("{DEFAULT_CONFIG}\nchannel_multiplier: 4\n")
            .replace("lambda_sampling: ends", "lambda_sampling: robust");
        let c = TrainConfig::from_yaml(&text, Path::new("s.yaml")).unwrap();
        assert_eq!(
            (c.channel_multiplier, c.lambda_sampling),
            (4, LambdaSampling::Robust)
        );
        assert_eq!(
            TrainConfig::from_yaml(&c.to_yaml().unwrap(), Path::new("y")).unwrap(),
            c
        );
        assert!(c.to_yaml().unwrap().contains("lambda_sampling: robust"));
        for bad in ["channel_multiplier: 0", "channel_multiplier: 17"] {
            let err = TrainConfig::from_yaml(&format!("{DEFAULT_CONFIG}\n{bad}\n"), Path::new("s"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("channel_multiplier"), "{err}");
        }
        let err = TrainConfig::from_yaml(
            &DEFAULT_CONFIG.replace("lambda_sampling: ends", "lambda_sampling: middle"),
            Path::new("s"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("middle") && err.contains("ends"), "{err}");
        let mut b = base;
        b.set_mode(Mode::PgdAt);
        b.lambda = Some(1.0);
        b.lambda_sampling = LambdaSampling::Ends;
        let err = b.validate().unwrap_err().to_string();
        assert!(err.contains("lambda_sampling"), "{err}");
    }

    /// The default switch (issue #18): a user's config that leaves `lambda_sampling` out
    /// trains with `ends` (OAT/OATS) or `reference` (the baselines), while a saved config
    /// that leaves it out (a checkpoint from before the switch) still reads as `reference`;
    /// configs are saved with the field from now on, so both round-trip.
    #[test]
    fn lambda_sampling_default_depends_on_who_wrote_the_config() {
        let unnamed: String = DEFAULT_CONFIG
            .lines()
            .filter(|l| !l.starts_with("lambda_sampling:"))
            .collect::<Vec<_>>()
            .join("\n");
        let user = TrainConfig::from_yaml(&unnamed, Path::new("u.yaml")).unwrap();
        assert_eq!(user.lambda_sampling, LambdaSampling::Ends);
        let baseline = unnamed
            .replace("mode: oats", "mode: pgd-at\nlambda: 1.0")
            .replace("widths: [0.5, 0.75, 1.0]", "widths: [1.0]");
        let b = TrainConfig::from_yaml(&baseline, Path::new("b.yaml")).unwrap();
        assert_eq!(b.lambda_sampling, LambdaSampling::Reference);

        // Read as a checkpoint's metadata is: serde alone.
        let saved: TrainConfig = serde_yaml::from_str(&unnamed).unwrap();
        assert_eq!(saved.lambda_sampling, LambdaSampling::Reference);
        let mut reference = user.clone();
        reference.lambda_sampling = LambdaSampling::Reference;
        for c in [&user, &reference, &b] {
            let yaml = c.to_yaml().unwrap();
            assert!(yaml.contains("lambda_sampling:"), "{yaml}");
            assert_eq!(&TrainConfig::from_yaml(&yaml, Path::new("y")).unwrap(), c);
            assert_eq!(&serde_yaml::from_str::<TrainConfig>(&yaml).unwrap(), c);
        }

        // Crossing between a baseline and OAT/OATS takes the new mode's default.
        let mut c = user.clone();
        let to = |mode, lambda: Option<f64>| Overrides {
            mode: Some(mode),
            lambda,
            ..Overrides::default()
        };
        c.apply(&to(Mode::PgdAt, Some(0.4))).unwrap();
        assert_eq!(c.lambda_sampling, LambdaSampling::Reference);
        c.apply(&to(Mode::Oat, None)).unwrap();
        assert_eq!(c.lambda_sampling, LambdaSampling::Ends);
        let mut r = reference;
        r.apply(&to(Mode::Oat, None)).unwrap();
        assert_eq!(
            r.lambda_sampling,
            LambdaSampling::Reference,
            "oats → oat keeps it"
        );
    }

    #[test]
    fn unknown_kind_or_schedule_names_value_and_choices() {
        let bad = DEFAULT_CONFIG.replace("kind: fashion-mnist", "kind: mnist-ish");
        let err = TrainConfig::from_yaml(&bad, Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mnist-ish") && err.contains("fashion-mnist, cifar10"),
            "{err}"
        );
        let bad = DEFAULT_CONFIG.replace("schedule: cosine", "schedule: linear");
        let err = TrainConfig::from_yaml(&bad, Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linear") && err.contains("cosine") && err.contains("constant"),
            "{err}"
        );
    }

    #[test]
    fn yaml_spellings_round_trip() {
        let c = TrainConfig::embedded_default();
        assert_eq!(c.data.kind, DatasetKind::FashionMnist);
        assert_eq!(c.optim.schedule, LrSchedule::Cosine);
        let yaml = c.to_yaml().unwrap();
        assert!(yaml.contains("kind: fashion-mnist"), "{yaml}");
        assert!(yaml.contains("schedule: cosine"), "{yaml}");
        assert_eq!(TrainConfig::from_yaml(&yaml, Path::new("y")).unwrap(), c);
        for (a, s) in [
            (Arch::Small, "small"),
            (Arch::SmallDeep, "small-deep"),
            (Arch::Resnet34, "resnet34"),
            (Arch::Wrn16_8, "wrn16-8"),
            (Arch::Wrn40_2, "wrn40-2"),
        ] {
            assert_eq!(serde_yaml::to_string(&a).unwrap().trim(), s);
            assert_eq!(a.to_string(), s);
            assert_eq!(<Arch as clap::ValueEnum>::from_str(s, false).unwrap(), a);
        }
        for m in [Mode::Oat, Mode::Oats, Mode::PgdAt, Mode::PgdAts] {
            assert_eq!(serde_yaml::to_string(&m).unwrap().trim(), m.as_str());
            assert_eq!(
                <Mode as clap::ValueEnum>::from_str(m.as_str(), false).unwrap(),
                m
            );
        }
        for n in [Norm::Dual, Norm::Normal] {
            assert_eq!(serde_yaml::to_string(&n).unwrap().trim(), n.as_str());
            assert_eq!(
                <Norm as clap::ValueEnum>::from_str(n.as_str(), false).unwrap(),
                n
            );
        }
    }

    #[test]
    fn overrides_apply_and_validate() {
        let mut c = TrainConfig::embedded_default();
        c.apply(&Overrides {
            epochs: Some(3),
            norm: Some(Norm::Normal),
            widths: Some(vec![0.5, 1.0]),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(
            (c.epochs, c.norm, c.widths.clone()),
            (3, Norm::Normal, vec![0.5, 1.0])
        );
        // A baseline needs a λ; switching to it resets the widths.
        let mut b = TrainConfig::embedded_default();
        let err = b
            .apply(&Overrides {
                mode: Some(Mode::PgdAt),
                ..Overrides::default()
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("--lambda"), "{err}");
        let mut b = TrainConfig::embedded_default();
        b.apply(&Overrides {
            mode: Some(Mode::PgdAt),
            lambda: Some(0.2),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!((b.lambda, b.widths.clone()), (Some(0.2), vec![1.0]));
        // Back to a λ-conditioned mode: the baseline's λ is dropped.
        b.apply(&Overrides {
            mode: Some(Mode::Oat),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(b.lambda, None);
        // Invalid values are caught by validate().
        let mut c = TrainConfig::embedded_default();
        assert!(c
            .apply(&Overrides {
                widths: Some(vec![0.5, 0.75]),
                ..Overrides::default()
            })
            .is_err());
    }

    #[test]
    fn cosine_schedule() {
        let c = TrainConfig::embedded_default();
        // 0.5·lr·(1 + cos 0) is exact in floating point.
        assert_eq!(c.lr_at(0), c.optim.lr);
        assert!(c.lr_at(c.epochs - 1) < c.optim.lr);
    }
}
