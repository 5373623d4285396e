//! A TRM model in memory: its configuration and its weights as f32, under
//! the canonical (unprefixed) state-dict names of `shared/TRM.md`.
//!
//! Weights come from a checkpoint (see [`crate::checkpoint`]), from tensors an
//! application brings ([`TrmModel::from_tensors`]) or from a seeded random
//! initialisation ([`TrmModel::random`], for tests and benchmarks).

use std::collections::BTreeMap;

use crate::config::{PosEncodings, TrmConfig};
use crate::error::{Result, TrmError};
use crate::rng::SplitMix64;

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
        gate_up: Vec<f32>,
        /// `mlp_t.down_proj.weight`, `[S, inter(S)]`.
        down: Vec<f32>,
    },
    /// Self-attention (`mlp_t = false`).
    Attention {
        /// `self_attn.qkv_proj.weight`, `[3D, D]`.
        qkv: Vec<f32>,
        /// `self_attn.o_proj.weight`, `[D, D]`.
        o_proj: Vec<f32>,
    },
}

/// Weights of one block: token mixer, then channel SwiGLU.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// Token mixing (MLP over S, or attention).
    pub mixer: TokenMixer,
    /// `mlp.gate_up_proj.weight`, `[2 * inter(D), D]`.
    pub gate_up: Vec<f32>,
    /// `mlp.down_proj.weight`, `[D, inter(D)]`.
    pub down: Vec<f32>,
}

/// All weights of a TRM, as f32, in the official `[out, in]` layouts.
#[derive(Clone, Debug)]
pub struct TrmWeights {
    /// `inner.embed_tokens.embedding_weight`, `[vocab, D]`.
    pub embed_tokens: Vec<f32>,
    /// `inner.puzzle_emb.weights`, `[num_puzzle_identifiers, puzzle_emb_ndim]`.
    pub puzzle_emb: Option<Vec<f32>>,
    /// `inner.embed_pos.embedding_weight`, `[S, D]` (learned positions only).
    pub embed_pos: Option<Vec<f32>>,
    /// `inner.H_init`, `[D]`: initial answer state y.
    pub h_init: Vec<f32>,
    /// `inner.L_init`, `[D]`: initial latent state z.
    pub l_init: Vec<f32>,
    /// The blocks: `inner.L_level.layers.{i}`, then for HRM
    /// `inner.H_level.layers.{i}` (see [`TrmConfig::level_layers`]).
    pub layers: Vec<LayerWeights>,
    /// `inner.lm_head.weight`, `[vocab, D]`.
    pub lm_head: Vec<f32>,
    /// `inner.q_head.weight`, `[2, D]` (row 0: halt, row 1: continue).
    pub q_head_weight: Vec<f32>,
    /// `inner.q_head.bias`, `[2]`.
    pub q_head_bias: Vec<f32>,
}

/// Canonical names and shapes of every tensor the configuration requires, in
/// a stable order.
pub fn expected_tensors(config: &TrmConfig) -> Vec<(String, Vec<usize>)> {
    let d = config.hidden_size;
    let s = config.state_len();
    let mut out = vec![(
        "inner.embed_tokens.embedding_weight".to_string(),
        vec![config.vocab_size, d],
    )];
    if config.puzzle_emb_ndim > 0 {
        out.push((
            "inner.puzzle_emb.weights".into(),
            vec![config.num_puzzle_identifiers, config.puzzle_emb_ndim],
        ));
    }
    if config.pos_encodings == PosEncodings::Learned {
        out.push(("inner.embed_pos.embedding_weight".into(), vec![s, d]));
    }
    out.push(("inner.H_init".into(), vec![d]));
    out.push(("inner.L_init".into(), vec![d]));
    for p in layer_prefixes(config) {
        if config.mlp_t {
            let ti = config.token_inter();
            out.push((format!("{p}.mlp_t.gate_up_proj.weight"), vec![2 * ti, s]));
            out.push((format!("{p}.mlp_t.down_proj.weight"), vec![s, ti]));
        } else {
            out.push((format!("{p}.self_attn.qkv_proj.weight"), vec![3 * d, d]));
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, d]));
        }
        let ci = config.channel_inter();
        out.push((format!("{p}.mlp.gate_up_proj.weight"), vec![2 * ci, d]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![d, ci]));
    }
    out.push(("inner.lm_head.weight".into(), vec![config.vocab_size, d]));
    out.push(("inner.q_head.weight".into(), vec![2, d]));
    out.push(("inner.q_head.bias".into(), vec![2]));
    out
}

