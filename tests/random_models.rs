//! Fresh random models of every variant, which no other test has seen,
//! against the independent float64 implementation (`common/f64_reference.rs`):
//! through the library and through `trm run`.
//!
//! Seeds come from the clock and are printed; set `TRM_TEST_SEED` to replay.

mod common;

use std::sync::Arc;

use common::{
    assert_close, assert_close_floor, f64_reference, one_act_step_at_a_time, random_batch_from,
};
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::{Arch, CpuEngine, Engine, PosEncodings, SolveOptions, TrmConfig, TrmModel};

/// Agreement demanded with the float64 implementation.
const REL_L2: f64 = 1e-5;
/// Max-abs bound: logits and states are O(1)..O(10) here.
const MAX_ABS: f64 = 1e-4;
/// The two q logits of a puzzle can sit near zero by chance; their error is
/// measured relative to unit scale at least.
const Q_FLOOR: f64 = 1.0;

/// A small random configuration of the given variant, with odd sizes.
fn random_config(
    rng: &mut SplitMix64,
    mlp_t: bool,
    pos: PosEncodings,
    puzzle_emb: bool,
) -> TrmConfig {
    let pick =
        |rng: &mut SplitMix64, options: &[usize]| options[rng.below(options.len() as u64) as usize];
    let num_heads = pick(rng, &[1, 2, 4]);
    let head_dim = pick(rng, &[4, 6, 10]);
    let hidden_size = if mlp_t {
        pick(rng, &[13, 18, 30])
    } else {
        num_heads * head_dim
    };
    let puzzle_emb_ndim = if puzzle_emb {
        pick(rng, &[hidden_size / 2 + 1, hidden_size + 3])
    } else {
        0
    };
    let config = TrmConfig {
        seq_len: pick(rng, &[7, 11, 23]),
        vocab_size: pick(rng, &[5, 12]),
        num_puzzle_identifiers: pick(rng, &[1, 3]),
        hidden_size,
        expansion: [2.0, 2.5, 4.0][rng.below(3) as usize],
        num_heads,
        h_cycles: pick(rng, &[1, 2]),
        l_cycles: pick(rng, &[1, 2, 3]),
        l_layers: pick(rng, &[1, 2, 3]),
        h_layers: 0,
        arch: Default::default(),
        halt_max_steps: 2,
        mlp_t,
        pos_encodings: pos,
        puzzle_emb_ndim,
        // 0 means ceil(ndim / D); sometimes ask for one more position
        puzzle_emb_len: if puzzle_emb && rng.below(2) == 0 {
            puzzle_emb_ndim.div_ceil(hidden_size) + 1
        } else {
            0
        },
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
    };
    config
        .validate()
        .unwrap_or_else(|e| panic!("{config:?}: {e}"));
    config
}

/// A small random HRM configuration: [`random_config`]'s sizes, 1 to 4
/// blocks per level with H_layers != L_layers, the puzzle embedding in
/// ceil(ndim / D) positions (HRM has no other placement).
fn random_hrm_config(
    rng: &mut SplitMix64,
    mlp_t: bool,
    pos: PosEncodings,
    puzzle_emb: bool,
) -> TrmConfig {
    let l_layers = 1 + rng.below(4) as usize;
    let h_layers = 1 + (l_layers + rng.below(3) as usize) % 4; // never l_layers
    let config = TrmConfig {
        arch: Arch::Hrm,
        l_layers,
        h_layers,
        puzzle_emb_len: 0,
        ..random_config(rng, mlp_t, pos, puzzle_emb)
    };
    assert_ne!(config.h_layers, config.l_layers);
    config
        .validate()
        .unwrap_or_else(|e| panic!("{config:?}: {e}"));
    config
}

/// Every variant: the CPU engine matches float64 on logits, q logits and the
/// final carry.
fn check_variant(mlp_t: bool, pos: PosEncodings, puzzle_emb: bool) {
    let seed = common::test_seed();
    let mut rng = SplitMix64::new(seed);
    check_config(random_config(&mut rng, mlp_t, pos, puzzle_emb), &mut rng);
}

/// A fresh random HRM model of the variant against float64.
fn check_hrm_variant(mlp_t: bool, pos: PosEncodings, puzzle_emb: bool) {
    let seed = common::test_seed();
    let mut rng = SplitMix64::new(seed);
    check_config(
        random_hrm_config(&mut rng, mlp_t, pos, puzzle_emb),
        &mut rng,
    );
}

