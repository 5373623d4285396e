// step_common.wgsl: the prelude shared by the two recursion-step kernels,
// mixer_step.wgsl (MLP-mixer) and attention_step.wgsl (attention).
//
// WGSL has no includes. The Rust side prepends this file to each kernel,
// visibly and nowhere else: `step_source!` in src/gpu/step_common.rs is,
// for each weight precision P and lane prelude L (workgroup or subgroup),
// `concat!(include_str!("shaders/common/params.wgsl"),
// include_str!("shaders/common/weights_P.wgsl"),
// include_str!("shaders/common/lanes_L.wgsl"),
// include_str!("shaders/common/step_common.wgsl"),
// include_str!("shaders/<kernel>.wgsl"))`. A kernel as compiled (and as
// `TRM_DUMP_KERNELS=1` prints it, with line numbers in compile errors) is
// the parameter block, the weight prelude of the model's precision, the
// lane prelude of the device (subgroup shuffles where it has them), this
// file, then the kernel's own.
//
// It holds what both kernels run identically:
//   - the bindings (both kernels bind the same five; the parameter block
//     they read is shaders/common/params.wgsl, prepended before this file);
//   - the override constants both use;
//   - the tiled matrix product `product_part(lid, op, part)`: one workgroup
//     walks output tiles of out[M, N] (+)= W[M, K] @ B[K, N], where W is a weight
//     matrix (vec4 rows) and B an activation matrix anywhere in the state or
//     the scratch with any strides (a `Product` says where), with its
//     epilogue (SwiGLU gating, plain store, or residual add into the state),
//     and the segments a fused call is cut into (`segment_part`: which of
//     a call's units a dispatch runs; see "Segments" below);
//   - the channel SwiGLU of a block as two such products
//     (`channel_gate_up`, `channel_down`) and the RMSNorm over D
//     (`rms_norm_rows`), and the injection `h = state + injection`;
//   - `lane_sum`, a sum over a cluster of consecutive invocations by the
//     lane prelude's shuffles (the width `lanes_setup` found: 1 without
//     subgroups, when every reduction takes its workgroup-memory path).
//
// Bindings (4 storage buffers, 1 uniform: fits downlevel limits)
//   0 weights  read                     the kernel's weights at the model's
//              precision, every row padded with zeros to a multiple of 4
//              weights (layout: the kernel's header). Declared by the weight
//              prelude (shaders/common/weights_<precision>.wgsl, prepended
//              before this file): array<vec4<f32>> at f32, array<vec2<u32>>
//              at f16 and bf16, array<u32> at int8 (its row scales after each
//              matrix); offsets are in groups of 4 weights at every precision
//   1 xyz      array<f32>, read_write   [3][B][S][D]: x, y = z_H, z = z_L
//   2 scratch  array<f32>, read_write   per-puzzle scratch (the kernel's header)
//   3 running  array<u32>, read         workgroup -> puzzle of the chunk (the
//              puzzles that have not halted, compacted)
//   4 params   uniform (dynamic offset) which region is the state, which the
//              injection (z update: state z, injection y + x; y update: y, z)
//
// The product's tiling (`product_tile`, used by the fused kernels'
// `product_part` for the tiles of one puzzle and by the spread schedule for one
// tile per workgroup): 64 x 64 output tiles (32 x 64 gated outputs for a
// gate/up product, whose A tile holds 32 gate rows and the 32 matching up
// rows, interleaved by pairs so that gate and up of an output sit in one
// invocation); each of the 256 invocations keeps a 4 x 4 register block,
// rows 4 ty .. 4 ty + 3 and columns 4 tx .. 4 tx + 3, so that it reads each
// K row's A and B fragments from workgroup memory as one vec4 each (2 loads
// per 16 FMAs). K runs in double-buffered steps of SK = 16 (2 buffers x 2
// tiles x 64 x SK floats = 16 KiB; SK = 8 where the adapter has less): the
// next step's tiles are loaded while the current ones are multiplied, one
// barrier per step. Both tiles are k-major with each row's vec4 slots
// XOR-swizzled by k, so the 16 invocations reading a row read 16 distinct
// vec4s and the transposing stores (A's vec4 of 4 k; B's columns when its k
// stride is 1) spread over 16 banks (at most 2-way) instead of 8- or
// 32-way. Weights are read as groups of 4 along k (one vec4, vec2<u32> or
// u32 by precision, widened to a vec4 by the weight prelude's `weight4`),
// four invocations a row; B with scalar loads, consecutive invocations
// reading consecutive addresses. Every loop bound is uniform. A tile that
// sticks out of its output skips the FMAs of the register blocks wholly
// outside it, by ty, transposing the tile where its columns stick out
// (S = 97: 100 of 128 padded columns or rows computed; `product_tile`).

