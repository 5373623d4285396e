//! `trm bench`: recursion throughput of every available backend (the CPU,
//! and the GPU engine on each adapter found) on the official Sudoku-Extreme
//! shape or any checkpoint, time-boxed, as a table or JSON rows, and
//! optionally drawn as a curve (`--plot`) or turned into the crossover
//! batch size of the GPU schedules (`--tune`).
//!
//! Both engines are timed on the same unit, runs of recursion steps (network
//! calls) on a resident batch: the CPU through `CpuEngine::recursion_steps`,
//! the GPU through `GpuEngine::time_recursion_steps` (the dispatches of a
//! solve, one submission, plus the GPU time between timestamps where the
//! adapter has them). A run of one step is the smallest unit, so even a
//! software adapter, at seconds per step, gives a figure within the box.
//!
//! By default the GPU rows are a curve: batch 1, 2, 4, ... up to what one
//! chunk of the device holds, each adapter and schedule given its share of
//! the run's time box (`--budget`), and the curve stops growing once one run
//! of the next batch, estimated from the last row's time per step growing
//! linearly with the batch, would not fit in what is left of that share.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use trm_wgpu::check::{self, CheckModel};
use trm_wgpu::gpu::{AdapterReport, GpuStats, list_adapters};
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::{
    ActivationPrecision, CpuEngine, CpuOptions, GpuBackend, GpuContext, GpuEngine, GpuOptions,
    GpuRunOptions, GpuSchedule, PuzzleBatch, Result, TrmConfig, TrmError, TrmModel,
};
use trm_wgpu::{Arch, Precision};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Backends, comma-separated: cpu, gpu (every adapter found), vulkan,
    /// metal, dx12, gl (every adapter of that API). Default: cpu and every
    /// adapter that can run the model (with --tune: every adapter).
    #[arg(long, value_delimiter = ',')]
    backend: Vec<String>,
    /// Batch sizes, comma-separated. Default: 1,8 on the CPU; on a GPU the
    /// curve 1, 2, 4, ... up to what one chunk of the device holds (or
    /// --max-batch), grown while the time box lasts.
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
    /// Checkpoint to measure instead of the random Sudoku-Extreme shape.
    #[arg(long, conflicts_with = "arch")]
    model: Option<PathBuf>,
    /// The random model's family: trm (the paper's Sudoku-Extreme TRM-MLP)
    /// or hrm (HRM at its published shape: D = 512, 8 heads, RoPE,
    /// H_layers = L_layers = 4, H_cycles = L_cycles = 2, S = 81 + 1).
    #[arg(long, default_value = "trm")]
    arch: Arch,
    /// ACT steps a puzzle runs, for the puzzles/s column (default: the
    /// model's halt_max_steps, 16 for Sudoku-Extreme).
    #[arg(long)]
    act_steps: Option<usize>,
    /// Time box per row in seconds (default: with --batch, the run's
    /// budget shared by all rows, at most 6 s a row; else at most 3 s a CPU
    /// row, 2 s a GPU row, 1 s a --tune row). A row always completes one run.
    #[arg(long)]
    seconds: Option<f64>,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// GPU schedules, comma-separated: fused, spread, auto (default auto:
    /// the engine picks by batch size; each row names what ran).
    #[arg(long, value_delimiter = ',')]
    schedule: Vec<GpuSchedule>,
    /// One JSON object per row instead of a table (with --tune, one
    /// {"tune": ...} object per adapter after its rows).
    #[arg(long)]
    json: bool,
    /// The largest batch of the GPU curve (default: what one chunk of the
    /// device holds).
    #[arg(long)]
    max_batch: Option<usize>,
    /// Time box of the whole run in seconds (default 45), shared by the
    /// CPU rows and every adapter and schedule: a GPU curve stops growing
    /// once one run of its next batch would not fit in its share.
    #[arg(long)]
    budget: Option<f64>,
    /// With the auto schedule, run spread below this batch size and fused
    /// from it (default: the engine's guess for the adapter; --tune
    /// measures it).
    #[arg(long)]
    spread_below: Option<usize>,
    /// Measure both schedules on every GPU adapter at growing batch sizes
    /// and report the crossover: the smallest batch where fused is at least
    /// as fast as spread (by GPU timestamps where the adapter has them, else
    /// by wall time).
    #[arg(long, conflicts_with_all = ["schedule", "spread_below"])]
    tune: bool,
    /// Draw net calls per second against batch size into this SVG file,
    /// one line per backend, adapter and schedule.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Weight precisions, comma-separated: f32, f16, bf16, int8 (default:
    /// the model's own). With several, every row is measured at each and a
    /// table of net calls/s against the first precision follows.
    #[arg(long, value_delimiter = ',')]
    precision: Vec<Precision>,
    /// What the CPU engine's products multiply the weights with: f32, or
    /// matched (int8 weights: per-token int8 activations on integer
    /// products).
    #[arg(long, default_value_t)]
    activations: ActivationPrecision,
}

