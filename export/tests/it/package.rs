//! The package against the trainer: the pure-Rust arithmetic of `oats-graph` (affines,
//! width slicing, folding, λ interpolation) reproduces the tch model at every trained
//! (λ, width) to 1e-5 and at unseen λ to 1e-4, for every body (post-activation ResNet,
//! pre-activation WRN), dual and single BN, conditioned and not. The models are untrained
//! with randomised BN parameters and statistics (a fresh model's BN is the identity, which
//! would hide a wrong fold); graphs run in tract.
use indicatif::ProgressBar;
use oats_export::{export, package, trainer_logits, ExportOptions, REFERENCE_UNSEEN_LAMBDAS};
use oats_graph::{Graph, Layout, Package};
use oats_runtime::Backend;
use oats_train::config::{Arch, Mode, Norm, TrainConfig};
use oats_train::model::Body;
use oats_train::nn::{Branch, NormSite};
use oats_train::TchModel;
use tch::{Device, Kind, Tensor};

/// Logits of a derived graph at trained configurations may differ from the trainer's by f32
/// round-off only (folding reorders products; tract and libtorch sum in other orders).
const TRAINED_TOLERANCE: f32 = 1e-5;
/// At unseen λ the bound (the encoding is interpolated in f32 on both sides).
const UNSEEN_TOLERANCE: f32 = 1e-4;

fn model(arch: Arch, mode: Mode, norm: Norm, lambda: Option<f64>, hw: i64) -> TchModel {
    let mut c = TrainConfig::embedded_default();
    c.arch = arch;
    c.set_mode(mode);
    c.norm = norm;
    c.lambda = lambda;
    let m = TchModel::new(
        &c,
        1,
        hw,
        hw,
        (0..10).map(|i| format!("c{i}")).collect(),
        Device::Cpu,
    );
    randomise_bns(&m);
    m
}

/// BN weights, biases and running statistics away from their identity initialisation, and
/// the classifier scaled so logits are O(10) as in a trained model (an absolute tolerance on
/// logits of 0.2 would say little).
fn randomise_bns(m: &TchModel) {
    let _ng = tch::no_grad_guard();
    tch::manual_seed(11);
    let _ = m
        .net
        .fc
        .weight
        .shallow_clone()
        .f_mul_scalar_(50.0)
        .expect("scale");
    for (name, mut v) in m.vs.variables() {
        let is_bn = [".clean.", ".adv.", ".bn."]
            .iter()
            .any(|b| name.contains(b));
        if !is_bn {
            continue;
        }
        let (lo, hi) = match name.rsplit('.').next() {
            Some("weight") => (0.5, 1.5),
            Some("running_var") => (0.5, 2.0),
            _ => (-0.3, 0.3),
        };
        let r = Tensor::rand(v.size(), (Kind::Float, Device::Cpu)) * (hi - lo) + lo;
        v.copy_(&r);
    }
}

fn oats_small() -> TchModel {
    model(Arch::Small, Mode::Oats, Norm::Dual, None, 28)
}

fn images(n: i64, hw: i64) -> Tensor {
    tch::manual_seed(5);
    Tensor::rand([n, 1, hw, hw], (Kind::Float, Device::Cpu))
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().flatten(0, -1)).expect("f32")
}

/// Logits of `graph` in tract for images `x` [N, C, H, W].
fn run(graph: &Graph, x: &Tensor, lambda_index: Option<i64>) -> Vec<f32> {
    let dims: Vec<usize> = x.size().iter().map(|&d| d as usize).collect();
    tract::run(&oats_graph::to_onnx(graph), &dims, &to_vec(x), lambda_index)
}

mod tract {
    use tract_onnx::prelude::*;

