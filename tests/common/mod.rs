//! Shared test helpers: golden cases, tolerances with the worst element
//! named, the test data folder.
#![allow(dead_code)]

pub mod f64_reference;
pub mod golden;
pub mod gpu;
pub mod gpu_checks;
pub mod torch_save;

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::{Carry, Engine, PuzzleBatch, SolveOptions, SolveOutput, TrmConfig, TrmModel};

/// The repository root: where this crate was built, or the working
/// directory when the test binary runs elsewhere (`bench/device.sh` carries
/// prebuilt test binaries to a machine with a GPU).
pub fn repo_dir() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if built.join("tests/data").exists() {
        built
    } else {
        std::env::current_dir().unwrap_or(built)
    }
}

/// `tests/data` of this repository.
pub fn data_dir() -> PathBuf {
    repo_dir().join("tests/data")
}

/// The `trm` binary: `TRM_BIN` when set (prebuilt binaries on another
/// machine), else the one cargo built with the tests.
pub fn trm_bin() -> PathBuf {
    std::env::var_os("TRM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_trm")))
}

/// Runs the `trm` binary ([`trm_bin`]) with `args`.
pub fn trm(args: &[&str]) -> std::process::Output {
    trm_env(args, &[])
}

/// Runs the `trm` binary with `args` and extra environment variables.
pub fn trm_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(trm_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the trm binary runs")
}

/// A failed `trm` run that said why on exactly one `error: ` line of stderr
/// containing `needle`, and did not panic.
pub fn assert_one_error_line(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(needle), "`{needle}` not in: {stderr}");
}

/// A golden case: the model, its batch, and every stored tensor as f32.
pub struct Case {
    pub model: TrmModel,
    pub batch: PuzzleBatch,
    pub tensors: HashMap<String, Vec<f32>>,
    pub steps: usize,
}

impl Case {
    pub fn tensor(&self, name: &str) -> &[f32] {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("golden case lacks `{name}`"))
    }
}

