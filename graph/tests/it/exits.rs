//! Packages with side exits: the `oats-package/2` format, and lowering to chained segments
//! and heads that compute exactly what the whole graph computes.
use crate::common;

use common::*;
use oats_graph::package::{FORMAT, FORMAT_EXITS};
use oats_graph::{Error, Graph, Layout, Package, FEATURES, FEATURES_INPUT, INPUT, OUTPUT};

/// The shape a graph's first input takes for `n` samples.
fn input_shape(g: &Graph, n: usize) -> Vec<usize> {
    g.inputs[0]
        .dims
        .iter()
        .map(|d| d.map_or(n, |v| v as usize))
        .collect()
}

/// Chaining the segments (heads skipped) gives the plain graph's logits, at every (λ, width)
/// and in both bodies; each head reads its segment's output.
#[test]
fn chained_segments_equal_the_whole_graph() {
    let n = 3;
    let x = images(n, 5);
    for pkg in [resnet_exits(1), wide_exits(2)] {
        for &w in pkg.widths() {
            for l in [0.0, 0.3, 1.0] {
                let whole = pkg.lower_folded(l, w).expect("whole");
                let seg = pkg
                    .lower_segments(&[l], w, Layout::Folded)
                    .expect("segments");
                assert_eq!(seg.segments.len(), 2);
                assert_eq!(seg.heads.len(), 1);
                assert_eq!(seg.segments[0].inputs[0].name, INPUT);
                assert_eq!(seg.segments[0].outputs[0].name, FEATURES);
                assert_eq!(seg.segments[1].inputs[0].name, FEATURES_INPUT);
                assert_eq!(seg.segments[1].outputs[0].name, OUTPUT);
                assert_eq!(seg.heads[0].inputs[0].name, FEATURES_INPUT);
                assert_eq!(seg.heads[0].outputs[0].name, OUTPUT);
                let feats = run_shaped(&seg.segments[0], &x, &input_shape(&seg.segments[0], n));
                let shape = input_shape(&seg.segments[1], n);
                assert_eq!(feats.len(), shape.iter().product::<usize>());
                let logits = run_shaped(&seg.segments[1], &feats, &shape);
                let want = run(&whole, &x, n, None);
                let d = max_abs_diff(&logits, &want);
                assert!(d <= 1e-5, "λ {l} width {w}: {d}");
                let exit = run_shaped(&seg.heads[0], &feats, &input_shape(&seg.heads[0], n));
                assert_eq!(exit.len(), n * 3);
                assert!(exit.iter().all(|v| v.is_finite()));
                assert!(
                    max_abs_diff(&exit, &want) > 1e-3,
                    "the head is its own classifier"
                );
                // MACs: the segments are the backbone; the head comes on top.
                let macs = seg.exit_macs();
                let body: u64 = seg.segments.iter().map(|g| g.macs).sum();
                assert_eq!(body, whole.macs);
                assert_eq!(
                    macs,
                    vec![
                        seg.segments[0].macs + seg.heads[0].macs,
                        body + seg.heads[0].macs
                    ]
                );
                assert!(macs[0] < macs[1]);
            }
        }
    }
}

/// The shared-weights layout splits the same way: each part takes the λ index too.
#[test]
fn shared_layout_segments_take_the_lambda_index() {
    let pkg = resnet_exits(3);
    let seg = pkg
        .lower_segments(&[0.0, 1.0], 1.0, Layout::SharedWeights)
        .expect("shared segments");
    for g in seg.segments.iter().chain(&seg.heads) {
        assert_eq!(g.inputs.len(), 2, "{:?}", g.inputs);
    }
}

/// A package with exits round-trips as `oats-package/2`; a plain one stays `/1`, and a file
/// claiming the other format is refused.
#[test]
fn exit_packages_round_trip_in_their_own_format() {
    let pkg = resnet_exits(4);
    assert_eq!(pkg.format(), FORMAT_EXITS);
    assert_eq!(pkg.exit_blocks(), vec![1]);
    let bytes = pkg.to_bytes().expect("bytes");
    let back = Package::from_bytes(&bytes).expect("read");
    assert_eq!(back, pkg);
    assert!(back.site_names().contains(&"exits.1.norm".to_string()));
    assert!(back.affine("exits.1.norm", 0.5, 0.5).is_ok());
    assert_eq!(resnet(4).format(), FORMAT);

    let (mut meta, tensors) = split(&bytes);
    meta["format"] = FORMAT.into();
    let err = Package::from_bytes(&join(&meta, &tensors)).expect_err("wrong format");
    assert!(err.to_string().contains("side exits"), "{err}");

    // The plain model's package has no exit field at all (byte-identical to before exits).
    let (meta, _) = split(&resnet(4).to_bytes().expect("bytes"));
    assert!(meta["architecture"].get("exits").is_none());
    assert!(resnet(4)
        .lower_segments(&[0.5], 1.0, Layout::Folded)
        .is_err());
}

/// Exits after no block, after the last block, out of order, or with the wrong channels are
/// refused with the field named.
#[test]
fn misplaced_exits_are_refused() {
    let bad = |edit: &dyn Fn(&mut oats_graph::Architecture)| {
        let mut a = resnet_arch(5, true);
        a.exits = vec![exit_head(5, 1, 4, 2, Some(DIM))];
        edit(&mut a);
        match Package::new(a, LAMBDAS.to_vec(), Some(rows(5))) {
            Err(e @ Error::Invalid { .. }) => e.to_string(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    };
    assert!(bad(&|a| a.exits[0].after_block = 0).contains("after_block"));
    assert!(bad(&|a| a.exits[0].after_block = 2).contains("after_block"));
    assert!(bad(&|a| a.exits.push(a.exits[0].clone())).contains("exits[1]"));
    assert!(bad(&|a| a.exits[0].classifier.classes = 4).contains("classes"));
    assert!(bad(&|a| a.exits[0].conv.in_channels = 6).contains("in_channels"));
}
