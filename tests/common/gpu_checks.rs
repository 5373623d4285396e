//! Checks shared by the GPU engine tests of both variants (attention and
//! MLP-mixer): GPU against CPU outputs, random batches, a model that halts
//! early at chosen steps, and the checks each variant runs on its own model
//! (counters and watchdog splitting, batch splitting, early halting). The
//! golden-case checks, which the CPU tests share, are in `golden.rs`.

use std::sync::Arc;

use super::{assert_close, assert_close_floor, gpu, one_act_step_at_a_time, random_batch_from};
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::{
    Arch, CpuEngine, Engine, GpuRunOptions, GpuSchedule, LoadOptions, PosEncodings, PuzzleBatch,
    SolveOptions, SolveOutput, Tensor, TrmConfig, TrmModel,
};

/// Contractive weights: float32 implementations agree to about 1e-6.
pub const REL_L2: f64 = 1e-5;
/// Largest error allowed on any element (logits and states are O(1)).
pub const MAX_ABS: f64 = 1e-4;
/// Chaotic weights, one ACT step from a stored state (as the CPU test).
pub const ONE_STEP_REL_L2: f64 = 1e-4;
/// The worst element seen one step from a stored state is 1.1e-4 (the
/// full-size and chaotic Sudoku cases, CPU and both GPU schedules): a
/// tenth of this bound, so one element far off fails.
pub const ONE_STEP_MAX_ABS: f64 = 1e-3;

/// Every output of `gpu` against `cpu`, the label naming the configuration.
pub fn compare(label: &str, gpu: &SolveOutput, cpu: &SolveOutput) {
    assert_eq!(gpu.steps, cpu.steps, "{label}: ACT steps per puzzle");
    assert_close(
        &format!("{label} logits"),
        &gpu.logits,
        &cpu.logits,
        REL_L2,
        MAX_ABS,
    );
    // two values that may sit near 0 by chance: relative to the O(1) scale
    assert_close_floor(
        &format!("{label} q_halt"),
        &gpu.q_halt_logits,
        &cpu.q_halt_logits,
        REL_L2,
        MAX_ABS,
        1.0,
    );
    assert_close_floor(
        &format!("{label} q_continue"),
        &gpu.q_continue_logits,
        &cpu.q_continue_logits,
        REL_L2,
        MAX_ABS,
        1.0,
    );
    assert_close(&format!("{label} z_H"), &gpu.z_h, &cpu.z_h, REL_L2, MAX_ABS);
    assert_close(&format!("{label} z_L"), &gpu.z_l, &cpu.z_l, REL_L2, MAX_ABS);
}

/// `puzzles` random puzzles (tokens and puzzle ids) from `seed`.
pub fn random_batch(config: &TrmConfig, puzzles: usize, seed: u64) -> PuzzleBatch {
    random_batch_from(&mut SplitMix64::new(seed ^ 0x5eed), config, puzzles)
}

/// A random model of either variant with chosen sizes (the GPU tests pick
/// odd ones), its batch size and the seed of both.
pub struct RandomModel {
    pub seed: u64,
    pub seq_len: usize,
    pub hidden: usize,
    /// `Some(heads)`: the attention model with that many heads; `None`: the
    /// MLP-mixer model.
    pub heads: Option<usize>,
    pub layers: usize,
    pub batch: usize,
    pub expansion: f64,
    pub h_cycles: usize,
    pub l_cycles: usize,
    pub puzzle_emb_ndim: usize,
    pub puzzle_ids: usize,
    pub pos: PosEncodings,
    pub act_steps: usize,
}

impl RandomModel {
    pub fn config(&self) -> TrmConfig {
        let mut json = serde_json::json!({
            "seq_len": self.seq_len,
            "vocab_size": 7,
            "num_puzzle_identifiers": self.puzzle_ids,
            "hidden_size": self.hidden,
            "expansion": self.expansion,
            "H_cycles": self.h_cycles,
            "L_cycles": self.l_cycles,
            "L_layers": self.layers,
            "halt_max_steps": self.act_steps,
            "mlp_t": self.heads.is_none(),
            "pos_encodings": self.pos.as_str(),
            "puzzle_emb_ndim": self.puzzle_emb_ndim,
            "puzzle_emb_len": 0,
        });
        if let Some(heads) = self.heads {
            json["num_heads"] = heads.into();
        }
        TrmConfig::from_json(&json.to_string()).unwrap()
    }

