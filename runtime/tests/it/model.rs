//! Opening exports and running every configuration against the reference forward pass.

use crate::common;

use common::*;
use oats_runtime::{Backend, Batch, OatsModel, Objective, Options, Policy, RuntimeError, Selector};

const TOL: f32 = 1e-5;

fn open(dir: &std::path::Path) -> OatsModel {
    OatsModel::open(dir, &Options::default()).unwrap_or_else(|e| panic!("open: {e}"))
}

fn batch(n: usize, seed: u64) -> Batch {
    Batch::new([n, C, H, W], images(n, seed)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn model_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<OatsModel>();
}

#[test]
fn folded_export_matches_reference_for_every_config() {
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    let model = open(dir.path());
    assert_eq!(model.load_report().len(), m.graphs.len());
    let x = batch(3, 7);
    for g in &m.graphs {
        let p = model
            .infer_with(&g.id, &x)
            .unwrap_or_else(|e| panic!("{}: {e}", g.id));
        assert_eq!((p.batch, p.classes), (3, CLASSES));
        assert_eq!(p.config.id, g.id);
        assert_eq!(p.config.backend, Backend::Tract);
        assert_close(&p.logits, &expected(&m, g, x.data(), 3), TOL, &g.id);
    }
    // Configurations really differ.
    let a = model.infer_with(&m.graphs[0].id, &x).ok().map(|p| p.logits);
    let b = model.infer_with(&m.graphs[1].id, &x).ok().map(|p| p.logits);
    assert_ne!(a, b);
}

#[test]
fn shared_weights_export_feeds_lambda_index() {
    let dir = tempdir();
    let m = write_shared_export(dir.path());
    let model = open(dir.path());
    // One file per width, each loaded once.
    assert_eq!(model.load_report().len(), WIDTHS.len());
    let x = batch(2, 11);
    for g in &m.graphs {
        let p = model
            .infer_with(&g.id, &x)
            .unwrap_or_else(|e| panic!("{}: {e}", g.id));
        assert_close(&p.logits, &expected(&m, g, x.data(), 2), TOL, &g.id);
    }
}

#[test]
fn batch_sizes_are_dynamic() {
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    let model = open(dir.path());
    let g = &m.graphs[2];
    model
        .select(&Selector::Id(g.id.clone()))
        .unwrap_or_else(|e| panic!("{e}"));
    for n in [1, 4, 17] {
        let x = batch(n, n as u64);
        let p = model.infer(&x).unwrap_or_else(|e| panic!("{e}"));
        assert_close(
            &p.logits,
            &expected(&m, g, x.data(), n),
            TOL,
            &format!("n={n}"),
        );
    }
}

#[test]
fn select_switches_what_infer_runs() {
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    let model = open(dir.path());
    assert_eq!(
        model.active().id,
        m.graphs[0].id,
        "first manifest graph is active initially"
    );
    let x = batch(1, 3);

    let info = model
        .select(&Selector::Explicit {
            lambda: 0.5,
            width: 1.0,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.id, "l0.5-w1");
    assert_eq!(model.active().id, "l0.5-w1");
    let p = model.infer(&x).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.config.id, "l0.5-w1");
    let g = &m.graphs[m.graph_index("l0.5-w1").unwrap_or(0)];
    assert_close(&p.logits, &expected(&m, g, x.data(), 1), TOL, "explicit");

    let info = model
        .select(&Selector::NearestLambda {
            lambda: 0.9,
            width: 0.5,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.id, "l1-w0.5");

    // Most robust graph within 2.5 ms (width 0.5 graphs are 2 ms, width 1 are 3 ms).
    let policy = Policy {
        max_latency_ms: Some(2.5),
        objective: Objective::MaxRa,
        ..Policy::default()
    };
    let info = model
        .select(&Selector::Policy(policy))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.id, "l1-w0.5");

    // A failed selection leaves the active configuration alone.
    let before = model.active();
    let err = model.select(&Selector::Explicit {
        lambda: 0.3,
        width: 1.0,
    });
    assert!(
        matches!(err, Err(RuntimeError::NoSuchConfig { .. })),
        "{err:?}"
    );
    let impossible = Policy {
        max_latency_ms: Some(2.5),
        min_ra: Some(0.6),
        ..Policy::default()
    };
    match model.select(&Selector::Policy(impossible)) {
        Err(RuntimeError::NoneQualifies { reason }) => {
            assert!(
                reason.starts_with("best RA among graphs with latency ≤ 2.5 ms"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(model.active(), before);
}

#[test]
fn lazy_loading_loads_on_first_use() {
    let dir = tempdir();
    write_folded_export(dir.path());
    let opts = Options {
        preload: false,
        ..Options::default()
    };
    let model = OatsModel::open(dir.path(), &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.load_report().len(), 1);
    assert!(model.load_info("l1-w1").is_none());
    model
        .select(&Selector::Id("l1-w1".into()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.load_report().len(), 2);
    let info = model.load_info("l1-w1");
    assert!(info.is_some_and(|i| i.bytes > 0 && i.load_ms > 0.0));
}

#[test]
fn input_errors_are_typed() {
    let dir = tempdir();
    write_folded_export(dir.path());
    let model = open(dir.path());

    let wrong = Batch::new([2, 3, 8, 8], vec![0.5; 2 * 3 * 64]).unwrap_or_else(|e| panic!("{e}"));
    match model.infer(&wrong) {
        Err(RuntimeError::Shape { expected, got }) => {
            assert_eq!(expected, vec![2, 1, 8, 8]);
            assert_eq!(got, vec![2, 3, 8, 8]);
        }
        other => panic!("{other:?}"),
    }

    let mut data = images(2, 1);
    data[70] = f32::NAN;
    let nan = Batch::new([2, C, H, W], data).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        model.infer(&nan),
        Err(RuntimeError::NonFinite { index: 70 })
    ));
    let mut data = images(1, 1);
    data[3] = f32::INFINITY;
    let inf = Batch::new([1, C, H, W], data).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        model.infer_with("l0-w1", &inf),
        Err(RuntimeError::NonFinite { index: 3 })
    ));

    let empty = Batch::new([0, C, H, W], vec![]).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(model.infer(&empty), Err(RuntimeError::EmptyBatch)));

    assert!(matches!(
        model.infer_with("nope", &batch(1, 1)),
        Err(RuntimeError::NoSuchConfig { .. })
    ));

    // Values outside value_range are accepted.
    let loud = Batch::new([1, C, H, W], vec![42.0; 64]).unwrap_or_else(|e| panic!("{e}"));
    assert!(model.infer(&loud).is_ok());
}

#[test]
fn top_k_names_classes() {
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    let model = open(dir.path());
    let p = model.infer(&batch(2, 5)).unwrap_or_else(|e| panic!("{e}"));
    let top = p.top_k(2);
    assert_eq!(top.len(), 2);
    for (i, row) in top.iter().enumerate() {
        assert_eq!(row.len(), 2);
        assert!(row[0].prob >= row[1].prob);
        let logits = p.row(i).unwrap_or_else(|| panic!("row {i}"));
        let best = (0..CLASSES)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap_or(0);
        assert_eq!(row[0].class, best);
        assert!(m
            .class_names
            .contains(&model.manifest().class_name(row[0].class)));
    }
}

#[test]
fn images_load_into_a_batch() {
    let dir = tempdir();
    write_folded_export(dir.path());
    let model = open(dir.path());
    // A 16x12 RGB image: converted to grey, shorter side resized to 8, centre-cropped.
    let img = image::RgbImage::from_fn(16, 12, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 20) as u8, 128])
    });
    let path = dir.path().join("pic.png");
    img.save(&path).unwrap_or_else(|e| panic!("{e}"));
    let b = Batch::from_images(&[&path, &path], &model.manifest().input)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.shape(), [2, 1, 8, 8]);
    assert!(b.data().iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(model.infer(&b).is_ok());

    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap_or_else(|e| panic!("{e}"));
    match Batch::from_images(&[&bad], &model.manifest().input) {
        Err(RuntimeError::Image { path, .. }) => assert_eq!(path, bad),
        other => panic!("{other:?}"),
    }
    let missing = dir.path().join("missing.png");
    assert!(matches!(
        Batch::from_images(&[&missing], &model.manifest().input),
        Err(RuntimeError::Read { .. })
    ));
}

