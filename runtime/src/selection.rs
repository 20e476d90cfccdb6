//! Choosing a configuration from a manifest. Pure functions over [`Manifest`], so the policy
//! can be tested (and reasoned about) without loading a single graph.

use crate::error::{Result, RuntimeError};
use crate::manifest::{GraphEntry, Manifest};

/// Re-exported where selection is used; defined with the manifest schema it is about.
pub use crate::manifest::CONFIG_TOLERANCE;

/// Rank given to a missing tie-breaking metric (SA or RA): below every accuracy in [0, 1], so a
/// graph lacking it loses the tie rather than being excluded.
const MISSING_METRIC_RANK: f64 = -1.0;

/// How to pick a configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// The graph with this manifest id.
    Id(String),
    /// Exactly this (λ, width), within [`CONFIG_TOLERANCE`]. Without a package it must be a
    /// configuration of the manifest; with one, [`crate::OatsModel::select`] derives any other
    /// λ in the trained range at a trained width (as [`Selector::Derived`]).
    Explicit {
        /// Robustness weight in [0, 1].
        lambda: f64,
        /// Width multiplier in (0, 1].
        width: f64,
    },
    /// This width, and the λ closest to the requested one (ties go to the larger, i.e. more
    /// robust, λ). The requested λ must lie within the λ exported at that width: a λ outside
    /// that range is refused, never clamped to its end. Only configurations the manifest lists
    /// are candidates: nothing is derived for the exact λ.
    NearestLambda {
        /// The λ wanted; the closest one the manifest lists at `width` is taken.
        lambda: f64,
        /// Matched exactly (within [`CONFIG_TOLERANCE`]).
        width: f64,
    },
    /// The best graph under constraints on calibrated metrics.
    Policy(Policy),
    /// This (λ, width) derived from the export's package (schema v2) even where a graph
    /// file exists: any λ in the trained range, any trained width. Only
    /// [`crate::OatsModel`] serves it ([`select`](crate::OatsModel::select),
    /// [`prepare`](crate::OatsModel::prepare),
    /// [`infer_selected`](crate::OatsModel::infer_selected)); [`Selector::resolve`], which picks
    /// among the manifest's graphs, refuses it.
    Derived {
        /// Any λ within the range of `training.lambdas`.
        lambda: f64,
        /// One of the trained widths.
        width: f64,
    },
}

/// Constraints on the metrics recorded in the manifest, and what to optimise among the graphs
/// that satisfy them. A constraint on a metric the manifest lacks is an error
/// ([`RuntimeError::NoneQualifies`]), never silently ignored: a policy that cannot be checked
/// must not pick a graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Minimum standard accuracy (`metrics.sa`).
    pub min_sa: Option<f64>,
    /// Minimum robust accuracy ([`crate::Metrics::robust_accuracy`]: `ra_worst`, else the
    /// minimum over `ra`).
    pub min_ra: Option<f64>,
    /// Maximum multiply-accumulates per image (`macs` of the manifest entry): a cost bound
    /// that needs no calibration.
    pub max_macs: Option<u64>,
    /// Maximum median (p50) latency at `latency_key`.
    pub max_latency_ms: Option<f64>,
    /// Which `metrics.latency_ms` entry latency constraints and [`Objective::MinLatency`] read,
    /// e.g. "tract/b1": latency depends on backend and batch size.
    pub latency_key: String,
    /// What to optimise among the configurations that meet every constraint.
    pub objective: Objective,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_sa: None,
            min_ra: None,
            max_macs: None,
            max_latency_ms: None,
            latency_key: crate::manifest::latency_key("tract", 1),
            objective: Objective::MaxRa,
        }
    }
}

/// What a [`Policy`] optimises. Also the `--objective` values of `oats-run` (clap
/// `ValueEnum`: `max-ra`, `max-sa`, `min-latency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[cfg_attr(feature = "cli", value(rename_all = "kebab-case"))]
pub enum Objective {
    /// Highest robust accuracy (ties: higher SA, then fewer MACs).
    MaxRa,
    /// Highest standard accuracy (ties: higher RA, then fewer MACs).
    MaxSa,
    /// Lowest p50 latency at `latency_key` (ties: fewer MACs).
    MinLatency,
}

