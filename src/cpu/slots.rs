//! The solve program's side of the engine (`crate::program`): its slots,
//! an ACT step over the occupied ones, the heads, and reading slots out.

use std::sync::Arc;

use rayon::prelude::*;

use super::{Buffers, CpuEngine, Plan, join, ops};
use crate::batch::{PuzzleBatch, check_memory};
use crate::config::{Level, TrmConfig};
use crate::error::{Result, TrmError};
use crate::program::{self, ActReport, ActRun, Call, Fill, SlotEngine, act_step_calls};
use crate::solve::{Carry, Engine, SolveOptions, SolveOutput};

/// The slots of the solve program (`crate::program`): `[slots, ...]`
/// buffers, the occupied slots at the front, a network call running on
/// those only.
pub(super) struct Work {
    slots: usize,
    x: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f32>,
    injection: Vec<f32>,
    buffers: Buffers,
    /// `[slots, seq_len, vocab]` logits and `[slots]` Q logits of the last
    /// heads.
    logits: Vec<f32>,
    q: Vec<[f32; 2]>,
}

impl Work {
    /// The memory of `slots` slots by part (bytes, saturating): what
    /// [`SlotEngine::open_slots`] checks before allocating.
    fn memory(config: &TrmConfig, slots: usize) -> [(String, u64); 3] {
        let slots64 = slots as u64;
        let sd = (config.state_len() as u64).saturating_mul(config.hidden_size as u64);
        let logits = (config.seq_len as u64).saturating_mul(config.vocab_size as u64);
        [
            (
                format!("the states x, y, z and injection of {slots} puzzles"),
                slots64.saturating_mul(sd).saturating_mul(4 * 4),
            ),
            (
                format!("the attention buffers of {slots} puzzles"),
                Buffers::bytes(config, slots),
            ),
            (
                format!("the logits and Q values of {slots} puzzles"),
                slots64
                    .saturating_mul(logits.saturating_add(2))
                    .saturating_mul(4),
            ),
        ]
    }
}

impl CpuEngine {
    /// One ACT step on the first `occupied` slots: the calls of
    /// [`act_step_calls`], the injection `y + x` summed before each run of
    /// latent updates (y does not change within one).
    fn run_act_step(&self, work: &mut Work, occupied: usize, plan: Plan) {
        let config = self.model.config();
        let n = occupied * config.state_len() * config.hidden_size;
        let Work {
            x,
            y,
            z,
            injection,
            buffers,
            ..
        } = work;
        let (x, y, z, injection) = (&x[..n], &mut y[..n], &mut z[..n], &mut injection[..n]);
        let rows = plan.rows_per_task * config.hidden_size;
        let mut summed = false;
        for call in act_step_calls(config) {
            match call {
                Call::Latent => {
                    if !summed {
                        injection
                            .par_chunks_mut(rows)
                            .zip(y.par_chunks(rows))
                            .zip(x.par_chunks(rows))
                            .for_each(|((i, y), x)| {
                                for ((i, a), b) in i.iter_mut().zip(y).zip(x) {
                                    *i = a + b;
                                }
                            });
                        summed = true;
                    }
                    self.net(Level::L, z, injection, buffers, plan);
                }
                Call::Answer => {
                    self.net(Level::H, y, z, buffers, plan);
                    summed = false;
                }
            }
        }
    }

    /// Output heads of one puzzle: logits of the sequence positions and the
    /// two Q logits from position 0.
    fn heads(&self, y: &[f32], logits: &mut [f32]) -> (f32, f32) {
        let config = self.model.config();
        let w = self.model.weights();
        let d = config.hidden_size;
        let p = config.puzzle_emb_positions();
        let (seq, vocab) = (config.seq_len, config.vocab_size);
        ops::matmul_into(
            ops::mat_mut(logits, seq, vocab),
            ops::mat(&y[p * d..], seq, d),
            ops::mat(&self.tables.lm_head, vocab, d).transpose(),
            faer::Par::Seq,
        );
        let dot = |row: &[f32]| -> f32 { row.iter().zip(&y[..d]).map(|(a, b)| a * b).sum() };
        let q = &self.tables.q_head;
        (
            dot(&q[..d]) + w.q_head_bias[0],
            dot(&q[d..2 * d]) + w.q_head_bias[1],
        )
    }
}

