//! The channel SwiGLU's two products, `gated = silu(h @ gate^T) * (h @ up^T)`
//! and `update = gated @ down^T`, against weights packed once, at engine
//! creation, into panels for a register-tiled microkernel.
//!
//! Why not the GEMM crate for these: one side of each product is small (the
//! tokens of a row block: 97 for one Sudoku puzzle, a prime) and the other
//! is a weight of several MiB that is used once per network call. A general
//! GEMM either packs that weight again on every call, or puts the tokens
//! along its vectors and spends a whole vector on the 97th token (an eighth
//! of the work at batch 1). Here the weight is packed once, output features
//! lie along the vectors and each token's value is broadcast, so a tile of
//! tokens can have any height up to what the registers hold: a row block is
//! cut into balanced tiles and no lane is wasted. The tokens are broadcast
//! straight from their rows (a tile's rows are a few forward streams that
//! L1 holds), not re-laid first: re-laying the rows of the second product
//! (1536 inputs) cost more than a tenth of it. The SwiGLU gate is applied
//! to the accumulators as they leave the registers.
//!
//! Panel layout: a panel is `vecs` vectors of output features wide; for each
//! input, its features are contiguous, so the kernel reads a panel as one
//! forward stream, a block of inputs at a time (the block stays in L2 while
//! every tile of rows passes over it). For a SwiGLU the first half of a
//! panel holds gate features, the second half the same up features.
//! Features past the last are zero and never written out.

use pulp::{Simd, WithSimd};

use super::ops::silu;

/// Widest vector packed for, in f32 lanes (AVX-512).
const MAX_LANES: usize = 16;

/// Most vectors a panel is wide.
const MAX_VECS: usize = 4;

/// A cache line of floats: the panels' allocation unit, so that each
/// panel's vectors are aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct CacheLine([f32; 16]);

/// How a panel's vectors map to output features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pairing {
    /// `vecs * lanes` consecutive output features.
    Plain,
    /// `vecs / 2 * lanes` gate features, then the same up features; the
    /// output is `silu(gate) * up`.
    SwiGlu,
}

/// The register tile the panels are packed for: `vecs` vectors of `lanes`
/// f32 by up to `max_rows` rows of accumulators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    lanes: usize,
    vecs: usize,
    max_rows: usize,
}

impl Geometry {
    /// The tile for the best vector unit found at run time; the same
    /// detection picks the kernel in [`PanelWeights::apply`]. With 32
    /// registers (AVX-512): 4 vectors by 6 rows (24 accumulators, 4 weight
    /// vectors, a broadcast); with 16 (AVX2, NEON): 2 by 6. That leaves the
    /// compiler three spare registers: a change around the kernel can make
    /// it spill accumulators to the stack inside the loop (it did once, at
    /// half the speed); `perf annotate` shows it as stores to `(%rsp)`
    /// between the FMAs, and 4 by 5 then has room.
    fn detect() -> Geometry {
        struct Detect;
        impl WithSimd for Detect {
            type Output = Geometry;
            #[inline(always)]
            fn with_simd<S: Simd>(self, _simd: S) -> Geometry {
                let wide = S::REGISTER_COUNT >= 32;
                Geometry {
                    lanes: S::F32_LANES,
                    vecs: if wide { 4 } else { 2 },
                    max_rows: 6,
                }
            }
        }
        pulp::Arch::new().dispatch(Detect)
    }

    /// f32 per input row of a panel.
    fn width(self) -> usize {
        self.vecs * self.lanes
    }
}

/// A weight packed into panels for [`PanelWeights::apply`].
pub(super) struct PanelWeights {
    geometry: Geometry,
    /// Inputs (the reduction length).
    inputs: usize,
    /// Output features of a row.
    outputs: usize,
    pairing: Pairing,
    /// The panels are `memory[start..]`: `start` puts them on a huge-page
    /// boundary (see [`huge_page_aligned`]).
    memory: Vec<CacheLine>,
    start: usize,
}

impl PanelWeights {
    /// `w` (`[outputs, inputs]`, official `[out, in]` layout) packed for
    /// `out = a @ w^T`.
    pub fn plain(w: &[f32], outputs: usize, inputs: usize) -> Self {
        Self::pack(w, inputs, outputs, Pairing::Plain, Geometry::detect())
    }

