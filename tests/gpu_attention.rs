//! The GPU engine on the attention TRM (`mlp_t = false`), against the
//! authors' PyTorch outputs (golden `maze_att_rope`, `arc_att_learned`), the
//! CPU engine (random configurations: 1, 2 and 4 heads, RoPE, learned and
//! no positions, padded puzzle embeddings, P = 0, head widths that are odd,
//! below and above a tile, and one S >= 256 so that the attention walks
//! several query and key tiles), early halting, batch splitting, and its
//! counters: one dispatch per recursion step, nothing read back beyond the
//! outputs.
//!
//! Every GPU engine here fills its device buffers (state, scratch, outputs)
//! with NaN before each solve (`GpuSchedule::poison`), so an element no
//! kernel writes, or one read before it is written, fails. The GPU tests
//! fail when no adapter exists, unless `TRM_SKIP_GPU=1`.

mod common;

use std::sync::Arc;

use common::gpu_checks::{MAX_ABS, REL_L2, check_step, compare, halting_model, random_batch};
use common::{assert_close, f64_reference, gpu, load_case};
use trm_wgpu::{
    Carry, CpuEngine, Engine, GpuContext, GpuEngine, GpuOptions, GpuSchedule, PosEncodings,
    SolveOptions, SolveOutput, TrmConfig, TrmModel,
};

