//! Test-time augmentation: K symmetric variants of each puzzle solved as one
//! batch, each answer mapped back to the puzzle's frame, one chosen by a
//! rule.
//!
//! A task's symmetries ([`AugmentTask`]) each come with their exact
//! inverse: Sudoku's digit relabelling and row, band, column and stack
//! permutations with an optional transpose; a maze's dihedral group; ARC's
//! dihedral transforms and colour permutations as the authors' builder
//! makes them (for models without per-augmentation puzzle identifiers).
//! Variant 0 is always the identity, so K = 1 is the plain solve exactly.
//!
//! ```
//! use std::sync::Arc;
//! use trm_wgpu::augment::{AugmentOptions, AugmentTask, Selection, solve_augmented};
//! use trm_wgpu::tasks::sudoku::Grid;
//! use trm_wgpu::{CpuEngine, PuzzleBatch, SolveOptions, TrmModel};
//!
//! # fn main() -> trm_wgpu::Result<()> {
//! let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/sudoku-easy/model.safetensors");
//! let model = Arc::new(TrmModel::load(path)?);
//! let puzzle = Grid::parse("97..1..266.34.7...15..624.9...6.4.8...9..36477469.8...3...467...62.89.1389.531.6.")?;
//! let batch = PuzzleBatch::new(model.config(), &puzzle.tokens(), None)?;
//! let mut engine = CpuEngine::new(model)?;
//! // 4 symmetric variants in one batch; the first valid answer by q_halt
//! let augment = AugmentOptions { task: AugmentTask::Sudoku, variants: 4, select: Selection::Verifier, seed: 0 };
//! let out = solve_augmented(&mut engine, &batch, &SolveOptions::default(), &augment)?;
//! let answer = Grid::from_tokens(&out.predictions);
//! assert!(answer.keeps_givens_of(&puzzle));
//! println!("variant {} chosen; {:.0}% of variants agree", out.selected[0], 100.0 * out.agreement[0]);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;

use crate::arc::{self, Augmentation, ColourPermutation, Dihedral};
use crate::batch::{PuzzleBatch, check_memory};
use crate::error::{Result, TrmError};
use crate::rng::SplitMix64;
use crate::solve::{Engine, NamedArray, SolveOptions, SolveOutput};
use crate::tasks::sudoku;
use crate::tensor_file::{self, OwnedTensor};

/// A symmetry of a task's token sequences with its inverse.
pub trait Symmetry: Send + Sync {
    /// The variant of a puzzle's `tokens`.
    fn apply(&self, tokens: &[u32]) -> Result<Vec<u32>>;
    /// The answer `tokens` to the variant, in the puzzle's frame.
    fn invert(&self, tokens: &[u32]) -> Result<Vec<u32>>;
    /// The variant's logits (`[seq_len, vocab]`) in the puzzle's frame,
    /// where the symmetry maps positions and tokens one to one (not ARC,
    /// whose grids move with their size).
    fn invert_logits(&self, _logits: &[f32], _vocab: usize) -> Option<Vec<f32>> {
        None
    }
}

/// A permutation of positions with a relabelling of tokens: variant token
/// at position `p` = `relabel[original token at perm[p]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PositionSymmetry {
    perm: Vec<usize>,
    relabel: Vec<u32>,
}

impl PositionSymmetry {
    /// Checks that `perm` is a permutation of positions and `relabel` of
    /// tokens.
    pub fn new(perm: Vec<usize>, relabel: Vec<u32>) -> Result<Self> {
        fn is_perm(v: impl Iterator<Item = usize>, n: usize) -> bool {
            let mut seen = vec![false; n];
            v.into_iter()
                .all(|i| i < n && !std::mem::replace(&mut seen[i], true))
        }
        if !is_perm(perm.iter().copied(), perm.len())
            || !is_perm(relabel.iter().map(|&t| t as usize), relabel.len())
        {
            return Err(TrmError::Input(
                "a symmetry needs a permutation of positions and of tokens".into(),
            ));
        }
        Ok(PositionSymmetry { perm, relabel })
    }

