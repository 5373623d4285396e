// attention_step.wgsl: one TRM network call of the attention model
// (mlp_t = false) for every active puzzle, fused: a workgroup per puzzle
// walks the whole call, in as few dispatches as the loop budget allows
// (step_common.wgsl, "Segments": one at small shapes, 10 at the Sudoku
// shape, about a hundred at the ARC shape), on every adapter the MLP-mixer
// kernel runs on.
//
//   state = net(state, injection)      (shared/TRM.md, Forward pass)
//   h = state + injection              injection = y + x (z update, summed first)
//                                      or z (y update)
//   for each of the call's blocks (params.layer_count of the stored ones
//   from params.layer_first: TRM's one network, or HRM's L or H level):
//     [q | k | v] = h @ qkv_proj^T                 HEADS heads of HD each, q heads first
//     q, k = rope(q), rope(k)                      if ROPE: per position s in 0..S
//     a[:, head] = softmax(q k^T / sqrt(HD)) v     per head, over all S positions
//     h = rms_norm_over_D(h + a @ o_proj^T)
//     h = rms_norm_over_D(h + (silu(g) * u) @ down^T),  [g | u] = h @ gate_up^T
//   state = h                          (written in place)
// Learned positions are added by the embedding (embed.wgsl), not here.
//
// This file follows the shared prelude shaders/common/step_common.wgsl
// (bindings, parameter block, the tiled product and its epilogues, the
// channel SwiGLU and the RMSNorm over D), prepended by the Rust side; see
// that file's header.
//
// Bindings (those of the prelude)
//   0 weights  read, at the model's precision (the weight prelude's binding:
//              f32, f16, bf16, or int8 with each matrix's row scales after
//              it) per layer, row-major [out, in] with every row padded with
//              zeros to a multiple of 4 weights:
//                qkv [3 D, DP] | o [D, DP] | ch_gu [2 CI, DP] | ch_dn [D, CI]
//              then, after the LAYERS stored layers, the RoPE tables cos [S, HD] |
//              sin [S, HD] (RoPE models only) in f32 at every precision,
//              computed on the host exactly as the CPU engine's (PyTorch's
//              float32 table computation)
//   1 xyz      array<f32>, read_write   [3][B][S][D]: x, y = z_H, z = z_L
//   2 scratch  array<f32>, read_write   per puzzle max(4 S D, CI S) floats:
//              qkv [S, 3D] at 0 and the concatenated head outputs a [S, D]
//              at 3 S D; after o_proj both are dead and the channel SwiGLU's
//              gated activations, transposed, [CI, S], take their place
//   3 running, 4 params                 as the prelude
//
// Work split: one workgroup of 256 invocations per active puzzle; it walks
// the phases below in uniform control flow, a storageBarrier between phases:
//   1. qkv = h @ qkv_proj^T: the prelude's `product` (qkv^T [3D, S] =
//      qkv_proj @ h^T, stored transposed into qkv [S, 3D])
//   2. RoPE on the q and k heads in place, one invocation per (s, head,
//      j < HD/2) pair: q'[j] = q[j] cos[j] - q[j + HD/2] sin[j],
//      q'[j + HD/2] = q[j + HD/2] cos[j + HD/2] + q[j] sin[j + HD/2]
//   3. attention, streamed (flash-attention style; no S x S matrix is ever
//      written anywhere): for each (head, query tile of 64 rows, block of 64
//      output columns of the head), the key/value positions are walked in
//      tiles of 64. The workgroup tiles are two SK-deep stages, as the
//      products' double buffer: each step multiplies one stage into the
//      4 x 4 register blocks while the next step's tiles are loaded into
//      the other, one barrier a step. Per key tile the 64 x 64 score block
//      q k^T takes ceil(HD/SK) steps over HD; the tile's row maxima are
//      exchanged through workgroup memory (`row_reduce`: 64 rows x 16
//      partials in stage 1, reduced by 64 invocations into a row of stage
//      0), the running max m and the invocation's partial row sums l are
//      rescaled by exp(m_old - m_new), p = exp(score / sqrt(HD) - m) is
//      passed through the A stage SK keys at a time against the matching V
//      rows in the B stage, over the keys that exist only, and the output
//      block o = o exp(m_old - m_new) + p v stays in registers. The
//      pipeline restarts at the maxima (p needs them) and runs on across
//      key tiles: the last p v step loads the next key tile's first Q/K
//      chunk. The score steps and the p v steps are one loop, so the tile
//      code is one copy. After the last key tile the row sums are reduced
//      the same way and o / l is stored into a[:, head]. Keys beyond S get
//      p = 0; the invocations whose 4 rows all lie beyond S skip the FMAs;
//      other rows and columns beyond S and HD are computed on zeros and not
//      stored.
//      HD > 64 (not the published configurations) repeats the score
//      product per 64 output columns.
//      (Compile time matters on lavapipe, which turns every barrier into a
//      coroutine suspension point: each inlined copy of a loop with
//      barriers costs seconds of LLVM time, hence one copy of each. It also
//      runs an `if` masked, barriers inside included, whatever its
//      condition: so the row maxima sit outside the step loop.)
//   4. h += a @ o_proj^T: `product` with the residual-add epilogue, then
//      the RMSNorm over D (prelude)
//   5. channel SwiGLU: `channel_gate_up`, `channel_down`, RMSNorm over D
//      (prelude)
// All four products share one call site (one copy of the tile code).
//
// Why a workgroup can walk the whole call everywhere: attention needs no
// workgroup memory beyond the product's two tiles (16 KiB at SK = 16, 8
// KiB at SK = 8), its scratch is per puzzle in the scratch binding, and a
// workgroup can walk every phase of its own puzzle with storage barriers.
// So the kernel runs on every adapter that passes the context's checks
// (256 invocations, 8 KiB of workgroup memory, 4 storage buffers). The
// units of a call, in order, for the segments: per block the qkv product's
// output tiles, RoPE (one unit, RoPE models only), the attention's tiles,
// the output tiles of o_proj (then the norm), of the channel gate/up and of
// the channel down product (then the norm).
//
// Cost per puzzle per recursion step (all its segments), L = params.layer_count,
// Q = ceil(S/64), HB = ceil(HD/64):
//   FLOPs  L (2 S D 3D + 2 S D D + 4 S S D + 6 S D CI) for the products (the
//          attention tiles also compute on padding: the scores of the last
//          key tile's missing keys, the rows of the last query tile up to a
//          multiple of 4, p v up to 64 columns of HD), plus O(L S D) for
//          the injection, RoPE, softmax, SiLU, gating and norms. ARC / Maze
//          size (S 916, D 512, 8 heads, CI 1536, L 2): 15.9 GFLOP.
//   bytes  weights E L Q (3D DP + D DP + 2 CI DP + D CI), E the bytes of a
//          weight: 4 (f32), 2 (f16, bf16), 1 (int8, plus 4 per row read for
//          its scale); ARC: 409 MB read, 27.3 MB distinct at f32, 204 MB and
//          13.6 MB at f16 and bf16, 102 MB and 6.86 MB at int8, after the
//          first workgroup from cache, plus the RoPE tables, 8 S HD bytes
//          (0.47 MB) at every precision; q, k and v
//          each read Q HB times per head: 12 L Q HB S D (ARC: 169 MB, from
//          cache); plus about 4 L (12 S D + 3 CI S) for the products'
//          activations.
//   barriers  L ((ceil(3D/64) + ceil(D/64) + ceil(CI/32)) Q (ceil(DP/SK) + 1)
//          + ceil(D/64) Q (CI/SK + 1)
//          + HEADS HB Q (Q (ns + R) + N + R + 2 + (Q - 1) [ns odd] - [n even]))
//          + L (8 + 4 Q) + 1, with ns = ceil(HD/SK) score steps, N the p v
//          steps of a query tile (64/SK per key tile, n = ceil((S - 64 (Q -
//          1))/SK) for the last) and R = 2 per row reduction (0 where
//          lanes_setup finds subgroup clusters of 16, which adds 3 per
//          dispatch); per key tile ns - 1 + R + 1 + np (ARC, S
//          916, HD 64, at SK 16: 138 857 in all, 18 120 per layer the
//          attention's, 10 per key tile; the former single-buffered steps,
//          2 SK deep with 2 barriers each, and reductions of 3 had 142 937,
//          20 160 and 11).

