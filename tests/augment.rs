//! Test-time augmentation on the trained sudoku-easy model: K = 1 is the
//! plain solve bit for bit, 8 variants find far more valid solutions on
//! harder fresh puzzles than one solve, the GPU chooses what the CPU
//! chooses, and `trm run --augment` writes what the library returns.

mod common;

use std::sync::Arc;

use trm_wgpu::augment::{AugmentOptions, AugmentTask, Selection, solve_augmented, solve_variants};
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::tasks::sudoku::{Grid, generate};
use trm_wgpu::{CpuEngine, Engine, PuzzleBatch, SolveOptions, TrmModel};

fn model() -> Arc<TrmModel> {
    let path = common::repo_dir().join("data/sudoku-easy/model.safetensors");
    Arc::new(TrmModel::load(path).unwrap())
}

/// `count` fresh puzzles of 28-36 givens (harder than the model was
/// trained on), seeded.
fn hard_puzzles(count: usize, seed: u64) -> Vec<Grid> {
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|_| {
            let givens = 28 + rng.below(9) as usize;
            generate(&mut rng, givens).0
        })
        .collect()
}

fn batch(model: &TrmModel, puzzles: &[Grid]) -> PuzzleBatch {
    let tokens: Vec<u32> = puzzles.iter().flat_map(|p| p.tokens()).collect();
    PuzzleBatch::new(model.config(), &tokens, None).unwrap()
}

fn augment(variants: usize, select: Selection, seed: u64) -> AugmentOptions {
    AugmentOptions {
        task: AugmentTask::Sudoku,
        variants,
        select,
        seed,
    }
}

fn valid(puzzles: &[Grid], predictions: &[u32]) -> usize {
    puzzles
        .iter()
        .enumerate()
        .filter(|(i, p)| Grid::from_tokens(&predictions[i * 81..(i + 1) * 81]).solves(p))
        .count()
}

#[test]
fn generated_puzzles_have_their_givens_and_a_valid_solution() {
    let mut rng = SplitMix64::new(3);
    for givens in [0, 17, 30, 81] {
        let (puzzle, solution) = generate(&mut rng, givens);
        assert_eq!(puzzle.givens(), givens);
        assert!(solution.solves(&puzzle));
    }
}

#[test]
fn one_variant_is_the_plain_solve_bit_for_bit() {
    let model = model();
    let puzzles = hard_puzzles(5, common::test_seed());
    let batch = batch(&model, &puzzles);
    let mut engine = CpuEngine::with_threads(model.clone(), 2).unwrap();
    let options = SolveOptions::default().act_steps(3);
    let plain = engine.solve(&batch, &options).unwrap();
    let one = solve_augmented(
        &mut engine,
        &batch,
        &options,
        &augment(1, Selection::Vote, 9),
    )
    .unwrap();
    assert_eq!(one.output, plain);
    assert_eq!(one.predictions, plain.predictions());
    assert_eq!(one.selected, vec![0; 5]);
    assert_eq!(one.agreement, vec![1.0; 5]);
}

#[test]
fn eight_variants_solve_far_more_hard_puzzles() {
    let model = model();
    // a fixed set, so the bound below is a fact rather than a chance
    let seed = 2026;
    let puzzles = hard_puzzles(40, seed);
    let batch = batch(&model, &puzzles);
    let mut engine = CpuEngine::new(model.clone()).unwrap();
    let options = SolveOptions::default().carry(false);
    let plain = engine.solve(&batch, &options).unwrap();
    let base = valid(&puzzles, &plain.predictions());
    // 8 puzzles (64 variants) a solve
    let chunks: Vec<_> = puzzles
        .chunks(8)
        .enumerate()
        .map(|(c, chunk)| {
            let b = self::batch(&model, chunk);
            solve_variants(
                &mut engine,
                &b,
                &options,
                AugmentTask::Sudoku,
                8,
                seed + c as u64,
            )
            .unwrap()
        })
        .collect();
    for select in [Selection::QHalt, Selection::Vote, Selection::Verifier] {
        let mut out = chunks[0].select(select).unwrap();
        for chunk in &chunks[1..] {
            let more = chunk.select(select).unwrap();
            out.output.append(more.output).unwrap();
            out.predictions.extend(more.predictions);
            out.selected.extend(more.selected);
            out.agreement.extend(more.agreement);
        }
        let got = valid(&puzzles, &out.predictions);
        eprintln!("{select:?}: {got} valid of 40, plain {base}");
        // measured on 60 others (README): plain 42%, 8 variants 72-80%
        assert!(
            got as f64 >= 1.5 * base as f64 && got > base,
            "{select:?}: {got} valid against {base} plain"
        );
        for i in 0..40 {
            let a = out.agreement[i];
            assert!(a > 0.0 && a <= 1.0 && (0..8).contains(&out.selected[i]));
        }
        // the chosen logits are mapped back: their argmax is the answer
        assert_eq!(out.output.predictions(), out.predictions);
    }
}

