//! Validation of a parsed [`Manifest`]: every invariant the runtime relies on (ranges, unique
//! ids and (λ, width), sha256 format, layout rules, graph paths confined to the export
//! directory). [`Manifest::load`] and [`Manifest::save`] always run it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use super::CONFIG_TOLERANCE;
use super::MAX_INPUT_ELEMENTS;
use super::{
    ExitsEntry, Layout, Manifest, Metrics, Precision, SCHEMA_VERSION, SCHEMA_VERSION_EXITS,
    SCHEMA_VERSION_V1, SUPPORTED_SCHEMAS,
};
use crate::error::{Result, RuntimeError};
use crate::files::check_relative_file;

/// Largest input dimension (C, H or W) accepted: far above any model this crate serves, low
/// enough that a hostile manifest cannot make the runtime allocate absurd batches. The
/// product C·H·W is bounded too ([`MAX_INPUT_ELEMENTS`]).
const MAX_DIM: usize = 4096;
/// Largest number of output classes accepted, for the same reason.
const MAX_CLASSES: usize = 100_000;
/// Slack when comparing accuracies that must be ordered (RA ≤ SA) or whole counts
/// (SA · samples): the values are exact fractions written as shortest round-trip decimals,
/// so only f64 rounding of one multiplication separates them from the exact value.
const METRIC_TOLERANCE: f64 = 1e-9;

