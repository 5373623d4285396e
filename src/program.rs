//! The solve program: TRM's recursion and ACT loop, written once over the
//! few operations an engine provides ([`SlotEngine`]).
//!
//! An engine holds a fixed number of *slots*, each one puzzle in flight:
//! its embedded input x and its carry (z_H, z_L). The program
//!
//! - fills free slots with waiting puzzles ([`SlotEngine::fill_slot`]:
//!   embedding, and the initial or a given carry);
//! - runs one ACT step over the occupied slots ([`SlotEngine::act_step`]:
//!   the network calls of [`act_step_calls`], then the heads), which are
//!   always slots `0..occupied`, so an engine runs them as one batch;
//! - reads the Q logits and decides, by the model's rule
//!   ([`TrmConfig::halts`]), which puzzles halt; a puzzle also leaves after
//!   its last allowed ACT step;
//! - reads the outputs of the puzzles that left ([`SlotEngine::read_slots`])
//!   and records the ACT step each left at;
//! - refills their slots with the next puzzles at once (continuous
//!   batching), or, with none waiting, moves the last occupied slot into the
//!   hole ([`SlotEngine::move_slot`]) so the occupied slots stay `0..n`.
//!
//! A fixed-batch solve is the same program with as many slots as puzzles
//! ([`solve_batch`]); a streaming solve has fewer slots than puzzles
//! ([`Stream`], [`solve_streaming`]). A puzzle's outputs do not depend on
//! which slot it runs in or beside whom, so both give every puzzle the same
//! answers and `steps`.
//!
//! The GPU engine keeps a fast path for a fixed batch
//! (`GpuEngine::solve_from`): all ACT steps recorded ahead, halting decided
//! on the device (`shaders/halt.wgsl`, the same rule), the host one step
//! behind. Its network calls come from [`act_step_calls`] too.

use std::collections::VecDeque;
use web_time::Instant;

use serde::Serialize;

use crate::batch::PuzzleBatch;
use crate::config::TrmConfig;
use crate::error::{Result, TrmError};
use crate::noise::{NoiseDraw, NoiseOptions, State};
use crate::solve::{Carry, Engine, SolveOptions, SolveOutput};

/// One network call of an ACT step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// The latent update: `z_L = net_L(z_L, z_H + x)`.
    Latent,
    /// The answer update: `z_H = net_H(z_H, z_L)`.
    Answer,
}

/// The network calls of one ACT step, in order: H_cycles times (L_cycles
/// latent updates, then one answer update), as `shared/TRM.md` states it
/// (HRM runs the same loop, each update with its own level's network).
///
/// ```
/// use trm_wgpu::program::{Call, act_step_calls};
/// use trm_wgpu::TrmConfig;
/// let config = TrmConfig { h_cycles: 2, l_cycles: 2, ..TrmConfig::sudoku_extreme() };
/// let calls: Vec<Call> = act_step_calls(&config).collect();
/// use Call::*;
/// assert_eq!(calls, [Latent, Latent, Answer, Latent, Latent, Answer]);
/// ```
pub fn act_step_calls(config: &TrmConfig) -> impl Iterator<Item = Call> + use<> {
    let (t, n) = (config.h_cycles, config.l_cycles);
    (0..t).flat_map(move |_| (0..=n).map(move |l| if l == n { Call::Answer } else { Call::Latent }))
}

/// What an engine provides to the solve program: slots of puzzles in
/// flight, the ACT step over them, and reads of their outputs. Slots are
/// numbered from 0; the program keeps the occupied ones at `0..n`.
pub trait SlotEngine: Engine {
    /// Makes room for `slots` puzzles in flight (at least 1), forgetting
    /// any there; returns how many the engine holds, at most `slots` (a
    /// device may hold fewer).
    fn open_slots(&mut self, slots: usize) -> Result<usize>;

    /// Puts a puzzle into a free slot: its `seq_len` token ids and puzzle
    /// identifier (checked by the caller), and its carry, `[S, D]` z_H and
    /// z_L (the model's initial carry when `None`).
    fn fill_slot(
        &mut self,
        slot: usize,
        tokens: &[u32],
        puzzle_id: u32,
        carry: Option<(&[f32], &[f32])>,
    ) -> Result<()>;

    /// Moves the puzzle in slot `from` to slot `to`, whose puzzle has left;
    /// `from` is free afterwards.
    fn move_slot(&mut self, from: usize, to: usize) -> Result<()>;

    /// One ACT step over slots `0..occupied`: the network calls of
    /// [`act_step_calls`], then, with `heads`, the output heads, returning
    /// each slot's `[q_halt, q_continue]` (empty without).
    fn act_step(&mut self, occupied: usize, heads: bool) -> Result<Vec<[f32; 2]>>;

    /// Adds `draw`'s noise to `state` of the puzzle in `slot`
    /// ([`crate::noise::add_noise`]'s numbers, made where the state lives).
    fn add_noise(&mut self, slot: usize, state: State, draw: &NoiseDraw) -> Result<()>;

