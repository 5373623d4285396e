//! Token encodings of the official data sets (`shared/TRM.md`, Token
//! encodings), for the examples and for applications that feed TRM puzzles
//! in their natural form.

pub mod maze;
pub mod sudoku;
