//! Official checkpoints as the authors' training writes them, read without
//! Python.
//!
//! The authors' training saves `torch.save(model.state_dict())` files named
//! `step_N` beside `all_config.yaml` (whose `arch` section holds the model
//! configuration under the official names); `seq_len`, `vocab_size` and
//! `num_puzzle_identifiers` live in the data set's `dataset.json`.
//!
//! A `step_N` file is a zip archive (PyTorch's format since 1.6, entries
//! stored uncompressed): `ARCHIVE/data.pkl` is a pickle of the state dict in
//! which every tensor names a storage `ARCHIVE/data/KEY` by a persistent id.
//! The pickle is run by the allowlisted machine of [`super::pickle`]; every
//! storage is checked against its zip entry (element type, size) and every
//! tensor against its storage (offset, shape, contiguous strides) before
//! any byte of it is read, and a tensor is widened to f32 only once its
//! shape has been checked against the configuration.
//!
//! ```no_run
//! # fn main() -> trm_wgpu::Result<()> {
//! use trm_wgpu::checkpoint::official;
//!
//! let model = official::convert("step_1000", "all_config.yaml", Some("dataset.json"))?;
//! model.save("model.safetensors")?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use serde_json::{Map, Value as Json};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;
use zip::{CompressionMethod, ZipArchive};

use super::pickle::{self, StorageDtype, TensorRef};
use crate::config::state_dict::{canonical_name, expected_tensors};
use crate::config::{Arch, PosEncodings, TrmConfig};
use crate::error::{Result, TrmError};
use crate::model::{LoadOptions, Tensor, TrmModel};

/// Largest checkpoint file read (far above any TRM: the official Sudoku
/// model is 20 MB).
pub const MAX_CHECKPOINT_BYTES: u64 = 32 << 30;
/// Largest `all_config.yaml` or `dataset.json` read.
pub const MAX_SIDE_FILE_BYTES: u64 = 1 << 20;
/// Deepest YAML nesting accepted.
const MAX_YAML_DEPTH: usize = 64;
/// Most YAML nodes accepted.
const MAX_YAML_NODES: usize = 100_000;

/// Fields of the `arch` section that are the configuration's own.
const ARCH_FIELDS: [&str; 14] = [
    "hidden_size",
    "expansion",
    "num_heads",
    "H_cycles",
    "L_cycles",
    "L_layers",
    "H_layers",
    "halt_max_steps",
    "mlp_t",
    "pos_encodings",
    "puzzle_emb_ndim",
    "puzzle_emb_len",
    "rms_norm_eps",
    "rope_theta",
];
/// Fields that come from the data set (`dataset.json`).
const DATASET_FIELDS: [&str; 3] = ["seq_len", "vocab_size", "num_puzzle_identifiers"];
/// Fields of the `arch` section that only matter to training or to the
/// authors' code layout; ignored without a word.
const TRAINING_FIELDS: [&str; 6] = [
    "loss",
    "forward_dtype",
    "halt_exploration_prob",
    "no_ACT_continue",
    "batch_size",
    "causal",
];

/// The `arch.name` of each model the authors' code bases publish, and its
/// family: TRM's repository keeps HRM as `recursive_reasoning.hrm`, HRM's
/// own repository names it `hrm.hrm_act_v1`.
const ARCH_NAMES: [(&str, Arch); 3] = [
    (
        "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
        Arch::Trm,
    ),
    (
        "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1",
        Arch::Hrm,
    ),
    ("hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1", Arch::Hrm),
];

/// The family `arch.name` names; a section without a name is TRM's (as
/// before names were read). Other models of the authors' repositories
/// (TRM's ablations, the transformer baseline) compute something else, so
/// they are refused rather than run as TRM.
fn arch_of(name: Option<&Json>, what: &str) -> Result<Arch> {
    let Some(name) = name else {
        return Ok(Arch::Trm);
    };
    let known = || {
        ARCH_NAMES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = name
        .as_str()
        .ok_or_else(|| TrmError::Config(format!("{what}: `arch.name` is not a string: {name}")))?;
    ARCH_NAMES
        .iter()
        .find(|(n, _)| *n == text)
        .map(|(_, arch)| *arch)
        .ok_or_else(|| {
            TrmError::Config(format!(
                "{what}: arch `{}` is not a model trm-wgpu runs (it runs {})",
                crate::error::printable(text),
                known()
            ))
        })
}

fn dtype_error(name: &str, dtype: StorageDtype) -> TrmError {
    TrmError::TensorDtype {
        name: name.to_string(),
        dtype: dtype.name().to_string(),
        expected: "float32, bfloat16, float16 or float64".into(),
    }
}

/// One tensor of an official state dict, checked against its storage but
/// not read yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfficialTensor {
    /// Name as stored (with the `_orig_mod.model.` prefix when present).
    pub name: String,
    /// Element type of its storage.
    pub dtype: StorageDtype,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    storage: String,
    /// Offset of the first element in the storage, in elements.
    offset: usize,
    /// Elements (product of the shape).
    numel: usize,
}

