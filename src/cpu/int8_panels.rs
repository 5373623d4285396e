//! The channel SwiGLU's two products on int8 weights with int8 activations
//! (the engine's `matched` activations at int8 weights): integer dot
//! products, `vpdpbusd` (AVX-512 VNNI) where the CPU has it.
//!
//! Why int8 activations: measured on this project's machine (a Sapphire
//! Rapids-class Xeon), one core does about 170 GFLOP/s of f32 FMA, 60-70 of
//! `vdpbf16ps` (bf16 pairs: it issues far more slowly than an FMA there)
//! and 450-700 GOP/s of `vpdpbusd` (u8 x s8, four products per lane). So
//! bf16 arithmetic would be slower than f32, and only integer products can
//! outrun the f32 kernel (`panels.rs`).
//!
//! Numerics: the weights are the model's int8 rows, `w = q_w * s_w[o]`
//! (one scale per output feature). Each product's input row (one token) is
//! quantized when the product runs: `s_a = max |a| / 127`, `q_a =
//! round_ties_even(a / s_a)` (as `a * (127 / max)`), in -127..=127. The
//! integer sum `sum_k q_a q_w` is exact in i32 (up to [`MAX_INPUTS`],
//! about 66,000 inputs, with the offset below); the output is
//! `(sum as f32) * (s_a * s_w[o])`, then the SwiGLU gate as in `panels.rs`.
//! Against the same product on the dequantized weights and f32
//! activations, rounding moves each input by at most half a step, `max |a|
//! / 254`, independently from input to input, so the errors partly cancel
//! in a sum (`tests/cpu_precision.rs` states and holds the bound on whole
//! solves).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: activations are stored
//! as `q_a + 128` (1..=255) and the kernel subtracts `128 * sum_k q_w`, a
//! constant of each output feature computed at packing.
//!
//! Layout: as in `panels.rs` a panel is four vectors of 16 output features
//! (for a SwiGLU, 32 gate then the same 32 up features); for each group of
//! four inputs, each feature's four weights are one i32 lane, so a panel is
//! `[inputs / 4][64 features][4 inputs]` bytes, one forward stream of
//! `inputs * 64` bytes (32 KiB at 512 inputs, 96 KiB at 1536: no input
//! blocking, the panel stays in L1/L2 while every tile of rows passes).
//! Inputs are padded to a multiple of four with zero weights.
//!
//! Kernels, chosen at engine creation ([`Int8Kernel::detect`]): AVX-512
//! VNNI (`vpdpbusd` on zmm, a register tile of 4 vectors by up to 6 rows,
//! each row's four bytes broadcast); otherwise the portable integer code,
//! compiled once more for AVX2 where the CPU has it (LLVM vectorizes its
//! lane loops; AVX-VNNI's 256-bit `vpdpbusd` would be the next step for
//! CPUs without AVX-512). The epilogue and the quantization are the same
//! code compiled for each kernel's vector unit, and the integers are
//! exact, so every kernel gives the same outputs bit for bit.

use super::ops::silu;
use super::panels::{CacheLine, huge_page_aligned, source_row, tiles};

/// Output features of one panel (four vectors of 16 i32 lanes).
const PANEL: usize = 64;

/// Rows of a register tile at most (24 accumulators of 32 registers).
const MAX_ROWS: usize = 6;

/// Inputs at most: a sum of `inputs` products of at most 255 * 127 stays
/// within i32.
pub(super) const MAX_INPUTS: usize = (i32::MAX as usize) / (255 * 127);

/// The integer kernel in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Kernel {
    /// `tdpbusd` on AMX tiles (`amx.rs`).
    Amx,
    /// `vpdpbusd` on 512-bit vectors (AVX-512 VNNI).
    Vnni512,
    /// `vpdpbusd` on 256-bit vectors (AVX-VNNI: Alder Lake and later,
    /// without AVX-512).
    AvxVnni,
    /// The portable integer code compiled for AVX2.
    Avx2,
    /// The portable integer code as the crate is compiled.
    Portable,
}

