//! Robust early exits (RDI-Nets, issue #16), training side: config, side heads, the
//! multi-exit attacks, and a training run with exits.
use crate::common;

use oats_train::attack;
use oats_train::config::{ExitAttack, ExitsConfig, TrainConfig};
use oats_train::nn::{Cond, Pass};
use oats_train::TchModel;
use tch::{Device, Kind, Tensor};

fn with_exits(mode: &str, after: &[usize]) -> TrainConfig {
    let mut c = common::tiny_config(mode, 1, 256);
    c.exits = Some(ExitsConfig {
        after_blocks: after.to_vec(),
        attack: ExitAttack::MaxAverage,
        single_exit: None,
    });
    c.validate().expect("valid");
    c
}

fn model(cfg: &TrainConfig) -> TchModel {
    TchModel::new(
        cfg,
        1,
        28,
        28,
        (0..10).map(|i| i.to_string()).collect(),
        Device::Cpu,
    )
}

#[test]
fn exits_parse_validate_and_stay_out_of_configs_without_them() {
    let base = TrainConfig::embedded_default();
    assert_eq!(base.exits, None);
    assert!(!base.to_yaml().expect("yaml").contains("exits"));
    let c = with_exits("oats", &[1, 2]);
    let back =
        TrainConfig::from_yaml(&c.to_yaml().expect("yaml"), "c.yaml".as_ref()).expect("round trip");
    assert_eq!(back.exits, c.exits);
    for (after, attack, single, want) in [
        (vec![3], ExitAttack::MaxAverage, None, "exits.after_blocks"),
        (
            vec![2, 1],
            ExitAttack::MaxAverage,
            None,
            "strictly increasing",
        ),
        (vec![], ExitAttack::MaxAverage, None, "exits.after_blocks"),
        (vec![0], ExitAttack::MaxAverage, None, "in 1..=2"),
        (vec![1], ExitAttack::Single, Some(3), "exits.single_exit"),
        (
            vec![1],
            ExitAttack::Average,
            Some(1),
            "only with attack: single",
        ),
    ] {
        let mut c = TrainConfig::embedded_default();
        c.exits = Some(ExitsConfig {
            after_blocks: after.clone(),
            attack,
            single_exit: single,
        });
        let err = c.validate().expect_err("invalid").to_string();
        assert!(err.contains(want), "{after:?} {attack:?} {single:?}: {err}");
    }
}

#[test]
fn side_heads_give_logits_and_the_final_exit_is_the_plain_forward() {
    let cfg = with_exits("oats", &[1, 2]);
    let m = model(&cfg);
    assert_eq!(m.net.exits.len(), 2);
    let names: Vec<String> = m.vs.variables().into_keys().collect();
    assert!(
        names.iter().any(|n| n == "exits.1.conv.weight"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("exits.2.norm.w0.adv.")),
        "{names:?}"
    );
    let x = Tensor::rand([4, 1, 28, 28], (Kind::Float, Device::Cpu));
    let cond = m.cond_for(0.4).expect("λ");
    for width in 0..m.widths().len() {
        let pass = Pass {
            train: false,
            width,
        };
        let all = m.net.forward_exits(&x, &cond, pass);
        assert_eq!(all.len(), 3);
        for l in &all {
            assert_eq!(l.size(), [4, 10]);
        }
        let plain = m.net.forward(&x, &cond, pass);
        assert_eq!(
            (all[2].shallow_clone() - plain)
                .abs()
                .max()
                .double_value(&[]),
            0.0
        );
    }
    // The clean BN branch too (λ = 0 rows first).
    let c0 = Cond {
        enc: m.cond_for(0.0).expect("λ").enc,
        n_clean: 4,
    };
    let all = m.net.forward_exits(
        &x,
        &c0,
        Pass {
            train: true,
            width: 0,
        },
    );
    assert!(all.iter().all(|l| l.isfinite().all().int64_value(&[]) == 1));
}

#[test]
fn max_average_keeps_per_sample_the_strongest_single_exit_attack() {
    let cfg = with_exits("oat", &[1, 2]);
    let m = model(&cfg);
    let cond = m.cond_for(1.0).expect("λ");
    let f = |z: &Tensor| {
        m.net.forward_exits(
            z,
            &Cond {
                enc: cond.enc.as_ref().map(|e| e.shallow_clone()),
                n_clean: 0,
            },
            Pass {
                train: false,
                width: 0,
            },
        )
    };
    let x = Tensor::rand([6, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]);
    let (eps, step, steps) = (0.1, 0.025, 3);
    let best = attack::max_average(&f, 3, &x, &y, eps, step, steps, None);
    let singles: Vec<Tensor> = (0..3)
        .map(|i| {
            let mut w = vec![0.0; 3];
            w[i] = 1.0;
            attack::exits_loss(
                &f,
                &attack::pgd_exits(&f, &x, &y, eps, step, steps, &w, None),
                &y,
            )
        })
        .collect();
    let want = singles[0].maximum(&singles[1]).maximum(&singles[2]);
    let got = attack::exits_loss(&f, &best, &y);
    assert_eq!((got - want).abs().max().double_value(&[]), 0.0);
    assert!(
        (&best - &x).abs().max().double_value(&[]) <= eps + 1e-6,
        "inside the ε-ball"
    );
}

#[test]
fn a_model_with_exits_trains_checkpoints_and_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for attack in [
        ExitAttack::MaxAverage,
        ExitAttack::Average,
        ExitAttack::Single,
    ] {
        let mut cfg = with_exits("oats", &[1, 2]);
        cfg.max_batches = Some(2);
        if let Some(e) = &mut cfg.exits {
            e.attack = attack;
            e.single_exit = (attack == ExitAttack::Single).then_some(1);
        }
        cfg.validate().expect("valid");
        let split = |split, limit| {
            oats_train::data::load(cfg.data.kind, &cfg.data.dir, split, limit).expect("data")
        };
        let train = split(oats_train::data::Split::Train, cfg.data.limit);
        let val = split(oats_train::data::Split::Val, cfg.data.val_limit);
        let dir = tmp.path().join(format!("{attack:?}"));
        let mut t =
            oats_train::Trainer::new(cfg, &train, &val, &dir, Device::Cpu).expect("trainer");
        t.quiet = true;
        t.run().expect("train");
        let loaded =
            oats_train::checkpoint::load(&dir.join("checkpoint.safetensors")).expect("checkpoint");
        assert!(loaded.meta.history[0].loss.is_finite());
        assert!(loaded.tensors.contains_key("model.exits.2.fc.weight"));
        assert!(loaded
            .tensors
            .contains_key("optim.momentum.exits.1.conv.weight"));
        let (back, _) =
            TchModel::load(&dir.join("checkpoint.safetensors"), Device::Cpu).expect("load");
        assert_eq!(back.net.exits.len(), 2);
    }
}
