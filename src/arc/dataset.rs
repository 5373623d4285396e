//! The authors' built ARC data sets (`dataset/build_arc_dataset.py`):
//! `DIR/test/{set}__*.npy` with `dataset.json`, `DIR/identifiers.json` and
//! `DIR/test_puzzles.json`, read as hostile input.
//!
//! The token arrays are checked by the `.npy` reader on a memory mapping
//! (which touches only the header) and then read a row at a time: the real
//! test split is about 400 puzzles x 1,000 augmentations x their test
//! inputs (some 400 MB of tokens), and an evaluation reads each example
//! once, so none of it needs to stay resident.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use memmap2::Mmap;
use serde::Deserialize;

use super::grid::{Augmentation, CANVAS_TOKENS, Grid};
use super::npy::{Dtype, Npy};
use crate::error::{Result, TrmError};

/// Most identifiers a data set may name: ARC-AGI-2 with 1,000 augmentations
/// has about 1.2M; a header that claims far more is refused.
pub const MAX_IDENTIFIERS: usize = 1 << 24;

/// The split an evaluation reads.
pub const TEST_SPLIT: &str = "test";

/// `dataset.json` of a split (`PuzzleDatasetMetadata`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct DatasetMetadata {
    /// Padding token.
    pub pad_id: i64,
    /// Label ignored by the loss (not used here).
    pub ignore_label_id: Option<i64>,
    /// The identifier of padding examples, never voted.
    pub blank_identifier_id: i64,
    /// Tokens of the vocabulary.
    pub vocab_size: usize,
    /// Tokens per example.
    pub seq_len: usize,
    /// Rows a model's puzzle-embedding table needs.
    pub num_puzzle_identifiers: usize,
    /// Groups (original puzzles).
    pub total_groups: usize,
    /// Examples per puzzle, on average.
    pub mean_puzzle_examples: f64,
    /// Puzzles (augmented copies included).
    pub total_puzzles: usize,
    /// Sets of the split, each `{set}__*.npy`, read in this order.
    pub sets: Vec<String>,
}

/// One test input of an original puzzle with its true output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestPair {
    /// The input grid.
    pub input: Grid,
    /// The true output grid.
    pub output: Grid,
}

/// An original puzzle of `test_puzzles.json` with its test pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestPuzzle {
    /// Its name (the key in `test_puzzles.json`).
    pub name: String,
    /// Its test inputs and outputs, in order.
    pub tests: Vec<TestPair>,
}

/// One example of the test split: an input canvas of an augmented puzzle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Its position in the split (sets in order).
    pub index: usize,
    /// The puzzle identifier of its (augmented) puzzle.
    pub puzzle_identifier: u32,
    /// Its 900 input tokens.
    pub tokens: Vec<u8>,
}

/// The token array of one set, validated, read by rows.
struct TokenRows {
    path: PathBuf,
    file: Mutex<File>,
    /// Where the rows start in the file.
    offset: u64,
    rows: usize,
}

impl TokenRows {
    fn read(&self, row: usize) -> Result<Vec<u8>> {
        let io = |e| TrmError::io(&self.path, e);
        let mut tokens = vec![0u8; CANVAS_TOKENS];
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.seek(SeekFrom::Start(self.offset + (row * CANVAS_TOKENS) as u64))
            .map_err(io)?;
        file.read_exact(&mut tokens).map_err(io)?;
        Ok(tokens)
    }
}

/// A built ARC data set's test split, checked: every array's dtype, shape
/// and indices, every identifier's name, every test grid.
pub struct ArcDataset {
    dir: PathBuf,
    metadata: DatasetMetadata,
    identifiers: Vec<String>,
    puzzles: Vec<TestPuzzle>,
    sets: Vec<TokenRows>,
    /// The puzzle identifier of every example.
    example_identifiers: Vec<u32>,
}

impl std::fmt::Debug for ArcDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArcDataset")
            .field("dir", &self.dir)
            .field("examples", &self.example_identifiers.len())
            .field("puzzles", &self.puzzles.len())
            .field("identifiers", &self.identifiers.len())
            .finish()
    }
}