impl Selector {
    /// Index into `manifest.graphs` of the chosen graph.
    pub fn resolve(&self, manifest: &Manifest) -> Result<usize> {
        let graphs = &manifest.graphs;
        match self {
            Selector::Id(id) => manifest
                .graph_index(id)
                .ok_or_else(|| no_such(format!("id {id:?}"), graphs)),
            Selector::Explicit { lambda, width } => {
                check_request(*lambda, *width)?;
                graphs
                    .iter()
                    .position(|g| !g.is_int8() && same(g.lambda, *lambda) && same(g.width, *width))
                    .ok_or_else(|| no_such(format!("lambda {lambda}, width {width}"), graphs))
            }
            Selector::NearestLambda { lambda, width } => {
                check_request(*lambda, *width)?;
                let at_width = || {
                    graphs
                        .iter()
                        .filter(|g| !g.is_int8() && same(g.width, *width))
                        .map(|g| g.lambda)
                };
                if let (Some(lo), Some(hi)) =
                    (at_width().reduce(f64::min), at_width().reduce(f64::max))
                {
                    if *lambda < lo - CONFIG_TOLERANCE || *lambda > hi + CONFIG_TOLERANCE {
                        return Err(RuntimeError::invalid_argument(
                            "lambda",
                            format!(
                                "{lambda} is outside the λ range [{lo}, {hi}] exported at width \
                                 {width}; the nearest λ would be an extrapolation"
                            ),
                        ));
                    }
                }
                let mut best: Option<usize> = None;
                for (i, g) in graphs.iter().enumerate() {
                    if g.is_int8() || !same(g.width, *width) {
                        continue;
                    }
                    let d = (g.lambda - lambda).abs();
                    let better = match best {
                        None => true,
                        Some(b) => {
                            let db = (graphs[b].lambda - lambda).abs();
                            d < db - CONFIG_TOLERANCE
                                || ((d - db).abs() <= CONFIG_TOLERANCE
                                    && g.lambda > graphs[b].lambda)
                        }
                    };
                    if better {
                        best = Some(i);
                    }
                }
                best.ok_or_else(|| no_such(format!("width {width} (any lambda)"), graphs))
            }
            Selector::Policy(p) => p.resolve(graphs),
            Selector::Derived { lambda, width } => Err(RuntimeError::invalid_argument(
                "selector",
                format!(
                    "lambda {lambda}, width {width} derived from the package is not a graph of \
                     the manifest; OatsModel::select serves it"
                ),
            )),
        }
    }
}