    /// `w` (`[2 * outputs, inputs]`: the gate rows, then the up rows) packed
    /// for `out = silu(a @ gate^T) * (a @ up^T)`.
    pub fn swiglu(w: &[f32], outputs: usize, inputs: usize) -> Self {
        Self::pack(w, inputs, outputs, Pairing::SwiGlu, Geometry::detect())
    }

    fn pack(w: &[f32], inputs: usize, outputs: usize, pairing: Pairing, g: Geometry) -> Self {
        assert!(g.lanes <= MAX_LANES && g.vecs <= MAX_VECS, "{g:?}");
        let width = g.width();
        let per_panel = cols_per_panel(pairing, width);
        let panels = outputs.div_ceil(per_panel);
        let (mut memory, start) = huge_page_aligned((panels * inputs * width).div_ceil(16));
        let packed: &mut [f32] = bytemuck::cast_slice_mut(&mut memory[start..]);
        for panel in 0..panels {
            for slot in 0..width {
                let Some(row) = source_row(panel, slot, per_panel, outputs) else {
                    continue; // zero padding
                };
                let source = &w[row * inputs..][..inputs];
                let base = panel * inputs * width + slot;
                for (k, &v) in source.iter().enumerate() {
                    packed[base + k * width] = v;
                }
            }
        }
        PanelWeights {
            geometry: g,
            inputs,
            outputs,
            pairing,
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

    /// `out` (`[r, outputs]`, row-major) from `a` (`[r, inputs]`,
    /// row-major): `a @ w^T`, or the gated SwiGLU of it.
    pub fn apply(&self, a: &[f32], out: &mut [f32]) {
        let rows = a.len() / self.inputs.max(1);
        assert!(
            a.len() == rows * self.inputs && out.len() == rows * self.outputs,
            "panel product of [{rows}, {}] into {} outputs",
            self.inputs,
            out.len(),
        );
        pulp::Arch::new().dispatch(Product {
            weights: self,
            a,
            out,
            rows,
        });
    }
}

/// Output features of one panel.
/// The weight row that slot `slot` of panel `panel` holds, for panels of
/// `per_panel` output features out of `outputs` (`None`: zero padding past
/// the last). A slot past `per_panel` is a SwiGLU panel's second half: the
/// up row of the same feature, `outputs` rows further.
pub(super) fn source_row(
    panel: usize,
    slot: usize,
    per_panel: usize,
    outputs: usize,
) -> Option<usize> {
    let feature = panel * per_panel + slot % per_panel;
    (feature < outputs).then(|| {
        if slot < per_panel {
            feature
        } else {
            outputs + feature
        }
    })
}

fn cols_per_panel(pairing: Pairing, width: usize) -> usize {
    match pairing {
        Pairing::Plain => width,
        Pairing::SwiGlu => width / 2,
    }
}

/// Huge pages: 2 MiB on x86-64 and most aarch64 Linux kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Zeroed memory for `lines` cache lines, `(memory, start)` with the lines
/// at `memory[start..]`. From one huge page up, they begin on a huge-page
/// boundary and are backed by huge pages where the OS agrees (Linux, asked
/// with `madvise`): the panels are streamed whole on every network call,
/// several MiB per layer, and with 4 KiB pages their loads also missed the
/// TLB (a fifth slower, measured on the channel products alone).
pub(super) fn huge_page_aligned(lines: usize) -> (Vec<CacheLine>, usize) {
    const LINE: usize = std::mem::size_of::<CacheLine>();
    if lines * LINE < HUGE_PAGE {
        return (vec![CacheLine([0.0; 16]); lines], 0);
    }
    let whole_pages = (lines * LINE).next_multiple_of(HUGE_PAGE) / LINE;
    let mut memory = Vec::with_capacity(whole_pages + HUGE_PAGE / LINE);
    let address = memory.as_ptr() as usize;
    let start = (address.next_multiple_of(HUGE_PAGE) - address) / LINE;
    advise_huge_pages(&mut memory.spare_capacity_mut()[start..start + whole_pages]);
    memory.resize(start + lines, CacheLine([0.0; 16]));
    (memory, start)
}

/// Asks the kernel to back `memory` (not yet touched) with huge pages.
fn advise_huge_pages<T>(memory: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        let start = memory.as_mut_ptr() as usize;
        let len = std::mem::size_of_val(memory) / HUGE_PAGE * HUGE_PAGE;
        if len > 0 {
            // SAFETY: advice on whole pages of our own allocation (`start`
            // is huge-page aligned); it changes how they are backed, never
            // their contents.
            #[allow(unsafe_code)]
            unsafe {
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = memory;
}

/// The tiles of `rows` rows, `(first row, height)`: balanced heights, never
/// more than `max_rows`.
pub(super) fn tiles(rows: usize, max_rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = rows.div_ceil(max_rows);
    (0..count).scan(0, move |first, tile| {
        let height = (rows - *first).div_ceil(count - tile);
        let this = (*first, height);
        *first += height;
        Some(this)
    })
}

struct Product<'a> {
    weights: &'a PanelWeights,
    a: &'a [f32],
    out: &'a mut [f32],
    rows: usize,
}

/// Rows of `a` per row block at most: the partial sums of a block over one
/// panel live on the stack between input blocks.
const MAX_BLOCK_ROWS: usize = 256;

/// Bytes of a panel's input block: it stays in L2 while every tile of the
/// row block streams it (as a GEMM streams its packed A panel), the tile's
/// rows' inputs of the block in L1. Blocks sized for L1 instead (16 KiB) lost
/// the block to the partial sums of large row blocks.
const PANEL_BLOCK_BYTES: usize = 128 * 1024;

impl WithSimd for Product<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Product {
            weights: w,
            a,
            out,
            rows,
        } = self;
        let g = w.geometry;
        assert_eq!(
            g.lanes,
            S::F32_LANES,
            "panels packed for another vector unit"
        );
        let (k, n) = (w.inputs, w.outputs);
        let width = g.width();
        let k_block = (PANEL_BLOCK_BYTES / (4 * width)).max(1);
        let packed: &[f32] = bytemuck::cast_slice(&w.memory[w.start..]);
        let per_panel = cols_per_panel(w.pairing, width);
        let zero = simd.splat_f32s(0.0);
        let mut partial = [[zero; MAX_VECS]; MAX_BLOCK_ROWS];
        for block_start in (0..rows).step_by(MAX_BLOCK_ROWS) {
            let block_rows = MAX_BLOCK_ROWS.min(rows - block_start);
            for (panel_index, panel) in packed
                .chunks_exact(k * width)
                .take(n.div_ceil(per_panel))
                .enumerate()
            {
                let first_col = panel_index * per_panel;
                let cols = per_panel.min(n - first_col);
                for k0 in (0..k).step_by(k_block) {
                    let k1 = (k0 + k_block).min(k);
                    for (first, height) in tiles(block_rows, g.max_rows) {
                        let row0 = block_start + first;
                        let job = TileJob {
                            a: &a[row0 * k + k0..(row0 + height - 1) * k + k1],
                            a_stride: k,
                            panel: &panel[k0 * width..k1 * width],
                            first_block: k0 == 0,
                            last_block: k1 == k,
                            partial: &mut partial[first..first + height],
                            out: &mut out[row0 * n..(row0 + height) * n],
                            stride: n,
                            first_col,
                            cols,
                        };
                        let gated = w.pairing == Pairing::SwiGlu;
                        tile_any(simd, g.vecs, height, gated, job);
                    }
                }
            }
        }
    }
}

/// One tile's share of a product: its rows' inputs of one input block
/// (row `t` at `a[t * a_stride..][..span]`), times that block of a panel
/// (`panel`: `[span, width]`), continuing the sums in `partial` unless it
/// is the first block; after the last, the results go to columns
/// `first_col..first_col + cols` of the rows of `out`, `stride` apart.
struct TileJob<'a, V> {
    a: &'a [f32],
    a_stride: usize,
    panel: &'a [f32],
    first_block: bool,
    last_block: bool,
    partial: &'a mut [[V; MAX_VECS]],
    out: &'a mut [f32],
    stride: usize,
    first_col: usize,
    cols: usize,
}