    /// The outputs of `slots` after their last heads, in that order
    /// (`steps` left 0 for the program to fill; no carry unless `carry`).
    fn read_slots(&mut self, slots: &[usize], carry: bool) -> Result<SolveOutput>;
}

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
    steps: u32,
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

    /// Fills free slots with waiting puzzles, runs one ACT step over the
    /// occupied ones, and returns the puzzles that finished with it.
    pub fn step(&mut self) -> Result<Vec<Finished>> {
        self.refill()?;
        let occupied = self.slots.len();
        if occupied == 0 {
            return Ok(Vec::new());
        }
        self.started.get_or_insert_with(Instant::now);
        for slot in self.slots.iter_mut().flatten() {
            slot.steps += 1;
        }
        if let Some(noise) = self.noise {
            // before every ACT step after a puzzle's first
            for (i, slot) in self.slots.iter().enumerate() {
                if let Some(s) = slot.filter(|s| s.steps > 1) {
                    let draw = noise.draw(s.ticket, s.steps);
                    for &state in noise.states() {
                        self.engine.add_noise(i, state, &draw)?;
                    }
                }
            }
        }
        let last = |s: &InFlight| s.steps as usize >= self.act_steps;
        let heads = self.early_halt || self.slots.iter().flatten().any(last);
        let q = self.engine.act_step(occupied, heads)?;
        let per_act = self.config.recursion_steps_per_act_step() as u64;
        self.stats.act_steps += 1;
        self.stats.recursion_steps += per_act;
        self.stats.puzzle_recursion_steps += per_act * occupied as u64;
        let leaving: Vec<usize> = (0..occupied)
            .filter(|&i| {
                let puzzle = self.slots[i].as_ref().is_some_and(last);
                let halts = self.early_halt
                    && q.get(i)
                        .is_some_and(|&[halt, cont]| self.config.halts(halt, cont));
                puzzle || halts
            })
            .collect();
        if leaving.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.engine.read_slots(&leaving, self.carry)?;
        let mut done = Vec::with_capacity(leaving.len());
        for (row, &slot) in leaving.iter().enumerate() {
            let Some(puzzle) = self.slots[slot].take() else {
                continue;
            };
            let mut one = out.clone_shape();
            one.append_row(&out, row)?;
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
        Ok(done)
    }

    /// Steps until every submitted puzzle finished; returns them.
    pub fn drain(&mut self) -> Result<Vec<Finished>> {
        let mut done = Vec::new();
        while !self.is_idle() {
            done.extend(self.step()?);
        }
        Ok(done)
    }

    /// Refills the slots puzzles left, then the unused ones, then closes
    /// the remaining holes by moving the last occupied slots into them.
    fn refill(&mut self) -> Result<()> {
        for slot in 0..self.capacity {
            if self.waiting.is_empty() {
                break;
            }
            if slot < self.slots.len() && self.slots[slot].is_some() {
                continue;
            }
            let Some(next) = self.waiting.pop_front() else {
                break;
            };
            let carry = next.carry.as_ref().map(|(h, l)| (&h[..], &l[..]));
            self.engine
                .fill_slot(slot, &next.tokens, next.puzzle_id, carry)?;
            let puzzle = Some(InFlight {
                ticket: next.ticket,
                steps: 0,
            });
            if slot < self.slots.len() {
                self.slots[slot] = puzzle;
            } else {
                self.slots.push(puzzle);
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

/// Solves `batch` (from `carry`, or the initial state) with at most
/// `slots` puzzles in flight, and returns the outputs in the batch's order
/// and the program's counters.
pub fn solve_streaming<E: SlotEngine + ?Sized>(
    engine: &mut E,
    batch: &PuzzleBatch,
    carry: Option<&Carry>,
    slots: usize,
    options: &SolveOptions,
) -> Result<(SolveOutput, StreamStats)> {
    let config = engine.config().clone();
    if batch.seq_len() != config.seq_len {
        return Err(TrmError::Input(format!(
            "the batch has seq_len {}, the model {}",
            batch.seq_len(),
            config.seq_len
        )));
    }
    let b = batch.len();
    if let Some(c) = carry {
        c.check(&config, b)?;
    }
    let sd = config.state_len() * config.hidden_size;
    let mut stream = Stream::new(engine, slots.min(b.max(1)), options)?;
    for i in 0..b {
        let rows = carry.map(|c| (&c.z_h[i * sd..(i + 1) * sd], &c.z_l[i * sd..(i + 1) * sd]));
        stream.submit_from(batch.puzzle_tokens(i), batch.puzzle_ids()[i], rows)?;
    }
    let mut out = SolveOutput::poisoned(&config, b);
    for finished in stream.drain()? {
        out.set_row(finished.ticket as usize, &finished.output, 0)?;
    }
    let stats = stream.stats().clone();
    Ok((
        if options.carry {
            out
        } else {
            out.without_carry()
        },
        stats,
    ))
}

/// Solves a fixed batch: the program with a slot per puzzle (as many as the
/// engine holds; more are streamed through them).
pub fn solve_batch<E: SlotEngine + ?Sized>(
    engine: &mut E,
    batch: &PuzzleBatch,
    carry: Option<&Carry>,
    options: &SolveOptions,
) -> Result<SolveOutput> {
    solve_streaming(engine, batch, carry, batch.len(), options).map(|(out, _)| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_act_step_is_t_times_n_latent_updates_and_an_answer_update() {
        let config = TrmConfig::sudoku_extreme();
        let calls: Vec<Call> = act_step_calls(&config).collect();
        assert_eq!(calls.len(), config.recursion_steps_per_act_step());
        assert_eq!(
            calls.iter().filter(|c| **c == Call::Answer).count(),
            config.h_cycles
        );
        assert_eq!(calls[config.l_cycles], Call::Answer);
    }
}