    fn relabel(&self, t: u32) -> u32 {
        self.relabel.get(t as usize).copied().unwrap_or(t)
    }

    fn check(&self, tokens: &[u32]) -> Result<()> {
        if tokens.len() == self.perm.len() {
            Ok(())
        } else {
            Err(TrmError::Input(format!(
                "{} tokens for a symmetry of {} positions",
                tokens.len(),
                self.perm.len()
            )))
        }
    }
}

impl Symmetry for PositionSymmetry {
    fn apply(&self, tokens: &[u32]) -> Result<Vec<u32>> {
        self.check(tokens)?;
        Ok(self
            .perm
            .iter()
            .map(|&src| self.relabel(tokens[src]))
            .collect())
    }

    fn invert(&self, tokens: &[u32]) -> Result<Vec<u32>> {
        self.check(tokens)?;
        let mut inverse = vec![0u32; self.relabel.len()];
        for (t, &to) in self.relabel.iter().enumerate() {
            inverse[to as usize] = t as u32;
        }
        let mut out = vec![0u32; tokens.len()];
        for (p, &src) in self.perm.iter().enumerate() {
            let t = tokens[p];
            out[src] = inverse.get(t as usize).copied().unwrap_or(t);
        }
        Ok(out)
    }

    fn invert_logits(&self, logits: &[f32], vocab: usize) -> Option<Vec<f32>> {
        if logits.len() != self.perm.len() * vocab {
            return None;
        }
        let mut out = vec![0f32; logits.len()];
        for (p, &src) in self.perm.iter().enumerate() {
            for t in 0..vocab {
                out[src * vocab + t] = logits[p * vocab + self.relabel(t as u32) as usize];
            }
        }
        Some(out)
    }
}

/// ARC on the 30 x 30 canvas: the grid is cropped, augmented as the
/// builder does it and written back at the top left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArcSymmetry(pub Augmentation);

impl Symmetry for ArcSymmetry {
    fn apply(&self, tokens: &[u32]) -> Result<Vec<u32>> {
        let grid = self.0.apply(&arc::Grid::crop(tokens)?);
        Ok(grid.to_canvas().into_iter().map(u32::from).collect())
    }

    fn invert(&self, tokens: &[u32]) -> Result<Vec<u32>> {
        let grid = self.0.invert(&arc::Grid::crop(tokens)?);
        Ok(grid.to_canvas().into_iter().map(u32::from).collect())
    }
}

/// The tasks whose symmetries the crate knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AugmentTask {
    /// 9 x 9 Sudoku, tokens as `tasks::sudoku` (digits 2..=10).
    Sudoku,
    /// A square maze (`tasks::maze`), side from the sequence length.
    Maze,
    /// ARC on the 30 x 30 canvas.
    Arc,
}

impl std::str::FromStr for AugmentTask {
    type Err = TrmError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sudoku" => Ok(AugmentTask::Sudoku),
            "maze" => Ok(AugmentTask::Maze),
            "arc" => Ok(AugmentTask::Arc),
            other => Err(TrmError::Input(format!(
                "task `{other}` (one of sudoku, maze, arc)"
            ))),
        }
    }
}

/// A random Sudoku symmetry ([`sudoku::random_symmetry`]: digits
/// relabelled, bands, rows, stacks and columns permuted, a transpose half
/// the time).
pub fn random_sudoku_symmetry(rng: &mut SplitMix64) -> PositionSymmetry {
    let (perm, relabel) = sudoku::random_symmetry(rng);
    PositionSymmetry::new(perm, relabel).expect("a permutation by construction")
}

impl AugmentTask {
    /// The most variants this task has (the maze's dihedral group: 8).
    pub fn max_variants(self) -> Option<usize> {
        match self {
            AugmentTask::Maze => Some(8),
            _ => None,
        }
    }

