// mixer_step.wgsl: one TRM network call of the MLP-mixer model (mlp_t = true)
// for every active puzzle, fused into ONE dispatch (one recursion step).
//
//   state = net(state, injection)      (shared/TRM.md, Forward pass)
//   h = state + injection              injection = y + x (z update, summed first)
//                                      or z (y update)
//   for each of the L_LAYERS blocks:
//     h = rms_norm_over_S(h + down_t @ (silu(g) * u)),  [g | u] = gate_up_t @ h
//     h = rms_norm_over_D(h + (silu(g) * u) @ down^T),  [g | u] = h @ gate_up^T
//   state = h                          (written in place)
//
// Bindings (4 storage buffers, 1 uniform: fits downlevel limits)
//   0 weights  array<vec4<f32>>, read   per layer, row-major [out, in] with
//              every row padded with zeros to a multiple of 4 floats:
//                tok_gu [2 TI, SP] | tok_dn [S, TI] | ch_gu [2 CI, DP] | ch_dn [D, CI]
//              (SP, DP: S, D rounded up to 4; TI, CI are multiples of 256)
//   1 xyz      array<f32>, read_write   [3][B][S][D]: x, y = z_H, z = z_L
//   2 scratch  array<f32>, read_write   per puzzle max(TI D, CI S) floats:
//              gated token activations [TI, D] or channel ones, transposed, [CI, S]
//   3 running  array<u32>, read         workgroup -> puzzle of the chunk (the
//              puzzles that have not halted, compacted)
//   4 params   uniform (dynamic offset) which region is the state, which the
//              injection (z update: state z, injection y + x; y update: y, z)
//
// Work split: one workgroup of 256 invocations per active puzzle; it walks
// the phases below in uniform control flow, a storageBarrier between phases.
// The four matrix products are tiled 64 x 64 (32 x 64 gated outputs for the
// gate/up products, whose A tile holds 32 gate rows and the 32 matching up
// rows), K in steps of TK = 32 through 16 KiB of workgroup memory (A tile
// 64 x TK, B tile TK x 64; TK = 16 where the adapter has less than 16 KiB);
// each invocation keeps a 4 x 4 register block,
// rows ty + 16 i and columns tx + 16 j. A tiles (weights) are read with vec4
// loads; B tiles (activations, sizes not multiples of 4) with scalar loads,
// consecutive invocations reading consecutive addresses. SiLU, the gating,
// the residual add are applied to the register block before it is stored;
// the RMSNorms (over S per column, over D per row) run one invocation per
// column or row, with no workgroup reduction and so no extra barrier.
// A weight is read once per column tile of its product, per workgroup and
// step: ceil(D/64) times for the token products, ceil(S/64) for the channel
// ones (8 and 2 at Sudoku size), after the first workgroup from cache. Once
// per step would need tiles spanning all of N (S = 97 fits one 128-wide tile
// at TK = 16); that trade-off belongs to the performance issue.
//
// Cost per puzzle per recursion step (one dispatch), L = L_LAYERS:
//   FLOPs  L (6 S D TI + 6 S D CI) for the products, plus O(L S D) for the
//          injection, SiLU, gating and norms. Sudoku (S 97, D 512, TI 512,
//          CI 1536, L 2): 1.22 GFLOP.
//   bytes  weights 4 L (ceil(D/64) (2 TI SP + S TI) + ceil(S/64) (2 CI DP + D CI))
//          (Sudoku: 47 MB read, 20 MB of them distinct), plus about
//          4 L (8 S D + 3 TI D + 3 CI S) of activation traffic through the
//          per-puzzle state and scratch (L2-resident at small batch).
//   barriers  L (2 ceil(TI/32) ceil(D/64) ceil(S/TK) + 2 ceil(S/64) ceil(D/64) ceil(TI/TK)
//          + 2 ceil(CI/32) ceil(S/64) ceil(D/TK) + 2 ceil(D/64) ceil(S/64) ceil(CI/TK)) + 6 L + 1
//          (Sudoku: 12 301, which is why lavapipe, where a barrier costs
//          microseconds, wants small CI models).
//
// Small-batch schedule (not built here): one workgroup per puzzle leaves
// most of a large GPU idle when B is small. The extension splits each
// product's output tiles over G workgroups per puzzle (dispatch G x B) and
// replaces the in-shader storageBarrier between phases by a dispatch
// boundary (or a global atomic phase counter), keeping this file's tile code;
// the norms then need a two-pass reduction over tiles.

override S: u32;          // state length, seq_len + P
override D: u32;          // hidden size
override TI: u32;         // token-mixing SwiGLU width, inter(S)
override CI: u32;         // channel SwiGLU width, inter(D)
override SP: u32;         // S rounded up to a multiple of 4
override DP: u32;         // D rounded up to a multiple of 4
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