impl Int8Kernel {
    /// The fastest kernel this CPU runs (AMX asks the OS for the tile
    /// state the first time).
    pub fn detect() -> Int8Kernel {
        if super::amx::Amx::detect().is_some() {
            Int8Kernel::Amx
        } else {
            Int8Kernel::detect_vector()
        }
    }

    /// The fastest kernel on vector registers this CPU runs.
    pub(super) fn detect_vector() -> Int8Kernel {
        [Int8Kernel::Vnni512, Int8Kernel::AvxVnni, Int8Kernel::Avx2]
            .into_iter()
            .find(|k| k.available())
            .unwrap_or(Int8Kernel::Portable)
    }

    /// Whether this CPU runs the kernel.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Int8Kernel::Amx => super::amx::Amx::detect().is_some(),
                Int8Kernel::Vnni512 => has!("avx512f") && has!("avx512bw") && has!("avx512vnni"),
                Int8Kernel::AvxVnni => has!("avx2") && has!("fma") && has!("avxvnni"),
                Int8Kernel::Avx2 => has!("avx2"),
                Int8Kernel::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Int8Kernel::Portable
        }
    }

    /// The kernel's name, as `trm bench` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Int8Kernel::Amx => "amx-int8",
            Int8Kernel::Vnni512 => "avx512-vnni",
            Int8Kernel::AvxVnni => "avx-vnni",
            Int8Kernel::Avx2 => "avx2",
            Int8Kernel::Portable => "portable",
        }
    }
}

/// How a panel's features map to outputs (as in `panels.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pairing {
    Plain,
    SwiGlu,
}

/// An int8 weight packed for [`Int8Panels::apply`].
pub(super) struct Int8Panels {
    kernel: Int8Kernel,
    inputs: usize,
    /// `inputs.div_ceil(4)` (AMX: whole tile steps of 16 groups).
    groups: usize,
    outputs: usize,
    pairing: Pairing,
    /// `[panels][groups][PANEL][4]` bytes (i8) from `memory[start..]`, on
    /// huge pages as in `panels.rs`.
    memory: Vec<CacheLine>,
    start: usize,
    /// Per panel slot, `[panels][PANEL]`: the weight scale and `128 *
    /// sum_k q_w`; zero for padding slots.
    scales: Vec<f32>,
    offsets: Vec<i32>,
}

/// A block of rows quantized for [`Int8Panels::apply`]: `[rows][groups *
/// 4]` bytes `q_a + 128` and one scale per row.
pub(super) struct QuantizedRows<'a> {
    pub bytes: &'a [u8],
    pub scales: &'a [f32],
}

impl Int8Panels {
    /// `q` (`[outputs, inputs]` i8 as bytes, official layout) with one
    /// scale per row, for `out = a @ w^T`.
    pub fn plain(
        q: &[u8],
        scales: &[f32],
        outputs: usize,
        inputs: usize,
        kernel: Int8Kernel,
    ) -> Self {
        Self::pack(q, scales, outputs, inputs, Pairing::Plain, kernel)
    }

    /// `q` (`[2 outputs, inputs]`: gate rows then up rows) for `out =
    /// silu(a @ gate^T) * (a @ up^T)`.
    pub fn swiglu(
        q: &[u8],
        scales: &[f32],
        outputs: usize,
        inputs: usize,
        kernel: Int8Kernel,
    ) -> Self {
        Self::pack(q, scales, outputs, inputs, Pairing::SwiGlu, kernel)
    }

