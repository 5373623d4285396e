//! The token-mixing MLP of one puzzle's column block on AMX tiles
//! (`amx.rs`), for the engine's `matched` activations: `h = rms_norm_S(h +
//! down_t @ gate(gate_up_t @ h))` on `h` `[S, c]`, as `token_panels.rs`
//! computes it in f32, either
//!
//! - in bf16 (bf16 weights): the weights exactly, each product's inputs
//!   rounded to bf16, f32 accumulation (`tdpbf16ps`), as `amx_panels.rs`;
//! - or in int8 (int8 weights): the weights' int8 values with their row
//!   scales, each product's inputs quantized per column of the state (the
//!   token mixer's products reduce along S, so a column is what a token is
//!   to the channel products: scale `max |a| / 127` over the column, round
//!   to nearest even), exact i32 sums (`tdpbssd`), then `sum * (s_a *
//!   s_w)` in f32 as in `int8_panels.rs`.
//!
//! Both products multiply a weight from the left, so here the weights are
//! the A tiles (16 rows of 64 bytes: features or positions by inputs),
//! packed once, and the activations the B tiles (16 rows of 16 columns of
//! the state, each a pair of bf16 or a group of four bytes of consecutive
//! inputs), laid out per block of 64 columns:
//!
//! - the block's input `[S, 64]` (with the injection added) is kept in f32
//!   for the residual, and packed into pairs (groups) of positions, zero
//!   from `S` to whole steps;
//! - `gate_up_t @ input`: each 2x2 tile block is 16 gate features and the
//!   same 16 up features (the A tiles) by 32 columns (the B tiles), so the
//!   gate is applied as the results leave the tiles (bf16: written at once
//!   as the second product's B tiles; int8: kept in f32 until every
//!   feature's is known, the column scales need them all);
//! - `down_t @ gated`: 2x2 tile blocks of positions by columns (the last
//!   pair of row tiles configured for the positions that are left), the
//!   residual added and the sums of squares of the norm over `S` taken as
//!   the results leave the tiles.
// off x86-64 the AVX-512 epilogues are plain functions (never called:
// no `Amx` token exists there), so their unsafe blocks are not needed
#![cfg_attr(not(target_arch = "x86_64"), allow(unused_unsafe))]

use faer::MatMut;
use faer::reborrow::ReborrowMut;

use super::amx::{Amx, MAX_ROWS, ROW_BYTES, Tiles, pair_config, row_pairs};
use super::ops::{bf16_bits, row_slice, silu};

/// Columns of a block: four B tiles of 16.
const BLOCK: usize = 64;

/// Bytes in a tile (16 rows of 64).
const TILE_BYTES: usize = MAX_ROWS * ROW_BYTES;

/// The packed weights of one element type.
enum Weights {
    /// bf16 bits.
    Bf16 { gate_up: Vec<u16>, down: Vec<u16> },
    /// int8 values (as bytes) and the rows' scales: `gate_scales` and
    /// `up_scales` `[inter]` (zero past the last feature), `down_scales`
    /// `[S]`.
    Int8 {
        gate_up: Vec<u8>,
        down: Vec<u8>,
        gate_scales: Vec<f32>,
        up_scales: Vec<f32>,
        down_scales: Vec<f32>,
    },
}

/// The token MLP's weights, packed for [`AmxTokenMlp::apply`].
pub(super) struct AmxTokenMlp {
    amx: Amx,
    /// `S`, the first product's inputs.
    seq: usize,
    /// `inter(S)`, padded to whole steps.
    inter: usize,
    /// Inputs per step (32 bf16 or 64 bytes in a tile row).
    step: usize,
    /// `seq.div_ceil(step)`.
    steps: usize,
    /// `gate_up_t` as A tiles, `[inter / 16][steps][gate, up][16][step]`,
    /// and `down_t`, `[S.div_ceil(16)][inter / step][16][step]`.
    weights: Weights,
}

