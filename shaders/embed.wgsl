// embed.wgsl: the embedded input x of every puzzle of a chunk, once per solve.
//
//   e = concat(puzzle_emb[pid] zero-padded to P rows, embed_tokens[tokens])
//   if learned positions: e = 0.707106781 * (e + embed_pos)
//   x = sqrt(D) * e                                           [S, D]
//
// Bindings
//   0 ids     array<u32>, read        tokens [B, SEQ] | puzzle ids [B] |
//                                     puzzle_emb rows [B, NDIM] (f32 bits: the
//                                     host gathers each puzzle's row, so the
//                                     table, up to 2.5 GB, never binds)
//   1 tables  array<f32>, read        embed_tokens [VOCAB, D] | embed_pos
//                                     [S, D] (at POS_OFF)
//   2 xyz     array<f32>, read_write  [3][B][S][D]; x is region 0
//   3 params  uniform, the parameter block (params.wgsl: batch, puzzle_stride)
//
// Work split: one workgroup of 256 invocations per puzzle, one invocation
// per element of x (strided). Cost per puzzle: S D multiplies (two more
// with learned positions), 4 S D bytes read and 4 S D written. Designed
// for memory bandwidth (no FLOPs to speak of), once per solve.

override S: u32;
override D: u32;
override P: u32;
override SEQ: u32;
override NDIM: u32;       // puzzle_emb_ndim (0: no puzzle embedding)
override POS_OFF: u32;
override HAS_POS: bool;   // learned positions
override SCALE: f32;      // sqrt(D), rounded to f32 as the CPU engine does
override POS_SCALE: f32;  // 0.707106781

const WG: u32 = 256u;

// struct Params: shaders/common/params.wgsl, prepended by the Rust side.

@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read> tables: array<f32>;
@group(0) @binding(2) var<storage, read_write> xyz: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let puzzle = wid.x;
    let rows = params.batch * (SEQ + 1u) + puzzle * NDIM;
    for (var i = lid; i < S * D; i += WG) {
        let s = i / D;
        let d = i % D;
        var v = 0.0;
        if (s < P) {
            if (i < NDIM) {
                v = bitcast<f32>(ids[rows + i]);
            }
        } else {
            let token = ids[puzzle * SEQ + s - P];
            v = tables[token * D + d];
        }
        if (HAS_POS) {
            v = POS_SCALE * (v + tables[POS_OFF + i]);
        }
        xyz[puzzle * params.puzzle_stride + i] = v * SCALE;
    }
}
