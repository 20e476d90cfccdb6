//! What the oats crates' tests share, so each rule is written once: when a missing tool
//! fails a test, and the hostile environments the process-level tests run binaries in
//! (a closed pipe, a full disk, a FIFO). A dev-dependency only; no engine, no libtorch.
use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Command, Stdio};

/// The one rule for a check that needs a tool from outside Cargo (ONNX Runtime's library, the
/// venv's python with onnx): when it is missing the check is skipped with this note, except
/// under `OATS_REQUIRE_TOOLS=1` (exported by scripts/test.sh, i.e. `./oats test` and CI, right
/// after scripts/setup.sh installed everything), where a missing tool is a defect: it fails.
pub fn tool_missing(what: &str) {
    let fix = "`./oats test` installs it (scripts/setup.sh); by hand: \
               `bash scripts/setup.sh && source ~/.cache/oats/env.sh`";
    if std::env::var("OATS_REQUIRE_TOOLS").is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!("{what}; OATS_REQUIRE_TOOLS is set, so this fails instead of skipping. {fix}");
    }
    eprintln!("skipped: {what}. {fix} (under OATS_REQUIRE_TOOLS=1 this fails)");
}

/// A stdout whose reader is already gone: every write fails with EPIPE (`… | head -0`).
pub fn closed_pipe() -> Stdio {
    let (r, w) = std::io::pipe().expect("pipe");
    drop(r);
    Stdio::from(w)
}

/// A stdout on a full disk: every write fails with ENOSPC (`… > /dev/full`).
pub fn dev_full() -> Stdio {
    Stdio::from(
        OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full"),
    )
}

/// A FIFO at `path`: a reader that opens it blocks until a writer comes, which none will.
pub fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap_or_else(|e| panic!("mkfifo: {e}"))
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

/// A binary's stderr must hold no panic banner: hostile input ends in a typed error.
pub fn assert_no_panic_banner(stderr: &str) {
    assert!(!stderr.contains("panicked at"), "panic banner:\n{stderr}");
}

/// The executable `name` on `PATH`, if any: for tests that run a tool from outside Cargo
/// (javac, valgrind); a missing one goes through [`tool_missing`].
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The shared library `file` (e.g. `liboats.so`) that this test build made: cargo puts a
/// crate's cdylib beside the test binary (`target/<profile>/deps`) or one level up.
pub fn built_library(file: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let deps = exe
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent", exe.display()));
    [deps, deps.parent().unwrap_or(deps)]
        .iter()
        .map(|d| d.join(file))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no {file} beside {}", deps.display()))
}
