//! Value conversions shared by the format readers: bytes to `[0, 1]` pixels, stored labels
//! to checked class indices.
use std::io;
use std::path::Path;

use super::DataError;

/// Byte → `[0, 1]` lookup (exactly `b as f32 / 255.0`).
pub(super) fn u8_to_unit() -> [f32; 256] {
    let mut t = [0f32; 256];
    for (i, v) in t.iter_mut().enumerate() {
        *v = i as f32 / 255.0;
    }
    t
}

/// The byte pixels `src` as `[0, 1]` values, allocated fallibly: a split too large for the
/// memory left (a tight `ulimit -v`) is an error naming `path`, not an abort.
pub(super) fn bytes_to_unit(path: &Path, src: &[u8]) -> Result<Vec<f32>, DataError> {
    let lut = u8_to_unit();
    let mut out = alloc_values(path, 0)?;
    reserve_values(path, &mut out, src.len())?;
    out.extend(src.iter().map(|&b| lut[b as usize]));
    Ok(out)
}

/// `n` zeros, allocated fallibly (see [`bytes_to_unit`]).
pub(super) fn alloc_values(path: &Path, n: usize) -> Result<Vec<f32>, DataError> {
    let mut v = Vec::new();
    reserve_values(path, &mut v, n)?;
    v.resize(n, 0.0);
    Ok(v)
}

/// Reserves room for `n` more values in `v`, fallibly (see [`bytes_to_unit`]).
pub(super) fn reserve_values(path: &Path, v: &mut Vec<f32>, n: usize) -> Result<(), DataError> {
    v.try_reserve_exact(n).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("cannot allocate {n} pixel values: {e}"),
        ),
    })
}

/// Checks every label is in `0..num_classes` and converts to `i64`. `map` turns the
/// raw stored value into a class index (e.g. SVHN's 10 → 0) or `None` if invalid.
pub(super) fn convert_labels<T: Copy + Into<i64>>(
    path: &Path,
    raw: &[T],
    expected: &str,
    map: impl Fn(i64) -> Option<i64>,
) -> Result<Vec<i64>, DataError> {
    raw.iter()
        .enumerate()
        .map(|(index, &v)| {
            let v: i64 = v.into();
            map(v).ok_or_else(|| DataError::BadLabel {
                path: path.to_path_buf(),
                index,
                label: v,
                expected: expected.to_string(),
            })
        })
        .collect()
}
