//! Bounds on every size and count that reaches an allocation or a loop, and the bounded read
//! every input file goes through. A hostile or corrupt file, config or flag is refused by
//! these before anything is allocated for it: a header announcing 10¹² images, a FIFO named
//! like a data file, a 1×20,000,000 PNG or `--batch 1000000000000` end as typed errors naming
//! the value and the limit, never as an abort, a hang or a week of compute.
//!
//! Each limit is far above what any real use of this trainer needs (the largest supported
//! data set split, SVHN's training file, holds 2.3·10⁸ pixel values; the largest checkpoint,
//! ResNet-34 OAT with its momentum buffers, is ≈ 270 MB), so none of them restricts a real run.
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Most `f32` values (images × C × H × W) one loaded split may hold: 2³¹ values = 8 GiB in
/// memory, ~9× the largest split of any supported data set. A header or folder that announces
/// more is corrupt or hostile, and is refused before the data is read.
pub const MAX_DATASET_VALUES: u64 = 1 << 31;

/// Most bytes of one data file (IDX, CIFAR-10/STL-10 binary, SVHN `.mat`, decompressed
/// included): twice [`MAX_DATASET_VALUES`] one-byte pixels, room for labels and headers.
pub const MAX_DATA_FILE_BYTES: u64 = 2 * MAX_DATASET_VALUES;

/// Most bytes of one image file of an image folder. Encoded images are far smaller than
/// their pixels; 256 MiB holds an uncompressed [`MAX_IMAGE_SIDE`]² RGBA image with room to
/// spare.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// Largest height or width of a training image (image folders, and the input shape a
/// checkpoint may declare). The presets are built for 28–96 px images; 4096 px is 40× that,
/// and checking it before decoding turns a decompression or aspect-ratio bomb (a 4 KB PNG of
/// 1×20,000,000 px) into an error instead of gigabytes.
pub const MAX_IMAGE_SIDE: usize = 4096;

/// Most bytes the `image` crate may allocate to decode one image: [`MAX_IMAGE_SIDE`]² RGBA
/// at 16 bits per channel, so every image within the side limit decodes and nothing larger
/// can.
pub const MAX_IMAGE_DECODE_BYTES: u64 = (MAX_IMAGE_SIDE * MAX_IMAGE_SIDE * 8) as u64;

/// Most image channels a model input may have (data sets have 1 or 3; a checkpoint declaring
/// 10⁹ would build a first convolution of 10⁹ × 16 × 9 weights).
pub const MAX_CHANNELS: usize = 64;

/// Most classes of a data set or checkpoint: the classifier is features × classes weights,
/// and no supported data set has more than a few hundred.
pub const MAX_CLASSES: usize = 100_000;

/// Most bytes of a YAML config or report read from disk. The largest real one (an evaluation
/// report of a few hundred configurations) is tens of kilobytes; the bound also caps what a
/// YAML alias or nesting bomb can be built from.
pub const MAX_YAML_BYTES: u64 = 16 << 20;

/// Most bytes of a class-name list (one name per line).
pub const MAX_CLASS_NAMES_BYTES: u64 = 16 << 20;

/// Most bytes of a checkpoint: ≈ 15× the largest preset with its momentum buffers.
pub const MAX_CHECKPOINT_BYTES: u64 = 4 << 30;

/// Most samples per batch (training, evaluation, benchmarks). Beyond 65,536 images a batch of
/// these models does not fit any accelerator; a larger value is a typo, and sizes that do not
/// fit an `i64` tensor dimension would otherwise wrap.
pub const MAX_BATCH_SIZE: usize = 1 << 16;

/// Largest channel multiplier: ×16 makes ResNet-34 a ≈5 G-parameter network, far past any
/// checkpoint limit; more is a typo.
pub const MAX_CHANNEL_MULTIPLIER: usize = 16;

/// Most epochs of a run (the reference trains 200); more is a typo, not a plan.
pub const MAX_EPOCHS: usize = 100_000;

/// Largest learning rate: SGD on these networks diverges far below it, so a larger value is a
/// typo (`1e1` for `1e-1`) that would only end in a diverged run.
pub const MAX_LR: f64 = 10.0;

/// Most steps or iterations an attack may take (evaluation, and PGD in training): a typo
/// like `pgd20000000` must be an error, not a week of compute.
pub const MAX_ATTACK_STEPS: usize = 10_000;

/// Most random restarts of one attack.
pub const MAX_RESTARTS: usize = 100;

/// Most timed iterations of a benchmark (`bench-step --iters`, `oats-calibrate
/// --bench-iters`).
pub const MAX_BENCH_ITERS: usize = 1_000_000;

/// Most intra-op threads `--threads` may ask libtorch for.
pub const MAX_THREADS: i32 = 1024;

/// Reads the whole regular file at `path`, refusing a FIFO, device, socket or directory
/// (reading one would block forever, or never end as with `/dev/zero`) and a file larger than
/// `max_bytes`, both before allocating for its content. Symlinks are followed.
///
/// The type is checked before opening (opening a FIFO for reading blocks until a writer
/// appears) and again on the opened file, whose size bounds the read, so a file swapped or
/// grown in between cannot make the read unbounded. The errors are `io::Error`s that callers
/// wrap with the path: [`io::ErrorKind::InvalidInput`] for a non-regular file,
/// [`io::ErrorKind::FileTooLarge`] for a file over the limit.
pub fn read_limited(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let (file, len) = open_regular(path, max_bytes)?;
    let mut bytes = Vec::new();
    // `len` fits usize: it is at most `max_bytes`, and a failed reservation (a tight `ulimit
    // -v`) is an error rather than an abort.
    bytes
        .try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e))?;
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64, max_bytes));
    }
    Ok(bytes)
}

/// [`read_limited`] for UTF-8 text.
pub fn read_text_limited(path: &Path, max_bytes: u64) -> io::Result<String> {
    let bytes = read_limited(path, max_bytes)?;
    String::from_utf8(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the file is not UTF-8 text".to_string(),
        )
    })
}

/// Opens the regular file at `path` for reading (see [`read_limited`] for why the type is
/// checked twice) and returns it with its size, which must be at most `max_bytes`.
pub fn open_regular(path: &Path, max_bytes: u64) -> io::Result<(File, u64)> {
    check_regular(&std::fs::metadata(path)?)?;
    let file = File::open(path)?;
    let meta = file.metadata()?;
    check_regular(&meta)?;
    if meta.len() > max_bytes {
        return Err(too_large(meta.len(), max_bytes));
    }
    Ok((file, meta.len()))
}

fn check_regular(meta: &std::fs::Metadata) -> io::Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    let what = if meta.is_dir() {
        "a directory"
    } else {
        "a FIFO, device or socket"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file ({what}); refusing to read it"),
    ))
}

fn too_large(len: u64, max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("file is larger than the limit of {max} bytes ({len} bytes or more)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_directories_devices_and_large_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let e = read_limited(tmp.path(), 10).expect_err("dir");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        if Path::new("/dev/zero").exists() {
            let e = read_limited(Path::new("/dev/zero"), 10).expect_err("device");
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        let f = tmp.path().join("f");
        std::fs::write(&f, b"12345").expect("write");
        assert_eq!(read_limited(&f, 5).expect("fits"), b"12345");
        let e = read_limited(&f, 4).expect_err("too large");
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge, "{e}");
        assert!(e.to_string().contains("limit of 4 bytes"), "{e}");
        std::fs::write(&f, [0xff, 0xfe]).expect("write");
        assert_eq!(
            read_text_limited(&f, 5).expect_err("utf8").kind(),
            io::ErrorKind::InvalidData
        );
    }
}
