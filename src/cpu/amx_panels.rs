//! The channel SwiGLU's two products (and attention's projections) on AMX
//! tiles in bf16 with f32 accumulation: the engine's `matched` activations
//! at bf16 weights, where the CPU has AMX (`amx.rs`).
//!
//! Numerics: the weights are the model's bf16 values, exactly; each
//! product's input rows are rounded to bf16 (to nearest even) when the
//! product runs, and `tdpbf16ps` accumulates their products in f32. That
//! rounding, at most 2^-9 relative per input, is the only difference from
//! the f32 products on the same weights (`panels.rs`); the SwiGLU gate,
//! residual and norm stay f32. The gate's output is written in bf16 at
//! once, as the second product's input.
//!
//! Layout: as in `panels.rs`, output features lie along the tiles' columns
//! and the tokens along their rows. A panel pair is two B tiles wide (32
//! features; for a SwiGLU 16 gate features, then the same 16 up features)
//! and, for each step of 32 inputs, holds its two tiles of 16 rows of bf16
//! pairs (`[steps][2][16][16][2]`, 2 KiB a step), one forward stream.
//! Inputs past the last are zero (the input rows are zero-padded as well:
//! 0 x NaN would be NaN), features past the last too, and never written
//! out.
//!
//! The input rows are laid out in tiles as well when they are rounded to
//! bf16 (`[row pairs][steps][2][16][32]`: every A tile 1 KiB in one piece):
//! measured against rows read in place at their stride, 1.15-1.25x.
//!
//! The kernel: for each panel pair, every pair of row tiles (32 tokens) in
//! turn, 2x2 tiles of results (two row tiles by the pair's two B tiles),
//! four tile products per four tile loads; the results go through the
//! epilogue (gate, or copy) as they leave the tiles. A row block's last
//! pair of tiles has the rows that are left (the tiles are configured for
//! them, no padded rows are multiplied), and the pairs run in a serpentine
//! order so that the configuration changes once per panel pair at most.
// off x86-64 the AVX-512 epilogues are plain functions (never called:
// no `Amx` token exists there), so their unsafe blocks are not needed
#![cfg_attr(not(target_arch = "x86_64"), allow(unused_unsafe))]

use super::amx::{Amx, MAX_ROWS, Tiles, pair_config, row_pairs};
use super::ops::{bf16_bits, silu};
use super::panels::{CacheLine, huge_page_aligned, source_row};

/// Inputs per step: the bf16 in a tile row.
const STEP: usize = 32;

/// bf16 in one B tile (16 rows of 32).
const TILE: usize = 512;

/// Output features of a panel pair (two tiles of 16 columns).
const PAIR: usize = 32;