impl Manifest {
    /// Checks every invariant the runtime relies on; `source` names the file in errors.
    pub fn validate(&self, source: &Path) -> Result<()> {
        let invalid = |reason: String| RuntimeError::ManifestInvalid {
            path: source.to_path_buf(),
            reason,
        };
        if !SUPPORTED_SCHEMAS.contains(&self.schema_version) {
            return Err(RuntimeError::UnsupportedSchema {
                path: source.to_path_buf(),
                found: self.schema_version,
                supported: SCHEMA_VERSION_EXITS,
            });
        }
        if self.model_id.trim().is_empty() {
            return Err(invalid("model_id is empty".into()));
        }
        check_sha("source_checkpoint_sha256", &self.source_checkpoint_sha256).map_err(invalid)?;

        let t = &self.training;
        if !(t.epsilon.is_finite() && t.epsilon >= 0.0) {
            return Err(invalid(format!(
                "training.epsilon {} is not a finite value ≥ 0",
                t.epsilon
            )));
        }
        for &l in &t.lambdas {
            check_lambda(l).map_err(|r| invalid(format!("training.lambdas: {r}")))?;
        }
        for &w in &t.widths {
            check_width(w).map_err(|r| invalid(format!("training.widths: {r}")))?;
        }

        if self.input.name.is_empty() || self.output.name.is_empty() {
            return Err(invalid(
                "input.name and output.name must not be empty".into(),
            ));
        }
        if let Some(d) = self
            .input
            .shape
            .iter()
            .find(|&&d| !(1..=MAX_DIM).contains(&d))
        {
            return Err(invalid(format!(
                "input.shape {:?}: dimension {d} is outside 1..={MAX_DIM}",
                self.input.shape
            )));
        }
        let elements = self
            .input
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d));
        if elements.is_none_or(|n| n > MAX_INPUT_ELEMENTS) {
            return Err(invalid(format!(
                "input.shape {:?} holds more values per image than the limit \
                 {MAX_INPUT_ELEMENTS}",
                self.input.shape
            )));
        }
        let [lo, hi] = self.input.value_range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(invalid(format!(
                "input.value_range [{lo}, {hi}] must be finite with min < max"
            )));
        }
        if !(1..=MAX_CLASSES).contains(&self.output.classes) {
            return Err(invalid(format!(
                "output.classes {} is outside 1..={MAX_CLASSES}",
                self.output.classes
            )));
        }
        if !self.class_names.is_empty() && self.class_names.len() != self.output.classes {
            return Err(invalid(format!(
                "{} class_names for {} output classes",
                self.class_names.len(),
                self.output.classes
            )));
        }

        if self.graphs.is_empty() {
            return Err(invalid("graphs is empty".into()));
        }
        let mut ids = HashSet::new();
        let mut configs = Vec::new();
        let mut file_sha: BTreeMap<&str, &str> = BTreeMap::new();
        let mut file_index = HashSet::new();
        let trained_lambdas = t
            .lambdas
            .iter()
            .copied()
            .reduce(f64::min)
            .zip(t.lambdas.iter().copied().reduce(f64::max));
        for g in &self.graphs {
            let bad = |r: String| invalid(format!("graph {:?}: {r}", g.id));
            if g.id.is_empty() {
                return Err(invalid("a graph has an empty id".into()));
            }
            if !ids.insert(g.id.as_str()) {
                return Err(bad("duplicate id".into()));
            }
            check_lambda(g.lambda).map_err(bad)?;
            check_width(g.width).map_err(bad)?;
            // The exporter cannot produce a graph outside what was trained: a λ outside the
            // trained range would be an extrapolation, a width not trained has no weights.
            if let Some((lo, hi)) = trained_lambdas {
                if g.lambda < lo - CONFIG_TOLERANCE || g.lambda > hi + CONFIG_TOLERANCE {
                    return Err(bad(format!(
                        "lambda {} is outside the trained range [{lo}, {hi}] (training.lambdas)",
                        g.lambda
                    )));
                }
            }
            if !t.widths.is_empty()
                && !t
                    .widths
                    .iter()
                    .any(|w| (w - g.width).abs() <= CONFIG_TOLERANCE)
            {
                return Err(bad(format!(
                    "width {} is not one of the trained widths {:?} (training.widths)",
                    g.width, t.widths
                )));
            }
            // The selector's notion of "the same configuration", so that every graph can be
            // selected by its (λ, width) and precision (an int8 graph sits beside its float
            // twin).
            if configs.iter().any(|&(l, w, p): &(f64, f64, Precision)| {
                (l - g.lambda).abs() <= CONFIG_TOLERANCE
                    && (w - g.width).abs() <= CONFIG_TOLERANCE
                    && p == g.precision
            }) {
                return Err(bad(format!(
                    "another {} graph already has lambda {} and width {}",
                    g.precision, g.lambda, g.width
                )));
            }
            configs.push((g.lambda, g.width, g.precision));
            match (g.precision, &g.quantization) {
                (Precision::Float32, None) => {}
                (Precision::Float32, Some(_)) => {
                    return Err(bad("quantization given for a float32 graph".into()))
                }
                (Precision::Int8, None) => {
                    return Err(bad(
                        "precision int8 without `quantization` (how it was made)".into(),
                    ))
                }
                (Precision::Int8, Some(q)) => {
                    if g.file.is_none() && q.activation_ranges.is_empty() {
                        return Err(bad("an int8 configuration without a file needs \
                             quantization.activation_ranges to be derived from the package"
                            .into()));
                    }
                    if let Some((i, r)) = q
                        .activation_ranges
                        .iter()
                        .enumerate()
                        .find(|(_, r)| !(r[0].is_finite() && r[1].is_finite() && r[0] <= r[1]))
                    {
                        return Err(bad(format!(
                            "quantization.activation_ranges[{i}] is {r:?}; a range is a finite \
                             [min, max] with min ≤ max"
                        )));
                    }
                    let agreement_ok = (0.0..=1.0).contains(&q.top1_agreement);
                    let error_ok = q.max_logit_error.is_finite() && q.max_logit_error >= 0.0;
                    if !(agreement_ok && error_ok) {
                        return Err(bad(format!(
                            "quantization: top1_agreement {} must be in [0, 1] and \
                             max_logit_error {} finite and ≥ 0",
                            q.top1_agreement, q.max_logit_error
                        )));
                    }
                }
            }
            if let Some(e) = &g.exits {
                if self.schema_version < SCHEMA_VERSION_EXITS {
                    return Err(bad(format!(
                        "exits need schema_version {SCHEMA_VERSION_EXITS}, not {}",
                        self.schema_version
                    )));
                }
                if self.layout != Layout::Folded || g.is_int8() {
                    return Err(bad(
                        "exits are only exported for float32 configurations in the folded \
                         layout"
                            .into(),
                    ));
                }
                check_exits(e, g.macs).map_err(bad)?;
                let package_format = self.package.as_ref().map(|p| p.format.as_str());
                if g.file.is_none() && package_format != Some(oats_graph::package::FORMAT_EXITS) {
                    return Err(bad(format!(
                        "exits derived from the package need a package of format {:?}, not \
                         {package_format:?}",
                        oats_graph::package::FORMAT_EXITS
                    )));
                }
                for part in e.segments.iter().chain(&e.heads) {
                    match (g.file.is_some(), &part.file, &part.sha256) {
                        (true, Some(file), Some(sha)) => {
                            check_relative_file(file)?;
                            check_sha("exits sha256", sha).map_err(bad)?;
                            if file_sha.insert(file, sha).is_some() {
                                return Err(bad(format!("file {file:?} is listed twice")));
                            }
                        }
                        (false, None, None) => {}
                        (true, ..) => {
                            return Err(bad(
                                "every segment and head of a configuration with a file has a \
                                 file and its sha256"
                                    .into(),
                            ))
                        }
                        (false, ..) => {
                            return Err(bad(
                                "a configuration derived from the package has no segment or \
                                 head files"
                                    .into(),
                            ))
                        }
                    }
                }
            }
            let (file, sha256) = match (&g.file, &g.sha256) {
                (Some(f), Some(s)) => (f.as_str(), s.as_str()),
                (Some(_), None) => return Err(bad("file without sha256".into())),
                (None, Some(_)) => return Err(bad("sha256 without file".into())),
                (None, None) => {
                    // Derived from the package when selected: needs one, and has no λ table
                    // row.
                    if self.package.is_none() {
                        return Err(bad(format!(
                            "no file, and no package to derive it from (a configuration \
                             without a file needs schema_version {SCHEMA_VERSION} and a \
                             package entry)"
                        )));
                    }
                    if g.lambda_index.is_some() {
                        return Err(bad(
                            "lambda_index without file (a derived configuration is folded)".into(),
                        ));
                    }
                    check_metrics(&g.metrics).map_err(bad)?;
                    continue;
                }
            };
            check_relative_file(file)?;
            check_sha("sha256", sha256).map_err(bad)?;
            match (self.layout, g.lambda_index) {
                (Layout::SharedWeights, None) => {
                    return Err(bad("layout shared_weights requires lambda_index".into()))
                }
                (Layout::Folded, Some(_)) => {
                    return Err(bad(
                        "lambda_index is only allowed with layout shared_weights".into(),
                    ))
                }
                (Layout::SharedWeights, Some(k)) => {
                    // Two λ on one row of a λ table would serve the same weights under two
                    // names.
                    if !file_index.insert((file, k)) {
                        return Err(bad(format!(
                            "another graph already uses lambda_index {k} of file {file:?}"
                        )));
                    }
                }
                (Layout::Folded, None) => {}
            }
            if let Some(prev) = file_sha.insert(file, sha256) {
                if self.layout == Layout::Folded {
                    return Err(bad(format!(
                        "file {file:?} is used by several graphs, which only layout shared_weights allows"
                    )));
                }
                if prev != sha256 {
                    return Err(bad(format!(
                        "file {file:?} is listed with two different sha256"
                    )));
                }
            }
            check_metrics(&g.metrics).map_err(bad)?;
        }
        if let Some(r) = &self.reference {
            check_relative_file(&r.file)?;
            check_sha("reference.sha256", &r.sha256).map_err(invalid)?;
        }
        if let Some(p) = &self.package {
            if self.schema_version == SCHEMA_VERSION_V1 {
                return Err(invalid(format!(
                    "a package entry needs schema_version {SCHEMA_VERSION}, not \
                     {SCHEMA_VERSION_V1}"
                )));
            }
            check_relative_file(&p.file)?;
            check_sha("package.sha256", &p.sha256).map_err(invalid)?;
            if !oats_graph::package::FORMATS.contains(&p.format.as_str()) {
                return Err(invalid(format!(
                    "package.format {:?} is not supported (expected one of {:?})",
                    p.format,
                    oats_graph::package::FORMATS
                )));
            }
            for &l in &p.lambdas {
                check_lambda(l).map_err(|r| invalid(format!("package.lambdas: {r}")))?;
            }
            for &w in &p.widths {
                check_width(w).map_err(|r| invalid(format!("package.widths: {r}")))?;
            }
            // The package is the trained model: it holds what was trained, no more, no less.
            if !same_values(&p.lambdas, &t.lambdas) {
                return Err(invalid(format!(
                    "package.lambdas {:?} differ from training.lambdas {:?}",
                    p.lambdas, t.lambdas
                )));
            }
            if !same_values(&p.widths, &t.widths) {
                return Err(invalid(format!(
                    "package.widths {:?} differ from training.widths {:?}",
                    p.widths, t.widths
                )));
            }
        }
        Ok(())
    }
}

