//! ARC grids and the augmentations of the authors' data set builder
//! (`dataset/build_arc_dataset.py`, `dataset/common.py`): the 30 x 30 token
//! encoding and its crop, the eight dihedral transforms with numpy's
//! semantics, colour permutations, and the augmentation a puzzle
//! identifier's name records.

use std::fmt;

use crate::error::{Result, TrmError};

/// Side of the token canvas (`ARCMaxGridSize`): a grid is padded to 30 x 30.
pub const CANVAS_SIDE: usize = 30;
/// Tokens per example: the canvas, row-major.
pub const CANVAS_TOKENS: usize = CANVAS_SIDE * CANVAS_SIDE;
/// Padding token.
pub const PAD_TOKEN: u32 = 0;
/// End-of-grid token, written after the last row and column.
pub const EOS_TOKEN: u32 = 1;
/// Token of colour 0; colour `c` is token `c + COLOUR_TOKEN_OFFSET`.
pub const COLOUR_TOKEN_OFFSET: u32 = 2;
/// Colours of ARC: 0 (black) to 9.
pub const COLOURS: usize = 10;
/// What separates the original name from the augmentation in an identifier's
/// name (`PuzzleIdSeparator`): `ORIG|||tK|||PERM`.
pub const NAME_SEPARATOR: &str = "|||";

/// A rectangular grid of ARC colours (0..=9), at most 30 x 30. A dimension
/// may be 0 (the crop of a prediction that starts with PAD or EOS is empty).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Grid {
    rows: usize,
    cols: usize,
    cells: Vec<u8>,
}

impl Grid {
    /// A `rows x cols` grid from row-major `cells`, each a colour 0..=9.
    pub fn new(rows: usize, cols: usize, cells: Vec<u8>) -> Result<Self> {
        if rows > CANVAS_SIDE || cols > CANVAS_SIDE {
            return Err(TrmError::Input(format!(
                "a {rows} x {cols} grid is larger than ARC's {CANVAS_SIDE} x {CANVAS_SIDE}"
            )));
        }
        if cells.len() != rows * cols {
            return Err(TrmError::Input(format!(
                "{} cells for a {rows} x {cols} grid",
                cells.len()
            )));
        }
        if let Some(i) = cells.iter().position(|&c| usize::from(c) >= COLOURS) {
            return Err(TrmError::Input(format!(
                "cell ({}, {}) holds {}, not a colour 0..=9",
                i / cols,
                i % cols,
                cells[i]
            )));
        }
        Ok(Grid { rows, cols, cells })
    }

    /// A grid from nested rows as ARC's JSON writes them (`arc_grid_to_np`:
    /// rectangular, at most 30 x 30, colours 0..=9; `[]` has no rows to be
    /// two-dimensional and is refused, `[[]]` is a 1 x 0 grid).
    pub fn from_rows(rows: &[Vec<i64>]) -> Result<Self> {
        let Some(first) = rows.first() else {
            return Err(TrmError::Input("a grid with no rows".into()));
        };
        let cols = first.len();
        let mut cells = Vec::with_capacity(rows.len() * cols);
        for (r, row) in rows.iter().enumerate() {
            if row.len() != cols {
                return Err(TrmError::Input(format!(
                    "row {r} has {} cells, row 0 has {cols}: not a rectangle",
                    row.len()
                )));
            }
            for (c, &v) in row.iter().enumerate() {
                if !(0..COLOURS as i64).contains(&v) {
                    return Err(TrmError::Input(format!(
                        "cell ({r}, {c}) holds {v}, not a colour 0..=9"
                    )));
                }
                cells.push(v as u8);
            }
        }
        Grid::new(rows.len(), cols, cells)
    }