#[test]
fn the_gpu_chooses_what_the_cpu_chooses() {
    let Some(mut gpu) = common::gpu::engine(&model()) else {
        return;
    };
    let model = model();
    let puzzles = hard_puzzles(3, 11);
    let batch = batch(&model, &puzzles);
    let mut cpu = CpuEngine::with_threads(model.clone(), 2).unwrap();
    let options = SolveOptions::default().act_steps(3).carry(false);
    let opts = augment(4, Selection::QHalt, 5);
    let c = solve_augmented(&mut cpu, &batch, &options, &opts).unwrap();
    let g = solve_augmented(&mut gpu, &batch, &options, &opts).unwrap();
    assert_eq!(g.predictions, c.predictions);
    assert_eq!(g.selected, c.selected);
    common::assert_close("logits", &g.output.logits, &c.output.logits, 1e-5, 1e-4);
}

#[test]
fn trm_run_augment_writes_the_choice() {
    let model = model();
    let dir = common::temp_dir("augment-cli");
    let puzzles = hard_puzzles(4, 21);
    let tokens: Vec<i32> = puzzles
        .iter()
        .flat_map(|p| p.tokens())
        .map(|t| t as i32)
        .collect();
    let input = dir.join("in.safetensors");
    std::fs::write(
        &input,
        common::safetensors_bytes(
            &[common::RawTensor::i32("inputs", vec![4, 81], &tokens)],
            None,
        ),
    )
    .unwrap();
    let output = dir.join("out.safetensors");
    let model_path = common::repo_dir().join("data/sudoku-easy/model.safetensors");
    let out = common::trm(&[
        "run",
        "--model",
        model_path.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--task",
        "sudoku",
        "--augment",
        "4",
        "--select",
        "verifier",
        "--seed",
        "3",
        "--steps",
        "4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&output).unwrap();
    let (shape, agreement) = common::read_output_f32(&bytes, "agreement");
    assert_eq!(shape, vec![4]);
    let mut engine = CpuEngine::new(model.clone()).unwrap();
    let expected = solve_augmented(
        &mut engine,
        &batch(&model, &puzzles),
        &SolveOptions::default().act_steps(4),
        &augment(4, Selection::Verifier, 3),
    )
    .unwrap();
    assert_eq!(agreement, expected.agreement);
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for name in ["selected", "predictions"] {
        assert_eq!(
            file.tensor(name).unwrap().dtype(),
            safetensors::Dtype::I32,
            "{name}"
        );
    }

    // refused: no variants, a verifier the task lacks, more maze variants than its group
    for (args, needle) in [
        (
            vec!["--task", "sudoku", "--augment", "0"],
            "at least 1 variant",
        ),
        (
            vec!["--task", "maze", "--augment", "2", "--select", "verifier"],
            "verifier",
        ),
        (vec!["--steps", "100000000"], "--steps 100000000"),
    ] {
        let mut all = vec![
            "run",
            "--model",
            model_path.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ];
        all.extend(args);
        common::assert_one_error_line(&common::trm(&all), needle);
    }
}
