//! Answers to a data set's examples: the authors' predictions file (read),
//! and the answer log `trm arc-eval --model` appends to as it runs, so an
//! evaluation of hours can stop and resume without losing what it solved.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use memmap2::Mmap;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};

use super::grid::CANVAS_TOKENS;
use crate::error::{Result, TrmError};
use crate::shard::{RunSettings, Shard};
use crate::tensor_file;

/// An answer to one example.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The example's position in the data set.
    pub example: usize,
    /// Its puzzle identifier.
    pub puzzle_identifier: u32,
    /// The q_halt logit of the answer.
    pub q_halt_logit: f32,
    /// ACT steps the solve ran for it.
    pub steps: u32,
    /// The predicted canvas, 900 tokens.
    pub tokens: Vec<u8>,
}

/// The authors' predictions format (what their evaluation saves, and the
/// fixture's `predictions.safetensors`): `inputs` and `preds` (int32 or
/// int64 `[N, 900]`), `puzzle_identifiers` (int32 or int64 `[N]`) and
/// `q_halt_logits` (float32 `[N]`). The header is checked on a memory
/// mapping; the rows are then read one answer at a time, so a file of the
/// real evaluation's size (3 GB) never needs to be resident.
pub struct Predictions {
    path: PathBuf,
    file: Mutex<File>,
    len: usize,
    inputs: Column,
    preds: Column,
    puzzle_identifiers: Column,
    q_halt_logits: Column,
}

/// Where a checked tensor's bytes lie in the file.
#[derive(Clone, Copy)]
struct Column {
    dtype: Dtype,
    start: u64,
}

impl Predictions {
    /// Opens and checks `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| TrmError::io(path, e))?;
        // read only, and every byte is checked as hostile input
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|e| TrmError::io(path, e))?;
        let what = path.display().to_string();
        // the header checks every safetensors reader of the crate applies
        // (safetensors' own offset arithmetic can overflow otherwise)
        let st = tensor_file::parse(&map, &what)?;
        let len = st
            .tensor("inputs")
            .map(|t| t.shape().first().copied().unwrap_or(0));
        let len = len.unwrap_or(0);
        let column = |name: &str, ints: bool, shape: &[usize]| -> Result<Column> {
            let t = st.tensor(name).map_err(|_| {
                TrmError::dataset(
                    &what,
                    format!(
                        "no tensor `{name}` (a predictions file holds inputs, preds, puzzle_identifiers and q_halt_logits)"
                    ),
                )
            })?;
            let ok = if ints {
                matches!(t.dtype(), Dtype::I32 | Dtype::I64)
            } else {
                t.dtype() == Dtype::F32
            };
            if !ok {
                return Err(TrmError::dataset(
                    &what,
                    format!(
                        "`{name}` has dtype {:?}, expected {}",
                        t.dtype(),
                        if ints { "int32 or int64" } else { "float32" }
                    ),
                ));
            }
            if t.shape() != shape {
                return Err(TrmError::dataset(
                    &what,
                    format!("`{name}` has shape {:?}, expected {shape:?}", t.shape()),
                ));
            }
            // the view borrows the mapping: its offset in it is the file's
            let start = (t.data().as_ptr() as usize - map.as_ptr() as usize) as u64;
            Ok(Column {
                dtype: t.dtype(),
                start,
            })
        };
        let inputs = column("inputs", true, &[len, CANVAS_TOKENS])?;
        let preds = column("preds", true, &[len, CANVAS_TOKENS])?;
        let puzzle_identifiers = column("puzzle_identifiers", true, &[len])?;
        let q_halt_logits = column("q_halt_logits", false, &[len])?;
        drop(st);
        Ok(Predictions {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            len,
            inputs,
            preds,
            puzzle_identifiers,
            q_halt_logits,
        })
    }

    /// Answers held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Answer `i` (below [`Predictions::len`]): (puzzle identifier, input
    /// tokens, predicted tokens, q_halt logit).
    pub fn get(&self, i: usize) -> Result<(i64, Vec<i64>, Vec<i64>, f32)> {
        if i >= self.len {
            return Err(TrmError::Input(format!(
                "prediction {i} is outside the file's {}",
                self.len
            )));
        }
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut read = |at: u64, bytes: &mut [u8]| {
            file.seek(SeekFrom::Start(at))
                .and_then(|_| file.read_exact(bytes))
                .map_err(|e| TrmError::io(&self.path, e))
        };
        let mut rows = |c: Column, width: usize| -> Result<Vec<i64>> {
            let size = if c.dtype == Dtype::I64 { 8 } else { 4 };
            let mut bytes = vec![0u8; width * size];
            read(c.start + (i * width * size) as u64, &mut bytes)?;
            Ok(ints(c.dtype, &bytes))
        };
        let id = rows(self.puzzle_identifiers, 1)?[0];
        let inputs = rows(self.inputs, CANVAS_TOKENS)?;
        let preds = rows(self.preds, CANVAS_TOKENS)?;
        let mut q = [0u8; 4];
        read(self.q_halt_logits.start + 4 * i as u64, &mut q)?;
        Ok((id, inputs, preds, f32::from_le_bytes(q)))
    }
}

