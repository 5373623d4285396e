//! The token-mixing MLP of one puzzle's column block, `h = rms_norm_S(h +
//! down_t @ gate(gate_up_t @ h))` on `h` `[S, c]`, on its own microkernel
//! with its weights packed once, at engine creation.
//!
//! Both products multiply a weight from the left, so the state's columns
//! lie along the vectors (a block of `vecs * lanes` columns, 64 with
//! AVX-512) and each weight value is broadcast: a register tile is a few
//! weight rows by the whole block. That leaves no lane idle whatever `S`
//! is (97 for Sudoku, a prime: vectors along the sequence would waste a
//! tenth of them), and the tile's rows can be chosen freely:
//!
//! - `gate_up_t @ h`: each tile is 3 gate rows and the same 3 up rows, so
//!   the SwiGLU gate is applied as the accumulators leave the registers and
//!   only the gated activations (`[inter(S), block]`) are written;
//! - `down_t @ gated`: each tile is up to 6 sequence positions (balanced
//!   heights), and the residual add and the sums of squares of the norm
//!   over `S` happen on the way out.
//!
//! The block is first copied (with the injection added, for the first
//! layer) into a contiguous `[S, block]` scratch: read in place, its rows
//! would lie `D` floats apart, and 97 rows at that stride fall into a few
//! L1 sets, which every tile would then miss on.
//!
//! Weight layout: for each tile, for each input `k`, the tile's rows'
//! values are contiguous (`[tile][k][rows]`), one forward stream.

use faer::MatMut;
use faer::reborrow::ReborrowMut;
use pulp::{Simd, WithSimd};

use super::ops::{row_slice, silu};
use super::panels::tiles;

/// Gate rows of a first-product tile (and as many up rows).
const GATE_ROWS: usize = 3;

/// Rows of a second-product tile at most.
const MAX_ROWS: usize = 6;

/// Widest vector unit, in f32 lanes (AVX-512), and most vectors of a block.
const MAX_LANES: usize = 16;
const MAX_VECS: usize = 4;

/// The token MLP's weights, packed for [`TokenMlp::apply`].
pub(super) struct TokenMlp {
    /// Sequence length `S` (the inputs of the first product).
    seq: usize,
    /// `inter(S)`.
    inter: usize,
    /// `(lanes, vecs)`: the block is `vecs` vectors of `lanes` f32.
    vector: (usize, usize),
    /// `gate_up_t` as tiles of `GATE_ROWS` gate rows then the same up
    /// rows, `[inter / GATE_ROWS][S][2 GATE_ROWS]`; rows past `inter` are 0.
    gate_up: Vec<f32>,
    /// `down_t` as the tiles of [`tiles`]`(S, MAX_ROWS)`, the tile from row
    /// `first` of height `h` at `[first * inter..]` as `[inter][h]`.
    down: Vec<f32>,
}

/// Per-thread scratch of [`TokenMlp::apply`].
#[derive(Default)]
pub(super) struct TokenScratch {
    /// The block's input, `[S, block]`, zero past its columns.
    h: Vec<f32>,
    /// The gated activations, `[inter(S), block]`.
    gated: Vec<f32>,
}

impl TokenMlp {
    /// `gate_up_t` (`[2 inter, S]`: gate rows, then up rows) and `down_t`
    /// (`[S, inter]`), official layouts.
    pub fn new(gate_up_t: &[f32], down_t: &[f32], seq: usize, inter: usize) -> Self {
        Self::pack(gate_up_t, down_t, seq, inter, detect())
    }

