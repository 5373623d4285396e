// halt.wgsl: early halting decided on the device, after the heads of an
// ACT step, so that a solve with early halting is recorded ahead like one
// without: no host round trip between ACT steps.
//
//   for every running puzzle p (in order): steps[p] = this ACT step;
//     it keeps running unless it halts by the model's rule, as the CPU
//     engine's (TrmConfig::halts): TRM's q_halt[p] > 0, or, with
//     HALT_VS_CONTINUE, HRM's q_halt[p] > q_continue[p] (a NaN keeps it
//     running either way)
//   the running list is compacted in place (order kept), the slots it no
//   longer uses point at the spare puzzle slot (index params.batch, the
//   chunk's capacity), and the count, cut into the fused dispatches'
//   slices, is written where the next ACT step's indirect dispatches read
//   it.
//
// Bindings
//   0 outputs  array<f32>, read        logits | q [B, 2] from params.q_base
//   1 running  array<u32>, read_write  the running puzzles, compacted here
//   2 control  array<u32>, read_write  [0] running count; [4] ACT steps done;
//              from [8], one indirect dispatch (x, 1, 1) per slice of the
//              fused steps and the heads (params.slices of params.slice
//              puzzles: x = the running puzzles in that slice); then, from
//              8 + 4 slices, the ACT steps each puzzle ran
//   3 params   uniform (dynamic offset): q_base, batch (the spare slot),
//              slice, slices
//
// Work split: one invocation walks the running list (at most the chunk's
// capacity, a few thousand: microseconds, once per ACT step); its order is
// kept, so every schedule sees the puzzles in the order a host would.
// Cost: 4 B bytes read and written per ACT step. No barriers.

// struct Params: shaders/common/params.wgsl, prepended by the Rust side.

// The halting rule: false, TRM's q_halt > 0; true, HRM's q_halt > q_continue.
override HALT_VS_CONTINUE: bool;

@group(0) @binding(0) var<storage, read> outputs: array<f32>;
@group(0) @binding(1) var<storage, read_write> running: array<u32>;
@group(0) @binding(2) var<storage, read_write> control: array<u32>;
@group(0) @binding(3) var<uniform> params: Params;

// control[] fields
const COUNT: u32 = 0u;
const ACT_STEPS: u32 = 4u;
const DISPATCHES: u32 = 8u;

@compute @workgroup_size(1)
fn main() {
    let step = control[ACT_STEPS] + 1u;
    control[ACT_STEPS] = step;
    let count = control[COUNT];
    let steps_at = DISPATCHES + 4u * params.slices;
    var kept = 0u;
    for (var i = 0u; i < count; i++) {
        let p = running[i];
        control[steps_at + p] = step;
        let q_halt = outputs[params.q_base + 2u * p];
        let q_continue = outputs[params.q_base + 2u * p + 1u];
        let bar = select(0.0, q_continue, HALT_VS_CONTINUE);
        if (!(q_halt > bar)) {
            running[kept] = p;
            kept++;
        }
    }
    for (var i = kept; i < count; i++) {
        running[i] = params.batch;
    }
    control[COUNT] = kept;
    for (var j = 0u; j < params.slices; j++) {
        let first = j * params.slice;
        control[DISPATCHES + 4u * j] = min(kept - min(kept, first), params.slice);
    }
}
