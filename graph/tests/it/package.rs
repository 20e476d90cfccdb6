//! The package without a trainer: round trip, lowering at trained and unseen λ, both layouts
//! computing the same logits in tract, and the errors of requests the package cannot serve.
use crate::common;

use common::*;
use oats_graph::{Error, Layout, Package};

#[test]
fn round_trip_is_exact_and_deterministic() {
    for pkg in [resnet(1), wide(2), unconditioned(3)] {
        let bytes = pkg.to_bytes().expect("bytes");
        assert_eq!(
            bytes,
            pkg.to_bytes().expect("bytes"),
            "same model, same bytes"
        );
        let back = Package::from_bytes(&bytes).expect("load");
        assert_eq!(back, pkg);
        assert_eq!(back.values(), pkg.values());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(oats_graph::package::FILE_NAME);
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(Package::load(&path).expect("load file"), pkg);
    }
}

#[test]
fn metadata_is_one_json_entry_with_the_format() {
    let (meta, tensors) = split(&resnet(1).to_bytes().expect("bytes"));
    assert_eq!(meta["format"], "oats-package/1");
    assert_eq!(meta["lambdas"], serde_json::json!([0.0, 0.5, 1.0]));
    assert_eq!(
        meta["architecture"]["widths"],
        serde_json::json!([0.5, 1.0])
    );
    assert_eq!(
        meta["architecture"]["body"]["resnet"]["stem_norm"]["film"],
        true
    );
    for name in [
        "stem.weight",
        "stem_norm.w0.clean.running_var",
        "stem_norm.w1.adv.weight",
        "stem_norm.film.fc2_weight",
        "blocks.1.shortcut.weight",
        "blocks.1.shortcut_norm.w1.adv.bias",
        "fc.weight",
        "lambda_encoding",
    ] {
        assert!(tensors.contains_key(name), "{name} in {:?}", tensors.keys());
    }
    assert!(!tensors.contains_key("blocks.1.shortcut_norm.film.fc1_weight"));
    // Weights once: the full-width conv, not one per width.
    assert_eq!(tensors["blocks.0.conv1.weight"].1, vec![4, 4, 3, 3]);
    assert_eq!(
        tensors["stem_norm.w0.clean.weight"].1,
        vec![2],
        "BN at width 0.5"
    );
}

/// Every (λ, width) in both layouts: the shared-weights graph at lambda_index k computes the
/// folded graph's logits at λ_k (one arithmetic; folding only reorders f32 products).
#[test]
fn shared_and_folded_layouts_agree_at_every_configuration() {
    let x = images(4, 9);
    for pkg in [resnet(1), wide(2)] {
        let lambdas = [0.0, 0.25, 0.5, 0.7, 1.0];
        for &w in pkg.widths() {
            let shared = pkg
                .lower(&lambdas, w, Layout::SharedWeights)
                .expect("shared");
            for (k, &l) in lambdas.iter().enumerate() {
                let folded = pkg.lower_folded(l, w).expect("folded");
                let a = run(&folded, &x, 4, None);
                let b = run(&shared, &x, 4, Some(k as i64));
                let d = max_abs_diff(&a, &b);
                assert!(d <= 1e-5, "λ {l} width {w}: {d}");
                assert!(a.iter().all(|v| v.is_finite()));
            }
        }
    }
}

/// Narrow widths slice the convolutions: fewer MACs and parameters, only standard ops.
#[test]
fn narrow_graphs_are_smaller_and_use_standard_ops() {
    let pkg = resnet(1);
    let full = pkg.lower_folded(0.5, 1.0).expect("full");
    let half = pkg.lower_folded(0.5, 0.5).expect("half");
    assert!(half.macs * 3 < full.macs, "{} vs {}", half.macs, full.macs);
    assert!(half.params() < full.params());
    assert_eq!(
        full.op_types(),
        [
            "Add",
            "Conv",
            "Flatten",
            "Gemm",
            "GlobalAveragePool",
            "Relu"
        ]
    );
    let wide_ops = wide(2).lower_folded(0.5, 1.0).expect("wide").op_types();
    assert!(
        wide_ops.contains(&"Mul"),
        "pre-activation affines stay Mul + Add"
    );
}

