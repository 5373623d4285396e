//! The token-mixing MLP of one puzzle's column block on AMX tiles in bf16
//! (`amx.rs`), for the engine's `matched` activations at bf16 weights:
//! `h = rms_norm_S(h + down_t @ gate(gate_up_t @ h))` on `h` `[S, c]`, as
//! `token_panels.rs` computes it in f32.
//!
//! Both products multiply a weight from the left, so here the weights are
//! the A tiles (16 rows of 32 bf16: features or positions by inputs),
//! packed once, and the activations the B tiles (16 rows of bf16 pairs
//! by 16 columns of the state), laid out per block:
//!
//! - the block's input `[S, 64]` (with the injection added) is kept in f32
//!   for the residual and rounded to bf16 pairs of positions, zero from `S`
//!   to whole steps of 32;
//! - `gate_up_t @ input`: each 2x2 tile block is 16 gate features and the
//!   same 16 up features (the A tiles) by 32 columns (the B tiles), so the
//!   gate is applied as the results leave the tiles, written in bf16 pairs
//!   of features: the second product's B tiles;
//! - `down_t @ gated`: 2x2 tile blocks of positions by columns (the last
//!   pair of row tiles configured for the positions that are left), the
//!   residual added and the sums of squares of the norm over `S` taken as
//!   the results leave the tiles.
//!
//! Numerics as in `amx_panels.rs`: bf16 weights exactly, each product's
//! inputs rounded to bf16, f32 accumulation; f32 outside the products.

use faer::MatMut;
use faer::reborrow::ReborrowMut;

use super::amx::{Amx, MAX_ROWS, Tiles, pair_config, row_pairs};
use super::ops::{bf16_bits, row_slice, silu};

/// Columns of a block: four B tiles of 16.
const BLOCK: usize = 64;

/// bf16 in a tile (16 rows of 32) and inputs per step.
const TILE: usize = 512;
const STEP: usize = 32;

/// The token MLP's weights, packed for [`AmxTokenMlp::apply`].
pub(super) struct AmxTokenMlp {
    amx: Amx,
    /// `S`, the first product's inputs.
    seq: usize,
    /// `inter(S)`, padded to whole steps.
    inter: usize,
    /// `seq.div_ceil(STEP)`.
    steps: usize,
    /// `gate_up_t` as A tiles: `[inter / 16][steps][gate, up][16][32]`.
    gate_up: Vec<u16>,
    /// `down_t` as A tiles: `[S.div_ceil(16)][inter / 32][16][32]`.
    down: Vec<u16>,
}

/// Per-thread scratch of [`AmxTokenMlp::apply`].
#[derive(Default)]
pub(super) struct AmxTokenScratch {
    /// The block's input in f32, `[S, BLOCK]`.
    input: Vec<f32>,
    /// The input as bf16 pairs of positions, `[steps * 16][BLOCK]`, each
    /// pair one `u32` (the even position in the low half).
    pairs: Vec<u32>,
    /// The gated activations as bf16 pairs of features, `[inter / 2][BLOCK]`.
    gated: Vec<u32>,
}

/// Two rows of f32 as bf16 pairs: `a` in the low halves, `b` in the high
/// ones (the layout of a B tile's row). Written whole words at a time so
/// that it vectorises.
#[inline(always)]
fn pair_rows(a: &[f32], b: &[f32], out: &mut [u32]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = u32::from(bf16_bits(a)) | (u32::from(bf16_bits(b)) << 16);
    }
}

