//! The authors' ARC evaluator (`evaluators/arc.py`) as a library: answers
//! in, pass@k and the submission out.
//!
//! Each answer is cropped, mapped back to the original frame with the
//! inverse of the augmentation its puzzle identifier names, and filed under
//! its original puzzle and back-mapped input. For each test input the
//! distinct answers are ranked by (votes, mean sigmoid(q_halt)), highest
//! first, the first seen first on ties; pass@k says whether the true
//! output is among the first k, averaged over a puzzle's test inputs and
//! then over puzzles. Only what a test input can use is kept: one entry per
//! distinct answer, so memory follows the answers' variety, not their
//! number.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer as _};
use serde_json::Serializer;

use super::dataset::TestPuzzle;
use super::grid::{Augmentation, Grid};
use crate::error::{Result, TrmError};

/// The k of the authors' `ARC/pass@k` metrics.
pub const DEFAULT_PASS_KS: [usize; 6] = [1, 2, 5, 10, 100, 1000];

/// Attempts per test input in a submission (the ARC Prize format).
pub const SUBMISSION_ATTEMPTS: usize = 2;

/// One distinct answer to a test input, with its votes.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The answer in the original frame.
    pub grid: Grid,
    /// How many answers were this grid.
    pub votes: u64,
    /// The sum of their sigmoid(q_halt), in arrival order (float64).
    pub q_sum: f64,
}

impl Candidate {
    /// The mean sigmoid(q_halt) of its votes.
    pub fn mean_q(&self) -> f64 {
        self.q_sum / self.votes as f64
    }
}

/// The distinct answers of one test input, in the order first seen.
#[derive(Clone, Debug, Default)]
struct Ballot {
    candidates: Vec<Candidate>,
    index: HashMap<Grid, usize>,
}

impl Ballot {
    fn add(&mut self, grid: Grid, q: f64) {
        match self.index.get(&grid) {
            Some(&i) => {
                self.candidates[i].votes += 1;
                self.candidates[i].q_sum += q;
            }
            None => {
                self.index.insert(grid.clone(), self.candidates.len());
                self.candidates.push(Candidate {
                    grid,
                    votes: 1,
                    q_sum: q,
                });
            }
        }
    }

    /// The candidates ranked as the evaluator ranks them: a stable sort on
    /// (votes, mean q), descending.
    fn ranked(&self) -> Vec<&Candidate> {
        let mut ranked: Vec<&Candidate> = self.candidates.iter().collect();
        ranked.sort_by(|a, b| {
            (b.votes, b.mean_q())
                .partial_cmp(&(a.votes, a.mean_q()))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        ranked
    }
}

/// Collects answers and votes them as the authors' evaluator does.
///
/// ```
/// use trm_wgpu::arc::{ArcVoter, Augmentation, Grid, TestPair, TestPuzzle};
/// # fn main() -> trm_wgpu::Result<()> {
/// let input = Grid::from_rows(&[vec![1, 2]])?;
/// let output = Grid::from_rows(&[vec![3, 4]])?;
/// let puzzle = TestPuzzle { name: "p".into(), tests: vec![TestPair { input: input.clone(), output: output.clone() }] };
/// // identifier 0 is blank, 1 the original, 2 a transposed copy
/// let names = vec!["<blank>".to_string(), "p".into(), "p|||t6|||0123456789".into()];
/// let mut voter = ArcVoter::new(names, 0, vec![puzzle])?;
/// let flipped = Augmentation::parse_name("p|||t6|||0123456789")?.1;
/// voter.add(2, &flipped.apply(&input).to_canvas(), &flipped.apply(&output).to_canvas(), 3.0)?;
/// voter.add(1, &input.to_canvas(), &Grid::from_rows(&[vec![0, 0]])?.to_canvas(), 5.0)?;
/// let results = voter.results(&[1, 2]);
/// // two answers of one vote each: the higher q_halt (the wrong one) ranks first
/// assert_eq!(results.pass_at, vec![(1, 0.0), (2, 1.0)]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ArcVoter {
    identifiers: Vec<String>,
    blank_identifier: i64,
    puzzles: Vec<TestPuzzle>,
    /// Original name -> puzzle index.
    by_name: HashMap<String, usize>,
    /// (puzzle, input) -> ballot; test inputs that are equal share one, as
    /// the evaluator's input hash does.
    ballots: HashMap<(usize, Grid), Ballot>,
    answers: u64,
    unused: u64,
}

impl ArcVoter {
    /// A voter over `puzzles` (the evaluated set, in the order results
    /// average them), naming identifiers by `identifiers` (identifier ->
    /// name; `blank_identifier` marks padding).
    pub fn new(
        identifiers: Vec<String>,
        blank_identifier: i64,
        puzzles: Vec<TestPuzzle>,
    ) -> Result<Self> {
        if puzzles.is_empty() {
            return Err(TrmError::Input("no puzzles to evaluate".into()));
        }
        let mut by_name = HashMap::new();
        for (i, p) in puzzles.iter().enumerate() {
            if p.tests.is_empty() {
                return Err(TrmError::Input(format!(
                    "puzzle `{}` has no test inputs",
                    p.name
                )));
            }
            if by_name.insert(p.name.clone(), i).is_some() {
                return Err(TrmError::Input(format!(
                    "puzzle `{}` appears twice",
                    p.name
                )));
            }
        }
        Ok(ArcVoter {
            identifiers,
            blank_identifier,
            puzzles,
            by_name,
            ballots: HashMap::new(),
            answers: 0,
            unused: 0,
        })
    }

