//! Work split across machines: a [`Shard`] is one of N shares of a run's
//! puzzles (or of an ARC evaluation's examples), and [`RunSettings`] is what
//! a run's answers depend on, recorded with them so that the shares of one
//! run can be recognised and the answers of different models or settings
//! are never combined.
//!
//! `trm run --shard K/N` writes its share's outputs with the shard and the
//! settings in the file's header metadata; [`merge_outputs`] checks them
//! and concatenates the shares in order. `trm arc-eval --shard K/N` writes
//! an answer log whose header holds the same settings
//! ([`crate::arc::LogHeader`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, TrmError};
use crate::solve::SolveOutput;
use crate::tensor_file;

/// Share `index` of `count` (0-based: `--shard 0/4` is the first of four).
///
/// The items (puzzles, examples) are split into `count` contiguous ranges
/// whose sizes differ by at most one, in order, so the shares' outputs
/// concatenated in shard order are the whole run's.
///
/// ```
/// use trm_wgpu::shard::Shard;
/// let shard: Shard = "1/3".parse().unwrap();
/// assert_eq!(shard.range(10), 3..6);
/// let all: Vec<_> = (0..3).flat_map(|k| Shard::new(k, 3).unwrap().range(10)).collect();
/// assert_eq!(all, (0..10).collect::<Vec<_>>());
/// assert!("3/3".parse::<Shard>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    /// Which share, `0..count`.
    pub index: usize,
    /// How many shares.
    pub count: usize,
}

impl Shard {
    /// Share `index` of `count`; refuses `count` 0 and `index >= count`.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(TrmError::Input(format!(
                "shard {index}/{count}: K/N needs N >= 1 and 0 <= K < N (shards count from 0)"
            )));
        }
        Ok(Shard { index, count })
    }

    /// The items of this share among `total`: `[index * total / count,
    /// (index + 1) * total / count)`.
    pub fn range(&self, total: usize) -> Range<usize> {
        let at = |k: usize| (k as u128 * total as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = TrmError;
    /// `K/N`, as `--shard` takes it.
    fn from_str(s: &str) -> Result<Self> {
        let parsed = s
            .split_once('/')
            .and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) => Shard::new(index, count),
            None => Err(TrmError::Input(format!(
                "shard `{s}`: expected K/N, as in 0/4 (the first of four shares)"
            ))),
        }
    }
}

/// What a run's answers depend on: the checkpoint's content, the engine's
/// precision, the ACT steps, halting, the CPU's activations, and the data
/// answered. Two runs whose settings are equal answer alike (up to the
/// engines' float rounding: the CPU and a GPU may share a run), so their
/// outputs can be combined; anything else is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSettings {
    /// SHA-256 of the checkpoint file, as `sha256sum` prints it.
    pub model_sha256: String,
    /// The precision the network ran at (`f32`, `f16`, `bf16`, `int8`).
    pub precision: String,
    /// ACT steps per puzzle.
    pub act_steps: usize,
    /// Early halting (`--halt`).
    pub early_halt: bool,
    /// What the CPU engine's products multiply with (`f32`, `matched`).
    pub activations: String,
    /// SHA-256 of what was answered: `trm run`'s puzzles (tokens and
    /// identifiers), or an ARC data set's augmented examples (see
    /// [`crate::arc::ArcDataset::fingerprint`]).
    pub data_sha256: String,
}

impl RunSettings {
    /// The settings that differ between `self` and `other`, each as
    /// `name: ours vs theirs`.
    pub fn differences(&self, other: &RunSettings) -> Vec<String> {
        let fields = |s: &RunSettings| -> BTreeMap<String, serde_json::Value> {
            match serde_json::to_value(s) {
                Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
                _ => BTreeMap::new(),
            }
        };
        let (ours, theirs) = (fields(self), fields(other));
        ours.iter()
            .filter(|(name, value)| theirs.get(*name) != Some(value))
            .map(|(name, value)| {
                let other = theirs
                    .get(name)
                    .map_or_else(|| "absent".to_string(), ToString::to_string);
                format!("{name} {value} vs {other}")
            })
            .collect()
    }

    /// Refuses `other` unless it equals `self`; `ours` and `theirs` name
    /// the two sides in the message.
    pub fn check_same(&self, other: &RunSettings, ours: &str, theirs: &str) -> Result<()> {
        let differences = self.differences(other);
        if differences.is_empty() {
            return Ok(());
        }
        Err(TrmError::Input(format!(
            "{theirs} was written by another model or other settings than {ours}: {} ({ours} vs {theirs}); answers of different runs are never combined",
            differences.join(", ")
        )))
    }
}