/// The shape of a configuration's exits: parts and MACs that agree with each other, and
/// thresholds that can route.
fn check_exits(e: &ExitsEntry, macs: u64) -> Result<(), String> {
    let n = e.after_blocks.len();
    if n == 0 || !e.after_blocks.windows(2).all(|p| p[0] < p[1]) || e.after_blocks[0] == 0 {
        return Err(format!(
            "exits.after_blocks {:?} must be strictly increasing block numbers ≥ 1",
            e.after_blocks
        ));
    }
    if let Some(f) = e.features.iter().find(|f| {
        f.iter().any(|&d| !(1..=MAX_DIM).contains(&d))
            || f.iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .is_none_or(|v| v > MAX_INPUT_ELEMENTS)
    }) {
        return Err(format!("exits.features {f:?} is not a bounded [C, H, W]"));
    }
    if e.segments.len() != n + 1
        || e.heads.len() != n
        || e.exit_macs.len() != n + 1
        || e.features.len() != n
    {
        return Err(format!(
            "{n} side exits need {} segments, {n} heads, {} exit_macs and {n} features, not \
             {}, {}, {} and {}",
            n + 1,
            n + 1,
            e.segments.len(),
            e.heads.len(),
            e.exit_macs.len(),
            e.features.len()
        ));
    }
    let body: u64 = e.segments.iter().map(|p| p.macs).sum();
    if body != macs {
        return Err(format!(
            "the segments' MACs sum to {body}, the whole graph has {macs}"
        ));
    }
    let mut acc = 0u64;
    for (k, seg) in e.segments.iter().enumerate() {
        acc = acc.saturating_add(seg.macs);
        acc = acc.saturating_add(e.heads.get(k).map_or(0, |h| h.macs));
        if e.exit_macs[k] != acc {
            return Err(format!(
                "exits.exit_macs[{k}] is {}, its segments and heads give {acc}",
                e.exit_macs[k]
            ));
        }
    }
    if let Some(r) = &e.routing {
        if r.thresholds.len() != n || r.exit_mix.len() != n + 1 {
            return Err(format!(
                "exits.routing has {} thresholds and {} exit_mix values for {n} side exits",
                r.thresholds.len(),
                r.exit_mix.len()
            ));
        }
        if let Some(t) = r.thresholds.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
            return Err(format!(
                "exits.routing.thresholds holds {t}; an entropy threshold is finite and ≥ 0"
            ));
        }
        let sum: f64 = r.exit_mix.iter().sum();
        if r.exit_mix.iter().any(|m| !(0.0..=1.0).contains(m)) || (sum - 1.0).abs() > 1e-6 {
            return Err(format!(
                "exits.routing.exit_mix {:?} must be fractions summing to 1",
                r.exit_mix
            ));
        }
        if !(r.mean_macs.is_finite() && r.mean_macs >= 0.0) {
            return Err(format!(
                "exits.routing.mean_macs {} is not finite and ≥ 0",
                r.mean_macs
            ));
        }
        for (field, v) in [("sa", r.sa), ("ra_worst", r.ra_worst)] {
            if let Some(v) = v.filter(|v| !(0.0..=1.0).contains(v)) {
                return Err(format!("exits.routing.{field} {v} is not in [0, 1]"));
            }
        }
        if let (Some(sa), Some(ra)) = (r.sa, r.ra_worst) {
            if ra > sa + METRIC_TOLERANCE {
                return Err(format!("exits.routing.ra_worst {ra} is above its sa {sa}"));
            }
        }
        if let Some((k, v)) = r
            .latency_ms
            .iter()
            .find(|(_, v)| !(v.is_finite() && **v > 0.0))
        {
            return Err(format!(
                "exits.routing.latency_ms[{k:?}] {v} is not a finite time > 0"
            ));
        }
    }
    Ok(())
}

