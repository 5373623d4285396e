//! Mazes as the official data set encodes them: a square grid read row by
//! row, the characters `#`, space, `S`, `G`, `o` (wall, open, start, goal,
//! path) as tokens 1..=5, 0 for padding. The model reads a maze without its
//! path and predicts every cell; the cells predicted `o` are its path.

use crate::error::{Result, TrmError};

/// Characters of tokens 1..=5.
pub const CHARSET: [char; 5] = ['#', ' ', 'S', 'G', 'o'];

/// Token of the path character `o`.
pub const PATH: u32 = 5;

/// Token of a character of [`CHARSET`].
pub fn token(c: char) -> Option<u32> {
    CHARSET.iter().position(|&x| x == c).map(|i| i as u32 + 1)
}

/// Character of a token (`?` for padding or anything else).
pub fn character(token: u32) -> char {
    match token {
        1..=5 => CHARSET[token as usize - 1],
        _ => '?',
    }
}

/// Parses a square maze of `side x side` cells: `side` lines of `side`
/// characters from [`CHARSET`] (lines may be shorter: missing cells are
/// open). Returns the tokens, row-major.
pub fn parse(text: &str, side: usize) -> Result<Vec<u32>> {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with(';'))
        .collect();
    if lines.len() != side {
        return Err(TrmError::Input(format!(
            "the model reads {side}x{side} mazes, the input has {} lines",
            lines.len()
        )));
    }
    let mut tokens = Vec::with_capacity(side * side);
    for (r, line) in lines.iter().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        if chars.len() > side {
            return Err(TrmError::Input(format!(
                "line {} has {} cells, the maze is {side} wide",
                r + 1,
                chars.len()
            )));
        }
        for c in 0..side {
            let ch = chars.get(c).copied().unwrap_or(' ');
            let t = token(ch).ok_or_else(|| {
                TrmError::Input(format!(
                    "line {}, column {}: `{ch}` is not one of `#`, space, `S`, `G`, `o`",
                    r + 1,
                    c + 1
                ))
            })?;
            tokens.push(t);
        }
    }
    Ok(tokens)
}

/// The maze with the predicted path drawn over its open cells: every cell
/// the model predicts as path (`o`) that is open in the input.
/// Refuses an input or prediction that is not `side x side` cells.
pub fn overlay_path(input: &[u32], predicted: &[u32], side: usize) -> Result<String> {
    let cells = side * side;
    if input.len() != cells || predicted.len() != cells {
        return Err(TrmError::Input(format!(
            "a {side} x {side} maze has {cells} cells; got {} input and {} predicted",
            input.len(),
            predicted.len()
        )));
    }
    let mut out = String::new();
    for r in 0..side {
        for c in 0..side {
            let i = r * side + c;
            let shown = if input[i] == 2 && predicted[i] == PATH {
                'o'
            } else {
                character(input[i])
            };
            out.push(shown);
        }
        out.push('\n');
    }
    Ok(out)
}

/// Counts of the path cells: predicted on open cells, and predicted where
/// the input has a wall (a model error).
pub fn path_cells(input: &[u32], predicted: &[u32]) -> (usize, usize) {
    let on_open = input
        .iter()
        .zip(predicted)
        .filter(|&(&i, &p)| i == 2 && p == PATH)
        .count();
    let on_walls = input
        .iter()
        .zip(predicted)
        .filter(|&(&i, &p)| i == 1 && p == PATH)
        .count();
    (on_open, on_walls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let text = "####\n#S #\n# G#\n####\n";
        let tokens = parse(text, 4).unwrap();
        assert_eq!(tokens[5], 3);
        assert_eq!(tokens[6], 2);
        let mut predicted = tokens.clone();
        predicted[6] = PATH;
        predicted[0] = PATH; // on a wall: not drawn
        assert_eq!(
            overlay_path(&tokens, &predicted, 4).unwrap(),
            "####\n#So#\n# G#\n####\n"
        );
        assert!(overlay_path(&tokens, &predicted, 5).is_err());
        assert_eq!(path_cells(&tokens, &predicted), (1, 1));
        assert!(parse("#x\n##\n", 2).is_err());
        assert!(parse("##\n", 2).is_err());
    }
}
