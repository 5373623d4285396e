//! A batch of puzzles: token ids and puzzle identifiers, checked against the
//! model's vocabulary and puzzle table.
//!
//! Token ids and puzzle identifiers are `u32` throughout the public API:
//! what a batch holds, what [`crate::SolveOutput::predictions`] returns,
//! what the tasks' grids produce and read. They are small and never
//! negative, and `u32` is what an index into the model's tables is on both
//! engines. Inputs come in the integer type the application has: NumPy's
//! int64 from the authors' data sets, int32, bytes ([`InputInt`]);
//! [`PuzzleBatch::new`] checks every value, a negative one included, at the
//! boundary and refuses it with a typed error.

use std::ops::Range;
use std::path::Path;

use crate::config::TrmConfig;
use crate::error::{Result, TrmError};
use crate::tensor_file;

/// Default limit on the state memory of a batch read from a file, of the
/// batches `--augment` and `--trajectories` make from it, and on the
/// working memory an engine derives from a configuration (8 GiB).
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 8 << 30;

/// Environment variable that overrides [`DEFAULT_MAX_BATCH_BYTES`].
pub const MAX_BATCH_BYTES_ENV: &str = "TRM_MAX_BATCH_BYTES";

/// f32 buffers of `[S, D]` per puzzle counted by [`PuzzleBatch::state_bytes`].
pub const STATE_BUFFERS: u64 = 8;

/// An integer type token ids and puzzle identifiers may come in: `u8`,
/// `u16`, `u32`, `i8`, `i16`, `i32` or `i64` (sealed: every value of these
/// fits an `i64`, the type the range errors report).
pub trait InputInt: Copy + sealed::Sealed {
    /// The value, exactly.
    fn to_i64(self) -> i64;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! input_ints {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl InputInt for $t {
            fn to_i64(self) -> i64 {
                i64::from(self)
            }
        }
    )*};
}
input_ints!(u8, u16, u32, i8, i16, i32, i64);

/// Puzzles ready to solve: `B x seq_len` token ids and `B` puzzle identifiers,
/// all within the model's ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PuzzleBatch {
    seq_len: usize,
    tokens: Vec<u32>,
    puzzle_ids: Vec<u32>,
}

impl PuzzleBatch {
    /// Checks and wraps `tokens` (row-major `[B, seq_len]`) and optional
    /// `puzzle_ids` (`[B]`, default 0) for the model `config`, both in any
    /// [`InputInt`] type (`u32`, the crate's own, or `i64` as NumPy gives
    /// them). A token outside `0..vocab_size` is refused with
    /// [`TrmError::TokenOutOfRange`], an identifier outside the puzzle table
    /// with [`TrmError::PuzzleIdOutOfRange`].
    ///
    /// ```
    /// use trm_wgpu::{PuzzleBatch, TrmConfig, TrmError};
    /// let config = TrmConfig::sudoku_extreme();
    /// let blanks = [1u32; 81];
    /// assert_eq!(PuzzleBatch::new(&config, &blanks, None)?.len(), 1);
    /// let from_numpy: Vec<i64> = vec![1; 2 * 81];
    /// assert_eq!(PuzzleBatch::new(&config, &from_numpy, Some(&[0, 0]))?.len(), 2);
    /// let negative = vec![-1i64; 81];
    /// assert!(matches!(
    ///     PuzzleBatch::new(&config, &negative, None),
    ///     Err(TrmError::TokenOutOfRange { value: -1, .. })
    /// ));
    /// # Ok::<(), TrmError>(())
    /// ```
    pub fn new<T: InputInt>(
        config: &TrmConfig,
        tokens: &[T],
        puzzle_ids: Option<&[T]>,
    ) -> Result<Self> {
        let seq_len = config.seq_len;
        if tokens.is_empty() {
            return Err(TrmError::Input("the batch holds no puzzles".into()));
        }
        if !tokens.len().is_multiple_of(seq_len) {
            return Err(TrmError::Input(format!(
                "{} token ids do not split into puzzles of seq_len {seq_len}",
                tokens.len()
            )));
        }
        let batch = tokens.len() / seq_len;
        let mut checked = Vec::with_capacity(tokens.len());
        for (i, t) in tokens.iter().map(|t| t.to_i64()).enumerate() {
            if t < 0 || t as u64 >= config.vocab_size as u64 {
                return Err(TrmError::TokenOutOfRange {
                    puzzle: i / seq_len,
                    position: i % seq_len,
                    value: t,
                    vocab_size: config.vocab_size,
                });
            }
            checked.push(t as u32);
        }
        let ids = match puzzle_ids {
            None => vec![0; batch],
            Some(ids) => {
                if ids.len() != batch {
                    return Err(TrmError::Input(format!(
                        "{} puzzle identifiers for {batch} puzzles",
                        ids.len()
                    )));
                }
                let limit = config.num_puzzle_identifiers;
                ids.iter()
                    .enumerate()
                    .map(|(puzzle, v)| {
                        let v = v.to_i64();
                        if v < 0 || v as u64 >= limit as u64 {
                            Err(TrmError::PuzzleIdOutOfRange {
                                puzzle,
                                value: v,
                                num_puzzle_identifiers: limit,
                            })
                        } else {
                            Ok(v as u32)
                        }
                    })
                    .collect::<Result<Vec<u32>>>()?
            }
        };
        Ok(PuzzleBatch {
            seq_len,
            tokens: checked,
            puzzle_ids: ids,
        })
    }

