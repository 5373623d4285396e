// weights_int8.wgsl: the step kernels' weight binding at int8 with one f32
// scale per row (symmetric: w = q scale[row], as the CPU engine widens
// it). See weights_f32.wgsl for the three functions every weight prelude
// defines.
//
// int8: a group is one u32 (4 bytes), weight k + j in byte j
// (little-endian as stored). Each matrix is its rows' groups, then its
// rows' scales as f32 bit patterns, one word each, so a product finds a
// row's scale from its own fields (w_off, kp and its row count) and the
// Product struct needs no field for it. The bytes are sign-extended with
// shifts and converted exactly (unpack4x8snorm would divide by 127 and
// round, dot4I8Packed would need the activations in int8 too); the scale
// multiplies each weight, giving the CPU engine's widened values bit for
// bit. f32 data (the RoPE tables) is stored as bit patterns, one float a
// group.

@group(0) @binding(0) var<storage, read> weights: array<u32>;

fn matrix_len(rows: u32, kp: u32) -> u32 {
    return rows * (kp / 4u) + rows;
}

fn weight4(op: Product, row: u32, k: u32) -> vec4<f32> {
    let groups = op.kp / 4u;
    let w = weights[op.w_off + row * groups + k / 4u];
    let rows = select(op.m, 2u * op.m, op.paired);
    let scale = bitcast<f32>(weights[op.w_off + rows * groups + row]);
    let q = bitcast<vec4<i32>>(vec4<u32>(w << 24u, w << 16u, w << 8u, w)) >> vec4<u32>(24u);
    return vec4<f32>(q) * scale;
}

fn weight_f32(base: u32, i: u32) -> f32 {
    return bitcast<f32>(weights[base + i]);
}
