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

mod convert;
#[cfg(test)]
mod tests;

pub use convert::*;

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