/// [`tile`] for a run-time geometry: `vecs` of 2 or 4, 1 to 6 rows.
#[inline(always)]
fn tile_any<S: Simd>(simd: S, vecs: usize, rows: usize, gated: bool, job: TileJob<'_, S::f32s>) {
    macro_rules! by_rows {
        ($vecs:literal, $gated:literal) => {
            match rows {
                1 => tile::<S, $gated, $vecs, 1>(simd, job),
                2 => tile::<S, $gated, $vecs, 2>(simd, job),
                3 => tile::<S, $gated, $vecs, 3>(simd, job),
                4 => tile::<S, $gated, $vecs, 4>(simd, job),
                5 => tile::<S, $gated, $vecs, 5>(simd, job),
                6 => tile::<S, $gated, $vecs, 6>(simd, job),
                _ => unreachable!("tiles are 1 to 6 rows"),
            }
        };
    }
    match (vecs, gated) {
        (2, false) => by_rows!(2, false),
        (2, true) => by_rows!(2, true),
        (4, false) => by_rows!(4, false),
        (4, true) => by_rows!(4, true),
        _ => unreachable!("panels are 2 or 4 vectors wide"),
    }
}

/// The microkernel: `ROWS` rows times one block of a panel `VECS` vectors
/// wide, all `VECS * ROWS` accumulators in registers for the whole block;
/// after the panel's last block, the epilogue (SwiGLU gate when `GATED`)
/// on the way out.
#[inline(always)]
fn tile<S: Simd, const GATED: bool, const VECS: usize, const ROWS: usize>(
    simd: S,
    job: TileJob<'_, S::f32s>,
) {
    let TileJob {
        a,
        a_stride,
        panel,
        first_block,
        last_block,
        partial,
        out,
        stride,
        first_col,
        cols,
    } = job;
    let lanes = S::F32_LANES;
    let rows: [&[f32]; ROWS] = core::array::from_fn(|t| &a[t * a_stride..]);
    let mut acc = accumulate::<S, VECS, ROWS>(simd, rows, panel);
    if !first_block {
        for t in 0..ROWS {
            for v in 0..VECS {
                acc[t][v] = simd.add_f32s(acc[t][v], partial[t][v]);
            }
        }
    }
    if !last_block {
        for t in 0..ROWS {
            partial[t][..VECS].copy_from_slice(&acc[t]);
        }
        return;
    }
    for (t, acc) in acc.iter().enumerate() {
        let mut sums = [0f32; MAX_VECS * MAX_LANES];
        let sums = &mut sums[..VECS * lanes];
        for (dst, v) in sums.chunks_exact_mut(lanes).zip(acc) {
            bytemuck::cast_slice_mut::<f32, u8>(dst).copy_from_slice(bytemuck::bytes_of(v));
        }
        let row = &mut out[t * stride + first_col..][..cols];
        if GATED {
            let (gate, up) = sums.split_at(VECS / 2 * lanes);
            for ((o, &g), &u) in row.iter_mut().zip(gate).zip(up) {
                *o = silu(g) * u;
            }
        } else {
            row.copy_from_slice(&sums[..cols]);
        }
    }
}

