//! Weight matrices at a chosen precision: f32 (the reference), f16, bf16,
//! or int8 with one f32 scale per row.
//!
//! A [`Matrix`] keeps its elements as stored, in little-endian bytes: owned,
//! or borrowed from a read-only mapping of the checkpoint file (so that a
//! 2.5 GB puzzle-embedding table costs only the rows a solve reads). The
//! engines ask for what they need: a row ([`Matrix::row_into`]), the whole
//! matrix widened to f32 ([`Matrix::to_f32`]), or the raw packed elements
//! ([`Matrix::raw`]) to upload as they are.
//!
//! A row of an int8 matrix is `values[r, c] = scale[r] * q[r, c]` with
//! `q` in -127..=127 and `scale[r] = max_c |w[r, c]| / 127` (symmetric, one
//! scale per output channel: rows are output channels of a linear layer's
//! `[out, in]` weight and tokens or puzzles of an embedding table). f16 and
//! bf16 round to nearest even; a value beyond f16's range is refused.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Result, TrmError};

/// The element type weights are stored and computed in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// IEEE float32: the reference.
    #[default]
    F32,
    /// IEEE float16 (10-bit mantissa, range +-65504).
    F16,
    /// bfloat16 (7-bit mantissa, float32's range): what the authors train in.
    Bf16,
    /// 8-bit symmetric integers with one f32 scale per row.
    Int8,
}

impl Precision {
    /// Every precision, the reference first.
    pub const ALL: [Precision; 4] = [
        Precision::F32,
        Precision::F16,
        Precision::Bf16,
        Precision::Int8,
    ];

    /// The name the CLI and the JSON outputs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// Bytes of one element (an int8 row adds 4 for its scale).
    pub fn element_bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 | Precision::Bf16 => 2,
            Precision::Int8 => 1,
        }
    }

    /// Bytes of a `[rows, cols]` matrix at this precision, scales included.
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> u64 {
        let scales = if self == Precision::Int8 { 4 } else { 0 };
        rows as u64 * (cols as u64 * self.element_bytes() as u64 + scales)
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = TrmError;

    fn from_str(s: &str) -> Result<Self> {
        Precision::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                TrmError::Input(format!(
                    "unknown precision `{s}` (expected f32, f16, bf16 or int8)"
                ))
            })
    }
}

/// Where a matrix's bytes live.
#[derive(Clone)]
enum Bytes {
    Owned(Arc<Vec<u8>>),
    /// A range of a read-only file mapping (the checkpoint).
    Mapped {
        map: Arc<memmap2::Mmap>,
        start: usize,
        len: usize,
    },
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }
}

/// A `[rows, cols]` weight matrix at its stored precision.
#[derive(Clone)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    precision: Precision,
    bytes: Bytes,
    /// Int8 only: one scale per row.
    scales: Vec<f32>,
}

impl fmt::Debug for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Matrix[{}, {}] {}{}",
            self.rows,
            self.cols,
            self.precision,
            if matches!(self.bytes, Bytes::Mapped { .. }) {
                " (mapped)"
            } else {
                ""
            }
        )
    }
}

impl PartialEq for Matrix {
    fn eq(&self, other: &Self) -> bool {
        self.rows == other.rows
            && self.cols == other.cols
            && self.precision == other.precision
            && self.scales == other.scales
            && self.bytes.as_slice() == other.bytes.as_slice()
    }
}

impl Matrix {
    /// An f32 matrix; `data.len()` must be `rows * cols`.
    pub fn from_f32(rows: usize, cols: usize, data: &[f32]) -> Result<Self> {
        check_len(rows, cols, data.len())?;
        Ok(Matrix {
            rows,
            cols,
            precision: Precision::F32,
            bytes: Bytes::Owned(Arc::new(bytemuck::cast_slice(data).to_vec())),
            scales: Vec::new(),
        })
    }

    /// A matrix from its stored little-endian elements (`scales` for int8,
    /// empty otherwise); the sizes are checked, the values are not.
    pub fn from_raw(
        rows: usize,
        cols: usize,
        precision: Precision,
        bytes: Vec<u8>,
        scales: Vec<f32>,
    ) -> Result<Self> {
        Self::with_bytes(rows, cols, precision, Bytes::Owned(Arc::new(bytes)), scales)
    }

