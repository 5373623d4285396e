//! The GPU engine on the MLP-mixer TRM, against the authors' PyTorch outputs
//! (golden cases), the CPU engine (random configurations with odd sizes,
//! early halting) and its own unsplit runs (batch splitting); and its
//! counters: one dispatch per recursion step, nothing read back beyond the
//! outputs.
//!
//! Every GPU engine here fills its device buffers with NaN before each solve
//! (`GpuSchedule::poison`), so an element no kernel writes fails. The GPU
//! tests fail when no adapter exists, unless `TRM_SKIP_GPU=1`.

mod common;

use std::sync::Arc;

use common::gpu_checks::{
    MAX_ABS, ONE_STEP_MAX_ABS, ONE_STEP_REL_L2, REL_L2, check_step, compare, halting_model,
    random_batch,
};
use common::{assert_close, gpu, load_case};
use trm_wgpu::{
    Carry, CpuEngine, Engine, GpuContext, GpuEngine, GpuOptions, GpuSchedule, PuzzleBatch,
    SolveOptions, TrmConfig, TrmModel,
};

/// The Sudoku shapes at D = 64 (S = 97: two row tiles, a tail of 33),
/// contractive weights. Steps 1 and 2 (two ACT steps in one solve); all 16
/// are in `sudoku_mlp_small_all_16_steps` (ignored: a minute on lavapipe).
#[test]
fn sudoku_mlp_small_first_steps() {
    let case = load_case("sudoku_mlp_small");
    let Some(mut engine) = gpu::engine(&case.model) else {
        return;
    };
    let first = engine
        .solve(&case.batch, &SolveOptions::default().act_steps(1))
        .unwrap();
    check_step(&case, &first, 1, REL_L2, MAX_ABS);
    let second = engine
        .solve(&case.batch, &SolveOptions::default().act_steps(2))
        .unwrap();
    check_step(&case, &second, 2, REL_L2, MAX_ABS);
    assert!(second.steps.iter().all(|&s| s == 2));
}

#[test]
#[ignore = "the whole official evaluation length: about a minute on lavapipe"]
fn sudoku_mlp_small_all_16_steps() {
    let case = load_case("sudoku_mlp_small");
    let Some(mut engine) = gpu::engine(&case.model) else {
        return;
    };
    let one = SolveOptions::default().act_steps(1);
    let mut carry: Option<Carry> = None;
    let mut last = None;
    for step in 1..=case.steps {
        let out = engine
            .solve_from(&case.batch, carry.as_ref(), &one)
            .unwrap();
        check_step(&case, &out, step, REL_L2, MAX_ABS);
        carry = Some(out.carry());
        last = Some(out);
    }
    let last = last.unwrap();
    assert_close("z_H", &last.z_h, case.tensor("z_H"), REL_L2, MAX_ABS);
    assert_close("z_L", &last.z_l, case.tensor("z_L"), REL_L2, MAX_ABS);
    let whole = engine.solve(&case.batch, &SolveOptions::default()).unwrap();
    check_step(&case, &whole, 16, REL_L2, MAX_ABS);
    assert_close("16 steps in one solve", &whole.z_h, &last.z_h, 1e-6, 1e-5);
}

/// The official Sudoku-Extreme size (D = 512, TI = 512, CI = 1536: many
/// tiles in every direction), one ACT step, from the shared folder.
#[test]
#[ignore = "51 GFLOP: about a minute on lavapipe"]
fn sudoku_mlp_full_size() {
    let dir = common::shared_dir().join("golden/full");
    assert!(
        dir.exists(),
        "{} is missing: set TRM_SHARED_DIR to the project's shared folder",
        dir.display()
    );
    let case = common::load_case_from(&dir, "sudoku_mlp_full");
    assert_eq!(case.model.config().hidden_size, 512);
    let Some(mut engine) = gpu::engine(&case.model) else {
        return;
    };
    let out = engine.solve(&case.batch, &SolveOptions::default()).unwrap();
    check_step(&case, &out, 1, ONE_STEP_REL_L2, ONE_STEP_MAX_ABS);
    assert_close(
        "z_H",
        &out.z_h,
        case.tensor("z_H"),
        ONE_STEP_REL_L2,
        ONE_STEP_MAX_ABS,
    );
    assert_close(
        "z_L",
        &out.z_l,
        case.tensor("z_L"),
        ONE_STEP_REL_L2,
        ONE_STEP_MAX_ABS,
    );
}

