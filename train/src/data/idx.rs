//! IDX files (MNIST / Fashion-MNIST), plain or gzip-compressed.
//!
//! Format: big-endian `u32` magic (`0x0000_08DD`: `08` = unsigned bytes, `DD` = number
//! of dimensions), then one big-endian `u32` per dimension, then the bytes.
//! Images are `0x803` (n, rows, cols), labels `0x801` (n).
//!
//! For each file `NAME` the plain `NAME` is used if it exists, else `NAME.gz`: when
//! both exist they hold the same bytes (torchvision keeps both) and the plain one is
//! faster to read.

use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::decode::{bytes_to_unit, convert_labels};
use super::error::{io_err, malformed, too_large};
use super::split::train_val;
use super::{DataError, Dataset, DatasetKind, Split};
use crate::limits::{open_regular, MAX_DATASET_VALUES, MAX_DATA_FILE_BYTES};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

pub(super) const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

pub(super) fn load(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let prefix = if split == Split::Test {
        "t10k"
    } else {
        "train"
    };
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let ds = read_pair(&images_path, &labels_path)?;
    train_val(ds, DatasetKind::FashionMnist, split, &images_path)
}

/// `dir/name` if it exists, else `dir/name.gz`. Whatever exists is returned even if it is
/// not a regular file, so that reading it names it as a FIFO or device rather than missing.
fn find(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let plain = dir.join(name);
    if plain.exists() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        return Ok(gz);
    }
    Err(DataError::Missing {
        path: plain,
        what: format!("neither {name} nor {name}.gz exists"),
    })
}