/// Per-thread scratch of [`AmxTokenMlp::apply`].
#[derive(Default)]
pub(super) struct AmxTokenScratch {
    /// The block's input in f32, `[S, BLOCK]`.
    input: Vec<f32>,
    /// The input packed for the B tiles, `[steps * 16][BLOCK]`: each `u32`
    /// a pair (bf16) or group of four (int8) consecutive positions, the
    /// first in the low bits.
    packed: Vec<u32>,
    /// The gated activations packed the same way, `[inter / (step / 16)][BLOCK]`.
    gated: Vec<u32>,
    /// int8: the gated activations in f32, `[inter][BLOCK]`.
    gated_f32: Vec<f32>,
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

/// Four rows of f32 quantized by column (`inv[c]` = 127 / max of column
/// `c`) into groups of four signed bytes, the first row in the low byte.
/// Rounds to nearest even as `int8_panels.rs` does (adding 1.5 * 2^23
/// leaves the integer in the low mantissa bits), which vectorises.
#[inline(always)]
fn quad_rows(rows: [&[f32]; 4], inv: &[f32], out: &mut [u32]) {
    const ROUND: f32 = 12_582_912.0;
    let q = |v: f32, inv: f32| ((v * inv).clamp(-127.0, 127.0) + ROUND).to_bits() & 0xff;
    for (c, o) in out.iter_mut().enumerate() {
        *o = q(rows[0][c], inv[c])
            | q(rows[1][c], inv[c]) << 8
            | q(rows[2][c], inv[c]) << 16
            | q(rows[3][c], inv[c]) << 24;
    }
}

/// The quantization of each column of `rows` (`[n][BLOCK]` f32): scale
/// `max |v| / 127` into `scales`, its inverse into `inv` (a zero column:
/// both 0; a non-finite one: a NaN scale, so that its outputs are NaN as
/// in f32).
#[inline(always)]
fn column_scales(rows: &[f32], scales: &mut [f32; BLOCK], inv: &mut [f32; BLOCK]) {
    let larger = |m: f32, v: f32| if v <= m { m } else { v };
    let mut max = [0f32; BLOCK];
    for row in rows.chunks_exact(BLOCK) {
        for (m, &v) in max.iter_mut().zip(row) {
            *m = larger(*m, v.abs());
        }
    }
    for ((s, i), &m) in scales.iter_mut().zip(inv.iter_mut()).zip(&max) {
        (*s, *i) = if m > 0.0 && m.is_finite() {
            (m / 127.0, 127.0 / m)
        } else if m == 0.0 {
            (0.0, 0.0)
        } else {
            (f32::NAN, 0.0)
        };
    }
}

/// `gate_up_t` (`[2 inter, S]`: gate rows, then up rows) as A tiles of
/// `step` inputs, features padded to `padded`.
fn pack_gate_up<T: Copy + Default>(w: &[T], seq: usize, inter: usize, padded: usize) -> Vec<T> {
    let step = ROW_BYTES / size_of::<T>();
    let steps = seq.div_ceil(step);
    let tile = TILE_BYTES / size_of::<T>();
    let mut out = vec![T::default(); padded / 16 * steps * 2 * tile];
    for feature in 0..inter {
        for (half, row) in [feature, inter + feature].into_iter().enumerate() {
            for (k, &v) in w[row * seq..][..seq].iter().enumerate() {
                let at = ((feature / 16 * steps + k / step) * 2 + half) * tile
                    + feature % 16 * step
                    + k % step;
                out[at] = v;
            }
        }
    }
    out
}

/// `down_t` (`[S, inter]`) as A tiles of `step` inputs, features padded to
/// `padded`.
fn pack_down<T: Copy + Default>(w: &[T], seq: usize, inter: usize, padded: usize) -> Vec<T> {
    let step = ROW_BYTES / size_of::<T>();
    let tile = TILE_BYTES / size_of::<T>();
    let inner_steps = padded / step;
    let mut out = vec![T::default(); seq.div_ceil(16) * inner_steps * tile];
    for s in 0..seq {
        for (k, &v) in w[s * inter..][..inter].iter().enumerate() {
            out[(s / 16 * inner_steps + k / step) * tile + s % 16 * step + k % step] = v;
        }
    }
    out
}

impl AmxTokenMlp {
    /// bf16 weights: `gate_up_t` (`[2 inter, S]` bf16 bits: gate rows, then
    /// up rows) and `down_t` (`[S, inter]`), official layouts.
    pub fn bf16(amx: Amx, gate_up_t: &[u16], down_t: &[u16], seq: usize, inter: usize) -> Self {
        let padded = inter.next_multiple_of(ROW_BYTES);
        AmxTokenMlp {
            amx,
            seq,
            inter: padded,
            step: ROW_BYTES / 2,
            steps: seq.div_ceil(ROW_BYTES / 2),
            weights: Weights::Bf16 {
                gate_up: pack_gate_up(gate_up_t, seq, inter, padded),
                down: pack_down(down_t, seq, inter, padded),
            },
        }
    }