impl ArcDataset {
    /// Opens the built data set in `dir` (the builder's `output_dir`).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let split = dir.join(TEST_SPLIT);
        let metadata_path = split.join("dataset.json");
        let metadata: DatasetMetadata = read_json(&metadata_path)?;
        let what = metadata_path.display().to_string();
        if metadata.seq_len != CANVAS_TOKENS {
            return Err(TrmError::dataset(
                what,
                format!(
                    "seq_len is {}, but an ARC example is a 30 x 30 canvas of {CANVAS_TOKENS} tokens",
                    metadata.seq_len
                ),
            ));
        }
        if metadata.num_puzzle_identifiers > MAX_IDENTIFIERS {
            return Err(TrmError::dataset(
                what,
                format!(
                    "{} puzzle identifiers, more than the {MAX_IDENTIFIERS} this reader accepts",
                    metadata.num_puzzle_identifiers
                ),
            ));
        }
        if metadata.sets.is_empty() {
            return Err(TrmError::dataset(what, "it names no sets"));
        }

        let identifiers_path = dir.join("identifiers.json");
        let identifiers: Vec<String> = read_json(&identifiers_path)?;
        let what_ids = identifiers_path.display().to_string();
        if identifiers.len() != metadata.num_puzzle_identifiers {
            return Err(TrmError::dataset(
                what_ids,
                format!(
                    "{} names, but dataset.json counts {} puzzle identifiers",
                    identifiers.len(),
                    metadata.num_puzzle_identifiers
                ),
            ));
        }
        let blank = usize::try_from(metadata.blank_identifier_id)
            .ok()
            .filter(|&b| b < identifiers.len())
            .ok_or_else(|| {
                TrmError::dataset(
                    what.clone(),
                    format!(
                        "blank_identifier_id {} is not an identifier",
                        metadata.blank_identifier_id
                    ),
                )
            })?;
        for (i, name) in identifiers.iter().enumerate() {
            if i != blank {
                Augmentation::parse_name(name)
                    .map_err(|e| TrmError::dataset(&what_ids, format!("identifier {i}: {e}")))?;
            }
        }

        let puzzles = read_test_puzzles(&dir.join("test_puzzles.json"))?;

