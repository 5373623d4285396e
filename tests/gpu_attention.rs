//! The GPU engine on the attention TRM (`mlp_t = false`), against the
//! authors' PyTorch outputs (golden `maze_att_rope`, `arc_att_learned`), the
//! CPU engine (random configurations: 1, 2 and 4 heads, RoPE, learned and
//! no positions, padded puzzle embeddings, P = 0, head widths that are odd,
//! below and above a tile, the published 64 at Sudoku's length S = 97, and
//! one S >= 256 so that the attention walks several query and key tiles),
//! early halting, batch splitting, and its
//! counters: one dispatch per recursion step, nothing read back beyond the
//! outputs.
//!
//! Every GPU engine here fills its device buffers (state, scratch, outputs)
//! with NaN before each solve (`GpuRunOptions::poison`), so an element no
//! kernel writes, or one read before it is written, fails. The GPU tests
//! fail when no adapter exists, unless `TRM_SKIP_GPU=1`.

mod common;

use common::golden::step_by_step;
use common::gpu_checks::{
    self, MAX_ABS, REL_L2, RandomModel, compare, cpu_solve, matches_the_cpu_engine, random_batch,
};
use common::{assert_close, f64_reference, gpu, load_case};
use trm_wgpu::{Engine, GpuSchedule, PosEncodings, SolveOptions, SolveOutput, TrmConfig, TrmModel};

/// Runs a golden case one ACT step at a time from the engine's own carry,
/// checking every step against the authors' outputs and the final carry;
/// returns the last step's output.
fn every_step(name: &str) -> Option<SolveOutput> {
    let case = load_case(name);
    let mut last = None;
    for (schedule, mut engine) in gpu::engines(&case.model)? {
        eprintln!("schedule {schedule}");
        last = Some(step_by_step(&mut engine, &case, REL_L2, MAX_ABS));
    }
    last
}

/// RoPE over the 16 puzzle positions too, D = 64, 4 heads of 16, S = 80
/// (two query and key tiles, a tail of 16), two layers, B = 2: all four ACT
/// steps.
#[test]
fn maze_att_rope_every_step() {
    every_step("maze_att_rope");
}

/// Learned positions, a puzzle embedding of 80 zero-padded to 2 positions
/// of 48, 2 heads of 24, B = 4: both ACT steps one at a time, then the whole
/// solve in one call (the same outputs, bit for bit), and the float64
/// reference against the same golden values (which validates the reference
/// that the CLI test uses for attention).
#[test]
fn arc_att_learned_every_step_and_whole_solve() {
    let Some(last) = every_step("arc_att_learned") else {
        return;
    };
    let case = load_case("arc_att_learned");
    // the spread schedule's, as `last`
    let mut engine = gpu::engine(&case.model)
        .unwrap()
        .with_schedule(GpuSchedule::Spread);
    let whole = engine.solve(&case.batch, &SolveOptions::default()).unwrap();
    assert!(whole.steps.iter().all(|&s| s as usize == case.steps));
    assert_eq!(whole.logits, last.logits, "whole solve vs step by step");
    assert_eq!(whole.q_halt_logits, last.q_halt_logits);
    assert_eq!(whole.z_h, last.z_h);
    assert_eq!(whole.z_l, last.z_l);
    let reference = f64_reference::solve(&case.model, &case.batch, case.steps, false);
    let key = format!("logits.step{}", case.steps);
    assert_close(
        "f64 reference vs golden",
        &reference.logits,
        case.tensor(&key),
        REL_L2,
        MAX_ABS,
    );
    assert_close(
        "GPU vs f64",
        &whole.logits,
        &reference.logits,
        REL_L2,
        MAX_ABS,
    );
}