override S: u32;          // state length, seq_len + P
override D: u32;          // hidden size
override DP: u32;         // D rounded up to a multiple of 4
override CI: u32;         // channel SwiGLU width, inter(D)
override LAYERS: u32;     // blocks stored: TRM's L_layers; HRM's L level then H level
override EPS: f32;        // rms_norm_eps

// binding 0, `weights`: the weight prelude's
@group(0) @binding(1) var<storage, read_write> xyz: array<f32>;
@group(0) @binding(2) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(3) var<storage, read> running: array<u32>;
@group(0) @binding(4) var<uniform> params: Params;

// Depth of a product's K step: 16 where the double-buffered tiles (2
// buffers x 2 tiles x SK x 64 floats, 16 KiB) fit the adapter's workgroup
// memory, else 8 (Apple's 16352 bytes).
override SK: u32 = 16u;

const WG: u32 = 256u;     // invocations per workgroup (16 x 16)
const TM: u32 = 64u;      // rows of an A tile
const TN: u32 = 64u;      // columns of a B tile

// vec4s of one double-buffered tile. Named on purpose: naga 30 gives an
// array size such as `32u * SK` an unnamed override of its own, and then
// fails (panics) on any named override declared after it, as the kernels'
// own are.
override TILE_VEC4S: u32 = 32u * SK;

var<workgroup> sa: array<vec4<f32>, TILE_VEC4S>;   // [2][SK][16]: A, k-major
var<workgroup> sb: array<vec4<f32>, TILE_VEC4S>;   // [2][SK][16]: B, k-major

// The invocation's 4 x 4 register block (named registers: an indexed
// array would live in memory on some compilers). In a product: acc_i holds
// row 4 ty + i, component j column 4 tx + j.
var<private> acc0: vec4<f32>;
var<private> acc1: vec4<f32>;
var<private> acc2: vec4<f32>;
var<private> acc3: vec4<f32>;

// Epilogues of a product.
const OUT_SCRATCH: u32 = 0u;    // scratch[at] = value (gated when paired)
const OUT_ADD_STATE: u32 = 1u;  // xyz[at] += value (the residual add)

// One matrix product out[M, N] (+)= W[M, K] @ B[K, N] and where its
// operands live (element indices into the bound buffers).
struct Product {
    w_off: u32,      // first group of W (4 weights); W rows hold KP weights
    m: u32,          // output rows (gated rows when paired)
    n: u32,          // output columns
    k: u32,          // reduction length
    kp: u32,         // K rounded up to a multiple of 4 (W's row length)
    paired: bool,    // W holds 2M rows: out[r] = silu(W[r] . B) * (W[M + r] . B)
    b_state: bool,   // B is in xyz (else in scratch)
    b_base: u32,     // B[k, n] at b_base + k b_ks + n b_ns; with b_running,
    b_ks: u32,       //   at state_base + running[n / n_inner] puzzle_stride
    b_ns: u32,       //   + k b_ks + (n % n_inner) b_ns (the spread schedule)
    out: u32,        // OUT_SCRATCH or OUT_ADD_STATE
    o_base: u32,     // out[m, n] at o_base + m o_ms + n o_ns
    o_ms: u32,
    o_ns: u32,
    b_running: bool,
    n_inner: u32,
}

// SiLU that cannot produce NaN or rely on infinities: exp's argument is
// clamped, so 1 + e stays finite; for a < -88 the result is a / 1.65e38,
// about 0, as the exact value.
fn silu(a: f32) -> f32 {
    return a / (1.0 + exp(min(-a, 88.0)));
}

