use super::*;
use crate::cpu::ops::mat_mut;
use crate::cpu::test_values::values;

fn bf16(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf16_bits(x)).collect()
}

fn round(x: f64) -> f64 {
    f64::from(half::bf16::from_f64(x).to_f32())
}

/// `rms_norm_S(t + down_t @ gate(gate_up_t @ t))`, `t = h + injection`,
/// in float64 on the bf16 weights, each product's inputs rounded to
/// bf16 as the kernel rounds them, `[S, D]`.
fn reference(gu: &[u16], dn: &[u16], t: &[f64], seq: usize, inter: usize, d: usize) -> Vec<f64> {
    let w = |v: u16| f64::from(half::bf16::from_bits(v).to_f32());
    let mut out = t.to_vec();
    for col in 0..d {
        let gated: Vec<f64> = (0..inter)
            .map(|f| {
                let dot = |row: usize| -> f64 {
                    (0..seq)
                        .map(|k| w(gu[row * seq + k]) * round(t[k * d + col]))
                        .sum()
                };
                let (g, u) = (dot(f), dot(inter + f));
                round(g / (1.0 + (-g).exp()) * u)
            })
            .collect();
        let mut squares = 0.0;
        for s in 0..seq {
            let update: f64 = (0..inter).map(|f| w(dn[s * inter + f]) * gated[f]).sum();
            out[s * d + col] += update;
            squares += out[s * d + col] * out[s * d + col];
        }
        let scale = 1.0 / (squares / seq as f64 + 1e-5).sqrt();
        (0..seq).for_each(|s| out[s * d + col] *= scale);
    }
    out
}

/// As [`reference`] for int8 weights (`q` bytes, one scale per row),
/// each product's inputs quantized per column as the kernel does it.
#[allow(clippy::too_many_arguments)]
fn reference_int8(
    (gu, gu_scales): (&[u8], &[f32]),
    (dn, dn_scales): (&[u8], &[f32]),
    t: &[f32],
    seq: usize,
    inter: usize,
    d: usize,
) -> Vec<f64> {
    let w = |v: u8| f64::from(v as i8);
    // per column: the scale and the quantized values, rounded as the
    // kernel rounds (f32 `v * (127 / max)`, to nearest even)
    let quantize = |column: &[f32]| -> (f64, Vec<f64>) {
        let max = column.iter().fold(0f32, |m, v| m.max(v.abs()));
        if max == 0.0 {
            return (0.0, vec![0.0; column.len()]);
        }
        let inv = 127.0 / max;
        let q = column
            .iter()
            .map(|&v| f64::from((v * inv).clamp(-127.0, 127.0).round_ties_even()))
            .collect();
        (f64::from(max / 127.0), q)
    };
    let mut out: Vec<f64> = t.iter().map(|&v| f64::from(v)).collect();
    for col in 0..d {
        let column: Vec<f32> = (0..seq).map(|s| t[s * d + col]).collect();
        let (s_a, q) = quantize(&column);
        let gated: Vec<f32> = (0..inter)
            .map(|f| {
                let dot = |row: usize| -> f64 {
                    let sum: f64 = (0..seq).map(|k| w(gu[row * seq + k]) * q[k]).sum();
                    sum * s_a * f64::from(gu_scales[row])
                };
                let (g, u) = (dot(f), dot(inter + f));
                (g / (1.0 + (-g).exp()) * u) as f32
            })
            .collect();
        let (s_g, q) = quantize(&gated);
        let mut squares = 0.0;
        for s in 0..seq {
            let sum: f64 = (0..inter).map(|f| w(dn[s * inter + f]) * q[f]).sum();
            out[s * d + col] += sum * s_g * f64::from(dn_scales[s]);
            squares += out[s * d + col] * out[s * d + col];
        }
        let scale = 1.0 / (squares / seq as f64 + 1e-5).sqrt();
        (0..seq).for_each(|s| out[s * d + col] *= scale);
    }
    out
}