impl Policy {
    fn resolve(&self, graphs: &[GraphEntry]) -> Result<usize> {
        let key = &self.latency_key;
        // What `infer` serves: for a configuration with calibrated routing (side exits), the
        // routed prediction's numbers; the whole network's otherwise.
        let latency = |g: &GraphEntry| {
            g.routing()
                .and_then(|r| r.latency_ms.get(key).copied())
                .or_else(|| g.metrics.latency_ms.get(key).map(|s| s.p50))
        };
        let sa = |g: &GraphEntry| g.routing().and_then(|r| r.sa).or(g.metrics.sa);
        let ra = |g: &GraphEntry| {
            g.routing()
                .and_then(|r| r.ra_worst)
                .or_else(|| g.metrics.robust_accuracy())
        };
        let macs = |g: &GraphEntry| g.routing().map_or(g.macs, |r| r.mean_macs.round() as u64);
        for (name, v) in [
            ("min_sa", self.min_sa),
            ("min_ra", self.min_ra),
            ("max_latency_ms", self.max_latency_ms),
        ] {
            if let Some(v) = v.filter(|v| !v.is_finite()) {
                // A bad request, like any other argument out of range; not "none qualifies".
                return Err(RuntimeError::invalid_argument(
                    format!("policy {name}"),
                    format!("{v} is not a finite number"),
                ));
            }
        }
        let mut cands: Vec<&GraphEntry> = graphs.iter().collect();
        let mut applied: Vec<String> = Vec::new();

        if let Some(max) = self.max_macs {
            let min = cands.iter().map(|g| macs(g)).min().unwrap_or(0);
            cands.retain(|g| macs(g) <= max);
            if cands.is_empty() {
                return Err(none(format!(
                    "smallest MACs among {} is {min} > {max}",
                    scope(&applied)
                )));
            }
            applied.push(format!("MACs ≤ {max}"));
        }
        if let Some(max) = self.max_latency_ms {
            let what = format!("latency_ms[{key:?}]");
            let lowest = -constrain(
                &mut cands,
                &applied,
                &what,
                "run oats-bench --write-manifest",
                |g| latency(g).map(|v| -v),
            )?;
            if lowest > max {
                return Err(none(format!(
                    "lowest p50 latency ({key}) among {} is {} ms > {} ms",
                    scope(&applied),
                    num(lowest),
                    num(max)
                )));
            }
            cands.retain(|g| latency(g).is_some_and(|v| v <= max));
            applied.push(format!("latency ≤ {} ms ({key} p50)", num(max)));
        }
        if let Some(min) = self.min_sa {
            let best = constrain(&mut cands, &applied, "sa", "run oats-calibrate", sa)?;
            if best < min {
                return Err(none(format!(
                    "best SA among {} is {} < {}",
                    scope(&applied),
                    num(best),
                    num(min)
                )));
            }
            cands.retain(|g| sa(g).is_some_and(|v| v >= min));
            applied.push(format!("SA ≥ {}", num(min)));
        }
        if let Some(min) = self.min_ra {
            let best = constrain(&mut cands, &applied, "ra", "run oats-calibrate", ra)?;
            if best < min {
                return Err(none(format!(
                    "best RA among {} is {} < {}",
                    scope(&applied),
                    num(best),
                    num(min)
                )));
            }
            cands.retain(|g| ra(g).is_some_and(|v| v >= min));
        }

        // Rank: a larger tuple is better; the metric being optimised must be present.
        let rank = |g: &GraphEntry| -> Option<(f64, f64, f64)> {
            let macs = -(macs(g) as f64);
            match self.objective {
                Objective::MaxRa => Some((ra(g)?, sa(g).unwrap_or(MISSING_METRIC_RANK), macs)),
                Objective::MaxSa => Some((sa(g)?, ra(g).unwrap_or(MISSING_METRIC_RANK), macs)),
                Objective::MinLatency => Some((-latency(g)?, macs, 0.0)),
            }
        };
        let mut best: Option<((f64, f64, f64), &GraphEntry)> = None;
        for g in cands {
            if let Some(k) = rank(g) {
                if best.is_none_or(|(bk, _)| k > bk) {
                    best = Some((k, g));
                }
            }
        }
        let Some((_, g)) = best else {
            let (metric, hint) = match self.objective {
                Objective::MaxRa => ("ra".to_string(), "run oats-calibrate"),
                Objective::MaxSa => ("sa".to_string(), "run oats-calibrate"),
                Objective::MinLatency => (
                    format!("latency_ms[{key:?}]"),
                    "run oats-bench --write-manifest",
                ),
            };
            return Err(none(format!(
                "the objective needs metric {metric}, which the manifest has for none of the qualifying graphs ({hint})"
            )));
        };
        graphs
            .iter()
            .position(|x| x.id == g.id)
            .ok_or_else(|| none("internal: chosen graph vanished".into()))
    }
}

/// Keeps only candidates that have the metric; returns the best (largest) value among them.
/// When none has it, the manifest was not calibrated for this metric: say so.
fn constrain(
    cands: &mut Vec<&GraphEntry>,
    applied: &[String],
    metric: &str,
    hint: &str,
    value: impl Fn(&GraphEntry) -> Option<f64>,
) -> Result<f64> {
    let best = cands.iter().filter_map(|g| value(g)).reduce(f64::max);
    match best {
        Some(b) => {
            cands.retain(|g| value(g).is_some());
            Ok(b)
        }
        None => Err(none(format!(
            "the manifest has no calibrated metric {metric} for {} ({hint})",
            scope(applied)
        ))),
    }
}

