//! A TRM model in memory: its configuration and its weights under the
//! canonical (unprefixed) state-dict names of `shared/TRM.md`, each matrix at
//! its stored [`Precision`] (see [`crate::weights`]).
//!
//! Weights come from a checkpoint, from tensors an application brings
//! ([`TrmModel::from_tensors`]) or from a seeded random initialisation
//! ([`TrmModel::random`], for tests and benchmarks). This layer knows no
//! file format: reading and writing files is the checkpoint layer's
//! ([`crate::checkpoint::model_file`] defines [`TrmModel::load`],
//! [`TrmModel::load_with`], [`TrmModel::from_safetensors_bytes`],
//! [`TrmModel::to_safetensors_bytes`] and [`TrmModel::save`]), and the
//! maths the engines share is in [`maths`].

pub mod maths;

use std::collections::BTreeMap;

use crate::config::state_dict::{is_puzzle_table, is_vector, layer_prefixes};
use crate::config::{PosEncodings, TrmConfig};
use crate::error::{Result, TrmError};
use crate::rng::SplitMix64;
use crate::weights::{Matrix, Precision};

/// A dense f32 tensor: shape and row-major data.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major elements; `data.len()` equals the product of `shape`.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from its shape and data; fails when the sizes disagree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = element_count(&shape)
            .ok_or_else(|| TrmError::Input(format!("shape {shape:?} overflows")))?;
        if n != data.len() {
            return Err(TrmError::Input(format!(
                "shape {shape:?} needs {n} elements, got {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }
}

/// Product of the dimensions, `None` on overflow.
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Weights of the token mixer of one block.
#[derive(Clone, Debug)]
pub enum TokenMixer {
    /// MLP-mixer (`mlp_t = true`): a SwiGLU over the sequence axis.
    Mlp {
        /// `mlp_t.gate_up_proj.weight`, `[2 * inter(S), S]`.
        gate_up: Matrix,
        /// `mlp_t.down_proj.weight`, `[S, inter(S)]`.
        down: Matrix,
    },
    /// Self-attention (`mlp_t = false`).
    Attention {
        /// `self_attn.qkv_proj.weight`, `[3D, D]`.
        qkv: Matrix,
        /// `self_attn.o_proj.weight`, `[D, D]`.
        o_proj: Matrix,
    },
}

/// Weights of one block: token mixer, then channel SwiGLU.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// Token mixing (MLP over S, or attention).
    pub mixer: TokenMixer,
    /// `mlp.gate_up_proj.weight`, `[2 * inter(D), D]`.
    pub gate_up: Matrix,
    /// `mlp.down_proj.weight`, `[D, inter(D)]`.
    pub down: Matrix,
}

/// All weights of a TRM in the official `[out, in]` layouts: matrices at
/// their stored precision, the three vectors as f32.
#[derive(Clone, Debug)]
pub struct TrmWeights {
    /// `inner.embed_tokens.embedding_weight`, `[vocab, D]`.
    pub embed_tokens: Matrix,
    /// `inner.puzzle_emb.weights`, `[num_puzzle_identifiers, puzzle_emb_ndim]`:
    /// read from the checkpoint's mapping when loaded from a file, one row
    /// per puzzle solved ([`TrmModel::puzzle_rows`]).
    pub puzzle_emb: Option<Matrix>,
    /// `inner.embed_pos.embedding_weight`, `[S, D]` (learned positions only).
    pub embed_pos: Option<Matrix>,
    /// `inner.H_init`, `[D]`: initial answer state y.
    pub h_init: Vec<f32>,
    /// `inner.L_init`, `[D]`: initial latent state z.
    pub l_init: Vec<f32>,
    /// The blocks: `inner.L_level.layers.{i}`, then for HRM
    /// `inner.H_level.layers.{i}` (see [`TrmConfig::level_layers`]).
    pub layers: Vec<LayerWeights>,
    /// `inner.lm_head.weight`, `[vocab, D]`.
    pub lm_head: Matrix,
    /// `inner.q_head.weight`, `[2, D]` (row 0: halt, row 1: continue).
    pub q_head_weight: Matrix,
    /// `inner.q_head.bias`, `[2]`.
    pub q_head_bias: Vec<f32>,
}

/// The state dict's names and shapes, defined with the configuration
/// (their old paths here kept).
pub use crate::config::state_dict::{canonical_name, expected_tensors};

/// How strictly [`TrmModel::from_tensors`] treats what it is given, and at
/// which precision the network is kept.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Accept tensors the configuration does not use (they are listed in
    /// [`TrmModel::ignored_tensors`]) instead of failing.
    pub allow_unexpected: bool,
    /// Convert the network's matrices (blocks, heads, token and position
    /// embeddings) to this precision at load; `None` keeps them as stored.
    /// The puzzle-embedding table is kept as stored either way (a solve
    /// reads a few of its rows; `trm convert --precision` rewrites it).
    pub precision: Option<Precision>,
}

impl LoadOptions {
    /// Accept (and report) tensors the configuration does not use.
    pub fn allow_unexpected(mut self, allow: bool) -> Self {
        self.allow_unexpected = allow;
        self
    }

    /// Keep the network at `precision` (see [`LoadOptions::precision`]).
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = Some(precision);
        self
    }
}