impl AmxTokenMlp {
    /// `gate_up_t` (`[2 inter, S]` bf16 bits: gate rows, then up rows) and
    /// `down_t` (`[S, inter]`), official layouts.
    pub fn new(amx: Amx, gate_up_t: &[u16], down_t: &[u16], seq: usize, inter: usize) -> Self {
        let steps = seq.div_ceil(STEP);
        let padded = inter.next_multiple_of(STEP);
        let mut gate_up = vec![0; padded / 16 * steps * 2 * TILE];
        for feature in 0..inter {
            for (half, row) in [feature, inter + feature].into_iter().enumerate() {
                for (k, &v) in gate_up_t[row * seq..][..seq].iter().enumerate() {
                    let at = ((feature / 16 * steps + k / STEP) * 2 + half) * TILE
                        + feature % 16 * STEP
                        + k % STEP;
                    gate_up[at] = v;
                }
            }
        }
        let inner_steps = padded / STEP;
        let mut down = vec![0; seq.div_ceil(16) * inner_steps * TILE];
        for s in 0..seq {
            for (k, &v) in down_t[s * inter..][..inter].iter().enumerate() {
                let at = (s / 16 * inner_steps + k / STEP) * TILE + s % 16 * STEP + k % STEP;
                down[at] = v;
            }
        }
        AmxTokenMlp {
            amx,
            seq,
            inter: padded,
            steps,
            gate_up,
            down,
        }
    }

    /// Scratch for [`AmxTokenMlp::apply`] on one thread.
    pub fn scratch(&self) -> AmxTokenScratch {
        AmxTokenScratch {
            input: vec![0.0; self.seq * BLOCK],
            pairs: vec![0; self.steps * 16 * BLOCK],
            gated: vec![0; self.inter / 2 * BLOCK],
        }
    }

    /// `h = rms_norm_S(h + injection + mlp(h + injection))` on `h`
    /// (`[S, c]`, rows contiguous), a block of columns at a time; the
    /// injection, if any, is the same block of its own `[S, D]` buffer.
    pub fn apply(
        &self,
        mut h: MatMut<'_, f32>,
        injection: Option<(&[f32], usize)>,
        eps: f32,
        scratch: &mut AmxTokenScratch,
    ) {
        let c = h.ncols();
        for first in (0..c).step_by(BLOCK) {
            let cols = BLOCK.min(c - first);
            let h = h.rb_mut().subcols_mut(first, cols);
            let injection = injection.map(|(inj, stride)| (&inj[first..], stride));
            // SAFETY: an `Amx` token exists only where the CPU has AVX-512
            // F and BW as well (`Amx::detect`).
            #[allow(unsafe_code)]
            unsafe {
                block_avx512(self, h, injection, eps, scratch)
            };
        }
    }
}

