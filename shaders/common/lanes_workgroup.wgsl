// lanes_workgroup.wgsl: the lane prelude of an adapter without subgroup
// operations (or with them turned off: GpuOptions::disable_subgroups). It
// defines what lanes_subgroup.wgsl defines, so the kernels are one source:
// `lanes_setup` returns 1, no reduction runs through lanes, and every reduction of
// the kernels takes its workgroup-memory path.

// The width of the clusters of consecutive invocations that `lane_xor`
// reaches (see lanes_subgroup.wgsl): 1, none.
fn lanes_setup(lid: u32) -> u32 {
    return 1u;
}

// No workgroup memory of its own to poison.
fn lanes_poison(lid: u32) {}

// Never called while lanes is 1; defined so that the kernels compile.
fn lane_xor(v: f32, mask: u32) -> f32 {
    return v;
}
fn lane_xor4(v: vec4<f32>, mask: u32) -> vec4<f32> {
    return v;
}
