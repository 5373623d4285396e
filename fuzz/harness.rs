//! What the fuzz targets run, shared with `tests/fuzz_regressions.rs`
//! (which includes this file), so that `cargo test` replays every seed and
//! every fixed crash input through exactly the code the fuzzers ran.
//!
//! Each entry point takes arbitrary bytes and must never panic on its own;
//! on whatever it accepts it checks invariants and panics (a finding for
//! the fuzzer, a failure for the test) when one does not hold. It returns
//! the outcome of every call it made: `Ok` for an accepted input, or the
//! typed error that refused it.
#![allow(dead_code)]
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::OnceLock;

use trm_wgpu::checkpoint::official::{self, ConvertOptions, OfficialCheckpoint};
use trm_wgpu::{
    CpuEngine, CpuOptions, Engine, LoadOptions, PuzzleBatch, SolveOptions, TrmConfig, TrmError,
    TrmModel,
};

/// A tiny MLP-mixer whose SwiGLU widths are 0 (expansion 0.05), so that
/// its files are a few hundred bytes: the model of the official-checkpoint
/// seeds and of the storages given to pickles.
pub const TINY_CONFIG_JSON: &str = r#"{"seq_len": 4, "vocab_size": 3, "num_puzzle_identifiers": 2, "hidden_size": 8, "expansion": 0.05, "num_heads": 2, "H_cycles": 1, "L_cycles": 1, "L_layers": 1, "halt_max_steps": 1, "mlp_t": true, "pos_encodings": "none", "puzzle_emb_ndim": 8, "puzzle_emb_len": 1}"#;

/// The `all_config.yaml` of [`TINY_CONFIG_JSON`], as the authors' training
/// writes it (training-only fields included).
pub const TINY_YAML: &str = "arch:
  H_cycles: 1
  H_layers: 0
  L_cycles: 1
  L_layers: 1
  expansion: 0.05
  forward_dtype: bfloat16
  halt_exploration_prob: 0.1
  halt_max_steps: 1
  hidden_size: 8
  loss:
    loss_type: stablemax_cross_entropy
    name: losses@ACTLossHead
  mlp_t: true
  name: recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1
  no_ACT_continue: true
  num_heads: 2
  pos_encodings: none
  puzzle_emb_len: 1
  puzzle_emb_ndim: 8
lr: 0.0001
";

/// The `dataset.json` of [`TINY_CONFIG_JSON`].
pub const TINY_DATASET: &str =
    r#"{"pad_id": 0, "seq_len": 4, "vocab_size": 3, "num_puzzle_identifiers": 2}"#;

/// The configuration of [`TINY_CONFIG_JSON`].
pub fn tiny_config() -> TrmConfig {
    TrmConfig::from_json(TINY_CONFIG_JSON).expect("the tiny configuration is valid")
}

/// The tiny model with seeded random weights.
pub fn tiny_model() -> TrmModel {
    TrmModel::random(tiny_config(), 7, 0.5).expect("the tiny model builds")
}

