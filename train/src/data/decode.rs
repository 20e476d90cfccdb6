//! Value conversions shared by the format readers: bytes to `[0, 1]` pixels, stored labels
//! to checked class indices.
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
