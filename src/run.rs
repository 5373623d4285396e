//! What `trm run` does with a batch: a plain solve, test-time augmentation
//! and noisy trajectories with a choice among their answers, continuous
//! batching, or fixed batches one after another. The command line and the
//! Python package both call [`run`] with [`RunOptions`], so every front end
//! takes the same options under the same names, refuses the same
//! combinations and names its outputs alike ([`RunOutput::named_arrays`]).

use crate::augment::{self, AugmentOptions, AugmentTask, AugmentedOutput, Selection};
use crate::batch::PuzzleBatch;
use crate::error::{Result, TrmError};
use crate::noise::{NoiseOn, NoiseOptions};
use crate::program::{self, SlotEngine, StreamStats};
use crate::solve::{Engine, NamedArray, SolveOptions, SolveOutput};

/// The largest `steps` accepted: the ACT loop's counters are 32-bit, and a
/// solve of more steps than this is a typo rather than a plan.
pub const MAX_ACT_STEPS: usize = 1 << 16;

/// The options of `trm run`, named as its flags (`--noise-on` is
/// `noise_on`). The default is the plain solve of the official evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct RunOptions {
    /// ACT steps to run (default: the model's `halt_max_steps`).
    pub steps: Option<usize>,
    /// Early halting: stop each puzzle after the first ACT step where it
    /// halts by its model's rule.
    pub halt: bool,
    /// The task whose symmetries `augment` uses.
    pub task: Option<AugmentTask>,
    /// Test-time augmentation: K symmetric variants of each puzzle (variant
    /// 0 the puzzle itself), one answer chosen by `select`.
    pub augment: Option<usize>,
    /// How `augment` and `trajectories` choose.
    pub select: Selection,
    /// Seed of the variants and of the noise.
    pub seed: u64,
    /// Noisy trajectories: K of each puzzle (of each variant), with
    /// Gaussian noise of standard deviation `noise` before every ACT step
    /// after the first.
    pub trajectories: Option<usize>,
    /// Standard deviation of the trajectories' noise.
    pub noise: Option<f32>,
    /// The state the noise goes to.
    pub noise_on: NoiseOn,
    /// Continuous batching (with `halt`): at most this many puzzles in
    /// flight.
    pub slots: Option<usize>,
    /// Fixed batches of this many puzzles, one after another.
    pub batch: Option<usize>,
}

impl RunOptions {
    /// Checks the combination (what the command line's parser checks too,
    /// for front ends without one) and returns the solve options it makes:
    /// steps, halting and noise.
    pub fn solve_options(&self) -> Result<SolveOptions> {
        let refuse = |why: &str| Err(TrmError::Input(why.into()));
        if self.augment.is_some() && self.task.is_none() {
            return refuse(
                "--augment needs --task (sudoku, maze or arc: the task whose symmetries make the variants)",
            );
        }
        if self.trajectories.is_some() != self.noise.is_some() {
            return refuse("--trajectories and --noise go together");
        }
        if self.slots.is_some() {
            if !self.halt {
                return refuse(
                    "--slots needs --halt (continuous batching refills the slots of halted puzzles)",
                );
            }
            if self.augment.is_some() || self.batch.is_some() || self.trajectories.is_some() {
                return refuse(
                    "--slots cannot be combined with --augment, --batch or --trajectories",
                );
            }
        }
        if self.batch.is_some() && (self.augment.is_some() || self.trajectories.is_some()) {
            return refuse("--batch cannot be combined with --augment or --trajectories");
        }
        if self.slots == Some(0) || self.batch == Some(0) {
            return refuse("--slots and --batch take at least one puzzle");
        }
        if self.select == Selection::Verifier && self.task.is_none() {
            return refuse("--select verifier needs --task (a task with a verifier: sudoku)");
        }
        let mut options = SolveOptions::default().early_halt(self.halt);
        if let Some(steps) = self.steps {
            if steps > MAX_ACT_STEPS {
                return Err(TrmError::Input(format!(
                    "--steps {steps} is beyond the {MAX_ACT_STEPS} ACT steps a solve may run"
                )));
            }
            options = options.act_steps(steps);
        }
        if let (Some(k), Some(sigma)) = (self.trajectories, self.noise) {
            if k == 0 || u32::try_from(k).is_err() || !sigma.is_finite() || sigma < 0.0 {
                return Err(TrmError::Input(format!(
                    "--trajectories {k} --noise {sigma}: at least one trajectory and a finite sigma >= 0"
                )));
            }
            options = options.noise(NoiseOptions {
                sigma,
                seed: self.seed,
                on: self.noise_on,
                trajectories: k as u32,
            });
        }
        Ok(options)
    }

