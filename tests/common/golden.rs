//! Golden cases (the authors' PyTorch outputs) stepped through any engine,
//! CPU or GPU: the checks of one ACT step, of the final carry, and the two
//! ways of walking a case (from the engine's own carry, or from the stored
//! carry of the step before).

use super::{Case, assert_close, data_dir, load_case_from, one_act_step_at_a_time};
use trm_wgpu::{Carry, Engine, SolveOptions, SolveOutput};

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

/// The final carry (z_H, z_L) against the golden case's.
pub fn check_carry(case: &Case, out: &SolveOutput, rel: f64, abs: f64) {
    assert_close("z_H", &out.z_h, case.tensor("z_H"), rel, abs);
    assert_close("z_L", &out.z_l, case.tensor("z_L"), rel, abs);
}

/// Runs the case one ACT step at a time from the engine's own carry,
/// checking every step (and its carry, where the case stores it) and the
/// final carry; returns the last step's output. For contractive weights,
/// where errors do not grow from step to step.
pub fn step_by_step(engine: &mut impl Engine, case: &Case, rel: f64, abs: f64) -> SolveOutput {
    let last = one_act_step_at_a_time(engine, &case.batch, case.steps, |step, out| {
        check_step(case, out, step, rel, abs);
        for (key, actual) in [("z_H", &out.z_h), ("z_L", &out.z_l)] {
            let key = format!("{key}.step{step}");
            if let Some(expected) = case.tensors.get(&key) {
                assert_close(&key, actual, expected, rel, abs);
            }
        }
    });
    check_carry(case, &last, rel, abs);
    last
}

/// Runs each ACT step of the case from the stored carry of the step before
/// (the initial carry for step 1), checking the step and its carry's
/// `states` ("z_H", "z_L"). For chaotic weights, which amplify rounding from
/// step to step.
pub fn from_stored_carries(
    engine: &mut impl Engine,
    case: &Case,
    rel: f64,
    abs: f64,
    states: &[&str],
) {
    let one = SolveOptions::default().act_steps(1);
    for step in 1..=case.steps {
        let carry = (step > 1).then(|| Carry {
            z_h: case.tensor(&format!("z_H.step{}", step - 1)).to_vec(),
            z_l: case.tensor(&format!("z_L.step{}", step - 1)).to_vec(),
        });
        let out = engine
            .solve_from(&case.batch, carry.as_ref(), &one)
            .unwrap();
        check_step(case, &out, step, rel, abs);
        for &t in states {
            let key = format!("{t}.step{step}");
            let actual = match t {
                "z_H" => &out.z_h,
                "z_L" => &out.z_l,
                other => panic!("no state {other}"),
            };
            assert_close(&key, actual, case.tensor(&key), rel, abs);
        }
    }
}

/// The official Sudoku-Extreme size (D = 512), from `tests/data/golden/full`
/// (20 MB: in git, but left out of the published crate).
pub fn full_size_case() -> Case {
    let dir = data_dir().join("golden/full");
    let case = load_case_from(&dir, "sudoku_mlp_full");
    assert_eq!(case.model.config().hidden_size, 512);
    case
}
