// mixer_step.wgsl: one TRM network call of the MLP-mixer model (mlp_t = true)
// for every active puzzle, fused: a workgroup per puzzle walks the whole
// call, in as few dispatches as the loop budget allows (step_common.wgsl,
// "Segments": one at small shapes, 9 at the Sudoku shape). The units of a
// call, in order: per block the output tiles of the token gate/up, token
// down (then the norm over S), channel gate/up and channel down (then the
// norm over D) products.
//
//   state = net(state, injection)      (shared/TRM.md, Forward pass)
//   h = state + injection              injection = y + x (z update, summed first)
//                                      or z (y update)
//   for each of the call's blocks (params.layer_count of the stored ones
//   from params.layer_first: TRM's one network, or HRM's L or H level):
//     h = rms_norm_over_S(h + down_t @ (silu(g) * u)),  [g | u] = gate_up_t @ h
//     h = rms_norm_over_D(h + (silu(g) * u) @ down^T),  [g | u] = h @ gate_up^T
//   state = h                          (written in place)
//
// This file follows the shared prelude shaders/common/step_common.wgsl
// (bindings, parameter block, the tiled product and its epilogues, the
// channel SwiGLU and the RMSNorm over D), prepended by the Rust side; see
// that file's header.
//
// Bindings (4 storage buffers, 1 uniform: fits downlevel limits)
//   0 weights  read, at the model's precision (the weight prelude's binding:
//              f32, f16, bf16, or int8 with each matrix's row scales after
//              it) per layer, row-major [out, in] with every row padded with
//              zeros to a multiple of 4 weights:
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
// The four matrix products run the prelude's `product` (its tile code is
// the spread schedule's too: see step_common.wgsl), tiled 64 x 64 (32 x 64
// gated outputs for the gate/up products), K in double-buffered steps of
// SK = 16 (8 where the adapter has less than 16 KiB of workgroup memory),
// 4 x 4 register blocks read as vec4 fragments. SiLU, the gating, the
// residual add are applied to the register block before it is stored;
// the RMSNorm over S runs one invocation per column (D columns keep the
// workgroup busy), the one over D (prelude) four invocations per row with
// their partials met by subgroup shuffles where the device has them and
// `lanes_setup` (3 barriers per dispatch) finds clusters of 4, else in
// workgroup memory (2 barriers per 64 rows). The channel products' second
// column tile at S = 97 computes 36 of its 64 columns (the prelude's
// padding skip), the token-down product's second row tile 36 of 64 rows.
// A weight is read once per column tile of its product, per workgroup and
// step: ceil(D/64) times for the token products, ceil(S/64) for the channel
// ones (8 and 2 at Sudoku size), after the first workgroup from cache. Once
// per step for the whole batch is what the spread schedule does.
//
// Cost per puzzle per recursion step (all its segments), L = params.layer_count:
//   FLOPs  L (6 S D TI + 6 S D CI) for the products, plus O(L S D) for the
//          injection, SiLU, gating and norms. Sudoku (S 97, D 512, TI 512,
//          CI 1536, L 2): 1.22 GFLOP.
//   bytes  weights E L (ceil(D/64) (2 TI SP + S TI) + ceil(S/64) (2 CI DP + D CI)),
//          E the bytes of a weight: 4 (f32), 2 (f16, bf16), 1 (int8, whose
//          row scales add 4 bytes per row read: 1.1% at Sudoku, 2.7% at
//          sudoku-easy). Sudoku: 47.5 MB
//          read (20.1 MB distinct) at f32, 23.7 MB (10.0 MB) at f16 and
//          bf16, 11.9 MB (5.06 MB) at int8; sudoku-easy (S 81, D 128, TI
//          256, CI 512, L 2): 4.17 MB read (2.08 MB distinct) at f32, 2.08
//          MB (1.04 MB) at f16 and bf16, 1.04 MB (0.535 MB) at int8. Plus about 4 L (8 S D + 3 TI D + 3 CI S) of
//          activation traffic through the per-puzzle state and scratch
//          (L2-resident at small batch), the same at every precision. At
//          batch 1 the weights dominate the traffic; at large batch the
//          products' FMAs do, and the precision changes only the loads
//          (widening is 2 to 4 ALU operations per 4 weights, each weight
//          then used in 64 FMAs).
//   barriers  L (ceil(TI/32) ceil(D/64) (ceil(SP/SK) + 1) + ceil(S/64) ceil(D/64) (TI/SK + 1)
//          + ceil(CI/32) ceil(S/64) (ceil(DP/SK) + 1) + ceil(D/64) ceil(S/64) (CI/SK + 1))
//          + L (6 + 2 ceil(S/64)) + 1, or L 6 + 4 with subgroup clusters of 4 or more
//          (Sudoku at SK 16: 12 565, which is why lavapipe, where a barrier costs
//          microseconds, wants small CI models).
//
// Designed for: the large-batch ("fused") schedule, where the batch alone
// fills the device (a puzzle per workgroup, every compute unit holding a
// few): about 50% of FMA peak in the products (2 vec4 workgroup loads per
// 16 FMAs, one barrier per K step), bound by the norm over S and by the
// weight traffic of each puzzle's own tile walk. Small batches run the
// spread schedule instead (spread_step.wgsl: each phase a dispatch over the
// whole batch's tiles).
//
// A dispatch covers the running puzzles params.first .. params.first +
// workgroups (the host cuts a large batch into slices, so that no
// dispatch runs long enough to trip an OS watchdog).