    fn pack(
        gate_up_t: &[f32],
        down_t: &[f32],
        seq: usize,
        inter: usize,
        vector: (usize, usize),
    ) -> Self {
        let tile_count = inter.div_ceil(GATE_ROWS);
        let mut gate_up = vec![0.0; tile_count * seq * 2 * GATE_ROWS];
        for (tile, packed) in gate_up.chunks_exact_mut(seq * 2 * GATE_ROWS).enumerate() {
            for slot in 0..2 * GATE_ROWS {
                let feature = tile * GATE_ROWS + slot % GATE_ROWS;
                if feature >= inter {
                    continue;
                }
                let row = if slot < GATE_ROWS {
                    feature
                } else {
                    inter + feature
                };
                for (k, &v) in gate_up_t[row * seq..][..seq].iter().enumerate() {
                    packed[k * 2 * GATE_ROWS + slot] = v;
                }
            }
        }
        let mut down = vec![0.0; seq * inter];
        for (first, height) in tiles(seq, MAX_ROWS) {
            let packed = &mut down[first * inter..][..height * inter];
            for t in 0..height {
                for (k, &v) in down_t[(first + t) * inter..][..inter].iter().enumerate() {
                    packed[k * height + t] = v;
                }
            }
        }
        TokenMlp {
            seq,
            inter,
            vector,
            gate_up,
            down,
        }
    }

    /// Columns of a block: what one pass of the kernels covers.
    pub fn block(&self) -> usize {
        self.vector.0 * self.vector.1
    }

    /// f32 elements of one [`TokenMlp::scratch`].
    pub fn scratch_floats(&self) -> usize {
        (self.seq + self.inter) * self.block()
    }

    /// Scratch for [`TokenMlp::apply`] on one thread.
    pub fn scratch(&self) -> TokenScratch {
        TokenScratch {
            h: vec![0.0; self.seq * self.block()],
            gated: vec![0.0; self.inter * self.block()],
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
        scratch: &mut TokenScratch,
    ) {
        let block = self.block();
        let c = h.ncols();
        for first in (0..c).step_by(block) {
            let cols = block.min(c - first);
            let h = h.rb_mut().subcols_mut(first, cols);
            let injection = injection.map(|(inj, stride)| (&inj[first..], stride));
            pulp::Arch::new().dispatch(BlockJob {
                mlp: self,
                h,
                injection,
                eps,
                scratch: &mut *scratch,
            });
        }
    }
}

/// Vector width and vectors per block for the best vector unit found at run
/// time: 4 vectors by 6 rows of accumulators with 32 registers (AVX-512,
/// NEON), 2 by 6 with 16 (AVX2).
fn detect() -> (usize, usize) {
    struct Detect;
    impl WithSimd for Detect {
        type Output = (usize, usize);
        #[inline(always)]
        fn with_simd<S: Simd>(self, _simd: S) -> (usize, usize) {
            let vecs = if S::REGISTER_COUNT >= 32 { 4 } else { 2 };
            (S::F32_LANES, vecs)
        }
    }
    pulp::Arch::new().dispatch(Detect)
}

/// One block of at most `block` columns.
struct BlockJob<'a, 'h> {
    mlp: &'a TokenMlp,
    h: MatMut<'h, f32>,
    /// The injection's block and its row stride.
    injection: Option<(&'a [f32], usize)>,
    eps: f32,
    scratch: &'a mut TokenScratch,
}

impl WithSimd for BlockJob<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let BlockJob {
            mlp,
            mut h,
            injection,
            eps,
            scratch,
        } = self;
        let (lanes, vecs) = mlp.vector;
        assert_eq!(lanes, S::F32_LANES, "packed for another vector unit");
        let (seq, inter, block) = (mlp.seq, mlp.inter, mlp.block());
        let cols = h.ncols();
        let input = &mut scratch.h[..seq * block];
        let gated = &mut scratch.gated[..inter * block];

        // the block's input, contiguous and zero-padded to the block width
        for (i, dst) in input.chunks_exact_mut(block).enumerate() {
            let row = row_slice(h.rb_mut(), i);
            dst[..cols].copy_from_slice(row);
            if let Some((inj, stride)) = injection {
                let add = &inj[i * stride..][..cols];
                dst.iter_mut().zip(add).for_each(|(v, a)| *v += a);
            }
            dst[cols..].fill(0.0);
        }