/// A requested λ and width must be finite and in range: NaN compares as "no closer than
/// anything", which would let the nearest-λ search return whichever graph came first.
pub(crate) fn check_request(lambda: f64, width: f64) -> Result<()> {
    if !(lambda.is_finite() && (0.0..=1.0).contains(&lambda)) {
        return Err(RuntimeError::invalid_argument(
            "lambda",
            format!("{lambda} is not a finite value in [0, 1]"),
        ));
    }
    if !(width.is_finite() && width > 0.0 && width <= 1.0) {
        return Err(RuntimeError::invalid_argument(
            "width",
            format!("{width} is not a finite value in (0, 1]"),
        ));
    }
    Ok(())
}

fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= CONFIG_TOLERANCE
}

fn scope(applied: &[String]) -> String {
    if applied.is_empty() {
        "all graphs".into()
    } else {
        format!("graphs with {}", applied.join(" and "))
    }
}

/// Short human form of a number: at most 4 decimals, trailing zeros trimmed.
fn num(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn none(reason: String) -> RuntimeError {
    RuntimeError::NoneQualifies { reason }
}

fn no_such(requested: String, graphs: &[GraphEntry]) -> RuntimeError {
    RuntimeError::NoSuchConfig {
        requested,
        available: graphs
            .iter()
            .map(|g| format!("{} (lambda {}, width {})", g.id, g.lambda, g.width))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{InputSpec, LatencyStat, Layout, Metrics, OutputSpec, TrainingSummary};

    fn entry(
        lambda: f64,
        width: f64,
        macs: u64,
        sa: Option<f64>,
        ra: Option<f64>,
        lat: Option<f64>,
    ) -> GraphEntry {
        let mut metrics = Metrics {
            sa,
            ra_worst: ra,
            ..Metrics::default()
        };
        if let Some(p50) = lat {
            metrics.latency_ms.insert(
                "tract/b1".into(),
                LatencyStat {
                    p50,
                    p90: p50,
                    p99: p50,
                },
            );
        }
        GraphEntry {
            id: format!("l{lambda}-w{width}"),
            lambda,
            width,
            file: Some(format!("l{lambda}-w{width}.onnx")),
            sha256: Some("0".repeat(64)),
            lambda_index: None,
            params: 0,
            macs,
            opset: 13,
            precision: crate::Precision::Float32,
            quantization: None,
            metrics,
            exits: None,
        }
    }

    fn manifest(graphs: Vec<GraphEntry>) -> Manifest {
        Manifest {
            schema_version: crate::SCHEMA_VERSION,
            model_id: "m".into(),
            source_checkpoint_sha256: "0".repeat(64),
            training: TrainingSummary {
                mode: "oats".into(),
                arch: "tiny".into(),
                dataset: "d".into(),
                epsilon: 0.1,
                attack: "pgd".into(),
                lambdas: vec![],
                widths: vec![],
                epochs: 1,
            },
            input: InputSpec {
                name: "image".into(),
                shape: [1, 8, 8],
                value_range: [0.0, 1.0],
            },
            output: OutputSpec {
                name: "logits".into(),
                classes: 3,
            },
            class_names: vec![],
            layout: Layout::Folded,
            graphs,
            reference: None,
            package: None,
        }
    }

    /// λ ∈ {0, 0.5, 1} × width ∈ {0.5, 1}: robustness grows with λ, cost with width.
    fn calibrated() -> Manifest {
        let mut g = Vec::new();
        for (w, macs, lat) in [(0.5, 100, 1.0), (1.0, 400, 3.0)] {
            for (l, sa, ra) in [(0.0, 0.90, 0.10), (0.5, 0.85, 0.40), (1.0, 0.75, 0.50)] {
                let bonus = if w == 1.0 { 0.05 } else { 0.0 };
                g.push(entry(
                    l,
                    w,
                    macs,
                    Some(sa + bonus),
                    Some(ra + bonus),
                    Some(lat),
                ));
            }
        }
        manifest(g)
    }

    fn pick(m: &Manifest, s: Selector) -> String {
        match s.resolve(m) {
            Ok(i) => m.graphs[i].id.clone(),
            Err(e) => panic!("{e}"),
        }
    }

    fn reason(m: &Manifest, p: Policy) -> String {
        match Selector::Policy(p).resolve(m) {
            Err(RuntimeError::NoneQualifies { reason }) => reason,
            other => panic!("expected NoneQualifies, got {other:?}"),
        }
    }

    #[test]
    fn explicit_matches_within_tolerance() {
        let m = calibrated();
        assert_eq!(
            pick(
                &m,
                Selector::Explicit {
                    lambda: 0.5 + CONFIG_TOLERANCE / 2.0,
                    width: 1.0
                }
            ),
            "l0.5-w1"
        );
        match (Selector::Explicit {
            lambda: 0.3,
            width: 1.0,
        })
        .resolve(&m)
        {
            Err(RuntimeError::NoSuchConfig {
                requested,
                available,
            }) => {
                assert!(requested.contains("0.3"));
                assert_eq!(available.len(), 6);
                assert!(available[0].contains("l0-w0.5"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn by_id() {
        let m = calibrated();
        assert_eq!(pick(&m, Selector::Id("l1-w0.5".into())), "l1-w0.5");
        assert!(matches!(
            Selector::Id("nope".into()).resolve(&m),
            Err(RuntimeError::NoSuchConfig { .. })
        ));
    }

    #[test]
    fn nearest_lambda() {
        let m = calibrated();
        assert_eq!(
            pick(
                &m,
                Selector::NearestLambda {
                    lambda: 0.4,
                    width: 0.5
                }
            ),
            "l0.5-w0.5"
        );
        assert_eq!(
            pick(
                &m,
                Selector::NearestLambda {
                    lambda: 0.1,
                    width: 1.0
                }
            ),
            "l0-w1"
        );
        // Tie between 0 and 0.5: the more robust one.
        assert_eq!(
            pick(
                &m,
                Selector::NearestLambda {
                    lambda: 0.25,
                    width: 1.0
                }
            ),
            "l0.5-w1"
        );
        assert!(matches!(
            Selector::NearestLambda {
                lambda: 0.5,
                width: 0.75
            }
            .resolve(&m),
            Err(RuntimeError::NoSuchConfig { .. })
        ));
    }

    #[test]
    fn non_finite_or_out_of_range_requests_are_refused() {
        let m = calibrated();
        for (lambda, width) in [
            (f64::NAN, 1.0),
            (f64::INFINITY, 1.0),
            (-0.1, 1.0),
            (1.5, 1.0),
            (0.5, f64::NAN),
            (0.5, 0.0),
        ] {
            for s in [
                Selector::Explicit { lambda, width },
                Selector::NearestLambda { lambda, width },
            ] {
                assert!(
                    matches!(s.resolve(&m), Err(RuntimeError::InvalidArgument { .. })),
                    "{s:?}"
                );
            }
        }
        // Inside [0, 1] but outside what is exported at this width: not clamped.
        let mut narrow = calibrated();
        narrow.graphs.retain(|g| g.lambda <= 0.5);
        let r = Selector::NearestLambda {
            lambda: 0.9,
            width: 1.0,
        }
        .resolve(&narrow);
        assert!(
            matches!(&r, Err(RuntimeError::InvalidArgument { reason, .. }) if reason.contains("[0, 0.5]")),
            "{r:?}"
        );
    }

    #[test]
    fn policy_objectives() {
        let m = calibrated();
        let p = |objective| Policy {
            objective,
            ..Policy::default()
        };
        assert_eq!(pick(&m, Selector::Policy(p(Objective::MaxRa))), "l1-w1");
        assert_eq!(pick(&m, Selector::Policy(p(Objective::MaxSa))), "l0-w1");
        // All width-0.5 graphs tie on latency and MACs: the first in manifest order wins.
        assert_eq!(
            pick(&m, Selector::Policy(p(Objective::MinLatency))),
            "l0-w0.5"
        );
        let budget = Policy {
            max_latency_ms: Some(2.0),
            ..Policy::default()
        };
        assert_eq!(pick(&m, Selector::Policy(budget)), "l1-w0.5");
        let accurate = Policy {
            min_sa: Some(0.85),
            objective: Objective::MaxRa,
            ..Policy::default()
        };
        assert_eq!(pick(&m, Selector::Policy(accurate)), "l0.5-w1");
        let small = Policy {
            max_macs: Some(100),
            min_ra: Some(0.3),
            objective: Objective::MaxSa,
            ..Policy::default()
        };
        assert_eq!(pick(&m, Selector::Policy(small)), "l0.5-w0.5");
    }

    #[test]
    fn none_qualifies_says_why() {
        let m = calibrated();
        let r = reason(
            &m,
            Policy {
                max_latency_ms: Some(2.0),
                min_ra: Some(0.6),
                ..Policy::default()
            },
        );
        assert_eq!(
            r,
            "best RA among graphs with latency ≤ 2 ms (tract/b1 p50) is 0.5 < 0.6"
        );
        let r = reason(
            &m,
            Policy {
                max_latency_ms: Some(0.5),
                ..Policy::default()
            },
        );
        assert_eq!(
            r,
            "lowest p50 latency (tract/b1) among all graphs is 1 ms > 0.5 ms"
        );
        let r = reason(
            &m,
            Policy {
                max_macs: Some(10),
                ..Policy::default()
            },
        );
        assert_eq!(r, "smallest MACs among all graphs is 100 > 10");
        let r = reason(
            &m,
            Policy {
                min_sa: Some(0.99),
                ..Policy::default()
            },
        );
        assert_eq!(r, "best SA among all graphs is 0.95 < 0.99");
    }

    #[test]
    fn missing_metrics_are_reported_not_ignored() {
        let m = manifest(vec![
            entry(0.0, 1.0, 10, None, None, None),
            entry(1.0, 1.0, 10, None, None, None),
        ]);
        let r = reason(
            &m,
            Policy {
                min_ra: Some(0.1),
                ..Policy::default()
            },
        );
        assert!(
            r.contains("no calibrated metric ra") && r.contains("oats-calibrate"),
            "{r}"
        );
        let r = reason(
            &m,
            Policy {
                max_latency_ms: Some(5.0),
                ..Policy::default()
            },
        );
        assert!(
            r.contains("latency_ms[\"tract/b1\"]") && r.contains("oats-bench"),
            "{r}"
        );
        let r = reason(
            &m,
            Policy {
                latency_key: "ort/b1".into(),
                objective: Objective::MinLatency,
                ..Policy::default()
            },
        );
        assert!(r.contains("latency_ms[\"ort/b1\"]"), "{r}");
        // Objective MaxRa without RA anywhere.
        let r = reason(&m, Policy::default());
        assert!(r.contains("metric ra"), "{r}");
    }

    #[test]
    fn graphs_lacking_a_constrained_metric_do_not_qualify() {
        let m = manifest(vec![
            entry(0.0, 1.0, 10, Some(0.9), None, None),
            entry(1.0, 1.0, 10, Some(0.5), Some(0.4), None),
        ]);
        let p = Policy {
            min_ra: Some(0.1),
            objective: Objective::MaxSa,
            ..Policy::default()
        };
        assert_eq!(pick(&m, Selector::Policy(p)), "l1-w1");
    }

    #[test]
    fn a_non_finite_policy_threshold_is_an_invalid_argument() {
        let m = calibrated();
        for p in [
            Policy {
                min_sa: Some(f64::NAN),
                ..Policy::default()
            },
            Policy {
                max_latency_ms: Some(f64::INFINITY),
                ..Policy::default()
            },
        ] {
            assert!(matches!(
                Selector::Policy(p).resolve(&m),
                Err(RuntimeError::InvalidArgument { .. })
            ));
        }
    }
}