/// Where the storages' bytes are.
enum Source {
    /// A `torch.save` zip archive: storage key to entry index.
    Zip {
        archive: ZipArchive<Cursor<Vec<u8>>>,
        entries: HashMap<String, usize>,
        file_len: u64,
    },
    /// Storages given by the caller.
    Parts(HashMap<String, Vec<u8>>),
}

/// An official state dict: every tensor's name, type and shape, checked
/// against the storages, and the storages themselves, read on demand.
pub struct OfficialCheckpoint {
    what: String,
    tensors: Vec<OfficialTensor>,
    source: Source,
    cache: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for OfficialCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfficialCheckpoint")
            .field("what", &self.what)
            .field("tensors", &self.tensors)
            .finish_non_exhaustive()
    }
}

/// Reads a file whole, refusing files beyond `limit` bytes before reading.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| TrmError::io(path, e))?;
    let len = file.metadata().map_err(|e| TrmError::io(path, e))?.len();
    if len > limit {
        return Err(TrmError::TooLarge(format!(
            "{}: {len} bytes, beyond the limit of {limit} bytes for this kind of file",
            path.display()
        )));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TrmError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(TrmError::TooLarge(format!(
            "{}: more than {limit} bytes, beyond the limit for this kind of file",
            path.display()
        )));
    }
    Ok(bytes)
}

fn zip_error(what: &str, e: zip::result::ZipError) -> TrmError {
    TrmError::checkpoint(what, format!("zip archive: {e}"))
}