/// Odd sizes: S and D not multiples of 4, 8 or 16; head widths odd (no
/// RoPE), below a score step (SK), and above a 64-wide tile; 1, 2 and 4 heads; RoPE,
/// learned and no positions; P = 0 and padded puzzle embeddings; 1 to 3
/// layers; batches of 1 to 4. Few configurations: each is a pipeline to
/// compile, seconds on lavapipe; the other tests reuse their shapes.
fn random_configs() -> Vec<RandomModel> {
    vec![
        // one head of 70 (above a 64-wide output block, not a multiple of
        // SK: an odd count of score steps), D = 70 two column tiles, RoPE,
        // P = 0, B = 1
        RandomModel {
            seed: 41,
            seq_len: 13,
            hidden: 70,
            heads: Some(1),
            layers: 1,
            batch: 1,
            expansion: 4.0,
            h_cycles: 1,
            l_cycles: 2,
            puzzle_emb_ndim: 0,
            puzzle_ids: 1,
            pos: PosEncodings::Rope,
            act_steps: 2,
        },
        // 2 heads of 15 (odd), learned positions, P = ceil(50 / 30) = 2
        // (the embedding zero-padded from 50 to 60), S = 22
        RandomModel {
            seed: 52,
            seq_len: 20,
            hidden: 30,
            heads: Some(2),
            layers: 2,
            batch: 3,
            expansion: 2.5,
            h_cycles: 2,
            l_cycles: 1,
            puzzle_emb_ndim: 50,
            puzzle_ids: 4,
            pos: PosEncodings::Learned,
            act_steps: 1,
        },
        // 4 heads of 5, no positions, three layers, S = 7 < a tile
        RandomModel {
            seed: 63,
            seq_len: 7,
            hidden: 20,
            heads: Some(4),
            layers: 3,
            batch: 4,
            expansion: 1.0,
            h_cycles: 1,
            l_cycles: 1,
            puzzle_emb_ndim: 0,
            puzzle_ids: 1,
            pos: PosEncodings::None,
            act_steps: 2,
        },
        // 4 heads of 18, RoPE over 2 puzzle positions (140 padded to 144),
        // S = 69 two query and key tiles, D = 72 two column tiles
        RandomModel {
            seed: 74,
            seq_len: 67,
            hidden: 72,
            heads: Some(4),
            layers: 2,
            batch: 2,
            expansion: 4.0,
            h_cycles: 1,
            l_cycles: 1,
            puzzle_emb_ndim: 140,
            puzzle_ids: 3,
            pos: PosEncodings::Rope,
            act_steps: 1,
        },
    ]
}

#[test]
fn random_configurations_match_the_cpu_engine() {
    let mut heads = vec![];
    let mut positions = vec![];
    for random in random_configs() {
        let label = random.label();
        eprintln!("{label}");
        heads.push(random.heads.unwrap());
        positions.push(random.pos);
        let model = random.model();
        let batch = random.batch();
        if !matches_the_cpu_engine(&label, &model, &batch) {
            return;
        }
    }
    for h in [1, 2, 4] {
        assert!(heads.contains(&h), "{h} heads");
    }
    for p in [
        PosEncodings::Rope,
        PosEncodings::Learned,
        PosEncodings::None,
    ] {
        assert!(positions.contains(&p), "{p:?}");
    }
}

/// S = 300 (five query and five key tiles of 64, a tail of 44), so that the
/// streaming softmax carries its running maximum and sums across key tiles;
/// kept small in D (16, 2 heads of 8) and in cycles so CI stays fast.
#[test]
fn long_sequence_walks_many_position_tiles() {
    let random = RandomModel {
        seed: 96,
        seq_len: 296,
        hidden: 16,
        heads: Some(2),
        layers: 1,
        batch: 2,
        expansion: 2.0,
        h_cycles: 1,
        l_cycles: 1,
        // P = 4
        puzzle_emb_ndim: 60,
        puzzle_ids: 2,
        pos: PosEncodings::Rope,
        act_steps: 1,
    };
    let model = random.model();
    let config = model.config().clone();
    assert!(config.state_len() >= 256);
    let batch = random.batch();
    let options = SolveOptions::default();
    let want = cpu_solve(&model, &batch, &options);
    let Some(mut engine) = gpu::engine(&model) else {
        return;
    };
    let got = engine.solve(&batch, &options).unwrap();
    compare(&random.label(), &got, &want);
}

/// The published head width, 64, at Sudoku's length S = 97 (two query and
/// key tiles, the second of 33: the attention's padding skips, rows beyond S
/// and p v steps beyond the keys): 4 score steps of SK = 16, the next key
/// tile's first Q/K chunk loaded during the last p v step.
fn sudoku_length_model() -> RandomModel {
    RandomModel {
        seed: 97,
        seq_len: 95,
        hidden: 128,
        heads: Some(2),
        layers: 1,
        batch: 2,
        expansion: 1.0,
        h_cycles: 1,
        l_cycles: 1,
        // P = ceil(200 / 128) = 2
        puzzle_emb_ndim: 200,
        puzzle_ids: 2,
        pos: PosEncodings::Rope,
        act_steps: 1,
    }
}

#[test]
fn head_width_64_at_the_sudoku_length_matches_the_cpu_engine() {
    let random = sudoku_length_model();
    let model = random.model();
    assert_eq!(model.config().state_len(), 97);
    assert_eq!(model.config().head_dim(), 64);
    matches_the_cpu_engine(&random.label(), &model, &random.batch());
}

