//! Reduced precisions keep the trained model's answers: on the 100 sample
//! puzzles of sudoku-easy after 16 ACT steps (and after 1), f16 and bf16
//! give the f32 answer on at least 99.9% of cells, and int8's valid-solution
//! rate is within one point of f32's, with f32 activations (the default)
//! and with matched ones (`ActivationPrecision::Matched`: bf16 products on
//! AMX where the CPU has it). On 300 fresh puzzles of 30-40 givens, bf16
//! with matched activations gives the f32 answer on at least 99.7% of cells
//! and within 3 as many valid solutions. The README's accuracy table (from
//! `cargo run --release --example precision`) has the figures these hold.

mod common;

use std::sync::Arc;

use trm_wgpu::rng::SplitMix64;
use trm_wgpu::tasks::sudoku::{Grid, generate};
use trm_wgpu::{
    ActivationPrecision, CpuEngine, CpuOptions, Engine, Precision, PuzzleBatch, SolveOptions,
    TrmModel,
};

/// Answers after 1 and 16 ACT steps (the second solve continues the first).
fn answers(
    model: &TrmModel,
    activations: ActivationPrecision,
    puzzles: &[Grid],
) -> (Vec<u32>, Vec<u32>) {
    let tokens: Vec<u32> = puzzles.iter().flat_map(|g| g.tokens()).collect();
    let batch = PuzzleBatch::new(model.config(), &tokens, None).unwrap();
    let options = CpuOptions::default().activations(activations);
    let mut engine = CpuEngine::with_options(Arc::new(model.clone()), options).unwrap();
    eprintln!(
        "{} {activations}: products on {}",
        model.precision(),
        engine.kernel_family()
    );
    let first = engine
        .solve(&batch, &SolveOptions::default().act_steps(1))
        .unwrap();
    let rest = engine
        .solve_from(
            &batch,
            Some(&first.carry()),
            &SolveOptions::default().act_steps(15).carry(false),
        )
        .unwrap();
    (first.predictions(), rest.predictions())
}

fn valid(puzzles: &[Grid], answers: &[u32]) -> usize {
    puzzles
        .iter()
        .zip(answers.chunks_exact(81))
        .filter(|(p, a)| Grid::from_tokens(a).solves(p))
        .count()
}

fn equal_cells(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

#[test]
fn reduced_precisions_keep_the_sample_answers() {
    let dir = common::repo_dir().join("data/sudoku-easy");
    let base = TrmModel::load(dir.join("model.safetensors")).unwrap();
    let text = std::fs::read_to_string(dir.join("puzzles.txt")).unwrap();
    let puzzles = Grid::parse_many(&text).unwrap();
    assert_eq!(puzzles.len(), 100);
    let (f32_1, f32_16) = answers(&base, ActivationPrecision::F32, &puzzles);
    let f32_valid = valid(&puzzles, &f32_16);
    eprintln!("f32: {f32_valid}/100 valid after 16 ACT steps");
    assert_eq!(f32_valid, 94);
    for precision in [Precision::F16, Precision::Bf16, Precision::Int8] {
        let model = base.to_precision(precision).unwrap();
        assert_eq!(model.precision(), precision);
        for activations in [ActivationPrecision::F32, ActivationPrecision::Matched] {
            let (after_1, after_16) = answers(&model, activations, &puzzles);
            let (same_1, same_16) = (
                equal_cells(&after_1, &f32_1),
                equal_cells(&after_16, &f32_16),
            );
            let v = valid(&puzzles, &after_16);
            eprintln!(
                "{precision}, {activations} activations: {v}/100 valid after 16 ACT steps; cells equal to f32: {:.2}% after 1, {:.2}% after 16",
                100.0 * same_1,
                100.0 * same_16
            );
            if precision == Precision::Int8 {
                assert!(
                    v.abs_diff(f32_valid) <= 1,
                    "int8, {activations}: {v} valid against f32's {f32_valid}"
                );
            } else {
                assert!(
                    same_1 >= 0.999 && same_16 >= 0.999,
                    "{precision}, {activations}: {same_1} and {same_16} of the cells"
                );
            }
        }
    }
}

#[test]
fn bf16_activations_keep_the_answers_of_fresh_puzzles() {
    let dir = common::repo_dir().join("data/sudoku-easy");
    let base = TrmModel::load(dir.join("model.safetensors")).unwrap();
    let mut rng = SplitMix64::new(31);
    let puzzles: Vec<Grid> = (0..300)
        .map(|_| {
            let givens = 30 + rng.below(11) as usize;
            generate(&mut rng, givens).0
        })
        .collect();
    let (f32_1, f32_16) = answers(&base, ActivationPrecision::F32, &puzzles);
    let f32_valid = valid(&puzzles, &f32_16);
    let bf16 = base.to_precision(Precision::Bf16).unwrap();
    let (after_1, after_16) = answers(&bf16, ActivationPrecision::Matched, &puzzles);
    let (same_1, same_16) = (
        equal_cells(&after_1, &f32_1),
        equal_cells(&after_16, &f32_16),
    );
    let v = valid(&puzzles, &after_16);
    eprintln!(
        "300 fresh puzzles (30-40 givens): f32 {f32_valid} valid, bf16 matched {v} valid after 16 ACT steps; cells equal to f32: {:.2}% after 1, {:.2}% after 16",
        100.0 * same_1,
        100.0 * same_16
    );
    assert!(
        same_1 >= 0.997 && same_16 >= 0.997,
        "bf16, matched: {same_1} and {same_16} of the cells"
    );
    assert!(
        v.abs_diff(f32_valid) <= 3,
        "bf16, matched: {v} valid against f32's {f32_valid}"
    );
}
