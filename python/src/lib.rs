//! `trm_wgpu._native`: the Python bindings of trm-wgpu.
//!
//! A [`Model`] is a loaded checkpoint (the project's safetensors or the
//! authors' `step_N` with its `all_config.yaml`); [`Model::solve`] takes
//! NumPy integer arrays and returns a dict of NumPy arrays named as
//! `trm run` names its outputs, through the library's own [`run::run`] with
//! the options of `trm run` under the same names. Solves release the GIL;
//! errors are `trm_wgpu.TrmError` (and its subclass `InputError` for bad
//! inputs) carrying the crate's message.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use numpy::prelude::*;
use numpy::{PyArray1, PyReadonlyArrayDyn, PyUntypedArray};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeWarning, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use trm_wgpu::checkpoint::official::{self, ConvertOptions};
use trm_wgpu::gpu::{self, GpuBackend};
use trm_wgpu::run::{self, RunOptions};
use trm_wgpu::{
    ActivationPrecision, AnyEngine, ArrayData, Backend, Engine, EngineOptions, GpuSchedule,
    LoadOptions, Precision, PuzzleBatch, TrmModel,
};

create_exception!(
    trm_wgpu,
    TrmError,
    PyException,
    "An error of trm-wgpu: a bad checkpoint, input or option, or a GPU fault; the message is the crate's."
);
create_exception!(
    trm_wgpu,
    InputError,
    TrmError,
    "A bad input or option: token ids outside the vocabulary, shapes, an option combination `trm run` refuses."
);

/// The crate's error as the Python exception of its kind.
fn py_err(e: trm_wgpu::TrmError) -> PyErr {
    use trm_wgpu::TrmError as E;
    match e {
        E::Input(_) | E::TokenOutOfRange { .. } | E::PuzzleIdOutOfRange { .. } => {
            InputError::new_err(e.to_string())
        }
        other => TrmError::new_err(other.to_string()),
    }
}

/// Parses an option given as a string with the parser of the CLI flag of
/// the same name (its error names the accepted values).
fn parse<T: FromStr>(value: &str, what: &str) -> PyResult<T>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| InputError::new_err(format!("{what}={value:?}: {e}")))
}

/// What picks a cached engine: every option of [`Backend::build`].
#[derive(Clone, Debug, PartialEq)]
struct EngineKey {
    backend: Backend,
    adapter: Option<String>,
    threads: Option<usize>,
    schedule: GpuSchedule,
    activations: ActivationPrecision,
}

/// A loaded TRM checkpoint, ready to solve on the CPU or a GPU.
///
/// Engines are built on first use and kept, one per backend and engine
/// options, so repeated solves pay for GPU pipelines and packed CPU
/// weights once. Solves on one engine run one at a time; solves on
/// different engines (say "cpu" and "gpu") may run in parallel threads.
#[pyclass(frozen, module = "trm_wgpu")]
struct Model {
    model: Arc<TrmModel>,
    path: PathBuf,
    engines: Mutex<Vec<(EngineKey, Arc<Mutex<AnyEngine>>)>>,
}

