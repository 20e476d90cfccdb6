//! Status codes, the runtime's errors mapped onto them, and the per-thread last-error message.

use std::cell::RefCell;

use oats_runtime::RuntimeError;

/// What a call did. `OATS_STATUS_OK` is 0; every other value has a message
/// (`oats_last_error`). The kinds mirror the runtime's errors, grouped by what a
/// caller does about them.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OatsStatus {
    /// Success.
    Ok = 0,
    /// A pointer argument that must not be NULL was NULL.
    NullPointer = 1,
    /// An argument out of its range: λ NaN or outside the trained range, a width not
    /// trained, an unknown backend or objective, a bad option, an oversized batch.
    InvalidArgument = 2,
    /// A caller buffer is too small; the size needed was reported.
    BufferTooSmall = 3,
    /// The input's shape is not the model's (C, H, W), or the batch is empty.
    Shape = 4,
    /// The input holds NaN or an infinity.
    NonFinite = 5,
    /// A file could not be read (missing, not a regular file, too large, not found among the
    /// in-memory files).
    Io = 6,
    /// A file is not what the manifest says: sha256 mismatch, a path leaving the export, a
    /// graph or package refused by the checks, a package that disagrees with the manifest.
    Integrity = 7,
    /// The manifest cannot be parsed, is invalid, or has an unsupported schema version.
    Manifest = 8,
    /// No configuration matches the id or (λ, width) asked for.
    NoSuchConfig = 9,
    /// No configuration satisfies the policy's constraints.
    NoneQualifies = 10,
    /// The backend asked for is not available (not built in, no library, no CUDA device), or
    /// a derived configuration is over the cache budget.
    Unavailable = 11,
    /// The engine failed to load or run a graph.
    Engine = 12,
    /// An internal error (a panic caught at the boundary): please report it.
    Panic = 13,
    /// Any other error of the runtime (the message says which).
    Other = 14,
}

/// A failed call: its status and message.
pub(crate) struct Failure {
    pub status: OatsStatus,
    pub message: String,
}

impl Failure {
    pub fn null(what: &str) -> Self {
        Failure {
            status: OatsStatus::NullPointer,
            message: format!("{what} is NULL"),
        }
    }

    pub fn invalid(message: String) -> Self {
        Failure {
            status: OatsStatus::InvalidArgument,
            message,
        }
    }

    pub fn too_small(message: String) -> Self {
        Failure {
            status: OatsStatus::BufferTooSmall,
            message,
        }
    }
}

impl From<RuntimeError> for Failure {
    fn from(e: RuntimeError) -> Self {
        use oats_runtime::ErrorKind as K;
        let status = match e.kind() {
            K::InvalidArgument => OatsStatus::InvalidArgument,
            K::Shape => OatsStatus::Shape,
            K::NonFinite => OatsStatus::NonFinite,
            K::Read => OatsStatus::Io,
            K::Integrity => OatsStatus::Integrity,
            K::Manifest => OatsStatus::Manifest,
            K::NoSuchConfig => OatsStatus::NoSuchConfig,
            K::NoneQualifies => OatsStatus::NoneQualifies,
            K::Unavailable => OatsStatus::Unavailable,
            K::Engine => OatsStatus::Engine,
            _ => OatsStatus::Other,
        };
        Failure {
            status,
            message: oats_io::error_chain(&e),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records the message of this thread's last call (`None`: it succeeded).
pub(crate) fn set_last_error(message: Option<String>) {
    LAST_ERROR.with(|m| *m.borrow_mut() = message);
}

/// Runs `f` on this thread's last message.
pub(crate) fn with_last_error<T>(f: impl FnOnce(Option<&str>) -> T) -> T {
    LAST_ERROR.with(|m| f(m.borrow().as_deref()))
}