    pub fn model(&self) -> TrmModel {
        TrmModel::random(self.config(), self.seed, 0.5).unwrap()
    }

    /// `batch` random puzzles from `seed`.
    pub fn batch(&self) -> PuzzleBatch {
        random_batch(&self.config(), self.batch, self.seed)
    }

    pub fn label(&self) -> String {
        format!("seed {} config {}", self.seed, self.config().to_json())
    }
}

/// A model whose q_head bias makes q_halt cross its halting bar (TRM: 0,
/// HRM: q_continue) at different ACT steps for different puzzles, with a
/// margin: picked from the CPU engine's q trajectories.
pub fn halting_model(base: &TrmModel, batch: &PuzzleBatch, steps: usize) -> (TrmModel, Vec<u32>) {
    let mut cpu = CpuEngine::new(Arc::new(base.clone())).unwrap();
    let mut q = vec![]; // q[step][puzzle]: q_halt less its bar, without the bias
    let bias = base.weights().q_head_bias[0];
    let hrm = base.config().arch == Arch::Hrm;
    one_act_step_at_a_time(&mut cpu, batch, steps, |_, out| {
        q.push(
            out.q_halt_logits
                .iter()
                .zip(&out.q_continue_logits)
                .map(|(h, c)| h - bias - if hrm { *c } else { 0.0 })
                .collect::<Vec<f32>>(),
        )
    });
    let halting_steps = |b: f32| -> Vec<u32> {
        (0..batch.len())
            .map(|p| {
                (0..steps)
                    .find(|&k| q[k][p] + b > 0.0)
                    .map_or(steps as u32, |k| k as u32 + 1)
            })
            .collect()
    };
    let margin = |b: f32| -> f32 {
        q.iter()
            .flatten()
            .map(|v| (v + b).abs())
            .fold(f32::INFINITY, f32::min)
    };
    let mut values: Vec<f32> = q.iter().flatten().copied().collect();
    values.sort_by(f32::total_cmp);
    let mut best: Option<(usize, f32, f32)> = None;
    for pair in values.windows(2) {
        let b = -(pair[0] + pair[1]) / 2.0;
        let mut distinct = halting_steps(b);
        distinct.sort();
        distinct.dedup();
        let score = (distinct.len(), margin(b));
        if best.is_none_or(|(n, m, _)| (score.0, score.1) > (n, m)) {
            best = Some((score.0, score.1, b));
        }
    }
    let (distinct, margin, b) = best.unwrap();
    assert!(
        distinct >= 3 && margin > 1e-3,
        "no bias separates the halting steps well enough ({distinct} distinct, margin {margin})"
    );
    let tensors = base.named_tensors().into_iter().map(|(name, t)| {
        if name == "inner.q_head.bias" {
            let data = vec![b, t.data[1]];
            (name, Tensor::new(t.shape, data).unwrap())
        } else {
            (name, t)
        }
    });
    let model =
        TrmModel::from_tensors(base.config().clone(), tensors, &LoadOptions::default()).unwrap();
    (model, halting_steps(b))
}

/// The CPU engine's outputs for `batch`: what the GPU engine must give.
pub fn cpu_solve(model: &TrmModel, batch: &PuzzleBatch, options: &SolveOptions) -> SolveOutput {
    CpuEngine::new(Arc::new(model.clone()))
        .unwrap()
        .solve(batch, options)
        .unwrap()
}

/// Bytes a solve of `puzzles` puzzles reads back: the logits, the two q
/// logits and the final carry (z_H, z_L), as f32.
pub fn output_bytes(config: &TrmConfig, puzzles: usize) -> u64 {
    puzzles as u64
        * (config.seq_len * config.vocab_size + 2 + 2 * config.state_len() * config.hidden_size)
            as u64
        * 4
}