    /// The evaluator's crop (`_crop` of `evaluators/arc.py`) of a 30 x 30
    /// token canvas: the largest top-left rectangle with no PAD, EOS or
    /// out-of-vocabulary token inside, as colours. Row by row, the width is
    /// cut at the first bad token and never grows again; the first of equal
    /// areas wins.
    pub fn crop<T: Copy + Into<i64>>(tokens: &[T]) -> Result<Self> {
        if tokens.len() != CANVAS_TOKENS {
            return Err(TrmError::Input(format!(
                "{} tokens are not a {CANVAS_SIDE} x {CANVAS_SIDE} canvas",
                tokens.len()
            )));
        }
        let is_colour = |t: i64| {
            let lo = i64::from(COLOUR_TOKEN_OFFSET);
            (lo..lo + COLOURS as i64).contains(&t)
        };
        let (mut best_area, mut best) = (0, (0, 0));
        let mut width = CANVAS_SIDE;
        for rows in 1..=CANVAS_SIDE {
            let row = &tokens[(rows - 1) * CANVAS_SIDE..rows * CANVAS_SIDE];
            if let Some(c) = row[..width].iter().position(|&t| !is_colour(t.into())) {
                width = c;
            }
            if rows * width > best_area {
                best_area = rows * width;
                best = (rows, width);
            }
        }
        let (rows, cols) = best;
        let mut cells = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            let row = &tokens[r * CANVAS_SIDE..r * CANVAS_SIDE + cols];
            cells.extend(
                row.iter()
                    .map(|&t| (t.into() - i64::from(COLOUR_TOKEN_OFFSET)) as u8),
            );
        }
        Ok(Grid { rows, cols, cells })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row-major colours.
    pub fn cells(&self) -> &[u8] {
        &self.cells
    }

    /// The colour at (`row`, `col`), if inside.
    pub fn get(&self, row: usize, col: usize) -> Option<u8> {
        (row < self.rows && col < self.cols).then(|| self.cells[row * self.cols + col])
    }

    /// Nested rows, as ARC's JSON holds a grid.
    pub fn to_rows(&self) -> Vec<Vec<u8>> {
        if self.cols == 0 {
            return vec![Vec::new(); self.rows];
        }
        self.cells.chunks(self.cols).map(<[u8]>::to_vec).collect()
    }

    /// The grid under `transform` (numpy's `rot90`, `fliplr`, `flipud`, `.T`
    /// as `dihedral_transform` composes them).
    pub fn transformed(&self, transform: Dihedral) -> Grid {
        let (rows, cols) = if transform.swaps_axes() {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        };
        let mut cells = Vec::with_capacity(self.cells.len());
        for i in 0..rows {
            for j in 0..cols {
                let (r, c) = transform.source(i, j, self.rows, self.cols);
                cells.push(self.cells[r * self.cols + c]);
            }
        }
        Grid { rows, cols, cells }
    }

    /// Every colour `c` replaced by `mapping[c]`.
    pub fn recoloured(&self, mapping: &ColourPermutation) -> Grid {
        Grid {
            rows: self.rows,
            cols: self.cols,
            cells: self
                .cells
                .iter()
                .map(|&c| mapping.0[usize::from(c)])
                .collect(),
        }
    }

    /// The canvas the builder writes for this grid at the top left (no
    /// translation, as for test examples): colours as tokens, EOS after the
    /// last row and column, PAD elsewhere.
    pub fn to_canvas(&self) -> Vec<u8> {
        let mut canvas = vec![PAD_TOKEN as u8; CANVAS_TOKENS];
        for r in 0..self.rows {
            for c in 0..self.cols {
                canvas[r * CANVAS_SIDE + c] =
                    self.cells[r * self.cols + c] + COLOUR_TOKEN_OFFSET as u8;
            }
        }
        if self.rows < CANVAS_SIDE {
            for c in 0..self.cols {
                canvas[self.rows * CANVAS_SIDE + c] = EOS_TOKEN as u8;
            }
        }
        if self.cols < CANVAS_SIDE {
            for r in 0..self.rows {
                canvas[r * CANVAS_SIDE + self.cols] = EOS_TOKEN as u8;
            }
        }
        canvas
    }
}

