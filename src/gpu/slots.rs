//! The GPU engine as the solve program drives it ([`SlotEngine`]): the
//! chunk's puzzles are the slots; a fill writes a puzzle's ids, table row
//! and carry into its region and marks it for the embedding; a run of ACT
//! steps is recorded ahead whole, halting decided on the device after each
//! step (`shaders/halt.wgsl`: the running list shrinks there and the fused
//! steps and the heads dispatch indirectly from its count), the host
//! reading the running count one step behind only to stop early; a run
//! that is every puzzle's last reads their outputs with it.

use std::sync::Arc;

use crate::error::{Result, TrmError};
use crate::noise::{NoiseDraw, State as NoiseState};
use crate::program::{ActReport, ActRun, Fill, SlotEngine, act_step_calls};
use crate::solve::{Carry, SolveOutput};

use super::chunk::{Chunk, State, WORD};
use super::engine::GpuEngine;
use super::halt;
use super::noise;
use super::options::{GpuSchedule, GpuStats};
use super::readback::{Decode, PendingRead};
use super::record::{Active, Copy, Op, Staging, coalesced};

impl GpuEngine {
    /// Fills the chunk's state, outputs, scratch and the staging buffers
    /// its results and counts are read through with NaN
    /// ([`super::GpuRunOptions::poison`]): an element no kernel or copy
    /// writes, or one read before it is written, then shows as NaN.
    fn poison_chunk(&mut self, chunk: &Chunk) -> Result<()> {
        let nan = |bytes: u64| vec![f32::NAN; (bytes / WORD) as usize];
        for buffer in [&chunk.xyz, &chunk.out, &chunk.scratch]
            .into_iter()
            .chain(&chunk.staging)
            .chain(&chunk.count_staging)
        {
            self.upload(buffer, 0, &nan(buffer.size()))?;
        }
        Ok(())
    }

    /// Runs `f` with the chunk's buffers (taken out of the engine meanwhile).
    pub(super) fn with_chunk<R>(
        &mut self,
        f: impl FnOnce(&mut Self, &Chunk) -> Result<R>,
    ) -> Result<R> {
        let Some(chunk) = self.chunk.take() else {
            return Err(TrmError::Input("no slots are open".into()));
        };
        let result = f(self, &chunk);
        self.chunk = Some(chunk);
        result
    }

    /// What every run over slots `0..occupied` starts with (a solve's, and
    /// `trm bench`'s timed runs): the running list, with halting the
    /// control header, the schedule of the batch, and the embedding of the
    /// puzzles filled since the last run; returns the ops recorded so far.
    pub(super) fn begin_run(
        &mut self,
        chunk: &Chunk,
        occupied: usize,
        halt: bool,
    ) -> Result<Vec<Op>> {
        let n = occupied as u32;
        let running: Vec<u32> = self.slot_map[..occupied].to_vec();
        self.upload(&chunk.active, 0, &running)?;
        if halt {
            // the count, ACT steps done, the slices' indirect dispatches
            let header = halt::initial_control(n, chunk.slice, chunk.slices);
            self.upload(&chunk.control, 0, &header)?;
        }
        self.prepare_schedule(chunk, occupied)?;
        if self.fresh >= occupied {
            // a run over puzzles all new: a wave of the chunk
            self.stats.chunks += 1;
        }
        self.fresh = 0;
        let mut ops = Vec::new();
        if self.embed_upto > 0 {
            ops.push(Op::Embed(std::mem::take(&mut self.embed_upto)));
        }
        Ok(ops)
    }

