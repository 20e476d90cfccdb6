//! The runtime under hostile input (issue 12, classes 3–6): exports, manifests, graphs,
//! images and command lines made by someone who wants a crash, a hang, unbounded memory or a
//! wrong answer with exit code 0. Every case must end in a clear, typed error (or the right
//! answer), on both backends, without a panic banner.
//!
//! Test names carry their class: `c3_bounded_*` (every value bounded before allocating),
//! `c4_no_panic_*`, `c5_no_silent_*` (no silent wrong answer), `c6_integrity_*`.

use crate::common;

#[cfg(feature = "cli")]
use oats_testkit::mkfifo;
use std::path::Path;
#[cfg(feature = "cli")]
use std::path::PathBuf;
#[cfg(feature = "cli")]
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use oats_runtime::input::{decode_image, MAX_BATCH_ELEMENTS};
use oats_runtime::manifest::sha256_hex;
use oats_runtime::{
    bench, Backend, Batch, InputSpec, Manifest, OatsModel, Options, RuntimeError, Selector,
};
use prost::Message;
use tract_onnx::pb;

// ---------------------------------------------------------------------------------------
// Helpers

/// The backends every case runs on: tract always; ONNX Runtime when this build has it and
/// the library is there (under OATS_REQUIRE_TOOLS=1 a missing library fails the test).
fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Tract];
    if cfg!(feature = "ort") {
        match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) if !p.is_empty() => b.push(Backend::Ort),
            _ => tool_missing("ONNX Runtime: ORT_DYLIB_PATH is not set"),
        }
    }
    b
}

fn open_on(dir: &Path, backend: Backend) -> Result<OatsModel, RuntimeError> {
    OatsModel::open(
        dir,
        &Options {
            backend,
            threads: Some(1),
            preload: true,
            ..Options::default()
        },
    )
}

/// Opens `dir` on every backend and returns the error each gave; a backend that loads the
/// export fails the test (`what` says which case).
fn refused_everywhere(dir: &Path, what: &str) -> Vec<RuntimeError> {
    backends()
        .into_iter()
        .map(|b| match open_on(dir, b) {
            Ok(_) => panic!("{what}: {b} accepted the export"),
            Err(e) => e,
        })
        .collect()
}

/// Writes `m` without validation (save() refuses what these tests need to write).
fn write_raw(dir: &Path, m: &Manifest) {
    let text = serde_yaml::to_string(m).unwrap_or_else(|e| panic!("{e}"));
    write(dir, "manifest.yaml", text.as_bytes());
}

/// Replaces the graph file of manifest graph `i` (and every graph sharing it) and updates
/// their sha256, so that only the content is hostile.
fn replace_graph(dir: &Path, m: &mut Manifest, i: usize, bytes: &[u8]) {
    let file = file_of(&m.graphs[i]).to_string();
    write(dir, &file, bytes);
    for g in m
        .graphs
        .iter_mut()
        .filter(|g| g.file.as_ref() == Some(&file))
    {
        g.sha256 = Some(sha256_hex(bytes));
    }
    write_raw(dir, m);
}

fn decode(bytes: &[u8]) -> pb::ModelProto {
    pb::ModelProto::decode(bytes).unwrap_or_else(|e| panic!("{e}"))
}

fn graph_mut(model: &mut pb::ModelProto) -> &mut pb::GraphProto {
    model.graph.as_mut().unwrap_or_else(|| panic!("no graph"))
}

/// A folded export whose first graph is `edit`ed at the protobuf level.
fn folded_with_graph_edit(dir: &Path, edit: impl FnOnce(&mut pb::ModelProto)) -> Manifest {
    let mut m = write_folded_export(dir);
    let mut model = decode(&std::fs::read(dir.join(file_of(&m.graphs[0]))).unwrap_or_default());
    edit(&mut model);
    replace_graph(dir, &mut m, 0, &model.encode_to_vec());
    m
}

fn reason_of(e: &RuntimeError) -> String {
    match e {
        RuntimeError::GraphRefused { reason, .. } => reason.clone(),
        other => panic!("expected GraphRefused, got {other}"),
    }
}

#[cfg(feature = "cli")]
fn tiny_png(dir: &Path) -> PathBuf {
    let path = dir.join("x.png");
    image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y) as u8]))
        .save(&path)
        .unwrap_or_else(|e| panic!("{e}"));
    path
}

#[cfg(feature = "cli")]
/// Runs a binary, killing it (and failing the test) if it is still running after `limit`:
/// a hang is a failure of its own, not a test that never ends.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn: {e}"));
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} still running after {limit:?}: it hangs");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait: {e}"),
        }
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("output: {e}"))
}

#[cfg(feature = "cli")]
const LIMIT: Duration = Duration::from_secs(20);

#[cfg(feature = "cli")]
fn oats_run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oats-run"));
    for a in args {
        c.arg(a);
    }
    c
}

#[cfg(feature = "cli")]
/// The binary failed with exit code 1 (an error from main, not a panic's 101 or a signal),
/// its stderr names `needle`, and there is no panic banner.
fn assert_clean_failure(o: &Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "status {:?}; stderr:\n{err}",
        o.status
    );
    assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    oats_testkit::assert_no_panic_banner(&err);
    err
}

#[cfg(feature = "cli")]
/// `sh -c 'ulimit -v KIB; exec BIN ARGS…'`: the binary with its address space capped.
fn under_ulimit(kib: u64, bin: &str, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
        .arg(bin)
        .args(args);
    c
}

#[cfg(feature = "cli")]
/// Address space for the resource tests: the binaries need about 100 MiB of it to start and
/// load the fixture; the bugs these tests pin needed gigabytes.
const ULIMIT_KIB: u64 = 768 * 1024;

/// CRC-32 (IEEE) of PNG chunks.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for part in parts {
        for &b in *part {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    c.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
    c
}