// silu(g) * u, component-wise.
fn gated(g: vec4<f32>, u: vec4<f32>) -> vec4<f32> {
    return g / (1.0 + exp(min(-g, vec4<f32>(88.0)))) * u;
}

fn zero_acc() {
    acc0 = vec4<f32>(0.0);
    acc1 = vec4<f32>(0.0);
    acc2 = vec4<f32>(0.0);
    acc3 = vec4<f32>(0.0);
}

// vec4 slot of group v (rows or columns 4v .. 4v + 3) in row k (< 16) of
// buffer `buf`: XOR-swizzled, so that the 16 invocations reading a row read
// 16 distinct vec4s and the transposing stores spread over 16 banks.
fn slot(buf: u32, k: u32, v: u32) -> u32 {
    return (buf * SK + k) * 16u + (v ^ k);
}

// The B elements this invocation loads in every K step of a tile (SK / 4
// of them): their column's first element, tile row and column, and whether
// the column exists. Fixed for the whole tile.
var<private> b_col: array<u32, 4>;
var<private> b_kk: array<u32, 4>;
var<private> b_nn: array<u32, 4>;
var<private> b_ok: array<bool, 4>;

fn b_columns(lid: u32, op: Product, n0: u32) {
    for (var r = 0u; r < SK / 4u; r++) {
        let idx = lid + r * WG;              // SK x 64 elements
        var kk = idx / 64u;
        var nn = idx % 64u;
        if (op.b_ks == 1u) {
            // consecutive k are consecutive in memory
            kk = idx % SK;
            nn = idx / SK;
        }
        let n = n0 + nn;
        b_kk[r] = kk;
        b_nn[r] = nn;
        b_ok[r] = n < op.n;
        if (op.b_running) {
            let p = min(n / op.n_inner, op.n / op.n_inner - 1u);
            b_col[r] = params.state_base + running[p] * params.puzzle_stride
                + (n % op.n_inner) * op.b_ns;
        } else {
            b_col[r] = op.b_base + n * op.b_ns;
        }
    }
}

// Loads the A and B tiles of K step [k0, k0 + SK) into buffer `buf`, zero
// beyond `kend` and outside the matrices.
fn load_tiles(lid: u32, op: Product, buf: u32, m0: u32, k0: u32, kend: u32) {
    // A: 64 rows x SK / 4 vec4s, one (or half a) vec4 per invocation; four
    // consecutive invocations read one row's SK floats.
    let q_per_row = SK / 4u;
    if (lid < 16u * SK) {
        let row = lid / q_per_row;
        let q = lid % q_per_row;
        let k = k0 + 4u * q;
        var grow = m0 + row;
        var valid = grow < op.m;
        if (op.paired) {
            // tile rows 4i, 4i + 1: gate rows of outputs 2i, 2i + 1;
            // 4i + 2, 4i + 3: their up rows
            let o = m0 + 2u * (row / 4u) + (row % 2u);
            valid = o < op.m;
            grow = select(o, op.m + o, (row % 4u) >= 2u);
        }
        var v = vec4<f32>(0.0);
        if (valid && k < min(op.kp, kend)) {
            v = weight4(op, grow, k);
        }
        let g = row / 4u;
        let c = row % 4u;
        sa[slot(buf, 4u * q, g)][c] = v.x;
        sa[slot(buf, 4u * q + 1u, g)][c] = v.y;
        sa[slot(buf, 4u * q + 2u, g)][c] = v.z;
        sa[slot(buf, 4u * q + 3u, g)][c] = v.w;
    }
    // B: SK x 64 scalars, SK / 4 per invocation
    let kb = min(op.k, kend);
    for (var r = 0u; r < SK / 4u; r++) {
        let k = k0 + b_kk[r];
        var v = 0.0;
        if (b_ok[r] && k < kb) {
            let at = b_col[r] + k * op.b_ks;
            if (op.b_state) {
                v = xyz[at];
            } else {
                v = scratch[at];
            }
        }
        sb[slot(buf, b_kk[r], b_nn[r] / 4u)][b_nn[r] % 4u] = v;
    }
}

