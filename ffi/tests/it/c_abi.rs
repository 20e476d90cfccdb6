//! The C ABI from C: `tests/c/oats_smoke.c` is compiled with the system C compiler against
//! `include/oats.h` and the cdylib this test build made, and run on the pretrained model in
//! `assets/` (package-only: every configuration derived on the device). It must classify
//! the bundled images as the Rust API does, route them through the side exits of
//! `assets/fixtures/exits-tiny` as it does, give each bad input its status and message,
//! stay right with 4 threads inferring while another switches, and run under valgrind with
//! no leak and no invalid access.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use oats_runtime::{Batch, OatsModel, Options, Selector};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_dir() -> PathBuf {
    root().join("assets/pretrained/oats-small-fmnist")
}

/// The bundled examples, in a fixed order, and the class their file name says.
const EXAMPLES: [(&str, &str); 4] = [
    ("ankle-boot-test0.png", "Ankle boot"),
    ("sneaker-test9.png", "Sneaker"),
    ("t-shirt-top-test19.png", "T-shirt/top"),
    ("trouser-test2.png", "Trouser"),
];

/// Scratch space for this test binary: the compiled program and the image file.
struct Fixture {
    _tmp: tempfile::TempDir,
    program: PathBuf,
    images: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let program = tmp.path().join("oats_smoke");
        let lib = oats_testkit::built_library("liboats.so")
            .parent()
            .unwrap_or_else(|| panic!("liboats.so has no directory"))
            .to_path_buf();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/oats_smoke.c");
        let out = Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
            .arg("-I")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include"))
            .arg(&src)
            .arg("-o")
            .arg(&program)
            .arg("-L")
            .arg(&lib)
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .args(["-loats", "-lpthread", "-lm"])
            .output()
            .unwrap_or_else(|e| panic!("{cc}: {e}"));
        assert!(
            out.status.success(),
            "{cc} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let images = tmp.path().join("images.f32");
        let m = oats_runtime::Manifest::load(model_dir().join("manifest.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = Vec::new();
        for (file, _) in EXAMPLES {
            let x = oats_runtime::input::load_image(
                &root().join("assets/examples").join(file),
                &m.input,
            )
            .unwrap_or_else(|e| panic!("{file}: {e}"));
            bytes.extend(x.iter().flat_map(|v| v.to_ne_bytes()));
        }
        std::fs::write(&images, bytes).unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            _tmp: tmp,
            program,
            images,
        }
    })
}

fn run(args: &[&str], dir: &Path) -> Output {
    let f = fixture();
    let mut c = Command::new(&f.program);
    // The program finds liboats.so by its rpath (this build's deps directory): cargo's
    // LD_LIBRARY_PATH would win over it and may name an older liboats.so that an earlier
    // `cargo build` left one level up.
    c.env_remove("LD_LIBRARY_PATH");
    c.arg(args[0])
        .arg(dir)
        .arg(&f.images)
        .arg(EXAMPLES.len().to_string());
    c.args(&args[1..]);
    c.output()
        .unwrap_or_else(|e| panic!("{}: {e}", f.program.display()))
}

fn stdout_of(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{out}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Top-1 class per example through the Rust API at (λ, width).
fn rust_classes(lambda: f64, width: f64) -> Vec<usize> {
    let model = OatsModel::open(model_dir(), &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let files: Vec<PathBuf> = EXAMPLES
        .iter()
        .map(|(f, _)| root().join("assets/examples").join(f))
        .collect();
    let batch =
        Batch::from_images(&files, &model.manifest().input).unwrap_or_else(|e| panic!("{e}"));
    let p = model
        .infer_selected(&Selector::Explicit { lambda, width }, &batch)
        .unwrap_or_else(|e| panic!("{e}"));
    p.top_k(1).iter().map(|r| r[0].class).collect()
}

fn c_classes(stdout: &str) -> Vec<usize> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("image "))
        .filter_map(|l| l.split(" class ").nth(1))
        .filter_map(|c| c.trim().parse().ok())
        .collect()
}

#[test]
fn c_classifies_the_bundled_images_as_the_rust_api_does() {
    let names = oats_runtime::Manifest::load(model_dir().join("manifest.yaml"))
        .unwrap_or_else(|e| panic!("{e}"))
        .class_names;
    for (lambda, width) in [(0.15, 1.0), (0.0, 0.5), (1.0, 0.75)] {
        let out = stdout_of(&run(
            &["classify", &lambda.to_string(), &width.to_string()],
            &model_dir(),
        ));
        assert!(
            out.contains(&format!("served lambda {lambda} width {width} derived 1")),
            "{out}"
        );
        let got = c_classes(&out);
        assert_eq!(got, rust_classes(lambda, width), "{out}");
        for (c, (file, want)) in got.iter().zip(EXAMPLES) {
            assert_eq!(names[*c], want, "λ {lambda} width {width}: {file}");
        }
    }
}

