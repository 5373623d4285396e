//! The project's checkpoint format: safetensors with the configuration as
//! JSON under the header metadata key `config`, tensors under their official
//! names (with or without the `_orig_mod.` / `model.` prefixes). The
//! `impl TrmModel` here is where a model meets a file: `load`, `load_with`,
//! `from_safetensors_bytes`, `to_safetensors_bytes` and `save`.
//!
//! Element types: F32, F16 and BF16 are kept as stored; F64 is narrowed to
//! f32; I8 is the int8 precision, with its per-row scales in a tensor named
//! after it with `_scale` appended (`...gate_up_proj.weight_scale`, F32,
//! shape `[rows]`), as compressed-tensors names them. The three vectors
//! (`H_init`, `L_init`, `q_head.bias`) are f32 at every precision.
//!
//! A file is memory-mapped, not read: a matrix borrows its bytes from the
//! mapping, so a 2.5 GB puzzle-embedding table costs only the rows a solve
//! reads. The table's values are therefore checked as its rows are read
//! ([`TrmModel::puzzle_rows`]); every other tensor is checked at load.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use safetensors::tensor::{Dtype, TensorView};

use crate::config::{TrmConfig, state_dict};
use crate::error::{Result, TrmError};
use crate::model::{LoadOptions, TrmModel};
use crate::tensor_file;
use crate::weights::{Matrix, Precision};

/// Header metadata key that holds the configuration JSON.
pub const CONFIG_METADATA_KEY: &str = "config";

/// Suffix of the tensor that holds an int8 matrix's per-row scales.
pub const SCALE_SUFFIX: &str = "_scale";

/// Header metadata key naming the network's precision, written for people
/// and other tools to read; loading goes by the tensors' dtypes.
const PRECISION_METADATA_KEY: &str = "precision";

