//! Read-back: the one way values come from the device to the host. A
//! submission's copies land in a staging buffer; [`GpuEngine::start_read`]
//! asks for its mapping without waiting, [`GpuEngine::finish_read`] waits
//! (natively by polling the device, in the browser by awaiting it). Then
//! the words are decoded into outputs ([`Decode`]). Also the kernels' lane
//! reports ([`GpuEngine::lane_widths`]).

use crate::error::{Result, TrmError};
use crate::solve::SolveOutput;

use super::chunk::{Chunk, REPORT_WORDS, State, WORD};
use super::context;
use super::engine::GpuEngine;
use super::options::{GpuSchedule, LaneWidths};
use super::record::{Copy, Staging, coalesced};

/// A read-back asked for and not yet waited for.
pub(super) struct PendingRead {
    pub submission: wgpu::SubmissionIndex,
    /// The staging buffer it reads: which pair, and which of the two.
    pub staging: Staging,
    pub slot: usize,
    pub bytes: u64,
    pub receiver: context::MapReceiver,
}

/// What a read of some puzzles' outputs holds, in order: each puzzle's
/// logits, each one's q pair, with `steps` each one's ACT steps (u32), with
/// `carry` each one's z_H, then each one's z_L.
#[derive(Clone, Copy, Debug)]
pub(super) struct Decode {
    pub steps: bool,
    pub carry: bool,
}

impl Decode {
    /// The copies of `puzzles`' outputs from `chunk`, in the order
    /// [`Decode::outputs`] reads them.
    pub fn copies<'c>(&self, chunk: &'c Chunk, puzzles: &[u64]) -> Vec<Copy<'c>> {
        let l = chunk.layout;
        let mut copies = coalesced(&chunk.out, puzzles, l.logits_words(), |p| l.logits(p));
        copies.extend(coalesced(&chunk.out, puzzles, 2, |p| l.q(p)));
        if self.steps {
            copies.extend(coalesced(&chunk.control, puzzles, 1, |p| l.steps(p)));
        }
        if self.carry {
            for state in [State::Y, State::Z] {
                copies.extend(coalesced(&chunk.xyz, puzzles, l.state_words(), |p| {
                    l.state(state, p)
                }));
            }
        }
        copies
    }

    /// The outputs of `n` puzzles from the read's words (`steps` the ACT
    /// steps read, or 0 without).
    pub fn outputs(
        &self,
        config: &crate::config::TrmConfig,
        n: usize,
        bytes: &[u8],
    ) -> Result<SolveOutput> {
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut out = SolveOutput::poisoned(config, n);
        let sd = config.state_len() * config.hidden_size;
        let expected = out.logits.len()
            + 2 * n
            + if self.steps { n } else { 0 }
            + if self.carry { 2 * n * sd } else { 0 };
        if values.len() != expected {
            return Err(TrmError::Gpu(format!(
                "read {} words of outputs, expected {expected}",
                values.len()
            )));
        }
        let (logits, rest) = values.split_at(out.logits.len());
        out.logits.copy_from_slice(logits);
        let (q, rest) = rest.split_at(2 * n);
        for (i, pair) in q.chunks_exact(2).enumerate() {
            out.q_halt_logits[i] = pair[0];
            out.q_continue_logits[i] = pair[1];
        }
        let rest = if self.steps {
            // u32 bit patterns in the float read-back
            let (ran, rest) = rest.split_at(n);
            out.steps = ran.iter().map(|v| v.to_bits()).collect();
            rest
        } else {
            out.steps = vec![0; n];
            rest
        };
        if !self.carry {
            return Ok(out.without_carry());
        }
        let (z_h, z_l) = rest.split_at(n * sd);
        out.z_h.copy_from_slice(z_h);
        out.z_l.copy_from_slice(z_l);
        Ok(out)
    }
}

impl GpuEngine {
    /// Asks for the first `bytes` of the current `staging` buffer once
    /// `submission` is done, without waiting.
    pub(super) fn start_read(
        &mut self,
        chunk: &Chunk,
        submission: wgpu::SubmissionIndex,
        staging: Staging,
        bytes: u64,
    ) -> Result<PendingRead> {
        let slot = match staging {
            Staging::Results => self.staging_slot,
            Staging::Count => self.staging_slot_count,
        };
        let (send, receiver) = context::map_channel();
        if bytes > 0 {
            self.ctx.scoped("mapping the results", || {
                chunk
                    .staging_buffer(staging, slot)
                    .map_async(wgpu::MapMode::Read, 0..bytes, send)
            })?;
        }
        Ok(PendingRead {
            submission,
            staging,
            slot,
            bytes,
            receiver,
        })
    }

