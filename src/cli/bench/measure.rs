//! Measuring `trm bench`'s rows: a time box of growing runs of recursion
//! steps, the CPU rows, and the GPU rows of an adapter's engine, which is
//! checked against the CPU engine on the shape timed before it is timed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use trm_wgpu::check::{self, CheckModel};
use trm_wgpu::gpu::{AdapterReport, GpuStats};
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::{
    CpuEngine, CpuOptions, GpuBackend, GpuContext, GpuEngine, GpuOptions, GpuRunOptions,
    GpuSchedule, PuzzleBatch, Result, TrmConfig, TrmModel,
};

use super::report::{GpuRow, Timed};
use super::{Bench, BenchArgs};

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

/// The GPU engine of one adapter, kept for all its rows.
pub(super) struct Gpu {
    pub(super) report: AdapterReport,
    pub(super) engine: GpuEngine,
    base: GpuRunOptions,
    /// Schedules (as resolved) that have run once on this engine.
    warmed: HashSet<GpuSchedule>,
    pub(super) capacity: usize,
    /// Whether the adapter passed the check of the timed shape
    /// ([`Gpu::check`]), once run.
    checked: Option<bool>,
}

impl Gpu {
    pub(super) fn new(
        report: &AdapterReport,
        model: &Arc<TrmModel>,
        args: &BenchArgs,
    ) -> Result<Self> {
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
    ///
    /// The one place that asks the library what a GPU row measures
    /// (`GpuEngine::time_recursion_steps`) and the lane widths the kernels
    /// reached (`GpuEngine::lane_widths`): every GPU row and `--tune` time
    /// through here.
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
    pub(super) fn warms_up(
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

    pub(super) fn label(&self) -> String {
        format!("{} ({})", self.report.name, self.report.api)
    }

    /// `trm check` on the shape timed: a random model of `model`'s
    /// configuration and precision with one recursion of each network (the
    /// same kernels and pipelines as the timed model), both schedules, one
    /// ACT step, against the CPU engine. Failures are reported on stderr
    /// and mark the adapter's rows.
    pub(super) fn check(&mut self, model: &TrmModel) -> Result<bool> {
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

impl Bench<'_> {
    /// The CPU rows: runs of recursion steps on a resident batch, through
    /// `CpuEngine::recursion_steps`, at each of the CPU's batches.
    pub(super) fn cpu(&mut self) -> Result<()> {
        let mut options = CpuOptions::default()
            .activations(self.args.activations)
            .with_env()?;
        options.threads = self.args.threads;
        let engine = CpuEngine::with_options(self.model.clone(), options)?;
        let name = format!("{} ({} threads)", cpu_name(), engine.threads());
        self.cpu_activations = Some((
            self.args.activations.to_string(),
            Some(engine.kernel_family().to_string()),
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
                // the kernel family the products ran on
                engine.kernel_family().into(),
                batch_size,
                timed,
                None,
            );
            self.emit(row);
        }
        Ok(())
    }

    /// Times one GPU row and emits it; returns what was timed.
    pub(super) fn gpu_row(
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
        let row = self.row(
            "gpu",
            gpu.report.name.clone(),
            gpu.report.driver.clone(),
            gpu.report.api.clone(),
            batch_size,
            timed,
            Some(GpuRow {
                stats: &stats,
                requested: schedule,
                spread_below,
                checked: gpu.checked,
            }),
        );
        self.emit(row);
        Ok(timed)
    }
}