    /// `k` variants for puzzle `puzzle` of sequence length `seq_len`:
    /// variant 0 the identity, the rest drawn from (`seed`, `puzzle`).
    pub fn variants(
        self,
        k: usize,
        seed: u64,
        puzzle: usize,
        seq_len: usize,
    ) -> Result<Vec<Box<dyn Symmetry>>> {
        if k == 0 {
            return Err(TrmError::Input("--augment needs at least 1 variant".into()));
        }
        if let Some(max) = self.max_variants().filter(|&m| k > m) {
            return Err(TrmError::Input(format!(
                "{self:?} has {max} symmetries; --augment {k} asks for more"
            )));
        }
        let mut rng = SplitMix64::new(seed ^ (puzzle as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let identity = || -> Box<dyn Symmetry> {
            Box::new(
                PositionSymmetry::new((0..seq_len).collect(), Vec::new()).expect("the identity"),
            )
        };
        let mut out: Vec<Box<dyn Symmetry>> = vec![identity()];
        if k == 1 {
            return Ok(out);
        }
        match self {
            AugmentTask::Sudoku => {
                if seq_len != sudoku::CELLS {
                    return Err(TrmError::Input(format!(
                        "Sudoku variants need 81 cells, the model reads {seq_len}"
                    )));
                }
                for _ in 1..k {
                    out.push(Box::new(random_sudoku_symmetry(&mut rng)));
                }
            }
            AugmentTask::Maze => {
                let side = (seq_len as f64).sqrt().round() as usize;
                if side * side != seq_len {
                    return Err(TrmError::Input(format!(
                        "maze variants need a square grid, the model reads {seq_len} cells"
                    )));
                }
                for t in Dihedral::all().skip(1).take(k - 1) {
                    let perm = (0..seq_len)
                        .map(|p| {
                            let (r, c) = t.source(p / side, p % side, side, side);
                            r * side + c
                        })
                        .collect();
                    out.push(Box::new(PositionSymmetry::new(perm, Vec::new())?));
                }
            }
            AugmentTask::Arc => {
                if seq_len != arc::grid::CANVAS_TOKENS {
                    return Err(TrmError::Input(format!(
                        "ARC variants need the 30 x 30 canvas, the model reads {seq_len} tokens"
                    )));
                }
                for _ in 1..k {
                    let transform = Dihedral::new(rng.below(8) as u8).expect("below 8");
                    let mut colours = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9];
                    // colour 0 (black) stays, as the builder keeps it
                    for i in (2..10).rev() {
                        colours.swap(i, 1 + rng.below(i as u64) as usize);
                    }
                    let colours = ColourPermutation::new(colours).expect("a permutation");
                    out.push(Box::new(ArcSymmetry(Augmentation { transform, colours })));
                }
            }
        }
        Ok(out)
    }
}

/// How one answer is chosen among a puzzle's variants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Selection {
    /// The variant with the highest q_halt (the first on ties).
    #[default]
    QHalt,
    /// Equal answers pooled, each weighted by sigmoid(q_halt); the answer
    /// of the largest weight, represented by its highest-q_halt variant.
    Vote,
    /// The highest-q_halt variant whose answer the task's verifier accepts
    /// (Sudoku: a valid solution keeping the givens), else as `QHalt`.
    Verifier,
}

impl std::str::FromStr for Selection {
    type Err = TrmError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "q-halt" => Ok(Selection::QHalt),
            "vote" => Ok(Selection::Vote),
            "verifier" => Ok(Selection::Verifier),
            other => Err(TrmError::Input(format!(
                "selection `{other}` (one of q-halt, vote, verifier)"
            ))),
        }
    }
}

/// How an augmented solve runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AugmentOptions {
    /// The task whose symmetries make the variants.
    pub task: AugmentTask,
    /// Variants per puzzle (1: the plain solve).
    pub variants: usize,
    /// How the answer is chosen.
    pub select: Selection,
    /// Seed of the variants.
    pub seed: u64,
}

