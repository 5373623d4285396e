//! The trained sudoku-easy model (`data/sudoku-easy`, a small TRM-MLP, not
//! the paper's Sudoku-Extreme model) gives PyTorch's answers on its 100
//! sample puzzles at every ACT step, and the valid-solution rate of its
//! README.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{assert_close_floor, one_act_step_at_a_time};
use trm_wgpu::tasks::sudoku::Grid;
use trm_wgpu::{CpuEngine, PuzzleBatch, TrmModel};

fn data(file: &str) -> PathBuf {
    common::repo_dir().join("data/sudoku-easy").join(file)
}

/// Valid-solution rate per ACT step from `accuracy.json`.
fn readme_valid_rates() -> Vec<f64> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("accuracy.json")).unwrap()).unwrap();
    json["accuracy_per_act_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["valid"].as_f64().unwrap())
        .collect()
}

#[test]
fn cpu_answers_equal_pytorch_at_every_act_step() {
    let model = Arc::new(TrmModel::load(data("model.safetensors")).unwrap());
    let puzzles = Grid::parse_many(&std::fs::read_to_string(data("puzzles.txt")).unwrap()).unwrap();
    assert_eq!(puzzles.len(), 100);
    let reference = common::sudoku_easy_reference();
    let tokens: Vec<u32> = puzzles.iter().flat_map(|p| p.tokens()).collect();
    let ref_inputs: Vec<u32> = reference["inputs"].iter().map(|&t| t as u32).collect();
    assert_eq!(
        tokens, ref_inputs,
        "puzzles.txt encodes to PyTorch's inputs"
    );
    let batch = PuzzleBatch::new(model.config(), &tokens, None).unwrap();
    let rates = readme_valid_rates();

    let mut engine = CpuEngine::new(model).unwrap();
    one_act_step_at_a_time(&mut engine, &batch, 16, |step, out| {
        let expected: Vec<u32> = reference[&format!("answer.step{step}")]
            .iter()
            .map(|&t| t as u32)
            .collect();
        let answers = out.predictions();
        let wrong: Vec<usize> = (0..answers.len())
            .filter(|&i| answers[i] != expected[i])
            .collect();
        assert!(
            wrong.is_empty(),
            "step {step}: {} cells differ from PyTorch's answer, first at puzzle {}, cell {}",
            wrong.len(),
            wrong[0] / 81,
            wrong[0] % 81
        );
        assert_close_floor(
            &format!("q_halt_logits.step{step}"),
            &out.q_halt_logits,
            &reference[&format!("q_halt_logits.step{step}")],
            1e-5,
            1e-4,
            1.0,
        );
        let valid = (0..100)
            .filter(|&i| Grid::from_tokens(&out.puzzle_predictions(i)).solves(&puzzles[i]))
            .count();
        assert_eq!(
            valid as f64 / 100.0,
            rates[step - 1],
            "step {step}: valid-solution rate differs from the model's README"
        );
    });
}
