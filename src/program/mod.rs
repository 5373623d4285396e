//! The solve program: TRM's recursion and ACT loop, written once over the
//! few operations an engine provides ([`SlotEngine`]). Every solve runs it:
//! a fixed batch ([`solve_batch`], what [`Engine::solve`] of both engines
//! does), streaming ([`Stream`], [`solve_streaming`]), noisy trajectories,
//! augmentation, the bench's solves and the web page's.
//!
//! An engine holds a fixed number of *slots*, each one puzzle in flight:
//! its embedded input x and its carry (z_H, z_L). The program
//!
//! - fills free slots with waiting puzzles ([`SlotEngine::fill_slots`]:
//!   embedding, and the initial or a given carry);
//! - runs ACT steps over the occupied slots ([`SlotEngine::act_steps`]:
//!   each the network calls of [`act_step_calls`], then the heads), which
//!   are always slots `0..occupied`, so an engine runs them as one batch:
//!   one step where a puzzle's leaving should free its slot at once (early
//!   halting with puzzles waiting) or noise goes between steps, else as
//!   many as every puzzle has left, which an engine may run ahead without
//!   the host (the GPU records them all and decides halting on the device,
//!   by the same rule, [`TrmConfig::halts`]; the CPU engine runs one and
//!   returns);
//! - counts each puzzle's ACT steps; a puzzle leaves when it halted or ran
//!   its last allowed step;
//! - reads the outputs of the puzzles that left ([`SlotEngine::read_slots`],
//!   or with the run when the engine read them along) and records the ACT
//!   steps each ran;
//! - refills their slots with the next puzzles (continuous batching), or,
//!   with none waiting, moves the last occupied slot into the hole
//!   ([`SlotEngine::move_slot`]) so the occupied slots stay `0..n`.
//!
//! A fixed-batch solve is the same program with as many slots as puzzles
//! (more are streamed through them, a wave of slots at a time); a
//! streaming solve has fewer slots than puzzles. A puzzle's outputs do not
//! depend on which slot it runs in or beside whom, so both give every
//! puzzle the same answers and `steps`.
//!
//! The program survives its engine's errors: an operation that fails
//! leaves the stream as it was before it (a puzzle whose fill failed waits
//! again at the front, noise once added is not added again, ACT steps are
//! counted only once run, puzzles whose outputs could not be read are read
//! first on the next step), so calling [`Stream::step`] again neither
//! repeats an ACT step nor loses or duplicates a puzzle.
//!
//! [`Stream`] and its counters are in [`stream`]; this module holds the
//! operations, the calls of an ACT step and the solves built on a stream.
//!
//! The engine operations that wait for a device are async (the browser
//! cannot block); the blocking calls ([`Stream::step`], [`solve_batch`])
//! run them to their end natively.

use crate::batch::PuzzleBatch;
use crate::blocking::block_on;
use crate::config::TrmConfig;
use crate::error::{Result, TrmError};
use crate::noise::{NoiseDraw, NoiseOptions, State};
use crate::solve::{Carry, Engine, SolveOptions, SolveOutput};

pub mod stream;

pub use stream::{Finished, Stream, StreamStats};

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

/// A puzzle put into a slot: its `seq_len` token ids and puzzle identifier
/// (checked by the caller), and its carry, `[S, D]` z_H and z_L (the
/// model's initial carry when `None`).
#[derive(Clone, Copy, Debug)]
pub struct Fill<'a> {
    /// The slot.
    pub slot: usize,
    /// Its token ids.
    pub tokens: &'a [u32],
    /// Its puzzle identifier.
    pub puzzle_id: u32,
    /// Its carry, or the initial one.
    pub carry: Option<(&'a [f32], &'a [f32])>,
}

/// A run of ACT steps over the occupied slots ([`SlotEngine::act_steps`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActRun {
    /// At most this many ACT steps (at least one).
    pub max_steps: usize,
    /// Early halting: the heads after every step, and each slot stops
    /// after the first step whose Q logits say halt ([`TrmConfig::halts`]).
    pub halt: bool,
    /// The heads after the run's last step (a slot reaches its last
    /// allowed step there, so its outputs must exist).
    pub heads: bool,
    /// The run's last step is every slot's last allowed one: every slot
    /// leaves after it, so the engine may read every slot's outputs along
    /// ([`ActReport::outputs`]).
    pub last: bool,
    /// Read the final carry with the outputs.
    pub carry: bool,
}