    /// A matrix whose elements are `len` bytes of `map` from `start`.
    pub(crate) fn mapped(
        rows: usize,
        cols: usize,
        precision: Precision,
        map: Arc<memmap2::Mmap>,
        start: usize,
        len: usize,
        scales: Vec<f32>,
    ) -> Result<Self> {
        if start.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(TrmError::Input(format!(
                "bytes {start}..+{len} lie outside a mapping of {} bytes",
                map.len()
            )));
        }
        Self::with_bytes(
            rows,
            cols,
            precision,
            Bytes::Mapped { map, start, len },
            scales,
        )
    }

    fn with_bytes(
        rows: usize,
        cols: usize,
        precision: Precision,
        bytes: Bytes,
        scales: Vec<f32>,
    ) -> Result<Self> {
        let elements = rows
            .checked_mul(cols)
            .ok_or_else(|| TrmError::Input(format!("a [{rows}, {cols}] matrix overflows")))?;
        let len = bytes.as_slice().len();
        if elements.checked_mul(precision.element_bytes()) != Some(len) {
            return Err(TrmError::Input(format!(
                "a [{rows}, {cols}] {precision} matrix takes {} bytes, got {len}",
                elements.saturating_mul(precision.element_bytes())
            )));
        }
        let want_scales = if precision == Precision::Int8 {
            rows
        } else {
            0
        };
        if scales.len() != want_scales {
            return Err(TrmError::Input(format!(
                "a [{rows}, {cols}] {precision} matrix needs {want_scales} scales, got {}",
                scales.len()
            )));
        }
        Ok(Matrix {
            rows,
            cols,
            precision,
            bytes,
            scales,
        })
    }

    /// Rows (output channels).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Elements, `rows * cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether the matrix has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether the elements are read from the file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped { .. })
    }

    /// Bytes the stored form takes, scales included.
    pub fn stored_bytes(&self) -> u64 {
        self.precision.matrix_bytes(self.rows, self.cols)
    }

    /// The stored elements, little-endian (f32, f16 or bf16 bit patterns,
    /// or int8 values).
    pub fn raw(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Raw elements of row `r`.
    pub fn raw_row(&self, r: usize) -> &[u8] {
        let width = self.cols * self.precision.element_bytes();
        &self.raw()[r * width..(r + 1) * width]
    }

    /// Int8: the scale of each row (empty for the float precisions).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Row `r` widened to f32 into `out` (`cols` long): exactly the values
    /// the engines compute with.
    ///
    /// # Panics
    /// When `r >= rows` or `out.len() != cols` (callers check ids first).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols);
        let raw = self.raw_row(r);
        match self.precision {
            Precision::F32 => {
                for (o, b) in out.iter_mut().zip(raw.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Precision::F16 => {
                for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            Precision::Bf16 => {
                for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            Precision::Int8 => {
                let scale = self.scales[r];
                for (o, &q) in out.iter_mut().zip(raw) {
                    *o = scale * f32::from(q as i8);
                }
            }
        }
    }

    /// The whole matrix widened to f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len()];
        for (r, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.row_into(r, row);
        }
        out
    }

    /// The same weights at `precision` (`name` is for errors): rounded to
    /// nearest even for f16 and bf16, quantized per row for int8, widened
    /// for f32. Converting to the stored precision returns a copy that
    /// shares the bytes.
    pub fn convert(&self, precision: Precision, name: &str) -> Result<Matrix> {
        if precision == self.precision {
            return Ok(self.clone());
        }
        let (rows, cols) = (self.rows, self.cols);
        let mut bytes = Vec::with_capacity(self.len() * precision.element_bytes());
        let mut scales = Vec::new();
        let mut row = vec![0.0f32; cols];
        for r in 0..rows {
            self.row_into(r, &mut row);
            if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                return Err(TrmError::NonFinite {
                    name: name.to_string(),
                    index: r * cols + c,
                });
            }
            match precision {
                Precision::F32 => bytes.extend(row.iter().flat_map(|v| v.to_le_bytes())),
                Precision::F16 => {
                    for (c, &v) in row.iter().enumerate() {
                        let h = half::f16::from_f32(v);
                        if !h.is_finite() {
                            return Err(TrmError::Input(format!(
                                "tensor `{name}` holds {v} at element {}, beyond float16's range (+-65504)",
                                r * cols + c
                            )));
                        }
                        bytes.extend(h.to_le_bytes());
                    }
                }
                Precision::Bf16 => bytes.extend(
                    row.iter()
                        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()),
                ),
                Precision::Int8 => {
                    let (scale, q) = quantize_row(&row);
                    scales.push(scale);
                    bytes.extend(q.iter().map(|&q| q as u8));
                }
            }
        }
        Matrix::from_raw(rows, cols, precision, bytes, scales)
    }

    /// The first non-finite element (flat index), reading every row: for
    /// matrices whose values came from a file unchecked.
    pub fn first_non_finite(&self) -> Option<usize> {
        if self.precision == Precision::Int8 {
            // a finite scale times a byte may still overflow (a scale
            // beyond f32::MAX / 128): only such a row needs reading
            return self.scales.iter().enumerate().find_map(|(r, &scale)| {
                if !scale.is_finite() {
                    return Some(r * self.cols);
                }
                if (scale * 128.0).is_finite() {
                    return None;
                }
                self.raw_row(r)
                    .iter()
                    .position(|&q| !(scale * f32::from(q as i8)).is_finite())
                    .map(|c| r * self.cols + c)
            });
        }
        let mut row = vec![0.0f32; self.cols];
        (0..self.rows).find_map(|r| {
            self.row_into(r, &mut row);
            row.iter()
                .position(|v| !v.is_finite())
                .map(|c| r * self.cols + c)
        })
    }
}

