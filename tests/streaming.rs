//! The solve program's continuous batching: a streaming solve with a fixed
//! number of slots, a halted puzzle's slot refilled at once, gives every
//! puzzle the outputs of the plain solve with early halting (answers and
//! `steps` exactly, the rest within rounding), on the CPU and the GPU
//! engine (both schedules), for TRM and HRM, with one slot, fewer slots
//! than puzzles and more; and on the trained sudoku-easy model it needs at
//! most half the network calls of fixed batches of 16.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::gpu;
use common::gpu_checks::{compare, cpu_solve, halting_model, random_batch};
use trm_wgpu::program::{self, SlotEngine, Stream};
use trm_wgpu::tasks::sudoku::Grid;
use trm_wgpu::{
    CpuEngine, Engine, PuzzleBatch, SolveOptions, SolveOutput, TrmConfig, TrmError, TrmModel,
};

fn halting() -> SolveOptions {
    SolveOptions::default().early_halt(true)
}

fn mlp() -> TrmConfig {
    TrmConfig::from_json(
        r#"{"seq_len": 11, "vocab_size": 6, "hidden_size": 14, "expansion": 2,
            "H_cycles": 1, "L_cycles": 2, "L_layers": 1, "halt_max_steps": 6,
            "mlp_t": true, "pos_encodings": "none", "puzzle_emb_ndim": 14,
            "num_puzzle_identifiers": 3}"#,
    )
    .unwrap()
}

fn attention() -> TrmConfig {
    TrmConfig::from_json(
        r#"{"seq_len": 9, "vocab_size": 5, "hidden_size": 16, "num_heads": 2,
            "expansion": 2, "H_cycles": 2, "L_cycles": 1, "L_layers": 1,
            "halt_max_steps": 5, "mlp_t": false, "pos_encodings": "rope"}"#,
    )
    .unwrap()
}

fn hrm() -> TrmConfig {
    TrmConfig::from_json(
        r#"{"arch": "hrm", "seq_len": 9, "vocab_size": 5, "hidden_size": 16,
            "num_heads": 2, "expansion": 2, "H_cycles": 2, "L_cycles": 1,
            "H_layers": 2, "L_layers": 1, "halt_max_steps": 5, "mlp_t": false,
            "pos_encodings": "rope"}"#,
    )
    .unwrap()
}

/// A random model of `config` whose puzzles halt at several different ACT
/// steps, a batch of `puzzles`, and the CPU engine's plain halting solve.
fn halting_case(config: &TrmConfig, seed: u64, puzzles: usize) -> (TrmModel, PuzzleBatch) {
    // not every seed's q trajectories separate three halting steps: the
    // first that does (halting_model refuses the others)
    for seed in seed..seed + 32 {
        let base = TrmModel::random(config.clone(), seed, 0.9).unwrap();
        let batch = random_batch(config, puzzles, seed);
        let picked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            halting_model(&base, &batch, config.halt_max_steps)
        }));
        if let Ok((model, steps)) = picked {
            eprintln!("seed {seed}: halting steps {steps:?}");
            return (model, batch);
        }
    }
    panic!("no seed gives a model that halts at three different steps")
}

/// Streams `batch` through `engine` with several slot counts and checks
/// every puzzle's outputs against `want` and the program's counters.
fn streams_match<E: SlotEngine + ?Sized>(
    label: &str,
    engine: &mut E,
    batch: &PuzzleBatch,
    want: &SolveOutput,
    options: &SolveOptions,
) {
    let config = engine.config().clone();
    let per_act = config.recursion_steps_per_act_step() as u64;
    let b = batch.len();
    for slots in [1, 3, b + 4] {
        let (got, stats) = program::solve_streaming(engine, batch, None, slots, options).unwrap();
        compare(&format!("{label}, {slots} slots"), &got, want);
        assert_eq!(stats.puzzles, b as u64);
        assert_eq!(stats.slots, slots.min(b) as u64);
        let total: u64 = want.steps.iter().map(|&s| u64::from(s)).sum();
        assert_eq!(stats.puzzle_recursion_steps, total * per_act, "{label}");
        let most = u64::from(*want.steps.iter().max().unwrap());
        if slots == 1 {
            // one puzzle at a time: every network call serves one puzzle
            assert_eq!(stats.recursion_steps, total * per_act, "{label}");
        }
        if slots >= b {
            // one batch: as long as the slowest puzzle
            assert_eq!(stats.recursion_steps, most * per_act, "{label}");
        }
    }
}