/// A poisoned lock's data: a solve that panicked left nothing half-written
/// that the next one reads (every solve starts from its inputs).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Model {
    /// The engine for `key`, built (with the GIL released) on first use;
    /// warns when "auto" fell back to the CPU.
    fn engine(&self, py: Python<'_>, key: EngineKey) -> PyResult<Arc<Mutex<AnyEngine>>> {
        if let Some((_, engine)) = lock(&self.engines).iter().find(|(k, _)| *k == key) {
            return Ok(Arc::clone(engine));
        }
        let mut options = EngineOptions::default().activations(key.activations);
        options.adapter = key.adapter.clone();
        options.threads = key.threads;
        options.schedule = key.schedule;
        let model = Arc::clone(&self.model);
        let backend = key.backend;
        let engine = py
            .detach(move || backend.build(model, &options))
            .map_err(py_err)?;
        if let Some(reason) = engine.gpu_unavailable() {
            let message = std::ffi::CString::new(format!("running on the CPU: {reason}"))
                .unwrap_or_else(|_| c"running on the CPU: no usable GPU".into());
            PyErr::warn(py, &py.get_type::<PyRuntimeWarning>(), &message, 1)?;
        }
        let engine = Arc::new(Mutex::new(engine));
        let mut engines = lock(&self.engines);
        // another thread may have built the same meanwhile: keep the first
        if let Some((_, first)) = engines.iter().find(|(k, _)| *k == key) {
            return Ok(Arc::clone(first));
        }
        engines.push((key, Arc::clone(&engine)));
        Ok(engine)
    }

    fn engine_key(
        backend: &str,
        adapter: Option<String>,
        threads: Option<usize>,
        schedule: &str,
        activations: &str,
    ) -> PyResult<EngineKey> {
        Ok(EngineKey {
            backend: parse(backend, "backend")?,
            adapter,
            threads,
            schedule: parse(schedule, "schedule")?,
            activations: parse(activations, "activations")?,
        })
    }
}

/// `obj` as a NumPy array of integers of `ndim` dimensions: its values as
/// i64 and its shape. Other element types are a TypeError (no silent
/// rounding of floats), other ranks an InputError.
fn int_array(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    name: &str,
    ndim: usize,
) -> PyResult<(Vec<i64>, Vec<usize>)> {
    let array = py.import("numpy")?.call_method1("asarray", (obj,))?;
    let untyped = array.cast::<PyUntypedArray>()?;
    let kind = untyped.dtype().kind();
    if kind != b'i' && kind != b'u' {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an array of integers, not of dtype {}",
            untyped.dtype()
        )));
    }
    if untyped.ndim() != ndim {
        return Err(InputError::new_err(format!(
            "{name} must have {ndim} dimension{}, got shape {:?}",
            if ndim == 1 { "" } else { "s" },
            untyped.shape()
        )));
    }
    let wide = array.call_method1("astype", ("int64",))?;
    let values: PyReadonlyArrayDyn<'_, i64> = wide.extract()?;
    let view = values.as_array();
    Ok((view.iter().copied().collect(), view.shape().to_vec()))
}

