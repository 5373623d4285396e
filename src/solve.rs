//! What a solve takes and gives, shared by every engine.

use std::path::Path;

use crate::batch::PuzzleBatch;
use crate::config::TrmConfig;
use crate::error::{Result, TrmError};
use crate::tensor_file::{self, OwnedTensor};

/// How to run a solve. The default is the official evaluation: every puzzle
/// runs `halt_max_steps` ACT steps.
///
/// ```
/// use trm_wgpu::{SolveOptions, TrmConfig};
/// let config = TrmConfig::sudoku_extreme();
/// assert_eq!(SolveOptions::default().resolved_act_steps(&config).unwrap(), 16);
/// let quick = SolveOptions::default().act_steps(4).early_halt(true);
/// assert_eq!(quick.resolved_act_steps(&config).unwrap(), 4);
/// assert!(SolveOptions::default().act_steps(0).resolved_act_steps(&config).is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SolveOptions {
    /// ACT steps to run (`None`: the model's `halt_max_steps`).
    pub act_steps: Option<usize>,
    /// Stop a puzzle after the first ACT step where it halts by its model's
    /// rule ([`crate::TrmConfig::halts`]: TRM's `q_halt > 0`, HRM's
    /// `q_halt > q_continue`); its outputs are then that step's.
    pub early_halt: bool,
    /// Return the final carry (`z_H`, `z_L`) in the output (default). Off,
    /// the output's `z_h` and `z_l` are empty and the GPU engine reads back
    /// only the logits and q logits: for Sudoku the carry is 99% of the
    /// bytes a solve would read back.
    pub carry: bool,
    /// Noisy trajectories (none by default): Gaussian noise before every
    /// ACT step after a puzzle's first ([`crate::noise::NoiseOptions`]).
    pub noise: Option<crate::noise::NoiseOptions>,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            act_steps: None,
            early_halt: false,
            carry: true,
            noise: None,
        }
    }
}

impl SolveOptions {
    /// Returns the final carry in the output, or not (see
    /// [`SolveOptions::carry`]).
    pub fn carry(mut self, on: bool) -> Self {
        self.carry = on;
        self
    }

    /// Adds noisy trajectories' noise (see [`SolveOptions::noise`]).
    pub fn noise(mut self, noise: crate::noise::NoiseOptions) -> Self {
        self.noise = Some(noise);
        self
    }

    /// Runs `steps` ACT steps instead of `halt_max_steps`.
    pub fn act_steps(mut self, steps: usize) -> Self {
        self.act_steps = Some(steps);
        self
    }

    /// Turns early halting on or off.
    pub fn early_halt(mut self, on: bool) -> Self {
        self.early_halt = on;
        self
    }

    /// The number of ACT steps this solve runs at most.
    pub fn resolved_act_steps(&self, config: &TrmConfig) -> Result<usize> {
        match self.act_steps {
            Some(0) => Err(TrmError::Input("at least one ACT step is needed".into())),
            Some(n) => Ok(n),
            None => Ok(config.halt_max_steps),
        }
    }
}

/// The recurrent state of a batch: y = z_H (answer) and z = z_L (latent),
/// each row-major `[B, S, D]`.
///
/// A solve can continue from the carry another returned, for example one
/// ACT step at a time to watch the answer change:
///
/// ```
/// use std::sync::Arc;
/// use trm_wgpu::{CpuEngine, Engine, PuzzleBatch, SolveOptions, TrmConfig, TrmModel};
///
/// # fn main() -> trm_wgpu::Result<()> {
/// let config = TrmConfig { hidden_size: 16, puzzle_emb_ndim: 16, ..TrmConfig::sudoku_extreme() };
/// let model = Arc::new(TrmModel::random(config, 1, 0.5)?);
/// let batch = PuzzleBatch::new(model.config(), &vec![1u32; 81], None)?;
/// let mut engine = CpuEngine::with_threads(model, 1)?;
/// let one = SolveOptions::default().act_steps(1);
/// let first = engine.solve(&batch, &one)?;
/// let second = engine.solve_from(&batch, Some(&first.carry()), &one)?;
/// // the same as two steps at once
/// let both = engine.solve(&batch, &SolveOptions::default().act_steps(2))?;
/// assert_eq!(second.logits, both.logits);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Carry {
    /// z_H, `[B, S, D]`.
    pub z_h: Vec<f32>,
    /// z_L, `[B, S, D]`.
    pub z_l: Vec<f32>,
}