impl fmt::Display for Grid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in 0..self.rows {
            for c in 0..self.cols {
                write!(f, "{}", self.cells[r * self.cols + c])?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// One of the eight dihedral transforms, numbered as `dihedral_transform`
/// numbers them: 0 identity, 1-3 `rot90` by 1-3 quarter turns (counter-
/// clockwise), 4 `fliplr`, 5 `flipud`, 6 transpose, 7 `fliplr(rot90(.))`
/// (the anti-diagonal reflection).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Dihedral(u8);

impl Dihedral {
    /// The identity.
    pub const IDENTITY: Dihedral = Dihedral(0);

    /// Transform `id` (0..8).
    pub fn new(id: u8) -> Result<Self> {
        if id < 8 {
            Ok(Dihedral(id))
        } else {
            Err(TrmError::Input(format!(
                "dihedral transform {id} is not one of 0..8"
            )))
        }
    }

    /// All eight, in order.
    pub fn all() -> impl Iterator<Item = Dihedral> {
        (0..8).map(Dihedral)
    }

    /// Its number.
    pub fn id(self) -> u8 {
        self.0
    }

    /// The transform that undoes this one (`DIHEDRAL_INVERSE`).
    pub fn inverse(self) -> Dihedral {
        const INVERSE: [u8; 8] = [0, 3, 2, 1, 4, 5, 6, 7];
        Dihedral(INVERSE[usize::from(self.0)])
    }

    fn swaps_axes(self) -> bool {
        matches!(self.0, 1 | 3 | 6 | 7)
    }

    /// The cell of an `rows x cols` source that lands at (`i`, `j`).
    pub(crate) fn source(self, i: usize, j: usize, rows: usize, cols: usize) -> (usize, usize) {
        match self.0 {
            0 => (i, j),
            1 => (j, cols - 1 - i),
            2 => (rows - 1 - i, cols - 1 - j),
            3 => (rows - 1 - j, i),
            4 => (i, cols - 1 - j),
            5 => (rows - 1 - i, j),
            6 => (j, i),
            _ => (rows - 1 - j, cols - 1 - i),
        }
    }
}

/// A permutation of the ten colours: colour `c` becomes `self.0[c]`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ColourPermutation([u8; COLOURS]);

impl ColourPermutation {
    /// The identity.
    pub const IDENTITY: ColourPermutation = ColourPermutation([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);

    /// Checks that `mapping` holds each colour once.
    pub fn new(mapping: [u8; COLOURS]) -> Result<Self> {
        let mut seen = [false; COLOURS];
        for &c in &mapping {
            if usize::from(c) >= COLOURS || std::mem::replace(&mut seen[usize::from(c)], true) {
                return Err(TrmError::Input(format!(
                    "{mapping:?} is not a permutation of the colours 0..=9"
                )));
            }
        }
        Ok(ColourPermutation(mapping))
    }

    /// The permutation that undoes this one.
    pub fn inverse(&self) -> ColourPermutation {
        let mut inv = [0; COLOURS];
        for (c, &to) in self.0.iter().enumerate() {
            inv[usize::from(to)] = c as u8;
        }
        ColourPermutation(inv)
    }

    /// Where each colour goes.
    pub fn mapping(&self) -> [u8; COLOURS] {
        self.0
    }
}

/// An augmentation of the builder's `aug`: colours permuted, then a
/// dihedral transform.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Augmentation {
    /// The transform, applied after the colours.
    pub transform: Dihedral,
    /// The colour permutation, applied first.
    pub colours: ColourPermutation,
}

impl Augmentation {
    /// No change.
    pub const IDENTITY: Augmentation = Augmentation {
        transform: Dihedral::IDENTITY,
        colours: ColourPermutation::IDENTITY,
    };

    /// The original frame's `grid` in this augmentation's frame.
    pub fn apply(&self, grid: &Grid) -> Grid {
        grid.recoloured(&self.colours).transformed(self.transform)
    }

    /// The original frame of `grid` (`inverse_aug`: the inverse transform,
    /// then the inverse colour permutation).
    pub fn invert(&self, grid: &Grid) -> Grid {
        grid.transformed(self.transform.inverse())
            .recoloured(&self.colours.inverse())
    }

    /// Splits a puzzle identifier's name into the original puzzle's name and
    /// the augmentation it records, as `inverse_aug` does: a name without
    /// `|||` is an original; otherwise the first part is the original name
    /// and the last two are `tK` (K in 0..8) and ten digits, a permutation
    /// of 0..=9.
    pub fn parse_name(name: &str) -> Result<(&str, Augmentation)> {
        if !name.contains(NAME_SEPARATOR) {
            return Ok((name, Augmentation::IDENTITY));
        }
        let bad = |why: &str| {
            TrmError::Input(format!(
                "puzzle name `{name}` does not name an augmentation (ORIG|||tK|||PERM): {why}"
            ))
        };
        let parts: Vec<&str> = name.split(NAME_SEPARATOR).collect();
        if parts.len() < 3 {
            return Err(bad("it has two parts, not three"));
        }
        let (transform, perm) = (parts[parts.len() - 2], parts[parts.len() - 1]);
        let id = transform
            .strip_prefix('t')
            .filter(|d| d.len() == 1)
            .and_then(|d| d.parse::<u8>().ok())
            .ok_or_else(|| bad("the transform is not t0 .. t7"))?;
        let transform = Dihedral::new(id).map_err(|_| bad("the transform is not t0 .. t7"))?;
        let digits = perm.as_bytes();
        if digits.len() != COLOURS || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad("the colour permutation is not ten digits"));
        }
        let mut mapping = [0u8; COLOURS];
        for (m, d) in mapping.iter_mut().zip(digits) {
            *m = d - b'0';
        }
        let colours = ColourPermutation::new(mapping)
            .map_err(|_| bad("the colour permutation repeats a colour"))?;
        Ok((parts[0], Augmentation { transform, colours }))
    }

