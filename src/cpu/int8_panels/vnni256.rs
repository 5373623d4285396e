//! The AVX-VNNI tile: 256-bit `vpdpbusd`, for CPUs without AVX-512
//! (Alder Lake and later). With 16 vector registers the register tile is a
//! quarter of a panel (16 features, two vectors) by up to 6 rows: 12
//! accumulators, two weight vectors and a broadcast. Each quarter streams
//! its 64 bytes of every group of the panel (one cache line, 256 bytes
//! apart).

use super::{MAX_ROWS, PANEL};
use core::arch::x86_64::{
    __m256i, _mm256_dpbusd_avx_epi32, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_setzero_si256,
    _mm256_storeu_si256,
};

/// See `super::tile_sums`; only called where `Int8Kernel::available`
/// found AVX2, FMA and AVX-VNNI.
pub(super) fn tile_sums(rows: &[u8], panel: &[u8], sums: &mut [[i32; PANEL]]) {
    let height = sums.len();
    assert!((1..=MAX_ROWS).contains(&height), "tile of {height} rows");
    let row_bytes = rows.len() / height;
    let groups = row_bytes / 4;
    assert!(
        rows.len() == height * row_bytes
            && row_bytes.is_multiple_of(4)
            && panel.len() == groups * PANEL * 4,
        "int8 tile of {height} rows of {row_bytes} bytes over a {} byte panel",
        panel.len()
    );
    macro_rules! by_rows {
        ($($h:literal)*) => {
            match height {
                $($h => {
                    let out: &mut [[i32; PANEL]; $h] = match sums.try_into() {
                        Ok(out) => out,
                        Err(_) => unreachable!(),
                    };
                    for quarter in 0..4 {
                        // SAFETY: the CPU has AVX2, FMA and AVX-VNNI
                        // (the only way here is `Int8Kernel::AvxVnni`,
                        // chosen where they were detected); the lengths
                        // were checked above, which is all `tile`
                        // relies on.
                        #[allow(unsafe_code)]
                        unsafe { tile::<$h>(rows, row_bytes, groups, panel, quarter, out) }
                    }
                })*
                _ => unreachable!(),
            }
        };
    }
    by_rows!(1 2 3 4 5 6)
}

/// `ROWS` rows by features `16 quarter..16 quarter + 16` of the panel,
/// all 2 x `ROWS` accumulators in registers.
///
/// Safety: the CPU has AVX2, FMA and AVX-VNNI; `rows` holds `ROWS *
/// row_bytes` bytes with `row_bytes = 4 * groups`, `panel` `groups *
/// 256`, and `quarter < 4`.
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn tile<const ROWS: usize>(
    rows: &[u8],
    row_bytes: usize,
    groups: usize,
    panel: &[u8],
    quarter: usize,
    out: &mut [[i32; PANEL]; ROWS],
) {
    let mut acc = [[_mm256_setzero_si256(); 2]; ROWS];
    let a = rows.as_ptr();
    let w = panel.as_ptr().wrapping_add(quarter * 64);
    for g in 0..groups {
        // SAFETY (loads): `g < groups` and `quarter < 4`, so the two
        // vectors at `w + 256 g` lie in `panel` and the four bytes at
        // `a + t * row_bytes + 4 g` in row `t` of `rows`; unaligned
        // loads are allowed.
        let weights: [__m256i; 2] =
            core::array::from_fn(|v| unsafe { _mm256_loadu_si256(w.add(g * 256 + v * 32).cast()) });
        for (t, acc) in acc.iter_mut().enumerate() {
            let four = unsafe { a.add(t * row_bytes + 4 * g).cast::<i32>().read_unaligned() };
            let b = _mm256_set1_epi32(four);
            for (acc, &weights) in acc.iter_mut().zip(&weights) {
                *acc = _mm256_dpbusd_avx_epi32(*acc, b, weights);
            }
        }
    }
    for (out, acc) in out.iter_mut().zip(&acc) {
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: 8 i32 at `out[16 quarter + 8 v..]`, inside the
            // array (`quarter < 4`).
            unsafe { _mm256_storeu_si256(out[16 * quarter + 8 * v..].as_mut_ptr().cast(), acc) };
        }
    }
}
