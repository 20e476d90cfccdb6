//! Minimal reader for MATLAB level-5 MAT-files (what `save -v6`/`-v7` and
//! `scipy.io.savemat` write, and what SVHN ships), enough to pull out named real
//! numeric arrays.
//!
//! Layout (MathWorks "MAT-File Format", level 5):
//! * 128-byte header: 116 bytes of text (`MATLAB 5.0 MAT-file…`), 8 bytes subsystem
//!   offset, `u16` version `0x0100`, 2-byte endian indicator: `IM` = little-endian
//!   (we support only that; big-endian files are rejected with a clear error).
//! * Then data elements: 8-byte tag (`u32` type, `u32` byte count) + data padded to
//!   8 bytes, or the *small element* format when the upper 16 bits of the first tag
//!   word are non-zero (type = low 16 bits, count = high 16 bits, ≤ 4 data bytes in
//!   the second word).
//! * `miMATRIX` (14) holds sub-elements: array flags (`miUINT32`, class in the low
//!   byte, complex = bit 0x800), dimensions (`miINT32`), name (`miINT8`), real part.
//!   The real part may be stored in a smaller type than the class (MATLAB stores a
//!   double array of small integers as `miUINT8`), so values are converted by storage
//!   type, not by class.
//! * `miCOMPRESSED` (15) holds a zlib stream that inflates to one whole element
//!   (normally a `miMATRIX`); its byte count is *not* padded to 8.
//!
//! Variables other than the wanted ones (and non-numeric ones: cell, struct, char,
//! sparse…) are skipped without being decoded.

use std::io::Read;
use std::path::Path;

use flate2::read::ZlibDecoder;

use super::error::{malformed, too_large};
use super::files::read_file;
use super::DataError;
use crate::limits::{MAX_DATASET_VALUES, MAX_DATA_FILE_BYTES};

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;

/// A real numeric array read from a MAT-file: `dims` in MATLAB (column-major) order,
/// `data` the raw little-endian bytes of the real part, stored as `data_type`.
#[derive(Debug)]
pub(super) struct MatVar {
    pub name: String,
    pub dims: Vec<usize>,
    pub data_type: u32,
    pub data: Vec<u8>,
}

impl MatVar {
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// Values as `u8`; every value must be an integer in `0..=255`.
    pub fn into_u8(self, path: &Path) -> Result<Vec<u8>, DataError> {
        if self.data_type == MI_UINT8 {
            return Ok(self.data);
        }
        let mut out = Vec::with_capacity(self.len());
        self.for_each(path, |i, v| {
            if v.fract() != 0.0 || !(0.0..=255.0).contains(&v) {
                return Err(format!("{}[{i}] = {v} is not a byte value", self.name));
            }
            out.push(v as u8);
            Ok(())
        })?;
        Ok(out)
    }

    /// Values as `f64` (exact for every storage type except huge 64-bit integers).
    pub fn to_f64(&self, path: &Path) -> Result<Vec<f64>, DataError> {
        let mut out = Vec::with_capacity(self.len());
        self.for_each(path, |_, v| {
            out.push(v);
            Ok(())
        })?;
        Ok(out)
    }

    fn for_each(
        &self,
        path: &Path,
        mut f: impl FnMut(usize, f64) -> Result<(), String>,
    ) -> Result<(), DataError> {
        let d = &self.data;
        let mut i = 0;
        let mut go = |v: f64| {
            let r = f(i, v);
            i += 1;
            r
        };
        let res: Result<(), String> = match self.data_type {
            1 => d.iter().try_for_each(|&b| go(b as i8 as f64)),
            2 => d.iter().try_for_each(|&b| go(b as f64)),
            3 => d
                .chunks_exact(2)
                .try_for_each(|c| go(i16::from_le_bytes(arr(c)) as f64)),
            4 => d
                .chunks_exact(2)
                .try_for_each(|c| go(u16::from_le_bytes(arr(c)) as f64)),
            5 => d
                .chunks_exact(4)
                .try_for_each(|c| go(i32::from_le_bytes(arr(c)) as f64)),
            6 => d
                .chunks_exact(4)
                .try_for_each(|c| go(u32::from_le_bytes(arr(c)) as f64)),
            7 => d
                .chunks_exact(4)
                .try_for_each(|c| go(f32::from_le_bytes(arr(c)) as f64)),
            9 => d
                .chunks_exact(8)
                .try_for_each(|c| go(f64::from_le_bytes(arr(c)))),
            12 => d
                .chunks_exact(8)
                .try_for_each(|c| go(i64::from_le_bytes(arr(c)) as f64)),
            13 => d
                .chunks_exact(8)
                .try_for_each(|c| go(u64::from_le_bytes(arr(c)) as f64)),
            t => Err(format!(
                "variable {}: unsupported storage type {t}",
                self.name
            )),
        };
        res.map_err(|reason| malformed(path, reason))
    }
}