/// Official-scale weights: each ACT step from the stored carry of the step
/// before, as the CPU engine is checked.
#[test]
fn sudoku_mlp_chaotic_one_step_at_a_time() {
    let case = load_case("sudoku_mlp_chaotic");
    let Some(mut engine) = gpu::engine(&case.model) else {
        return;
    };
    let one = SolveOptions::default().act_steps(1);
    for step in 1..=case.steps {
        let carry = (step > 1).then(|| Carry {
            z_h: case.tensor(&format!("z_H.step{}", step - 1)).to_vec(),
            z_l: case.tensor(&format!("z_L.step{}", step - 1)).to_vec(),
        });
        let out = engine
            .solve_from(&case.batch, carry.as_ref(), &one)
            .unwrap();
        check_step(&case, &out, step, ONE_STEP_REL_L2, ONE_STEP_MAX_ABS);
        for t in ["z_H", "z_L"] {
            let key = format!("{t}.step{step}");
            let actual = if t == "z_H" { &out.z_h } else { &out.z_l };
            assert_close(
                &key,
                actual,
                case.tensor(&key),
                ONE_STEP_REL_L2,
                ONE_STEP_MAX_ABS,
            );
        }
    }
}

/// P = 0, three layers, expansion 3, S = 25, D = 32, B = 5: the whole solve
/// (3 ACT steps) in one call; also the float64 reference against the same
/// golden values, which validates the reference the CLI test uses.
#[test]
fn mlp_no_puzzle_emb_whole_solve() {
    let case = load_case("mlp_no_puzzle_emb");
    let reference = common::f64_reference::solve(&case.model, &case.batch, case.steps, false);
    let key = format!("logits.step{}", case.steps);
    assert_close(
        "f64 reference",
        &reference.logits,
        case.tensor(&key),
        REL_L2,
        MAX_ABS,
    );
    let Some(mut engine) = gpu::engine(&case.model) else {
        return;
    };
    let out = engine.solve(&case.batch, &SolveOptions::default()).unwrap();
    assert!(out.steps.iter().all(|&s| s as usize == case.steps));
    check_step(&case, &out, case.steps, REL_L2, MAX_ABS);
    assert_close("z_H", &out.z_h, case.tensor("z_H"), REL_L2, MAX_ABS);
    assert_close("z_L", &out.z_l, case.tensor("z_L"), REL_L2, MAX_ABS);
    assert_close(
        "GPU vs f64",
        &out.logits,
        &reference.logits,
        REL_L2,
        MAX_ABS,
    );
}

/// A random MLP-mixer configuration.
struct Random {
    seed: u64,
    seq_len: usize,
    hidden: usize,
    layers: usize,
    batch: usize,
    expansion: f64,
    h_cycles: usize,
    l_cycles: usize,
    puzzle_emb_ndim: usize,
    puzzle_ids: usize,
    learned_positions: bool,
    act_steps: usize,
}

impl Random {
    fn config(&self) -> TrmConfig {
        TrmConfig::from_json(
            &serde_json::json!({
                "seq_len": self.seq_len,
                "vocab_size": 7,
                "num_puzzle_identifiers": self.puzzle_ids,
                "hidden_size": self.hidden,
                "expansion": self.expansion,
                "H_cycles": self.h_cycles,
                "L_cycles": self.l_cycles,
                "L_layers": self.layers,
                "halt_max_steps": self.act_steps,
                "mlp_t": true,
                "pos_encodings": if self.learned_positions { "learned" } else { "none" },
                "puzzle_emb_ndim": self.puzzle_emb_ndim,
                "puzzle_emb_len": 0,
            })
            .to_string(),
        )
        .unwrap()
    }

    fn model(&self) -> TrmModel {
        TrmModel::random(self.config(), self.seed, 0.5).unwrap()
    }

    fn batch(&self, config: &TrmConfig) -> PuzzleBatch {
        random_batch(config, self.batch, self.seed)
    }

    fn label(&self) -> String {
        format!("seed {} config {}", self.seed, self.config().to_json())
    }
}