impl TrmModel {
    /// Loads a model from a safetensors checkpoint with its configuration in
    /// the header metadata.
    ///
    /// ```
    /// use trm_wgpu::TrmModel;
    ///
    /// # fn main() -> trm_wgpu::Result<()> {
    /// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/sudoku-easy/model.safetensors");
    /// let model = TrmModel::load(path)?;
    /// assert_eq!(model.config().seq_len, 81);
    /// println!("{} parameters at {:?}", model.parameter_count(), model.precision());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A file that is not a model is refused with a [`TrmError`] saying
    /// why, never a panic.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(path, &LoadOptions::default(), None)
    }

    /// Loads a model with options; `config` overrides (or supplies) the
    /// configuration of the file. The file is memory-mapped (see the module
    /// documentation): it must not be truncated while the model lives.
    pub fn load_with(
        path: impl AsRef<Path>,
        options: &LoadOptions,
        config: Option<TrmConfig>,
    ) -> Result<Self> {
        let path = path.as_ref();
        tensor_file::refuse_directory(
            path,
            "a model file: a .safetensors checkpoint (`trm convert` makes one from an official step_N file)",
        )?;
        let map = Arc::new(tensor_file::map_file(path)?);
        load(
            &map,
            Some(&map),
            &path.display().to_string(),
            options,
            config,
        )
    }

    /// Loads a model from a safetensors buffer; `what` names it in errors.
    /// The tensors are copied out of `bytes`.
    pub fn from_safetensors_bytes(
        bytes: &[u8],
        what: &str,
        options: &LoadOptions,
        config: Option<TrmConfig>,
    ) -> Result<Self> {
        load(bytes, None, what, options, config)
    }

    /// The model as a safetensors buffer in the project's format: every
    /// matrix at its stored precision (int8 with its `_scale` tensor),
    /// canonical names, configuration in the metadata.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        self.with_views(|views, metadata| {
            safetensors::serialize(views, Some(metadata))
                .map_err(|e| TrmError::safetensors("model", e))
        })
    }

    /// Writes the model to `path` in the project's format, streaming the
    /// tensors from where they are (a mapped table is not copied whole).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.with_views(|views, metadata| {
            safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| match e {
                safetensors::SafeTensorError::IoError(io) => TrmError::io(path, io),
                other => TrmError::safetensors(path.display().to_string(), other),
            })
        })
    }

    /// Calls `f` with the tensors to write (borrowing the stored bytes)
    /// and the metadata.
    fn with_views<R>(
        &self,
        f: impl FnOnce(Vec<(String, TensorView<'_>)>, HashMap<String, String>) -> Result<R>,
    ) -> Result<R> {
        let matrices = self.named_matrices();
        // int8 scales as bytes, owned here for the views to borrow
        let scales: Vec<(String, usize, Vec<u8>)> = matrices
            .iter()
            .filter(|(_, _, m)| m.precision() == Precision::Int8)
            .map(|(name, _, m)| {
                (
                    format!("{name}{SCALE_SUFFIX}"),
                    m.rows(),
                    bytemuck::cast_slice(m.scales()).to_vec(),
                )
            })
            .collect();
        let mut views = Vec::with_capacity(matrices.len() + scales.len());
        for (name, shape, m) in &matrices {
            let view = TensorView::new(dtype_of(m.precision()), shape.clone(), m.raw())
                .map_err(|e| TrmError::safetensors(name.clone(), e))?;
            views.push((name.clone(), view));
        }
        for (name, rows, bytes) in &scales {
            let view = TensorView::new(Dtype::F32, vec![*rows], bytes)
                .map_err(|e| TrmError::safetensors(name.clone(), e))?;
            views.push((name.clone(), view));
        }
        let metadata = HashMap::from([
            (CONFIG_METADATA_KEY.to_string(), self.config().to_json()),
            (
                PRECISION_METADATA_KEY.to_string(),
                self.precision().to_string(),
            ),
        ]);
        f(views, metadata)
    }
}

fn dtype_of(precision: Precision) -> Dtype {
    match precision {
        Precision::F32 => Dtype::F32,
        Precision::F16 => Dtype::F16,
        Precision::Bf16 => Dtype::BF16,
        Precision::Int8 => Dtype::I8,
    }
}

/// Reads the model in `bytes`; with `map` (the mapping `bytes` is), the
/// matrices borrow from it instead of copying.
fn load(
    bytes: &[u8],
    map: Option<&Arc<memmap2::Mmap>>,
    what: &str,
    options: &LoadOptions,
    config: Option<TrmConfig>,
) -> Result<TrmModel> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(TrmError::safetensors(
            what,
            "this is a zip archive, as torch.save writes; convert an official checkpoint first with `trm convert`",
        ));
    }
    let file = tensor_file::parse(bytes, what)?;
    let config = match config {
        Some(config) => config,
        None => {
            let meta = tensor_file::metadata(bytes, what)?;
            let json = meta.get(CONFIG_METADATA_KEY).ok_or_else(|| {
                TrmError::Config(format!(
                    "{what}: the header metadata has no `{CONFIG_METADATA_KEY}` key; pass a configuration"
                ))
            })?;
            TrmConfig::from_json(json)?
        }
    };
    config.validate()?;
    // Check every name and shape before reading any values, so that a file
    // with a wrong (or far too large) tensor is refused without touching it.
    let expected: HashMap<String, Vec<usize>> =
        state_dict::expected_tensors(&config).into_iter().collect();
    let views: HashMap<&str, TensorView<'_>> = file.iter().collect();
    for (name, view) in &views {
        if !super::pickle::plain_name(name) {
            return Err(TrmError::safetensors(
                what,
                format!(
                    "tensor name `{}` is not a plain name (empty, too long, or with control characters)",
                    crate::error::printable(name)
                ),
            ));
        }
        let canonical = state_dict::canonical_name(name);
        if let Some(shape) = expected.get(canonical)
            && view.shape() != shape.as_slice()
        {
            return Err(TrmError::TensorShape {
                name: canonical.to_string(),
                expected: shape.clone(),
                actual: view.shape().to_vec(),
            });
        }
    }
    let mut matrices = Vec::new();
    for (name, view) in &views {
        let canonical = state_dict::canonical_name(name);
        if let Some(base) = name.strip_suffix(SCALE_SUFFIX)
            && expected.contains_key(state_dict::canonical_name(base))
        {
            // read with its matrix
            if views.get(base).is_none_or(|v| v.dtype() != Dtype::I8) {
                return Err(TrmError::TensorDtype {
                    name: name.to_string(),
                    dtype: format!(
                        "a scale of the {:?} tensor `{base}`",
                        views.get(base).map(|v| v.dtype())
                    ),
                    expected: "scales only beside an I8 tensor".into(),
                });
            }
            continue;
        }
        let Some(shape) = expected.get(canonical) else {
            matrices.push((name.to_string(), None)); // reported (or ignored)
            continue;
        };
        let matrix = read_matrix(name, canonical, shape, view, &views, bytes, map)?;
        // the table's float rows are checked as they are read
        let checked_now =
            !state_dict::is_puzzle_table(canonical) || matrix.precision() == Precision::Int8;
        if checked_now && let Some(index) = matrix.first_non_finite() {
            return Err(TrmError::NonFinite {
                name: canonical.to_string(),
                index,
            });
        }
        matrices.push((name.to_string(), Some(matrix)));
    }
    TrmModel::from_matrices(config, matrices, options)
}

