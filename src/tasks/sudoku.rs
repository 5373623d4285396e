//! Sudoku as the official data set encodes it: 81 cells row-major, token =
//! digit + 1, so 0 = pad, 1 = blank, 2..=10 = digits 1..=9; puzzle
//! identifier 0.

use std::fmt::Write as _;

use crate::error::{Result, TrmError};
use crate::rng::SplitMix64;

/// Cells of a grid, and tokens of a puzzle.
pub const CELLS: usize = 81;

/// A 9x9 grid; 0 is a blank cell, 1..=9 a digit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid(pub [u8; CELLS]);

impl Grid {
    /// Parses 81 characters: `1`..`9` digits, `.` or `0` blanks (spaces
    /// around the line are ignored).
    pub fn parse(line: &str) -> Result<Grid> {
        let line = line.trim();
        let chars: Vec<char> = line.chars().collect();
        if chars.len() != CELLS {
            return Err(TrmError::Input(format!(
                "a Sudoku line needs 81 cells, got {} characters: `{}`",
                chars.len(),
                line.chars().take(100).collect::<String>()
            )));
        }
        let mut cells = [0u8; CELLS];
        for (i, c) in chars.iter().enumerate() {
            cells[i] = match c {
                '.' | '0' => 0,
                '1'..='9' => *c as u8 - b'0',
                other => {
                    return Err(TrmError::Input(format!(
                        "cell {} is `{other}`: use 1-9 for digits and . or 0 for blanks",
                        i + 1
                    )));
                }
            };
        }
        Ok(Grid(cells))
    }

    /// Parses one puzzle per line, skipping empty lines and `#` comments.
    pub fn parse_many(text: &str) -> Result<Vec<Grid>> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|(n, l)| {
                // the line number inside the one `input:` prefix
                Grid::parse(l).map_err(|e| match e {
                    TrmError::Input(why) => TrmError::Input(format!("line {}: {why}", n + 1)),
                    other => other,
                })
            })
            .collect()
    }

    /// Model tokens: blank 1, digit d -> d + 1.
    pub fn tokens(&self) -> [u32; CELLS] {
        self.0.map(|d| u32::from(d) + 1)
    }

    /// A grid from predicted tokens; a token that is not a digit (pad or
    /// blank) becomes a blank cell, which no valid solution has.
    pub fn from_tokens(tokens: &[u32]) -> Grid {
        let mut cells = [0u8; CELLS];
        for (c, &t) in cells.iter_mut().zip(tokens) {
            *c = if (2..=10).contains(&t) {
                (t - 1) as u8
            } else {
                0
            };
        }
        Grid(cells)
    }

    /// Number of given (non-blank) cells.
    pub fn givens(&self) -> usize {
        self.0.iter().filter(|&&d| d != 0).count()
    }

    /// Whether every row, column and box holds each digit 1..=9 once.
    pub fn is_complete_and_valid(&self) -> bool {
        let unit_ok = |cells: [usize; 9]| {
            let mut seen = [false; 10];
            cells.iter().all(|&i| {
                let d = self.0[i] as usize;
                d != 0 && !std::mem::replace(&mut seen[d], true)
            })
        };
        (0..9).all(|k| {
            let row = std::array::from_fn(|j| k * 9 + j);
            let col = std::array::from_fn(|j| j * 9 + k);
            let (br, bc) = (k / 3 * 3, k % 3 * 3);
            let boxed = std::array::from_fn(|j| (br + j / 3) * 9 + bc + j % 3);
            unit_ok(row) && unit_ok(col) && unit_ok(boxed)
        })
    }

    /// Whether this grid keeps every given of `puzzle`.
    pub fn keeps_givens_of(&self, puzzle: &Grid) -> bool {
        self.0
            .iter()
            .zip(&puzzle.0)
            .all(|(&a, &g)| g == 0 || a == g)
    }

    /// A valid solution of `puzzle`: complete, valid and consistent with
    /// its givens (a puzzle with few givens may have several).
    pub fn solves(&self, puzzle: &Grid) -> bool {
        self.is_complete_and_valid() && self.keeps_givens_of(puzzle)
    }

    /// Cells that differ from `other`.
    pub fn differences(&self, other: &Grid) -> usize {
        self.0.iter().zip(&other.0).filter(|(a, b)| a != b).count()
    }

    /// The 81 characters of the grid (`.` for blanks).
    pub fn to_line(&self) -> String {
        self.0
            .iter()
            .map(|&d| if d == 0 { '.' } else { (b'0' + d) as char })
            .collect()
    }

    /// The grid drawn in 13 lines with box borders.
    pub fn render(&self) -> Vec<String> {
        let border = "+-------+-------+-------+".to_string();
        let mut lines = vec![border.clone()];
        for r in 0..9 {
            let mut line = String::from("|");
            for c in 0..9 {
                let d = self.0[r * 9 + c];
                let _ = write!(line, " {}", if d == 0 { '.' } else { (b'0' + d) as char });
                if c % 3 == 2 {
                    line.push_str(" |");
                }
            }
            lines.push(line);
            if r % 3 == 2 {
                lines.push(border.clone());
            }
        }
        lines
    }
}