/// An augmented solve's results per puzzle.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentedOutput {
    /// The chosen variant's outputs, in the puzzle's frame: logits mapped
    /// back where the task's symmetries allow (else the variant's own, for
    /// ARC), q logits and steps; no carry unless K = 1.
    pub output: SolveOutput,
    /// `[B, seq_len]` the chosen answers, mapped back.
    pub predictions: Vec<u32>,
    /// `[B]` the variant chosen (0 is the identity).
    pub selected: Vec<i32>,
    /// `[B]` the share of variants whose answer is the chosen one.
    pub agreement: Vec<f32>,
}

impl AugmentedOutput {
    /// `trm run`'s output file with `predictions` (i32), `selected` (i32)
    /// and `agreement` (f32) added.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let tensors: Vec<OwnedTensor> = self
            .named_arrays()
            .iter()
            .map(NamedArray::to_tensor)
            .collect();
        tensor_file::serialize(&tensors, None)
    }

    /// The arrays of [`AugmentedOutput::to_safetensors_bytes`], named and
    /// shaped as the file holds them.
    pub fn named_arrays(&self) -> Vec<NamedArray<'_>> {
        let out = &self.output;
        let predictions = self.predictions.iter().map(|&t| t as i32).collect();
        let mut arrays = out.named_arrays();
        arrays.push(NamedArray::i32(
            "predictions",
            vec![out.batch, out.seq_len],
            predictions,
        ));
        arrays.push(NamedArray::i32(
            "selected",
            vec![out.batch],
            self.selected.clone(),
        ));
        arrays.push(NamedArray::f32(
            "agreement",
            vec![out.batch],
            &self.agreement,
        ));
        arrays
    }
}

/// Solves every puzzle of `batch` as `augment.variants` variants in one
/// batch, maps the answers back and chooses one per puzzle.
pub fn solve_augmented(
    engine: &mut dyn Engine,
    batch: &PuzzleBatch,
    options: &SolveOptions,
    augment: &AugmentOptions,
) -> Result<AugmentedOutput> {
    solve_variants(
        engine,
        batch,
        options,
        augment.task,
        augment.variants,
        augment.seed,
    )?
    .select(augment.select)
}

/// The solved variants of a batch, before a choice: one solve serves every
/// [`Selection`].
pub struct VariantSolve {
    task: AugmentTask,
    variants: usize,
    puzzles: Vec<Vec<u32>>,
    symmetries: Vec<Vec<std::sync::Arc<dyn Symmetry>>>,
    /// Every variant's answer, mapped back, `[B * K][seq_len]`.
    answers: Vec<Vec<u32>>,
    out: SolveOutput,
}

/// Solves `variants` variants of every puzzle of `batch` (see
/// [`AugmentTask::variants`]) as one batch. With noisy trajectories in
/// `options` (`noise.trajectories` = T), each variant runs T trajectories:
/// puzzle `i`'s rows are variant-major, `i V T + v T + t`, and the chosen
/// index is `v T + t`.
pub fn solve_variants(
    engine: &mut dyn Engine,
    batch: &PuzzleBatch,
    options: &SolveOptions,
    task: AugmentTask,
    variants: usize,
    seed: u64,
) -> Result<VariantSolve> {
    let trajectories = options.noise.map_or(1, |n| n.trajectories.max(1) as usize);
    let k = variants.saturating_mul(trajectories);
    let config = engine.config().clone();
    let seq = config.seq_len;
    // the batch of every variant's trajectories is held to the limit on an
    // input's state, before a symmetry is drawn
    let rows = batch.len().saturating_mul(k);
    check_memory(
        "the augmented solve",
        &[(
            format!(
                "the state of {} puzzles x {variants} variants x {trajectories} trajectories",
                batch.len()
            ),
            PuzzleBatch::state_bytes(&config, rows),
        )],
        PuzzleBatch::max_state_bytes()?,
    )?;
    let symmetries: Vec<Vec<std::sync::Arc<dyn Symmetry>>> = (0..batch.len())
        .map(|i| {
            let vs = task.variants(variants, seed, i, seq)?;
            Ok(vs
                .into_iter()
                .map(std::sync::Arc::<dyn Symmetry>::from)
                .flat_map(|v| std::iter::repeat_n(v, trajectories))
                .collect())
        })
        .collect::<Result<_>>()?;
    let puzzles: Vec<Vec<u32>> = (0..batch.len())
        .map(|i| batch.tokens()[i * seq..(i + 1) * seq].to_vec())
        .collect();
    let mut tokens = Vec::with_capacity(batch.len() * k * seq);
    let mut ids = Vec::with_capacity(batch.len() * k);
    for (i, vs) in symmetries.iter().enumerate() {
        for v in vs {
            tokens.extend(v.apply(&puzzles[i])?.into_iter().map(i64::from));
            ids.push(i64::from(batch.puzzle_ids()[i]));
        }
    }
    let all = PuzzleBatch::new(&config, &tokens, Some(&ids))?;
    let options = if k == 1 {
        options.clone()
    } else {
        options.clone().carry(false)
    };
    let out = engine.solve(&all, &options)?;
    let predictions = out.predictions();
    let answers = (0..all.len())
        .map(|r| symmetries[r / k][r % k].invert(&predictions[r * seq..(r + 1) * seq]))
        .collect::<Result<_>>()?;
    Ok(VariantSolve {
        task,
        variants: k,
        puzzles,
        symmetries,
        answers,
        out,
    })
}

