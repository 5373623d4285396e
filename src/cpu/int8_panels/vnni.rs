//! The AVX-512 VNNI tile.

use super::{MAX_ROWS, PANEL};
use core::arch::x86_64::{
    __m512i, _MM_HINT_T0, _mm_prefetch, _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_set1_epi32,
    _mm512_setzero_si512, _mm512_storeu_si512,
};

/// How far ahead in the panel the kernel asks for weights (bytes).
const PREFETCH_AHEAD: usize = 2048;

/// See `super::tile_sums`; only called where `Int8Kernel::detect`
/// found AVX-512 F, BW and VNNI.
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
                    // SAFETY: the CPU has AVX-512 F, BW and VNNI (the
                    // only way to this kernel is `Int8Kernel::Vnni512`,
                    // chosen by run-time detection); the lengths were
                    // checked above, which is all `tile` relies on.
                    #[allow(unsafe_code)]
                    unsafe { tile::<$h>(rows, row_bytes, groups, panel, out) }
                })*
                _ => unreachable!(),
            }
        };
    }
    by_rows!(1 2 3 4 5 6)
}

/// `ROWS` rows by one panel, all 4 x `ROWS` accumulators in registers.
///
/// Safety: the CPU has AVX-512 F, BW and VNNI; `rows` holds `ROWS *
/// row_bytes` bytes with `row_bytes = 4 * groups`, `panel` `groups *
/// 256`.
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const ROWS: usize>(
    rows: &[u8],
    row_bytes: usize,
    groups: usize,
    panel: &[u8],
    out: &mut [[i32; PANEL]; ROWS],
) {
    let mut acc = [[_mm512_setzero_si512(); 4]; ROWS];
    let a = rows.as_ptr();
    let w = panel.as_ptr();
    for g in 0..groups {
        // SAFETY (loads): `g < groups`, so the four vectors at `w + 256
        // g` lie in `panel` and the four bytes at `a + t * row_bytes +
        // 4 g` in row `t` of `rows`; unaligned loads are allowed. The
        // prefetch is a hint and never faults, wherever it points.
        let weights: [__m512i; 4] =
            core::array::from_fn(|v| unsafe { _mm512_loadu_si512(w.add(g * 256 + v * 64).cast()) });
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(g * 256 + PREFETCH_AHEAD).cast());
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(g * 256 + PREFETCH_AHEAD + 128).cast());
        for (t, acc) in acc.iter_mut().enumerate() {
            let four = unsafe { a.add(t * row_bytes + 4 * g).cast::<i32>().read_unaligned() };
            let b = _mm512_set1_epi32(four);
            for (acc, &weights) in acc.iter_mut().zip(&weights) {
                *acc = _mm512_dpbusd_epi32(*acc, b, weights);
            }
        }
    }
    for (out, acc) in out.iter_mut().zip(&acc) {
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: 16 i32 at `out[16 v..]`, inside the array.
            unsafe { _mm512_storeu_si512(out[16 * v..].as_mut_ptr().cast(), acc) };
        }
    }
}