/// Where [`AmxBf16Panels::apply`] writes its outputs.
pub(super) enum Out<'a> {
    /// `[rows, outputs]` f32.
    F32(&'a mut [f32]),
    /// bf16 in the tile layout of the inputs of a next product of `steps`
    /// steps ([`AmxBf16Panels::load_rows`]), zero past `outputs`.
    Bf16 { data: &'a mut [u16], steps: usize },
}

/// Where input `k` of row `row` lies in the tile layout of inputs of
/// `steps` steps: `[row / 32][k / 32][row % 32 / 16][row % 16][k % 32]`.
#[inline(always)]
fn tiled(row: usize, k: usize, steps: usize) -> usize {
    ((row / 32 * steps + k / STEP) * 2 + row % 32 / 16) * TILE + row % 16 * STEP + k % STEP
}

/// A bf16 weight packed for [`AmxBf16Panels::apply`].
pub(super) struct AmxBf16Panels {
    amx: Amx,
    inputs: usize,
    /// `inputs.div_ceil(STEP)`.
    steps: usize,
    outputs: usize,
    /// SwiGLU: 16 gate and 16 up features per panel pair, gated on output.
    gated: bool,
    /// `[pairs][steps][2][TILE]` bf16 from `memory[start..]`, on huge pages
    /// as in `panels.rs`.
    memory: Vec<CacheLine>,
    start: usize,
}

impl AmxBf16Panels {
    /// `w` (`[outputs, inputs]` bf16 bits, official layout) for `out = a @
    /// w^T`.
    pub fn plain(amx: Amx, w: &[u16], outputs: usize, inputs: usize) -> Self {
        Self::pack(amx, w, outputs, inputs, false)
    }

    /// `w` (`[2 outputs, inputs]` bf16 bits: gate rows, then up rows) for
    /// `out = silu(a @ gate^T) * (a @ up^T)`.
    pub fn swiglu(amx: Amx, w: &[u16], outputs: usize, inputs: usize) -> Self {
        Self::pack(amx, w, outputs, inputs, true)
    }

    fn pack(amx: Amx, w: &[u16], outputs: usize, inputs: usize, gated: bool) -> Self {
        let steps = inputs.div_ceil(STEP);
        let per_pair = if gated { PAIR / 2 } else { PAIR };
        let pairs = outputs.div_ceil(per_pair);
        let pair_len = steps * 2 * TILE;
        let (mut memory, start) = huge_page_aligned((pairs * pair_len).div_ceil(32));
        let packed: &mut [u16] = bytemuck::cast_slice_mut(&mut memory[start..]);
        for pair in 0..pairs {
            for slot in 0..PAIR {
                let Some(row) = source_row(pair, slot, per_pair, outputs) else {
                    continue; // zero padding
                };
                let (tile, column) = (slot / 16, slot % 16);
                for (k, &v) in w[row * inputs..][..inputs].iter().enumerate() {
                    let (step, within) = (k / STEP, k % STEP);
                    let at = (pair * steps + step) * 2 * TILE
                        + tile * TILE
                        + within / 2 * 32
                        + column * 2
                        + within % 2;
                    packed[at] = v;
                }
            }
        }
        AmxBf16Panels {
            amx,
            inputs,
            steps,
            outputs,
            gated,
            memory,
            start,
        }
    }

    /// Inputs of a row (the reduction length).
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Output features of a row.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Steps of 32 inputs.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// bf16 the inputs of `rows` rows take in the tile layout of
    /// [`AmxBf16Panels::load_rows`].
    pub fn input_len(&self, rows: usize) -> usize {
        input_len(rows, self.steps)
    }

    /// `rows` (`[r, inputs]` f32) rounded to bf16 into `dst` in the tile
    /// layout `apply` reads; returns that part of `dst`.
    pub fn load_rows<'a>(&self, rows: &[f32], dst: &'a mut [u16]) -> &'a mut [u16] {
        let r = rows.len() / self.inputs.max(1);
        let dst = &mut dst[..self.input_len(r)];
        // SAFETY: an `Amx` token exists only where the CPU has AVX-512 F
        // and BW as well (`Amx::detect`).
        #[allow(unsafe_code)]
        unsafe {
            rows_to_tiles_avx512(rows, self.inputs, dst, self.steps)
        };
        dst
    }

    /// `out` from `rows` rows of bf16 inputs in tile layout (`a`, from
    /// [`AmxBf16Panels::load_rows`] or a previous product's
    /// [`Out::Bf16`]): `a @ w^T`, or the gated SwiGLU of it.
    pub fn apply(&self, a: &[u16], rows: usize, out: Out<'_>) {
        assert!(
            a.len() >= self.input_len(rows),
            "bf16 product of {rows} rows"
        );
        match &out {
            Out::F32(o) => assert_eq!(o.len(), rows * self.outputs),
            Out::Bf16 { data, steps } => {
                assert!(steps * STEP >= self.outputs && data.len() >= input_len(rows, *steps))
            }
        }
        if rows == 0 {
            return;
        }
        // SAFETY: as in `load_rows`.
        #[allow(unsafe_code)]
        unsafe {
            apply_avx512(self, a, rows, out)
        }
    }
}

/// bf16 of the inputs of `rows` rows of `steps` steps in tile layout.
fn input_len(rows: usize, steps: usize) -> usize {
    rows.div_ceil(2 * MAX_ROWS) * steps * 2 * TILE
}