/// A TRM ready to run: configuration plus weights.
///
/// From a checkpoint: [`TrmModel::load`]. From weights an application
/// brings, under the official names (prefixed or not):
///
/// ```
/// use trm_wgpu::{LoadOptions, Tensor, TrmConfig, TrmModel};
/// use trm_wgpu::model::expected_tensors;
///
/// # fn main() -> trm_wgpu::Result<()> {
/// let config = TrmConfig { hidden_size: 8, puzzle_emb_ndim: 8, ..TrmConfig::sudoku_extreme() };
/// // every tensor the configuration requires, here filled with 0.01
/// let tensors = expected_tensors(&config).into_iter().map(|(name, shape)| {
///     let n = shape.iter().product();
///     (format!("_orig_mod.model.{name}"), Tensor::new(shape, vec![0.01; n]).unwrap())
/// });
/// let model = TrmModel::from_tensors(config, tensors, &LoadOptions::default())?;
/// assert_eq!(model.parameter_count(), model.config().parameter_count());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TrmModel {
    config: TrmConfig,
    weights: TrmWeights,
    precision: Precision,
    ignored_tensors: Vec<String>,
}

/// `[rows, cols]` of a tensor shape: the first dimension, and the product of
/// the others (1 for a vector's rows).
fn matrix_dims(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (1, *n),
        [rows, rest @ ..] => (*rows, rest.iter().product()),
    }
}

impl TrmModel {
    /// Builds a model from a configuration and named f32 tensors (names with
    /// or without the official prefixes). Every tensor the configuration
    /// requires must be present with the right shape and finite values.
    pub fn from_tensors(
        config: TrmConfig,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        options: &LoadOptions,
    ) -> Result<Self> {
        config.validate()?;
        let expected: BTreeMap<String, Vec<usize>> =
            expected_tensors(&config).into_iter().collect();
        let mut matrices = Vec::new();
        for (name, tensor) in tensors {
            let canonical = canonical_name(&name);
            let Some(shape) = expected.get(canonical) else {
                matrices.push((name, None));
                continue;
            };
            if tensor.shape != *shape
                || tensor.data.len() != element_count(shape).unwrap_or(usize::MAX)
            {
                return Err(TrmError::TensorShape {
                    name: canonical.to_string(),
                    expected: shape.clone(),
                    actual: if tensor.shape != *shape {
                        tensor.shape
                    } else {
                        vec![tensor.data.len()]
                    },
                });
            }
            if let Some(index) = tensor.data.iter().position(|v| !v.is_finite()) {
                return Err(TrmError::NonFinite {
                    name: canonical.to_string(),
                    index,
                });
            }
            let (rows, cols) = matrix_dims(shape);
            matrices.push((name, Some(Matrix::from_f32(rows, cols, &tensor.data)?)));
        }
        Self::from_matrices(config, matrices, options)
    }