struct Params {
    state_base: u32,      // first element of the updated state's region
    inj_a_base: u32,      // first element of the injection's first term
    inj_b_base: u32,      // first element of its second term (if inject_sum)
    inject_sum: u32,      // 1: injection = a + b (summed first); 0: injection = a
    q_base: u32,          // (heads only)
    puzzle_stride: u32,   // S * D
    batch: u32,           // puzzles in the chunk
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> weights: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> xyz: array<f32>;
@group(0) @binding(2) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(3) var<storage, read> running: array<u32>;
@group(0) @binding(4) var<uniform> params: Params;

var<workgroup> a_tile: array<f32, TK * TM>;   // [TK][TM], k-major
var<workgroup> b_tile: array<f32, TK * TN>;   // [TK][TN], k-major

// The invocation's 4 x 4 register block: acc_i holds row ty + 16 i,
// component j column tx + 16 j.
var<private> acc0: vec4<f32>;
var<private> acc1: vec4<f32>;
var<private> acc2: vec4<f32>;
var<private> acc3: vec4<f32>;

// Kinds of product (all four share the tile loop).
const TOKEN_GATE_UP: u32 = 0u;   // [TI, D] gated  = tok_gu [2TI, S] @ h [S, D]
const TOKEN_DOWN: u32 = 1u;      // h [S, D]      += tok_dn [S, TI] @ gated [TI, D]
const CHANNEL_GATE_UP: u32 = 2u; // [CI, S] gated  = ch_gu [2CI, D] @ h^T [D, S]
const CHANNEL_DOWN: u32 = 3u;    // h^T [D, S]    += ch_dn [D, CI] @ gated [CI, S]

// SiLU that cannot produce NaN or rely on infinities: exp's argument is
// clamped, so 1 + e stays finite; for a < -88 the result is a / 1.65e38,
// about 0, as the exact value.
fn silu(a: f32) -> f32 {
    return a / (1.0 + exp(min(-a, 88.0)));
}

// A tile: 64 weight rows (or 32 gate + 32 up rows when `paired`) by TK
// columns from k0, as vec4 loads; rows beyond M and columns beyond kp are 0.
fn load_a(lid: u32, w_off: u32, kp: u32, m0: u32, m: u32, paired: bool, k0: u32) {
    let row_vec4s = kp / 4u;
    let step_vec4s = TK / 4u;
    for (var r = 0u; r < TK / 16u; r++) {
        let idx = lid + r * WG;          // 64 rows x TK / 4 vec4s
        let row = idx / step_vec4s;
        let q = idx % step_vec4s;
        let k = k0 + 4u * q;
        var grow = m0 + row;
        var valid = grow < m;
        if (paired) {
            let g = m0 + (row % 32u);
            valid = g < m;
            grow = select(g, m + g, row >= 32u);
        }
        var v = vec4<f32>(0.0);
        if (valid && k < kp) {
            v = weights[w_off + grow * row_vec4s + k / 4u];
        }
        let base = 4u * q * TM + row;
        a_tile[base] = v.x;
        a_tile[base + TM] = v.y;
        a_tile[base + 2u * TM] = v.z;
        a_tile[base + 3u * TM] = v.w;
    }
}

// B tile: TK rows (k) by 64 columns (n), zero outside K x N.
fn load_b(kind: u32, lid: u32, state: u32, work: u32, k0: u32, n0: u32, k_len: u32, n_len: u32) {
    for (var r = 0u; r < TK / 4u; r++) {
        let idx = lid + r * WG;          // TK x 64
        var kk = idx / TN;
        var nn = idx % TN;
        if (kind == CHANNEL_GATE_UP) {
            // h^T: consecutive k are consecutive in memory
            kk = idx % TK;
            nn = idx / TK;
        }
        let k = k0 + kk;
        let n = n0 + nn;
        var v = 0.0;
        if (k < k_len && n < n_len) {
            switch kind {
                case TOKEN_GATE_UP: { v = xyz[state + k * n_len + n]; }    // h [S, D]
                case CHANNEL_GATE_UP: { v = xyz[state + n * k_len + k]; }  // h^T, h [S, D]
                default: { v = scratch[work + k * n_len + n]; }   // gated [K, N]
            }
        }
        b_tile[kk * TN + nn] = v;
    }
}

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

// Writes the register block: gated outputs (silu(g) * u) to scratch, or the
// residual add into the state (h[s, d] += update).
fn store_tile(kind: u32, ty: u32, tx: u32, state: u32, work: u32, m0: u32, n0: u32, m: u32, n_len: u32) {
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + tx + 16u * j;
        if (n >= n_len) {
            continue;
        }
        if (kind == TOKEN_GATE_UP || kind == CHANNEL_GATE_UP) {
            let r0 = m0 + ty;
            let r1 = r0 + 16u;
            if (r0 < m) { scratch[work + r0 * n_len + n] = silu(acc0[j]) * acc2[j]; }
            if (r1 < m) { scratch[work + r1 * n_len + n] = silu(acc1[j]) * acc3[j]; }
        } else {
            let rows = vec4<u32>(m0 + ty, m0 + ty + 16u, m0 + ty + 32u, m0 + ty + 48u);
            let vals = vec4<f32>(acc0[j], acc1[j], acc2[j], acc3[j]);
            for (var i = 0u; i < 4u; i++) {
                let row = rows[i];
                if (row < m) {
                    // TOKEN_DOWN: row = s, n = d; CHANNEL_DOWN: row = d, n = s
                    var at = state + row * n_len + n;
                    if (kind == CHANNEL_DOWN) {
                        at = state + n * m + row;
                    }
                    xyz[at] = xyz[at] + vals[i];
                }
            }
        }
    }
}