/// The same values in the same order, each within [`CONFIG_TOLERANCE`].
pub(crate) fn same_values(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= CONFIG_TOLERANCE)
}

fn check_lambda(l: f64) -> Result<(), String> {
    if l.is_finite() && (0.0..=1.0).contains(&l) {
        Ok(())
    } else {
        Err(format!("lambda {l} is not a finite value in [0, 1]"))
    }
}

fn check_width(w: f64) -> Result<(), String> {
    if w.is_finite() && w > 0.0 && w <= 1.0 {
        Ok(())
    } else {
        Err(format!("width {w} is not a finite value in (0, 1]"))
    }
}

fn check_sha(field: &str, s: &str) -> Result<(), String> {
    if oats_io::is_sha256_hex(s) {
        Ok(())
    } else {
        Err(format!("{field} {s:?} is not 64 hexadecimal characters"))
    }
}

fn check_metrics(m: &Metrics) -> Result<(), String> {
    let unit = |name: &str, v: f64| {
        if v.is_finite() && (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(format!("metrics.{name} {v} is not in [0, 1]"))
        }
    };
    if let Some(v) = m.sa {
        unit("sa", v)?;
    }
    if let Some(v) = m.ra_worst {
        unit("ra_worst", v)?;
    }
    for (k, &v) in &m.ra {
        unit(&format!("ra.{k}"), v)?;
    }
    check_accuracy_consistency(m)?;
    for (k, s) in &m.latency_ms {
        if ![s.p50, s.p90, s.p99]
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0)
        {
            return Err(format!(
                "metrics.latency_ms.{k} holds a negative or non-finite value"
            ));
        }
        if !(s.p50 <= s.p90 && s.p90 <= s.p99) {
            return Err(format!(
                "metrics.latency_ms.{k}: percentiles must not decrease (p50 {} ≤ p90 {} ≤ p99 {})",
                s.p50, s.p90, s.p99
            ));
        }
    }
    if let Some(e) = m.epsilon {
        if !(e.is_finite() && e >= 0.0) {
            return Err(format!("metrics.epsilon {e} is not a finite value ≥ 0"));
        }
    }
    Ok(())
}