    /// The name the builder gives this augmentation of `original`.
    pub fn name(&self, original: &str) -> String {
        let perm: String = self
            .colours
            .0
            .iter()
            .map(|c| char::from(b'0' + c))
            .collect();
        format!(
            "{original}{NAME_SEPARATOR}t{}{NAME_SEPARATOR}{perm}",
            self.transform.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[&[u8]]) -> Grid {
        let r: Vec<Vec<i64>> = rows
            .iter()
            .map(|row| row.iter().map(|&c| i64::from(c)).collect())
            .collect();
        Grid::from_rows(&r).unwrap()
    }

    #[test]
    fn transforms_follow_numpy() {
        // np.array([[1,2,3],[4,5,6]]) under each dihedral_transform id
        let a = grid(&[&[1, 2, 3], &[4, 5, 6]]);
        let expected: [&[&[u8]]; 8] = [
            &[&[1, 2, 3], &[4, 5, 6]],
            &[&[3, 6], &[2, 5], &[1, 4]],
            &[&[6, 5, 4], &[3, 2, 1]],
            &[&[4, 1], &[5, 2], &[6, 3]],
            &[&[3, 2, 1], &[6, 5, 4]],
            &[&[4, 5, 6], &[1, 2, 3]],
            &[&[1, 4], &[2, 5], &[3, 6]],
            &[&[6, 3], &[5, 2], &[4, 1]],
        ];
        for (t, want) in Dihedral::all().zip(expected) {
            assert_eq!(a.transformed(t), grid(want), "transform {}", t.id());
            assert_eq!(a.transformed(t).transformed(t.inverse()), a);
        }
    }

    #[test]
    fn names_parse_and_invert() {
        let aug = Augmentation {
            transform: Dihedral::new(7).unwrap(),
            colours: ColourPermutation::new([0, 7, 3, 8, 9, 5, 4, 1, 6, 2]).unwrap(),
        };
        let name = aug.name("a3f84088");
        assert_eq!(name, "a3f84088|||t7|||0738954162");
        assert_eq!(Augmentation::parse_name(&name).unwrap(), ("a3f84088", aug));
        let g = grid(&[&[0, 1, 2], &[3, 4, 5], &[6, 7, 8], &[9, 9, 1]]);
        assert_eq!(aug.invert(&aug.apply(&g)), g);
        assert_eq!(
            Augmentation::parse_name("plain").unwrap(),
            ("plain", Augmentation::IDENTITY)
        );
        for bad in [
            "a|||t1",
            "a|||t8|||0123456789",
            "a|||1|||0123456789",
            "a|||t1|||012345678",
            "a|||t1|||0123456788",
            "a|||t1|||01234567x9",
            "a|||t11|||0123456789",
        ] {
            assert!(Augmentation::parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn crop_matches_the_evaluator() {
        let g = grid(&[&[1, 2], &[3, 4], &[5, 6]]);
        assert_eq!(Grid::crop(&g.to_canvas()).unwrap(), g);
        // a ragged prediction: the width shrinks and never grows back
        let mut canvas = vec![5u8; CANVAS_TOKENS];
        canvas[3] = 0; // row 0: width 3
        canvas[CANVAS_SIDE + 1] = 12; // row 1: width 1 (12 is out of the vocabulary)
        let crop = Grid::crop(&canvas).unwrap();
        // areas: 3, 2, 3 (rows 3 width 1), ... 30 x 1 = 30 wins
        assert_eq!((crop.rows(), crop.cols()), (30, 1));
        let empty = Grid::crop(&[0u32; CANVAS_TOKENS]).unwrap();
        assert_eq!((empty.rows(), empty.cols()), (0, 0));
        assert!(Grid::crop(&[2u8; 81]).is_err());
    }

    #[test]
    fn bad_grids_are_refused() {
        assert!(Grid::from_rows(&[]).is_err());
        assert!(Grid::from_rows(&[vec![1, 2], vec![3]]).is_err());
        assert!(Grid::from_rows(&[vec![10]]).is_err());
        assert!(Grid::from_rows(&[vec![-1]]).is_err());
        assert!(Grid::from_rows(&vec![vec![0; 31]; 2]).is_err());
        assert_eq!(Grid::from_rows(&[vec![]]).unwrap().rows(), 1);
    }
}