/// The GPU engine against the CPU engine on `batch`: the whole solve, then
/// one more ACT step from the carry it reached. `false` when there is no
/// GPU to test (`TRM_SKIP_GPU=1`).
pub fn matches_the_cpu_engine(label: &str, model: &TrmModel, batch: &PuzzleBatch) -> bool {
    let options = SolveOptions::default();
    let mut cpu = CpuEngine::new(Arc::new(model.clone())).unwrap();
    let want = cpu.solve(batch, &options).unwrap();
    let carry = want.carry();
    let one = SolveOptions::default().act_steps(1);
    let want_one = cpu.solve_from(batch, Some(&carry), &one).unwrap();
    for schedule in SCHEDULES {
        let Some(engine) = gpu::engine(model) else {
            return false;
        };
        let mut engine = engine.with_schedule(schedule);
        let label = format!("{label}, {schedule}");
        let got = engine.solve(batch, &options).unwrap();
        assert_eq!(engine.last_stats().schedule, schedule.as_str());
        compare(&label, &got, &want);
        // and from a carry: one more step from the state reached
        let got = engine.solve_from(batch, Some(&carry), &one).unwrap();
        compare(&format!("{label}, from a carry"), &got, &want_one);
    }
    true
}

/// The two schedules every GPU check runs.
pub const SCHEDULES: [GpuSchedule; 2] = [GpuSchedule::Fused, GpuSchedule::Spread];

/// Three ACT steps of three puzzles on `model`, on each schedule: no
/// read-back beyond the outputs, one dispatch per recursion step (fused) or
/// its phases (spread) plus the embedding and the heads, one submission.
/// Then a watchdog budget below one dispatch: a submission after every
/// recursion step, the same outputs, still no waiting in between.
pub fn counters_show_one_dispatch_per_recursion_step(model: &TrmModel) {
    let config = model.config();
    let Some(engines) = gpu::engines(model) else {
        return;
    };
    for (schedule, mut engine) in engines {
        let puzzles = 3;
        let batch = random_batch(config, puzzles, 1);
        let act_steps = 3;
        let options = SolveOptions::default().act_steps(act_steps);
        let whole = engine.solve(&batch, &options).unwrap();
        let stats = engine.last_stats().clone();
        eprintln!("{}", serde_json::to_string(&stats).unwrap());
        let per_act = (config.h_cycles * (config.l_cycles + 1)) as u64;
        let b = puzzles as u64;
        let outputs = output_bytes(config, puzzles);
        let per_call = stats.dispatches_per_net_call;
        match schedule {
            GpuSchedule::Fused => assert_eq!(per_call, 1),
            _ => assert!(per_call > 1, "{schedule}: {per_call} dispatches per call"),
        }
        assert_eq!(stats.schedule, schedule.as_str());
        assert_eq!(stats.recursion_steps, act_steps as u64 * per_act);
        assert_eq!(stats.act_steps, act_steps as u64);
        assert_eq!(stats.puzzle_recursion_steps, b * stats.recursion_steps);
        assert_eq!(stats.dispatches, per_call * stats.recursion_steps + 2);
        assert_eq!(stats.submits, 1);
        assert_eq!(stats.host_waits, 1);
        assert_eq!(stats.bytes_read_back, outputs);
        assert_eq!(stats.chunks, 1);

        // without the carry: only the logits and the q logits come back
        let lean = engine.solve(&batch, &options.clone().carry(false)).unwrap();
        assert!(lean.z_h.is_empty() && lean.z_l.is_empty());
        assert_eq!(lean.logits, whole.logits, "{schedule}");
        assert_eq!(lean.q_halt_logits, whole.q_halt_logits);
        let heads = puzzles * (config.seq_len * config.vocab_size + 2) * 4;
        assert_eq!(engine.last_stats().bytes_read_back, heads as u64);

        engine.set_run_options(
            GpuRunOptions::default()
                .schedule(schedule)
                .poison(true)
                .max_flops_per_submit(1),
        );
        let split = engine.solve(&batch, &options).unwrap();
        assert_eq!(split, whole, "{schedule}");
        let stats = engine.last_stats();
        assert_eq!(stats.submits, stats.recursion_steps + 1);
        assert_eq!(stats.dispatches, per_call * stats.recursion_steps + 2);
        assert_eq!(stats.host_waits, 1);
        assert_eq!(stats.bytes_read_back, outputs);

        // submissions cut by measured time: the first (embedding and first
        // call) timed and waited for, then, with no time to spare, a call a
        // submission; the same outputs bit for bit
        engine.set_run_options(
            GpuRunOptions::default()
                .schedule(schedule)
                .poison(true)
                .max_submit_time(std::time::Duration::ZERO, 0),
        );
        let timed = engine.solve(&batch, &options).unwrap();
        assert_eq!(timed, whole, "{schedule}: submissions cut by time");
        let stats = engine.last_stats();
        assert_eq!(stats.submits, stats.recursion_steps + 1, "{stats:?}");
        assert_eq!(stats.host_waits, 2);
        assert!(
            stats.measured_call_seconds.is_some_and(|s| s > 0.0),
            "{stats:?}"
        );
        assert_eq!(stats.calls_per_submit, Some(1));
        // a small solve is not measured: one submission, one wait
        engine.set_run_options(GpuRunOptions::default().schedule(schedule).poison(true));
        engine.solve(&batch, &options).unwrap();
        assert_eq!(engine.last_stats().measured_call_seconds, None);
        assert_eq!(engine.last_stats().submits, 1);

        if schedule == GpuSchedule::Spread {
            // a dispatch budget below one puzzle's block: the spread
            // schedule's phases cover one puzzle each, the batch runs as
            // one puzzle a pass
            engine.set_run_options(
                GpuRunOptions::default()
                    .schedule(schedule)
                    .poison(true)
                    .max_flops_per_dispatch(1),
            );
            let one_at_a_time = engine.solve(&batch, &options).unwrap();
            assert_eq!(one_at_a_time, whole, "spread, one puzzle a pass");
            assert_eq!(engine.last_stats().chunks, b);
        }

        if schedule == GpuSchedule::Fused {
            // a dispatch budget below one puzzle's call: a dispatch per
            // puzzle (steps and heads), the same outputs bit for bit
            engine.set_run_options(
                GpuRunOptions::default()
                    .schedule(schedule)
                    .poison(true)
                    .max_flops_per_dispatch(1),
            );
            let sliced = engine.solve(&batch, &options).unwrap();
            assert_eq!(sliced, whole, "one puzzle a dispatch");
            let stats = engine.last_stats();
            assert_eq!(stats.dispatches, b * stats.recursion_steps + b + 1);
            assert_eq!(stats.workgroups_per_dispatch.max, 1);
        }
    }
}