    /// int8 weights as bytes, official layouts as in [`AmxTokenMlp::bf16`],
    /// with one scale per row.
    pub fn int8(
        amx: Amx,
        (gate_up_t, gate_up_scales): (&[u8], &[f32]),
        (down_t, down_scales): (&[u8], &[f32]),
        seq: usize,
        inter: usize,
    ) -> Self {
        let padded = inter.next_multiple_of(ROW_BYTES);
        let mut gate_scales = gate_up_scales[..inter].to_vec();
        let mut up_scales = gate_up_scales[inter..2 * inter].to_vec();
        gate_scales.resize(padded, 0.0);
        up_scales.resize(padded, 0.0);
        AmxTokenMlp {
            amx,
            seq,
            inter: padded,
            step: ROW_BYTES,
            steps: seq.div_ceil(ROW_BYTES),
            weights: Weights::Int8 {
                gate_up: pack_gate_up(gate_up_t, seq, inter, padded),
                down: pack_down(down_t, seq, inter, padded),
                gate_scales,
                up_scales,
                down_scales: down_scales.to_vec(),
            },
        }
    }

    /// Bytes of [`AmxTokenMlp::scratch`] (what the engine checks against
    /// its memory limit before allocating it).
    pub fn scratch_bytes(&self) -> u64 {
        let per_word = (self.step / 16) as u64;
        let (seq, inter, block) = (self.seq as u64, self.inter as u64, BLOCK as u64);
        let gated_f32 = match self.weights {
            Weights::Int8 { .. } => inter * block,
            Weights::Bf16 { .. } => 0,
        };
        4 * (seq * block + self.steps as u64 * 16 * block + inter / per_word * block + gated_f32)
    }

    /// Scratch for [`AmxTokenMlp::apply`] on one thread.
    pub fn scratch(&self) -> AmxTokenScratch {
        let per_word = self.step / 16;
        AmxTokenScratch {
            input: vec![0.0; self.seq * BLOCK],
            packed: vec![0; self.steps * 16 * BLOCK],
            gated: vec![0; self.inter / per_word * BLOCK],
            gated_f32: match self.weights {
                Weights::Int8 { .. } => vec![0.0; self.inter * BLOCK],
                Weights::Bf16 { .. } => Vec::new(),
            },
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

/// The 2x2 tile block `C += A B` over `steps` steps: A tiles 4 and 5 from
/// `a` (their first elements `a0` and `a1`, `a_step` tiles further each
/// step), B
/// tiles 6 and 7 from `b` (from element `b0` and 16 columns further; rows
/// of `BLOCK` words, 16 rows further each step); tile 5 and its results
/// only with `a1` (else tiles 2, 3 and 5 are not configured).
#[inline(always)]
fn multiply<const INT8: bool, T: bytemuck::Pod>(
    tiles: &mut Tiles,
    (a, a0, a1, a_step): (&[T], usize, Option<usize>, usize),
    (b, b0): (&[T], usize),
    steps: usize,
) {
    let tile = a_step * TILE_BYTES / size_of::<T>();
    // a word of B is one column's pair (group)
    let words = 4 / size_of::<T>();
    let b_stride = BLOCK * 4;
    tiles.zero::<0>();
    tiles.zero::<1>();
    if a1.is_some() {
        tiles.zero::<2>();
        tiles.zero::<3>();
    }
    for s in 0..steps {
        // the weights' tiles two steps ahead (as `amx_panels.rs`)
        let b_step = b0 + s * 16 * BLOCK * words;
        tiles.load::<4, T>(a, a0 + s * tile, ROW_BYTES);
        tiles.load::<6, T>(b, b_step, b_stride);
        tiles.load::<7, T>(b, b_step + 16 * words, b_stride);
        if INT8 {
            tiles.dp_i8i8::<0, 4, 6>();
            tiles.dp_i8i8::<1, 4, 7>();
        } else {
            tiles.dp_bf16::<0, 4, 6>();
            tiles.dp_bf16::<1, 4, 7>();
        }
        if let Some(a1) = a1 {
            tiles.load::<5, T>(a, a1 + s * tile, ROW_BYTES);
            if INT8 {
                tiles.dp_i8i8::<2, 5, 6>();
                tiles.dp_i8i8::<3, 5, 7>();
            } else {
                tiles.dp_bf16::<2, 5, 6>();
                tiles.dp_bf16::<3, 5, 7>();
            }
        }
    }
}

/// Stores the 2x2 results into `results` (`[32][32]` 4-byte values: rows
/// of tile 0 then 2, columns of tile 0 then 1); tiles 2 and 3 only if
/// `two`.
#[inline(always)]
fn store<T: bytemuck::Pod>(tiles: &mut Tiles, results: &mut [T], two: bool) {
    tiles.store::<0, T>(results, 0, 128);
    tiles.store::<1, T>(results, 16, 128);
    if two {
        tiles.store::<2, T>(results, 16 * 32, 128);
        tiles.store::<3, T>(results, 16 * 32 + 16, 128);
    }
}

/// The gate of one block of the first product, 16 features from `f0` by
/// the 32 columns of pair `pair`, from its results (rows 0..16: gate
/// sums, 16..32: up sums; f32 for bf16, i32 for int8) into `gated` (bf16
/// pairs) or `gated_f32` (int8, quantized once every feature is known).
#[inline(always)]
fn gate_epilogue(
    mlp: &AmxTokenMlp,
    results: &[f32; 2 * MAX_ROWS * 32],
    (f0, pair): (usize, usize),
    column_scales: &[f32; BLOCK],
    gated: &mut [u32],
    gated_f32: &mut [f32],
) {
    let mut values = [0f32; 16 * 32];
    match &mlp.weights {
        Weights::Bf16 { .. } => {
            let (gate, up) = results.split_at(16 * 32);
            for ((v, &g), &u) in values.iter_mut().zip(gate).zip(up) {
                *v = silu(g) * u;
            }
            // features 2j and 2j + 1 make pair row f0 / 2 + j
            for (j, two) in values.chunks_exact(64).enumerate() {
                let out = &mut gated[(f0 / 2 + j) * BLOCK + pair * 32..][..32];
                pair_rows(&two[..32], &two[32..], out);
            }
        }
        Weights::Int8 {
            gate_scales,
            up_scales,
            ..
        } => {
            let sums: &[i32] = bytemuck::cast_slice(results);
            let (gate, up) = sums.split_at(16 * 32);
            let columns = &column_scales[pair * 32..][..32];
            for (f, ((v, g), u)) in values
                .chunks_exact_mut(32)
                .zip(gate.chunks_exact(32))
                .zip(up.chunks_exact(32))
                .enumerate()
            {
                let (s_g, s_u) = (gate_scales[f0 + f], up_scales[f0 + f]);
                for (((v, &g), &u), &c) in v.iter_mut().zip(g).zip(u).zip(columns) {
                    let g = (g as f32) * (c * s_g);
                    *v = silu(g) * ((u as f32) * (c * s_u));
                }
            }
            for (f, v) in values.chunks_exact(32).enumerate() {
                gated_f32[(f0 + f) * BLOCK + pair * 32..][..32].copy_from_slice(v);
            }
        }
    }
}

/// One block of at most [`BLOCK`] columns; element-wise work compiled for
/// AVX-512 (every CPU with AMX has it).
#[cfg_attr(
    target_arch = "x86_64",
    target_feature(enable = "avx512f,avx512bw,avx2,fma")
)]
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
        packed,
        gated,
        gated_f32,
    } = scratch;
    let input = &mut input[..seq * BLOCK];

