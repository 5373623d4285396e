//! Recursion throughput, counted in network calls (one recursion step of one
//! puzzle): one recursion step, one ACT step and a whole solve, per backend,
//! at batch 1, 8 and 64.
//!
//! The CPU runs the official Sudoku-Extreme shape (D = 512, S = 97) for the
//! recursion step and the ACT step; whole solves (16 ACT steps, 410 GFLOP
//! per puzzle at full size) use the small golden shape (D = 64) so that a
//! run takes minutes, not hours.
//!
//! The GPU runs on the adapter `WGPU_BACKEND` / `WGPU_ADAPTER_NAME` choose:
//! a hardware adapter gets the full shape for steps and ACT steps and the
//! small one for solves; a software adapter (lavapipe, llvmpipe: under 2
//! GFLOP/s) gets a tiny shape (D = 32, S = 25, 2 ACT steps per solve)
//! throughout, so that the group finishes in minutes. Every GPU measurement
//! waits for the device inside the timed region, after a warm-up that
//! compiles the pipelines. Without an adapter the GPU groups are skipped.
//!
//! `cpu/recursion_step_precision/{f32,f16,bf16,int8}` time the CPU's
//! recursion step at the official shape at each weight precision, side by
//! side in one run (batch 1 and 8), and `.../{bf16,int8}-matched-FAMILY`
//! with matched activations on each kernel family the CPU has.
//!
//! `cargo bench --bench recursion` (add `-- cpu/` or `-- gpu/` to filter).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::{
    ActivationPrecision, CpuEngine, CpuOptions, Engine, GpuContext, GpuEngine, GpuOptions,
    KernelChoice, Precision, PuzzleBatch, SolveOptions, TrmConfig, TrmModel,
};

const BATCHES: [usize; 3] = [1, 8, 64];

/// The golden `sudoku_mlp_small` shape: Sudoku sizes with D = 64.
fn small_config() -> TrmConfig {
    TrmConfig {
        hidden_size: 64,
        puzzle_emb_ndim: 64,
        ..TrmConfig::sudoku_extreme()
    }
}

/// A shape lavapipe runs in milliseconds per step.
fn tiny_config() -> TrmConfig {
    TrmConfig {
        seq_len: 25,
        vocab_size: 7,
        hidden_size: 32,
        puzzle_emb_ndim: 0,
        puzzle_emb_len: 0,
        halt_max_steps: 2,
        ..TrmConfig::sudoku_extreme()
    }
}

fn random_batch(config: &TrmConfig, batch: usize) -> PuzzleBatch {
    let mut rng = SplitMix64::new(batch as u64);
    let tokens: Vec<i64> = (0..batch * config.seq_len)
        .map(|_| rng.below(config.vocab_size as u64) as i64)
        .collect();
    PuzzleBatch::new(config, &tokens, None).expect("valid batch")
}

fn random_state(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.normal() as f32).collect()
}

/// A group `name` of one benchmark per batch size in [`BATCHES`], each
/// counted as `calls_per_puzzle` network calls a puzzle, ten samples over
/// `seconds`. `bench(group, batch)` prepares what the batch size needs (a
/// batch, a warm-up) and adds its benchmark to the group.
fn over_batches(
    c: &mut Criterion,
    name: &str,
    seconds: u64,
    calls_per_puzzle: u64,
    mut bench: impl FnMut(&mut BenchmarkGroup<'_, WallTime>, usize),
) {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(seconds));
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64 * calls_per_puzzle));
        bench(&mut group, batch);
    }
    group.finish();
}