#[test]
fn int8_matches_float64_on_the_quantized_inputs() {
    let Some(amx) = Amx::detect() else {
        eprintln!("SKIPPED: this CPU (or OS) has no AMX");
        return;
    };
    let int8 = |v: &[f32], cols: usize| -> (Vec<u8>, Vec<f32>) {
        let mut bytes = Vec::new();
        let mut scales = Vec::new();
        for row in v.chunks_exact(cols) {
            let (s, q) = crate::weights::quantize_row(row);
            bytes.extend(q.iter().map(|&q| q as u8));
            scales.push(s);
        }
        (bytes, scales)
    };
    // S 97 (two steps of 64: padded), 65, 13; inter past a multiple of
    // 64; partial blocks; a zero column
    for (seq, inter, d) in [(13, 10, 70), (97, 512, 64), (65, 70, 130), (1, 1, 3)] {
        let gu = int8(&values(2 * inter * seq, 3), seq);
        let dn = int8(&values(seq * inter, 5), inter);
        let mlp = AmxTokenMlp::int8(amx, (&gu.0, &gu.1), (&dn.0, &dn.1), seq, inter);
        let mut scratch = mlp.scratch();
        let mut h = values(seq * d, 11);
        for s in 0..seq {
            h[s * d + d / 2] = 0.0;
        }
        let want = reference_int8((&gu.0, &gu.1), (&dn.0, &dn.1), &h, seq, inter, d);
        let split = d.min(50);
        let (a, b) = mat_mut(&mut h, seq, d).split_at_col_mut(split);
        mlp.apply(a, None, 1e-5, &mut scratch);
        mlp.apply(b, None, 1e-5, &mut scratch);
        let (worst, at) = h
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (g as f64 - w).abs() / (1.0 + w.abs()))
            .enumerate()
            .fold((0.0, 0), |m, (i, e)| if e > m.0 { (e, i) } else { m });
        eprintln!("int8 S {seq} inter {inter} D {d}: worst {worst:.1e}");
        // the first product's sums are exact on both sides; a gated
        // value quantizes to a neighbouring level where f32 and
        // float64 fall on either side of a boundary (a step of 1/127
        // of its column's largest, moving an output by about 3e-5);
        // measured 5e-9 to 2.4e-7
        assert!(
            worst < 2e-4,
            "int8 S {seq} inter {inter} D {d}: error {worst:e} at {at}"
        );
    }
}

#[test]
fn matches_float64_on_the_rounded_inputs() {
    let Some(amx) = Amx::detect() else {
        eprintln!("SKIPPED: this CPU (or OS) has no AMX");
        return;
    };
    // S 13 (one row tile), 97 (seven: three pairs and one of a row),
    // 33 (a pair of 16 and 1 after one); inter not a multiple of a step;
    // 70 columns split 50 + 20: partial blocks
    for (seq, inter, d) in [(13, 10, 70), (97, 512, 64), (33, 40, 130), (1, 1, 3)] {
        let gu = bf16(&values(2 * inter * seq, 3));
        let dn = bf16(&values(seq * inter, 5));
        let mlp = AmxTokenMlp::bf16(amx, &gu, &dn, seq, inter);
        let mut scratch = mlp.scratch();
        for with_injection in [false, true] {
            let mut h = values(seq * d, 11);
            let inj = values(seq * d, 13);
            // the sum in f32, as the kernel adds it
            let t: Vec<f64> = h
                .iter()
                .zip(&inj)
                .map(|(&h, &i)| f64::from(if with_injection { h + i } else { h }))
                .collect();
            let want = reference(&gu, &dn, &t, seq, inter, d);
            let split = d.min(50);
            let (a, b) = mat_mut(&mut h, seq, d).split_at_col_mut(split);
            let injection = with_injection.then_some((&inj[..], d));
            mlp.apply(a, injection, 1e-5, &mut scratch);
            let injection = with_injection.then(|| (&inj[split..], d));
            mlp.apply(b, injection, 1e-5, &mut scratch);
            let (worst, at) = h
                .iter()
                .zip(&want)
                .map(|(&g, &w)| (g as f64 - w).abs() / (1.0 + w.abs()))
                .enumerate()
                .fold((0.0, 0), |m, (i, e)| if e > m.0 { (e, i) } else { m });
            eprintln!("bf16 S {seq} inter {inter} D {d}: worst {worst:.1e}");
            // the inputs are rounded the same on both sides; a gated
            // value, from f32 sums in the kernel and float64 ones
            // here, can round to neighbouring bf16 values (1 in 2^8
            // apart), which moves the outputs it reaches by up to about
            // 1e-3; a wrong layout or padding moves them by O(1)
            assert!(
                worst < 2e-3,
                "S {seq} inter {inter} D {d} injection {with_injection}: error {worst:e} at {at}"
            );
        }
    }
}