impl Carry {
    /// The official initial carry: every row of z_H is `H_init`, every row of
    /// z_L is `L_init`.
    pub fn initial(h_init: &[f32], l_init: &[f32], batch: usize, state_len: usize) -> Self {
        let rows = batch * state_len;
        Carry {
            z_h: h_init.repeat(rows),
            z_l: l_init.repeat(rows),
        }
    }

    /// Checks the sizes against a batch of `batch` puzzles.
    pub(crate) fn check(&self, config: &TrmConfig, batch: usize) -> Result<()> {
        let n = batch * config.state_len() * config.hidden_size;
        if self.z_h.len() != n || self.z_l.len() != n {
            return Err(TrmError::Input(format!(
                "the carry holds {} and {} values, but {batch} puzzles need {n} each",
                self.z_h.len(),
                self.z_l.len()
            )));
        }
        Ok(())
    }
}

/// Everything a solve returns, per puzzle.
#[derive(Clone, Debug, PartialEq)]
pub struct SolveOutput {
    /// Puzzles B.
    pub batch: usize,
    /// Tokens per puzzle.
    pub seq_len: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// S, rows of the carry.
    pub state_len: usize,
    /// D, width of the carry.
    pub hidden_size: usize,
    /// `[B, seq_len, vocab]` logits of the last ACT step each puzzle ran.
    pub logits: Vec<f32>,
    /// `[B]` halting logits.
    pub q_halt_logits: Vec<f32>,
    /// `[B]` continue logits.
    pub q_continue_logits: Vec<f32>,
    /// `[B, S, D]` final z_H (empty when the solve's options asked for no
    /// carry).
    pub z_h: Vec<f32>,
    /// `[B, S, D]` final z_L (empty likewise).
    pub z_l: Vec<f32>,
    /// `[B]` ACT steps each puzzle ran.
    pub steps: Vec<u32>,
}

impl SolveOutput {
    /// An output of the right sizes for `batch` puzzles, filled with NaN so
    /// that an element no engine wrote is visible.
    pub fn poisoned(config: &TrmConfig, batch: usize) -> Self {
        let state = batch * config.state_len() * config.hidden_size;
        SolveOutput {
            batch,
            seq_len: config.seq_len,
            vocab_size: config.vocab_size,
            state_len: config.state_len(),
            hidden_size: config.hidden_size,
            logits: vec![f32::NAN; batch * config.seq_len * config.vocab_size],
            q_halt_logits: vec![f32::NAN; batch],
            q_continue_logits: vec![f32::NAN; batch],
            z_h: vec![f32::NAN; state],
            z_l: vec![f32::NAN; state],
            steps: vec![0; batch],
        }
    }