#[test]
fn cpu_streaming_equals_the_halting_solve() {
    for (name, config, seed) in [
        ("mlp", mlp(), 3),
        ("attention", attention(), 4),
        ("hrm", hrm(), 5),
    ] {
        let (model, batch) = halting_case(&config, seed, 7);
        let want = cpu_solve(&model, &batch, &halting());
        let mut engine = CpuEngine::with_threads(Arc::new(model), 2).unwrap();
        streams_match(name, &mut engine, &batch, &want, &halting());
        // each puzzle alone, too: the unbatched solve
        for i in [0, 6] {
            let one = engine.solve(&batch.slice(i..i + 1), &halting()).unwrap();
            assert_eq!(one.steps[0], want.steps[i], "{name} puzzle {i}");
            assert_eq!(one.puzzle_predictions(0), want.puzzle_predictions(i));
        }
    }
}

/// Puzzles that never halt leave after their last allowed ACT step, and a
/// solve without early halting streams too (every puzzle runs them all).
#[test]
fn cpu_streaming_stops_puzzles_at_the_last_act_step() {
    let config = mlp();
    let (model, batch) = halting_case(&config, 3, 7);
    let mut engine = CpuEngine::with_threads(Arc::new(model), 2).unwrap();
    for options in [halting().act_steps(2), SolveOptions::default().act_steps(3)] {
        let want = engine.solve(&batch, &options).unwrap();
        let most = options.act_steps.unwrap() as u32;
        assert!(want.steps.contains(&most), "{:?}", want.steps);
        streams_match("capped", &mut engine, &batch, &want, &options);
    }
}

/// Puzzles submitted while others run; results come as each finishes,
/// each the plain solve's, and a bad puzzle or zero slots are refused.
#[test]
fn a_stream_takes_puzzles_as_they_come() {
    let config = mlp();
    let (model, batch) = halting_case(&config, 3, 7);
    let want = cpu_solve(&model, &batch, &halting());
    let mut engine = CpuEngine::with_threads(Arc::new(model), 1).unwrap();
    assert!(matches!(
        Stream::new(&mut engine, 0, &halting()),
        Err(TrmError::Input(_))
    ));
    let mut stream = Stream::new(&mut engine, 2, &halting()).unwrap();
    assert!(stream.submit(&[0; 3], 0).is_err());
    assert!(matches!(
        stream.submit(&vec![99; config.seq_len], 0),
        Err(TrmError::TokenOutOfRange { .. })
    ));
    assert!(stream.submit(batch.puzzle_tokens(0), 7).is_err());
    let mut done = Vec::new();
    let mut next = 0;
    while next < batch.len() || !stream.is_idle() {
        // two puzzles arrive before every ACT step
        for _ in 0..2 {
            if next < batch.len() {
                let t = stream
                    .submit(batch.puzzle_tokens(next), batch.puzzle_ids()[next])
                    .unwrap();
                assert_eq!(t, next as u64);
                next += 1;
            }
        }
        done.extend(stream.step().unwrap());
    }
    assert_eq!(done.len(), batch.len());
    for finished in done {
        let i = finished.ticket as usize;
        let out = &finished.output;
        assert_eq!(out.steps[0], want.steps[i], "puzzle {i}");
        assert_eq!(out.puzzle_predictions(0), want.puzzle_predictions(i));
    }
}

