// step_common.wgsl: the prelude shared by the two recursion-step kernels,
// mixer_step.wgsl (MLP-mixer) and attention_step.wgsl (attention).
//
// WGSL has no includes. The Rust side prepends this file to each kernel,
// visibly and nowhere else: `step_source!` in src/gpu/step_common.rs is
// `concat!(include_str!("shaders/common/params.wgsl"),
// include_str!("shaders/common/step_common.wgsl"),
// include_str!("shaders/<kernel>.wgsl"))`. A kernel as compiled (and as
// `TRM_DUMP_KERNELS=1` prints it, with line numbers in compile errors) is
// the parameter block, this file, then the kernel's own.
//
// It holds what both kernels run identically:
//   - the bindings (both kernels bind the same five; the parameter block
//     they read is shaders/common/params.wgsl, prepended before this file);
//   - the override constants both use;
//   - the tiled matrix product `product(lid, op)`: one workgroup walks all
//     output tiles of out[M, N] (+)= W[M, K] @ B[K, N], where W is a weight
//     matrix (vec4 rows) and B an activation matrix anywhere in the state or
//     the scratch with any strides (a `Product` says where), with its
//     epilogue (SwiGLU gating, plain store, or residual add into the state);
//   - the channel SwiGLU of a block as two such products
//     (`channel_gate_up`, `channel_down`) and the RMSNorm over D
//     (`rms_norm_rows`), and the injection `h = state + injection`.
//
// Bindings (4 storage buffers, 1 uniform: fits downlevel limits)
//   0 weights  array<vec4<f32>>, read   the kernel's weights, every row padded
//              with zeros to a multiple of 4 floats (layout: the kernel's header)
//   1 xyz      array<f32>, read_write   [3][B][S][D]: x, y = z_H, z = z_L
//   2 scratch  array<f32>, read_write   per-puzzle scratch (the kernel's header)
//   3 running  array<u32>, read         workgroup -> puzzle of the chunk (the
//              puzzles that have not halted, compacted)
//   4 params   uniform (dynamic offset) which region is the state, which the
//              injection (z update: state z, injection y + x; y update: y, z)
//
// The product's tiling: 64 x 64 output tiles (32 x 64 gated outputs for a
// gate/up product, whose A tile holds 32 gate rows and the 32 matching up
// rows), K in steps of TK = 32 through 16 KiB of workgroup memory (A tile
// 64 x TK, B tile TK x 64; TK = 16 where the adapter has less than 16 KiB);
// each of the 256 invocations keeps a 4 x 4 register block, rows ty + 16 i
// and columns tx + 16 j. A tiles (weights) are read with vec4 loads; B tiles
// with scalar loads, consecutive invocations reading consecutive addresses
// (along k when B's k stride is 1, else along n). Barriers: 2 per K step of
// every output tile; every loop bound is uniform.

override S: u32;          // state length, seq_len + P
override D: u32;          // hidden size
override DP: u32;         // D rounded up to a multiple of 4
override CI: u32;         // channel SwiGLU width, inter(D)
override L_LAYERS: u32;   // blocks
override EPS: f32;        // rms_norm_eps

// Depth of a tile step: 32 where the two tiles (2 x 64 x TK floats, 16 KiB)
// fit the adapter's workgroup memory, else 16 (Apple's 16352 bytes). 64
// would halve the barriers where 32 KiB exist; on lavapipe it measured no
// faster, and on GPUs it halves the workgroups resident per core.
override TK: u32 = 32u;

const WG: u32 = 256u;     // invocations per workgroup (16 x 16)
const TM: u32 = 64u;      // rows of an A tile
const TN: u32 = 64u;      // columns of a B tile


@group(0) @binding(0) var<storage, read> weights: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> xyz: array<f32>;
@group(0) @binding(2) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(3) var<storage, read> running: array<u32>;
@group(0) @binding(4) var<uniform> params: Params;

// Floats of each tile. Named on purpose: naga 30 gives an array size such
// as `TK * TM` an unnamed override of its own, and then fails (panics) on
// any named override declared after it, as the kernels' own are.
override TILE_FLOATS: u32 = TK * 64u;

