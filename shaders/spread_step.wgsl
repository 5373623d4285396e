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
// spread_product: the operands and their layout (Params fields); the tile
// code is the prelude's `product_tile`, the fused kernels' own
//   W        weights at the model's precision, rows of kp weights from
//            group w_off (a group: 4 weights, widened by the weight
//            prelude's weight4); rows beyond m
//            are not read. paired: W holds 2m rows, gate rows then up rows,
//            and out[r] = silu(W[r] . B) * (W[m + r] . B)
//   B[k, n]  n in 0..n_total is (active puzzle p = n / n_inner, c = n %
//            n_inner). b_state: B is the puzzle's state, at
//            state_base + running[p] * puzzle_stride + k b_ks + c b_ns;
//            else B is in the scratch at b_base + k b_ks + n b_ns
//   out      scratch[o_base + split o_split + m o_ms + n o_ns]; with
//            splits > 1 each split of K writes its own partial sum, which
//            the norm that follows adds (no float atomics in WGSL)
// Work split: one output tile (the prelude's tiling: 64 x 64, 32 x 64
// gated; vec4 fragments, double-buffered SK steps, swizzled tiles) and one
// split of K per workgroup. Workgroup order: the column tiles of one row
// tile are consecutive, so a weight tile is read by neighbouring workgroups
// (from L2 after the first) and once per step for the whole batch.
//   FLOPs   2 M N K (4 M N K paired), per workgroup 2 x 64 x 64 x k_chunk.
//   bytes   per workgroup 64 x k_chunk x E (A; E the bytes of a weight: 4 f32,
//           2 f16 and bf16, 1 int8, whose rows add a 4-byte scale) plus
//           4 x 64 x k_chunk (B) read, 4 x 64 x 64
//           written; the A tile is shared by the n_total / 64 workgroups of
//           a row tile.
//   barriers  ceil(k_chunk / SK) + 1 per workgroup.
//   Designed for: about 50% of FMA peak once a phase has a few workgroups
//   per compute unit (16 FMAs per 2 vec4 workgroup loads, as the best
//   WebGPU GEMMs with 4 x 4 register tiles); at batch 1 the channel and
//   token-down phases are bound by the weight bytes (per call at the Sudoku
//   shape 20.1 MB at f32, 10.0 MB at f16 and bf16, 5.06 MB at int8: each
//   weight read once for the whole batch) and by the dispatch count, not
//   by FMAs.
//
// norms: spread_norm_rows sums a row's squares by lane shuffles within
// clusters of `lanes` invocations (lanes_setup: checked, never assumed;
// 1 without subgroups) and the WG / lanes cluster sums through workgroup
// memory in a fixed order (2 barriers with the setup's) where lanes >= 8,
// else by a tree over the 256 invocations (9 barriers). spread_norm_cols
// keeps its 8 partials per column in workgroup memory: its consecutive
// invocations read consecutive columns (coalesced), so a column's 8 lanes
// are 32 invocations apart, never in one cluster. FLOPs 3 S D + splits S D,
// bytes 4 S D (2 + splits) per puzzle.

var<workgroup> red: array<f32, 256>;                      // the norms' partial sums

// The norms' workgroup memory poisoned (POISON_WORKGROUP, the prelude's):
// `red` and the lane words only, not the tiles, whose 16 KiB would count
// against this entry point's workgroup storage (WebGPU's default limit is
// 16 KiB) if it so much as named them.
fn poison_red(lid: u32) {
    if (POISON_WORKGROUP) {
        red[lid] = runtime_nan(lid);
        lanes_poison(lid);
        workgroupBarrier();
    }
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

@compute @workgroup_size(256)
fn spread_product(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let g = group_of(wid, nwg);
    if (g >= params.groups) {
        return;
    }
    poison_workgroup(lid);
    // B from the puzzles' states goes through the running list
    let op = Product(params.w_off, params.m, params.n_total, params.k, params.kp,
                     params.paired != 0u, params.b_state != 0u, params.b_base, params.b_ks,
                     params.b_ns, OUT_SCRATCH, params.o_base, params.o_ms, params.o_ns,
                     params.b_state != 0u, params.n_inner);
    let tiles = params.tiles_m * params.tiles_n;
    let split = g / tiles;
    let tm = (g % tiles) / params.tiles_n;
    let tn = g % params.tiles_n;
    let tile_rows = select(TM, TM / 2u, op.paired);
    let kbeg = split * params.k_chunk;
    let kend = min(params.kp, kbeg + params.k_chunk);
    product_tile(lid, op, tm * tile_rows, tn * TN, kbeg, kend,
                 params.o_base + split * params.o_split);
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
    poison_red(lid);
    let lanes = lanes_setup(lid);
    report_lanes(REPORT_NORM_ROWS, t == 0u, lid, lanes);
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
    var total = 0.0;
    if (lanes >= 8u) {
        // a sum per cluster of lanes, then the WG / lanes cluster sums in
        // a fixed order by every invocation: one barrier
        let part = lane_sum(ss, lanes);
        if (lid % lanes == 0u) {
            red[lid / lanes] = part;
        }
        workgroupBarrier();
        for (var c = 0u; c < WG / lanes; c++) {
            total = total + red[c];
        }
    } else {
        red[lid] = ss;
        reduce_256(lid);
        total = red[0];
    }
    let scale = inverseSqrt(total / f32(D) + EPS);
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
    poison_red(lid);
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