/// A PNG that is only a valid header: IHDR with these dimensions (8-bit, `color` 0 grey, 2
/// RGB, 6 RGBA), a few bytes of IDAT and IEND. What a decompression bomb looks like to the
/// decoder before it inflates anything.
fn png_header(width: u32, height: u32, color: u8) -> Vec<u8> {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, color, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// The aspect-ratio bomb: a real grey PNG of 1×`height` pixels, compressed hard
/// (2,000,000 rows make about 4 KiB).
fn strip_png(path: &Path, height: u32) {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    PngEncoder::new_with_quality(&mut bytes, CompressionType::Best, FilterType::NoFilter)
        .write_image(
            &vec![0u8; height as usize],
            1,
            height,
            image::ExtendedColorType::L8,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{e}"));
}

fn spec(c: usize, h: usize, w: usize) -> InputSpec {
    InputSpec {
        name: "image".into(),
        shape: [c, h, w],
        value_range: [0.0, 1.0],
    }
}

// ---------------------------------------------------------------------------------------
// Class 3: every value that reaches an engine is bounded before allocating.

/// The example: only the manifest changed, so every sha256 matches, and tract
/// panicked inside Gather (oats-run exited 101). Now both backends refuse it at load.
#[test]
fn c3_bounded_lambda_index_past_the_table_is_refused_at_load() {
    let dir = tempdir();
    let mut m = write_shared_export(dir.path());
    m.graphs[1].lambda_index = Some(99);
    save(dir.path(), &m);
    for e in refused_everywhere(dir.path(), "lambda_index 99") {
        let r = reason_of(&e);
        assert!(
            r.contains("lambda_index 99") && r.contains("3 rows") && r.contains(&m.graphs[1].id),
            "{r}"
        );
    }
    // Lazily: the file is checked when it is first loaded, for every graph that uses it.
    let lazy = OatsModel::open(
        dir.path(),
        &Options {
            preload: false,
            ..Options::default()
        },
    );
    assert!(
        matches!(lazy, Err(RuntimeError::GraphRefused { .. })),
        "{:?}",
        lazy.err()
    );
    // The last row is fine.
    m.graphs[1].lambda_index = Some(2);
    m.graphs[2].lambda_index = Some(1);
    save(dir.path(), &m);
    for b in backends() {
        assert!(open_on(dir.path(), b).is_ok(), "{b}");
    }
}

#[cfg(feature = "cli")]
#[test]
fn c3_bounded_oats_run_with_lambda_index_99_exits_with_a_message() {
    let dir = tempdir();
    let mut m = write_shared_export(dir.path());
    m.graphs[0].lambda_index = Some(99);
    save(dir.path(), &m);
    let img = tiny_png(dir.path());
    for b in backends() {
        let o = run_bounded(
            oats_run(&[&dir.path(), &img, &"--backend", &b.name()]),
            LIMIT,
        );
        assert_clean_failure(&o, "lambda_index 99 is past the end");
    }
}

/// A λ table gathered on an axis it does not have, a Gather of a computed (not constant)
/// table: the index cannot be bounded, so the graph is refused.
#[test]
fn c3_bounded_lambda_index_that_cannot_be_bounded_is_refused() {
    type Edit = fn(&mut pb::GraphProto);
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "axis",
            |g| {
                for n in g.node.iter_mut().filter(|n| n.op_type == "Gather") {
                    for a in &mut n.attribute {
                        a.i = 5;
                    }
                }
            },
            "axis 5",
        ),
        (
            "computed table",
            |g| {
                let table = g.initializer.iter().position(|t| t.name == "lambda_table");
                let t = g
                    .initializer
                    .remove(table.unwrap_or_else(|| panic!("no table")));
                g.initializer.push(pb::TensorProto {
                    name: "lambda_table_raw".into(),
                    ..t
                });
                g.node.insert(
                    0,
                    pb::NodeProto {
                        op_type: "Relu".into(),
                        name: "computed".into(),
                        input: vec!["lambda_table_raw".into()],
                        output: vec!["lambda_table".into()],
                        ..Default::default()
                    },
                );
            },
            "constant λ table",
        ),
        (
            "index used elsewhere",
            |g| {
                g.node.push(pb::NodeProto {
                    op_type: "Identity".into(),
                    name: "leak".into(),
                    input: vec!["lambda_index".into()],
                    output: vec!["leaked".into()],
                    ..Default::default()
                });
            },
            "feeds node \"leak\"",
        ),
        (
            "never read",
            |g| {
                g.node
                    .retain(|n| n.op_type != "Gather" && n.op_type != "Add");
                for n in &mut g.node {
                    for o in &mut n.output {
                        if o == "gemm" {
                            *o = "logits".into();
                        }
                    }
                }
            },
            "never reads lambda_index",
        ),
    ];
    for (name, edit, needle) in cases {
        let dir = tempdir();
        let mut m = write_shared_export(dir.path());
        let mut model =
            decode(&std::fs::read(dir.path().join(file_of(&m.graphs[0]))).unwrap_or_default());
        edit(graph_mut(&mut model));
        replace_graph(dir.path(), &mut m, 0, &model.encode_to_vec());
        for e in refused_everywhere(dir.path(), name) {
            let r = reason_of(&e);
            assert!(r.contains(needle), "{name}: {r}");
        }
    }
}