/// A batch of `puzzles` puzzles of `model` split into chunks gives exactly
/// the unsplit outputs (one ACT step): split by the schedule into chunks of
/// `chunk_puzzles`, and by a device that allows `max_buffer_bytes` per
/// buffer, which must hold the weights but not the scratch of the whole
/// batch (the caller picks it so).
pub fn split_batches_equal_the_unsplit_batch(
    model: &TrmModel,
    puzzles: usize,
    chunk_puzzles: usize,
    max_buffer_bytes: u64,
) {
    for schedule in SCHEDULES {
        split_batches_on(model, schedule, puzzles, chunk_puzzles, max_buffer_bytes);
    }
}

/// [`split_batches_equal_the_unsplit_batch`] on one schedule (bit for bit:
/// the schedules round differently, so each is compared with itself).
fn split_batches_on(
    model: &TrmModel,
    schedule: GpuSchedule,
    puzzles: usize,
    chunk_puzzles: usize,
    max_buffer_bytes: u64,
) {
    let batch = random_batch(model.config(), puzzles, 3);
    let options = SolveOptions::default().act_steps(1);
    let Some(whole) = gpu::engine(model) else {
        return;
    };
    let mut whole = whole.with_schedule(schedule);
    let unsplit = whole.solve(&batch, &options).unwrap();
    assert_eq!(whole.last_stats().chunks, 1);

    let mut by_schedule = gpu::engine(model).unwrap().with_run_options(
        GpuRunOptions::default()
            .schedule(schedule)
            .poison(true)
            .max_chunk_puzzles(chunk_puzzles),
    );
    let split = by_schedule.solve(&batch, &options).unwrap();
    // e.g. 15 + 15 + 10 for 40 puzzles in chunks of 15
    let sizes: Vec<String> = (0..puzzles)
        .step_by(chunk_puzzles)
        .map(|first| (puzzles - first).min(chunk_puzzles).to_string())
        .collect();
    assert_eq!(by_schedule.last_stats().chunks, sizes.len() as u64);
    assert_eq!(
        split,
        unsplit,
        "split by the schedule ({})",
        sizes.join(" + ")
    );

    let small = gpu::limited_context(|o| o.max_buffer_bytes(max_buffer_bytes));
    let mut limited = gpu::engine_on(&small, model).with_schedule(schedule);
    let capacity = limited.chunk_capacity().unwrap();
    assert!(capacity < puzzles, "capacity {capacity}");
    let split = limited.solve(&batch, &options).unwrap();
    assert!(limited.last_stats().chunks >= 2);
    assert_eq!(
        split, unsplit,
        "split by the device limit ({capacity} a chunk)"
    );
}