#[pymethods]
impl Model {
    /// Solve a batch of puzzles; see the type stubs for every option.
    #[pyo3(signature = (
        inputs,
        puzzle_identifiers = None,
        backend = "auto",
        steps = None,
        halt = false,
        *,
        adapter = None,
        threads = None,
        schedule = "auto",
        activations = "f32",
        task = None,
        augment = None,
        select = "q-halt",
        seed = 0,
        trajectories = None,
        noise = None,
        noise_on = "z_L",
        slots = None,
        batch = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn solve<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
        puzzle_identifiers: Option<&Bound<'py, PyAny>>,
        backend: &str,
        steps: Option<usize>,
        halt: bool,
        adapter: Option<String>,
        threads: Option<usize>,
        schedule: &str,
        activations: &str,
        task: Option<&str>,
        augment: Option<usize>,
        select: &str,
        seed: u64,
        trajectories: Option<usize>,
        noise: Option<f32>,
        noise_on: &str,
        slots: Option<usize>,
        batch: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let config = self.model.config();
        let (tokens, shape) = int_array(py, inputs, "inputs", 2)?;
        if shape[1] != config.seq_len {
            return Err(InputError::new_err(format!(
                "inputs has shape {shape:?}, but the model reads puzzles of seq_len {}",
                config.seq_len
            )));
        }
        let ids = match puzzle_identifiers {
            Some(ids) => {
                let (ids, id_shape) = int_array(py, ids, "puzzle_identifiers", 1)?;
                if id_shape[0] != shape[0] {
                    return Err(InputError::new_err(format!(
                        "puzzle_identifiers has shape {id_shape:?}, inputs {} puzzles",
                        shape[0]
                    )));
                }
                Some(ids)
            }
            None => None,
        };
        let mut options = RunOptions::default();
        options.steps = steps;
        options.halt = halt;
        options.task = task.map(|t| parse(t, "task")).transpose()?;
        options.augment = augment;
        options.select = parse(select, "select")?;
        options.seed = seed;
        options.trajectories = trajectories;
        options.noise = noise;
        options.noise_on = parse(noise_on, "noise_on")?;
        options.slots = slots;
        options.batch = batch;
        // refused before an engine is built
        options.solve_options().map_err(py_err)?;
        let puzzles = PuzzleBatch::new(config, &tokens, ids.as_deref()).map_err(py_err)?;
        let key = Self::engine_key(backend, adapter, threads, schedule, activations)?;
        let engine = self.engine(py, key)?;
        let done = py
            .detach(move || run::run(&mut *lock(&engine), &puzzles, &options))
            .map_err(py_err)?;
        let dict = PyDict::new(py);
        for array in done.output.named_arrays() {
            let value = match array.data {
                ArrayData::F32(values) => PyArray1::from_slice(py, values)
                    .reshape(array.shape)?
                    .into_any(),
                ArrayData::I32(values) => PyArray1::from_vec(py, values)
                    .reshape(array.shape)?
                    .into_any(),
            };
            dict.set_item(array.name, value)?;
        }
        Ok(dict)
    }

    /// The engine `solve` would run on with these options, built if it was
    /// not (for example `gpu: llvmpipe (LLVM 19.1.7, 256 bits) on vulkan`).
    #[pyo3(signature = (backend = "auto", *, adapter = None, threads = None, schedule = "auto", activations = "f32"))]
    fn describe(
        &self,
        py: Python<'_>,
        backend: &str,
        adapter: Option<String>,
        threads: Option<usize>,
        schedule: &str,
        activations: &str,
    ) -> PyResult<String> {
        let key = Self::engine_key(backend, adapter, threads, schedule, activations)?;
        let engine = self.engine(py, key)?;
        let described = lock(&engine).describe();
        Ok(described)
    }

    /// The configuration, with the field names of `all_config.yaml`.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?
            .call_method1("loads", (self.model.config().to_json(),))
    }

    /// The precision the network runs at: "f32", "f16", "bf16" or "int8".
    #[getter]
    fn precision(&self) -> &'static str {
        self.model.precision().as_str()
    }

    /// Parameters of the network (the puzzle-embedding table included).
    #[getter]
    fn parameter_count(&self) -> u64 {
        self.model.parameter_count()
    }

    /// Tokens per puzzle.
    #[getter]
    fn seq_len(&self) -> usize {
        self.model.config().seq_len
    }

    /// Token ids `0..vocab_size`.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    /// Puzzle identifiers `0..num_puzzle_identifiers`.
    #[getter]
    fn num_puzzle_identifiers(&self) -> usize {
        self.model.config().num_puzzle_identifiers
    }

    /// The checkpoint file it was loaded from.
    #[getter]
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    /// Tensors of the checkpoint that the configuration does not use
    /// (loaded with `allow_unexpected=True`).
    #[getter]
    fn ignored_tensors(&self) -> Vec<String> {
        self.model.ignored_tensors().to_vec()
    }

    fn __repr__(&self) -> String {
        let c = self.model.config();
        format!(
            "<trm_wgpu.Model {} {} D={} seq_len={} vocab={} ({} parameters) from {}>",
            c.arch.as_str(),
            self.model.precision(),
            c.hidden_size,
            c.seq_len,
            c.vocab_size,
            self.model.parameter_count(),
            self.path.display()
        )
    }
}