/// The aspect-ratio bomb: 4 KiB of PNG, 1×2,000,000 pixels. Refused from its header
/// (no side over 16,384), before a row is inflated.
#[test]
fn c3_bounded_tall_strip_png_is_refused_before_decoding() {
    let dir = tempdir();
    let path = dir.path().join("strip.png");
    strip_png(&path, 2_000_000);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(size < 16 << 10, "{size} bytes");
    let t = Instant::now();
    match Batch::from_images(&[&path], &spec(1, 8, 8)) {
        Err(RuntimeError::Image { path: p, source }) => {
            assert_eq!(p, path);
            assert!(
                source.to_string().to_lowercase().contains("limit"),
                "{source}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// A strip within the side limit is cropped to the model's aspect ratio first, so nothing
/// is ever enlarged along its long side (1×16,384 to 8 wide used to mean 8×131,072).
#[test]
fn c3_bounded_thin_strip_is_cropped_before_it_is_resized() {
    let dir = tempdir();
    let path = dir.path().join("strip.png");
    strip_png(&path, 16_384);
    let b = Batch::from_images(&[&path], &spec(3, 8, 8)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.shape(), [1, 3, 8, 8]);
}

/// Decompression bombs: headers claiming 16,384² RGBA (1 GiB decoded) or 100,000 pixels on a
/// side are refused from the header.
#[test]
fn c3_bounded_decompression_bomb_headers_are_refused() {
    for (w, h, color) in [
        (16_384u32, 16_384u32, 6u8),
        (100_000, 100_000, 0),
        (u32::MAX / 2, 1, 2),
        (1, 20_000_000, 0),
    ] {
        let png = png_header(w, h, color);
        let t = Instant::now();
        let r = decode_image(&png, &spec(3, 8, 8), Path::new("bomb.png"));
        assert!(
            matches!(&r, Err(RuntimeError::Image { .. })),
            "{w}×{h}: {r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{w}×{h}: {:?}",
            t.elapsed()
        );
    }
}

#[cfg(feature = "cli")]
/// The same bombs through oats-run with its address space capped: a clear error, quickly.
#[test]
fn c3_bounded_image_bombs_under_ulimit() {
    let dir = tempdir();
    write_folded_export(dir.path());
    let strip = dir.path().join("strip.png");
    strip_png(&strip, 2_000_000);
    let bomb = dir.path().join("bomb.png");
    write(dir.path(), "bomb.png", &png_header(16_384, 16_384, 6));
    let d = dir.path().to_string_lossy().into_owned();
    for img in [&strip, &bomb] {
        let t = Instant::now();
        let o = run_bounded(
            under_ulimit(
                ULIMIT_KIB,
                env!("CARGO_BIN_EXE_oats-run"),
                &[&d, &img.to_string_lossy()],
            ),
            LIMIT,
        );
        let err = assert_clean_failure(&o, &img.display().to_string());
        assert!(err.contains("limit"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
}

#[cfg(feature = "cli")]
/// A manifest declaring a huge input (4096³ values per image) is refused before any batch
/// is sized from it, with the address space capped.
#[test]
fn c3_bounded_huge_declared_input_shape_is_refused() {
    let dir = tempdir();
    let mut m = write_folded_export(dir.path());
    m.input.shape = [4096, 4096, 4096];
    write_raw(dir.path(), &m);
    match Manifest::load(dir.path().join("manifest.yaml")) {
        Err(RuntimeError::ManifestInvalid { reason, .. }) => {
            assert!(reason.contains("values per image"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let img = tiny_png(dir.path());
    let o = run_bounded(
        under_ulimit(
            ULIMIT_KIB,
            env!("CARGO_BIN_EXE_oats-run"),
            &[&dir.path().to_string_lossy(), &img.to_string_lossy()],
        ),
        LIMIT,
    );
    assert_clean_failure(&o, "values per image");
}

#[cfg(feature = "cli")]
/// Graph-side huge shapes: an initializer declaring 2^40 values but storing one, an image
/// input declared 100,000×100,000. Refused before an engine allocates the declared size.
#[test]
fn c3_bounded_huge_declared_graph_shapes_are_refused() {
    let dir = tempdir();
    folded_with_graph_edit(dir.path(), |model| {
        let g = graph_mut(model);
        g.initializer[0].dims = vec![1 << 20, 1 << 20];
    });
    for e in refused_everywhere(dir.path(), "huge initializer") {
        let r = reason_of(&e);
        assert!(
            r.contains("declares dimensions") && r.contains("conv_w"),
            "{r}"
        );
    }

    let dir = tempdir();
    folded_with_graph_edit(dir.path(), |model| {
        let g = graph_mut(model);
        if let Some(pb::type_proto::Value::TensorType(t)) =
            g.input[0].r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if let Some(s) = t.shape.as_mut() {
                for d in s.dim.iter_mut().skip(2) {
                    d.value = Some(pb::tensor_shape_proto::dimension::Value::DimValue(100_000));
                }
            }
        }
    });
    for e in refused_everywhere(dir.path(), "huge input") {
        let r = reason_of(&e);
        assert!(r.contains("100000") && r.contains("input.shape"), "{r}");
    }
    let img = tiny_png(dir.path());
    let o = run_bounded(
        under_ulimit(
            ULIMIT_KIB,
            env!("CARGO_BIN_EXE_oats-run"),
            &[&dir.path().to_string_lossy(), &img.to_string_lossy()],
        ),
        LIMIT,
    );
    assert_clean_failure(&o, "input.shape");
}

/// A graph that computes a tensor of more than 2^26 values per image (a broadcast of two
/// small constants) is refused from its shapes, before an engine allocates it.
#[test]
fn c3_bounded_graph_intermediate_tensors_are_bounded() {
    let dir = tempdir();
    folded_with_graph_edit(dir.path(), |model| {
        let g = graph_mut(model);
        for (name, dims) in [("tall", [8192i64, 1]), ("wide", [1, 16384])] {
            g.initializer.push(pb::TensorProto {
                name: name.into(),
                dims: dims.to_vec(),
                data_type: 1,
                float_data: vec![1.0; (dims[0] * dims[1]) as usize],
                ..Default::default()
            });
        }
        g.node.insert(
            0,
            pb::NodeProto {
                op_type: "Mul".into(),
                name: "bomb".into(),
                input: vec!["tall".into(), "wide".into()],
                output: vec!["bomb".into()],
                ..Default::default()
            },
        );
    });
    for e in refused_everywhere(dir.path(), "broadcast bomb") {
        let r = reason_of(&e);
        assert!(
            r.contains("\"bomb\"") && r.contains("values per image"),
            "{r}"
        );
    }
}

/// The batch is bounded by the graph's largest tensor, not only by the input: a graph whose
/// activations are 4096 times its input refuses a batch whose activations would exceed the
/// limit, before the engine runs.
#[test]
fn c3_bounded_batch_is_bounded_by_the_largest_tensor() {
    let dir = tempdir();
    let mut m = folded_with_graph_edit(dir.path(), |model| {
        let g = graph_mut(model);
        g.initializer.push(pb::TensorProto {
            name: "widen".into(),
            dims: vec![1, 4096, 1, 1],
            data_type: 1,
            float_data: vec![0.5; 4096],
            ..Default::default()
        });
        g.node.insert(
            0,
            pb::NodeProto {
                op_type: "Mul".into(),
                name: "wide".into(),
                input: vec!["image".into(), "widen".into()],
                output: vec!["wide".into()],
                ..Default::default()
            },
        );
    });
    m.graphs[0].params += 4096;
    save(dir.path(), &m);
    // 4096 × 64 values per image: 1024 images reach the limit exactly.
    let per_image = 4096 * (H * W);
    let over = MAX_BATCH_ELEMENTS / per_image + 1;
    let big =
        Batch::new([over, C, H, W], vec![0.5; over * C * H * W]).unwrap_or_else(|e| panic!("{e}"));
    let one = Batch::new([1, C, H, W], images(1, 4)).unwrap_or_else(|e| panic!("{e}"));
    for b in backends() {
        let model = open_on(dir.path(), b).unwrap_or_else(|e| panic!("{b}: {e}"));
        assert!(model.infer(&one).is_ok(), "{b}");
        match model.infer(&big) {
            Err(RuntimeError::InvalidArgument { what, reason }) => {
                assert_eq!(what, "batch");
                assert!(
                    reason.contains(&per_image.to_string())
                        && reason.contains(&format!("at most {}", over - 1)),
                    "{reason}"
                );
            }
            other => panic!("{b}: {other:?}"),
        }
    }
}

#[test]
fn c3_bounded_batch_sizes() {
    let s = spec(1, 8, 8);
    for n in [1_000_000_000usize, usize::MAX] {
        match bench::synthetic_batch(&s, n) {
            Err(RuntimeError::InvalidArgument { what, reason }) => {
                assert_eq!(what, "batch");
                assert!(reason.contains(&MAX_BATCH_ELEMENTS.to_string()), "{reason}");
            }
            other => panic!("{n}: {other:?}"),
        }
    }
    // Batch::new refuses the shape before looking at the data.
    assert!(matches!(
        Batch::new([MAX_BATCH_ELEMENTS + 1, 1, 1, 1], vec![]),
        Err(RuntimeError::InvalidArgument { .. })
    ));
}

#[cfg(feature = "cli")]
#[test]
fn c3_bounded_oats_bench_huge_batch_and_iters_exit_with_a_message() {
    let dir = tempdir();
    write_folded_export(dir.path());
    let d = dir.path().to_string_lossy().into_owned();
    let bench_bin = env!("CARGO_BIN_EXE_oats-bench");
    let o = run_bounded(
        under_ulimit(
            ULIMIT_KIB,
            bench_bin,
            &[&d, "--batch", "1000000000", "--iters", "1"],
        ),
        LIMIT,
    );
    assert_clean_failure(&o, "invalid batch");
    let o = run_bounded(
        under_ulimit(
            ULIMIT_KIB,
            bench_bin,
            &[&d, "--batch", "1", "--iters", "1000000000000"],
        ),
        LIMIT,
    );
    assert_clean_failure(&o, "invalid iters");
    let o = run_bounded(
        under_ulimit(
            ULIMIT_KIB,
            bench_bin,
            &[
                &d,
                "--batch",
                "1",
                "--iters",
                "1",
                "--switch-iters",
                "100000000000",
            ],
        ),
        LIMIT,
    );
    assert_clean_failure(&o, "invalid switch iterations");
}

#[test]
fn c3_bounded_thread_counts() {
    let dir = tempdir();
    write_folded_export(dir.path());
    for threads in [0, 1_000_000] {
        let r = OatsModel::open(
            dir.path(),
            &Options {
                threads: Some(threads),
                ..Options::default()
            },
        );
        assert!(
            matches!(&r, Err(RuntimeError::InvalidArgument { what, .. }) if what == "threads"),
            "{threads}: {:?}",
            r.err()
        );
    }
}

#[cfg(feature = "cli")]
/// A FIFO where a graph, the manifest, the reference bundle or an image should be: refused
/// from its type before it is opened, so nothing waits for a writer that never comes.
#[cfg(unix)]
#[test]
fn c3_bounded_fifos_are_refused_without_hanging() {
    // Graph file.
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    let graph = dir.path().join(file_of(&m.graphs[2]));
    std::fs::remove_file(&graph).unwrap_or_else(|e| panic!("{e}"));
    mkfifo(&graph);
    match open_on(dir.path(), Backend::Tract) {
        Err(RuntimeError::NotRegularFile { path, kind }) => {
            assert!(path.ends_with(file_of(&m.graphs[2])));
            assert_eq!(kind, "a FIFO");
        }
        other => panic!("{:?}", other.err()),
    }
    let img = tiny_png(dir.path());
    let o = run_bounded(
        oats_run(&[&dir.path(), &img, &"--id", &m.graphs[2].id.as_str()]),
        LIMIT,
    );
    assert_clean_failure(&o, "is a FIFO, not a regular file");

    // Image.
    let dir = tempdir();
    write_folded_export(dir.path());
    let fifo = dir.path().join("image.png");
    mkfifo(&fifo);
    let o = run_bounded(oats_run(&[&dir.path(), &fifo]), LIMIT);
    assert_clean_failure(&o, "is a FIFO, not a regular file");

    // Manifest.
    let dir = tempdir();
    write_folded_export(dir.path());
    let manifest = dir.path().join("manifest.yaml");
    std::fs::remove_file(&manifest).unwrap_or_else(|e| panic!("{e}"));
    mkfifo(&manifest);
    let o = run_bounded(oats_run(&[&dir.path(), &img]), LIMIT);
    assert_clean_failure(&o, "is a FIFO, not a regular file");

    // Reference bundle (read by oats-bench and reference::check_reference).
    let dir = tempdir();
    let mut m = write_folded_export(dir.path());
    mkfifo(&dir.path().join("reference.safetensors"));
    m.reference = Some(oats_runtime::ReferenceBundle {
        file: "reference.safetensors".into(),
        sha256: "0".repeat(64),
    });
    save(dir.path(), &m);
    let model = open_on(dir.path(), Backend::Tract).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        oats_runtime::reference::check_reference(&model),
        Err(RuntimeError::NotRegularFile { kind: "a FIFO", .. })
    ));
}

#[cfg(feature = "cli")]
/// Devices: /dev/zero as an image never ends, so it is refused from its type.
#[cfg(unix)]
#[test]
fn c3_bounded_devices_are_refused() {
    let dir = tempdir();
    write_folded_export(dir.path());
    match Batch::from_images(&[Path::new("/dev/zero")], &spec(1, 8, 8)) {
        Err(RuntimeError::NotRegularFile { kind, .. }) => assert_eq!(kind, "a character device"),
        other => panic!("{other:?}"),
    }
    let o = run_bounded(oats_run(&[&dir.path(), &"/dev/zero"]), LIMIT);
    assert_clean_failure(&o, "/dev/zero is a character device");
}

/// File sizes are checked before reading: a manifest over 1 MiB, a graph over 2 GiB, an
/// image over 64 MiB (sparse files, so the test writes almost nothing).
#[test]
fn c3_bounded_oversized_files_are_refused_before_reading() {
    let dir = tempdir();
    write_folded_export(dir.path());
    let manifest = dir.path().join("manifest.yaml");
    let mut text = std::fs::read_to_string(&manifest).unwrap_or_default();
    text.push_str(&format!("# {}\n", "x".repeat(2 << 20)));
    std::fs::write(&manifest, text).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        Manifest::load(&manifest),
        Err(RuntimeError::FileTooLarge {
            what: "a manifest",
            ..
        })
    ));

    // A 3 GiB graph (over protobuf's 2 GiB): refused from its size, not read.
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    let graph = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(file_of(&m.graphs[0])))
        .unwrap_or_else(|e| panic!("{e}"));
    graph.set_len(3 << 30).unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    match open_on(dir.path(), Backend::Tract) {
        Err(RuntimeError::FileTooLarge { what, size, .. }) => {
            assert_eq!((what, size), ("an ONNX graph", 3 << 30))
        }
        other => panic!("{:?}", other.err()),
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    let big = dir.path().join("big.png");
    let f = std::fs::File::create(&big).unwrap_or_else(|e| panic!("{e}"));
    f.set_len(65 << 20).unwrap_or_else(|e| panic!("{e}"));
    match Batch::from_images(&[&big], &spec(1, 8, 8)) {
        Err(RuntimeError::FileTooLarge { what, size, .. }) => {
            assert_eq!((what, size), ("an image", 65 << 20))
        }
        other => panic!("{other:?}"),
    }
}

/// YAML that expands or nests without bound: an alias bomb (a few KiB that would expand to
/// gigabytes) is refused before parsing; 100,000 nested sequences hit the parser's depth
/// limit. Both quickly.
#[test]
fn c3_bounded_yaml_alias_bombs_and_nesting() {
    let mut bomb = format!("a0: &a0 \"{}\"\n", "x".repeat(1000));
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    bomb.push_str("schema_version: 1\nclass_names: *a11\n");
    let t = Instant::now();
    match Manifest::from_yaml_str(&bomb, Path::new("bomb.yaml")) {
        Err(RuntimeError::ManifestInvalid { reason, .. }) => {
            assert!(
                reason.contains("alias") && reason.contains("line 2"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A merge key is an alias too.
    let merge = "base: &b {x: 1}\nschema_version: 1\nmodel_id: {<<: *b}\n";
    assert!(matches!(
        Manifest::from_yaml_str(merge, Path::new("m.yaml")),
        Err(RuntimeError::ManifestInvalid { .. })
    ));

    // Flow nesting costs the YAML scanner quadratic time (100,000 levels: over a minute):
    // refused from the text. Block nesting is linear and bounded by the size limit.
    let deep = format!(
        "schema_version: 1\nclass_names: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    match Manifest::from_yaml_str(&deep, Path::new("deep.yaml")) {
        Err(RuntimeError::ManifestInvalid { reason, .. }) => {
            assert!(reason.contains("nested more than"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let deep = format!(
        "schema_version: 1\nclass_names: {}x\n",
        "- ".repeat(400_000)
    );
    let r = Manifest::from_yaml_str(&deep, Path::new("deep.yaml"));
    assert!(
        matches!(r, Err(RuntimeError::ManifestParse { .. })),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// What oats writes, it can read: a string that looks like an alias is refused on save.
#[test]
fn c3_bounded_save_refuses_what_load_would_refuse() {
    let dir = tempdir();
    let mut m = write_folded_export(dir.path());
    m.class_names[0] = "*cat".into();
    assert!(matches!(
        m.save(dir.path().join("manifest.yaml")),
        Err(RuntimeError::ManifestInvalid { .. })
    ));
    m.class_names[0] = "t*shirt & co".into();
    m.save(dir.path().join("manifest.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        Manifest::load(dir.path().join("manifest.yaml")).ok(),
        Some(m)
    );
}

// ---------------------------------------------------------------------------------------
// Class 4: no panic crosses a public boundary.

#[cfg(feature = "cli")]
/// `oats-run … > /dev/full` and into a pipe whose reader is gone: println! panicked there.
#[cfg(unix)]
#[test]
fn c4_no_panic_oats_run_stdout_full_or_closed() {
    let dir = tempdir();
    write_folded_export(dir.path());
    let img = tiny_png(dir.path());
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap_or_else(|e| panic!("{e}"));
    let o = oats_run(&[&dir.path(), &img])
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_clean_failure(&o, "<stdout>");

    let (reader, writer) = std::io::pipe().unwrap_or_else(|e| panic!("{e}"));
    drop(reader);
    let o = oats_run(&[&dir.path(), &img])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_clean_failure(&o, "<stdout>");
}

#[cfg(feature = "cli")]
#[cfg(unix)]
#[test]
fn c4_no_panic_oats_bench_stdout_full_or_closed() {
    let dir = tempdir();
    write_folded_export(dir.path());
    let args = [
        "--batch",
        "1",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--switch-iters",
        "2",
    ];
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap_or_else(|e| panic!("{e}"));
    let o = Command::new(env!("CARGO_BIN_EXE_oats-bench"))
        .arg(dir.path())
        .args(args)
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_clean_failure(&o, "<stdout>");

    let (reader, writer) = std::io::pipe().unwrap_or_else(|e| panic!("{e}"));
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_oats-bench"))
        .arg(dir.path())
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_clean_failure(&o, "<stdout>");
}

/// Public functions given inconsistent or extreme values return errors or `None`.
#[test]
fn c4_no_panic_public_api_edges() {
    let dir = tempdir();
    write_folded_export(dir.path());
    let model = open_on(dir.path(), Backend::Tract).unwrap_or_else(|e| panic!("{e}"));
    let p = model
        .infer(&Batch::new([1, C, H, W], images(1, 3)).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(p.row(0).is_some() && p.row(1).is_none() && p.row(usize::MAX).is_none());
    // A Prediction assembled by hand with too few logits: top_k stops, no panic.
    let mut broken = p.clone();
    broken.batch = 5;
    assert_eq!(broken.top_k(2).len(), 1);
    // Overflowing shapes.
    let huge = InputSpec {
        shape: [usize::MAX, usize::MAX, 2],
        ..spec(1, 1, 1)
    };
    assert!(decode_image(&png_header(2, 2, 0), &huge, Path::new("x.png")).is_err());
    assert!(Batch::new([usize::MAX, usize::MAX, 2, 2], vec![]).is_err());
    assert!(model
        .infer(&Batch::new([0, C, H, W], vec![]).unwrap_or_else(|e| panic!("{e}")))
        .is_err());
    assert!(bench::bench_graph(
        &model,
        "l0-w0.5",
        &bench::BenchConfig {
            batch: 1,
            warmup: 0,
            iters: usize::MAX
        }
    )
    .is_err());
    assert!(bench::switch_cost(&model, "l0-w0.5", "l1-w1", usize::MAX).is_err());
}

// ---------------------------------------------------------------------------------------
// Class 5: no silent wrong answer.

#[cfg(feature = "cli")]
#[test]
fn c5_no_silent_non_finite_and_out_of_range_lambda_is_refused() {
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    let model = open_on(dir.path(), Backend::Tract).unwrap_or_else(|e| panic!("{e}"));
    for lambda in [f64::NAN, f64::INFINITY, -1.0, 1.5] {
        for s in [
            Selector::Explicit { lambda, width: 1.0 },
            Selector::NearestLambda { lambda, width: 1.0 },
        ] {
            assert!(
                matches!(model.select(&s), Err(RuntimeError::InvalidArgument { .. })),
                "{s:?}"
            );
            // Nothing fell back: the active configuration is still the first.
            assert_eq!(model.active().id, m.graphs[0].id);
        }
    }
    let img = tiny_png(dir.path());
    for (lambda, needle) in [
        ("NaN", "NaN is not a finite value"),
        ("inf", "inf is not a finite value"),
        ("1.5", "1.5 is not a finite value in [0, 1]"),
    ] {
        let o = run_bounded(
            oats_run(&[
                &dir.path(),
                &img,
                &"--lambda",
                &lambda,
                &"--width",
                &"1",
                &"--nearest",
            ]),
            LIMIT,
        );
        assert_clean_failure(&o, needle);
    }
}

/// A λ inside [0, 1] but outside what the export has at that width is not clamped to the
/// nearest end; a manifest graph outside the trained range is refused.
#[test]
fn c5_no_silent_lambda_outside_the_exported_range_is_not_clamped() {
    let dir = tempdir();
    let mut m = write_folded_export(dir.path());
    m.graphs.retain(|g| g.lambda <= 0.5);
    save(dir.path(), &m);
    let model = open_on(dir.path(), Backend::Tract).unwrap_or_else(|e| panic!("{e}"));
    let r = model.select(&Selector::NearestLambda {
        lambda: 0.9,
        width: 1.0,
    });
    assert!(
        matches!(&r, Err(RuntimeError::InvalidArgument { reason, .. }) if reason.contains("[0, 0.5]")),
        "{r:?}"
    );
    assert!(model
        .select(&Selector::NearestLambda {
            lambda: 0.4,
            width: 1.0
        })
        .is_ok());

    let mut m = write_folded_export(dir.path());
    m.training.lambdas = vec![0.0, 0.5];
    write_raw(dir.path(), &m);
    match Manifest::load(dir.path().join("manifest.yaml")) {
        Err(RuntimeError::ManifestInvalid { reason, .. }) => {
            assert!(reason.contains("outside the trained range"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let mut m = write_folded_export(dir.path());
    m.training.widths = vec![1.0];
    write_raw(dir.path(), &m);
    assert!(matches!(
        Manifest::load(dir.path().join("manifest.yaml")),
        Err(RuntimeError::ManifestInvalid { .. })
    ));
}

/// The manifest's shapes are checked against the graph, never imposed on it, and both
/// backends refuse the same way.
#[test]
fn c5_no_silent_manifest_shapes_that_disagree_with_the_graph_are_refused() {
    type Edit = fn(&mut Manifest);
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "width",
            |m| m.input.shape = [1, 8, 9],
            "input.shape is [1, 8, 9]",
        ),
        (
            "channels",
            |m| m.input.shape = [3, 8, 8],
            "input.shape is [3, 8, 8]",
        ),
        (
            "classes",
            |m| {
                m.output.classes = 4;
                m.class_names.push("fish".into());
            },
            "output.classes is 4",
        ),
        (
            "input name",
            |m| m.input.name = "pixels".into(),
            "needs [\"pixels\"]",
        ),
        (
            "output name",
            |m| m.output.name = "probs".into(),
            "no output \"probs\"",
        ),
    ];
    for (name, edit, needle) in cases {
        let dir = tempdir();
        let mut m = write_folded_export(dir.path());
        edit(&mut m);
        save(dir.path(), &m);
        for e in refused_everywhere(dir.path(), name) {
            let r = reason_of(&e);
            assert!(r.contains(needle), "{name}: {r}");
        }
    }
}

/// Claims of the manifest that the graph settles: params, MACs, opset.
#[test]
fn c5_no_silent_params_macs_and_opset_claims_are_checked() {
    type Edit = fn(&mut Manifest);
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("params", |m| m.graphs[0].params = 28, "says 28 params"),
        ("macs", |m| m.graphs[0].macs = 1, "says 1 MACs"),
        ("opset", |m| m.graphs[0].opset = 17, "says opset 17"),
    ];
    for (name, edit, needle) in cases {
        let dir = tempdir();
        let mut m = write_folded_export(dir.path());
        edit(&mut m);
        save(dir.path(), &m);
        for e in refused_everywhere(dir.path(), name) {
            let r = reason_of(&e);
            assert!(
                r.contains(needle) && r.contains(&m.graphs[0].id),
                "{name}: {r}"
            );
        }
    }
    // The shared-weights graph (a λ table more) is counted the same way.
    let dir = tempdir();
    write_shared_export(dir.path());
    for b in backends() {
        assert!(open_on(dir.path(), b).is_ok(), "{b}");
    }
}

/// Metrics that contradict each other are refused at load.
#[test]
fn c5_no_silent_inconsistent_metrics_are_refused() {
    type Edit = fn(&mut Manifest);
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "ra above sa",
            |m| {
                m.graphs[0].metrics.ra.insert("pgd20".into(), 0.99);
            },
            "exceeds metrics.sa",
        ),
        (
            "worst above an ra",
            |m| {
                m.graphs[0].metrics.ra.insert("fgsm".into(), 0.001);
            },
            "exceeds metrics.ra.fgsm",
        ),
        (
            "no samples",
            |m| m.graphs[0].metrics.samples = None,
            "no metrics.samples",
        ),
        (
            "zero samples",
            |m| m.graphs[0].metrics.samples = Some(0),
            "no metrics.samples",
        ),
        (
            "not a count",
            |m| m.graphs[0].metrics.samples = Some(7),
            "whole number",
        ),
        (
            "percentiles",
            |m| {
                for l in m.graphs[0].metrics.latency_ms.values_mut() {
                    l.p99 = l.p50 / 2.0;
                }
            },
            "must not decrease",
        ),
    ];
    for (name, edit, needle) in cases {
        let dir = tempdir();
        let mut m = write_folded_export(dir.path());
        edit(&mut m);
        write_raw(dir.path(), &m);
        match Manifest::load(dir.path().join("manifest.yaml")) {
            Err(RuntimeError::ManifestInvalid { reason, .. }) => {
                assert!(reason.contains(needle), "{name}: {reason}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // Shared weights: two λ on one table row.
    let dir = tempdir();
    let mut m = write_shared_export(dir.path());
    m.graphs[1].lambda_index = m.graphs[0].lambda_index;
    write_raw(dir.path(), &m);
    match Manifest::load(dir.path().join("manifest.yaml")) {
        Err(RuntimeError::ManifestInvalid { reason, .. }) => {
            assert!(reason.contains("already uses lambda_index 0"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

/// A graph whose logits are not finite is an error on every backend, not a NaN softmax.
#[test]
fn c5_no_silent_non_finite_logits_are_errors() {
    let dir = tempdir();
    let mut m = write_folded_export(dir.path());
    let mut w = TinyWeights::for_config(m.graphs[0].lambda, m.graphs[0].width);
    w.fc_b[1] = f32::INFINITY;
    w.fc_b[2] = f32::NAN;
    replace_graph(dir.path(), &mut m, 0, &tiny_model(&w, None));
    let x = Batch::new([2, C, H, W], images(2, 1)).unwrap_or_else(|e| panic!("{e}"));
    for b in backends() {
        let model = open_on(dir.path(), b).unwrap_or_else(|e| panic!("{b}: {e}"));
        match model.infer(&x) {
            Err(RuntimeError::Inference { source, .. }) => {
                assert!(
                    source.to_string().contains("non-finite logit"),
                    "{b}: {source}"
                )
            }
            other => panic!("{b}: {other:?}"),
        }
    }
}

/// A graph with a fixed batch of 1 keeps it: a batch of 2 is an error on both backends,
/// not reshaped into what the manifest implies.
#[test]
fn c5_no_silent_fixed_batch_is_not_overridden() {
    let dir = tempdir();
    folded_with_graph_edit(dir.path(), |model| {
        let g = graph_mut(model);
        for v in g.input.iter_mut().chain(g.output.iter_mut()) {
            if let Some(pb::type_proto::Value::TensorType(t)) =
                v.r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                if let Some(d) = t.shape.as_mut().and_then(|s| s.dim.first_mut()) {
                    d.value = Some(pb::tensor_shape_proto::dimension::Value::DimValue(1));
                }
            }
        }
    });
    let one = Batch::new([1, C, H, W], images(1, 2)).unwrap_or_else(|e| panic!("{e}"));
    let two = Batch::new([2, C, H, W], images(2, 2)).unwrap_or_else(|e| panic!("{e}"));
    for b in backends() {
        let model = open_on(dir.path(), b).unwrap_or_else(|e| panic!("{b}: {e}"));
        assert!(model.infer(&one).is_ok(), "{b}");
        assert!(model.infer(&two).is_err(), "{b}");
    }
}

/// Found by fuzzing (c5_no_silent_graph_mutations_get_the_same_verdict_on_both_backends):
/// tract refused a Gemm with transB = 2 that ONNX Runtime ran as transB = 1. Attributes
/// outside their ONNX domain, attributes an operator does not define and operators outside
/// the checked set are refused before either engine sees them.
#[test]
fn c5_no_silent_graphs_outside_the_checked_operators_are_refused() {
    type Edit = fn(&mut pb::GraphProto);
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "transB 2",
            |g| {
                for n in g.node.iter_mut().filter(|n| n.op_type == "Gemm") {
                    n.attribute[0].i = 2;
                }
            },
            "transB is 2",
        ),
        (
            "unknown attribute",
            |g| {
                g.node[1].attribute.push(pb::AttributeProto {
                    name: "alpha".into(),
                    r#type: 1,
                    f: 0.5,
                    ..Default::default()
                });
            },
            "attribute \"alpha\" is not one of Relu's",
        ),
        (
            "operator",
            |g| g.node[1].op_type = "Sigmoid".into(),
            "uses operator \"Sigmoid\"",
        ),
        (
            "custom domain",
            |g| g.node[1].domain = "com.example".into(),
            "domain \"com.example\"",
        ),
        (
            "out of order",
            |g| g.node.swap(0, 1),
            "which no input, initializer or earlier node defines",
        ),
        (
            "value_info",
            |g| g.value_info.push(g.output[0].clone()),
            "value_info",
        ),
        (
            "constant index out of range",
            |g| {
                g.initializer.push(pb::TensorProto {
                    name: "row".into(),
                    dims: vec![1],
                    data_type: 7,
                    int64_data: vec![7],
                    ..Default::default()
                });
                g.node.push(pb::NodeProto {
                    op_type: "Gather".into(),
                    name: "pick".into(),
                    input: vec!["fc_w".into(), "row".into()],
                    output: vec!["picked".into()],
                    ..Default::default()
                });
            },
            "index 7 is outside the 3 entries",
        ),
    ];
    for (name, edit, needle) in cases {
        let dir = tempdir();
        folded_with_graph_edit(dir.path(), |model| edit(graph_mut(model)));
        for e in refused_everywhere(dir.path(), name) {
            let r = reason_of(&e);
            assert!(r.contains(needle), "{name}: {r}");
        }
    }
}

/// The backends accept and refuse the same hostile exports, with the same error variant.
#[test]
fn c5_no_silent_backends_agree_on_hostile_exports() {
    type Make = fn(&Path);
    let cases: Vec<(&str, Make)> = vec![
        ("valid folded", |d| {
            write_folded_export(d);
        }),
        ("valid shared", |d| {
            write_shared_export(d);
        }),
        ("lambda_index 3", |d| {
            let mut m = write_shared_export(d);
            m.graphs[0].lambda_index = Some(3);
            save(d, &m);
        }),
        ("shape", |d| {
            let mut m = write_folded_export(d);
            m.input.shape = [1, 4, 4];
            save(d, &m);
        }),
        ("garbage", |d| {
            let mut m = write_folded_export(d);
            replace_graph(d, &mut m, 0, b"\x08\x01garbage");
        }),
        ("external data", |d| {
            folded_with_graph_edit(d, |model| {
                let t = &mut graph_mut(model).initializer[0];
                t.float_data.clear();
                t.data_location = Some(1);
                t.external_data = vec![pb::StringStringEntryProto {
                    key: "location".into(),
                    value: "weights.bin".into(),
                }];
            });
            write(d, "weights.bin", &[0u8; 72]);
        }),
        ("truncated", |d| {
            let mut m = write_folded_export(d);
            let bytes = std::fs::read(d.join(file_of(&m.graphs[0]))).unwrap_or_default();
            replace_graph(d, &mut m, 0, &bytes[..bytes.len() - 7]);
        }),
    ];
    let all = backends();
    if all.len() < 2 {
        return;
    }
    for (name, make) in cases {
        let dir = tempdir();
        make(dir.path());
        let results: Vec<Result<(), String>> = all
            .iter()
            .map(|&b| {
                open_on(dir.path(), b)
                    .map(drop)
                    .map_err(|e| format!("{:?}", std::mem::discriminant(&e)))
            })
            .collect();
        assert!(
            results.windows(2).all(|w| w[0] == w[1]),
            "{name}: backends disagree: {results:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Class 6: integrity covers everything that is loaded.

#[cfg(feature = "cli")]
/// A symlinked manifest is refused, and the error never quotes the file it points to.
#[cfg(unix)]
#[test]
fn c6_integrity_symlinked_manifest_is_refused_without_echoing_its_target() {
    let outside = tempdir();
    let secret = outside.path().join("secret.yaml");
    std::fs::write(&secret, "schema_version: 1\nmodel_id: [TOP-SECRET-TOKEN\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempdir();
    write_folded_export(dir.path());
    let manifest = dir.path().join("manifest.yaml");
    std::fs::remove_file(&manifest).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(&secret, &manifest).unwrap_or_else(|e| panic!("{e}"));
    let e = match open_on(dir.path(), Backend::Tract) {
        Err(e) => e,
        Ok(_) => panic!("a symlinked manifest was loaded"),
    };
    assert!(matches!(e, RuntimeError::UnsafePath { .. }), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("TOP-SECRET"), "{e}");
    let img = tiny_png(dir.path());
    let o = run_bounded(oats_run(&[&dir.path(), &img]), LIMIT);
    let err = assert_clean_failure(&o, "symlink");
    assert!(!err.contains("TOP-SECRET"), "{err}");

    // Even a symlink that stays inside the directory.
    let inside = dir.path().join("real.yaml");
    std::fs::copy(&secret, &inside).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_file(&manifest).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("real.yaml", &manifest).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        Manifest::load(&manifest),
        Err(RuntimeError::UnsafePath { .. })
    ));
}

/// External data names a file the manifest's sha256 does not cover (and ONNX Runtime would
/// read it relative to the working directory): refused on both backends, whatever it says.
#[test]
fn c6_integrity_external_data_is_refused() {
    for location in ["weights.bin", "../../etc/passwd", "/etc/passwd"] {
        let dir = tempdir();
        folded_with_graph_edit(dir.path(), |model| {
            let t = &mut graph_mut(model).initializer[0];
            t.float_data.clear();
            t.data_location = Some(1);
            t.external_data = vec![pb::StringStringEntryProto {
                key: "location".into(),
                value: location.into(),
            }];
        });
        write(dir.path(), "weights.bin", &[0u8; 72]);
        for e in refused_everywhere(dir.path(), location) {
            let r = reason_of(&e);
            assert!(
                r.contains("external file") && r.contains("conv_w"),
                "{location}: {r}"
            );
        }
    }
}

#[cfg(feature = "cli")]
/// The reference bundle is covered by its sha256 and read like every other file.
#[test]
fn c6_integrity_reference_bundle_is_verified() {
    let dir = tempdir();
    let mut m = write_folded_export(dir.path());
    write(
        dir.path(),
        "reference.safetensors",
        b"not what the manifest says",
    );
    m.reference = Some(oats_runtime::ReferenceBundle {
        file: "reference.safetensors".into(),
        sha256: sha256_hex(b"something else"),
    });
    save(dir.path(), &m);
    let model = open_on(dir.path(), Backend::Tract).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        oats_runtime::reference::check_reference(&model),
        Err(RuntimeError::ShaMismatch { .. })
    ));
    let o = run_bounded(
        {
            let mut c = Command::new(env!("CARGO_BIN_EXE_oats-bench"));
            c.arg(dir.path())
                .args(["--batch", "1", "--iters", "1", "--switch-iters", "2"]);
            c
        },
        LIMIT,
    );
    assert_clean_failure(&o, "sha256 mismatch");
}

#[cfg(feature = "cli")]
/// ORT_DYLIB_PATH is trusted (it names code to load), but what it names is still checked to
/// be a regular file: a FIFO or a device there is an error, not a hang.
#[cfg(all(unix, feature = "ort"))]
#[test]
fn c6_integrity_ort_library_path_must_be_a_file() {
    let dir = tempdir();
    write_folded_export(dir.path());
    let img = tiny_png(dir.path());
    let fifo = dir.path().join("libonnxruntime.so");
    mkfifo(&fifo);
    for lib in [fifo.as_path(), Path::new("/dev/zero")] {
        let mut c = oats_run(&[&dir.path(), &img, &"--backend", &"ort"]);
        c.env("ORT_DYLIB_PATH", lib);
        let o = run_bounded(c, LIMIT);
        assert_clean_failure(&o, "is not a file");
    }
}
