// spread_step.wgsl: the small-batch ("spread") schedule of a TRM network
// call. Where the fused kernels (mixer_step.wgsl, attention_step.wgsl) give
// each puzzle ONE workgroup that walks the whole call, this schedule cuts a
// call into phases, one dispatch each inside one compute pass, and spreads
// every phase over as many workgroups as its output has tiles, for the
// whole batch at once. At the Sudoku shape and batch 1 a phase runs 16 to
// 200 workgroups instead of 1 (src/gpu/spread.rs plans them; its module
// doc lists the dispatches of each variant).
//
// This file follows the shared prelude shaders/common/step_common.wgsl
// (bindings, parameter block, overrides S, D, DP, CI, EPS), prepended by
// the Rust side. Its entry points, each reading one parameter block
// (dynamic offset) that the host wrote for this dispatch and batch size:
//
//   spread_inject     state += injection (y + x, or z), one invocation per element
//   spread_product    one output tile of out[M, N] = W[M, K] @ B[K, N] (one split
//               of K) per workgroup; N spans the whole batch
//   spread_norm_rows  h = rms_norm_over_D(state + sum of the split partials), one
//               workgroup per token row
//   spread_norm_cols  h = rms_norm_over_S(state + sum of the partials), 32 columns
//               (a column: one feature of one puzzle) per workgroup
//
// Grids: a phase's workgroups are laid out 2-D (x at most 32768) so that no
// dimension exceeds the 65535 every adapter allows; `params.groups` is the
// count that works, the rest of the last row returns at once (uniformly:
// the workgroup id and the parameters are uniform values).
//
// product: the operands and their layout (Params fields)
//   W        weights, vec4 rows of kp floats from vec4 w_off; rows beyond m
//            are not read. paired: W holds 2m rows, gate rows then up rows,
//            and out[r] = silu(W[r] . B) * (W[m + r] . B)
//   B[k, n]  n in 0..n_total is (active puzzle p = n / n_inner, c = n %
//            n_inner). b_state: B is the puzzle's state, at
//            state_base + running[p] * puzzle_stride + k b_ks + c b_ns;
//            else B is in the scratch at b_base + k b_ks + n b_ns
//   out      scratch[o_base + split o_split + m o_ms + n o_ns]; with
//            splits > 1 each split of K writes its own partial sum, which
//            the norm that follows adds (no float atomics in WGSL)
// Work split: tiles of 64 rows (32 gated outputs when paired) x 64
// columns, 256 invocations of 4 x 4 outputs each (rows 4 ty .. 4 ty + 3,
// columns 4 tx .. 4 tx + 3), so an invocation reads each step's A and B
// fragments from workgroup memory as one vec4 each: 2 vec4 loads per 16
// FMAs. Workgroup order: the column tiles of one row tile are consecutive,
// so a weight tile is read by neighbouring workgroups (from L2 after the
// first) and once per step for the whole batch.
// K loop: SK = 16 k per step (8 where the adapter has under 16 KiB of
// workgroup memory), double-buffered: the next step's tiles are loaded
// while the current ones are multiplied, one barrier per step.
// Bank conflicts: both tiles are stored k-major with the vec4 slot of
// each k row XOR-swizzled by k % 16: the 16 invocations reading one row
// read 16 distinct vec4s (no conflict), and the transposing stores (A's
// vec4 of 4 k, B's columns when b_ks = 1) spread over at least 16 banks
// (at most 2-way) instead of 8- or 32-way.
//   FLOPs   2 M N K (4 M N K paired), per workgroup 2 x 64 x 64 x k_chunk.
//   bytes   per workgroup 4 x 64 x (k_chunk (A) + k_chunk (B)) read, 4 x 64 x 64
//           written; the A tile is shared by the n_total / 64 workgroups of
//           a row tile.
//   barriers  ceil(k_chunk / SK) + 1 per workgroup.
//   Designed for: about 50% of FMA peak once a phase has a few workgroups
//   per compute unit (16 FMAs per 2 vec4 workgroup loads, as the best
//   WebGPU GEMMs with 4 x 4 register tiles); at batch 1 the channel and
//   token-down phases are bound by the weight bytes (20 MB per call at the
//   Sudoku shape) and by the dispatch count, not by FMAs.
//
// norms: sums of squares reduced through workgroup memory (a tree over the
// 256 invocations for a row, 8 lanes per column), so no subgroup size is
// assumed. FLOPs 3 S D + splits S D, bytes 4 S D (2 + splits) per puzzle.

// The K depth of a product step: 16, or 8 where 16 KiB of workgroup memory
// (2 buffers x 2 tiles x SK x 64 floats) is not available.
override SK: u32 = 16u;
// vec4s of one double-buffered tile (named: see TILE_FLOATS in the prelude)
override SPREAD_TILE_VEC4S: u32 = 32u * SK;