fn cpu(c: &mut Criterion) {
    let full = Arc::new(TrmModel::random(TrmConfig::sudoku_extreme(), 1, 1.0).expect("model"));
    let small = Arc::new(TrmModel::random(small_config(), 2, 0.5).expect("model"));
    let engine = CpuEngine::new(full.clone()).expect("engine");
    let config = full.config().clone();
    let sd = config.state_len() * config.hidden_size;
    let steps_per_act = config.recursion_steps_per_act_step() as u64;

    over_batches(c, "cpu/recursion_step", 5, 1, |group, batch| {
        let injection = random_state(batch * sd, 3);
        let mut state = random_state(batch * sd, 4);
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter(|| engine.recursion_step(&mut state, &injection).expect("step"))
        });
    });

    // each precision's recursion step, interleaved batch by batch so that
    // the machine's drift falls on all of them alike; bf16 and int8 with
    // matched activations too, on every kernel family this CPU has (AMX,
    // AVX-512 VNNI, AVX-VNNI), named by the family that ran
    let mut engines: Vec<(String, CpuEngine)> = Precision::ALL
        .into_iter()
        .map(|p| {
            let model = Arc::new(full.to_precision(p).expect("precision"));
            (
                p.as_str().to_string(),
                CpuEngine::new(model).expect("engine"),
            )
        })
        .collect();
    for (p, kernels) in [
        (Precision::Bf16, KernelChoice::Auto),
        (Precision::Int8, KernelChoice::Amx),
        (Precision::Int8, KernelChoice::Avx512Vnni),
        (Precision::Int8, KernelChoice::AvxVnni),
    ] {
        let model = Arc::new(full.to_precision(p).expect("precision"));
        let options = CpuOptions::default()
            .activations(ActivationPrecision::Matched)
            .kernels(kernels);
        if let Ok(engine) = CpuEngine::with_options(model, options) {
            engines.push((format!("{p}-matched-{}", engine.kernel_family()), engine));
        }
    }
    for batch in [1, 8] {
        let mut group = c.benchmark_group("cpu/recursion_step_precision");
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(5))
            .throughput(Throughput::Elements(batch as u64));
        let injection = random_state(batch * sd, 3);
        for (precision, engine) in &engines {
            let mut state = random_state(batch * sd, 4);
            group.bench_function(BenchmarkId::new(precision.as_str(), batch), |b| {
                b.iter(|| engine.recursion_step(&mut state, &injection).expect("step"))
            });
        }
        group.finish();
    }
    drop(engines);

    let mut engine = CpuEngine::new(full).expect("engine");
    over_batches(c, "cpu/act_step", 10, steps_per_act, |group, batch| {
        let puzzles = random_batch(&config, batch);
        let one = SolveOptions::default().act_steps(1);
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    engine.solve(&puzzles, &one).expect("solve");
                }
                start.elapsed()
            })
        });
    });

    let mut engine = CpuEngine::new(small.clone()).expect("engine");
    let config = small.config().clone();
    let steps = config.halt_max_steps as u64 * steps_per_act;
    over_batches(c, "cpu/solve_d64", 10, steps, |group, batch| {
        let puzzles = random_batch(&config, batch);
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter(|| {
                engine
                    .solve(&puzzles, &SolveOptions::default())
                    .expect("solve")
            })
        });
    });
}

fn gpu(c: &mut Criterion) {
    let context = match GpuOptions::default()
        .with_env()
        .and_then(|options| GpuContext::new(&options))
    {
        Ok(context) => context,
        Err(e) => {
            eprintln!("gpu benches skipped: {e}");
            return;
        }
    };
    let software = context.adapter_info().device_type == trm_wgpu::wgpu::DeviceType::Cpu;
    eprintln!("gpu benches on {}", context.describe());
    let (step_config, solve_config) = if software {
        (tiny_config(), tiny_config())
    } else {
        (TrmConfig::sudoku_extreme(), small_config())
    };
    let model = Arc::new(TrmModel::random(step_config.clone(), 1, 1.0).expect("model"));
    let mut engine = GpuEngine::new(&context, model).expect("engine");
    let steps_per_act = step_config.recursion_steps_per_act_step() as u64;

    over_batches(c, "gpu/recursion_step", 5, 1, |group, batch| {
        let puzzles = random_batch(&step_config, batch);
        engine.time_recursion_steps(&puzzles, 1).expect("warm-up");
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter_custom(|iters| {
                engine
                    .time_recursion_steps(&puzzles, iters as usize)
                    .expect("steps")
                    .wall
            })
        });
    });

    over_batches(c, "gpu/act_step", 10, steps_per_act, |group, batch| {
        let puzzles = random_batch(&step_config, batch);
        let one = SolveOptions::default().act_steps(1);
        engine.solve(&puzzles, &one).expect("warm-up");
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter(|| engine.solve(&puzzles, &one).expect("solve"))
        });
    });

    let model = Arc::new(TrmModel::random(solve_config.clone(), 2, 0.5).expect("model"));
    let mut engine = GpuEngine::new(&context, model).expect("engine");
    let name = if software {
        "gpu/solve_tiny"
    } else {
        "gpu/solve_d64"
    };
    let steps = solve_config.halt_max_steps as u64 * steps_per_act;
    over_batches(c, name, 10, steps, |group, batch| {
        let puzzles = random_batch(&solve_config, batch);
        engine
            .solve(&puzzles, &SolveOptions::default())
            .expect("warm-up");
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter(|| {
                engine
                    .solve(&puzzles, &SolveOptions::default())
                    .expect("solve")
            })
        });
    });
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
