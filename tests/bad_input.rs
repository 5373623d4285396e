//! Every bad input ends in a typed error, never a panic: checkpoints,
//! configurations, input batches.

mod common;

use common::{RawTensor, model_bytes, raw_tensors, safetensors_bytes};
use trm_wgpu::{LoadOptions, PosEncodings, PuzzleBatch, TrmConfig, TrmError, TrmModel};

fn small_config() -> TrmConfig {
    TrmConfig {
        seq_len: 9,
        vocab_size: 6,
        num_puzzle_identifiers: 2,
        hidden_size: 12,
        expansion: 2.0,
        num_heads: 2,
        h_cycles: 2,
        l_cycles: 2,
        l_layers: 2,
        h_layers: 0,
        arch: Default::default(),
        halt_max_steps: 2,
        mlp_t: true,
        pos_encodings: PosEncodings::None,
        puzzle_emb_ndim: 12,
        puzzle_emb_len: 0,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
    }
}

fn model() -> TrmModel {
    TrmModel::random(small_config(), 7, 0.5).unwrap()
}

fn load(bytes: &[u8]) -> Result<TrmModel, TrmError> {
    TrmModel::from_safetensors_bytes(bytes, "test", &LoadOptions::default(), None)
}

/// Loads `tensors` saved with the small configuration.
fn load_tensors(tensors: &[RawTensor]) -> Result<TrmModel, TrmError> {
    load(&model_bytes(tensors, &small_config().to_json()))
}

/// The tensors of [`model`], the one named `name` changed by `edit`.
fn with_tensor(name: &str, edit: impl FnOnce(&mut RawTensor)) -> Vec<RawTensor> {
    let mut tensors = raw_tensors(&model());
    let t = tensors.iter_mut().find(|t| t.name == name).unwrap();
    edit(t);
    tensors
}

#[test]
fn a_valid_file_round_trips() {
    let m = model();
    let loaded = load(&m.to_safetensors_bytes().unwrap()).unwrap();
    assert_eq!(loaded.named_tensors(), m.named_tensors());
    assert_eq!(loaded.config(), m.config());
}

#[test]
fn unreadable_file() {
    let err = TrmModel::load("/nonexistent/model.safetensors").unwrap_err();
    assert!(matches!(err, TrmError::Io { .. }), "{err}");
}