    /// An empty output of the same sizes per puzzle (no puzzles).
    pub(crate) fn clone_shape(&self) -> Self {
        SolveOutput {
            batch: 0,
            seq_len: self.seq_len,
            vocab_size: self.vocab_size,
            state_len: self.state_len,
            hidden_size: self.hidden_size,
            logits: Vec::new(),
            q_halt_logits: Vec::new(),
            q_continue_logits: Vec::new(),
            z_h: Vec::new(),
            z_l: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// Predicted token per position, `[B, seq_len]` (argmax of the logits;
    /// the first maximum on ties, as PyTorch).
    pub fn predictions(&self) -> Vec<u32> {
        argmax_rows(&self.logits, self.vocab_size)
    }

    /// Predicted tokens of puzzle `i`.
    ///
    /// # Panics
    ///
    /// If `i` is not below [`SolveOutput::batch`].
    pub fn puzzle_predictions(&self, i: usize) -> Vec<u32> {
        assert!(i < self.batch, "puzzle {i} of an output of {}", self.batch);
        let row = self.seq_len * self.vocab_size;
        argmax_rows(&self.logits[i * row..(i + 1) * row], self.vocab_size)
    }

    /// The final carry, to continue the solve.
    pub fn carry(&self) -> Carry {
        Carry {
            z_h: self.z_h.clone(),
            z_l: self.z_l.clone(),
        }
    }

    /// Appends another output of the same model after this one; refuses
    /// one of other sizes, or with a carry where this has none (or the
    /// reverse), leaving this output as it was.
    pub fn append(&mut self, other: SolveOutput) -> Result<()> {
        let sizes = |o: &SolveOutput| (o.seq_len, o.vocab_size, o.state_len, o.hidden_size);
        if sizes(self) != sizes(&other) {
            return Err(TrmError::Input(format!(
                "cannot append an output of (seq_len, vocab, S, D) {:?} to one of {:?}",
                sizes(&other),
                sizes(self)
            )));
        }
        let carried = |o: &SolveOutput| !o.z_h.is_empty();
        if self.batch > 0 && other.batch > 0 && carried(self) != carried(&other) {
            return Err(TrmError::Input(
                "cannot append an output with a carry to one without (or the reverse)".into(),
            ));
        }
        self.batch += other.batch;
        self.logits.extend(other.logits);
        self.q_halt_logits.extend(other.q_halt_logits);
        self.q_continue_logits.extend(other.q_continue_logits);
        self.z_h.extend(other.z_h);
        self.z_l.extend(other.z_l);
        self.steps.extend(other.steps);
        Ok(())
    }

    /// Appends puzzle `row` of `other` (an output of the same sizes).
    pub(crate) fn append_row(&mut self, other: &SolveOutput, row: usize) -> Result<()> {
        let mut one = other.clone_shape();
        one.batch = 1;
        one.steps = vec![0];
        let (l, sd) = (
            self.seq_len * self.vocab_size,
            self.state_len * self.hidden_size,
        );
        one.logits = vec![0.0; l];
        one.q_halt_logits = vec![0.0];
        one.q_continue_logits = vec![0.0];
        if !other.z_h.is_empty() {
            one.z_h = vec![0.0; sd];
            one.z_l = vec![0.0; sd];
        }
        one.set_row(0, other, row)?;
        self.append(one)
    }

    /// Overwrites puzzle `at` with puzzle `row` of `other` (an output of
    /// the same sizes); the carry too where both hold one.
    pub(crate) fn set_row(&mut self, at: usize, other: &SolveOutput, row: usize) -> Result<()> {
        let sizes = |o: &SolveOutput| (o.seq_len, o.vocab_size, o.state_len, o.hidden_size);
        if sizes(self) != sizes(other) || at >= self.batch || row >= other.batch {
            return Err(TrmError::Input(format!(
                "cannot copy puzzle {row} of an output of {} to puzzle {at} of one of {}",
                other.batch, self.batch
            )));
        }
        let l = self.seq_len * self.vocab_size;
        self.logits[at * l..(at + 1) * l].copy_from_slice(&other.logits[row * l..(row + 1) * l]);
        self.q_halt_logits[at] = other.q_halt_logits[row];
        self.q_continue_logits[at] = other.q_continue_logits[row];
        self.steps[at] = other.steps[row];
        let sd = self.state_len * self.hidden_size;
        if !self.z_h.is_empty() && !other.z_h.is_empty() {
            self.z_h[at * sd..(at + 1) * sd].copy_from_slice(&other.z_h[row * sd..(row + 1) * sd]);
            self.z_l[at * sd..(at + 1) * sd].copy_from_slice(&other.z_l[row * sd..(row + 1) * sd]);
        }
        Ok(())
    }

    /// Drops the carry (what [`SolveOptions::carry`] off returns).
    pub(crate) fn without_carry(mut self) -> Self {
        self.z_h = Vec::new();
        self.z_l = Vec::new();
        self
    }

    /// `trm run`'s output file: `logits`, `q_halt_logits`,
    /// `q_continue_logits`, `z_H`, `z_L` (f32; absent when the solve
    /// returned no carry) and `steps` (i32).
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        tensor_file::serialize(&self.tensors(), None)
    }

    /// The arrays of [`SolveOutput::to_safetensors_bytes`], named and
    /// shaped as the file holds them: what other front ends (the Python
    /// package) hand out under the same names.
    pub fn named_arrays(&self) -> Vec<NamedArray<'_>> {
        let (b, s, d) = (self.batch, self.state_len, self.hidden_size);
        let mut arrays = vec![
            NamedArray::f32(
                "logits",
                vec![b, self.seq_len, self.vocab_size],
                &self.logits,
            ),
            NamedArray::f32("q_halt_logits", vec![b], &self.q_halt_logits),
            NamedArray::f32("q_continue_logits", vec![b], &self.q_continue_logits),
        ];
        if !self.z_h.is_empty() || !self.z_l.is_empty() {
            arrays.push(NamedArray::f32("z_H", vec![b, s, d], &self.z_h));
            arrays.push(NamedArray::f32("z_L", vec![b, s, d], &self.z_l));
        }
        let steps = self.steps.iter().map(|&s| s as i32).collect();
        arrays.push(NamedArray::i32("steps", vec![b], steps));
        arrays
    }