fn read_f32(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    match view.dtype() {
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::I32 => view
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

/// Loads `NAME.model.safetensors` and `NAME.case.safetensors` from `dir`.
pub fn load_case_from(dir: &std::path::Path, name: &str) -> Case {
    let model = TrmModel::load(dir.join(format!("{name}.model.safetensors")))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let bytes = std::fs::read(dir.join(format!("{name}.case.safetensors"))).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let tensors: HashMap<String, Vec<f32>> = file
        .iter()
        .map(|(n, v)| (n.to_string(), read_f32(&v)))
        .collect();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let steps: usize = meta.metadata().as_ref().unwrap()["steps"].parse().unwrap();
    let tokens: Vec<i64> = tensors["inputs"].iter().map(|&v| v as i64).collect();
    let ids: Vec<i64> = tensors["puzzle_identifiers"]
        .iter()
        .map(|&v| v as i64)
        .collect();
    let batch = PuzzleBatch::new(model.config(), &tokens, Some(&ids)).unwrap();
    Case {
        model,
        batch,
        tensors,
        steps,
    }
}

/// A golden case copied into `tests/data/golden`.
pub fn load_case(name: &str) -> Case {
    load_case_from(&data_dir().join("golden"), name)
}

/// Agreement of two tensors.
#[derive(Debug, Clone, Copy)]
pub struct Diff {
    /// `||a - b|| / ||b||`
    pub rel_l2: f64,
    /// `max |a - b|`
    pub max_abs: f64,
    /// Index of the element with the largest error.
    pub worst: usize,
}

/// Relative L2 error and max error of `actual` against `expected`; a NaN
/// anywhere in `actual` counts as infinitely wrong at its index.
pub fn diff(actual: &[f32], expected: &[f32]) -> Diff {
    diff_floor(actual, expected, 0.0)
}

/// As [`diff`], with the norm of `expected` taken as at least
/// `floor * sqrt(n)`: for short vectors that may sit near zero by chance
/// (the two q logits), relative to the scale they live on.
pub fn diff_floor(actual: &[f32], expected: &[f32], floor: f64) -> Diff {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let (mut num, mut den, mut max_abs, mut worst) = (0f64, 0f64, 0f64, 0usize);
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = if a.is_finite() {
            (a as f64 - e as f64).abs()
        } else {
            f64::INFINITY
        };
        if err > max_abs || (i == 0 && err.is_nan()) {
            max_abs = err;
            worst = i;
        }
        num += err * err;
        den += (e as f64) * (e as f64);
    }
    let den = den.max(floor * floor * expected.len() as f64);
    Diff {
        rel_l2: (num / den.max(1e-300)).sqrt(),
        max_abs,
        worst,
    }
}

/// Asserts `rel_l2 <= rel_tol` and `max_abs <= abs_tol`, naming the worst
/// element (its value on both sides) on failure.
pub fn assert_close(
    what: &str,
    actual: &[f32],
    expected: &[f32],
    rel_tol: f64,
    abs_tol: f64,
) -> Diff {
    assert_close_floor(what, actual, expected, rel_tol, abs_tol, 0.0)
}

/// [`assert_close`] with the norm of `expected` floored at `floor * sqrt(n)`
/// (see [`diff_floor`]).
pub fn assert_close_floor(
    what: &str,
    actual: &[f32],
    expected: &[f32],
    rel_tol: f64,
    abs_tol: f64,
    floor: f64,
) -> Diff {
    let d = diff_floor(actual, expected, floor);
    eprintln!(
        "{what}: rel L2 {:.2e}, max {:.2e} at {}",
        d.rel_l2, d.max_abs, d.worst
    );
    assert!(
        d.rel_l2 <= rel_tol && d.max_abs <= abs_tol,
        "{what}: relative L2 error {:.3e} (limit {rel_tol:.0e}), max error {:.3e} (limit {abs_tol:.0e}) at index {}: got {}, expected {}",
        d.rel_l2,
        d.max_abs,
        d.worst,
        actual[d.worst],
        expected[d.worst]
    );
    d
}

/// A tensor to write in a test file: name, dtype, shape, little-endian bytes.
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    pub fn f32(name: &str, shape: Vec<usize>, data: &[f32]) -> Self {
        RawTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
    pub fn i32(name: &str, shape: Vec<usize>, data: &[i32]) -> Self {
        RawTensor {
            name: name.into(),
            dtype: Dtype::I32,
            shape,
            bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
    pub fn i64(name: &str, shape: Vec<usize>, data: &[i64]) -> Self {
        RawTensor {
            name: name.into(),
            dtype: Dtype::I64,
            shape,
            bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Serialises tensors (and optional metadata) to safetensors bytes.
pub fn safetensors_bytes(
    tensors: &[RawTensor],
    metadata: Option<HashMap<String, String>>,
) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, metadata).unwrap()
}

/// A model file from named tensors and a config JSON.
pub fn model_bytes(tensors: &[RawTensor], config_json: &str) -> Vec<u8> {
    safetensors_bytes(
        tensors,
        Some(HashMap::from([(
            "config".to_string(),
            config_json.to_string(),
        )])),
    )
}

/// The tensors of a model, as test tensors.
pub fn raw_tensors(model: &TrmModel) -> Vec<RawTensor> {
    model
        .named_tensors()
        .into_iter()
        .map(|(name, t)| RawTensor::f32(&name, t.shape, &t.data))
        .collect()
}

/// A fresh temporary directory under the target folder, removed by the OS
/// eventually; unique per call.
pub fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("trm-test-{}-{tag}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reads a float tensor of an output file.
pub fn read_output_f32(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<f32>) {
    let file = SafeTensors::deserialize(bytes).unwrap();
    let view = file
        .tensor(name)
        .unwrap_or_else(|_| panic!("output lacks `{name}`"));
    (view.shape().to_vec(), read_f32(&view))
}

/// A seed from the clock, printed; `TRM_TEST_SEED` replays one.
pub fn test_seed() -> u64 {
    let seed = std::env::var("TRM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("seed {seed} (replay with TRM_TEST_SEED={seed})");
    seed
}

/// Runs `steps` ACT steps of `batch` one solve each, every one from the
/// carry the one before reached (the initial carry first), and calls
/// `each(step, output)` with the step counted from 1; returns the last
/// output.
pub fn one_act_step_at_a_time(
    engine: &mut impl Engine,
    batch: &PuzzleBatch,
    steps: usize,
    mut each: impl FnMut(usize, &SolveOutput),
) -> SolveOutput {
    let one = SolveOptions::default().act_steps(1);
    let mut carry: Option<Carry> = None;
    let mut last = None;
    for step in 1..=steps {
        let out = engine.solve_from(batch, carry.as_ref(), &one).unwrap();
        each(step, &out);
        carry = Some(out.carry());
        last = Some(out);
    }
    last.expect("at least one ACT step")
}

/// Random tokens `[puzzles, seq_len]`, then random puzzle ids `[puzzles]`,
/// drawn from `rng`.
pub fn random_inputs(
    rng: &mut SplitMix64,
    config: &TrmConfig,
    puzzles: usize,
) -> (Vec<i64>, Vec<i64>) {
    let tokens: Vec<i64> = (0..puzzles * config.seq_len)
        .map(|_| rng.below(config.vocab_size as u64) as i64)
        .collect();
    let ids: Vec<i64> = (0..puzzles)
        .map(|_| rng.below(config.num_puzzle_identifiers as u64) as i64)
        .collect();
    (tokens, ids)
}

/// A batch of `puzzles` random puzzles (tokens and puzzle ids) drawn from
/// `rng`.
pub fn random_batch_from(rng: &mut SplitMix64, config: &TrmConfig, puzzles: usize) -> PuzzleBatch {
    let (tokens, ids) = random_inputs(rng, config, puzzles);
    PuzzleBatch::new(config, &tokens, Some(&ids)).unwrap()
}

/// Writes `model` and an input file of `batch` random puzzles (int32
/// `inputs` and `puzzle_identifiers`) under `dir`, for `trm run`; returns
/// both paths and the batch.
pub fn write_run_case(
    dir: &std::path::Path,
    model: &TrmModel,
    batch: usize,
    seed: u64,
) -> (PathBuf, PathBuf, PuzzleBatch) {
    let c = model.config();
    let (tokens, ids) = random_inputs(&mut SplitMix64::new(seed), c, batch);
    let int32 = |v: &[i64]| v.iter().map(|&t| t as i32).collect::<Vec<i32>>();
    let model_path = dir.join("model.safetensors");
    model.save(&model_path).unwrap();
    let input_path = dir.join("input.safetensors");
    let bytes = safetensors_bytes(
        &[
            RawTensor::i32("inputs", vec![batch, c.seq_len], &int32(&tokens)),
            RawTensor::i32("puzzle_identifiers", vec![batch], &int32(&ids)),
        ],
        None,
    );
    std::fs::write(&input_path, bytes).unwrap();
    let batch = PuzzleBatch::new(c, &tokens, Some(&ids)).unwrap();
    (model_path, input_path, batch)
}

/// `trm run --stats` of `model` on `input` with `backend`, writing
/// `output`; returns the output file's bytes and the stats line (the last
/// line of stdout, one JSON object).
pub fn trm_run_stats(
    model: &std::path::Path,
    input: &std::path::Path,
    output: &std::path::Path,
    backend: &str,
    env: &[(&str, &str)],
) -> (Vec<u8>, serde_json::Value) {
    let out = trm_env(
        &[
            "run",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--backend",
            backend,
            "--stats",
        ],
        env,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "trm run --backend {backend}: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or("");
    let stats: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the last line is not one JSON object ({e}): {last}"));
    eprintln!("{stats}");
    (std::fs::read(output).unwrap(), stats)
}

/// PyTorch's answers of sudoku-easy's sample puzzles
/// (`data/sudoku-easy/reference_answers.safetensors`): `answer.step{k}`
/// (tokens) and `q_halt_logits.step{k}`, as f32.
pub fn sudoku_easy_reference() -> HashMap<String, Vec<f32>> {
    let path = repo_dir().join("data/sudoku-easy/reference_answers.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| match view.dtype() {
                    Dtype::I32 => i32::from_le_bytes(b.try_into().unwrap()) as f32,
                    _ => f32::from_le_bytes(b.try_into().unwrap()),
                })
                .collect();
            (name.to_string(), values)
        })
        .collect()
}

/// The header of an answer log written by hand in a test: settings no
/// model run has (resuming it with a model is refused).
pub fn test_log_header() -> trm_wgpu::arc::LogHeader {
    trm_wgpu::arc::LogHeader::new(
        trm_wgpu::shard::RunSettings {
            model_sha256: "0".repeat(64),
            precision: "f32".into(),
            act_steps: 16,
            early_halt: false,
            activations: "f32".into(),
            data_sha256: "0".repeat(64),
        },
        None,
        std::path::Path::new("written-by-a-test"),
    )
}

/// A model whose configuration claims a million tokens per puzzle while
/// its file holds a few KiB: an attention model with RoPE or without
/// position encodings has no tensor whose shape depends on `seq_len`
/// (hidden size 8, one head). Its S^2 attention scores would take 4 TB.
pub fn million_token_model(pos: trm_wgpu::PosEncodings) -> TrmModel {
    let config = TrmConfig::from_json(&format!(
        r#"{{"seq_len": 1000000, "vocab_size": 4, "num_puzzle_identifiers": 1,
            "hidden_size": 8, "expansion": 4, "num_heads": 1, "H_cycles": 1,
            "L_cycles": 1, "L_layers": 1, "halt_max_steps": 1, "mlp_t": false,
            "pos_encodings": "{}", "puzzle_emb_ndim": 0}}"#,
        pos.as_str()
    ))
    .unwrap();
    TrmModel::random(config, 29, 0.5).unwrap()
}

/// Runs `trm` with `args`, checking that it ends within `seconds` with
/// exit code 1 and one `error: ` line containing `needle`.
pub fn assert_refused_in_seconds(args: &[&str], needle: &str, seconds: f64) {
    let started = std::time::Instant::now();
    let out = trm(args);
    let elapsed = started.elapsed().as_secs_f64();
    assert_one_error_line(&out, needle);
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    assert!(elapsed < seconds, "{args:?} took {elapsed:.1} s");
    eprintln!("{args:?}: refused in {elapsed:.2} s");
}
