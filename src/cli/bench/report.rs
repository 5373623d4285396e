//! What `trm bench` prints and writes: a row per measurement (a table line
//! or a JSON object), what `--tune` found, the table of precisions against
//! the first, and the plot. Every line it prints and every JSON field it
//! writes is here.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use trm_wgpu::gpu::{GpuStats, LaneWidths, WorkgroupSpread};
use trm_wgpu::{GpuSchedule, Precision, Result, TrmError};

use super::Bench;

/// What a time box measured: steps run (not multiplied by the batch), wall
/// and GPU time.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timed {
    pub(super) steps: u64,
    pub(super) wall: Duration,
    pub(super) gpu: Option<Duration>,
}

impl Timed {
    /// Wall time per step.
    pub(super) fn wall_per_step(&self) -> Duration {
        self.wall.div_f64(self.steps.max(1) as f64)
    }

    /// `total` (the wall or the GPU time of the steps run) per step, in
    /// milliseconds.
    pub(super) fn ms_per_step(&self, total: Duration) -> f64 {
        total.as_secs_f64() * 1e3 / self.steps.max(1) as f64
    }
}

/// One measured row.
#[derive(Serialize, Debug)]
pub(super) struct Row {
    /// The model family timed (`trm`, `hrm`).
    arch: String,
    /// The weights' precision (`f32`, `f16`, `bf16`, `int8`).
    precision: String,
    /// CPU rows: the activations asked for (`f32`, `matched`) and the
    /// kernel family the block products ran on (`CpuEngine::kernel_family`).
    #[serde(skip_serializing_if = "Option::is_none")]
    activations: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<String>,
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
    workgroups_per_dispatch: Option<WorkgroupSpread>,
    submits: Option<u64>,
    host_waits: Option<u64>,
    /// Whether the reductions used subgroup shuffles (GPU rows).
    subgroups: Option<bool>,
    /// The lane widths the kernels reached, as they measured them (GPU
    /// rows; `GpuEngine::lane_widths`).
    lanes: Option<LaneWidths>,
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

/// What a GPU row adds to what was timed.
pub(super) struct GpuRow<'a> {
    /// The engine's stats of the timed run, with the lane widths reached.
    pub(super) stats: &'a GpuStats,
    /// The schedule asked for.
    pub(super) requested: GpuSchedule,
    /// With `auto`: the batch from which it runs fused.
    pub(super) spread_below: Option<usize>,
    /// Whether the adapter passed the check of the timed shape, once run.
    pub(super) checked: Option<bool>,
}

/// What `--tune` found on one adapter.
#[derive(Serialize, Debug)]
pub(super) struct Tune {
    pub(super) adapter: String,
    pub(super) driver: String,
    pub(super) api: String,
    /// `gpu timestamps` or `wall`: what the schedules were compared by.
    pub(super) timer: &'static str,
    /// The smallest batch measured where fused was at least as fast as
    /// spread; `None` when spread was faster at every batch measured.
    pub(super) crossover: Option<usize>,
    /// The largest batch measured.
    pub(super) measured_up_to: usize,
    /// The engine's own guess (`GpuEngine::crossover`).
    pub(super) engine_guess: usize,
    /// Milliseconds per recursion step of the whole batch, per schedule.
    pub(super) points: Vec<TunePoint>,
}

#[derive(Serialize, Debug)]
pub(super) struct TunePoint {
    pub(super) batch: usize,
    pub(super) fused_ms_per_step: f64,
    pub(super) spread_ms_per_step: f64,
}