/// The trained sudoku-easy model and its sample puzzles.
fn sudoku_easy(limit: usize) -> (Arc<TrmModel>, PuzzleBatch) {
    let dir = common::repo_dir().join("data/sudoku-easy");
    let model = Arc::new(TrmModel::load(dir.join("model.safetensors")).unwrap());
    let text = std::fs::read_to_string(dir.join("puzzles.txt")).unwrap();
    let puzzles = Grid::parse_many(&text).unwrap();
    let tokens: Vec<u32> = puzzles
        .iter()
        .take(limit)
        .flat_map(|p| p.tokens())
        .collect();
    let batch = PuzzleBatch::new(model.config(), &tokens, None).unwrap();
    (model, batch)
}

/// Network calls of fixed batches of `size` puzzles with early halting:
/// each batch runs as long as its slowest puzzle.
fn fixed_batch_calls(steps: &[u32], size: usize, per_act: u64) -> u64 {
    steps
        .chunks(size)
        .map(|c| u64::from(*c.iter().max().unwrap()) * per_act)
        .sum()
}

/// The same answers and steps as the plain halting solve, logits within
/// rounding (the trained model's logits are large: relative to them).
fn same_answers(label: &str, got: &SolveOutput, want: &SolveOutput) {
    assert_eq!(got.steps, want.steps, "{label}: steps");
    assert_eq!(got.predictions(), want.predictions(), "{label}: answers");
    common::assert_close(
        &format!("{label} logits"),
        &got.logits,
        &want.logits,
        1e-5,
        1e-3,
    );
}

/// The "done when" of continuous batching, on the CPU: 16 slots give every
/// sample puzzle its halting solve's outputs in at most half the network
/// calls that fixed batches of 16 with early halting need.
#[test]
fn sudoku_easy_streams_in_half_the_network_calls() {
    let (model, batch) = sudoku_easy(100);
    let per_act = model.config().recursion_steps_per_act_step() as u64;
    let mut engine = CpuEngine::new(model).unwrap();
    let want = engine.solve(&batch, &halting()).unwrap();
    let (got, stats) = program::solve_streaming(&mut engine, &batch, None, 16, &halting()).unwrap();
    same_answers("16 slots", &got, &want);
    let fixed = fixed_batch_calls(&want.steps, 16, per_act);
    eprintln!(
        "streaming: {} network calls ({} puzzle calls, {:.2} puzzles/s); fixed batches of 16: {fixed}",
        stats.recursion_steps, stats.puzzle_recursion_steps, stats.puzzles_per_second
    );
    assert!(
        2 * stats.recursion_steps <= fixed,
        "{stats:?} against {fixed}"
    );
}

#[test]
fn gpu_streaming_equals_the_halting_solve() {
    for (name, config, seed) in [("mlp", mlp(), 3), ("hrm", hrm(), 5)] {
        let (model, batch) = halting_case(&config, seed, 5);
        let want = cpu_solve(&model, &batch, &halting());
        let Some(engines) = gpu::engines(&model) else {
            return;
        };
        for (schedule, mut engine) in engines {
            let label = format!("{name}, {schedule}");
            // the device's own fast path first, then the program's slots
            compare(&label, &engine.solve(&batch, &halting()).unwrap(), &want);
            streams_match(&label, &mut engine, &batch, &want, &halting());
        }
    }
}

