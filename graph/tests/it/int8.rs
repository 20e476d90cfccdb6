//! int8 graphs (QDQ form, issue #15) of a random package: made from calibrated ranges, they
//! run in tract, compute nearly the float logits, store a quarter of the bytes, and refuse
//! what they cannot be made from.
use crate::common;

use common::{images, max_abs_diff, ranges, resnet, run, wide};
use oats_graph::quant::{self, Ranges};
use oats_graph::Layout;

#[test]
fn int8_graphs_run_and_track_the_float_logits() {
    let x = images(16, 3);
    for pkg in [resnet(1), wide(2)] {
        for &w in pkg.widths() {
            let g = pkg.lower_folded(0.5, w).expect("folded");
            let q = quant::quantize(&g, &ranges(&g, &x, 16)).expect("quantize");
            assert!(quant::is_int8(&q) && !quant::is_int8(&g));
            assert_eq!(q.macs, g.macs);
            let ops = q.op_types();
            assert!(ops.contains(&"QuantizeLinear") && ops.contains(&"DequantizeLinear"));
            let (a, b) = (run(&g, &x, 16, None), run(&q, &x, 16, None));
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&a, &b);
            assert!(
                d <= 0.1 * scale,
                "width {w}: int8 differs by {d} (logits up to {scale})"
            );
            assert!(d > 0.0, "int8 should not be bit-identical to float");
            let (fb, qb) = (quant::initializer_bytes(&g), quant::initializer_bytes(&q));
            assert!(qb * 3 < fb + 4096, "width {w}: {qb} B int8 vs {fb} B float");
        }
    }
}

#[test]
fn quantize_refuses_what_it_cannot_make() {
    let pkg = resnet(1);
    let x = images(4, 3);
    let g = pkg.lower_folded(0.5, 1.0).expect("folded");
    let mut r = ranges(&g, &x, 4);
    let first = quant::activation_points(&g)[1].clone();
    r.get_mut(&first).expect("point").max = f32::NAN;
    let e = quant::quantize(&g, &r).unwrap_err().to_string();
    assert!(e.contains(&first) && e.contains("NaN"), "{e}");
    r.remove(&first);
    let e = quant::quantize(&g, &r).unwrap_err().to_string();
    assert!(
        e.contains("no calibrated range") && e.contains(&first),
        "{e}"
    );
    let shared = pkg
        .lower(&[0.0, 1.0], 1.0, Layout::SharedWeights)
        .expect("shared");
    let e = quant::quantize(&shared, &Ranges::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("folded"), "{e}");
}

/// What oats writes, it reads back: the decoded int8 graph encodes to the same bytes.
#[test]
fn onnx_round_trip() {
    let pkg = resnet(1);
    let x = images(4, 3);
    let g = pkg.lower_folded(0.5, 1.0).expect("folded");
    let q = quant::quantize(&g, &ranges(&g, &x, 4)).expect("quantize");
    for graph in [&g, &q] {
        let bytes = oats_graph::to_onnx(graph);
        let back = oats_graph::onnx::decode(&bytes).expect("decode");
        assert_eq!(oats_graph::to_onnx(&back), bytes);
        assert_eq!(back.initializers, graph.initializers);
    }
    assert!(oats_graph::onnx::decode(b"not onnx").is_err());
}

/// A device derives an int8 configuration from the package and the stored range list: the
/// same bytes as quantizing the exporter's folded graph.
#[test]
fn int8_derived_from_the_package_is_the_exported_graph() {
    let pkg = resnet(1);
    let x = images(8, 3);
    for &w in pkg.widths() {
        let g = pkg.lower_folded(0.7, w).expect("folded");
        let r = ranges(&g, &x, 8);
        let q = quant::quantize(&g, &r).expect("quantize");
        let list = quant::range_list(&g, &r).expect("list");
        let d = quant::lower_int8(&pkg, 0.7, w, &list).expect("derive");
        assert_eq!(
            oats_graph::to_onnx(&d),
            oats_graph::to_onnx(&q),
            "width {w}"
        );
        let e = quant::lower_int8(&pkg, 0.7, w, &list[1..])
            .unwrap_err()
            .to_string();
        assert!(e.contains("activation ranges"), "{e}");
    }
}