/// The inner loop: for each input `i`, `sums[t] += rows[t][i] * panel[i]`,
/// the `VECS` vectors of each of the `ROWS` sums held in registers. Every
/// index is in bounds by construction: a panic edge in the loop (or
/// anything taking the sums' address) makes the compiler store them back
/// on every step (indexing the rows by a counter of the panel's chunks did
/// that, at less than half the speed).
#[inline(always)]
fn accumulate<S: Simd, const VECS: usize, const ROWS: usize>(
    simd: S,
    rows: [&[f32]; ROWS],
    panel: &[f32],
) -> [[S::f32s; VECS]; ROWS] {
    let lanes = S::F32_LANES;
    let mut acc = [[simd.splat_f32s(0.0); VECS]; ROWS];
    let span = panel.len() / (VECS * lanes);
    let rows: [&[f32]; ROWS] = core::array::from_fn(|t| &rows[t][..span]);
    // `i` counts to `span`, the rows' length: no bounds check in the loop
    for (i, w) in (0..span).zip(panel.chunks_exact(VECS * lanes)) {
        prefetch(w.as_ptr().wrapping_add(PREFETCH_AHEAD), VECS * lanes);
        let w: [S::f32s; VECS] = core::array::from_fn(|v| {
            bytemuck::pod_read_unaligned(bytemuck::cast_slice(&w[v * lanes..(v + 1) * lanes]))
        });
        for t in 0..ROWS {
            let b = simd.splat_f32s(rows[t][i]);
            for v in 0..VECS {
                acc[t][v] = simd.mul_add_e_f32s(w[v], b, acc[t][v]);
            }
        }
    }
    acc
}