/// The storages pickles are fuzzed against: key `i` holds the f32 bytes of
/// the `i`-th tensor of [`tiny_model`].
pub fn template_storages() -> &'static HashMap<String, Vec<u8>> {
    static STORAGES: OnceLock<HashMap<String, Vec<u8>>> = OnceLock::new();
    STORAGES.get_or_init(|| {
        tiny_model()
            .named_tensors()
            .into_iter()
            .enumerate()
            .map(|(i, (_, t))| {
                (
                    i.to_string(),
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect()
    })
}

/// The official Sudoku data set's sizes, for batch inputs.
pub const SUDOKU_CONFIG_JSON: &str = r#"{"seq_len": 81, "vocab_size": 11, "num_puzzle_identifiers": 1, "hidden_size": 512, "expansion": 4, "num_heads": 8, "H_cycles": 3, "L_cycles": 6, "L_layers": 2, "halt_max_steps": 16, "mlp_t": true, "pos_encodings": "none", "puzzle_emb_ndim": 512, "puzzle_emb_len": 16}"#;

/// The puzzle-embedding table's canonical name.
const PUZZLE_TABLE: &str = "inner.puzzle_emb.weights";

/// Checks a model that a loader accepted: tensor sizes agree with shapes
/// and the configuration; every value finite, but the puzzle table's,
/// whose rows the loaders check as a solve reads them (a table in a file
/// mapping is not read whole at load): each row is finite or refused as
/// non-finite; and the model survives a round trip through the project's
/// format unchanged, bit for bit.
pub fn check_model(model: &TrmModel) {
    let tensors = model.named_tensors();
    for (name, tensor) in &tensors {
        let n: usize = tensor.shape.iter().product();
        assert_eq!(n, tensor.data.len(), "tensor {name}");
        if name != PUZZLE_TABLE {
            assert!(tensor.data.iter().all(|v| v.is_finite()), "tensor {name}");
        }
    }
    let rows = model.weights().puzzle_emb.as_ref().map_or(0, |t| t.rows());
    for id in 0..rows as u32 {
        match model.puzzle_rows(&[id]) {
            Ok(row) => {
                assert_eq!(row.len(), model.config().puzzle_emb_ndim, "row {id}");
                assert!(row.iter().all(|v| v.is_finite()), "row {id}");
            }
            Err(TrmError::NonFinite { .. }) => {}
            Err(e) => panic!("row {id} of the puzzle table: {e}"),
        }
    }
    let bytes = model
        .to_safetensors_bytes()
        .expect("an accepted model serialises");
    let again =
        TrmModel::from_safetensors_bytes(&bytes, "round trip", &LoadOptions::default(), None)
            .expect("an accepted model reloads");
    assert_eq!(again.config(), model.config());
    let bits = |tensors: Vec<(String, trm_wgpu::Tensor)>| -> Vec<(String, Vec<usize>, Vec<u32>)> {
        tensors
            .into_iter()
            .map(|(name, t)| (name, t.shape, t.data.iter().map(|v| v.to_bits()).collect()))
            .collect()
    };
    assert!(
        bits(again.named_tensors()) == bits(tensors),
        "the round trip changed the model"
    );
}

/// Fuzz target `model_file`: a model file in the project's format
/// (safetensors header, configuration JSON in the metadata, tensors),
/// loaded strictly and leniently.
pub fn model_file(data: &[u8]) -> Vec<Result<(), TrmError>> {
    [false, true]
        .into_iter()
        .map(|allow| {
            let options = LoadOptions::default().allow_unexpected(allow);
            TrmModel::from_safetensors_bytes(data, "fuzz input", &options, None)
                .map(|model| check_model(&model))
        })
        .collect()
}

/// The memory limit of the `engine` target's CPU engines: a model of a
/// few KiB has no right to more, and libFuzzer refuses any allocation
/// beyond 512 MiB (`fuzz/run.sh`).
pub const ENGINE_MEMORY_LIMIT: u64 = 64 << 20;

/// The most FLOPs of the one ACT step the `engine` target runs: a valid
/// model may ask for 2^40 network calls an ACT step (compute time is not
/// bounded, FUZZING.md), which no fuzzer can wait for. A costlier model
/// still gets its engine built (where the size checks are), not run.
pub const ENGINE_FLOPS_LIMIT: u64 = 20_000_000;

/// Fuzz target `engine`: the first byte picks how the rest, a model file,
/// is loaded: even, from the bytes (as `model_file`); odd, memory-mapped
/// from a temporary file, where the matrices borrow from the mapping. A
/// model that loads is checked ([`check_model`]), a CPU engine of one thread is built on it under
/// [`ENGINE_MEMORY_LIMIT`] (every size the configuration implies is
/// checked before it is allocated: a model of 200 bytes may claim
/// S = 2^20, terabytes of attention scores) and, within
/// [`ENGINE_FLOPS_LIMIT`], runs one ACT step of a one-puzzle batch, whose
/// outputs must have the configuration's sizes.
pub fn engine(data: &[u8]) -> Vec<Result<(), TrmError>> {
    let Some((&mode, file)) = data.split_first() else {
        return Vec::new();
    };
    let mapped = (mode % 2 == 1).then(|| TempFile::new("engine", file));
    let loaded = match &mapped {
        None => TrmModel::from_safetensors_bytes(file, "fuzz input", &LoadOptions::default(), None)
            .inspect(check_model),
        Some(temp) => TrmModel::load(&temp.0).inspect(check_model),
    };
    vec![loaded.and_then(run_one_act_step)]
}

/// A file in the temporary directory, removed when dropped (after the
/// models mapping it: declared before them).
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(target: &str, bytes: &[u8]) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static RUN: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "trm-fuzz-{target}-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).expect("a temporary file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Builds a one-thread CPU engine on `model` under
/// [`ENGINE_MEMORY_LIMIT`] and, within [`ENGINE_FLOPS_LIMIT`], runs one
/// ACT step of a one-puzzle batch (tokens `0, 1, ...` modulo the
/// vocabulary, puzzle identifier 0).
pub fn run_one_act_step(model: TrmModel) -> Result<(), TrmError> {
    let config = model.config().clone();
    let options = CpuOptions::default()
        .threads(1)
        .memory_limit(ENGINE_MEMORY_LIMIT);
    let mut engine = CpuEngine::with_options(std::sync::Arc::new(model), options)?;
    if config.flops_per_act_step() > ENGINE_FLOPS_LIMIT {
        return Ok(());
    }
    let tokens: Vec<i64> = (0..config.seq_len)
        .map(|i| (i % config.vocab_size) as i64)
        .collect();
    let batch = PuzzleBatch::new(&config, &tokens, None)?;
    let out = engine.solve(&batch, &SolveOptions::default().act_steps(1))?;
    let (seq, state) = (config.seq_len, config.state_len() * config.hidden_size);
    assert_eq!(out.batch, 1);
    assert_eq!(out.logits.len(), seq * config.vocab_size);
    assert_eq!(out.q_halt_logits.len(), 1);
    assert_eq!(out.q_continue_logits.len(), 1);
    assert_eq!((out.z_h.len(), out.z_l.len()), (state, state));
    assert_eq!(out.steps, vec![1]);
    Ok(())
}

/// The `data.pkl` of the tiny model (the seed `ok-pickle-tiny`, after its
/// mode byte), whose storages are [`template_storages`].
pub const TINY_PICKLE: &[u8] = include_bytes!("seeds/official/ok-pickle-tiny");

/// Fuzz target `official`: the first byte chooses what the rest is
/// (modulo 4). 0: a whole `step_N` file (zip archive), converted with the
/// tiny model's `all_config.yaml`, with and without its `dataset.json`.
/// 1: a `data.pkl` alone, run against [`template_storages`] (the zip's CRCs
/// would otherwise stop most mutations of the pickle at the door). 2: an
/// `all_config.yaml`, and 3: a `dataset.json`, for the tiny model's
/// weights.
pub fn official(data: &[u8]) -> Vec<Result<(), TrmError>> {
    let Some((&mode, rest)) = data.split_first() else {
        return Vec::new();
    };
    let options = ConvertOptions::default();
    let mut outcomes = Vec::new();
    if mode % 4 >= 2 {
        let tiny = TINY_PICKLE.get(1..).unwrap_or_default();
        let text = String::from_utf8_lossy(rest);
        let (yaml, dataset) = if mode % 4 == 2 {
            (text.as_ref(), Some(TINY_DATASET))
        } else {
            (TINY_YAML, Some(text.as_ref()))
        };
        for dataset in [dataset, None] {
            let converted = OfficialCheckpoint::from_parts(tiny, template_storages().clone(), "t")
                .and_then(|mut checkpoint| {
                    official::convert_checkpoint(
                        &mut checkpoint,
                        yaml,
                        "all_config.yaml",
                        dataset.map(|d| (d, "dataset.json")),
                        &options,
                    )
                });
            outcomes.push(converted.map(|conversion| check_model(&conversion.model)));
        }
    } else if mode % 2 == 0 {
        for dataset in [Some(TINY_DATASET), None] {
            outcomes.push(
                official::convert_bytes(rest.to_vec(), TINY_YAML, dataset, &options)
                    .map(|conversion| check_model(&conversion.model)),
            );
        }
    } else {
        let parts = template_storages().clone();
        let opened = OfficialCheckpoint::from_parts(rest, parts, "fuzz data.pkl");
        match opened {
            Err(e) => outcomes.push(Err(e)),
            Ok(mut checkpoint) => {
                let shapes: Vec<Vec<usize>> = checkpoint
                    .tensors()
                    .iter()
                    .map(|t| t.shape.clone())
                    .collect();
                outcomes.push(checkpoint.to_state_dict().map(|tensors| {
                    assert_eq!(tensors.len(), shapes.len());
                    for ((name, tensor), shape) in tensors.iter().zip(&shapes) {
                        assert_eq!(&tensor.shape, shape, "tensor {name}");
                        let n: usize = shape.iter().product();
                        assert_eq!(tensor.data.len(), n, "tensor {name}");
                    }
                }));
                outcomes.push(
                    official::convert_checkpoint(
                        &mut checkpoint,
                        TINY_YAML,
                        "all_config.yaml",
                        None,
                        &options,
                    )
                    .map(|conversion| check_model(&conversion.model)),
                );
            }
        }
    }
    outcomes
}

/// Fuzz target `batch`: `trm run`'s input file, read for two models (the
/// official Sudoku sizes, and the tiny model with two puzzle ids), without
/// a memory limit and with a 1 MiB one.
pub fn batch(data: &[u8]) -> Vec<Result<(), TrmError>> {
    let configs = [
        TrmConfig::from_json(SUDOKU_CONFIG_JSON).expect("the Sudoku configuration is valid"),
        tiny_config(),
    ];
    let mut outcomes = Vec::new();
    for config in &configs {
        for limit in [u64::MAX, 1 << 20] {
            outcomes.push(
                PuzzleBatch::from_safetensors_bytes_with_limit(data, "fuzz input", config, limit)
                    .map(|batch| {
                        assert!(!batch.is_empty());
                        assert_eq!(batch.tokens().len(), batch.len() * config.seq_len);
                        assert_eq!(batch.puzzle_ids().len(), batch.len());
                        assert!(
                            batch
                                .tokens()
                                .iter()
                                .all(|&t| (t as usize) < config.vocab_size)
                        );
                        assert!(
                            batch
                                .puzzle_ids()
                                .iter()
                                .all(|&p| (p as usize) < config.num_puzzle_identifiers)
                        );
                        assert!(PuzzleBatch::state_bytes(config, batch.len()) <= limit);
                    }),
            );
        }
    }
    outcomes
}

/// The files of a built ARC data set (and a predictions file) that the
/// `arc` target replaces, by the input's first byte.
pub const ARC_FILES: [&str; 6] = [
    "test/all__inputs.npy",
    "test/all__puzzle_indices.npy",
    "test/all__puzzle_identifiers.npy",
    "identifiers.json",
    "test_puzzles.json",
    "predictions.safetensors",
];

/// The ARC fixture (`tests/data/arc`), from the main crate or the fuzz crate.
fn arc_fixture() -> std::path::PathBuf {
    let here = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for root in [here.clone(), here.join("..")] {
        let dir = root.join("tests/data/arc");
        if dir.exists() {
            return dir;
        }
    }
    panic!("tests/data/arc is missing");
}

/// The ARC fixture's files a data set and its predictions need, by their
/// paths under it, read once.
fn arc_fixture_files() -> &'static [(&'static str, Vec<u8>)] {
    static FILES: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let fixture = arc_fixture();
        [
            "data/test/all__inputs.npy",
            "data/test/all__labels.npy",
            "data/test/all__puzzle_indices.npy",
            "data/test/all__puzzle_identifiers.npy",
            "data/test/all__group_indices.npy",
            "data/test/dataset.json",
            "data/identifiers.json",
            "data/test_puzzles.json",
            "predictions.safetensors",
        ]
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(fixture.join(name)).expect("the ARC fixture reads");
            (name, bytes)
        })
        .collect()
    })
}