impl OfficialCheckpoint {
    /// Opens a `torch.save` file (`step_N`) and checks its structure.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_limited(path, MAX_CHECKPOINT_BYTES)?;
        Self::from_bytes(bytes, &path.display().to_string())
    }

    /// As [`OfficialCheckpoint::open`], from the bytes of the file; `what`
    /// names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, what: &str) -> Result<Self> {
        if bytes.first() == Some(&0x80) {
            return Err(TrmError::checkpoint(
                what,
                "this is the legacy (pre-1.6) torch.save format, which is not supported; \
                 re-save it with a recent PyTorch (the default format is a zip archive)",
            ));
        }
        let len = bytes.len() as u64;
        let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
            TrmError::checkpoint(
                what,
                format!("not a torch.save zip archive (PyTorch's format since 1.6): {e}"),
            )
        })?;

        // The archive's records live under one top-level folder.
        let mut pickles = Vec::new();
        let mut names = HashMap::new();
        for index in 0..archive.len() {
            let name = match archive.name_for_index(index) {
                Some(Ok(name)) => name.into_owned(),
                _ => return Err(TrmError::checkpoint(what, "an entry name is not UTF-8")),
            };
            if name.ends_with("data.pkl") {
                let prefix = &name[..name.len() - "data.pkl".len()];
                if prefix.is_empty() || (prefix.ends_with('/') && prefix.matches('/').count() == 1)
                {
                    pickles.push((index, prefix.to_string()));
                }
            }
            names.insert(name, index);
        }
        let (pickle_index, prefix) = match pickles.as_slice() {
            [one] => one.clone(),
            [] => return Err(TrmError::checkpoint(what, "the archive holds no data.pkl")),
            _ => {
                return Err(TrmError::checkpoint(
                    what,
                    "the archive holds more than one data.pkl",
                ));
            }
        };

        if let Some(&index) = names.get(&format!("{prefix}byteorder")) {
            let order = read_entry(&mut archive, index, 16, len, what, "byteorder")?;
            if order.trim_ascii() != b"little" {
                return Err(TrmError::checkpoint(
                    what,
                    format!(
                        "byte order `{}` is not supported (only little-endian)",
                        String::from_utf8_lossy(&order).trim()
                    ),
                ));
            }
        }

        let pickle_bytes = read_entry(
            &mut archive,
            pickle_index,
            pickle::MAX_PICKLE_BYTES as u64,
            len,
            what,
            "data.pkl",
        )?;
        let refs = pickle::parse_state_dict(&pickle_bytes, what)?;

        // Every storage the pickle names must be an entry of the right size.
        let mut entries = HashMap::new();
        let mut sizes = HashMap::new();
        for (_, tensor) in &refs {
            let key = &tensor.storage.key;
            if entries.contains_key(key) {
                continue;
            }
            let entry_name = format!("{prefix}data/{key}");
            let index = *names.get(&entry_name).ok_or_else(|| {
                TrmError::checkpoint(
                    what,
                    format!("storage `{key}` has no entry `{entry_name}` in the archive"),
                )
            })?;
            let file = archive.by_index(index).map_err(|e| zip_error(what, e))?;
            let size = stored_entry_size(&file, len, what, &entry_name)?;
            entries.insert(key.clone(), index);
            sizes.insert(key.clone(), size);
        }
        let tensors = check_tensors(refs, &sizes, what)?;
        Ok(OfficialCheckpoint {
            what: what.to_string(),
            tensors,
            source: Source::Zip {
                archive,
                entries,
                file_len: len,
            },
            cache: HashMap::new(),
        })
    }

    /// A state dict from its pickle (`data.pkl`) and its storages by key
    /// (the `data/KEY` entries of the archive), as when an archive has been
    /// unpacked. Checked as [`OfficialCheckpoint::open`] checks a file.
    pub fn from_parts(
        pickle_bytes: &[u8],
        storages: HashMap<String, Vec<u8>>,
        what: &str,
    ) -> Result<Self> {
        let refs = pickle::parse_state_dict(pickle_bytes, what)?;
        let mut sizes = HashMap::new();
        for (_, tensor) in &refs {
            let key = &tensor.storage.key;
            let bytes = storages.get(key).ok_or_else(|| {
                TrmError::checkpoint(what, format!("storage `{key}` is not given"))
            })?;
            sizes.insert(key.clone(), bytes.len() as u64);
        }
        let tensors = check_tensors(refs, &sizes, what)?;
        Ok(OfficialCheckpoint {
            what: what.to_string(),
            tensors,
            source: Source::Parts(storages),
            cache: HashMap::new(),
        })
    }

    /// The tensors, in the order of the state dict.
    pub fn tensors(&self) -> &[OfficialTensor] {
        &self.tensors
    }

    /// The tensor whose canonical name (prefixes stripped) is `name`.
    pub fn tensor(&self, name: &str) -> Option<&OfficialTensor> {
        let wanted = canonical_name(name);
        self.tensors
            .iter()
            .find(|t| canonical_name(&t.name) == wanted)
    }

    /// The bytes of storage `key`, read (and CRC-checked) once.
    fn storage(&mut self, key: &str) -> Result<&[u8]> {
        if !self.cache.contains_key(key) {
            let bytes = match &mut self.source {
                Source::Parts(parts) => parts.remove(key),
                Source::Zip {
                    archive,
                    entries,
                    file_len,
                } => match entries.get(key) {
                    Some(&index) => Some(read_entry(
                        archive,
                        index,
                        MAX_CHECKPOINT_BYTES,
                        *file_len,
                        &self.what,
                        &format!("data/{key}"),
                    )?),
                    None => None,
                },
            };
            let bytes = bytes.ok_or_else(|| {
                TrmError::checkpoint(&self.what, format!("storage `{key}` is missing"))
            })?;
            self.cache.insert(key.to_string(), bytes);
        }
        self.cache
            .get(key)
            .map(Vec::as_slice)
            .ok_or_else(|| TrmError::checkpoint(&self.what, format!("storage `{key}` is missing")))
    }

    /// Reads tensor `index` of [`OfficialCheckpoint::tensors`], widened to
    /// f32 (float32, bfloat16, float16 and float64 tensors only).
    fn read_f32(&mut self, index: usize) -> Result<Tensor> {
        let tensor = self
            .tensors
            .get(index)
            .cloned()
            .ok_or_else(|| TrmError::checkpoint(&self.what, "no such tensor"))?;
        if !tensor.dtype.is_float() {
            return Err(dtype_error(&tensor.name, tensor.dtype));
        }
        let size = tensor.dtype.size_bytes();
        let what = self.what.clone();
        let storage = self.storage(&tensor.storage)?;
        // check_tensors proved offset + numel <= storage elements.
        let bytes = storage
            .get(tensor.offset * size..(tensor.offset + tensor.numel) * size)
            .ok_or_else(|| {
                TrmError::checkpoint(
                    &what,
                    format!("tensor `{}` lies outside its storage", tensor.name),
                )
            })?;
        let data =
            widen(tensor.dtype, bytes).ok_or_else(|| dtype_error(&tensor.name, tensor.dtype))?;
        Tensor::new(tensor.shape, data)
    }

    /// Every tensor, widened to f32, under its stored name.
    pub fn to_state_dict(&mut self) -> Result<Vec<(String, Tensor)>> {
        (0..self.tensors.len())
            .map(|i| {
                let name = self.tensors[i].name.clone();
                Ok((name, self.read_f32(i)?))
            })
            .collect()
    }

    /// The model these weights make with `config`. Every shape is checked
    /// against the configuration before any tensor is read or widened;
    /// tensors the configuration does not use are never read (they are
    /// refused, or listed as ignored with `options.allow_unexpected`).
    pub fn to_model(&mut self, config: TrmConfig, options: &LoadOptions) -> Result<TrmModel> {
        config.validate()?;
        let expected: HashMap<String, Vec<usize>> = expected_tensors(&config).into_iter().collect();
        let mut seen = HashMap::new();
        for tensor in &self.tensors {
            let canonical = canonical_name(&tensor.name);
            if seen.insert(canonical.to_string(), ()).is_some() {
                return Err(TrmError::DuplicateTensor {
                    name: canonical.to_string(),
                });
            }
            if let Some(shape) = expected.get(canonical) {
                if &tensor.shape != shape {
                    return Err(TrmError::TensorShape {
                        name: canonical.to_string(),
                        expected: shape.clone(),
                        actual: tensor.shape.clone(),
                    });
                }
                if !tensor.dtype.is_float() {
                    return Err(dtype_error(&tensor.name, tensor.dtype));
                }
            }
        }
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for i in 0..self.tensors.len() {
            let name = self.tensors[i].name.clone();
            let tensor = if expected.contains_key(canonical_name(&name)) {
                self.read_f32(i)?
            } else {
                // Reported (or ignored) by from_tensors, never read.
                Tensor {
                    shape: vec![0],
                    data: Vec::new(),
                }
            };
            tensors.push((name, tensor));
        }
        self.cache.clear();
        TrmModel::from_tensors(config, tensors, options)
    }
}