// Designed for: the large-batch ("fused") schedule, as mixer_step.wgsl:
// the four products run the prelude's double-buffered tile code, the
// attention tiles the same layout (vec4 fragments, swizzled) and the same
// double-buffered SK-deep steps (one barrier a step; per key tile the
// pipeline restarts once, at the row maxima), about 50% of FMA peak in the
// products and less in the attention. At Sudoku's S = 97 (two query and
// key tiles, the second of 33) the rows beyond S skip their FMAs by whole
// rows of 16 invocations and the p v steps stop at the last key. A dispatch
// covers the running puzzles params.first .. params.first + workgroups.
// The spread schedule's entry points at the end of this file run the same
// attention tiles one per workgroup, for small batches.

// Overrides of the prelude: S, D, DP, CI, LAYERS, EPS, SK.
override HEADS: u32;      // attention heads
override HD: u32;         // head width, D / HEADS
override ROPE: bool;      // rotary position embedding on q and k
override SCALE: f32;      // 1 / sqrt(HD), rounded to f32 as the CPU engine does

// The four products of a block, in order.
const QKV: u32 = 0u;             // qkv^T [3D, S] = qkv_proj [3D, D] @ h^T [D, S]
const O_PROJ: u32 = 1u;          // h^T [D, S]   += o_proj [D, D] @ a^T [D, S]
const CHANNEL_GATE_UP: u32 = 2u; // [CI, S] gated = ch_gu [2CI, D] @ h^T [D, S]
const CHANNEL_DOWN: u32 = 3u;    // h^T [D, S]   += ch_dn [D, CI] @ gated [CI, S]

