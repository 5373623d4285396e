//! Timing a run of recursion steps, for `trm bench` and the criterion
//! benches: a unit finer than an ACT step, so that a software adapter
//! (seconds per step at the official size) still gives a figure within a
//! time box.
//!
//! The steps are recorded exactly as a solve records them (in the ACT
//! pattern of `act_step_calls`; each a fused call's segments or the spread
//! schedule's phases, as the engine's schedule resolves for the batch),
//! after the puzzles took a solve's path onto the device, into one compute
//! pass. Where the device has timestamp queries, the pass's start
//! and end are stamped, so the GPU time excludes submission and the wait.

use std::time::Duration;

use web_time::Instant;

use super::chunk::Chunk;
use super::engine::GpuEngine;
use super::record::{Active, Staging, Stamps};
use crate::batch::PuzzleBatch;
use crate::error::{Result, TrmError};
use crate::program::{Fill, SlotEngine, act_step_calls};

/// What [`GpuEngine::time_recursion_steps`] measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RecursionTiming {
    /// Network calls timed (not multiplied by the batch).
    pub steps: usize,
    /// Puzzles that ran each step.
    pub batch: usize,
    /// Host time from submission to completion.
    pub wall: Duration,
    /// GPU time between the pass's start and end timestamps, where the
    /// device has timestamp queries.
    pub gpu: Option<Duration>,
}

impl RecursionTiming {
    /// GPU time per recursion step (of the whole batch), where measured.
    pub fn gpu_per_step(&self) -> Option<Duration> {
        self.gpu.map(|t| t / self.steps.max(1) as u32)
    }
}

impl GpuEngine {
    /// Runs `steps` network calls on `batch` (from its embedding and the
    /// initial carry) and times them. Fails when the batch exceeds what one
    /// run of this device holds (time a smaller batch instead).
    pub fn time_recursion_steps(
        &mut self,
        batch: &PuzzleBatch,
        steps: usize,
    ) -> Result<RecursionTiming> {
        super::context::block_on(
            "GpuEngine::time_recursion_steps_async",
            self.time_recursion_steps_async(batch, steps),
        )
    }

    /// [`GpuEngine::time_recursion_steps`], async (the web's way). The
    /// puzzles take the path a solve's do: slots opened and filled by the
    /// solve program's operations, the run begun as a solve's run begins
    /// (the embedding untimed), then `steps` network calls in the ACT
    /// pattern ([`act_step_calls`], repeated), each recorded as a solve
    /// records it, in one timed submission.
    pub async fn time_recursion_steps_async(
        &mut self,
        batch: &PuzzleBatch,
        steps: usize,
    ) -> Result<RecursionTiming> {
        let config = self.model.config().clone();
        let n = batch.len();
        let capacity = self.chunk_capacity()?;
        if n > capacity || n == 0 {
            return Err(TrmError::Input(format!(
                "timing runs one chunk: {n} puzzles given, this device holds 1 to {capacity}"
            )));
        }
        let opened = self.open_slots(n)?;
        if opened < n {
            return Err(TrmError::Input(format!(
                "timing runs one chunk: {n} puzzles given, a run of this device holds {opened}"
            )));
        }
        let fills: Vec<Fill<'_>> = (0..n)
            .map(|i| Fill {
                slot: i,
                tokens: batch.puzzle_tokens(i),
                puzzle_id: batch.puzzle_ids()[i],
                carry: None,
            })
            .collect();
        self.fill_slots(&fills)?;
        let Some(chunk) = self.chunk.take() else {
            return Err(TrmError::Gpu("the chunk buffers are missing".into()));
        };
        let result = self.time_chunk(&chunk, n, steps, &config).await;
        self.chunk = Some(chunk);
        self.finish_stats();
        result
    }

    async fn time_chunk(
        &mut self,
        chunk: &Chunk,
        n: usize,
        steps: usize,
        config: &crate::config::TrmConfig,
    ) -> Result<RecursionTiming> {
        // the embedding first, untimed
        let mut ops = self.begin_run(chunk, n, false)?;
        let embedded = self.submit(chunk, &mut ops, &[])?;
        self.ctx.wait_async(Some(embedded)).await?;
        self.stats.host_waits += 1;
        self.step_groups.clear();

        let calls = act_step_calls(config).collect::<Vec<_>>();
        let pattern = calls.iter().copied().cycle().take(steps);
        Self::push_calls(&mut ops, pattern, Active::Known(n as u32));
        let stamps = self.stamps()?;
        let start = Instant::now();
        let submission =
            self.submit_with(chunk, &mut ops, &[], Staging::Results, stamps.as_ref())?;
        self.ctx.wait_async(Some(submission)).await?;
        self.stats.host_waits += 1;
        let wall = start.elapsed();
        let gpu = match &stamps {
            Some(stamps) => Some(self.read_stamps(stamps).await?),
            None => None,
        };
        Ok(RecursionTiming {
            steps,
            batch: n,
            wall,
            gpu,
        })
    }

    /// Timestamp queries, where the device has them.
    pub(super) fn stamps(&self) -> Result<Option<Stamps>> {
        if !self
            .ctx
            .device()
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return Ok(None);
        }
        let device = self.ctx.device();
        let set = self.ctx.scoped("creating timestamp queries", || {
            device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("trm step timing"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            })
        })?;
        use wgpu::BufferUsages as U;
        let resolve = self.ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: 16,
            usage: U::QUERY_RESOLVE | U::COPY_SRC,
            mapped_at_creation: false,
        })?;
        let read = self.ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps read"),
            size: 16,
            usage: U::MAP_READ | U::COPY_DST,
            mapped_at_creation: false,
        })?;
        Ok(Some(Stamps { set, resolve, read }))
    }

    pub(super) async fn read_stamps(&self, stamps: &Stamps) -> Result<Duration> {
        let (send, receiver) = super::context::map_channel();
        self.ctx.scoped("mapping the timestamps", || {
            stamps.read.map_async(wgpu::MapMode::Read, 0..16, send)
        })?;
        let mapped = self
            .ctx
            .read_mapped(None, receiver, "the timestamps")
            .await?;
        if let Err(e) = mapped {
            return Err(TrmError::Gpu(format!(
                "the timestamps could not be read: {e}"
            )));
        }
        let ticks = {
            let view = stamps
                .read
                .get_mapped_range(0..16)
                .map_err(|e| TrmError::Gpu(format!("reading the timestamps: {e}")))?;
            let start = u64::from_le_bytes(view[0..8].try_into().unwrap_or([0; 8]));
            let end = u64::from_le_bytes(view[8..16].try_into().unwrap_or([0; 8]));
            end.saturating_sub(start)
        };
        stamps.read.unmap();
        let period = self.ctx.queue().get_timestamp_period() as f64;
        Ok(Duration::from_secs_f64(ticks as f64 * period * 1e-9))
    }
}