// Writes the outputs (r, n .. n + 3) of `v` that exist through the
// product's epilogue.
fn store_row(op: Product, o: u32, r: u32, n: u32, v: vec4<f32>) {
    if (r >= op.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (n + j < op.n) {
            let at = o + r * op.o_ms + (n + j) * op.o_ns;
            if (op.out == OUT_ADD_STATE) {
                xyz[at] = xyz[at] + v[j];
            } else {
                scratch[at] = v[j];
            }
        }
    }
}

// acc += the A tile^T-block @ the B tile-block of buffer `buf` over its
// first `kn` rows (<= SK; the rest hold zeros): acc_i holds row 4 rb + i,
// component j column 4 cb + j, the fragments read as one vec4 each (the
// products' and the attention's one inner loop).
fn multiply_tile(buf: u32, rb: u32, cb: u32, kn: u32) {
    for (var kk = 0u; kk < kn; kk++) {
        let a = sa[slot(buf, kk, rb)];
        let b = sb[slot(buf, kk, cb)];
        acc0 = fma(vec4<f32>(a.x), b, acc0);
        acc1 = fma(vec4<f32>(a.y), b, acc1);
        acc2 = fma(vec4<f32>(a.z), b, acc2);
        acc3 = fma(vec4<f32>(a.w), b, acc3);
    }
}

// One output tile of `op` from rows m0 and columns n0, over the K range
// [kbeg, kend) (kend a multiple of SK, or op.kp), written at o_base + o:
// the double-buffered K loop, one barrier per step. Uniform control flow.
//
// Padding: a tile that sticks out of the output (S = 97 fills two 64-wide
// tiles, the second with 33 columns or rows) skips the FMAs of the
// register blocks wholly outside it. The skip goes by ty (lid / 16), so
// that whole warps and SIMD groups skip rather than diverge: where the
// tile's columns stick out, the invocations are transposed for the tile
// (ty picks the block of columns, tx the block of rows; the reads stay
// conflict-free, A's turning into 16 distinct slots and B's into one
// broadcast). At S = 97 a product over S computes 100 of every 128
// padded columns or rows (was 128); they still load their tiles.
fn product_tile(lid: u32, op: Product, m0: u32, n0: u32, kbeg: u32, kend: u32, o: u32) {
    let steps = (kend - kbeg + SK - 1u) / SK;
    let ty = lid / 16u;
    let tx = lid % 16u;
    let tile_rows = select(TM, TM / 2u, op.paired);
    let rows = min(tile_rows, op.m - m0);         // output rows that exist
    let cols = min(TN, op.n - n0);                 // output columns that exist
    let transposed = cols < TN;
    let rb = select(ty, tx, transposed);           // this block: A rows 4 rb ..
    let cb = select(tx, ty, transposed);           // and columns 4 cb ..
    // outputs of the block's A rows: 4 rb .. (2 rb .. gated when paired)
    let first_row = select(4u * rb, 2u * rb, op.paired);
    let live = first_row < rows && 4u * cb < cols;
    b_columns(lid, op, n0);
    zero_acc();
    load_tiles(lid, op, 0u, m0, kbeg, kend);
    workgroupBarrier();
    for (var st = 0u; st < steps; st++) {
        let cur = st % 2u;
        if (st + 1u < steps) {
            load_tiles(lid, op, 1u - cur, m0, kbeg + (st + 1u) * SK, kend);
        }
        if (live) {
            multiply_tile(cur, rb, cb, SK);
        }
        workgroupBarrier();
    }
    let n = n0 + 4u * cb;
    if (op.paired) {
        // rows 4 rb, 4 rb + 1: gates of outputs 2 rb, 2 rb + 1; then their ups
        store_row(op, o, m0 + 2u * rb, n, gated(acc0, acc2));
        store_row(op, o, m0 + 2u * rb + 1u, n, gated(acc1, acc3));
    } else {
        store_row(op, o, m0 + 4u * rb, n, acc0);
        store_row(op, o, m0 + 4u * rb + 1u, n, acc1);
        store_row(op, o, m0 + 4u * rb + 2u, n, acc2);
        store_row(op, o, m0 + 4u * rb + 3u, n, acc3);
    }
}