/// One tensor as a matrix of its shape's `[rows, rest]`.
fn read_matrix(
    name: &str,
    canonical: &str,
    shape: &[usize],
    view: &TensorView<'_>,
    views: &HashMap<&str, TensorView<'_>>,
    bytes: &[u8],
    map: Option<&Arc<memmap2::Mmap>>,
) -> Result<Matrix> {
    let (rows, cols) = match shape {
        [] => (1, 1),
        [n] => (1, *n),
        [rows, rest @ ..] => (*rows, rest.iter().product()),
    };
    let precision = match view.dtype() {
        Dtype::F32 => Precision::F32,
        Dtype::F16 => Precision::F16,
        Dtype::BF16 => Precision::Bf16,
        Dtype::I8 if !state_dict::is_vector(canonical) => Precision::Int8,
        Dtype::F64 => {
            let data = tensor_file::to_f32(name, view)?;
            return Matrix::from_f32(rows, cols, &data);
        }
        other => {
            return Err(TrmError::TensorDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
                expected: if state_dict::is_vector(canonical) {
                    "F32, BF16, F16 or F64".into()
                } else {
                    "F32, BF16, F16, F64, or I8 with a `_scale` tensor".into()
                },
            });
        }
    };
    let scales = if precision == Precision::Int8 {
        let scale_name = format!("{name}{SCALE_SUFFIX}");
        let scale = views
            .get(scale_name.as_str())
            .ok_or_else(|| TrmError::MissingTensor {
                name: scale_name.clone(),
                expected: vec![rows],
            })?;
        if scale.shape() != [rows] {
            return Err(TrmError::TensorShape {
                name: scale_name,
                expected: vec![rows],
                actual: scale.shape().to_vec(),
            });
        }
        if scale.dtype() != Dtype::F32 {
            return Err(TrmError::TensorDtype {
                name: scale_name,
                dtype: format!("{:?}", scale.dtype()),
                expected: "F32".into(),
            });
        }
        tensor_file::to_f32(&scale_name, scale)?
    } else {
        Vec::new()
    };
    let data = view.data();
    match map {
        Some(map) => {
            // the view's bytes lie inside `bytes`, which is the mapping
            let start = data.as_ptr() as usize - bytes.as_ptr() as usize;
            Matrix::mapped(
                rows,
                cols,
                precision,
                Arc::clone(map),
                start,
                data.len(),
                scales,
            )
        }
        None => Matrix::from_raw(rows, cols, precision, data.to_vec(), scales),
    }
}