impl VariantSolve {
    /// Every variant's output as the engine gave it (variant frames; puzzle
    /// `i`'s variants are rows `i * K .. (i + 1) * K`).
    pub fn variant_output(&self) -> &SolveOutput {
        &self.out
    }

    /// The answer of each puzzle chosen by `select`.
    pub fn select(&self, select: Selection) -> Result<AugmentedOutput> {
        let (k, out) = (self.variants, &self.out);
        if select == Selection::Verifier && self.task != AugmentTask::Sudoku {
            return Err(TrmError::Input(
                "--select verifier needs a task with a verifier (sudoku)".into(),
            ));
        }
        if k == 1 {
            // the identity: the plain solve, unchanged
            return Ok(AugmentedOutput {
                selected: vec![0; out.batch],
                agreement: vec![1.0; out.batch],
                predictions: out.predictions(),
                output: out.clone(),
            });
        }
        let (seq, vocab) = (out.seq_len, out.vocab_size);
        let mut chosen = out.clone_shape();
        chosen.batch = self.puzzles.len();
        let (mut predictions, mut selected, mut agreement) = (Vec::new(), Vec::new(), Vec::new());
        for (i, puzzle) in self.puzzles.iter().enumerate() {
            let rows = i * k..(i + 1) * k;
            let answers = &self.answers[rows.clone()];
            let pick = choose(select, answers, &out.q_halt_logits[rows], puzzle);
            let r = i * k + pick;
            let logits = &out.logits[r * seq * vocab..(r + 1) * seq * vocab];
            chosen.logits.extend(
                self.symmetries[i][pick]
                    .invert_logits(logits, vocab)
                    .unwrap_or_else(|| logits.to_vec()),
            );
            chosen.q_halt_logits.push(out.q_halt_logits[r]);
            chosen.q_continue_logits.push(out.q_continue_logits[r]);
            chosen.steps.push(out.steps[r]);
            let same = answers.iter().filter(|a| **a == answers[pick]).count();
            agreement.push(same as f32 / k as f32);
            selected.push(pick as i32);
            predictions.extend_from_slice(&answers[pick]);
        }
        Ok(AugmentedOutput {
            output: chosen,
            predictions,
            selected,
            agreement,
        })
    }
}