#[cfg(not(feature = "ort"))]
#[test]
fn ort_backend_without_feature_is_unavailable() {
    let dir = tempdir();
    write_folded_export(dir.path());
    let opts = Options {
        backend: Backend::Ort,
        ..Options::default()
    };
    assert!(matches!(
        OatsModel::open(dir.path(), &opts),
        Err(RuntimeError::BackendUnavailable { .. })
    ));
}

#[test]
fn an_export_opened_from_memory_runs_as_from_its_directory() {
    for shared in [false, true] {
        let dir = tempdir();
        let m = if shared {
            write_shared_export(dir.path())
        } else {
            write_folded_export(dir.path())
        };
        let files = export_files(dir.path());
        // The directory is gone: nothing may be read from disk.
        drop(dir);
        let model = OatsModel::open_from_memory(files, &Options::default())
            .unwrap_or_else(|e| panic!("open_from_memory: {e}"));
        assert!(model.dir().is_none());
        let x = batch(2, 5);
        for g in &m.graphs {
            let p = model
                .infer_with(&g.id, &x)
                .unwrap_or_else(|e| panic!("{}: {e}", g.id));
            assert_close(&p.logits, &expected(&m, g, x.data(), 2), TOL, &g.id);
        }
    }
}

#[test]
fn c6_integrity_memory_files_are_checked_like_files_on_disk() {
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    let name = file_of(&m.graphs[1]).to_string();

    // A graph whose bytes are not the ones the manifest hashed.
    let mut files = export_files(dir.path());
    let mut bytes = std::fs::read(dir.path().join(&name)).unwrap_or_default();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    files.insert(name.clone(), bytes);
    match OatsModel::open_from_memory(files, &Options::default()) {
        Err(RuntimeError::ShaMismatch { file, .. }) => {
            assert_eq!(file, std::path::Path::new("memory:").join(&name))
        }
        other => panic!("{:?}", other.map(|_| ())),
    }

    // A file the manifest lists and the caller did not give.
    let mut files = oats_runtime::ExportFiles::new();
    for n in export_files(dir.path()).names().filter(|n| *n != name) {
        files.insert(n, std::fs::read(dir.path().join(n)).unwrap_or_default());
    }
    match OatsModel::open_from_memory(files, &Options::default()) {
        Err(RuntimeError::Read { path, source }) => {
            assert!(path.ends_with(&name), "{path:?}");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{:?}", other.map(|_| ())),
    }

    // No manifest at all, and a manifest naming a file outside the export.
    match OatsModel::open_from_memory(oats_runtime::ExportFiles::new(), &Options::default()) {
        Err(RuntimeError::Read { path, .. }) => assert!(path.ends_with("manifest.yaml")),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let mut hostile = m.clone();
    hostile.graphs[0].file = Some("../../etc/passwd".into());
    let mut files = export_files(dir.path());
    files.insert(
        "manifest.yaml",
        serde_yaml::to_string(&hostile)
            .unwrap_or_default()
            .into_bytes(),
    );
    match OatsModel::open_from_memory(files, &Options::default()) {
        Err(RuntimeError::UnsafePath { file, .. }) => assert!(file.contains(".."), "{file}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}
