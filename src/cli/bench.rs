//! `trm bench`: recursion throughput of every available backend (the CPU,
//! and the GPU engine on each adapter found) on the official Sudoku-Extreme
//! shape or any checkpoint, time-boxed, as a table or JSON rows.
//!
//! Both engines are timed on the same unit, runs of recursion steps (network
//! calls) on a resident batch: the CPU through `CpuEngine::recursion_steps`,
//! the GPU through `GpuEngine::time_recursion_steps` (the fused dispatches of
//! a solve, one submission, plus the GPU time between timestamps where the
//! adapter has them). A run of one step is the smallest unit, so even a
//! software adapter, at seconds per step, gives a figure within the box.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use trm_wgpu::gpu::{AdapterReport, list_adapters};
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::{
    CpuEngine, GpuBackend, GpuContext, GpuEngine, GpuOptions, GpuRunOptions, GpuSchedule,
    PuzzleBatch, Result, TrmConfig, TrmError, TrmModel,
};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Backends, comma-separated: cpu, gpu (every adapter found), vulkan,
    /// metal, dx12, gl (every adapter of that API). Default: cpu and every
    /// adapter that can run the model.
    #[arg(long, value_delimiter = ',')]
    backend: Vec<String>,
    /// Batch sizes, comma-separated (default 1,8; on software adapters 1).
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
    /// Checkpoint to measure instead of the random Sudoku-Extreme shape.
    #[arg(long)]
    model: Option<PathBuf>,
    /// ACT steps a puzzle runs, for the puzzles/s column (default: the
    /// model's halt_max_steps, 16 for Sudoku-Extreme).
    #[arg(long)]
    act_steps: Option<usize>,
    /// Time box per row in seconds (default: 40 s shared by all rows,
    /// at most 6 s a row). A row always completes one run.
    #[arg(long)]
    seconds: Option<f64>,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// GPU schedules, comma-separated: fused, spread, auto (default auto:
    /// the engine picks by batch size; each row names what ran).
    #[arg(long, value_delimiter = ',')]
    schedule: Vec<GpuSchedule>,
    /// One JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
}

/// One measured row.
#[derive(Serialize, Debug)]
struct Row {
    backend: String,
    adapter: String,
    driver: String,
    api: String,
    batch: usize,
    net_calls_per_s: f64,
    puzzles_per_s: f64,
    act_steps: usize,
    gflops: f64,
    /// GPU time of one recursion step of the whole batch, from timestamp
    /// queries, where the adapter has them.
    gpu_ms_per_step: Option<f64>,
    net_calls: u64,
    seconds: f64,
    /// The GPU schedule that ran (`fused` or `spread`), `-` for the CPU.
    schedule: String,
    /// Dispatches per network call, and their workgroups (GPU rows).
    dispatches_per_net_call: Option<u64>,
    workgroups_per_dispatch: Option<trm_wgpu::gpu::WorkgroupSpread>,
    submits: Option<u64>,
    host_waits: Option<u64>,
}

