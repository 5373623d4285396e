//! ARC-AGI evaluation as the authors run it (`evaluators/arc.py` over a data
//! set built by `dataset/build_arc_dataset.py`): read the built data set,
//! answer every test example of every augmented copy with a model, map each
//! answer back to the original frame, vote, and report pass@k with the
//! two-attempt submission of the ARC Prize format.
//!
//! - [`grid`]: grids, the crop, dihedral transforms, colour permutations
//!   and the augmentation a puzzle identifier's name records.
//! - [`dataset`]: the built data set, memory-mapped and checked.
//! - [`vote`]: the evaluator, as a library ([`ArcVoter`]): answers in,
//!   [`ArcResults`] out, so an application can vote over its own runs.
//! - [`answers`]: the authors' predictions file and the resumable answer
//!   log of `trm arc-eval --model`.
//! - [`answer_examples`]: runs examples through any [`Engine`].
//!
//! Voting over the predictions of the fixture the authors' own builder and
//! evaluator made (`tests/data/arc`) gives their pass@k:
//!
//! ```
//! use trm_wgpu::arc::{self, ArcDataset, Predictions};
//!
//! # fn main() -> trm_wgpu::Result<()> {
//! let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/arc");
//! let dataset = ArcDataset::open(format!("{fixture}/data"))?;
//! let predictions = Predictions::open(format!("{fixture}/predictions.safetensors"))?;
//! let mut voter = arc::voter_for(&dataset, None)?;
//! for i in 0..predictions.len() {
//!     let (identifier, input, prediction, q_halt) = predictions.get(i)?;
//!     voter.add(identifier, &input, &prediction, q_halt)?;
//! }
//! let results = voter.results(&[1, 2, 5]);
//! assert_eq!(results.pass_at[1..], [(2, 0.75), (5, 1.0)]);
//! println!("{}", results.to_json()); // {"ARC/pass@1":0.333...,"ARC/pass@2":0.75,"ARC/pass@5":1.0}
//! # Ok(())
//! # }
//! ```
//!
//! With a model instead of given predictions, [`answer_examples`] answers
//! the examples with any engine and [`vote_answer`] files each answer.

pub mod answers;
pub mod dataset;
pub mod grid;
mod npy;
pub mod vote;

pub use answers::{Answer, AnswerLog, LogHeader, Predictions};
pub use dataset::{ArcDataset, DatasetMetadata, Example, TestPair, TestPuzzle};
pub use grid::{Augmentation, ColourPermutation, Dihedral, Grid};
pub use vote::{ArcResults, ArcVoter, Candidate, DEFAULT_PASS_KS, Submission};

use crate::batch::PuzzleBatch;
use crate::config::TrmConfig;
use crate::error::{Result, TrmError};
use crate::solve::{Engine, SolveOptions};

/// Checks that a model can answer the data set: the same tokens per
/// example and vocabulary, and a puzzle-embedding table with a row for
/// every identifier the data set names.
pub fn check_model(config: &TrmConfig, dataset: &ArcDataset) -> Result<()> {
    let meta = dataset.metadata();
    let mismatch = |what: String| {
        Err(TrmError::Input(format!(
            "the model does not fit the data set in {}: {what}",
            dataset.dir().display()
        )))
    };
    if config.seq_len != meta.seq_len {
        return mismatch(format!(
            "its seq_len is {}, the data set's {}",
            config.seq_len, meta.seq_len
        ));
    }
    if config.vocab_size != meta.vocab_size {
        return mismatch(format!(
            "its vocabulary has {} tokens, the data set's {}",
            config.vocab_size, meta.vocab_size
        ));
    }
    if config.puzzle_emb_ndim > 0 && config.num_puzzle_identifiers < meta.num_puzzle_identifiers {
        return mismatch(format!(
            "its puzzle-embedding table has {} rows, but the data set names {} identifiers \
             (a model trained on another build of the data set?)",
            config.num_puzzle_identifiers, meta.num_puzzle_identifiers
        ));
    }
    Ok(())
}

/// Answers `examples` (indices into `dataset`) with `engine`, `batch`
/// examples per solve, calling `on_answers` with each solve's answers in
/// order (to log and vote them as they come).
pub fn answer_examples(
    engine: &mut dyn Engine,
    dataset: &ArcDataset,
    examples: &[usize],
    batch: usize,
    options: &SolveOptions,
    mut on_answers: impl FnMut(&[Answer]) -> Result<()>,
) -> Result<()> {
    check_model(engine.config(), dataset)?;
    let uses_table = engine.config().puzzle_emb_ndim > 0;
    let options = options.clone().carry(false);
    for chunk in examples.chunks(batch.max(1)) {
        let mut tokens = Vec::with_capacity(chunk.len() * grid::CANVAS_TOKENS);
        let mut ids = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let example = dataset.example(i)?;
            tokens.extend(example.tokens.iter().map(|&t| i64::from(t)));
            // a model without a puzzle table has one row of nothing
            ids.push(if uses_table {
                i64::from(example.puzzle_identifier)
            } else {
                0
            });
        }
        let puzzles = PuzzleBatch::new(engine.config(), &tokens, Some(&ids))?;
        let out = engine.solve(&puzzles, &options)?;
        let predictions = out.predictions();
        let answers: Vec<Answer> = chunk
            .iter()
            .enumerate()
            .map(|(b, &i)| Answer {
                example: i,
                puzzle_identifier: dataset.example_identifiers()[i],
                q_halt_logit: out.q_halt_logits[b],
                steps: out.steps[b],
                tokens: predictions[b * out.seq_len..(b + 1) * out.seq_len]
                    .iter()
                    .map(|&t| t.min(255) as u8)
                    .collect(),
            })
            .collect();
        on_answers(&answers)?;
    }
    Ok(())
}

/// A voter over the first `limit` puzzles of `dataset` (all with `None`).
pub fn voter_for(dataset: &ArcDataset, limit: Option<usize>) -> Result<ArcVoter> {
    let puzzles = dataset.puzzles();
    let take = limit.unwrap_or(puzzles.len()).min(puzzles.len());
    if take == 0 {
        return Err(TrmError::Input(
            "--limit 0 leaves no puzzle to evaluate".into(),
        ));
    }
    ArcVoter::new(
        dataset.identifiers().to_vec(),
        dataset.metadata().blank_identifier_id,
        puzzles[..take].to_vec(),
    )
}

/// Files `answer` (to an example of `dataset`) with `voter`.
pub fn vote_answer(voter: &mut ArcVoter, dataset: &ArcDataset, answer: &Answer) -> Result<()> {
    let example = dataset.example(answer.example)?;
    if example.puzzle_identifier != answer.puzzle_identifier {
        return Err(TrmError::Input(format!(
            "the answer to example {} is for puzzle identifier {}, but the data set's example has {}: answers of another data set?",
            answer.example, answer.puzzle_identifier, example.puzzle_identifier
        )));
    }
    voter.add(
        i64::from(answer.puzzle_identifier),
        &example.tokens,
        &answer.tokens,
        answer.q_halt_logit,
    )
}
