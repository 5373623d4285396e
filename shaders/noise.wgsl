// noise.wgsl: noisy trajectories (Probabilistic TRM): adds sigma * N(0, 1)
// to one state (z_L or z_H) of a run of rows, each row one (puzzle,
// trajectory)'s [S, D] block, drawn on the device from a counter-based
// generator, bit for bit the numbers src/noise.rs makes on the CPU but for
// float rounding (the same Philox4x32-10 words, the same polynomial
// logarithm and sine/cosine: WGSL's own cos may be off by 2^-11).
//
//   row r (0 .. rows): global row g = first_row + r,
//     puzzle = g / trajectories, trajectory = g % trajectories
//   element i of the row: group i / 4, lane i % 4 of
//     philox4x32_10(counter = (group, step * 2 + state, puzzle, trajectory),
//                   key = seed) -> 4 words -> 2 Box-Muller pairs
//   state[base + r * row_elems + i] += sigma * normal
//
// Bindings
//   0 state   array<f32>, read_write  the state buffer (z_L or z_H)
//   1 noise   array<u32>, read        seed_lo, seed_hi, bitcast sigma, step,
//             state (0 z_L, 1 z_H), first_row, trajectories, row_elems,
//             rows, base (element offset of row 0)
//
// Work split: one invocation per group of 4 elements: x over a row's
// groups (64 a workgroup), y over rows. Cost per element: a quarter of 10
// Philox rounds (4 32x32 products each, from 16-bit halves: WGSL has no
// high multiply), half a logarithm and a sine/cosine pair, about 60 ALU
// operations; 8 bytes read and written. No barriers, no workgroup memory.

// struct Params: shaders/common/params.wgsl, prepended by the Rust side
// (not used here: the noise has its own words).

@group(0) @binding(0) var<storage, read_write> state: array<f32>;
@group(0) @binding(1) var<storage, read> noise: array<u32>;

const M0: u32 = 0xD2511F53u;
const M1: u32 = 0xCD9E8D57u;
const W0: u32 = 0x9E3779B9u;
const W1: u32 = 0xBB67AE85u;

// (high, low) words of the 64-bit product a * b.
fn mul_hi_lo(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        if (round > 0u) {
            k = vec2<u32>(k.x + W0, k.y + W1);
        }
        let p0 = mul_hi_lo(M0, c.x);
        let p1 = mul_hi_lo(M1, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
    }
    return c;
}

fn uniform01(x: u32) -> f32 {
    return (f32(x >> 8u) + 0.5) * (1.0 / 16777216.0);
}

// ln(u), u in (0, 1]: as src/noise.rs `ln`.
fn ln_poly(u: f32) -> f32 {
    let bits = bitcast<u32>(u);
    var e = i32((bits >> 23u) & 0xffu) - 127;
    var m = bitcast<f32>((bits & 0x007fffffu) | 0x3f800000u);
    if (m > 1.4142135) {
        m = m * 0.5;
        e = e + 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    var p = 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    p = p * s2 + 1.0;
    return 2.0 * s * p + f32(e) * 0.6931472;
}

// (sin, cos) of 2 pi t, t in [0, 1): as src/noise.rs `sincos_turns`.
fn sincos_turns(t: f32) -> vec2<f32> {
    let quarter = floor(t * 4.0 + 0.5);
    let a = (t - quarter * 0.25) * 6.2831855;
    let a2 = a * a;
    var s = -1.0 / 362880.0 * a2 + 1.0 / 5040.0;
    s = s * a2 - 1.0 / 120.0;
    s = s * a2 + 1.0 / 6.0;
    s = a - a * a2 * s;
    var c = 1.0 / 3628800.0 * a2 - 1.0 / 40320.0;
    c = c * a2 + 1.0 / 720.0;
    c = c * a2 - 1.0 / 24.0;
    c = c * a2 + 0.5;
    c = 1.0 - a2 * c;
    switch (i32(quarter) & 3) {
        case 0: { return vec2<f32>(s, c); }
        case 1: { return vec2<f32>(c, -s); }
        case 2: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}

fn box_muller(a: u32, b: u32) -> vec2<f32> {
    let r = sqrt(-2.0 * ln_poly(uniform01(a)));
    let sc = sincos_turns(uniform01(b));
    return vec2<f32>(r * sc.y, r * sc.x);
}

@compute @workgroup_size(64)
fn add_noise(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row_elems = noise[7];
    let group = gid.x;
    let r = gid.y;
    if (r >= noise[8] || group * 4u >= row_elems) {
        return;
    }
    let g = noise[5] + r;
    let trajectories = max(noise[6], 1u);
    let counter = vec4<u32>(group, (noise[3] << 1u) | noise[4], g / trajectories, g % trajectories);
    let w = philox4x32_10(counter, vec2<u32>(noise[0], noise[1]));
    let n01 = box_muller(w.x, w.y);
    let n23 = box_muller(w.z, w.w);
    let n = array<f32, 4>(n01.x, n01.y, n23.x, n23.y);
    let sigma = bitcast<f32>(noise[2]);
    let base = noise[9] + r * row_elems + group * 4u;
    for (var lane = 0u; lane < 4u; lane++) {
        if (group * 4u + lane < row_elems) {
            state[base + lane] = state[base + lane] + sigma * n[lane];
        }
    }
}
