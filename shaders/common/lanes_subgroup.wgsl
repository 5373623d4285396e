// lanes_subgroup.wgsl: the lane prelude of an adapter with subgroup
// operations (wgpu::Features::SUBGROUP). The kernels' reductions (the
// RMSNorm over D, the attention's row maxima and sums) add within clusters
// of consecutive invocations by XOR shuffles, with no workgroup memory and
// no barrier, and meet in workgroup memory only beyond a cluster.
//
// Nothing about the subgroups is assumed (WGSL promises neither a subgroup
// size nor how invocations fall into subgroups): `lanes_setup` checks, for
// every mask m in 1, 2, 4, 8, that subgroupShuffleXor reaches invocation
// lid ^ m from every invocation of the workgroup, and `lanes` is the widest
// cluster (a power of two up to 16) for which all checks hold, 1 if none.
// It is returned (a workgroup-uniform value) and passed down to the
// reductions as `lanes`.
// On every known GPU the subgroups are runs of consecutive invocations, so
// lanes is min(subgroup size, 16); lavapipe's is its SIMD width / 32
// (8 at 256 bits, LP_NATIVE_VECTOR_WIDTH changes it).
//
// Determinism: a cluster's sum is a butterfly, and float addition is
// commutative, so every invocation of the cluster gets the same bits, and
// a given pipeline on a given adapter gives the same bits on every run.
//
// Naga does not accept WGSL's `enable subgroups;` yet (gfx-rs/wgpu#5555);
// it takes the subgroup built-ins once the device has the feature.

var<workgroup> lane_faults: atomic<u32>;
var<workgroup> lane_width: u32;

// Returns `lanes` (workgroup-uniform). Every invocation of the workgroup
// calls it once, in uniform control flow, before any reduction. Three
// barriers: the pipelines leave workgroup memory uninitialised
// (zero_initialize_workgroup_memory is off), so the fault bits are
// cleared first.
fn lanes_setup(lid: u32) -> u32 {
    if (lid == 0u) {
        atomicStore(&lane_faults, 0u);
    }
    var bad = 0u;
    for (var m = 1u; m < 16u; m *= 2u) {
        if (subgroupShuffleXor(lid, m) != (lid ^ m)) {
            bad = bad | m;
        }
    }
    workgroupBarrier();
    if (bad != 0u) {
        atomicOr(&lane_faults, bad);
    }
    workgroupBarrier();
    if (lid == 0u) {
        let faults = atomicLoad(&lane_faults);
        // the widest cluster: masks below it all reach their partner
        var width = 16u;
        for (var m = 8u; m > 0u; m /= 2u) {
            if ((faults & m) != 0u) {
                width = m;
            }
        }
        lane_width = width;
    }
    return workgroupUniformLoad(&lane_width);
}

// The setup's words with all bits set (POISON_WORKGROUP; the caller
// meets a barrier next).
fn lanes_poison(lid: u32) {
    if (lid == 0u) {
        atomicStore(&lane_faults, 0xffffffffu);
        lane_width = 0xffffffffu;
    }
}

// v of invocation lid ^ mask (mask < lanes).
fn lane_xor(v: f32, mask: u32) -> f32 {
    return subgroupShuffleXor(v, mask);
}
fn lane_xor4(v: vec4<f32>, mask: u32) -> vec4<f32> {
    return subgroupShuffleXor(v, mask);
}