    /// Waits for `read` and returns its bytes: the one read-back of every
    /// solve, async so that the web awaits the browser where native code
    /// polls the device ([`GpuContext::read_mapped`]).
    pub(super) async fn finish_read(
        &mut self,
        chunk: &Chunk,
        read: PendingRead,
    ) -> Result<Vec<u8>> {
        let ctx = self.ctx.clone();
        self.stats.host_waits += 1;
        if read.bytes == 0 {
            ctx.wait_async(Some(read.submission)).await?;
            return Ok(Vec::new());
        }
        let mapped = ctx
            .read_mapped(Some(read.submission), read.receiver, "the results")
            .await?;
        if let Err(e) = mapped {
            ctx.check()?;
            let reason = format!("reading the results back failed: {e}");
            ctx.mark_lost(&reason);
            return Err(TrmError::DeviceLost(reason));
        }
        let staging = chunk.staging_buffer(read.staging, read.slot);
        let bytes = staging
            .get_mapped_range(0..read.bytes)
            .map_err(|e| TrmError::Gpu(format!("reading the results back: {e}")))?
            .to_vec();
        staging.unmap();
        self.stats.bytes_read_back += read.bytes;
        Ok(bytes)
    }

    /// Waits for a running count.
    pub(super) async fn finish_count_read(
        &mut self,
        chunk: &Chunk,
        read: PendingRead,
    ) -> Result<u32> {
        let bytes = self.finish_read(chunk, read).await?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Submits `copies` alone and waits for their words.
    pub(super) async fn read_copies(
        &mut self,
        chunk: &Chunk,
        copies: &[Copy<'_>],
    ) -> Result<Vec<u8>> {
        let total: u64 = copies.iter().map(|c| c.bytes).sum();
        let submission = self.submit(chunk, &mut Vec::new(), copies)?;
        let read = self.start_read(chunk, submission, Staging::Results, total)?;
        self.finish_read(chunk, read).await
    }

    /// The lane widths the kernels of the last solve reached, as they
    /// measured them (`report_lanes` in `shaders/common/step_common.wgsl`):
    /// the clusters of invocations whose reductions met by subgroup
    /// shuffles, 1 where they met in workgroup memory alone. Reads them
    /// back from the device (blocking; natively).
    pub fn lane_widths(&self) -> Result<LaneWidths> {
        let Some(chunk) = &self.chunk else {
            return Ok(LaneWidths::default());
        };
        let at = chunk.layout.reports() * WORD;
        let bytes = REPORT_WORDS * WORD;
        let ctx = &self.ctx;
        let staging = super::layout::buffer(
            ctx,
            "lane report",
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let submission = ctx.scoped("reading the lane report", || {
            let mut encoder =
                ctx.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("lane report"),
                    });
            encoder.copy_buffer_to_buffer(&chunk.scratch, at, &staging, 0, bytes);
            ctx.queue().submit([encoder.finish()])
        })?;
        let (send, receiver) = context::map_channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, send);
        context::block_on(
            "a native build (reading the lane report blocks)",
            ctx.read_mapped(Some(submission), receiver, "the lane report"),
        )?
        .map_err(|e| TrmError::Gpu(format!("mapping the lane report: {e}")))?;
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| TrmError::Gpu(format!("reading the lane report: {e}")))?;
        let slots: Vec<f32> = bytemuck::cast_slice(&view).to_vec();
        drop(view);
        staging.unmap();
        // a slot holds a width once its kernel ran (NaN or 0 before)
        let width = |slot: usize, ran: bool| {
            let v = slots[slot];
            (ran && v >= 1.0).then_some(v as u32)
        };
        let spread = self.running == GpuSchedule::Spread;
        Ok(LaneWidths {
            fused: width(0, !spread),
            spread_norm: width(1, spread),
            spread_attention: width(2, spread && !self.model.config().mlp_t),
        })
    }
}
