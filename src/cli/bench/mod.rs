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
//!
//! Here: the arguments and the run, how its time box is shared among the
//! rows. [`measure`] times a row (and checks each adapter first), [`tune`]
//! searches the crossover, [`report`] prints and draws what was measured.

mod measure;
mod report;
mod tune;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use trm_wgpu::gpu::{AdapterReport, list_adapters};
use trm_wgpu::{
    ActivationPrecision, GpuBackend, GpuSchedule, PuzzleBatch, Result, TrmConfig, TrmError,
    TrmModel,
};
use trm_wgpu::{Arch, Precision};

use measure::Gpu;
use report::Row;

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
    /// once one run of its next batch would not fit in its share. Each
    /// adapter's correctness check (`trm check` on the shape timed) runs
    /// outside it.
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
    /// matched (int8 weights: int8 activations on integer products; bf16
    /// weights on a CPU with AMX: bf16 activations on AMX tiles).
    /// TRM_CPU_KERNEL=amx|avx512-vnni|avx-vnni|avx2|portable forces a kernel.
    #[arg(long, default_value_t)]
    activations: ActivationPrecision,
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
/// A row is started only when this much more than its estimate is left.
const SAFETY: f64 = 1.25;

/// Whether a run estimated to take `estimate` is started with `left` of
/// its share to go.
fn fits(estimate: Duration, left: Duration) -> bool {
    estimate.mul_f64(SAFETY) <= left
}

/// The time of a step at `batch`, from `last` (a batch measured and its
/// time per step), as growing linearly with the batch.
fn linear_estimate(last: Option<(usize, Duration)>, batch: usize) -> Option<Duration> {
    last.map(|(measured, per_step)| per_step.mul_f64(batch as f64 / measured as f64))
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

/// The schedules each adapter's rows run (`--schedule`, default auto);
/// none with `--tune`, which runs both as it needs them. Each takes one
/// share of the run's time box (`--tune` one in all).
fn gpu_schedules(args: &BenchArgs) -> Vec<GpuSchedule> {
    if args.tune {
        Vec::new()
    } else if args.schedule.is_empty() {
        vec![GpuSchedule::Auto]
    } else {
        args.schedule.clone()
    }
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

/// The powers of two from 1 to `cap`.
fn curve(cap: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |b| b.checked_mul(2))
        .take_while(|&b| b <= cap.max(1))
        .collect()
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
    /// The CPU engine's activations and kernel family, for its rows.
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

    /// The batches of a GPU curve: powers of two up to what one chunk of
    /// the device holds, or `--max-batch`.
    fn gpu_curve(&self, gpu: &Gpu) -> Vec<usize> {
        curve(gpu.capacity.min(self.args.max_batch.unwrap_or(usize::MAX)))
    }

    /// The time box of a row: `--seconds`, else `share` split among `rows`,
    /// at most `cap`.
    fn row_box(&self, share: Duration, rows: usize, cap: Duration) -> Duration {
        self.row_seconds
            .unwrap_or_else(|| (share / rows as u32).min(cap))
    }

    /// The time box of one row with explicit `--batch` sizes: `--seconds`,
    /// else 80% of the budget shared by all rows, at most 6 s.
    fn given_row_box(&self) -> Duration {
        self.row_box(
            self.budget.mul_f64(0.8),
            self.given_rows.max(1),
            Duration::from_secs(6),
        )
    }

    /// The time box of a CPU row.
    fn cpu_row_box(&self) -> Duration {
        if self.args.batch.is_empty() {
            self.row_box(self.budget, 16, CPU_ROW)
        } else {
            self.given_row_box()
        }
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
        let schedules = gpu_schedules(self.args);
        // the adapter's share: one slice per schedule (one for --tune)
        let own = schedules.len().max(1);
        let mut gpu = Gpu::new(report, &self.model, self.args)?;
        // the check is not timing: the time box starts after it (on a
        // software adapter it takes seconds the rows would otherwise lose)
        let checking = Instant::now();
        gpu.check(&self.model)?;
        self.deadline += checking.elapsed();
        let share = self.left().saturating_sub(cpu_reserve) * own as u32 / (*slices).max(1) as u32;
        let adapter_end = Instant::now() + share;
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
        let sizes = self.gpu_curve(&gpu);
        for (i, &schedule) in schedules.iter().enumerate() {
            // this schedule's share: what is left of the adapter's, split
            // among its schedules still to run
            let end = Instant::now()
                + adapter_end.saturating_duration_since(Instant::now())
                    / (schedules.len() - i) as u32;
            let mut last: Option<(usize, Duration)> = None;
            for (j, &b) in sizes.iter().enumerate() {
                let left = end.saturating_duration_since(Instant::now());
                let row_box = self.row_box(left, sizes.len() - j, GPU_ROW);
                let estimate = linear_estimate(last, b);
                if let Some(e) = estimate {
                    let runs = if gpu.warms_up(b, schedule, row_box, Some(e)) {
                        2
                    } else {
                        1
                    };
                    if !fits(e * runs, left) {
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
}

/// The random model of `--arch`, measured when no `--model` is given, and
/// how the run names it.
fn random_model(arch: Arch) -> (TrmConfig, &'static str) {
    match arch {
        Arch::Trm => (
            TrmConfig::sudoku_extreme(),
            "random weights, Sudoku-Extreme shape",
        ),
        Arch::Hrm => (
            TrmConfig::hrm_sudoku_extreme(),
            "random weights, HRM at its published Sudoku-Extreme shape",
        ),
    }
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let (random_config, random_name) = random_model(args.arch);
    let base = Arc::new(match &args.model {
        Some(path) => TrmModel::load(path)?,
        None => TrmModel::random(random_config, 0x7e57, 1.0)?,
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
    // a batch is held to the limit on an input's state, before it is made
    let limit = PuzzleBatch::max_state_bytes()?;
    for &batch in &args.batch {
        PuzzleBatch::check_state_bytes(&config, batch, limit, "--batch")?;
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
    let model_name = args
        .model
        .as_ref()
        .map_or(random_name.to_string(), |p| p.display().to_string());
    let per_step = config.flops_per_recursion_step() as f64;
    let per_puzzle = (act_steps * config.recursion_steps_per_act_step()) as f64;
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
    bench.print_header(&model_name);
    let schedules = gpu_schedules(&args).len().max(1) * precisions.len();
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
    bench.print_precisions(&precisions);
    if let Some(path) = &args.plot {
        bench.write_plot(path, &model_name)?;
    }
    Ok(())
}
