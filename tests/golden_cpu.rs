//! The CPU engine against the authors' PyTorch outputs (`tests/data/golden`,
//! described in its README), every ACT step.

mod common;

use std::sync::Arc;

use common::{Case, assert_close, load_case, load_case_from, shared_dir};
use trm_wgpu::{Carry, CpuEngine, Engine, SolveOptions, SolveOutput};

/// Contractive cases: float32 implementations agree to about 1e-6.
const CONTRACTIVE_REL_L2: f64 = 1e-5;
/// Chaotic and full-size cases, one ACT step from a stored state.
const ONE_STEP_REL_L2: f64 = 1e-4;

fn check_step(case: &Case, out: &SolveOutput, step: usize, rel: f64, abs: f64) {
    let name = |t: &str| format!("{t}.step{step}");
    assert_close(
        &name("logits"),
        &out.logits,
        case.tensor(&name("logits")),
        rel,
        abs,
    );
    assert_close(
        &name("q_halt_logits"),
        &out.q_halt_logits,
        case.tensor(&name("q_halt_logits")),
        rel,
        abs,
    );
    assert_close(
        &name("q_continue_logits"),
        &out.q_continue_logits,
        case.tensor(&name("q_continue_logits")),
        rel,
        abs,
    );
}

/// Runs the case one ACT step at a time from the start, checking every step
/// and the final carry; with `whole_solve_too`, also checks that one call of
/// all the steps gives exactly the same.
fn run_contractive(name: &str, whole_solve_too: bool) {
    let case = load_case(name);
    let mut engine = CpuEngine::new(Arc::new(case.model.clone())).unwrap();
    let one = SolveOptions::default().act_steps(1);
    let mut carry: Option<Carry> = None;
    let mut last = None;
    for step in 1..=case.steps {
        let out = engine
            .solve_from(&case.batch, carry.as_ref(), &one)
            .unwrap();
        check_step(&case, &out, step, CONTRACTIVE_REL_L2, 1e-4);
        carry = Some(out.carry());
        last = Some(out);
    }
    let last = last.unwrap();
    assert_close(
        "z_H",
        &last.z_h,
        case.tensor("z_H"),
        CONTRACTIVE_REL_L2,
        1e-4,
    );
    assert_close(
        "z_L",
        &last.z_l,
        case.tensor("z_L"),
        CONTRACTIVE_REL_L2,
        1e-4,
    );

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
    assert_close(
        "z_H",
        &out.z_h,
        case.tensor("z_H"),
        CONTRACTIVE_REL_L2,
        1e-4,
    );
    assert_close(
        "z_L",
        &out.z_l,
        case.tensor("z_L"),
        CONTRACTIVE_REL_L2,
        1e-4,
    );
}

/// Official-scale weights amplify rounding about 20x per step, so each step
/// starts from the stored carry of the step before.
#[test]
fn sudoku_mlp_chaotic_one_step_at_a_time() {
    let case = load_case("sudoku_mlp_chaotic");
    let mut engine = CpuEngine::new(Arc::new(case.model.clone())).unwrap();
    let one = SolveOptions::default().act_steps(1);
    for step in 1..=case.steps {
        let carry = (step > 1).then(|| Carry {
            z_h: case.tensor(&format!("z_H.step{}", step - 1)).to_vec(),
            z_l: case.tensor(&format!("z_L.step{}", step - 1)).to_vec(),
        });
        let out = engine
            .solve_from(&case.batch, carry.as_ref(), &one)
            .unwrap();
        check_step(&case, &out, step, ONE_STEP_REL_L2, 1e-2);
        assert_close(
            &format!("z_H.step{step}"),
            &out.z_h,
            case.tensor(&format!("z_H.step{step}")),
            ONE_STEP_REL_L2,
            1e-2,
        );
    }
}

/// The official Sudoku-Extreme size (D = 512, 5.03M parameters), read from
/// the shared folder (20 MB, kept out of git).
#[test]
fn sudoku_mlp_full_size() {
    let dir = shared_dir().join("golden/full");
    assert!(
        dir.exists(),
        "{} is missing: set TRM_SHARED_DIR to the project's shared folder",
        dir.display()
    );
    let case = load_case_from(&dir, "sudoku_mlp_full");
    assert_eq!(case.model.config().hidden_size, 512);
    let mut engine = CpuEngine::new(Arc::new(case.model.clone())).unwrap();
    let out = engine.solve(&case.batch, &SolveOptions::default()).unwrap();
    check_step(&case, &out, 1, ONE_STEP_REL_L2, 1e-2);
    assert_close("z_H", &out.z_h, case.tensor("z_H"), ONE_STEP_REL_L2, 1e-2);
    assert_close("z_L", &out.z_l, case.tensor("z_L"), ONE_STEP_REL_L2, 1e-2);
}