    /// Builds a model from named matrices at any precision (`None`: a tensor
    /// the configuration does not use). Shapes are checked against the
    /// configuration (a vector is a one-row matrix); values are not, but for
    /// the precision conversion.
    pub(crate) fn from_matrices(
        config: TrmConfig,
        matrices: impl IntoIterator<Item = (String, Option<Matrix>)>,
        options: &LoadOptions,
    ) -> Result<Self> {
        config.validate()?;
        let mut by_name: BTreeMap<String, (String, Option<Matrix>)> = BTreeMap::new();
        for (name, matrix) in matrices {
            let canonical = canonical_name(&name).to_string();
            if by_name.contains_key(&canonical) {
                return Err(TrmError::DuplicateTensor { name: canonical });
            }
            by_name.insert(canonical, (name, matrix));
        }
        // Check every required tensor first, then assemble by name.
        let mut checked: BTreeMap<String, Matrix> = BTreeMap::new();
        for (name, shape) in expected_tensors(&config) {
            let missing = || TrmError::MissingTensor {
                name: name.clone(),
                expected: shape.clone(),
            };
            let (_, matrix) = by_name.remove(&name).ok_or_else(missing)?;
            let matrix = matrix.ok_or_else(missing)?;
            let (rows, cols) = matrix_dims(&shape);
            if (matrix.rows(), matrix.cols()) != (rows, cols) {
                return Err(TrmError::TensorShape {
                    name,
                    expected: shape,
                    actual: vec![matrix.rows(), matrix.cols()],
                });
            }
            checked.insert(name, matrix);
        }
        let leftovers: Vec<String> = by_name.into_values().map(|(name, _)| name).collect();
        if !leftovers.is_empty() && !options.allow_unexpected {
            return Err(TrmError::UnexpectedTensors { names: leftovers });
        }

        // The network shares one precision: the requested one, else the one
        // all its matrices are stored at, else f32 (widening is exact).
        let network: Vec<&Matrix> = checked
            .iter()
            .filter(|(name, _)| !is_vector(name) && !is_puzzle_table(name))
            .map(|(_, m)| m)
            .collect();
        let stored = network.first().map_or(Precision::F32, |m| m.precision());
        let precision =
            options
                .precision
                .unwrap_or(if network.iter().all(|m| m.precision() == stored) {
                    stored
                } else {
                    Precision::F32
                });
        for (name, matrix) in checked.iter_mut() {
            let target = if is_vector(name) {
                Precision::F32
            } else if is_puzzle_table(name) {
                matrix.precision()
            } else {
                precision
            };
            *matrix = matrix.convert(target, name)?;
        }

        // Every name below is in `expected_tensors`, so `get` always finds it.
        let mut get = |name: &str| {
            checked
                .remove(name)
                .unwrap_or_else(|| unreachable!("`{name}` was checked above"))
        };
        let mut layers = Vec::with_capacity(config.stored_layers());
        for p in layer_prefixes(&config) {
            let mixer = if config.mlp_t {
                TokenMixer::Mlp {
                    gate_up: get(&format!("{p}.mlp_t.gate_up_proj.weight")),
                    down: get(&format!("{p}.mlp_t.down_proj.weight")),
                }
            } else {
                TokenMixer::Attention {
                    qkv: get(&format!("{p}.self_attn.qkv_proj.weight")),
                    o_proj: get(&format!("{p}.self_attn.o_proj.weight")),
                }
            };
            layers.push(LayerWeights {
                mixer,
                gate_up: get(&format!("{p}.mlp.gate_up_proj.weight")),
                down: get(&format!("{p}.mlp.down_proj.weight")),
            });
        }
        let weights = TrmWeights {
            embed_tokens: get("inner.embed_tokens.embedding_weight"),
            puzzle_emb: (config.puzzle_emb_ndim > 0).then(|| get("inner.puzzle_emb.weights")),
            embed_pos: (config.pos_encodings == PosEncodings::Learned)
                .then(|| get("inner.embed_pos.embedding_weight")),
            h_init: get("inner.H_init").to_f32(),
            l_init: get("inner.L_init").to_f32(),
            layers,
            lm_head: get("inner.lm_head.weight"),
            q_head_weight: get("inner.q_head.weight"),
            q_head_bias: get("inner.q_head.bias").to_f32(),
        };
        Ok(TrmModel {
            config,
            weights,
            precision,
            ignored_tensors: leftovers,
        })
    }

