//! The GPU engine on the MLP-mixer TRM, against the authors' PyTorch outputs
//! (golden cases), the CPU engine (random configurations with odd sizes,
//! early halting) and its own unsplit runs (batch splitting); and its
//! counters: one dispatch per recursion step, nothing read back beyond the
//! outputs.
//!
//! Every GPU engine here fills its device buffers with NaN before each solve
//! (`GpuRunOptions::poison`), so an element no kernel writes fails. The GPU
//! tests fail when no adapter exists, unless `TRM_SKIP_GPU=1`.

mod common;

use common::golden::{check_carry, check_step, from_stored_carries, full_size_case, step_by_step};
use common::gpu_checks::{
    self, MAX_ABS, ONE_STEP_MAX_ABS, ONE_STEP_REL_L2, REL_L2, RandomModel, matches_the_cpu_engine,
};
use common::{assert_close, gpu, load_case};
use std::sync::Arc;

use trm_wgpu::{
    Engine, GpuEngine, GpuRunOptions, GpuSchedule, PosEncodings, SolveOptions, TrmConfig,
};

/// The Sudoku shapes at D = 64 (S = 97: two row tiles, a tail of 33),
/// contractive weights. Steps 1 and 2 (two ACT steps in one solve); all 16
/// are in `sudoku_mlp_small_all_16_steps` (ignored: a minute on lavapipe).
#[test]
fn sudoku_mlp_small_first_steps() {
    let case = load_case("sudoku_mlp_small");
    let Some(engines) = gpu::engines(&case.model) else {
        return;
    };
    for (schedule, mut engine) in engines {
        eprintln!("schedule {schedule}");
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
}

#[test]
#[ignore = "the whole official evaluation length: about a minute on lavapipe"]
fn sudoku_mlp_small_all_16_steps() {
    let case = load_case("sudoku_mlp_small");
    let Some(mut engine) = gpu::engine(&case.model) else {
        return;
    };
    let last = step_by_step(&mut engine, &case, REL_L2, MAX_ABS);
    let whole = engine.solve(&case.batch, &SolveOptions::default()).unwrap();
    check_step(&case, &whole, 16, REL_L2, MAX_ABS);
    assert_close("16 steps in one solve", &whole.z_h, &last.z_h, 1e-6, 1e-5);
}

/// The official Sudoku-Extreme size (D = 512, TI = 512, CI = 1536: many
/// tiles in every direction), one ACT step, from `tests/data/golden/full`,
/// on both schedules (51 GFLOP each: about 15 s on lavapipe with 2 threads).
#[test]
fn sudoku_mlp_full_size() {
    let case = full_size_case();
    let Some(engines) = gpu::engines(&case.model) else {
        return;
    };
    for (schedule, mut engine) in engines {
        eprintln!("schedule {schedule}");
        let out = engine.solve(&case.batch, &SolveOptions::default()).unwrap();
        assert_eq!(engine.last_stats().schedule, schedule.as_str());
        check_step(&case, &out, 1, ONE_STEP_REL_L2, ONE_STEP_MAX_ABS);
        check_carry(&case, &out, ONE_STEP_REL_L2, ONE_STEP_MAX_ABS);
    }
}

/// The spread schedule fills a device at batch 1: at the official Sudoku
/// shape the median dispatch of a network call runs at least 64 workgroups
/// (one ACT step of one puzzle, timed as trm bench does: one network call).
#[test]
fn spread_schedule_fills_the_device_at_batch_1() {
    let case = full_size_case();
    let Some(context) = gpu::context() else {
        return;
    };
    let mut engine = gpu::engine_on(&context, &case.model).with_schedule(GpuSchedule::Auto);
    let one = case.batch.slice(0..1);
    engine.time_recursion_steps(&one, 1).unwrap();
    let stats = engine.last_stats();
    eprintln!("{}", serde_json::to_string(stats).unwrap());
    assert_eq!(stats.schedule, "spread", "auto at batch 1");
    assert_eq!(stats.dispatches_per_net_call, 1 + 6 * 2);
    assert!(
        stats.workgroups_per_dispatch.median >= 64,
        "{:?}",
        stats.workgroups_per_dispatch
    );
    assert!(stats.workgroups_per_dispatch.min >= 16);
}

/// Official-scale weights: each ACT step from the stored carry of the step
/// before, as the CPU engine is checked.
#[test]
fn sudoku_mlp_chaotic_one_step_at_a_time() {
    let case = load_case("sudoku_mlp_chaotic");
    let Some(engines) = gpu::engines(&case.model) else {
        return;
    };
    for (schedule, mut engine) in engines {
        eprintln!("schedule {schedule}");
        from_stored_carries(
            &mut engine,
            &case,
            ONE_STEP_REL_L2,
            ONE_STEP_MAX_ABS,
            &["z_H", "z_L"],
        );
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
    check_carry(&case, &out, REL_L2, MAX_ABS);
    assert_close(
        "GPU vs f64",
        &out.logits,
        &reference.logits,
        REL_L2,
        MAX_ABS,
    );
}

/// Odd sizes: S and D not multiples of 4, 8 or 16, below and above a tile;
/// 1 to 3 layers; batches of 1 to 5; P = 0 and P > 0; learned positions.
fn random_configs() -> Vec<RandomModel> {
    vec![
        RandomModel {
            seed: 11,
            seq_len: 13,
            hidden: 18,
            heads: None,
            layers: 1,
            batch: 1,
            expansion: 4.0,
            h_cycles: 1,
            l_cycles: 2,
            puzzle_emb_ndim: 0,
            puzzle_ids: 1,
            pos: PosEncodings::None,
            act_steps: 2,
        },
        RandomModel {
            seed: 23,
            seq_len: 20,
            hidden: 30,
            heads: None,
            layers: 2,
            batch: 3,
            expansion: 2.5,
            h_cycles: 2,
            l_cycles: 1,
            // P = ceil(50 / 30) = 2, S = 22
            puzzle_emb_ndim: 50,
            puzzle_ids: 4,
            pos: PosEncodings::None,
            act_steps: 1,
        },
        RandomModel {
            seed: 5,
            seq_len: 7,
            hidden: 5,
            heads: None,
            layers: 3,
            batch: 5,
            expansion: 1.0,
            h_cycles: 1,
            l_cycles: 1,
            puzzle_emb_ndim: 0,
            puzzle_ids: 1,
            pos: PosEncodings::None,
            act_steps: 2,
        },
        RandomModel {
            seed: 77,
            seq_len: 34,
            hidden: 66,
            heads: None,
            layers: 2,
            batch: 2,
            expansion: 4.0,
            h_cycles: 1,
            l_cycles: 1,
            // P = 3, S = 37; D = 66 spans two column tiles
            puzzle_emb_ndim: 140,
            puzzle_ids: 3,
            pos: PosEncodings::Learned,
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
        let batch = random.batch();
        if !matches_the_cpu_engine(&label, &model, &batch) {
            return;
        }
    }
}

/// No read-back beyond the outputs, one dispatch per recursion step plus
/// the embedding and the heads, one submission; and a watchdog budget below
/// one dispatch gives the same outputs with a submission per step.
#[test]
fn counters_show_one_dispatch_per_recursion_step() {
    gpu_checks::counters_show_one_dispatch_per_recursion_step(&random_configs()[0].model());
}

/// A batch split into chunks (by the schedule, and by a device whose buffer
/// limit cannot hold the whole batch) gives exactly the unsplit outputs.
#[test]
fn split_batches_equal_the_unsplit_batch() {
    // S = 13, D = 18, one layer: 105 KB of layer weights, 18 KB of
    // scratch per puzzle. 12 puzzles split by the schedule as 5 + 5 + 2; a
    // device that allows 128 KiB per buffer: the layer weights fit, the
    // scratch of 12 puzzles does not.
    gpu_checks::split_batches_equal_the_unsplit_batch(
        &random_configs()[0].model(),
        12,
        5,
        128 << 10,
    );
}

/// Early halting: the same puzzles halt at the same steps as on the CPU,
/// each keeping the outputs of its halting step, on both schedules, with
/// halting decided on the device and only a running count read per ACT
/// step (while the next one runs).
#[test]
fn early_halting_matches_the_cpu_engine() {
    let config = TrmConfig::from_json(
        r#"{"seq_len": 11, "vocab_size": 6, "hidden_size": 14, "expansion": 2,
            "H_cycles": 1, "L_cycles": 1, "L_layers": 1, "halt_max_steps": 5,
            "mlp_t": true, "pos_encodings": "none"}"#,
    )
    .unwrap();
    gpu_checks::early_halting_matches_the_cpu_engine(&config, 2024);
}

/// Engines on one shared device, solving at the same time from several
/// threads: wgpu runs a read-back's callback from whichever thread polls the
/// device, so each engine must wait for its own results rather than assume
/// its own poll delivered them. Every thread gets the CPU engine's answer.
/// (The window of that race is narrow: it showed as a rare failure of the
/// golden tests, which share one device, and this test does not catch it
/// every time; it does check concurrent solves end to end.) The engines
/// share one model's weights, uploaded once.
#[test]
fn engines_sharing_a_device_solve_concurrently() {
    let Some(context) = gpu::context() else {
        return;
    };
    let config = TrmConfig {
        seq_len: 9,
        vocab_size: 6,
        num_puzzle_identifiers: 2,
        hidden_size: 12,
        puzzle_emb_ndim: 12,
        h_cycles: 1,
        l_cycles: 1,
        l_layers: 1,
        halt_max_steps: 1,
        ..TrmConfig::sudoku_extreme()
    };
    let model = trm_wgpu::TrmModel::random(config.clone(), common::test_seed(), 0.5).unwrap();
    let batch = gpu_checks::random_batch(&config, 2, 3);
    let options = SolveOptions::default();
    let cpu = gpu_checks::cpu_solve(&model, &batch, &options);
    // every engine on one model: they share its weight buffers
    let shared = Arc::new(model.clone());
    let first = GpuEngine::new(&context, Arc::clone(&shared)).unwrap();
    let again = GpuEngine::new(&context, Arc::clone(&shared)).unwrap();
    assert!(first.shares_weights_with(&again));
    let other = GpuEngine::new(&context, Arc::new(model.clone())).unwrap();
    assert!(!first.shares_weights_with(&other), "another model");
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let (context, shared, batch, cpu, options) =
                (&context, &shared, &batch, &cpu, &options);
            scope.spawn(move || {
                let mut engine = GpuEngine::new(context, Arc::clone(shared))
                    .unwrap()
                    .with_run_options(GpuRunOptions::default().poison(true));
                for round in 0..8 {
                    let out = engine.solve(batch, options).unwrap_or_else(|e| {
                        panic!("thread {thread}, round {round}: {e}");
                    });
                    gpu_checks::compare(&format!("thread {thread}, round {round}"), &out, cpu);
                }
            });
        }
    });
}