/// The rows of `src` (`width` f32 each) rounded to bf16 into `dst` in the
/// tile layout of `steps` steps, zero from `width` on; compiled for
/// AVX-512.
#[cfg_attr(
    target_arch = "x86_64",
    target_feature(enable = "avx512f,avx512bw,avx2,fma")
)]
fn rows_to_tiles_avx512(src: &[f32], width: usize, dst: &mut [u16], steps: usize) {
    for (r, row) in src.chunks_exact(width).enumerate() {
        for (s, chunk) in row.chunks(STEP).enumerate() {
            let out = &mut dst[tiled(r, s * STEP, steps)..][..STEP];
            for (o, &v) in out.iter_mut().zip(chunk) {
                *o = bf16_bits(v);
            }
            out[chunk.len()..].fill(0);
        }
        for s in width.div_ceil(STEP)..steps {
            dst[tiled(r, s * STEP, steps)..][..STEP].fill(0);
        }
    }
}

/// [`AmxBf16Panels::apply`] on checked arguments; the epilogue compiled for
/// AVX-512 (every CPU with AMX has it).
#[cfg_attr(
    target_arch = "x86_64",
    target_feature(enable = "avx512f,avx512bw,avx2,fma")
)]
fn apply_avx512(w: &AmxBf16Panels, a: &[u16], rows: usize, mut out: Out<'_>) {
    let packed: &[u16] = bytemuck::cast_slice(&w.memory[w.start..]);
    let per_pair = if w.gated { PAIR / 2 } else { PAIR };
    let pair_len = w.steps * 2 * TILE;
    let mut tiles = Tiles::new(w.amx, &pair_config(MAX_ROWS, MAX_ROWS));
    let mut results = [0f32; 2 * MAX_ROWS * PAIR];
    let pairs = w.outputs.div_ceil(per_pair);
    for (p, panel) in packed.chunks_exact(pair_len).take(pairs).enumerate() {
        let first_col = p * per_pair;
        let cols = per_pair.min(w.outputs - first_col);
        let mut block = |(first, h0, h1): (usize, usize, usize)| {
            let a = &a[first / (2 * MAX_ROWS) * w.steps * 2 * TILE..][..w.steps * 2 * TILE];
            multiply_pair(&mut tiles, a, h0, h1, panel, w.steps, &mut results);
            for (t, sums) in results.chunks_exact(PAIR).take(h0 + h1).enumerate() {
                let row = first + t;
                let mut values = [0f32; PAIR];
                if w.gated {
                    let (gate, up) = sums.split_at(PAIR / 2);
                    for ((v, &g), &u) in values.iter_mut().zip(gate).zip(up) {
                        *v = silu(g) * u;
                    }
                } else {
                    values.copy_from_slice(sums);
                }
                match &mut out {
                    Out::F32(o) => {
                        o[row * w.outputs + first_col..][..cols].copy_from_slice(&values[..cols])
                    }
                    Out::Bf16 { data, steps } => {
                        // within one step: a gated pair's 16 features, or
                        // a plain pair's 32
                        let dst = &mut data[tiled(row, first_col, *steps)..][..cols];
                        for (d, &v) in dst.iter_mut().zip(&values) {
                            *d = bf16_bits(v);
                        }
                    }
                }
            }
        };
        // serpentine: the last pair of one panel is the first of the next
        if p % 2 == 0 {
            row_pairs(rows).for_each(&mut block);
        } else {
            row_pairs(rows).rev().for_each(&mut block);
        }
    }
    // the next product's inputs past the last output are zero
    if let Out::Bf16 { data, steps } = out {
        for row in 0..rows {
            let mut k = w.outputs;
            while k < steps * STEP {
                let (first, len) = (tiled(row, k, steps), STEP - k % STEP);
                data[first..first + len].fill(0);
                k += len;
            }
        }
    }
}

