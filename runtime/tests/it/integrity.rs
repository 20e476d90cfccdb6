//! Hostile or broken exports: every problem is a typed error, never a panic or a silent load.

use crate::common;

use std::path::Path;

use common::*;
use oats_runtime::manifest::sha256_hex;
use oats_runtime::manifest::SCHEMA_VERSION_EXITS;
use oats_runtime::{Layout, Manifest, OatsModel, Options, RuntimeError, Selector};

fn open(dir: &Path) -> Result<OatsModel, RuntimeError> {
    OatsModel::open(dir, &Options::default())
}

/// Writes `m` without validation (save() would refuse the broken ones).
fn write_raw(dir: &Path, m: &Manifest) {
    let text = serde_yaml::to_string(m).unwrap_or_else(|e| panic!("{e}"));
    write(dir, "manifest.yaml", text.as_bytes());
}

fn manifest_error(m: &Manifest) -> RuntimeError {
    let dir = tempdir();
    write_raw(dir.path(), m);
    match Manifest::load(dir.path().join("manifest.yaml")) {
        Ok(_) => panic!("manifest accepted: {m:?}"),
        Err(e) => e,
    }
}

fn valid() -> Manifest {
    let dir = tempdir();
    write_folded_export(dir.path())
}

#[test]
fn tampered_graph_is_a_sha_mismatch() {
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    let file = dir.path().join(file_of(&m.graphs[1]));
    let mut bytes = std::fs::read(&file).unwrap_or_default();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    write(dir.path(), file_of(&m.graphs[1]), &bytes);
    match open(dir.path()) {
        Err(RuntimeError::ShaMismatch {
            file: f,
            expected,
            actual,
        }) => {
            assert!(f.ends_with(file_of(&m.graphs[1])));
            assert_eq!(Some(expected), m.graphs[1].sha256);
            assert_eq!(actual, sha256_hex(&bytes));
        }
        other => panic!("{:?}", other.err()),
    }
    // Lazily: open succeeds, selecting the tampered graph fails, the active one is kept.
    let model = OatsModel::open(
        dir.path(),
        &Options {
            preload: false,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r = model.select(&Selector::Id(m.graphs[1].id.clone()));
    assert!(matches!(r, Err(RuntimeError::ShaMismatch { .. })), "{r:?}");
    assert_eq!(model.active().id, m.graphs[0].id);
}

#[test]
fn garbage_and_truncated_onnx_are_load_errors() {
    let good = tiny_model(&TinyWeights::new(1), None);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage",
            b"this is not a protobuf at all \xff\xfe\x00\x01".to_vec(),
        ),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("wrong-graph", {
            // Valid ONNX, but a shared_weights graph (extra input) in a folded export.
            tiny_model(&TinyWeights::new(1), Some(&lambda_table()))
        }),
    ];
    for (name, bytes) in cases {
        let dir = tempdir();
        let mut m = write_folded_export(dir.path());
        write(dir.path(), file_of(&m.graphs[0]), &bytes);
        m.graphs[0].sha256 = Some(sha256_hex(&bytes));
        save(dir.path(), &m);
        match open(dir.path()) {
            Err(RuntimeError::GraphLoad {
                backend, source, ..
            }) => {
                assert_eq!(backend, "tract", "{name}");
                assert!(!source.to_string().is_empty(), "{name}");
            }
            // Decodable, but not what the manifest describes (an empty message decodes to a
            // model without a graph): refused before any backend sees it.
            Err(RuntimeError::GraphRefused { reason, .. }) => {
                assert!(matches!(name, "empty" | "wrong-graph"), "{name}: {reason}");
                assert!(!reason.is_empty(), "{name}");
            }
            other => panic!("{name}: {:?}", other.err()),
        }
    }
}

#[test]
fn missing_graph_file_is_a_read_error() {
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    std::fs::remove_file(dir.path().join(file_of(&m.graphs[2]))).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(open(dir.path()), Err(RuntimeError::Read { .. })));
}