#[test]
fn gpu_streaming_of_attention_and_capped_steps() {
    let (model, batch) = halting_case(&attention(), 4, 5);
    let options = halting().act_steps(3);
    let want = cpu_solve(&model, &batch, &options);
    let Some(mut engine) = gpu::engine(&model) else {
        return;
    };
    streams_match("attention, 3 steps", &mut engine, &batch, &want, &options);
    // a refill writes into the slot's region on the device; nothing of the
    // state is read back but the outputs of the puzzles that finished
    let (_, stats) = program::solve_streaming(&mut engine, &batch, None, 2, &options).unwrap();
    let gpu = engine.last_stats();
    assert_eq!(gpu.recursion_steps, stats.recursion_steps);
    assert_eq!(gpu.puzzle_recursion_steps, stats.puzzle_recursion_steps);
    // a device that holds fewer puzzles than the slots asked for: the
    // stream runs on the slots it has
    let mut small = engine.with_run_options(
        trm_wgpu::GpuRunOptions::default()
            .poison(true)
            .max_chunk_puzzles(2),
    );
    let (got, stats) = program::solve_streaming(&mut small, &batch, None, 4, &options).unwrap();
    assert_eq!(stats.slots, 2);
    compare("attention, a device of 2 puzzles", &got, &want);
}

/// The trained model on lavapipe, a subset of the sample puzzles.
#[test]
fn gpu_sudoku_easy_streams_like_the_cpu() {
    let (model, batch) = sudoku_easy(12);
    let mut cpu = CpuEngine::new(model.clone()).unwrap();
    let want = cpu.solve(&batch, &halting()).unwrap();
    let Some(context) = gpu::context() else {
        return;
    };
    let mut engine = gpu::engine_on(&context, &model);
    let (got, stats) = program::solve_streaming(&mut engine, &batch, None, 4, &halting()).unwrap();
    eprintln!("{stats:?}");
    same_answers("gpu, 4 slots", &got, &want);
}

/// The first `limit` sample puzzles as a `trm run` input file: its
/// directory, its path and the model's.
fn sample_input(limit: usize) -> (PathBuf, PathBuf, PathBuf) {
    let (model, batch) = sudoku_easy(limit);
    let dir = common::temp_dir("slots");
    let input = dir.join("puzzles.safetensors");
    let tokens: Vec<i32> = batch.tokens().iter().map(|&t| t as i32).collect();
    let bytes = common::safetensors_bytes(
        &[common::RawTensor::i32(
            "inputs",
            vec![batch.len(), model.config().seq_len],
            &tokens,
        )],
        None,
    );
    std::fs::write(&input, bytes).unwrap();
    let model_path = common::repo_dir().join("data/sudoku-easy/model.safetensors");
    (dir, input, model_path)
}

/// The steps of a `trm run` output file.
fn output_steps(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensor("steps").unwrap().data().to_vec()
}