fn arr<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(c); // callers pass chunks_exact(N) chunks
    a
}

/// Size in bytes of one value of numeric storage type `t`.
fn type_size(t: u32) -> Option<usize> {
    match t {
        1 | 2 => Some(1),
        3 | 4 => Some(2),
        5..=7 => Some(4),
        9 | 12 | 13 => Some(8),
        _ => None,
    }
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Reads the real numeric variables named in `wanted` (in file order); others are skipped.
pub(super) fn read_vars(path: &Path, wanted: &[&str]) -> Result<Vec<MatVar>, DataError> {
    let buf = read_file(path)?;
    parse(path, &buf, wanted)
}

fn parse(path: &Path, buf: &[u8], wanted: &[&str]) -> Result<Vec<MatVar>, DataError> {
    if buf.len() < 128 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: "a MAT-file header needs 128 bytes".into(),
            expected_bytes: 128,
            actual_bytes: buf.len() as u64,
        });
    }
    let text = String::from_utf8_lossy(&buf[..116]);
    if text.starts_with("MATLAB 7.3") {
        return Err(DataError::Unsupported {
            path: path.to_path_buf(),
            reason: "MAT-file v7.3 (HDF5); re-save with -v7 or scipy.io.savemat".into(),
        });
    }
    if !text.starts_with("MATLAB 5.0 MAT-file") {
        return Err(malformed(path, "not a MATLAB level-5 MAT-file (header text does not start with \"MATLAB 5.0 MAT-file\")"));
    }
    match &buf[126..128] {
        b"IM" => {}
        b"MI" => {
            return Err(DataError::Unsupported {
                path: path.to_path_buf(),
                reason: "big-endian MAT-file".into(),
            })
        }
        other => {
            return Err(malformed(
                path,
                format!("bad endian indicator {other:?}, expected \"IM\""),
            ))
        }
    }
    let version = u16::from_le_bytes([buf[124], buf[125]]);
    if version != 0x0100 {
        return Err(malformed(
            path,
            format!("MAT-file version 0x{version:04x}, expected 0x0100"),
        ));
    }

    let mut vars = Vec::new();
    let mut pos = 128;
    // Bytes the compressed elements may still inflate to: a zlib bomb in one element or
    // spread over many ends at the limit of a data file, not at the end of memory.
    let mut inflate_budget = MAX_DATA_FILE_BYTES;
    while pos < buf.len() {
        let truncated = |what: String, expected: usize| DataError::Truncated {
            path: path.to_path_buf(),
            what,
            expected_bytes: expected as u64,
            actual_bytes: buf.len() as u64,
        };
        if buf.len() - pos < 8 {
            return Err(truncated(
                format!("a data element tag at byte {pos} needs 8 bytes"),
                pos + 8,
            ));
        }
        let w0 = u32_le(buf, pos);
        if w0 >> 16 != 0 {
            pos += 8; // small element at top level: not a variable
            continue;
        }
        let nbytes = u32_le(buf, pos + 4) as usize;
        let start = pos + 8;
        let end = start.saturating_add(nbytes);
        if end > buf.len() {
            return Err(truncated(
                format!("data element at byte {pos} says it has {nbytes} bytes"),
                end,
            ));
        }
        let body = &buf[start..end];
        let var = match w0 {
            MI_MATRIX => parse_matrix(path, body, pos, wanted)?,
            MI_COMPRESSED => parse_compressed(path, body, pos, wanted, &mut inflate_budget)?,
            _ => None,
        };
        vars.extend(var);
        pos = if w0 == MI_COMPRESSED {
            end
        } else {
            align8(end).min(buf.len())
        };
    }
    Ok(vars)
}