#[test]
fn c_opens_the_model_from_memory() {
    let m = oats_runtime::Manifest::load(model_dir().join("manifest.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut files = vec!["manifest.yaml".to_string()];
    files.extend(m.graphs.iter().filter_map(|g| g.file.clone()));
    files.extend(m.package.iter().map(|p| p.file.clone()));
    files.extend(m.reference.iter().map(|r| r.file.clone()));
    files.dedup();
    let mut args = vec!["memory"];
    args.extend(files.iter().map(String::as_str));
    let out = stdout_of(&run(&args, &model_dir()));
    // The first configuration of the manifest is active after opening.
    let g = &m.graphs[0];
    assert_eq!(c_classes(&out), rust_classes(g.lambda, g.width), "{out}");
}

#[test]
fn c_bad_inputs_get_their_status_and_message() {
    let out = stdout_of(&run(&["errors"], &model_dir()));
    assert!(out.contains("errors ok"), "{out}");

    // A tampered package: opening derives the first configuration, which reads it.
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for e in std::fs::read_dir(model_dir())
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
    {
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap_or_else(|e| panic!("{e}"));
    }
    let pkg = tmp.path().join("package.safetensors");
    let mut bytes = std::fs::read(&pkg).unwrap_or_default();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&pkg, bytes).unwrap_or_else(|e| panic!("{e}"));
    let o = run(&["classify", "0.2", "1"], tmp.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("oats_open") && err.contains("status 7") && err.contains("sha256"),
        "{err}"
    );
}

/// The committed export of a tiny model with side exits (scripts/make-exits-fixture.sh).
fn exits_dir() -> PathBuf {
    root().join("assets/fixtures/exits-tiny")
}

/// (exit, class) per example from the C program's lines that start with `what`.
fn c_routes(stdout: &str, what: &str) -> Vec<(usize, usize)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{what} image ")))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(2)?.parse().ok()?, f.get(4)?.parse().ok()?))
        })
        .collect()
}

/// Routed inference from C: the exit that answered each image and its class are the Rust
/// API's, with the calibrated thresholds, with thresholds set from C, and with thresholds
/// that never leave early; the exits' MACs and the thresholds read back; bad thresholds get
/// their status and message.
#[test]
fn c_routes_through_side_exits_as_the_rust_api_does() {
    let id = "l1-w0.5";
    let model = OatsModel::open(exits_dir(), &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let files: Vec<PathBuf> = EXAMPLES
        .iter()
        .map(|(f, _)| root().join("assets/examples").join(f))
        .collect();
    let batch =
        Batch::from_images(&files, &model.manifest().input).unwrap_or_else(|e| panic!("{e}"));
    let g = &model.manifest().graphs[model
        .manifest()
        .graph_index(id)
        .unwrap_or_else(|| panic!("no {id} in the fixture"))];
    let calibrated = g
        .routing()
        .unwrap_or_else(|| panic!("the fixture is calibrated"))
        .thresholds
        .clone();
    // Thresholds that split these images: below exit 0's median entropy, above every exit
    // 1 entropy, so some leave at each side exit.
    let all = model
        .infer_exits(id, &batch)
        .unwrap_or_else(|e| panic!("{e}"));
    let parts: Vec<&[f32]> = all.logits.iter().map(Vec::as_slice).collect();
    let ents = oats_graph::routing::entropies(&parts, all.classes);
    let mut e0 = ents[0].clone();
    e0.sort_by(f64::total_cmp);
    let mine = [
        e0[e0.len() / 2],
        ents[1].iter().copied().fold(0.0, f64::max) + 0.01,
    ];
    let routes = |t: &[f64]| -> Vec<(usize, usize)> {
        let p = model
            .infer_routed_with(id, &batch, t)
            .unwrap_or_else(|e| panic!("{e}"));
        let classes = p.top_k(1).iter().map(|r| r[0].class).collect::<Vec<_>>();
        p.answering_exits().into_iter().zip(classes).collect()
    };
    let t0 = format!("{:?}", mine[0]);
    let t1 = format!("{:?}", mine[1]);
    let out = stdout_of(&run(&["exits", id, &t0, &t1], &exits_dir()));
    assert!(out.contains("exits ok"), "{out}");
    assert!(out.contains("calibrated thresholds 2"), "{out}");
    assert_eq!(c_routes(&out, "calibrated"), routes(&calibrated), "{out}");
    let set = c_routes(&out, "set");
    assert_eq!(set, routes(&mine), "{out}");
    assert!(
        set.iter().any(|r| r.0 == 0) && set.iter().any(|r| r.0 == 1),
        "these thresholds send images to both side exits: {out}"
    );
    assert_eq!(c_routes(&out, "never"), routes(&[0.0, 0.0]), "{out}");
    assert!(c_routes(&out, "never").iter().all(|r| r.0 == 2), "{out}");
    let macs = g
        .exits
        .as_ref()
        .map(|e| e.exit_macs.clone())
        .unwrap_or_default();
    let want = format!(
        "exit macs {}",
        macs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert!(out.contains(&want), "{want}: {out}");
}

#[test]
fn c_four_threads_infer_while_another_switches() {
    let out = stdout_of(&run(&["threads"], &model_dir()));
    assert!(out.contains("threads ok"), "{out}");
}

#[test]
fn c_program_runs_clean_under_valgrind() {
    let Some(valgrind) = oats_testkit::which("valgrind") else {
        oats_testkit::tool_missing("valgrind: the C ABI's memory checks did not run");
        return;
    };
    let f = fixture();
    for (dir, args) in [
        (model_dir(), vec!["errors"]),
        (model_dir(), vec!["classify", "0.15", "0.5"]),
        (exits_dir(), vec!["exits", "l1-w0.5", "2.3", "2.4"]),
    ] {
        let o = Command::new(&valgrind)
            .env_remove("LD_LIBRARY_PATH") // as in `run`: this build's liboats.so
            .args([
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite,indirect",
                "--show-leak-kinds=definite,indirect",
            ])
            .arg(&f.program)
            .arg(args[0])
            .arg(&dir)
            .arg(&f.images)
            .arg(EXAMPLES.len().to_string())
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("valgrind: {e}"));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "valgrind {args:?}: exit {:?}\n{err}",
            o.status.code()
        );
        assert!(
            err.contains("ERROR SUMMARY: 0 errors"),
            "valgrind {args:?}:\n{err}"
        );
    }
}