var<workgroup> a_tile: array<f32, TILE_FLOATS>;   // [TK][TM], k-major
var<workgroup> b_tile: array<f32, TILE_FLOATS>;   // [TK][TN], k-major

// The invocation's 4 x 4 register block: acc_i holds row ty + 16 i,
// component j column tx + 16 j.
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
    w_off: u32,      // first vec4 of W; W rows hold KP floats
    m: u32,          // output rows (gated rows when paired)
    n: u32,          // output columns
    k: u32,          // reduction length
    kp: u32,         // K rounded up to a multiple of 4 (W's row length)
    paired: bool,    // W holds 2M rows: out[r] = silu(W[r] . B) * (W[M + r] . B)
    b_state: bool,   // B is in xyz (else in scratch)
    b_base: u32,     // B[k, n] at b_base + k b_ks + n b_ns
    b_ks: u32,
    b_ns: u32,
    out: u32,        // OUT_SCRATCH or OUT_ADD_STATE
    o_base: u32,     // out[m, n] at o_base + m o_ms + n o_ns
    o_ms: u32,
    o_ns: u32,
}

// SiLU that cannot produce NaN or rely on infinities: exp's argument is
// clamped, so 1 + e stays finite; for a < -88 the result is a / 1.65e38,
// about 0, as the exact value.
fn silu(a: f32) -> f32 {
    return a / (1.0 + exp(min(-a, 88.0)));
}

// A tile: 64 weight rows (or 32 gate + 32 up rows when paired) by TK
// columns from k0, as vec4 loads; rows beyond M and columns beyond KP are 0.
fn load_a(lid: u32, op: Product, m0: u32, k0: u32) {
    let row_vec4s = op.kp / 4u;
    let step_vec4s = TK / 4u;
    for (var r = 0u; r < TK / 16u; r++) {
        let idx = lid + r * WG;          // 64 rows x TK / 4 vec4s
        let row = idx / step_vec4s;
        let q = idx % step_vec4s;
        let k = k0 + 4u * q;
        var grow = m0 + row;
        var valid = grow < op.m;
        if (op.paired) {
            let g = m0 + (row % 32u);
            valid = g < op.m;
            grow = select(g, op.m + g, row >= 32u);
        }
        var v = vec4<f32>(0.0);
        if (valid && k < op.kp) {
            v = weights[op.w_off + grow * row_vec4s + k / 4u];
        }
        let base = 4u * q * TM + row;
        a_tile[base] = v.x;
        a_tile[base + TM] = v.y;
        a_tile[base + 2u * TM] = v.z;
        a_tile[base + 3u * TM] = v.w;
    }
}

// B tile: TK rows (k) by 64 columns (n), zero outside K x N.
fn load_b(lid: u32, op: Product, k0: u32, n0: u32) {
    for (var r = 0u; r < TK / 4u; r++) {
        let idx = lid + r * WG;          // TK x 64
        var kk = idx / TN;
        var nn = idx % TN;
        if (op.b_ks == 1u) {
            // consecutive k are consecutive in memory
            kk = idx % TK;
            nn = idx / TK;
        }
        let k = k0 + kk;
        let n = n0 + nn;
        var v = 0.0;
        if (k < op.k && n < op.n) {
            let at = op.b_base + k * op.b_ks + n * op.b_ns;
            if (op.b_state) {
                v = xyz[at];
            } else {
                v = scratch[at];
            }
        }
        b_tile[kk * TN + nn] = v;
    }
}

// acc += a_tile^T-block @ b_tile-block over the TK rows of the tiles.
fn multiply_tile(ty: u32, tx: u32) {
    for (var kk = 0u; kk < TK; kk++) {
        let ai = kk * TM + ty;
        let bi = kk * TN + tx;
        let a = vec4<f32>(a_tile[ai], a_tile[ai + 16u], a_tile[ai + 32u], a_tile[ai + 48u]);
        let b = vec4<f32>(b_tile[bi], b_tile[bi + 16u], b_tile[bi + 32u], b_tile[bi + 48u]);
        acc0 = fma(vec4<f32>(a.x), b, acc0);
        acc1 = fma(vec4<f32>(a.y), b, acc1);
        acc2 = fma(vec4<f32>(a.z), b, acc2);
        acc3 = fma(vec4<f32>(a.w), b, acc3);
    }
}