// Below any score: the running maximum before the first key tile.
const LOWEST: f32 = -3.0e38;

// The attention's registers besides the prelude's acc0..acc3 (which hold
// the score block, then each key tile's p v): p_i the probabilities of row
// 4 ty + i (keys 4 tx .. 4 tx + 3), o_i the output block (rows 4 ty + i,
// columns 4 tx + j of the head's column block), m_run[i] the running maximum
// of row 4 ty + i and l_run[i] the invocation's share of its running sum.
var<private> p0: vec4<f32>;
var<private> p1: vec4<f32>;
var<private> p2: vec4<f32>;
var<private> p3: vec4<f32>;
var<private> o0: vec4<f32>;
var<private> o1: vec4<f32>;
var<private> o2: vec4<f32>;
var<private> o3: vec4<f32>;

// The attention's tiles: the prelude's two buffers as two SK-deep stages,
// stage s = buffer s of sa (the A operand: Q, or p^T) and of sb (the B
// operand: K^T, or V), in the prelude's layout (`slot`: k-major,
// XOR-swizzled vec4 slots of rows (A) or columns (B) 4v .. 4v + 3). While
// one stage is multiplied the next step's tiles are loaded into the other.
//
// The row reductions' memory (`row_reduce` on its workgroup path): the
// partials, 1024 floats through a_set/a_get, in stage 1: buffer 1 of sa
// (16 SK vec4s), continued in buffer 1 of sb where that is too small
// (SK = 8); the results, 64 floats through b_set, in row 0 of sb's stage 0.
// attention_tile keeps both free where it reduces (see there). At SK >= 16
// the test below folds away: stage 1 of sa holds all the partials.
fn a_in_sa(w: u32) -> bool {
    return SK >= 16u || w < 32u * SK;
}
fn a_get(i: u32) -> f32 {
    let w = 16u * SK + i / 4u;
    if (a_in_sa(w)) {
        return sa[w][i % 4u];
    }
    return sb[w - 16u * SK][i % 4u];
}
fn a_set(i: u32, v: f32) {
    let w = 16u * SK + i / 4u;
    if (a_in_sa(w)) {
        sa[w][i % 4u] = v;
    } else {
        sb[w - 16u * SK][i % 4u] = v;
    }
}
fn b_set(i: u32, v: f32) {
    sb[i / 4u][i % 4u] = v;
}

