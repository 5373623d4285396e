//! The CPU engine against the authors' PyTorch outputs (`tests/data/golden`,
//! described in its README), every ACT step.

mod common;

use std::sync::Arc;

use common::golden::{check_carry, check_step, from_stored_carries, full_size_case, step_by_step};
use common::load_case;
use trm_wgpu::{CpuEngine, Engine, SolveOptions};

/// Contractive cases: float32 implementations agree to about 1e-6.
const CONTRACTIVE_REL_L2: f64 = 1e-5;
/// Chaotic and full-size cases, one ACT step from a stored state.
const ONE_STEP_REL_L2: f64 = 1e-4;
/// The worst element there is 1.1e-4 (O(1) values): one far off fails.
const ONE_STEP_MAX_ABS: f64 = 1e-3;

/// Runs the case one ACT step at a time from the start, checking every step
/// and the final carry; with `whole_solve_too`, also checks that one call of
/// all the steps gives exactly the same.
fn run_contractive(name: &str, whole_solve_too: bool) {
    let case = load_case(name);
    let mut engine = CpuEngine::new(Arc::new(case.model.clone())).unwrap();
    let last = step_by_step(&mut engine, &case, CONTRACTIVE_REL_L2, 1e-4);

    if !whole_solve_too {
        return;
    }
    // A whole solve in one call gives the same as step by step.
    let whole = engine
        .solve(&case.batch, &SolveOptions::default().act_steps(case.steps))
        .unwrap();
    assert_eq!(whole.logits, last.logits);
    assert_eq!(whole.z_h, last.z_h);
    assert!(whole.steps.iter().all(|&s| s as usize == case.steps));
}

#[test]
fn sudoku_mlp_small_all_16_steps() {
    // default_solve_runs_halt_max_steps checks the whole solve of this case
    run_contractive("sudoku_mlp_small", false);
}

#[test]
fn maze_att_rope() {
    run_contractive("maze_att_rope", true);
}

#[test]
fn arc_att_learned() {
    run_contractive("arc_att_learned", true);
}

#[test]
fn mlp_no_puzzle_emb() {
    run_contractive("mlp_no_puzzle_emb", true);
}

#[test]
fn default_solve_runs_halt_max_steps() {
    let case = load_case("sudoku_mlp_small");
    assert_eq!(case.model.config().halt_max_steps, 16);
    let mut engine = CpuEngine::new(Arc::new(case.model.clone())).unwrap();
    let out = engine.solve(&case.batch, &SolveOptions::default()).unwrap();
    assert!(out.steps.iter().all(|&s| s == 16));
    check_step(&case, &out, 16, CONTRACTIVE_REL_L2, 1e-4);
    check_carry(&case, &out, CONTRACTIVE_REL_L2, 1e-4);
}

/// Official-scale weights amplify rounding about 20x per step, so each step
/// starts from the stored carry of the step before.
#[test]
fn sudoku_mlp_chaotic_one_step_at_a_time() {
    let case = load_case("sudoku_mlp_chaotic");
    let mut engine = CpuEngine::new(Arc::new(case.model.clone())).unwrap();
    from_stored_carries(
        &mut engine,
        &case,
        ONE_STEP_REL_L2,
        ONE_STEP_MAX_ABS,
        &["z_H"],
    );
}

/// The official Sudoku-Extreme size (D = 512, 5.03M parameters), read from
/// `tests/data/golden/full` (20 MB, left out of the published crate).
#[test]
fn sudoku_mlp_full_size() {
    let case = full_size_case();
    let mut engine = CpuEngine::new(Arc::new(case.model.clone())).unwrap();
    let out = engine.solve(&case.batch, &SolveOptions::default()).unwrap();
    check_step(&case, &out, 1, ONE_STEP_REL_L2, ONE_STEP_MAX_ABS);
    check_carry(&case, &out, ONE_STEP_REL_L2, ONE_STEP_MAX_ABS);
}

/// HRM (`tests/data/golden/hrm`, the authors' HRM code): every ACT step's
/// logits, q logits and carry, and the whole solve in one call.
#[test]
fn hrm_sudoku_rope() {
    let case = load_case("hrm/hrm_sudoku_rope");
    assert_eq!(case.model.config().arch, trm_wgpu::Arch::Hrm);
    run_contractive("hrm/hrm_sudoku_rope", true);
}

#[test]
fn hrm_maze_learned_4x4() {
    run_contractive("hrm/hrm_maze_learned_4x4", true);
}
