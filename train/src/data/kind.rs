//! [`DatasetKind`]: which on-disk format [`load`](super::load) reads, its name (as written
//! in configs and manifests) and its reference train/val split.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::DataError;

/// Which on-disk dataset format [`load`](super::load) reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// IDX files (`train-images-idx3-ubyte` etc., plain or `.gz`; MNIST works too).
    FashionMnist,
    /// CIFAR-10 "binary version" (`data_batch_K.bin`, `test_batch.bin`).
    Cifar10,
    /// SVHN cropped digits, `train_32x32.mat` / `test_32x32.mat` (MAT level 5).
    Svhn,
    /// STL-10 binary (`train_X.bin`, `train_y.bin`, `test_X.bin`, `test_y.bin`).
    Stl10,
    /// `dir/<class>/<image>` folders, decoded with the `image` crate.
    ///
    /// * If `dir` has a `train/`, `val/` or `test/` sub-folder ("split layout"), each
    ///   split is read from its folder, which holds the class folders. Without `val/`,
    ///   Val is every 10th file (per class, by file name) of `train/` and Train the
    ///   rest. Without `test/`, Test is an error. Class indices come from `train/`.
    /// * Otherwise the class folders are directly in `dir` ("flat layout"); Train is
    ///   all files except every 10th of each class (10th, 20th, … by sorted name),
    ///   Val is every 10th file, and there is no Test split (error), since silently
    ///   testing on training images would be worse than failing.
    ///
    /// Classes are sorted by folder name, files by file name; hidden entries and files
    /// whose extension is not a readable image format are skipped. Images are converted
    /// to RGB (alpha dropped) unless every image of the split is grayscale (then 1
    /// channel); all images of a split must have the same size.
    ImageFolder,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 5] = [
        DatasetKind::FashionMnist,
        DatasetKind::Cifar10,
        DatasetKind::Svhn,
        DatasetKind::Stl10,
        DatasetKind::ImageFolder,
    ];

    fn name(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Svhn => "svhn",
            DatasetKind::Stl10 => "stl10",
            DatasetKind::ImageFolder => "image-folder",
        }
    }

    /// Size of the Val split carved from the end of a training file of `n` samples
    /// (Train gets the other `n - val_len(n)`), reproducing the reference split for
    /// the full files and keeping the same fraction for smaller ones:
    ///
    /// * Fashion-MNIST: ⌊n/6⌋ (60,000 → 50,000 / 10,000).
    /// * CIFAR-10: ⌊n/10⌋ (50,000 → 45,000 / 5,000).
    /// * SVHN: min(5,000, ⌊n/14⌋) (73,257 → 68,257 / 5,000).
    /// * STL-10: ⌊n/10⌋ (5,000 → 4,500 / 500). The reference trains on all 5,000, but
    ///   then has no honest validation set; we hold out 10 % instead.
    /// * Image folder: not used (every 10th file per class, see [`DatasetKind::ImageFolder`]).
    pub fn val_len(self, n: usize) -> usize {
        match self {
            DatasetKind::FashionMnist => n / 6,
            DatasetKind::Cifar10 | DatasetKind::Stl10 | DatasetKind::ImageFolder => n / 10,
            DatasetKind::Svhn => (n / 14).min(5000),
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;

    /// Accepts the [`Display`](fmt::Display) names: `fashion-mnist`, `cifar10`, `svhn`,
    /// `stl10`, `image-folder` (ASCII case-insensitive; `_` may replace `-`).
    fn from_str(s: &str) -> Result<Self, DataError> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        DatasetKind::ALL
            .into_iter()
            .find(|k| k.name() == norm)
            .ok_or_else(|| DataError::UnknownName {
                what: "dataset kind",
                input: s.to_string(),
                expected: "fashion-mnist, cifar10, svhn, stl10, image-folder",
            })
    }
}

/// Written as its [`Display`](fmt::Display) name (`fashion-mnist`, …), the spelling configs
/// and checkpoint metadata use.
impl Serialize for DatasetKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// Read with [`FromStr`], so a config accepts what `parse` accepts and an unknown kind is
/// reported with the value and the accepted names.
impl<'de> Deserialize<'de> for DatasetKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Compares with a kind's name as other crates store it (e.g. the runtime manifest's
/// `training.dataset`, a `String` since the runtime does not depend on this crate).
impl PartialEq<str> for DatasetKind {
    fn eq(&self, other: &str) -> bool {
        self.name() == other
    }
}

impl PartialEq<String> for DatasetKind {
    fn eq(&self, other: &String) -> bool {
        self.name() == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        for k in DatasetKind::ALL {
            assert_eq!(k.to_string().parse::<DatasetKind>().unwrap(), k);
        }
        assert_eq!(
            "CIFAR10".parse::<DatasetKind>().unwrap(),
            DatasetKind::Cifar10
        );
        assert_eq!(
            "fashion_mnist".parse::<DatasetKind>().unwrap(),
            DatasetKind::FashionMnist
        );
        assert!("mnist2".parse::<DatasetKind>().is_err());
    }

    #[test]
    fn serde_uses_the_names() {
        for k in DatasetKind::ALL {
            let yaml = serde_yaml::to_string(&k).unwrap();
            assert_eq!(yaml.trim(), k.to_string());
            assert_eq!(serde_yaml::from_str::<DatasetKind>(&yaml).unwrap(), k);
        }
        let e = serde_yaml::from_str::<DatasetKind>("mnist-ish")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mnist-ish") && e.contains("fashion-mnist, cifar10"),
            "{e}"
        );
        let manifest_name = String::from("cifar10");
        assert!(DatasetKind::Svhn == *"svhn" && DatasetKind::Svhn != manifest_name);
    }
}
