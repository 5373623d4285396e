//! A stream of puzzles through an engine's slots: the ACT loop of the
//! solve program ([`super`]), one [`Stream::step`] at a time, with
//! continuous batching and the program's counters.

use std::collections::VecDeque;
use web_time::Instant;

use serde::Serialize;

use super::*;

/// What a run of the program did, counted by the program.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StreamStats {
    /// Puzzles finished.
    pub puzzles: u64,
    /// Slots the engine held.
    pub slots: u64,
    /// ACT steps run (each over all occupied slots).
    pub act_steps: u64,
    /// Network calls: ACT steps x H_cycles x (L_cycles + 1), each over all
    /// occupied slots at once.
    pub recursion_steps: u64,
    /// Network calls summed over puzzles.
    pub puzzle_recursion_steps: u64,
    /// Wall time from the first ACT step to the last result.
    pub seconds: f64,
    /// Puzzles finished per second of `seconds`.
    pub puzzles_per_second: f64,
}

/// A puzzle that finished: the ticket [`Stream::submit`] gave it and its
/// outputs (one puzzle; `steps` the ACT steps it ran).
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    /// Submission order, from 0.
    pub ticket: u64,
    /// Its outputs, a batch of one.
    pub output: SolveOutput,
}

/// A puzzle waiting for a slot.
struct Waiting {
    ticket: u64,
    tokens: Vec<u32>,
    puzzle_id: u32,
    carry: Option<(Vec<f32>, Vec<f32>)>,
}

/// A puzzle in a slot.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    ticket: u64,
    /// ACT steps it ran.
    steps: u32,
    /// The states whose noise before ACT step `steps + 1` is in place (a
    /// bit per [`State`]), so that a retried step adds none twice.
    noised: u8,
    /// It left (halted or ran its last step) and waits for its outputs to
    /// be read.
    done: bool,
}

/// A streaming solve: puzzles submitted as they come, results delivered as
/// each halts, a fixed number of slots, a halted puzzle's slot refilled with
/// the next at once.
///
/// ```
/// use std::sync::Arc;
/// use trm_wgpu::program::Stream;
/// use trm_wgpu::{CpuEngine, SolveOptions, TrmConfig, TrmModel};
///
/// # fn main() -> trm_wgpu::Result<()> {
/// let config = TrmConfig { hidden_size: 16, puzzle_emb_ndim: 16, ..TrmConfig::sudoku_extreme() };
/// let model = Arc::new(TrmModel::random(config, 1, 0.5)?);
/// let mut engine = CpuEngine::with_threads(model, 1)?;
/// let options = SolveOptions::default().act_steps(3).early_halt(true);
/// let mut stream = Stream::new(&mut engine, 2, &options)?;
/// for _ in 0..3 {
///     stream.submit(&vec![1u32; 81], 0)?;
/// }
/// let mut done = Vec::new();
/// while !stream.is_idle() {
///     done.extend(stream.step()?);
/// }
/// assert_eq!(done.len(), 3);
/// # Ok(())
/// # }
/// ```
pub struct Stream<'e, E: SlotEngine + ?Sized> {
    engine: &'e mut E,
    config: TrmConfig,
    act_steps: usize,
    early_halt: bool,
    carry: bool,
    noise: Option<NoiseOptions>,
    capacity: usize,
    /// One ACT step per [`Stream::step`], with the heads after it, so that
    /// every puzzle in flight can be looked at ([`Stream::every_step`]).
    every_step: bool,
    /// Slot i's puzzle, `None` once it left (until refilled or compacted).
    slots: Vec<Option<InFlight>>,
    waiting: VecDeque<Waiting>,
    next_ticket: u64,
    stats: StreamStats,
    started: Option<Instant>,
}