/// Checks a stored (uncompressed) entry and returns its size.
fn stored_entry_size<R: Read>(
    file: &zip::read::ZipFile<'_, R>,
    file_len: u64,
    what: &str,
    label: &str,
) -> Result<u64> {
    if file.compression() != CompressionMethod::Stored {
        return Err(TrmError::checkpoint(
            what,
            format!(
                "entry `{label}` is compressed ({}); torch.save stores entries uncompressed",
                file.compression()
            ),
        ));
    }
    if file.encrypted() {
        return Err(TrmError::checkpoint(
            what,
            format!("entry `{label}` is encrypted"),
        ));
    }
    let size = file.size();
    let inside = file
        .data_start()
        .and_then(|start| start.checked_add(file.compressed_size()))
        .is_some_and(|end| end <= file_len);
    if file.compressed_size() != size || !inside {
        return Err(TrmError::checkpoint(
            what,
            format!("entry `{label}` claims {size} bytes beyond the end of the file"),
        ));
    }
    Ok(size)
}

/// Reads a stored entry whole (checking its CRC), at most `limit` bytes.
fn read_entry(
    archive: &mut ZipArchive<Cursor<Vec<u8>>>,
    index: usize,
    limit: u64,
    file_len: u64,
    what: &str,
    label: &str,
) -> Result<Vec<u8>> {
    let file = archive.by_index(index).map_err(|e| zip_error(what, e))?;
    let size = stored_entry_size(&file, file_len, what, label)?;
    if size > limit {
        return Err(TrmError::TooLarge(format!(
            "{what}: entry `{label}` holds {size} bytes, beyond the limit of {limit}"
        )));
    }
    // size <= file_len, checked above, so this allocation is bounded by the
    // file itself.
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(size + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TrmError::checkpoint(what, format!("entry `{label}`: {e}")))?;
    if bytes.len() as u64 != size {
        return Err(TrmError::checkpoint(
            what,
            format!(
                "entry `{label}` holds {} bytes, not the {size} it claims",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// Checks every tensor against its storage: the storage's size in bytes
/// must be its element count times the element size, one key must always
/// mean the same storage, and each tensor must be a contiguous view inside
/// its storage.
fn check_tensors(
    refs: Vec<(String, TensorRef)>,
    sizes: &HashMap<String, u64>,
    what: &str,
) -> Result<Vec<OfficialTensor>> {
    let bad = |reason: String| TrmError::checkpoint(what, reason);
    let mut storages: HashMap<&str, (StorageDtype, u64)> = HashMap::new();
    for (_, tensor) in &refs {
        let s = &tensor.storage;
        if let Some(&(dtype, numel)) = storages.get(s.key.as_str()) {
            if (dtype, numel) != (s.dtype, s.numel) {
                return Err(bad(format!(
                    "storage `{}` is named both as {} x {numel} and as {} x {}",
                    s.key,
                    dtype.name(),
                    s.dtype.name(),
                    s.numel
                )));
            }
            continue;
        }
        let size = sizes
            .get(&s.key)
            .copied()
            .ok_or_else(|| bad(format!("storage `{}` is missing", s.key)))?;
        let claimed = s.numel.checked_mul(s.dtype.size_bytes() as u64);
        if claimed != Some(size) {
            return Err(bad(format!(
                "storage `{}` claims {} {} elements, but its entry holds {size} bytes",
                s.key,
                s.numel,
                s.dtype.name()
            )));
        }
        storages.insert(&s.key, (s.dtype, s.numel));
    }

    let mut out = Vec::with_capacity(refs.len());
    for (name, tensor) in &refs {
        let storage_numel = tensor.storage.numel;
        let shape = tensor
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<usize>, _>>()
            .map_err(|_| bad(format!("tensor `{name}` has shape {:?}", tensor.shape)))?;
        let numel = tensor
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                bad(format!(
                    "tensor `{name}` has shape {:?}, whose element count overflows",
                    tensor.shape
                ))
            })?;
        if numel > 0 {
            let mut contiguous = 1u64;
            for (&dim, &stride) in tensor.shape.iter().zip(&tensor.stride).rev() {
                if dim != 1 && stride != contiguous {
                    return Err(bad(format!(
                        "tensor `{name}` of shape {:?} has strides {:?}; only contiguous tensors are supported",
                        tensor.shape, tensor.stride
                    )));
                }
                contiguous = contiguous.saturating_mul(dim);
            }
        }
        let end = tensor.offset.checked_add(numel);
        if end.is_none_or(|end| end > storage_numel) {
            return Err(bad(format!(
                "tensor `{name}` of shape {:?} at offset {} lies outside its storage `{}` of {storage_numel} elements",
                tensor.shape, tensor.offset, tensor.storage.key
            )));
        }
        // Both fit in the storage, whose bytes are in memory: no overflow.
        let offset = usize::try_from(tensor.offset)
            .map_err(|_| bad(format!("tensor `{name}` has offset {}", tensor.offset)))?;
        let numel = usize::try_from(numel)
            .map_err(|_| bad(format!("tensor `{name}` has {numel} elements")))?;
        out.push(OfficialTensor {
            name: name.clone(),
            dtype: tensor.storage.dtype,
            shape,
            storage: tensor.storage.key.clone(),
            offset,
            numel,
        });
    }
    Ok(out)
}

/// Widens little-endian floats to f32; `None` for non-float types.
fn widen(dtype: StorageDtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        StorageDtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        StorageDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        StorageDtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        StorageDtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        _ => return None,
    })
}

/// Reads every tensor of an official `step_N` file, widened to f32, under
/// its stored name (with the `_orig_mod.model.` prefix when present).
pub fn load_official_state_dict(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    OfficialCheckpoint::open(path)?.to_state_dict()
}

/// A YAML document as JSON, built from the parser's events with bounded
/// depth and node count; aliases (`*name`) are refused, so a document cannot
/// expand beyond its size.
fn yaml_to_json(text: &str, what: &str) -> Result<Json> {
    enum Frame {
        Seq(Vec<Json>),
        Map(Map<String, Json>, Option<String>),
    }
    let bad = |reason: String| TrmError::Config(format!("{what}: {reason}"));
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut documents: Vec<Json> = Vec::new();
    let mut nodes = 0usize;
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| bad(format!("not valid YAML: {e}")))?;
        let value = match event {
            Event::StreamEnd => break,
            Event::Alias(_) => {
                return Err(bad(format!(
                    "line {}: YAML aliases are not supported",
                    mark.line()
                )));
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= MAX_YAML_DEPTH {
                    return Err(bad(format!("nests deeper than {MAX_YAML_DEPTH} levels")));
                }
                stack.push(match event {
                    Event::SequenceStart(..) => Frame::Seq(Vec::new()),
                    _ => Frame::Map(Map::new(), None),
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(items)) => Json::Array(items),
                Some(Frame::Map(map, None)) => Json::Object(map),
                _ => return Err(bad("unbalanced YAML".into())),
            },
            Event::Scalar(text, style, _, _) => {
                if style == TScalarStyle::Plain {
                    match yaml_rust2::Yaml::from_str(&text) {
                        yaml_rust2::Yaml::Integer(i) => Json::from(i),
                        yaml_rust2::Yaml::Real(r) => r
                            .parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                            .map_or(Json::String(r), Json::Number),
                        yaml_rust2::Yaml::Boolean(b) => Json::Bool(b),
                        yaml_rust2::Yaml::Null => Json::Null,
                        _ => Json::String(text),
                    }
                } else {
                    Json::String(text)
                }
            }
            _ => continue,
        };
        nodes += 1;
        if nodes > MAX_YAML_NODES {
            return Err(bad(format!("holds more than {MAX_YAML_NODES} values")));
        }
        match stack.last_mut() {
            None => documents.push(value),
            Some(Frame::Seq(items)) => items.push(value),
            Some(Frame::Map(map, key)) => match key.take() {
                None => {
                    let k = match value {
                        Json::String(s) => s,
                        Json::Number(n) => n.to_string(),
                        Json::Bool(b) => b.to_string(),
                        Json::Null => "null".into(),
                        _ => return Err(bad("a mapping key is not a scalar".into())),
                    };
                    *key = Some(k);
                }
                Some(k) => {
                    if map.contains_key(&k) {
                        return Err(bad(format!(
                            "key `{}` is given twice",
                            crate::error::printable(&k)
                        )));
                    }
                    map.insert(k, value);
                }
            },
        }
    }
    match documents.len() {
        0 => Ok(Json::Null),
        1 => Ok(documents.pop().unwrap_or(Json::Null)),
        n => Err(bad(format!("holds {n} YAML documents, not one"))),
    }
}