/// Little-endian integers of `dtype` (I32 or I64).
fn ints(dtype: Dtype, bytes: &[u8]) -> Vec<i64> {
    match dtype {
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|b| i64::from(i32::from_le_bytes(b.try_into().expect("4 bytes"))))
            .collect(),
    }
}

/// The answer log's first bytes (the first format's were `TRMARCA1`).
const LOG_MAGIC: &[u8; 8] = b"TRMARCA2";
/// The first format's: the same layout without the header JSON (its
/// reserved u64 was 0), which did not record what wrote the answers.
const LOG_MAGIC_V1: &[u8; 8] = b"TRMARCA1";
/// Fixed header: magic, u64 examples of the data set, u32 tokens per
/// answer, u32 bytes per record, u64 bytes of the header JSON that follows.
const LOG_HEADER: usize = 32;
/// The largest header JSON read (a header is a few hundred bytes).
const MAX_HEADER_JSON: u64 = 1 << 20;
/// Record: u32 example, u32 puzzle identifier, f32 q_halt logit, u32
/// steps, 900 tokens.
const LOG_RECORD: usize = 16 + CANVAS_TOKENS;

/// What an answer log records about the run that wrote it. Resuming a log
/// with other settings or another share is refused, and so is voting over
/// logs of different settings ([`LogHeader::check_resume`],
/// [`RunSettings::check_same`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHeader {
    /// What the answers depend on: the checkpoint's content, precision,
    /// ACT steps, halting, the data set's augmented examples.
    pub settings: RunSettings,
    /// The share of the evaluated examples the log answers (`None`: all).
    pub shard: Option<Shard>,
    /// The checkpoint's path when the log was started, for people; not
    /// compared (the shares of a run may mount it at different paths).
    pub model_path: String,
    /// The trm-wgpu version that started the log.
    pub written_by: String,
}