    /// Records and runs ACT steps over the chunk's puzzles of slots
    /// `0..occupied` (see [`SlotEngine::act_steps`] and the module doc).
    async fn run_act_steps(
        &mut self,
        chunk: &Chunk,
        occupied: usize,
        run: ActRun,
    ) -> Result<ActReport> {
        let model = Arc::clone(&self.model);
        let config = model.config();
        let n = occupied as u32;
        let running: Vec<u32> = self.slot_map[..occupied].to_vec();
        let mut ops = self.begin_run(chunk, occupied, run.halt)?;
        let spread = self.running == GpuSchedule::Spread;
        // puzzles that may still run: exact without halting, an upper bound
        // the host learns one ACT step late with it
        let mut known = n;
        let call_flops = config.flops_per_recursion_step().max(1);
        let per_act = config.recursion_steps_per_act_step();
        // submissions cut by time: a large run's first one is measured
        let whole = call_flops * u64::from(n) * (run.max_steps * per_act) as u64;
        let mut measure_first =
            self.calls_per_submit.is_none() && whole > self.options.measure_above_flops;
        let mut calls_per_submit = self.calls_per_submit.unwrap_or(u64::MAX);
        let (mut pending_flops, mut pending_calls) = (0u64, 0u64);
        let mut count_read: Option<PendingRead> = None;
        let mut recorded = 0;
        for step in 1..=run.max_steps {
            recorded = step;
            let active = match (run.halt, spread) {
                (true, false) => Active::OnDevice { at_most: known },
                _ => Active::Known(known),
            };
            for call in act_step_calls(config) {
                Self::push_calls(&mut ops, std::iter::once(call), active);
                pending_flops += call_flops * u64::from(known);
                pending_calls += 1;
                if measure_first {
                    measure_first = false;
                    let took = self.submit_timed(chunk, &mut ops).await?;
                    calls_per_submit = self.calls_within_submit_time(took);
                    self.calls_per_submit = Some(calls_per_submit);
                    (pending_flops, pending_calls) = (0, 0);
                } else if pending_flops >= self.options.max_flops_per_submit
                    || pending_calls >= calls_per_submit
                {
                    self.submit(chunk, &mut ops, &[])?;
                    (pending_flops, pending_calls) = (0, 0);
                }
            }
            let last = step == run.max_steps;
            if !run.halt {
                if last && run.heads {
                    ops.push(Op::Heads(Active::Known(known)));
                }
                continue;
            }
            ops.push(Op::Heads(Active::OnDevice { at_most: known }));
            ops.push(Op::Halt);
            if last {
                break;
            }
            // the running count after this step, read while the next runs
            self.staging_slot_count = 1 - self.staging_slot_count;
            let count = Copy {
                source: &chunk.control,
                offset: chunk.layout.count() * WORD,
                bytes: WORD,
            };
            let submission = self.submit_with(chunk, &mut ops, &[count], Staging::Count, None)?;
            (pending_flops, pending_calls) = (0, 0);
            let this = self.start_read(chunk, submission, Staging::Count, WORD)?;
            if let Some(previous) = count_read.replace(this) {
                let still = self.finish_count_read(chunk, previous).await?;
                if still == 0 {
                    break;
                }
                if spread && still < known {
                    known = still;
                    self.ensure_plan(chunk, known)?;
                }
            }
        }
        if let Some(unread) = count_read.take() {
            self.finish_count_read(chunk, unread).await?;
        }
        let puzzles: Vec<u64> = running.iter().map(|&p| u64::from(p)).collect();
        let mut report = ActReport {
            ran: vec![recorded as u32; occupied],
            done: vec![run.last; occupied],
            outputs: None,
        };
        if run.last {
            // every puzzle leaves: its outputs (and with halting the ACT
            // steps the device counted) with this run's last submission
            let decode = Decode {
                steps: run.halt,
                carry: run.carry,
            };
            let copies = decode.copies(chunk, &puzzles);
            let total: u64 = copies.iter().map(|c| c.bytes).sum();
            let submission = self.submit(chunk, &mut ops, &copies)?;
            let read = self.start_read(chunk, submission, Staging::Results, total)?;
            let bytes = self.finish_read(chunk, read).await?;
            let out = decode.outputs(config, occupied, &bytes)?;
            if run.halt {
                report.ran.clone_from(&out.steps);
            }
            report.outputs = Some(out);
        } else if run.halt {
            // who still runs (the compacted running list) and the ACT
            // steps each ran
            let l = chunk.layout;
            let mut copies = vec![Copy {
                source: &chunk.control,
                offset: l.count() * WORD,
                bytes: WORD,
            }];
            copies.push(Copy {
                source: &chunk.active,
                offset: 0,
                bytes: u64::from(n) * WORD,
            });
            copies.extend(coalesced(&chunk.control, &puzzles, 1, |p| l.steps(p)));
            let total: u64 = copies.iter().map(|c| c.bytes).sum();
            let submission = self.submit(chunk, &mut ops, &copies)?;
            let read = self.start_read(chunk, submission, Staging::Results, total)?;
            let bytes = self.finish_read(chunk, read).await?;
            let words: Vec<u32> = bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let count = words[0] as usize;
            let still = &words[1..1 + occupied][..count.min(occupied)];
            for (i, &p) in running.iter().enumerate() {
                report.ran[i] = words[1 + occupied + i];
                report.done[i] = !still.contains(&p);
            }
        } else if !ops.is_empty() {
            self.submit(chunk, &mut ops, &[])?;
        }
        Ok(report)
    }
}

