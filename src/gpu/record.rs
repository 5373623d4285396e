//! Recording: the commands of a run ([`Op`]: the embedding, network calls,
//! heads, halting) turned into the dispatches of the schedule that runs
//! (fused segments and slices, or the spread plan's phases), recorded into
//! one compute pass with the copies the host asks for, and submitted. The
//! host never waits here: read-backs are `readback.rs`'s.

use std::time::Duration;

use crate::error::{Result, TrmError};
use crate::program::Call;

use super::chunk::{Chunk, WORD};
use super::engine::GpuEngine;
use super::halt;
use super::layout::Workgroups;
use super::options::GpuSchedule;
use super::options::RecordedDispatch;
use super::spread::Dispatch;

/// One recorded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// Embed the first `n` puzzles of the chunk.
    Embed(u32),
    /// One network call for the active puzzles: the z update (injection
    /// y + x) or the y update (injection z).
    Step { y_update: bool, active: Active },
    /// Heads of the active puzzles.
    Heads(Active),
    /// Early halting on the device, after an ACT step's heads.
    Halt,
}

/// The puzzles a dispatch runs for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Active {
    /// The first n of the running list, as the host knows.
    Known(u32),
    /// As many as the device's running count (early halting on the
    /// device), which is at most `at_most`.
    OnDevice { at_most: u32 },
}

impl Active {
    /// The most puzzles it can be.
    pub fn at_most(self) -> u32 {
        match self {
            Active::Known(n) | Active::OnDevice { at_most: n } => n,
        }
    }
}

/// Where a submission's copies go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Staging {
    /// The current results buffer.
    Results,
    /// The current small buffer of the running count.
    Count,
}

impl Chunk {
    /// Staging buffer `slot` of the pair `staging` names.
    pub fn staging_buffer(&self, staging: Staging, slot: usize) -> &wgpu::Buffer {
        match staging {
            Staging::Results => &self.staging[slot],
            Staging::Count => &self.count_staging[slot],
        }
    }
}

/// A copy into the staging buffer.
pub(super) struct Copy<'a> {
    pub source: &'a wgpu::Buffer,
    /// Bytes from the source's start.
    pub offset: u64,
    pub bytes: u64,
}

/// Query set and buffers of the two timestamps of a pass.
pub(super) struct Stamps {
    pub(super) set: wgpu::QuerySet,
    pub(super) resolve: wgpu::Buffer,
    pub(super) read: wgpu::Buffer,
}

impl Stamps {
    /// The pass descriptor's writes: index 0 at the start, 1 at the end.
    pub(super) fn pass_writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// Resolves both stamps and copies them where the host can map them.
    pub(super) fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.set, 0..2, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.read, 0, 16);
    }
}

/// What one dispatch runs: the kernel and its parameter block and
/// workgroups (the schedule's choice made for an [`Op`]).
enum Planned<'a> {
    Embed(u32),
    Halt,
    Fused { offset: u32, groups: Workgroups<'a> },
    Heads { offset: u32, groups: Workgroups<'a> },
    Spread { offset: u32, dispatch: Dispatch },
}

impl Planned<'_> {
    fn log(&self) -> RecordedDispatch {
        let groups = |w: &Workgroups<'_>| match w {
            Workgroups::Fixed(n) => n.to_string(),
            Workgroups::Indirect(_, at) => format!("indirect at {at}"),
        };
        let (kernel, params_offset, workgroups) = match self {
            Planned::Embed(n) => ("embed", 0, n.to_string()),
            Planned::Halt => ("halt", 0, "1".to_string()),
            Planned::Fused { offset, groups: g } => ("fused step", *offset, groups(g)),
            Planned::Heads { offset, groups: g } => ("heads", *offset, groups(g)),
            Planned::Spread { offset, dispatch } => (
                dispatch.phase.name(),
                *offset,
                format!("{:?}", dispatch.grid()),
            ),
        };
        RecordedDispatch {
            kernel,
            params_offset,
            workgroups,
        }
    }
}