    fn pack(
        q: &[u8],
        scales: &[f32],
        outputs: usize,
        inputs: usize,
        pairing: Pairing,
        kernel: Int8Kernel,
    ) -> Self {
        let per_panel = per_panel(pairing);
        let panels = outputs.div_ceil(per_panel);
        // AMX multiplies 64 inputs (16 groups) per tile step
        let groups = match kernel {
            Int8Kernel::Amx => inputs.div_ceil(64) * 16,
            _ => inputs.div_ceil(4),
        };
        let panel_bytes = groups * PANEL * 4;
        assert!(
            inputs <= MAX_INPUTS,
            "{inputs} inputs: i32 sums may overflow"
        );
        let (mut memory, start) = huge_page_aligned((panels * panel_bytes).div_ceil(64));
        let mut slot_scales = vec![0.0; panels * PANEL];
        let mut offsets = vec![0; panels * PANEL];
        let packed: &mut [u8] = bytemuck::cast_slice_mut(&mut memory[start..]);
        for panel in 0..panels {
            for slot in 0..PANEL {
                let Some(row) = source_row(panel, slot, per_panel, outputs) else {
                    continue; // zero padding
                };
                let source = &q[row * inputs..][..inputs];
                let base = panel * panel_bytes + slot * 4;
                for (k, &v) in source.iter().enumerate() {
                    packed[base + k / 4 * PANEL * 4 + k % 4] = v;
                }
                slot_scales[panel * PANEL + slot] = scales[row];
                offsets[panel * PANEL + slot] =
                    128 * source.iter().map(|&v| i32::from(v as i8)).sum::<i32>();
            }
        }
        Int8Panels {
            kernel,
            inputs,
            groups,
            outputs,
            pairing,
            memory,
            start,
            scales: slot_scales,
            offsets,
        }
    }

    /// Inputs of a row.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Output features of a row.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Bytes of one quantized input row.
    pub fn row_bytes(&self) -> usize {
        self.groups * 4
    }

    /// The kernel the products run on.
    pub fn kernel(&self) -> Int8Kernel {
        self.kernel
    }

    /// Quantizes `a` (`[r, inputs]` f32) into `bytes` (`[r, row_bytes]`)
    /// and `scales` (`[r]`) for [`Int8Panels::apply`].
    pub fn quantize<'a>(
        &self,
        a: &[f32],
        bytes: &'a mut [u8],
        scales: &'a mut [f32],
    ) -> QuantizedRows<'a> {
        let rows = a.len() / self.inputs.max(1);
        let bytes = &mut bytes[..rows * self.row_bytes()];
        let scales = &mut scales[..rows];
        quantize_rows(self.kernel, a, self.inputs, bytes, scales);
        QuantizedRows { bytes, scales }
    }

    /// `out` (`[r, outputs]`) from quantized rows: the dequantized `a @
    /// w^T`, or the gated SwiGLU of it.
    pub fn apply(&self, a: &QuantizedRows<'_>, out: &mut [f32]) {
        let rows = a.scales.len();
        assert!(
            a.bytes.len() == rows * self.row_bytes() && out.len() == rows * self.outputs,
            "int8 product of [{rows}, {}] into {} outputs",
            self.inputs,
            out.len()
        );
        // the epilogue (dequantization, gate) compiled for the kernel's
        // vector unit too: as plain x86-64 code it took half as long as
        // the integer products themselves
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Amx => {
                // SAFETY: `Amx` is chosen only where the CPU has AMX and
                // AVX-512 F and BW (`Int8Kernel::available`).
                #[allow(unsafe_code)]
                unsafe {
                    apply_amx(self, a, out)
                }
            }
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Vnni512 => {
                // SAFETY: `Vnni512` is chosen only where the CPU has
                // AVX-512 F, BW and VNNI (`Int8Kernel::available`).
                #[allow(unsafe_code)]
                unsafe {
                    apply_avx512(self, a, out)
                }
            }
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::AvxVnni => {
                // SAFETY: `AvxVnni` is chosen only where the CPU has AVX2,
                // FMA and AVX-VNNI (`Int8Kernel::available`).
                #[allow(unsafe_code)]
                unsafe {
                    apply_avx_vnni(self, a, out)
                }
            }
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx2 => {
                // SAFETY: `Avx2` is chosen only where the CPU has AVX2.
                #[allow(unsafe_code)]
                unsafe {
                    apply_avx2(self, a, out)
                }
            }
            _ => apply_rows(self, a, out),
        }
    }
}

/// [`apply_rows`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn apply_avx512(w: &Int8Panels, a: &QuantizedRows<'_>, out: &mut [f32]) {
    apply_rows(w, a, out)
}

/// [`apply_rows`] compiled for AVX2 with AVX-VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avxvnni")]
fn apply_avx_vnni(w: &Int8Panels, a: &QuantizedRows<'_>, out: &mut [f32]) {
    apply_rows(w, a, out)
}

/// [`apply_rows`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn apply_avx2(w: &Int8Panels, a: &QuantizedRows<'_>, out: &mut [f32]) {
    apply_rows(w, a, out)
}