impl Engine for CpuEngine {
    fn config(&self) -> &TrmConfig {
        self.model.config()
    }

    fn describe(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn solve_from(
        &mut self,
        batch: &PuzzleBatch,
        carry: Option<&Carry>,
        options: &SolveOptions,
    ) -> Result<SolveOutput> {
        let out = program::solve_batch(self, batch, carry, options);
        // a solve's buffers go with it, as a batch's memory should
        self.work = None;
        out
    }
}

impl SlotEngine for CpuEngine {
    fn open_slots(&mut self, slots: usize) -> Result<usize> {
        let config = self.model.config();
        let slots = slots.max(1);
        // the buffers of the last stream serve when they are large enough
        match &mut self.work {
            Some(work) if work.slots >= slots => {}
            _ => {
                self.work = None; // the old buffers go first
                check_memory(
                    "the CPU engine",
                    &Work::memory(config, slots),
                    self.memory_limit,
                )?;
                let n = slots * config.state_len() * config.hidden_size;
                self.work = Some(Work {
                    slots,
                    x: vec![0.0; n],
                    y: vec![0.0; n],
                    z: vec![0.0; n],
                    injection: vec![0.0; n],
                    buffers: Buffers::new(config, slots),
                    logits: vec![0.0; slots * config.seq_len * config.vocab_size],
                    q: vec![[0.0; 2]; slots],
                })
            }
        }
        Ok(slots)
    }