        let mut sets = Vec::with_capacity(metadata.sets.len());
        let mut example_identifiers = Vec::new();
        for set in &metadata.sets {
            if set.is_empty() || set.contains(['/', '\\']) || set == "." || set == ".." {
                return Err(TrmError::dataset(
                    what,
                    format!("`{set}` is not a set name"),
                ));
            }
            let array = |name: &str| split.join(format!("{set}__{name}.npy"));
            let tokens = map_tokens(&array("inputs"))?;
            let puzzle_indices = read_i32s(&array("puzzle_indices"))?;
            let puzzle_identifiers = read_i32s(&array("puzzle_identifiers"))?;
            let group_indices = read_i32s(&array("group_indices"))?;
            let puzzles_in_set = puzzle_identifiers.len();
            check_offsets(
                &array("puzzle_indices"),
                &puzzle_indices,
                tokens.rows,
                "examples",
            )?;
            if puzzle_indices.len() != puzzles_in_set + 1 {
                return Err(TrmError::dataset(
                    array("puzzle_indices").display().to_string(),
                    format!(
                        "{} offsets for {puzzles_in_set} puzzles (one more is needed)",
                        puzzle_indices.len()
                    ),
                ));
            }
            check_offsets(
                &array("group_indices"),
                &group_indices,
                puzzles_in_set,
                "puzzles",
            )?;
            example_identifiers.reserve(tokens.rows);
            for (p, &id) in puzzle_identifiers.iter().enumerate() {
                let id = u32::try_from(id)
                    .ok()
                    .filter(|&id| (id as usize) < identifiers.len())
                    .ok_or_else(|| {
                        TrmError::dataset(
                            array("puzzle_identifiers").display().to_string(),
                            format!(
                                "puzzle {p} has identifier {id}, outside 0..{}",
                                identifiers.len()
                            ),
                        )
                    })?;
                let count = (puzzle_indices[p + 1] - puzzle_indices[p]) as usize;
                example_identifiers.extend(std::iter::repeat_n(id, count));
            }
            sets.push(tokens);
        }
        Ok(ArcDataset {
            dir,
            metadata,
            identifiers,
            puzzles,
            sets,
            example_identifiers,
        })
    }

    /// The directory it was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The test split's `dataset.json`.
    pub fn metadata(&self) -> &DatasetMetadata {
        &self.metadata
    }

    /// Identifier -> name (`identifiers.json`).
    pub fn identifiers(&self) -> &[String] {
        &self.identifiers
    }

    /// The original puzzles with their test pairs, in the file's order.
    pub fn puzzles(&self) -> &[TestPuzzle] {
        &self.puzzles
    }

    /// Examples in the test split.
    pub fn len(&self) -> usize {
        self.example_identifiers.len()
    }

    /// Whether the split holds no example.
    pub fn is_empty(&self) -> bool {
        self.example_identifiers.is_empty()
    }

    /// The puzzle identifier of every example.
    pub fn example_identifiers(&self) -> &[u32] {
        &self.example_identifiers
    }

    /// SHA-256 of the examples' augmentations: every identifier's name
    /// (the original puzzle and its augmentation, `identifiers.json`) and
    /// every example's identifier, in order. Two builds that give their
    /// examples the same augmented puzzles have the same fingerprint; it
    /// goes into the header of an answer log
    /// ([`crate::shard::RunSettings::data_sha256`]).
    pub fn fingerprint(&self) -> String {
        let ids: Vec<u8> = self
            .example_identifiers
            .iter()
            .flat_map(|id| id.to_le_bytes())
            .collect();
        let count = (self.identifiers.len() as u64).to_le_bytes();
        crate::shard::sha256_of_parts(
            std::iter::once(&count[..])
                .chain(self.identifiers.iter().map(|name| name.as_bytes()))
                .chain(std::iter::once(ids.as_slice())),
        )
    }

    /// Example `index` (read from the file).
    pub fn example(&self, index: usize) -> Result<Example> {
        let puzzle_identifier = *self.example_identifiers.get(index).ok_or_else(|| {
            TrmError::Input(format!(
                "example {index} is outside the data set's {}",
                self.len()
            ))
        })?;
        let mut row = index;
        for set in &self.sets {
            if row < set.rows {
                return Ok(Example {
                    index,
                    puzzle_identifier,
                    tokens: set.read(row)?,
                });
            }
            row -= set.rows;
        }
        unreachable!("the sets' rows add up to the examples")
    }

    /// The original puzzle name of example `index` (`None` past the end or
    /// for the blank identifier).
    pub fn original_name(&self, index: usize) -> Option<&str> {
        let id = *self.example_identifiers.get(index)? as usize;
        if id as i64 == self.metadata.blank_identifier_id {
            return None;
        }
        Augmentation::parse_name(&self.identifiers[id])
            .ok()
            .map(|(orig, _)| orig)
    }

    /// The indices of the examples whose original puzzle is one of the
    /// first `limit` of `test_puzzles.json` (all with `None`).
    pub fn selected_examples(&self, limit: Option<usize>) -> Vec<usize> {
        let Some(limit) = limit else {
            return (0..self.len()).collect();
        };
        let names: HashSet<&str> = self
            .puzzles
            .iter()
            .take(limit)
            .map(|p| p.name.as_str())
            .collect();
        (0..self.len())
            .filter(|&i| self.original_name(i).is_some_and(|n| names.contains(n)))
            .collect()
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let file = File::open(path).map_err(|e| TrmError::io(path, e))?;
    serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| TrmError::dataset(path.display().to_string(), e))
}

fn map_file(path: &Path) -> Result<Mmap> {
    crate::tensor_file::map_file(path)
}

/// Opens `{set}__inputs.npy`: uint8 `[N, 900]`, C order, checked by the
/// `.npy` reader against the file's length.
fn map_tokens(path: &Path) -> Result<TokenRows> {
    let map = map_file(path)?;
    let what = path.display().to_string();
    let npy = Npy::parse(&map)
        .and_then(|npy| match (npy.dtype, npy.shape.len()) {
            (Dtype::U8, 2) => Ok(npy),
            (Dtype::U8, _) => Err(format!("shape {:?}", npy.shape)),
            _ => Err(format!("dtype '{}'", npy.descr)),
        })
        .map_err(|e| TrmError::dataset(&what, format!("not a uint8 [N, 900] array: {e}")))?;
    if npy.shape[1] != CANVAS_TOKENS || !npy.is_c_order() {
        return Err(TrmError::dataset(
            what,
            format!(
                "shape {:?}{}, but examples are rows of {CANVAS_TOKENS} tokens",
                npy.shape,
                if npy.is_c_order() {
                    ""
                } else {
                    " in Fortran order"
                }
            ),
        ));
    }
    let rows = npy.shape[0];
    // the reader refuses extra bytes, so the rows end the file
    let offset = (map.len() - npy.data.len()) as u64;
    let file = File::open(path).map_err(|e| TrmError::io(path, e))?;
    Ok(TokenRows {
        path: path.to_path_buf(),
        file: Mutex::new(file),
        offset,
        rows,
    })
}