/// What the evaluator's definitions imply (train/src/eval.rs): every accuracy is a count over
/// `samples`; a sample is robust to an attack only if it is also correct when clean (RA ≤
/// SA), and worst-case robust only if robust to every attack (`ra_worst` ≤ each RA).
fn check_accuracy_consistency(m: &Metrics) -> Result<(), String> {
    let accuracies: Vec<(String, f64)> =
        m.sa.map(|v| ("sa".to_string(), v))
            .into_iter()
            .chain(m.ra.iter().map(|(k, &v)| (format!("ra.{k}"), v)))
            .chain(m.ra_worst.map(|v| ("ra_worst".to_string(), v)))
            .collect();
    if accuracies.is_empty() {
        return Ok(());
    }
    let n = match m.samples {
        Some(n) if n > 0 => n as f64,
        _ => {
            return Err(
                "metrics hold accuracies but no metrics.samples > 0 they were measured on".into(),
            )
        }
    };
    for (name, v) in &accuracies {
        let count = v * n;
        if (count - count.round()).abs() > METRIC_TOLERANCE * n.max(1.0) {
            return Err(format!(
                "metrics.{name} {v} is not a whole number of the {n} samples"
            ));
        }
    }
    if let Some(sa) = m.sa {
        for (name, v) in accuracies.iter().filter(|(k, _)| k != "sa") {
            if *v > sa + METRIC_TOLERANCE {
                return Err(format!(
                    "metrics.{name} {v} exceeds metrics.sa {sa} (a robust sample is also correct when clean)"
                ));
            }
        }
    }
    if let Some(worst) = m.ra_worst {
        for (k, &v) in &m.ra {
            if worst > v + METRIC_TOLERANCE {
                return Err(format!(
                    "metrics.ra_worst {worst} exceeds metrics.ra.{k} {v} (the worst case is over every attack)"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::sha256_hex;

    #[test]
    fn sha_format() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(check_sha("x", &"A".repeat(64)).is_ok());
        assert!(check_sha("x", &"g".repeat(64)).is_err());
        assert!(check_sha("x", &"a".repeat(63)).is_err());
    }
}