    // the block's input, contiguous and zero-padded to the block width
    for (i, dst) in input.chunks_exact_mut(BLOCK).enumerate() {
        let row = row_slice(h.rb_mut(), i);
        dst[..cols].copy_from_slice(row);
        if let Some((inj, stride)) = injection {
            let add = &inj[i * stride..][..cols];
            dst.iter_mut().zip(add).for_each(|(v, a)| *v += a);
        }
        dst[cols..].fill(0.0);
    }
    // ... and packed for the B tiles, zero past S
    const ZERO: [f32; BLOCK] = [0.0; BLOCK];
    let row = |s: usize| input.get(s * BLOCK..(s + 1) * BLOCK).unwrap_or(&ZERO);
    let (mut scales, mut inv) = ([0f32; BLOCK], [0f32; BLOCK]);
    match mlp.weights {
        Weights::Bf16 { .. } => {
            for (p, out) in packed.chunks_exact_mut(BLOCK).enumerate() {
                pair_rows(row(2 * p), row(2 * p + 1), out);
            }
        }
        Weights::Int8 { .. } => {
            column_scales(input, &mut scales, &mut inv);
            for (g, out) in packed.chunks_exact_mut(BLOCK).enumerate() {
                quad_rows(core::array::from_fn(|j| row(4 * g + j)), &inv, out);
            }
        }
    }

    let mut tiles = Tiles::new(mlp.amx, &pair_config(MAX_ROWS, MAX_ROWS));
    let mut results = [0f32; 2 * MAX_ROWS * 32];
    // elements of one column's word (a pair or a group) of the B tiles
    let words = mlp.step / 16;

