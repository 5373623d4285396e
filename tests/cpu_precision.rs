//! The CPU engine at every weight precision: with f32 activations it
//! computes the network on the dequantized weights (within 1e-5 relative L2
//! of float64); with matched activations (int8 weights: per-token int8
//! activations on integer products; bf16 weights on a CPU with AMX: bf16
//! activations on AMX tiles) it stays within the bounds stated below, on
//! every kernel the CPU has, and the integer vector kernels (AVX-512 VNNI,
//! AVX-VNNI, AVX2) and the portable one agree bit for bit. Kernels the CPU
//! lacks are skipped, and the test says so on stderr. (The accuracy bars on the trained
//! sudoku-easy model, in every mode: `tests/precision_accuracy.rs`.)
//!
//! Seeds come from the clock and are printed; set `TRM_TEST_SEED` to replay.

mod common;

use std::sync::Arc;

use common::{assert_close, assert_close_floor, diff, f64_reference, random_batch_from};
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::{
    ActivationPrecision, CpuEngine, CpuOptions, Engine, Int8Kernel, KernelChoice, PosEncodings,
    Precision, PuzzleBatch, SolveOptions, SolveOutput, TrmConfig, TrmModel,
};

/// Agreement demanded of f32 activations with float64 on the same
/// dequantized weights.
const REL_L2: f64 = 1e-5;
const MAX_ABS: f64 = 1e-4;

/// The stated bound of matched int8 activations: relative L2 of the logits
/// and of the final states against float64 on the same dequantized
/// weights, after two ACT steps of these small random models. Rounding an
/// activation to 255 levels of its token's largest moves each product by
/// about 0.3-1% relative (the largest of a row sits at 3-4 standard
/// deviations); measured over these models, 1e-3 to 2.3e-3 after two ACT
/// steps. On AMX the token mixer's products are int8 too, their inputs
/// quantized per column of 7 to 39 positions here: 2.3e-3 to 5.3e-3 over
/// 14 runs (42 models).
const MATCHED_INT8_REL_L2: f64 = 1e-2;

/// The stated bound of matched bf16 activations (AMX): relative L2 of the
/// logits and of the final states against float64 on the same bf16
/// weights after two ACT steps of these small random models, and the
/// largest error of any element. Rounding an activation to bf16 moves it
/// by at most 2^-9 relative, independently from element to element, so a
/// product moves by about 2^-9 / sqrt(3) relative or less. Measured over
/// 66 such models (22 runs): relative L2 5.1e-4 to 9.8e-4, largest error
/// 1.7e-3 to 3.5e-3 (values of order 1).
const MATCHED_BF16_REL_L2: f64 = 4e-3;
const MATCHED_BF16_MAX_ABS: f64 = 2e-2;

/// A small random configuration with odd sizes (the int8 panels pad inputs
/// to a multiple of four and outputs to whole panels).
fn random_config(rng: &mut SplitMix64, mlp_t: bool) -> TrmConfig {
    let pick =
        |rng: &mut SplitMix64, options: &[usize]| options[rng.below(options.len() as u64) as usize];
    let num_heads = pick(rng, &[1, 2, 4]);
    let head_dim = pick(rng, &[4, 6, 10]);
    let hidden_size = if mlp_t {
        pick(rng, &[13, 18, 30, 67])
    } else {
        num_heads * head_dim
    };
    let config = TrmConfig {
        seq_len: pick(rng, &[7, 11, 23]),
        vocab_size: pick(rng, &[5, 12]),
        num_puzzle_identifiers: pick(rng, &[1, 3]),
        hidden_size,
        expansion: [2.0, 2.5, 4.0][rng.below(3) as usize],
        num_heads,
        h_cycles: pick(rng, &[1, 2]),
        l_cycles: pick(rng, &[1, 2]),
        l_layers: pick(rng, &[1, 2]),
        halt_max_steps: 2,
        mlp_t,
        pos_encodings: if mlp_t {
            PosEncodings::None
        } else {
            PosEncodings::Rope
        },
        puzzle_emb_ndim: hidden_size + 3,
        puzzle_emb_len: 0,
        h_layers: 0,
        ..TrmConfig::sudoku_extreme()
    };
    config
        .validate()
        .unwrap_or_else(|e| panic!("{config:?}: {e}"));
    config
}

fn engine(
    model: &Arc<TrmModel>,
    activations: ActivationPrecision,
    kernels: KernelChoice,
) -> CpuEngine {
    let options = CpuOptions::default()
        .threads(2)
        .activations(activations)
        .kernels(kernels);
    CpuEngine::with_options(Arc::clone(model), options).unwrap()
}