    /// The tensors of [`SolveOutput::to_safetensors_bytes`], for outputs
    /// that add their own.
    pub(crate) fn tensors(&self) -> Vec<OwnedTensor> {
        self.named_arrays()
            .iter()
            .map(NamedArray::to_tensor)
            .collect()
    }

    /// Reads `trm run`'s output file back (the tensors
    /// [`SolveOutput::to_safetensors_bytes`] writes; others, such as an
    /// augmented solve's `predictions`, are ignored); `what` names it in
    /// errors. The carry is read where the file holds one.
    pub fn from_safetensors_bytes(bytes: &[u8], what: &str) -> Result<Self> {
        let file = tensor_file::parse(bytes, what)?;
        let bad = |why: String| TrmError::Input(format!("{what}: {why}"));
        let tensor = |name: &str| {
            file.tensor(name)
                .map_err(|_| bad(format!("no tensor `{name}` (not an output of `trm run`?)")))
        };
        let logits = tensor("logits")?;
        let [batch, seq_len, vocab_size] = logits.shape()[..] else {
            return Err(bad(format!(
                "`logits` has shape {:?}, expected [B, seq_len, vocab]",
                logits.shape()
            )));
        };
        let vector = |name: &str| -> Result<Vec<f32>> {
            let t = tensor(name)?;
            if t.shape() != [batch] {
                return Err(bad(format!(
                    "`{name}` has shape {:?}, expected [{batch}]",
                    t.shape()
                )));
            }
            tensor_file::to_f32(name, &t)
        };
        let q_halt_logits = vector("q_halt_logits")?;
        let q_continue_logits = vector("q_continue_logits")?;
        let steps_view = tensor("steps")?;
        if steps_view.shape() != [batch] {
            return Err(bad(format!(
                "`steps` has shape {:?}, expected [{batch}]",
                steps_view.shape()
            )));
        }
        let steps = tensor_file::to_i64("steps", &steps_view)?
            .into_iter()
            .map(|s| u32::try_from(s).map_err(|_| bad(format!("`steps` holds {s}"))))
            .collect::<Result<Vec<u32>>>()?;
        let (mut state_len, mut hidden_size) = (0, 0);
        let (mut z_h, mut z_l) = (Vec::new(), Vec::new());
        if let (Ok(h), Ok(l)) = (file.tensor("z_H"), file.tensor("z_L")) {
            match (h.shape(), l.shape()) {
                (&[hb, s, d], &[lb, ls, ld]) if hb == batch && (lb, ls, ld) == (hb, s, d) => {
                    (state_len, hidden_size) = (s, d);
                }
                (h, l) => {
                    return Err(bad(format!(
                        "`z_H` and `z_L` have shapes {h:?} and {l:?}, expected [{batch}, S, D] both"
                    )));
                }
            }
            z_h = tensor_file::to_f32("z_H", &h)?;
            z_l = tensor_file::to_f32("z_L", &l)?;
        }
        Ok(SolveOutput {
            batch,
            seq_len,
            vocab_size,
            state_len,
            hidden_size,
            logits: tensor_file::to_f32("logits", &logits)?,
            q_halt_logits,
            q_continue_logits,
            z_h,
            z_l,
            steps,
        })
    }