/// The 2x2 tile block: a pair of row tiles of `h0` and `h1` rows (`h1` =
/// 0: one row tile; `a` their `[steps][2][TILE]` inputs) times a panel
/// pair, into `results` (`[h0 + h1][PAIR]`).
#[inline(always)]
fn multiply_pair(
    tiles: &mut Tiles,
    a: &[u16],
    h0: usize,
    h1: usize,
    panel: &[u16],
    steps: usize,
    results: &mut [f32],
) {
    tiles.configure(&pair_config(h0, h1));
    tiles.zero::<0>();
    tiles.zero::<1>();
    if h1 > 0 {
        tiles.zero::<2>();
        tiles.zero::<3>();
        for s in 0..steps {
            tiles.load::<6, u16>(panel, s * 2 * TILE, 64);
            tiles.load::<7, u16>(panel, s * 2 * TILE + TILE, 64);
            tiles.load::<4, u16>(a, s * 2 * TILE, 64);
            tiles.load::<5, u16>(a, s * 2 * TILE + TILE, 64);
            tiles.dp_bf16::<0, 4, 6>();
            tiles.dp_bf16::<1, 4, 7>();
            tiles.dp_bf16::<2, 5, 6>();
            tiles.dp_bf16::<3, 5, 7>();
        }
        tiles.store::<2, f32>(results, MAX_ROWS * PAIR, 4 * PAIR);
        tiles.store::<3, f32>(results, MAX_ROWS * PAIR + 16, 4 * PAIR);
    } else {
        for s in 0..steps {
            tiles.load::<6, u16>(panel, s * 2 * TILE, 64);
            tiles.load::<7, u16>(panel, s * 2 * TILE + TILE, 64);
            tiles.load::<4, u16>(a, s * 2 * TILE, 64);
            tiles.dp_bf16::<0, 4, 6>();
            tiles.dp_bf16::<1, 4, 7>();
        }
    }
    tiles.store::<0, f32>(results, 0, 4 * PAIR);
    tiles.store::<1, f32>(results, 16, 4 * PAIR);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values::values;

    fn bf16(v: &[f32]) -> Vec<u16> {
        v.iter().map(|&x| bf16_bits(x)).collect()
    }

    fn widen(v: &[u16]) -> Vec<f64> {
        v.iter()
            .map(|&b| f64::from(half::bf16::from_bits(b).to_f32()))
            .collect()
    }

    #[test]
    fn products_match_float64_on_the_rounded_inputs() {
        let Some(amx) = Amx::detect() else {
            eprintln!("SKIPPED: this CPU (or OS) has no AMX");
            return;
        };
        // outputs not a multiple of a panel pair, inputs not a multiple of
        // a step, rows covering single tiles, pairs and a last odd pair
        for (outputs, inputs) in [(37, 19), (64, 40), (5, 3), (40, 1203), (512, 64)] {
            let w = bf16(&values(2 * outputs * inputs, 7));
            let wd = widen(&w);
            let plain = AmxBf16Panels::plain(amx, &w, outputs, inputs);
            let swiglu = AmxBf16Panels::swiglu(amx, &w, outputs, inputs);
            for rows in [1, 2, 15, 16, 17, 31, 32, 33, 48, 49, 97, 256] {
                let a = values(rows * inputs, rows as u32 + 3);
                let mut a16 = vec![u16::MAX; plain.input_len(rows)];
                let a16 = plain.load_rows(&a, &mut a16);
                let ad = widen(&bf16(&a));
                let dot = |r: usize, o: usize| -> f64 {
                    (0..inputs)
                        .map(|k| ad[r * inputs + k] * wd[o * inputs + k])
                        .sum()
                };
                let mut out = vec![f32::NAN; rows * outputs];
                plain.apply(a16, rows, Out::F32(&mut out));
                // the gated outputs as the inputs of a product with a
                // step more than they need
                let steps = outputs.div_ceil(STEP) + 1;
                let mut gated = vec![u16::MAX; input_len(rows, steps)];
                swiglu.apply(
                    a16,
                    rows,
                    Out::Bf16 {
                        data: &mut gated,
                        steps,
                    },
                );
                for (i, &got) in out.iter().enumerate() {
                    let (r, o) = (i / outputs, i % outputs);
                    let want = dot(r, o);
                    let got = f64::from(got);
                    // f32 accumulation of up to 1203 products
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "plain {rows}x{outputs}x{inputs} at {i}: {got} vs {want}"
                    );
                    let want = want / (1.0 + (-want).exp()) * dot(r, outputs + o);
                    let got = f64::from(half::bf16::from_bits(gated[tiled(r, o, steps)]));
                    // and the gate's output rounded to bf16
                    assert!(
                        (got - want).abs() <= 4e-3 * want.abs() + 1e-5,
                        "swiglu {rows}x{outputs}x{inputs} at {i}: {got} vs {want}"
                    );
                }
                // the padding of the next product's rows is zero
                for r in 0..rows {
                    for k in outputs..steps * STEP {
                        assert_eq!(gated[tiled(r, k, steps)], 0, "row {r} input {k}");
                    }
                }
            }
        }
    }
}
