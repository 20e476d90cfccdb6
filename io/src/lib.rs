//! File I/O every oats crate shares: atomic writes, locks, replacing only what oats wrote, and
//! sha256. No tch, no tract, so that the trainer (tch) and the runtime (tract, never libtorch)
//! can both depend on it.
//!
//! One implementation of each: [`write_atomic`] for checkpoints, manifests, reports and plots;
//! [`FileLock`] for outputs that several processes may write ([`lock`]); [`ensure_replaceable`]
//! and [`swap_dir`] so that an output path only ever replaces an earlier output of the same
//! tool ([`replace`]); [`sha256_hex`] and [`sha256_file`] for the hashes that manifests and
//! reports store; [`outln!`] / [`out!`] for what the binaries print.

pub mod lock;
pub mod replace;

pub use lock::FileLock;
pub use replace::{ensure_replaceable, swap_dir, Swapped};

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A file operation that failed: the path it was on and the operating system's error.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct Error {
    /// The file or directory the failed operation was on.
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl Error {
    pub(crate) fn new(path: &Path, source: io::Error) -> Error {
        Error {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes formatted text to standard output and returns an error instead of panicking.
///
/// `println!` panics when standard output is a closed pipe (`oats-run … | head -1`) or a full
/// disk (`> /dev/full`); the binaries print through [`outln!`] / [`out!`] and end with a typed
/// error (path `<stdout>`) instead of a panic banner.
pub fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) -> Result<()> {
    let mut out = io::stdout().lock();
    let r = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    r.map_err(|e| Error::new(Path::new("<stdout>"), e))
}

/// An error and its sources as one line, each message once: "opening X: reading Y: No such
/// file or directory".
///
/// The crates' errors name their source in their own message (so that `{}` alone is useful)
/// and also return it from `source()`; printing the whole chain (anyhow's `{:#}`) would
/// repeat it. The binaries print their errors through this instead.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// Ends a binary whose work failed: `error: <the chain, each message once>` on stderr, exit
/// status 1. No panic banner, no backtrace (a user error is not a crash).
pub fn exit_with(e: &(dyn std::error::Error + 'static)) -> ! {
    eprintln!("error: {}", error_chain(e));
    std::process::exit(1)
}

/// `println!` that returns [`Result`] instead of panicking on a closed pipe or a full disk.
#[macro_export]
macro_rules! outln {
    () => { $crate::write_stdout(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*), true) };
}

/// `print!` that returns [`Result`] instead of panicking on a closed pipe or a full disk.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*), false) };
}

/// Writes `bytes` to `path` atomically: readers see the old file or the new one, never a part
/// of it, and a failed write leaves the old file intact.
///
/// The bytes go to a temporary file created fresh (exclusive create, random name) in the same
/// directory, so a planted file or symlink is never followed. It is synced, renamed over `path`
/// (a symlink at `path` is replaced, not written through), and the directory is synced so that
/// the rename survives a crash. Missing parent directories are created.
///
/// Mode (Unix): the new file keeps the permission bits of the regular file it replaces, and is
/// otherwise created like any new file (0666 less the umask, 0644 under the usual umask 022).
/// A temporary file's own default (0600) would silently make every rewritten manifest, report or
/// checkpoint unreadable to the group that could read it before (a shared export directory, a
/// web server serving the plots), and a user who wants private files says so with the umask.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| {
        Error::new(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::new(dir, e))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let old_mode = replaced_mode(path);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    if old_mode.is_none() {
        // A new file: the kernel applies the umask to this, as for any file a program creates.
        ask_new_file_mode(&mut builder);
    }
    // Dropped (and so deleted) on every error path below.
    let mut tmp = builder.tempfile_in(dir).map_err(|e| Error::new(dir, e))?;
    if let Some(mode) = old_mode {
        set_mode(tmp.as_file(), mode).map_err(|e| Error::new(tmp.path(), e))?;
    }
    tmp.write_all(bytes)
        .map_err(|e| Error::new(tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::new(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| Error::new(path, e.error))?;
    sync_dir(dir)
}

/// The permission bits of the regular file at `path` (not followed through a symlink), which
/// its replacement keeps.
#[cfg(unix)]
fn replaced_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path).ok()?;
    // Permission bits only: a replacement never inherits set-uid, set-gid or sticky bits.
    meta.is_file().then(|| meta.permissions().mode() & 0o777)
}