/// The `arch` section of an `all_config.yaml`, as a JSON object.
pub fn parse_arch(yaml: &str, what: &str) -> Result<Map<String, Json>> {
    let doc = yaml_to_json(yaml, what)?;
    match doc {
        Json::Object(mut top) => match top.remove("arch") {
            Some(Json::Object(arch)) => Ok(arch),
            Some(_) => Err(TrmError::Config(format!("{what}: `arch` is not a mapping"))),
            None => Err(TrmError::Config(format!(
                "{what}: no `arch` section (is this the all_config.yaml of the authors' training?)"
            ))),
        },
        _ => Err(TrmError::Config(format!(
            "{what}: not a YAML mapping (is this the all_config.yaml of the authors' training?)"
        ))),
    }
}

/// `seq_len`, `vocab_size` and `num_puzzle_identifiers` from a data set's
/// `dataset.json` (other fields are ignored; absent ones stay `None`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatasetInfo {
    /// Tokens per puzzle.
    pub seq_len: Option<usize>,
    /// Token ids.
    pub vocab_size: Option<usize>,
    /// Rows of the puzzle-embedding table.
    pub num_puzzle_identifiers: Option<usize>,
}

impl DatasetInfo {
    /// Parses a `dataset.json`.
    pub fn from_json(json: &str, what: &str) -> Result<Self> {
        let doc: Json = serde_json::from_str(json)
            .map_err(|e| TrmError::Config(format!("{what}: not valid JSON: {e}")))?;
        let Json::Object(map) = doc else {
            return Err(TrmError::Config(format!("{what}: not a JSON object")));
        };
        let field = |name: &str| -> Result<Option<usize>> {
            match map.get(name) {
                None | Some(Json::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        TrmError::Config(format!(
                            "{what}: `{name}` must be a non-negative integer, got {v}"
                        ))
                    }),
            }
        };
        Ok(DatasetInfo {
            seq_len: field("seq_len")?,
            vocab_size: field("vocab_size")?,
            num_puzzle_identifiers: field("num_puzzle_identifiers")?,
        })
    }
}