impl Bench<'_> {
    /// The model line and the table's header (nothing with `--json`);
    /// the columns are those of [`Bench::emit`].
    pub(super) fn print_header(&self, model_name: &str) {
        if self.args.json {
            return;
        }
        let config = &self.config;
        println!(
            "model: {model_name} ({}, D = {}, S = {}, {:.3} GFLOP per net call, {} net calls per puzzle at {} ACT steps, {:.1} GFLOP per puzzle)",
            config.arch.as_str(),
            config.hidden_size,
            config.state_len(),
            self.per_step / 1e9,
            self.per_puzzle,
            self.act_steps,
            self.act_steps as f64 * config.flops_per_act_step() as f64 / 1e9
        );
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

    /// Prints `row` (a table line, or a JSON object with `--json`) and
    /// keeps it for the summaries.
    pub(super) fn emit(&mut self, row: Row) {
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
    pub(super) fn row(
        &self,
        backend: &str,
        adapter: String,
        driver: String,
        api: String,
        batch: usize,
        timed: Timed,
        gpu: Option<GpuRow>,
    ) -> Row {
        let calls = timed.steps * batch as u64;
        let rate = calls as f64 / timed.wall.as_secs_f64().max(1e-12);
        let stats = gpu.as_ref().map(|g| g.stats);
        let cpu = self.cpu_activations.as_ref().filter(|_| backend == "cpu");
        Row {
            arch: self.config.arch.as_str().to_string(),
            precision: self.model.precision().to_string(),
            activations: cpu.map(|c| c.0.clone()),
            kernel: cpu.and_then(|c| c.1.clone()),
            backend: backend.to_string(),
            adapter,
            driver,
            api,
            batch,
            net_calls_per_s: rate,
            puzzles_per_s: rate / self.per_puzzle,
            act_steps: self.act_steps,
            gflops: rate * self.per_step / 1e9,
            gpu_ms_per_step: timed.gpu.map(|g| timed.ms_per_step(g)),
            net_calls: calls,
            seconds: timed.wall.as_secs_f64(),
            schedule: stats.map_or("-".to_string(), |s| s.schedule.clone()),
            dispatches_per_net_call: stats.map(|s| s.dispatches_per_net_call),
            workgroups_per_dispatch: stats.map(|s| s.workgroups_per_dispatch.clone()),
            submits: stats.map(|s| s.submits),
            host_waits: stats.map(|s| s.host_waits),
            subgroups: stats.map(|s| s.subgroups),
            lanes: stats.map(|s| s.lanes),
            check: gpu
                .as_ref()
                .and_then(|g| g.checked)
                .map(|passed| if passed { "passed" } else { "failed" }.to_string()),
            schedule_requested: gpu.as_ref().map(|g| g.requested.to_string()),
            spread_below: gpu.and_then(|g| g.spread_below),
        }
    }

    /// What `--tune` found on the adapter `label`: a `{"tune": ...}` object
    /// with `--json`, else a line.
    pub(super) fn print_tune(&self, tune: &Tune, label: &str) {
        if self.args.json {
            println!("{}", serde_json::json!({ "tune": tune }));
            return;
        }
        let by = format!(
            "by {}; the engine guesses {}",
            tune.timer, tune.engine_guess
        );
        match tune.crossover {
            Some(n) => println!(
                "crossover: {label}: spread below {n}, fused from {n} ({by}; --spread-below {n} uses it)"
            ),
            None => println!(
                "crossover: {label}: not reached, spread faster at every batch up to {}: spread below more than {} ({by})",
                tune.measured_up_to, tune.measured_up_to
            ),
        }
    }

    /// With several `--precision`s and no `--json`: net calls per second
    /// of each against the first.
    pub(super) fn print_precisions(&self, precisions: &[Precision]) {
        if precisions.len() > 1 && !self.args.json {
            print_precision_ratios(&self.rows, precisions[0]);
        }
    }

    /// Draws the rows measured into `path` (`--plot`), titled with the
    /// model and the devices it ran on.
    pub(super) fn write_plot(&self, path: &Path, model_name: &str) -> Result<()> {
        let name = self
            .args
            .model
            .as_ref()
            .and_then(|p| p.file_name())
            .map_or(model_name.to_string(), |n| n.to_string_lossy().into_owned());
        let title = format!(
            "trm bench: {name} (D = {}, S = {}, {:.3} GFLOP per net call)",
            self.config.hidden_size,
            self.config.state_len(),
            self.per_step / 1e9
        );
        let mut on: Vec<String> = self.cpu_label.iter().cloned().collect();
        on.extend(self.adapters.iter().map(|a| format!("GPU {a}")));
        plot(path, &self.rows, &title, &on.join("; "))?;
        if !self.args.json {
            println!("plot: {}", path.display());
        }
        Ok(())
    }
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