/// SHA-256 of a file's bytes, lowercase hex (what `sha256sum` prints),
/// read in 1 MiB pieces: a checkpoint of gigabytes is never resident.
pub fn file_sha256(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let mut file = std::fs::File::open(path).map_err(|e| TrmError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| TrmError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 of the byte strings `parts`, each preceded by its length (so
/// that no two different lists hash alike), lowercase hex.
pub fn sha256_of_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Header metadata key of a shard's output: the [`ShardHeader`] as JSON.
pub const SHARD_METADATA_KEY: &str = "trm.shard";

/// What a shard's output file records besides its tensors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardHeader {
    /// Which share.
    pub shard: Shard,
    /// Puzzles of the whole input.
    pub total: usize,
    /// The share's first puzzle in the whole input.
    pub first: usize,
    /// What the answers depend on.
    pub settings: RunSettings,
}

impl ShardHeader {
    /// Writes `out` (the share's outputs) with this header in the file's
    /// metadata.
    pub fn save(&self, out: &SolveOutput, path: impl AsRef<Path>) -> Result<()> {
        let range = self.shard.range(self.total);
        if range.start != self.first || range.len() != out.batch {
            return Err(TrmError::Input(format!(
                "shard {} of {} puzzles is puzzles {range:?}, not {} from {}",
                self.shard, self.total, out.batch, self.first
            )));
        }
        let json = serde_json::to_string(self)
            .map_err(|e| TrmError::Input(format!("shard header: {e}")))?;
        let metadata = HashMap::from([(SHARD_METADATA_KEY.to_string(), json)]);
        let bytes = tensor_file::serialize(&out.tensors(), Some(metadata))?;
        tensor_file::write_file(path.as_ref(), &bytes)
    }
}

/// Reads the shards' output files `paths` (in any order), checks that they
/// are every share of one run, once, and returns the whole run's outputs in
/// the input's order: what the run without `--shard` writes.
pub fn merge_outputs(paths: &[impl AsRef<Path>]) -> Result<SolveOutput> {
    let mut parts = Vec::with_capacity(paths.len());
    for path in paths {
        let path = path.as_ref();
        let what = path.display().to_string();
        let bytes = tensor_file::read_file(path)?;
        let header = tensor_file::metadata(&bytes, &what)?
            .remove(SHARD_METADATA_KEY)
            .ok_or_else(|| {
                TrmError::Input(format!(
                    "{what} is not the output of a `trm run --shard K/N` (no `{SHARD_METADATA_KEY}` in its metadata)"
                ))
            })?;
        let header: ShardHeader = serde_json::from_str(&header)
            .map_err(|e| TrmError::Input(format!("{what}: a bad shard header: {e}")))?;
        Shard::new(header.shard.index, header.shard.count)?;
        let out = SolveOutput::from_safetensors_bytes(&bytes, &what)?;
        let range = header.shard.range(header.total);
        if range.start != header.first || range.len() != out.batch {
            return Err(TrmError::Input(format!(
                "{what}: shard {} of {} puzzles should hold puzzles {range:?}, but holds {} from {}",
                header.shard, header.total, out.batch, header.first
            )));
        }
        parts.push((what, header, out));
    }
    let Some((first_what, first, _)) = parts.first() else {
        return Err(TrmError::Input("no shard outputs to merge".into()));
    };
    let (first_what, first) = (first_what.clone(), first.clone());
    let mut by_index: Vec<Option<usize>> = vec![None; first.shard.count];
    for (i, (what, header, _)) in parts.iter().enumerate() {
        if header.shard.count != first.shard.count || header.total != first.total {
            return Err(TrmError::Input(format!(
                "{what} is shard {} of {} puzzles, {first_what} shard {} of {}: shares of different splits",
                header.shard, header.total, first.shard, first.total
            )));
        }
        first
            .settings
            .check_same(&header.settings, &first_what, what)?;
        if let Some(j) = by_index[header.shard.index].replace(i) {
            return Err(TrmError::Input(format!(
                "shard {} is given twice: {} and {what}",
                header.shard, parts[j].0
            )));
        }
    }
    let missing: Vec<String> = by_index
        .iter()
        .enumerate()
        .filter(|(_, i)| i.is_none())
        .map(|(k, _)| format!("{k}/{}", first.shard.count))
        .collect();
    if !missing.is_empty() {
        return Err(TrmError::Input(format!(
            "shards {} are missing: a merge needs every share of the run",
            missing.join(", ")
        )));
    }
    let mut slots: Vec<Option<SolveOutput>> = parts.into_iter().map(|(_, _, o)| Some(o)).collect();
    let mut merged: Option<SolveOutput> = None;
    for i in by_index.into_iter().flatten() {
        let out = slots[i].take().expect("each shard once");
        match &mut merged {
            None => merged = Some(out),
            Some(all) => all.append(out)?,
        }
    }
    merged.ok_or_else(|| TrmError::Input("no shard outputs to merge".into()))
}