    /// Whether each puzzle's outputs depend on where it stands in the batch
    /// (augmented variants and trajectories' noise are drawn by the
    /// puzzle's index): such a run cannot be split into shares.
    pub fn depends_on_position(&self) -> bool {
        self.augment.is_some() || self.trajectories.is_some()
    }
}

/// A run's outputs: a solve's, or an augmented solve's with its choice.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutput {
    /// A plain solve (also fixed batches and continuous batching).
    Plain(SolveOutput),
    /// `augment` or `trajectories`: the chosen answers.
    Augmented(AugmentedOutput),
}

impl RunOutput {
    /// The solve's outputs (for an augmented run, the chosen variants').
    pub fn output(&self) -> &SolveOutput {
        match self {
            RunOutput::Plain(out) => out,
            RunOutput::Augmented(aug) => &aug.output,
        }
    }

    /// The arrays of `trm run`'s output file, by name: `logits`,
    /// `q_halt_logits`, `q_continue_logits`, `z_H` and `z_L` (where the
    /// solve returned a carry), `steps`; an augmented run adds
    /// `predictions`, `selected` and `agreement`.
    pub fn named_arrays(&self) -> Vec<NamedArray<'_>> {
        match self {
            RunOutput::Plain(out) => out.named_arrays(),
            RunOutput::Augmented(aug) => aug.named_arrays(),
        }
    }

    /// `trm run`'s output file.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        match self {
            RunOutput::Plain(out) => out.to_safetensors_bytes(),
            RunOutput::Augmented(aug) => aug.to_safetensors_bytes(),
        }
    }
}

/// A run's outputs and, for continuous batching and fixed batches, the
/// program's counters over the whole run.
#[derive(Clone, Debug)]
pub struct Run {
    /// The outputs.
    pub output: RunOutput,
    /// The counters (`slots` or `batch` runs only).
    pub stats: Option<StreamStats>,
}

/// Runs `batch` on `engine` as `options` say.
pub fn run<E: Engine + SlotEngine>(
    engine: &mut E,
    batch: &PuzzleBatch,
    options: &RunOptions,
) -> Result<Run> {
    let solve = options.solve_options()?;
    // trajectories alone: one variant, the identity, of any task
    let variants = match (options.augment, options.trajectories) {
        (None, Some(_)) => Some(1),
        (variants, _) => variants,
    };
    if let Some(variants) = variants {
        let augment = AugmentOptions {
            task: options.task.unwrap_or(AugmentTask::Sudoku),
            variants,
            select: options.select,
            seed: options.seed,
        };
        let augmented = augment::solve_augmented(engine, batch, &solve, &augment)?;
        return Ok(Run {
            output: RunOutput::Augmented(augmented),
            stats: None,
        });
    }
    if let Some(slots) = options.slots {
        let (out, stats) = program::solve_streaming(engine, batch, None, slots, &solve)?;
        return Ok(Run {
            output: RunOutput::Plain(out),
            stats: Some(stats),
        });
    }
    if let Some(size) = options.batch {
        // fixed batches one after another: network calls add up
        let per_act = engine.config().recursion_steps_per_act_step() as u64;
        let mut stats = StreamStats {
            slots: size as u64,
            ..StreamStats::default()
        };
        let mut all: Option<SolveOutput> = None;
        for start in (0..batch.len()).step_by(size) {
            let part = batch.slice(start..(start + size).min(batch.len()));
            let out = engine.solve(&part, &solve)?;
            let most = u64::from(out.steps.iter().copied().max().unwrap_or(0));
            stats.act_steps += most;
            stats.recursion_steps += most * per_act;
            stats.puzzle_recursion_steps +=
                out.steps.iter().map(|&s| u64::from(s)).sum::<u64>() * per_act;
            stats.puzzles += out.batch as u64;
            match &mut all {
                None => all = Some(out),
                Some(all) => all.append(out)?,
            }
        }
        let out = all.ok_or_else(|| TrmError::Input("the batch holds no puzzles".into()))?;
        return Ok(Run {
            output: RunOutput::Plain(out),
            stats: Some(stats),
        });
    }
    Ok(Run {
        output: RunOutput::Plain(engine.solve(batch, &solve)?),
        stats: None,
    })
}
