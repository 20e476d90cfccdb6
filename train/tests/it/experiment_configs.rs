//! Every committed experiment config (experiments/*/configs/*.yaml) parses and validates, so
//! that a study queued for hours does not die on its tenth config. The study configs of
//! issue #18 also carry the knobs they are about.
use std::path::Path;

use oats_train::config::{LambdaSampling, Mode, TrainConfig};

fn configs(exp: &str) -> Vec<(String, TrainConfig)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../experiments")
        .join(exp)
        .join("configs");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let cfg = TrainConfig::load(&p).unwrap_or_else(|e| panic!("{e}"));
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            out.push((name, cfg));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn claim_configs_parse() {
    assert_eq!(configs("fmnist-claim").len(), 11);
}

/// The experiments measured before `ends` became the default (issue #18) keep training with
/// the sampling their documented numbers came from, and the shipped model's copy of its
/// config is the claim config it was trained from (`pretrained.sh`).
#[test]
fn configs_measured_before_the_default_switch_name_the_reference() {
    for exp in ["fmnist-claim", "exits"] {
        for (name, c) in configs(exp) {
            assert_eq!(c.lambda_sampling, LambdaSampling::Reference, "{exp}/{name}");
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read =
        |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(
        read("assets/pretrained/oats-small-fmnist/train-config.yaml"),
        read("experiments/fmnist-claim/configs/oats.yaml")
    );
    let fixture = TrainConfig::load(&root.join("assets/configs/exits-fixture.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fixture.lambda_sampling, LambdaSampling::Reference);
}

#[test]
fn no_worse_study_configs_parse_and_span_the_cells() {
    let all = configs("no-worse");
    assert_eq!(
        all.len(),
        3 * 2 * 6 + 3 + 2 * 5 + 2 * 2,
        "36 cells + 3 full-split anchors + OATS and 4 PGD-ATS at ×2 for 2 seeds \
         + `robust` OAT at ×1 and ×2 for 2 seeds"
    );
    for (name, c) in &all {
        assert_eq!(c.epochs, 10, "{name}");
        let m = c.channel_multiplier;
        assert!(
            name.contains(&format!("m{m}-s{}-", c.seed)),
            "{name}: m{m} seed {}",
            c.seed
        );
        assert_eq!(
            c.data.limit,
            (!name.starts_with("full-")).then_some(15_000),
            "{name}"
        );
        let slimmable = matches!(c.mode, Mode::Oats | Mode::PgdAts);
        let widths: &[f64] = if slimmable { &[0.5, 0.75, 1.0] } else { &[1.0] };
        assert_eq!(c.widths, widths, "{name}");
        if slimmable {
            assert_eq!(m, 2, "{name}: OATS against PGD-ATS is the ×2 comparison");
        }
        // Every name spells its mode (`-oat-`, `-oats-`, `-pgd-at-`, `-pgd-ats-`: none is a
        // substring of another's with the dashes).
        assert!(
            name.contains(&format!("-{}-", c.mode)),
            "{name}: {}",
            c.mode
        );
        match c.mode {
            Mode::Oat | Mode::Oats => {
                let want = if name.ends_with("-ends") {
                    LambdaSampling::Ends
                } else if name.ends_with("-robust") {
                    assert!(m <= 2, "{name}: the third factor runs at ×1 and ×2");
                    LambdaSampling::Robust
                } else {
                    LambdaSampling::Reference
                };
                assert_eq!(c.lambda_sampling, want, "{name}");
            }
            Mode::PgdAt | Mode::PgdAts => {
                let l = c.lambda.expect("λ");
                assert!(name.ends_with(&format!("-l{l}")), "{name}: λ {l}");
            }
        }
    }
}