/// Reads a small int32 `[n]` array.
fn read_i32s(path: &Path) -> Result<Vec<i32>> {
    let map = map_file(path)?;
    Npy::parse(&map)
        .and_then(|npy| match (npy.i32s(), npy.shape.len()) {
            (Some(values), 1) => Ok(values),
            (Some(_), _) => Err(format!("shape {:?}", npy.shape)),
            (None, _) => Err(format!("dtype '{}'", npy.descr)),
        })
        .map_err(|e| {
            TrmError::dataset(
                path.display().to_string(),
                format!("not an int32 [n] array: {e}"),
            )
        })
}

/// Offsets into `count` items: start at 0, never decrease, end at `count`.
fn check_offsets(path: &Path, offsets: &[i32], count: usize, items: &str) -> Result<()> {
    let bad = |why: String| TrmError::dataset(path.display().to_string(), why);
    if offsets.first() != Some(&0) {
        return Err(bad("the offsets do not start at 0".into()));
    }
    if let Some(i) = offsets.windows(2).position(|w| w[1] < w[0]) {
        return Err(bad(format!(
            "offset {} ({}) is below offset {i} ({})",
            i + 1,
            offsets[i + 1],
            offsets[i]
        )));
    }
    let last = *offsets.last().unwrap_or(&0);
    if last as usize != count || last < 0 {
        return Err(bad(format!(
            "the offsets end at {last}, but there are {count} {items}"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
struct RawPair {
    input: Vec<Vec<i64>>,
    output: Vec<Vec<i64>>,
}

#[derive(Deserialize)]
struct RawPuzzle {
    test: Vec<RawPair>,
}

/// `test_puzzles.json` in the file's order: the evaluator averages over
/// puzzles in it and writes the submission in it.
struct OrderedPuzzles(Vec<(String, RawPuzzle)>);

impl<'de> Deserialize<'de> for OrderedPuzzles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OrderedPuzzles;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of puzzles by name")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OrderedPuzzles, A::Error> {
                let mut puzzles = Vec::new();
                while let Some(entry) = map.next_entry::<String, RawPuzzle>()? {
                    puzzles.push(entry);
                }
                Ok(OrderedPuzzles(puzzles))
            }
        }
        d.deserialize_map(Visit)
    }
}

fn read_test_puzzles(path: &Path) -> Result<Vec<TestPuzzle>> {
    let OrderedPuzzles(raw) = read_json(path)?;
    let what = path.display().to_string();
    if raw.is_empty() {
        return Err(TrmError::dataset(what, "it holds no puzzles"));
    }
    let mut seen = HashSet::new();
    let mut puzzles = Vec::with_capacity(raw.len());
    for (name, puzzle) in raw {
        if !seen.insert(name.clone()) {
            return Err(TrmError::dataset(
                what,
                format!("puzzle `{name}` appears twice"),
            ));
        }
        if name.contains(super::grid::NAME_SEPARATOR) {
            return Err(TrmError::dataset(
                what,
                format!("puzzle `{name}` has an augmentation's name"),
            ));
        }
        if puzzle.test.is_empty() {
            return Err(TrmError::dataset(
                what,
                format!("puzzle `{name}` has no test inputs"),
            ));
        }
        let tests = puzzle
            .test
            .iter()
            .enumerate()
            .map(|(i, pair)| {
                let grid = |rows: &[Vec<i64>], which: &str| {
                    Grid::from_rows(rows).map_err(|e| {
                        TrmError::dataset(&what, format!("puzzle `{name}` test {i} {which}: {e}"))
                    })
                };
                Ok(TestPair {
                    input: grid(&pair.input, "input")?,
                    output: grid(&pair.output, "output")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        puzzles.push(TestPuzzle { name, tests });
    }
    Ok(puzzles)
}