    fn fill_slots(&mut self, fills: &[Fill<'_>]) -> Result<()> {
        let model = Arc::clone(&self.model);
        let config = model.config();
        let sd = config.state_len() * config.hidden_size;
        let most = fills.iter().map(|f| f.slot).max().unwrap_or(0);
        let mut work = self.take_work(most)?;
        // every fill checked before any slot is written: a refused fill
        // changes nothing
        if let Some(f) = fills
            .iter()
            .find(|f| f.carry.is_some_and(|(h, l)| h.len() != sd || l.len() != sd))
        {
            self.work = Some(work);
            return Err(TrmError::Input(format!(
                "slot {}'s carry must hold {sd} values each",
                f.slot
            )));
        }
        let mut x = vec![0.0; sd];
        for f in fills {
            if let Err(e) = self.embed_into(f.tokens, f.puzzle_id, &mut x) {
                self.work = Some(work);
                return Err(e);
            }
            work.x[f.slot * sd..(f.slot + 1) * sd].copy_from_slice(&x);
        }
        let w = model.weights();
        for f in fills {
            let (y, z) = (
                &mut work.y[f.slot * sd..(f.slot + 1) * sd],
                &mut work.z[f.slot * sd..(f.slot + 1) * sd],
            );
            match f.carry {
                Some((z_h, z_l)) => {
                    y.copy_from_slice(z_h);
                    z.copy_from_slice(z_l);
                }
                None => {
                    for (y, z) in y
                        .chunks_exact_mut(config.hidden_size)
                        .zip(z.chunks_exact_mut(config.hidden_size))
                    {
                        y.copy_from_slice(&w.h_init);
                        z.copy_from_slice(&w.l_init);
                    }
                }
            }
        }
        self.work = Some(work);
        Ok(())
    }

    fn add_noise(
        &mut self,
        slot: usize,
        state: crate::noise::State,
        draw: &crate::noise::NoiseDraw,
    ) -> Result<()> {
        let sd = self.model.config().state_len() * self.model.config().hidden_size;
        let mut work = self.take_work(slot)?;
        let values = match state {
            crate::noise::State::ZH => &mut work.y[slot * sd..(slot + 1) * sd],
            crate::noise::State::ZL => &mut work.z[slot * sd..(slot + 1) * sd],
        };
        crate::noise::add_noise(
            values,
            draw.sigma,
            draw.seed,
            draw.puzzle,
            draw.trajectory,
            draw.step,
            state,
        );
        self.work = Some(work);
        Ok(())
    }

    fn move_slot(&mut self, from: usize, to: usize) -> Result<()> {
        let sd = self.model.config().state_len() * self.model.config().hidden_size;
        let mut work = self.take_work(from.max(to))?;
        for buf in [&mut work.x, &mut work.y, &mut work.z] {
            buf.copy_within(from * sd..(from + 1) * sd, to * sd);
        }
        self.work = Some(work);
        Ok(())
    }

    /// One ACT step (the CPU runs no further ahead: the program gets each
    /// step's halting at once), the heads where the run asks, halting by
    /// the model's rule.
    async fn act_steps(&mut self, occupied: usize, run: ActRun) -> Result<ActReport> {
        if occupied == 0 {
            return Err(TrmError::Input("an ACT step over no slots".into()));
        }
        let mut work = self.take_work(occupied - 1)?;
        let model = Arc::clone(&self.model);
        let config = model.config();
        let plan = Plan::new(config, occupied, self.threads);
        let sd = config.state_len() * config.hidden_size;
        let l = config.seq_len * config.vocab_size;
        // the heads where this step is one a slot may leave after
        let heads = run.halt || (run.heads && run.max_steps == 1);
        self.pool.install(|| {
            join::team_awake(self.threads, || {
                self.run_act_step(&mut work, occupied, plan);
                if heads {
                    let Work { y, logits, q, .. } = &mut work;
                    for slot in 0..occupied {
                        let (h, c) = self.heads(
                            &y[slot * sd..(slot + 1) * sd],
                            &mut logits[slot * l..(slot + 1) * l],
                        );
                        q[slot] = [h, c];
                    }
                }
            })
        });
        let last = run.last && run.max_steps == 1;
        let done = (0..occupied)
            .map(|slot| last || (run.halt && config.halts(work.q[slot][0], work.q[slot][1])))
            .collect();
        self.work = Some(work);
        Ok(ActReport {
            ran: vec![1; occupied],
            done,
            outputs: None,
        })
    }

    async fn read_slots(&mut self, slots: &[usize], carry: bool) -> Result<SolveOutput> {
        let config = self.model.config();
        let Some(work) = &self.work else {
            return Err(TrmError::Input("no slots are open".into()));
        };
        if let Some(&bad) = slots.iter().find(|&&s| s >= work.slots) {
            return Err(TrmError::Input(format!(
                "slot {bad} of {} slots",
                work.slots
            )));
        }
        let sd = config.state_len() * config.hidden_size;
        let l = config.seq_len * config.vocab_size;
        let mut out = SolveOutput::poisoned(config, slots.len());
        for (i, &slot) in slots.iter().enumerate() {
            out.logits[i * l..(i + 1) * l].copy_from_slice(&work.logits[slot * l..(slot + 1) * l]);
            [out.q_halt_logits[i], out.q_continue_logits[i]] = work.q[slot];
            if carry {
                out.z_h[i * sd..(i + 1) * sd].copy_from_slice(&work.y[slot * sd..(slot + 1) * sd]);
                out.z_l[i * sd..(i + 1) * sd].copy_from_slice(&work.z[slot * sd..(slot + 1) * sd]);
            }
        }
        Ok(if carry { out } else { out.without_carry() })
    }
}

impl CpuEngine {
    /// The open slots, taken out while an operation works on them; `slot`
    /// must be one of them.
    fn take_work(&mut self, slot: usize) -> Result<Work> {
        match self.work.take() {
            Some(work) if slot < work.slots => Ok(work),
            other => {
                let slots = other.as_ref().map_or(0, |w| w.slots);
                self.work = other;
                Err(TrmError::Input(format!(
                    "slot {slot} of {slots} open slots"
                )))
            }
        }
    }
}