// One matrix product over all its output tiles. Every loop bound is uniform.
fn product(kind: u32, lid: u32, state: u32, work: u32, w_off: u32, m: u32, n_len: u32, k_len: u32, kp: u32) {
    let paired = kind == TOKEN_GATE_UP || kind == CHANNEL_GATE_UP;
    let tile_rows = select(TM, TM / 2u, paired);
    let tiles_n = (n_len + TN - 1u) / TN;
    let tiles = ((m + tile_rows - 1u) / tile_rows) * tiles_n;
    let ty = lid / 16u;
    let tx = lid % 16u;
    for (var t = 0u; t < tiles; t++) {
        let m0 = (t / tiles_n) * tile_rows;
        let n0 = (t % tiles_n) * TN;
        acc0 = vec4<f32>(0.0);
        acc1 = vec4<f32>(0.0);
        acc2 = vec4<f32>(0.0);
        acc3 = vec4<f32>(0.0);
        for (var k0 = 0u; k0 < k_len; k0 += TK) {
            workgroupBarrier();
            load_a(lid, w_off, kp, m0, m, paired, k0);
            load_b(kind, lid, state, work, k0, n0, k_len, n_len);
            workgroupBarrier();
            multiply_tile(ty, tx);
        }
        store_tile(kind, ty, tx, state, work, m0, n0, m, n_len);
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let puzzle = running[wid.x];
    let state = params.state_base + puzzle * params.puzzle_stride;
    let inj_a = params.inj_a_base + puzzle * params.puzzle_stride;
    let inj_b = params.inj_b_base + puzzle * params.puzzle_stride;
    let work = puzzle * max(TI * D, CI * S);

    // h = state + injection
    for (var i = lid; i < S * D; i += WG) {
        var inj = xyz[inj_a + i];
        if (params.inject_sum != 0u) {
            inj = inj + xyz[inj_b + i];
        }
        xyz[state + i] = xyz[state + i] + inj;
    }
    storageBarrier();

    // weight offsets in vec4s
    let tok_gu_len = 2u * TI * SP / 4u;
    let tok_dn_len = S * TI / 4u;
    let ch_gu_len = 2u * CI * DP / 4u;
    let ch_dn_len = D * CI / 4u;
    let layer_len = tok_gu_len + tok_dn_len + ch_gu_len + ch_dn_len;

    for (var layer = 0u; layer < L_LAYERS; layer++) {
        let w = layer * layer_len;
        // The four products share one call site (one copy of the tile code):
        // token gate/up, token down, then the norm over S; channel gate/up
        // (transposed), channel down, then the norm over D.
        for (var kind = 0u; kind < 4u; kind++) {
            var m = TI;
            var n_len = D;
            var k_len = S;
            var kp = SP;
            var w_off = w;
            switch kind {
                case TOKEN_DOWN: {
                    m = S; n_len = D; k_len = TI; kp = TI; w_off = w + tok_gu_len;
                }
                case CHANNEL_GATE_UP: {
                    m = CI; n_len = S; k_len = D; kp = DP; w_off = w + tok_gu_len + tok_dn_len;
                }
                case CHANNEL_DOWN: {
                    m = D; n_len = S; k_len = CI; kp = CI; w_off = w + tok_gu_len + tok_dn_len + ch_gu_len;
                }
                default: {}
            }
            product(kind, lid, state, work, w_off, m, n_len, k_len, kp);
            storageBarrier();
            if (kind == TOKEN_DOWN) {
                // rms_norm over S, one invocation per column d
                for (var d = lid; d < D; d += WG) {
                    var ss = 0.0;
                    for (var s = 0u; s < S; s++) {
                        let v = xyz[state + s * D + d];
                        ss = fma(v, v, ss);
                    }
                    let scale = inverseSqrt(ss / f32(S) + EPS);
                    for (var s = 0u; s < S; s++) {
                        let at = state + s * D + d;
                        xyz[at] = xyz[at] * scale;
                    }
                }
                storageBarrier();
            }
            if (kind == CHANNEL_DOWN) {
                // rms_norm over D, one invocation per row s
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
                storageBarrier();
            }
        }
    }
}