// Output tiles of a product: 64 rows (32 gated outputs when paired) by 64
// columns.
fn tiles_m(op: Product) -> u32 {
    return (op.m + select(TM, TM / 2u, op.paired) - 1u) / select(TM, TM / 2u, op.paired);
}
fn tiles_n(op: Product) -> u32 {
    return (op.n + TN - 1u) / TN;
}

// Output tiles of a product in all.
fn product_tiles(op: Product) -> u32 {
    return tiles_m(op) * tiles_n(op);
}

// ---- Segments: a fused network call cut into dispatches.
//
// A fused kernel walks its call as a sequence of units: each product's
// output tiles in order, the attention's tiles, RoPE as one unit (the
// kernel's `main` lists them). One dispatch runs the units
// [params.unit_first, params.unit_end) of the call, its segment: the
// injection where the segment starts the call, and after a product the
// norm that follows it where the segment holds the product's last tile.
// The host (src/gpu/budget.rs) cuts each call so that no invocation of a
// dispatch runs more than LOOP_BUDGET loop iterations (32768, a count it
// bounds from these loops), because some drivers silently end every loop
// of an invocation after 65535 iterations in all (Mesa's llvmpipe 22.3,
// Debian 12's, in lavapipe and GL alike; gone by 25.0), which at the
// official Sudoku shape skipped most of a call. A segment boundary costs a
// dispatch, which also orders every storage access of the one before it.

// The part [lo, hi) of a phase of `n` units from unit `base` that this
// dispatch runs, relative to the phase (empty where it runs none).
// Workgroup-uniform: it depends on the parameter block only.
fn segment_part(base: u32, n: u32) -> vec2<u32> {
    let lo = clamp(params.unit_first, base, base + n);
    let hi = clamp(params.unit_end, base, base + n);
    return vec2<u32>(lo - base, hi - base);
}

// Output tiles part.x .. part.y of a product (the dispatch's part of it,
// segment_part), by one workgroup (the fused kernels). Every loop bound is
// uniform. The caller puts a storageBarrier after it before reading its
// output.
fn product_part(lid: u32, op: Product, part: vec2<u32>) {
    let tn = tiles_n(op);
    let tile_rows = select(TM, TM / 2u, op.paired);
    for (var t = part.x; t < part.y; t++) {
        product_tile(lid, op, (t / tn) * tile_rows, (t % tn) * TN, 0u, op.kp, op.o_base);
    }
}

// h = state + injection (the first thing a network call does).
fn inject(lid: u32, state: u32, inj_a: u32, inj_b: u32) {
    for (var i = lid; i < S * D; i += WG) {
        var inj = xyz[inj_a + i];
        if (params.inject_sum != 0u) {
            inj = inj + xyz[inj_b + i];
        }
        xyz[state + i] = xyz[state + i] + inj;
    }
}

// Channel SwiGLU, first product: gated [CI, S] = silu(g) * u (stored
// transposed in the scratch at `work`), [g | u] = ch_gu [2CI, DP] @ h^T.
fn channel_gate_up(state: u32, work: u32, w_off: u32) -> Product {
    return Product(w_off, CI, S, D, DP, true, true, state, 1u, D, OUT_SCRATCH, work, S, 1u, false, 0u);
}

// Channel SwiGLU, second product: h^T [D, S] += ch_dn [D, CI] @ gated [CI, S].
fn channel_down(state: u32, work: u32, w_off: u32) -> Product {
    return Product(w_off, D, S, CI, CI, false, false, work, S, 1u, OUT_ADD_STATE, state, 1u, D, false, 0u);
}

// Groups (of 4 weights, the weight prelude's matrix_len) of the channel
// SwiGLU weights of one layer: ch_gu [2CI, DP] | ch_dn [D, CI].
fn channel_gate_up_len() -> u32 {
    return matrix_len(2u * CI, DP);
}
fn channel_down_len() -> u32 {
    return matrix_len(D, CI);
}

