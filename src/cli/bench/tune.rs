//! `trm bench --tune`: the crossover batch size of the GPU schedules on
//! one adapter, the smallest batch where fused is at least as fast as
//! spread, searched by measuring both.

use std::time::{Duration, Instant};

use trm_wgpu::{GpuSchedule, Result};

use super::measure::Gpu;
use super::report::{Timed, Tune, TunePoint};
use super::{Bench, fits, linear_estimate};

/// Default time box of a --tune row.
const TUNE_ROW: Duration = Duration::from_secs(1);

impl Bench<'_> {
    /// `--tune` on one adapter: both schedules at growing batch sizes until
    /// fused is at least as fast as spread, then halving the gap to the
    /// last batch spread won; within `end`.
    pub(super) fn tune(&mut self, gpu: &mut Gpu, end: Instant) -> Result<()> {
        let timestamps = gpu.report.timestamp_queries;
        let mut sizes: Vec<usize> = if self.args.batch.is_empty() {
            self.gpu_curve(gpu)
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
            let row_box = this.row_box(left, 16, TUNE_ROW);
            let estimate = linear_estimate(last, b);
            if let Some(e) = estimate
                && !fits(e, left)
            {
                return Ok(None);
            }
            let half = estimate.map(|e| e / 2);
            let spread = this.gpu_row(gpu, b, GpuSchedule::Spread, row_box, half)?;
            let fused = this.gpu_row(gpu, b, GpuSchedule::Fused, row_box, half)?;
            // by GPU timestamps, unless either schedule lacks them
            let by_wall = spread.gpu.is_none() || fused.gpu.is_none();
            let per_step = |t: &Timed| {
                t.ms_per_step(if by_wall {
                    t.wall
                } else {
                    t.gpu.unwrap_or(t.wall)
                })
            };
            used_wall |= by_wall;
            let (f, s) = (per_step(&fused), per_step(&spread));
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
        self.print_tune(&tune, &gpu.label());
        Ok(())
    }
}
