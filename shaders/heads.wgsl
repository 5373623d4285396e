// heads.wgsl: the output heads of every active puzzle, after an ACT step.
//
//   logits[t, v] = y[P + t] . lm_head[v]              t < seq_len, v < vocab
//   q[j]         = y[0] . q_head[j] + q_head_bias[j]  j = 0 (halt), 1 (continue)
//
// Bindings
//   0 xyz     array<f32>, read        [3][B][S][D]; y = z_H from params.state_base
//   1 head    array<f32>, read        lm_head [VOCAB, D] | q_head [2, D] | q_head_bias [2]
//   2 out     array<f32>, read_write  logits [B, SEQ, VOCAB] | q [B, 2] (from params.q_base)
//   3 active  array<u32>, read        workgroup -> puzzle
//   4 params  uniform (dynamic offset), the parameter block (params.wgsl)
//
// Work split: one workgroup of 64 invocations per active puzzle, one
// invocation per output value, each a dot product over D read straight
// from storage (y rows are shared through the cache). A dispatch computes
// the outputs [params.unit_first, params.unit_end) of the SEQ VOCAB + 2:
// the host cuts them into as many dispatches as keep each invocation
// within the loop budget (step_common.wgsl, "Segments"; at the ARC shape
// 3 dispatches).
// Cost per puzzle: 2 D (SEQ VOCAB + 2) FLOPs, 4 D (SEQ + 1) bytes of y and
// 4 D (VOCAB + 2) of weights read, 4 (SEQ VOCAB + 2) bytes written. Once per
// ACT step at most (only after the last one without early halting).
// Designed for: bound by the cache traffic of y (about 1% of a network
// call's FLOPs, so not tuned further). A dispatch covers the running
// puzzles params.first .. params.first + workgroups (a slice, as the fused
// steps').

override S: u32;
override D: u32;
override SEQ: u32;
override VOCAB: u32;
override P: u32;          // puzzle-embedding positions, skipped by lm_head

const WG: u32 = 64u;

// struct Params: shaders/common/params.wgsl, prepended by the Rust side.

@group(0) @binding(0) var<storage, read> xyz: array<f32>;
@group(0) @binding(1) var<storage, read> head: array<f32>;
@group(0) @binding(2) var<storage, read_write> outputs: array<f32>;
@group(0) @binding(3) var<storage, read> running: array<u32>;
@group(0) @binding(4) var<uniform> params: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let puzzle = running[params.first + wid.x];
    let y = params.state_base + puzzle * params.puzzle_stride;
    let n_logits = SEQ * VOCAB;
    // the dispatch's outputs [unit_first, unit_end) (src/gpu/budget.rs keeps
    // each invocation's share within the loop budget)
    let end = min(params.unit_end, n_logits + 2u);
    for (var o = params.unit_first + lid; o < end; o += WG) {
        if (o < n_logits) {
            let row = y + (P + o / VOCAB) * D;
            let w = (o % VOCAB) * D;
            var sum = 0.0;
            for (var d = 0u; d < D; d++) {
                sum = fma(xyz[row + d], head[w + d], sum);
            }
            outputs[puzzle * n_logits + o] = sum;
        } else {
            let j = o - n_logits;
            let w = VOCAB * D + j * D;
            var sum = 0.0;
            for (var d = 0u; d < D; d++) {
                sum = fma(xyz[y + d], head[w + d], sum);
            }
            outputs[params.q_base + 2u * puzzle + j] = sum + head[VOCAB * D + 2u * D + j];
        }
    }
}