/// The variant `select` chooses among `answers` (mapped back) with q_halt
/// logits `q`.
fn choose(select: Selection, answers: &[Vec<u32>], q: &[f32], puzzle: &[u32]) -> usize {
    let best_q = |candidates: &mut dyn Iterator<Item = usize>| {
        candidates.fold(None, |best: Option<usize>, i| match best {
            Some(b) if q[b] >= q[i] => Some(b),
            _ => Some(i),
        })
    };
    match select {
        Selection::QHalt => best_q(&mut (0..q.len())).unwrap_or(0),
        Selection::Vote => {
            // weight per distinct answer, first seen first on ties
            let mut order: Vec<&Vec<u32>> = Vec::new();
            let mut weight: HashMap<&Vec<u32>, f64> = HashMap::new();
            for (a, &qi) in answers.iter().zip(q) {
                let w = weight.entry(a).or_insert_with(|| {
                    order.push(a);
                    0.0
                });
                *w += 1.0 / (1.0 + (-f64::from(qi)).exp());
            }
            let winner = order
                .iter()
                .fold(None, |best: Option<&Vec<u32>>, a| match best {
                    Some(b) if weight[b] >= weight[*a] => Some(b),
                    _ => Some(*a),
                })
                .expect("at least one answer");
            best_q(&mut (0..q.len()).filter(|&i| answers[i] == *winner)).unwrap_or(0)
        }
        Selection::Verifier => {
            let given = sudoku::Grid::from_tokens(puzzle);
            best_q(
                &mut (0..q.len())
                    .filter(|&i| sudoku::Grid::from_tokens(&answers[i]).solves(&given)),
            )
            .unwrap_or_else(|| choose(Selection::QHalt, answers, q, puzzle))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudoku_variants_are_sudoku_symmetries_with_exact_inverses() {
        let solution = sudoku::Grid::parse(
            "534678912672195348198342567859761423426853791713924856961537284287419635345286179",
        )
        .unwrap();
        let tokens = solution.tokens().to_vec();
        for v in AugmentTask::Sudoku.variants(16, 3, 0, 81).unwrap() {
            let variant = v.apply(&tokens).unwrap();
            assert!(sudoku::Grid::from_tokens(&variant).is_complete_and_valid());
            assert_eq!(v.invert(&variant).unwrap(), tokens);
            // logits: a one-hot of the variant maps back to a one-hot of the puzzle
            let mut logits = vec![0f32; 81 * 11];
            for (p, &t) in variant.iter().enumerate() {
                logits[p * 11 + t as usize] = 1.0;
            }
            let back = v.invert_logits(&logits, 11).unwrap();
            for (p, &t) in tokens.iter().enumerate() {
                assert_eq!(back[p * 11 + t as usize], 1.0);
            }
        }
    }

    #[test]
    fn maze_and_arc_variants_invert() {
        let maze: Vec<u32> = (0..36).map(|i| (i * 7 % 5) as u32).collect();
        let vs = AugmentTask::Maze.variants(8, 1, 0, 36).unwrap();
        assert_eq!(vs.len(), 8);
        for v in &vs {
            assert_eq!(v.invert(&v.apply(&maze).unwrap()).unwrap(), maze);
        }
        assert!(AugmentTask::Maze.variants(9, 1, 0, 36).is_err());
        let grid = arc::Grid::from_rows(&[vec![0, 1, 2], vec![3, 4, 5]]).unwrap();
        let canvas: Vec<u32> = grid.to_canvas().into_iter().map(u32::from).collect();
        for v in AugmentTask::Arc.variants(8, 2, 0, 900).unwrap() {
            assert_eq!(v.invert(&v.apply(&canvas).unwrap()).unwrap(), canvas);
        }
    }

    #[test]
    fn selection_rules() {
        let a = vec![1u32, 2];
        let b = vec![3u32, 4];
        let answers = vec![a.clone(), b.clone(), b.clone()];
        // highest q_halt
        assert_eq!(choose(Selection::QHalt, &answers, &[5.0, 1.0, 2.0], &[]), 0);
        // two votes beat one strong one; the better of the two represents them
        assert_eq!(choose(Selection::Vote, &answers, &[5.0, 1.0, 2.0], &[]), 2);
        // ties: the first
        assert_eq!(choose(Selection::QHalt, &answers, &[1.0, 1.0, 1.0], &[]), 0);
    }
}
