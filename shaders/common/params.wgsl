// params.wgsl: the parameter block every kernel reads (one uniform binding
// with a dynamic offset: each dispatch picks its block). WGSL has no
// includes: the Rust side prepends this file to every kernel source
// (`kernel_source!` in src/gpu/layout.rs), and `layout::Params` is its
// mirror, field for field (a test checks).
//
// The fused kernels and the heads read state_base .. slices (the fused
// kernels layer_first, layer_count and the unit range too; the heads the
// unit range as a range of outputs); embed.wgsl
// batch and puzzle_stride; halt.wgsl q_base, batch, slice and slices; the
// spread schedule's phases (spread_step.wgsl states each field's meaning)
// the fields from n_inner on.

struct Params {
    state_base: u32,      // first element of the updated state's region
    inj_a_base: u32,      // first element of the injection's first term
    inj_b_base: u32,      // first element of its second term (if inject_sum)
    inject_sum: u32,      // 1: injection = a + b (summed first); 0: injection = a
    q_base: u32,          // (heads only)
    puzzle_stride: u32,   // S * D
    batch: u32,           // puzzles in the chunk
    first: u32,           // first running index of a sliced fused dispatch
    // The spread schedule's phase (spread_step.wgsl states their meaning;
    // 0 in the fused kernels' blocks).
    n_inner: u32,
    n_total: u32,
    w_off: u32,
    m: u32,
    k: u32,
    kp: u32,
    paired: u32,
    b_state: u32,
    b_base: u32,
    b_ks: u32,
    b_ns: u32,
    o_base: u32,
    o_ms: u32,
    o_ns: u32,
    o_split: u32,
    tiles_m: u32,
    tiles_n: u32,
    k_chunk: u32,
    splits: u32,
    part_base: u32,
    part_split: u32,
    groups: u32,
    slice: u32,           // puzzles per fused dispatch (halt.wgsl)
    slices: u32,          // fused dispatches per network call (halt.wgsl)
    layer_first: u32,     // first stored block of the call's network (fused kernels:
    layer_count: u32,     // TRM's one network, or HRM's L or H level) and its blocks
    // The units of the work this dispatch runs, [unit_first, unit_end): a
    // fused network call is cut into dispatches that each stay within the
    // loop budget (step_common.wgsl, "Segments"; src/gpu/budget.rs), and so
    // are the heads, whose units are their outputs.
    unit_first: u32,
    unit_end: u32,
}