/// One measured row.
#[derive(Serialize, Debug)]
struct Row {
    /// The model family timed (`trm`, `hrm`).
    arch: String,
    /// The weights' precision (`f32`, `f16`, `bf16`, `int8`).
    precision: String,
    /// CPU rows: the activations asked for (`f32`, `matched`) and the
    /// integer kernel, when the products ran on one.
    #[serde(skip_serializing_if = "Option::is_none")]
    activations: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    int8_kernel: Option<String>,
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
    /// Whether the reductions used subgroup shuffles (GPU rows).
    subgroups: Option<bool>,
    /// The lane widths the kernels reached, as they measured them (GPU
    /// rows; `GpuEngine::lane_widths`).
    lanes: Option<trm_wgpu::gpu::LaneWidths>,
    /// GPU rows: whether the adapter passed `trm check` on the shape timed
    /// (`passed` or `failed`: the device computes it wrong, and the row's
    /// speed is of wrong answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<String>,
    /// The schedule asked for (`auto`, `fused`, `spread`; GPU rows).
    schedule_requested: Option<String>,
    /// With `auto`: batches below this ran spread, others fused.
    spread_below: Option<usize>,
}

/// What `--tune` found on one adapter.
#[derive(Serialize, Debug)]
struct Tune {
    adapter: String,
    driver: String,
    api: String,
    /// `gpu timestamps` or `wall`: what the schedules were compared by.
    timer: &'static str,
    /// The smallest batch measured where fused was at least as fast as
    /// spread; `None` when spread was faster at every batch measured.
    crossover: Option<usize>,
    /// The largest batch measured.
    measured_up_to: usize,
    /// The engine's own guess (`GpuEngine::crossover`).
    engine_guess: usize,
    /// Milliseconds per recursion step of the whole batch, per schedule.
    points: Vec<TunePoint>,
}

#[derive(Serialize, Debug)]
struct TunePoint {
    batch: usize,
    fused_ms_per_step: f64,
    spread_ms_per_step: f64,
}

/// What a row runs on.
enum Target {
    Cpu,
    Gpu(AdapterReport),
}

/// The default time box of the whole run, seconds: `trm bench` with no
/// arguments stays under a minute on a software GPU.
const DEFAULT_BUDGET_S: f64 = 45.0;
/// Default time box of a CPU row and of a GPU row on the curve.
const CPU_ROW: Duration = Duration::from_secs(3);
const GPU_ROW: Duration = Duration::from_secs(2);
const TUNE_ROW: Duration = Duration::from_secs(1);
/// A row is started only when this much more than its estimate is left.
const SAFETY: f64 = 1.25;

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
        let mut all = if args.tune {
            Vec::new()
        } else {
            vec![Target::Cpu]
        };
        all.extend(gpus(GpuBackend::Any));
        if all.is_empty() {
            return Err(TrmError::NoAdapter(
                "no GPU adapter found that can run the model: --tune compares the GPU schedules"
                    .into(),
            ));
        }
        return Ok(all);
    }
    let mut chosen = Vec::new();
    for name in &args.backend {
        if name.trim().eq_ignore_ascii_case("cpu") {
            if args.tune {
                return Err(TrmError::Input(
                    "--tune compares the GPU schedules: choose a GPU backend".into(),
                ));
            }
            chosen.push(Target::Cpu);
            continue;
        }
        let api: GpuBackend = name.parse()?;
        let found = gpus(api);
        if found.is_empty() {
            return Err(TrmError::NoAdapter(format!(
                "no GPU adapter found on `{name}` that can run the model"
            )));
        }
        chosen.extend(found);
    }
    Ok(chosen)
}

/// `value` seconds as a duration (a negative value as 0): finite.
fn seconds(value: f64, flag: &str) -> Result<Duration> {
    if !value.is_finite() {
        return Err(TrmError::Input(format!(
            "{flag} must be a number of seconds, not {value}"
        )));
    }
    // beyond a year is as good as unbounded, and keeps Instant + it safe
    Ok(Duration::from_secs_f64(value.clamp(0.0, 3.2e7)))
}

/// What a time box measured: steps run (not multiplied by the batch), wall
/// and GPU time.
#[derive(Clone, Copy, Debug)]
struct Timed {
    steps: u64,
    wall: Duration,
    gpu: Option<Duration>,
}

impl Timed {
    /// Wall time per step.
    fn wall_per_step(&self) -> Duration {
        self.wall.div_f64(self.steps.max(1) as f64)
    }
}