#[cfg(not(unix))]
fn replaced_mode(_path: &Path) -> Option<u32> {
    None
}

/// Asks for what `File::create` asks for (0666); the kernel takes the umask off.
#[cfg(unix)]
fn ask_new_file_mode(builder: &mut tempfile::Builder<'_, '_>) {
    use std::os::unix::fs::PermissionsExt;
    builder.permissions(std::fs::Permissions::from_mode(0o666));
}

/// Only Unix has modes; elsewhere the temporary file's default is a normal file.
#[cfg(not(unix))]
fn ask_new_file_mode(_builder: &mut tempfile::Builder<'_, '_>) {}

#[cfg(unix)]
fn set_mode(f: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_f: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    use io::ErrorKind::{InvalidInput, Unsupported};
    match File::open(dir).and_then(|d| d.sync_all()) {
        // Some file systems cannot sync a directory; the rename itself has happened.
        Err(e) if matches!(e.kind(), InvalidInput | Unsupported) => Ok(()),
        r => r.map_err(|e| Error::new(dir, e)),
    }
}

/// Makes a rename in `dir` durable (only Unix can sync a directory).
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// Lower-case hex sha256 of `bytes`, as manifests and reports store it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(Sha256::digest(bytes).as_slice())
}

/// Whether `s` has the form of a sha256 in hex (64 hexadecimal characters): what a manifest
/// or a checkpoint record must hold before it is compared with a computed [`sha256_hex`].
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Lower-case hex sha256 of a file's content, read in blocks.
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let mut f = File::open(path).map_err(|e| Error::new(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::new(path, e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex(hasher.finalize().as_slice()))
}

fn hex(digest: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * digest.len());
    for &b in digest {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_says_each_message_once() {
        let inner = Error::new(
            Path::new("out/x.yaml"),
            io::Error::new(io::ErrorKind::PermissionDenied, "denied"),
        );
        // The io::Error is both in the message and the source: said once.
        assert_eq!(error_chain(&inner), "out/x.yaml: denied");
        #[derive(Debug, thiserror::Error)]
        #[error("saving the report")]
        struct Outer(#[source] Error);
        assert_eq!(
            error_chain(&Outer(inner)),
            "saving the report: out/x.yaml: denied"
        );
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn sha256_file_matches_the_bytes() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f.bin");
        // Several read blocks and a partial one.
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        write_atomic(&p, &bytes)?;
        assert_eq!(sha256_file(&p)?, sha256_hex(&bytes));
        Ok(())
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub").join("a.yaml");
        write_atomic(&p, b"old")?;
        write_atomic(&p, b"new")?;
        assert_eq!(std::fs::read(&p).expect("read"), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.yaml")]);
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_at_the_path_is_replaced_not_followed() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").expect("write");
        let p = dir.path().join("out");
        std::os::unix::fs::symlink(&victim, &p).expect("symlink");
        write_atomic(&p, b"new")?;
        assert_eq!(std::fs::read(&victim).expect("read"), b"keep");
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        assert!(!meta.file_type().is_symlink());
        assert_eq!(std::fs::read(&p).expect("read"), b"new");
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn a_new_file_gets_the_mode_of_any_new_file() -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("plain");
        File::create(&plain).expect("create");
        let p = dir.path().join("atomic");
        write_atomic(&p, b"x")?;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(
            mode(&p),
            mode(&plain),
            "0666 less the umask, as File::create"
        );
        Ok(())
    }

    #[test]
    fn a_path_without_a_file_name_is_an_error() {
        let err = write_atomic(Path::new("/"), b"x").expect_err("no file name");
        assert_eq!(err.source.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(err.path, Path::new("/"));
    }

    #[test]
    fn a_missing_file_keeps_its_path_and_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("absent");
        let err = sha256_file(&p).expect_err("absent");
        assert_eq!(err.path, p);
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
        assert!(std::error::Error::source(&err).is_some());
    }
}