/// A random Sudoku symmetry: digits relabelled, bands and the rows in each,
/// stacks and the columns in each permuted, and a transpose half the time;
/// as a permutation of the cells, `perm`, and a relabelling of the tokens,
/// `relabel`: the variant's token at cell `p` is `relabel[t]` for the token
/// `t` at cell `perm[p]` (`augment::PositionSymmetry` applies it so).
pub fn random_symmetry(rng: &mut SplitMix64) -> (Vec<usize>, Vec<u32>) {
    let mut shuffle = |n: usize| {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            v.swap(i, rng.below(i as u64 + 1) as usize);
        }
        v
    };
    let lines = |shuffle: &mut dyn FnMut(usize) -> Vec<usize>| {
        let outer = shuffle(3);
        let mut map = Vec::with_capacity(9);
        for &band in &outer {
            map.extend(shuffle(3).into_iter().map(|r| band * 3 + r));
        }
        map
    };
    let rows = lines(&mut shuffle);
    let cols = lines(&mut shuffle);
    let digits = shuffle(9);
    let transpose = rng.below(2) == 1;
    let mut relabel: Vec<u32> = (0..11).collect();
    for (d, &to) in digits.iter().enumerate() {
        relabel[d + 2] = to as u32 + 2;
    }
    let perm = (0..CELLS)
        .map(|p| {
            let (r, c) = (p / 9, p % 9);
            let (r, c) = if transpose { (c, r) } else { (r, c) };
            rows[r] * 9 + cols[c]
        })
        .collect();
    (perm, relabel)
}

/// A seeded random puzzle with `givens` given cells, and the grid it was
/// made from: a fixed valid grid under a random Sudoku symmetry
/// ([`random_symmetry`]: digits relabelled, rows, bands, columns and stacks
/// permuted, maybe transposed), then all cells but `givens` blanked. The
/// recipe the sample model was trained on.
pub fn generate(rng: &mut SplitMix64, givens: usize) -> (Grid, Grid) {
    const BASE: &str =
        "534678912672195348198342567859761423426853791713924856961537284287419635345286179";
    let base = Grid::parse(BASE).expect("a valid grid").tokens();
    let (perm, relabel) = random_symmetry(rng);
    let tokens: Vec<u32> = perm
        .iter()
        .map(|&src| relabel[base[src] as usize])
        .collect();
    let solution = Grid::from_tokens(&tokens);
    let mut cells: Vec<usize> = (0..CELLS).collect();
    for i in (1..CELLS).rev() {
        cells.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut puzzle = solution;
    for &c in &cells[givens.min(CELLS)..] {
        puzzle.0[c] = 0;
    }
    (puzzle, solution)
}

/// Draws grids side by side with a caption above each.
pub fn side_by_side(grids: &[(&str, &Grid)]) -> String {
    let rendered: Vec<Vec<String>> = grids.iter().map(|(_, g)| g.render()).collect();
    let mut out = String::new();
    for (caption, _) in grids {
        let _ = write!(out, "{caption:<27}");
    }
    out.push('\n');
    for line in 0..rendered.first().map_or(0, Vec::len) {
        for r in &rendered {
            let _ = write!(out, "{:<27}", r[line]);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOLVED: &str =
        "974815326623497851158362479231674985589123647746958132315246798462789513897531264";
    const PUZZLE: &str =
        "97..1..266.34.7...15..624.9...6.4.8...9..36477469.8...3...467...62.89.1389.531.6.";

    #[test]
    fn parses_and_checks_solutions() {
        let solved = Grid::parse(SOLVED).unwrap();
        let puzzle = Grid::parse(PUZZLE).unwrap();
        assert!(solved.is_complete_and_valid());
        assert!(solved.solves(&puzzle));
        assert!(!puzzle.is_complete_and_valid());
        assert_eq!(puzzle.givens(), 81 - PUZZLE.matches('.').count());
        assert_eq!(Grid::from_tokens(&solved.tokens()), solved);
        assert_eq!(puzzle.tokens()[2], 1, "blank is token 1");
        assert_eq!(puzzle.tokens()[0], 10, "9 is token 10");
        let mut swapped = solved;
        swapped.0.swap(0, 1);
        assert!(!swapped.is_complete_and_valid());
        assert_eq!(swapped.differences(&solved), 2);
        assert_eq!(Grid::parse(&solved.to_line()).unwrap(), solved);
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(Grid::parse("123").is_err());
        assert!(Grid::parse(&"x".repeat(81)).is_err());
        let many = format!("# comment\n{PUZZLE}\n\n{SOLVED}\n");
        assert_eq!(Grid::parse_many(&many).unwrap().len(), 2);
        // the line number once, inside one `input:` prefix
        let message = Grid::parse_many("12\n").unwrap_err().to_string();
        assert!(message.starts_with("input: line 1: "), "{message}");
        assert_eq!(message.matches("input:").count(), 1, "{message}");
    }
}