/// Every kernel choice this CPU runs; the others are named on stderr.
fn available_kernels() -> Vec<KernelChoice> {
    let all = [
        KernelChoice::Amx,
        KernelChoice::Avx512Vnni,
        KernelChoice::AvxVnni,
        KernelChoice::Avx2,
        KernelChoice::Portable,
    ];
    let (ok, skipped): (Vec<_>, Vec<_>) = all.into_iter().partition(|k| {
        CpuEngine::with_options(
            Arc::new(tiny_int8_model()),
            CpuOptions::default().kernels(*k),
        )
        .is_ok()
    });
    if !skipped.is_empty() {
        eprintln!("SKIPPED (this CPU lacks them): {skipped:?}");
    }
    ok
}

fn tiny_int8_model() -> TrmModel {
    let config = random_config(&mut SplitMix64::new(1), true);
    TrmModel::random(config, 1, 0.5)
        .unwrap()
        .to_precision(Precision::Int8)
        .unwrap()
}

fn solve(engine: &mut CpuEngine, batch: &PuzzleBatch) -> SolveOutput {
    engine.solve(batch, &SolveOptions::default()).unwrap()
}

/// f32 activations at every precision: float64 on the dequantized weights
/// within 1e-5; matched activations at f16, and at bf16 without AMX (forced
/// here with the portable choice), are the same path.
fn check_exact(mlp_t: bool) {
    let mut rng = SplitMix64::new(common::test_seed());
    let config = random_config(&mut rng, mlp_t);
    eprintln!("{config:?}");
    let base = TrmModel::random(config.clone(), rng.next_u64(), 0.5).unwrap();
    let puzzles = 1 + rng.below(4) as usize;
    let batch = random_batch_from(&mut rng, &config, puzzles);
    for precision in [Precision::F16, Precision::Bf16, Precision::Int8] {
        let model = Arc::new(base.to_precision(precision).unwrap());
        let reference = f64_reference::solve(&model, &batch, 2, false);
        let mut modes = vec![ActivationPrecision::F32];
        if precision != Precision::Int8 {
            modes.push(ActivationPrecision::Matched);
        }
        for activations in modes {
            let mut e = engine(&model, activations, KernelChoice::Portable);
            assert_eq!(e.int8_kernel(), None, "{precision} {activations}");
            assert_eq!(e.kernel_family(), "f32", "{precision} {activations}");
            let out = solve(&mut e, &batch);
            let what = |name: &str| format!("{precision} {activations}: {name}");
            assert_close(
                &what("logits"),
                &out.logits,
                &reference.logits,
                REL_L2,
                MAX_ABS,
            );
            assert_close_floor(
                &what("q_halt_logits"),
                &out.q_halt_logits,
                &reference.q_halt_logits,
                REL_L2,
                MAX_ABS,
                1.0,
            );
            assert_close(&what("z_H"), &out.z_h, &reference.z_h, REL_L2, MAX_ABS);
            assert_close(&what("z_L"), &out.z_l, &reference.z_l, REL_L2, MAX_ABS);
        }
    }
}

/// Matched activations at int8: within [`MATCHED_INT8_REL_L2`] of float64
/// on the dequantized weights on every kernel this CPU has; the vector and
/// portable kernels (AVX-512 VNNI, AVX-VNNI, AVX2, portable), which run
/// the same channel products with the same token mixer (f32), bit for bit.
/// AMX also runs the token mixer's products in int8, so it is held to the
/// bound only (its channel products equal the others' bit for bit:
/// `int8_panels.rs`'s test).
fn check_matched_int8(mlp_t: bool) {
    let kernels = available_kernels();
    let mut rng = SplitMix64::new(common::test_seed());
    for _ in 0..3 {
        let config = random_config(&mut rng, mlp_t);
        eprintln!("{config:?}");
        let base = TrmModel::random(config.clone(), rng.next_u64(), 0.5).unwrap();
        let model = Arc::new(base.to_precision(Precision::Int8).unwrap());
        let puzzles = 1 + rng.below(4) as usize;
        let batch = random_batch_from(&mut rng, &config, puzzles);
        let reference = f64_reference::solve(&model, &batch, 2, false);

        let auto = engine(&model, ActivationPrecision::Matched, KernelChoice::Auto);
        assert_eq!(auto.int8_kernel(), Some(Int8Kernel::detect()));
        let mut portable: Option<SolveOutput> = None;
        for &kernels in kernels.iter().rev() {
            let mut e = engine(&model, ActivationPrecision::Matched, kernels);
            let family = e.kernel_family();
            assert_eq!(family, e.int8_kernel().unwrap().as_str());
            assert_eq!(
                family.replace("-int8", ""),
                kernels.as_str(),
                "{kernels} forced"
            );
            let out = solve(&mut e, &batch);
            for (name, got, want) in [
                ("logits", &out.logits, &reference.logits),
                ("z_H", &out.z_h, &reference.z_h),
                ("z_L", &out.z_l, &reference.z_l),
            ] {
                let d = diff(got, want);
                eprintln!("matched int8 on {family}: {name} rel L2 {:.2e}", d.rel_l2);
                assert!(
                    d.rel_l2 <= MATCHED_INT8_REL_L2,
                    "matched int8 on {family}: {name} rel L2 {:e} beyond {MATCHED_INT8_REL_L2:e} \
                     (worst at {}: {} vs {})",
                    d.rel_l2,
                    d.worst,
                    got[d.worst],
                    want[d.worst]
                );
            }
            if kernels == KernelChoice::Amx {
                continue;
            }
            match &portable {
                None => portable = Some(out),
                Some(p) => assert!(
                    p.logits == out.logits && p.z_h == out.z_h && p.z_l == out.z_l,
                    "the {family} kernel differs from the portable one"
                ),
            }
        }
    }
}