// Overrides of the prelude: S, D, DP, CI, LAYERS, EPS, SK.
override TI: u32;         // token-mixing SwiGLU width, inter(S)
override SP: u32;         // S rounded up to a multiple of 4

// The four products of a block, in order; all share one call site (one
// copy of the tile code).
const TOKEN_GATE_UP: u32 = 0u;   // [TI, D] gated  = tok_gu [2TI, S] @ h [S, D]
const TOKEN_DOWN: u32 = 1u;      // h [S, D]      += tok_dn [S, TI] @ gated [TI, D]
const CHANNEL_GATE_UP: u32 = 2u; // [CI, S] gated  = ch_gu [2CI, D] @ h^T [D, S]
const CHANNEL_DOWN: u32 = 3u;    // h^T [D, S]    += ch_dn [D, CI] @ gated [CI, S]

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let puzzle = running[params.first + wid.x];
    let state = params.state_base + puzzle * params.puzzle_stride;
    let inj_a = params.inj_a_base + puzzle * params.puzzle_stride;
    let inj_b = params.inj_b_base + puzzle * params.puzzle_stride;
    let work = puzzle * max(TI * D, CI * S);
    poison_workgroup(lid);
    let lanes = lanes_setup(lid);
    report_lanes(REPORT_FUSED, params.first + wid.x == 0u, lid, lanes);

    if (params.unit_first == 0u) {
        inject(lid, state, inj_a, inj_b);
        storageBarrier();
    }

    // weight offsets in groups of 4 weights
    let tok_gu_len = matrix_len(2u * TI, SP);
    let tok_dn_len = matrix_len(S, TI);
    let layer_len = tok_gu_len + tok_dn_len + channel_gate_up_len() + channel_down_len();

    // The call's units (step_common.wgsl, "Segments"): per block, the
    // output tiles of its four products in order. `base` is the first
    // unit of the product at hand.
    var base = 0u;
    for (var layer = params.layer_first; layer < params.layer_first + params.layer_count; layer++) {
        let w = layer * layer_len;
        let ch = w + tok_gu_len + tok_dn_len;
        // token gate/up, token down, then the norm over S; channel gate/up
        // (transposed), channel down, then the norm over D.
        for (var kind = 0u; kind < 4u; kind++) {
            var op: Product;
            switch kind {
                case TOKEN_GATE_UP: {
                    op = Product(w, TI, D, S, SP, true, true, state, D, 1u, OUT_SCRATCH, work, D, 1u, false, 0u);
                }
                case TOKEN_DOWN: {
                    op = Product(w + tok_gu_len, S, D, TI, TI, false, false, work, D, 1u,
                                 OUT_ADD_STATE, state, D, 1u, false, 0u);
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
            if (part.x == part.y) {
                continue;
            }
            product_part(lid, op, part);
            storageBarrier();
            // the norm after a product runs where its last tile did
            if (kind == TOKEN_DOWN && part.y == tiles) {
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
            if (kind == CHANNEL_DOWN && part.y == tiles) {
                rms_norm_rows(lid, state, lanes);
                storageBarrier();
            }
        }
    }
}
