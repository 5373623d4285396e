//! Checkpoint formats: every file a model is read from or written to.
//!
//! The model layer ([`crate::model`]) holds a model in memory and knows no
//! file; this layer reads and writes them. `TrmModel`'s file methods
//! (`load`, `load_with`, `from_safetensors_bytes`, `to_safetensors_bytes`,
//! `save`) are defined here, in [`model_file`].
//!
//! - [`model_file`]: the project's format, a safetensors file whose header
//!   metadata key `config` holds the configuration as JSON (the golden format).
//! - the authors' `torch.save` state dicts (`step_N` + `all_config.yaml` +
//!   `dataset.json`), read without Python and converted to the former:
//!   `official` (with the cargo feature `official`, which the default
//!   `cli` turns on), whose pickles run on the allowlisted machine of
//!   [`pickle`].

pub mod model_file;
#[cfg(feature = "official")]
pub mod official;
pub mod pickle;