/// Symmetric int8 quantization of one row: `scale = max |w| / 127` and
/// `q = round(w / scale)`, so that `scale * q` is within `scale / 2` of `w`.
pub fn quantize_row(row: &[f32]) -> (f32, Vec<i8>) {
    let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if max == 0.0 {
        return (0.0, vec![0; row.len()]);
    }
    let scale = max / 127.0;
    let q = row
        .iter()
        .map(|&v| (v / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (scale, q)
}

fn check_len(rows: usize, cols: usize, len: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(len) {
        return Err(TrmError::Input(format!(
            "a [{rows}, {cols}] matrix needs {} elements, got {len}",
            rows.saturating_mul(cols)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Matrix {
        let data: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.37).collect();
        Matrix::from_f32(3, 4, &data).unwrap()
    }

    #[test]
    fn conversions_round_trip_within_their_precision() {
        let m = sample();
        let exact = m.to_f32();
        for p in Precision::ALL {
            let q = m.convert(p, "w").unwrap();
            assert_eq!(q.precision(), p);
            assert_eq!(q.raw().len(), 12 * p.element_bytes());
            let back = q.to_f32();
            for (r, (a, b)) in exact.chunks(4).zip(back.chunks(4)).enumerate() {
                let max = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let bound = match p {
                    Precision::F32 => 0.0,
                    Precision::F16 => max / 2048.0,
                    Precision::Bf16 => max / 256.0,
                    Precision::Int8 => max / 127.0 / 2.0 * 1.0001,
                };
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= bound, "{p} row {r}: {x} vs {y}");
                }
            }
            // converting back to f32 and again is stable
            assert_eq!(q.convert(Precision::F32, "w").unwrap().to_f32(), back);
        }
    }

    #[test]
    fn int8_is_symmetric_per_row_and_zero_rows_stay_zero() {
        let m = Matrix::from_f32(2, 3, &[0.0, 0.0, 0.0, -2.0, 1.0, 0.5]).unwrap();
        let q = m.convert(Precision::Int8, "w").unwrap();
        assert_eq!(q.scales(), &[0.0, 2.0 / 127.0]);
        assert_eq!(q.raw_row(1), &[(-127i8) as u8, 64, 32]);
        assert_eq!(&q.to_f32()[..3], &[0.0; 3]);
    }

    #[test]
    fn bad_sizes_and_ranges_are_refused() {
        assert!(Matrix::from_f32(2, 3, &[0.0; 5]).is_err());
        assert!(Matrix::from_raw(2, 2, Precision::F16, vec![0; 7], vec![]).is_err());
        assert!(Matrix::from_raw(2, 2, Precision::Int8, vec![0; 4], vec![1.0]).is_err());
        assert!(Matrix::from_raw(usize::MAX, 2, Precision::F32, vec![], vec![]).is_err());
        let big = Matrix::from_f32(1, 1, &[1e6]).unwrap();
        let err = big.convert(Precision::F16, "big").unwrap_err().to_string();
        assert!(err.contains("float16's range"), "{err}");
        assert!(big.convert(Precision::Bf16, "big").is_ok());
        assert!("f8".parse::<Precision>().is_err());
        for p in Precision::ALL {
            assert_eq!(p.as_str().parse::<Precision>().unwrap(), p);
        }
    }
}