var<workgroup> sa: array<vec4<f32>, SPREAD_TILE_VEC4S>;   // [2][SK][16]: A, k-major
var<workgroup> sb: array<vec4<f32>, SPREAD_TILE_VEC4S>;   // [2][SK][16]: B, k-major
var<workgroup> red: array<f32, 256>;                      // the norms' partial sums

// vec4 slot of group v (rows or columns 4v .. 4v + 3) in tile row k.
fn slot(buf: u32, k: u32, v: u32) -> u32 {
    return (buf * SK + k) * 16u + (v ^ (k % 16u));
}

@compute @workgroup_size(256)
fn spread_inject(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let g = group_of(wid, nwg);
    let e = g * WG + lid;
    if (e >= params.n_total * S * D) {
        return;
    }
    let p = e / (S * D);
    let at = running[p] * params.puzzle_stride + e % (S * D);
    var inj = xyz[params.inj_a_base + at];
    if (params.inject_sum != 0u) {
        inj = inj + xyz[params.inj_b_base + at];
    }
    xyz[params.state_base + at] = xyz[params.state_base + at] + inj;
}

// The column bases of the B elements this invocation loads (SK / 4 of
// them, fixed for the whole tile), and whether each column exists.
var<private> b_col: array<u32, 4>;
var<private> b_kk: array<u32, 4>;
var<private> b_nn: array<u32, 4>;
var<private> b_ok: array<bool, 4>;

fn b_columns(lid: u32, n0: u32) {
    for (var r = 0u; r < SK / 4u; r++) {
        let idx = lid + r * WG;              // SK x 64 elements
        var kk = idx / 64u;
        var nn = idx % 64u;
        if (params.b_ks == 1u) {
            // consecutive k are consecutive in memory
            kk = idx % SK;
            nn = idx / SK;
        }
        let n = n0 + nn;
        b_kk[r] = kk;
        b_nn[r] = nn;
        b_ok[r] = n < params.n_total;
        if (params.b_state != 0u) {
            let p = min(n / params.n_inner, params.n_total / params.n_inner - 1u);
            b_col[r] = puzzle_base(p) + (n % params.n_inner) * params.b_ns;
        } else {
            b_col[r] = params.b_base + n * params.b_ns;
        }
    }
}

// Loads the A and B tiles of K step [k0, k0 + SK) into buffer `buf`, zero
// beyond `kend` (the split's end) and outside the matrices.
fn load_tiles(lid: u32, buf: u32, m0: u32, k0: u32, kend: u32) {
    // A: 64 rows x SK / 4 vec4s, one (or half a) vec4 per invocation; four
    // consecutive invocations read one row's SK floats.
    let q_per_row = SK / 4u;
    if (lid < 16u * SK) {
        let row = lid / q_per_row;
        let q = lid % q_per_row;
        let k = k0 + 4u * q;
        var grow = m0 + row;
        var valid = grow < params.m;
        if (params.paired != 0u) {
            // tile rows 4i, 4i + 1: gate rows of outputs 2i, 2i + 1;
            // 4i + 2, 4i + 3: their up rows
            let out = m0 + 2u * (row / 4u) + (row % 2u);
            valid = out < params.m;
            grow = select(out, params.m + out, (row % 4u) >= 2u);
        }
        var v = vec4<f32>(0.0);
        if (valid && k < min(params.kp, kend)) {
            v = weights[params.w_off + grow * (params.kp / 4u) + k / 4u];
        }
        let g = row / 4u;
        let c = row % 4u;
        sa[slot(buf, 4u * q, g)][c] = v.x;
        sa[slot(buf, 4u * q + 1u, g)][c] = v.y;
        sa[slot(buf, 4u * q + 2u, g)][c] = v.z;
        sa[slot(buf, 4u * q + 3u, g)][c] = v.w;
    }
    // B: SK x 64 scalars, SK / 4 per invocation
    let kb = min(params.k, kend);
    for (var r = 0u; r < SK / 4u; r++) {
        let k = k0 + b_kk[r];
        var v = 0.0;
        if (b_ok[r] && k < kb) {
            let at = b_col[r] + k * params.b_ks;
            if (params.b_state != 0u) {
                v = xyz[at];
            } else {
                v = scratch[at];
            }
        }
        sb[slot(buf, b_kk[r], b_nn[r] / 4u)][b_nn[r] % 4u] = v;
    }
}

// Writes the outputs (r, n .. n + 3) of `v` that exist.
fn store_row(o: u32, r: u32, n: u32, v: vec4<f32>) {
    if (r >= params.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (n + j < params.n_total) {
            scratch[o + r * params.o_ms + (n + j) * params.o_ns] = v[j];
        }
    }
}

// silu(g) * u, component-wise (the prelude's silu).
fn gated(g: vec4<f32>, u: vec4<f32>) -> vec4<f32> {
    return g / (1.0 + exp(min(-g, vec4<f32>(88.0)))) * u;
}