/// How [`convert_with`] fills in and checks the configuration.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ConvertOptions {
    /// `seq_len`, overriding `dataset.json` and the shapes.
    pub seq_len: Option<usize>,
    /// `vocab_size`, overriding `dataset.json` and the shapes.
    pub vocab_size: Option<usize>,
    /// `num_puzzle_identifiers`, overriding `dataset.json` and the shapes.
    pub num_puzzle_identifiers: Option<usize>,
    /// How strictly the tensors are taken (unexpected tensors).
    pub load: LoadOptions,
}

impl ConvertOptions {
    /// Sets `seq_len`.
    pub fn seq_len(mut self, value: usize) -> Self {
        self.seq_len = Some(value);
        self
    }

    /// Sets `vocab_size`.
    pub fn vocab_size(mut self, value: usize) -> Self {
        self.vocab_size = Some(value);
        self
    }

    /// Sets `num_puzzle_identifiers`.
    pub fn num_puzzle_identifiers(mut self, value: usize) -> Self {
        self.num_puzzle_identifiers = Some(value);
        self
    }

    /// Sets the load options.
    pub fn load(mut self, load: LoadOptions) -> Self {
        self.load = load;
        self
    }
}

/// A converted checkpoint and what the conversion decided.
#[derive(Debug)]
#[non_exhaustive]
pub struct Conversion {
    /// The model.
    pub model: TrmModel,
    /// Configuration fields read from the tensor shapes, with how.
    pub inferred: Vec<String>,
    /// Fields of the `arch` section that trm-wgpu does not know and ignored
    /// (the authors' training-only fields are ignored silently).
    pub ignored_fields: Vec<String>,
}