    /// Reads `trm run`'s input file: `inputs` (int32 or int64, `[B, seq_len]`)
    /// and optionally `puzzle_identifiers` (int32 or int64, `[B]`).
    pub fn load(path: impl AsRef<Path>, config: &TrmConfig) -> Result<Self> {
        let path = path.as_ref();
        let bytes = tensor_file::read_file(path)?;
        Self::from_safetensors_bytes(&bytes, &path.display().to_string(), config)
    }

    /// As [`PuzzleBatch::load`], from a buffer; `what` names it in errors.
    /// A batch whose state would need more than
    /// [`PuzzleBatch::max_state_bytes`] is refused before anything is
    /// converted.
    pub fn from_safetensors_bytes(bytes: &[u8], what: &str, config: &TrmConfig) -> Result<Self> {
        Self::from_safetensors_bytes_with_limit(bytes, what, config, Self::max_state_bytes()?)
    }

    /// As [`PuzzleBatch::from_safetensors_bytes`], refusing batches whose
    /// state would need more than `limit` bytes (see
    /// [`PuzzleBatch::state_bytes`]).
    pub fn from_safetensors_bytes_with_limit(
        bytes: &[u8],
        what: &str,
        config: &TrmConfig,
        limit: u64,
    ) -> Result<Self> {
        let file = tensor_file::parse(bytes, what)?;
        let inputs = file
            .tensor("inputs")
            .map_err(|_| TrmError::Input(format!("{what} has no tensor `inputs`")))?;
        if inputs.shape().len() != 2 || inputs.shape()[1] != config.seq_len {
            return Err(TrmError::Input(format!(
                "`inputs` must have shape [B, {}], got {:?}",
                config.seq_len,
                inputs.shape()
            )));
        }
        Self::check_state_bytes(config, inputs.shape()[0], limit, what)?;
        let tokens = tensor_file::to_i64("inputs", &inputs)?;
        let ids = match file.tensor("puzzle_identifiers") {
            Err(_) => None,
            Ok(view) => {
                if view.shape() != [inputs.shape()[0]] {
                    return Err(TrmError::Input(format!(
                        "`puzzle_identifiers` must have shape [{}], got {:?}",
                        inputs.shape()[0],
                        view.shape()
                    )));
                }
                Some(tensor_file::to_i64("puzzle_identifiers", &view)?)
            }
        };
        Self::new(config, &tokens, ids.as_deref())
    }

    /// Estimated bytes a solve of `puzzles` puzzles needs: [`STATE_BUFFERS`]
    /// f32 buffers of `[S, D]` per puzzle (input embedding, carry, scratch
    /// and output copies) plus two copies of the logits. Saturates instead
    /// of overflowing.
    pub fn state_bytes(config: &TrmConfig, puzzles: usize) -> u64 {
        let state = (config.state_len() as u64).saturating_mul(config.hidden_size as u64);
        let logits = (config.seq_len as u64).saturating_mul(config.vocab_size as u64);
        let per_puzzle = state
            .saturating_mul(STATE_BUFFERS)
            .saturating_add(logits.saturating_mul(2))
            .saturating_mul(4);
        per_puzzle.saturating_mul(puzzles as u64)
    }

