//! Hostile file-system cases for the shared writers (issue 12, classes 1 and 2): planted
//! symlinks, modes, locks between concurrent writers, directory swaps beside a user's files.
#![cfg(unix)]

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Barrier};

use oats_io::{ensure_replaceable, swap_dir, write_atomic, FileLock, Swapped};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn c2_atomic_planted_symlinks_at_temp_like_paths_are_not_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"keep").expect("write");
    let out = dir.path().join("manifest.yaml");
    // Every fixed temporary name a writer might have used beside its output.
    for name in [
        ".manifest.yaml.tmp",
        "manifest.yaml.tmp",
        "manifest.yaml.partial",
        ".manifest.yaml.000000.tmp",
        "manifest.yaml~",
    ] {
        symlink(&victim, dir.path().join(name)).expect("symlink");
    }
    for round in 0..20 {
        write_atomic(&out, format!("round {round}").as_bytes()).expect("write");
    }
    assert_eq!(std::fs::read(&victim).expect("read"), b"keep");
    assert_eq!(std::fs::read(&out).expect("read"), b"round 19");
    // Nothing left behind but the output and the planted links.
    let n = std::fs::read_dir(dir.path()).expect("list").count();
    assert_eq!(n, 1 + 1 + 5, "victim, output, five links");
}

#[test]
fn c2_atomic_rewrite_keeps_the_mode_of_the_file_it_replaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    for wanted in [0o600, 0o640, 0o644, 0o664] {
        let p = dir.path().join(format!("f{wanted:o}"));
        std::fs::write(&p, b"old").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(wanted)).expect("chmod");
        write_atomic(&p, b"new").expect("write");
        assert_eq!(mode(&p), wanted, "mode {wanted:o} kept");
        assert_eq!(std::fs::read(&p).expect("read"), b"new");
    }
}

#[test]
fn c2_atomic_new_file_is_not_more_private_than_a_normal_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain");
    std::fs::File::create(&plain).expect("create");
    let p = dir.path().join("new.yaml");
    write_atomic(&p, b"x").expect("write");
    assert_eq!(mode(&p), mode(&plain));
}

#[test]
fn c2_atomic_symlink_at_the_output_is_replaced_and_its_target_kept_with_its_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"keep").expect("write");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let p = dir.path().join("out");
    symlink(&victim, &p).expect("symlink");
    write_atomic(&p, b"new").expect("write");
    assert_eq!(std::fs::read(&victim).expect("read"), b"keep");
    assert_eq!(mode(&victim), 0o600);
    assert!(!std::fs::symlink_metadata(&p)
        .expect("stat")
        .file_type()
        .is_symlink());
}

/// Eight threads, each with its own open lock file (as eight processes would have), do 50
/// read-modify-writes of one counter file: with the lock held none is lost.
#[test]
fn c2_atomic_lock_serialises_read_modify_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = dir.path().join("counter");
    write_atomic(&counter, b"0").expect("write");
    let lock = dir.path().join(".oats.lock");
    let (threads, rounds) = (8, 50);
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (counter, lock, start) = (counter.clone(), lock.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..rounds {
                    let _held = FileLock::acquire(&lock).expect("lock");
                    let n: u64 = std::fs::read_to_string(&counter)
                        .expect("read")
                        .parse()
                        .expect("number");
                    std::thread::yield_now();
                    write_atomic(&counter, (n + 1).to_string().as_bytes()).expect("write");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let n: usize = std::fs::read_to_string(&counter)
        .expect("read")
        .parse()
        .expect("number");
    assert_eq!(n, threads * rounds);
}

#[test]
fn c2_atomic_a_held_lock_is_refused_to_a_second_try_and_a_fifo_is_not_a_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = dir.path().join(".oats.lock");
    let held = FileLock::acquire(&lock).expect("lock");
    assert!(FileLock::try_acquire(&lock).expect("try").is_none());
    drop(held);
    let fifo = dir.path().join("fifo.lock");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    let err = FileLock::acquire(&fifo).expect_err("a FIFO is not a lock file");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn c1_no_destroy_ensure_replaceable_names_what_is_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user = dir.path().join("eval.yaml");
    std::fs::write(&user, b"my notes").expect("write");
    let err = ensure_replaceable(&user, "an oats-train eval report", |b| {
        b.starts_with(b"checkpoint_sha256")
    })
    .expect_err("a user's file");
    let msg = err.to_string();
    assert!(msg.contains("eval.yaml"), "{msg}");
    assert!(msg.contains("not an oats-train eval report"), "{msg}");
    assert!(
        !msg.contains("my notes"),
        "the content is never echoed: {msg}"
    );
    assert_eq!(std::fs::read(&user).expect("read"), b"my notes");
    // A file too large to be a report is refused unread.
    let big = dir.path().join("big");
    let f = std::fs::File::create(&big).expect("create");
    f.set_len(oats_io::replace::MAX_RECOGNISED_BYTES + 1)
        .expect("truncate");
    ensure_replaceable(&big, "a report", |_| panic!("not read")).expect_err("too big");
}