impl<'e, E: SlotEngine + ?Sized> Stream<'e, E> {
    /// A stream of at most `slots` puzzles in flight on `engine`, each
    /// solved as `options` say (`early_halt` is what makes slots free
    /// early; without it every puzzle runs all its ACT steps).
    pub fn new(engine: &'e mut E, slots: usize, options: &SolveOptions) -> Result<Self> {
        if slots == 0 {
            return Err(TrmError::Input("a stream needs at least one slot".into()));
        }
        let config = engine.config().clone();
        let act_steps = options.resolved_act_steps(&config)?;
        let capacity = engine.open_slots(slots)?.clamp(1, slots);
        Ok(Stream {
            engine,
            config,
            act_steps,
            early_halt: options.early_halt,
            carry: options.carry,
            noise: options.noise,
            capacity,
            every_step: false,
            slots: Vec::with_capacity(capacity),
            waiting: VecDeque::new(),
            next_ticket: 0,
            stats: StreamStats {
                slots: capacity as u64,
                ..StreamStats::default()
            },
            started: None,
        })
    }

    /// Queues a puzzle (its `seq_len` token ids, checked against the
    /// model, and puzzle identifier) and returns its ticket.
    pub fn submit(&mut self, tokens: &[u32], puzzle_id: u32) -> Result<u64> {
        self.submit_from(tokens, puzzle_id, None)
    }