/// A device with less than 16 KiB of workgroup memory (Apple's 16352
/// bytes): the kernels take their 8 KiB tiles (SK = 8), which change every
/// loop of the products and the attention (score steps over HD, p v steps
/// over the key tile, the row exchanges, whose partials then fill stage 1
/// of both tiles), and the spread schedule's products their 8-deep
/// double-buffered steps, with the same results.
#[test]
fn apple_sized_workgroup_memory_takes_the_small_tiles() {
    let Some(_) = gpu::context() else {
        return;
    };
    let context = gpu::limited_context(|o| o.max_workgroup_memory(16352));
    assert_eq!(context.limits().max_compute_workgroup_storage_size, 16352);
    // 4 heads of 18 (three score steps of 8: each key tile starts its own
    // pipeline), S = 69, D = 72; 2 heads of 64 (eight score steps: the
    // next key tile's first chunk loaded during the last p v step), S = 97
    for random in [&random_configs()[3], &sudoku_length_model()] {
        let model = random.model();
        let batch = random.batch();
        let options = SolveOptions::default();
        let want = cpu_solve(&model, &batch, &options);
        for schedule in [GpuSchedule::Fused, GpuSchedule::Spread] {
            let mut engine = gpu::engine_on(&context, &model).with_schedule(schedule);
            let got = engine.solve(&batch, &options).unwrap();
            let label = format!("small tiles, {schedule}, {}", random.label());
            compare(&label, &got, &want);
            // at lavapipe's 512 bits, clusters of 16 beside SK = 8 tiles
            gpu::assert_lanes(&label, &engine);
        }
    }
}

/// No read-back beyond the outputs, one dispatch per recursion step plus
/// the embedding and the heads, one submission; and a watchdog budget below
/// one dispatch gives the same outputs with a submission per step.
#[test]
fn counters_show_one_dispatch_per_recursion_step() {
    gpu_checks::counters_show_one_dispatch_per_recursion_step(&random_configs()[2].model());
}

/// A batch split into chunks (by the schedule, and by a device whose buffer
/// limit cannot hold the whole batch's attention scratch) gives exactly the
/// unsplit outputs.
#[test]
fn split_batches_equal_the_unsplit_batch() {
    // S = 7, D = 20, three layers: 203 KB of weights, 7 KB of scratch per
    // puzzle (the channel SwiGLU's, larger than qkv and the head outputs).
    // 40 puzzles split by the schedule as 15 + 15 + 10; a device that
    // allows 256 KiB per buffer: the weights fit, the scratch of 40 puzzles
    // does not.
    let model = random_configs()[2].model();
    let config = model.config();
    let scratch = 4
        * (4 * config.state_len() * config.hidden_size)
            .max(config.channel_inter() * config.state_len());
    assert!(40 * scratch > 256 << 10);
    gpu_checks::split_batches_equal_the_unsplit_batch(&model, 40, 15, 256 << 10);
}

/// Early halting: the same puzzles halt at the same steps as on the CPU,
/// each keeping the outputs of its halting step, on both schedules, with
/// halting decided on the device and only a running count read per ACT
/// step (while the next one runs).
#[test]
fn early_halting_matches_the_cpu_engine() {
    // the shapes of random_configs()[2] (so its pipeline), five ACT steps
    let mut config = random_configs()[2].config();
    config.halt_max_steps = 5;
    gpu_checks::early_halting_matches_the_cpu_engine(&config, 2025);
}

/// The ARC and Maze sizes: S = 900 + 16 = 916, D = 512, 8 heads of 64,
/// two layers, RoPE; one ACT step of T = 1, n = 1 (two recursion steps) for
/// four puzzles on a device that allows 28 MiB per buffer: the weights
/// (27.7 MB with the RoPE tables) fit, and the attention scratch (7.5 MB
/// per puzzle) caps a chunk at three puzzles, so the batch is split.
/// Against the CPU engine from the official initial carry.
#[test]
#[ignore = "32 GFLOP per puzzle and ACT step: minutes on lavapipe"]
fn arc_size_one_act_step_split_by_the_device_limit() {
    let config = TrmConfig::from_json(
        r#"{"seq_len": 900, "vocab_size": 12, "num_puzzle_identifiers": 5,
            "hidden_size": 512, "num_heads": 8, "expansion": 4, "H_cycles": 1,
            "L_cycles": 1, "L_layers": 2, "halt_max_steps": 1, "mlp_t": false,
            "pos_encodings": "rope", "puzzle_emb_ndim": 512, "puzzle_emb_len": 16}"#,
    )
    .unwrap();
    assert_eq!(config.state_len(), 916);
    let model = TrmModel::random(config.clone(), 916, 0.5).unwrap();
    let batch = random_batch(&config, 4, 916);
    let options = SolveOptions::default();
    let started = std::time::Instant::now();
    let want = cpu_solve(&model, &batch, &options);
    eprintln!("CPU engine: {:.1} s", started.elapsed().as_secs_f64());
    let Some(_) = gpu::context() else {
        return;
    };
    let context = gpu::limited_context(|o| o.max_buffer_bytes(28 << 20));
    let mut engine = gpu::engine_on(&context, &model);
    let capacity = engine.chunk_capacity().unwrap();
    assert_eq!(capacity, 3);
    let started = std::time::Instant::now();
    let got = engine.solve(&batch, &options).unwrap();
    eprintln!(
        "GPU engine on {}: {:.1} s, {}",
        context.describe(),
        started.elapsed().as_secs_f64(),
        serde_json::to_string(engine.last_stats()).unwrap()
    );
    assert_eq!(engine.last_stats().chunks, 2);
    compare("ARC size", &got, &want);
}