/// Inflates a `miCOMPRESSED` element (at file offset `at`) and parses the element inside,
/// inflating at most `budget` bytes (which it decreases).
fn parse_compressed(
    path: &Path,
    body: &[u8],
    at: usize,
    wanted: &[&str],
    budget: &mut u64,
) -> Result<Option<MatVar>, DataError> {
    let zerr =
        |e: std::io::Error| malformed(path, format!("compressed element at byte {at}: zlib: {e}"));
    let mut z = ZlibDecoder::new(body);
    let mut tag = [0u8; 8];
    z.read_exact(&mut tag).map_err(zerr)?;
    let (ty, nbytes) = (u32_le(&tag, 0), u32_le(&tag, 4) as usize);
    if ty != MI_MATRIX {
        return Ok(None);
    }
    if nbytes as u64 > *budget {
        return Err(too_large(
            path,
            format!("compressed element at byte {at} inflates to {nbytes} bytes, after {} bytes of earlier ones", MAX_DATA_FILE_BYTES - *budget),
            format!("{MAX_DATA_FILE_BYTES} bytes per file"),
        ));
    }
    *budget -= nbytes as u64;
    // Bounded by the inner tag, and grown only as data really inflates.
    let mut inner = Vec::with_capacity(nbytes.min(1 << 20));
    z.take(nbytes as u64)
        .read_to_end(&mut inner)
        .map_err(zerr)?;
    if inner.len() < nbytes {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: format!("compressed element at byte {at}: inner miMATRIX says {nbytes} bytes (decompressed)"),
            expected_bytes: nbytes as u64,
            actual_bytes: inner.len() as u64,
        });
    }
    parse_matrix(path, &inner, at, wanted)
}

/// Next sub-element of a `miMATRIX` body: `(type, data)`; advances `p` past padding.
fn sub<'a>(
    path: &Path,
    body: &'a [u8],
    p: &mut usize,
    at: usize,
    what: &str,
) -> Result<(u32, &'a [u8]), DataError> {
    let bad = |r: String| malformed(path, format!("miMATRIX at byte {at}: {what}: {r}"));
    if body.len().saturating_sub(*p) < 8 {
        return Err(bad("element ends before this sub-element".into()));
    }
    let w0 = u32_le(body, *p);
    if w0 >> 16 != 0 {
        let (ty, n) = (w0 & 0xffff, (w0 >> 16) as usize);
        if n > 4 {
            return Err(bad(format!("small data element claims {n} bytes (max 4)")));
        }
        let data = &body[*p + 4..*p + 4 + n];
        *p += 8;
        return Ok((ty, data));
    }
    let n = u32_le(body, *p + 4) as usize;
    let start = *p + 8;
    if n > body.len() - start {
        return Err(bad(format!(
            "sub-element says {n} bytes but only {} remain",
            body.len() - start
        )));
    }
    *p = align8(start + n).min(body.len());
    Ok((w0, &body[start..start + n]))
}