    /// [`Stream::submit`], continuing from a carry (`[S, D]` z_H and z_L).
    pub fn submit_from(
        &mut self,
        tokens: &[u32],
        puzzle_id: u32,
        carry: Option<(&[f32], &[f32])>,
    ) -> Result<u64> {
        let config = &self.config;
        if tokens.len() != config.seq_len {
            return Err(TrmError::Input(format!(
                "a puzzle has {} token ids, the model takes {}",
                tokens.len(),
                config.seq_len
            )));
        }
        if let Some((position, &value)) = tokens
            .iter()
            .enumerate()
            .find(|(_, t)| **t as usize >= config.vocab_size)
        {
            return Err(TrmError::TokenOutOfRange {
                puzzle: self.next_ticket as usize,
                position,
                value: i64::from(value),
                vocab_size: config.vocab_size,
            });
        }
        // 0 is what a batch without identifiers gives every puzzle
        let limit = config.num_puzzle_identifiers;
        if puzzle_id > 0 && puzzle_id as usize >= limit {
            return Err(TrmError::PuzzleIdOutOfRange {
                puzzle: self.next_ticket as usize,
                value: i64::from(puzzle_id),
                num_puzzle_identifiers: limit,
            });
        }
        let sd = config.state_len() * config.hidden_size;
        if let Some((z_h, z_l)) = carry
            && (z_h.len() != sd || z_l.len() != sd)
        {
            return Err(TrmError::Input(format!(
                "a puzzle's carry holds {} and {} values, not {sd} each",
                z_h.len(),
                z_l.len()
            )));
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.waiting.push_back(Waiting {
            ticket,
            tokens: tokens.to_vec(),
            puzzle_id,
            carry: carry.map(|(h, l)| (h.to_vec(), l.to_vec())),
        });
        Ok(ticket)
    }

    /// One ACT step per [`Stream::step`], each followed by the heads, so
    /// that [`Stream::peek_async`] can show every puzzle in flight after
    /// each step (the web page's step-by-step view). Slower on an engine
    /// that runs ahead.
    pub fn every_step(mut self) -> Self {
        self.every_step = true;
        self
    }

    /// The outputs of every puzzle in flight after the last step, by
    /// ticket (their `steps` the ACT steps each ran); with
    /// [`Stream::every_step`] only, where the heads ran after every step.
    pub async fn peek_async(&mut self) -> Result<Vec<Finished>> {
        if !self.every_step {
            return Err(TrmError::Input(
                "a stream shows its puzzles in flight with every_step only".into(),
            ));
        }
        let slots: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].is_some_and(|s| s.steps > 0))
            .collect();
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.engine.read_slots(&slots, false).await?;
        let mut shown = Vec::with_capacity(slots.len());
        for (row, &slot) in slots.iter().enumerate() {
            let Some(puzzle) = self.slots[slot] else {
                continue;
            };
            let mut one = out.clone_shape();
            one.append_row(&out, row)?;
            one.steps[0] = puzzle.steps;
            shown.push(Finished {
                ticket: puzzle.ticket,
                output: one,
            });
        }
        Ok(shown)
    }

    /// Whether no puzzle waits or runs.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.slots.iter().all(Option::is_none)
    }

    /// Puzzles waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Slots the engine holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The counters so far.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Fills free slots with waiting puzzles, runs ACT steps over the
    /// occupied ones (one where a slot's leaving should free it for a
    /// waiting puzzle at once or noise goes between steps, else as many as
    /// every puzzle has left), and returns the puzzles that finished.
    /// Blocking; [`Stream::step_async`] in the browser.
    pub fn step(&mut self) -> Result<Vec<Finished>> {
        block_on("Stream::step_async", self.step_async())
    }

    /// [`Stream::step`], async.
    pub async fn step_async(&mut self) -> Result<Vec<Finished>> {
        // puzzles that left but whose outputs a failed read did not bring
        let unread: Vec<usize> = self.leaving();
        if !unread.is_empty() {
            let out = self.engine.read_slots(&unread, self.carry).await?;
            return Ok(self.finish(&unread, &out));
        }
        self.refill()?;
        let occupied = self.slots.len();
        if occupied == 0 {
            return Ok(Vec::new());
        }
        self.started.get_or_insert_with(Instant::now);
        self.add_noise()?;
        let run = self.next_run();
        let report = self.engine.act_steps(occupied, run).await?;
        self.count(&report, occupied)?;
        let leaving = self.leaving();
        if leaving.is_empty() {
            return Ok(Vec::new());
        }
        let done = match &report.outputs {
            // read with the run: every occupied slot, in slot order
            Some(all) if all.batch == occupied => {
                let mut out = all.clone_shape();
                for &slot in &leaving {
                    out.append_row(all, slot)?;
                }
                self.finish(
                    &leaving,
                    &if self.carry { out } else { out.without_carry() },
                )
            }
            _ => {
                let out = self.engine.read_slots(&leaving, self.carry).await?;
                self.finish(&leaving, &out)
            }
        };
        Ok(done)
    }

    /// Steps until every submitted puzzle finished; returns them.
    pub fn drain(&mut self) -> Result<Vec<Finished>> {
        block_on("Stream::drain_async", self.drain_async())
    }

    /// [`Stream::drain`], async.
    pub async fn drain_async(&mut self) -> Result<Vec<Finished>> {
        let mut done = Vec::new();
        while !self.is_idle() {
            done.extend(self.step_async().await?);
        }
        Ok(done)
    }

    /// The occupied slots whose puzzles are done.
    fn leaving(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].is_some_and(|s| s.done))
            .collect()
    }

    /// The next run of ACT steps: as many as the occupied puzzles all have
    /// left, unless one step at a time is needed: noise goes in between
    /// steps, or with early halting a puzzle waits for the first slot to
    /// free.
    fn next_run(&self) -> ActRun {
        let left = |s: &InFlight| self.act_steps.saturating_sub(s.steps as usize).max(1);
        let running = || self.slots.iter().flatten();
        let fewest = running().map(left).min().unwrap_or(1);
        let most = running().map(left).max().unwrap_or(1);
        let one_at_a_time = self.every_step
            || self.noise.is_some()
            || (self.early_halt && !self.waiting.is_empty());
        let max_steps = if one_at_a_time { 1 } else { fewest };
        ActRun {
            max_steps,
            halt: self.early_halt,
            // some puzzle's last step ends the run
            heads: self.every_step || self.early_halt || fewest == max_steps,
            // every puzzle's: all leave after the run
            last: most == max_steps,
            carry: self.carry,
        }
    }

    /// Counts the steps `report` says each slot ran, and marks those that
    /// are done (halted, or at their last allowed step). Nothing is
    /// counted unless the report covers every occupied slot.
    fn count(&mut self, report: &ActReport, occupied: usize) -> Result<()> {
        if report.ran.len() != occupied || report.done.len() != occupied {
            return Err(TrmError::Gpu(format!(
                "the engine reported {} of {occupied} slots",
                report.ran.len()
            )));
        }
        let most = report.ran.iter().copied().max().unwrap_or(0);
        let per_act = self.config.recursion_steps_per_act_step() as u64;
        self.stats.act_steps += u64::from(most);
        self.stats.recursion_steps += u64::from(most) * per_act;
        self.stats.puzzle_recursion_steps +=
            report.ran.iter().map(|&r| u64::from(r)).sum::<u64>() * per_act;
        for (slot, (&ran, &done)) in self
            .slots
            .iter_mut()
            .zip(report.ran.iter().zip(&report.done))
        {
            if let Some(s) = slot {
                s.steps += ran;
                s.noised = 0;
                s.done = done || s.steps as usize >= self.act_steps;
            }
        }
        Ok(())
    }

    /// Noise before every ACT step after a puzzle's first, once per state
    /// (what a failed call added stays added).
    fn add_noise(&mut self) -> Result<()> {
        let Some(noise) = self.noise else {
            return Ok(());
        };
        for i in 0..self.slots.len() {
            let Some(s) = self.slots[i].filter(|s| s.steps >= 1) else {
                continue;
            };
            let draw = noise.draw(s.ticket, s.steps + 1);
            for &state in noise.states() {
                let bit = 1u8 << (state as u8);
                if s.noised & bit != 0 {
                    continue;
                }
                self.engine.add_noise(i, state, &draw)?;
                if let Some(s) = &mut self.slots[i] {
                    s.noised |= bit;
                }
            }
        }
        Ok(())
    }

    /// Takes the puzzles of `slots` (in that order, `out`'s rows) out of
    /// their slots and returns them finished.
    fn finish(&mut self, slots: &[usize], out: &SolveOutput) -> Vec<Finished> {
        let mut done = Vec::with_capacity(slots.len());
        for (row, &slot) in slots.iter().enumerate() {
            let Some(puzzle) = self.slots[slot].take() else {
                continue;
            };
            let mut one = out.clone_shape();
            if one.append_row(out, row).is_err() {
                // keep it: a read of the wrong size is retried
                self.slots[slot] = Some(puzzle);
                continue;
            }
            one.steps[0] = puzzle.steps;
            done.push(Finished {
                ticket: puzzle.ticket,
                output: one,
            });
        }
        self.stats.puzzles += done.len() as u64;
        if let Some(started) = self.started {
            self.stats.seconds = started.elapsed().as_secs_f64();
            self.stats.puzzles_per_second =
                self.stats.puzzles as f64 / self.stats.seconds.max(1e-9);
        }
        done
    }

    /// Refills the slots puzzles left, then the unused ones, then closes
    /// the remaining holes by moving the last occupied slots into them. A
    /// fill that fails puts its puzzles back at the front of the queue.
    fn refill(&mut self) -> Result<()> {
        let mut taken: Vec<(usize, Waiting)> = Vec::new();
        for slot in 0..self.capacity {
            if self.waiting.is_empty() {
                break;
            }
            if slot < self.slots.len() && self.slots[slot].is_some() {
                continue;
            }
            if let Some(next) = self.waiting.pop_front() {
                taken.push((slot, next));
            }
        }
        if !taken.is_empty() {
            let fills: Vec<Fill<'_>> = taken
                .iter()
                .map(|(slot, w)| Fill {
                    slot: *slot,
                    tokens: &w.tokens,
                    puzzle_id: w.puzzle_id,
                    carry: w.carry.as_ref().map(|(h, l)| (&h[..], &l[..])),
                })
                .collect();
            if let Err(e) = self.engine.fill_slots(&fills) {
                for (_, w) in taken.into_iter().rev() {
                    self.waiting.push_front(w);
                }
                return Err(e);
            }
            for (slot, w) in taken {
                let puzzle = Some(InFlight {
                    ticket: w.ticket,
                    steps: 0,
                    noised: 0,
                    done: false,
                });
                if slot >= self.slots.len() {
                    self.slots.resize(slot + 1, None);
                }
                self.slots[slot] = puzzle;
            }
        }
        loop {
            while self.slots.last().is_some_and(Option::is_none) {
                self.slots.pop();
            }
            let Some(hole) = self.slots.iter().position(Option::is_none) else {
                return Ok(());
            };
            let last = self.slots.len() - 1;
            self.engine.move_slot(last, hole)?;
            self.slots.swap(hole, last);
            self.slots.pop();
        }
    }
}
