//! The Java class on the host JVM: `java/java/oats/*.java` and `tests/OatsTest.java` are
//! compiled with `javac` and run with `java` against the `liboats_jni.so` of this build, on
//! the pretrained model. The Java program must classify the bundled images as the Rust API
//! does at (λ 0.15, width 1), give each bad input its exception kind, stay right with 4
//! threads inferring while one switches, refuse calls after close, open from memory, and
//! route through the side exits of `assets/fixtures/exits-tiny` as the Rust API does.
use std::path::PathBuf;
use std::process::Command;

use oats_runtime::{Batch, OatsModel, Options, Selector};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

const EXAMPLES: [&str; 4] = [
    "ankle-boot-test0.png",
    "sneaker-test9.png",
    "t-shirt-top-test19.png",
    "trouser-test2.png",
];

#[test]
fn the_java_class_runs_the_pretrained_model_on_the_host_jvm() {
    let (Some(javac), Some(java)) = (oats_testkit::which("javac"), oats_testkit::which("java"))
    else {
        oats_testkit::tool_missing("a JDK (javac, java): the Java binding did not run");
        return;
    };
    let model_dir = root().join("assets/pretrained/oats-small-fmnist");
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let classes = tmp.path().join("classes");
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&javac)
        .args(["-Xlint:all", "-Werror", "-d"])
        .arg(&classes)
        .arg(here.join("java/oats/OatsModel.java"))
        .arg(here.join("java/oats/OatsException.java"))
        .arg(here.join("tests/OatsTest.java"))
        .output()
        .unwrap_or_else(|e| panic!("javac: {e}"));
    assert!(
        out.status.success(),
        "javac:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The images as the Rust runtime decodes them, and the classes the Rust API gives.
    let rust = OatsModel::open(&model_dir, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let files: Vec<PathBuf> = EXAMPLES
        .iter()
        .map(|f| root().join("assets/examples").join(f))
        .collect();
    let batch =
        Batch::from_images(&files, &rust.manifest().input).unwrap_or_else(|e| panic!("{e}"));
    let images = tmp.path().join("images.f32");
    let bytes: Vec<u8> = batch.data().iter().flat_map(|v| v.to_ne_bytes()).collect();
    std::fs::write(&images, bytes).unwrap_or_else(|e| panic!("{e}"));
    let want: Vec<usize> = rust
        .infer_selected(
            &Selector::Explicit {
                lambda: 0.15,
                width: 1.0,
            },
            &batch,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .top_k(1)
        .iter()
        .map(|r| r[0].class)
        .collect();

    // The exit model (assets/fixtures/exits-tiny) with its calibrated thresholds: the exit
    // that answered each image and its class, as the Rust API routes them.
    let exits_dir = root().join("assets/fixtures/exits-tiny");
    let routed = OatsModel::open(&exits_dir, &Options::default())
        .and_then(|m| m.infer_selected(&Selector::Id("l1-w0.5".into()), &batch))
        .unwrap_or_else(|e| panic!("{e}"));
    let top1 = routed
        .top_k(1)
        .iter()
        .map(|r| r[0].class)
        .collect::<Vec<_>>();
    let want_routed: Vec<String> = routed
        .answering_exits()
        .iter()
        .zip(top1)
        .enumerate()
        .map(|(i, (e, k))| format!("routed image {i} exit {e} class {k}"))
        .collect();
    assert!(routed.exits.is_some(), "the fixture's thresholds route");

    let out = Command::new(&java)
        .arg(format!(
            "-Doats.library={}",
            oats_testkit::built_library("liboats_jni.so").display()
        ))
        .arg("-cp")
        .arg(&classes)
        .arg("OatsTest")
        .arg(&model_dir)
        .arg(&images)
        .arg(EXAMPLES.len().to_string())
        .arg(&exits_dir)
        .output()
        .unwrap_or_else(|e| panic!("java: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "java failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("all ok") && stdout.contains("threads ok") && stdout.contains("exits ok"),
        "{stdout}"
    );
    let got_routed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("routed image "))
        .collect();
    assert_eq!(got_routed, want_routed, "{stdout}");
    for prefix in ["image ", "memory image "] {
        let got: Vec<usize> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|l| l.split(" class ").nth(1))
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        assert_eq!(got, want, "{prefix}: {stdout}");
    }
}
