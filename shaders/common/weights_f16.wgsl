// weights_f16.wgsl: the step kernels' weight binding at f16, widened in
// the shader: `unpack2x16float` is core WGSL (no `shader-f16` feature, so
// every backend and browser runs it). See weights_f32.wgsl for the three
// functions every weight prelude defines.
//
// f16: a group is one vec2<u32> (8 bytes), weights k, k + 1 in the first
// word (k in the low half, little-endian as stored), k + 2, k + 3 in the
// second. f32 data (the RoPE tables) is stored as its bit patterns, two
// floats a group.

@group(0) @binding(0) var<storage, read> weights: array<vec2<u32>>;

fn matrix_len(rows: u32, kp: u32) -> u32 {
    return rows * (kp / 4u);
}

fn weight4(op: Product, row: u32, k: u32) -> vec4<f32> {
    let w = weights[op.w_off + row * (op.kp / 4u) + k / 4u];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn weight_f32(base: u32, i: u32) -> f32 {
    return bitcast<f32>(weights[base + i / 2u][i % 2u]);
}