impl LogHeader {
    /// The header of a log that `settings` answer, for `shard`.
    pub fn new(settings: RunSettings, shard: Option<Shard>, model_path: &Path) -> Self {
        LogHeader {
            settings,
            shard,
            model_path: model_path.display().to_string(),
            written_by: format!("trm-wgpu {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Refuses to resume the log at `path`, whose header is `self`, with a
    /// run of header `run`: other settings, or another share.
    pub fn check_resume(&self, run: &LogHeader, path: &Path) -> Result<()> {
        let what = format!("the answer log {}", path.display());
        run.settings.check_same(&self.settings, "this run", &what)?;
        if self.shard != run.shard {
            let name = |s: Option<Shard>| s.map_or_else(|| "all".to_string(), |s| s.to_string());
            return Err(TrmError::Input(format!(
                "{what} holds the answers of shard {}, this run answers shard {}: give each shard its own log",
                name(self.shard),
                name(run.shard)
            )));
        }
        Ok(())
    }
}

/// An append-only file of fixed-size answer records, one per solved
/// example, for a data set of a given size, with a header that records what
/// answered them ([`LogHeader`]). Opening an existing log checks that it
/// belongs to a data set of that size and to the same run, drops a record
/// cut short by a crash, and hands over the answers it holds one at a time
/// (a log of the real evaluation is 400 MB; nothing of it stays in memory).
///
/// Little-endian layout: a 32-byte fixed header (`TRMARCA2`, u64 examples,
/// u32 tokens per answer = 900, u32 record bytes = 916, u64 length L of the
/// header JSON), L bytes of [`LogHeader`] as JSON, then records of u32
/// example index, u32 puzzle identifier, f32 q_halt logit, u32 ACT steps
/// and the 900 predicted tokens (u8).
///
/// Logs of the first format (`TRMARCA1`, no header JSON) record nothing of
/// the run: [`AnswerLog::replay`] still reads them (their header is then
/// `None`), [`AnswerLog::open`] refuses to resume them.
pub struct AnswerLog {
    path: PathBuf,
    file: BufWriter<File>,
}

impl AnswerLog {
    /// Opens (or creates) the log at `path` for a data set of `examples`
    /// examples and the run `header` describes, calling `each` with every
    /// answer already in it, in order. An existing log of another run
    /// (settings or share) is refused.
    pub fn open(
        path: impl AsRef<Path>,
        examples: usize,
        header: &LogHeader,
        mut each: impl FnMut(Answer) -> Result<()>,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |e| TrmError::io(&path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if u32::try_from(examples).is_err() {
            return Err(TrmError::TooLarge(format!(
                "an answer log indexes examples with 32 bits; {examples} is too many"
            )));
        }
        if len == 0 {
            let json = serde_json::to_vec(header)
                .map_err(|e| TrmError::Input(format!("answer log header: {e}")))?;
            let mut bytes = Vec::with_capacity(LOG_HEADER + json.len());
            bytes.extend_from_slice(LOG_MAGIC);
            bytes.extend_from_slice(&(examples as u64).to_le_bytes());
            bytes.extend_from_slice(&(CANVAS_TOKENS as u32).to_le_bytes());
            bytes.extend_from_slice(&(LOG_RECORD as u32).to_le_bytes());
            bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&json);
            file.write_all(&bytes).map_err(io)?;
            file.sync_data().map_err(io)?;
        } else {
            let (found, start) = read_header(&mut file, &path, len, examples)?;
            let Some(found) = found else {
                return Err(TrmError::dataset(
                    path.display().to_string(),
                    "an answer log of the first format, which does not record the model and settings that wrote it, so it cannot be resumed safely: vote over it alone (--answers without --model) or start a new log",
                ));
            };
            found.check_resume(header, &path)?;
            let end = read_records(&mut file, &path, start, len, examples, &mut each)?;
            // a record cut short by a crash is dropped, to be solved again
            if end != len {
                file.set_len(end).map_err(io)?;
            }
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(AnswerLog {
            path,
            file: BufWriter::new(file),
        })
    }

    /// The header of the log at `path` (which must exist), checked against
    /// a data set of `examples` examples; `None` for a log of the first
    /// format.
    pub fn header(path: impl AsRef<Path>, examples: usize) -> Result<Option<LogHeader>> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(|e| TrmError::io(path, e))?;
        let len = file.metadata().map_err(|e| TrmError::io(path, e))?.len();
        read_header(&mut file, path, len, examples).map(|(header, _)| header)
    }

    /// Reads the log at `path` (which must exist) for a data set of
    /// `examples` examples without changing it, calling `each` with every
    /// complete answer in it, in order; returns its header (`None` for a
    /// log of the first format).
    pub fn replay(
        path: impl AsRef<Path>,
        examples: usize,
        mut each: impl FnMut(Answer) -> Result<()>,
    ) -> Result<Option<LogHeader>> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(|e| TrmError::io(path, e))?;
        let len = file.metadata().map_err(|e| TrmError::io(path, e))?.len();
        let (header, start) = read_header(&mut file, path, len, examples)?;
        read_records(&mut file, path, start, len, examples, &mut each)?;
        Ok(header)
    }

    /// Appends `answers` and makes them durable before returning.
    pub fn append(&mut self, answers: &[Answer]) -> Result<()> {
        let io = |e| TrmError::io(&self.path, e);
        for a in answers {
            if a.tokens.len() != CANVAS_TOKENS {
                return Err(TrmError::Input(format!(
                    "an answer of {} tokens, not {CANVAS_TOKENS}",
                    a.tokens.len()
                )));
            }
            let mut head = [0u8; 16];
            head[0..4].copy_from_slice(&(a.example as u32).to_le_bytes());
            head[4..8].copy_from_slice(&a.puzzle_identifier.to_le_bytes());
            head[8..12].copy_from_slice(&a.q_halt_logit.to_bits().to_le_bytes());
            head[12..16].copy_from_slice(&a.steps.to_le_bytes());
            self.file.write_all(&head).map_err(io)?;
            self.file.write_all(&a.tokens).map_err(io)?;
        }
        self.file.flush().map_err(io)?;
        self.file.get_ref().sync_data().map_err(io)
    }
}

/// Checks a log's header against a data set of `examples` examples; returns
/// the run it records (`None` for the first format) and where its records
/// start. The file is left positioned there.
fn read_header(
    file: &mut File,
    path: &Path,
    len: u64,
    examples: usize,
) -> Result<(Option<LogHeader>, u64)> {
    let what = path.display().to_string();
    let mut fixed = [0u8; LOG_HEADER];
    file.read_exact(&mut fixed)
        .map_err(|_| TrmError::dataset(&what, "not an answer log (too short)"))?;
    let u64_at = |i: usize| u64::from_le_bytes(fixed[i..i + 8].try_into().expect("8"));
    let u32_at = |i: usize| u32::from_le_bytes(fixed[i..i + 4].try_into().expect("4"));
    let first_format = &fixed[..8] == LOG_MAGIC_V1;
    if &fixed[..8] != LOG_MAGIC && !first_format {
        return Err(TrmError::dataset(
            &what,
            "not an answer log (no TRMARCA2 or TRMARCA1 header)",
        ));
    }
    if u32_at(16) as usize != CANVAS_TOKENS || u32_at(20) as usize != LOG_RECORD {
        return Err(TrmError::dataset(&what, "an answer log of another layout"));
    }
    if u64_at(8) != examples as u64 {
        return Err(TrmError::dataset(
            &what,
            format!(
                "the log answers a data set of {} examples, this one has {examples}",
                u64_at(8)
            ),
        ));
    }
    if first_format {
        return Ok((None, LOG_HEADER as u64));
    }
    let json_len = u64_at(24);
    let start = LOG_HEADER as u64 + json_len;
    if json_len > MAX_HEADER_JSON || start > len {
        return Err(TrmError::dataset(
            &what,
            format!(
                "the header claims {json_len} bytes of JSON, the file holds {len} bytes in all"
            ),
        ));
    }
    let mut json = vec![0u8; json_len as usize];
    file.read_exact(&mut json)
        .map_err(|e| TrmError::io(path, e))?;
    let header: LogHeader = serde_json::from_slice(&json).map_err(|e| {
        TrmError::dataset(
            &what,
            format!("the log's header is not a valid run record: {e}"),
        )
    })?;
    Ok((Some(header), start))
}

/// Calls `each` with the complete records of a log from `start` (where its
/// header ends; the file is positioned there); returns where they end (a
/// record cut short is left out).
fn read_records(
    file: &mut File,
    path: &Path,
    start: u64,
    len: u64,
    examples: usize,
    each: &mut dyn FnMut(Answer) -> Result<()>,
) -> Result<u64> {
    let io = |e| TrmError::io(path, e);
    let what = path.display().to_string();
    let records = (len - start) / LOG_RECORD as u64;
    let mut reader = std::io::BufReader::new(&mut *file);
    let mut seen = vec![false; examples];
    let mut record = vec![0u8; LOG_RECORD];
    for r in 0..records {
        reader.read_exact(&mut record).map_err(io)?;
        let u32_at = |i: usize| u32::from_le_bytes(record[i..i + 4].try_into().expect("4"));
        let example = u32_at(0) as usize;
        if example >= examples || std::mem::replace(&mut seen[example], true) {
            return Err(TrmError::dataset(
                &what,
                format!("record {r} answers example {example} twice or out of range"),
            ));
        }
        each(Answer {
            example,
            puzzle_identifier: u32_at(4),
            q_halt_logit: f32::from_bits(u32_at(8)),
            steps: u32_at(12),
            tokens: record[16..].to_vec(),
        })?;
    }
    Ok(start + records * LOG_RECORD as u64)
}