/// Matched activations at bf16 on AMX: within [`MATCHED_BF16_REL_L2`] and
/// [`MATCHED_BF16_MAX_ABS`] of float64 on the same bf16 weights. Skipped
/// (and said so) where the CPU or the OS has no AMX.
fn check_matched_bf16(mlp_t: bool) {
    if !available_kernels().contains(&KernelChoice::Amx) {
        eprintln!("SKIPPED: this CPU (or OS) has no AMX; bf16 activations need it");
        return;
    }
    let mut rng = SplitMix64::new(common::test_seed());
    let mut worst = (0f64, 0f64);
    for _ in 0..3 {
        let config = random_config(&mut rng, mlp_t);
        eprintln!("{config:?}");
        let base = TrmModel::random(config.clone(), rng.next_u64(), 0.5).unwrap();
        let model = Arc::new(base.to_precision(Precision::Bf16).unwrap());
        let puzzles = 1 + rng.below(4) as usize;
        let batch = random_batch_from(&mut rng, &config, puzzles);
        let reference = f64_reference::solve(&model, &batch, 2, false);

        let mut amx = engine(&model, ActivationPrecision::Matched, KernelChoice::Auto);
        assert_eq!(amx.kernel_family(), "amx-bf16");
        let out = solve(&mut amx, &batch);
        for (name, got, want) in [
            ("logits", &out.logits, &reference.logits),
            ("z_H", &out.z_h, &reference.z_h),
            ("z_L", &out.z_l, &reference.z_l),
        ] {
            let d = diff(got, want);
            eprintln!(
                "matched bf16 {name}: rel L2 {:.2e}, max {:.2e} at {} ({} vs {})",
                d.rel_l2, d.max_abs, d.worst, got[d.worst], want[d.worst]
            );
            worst = (worst.0.max(d.rel_l2), worst.1.max(d.max_abs));
            assert!(
                d.rel_l2 <= MATCHED_BF16_REL_L2 && d.max_abs <= MATCHED_BF16_MAX_ABS,
                "matched bf16 {name}: rel L2 {:e}, max {:e} beyond {MATCHED_BF16_REL_L2:e}, \
                 {MATCHED_BF16_MAX_ABS:e} (worst at {}: {} vs {})",
                d.rel_l2,
                d.max_abs,
                d.worst,
                got[d.worst],
                want[d.worst]
            );
        }
    }
    eprintln!(
        "matched bf16: worst rel L2 {:.2e}, worst max {:.2e}",
        worst.0, worst.1
    );
}

#[test]
fn mlp_mixer_f32_activations_match_float64_at_every_precision() {
    check_exact(true);
}

#[test]
fn attention_f32_activations_match_float64_at_every_precision() {
    check_exact(false);
}

#[test]
fn mlp_mixer_matched_int8_within_its_bound_and_portable_equal() {
    check_matched_int8(true);
}

#[test]
fn attention_matched_int8_within_its_bound_and_portable_equal() {
    check_matched_int8(false);
}

#[test]
fn mlp_mixer_matched_bf16_on_amx_within_its_bound() {
    check_matched_bf16(true);
}

#[test]
fn attention_matched_bf16_on_amx_within_its_bound() {
    check_matched_bf16(false);
}

#[test]
fn activations_parse_and_default_to_f32() {
    assert_eq!(ActivationPrecision::default(), ActivationPrecision::F32);
    assert_eq!(
        "matched".parse::<ActivationPrecision>().unwrap(),
        ActivationPrecision::Matched
    );
    assert_eq!(
        "f32".parse::<ActivationPrecision>().unwrap(),
        ActivationPrecision::F32
    );
    assert!("bf16".parse::<ActivationPrecision>().is_err());
}