/// `trm bench` times the work a solve does: the network calls of one ACT
/// step, recorded by `time_recursion_steps`, are the dispatches a solve of
/// one ACT step records for its calls (the same kernels, parameter blocks
/// and workgroups, in order), on both schedules; the solve adds only its
/// embedding, heads, halting and read-back around them.
#[test]
fn bench_timing_records_the_dispatches_a_solve_records() {
    let case = load_case("sudoku_mlp_small");
    let Some(engines) = gpu::engines(&case.model) else {
        return;
    };
    let calls = trm_wgpu::program::act_step_calls(case.model.config()).count();
    for (schedule, mut engine) in engines {
        engine.log_dispatches(true);
        engine
            .solve(&case.batch, &SolveOptions::default().act_steps(1))
            .unwrap();
        let solved = engine.dispatch_log();
        engine.log_dispatches(true);
        engine.time_recursion_steps(&case.batch, calls).unwrap();
        let timed = engine.dispatch_log();
        assert!(!timed.is_empty());
        let start = solved
            .windows(timed.len())
            .position(|w| w == timed.as_slice());
        assert!(
            start.is_some(),
            "schedule {schedule}: the timed dispatches are not a run of the solve's:\n\
             solve:\n  {}\ntimed:\n  {}",
            solved.join("\n  "),
            timed.join("\n  ")
        );
    }
}