    /// The limit on [`PuzzleBatch::state_bytes`] for batches read from
    /// files (and the engines' default memory limit): the environment
    /// variable [`MAX_BATCH_BYTES_ENV`] (a byte count) when set, else
    /// [`DEFAULT_MAX_BATCH_BYTES`].
    pub fn max_state_bytes() -> Result<u64> {
        match std::env::var(MAX_BATCH_BYTES_ENV) {
            Err(_) => Ok(DEFAULT_MAX_BATCH_BYTES),
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                TrmError::Input(format!(
                    "{MAX_BATCH_BYTES_ENV} must be a number of bytes, got `{text}`"
                ))
            }),
        }
    }

    /// Refuses `puzzles` puzzles whose state would need more than `limit`
    /// bytes, saying how many puzzles fit; `what` names the input.
    pub fn check_state_bytes(
        config: &TrmConfig,
        puzzles: usize,
        limit: u64,
        what: &str,
    ) -> Result<()> {
        let needed = Self::state_bytes(config, puzzles);
        if needed <= limit {
            return Ok(());
        }
        let per_puzzle = Self::state_bytes(config, 1).max(1);
        Err(TrmError::TooLarge(format!(
            "{what}: {puzzles} puzzles need about {} for their state ({STATE_BUFFERS} f32 buffers of S x D = {} x {} per puzzle), beyond the limit of {}; split the input into batches of at most {} puzzles, or raise the limit with {MAX_BATCH_BYTES_ENV}=<bytes>",
            human_bytes(needed),
            config.state_len(),
            config.hidden_size,
            human_bytes(limit),
            limit / per_puzzle
        )))
    }

    /// Number of puzzles B.
    pub fn len(&self) -> usize {
        self.puzzle_ids.len()
    }

    /// Whether the batch is empty (never true for a batch built by `new`).
    pub fn is_empty(&self) -> bool {
        self.puzzle_ids.is_empty()
    }

    /// Tokens per puzzle.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// All token ids, row-major `[B, seq_len]`.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Puzzle identifiers, `[B]`.
    pub fn puzzle_ids(&self) -> &[u32] {
        &self.puzzle_ids
    }

    /// Token ids of puzzle `i`.
    ///
    /// # Panics
    ///
    /// If `i` is not below [`PuzzleBatch::len`].
    pub fn puzzle_tokens(&self, i: usize) -> &[u32] {
        assert!(i < self.len(), "puzzle {i} of a batch of {}", self.len());
        &self.tokens[i * self.seq_len..(i + 1) * self.seq_len]
    }

    /// The puzzles in `range` as a batch of their own (for splitting).
    ///
    /// # Panics
    ///
    /// If `range` is not within `0..len()` or runs backwards.
    pub fn slice(&self, range: Range<usize>) -> PuzzleBatch {
        assert!(
            range.start <= range.end && range.end <= self.len(),
            "puzzles {range:?} of a batch of {}",
            self.len()
        );
        PuzzleBatch {
            seq_len: self.seq_len,
            tokens: self.tokens[range.start * self.seq_len..range.end * self.seq_len].to_vec(),
            puzzle_ids: self.puzzle_ids[range].to_vec(),
        }
    }
}

/// Refuses memory that `parts` (what, bytes) ask of `whom` beyond `limit`
/// (see [`PuzzleBatch::max_state_bytes`]), naming the total and its largest
/// part. Engines call it with every size a configuration implies before
/// allocating any of it: a small file may claim sizes of terabytes.
pub(crate) fn check_memory(whom: &str, parts: &[(String, u64)], limit: u64) -> Result<()> {
    let total = parts
        .iter()
        .fold(0u64, |sum, (_, bytes)| sum.saturating_add(*bytes));
    if total <= limit {
        return Ok(());
    }
    let (largest, bytes) = parts
        .iter()
        .max_by_key(|(_, bytes)| *bytes)
        .map_or(("nothing", 0), |(what, bytes)| (what.as_str(), *bytes));
    Err(TrmError::TooLarge(format!(
        "{whom} needs {} of memory, {} of it for {largest}, beyond the limit of {}; {MAX_BATCH_BYTES_ENV}=<bytes> raises the limit",
        human_bytes(total),
        human_bytes(bytes),
        human_bytes(limit)
    )))
}

/// A byte count for people: `512 B`, `1.5 MiB`, `8.0 GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