// A float of the RoPE tables (cos at 0, sin at S HD), which start at group
// `tables` of the weights, f32 at every precision.
fn table(tables: u32, i: u32) -> f32 {
    return weight_f32(tables, i);
}

// RoPE on one (position, head, j < HD/2) pair of the q and k heads of
// qkv [S, 3D] at `qkv`, in place: element i of the S x 2 HEADS HD/2 pairs;
// `tables` is the first group of cos. rotate_half([a | b]) = [-b | a].
fn rope_pair(qkv: u32, tables: u32, i: u32) {
    let half = HD / 2u;
    let per_row = 2u * HEADS * half;      // q heads then k heads: 2D / 2 pairs
    let s = i / per_row;
    let r = i % per_row;
    let j = r % half;
    let at = qkv + s * 3u * D + (r / half) * HD + j;
    let t = s * HD + j;
    let a = scratch[at];
    let b = scratch[at + half];
    scratch[at] = a * table(tables, t) - b * table(tables, S * HD + t);
    scratch[at + half] = b * table(tables, t + half) + a * table(tables, S * HD + t + half);
}

// RoPE on every pair of one puzzle's qkv, strided over the workgroup.
fn rope(lid: u32, qkv: u32, tables: u32) {
    for (var i = lid; i < S * 2u * HEADS * (HD / 2u); i += WG) {
        rope_pair(qkv, tables, i);
    }
}

// A stage = Q [q0 .. q0 + 64, c .. c + SK] of `head` (k = the head's
// column), zero beyond S and HD; consecutive invocations read along HD.
fn load_q(lid: u32, qkv: u32, head: u32, q0: u32, c: u32, stage: u32) {
    for (var r = 0u; r < SK / 4u; r++) {
        let idx = lid + r * WG;
        let kk = idx % SK;
        let row = idx / SK;
        var v = 0.0;
        if (q0 + row < S && c + kk < HD) {
            v = scratch[qkv + (q0 + row) * 3u * D + head * HD + c + kk];
        }
        sa[slot(stage, kk, row / 4u)][row % 4u] = v;
    }
}

// B stage = K^T [c .. c + SK, k0 .. k0 + 64] of `head`, zero beyond S and HD.
fn load_k(lid: u32, qkv: u32, head: u32, k0: u32, c: u32, stage: u32) {
    for (var r = 0u; r < SK / 4u; r++) {
        let idx = lid + r * WG;
        let kk = idx % SK;
        let n = idx / SK;
        var v = 0.0;
        if (k0 + n < S && c + kk < HD) {
            v = scratch[qkv + (k0 + n) * 3u * D + D + head * HD + c + kk];
        }
        sb[slot(stage, kk, n / 4u)][n % 4u] = v;
    }
}

// B stage = V [k0 .. k0 + SK, hb .. hb + 64] of `head`, zero beyond S and
// HD; consecutive invocations read along the head's columns.
fn load_v(lid: u32, qkv: u32, head: u32, k0: u32, hb: u32, stage: u32) {
    for (var r = 0u; r < SK / 4u; r++) {
        let idx = lid + r * WG;
        let kk = idx / TN;
        let n = idx % TN;
        var v = 0.0;
        if (k0 + kk < S && hb + n < HD) {
            v = scratch[qkv + (k0 + kk) * 3u * D + 2u * D + head * HD + hb + n];
        }
        sb[slot(stage, kk, n / 4u)][n % 4u] = v;
    }
}

// A stage = p^T [keys c .. c + SK of the key tile, 64 rows], from the
// registers of the invocations that own those keys: each writes its four
// rows of a key as one vec4.
fn store_p(ty: u32, tx: u32, c: u32, stage: u32) {
    for (var j = 0u; j < 4u; j++) {
        let col = 4u * tx + j;
        if (col >= c && col < c + SK) {
            sa[slot(stage, col - c, ty)] = vec4<f32>(p0[j], p1[j], p2[j], p3[j]);
        }
    }
}