fn read_pair(images_path: &Path, labels_path: &Path) -> Result<Dataset, DataError> {
    let (idims, pixels) = read_idx(images_path, IMAGES_MAGIC)?;
    let (ldims, raw_labels) = read_idx(labels_path, LABELS_MAGIC)?;
    let (n, rows, cols) = (idims[0], idims[1], idims[2]);
    if ldims[0] != n {
        return Err(DataError::CountMismatch {
            images_path: images_path.to_path_buf(),
            labels_path: labels_path.to_path_buf(),
            images: n,
            labels: ldims[0],
        });
    }
    if n == 0 {
        return Err(DataError::Empty {
            path: images_path.to_path_buf(),
        });
    }
    if rows == 0 || cols == 0 {
        return Err(malformed(images_path, format!("images are {rows}×{cols}")));
    }
    let labels = convert_labels(labels_path, &raw_labels, "0..=9", |v| {
        (0..10).contains(&v).then_some(v)
    })?;
    Ok(Dataset {
        images: bytes_to_unit(images_path, &pixels)?,
        labels,
        channels: 1,
        height: rows,
        width: cols,
        class_names: FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}

/// Reads one IDX file of unsigned bytes with the given magic (which fixes the number
/// of dimensions); returns the dimensions and the data bytes.
///
/// Only a regular file is read (a FIFO or device is an error, not a hang). The header's
/// size is checked against the file's (plain files) and against [`MAX_DATASET_VALUES`]
/// before anything is allocated for the data, which is then streamed into a buffer
/// bounded by the size the header announces: a corrupt header (e.g. 4·10⁹ images) ends
/// in [`DataError::Truncated`] or [`DataError::TooLarge`], and a gzip bomb inflates no
/// further than the header's size.
fn read_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let (file, file_len) = open_regular(path, MAX_DATA_FILE_BYTES).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => DataError::Missing {
            path: path.to_path_buf(),
            what: "file does not exist".into(),
        },
        _ => io_err(path)(e),
    })?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    let mut r: Box<dyn Read> = if gz {
        Box::new(GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let ndims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    let mut header = Vec::with_capacity(header_len);
    (&mut r)
        .take(header_len as u64)
        .read_to_end(&mut header)
        .map_err(io_err(path))?;
    if header.len() >= 4 {
        let found = be_u32(&header[0..4]);
        if found != magic {
            return Err(DataError::BadMagic {
                path: path.to_path_buf(),
                found,
                expected: magic,
            });
        }
    }
    if header.len() < header_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: format!("an IDX header with {ndims} dimension(s) needs {header_len} bytes"),
            expected_bytes: header_len as u64,
            actual_bytes: header.len() as u64,
        });
    }
    let dims: Vec<usize> = header[4..]
        .chunks_exact(4)
        .map(|c| be_u32(c) as usize)
        .collect();
    // u32 dims: at most 3 factors of < 2^32 -> may overflow u64, so check.
    let payload = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let what = if ndims == 3 {
        format!("header says {} images of {}×{}", dims[0], dims[1], dims[2])
    } else {
        format!("header says {} labels", dims[0])
    };
    let Some(payload) = payload.filter(|&p| p <= usize::MAX as u64 / 4) else {
        return Err(malformed(path, format!("{what}: absurd size")));
    };
    let expected_bytes = header_len as u64 + payload;
    // Plain files: know the size up front, so reject before reading anything.
    let known_len = (!gz).then_some(file_len);
    let truncated = |actual: u64| DataError::Truncated {
        path: path.to_path_buf(),
        what: if gz {
            format!("{what}, decompressed")
        } else {
            what.clone()
        },
        expected_bytes,
        actual_bytes: actual,
    };
    if let Some(len) = known_len {
        if len < expected_bytes {
            return Err(truncated(len));
        }
    }
    if payload > MAX_DATASET_VALUES {
        return Err(too_large(
            path,
            format!("{what} ({payload} pixel bytes)"),
            format!("{MAX_DATASET_VALUES} values per split"),
        ));
    }
    let mut data = Vec::new();
    data.try_reserve_exact(if known_len.is_some() {
        payload as usize
    } else {
        payload.min(1 << 20) as usize
    })
    .map_err(|e| io_err(path)(io::Error::new(io::ErrorKind::OutOfMemory, e)))?;
    r.take(payload + 1)
        .read_to_end(&mut data)
        .map_err(io_err(path))?;
    let got = data.len() as u64;
    if got < payload {
        return Err(truncated(header_len as u64 + got));
    }
    if got > payload {
        return Err(malformed(
            path,
            format!("{what} ({expected_bytes} bytes) but the file is longer"),
        ));
    }
    Ok((dims, data))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Writes a 1-channel dataset as gzip-compressed IDX image + label files (the
/// MNIST `.gz` distribution format), e.g. to bundle a small Fashion-MNIST subset that
/// [`load`](super::load) reads back. Pixels are quantised as `round(x·255)`, clamped to
/// `0..=255` (so `x = b/255` round-trips exactly); labels must be in `0..=255`.
pub fn write_idx_gz(
    images: &Dataset,
    images_path: &Path,
    labels_path: &Path,
) -> Result<(), DataError> {
    let ds = images;
    if ds.channels != 1 {
        return Err(DataError::Unsupported {
            path: images_path.to_path_buf(),
            reason: format!("IDX images have 1 channel, dataset has {}", ds.channels),
        });
    }
    let dim = |v: usize, what: &str| {
        u32::try_from(v).map_err(|_| {
            malformed(
                images_path,
                format!("{what} {v} does not fit the IDX u32 header"),
            )
        })
    };
    let (n, h, w) = (
        dim(ds.len(), "count")?,
        dim(ds.height, "height")?,
        dim(ds.width, "width")?,
    );
    if ds.images.len() != ds.len() * ds.image_len() {
        return Err(malformed(
            images_path,
            format!(
                "dataset has {} values, expected {} images × {}",
                ds.images.len(),
                ds.len(),
                ds.image_len()
            ),
        ));
    }
    let labels: Vec<u8> = ds
        .labels
        .iter()
        .enumerate()
        .map(|(index, &l)| {
            u8::try_from(l).map_err(|_| DataError::BadLabel {
                path: labels_path.to_path_buf(),
                index,
                label: l,
                expected: "0..=255 for IDX".into(),
            })
        })
        .collect::<Result<_, _>>()?;
    let pixels: Vec<u8> = ds
        .images
        .iter()
        .map(|&x| (x * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();

    let mut header = IMAGES_MAGIC.to_be_bytes().to_vec();
    for d in [n, h, w] {
        header.extend_from_slice(&d.to_be_bytes());
    }
    write_gz(images_path, &header, &pixels)?;
    let mut header = LABELS_MAGIC.to_be_bytes().to_vec();
    header.extend_from_slice(&n.to_be_bytes());
    write_gz(labels_path, &header, &labels)
}

/// Compressed in memory, then written atomically (`oats_io::write_atomic`): a planted symlink
/// at `path` is replaced, not written through, and a failed write keeps the old file.
fn write_gz(path: &Path, header: &[u8], data: &[u8]) -> Result<(), DataError> {
    let compress = || -> io::Result<Vec<u8>> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::best());
        enc.write_all(header)?;
        enc.write_all(data)?;
        enc.finish()
    };
    let bytes = compress().map_err(io_err(path))?;
    oats_io::write_atomic(path, &bytes).map_err(|e| io_err(path)(e.source))
}

#[cfg(test)]
mod tests {
    use super::super::load as load_any;
    use super::*;
    use std::fs;

    pub(crate) fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Pixel (i, r, c) of the test images.
    fn px(i: usize, r: usize, c: usize) -> u8 {
        ((i * 31 + r * 7 + c * 3) % 256) as u8
    }

    /// Writes `n` 28×28 train images (label i%10) and 3 test images.
    fn write_fixture(dir: &Path, n: usize, compress: bool) {
        for (prefix, count) in [("train", n), ("t10k", 3)] {
            let pixels: Vec<u8> = (0..count)
                .flat_map(|i| (0..28 * 28).map(move |k| px(i, k / 28, k % 28)))
                .collect();
            let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
            let files = [
                (
                    format!("{prefix}-images-idx3-ubyte"),
                    idx_bytes(IMAGES_MAGIC, &[count as u32, 28, 28], &pixels),
                ),
                (
                    format!("{prefix}-labels-idx1-ubyte"),
                    idx_bytes(LABELS_MAGIC, &[count as u32], &labels),
                ),
            ];
            for (name, bytes) in files {
                if compress {
                    fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap();
                } else {
                    fs::write(dir.join(name), bytes).unwrap();
                }
            }
        }
    }

    fn check_round_trip(compress: bool) {
        let tmp = tempfile::tempdir().unwrap();
        write_fixture(tmp.path(), 12, compress);
        let train = load_any(DatasetKind::FashionMnist, tmp.path(), Split::Train, None).unwrap();
        let val = load_any(DatasetKind::FashionMnist, tmp.path(), Split::Val, None).unwrap();
        let test = load_any(DatasetKind::FashionMnist, tmp.path(), Split::Test, None).unwrap();
        assert_eq!((train.len(), val.len(), test.len()), (10, 2, 3));
        assert_eq!((train.channels, train.height, train.width), (1, 28, 28));
        assert_eq!(train.images.len(), 10 * 784);
        assert_eq!(train.class_names[9], "Ankle boot");
        assert_eq!(train.labels, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(val.labels, vec![0, 1]); // samples 10 and 11
                                            // Image 3, row 5, col 17 of Train; image 11, row 27, col 0 (Val index 1).
        assert_eq!(
            train.images[3 * 784 + 5 * 28 + 17],
            px(3, 5, 17) as f32 / 255.0
        );
        assert_eq!(val.images[784 + 27 * 28], px(11, 27, 0) as f32 / 255.0);
        assert_eq!(test.images[2 * 784 + 28 + 1], px(2, 1, 1) as f32 / 255.0);
        let limited =
            load_any(DatasetKind::FashionMnist, tmp.path(), Split::Train, Some(4)).unwrap();
        assert_eq!(limited, train.range(0..4));
    }

    #[test]
    fn idx_plain_round_trip() {
        check_round_trip(false);
    }

    #[test]
    fn idx_gz_round_trip() {
        check_round_trip(true);
    }

    #[test]
    fn idx_prefers_plain_over_gz() {
        let tmp = tempfile::tempdir().unwrap();
        write_fixture(tmp.path(), 12, false);
        // A corrupt .gz next to the plain file must be ignored.
        fs::write(tmp.path().join("train-images-idx3-ubyte.gz"), b"junk").unwrap();
        assert_eq!(
            load_any(DatasetKind::FashionMnist, tmp.path(), Split::Train, None)
                .unwrap()
                .len(),
            10
        );
    }

    #[test]
    fn idx_truncated_names_file() {
        for compress in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            write_fixture(tmp.path(), 12, false);
            let name = "train-images-idx3-ubyte";
            let full = fs::read(tmp.path().join(name)).unwrap();
            fs::remove_file(tmp.path().join(name)).unwrap();
            let cut = &full[..1000];
            let file = if compress {
                fs::write(tmp.path().join(format!("{name}.gz")), gz(cut)).unwrap();
                format!("{name}.gz")
            } else {
                fs::write(tmp.path().join(name), cut).unwrap();
                name.to_string()
            };
            let e =
                load_any(DatasetKind::FashionMnist, tmp.path(), Split::Train, None).unwrap_err();
            let msg = e.to_string();
            match e {
                DataError::Truncated {
                    path,
                    expected_bytes,
                    actual_bytes,
                    ..
                } => {
                    assert!(path.ends_with(&file));
                    assert_eq!((expected_bytes, actual_bytes), (16 + 12 * 784, 1000));
                }
                other => panic!("expected Truncated, got {other}"),
            }
            assert!(
                msg.contains(&file)
                    && msg.contains("12 images of 28×28")
                    && msg.contains("1000 bytes"),
                "{msg}"
            );
        }
    }

    #[test]
    fn idx_bad_magic() {
        let tmp = tempfile::tempdir().unwrap();
        write_fixture(tmp.path(), 12, false);
        // Swap: a labels file where the images file should be.
        fs::copy(
            tmp.path().join("train-labels-idx1-ubyte"),
            tmp.path().join("train-images-idx3-ubyte"),
        )
        .unwrap();
        let e = load_any(DatasetKind::FashionMnist, tmp.path(), Split::Train, None).unwrap_err();
        assert!(
            matches!(&e, DataError::BadMagic { found: 0x801, expected: 0x803, path } if path.ends_with("train-images-idx3-ubyte")),
            "{e}"
        );
    }

    #[test]
    fn idx_count_mismatch_and_bad_label() {
        let tmp = tempfile::tempdir().unwrap();
        write_fixture(tmp.path(), 12, false);
        let lp = tmp.path().join("train-labels-idx1-ubyte");
        fs::write(&lp, idx_bytes(LABELS_MAGIC, &[11], &[0; 11])).unwrap();
        let e = load_any(DatasetKind::FashionMnist, tmp.path(), Split::Train, None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::CountMismatch {
                    images: 12,
                    labels: 11,
                    ..
                }
            ),
            "{e}"
        );
        let mut labels = vec![0u8; 12];
        labels[7] = 10;
        fs::write(&lp, idx_bytes(LABELS_MAGIC, &[12], &labels)).unwrap();
        let e = load_any(DatasetKind::FashionMnist, tmp.path(), Split::Train, None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::BadLabel {
                    index: 7,
                    label: 10,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn idx_huge_header_errors_without_allocating() {
        let tmp = tempfile::tempdir().unwrap();
        write_fixture(tmp.path(), 12, false);
        // 4.29e9 images of 28×28 (3.4e12 bytes): must fail fast, not allocate.
        let bytes = idx_bytes(IMAGES_MAGIC, &[u32::MAX, 28, 28], &[1, 2, 3]);
        fs::write(tmp.path().join("train-images-idx3-ubyte"), &bytes).unwrap();
        let e = load_any(DatasetKind::FashionMnist, tmp.path(), Split::Train, None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Truncated {
                    actual_bytes: 19,
                    expected_bytes: 3_367_254_359_296,
                    ..
                }
            ),
            "{e}"
        );
        // Dimensions whose product overflows.
        let bytes = idx_bytes(IMAGES_MAGIC, &[u32::MAX; 3], &[1, 2, 3]);
        fs::write(tmp.path().join("train-images-idx3-ubyte"), &bytes).unwrap();
        let e = load_any(DatasetKind::FashionMnist, tmp.path(), Split::Train, None).unwrap_err();
        assert!(matches!(e, DataError::Malformed { .. }), "{e}");
        // Same through gzip (size unknown up front): over the limit, refused before reading.
        fs::remove_file(tmp.path().join("train-images-idx3-ubyte")).unwrap();
        let bytes = idx_bytes(IMAGES_MAGIC, &[u32::MAX, 28, 28], &[1, 2, 3]);
        fs::write(tmp.path().join("train-images-idx3-ubyte.gz"), gz(&bytes)).unwrap();
        let e = load_any(DatasetKind::FashionMnist, tmp.path(), Split::Train, None).unwrap_err();
        assert!(
            matches!(e, DataError::TooLarge { .. }) && e.to_string().contains("4294967295 images"),
            "{e}"
        );
        // Within the limit but more than the gzip stream holds: streamed, bounded by real data.
        let bytes = idx_bytes(IMAGES_MAGIC, &[100_000, 28, 28], &[1, 2, 3]);
        fs::write(tmp.path().join("train-images-idx3-ubyte.gz"), gz(&bytes)).unwrap();
        let e = load_any(DatasetKind::FashionMnist, tmp.path(), Split::Train, None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Truncated {
                    actual_bytes: 19,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn idx_missing_file() {
        let tmp = tempfile::tempdir().unwrap();
        let e = load_any(DatasetKind::FashionMnist, tmp.path(), Split::Test, None).unwrap_err();
        assert!(e.to_string().contains("t10k-images-idx3-ubyte.gz"), "{e}");
    }

    #[test]
    fn write_idx_gz_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        write_fixture(tmp.path(), 12, false);
        let train = load_any(DatasetKind::FashionMnist, tmp.path(), Split::Train, None).unwrap();
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        let sub = train.subset(&[9, 2, 4, 4, 0, 1]);
        write_idx_gz(
            &sub,
            &out.join("train-images-idx3-ubyte.gz"),
            &out.join("train-labels-idx1-ubyte.gz"),
        )
        .unwrap();
        let (dims, _) = read_idx(&out.join("train-images-idx3-ubyte.gz"), IMAGES_MAGIC).unwrap();
        assert_eq!(dims, vec![6, 28, 28]);
        let back = read_pair(
            &out.join("train-images-idx3-ubyte.gz"),
            &out.join("train-labels-idx1-ubyte.gz"),
        )
        .unwrap();
        assert_eq!(back, sub); // exact: b/255 quantises back to b
        let mut rgb = sub.clone();
        rgb.channels = 3;
        assert!(matches!(
            write_idx_gz(&rgb, &out.join("a.gz"), &out.join("b.gz")),
            Err(DataError::Unsupported { .. })
        ));
    }
}