/// Converts an official checkpoint: `step_N`, its `all_config.yaml`, and
/// optionally the data set's `dataset.json` (without it, `vocab_size`,
/// `num_puzzle_identifiers` and, where the shapes determine it, `seq_len`
/// are read from the tensor shapes).
pub fn convert(
    step: impl AsRef<Path>,
    all_config_yaml: impl AsRef<Path>,
    dataset_json: Option<impl AsRef<Path>>,
) -> Result<TrmModel> {
    Ok(convert_with(
        step,
        all_config_yaml,
        dataset_json,
        &ConvertOptions::default(),
    )?
    .model)
}

/// [`convert`] with options, returning what was inferred and ignored too.
pub fn convert_with(
    step: impl AsRef<Path>,
    all_config_yaml: impl AsRef<Path>,
    dataset_json: Option<impl AsRef<Path>>,
    options: &ConvertOptions,
) -> Result<Conversion> {
    let yaml_path = all_config_yaml.as_ref();
    let yaml = read_text(yaml_path)?;
    let dataset = match dataset_json {
        Some(path) => {
            let path = path.as_ref();
            Some((read_text(path)?, path.display().to_string()))
        }
        None => None,
    };
    let mut checkpoint = OfficialCheckpoint::open(step)?;
    convert_checkpoint(
        &mut checkpoint,
        &yaml,
        &yaml_path.display().to_string(),
        dataset
            .as_ref()
            .map(|(text, what)| (text.as_str(), what.as_str())),
        options,
    )
}

/// [`convert_with`] from the files' contents: the checkpoint's bytes, the
/// YAML text and optionally the `dataset.json` text.
pub fn convert_bytes(
    step: Vec<u8>,
    all_config_yaml: &str,
    dataset_json: Option<&str>,
    options: &ConvertOptions,
) -> Result<Conversion> {
    let mut checkpoint = OfficialCheckpoint::from_bytes(step, "step")?;
    convert_checkpoint(
        &mut checkpoint,
        all_config_yaml,
        "all_config.yaml",
        dataset_json.map(|text| (text, "dataset.json")),
        options,
    )
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = read_limited(path, MAX_SIDE_FILE_BYTES)?;
    String::from_utf8(bytes)
        .map_err(|_| TrmError::Config(format!("{}: not UTF-8 text", path.display())))
}

/// Converts an opened checkpoint with the text of its `all_config.yaml`
/// and of `dataset.json` (`(text, name)`), if any.
pub fn convert_checkpoint(
    checkpoint: &mut OfficialCheckpoint,
    all_config_yaml: &str,
    yaml_name: &str,
    dataset_json: Option<(&str, &str)>,
    options: &ConvertOptions,
) -> Result<Conversion> {
    let arch = parse_arch(all_config_yaml, yaml_name)?;
    let family = arch_of(arch.get("name"), yaml_name)?;
    let mut config = Map::new();
    config.insert("arch".into(), Json::from(family.as_str()));
    let mut ignored_fields = Vec::new();
    for (key, value) in arch {
        if key == "name" {
            continue;
        }
        if ARCH_FIELDS.contains(&key.as_str()) || DATASET_FIELDS.contains(&key.as_str()) {
            config.insert(key, value);
        } else if !TRAINING_FIELDS.contains(&key.as_str()) {
            ignored_fields.push(key);
        }
    }
    let dataset = match dataset_json {
        Some((text, what)) => DatasetInfo::from_json(text, what)?,
        None => DatasetInfo::default(),
    };
    for (name, explicit, from_dataset) in [
        ("seq_len", options.seq_len, dataset.seq_len),
        ("vocab_size", options.vocab_size, dataset.vocab_size),
        (
            "num_puzzle_identifiers",
            options.num_puzzle_identifiers,
            dataset.num_puzzle_identifiers,
        ),
    ] {
        if let Some(value) = explicit.or(from_dataset) {
            config.insert(name.to_string(), Json::from(value));
        }
    }
    let inferred = infer_from_shapes(&mut config, checkpoint)?;
    let config = TrmConfig::from_json(&Json::Object(config).to_string())?;
    let model = checkpoint.to_model(config, &options.load)?;
    Ok(Conversion {
        model,
        inferred,
        ignored_fields,
    })
}