/// One block of at most [`BLOCK`] columns; element-wise work compiled for
/// AVX-512 (every CPU with AMX has it).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
fn block_avx512(
    mlp: &AmxTokenMlp,
    mut h: MatMut<'_, f32>,
    injection: Option<(&[f32], usize)>,
    eps: f32,
    scratch: &mut AmxTokenScratch,
) {
    let (seq, cols) = (mlp.seq, h.ncols());
    let AmxTokenScratch {
        input,
        pairs,
        gated,
    } = scratch;
    let input = &mut input[..seq * BLOCK];

    // the block's input, contiguous and zero-padded to the block width,
    // and as bf16 pairs of positions (zero past S)
    for (i, dst) in input.chunks_exact_mut(BLOCK).enumerate() {
        let row = row_slice(h.rb_mut(), i);
        dst[..cols].copy_from_slice(row);
        if let Some((inj, stride)) = injection {
            let add = &inj[i * stride..][..cols];
            dst.iter_mut().zip(add).for_each(|(v, a)| *v += a);
        }
        dst[cols..].fill(0.0);
    }
    const ZERO: [f32; BLOCK] = [0.0; BLOCK];
    for (p, out) in pairs.chunks_exact_mut(BLOCK).enumerate() {
        let row = |s: usize| input.get(s * BLOCK..(s + 1) * BLOCK).unwrap_or(&ZERO);
        pair_rows(row(2 * p), row(2 * p + 1), out);
    }
    let pairs: &[u16] = bytemuck::cast_slice(pairs);

    let mut tiles = Tiles::new(mlp.amx, &pair_config(MAX_ROWS, MAX_ROWS));
    let mut results = [0f32; 2 * MAX_ROWS * 32];
    // B tiles of the block's pairs: 16 pair rows of BLOCK columns
    let b_stride = 4 * BLOCK;

    // gated = silu(gate_up_t @ input)[gate] * (...)[up], as bf16 pairs of
    // features
    for (tile, weights) in mlp.gate_up.chunks_exact(mlp.steps * 2 * TILE).enumerate() {
        for pair in 0..BLOCK / 32 {
            tiles.zero::<0>();
            tiles.zero::<1>();
            tiles.zero::<2>();
            tiles.zero::<3>();
            for s in 0..mlp.steps {
                tiles.load::<4, u16>(weights, s * 2 * TILE, 64);
                tiles.load::<5, u16>(weights, s * 2 * TILE + TILE, 64);
                let b = (s * 16 * BLOCK + pair * 32) * 2;
                tiles.load::<6, u16>(pairs, b, b_stride);
                tiles.load::<7, u16>(pairs, b + 32, b_stride);
                tiles.dp_bf16::<0, 4, 6>();
                tiles.dp_bf16::<1, 4, 7>();
                tiles.dp_bf16::<2, 5, 6>();
                tiles.dp_bf16::<3, 5, 7>();
            }
            // rows 0..16: gate features, 16..32: up, by 32 columns
            tiles.store::<0, f32>(&mut results, 0, 128);
            tiles.store::<1, f32>(&mut results, 16, 128);
            tiles.store::<2, f32>(&mut results, 16 * 32, 128);
            tiles.store::<3, f32>(&mut results, 16 * 32 + 16, 128);
            let mut values = [0f32; 16 * 32];
            for ((v, &g), &u) in values.iter_mut().zip(&results).zip(&results[16 * 32..]) {
                *v = silu(g) * u;
            }
            // features 2j and 2j + 1 make pair row 8 tile + j
            for (j, two) in values.chunks_exact(64).enumerate() {
                let out = &mut gated[(tile * 8 + j) * BLOCK + pair * 32..][..32];
                pair_rows(&two[..32], &two[32..], out);
            }
        }
    }
    let gated: &[u16] = bytemuck::cast_slice(gated);

    // input += down_t @ gated, and each column's sum of squares
    let inner_steps = mlp.inter / STEP;
    let mut sums = [0f32; BLOCK];
    for (first, h0, h1) in row_pairs(seq) {
        tiles.configure(&pair_config(h0, h1));
        let a0 = first / 16 * inner_steps * TILE;
        let a1 = a0 + inner_steps * TILE;
        for pair in 0..BLOCK / 32 {
            tiles.zero::<0>();
            tiles.zero::<1>();
            if h1 > 0 {
                tiles.zero::<2>();
                tiles.zero::<3>();
            }
            for s in 0..inner_steps {
                tiles.load::<4, u16>(&mlp.down, a0 + s * TILE, 64);
                let b = (s * 16 * BLOCK + pair * 32) * 2;
                tiles.load::<6, u16>(gated, b, b_stride);
                tiles.load::<7, u16>(gated, b + 32, b_stride);
                tiles.dp_bf16::<0, 4, 6>();
                tiles.dp_bf16::<1, 4, 7>();
                if h1 > 0 {
                    tiles.load::<5, u16>(&mlp.down, a1 + s * TILE, 64);
                    tiles.dp_bf16::<2, 5, 6>();
                    tiles.dp_bf16::<3, 5, 7>();
                }
            }
            tiles.store::<0, f32>(&mut results, 0, 128);
            tiles.store::<1, f32>(&mut results, 16, 128);
            if h1 > 0 {
                tiles.store::<2, f32>(&mut results, 16 * 32, 128);
                tiles.store::<3, f32>(&mut results, 16 * 32 + 16, 128);
            }
            for (t, update) in results.chunks_exact(32).take(h0 + h1).enumerate() {
                let row = &mut input[(first + t) * BLOCK + pair * 32..][..32];
                let sums = &mut sums[pair * 32..][..32];
                for ((v, &u), s) in row.iter_mut().zip(update).zip(sums.iter_mut()) {
                    *v += u;
                    *s += *v * *v;
                }
            }
        }
    }
    drop(tiles);

    // the norm over the sequence axis of every column
    for s in sums.iter_mut() {
        *s = 1.0 / (*s / seq as f32 + eps).sqrt();
    }
    for (i, src) in input.chunks_exact(BLOCK).enumerate() {
        let row = row_slice(h.rb_mut(), i);
        for ((v, &x), &scale) in row.iter_mut().zip(src).zip(sums.iter()) {
            *v = x * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::mat_mut;
    use crate::cpu::test_values::values;

    fn bf16(v: &[f32]) -> Vec<u16> {
        v.iter().map(|&x| bf16_bits(x)).collect()
    }

    fn round(x: f64) -> f64 {
        f64::from(half::bf16::from_f64(x).to_f32())
    }

    /// `rms_norm_S(t + down_t @ gate(gate_up_t @ t))`, `t = h + injection`,
    /// in float64 on the bf16 weights, each product's inputs rounded to
    /// bf16 as the kernel rounds them, `[S, D]`.
    fn reference(
        gu: &[u16],
        dn: &[u16],
        t: &[f64],
        seq: usize,
        inter: usize,
        d: usize,
    ) -> Vec<f64> {
        let w = |v: u16| f64::from(half::bf16::from_bits(v).to_f32());
        let mut out = t.to_vec();
        for col in 0..d {
            let gated: Vec<f64> = (0..inter)
                .map(|f| {
                    let dot = |row: usize| -> f64 {
                        (0..seq)
                            .map(|k| w(gu[row * seq + k]) * round(t[k * d + col]))
                            .sum()
                    };
                    let (g, u) = (dot(f), dot(inter + f));
                    round(g / (1.0 + (-g).exp()) * u)
                })
                .collect();
            let mut squares = 0.0;
            for s in 0..seq {
                let update: f64 = (0..inter).map(|f| w(dn[s * inter + f]) * gated[f]).sum();
                out[s * d + col] += update;
                squares += out[s * d + col] * out[s * d + col];
            }
            let scale = 1.0 / (squares / seq as f64 + 1e-5).sqrt();
            (0..seq).for_each(|s| out[s * d + col] *= scale);
        }
        out
    }

    #[test]
    fn matches_float64_on_the_rounded_inputs() {
        let Some(amx) = Amx::detect() else {
            eprintln!("SKIPPED: this CPU (or OS) has no AMX");
            return;
        };
        // S 13 (one row tile), 97 (seven: three pairs and one of a row),
        // 33 (a pair of 16 and 1 after one); inter not a multiple of a step;
        // 70 columns split 50 + 20: partial blocks
        for (seq, inter, d) in [(13, 10, 70), (97, 512, 64), (33, 40, 130), (1, 1, 3)] {
            let gu = bf16(&values(2 * inter * seq, 3));
            let dn = bf16(&values(seq * inter, 5));
            let mlp = AmxTokenMlp::new(amx, &gu, &dn, seq, inter);
            let mut scratch = mlp.scratch();
            for with_injection in [false, true] {
                let mut h = values(seq * d, 11);
                let inj = values(seq * d, 13);
                // the sum in f32, as the kernel adds it
                let t: Vec<f64> = h
                    .iter()
                    .zip(&inj)
                    .map(|(&h, &i)| f64::from(if with_injection { h + i } else { h }))
                    .collect();
                let want = reference(&gu, &dn, &t, seq, inter, d);
                let split = d.min(50);
                let (a, b) = mat_mut(&mut h, seq, d).split_at_col_mut(split);
                let injection = with_injection.then_some((&inj[..], d));
                mlp.apply(a, injection, 1e-5, &mut scratch);
                let injection = with_injection.then(|| (&inj[split..], d));
                mlp.apply(b, injection, 1e-5, &mut scratch);
                let (worst, at) = h
                    .iter()
                    .zip(&want)
                    .map(|(&g, &w)| (g as f64 - w).abs() / (1.0 + w.abs()))
                    .enumerate()
                    .fold((0.0, 0), |m, (i, e)| if e > m.0 { (e, i) } else { m });
                // the inputs are rounded the same on both sides; a gated
                // value, from f32 sums in the kernel and float64 ones
                // here, can round to neighbouring bf16 values (1 in 2^8
                // apart), which moves the outputs it reaches by up to about
                // 1e-3; a wrong layout or padding moves them by O(1)
                assert!(
                    worst < 2e-3,
                    "S {seq} inter {inter} D {d} injection {with_injection}: error {worst:e} at {at}"
                );
            }
        }
    }
}