/// A random model of `config`: the CPU engine against float64.
fn check_config(config: TrmConfig, rng: &mut SplitMix64) {
    eprintln!("{config:?}");
    let model = TrmModel::random(config.clone(), rng.next_u64(), 0.5).unwrap();
    let batch_size = 1 + rng.below(4) as usize;
    let batch = random_batch_from(rng, &config, batch_size);
    let reference = f64_reference::solve(&model, &batch, 2, false);
    let mut engine = CpuEngine::new(Arc::new(model)).unwrap();
    let out = engine.solve(&batch, &SolveOptions::default()).unwrap();
    assert_close("logits", &out.logits, &reference.logits, REL_L2, MAX_ABS);
    assert_close_floor(
        "q_halt_logits",
        &out.q_halt_logits,
        &reference.q_halt_logits,
        REL_L2,
        MAX_ABS,
        Q_FLOOR,
    );
    assert_close_floor(
        "q_continue_logits",
        &out.q_continue_logits,
        &reference.q_continue_logits,
        REL_L2,
        MAX_ABS,
        Q_FLOOR,
    );
    assert_close("z_H", &out.z_h, &reference.z_h, REL_L2, MAX_ABS);
    assert_close("z_L", &out.z_l, &reference.z_l, REL_L2, MAX_ABS);
    assert_eq!(out.steps, reference.steps);
}

#[test]
fn mlp_mixer_with_puzzle_embedding() {
    check_variant(true, PosEncodings::None, true);
}

#[test]
fn mlp_mixer_without_puzzle_embedding() {
    check_variant(true, PosEncodings::None, false);
}

#[test]
fn mlp_mixer_with_learned_positions() {
    check_variant(true, PosEncodings::Learned, true);
}

#[test]
fn attention_rope() {
    check_variant(false, PosEncodings::Rope, true);
}

#[test]
fn attention_rope_without_puzzle_embedding() {
    check_variant(false, PosEncodings::Rope, false);
}

#[test]
fn attention_learned() {
    check_variant(false, PosEncodings::Learned, true);
}

#[test]
fn attention_no_positions() {
    check_variant(false, PosEncodings::None, false);
}

#[test]
fn hrm_attention_rope() {
    check_hrm_variant(false, PosEncodings::Rope, true);
}

#[test]
fn hrm_attention_learned() {
    check_hrm_variant(false, PosEncodings::Learned, true);
}

#[test]
fn hrm_attention_rope_without_puzzle_embedding() {
    check_hrm_variant(false, PosEncodings::Rope, false);
}

/// The TRM repository's HRM takes `mlp_t` token mixing too.
#[test]
fn hrm_mlp_mixer() {
    check_hrm_variant(true, PosEncodings::None, true);
}

/// Early halting: each puzzle stops after the first ACT step whose
/// q_halt > 0, with that step's outputs. The q_head bias is set from the
/// q_halt trajectories so that puzzles halt at different steps.
#[test]
fn early_halting_matches_float64() {
    let seed = common::test_seed();
    let mut rng = SplitMix64::new(seed);
    let config = random_config(&mut rng, true, PosEncodings::None, true);
    early_halting(config, &mut rng);
}

/// HRM halts on q_halt > q_continue.
#[test]
fn hrm_early_halting_matches_float64() {
    let seed = common::test_seed();
    let mut rng = SplitMix64::new(seed);
    let config = random_hrm_config(&mut rng, false, PosEncodings::Rope, true);
    early_halting(config, &mut rng);
}

fn early_halting(mut config: TrmConfig, rng: &mut SplitMix64) {
    config.halt_max_steps = 4;
    let model = TrmModel::random(config.clone(), rng.next_u64(), 0.5).unwrap();
    let batch = random_batch_from(rng, &config, 6);
    // q_halt less its bar (TRM: 0, HRM: q_continue) of every puzzle after
    // every step, from the engine step by step
    let hrm = config.arch == Arch::Hrm;
    let mut engine = CpuEngine::new(Arc::new(model.clone())).unwrap();
    let mut trajectory = Vec::new();
    one_act_step_at_a_time(&mut engine, &batch, config.halt_max_steps, |_, out| {
        let over = out.q_halt_logits.iter().zip(&out.q_continue_logits);
        trajectory.push(
            over.map(|(h, c)| h - if hrm { *c } else { 0.0 })
                .collect::<Vec<f32>>(),
        )
    });
    // Shift the bias so that the median of step 2 sits at zero, nudged so
    // that no decision lies within rounding distance of zero.
    let mut step2 = trajectory[1].clone();
    step2.sort_by(f32::total_cmp);
    let mut shift = -(step2[2] + step2[3]) / 2.0;
    while trajectory
        .iter()
        .flatten()
        .any(|q| (q + shift).abs() < 1e-3)
    {
        shift += 2.5e-3;
    }
    let tensors = model.named_tensors().into_iter().map(|(name, mut t)| {
        if name == "inner.q_head.bias" {
            t.data[0] += shift;
        }
        (name, t)
    });
    let model = TrmModel::from_tensors(config.clone(), tensors, &Default::default()).unwrap();
    let reference = f64_reference::solve(&model, &batch, config.halt_max_steps, true);
    let mut engine = CpuEngine::new(Arc::new(model)).unwrap();
    let out = engine
        .solve(&batch, &SolveOptions::default().early_halt(true))
        .unwrap();
    eprintln!(
        "steps: engine {:?}, float64 {:?}",
        out.steps, reference.steps
    );
    assert_eq!(out.steps, reference.steps);
    assert!(
        out.steps.iter().any(|&s| s < config.halt_max_steps as u32),
        "no puzzle halted early: {:?}",
        out.steps
    );
    assert_close("logits", &out.logits, &reference.logits, REL_L2, MAX_ABS);
    assert_close_floor(
        "q_halt_logits",
        &out.q_halt_logits,
        &reference.q_halt_logits,
        REL_L2,
        MAX_ABS,
        Q_FLOOR,
    );
    assert_close("z_H", &out.z_h, &reference.z_h, REL_L2, MAX_ABS);
}