/// Name prefixes of the stored blocks, in [`TrmWeights::layers`] order:
/// `inner.L_level.layers.{i}`, then HRM's `inner.H_level.layers.{i}`.
fn layer_prefixes(config: &TrmConfig) -> impl Iterator<Item = String> {
    let l = (0..config.l_layers).map(|i| format!("inner.L_level.layers.{i}"));
    let h = (0..config.h_layers).map(|i| format!("inner.H_level.layers.{i}"));
    l.chain(h)
}

/// Strips the prefixes that official checkpoints carry (`_orig_mod.` from
/// torch.compile, `model.` from the loss wrapper).
pub fn canonical_name(name: &str) -> &str {
    let name = name.strip_prefix("_orig_mod.").unwrap_or(name);
    name.strip_prefix("model.").unwrap_or(name)
}

/// How strictly [`TrmModel::from_tensors`] treats what it is given.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Accept tensors the configuration does not use (they are listed in
    /// [`TrmModel::ignored_tensors`]) instead of failing.
    pub allow_unexpected: bool,
}

impl LoadOptions {
    /// Accept (and report) tensors the configuration does not use.
    pub fn allow_unexpected(mut self, allow: bool) -> Self {
        self.allow_unexpected = allow;
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
    ignored_tensors: Vec<String>,
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
        let mut by_name: BTreeMap<String, (String, Tensor)> = BTreeMap::new();
        for (name, tensor) in tensors {
            let canonical = canonical_name(&name).to_string();
            if by_name.contains_key(&canonical) {
                return Err(TrmError::DuplicateTensor { name: canonical });
            }
            by_name.insert(canonical, (name, tensor));
        }
        let mut take = |name: &str, expected: &[usize]| -> Result<Vec<f32>> {
            let (_, tensor) = by_name
                .remove(name)
                .ok_or_else(|| TrmError::MissingTensor {
                    name: name.to_string(),
                    expected: expected.to_vec(),
                })?;
            if tensor.shape != expected {
                return Err(TrmError::TensorShape {
                    name: name.to_string(),
                    expected: expected.to_vec(),
                    actual: tensor.shape,
                });
            }
            if tensor.data.len() != element_count(expected).unwrap_or(usize::MAX) {
                return Err(TrmError::TensorShape {
                    name: name.to_string(),
                    expected: expected.to_vec(),
                    actual: vec![tensor.data.len()],
                });
            }
            if let Some(index) = tensor.data.iter().position(|v| !v.is_finite()) {
                return Err(TrmError::NonFinite {
                    name: name.to_string(),
                    index,
                });
            }
            Ok(tensor.data)
        };

        // Check every required tensor first, then assemble by name.
        let mut checked: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for (name, shape) in expected_tensors(&config) {
            let data = take(&name, &shape)?;
            checked.insert(name, data);
        }
        // Every name below is in `expected_tensors`, so `get` always finds it.
        let mut get = |name: &str| checked.remove(name).unwrap_or_default();
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
            h_init: get("inner.H_init"),
            l_init: get("inner.L_init"),
            layers,
            lm_head: get("inner.lm_head.weight"),
            q_head_weight: get("inner.q_head.weight"),
            q_head_bias: get("inner.q_head.bias"),
        };

        let leftovers: Vec<String> = by_name.into_values().map(|(name, _)| name).collect();
        if !leftovers.is_empty() && !options.allow_unexpected {
            return Err(TrmError::UnexpectedTensors { names: leftovers });
        }
        Ok(TrmModel {
            config,
            weights,
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

    /// Every tensor under its canonical name, in [`expected_tensors`] order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let w = &self.weights;
        let mut data: Vec<&Vec<f32>> = vec![&w.embed_tokens];
        data.extend(w.puzzle_emb.iter());
        data.extend(w.embed_pos.iter());
        data.push(&w.h_init);
        data.push(&w.l_init);
        for layer in &w.layers {
            match &layer.mixer {
                TokenMixer::Mlp { gate_up, down } => data.extend([gate_up, down]),
                TokenMixer::Attention { qkv, o_proj } => data.extend([qkv, o_proj]),
            }
            data.extend([&layer.gate_up, &layer.down]);
        }
        data.extend([&w.lm_head, &w.q_head_weight, &w.q_head_bias]);
        expected_tensors(&self.config)
            .into_iter()
            .zip(data)
            .map(|((name, shape), values)| {
                (
                    name,
                    Tensor {
                        shape,
                        data: values.clone(),
                    },
                )
            })
            .collect()
    }
}