/// `trm arc-eval`'s readers: the input's first byte picks one file of the
/// ARC fixture ([`ARC_FILES`]), the rest of it replaces that file in a
/// copy; the data set is opened and the predictions voted. Whatever is
/// accepted must vote without a panic into results within [0, 1].
pub fn arc(data: &[u8]) -> Vec<Result<(), TrmError>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let Some((&which, payload)) = data.split_first() else {
        return Vec::new();
    };
    let replaced = ARC_FILES[usize::from(which) % ARC_FILES.len()];
    let dir = std::env::temp_dir().join(format!(
        "trm-fuzz-arc-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    // written from memory: fs::copy can fail with EINTR under libFuzzer's
    // timer signal (a false finding, FUZZING.md), where write_all retries
    for (name, bytes) in arc_fixture_files() {
        let to = dir.join(name);
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("a temp dir");
        std::fs::write(to, bytes).expect("the fixture copies");
    }
    let predictions = dir.join("predictions.safetensors");
    let target = if replaced == "predictions.safetensors" {
        predictions.clone()
    } else {
        dir.join("data").join(replaced)
    };
    std::fs::write(&target, payload).expect("a temp file");

    let outcome = (|| -> Result<(), TrmError> {
        let dataset = trm_wgpu::arc::ArcDataset::open(dir.join("data"))?;
        let preds = trm_wgpu::arc::Predictions::open(&predictions)?;
        let mut voter = trm_wgpu::arc::voter_for(&dataset, None)?;
        for i in 0..preds.len() {
            let (id, input, pred, q) = preds.get(i)?;
            voter.add(id, &input, &pred, q)?;
        }
        for i in 0..dataset.len() {
            dataset.example(i)?;
        }
        let results = voter.results(&[1, 2, 1000]);
        for (_, v) in &results.pass_at {
            assert!((0.0..=1.0).contains(v), "pass@k {v}");
        }
        let _ = results.submission.to_json();
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    vec![outcome]
}
