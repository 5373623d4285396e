//! The few primitives of the CPU engine: matrix products (faer), SiLU
//! gating, RMSNorm over rows or columns, RoPE tables.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// A row-major `rows x cols` view of `data`.
pub(crate) fn mat(data: &[f32], rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(&data[..rows * cols], rows, cols)
}

/// A row-major `rows x cols` view of `data` whose rows are `stride` apart.
pub(crate) fn mat_strided(
    data: &[f32],
    rows: usize,
    cols: usize,
    stride: usize,
) -> MatRef<'_, f32> {
    let len = if rows == 0 {
        0
    } else {
        (rows - 1) * stride + cols
    };
    MatRef::from_row_major_slice_with_stride(&data[..len], rows, cols, stride)
}

/// A mutable row-major `rows x cols` view of `data`.
pub(crate) fn mat_mut(data: &mut [f32], rows: usize, cols: usize) -> MatMut<'_, f32> {
    MatMut::from_row_major_slice_mut(&mut data[..rows * cols], rows, cols)
}

/// `dst = lhs @ rhs`.
pub(crate) fn matmul_into(
    dst: MatMut<'_, f32>,
    lhs: MatRef<'_, f32>,
    rhs: MatRef<'_, f32>,
    par: Par,
) {
    matmul(dst, Accum::Replace, lhs, rhs, 1.0, par);
}

/// SiLU, `a / (1 + exp(-a))`: for very negative `a`, `exp(-a)` overflows to
/// infinity and the quotient is -0, never NaN.
#[inline]
pub(crate) fn silu(a: f32) -> f32 {
    a / (1.0 + (-a).exp())
}

/// Mean of squares of `row`, accumulated in eight lanes (vectorises, and is
/// closer to PyTorch's blocked reduction than one running sum).
#[inline]
fn mean_square(row: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let mut sum: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    sum += lanes.iter().sum::<f32>();
    sum / row.len() as f32
}

/// `rms_norm(residual + update)` over each row of width `width`, written to
/// `residual`.
pub(crate) fn add_rms_norm_rows(residual: &mut [f32], update: &[f32], width: usize, eps: f32) {
    for (row, upd) in residual
        .chunks_exact_mut(width)
        .zip(update.chunks_exact(width))
    {
        for (r, u) in row.iter_mut().zip(upd) {
            *r += u;
        }
        let scale = 1.0 / (mean_square(row) + eps).sqrt();
        row.iter_mut().for_each(|v| *v *= scale);
    }
}

/// `rms_norm(residual + update)` over each column of a row-major
/// `[rows, width]` matrix (the MLP-mixer's norm over the sequence axis),
/// written to `residual`. `col_sums` is scratch of `width` values.
pub(crate) fn add_rms_norm_columns(
    residual: &mut [f32],
    update: &[f32],
    width: usize,
    eps: f32,
    col_sums: &mut [f32],
) {
    let rows = residual.len() / width;
    col_sums[..width].fill(0.0);
    for (row, upd) in residual
        .chunks_exact_mut(width)
        .zip(update.chunks_exact(width))
    {
        for ((r, u), s) in row.iter_mut().zip(upd).zip(col_sums.iter_mut()) {
            *r += u;
            *s += *r * *r;
        }
    }
    for s in col_sums[..width].iter_mut() {
        *s = 1.0 / (*s / rows as f32 + eps).sqrt();
    }
    for row in residual.chunks_exact_mut(width) {
        for (r, s) in row.iter_mut().zip(col_sums.iter()) {
            *r *= s;
        }
    }
}

/// RoPE tables `cos`, `sin`, each `[positions, head_dim]`, computed as the
/// authors' `RotaryEmbedding` does in float32: `inv_freq` rounded to f32,
/// the angle `s * inv_freq` rounded to f32, then its cosine and sine.
pub fn rope_tables(positions: usize, head_dim: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|j| {
            let exponent = ((2 * j) as f32 / head_dim as f32) as f64;
            (1.0 / (theta as f32 as f64).powf(exponent)) as f32
        })
        .collect();
    let mut cos = Vec::with_capacity(positions * head_dim);
    let mut sin = Vec::with_capacity(positions * head_dim);
    for s in 0..positions {
        // emb = concat(freqs, freqs)
        for _half in 0..2 {
            for &f in &inv_freq {
                let angle = (s as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_is_finite_everywhere() {
        for a in [-1e30f32, -1000.0, -88.8, -10.0, 0.0, 10.0, 1000.0, 1e30] {
            let v = silu(a);
            assert!(v.is_finite(), "silu({a}) = {v}");
        }
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
    }

    #[test]
    fn column_norm_equals_row_norm_of_the_transpose() {
        let (rows, cols) = (5, 3);
        let a: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let u: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut by_cols = a.clone();
        let mut scratch = vec![0.0; cols];
        add_rms_norm_columns(&mut by_cols, &u, cols, 1e-5, &mut scratch);
        let transpose = |m: &[f32], r: usize, c: usize| {
            (0..r * c)
                .map(|i| m[(i % r) * c + i / r])
                .collect::<Vec<f32>>()
        };
        let mut at = transpose(&a, rows, cols);
        add_rms_norm_rows(&mut at, &transpose(&u, rows, cols), rows, 1e-5);
        let back = transpose(&at, cols, rows);
        for (x, y) in by_cols.iter().zip(&back) {
            assert!((x - y).abs() < 1e-6);
        }
    }
}