    /// Files one answer: the 30 x 30 `input` canvas the model saw, its
    /// predicted canvas `prediction` (both in the augmented frame of
    /// `puzzle_identifier`) and the answer's q_halt logit. Answers of the
    /// blank identifier are skipped; answers to puzzles or inputs outside
    /// the evaluated set are counted in [`ArcResults::unused_answers`].
    pub fn add<T: Copy + Into<i64>, U: Copy + Into<i64>>(
        &mut self,
        puzzle_identifier: i64,
        input: &[T],
        prediction: &[U],
        q_halt_logit: f32,
    ) -> Result<()> {
        if puzzle_identifier == self.blank_identifier {
            return Ok(());
        }
        let name = usize::try_from(puzzle_identifier)
            .ok()
            .and_then(|i| self.identifiers.get(i))
            .ok_or_else(|| {
                TrmError::Input(format!(
                    "puzzle identifier {puzzle_identifier} is outside 0..{}",
                    self.identifiers.len()
                ))
            })?;
        if q_halt_logit.is_nan() {
            return Err(TrmError::Input(format!(
                "an answer to `{name}` has a NaN q_halt logit"
            )));
        }
        let (original, augmentation) = Augmentation::parse_name(name)?;
        let input = augmentation.invert(&Grid::crop(input)?);
        let answer = augmentation.invert(&Grid::crop(prediction)?);
        self.answers += 1;
        let Some(&puzzle) = self.by_name.get(original) else {
            self.unused += 1;
            return Ok(());
        };
        if !self.puzzles[puzzle].tests.iter().any(|t| t.input == input) {
            self.unused += 1;
            return Ok(());
        }
        // sigmoid in float64 of the float32 logit, as the evaluator
        let q = 1.0 / (1.0 + (-f64::from(q_halt_logit)).exp());
        self.ballots
            .entry((puzzle, input))
            .or_default()
            .add(answer, q);
        Ok(())
    }

    /// The distinct answers to test input `test` of puzzle `puzzle`,
    /// ranked (empty when it got none).
    pub fn candidates(&self, puzzle: usize, test: usize) -> Vec<Candidate> {
        let Some(pair) = self.puzzles.get(puzzle).and_then(|p| p.tests.get(test)) else {
            return Vec::new();
        };
        self.ballots
            .get(&(puzzle, pair.input.clone()))
            .map(|b| b.ranked().into_iter().cloned().collect())
            .unwrap_or_default()
    }