/// Runs `run(steps)` (which returns its wall and GPU time) with growing
/// step counts until the time box is spent, after one run of a step to warm
/// up when `warm_up`; always one timed run at least.
fn time_box(
    budget: Duration,
    warm_up: bool,
    mut run: impl FnMut(usize) -> Result<(Duration, Option<Duration>)>,
) -> Result<Timed> {
    if warm_up {
        run(1)?; // pipelines, caches
    }
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
    Ok(Timed { steps, wall, gpu })
}

/// The powers of two from 1 to `cap`.
fn curve(cap: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |b| b.checked_mul(2))
        .take_while(|&b| b <= cap.max(1))
        .collect()
}

/// The GPU engine of one adapter, kept for all its rows.
struct Gpu {
    report: AdapterReport,
    engine: GpuEngine,
    base: GpuRunOptions,
    /// Schedules (as resolved) that have run once on this engine.
    warmed: HashSet<GpuSchedule>,
    capacity: usize,
    /// Whether the adapter passed the check of the timed shape
    /// ([`Gpu::check`]), once run.
    checked: Option<bool>,
}

impl Gpu {
    fn new(report: &AdapterReport, model: &Arc<TrmModel>, args: &BenchArgs) -> Result<Self> {
        let api: GpuBackend = report.api.parse()?;
        let options = GpuOptions::default()
            .backend(api)
            .adapter_name(report.name.clone());
        let context = GpuContext::new(&options)?;
        let mut base = GpuRunOptions::default().with_env();
        if let Some(below) = args.spread_below {
            base = base.spread_below(below);
        }
        let engine = GpuEngine::new(&context, model.clone())?.with_run_options(base.clone());
        let capacity = engine.chunk_capacity()?;
        Ok(Gpu {
            report: report.clone(),
            engine,
            base,
            warmed: HashSet::new(),
            capacity,
            checked: None,
        })
    }

    /// Times `batch` under `schedule` for `budget`; warms up first unless
    /// the resolved schedule has run here and a step is expected to take a
    /// quarter of the box or more (one-time costs then weigh little).
    fn time(
        &mut self,
        batch: &PuzzleBatch,
        schedule: GpuSchedule,
        budget: Duration,
        estimate: Option<Duration>,
    ) -> Result<(Timed, GpuStats)> {
        let warm_up = self.warms_up(batch.len(), schedule, budget, estimate);
        let resolved = self.engine.resolve_schedule(batch.len());
        let engine = &mut self.engine;
        let timed = time_box(budget, warm_up, |steps| {
            let t = engine.time_recursion_steps(batch, steps)?;
            Ok((t.wall, t.gpu))
        })?;
        self.warmed.insert(resolved);
        let mut stats = self.engine.last_stats().clone();
        stats.lanes = self.engine.lane_widths()?;
        Ok((timed, stats))
    }

    /// Whether a run of `batch` under `schedule` warms up first: unless the
    /// resolved schedule has run here and a step (`estimate`) takes a
    /// quarter of the box or more. Sets the engine's schedule.
    fn warms_up(
        &mut self,
        batch: usize,
        schedule: GpuSchedule,
        budget: Duration,
        estimate: Option<Duration>,
    ) -> bool {
        self.engine
            .set_run_options(self.base.clone().schedule(schedule));
        let resolved = self.engine.resolve_schedule(batch);
        !self.warmed.contains(&resolved) || estimate.is_none_or(|e| e * 4 < budget)
    }

    fn label(&self) -> String {
        format!("{} ({})", self.report.name, self.report.api)
    }

    /// `trm check` on the shape timed: a random model of `model`'s
    /// configuration and precision with one recursion of each network (the
    /// same kernels and pipelines as the timed model), both schedules, one
    /// ACT step, against the CPU engine. Failures are reported on stderr
    /// and mark the adapter's rows.
    fn check(&mut self, model: &TrmModel) -> Result<bool> {
        let config = TrmConfig {
            h_cycles: 1,
            l_cycles: 1,
            halt_max_steps: 1,
            ..model.config().clone()
        };
        let random = TrmModel::random(config, 0xc4ec, 0.5)?.to_precision(model.precision())?;
        let model = CheckModel {
            label: format!("the timed shape ({})", model.precision()),
            model: Arc::new(random),
        };
        let (batch, reference) = check::cpu_reference(&model)?;
        let ctx = self.engine.context().clone();
        let mut passed = true;
        for schedule in [GpuSchedule::Fused, GpuSchedule::Spread] {
            let line =
                check::check_schedule(&ctx, &model, &batch, &reference, schedule, &self.base);
            if !line.passed {
                passed = false;
                eprintln!(
                    "warning: {} fails `trm check` on the shape timed: {}; its rows time wrong \
                     answers (run `trm check` and report it)",
                    self.label(),
                    line.describe()
                );
            }
        }
        self.checked = Some(passed);
        Ok(passed)
    }
}

