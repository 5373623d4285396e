use super::*;
use crate::cpu::test_values::values;
use crate::weights::quantize_row as quantize_weights;

/// `w` quantized by rows: (bytes, scales, dequantized values).
fn int8_weights(w: &[f32], inputs: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut scales = Vec::new();
    let mut dequantized = Vec::new();
    for row in w.chunks_exact(inputs) {
        let (s, q) = quantize_weights(row);
        bytes.extend(q.iter().map(|&v| v as u8));
        dequantized.extend(q.iter().map(|&v| f32::from(v) * s));
        scales.push(s);
    }
    (bytes, scales, dequantized)
}

/// Every kernel this CPU runs, the portable one first; says which it
/// cannot.
fn kernels() -> Vec<Int8Kernel> {
    let all = [
        Int8Kernel::Portable,
        Int8Kernel::Avx2,
        Int8Kernel::AvxVnni,
        Int8Kernel::Vnni512,
        Int8Kernel::Amx,
    ];
    let (k, skipped): (Vec<_>, Vec<_>) = all.into_iter().partition(|k| k.available());
    if !skipped.is_empty() {
        eprintln!("SKIPPED kernels this CPU lacks: {skipped:?}");
    }
    k
}

#[test]
fn products_match_float64_on_the_quantized_values_and_kernels_agree_bit_for_bit() {
    // odd inputs (padding of the groups), outputs not a multiple of a
    // panel, rows covering every tile height
    for (outputs, inputs) in [(37, 19), (64, 40), (5, 3), (40, 1203), (130, 64)] {
        let w = values(2 * outputs * inputs, 11);
        let (q, scales, wd) = int8_weights(&w, inputs);
        for rows in (1..=14).chain([16, 17, 31, 32, 33, 97]) {
            let a = values(rows * inputs, rows as u32 + 3);
            let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
            for kernel in kernels() {
                let plain = Int8Panels::plain(&q, &scales, outputs, inputs, kernel);
                let swiglu = Int8Panels::swiglu(&q, &scales, outputs, inputs, kernel);
                let mut bytes = vec![0; rows * plain.row_bytes()];
                let mut row_scales = vec![0.0; rows];
                let qa = plain.quantize(&a, &mut bytes, &mut row_scales);
                // the activations as the kernel saw them
                let ad: Vec<f64> = (0..rows * inputs)
                    .map(|i| {
                        let (r, k) = (i / inputs, i % inputs);
                        (f64::from(qa.bytes[r * plain.row_bytes() + k]) - 128.0)
                            * f64::from(qa.scales[r])
                    })
                    .collect();
                let dot = |r: usize, o: usize| -> f64 {
                    (0..inputs)
                        .map(|k| ad[r * inputs + k] * f64::from(wd[o * inputs + k]))
                        .sum()
                };
                let mut out_plain = vec![f32::NAN; rows * outputs];
                plain.apply(&qa, &mut out_plain);
                let mut out_swiglu = vec![f32::NAN; rows * outputs];
                swiglu.apply(&qa, &mut out_swiglu);
                for i in 0..rows * outputs {
                    let (r, o) = (i / outputs, i % outputs);
                    let want = dot(r, o);
                    let got = f64::from(out_plain[i]);
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{kernel:?} plain {rows}x{outputs}x{inputs} at {i}: {got} vs {want}"
                    );
                    let g = dot(r, o);
                    let want = g / (1.0 + (-g).exp()) * dot(r, outputs + o);
                    let got = f64::from(out_swiglu[i]);
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{kernel:?} swiglu {rows}x{outputs}x{inputs} at {i}: {got} vs {want}"
                    );
                }
                match &first {
                    None => first = Some((out_plain, out_swiglu)),
                    Some((p, s)) => {
                        assert!(p == &out_plain && s == &out_swiglu, "{kernel:?} differs");
                    }
                }
            }
        }
    }
}

#[test]
fn quantization_rounds_to_nearest_and_keeps_zero_rows() {
    let a = [0.0, 1.0, -0.5, 0.25, 0.0, 0.0, 0.0];
    let mut bytes = [0u8; 16];
    let mut scales = [0.0f32; 2];
    for kernel in kernels() {
        quantize_rows(kernel, &a[..4], 4, &mut bytes[..4], &mut scales[..1]);
        assert_eq!(scales[0], 1.0 / 127.0);
        // 0, 127, -63.5 -> -64 (ties to even), 31.75 -> 32
        assert_eq!(&bytes[..4], &[128, 255, 64, 160]);
        quantize_rows(kernel, &a[4..], 3, &mut bytes[..4], &mut scales[..1]);
        assert_eq!((scales[0], &bytes[..4]), (0.0, &[128u8, 128, 128, 128][..]));
    }
}
