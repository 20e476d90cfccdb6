//! ONNX Runtime backend. Runs only with the `ort` feature and when ORT_DYLIB_PATH names an
//! existing library; otherwise each test says it was skipped, or fails under
//! OATS_REQUIRE_TOOLS=1 (`./oats test`, CI: `common::tool_missing`). When the variable is
//! set, a failure to load is a test failure, not a skip.
#![cfg(feature = "ort")]

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use oats_runtime::bench;
use oats_runtime::{Backend, Batch, OatsModel, Options, RuntimeError, Selector};

fn library() -> Option<PathBuf> {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "ORT_DYLIB_PATH is set to {} but no such file exists",
                p.display()
            );
            Some(p)
        }
        _ => {
            tool_missing("ONNX Runtime: ORT_DYLIB_PATH is not set");
            None
        }
    }
}

fn open(dir: &std::path::Path, backend: Backend) -> Result<OatsModel, RuntimeError> {
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

#[test]
fn ort_matches_reference_for_every_config() {
    if library().is_none() {
        return;
    }
    for shared in [false, true] {
        let dir = tempdir();
        let m = if shared {
            write_shared_export(dir.path())
        } else {
            write_folded_export(dir.path())
        };
        let model = open(dir.path(), Backend::Ort).unwrap_or_else(|e| panic!("{e}"));
        let x = Batch::new([3, C, H, W], images(3, 5)).unwrap_or_else(|e| panic!("{e}"));
        for g in &m.graphs {
            let p = model
                .infer_with(&g.id, &x)
                .unwrap_or_else(|e| panic!("{}: {e}", g.id));
            assert_eq!(p.config.backend, Backend::Ort);
            assert_close(&p.logits, &expected(&m, g, x.data(), 3), 1e-5, &g.id);
        }
    }
}

#[test]
fn ort_and_tract_agree_under_concurrent_switching() {
    if library().is_none() {
        return;
    }
    let dir = tempdir();
    let m = write_folded_export(dir.path());
    let model = Arc::new(open(dir.path(), Backend::Ort).unwrap_or_else(|e| panic!("{e}")));
    let x = Arc::new(Batch::new([1, C, H, W], images(1, 8)).unwrap_or_else(|e| panic!("{e}")));
    let ids: Vec<String> = m.graphs.iter().map(|g| g.id.clone()).collect();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (model, x, ids, m) = (model.clone(), x.clone(), ids.clone(), m.clone());
            std::thread::spawn(move || {
                for i in 0..200 {
                    if t == 0 {
                        model
                            .select(&Selector::Id(ids[i % ids.len()].clone()))
                            .unwrap_or_else(|e| panic!("{e}"));
                    }
                    let p = model.infer(&x).unwrap_or_else(|e| panic!("{e}"));
                    let g = &m.graphs[m.graph_index(&p.config.id).unwrap_or(usize::MAX)];
                    assert_close(&p.logits, &expected(&m, g, x.data(), 1), 1e-5, &g.id);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap_or_else(|_| panic!("thread panicked"));
    }
}

#[test]
fn ort_graph_errors_are_typed() {
    if library().is_none() {
        return;
    }
    let dir = tempdir();
    let mut m = write_folded_export(dir.path());
    let garbage = b"definitely not onnx".to_vec();
    write(dir.path(), file_of(&m.graphs[0]), &garbage);
    m.graphs[0].sha256 = Some(oats_runtime::manifest::sha256_hex(&garbage));
    save(dir.path(), &m);
    match open(dir.path(), Backend::Ort) {
        Err(RuntimeError::GraphLoad { backend, .. }) => assert_eq!(backend, "ort"),
        other => panic!("{:?}", other.err()),
    }
}

/// The CPU build of ONNX Runtime has no CUDA provider: asking for it must fail loudly.
#[test]
fn ort_cuda_never_falls_back_silently() {
    if library().is_none() {
        return;
    }
    let dir = tempdir();
    write_folded_export(dir.path());
    match open(dir.path(), Backend::OrtCuda) {
        Err(RuntimeError::CudaUnavailable { source }) => assert!(!source.to_string().is_empty()),
        // A GPU build on a machine with a working GPU.
        Ok(model) => assert_eq!(model.backend(), Backend::OrtCuda),
        Err(other) => panic!("expected CudaUnavailable, got {other}"),
    }
}

#[test]
fn ort_overhead_is_measured() {
    if library().is_none() {
        return;
    }
    let dir = tempdir();
    let m = write_shared_export(dir.path());
    let model = open(dir.path(), Backend::Ort).unwrap_or_else(|e| panic!("{e}"));
    let o = bench::ort_overhead(&model, &m.graphs[1].id, 5, 50).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        o.bare_p50_ms > 0.0 && o.model_p50_ms > 0.0 && o.ratio.is_finite(),
        "{o:?}"
    );
}