/// Odd sizes: S and D not multiples of 4, 8 or 16, below and above a tile;
/// 1 to 3 layers; batches of 1 to 5; P = 0 and P > 0; learned positions.
fn random_configs() -> Vec<Random> {
    vec![
        Random {
            seed: 11,
            seq_len: 13,
            hidden: 18,
            layers: 1,
            batch: 1,
            expansion: 4.0,
            h_cycles: 1,
            l_cycles: 2,
            puzzle_emb_ndim: 0,
            puzzle_ids: 1,
            learned_positions: false,
            act_steps: 2,
        },
        Random {
            seed: 23,
            seq_len: 20,
            hidden: 30,
            layers: 2,
            batch: 3,
            expansion: 2.5,
            h_cycles: 2,
            l_cycles: 1,
            // P = ceil(50 / 30) = 2, S = 22
            puzzle_emb_ndim: 50,
            puzzle_ids: 4,
            learned_positions: false,
            act_steps: 1,
        },
        Random {
            seed: 5,
            seq_len: 7,
            hidden: 5,
            layers: 3,
            batch: 5,
            expansion: 1.0,
            h_cycles: 1,
            l_cycles: 1,
            puzzle_emb_ndim: 0,
            puzzle_ids: 1,
            learned_positions: false,
            act_steps: 2,
        },
        Random {
            seed: 77,
            seq_len: 34,
            hidden: 66,
            layers: 2,
            batch: 2,
            expansion: 4.0,
            h_cycles: 1,
            l_cycles: 1,
            // P = 3, S = 37; D = 66 spans two column tiles
            puzzle_emb_ndim: 140,
            puzzle_ids: 3,
            learned_positions: true,
            act_steps: 1,
        },
    ]
}

#[test]
fn random_configurations_match_the_cpu_engine() {
    for random in random_configs() {
        let label = random.label();
        eprintln!("{label}");
        let model = random.model();
        let config = model.config().clone();
        let batch = random.batch(&config);
        let options = SolveOptions::default();
        let mut cpu = CpuEngine::new(Arc::new(model.clone())).unwrap();
        let want = cpu.solve(&batch, &options).unwrap();
        let Some(mut engine) = gpu::engine(&model) else {
            return;
        };
        let got = engine.solve(&batch, &options).unwrap();
        compare(&label, &got, &want);
        // and from a carry: one more step from the state reached
        let carry = want.carry();
        let one = SolveOptions::default().act_steps(1);
        let want = cpu.solve_from(&batch, Some(&carry), &one).unwrap();
        let got = engine.solve_from(&batch, Some(&carry), &one).unwrap();
        compare(&format!("{label}, from a carry"), &got, &want);
    }
}

/// No read-back beyond the outputs, one dispatch per recursion step plus
/// the embedding and the heads, one submission.
#[test]
fn counters_show_one_dispatch_per_recursion_step() {
    let random = &random_configs()[0];
    let model = random.model();
    let config = model.config().clone();
    let Some(mut engine) = gpu::engine(&model) else {
        return;
    };
    let puzzles = 3;
    let batch = random_batch(&config, puzzles, 1);
    let act_steps = 3;
    engine
        .solve(&batch, &SolveOptions::default().act_steps(act_steps))
        .unwrap();
    let stats = engine.last_stats().clone();
    eprintln!("{}", serde_json::to_string(&stats).unwrap());
    let per_act = (config.h_cycles * (config.l_cycles + 1)) as u64;
    let b = puzzles as u64;
    let outputs = b
        * (config.seq_len * config.vocab_size + 2 + 2 * config.state_len() * config.hidden_size)
            as u64
        * 4;
    assert_eq!(stats.recursion_steps, act_steps as u64 * per_act);
    assert_eq!(stats.puzzle_recursion_steps, b * stats.recursion_steps);
    assert_eq!(stats.dispatches, stats.recursion_steps + 2);
    assert_eq!(stats.submits, 1);
    assert_eq!(stats.bytes_read_back, outputs);
    assert_eq!(stats.chunks, 1);

    // a watchdog budget below one dispatch: a submission after every
    // recursion step, the same outputs, still no waiting in between
    let whole = engine
        .solve(&batch, &SolveOptions::default().act_steps(act_steps))
        .unwrap();
    engine.set_schedule(GpuSchedule::default().poison(true).max_flops_per_submit(1));
    let split = engine
        .solve(&batch, &SolveOptions::default().act_steps(act_steps))
        .unwrap();
    assert_eq!(split, whole);
    let stats = engine.last_stats();
    assert_eq!(stats.submits, stats.recursion_steps + 1);
    assert_eq!(stats.dispatches, stats.recursion_steps + 2);
    assert_eq!(stats.bytes_read_back, outputs);
}