    /// Reads the output file `trm run` wrote to `path` (see
    /// [`SolveOutput::from_safetensors_bytes`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = tensor_file::read_file(path)?;
        Self::from_safetensors_bytes(&bytes, &path.display().to_string())
    }

    /// Writes [`SolveOutput::to_safetensors_bytes`] to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        tensor_file::write_file(path.as_ref(), &self.to_safetensors_bytes()?)
    }
}

/// One array of an output, as `trm run`'s file names and shapes it.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedArray<'a> {
    /// The tensor's name in the file (`logits`, `z_H`, `steps`, ...).
    pub name: &'static str,
    /// Its shape, row-major.
    pub shape: Vec<usize>,
    /// Its elements.
    pub data: ArrayData<'a>,
}

/// The elements of a [`NamedArray`]: the file's element types.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayData<'a> {
    /// float32, borrowed from the output.
    F32(&'a [f32]),
    /// int32.
    I32(Vec<i32>),
}

impl<'a> NamedArray<'a> {
    /// A float32 array.
    pub fn f32(name: &'static str, shape: Vec<usize>, data: &'a [f32]) -> Self {
        NamedArray {
            name,
            shape,
            data: ArrayData::F32(data),
        }
    }

    /// An int32 array.
    pub fn i32(name: &'static str, shape: Vec<usize>, data: Vec<i32>) -> Self {
        NamedArray {
            name,
            shape,
            data: ArrayData::I32(data),
        }
    }

    pub(crate) fn to_tensor(&self) -> OwnedTensor {
        match &self.data {
            ArrayData::F32(v) => OwnedTensor::f32(self.name, self.shape.clone(), v),
            ArrayData::I32(v) => OwnedTensor::i32(self.name, self.shape.clone(), v),
        }
    }
}