@compute @workgroup_size(256)
fn spread_product(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let g = group_of(wid, nwg);
    if (g >= params.groups) {
        return;
    }
    let tiles = params.tiles_m * params.tiles_n;
    let split = g / tiles;
    let tm = (g % tiles) / params.tiles_n;
    let tn = g % params.tiles_n;
    let tile_rows = select(64u, 32u, params.paired != 0u);
    let m0 = tm * tile_rows;
    let n0 = tn * 64u;
    let kbeg = split * params.k_chunk;
    let kend = min(params.kp, kbeg + params.k_chunk);
    let steps = (kend - kbeg + SK - 1u) / SK;
    let ty = lid / 16u;
    let tx = lid % 16u;

    b_columns(lid, n0);
    // the register block: the prelude's acc0 .. acc3, rows 4 ty + i (named
    // registers: an indexed array would live in memory on some compilers)
    zero_acc();
    load_tiles(lid, 0u, m0, kbeg, kend);
    workgroupBarrier();
    for (var st = 0u; st < steps; st++) {
        let cur = st % 2u;
        if (st + 1u < steps) {
            load_tiles(lid, 1u - cur, m0, kbeg + (st + 1u) * SK, kend);
        }
        for (var kk = 0u; kk < SK; kk++) {
            let a = sa[slot(cur, kk, ty)];
            let b = sb[slot(cur, kk, tx)];
            acc0 = fma(vec4<f32>(a.x), b, acc0);
            acc1 = fma(vec4<f32>(a.y), b, acc1);
            acc2 = fma(vec4<f32>(a.z), b, acc2);
            acc3 = fma(vec4<f32>(a.w), b, acc3);
        }
        workgroupBarrier();
    }

    let o = params.o_base + split * params.o_split;
    let n = n0 + 4u * tx;
    if (params.paired != 0u) {
        // rows 4 ty, 4 ty + 1: gates of outputs 2 ty, 2 ty + 1; then their ups
        store_row(o, m0 + 2u * ty, n, gated(acc0, acc2));
        store_row(o, m0 + 2u * ty + 1u, n, gated(acc1, acc3));
    } else {
        store_row(o, m0 + 4u * ty, n, acc0);
        store_row(o, m0 + 4u * ty + 1u, n, acc1);
        store_row(o, m0 + 4u * ty + 2u, n, acc2);
        store_row(o, m0 + 4u * ty + 3u, n, acc3);
    }
}

// Sums red[0 .. 256) into red[0]; every invocation takes part.
fn reduce_256(lid: u32) {
    for (var half = 128u; half > 0u; half /= 2u) {
        workgroupBarrier();
        if (lid < half) {
            red[lid] = red[lid] + red[lid + half];
        }
    }
    workgroupBarrier();
}

// One token row t (active puzzle t / S, position t % S): the residual sum
// state + partials written back, then scaled by its RMS over D. Partial j
// of element (t, d) is at part_base + j part_split + t D + d.
@compute @workgroup_size(256)
fn spread_norm_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let t = group_of(wid, nwg);
    if (t >= params.groups) {
        return;
    }
    let row = puzzle_base(t / S) + (t % S) * D;
    let parts = params.part_base + t * D;
    var ss = 0.0;
    for (var d = lid; d < D; d += WG) {
        var v = xyz[row + d];
        for (var j = 0u; j < params.splits; j++) {
            v = v + scratch[parts + j * params.part_split + d];
        }
        xyz[row + d] = v;
        ss = fma(v, v, ss);
    }
    red[lid] = ss;
    reduce_256(lid);
    let scale = inverseSqrt(red[0] / f32(D) + EPS);
    for (var d = lid; d < D; d += WG) {
        xyz[row + d] = xyz[row + d] * scale;
    }
}

// 32 columns c (active puzzle c / D, feature c % D) per workgroup, 8 lanes
// over the positions s: the residual sum state + partials written back,
// then scaled by its RMS over S. Partial j of element (s, c) is at
// part_base + j part_split + s n_total + c.
@compute @workgroup_size(256)
fn spread_norm_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let g = group_of(wid, nwg);
    if (g >= params.groups) {
        return;
    }
    let col = lid % 32u;
    let lane = lid / 32u;
    let c = g * 32u + col;
    let total = params.n_total;       // columns: active puzzles x D
    let ok = c < total;
    var base = 0u;
    if (ok) {
        base = puzzle_base(c / D) + c % D;
    }
    var ss = 0.0;
    if (ok) {
        for (var s = lane; s < S; s += 8u) {
            var v = xyz[base + s * D];
            for (var j = 0u; j < params.splits; j++) {
                v = v + scratch[params.part_base + j * params.part_split + s * total + c];
            }
            xyz[base + s * D] = v;
            ss = fma(v, v, ss);
        }
    }
    red[lid] = ss;
    workgroupBarrier();
    var sum = 0.0;
    for (var l = 0u; l < 8u; l++) {
        sum = sum + red[l * 32u + col];
    }
    let scale = inverseSqrt(sum / f32(S) + EPS);
    if (ok) {
        for (var s = lane; s < S; s += 8u) {
            xyz[base + s * D] = xyz[base + s * D] * scale;
        }
    }
}