/// `trm run --backend gpu --halt --slots 3` gives the sample puzzles
/// the steps and answers of the CPU's `trm run --halt`.
#[test]
fn trm_run_slots_on_the_gpu() {
    if gpu::context().is_none() {
        return;
    }
    let (dir, input, model_path) = sample_input(8);
    let run = |tag: &str, extra: &[&str]| -> PathBuf {
        let output = dir.join(format!("{tag}.safetensors"));
        let mut args = vec![
            "run",
            "--model",
            model_path.to_str().unwrap(),
            "-i",
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
            "--halt",
        ];
        args.extend_from_slice(extra);
        let out = common::trm_env(&args, &[("TRM_POISON_GPU", "1")]);
        assert!(
            out.status.success(),
            "{tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        output
    };
    let cpu = run("cpu", &[]);
    let gpu = run("gpu", &["--backend", "gpu", "--slots", "3"]);
    assert_eq!(output_steps(&gpu), output_steps(&cpu));
    let logits = |p: &Path| common::read_output_f32(&std::fs::read(p).unwrap(), "logits").1;
    common::assert_close(
        "gpu streamed logits",
        &logits(&gpu),
        &logits(&cpu),
        1e-5,
        1e-3,
    );
}

/// `trm run --halt --slots 16` on the 100 sample puzzles: every puzzle's
/// outputs as `trm run --halt` gives them, in at most half the network
/// calls of `--batch 16`; `--slots 0` and `--slots` without `--halt` are
/// refused.
#[test]
fn trm_run_slots_on_the_sample_puzzles() {
    let (dir, input, model_path) = sample_input(100);
    let run = |tag: &str, extra: &[&str]| -> (Vec<u8>, serde_json::Value) {
        let output = dir.join(format!("{tag}.safetensors"));
        let mut args = vec![
            "run",
            "--model",
            model_path.to_str().unwrap(),
            "-i",
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
            "--halt",
            "--stats",
        ];
        args.extend_from_slice(extra);
        let out = common::trm(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stats: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        eprintln!("{tag}: {stats}");
        (std::fs::read(&output).unwrap(), stats)
    };
    let (plain, _) = run("plain", &[]);
    let (fixed, fixed_stats) = run("fixed", &["--batch", "16"]);
    let (streamed, stream_stats) = run("streamed", &["--slots", "16"]);
    let steps = |bytes: &[u8]| {
        let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
        file.tensor("steps").unwrap().data().to_vec()
    };
    assert_eq!(steps(&streamed), steps(&plain));
    assert_eq!(steps(&fixed), steps(&plain));
    let logits = |bytes: &[u8]| common::read_output_f32(bytes, "logits").1;
    common::assert_close(
        "streamed logits",
        &logits(&streamed),
        &logits(&plain),
        1e-5,
        1e-3,
    );
    let calls = |s: &serde_json::Value| s["recursion_steps"].as_u64().unwrap();
    assert!(2 * calls(&stream_stats) <= calls(&fixed_stats));
    assert_eq!(stream_stats["puzzles"], 100);
    assert!(stream_stats["puzzles_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(
        stream_stats["puzzle_recursion_steps"],
        fixed_stats["puzzle_recursion_steps"]
    );

    let refused = common::trm(&[
        "run",
        "--model",
        model_path.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "-o",
        dir.join("x.safetensors").to_str().unwrap(),
        "--halt",
        "--slots",
        "0",
    ]);
    common::assert_one_error_line(&refused, "--slots");
    let no_halt = common::trm(&[
        "run",
        "--model",
        model_path.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "-o",
        dir.join("x.safetensors").to_str().unwrap(),
        "--slots",
        "4",
    ]);
    assert!(!no_halt.status.success());
    assert!(!String::from_utf8_lossy(&no_halt.stderr).contains("panicked"));
}

/// An engine whose every operation fails once, on its `at`-th call: what a
/// device that errs now and then does to the program.
struct FailOnce<E> {
    inner: E,
    at: usize,
    calls: std::collections::HashMap<&'static str, usize>,
    failures: usize,
}

impl<E> FailOnce<E> {
    fn new(inner: E, at: usize) -> Self {
        FailOnce {
            inner,
            at,
            calls: std::collections::HashMap::new(),
            failures: 0,
        }
    }

    /// Fails the `at`-th call of `op`, before the engine does anything.
    fn call(&mut self, op: &'static str) -> trm_wgpu::Result<()> {
        let n = self.calls.entry(op).or_insert(0);
        *n += 1;
        if *n == self.at {
            self.failures += 1;
            return Err(TrmError::Gpu(format!("{op} failed (once, on purpose)")));
        }
        Ok(())
    }
}

impl<E: Engine> Engine for FailOnce<E> {
    fn config(&self) -> &TrmConfig {
        self.inner.config()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn solve_from(
        &mut self,
        batch: &PuzzleBatch,
        carry: Option<&trm_wgpu::Carry>,
        options: &SolveOptions,
    ) -> trm_wgpu::Result<SolveOutput> {
        self.inner.solve_from(batch, carry, options)
    }
}

impl<E: SlotEngine> SlotEngine for FailOnce<E> {
    fn open_slots(&mut self, slots: usize) -> trm_wgpu::Result<usize> {
        self.call("open_slots")?;
        self.inner.open_slots(slots)
    }

    fn fill_slots(&mut self, fills: &[program::Fill<'_>]) -> trm_wgpu::Result<()> {
        self.call("fill_slots")?;
        self.inner.fill_slots(fills)
    }

    fn move_slot(&mut self, from: usize, to: usize) -> trm_wgpu::Result<()> {
        self.call("move_slot")?;
        self.inner.move_slot(from, to)
    }

    async fn act_steps(
        &mut self,
        occupied: usize,
        run: program::ActRun,
    ) -> trm_wgpu::Result<program::ActReport> {
        self.call("act_steps")?;
        self.inner.act_steps(occupied, run).await
    }

    fn add_noise(
        &mut self,
        slot: usize,
        state: trm_wgpu::noise::State,
        draw: &trm_wgpu::noise::NoiseDraw,
    ) -> trm_wgpu::Result<()> {
        self.call("add_noise")?;
        self.inner.add_noise(slot, state, draw)
    }

    async fn read_slots(&mut self, slots: &[usize], carry: bool) -> trm_wgpu::Result<SolveOutput> {
        self.call("read_slots")?;
        self.inner.read_slots(slots, carry).await
    }
}

/// A stream whose engine fails once at each operation, each step retried:
/// every puzzle comes back exactly once with the outputs of a stream that
/// never failed, bit for bit (no ACT step repeated, no noise added twice,
/// no puzzle lost or duplicated), with early halting and refills, and with
/// noise between the steps.
#[test]
fn a_stream_survives_an_engine_that_fails_once_at_each_operation() {
    let config = mlp();
    let (model, batch) = halting_case(&config, 3, 7);
    let model = Arc::new(model);
    let noisy = SolveOptions::default().noise(trm_wgpu::noise::NoiseOptions {
        sigma: 0.3,
        seed: 11,
        on: trm_wgpu::noise::NoiseOn::Both,
        trajectories: 1,
    });
    for (label, options) in [("halting", halting()), ("noise", noisy)] {
        let mut clean = CpuEngine::with_threads(Arc::clone(&model), 1).unwrap();
        let (want, _) = program::solve_streaming(&mut clean, &batch, None, 3, &options).unwrap();
        for at in [1, 2, 3] {
            let engine = CpuEngine::with_threads(Arc::clone(&model), 1).unwrap();
            let mut failing = FailOnce::new(engine, at);
            let mut retries = 0;
            let mut stream = loop {
                match Stream::new(&mut failing, 3, &options) {
                    Ok(stream) => break stream,
                    Err(_) => retries += 1,
                }
            };
            for i in 0..batch.len() {
                stream
                    .submit(batch.puzzle_tokens(i), batch.puzzle_ids()[i])
                    .unwrap();
            }
            let mut got: Vec<Option<SolveOutput>> = vec![None; batch.len()];
            while !stream.is_idle() {
                match stream.step() {
                    Ok(done) => {
                        for finished in done {
                            let slot = &mut got[finished.ticket as usize];
                            assert!(slot.is_none(), "{label}: puzzle {} twice", finished.ticket);
                            *slot = Some(finished.output);
                        }
                    }
                    Err(e) => {
                        retries += 1;
                        assert!(e.to_string().contains("on purpose"), "{e}");
                    }
                }
                assert!(
                    retries < 100,
                    "{label}: the stream does not get past a failure"
                );
            }
            drop(stream);
            assert_eq!(retries, failing.failures, "{label}, at {at}");
            // every operation called `at` times failed once: fills,
            // steps and reads at least, the noise too with noise
            let reached = failing.calls.values().filter(|&&n| n >= at).count();
            assert_eq!(failing.failures, reached, "{label}: {:?}", failing.calls);
            assert!(failing.failures >= 3, "{label}: {:?}", failing.calls);
            // the puzzles in ticket order, as one output
            let mut whole: Option<SolveOutput> = None;
            for (i, out) in got.into_iter().enumerate() {
                let out = out.unwrap_or_else(|| panic!("{label}: puzzle {i} never came back"));
                match &mut whole {
                    None => whole = Some(out),
                    Some(w) => w.append(out).unwrap(),
                }
            }
            assert_eq!(whole.unwrap(), want, "{label}, failing at call {at}");
        }
    }
}