impl GpuEngine {
    /// The dispatches `ops` record under the running schedule, counted into
    /// the stats (dispatches, the network calls' workgroups).
    fn plan_dispatches<'c>(&mut self, chunk: &'c Chunk, ops: &[Op]) -> Result<Vec<Planned<'c>>> {
        let stride = self.params_stride;
        let spread = self.running == GpuSchedule::Spread;
        let groups = |active: Active, j: u32, n: u32| match active {
            Active::Known(_) => Workgroups::Fixed(n),
            Active::OnDevice { .. } => {
                Workgroups::Indirect(&chunk.control, halt::dispatch_offset(j))
            }
        };
        let mut planned = Vec::new();
        for &op in ops {
            match op {
                Op::Embed(n) => planned.push(Planned::Embed(n)),
                Op::Halt => planned.push(Planned::Halt),
                Op::Step { y_update, active } if spread => {
                    let plan = self.plan.as_ref().ok_or_else(|| {
                        TrmError::Gpu("the spread schedule runs without its plan".into())
                    })?;
                    if plan.batch != active.at_most() {
                        return Err(TrmError::Gpu(format!(
                            "the spread plan is for {} puzzles, the step for {}",
                            plan.batch,
                            active.at_most()
                        )));
                    }
                    // the z update's blocks, then the y update's, after the
                    // fused ones
                    let first = chunk.spread_first_block() as usize
                        + if y_update {
                            plan.call(false).blocks.len()
                        } else {
                            0
                        };
                    for (i, dispatch) in plan.call(y_update).dispatches.iter().enumerate() {
                        self.step_groups.push(dispatch.groups);
                        let offset = (first + i) as u32 * stride;
                        planned.push(Planned::Spread {
                            offset,
                            dispatch: *dispatch,
                        });
                    }
                }
                Op::Step { y_update, active } => {
                    for (j, n) in chunk.slices_of(active.at_most()) {
                        for i in 0..chunk.fused.segments(y_update).len() {
                            self.step_groups.push(n);
                            planned.push(Planned::Fused {
                                offset: chunk.fused.step(j, y_update, i) * stride,
                                groups: groups(active, j, n),
                            });
                        }
                    }
                }
                Op::Heads(active) => {
                    for (j, n) in chunk.slices_of(active.at_most()) {
                        for i in 0..chunk.fused.heads.len() {
                            planned.push(Planned::Heads {
                                offset: chunk.fused.heads(j, i) * stride,
                                groups: groups(active, j, n),
                            });
                        }
                    }
                }
            }
        }
        self.stats.dispatches += planned.len() as u64;
        if let Some(log) = &mut self.recorded {
            log.extend(planned.iter().map(Planned::log));
        }
        Ok(planned)
    }

    /// Records `ops` in one compute pass, then `copies` into the results
    /// staging buffer (back to back from offset 0), and submits.
    pub(super) fn submit(
        &mut self,
        chunk: &Chunk,
        ops: &mut Vec<Op>,
        copies: &[Copy<'_>],
    ) -> Result<wgpu::SubmissionIndex> {
        self.submit_with(chunk, ops, copies, Staging::Results, None)
    }

    /// [`GpuEngine::submit`], the copies going to `staging`, the pass's
    /// start and end stamped into `stamps` where given.
    pub(super) fn submit_with(
        &mut self,
        chunk: &Chunk,
        ops: &mut Vec<Op>,
        copies: &[Copy<'_>],
        staging: Staging,
        stamps: Option<&Stamps>,
    ) -> Result<wgpu::SubmissionIndex> {
        let ctx = self.ctx.clone();
        let target = chunk.staging_buffer(
            staging,
            match staging {
                Staging::Results => self.staging_slot,
                Staging::Count => self.staging_slot_count,
            },
        );
        let planned = self.plan_dispatches(chunk, ops)?;
        let resident = &self.resident;
        let spread = self.spread.as_ref();
        let index = ctx.scoped("recording and submitting the solve", || {
            let device = ctx.device();
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("trm solve"),
            });
            if !planned.is_empty() {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("trm recursion"),
                    timestamp_writes: stamps.map(Stamps::pass_writes),
                });
                for p in &planned {
                    match p {
                        Planned::Embed(n) => {
                            resident.embed.record(&mut pass, &chunk.embed_group, *n)
                        }
                        // any fused block: they all hold q_base, batch and the slices
                        Planned::Halt => resident.halt.record(&mut pass, &chunk.halt_group, 0),
                        Planned::Fused { offset, groups } => {
                            resident
                                .step
                                .record(&mut pass, &chunk.step_group, *offset, *groups)
                        }
                        Planned::Heads { offset, groups } => {
                            resident
                                .heads
                                .record(&mut pass, &chunk.heads_group, *offset, *groups)
                        }
                        Planned::Spread { offset, dispatch } => {
                            if let Some(kernels) = spread {
                                kernels.record_dispatch(
                                    &mut pass,
                                    &chunk.step_group,
                                    dispatch,
                                    *offset,
                                )
                            }
                        }
                    }
                }
            }
            if let Some(stamps) = stamps {
                stamps.resolve(&mut encoder);
            }
            let mut at = 0;
            for copy in copies {
                encoder.copy_buffer_to_buffer(copy.source, copy.offset, target, at, copy.bytes);
                at += copy.bytes;
            }
            ctx.queue().submit([encoder.finish()])
        })?;
        ops.clear();
        self.stats.submits += 1;
        Ok(index)
    }

    /// The ops of the network calls of one ACT step (`act_step_calls`) over
    /// `active` puzzles: what a solve records for each ACT step, and what
    /// `trm bench` times.
    pub(super) fn push_calls(ops: &mut Vec<Op>, calls: impl Iterator<Item = Call>, active: Active) {
        ops.extend(calls.map(|call| Op::Step {
            y_update: call == Call::Answer,
            active,
        }));
    }

    /// Submits `ops` (the first network call of a run, after its
    /// embedding) alone, waits for it and returns its device time: the
    /// span between the pass's timestamps where the adapter has them, else
    /// the wall clock from submission to completion (which counts the
    /// submission and the wait too, so errs on the long side).
    pub(super) async fn submit_timed(
        &mut self,
        chunk: &Chunk,
        ops: &mut Vec<Op>,
    ) -> Result<Duration> {
        let stamps = self.stamps()?;
        let start = web_time::Instant::now();
        let submission = self.submit_with(chunk, ops, &[], Staging::Results, stamps.as_ref())?;
        self.ctx.wait_async(Some(submission)).await?;
        self.stats.host_waits += 1;
        let wall = start.elapsed();
        Ok(match &stamps {
            Some(stamps) => self.read_stamps(stamps).await?,
            None => wall,
        })
    }

    /// Network calls a submission may hold when one took `call` of device
    /// time: as many as fit [`super::GpuRunOptions::max_submit_time`], at
    /// least one. Recorded in the stats.
    pub(super) fn calls_within_submit_time(&mut self, call: Duration) -> u64 {
        let fit = self.options.max_submit_time.as_secs_f64() / call.as_secs_f64().max(1e-9);
        let calls = (fit.floor() as u64).max(1);
        self.stats.measured_call_seconds = Some(call.as_secs_f64());
        self.stats.calls_per_submit = Some(calls);
        calls
    }
}

/// Copies of the same region of `source` for each of `puzzles` (chunk
/// puzzles, in the order read), `words` words from `at(p)` each, merged
/// where consecutive puzzles sit side by side.
pub(super) fn coalesced<'a>(
    source: &'a wgpu::Buffer,
    puzzles: &[u64],
    words: u64,
    at: impl Fn(u64) -> u64,
) -> Vec<Copy<'a>> {
    let mut copies: Vec<Copy<'a>> = Vec::new();
    let mut previous: Option<u64> = None;
    for &p in puzzles {
        let offset = at(p) * WORD;
        match (copies.last_mut(), previous) {
            (Some(last), Some(q)) if q + 1 == p && last.offset + last.bytes == offset => {
                last.bytes += words * WORD;
            }
            _ => copies.push(Copy {
                source,
                offset,
                bytes: words * WORD,
            }),
        }
        previous = Some(p);
    }
    copies
}