/// Early halting on a model of `config` (random weights from `seed`, the
/// q_head bias picked by [`halting_model`] over `config.halt_max_steps`
/// steps, five puzzles): the same puzzles halt at the same steps as on the
/// CPU, each keeping the outputs of its halting step, on both schedules;
/// halting is decided on the device, and only a running count is read per
/// ACT step, while the next one runs.
pub fn early_halting_matches_the_cpu_engine(config: &TrmConfig, seed: u64) {
    let steps = config.halt_max_steps;
    let base = TrmModel::random(config.clone(), seed, 0.9).unwrap();
    let batch = random_batch(config, 5, 9);
    let (model, expected_steps) = halting_model(&base, &batch, steps);
    eprintln!("halting steps {expected_steps:?}");
    let options = SolveOptions::default().early_halt(true);
    let want = cpu_solve(&model, &batch, &options);
    assert_eq!(want.steps, expected_steps);
    let Some(engines) = gpu::engines(&model) else {
        return;
    };
    // and fused dispatches of two puzzles (three slices, counted on the
    // device for each)
    let two = 2 * config.flops_per_recursion_step();
    let mut sliced = gpu::engine(&model).unwrap().with_run_options(
        GpuRunOptions::default()
            .schedule(GpuSchedule::Fused)
            .poison(true)
            .max_flops_per_dispatch(two),
    );
    let sliced_out = sliced.solve(&batch, &options).unwrap();
    compare("early halting, fused in slices of 2", &sliced_out, &want);
    for (schedule, mut engine) in engines {
        let got = engine.solve(&batch, &options).unwrap();
        compare(&format!("early halting, {schedule}"), &got, &want);

        let stats = engine.last_stats().clone();
        eprintln!("{}", serde_json::to_string(&stats).unwrap());
        let per_act = (config.h_cycles * (config.l_cycles + 1)) as u64;
        let per_call = stats.dispatches_per_net_call;
        let most = *expected_steps.iter().max().unwrap() as u64;
        let total: u64 = expected_steps.iter().map(|&s| u64::from(s)).sum();
        assert_eq!(stats.recursion_steps, most * per_act);
        assert_eq!(stats.puzzle_recursion_steps, total * per_act);
        // Halting is decided on the device: per ACT step recorded, its
        // recursion steps, the heads and the halting kernel; plus the
        // embedding. The host learns that all have halted one ACT step
        // late, so it records at most two beyond the last that ran.
        let per_act_step = per_act * per_call + 2;
        let recorded = (stats.dispatches - 1) / per_act_step;
        assert_eq!(stats.dispatches, recorded * per_act_step + 1);
        assert!(recorded >= most && recorded <= (most + 2).min(steps as u64));
        // one running count per ACT step recorded but the last (read while
        // the next runs), then the outputs with each puzzle's ACT steps
        let b = batch.len() as u64;
        let outputs = output_bytes(config, batch.len());
        assert_eq!(stats.host_waits, recorded);
        assert_eq!(stats.bytes_read_back, (recorded - 1) * 4 + outputs + 4 * b);
    }
}