/// What a run of ACT steps did.
#[derive(Clone, Debug, PartialEq)]
pub struct ActReport {
    /// ACT steps each slot `0..occupied` ran in this run (at least one; the
    /// same for all but the slots that halted).
    pub ran: Vec<u32>,
    /// Whether each slot is done: it halted, or the run was its `last`.
    pub done: Vec<bool>,
    /// Every occupied slot's outputs (`steps` left 0), where the engine read
    /// them with the run (a `last` run); else `None`.
    pub outputs: Option<SolveOutput>,
}

/// What an engine provides to the solve program: slots of puzzles in
/// flight, ACT steps over them, and reads of their outputs. Slots are
/// numbered from 0; the program keeps the occupied ones at `0..n`. An
/// operation that fails changes nothing the program relies on (the
/// program retries it as it was).
pub trait SlotEngine: Engine {
    /// Makes room for `slots` puzzles in flight (at least 1), forgetting
    /// any there; returns how many the engine holds, at most `slots` (a
    /// device may hold fewer).
    fn open_slots(&mut self, slots: usize) -> Result<usize>;

    /// Puts puzzles into free slots.
    fn fill_slots(&mut self, fills: &[Fill<'_>]) -> Result<()>;

    /// Moves the puzzle in slot `from` to slot `to`, whose puzzle has left;
    /// `from` is free afterwards.
    fn move_slot(&mut self, from: usize, to: usize) -> Result<()>;

    /// Runs at least one and at most `run.max_steps` ACT steps over slots
    /// `0..occupied`: the network calls of [`act_step_calls`] each, the
    /// heads after every step with `run.halt` and after the last with
    /// `run.heads`; reports what ran ([`ActReport`]).
    fn act_steps(
        &mut self,
        occupied: usize,
        run: ActRun,
    ) -> impl Future<Output = Result<ActReport>>;

    /// Adds `draw`'s noise to `state` of the puzzle in `slot`
    /// ([`crate::noise::add_noise`]'s numbers, made where the state lives).
    fn add_noise(&mut self, slot: usize, state: State, draw: &NoiseDraw) -> Result<()>;

    /// The outputs of `slots` after their last heads, in that order
    /// (`steps` left 0 for the program to fill; no carry unless `carry`).
    fn read_slots(
        &mut self,
        slots: &[usize],
        carry: bool,
    ) -> impl Future<Output = Result<SolveOutput>>;
}

/// Solves `batch` (from `carry`, or the initial state) with at most
/// `slots` puzzles in flight, and returns the outputs in the batch's order
/// and the program's counters (blocking; [`solve_streaming_async`] in the
/// browser).
pub fn solve_streaming<E: SlotEngine + ?Sized>(
    engine: &mut E,
    batch: &PuzzleBatch,
    carry: Option<&Carry>,
    slots: usize,
    options: &SolveOptions,
) -> Result<(SolveOutput, StreamStats)> {
    block_on(
        "solve_streaming_async",
        solve_streaming_async(engine, batch, carry, slots, options),
    )
}

/// [`solve_streaming`], async. Every puzzle must come back exactly once.
pub async fn solve_streaming_async<E: SlotEngine + ?Sized>(
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
    let mut seen = vec![false; b];
    for finished in stream.drain_async().await? {
        let i = finished.ticket as usize;
        if i >= b || std::mem::replace(&mut seen[i], true) {
            return Err(TrmError::Gpu(format!(
                "the stream returned puzzle {i} twice or out of the batch of {b}"
            )));
        }
        out.set_row(i, &finished.output, 0)?;
    }
    if let Some(missing) = seen.iter().position(|&s| !s) {
        return Err(TrmError::Gpu(format!(
            "the stream never returned puzzle {missing} of {b}"
        )));
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
/// engine holds; more are streamed through them). Blocking;
/// [`solve_batch_async`] in the browser.
pub fn solve_batch<E: SlotEngine + ?Sized>(
    engine: &mut E,
    batch: &PuzzleBatch,
    carry: Option<&Carry>,
    options: &SolveOptions,
) -> Result<SolveOutput> {
    solve_streaming(engine, batch, carry, batch.len(), options).map(|(out, _)| out)
}

/// [`solve_batch`], async.
pub async fn solve_batch_async<E: SlotEngine + ?Sized>(
    engine: &mut E,
    batch: &PuzzleBatch,
    carry: Option<&Carry>,
    options: &SolveOptions,
) -> Result<SolveOutput> {
    solve_streaming_async(engine, batch, carry, batch.len(), options)
        .await
        .map(|(out, _)| out)
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
