//! The package: everything a device needs to derive every (λ, width) of a model, with each
//! weight stored once, as one safetensors file.
//!
//! Format (`oats-package/1`), one safetensors file of F32 tensors:
//! * metadata: one entry, `oats_package`, a JSON object
//!   `{"format": "oats-package/1", "architecture": {…}, "lambdas": […]}`: the structure
//!   ([`Architecture`], with every layer's sizes and BN ε) and the training λ. One entry
//!   because safetensors writes its metadata map in hash order: with one key the bytes, and
//!   so the sha256, of a package are a function of the model alone.
//! * tensors, named by their position in the structure ([`Architecture`]'s walk):
//!   `stem.weight`, `blocks.{i}.{conv1,conv2,shortcut}.weight` ([out, in, k, k], full width),
//!   `{site}.w{width index}.{clean|adv|bn}.{weight,bias,running_mean,running_var}` (at that
//!   width's channels), `{site}.film.{fc1_weight,fc1_bias,fc2_weight,fc2_bias}`,
//!   `fc.weight`, `fc.bias`, and `lambda_encoding` ([K, D], FiLM-conditioned models only).
//! * `oats-package/2` ([`FORMAT_EXITS`]) is the same with side exits: `architecture.exits`
//!   and, per exit after block k, `exits.{k}.conv.weight`, the site `exits.{k}.norm` and
//!   `exits.{k}.fc.{weight,bias}`. A plain model is still written as `oats-package/1`.
//!   Narrow widths are slices of the full-width tensors, so nothing is stored per width
//!   except the switchable BNs, and nothing per λ except the encoding rows.
//!
//! Loading checks everything before anything is derived: the file's and the header's size,
//! the format string, every declared size against [`crate::limits`] and against what flows
//! into each layer, the exact set of tensors with their dtype and shape, finite values and
//! non-negative BN variances. A corrupt or hostile file is an [`Error`], never a panic.
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::affine::{self, Affine};
use crate::arch::{Architecture, SlotKind, SAME_SETTING_TOL};
use crate::encoding::{Condition, Encoding};
use crate::error::{clip, Error, Result};
use crate::limits::{MAX_HEADER_BYTES, MAX_LAMBDAS, MAX_PACKAGE_BYTES};

/// Format and version of a package without side exits: what every plain model writes, so
/// devices that predate exits keep reading them.
pub const FORMAT: &str = "oats-package/1";
/// Format of a package with side exits (`architecture.exits`, tensors `exits.{k}.…`): a
/// reader that predates exits refuses it by its format instead of dropping the exits.
pub const FORMAT_EXITS: &str = "oats-package/2";
/// The formats this reader accepts.
pub const FORMATS: [&str; 2] = [FORMAT, FORMAT_EXITS];
/// The package's file name in an export directory.
pub const FILE_NAME: &str = "package.safetensors";
/// The metadata entry that holds the package's JSON.
pub const METADATA_KEY: &str = "oats_package";
/// The tensor holding the λ encoding rows.
pub const ENCODING_TENSOR: &str = "lambda_encoding";

/// The JSON of the metadata entry, as written.
#[derive(Serialize)]
struct MetaOut<'a> {
    format: &'a str,
    architecture: &'a Architecture,
    lambdas: &'a [f64],
}

/// The JSON of the metadata entry, as read (after its format was checked).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaIn {
    #[allow(dead_code)] // checked by `FormatOnly` first
    format: String,
    architecture: Architecture,
    lambdas: Vec<f64>,
}

/// Only the format, read first so a future version says so instead of "unknown field".
#[derive(Deserialize)]
struct FormatOnly {
    format: String,
}

/// A validated model: its structure with the tensors, and its λ encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    arch: Architecture,
    encoding: Encoding,
}