fn parse_matrix(
    path: &Path,
    body: &[u8],
    at: usize,
    wanted: &[&str],
) -> Result<Option<MatVar>, DataError> {
    if body.is_empty() {
        return Ok(None); // empty placeholder element
    }
    let bad = |r: String| malformed(path, format!("miMATRIX at byte {at}: {r}"));
    let mut p = 0;
    let (ty, flags) = sub(path, body, &mut p, at, "array flags")?;
    if ty != MI_UINT32 || flags.len() != 8 {
        return Err(bad(format!(
            "array flags: type {ty} with {} bytes, expected miUINT32 with 8",
            flags.len()
        )));
    }
    let flags = u32_le(flags, 0);
    let (class, complex) = ((flags & 0xff) as u8, flags & 0x0800 != 0);
    let (ty, dims_b) = sub(path, body, &mut p, at, "dimensions")?;
    if ty != MI_INT32 || dims_b.len() % 4 != 0 || dims_b.len() < 8 {
        return Err(bad(format!(
            "dimensions: type {ty} with {} bytes, expected ≥ 2 miINT32",
            dims_b.len()
        )));
    }
    let dims: Vec<i32> = dims_b
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(arr(c)))
        .collect();
    let (ty, name_b) = sub(path, body, &mut p, at, "array name")?;
    if !matches!(ty, MI_INT8 | MI_UINT8 | MI_UTF8) {
        return Err(bad(format!("array name has type {ty}, expected miINT8")));
    }
    let name = String::from_utf8_lossy(name_b).into_owned();
    if !wanted.contains(&name.as_str()) {
        return Ok(None);
    }
    let bad = |r: String| {
        malformed(
            path,
            format!("variable {name} (miMATRIX at byte {at}): {r}"),
        )
    };
    if !(6..=15).contains(&class) {
        return Err(bad(format!(
            "array class {class} is not numeric (double/single/int/uint)"
        )));
    }
    if complex {
        return Err(bad("complex arrays are not supported".into()));
    }
    let dims: Vec<usize> = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
        .collect::<Result<_, _>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    if count as u64 > MAX_DATASET_VALUES {
        return Err(too_large(
            path,
            format!("variable {name} has dimensions {dims:?} ({count} values)"),
            format!("{MAX_DATASET_VALUES} values per split"),
        ));
    }
    let (data_type, data) = sub(path, body, &mut p, at, "real part")?;
    let size = type_size(data_type).ok_or_else(|| {
        bad(format!(
            "real part has non-numeric storage type {data_type}"
        ))
    })?;
    if count.checked_mul(size) != Some(data.len()) {
        return Err(bad(format!(
            "dimensions {dims:?} need {count} values but the real part has {} bytes of {size}-byte type {data_type}",
            data.len()
        )));
    }
    Ok(Some(MatVar {
        name,
        dims,
        data_type,
        data: data.to_vec(),
    }))
}

/// Test-only MAT-file writer, producing what MATLAB / scipy write.
#[cfg(test)]
pub(super) mod writer {
    use flate2::write::ZlibEncoder;
    use flate2::Compression;
    use std::io::Write;

    pub const MX_DOUBLE: u8 = 6;
    pub const MX_UINT8: u8 = 9;
    pub const MI_DOUBLE: u32 = 9;

    /// One data element (small format when ≤ 4 bytes), padded to 8 bytes.
    pub fn element(ty: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        if data.len() <= 4 {
            v.extend_from_slice(&(ty | ((data.len() as u32) << 16)).to_le_bytes());
            v.extend_from_slice(data);
            v.resize(8, 0);
            return v;
        }
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v.resize(8 + data.len().div_ceil(8) * 8, 0);
        v
    }

    /// A whole `miMATRIX` element (tag included) for a real array.
    pub fn matrix(name: &str, class: u8, dims: &[u32], data_type: u32, data: &[u8]) -> Vec<u8> {
        let mut flags = (class as u32).to_le_bytes().to_vec();
        flags.extend_from_slice(&[0; 4]);
        let dims: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
        let mut body = element(super::MI_UINT32, &flags);
        body.extend(element(super::MI_INT32, &dims));
        body.extend(element(super::MI_INT8, name.as_bytes()));
        body.extend(element(data_type, data));
        let mut v = super::MI_MATRIX.to_le_bytes().to_vec();
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend(body);
        v
    }

