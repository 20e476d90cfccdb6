//! Train a tiny model for a few steps, export every (λ, width) graph, and prove the graphs
//! compute the trainer's logits: in tract and ONNX Runtime (through the runtime crate), and
//! in the reference Python tooling (onnx.checker full check + onnxruntime-python).
use oats_testkit::tool_missing;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use oats_export::{export, package, ExportError, ExportOptions, DEFAULT_TOLERANCE};
use oats_runtime::{Backend, Layout};
use oats_train::config::TrainConfig;
use oats_train::data::{self, DatasetKind, Split};
use oats_train::{checkpoint, TchModel, Trainer};
use tch::{Device, Kind, Tensor};

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/fashion-mnist-subset")
}

fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Tract];
    if !cfg!(feature = "ort") {
        // A build choice, not a missing tool: scripts/test.sh always builds with the feature.
        eprintln!("note: ORT not verified here (built without the `ort` feature)");
    } else if std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| !p.is_empty()) {
        b.push(Backend::Ort);
    } else {
        tool_missing("ONNX Runtime: ORT_DYLIB_PATH is not set, so no graph is verified in it");
    }
    b
}

/// Trains `mode` for a few batches and returns (model, checkpoint sha, real inputs).
fn tiny_model(dir: &Path, mode: &str, lambda: Option<f64>) -> (TchModel, String, Tensor) {
    let mut c = TrainConfig::embedded_default();
    c.set_mode(serde_yaml::from_str(mode).expect("mode"));
    c.lambda = lambda;
    c.data.dir = assets();
    c.attack.steps = 1;
    c.epochs = 1;
    c.batch_size = 32;
    c.max_batches = Some(4);
    c.validate().expect("config");
    let train = data::load(
        DatasetKind::FashionMnist,
        &assets(),
        Split::Train,
        Some(256),
    )
    .expect("data");
    let val = data::load(DatasetKind::FashionMnist, &assets(), Split::Val, Some(64)).expect("data");
    let mut t = Trainer::new(c, &train, &val, dir, Device::Cpu).expect("trainer");
    t.quiet = true;
    t.run().expect("train");
    let p = dir.join(checkpoint::FILE_NAME);
    let sha = checkpoint::sha256_hex(&std::fs::read(&p).expect("ckpt"));
    let (m, _) = TchModel::load(&p, Device::Cpu).expect("load");
    let x = Tensor::from_slice(&val.images).view([val.len() as i64, 1, 28, 28]);
    (m, sha, x)
}

#[test]
fn oats_export_all_graphs_verified() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (model, sha, real) = tiny_model(&tmp.path().join("run"), "oats", None);
    let out = tmp.path().join("export");
    let opts = ExportOptions {
        verify_with: backends(),
        ..Default::default()
    };
    let rep = export(
        &model,
        &sha,
        &out,
        &opts,
        Some(&real),
        &ProgressBar::hidden(),
    )
    .expect("export");
    assert_eq!(rep.manifest.graphs.len(), 18, "6 λ × 3 widths");
    let beside: Vec<String> = std::fs::read_dir(tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let mut beside = beside;
    beside.sort();
    assert_eq!(
        beside,
        [".export.oats.lock", "export", "run"],
        "the staging dir was swapped into place and removed"
    );
    // Every graph checked on real and random inputs on every backend.
    assert_eq!(rep.checks.len(), 18 * 2 * opts.verify_with.len());
    for c in &rep.checks {
        assert!(
            c.max_abs_diff <= DEFAULT_TOLERANCE && c.argmax_mismatches == 0,
            "{c:?}"
        );
    }
    // Only standard ops; MACs really shrink with the width.
    let pkg = package::package(&model).expect("package");
    for g in &rep.manifest.graphs {
        let graph = pkg
            .lower(&[g.lambda], g.width, oats_graph::Layout::Folded)
            .expect("lower");
        for op in graph.op_types() {
            assert!(
                [
                    "Add",
                    "Conv",
                    "Flatten",
                    "Gemm",
                    "GlobalAveragePool",
                    "Relu"
                ]
                .contains(&op),
                "unexpected op {op}"
            );
        }
    }
    let macs = |w: f64| {
        rep.manifest
            .graphs
            .iter()
            .find(|g| g.width == w)
            .map(|g| g.macs)
            .expect("width")
    };
    let ratio = macs(0.5) as f64 / macs(1.0) as f64;
    assert!(
        ratio < 0.35,
        "width 0.5 should cost about a quarter of the MACs, got {ratio:.3}"
    );
    // The manifest round-trips through the runtime's parser and matches the files.
    let m = oats_runtime::Manifest::load(out.join("manifest.yaml")).expect("manifest");
    assert_eq!(m, rep.manifest);
    python_check(&out);
}