impl Package {
    /// A package from parts (the exporter builds one from the trainer's tensors). Everything
    /// is checked as for a loaded package: the structure ([`Architecture::validate`]), every
    /// tensor's length for its place, finite values, non-negative BN variances, and the λ
    /// list (strictly increasing in [0, 1]; one value when there is no encoding) with its
    /// rows ([K, D] when `encoding_dim` is set).
    pub fn new(
        architecture: Architecture,
        lambdas: Vec<f64>,
        encoding_rows: Option<Vec<f32>>,
    ) -> Result<Package> {
        architecture.validate()?;
        let encoding = check_encoding(&architecture, lambdas, encoding_rows)?;
        check_bn_counts(&architecture)?;
        for slot in architecture.slots() {
            let data = slot
                .data
                .ok_or_else(|| Error::tensor(&slot.name, "missing"))?;
            let want: usize = slot.shape.iter().product();
            if data.len() != want {
                return Err(Error::tensor(
                    &slot.name,
                    format!(
                        "{} values, its shape {:?} needs {want}",
                        data.len(),
                        slot.shape
                    ),
                ));
            }
            check_values(&slot.name, data, slot.kind)?;
        }
        Ok(Package {
            arch: architecture,
            encoding,
        })
    }

    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// The format this package is written in: [`FORMAT`], or [`FORMAT_EXITS`] with exits.
    pub fn format(&self) -> &'static str {
        if self.arch.exits.is_empty() {
            FORMAT
        } else {
            FORMAT_EXITS
        }
    }

    /// The blocks the side exits follow (1-based), in order; empty for a plain model.
    pub fn exit_blocks(&self) -> Vec<usize> {
        self.arch.exits.iter().map(|e| e.after_block).collect()
    }

    pub fn encoding(&self) -> &Encoding {
        &self.encoding
    }

    /// The training λ values.
    pub fn lambdas(&self) -> &[f64] {
        &self.encoding.lambdas
    }

    /// The trained widths.
    pub fn widths(&self) -> &[f64] {
        &self.arch.widths
    }

    /// Input [C, H, W].
    pub fn input_shape(&self) -> [usize; 3] {
        self.arch.input
    }

    pub fn classes(&self) -> usize {
        self.arch.classifier.classes
    }

    /// Whether any λ in the trained range may be asked for (FiLM-conditioned), rather than
    /// the one λ the model was trained for.
    pub fn conditioned(&self) -> bool {
        self.encoding.rows.is_some()
    }

    /// Number of f32 values stored (all tensors, the encoding included).
    pub fn values(&self) -> u64 {
        let enc = self.encoding.rows.as_ref().map_or(0, Vec::len) as u64;
        self.arch
            .slots()
            .iter()
            .map(|s| s.data.map_or(0, Vec::len) as u64)
            .sum::<u64>()
            + enc
    }

    /// The encoding and BN branch of `lambda` ([`Encoding::condition`]): an error for NaN,
    /// λ outside [0, 1] or the trained range, or another λ than a one-λ model's.
    pub fn condition(&self, lambda: f64) -> Result<Condition> {
        self.encoding.condition(lambda, self.arch.branches == 2)
    }

    /// Index of a trained width; an error naming the trained widths otherwise.
    pub fn width_index(&self, width: f64) -> Result<usize> {
        self.arch.width_index(width)
    }

    /// Names of the normalisation sites, in network order (what [`Package::affine`] takes).
    pub fn site_names(&self) -> Vec<String> {
        self.arch.sites().into_iter().map(|(n, _)| n).collect()
    }

    /// The per-channel affine (scale, shift) of site `site` at (λ, width): the FiLM MLP on
    /// λ's encoding, then the BN of λ's branch at that width ([`crate::affine`]), each of
    /// `channels_at(C, width)` values.
    pub fn affine(&self, site: &str, lambda: f64, width: f64) -> Result<Affine> {
        let sites = self.arch.sites();
        let Some((_, s)) = sites.iter().find(|(n, _)| n == site) else {
            return Err(Error::UnknownSite {
                name: clip(site),
                available: clip(&self.site_names().join(", ")),
            });
        };
        let cond = self.condition(lambda)?;
        let wi = self.width_index(width)?;
        self.site_affine(s, &cond, wi)
    }

    /// The affine of one site for a condition already resolved (the lowering's hot path).
    pub(crate) fn site_affine(
        &self,
        site: &crate::arch::NormSite,
        cond: &Condition,
        wi: usize,
    ) -> Result<Affine> {
        let per_width = site.bn.get(wi).ok_or_else(|| Error::Width {
            value: self.arch.widths.get(wi).copied().unwrap_or(f64::NAN),
            available: self.arch.widths.clone(),
        })?;
        // A single-BN site serves both branches (the trainer clamps the same way).
        let bn = per_width
            .get(cond.branch as usize)
            .or_else(|| per_width.last())
            .ok_or_else(|| Error::Request("a site without BN".into()))?;
        let film = match (&site.film, &cond.encoding) {
            (Some(f), Some(e)) => Some((f, site.channels, e.as_slice())),
            _ => None,
        };
        let a = affine::site_affine(bn, self.arch.bn_eps, film);
        if !a.is_finite() {
            return Err(Error::NonFinite {
                what: "a normalisation affine".into(),
                lambda: cond.lambda,
                width: self.arch.widths.get(wi).copied().unwrap_or(f64::NAN),
            });
        }
        Ok(a)
    }

    /// The package as the bytes of one safetensors file (deterministic: the same model gives
    /// the same bytes).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let meta = serde_json::to_string(&MetaOut {
            format: self.format(),
            architecture: &self.arch,
            lambdas: &self.encoding.lambdas,
        })
        .map_err(|e| Error::Serialize(e.to_string()))?;
        let le = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .arch
            .slots()
            .into_iter()
            .map(|s| (s.name, s.shape, s.data.map_or_else(Vec::new, |d| le(d))))
            .collect();
        if let Some(rows) = &self.encoding.rows {
            raw.push((
                ENCODING_TENSOR.into(),
                vec![self.encoding.lambdas.len(), self.encoding.dim],
                le(rows),
            ));
        }
        let views = raw
            .iter()
            .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Serialize(e.to_string()))?;
        let md = std::collections::HashMap::from([(METADATA_KEY.to_string(), meta)]);
        safetensors::serialize(views, Some(md)).map_err(|e| Error::Serialize(e.to_string()))
    }

    /// Reads a package from a regular file of at most [`MAX_PACKAGE_BYTES`]; errors name the
    /// file. (A device that checks a sha256 first reads the bytes itself and calls
    /// [`Package::from_bytes`] on exactly those.)
    pub fn load(path: impl AsRef<Path>) -> Result<Package> {
        let path = path.as_ref();
        read_limited(path)
            .and_then(|b| Package::from_bytes(&b))
            .map_err(|e| e.in_file(path))
    }

    /// Parses and validates the bytes of a package file (see the module docs for what is
    /// checked).
    pub fn from_bytes(bytes: &[u8]) -> Result<Package> {
        if bytes.len() as u64 > MAX_PACKAGE_BYTES {
            return Err(Error::TooLarge {
                what: "a package",
                bytes: bytes.len() as u64,
                limit: MAX_PACKAGE_BYTES,
            });
        }
        let Some(head) = bytes.get(..8) else {
            return Err(Error::format(format!(
                "{} bytes, shorter than a safetensors header",
                bytes.len()
            )));
        };
        let mut n = [0u8; 8];
        n.copy_from_slice(head);
        let header = u64::from_le_bytes(n);
        if header > MAX_HEADER_BYTES {
            return Err(Error::TooLarge {
                what: "the package header",
                bytes: header,
                limit: MAX_HEADER_BYTES,
            });
        }
        let (_, metadata) = SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::format(format!("not a readable safetensors file ({e})")))?;
        let text = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| {
                Error::format(format!(
                    "no {METADATA_KEY:?} metadata (not written by oats-export?)"
                ))
            })?;
        let format: FormatOnly = serde_json::from_str(text)
            .map_err(|e| Error::format(format!("metadata {METADATA_KEY:?}: {e}")))?;
        if !FORMATS.contains(&format.format.as_str()) {
            return Err(Error::format(format!(
                "format {:?} is not supported (expected one of {FORMATS:?})",
                clip(&format.format)
            )));
        }
        let meta: MetaIn = serde_json::from_str(text)
            .map_err(|e| Error::format(format!("metadata {METADATA_KEY:?}: {e}")))?;
        let mut arch = meta.architecture;
        let want = if arch.exits.is_empty() {
            FORMAT
        } else {
            FORMAT_EXITS
        };
        if format.format != want {
            return Err(Error::format(format!(
                "format {:?} with {} side exits (expected {want:?})",
                clip(&format.format),
                arch.exits.len()
            )));
        }
        arch.validate()?;
        check_lambdas(&meta.lambdas)?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::format(format!("not a readable safetensors file ({e})")))?;
        let encoding_dims = arch.encoding_dim.map(|d| vec![meta.lambdas.len(), d]);
        // The exact set of tensors: nothing missing, nothing foreign.
        let mut expected: BTreeSet<String> = arch.slots().into_iter().map(|s| s.name).collect();
        if encoding_dims.is_some() {
            expected.insert(ENCODING_TENSOR.into());
        }
        if let Some(extra) = st.names().into_iter().find(|n| !expected.contains(*n)) {
            return Err(Error::tensor(extra, "is not part of this architecture"));
        }
        arch.prepare_slots();
        for slot in arch.slots_mut() {
            let data = read_tensor(&st, &slot.name, &slot.shape, slot.kind)?;
            if let Some(d) = slot.data {
                *d = data;
            }
        }
        let rows = match &encoding_dims {
            Some(dims) => Some(read_tensor(&st, ENCODING_TENSOR, dims, SlotKind::Plain)?),
            None => None,
        };
        let encoding = check_encoding(&arch, meta.lambdas, rows)?;
        Ok(Package { arch, encoding })
    }
}