// Sums (or maximises) `v[i]`, row 4 ty + i, over the 16 invocations tx of
// each row (lid = 16 ty + tx, so a row's invocations are consecutive),
// returned to all of them; called by every invocation in uniform control
// flow. First within clusters of min(lanes, 16) invocations by lane
// shuffles (lanes_setup; a butterfly, the same bits in every lane): where
// that spans the row, nothing else, no memory and no barrier. Otherwise
// (no subgroups, or clusters under 16) the workgroup path: the clusters'
// partials through a_set (stage 1), one invocation per row reduces them
// (a_get) into b_set's floats (row 0 of sb's stage 0) after a barrier,
// every invocation reads its rows back after another: 2 barriers. What the
// call sites guarantee (attention_tile): at the call nothing accesses
// stage 1 any more (its last accesses are behind a barrier) and nothing
// writes stage 0 (the last step's multiply may still be reading it, so the
// results are written only after the first barrier); after the return
// stage 1 is free and sb's stage 0 is written again only after a barrier
// (the results are read there). So the workgroup path writes nothing but
// stage 1 before its first barrier, and the shuffle path needs nothing.
fn row_reduce(lid: u32, ty: u32, tx: u32, v: vec4<f32>, take_max: bool, lanes: u32) -> vec4<f32> {
    let width = min(lanes, 16u);
    var r = v;
    for (var m = 1u; m < width; m *= 2u) {
        let other = lane_xor4(r, m);
        if (take_max) {
            r = max(r, other);
        } else {
            r = r + other;
        }
    }
    if (width == 16u) {
        return r;
    }
    if (tx % width == 0u) {
        a_set((4u * ty) * 16u + tx, r.x);
        a_set((4u * ty + 1u) * 16u + tx, r.y);
        a_set((4u * ty + 2u) * 16u + tx, r.z);
        a_set((4u * ty + 3u) * 16u + tx, r.w);
    }
    workgroupBarrier();
    if (lid < 64u) {
        var total = a_get(lid * 16u);
        for (var u = width; u < 16u; u += width) {
            let x = a_get(lid * 16u + u);
            if (take_max) {
                total = max(total, x);
            } else {
                total = total + x;
            }
        }
        b_set(lid, total);
    }
    workgroupBarrier();
    // floats 4 ty .. 4 ty + 3: rows 4 ty + i
    return sb[ty];
}

fn row_max(a: vec4<f32>, mask: vec4<bool>) -> f32 {
    let v = select(vec4<f32>(LOWEST), a * SCALE, mask);
    return max(max(v.x, v.y), max(v.z, v.w));
}

fn probabilities(a: vec4<f32>, m: f32, mask: vec4<bool>) -> vec4<f32> {
    return select(vec4<f32>(0.0), exp(a * SCALE - m), mask);
}

// Output tiles of the attention of one puzzle: (head, query tile of 64
// rows, block of 64 columns of the head).
fn attention_tiles() -> u32 {
    return HEADS * ((S + TM - 1u) / TM) * ((HD + TN - 1u) / TN);
}

// Phase 3: a [S, D] at `out` from qkv [S, 3D] at `qkv`, tiles part.x ..
// part.y (the dispatch's part of them, segment_part).
fn attention_part(lid: u32, qkv: u32, out: u32, part: vec2<u32>, lanes: u32) {
    for (var t = part.x; t < part.y; t++) {
        attention_tile(lid, qkv, out, t, lanes);
        // a tile's last row reduction reads its results from sb's stage 0
        // after its last barrier; the next tile (or the next phase's
        // product) loads into it
        workgroupBarrier();
    }
}