/// How far ahead in its panel stream the kernel asks for weights, in f32
/// (4 KiB: 16 inputs of an AVX-512 panel). The hardware prefetchers alone
/// left the kernel waiting on the panel's loads; 2, 4 and 8 KiB ahead
/// measured the same, about 8% faster than none.
const PREFETCH_AHEAD: usize = 1024;

/// Asks the CPU to bring the cache lines of `floats` f32 from `at` into L1.
/// `at` may lie past the end of the panels: nothing is read through it.
#[inline(always)]
fn prefetch(at: *const f32, floats: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..floats).step_by(16) {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let line = at.wrapping_add(line) as *const i8;
        // SAFETY: a prefetch is a hint: it never faults and reads nothing
        // into the program, whatever the address (SSE, always present on
        // x86-64).
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(line)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, floats);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values::values;

    fn worst_error(got: &[f32], want: &[f64]) -> (f64, usize) {
        got.iter()
            .zip(want)
            .enumerate()
            .map(|(i, (&g, &w))| ((g as f64 - w).abs() / (1.0 + w.abs()), i))
            .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a })
    }

    #[test]
    fn plain_and_swiglu_products_match_float64_for_every_tile_height() {
        // rows 1..=30 cover every tile height, 300 two row blocks; outputs
        // not a multiple of the panel width cover the zero padding, 1200
        // inputs (past 512 or 1024 per block) several input blocks
        // both register tiles, whichever the machine would pick
        let detected = Geometry::detect();
        let geometries = [
            detected,
            Geometry {
                vecs: 2,
                ..detected
            },
        ];
        for (geometry, (outputs, inputs)) in geometries
            .into_iter()
            .flat_map(|g| [(37, 19), (64, 40), (5, 3), (40, 1200)].map(|shape| (g, shape)))
        {
            let w = values(2 * outputs * inputs, 7);
            let plain = PanelWeights::pack(&w, inputs, outputs, Pairing::Plain, geometry);
            let swiglu = PanelWeights::pack(&w, inputs, outputs, Pairing::SwiGlu, geometry);
            for rows in (1..=30).chain([300]) {
                let a = values(rows * inputs, rows as u32);
                let dot = |r: usize, o: usize| -> f64 {
                    (0..inputs)
                        .map(|k| a[r * inputs + k] as f64 * w[o * inputs + k] as f64)
                        .sum()
                };
                let mut out = vec![f32::NAN; rows * outputs];
                plain.apply(&a, &mut out);
                let want: Vec<f64> = (0..rows * outputs)
                    .map(|i| dot(i / outputs, i % outputs))
                    .collect();
                let (err, at) = worst_error(&out, &want);
                assert!(
                    err < 1e-5,
                    "plain {rows}x{outputs} {geometry:?}: error {err:e} at {at}"
                );

                let mut out = vec![f32::NAN; rows * outputs];
                swiglu.apply(&a, &mut out);
                let want: Vec<f64> = (0..rows * outputs)
                    .map(|i| {
                        let (r, o) = (i / outputs, i % outputs);
                        let g = dot(r, o);
                        g / (1.0 + (-g).exp()) * dot(r, outputs + o)
                    })
                    .collect();
                let (err, at) = worst_error(&out, &want);
                assert!(
                    err < 1e-5,
                    "swiglu {rows}x{outputs} {geometry:?}: error {err:e} at {at}"
                );
            }
        }
    }
}