    /// pass@k for each of `pass_ks`, and the submission.
    pub fn results(&self, pass_ks: &[usize]) -> ArcResults {
        let mut correct = vec![0.0f64; pass_ks.len()];
        let mut submission = Vec::with_capacity(self.puzzles.len());
        let mut without_answers = Vec::new();
        for (p, puzzle) in self.puzzles.iter().enumerate() {
            let mut test_correct = vec![0u64; pass_ks.len()];
            let mut attempts = Vec::new();
            for (t, pair) in puzzle.tests.iter().enumerate() {
                let ranked = match self.ballots.get(&(p, pair.input.clone())) {
                    Some(ballot) => ballot.ranked(),
                    None => {
                        // the evaluator skips it: no attempt, counted wrong
                        without_answers.push((puzzle.name.clone(), t));
                        continue;
                    }
                };
                for (count, &k) in test_correct.iter_mut().zip(pass_ks) {
                    if ranked.iter().take(k).any(|c| c.grid == pair.output) {
                        *count += 1;
                    }
                }
                let mut grids: Vec<Grid> = ranked
                    .iter()
                    .take(SUBMISSION_ATTEMPTS)
                    .map(|c| c.grid.clone())
                    .collect();
                while grids.len() < SUBMISSION_ATTEMPTS {
                    grids.push(grids[0].clone());
                }
                attempts.push(grids);
            }
            for (sum, &count) in correct.iter_mut().zip(&test_correct) {
                *sum += count as f64 / puzzle.tests.len() as f64;
            }
            submission.push((puzzle.name.clone(), attempts));
        }
        let puzzles = self.puzzles.len() as f64;
        ArcResults {
            pass_at: pass_ks
                .iter()
                .zip(&correct)
                .map(|(&k, &c)| (k, c / puzzles))
                .collect(),
            submission: Submission(submission),
            answers: self.answers,
            unused_answers: self.unused,
            without_answers,
        }
    }
}

/// What an evaluation reports.
#[derive(Clone, Debug, PartialEq)]
pub struct ArcResults {
    /// (k, pass@k), in the order asked.
    pub pass_at: Vec<(usize, f64)>,
    /// The first two ranked answers of every test input.
    pub submission: Submission,
    /// Answers filed (blank ones not counted).
    pub answers: u64,
    /// Answers to puzzles or inputs outside the evaluated set.
    pub unused_answers: u64,
    /// Test inputs (puzzle name, index) that got no answer: counted wrong
    /// and left out of the submission, as the evaluator does.
    pub without_answers: Vec<(String, usize)>,
}

impl ArcResults {
    /// pass@k as one JSON object with the authors' keys (`ARC/pass@1`, ...),
    /// in the order asked.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        let mut ser = Serializer::new(&mut out);
        let mut map = ser
            .serialize_map(Some(self.pass_at.len()))
            .expect("writing to memory");
        for (k, v) in &self.pass_at {
            map.serialize_entry(&format!("ARC/pass@{k}"), v)
                .expect("writing to memory");
        }
        map.end().expect("writing to memory");
        String::from_utf8(out).expect("JSON is UTF-8")
    }
}

/// The submission file of the ARC Prize format: for each puzzle, in order,
/// one `{"attempt_1": grid, "attempt_2": grid}` per test input that got an
/// answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Submission(pub Vec<(String, Vec<Vec<Grid>>)>);

impl Serialize for Submission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        struct Attempts<'a>(&'a [Grid]);
        impl Serialize for Attempts<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(self.0.len()))?;
                for (i, grid) in self.0.iter().enumerate() {
                    map.serialize_entry(&format!("attempt_{}", i + 1), &grid.to_rows())?;
                }
                map.end()
            }
        }
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, tests) in &self.0 {
            let tests: Vec<Attempts<'_>> = tests.iter().map(|t| Attempts(t)).collect();
            map.serialize_entry(name, &tests)?;
        }
        map.end()
    }
}

impl Submission {
    /// The file as the evaluator's `json.dump` writes it (Python's
    /// separators `", "` and `": "`), byte for byte.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        let mut ser = Serializer::with_formatter(&mut out, PythonJson);
        self.serialize(&mut ser).expect("writing to memory");
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    /// Writes [`Submission::to_json`] to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut file = std::fs::File::create(path).map_err(|e| TrmError::io(path, e))?;
        file.write_all(self.to_json().as_bytes())
            .map_err(|e| TrmError::io(path, e))
    }
}

/// serde_json's compact output with Python's default separators.
struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}