    pub fn run(bytes: &[u8], dims: &[usize], x: &[f32], lambda_index: Option<i64>) -> Vec<f32> {
        let mut m = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .expect("parse");
        m.set_input_fact(0, f32::fact(dims).into()).expect("fact");
        if lambda_index.is_some() {
            m.set_input_fact(1, i64::fact([1usize]).into())
                .expect("fact");
        }
        let plan = m
            .into_optimized()
            .expect("optimise")
            .into_runnable()
            .expect("plan");
        let mut inputs: TVec<TValue> =
            tvec![Tensor::from_shape(dims, x).expect("image").into_tvalue()];
        if let Some(k) = lambda_index {
            inputs.push(tensor1(&[k]).into_tvalue());
        }
        let out = plan.run(inputs).expect("run");
        out[0]
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>())
            .expect("f32")
            .to_vec()
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

/// Derived folded graphs against the trainer at every width for `lambdas`.
fn check_against_trainer(m: &TchModel, pkg: &Package, lambdas: &[f64], x: &Tensor, tol: f32) {
    let (mut worst, mut scale) = (0.0f32, 0.0f32);
    for &w in m.widths() {
        for &l in lambdas {
            let want = to_vec(&trainer_logits(m, l, w, x).expect("trainer"));
            let got = run(&pkg.lower_folded(l, w).expect("lower"), x, None);
            let d = max_abs_diff(&got, &want);
            assert!(
                d <= tol,
                "{} λ {l} width {w}: max |Δlogit| {d:.2e} > {tol:.0e}",
                m.config().arch
            );
            worst = worst.max(d);
            scale = want.iter().fold(scale, |a, v| a.max(v.abs()));
        }
    }
    eprintln!(
        "{} {} λ {lambdas:?}: max |Δlogit| {worst:.2e} (limit {tol:.0e}), max |logit| {scale:.2}",
        m.config().mode.as_str(),
        m.config().arch
    );
}

#[test]
fn derived_graphs_equal_the_trainer_at_trained_and_unseen_lambda() {
    let x = images(8, 28);
    let m = oats_small();
    let pkg = package::package(&m).expect("package");
    check_against_trainer(&m, &pkg, &m.config().lambdas, &x, TRAINED_TOLERANCE);
    check_against_trainer(&m, &pkg, &REFERENCE_UNSEEN_LAMBDAS, &x, UNSEEN_TOLERANCE);
    // The shared-weights layout from the same package: one graph per width, any λ row.
    let lambdas = [0.0, 0.15, 0.4, 0.7];
    for &w in m.widths() {
        let g = pkg
            .lower(&lambdas, w, Layout::SharedWeights)
            .expect("shared");
        for (k, &l) in lambdas.iter().enumerate() {
            let want = to_vec(&trainer_logits(&m, l, w, &x).expect("trainer"));
            let d = max_abs_diff(&run(&g, &x, Some(k as i64)), &want);
            assert!(d <= UNSEEN_TOLERANCE, "shared λ {l} width {w}: {d:.2e}");
        }
    }
}

/// The other bodies and normalisations: OAT with a single ("normal") BN, a PGD-AT model (no
/// FiLM, one λ), and the pre-activation WRN-40-2 (on 16×16 inputs to stay fast).
#[test]
fn derived_graphs_equal_the_trainer_for_every_body_and_norm() {
    let x = images(4, 28);
    let oat_normal = model(Arch::Small, Mode::Oat, Norm::Normal, None, 28);
    let pkg = package::package(&oat_normal).expect("package");
    assert_eq!(pkg.architecture().branches, 1);
    check_against_trainer(&oat_normal, &pkg, &[0.0, 0.2, 1.0], &x, TRAINED_TOLERANCE);
    check_against_trainer(&oat_normal, &pkg, &[0.5], &x, UNSEEN_TOLERANCE);

    let pgd = model(Arch::Small, Mode::PgdAt, Norm::Dual, Some(0.4), 28);
    let pkg = package::package(&pgd).expect("package");
    assert!(!pkg.conditioned());
    check_against_trainer(&pgd, &pkg, &[0.4], &x, TRAINED_TOLERANCE);
    assert!(pkg.lower_folded(0.5, 1.0).is_err(), "a one-λ model");

    let x = images(2, 16);
    let wrn = model(Arch::Wrn40_2, Mode::Oat, Norm::Dual, None, 16);
    let pkg = package::package(&wrn).expect("package");
    assert!(matches!(
        pkg.architecture().body,
        oats_graph::arch::Body::Wide { .. }
    ));
    check_against_trainer(&wrn, &pkg, &[0.0, 0.2, 1.0], &x, TRAINED_TOLERANCE);
    check_against_trainer(&wrn, &pkg, &[0.15], &x, UNSEEN_TOLERANCE);
}

/// The trainer's sites in the package's canonical order (the body's; these models have no
/// exits, whose heads `norm_sites` lists last).
fn trainer_sites(m: &TchModel) -> Vec<&NormSite> {
    m.net.norm_sites()
}

/// `Package::affine` (plain Rust) equals the trainer's `NormSite::affine` (tch) at every site,
/// width and λ, trained or not.
#[test]
fn pure_rust_affine_equals_the_trainers_norm_site_affine() {
    let m = oats_small();
    let pkg = package::package(&m).expect("package");
    let names = pkg.site_names();
    let sites = trainer_sites(&m);
    assert_eq!(names.len(), sites.len());
    let mut lambdas = m.config().lambdas.clone();
    lambdas.extend(REFERENCE_UNSEEN_LAMBDAS);
    let _ng = tch::no_grad_guard();
    for (name, site) in names.iter().zip(sites) {
        for (wi, &w) in m.widths().iter().enumerate() {
            for &l in &lambdas {
                let cond = m.cond_for(l).expect("λ");
                let (s, t) = site.affine(cond.enc.as_ref(), Branch::for_lambda(l), wi);
                let a = pkg.affine(name, l, w).expect("affine");
                let (s, t) = (to_vec(&s), to_vec(&t));
                for (got, want) in [(&a.scale, &s), (&a.shift, &t)] {
                    assert_eq!(got.len(), want.len(), "{name} width {w}");
                    for (g, e) in got.iter().zip(want) {
                        assert!(
                            (g - e).abs() <= 1e-6 * e.abs().max(1.0),
                            "{name} λ {l} width {w}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}

/// `oats_graph::channels_at` is the trainer's `channels_at` for every channel count of every
/// preset (and all up to 1024) at the preset widths and others.
#[test]
fn channels_at_agrees_with_the_trainer() {
    let widths = [
        0.5,
        0.75,
        1.0,
        0.25,
        0.1,
        0.3,
        1.0 / 3.0,
        0.6,
        0.7,
        0.9,
        0.99,
        0.999_999,
    ];
    for c in 1..=1024usize {
        for &w in &widths {
            assert_eq!(
                oats_graph::channels_at(c, w) as i64,
                oats_train::nn::channels_at(c as i64, w),
                "C = {c}, width {w}"
            );
        }
    }
    // Every conv of every preset: the package's slice is the trainer's weight_at.
    for arch in [Arch::Small, Arch::Resnet34] {
        let m = model(arch, Mode::Oats, Norm::Dual, None, 32);
        let pkg = package::package(&m).expect("package");
        for &w in m.widths() {
            let g = pkg.lower_folded(0.2, w).expect("lower");
            let dims: Vec<Vec<i64>> = g
                .initializers
                .iter()
                .filter(|i| i.dims.len() == 4)
                .map(|i| i.dims.clone())
                .collect();
            let mut want = Vec::new();
            if let Body::ResNet { stem, blocks, .. } = &m.net.body {
                want.push(stem.weight_at(w).size());
                for b in blocks {
                    want.push(b.conv1.weight_at(w).size());
                    want.push(b.conv2.weight_at(w).size());
                    if let Some((c, _)) = &b.shortcut {
                        want.push(c.weight_at(w).size());
                    }
                }
            }
            assert_eq!(dims, want, "{arch} width {w}");
        }
    }
}

#[test]
fn package_round_trip_from_the_trainer() {
    for m in [
        oats_small(),
        model(Arch::Small, Mode::PgdAts, Norm::Dual, Some(1.0), 28),
    ] {
        let pkg = package::package(&m).expect("package");
        let bytes = pkg.to_bytes().expect("bytes");
        let back = Package::from_bytes(&bytes).expect("load");
        assert_eq!(back, pkg);
        let l = m.config().train_lambdas()[0];
        assert_eq!(
            oats_graph::to_onnx(&back.lower_folded(l, 1.0).expect("lower")),
            oats_graph::to_onnx(&pkg.lower_folded(l, 1.0).expect("lower")),
            "the same graph from the loaded package"
        );
        assert_eq!(
            package::package(&m)
                .expect("again")
                .to_bytes()
                .expect("bytes"),
            bytes,
            "deterministic bytes"
        );
    }
}

/// An export writes the package beside the graphs, and its reference bundle carries the
/// trainer's logits at the unseen λ: a device can check a derived configuration with no
/// libtorch, which is what this test does with the package read back from disk.
#[test]
fn export_writes_the_package_and_reference_logits_for_unseen_lambda() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = oats_small();
    let out = tmp.path().join("e");
    let opts = ExportOptions {
        verify_with: vec![Backend::Tract],
        ..Default::default()
    };
    let rep = export(
        &m,
        &"0".repeat(64),
        &out,
        &opts,
        None,
        &ProgressBar::hidden(),
    )
    .expect("export");
    let path = out.join(oats_export::PACKAGE_FILE);
    let bytes = std::fs::read(&path).expect("package");
    assert_eq!(rep.package.sha256, oats_io::sha256_hex(&bytes));
    assert_eq!(rep.package.bytes, bytes.len() as u64);
    assert!(
        rep.package.bytes * 4 < rep.bytes,
        "package {} B vs 18 folded graphs {} B",
        rep.package.bytes,
        rep.bytes
    );
    let pkg = Package::from_bytes(&bytes).expect("load");
    assert_eq!(pkg, package::package(&m).expect("package"));

    let refb = std::fs::read(out.join("reference.safetensors")).expect("reference");
    let st = safetensors::SafeTensors::deserialize(&refb).expect("bundle");
    let get = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (t.shape().to_vec(), v)
    };
    let (shape, input) = get("input");
    let x = Tensor::from_slice(&input).view(
        shape
            .iter()
            .map(|&d| d as i64)
            .collect::<Vec<_>>()
            .as_slice(),
    );
    for &w in pkg.widths() {
        for l in REFERENCE_UNSEEN_LAMBDAS {
            let id = oats_export::graph_id(l, w);
            let (_, want) = get(&format!("logits.{id}"));
            let got = run(&pkg.lower_folded(l, w).expect("lower"), &x, None);
            let d = max_abs_diff(&got, &want);
            assert!(d <= UNSEEN_TOLERANCE, "{id}: {d:.2e}");
        }
        for &l in pkg.lambdas() {
            let id = oats_export::graph_id(l, w);
            let (_, want) = get(&format!("logits.{id}"));
            let got = run(&pkg.lower_folded(l, w).expect("lower"), &x, None);
            let d = max_abs_diff(&got, &want);
            assert!(d <= TRAINED_TOLERANCE, "{id}: {d:.2e}");
        }
    }

    // The device side: the manifest (schema v2) lists the package, and the runtime derives
    // every configuration of the bundle (trained and unseen λ) and matches the trainer's
    // logits, on tract and, where its library is, on ONNX Runtime.
    let listed = rep
        .manifest
        .package
        .as_ref()
        .expect("manifest lists the package");
    assert_eq!(listed.file, oats_export::PACKAGE_FILE);
    assert_eq!(listed.sha256, rep.package.sha256);
    let mut backends = vec![Backend::Tract];
    if cfg!(feature = "ort") && std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| !p.is_empty()) {
        backends.push(Backend::Ort);
    }
    for backend in backends {
        let model = oats_runtime::OatsModel::open(
            &out,
            &oats_runtime::Options {
                backend,
                preload: false,
                ..Default::default()
            },
        )
        .expect("open");
        let checks = oats_runtime::reference::check_reference(&model)
            .expect("reference")
            .expect("bundle");
        for &w in pkg.widths() {
            for l in REFERENCE_UNSEEN_LAMBDAS {
                let id = oats_export::graph_id(l, w);
                let c = checks
                    .iter()
                    .find(|c| c.derived && c.graph_id == id)
                    .unwrap_or_else(|| panic!("{backend}: {id} not derived"));
                let d = c.max_abs_diff.expect("compared");
                assert!(d <= UNSEEN_TOLERANCE, "{backend} derived {id}: {d:.2e}");
            }
        }
        for c in checks.iter().filter(|c| c.derived) {
            let unseen = REFERENCE_UNSEEN_LAMBDAS.iter().any(|&l| {
                pkg.widths()
                    .iter()
                    .any(|&w| oats_export::graph_id(l, w) == c.graph_id)
            });
            let tol = if unseen {
                UNSEEN_TOLERANCE
            } else {
                TRAINED_TOLERANCE
            };
            let d = c.max_abs_diff.expect("compared");
            assert!(d <= tol, "{backend} derived {}: {d:.2e}", c.graph_id);
        }
    }
}

/// Constants the two sides of an interface must share.
#[test]
fn shared_constants_agree() {
    assert_eq!(
        oats_graph::SAME_SETTING_TOL,
        oats_train::config::SAME_SETTING_TOL
    );
    assert_eq!(
        oats_graph::LAMBDA_INDEX_INPUT,
        oats_runtime::manifest::LAMBDA_INDEX_INPUT
    );
    let pkg = package::package(&oats_small()).expect("package");
    assert_eq!(pkg.architecture().bn_eps, oats_train::nn::BN_EPS);
    // The manifest (schema v2) lists the package, so it is not a file written beside it.
    assert!(!oats_export::out_dir::WRITTEN_BESIDE.contains(&oats_export::PACKAGE_FILE));
    assert_eq!(
        oats_graph::affine::FILM_NEGATIVE_SLOPE,
        0.01,
        "tch's leaky_relu default, which the trainer's FiLM uses"
    );
}

fn oats_small_with_exits() -> TchModel {
    let mut c = TrainConfig::embedded_default();
    c.exits = Some(oats_train::config::ExitsConfig {
        after_blocks: vec![1, 2],
        attack: oats_train::config::ExitAttack::MaxAverage,
        single_exit: None,
    });
    c.validate().expect("valid");
    let m = TchModel::new(
        &c,
        1,
        28,
        28,
        (0..10).map(|i| format!("c{i}")).collect(),
        Device::Cpu,
    );
    randomise_bns(&m);
    // The heads' classifiers scaled like the final one, so exit logits are O(10) too.
    let _ng = tch::no_grad_guard();
    for e in &m.net.exits {
        let _ =
            e.fc.weight
                .shallow_clone()
                .f_mul_scalar_(50.0)
                .expect("scale");
    }
    m
}

/// A model with side exits (issue #16) exports every configuration as chained segments and
/// heads (manifest schema 3, package format 2), verified exit by exit against the trainer in
/// the runtime; routed inference answers each image at the first exit the shared rule
/// (`oats_graph::routing`) picks from the trainer's exit logits.
#[test]
fn a_model_with_exits_exports_verified_segments_and_heads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = oats_small_with_exits();
    let out = tmp.path().join("e");
    let opts = ExportOptions {
        lambdas: Some(vec![0.0, 1.0]),
        verify_with: vec![Backend::Tract],
        ..Default::default()
    };
    let rep = export(
        &m,
        &"0".repeat(64),
        &out,
        &opts,
        None,
        &ProgressBar::hidden(),
    )
    .expect("export");
    assert_eq!(
        rep.manifest.schema_version,
        oats_runtime::manifest::SCHEMA_VERSION_EXITS
    );
    assert_eq!(
        rep.manifest.package.as_ref().map(|p| p.format.as_str()),
        Some(oats_graph::package::FORMAT_EXITS)
    );
    // Per configuration and input set: the whole graph, then 3 exits.
    let exit_checks = rep
        .checks
        .iter()
        .filter(|c| c.graph.contains("#exit"))
        .count();
    assert_eq!(exit_checks, rep.manifest.graphs.len() * 3);
    assert!(rep.checks.iter().all(|c| c.max_abs_diff <= 1e-4));
    for g in &rep.manifest.graphs {
        let e = g.exits.as_ref().expect("exits");
        assert_eq!(e.after_blocks, vec![1, 2]);
        assert_eq!((e.segments.len(), e.heads.len()), (3, 2));
        assert!(e.exit_macs.windows(2).all(|p| p[0] < p[1]));
        assert!(e.routing.is_none(), "thresholds come from calibration");
    }
    // The manifest reads back.
    let back = oats_runtime::Manifest::load(out.join("manifest.yaml")).expect("manifest");
    assert_eq!(back, rep.manifest);

    let rt = oats_runtime::OatsModel::open(&out, &oats_runtime::Options::default()).expect("open");
    let x = images(24, 28);
    let batch = oats_runtime::Batch::new([24, 1, 28, 28], to_vec(&x)).expect("batch");
    let id = rep.manifest.graphs[1].id.clone(); // λ = 1, width 0.5
    let all = rt.infer_exits(&id, &batch).expect("exits");
    let plain = rt.infer_with(&id, &batch).expect("plain");
    assert_eq!(plain.exits, None, "no thresholds: the whole network");
    let d = all.logits[2]
        .iter()
        .zip(&plain.logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d <= 1e-5, "final exit vs whole graph: {d}");
    // Thresholds at the median entropy of each side exit: some images leave at each.
    let ents = oats_graph::routing::entropies(
        &all.logits.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        10,
    );
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let thresholds = vec![median(&ents[0]), median(&ents[1])];
    let routed = rt
        .infer_routed_with(&id, &batch, &thresholds)
        .expect("routed");
    let (l, w) = (rep.manifest.graphs[1].lambda, rep.manifest.graphs[1].width);
    let want = oats_export::trainer_exit_logits(&m, l, w, &x).expect("trainer");
    let want: Vec<Vec<f32>> = want.iter().map(to_vec).collect();
    let want_exit = oats_graph::routing::route(
        &want.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        10,
        &thresholds,
    );
    let got_exit = routed.exits.clone().expect("routed exits");
    let mut counts = [0usize; 3];
    for i in 0..24 {
        counts[got_exit[i]] += 1;
        // Only an entropy within round-off of its threshold may route differently.
        if got_exit[i] != want_exit[i] {
            let k = got_exit[i].min(want_exit[i]);
            let e = oats_graph::routing::entropy(&want[k][i * 10..(i + 1) * 10]);
            assert!(
                (e - thresholds[k]).abs() < 1e-5,
                "image {i}: {got_exit:?} vs {want_exit:?}"
            );
            continue;
        }
        let k = got_exit[i];
        let row = &routed.logits[i * 10..(i + 1) * 10];
        let d = row
            .iter()
            .zip(&want[k][i * 10..(i + 1) * 10])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-4, "image {i} at exit {k}: {d}");
    }
    assert!(
        counts.iter().all(|&c| c > 0),
        "every exit answers some: {counts:?}"
    );
    // Thresholds set on the model route `infer`; 0 never leaves early.
    rt.select(&oats_runtime::Selector::Id(id.clone()))
        .expect("select");
    rt.set_thresholds(Some(thresholds.clone())).expect("set");
    assert_eq!(rt.thresholds(), Some(thresholds.clone()));
    assert_eq!(rt.infer(&batch).expect("infer").exits, Some(got_exit));
    // Benchmarks time the whole network whatever the thresholds.
    let whole = rt
        .infer_whole(&oats_runtime::Selector::Id(id.clone()), &batch)
        .expect("whole");
    assert_eq!((whole.exits, whole.logits), (None, plain.logits.clone()));
    rt.set_thresholds(Some(vec![0.0, 0.0])).expect("set");
    assert_eq!(rt.infer(&batch).expect("infer").exits, Some(vec![2; 24]));
    for bad in [vec![0.1], vec![f64::NAN, 0.1], vec![-1.0, 0.1]] {
        let e = rt
            .set_thresholds(Some(bad.clone()))
            .expect_err("bad thresholds");
        assert!(e.to_string().contains("thresholds"), "{bad:?}: {e}");
    }
    rt.set_thresholds(None).expect("reset");
    assert_eq!(rt.infer(&batch).expect("infer").exits, None);
    // The chaining benchmark times the whole graph and the chain both ways.
    let cfg = oats_runtime::bench::BenchConfig {
        batch: 4,
        warmup: 1,
        iters: 3,
    };
    let c = oats_runtime::bench::chaining(&rt, &id, &cfg).expect("chaining");
    assert!(
        [c.whole_p50_ms, c.chained_p50_ms, c.through_host_p50_ms]
            .iter()
            .all(|t| t.is_finite() && *t > 0.0),
        "{c:?}"
    );

    // A tampered segment is refused by its sha256, naming the file.
    let seg = &rep.manifest.graphs[0]
        .exits
        .as_ref()
        .expect("exits")
        .segments[1]
        .file
        .clone()
        .expect("a file");
    let mut bytes = std::fs::read(out.join(seg.as_str())).expect("segment");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(out.join(seg.as_str()), &bytes).expect("tamper");
    let e = oats_runtime::OatsModel::open(&out, &oats_runtime::Options::default())
        .err()
        .expect("tampered segment refused");
    assert!(e.to_string().contains(seg.as_str()), "{e}");

    // The layout an exit model cannot be exported in is refused up front.
    let e = export(
        &m,
        &"0".repeat(64),
        &tmp.path().join("x"),
        &ExportOptions {
            layout: Layout::SharedWeights,
            ..Default::default()
        },
        None,
        &ProgressBar::hidden(),
    )
    .expect_err("refused");
    assert!(e.to_string().contains("side exits"), "{e}");
}

/// Package-only, a model with side exits ships no graph at all: the device derives each
/// configuration's segments and heads from the package (verified exit by exit at export
/// like files), routes exactly as the export with files does, and routes any derived λ too.
#[test]
fn a_package_only_exit_model_derives_its_segments_and_heads_on_the_device() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = oats_small_with_exits();
    let run = |out: &std::path::Path, package_only: bool| {
        export(
            &m,
            &"0".repeat(64),
            out,
            &ExportOptions {
                lambdas: Some(vec![0.0, 1.0]),
                widths: Some(vec![0.5]),
                package_only,
                verify_with: vec![Backend::Tract],
                ..Default::default()
            },
            None,
            &ProgressBar::hidden(),
        )
        .expect("export")
    };
    let (files, derived) = (tmp.path().join("files"), tmp.path().join("derived"));
    run(&files, false);
    let rep = run(&derived, true);
    let exit_checks = rep
        .checks
        .iter()
        .filter(|c| c.graph.contains("#exit"))
        .count();
    assert_eq!(
        exit_checks,
        rep.manifest.graphs.len() * 3,
        "every exit verified"
    );
    assert!(rep.checks.iter().all(|c| c.max_abs_diff <= 1e-4));
    for g in &rep.manifest.graphs {
        assert!(g.is_derived());
        let e = g.exits.as_ref().expect("exits");
        assert!(e
            .segments
            .iter()
            .chain(&e.heads)
            .all(|p| p.file.is_none() && p.sha256.is_none() && p.macs > 0));
    }
    let onnx = std::fs::read_dir(&derived)
        .expect("dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "onnx"))
        .count();
    assert_eq!(onnx, 0, "package-only writes no graph");

    let open = |dir: &std::path::Path| {
        oats_runtime::OatsModel::open(dir, &oats_runtime::Options::default()).expect("open")
    };
    let (with_files, on_device) = (open(&files), open(&derived));
    let x = images(24, 28);
    let batch = oats_runtime::Batch::new([24, 1, 28, 28], to_vec(&x)).expect("batch");
    let id = rep.manifest.graphs[1].id.clone(); // λ = 1, width 0.5
    let all = on_device.infer_exits(&id, &batch).expect("exits");
    let ents = oats_graph::routing::entropies(
        &all.logits.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        10,
    );
    // Halfway between the two middle entropies: no image sits on a threshold.
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    let thresholds = vec![median(&ents[0]), median(&ents[1])];
    let a = with_files
        .infer_routed_with(&id, &batch, &thresholds)
        .expect("files");
    let b = on_device
        .infer_routed_with(&id, &batch, &thresholds)
        .expect("derived");
    assert_eq!(a.exits, b.exits);
    assert!(b.config.derived && b.config.side_exits == 2);
    let d = a
        .logits
        .iter()
        .zip(&b.logits)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(d <= 1e-6, "derived vs files: {d}");

    // A λ no manifest entry lists: derived with its exits, routed by the thresholds set
    // (uncalibrated, it runs the whole network until then), as the trainer's exits say.
    let sel = oats_runtime::Selector::Derived {
        lambda: 0.5,
        width: 0.5,
    };
    on_device.select(&sel).expect("select");
    assert_eq!(on_device.thresholds(), None, "no calibrated thresholds");
    assert_eq!(on_device.infer(&batch).expect("infer").exits, None);
    on_device
        .set_thresholds(Some(thresholds.clone()))
        .expect("set");
    let p = on_device.infer(&batch).expect("routed");
    assert_eq!(p.config.side_exits, 2);
    let got = p.exits.clone().expect("routed exits");
    let want = oats_export::trainer_exit_logits(&m, 0.5, 0.5, &x).expect("trainer");
    let want: Vec<Vec<f32>> = want.iter().map(to_vec).collect();
    let want_exit = oats_graph::routing::route(
        &want.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        10,
        &thresholds,
    );
    for i in 0..24 {
        if got[i] != want_exit[i] {
            let k = got[i].min(want_exit[i]);
            let e = oats_graph::routing::entropy(&want[k][i * 10..(i + 1) * 10]);
            assert!(
                (e - thresholds[k]).abs() < 1e-5,
                "image {i}: {got:?} vs {want_exit:?}"
            );
            continue;
        }
        let row = &p.logits[i * 10..(i + 1) * 10];
        let d = row
            .iter()
            .zip(&want[got[i]][i * 10..(i + 1) * 10])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-4, "image {i} at exit {}: {d}", got[i]);
    }

    // What the manifest claims of the derived parts must be what the package gives.
    let path = derived.join("manifest.yaml");
    let refused = |edit: &dyn Fn(&mut oats_runtime::Manifest)| -> String {
        let mut bad = rep.manifest.clone();
        edit(&mut bad);
        std::fs::write(&path, serde_yaml::to_string(&bad).expect("yaml")).expect("write");
        let rt = oats_runtime::OatsModel::open(&derived, &oats_runtime::Options::default());
        let e = match rt {
            Err(e) => e,
            Ok(rt) => rt.infer_exits(&id, &batch).expect_err("accepted"),
        };
        e.to_string()
    };
    let e = refused(&|m| exits(m).heads[0].params += 1);
    assert!(e.contains("#l0-w0.5.e0") && e.contains("params"), "{e}");
    let e = refused(&|m| {
        for g in &mut m.graphs {
            g.exits.as_mut().expect("exits").after_blocks = vec![1, 3];
        }
    });
    assert!(e.contains("blocks [1, 2]") && e.contains("[1, 3]"), "{e}");
    let e = refused(&|m| {
        m.package.as_mut().expect("package").format = oats_graph::package::FORMAT.into()
    });
    assert!(e.contains("oats-package/2"), "{e}");

    // A derived configuration's exits list no files: one that does is refused.
    let mut bad = rep.manifest.clone();
    bad.graphs[0].exits.as_mut().expect("exits").heads[0].file = Some("x.onnx".into());
    let e = bad
        .validate(std::path::Path::new("manifest.yaml"))
        .expect_err("refused");
    assert!(e.to_string().contains("no segment or head files"), "{e}");
}

fn exits(m: &mut oats_runtime::Manifest) -> &mut oats_runtime::manifest::ExitsEntry {
    m.graphs[0].exits.as_mut().expect("exits")
}

/// A manifest whose exits disagree with themselves or with the files is refused, naming
/// what is wrong; a part swapped for another is refused when loaded.
#[test]
fn tampered_exit_manifests_are_refused_naming_the_field() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = oats_small_with_exits();
    let out = tmp.path().join("e");
    let opts = ExportOptions {
        lambdas: Some(vec![1.0]),
        widths: Some(vec![1.0]),
        ..Default::default()
    };
    export(
        &m,
        &"0".repeat(64),
        &out,
        &opts,
        None,
        &ProgressBar::hidden(),
    )
    .expect("export");
    // Exporting again into the same directory replaces the earlier export, parts included.
    let rep = export(
        &m,
        &"0".repeat(64),
        &out,
        &opts,
        None,
        &ProgressBar::hidden(),
    )
    .expect("export again over the earlier export");
    let good = rep.manifest.clone();
    let path = out.join("manifest.yaml");
    let refused = |edit: &dyn Fn(&mut oats_runtime::Manifest)| -> String {
        let mut bad = good.clone();
        edit(&mut bad);
        std::fs::write(&path, serde_yaml::to_string(&bad).expect("yaml")).expect("write");
        let e = match oats_runtime::Manifest::load(&path) {
            Err(e) => e,
            Ok(_) => match oats_runtime::OatsModel::open(&out, &oats_runtime::Options::default()) {
                Err(e) => e,
                Ok(_) => panic!("accepted"),
            },
        };
        e.to_string()
    };
    let e = refused(&|m| m.schema_version = 2);
    assert!(e.contains("schema_version 3"), "{e}");
    let e = refused(&|m| exits(m).exit_macs[1] += 1);
    assert!(e.contains("exit_macs[1]"), "{e}");
    let e = refused(&|m| exits(m).segments[0].macs += 1);
    assert!(e.contains("MACs sum"), "{e}");
    let e = refused(&|m| {
        exits(m).features.pop();
    });
    assert!(e.contains("features"), "{e}");
    let e = refused(&|m| exits(m).after_blocks = vec![2, 1]);
    assert!(e.contains("after_blocks"), "{e}");
    let e = refused(&|m| exits(m).heads[1].file = Some("../outside.onnx".into()));
    assert!(e.contains("outside.onnx"), "{e}");
    let e = refused(&|m| {
        let f = exits(m).heads[0].file.clone();
        exits(m).heads[1].file = f;
    });
    assert!(e.contains("listed twice"), "{e}");
    let routing = oats_runtime::manifest::Routing {
        thresholds: vec![0.5, 0.5],
        target: "test".into(),
        fitted_on: "val".into(),
        exit_mix: vec![0.2, 0.3, 0.5],
        mean_macs: 1.0,
        sa: Some(0.5),
        ra_worst: Some(0.25),
        latency_ms: Default::default(),
    };
    let r = routing.clone();
    let e = refused(&move |m| {
        exits(m).routing = Some(oats_runtime::manifest::Routing {
            thresholds: vec![f64::NAN, 0.5],
            ..r.clone()
        })
    });
    assert!(e.contains("entropy threshold"), "{e}");
    let r = routing.clone();
    let e = refused(&move |m| {
        exits(m).routing = Some(oats_runtime::manifest::Routing {
            exit_mix: vec![0.5, 0.5, 0.5],
            ..r.clone()
        })
    });
    assert!(e.contains("exit_mix"), "{e}");
    let r = routing.clone();
    let e = refused(&move |m| {
        exits(m).routing = Some(oats_runtime::manifest::Routing {
            ra_worst: Some(0.75),
            ..r.clone()
        })
    });
    assert!(e.contains("ra_worst"), "{e}");
    // The two heads' files swapped (each with its own sha256, the MACs left in place): the
    // first head's file now computes another exit's shapes and MACs, refused when loaded,
    // naming the file.
    let e = refused(&|m| {
        let x = exits(m);
        let (a, b) = (x.heads[0].clone(), x.heads[1].clone());
        (x.heads[0].file, x.heads[0].sha256) = (b.file, b.sha256);
        (x.heads[1].file, x.heads[1].sha256) = (a.file, a.sha256);
    });
    assert!(e.contains(".e1.onnx"), "{e}");
    // Intact, it opens.
    std::fs::write(&path, serde_yaml::to_string(&good).expect("yaml")).expect("write");
    oats_runtime::OatsModel::open(&out, &oats_runtime::Options::default()).expect("intact");
}