/// Index of the largest value of each row of `width` values (first on ties).
fn argmax_rows(values: &[f32], width: usize) -> Vec<u32> {
    values
        .chunks_exact(width.max(1))
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

/// A TRM inference engine: the CPU reference or the GPU engine.
///
/// Both engines take the same batches and options and give the same
/// outputs (to float rounding), so an application holds a `dyn Engine` or
/// an [`AnyEngine`](crate::AnyEngine) and lets [`Backend`](crate::Backend)
/// choose:
///
/// ```
/// use std::sync::Arc;
/// use trm_wgpu::{Backend, Engine, EngineOptions, PuzzleBatch, SolveOptions, TrmModel};
///
/// # fn main() -> trm_wgpu::Result<()> {
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/sudoku-easy/model.safetensors");
/// let model = Arc::new(TrmModel::load(path)?);
/// let mut engine: Box<dyn Engine> = Box::new(Backend::Cpu.build(model.clone(), &EngineOptions::default())?);
/// println!("running on {}", engine.describe());
/// // two puzzles of blanks (token 1), as one batch
/// let batch = PuzzleBatch::new(model.config(), &vec![1u32; 2 * 81], None)?;
/// let out = engine.solve(&batch, &SolveOptions::default().act_steps(2))?;
/// assert_eq!(out.batch, 2);
/// assert_eq!(out.predictions().len(), 2 * 81);
/// # Ok(())
/// # }
/// ```
pub trait Engine {
    /// Configuration of the loaded model.
    fn config(&self) -> &TrmConfig;

    /// Short description: backend and, for the GPU, the adapter.
    fn describe(&self) -> String;

    /// Solves a batch, starting from `carry` (or the model's initial state
    /// when `None`).
    fn solve_from(
        &mut self,
        batch: &PuzzleBatch,
        carry: Option<&Carry>,
        options: &SolveOptions,
    ) -> Result<SolveOutput>;

    /// Solves a batch from the model's initial state.
    ///
    /// Every puzzle runs the model's `halt_max_steps` ACT steps unless
    /// `options` says otherwise ([`SolveOptions::act_steps`],
    /// [`SolveOptions::early_halt`]); the outputs say how many each ran.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use trm_wgpu::tasks::sudoku::Grid;
    /// use trm_wgpu::{CpuEngine, Engine, PuzzleBatch, SolveOptions, TrmModel};
    ///
    /// # fn main() -> trm_wgpu::Result<()> {
    /// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/sudoku-easy/model.safetensors");
    /// let model = Arc::new(TrmModel::load(path)?);
    /// let puzzle = Grid::parse("97..1..266.34.7...15..624.9...6.4.8...9..36477469.8...3...467...62.89.1389.531.6.")?;
    /// let batch = PuzzleBatch::new(model.config(), &puzzle.tokens(), None)?;
    /// let mut engine = CpuEngine::new(model)?;
    /// let out = engine.solve(&batch, &SolveOptions::default().early_halt(true))?;
    /// let answer = Grid::from_tokens(&out.predictions());
    /// println!("{} after {} ACT steps", answer.to_line(), out.steps[0]);
    /// assert!(answer.keeps_givens_of(&puzzle));
    /// # Ok(())
    /// # }
    /// ```
    fn solve(&mut self, batch: &PuzzleBatch, options: &SolveOptions) -> Result<SolveOutput> {
        self.solve_from(batch, None, options)
    }

    /// Solves one puzzle: its `seq_len` token ids and puzzle identifier
    /// (0 for a model without a puzzle table), checked as a batch is
    /// (build a [`PuzzleBatch`] for token ids of another integer type).
    fn solve_puzzle(
        &mut self,
        tokens: &[u32],
        puzzle_id: u32,
        options: &SolveOptions,
    ) -> Result<SolveOutput> {
        let batch = PuzzleBatch::new(self.config(), tokens, Some(&[puzzle_id]))?;
        if batch.len() != 1 {
            return Err(TrmError::Input(format!(
                "{} tokens are {} puzzles, not one",
                tokens.len(),
                batch.len()
            )));
        }
        self.solve(&batch, options)
    }
}

#[cfg(test)]
mod append_tests {
    use super::*;

    #[test]
    fn append_refuses_outputs_of_other_sizes() {
        let config = TrmConfig::sudoku_extreme();
        let mut out = SolveOutput::poisoned(&config, 2);
        out.append(SolveOutput::poisoned(&config, 3)).unwrap();
        assert_eq!((out.batch, out.steps.len()), (5, 5));
        let other = TrmConfig {
            seq_len: 30,
            ..config.clone()
        };
        assert!(out.append(SolveOutput::poisoned(&other, 1)).is_err());
        assert!(
            out.append(SolveOutput::poisoned(&config, 1).without_carry())
                .is_err()
        );
        assert_eq!(out.batch, 5);
    }
}