/// Runs a golden case one ACT step at a time from the engine's own carry,
/// checking every step against the authors' outputs and the final carry;
/// returns the last step's output.
fn every_step(name: &str) -> Option<SolveOutput> {
    let case = load_case(name);
    let mut engine = gpu::engine(&case.model)?;
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
    Some(last)
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
    let mut engine = gpu::engine(&case.model).unwrap();
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

/// A random attention configuration.
struct Random {
    seed: u64,
    seq_len: usize,
    hidden: usize,
    heads: usize,
    layers: usize,
    batch: usize,
    expansion: f64,
    h_cycles: usize,
    l_cycles: usize,
    puzzle_emb_ndim: usize,
    puzzle_ids: usize,
    pos: PosEncodings,
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
                "num_heads": self.heads,
                "expansion": self.expansion,
                "H_cycles": self.h_cycles,
                "L_cycles": self.l_cycles,
                "L_layers": self.layers,
                "halt_max_steps": self.act_steps,
                "mlp_t": false,
                "pos_encodings": self.pos.as_str(),
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

    fn label(&self) -> String {
        format!("seed {} config {}", self.seed, self.config().to_json())
    }
}

/// Odd sizes: S and D not multiples of 4, 8 or 16; head widths odd (no
/// RoPE), below TK, and above a 64-wide tile; 1, 2 and 4 heads; RoPE,
/// learned and no positions; P = 0 and padded puzzle embeddings; 1 to 3
/// layers; batches of 1 to 4. Few configurations: each is a pipeline to
/// compile, seconds on lavapipe; the other tests reuse their shapes.
fn random_configs() -> Vec<Random> {
    vec![
        // one head of 70 (above a 64-wide output block, not a multiple of
        // TK), D = 70 two column tiles, RoPE, P = 0, B = 1
        Random {
            seed: 41,
            seq_len: 13,
            hidden: 70,
            heads: 1,
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
        Random {
            seed: 52,
            seq_len: 20,
            hidden: 30,
            heads: 2,
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
        Random {
            seed: 63,
            seq_len: 7,
            hidden: 20,
            heads: 4,
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
        Random {
            seed: 74,
            seq_len: 67,
            hidden: 72,
            heads: 4,
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
        heads.push(random.heads);
        positions.push(random.pos);
        let model = random.model();
        let config = model.config().clone();
        let batch = random_batch(&config, random.batch, random.seed);
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
    let random = Random {
        seed: 96,
        seq_len: 296,
        hidden: 16,
        heads: 2,
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
    let batch = random_batch(&config, random.batch, random.seed);
    let options = SolveOptions::default();
    let want = CpuEngine::new(Arc::new(model.clone()))
        .unwrap()
        .solve(&batch, &options)
        .unwrap();
    let Some(mut engine) = gpu::engine(&model) else {
        return;
    };
    let got = engine.solve(&batch, &options).unwrap();
    compare(&random.label(), &got, &want);
}

/// A device with less than 16 KiB of workgroup memory (Apple's 16352
/// bytes): the kernels take their 8 KiB tiles (TK = 16), which change every
/// loop of the products and the attention (score steps over HD, p v steps
/// over the key tile, the row exchanges), with the same results.
#[test]
fn apple_sized_workgroup_memory_takes_the_small_tiles() {
    let Some(_) = gpu::context() else {
        return;
    };
    let options = GpuOptions::default()
        .with_env()
        .unwrap()
        .max_workgroup_memory(16352);
    let context = GpuContext::new(&options).unwrap();
    assert_eq!(context.limits().max_compute_workgroup_storage_size, 16352);
    // 4 heads of 18 (two score steps of 16), S = 69, D = 72
    let random = &random_configs()[3];
    let model = random.model();
    let config = model.config().clone();
    let batch = random_batch(&config, random.batch, random.seed);
    let options = SolveOptions::default();
    let want = CpuEngine::new(Arc::new(model.clone()))
        .unwrap()
        .solve(&batch, &options)
        .unwrap();
    let mut engine = GpuEngine::new(&context, Arc::new(model))
        .unwrap()
        .with_schedule(GpuSchedule::default().poison(true));
    let got = engine.solve(&batch, &options).unwrap();
    compare(&format!("TK = 16, {}", random.label()), &got, &want);
}

/// No read-back beyond the outputs, one dispatch per recursion step plus
/// the embedding and the heads, one submission; and a watchdog budget below
/// one dispatch gives the same outputs with a submission per step.
#[test]
fn counters_show_one_dispatch_per_recursion_step() {
    let random = &random_configs()[2];
    let model = random.model();
    let config = model.config().clone();
    let Some(mut engine) = gpu::engine(&model) else {
        return;
    };
    let puzzles = 3;
    let batch = random_batch(&config, puzzles, 1);
    let act_steps = 3;
    let options = SolveOptions::default().act_steps(act_steps);
    let whole = engine.solve(&batch, &options).unwrap();
    let stats = engine.last_stats().clone();
    eprintln!("{}", serde_json::to_string(&stats).unwrap());
    let per_act = (config.h_cycles * (config.l_cycles + 1)) as u64;
    let b = puzzles as u64;
    let outputs = b
        * (config.seq_len * config.vocab_size + 2 + 2 * config.state_len() * config.hidden_size)
            as u64
        * 4;
    assert_eq!(stats.recursion_steps, act_steps as u64 * per_act);
    assert_eq!(stats.act_steps, act_steps as u64);
    assert_eq!(stats.puzzle_recursion_steps, b * stats.recursion_steps);
    assert_eq!(stats.dispatches, stats.recursion_steps + 2);
    assert_eq!(stats.submits, 1);
    assert_eq!(stats.bytes_read_back, outputs);
    assert_eq!(stats.chunks, 1);

    engine.set_schedule(GpuSchedule::default().poison(true).max_flops_per_submit(1));
    let split = engine.solve(&batch, &options).unwrap();
    assert_eq!(split, whole);
    let stats = engine.last_stats();
    assert_eq!(stats.submits, stats.recursion_steps + 1);
    assert_eq!(stats.dispatches, stats.recursion_steps + 2);
    assert_eq!(stats.bytes_read_back, outputs);
}

/// A batch split into chunks (by the schedule, and by a device whose buffer
/// limit cannot hold the whole batch's attention scratch) gives exactly the
/// unsplit outputs.
#[test]
fn split_batches_equal_the_unsplit_batch() {
    // S = 7, D = 20, three layers: 203 KB of weights, 7 KB of scratch per
    // puzzle (the channel SwiGLU's, larger than qkv and the head outputs)
    let random = &random_configs()[2];
    let model = random.model();
    let config = model.config().clone();
    let batch = random_batch(&config, 40, 3);
    let options = SolveOptions::default().act_steps(1);
    let Some(mut whole) = gpu::engine(&model) else {
        return;
    };
    let unsplit = whole.solve(&batch, &options).unwrap();
    assert_eq!(whole.last_stats().chunks, 1);

    let mut by_schedule = gpu::engine(&model)
        .unwrap()
        .with_schedule(GpuSchedule::default().poison(true).max_chunk_puzzles(15));
    let split = by_schedule.solve(&batch, &options).unwrap();
    assert_eq!(by_schedule.last_stats().chunks, 3);
    assert_eq!(split, unsplit, "split by the schedule (15 + 15 + 10)");

    // A device that allows 256 KiB per buffer: the weights fit, the scratch
    // of 40 puzzles does not.
    let scratch = 4
        * (4 * config.state_len() * config.hidden_size)
            .max(config.channel_inter() * config.state_len());
    assert!(40 * scratch > 256 << 10);
    let options = GpuOptions::default()
        .with_env()
        .unwrap()
        .max_buffer_bytes(256 << 10);
    let small = GpuContext::new(&options).unwrap();
    let mut limited = GpuEngine::new(&small, Arc::new(model.clone()))
        .unwrap()
        .with_schedule(GpuSchedule::default().poison(true));
    let capacity = limited.chunk_capacity().unwrap();
    assert!(capacity < 40, "capacity {capacity}");
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
    // the shapes of random_configs()[2] (so its pipeline), five ACT steps
    let mut config = random_configs()[2].config();
    config.halt_max_steps = 5;
    let steps = config.halt_max_steps;
    let base = TrmModel::random(config.clone(), 2025, 0.9).unwrap();
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
    let want = CpuEngine::new(Arc::new(model.clone()))
        .unwrap()
        .solve(&batch, &options)
        .unwrap();
    eprintln!("CPU engine: {:.1} s", started.elapsed().as_secs_f64());
    let Some(_) = gpu::context() else {
        return;
    };
    let limited = GpuOptions::default()
        .with_env()
        .unwrap()
        .max_buffer_bytes(28 << 20);
    let context = GpuContext::new(&limited).unwrap();
    let mut engine = GpuEngine::new(&context, Arc::new(model))
        .unwrap()
        .with_schedule(GpuSchedule::default().poison(true));
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