#[test]
fn c1_no_destroy_swap_keeps_a_users_dir_old_and_dir_partial() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("export");
    for sibling in ["export.old", "export.partial"] {
        std::fs::create_dir(dir.path().join(sibling)).expect("mkdir");
        std::fs::write(dir.path().join(sibling).join("mine"), b"user").expect("write");
    }
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::write(out.join("v"), b"1").expect("write");
    let stage = tempfile::Builder::new()
        .prefix(".export.")
        .tempdir_in(dir.path())
        .expect("stage");
    let new = stage.path().join("export");
    std::fs::create_dir(&new).expect("mkdir");
    std::fs::write(new.join("v"), b"2").expect("write");
    let Swapped::Replaced { old } = swap_dir(&new, &out).expect("swap") else {
        panic!("an existing directory is replaced");
    };
    assert_eq!(std::fs::read(out.join("v")).expect("read"), b"2");
    assert_eq!(std::fs::read(old.join("v")).expect("read"), b"1");
    for sibling in ["export.old", "export.partial"] {
        assert_eq!(
            std::fs::read(dir.path().join(sibling).join("mine")).expect("sibling kept"),
            b"user"
        );
    }
}

/// While one thread swaps new trees into place again and again, readers never find the path
/// missing (Linux: renameat2 RENAME_EXCHANGE).
#[cfg(target_os = "linux")]
#[test]
fn c1_no_destroy_a_reader_never_sees_the_output_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    if !exchange_supported(dir.path()) {
        eprintln!(
            "skipped: this file system has no RENAME_EXCHANGE (swap_dir falls back to two renames)"
        );
        return;
    }
    let out = dir.path().join("export");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::write(out.join("manifest.yaml"), b"0").expect("write");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (out, done) = (out.clone(), done.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                assert!(
                    std::fs::symlink_metadata(out.join("manifest.yaml")).is_ok(),
                    "the output was missing after {reads} reads"
                );
                reads += 1;
            }
        })
    };
    for i in 1..=200 {
        let stage = tempfile::tempdir_in(dir.path()).expect("stage");
        let new = stage.path().join("export");
        std::fs::create_dir(&new).expect("mkdir");
        std::fs::write(new.join("manifest.yaml"), i.to_string()).expect("write");
        swap_dir(&new, &out).expect("swap");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().expect("reader saw the output every time");
    assert_eq!(
        std::fs::read_to_string(out.join("manifest.yaml")).expect("read"),
        "200"
    );
}

/// Whether the file system under `dir` swaps two directories atomically.
#[cfg(target_os = "linux")]
fn exchange_supported(dir: &Path) -> bool {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let (a, b) = (dir.join("probe-a"), dir.join("probe-b"));
    std::fs::create_dir(&a).expect("mkdir");
    std::fs::create_dir(&b).expect("mkdir");
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).expect("no NUL");
    let (ca, cb) = (c(&a), c(&b));
    // SAFETY: two valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    std::fs::remove_dir(&a).expect("rmdir");
    std::fs::remove_dir(&b).expect("rmdir");
    r == 0
}