/// `CpuEngine::recursion_step` and `recursion_steps`, called in the ACT
/// pattern of TRM.md, give exactly what a one-step solve gives.
#[test]
fn recursion_steps_compose_into_an_act_step() {
    let seed = common::test_seed();
    let mut rng = SplitMix64::new(seed);
    let mlp_t = rng.below(2) == 0;
    let config = random_config(&mut rng, mlp_t, PosEncodings::None, true);
    let model = Arc::new(TrmModel::random(config.clone(), rng.next_u64(), 0.5).unwrap());
    let batch = random_batch_from(&mut rng, &config, 3);
    let mut engine = CpuEngine::new(model.clone()).unwrap();
    let out = engine
        .solve(&batch, &SolveOptions::default().act_steps(1))
        .unwrap();
    let x = engine.embed(&batch).unwrap();
    let w = model.weights();
    let carry = trm_wgpu::Carry::initial(&w.h_init, &w.l_init, 3, config.state_len());
    let (mut y, mut z) = (carry.z_h, carry.z_l);
    for _ in 0..config.h_cycles {
        let injection: Vec<f32> = y.iter().zip(&x).map(|(a, b)| a + b).collect();
        engine
            .recursion_steps(&mut z, &injection, config.l_cycles)
            .unwrap();
        engine.recursion_step(&mut y, &z.clone()).unwrap();
    }
    assert_eq!(y, out.z_h);
    assert_eq!(z, out.z_l);
    // three steps in one call are three calls of one step
    let (mut one_at_a_time, mut three) = (z.clone(), z.clone());
    for _ in 0..3 {
        engine.recursion_step(&mut one_at_a_time, &y).unwrap();
    }
    engine.recursion_steps(&mut three, &y, 3).unwrap();
    assert_ne!(three, z);
    assert_eq!(three, one_at_a_time);
    assert!(engine.recursion_step(&mut y[..5], &z[..5]).is_err());
    assert!(engine.recursion_steps(&mut y[..5], &z[..5], 2).is_err());
}

/// The engine's split of the work depends on the thread count (row and
/// column tasks, and with them the kernel's tile heights) and on the batch
/// (row tasks of at most 256 tokens): every split gives the float64 answer.
#[test]
fn every_thread_count_and_block_split_matches_float64() {
    let seed = common::test_seed();
    let mut rng = SplitMix64::new(seed);
    for (mlp_t, pos) in [(true, PosEncodings::None), (false, PosEncodings::Rope)] {
        // ~41 positions x 7 puzzles: more rows than one task takes, so even
        // one thread runs two row tasks
        let config = TrmConfig {
            seq_len: 37,
            ..random_config(&mut rng, mlp_t, pos, true)
        };
        let puzzles = 7;
        assert!(puzzles * config.state_len() > 256, "{config:?}");
        let model = Arc::new(TrmModel::random(config.clone(), rng.next_u64(), 0.5).unwrap());
        let batch = random_batch_from(&mut rng, &config, puzzles);
        let reference = f64_reference::solve(&model, &batch, 2, false);
        for threads in [1, 3, 7] {
            let mut engine = CpuEngine::with_threads(model.clone(), threads).unwrap();
            let out = engine.solve(&batch, &SolveOptions::default()).unwrap();
            let what = |name: &str| format!("{name} ({threads} threads, mlp_t {mlp_t})");
            assert_close(
                &what("logits"),
                &out.logits,
                &reference.logits,
                REL_L2,
                MAX_ABS,
            );
            assert_close(&what("z_H"), &out.z_h, &reference.z_h, REL_L2, MAX_ABS);
            assert_close(&what("z_L"), &out.z_l, &reference.z_l, REL_L2, MAX_ABS);
            assert_close_floor(
                &what("q_halt_logits"),
                &out.q_halt_logits,
                &reference.q_halt_logits,
                REL_L2,
                MAX_ABS,
                Q_FLOOR,
            );
        }
    }
}
