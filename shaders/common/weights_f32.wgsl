// weights_f32.wgsl: the step kernels' weight binding at f32 (the
// reference). One of four weight preludes (weights_f32, weights_f16,
// weights_bf16, weights_int8); the Rust side picks the one of the model's
// precision when it assembles a kernel (`step_source!` in
// src/gpu/step_common.rs), so a pipeline reads one precision and the
// choice costs nothing per weight. Each prelude defines the same three
// functions over its own binding type:
//   matrix_len(rows, kp)   groups a [rows, kp] matrix takes in the buffer
//   weight4(op, row, k)    W[row, k .. k + 4] of a product, widened to f32
//   weight_f32(base, i)    float i of an f32 region starting at group base
//                          (the RoPE tables)
// A group is 4 consecutive weights of a row, whatever their width, so
// offsets in groups (Product.w_off, the layer lengths) are the same
// formulas at every precision; int8 alone adds its row scales to
// matrix_len.
//
// f32: a group is one vec4<f32> (16 bytes).

@group(0) @binding(0) var<storage, read> weights: array<vec4<f32>>;

fn matrix_len(rows: u32, kp: u32) -> u32 {
    return rows * (kp / 4u);
}

fn weight4(op: Product, row: u32, k: u32) -> vec4<f32> {
    return weights[op.w_off + row * (op.kp / 4u) + k / 4u];
}

fn weight_f32(base: u32, i: u32) -> f32 {
    return weights[base + i / 4u][i % 4u];
}
