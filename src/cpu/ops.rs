//! The few primitives of the CPU engine: matrix products (faer, for
//! attention and the output heads), SiLU, RMSNorm over rows, RoPE tables.

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

/// `e^x` in a branch-free form that the compiler vectorises (libm's `expf`
/// is a scalar call and was half the time of a recursion step). Cody-Waite
/// reduction `x = r ln2 + f` with `|f| <= ln2 / 2`, then the Taylor series of
/// `e^f` to degree 7 (truncation error below 6e-9): within a few ulp of the
/// exact value. `x` is clamped to [-87, 88] so `2^r` stays a normal float;
/// below, the result (under 2e-38) only ever appears as `1 + e^x` in SiLU.
#[inline(always)]
pub(crate) fn exp_clamped(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375: exact with few bits
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer (ties to even) in
    // plain arithmetic, leaving `r + 2^22` in the low mantissa bits;
    // `round_ties_even` becomes a call to libm's `rintf` wherever SSE4.1 is
    // not enabled, and `r as i32` (saturating) a scalar conversion.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let r = shifted - ROUND;
    let f = (x - r * LN2_HI) - r * LN2_LO;
    let mut p = 1.0 / 5040.0;
    p = p * f + 1.0 / 720.0;
    p = p * f + 1.0 / 120.0;
    p = p * f + 1.0 / 24.0;
    p = p * f + 1.0 / 6.0;
    p = p * f + 0.5;
    p = p * f + 1.0;
    p = p * f + 1.0;
    // 2^r: the exponent field r + 127, from the low bits of `shifted` (the
    // bits above them, 2^22 and the float's own exponent, shift out).
    let scale = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    p * scale
}

/// SiLU, `a / (1 + exp(-a))`; never NaN for finite `a` (the exponent is
/// clamped, see [`exp_clamped`]).
#[inline(always)]
pub(crate) fn silu(a: f32) -> f32 {
    a / (1.0 + exp_clamped(-a))
}

/// `x` rounded to bfloat16 (to nearest, ties to even; a NaN stays a quiet
/// NaN), as its bits: the rounding of `half::bf16::from_f32`, written so
/// that a loop of it vectorises.
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { (b >> 16) | 0x40 } else { rounded }) as u16
}

/// Row `i` of a matrix whose rows are contiguous, as a slice.
pub(crate) fn row_slice<'a>(m: MatMut<'a, f32>, i: usize) -> &'a mut [f32] {
    match m.try_as_row_major_mut() {
        Some(m) => m.row_mut(i).as_slice_mut(),
        // Every matrix handed to the tasks is a column block of a row-major
        // buffer, so rows are always contiguous.
        None => unreachable!("row-major blocks only"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_is_that_of_half() {
        let mut rng = crate::rng::SplitMix64::new(5);
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            f32::INFINITY,
        ];
        let nans = [f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001)];
        let values = specials.into_iter().chain(nans);
        let random = (0..100_000).map(|_| f32::from_bits(rng.next_u64() as u32));
        for x in values.chain(random) {
            let want = half::bf16::from_f32(x);
            let got = bf16_bits(x);
            if x.is_nan() {
                assert!(half::bf16::from_bits(got).is_nan(), "{x}");
            } else {
                assert_eq!(got, want.to_bits(), "{x:e}");
            }
        }
    }

    #[test]
    fn exp_is_within_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let exact = (x as f64).exp();
            let rel = ((exp_clamped(x) as f64 - exact) / exact).abs();
            worst = worst.max(rel);
            x += 0.013;
        }
        // f32 has a relative spacing of 1.2e-7 at worst; allow ~3 ulp
        assert!(worst < 3.6e-7, "worst relative error {worst:e}");
        assert_eq!(exp_clamped(0.0), 1.0);
    }

    #[test]
    fn silu_matches_the_formula() {
        for i in 0..37 {
            let a = (i as f32 - 18.0) * 0.9;
            let exact = a as f64 / (1.0 + (-a as f64).exp());
            let got = silu(a) as f64;
            assert!(
                (got - exact).abs() <= 1e-6 * (1.0 + exact.abs()),
                "silu({a}) = {got}"
            );
        }
    }

    #[test]
    fn silu_is_finite_everywhere() {
        for a in [-1e30f32, -1000.0, -88.8, -10.0, 0.0, 10.0, 1000.0, 1e30] {
            let v = silu(a);
            assert!(v.is_finite(), "silu({a}) = {v}");
        }
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
    }
}