        match vecs {
            4 => gate_product::<S, 4>(simd, mlp, input, gated),
            2 => gate_product::<S, 2>(simd, mlp, input, gated),
            _ => unreachable!("blocks are 2 or 4 vectors wide"),
        }
        let mut sums = [0f32; MAX_VECS * MAX_LANES];
        let sums = &mut sums[..block];
        match vecs {
            4 => down_product::<S, 4>(simd, mlp, gated, input, sums),
            2 => down_product::<S, 2>(simd, mlp, gated, input, sums),
            _ => unreachable!("blocks are 2 or 4 vectors wide"),
        }

        // the norm over the sequence axis of every column
        for s in sums.iter_mut() {
            *s = 1.0 / (*s / seq as f32 + eps).sqrt();
        }
        for (i, src) in input.chunks_exact(block).enumerate() {
            let row = row_slice(h.rb_mut(), i);
            for ((v, &x), &scale) in row.iter_mut().zip(src).zip(sums.iter()) {
                *v = x * scale;
            }
        }
    }
}

/// `gated = silu(gate_up_t @ input)[gate] * (...)[up]`, `[inter, block]`.
#[inline(always)]
fn gate_product<S: Simd, const VECS: usize>(
    simd: S,
    mlp: &TokenMlp,
    input: &[f32],
    gated: &mut [f32],
) {
    let block = VECS * S::F32_LANES;
    let (seq, inter) = (mlp.seq, mlp.inter);
    for (tile, weights) in mlp.gate_up.chunks_exact(seq * 2 * GATE_ROWS).enumerate() {
        let acc = accumulate::<S, VECS, { 2 * GATE_ROWS }>(simd, weights, input);
        let first = tile * GATE_ROWS;
        for t in 0..GATE_ROWS.min(inter - first) {
            let g = spill::<S, VECS>(&acc[t]);
            let u = spill::<S, VECS>(&acc[GATE_ROWS + t]);
            let out = &mut gated[(first + t) * block..][..block];
            for ((o, &g), &u) in out.iter_mut().zip(&g[..block]).zip(&u[..block]) {
                *o = silu(g) * u;
            }
        }
    }
}

/// `input += down_t @ gated`, row tile by row tile, and `sums` (`[block]`)
/// the sums of squares of each column of the result.
#[inline(always)]
fn down_product<S: Simd, const VECS: usize>(
    simd: S,
    mlp: &TokenMlp,
    gated: &[f32],
    input: &mut [f32],
    sums: &mut [f32],
) {
    let block = VECS * S::F32_LANES;
    let inter = mlp.inter;
    sums.fill(0.0);
    for (first, height) in tiles(mlp.seq, MAX_ROWS) {
        let weights = &mlp.down[first * inter..][..height * inter];
        let rows = &mut input[first * block..][..height * block];
        macro_rules! by_height {
            ($($h:literal)*) => {
                match height {
                    $($h => {
                        let acc = accumulate::<S, VECS, $h>(simd, weights, gated);
                        residual_and_squares::<S, VECS>(&acc, rows, sums);
                    })*
                    _ => unreachable!("tiles are 1 to {MAX_ROWS} rows"),
                }
            };
        }
        by_height!(1 2 3 4 5 6);
    }
}

/// `rows[t] += acc[t]`, and each column's squares added to `sums`.
#[inline(always)]
fn residual_and_squares<S: Simd, const VECS: usize>(
    acc: &[[S::f32s; VECS]],
    rows: &mut [f32],
    sums: &mut [f32],
) {
    let block = VECS * S::F32_LANES;
    for (acc, row) in acc.iter().zip(rows.chunks_exact_mut(block)) {
        let update = spill::<S, VECS>(acc);
        for ((v, &u), s) in row.iter_mut().zip(&update[..block]).zip(sums.iter_mut()) {
            *v += u;
            *s += *v * *v;
        }
    }
}

/// A row of accumulators as floats.
#[inline(always)]
fn spill<S: Simd, const VECS: usize>(acc: &[S::f32s; VECS]) -> [f32; MAX_VECS * MAX_LANES] {
    let lanes = S::F32_LANES;
    let mut out = [0f32; MAX_VECS * MAX_LANES];
    for (dst, v) in out.chunks_exact_mut(lanes).zip(acc) {
        bytemuck::cast_slice_mut::<f32, u8>(dst).copy_from_slice(bytemuck::bytes_of(v));
    }
    out
}