// The sum of v over the cluster of `width` consecutive invocations that
// holds this one (width a power of two, at most `lanes`), returned to all
// of them: a butterfly of XOR shuffles (the lane prelude's lane_xor), with
// the same bits in every invocation (float addition is commutative).
fn lane_sum(v: f32, width: u32) -> f32 {
    var s = v;
    for (var m = 1u; m < width; m *= 2u) {
        s = s + lane_xor(s, m);
    }
    return s;
}

// rms_norm over D of every row s, four invocations a row (64 rows a
// pass): each sums the squares of every fourth element, the four partials
// meet by lane shuffles where `lanes` (lanes_setup) is at least 4, else in
// workgroup memory (the product tiles' memory, free between phases; 2
// barriers a pass), and each scales its own elements. The caller puts a
// storageBarrier after it.
fn rms_norm_rows(lid: u32, state: u32, lanes: u32) {
    let q = lid % 4u;
    for (var s0 = 0u; s0 < S; s0 += 64u) {
        let s = s0 + lid / 4u;
        let row = state + s * D;
        var ss = 0.0;
        if (s < S) {
            for (var d = q; d < D; d += 4u) {
                let v = xyz[row + d];
                ss = fma(v, v, ss);
            }
        }
        var total = 0.0;
        if (lanes >= 4u) {
            total = lane_sum(ss, 4u);
        } else {
            workgroupBarrier();
            sa[lid / 4u][q] = ss;
            workgroupBarrier();
            let p = sa[lid / 4u];
            total = p.x + p.y + p.z + p.w;
        }
        if (s < S) {
            let scale = inverseSqrt(total / f32(D) + EPS);
            for (var d = q; d < D; d += 4u) {
                xyz[row + d] = xyz[row + d] * scale;
            }
        }
    }
}

// ---- A test mode, and what the kernels report.

// POISON_WORKGROUP (GpuOptions::poison_workgroup_memory, for tests): each
// kernel that has workgroup memory first fills it with NaN (the lane
// prelude's words with all ones), so that a read before a write shows in
// its results; the pipelines leave it uninitialised otherwise
// (zero_initialize_workgroup_memory is off).
override POISON_WORKGROUP: bool = false;

// A NaN that no compiler folds away (its bits come from the invocation).
fn runtime_nan(lid: u32) -> f32 {
    return bitcast<f32>(0x7fc00000u | (lid & 0x100000u));
}

// The tiles and the lane prelude's words, poisoned (all invocations, in
// uniform control flow, first thing).
fn poison_workgroup(lid: u32) {
    if (POISON_WORKGROUP) {
        let nan = vec4<f32>(runtime_nan(lid));
        for (var i = lid; i < TILE_VEC4S; i += WG) {
            sa[i] = nan;
            sb[i] = nan;
        }
        lanes_poison(lid);
        workgroupBarrier();
    }
}

// Where the kernels report the lane width `lanes_setup` found (1 without
// subgroup clusters): the last four floats of the scratch binding, one per
// kernel, written by the invocation 0 of a dispatch's first workgroup
// (GpuEngine::lane_widths reads them; the subgroup size may differ from one
// pipeline to the next, so each reports its own).
const REPORT_FUSED: u32 = 0u;       // mixer_step.wgsl or attention_step.wgsl `main`
const REPORT_NORM_ROWS: u32 = 1u;   // spread_norm_rows
const REPORT_ATTENTION: u32 = 2u;   // spread_attention

fn report_lanes(slot: u32, first_group: bool, lid: u32, lanes: u32) {
    if (first_group && lid == 0u) {
        scratch[arrayLength(&scratch) - 4u + slot] = f32(lanes);
    }
}

// The spread schedule's helpers (spread_step.wgsl and the spread entry
// points of attention_step.wgsl).

// Linear workgroup id over a 2-D grid (a phase's workgroups are laid out
// 2-D so that no dimension exceeds 65535).
fn group_of(wid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return wid.y * groups.x + wid.x;
}

// First element of the updated state of active puzzle p.
fn puzzle_base(p: u32) -> u32 {
    return params.state_base + running[p] * params.puzzle_stride;
}