#[cfg(unix)]
#[test]
fn symlink_out_of_the_export_is_refused() {
    let outside = tempdir();
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    // A file outside with the right content and a matching sha: only the location is wrong.
    let target = outside.path().join("evil.onnx");
    std::fs::copy(dir.path().join(file_of(&m.graphs[0])), &target)
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_file(dir.path().join(file_of(&m.graphs[0]))).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(&target, dir.path().join(file_of(&m.graphs[0])))
        .unwrap_or_else(|e| panic!("{e}"));
    match open(dir.path()) {
        Err(RuntimeError::UnsafePath { file, reason }) => {
            assert_eq!(Some(file), m.graphs[0].file);
            assert!(reason.contains("outside"), "{reason}");
        }
        other => panic!("{:?}", other.err()),
    }
    // A symlink that stays inside is fine.
    std::fs::remove_file(dir.path().join(file_of(&m.graphs[0]))).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(dir.path().join("real")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(&target, dir.path().join("real/g.onnx")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("real/g.onnx", dir.path().join(file_of(&m.graphs[0])))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(open(dir.path()).is_ok());
}

#[test]
fn unsafe_file_names_are_refused() {
    for file in ["../x.onnx", "/etc/passwd", "", "a/../../x.onnx"] {
        let mut m = valid();
        m.graphs[0].file = Some(file.into());
        match manifest_error(&m) {
            RuntimeError::UnsafePath { file: f, .. } => assert_eq!(f, file),
            other => panic!("{file:?}: {other:?}"),
        }
    }
    let mut m = valid();
    m.reference = Some(oats_runtime::ReferenceBundle {
        file: "../ref.safetensors".into(),
        sha256: "0".repeat(64),
    });
    assert!(matches!(
        manifest_error(&m),
        RuntimeError::UnsafePath { .. }
    ));
}

#[test]
fn unknown_schema_version_names_the_supported_one() {
    let mut m = valid();
    m.schema_version = SCHEMA_VERSION_EXITS + 1;
    match manifest_error(&m) {
        RuntimeError::UnsupportedSchema {
            found, supported, ..
        } => {
            assert_eq!(
                (found, supported),
                (SCHEMA_VERSION_EXITS + 1, SCHEMA_VERSION_EXITS)
            );
        }
        other => panic!("{other:?}"),
    }
    // Even when the rest of the document is from another format.
    let e =
        Manifest::from_yaml_str("schema_version: 7\nsomething: else\n", Path::new("m.yaml")).err();
    assert!(
        matches!(e, Some(RuntimeError::UnsupportedSchema { found: 7, .. })),
        "{e:?}"
    );
    let msg = e.map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("supports schema_version 1"), "{msg}");
}

#[test]
fn parse_errors_carry_file_and_location() {
    let m = valid();
    let text = serde_yaml::to_string(&m).unwrap_or_default();
    // Drop a required field.
    let broken: String = text
        .lines()
        .filter(|l| !l.starts_with("model_id:"))
        .collect::<Vec<_>>()
        .join("\n");
    match Manifest::from_yaml_str(&broken, Path::new("exports/manifest.yaml")) {
        Err(RuntimeError::ManifestParse { path, source, .. }) => {
            assert_eq!(path, Path::new("exports/manifest.yaml"));
            assert!(source.to_string().contains("model_id"), "{source}");
        }
        other => panic!("{other:?}"),
    }
    // A type error deep inside has a line number.
    let broken = text.replacen("opset: 13", "opset: thirteen", 1);
    match Manifest::from_yaml_str(&broken, Path::new("m.yaml")) {
        Err(e @ RuntimeError::ManifestParse { line: Some(l), .. }) => {
            assert!(l > 10);
            assert!(e.to_string().contains(&format!("line {l}")), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Manifest::from_yaml_str("[1, 2", Path::new("m.yaml")),
        Err(RuntimeError::ManifestParse { .. })
    ));
}

#[test]
fn out_of_range_values_are_invalid() {
    type Edit = fn(&mut Manifest);
    let cases: Vec<(&str, Edit)> = vec![
        ("nan lambda", |m| m.graphs[0].lambda = f64::NAN),
        ("lambda > 1", |m| m.graphs[0].lambda = 1.5),
        ("inf lambda", |m| m.graphs[0].lambda = f64::INFINITY),
        ("zero width", |m| m.graphs[0].width = 0.0),
        ("huge dim", |m| m.input.shape = [1, 100_000, 8]),
        ("zero dim", |m| m.input.shape = [0, 8, 8]),
        ("huge classes", |m| {
            m.output.classes = usize::MAX;
            m.class_names.clear();
        }),
        ("class names count", |m| m.class_names.push("extra".into())),
        ("no graphs", |m| m.graphs.clear()),
        ("duplicate id", |m| m.graphs[1].id = m.graphs[0].id.clone()),
        ("duplicate config", |m| {
            m.graphs[1].lambda = m.graphs[0].lambda;
            m.graphs[1].width = m.graphs[0].width;
        }),
        ("short sha", |m| m.graphs[0].sha256 = Some("abc".into())),
        ("non-hex sha", |m| m.graphs[0].sha256 = Some("z".repeat(64))),
        ("file without sha", |m| m.graphs[0].sha256 = None),
        ("sha without file", |m| m.graphs[0].file = None),
        ("no file and no package to derive from", |m| {
            m.graphs[0].file = None;
            m.graphs[0].sha256 = None;
        }),
        ("shared file in folded", |m| {
            m.graphs[1].file = m.graphs[0].file.clone()
        }),
        ("lambda_index in folded", |m| {
            m.graphs[0].lambda_index = Some(0)
        }),
        ("shared without index", |m| m.layout = Layout::SharedWeights),
        ("bad value range", |m| m.input.value_range = [1.0, 0.0]),
        ("sa > 1", |m| m.graphs[0].metrics.sa = Some(1.5)),
        ("negative latency", |m| {
            if let Some(l) = m.graphs[0].metrics.latency_ms.values_mut().next() {
                l.p50 = -1.0;
            }
        }),
    ];
    for (name, edit) in cases {
        let mut m = valid();
        edit(&mut m);
        match manifest_error(&m) {
            RuntimeError::ManifestInvalid { reason, .. } => assert!(!reason.is_empty(), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // Numbers too large for their type fail at parse time.
    let text = serde_yaml::to_string(&valid()).unwrap_or_default();
    let huge = text.replacen("classes: 3", "classes: 1e400", 1);
    assert!(Manifest::from_yaml_str(&huge, Path::new("m.yaml")).is_err());
    let huge = text.replacen("epochs: 1", "epochs: 99999999999999999999999", 1);
    assert!(matches!(
        Manifest::from_yaml_str(&huge, Path::new("m.yaml")),
        Err(RuntimeError::ManifestParse { .. })
    ));
}

#[test]
fn save_is_atomic_and_round_trips() {
    let dir = tempdir();
    let mut m = write_shared_export(dir.path());
    let path = dir.path().join("manifest.yaml");
    let loaded = Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded, m);

    m.graphs[0].metrics.sa = Some(0.5);
    m.save(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(Manifest::load(&path).ok(), Some(m.clone()));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // An invalid manifest is not written; the previous one stays.
    let mut bad = m.clone();
    bad.graphs[0].lambda = 2.0;
    assert!(bad.save(&path).is_err());
    assert_eq!(Manifest::load(&path).ok(), Some(m));
}

#[test]
fn metrics_are_optional_and_omitted_when_empty() {
    let mut m = valid();
    for g in &mut m.graphs {
        g.metrics = Default::default();
    }
    let text = serde_yaml::to_string(&m).unwrap_or_default();
    assert!(
        !text.contains("latency_ms") && !text.contains("ra_worst") && !text.contains("reference")
    );
    assert_eq!(
        Manifest::from_yaml_str(&text, Path::new("m.yaml")).ok(),
        Some(m)
    );
}
