//! [`Split`] (train / val / test) and how Train and Val are cut out of one training file.
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::{DataError, Dataset, DatasetKind};

/// Which part of a dataset to load; see the [`data`](super) module docs for the reference
/// splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        })
    }
}

impl FromStr for Split {
    type Err = DataError;

    /// `train`, `val` (or `validation`), `test` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" | "validation" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(DataError::UnknownName {
                what: "split",
                input: s.to_string(),
                expected: "train, val, test",
            }),
        }
    }
}

/// Cuts Train (the first `n - val`) or Val (the last `val`) out of a full training file.
/// `path` names the file for the error message.
pub(super) fn train_val(
    mut ds: Dataset,
    kind: DatasetKind,
    split: Split,
    path: &Path,
) -> Result<Dataset, DataError> {
    let n = ds.len();
    let val = kind.val_len(n);
    let r = match split {
        Split::Train => 0..n - val,
        Split::Val => n - val..n,
        Split::Test => return Ok(ds),
    };
    if r.is_empty() {
        return Err(DataError::EmptySplit {
            path: path.to_path_buf(),
            split,
            reason: format!("{n} training samples, {val} of them held out for val"),
        });
    }
    ds.keep_range(r);
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::super::dataset::tiny;
    use super::*;

    #[test]
    fn reference_split_sizes() {
        let cases = [
            (DatasetKind::FashionMnist, 60_000, 10_000),
            (DatasetKind::Cifar10, 50_000, 5_000),
            (DatasetKind::Svhn, 73_257, 5_000),
            (DatasetKind::Stl10, 5_000, 500),
            (DatasetKind::FashionMnist, 12, 2),
            (DatasetKind::Svhn, 28, 2),
        ];
        for (kind, n, val) in cases {
            assert_eq!(kind.val_len(n), val, "{kind} n={n}");
        }
        let d = train_val(
            tiny(12),
            DatasetKind::FashionMnist,
            Split::Val,
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(d.labels, vec![10, 11]);
        let d = train_val(
            tiny(12),
            DatasetKind::FashionMnist,
            Split::Train,
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(d.labels, (0..10).collect::<Vec<_>>());
        let e = train_val(
            tiny(5),
            DatasetKind::FashionMnist,
            Split::Val,
            Path::new("f.idx"),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                DataError::EmptySplit {
                    split: Split::Val,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn parse_and_display() {
        for s in [Split::Train, Split::Val, Split::Test] {
            assert_eq!(s.to_string().parse::<Split>().unwrap(), s);
        }
        let e = "dev".parse::<Split>().unwrap_err().to_string();
        assert!(
            e.contains("\"dev\"") && e.contains("train, val, test"),
            "{e}"
        );
    }
}