/// What a row runs on.
enum Target {
    Cpu,
    Gpu(AdapterReport),
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn random_batch(config: &TrmConfig, batch: usize) -> Result<PuzzleBatch> {
    let mut rng = SplitMix64::new(batch as u64);
    let tokens: Vec<i64> = (0..batch * config.seq_len)
        .map(|_| rng.below(config.vocab_size as u64) as i64)
        .collect();
    PuzzleBatch::new(config, &tokens, None)
}

fn targets(args: &BenchArgs) -> Result<Vec<Target>> {
    let gpus = |api: GpuBackend| -> Vec<Target> {
        list_adapters(api)
            .into_iter()
            .filter(AdapterReport::can_run)
            .map(Target::Gpu)
            .collect()
    };
    if args.backend.is_empty() {
        let mut all = vec![Target::Cpu];
        all.extend(gpus(GpuBackend::Any));
        return Ok(all);
    }
    let mut chosen = Vec::new();
    for name in &args.backend {
        if name.trim().eq_ignore_ascii_case("cpu") {
            chosen.push(Target::Cpu);
            continue;
        }
        let api: GpuBackend = name.parse()?;
        let found = gpus(api);
        if found.is_empty() {
            return Err(TrmError::NoAdapter(format!(
                " on `{name}` that can run the model"
            )));
        }
        chosen.extend(found);
    }
    Ok(chosen)
}

/// Runs `run(steps)` (which returns its wall and GPU time) with growing
/// step counts until the time box is spent; returns steps, wall, GPU time.
fn time_box(
    budget: Duration,
    mut run: impl FnMut(usize) -> Result<(Duration, Option<Duration>)>,
) -> Result<(u64, Duration, Option<Duration>)> {
    run(1)?; // warm up: pipelines, caches
    let (mut steps, mut wall, mut gpu) = (0u64, Duration::ZERO, Some(Duration::ZERO));
    let mut k = 1;
    let start = Instant::now();
    while steps == 0 || start.elapsed() < budget {
        let (w, g) = run(k)?;
        steps += k as u64;
        wall += w;
        gpu = gpu.zip(g).map(|(a, b)| a + b);
        if w < budget / 8 {
            k *= 2;
        }
    }
    Ok((steps, wall, gpu))
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let model = Arc::new(match &args.model {
        Some(path) => TrmModel::load(path)?,
        None => TrmModel::random(TrmConfig::sudoku_extreme(), 0x7e57, 1.0)?,
    });
    let config = model.config().clone();
    let act_steps = args.act_steps.unwrap_or(config.halt_max_steps);
    if act_steps == 0 || args.batch.contains(&0) {
        return Err(TrmError::Input(
            "--act-steps and --batch must be positive".into(),
        ));
    }
    let targets = targets(&args)?;
    let batches_for = |target: &Target| -> Vec<usize> {
        match (&args.batch[..], target) {
            ([], Target::Gpu(report)) if report.device_type == "Cpu" => vec![1],
            ([], _) => vec![1, 8],
            (given, _) => given.to_vec(),
        }
    };
    let schedules_for = |target: &Target| -> Vec<Option<GpuSchedule>> {
        match target {
            Target::Cpu => vec![None],
            Target::Gpu(_) if args.schedule.is_empty() => vec![Some(GpuSchedule::Auto)],
            Target::Gpu(_) => args.schedule.iter().copied().map(Some).collect(),
        }
    };
    let rows: usize = targets
        .iter()
        .map(|t| batches_for(t).len() * schedules_for(t).len())
        .sum();
    let budget = Duration::from_secs_f64(
        args.seconds
            .unwrap_or((40.0 / rows.max(1) as f64).min(6.0))
            .max(0.0),
    );
    let per_step = config.flops_per_recursion_step() as f64;
    let per_puzzle = (act_steps * config.recursion_steps_per_act_step()) as f64;
    if !args.json {
        println!(
            "model: {} (D = {}, S = {}, {:.3} GFLOP per net call, {} net calls per puzzle at {} ACT steps)",
            args.model
                .as_ref()
                .map_or("random weights, Sudoku-Extreme shape".to_string(), |p| p
                    .display()
                    .to_string()),
            config.hidden_size,
            config.state_len(),
            per_step / 1e9,
            per_puzzle,
            act_steps
        );
        println!(
            "{:<7} {:<40} {:<8} {:<8} {:>5} {:>12} {:>10} {:>9} {:>12} {:>14}",
            "backend",
            "adapter",
            "api",
            "schedule",
            "batch",
            "net calls/s",
            "puzzles/s",
            "GFLOP/s",
            "GPU ms/step",
            "workgroups"
        );
    }
    for target in &targets {
        for (batch_size, schedule) in batches_for(target)
            .into_iter()
            .flat_map(|b| schedules_for(target).into_iter().map(move |s| (b, s)))
        {
            let batch = random_batch(&config, batch_size)?;
            let mut stats = None;
            let (backend, adapter, driver, api, (calls, wall, gpu)) = match target {
                Target::Cpu => {
                    let engine = match args.threads {
                        Some(n) => CpuEngine::with_threads(model.clone(), n)?,
                        None => CpuEngine::new(model.clone())?,
                    };
                    let x = engine.embed(&batch);
                    let mut state = x.clone();
                    let timed = time_box(budget, |steps| {
                        let start = Instant::now();
                        engine.recursion_steps(&mut state, &x, steps)?;
                        Ok((start.elapsed(), None))
                    })?;
                    let name = format!("{} ({} threads)", cpu_name(), engine.threads());
                    ("cpu", name, String::new(), "-".to_string(), timed)
                }
                Target::Gpu(report) => {
                    let api: GpuBackend = report.api.parse()?;
                    let options = GpuOptions::default()
                        .backend(api)
                        .adapter_name(report.name.clone());
                    let context = GpuContext::new(&options)?;
                    let run_options = GpuRunOptions::default()
                        .schedule(schedule.unwrap_or_default())
                        .with_env();
                    let mut engine =
                        GpuEngine::new(&context, model.clone())?.with_run_options(run_options);
                    let timed = time_box(budget, |steps| {
                        let t = engine.time_recursion_steps(&batch, steps)?;
                        Ok((t.wall, t.gpu))
                    })?;
                    stats = Some(engine.last_stats().clone());
                    let name = report.name.clone();
                    (
                        "gpu",
                        name,
                        report.driver.clone(),
                        report.api.clone(),
                        timed,
                    )
                }
            };
            let rate = (calls * batch_size as u64) as f64 / wall.as_secs_f64();
            let row = Row {
                backend: backend.to_string(),
                adapter,
                driver,
                api,
                batch: batch_size,
                net_calls_per_s: rate,
                puzzles_per_s: rate / per_puzzle,
                act_steps,
                gflops: rate * per_step / 1e9,
                gpu_ms_per_step: gpu.map(|g| g.as_secs_f64() * 1e3 / calls.max(1) as f64),
                net_calls: calls * batch_size as u64,
                seconds: wall.as_secs_f64(),
                schedule: stats
                    .as_ref()
                    .map_or("-".to_string(), |s| s.schedule.clone()),
                dispatches_per_net_call: stats.as_ref().map(|s| s.dispatches_per_net_call),
                workgroups_per_dispatch: stats.as_ref().map(|s| s.workgroups_per_dispatch.clone()),
                submits: stats.as_ref().map(|s| s.submits),
                host_waits: stats.as_ref().map(|s| s.host_waits),
            };
            if args.json {
                println!("{}", serde_json::to_string(&row).unwrap_or_default());
            } else {
                println!(
                    "{:<7} {:<40} {:<8} {:<8} {:>5} {:>12.2} {:>10.4} {:>9.1} {:>12} {:>14}",
                    row.backend,
                    row.adapter.chars().take(40).collect::<String>(),
                    row.api,
                    row.schedule,
                    row.batch,
                    row.net_calls_per_s,
                    row.puzzles_per_s,
                    row.gflops,
                    row.gpu_ms_per_step
                        .map_or("-".to_string(), |ms| format!("{ms:.2}")),
                    row.workgroups_per_dispatch
                        .as_ref()
                        .map_or("-".to_string(), |w| format!(
                            "{}/{}/{}",
                            w.min, w.median, w.max
                        ))
                );
            }
        }
    }
    Ok(())
}