/// [`Int8Panels::apply`] on AMX tiles: for each panel, every pair of row
/// tiles (32 tokens) in turn, in a serpentine order as in `amx_panels.rs`;
/// the sums of a pair against the panel's four B tiles (two 2x2 tile blocks)
/// then go through the same epilogue as the vector kernels'.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
fn apply_amx(w: &Int8Panels, a: &QuantizedRows<'_>, out: &mut [f32]) {
    use super::amx::{Amx, MAX_ROWS, Tiles, pair_config, row_pairs};
    let Some(amx) = Amx::detect() else {
        unreachable!("the AMX kernel is chosen only where AMX is granted")
    };
    let rows = a.scales.len();
    let row_bytes = w.row_bytes();
    let per_panel = per_panel(w.pairing);
    let panel_bytes = w.groups * PANEL * 4;
    let steps = w.groups / 16;
    let packed: &[u8] = bytemuck::cast_slice(&w.memory[w.start..]);
    let mut tiles = Tiles::new(amx, &pair_config(MAX_ROWS, MAX_ROWS));
    let mut sums = [[0i32; PANEL]; 2 * MAX_ROWS];
    for panel in 0..w.outputs.div_ceil(per_panel) {
        let weights = &packed[panel * panel_bytes..][..panel_bytes];
        let mut block = |(first, h0, h1): (usize, usize, usize)| {
            tiles.configure(&pair_config(h0, h1));
            let results: &mut [i32] = bytemuck::cast_slice_mut(&mut sums);
            // B tiles: 16 groups of a step (PANEL * 4 bytes apart), 16
            // features of the panel's four quarters
            for quarters in [0, 2] {
                tiles.zero::<0>();
                tiles.zero::<1>();
                if h1 > 0 {
                    tiles.zero::<2>();
                    tiles.zero::<3>();
                }
                for s in 0..steps {
                    let b = s * 16 * PANEL * 4 + quarters * 64;
                    tiles.load::<6, u8>(weights, b, PANEL * 4);
                    tiles.load::<7, u8>(weights, b + 64, PANEL * 4);
                    tiles.load::<4, u8>(a.bytes, first * row_bytes + s * 64, row_bytes);
                    tiles.dp_u8i8::<0, 4, 6>();
                    tiles.dp_u8i8::<1, 4, 7>();
                    if h1 > 0 {
                        let a1 = (first + MAX_ROWS) * row_bytes + s * 64;
                        tiles.load::<5, u8>(a.bytes, a1, row_bytes);
                        tiles.dp_u8i8::<2, 5, 6>();
                        tiles.dp_u8i8::<3, 5, 7>();
                    }
                }
                let column = quarters * 16;
                tiles.store::<0, i32>(results, column, PANEL * 4);
                tiles.store::<1, i32>(results, column + 16, PANEL * 4);
                if h1 > 0 {
                    tiles.store::<2, i32>(results, MAX_ROWS * PANEL + column, PANEL * 4);
                    tiles.store::<3, i32>(results, MAX_ROWS * PANEL + column + 16, PANEL * 4);
                }
            }
            for (t, sums) in sums[..h0 + h1].iter().enumerate() {
                epilogue(w, panel, sums, first + t, a.scales[first + t], out);
            }
        };
        if panel % 2 == 0 {
            row_pairs(rows).for_each(&mut block);
        } else {
            row_pairs(rows).rev().for_each(&mut block);
        }
    }
}

/// [`Int8Panels::apply`] on checked lengths: for each panel (it stays in
/// L1/L2), every tile of rows, then the epilogue of each row.
#[inline(always)]
fn apply_rows(w: &Int8Panels, a: &QuantizedRows<'_>, out: &mut [f32]) {
    let rows = a.scales.len();
    let row_bytes = w.row_bytes();
    let per_panel = per_panel(w.pairing);
    let panel_bytes = w.groups * PANEL * 4;
    let packed: &[u8] = bytemuck::cast_slice(&w.memory[w.start..]);
    for panel in 0..w.outputs.div_ceil(per_panel) {
        let weights = &packed[panel * panel_bytes..][..panel_bytes];
        for (first, height) in tiles(rows, MAX_ROWS) {
            let mut sums = [[0i32; PANEL]; MAX_ROWS];
            let rows_bytes = &a.bytes[first * row_bytes..(first + height) * row_bytes];
            tile_sums(w.kernel, rows_bytes, weights, &mut sums[..height]);
            for (t, sums) in sums[..height].iter().enumerate() {
                epilogue(w, panel, sums, first + t, a.scales[first + t], out);
            }
        }
    }
}