// Output tile t of the attention (see attention_tiles), in uniform control
// flow. For each key tile of TN keys (k0 .. k0 + keys) the steps st of ONE
// loop (so that the tile code, and each barrier, is one copy; walked in two
// passes, the second from ns + 1 after the row maxima) are:
//   st = 0                    only where the tile's first Q/K chunk is not
//                             in place yet: loads it, multiplies nothing
//   st = 1 .. ns              score steps, ns = ceil(HD / SK): acc +=
//                             Q[:, c .. c + SK] K[:, c .. c + SK]^T with
//                             c = (st - 1) SK
//   st = ns + 1               the row maxima (row_reduce), p and l, then
//                             loads p^T and V chunk 0, multiplies nothing
//   st = ns + 2 .. ns + 1 + np  p v steps over the keys that exist, np =
//                             ceil(keys / SK): acc += p[:, c .. c + SK]
//                             V[c .. c + SK, :], c = (st - ns - 2) SK
// Each step loads the next step's tiles into stage 1 - cur while it
// multiplies stage cur, then ends with one barrier. The stages alternate,
// except across the maxima: the score chunks start in stage `base` so that
// the last score step multiplies stage 0, and p v chunk 0 goes to stage 1,
// which leaves the reductions their memory (stage 1 for the partials, row 0
// of sb's stage 0 for the results). The last p v step loads the next key
// tile's Q/K chunk 0 into its free stage where that is `base`: np of a
// whole key tile is 64 / SK, even, so when ns is even (HD a multiple of
// 2 SK); else the next key tile starts with the st = 0 step.
// Barriers: one per step, except after a step that multiplies stage 0 just
// before a reduction (the last score step; the last p v step of the last
// key tile when np is even): the reduction writes stage 1, whose last
// accesses are behind the previous step's barrier, and stage 0 only after
// its own first barrier, when that multiply is done everywhere. Per key
// tile: ns - 1 + R + 1 + np (+ 1 when ns is odd and a key tile follows),
// R = row_reduce's barriers (2 on the workgroup path, 0 with subgroups).
fn attention_tile(lid: u32, qkv: u32, out: u32, t: u32, lanes: u32) {
    let ty = lid / 16u;
    let tx = lid % 16u;
    let q_tiles = (S + TM - 1u) / TM;
    let hd_blocks = (HD + TN - 1u) / TN;
    let head = t / (q_tiles * hd_blocks);
    let q0 = ((t / hd_blocks) % q_tiles) * TM;
    let hb = (t % hd_blocks) * TN;
    // Whether any of this invocation's rows 4 ty .. 4 ty + 3 exists: the
    // others skip the FMAs (zeros in, discarded out), whole rows of 16
    // invocations at a time, and still load and meet every barrier.
    let rows = q0 + 4u * ty < S;
    let ns = (HD + SK - 1u) / SK;
    let base = (ns + 1u) % 2u;
    var m_run = vec4<f32>(LOWEST);
    var l_run = vec4<f32>(0.0);
    o0 = vec4<f32>(0.0);
    o1 = vec4<f32>(0.0);
    o2 = vec4<f32>(0.0);
    o3 = vec4<f32>(0.0);
    // whether the key tile's Q/K chunk 0 is in stage `base` already
    var loaded = false;
    for (var k0 = 0u; k0 < S; k0 += TN) {
        let keys = min(TN, S - k0);
        let np = (keys + SK - 1u) / SK;
        let steps = ns + 2u + np;
        let last_tile = k0 + TN >= S;
        // the last p v step (stage np % 2) leaves stage (np + 1) % 2 free
        let pipelined = !last_tile && (np + 1u) % 2u == base;
        // the keys of this invocation's columns that exist
        let key_ids = vec4<u32>(k0 + 4u * tx) + vec4<u32>(0u, 1u, 2u, 3u);
        let mask = key_ids < vec4<u32>(S);
        var alpha = vec4<f32>(0.0);
        zero_acc();
        // Two passes over the one step loop: the score steps (ph = 0),
        // then the row maxima and the steps from ns + 1 (ph = 1). Outside
        // the step loop the reduction runs once a pass even where its `if`
        // is false: lavapipe executes an `if` masked, its barriers included.
        for (var ph = 0u; ph < 2u; ph++) {
            if (ph == 1u) {
                // The row maxima. Memory: partials in stage 1, last
                // accessed before the barrier of step ns - 1 (step ns
                // multiplies stage 0 and loads nothing); results in sb's
                // stage 0 after the reduction's first barrier.
                let partial = vec4<f32>(row_max(acc0, mask), row_max(acc1, mask),
                                        row_max(acc2, mask), row_max(acc3, mask));
                let m_new = max(m_run, row_reduce(lid, ty, tx, partial, true, lanes));
                alpha = exp(max(m_run - m_new, vec4<f32>(-87.0)));
                m_run = m_new;
                p0 = probabilities(acc0, m_new.x, mask);
                p1 = probabilities(acc1, m_new.y, mask);
                p2 = probabilities(acc2, m_new.z, mask);
                p3 = probabilities(acc3, m_new.w, mask);
                let ones = vec4<f32>(1.0);
                l_run = l_run * alpha
                    + vec4<f32>(dot(p0, ones), dot(p1, ones), dot(p2, ones), dot(p3, ones));
                zero_acc();
            }
            let first = select(select(0u, 1u, loaded), ns + 1u, ph == 1u);
            let end = select(ns + 1u, steps, ph == 1u);
            for (var st = first; st < end; st++) {
                let pv = st > ns;
                let cur = (st + ns + select(0u, 1u, pv)) % 2u;
                // the next step's tiles into stage 1 - cur: Q/K chunk st of
                // this key tile, p^T and V chunk st - ns - 1, or the next
                // key tile's Q/K chunk 0
                let c = (st - ns - 1u) * SK;
                if (st < ns || (pv && c >= keys && pipelined)) {
                    let cq = select(st * SK, 0u, pv);
                    load_q(lid, qkv, head, q0, cq, 1u - cur);
                    load_k(lid, qkv, head, select(k0, k0 + TN, pv), cq, 1u - cur);
                } else if (pv && c < keys) {
                    store_p(ty, tx, c, 1u - cur);
                    load_v(lid, qkv, head, k0 + c, hb, 1u - cur);
                }
                // this step's tiles, stage cur: the rows of a score chunk
                // up to HD, of a p v chunk up to the tile's keys (zeros
                // beyond)
                if (rows && st != 0u && st != ns + 1u) {
                    let kn = select(HD - (st - 1u) * SK, keys + SK - c, pv);
                    multiply_tile(cur, ty, tx, min(kn, SK));
                }
                if (cur != 0u || (st != ns && !(last_tile && st + 1u == steps))) {
                    workgroupBarrier();
                }
            }
        }
        o0 = fma(o0, vec4<f32>(alpha.x), acc0);
        o1 = fma(o1, vec4<f32>(alpha.y), acc1);
        o2 = fma(o2, vec4<f32>(alpha.z), acc2);
        o3 = fma(o3, vec4<f32>(alpha.w), acc3);
        loaded = pipelined;
    }
    // The row sums. Memory: partials in stage 1, last accessed before the
    // barrier of the last step or of the one before it (the last step
    // multiplies stage np % 2 and loads nothing); results in sb's stage 0
    // after the reduction's first barrier.
    let l = row_reduce(lid, ty, tx, l_run, false, lanes);
    for (var i = 0u; i < 4u; i++) {
        let row = q0 + 4u * ty + i;
        var o = o0;
        switch i {
            case 1u: { o = o1; }
            case 2u: { o = o2; }
            case 3u: { o = o3; }
            default: {}
        }
        let inv = 1.0 / l[i];
        for (var j = 0u; j < 4u; j++) {
            let col = hb + 4u * tx + j;
            if (row < S && col < HD) {
                scratch[out + row * D + head * HD + col] = o[j] * inv;
            }
        }
    }
}