impl SlotEngine for GpuEngine {
    fn open_slots(&mut self, slots: usize) -> Result<usize> {
        self.stats = GpuStats::default();
        self.step_groups.clear();
        let slots = self.allocate_chunk(slots)?;
        let slots = self.puzzles_per_run(slots);
        self.with_chunk(|e, chunk| {
            if e.options.poison {
                e.poison_chunk(chunk)?;
            }
            // the embedding runs over chunk puzzles from 0: those not
            // filled read these valid ids
            let ids = vec![0u32; chunk.layout.ids_words() as usize];
            e.upload(&chunk.ids, 0, &ids)
        })?;
        self.slot_map = (0..slots as u32).collect();
        self.embed_upto = 0;
        self.fresh = 0;
        self.calls_per_submit = None;
        Ok(slots)
    }

    fn fill_slots(&mut self, fills: &[Fill<'_>]) -> Result<()> {
        let model = Arc::clone(&self.model);
        let config = model.config();
        let (seq, sd) = (config.seq_len, config.state_len() * config.hidden_size);
        // everything checked before anything is written: a refused fill
        // changes nothing
        let mut puzzles = Vec::with_capacity(fills.len());
        for f in fills {
            puzzles.push(self.physical(f.slot)?);
            if f.tokens.len() != seq || f.carry.is_some_and(|(h, l)| h.len() != sd || l.len() != sd)
            {
                return Err(TrmError::Input(format!(
                    "a slot takes {seq} token ids and a carry of {sd} values each"
                )));
            }
        }
        let ids: Vec<u32> = fills.iter().map(|f| f.puzzle_id).collect();
        let rows = model.puzzle_rows(&ids)?;
        let row = rows.len() / fills.len().max(1);
        let w = model.weights();
        let initial = Carry::initial(&w.h_init, &w.l_init, 1, config.state_len());
        // the fills in chunk order, runs of neighbours written at once
        let mut order: Vec<usize> = (0..fills.len()).collect();
        order.sort_by_key(|&i| puzzles[i]);
        self.with_chunk(|e, chunk| {
            let l = chunk.layout;
            let mut start = 0;
            while start < order.len() {
                let mut end = start + 1;
                while end < order.len() && puzzles[order[end]] == puzzles[order[end - 1]] + 1 {
                    end += 1;
                }
                let run = &order[start..end];
                let p = u64::from(puzzles[run[0]]);
                let gather = |part: &dyn Fn(&Fill<'_>, usize) -> Vec<u32>| -> Vec<u32> {
                    run.iter().flat_map(|&i| part(&fills[i], i)).collect()
                };
                e.upload(&chunk.ids, l.tokens(p), &gather(&|f, _| f.tokens.to_vec()))?;
                e.upload(
                    &chunk.ids,
                    l.puzzle_id(p),
                    &gather(&|f, _| vec![f.puzzle_id]),
                )?;
                let table: Vec<f32> = run
                    .iter()
                    .flat_map(|&i| rows[i * row..(i + 1) * row].iter().copied())
                    .collect();
                e.upload(&chunk.ids, l.table_row(p), &table)?;
                for (state, pick) in [(State::Y, 0), (State::Z, 1)] {
                    let carry: Vec<f32> = run
                        .iter()
                        .flat_map(|&i| {
                            let rows = fills[i].carry.unwrap_or((&initial.z_h, &initial.z_l));
                            let rows = if pick == 0 { rows.0 } else { rows.1 };
                            rows.iter().copied()
                        })
                        .collect();
                    e.upload(&chunk.xyz, l.state(state, p), &carry)?;
                }
                start = end;
            }
            Ok(())
        })?;
        // the embedding runs on the device before the next ACT step
        let most = puzzles.iter().max().map_or(0, |&p| p + 1);
        self.embed_upto = self.embed_upto.max(most);
        self.fresh += fills.len();
        Ok(())
    }

    fn add_noise(&mut self, slot: usize, state: NoiseState, draw: &NoiseDraw) -> Result<()> {
        let p = u64::from(self.physical(slot)?);
        self.with_chunk(|e, chunk| {
            let l = chunk.layout;
            let region = match state {
                NoiseState::ZH => State::Y,
                NoiseState::ZL => State::Z,
            };
            let base = u32::try_from(l.state(region, p)).map_err(|_| {
                TrmError::TooLarge("a state buffer beyond 2^32 floats for the noise".into())
            })?;
            // one row whose global row g gives g / k = puzzle, g % k =
            // trajectory, with k = trajectory + 1
            let k = draw.trajectory + 1;
            let first_row = draw
                .puzzle
                .checked_mul(k)
                .and_then(|g| g.checked_add(draw.trajectory))
                .ok_or_else(|| TrmError::TooLarge("a noise key beyond 32 bits".into()))?;
            let dispatch = noise::NoiseDispatch {
                seed: draw.seed,
                sigma: draw.sigma,
                step: draw.step,
                state,
                first_row,
                trajectories: k,
                row_elems: l.state_words() as u32,
                rows: 1,
                base,
            };
            if e.noise.is_none() {
                e.noise = Some(noise::Noise::new(&e.ctx)?);
            }
            let kernel = e.noise.as_ref().expect("made above");
            let mut encoder =
                e.ctx
                    .device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("noise"),
                    });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("noise"),
                    timestamp_writes: None,
                });
                kernel.record(&e.ctx, &mut pass, &chunk.xyz, &dispatch)?;
            }
            // queued before the next ACT step's submission: no wait
            e.ctx.queue().submit([encoder.finish()]);
            Ok(())
        })
    }

    fn move_slot(&mut self, from: usize, to: usize) -> Result<()> {
        self.physical(from.max(to))?;
        self.slot_map.swap(from, to);
        Ok(())
    }

    async fn act_steps(&mut self, occupied: usize, run: ActRun) -> Result<ActReport> {
        if occupied == 0 || run.max_steps == 0 {
            return Err(TrmError::Input("an ACT step over no slots".into()));
        }
        self.physical(occupied - 1)?;
        let Some(chunk) = self.chunk.take() else {
            return Err(TrmError::Input("no slots are open".into()));
        };
        let result = self.run_act_steps(&chunk, occupied, run).await;
        self.chunk = Some(chunk);
        let report = result?;
        let per_act = self.model.config().recursion_steps_per_act_step() as u64;
        let most = u64::from(report.ran.iter().copied().max().unwrap_or(0));
        self.stats.act_steps += most;
        self.stats.recursion_steps += most * per_act;
        self.stats.puzzle_recursion_steps +=
            report.ran.iter().map(|&r| u64::from(r)).sum::<u64>() * per_act;
        self.finish_stats();
        Ok(report)
    }

    async fn read_slots(&mut self, slots: &[usize], carry: bool) -> Result<SolveOutput> {
        let model = Arc::clone(&self.model);
        let config = model.config();
        let puzzles = slots
            .iter()
            .map(|&s| self.physical(s).map(u64::from))
            .collect::<Result<Vec<u64>>>()?;
        if slots.is_empty() {
            return Ok(SolveOutput::poisoned(config, 0).without_carry());
        }
        let Some(chunk) = self.chunk.take() else {
            return Err(TrmError::Input("no slots are open".into()));
        };
        let decode = Decode {
            steps: false,
            carry,
        };
        let copies = decode.copies(&chunk, &puzzles);
        let bytes = self.read_copies(&chunk, &copies).await;
        self.chunk = Some(chunk);
        decode.outputs(config, slots.len(), &bytes?)
    }
}