/// Fills in the data-set fields the configuration lacks from the tensor
/// shapes, or says which cannot be inferred and how to supply them.
fn infer_from_shapes(
    config: &mut Map<String, Json>,
    checkpoint: &OfficialCheckpoint,
) -> Result<Vec<String>> {
    let mut inferred = Vec::new();
    let mut missing = Vec::new();
    let rows = |name: &str| {
        checkpoint
            .tensor(name)
            .and_then(|t| t.shape.first().copied())
    };
    let has = |config: &Map<String, Json>, key: &str| config.contains_key(key);

    if !has(config, "vocab_size") {
        let name = "inner.embed_tokens.embedding_weight";
        match rows(name) {
            Some(v) => {
                config.insert("vocab_size".into(), Json::from(v));
                inferred.push(format!("vocab_size = {v} (rows of {name})"));
            }
            None => missing.push(format!("vocab_size (the checkpoint lacks {name})")),
        }
    }

    // The architecture with placeholders tells the puzzle positions P.
    let mut probe = config.clone();
    for key in DATASET_FIELDS {
        probe.entry(key).or_insert(Json::from(1));
    }
    let probe = TrmConfig::from_json(&Json::Object(probe).to_string())?;

    if !has(config, "num_puzzle_identifiers") {
        if probe.puzzle_emb_ndim == 0 {
            config.insert("num_puzzle_identifiers".into(), Json::from(1));
            inferred
                .push("num_puzzle_identifiers = 1 (the model has no puzzle embedding)".to_string());
        } else {
            let name = "inner.puzzle_emb.weights";
            match rows(name) {
                Some(v) => {
                    config.insert("num_puzzle_identifiers".into(), Json::from(v));
                    inferred.push(format!("num_puzzle_identifiers = {v} (rows of {name})"));
                }
                None => missing.push(format!(
                    "num_puzzle_identifiers (the checkpoint lacks {name})"
                )),
            }
        }
    }

    if !has(config, "seq_len") {
        let p = probe.puzzle_emb_positions();
        let token_mixer = "inner.L_level.layers.0.mlp_t.gate_up_proj.weight";
        let positions = "inner.embed_pos.embedding_weight";
        let source = if probe.mlp_t {
            checkpoint
                .tensor(token_mixer)
                .and_then(|t| t.shape.get(1).copied())
                .map(|s| (s, format!("columns of {token_mixer}")))
        } else if probe.pos_encodings == PosEncodings::Learned {
            rows(positions).map(|s| (s, format!("rows of {positions}")))
        } else {
            None
        };
        match source {
            Some((s, how)) if s > p => {
                config.insert("seq_len".into(), Json::from(s - p));
                inferred.push(format!(
                    "seq_len = {} ({how}, {s}, minus {p} puzzle positions)",
                    s - p
                ));
            }
            Some((s, how)) => {
                return Err(TrmError::Config(format!(
                    "cannot infer seq_len: the {how} is {s}, not more than the {p} puzzle positions"
                )));
            }
            None if probe.mlp_t => {
                missing.push(format!("seq_len (the checkpoint lacks {token_mixer})"))
            }
            None if probe.pos_encodings == PosEncodings::Learned => {
                missing.push(format!("seq_len (the checkpoint lacks {positions})"))
            }
            None => missing.push(format!(
                "seq_len (no tensor of an attention model with pos_encodings `{}` depends on it)",
                probe.pos_encodings.as_str()
            )),
        }
    }

    if !missing.is_empty() {
        return Err(TrmError::Config(format!(
            "cannot infer {} from the checkpoint; give the data set's dataset.json (`trm convert --dataset`), or the values (`--seq-len`, `--vocab-size`, `--num-puzzle-identifiers`)",
            missing.join(", ")
        )));
    }
    Ok(inferred)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_arch_section_becomes_json() {
        let yaml = "arch:\n  hidden_size: 64\n  expansion: 4\n  rms: 1.5e-5\n  mlp_t: true\n  pos_encodings: none\n  loss:\n    name: x\nlr: 1\n";
        let arch = parse_arch(yaml, "t").unwrap();
        assert_eq!(arch["hidden_size"], Json::from(64));
        assert_eq!(arch["rms"], Json::from(1.5e-5));
        assert_eq!(arch["mlp_t"], Json::Bool(true));
        assert_eq!(arch["pos_encodings"], Json::from("none"));
        assert!(arch["loss"].is_object());
    }

    #[test]
    fn yaml_aliases_and_depth_are_refused() {
        let bomb = "a: &a [x, x]\nb: &b [*a, *a]\narch: {}\n";
        assert!(matches!(parse_arch(bomb, "t"), Err(TrmError::Config(m)) if m.contains("alias")));
        let deep = format!("arch: {}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_arch(&deep, "t").is_err());
        assert!(parse_arch("arch: [1]", "t").is_err());
        assert!(parse_arch("- 1", "t").is_err());
        assert!(parse_arch("arch: {a: 1, a: 2}", "t").is_err());
    }

    #[test]
    fn widening_is_exact() {
        let bf = half::bf16::from_f32(1.5).to_le_bytes();
        assert_eq!(widen(StorageDtype::BF16, &bf), Some(vec![1.5]));
        assert_eq!(widen(StorageDtype::I64, &[0; 8]), None);
    }
}