/// The outputs of row `row` from its integer sums over panel `panel`:
/// dequantized (`(sum - offset) * s_a * s_w`), gated for a SwiGLU, into
/// `out` (`[r, outputs]`). The same code for every kernel, so that all
/// give the same bits.
#[inline(always)]
fn epilogue(
    w: &Int8Panels,
    panel: usize,
    sums: &[i32; PANEL],
    row: usize,
    s_a: f32,
    out: &mut [f32],
) {
    let per_panel = per_panel(w.pairing);
    let first_col = panel * per_panel;
    let cols = per_panel.min(w.outputs - first_col);
    let scales: &[f32; PANEL] = slot_array(&w.scales, panel);
    let offsets: &[i32; PANEL] = slot_array(&w.offsets, panel);
    // plain loops over zipped arrays: `array::from_fn` here was not
    // inlined once the AMX kernel called it too, and ran element by element
    let mut values = [0f32; PANEL];
    for (((v, &sum), &offset), &scale) in values.iter_mut().zip(sums).zip(offsets).zip(scales) {
        *v = ((sum - offset) as f32) * (s_a * scale);
    }
    let dst = &mut out[row * w.outputs + first_col..][..cols];
    match w.pairing {
        Pairing::Plain => dst.copy_from_slice(&values[..cols]),
        Pairing::SwiGlu => {
            let (gate, up) = values.split_at(PANEL / 2);
            let mut gated = [0f32; PANEL / 2];
            for ((o, &g), &u) in gated.iter_mut().zip(gate).zip(up) {
                *o = silu(g) * u;
            }
            dst.copy_from_slice(&gated[..cols]);
        }
    }
}

/// The `PANEL` slots of panel `panel` in `[panels][PANEL]`.
#[inline(always)]
fn slot_array<T>(slots: &[T], panel: usize) -> &[T; PANEL] {
    match slots[panel * PANEL..][..PANEL].try_into() {
        Ok(a) => a,
        Err(_) => unreachable!("PANEL slots"),
    }
}

/// Output features of one panel.
fn per_panel(pairing: Pairing) -> usize {
    match pairing {
        Pairing::Plain => PANEL,
        Pairing::SwiGlu => PANEL / 2,
    }
}

/// Per-row quantization of `a` (`[r, inputs]`) into `bytes` (`[r,
/// groups * 4]`, padding bytes 128 = zero) and `scales`.
fn quantize_rows(
    kernel: Int8Kernel,
    a: &[f32],
    inputs: usize,
    bytes: &mut [u8],
    scales: &mut [f32],
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Vnni512 | Int8Kernel::Amx => {
            // SAFETY: `Vnni512` and `Amx` are chosen only where the CPU has
            // AVX-512 F and BW (`Int8Kernel::available`).
            #[allow(unsafe_code)]
            unsafe {
                quantize_rows_avx512(a, inputs, bytes, scales)
            }
        }
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx2 | Int8Kernel::AvxVnni => {
            // SAFETY: `Avx2` is chosen only where the CPU has AVX2.
            #[allow(unsafe_code)]
            unsafe {
                quantize_rows_avx2(a, inputs, bytes, scales)
            }
        }
        _ => quantize_rows_portable(a, inputs, bytes, scales),
    }
}

/// [`quantize_rows_portable`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn quantize_rows_avx512(a: &[f32], inputs: usize, bytes: &mut [u8], scales: &mut [f32]) {
    quantize_rows_portable(a, inputs, bytes, scales)
}

/// [`quantize_rows_portable`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_rows_avx2(a: &[f32], inputs: usize, bytes: &mut [u8], scales: &mut [f32]) {
    quantize_rows_portable(a, inputs, bytes, scales)
}

