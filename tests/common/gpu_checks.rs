//! Checks shared by the GPU engine tests of both variants: golden steps,
//! GPU against CPU outputs, random batches, a model that halts early at
//! chosen steps.

use std::sync::Arc;

use super::{Case, assert_close, assert_close_floor};
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::{
    CpuEngine, Engine, LoadOptions, PuzzleBatch, SolveOptions, SolveOutput, Tensor, TrmConfig,
    TrmModel,
};

/// Contractive weights: float32 implementations agree to about 1e-6.
pub const REL_L2: f64 = 1e-5;
/// Largest error allowed on any element (logits and states are O(1)).
pub const MAX_ABS: f64 = 1e-4;
/// Chaotic weights, one ACT step from a stored state (as the CPU test).
pub const ONE_STEP_REL_L2: f64 = 1e-4;
pub const ONE_STEP_MAX_ABS: f64 = 1e-2;

/// The logits and q logits of ACT step `step` against the golden case.
pub fn check_step(case: &Case, out: &SolveOutput, step: usize, rel: f64, abs: f64) {
    for name in ["logits", "q_halt_logits", "q_continue_logits"] {
        let key = format!("{name}.step{step}");
        let actual = match name {
            "logits" => &out.logits,
            "q_halt_logits" => &out.q_halt_logits,
            _ => &out.q_continue_logits,
        };
        assert_close(&key, actual, case.tensor(&key), rel, abs);
    }
}

/// Every output of `gpu` against `cpu`, the label naming the configuration.
pub fn compare(label: &str, gpu: &SolveOutput, cpu: &SolveOutput) {
    assert_eq!(gpu.steps, cpu.steps, "{label}: ACT steps per puzzle");
    assert_close(
        &format!("{label} logits"),
        &gpu.logits,
        &cpu.logits,
        REL_L2,
        MAX_ABS,
    );
    // two values that may sit near 0 by chance: relative to the O(1) scale
    assert_close_floor(
        &format!("{label} q_halt"),
        &gpu.q_halt_logits,
        &cpu.q_halt_logits,
        REL_L2,
        MAX_ABS,
        1.0,
    );
    assert_close_floor(
        &format!("{label} q_continue"),
        &gpu.q_continue_logits,
        &cpu.q_continue_logits,
        REL_L2,
        MAX_ABS,
        1.0,
    );
    assert_close(&format!("{label} z_H"), &gpu.z_h, &cpu.z_h, REL_L2, MAX_ABS);
    assert_close(&format!("{label} z_L"), &gpu.z_l, &cpu.z_l, REL_L2, MAX_ABS);
}

/// `puzzles` random puzzles (tokens and puzzle ids) from `seed`.
pub fn random_batch(config: &TrmConfig, puzzles: usize, seed: u64) -> PuzzleBatch {
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    let tokens: Vec<i64> = (0..puzzles * config.seq_len)
        .map(|_| rng.below(config.vocab_size as u64) as i64)
        .collect();
    let ids: Vec<i64> = (0..puzzles)
        .map(|_| rng.below(config.num_puzzle_identifiers as u64) as i64)
        .collect();
    PuzzleBatch::new(config, &tokens, Some(&ids)).unwrap()
}

/// A model whose q_head bias makes q_halt cross 0 at different ACT steps
/// for different puzzles, with a margin: picked from the CPU engine's q_halt
/// trajectories.
pub fn halting_model(base: &TrmModel, batch: &PuzzleBatch, steps: usize) -> (TrmModel, Vec<u32>) {
    let mut cpu = CpuEngine::new(Arc::new(base.clone())).unwrap();
    let one = SolveOptions::default().act_steps(1);
    let mut carry = None;
    let mut q = vec![]; // q[step][puzzle], without the bias
    let bias = base.weights().q_head_bias[0];
    for _ in 0..steps {
        let out = cpu.solve_from(batch, carry.as_ref(), &one).unwrap();
        q.push(
            out.q_halt_logits
                .iter()
                .map(|v| v - bias)
                .collect::<Vec<f32>>(),
        );
        carry = Some(out.carry());
    }
    let halting_steps = |b: f32| -> Vec<u32> {
        (0..batch.len())
            .map(|p| {
                (0..steps)
                    .find(|&k| q[k][p] + b > 0.0)
                    .map_or(steps as u32, |k| k as u32 + 1)
            })
            .collect()
    };
    let margin = |b: f32| -> f32 {
        q.iter()
            .flatten()
            .map(|v| (v + b).abs())
            .fold(f32::INFINITY, f32::min)
    };
    let mut values: Vec<f32> = q.iter().flatten().copied().collect();
    values.sort_by(f32::total_cmp);
    let mut best: Option<(usize, f32, f32)> = None;
    for pair in values.windows(2) {
        let b = -(pair[0] + pair[1]) / 2.0;
        let mut distinct = halting_steps(b);
        distinct.sort();
        distinct.dedup();
        let score = (distinct.len(), margin(b));
        if best.is_none_or(|(n, m, _)| (score.0, score.1) > (n, m)) {
            best = Some((score.0, score.1, b));
        }
    }
    let (distinct, margin, b) = best.unwrap();
    assert!(
        distinct >= 3 && margin > 1e-3,
        "no bias separates the halting steps well enough ({distinct} distinct, margin {margin})"
    );
    let tensors = base.named_tensors().into_iter().map(|(name, t)| {
        if name == "inner.q_head.bias" {
            let data = vec![b, t.data[1]];
            (name, Tensor::new(t.shape, data).unwrap())
        } else {
            (name, t)
        }
    });
    let model =
        TrmModel::from_tensors(base.config().clone(), tensors, &LoadOptions::default()).unwrap();
    (model, halting_steps(b))
}
