//! Property tests (the fuzz targets CI runs for a bounded time): the manifest parser, the
//! image path and the graph loader fed arbitrary or mutated input return errors, never
//! panic, hang or allocate without bound, and both backends give the same verdict on the
//! same graph. Each property runs a fixed number of cases (64–256) so the file stays under
//! half a minute; a crash found here becomes a named test in tests/hostile.rs.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use oats_runtime::input::decode_image;
use oats_runtime::manifest::sha256_hex;
use oats_runtime::{Backend, Batch, InputSpec, Manifest, OatsModel, Options};
use proptest::prelude::*;
use prost::Message;
use tract_onnx::pb;

/// Cases per property: `default` (what CI runs, sized to keep the file under half a
/// minute), or `OATS_FUZZ_CASES` to fuzz longer by hand.
fn cases(default: u32) -> u32 {
    std::env::var("OATS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn valid_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let dir = common::tempdir();
        let m = common::write_shared_export(dir.path());
        serde_yaml::to_string(&m).unwrap_or_default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn c4_no_panic_manifest_parser_survives_arbitrary_strings(s in any::<String>()) {
        let _ = Manifest::from_yaml_str(&s, Path::new("fuzz.yaml"));
    }

    #[test]
    fn c4_no_panic_manifest_parser_survives_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        let s = String::from_utf8_lossy(&b);
        let _ = Manifest::from_yaml_str(&s, Path::new("fuzz.yaml"));
    }

    /// Mutations of a valid manifest reach deeper than random text.
    #[test]
    fn c4_no_panic_manifest_parser_survives_mutated_manifests(
        line in 0usize..200,
        replacement in "[ -~]{0,24}",
    ) {
        let text = valid_text();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let i = line % lines.len();
        if let Some((key, _)) = lines[i].clone().split_once(':') {
            lines[i] = format!("{key}: {replacement}");
        } else {
            lines[i] = replacement;
        }
        let _ = Manifest::from_yaml_str(&lines.join("\n"), Path::new("fuzz.yaml"));
    }

    #[test]
    fn c4_no_panic_image_decoding_survives_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let spec = InputSpec { name: "image".into(), shape: [3, 8, 8], value_range: [0.0, 1.0] };
        let _ = decode_image(&b, &spec, Path::new("fuzz.bin"));
    }

    /// Arbitrary bytes behind a real image header exercise the decoders themselves.
    #[test]
    fn c4_no_panic_image_decoding_survives_corrupted_headers(
        header in prop::sample::select(vec![
            &b"\x89PNG\r\n\x1a\n"[..], &b"\xff\xd8\xff\xe0"[..], &b"BM"[..], &b"GIF89a"[..],
            &b"P6\n"[..], &b"II*\x00"[..], &b"RIFF\x00\x00\x00\x00WEBPVP8 "[..],
        ]),
        tail in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut b = header.to_vec();
        b.extend(tail);
        let spec = InputSpec { name: "image".into(), shape: [1, 8, 8], value_range: [0.0, 1.0] };
        let _ = decode_image(&b, &spec, Path::new("fuzz.bin"));
    }
}

/// CRC-32 (IEEE) of a PNG chunk's type and data.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header is valid and claims `width`×`height` (8-bit, colour type `color`),
/// followed by `idat` as image data.
fn png_with_header(width: u32, height: u32, color: u8, idat: &[u8]) -> Vec<u8> {
    let chunk = |kind: &[u8; 4], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        c.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
        c
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, color, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", idat));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// The tiny classifier's ONNX bytes, folded (`false`) or with a λ table (`true`).
fn fixture_graph(shared: bool) -> Vec<u8> {
    let table = common::lambda_table();
    common::tiny_model(
        &common::TinyWeights::new(3),
        shared.then_some(table.as_slice()),
    )
}

/// Writes an export whose every graph file is `bytes` (sha256 updated, so only the content
/// is hostile) and returns each backend's verdict: `Ok` with the logits of a fixed batch, or
/// the error's variant. Panics only if a backend panics through the public API (caught by
/// proptest as a failure) or takes longer than a few seconds.
fn verdicts(bytes: &[u8], shared: bool) -> Vec<(Backend, Result<Vec<f32>, String>)> {
    let dir = common::tempdir();
    let mut m = if shared {
        common::write_shared_export(dir.path())
    } else {
        common::write_folded_export(dir.path())
    };
    // One file for every graph keeps each case cheap; shared_weights allows it.
    let keep = common::file_of(&m.graphs[0]).to_string();
    m.graphs
        .retain(|g| g.file.as_deref() == Some(keep.as_str()));
    for g in &mut m.graphs {
        g.sha256 = Some(sha256_hex(bytes));
    }
    common::write(dir.path(), &keep, bytes);
    let text = serde_yaml::to_string(&m).unwrap_or_default();
    common::write(dir.path(), "manifest.yaml", text.as_bytes());
    let x = Batch::new([2, common::C, common::H, common::W], common::images(2, 9))
        .unwrap_or_else(|e| panic!("{e}"));
    backends()
        .into_iter()
        .map(|backend| {
            let t = Instant::now();
            let r = OatsModel::open(
                dir.path(),
                &Options {
                    backend,
                    threads: Some(1),
                    preload: true,
                    ..Options::default()
                },
            )
            .and_then(|model| model.infer(&x))
            .map(|p| p.logits)
            .map_err(|e| format!("{:?}", std::mem::discriminant(&e)));
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{backend}: {:?}",
                t.elapsed()
            );
            (backend, r)
        })
        .collect()
}

fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Tract];
    if cfg!(feature = "ort") {
        match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) if !p.is_empty() => b.push(Backend::Ort),
            _ => common::tool_missing("ONNX Runtime: ORT_DYLIB_PATH is not set"),
        }
    }
    b
}

/// Both backends accepted (with the same logits, to f32 kernel differences) or both
/// refused.
fn assert_agree(v: &[(Backend, Result<Vec<f32>, String>)]) {
    for pair in v.windows(2) {
        let ((a, ra), (b, rb)) = (&pair[0], &pair[1]);
        match (ra, rb) {
            // Relative: damaged weights can make logits of 1e27.
            (Ok(x), Ok(y)) => {
                assert_eq!(x.len(), y.len(), "{a} vs {b}");
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    let scale = 1f32.max(p.abs()).max(q.abs());
                    assert!(
                        (p - q).abs() <= 1e-4 * scale,
                        "{a} vs {b}: [{i}] {p} vs {q}"
                    );
                }
            }
            (Err(_), Err(_)) => {}
            _ => panic!("{a} and {b} disagree: {ra:?} vs {rb:?}"),
        }
    }
}

/// Structured mutations of the fixture graph: they keep the protobuf valid, so they reach
/// the checks and the engines rather than the decoder.
#[derive(Debug, Clone)]
enum Mutation {
    /// Set dimension `dim` of initializer `tensor` to `value`.
    InitializerDim {
        tensor: usize,
        dim: usize,
        value: i64,
    },
    /// Set dimension `dim` of graph input or output `which` to `value`.
    IoDim {
        output: bool,
        which: usize,
        dim: usize,
        value: i64,
    },
    /// Set every integer (list) attribute of node `node` to `value`.
    Attribute { node: usize, value: i64 },
    /// Replace the operator of node `node`.
    Op { node: usize, op: &'static str },
    /// Rename input `input` of node `node` to another value's name.
    Rewire {
        node: usize,
        input: usize,
        to: usize,
    },
    /// Drop stored values from initializer `tensor`.
    Truncate { tensor: usize, keep: usize },
    /// Set the element type of initializer `tensor`.
    ElemType { tensor: usize, code: i32 },
    /// Set the default opset.
    Opset { version: i64 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let dim = prop_oneof![
        Just(0i64),
        Just(-1),
        Just(1),
        Just(2),
        Just(3),
        Just(1 << 40),
        Just(i64::MAX),
        Just(i64::MIN),
        -4i64..100,
    ];
    prop_oneof![
        (0usize..6, 0usize..4, dim.clone())
            .prop_map(|(tensor, dim, value)| Mutation::InitializerDim { tensor, dim, value }),
        (any::<bool>(), 0usize..2, 0usize..4, dim.clone()).prop_map(
            |(output, which, dim, value)| Mutation::IoDim {
                output,
                which,
                dim,
                value
            }
        ),
        (0usize..8, dim).prop_map(|(node, value)| Mutation::Attribute { node, value }),
        (
            0usize..8,
            prop::sample::select(vec![
                "Relu",
                "Conv",
                "Gemm",
                "Gather",
                "Add",
                "Mul",
                "Reshape",
                "Flatten",
                "GlobalAveragePool",
                "MatMul",
                "Expand",
                "Tile",
                "ConstantOfShape",
                "Range",
                "Resize",
                "Transpose",
                "NoSuchOp",
            ])
        )
            .prop_map(|(node, op)| Mutation::Op { node, op }),
        (0usize..8, 0usize..3, 0usize..16).prop_map(|(node, input, to)| Mutation::Rewire {
            node,
            input,
            to
        }),
        (0usize..6, 0usize..20).prop_map(|(tensor, keep)| Mutation::Truncate { tensor, keep }),
        (0usize..6, 0i32..20).prop_map(|(tensor, code)| Mutation::ElemType { tensor, code }),
        (-2i64..30).prop_map(|version| Mutation::Opset { version }),
    ]
}

fn apply(model: &mut pb::ModelProto, m: &Mutation) {
    use pb::tensor_shape_proto::dimension::Value;
    if let Mutation::Opset { version } = m {
        for o in &mut model.opset_import {
            o.version = *version;
        }
        return;
    }
    let Some(g) = model.graph.as_mut() else {
        return;
    };
    let names: Vec<String> = g
        .input
        .iter()
        .map(|v| v.name.clone())
        .chain(g.initializer.iter().map(|t| t.name.clone()))
        .chain(g.node.iter().flat_map(|n| n.output.clone()))
        .collect();
    match m {
        Mutation::InitializerDim { tensor, dim, value } => {
            let n = g.initializer.len();
            if let Some(d) = g.initializer[tensor % n].dims.get_mut(*dim) {
                *d = *value;
            }
        }
        Mutation::IoDim {
            output,
            which,
            dim,
            value,
        } => {
            let list = if *output { &mut g.output } else { &mut g.input };
            let n = list.len();
            if let Some(pb::type_proto::Value::TensorType(t)) = list[which % n]
                .r#type
                .as_mut()
                .and_then(|t| t.value.as_mut())
            {
                if let Some(d) = t.shape.as_mut().and_then(|s| s.dim.get_mut(*dim)) {
                    d.value = Some(Value::DimValue(*value));
                }
            }
        }
        Mutation::Attribute { node, value } => {
            let n = g.node.len();
            for a in &mut g.node[node % n].attribute {
                a.i = *value;
                for v in &mut a.ints {
                    *v = *value;
                }
            }
        }
        Mutation::Op { node, op } => {
            let n = g.node.len();
            g.node[node % n].op_type = (*op).into();
        }
        Mutation::Rewire { node, input, to } => {
            let n = g.node.len();
            let node = &mut g.node[node % n];
            let k = node.input.len().max(1);
            if let Some(i) = node.input.get_mut(input % k) {
                *i = names[to % names.len()].clone();
            }
        }
        Mutation::Truncate { tensor, keep } => {
            let n = g.initializer.len();
            g.initializer[tensor % n].float_data.truncate(*keep);
        }
        Mutation::ElemType { tensor, code } => {
            let n = g.initializer.len();
            g.initializer[tensor % n].data_type = *code;
        }
        Mutation::Opset { .. } => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    /// Headers that claim any size, with arbitrary image data: an error or a tensor of the
    /// model's size, quickly; never an allocation of what the header claims.
    #[test]
    fn c3_bounded_image_headers_with_arbitrary_dimensions(
        width in prop_oneof![1u32..64, 1u32..=u32::MAX],
        height in prop_oneof![1u32..64, 1u32..=u32::MAX],
        color in prop::sample::select(vec![0u8, 2, 4, 6]),
        idat in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let png = png_with_header(width, height, color, &idat);
        let spec = InputSpec { name: "image".into(), shape: [3, 8, 8], value_range: [0.0, 1.0] };
        let t = Instant::now();
        if let Ok(v) = decode_image(&png, &spec, Path::new("fuzz.png")) {
            prop_assert_eq!(v.len(), 3 * 8 * 8);
        }
        prop_assert!(t.elapsed() < Duration::from_secs(2), "{width}×{height}: {:?}", t.elapsed());
    }

    /// Real images of any small size and aspect ratio, to any model shape: exactly C·H·W
    /// values inside the value range.
    #[test]
    fn c5_no_silent_images_of_any_shape_fill_the_model_input(
        iw in 1u32..300,
        ih in 1u32..300,
        c in prop::sample::select(vec![1usize, 3]),
        h in 1usize..40,
        w in 1usize..40,
        seed in any::<u8>(),
    ) {
        let img = image::RgbImage::from_fn(iw, ih, |x, y| {
            image::Rgb([(x as u8).wrapping_add(seed), (y as u8).wrapping_mul(3), seed])
        });
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap_or_else(|e| panic!("{e}"));
        let spec = InputSpec { name: "image".into(), shape: [c, h, w], value_range: [-1.0, 2.0] };
        let v = decode_image(&png, &spec, Path::new("fuzz.png"));
        prop_assert!(v.is_ok(), "{iw}×{ih} to {c}×{h}×{w}: {:?}", v.err());
        let v = v.unwrap_or_default();
        prop_assert_eq!(v.len(), c * h * w);
        prop_assert!(v.iter().all(|x| (-1.0..=2.0).contains(x)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    /// Byte-level damage to a graph file whose sha256 was updated to match: both backends
    /// return the same verdict (typed error, or the same logits), without a panic.
    #[test]
    fn c4_no_panic_graph_loader_survives_damaged_bytes(
        shared in any::<bool>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut bytes = fixture_graph(shared);
        for (at, byte, kind) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
        }
        assert_agree(&verdicts(&bytes, shared));
    }

    /// Structured mutations (shapes, attributes, operators, wiring, element types, opset)
    /// reach the checks and the engines: same verdict on both backends, no panic.
    #[test]
    fn c5_no_silent_graph_mutations_get_the_same_verdict_on_both_backends(
        shared in any::<bool>(),
        mutations in proptest::collection::vec(mutation(), 1..3),
    ) {
        let mut model = pb::ModelProto::decode(fixture_graph(shared).as_slice())
            .unwrap_or_else(|e| panic!("{e}"));
        for m in &mutations {
            apply(&mut model, m);
        }
        assert_agree(&verdicts(&model.encode_to_vec(), shared));
    }
}