    /// A MAT-file holding `elements`, each wrapped in `miCOMPRESSED` if `compress`.
    pub fn file(elements: &[Vec<u8>], compress: bool) -> Vec<u8> {
        let mut text =
            b"MATLAB 5.0 MAT-file, Platform: test, Created by: oats data.rs tests".to_vec();
        text.resize(116, b' ');
        let mut v = text;
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&0x0100u16.to_le_bytes());
        v.extend_from_slice(b"IM");
        for e in elements {
            if compress {
                let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
                z.write_all(e).unwrap();
                let c = z.finish().unwrap();
                v.extend_from_slice(&super::MI_COMPRESSED.to_le_bytes());
                v.extend_from_slice(&(c.len() as u32).to_le_bytes());
                v.extend(c); // no padding after miCOMPRESSED
            } else {
                v.extend_from_slice(e);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::writer::*;
    use super::*;

    fn f64_bytes(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn sample(compress: bool) -> Vec<u8> {
        let skipped = matrix(
            "a_long_unwanted_name",
            MX_DOUBLE,
            &[1, 2],
            MI_DOUBLE,
            &f64_bytes(&[1.5, -2.0]),
        );
        let a = matrix("A", MX_UINT8, &[2, 3], MI_UINT8, &[1, 2, 3, 4, 5, 6]);
        // double class, stored as miUINT8 (as MATLAB does for small integers)
        let b = matrix("bb", MX_DOUBLE, &[3, 1], MI_UINT8, &[7, 8, 10]);
        let c = matrix("c", MX_DOUBLE, &[1, 2], MI_DOUBLE, &f64_bytes(&[0.25, 3.0]));
        file(&[skipped, a, b, c], compress)
    }

    #[test]
    fn mat_reads_vars_plain_and_compressed() {
        for compress in [false, true] {
            let p = Path::new("t.mat");
            let vars = parse(p, &sample(compress), &["A", "bb", "c"]).unwrap();
            let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
            assert_eq!(names, ["A", "bb", "c"]);
            assert_eq!(vars[0].dims, [2, 3]);
            assert_eq!(vars[1].to_f64(p).unwrap(), [7.0, 8.0, 10.0]);
            assert_eq!(vars[2].to_f64(p).unwrap(), [0.25, 3.0]);
            let mut vars = vars.into_iter();
            assert_eq!(vars.next().unwrap().into_u8(p).unwrap(), [1, 2, 3, 4, 5, 6]);
            assert_eq!(vars.next().unwrap().into_u8(p).unwrap(), [7, 8, 10]); // double class via miUINT8
            assert!(vars.next().unwrap().into_u8(p).is_err()); // 0.25 is not a byte
        }
    }

    #[test]
    fn mat_rejects_bad_files() {
        let p = Path::new("t.mat");
        let good = sample(false);
        // Cut inside the last element.
        let e = parse(p, &good[..good.len() - 9], &["c"]).unwrap_err();
        assert!(matches!(e, DataError::Truncated { .. }), "{e}");
        let good_z = sample(true);
        let e = parse(p, &good_z[..good_z.len() - 3], &["c"]).unwrap_err();
        assert!(matches!(e, DataError::Truncated { .. }), "{e}");
        // Corrupt zlib header of the first compressed element (tag at 128..136).
        let mut z = good_z.clone();
        z[136] ^= 0xff;
        let e = parse(p, &z, &["c"]).unwrap_err();
        assert!(
            matches!(e, DataError::Malformed { .. }) && e.to_string().contains("zlib"),
            "{e}"
        );
        let e = parse(p, &good[..100], &["c"]).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Truncated {
                    expected_bytes: 128,
                    actual_bytes: 100,
                    ..
                }
            ),
            "{e}"
        );
        let mut be = good.clone();
        be[126..128].copy_from_slice(b"MI");
        assert!(matches!(
            parse(p, &be, &["c"]),
            Err(DataError::Unsupported { .. })
        ));
        let mut junk = good.clone();
        junk[..6].copy_from_slice(b"HELLO!");
        assert!(matches!(
            parse(p, &junk, &["c"]),
            Err(DataError::Malformed { .. })
        ));
        // Dims say 2×4 = 8 values but 6 bytes stored.
        let bad = file(
            &[matrix(
                "A",
                MX_UINT8,
                &[2, 4],
                MI_UINT8,
                &[1, 2, 3, 4, 5, 6],
            )],
            false,
        );
        let e = parse(p, &bad, &["A"]).unwrap_err();
        assert!(
            e.to_string().contains("variable A") && e.to_string().contains("need 8 values"),
            "{e}"
        );
        // Huge dims must not allocate: refused by the limit before the size check.
        let bad = file(
            &[matrix(
                "A",
                MX_UINT8,
                &[i32::MAX as u32, i32::MAX as u32],
                MI_UINT8,
                &[1],
            )],
            true,
        );
        let e = parse(p, &bad, &["A"]).unwrap_err();
        assert!(
            matches!(e, DataError::TooLarge { .. }) && e.to_string().contains("variable A"),
            "{e}"
        );
    }
}