// First group of the RoPE tables: after the LAYERS stored layers of
// qkv [3D, DP] | o [D, DP] | ch_gu | ch_dn.
fn rope_tables() -> u32 {
    let layer_len = matrix_len(3u * D, DP) + matrix_len(D, DP) + channel_gate_up_len()
        + channel_down_len();
    return LAYERS * layer_len;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let puzzle = running[params.first + wid.x];
    let state = params.state_base + puzzle * params.puzzle_stride;
    let inj_a = params.inj_a_base + puzzle * params.puzzle_stride;
    let inj_b = params.inj_b_base + puzzle * params.puzzle_stride;
    let work = puzzle * max(4u * S * D, CI * S);
    let heads_out = work + 3u * S * D;
    poison_workgroup(lid);
    let lanes = lanes_setup(lid);
    report_lanes(REPORT_FUSED, params.first + wid.x == 0u, lid, lanes);

    if (params.unit_first == 0u) {
        inject(lid, state, inj_a, inj_b);
        storageBarrier();
    }

    // weight offsets in groups of 4 weights
    let qkv_len = matrix_len(3u * D, DP);
    let o_len = matrix_len(D, DP);
    let layer_len = qkv_len + o_len + channel_gate_up_len() + channel_down_len();
    let tables = rope_tables();

    // The call's units (step_common.wgsl, "Segments"): per block, the qkv
    // product's output tiles, RoPE (one unit, RoPE models only), the
    // attention's tiles, then the output tiles of o_proj, the channel
    // gate/up and the channel down products. `base` is the first unit of
    // the phase at hand.
    var base = 0u;
    for (var layer = params.layer_first; layer < params.layer_first + params.layer_count; layer++) {
        let w = layer * layer_len;
        let ch = w + qkv_len + o_len;
        for (var kind = 0u; kind < 4u; kind++) {
            var op: Product;
            switch kind {
                case QKV: {
                    op = Product(w, 3u * D, S, D, DP, false, true, state, 1u, D,
                                 OUT_SCRATCH, work, 1u, 3u * D, false, 0u);
                }
                case O_PROJ: {
                    op = Product(w + qkv_len, D, S, D, DP, false, false, heads_out, 1u, D,
                                 OUT_ADD_STATE, state, 1u, D, false, 0u);
                }
                case CHANNEL_GATE_UP: {
                    op = channel_gate_up(state, work, ch);
                }
                default: {
                    op = channel_down(state, work, ch + channel_gate_up_len());
                }
            }
            let tiles = product_tiles(op);
            let part = segment_part(base, tiles);
            base += tiles;
            if (part.x < part.y) {
                product_part(lid, op, part);
                storageBarrier();
                // the norm after a product runs where its last tile did
                if ((kind == O_PROJ || kind == CHANNEL_DOWN) && part.y == tiles) {
                    rms_norm_rows(lid, state, lanes);
                    storageBarrier();
                }
            }
            if (kind == QKV) {
                if (ROPE) {
                    let rope_part = segment_part(base, 1u);
                    base += 1u;
                    if (rope_part.x < rope_part.y) {
                        rope(lid, work, tables);
                        storageBarrier();
                    }
                }
                let n = attention_tiles();
                let attention = segment_part(base, n);
                base += n;
                if (attention.x < attention.y) {
                    attention_part(lid, work, heads_out, attention, lanes);
                    storageBarrier();
                }
            }
        }
    }
}