fn zero_acc() {
    acc0 = vec4<f32>(0.0);
    acc1 = vec4<f32>(0.0);
    acc2 = vec4<f32>(0.0);
    acc3 = vec4<f32>(0.0);
}

// Writes the register block through the product's epilogue.
fn store_tile(op: Product, ty: u32, tx: u32, m0: u32, n0: u32) {
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + tx + 16u * j;
        if (n >= op.n) {
            continue;
        }
        if (op.paired) {
            let r0 = m0 + ty;
            let r1 = r0 + 16u;
            if (r0 < op.m) { scratch[op.o_base + r0 * op.o_ms + n * op.o_ns] = silu(acc0[j]) * acc2[j]; }
            if (r1 < op.m) { scratch[op.o_base + r1 * op.o_ms + n * op.o_ns] = silu(acc1[j]) * acc3[j]; }
        } else {
            let rows = vec4<u32>(m0 + ty, m0 + ty + 16u, m0 + ty + 32u, m0 + ty + 48u);
            let vals = vec4<f32>(acc0[j], acc1[j], acc2[j], acc3[j]);
            for (var i = 0u; i < 4u; i++) {
                let row = rows[i];
                if (row < op.m) {
                    let at = op.o_base + row * op.o_ms + n * op.o_ns;
                    if (op.out == OUT_ADD_STATE) {
                        xyz[at] = xyz[at] + vals[i];
                    } else {
                        scratch[at] = vals[i];
                    }
                }
            }
        }
    }
}

// One matrix product over all its output tiles. Every loop bound is
// uniform. The caller puts a storageBarrier after it before reading its
// output.
fn product(lid: u32, op: Product) {
    let tile_rows = select(TM, TM / 2u, op.paired);
    let tiles_n = (op.n + TN - 1u) / TN;
    let tiles = ((op.m + tile_rows - 1u) / tile_rows) * tiles_n;
    let ty = lid / 16u;
    let tx = lid % 16u;
    for (var t = 0u; t < tiles; t++) {
        let m0 = (t / tiles_n) * tile_rows;
        let n0 = (t % tiles_n) * TN;
        zero_acc();
        for (var k0 = 0u; k0 < op.k; k0 += TK) {
            workgroupBarrier();
            load_a(lid, op, m0, k0);
            load_b(lid, op, k0, n0);
            workgroupBarrier();
            multiply_tile(ty, tx);
        }
        store_tile(op, ty, tx, m0, n0);
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
    return Product(w_off, CI, S, D, DP, true, true, state, 1u, D, OUT_SCRATCH, work, S, 1u);
}

// Channel SwiGLU, second product: h^T [D, S] += ch_dn [D, CI] @ gated [CI, S].
fn channel_down(state: u32, work: u32, w_off: u32) -> Product {
    return Product(w_off, D, S, CI, CI, false, false, work, S, 1u, OUT_ADD_STATE, state, 1u, D);
}

// Floats (vec4s) of the channel SwiGLU weights of one layer:
// ch_gu [2CI, DP] | ch_dn [D, CI].
fn channel_gate_up_vec4s() -> u32 {
    return 2u * CI * DP / 4u;
}
fn channel_down_vec4s() -> u32 {
    return D * CI / 4u;
}

// rms_norm over D, one invocation per row s (no workgroup reduction and so
// no extra barrier); the caller puts a storageBarrier after it.
fn rms_norm_rows(lid: u32, state: u32) {
    for (var s = lid; s < S; s += WG) {
        let row = state + s * D;
        var ss = 0.0;
        for (var d = 0u; d < D; d++) {
            let v = xyz[row + d];
            ss = fma(v, v, ss);
        }
        let scale = inverseSqrt(ss / f32(D) + EPS);
        for (var d = 0u; d < D; d++) {
            xyz[row + d] = xyz[row + d] * scale;
        }
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