/// λ changes the logits (FiLM and the BN branch are really applied), and an unseen λ lies
/// between its neighbours' encodings.
#[test]
fn lambda_matters_and_unseen_lambda_is_served() {
    let pkg = resnet(1);
    let x = images(2, 5);
    let at = |l: f64| run(&pkg.lower_folded(l, 1.0).expect("lower"), &x, 2, None);
    let (l0, l5, l7, l1) = (at(0.0), at(0.5), at(0.7), at(1.0));
    assert!(max_abs_diff(&l0, &l5) > 1e-3, "clean vs adversarial BN");
    assert!(max_abs_diff(&l5, &l1) > 1e-3, "FiLM at two λ");
    assert!(max_abs_diff(&l7, &l5) > 1e-5 && max_abs_diff(&l7, &l1) > 1e-5);
    let c = pkg.condition(0.7).expect("0.7");
    let e = c.encoding.expect("encoding");
    let r = rows(1);
    for (i, v) in e.iter().enumerate() {
        let want = 0.6 * r[DIM + i] + 0.4 * r[2 * DIM + i];
        assert!((v - want).abs() < 1e-6, "{v} vs {want}");
    }
}

#[test]
fn requests_the_package_cannot_serve_are_typed_errors() {
    let pkg = resnet(1);
    for bad in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
        assert!(
            matches!(pkg.lower_folded(bad, 1.0), Err(Error::Lambda { .. })),
            "{bad}"
        );
    }
    assert!(matches!(
        pkg.lower_folded(0.5, 0.75),
        Err(Error::Width { .. })
    ));
    assert!(matches!(
        pkg.lower(&[0.0, 0.5], 1.0, Layout::Folded),
        Err(Error::Request(_))
    ));
    assert!(matches!(
        pkg.lower(&[], 1.0, Layout::SharedWeights),
        Err(Error::Request(_))
    ));
    assert!(matches!(
        pkg.affine("blocks.9.norm1", 0.5, 1.0),
        Err(Error::UnknownSite { .. })
    ));
    let fixed = unconditioned(3);
    assert!(fixed.lower_folded(0.4, 1.0).is_ok());
    assert!(matches!(
        fixed.lower_folded(0.5, 1.0),
        Err(Error::Lambda { .. })
    ));
    // A narrow trained range: λ above it is refused, not extrapolated.
    let mut r = rows(1);
    r.truncate(2 * DIM);
    let narrow = Package::new(resnet_arch(1, true), vec![0.0, 0.5], Some(r)).expect("narrow");
    assert!(matches!(
        narrow.lower_folded(0.7, 1.0),
        Err(Error::Lambda { .. })
    ));
}

/// The affine of a site without FiLM is the BN's eval formula; with FiLM, γ·s and γ·t + β,
/// at each width's channel count.
#[test]
fn affine_follows_the_bn_and_film_formulas() {
    let pkg = resnet(1);
    let a = pkg
        .affine("blocks.1.shortcut_norm", 0.5, 0.5)
        .expect("affine");
    let arch = pkg.architecture();
    let oats_graph::arch::Body::Resnet { blocks, .. } = &arch.body else {
        panic!("resnet");
    };
    let bn = &blocks[1].shortcut.as_ref().expect("shortcut").norm.bn[0][1];
    assert_eq!(a.scale.len(), 3, "6 channels at width 0.5");
    for c in 0..3 {
        let s = bn.weight[c] / (bn.running_var[c] + 1e-5).sqrt();
        assert!((a.scale[c] - s).abs() < 1e-6);
        assert!((a.shift[c] - (bn.bias[c] - bn.running_mean[c] * s)).abs() < 1e-6);
    }
    assert_eq!(
        pkg.affine("stem_norm", 0.0, 1.0).expect("stem").scale.len(),
        4
    );
    assert_eq!(pkg.site_names().len(), 6);
}
