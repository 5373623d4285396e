// loop_probe.wgsl: does the driver run a long loop to its end?
//
// Some drivers end every loop of a shader invocation once the invocation
// has run a fixed number of loop iterations in all, and report nothing:
// Mesa's llvmpipe 22.3 (Debian 12's, in lavapipe and in GL) ends them
// after 65535 (gallivm's LP_MAX_TGSI_LOOP_ITERATIONS, one counter shared by
// all the loops of a shader). The engine keeps every dispatch within a
// budget of half that (src/gpu/budget.rs); this kernel is the smallest
// case of the fault, for `trm check` and tests/gpu_driver.rs to find it:
//
//   io = [outer, inner, 0, 0]
//   for i < outer: for j < inner: count += 1, state = lcg(state)
//   io[2] = count, io[3] = state
//
// A driver without the limit writes outer x inner into io[2]. The bounds
// come from the buffer and the loop steps a linear congruential generator,
// so that no compiler can fold the loops away.
//
// Bindings
//   0 io  array<u32>, read_write  [outer, inner, count, state]
// Work split: one invocation. Cost: outer x inner iterations of a
// multiply-add (2^20: about a millisecond on a GPU, as long on lavapipe).

@group(0) @binding(0) var<storage, read_write> io: array<u32>;

@compute @workgroup_size(1)
fn main() {
    var count = 0u;
    var state = 0u;
    for (var i = 0u; i < io[0]; i++) {
        for (var j = 0u; j < io[1]; j++) {
            count += 1u;
            state = state * 1664525u + 1013904223u;
        }
    }
    io[2] = count;
    io[3] = state;
}