/// The inner loop: for each input `k`, `acc[t] += weights[k][t] *
/// act[k]`, with `act[k]` `VECS` vectors and the `ROWS x VECS`
/// accumulators in registers. Bounds are settled before the loop (see the
/// channel kernel's `accumulate` for why that matters).
#[inline(always)]
fn accumulate<S: Simd, const VECS: usize, const ROWS: usize>(
    simd: S,
    weights: &[f32],
    act: &[f32],
) -> [[S::f32s; VECS]; ROWS] {
    let lanes = S::F32_LANES;
    let mut acc = [[simd.splat_f32s(0.0); VECS]; ROWS];
    for (w, a) in weights
        .chunks_exact(ROWS)
        .zip(act.chunks_exact(VECS * lanes))
    {
        let a: [S::f32s; VECS] = core::array::from_fn(|v| {
            bytemuck::pod_read_unaligned(bytemuck::cast_slice(&a[v * lanes..(v + 1) * lanes]))
        });
        for t in 0..ROWS {
            let b = simd.splat_f32s(w[t]);
            for v in 0..VECS {
                acc[t][v] = simd.mul_add_e_f32s(a[v], b, acc[t][v]);
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::mat_mut;
    use crate::cpu::test_values::values;

    /// `rms_norm_S(t + down_t @ gate(gate_up_t @ t))`, `t = h + injection`,
    /// in float64, `[S, D]`.
    fn reference(
        gu: &[f32],
        dn: &[f32],
        t: &[f64],
        seq: usize,
        inter: usize,
        d: usize,
    ) -> Vec<f64> {
        let mut out = t.to_vec();
        for col in 0..d {
            let gated: Vec<f64> = (0..inter)
                .map(|f| {
                    let dot = |row: usize| -> f64 {
                        (0..seq)
                            .map(|k| gu[row * seq + k] as f64 * t[k * d + col])
                            .sum()
                    };
                    let (g, u) = (dot(f), dot(inter + f));
                    g / (1.0 + (-g).exp()) * u
                })
                .collect();
            let mut squares = 0.0;
            for s in 0..seq {
                let update: f64 = (0..inter)
                    .map(|f| dn[s * inter + f] as f64 * gated[f])
                    .sum();
                out[s * d + col] += update;
                squares += out[s * d + col] * out[s * d + col];
            }
            let scale = 1.0 / (squares / seq as f64 + 1e-5).sqrt();
            (0..seq).for_each(|s| out[s * d + col] *= scale);
        }
        out
    }

    #[test]
    fn matches_float64_for_partial_blocks_tile_heights_and_injection() {
        // inter 10: the last gate tile is partial; seq 13: tiles of 5 and
        // 4 rows; 70 columns split 50 + 20: a full block, partial ones
        let (lanes, wide) = detect();
        for vector in [(lanes, wide), (lanes, 2)] {
            for (seq, inter, d) in [(13, 10, 70), (97, 512, 64), (1, 1, 3)] {
                let gu = values(2 * inter * seq, 3);
                let dn = values(seq * inter, 5);
                let mlp = TokenMlp::pack(&gu, &dn, seq, inter, vector);
                let mut scratch = mlp.scratch();
                for with_injection in [false, true] {
                    let mut h = values(seq * d, 11);
                    let inj = values(seq * d, 13);
                    let t: Vec<f64> = h
                        .iter()
                        .zip(&inj)
                        .map(|(&h, &i)| h as f64 + if with_injection { i as f64 } else { 0.0 })
                        .collect();
                    let want = reference(&gu, &dn, &t, seq, inter, d);
                    // the engine hands out column blocks of the state
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
                    assert!(
                        worst < 2e-5,
                        "{vector:?} S {seq} inter {inter} D {d} injection {with_injection}: \
                         error {worst:e} at {at}"
                    );
                }
            }
        }
    }
}
