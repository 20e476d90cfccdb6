//! Early exits end to end (issue #16, "Done when"): a tiny OATS model with side exits after
//! blocks 1 and 2 is trained (max-average attack), exported as verified segments and heads,
//! calibrated (thresholds fitted on the validation split for a MACs budget; routed SA, RA
//! under the main-branch, average, max-average and routed attacks; the slowdown attack), and
//! run routed in the runtime, whose prediction equals the trainer's routed prediction.
use crate::support::{assets, backends};

use indicatif::ProgressBar;
use oats_calibrate::{parse_attacks, CalibrateOptions, LatencySettings};
use oats_export::{export, ExportOptions};
use oats_runtime::{Batch, Manifest, OatsModel, Options, Selector};
use oats_train::config::{ExitAttack, ExitsConfig, TrainConfig};
use oats_train::data::{self, DatasetKind, Split};
use oats_train::{checkpoint, TchModel, Trainer};
use tch::{Device, Kind, Tensor};

#[test]
fn an_exit_model_trains_exports_calibrates_and_routes_like_the_trainer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    let mut c = TrainConfig::embedded_default();
    c.data.dir = assets();
    c.attack.steps = 1;
    c.epochs = 1;
    c.batch_size = 32;
    c.max_batches = Some(24);
    c.exits = Some(ExitsConfig {
        after_blocks: vec![1, 2],
        attack: ExitAttack::MaxAverage,
        single_exit: None,
    });
    c.validate().expect("config");
    let train = data::load(
        DatasetKind::FashionMnist,
        &assets(),
        Split::Train,
        Some(24 * 32),
    )
    .expect("data");
    let val = data::load(DatasetKind::FashionMnist, &assets(), Split::Val, Some(64)).expect("data");
    let mut t = Trainer::new(c, &train, &val, &run, Device::Cpu).expect("trainer");
    t.quiet = true;
    t.run().expect("train");
    let ckpt = run.join(checkpoint::FILE_NAME);
    let sha = checkpoint::sha256_hex(&std::fs::read(&ckpt).expect("ckpt"));
    let (model, _) = TchModel::load(&ckpt, Device::Cpu).expect("load");

    // Export: two configurations, each as 3 segments + 2 heads, verified exit by exit.
    let out = tmp.path().join("export");
    let rep = export(
        &model,
        &sha,
        &out,
        &ExportOptions {
            lambdas: Some(vec![0.0, 1.0]),
            widths: Some(vec![1.0]),
            verify_with: backends(),
            ..ExportOptions::default()
        },
        None,
        &ProgressBar::hidden(),
    )
    .expect("export");
    assert_eq!(rep.manifest.graphs.len(), 2);
    assert!(rep.checks.iter().any(|c| c.graph.ends_with("#exit0")));

    // A λ the export does not list cannot be added by calibration: its segments and heads
    // are not in the manifest.
    let e = oats_calibrate::run(
        &ckpt,
        Device::Cpu,
        &CalibrateOptions {
            data_dir: Some(assets()),
            lambdas: Some(vec![0.5]),
            quiet: true,
            ..CalibrateOptions::new(&out)
        },
    )
    .expect_err("an unlisted λ of an exit model");
    assert!(e.to_string().contains("side exits"), "{e}");

    // Calibrate on the validation split.
    let budget = 0.8;
    let report = oats_calibrate::run(
        &ckpt,
        Device::Cpu,
        &CalibrateOptions {
            data_dir: Some(assets()),
            attacks: parse_attacks("pgd5").expect("attacks"),
            limit: Some(64),
            backends: backends(),
            sanity_limit: 0,
            batch: 64,
            latency: LatencySettings {
                batches: vec![1],
                warmup: 1,
                iters: 3,
            },
            exit_target: oats_calibrate::exits::ExitTarget::Budget(budget),
            quiet: true,
            ..CalibrateOptions::new(&out)
        },
    )
    .expect("calibrate");
    let manifest = Manifest::load(out.join("manifest.yaml")).expect("manifest");
    for g in &report.graphs {
        let e = g.exits.as_ref().expect("exit calibration");
        eprintln!("{}: {}", g.id, serde_yaml::to_string(e).expect("yaml"));
        assert_eq!(e.thresholds.len(), 2);
        assert!(
            e.clean.macs_fraction <= budget + 1e-9,
            "{}: {} of the MACs over a budget of {budget}",
            g.id,
            e.clean.macs_fraction
        );
        assert!((e.clean.exit_mix.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        for a in ["main-branch", "average", "max-average", "routed"] {
            let ra = e.ra[a];
            assert!(e.ra_worst <= ra + 1e-12, "{a}: worst {} > {ra}", e.ra_worst);
        }
        assert!(e.ra_worst <= e.clean.accuracy + 1e-12);
        // The attacker forces at least the clean compute.
        assert!(
            e.slowdown.macs_fraction >= e.clean.macs_fraction - 1e-9,
            "slowdown {} < clean {}",
            e.slowdown.macs_fraction,
            e.clean.macs_fraction
        );
        assert_eq!(e.runtime_disagreements, 0);
        for b in backends() {
            let w = &e.wall_clock[b.name()];
            assert_eq!(w.iter().map(|w| w.batch).collect::<Vec<_>>(), vec![1, 64]);
            assert!(w.iter().all(|w| w.clean_ms > 0.0 && w.full_ms > 0.0));
        }
        // Stored in the manifest, fitted on the validation split.
        let entry = &manifest.graphs[manifest.graph_index(&g.id).expect("id")];
        let routing = entry
            .exits
            .as_ref()
            .and_then(|x| x.routing.as_ref())
            .expect("routing stored");
        assert_eq!(routing.thresholds, e.thresholds);
        assert!(
            routing.fitted_on.contains("val[0..64]"),
            "{}",
            routing.fitted_on
        );
    }

    // The runtime routes with the calibrated thresholds, as the trainer's rule does on the
    // trainer's logits (the test split: images calibration never saw).
    let test =
        data::load(DatasetKind::FashionMnist, &assets(), Split::Test, Some(64)).expect("test");
    let x = Tensor::from_slice(&test.images).view([test.len() as i64, 1, 28, 28]);
    let batch = Batch::new([test.len(), 1, 28, 28], test.images.clone()).expect("batch");
    for b in backends() {
        let rt = OatsModel::open(
            &out,
            &Options {
                backend: b,
                ..Options::default()
            },
        )
        .expect("open");
        for g in &manifest.graphs {
            rt.select(&Selector::Id(g.id.clone())).expect("select");
            let thresholds = rt.thresholds().expect("calibrated thresholds");
            let p = rt.infer(&batch).expect("routed");
            let got = p.exits.clone().expect("routed exits");
            let want =
                oats_export::trainer_exit_logits(&model, g.lambda, g.width, &x).expect("trainer");
            let rows: Vec<Vec<f32>> = want
                .iter()
                .map(|t| Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).expect("f32"))
                .collect();
            let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
            let want_exit = oats_graph::routing::route(&refs, 10, &thresholds);
            for (i, (&ge, &we)) in got.iter().zip(&want_exit).enumerate() {
                if ge != we {
                    let k = ge.min(we);
                    let h = oats_graph::routing::entropy(&rows[k][i * 10..(i + 1) * 10]);
                    assert!(
                        (h - thresholds[k]).abs() < oats_calibrate::exits::ENTROPY_TIE,
                        "{} {b}: image {i} at exit {ge}, trainer's rule {we}",
                        g.id
                    );
                    continue;
                }
                let d = p
                    .row(i)
                    .expect("row")
                    .iter()
                    .zip(&rows[we][i * 10..(i + 1) * 10])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(d <= 1e-4, "{} {b}: image {i} at exit {we}: {d}", g.id);
            }
        }
    }
}
