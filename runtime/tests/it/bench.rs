//! Measurement helpers and the reference-bundle equivalence check.

use crate::common;

use std::path::Path;

use common::*;
use oats_runtime::bench::{self, BenchConfig};
use oats_runtime::manifest::sha256_hex;
use oats_runtime::reference::{check_reference, REFERENCE_TOLERANCE};
use oats_runtime::{Manifest, OatsModel, Options, ReferenceBundle, RuntimeError};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn open(dir: &Path) -> OatsModel {
    OatsModel::open(dir, &Options::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes reference.safetensors with the reference forward's logits (`perturb` added to
/// the first logit of graph 0) and records it in the manifest.
fn write_reference(dir: &Path, m: &mut Manifest, perturb: f32, skip_last: bool) {
    let n = 4;
    let x = images(n, 1234);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> =
        vec![("input".into(), vec![n, C, H, W], le_bytes(&x))];
    let count = if skip_last {
        m.graphs.len() - 1
    } else {
        m.graphs.len()
    };
    for (i, g) in m.graphs.iter().take(count).enumerate() {
        let mut logits = expected(m, g, &x, n);
        if i == 0 {
            logits[0] += perturb;
        }
        tensors.push((
            format!("logits.{}", g.id),
            vec![n, CLASSES],
            le_bytes(&logits),
        ));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data).unwrap_or_else(|e| panic!("{e}")),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap_or_else(|e| panic!("{e}"));
    write(dir, "reference.safetensors", &bytes);
    m.reference = Some(ReferenceBundle {
        file: "reference.safetensors".into(),
        sha256: sha256_hex(&bytes),
    });
    save(dir, m);
}

#[test]
fn bench_graph_returns_sane_numbers() {
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    let model = open(dir.path());
    let cfg = BenchConfig {
        batch: 4,
        warmup: 2,
        iters: 20,
    };
    let r = bench::bench_graph(&model, &m.graphs[0].id, &cfg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((r.batch, r.iters, r.warmup), (4, 20, 2));
    assert!(r.p50_ms > 0.0 && r.p50_ms <= r.p90_ms && r.p90_ms <= r.p99_ms);
    assert!(r.throughput > 0.0);
    assert!(r.load_ms > 0.0);
    assert!(r.peak_rss_kib.is_some_and(|k| k > 0));
}

#[test]
fn switch_cost_is_measured_and_restores_the_active_config() {
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    let model = open(dir.path());
    let before = model.active();
    let s = bench::switch_cost(&model, &m.graphs[1].id, &m.graphs[4].id, 1000)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.iters, 1000);
    assert!(s.median_ns > 0.0 && s.median_ns <= s.p99_ns);
    // A switch is a pointer swap: far below a millisecond even in debug builds.
    assert!(s.median_ns < 1e6, "{s:?}");
    assert_eq!(model.active(), before);
}

#[test]
fn reference_bundle_passes_when_equal() {
    let dir = tempdir();
    let mut m = write_folded_export(dir.path());
    write_reference(dir.path(), &mut m, 0.0, false);
    let model = open(dir.path());
    let checks = check_reference(&model)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_default();
    assert_eq!(checks.len(), m.graphs.len());
    for c in &checks {
        assert!(c.passed(), "{c:?}");
        assert_eq!(c.samples, 4);
    }
}

#[test]
fn reference_bundle_fails_on_divergence_and_reports_missing_graphs() {
    let dir = tempdir();
    let mut m = write_shared_export(dir.path());
    write_reference(dir.path(), &mut m, 10.0 * REFERENCE_TOLERANCE, true);
    let model = open(dir.path());
    let checks = check_reference(&model)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_default();
    assert!(!checks[0].passed());
    assert!(checks[0]
        .max_abs_diff
        .is_some_and(|d| d > REFERENCE_TOLERANCE));
    assert!(checks[1].passed());
    let last = checks.last().map(|c| c.max_abs_diff);
    assert_eq!(last, Some(None));
}

#[test]
fn no_bundle_and_tampered_bundle() {
    let dir = tempdir();
    let mut m = write_folded_export(dir.path());
    assert!(matches!(check_reference(&open(dir.path())), Ok(None)));
    write_reference(dir.path(), &mut m, 0.0, false);
    write(dir.path(), "reference.safetensors", b"tampered");
    assert!(matches!(
        check_reference(&open(dir.path())),
        Err(RuntimeError::ShaMismatch { .. })
    ));
}