/// The reference tooling: onnx.checker (full check) and onnxruntime-python reproduce the
/// trainer's logits stored in the reference bundle. Runs wherever the set-up made its venv.
fn python_check(dir: &Path) {
    let Some(py) = std::env::var_os("OATS_PYTHON").filter(|p| !p.is_empty()) else {
        tool_missing("python check (onnx.checker, onnxruntime-python): OATS_PYTHON is not set");
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/check_onnx.py");
    let out = std::process::Command::new(py)
        .arg(&script)
        .arg(dir)
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "python check failed:\n{text}");
    assert!(text.contains("all graphs passed"), "{text}");
}

#[test]
fn shared_weights_export_is_smaller_and_verified() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (model, sha, real) = tiny_model(&tmp.path().join("run"), "oats", None);
    let folded = export(
        &model,
        &sha,
        &tmp.path().join("f"),
        &ExportOptions::default(),
        Some(&real),
        &ProgressBar::hidden(),
    )
    .expect("folded");
    let opts = ExportOptions {
        layout: Layout::SharedWeights,
        verify_with: backends(),
        ..Default::default()
    };
    let shared = export(
        &model,
        &sha,
        &tmp.path().join("s"),
        &opts,
        Some(&real),
        &ProgressBar::hidden(),
    )
    .expect("shared");
    assert_eq!(shared.manifest.graphs.len(), 18);
    let files: std::collections::BTreeSet<_> = shared
        .manifest
        .graphs
        .iter()
        .map(|g| g.file.clone())
        .collect();
    assert_eq!(files.len(), 3, "one file per width");
    assert!(
        shared.bytes * 3 < folded.bytes,
        "shared {} B vs folded {} B",
        shared.bytes,
        folded.bytes
    );
    python_check(&tmp.path().join("s"));
}

#[test]
fn baseline_and_unseen_lambda_export() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (model, sha, real) = tiny_model(&tmp.path().join("run"), "pgd-at", Some(0.4));
    let rep = export(
        &model,
        &sha,
        &tmp.path().join("e"),
        &ExportOptions::default(),
        Some(&real),
        &ProgressBar::hidden(),
    )
    .expect("export");
    assert_eq!(rep.manifest.graphs.len(), 1);
    assert_eq!(rep.manifest.graphs[0].lambda, 0.4);

    let (oat, sha, real) = tiny_model(&tmp.path().join("run2"), "oat", None);
    let opts = ExportOptions {
        lambdas: Some(vec![0.15, 0.7]),
        ..Default::default()
    };
    let rep = export(
        &oat,
        &sha,
        &tmp.path().join("u"),
        &opts,
        Some(&real),
        &ProgressBar::hidden(),
    )
    .expect("unseen λ");
    assert_eq!(rep.manifest.graphs.len(), 2);
    for bad in [vec![1.5], vec![f64::NAN], vec![-0.1]] {
        let opts = ExportOptions {
            lambdas: Some(bad.clone()),
            ..Default::default()
        };
        let e = export(
            &oat,
            &sha,
            &tmp.path().join("bad"),
            &opts,
            None,
            &ProgressBar::hidden(),
        );
        assert!(e.is_err(), "λ {bad:?} must be refused");
    }
    let opts = ExportOptions {
        widths: Some(vec![0.5]),
        ..Default::default()
    };
    assert!(
        export(
            &oat,
            &sha,
            &tmp.path().join("bad"),
            &opts,
            None,
            &ProgressBar::hidden()
        )
        .is_err(),
        "OAT has no width 0.5"
    );
}

/// Verification can fail: a graph that no longer matches the model is reported by name.
#[test]
fn verification_catches_a_wrong_graph() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (model, sha, real) = tiny_model(&tmp.path().join("run"), "oat", None);
    let out = tmp.path().join("e");
    let rep = export(
        &model,
        &sha,
        &out,
        &ExportOptions::default(),
        Some(&real),
        &ProgressBar::hidden(),
    )
    .expect("export");
    // Perturb one weight of the trainer's model: the graphs no longer compute its logits.
    {
        let _ng = tch::no_grad_guard();
        let vars = model.vs.variables();
        let mut w = vars.get("fc.bias").expect("fc.bias").shallow_clone();
        let _ = w.f_add_scalar_(0.01).expect("add");
    }
    let inputs = vec![(
        "real".to_string(),
        real.narrow(0, 0, 8).to_kind(Kind::Float),
    )];
    let err = oats_export::verify::verify(
        &model,
        &out,
        &rep.manifest,
        &inputs,
        &[Backend::Tract],
        DEFAULT_TOLERANCE,
    )
    .expect_err("must fail");
    match err {
        ExportError::Mismatch {
            graph,
            max_abs_diff,
            ..
        } => {
            assert_eq!(graph, rep.manifest.graphs[0].id);
            assert!(max_abs_diff > 5e-3, "{max_abs_diff}");
        }
        e => panic!("wrong error: {e}"),
    }
}