/// A batch split into chunks (by the schedule, and by a device whose buffer
/// limit cannot hold the whole batch) gives exactly the unsplit outputs.
#[test]
fn split_batches_equal_the_unsplit_batch() {
    // S = 13, D = 18, one layer: 105 KB of layer weights, 18 KB of
    // scratch per puzzle
    let random = &random_configs()[0];
    let model = random.model();
    let config = model.config().clone();
    let batch = random_batch(&config, 12, 3);
    let options = SolveOptions::default().act_steps(1);
    let Some(mut whole) = gpu::engine(&model) else {
        return;
    };
    let unsplit = whole.solve(&batch, &options).unwrap();
    assert_eq!(whole.last_stats().chunks, 1);

    let mut by_schedule = gpu::engine(&model)
        .unwrap()
        .with_schedule(GpuSchedule::default().poison(true).max_chunk_puzzles(5));
    let split = by_schedule.solve(&batch, &options).unwrap();
    assert_eq!(by_schedule.last_stats().chunks, 3);
    assert_eq!(split, unsplit, "split by the schedule (5 + 5 + 2)");

    // A device that allows 128 KiB per buffer: the layer weights fit, the
    // scratch of 12 puzzles does not.
    let options = GpuOptions::default()
        .with_env()
        .unwrap()
        .max_buffer_bytes(128 << 10);
    let small = GpuContext::new(&options).unwrap();
    let mut limited = GpuEngine::new(&small, Arc::new(model.clone()))
        .unwrap()
        .with_schedule(GpuSchedule::default().poison(true));
    let capacity = limited.chunk_capacity().unwrap();
    assert!(capacity < 12, "capacity {capacity}");
    let split = limited
        .solve(&batch, &SolveOptions::default().act_steps(1))
        .unwrap();
    assert!(limited.last_stats().chunks >= 2);
    assert_eq!(
        split, unsplit,
        "split by the device limit ({capacity} a chunk)"
    );
}

/// Early halting: the same puzzles halt at the same steps as on the CPU,
/// each keeping the outputs of its halting step; halted puzzles cost no
/// more dispatch work and only the q logits are read per ACT step.
#[test]
fn early_halting_matches_the_cpu_engine() {
    let config = TrmConfig::from_json(
        r#"{"seq_len": 11, "vocab_size": 6, "hidden_size": 14, "expansion": 2,
            "H_cycles": 1, "L_cycles": 1, "L_layers": 1, "halt_max_steps": 5,
            "mlp_t": true, "pos_encodings": "none"}"#,
    )
    .unwrap();
    let steps = config.halt_max_steps;
    let base = TrmModel::random(config.clone(), 2024, 0.9).unwrap();
    let batch = random_batch(&config, 5, 9);
    let (model, expected_steps) = halting_model(&base, &batch, steps);
    eprintln!("halting steps {expected_steps:?}");
    let options = SolveOptions::default().early_halt(true);
    let mut cpu = CpuEngine::new(Arc::new(model.clone())).unwrap();
    let want = cpu.solve(&batch, &options).unwrap();
    assert_eq!(want.steps, expected_steps);
    let Some(mut engine) = gpu::engine(&model) else {
        return;
    };
    let got = engine.solve(&batch, &options).unwrap();
    compare("early halting", &got, &want);

    let stats = engine.last_stats().clone();
    eprintln!("{}", serde_json::to_string(&stats).unwrap());
    let per_act = (config.h_cycles * (config.l_cycles + 1)) as u64;
    let most = *expected_steps.iter().max().unwrap() as u64;
    let total: u64 = expected_steps.iter().map(|&s| u64::from(s)).sum();
    assert_eq!(stats.recursion_steps, most * per_act);
    assert_eq!(stats.puzzle_recursion_steps, total * per_act);
    // per ACT step: its recursion steps and the heads; plus the embedding
    assert_eq!(stats.dispatches, most * (per_act + 1) + 1);
    let b = batch.len() as u64;
    let outputs = b
        * (config.seq_len * config.vocab_size + 2 + 2 * config.state_len() * config.hidden_size)
            as u64
        * 4;
    // the q logits after every ACT step but the last, then the outputs
    assert_eq!(stats.bytes_read_back, (most - 1) * b * 2 * 4 + outputs);
}