/// The newest `step_N` in `dir` (the authors' training writes one per
/// checkpoint).
fn newest_step(dir: &Path) -> PyResult<PathBuf> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| TrmError::new_err(format!("{}: {e}", dir.display())))?;
    entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let n: u64 = path
                .file_name()?
                .to_str()?
                .strip_prefix("step_")?
                .parse()
                .ok()?;
            Some((n, path))
        })
        .max()
        .map(|(_, path)| path)
        .ok_or_else(|| {
            TrmError::new_err(format!(
                "{}: a directory without step_N checkpoints (give the checkpoint file)",
                dir.display()
            ))
        })
}

/// Whether `path` is a `torch.save` file: a zip archive (PyTorch's format
/// since 1.6).
fn is_torch_save(path: &Path) -> PyResult<bool> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path)
        .map_err(|e| TrmError::new_err(format!("{}: {e}", path.display())))?;
    let read = std::io::Read::read(&mut file, &mut magic)
        .map_err(|e| TrmError::new_err(format!("{}: {e}", path.display())))?;
    Ok(read == 4 && magic == *b"PK\x03\x04")
}

/// Load a checkpoint; see the type stubs.
#[pyfunction]
#[pyo3(signature = (path, precision = Some("f32"), *, config = None, dataset = None, allow_unexpected = false))]
fn load(
    py: Python<'_>,
    path: PathBuf,
    precision: Option<&str>,
    config: Option<PathBuf>,
    dataset: Option<PathBuf>,
    allow_unexpected: bool,
) -> PyResult<Model> {
    let mut load = LoadOptions::default().allow_unexpected(allow_unexpected);
    if let Some(p) = precision {
        load = load.precision(parse::<Precision>(p, "precision")?);
    }
    let path = if path.is_dir() {
        newest_step(&path)?
    } else {
        path
    };
    let official = is_torch_save(&path)?;
    if !official && (config.is_some() || dataset.is_some()) {
        return Err(InputError::new_err(format!(
            "{}: config= and dataset= go with the authors' step_N checkpoints; this is not one (the project's format holds its configuration)",
            path.display()
        )));
    }
    let model = if official {
        let beside = |name: &str| path.parent().map(|dir| dir.join(name));
        let yaml = match config {
            Some(yaml) => yaml,
            None => beside("all_config.yaml")
                .filter(|p| p.is_file())
                .ok_or_else(|| {
                    InputError::new_err(format!(
                        "{}: an official checkpoint needs its all_config.yaml, and there is none beside it: pass config=",
                        path.display()
                    ))
                })?,
        };
        // without dataset.json, seq_len, vocab_size and the table's rows
        // come from the tensor shapes where these determine them
        let dataset = dataset.or_else(|| beside("dataset.json").filter(|p| p.is_file()));
        let options = ConvertOptions::default().load(load);
        let step = path.clone();
        py.detach(move || official::convert_with(&step, &yaml, dataset.as_ref(), &options))
            .map(|conversion| conversion.model)
            .map_err(py_err)?
    } else {
        let file = path.clone();
        py.detach(move || TrmModel::load_with(&file, &load, None))
            .map_err(py_err)?
    };
    Ok(Model {
        model: Arc::new(model),
        path,
        engines: Mutex::new(Vec::new()),
    })
}

/// Every adapter wgpu finds; see the type stubs.
#[pyfunction]
#[pyo3(signature = (backend = "gpu"))]
fn adapters<'py>(py: Python<'py>, backend: &str) -> PyResult<Bound<'py, PyList>> {
    let api: GpuBackend = parse(backend, "backend")?;
    let reports = py.detach(move || gpu::list_adapters(api));
    let json = serde_json::to_string(&reports)
        .map_err(|e| TrmError::new_err(format!("adapter reports: {e}")))?;
    let list = py.import("json")?.call_method1("loads", (json,))?;
    Ok(list.cast_into::<PyList>()?)
}

#[pymodule(name = "_native")]
mod native {
    #[pymodule_export]
    use super::{InputError, Model, TrmError, adapters, load};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