    /// A model with seeded random weights (truncated normal, fan-in scaled
    /// like the authors' initialisation). `block_scale` multiplies the block
    /// weights: 1.0 is the official scale (the recursion is chaotic), 0.5
    /// makes it contractive (see TRM.md, Numerics). Throughput does not
    /// depend on weight values, so benchmarks use this too.
    pub fn random(config: TrmConfig, seed: u64, block_scale: f32) -> Result<Self> {
        config.validate()?;
        let mut rng = SplitMix64::new(seed);
        let d = config.hidden_size as f32;
        let tensors: Vec<(String, Tensor)> = expected_tensors(&config)
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let fan_in = *shape.last().unwrap_or(&1) as f32;
                let (std, scale) = if name.contains(".layers.") {
                    (1.0 / fan_in.sqrt(), block_scale)
                } else if name.ends_with("_init") {
                    (1.0, 1.0)
                } else if name.contains("embed") || name.contains("puzzle_emb") {
                    (1.0 / d.sqrt(), 1.0)
                } else {
                    (1.0 / fan_in.sqrt(), 1.0)
                };
                let data = (0..n)
                    .map(|_| rng.truncated_normal() * std * scale)
                    .collect();
                (name, Tensor { shape, data })
            })
            .collect();
        Self::from_tensors(config, tensors, &LoadOptions::default())
    }

    /// The configuration.
    pub fn config(&self) -> &TrmConfig {
        &self.config
    }

    /// The weights.
    pub fn weights(&self) -> &TrmWeights {
        &self.weights
    }

    /// Tensors of the source that the configuration does not use (only
    /// non-empty when [`LoadOptions::allow_unexpected`] was set).
    pub fn ignored_tensors(&self) -> &[String] {
        &self.ignored_tensors
    }

    /// Number of parameters (including the two init buffers).
    pub fn parameter_count(&self) -> u64 {
        self.config.parameter_count()
    }

    /// The precision the network's matrices are stored and computed at.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The same model with its network at `precision` (the puzzle table as
    /// stored); a copy sharing the bytes when it already is.
    pub fn to_precision(&self, precision: Precision) -> Result<TrmModel> {
        if precision == self.precision {
            return Ok(self.clone());
        }
        Self::from_matrices(
            self.config.clone(),
            self.named_matrices()
                .into_iter()
                .map(|(name, _, m)| (name, Some(m.into_owned()))),
            &LoadOptions::default().precision(precision),
        )
    }

    /// The same model with every matrix, the puzzle table too, at
    /// `precision`: what `trm convert --precision` writes.
    pub fn to_precision_all(&self, precision: Precision) -> Result<TrmModel> {
        let matrices = self
            .named_matrices()
            .into_iter()
            .map(|(name, _, m)| {
                let m = if is_puzzle_table(&name) {
                    m.convert(precision, &name)?
                } else {
                    m.into_owned()
                };
                Ok((name, Some(m)))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_matrices(
            self.config.clone(),
            matrices,
            &LoadOptions::default().precision(precision),
        )
    }

    /// The puzzle-embedding rows of `ids`, widened to f32 and concatenated
    /// (`ids.len() * puzzle_emb_ndim` floats; empty without a table). The
    /// rows are checked here, as they are read: a table in a file mapping
    /// is not read whole at load.
    pub fn puzzle_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let Some(table) = &self.weights.puzzle_emb else {
            return Ok(Vec::new());
        };
        let n = table.cols();
        let mut out = vec![0.0f32; ids.len() * n];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(n.max(1))) {
            let id = id as usize;
            if id >= table.rows() {
                return Err(TrmError::Input(format!(
                    "puzzle identifier {id} is beyond the table's {} rows",
                    table.rows()
                )));
            }
            table.row_into(id, row);
            if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                return Err(TrmError::NonFinite {
                    name: "inner.puzzle_emb.weights".into(),
                    index: id * n + c,
                });
            }
        }
        Ok(out)
    }

    /// Every tensor under its canonical name with its official shape and
    /// matrix, in [`expected_tensors`] order (a vector is a one-row matrix).
    pub fn named_matrices(&self) -> Vec<(String, Vec<usize>, std::borrow::Cow<'_, Matrix>)> {
        use std::borrow::Cow;
        let w = &self.weights;
        let vector = |v: &[f32]| {
            Cow::Owned(Matrix::from_f32(1, v.len(), v).unwrap_or_else(|_| unreachable!()))
        };
        let mut data: Vec<Cow<'_, Matrix>> = vec![Cow::Borrowed(&w.embed_tokens)];
        data.extend(w.puzzle_emb.iter().map(Cow::Borrowed));
        data.extend(w.embed_pos.iter().map(Cow::Borrowed));
        data.push(vector(&w.h_init));
        data.push(vector(&w.l_init));
        for layer in &w.layers {
            match &layer.mixer {
                TokenMixer::Mlp { gate_up, down } => {
                    data.extend([Cow::Borrowed(gate_up), Cow::Borrowed(down)])
                }
                TokenMixer::Attention { qkv, o_proj } => {
                    data.extend([Cow::Borrowed(qkv), Cow::Borrowed(o_proj)])
                }
            }
            data.extend([Cow::Borrowed(&layer.gate_up), Cow::Borrowed(&layer.down)]);
        }
        data.extend([
            Cow::Borrowed(&w.lm_head),
            Cow::Borrowed(&w.q_head_weight),
            vector(&w.q_head_bias),
        ]);
        expected_tensors(&self.config)
            .into_iter()
            .zip(data)
            .map(|((name, shape), m)| (name, shape, m))
            .collect()
    }

    /// Bytes of the stored weights by part: the network (blocks and heads),
    /// the token and position embeddings and the three vectors, and the
    /// puzzle-embedding table.
    pub fn stored_bytes(&self) -> ModelBytes {
        let mut bytes = ModelBytes::default();
        for (name, _, m) in self.named_matrices() {
            let part = if is_puzzle_table(&name) {
                &mut bytes.puzzle_table
            } else if name.contains("embed") || is_vector(&name) {
                &mut bytes.embeddings
            } else {
                &mut bytes.network
            };
            *part += m.stored_bytes();
        }
        bytes
    }

    /// Every tensor under its canonical name, widened to f32 (the values the
    /// engines compute with), in [`expected_tensors`] order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.named_matrices()
            .into_iter()
            .map(|(name, shape, m)| {
                (
                    name,
                    Tensor {
                        shape,
                        data: m.to_f32(),
                    },
                )
            })
            .collect()
    }
}

/// Bytes of a model's stored weights by part ([`TrmModel::stored_bytes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelBytes {
    /// The blocks and the output heads.
    pub network: u64,
    /// Token and position embeddings, `H_init`, `L_init`, the q-head bias.
    pub embeddings: u64,
    /// The puzzle-embedding table.
    pub puzzle_table: u64,
}