    // gated = silu(gate_up_t @ input)[gate] * (...)[up], block by block
    // of 16 features by 32 columns, software-pipelined: a block's tile
    // products are issued before the previous block's gate epilogue, so
    // the tile unit works while the vector units run the epilogue (it is
    // as long as the products: 4 steps of 4 tile products per 512 SiLUs)
    let features = mlp.inter;
    let mut staged = [[0f32; 2 * MAX_ROWS * 32]; 2];
    let mut pending: Option<(usize, usize, usize)> = None;
    let blocks = (0..features)
        .step_by(16)
        .flat_map(|f0| (0..BLOCK / 32).map(move |pair| (f0, pair)));
    let mut epilogue = |(f0, pair, slot): (usize, usize, usize), staged: &[[f32; 1024]; 2]| {
        gate_epilogue(mlp, &staged[slot], (f0, pair), &scales, gated, gated_f32)
    };
    for (i, (f0, pair)) in blocks.enumerate() {
        let slot = i % 2;
        let b0 = pair * 32 * words;
        match &mlp.weights {
            Weights::Bf16 { gate_up, .. } => {
                let a0 = f0 / 16 * mlp.steps * 2 * (TILE_BYTES / 2);
                let a = (&gate_up[..], a0, Some(a0 + TILE_BYTES / 2), 2);
                let b: &[u16] = bytemuck::cast_slice(packed);
                multiply::<false, u16>(&mut tiles, a, (b, b0), mlp.steps);
            }
            Weights::Int8 { gate_up, .. } => {
                let a0 = f0 / 16 * mlp.steps * 2 * TILE_BYTES;
                let a = (&gate_up[..], a0, Some(a0 + TILE_BYTES), 2);
                let b: &[u8] = bytemuck::cast_slice(packed);
                multiply::<true, u8>(&mut tiles, a, (b, b0), mlp.steps);
            }
        }
        if let Some(previous) = pending {
            epilogue(previous, &staged);
        }
        // f32 or i32 sums: the same four bytes
        store::<f32>(&mut tiles, &mut staged[slot], true);
        pending = Some((f0, pair, slot));
    }
    if let Some(previous) = pending {
        epilogue(previous, &staged);
    }
    if let Weights::Int8 { .. } = mlp.weights {
        let gated_f32 = &gated_f32[..features * BLOCK];
        column_scales(gated_f32, &mut scales, &mut inv);
        for (g, out) in gated.chunks_exact_mut(BLOCK).enumerate() {
            let rows = core::array::from_fn(|j| &gated_f32[(4 * g + j) * BLOCK..][..BLOCK]);
            quad_rows(rows, &inv, out);
        }
    }

    // input += down_t @ gated, and each column's sum of squares
    let inner_steps = features / mlp.step;
    let mut sums = [0f32; BLOCK];
    for (first, h0, h1) in row_pairs(seq) {
        tiles.configure(&pair_config(h0, h1));
        for pair in 0..BLOCK / 32 {
            let b0 = pair * 32 * words;
            let two = h1 > 0;
            match &mlp.weights {
                Weights::Bf16 { down, .. } => {
                    let a0 = first / 16 * inner_steps * (TILE_BYTES / 2);
                    let a1 = two.then_some(a0 + inner_steps * (TILE_BYTES / 2));
                    let b: &[u16] = bytemuck::cast_slice(gated);
                    multiply::<false, u16>(&mut tiles, (down, a0, a1, 1), (b, b0), inner_steps);
                    store::<f32>(&mut tiles, &mut results, two);
                }
                Weights::Int8 {
                    down, down_scales, ..
                } => {
                    let a0 = first / 16 * inner_steps * TILE_BYTES;
                    let a1 = two.then_some(a0 + inner_steps * TILE_BYTES);
                    let b: &[u8] = bytemuck::cast_slice(gated);
                    multiply::<true, u8>(&mut tiles, (down, a0, a1, 1), (b, b0), inner_steps);
                    let sums: &mut [i32] = bytemuck::cast_slice_mut(&mut results);
                    store::<i32>(&mut tiles, sums, two);
                    // in place: each i32 sum becomes its f32 update
                    let columns = &scales[pair * 32..][..32];
                    for (t, row) in results.chunks_exact_mut(32).take(h0 + h1).enumerate() {
                        let s_w = down_scales[first + t];
                        for (v, &c) in row.iter_mut().zip(columns) {
                            *v = (v.to_bits() as i32 as f32) * (c * s_w);
                        }
                    }
                }
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
mod tests;
