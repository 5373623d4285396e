//! Typed errors for everything the crate can refuse.
//!
//! Every bad input (a file, a tensor, a configuration, a token id, a GPU
//! fault) ends in one of these variants; nothing on an input path panics.

use std::path::PathBuf;

/// Result type used throughout trm-wgpu.
pub type Result<T, E = TrmError> = std::result::Result<T, E>;

/// Everything that can go wrong while loading a model, reading inputs or
/// running a solve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrmError {
    /// A file could not be opened, read or written (a directory given for
    /// a file is one too, of kind [`std::io::ErrorKind::IsADirectory`]).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// An I/O error with no path known: what `?` makes of a
    /// [`std::io::Error`] in a function returning this crate's [`Result`]
    /// (an application's own file read, say). Every file error of the crate
    /// itself is [`TrmError::Io`], which names the file.
    #[error("I/O error: {0}")]
    StdIo(#[from] std::io::Error),

    /// A safetensors file (model, input or output) is malformed or truncated.
    #[error("{what}: not a valid safetensors file: {reason}")]
    Safetensors {
        /// Which file or buffer.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An official `torch.save` checkpoint (zip + pickle) could not be read.
    #[error("{what}: cannot read the PyTorch checkpoint: {reason}")]
    Checkpoint {
        /// Which file.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A pickle asked for a Python global that is not on the allowlist of
    /// PyTorch state dicts; nothing was executed.
    #[error(
        "{what}: the pickle asks for the Python global `{module}.{name}`, which is not allowed in a state dict; refusing to load it"
    )]
    ForbiddenPickleGlobal {
        /// Which file.
        what: String,
        /// Module of the global.
        module: String,
        /// Name of the global.
        name: String,
    },

    /// The configuration is invalid on its own (independent of tensors).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A tensor the configuration requires is absent.
    #[error("checkpoint lacks the tensor `{name}` (shape {expected:?} expected)")]
    MissingTensor {
        /// Canonical (unprefixed) tensor name.
        name: String,
        /// Shape the configuration implies.
        expected: Vec<usize>,
    },

    /// A tensor has a shape that contradicts the configuration.
    #[error("tensor `{name}` has shape {actual:?}, but the configuration implies {expected:?}")]
    TensorShape {
        /// Canonical tensor name.
        name: String,
        /// Shape the configuration implies.
        expected: Vec<usize>,
        /// Shape found in the file.
        actual: Vec<usize>,
    },

    /// A tensor has an element type that cannot be used there.
    #[error("tensor `{name}` has dtype {dtype}, expected {expected}")]
    TensorDtype {
        /// Tensor name.
        name: String,
        /// Element type found.
        dtype: String,
        /// Element types accepted.
        expected: String,
    },

    /// A tensor holds a value that is not finite (NaN or infinity).
    #[error("tensor `{name}` holds a non-finite value at element {index}")]
    NonFinite {
        /// Tensor name.
        name: String,
        /// Flat index of the first bad element.
        index: usize,
    },

    /// The checkpoint holds tensors that the configuration does not use.
    #[error(
        "checkpoint holds tensors the configuration does not use: {}",
        names.join(", ")
    )]
    UnexpectedTensors {
        /// Their names, as found in the file.
        names: Vec<String>,
    },

    /// Two tensors in a checkpoint map to the same canonical name (for
    /// example one with and one without the `_orig_mod.model.` prefix).
    #[error("checkpoint holds `{name}` twice (with and without a prefix)")]
    DuplicateTensor {
        /// Canonical tensor name.
        name: String,
    },

    /// A malformed input batch (rank, dtype, missing tensor, sizes).
    #[error("input: {0}")]
    Input(String),

    /// A token id outside `0..vocab_size`.
    #[error(
        "input: token id {value} of puzzle {puzzle} at position {position} is outside the vocabulary 0..{vocab_size}"
    )]
    TokenOutOfRange {
        /// Puzzle index in the batch.
        puzzle: usize,
        /// Position in the sequence.
        position: usize,
        /// The offending id.
        value: i64,
        /// Vocabulary size of the model.
        vocab_size: usize,
    },

    /// A puzzle identifier outside `0..num_puzzle_identifiers`.
    #[error(
        "input: puzzle identifier {value} of puzzle {puzzle} is outside 0..{num_puzzle_identifiers}"
    )]
    PuzzleIdOutOfRange {
        /// Puzzle index in the batch.
        puzzle: usize,
        /// The offending identifier.
        value: i64,
        /// Rows of the puzzle-embedding table.
        num_puzzle_identifiers: usize,
    },

    /// A request that would need more memory than allowed.
    #[error("{0}")]
    TooLarge(String),

    /// No GPU adapter matched the request; the message says which was
    /// asked for and what there is.
    #[error("{0}")]
    NoAdapter(String),

    /// The adapter exists but cannot run this model (limits or features).
    #[error("adapter `{adapter}` cannot run this model: {reason}")]
    AdapterUnsuitable {
        /// Adapter name.
        adapter: String,
        /// Why.
        reason: String,
    },

    /// The device could not be created.
    #[error("cannot create a GPU device on `{adapter}`: {reason}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// What wgpu said.
        reason: String,
    },

    /// A WGSL kernel failed to compile or a pipeline failed to build.
    #[error("GPU kernel `{kernel}` failed to build: {reason}")]
    Shader {
        /// Kernel file name.
        kernel: String,
        /// What the compiler said.
        reason: String,
    },

    /// The GPU device was lost (driver reset, watchdog, removal).
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),

    /// The GPU ran out of memory.
    #[error("the GPU ran out of memory: {0}")]
    OutOfMemory(String),

    /// Any other GPU validation or runtime failure.
    #[error("GPU error: {0}")]
    Gpu(String),

    /// A backend name that is none of the known ones, or a backend not
    /// available in this build or on this machine; the message names it
    /// and the valid names.
    #[error("{0}")]
    BackendUnavailable(String),

    /// A built data set (the authors' `.npy` arrays and JSON files), a
    /// predictions file or an answers file is malformed or inconsistent.
    #[error("{what}: {reason}")]
    Dataset {
        /// Which file.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl TrmError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrmError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn safetensors(what: impl Into<String>, reason: impl ToString) -> Self {
        TrmError::Safetensors {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn dataset(what: impl Into<String>, reason: impl ToString) -> Self {
        TrmError::Dataset {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    #[allow(dead_code)] // used by the official-checkpoint reader
    pub(crate) fn checkpoint(what: impl Into<String>, reason: impl ToString) -> Self {
        TrmError::Checkpoint {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// `text` from a file (a tensor name, a pickle string) fit to quote in a
/// one-line message: control characters escaped, at most 200
/// characters.
pub(crate) fn printable(text: &str) -> String {
    let escaped: String = text.chars().flat_map(char::escape_debug).collect();
    if escaped.chars().count() > 200 {
        let cut: String = escaped.chars().take(200).collect();
        format!("{cut}...")
    } else {
        escaped
    }
}
