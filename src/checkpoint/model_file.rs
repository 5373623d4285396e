//! The project's checkpoint format: safetensors with the configuration as
//! JSON under the header metadata key `config`, tensors under their official
//! names (with or without the `_orig_mod.` / `model.` prefixes), F32, BF16,
//! F16 or F64, widened to f32 on load.

use std::collections::HashMap;
use std::path::Path;

use crate::config::TrmConfig;
use crate::error::{Result, TrmError};
use crate::model::{LoadOptions, Tensor, TrmModel};
use crate::tensor_file::{self, OwnedTensor};

/// Header metadata key that holds the configuration JSON.
pub const CONFIG_METADATA_KEY: &str = "config";

impl TrmModel {
    /// Loads a model from a safetensors checkpoint with its configuration in
    /// the header metadata.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(path, &LoadOptions::default(), None)
    }

    /// Loads a model with options; `config` overrides (or supplies) the
    /// configuration of the file.
    pub fn load_with(
        path: impl AsRef<Path>,
        options: &LoadOptions,
        config: Option<TrmConfig>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let bytes = tensor_file::read_file(path)?;
        Self::from_safetensors_bytes(&bytes, &path.display().to_string(), options, config)
    }

    /// Loads a model from a safetensors buffer; `what` names it in errors.
    pub fn from_safetensors_bytes(
        bytes: &[u8],
        what: &str,
        options: &LoadOptions,
        config: Option<TrmConfig>,
    ) -> Result<Self> {
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
        // Check every shape before widening anything, so that a file with a
        // wrong (or far too large) tensor is refused without converting any.
        let expected: HashMap<String, Vec<usize>> = crate::model::expected_tensors(&config)
            .into_iter()
            .collect();
        for (name, view) in file.iter() {
            if !super::pickle::plain_name(name) {
                return Err(TrmError::safetensors(
                    what,
                    format!(
                        "tensor name `{}` is not a plain name (empty, too long, or with control characters)",
                        super::pickle::printable(name)
                    ),
                ));
            }
            let canonical = crate::model::canonical_name(name);
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
        let mut tensors = Vec::new();
        for (name, view) in file.iter() {
            let canonical = crate::model::canonical_name(name);
            let data = if expected.contains_key(canonical) {
                tensor_file::to_f32(name, &view)?
            } else {
                Vec::new() // reported (or ignored) by from_tensors
            };
            let shape = if expected.contains_key(canonical) {
                view.shape().to_vec()
            } else {
                vec![0]
            };
            tensors.push((name.to_string(), Tensor { shape, data }));
        }
        TrmModel::from_tensors(config, tensors, options)
    }

    /// The model as a safetensors buffer in the project's format (f32,
    /// canonical names, configuration in the metadata).
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let tensors: Vec<OwnedTensor> = self
            .named_tensors()
            .into_iter()
            .map(|(name, t)| OwnedTensor::f32(name, t.shape, &t.data))
            .collect();
        let metadata = HashMap::from([(CONFIG_METADATA_KEY.to_string(), self.config().to_json())]);
        tensor_file::serialize(&tensors, Some(metadata))
    }

    /// Writes the model to `path` in the project's format.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        tensor_file::write_file(path.as_ref(), &self.to_safetensors_bytes()?)
    }
}
