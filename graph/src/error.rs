//! Errors of the package and the lowering: which file, field, tensor or value, and why.
use std::path::PathBuf;

/// Longest piece of a package (a parse error's excerpt, a value) quoted in an error: enough
/// to recognise it, never a megabyte of hostile metadata echoed into a log.
const MAX_QUOTED_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Any other error, of the package read from `path`.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("{what} of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        bytes: u64,
        limit: u64,
    },
    /// Not a package of a format this crate reads (not safetensors, another format string,
    /// metadata missing or unparsable).
    #[error("not an oats package: {0}")]
    Format(String),
    /// A declared value breaks a rule of the format (a bound, a consistency rule).
    #[error("invalid package: {field} = {value}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
    /// A tensor that is missing, unexpected, of another dtype or shape, or holds values that
    /// are not allowed (NaN, a negative variance).
    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("λ = {value}: {reason}")]
    Lambda { value: f64, reason: String },
    #[error("width {value} is not one of the trained widths {available:?}")]
    Width { value: f64, available: Vec<f64> },
    #[error("no normalisation site named {name:?} (sites: {available})")]
    UnknownSite { name: String, available: String },
    /// Finite inputs whose arithmetic overflowed (e.g. weights near f32::MAX times a scale).
    #[error(
        "{what} is not finite at λ = {lambda}, width {width}: the package's values overflow f32"
    )]
    NonFinite {
        what: String,
        lambda: f64,
        width: f64,
    },
    /// A request the lowering cannot express (e.g. a folded graph of two λ).
    #[error("invalid request: {0}")]
    Request(String),
    #[error("cannot serialise the package: {0}")]
    Serialize(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            field: field.into(),
            value: clip(&value.to_string()),
            reason: reason.into(),
        }
    }

    pub(crate) fn tensor(name: &str, reason: impl Into<String>) -> Self {
        Error::Tensor {
            name: clip(name),
            reason: reason.into(),
        }
    }

    pub(crate) fn format(reason: impl std::fmt::Display) -> Self {
        Error::Format(clip(&reason.to_string()))
    }

    /// The same error, naming the file it came from.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        Error::File {
            path: path.into(),
            source: Box::new(self),
        }
    }
}

/// `s` cut to [`MAX_QUOTED_CHARS`] characters.
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_clipped() {
        let e = Error::invalid("name", "x".repeat(10_000), "too long");
        assert!(e.to_string().len() < 400, "{e}");
        assert_eq!(clip("short"), "short");
    }
}