#[test]
fn truncated_file() {
    let bytes = model().to_safetensors_bytes().unwrap();
    for cut in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        let err = load(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(err, TrmError::Safetensors { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn bad_header() {
    let mut bytes = model().to_safetensors_bytes().unwrap();
    bytes[8] = b'['; // the JSON header must be an object
    assert!(matches!(
        load(&bytes).unwrap_err(),
        TrmError::Safetensors { .. }
    ));
    let garbage = b"definitely not a safetensors file at all".to_vec();
    assert!(matches!(
        load(&garbage).unwrap_err(),
        TrmError::Safetensors { .. }
    ));
}

#[test]
fn missing_config_metadata() {
    let bytes = safetensors_bytes(&raw_tensors(&model()), None);
    let err = load(&bytes).unwrap_err();
    assert!(matches!(err, TrmError::Config(_)), "{err}");
    // ... unless the caller supplies one
    let loaded = TrmModel::from_safetensors_bytes(
        &bytes,
        "test",
        &LoadOptions::default(),
        Some(small_config()),
    );
    assert!(loaded.is_ok());
}

#[test]
fn invalid_config_json() {
    let tensors = raw_tensors(&model());
    let err = load(&model_bytes(&tensors, "{not json")).unwrap_err();
    assert!(matches!(err, TrmError::Config(_)), "{err}");
    let mut json: serde_json::Value = serde_json::from_str(&small_config().to_json()).unwrap();
    json["L_cycles"] = 0.into();
    let err = load(&model_bytes(&tensors, &json.to_string())).unwrap_err();
    assert!(matches!(err, TrmError::Config(_)), "{err}");
}

#[test]
fn missing_tensor() {
    let tensors: Vec<RawTensor> = raw_tensors(&model())
        .into_iter()
        .filter(|t| t.name != "inner.L_level.layers.1.mlp.down_proj.weight")
        .collect();
    let err = load_tensors(&tensors).unwrap_err();
    match err {
        TrmError::MissingTensor { name, expected } => {
            assert_eq!(name, "inner.L_level.layers.1.mlp.down_proj.weight");
            assert_eq!(expected, vec![12, 256]);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn misshapen_tensor() {
    let tensors = with_tensor("inner.lm_head.weight", |t| {
        t.shape = vec![12, 6]; // transposed
    });
    let err = load_tensors(&tensors).unwrap_err();
    assert!(
        matches!(err, TrmError::TensorShape { ref name, .. } if name == "inner.lm_head.weight"),
        "{err}"
    );
}

#[test]
fn config_contradicting_the_tensors() {
    let tensors = raw_tensors(&model());
    let mut config = small_config();
    config.hidden_size = 16; // every tensor says 12
    config.puzzle_emb_ndim = 16;
    let err = load(&model_bytes(&tensors, &config.to_json())).unwrap_err();
    assert!(matches!(err, TrmError::TensorShape { .. }), "{err}");
    let mut config = small_config();
    config.l_layers = 3; // the file has two blocks
    let err = load(&model_bytes(&tensors, &config.to_json())).unwrap_err();
    assert!(matches!(err, TrmError::MissingTensor { .. }), "{err}");
    let mut config = small_config();
    config.mlp_t = false; // attention needs qkv_proj
    let err = load(&model_bytes(&tensors, &config.to_json())).unwrap_err();
    assert!(matches!(err, TrmError::MissingTensor { .. }), "{err}");
}

#[test]
fn unexpected_tensors_are_reported() {
    let mut tensors = raw_tensors(&model());
    tensors.push(RawTensor::f32("inner.extra.weight", vec![2], &[1.0, 2.0]));
    let bytes = model_bytes(&tensors, &small_config().to_json());
    let err = load(&bytes).unwrap_err();
    assert!(
        matches!(err, TrmError::UnexpectedTensors { ref names } if names == &["inner.extra.weight"]),
        "{err}"
    );
    let allowed = TrmModel::from_safetensors_bytes(
        &bytes,
        "test",
        &LoadOptions::default().allow_unexpected(true),
        None,
    )
    .unwrap();
    assert_eq!(allowed.ignored_tensors(), ["inner.extra.weight"]);
}

#[test]
fn prefixed_and_half_precision_tensors_load() {
    let m = model();
    let tensors: Vec<RawTensor> = m
        .named_tensors()
        .into_iter()
        .map(|(name, t)| {
            let name = format!("_orig_mod.model.{name}");
            if name.ends_with("_init") {
                // bf16 as official checkpoints store H_init / L_init
                let bytes = t
                    .data
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect();
                RawTensor {
                    name,
                    dtype: safetensors::Dtype::BF16,
                    shape: t.shape,
                    bytes,
                }
            } else if name.contains("lm_head") {
                let bytes = t
                    .data
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect();
                RawTensor {
                    name,
                    dtype: safetensors::Dtype::F16,
                    shape: t.shape,
                    bytes,
                }
            } else {
                RawTensor::f32(&name, t.shape, &t.data)
            }
        })
        .collect();
    let loaded = load_tensors(&tensors).unwrap();
    let expected: Vec<f32> = m
        .weights()
        .h_init
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_f32())
        .collect();
    assert_eq!(loaded.weights().h_init, expected);
    let expected: Vec<f32> = m
        .weights()
        .lm_head
        .to_f32()
        .iter()
        .map(|v| half::f16::from_f32(*v).to_f32())
        .collect();
    // a network stored at mixed precisions is widened to f32, exactly
    assert_eq!(loaded.precision(), trm_wgpu::Precision::F32);
    assert_eq!(loaded.weights().lm_head.to_f32(), expected);
}

#[test]
fn duplicate_names_after_prefix_stripping() {
    let mut tensors = raw_tensors(&model());
    let t = &tensors[0];
    let dup = RawTensor::f32(
        &format!("_orig_mod.model.{}", t.name),
        t.shape.clone(),
        &vec![0.0; t.bytes.len() / 4],
    );
    tensors.push(dup);
    let err = load_tensors(&tensors).unwrap_err();
    assert!(matches!(err, TrmError::DuplicateTensor { .. }), "{err}");
}

#[test]
fn integer_or_non_finite_weights() {
    let tensors = with_tensor("inner.q_head.bias", |t| {
        *t = RawTensor::i32("inner.q_head.bias", vec![2], &[1, 2]);
    });
    let err = load_tensors(&tensors).unwrap_err();
    assert!(matches!(err, TrmError::TensorDtype { .. }), "{err}");
    let tensors = with_tensor("inner.q_head.bias", |t| {
        *t = RawTensor::f32("inner.q_head.bias", vec![2], &[1.0, f32::NAN]);
    });
    let err = load_tensors(&tensors).unwrap_err();
    assert!(matches!(err, TrmError::NonFinite { index: 1, .. }), "{err}");
}

/// An int8 matrix whose finite scale overflows when multiplied by its
/// bytes (the engine fuzz target's first finding) is refused at load as
/// non-finite, from bytes and through a mapping alike.
#[test]
fn int8_scales_that_overflow_are_non_finite() {
    let model = model().to_precision(trm_wgpu::Precision::Int8).unwrap();
    let mut bytes = model.to_safetensors_bytes().unwrap();
    let (at, cols) = {
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let scales = file.tensor("inner.lm_head.weight_scale").unwrap();
        let cols = file.tensor("inner.lm_head.weight").unwrap().shape()[1];
        (
            scales.data().as_ptr() as usize - bytes.as_ptr() as usize,
            cols,
        )
    };
    // row 1's largest byte is +-127: 127 x 1e37 is beyond f32::MAX
    bytes[at + 4..at + 8].copy_from_slice(&1e37f32.to_le_bytes());
    let err = load(&bytes).unwrap_err();
    assert!(
        matches!(&err, TrmError::NonFinite { name, index } if name == "inner.lm_head.weight" && index / cols == 1),
        "{err}"
    );
    let path = common::temp_dir("int8-scale").join("model.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let err = TrmModel::load(&path).unwrap_err();
    assert!(matches!(err, TrmError::NonFinite { .. }), "{err}");
}

fn input_bytes(tensors: &[RawTensor]) -> Vec<u8> {
    safetensors_bytes(tensors, None)
}

fn read_batch(tensors: &[RawTensor]) -> Result<PuzzleBatch, TrmError> {
    PuzzleBatch::from_safetensors_bytes(&input_bytes(tensors), "input", &small_config())
}

#[test]
fn input_in_both_integer_types() {
    let tokens: Vec<i32> = (0..18).map(|i| i % 6).collect();
    let a = read_batch(&[RawTensor::i32("inputs", vec![2, 9], &tokens)]).unwrap();
    let tokens64: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let b = read_batch(&[
        RawTensor::i64("inputs", vec![2, 9], &tokens64),
        RawTensor::i64("puzzle_identifiers", vec![2], &[0, 0]),
    ])
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
}

#[test]
fn token_id_out_of_range() {
    let mut tokens = vec![1i32; 18];
    tokens[13] = 6;
    match read_batch(&[RawTensor::i32("inputs", vec![2, 9], &tokens)]).unwrap_err() {
        TrmError::TokenOutOfRange {
            puzzle,
            position,
            value,
            vocab_size,
        } => {
            assert_eq!((puzzle, position, value, vocab_size), (1, 4, 6, 6));
        }
        other => panic!("{other}"),
    }
    tokens[13] = -1;
    assert!(matches!(
        read_batch(&[RawTensor::i32("inputs", vec![2, 9], &tokens)]).unwrap_err(),
        TrmError::TokenOutOfRange { value: -1, .. }
    ));
}

#[test]
fn puzzle_id_out_of_range() {
    let tokens = vec![1i32; 18];
    let err = read_batch(&[
        RawTensor::i32("inputs", vec![2, 9], &tokens),
        RawTensor::i32("puzzle_identifiers", vec![2], &[0, 2]),
    ])
    .unwrap_err();
    assert!(
        matches!(
            err,
            TrmError::PuzzleIdOutOfRange {
                puzzle: 1,
                value: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn wrong_input_rank_shape_or_dtype() {
    let tokens = vec![1i32; 18];
    for bad in [
        vec![RawTensor::i32("inputs", vec![18], &tokens)],
        vec![RawTensor::i32("inputs", vec![1, 2, 9], &tokens)],
        vec![RawTensor::i32("inputs", vec![3, 6], &tokens)],
        vec![RawTensor::f32("inputs", vec![2, 9], &[1.0; 18])],
        vec![RawTensor::i32("tokens", vec![2, 9], &tokens)],
        vec![
            RawTensor::i32("inputs", vec![2, 9], &tokens),
            RawTensor::i32("puzzle_identifiers", vec![3], &[0, 0, 0]),
        ],
        vec![
            RawTensor::i32("inputs", vec![2, 9], &tokens),
            RawTensor::f32("puzzle_identifiers", vec![2], &[0.0, 0.0]),
        ],
        vec![RawTensor::i32("inputs", vec![0, 9], &[])],
    ] {
        let err = read_batch(&bad).unwrap_err();
        assert!(
            matches!(err, TrmError::Input(_) | TrmError::TensorDtype { .. }),
            "{err}"
        );
    }
}

/// A small HRM: 2 L-level blocks, 3 H-level ones.
fn hrm_config() -> TrmConfig {
    TrmConfig {
        arch: trm_wgpu::Arch::Hrm,
        h_layers: 3,
        ..small_config()
    }
}

/// HRM checkpoints get the errors TRM ones get, for either level: a
/// missing, extra or misshapen H- or L-level tensor, a TRM configuration
/// over HRM tensors, an HRM configuration without H_layers or with a
/// puzzle placement HRM does not have.
#[test]
fn bad_hrm_checkpoints_are_refused_with_typed_errors() {
    let model = TrmModel::random(hrm_config(), 3, 0.5).unwrap();
    let json = hrm_config().to_json();
    let good = raw_tensors(&model);
    let load_hrm = |tensors: &[RawTensor]| load(&model_bytes(tensors, &json));
    assert_eq!(
        load_hrm(&good).unwrap().named_tensors(),
        model.named_tensors()
    );
    for level in ["H_level.layers.2", "L_level.layers.1"] {
        let name = format!("inner.{level}.mlp.down_proj.weight");
        let missing: Vec<RawTensor> = raw_tensors(&model)
            .into_iter()
            .filter(|t| t.name != name)
            .collect();
        let err = load_hrm(&missing).unwrap_err();
        assert!(
            matches!(&err, TrmError::MissingTensor { name: n, .. } if *n == name),
            "{err}"
        );
        let mut misshapen = raw_tensors(&model);
        let t = misshapen.iter_mut().find(|t| t.name == name).unwrap();
        t.shape = vec![t.shape[1], t.shape[0]];
        let err = load_hrm(&misshapen).unwrap_err();
        assert!(
            matches!(&err, TrmError::TensorShape { name: n, .. } if *n == name),
            "{err}"
        );
    }
    // a fourth H-level block the configuration does not have
    let mut extra = raw_tensors(&model);
    let block = "inner.H_level.layers.3.mlp.down_proj.weight";
    let copy = extra
        .iter()
        .find(|t| t.name.ends_with("H_level.layers.0.mlp.down_proj.weight"))
        .unwrap();
    extra.push(RawTensor {
        name: block.into(),
        dtype: copy.dtype,
        shape: copy.shape.clone(),
        bytes: copy.bytes.clone(),
    });
    let err = load_hrm(&extra).unwrap_err();
    assert!(
        matches!(&err, TrmError::UnexpectedTensors { names } if names == &[block.to_string()]),
        "{err}"
    );
    // the HRM's tensors under a TRM configuration: its H level is unexpected
    let err = load(&model_bytes(&good, &small_config().to_json())).unwrap_err();
    assert!(
        matches!(&err, TrmError::UnexpectedTensors { names } if names.iter().all(|n| n.contains("H_level"))),
        "{err}"
    );
    // configurations HRM cannot have
    let mut no_h: serde_json::Value = serde_json::from_str(&json).unwrap();
    no_h.as_object_mut().unwrap().remove("H_layers");
    for bad in [
        no_h.to_string(),
        json.replace("\"H_layers\":3", "\"H_layers\":0"),
        json.replace("\"puzzle_emb_len\":0", "\"puzzle_emb_len\":2"),
        json.replace("\"arch\":\"hrm\"", "\"arch\":\"gpt\""),
    ] {
        let err = load(&model_bytes(&good, &bad)).unwrap_err();
        assert!(matches!(err, TrmError::Config(_)), "{bad}: {err}");
    }
    // and in code: a TRM with H-level blocks
    let trm_with_h = TrmConfig {
        h_layers: 1,
        ..small_config()
    };
    assert!(matches!(trm_with_h.validate(), Err(TrmError::Config(_))));
}

fn too_large<T>(result: Result<T, TrmError>) -> String {
    match result {
        Err(TrmError::TooLarge(message)) => message,
        Err(other) => panic!("TooLarge expected, got {other}"),
        Ok(_) => panic!("TooLarge expected, got a success"),
    }
}

/// Every size the CPU engine derives from a configuration is checked
/// against its memory limit before anything is allocated or a thread
/// started, with the largest part named: the attention scores of a model
/// claiming a million tokens (4 TB per thread), the RoPE tables, the task
/// scratch, a solve's buffers; and the threads are bounded.
#[test]
fn cpu_engine_sizes_are_checked_before_allocation() {
    use std::sync::Arc;
    use trm_wgpu::{CpuEngine, CpuOptions, Engine, SolveOptions};

    let started = std::time::Instant::now();
    for pos in [PosEncodings::None, PosEncodings::Rope] {
        let model = Arc::new(common::million_token_model(pos));
        let message = too_large(CpuEngine::with_options(
            model,
            CpuOptions::default().threads(3),
        ));
        assert!(
            message.contains("attention scores (3 threads x S^2 floats, S = 1000000)"),
            "{message}"
        );
        assert!(message.contains("10.9 TiB of memory"), "{message}");
    }
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());

    let small = Arc::new(model());
    let threads = trm_wgpu::cpu::MAX_THREADS + 1;
    let message = too_large(CpuEngine::with_options(
        small.clone(),
        CpuOptions::default().threads(threads),
    ));
    assert!(message.contains("4097 CPU threads asked for"), "{message}");
    CpuEngine::with_options(
        small.clone(),
        CpuOptions::default().threads(trm_wgpu::cpu::MAX_THREADS.min(8)),
    )
    .unwrap();

    // each thread's scratch
    let message = too_large(CpuEngine::with_options(
        small.clone(),
        CpuOptions::default().threads(2).memory_limit(64 << 10),
    ));
    assert!(
        message.contains("the task scratch of 2 threads"),
        "{message}"
    );
    assert!(
        message.contains("beyond the limit of 64.0 KiB"),
        "{message}"
    );

    // RoPE tables of S = 300 and head_dim = 1024 (2.3 MiB) outweigh the
    // rest of a thread's memory
    let rope = TrmConfig {
        seq_len: 300,
        hidden_size: 1024,
        num_heads: 1,
        expansion: 0.05,
        h_cycles: 1,
        l_cycles: 1,
        l_layers: 1,
        mlp_t: false,
        pos_encodings: PosEncodings::Rope,
        puzzle_emb_ndim: 0,
        ..small_config()
    };
    let rope = Arc::new(TrmModel::random(rope, 3, 0.5).unwrap());
    let message = too_large(CpuEngine::with_options(
        rope,
        CpuOptions::default().threads(1).memory_limit(1 << 20),
    ));
    assert!(
        message.contains(
            "2.3 MiB of it for RoPE tables (2 x S x head_dim floats, S = 300, head_dim = 1024)"
        ),
        "{message}"
    );

    // a solve's buffers: the engine fits, a batch of 20000 puzzles does not
    let mut engine = CpuEngine::with_options(
        small.clone(),
        CpuOptions::default().threads(1).memory_limit(8 << 20),
    )
    .unwrap();
    let c = small.config();
    let tokens: Vec<i64> = (0..20_000 * c.seq_len)
        .map(|i| (i % c.vocab_size) as i64)
        .collect();
    let batch = PuzzleBatch::new(c, &tokens, None).unwrap();
    let message = too_large(engine.solve(&batch, &SolveOptions::default()));
    assert!(
        message.contains("the states x, y, z and injection of 20000 puzzles"),
        "{message}"
    );
    // and one that does, on the same engine
    let one = PuzzleBatch::new(c, &tokens[..c.seq_len], None).unwrap();
    engine.solve(&one, &SolveOptions::default()).unwrap();
}

/// A valid configuration whose SwiGLU rounds to width 0 (expansion 0.05 at
/// D = 8) is refused by the CPU engine, whose products cannot take it
/// (they panicked mid-solve).
#[test]
fn cpu_engine_refuses_a_swiglu_of_width_zero() {
    use std::sync::Arc;
    use trm_wgpu::CpuEngine;

    for mlp_t in [true, false] {
        let config = TrmConfig {
            hidden_size: 8,
            expansion: 0.05,
            mlp_t,
            puzzle_emb_ndim: 8,
            ..small_config()
        };
        let model = Arc::new(TrmModel::random(config, 5, 0.5).unwrap());
        match CpuEngine::with_threads(model, 1) {
            Err(TrmError::Config(message)) => assert!(
                message.contains("expansion 0.05 makes inter(D = 8) = 0"),
                "{message}"
            ),
            Err(other) => panic!("a configuration error expected, got {other}"),
            Ok(_) => panic!("a SwiGLU of width 0 was accepted"),
        }
    }
}

/// `--augment` and `--trajectories` batches are held to the limit on an
/// input's state before a variant is drawn.
#[test]
fn augmented_batches_are_held_to_the_state_limit() {
    use std::sync::Arc;
    use trm_wgpu::augment::{AugmentTask, solve_variants};
    use trm_wgpu::noise::{NoiseOn, NoiseOptions};
    use trm_wgpu::{CpuEngine, SolveOptions};

    let model = Arc::new(model());
    let c = model.config().clone();
    let tokens: Vec<i64> = (0..2 * c.seq_len)
        .map(|i| (i % c.vocab_size) as i64)
        .collect();
    let batch = PuzzleBatch::new(&c, &tokens, None).unwrap();
    let mut engine = CpuEngine::with_threads(model, 1).unwrap();
    let plain = SolveOptions::default();
    let started = std::time::Instant::now();
    let message = too_large(solve_variants(
        &mut engine,
        &batch,
        &plain,
        AugmentTask::Maze,
        1_000_000_000,
        0,
    ));
    assert!(
        message.contains("the state of 2 puzzles x 1000000000 variants x 1 trajectories"),
        "{message}"
    );
    let noisy = plain.clone().noise(NoiseOptions {
        sigma: 0.5,
        seed: 1,
        on: NoiseOn::ZL,
        trajectories: u32::MAX,
    });
    let message = too_large(solve_variants(
        &mut engine,
        &batch,
        &noisy,
        AugmentTask::Maze,
        usize::MAX,
        0,
    ));
    assert!(message.contains("beyond the limit of 8.0 GiB"), "{message}");
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
}