/// The bytes of `path`, a regular file of at most [`MAX_PACKAGE_BYTES`] (the length is checked
/// before reading, and the read is capped in case the file grows meanwhile).
fn read_limited(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(Error::Read)?;
    let meta = f.metadata().map_err(Error::Read)?;
    if !meta.is_file() {
        return Err(Error::Read(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    if meta.len() > MAX_PACKAGE_BYTES {
        return Err(Error::TooLarge {
            what: "a package",
            bytes: meta.len(),
            limit: MAX_PACKAGE_BYTES,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_PACKAGE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Error::Read)?;
    Ok(bytes)
}

/// Tensor `name` of `st`: F32 of exactly `shape`, with values allowed for `kind`.
fn read_tensor(
    st: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
    kind: SlotKind,
) -> Result<Vec<f32>> {
    let view = st
        .tensor(name)
        .map_err(|_| Error::tensor(name, "missing"))?;
    if view.dtype() != Dtype::F32 {
        return Err(Error::tensor(
            name,
            format!("dtype {:?}, expected F32", view.dtype()),
        ));
    }
    if view.shape() != shape {
        return Err(Error::tensor(
            name,
            format!(
                "shape {}, the architecture needs {shape:?}",
                clip(&format!("{:?}", view.shape()))
            ),
        ));
    }
    let data: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    check_values(name, &data, kind)?;
    Ok(data)
}

/// Finite values everywhere (a NaN weight would make every prediction silently wrong), and
/// no negative BN variance (its √(σ² + ε) would be NaN).
fn check_values(name: &str, data: &[f32], kind: SlotKind) -> Result<()> {
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::tensor(
            name,
            format!("value {} at index {i} is not finite", data[i]),
        ));
    }
    if kind == SlotKind::Variance {
        if let Some(i) = data.iter().position(|&v| v < 0.0) {
            return Err(Error::tensor(
                name,
                format!("running variance {} at index {i} is negative", data[i]),
            ));
        }
    }
    Ok(())
}

/// Every site holds exactly one BN per (width, branch): extra entries would be carried and
/// never used, which means the structure and the data disagree.
fn check_bn_counts(arch: &Architecture) -> Result<()> {
    for (name, s) in arch.sites() {
        let ok = s.bn.len() == arch.widths.len() && s.bn.iter().all(|b| b.len() == arch.branches);
        if !ok {
            return Err(Error::invalid(
                format!("{name}.bn"),
                format!("{:?}", s.bn.iter().map(Vec::len).collect::<Vec<_>>()),
                format!(
                    "need {} widths × {} branches",
                    arch.widths.len(),
                    arch.branches
                ),
            ));
        }
    }
    Ok(())
}

/// The λ list: 1..=[`MAX_LAMBDAS`] values, finite, in [0, 1], strictly increasing.
fn check_lambdas(lambdas: &[f64]) -> Result<()> {
    if lambdas.is_empty() || lambdas.len() > MAX_LAMBDAS {
        return Err(Error::invalid(
            "lambdas",
            format!("{} values", lambdas.len()),
            format!("need 1..={MAX_LAMBDAS}"),
        ));
    }
    for &l in lambdas {
        crate::encoding::check_lambda(l)
            .map_err(|_| Error::invalid("lambdas[]", l, "must be a finite number in [0, 1]"))?;
    }
    if !lambdas.windows(2).all(|p| p[1] - p[0] >= SAME_SETTING_TOL) {
        return Err(Error::invalid(
            "lambdas",
            format!("{lambdas:?}"),
            "must be strictly increasing",
        ));
    }
    Ok(())
}

/// The λ list and encoding rows, checked against the architecture.
fn check_encoding(
    arch: &Architecture,
    lambdas: Vec<f64>,
    rows: Option<Vec<f32>>,
) -> Result<Encoding> {
    check_lambdas(&lambdas)?;
    match (arch.encoding_dim, rows) {
        (Some(d), Some(rows)) => {
            let want = lambdas.len() * d;
            if rows.len() != want {
                return Err(Error::tensor(
                    ENCODING_TENSOR,
                    format!(
                        "{} values, need {} λ × {d} = {want}",
                        rows.len(),
                        lambdas.len()
                    ),
                ));
            }
            check_values(ENCODING_TENSOR, &rows, SlotKind::Plain)?;
            Ok(Encoding {
                lambdas,
                rows: Some(rows),
                dim: d,
            })
        }
        (None, None) => {
            if lambdas.len() != 1 {
                return Err(Error::invalid(
                    "lambdas",
                    format!("{lambdas:?}"),
                    "a model without a λ encoding is trained for exactly one λ",
                ));
            }
            Ok(Encoding {
                lambdas,
                rows: None,
                dim: 0,
            })
        }
        (Some(_), None) => Err(Error::tensor(
            ENCODING_TENSOR,
            "missing (the architecture declares an encoding_dim)",
        )),
        (None, Some(_)) => Err(Error::tensor(
            ENCODING_TENSOR,
            "present, but the architecture declares no encoding_dim",
        )),
    }
}