/// The run: its model, time box and the rows measured so far.
struct Bench<'a> {
    args: &'a BenchArgs,
    model: Arc<TrmModel>,
    config: TrmConfig,
    act_steps: usize,
    /// FLOPs of one net call, and net calls of one puzzle.
    per_step: f64,
    per_puzzle: f64,
    deadline: Instant,
    budget: Duration,
    /// `--seconds`.
    row_seconds: Option<Duration>,
    /// Rows of the whole run with explicit `--batch` sizes.
    given_rows: usize,
    rows: Vec<Row>,
    /// Adapter labels, for the plot's title.
    adapters: Vec<String>,
    cpu_label: Option<String>,
    /// The CPU engine's activations and integer kernel (if any), for its
    /// rows.
    cpu_activations: Option<(String, Option<String>)>,
}

impl Bench<'_> {
    /// Time left in the run's box.
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The CPU's default batches.
    fn cpu_batches(&self) -> Vec<usize> {
        if !self.args.batch.is_empty() {
            return self.args.batch.clone();
        }
        let cap = self.args.max_batch.unwrap_or(usize::MAX);
        let mut batches: Vec<usize> = [1, 8].into_iter().filter(|&b| b <= cap).collect();
        if batches.is_empty() {
            batches.push(1);
        }
        batches
    }

    /// The time box of one row with explicit `--batch` sizes: `--seconds`,
    /// else 80% of the budget shared by all rows, at most 6 s.
    fn given_row_box(&self) -> Duration {
        match self.row_seconds {
            Some(s) => s,
            None => (self.budget.mul_f64(0.8) / self.given_rows.max(1) as u32)
                .min(Duration::from_secs(6)),
        }
    }

    /// The time box of a CPU row.
    fn cpu_row_box(&self) -> Duration {
        match (self.row_seconds, self.args.batch.is_empty()) {
            (Some(s), _) => s,
            (None, false) => self.given_row_box(),
            (None, true) => CPU_ROW.min(self.budget / 16),
        }
    }

    fn emit(&mut self, row: Row) {
        if self.args.json {
            println!("{}", serde_json::to_string(&row).unwrap_or_default());
        } else {
            // a device that fails the check times wrong answers: marked
            let backend = if row.check.as_deref() == Some("failed") {
                format!("{}!", row.backend)
            } else {
                row.backend.clone()
            };
            println!(
                "{:<7} {:<5} {:<40} {:<8} {:<8} {:>5} {:>12.2} {:>10.4} {:>9.1} {:>12} {:>14}",
                backend,
                row.precision,
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
        self.rows.push(row);
    }

    /// A row from what was timed.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        backend: &str,
        adapter: String,
        driver: String,
        api: String,
        batch: usize,
        timed: Timed,
        gpu: Option<(&GpuStats, GpuSchedule, Option<usize>)>,
    ) -> Row {
        let calls = timed.steps * batch as u64;
        let rate = calls as f64 / timed.wall.as_secs_f64().max(1e-12);
        let stats = gpu.map(|g| g.0);
        let cpu = self.cpu_activations.as_ref().filter(|_| backend == "cpu");
        Row {
            arch: self.config.arch.as_str().to_string(),
            precision: self.model.precision().to_string(),
            activations: cpu.map(|c| c.0.clone()),
            int8_kernel: cpu.and_then(|c| c.1.clone()),
            backend: backend.to_string(),
            adapter,
            driver,
            api,
            batch,
            net_calls_per_s: rate,
            puzzles_per_s: rate / self.per_puzzle,
            act_steps: self.act_steps,
            gflops: rate * self.per_step / 1e9,
            gpu_ms_per_step: timed
                .gpu
                .map(|g| g.as_secs_f64() * 1e3 / timed.steps.max(1) as f64),
            net_calls: calls,
            seconds: timed.wall.as_secs_f64(),
            schedule: stats.map_or("-".to_string(), |s| s.schedule.clone()),
            dispatches_per_net_call: stats.map(|s| s.dispatches_per_net_call),
            workgroups_per_dispatch: stats.map(|s| s.workgroups_per_dispatch.clone()),
            submits: stats.map(|s| s.submits),
            host_waits: stats.map(|s| s.host_waits),
            subgroups: stats.map(|s| s.subgroups),
            lanes: stats.map(|s| s.lanes),
            check: None,
            schedule_requested: gpu.map(|g| g.1.to_string()),
            spread_below: gpu.and_then(|g| g.2),
        }
    }

    fn cpu(&mut self) -> Result<()> {
        let mut options = CpuOptions::default().activations(self.args.activations);
        options.threads = self.args.threads;
        let engine = CpuEngine::with_options(self.model.clone(), options)?;
        let name = format!("{} ({} threads)", cpu_name(), engine.threads());
        self.cpu_activations = Some((
            self.args.activations.to_string(),
            engine.int8_kernel().map(|k| k.as_str().to_string()),
        ));
        self.cpu_label = Some(name.clone());
        let batches = self.cpu_batches();
        let row_box = self.cpu_row_box();
        for batch_size in batches {
            let batch = random_batch(&self.config, batch_size)?;
            let x = engine.embed(&batch)?;
            let mut state = x.clone();
            let timed = time_box(row_box, true, |steps| {
                let start = Instant::now();
                engine.recursion_steps(&mut state, &x, steps)?;
                Ok((start.elapsed(), None))
            })?;
            let row = self.row(
                "cpu",
                name.clone(),
                String::new(),
                // the integer kernel, where the products ran on one
                engine.int8_kernel().map_or("-", |k| k.as_str()).into(),
                batch_size,
                timed,
                None,
            );
            self.emit(row);
        }
        Ok(())
    }

    /// Times one GPU row and emits it; returns what was timed.
    fn gpu_row(
        &mut self,
        gpu: &mut Gpu,
        batch_size: usize,
        schedule: GpuSchedule,
        row_box: Duration,
        estimate: Option<Duration>,
    ) -> Result<Timed> {
        let batch = random_batch(&self.config, batch_size)?;
        let (timed, stats) = gpu.time(&batch, schedule, row_box, estimate)?;
        let spread_below = (schedule == GpuSchedule::Auto).then(|| {
            gpu.engine
                .run_options()
                .spread_below
                .unwrap_or_else(|| gpu.engine.crossover())
        });
        let mut row = self.row(
            "gpu",
            gpu.report.name.clone(),
            gpu.report.driver.clone(),
            gpu.report.api.clone(),
            batch_size,
            timed,
            Some((&stats, schedule, spread_below)),
        );
        row.check = gpu
            .checked
            .map(|passed| if passed { "passed" } else { "failed" }.to_string());
        self.emit(row);
        Ok(timed)
    }

    /// The GPU rows of one adapter; `slices` counts the shares of the time
    /// box not yet spent (one per adapter and schedule), `cpu_reserve` what
    /// the CPU rows still to come need.
    fn gpu(
        &mut self,
        report: &AdapterReport,
        slices: &mut usize,
        cpu_reserve: Duration,
    ) -> Result<()> {
        let schedules = if self.args.tune {
            Vec::new()
        } else if self.args.schedule.is_empty() {
            vec![GpuSchedule::Auto]
        } else {
            self.args.schedule.clone()
        };
        // the adapter's share: one slice per schedule (one for --tune)
        let own = schedules.len().max(1);
        let share = self.left().saturating_sub(cpu_reserve) * own as u32 / (*slices).max(1) as u32;
        let adapter_end = Instant::now() + share;
        let mut gpu = Gpu::new(report, &self.model, self.args)?;
        gpu.check(&self.model)?;
        self.adapters.push(gpu.label());
        if self.args.tune {
            *slices = slices.saturating_sub(1);
            return self.tune(&mut gpu, adapter_end);
        }
        if !self.args.batch.is_empty() {
            let row_box = self.given_row_box();
            for &b in &self.args.batch {
                for &schedule in &schedules {
                    self.gpu_row(&mut gpu, b, schedule, row_box, None)?;
                }
            }
            *slices = slices.saturating_sub(schedules.len());
            return Ok(());
        }
        let cap = gpu.capacity.min(self.args.max_batch.unwrap_or(usize::MAX));
        let sizes = curve(cap);
        for (i, &schedule) in schedules.iter().enumerate() {
            // this schedule's share: what is left of the adapter's, split
            // among its schedules still to run
            let end = Instant::now()
                + adapter_end.saturating_duration_since(Instant::now())
                    / (schedules.len() - i) as u32;
            let mut last: Option<(usize, Duration)> = None;
            for (j, &b) in sizes.iter().enumerate() {
                let left = end.saturating_duration_since(Instant::now());
                let row_box = self
                    .row_seconds
                    .unwrap_or_else(|| (left / (sizes.len() - j) as u32).min(GPU_ROW));
                let estimate = last.map(|(pb, per_step)| per_step.mul_f64(b as f64 / pb as f64));
                if let Some(e) = estimate {
                    let runs = if gpu.warms_up(b, schedule, row_box, Some(e)) {
                        2
                    } else {
                        1
                    };
                    if (e * runs).mul_f64(SAFETY) > left {
                        break;
                    }
                }
                let timed = self.gpu_row(&mut gpu, b, schedule, row_box, estimate)?;
                last = Some((b, timed.wall_per_step()));
            }
            *slices = slices.saturating_sub(1);
        }
        Ok(())
    }

    /// `--tune` on one adapter: both schedules at growing batch sizes until
    /// fused is at least as fast as spread, then halving the gap to the
    /// last batch spread won; within `end`.
    fn tune(&mut self, gpu: &mut Gpu, end: Instant) -> Result<()> {
        let timestamps = gpu.report.timestamp_queries;
        let cap = gpu.capacity.min(self.args.max_batch.unwrap_or(usize::MAX));
        let mut sizes: Vec<usize> = if self.args.batch.is_empty() {
            curve(cap)
        } else {
            let mut given = self.args.batch.clone();
            given.sort_unstable();
            given.dedup();
            given
        };
        sizes.retain(|&b| b <= gpu.capacity);
        let mut points: Vec<TunePoint> = Vec::new();
        let mut used_wall = !timestamps;
        // time per step of both schedules at the last batch measured
        let mut last: Option<(usize, Duration)> = None;
        let mut measure = |this: &mut Self, gpu: &mut Gpu, b: usize| -> Result<Option<bool>> {
            let left = end.saturating_duration_since(Instant::now());
            let row_box = this
                .row_seconds
                .unwrap_or_else(|| (left / 16).min(TUNE_ROW));
            let estimate = last.map(|(pb, both)| both.mul_f64(b as f64 / pb as f64));
            if let Some(e) = estimate
                && e.mul_f64(SAFETY) > left
            {
                return Ok(None);
            }
            let half = estimate.map(|e| e / 2);
            let spread = this.gpu_row(gpu, b, GpuSchedule::Spread, row_box, half)?;
            let fused = this.gpu_row(gpu, b, GpuSchedule::Fused, row_box, half)?;
            let per_step = |t: &Timed, by_wall: bool| {
                let total = if by_wall {
                    t.wall
                } else {
                    t.gpu.unwrap_or(t.wall)
                };
                total.as_secs_f64() * 1e3 / t.steps.max(1) as f64
            };
            let by_wall = spread.gpu.is_none() || fused.gpu.is_none();
            used_wall |= by_wall;
            let (f, s) = (per_step(&fused, by_wall), per_step(&spread, by_wall));
            points.push(TunePoint {
                batch: b,
                fused_ms_per_step: f,
                spread_ms_per_step: s,
            });
            last = Some((b, fused.wall_per_step() + spread.wall_per_step()));
            Ok(Some(f <= s))
        };
        let mut crossover = None;
        let mut spread_won = 0;
        for &b in &sizes {
            match measure(self, gpu, b)? {
                None => break,
                Some(true) => {
                    crossover = Some(b);
                    break;
                }
                Some(false) => spread_won = b,
            }
        }
        // between powers of two: halve the gap while the box lasts
        if let Some(mut hi) = crossover
            && self.args.batch.is_empty()
        {
            let mut lo = spread_won;
            while lo > 0 && hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                match measure(self, gpu, mid)? {
                    None => break,
                    Some(true) => hi = mid,
                    Some(false) => lo = mid,
                }
            }
            crossover = Some(hi);
        }
        points.sort_by_key(|p| p.batch);
        let tune = Tune {
            adapter: gpu.report.name.clone(),
            driver: gpu.report.driver.clone(),
            api: gpu.report.api.clone(),
            timer: if used_wall { "wall" } else { "gpu timestamps" },
            crossover,
            measured_up_to: points.iter().map(|p| p.batch).max().unwrap_or(0),
            engine_guess: gpu.engine.crossover(),
            points,
        };
        if self.args.json {
            println!("{}", serde_json::json!({ "tune": tune }));
        } else {
            let by = format!(
                "by {}; the engine guesses {}",
                tune.timer, tune.engine_guess
            );
            match tune.crossover {
                Some(n) => println!(
                    "crossover: {}: spread below {n}, fused from {n} ({by}; --spread-below {n} uses it)",
                    gpu.label()
                ),
                None => println!(
                    "crossover: {}: not reached, spread faster at every batch up to {}: spread below more than {} ({by})",
                    gpu.label(),
                    tune.measured_up_to,
                    tune.measured_up_to
                ),
            }
        }
        Ok(())
    }
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let base = Arc::new(match &args.model {
        Some(path) => TrmModel::load(path)?,
        None => {
            let config = match args.arch {
                Arch::Trm => TrmConfig::sudoku_extreme(),
                Arch::Hrm => TrmConfig::hrm_sudoku_extreme(),
            };
            TrmModel::random(config, 0x7e57, 1.0)?
        }
    });
    let precisions = if args.precision.is_empty() {
        vec![base.precision()]
    } else {
        args.precision.clone()
    };
    let model = Arc::new(base.to_precision(precisions[0])?);
    let config = model.config().clone();
    let act_steps = args.act_steps.unwrap_or(config.halt_max_steps);
    if act_steps == 0 || args.batch.contains(&0) || args.max_batch == Some(0) {
        return Err(TrmError::Input(
            "--act-steps, --batch and --max-batch must be positive".into(),
        ));
    }
    let row_seconds = args.seconds.map(|s| seconds(s, "--seconds")).transpose()?;
    let budget = seconds(args.budget.unwrap_or(DEFAULT_BUDGET_S), "--budget")?;
    let deadline = Instant::now() + budget;
    if let Some(path) = &args.plot {
        // fail now rather than after the run
        std::fs::File::create(path).map_err(|source| TrmError::Io {
            path: path.clone(),
            source,
        })?;
    }
    let targets = targets(&args)?;
    let model_name = args.model.as_ref().map_or(
        match args.arch {
            Arch::Trm => "random weights, Sudoku-Extreme shape",
            Arch::Hrm => "random weights, HRM at its published Sudoku-Extreme shape",
        }
        .to_string(),
        |p| p.display().to_string(),
    );
    let per_step = config.flops_per_recursion_step() as f64;
    let per_puzzle = (act_steps * config.recursion_steps_per_act_step()) as f64;
    let puzzle_flops = act_steps as f64 * config.flops_per_act_step() as f64;
    let shape = format!(
        "{}, D = {}, S = {}, {:.3} GFLOP per net call, {} net calls per puzzle at {} ACT steps, {:.1} GFLOP per puzzle",
        config.arch.as_str(),
        config.hidden_size,
        config.state_len(),
        per_step / 1e9,
        per_puzzle,
        act_steps,
        puzzle_flops / 1e9
    );
    if !args.json {
        println!("model: {model_name} ({shape})");
        println!(
            "{:<7} {:<5} {:<40} {:<8} {:<8} {:>5} {:>12} {:>10} {:>9} {:>12} {:>14}",
            "backend",
            "prec",
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
    let mut bench = Bench {
        args: &args,
        model,
        config,
        act_steps,
        per_step,
        per_puzzle,
        deadline,
        budget,
        row_seconds,
        given_rows: 0,
        rows: Vec::new(),
        adapters: Vec::new(),
        cpu_label: None,
        cpu_activations: None,
    };
    let schedules = if args.tune {
        1
    } else {
        args.schedule.len().max(1)
    } * precisions.len();
    let mut slices = targets
        .iter()
        .filter(|t| matches!(t, Target::Gpu(_)))
        .count()
        * schedules;
    let cpu_rows = bench.cpu_batches().len();
    bench.given_rows = targets
        .iter()
        .map(|t| match t {
            Target::Cpu => args.batch.len(),
            Target::Gpu(_) => args.batch.len() * schedules,
        })
        .sum::<usize>()
        * precisions.len();
    let mut cpu_targets_left =
        targets.iter().filter(|t| matches!(t, Target::Cpu)).count() * precisions.len();
    for (i, &precision) in precisions.iter().enumerate() {
        if i > 0 {
            bench.model = Arc::new(base.to_precision(precision)?);
        }
        for target in &targets {
            match target {
                Target::Cpu => {
                    bench.cpu()?;
                    cpu_targets_left -= 1;
                }
                Target::Gpu(report) => {
                    let reserve =
                        (bench.cpu_row_box() * (cpu_rows * cpu_targets_left) as u32).mul_f64(1.3);
                    bench.gpu(report, &mut slices, reserve)?;
                }
            }
        }
    }
    if precisions.len() > 1 && !args.json {
        print_precision_ratios(&bench.rows, precisions[0]);
    }
    if let Some(path) = &args.plot {
        let name = args
            .model
            .as_ref()
            .and_then(|p| p.file_name())
            .map_or(model_name.clone(), |n| n.to_string_lossy().into_owned());
        let title = format!(
            "trm bench: {name} (D = {}, S = {}, {:.3} GFLOP per net call)",
            bench.config.hidden_size,
            bench.config.state_len(),
            per_step / 1e9
        );
        let mut on: Vec<String> = bench.cpu_label.iter().cloned().collect();
        on.extend(bench.adapters.iter().map(|a| format!("GPU {a}")));
        plot(path, &bench.rows, &title, &on.join("; "))?;
        if !args.json {
            println!("plot: {}", path.display());
        }
    }
    Ok(())
}

/// Net calls per second of each precision over the first one's, for every
/// row measured at both (same backend, adapter, schedule and batch).
fn print_precision_ratios(rows: &[Row], reference: Precision) {
    let key = |r: &Row| {
        (
            r.backend.clone(),
            r.adapter.clone(),
            r.schedule.clone(),
            r.batch,
        )
    };
    println!("\nnet calls/s against {reference} (same backend, adapter, schedule, batch):");
    for row in rows.iter().filter(|r| r.precision != reference.as_str()) {
        if let Some(base) = rows
            .iter()
            .find(|b| b.precision == reference.as_str() && key(b) == key(row))
        {
            println!(
                "  {:<7} {:<8} batch {:>5}: {:<5} {:>6.2}x ({:.2} vs {:.2})",
                row.backend,
                row.schedule,
                row.batch,
                row.precision,
                row.net_calls_per_s / base.net_calls_per_s.max(1e-12),
                row.net_calls_per_s,
                base.net_calls_per_s
            );
        }
    }
}

/// Draws net calls per second against batch size (both on log axes), one
/// line per backend, adapter and requested schedule; a circle marks a
/// point that ran fused (or on the CPU), a triangle one that ran spread.
fn plot(path: &Path, rows: &[Row], title: &str, subtitle: &str) -> Result<()> {
    use plotters::prelude::*;

    let fail = |e: &dyn std::fmt::Display| TrmError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("drawing the plot: {e}")),
    };
    // series in the order of their first row
    let mut series: Vec<(String, Vec<&Row>)> = Vec::new();
    for row in rows {
        let label = match &row.schedule_requested {
            Some(schedule) => format!("{} {} ({}), {schedule}", row.backend, row.adapter, row.api),
            None => format!("{} {}", row.backend, row.adapter),
        };
        match series.iter_mut().find(|(l, _)| *l == label) {
            Some((_, points)) => points.push(row),
            None => series.push((label, vec![row])),
        }
    }
    for (_, points) in &mut series {
        points.sort_by_key(|r| r.batch);
    }
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    let (mut y0, mut y1) = (f64::MAX, f64::MIN);
    for row in rows {
        x0 = x0.min(row.batch as f64);
        x1 = x1.max(row.batch as f64);
        let y = row.net_calls_per_s.max(1e-6);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if rows.is_empty() {
        (x0, x1, y0, y1) = (1.0, 2.0, 1.0, 10.0);
    }
    // one label per power of two (a log range labels only its bold
    // points when asked for no more than ten times as many)
    let powers = (x1.max(x0 * 2.0) / x0).log2().ceil() as usize + 1;
    let (x0, x1) = (x0 / 1.25, x1.max(x0 * 2.0) * 1.25);
    // whole decades, so that the log axis has two labels at least
    let decade = |y: f64, round: fn(f64) -> f64| 10f64.powf(round(y.log10()));
    let (y0, y1) = (decade(y0 / 1.2, f64::floor), decade(y1 * 1.2, f64::ceil));

    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    // the legend below the chart, a line per series, so it hides no point
    let legend_height = 16 + 20 * series.len() as u32;
    let root = SVGBackend::new(path, (1000, 640 + legend_height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (top, rest) = root.split_vertically(70);
    let (body, legend) = rest.split_vertically(570);
    let font = |size: f64| ("sans-serif", size).into_font();
    // plotters' SVG text is drawn at size / 1.24
    top.draw(&Text::new(title.to_string(), (16, 14), font(21.0)))
        .map_err(|e| fail(&e))?;
    top.draw(&Text::new(subtitle.to_string(), (16, 44), font(16.0)))
        .map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&body)
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((x0..x1).log_scale().base(2.0), (y0..y1).log_scale())
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("batch size (puzzles); circle: fused or CPU, triangle: spread")
        .y_desc("net calls per second")
        .axis_desc_style(font(16.0))
        .label_style(font(15.0))
        .x_labels(powers)
        .x_label_formatter(&|x| format!("{}", x.round()))
        .y_label_formatter(&|y| {
            // decades: 1000, 10, 1, 0.1, 0.01
            let digits = (-y.log10()).ceil().max(0.0) as usize;
            format!("{y:.digits$}")
        })
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, (label, points)) in series.iter().enumerate() {
        let color = palette[i % palette.len()];
        let xy = |r: &&Row| (r.batch as f64, r.net_calls_per_s.max(1e-6));
        chart
            .draw_series(LineSeries::new(
                points.iter().map(xy),
                color.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?;
        let spread = |r: &&&Row| r.schedule == "spread";
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|r| !spread(r))
                    .map(|r| Circle::new(xy(r), 5, color.filled())),
            )
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(
                points
                    .iter()
                    .filter(spread)
                    .map(|r| TriangleMarker::new(xy(r), 7, color.filled())),
            )
            .map_err(|e| fail(&e))?;
        let y = 8 + 20 * i as i32;
        legend
            .draw(&Rectangle::new(
                [(88, y + 3), (108, y + 13)],
                color.filled(),
            ))
            .map_err(|e| fail(&e))?;
        legend
            .draw(&Text::new(label.clone(), (116, y), font(16.0)))
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