// ---- The spread schedule's attention phases (src/gpu/spread.rs plans
// them): the fused kernel's own tile code, one workgroup per tile instead
// of one per puzzle. n_total = active puzzles x S; qkv [S, 3D] of active
// puzzle p at b_base + p S 3D in the scratch, its head outputs [S, D] at
// o_base + p S D.

// RoPE, one invocation per pair of every active puzzle.
@compute @workgroup_size(256)
fn spread_rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let e = group_of(wid, nwg) * WG + lid;
    let per_puzzle = S * 2u * HEADS * (HD / 2u);
    if (e >= (params.n_total / S) * per_puzzle) {
        return;
    }
    rope_pair(params.b_base + (e / per_puzzle) * S * 3u * D, rope_tables(), e % per_puzzle);
}

// The attention, one workgroup per (active puzzle, output tile).
@compute @workgroup_size(256)
fn spread_attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let g = group_of(wid, nwg);
    if (g >= params.groups) {
        return;
    }
    poison_workgroup(lid);
    let lanes = lanes_setup(lid);
    report_lanes(REPORT_ATTENTION, g == 0u, lid, lanes);
    let p = g / attention_tiles();
    attention_tile(lid, params.b_base + p * S * 3u * D, params.o_base + p * S * D,
                   g % attention_tiles(), lanes);
}