#[inline(always)]
fn quantize_rows_portable(a: &[f32], inputs: usize, bytes: &mut [u8], scales: &mut [f32]) {
    if scales.is_empty() {
        return;
    }
    let row_bytes = bytes.len() / scales.len();
    for ((row, dst), scale) in a
        .chunks_exact(inputs)
        .zip(bytes.chunks_exact_mut(row_bytes))
        .zip(scales.iter_mut())
    {
        let max = max_abs(row);
        // a row of zeros quantizes to zeros; a non-finite one gets a NaN
        // scale, so that its outputs are NaN as in f32
        let (s, inv) = if max > 0.0 && max.is_finite() {
            (max / 127.0, 127.0 / max)
        } else if max == 0.0 {
            (0.0, 0.0)
        } else {
            (f32::NAN, 0.0)
        };
        *scale = s;
        quantize_row(row, inv, dst);
    }
}

/// Largest `|v|`, in 16 lanes so that it vectorizes; NaN if any is.
#[inline(always)]
fn max_abs(row: &[f32]) -> f32 {
    let larger = |m: f32, v: f32| if v <= m { m } else { v };
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = larger(*m, v.abs());
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0f32, |m, &v| larger(m, v.abs()));
    lanes.iter().fold(tail, |m, &v| larger(m, v))
}

/// One row: `round_ties_even(v * inv) + 128`, in 1..=255. Adding 1.5 *
/// 2^23 rounds to an integer (ties to even) and leaves it in the low
/// mantissa bits, read with integer arithmetic: this vectorizes where
/// `round_ties_even` and a saturating `as i32` would not.
#[inline(always)]
fn quantize_row(row: &[f32], inv: f32, dst: &mut [u8]) {
    const ROUND: f32 = 12_582_912.0;
    let bias = ROUND.to_bits() as i32 - 128;
    for (d, &v) in dst.iter_mut().zip(row) {
        let x = (v * inv).clamp(-127.0, 127.0);
        *d = ((x + ROUND).to_bits() as i32 - bias) as u8;
    }
    for d in &mut dst[row.len()..] {
        *d = 128;
    }
}

/// The integer sums of one tile: `sums[t][slot] += sum_k (a_t[k] - 128 +
/// 128) q_w[slot][k]` over all of the panel's inputs (the offset is taken
/// off in the epilogue), for the `sums.len()` rows of `rows` (`[h][groups
/// * 4]`).
fn tile_sums(kernel: Int8Kernel, rows: &[u8], panel: &[u8], sums: &mut [[i32; PANEL]]) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Vnni512 => vnni::tile_sums(rows, panel, sums),
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::AvxVnni => vnni256::tile_sums(rows, panel, sums),
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx2 => {
            // SAFETY: `Avx2` is chosen only where the CPU has AVX2.
            #[allow(unsafe_code)]
            unsafe {
                tile_sums_avx2(rows, panel, sums)
            }
        }
        _ => tile_sums_portable(rows, panel, sums),
    }
}

/// [`tile_sums_portable`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn tile_sums_avx2(rows: &[u8], panel: &[u8], sums: &mut [[i32; PANEL]]) {
    tile_sums_portable(rows, panel, sums)
}

/// The tile's sums in plain integer code, one row at a time.
#[inline(always)]
fn tile_sums_portable(rows: &[u8], panel: &[u8], sums: &mut [[i32; PANEL]]) {
    let row_bytes = rows.len() / sums.len().max(1);
    for (row, sums) in rows.chunks_exact(row_bytes).zip(sums.iter_mut()) {
        for (group, weights) in row.chunks_exact(4).zip(panel.chunks_exact(PANEL * 4)) {
            let a: [i32; 4] = core::array::from_fn(|j| i32::from(group[j]));
            for (s, w) in sums.iter_mut().zip(weights.chunks_exact(4)) {
                *s += a[0] * i32::from(w[0] as i8)
                    + a[1] * i32::from(w[1] as i8)
                    + a[2] * i32::from(w[2] as i8)
                    + a[3] * i32::from(w[3] as i8);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni;

#[cfg(target_arch = "x86_64")]
mod vnni256;

#[cfg(test)]
mod tests;
